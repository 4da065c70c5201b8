/* fsm.h: the pluggable state machine a craft node feeds committed entries to.
 *
 * What an implementation promises the node runtime:
 * - apply() calls never overlap (the runtime applies from one thread at a time - its applier
 *   thread, or the thread that drove a small commit - with a lock hand-off between them, so the
 *   machine needs no locking of its own against apply), with committed RAFT_ENTRY_NORMAL
 *   entries in strictly increasing index order and without gaps between calls (NOOP and CONFIG
 *   entries are consumed by the runtime and never reach apply; the runtime still reports their
 *   index through `last_index` so the machine can record progress). It is deterministic: the same
 *   entries give the same results and state on every member (Raft paper §5.4.3, State Machine
 *   Safety depends on it).
 * - applied_index() returns the index of the last entry whose effects are durable in the machine
 *   (0 for an in-memory machine that keeps nothing across restarts). After a restart the runtime
 *   skips entries at or below it, so a machine that stores its applied index in the same
 *   transaction as its data (the LMDB KV store does) replays only the log tail.
 * - snapshot_write()/snapshot_restore() serialise the whole state (used from the snapshot issue
 *   on; the contract is fixed now). restore replaces the state entirely.
 * Errors: a negative return from apply() is fatal for the node (it stops applying and reports the
 * error): a state machine must turn a bad command into a per-entry result, not a failure.
 */
#ifndef CRAFT_RAFT_FSM_H
#define CRAFT_RAFT_FSM_H

#include <stddef.h>
#include <stdint.h>

#include "raft/entry.h"

/* The outcome of one applied entry, handed to whoever proposed it. `data` is malloc'd by the
 * state machine (or NULL) and freed by the runtime after the proposer's completion has run. */
struct raft_fsm_result {
    int code;       /* machine-defined; 0 = ok */
    void *data;
    size_t len;
};

/* A byte sink / source for snapshots. Each returns 0 or a negative errno-style code; read
 * returns the number of bytes read (0 at the end). */
struct raft_snapshot_writer {
    int (*write)(void *arg, const void *buf, size_t len);
    void *arg;
};
struct raft_snapshot_reader {
    long (*read)(void *arg, void *buf, size_t len);
    void *arg;
};

struct raft_fsm {
    void *ctx;
    /* Apply n entries (n >= 1). results[i] is zeroed by the caller; fill it for entry i.
     * last_index >= entries[n-1].index is the highest committed index this batch covers
     * (it may name trailing NOOP/CONFIG entries that were filtered out). */
    int (*apply)(void *ctx, const struct raft_entry *entries, size_t n, uint64_t last_index,
                 struct raft_fsm_result *results);
    uint64_t (*applied_index)(void *ctx);
    int (*snapshot_write)(void *ctx, struct raft_snapshot_writer *w, uint64_t *index,
                          uint64_t *term);
    int (*snapshot_restore)(void *ctx, struct raft_snapshot_reader *r, uint64_t index,
                            uint64_t term);
};

#endif
