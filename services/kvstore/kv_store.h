/* kv_store.h: the etcd v3 KV state machine of craft, stored in LMDB, behind raft/node/fsm.h.
 *
 * What it promises
 * - Semantics of etcd 3.4's KV API (docs/kv.md lists each rule and every deviation): one
 *   store-wide revision, +1 per write transaction that changes a key (a Put always; a
 *   DeleteRange or Txn only when it deleted or wrote something); per key create_revision,
 *   mod_revision and version (a delete resets it); Range with range_end, "\0" from-key, limit,
 *   count_only, keys_only, sort order/target and min/max revision filters; Put with prev_kv and
 *   ignore_value; DeleteRange with prev_kv; Txn compares (VALUE, VERSION, CREATE, MOD, LEASE)
 *   and nested requests under one revision; Compact.
 * - History (docs/kv.md "History"): every write is kept, as an event at (revision, sub), until
 *   compacted; a Range (alone or in a Txn) at any revision from the compacted one to the current
 *   one reads the state then, below it "required revision has been compacted". Compact moves
 *   the compacted revision at once (reads below it fail from then on) and a background thread
 *   removes the history below it in transactions of at most COMPACT_BATCH entries examined
 *   (the applier waits for one at most), keeping each key's last write at or below it (unless
 *   a delete); kv_store_compact_wait waits for that removal to be synced (`physical`).
 *   kv_store_events reads the history in order, for Watch. Which writes each key had is kept
 *   in memory (kv_index.h: about 24 bytes a kept write plus each key, built from the history at
 *   open), so a put writes two trees ("kv" and "hist"), not three; no reader holds that index
 *   long enough to hold back apply.
 * - Storage: one LMDB environment in `dir` (data.mdb, lock.mdb, plus kv.lock, an flock that
 *   keeps a second process or a second open in this process out, and kv.state, below). Each apply() call is one
 *   LMDB write transaction that also stores the applied index, the revision and the compacted
 *   revision, so after a restart applied_index() is exact and the runtime replays only the log
 *   tail; a batch is all or nothing. The data can exceed RAM (LMDB is mmap'd).
 * - Durability: the Raft log makes entries durable before they commit, so the store need
 *   not sync before a write is answered. By default apply() commits without fdatasync (LMDB
 *   MDB_NOSYNC: visible to readers at once, on disk later) and a background thread syncs every
 *   sync_interval_ms; a write's reply then waits for one fdatasync, the log's. A process crash
 *   loses nothing (the page cache keeps every write, in order; the applied index is in the
 *   same transaction). A *machine* crash may leave the file torn, since ext4 does not keep
 *   write order: the file kv.state says "dirty since boot <id>" while unsynced commits may
 *   exist and "clean" after close's final sync, and open discards a store left dirty by
 *   another boot (or with an unreadable kv.state) and starts empty at applied index 0, so the
 *   node replays the log from its first entry (kv_store_open_note says so). That relies on the
 *   log still starting at index 1; log compaction will have to keep a synced snapshot of the
 *   store to rebuild from instead. sync_every_batch restores one fdatasync per batch.
 * - Snapshots (fsm.h snapshot_write/snapshot_restore; docs/kv.md "Snapshots"): the payload
 *   (kv_snap.h, version 2) is a logical dump, written from one LMDB read transaction while
 *   apply goes on, of the history not yet compacted (every write, in order; the latest state
 *   follows from it) plus the applied index, the term of that entry (recorded by apply
 *   when the batch's last entry is at last_index; 0 = not known) and the revisions, with a
 *   CRC-32C; restore checks all of it and refuses anything else (-EBADMSG, the reason in the
 *   reader's err). Restore syncs the old store and marks it clean, builds the new one in
 *   dir/kv.restore, syncs it, renames its data.mdb over dir/data.mdb, fsyncs dir, then swaps
 *   the open environment (readers wait only for that swap); a crash at any step leaves the old
 *   store or the new one, whole and synced, and open removes a leftover kv.restore. On 0 the
 *   new state is durable (kv.state stays clean until the next apply marks it dirty, so even a
 *   machine crash keeps it), applied_index() is the snapshot's and apply continues at
 *   index + 1. A failure before the rename leaves the old store serving; one after it stops
 *   the store (like a failed sync) and the next start opens the new one.
 * - Results: every applied entry gets raft_fsm_result.code = a gRPC status code (0 = OK) and
 *   data = a packed craft.kv.Result (services/proto/etcd/kvcmd.proto) with the etcd response
 *   or etcd's error message. Bad commands (undecodable bytes, invalid requests, unknown enum
 *   values) and a full map (MDB_MAP_FULL: "etcdserver: mvcc: database space exceeded") are
 *   per-entry error results that change nothing; apply() fails (negative) only on an I/O
 *   error, corruption of the store or out of memory.
 * - Threads: apply() calls never overlap (fsm.h: the node applies from one thread at a time);
 *   kv_store_range, kv_store_txn_read and kv_store_status from any thread at any time,
 *   concurrently with apply (each reads one LMDB read transaction: a consistent state as of the
 *   last committed batch), kv_store_size_in_use too (an atomic the applier publishes).
 *   The fsm's snapshot_write from any thread, concurrently with apply and reads; its
 *   snapshot_restore with neither apply nor snapshot_write running, reads welcome.
 *   kv_store_close only when nothing else uses the store.
 * - Errors: functions return 0 or -1 and fill a struct kv_err with the gRPC status code and
 *   the message etcd gives for that case; nothing here exits or aborts on bad input.
 *
 * How the KV service uses it (one write; the codec functions are kv_cmd.h's): for a Txn,
 * kv_check_txn_wire on the raw bytes before unpacking; decode the client's request;
 * kv_validate_put (or _delete_range/_txn/_compaction), answering a failure with status
 * (err.code, err.msg); kv_cmd_encode_put to get the log command; propose it; when the
 * proposal completes, pass the fsm result's data to kv_result_decode; if result->code != 0
 * answer status (code, message), else fill result->put->header (cluster_id, member_id,
 * raft_term; revision is set) and send result->put; free the result with
 * craft__kv__result__free_unpacked(result, NULL).
 * Reads: kv_validate_range, then (after ReadIndex, or at once when serializable)
 * kv_store_range; a Txn for which kv_txn_is_readonly() is true may be served the same way
 * with kv_store_txn_read instead of going through the log.
 */
