/* node_internal.h: the state of one craft node and the helpers its files share (node_core.c: start,
 * stop, ticker, small entry points; node_driver.c: the Ready/Advance cycle, the WAL hand-off and
 * the driver thread; node_peer.c: outboxes and replicators; node_prop.c: proposals and the
 * applier; node_read.c: linearizable reads; node_timer.c: the deadline heap; node_members.c:
 * the peers seen running). Not part of the contract (node.h is); nothing outside raft/node/
 * includes this.
 *
 * Locks (docs/node.md has the full picture):
 *   n->mu      the node mutex: the core (struct raft), the proposal and read tables, the applier
 *              cursor, the persist records' companion state, flags. Never held while calling into the WAL
 *              (except wal_durable_index, a lock-free atomic read), the transport, the state
 *              machine or a user callback.
 *   peer->mu   one per peer: that peer's outbox and its busy flag. Never held together with n->mu.
 *   peers_mu   the peer table (n->peers), held by the thread routing a ready while it routes
 *              (it takes peer->mu and n->mu inside it); peers_set_mu, outermost, serializes
 *              node_peers_set. Neither is ever taken with n->mu or a peer->mu held.
 * The WAL writer's on_durable callback takes n->mu; that cannot deadlock because no thread holding
 * n->mu ever waits for the writer (wal_truncate_suffix, wal_close and friends are called with no
 * node lock held). */
#ifndef CRAFT_RAFT_NODE_NODE_INTERNAL_H
#define CRAFT_RAFT_NODE_NODE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "log/log.h"
#include "metrics/metrics.h"
#include "raft/node/node.h"
#include "raft/wal/wal.h"

/* ---- timeouts (node_timer.c) ---- */

/* A deadline, embedded in anything that waits with a timeout (proposals, reads) and kept in a
 * min-heap by deadline so the ticker finds the expired ones at once. */
struct node_timer {
    int64_t deadline_ns; /* CLOCK_MONOTONIC; 0 = no timeout (never in the heap) */
    size_t heap_pos;     /* SIZE_MAX when not in the heap */
};

struct node_timer_heap {
    struct node_timer **v;
    size_t n, cap;
};

/* Adds t when it has a deadline (else only marks it absent). 0 or RAFT_NODE_ENOMEM. */
int node_timer_add(struct node_timer_heap *h, struct node_timer *t);
/* Removes t if it is in the heap. */
void node_timer_remove(struct node_timer_heap *h, struct node_timer *t);
/* The earliest timer if its deadline is <= now, else NULL. */
struct node_timer *node_timer_due(const struct node_timer_heap *h, int64_t now);
void node_timer_heap_free(struct node_timer_heap *h);

#define NODE_CONTAINER_OF(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* ---- proposals (node_prop.c) ---- */

/* A proposal accepted by the core and not yet completed. It sits in a hash table by log index
 * (several may share an index after leader changes: each is told apart by its term) and, when it
 * has a timeout, in a min-heap by deadline. Whoever removes it from the table under n->mu owns its
 * completion: that is what makes completion exactly-once. */
struct node_prop {
    uint64_t index, term;
    struct node_timer timer;
    raft_node_done_fn cb;
    void *arg;
    struct node_prop *next; /* hash chain */
};

struct node_props {
    struct node_prop **buckets;
    size_t mask; /* buckets - 1, a power of two minus one */
    struct node_timer_heap timers;
    size_t count;
};

/* A completion decided under n->mu, run after it is released. */
struct node_done {
    struct node_prop *p;
    int err;
    uint64_t index;
    struct raft_fsm_result res;
};

struct node_done_list {
    struct node_done *v;
    size_t n, cap;
};

/* ---- reads (node_read.c) ---- */

/* A linearizable read waiting for its completion. It belongs to one batch (doubly linked) and,
 * with a timeout, to a min-heap by deadline. As for proposals, whoever unlinks it under n->mu owns
 * its completion. */
struct node_read {
    raft_node_read_fn cb;
    void *arg;
    struct node_timer timer;
    struct node_read_batch *batch;
    struct node_read *prev, *next;
};

