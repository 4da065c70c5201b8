/* raft_append.c: AppendEntries, both sides, with per-follower flow control.
 *
 * Leader side: each follower has a progress (progress.h) in PROBE (one append at a time, until
 * the follower's log is found to match) or PIPELINE (next runs ahead of match, bounded by an
 * in-flight window of max_inflight_msgs messages and max_inflight_bytes payload bytes). Each
 * append carries at most max_append_entries entries / max_append_bytes bytes (at least one entry).
 * A rejection drops the follower back to PROBE at the point its conflict hint names; a pipeline
 * that makes no progress over two heartbeats (lost messages) is re-probed from match + 1. This
 * file decides what to send; progress.c keeps the bookkeeping.
 *
 * Follower side: the consistency check of Figure 2, truncation of a conflicting suffix, and the
 * fast-backup hint (§5.3): on a mismatch at prev_index the reply names the conflicting term and
 * the first index of that term, so the leader skips a whole term per round trip. */
#include <assert.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "raft/core/raft_internal.h"

/* The follower needs entries the log no longer holds: send it the snapshot (§7). Its bytes go
 * outside the core; the follower's caller steps this message in once it holds all of them. */
static bool send_snapshot(struct raft *r, struct progress *pr)
{
    if (!r->snap_index || r->snap_index <= pr->match)
        return false; /* cannot happen: the log only drops what a snapshot covers */
    struct raft_msg m = {.type = RAFT_MSG_SNAPSHOT,
                         .to = pr->id,
                         .term = r->hs.term,
                         .commit = r->commit,
                         .snapshot_index = r->snap_index,
                         .snapshot_term = r->snap_term};
    if (r->snap_conf.len) {
        m.conf = malloc(r->snap_conf.len);
        if (!m.conf)
            return false;
        memcpy(m.conf, r->snap_conf.blob, r->snap_conf.len);
        m.conf_len = r->snap_conf.len;
    }
    if (raft_send(r, &m))
        return false;
    RAFT_TRACE(r, "n%" PRIu64 " needs %" PRIu64 ", compacted: sends snapshot %" PRIu64, pr->id,
               pr->next, r->snap_index);
    progress_become_snapshot(pr, r->snap_index);
    return true;
}

/* Build and queue one AppendEntries from pr->next. Returns false if nothing was sent. */
static bool send_one(struct raft *r, struct progress *pr, bool allow_empty)
{
    assert(r->role == RAFT_LEADER);
    uint64_t last = raft_log_last_index(&r->log);
    uint64_t prev = pr->next - 1, prev_term;
    if (!raft_log_term(&r->log, prev, &prev_term))
        return send_snapshot(r, pr);
    size_t n = 0, bytes = 0;
    size_t room = r->cfg.max_append_bytes;
    if (pr->state == RAFT_PROGRESS_PIPELINE && progress_window_room(&pr->window) < room)
        room = progress_window_room(&pr->window);
    while (pr->next + n <= last && n < r->cfg.max_append_entries) {
        size_t len = raft_log_at(&r->log, pr->next + n)->len;
        if (n && bytes + len > room)
            break; /* a batch always carries at least one entry */
        bytes += len;
        n++;
    }
    if (!n && !allow_empty)
        return false;
    struct raft_msg m = {.type = RAFT_MSG_APPEND,
                         .to = pr->id,
                         .term = r->hs.term,
                         .prev_index = prev,
                         .prev_term = prev_term,
                         .commit = r->commit,
                         .ctx = r->read_round};
    if (n) {
        m.entries = calloc(n, sizeof(*m.entries));
        if (!m.entries)
            return false;
        for (size_t i = 0; i < n; i++) {
            if (raft_entry_copy(&m.entries[i], raft_log_at(&r->log, pr->next + i))) {
                raft_entries_free(m.entries, i);
                return false;
            }
        }
        m.n_entries = (uint32_t)n;
    }
    if (raft_send(r, &m))
        return false;
    progress_sent(pr, (uint32_t)n, bytes);
    return true;
}

void raft_send_append(struct raft *r, struct progress *pr, bool allow_empty)
{
    assert(r->role == RAFT_LEADER);
    if (pr->id == r->id)
        return;
    if (pr->state == RAFT_PROGRESS_PROBE) {
        if (progress_can_send(pr))
            send_one(r, pr, allow_empty);
        return;
    }
    /* PIPELINE: fill the window (optimistic pipelining); SNAPSHOT: nothing. */
    while (progress_can_send(pr) && pr->next <= raft_log_last_index(&r->log))
        if (!send_one(r, pr, false))
            break;
}