#ifndef CRAFT_SERVICES_KV_STORE_H
#define CRAFT_SERVICES_KV_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "raft/node/fsm.h"
#include "services/proto/etcd/rpc.pb-c.h"

/* gRPC status codes the store reports (the values of grpc_status_code). */
enum {
    KV_OK = 0,
    KV_CODE_INVALID_ARGUMENT = 3,
    KV_CODE_NOT_FOUND = 5,
    KV_CODE_RESOURCE_EXHAUSTED = 8,
    KV_CODE_FAILED_PRECONDITION = 9,
    KV_CODE_OUT_OF_RANGE = 11,
    KV_CODE_INTERNAL = 13,
    KV_CODE_UNAVAILABLE = 14,
    KV_CODE_DATA_LOSS = 15,
};

/* etcd's messages (rpctypes/error.go), for callers and tests that match on them. */
#define KV_ERR_EMPTY_KEY "etcdserver: key is not provided"
#define KV_ERR_KEY_NOT_FOUND "etcdserver: key not found"
#define KV_ERR_VALUE_PROVIDED "etcdserver: value is provided"
#define KV_ERR_LEASE_PROVIDED "etcdserver: lease is provided"
#define KV_ERR_TOO_MANY_OPS "etcdserver: too many operations in txn request"
#define KV_ERR_DUPLICATE_KEY "etcdserver: duplicate key given in txn request"
#define KV_ERR_COMPACTED "etcdserver: mvcc: required revision has been compacted"
#define KV_ERR_FUTURE_REV "etcdserver: mvcc: required revision is a future revision"
#define KV_ERR_NO_SPACE "etcdserver: mvcc: database space exceeded"
#define KV_ERR_LEASE_NOT_FOUND "etcdserver: requested lease not found"
#define KV_ERR_LEASE_EXISTS "etcdserver: lease already exists"
#define KV_ERR_LEASE_TTL_TOO_LARGE "etcdserver: too large lease TTL"
/* craft's own (etcd has no equivalent; see docs/kv.md). */
#define KV_ERR_KEY_TOO_LONG "etcdserver: key is too long (craft: at most 511 bytes)"
#define KV_ERR_LEASE_KEY_TOO_LONG "etcdserver: key is too long (craft: at most 503 bytes with a lease)"
#define KV_ERR_BAD_ENUM "etcdserver: unknown enum value in request"
#define KV_ERR_TXN_TOO_DEEP "etcdserver: txn nested too deeply"
#define KV_ERR_BAD_COMMAND "craft: malformed KV command in the log"

