/* snap_restore.h: seeding a new cluster's member from a file `etcdctl snapshot save` wrote
 * against craft (Maintenance.Snapshot, services/maint_snapshot.h), as etcdutl's `snapshot
 * restore` does for etcd. `craftctl snapshot restore` is its command line.
 *
 * What it promises:
 * - The file is checked before anything is written: its last 32 bytes must be the SHA-256 of
 *   the rest, and what precedes them must be a KV snapshot payload (docs/kv.md) followed only by
 *   the zero padding Maintenance.Snapshot adds. A truncated, corrupted or foreign file is refused
 *   with one line saying which, and nothing is created.
 * - data_dir must not exist or be empty. It is filled as a member that has just installed that
 *   snapshot: kv/ holds the restored store, snap/ the snapshot (index, term), raft/ an empty log
 *   that starts after it and a hard state of that term. The member then starts with the same
 *   --initial-cluster and a new --initial-cluster-token (a new cluster identity: members of the
 *   old cluster refuse it), and every member restored from the same file agrees on the state.
 * - On a failure the half-written data_dir is removed again.
 */
#ifndef CRAFT_SERVICES_SNAP_RESTORE_H
#define CRAFT_SERVICES_SNAP_RESTORE_H

#include <stddef.h>
#include <stdint.h>

#include "services/kvstore/kv_snap.h"

#define SNAP_RESTORE_HASH 32 /* the SHA-256 trailer */

struct snap_restore_info {
    uint64_t index, term; /* where the restored member's log starts */
    int64_t revision;     /* the store's revision in the file */
};

/* 0 with *info filled, or -1 with err. map_size: the KV store's map (0 = 2 GiB; give the
 * cluster's --quota-backend-bytes). */
int snap_restore(const char *file, const char *data_dir, uint64_t map_size,
                 struct snap_restore_info *info, char *err, size_t errlen);

/* The pure checks (snap_restore_check.c; the fuzz target drives them). payload_end: in the last
 * n bytes before the hash, where the KV payload ends - its trailer followed only by fewer than 512
 * zero bytes; 0 with *end, or -1. check_image: a whole file in memory - its SHA-256 trailer, the
 * padding, and every byte of the KV payload (kv_snap.h); 0 with *meta and *payload_len, or a
 * negative errno with the reason in err. */
int snap_restore_payload_end(const uint8_t *tail, size_t n, size_t *end);
int snap_restore_check_image(const uint8_t *buf, size_t len, struct kv_snap_meta *meta,
                             uint64_t *payload_len, char *err, size_t errlen);

#endif
