/* raft.h: the Raft consensus core. Pure and deterministic: no threads, sockets, clock reads,
 * randomness or global state. Everything the core needs from outside comes in as an event;
 * everything it wants done goes out in a "ready" batch.
 *
 * Interface style: a Ready/Advance loop (as in etcd-io/raft). The caller owns one struct raft per
 * node and serialises all calls on it (one node mutex in the runtime):
 *
 *   events in:   raft_tick()             one tick of the caller's virtual/real clock
 *                raft_step()             a message received from a peer
 *                raft_propose()          a new command (leader only; else RAFT_ENOTLEADER + hint)
 *                raft_transfer_leader()  hand leadership to a named, up-to-date peer (TimeoutNow)
 *                raft_persisted()        the storage writes of ready `seq` (and all before) are durable
 *                raft_applied()          the state machine has applied up to index i
 *                raft_read_index()       start a linearizable read (ReadIndex, thesis §6.4)
 *                raft_compact()          a snapshot of the state machine exists: drop the log prefix
 *                raft_report_snapshot()  a snapshot transfer to a follower failed (or finished)
 *                raft_propose_conf()     change the cluster configuration (joint consensus)
 *
 *   effects out: while (raft_has_ready(r)) {
 *                    raft_ready(r, &rd);
 *                    install rd.snapshot, then write rd.truncate_from / rd.entries / rd.hs
 *                      (in ready order; group commit ok);
 *                    send rd.msgs (any time: none of them waits for this ready's write);
 *                    apply rd.committed (in order);
 *                    raft_advance(r, &rd);                  frees rd; it does NOT mean "persisted"
 *                }
 *                ... later, when the write of rd.persist_seq is durable: raft_persisted(r, seq).
 *
 * Durability ordering (design.md "durability before acknowledgement"): messages that depend on
 * state not yet durable - a vote grant (needs term + votedFor on disk, Raft paper Figure 2) and an
 * AppendEntries acknowledgement (needs the entries on disk) - are held inside the core and only
 * appear in a ready after raft_persisted() covers the write they depend on. A candidate counts its
 * own vote, and a leader counts its own log toward commit, only for what is persisted. A leader's
 * AppendEntries may leave before its own write is durable (Raft thesis §10.2.1), so leader fsync and
 * replication overlap.
 *
 * Ownership: everything reachable from a struct raft_ready (entries, messages, payloads) belongs to
 * the ready, is deep-copied, and stays valid until raft_advance(); other events may be stepped in
 * between (their effects go to the next ready). raft_step() and raft_propose() copy their inputs.
 *
 * Storage and snapshots (Raft paper §7, thesis chapter 5): the core keeps in memory the log after
 * its offset - the whole log, until the caller compacts it. Once the state machine has a durable
 * snapshot covering index S, raft_compact() drops entries up to a chosen point at or below S
 * (keeping some after it lets a follower that is only a little behind get entries, not a
 * snapshot). A follower that needs a dropped entry is sent RAFT_MSG_SNAPSHOT, which names the
 * snapshot (index, term); the snapshot's bytes travel outside the core (the caller streams them),
 * and the follower's caller steps the message into its core only once it holds the complete,
 * verified snapshot. The follower's core then either finds that entry in its log (keeps its log,
 * moves commit) or discards its whole log and hands rd.snapshot out as storage work: restore the
 * state machine from it and make the stored log start after it. Its acknowledgement waits, like
 * any other, until that work is durable.
 *
 * Errors: functions return 0 or a negative RAFT_E* code. Bad input from outside (a malformed
 * message, an unknown sender, an index out of range) is dropped with an error code; the core never
 * aborts on it. assert() guards internal invariants only. Log indices above 2^63 - 1 are refused
 * as malformed (appends and snapshots from peers, a restored log), so index + 1 never wraps; a
 * member whose term reached 2^64 - 1 (only a peer's forged term can do that) never campaigns.
 */
#ifndef CRAFT_RAFT_RAFT_H
#define CRAFT_RAFT_RAFT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "raft/entry.h"

