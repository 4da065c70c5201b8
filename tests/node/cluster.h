/* cluster.h: a whole craft cluster in one process for the node tests: N members, each a real
 * raft_node with a real write-ahead log (fsync on) in a temp directory, a memfsm state machine and
 * a memnet link, plus a load generator of concurrent asynchronous proposers.
 *
 * Members are addressed by slot 0..n-1 (id = slot + 1). cluster_stop() detaches a member from the
 * network and stops it (its data directory stays); cluster_start() (re)starts it from that
 * directory with a fresh memfsm (applied_index 0: the whole log replays). The on_role callback
 * feeds a table the tests wait on with a condition variable, and an Election Safety check (at most
 * one leader per term, Raft paper Figure 3) that cluster_destroy() asserts. */
#ifndef CRAFT_TESTS_NODE_CLUSTER_H
#define CRAFT_TESTS_NODE_CLUSTER_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "raft/node/node.h"
#include "tests/node/memfsm.h"
#include "tests/node/memnet.h"

#define CLUSTER_MAX 8

struct cluster;

struct cluster_member {
    struct cluster *c;
    size_t slot;
    uint64_t id;
    char *dir;
    char *snap_dir; /* its snapshot store, used when the cluster has `snapshots` on */
    pthread_rwlock_t rw;     /* guards `node` against a concurrent cluster_stop */
    struct raft_node *node;  /* NULL when stopped */
    struct memfsm *fsm;      /* kept after stop for inspection, replaced on start */
    /* c->mu: */
    bool running, partitioned;
    uint8_t role;
    uint64_t term, leader;
};

struct cluster {
    size_t n;
    uint64_t ids[CLUSTER_MAX];
    struct cluster_member m[CLUSTER_MAX];
    char *base;
    struct memnet *net;
    struct raft_node_config tmpl; /* tests may tweak before starting members */
    bool snapshots;               /* members get a snapshot store (tmpl.snapshot_* apply) */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t role_gen; /* bumped on every on_role */
    struct { uint64_t term, id; } leaders[1024];
    size_t n_leaders;
    unsigned safety_violations;
};

int64_t cl_now_ms(void);

void cluster_init(struct cluster *c, size_t n, unsigned heartbeat_ms, unsigned election_ms);
void cluster_start(struct cluster *c, size_t slot);
void cluster_start_all(struct cluster *c);
void cluster_stop(struct cluster *c, size_t slot);
void cluster_destroy(struct cluster *c);
/* Power loss of the members in slots[0..n) at one instant. The cluster's tmpl.wal_io must be
 * lazy_io() (tests/wal/lazy_io.h), and tmpl.snap_io lazy_snap_io() for its snapshots to count:
 * every member goes off the network, then every write its log (and snapshot store) has not
 * synced is dropped and its disk refuses all I/O, then its threads are stopped (nothing
 * more reaches its disk) and the disk comes back for the next cluster_start. Returns how many
 * unsynced writes were dropped. */
size_t cluster_power_loss(struct cluster *c, const size_t *slots, size_t n);
void cluster_partition(struct cluster *c, size_t slot, bool on);

/* Slot of the running member claiming leadership in the highest term, or -1. */
int cluster_leader(struct cluster *c);
/* Wait until a running leader is followed (same term, same leader) by every running member that
 * is not partitioned; its slot, or -1 after timeout_ms. */
int cluster_wait_leader(struct cluster *c, int timeout_ms);
/* Wait for the next on_role event after generation `gen` (bounded). */
void cluster_wait_role_event(struct cluster *c, uint64_t gen, int timeout_ms);
uint64_t cluster_role_gen(struct cluster *c);

/* raft_node_propose on a slot, safe against a concurrent cluster_stop (ESHUTDOWN if stopped). */
int cluster_propose(struct cluster *c, size_t slot, const void *data, size_t len, int timeout_ms,
                    raft_node_done_fn cb, void *arg, uint64_t *leader_id);
int cluster_propose_wait(struct cluster *c, size_t slot, uint64_t id, int timeout_ms,
                         uint64_t *index, uint64_t *leader_id);
bool cluster_status(struct cluster *c, size_t slot, struct raft_node_status *st);

/* ---- load generator ---- */

#define LG_MAX_THREADS 32

struct loadgen {
    struct cluster *c;
    unsigned threads, window;
    size_t total; /* stop after this many acknowledged; 0 = until loadgen_stop */
    int timeout_ms;
    size_t payload;
    pthread_t th[LG_MAX_THREADS];
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
    uint64_t next_id;
    unsigned outstanding[LG_MAX_THREADS];
    size_t outstanding_total;
    /* Outcomes (mu). */
    uint64_t *acked, *acked_index;
    int64_t *lat_us;
    size_t n_acked, cap_acked;
    uint8_t *completions; /* per id: how many times its callback ran (must be <= 1) */
    size_t cap_ids;
    size_t errs[16];      /* by -err, for callbacks and immediate refusals */
    size_t bad_result;    /* success whose result did not echo the proposal id */
};

void loadgen_start(struct loadgen *lg, struct cluster *c, unsigned threads, unsigned window,
                   size_t total, int timeout_ms);
/* Wait (bounded) until n proposals were acknowledged. */
bool loadgen_wait_acked(struct loadgen *lg, size_t n, int timeout_ms);
/* Stop issuing, wait until every accepted proposal completed, join the threads. */
void loadgen_stop(struct loadgen *lg);
size_t loadgen_acked(struct loadgen *lg);
void loadgen_free(struct loadgen *lg);
/* Every callback ran at most once, and each accepted proposal ran exactly once. */
bool loadgen_exactly_once(struct loadgen *lg);

#endif