void raft_bcast_append(struct raft *r)
{
    assert(r->role == RAFT_LEADER);
    for (size_t i = 0; i < r->n_peers; i++)
        raft_send_append(r, &r->progress[i], false);
}

void raft_send_timeout_now(struct raft *r, uint64_t to)
{
    assert(r->role == RAFT_LEADER);
    struct raft_msg m = {.type = RAFT_MSG_TIMEOUT_NOW, .to = to, .term = r->hs.term};
    raft_send(r, &m);
}

void raft_bcast_heartbeat(struct raft *r)
{
    assert(r->role == RAFT_LEADER);
    for (size_t i = 0; i < r->n_peers; i++) {
        struct progress *pr = &r->progress[i];
        if (pr->id == r->id)
            continue;
        /* In PROBE the probe doubles as the heartbeat (a lost probe is retried here); a stalled
         * pipeline has just been dropped to PROBE. */
        if (progress_on_heartbeat(pr))
            send_one(r, pr, true);
        else
            raft_send_heartbeat(r, pr);
    }
}

/* Heartbeat anchored at match, which the follower is known to hold, so it never fails the
 * consistency check because of reordering; it carries commit up to match, and the newest read
 * round (raft_read.c). Also sent on its own, without the stall bookkeeping of the periodic
 * heartbeat, to confirm leadership for a read at once. */
void raft_send_heartbeat(struct raft *r, struct progress *pr)
{
    assert(r->role == RAFT_LEADER);
    uint64_t t = 0, at = pr->match;
    if (!raft_log_term(&r->log, at, &t))
        at = 0; /* match was compacted away: anchor at the empty prefix, which always matches */
    struct raft_msg m = {.type = RAFT_MSG_APPEND,
                         .to = pr->id,
                         .term = r->hs.term,
                         .prev_index = at,
                         .prev_term = t,
                         .commit = r->commit < pr->match ? r->commit : pr->match,
                         .ctx = r->read_round};
    raft_send(r, &m);
}

/* Figure 8 / §5.4.2: the highest index stored on a majority commits only if it is of the current
 * term; older entries then commit with it. The leader's own copy counts once persisted. */
void raft_maybe_commit(struct raft *r)
{
    assert(r->role == RAFT_LEADER);
    uint64_t m[RAFT_MAX_NODES];
    for (size_t i = 0; i < r->n_peers; i++)
        m[i] = r->peers[i] == r->id ? r->persisted_index : r->progress[i].match;
    /* While joint: stored on a majority of C_new and of C_old (§6). */
    uint64_t n = raft_quorum_index(r, m), t;
    if (n > r->commit && raft_log_term(&r->log, n, &t) && t == r->hs.term) {
        RAFT_TRACE(r, "commit %" PRIu64 " -> %" PRIu64 " (stored on a majority)", r->commit, n);
        r->commit = n;
        raft_read_on_commit(r); /* reads waiting for our first commit in this term */
        raft_conf_on_commit(r); /* may leave a joint configuration, or step down */
    }
}

/* ---- follower side ---- */

static int check_entries(const struct raft *r, const struct raft_msg *m)
{
    if (m->prev_term > m->term || m->prev_index > RAFT_INDEX_LIMIT - m->n_entries)
        return RAFT_EINVAL; /* the log would pass RAFT_INDEX_LIMIT */
    if ((m->prev_index == 0) != (m->prev_term == 0))
        return RAFT_EINVAL;
    uint64_t t = m->prev_term;
    for (uint32_t i = 0; i < m->n_entries; i++) {
        const struct raft_entry *e = &m->entries[i];
        if (e->index != m->prev_index + 1 + i || e->term < t || e->term > m->term ||
            e->type > RAFT_ENTRY_CONFIG || (e->len && !e->data) || e->term == 0)
            return RAFT_EINVAL;
        if (e->len > r->cfg.max_entry_bytes)
            return RAFT_ETOOBIG;
        struct raft_conf c;
        if (e->type == RAFT_ENTRY_CONFIG && raft_conf_decode(e->data, e->len, &c, NULL, NULL))
            return RAFT_EINVAL;
        t = e->term;
    }
    return 0;
}