#define RAFT_MAX_NODES 64

enum {
    RAFT_OK = 0,
    RAFT_EINVAL = -1,     /* malformed message or argument */
    RAFT_ENOTLEADER = -2, /* proposal on a non-leader; see the leader hint */
    RAFT_EBUSY = -3,      /* leadership transfer in progress; proposals paused */
    RAFT_ENOMEM = -4,
    RAFT_EUNKNOWN = -5,   /* message from/to a node that is not in the configuration */
    RAFT_ETOOBIG = -6,    /* a bound was exceeded (entries per message, payload size) */
    RAFT_ESTATE = -7,     /* call not valid now (e.g. transfer to self, persisted seq unknown) */
    RAFT_EPENDING = -8,   /* a configuration change is still in progress */
};

const char *raft_strerror(int rc);

enum raft_role {
    RAFT_FOLLOWER = 0,
    RAFT_PRECANDIDATE = 1, /* pre-vote phase, term not yet bumped (thesis §9.6) */
    RAFT_CANDIDATE = 2,
    RAFT_LEADER = 3,
};

const char *raft_role_name(int role);

/* Wire messages. Flat so the peer service can map each field 1:1 to protobuf; which fields a type
 * uses is listed per field. Every message carries type, from, to and term. */
enum raft_msg_type {
    RAFT_MSG_NONE = 0,
    RAFT_MSG_VOTE = 1,          /* RequestVote */
    RAFT_MSG_VOTE_RESP = 2,
    RAFT_MSG_PREVOTE = 3,       /* term = the term the sender would campaign in (its term + 1) */
    RAFT_MSG_PREVOTE_RESP = 4,  /* granted: term echoes the request; rejected: the voter's term */
    RAFT_MSG_APPEND = 5,        /* AppendEntries; a heartbeat is one with no entries */
    RAFT_MSG_APPEND_RESP = 6,
    RAFT_MSG_TIMEOUT_NOW = 7,   /* leadership transfer: campaign now (thesis §3.10) */
    /* InstallSnapshot (§7): leader -> follower, naming the snapshot in snapshot_index/term and
     * the leader's commit; answered with an APPEND_RESP (match_index = how far the follower's
     * log now matches). Type 9 is reserved. */
    RAFT_MSG_SNAPSHOT = 8,
    RAFT_MSG_READ_INDEX = 10,      /* follower -> leader: run a ReadIndex round for ctx */
    RAFT_MSG_READ_INDEX_RESP = 11, /* leader -> follower: ctx + read_index (0 = failed) */
    RAFT_MSG_TYPE_MAX = 11,
};

const char *raft_msg_type_name(int type);

struct raft_msg {
    uint8_t type; /* enum raft_msg_type */
    uint64_t from;
    uint64_t to;
    uint64_t term;

    /* VOTE, PREVOTE: the candidate's last log entry (up-to-date check, paper §5.4.1). */
    uint64_t last_log_index;
    uint64_t last_log_term;
    bool transfer; /* VOTE, PREVOTE: campaign caused by TimeoutNow; voters skip the leader lease */

    /* VOTE_RESP, PREVOTE_RESP: */
    bool granted;

    /* APPEND: entries follow (prev_index, prev_term); commit = leader's commit index. */
    uint64_t prev_index;
    uint64_t prev_term;
    uint64_t commit;
    uint32_t n_entries;
    struct raft_entry *entries;

    /* APPEND_RESP: success => match_index is the last index known to match the leader's log.
     * reject => reject_index echoes the request's prev_index, and the fast-backup hint says
     * where the follower's log diverges: conflict_term = the follower's term at prev_index
     * (0 if its log is shorter), conflict_index = the first index of that term in its log (or its
     * last index + 1 if shorter). Raft paper §5.3, "optimisation" paragraph. */
    bool reject;
    uint64_t match_index;
    uint64_t reject_index;
    uint64_t conflict_term;
    uint64_t conflict_index;