#define KV_MAX_LEASE_TTL 9000000000LL /* seconds: etcd's MaxLeaseTTL */
#define KV_MAX_LEASE_KEY 503 /* a key with a lease: 8 bytes of lease ID + key = LMDB's limit */
#define KV_MAX_KEY 511          /* LMDB's compiled-in key size limit (Debian's liblmdb) */
#define KV_MAX_TXN_DEPTH 256    /* nesting bound of Txn inside Txn (etcd has none) */
#define KV_DEFAULT_MAX_TXN_OPS 128
#define KV_DEFAULT_MAP_SIZE (2ull << 30) /* etcd's default --quota-backend-bytes */
#define KV_DEFAULT_SYNC_MS 100 /* like etcd's --backend-batch-interval */
#define KV_MAX_SYNC_MS 60000

/* The map size for a quota (--quota-backend-bytes): the quota plus room beyond it (the quota
 * again, at least 8 GiB; at most 16 TiB in all). The quota check runs before proposing, against
 * the pages in use as of the last applied batch, so writes already in flight, pages that a
 * snapshot's read transaction keeps from reuse and free-list fragmentation can take the file past
 * the quota; the map must hold them, or the store fills at apply - where members could disagree
 * about which entry fits, and a map too full for even the applied-index record stops the member.
 * Only address space: the file grows as pages are written (etcd maps 10 GiB for the same
 * reason). */
uint64_t kv_store_map_size(uint64_t quota);

struct kv_err {
    int code;      /* gRPC status code; 0 = OK */
    char msg[160]; /* etcd's message, or a craft one for storage errors */
};

struct kv_store_opts {
    /* Largest size the data file may grow to (LMDB map size), bytes; 0 = 2 GiB. Writes past
     * it get KV_ERR_NO_SPACE. Give every member the same value (docs/kv.md: why). */
    uint64_t map_size;
    /* Concurrent read transactions (readers in flight); 0 = 512. */
    unsigned max_readers;
    /* Durability (see "Durability" above). false: applied batches are synced in the
     * background every sync_interval_ms (0 = 100 ms, at most 60,000); true: every batch's
     * commit waits for its fdatasync. */
    bool sync_every_batch;
    unsigned sync_interval_ms;
    /* Tests only: the machine's boot id to assume (NULL = /proc/sys/kernel/random/boot_id). */
    const char *boot_id;
    /* Tests only: every background or explicit sync fails with EIO. */
    bool fail_sync;
    /* Tests only: apply() fails with -EIO when it reaches the entry with this index, after
     * having applied the entries before it in the same (then aborted) transaction. 0 = off. */
    uint64_t fail_at_index;
    /* Tests only: called after each record a snapshot write has written (op "snapshot-record",
     * n = records so far), and before each step of a restore (op "sync-old", "build",
     * "build-commit" (every restore_txn_bytes of records), "sync-new", "rename", "fsync-dir",
     * "switch", "cleanup"; n counts the calls), and on the compactor's thread after each
     * removal batch commits, before the index forgets what it removed ("compact-committed",
     * n = entries removed; the return value is ignored). A nonzero return fails the operation there as
     * a failure of that step would; the hook may also block (holding a snapshot write midway)
     * or end the process (a crash before that step). */
    int (*step_hook)(void *arg, const char *op, uint64_t n);
    void *step_arg;
    /* Tests only: bytes of records per write transaction while a restore builds the new
     * store (0 = 64 MiB), so that small tests go through several. */
    uint64_t restore_txn_bytes;
};

