/* node.h: a craft node, the threaded runtime around the pure consensus core (raft.h).
 *
 * What it promises:
 * - Threads (docs/node.md): a ticker (election and heartbeat ticks), a driver that takes the core's
 *   readies and hands storage work to the write-ahead log (wal.h, whose writer thread does group
 *   commit), one replicator thread per peer that ships that peer's messages through the transport
 *   (the core bounds each AppendEntries by entries and bytes and the pipeline window by messages
 *   and bytes), and one applier thread that feeds committed entries in order, in batches, to the
 *   state machine (fsm.h) and completes the proposals waiting on them. One node mutex plus
 *   condition variables; no thread sleeps to wait for another.
 * - Durability before acknowledgement: a vote, an append acknowledgement or a proposal's success
 *   never leaves the node before the state it depends on is durable. A leader writes its log in
 *   parallel with replication (thesis §10.2.1) and counts itself toward commit only once its own
 *   fsync is done.
 * - A slow or dead peer never blocks the others: each peer has its own thread and window.
 * - Every proposal completes exactly once: with the state machine's result after it is applied,
 *   or with an error (not leader, with the leader's id; shutting down; too many pending; timeout;
 *   leadership lost before commit).
 * - Linearizable reads without log writes (raft_node_read_index, ReadIndex): concurrent reads
 *   share one leadership-confirming round; every read completes exactly once.
 * - A restart with the same data directory recovers the log and hard state and rejoins.
 * Errors: functions return 0 or a negative RAFT_NODE_E* code and fill err where given.
 */
#ifndef CRAFT_RAFT_NODE_H
#define CRAFT_RAFT_NODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "raft/node/fsm.h"
#include "raft/core/raft.h"
#include "raft/node/transport.h"

enum {
    RAFT_NODE_OK = 0,
    RAFT_NODE_EINVAL = -1,     /* bad argument or configuration */
    RAFT_NODE_ENOTLEADER = -2, /* this node is not the leader; see leader_id */
    RAFT_NODE_ESHUTDOWN = -3,  /* the node is stopping */
    RAFT_NODE_EBUSY = -4,      /* too many proposals pending, or a transfer in progress */
    RAFT_NODE_ETIMEDOUT = -5,  /* not applied within the proposal's timeout */
    RAFT_NODE_ELOST = -6,      /* leadership changed before the entry committed: outcome unknown */
    RAFT_NODE_EIO = -7,        /* storage failed; the node stops accepting writes */
    RAFT_NODE_ETOOBIG = -8,    /* payload over max_entry_bytes */
    RAFT_NODE_ENOMEM = -9,
    RAFT_NODE_EPENDING = -10,  /* a configuration change is still in progress */
};
const char *raft_node_strerror(int code);

struct wal_io;
struct snap_io;

struct raft_node_config {
    uint64_t id;           /* this member; nonzero */
    const uint64_t *peers; /* the voters to start from when the log and snapshots hold no
                              configuration; this member need not be one (a member joining a
                              running cluster starts outside it and never campaigns until the
                              leader's log or snapshot says what it is) */
    size_t n_peers;
    const char *data_dir;  /* write-ahead log and hard state; locked while the node runs */
    struct raft_fsm *fsm;
    struct raft_transport *transport;
    uint64_t seed;         /* election jitter; 0 picks one from the clock */

    unsigned heartbeat_ms;  /* default 100 (etcd's --heartbeat-interval) */
    unsigned election_ms;   /* default 1000 (etcd's --election-timeout); >= 2 * heartbeat_ms */
    bool pre_vote;          /* default true */
    bool check_quorum;      /* default true */

    /* Replication flow control, passed to the core (raft.h has the defaults). 0 = default. */
    uint32_t max_append_entries;
    size_t max_append_bytes;
    uint32_t max_inflight_msgs;
    size_t max_inflight_bytes;

    uint32_t max_entry_bytes;    /* largest proposal payload; default 1.5 MiB + 64 KiB; at most
                                  * 32 MiB and half of wal_segment_bytes */
    uint32_t max_pending;        /* proposals accepted but not yet completed; default 65536 */
    uint32_t max_pending_reads;  /* raft_node_read_index calls not yet completed; default 65536 */
    uint32_t max_apply_batch;    /* entries per fsm apply() call; default 1024 */
    uint64_t wal_segment_bytes;  /* default 64 MiB */
    /* Per-peer outbox between the driver and that peer's replicator (docs/node.md). When a slow
     * or unreachable peer lets it fill, the oldest messages are dropped: Raft tolerates loss and
     * the core's flow control re-probes. 0 = default: 4096 messages, 64 MiB of payload. */
    uint32_t outbox_msgs;
    size_t outbox_bytes;

