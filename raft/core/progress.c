/* progress.c: per-follower replication state and its in-flight window (progress.h). */
#include "raft/core/progress.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "raft/core/raft.h"

/* Debug builds check the invariants of progress.h after every transition. */
#define CHECK(pr) assert(progress_ok(pr))

/* ---- the window ---- */

bool progress_window_full(const struct progress_window *w)
{
    return w->count >= w->max_msgs || w->bytes >= w->max_bytes;
}

size_t progress_window_room(const struct progress_window *w)
{
    return w->bytes >= w->max_bytes ? 0 : w->max_bytes - w->bytes;
}

uint32_t progress_window_count(const struct progress_window *w)
{
    return w->count;
}

size_t progress_window_bytes(const struct progress_window *w)
{
    return w->bytes;
}

static void window_add(struct progress_window *w, uint64_t last, size_t bytes)
{
    assert(w->count < w->max_msgs);
    assert(!w->count || w->ring[(w->start + w->count - 1) % w->max_msgs].last < last);
    w->ring[(w->start + w->count) % w->max_msgs] = (struct progress_inflight){last, bytes};
    w->count++;
    w->bytes += bytes;
}

/* Everything up to `match` has arrived: free the slots of the appends it covers. */
static void window_free_to(struct progress_window *w, uint64_t match)
{
    while (w->count && w->ring[w->start].last <= match) {
        w->bytes -= w->ring[w->start].bytes;
        w->start = (w->start + 1) % w->max_msgs;
        w->count--;
    }
}

static void window_reset(struct progress_window *w)
{
    w->start = w->count = 0;
    w->bytes = 0;
}

/* ---- life cycle ---- */

int progress_init(struct progress *pr, uint64_t id, uint32_t max_msgs, size_t max_bytes)
{
    assert(max_msgs >= 1);
    *pr = (struct progress){.id = id, .next = 1};
    pr->window.ring = calloc(max_msgs, sizeof(*pr->window.ring));
    if (!pr->window.ring)
        return -1;
    pr->window.max_msgs = max_msgs;
    pr->window.max_bytes = max_bytes;
    return 0;
}

void progress_free(struct progress *pr)
{
    free(pr->window.ring);
    pr->window.ring = NULL;
}

void progress_reset_leader(struct progress *pr, uint64_t last, bool active)
{
    pr->match = 0;
    pr->read_ack = 0;
    pr->recent_active = active;
    progress_become_probe(pr, last + 1);
}

/* ---- transitions ---- */

static void reset_to(struct progress *pr, uint8_t state, uint64_t next)
{
    assert(next > pr->match);
    if (state != RAFT_PROGRESS_SNAPSHOT)
        pr->pending_snapshot = 0;
    pr->state = state;
    pr->next = next;
    pr->probe_sent = false;
    window_reset(&pr->window);
    pr->stall = 0;
    pr->hb_match = pr->match;
    CHECK(pr);
}

void progress_become_probe(struct progress *pr, uint64_t next)
{
    reset_to(pr, RAFT_PROGRESS_PROBE, next);
}

void progress_become_pipeline(struct progress *pr)
{
    reset_to(pr, RAFT_PROGRESS_PIPELINE, pr->match + 1);
}

void progress_become_snapshot(struct progress *pr, uint64_t index)
{
    assert(index > pr->match);
    pr->pending_snapshot = index;
    reset_to(pr, RAFT_PROGRESS_SNAPSHOT, pr->match + 1);
}

void progress_snapshot_done(struct progress *pr, bool ok)
{
    if (pr->state != RAFT_PROGRESS_SNAPSHOT)
        return;
    uint64_t after = pr->pending_snapshot + 1;
    progress_become_probe(pr, ok ? after : pr->match + 1);
    pr->probe_sent = ok;
}

bool progress_can_send(const struct progress *pr)
{
    switch (pr->state) {
    case RAFT_PROGRESS_PROBE: return !pr->probe_sent;
    case RAFT_PROGRESS_PIPELINE: return !progress_window_full(&pr->window);
    default: return false;
    }
}

void progress_sent(struct progress *pr, uint32_t n, size_t bytes)
{
    if (pr->state == RAFT_PROGRESS_PROBE) {
        pr->probe_sent = true;
    } else if (pr->state == RAFT_PROGRESS_PIPELINE && n) {
        pr->next += n;
        window_add(&pr->window, pr->next - 1, bytes);
    }
    CHECK(pr);
}