    /* ReadIndex (thesis §6.4).
     * APPEND: ctx = the leader's newest read round (0 = none yet); APPEND_RESP: ctx echoes the
     * round of the AppendEntries it answers - an acknowledgement in the leader's term of a
     * message sent after the round began, which is what confirms leadership for its reads.
     * READ_INDEX: ctx = the requester's read id (nonzero); READ_INDEX_RESP: ctx echoes it and
     * read_index is the leader's confirmed read index, or 0 if the read failed (not the leader,
     * leadership lost, too many reads). */
    uint64_t ctx;
    uint64_t read_index;

    /* SNAPSHOT: the last index and term the snapshot covers, and the cluster configuration in
     * force at snapshot_index (raft_conf_encode; conf_len 0 = not given: the receiver keeps its
     * own). The leader's core fills conf from its snapshot; a receiving runtime may fill it from
     * the snapshot file's metadata instead of the wire. */
    uint64_t snapshot_index;
    uint64_t snapshot_term;
    uint8_t *conf;
    uint32_t conf_len;
};

/* ---- cluster configuration (Raft paper §6, thesis chapter 4) ----
 * A configuration names the voters and the learners (non-voting members that receive the log and
 * snapshots but never count in a quorum and never campaign). While a change of voters is under
 * way the configuration is joint: `old` holds C_old and `voters` C_new, and elections and
 * commitment need a majority of each. Configurations travel in RAFT_ENTRY_CONFIG log entries
 * (and snapshots) encoded by raft_conf_encode, with an opaque context the caller attaches (craft
 * puts the member table with names and URLs there).
 *
 * When a configuration takes effect: when its entry is appended to a member's log, not when it
 * commits (paper §6, LogCabin) - every member uses the newest configuration in its log, and
 * reverts to the previous one if that entry is truncated away. Chosen over etcd-io/raft's
 * take-effect-on-apply because it needs no "wait until applied before campaigning" rule and keeps
 * the whole decision inside the core, where the simulator checks it; the cost is the scan back
 * to the previous configuration on truncation (rare, bounded by the log in memory). */
struct raft_conf {
    uint32_t n_voters, n_old, n_learners;
    uint64_t voters[RAFT_MAX_NODES];   /* C_new, or the only configuration */
    uint64_t old[RAFT_MAX_NODES];      /* C_old while joint; n_old == 0 otherwise */
    uint64_t learners[RAFT_MAX_NODES];
};

/* Per-peer replication state on a leader (compare etcd-io/raft tracker, canonical/raft progress). */
enum raft_progress_state {
    RAFT_PROGRESS_PROBE = 0,    /* one AppendEntries at a time until a match is found */
    RAFT_PROGRESS_PIPELINE = 1, /* pipelined: many in flight, bounded by count and bytes */
    RAFT_PROGRESS_SNAPSHOT = 2, /* a snapshot is on its way; no appends until it is acknowledged */
};

struct raft_config {
    uint64_t id;           /* this node; nonzero */
    const uint64_t *peers; /* the voters of the initial configuration; copied by raft_new(). A
                            * snapshot's configuration (raft_restore.conf) and configuration
                            * entries in the log take precedence. */
    size_t n_peers;        /* 1 .. RAFT_MAX_NODES (0 allowed when raft_restore.conf is given) */
    uint64_t seed;         /* seeds the core's private PRNG (election timeout jitter) */

    unsigned election_tick;  /* default 10; timeout is random in [election_tick, 2*election_tick) */
    unsigned heartbeat_tick; /* default 2; leader heartbeat period; must be < election_tick */
    bool pre_vote;           /* default true */
    bool check_quorum;       /* default true; also enables the leader lease on votes */

    /* Flow control (leader -> each follower). */
    uint32_t max_append_entries; /* default 64 entries per AppendEntries */
    size_t max_append_bytes;     /* default 1 MiB payload per AppendEntries (at least 1 entry) */
    uint32_t max_inflight_msgs;  /* default 64 AppendEntries in flight per follower */
    size_t max_inflight_bytes;   /* default 16 MiB payload in flight per follower */

