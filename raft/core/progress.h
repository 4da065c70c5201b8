/* progress.h: what a leader knows of one follower's log, and the window of AppendEntries in
 * flight to it (compare etcd-io/raft tracker/progress.go and inflights.go, canonical/raft
 * src/progress.h). Private to the core: raft_append.c drives it, raft_core.c resets it when a
 * leadership begins, raft_read.c records read echoes in it. Pure: no I/O, no allocation after
 * progress_init.
 *
 * Invariant, in every state: match < next. match is the highest index known stored (durable) on
 * the follower; next is the next index the leader will send. Entries (match, next) are in flight
 * or lost; only an acknowledgement moves match, and match never moves back within a leadership.
 *
 * States (enum raft_progress_state, raft.h):
 *   PROBE     the leader does not know where the follower's log matches. At most one append is
 *             outstanding (probe_sent); a heartbeat tick resends it if it was lost. A rejection
 *             moves next back by the follower's hint (§5.3); an acknowledgement that moves match
 *             switches to PIPELINE. The window is empty.
 *   PIPELINE  the logs match at match: appends go out optimistically from next, next running
 *             ahead of match, as long as the window has room (max_inflight_msgs messages and
 *             max_inflight_bytes payload bytes). A rejection, or two heartbeats with appends in
 *             flight and no progress (lost messages), drop back to PROBE.
 *   SNAPSHOT  the entries the follower needs have been compacted away: the snapshot at
 *             pending_snapshot (> match) is on its way and no appends are sent. An
 *             acknowledgement that reaches pending_snapshot moves to PIPELINE; the end of the
 *             transfer (progress_snapshot_done) to PROBE; refusals are ignored meanwhile.
 *
 * Transitions are the functions below; nothing outside this module writes a progress's fields. */
#ifndef CRAFT_RAFT_CORE_PROGRESS_H
#define CRAFT_RAFT_CORE_PROGRESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* One AppendEntries in flight: the last index it carries and its payload bytes. */
struct progress_inflight {
    uint64_t last;
    size_t bytes;
};

/* The in-flight window: a ring of at most max_msgs appends, in index order, whose payload adds
 * up to bytes. Full when either bound is reached (a single append may pass the byte bound: a
 * batch always carries at least one entry). */
struct progress_window {
    struct progress_inflight *ring;
    uint32_t max_msgs, start, count;
    size_t max_bytes, bytes;
};

struct progress {
    uint64_t id;
    uint64_t match;
    uint64_t next;
    uint8_t state;      /* enum raft_progress_state */
    bool probe_sent;    /* PROBE: an append is outstanding; wait for its answer or a heartbeat */
    bool recent_active; /* heard from since the last check-quorum round (thesis §6.2) */
    struct progress_window window;
    uint64_t hb_match; /* match at the previous heartbeat: detects a stalled pipeline */
    unsigned stall;    /* heartbeats in a row with appends in flight and no progress */
    uint64_t read_ack; /* highest read round the follower echoed in this term (raft_read.c) */
    uint64_t pending_snapshot; /* SNAPSHOT: the index of the snapshot on its way */
};

/* ---- the window ---- */

bool progress_window_full(const struct progress_window *w);
/* Payload bytes that still fit before the window is full by bytes. */
size_t progress_window_room(const struct progress_window *w);
uint32_t progress_window_count(const struct progress_window *w);
size_t progress_window_bytes(const struct progress_window *w);

/* ---- life cycle ---- */

/* Allocate the window (max_msgs >= 1) for follower id. 0, or -1 out of memory. */
int progress_init(struct progress *pr, uint64_t id, uint32_t max_msgs, size_t max_bytes);
void progress_free(struct progress *pr);
/* A leadership begins with last as the leader's last index: nothing is known of the follower
 * (match 0), probe from last + 1. active: counts as heard from (the leader itself). */
void progress_reset_leader(struct progress *pr, uint64_t last, bool active);

/* ---- transitions ---- */

/* To PROBE at next (> match), the window emptied. */
void progress_become_probe(struct progress *pr, uint64_t next);
/* To PIPELINE from match + 1, the window emptied. */
void progress_become_pipeline(struct progress *pr);
/* To SNAPSHOT with the snapshot at index (> match) on its way. */
void progress_become_snapshot(struct progress *pr, uint64_t index);
/* The transfer of the pending snapshot ended (SNAPSHOT only; otherwise nothing). Failed: back to
 * PROBE from match + 1, to find out what the follower needs now. Done: to PROBE just after the
 * snapshot, the probe counted as outstanding - the follower's acknowledgement, or failing that
 * the next heartbeat's probe, moves it on (so a lost acknowledgement cannot leave it waiting). */
void progress_snapshot_done(struct progress *pr, bool ok);

/* May an append carrying entries go out now? PROBE: no probe outstanding; PIPELINE: the window
 * has room; SNAPSHOT: never. */
bool progress_can_send(const struct progress *pr);
/* An append was sent from next carrying n entries with bytes of payload (n may be 0: a probe
 * without entries). PROBE: the probe is outstanding. PIPELINE: next moves past the n entries and
 * the append takes a window slot. */
void progress_sent(struct progress *pr, uint32_t n, size_t bytes);
/* The follower acknowledged everything up to match_index. Returns true if match moved: then the
 * follower leaves PROBE for PIPELINE (SNAPSHOT: once match reaches the pending snapshot), the
 * window frees what it covered, next stays > match. An acknowledgement that did not move match
 * re-arms a probe (the follower answered it). */
bool progress_acked(struct progress *pr, uint64_t match_index);

enum progress_reject {
    PROGRESS_REJECT_STALE, /* answers an older append: ignore it */
    PROGRESS_REJECT_MOVED, /* next moved back (now PROBE): send a probe at once */
    PROGRESS_REJECT_SAME,  /* the same probe was refused again: wait for the heartbeat */
};
/* The follower refused the append whose prev_index was reject_index; hint_next is where its
 * conflict hint says to resume (§5.3). next never goes to or below match. */
enum progress_reject progress_rejected(struct progress *pr, uint64_t reject_index,
                                       uint64_t hint_next);

/* The heartbeat tick reached this follower. PIPELINE: a pipeline with appends in flight whose
 * match did not move over two heartbeats lost messages, and drops to PROBE at match + 1.
 * PROBE: a lost probe may be resent. Returns true if the caller should send a probe now (the
 * follower is in PROBE), false for a plain heartbeat. */
bool progress_on_heartbeat(struct progress *pr);

/* The follower answered (anything, in the leader's term). */
void progress_heard(struct progress *pr);
/* Check-quorum round: was the follower heard from since the previous round? Clears the mark. */
bool progress_take_active(struct progress *pr);
/* The follower echoed read round `round`. Returns true if that is its newest echo. */
bool progress_read_acked(struct progress *pr, uint64_t round);

/* "match=5 next=9 PIPELINE inflight=3/4096B" for traces and failing tests. */
int progress_format(const struct progress *pr, char *buf, size_t len);
/* The invariants above hold (for asserts and the simulator). */
bool progress_ok(const struct progress *pr);

#endif