enum node_batch_state {
    NODE_BATCH_QUEUED,  /* joins the next round */
    NODE_BATCH_ROUND,   /* its round (core read ctx) is in flight */
    NODE_BATCH_INDEXED, /* read index known: waits for the applier to reach it */
};

/* The reads that share one core ReadIndex round. */
struct node_read_batch {
    uint8_t state;  /* enum node_batch_state */
    uint64_t ctx;   /* ROUND: the id given to raft_read_index */
    uint64_t index; /* INDEXED: the read index */
    struct node_read *head;
    size_t n;
    struct node_read_batch *next; /* INDEXED list, by index */
};

struct node_reads {
    struct node_read_batch *queued;  /* NULL = none */
    struct node_read_batch *round;   /* NULL = no round in flight (at most one) */
    struct node_read_batch *indexed; /* ascending index */
    struct node_timer_heap timers;
    size_t count;      /* reads waiting, in every state */
    uint64_t next_ctx; /* ids for raft_read_index */
    uint64_t rounds;   /* rounds started (raft_node_status.read_rounds) */
};

struct node_read_done {
    struct node_read *rd;
    int err;
    uint64_t index;
};

struct node_read_done_list {
    struct node_read_done *v;
    size_t n, cap;
};

/* ---- peers (node_peer.c) ---- */

struct node_snap_sender;

/* One peer: its outbox and its replicator thread. Heap-allocated; it lives from the
 * node_peers_set that adds it until the one that removes it (or the node's stop), which joins
 * its replicator before freeing it. */
struct node_peer {
    struct raft_node *node;
    uint64_t id;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
    /* The outbox: deep copies of messages waiting for the replicator, oldest first. */
    struct raft_msg *box;
    size_t n, cap;
    bool busy;        /* a thread is inside send()/try_send() for this peer */
    size_t bytes;     /* payload bytes in box */
    uint64_t dropped; /* messages dropped because the outbox overflowed */
    /* Entries per AppendEntries routed to this peer (heartbeats: 0), counted by the routing
     * thread (raft_node_peers_view). */
    struct metrics_histogram append_entries;
    /* InstallSnapshot to this peer (node_snap.c; n->mu): its latest transfer, or NULL. */
    struct node_snap_sender *snd;
};

/* One InstallSnapshot transfer's thread (node_snap.c), n->mu for the flags. Its own allocation,
 * not the peer's, so a transfer still running when its peer is removed goes on without it (an
 * orphan, no longer paused after a failure) and is joined later instead of holding up the
 * removal for the length of a transfer. */
struct node_snap_sender {
    struct raft_node *n;
    uint64_t to;
    struct raft_msg msg;
    pthread_t thread;
    bool running;  /* the thread has not finished (cleared under n->mu just before it ends) */
    bool joinable; /* the thread was created and not joined yet */
    bool orphan;   /* its peer was removed: in n->snap_orphans */
    struct node_snap_sender *next; /* n->snap_orphans */
};

/* ---- members seen running (node_members.c) ---- */

/* Ids the table can hold: every member a configuration can have, plus former members whose
 * markers are still in the data directory. A slot, once given an id, keeps it. */
#define NODE_RAN_SLOTS (4 * RAFT_MAX_NODES)

struct node_ran {
    _Atomic uint64_t id;    /* 0 = free */
    _Atomic uint8_t state;  /* RAN_UNKNOWN, RAN_WRITING, RAN_KNOWN (node_members.c) */
    _Atomic bool member;    /* a peer now (node_members_set_peer): its messages may mark it */
};

/* A ready whose storage work has been handed to the WAL: it is durable once the WAL's durable
 * index reaches `need` (its hard state, if any, was saved synchronously before this record). */
struct node_persist {
    uint64_t seq;
    uint64_t need;
};

struct raft_node {
    struct raft_node_config cfg; /* defaults filled; peers and data_dir point at our copies */
    uint64_t *peer_ids;
    char *data_dir;
    uint8_t *boot_conf; /* the newest snapshot's configuration, for raft_new (start-up only) */
    pthread_cond_t conf_cv; /* raft_node_change_conf callers: a ready was taken */
    unsigned conf_waiters;
    uint64_t conf_gen_seen; /* driver: the core's conf_gen last reported through on_conf */
    uint64_t peer_leader;   /* driver: the leader the peer set was last built with */
    uint32_t boot_conf_len;
    unsigned tick_ms;

