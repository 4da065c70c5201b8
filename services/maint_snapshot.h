/* maint_snapshot.h: etcd's Maintenance.Snapshot, so `etcdctl snapshot save FILE` works against
 * craft unchanged.
 *
 * What it promises:
 * - A consistent point-in-time copy of this member's KV store (its snapshot payload, fsm.h
 *   snapshot_write: one read transaction, written while applies go on), zero-padded to a multiple
 *   of 512 bytes (etcdctl 3.4 refuses other sizes), streamed in SnapshotResponse messages of at
 *   most MAINT_SNAPSHOT_CHUNK blob bytes, remaining_bytes counting down, followed - as etcd does
 *   - by the SHA-256 of everything before it as the last 32 bytes, so a saved file carries its
 *   own checksum.
 * - Bounded: the copy is staged in an unlinked temporary file (not memory) by the stream's
 *   server thread; at most MAINT_SNAPSHOT_MAX_STREAMS snapshots stream at once (more get
 *   RESOURCE_EXHAUSTED); at most MAINT_SNAPSHOT_QUEUE chunks wait on a stream (the next go out
 *   as the client reads them), so a client that stops reading holds a few MiB.
 * - The file is craft's KV snapshot payload (docs/kv.md), not etcd's bbolt file: etcd's
 *   `snapshot status` and `snapshot restore` cannot read it.
 */
#ifndef CRAFT_SERVICES_MAINT_SNAPSHOT_H
#define CRAFT_SERVICES_MAINT_SNAPSHOT_H

#include <stdint.h>

#include "raft/node/fsm.h"
#include "rpc/rpc.h"

#define MAINT_SNAPSHOT_CHUNK (1u << 20)
#define MAINT_SNAPSHOT_MAX_STREAMS 1
#define MAINT_SNAPSHOT_QUEUE 4 /* chunks queued on a stream at once */

/* The service's state; the caller owns it (zeroed, then filled) and keeps it, with fsm, until the
 * server is shut down. */
struct maint_snapshot {
    struct raft_fsm *fsm;
    uint64_t cluster_id, member_id;
    _Atomic int active; /* snapshots streaming */
    const _Atomic _Bool *learner; /* while true: refused, as etcd 3.4 refuses a learner's
                                     streams ("etcdserver: rpc not supported for learner");
                                     NULL = never */
    /* Auth (docs/auth.md): the root role is needed, as in etcd; see cluster_api.h's admin. */
    int (*admin)(void *arg, struct rpc_call *call, struct rpc_stream *st, char *msg,
                 size_t msglen);
    void *admin_arg;
};

/* Registers /etcdserverpb.Maintenance/Snapshot on srv. 0 or -1. */
int maint_snapshot_register(struct rpc_server *srv, struct maint_snapshot *ms);

#endif
