/* kv_index.h: the KV store's in-memory index of its history (docs/kv.md "History"): for each
 * key that has history, its writes as (revision, sub, type), in the order they were made; and,
 * in byte order, the keys with a delete among their writes. It is what etcd's treeIndex is to
 * its backend: the history itself stays in LMDB's "hist" tree (by revision); this index answers
 * "which write of key k is the last one at or before revision r", with no LMDB write per put (a
 * per-key LMDB tree cost a page copy per put: docs/benchmarks.md). A read at an old revision
 * walks the keys of a span as the store's "kv" tree (the keys that exist) merged with the
 * ordered keys here (those that were deleted since the oldest revision kept): every key that
 * existed at any revision kept is in one or the other.
 *
 * What it promises
 * - kv_index_add appends; a key's writes must come in increasing (revision, sub) order, as the
 *   history is made. kv_index_remove takes one write out (compaction removes each key's oldest
 *   first, which is O(1) amortized); a key goes when its last write goes.
 * - Lookups and ordered iteration never allocate. Memory is the keys plus 24 bytes a write (and
 *   a skip list's pointers, 1.33 a key on average), so bounded by the history the store keeps,
 *   itself bounded by the quota.
 * - No locking here: the store guards it with a read-write lock (writers: the applier, after
 *   each commit, and the compactor; readers: historical reads and Watch's prev_kv).
 * - Deterministic: the skip list's levels come from a fixed-seed generator of its own. */
#ifndef CRAFT_SERVICES_KV_INDEX_H
#define CRAFT_SERVICES_KV_INDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KV_INDEX_PUT 0
#define KV_INDEX_DELETE 1

struct kv_index_ent {
    int64_t rev;
    uint64_t sub;
    uint8_t type; /* KV_INDEX_PUT or KV_INDEX_DELETE (the history's types) */
};

struct kv_index;
struct kv_index_node;

struct kv_index *kv_index_new(void);
void kv_index_free(struct kv_index *x);

/* Appends e to key's writes. 0, -1 when out of memory (nothing changed), -2 when e does not come
 * after the key's last write (nothing changed). */
int kv_index_add(struct kv_index *x, const void *key, size_t klen, const struct kv_index_ent *e);

/* Removes the write (rev, sub) of key. 0, or -1 when there is no such write. */
int kv_index_remove(struct kv_index *x, const void *key, size_t klen, int64_t rev, uint64_t sub);

/* The key's node, or NULL when the key has no writes. */
const struct kv_index_node *kv_index_find(const struct kv_index *x, const void *key, size_t klen);
/* Among the keys with a delete in their writes: the first at or after `key` (byte order,
 * shorter first on a tie), the first of all, the next one; NULL at the end. */
const struct kv_index_node *kv_index_seek(const struct kv_index *x, const void *key, size_t klen);
const struct kv_index_node *kv_index_first(const struct kv_index *x);
const struct kv_index_node *kv_index_next(const struct kv_index_node *n);
/* Every key's node, in no order, into out (room for kv_index_keys(x)); returns how many. */
size_t kv_index_nodes(const struct kv_index *x, const struct kv_index_node **out);

const uint8_t *kv_index_key(const struct kv_index_node *n, size_t *klen);
/* The node's writes, oldest first (n >= 1). */
const struct kv_index_ent *kv_index_ents(const struct kv_index_node *n, size_t *count);

/* The last of the node's writes at or before revision rev, or NULL when all are after it. */
const struct kv_index_ent *kv_index_at(const struct kv_index_node *n, int64_t rev);
/* The write just before (rev, sub) among the node's writes, or NULL when there is none (or
 * (rev, sub) is the first). */
const struct kv_index_ent *kv_index_before(const struct kv_index_node *n, int64_t rev,
                                           uint64_t sub);

size_t kv_index_keys(const struct kv_index *x);
size_t kv_index_entries(const struct kv_index *x);
size_t kv_index_deleted_keys(const struct kv_index *x); /* those in the ordered list */

#endif
