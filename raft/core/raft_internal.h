/* raft_internal.h: the state of one core and the helpers its files share. Not part of the
 * contract (raft.h is); nothing outside raft_*.c includes this. */
#ifndef CRAFT_RAFT_RAFT_INTERNAL_H
#define CRAFT_RAFT_RAFT_INTERNAL_H

#include "raft/core/progress.h"
#include "raft/core/raft.h"

/* The in-memory log: entries offset+1 .. offset+n. offset and offset_term name the entry just
 * before the first one held (0/0 for a log that was never compacted): the term of that entry is
 * still known, so an append whose prev_index is offset is checked like any other. */
struct raft_log {
    struct raft_entry *e;
    size_t n, cap;
    uint64_t offset;
    uint64_t offset_term;
};

/* The highest log index a peer (or the disk) may make this member hold: appends and snapshots
 * past it are refused as malformed. Far beyond any real log, and far enough below 2^64 that
 * last index + 1 - a leader's no-op, a proposal, a probe's next index - never wraps (a snapshot
 * at 2^64-1 made a new leader's progress assert; found by tests/fuzz/raft_step_fuzz.c). */
#define RAFT_INDEX_LIMIT (UINT64_MAX / 2)

/* A read waiting in the core (raft_read.c). On a leader: from = 0 for a local read, else the
 * follower that asked; round = 0 while it waits for the leader's first commit in its term. On a
 * follower: a read forwarded to the leader, waiting for its answer. */
struct raft_read {
    uint64_t ctx;
    uint64_t from;
    uint64_t index;
    uint64_t round;
    uint64_t started; /* r->ticks when it arrived: it fails after election_tick ticks */
};

/* A message waiting for storage write `seq` to be reported durable. */
struct raft_held {
    struct raft_msg m;
    uint64_t seq;
};

/* A ready's storage work not yet reported persisted: what it covers once durable. */
struct raft_persist_rec {
    uint64_t seq;
    uint64_t covered; /* last log index written by (or before) this ready, clamped on truncation */
    struct raft_hard_state hs;
};

/* A configuration with its encoding (raft_conf_encode: conf + the caller's ctx). */
struct raft_conf_rec {
    struct raft_conf c;
    uint8_t *blob;
    uint32_t len;
};

struct raft {
    struct raft_config cfg;
    uint64_t id;
    /* Members: every id of the configuration in force (voters, old voters, learners) and self,
     * sorted; progress[] and votes[] are parallel to it (raft_conf.c rebuilds all three when the
     * configuration changes). Who counts in a quorum is conf's business, not this list's. */
    uint64_t *peers;
    size_t n_peers;
    /* The configuration in force: the newest configuration entry in the log (conf_index), or
     * snap_conf (conf_index 0) when the log after the snapshot holds none (raft_conf.c). */
    struct raft_conf_rec conf;
    uint64_t conf_index;
    uint64_t conf_gen; /* raft_conf_adopt calls, for callers that watch for changes */
    struct raft_conf_rec snap_conf; /* in force at snap_index */
    uint64_t rng; /* splitmix64 state, seeded from cfg.seed */

    /* Hard state and role (Figure 2). */
    struct raft_hard_state hs;
    bool hs_dirty;
    uint8_t role;
    uint64_t leader_id;

    struct raft_log log;
    /* The newest snapshot of the state machine (§7): raft_compact, restore or install. Always
     * snap_index >= log.offset: the log never drops an entry no snapshot covers. */
    uint64_t snap_index, snap_term;
    /* A received snapshot the next ready hands to storage (rd.snapshot); index 0 = none. */
    uint64_t install_index, install_term;
    uint64_t commit;
    uint64_t applied;   /* reported by raft_applied() */
    uint64_t delivered; /* last index handed out in ready.committed */