    /* Snapshots and log compaction (docs/node.md "Snapshots"). snap_dir NULL: none - the log
     * grows for ever and InstallSnapshot from a peer is dropped. Otherwise the fsm must implement
     * snapshot_write and snapshot_restore, and the transport send_snapshot. */
    const char *snap_dir;              /* the snapshot store's directory (raft/snap/snap.h) */
    uint64_t snapshot_count;           /* applied entries between snapshots; default 10000
                                        * (etcd 3.6's --snapshot-count); 0 = default */
    uint64_t snapshot_catchup_entries; /* entries kept before a snapshot for followers a little
                                        * behind; default 5000 (etcd's
                                        * --snapshot-catchup-entries) */
    /* A snapshot writes the whole state machine, so taking one every snapshot_count entries
     * costs O(state) per snapshot_count entries: with a large state the dumps dwarf the log
     * (docs/node.md "Snapshots"). With this set, a snapshot also waits until the entries applied
     * since the last one (payload bytes + NODE_ENTRY_OVERHEAD each) add up to this percent of
     * the last snapshot file's size, so dumps write at most 100/percent bytes per log byte; the
     * log then holds at most that many bytes more than snapshot_count entries. 0 = count only
     * (the default here; craftd's --snapshot-log-percent defaults to 50). */
    unsigned snapshot_log_percent;
    /* ... but never waits for more log than this (the log is in memory: a state that grows
     * with an uncompacted history must not take the log with it). 0 = no cap (the default
     * here; craftd's --snapshot-log-max-bytes defaults to 64 MiB). */
    uint64_t snapshot_log_max_bytes;
    unsigned max_snapshots;            /* snapshot files kept; default 5 (etcd's --max-snapshots) */
    unsigned max_snapshot_sends;       /* transfers to followers at once; default 2 */

    /* Slow operations are logged as etcd logs them (docs/logging.md), rate-limited. 0 = default. */
    uint64_t warn_apply_ms;     /* one apply() call longer than this: "apply request took too
                                 * long"; default 100 (etcd's --experimental-warning-apply-duration) */
    uint64_t warn_fdatasync_ms; /* a log fdatasync longer than this: "slow fdatasync"; default
                                 * 1000 (etcd's) */

    /* The configuration in force changed (an entry appended or truncated away, a snapshot
     * installed; once at start): called from the driving thread without the node mutex, before
     * the ready that carries the change has its messages routed - so a transport can learn a new
     * member's address (from ctx: the entry's context, craft's member table) before the first
     * message to it. May be NULL. */
    void (*on_conf)(void *arg, const struct raft_conf *conf, const uint8_t *ctx, size_t ctx_len);
    void *on_conf_arg;

    /* Observer for logs and tests: called without the node mutex on every role, term or known
     * leader change, from the driver thread. May be NULL. */
    void (*on_role)(void *arg, uint64_t id, uint8_t role, uint64_t term, uint64_t leader_id);
    void *on_role_arg;

    /* Tests only: the system calls the write-ahead log uses to change files (wal.h struct
     * wal_io), e.g. a layer that drops unsynced writes at a simulated power loss. NULL: real. */
    const struct wal_io *wal_io;
    const struct snap_io *snap_io; /* the same for the snapshot store (snap.h); NULL: real */
};
void raft_node_config_default(struct raft_node_config *cfg);

struct raft_node;

/* Opens the data directory, recovers, starts every thread. NULL + err on failure. */
struct raft_node *raft_node_start(const struct raft_node_config *cfg, char *err, size_t errlen);
/* Stops every thread, fails pending proposals with RAFT_NODE_ESHUTDOWN (their callbacks run
 * before this returns), closes the log and frees the node. */
void raft_node_stop(struct raft_node *n);

/* Hand a message received from a peer to the node (any thread). Malformed input is dropped, and
 * so is everything once raft_node_stop has begun; the transport must stop calling it before
 * raft_node_stop returns (the node is freed then). */
void raft_node_step(struct raft_node *n, const struct raft_msg *m);

/* A snapshot the transport has received whole from the leader into this node's snapshot store
 * (raft_node_snap_store, snap_recv_*), verified there, with the leader's RAFT_MSG_SNAPSHOT that
 * names it: stepped into the core, which may install it (the driver restores the state machine
 * from it and resets the log). Dropped unless the store holds that snapshot. */