    /* Input bounds: larger inbound messages / proposals are refused with RAFT_ETOOBIG. */
    uint32_t max_msg_entries;   /* default 4096 entries in one received AppendEntries */
    uint32_t max_entry_bytes;   /* default 64 MiB payload per entry */

    /* ReadIndex: reads (local and forwarded from followers) waiting in the core at once. A local
     * read over the bound gets RAFT_EBUSY, a follower's is answered as failed. Default 1024; 0 is
     * taken as the default. */
    uint32_t max_read_pending;

    /* Decision trace: one line per decision the core takes (a vote granted or refused and why,
     * a role change and its cause, the commit index moving, a refused append, a probe moved
     * back), without a trailing newline. Compiled in only when the core is built with
     * RAFT_WITH_TRACE defined (//raft/core:core_trace, which the simulator's craft-sim uses for
     * --seed X); otherwise the calls compile to nothing and these fields are ignored. NULL: no
     * trace. */
    void (*trace)(void *arg, const char *line);
    void *trace_arg;
};


/* Fill defaults; the caller then sets id, peers, n_peers, seed. */
void raft_config_default(struct raft_config *cfg);

/* What storage held at start-up: the hard state, the newest durable snapshot (0/0: none) and the
 * stored log. Entries are contiguous; they may start at or before snapshot_index + 1 (entries kept
 * for catching up followers). The state machine must already hold the snapshot: the core counts
 * everything up to snapshot_index as committed and applied. */
struct raft_restore {
    struct raft_hard_state hs;
    const struct raft_entry *entries;
    size_t n_entries;
    uint64_t snapshot_index;
    uint64_t snapshot_term;
    /* The configuration in force at snapshot_index (raft_conf_encode), or NULL/0: the voters of
     * raft_config.peers. Configuration entries in the log after it override it. */
    const uint8_t *conf;
    uint32_t conf_len;
};

struct raft;

/* restore may be NULL (empty storage). Returns 0 and *out, or an error. */
int raft_new(const struct raft_config *cfg, const struct raft_restore *restore, struct raft **out);
void raft_free(struct raft *r);

/* ---- events ---- */
int raft_tick(struct raft *r);
int raft_step(struct raft *r, const struct raft_msg *m);
/* Append a command; on success *index and *term say where it will commit (if it does). On a
 * non-leader returns RAFT_ENOTLEADER and *leader_hint = the leader this node knows of (0 = none).
 * Any out-pointer may be NULL. type is RAFT_ENTRY_NORMAL (CONFIG reserved). */
int raft_propose(struct raft *r, uint8_t type, const void *data, uint32_t len, uint64_t *index,
                 uint64_t *term, uint64_t *leader_hint);
/* Leader only: catch `to` up, then send it TimeoutNow. Proposals get RAFT_EBUSY until the transfer
 * completes or is abandoned after one election timeout. */
int raft_transfer_leader(struct raft *r, uint64_t to);
/* Leader only: change the configuration to `target` (n_old must be 0; ids in any order), with
 * ctx (copied, may be NULL) carried in the entry. A change of voters goes through joint
 * consensus: the leader appends C_old,new at once and, once that commits, C_new by itself (a
 * single-member change takes the same path); a change of learners or of ctx alone is one entry.
 * A leader that is not in C_new keeps leading (without counting itself toward C_new) until C_new
 * commits, then steps down. *index and *term (may be NULL) name the first entry of the change; the
 * change is complete when raft_conf_get reports index >= that with no joint part, and that entry
 * committed. Errors: RAFT_ENOTLEADER (+ hint), RAFT_EBUSY (transfer under way), RAFT_EPENDING
 * (the previous change has not finished: one at a time), RAFT_EINVAL (empty voters, zero or
 * duplicate ids, a learner also a voter, a voter turned learner, more than RAFT_MAX_NODES),
 * RAFT_ETOOBIG (ctx over max_entry_bytes). */
int raft_propose_conf(struct raft *r, const struct raft_conf *target, const void *ctx,
                      uint32_t ctx_len, uint64_t *index, uint64_t *term, uint64_t *leader_hint);