    pthread_mutex_t mu;
    pthread_cond_t driver_cv; /* the driver: core has work, WAL made progress, stop */
    pthread_cond_t apply_cv;  /* the applier: more committed entries, stop */
    pthread_cond_t tick_cv;   /* the ticker: stop */

    struct raft *r;
    struct wal *w;
    bool stopping;
    int fatal;            /* 0, or the RAFT_NODE_E* code that stopped the node (EIO) */
    bool fatal_reported;  /* pending proposals were failed after `fatal` was set */
    uint64_t durable_gen; /* bumped by every on_durable: the driver's back-pressure wait */

    /* The right to drive (node_driver.c "Who drives"): whoever sets `driving` under n->mu owns
     * the ready/advance cycle and the driver-only state below until it clears it. */
    bool driving;
    bool wal_waiting;           /* the driver thread waits for room in the WAL queue */
    bool has_handoff;           /* an inline driver left this ready's storage to the driver thread */
    struct raft_ready handoff;  /* valid while has_handoff */
    size_t handoff_done;        /* entries of it already handed to the WAL */

    /* Driver-only state (owned by whoever drives). */
    struct node_persist *precs;
    size_t n_precs, cap_precs;
    uint64_t wal_last; /* last index handed to the WAL */
    uint8_t rep_role;
    uint64_t rep_term, rep_leader;
    _Atomic uint64_t term_seen; /* rep_term, readable without n->mu (raft_node_term) */

    /* Applying: one thread at a time holds `applying` (n->mu) - the applier thread, or a thread
     * that drove a commit and found the applier idle (node_apply_inline_locked) - and with it
     * apply_results (max_apply_batch slots). */
    bool applying;
    struct raft_fsm_result *apply_results;

    /* Applier cursor (n->mu). */
    uint64_t apply_to;     /* highest committed index the core has handed out */
    uint64_t applied;      /* highest index handed to the state machine (or skipped) */
    uint64_t applied_term; /* term of that entry (0 if unknown) */

    struct node_props props;
    struct node_reads reads;
    uint64_t props_failed; /* proposals accepted and then failed (n->mu; raft_node_status) */

    /* Durations counted lock-free for metrics (raft_node_metrics_get): each fsm apply() call,
     * each snapshot written (take) and each state machine restore from a snapshot. */
    struct metrics_histogram apply_hist, snap_save_hist, snap_restore_hist;

    /* The peers: every member of the configuration but this one (node_peers_set). The table
     * is written with both peers_set_mu and peers_mu held, and read with either: the thread
     * routing a ready holds peers_mu for the whole of node_route_msgs (one lock per ready,
     * not per message), so a peer it found stays alive until it is done with it. */
    pthread_mutex_t peers_set_mu; /* one node_peers_set at a time */
    pthread_mutex_t peers_mu;
    struct node_peer *peers[RAFT_MAX_NODES];
    size_t n_peers;

    pthread_t driver, applier, ticker;
    bool driver_started, applier_started, ticker_started;

    /* Snapshots (node_snap.c), n->mu unless said otherwise. */
    struct snap_store *snaps;  /* NULL: snapshots off */
    pthread_t snap_thread;     /* takes snapshots in the background */
    bool snap_thread_started;
    pthread_cond_t snap_cv;    /* the snapshot thread: a snapshot is due or asked for, stop;
                                * senders: a transfer slot freed */
    uint64_t snap_index;       /* newest snapshot taken or installed */
    uint64_t snap_retry_at;    /* after a failed snapshot: applied index of the next try */
    uint64_t snap_bytes;       /* the newest snapshot file's size (0: none yet) */
    uint64_t compact_pending;  /* a snapshot taken whose compaction waits for the core to have
                                * applied up to it (0: none) */
    uint64_t snap_log_bytes;   /* entry bytes applied (or left to replay) since snap_index,
                                * counted for snapshot_log_percent */
    bool snapshotting;         /* fsm->snapshot_write is running */
    bool installing;           /* the driver restores the fsm: no apply, no snapshot_write */
    uint64_t snap_asked;       /* raft_node_snapshot_now requests made / served */
    uint64_t snap_served;
    int snap_result;           /* of the last snapshot taken for a request */
    unsigned snap_sends;       /* transfers running */
    struct node_snap_sender *snap_orphans; /* transfers whose peer was removed, to be joined */