int raft_recv_append(struct raft *r, const struct raft_msg *m)
{
    int rc = check_entries(r, m);
    if (rc)
        return rc;
    if (r->role == RAFT_LEADER)
        return RAFT_EINVAL; /* two leaders in one term: impossible from a correct peer */
    if (r->role != RAFT_FOLLOWER || r->leader_id != m->from)
        raft_become_follower(r, r->hs.term, m->from);
    assert(r->role == RAFT_FOLLOWER && r->leader_id == m->from);
    r->election_elapsed = 0;

    /* ctx echoes the leader's read round (raft_read.c), accepted or not. */
    struct raft_msg resp = {
        .type = RAFT_MSG_APPEND_RESP, .to = m->from, .term = r->hs.term, .ctx = m->ctx};
    uint64_t last = raft_log_last_index(&r->log), t;
    if (m->prev_index > last) {
        RAFT_TRACE(r, "refuses append at %" PRIu64 " from n%" PRIu64 ": our log ends at %" PRIu64,
                   m->prev_index, m->from, last);
        resp.reject = true;
        resp.reject_index = m->prev_index;
        resp.conflict_term = 0;
        resp.conflict_index = last + 1;
        return raft_send(r, &resp);
    }
    if (m->prev_index < r->log.offset) {
        /* Our log starts after prev_index, which a snapshot covers: committed, so it matches
         * the leader's. Acknowledge what we know matches - the commit index - and let the
         * leader go on from there (entries in this message are not checked, nor kept). */
        resp.match_index = r->commit;
        return raft_send_after_persist(r, &resp);
    }
    raft_log_term(&r->log, m->prev_index, &t);
    if (t != m->prev_term) {
        if (m->prev_index <= r->commit)
            return RAFT_EINVAL; /* committed entries never conflict with a real leader */
        RAFT_TRACE(r, "refuses append at %" PRIu64 " from n%" PRIu64 ": term %" PRIu64
                      " there, not %" PRIu64, m->prev_index, m->from, t, m->prev_term);
        resp.reject = true;
        resp.reject_index = m->prev_index;
        resp.conflict_term = t;
        resp.conflict_index = raft_log_first_of_term(&r->log, m->prev_index);
        return raft_send(r, &resp);
    }
    /* Find the first entry we do not already hold; a conflict there truncates our suffix. */
    uint32_t i = 0;
    for (; i < m->n_entries; i++) {
        const struct raft_entry *e = &m->entries[i];
        if (e->index > raft_log_last_index(&r->log))
            break;
        raft_log_term(&r->log, e->index, &t);
        if (t != e->term) {
            if (e->index <= r->commit)
                return RAFT_EINVAL;
            RAFT_TRACE(r, "truncates its log from %" PRIu64 " (term %" PRIu64 " conflicts)",
                       e->index, t);
            raft_truncate_from(r, e->index);
            break;
        }
    }
    uint64_t first_new = i < m->n_entries ? m->entries[i].index : 0;
    for (; i < m->n_entries; i++) {
        rc = raft_log_append(&r->log, &m->entries[i]);
        if (rc)
            return rc;
    }
    if (first_new && (rc = raft_conf_on_append(r, first_new)) != 0)
        return rc; /* a configuration takes effect once appended (raft.h) */
    uint64_t verified = m->prev_index + m->n_entries;
    uint64_t c = m->commit < verified ? m->commit : verified;
    if (c > r->commit) {
        RAFT_TRACE(r, "commit %" PRIu64 " -> %" PRIu64 " (leader n%" PRIu64 ")", r->commit, c,
                   m->from);
        r->commit = c;
    }
    resp.match_index = verified;
    /* The ack means "stored": it waits for the entries to be durable. */
    return raft_send_after_persist(r, &resp);
}

/* InstallSnapshot, follower side (§7, Figure 13). The caller holds the complete, verified
 * snapshot the message names. */