    /* Storage pipeline. Entries (readied_last, last] have not been handed to storage yet. */
    uint64_t readied_last;
    uint64_t pending_truncate; /* 0 = none */
    uint64_t last_seq;         /* last persist_seq handed out */
    uint64_t persisted_seq;    /* highest seq reported durable */
    uint64_t persisted_index;  /* durable and matching the in-memory log */
    struct raft_hard_state persisted_hs;
    struct raft_persist_rec *recs;
    size_t n_recs, cap_recs;

    /* Output. */
    struct raft_msg *out;
    size_t n_out, cap_out;
    struct raft_held *held;
    size_t n_held, cap_held;

    /* Timers, in ticks. */
    unsigned election_elapsed;
    unsigned heartbeat_elapsed;
    unsigned randomized_timeout;

    /* Elections: per peer index, 0 = no answer, 1 = granted, -1 = rejected. */
    int8_t *votes;

    /* Leader. progress[i] belongs to peers[i]; the entry for self is kept but unused. */
    struct progress *progress;
    uint64_t transferee;
    unsigned transfer_elapsed;

    /* ReadIndex (raft_read.c). reads: pending, oldest first (so also by round on a leader);
     * read_out: settled, for the next ready. read_round only grows for the core's lifetime, so
     * an echo of round R always answers a message sent after round R began. */
    struct raft_read *reads;
    size_t n_reads, cap_reads;
    struct raft_read_state *read_out;
    size_t n_read_out, cap_read_out;
    uint64_t read_round;
    uint64_t ticks; /* raft_tick() calls, for read expiry */

    /* Soft state last reported in a ready, so a change makes a ready. */
    uint8_t rep_role;
    uint64_t rep_leader, rep_term, rep_commit;
};

/* The decision trace (raft.h, raft_config.trace): compiled in with RAFT_WITH_TRACE, else nothing is
 * evaluated, though the format is still checked against its arguments. */