    /* Members seen running with durable state, by id (node_members.c): atomics, so the check
     * needs no lock. */
    struct node_ran ran[NODE_RAN_SLOTS];

    /* When a message from each peer last arrived (raft_node_progress), by id, n->mu; when full,
     * the oldest entry makes room. */
    struct node_heard { uint64_t id; int64_t ms; } heard[2 * RAFT_MAX_NODES];
};

/* node_core.c */
int64_t node_now_ns(void);
void node_note_heard_locked(struct raft_node *n, uint64_t from);
void node_cond_init(pthread_cond_t *cv); /* CLOCK_MONOTONIC */
/* A log line (log/log.h) naming this member ("member": its id) and the caller's file and line. */
#define NODE_LOG(level, n, ...)                                                                   \
    log_emit((level), __FILE__, __LINE__, LOG_FIELDS(LOG_ID("member", (n)->cfg.id)), __VA_ARGS__)
#define node_log(n, ...) NODE_LOG(LOG_LEVEL_INFO, n, __VA_ARGS__)
#define node_warn(n, ...) NODE_LOG(LOG_LEVEL_WARN, n, __VA_ARGS__)
#define node_error(n, ...) NODE_LOG(LOG_LEVEL_ERROR, n, __VA_ARGS__)
/* n->mu held: stop accepting writes after a storage or state machine failure. */
void node_fail_locked(struct raft_node *n, int code, const char *what);

/* node_members.c */
/* Read the markers of the peers seen running (start-up, before any message arrives). */
int node_members_load(struct raft_node *n, char *err, size_t errlen);
/* Any thread, no lock: a message from a peer arrived; the first one proving the peer has durable
 * state creates its marker (a file and a directory sync, once per peer). */
void node_members_note(struct raft_node *n, const struct raft_msg *m);
/* node_peer.c: `id` is a peer now, or no longer; only a peer's messages create its marker. An id
 * the table has no room for is logged and not kept. */
void node_members_set_peer(struct raft_node *n, uint64_t id, bool member);

/* node_snap.c */
/* Start-up, before the core exists: open the store, load the newest valid snapshot, restore the
 * fsm from it if the fsm is behind it, and reset the log if the log ends before it. Fills the
 * snapshot fields of rs (the log's entries are loaded afterwards). */
int node_snap_load(struct raft_node *n, struct raft_restore *rs, char *err, size_t errlen);
int node_snap_start(struct raft_node *n);  /* the background snapshot thread */
void node_snap_stop(struct raft_node *n);  /* stops it and every sender; closes the store */
/* n->mu held: the applied index moved; wakes the snapshot thread when one is due. */
void node_snap_applied_locked(struct raft_node *n);
/* What one entry counts for snapshot_log_percent beyond its payload: about its log record's
 * header and the core's in-memory copy of it. */
#define NODE_ENTRY_OVERHEAD 32u
/* No lock: a RAFT_MSG_SNAPSHOT from the core for peer p (routed here instead of the transport). */
void node_snap_send(struct raft_node *n, struct node_peer *p, const struct raft_msg *m);
/* n->mu held: p is being removed; its transfer, if any, becomes an orphan: it ends on its own
 * (a wait for a slot or a pause ends at once, a transfer in progress when the transport
 * returns) and is joined by a later node_snap_reap_locked, node_snap_send or node_snap_stop. */
void node_snap_orphan_locked(struct raft_node *n, struct node_peer *p);
/* n->mu held: joins and frees the orphans that have ended. */
void node_snap_reap_locked(struct raft_node *n);
/* Driver thread, no lock: install rd->snapshot (restore the fsm, reset the log). 0 or EIO. */
int node_snap_install(struct raft_node *n, uint64_t index, uint64_t term);