void raft_node_step_snapshot(struct raft_node *n, const struct raft_msg *m);
/* The node's snapshot store (NULL without snap_dir), for the transport's receiving side. */
struct snap_store *raft_node_snap_store(struct raft_node *n);
/* Take a snapshot now (tests, operators) instead of waiting for snapshot_count entries; returns
 * once it is written and the log compacted: 0, RAFT_NODE_EINVAL without snapshots, or an error.
 * *index (may be NULL) receives the snapshot's index. */
int raft_node_snapshot_now(struct raft_node *n, uint64_t *index);

/* Completion of a proposal: exactly once, on the applier thread (success) or on whichever thread
 * detected the failure; it must not block for long or call raft_node_stop. On success err == 0,
 * index is where the entry committed and res is the state machine's result (valid during the
 * callback; steal res->data by setting it to NULL). On RAFT_NODE_ENOTLEADER, leader_id is the
 * leader this node knows of (0 = none). */
typedef void (*raft_node_done_fn)(void *arg, int err, uint64_t index, uint64_t leader_id,
                                  struct raft_fsm_result *res);

/* Propose data (copied). Returns 0 when accepted (cb fires exactly once later), or an error at
 * once (cb never fires): RAFT_NODE_ENOTLEADER (*leader_id set if not NULL), _EBUSY, _ESHUTDOWN,
 * _ETOOBIG, _EIO. timeout_ms <= 0 means no timeout. */
int raft_node_propose(struct raft_node *n, const void *data, size_t len, int timeout_ms,
                      raft_node_done_fn cb, void *arg, uint64_t *leader_id);
/* Blocking convenience over raft_node_propose. res (may be NULL) receives the result; free
 * res->data. */
int raft_node_propose_wait(struct raft_node *n, const void *data, size_t len, int timeout_ms,
                           struct raft_fsm_result *res, uint64_t *index, uint64_t *leader_id);

/* Linearizable read barrier (ReadIndex, Raft thesis §6.4; docs/node.md). cb fires exactly once:
 * err == 0 when this member has applied everything that was committed (anywhere) when the read
 * began, so a read of the local state machine now is linearizable; read_index is the index it
 * waited for. Or an error: RAFT_NODE_ELOST when leadership changed, or could not be confirmed
 * within an election timeout, while its round was under way (retry); _ENOTLEADER when no leader
 * is known; _ETIMEDOUT; _ESHUTDOWN (before raft_node_stop returns); _EIO after a storage failure.
 * timeout_ms <= 0 means no timeout of its own. Batching: a read that arrives while no round is
 * under way starts one at once; every read that arrives while one is under way joins the next,
 * so one round confirms many reads. On the leader a round is one heartbeat round to a majority
 * (sent at once); on a follower it is one request to the leader for its read index, after which
 * the member waits until its own applied index reaches it. cb runs on a node thread, without the
 * node mutex; it must not block for long. Returns 0 (cb will fire) or an error at once (cb never
 * fires): _ENOTLEADER (no leader known), _EBUSY (max_pending_reads waiting), _ESHUTDOWN, _EIO,
 * _EINVAL, _ENOMEM. */
typedef void (*raft_node_read_fn)(void *arg, int err, uint64_t read_index);
int raft_node_read_index(struct raft_node *n, int timeout_ms, raft_node_read_fn cb, void *arg);

/* Hand leadership to `to` (leader only; etcd's MoveLeader). Returns 0 once the transfer has begun:
 * the leader catches `to` up, then tells it to campaign at once, and refuses proposals with _EBUSY
 * until `to` takes over or an election timeout passes without it. Errors, at once: _ENOTLEADER
 * (this member is not the leader), _EINVAL (`to` is not a member, or is this member), _ESHUTDOWN,
 * _EIO. */
int raft_node_transfer_leader(struct raft_node *n, uint64_t to);

/* Change the cluster configuration (leader only; raft.h "cluster configuration": joint consensus
 * for any change of voters, learners that never vote). target lists the voters and learners
 * wanted; ctx (copied) rides in the entry - craft's services put the member table there. Blocks
 * until the new configuration is in force and committed (C_old,new then C_new for a change of
 * voters), at most timeout_ms (<= 0: no limit of its own). Returns 0; or at once
 * _ENOTLEADER (*leader_id set if not NULL), _EPENDING (the previous change has not finished),
 * _EBUSY (leadership transfer), _EINVAL (a bad target: no voters, duplicates, a voter turned
 * learner, a learner also a voter), _ETOOBIG, _ESHUTDOWN, _EIO; or later _ELOST (leadership
 * changed first: the change may or may not complete) or _ETIMEDOUT (it may still complete). */