/* The configuration in force (the newest in the log), the index of the entry that carries it
 * (0: it came from the snapshot or raft_config.peers) and whether that entry has committed. */
void raft_conf_get(const struct raft *r, struct raft_conf *out, uint64_t *index, bool *committed);
/* The encoded configuration (with its ctx) in force at index, for a snapshot's metadata: index
 * in [snapshot_index, last index]. Returns a pointer valid until the next event, or NULL. */
const uint8_t *raft_conf_blob_at(const struct raft *r, uint64_t index, uint32_t *len);
/* Whether id votes (in C_new or, while joint, C_old). */
bool raft_conf_is_voter(const struct raft_conf *c, uint64_t id);
/* Whether id is a member at all (voter, old voter or learner). */
bool raft_conf_is_member(const struct raft_conf *c, uint64_t id);
/* Encode c with ctx into a new buffer (free()). 0, RAFT_EINVAL (c invalid), RAFT_ENOMEM. */
int raft_conf_encode(const struct raft_conf *c, const void *ctx, uint32_t ctx_len, uint8_t **out,
                     uint32_t *len);
/* Decode bytes from outside (log entries and snapshots from peers, files). On success *ctx
 * points into p. RAFT_EINVAL for anything malformed: a bad version, counts over RAFT_MAX_NODES,
 * no voters, zero, unsorted or duplicate ids, a learner that is also a voter, a length that does
 * not add up. */
int raft_conf_decode(const uint8_t *p, size_t len, struct raft_conf *out, const uint8_t **ctx,
                     uint32_t *ctx_len);

/* Start an election now (tests, operator tooling); skips pre-vote. */
int raft_campaign(struct raft *r);
/* All storage writes of readies with persist_seq <= seq are durable. */
int raft_persisted(struct raft *r, uint64_t seq);
/* The state machine applied every committed entry up to index (bookkeeping for snapshots). */
int raft_applied(struct raft *r, uint64_t index);
/* The state machine has a durable snapshot covering every entry up to snapshot_index (at most the
 * applied index, and not below the previous snapshot): it becomes the snapshot sent to followers
 * that need an entry the log no longer holds. Entries below first_kept are dropped from memory
 * (first_kept in [first index in memory, snapshot_index + 1]); the caller may drop them from
 * storage too. RAFT_ESTATE if snapshot_index is beyond the applied index, below the previous
 * snapshot or outside the log; RAFT_EINVAL for a bad first_kept. */
int raft_compact(struct raft *r, uint64_t snapshot_index, uint64_t first_kept);
/* Leader: the transfer of the snapshot sent to `peer` ended. ok = false (the stream broke, the
 * follower refused it): the follower goes back to probing at once, which sends the snapshot
 * again if it still needs one. ok = true (the follower has all of it): it probes from just after
 * the snapshot at the next heartbeat, unless its acknowledgement arrives first. */
int raft_report_snapshot(struct raft *r, uint64_t peer, bool ok);

/* Linearizable read (ReadIndex, Raft thesis §6.4). ctx is the caller's nonzero id for the read.
 * Returns 0 when the read is under way: exactly one struct raft_read_state {ctx, index} for it
 * comes out in a later ready. index != 0: every entry committed anywhere in the cluster before
 * this call has an index <= index, so once the local state machine has applied up to index,
 * reading it is linearizable.
 * index == 0: the read failed (leadership changed, the leader did not answer, or it was not
 * confirmed within an election timeout, election_tick ticks); the caller may retry.
 *   Leader: records index = its commit index - but only once an entry of its own term has
 *     committed (thesis §6.4 step 1: before that its commit index may be stale; reads wait for
 *     the no-op of raft_become_leader) - then confirms leadership with a heartbeat round sent at
 *     once: every AppendEntries carries the newest round number, followers echo it, and when a
 *     majority (the leader included) has acknowledged a round >= the read's, the read is
 *     released. A single-member cluster releases as soon as its own-term entry is committed.
 *   Follower: sends RAFT_MSG_READ_INDEX to its leader, which runs the same round and answers
 *     with the index; the answer is released as the read state.
 * Leadership loss (any role change, or a follower's term or leader changing) fails every read
 * pending in the core at once. Errors: RAFT_EINVAL (ctx 0), RAFT_ENOTLEADER (no leader known;
 * nothing is released), RAFT_EBUSY (max_read_pending reads already waiting), RAFT_ENOMEM. */