struct kv_store;

/* Opens (creating dir's files if needed) the store in `dir`, which must exist. NULL with a
 * one-line reason in err[errlen] when the files are corrupt, not an LMDB store of craft, locked
 * by another user, unwritable, or the options are invalid. opts may be NULL (defaults). */
struct kv_store *kv_store_open(const char *dir, const struct kv_store_opts *opts, char *err,
                               size_t errlen);
/* Syncs, marks the store clean and closes it. */
void kv_store_close(struct kv_store *s);
/* Flushes every applied batch to disk now (the background thread does it every
 * sync_interval_ms; log compaction will call this before dropping entries). 0, or a negative
 * errno; a failure is sticky: apply() then fails with -EIO and close does not mark the store
 * clean. */
int kv_store_sync(struct kv_store *s);
/* What open had to do that the operator should hear about (one line; "" = nothing), e.g. a
 * store discarded after a machine crash, to be rebuilt from the Raft log. */
const char *kv_store_open_note(const struct kv_store *s);
/* The fsm table over s (valid while s lives), snapshots included ("Snapshots" above). */
struct raft_fsm *kv_store_fsm(struct kv_store *s);

/* Validation before proposing (etcd's v3rpc checks, in etcd's order), so that invalid requests
 * never enter the log. 0, or -1 with *err = {InvalidArgument/NotFound, etcd's message}.
 * max_txn_ops: etcd's --max-txn-ops (0 = 128). apply() repeats every check except
 * max_txn_ops (a member-local flag must not decide a replicated outcome). */
int kv_validate_range(const Etcdserverpb__RangeRequest *r, struct kv_err *err);
int kv_validate_put(const Etcdserverpb__PutRequest *r, struct kv_err *err);
int kv_validate_delete_range(const Etcdserverpb__DeleteRangeRequest *r, struct kv_err *err);
int kv_validate_txn(const Etcdserverpb__TxnRequest *r, unsigned max_txn_ops, struct kv_err *err);
int kv_validate_compaction(const Etcdserverpb__CompactionRequest *r, struct kv_err *err);
/* A LeaseGrant as it enters the log: ID != 0 (NOT_FOUND KV_ERR_LEASE_NOT_FOUND, etcd's answer
 * to lease id 0) and 1 <= TTL <= KV_MAX_LEASE_TTL (above: OUT_OF_RANGE
 * KV_ERR_LEASE_TTL_TOO_LARGE; below 1: INVALID_ARGUMENT, since the proposer raises every TTL
 * to the minimum first). A LeaseCheckpoint: every ID != 0 and 0 <= remaining_TTL <=
 * KV_MAX_LEASE_TTL, at most KV_MAX_LEASE_CHECKPOINTS of them. */
#define KV_MAX_LEASE_CHECKPOINTS 10000
int kv_validate_lease_grant(const Etcdserverpb__LeaseGrantRequest *r, struct kv_err *err);
int kv_validate_lease_checkpoint(const Etcdserverpb__LeaseCheckpointRequest *r,
                                 struct kv_err *err);
/* true when no branch (at any depth) of the txn holds a Put or DeleteRange. */
bool kv_txn_is_readonly(const Etcdserverpb__TxnRequest *r);

/* Serves a Range from the state as of the last applied batch (call kv_validate_range first).
 * 0 with *out (free with etcdserverpb__range_response__free_unpacked(*out, NULL)), or -1 with
 * *err (future / compacted revision, storage error). header.revision is set. */
int kv_store_range(struct kv_store *s, const Etcdserverpb__RangeRequest *r,
                   Etcdserverpb__RangeResponse **out, struct kv_err *err);
/* Serves a read-only Txn (kv_txn_is_readonly) the same way; -1 with *err when it is not read
 * only, or for the errors a Txn gets from apply. Free with
 * etcdserverpb__txn_response__free_unpacked. */
int kv_store_txn_read(struct kv_store *s, const Etcdserverpb__TxnRequest *r,
                      Etcdserverpb__TxnResponse **out, struct kv_err *err);