int raft_recv_snapshot(struct raft *r, const struct raft_msg *m)
{
    if (m->n_entries || !m->snapshot_index || !m->snapshot_term || m->snapshot_term > m->term ||
        m->commit < m->snapshot_index || m->snapshot_index > RAFT_INDEX_LIMIT)
        return RAFT_EINVAL;
    struct raft_conf sc;
    if (m->conf_len && raft_conf_decode(m->conf, m->conf_len, &sc, NULL, NULL))
        return RAFT_EINVAL;
    if (r->role == RAFT_LEADER)
        return RAFT_EINVAL; /* two leaders in one term */
    if (r->role != RAFT_FOLLOWER || r->leader_id != m->from)
        raft_become_follower(r, r->hs.term, m->from);
    assert(r->role == RAFT_FOLLOWER && r->leader_id == m->from);
    r->election_elapsed = 0;
    struct raft_msg resp = {.type = RAFT_MSG_APPEND_RESP, .to = m->from, .term = r->hs.term};
    uint64_t t;
    if (m->snapshot_index <= r->commit) {
        /* Nothing new: we already hold (at least) that committed prefix. */
        RAFT_TRACE(r, "ignores snapshot %" PRIu64 ": commit is already %" PRIu64,
                   m->snapshot_index, r->commit);
        resp.match_index = r->commit;
    } else if (raft_log_term(&r->log, m->snapshot_index, &t) && t == m->snapshot_term) {
        /* Our log holds the snapshot's last entry: it and everything before it are committed,
         * and the entries after it stay (§7: "retain log entries following it"). */
        RAFT_TRACE(r, "snapshot %" PRIu64 " is in our log: commit %" PRIu64 " -> %" PRIu64,
                   m->snapshot_index, r->commit, m->snapshot_index);
        r->commit = m->snapshot_index;
        resp.match_index = m->snapshot_index;
    } else {
        RAFT_TRACE(r, "installs snapshot %" PRIu64 " (term %" PRIu64 "), discarding its log",
                   m->snapshot_index, m->snapshot_term);
        if (m->conf_len) {
            /* The snapshot's configuration replaces ours with the log (§7: the snapshot
             * carries "the latest configuration as of the last included index"). */
            uint8_t *b = malloc(m->conf_len);
            if (!b)
                return RAFT_ENOMEM;
            memcpy(b, m->conf, m->conf_len);
            free(r->snap_conf.blob);
            r->snap_conf = (struct raft_conf_rec){sc, b, m->conf_len};
        } else {
            /* Not given: keep the configuration in force (a caller without configurations). */
            uint8_t *b = r->conf.len ? malloc(r->conf.len) : NULL;
            if (r->conf.len && !b)
                return RAFT_ENOMEM;
            if (b)
                memcpy(b, r->conf.blob, r->conf.len);
            free(r->snap_conf.blob);
            r->snap_conf = (struct raft_conf_rec){r->conf.c, b, r->conf.len};
        }
        raft_install_snapshot(r, m->snapshot_index, m->snapshot_term);
        resp.match_index = m->snapshot_index;
    }
    /* The ack claims the snapshot (or the log up to match) is stored: it waits until it is. */
    return raft_send_after_persist(r, &resp);
}

/* Where to resume after a rejection, from the follower's hint (§5.3). */
static uint64_t next_from_hint(const struct raft *r, const struct raft_msg *m)
{
    uint64_t next = m->conflict_index;
    if (m->conflict_term) {
        uint64_t idx = raft_log_last_of_term(&r->log, m->conflict_term);
        if (idx)
            next = idx + 1; /* we share that term: resume just after our last entry of it */
    }
    if (next > m->reject_index)
        next = m->reject_index; /* always move back past the rejected prev_index */
    return next;
}

/* To be called on an APPEND_RESP of our term; anything but a leader ignores it. */
int raft_recv_append_resp(struct raft *r, const struct raft_msg *m)
{
    if (r->role != RAFT_LEADER)
        return 0;
    struct progress *pr = &r->progress[raft_peer_index(r, m->from)];
    uint64_t last = raft_log_last_index(&r->log);
    progress_heard(pr);

    if (m->reject) {
        if (m->reject_index > last || m->conflict_index == 0)
            return RAFT_EINVAL;
        raft_read_ack(r, pr, m->ctx); /* a refusal in our term confirms it as well */
        /* Retry at once only if the hint moved next; a refusal of the same probe waits for the
         * heartbeat (progress_rejected). */
        if (progress_rejected(pr, m->reject_index, next_from_hint(r, m)) == PROGRESS_REJECT_MOVED) {
            RAFT_TRACE(r, "n%" PRIu64 " refused the append at %" PRIu64 ": probes from %" PRIu64,
                       m->from, m->reject_index, pr->next);
            raft_send_append(r, pr, true);
        }
        return 0;
    }

    if (m->match_index > last)
        return RAFT_EINVAL;
    raft_read_ack(r, pr, m->ctx);
    if (progress_acked(pr, m->match_index)) {
        raft_maybe_commit(r);
        if (r->role != RAFT_LEADER)
            return 0; /* stepped down: a committed configuration left it out */
        /* A commit may have appended C_new, which rebuilds the member list: find pr again. */
        size_t i = raft_peer_index(r, m->from);
        if (i == r->n_peers)
            return 0; /* it is no longer a member */
        pr = &r->progress[i];
    }
    if (r->transferee == m->from && pr->match == last)
        raft_send_timeout_now(r, m->from);
    else
        raft_send_append(r, pr, false);
    return 0;
}