int raft_node_change_conf(struct raft_node *n, const struct raft_conf *target, const void *ctx,
                          size_t ctx_len, int timeout_ms, uint64_t *leader_id);
/* The configuration in force (the newest in the log: raft_conf_get) and a copy of its ctx
 * (*ctx malloc'd, free() it; NULL when empty). *committed: whether its entry has committed. */
int raft_node_conf_get(struct raft_node *n, struct raft_conf *out, uint8_t **ctx, size_t *ctx_len,
                       bool *committed);

/* Leader only: this leader's view of member `id` (a voter or learner; this member too): *match
 * the highest log index known stored on it (raft_progress_info.match), *last_index this leader's
 * last index, *heard_ms_ago how long since this node last received any message from it (-1:
 * never since start; 0 for this member). Any out-pointer may be NULL. 0, RAFT_NODE_ENOTLEADER, or
 * RAFT_NODE_EINVAL (not a member). For etcd's rules on membership changes: a learner "in sync"
 * (match >= 90% of the leader's) and members "started" (heard from recently). */
int raft_node_progress(struct raft_node *n, uint64_t id, uint64_t *match, uint64_t *last_index,
                       int64_t *heard_ms_ago);

struct raft_node_status {
    struct raft_status core; /* role, term, leader, commit, last index, ... */
    uint64_t applied_index;  /* last index handed to the state machine */
    uint64_t durable_index;  /* last index durable in the local log */
    uint32_t pending;        /* proposals waiting */
    uint32_t reads_pending;  /* raft_node_read_index calls waiting */
    uint64_t read_rounds;    /* ReadIndex rounds started since start (each serves a batch) */
    uint64_t props_failed;   /* proposals accepted and then failed (timeout, leadership lost,
                                shutdown, storage failure) since start */
    int fatal;               /* 0, or the RAFT_NODE_* code of the storage or state machine
                                failure that made the node fail-stop (it logged the cause) */
};
void raft_node_status_get(struct raft_node *n, struct raft_node_status *st);
/* Metrics (metrics/metrics.h; docs/metrics.md). Histograms the node counts lock-free on its
 * threads; the pointers stay valid until raft_node_stop. */
struct metrics_histogram;
struct raft_node_metrics {
    const struct metrics_histogram *wal_fsync;        /* each log fdatasync (wal.h) */
    const struct metrics_histogram *apply_batch;      /* each fsm apply() call */
    const struct metrics_histogram *snapshot_save;    /* each snapshot written */
    const struct metrics_histogram *snapshot_restore; /* each state machine restore from a
                                                         snapshot (at start, or from a leader) */
};
void raft_node_metrics_get(struct raft_node *n, struct raft_node_metrics *out);

/* One peer's replication, for metrics: the leader's progress of it (progress_known false on a
 * follower), its outbox between the driver and its replicator, and how many entries each
 * AppendEntries routed to it carried (a copy; heartbeats count as 0). */
struct raft_node_peer_view {
    uint64_t id;
    bool progress_known;
    uint8_t state;            /* enum raft_progress_state */
    uint64_t match;
    uint32_t inflight_msgs;   /* AppendEntries in flight (the pipeline window in use) */
    uint64_t inflight_bytes;
    uint64_t outbox_msgs, outbox_bytes;
    uint64_t outbox_dropped;  /* messages dropped because the outbox overflowed, since start */
    uint64_t append_counts[25]; /* per bucket of append_bounds (not cumulative); [n] = above */
    uint64_t append_sum;
};
/* Entries-per-AppendEntries buckets of raft_node_peer_view (1, 2, 4, ... 4096). */
extern const uint64_t raft_node_append_bounds[13];
#define RAFT_NODE_APPEND_BOUNDS 13
/* Fills up to max views (the peers of the configuration in force); returns how many peers there
 * are. Takes the peer table's and the node's locks briefly. */
size_t raft_node_peers_view(struct raft_node *n, struct raft_node_peer_view *out, size_t max);

/* Whether peer `id` has been seen running with durable Raft state: it granted this node a vote,
 * acknowledged entries, or led it (remembered in the data directory, across restarts). A peer that
 * has, and starts again with an empty data directory, lost state it may have voted with: it must
 * not rejoin as itself (services/server.c asks its peers before starting). */
bool raft_node_has_run(struct raft_node *n, uint64_t id);
/* The current term as last seen by the runtime (the one on_role reported), without taking the
 * node lock: for hot paths such as every client reply's header. */
uint64_t raft_node_term(struct raft_node *n);

#endif
