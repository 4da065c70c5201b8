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
 * - snapshot_write() writes the whole state as one payload, opaque to the runtime, through w in
 *   sequence (no seeking: the runtime can stream it into a file after its own header, or into a
 *   pipe; it syncs the file itself). It may run on any thread while apply() goes on: the payload
 *   is the state as of one applied index, which it returns in *index (it may be below the
 *   runtime's applied index: trailing NOOP/CONFIG entries reach the machine only with its next
 *   batch), and *term = the term of the entry at *index when the machine knows it, else 0 (a
 *   batch's trailing NOOP/CONFIG entries reach it only as last_index, without their terms; the
 *   runtime then takes the term from its log, which still holds that entry).
 * - snapshot_restore() replaces the whole state with a payload that snapshot_write() produced at
 *   (index, term), read through r to its end (read returns 0 right after the payload: a file
 *   region is offered as exactly that region). It refuses (-EBADMSG and the reason) a payload
 *   that is truncated, damaged, of another format or version, or of another index (or another
 *   term, where the payload names one). It is atomic and durable: on 0 the new state is on disk
 *   and applied_index() == index; after an error, or a crash at any point, the machine holds the
 *   old state or the new one, whole, and starts. apply() then continues at index + 1. The
 *   runtime never runs it concurrently with apply() or snapshot_write(), and offers only
 *   payloads it has verified (the snapshot file's checksum), so the machine's own checks are a
 *   second line.
 * - Both return 0 or a negative errno and put a one-line reason in the stream's err on failure.
 *   A machine that cannot snapshot leaves both NULL.
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

/* A byte sink / source for snapshots. write takes all len bytes and returns 0 or a negative
 * errno; read returns the number of bytes read (> 0; fewer than asked is fine), 0 at the end of
 * the payload, or a negative errno. err (errlen bytes; NULL = not wanted) receives the
 * machine's one-line reason when a snapshot function fails. */
struct raft_snapshot_writer {
    int (*write)(void *arg, const void *buf, size_t len);
    void *arg;
    char *err;
    size_t errlen;
};
struct raft_snapshot_reader {
    long (*read)(void *arg, void *buf, size_t len);
    void *arg;
    char *err;
    size_t errlen;
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