/* node_driver.c */
/* n->mu held: the core may have a ready. Drives it in the calling thread when nobody else is
 * driving (never blocking: storage that would wait goes to the driver thread), else leaves it to
 * whoever drives. NODE_DRIVE_NOSTORE: hand every storage step to the driver thread (the WAL
 * writer calls this from its callback and must not wait on itself). May release and retake
 * n->mu. */
enum node_drive_mode { NODE_DRIVE_THREAD, NODE_DRIVE_INLINE, NODE_DRIVE_NOSTORE };
void node_kick_locked(struct raft_node *n, enum node_drive_mode mode);
/* The WAL's on_durable callback (writer thread, no WAL lock held; takes n->mu): notes the
 * progress, fails the node on a write error and drives inline without storage. */
void node_on_durable(void *arg, uint64_t index, uint64_t term, int err);
/* raft_node_start, no lock held, once the core and the peers exist: starts the driver thread.
 * 0 or RAFT_NODE_ENOMEM. */
int node_driver_start(struct raft_node *n);

/* node_peer.c */
/* Start-up: the peers of cfg.peers (node_peers_set). 0 or RAFT_NODE_ENOMEM. */
int node_peers_start(struct raft_node *n);
/* Shutdown, once nothing routes any more (the driver and the snapshot senders are joined):
 * stops and frees every peer, calling close_peer for each. */
void node_peers_stop(struct raft_node *n);
/* Makes the peers exactly ids[0..k) (every member of a new configuration; this node's own id
 * and duplicates are skipped): starts an outbox and a replicator for each new id, and for each
 * id no longer listed wakes its replicator, joins it, drops its queued messages, calls the
 * transport's close_peer and frees it; its snapshot transfer, if one runs, goes on as an orphan
 * (node_snap.c). Messages routed afterwards to an id that is no longer a peer are dropped.
 * Called by the driving thread after taking a ready whose configuration changed, before routing
 * its messages, with no node lock held (tests call it from their own thread: it is safe against
 * routing, try_send, snapshot senders and every other user of the peers); not concurrently with
 * raft_node_stop. It waits for a removed peer's replicator, which may be inside the transport's
 * send (bounded by the transport). 0; RAFT_NODE_EINVAL for an id 0 or more than RAFT_MAX_NODES
 * peers; RAFT_NODE_ENOMEM when a replicator cannot start (the peers are then unchanged). */
int node_peers_set(struct raft_node *n, const uint64_t *ids, size_t k);
/* Driver: copy rd's messages into the outboxes (no lock held). */
void node_route_msgs(struct raft_node *n, const struct raft_ready *rd);

/* node_prop.c */
int node_props_init(struct node_props *t, uint32_t max_pending);
void node_props_free(struct node_props *t);
/* n->mu held: move every pending proposal to `out` with error `err`. */
void node_props_fail_all_locked(struct raft_node *n, int err, struct node_done_list *out);
/* n->mu held: move proposals whose deadline passed to `out` (RAFT_NODE_ETIMEDOUT). */
void node_props_expire_locked(struct raft_node *n, int64_t now, struct node_done_list *out);
/* No lock held: run the completions and free them. */
void node_done_run(struct node_done_list *l);
/* n->mu held: when committed entries wait and nobody applies, applies one batch in the calling
 * thread (saving the applier thread's wake-up before a reply); else leaves them to the applier. */
void node_apply_inline_locked(struct raft_node *n);
int node_applier_start(struct raft_node *n);

/* node_read.c (every *_locked with n->mu held; completions go to `out`, run with no lock) */
void node_reads_free(struct node_reads *t);
/* The driver took ready rd: settle the rounds it names, start the next round. */
void node_reads_on_ready_locked(struct raft_node *n, const struct raft_ready *rd,
                                struct node_read_done_list *out);
/* The applier advanced n->applied: complete the reads whose index it reached. */
void node_reads_applied_locked(struct raft_node *n, struct node_read_done_list *out);
void node_reads_expire_locked(struct raft_node *n, int64_t now, struct node_read_done_list *out);
void node_reads_fail_all_locked(struct raft_node *n, int err, struct node_read_done_list *out);
void node_read_done_run(struct node_read_done_list *l);

#endif