/* Current revision, compacted revision, data file size and bytes in use (file size minus
 * LMDB's free pages), as of the last applied batch. Any pointer may be NULL. 0 or -1. */
int kv_store_status(struct kv_store *s, int64_t *rev, int64_t *compact_rev, int64_t *db_size,
                    int64_t *db_size_in_use);
/* kv_store_status's db_size_in_use in O(1), from any thread (the quota check reads it on every
 * write): computed after each applied batch commits and once at open, so it is that of the
 * last applied batch; a call racing apply may get the batch before. */
int64_t kv_store_size_in_use(const struct kv_store *s);
/* Index of the last applied entry (what fsm applied_index returns). */
uint64_t kv_store_applied_index(struct kv_store *s);

/* ---- History, for Watch (docs/kv.md "History") ----
 * Every write is kept as an event at (revision, sub), sub counting the writes of one revision
 * from 0: a PUT with the key's new record, or a DELETE (tombstone) with the key only, until a
 * compaction removes it. Pointers in an event point into the store's read transaction and
 * are valid only during the callback. */
enum { KV_EVENT_PUT = 0, KV_EVENT_DELETE = 1 }; /* = mvccpb Event.EventType */

struct kv_event_kv {
    const uint8_t *key;
    size_t klen;
    int64_t create, mod, version, lease; /* a DELETE's kv: mod = its revision, the rest 0
                                            (etcd's tombstone KeyValue) */
    const uint8_t *val;
    size_t vlen;
};

struct kv_event {
    int type;    /* KV_EVENT_PUT or KV_EVENT_DELETE */
    int64_t rev; /* = kv.mod */
    int64_t sub;
    struct kv_event_kv kv;
    /* The key's previous version (only when asked for): absent when the key did not exist
     * before this event or that version was compacted away (etcd omits it then too). */
    bool has_prev;
    struct kv_event_kv prev;
};

/* Returns 0 to go on, 1 to stop after this event, negative to fail (passed back). */
typedef int (*kv_event_cb)(void *arg, const struct kv_event *ev);

/* Reads, from one read transaction (a consistent state as of the last applied batch), the
 * events with revision >= from_rev in (revision, sub) order, calling cb for each; with_prev
 * fills prev. It stops at the end, when cb returns 1 or negative, or at the first revision
 * boundary after max_events events (0 = no bound), so a revision's events are never split
 * by the bound; with_prev, also before an event whose previous version a compaction applied
 * after this transaction began may have removed (the next call, in a newer transaction,
 * answers compacted for it). *next_rev = the revision to resume from (the first one not wholly
 * delivered: when it stopped mid-revision it is that revision, and the caller skips what it
 * has), *cur_rev
 * = the store's revision in that transaction (all events up to it were delivered when
 * *next_rev == *cur_rev + 1), *compact_rev = its compacted revision. from_rev <= 0 reads
 * nothing and returns next_rev = cur_rev + 1.
 * 0; or -1 with *err: OUT_OF_RANGE KV_ERR_COMPACTED when 0 < from_rev < compacted revision
 * (*compact_rev set to it), or a storage error; or cb's negative value. Any pointer of the three
 * may be NULL. Any thread, concurrently with apply. */
int kv_store_events(struct kv_store *s, int64_t from_rev, size_t max_events, bool with_prev,
                    kv_event_cb cb, void *arg, int64_t *next_rev, int64_t *cur_rev,
                    int64_t *compact_rev, struct kv_err *err);

/* Called on the applier thread after each applied batch commits (rev = the store's revision
 * then, which may not have changed) and after a snapshot restore (rev may jump, even back).
 * It must not block: wake a thread and return. Set once, before the store is applied to;
 * fn NULL clears it. */
void kv_store_set_commit_hook(struct kv_store *s, void (*fn)(void *arg, int64_t rev), void *arg);