#ifdef RAFT_WITH_TRACE
void raft_trace(const struct raft *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define RAFT_TRACE(r, ...) raft_trace((r), __VA_ARGS__)
#else
static inline __attribute__((format(printf, 1, 2))) void raft_trace_off(const char *fmt, ...)
{
    (void)fmt;
}
#define RAFT_TRACE(r, ...)                                                                        \
    do {                                                                                          \
        (void)(r);                                                                                \
        if (0)                                                                                    \
            raft_trace_off(__VA_ARGS__);                                                          \
    } while (0)
#endif

/* raft_log.c */
uint64_t raft_log_last_index(const struct raft_log *l);
uint64_t raft_log_last_term(const struct raft_log *l);
/* Term at index: true and *term if known (index == offset included). */
bool raft_log_term(const struct raft_log *l, uint64_t index, uint64_t *term);
const struct raft_entry *raft_log_at(const struct raft_log *l, uint64_t index);
int raft_log_append(struct raft_log *l, const struct raft_entry *e); /* deep copy */
void raft_log_truncate(struct raft_log *l, uint64_t from);           /* drop >= from */
void raft_log_free(struct raft_log *l);
/* Drop entries <= upto (offset < upto <= last): the log then starts after upto. */
void raft_log_compact(struct raft_log *l, uint64_t upto);
/* Drop every entry; the log starts after (index, term). */
void raft_log_reset(struct raft_log *l, uint64_t index, uint64_t term);
uint64_t raft_log_first_of_term(const struct raft_log *l, uint64_t index);
uint64_t raft_log_last_of_term(const struct raft_log *l, uint64_t term);
int raft_entry_copy(struct raft_entry *dst, const struct raft_entry *src);
void raft_entries_free(struct raft_entry *e, size_t n);

/* raft_core.c */
size_t raft_peer_index(const struct raft *r, uint64_t id); /* n_peers if unknown */
void raft_become_follower(struct raft *r, uint64_t term, uint64_t leader);
void raft_become_candidate(struct raft *r, bool transfer);
void raft_become_precandidate(struct raft *r);
void raft_become_leader(struct raft *r);
uint64_t raft_rand(struct raft *r);

/* raft_ready.c */
int raft_send(struct raft *r, struct raft_msg *m); /* takes ownership of m->entries */
int raft_send_after_persist(struct raft *r, struct raft_msg *m);
void raft_truncate_from(struct raft *r, uint64_t index);
/* Follower: replace the whole log by the snapshot (index, term) and hand it to storage. */
void raft_install_snapshot(struct raft *r, uint64_t index, uint64_t term);
void raft_msg_free(struct raft_msg *m);

/* raft_conf.c */
/* Make (c, blob) the configuration in force, carried by the entry at index (0: snap_conf), and
 * rebuild the member list. The blob is copied. */
int raft_conf_adopt(struct raft *r, const struct raft_conf *c, const uint8_t *blob, uint32_t len,
                    uint64_t index);
/* Entries were appended from index `from` on: adopt the newest configuration among them. */
int raft_conf_on_append(struct raft *r, uint64_t from);
/* The log was truncated (or reset): fall back to the newest configuration left in it. */
int raft_conf_on_truncate(struct raft *r);
/* The snapshot moved to snap_index: snap_conf becomes the configuration in force there. */
int raft_conf_on_compact(struct raft *r, uint64_t snapshot_index);
bool raft_is_voter(const struct raft *r, uint64_t id);
/* Whether this member may start an election (raft_conf.c explains the committed-voter case). */
bool raft_may_campaign(const struct raft *r);
/* Election / check-quorum: do the members whose flag equals `want` make a majority of the voters
 * and, while joint, of the old voters? flags are per member slot. */
bool raft_quorum_has(const struct raft *r, const int8_t *flags, int8_t want);
/* Can the members whose flag equals `want` no longer be outvoted, i.e. is a majority of either
 * voter set already flagged? (An election lost.) */
bool raft_quorum_lost(const struct raft *r, const int8_t *flags, int8_t want);
/* Commit and reads: the highest v such that a majority of the voters (and of the old voters,
 * while joint) have vals[slot] >= v. vals are per member slot. */
uint64_t raft_quorum_index(const struct raft *r, const uint64_t *vals);
/* Leader, after its commit index moved: leave a committed joint configuration (append C_new),
 * and step down once a C_new without this member has committed. */
void raft_conf_on_commit(struct raft *r);
void raft_conf_free(struct raft *r);

/* raft_vote.c */
int raft_recv_vote(struct raft *r, const struct raft_msg *m);
int raft_recv_vote_resp(struct raft *r, const struct raft_msg *m);

/* raft_append.c */
int raft_recv_append(struct raft *r, const struct raft_msg *m);
int raft_recv_snapshot(struct raft *r, const struct raft_msg *m);
int raft_recv_append_resp(struct raft *r, const struct raft_msg *m);
void raft_send_append(struct raft *r, struct progress *pr, bool allow_empty);
void raft_bcast_append(struct raft *r);
void raft_bcast_heartbeat(struct raft *r);
void raft_maybe_commit(struct raft *r);
void raft_send_timeout_now(struct raft *r, uint64_t to);
void raft_send_heartbeat(struct raft *r, struct progress *pr);

/* raft_read.c */
int raft_recv_read_index(struct raft *r, const struct raft_msg *m);
int raft_recv_read_index_resp(struct raft *r, const struct raft_msg *m);
/* A follower echoed read round m->ctx (leader, same term). */
void raft_read_ack(struct raft *r, struct progress *pr, uint64_t round);
/* The commit index moved (leader): start the rounds of reads that waited for it. */
void raft_read_on_commit(struct raft *r);
/* Leadership, term or known leader is about to change: fail every pending read. */
void raft_read_fail_all(struct raft *r);
/* One tick: fail reads pending for an election timeout. */
void raft_read_tick(struct raft *r);
void raft_read_free(struct raft *r);

#endif
