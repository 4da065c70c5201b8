/* sim.h: a deterministic, single-threaded cluster simulator for the Raft core (raft/core/raft.h).
 *
 * N cores run in one thread on virtual time (1 unit = 1 ms). A seeded PRNG drives everything:
 * message delay (so reordering), drops, duplicates, partitions, disk write latency, crashes that
 * lose every storage write not yet reported persisted, and restarts from the durable state. After
 * every event the checker verifies Raft's safety properties (paper Figure 3):
 *   Election Safety, Leader Append-Only, Log Matching, Leader Completeness, State Machine Safety,
 * plus consistency between the core and the storage stream it emits. The first violation is kept
 * in a message and counted. Same seed + same options = same run, bit for bit. */
#ifndef CRAFT_TESTS_SIM_SIM_H
#define CRAFT_TESTS_SIM_SIM_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "raft/core/raft.h"

#define SIM_MAX_NODES 9

struct sim_opts {
    int nodes;     /* voters of the initial configuration, 1 .. SIM_MAX_NODES */
    int spares;    /* more nodes, started outside the configuration (to be added); nodes + spares
                    * <= SIM_MAX_NODES. Node i < nodes + spares. */
    uint64_t seed;
    FILE *trace;   /* non-NULL: print a readable event trace */

    unsigned tick_ms;             /* default 10: one raft_tick per node every tick_ms */
    unsigned min_delay, max_delay; /* default 1..5 ms one-way; a range reorders messages */
    double drop, dup;             /* default 0: probability per message */
    unsigned disk_min, disk_max;  /* default 1..3 ms per storage write (in order per node) */

    /* Core configuration (defaults from raft_config_default()). */
    bool pre_vote, check_quorum;
    unsigned election_tick, heartbeat_tick;
    uint32_t max_append_entries, max_inflight_msgs;
};

void sim_opts_default(struct sim_opts *o, int nodes, uint64_t seed);

struct sim_stats {
    uint64_t sent[RAFT_MSG_TYPE_MAX + 1]; /* messages emitted by cores, per type */
    uint64_t sent_total;
    uint64_t append_with_entries; /* APPEND messages carrying at least one entry */
    uint64_t append_rejects;      /* APPEND_RESP with reject, delivered */
    uint64_t delivered;
    uint64_t dropped;
    uint64_t reads_started, reads_ok, reads_failed; /* raft_read_index through sim_read */
    uint64_t snapshots_taken;     /* sim_compact calls the core accepted */
    uint64_t snapshots_delivered; /* RAFT_MSG_SNAPSHOT (with its snapshot) that arrived */
    uint64_t snapshots_installed; /* rd.snapshot installs */
    uint64_t conf_proposed;       /* raft_propose_conf calls the core accepted */
    uint64_t conf_committed;      /* configuration entries seen committed (joint and final) */
};

struct sim;

struct sim *sim_new(const struct sim_opts *o);
void sim_free(struct sim *s);

uint64_t sim_now(const struct sim *s);
void sim_run(struct sim *s, uint64_t ms);
struct raft *sim_raft(struct sim *s, int i); /* NULL when node i is down */
uint64_t sim_id(int i);                      /* node i has raft id i + 1 */

/* Faults. Partitions: nodes talk iff they are up and share a group (all start in group 0). */
void sim_disconnect(struct sim *s, int i); /* node i alone in its own group */
void sim_connect(struct sim *s, int i);    /* back into group 0 */
void sim_partition(struct sim *s, const int *groups);
void sim_heal(struct sim *s); /* everyone into group 0 */
bool sim_connected(const struct sim *s, int i);
void sim_crash(struct sim *s, int i);   /* loses every write not reported persisted */
void sim_restart(struct sim *s, int i); /* from durable hard state + log */
/* Power loss under a slow disk: node i's disk stalls for stall_ms (0: no stall; nothing it writes
 * meanwhile, or has pending, becomes durable before then) and the node crashes after after_ms,
 * losing every write still pending while its messages (acks, a leader's appends) already went
 * out, then restarts down_ms + 1 later. Entries a leader counted toward commitment before they
 * were durable on it are then missing from its log when it votes again. */
void sim_power_cut(struct sim *s, int i, unsigned stall_ms, unsigned after_ms, unsigned down_ms);
bool sim_up(const struct sim *s, int i);
void sim_set_unreliable(struct sim *s, bool on); /* drops 10%, dups 5%, delay 1..27 ms */

/* Leader among up nodes with the highest term, or -1. */
int sim_leader(struct sim *s);
/* Run until exactly one leader exists among connected up nodes and agrees with a majority's
 * term (6.824 checkOneLeader), at most max_ms. Returns the node or -1. */
int sim_wait_leader(struct sim *s, uint64_t max_ms);
/* Propose value on node i: raft_propose()'s return code; *index on success. */
int sim_propose(struct sim *s, int i, uint64_t value, uint64_t *index);
/* raft_read_index() on node i with a fresh ctx (*ctx), then process its ready. The checker
 * verifies every release: index >= the highest index committed anywhere when the read started
 * (linearizability, thesis §6.4), index committed, released once, on that node. */
int sim_read(struct sim *s, int i, uint64_t *ctx);
/* 0 pending, 1 settled (released, or lost in a crash), -1 unknown ctx. *index (may be NULL): the
 * released read index, 0 if it failed or is pending. */
int sim_read_state(const struct sim *s, uint64_t ctx, uint64_t *index);
/* How many nodes applied `index`; *value = its value (entry payload) if any did. */
int sim_n_applied(struct sim *s, uint64_t index, uint64_t *value);
/* 6.824 one(): submit value to a leader (retrying any node that accepts), wait until `expected`
 * nodes applied it. Returns the index, or 0 after max_ms. */
uint64_t sim_one(struct sim *s, uint64_t value, int expected, bool retry, uint64_t max_ms);
/* Snapshot node i's state machine at `index` (0: its applied index) and compact its log (core
 * and storage), keeping `catchup` entries before the snapshot (raft_compact's return code).
 * RAFT_ESTATE when it is down, has writes pending, nothing new was applied, or index is past the
 * applied index. */
int sim_compact(struct sim *s, int i, uint64_t index, uint64_t catchup);
/* raft_propose_conf() on node i with target (no ctx), then process its ready. */
int sim_change(struct sim *s, int i, const struct raft_conf *target);
/* Node count (nodes + spares). */
int sim_size(const struct sim *s);
/* raft_transfer_leader() on node `from` toward node `to`, then process its ready. */
int sim_transfer(struct sim *s, int from, int to);
/* Number of leaders among up nodes in group 0 (the "connected" part). */
int sim_count_leaders(struct sim *s);
/* Max term over up nodes. */
uint64_t sim_max_term(struct sim *s);

const struct sim_stats *sim_stats(const struct sim *s);
int sim_violations(const struct sim *s);
const char *sim_violation(const struct sim *s);

/* One randomized chaos run for craft-sim and the seed tests: faults and a workload for a while,
 * then heal everything and require a leader and a new commit on every node within a bound.
 * Returns 0, or 1 with the reason in msg. */
int sim_chaos(int nodes, uint64_t seed, FILE *trace, char *msg, size_t msglen,
              struct sim_stats *stats);
/* The same with membership changes during the chaos (add, remove, promote, replace, learners),
 * two spare nodes to add, and liveness then required of the final configuration's members. */
int sim_chaos_members(int nodes, uint64_t seed, FILE *trace, char *msg, size_t msglen,
                      struct sim_stats *stats);

#endif