/* ---- Leases (docs/kv.md "Leases") ----
 * The lease table is replicated state like the keys: log commands grant (id, TTL), revoke and
 * checkpoint leases, and every member applies them alike. When a lease expires is not: that
 * is the leader's decision (services/lessor.h), carried out by proposing a revoke.
 * - Grant: ID 0 is NOT_FOUND (the proposer picks the ID), an existing ID FAILED_PRECONDITION
 *   KV_ERR_LEASE_EXISTS, TTL beyond KV_MAX_LEASE_TTL OUT_OF_RANGE; the revision does not move.
 * - Put with lease L != 0 (alone or in a Txn, checked with the other checks before any write):
 *   NOT_FOUND KV_ERR_LEASE_NOT_FOUND unless L exists; the key is then attached to L (and
 *   detached from the lease it had). ignore_lease keeps the key's lease; lease 0 detaches it;
 *   a DeleteRange detaches what it deletes.
 * - Revoke: NOT_FOUND unless it exists; deletes every key attached (in key order, all at one
 *   new revision, so one Watch response carries them; no keys: the revision does not move)
 *   and the lease.
 * - Checkpoint: records each existing lease's remaining TTL (unknown IDs are skipped);
 *   remaining 0 clears it. The revision does not move.
 * - Leases are in the snapshot (payload version 3), with their remaining TTLs. */
struct kv_lease {
    int64_t id;
    int64_t ttl;       /* granted, seconds */
    int64_t remaining; /* last checkpointed remaining TTL, seconds; 0 = none */
};

/* Reads lease `id` from one read transaction; with key_cb, calls it for each attached key in
 * key order (a nonzero return stops the walk). 1 found (*out filled), 0 not found, -1 with
 * *err (storage). Any thread, concurrently with apply. */
int kv_store_lease_get(struct kv_store *s, int64_t id, struct kv_lease *out,
                       int (*key_cb)(void *arg, const uint8_t *key, size_t len), void *arg,
                       struct kv_err *err);
/* Calls cb for every lease (in the table's order: the ID as an unsigned big-endian number)
 * from one read transaction; cb's nonzero return stops and is returned. 0 or -1 with *err.
 * Any thread. */
int kv_store_leases(struct kv_store *s, int (*cb)(void *arg, const struct kv_lease *l), void *arg,
                    struct kv_err *err);

/* What apply did to the lease table, told after the batch that did it commits, on the applier
 * thread, in log order: GRANTED (id, ttl), REVOKED (id; ttl 0), and after a snapshot restore
 * RESET (id 0: reread the whole table with kv_store_leases). The hook must not block for
 * long (a mutex held briefly is fine). Set once, before the store is applied to; NULL clears. */
enum kv_lease_change { KV_LEASE_GRANTED = 1, KV_LEASE_REVOKED = 2, KV_LEASE_RESET = 3 };
void kv_store_set_lease_hook(struct kv_store *s,
                             void (*fn)(void *arg, enum kv_lease_change what, int64_t id,
                                        int64_t ttl),
                             void *arg);

/* ---- Auth (kv_auth.h, docs/auth.md) ----
 * Users, roles, permissions, the enabled flag and the auth revision are replicated state: the
 * auth log commands (kvcmd.proto 8..18) change them at apply with etcd's rules, in the same
 * LMDB transaction as the batch, and they are in the snapshot (payload version 4). The state
 * as of the last committed batch, held (kv_auth_unref when done): any thread, at any time; a
 * command's change is visible here once its batch committed, before its caller is answered.
 * Never NULL: an open store always has a state. */
struct kv_auth;
struct kv_auth *kv_store_auth_get(struct kv_store *s);
/* kv_auth_enabled of that state, without a lock or a reference: every read asks it first. */
bool kv_store_auth_enabled(struct kv_store *s);

/* Waits up to timeout_ms until the history below `rev` (a compaction's revision, applied) has
 * been removed and the removal synced to disk (Compact's `physical`). 0 (at once when it
 * already has), -ETIMEDOUT (also when no compaction to rev was applied), or -EIO when the
 * removal failed. Any thread. */
int kv_store_compact_wait(struct kv_store *s, int64_t rev, unsigned timeout_ms);

/* How long what makes applied writes durable took: each background sync (the default), or each
 * batch's commit with its fdatasync (sync_every_batch); etcd's
 * etcd_disk_backend_commit_duration_seconds. Valid while s lives. */
struct metrics_histogram;
const struct metrics_histogram *kv_store_commit_histogram(const struct kv_store *s);

#endif