int raft_read_index(struct raft *r, uint64_t ctx);

/* ---- effects ---- */
struct raft_read_state {
    uint64_t ctx;   /* as given to raft_read_index() */
    uint64_t index; /* read index; 0 = the read failed */
};

struct raft_ready {
    /* Storage work, to be written in this order, then reported with raft_persisted(persist_seq).
     * persist_seq == 0 means this ready has no storage work.
     * snapshot.index != 0: first install the snapshot received for (index, term) - restore the
     * state machine from it and replace the stored log with an empty one that starts after
     * index. Entries delivered for applying before it and not yet applied are obsolete. */
    uint64_t persist_seq;
    struct {
        uint64_t index, term;
    } snapshot;
    bool hs_changed;
    struct raft_hard_state hs;   /* current hard state (write it when hs_changed) */
    uint64_t truncate_from;      /* nonzero: delete stored entries >= this index first */
    struct raft_entry *entries;  /* then append these (contiguous) */
    size_t n_entries;

    /* Messages to send, grouped by destination (sorted by `to`, order kept per destination). */
    struct raft_msg *msgs;
    size_t n_msgs;

    /* Newly committed entries to apply, in index order. Only entries this node has persisted are
     * handed out, so an applied entry is always in the local durable log. */
    struct raft_entry *committed;
    size_t n_committed;

    /* Reads settled since the last ready (raft_read_index), in the order they settled. The
     * caller serves read `ctx` once it has applied `index`; index 0 means the read failed. */
    struct raft_read_state *read_states;
    size_t n_read_states;

    /* Soft state, for the caller's information. */
    uint64_t commit_index;
    uint64_t term;
    uint64_t leader_id;
    uint8_t role;
};

bool raft_has_ready(const struct raft *r);
int raft_ready(struct raft *r, struct raft_ready *rd);
void raft_advance(struct raft *r, struct raft_ready *rd);
/* The messages of rd addressed to `to`: returns their count and sets *first (NULL if none).
 * Cheap (binary search), so a per-peer sender thread can pick its own. */
size_t raft_ready_msgs_to(const struct raft_ready *rd, uint64_t to, const struct raft_msg **first);

/* ---- inspection (tests, status endpoints) ---- */
struct raft_status {
    uint64_t id;
    uint8_t role;
    uint64_t term;
    uint64_t voted_for;
    uint64_t leader_id;
    uint64_t commit_index;
    uint64_t applied_index;
    uint64_t last_index;
    uint64_t last_term;
    uint64_t persisted_index; /* last index durable and matching the in-memory log */
    uint64_t transferee;      /* leadership transfer target, 0 = none */
    uint64_t first_index;     /* first entry held in memory (last_index + 1 when none) */
    uint64_t snapshot_index;  /* newest snapshot (raft_compact, restore or install); 0 = none */
    uint64_t snapshot_term;
    bool voter;               /* this member votes in the configuration in force */
    bool conf_joint;          /* a joint configuration is in force */
    uint64_t conf_index;      /* the entry carrying it (raft_conf_get) */
    uint64_t conf_gen;        /* bumped whenever the configuration in force changes */
};
void raft_status_get(const struct raft *r, struct raft_status *st);

struct raft_progress_info {
    uint8_t state; /* enum raft_progress_state */
    uint64_t match;
    uint64_t next;
    uint32_t inflight_msgs;
    size_t inflight_bytes;
};
/* Leader only; RAFT_ESTATE otherwise, RAFT_EUNKNOWN for an unknown peer. */
int raft_progress_get(const struct raft *r, uint64_t peer, struct raft_progress_info *out);

/* The in-memory entry at index, or NULL (read-only; valid until the next event). */
const struct raft_entry *raft_log_get(const struct raft *r, uint64_t index);

#endif