bool progress_acked(struct progress *pr, uint64_t match_index)
{
    if (match_index <= pr->match) {
        if (pr->state == RAFT_PROGRESS_PROBE)
            pr->probe_sent = false;
        return false;
    }
    pr->match = match_index;
    if (pr->state == RAFT_PROGRESS_SNAPSHOT) {
        if (pr->match >= pr->pending_snapshot)
            progress_become_pipeline(pr);
        else
            pr->next = pr->match + 1; /* still waiting for the snapshot */
    } else if (pr->state == RAFT_PROGRESS_PROBE) {
        progress_become_pipeline(pr);
    } else {
        window_free_to(&pr->window, pr->match);
    }
    if (pr->next <= pr->match)
        pr->next = pr->match + 1;
    CHECK(pr);
    return true;
}

enum progress_reject progress_rejected(struct progress *pr, uint64_t reject_index,
                                       uint64_t hint_next)
{
    if (pr->state == RAFT_PROGRESS_SNAPSHOT) {
        return PROGRESS_REJECT_STALE; /* the snapshot's fate decides (progress_snapshot_failed) */
    } else if (pr->state == RAFT_PROGRESS_PIPELINE) {
        if (reject_index <= pr->match)
            return PROGRESS_REJECT_STALE; /* refuses an append older than what was acked */
    } else if (reject_index != pr->next - 1) {
        return PROGRESS_REJECT_STALE; /* answers an older probe */
    }
    uint64_t next = hint_next > pr->match ? hint_next : pr->match + 1;
    bool moved = pr->state != RAFT_PROGRESS_PROBE || next != pr->next;
    progress_become_probe(pr, next);
    if (moved)
        return PROGRESS_REJECT_MOVED;
    /* Same probe refused again: hold it until the heartbeat, so a follower that keeps refusing
     * cannot start a message storm. */
    pr->probe_sent = true;
    return PROGRESS_REJECT_SAME;
}

bool progress_on_heartbeat(struct progress *pr)
{
    if (pr->state == RAFT_PROGRESS_PIPELINE) {
        pr->stall = pr->window.count && pr->match == pr->hb_match ? pr->stall + 1 : 0;
        pr->hb_match = pr->match;
        if (pr->stall >= 2)
            progress_become_probe(pr, pr->match + 1); /* appends were lost: resend from match */
    }
    if (pr->state != RAFT_PROGRESS_PROBE)
        return false;
    pr->probe_sent = false; /* the probe doubles as the heartbeat; a lost one is retried */
    return true;
}

void progress_heard(struct progress *pr)
{
    pr->recent_active = true;
}

bool progress_take_active(struct progress *pr)
{
    bool a = pr->recent_active;
    pr->recent_active = false;
    return a;
}

bool progress_read_acked(struct progress *pr, uint64_t round)
{
    if (round <= pr->read_ack)
        return false;
    pr->read_ack = round;
    return true;
}

static const char *state_name(uint8_t s)
{
    switch (s) {
    case RAFT_PROGRESS_PROBE: return "PROBE";
    case RAFT_PROGRESS_PIPELINE: return "PIPELINE";
    case RAFT_PROGRESS_SNAPSHOT: return "SNAPSHOT";
    default: return "?";
    }
}

int progress_format(const struct progress *pr, char *buf, size_t len)
{
    if (pr->state == RAFT_PROGRESS_SNAPSHOT)
        return snprintf(buf, len, "match=%" PRIu64 " next=%" PRIu64 " SNAPSHOT %" PRIu64,
                        pr->match, pr->next, pr->pending_snapshot);
    return snprintf(buf, len, "match=%" PRIu64 " next=%" PRIu64 " %s%s inflight=%" PRIu32 "/%zuB",
                    pr->match, pr->next, state_name(pr->state),
                    pr->state == RAFT_PROGRESS_PROBE && pr->probe_sent ? " (sent)" : "",
                    pr->window.count, pr->window.bytes);
}

bool progress_ok(const struct progress *pr)
{
    const struct progress_window *w = &pr->window;
    if (pr->match >= pr->next || w->count > w->max_msgs)
        return false;
    if (pr->state != RAFT_PROGRESS_PIPELINE && (w->count || w->bytes))
        return false;
    if ((pr->state == RAFT_PROGRESS_SNAPSHOT) != (pr->pending_snapshot > pr->match))
        return false;
    /* Each slot in flight lies in (match, next), in increasing order. */
    uint64_t prev = pr->match;
    size_t bytes = 0;
    for (uint32_t i = 0; i < w->count; i++) {
        const struct progress_inflight *f = &w->ring[(w->start + i) % w->max_msgs];
        if (f->last <= prev || f->last >= pr->next)
            return false;
        prev = f->last;
        bytes += f->bytes;
    }
    return bytes == w->bytes;
}
