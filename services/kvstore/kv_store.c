/* kv_store.c: the etcd KV state machine over LMDB (see kv_store.h; docs/kv.md has the layout).
 *
 * LMDB layout: named database "kv" maps each key to a record of four little-endian int64
 * (create_revision, mod_revision, version, lease) followed by the value bytes: the latest
 * state, what most reads want. "hist" keeps every write not yet compacted, keyed by
 * (revision, sub) big-endian so that LMDB's order is the order of the writes (Watch reads it
 * in order, and apply appends at its end). Which writes each key had is an in-memory index
 * (kv_index.h, etcd's treeIndex in effect), built from "hist" at open and kept by the applier
 * and the compactor: a read at an old revision finds each key's version there with one binary
 * search and one "hist" lookup, and a put costs no third tree (an LMDB "keyrev" tree did, until
 * format craft-kv-3: a page copy per put). "meta" holds "format" (KV_FORMAT), "state" (applied
 * index, revision, compacted revision, term of the entry at the applied index: little-endian
 * 64-bit words; stores from before the term have only the first three), written in the same
 * transaction as the data, and "phys" (how far the removal of compacted history got).
 * Leases (format craft-kv-4): "lease" maps a lease ID (big-endian u64 of the int64) to its
 * granted TTL and checkpointed remaining TTL (little-endian i64 each); "lkeys" holds the lease
 * ID followed by each key attached to it (no value), so a revoke finds its keys, in key order,
 * without a scan. Not DUPSORT: its pages must count in size_in_use; hence a key with a lease is
 * at most KV_MAX_LEASE_KEY bytes (8 + 503 = LMDB's 511). */
#include "services/kvstore/kv_store.h"

#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "metrics/metrics.h"
#include "services/kvstore/kv_auth.h"
#include "services/kvstore/kv_cmd.h"
#include "services/kvstore/kv_hist.h"
#include "services/kvstore/kv_index.h"
#include "services/kvstore/kv_internal.h"
#include "services/kvstore/kv_snap.h"

_Static_assert(KV_SNAP_MAX_KEY == KV_MAX_KEY, "snapshots hold every key the store holds");

#define KV_FORMAT "craft-kv-4"
#define KV_FORMAT_V3 "craft-kv-3" /* before leases: their tables are added at open */
#define KV_FORMAT_V2 "craft-kv-2" /* with the "keyrev" tree: dropped at open */
#define KV_FORMAT_V1 "craft-kv-1" /* before history: upgraded at open */
#define REC_HDR 32
/* History records: kv_hist.h. */
_Static_assert(KV_INDEX_PUT == KV_HIST_PUT && KV_INDEX_DELETE == KV_HIST_DELETE,
               "the index carries the history's types");
_Static_assert(KV_EVENT_PUT == KV_HIST_PUT && KV_EVENT_DELETE == KV_HIST_DELETE,
               "events carry the history's types");
_Static_assert(KV_HIST_REC_MIN == REC_HDR, "a history put holds a kv record");
/* Entries the background removal of compacted history examines per write transaction: the
 * applier waits for at most one such transaction. */
#define COMPACT_BATCH 1000
#define COMPACT_PAUSE_MS 10 /* between two such transactions (etcd: the same) */
#define STATE_LEN 32
#define STATE_LEN_V1 24 /* before the term was recorded */

struct kv_store {
    struct raft_fsm fsm;
    /* A snapshot restore replaces env (and the dbis and stat_txn that belong to it) while
     * readers may be in flight: whoever uses env holds env_lock shared, the swap holds it
     * exclusively. env is NULL only after a restore failed to open the new environment. */
    pthread_rwlock_t env_lock;
    bool env_lock_init;
    MDB_env *env;
    MDB_dbi kv, meta, hist, lease, lkeys;
    unsigned env_flags;
    uint64_t map_size;
    unsigned max_readers;
    int lock_fd;
    size_t maxkey;            /* LMDB's key size limit */
    _Atomic uint64_t applied; /* read by any thread */
    _Atomic int64_t in_use;   /* bytes in use after the last commit (kv_store_size_in_use) */
    MDB_txn *stat_txn;        /* publish_in_use's read txn, reset between uses: it keeps its
                                 reader slot (one of max_readers), so apply never waits for one */
    int64_t rev, compact;     /* owned by the applier thread (and open) */
    uint64_t fail_at;
    int (*step_hook)(void *arg, const char *op, uint64_t n); /* tests */
    void *step_arg;
    uint64_t restore_txn_bytes;
    char dir[4096];
    char note[200];            /* what open had to do, for the operator; "" = nothing */

    /* Background sync (kv_store.h "Durability"); lazy = commits do not fdatasync. */
    bool lazy;
    pthread_mutex_t mark_mu;   /* mark_dirty: the applier and the compactor */
    _Atomic bool mark_pending; /* applier: kv.state says clean; mark it dirty before the next
                                  unsynced commit (after a restore) */
    unsigned sync_ms;
    pthread_t syncer;
    bool syncer_started, sync_init;
    char boot[80];             /* this boot's id ("" = unknown) */
    pthread_mutex_t sync_mu;
    pthread_cond_t sync_cv;
    bool stopping;             /* sync_mu */
    _Atomic int sync_err;      /* sticky: a failed sync stops apply (fail-stop, like the WAL) */
    _Atomic uint64_t commits;  /* applied batches committed, for the syncer (the applied index
                                  can go down: a restore of an older snapshot) */
    bool fail_sync;            /* tests: every sync fails with EIO */

    /* Leases: what the batch being applied did to the lease table, told to lease_hook once it
     * commits (kv_store_set_lease_hook); applier only. */
    struct lease_change *lch;
    size_t n_lch, cap_lch;
    void (*lease_hook)(void *arg, enum kv_lease_change what, int64_t id, int64_t ttl);
    void *lease_arg;

    /* Watch: called after each applied batch (kv_store_set_commit_hook). */
    void (*commit_hook)(void *arg, int64_t rev);
    void *commit_arg;

    /* The background removal of compacted history (one thread; "phys" in meta records its
     * progress, in the same transactions as its deletions). */
    pthread_t compactor;
    bool compactor_started, compact_init;
    pthread_mutex_t compact_mu;
    pthread_cond_t compact_cv;  /* wakes the compactor (a new compaction, close) */
    pthread_cond_t compact_done_cv; /* wakes kv_store_compact_wait */
    bool compact_stop;          /* compact_mu */
    int64_t compact_wanted;     /* compact_mu: the latest compacted revision the applier saw */
    int64_t compact_synced;     /* compact_mu: history below it is removed and synced */
    int compact_err;            /* compact_mu: a failure of the removal (sticky) */
    pthread_mutex_t compact_run_mu; /* held by the compactor for each batch, and by a
                                       restore throughout (no removal in a store being
                                       replaced, or in one marked clean for it) */
    int64_t compact_told;       /* applier: the compacted revision last told to compact_wanted */

    /* The index of the history (kv_index.h). Built by env_load (under env_lock held
     * exclusively, so nobody else uses it then); otherwise idx_lock guards it: the applier
     * adds each write as it makes it (taken out again if its transaction aborts; readers never
     * look above the revision of their own read transaction, so uncommitted writes are never
     * seen), the compactor removes what it removes from "hist" after raising idx_floor, and
     * readers hold it shared while they use it. Writers are preferred, so a stream of readers
     * cannot hold the applier back. */
    struct kv_index *idx;
    pthread_rwlock_t idx_lock;
    bool idx_lock_init;
    int64_t idx_floor; /* idx_lock: writes below it may be gone from idx: reads there are
                          answered "compacted" (the compaction was applied; their read
                          transaction is older) */
    struct idx_undo *undo; /* applier: writes added to idx since the last commit */
    size_t n_undo, cap_undo;
    uint8_t *undo_keys;    /* their keys, back to back */
    size_t n_undo_keys, cap_undo_keys;

    /* etcd_disk_backend_commit_duration_seconds: what makes applied writes durable in the
     * store - each background sync (lazy), or each batch's commit with its fdatasync. */
    struct metrics_histogram commit_hist;

    /* Auth (kv_auth.h): the state as of the last committed batch, published under auth_mu
     * (kv_store_auth_get); auth_work is the state the batch being applied made (applier only;
     * NULL = unchanged), published when the batch commits and dropped when it aborts. The
     * "auth" record in meta holds the committed state's bytes, written in the same
     * transaction as the command. */
    pthread_mutex_t auth_mu;
    struct kv_auth *auth;
    atomic_bool auth_on; /* kv_auth_enabled(auth), read without auth_mu by every read */
    struct kv_auth *auth_work;
};

struct lease_change {
    enum kv_lease_change what;
    int64_t id, ttl;
};

/* One write the applier added to the index before its transaction committed; its key is at
 * undo_keys + koff. */
struct idx_undo {
    int64_t rev;
    uint64_t sub;
    size_t koff, klen;
};
/* Past these, the undo list's memory goes back after the batch (a DeleteRange of a million keys
 * needs it once, not for ever). */
#define UNDO_KEEP_ENTRIES 4096
#define UNDO_KEEP_KEY_BYTES (1u << 20)

/* ---- little-endian records (kv_le_put64/kv_le_get64: kv_snap.h) ---- */

struct kv_rec {
    int64_t create, mod, version, lease;
    const uint8_t *val;
    size_t vlen;
};

static int rec_decode(const MDB_val *v, struct kv_rec *r)
{
    if (v->mv_size < REC_HDR)
        return -1;
    const uint8_t *p = v->mv_data;
    r->create = (int64_t)kv_le_get64(p);
    r->mod = (int64_t)kv_le_get64(p + 8);
    r->version = (int64_t)kv_le_get64(p + 16);
    r->lease = (int64_t)kv_le_get64(p + 24);
    r->val = p + REC_HDR;
    r->vlen = v->mv_size - REC_HDR;
    return 0;
}

/* ---- history records ---- */

/* A "kv" record: the four revisions' words, then the value. */
static void rec_fill(uint8_t *d, int64_t create, int64_t mod, int64_t version, int64_t lease,
                     const void *val, size_t vlen)
{
    kv_le_put64(d, (uint64_t)create);
    kv_le_put64(d + 8, (uint64_t)mod);
    kv_le_put64(d + 16, (uint64_t)version);
    kv_le_put64(d + 24, (uint64_t)lease);
    if (vlen)
        memcpy(d + REC_HDR, val, vlen);
}

/* One "hist" value, decoded: type, key, and for a put the record (rec_decode's input). */
struct hist_ent {
    int64_t rev;
    uint64_t sub;
    int type;
    const uint8_t *key;
    size_t klen;
    MDB_val rec; /* a put's record; empty for a delete */
};

static int hist_decode(const MDB_val *k, const MDB_val *v, struct hist_ent *h)
{
    struct kv_hist_ent e;
    if (kv_hist_decode(k->mv_data, k->mv_size, v->mv_data, v->mv_size, &e))
        return -1;
    *h = (struct hist_ent){e.rev, e.sub, e.type, e.key, e.klen, {e.rlen, (void *)e.rec}};
    return 0;
}

/* Appends a write to "hist" at (rev, sub). For a put, *d receives where the record
 * (REC_HDR + vlen bytes) goes, to be filled by the caller before the next LMDB call. It goes at
 * the end (revisions only grow), hence MDB_APPEND: no search, pages filled to the brim. 0 or an
 * LMDB code. */
static int hist_append(MDB_txn *txn, MDB_dbi hist, int64_t rev, uint64_t sub, int type,
                       const void *key, size_t klen, size_t rlen, uint8_t **d, unsigned flags)
{
    uint8_t hk[KV_HIST_KEY];
    kv_hist_key(hk, rev, sub);
    MDB_val hkey = {KV_HIST_KEY, hk}, v = {KV_HIST_HEAD + klen + rlen, NULL};
    int rc = mdb_put(txn, hist, &hkey, &v, MDB_RESERVE | flags);
    if (rc)
        return rc;
    uint8_t *p = v.mv_data;
    kv_hist_head(p, klen, type);
    memcpy(p + KV_HIST_HEAD, key, klen);
    if (d)
        *d = p + KV_HIST_HEAD + klen;
    return 0;
}

/* ---- the lease tables ---- */

#define LEASE_VAL 16 /* granted TTL, remaining TTL */

static int lease_read(MDB_txn *txn, MDB_dbi db, int64_t id, struct kv_lease *out, bool *found)
{
    uint8_t kb[8];
    kv_be64_put(kb, (uint64_t)id);
    MDB_val k = {8, kb}, v;
    *found = false;
    int rc = mdb_get(txn, db, &k, &v);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc)
        return rc;
    if (v.mv_size != LEASE_VAL)
        return MDB_CORRUPTED;
    out->id = id;
    out->ttl = (int64_t)kv_le_get64(v.mv_data);
    out->remaining = (int64_t)kv_le_get64((const uint8_t *)v.mv_data + 8);
    *found = true;
    return 0;
}

static int lease_write(MDB_txn *txn, MDB_dbi db, const struct kv_lease *l)
{
    uint8_t kb[8], vb[LEASE_VAL];
    kv_be64_put(kb, (uint64_t)l->id);
    kv_le_put64(vb, (uint64_t)l->ttl);
    kv_le_put64(vb + 8, (uint64_t)l->remaining);
    MDB_val k = {8, kb}, v = {LEASE_VAL, vb};
    return mdb_put(txn, db, &k, &v, 0);
}

/* Attaches (on) or detaches key from lease id in "lkeys". 0 or an LMDB code. */
static int lease_link(MDB_txn *txn, MDB_dbi lkeys, int64_t id, const void *key, size_t klen,
                      bool on)
{
    if (klen > KV_MAX_LEASE_KEY)
        return on ? MDB_BAD_VALSIZE : 0; /* kv_validate_put refuses it first */
    uint8_t kb[8 + KV_MAX_LEASE_KEY];
    kv_be64_put(kb, (uint64_t)id);
    memcpy(kb + 8, key, klen);
    MDB_val k = {8 + klen, kb}, v = {0, NULL};
    int rc = on ? mdb_put(txn, lkeys, &k, &v, 0) : mdb_del(txn, lkeys, &k, NULL);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* Calls cb for each key attached to lease id, in key order; cb's nonzero return stops the walk
 * and is returned. 0 or cb's value; an LMDB failure sets *lmdb (else 0) and returns 0. */
static int lease_keys_walk(MDB_txn *txn, MDB_dbi lkeys, int64_t id,
                           int (*cb)(void *arg, const uint8_t *key, size_t len), void *arg,
                           int *lmdb)
{
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, lkeys, &cur);
    *lmdb = rc;
    if (rc)
        return 0;
    uint8_t kb[8];
    kv_be64_put(kb, (uint64_t)id);
    MDB_val k = {8, kb}, v;
    int out = 0;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0 && out == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size <= 8 || memcmp(k.mv_data, kb, 8) != 0)
            break;
        out = cb(arg, (const uint8_t *)k.mv_data + 8, k.mv_size - 8);
    }
    mdb_cursor_close(cur);
    if (rc != 0 && rc != MDB_NOTFOUND && out == 0)
        *lmdb = rc;
    return out;
}

/* ---- the history index (kv_index.h) ---- */

/* Applier: a write just appended to "hist" goes into the index at once (a Txn's later read at
 * an older revision, in the same batch, needs it), remembered until the commit. 0 or ENOMEM. */
static int idx_record(struct kv_store *s, const void *key, size_t klen, int64_t rev,
                      uint64_t sub, int type)
{
    if (s->n_undo == s->cap_undo) {
        size_t cap = s->cap_undo ? s->cap_undo * 2 : 64;
        struct idx_undo *u = realloc(s->undo, cap * sizeof *u);
        if (!u)
            return ENOMEM;
        s->undo = u;
        s->cap_undo = cap;
    }
    if (klen > s->cap_undo_keys - s->n_undo_keys) {
        size_t cap = s->cap_undo_keys ? s->cap_undo_keys : 4096;
        while (cap - s->n_undo_keys < klen)
            cap *= 2;
        uint8_t *k = realloc(s->undo_keys, cap);
        if (!k)
            return ENOMEM;
        s->undo_keys = k;
        s->cap_undo_keys = cap;
    }
    struct kv_index_ent e = {rev, sub, (uint8_t)type};
    pthread_rwlock_wrlock(&s->idx_lock);
    int rc = kv_index_add(s->idx, key, klen, &e);
    pthread_rwlock_unlock(&s->idx_lock);
    if (rc == -1)
        return ENOMEM;
    if (rc) /* a write not after the key's last one: the history is not what apply made */
        return MDB_CORRUPTED;
    s->undo[s->n_undo++] = (struct idx_undo){rev, sub, s->n_undo_keys, klen};
    memcpy(s->undo_keys + s->n_undo_keys, key, klen);
    s->n_undo_keys += klen;
    return 0;
}

/* Applier: takes the writes recorded since undo mark `to` out of the index again (their
 * transaction aborted), newest first. */
static void idx_undo_to(struct kv_store *s, size_t to)
{
    pthread_rwlock_wrlock(&s->idx_lock);
    while (s->n_undo > to) {
        const struct idx_undo *u = &s->undo[--s->n_undo];
        kv_index_remove(s->idx, s->undo_keys + u->koff, u->klen, u->rev, u->sub);
        s->n_undo_keys = u->koff;
    }
    pthread_rwlock_unlock(&s->idx_lock);
}

/* Applier, after a commit (or an abort undone): the list starts over, and gives back what an
 * unusually large batch made it grow to. */
static void idx_undo_clear(struct kv_store *s)
{
    s->n_undo = s->n_undo_keys = 0;
    if (s->cap_undo > UNDO_KEEP_ENTRIES) {
        free(s->undo);
        s->undo = NULL;
        s->cap_undo = 0;
    }
    if (s->cap_undo_keys > UNDO_KEEP_KEY_BYTES) {
        free(s->undo_keys);
        s->undo_keys = NULL;
        s->cap_undo_keys = 0;
    }
}

/* The index of the history in txn's "hist": every write, by key. 0 with *out, or an LMDB code
 * (MDB_CORRUPTED for an entry that does not decode or comes out of order; ENOMEM). */
static int idx_build(MDB_txn *txn, MDB_dbi hist, struct kv_index **out)
{
    struct kv_index *x = kv_index_new();
    MDB_cursor *cur;
    int rc = x ? mdb_cursor_open(txn, hist, &cur) : ENOMEM;
    if (rc) {
        kv_index_free(x);
        return rc;
    }
    MDB_val k, v;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        struct hist_ent h;
        if (hist_decode(&k, &v, &h)) {
            rc = MDB_CORRUPTED;
            break;
        }
        struct kv_index_ent e = {h.rev, h.sub, (uint8_t)h.type};
        int x2 = kv_index_add(x, h.key, h.klen, &e);
        if (x2) {
            rc = x2 == -1 ? ENOMEM : MDB_CORRUPTED;
            break;
        }
    }
    mdb_cursor_close(cur);
    if (rc != MDB_NOTFOUND) {
        kv_index_free(x);
        return rc;
    }
    *out = x;
    return 0;
}

/* ---- response building (malloc'd trees, freed with protobuf_c_message_free_unpacked) ---- */

static void *dup_bytes(const void *p, size_t n)
{
    if (n == 0)
        return NULL;
    void *d = malloc(n);
    if (d)
        memcpy(d, p, n);
    return d;
}

static void msg_free(void *m)
{
    if (m)
        protobuf_c_message_free_unpacked(m, NULL);
}

static Etcdserverpb__ResponseHeader *header_new(int64_t rev)
{
    Etcdserverpb__ResponseHeader *h = malloc(sizeof *h);
    if (h) {
        etcdserverpb__response_header__init(h);
        h->revision = rev;
    }
    return h;
}

static Mvccpb__KeyValue *kv_new(const void *key, size_t klen, const struct kv_rec *r,
                                bool with_value)
{
    Mvccpb__KeyValue *kv = malloc(sizeof *kv);
    if (!kv)
        return NULL;
    mvccpb__key_value__init(kv);
    kv->create_revision = r->create;
    kv->mod_revision = r->mod;
    kv->version = r->version;
    kv->lease = r->lease;
    kv->key.data = dup_bytes(key, klen);
    kv->key.len = klen;
    if (with_value) {
        kv->value.data = dup_bytes(r->val, r->vlen);
        kv->value.len = r->vlen;
    }
    if ((klen && !kv->key.data) || (kv->value.len && !kv->value.data)) {
        msg_free(kv);
        return NULL;
    }
    return kv;
}

/* A growable array of KeyValue pointers. */
struct kv_list {
    Mvccpb__KeyValue **v;
    size_t n, cap;
};

static int list_push(struct kv_list *l, Mvccpb__KeyValue *kv)
{
    if (!kv)
        return -1;
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 16;
        void *v = realloc(l->v, cap * sizeof *l->v);
        if (!v) {
            msg_free(kv);
            return -1;
        }
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = kv;
    return 0;
}

static void list_free(struct kv_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        msg_free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = l->cap = 0;
}

/* ---- execution context: one LMDB transaction (read or write) ---- */

struct kv_ctx {
    struct kv_store *s;
    MDB_txn *txn;
    int64_t rev;     /* revision before this request */
    int64_t compact; /* compacted revision (updated by a Compact) */
    bool changed;    /* the request wrote a key: it creates revision rev + 1 */
    int sys;         /* the LMDB or errno code that stopped the request (rc -1) */
    uint64_t sub;    /* writes recorded in the history at revision rev + 1 so far */
    int64_t at;      /* span_walk reads the state at this revision (history) when
                        0 < at < rev; otherwise the latest state ("kv") */
};

/* Return values of the exec functions: 0 done; 1 an etcd error in *err (nothing written by
 * this call); -1 storage failure or out of memory in ctx->sys (the transaction is dead). */
#define EXEC_OK 0
#define EXEC_REQ 1
#define EXEC_SYS (-1)

static int sys_fail(struct kv_ctx *c, int code)
{
    c->sys = code;
    return EXEC_SYS;
}

static int req_fail(struct kv_err *err, int code, const char *msg)
{
    kv_fail(err, code, msg);
    return EXEC_REQ;
}

static int64_t cur_rev(const struct kv_ctx *c) { return c->rev + (c->changed ? 1 : 0); }

/* The keys a request names: one key, [key, end), or every key >= key (end "\0"). etcd's
 * mkGteRange: a one-byte "\0" range_end means "to the end". */
enum { SPAN_POINT, SPAN_RANGE, SPAN_FROM };
struct kv_span {
    const uint8_t *k, *e;
    size_t kn, en;
    int kind;
};

static struct kv_span mkspan(ProtobufCBinaryData key, ProtobufCBinaryData end)
{
    struct kv_span sp = {key.data, end.data, key.len, end.len, SPAN_RANGE};
    if (end.len == 0)
        sp.kind = SPAN_POINT;
    else if (end.len == 1 && end.data[0] == 0)
        sp.kind = SPAN_FROM;
    return sp;
}

/* Calls cb for each stored key in the span, in key order; cb returns 0 to go on, 1 to stop,
 * -1 to fail (its own reason in c->sys). Keys longer than LMDB's limit are never stored, so a
 * start key past it is sought by its prefix and the keys before it skipped. */
typedef int (*span_cb)(void *arg, const MDB_val *k, const struct kv_rec *r);

/* c->sys for a read at a revision the index no longer covers (idx_floor): the compaction
 * that removed it was applied after the read's transaction began. Neither an LMDB code
 * (negative, below -30000) nor an errno. */
#define SYS_COMPACTED (-1)

/* The version of the key whose writes node n indexes at revision at: *found with *r (pointing
 * into the transaction's pages) when its last write at or before `at` is a put; not found when
 * there is none or it was a delete. The caller holds idx_lock shared. 0 or an LMDB code. */
static int version_at(struct kv_ctx *c, const struct kv_index_node *n, int64_t at,
                      struct kv_rec *r, bool *found)
{
    *found = false;
    const struct kv_index_ent *e = n ? kv_index_at(n, at) : NULL;
    if (!e || e->type != KV_EVENT_PUT)
        return 0;
    uint8_t hk[KV_HIST_KEY];
    kv_hist_key(hk, e->rev, e->sub);
    MDB_val k = {KV_HIST_KEY, hk}, v;
    struct hist_ent h;
    int rc = mdb_get(c->txn, c->s->hist, &k, &v);
    if (rc)
        return rc == MDB_NOTFOUND ? MDB_CORRUPTED : rc;
    if (hist_decode(&k, &v, &h) || h.type != KV_EVENT_PUT || rec_decode(&h.rec, r))
        return MDB_CORRUPTED;
    *found = true;
    return 0;
}

/* Keys a walk at an old revision handles under one hold of idx_lock: it lets go in between, so
 * a Range over many keys does not hold back the applier (which takes the lock per write). */
#define WALK_KEYS_PER_HOLD 256

/* span_walk at an old revision: every key of the span with its version at c->at. The keys are
 * those of "kv" (the keys that exist now) merged with the index's ordered list (the keys with a
 * delete among their writes): a key that existed at c->at and does not now was deleted after it,
 * and that delete is in the index unless compacted, which idx_floor rules out. Between two holds
 * of the lock the index only gains newer writes or loses writes below the floor, so the walk
 * checks the floor again and finds its place in the list again by key. */
static int hist_span_walk(struct kv_ctx *c, const struct kv_span *sp, span_cb cb, void *arg)
{
    struct kv_rec r;
    bool found;
    int out = 0;
    if (sp->kind == SPAN_POINT && (sp->kn == 0 || sp->kn > c->s->maxkey))
        return 0;
    if (sp->kind == SPAN_RANGE && kv_bytes_cmp(sp->k, sp->kn, sp->e, sp->en) >= 0)
        return 0; /* empty range */
    struct kv_store *s = c->s;
    pthread_rwlock_rdlock(&s->idx_lock);
    if (c->at < s->idx_floor) {
        pthread_rwlock_unlock(&s->idx_lock);
        return sys_fail(c, SYS_COMPACTED);
    }
    if (sp->kind == SPAN_POINT) {
        MDB_val k = {sp->kn, (void *)sp->k};
        int x = version_at(c, kv_index_find(s->idx, sp->k, sp->kn), c->at, &r, &found);
        if (x)
            out = sys_fail(c, x);
        else if (found && cb(arg, &k, &r) < 0)
            out = EXEC_SYS;
        pthread_rwlock_unlock(&s->idx_lock);
        return out;
    }
    MDB_cursor *cur;
    int rc = mdb_cursor_open(c->txn, s->kv, &cur);
    if (rc) {
        pthread_rwlock_unlock(&s->idx_lock);
        return sys_fail(c, rc);
    }
    MDB_val k, v;
    k.mv_data = (void *)sp->k;
    k.mv_size = sp->kn < s->maxkey ? sp->kn : s->maxkey;
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    const struct kv_index_node *d = kv_index_seek(s->idx, sp->k, sp->kn);
    uint8_t last[KV_MAX_KEY];
    size_t last_len = 0, held = 0;
    for (;;) {
        if (++held > WALK_KEYS_PER_HOLD) {
            pthread_rwlock_unlock(&s->idx_lock);
            pthread_rwlock_rdlock(&s->idx_lock);
            held = 1;
            if (c->at < s->idx_floor) {
                out = sys_fail(c, SYS_COMPACTED);
                break;
            }
            /* the first key of the list after the last one handled */
            d = kv_index_seek(s->idx, last, last_len);
            if (d) {
                size_t dl;
                const uint8_t *dk = kv_index_key(d, &dl);
                if (kv_bytes_cmp(dk, dl, last, last_len) == 0)
                    d = kv_index_next(d);
            }
        }
        while (rc == 0 && kv_bytes_cmp(k.mv_data, k.mv_size, sp->k, sp->kn) < 0)
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
        if (rc != 0 && rc != MDB_NOTFOUND) {
            out = sys_fail(c, rc);
            break;
        }
        bool live = rc == 0 && !(sp->kind == SPAN_RANGE &&
                                 kv_bytes_cmp(k.mv_data, k.mv_size, sp->e, sp->en) >= 0);
        MDB_val dk = {0, NULL};
        if (d)
            dk.mv_data = (void *)kv_index_key(d, &dk.mv_size);
        bool gone = d && !(sp->kind == SPAN_RANGE &&
                           kv_bytes_cmp(dk.mv_data, dk.mv_size, sp->e, sp->en) >= 0);
        if (!live && !gone)
            break;
        int cmp = !live ? 1 : !gone ? -1 : kv_bytes_cmp(k.mv_data, k.mv_size, dk.mv_data,
                                                         dk.mv_size);
        MDB_val key = cmp <= 0 ? k : dk;
        int x = 0;
        if (cmp <= 0 && rec_decode(&v, &r)) {
            x = MDB_CORRUPTED;
        } else if (cmp <= 0 && r.mod <= c->at) {
            found = true; /* not written since: the latest record is the version then */
        } else {
            const struct kv_index_node *n =
                cmp >= 0 ? d : kv_index_find(s->idx, key.mv_data, key.mv_size);
            x = version_at(c, n, c->at, &r, &found);
        }
        if (x) {
            out = sys_fail(c, x);
            break;
        }
        if (found && (x = cb(arg, &key, &r)) != 0) {
            if (x < 0)
                out = EXEC_SYS;
            break;
        }
        memcpy(last, key.mv_data, key.mv_size); /* kv's keys and the index's are <= KV_MAX_KEY */
        last_len = key.mv_size;
        if (cmp <= 0)
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
        if (cmp >= 0)
            d = kv_index_next(d);
    }
    mdb_cursor_close(cur);
    pthread_rwlock_unlock(&s->idx_lock);
    return out;
}

static int span_walk(struct kv_ctx *c, const struct kv_span *sp, span_cb cb, void *arg)
{
    MDB_val k, v;
    struct kv_rec r;
    int rc;
    if (c->at > 0 && c->at < c->rev)
        return hist_span_walk(c, sp, cb, arg);
    if (sp->kind == SPAN_POINT) {
        if (sp->kn == 0 || sp->kn > c->s->maxkey)
            return 0;
        k.mv_data = (void *)sp->k;
        k.mv_size = sp->kn;
        rc = mdb_get(c->txn, c->s->kv, &k, &v);
        if (rc == MDB_NOTFOUND)
            return 0;
        if (rc)
            return sys_fail(c, rc);
        if (rec_decode(&v, &r))
            return sys_fail(c, MDB_CORRUPTED);
        return cb(arg, &k, &r) < 0 ? EXEC_SYS : 0;
    }
    if (sp->kind == SPAN_RANGE && kv_bytes_cmp(sp->k, sp->kn, sp->e, sp->en) >= 0)
        return 0; /* empty range */
    MDB_cursor *cur;
    if ((rc = mdb_cursor_open(c->txn, c->s->kv, &cur)))
        return sys_fail(c, rc);
    k.mv_data = (void *)sp->k;
    k.mv_size = sp->kn < c->s->maxkey ? sp->kn : c->s->maxkey;
    int out = 0;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (kv_bytes_cmp(k.mv_data, k.mv_size, sp->k, sp->kn) < 0)
            continue;
        if (sp->kind == SPAN_RANGE && kv_bytes_cmp(k.mv_data, k.mv_size, sp->e, sp->en) >= 0)
            break;
        if (rec_decode(&v, &r)) {
            out = sys_fail(c, MDB_CORRUPTED);
            break;
        }
        int x = cb(arg, &k, &r);
        if (x < 0) {
            out = EXEC_SYS;
            break;
        }
        if (x > 0)
            break;
    }
    if (out == 0 && rc != 0 && rc != MDB_NOTFOUND)
        out = sys_fail(c, rc);
    mdb_cursor_close(cur);
    return out;
}

/* ---- Range ---- */

struct range_walk {
    struct kv_ctx *c;
    struct kv_list kvs;
    int64_t count;
    size_t want;     /* materialise at most this many (SIZE_MAX: all) */
    bool with_value; /* copy values (also for keys_only sorted by value) */
};

static int range_cb(void *arg, const MDB_val *k, const struct kv_rec *r)
{
    struct range_walk *w = arg;
    w->count++;
    if (w->kvs.n < w->want &&
        list_push(&w->kvs, kv_new(k->mv_data, k->mv_size, r, w->with_value)))
        return w->c->sys = ENOMEM, -1;
    return 0;
}

struct sort_item {
    Mvccpb__KeyValue *kv;
    size_t idx; /* key order: ties keep it, so the sort is stable and deterministic */
};

static int cmp_i64(int64_t a, int64_t b) { return a < b ? -1 : a > b; }

static int sort_cmp(const void *pa, const void *pb, void *arg)
{
    const struct sort_item *a = pa, *b = pb;
    const Etcdserverpb__RangeRequest *r = arg;
    int c = 0;
    switch (r->sort_target) {
    case ETCDSERVERPB__RANGE_REQUEST__SORT_TARGET__KEY:
        c = kv_bytes_cmp(a->kv->key.data, a->kv->key.len, b->kv->key.data, b->kv->key.len);
        break;
    case ETCDSERVERPB__RANGE_REQUEST__SORT_TARGET__VERSION:
        c = cmp_i64(a->kv->version, b->kv->version);
        break;
    case ETCDSERVERPB__RANGE_REQUEST__SORT_TARGET__CREATE:
        c = cmp_i64(a->kv->create_revision, b->kv->create_revision);
        break;
    case ETCDSERVERPB__RANGE_REQUEST__SORT_TARGET__MOD:
        c = cmp_i64(a->kv->mod_revision, b->kv->mod_revision);
        break;
    case ETCDSERVERPB__RANGE_REQUEST__SORT_TARGET__VALUE:
        c = kv_bytes_cmp(a->kv->value.data, a->kv->value.len, b->kv->value.data,
                         b->kv->value.len);
        break;
    default:
        break;
    }
    if (r->sort_order == ETCDSERVERPB__RANGE_REQUEST__SORT_ORDER__DESCEND)
        c = -c;
    return c ? c : (a->idx < b->idx ? -1 : a->idx > b->idx);
}

static bool filtered_out(const Etcdserverpb__RangeRequest *r, const Mvccpb__KeyValue *kv)
{
    return (r->max_mod_revision && kv->mod_revision > r->max_mod_revision) ||
           (r->min_mod_revision && kv->mod_revision < r->min_mod_revision) ||
           (r->max_create_revision && kv->create_revision > r->max_create_revision) ||
           (r->min_create_revision && kv->create_revision < r->min_create_revision);
}

/* etcd's applierV3backend.Range over the state c->txn sees; revision checks are the
 * caller's. header.revision = rev. */
static int range_exec(struct kv_ctx *c, const Etcdserverpb__RangeRequest *r, int64_t rev,
                      Etcdserverpb__RangeResponse **out)
{
    bool filters = r->min_mod_revision || r->max_mod_revision || r->min_create_revision ||
                   r->max_create_revision;
    int order = r->sort_order;
    if (order == ETCDSERVERPB__RANGE_REQUEST__SORT_ORDER__NONE &&
        r->sort_target != ETCDSERVERPB__RANGE_REQUEST__SORT_TARGET__KEY)
        order = ETCDSERVERPB__RANGE_REQUEST__SORT_ORDER__ASCEND; /* as etcd does */
    bool sorting = order != ETCDSERVERPB__RANGE_REQUEST__SORT_ORDER__NONE;
    struct range_walk w = {.c = c, .want = SIZE_MAX};
    if (r->count_only)
        w.want = 0;
    else if (r->limit > 0 && !sorting && !filters && (uint64_t)r->limit < SIZE_MAX)
        w.want = (size_t)r->limit + 1; /* one more tells `more` */
    w.with_value = !r->keys_only ||
                   (sorting && r->sort_target == ETCDSERVERPB__RANGE_REQUEST__SORT_TARGET__VALUE);
    struct kv_span sp = mkspan(r->key, r->range_end);
    if (span_walk(c, &sp, range_cb, &w)) {
        list_free(&w.kvs);
        return EXEC_SYS;
    }
    if (filters) {
        size_t j = 0;
        for (size_t i = 0; i < w.kvs.n; i++) {
            if (filtered_out(r, w.kvs.v[i]))
                msg_free(w.kvs.v[i]);
            else
                w.kvs.v[j++] = w.kvs.v[i];
        }
        w.kvs.n = j;
    }
    if (sorting && w.kvs.n > 1 &&
        !(order == ETCDSERVERPB__RANGE_REQUEST__SORT_ORDER__ASCEND &&
          r->sort_target == ETCDSERVERPB__RANGE_REQUEST__SORT_TARGET__KEY)) {
        struct sort_item *it = malloc(w.kvs.n * sizeof *it);
        if (!it) {
            list_free(&w.kvs);
            return sys_fail(c, ENOMEM);
        }
        for (size_t i = 0; i < w.kvs.n; i++)
            it[i] = (struct sort_item){w.kvs.v[i], i};
        Etcdserverpb__RangeRequest eff = *r;
        eff.sort_order = order;
        qsort_r(it, w.kvs.n, sizeof *it, sort_cmp, &eff);
        for (size_t i = 0; i < w.kvs.n; i++)
            w.kvs.v[i] = it[i].kv;
        free(it);
    }
    Etcdserverpb__RangeResponse *resp = malloc(sizeof *resp);
    if (!resp || !(resp->header = (etcdserverpb__range_response__init(resp), header_new(rev)))) {
        free(resp);
        list_free(&w.kvs);
        return sys_fail(c, ENOMEM);
    }
    if (r->limit > 0 && w.kvs.n > (uint64_t)r->limit) {
        for (size_t i = (size_t)r->limit; i < w.kvs.n; i++)
            msg_free(w.kvs.v[i]);
        w.kvs.n = (size_t)r->limit;
        resp->more = true;
    }
    if (r->keys_only)
        for (size_t i = 0; i < w.kvs.n; i++) {
            free(w.kvs.v[i]->value.data);
            w.kvs.v[i]->value.data = NULL;
            w.kvs.v[i]->value.len = 0;
        }
    resp->count = w.count;
    resp->n_kvs = w.kvs.n;
    resp->kvs = w.kvs.v;
    if (resp->n_kvs == 0) {
        free(resp->kvs);
        resp->kvs = NULL;
    }
    *out = resp;
    return EXEC_OK;
}

/* ---- Put ---- */

static int get_one(struct kv_ctx *c, ProtobufCBinaryData key, MDB_val *v, struct kv_rec *r,
                   bool *found)
{
    *found = false;
    if (key.len == 0 || key.len > c->s->maxkey)
        return 0;
    MDB_val k = {key.len, key.data};
    int rc = mdb_get(c->txn, c->s->kv, &k, v);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc)
        return sys_fail(c, rc);
    if (rec_decode(v, r))
        return sys_fail(c, MDB_CORRUPTED);
    *found = true;
    return 0;
}

static int put_exec(struct kv_ctx *c, const Etcdserverpb__PutRequest *p,
                    Etcdserverpb__PutResponse **out, struct kv_err *err)
{
    MDB_val old;
    struct kv_rec prev = {0};
    bool found;
    if (get_one(c, p->key, &old, &prev, &found))
        return EXEC_SYS;
    if ((p->ignore_value || p->ignore_lease) && !found)
        return req_fail(err, KV_CODE_INVALID_ARGUMENT, KV_ERR_KEY_NOT_FOUND);
    Etcdserverpb__PutResponse *resp = malloc(sizeof *resp);
    if (!resp)
        return sys_fail(c, ENOMEM);
    etcdserverpb__put_response__init(resp);
    int64_t rev = c->rev + 1;
    /* Copies of what the write may move: the previous value lives in a page LMDB reuses. */
    if ((p->prev_kv && found && !(resp->prev_kv = kv_new(p->key.data, p->key.len, &prev, true))) ||
        !(resp->header = header_new(rev))) {
        msg_free(resp);
        return sys_fail(c, ENOMEM);
    }
    uint8_t *oldval = NULL;
    const uint8_t *val = p->value.data;
    size_t vlen = p->value.len;
    if (p->ignore_value) {
        vlen = prev.vlen;
        if (vlen && !(oldval = dup_bytes(prev.val, vlen))) {
            msg_free(resp);
            return sys_fail(c, ENOMEM);
        }
        val = oldval;
    }
    int64_t create = found ? prev.create : rev, version = found ? prev.version + 1 : 1;
    int64_t lease = p->ignore_lease ? prev.lease : p->lease, old_lease = found ? prev.lease : 0;
    /* The history first, then the latest state; each record is filled from the request (or
     * the copy above) right after its reservation, before LMDB can move the page. */
    MDB_val k = {p->key.len, p->key.data}, v = {REC_HDR + vlen, NULL};
    uint8_t *d;
    int rc = hist_append(c->txn, c->s->hist, rev, c->sub, KV_EVENT_PUT, k.mv_data, k.mv_size,
                         REC_HDR + vlen, &d, MDB_APPEND);
    if (rc == 0) {
        c->sub++;
        rec_fill(d, create, rev, version, lease, val, vlen);
        rc = mdb_put(c->txn, c->s->kv, &k, &v, MDB_RESERVE);
    }
    if (rc == 0) {
        rec_fill(v.mv_data, create, rev, version, lease, val, vlen);
        rc = idx_record(c->s, k.mv_data, k.mv_size, rev, c->sub - 1, KV_EVENT_PUT);
    }
    /* The key moves from its old lease to its new one (the caller checked the new one). */
    if (rc == 0 && old_lease != lease && old_lease != 0)
        rc = lease_link(c->txn, c->s->lkeys, old_lease, k.mv_data, k.mv_size, false);
    if (rc == 0 && old_lease != lease && lease != 0)
        rc = lease_link(c->txn, c->s->lkeys, lease, k.mv_data, k.mv_size, true);
    if (rc) {
        free(oldval);
        msg_free(resp);
        return sys_fail(c, rc);
    }
    free(oldval);
    c->changed = true;
    *out = resp;
    return EXEC_OK;
}

/* ---- DeleteRange ---- */

struct del_walk {
    struct kv_ctx *c;
    struct kv_list kvs; /* every deleted pair (keys; values only when prev_kv) */
    bool with_value;
};

static int del_cb(void *arg, const MDB_val *k, const struct kv_rec *r)
{
    struct del_walk *w = arg;
    if (list_push(&w->kvs, kv_new(k->mv_data, k->mv_size, r, w->with_value)))
        return w->c->sys = ENOMEM, -1;
    return 0;
}

/* Deletes one key that exists (its lease given), recording the delete at the revision being
 * written. 0 or an LMDB code / ENOMEM. */
static int del_key(struct kv_ctx *c, const void *key, size_t klen, int64_t lease)
{
    MDB_val k = {klen, (void *)key};
    int rc = mdb_del(c->txn, c->s->kv, &k, NULL);
    if (rc == 0 && (rc = hist_append(c->txn, c->s->hist, c->rev + 1, c->sub, KV_EVENT_DELETE,
                                     key, klen, 0, NULL, MDB_APPEND)) == 0 &&
        (rc = idx_record(c->s, key, klen, c->rev + 1, c->sub, KV_EVENT_DELETE)) == 0)
        c->sub++;
    if (rc == 0 && lease != 0)
        rc = lease_link(c->txn, c->s->lkeys, lease, key, klen, false);
    return rc;
}

static int delete_exec(struct kv_ctx *c, const Etcdserverpb__DeleteRangeRequest *d,
                       Etcdserverpb__DeleteRangeResponse **out)
{
    struct del_walk w = {.c = c, .with_value = d->prev_kv};
    struct kv_span sp = mkspan(d->key, d->range_end);
    if (span_walk(c, &sp, del_cb, &w)) {
        list_free(&w.kvs);
        return EXEC_SYS;
    }
    /* Deleting after the walk keeps the cursor out of a tree that changes under it. */
    for (size_t i = 0; i < w.kvs.n; i++) {
        int rc = del_key(c, w.kvs.v[i]->key.data, w.kvs.v[i]->key.len, w.kvs.v[i]->lease);
        if (rc) {
            list_free(&w.kvs);
            return sys_fail(c, rc);
        }
    }
    if (w.kvs.n)
        c->changed = true;
    Etcdserverpb__DeleteRangeResponse *resp = malloc(sizeof *resp);
    if (!resp || !(etcdserverpb__delete_range_response__init(resp),
                   resp->header = header_new(cur_rev(c)))) {
        free(resp);
        list_free(&w.kvs);
        return sys_fail(c, ENOMEM);
    }
    resp->deleted = (int64_t)w.kvs.n;
    if (d->prev_kv && w.kvs.n) {
        resp->n_prev_kvs = w.kvs.n;
        resp->prev_kvs = w.kvs.v;
    } else {
        list_free(&w.kvs);
    }
    *out = resp;
    return EXEC_OK;
}

/* ---- Compare and Txn ---- */

struct cmp_walk {
    const Etcdserverpb__Compare *cmp;
    bool any, ok;
};

static bool compare_kv(const Etcdserverpb__Compare *c, const Mvccpb__KeyValue *kv)
{
    int res = 0;
    int64_t want = 0;
    switch (c->target) {
    case ETCDSERVERPB__COMPARE__COMPARE_TARGET__VALUE: {
        /* a target_union of another kind compares against the empty value, as in etcd */
        ProtobufCBinaryData v = {0, NULL};
        if (c->target_union_case == ETCDSERVERPB__COMPARE__TARGET_UNION_VALUE)
            v = c->value;
        res = kv_bytes_cmp(kv->value.data, kv->value.len, v.data, v.len);
        break;
    }
    case ETCDSERVERPB__COMPARE__COMPARE_TARGET__CREATE:
        if (c->target_union_case == ETCDSERVERPB__COMPARE__TARGET_UNION_CREATE_REVISION)
            want = c->create_revision;
        res = cmp_i64(kv->create_revision, want);
        break;
    case ETCDSERVERPB__COMPARE__COMPARE_TARGET__MOD:
        if (c->target_union_case == ETCDSERVERPB__COMPARE__TARGET_UNION_MOD_REVISION)
            want = c->mod_revision;
        res = cmp_i64(kv->mod_revision, want);
        break;
    case ETCDSERVERPB__COMPARE__COMPARE_TARGET__VERSION:
        if (c->target_union_case == ETCDSERVERPB__COMPARE__TARGET_UNION_VERSION)
            want = c->version;
        res = cmp_i64(kv->version, want);
        break;
    case ETCDSERVERPB__COMPARE__COMPARE_TARGET__LEASE:
        if (c->target_union_case == ETCDSERVERPB__COMPARE__TARGET_UNION_LEASE)
            want = c->lease;
        res = cmp_i64(kv->lease, want);
        break;
    default:
        break;
    }
    switch (c->result) {
    case ETCDSERVERPB__COMPARE__COMPARE_RESULT__EQUAL:
        return res == 0;
    case ETCDSERVERPB__COMPARE__COMPARE_RESULT__NOT_EQUAL:
        return res != 0;
    case ETCDSERVERPB__COMPARE__COMPARE_RESULT__GREATER:
        return res > 0;
    case ETCDSERVERPB__COMPARE__COMPARE_RESULT__LESS:
        return res < 0;
    default:
        return true; /* unreachable: validation rejects unknown results */
    }
}

static int cmp_cb(void *arg, const MDB_val *k, const struct kv_rec *r)
{
    struct cmp_walk *w = arg;
    Mvccpb__KeyValue kv = MVCCPB__KEY_VALUE__INIT;
    kv.key.data = k->mv_data;
    kv.key.len = k->mv_size;
    kv.value.data = (uint8_t *)r->val;
    kv.value.len = r->vlen;
    kv.create_revision = r->create;
    kv.mod_revision = r->mod;
    kv.version = r->version;
    kv.lease = r->lease;
    w->any = true;
    if (!compare_kv(w->cmp, &kv)) {
        w->ok = false;
        return 1;
    }
    return 0;
}

/* etcd's applyCompare: every key in the range must satisfy it; no key at all compares the
 * zero KeyValue, except that a VALUE compare on missing keys always fails. */
static int compare_one(struct kv_ctx *c, const Etcdserverpb__Compare *cmp, bool *ok)
{
    struct cmp_walk w = {cmp, false, true};
    struct kv_span sp = mkspan(cmp->key, cmp->range_end);
    if (span_walk(c, &sp, cmp_cb, &w))
        return EXEC_SYS;
    if (!w.any) {
        Mvccpb__KeyValue zero = MVCCPB__KEY_VALUE__INIT;
        w.ok = cmp->target != ETCDSERVERPB__COMPARE__COMPARE_TARGET__VALUE &&
               compare_kv(cmp, &zero);
    }
    *ok = w.ok;
    return 0;
}

/* The branch taken by each txn on the executed path, in pre-order (etcd's compareToPath):
 * all compares are evaluated against the state before the txn writes anything. */
struct path {
    bool *v;
    size_t n, cap, pos;
};

static int path_build(struct kv_ctx *c, const Etcdserverpb__TxnRequest *t, struct path *p)
{
    bool ok = true;
    for (size_t i = 0; i < t->n_compare && ok; i++)
        if (compare_one(c, t->compare[i], &ok))
            return EXEC_SYS;
    if (p->n == p->cap) {
        size_t cap = p->cap ? 2 * p->cap : 8;
        bool *v = realloc(p->v, cap * sizeof *v);
        if (!v)
            return sys_fail(c, ENOMEM);
        p->v = v;
        p->cap = cap;
    }
    p->v[p->n++] = ok;
    Etcdserverpb__RequestOp **ops = ok ? t->success : t->failure;
    size_t n = ok ? t->n_success : t->n_failure;
    for (size_t i = 0; i < n; i++)
        if (ops[i]->request_case == ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_TXN &&
            path_build(c, ops[i]->request_txn, p))
            return EXEC_SYS;
    return 0;
}

/* Responses of the Ranges with an explicit revision, evaluated before any write: such a read
 * is of the state at the txn's start even when it comes after a write in the txn. */
struct preread {
    Etcdserverpb__RangeResponse **v;
    size_t n, pos;
};

/* etcd's checkRequests, run over the executed path before anything is written:
 * pass 0: puts (ignore_value/ignore_lease on a missing key, a lease); pass 1: range
 * revisions; pass 2: evaluate the Ranges with a revision. */
static int path_check(struct kv_ctx *c, const Etcdserverpb__TxnRequest *t, struct path *p,
                      int pass, struct preread *pre, struct kv_err *err)
{
    bool ok = p->v[p->pos++];
    Etcdserverpb__RequestOp **ops = ok ? t->success : t->failure;
    size_t n = ok ? t->n_success : t->n_failure;
    for (size_t i = 0; i < n; i++) {
        const Etcdserverpb__RequestOp *op = ops[i];
        int rc = 0;
        if (op->request_case == ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_TXN) {
            rc = path_check(c, op->request_txn, p, pass, pre, err);
        } else if (pass == 0 && op->request_case == ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT) {
            const Etcdserverpb__PutRequest *q = op->request_put;
            if (q->ignore_value || q->ignore_lease) {
                MDB_val v;
                struct kv_rec r;
                bool found;
                if (get_one(c, q->key, &v, &r, &found))
                    return EXEC_SYS;
                if (!found)
                    rc = req_fail(err, KV_CODE_INVALID_ARGUMENT, KV_ERR_KEY_NOT_FOUND);
            }
            if (rc == 0 && q->lease != 0) {
                struct kv_lease l;
                bool found;
                int x = lease_read(c->txn, c->s->lease, q->lease, &l, &found);
                if (x)
                    return sys_fail(c, x);
                if (!found)
                    rc = req_fail(err, KV_CODE_NOT_FOUND, KV_ERR_LEASE_NOT_FOUND);
            }
        } else if (op->request_case == ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE) {
            const Etcdserverpb__RangeRequest *q = op->request_range;
            if (pass == 1 && q->revision > c->rev)
                rc = req_fail(err, KV_CODE_OUT_OF_RANGE, KV_ERR_FUTURE_REV);
            else if (pass == 1 && (q->revision < 0 || (q->revision > 0 && q->revision < c->compact)))
                /* etcd: revision < first revision, which (as in etcd) a negative revision
                 * inside a txn is */
                rc = req_fail(err, KV_CODE_OUT_OF_RANGE, KV_ERR_COMPACTED);
            else if (pass == 2 && q->revision != 0) {
                /* read before the txn writes: the state at that revision */
                Etcdserverpb__RangeResponse *resp;
                c->at = q->revision;
                int x = range_exec(c, q, c->rev, &resp);
                c->at = 0;
                if (x)
                    return EXEC_SYS;
                pre->v[pre->n++] = resp;
            }
        }
        if (rc)
            return rc;
    }
    return 0;
}

static size_t count_ranges(const Etcdserverpb__TxnRequest *t)
{
    size_t n = 0;
    for (int b = 0; b < 2; b++) {
        Etcdserverpb__RequestOp **ops = b ? t->failure : t->success;
        size_t m = b ? t->n_failure : t->n_success;
        for (size_t i = 0; i < m; i++) {
            if (ops[i]->request_case == ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE)
                n++;
            else if (ops[i]->request_case == ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_TXN)
                n += count_ranges(ops[i]->request_txn);
        }
    }
    return n;
}

/* Executes the path in order (etcd's applyTxn); every response header carries the revision
 * as of that step. Cannot fail with EXEC_REQ: path_check found those errors first. */
static int path_exec(struct kv_ctx *c, const Etcdserverpb__TxnRequest *t, struct path *p,
                     struct preread *pre, Etcdserverpb__TxnResponse **out, struct kv_err *err)
{
    bool ok = p->v[p->pos++];
    Etcdserverpb__RequestOp **ops = ok ? t->success : t->failure;
    size_t n = ok ? t->n_success : t->n_failure;
    Etcdserverpb__TxnResponse *resp = malloc(sizeof *resp);
    if (!resp)
        return sys_fail(c, ENOMEM);
    etcdserverpb__txn_response__init(resp);
    resp->succeeded = ok;
    /* etcd gives a nested txn's response an empty header; the caller sets the top one's */
    if (!(resp->header = header_new(0)) ||
        (n && !(resp->responses = calloc(n, sizeof *resp->responses)))) {
        msg_free(resp);
        return sys_fail(c, ENOMEM);
    }
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        Etcdserverpb__ResponseOp *ro = malloc(sizeof *ro);
        if (!ro) {
            rc = sys_fail(c, ENOMEM);
            break;
        }
        etcdserverpb__response_op__init(ro);
        resp->responses[resp->n_responses++] = ro;
        const Etcdserverpb__RequestOp *op = ops[i];
        switch (op->request_case) {
        case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE:
            ro->response_case = ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_RANGE;
            if (op->request_range->revision != 0) {
                ro->response_range = pre->v[pre->pos];
                pre->v[pre->pos++] = NULL;
                ro->response_range->header->revision = cur_rev(c);
            } else {
                rc = range_exec(c, op->request_range, cur_rev(c), &ro->response_range);
            }
            break;
        case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT:
            ro->response_case = ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_PUT;
            rc = put_exec(c, op->request_put, &ro->response_put, err);
            break;
        case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_DELETE_RANGE:
            ro->response_case = ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_DELETE_RANGE;
            rc = delete_exec(c, op->request_delete_range, &ro->response_delete_range);
            break;
        case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_TXN:
            ro->response_case = ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_TXN;
            rc = path_exec(c, op->request_txn, p, pre, &ro->response_txn, err);
            break;
        default:
            break;
        }
        if (rc) /* a failed step leaves its oneof unset so the free below stays correct */
            ro->response_case = ETCDSERVERPB__RESPONSE_OP__RESPONSE__NOT_SET;
    }
    if (rc) {
        msg_free(resp);
        return rc;
    }
    *out = resp;
    return 0;
}

static int txn_exec(struct kv_ctx *c, const Etcdserverpb__TxnRequest *t,
                    Etcdserverpb__TxnResponse **out, struct kv_err *err)
{
    struct path p = {0};
    struct preread pre = {0};
    int rc = path_build(c, t, &p);
    if (rc == 0 && !kv_txn_is_readonly(t)) {
        p.pos = 0;
        rc = path_check(c, t, &p, 0, NULL, err);
    }
    if (rc == 0) {
        p.pos = 0;
        rc = path_check(c, t, &p, 1, NULL, err);
    }
    size_t nr = rc == 0 ? count_ranges(t) : 0;
    if (nr && !(pre.v = calloc(nr, sizeof *pre.v)))
        rc = sys_fail(c, ENOMEM);
    if (rc == 0 && nr) {
        p.pos = 0;
        rc = path_check(c, t, &p, 2, &pre, err);
    }
    if (rc == 0) {
        p.pos = 0;
        rc = path_exec(c, t, &p, &pre, out, err);
    }
    if (rc == 0)
        (*out)->header->revision = cur_rev(c);
    for (size_t i = 0; i < pre.n; i++)
        msg_free(pre.v[i]);
    free(pre.v);
    free(p.v);
    return rc;
}

/* ---- Compact ---- */

static int compact_exec(struct kv_ctx *c, const Etcdserverpb__CompactionRequest *r,
                        Etcdserverpb__CompactionResponse **out, struct kv_err *err)
{
    /* etcd's order: at or below the compacted revision first, then the future */
    if (r->revision <= c->compact)
        return req_fail(err, KV_CODE_OUT_OF_RANGE, KV_ERR_COMPACTED);
    if (r->revision > c->rev)
        return req_fail(err, KV_CODE_OUT_OF_RANGE, KV_ERR_FUTURE_REV);
    Etcdserverpb__CompactionResponse *resp = malloc(sizeof *resp);
    if (!resp || !(etcdserverpb__compaction_response__init(resp),
                   resp->header = header_new(c->rev))) {
        free(resp);
        return sys_fail(c, ENOMEM);
    }
    c->compact = r->revision; /* no history to drop yet: only the bound moves */
    *out = resp;
    return EXEC_OK;
}

/* ---- leases (kv_store.h "Leases") ---- */

/* Remembers what this entry did to the lease table, for the hook after the commit. 0 or ENOMEM. */
static int lease_changed(struct kv_store *s, enum kv_lease_change what, int64_t id, int64_t ttl)
{
    if (s->n_lch == s->cap_lch) {
        size_t cap = s->cap_lch ? 2 * s->cap_lch : 64;
        struct lease_change *v = realloc(s->lch, cap * sizeof *v);
        if (!v)
            return ENOMEM;
        s->lch = v;
        s->cap_lch = cap;
    }
    s->lch[s->n_lch++] = (struct lease_change){what, id, ttl};
    return 0;
}

static int grant_exec(struct kv_ctx *c, const Etcdserverpb__LeaseGrantRequest *g,
                      Etcdserverpb__LeaseGrantResponse **out, struct kv_err *err)
{
    struct kv_lease l;
    bool found;
    int rc = lease_read(c->txn, c->s->lease, g->id, &l, &found);
    if (rc)
        return sys_fail(c, rc);
    if (found)
        return req_fail(err, KV_CODE_FAILED_PRECONDITION, KV_ERR_LEASE_EXISTS);
    Etcdserverpb__LeaseGrantResponse *resp = malloc(sizeof *resp);
    if (!resp || !(etcdserverpb__lease_grant_response__init(resp),
                   resp->header = header_new(cur_rev(c)))) {
        free(resp);
        return sys_fail(c, ENOMEM);
    }
    resp->id = g->id;
    resp->ttl = g->ttl;
    l = (struct kv_lease){g->id, g->ttl, 0};
    if ((rc = lease_write(c->txn, c->s->lease, &l)) ||
        (rc = lease_changed(c->s, KV_LEASE_GRANTED, g->id, g->ttl))) {
        msg_free(resp);
        return sys_fail(c, rc);
    }
    *out = resp;
    return EXEC_OK;
}

/* A revoke's keys, copied out of "lkeys" before any of them is deleted. */
struct key_list {
    uint8_t *buf;
    size_t len, cap;
    size_t n;
};

static int key_collect(void *arg, const uint8_t *key, size_t len)
{
    struct key_list *l = arg;
    if (l->cap - l->len < len + sizeof(uint16_t)) {
        size_t cap = l->cap ? 2 * l->cap : 4096;
        while (cap - l->len < len + sizeof(uint16_t))
            cap *= 2;
        uint8_t *b = realloc(l->buf, cap);
        if (!b)
            return ENOMEM;
        l->buf = b;
        l->cap = cap;
    }
    uint16_t n = (uint16_t)len; /* at most KV_MAX_LEASE_KEY */
    memcpy(l->buf + l->len, &n, sizeof n);
    memcpy(l->buf + l->len + sizeof n, key, len);
    l->len += sizeof n + len;
    l->n++;
    return 0;
}

/* etcd's lessor Revoke: every attached key deleted under one revision, then the lease. */
static int revoke_exec(struct kv_ctx *c, int64_t id, Etcdserverpb__LeaseRevokeResponse **out,
                       struct kv_err *err)
{
    struct kv_lease l;
    bool found;
    int rc = lease_read(c->txn, c->s->lease, id, &l, &found);
    if (rc)
        return sys_fail(c, rc);
    if (!found)
        return req_fail(err, KV_CODE_NOT_FOUND, KV_ERR_LEASE_NOT_FOUND);
    struct key_list keys = {0};
    int lmdb;
    rc = lease_keys_walk(c->txn, c->s->lkeys, id, key_collect, &keys, &lmdb);
    if (rc || lmdb) {
        free(keys.buf);
        return sys_fail(c, lmdb ? lmdb : rc);
    }
    size_t off = 0;
    for (size_t i = 0; i < keys.n && rc == 0; i++) {
        uint16_t n;
        memcpy(&n, keys.buf + off, sizeof n);
        const uint8_t *key = keys.buf + off + sizeof n;
        off += sizeof n + n;
        MDB_val k = {n, (void *)key}, v;
        rc = mdb_get(c->txn, c->s->kv, &k, &v);
        if (rc == 0)
            rc = del_key(c, key, n, id); /* also takes it out of "lkeys" */
        else if (rc == MDB_NOTFOUND) /* cannot happen: a delete detaches; tolerate it */
            rc = lease_link(c->txn, c->s->lkeys, id, key, n, false);
    }
    free(keys.buf);
    if (keys.n)
        c->changed = true;
    uint8_t kb[8];
    kv_be64_put(kb, (uint64_t)id);
    MDB_val lk = {8, kb};
    if (rc == 0)
        rc = mdb_del(c->txn, c->s->lease, &lk, NULL);
    if (rc == 0)
        rc = lease_changed(c->s, KV_LEASE_REVOKED, id, 0);
    if (rc)
        return sys_fail(c, rc);
    Etcdserverpb__LeaseRevokeResponse *resp = malloc(sizeof *resp);
    if (!resp || !(etcdserverpb__lease_revoke_response__init(resp),
                   resp->header = header_new(cur_rev(c)))) {
        free(resp);
        return sys_fail(c, ENOMEM);
    }
    *out = resp;
    return EXEC_OK;
}

static int checkpoint_exec(struct kv_ctx *c, const Etcdserverpb__LeaseCheckpointRequest *r,
                           Etcdserverpb__LeaseCheckpointResponse **out)
{
    for (size_t i = 0; i < r->n_checkpoints; i++) {
        struct kv_lease l;
        bool found;
        int rc = lease_read(c->txn, c->s->lease, r->checkpoints[i]->id, &l, &found);
        if (rc == 0 && found && l.remaining != r->checkpoints[i]->remaining_ttl) {
            l.remaining = r->checkpoints[i]->remaining_ttl;
            rc = lease_write(c->txn, c->s->lease, &l);
        }
        if (rc)
            return sys_fail(c, rc);
    }
    Etcdserverpb__LeaseCheckpointResponse *resp = malloc(sizeof *resp);
    if (!resp || !(etcdserverpb__lease_checkpoint_response__init(resp),
                   resp->header = header_new(cur_rev(c)))) {
        free(resp);
        return sys_fail(c, ENOMEM);
    }
    *out = resp;
    return EXEC_OK;
}

/* ---- bytes in use ---- */

/* Bytes in use in txn's snapshot. Every page below the end of the file is one of the two meta
 * pages, a page of a B-tree (LMDB's free-page list's own, its main database's, "kv", "meta", "hist",
 * "lease", "lkeys") or
 * a free page; LMDB's own audit (mdb_audit) checks that sum. So the pages in use are the trees'
 * page counts, which each database record keeps (O(1)), plus the metas: the file's pages minus
 * the free ones without walking the free list, whose length grows with the store. A new named
 * database must join dbis (none is DUPSORT, whose sub-databases the records would not count).
 * The sum is capped at the file's size. -1 only for a txn LMDB refuses. */
static int64_t size_in_use(struct kv_store *s, MDB_txn *txn)
{
    const MDB_dbi dbis[] = {0 /* FREE_DBI */, 1 /* MAIN_DBI */, s->kv,   s->meta,
                            s->hist,          s->lease,         s->lkeys};
    int64_t pages = 2; /* NUM_METAS */
    MDB_stat st = {0};
    for (size_t i = 0; i < sizeof dbis / sizeof dbis[0]; i++) {
        if (mdb_stat(txn, dbis[i], &st))
            return -1;
        pages += (int64_t)(st.ms_branch_pages + st.ms_leaf_pages + st.ms_overflow_pages);
    }
    MDB_envinfo info;
    if (mdb_env_info(mdb_txn_env(txn), &info) == 0 && pages > (int64_t)info.me_last_pgno + 1)
        pages = (int64_t)info.me_last_pgno + 1;
    return pages * (int64_t)st.ms_psize;
}

/* After every commit, on the thread that committed (open, then the applier): the quota check
 * reads s->in_use on each write instead of opening a read transaction. If LMDB refuses the
 * read (only when the environment has failed, which stops apply too) the value stays. */
static void publish_in_use(struct kv_store *s)
{
    if (mdb_txn_renew(s->stat_txn) != 0)
        return;
    int64_t n = size_in_use(s, s->stat_txn);
    mdb_txn_reset(s->stat_txn);
    if (n >= 0)
        atomic_store(&s->in_use, n);
}

uint64_t kv_store_map_size(uint64_t quota)
{
    const uint64_t max = (uint64_t)1 << 44, min_room = (uint64_t)8 << 30;
    if (!quota)
        quota = KV_DEFAULT_MAP_SIZE;
    if (quota >= max / 2)
        return max;
    uint64_t room = quota > min_room ? quota : min_room;
    return quota + room > max ? max : quota + room;
}

/* ---- apply ---- */

/* The "state" record: applied index, revision, compacted revision, then the term of the entry
 * at the applied index (0 = not known: it was a NOOP/CONFIG entry the runtime filtered out, or
 * the record predates snapshots and has only the first three words). Snapshots report it. */
static int state_write(MDB_txn *txn, MDB_dbi meta, uint64_t applied, uint64_t term, int64_t rev,
                       int64_t compact)
{
    uint8_t b[STATE_LEN];
    kv_le_put64(b, applied);
    kv_le_put64(b + 8, (uint64_t)rev);
    kv_le_put64(b + 16, (uint64_t)compact);
    kv_le_put64(b + 24, term);
    MDB_val k = {5, "state"}, v = {sizeof b, b};
    return mdb_put(txn, meta, &k, &v, 0);
}

static int state_read(MDB_txn *txn, MDB_dbi meta, struct kv_snap_meta *st)
{
    MDB_val k = {5, "state"}, v;
    int rc = mdb_get(txn, meta, &k, &v);
    if (rc)
        return rc;
    if (v.mv_size != STATE_LEN && v.mv_size != STATE_LEN_V1)
        return MDB_CORRUPTED;
    const uint8_t *p = v.mv_data;
    st->index = kv_le_get64(p);
    st->rev = (int64_t)kv_le_get64(p + 8);
    st->compact = (int64_t)kv_le_get64(p + 16);
    st->term = v.mv_size == STATE_LEN ? kv_le_get64(p + 24) : 0;
    return 0;
}

static bool has_ignore_put(const Etcdserverpb__TxnRequest *t)
{
    for (int b = 0; b < 2; b++) {
        Etcdserverpb__RequestOp **ops = b ? t->failure : t->success;
        size_t n = b ? t->n_failure : t->n_success;
        for (size_t i = 0; i < n; i++) {
            const Etcdserverpb__RequestOp *op = ops[i];
            if ((op->request_case == ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT &&
                 (op->request_put->ignore_value || op->request_put->ignore_lease)) ||
                (op->request_case == ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_TXN &&
                 has_ignore_put(op->request_txn)))
                return true;
        }
    }
    return false;
}

/* Packs a Result for one entry into res. 0, or -ENOMEM. */
static int result_set(struct raft_fsm_result *res, Craft__Kv__Result *r)
{
    size_t n = craft__kv__result__get_packed_size(r);
    uint8_t *b = malloc(n ? n : 1);
    if (!b)
        return -ENOMEM;
    craft__kv__result__pack(r, b);
    res->code = (int)r->code;
    res->data = b;
    res->len = n;
    return 0;
}

static int result_error(struct raft_fsm_result *res, int code, const char *msg, int64_t rev)
{
    Craft__Kv__Result r = CRAFT__KV__RESULT__INIT;
    r.code = (uint32_t)code;
    r.message = (char *)msg;
    r.revision = rev;
    return result_set(res, &r);
}

#define META_AUTH "auth"

/* One auth command (kv_auth.h) on the batch's auth state; the new state's bytes go into meta
 * in txn. 0 with *res filled, or the code that killed txn (ENOMEM: out of memory is no etcd
 * answer, members must not differ on it). */
static int auth_exec(struct kv_store *s, MDB_txn *txn, const Craft__Kv__Command *cmd,
                     struct raft_fsm_result *res)
{
    struct kv_auth *next;
    struct kv_err err = {0};
    if (kv_auth_apply(s->auth_work ? s->auth_work : s->auth, cmd, &next, &err)) {
        if (err.code == KV_CODE_INTERNAL)
            return ENOMEM;
        return result_error(res, err.code, err.msg, s->rev) ? ENOMEM : 0;
    }
    uint8_t *b;
    size_t n;
    if (kv_auth_encode(next, &b, &n)) {
        kv_auth_unref(next);
        return ENOMEM;
    }
    MDB_val k = {strlen(META_AUTH), META_AUTH}, v = {n, b};
    int rc = mdb_put(txn, s->meta, &k, &v, 0);
    free(b);
    if (rc) {
        kv_auth_unref(next);
        return rc;
    }
    kv_auth_unref(s->auth_work);
    s->auth_work = next;
    Craft__Kv__Result r = CRAFT__KV__RESULT__INIT;
    r.revision = s->rev;
    r.auth_revision = kv_auth_revision(next);
    return result_set(res, &r) ? ENOMEM : 0;
}

struct lease_perm {
    const struct kv_auth *a;
    const char *user;
    struct kv_err *err;
    bool denied;
};

static int lease_key_perm(void *arg, const uint8_t *key, size_t len)
{
    struct lease_perm *lp = arg;
    if (kv_auth_check(lp->a, lp->user, key, len, NULL, 0, KV_AUTH_WRITE, lp->err) == 0)
        return 0;
    lp->denied = true;
    return 1;
}

/* etcd's checkLeasePuts: the user may write every key attached to lease id (a missing lease
 * passes: apply answers it). 0, -1 with *err, or an LMDB code. */
static int lease_puts_check(struct kv_store *s, MDB_txn *txn, const struct kv_auth *a,
                            const char *user, int64_t id, struct kv_err *err)
{
    struct lease_perm lp = {a, user, err, false};
    int lmdb;
    lease_keys_walk(txn, s->lkeys, id, lease_key_perm, &lp, &lmdb);
    if (lmdb)
        return lmdb;
    return lp.denied ? -1 : 0;
}

/* etcd 3.4's authApplierV3 at this point of the log, for a command that says who asked
 * (kvcmd.proto AuthInfo): 0 allowed, -1 refused with *err, or an LMDB code / ENOMEM. */
static int auth_apply_check(struct kv_store *s, MDB_txn *txn, const Craft__Kv__Command *cmd,
                            struct kv_err *err)
{
    const struct kv_auth *a = s->auth_work ? s->auth_work : s->auth;
    if (!cmd->auth || !kv_auth_enabled(a))
        return 0;
    const char *user = cmd->auth->anonymous ? NULL : cmd->auth->user;
    int rc = 0;
    switch (cmd->op_case) {
    case CRAFT__KV__COMMAND__OP_PUT:
        if (!cmd->put)
            break;
        rc = kv_auth_check(a, user, cmd->put->key.data, cmd->put->key.len, NULL, 0,
                           KV_AUTH_WRITE, err);
        if (rc == 0 && cmd->put->lease)
            rc = lease_puts_check(s, txn, a, user, cmd->put->lease, err);
        if (rc == 0 && cmd->put->prev_kv)
            rc = kv_auth_check(a, user, cmd->put->key.data, cmd->put->key.len, NULL, 0,
                               KV_AUTH_READ, err);
        break;
    case CRAFT__KV__COMMAND__OP_DELETE_RANGE:
        if (cmd->delete_range)
            rc = kv_auth_check_delete(a, user, cmd->delete_range, err);
        break;
    case CRAFT__KV__COMMAND__OP_TXN:
        if (cmd->txn)
            rc = kv_auth_check_txn(a, user, cmd->txn, err);
        break;
    case CRAFT__KV__COMMAND__OP_COMPACTION: /* craft: root only (etcd 3.4 checks nothing) */
        rc = kv_auth_check_admin(a, user, err);
        break;
    case CRAFT__KV__COMMAND__OP_LEASE_REVOKE:
        if (cmd->lease_revoke)
            rc = lease_puts_check(s, txn, a, user, cmd->lease_revoke->id, err);
        break;
    case CRAFT__KV__COMMAND__OP_LEASE_GRANT:
    case CRAFT__KV__COMMAND__OP_LEASE_CHECKPOINT:
        break;
    default:
        if (kv_auth_is_cmd(cmd)) /* etcd's needAdminPermission */
            rc = kv_auth_check_admin(a, user, err);
        break;
    }
    if (rc < 0 && err->code == KV_CODE_INTERNAL)
        return ENOMEM; /* out of memory is no answer members may differ on */
    return rc;
}

/* The batch committed: its auth state is the one in force. */
static void auth_publish(struct kv_store *s)
{
    if (!s->auth_work)
        return;
    pthread_mutex_lock(&s->auth_mu);
    struct kv_auth *old = s->auth;
    s->auth = s->auth_work;
    atomic_store_explicit(&s->auth_on, kv_auth_enabled(s->auth), memory_order_release);
    pthread_mutex_unlock(&s->auth_mu);
    s->auth_work = NULL;
    kv_auth_unref(old);
}

static void auth_discard(struct kv_store *s)
{
    kv_auth_unref(s->auth_work);
    s->auth_work = NULL;
}

bool kv_store_auth_enabled(struct kv_store *s)
{
    return atomic_load_explicit(&s->auth_on, memory_order_acquire);
}

struct kv_auth *kv_store_auth_get(struct kv_store *s)
{
    pthread_mutex_lock(&s->auth_mu);
    struct kv_auth *a = s->auth ? kv_auth_ref(s->auth) : NULL;
    pthread_mutex_unlock(&s->auth_mu);
    return a;
}

/* Applies one entry inside txn. 0 with *res filled (success or an etcd error); or the LMDB /
 * errno code that killed txn (MDB_MAP_FULL: the caller isolates the entry; else fatal). */
static int apply_entry(struct kv_store *s, MDB_txn *txn, const struct raft_entry *e,
                       struct raft_fsm_result *res)
{
    struct kv_err werr;
    if (kv_check_cmd_wire(e->data, e->len, &werr)) /* before unpack recurses into it */
        return result_error(res, werr.code, werr.msg, s->rev) ? ENOMEM : 0;
    Craft__Kv__Command *cmd = craft__kv__command__unpack(NULL, e->len, e->data);
    if (!cmd)
        return result_error(res, KV_CODE_INVALID_ARGUMENT, KV_ERR_BAD_COMMAND, s->rev) ? ENOMEM : 0;
    struct kv_err aerr = {0};
    int ac = auth_apply_check(s, txn, cmd, &aerr);
    if (ac) {
        craft__kv__command__free_unpacked(cmd, NULL);
        if (ac > 0)
            return ac;
        return result_error(res, aerr.code, aerr.msg, s->rev) ? ENOMEM : 0;
    }
    if (kv_auth_is_cmd(cmd)) {
        int x = auth_exec(s, txn, cmd, res);
        craft__kv__command__free_unpacked(cmd, NULL);
        return x;
    }
    struct kv_ctx c = {.s = s, .txn = txn, .rev = s->rev, .compact = s->compact};
    struct kv_err err = {0};
    Craft__Kv__Result r = CRAFT__KV__RESULT__INIT;
    int rc = EXEC_REQ;
    switch (cmd->op_case) {
    case CRAFT__KV__COMMAND__OP_PUT:
        if (kv_validate_put(cmd->put, &err) == 0) {
            /* etcd checks the lease before the rest */
            struct kv_lease l;
            bool found = true;
            int x = cmd->put->lease ? lease_read(txn, s->lease, cmd->put->lease, &l, &found) : 0;
            if (x) {
                craft__kv__command__free_unpacked(cmd, NULL);
                return x;
            }
            if (!found)
                kv_fail(&err, KV_CODE_NOT_FOUND, KV_ERR_LEASE_NOT_FOUND);
            else
                rc = put_exec(&c, cmd->put, &r.put, &err);
        }
        r.resp_case = CRAFT__KV__RESULT__RESP_PUT;
        break;
    case CRAFT__KV__COMMAND__OP_DELETE_RANGE:
        if (kv_validate_delete_range(cmd->delete_range, &err) == 0)
            rc = delete_exec(&c, cmd->delete_range, &r.delete_range);
        r.resp_case = CRAFT__KV__RESULT__RESP_DELETE_RANGE;
        break;
    case CRAFT__KV__COMMAND__OP_TXN:
        if (kv_validate_txn_limits(cmd->txn, 0, false, &err) == 0) {
            /* A put with ignore_value/ignore_lease can still find its key gone at execution
             * time, after the checks: a from-key delete earlier in the txn, which etcd's
             * duplicate-key rule lets through (etcd 3.4 panics there). The txn then fails as
             * a whole, so its earlier writes run in a child transaction that can be undone;
             * only such txns pay for one. */
            MDB_txn *child = NULL;
            size_t undo_mark = s->n_undo;
            if (has_ignore_put(cmd->txn)) {
                int x = mdb_txn_begin(s->env, txn, 0, &child);
                if (x) {
                    craft__kv__command__free_unpacked(cmd, NULL);
                    return x;
                }
                c.txn = child;
            }
            rc = txn_exec(&c, cmd->txn, &r.txn, &err);
            if (child && rc == EXEC_OK && (c.sys = mdb_txn_commit(child)) != 0) {
                msg_free(r.txn);
                r.txn = NULL;
                rc = EXEC_SYS;
            } else if (child && rc != EXEC_OK) {
                mdb_txn_abort(child);
                idx_undo_to(s, undo_mark); /* its writes are gone: so are they from the index */
            }
        }
        r.resp_case = CRAFT__KV__RESULT__RESP_TXN;
        break;
    case CRAFT__KV__COMMAND__OP_COMPACTION:
        if (kv_validate_compaction(cmd->compaction, &err) == 0)
            rc = compact_exec(&c, cmd->compaction, &r.compaction, &err);
        r.resp_case = CRAFT__KV__RESULT__RESP_COMPACTION;
        break;
    case CRAFT__KV__COMMAND__OP_LEASE_GRANT:
        if (kv_validate_lease_grant(cmd->lease_grant, &err) == 0)
            rc = grant_exec(&c, cmd->lease_grant, &r.lease_grant, &err);
        r.resp_case = CRAFT__KV__RESULT__RESP_LEASE_GRANT;
        break;
    case CRAFT__KV__COMMAND__OP_LEASE_REVOKE:
        if (cmd->lease_revoke)
            rc = revoke_exec(&c, cmd->lease_revoke->id, &r.lease_revoke, &err);
        else
            kv_fail(&err, KV_CODE_INVALID_ARGUMENT, KV_ERR_BAD_COMMAND);
        r.resp_case = CRAFT__KV__RESULT__RESP_LEASE_REVOKE;
        break;
    case CRAFT__KV__COMMAND__OP_LEASE_CHECKPOINT:
        if (kv_validate_lease_checkpoint(cmd->lease_checkpoint, &err) == 0)
            rc = checkpoint_exec(&c, cmd->lease_checkpoint, &r.lease_checkpoint);
        r.resp_case = CRAFT__KV__RESULT__RESP_LEASE_CHECKPOINT;
        break;
    default:
        kv_fail(&err, KV_CODE_INVALID_ARGUMENT, KV_ERR_BAD_COMMAND);
        break;
    }
    craft__kv__command__free_unpacked(cmd, NULL);
    /* the union's members all sit in one place: whichever response was built */
    ProtobufCMessage *resp = (ProtobufCMessage *)r.put;
    if (rc == EXEC_SYS)
        return c.sys ? c.sys : EIO;
    int out;
    if (rc == EXEC_REQ) {
        /* Nothing was written: etcd's checks all run before the first write of a request,
         * and the one error that can come later (above) undoes its child transaction. */
        out = result_error(res, err.code, err.msg, s->rev);
    } else {
        s->rev = cur_rev(&c);
        s->compact = c.compact;
        r.revision = s->rev;
        out = result_set(res, &r);
        msg_free(resp);
    }
    return out ? ENOMEM : 0;
}

static void results_clear(struct raft_fsm_result *res, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(res[i].data);
        res[i] = (struct raft_fsm_result){0};
    }
}

/* The code apply returns after rc killed a transaction; the node logs it. A full disk shows as
 * ENOSPC, or as EIO when LMDB's page write was short (LMDB's own code for a short write), so EIO
 * with (almost) no space left on the store's filesystem is reported as ENOSPC. */
static int fatal(const struct kv_store *s, int rc)
{
    if (rc == ENOMEM)
        return -ENOMEM;
    struct statvfs fs;
    if (rc == EIO && statvfs(s->dir, &fs) == 0 && (uint64_t)fs.f_bavail * fs.f_frsize < (1u << 20))
        rc = ENOSPC;
    if (rc == ENOSPC)
        return -ENOSPC;
    return -EIO; /* an LMDB error (I/O, corruption, ...) or errno: stop applying */
}

/* A restore left every byte synced and kv.state clean; the first unsynced commit after it (the
 * applier's or the compactor's) marks the store dirty first, durably. 0 or an errno. */
static int mark_dirty(struct kv_store *s)
{
    if (!atomic_load(&s->mark_pending))
        return 0;
    pthread_mutex_lock(&s->mark_mu);
    int rc = 0;
    if (atomic_load(&s->mark_pending) && (rc = kv_mark_write(s->dir, s->boot)) == 0)
        atomic_store(&s->mark_pending, false);
    pthread_mutex_unlock(&s->mark_mu);
    return rc;
}

/* After each commit of the applier: the size in use for the quota check, the syncer's count,
 * the compactor told of a new compacted revision, Watch told of the new revision. */
static void after_commit(struct kv_store *s)
{
    publish_in_use(s);
    atomic_fetch_add(&s->commits, 1);
    if (s->compact_init && s->compact != s->compact_told) {
        s->compact_told = s->compact;
        pthread_mutex_lock(&s->compact_mu);
        s->compact_wanted = s->compact;
        pthread_cond_signal(&s->compact_cv);
        pthread_mutex_unlock(&s->compact_mu);
    }
    for (size_t i = 0; i < s->n_lch && s->lease_hook; i++)
        s->lease_hook(s->lease_arg, s->lch[i].what, s->lch[i].id, s->lch[i].ttl);
    s->n_lch = 0;
    if (s->commit_hook)
        s->commit_hook(s->commit_arg, s->rev);
}

/* The slow path after MDB_MAP_FULL: one transaction per entry, so the entry that does not fit
 * gets its error result and every other entry still applies. */
static int apply_isolated(struct kv_store *s, const struct raft_entry *es, size_t n,
                          uint64_t last_index, struct raft_fsm_result *results)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t idx = i + 1 == n ? last_index : es[i].index;
        uint64_t term = idx == es[i].index ? es[i].term : 0;
        int64_t rev0 = s->rev, compact0 = s->compact;
        s->n_lch = 0; /* what an aborted transaction did is not done */
        MDB_txn *txn;
        int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
        if (rc)
            return fatal(s, rc);
        rc = apply_entry(s, txn, &es[i], &results[i]);
        if (rc == 0 && (rc = state_write(txn, s->meta, idx, term, s->rev, s->compact)) == 0)
            rc = mdb_txn_commit(txn);
        else
            mdb_txn_abort(txn);
        if (rc)
            idx_undo_to(s, 0);
        idx_undo_clear(s);
        if (rc)
            auth_discard(s);
        else
            auth_publish(s);
        if (rc == MDB_MAP_FULL) {
            s->rev = rev0;
            s->compact = compact0;
            s->n_lch = 0;
            results_clear(&results[i], 1);
            if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)))
                return fatal(s, rc);
            if ((rc = state_write(txn, s->meta, idx, term, s->rev, s->compact)) == 0)
                rc = mdb_txn_commit(txn);
            else
                mdb_txn_abort(txn);
            if (rc == 0)
                rc = result_error(&results[i], KV_CODE_RESOURCE_EXHAUSTED, KV_ERR_NO_SPACE,
                                  s->rev) ? ENOMEM : 0;
        }
        if (rc) {
            s->rev = rev0;
            s->compact = compact0;
            return fatal(s, rc);
        }
        atomic_store(&s->applied, idx);
        after_commit(s);
    }
    return 0;
}

static int apply_batch(struct kv_store *s, const struct raft_entry *es, size_t n,
                       uint64_t last_index, struct raft_fsm_result *results)
{
    /* A restore left every byte synced and kv.state clean, so a machine crash until now keeps
     * the restored store; the first unsynced commit needs the dirty mark first. */
    int mrc = mark_dirty(s);
    if (mrc)
        return fatal(s, mrc);
    uint64_t applied = atomic_load(&s->applied);
    /* The runtime never repeats an applied entry; if it did, applying twice would corrupt
     * the revisions, so such entries only get an error. */
    size_t skip = 0;
    while (skip < n && es[skip].index <= applied) {
        if (result_error(&results[skip], KV_CODE_FAILED_PRECONDITION,
                         "craft: entry already applied", s->rev))
            return -ENOMEM;
        skip++;
    }
    es += skip, results += skip, n -= skip;
    if (last_index <= applied)
        return 0;
    /* The term of last_index is known only when it is the last entry's own index (trailing
     * NOOP/CONFIG entries come as last_index alone). */
    uint64_t term = n && es[n - 1].index == last_index ? es[n - 1].term : 0;
    int64_t rev0 = s->rev, compact0 = s->compact;
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc)
        return fatal(s, rc);
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (s->fail_at && es[i].index == s->fail_at)
            rc = EIO;
        else
            rc = apply_entry(s, txn, &es[i], &results[i]);
    }
    if (rc == 0)
        rc = state_write(txn, s->meta, last_index, term, s->rev, s->compact);
    if (rc == 0) {
        uint64_t t0 = s->lazy ? 0 : metrics_now_ns();
        rc = mdb_txn_commit(txn); /* a failed commit frees txn too */
        if (rc == 0 && !s->lazy) /* it synced: the backend commit etcd times */
            metrics_histogram_observe(&s->commit_hist, metrics_now_ns() - t0);
    } else {
        mdb_txn_abort(txn);
    }
    if (rc)
        idx_undo_to(s, 0); /* the batch's writes are not in the store: nor in the index */
    idx_undo_clear(s);
    if (rc == 0) {
        auth_publish(s);
        atomic_store(&s->applied, last_index);
        after_commit(s);
        return 0;
    }
    /* Nothing of the batch is stored: forget its effects and results. */
    auth_discard(s);
    s->rev = rev0;
    s->compact = compact0;
    s->n_lch = 0;
    results_clear(results, n);
    if (rc == MDB_MAP_FULL)
        return apply_isolated(s, es, n, last_index, results);
    return fatal(s, rc);
}

static int fsm_apply(void *ctx, const struct raft_entry *es, size_t n, uint64_t last_index,
                     struct raft_fsm_result *results)
{
    struct kv_store *s = ctx;
    int rc = -EIO;
    pthread_rwlock_rdlock(&s->env_lock);
    /* A failed sync: the store's writes may not reach the disk, so stop (the log has them).
     * No env: a restore could not open the store it installed; the next start will. */
    if (!atomic_load(&s->sync_err) && s->env)
        rc = apply_batch(s, es, n, last_index, results);
    pthread_rwlock_unlock(&s->env_lock);
    return rc;
}

static uint64_t fsm_applied_index(void *ctx)
{
    return atomic_load(&((struct kv_store *)ctx)->applied);
}

/* ---- reads from any thread ---- */

/* Begins a read transaction, holding env_lock shared until read_end (a restore swaps the
 * environment under the write lock). */
static int read_begin(struct kv_store *s, struct kv_ctx *c, struct kv_err *err)
{
    *c = (struct kv_ctx){.s = s};
    pthread_rwlock_rdlock(&s->env_lock);
    if (!s->env) {
        pthread_rwlock_unlock(&s->env_lock);
        return kv_fail(err, KV_CODE_UNAVAILABLE, "craft: kv store unavailable after a failed "
                                                 "snapshot restore");
    }
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &c->txn);
    struct kv_snap_meta st;
    if (rc == 0 && (rc = state_read(c->txn, s->meta, &st)))
        mdb_txn_abort(c->txn);
    if (rc) {
        pthread_rwlock_unlock(&s->env_lock);
        if (rc == MDB_READERS_FULL)
            return kv_fail(err, KV_CODE_UNAVAILABLE, "etcdserver: too many requests");
        char m[128];
        snprintf(m, sizeof m, "craft: kv store read: %s", mdb_strerror(rc));
        return kv_fail(err, KV_CODE_INTERNAL, m);
    }
    c->rev = st.rev;
    c->compact = st.compact;
    return 0;
}

static void read_end(struct kv_ctx *c)
{
    mdb_txn_abort(c->txn);
    pthread_rwlock_unlock(&c->s->env_lock);
}

static int read_fail(struct kv_ctx *c, struct kv_err *err)
{
    char m[128];
    if (c->sys == ENOMEM)
        return kv_fail(err, KV_CODE_RESOURCE_EXHAUSTED, "craft: out of memory");
    if (c->sys == SYS_COMPACTED)
        return kv_fail(err, KV_CODE_OUT_OF_RANGE, KV_ERR_COMPACTED);
    snprintf(m, sizeof m, "craft: kv store read: %s", mdb_strerror(c->sys));
    return kv_fail(err, c->sys == MDB_CORRUPTED ? KV_CODE_DATA_LOSS : KV_CODE_INTERNAL, m);
}

int kv_store_range(struct kv_store *s, const Etcdserverpb__RangeRequest *r,
                   Etcdserverpb__RangeResponse **out, struct kv_err *err)
{
    struct kv_ctx c;
    if (kv_validate_range(r, err) || read_begin(s, &c, err))
        return -1;
    int rc = 0;
    /* etcd's rangeKeys: a future revision first, then one below the compacted revision
     * (revision <= 0 means the current one); an older one is read from the history */
    c.at = r->revision;
    if (r->revision > c.rev)
        rc = kv_fail(err, KV_CODE_OUT_OF_RANGE, KV_ERR_FUTURE_REV);
    else if (r->revision > 0 && r->revision < c.compact)
        rc = kv_fail(err, KV_CODE_OUT_OF_RANGE, KV_ERR_COMPACTED);
    else if (range_exec(&c, r, c.rev, out))
        rc = read_fail(&c, err);
    read_end(&c);
    return rc;
}

int kv_store_txn_read(struct kv_store *s, const Etcdserverpb__TxnRequest *r,
                      Etcdserverpb__TxnResponse **out, struct kv_err *err)
{
    struct kv_ctx c;
    if (!kv_txn_is_readonly(r))
        return kv_fail(err, KV_CODE_INVALID_ARGUMENT, "craft: txn is not read-only");
    if (kv_validate_txn_limits(r, 0, false, err) || read_begin(s, &c, err))
        return -1;
    int rc = txn_exec(&c, r, out, err);
    if (rc == EXEC_SYS)
        read_fail(&c, err);
    read_end(&c);
    return rc ? -1 : 0;
}

int kv_store_status(struct kv_store *s, int64_t *rev, int64_t *compact_rev, int64_t *db_size,
                    int64_t *db_size_in_use)
{
    struct kv_ctx c;
    if (read_begin(s, &c, NULL))
        return -1;
    MDB_envinfo info;
    MDB_stat st;
    mdb_env_info(s->env, &info);
    mdb_env_stat(s->env, &st);
    /* The same computation as the applier's, on this snapshot: equal to kv_store_size_in_use
     * once no batch is being applied. */
    int64_t in_use = size_in_use(s, c.txn);
    read_end(&c);
    if (in_use < 0)
        return -1;
    if (rev)
        *rev = c.rev;
    if (compact_rev)
        *compact_rev = c.compact;
    if (db_size)
        *db_size = ((int64_t)info.me_last_pgno + 1) * st.ms_psize;
    if (db_size_in_use)
        *db_size_in_use = in_use;
    return 0;
}

int64_t kv_store_size_in_use(const struct kv_store *s) { return atomic_load(&s->in_use); }

uint64_t kv_store_applied_index(struct kv_store *s) { return atomic_load(&s->applied); }

/* ---- history for Watch ---- */

void kv_store_set_commit_hook(struct kv_store *s, void (*fn)(void *arg, int64_t rev), void *arg)
{
    s->commit_hook = fn;
    s->commit_arg = arg;
}

void kv_store_set_lease_hook(struct kv_store *s,
                             void (*fn)(void *arg, enum kv_lease_change what, int64_t id,
                                        int64_t ttl),
                             void *arg)
{
    s->lease_hook = fn;
    s->lease_arg = arg;
}

struct key_stop {
    int (*cb)(void *arg, const uint8_t *key, size_t len);
    void *arg;
};

static int key_stop_cb(void *arg, const uint8_t *key, size_t len)
{
    struct key_stop *k = arg;
    return k->cb(k->arg, key, len) != 0;
}

int kv_store_lease_get(struct kv_store *s, int64_t id, struct kv_lease *out,
                       int (*key_cb)(void *arg, const uint8_t *key, size_t len), void *arg,
                       struct kv_err *err)
{
    struct kv_ctx c;
    if (read_begin(s, &c, err))
        return -1;
    bool found;
    int rc = lease_read(c.txn, s->lease, id, out, &found);
    if (rc == 0 && found && key_cb) {
        /* any value of key_cb's only stops the walk; rc is LMDB's */
        struct key_stop ks = {key_cb, arg};
        lease_keys_walk(c.txn, s->lkeys, id, key_stop_cb, &ks, &rc);
    }
    if (rc) {
        c.sys = rc;
        read_fail(&c, err);
    }
    read_end(&c);
    return rc ? -1 : found;
}

int kv_store_leases(struct kv_store *s, int (*cb)(void *arg, const struct kv_lease *l), void *arg,
                    struct kv_err *err)
{
    struct kv_ctx c;
    if (read_begin(s, &c, err))
        return -1;
    MDB_cursor *cur;
    int out = 0, rc = mdb_cursor_open(c.txn, s->lease, &cur);
    if (rc == 0) {
        MDB_val k, v;
        for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0 && out == 0;
             rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
            if (k.mv_size != 8 || v.mv_size != LEASE_VAL) {
                rc = MDB_CORRUPTED;
                break;
            }
            struct kv_lease l = {(int64_t)kv_be64_get(k.mv_data),
                                 (int64_t)kv_le_get64(v.mv_data),
                                 (int64_t)kv_le_get64((const uint8_t *)v.mv_data + 8)};
            out = cb(arg, &l);
        }
        mdb_cursor_close(cur);
        if (rc == MDB_NOTFOUND || out)
            rc = 0;
    }
    if (rc) {
        c.sys = rc;
        read_fail(&c, err);
        out = -1;
    }
    read_end(&c);
    return out;
}

/* An event's key-value from a history entry (a put's record, or a delete's key and revision). */
static int event_kv(const struct hist_ent *h, struct kv_event_kv *kv)
{
    *kv = (struct kv_event_kv){.key = h->key, .klen = h->klen, .mod = h->rev};
    if (h->type == KV_EVENT_DELETE)
        return 0;
    struct kv_rec r;
    if (rec_decode(&h->rec, &r))
        return -1;
    kv->create = r.create;
    kv->mod = r.mod;
    kv->version = r.version;
    kv->lease = r.lease;
    kv->val = r.val;
    kv->vlen = r.vlen;
    return 0;
}

/* The previous version of h's key (etcd: the key at revision h->rev - 1), if it was a put:
 * *found with *prev. *stop when the index may no longer know it (a compaction newer than this
 * read's transaction removed what lies below h->rev): the caller stops before h, and its next
 * read, in a newer transaction, answers "compacted". The index is held for the lookup only, so
 * whatever the caller does with the events never holds back apply. 0 or an LMDB code. */
static int event_prev(struct kv_ctx *c, const struct hist_ent *h, struct kv_event_kv *prev,
                      bool *found, bool *stop)
{
    *found = *stop = false;
    if (h->rev - 1 < c->compact)
        return 0; /* compacted: none (what it was may be gone from "hist" already) */
    struct kv_store *s = c->s;
    struct kv_index_ent e = {0};
    bool have = false;
    int rc = 0;
    pthread_rwlock_rdlock(&s->idx_lock);
    if (h->rev - 1 < s->idx_floor) {
        *stop = true;
    } else {
        const struct kv_index_node *n = kv_index_find(s->idx, h->key, h->klen);
        const struct kv_index_ent *p = n ? kv_index_before(n, h->rev, h->sub) : NULL;
        if (!n)
            rc = MDB_CORRUPTED; /* the write itself is indexed */
        else if (p)
            e = *p, have = true;
    }
    pthread_rwlock_unlock(&s->idx_lock);
    if (rc || !have || e.type != KV_EVENT_PUT)
        return rc;
    uint8_t hk[KV_HIST_KEY];
    kv_hist_key(hk, e.rev, e.sub);
    MDB_val pk = {KV_HIST_KEY, hk}, pv;
    struct hist_ent ph;
    if ((rc = mdb_get(c->txn, s->hist, &pk, &pv)))
        return rc == MDB_NOTFOUND ? MDB_CORRUPTED : rc;
    if (hist_decode(&pk, &pv, &ph) || ph.type != KV_EVENT_PUT || event_kv(&ph, prev))
        return MDB_CORRUPTED;
    *found = true;
    return 0;
}

int kv_store_events(struct kv_store *s, int64_t from_rev, size_t max_events, bool with_prev,
                    kv_event_cb cb, void *arg, int64_t *next_rev, int64_t *cur_rev,
                    int64_t *compact_rev, struct kv_err *err)
{
    struct kv_ctx c;
    if (read_begin(s, &c, err))
        return -1;
    if (cur_rev)
        *cur_rev = c.rev;
    if (compact_rev)
        *compact_rev = c.compact;
    int64_t next = from_rev <= 0 ? c.rev + 1 : from_rev;
    int rc = 0;
    if (from_rev > 0 && from_rev < c.compact) {
        rc = kv_fail(err, KV_CODE_OUT_OF_RANGE, KV_ERR_COMPACTED);
        goto out;
    }
    if (from_rev <= 0 || from_rev > c.rev)
        goto out;
    /* prev_kv reads the index, which a compaction newer than this transaction may have pruned
     * (event_prev stops before the events it reached) */
    if (with_prev) {
        pthread_rwlock_rdlock(&s->idx_lock);
        int64_t floor = s->idx_floor;
        pthread_rwlock_unlock(&s->idx_lock);
        if (from_rev < floor) {
            if (compact_rev)
                *compact_rev = floor; /* the compaction the answer is about */
            rc = kv_fail(err, KV_CODE_OUT_OF_RANGE, KV_ERR_COMPACTED);
            goto out;
        }
    }
    MDB_cursor *cur = NULL;
    int lrc = mdb_cursor_open(c.txn, s->hist, &cur);
    uint8_t start[KV_HIST_KEY] = {0};
    kv_be64_put(start, (uint64_t)from_rev);
    MDB_val k = {KV_HIST_KEY, start}, v;
    size_t n = 0;
    int64_t last = 0;
    bool stop = false;
    next = c.rev + 1; /* unless stopped before the end */
    if (lrc == 0)
        lrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    for (; lrc == 0; lrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        struct hist_ent h;
        struct kv_event ev = {0};
        if (hist_decode(&k, &v, &h) || event_kv(&h, &ev.kv)) {
            lrc = MDB_CORRUPTED;
            break;
        }
        /* cb stopped (resume at this entry's revision: the one cb stopped in when it is the
         * same, and the caller skips what it has), or the bound at a revision's end */
        if (stop || (max_events && n >= max_events && h.rev != last)) {
            next = h.rev;
            break;
        }
        ev.type = h.type;
        ev.rev = h.rev;
        ev.sub = (int64_t)h.sub;
        bool gone = false;
        if (with_prev && (lrc = event_prev(&c, &h, &ev.prev, &ev.has_prev, &gone)))
            break;
        if (gone) {
            next = h.rev; /* as when cb stops: the caller skips what it has of this revision */
            break;
        }
        int x = cb(arg, &ev);
        n++;
        last = h.rev;
        if (x < 0) {
            rc = x;
            break;
        }
        stop = x > 0;
    }
    if (cur)
        mdb_cursor_close(cur);
    if (rc == 0 && lrc != 0 && lrc != MDB_NOTFOUND) {
        c.sys = lrc;
        rc = read_fail(&c, err);
    }
out:
    if (next_rev)
        *next_rev = next;
    read_end(&c);
    return rc;
}

/* ---- the background removal of compacted history ---- */

/* "phys" in meta: removal done below `done`; a pass towards `target` examined every entry
 * before (rev, sub). */
struct phys {
    int64_t done, target, rev;
    uint64_t sub;
};

static int phys_read(MDB_txn *txn, MDB_dbi meta, struct phys *p)
{
    MDB_val k = {4, "phys"}, v;
    *p = (struct phys){0};
    int rc = mdb_get(txn, meta, &k, &v);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc)
        return rc;
    if (v.mv_size != 32)
        return MDB_CORRUPTED;
    const uint8_t *b = v.mv_data;
    *p = (struct phys){(int64_t)kv_le_get64(b), (int64_t)kv_le_get64(b + 8),
                       (int64_t)kv_le_get64(b + 16), kv_le_get64(b + 24)};
    return 0;
}

static int phys_write(MDB_txn *txn, MDB_dbi meta, const struct phys *p)
{
    uint8_t b[32];
    kv_le_put64(b, (uint64_t)p->done);
    kv_le_put64(b + 8, (uint64_t)p->target);
    kv_le_put64(b + 16, (uint64_t)p->rev);
    kv_le_put64(b + 24, p->sub);
    MDB_val k = {4, "phys"}, v = {sizeof b, b};
    return mdb_put(txn, meta, &k, &v, 0);
}

static bool step(struct kv_store *s, const char *op, uint64_t n);

/* An entry to remove: its "hist" key and its key. */
struct doomed {
    uint8_t hk[KV_HIST_KEY];
    int64_t rev;
    uint64_t sub;
    size_t klen;
    uint8_t key[KV_MAX_KEY];
};

/* Whether the history entry h (below the compacted revision c) goes: a delete always (nothing
 * at or after c reads it: the key is absent at c unless written again later), a put when the
 * key was written again at or before c (what c reads is that later write). The caller holds
 * idx_lock shared. */
static bool doomed_entry(const struct kv_index *x, const struct hist_ent *h, int64_t c)
{
    if (h->type == KV_EVENT_DELETE)
        return true;
    const struct kv_index_node *n = kv_index_find(x, h->key, h->klen);
    const struct kv_index_ent *e = n ? kv_index_at(n, c) : NULL;
    return e && (e->rev != h->rev || e->sub != h->sub);
}

/* One write transaction of the removal: examines up to COMPACT_BATCH entries below the
 * compacted revision from where the last one stopped. 1 = more to do, 0 = nothing left (with
 * *done = the revision below which all is removed), or an LMDB code. */
static int compact_batch(struct kv_store *s, struct doomed *dm, int64_t *done)
{
    MDB_txn *txn;
    MDB_cursor *cur = NULL;
    struct kv_snap_meta st;
    struct phys ph;
    int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc)
        return rc;
    if ((rc = state_read(txn, s->meta, &st)) || (rc = phys_read(txn, s->meta, &ph)))
        goto fail;
    *done = ph.done;
    if (ph.done >= st.compact) {
        mdb_txn_abort(txn);
        return 0;
    }
    if (ph.target != st.compact) /* a new compaction: a new pass from the oldest entry */
        ph = (struct phys){ph.done, st.compact, 0, 0};
    if ((rc = mdb_cursor_open(txn, s->hist, &cur)))
        goto fail;
    uint8_t pos[KV_HIST_KEY];
    kv_be64_put(pos, (uint64_t)ph.rev);
    kv_be64_put(pos + 8, ph.sub);
    MDB_val k = {KV_HIST_KEY, pos}, v;
    size_t n = 0, seen = 0;
    bool finished = true;
    pthread_rwlock_rdlock(&s->idx_lock);
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        struct hist_ent h;
        if (hist_decode(&k, &v, &h)) {
            rc = MDB_CORRUPTED;
            break;
        }
        if (h.rev >= ph.target)
            break;
        if (seen == COMPACT_BATCH) {
            finished = false;
            ph.rev = h.rev;
            ph.sub = h.sub;
            break;
        }
        seen++;
        if (doomed_entry(s->idx, &h, ph.target)) {
            memcpy(dm[n].hk, k.mv_data, KV_HIST_KEY);
            dm[n].rev = h.rev;
            dm[n].sub = h.sub;
            dm[n].klen = h.klen;
            memcpy(dm[n].key, h.key, h.klen);
            n++;
        }
    }
    pthread_rwlock_unlock(&s->idx_lock);
    mdb_cursor_close(cur);
    cur = NULL;
    if (rc != 0 && rc != MDB_NOTFOUND)
        goto fail;
    for (size_t i = 0; i < n; i++) {
        MDB_val hk = {KV_HIST_KEY, dm[i].hk};
        if ((rc = mdb_del(txn, s->hist, &hk, NULL)))
            goto fail;
    }
    if (finished)
        ph = (struct phys){ph.target, ph.target, 0, 0};
    /* Reads below the target are refused from here on (the compaction was applied: only reads
     * in transactions older than it could still ask), so that the index may lose these
     * entries before or after the commit without a reader noticing. */
    pthread_rwlock_wrlock(&s->idx_lock);
    if (s->idx_floor < ph.target)
        s->idx_floor = ph.target;
    pthread_rwlock_unlock(&s->idx_lock);
    if ((rc = phys_write(txn, s->meta, &ph)) || (rc = mdb_txn_commit(txn)))
        return rc;
    step(s, "compact-committed", n); /* tests: "hist" has lost them, the index not yet */
    pthread_rwlock_wrlock(&s->idx_lock);
    for (size_t i = 0; i < n; i++)
        kv_index_remove(s->idx, dm[i].key, dm[i].klen, dm[i].rev, dm[i].sub);
    pthread_rwlock_unlock(&s->idx_lock);
    atomic_fetch_add(&s->commits, 1); /* for the syncer */
    /* The quota check reads the size in use: the pages freed here count at once, not only
     * after the next applied batch (a store refusing writes may get none). */
    MDB_txn *rt;
    if (mdb_txn_begin(s->env, NULL, MDB_RDONLY, &rt) == 0) {
        int64_t n = size_in_use(s, rt);
        mdb_txn_abort(rt);
        if (n >= 0)
            atomic_store(&s->in_use, n);
    }
    *done = ph.done;
    return finished ? 0 : 1;
fail:
    if (cur)
        mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    return rc;
}

static int sync_store(struct kv_store *s);

/* Waits on compact_cv (compact_mu held) for at most 100 ms. */
static void compact_nap(struct kv_store *s)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_nsec += 100 * 1000000L;
    ts.tv_sec += ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    pthread_cond_timedwait(&s->compact_cv, &s->compact_mu, &ts);
}

/* Between two batches of one removal: the applier gets the write lock for a while (etcd's
 * compaction sleeps as long between its batches, compactionSleepInterval). A close cuts it
 * short: true then (the removal resumes at the next open, from "phys"). */
static bool compact_pause(struct kv_store *s)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_nsec += COMPACT_PAUSE_MS * 1000000L;
    ts.tv_sec += ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    pthread_mutex_lock(&s->compact_mu);
    if (!s->compact_stop)
        pthread_cond_timedwait(&s->compact_cv, &s->compact_mu, &ts);
    bool stop = s->compact_stop;
    pthread_mutex_unlock(&s->compact_mu);
    return stop;
}

static void *compactor_main(void *arg)
{
    struct kv_store *s = arg;
    struct doomed *dm = malloc(COMPACT_BATCH * sizeof *dm);
    pthread_mutex_lock(&s->compact_mu);
    while (!s->compact_stop) {
        /* woken by a new compaction or close; the nap also retries a round skipped below */
        if (s->compact_synced >= s->compact_wanted || s->compact_err || !dm) {
            compact_nap(s);
            continue;
        }
        pthread_mutex_unlock(&s->compact_mu);
        int rc = 1;
        int64_t done = 0;
        bool skip = false;
        while (!skip && rc == 1) {
            pthread_mutex_lock(&s->compact_run_mu);
            pthread_rwlock_rdlock(&s->env_lock);
            /* After a restore the store says "clean": marked dirty before our first commit. */
            skip = !s->env || atomic_load(&s->sync_err) || mark_dirty(s) != 0;
            if (!skip)
                rc = compact_batch(s, dm, &done);
            pthread_rwlock_unlock(&s->env_lock);
            pthread_mutex_unlock(&s->compact_run_mu);
            if (rc == 1 && compact_pause(s))
                skip = true; /* closing */
        }
        if (!skip && rc == 0)
            rc = sync_store(s); /* physical: the removal durable before it counts */
        pthread_mutex_lock(&s->compact_mu);
        if (skip) {
            if (!s->compact_stop)
                compact_nap(s);
            continue;
        }
        if (rc != 0)
            s->compact_err = rc;
        else if (done > s->compact_synced)
            s->compact_synced = done;
        pthread_cond_broadcast(&s->compact_done_cv);
    }
    pthread_mutex_unlock(&s->compact_mu);
    free(dm);
    return NULL;
}

int kv_store_compact_wait(struct kv_store *s, int64_t rev, unsigned timeout_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    ts.tv_sec += ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    int rc = 0;
    pthread_mutex_lock(&s->compact_mu);
    while (s->compact_synced < rev && !s->compact_err && rc == 0)
        if (pthread_cond_timedwait(&s->compact_done_cv, &s->compact_mu, &ts) == ETIMEDOUT)
            rc = -ETIMEDOUT;
    if (s->compact_synced >= rev)
        rc = 0;
    else if (s->compact_err)
        rc = -EIO;
    pthread_mutex_unlock(&s->compact_mu);
    return rc;
}

/* After open: the removal thread, told of the store's compacted revision. NULL or why not. */
static const char *start_compactor(struct kv_store *s)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->compact_cv, &ca);
    pthread_cond_init(&s->compact_done_cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&s->compact_mu, NULL);
    pthread_mutex_init(&s->compact_run_mu, NULL);
    s->compact_init = true;
    s->compact_wanted = s->compact_told = s->compact;
    /* what an earlier run removed (synced then, or kept by the page cache: a store a machine
     * crash may have torn is discarded at open) */
    MDB_txn *txn;
    struct phys ph = {0};
    if (mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn) == 0) {
        phys_read(txn, s->meta, &ph);
        mdb_txn_abort(txn);
    }
    s->compact_synced = ph.done;
    if (pthread_create(&s->compactor, NULL, compactor_main, s) != 0)
        return "cannot start the compaction thread";
    pthread_setname_np(s->compactor, "kv-compact");
    s->compactor_started = true;
    return NULL;
}

static void stop_compactor(struct kv_store *s)
{
    if (!s->compact_init)
        return;
    if (s->compactor_started) {
        pthread_mutex_lock(&s->compact_mu);
        s->compact_stop = true;
        pthread_cond_signal(&s->compact_cv);
        pthread_mutex_unlock(&s->compact_mu);
        pthread_join(s->compactor, NULL);
        s->compactor_started = false;
    }
    pthread_cond_destroy(&s->compact_cv);
    pthread_cond_destroy(&s->compact_done_cv);
    pthread_mutex_destroy(&s->compact_mu);
    pthread_mutex_destroy(&s->compact_run_mu);
    s->compact_init = false;
}

/* ---- open / close ---- */

static void stop_syncer(struct kv_store *s)
{
    if (!s->syncer_started)
        return;
    pthread_mutex_lock(&s->sync_mu);
    s->stopping = true;
    pthread_cond_signal(&s->sync_cv);
    pthread_mutex_unlock(&s->sync_mu);
    pthread_join(s->syncer, NULL);
    s->syncer_started = false;
}

/* Closes the environment and the read transaction that belongs to it (nobody else using them:
 * env_lock held exclusively, or the store being freed). */
static void env_close(struct kv_store *s)
{
    kv_index_free(s->idx);
    s->idx = NULL;
    if (s->stat_txn)
        mdb_txn_abort(s->stat_txn); /* before the environment it belongs to */
    s->stat_txn = NULL;
    if (s->env)
        mdb_env_close(s->env);
    s->env = NULL;
}

/* Frees whatever open set up (the syncer already stopped). */
static void store_free(struct kv_store *s)
{
    env_close(s);
    if (s->env_lock_init) {
        pthread_rwlock_destroy(&s->env_lock);
        pthread_mutex_destroy(&s->mark_mu);
        pthread_mutex_destroy(&s->auth_mu);
    }
    kv_auth_unref(s->auth);
    kv_auth_unref(s->auth_work);
    if (s->lock_fd >= 0)
        close(s->lock_fd);
    if (s->sync_init) {
        pthread_mutex_destroy(&s->sync_mu);
        pthread_cond_destroy(&s->sync_cv);
    }
    if (s->idx_lock_init)
        pthread_rwlock_destroy(&s->idx_lock);
    free(s->undo);
    free(s->undo_keys);
    free(s->lch);
    free(s);
}

static struct kv_store *open_fail(struct kv_store *s, char *err, size_t errlen, const char *dir,
                                  const char *what, const char *why)
{
    if (err && errlen)
        snprintf(err, errlen, "kv store %s: %s: %s", dir, what, why);
    stop_compactor(s);
    stop_syncer(s);
    store_free(s);
    return NULL;
}

/* ---- durability (kv_store.h "Durability", kv_mark.c) ---- */

/* Before LMDB opens the files: a store left dirty by another boot of the machine may be torn
 * (its writes were never synced, and the kernel wrote them back in no particular order), so it
 * is removed and the node rebuilds it from the Raft log (applied index 0). Returns NULL, or why
 * the files could not be removed. Sets s->lazy, s->boot and s->note. */
static const char *distrust_after_machine_crash(struct kv_store *s, const struct kv_store_opts *o)
{
    char last[80] = "";
    s->lazy = !o->sync_every_batch;
    if (o->boot_id)
        snprintf(s->boot, sizeof s->boot, "%s", o->boot_id);
    else if (kv_boot_id(s->boot, sizeof s->boot) != 0)
        s->boot[0] = 0;
    if (!s->boot[0] && s->lazy) {
        /* Without a boot id the two kinds of crash look alike: sync every batch instead. */
        s->lazy = false;
        snprintf(s->note, sizeof s->note,
                 "no boot id in /proc: syncing every applied batch (slower writes)");
    }
    enum kv_mark m = kv_mark_read(s->dir, last, sizeof last);
    char path[4200];
    snprintf(path, sizeof path, "%s/data.mdb", s->dir);
    struct stat st;
    bool trust = stat(path, &st) != 0 || m == KV_MARK_NONE || m == KV_MARK_CLEAN ||
                 /* only the process died: the page cache kept every write, in order */
                 (m == KV_MARK_DIRTY && s->boot[0] && !strcmp(s->boot, last));
    /* (NONE with a data file: a store from before kv.state, which synced every batch.) */
    if (!trust) {
        if (unlink(path) != 0)
            return strerror(errno);
        snprintf(path, sizeof path, "%s/lock.mdb", s->dir);
        if (unlink(path) != 0 && errno != ENOENT)
            return strerror(errno);
        snprintf(s->note, sizeof s->note, "%s: store discarded, rebuilding it from the Raft log",
                 m == KV_MARK_BAD ? "kv.state is unreadable"
                                  : "the machine restarted while the store held unsynced writes");
    }
    /* Dirty, durably, before LMDB's first unsynced commit (open itself commits). */
    int rc = s->lazy ? kv_mark_write(s->dir, s->boot) : 0;
    return rc ? strerror(rc) : NULL;
}

/* One flush of everything committed so far. A failure is sticky: apply() refuses from then on
 * (the node fail-stops, the Raft log still has the entries) and close will not mark the store
 * clean, so a machine crash afterwards rebuilds it. */
static int sync_store(struct kv_store *s)
{
    int rc = atomic_load(&s->sync_err);
    if (rc)
        return rc;
    pthread_rwlock_rdlock(&s->env_lock);
    uint64_t t0 = metrics_now_ns();
    rc = s->fail_sync || !s->env ? EIO : mdb_env_sync(s->env, 1);
    if (rc == 0)
        metrics_histogram_observe(&s->commit_hist, metrics_now_ns() - t0);
    pthread_rwlock_unlock(&s->env_lock);
    if (rc)
        atomic_store(&s->sync_err, rc);
    return rc;
}

int kv_store_sync(struct kv_store *s)
{
    int rc = sync_store(s);
    return rc ? -rc : 0;
}

static void *syncer_main(void *arg)
{
    struct kv_store *s = arg;
    uint64_t synced = atomic_load(&s->commits);
    pthread_mutex_lock(&s->sync_mu);
    while (!s->stopping) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += (long)(s->sync_ms % 1000) * 1000000L;
        ts.tv_sec += s->sync_ms / 1000 + ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&s->sync_cv, &s->sync_mu, &ts);
        uint64_t commits = atomic_load(&s->commits);
        if (s->stopping || commits == synced || atomic_load(&s->sync_err))
            continue;
        pthread_mutex_unlock(&s->sync_mu);
        int rc = sync_store(s);
        pthread_mutex_lock(&s->sync_mu);
        if (rc == 0)
            synced = commits;
    }
    pthread_mutex_unlock(&s->sync_mu);
    return NULL;
}

/* After a successful open. Every batch: sync what an earlier lazy run may have left in the
 * page cache, then mark the store clean (every later commit syncs). Lazy: start the syncer.
 * NULL or why not. */
static const char *start_syncing(struct kv_store *s)
{
    if (!s->lazy) {
        int rc = mdb_env_sync(s->env, 1);
        if (rc)
            return mdb_strerror(rc);
        rc = kv_mark_write(s->dir, NULL);
        return rc ? strerror(rc) : NULL;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->sync_cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&s->sync_mu, NULL);
    s->sync_init = true;
    if (pthread_create(&s->syncer, NULL, syncer_main, s) != 0)
        return "cannot start the sync thread";
    pthread_setname_np(s->syncer, "kv-sync");
    s->syncer_started = true;
    return NULL;
}

/* ---- the LMDB environment: opened by open, and again by a restore ---- */

/* A new environment with the store's limits, not yet opened. 0 or an LMDB code. */
static int env_create(const struct kv_store *s, MDB_env **env)
{
    int rc = mdb_env_create(env);
    if (rc)
        return rc;
    if ((rc = mdb_env_set_mapsize(*env, (size_t)s->map_size)) ||
        (rc = mdb_env_set_maxreaders(*env, s->max_readers)) ||
        (rc = mdb_env_set_maxdbs(*env, 8))) {
        mdb_env_close(*env);
        *env = NULL;
    }
    return rc;
}

/* The store's databases in txn (created if missing). 0 or an LMDB code. */
struct dbis {
    MDB_dbi meta, kv, hist, lease, lkeys;
};

static int dbis_open(MDB_txn *txn, struct dbis *d)
{
    int rc;
    if ((rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &d->meta)) ||
        (rc = mdb_dbi_open(txn, "kv", MDB_CREATE, &d->kv)) ||
        (rc = mdb_dbi_open(txn, "hist", MDB_CREATE, &d->hist)) ||
        (rc = mdb_dbi_open(txn, "lease", MDB_CREATE, &d->lease)))
        return rc;
    return mdb_dbi_open(txn, "lkeys", MDB_CREATE, &d->lkeys);
}

/* A craft-kv-2 store's "keyrev" tree (each key's writes, now the in-memory index): emptied and
 * deleted. 0 or an LMDB code. */
static int keyrev_drop(MDB_txn *txn)
{
    MDB_dbi kr;
    int rc = mdb_dbi_open(txn, "keyrev", MDB_DUPSORT | MDB_DUPFIXED, &kr);
    if (rc == MDB_NOTFOUND)
        return 0;
    return rc ? rc : mdb_drop(txn, kr, 1);
}

/* The history of a store that has only its latest state (a store or a snapshot from before
 * history): each key's record becomes its one write, at its mod_revision. Writes of one
 * revision (a txn's) get subs in key order. 0 or an LMDB code. */
static int hist_from_kv(MDB_txn *txn, MDB_dbi kv, MDB_dbi hist)
{
    MDB_cursor *cur, *hc;
    MDB_val k, v;
    int rc = mdb_cursor_open(txn, kv, &cur);
    if (rc)
        return rc;
    if ((rc = mdb_cursor_open(txn, hist, &hc))) {
        mdb_cursor_close(cur);
        return rc;
    }
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        struct kv_rec r;
        if (rec_decode(&v, &r)) {
            rc = MDB_CORRUPTED;
            break;
        }
        /* the next sub at r.mod: one past the last write recorded at that revision */
        uint8_t hk[KV_HIST_KEY] = {0};
        kv_be64_put(hk, (uint64_t)r.mod + 1);
        MDB_val sk = {KV_HIST_KEY, hk}, sv;
        uint64_t sub = 0;
        int x = mdb_cursor_get(hc, &sk, &sv, MDB_SET_RANGE);
        x = x == 0 ? mdb_cursor_get(hc, &sk, &sv, MDB_PREV)
                   : x == MDB_NOTFOUND ? mdb_cursor_get(hc, &sk, &sv, MDB_LAST) : x;
        if (x == 0 && sk.mv_size == KV_HIST_KEY && (int64_t)kv_be64_get(sk.mv_data) == r.mod)
            sub = kv_be64_get((const uint8_t *)sk.mv_data + 8) + 1;
        else if (x != 0 && x != MDB_NOTFOUND) {
            rc = x;
            break;
        }
        uint8_t *d;
        if ((rc = hist_append(txn, hist, r.mod, sub, KV_EVENT_PUT, k.mv_data, k.mv_size,
                              v.mv_size, &d, 0)))
            break;
        memcpy(d, v.mv_data, v.mv_size);
    }
    mdb_cursor_close(hc);
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* Opens s->dir's environment into s->env: the databases and the format record (both created
 * in a new store), the state, the size in use. NULL, or why not with *what naming the step
 * (env_close then undoes what was done). */
static const char *env_load(struct kv_store *s, const char **what)
{
    int rc;
    *what = "configure";
    if ((rc = env_create(s, &s->env)))
        return mdb_strerror(rc);
    *what = "open data.mdb";
    if ((rc = mdb_env_open(s->env, s->dir, s->env_flags, 0600)))
        return rc == MDB_INVALID ? "data.mdb is not an LMDB file (corrupt?)" : mdb_strerror(rc);
    s->maxkey = (size_t)mdb_env_get_maxkeysize(s->env);
    if (s->maxkey > KV_MAX_KEY)
        s->maxkey = KV_MAX_KEY;
    MDB_txn *txn;
    *what = "begin";
    if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)))
        return mdb_strerror(rc);
    *what = "open databases";
    struct kv_snap_meta st = {0};
    struct dbis d;
    if ((rc = dbis_open(txn, &d)) == 0) {
        s->meta = d.meta, s->kv = d.kv, s->hist = d.hist, s->lease = d.lease, s->lkeys = d.lkeys;
        MDB_val k = {6, "format"}, v;
        *what = "format";
        rc = mdb_get(txn, s->meta, &k, &v);
        if (rc == MDB_NOTFOUND) {
            v = (MDB_val){strlen(KV_FORMAT), KV_FORMAT};
            if ((rc = mdb_put(txn, s->meta, &k, &v, 0)) == 0)
                rc = state_write(txn, s->meta, 0, 0, 0, 0);
        } else if (rc == 0 && v.mv_size == strlen(KV_FORMAT_V1) &&
                   memcmp(v.mv_data, KV_FORMAT_V1, v.mv_size) == 0) {
            /* A store from before history: each key's latest write becomes its history. */
            *what = "upgrade to history";
            if ((rc = hist_from_kv(txn, s->kv, s->hist)) == 0) {
                v = (MDB_val){strlen(KV_FORMAT), KV_FORMAT};
                rc = mdb_put(txn, s->meta, &k, &v, 0);
            }
        } else if (rc == 0 && v.mv_size == strlen(KV_FORMAT_V2) &&
                   memcmp(v.mv_data, KV_FORMAT_V2, v.mv_size) == 0) {
            /* A store with "keyrev": the index replaces it. */
            *what = "upgrade to the in-memory index";
            if ((rc = keyrev_drop(txn)) == 0) {
                v = (MDB_val){strlen(KV_FORMAT), KV_FORMAT};
                rc = mdb_put(txn, s->meta, &k, &v, 0);
            }
        } else if (rc == 0 && v.mv_size == strlen(KV_FORMAT_V3) &&
                   memcmp(v.mv_data, KV_FORMAT_V3, v.mv_size) == 0) {
            /* A store from before leases: dbis_open made their (empty) tables. */
            *what = "upgrade to leases";
            v = (MDB_val){strlen(KV_FORMAT), KV_FORMAT};
            rc = mdb_put(txn, s->meta, &k, &v, 0);
        } else if (rc == 0 && (v.mv_size != strlen(KV_FORMAT) ||
                               memcmp(v.mv_data, KV_FORMAT, v.mv_size) != 0)) {
            mdb_txn_abort(txn);
            return "not a craft KV store (format record differs)";
        }
        if (rc == 0) {
            *what = "state record";
            rc = state_read(txn, s->meta, &st);
        }
        if (rc == 0) {
            *what = "auth state";
            MDB_val ak = {strlen(META_AUTH), META_AUTH}, av = {0, NULL};
            rc = mdb_get(txn, s->meta, &ak, &av);
            if (rc == MDB_NOTFOUND)
                rc = 0, av.mv_size = 0;
            struct kv_err aerr;
            struct kv_auth *a = rc ? NULL : kv_auth_decode(av.mv_data, av.mv_size, &aerr);
            if (!rc && !a) {
                mdb_txn_abort(txn);
                return aerr.code == KV_CODE_INTERNAL ? "out of memory" : "corrupt auth state";
            }
            if (a) {
                pthread_mutex_lock(&s->auth_mu);
                struct kv_auth *old = s->auth;
                s->auth = a;
                atomic_store_explicit(&s->auth_on, kv_auth_enabled(a), memory_order_release);
                pthread_mutex_unlock(&s->auth_mu);
                kv_auth_unref(old);
            }
        }
        if (rc == 0) {
            *what = "index the history";
            struct kv_index *x;
            if ((rc = idx_build(txn, s->hist, &x)) == 0) {
                kv_index_free(s->idx);
                s->idx = x;
                s->idx_floor = 0;
            }
        }
    }
    if (rc == 0)
        rc = mdb_txn_commit(txn);
    else
        mdb_txn_abort(txn);
    if (rc)
        return rc == MDB_INCOMPATIBLE ? "not a craft KV store" : mdb_strerror(rc);
    atomic_store(&s->applied, st.index);
    s->rev = st.rev;
    s->compact = st.compact;
    /* The size in use of the store as found: nothing has been applied to it yet. */
    *what = "begin";
    if ((rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &s->stat_txn)))
        return mdb_strerror(rc);
    mdb_txn_reset(s->stat_txn); /* publish_in_use renews it */
    publish_in_use(s);
    return NULL;
}

#define RESTORE_DIR "kv.restore"
/* A restore commits the new store every so many bytes: LMDB holds a write transaction's dirty
 * pages in memory. */
#define RESTORE_TXN_BYTES (64u << 20)

/* A restore that did not finish leaves kv.restore behind: a new store, half built or whole,
 * that never took the place of data.mdb (the rename is the switch), so the store in dir is the
 * old one and the leftover goes. NULL, or why it cannot. */
static const char *remove_restore_leftover(const char *dir)
{
    char path[4200];
    const char *files[] = {"data.mdb", "lock.mdb"};
    for (size_t i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/" RESTORE_DIR "/%s", dir, files[i]);
        if (unlink(path) != 0 && errno != ENOENT && errno != ENOTDIR)
            return strerror(errno);
    }
    snprintf(path, sizeof path, "%s/" RESTORE_DIR, dir);
    if (rmdir(path) != 0 && errno != ENOENT)
        return errno == ENOTEMPTY ? RESTORE_DIR " holds files craft did not put there"
                                  : strerror(errno);
    return NULL;
}

static int fsm_snapshot_write(void *ctx, struct raft_snapshot_writer *w, uint64_t *index,
                              uint64_t *term);
static int fsm_snapshot_restore(void *ctx, struct raft_snapshot_reader *r, uint64_t index,
                                uint64_t term);

struct kv_store *kv_store_open(const char *dir, const struct kv_store_opts *opts, char *err,
                               size_t errlen)
{
    struct kv_store_opts o = opts ? *opts : (struct kv_store_opts){0};
    struct kv_store *s = calloc(1, sizeof *s);
    if (!s) {
        if (err && errlen)
            snprintf(err, errlen, "kv store: out of memory");
        return NULL;
    }
    s->lock_fd = -1;
    /* Writers first: a restore waiting to swap the environment is not starved by reads. */
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&s->env_lock, &ra);
    pthread_rwlock_init(&s->idx_lock, &ra);
    metrics_histogram_init(&s->commit_hist, metrics_buckets_etcd_disk, 14, 1e9);
    pthread_mutex_init(&s->mark_mu, NULL);
    pthread_mutex_init(&s->auth_mu, NULL);
    pthread_rwlockattr_destroy(&ra);
    s->env_lock_init = s->idx_lock_init = true;
    if (!dir || !*dir)
        return open_fail(s, err, errlen, "", "open", "no directory given");
    s->map_size = o.map_size ? o.map_size : KV_DEFAULT_MAP_SIZE;
    s->sync_ms = o.sync_interval_ms ? o.sync_interval_ms : KV_DEFAULT_SYNC_MS;
    if (s->sync_ms > KV_MAX_SYNC_MS)
        return open_fail(s, err, errlen, dir, "sync interval", "must be at most 60000 ms");
    if (s->map_size < (64u << 10) || s->map_size > ((uint64_t)1 << 44))
        return open_fail(s, err, errlen, dir, "map size", "must be between 64 KiB and 16 TiB");
    s->max_readers = o.max_readers ? o.max_readers : 512;
    struct stat st;
    if (stat(dir, &st))
        return open_fail(s, err, errlen, dir, "stat", strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return open_fail(s, err, errlen, dir, "open", "not a directory");
    /* LMDB lets several processes share an environment; two state machines writing one store
     * would corrupt it, so an exclusive flock keeps every other opener out (a second open in
     * this process too: flock locks belong to the open file description). */
    char path[4096];
    snprintf(path, sizeof path, "%s/kv.lock", dir);
    s->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (s->lock_fd < 0)
        return open_fail(s, err, errlen, dir, "kv.lock", strerror(errno));
    if (flock(s->lock_fd, LOCK_EX | LOCK_NB))
        return open_fail(s, err, errlen, dir, "kv.lock",
                         errno == EWOULDBLOCK ? "locked: the store is open elsewhere"
                                              : strerror(errno));
    snprintf(s->dir, sizeof s->dir, "%s", dir);
    const char *why = remove_restore_leftover(dir);
    if (why)
        return open_fail(s, err, errlen, dir, "remove an unfinished restore", why);
    if ((why = distrust_after_machine_crash(s, &o)))
        return open_fail(s, err, errlen, dir, "discard unsynced store", why);
    /* MDB_NOTLS: read transactions are not tied to threads (gRPC handlers hop threads).
     * Lazy (the default): MDB_NOSYNC, commits only reach the page cache and the syncer thread
     * flushes them; the reply to a write then waits for one fdatasync (the Raft log's), not two.
     * Every batch: MDB_NOMETASYNC, one fdatasync per batch (data; the meta page rides on the
     * next). Either way the applied index is stored in the batch's own transaction, so whatever
     * the store lost is replayed from the Raft log, which made it durable first. */
    s->env_flags = MDB_NOTLS | (s->lazy ? MDB_NOSYNC : MDB_NOMETASYNC);
    const char *what;
    if ((why = env_load(s, &what)))
        return open_fail(s, err, errlen, dir, what, why);
    s->fail_at = o.fail_at_index;
    s->fail_sync = o.fail_sync;
    s->step_hook = o.step_hook;
    s->step_arg = o.step_arg;
    s->restore_txn_bytes = o.restore_txn_bytes ? o.restore_txn_bytes : RESTORE_TXN_BYTES;
    s->fsm = (struct raft_fsm){s, fsm_apply, fsm_applied_index, fsm_snapshot_write,
                               fsm_snapshot_restore};
    if ((why = start_syncing(s)))
        return open_fail(s, err, errlen, dir, "start syncing", why);
    if ((why = start_compactor(s)))
        return open_fail(s, err, errlen, dir, "start compacting", why);
    return s;
}

void kv_store_close(struct kv_store *s)
{
    if (!s)
        return;
    stop_compactor(s);
    stop_syncer(s);
    /* A clean close: everything on disk, so the next open trusts the store whatever happens to
     * the machine in between. */
    if (s->lazy && sync_store(s) == 0)
        kv_mark_write(s->dir, NULL);
    store_free(s);
}

const char *kv_store_open_note(const struct kv_store *s) { return s->note; }

struct raft_fsm *kv_store_fsm(struct kv_store *s) { return &s->fsm; }

/* ---- snapshots (the payload: kv_snap.h; the design and crash analysis: docs/kv.md) ---- */

/* true when the test hook asks to stop before op. */
static bool step(struct kv_store *s, const char *op, uint64_t n)
{
    return s->step_hook && s->step_hook(s->step_arg, op, n) != 0;
}

static int fsm_snapshot_write(void *ctx, struct raft_snapshot_writer *w, uint64_t *index,
                              uint64_t *term)
{
    struct kv_store *s = ctx;
    struct kv_snap_enc *e = kv_snap_enc_new(w->write, w->arg);
    if (!e)
        return kv_snap_fail(w->err, w->errlen, -ENOMEM, "write: out of memory");
    pthread_rwlock_rdlock(&s->env_lock);
    /* One read transaction: the header (index, term, revisions) and every record are one
     * committed state, while apply goes on committing (an LMDB reader never blocks the writer).
     * The price: LMDB cannot reuse the pages of that state until the transaction ends, so the
     * data file grows instead while a snapshot is written. */
    MDB_txn *txn = NULL;
    MDB_cursor *cur = NULL;
    struct kv_snap_meta st;
    int rc, lrc = s->env ? mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn) : EIO;
    if (lrc == 0 && (lrc = state_read(txn, s->meta, &st)) == 0)
        lrc = mdb_cursor_open(txn, s->hist, &cur);
    if (lrc) {
        rc = kv_snap_fail(w->err, w->errlen, -EIO, "write: reading the store: %s",
                          mdb_strerror(lrc));
        goto out;
    }
    /* Version 4: the history, in the order of the writes (the latest state follows from it),
     * then the leases, then the auth state. A store that never had an auth command writes
     * version 3 (the same records, no auth record), which members of older builds still read:
     * a rolling upgrade can send them snapshots until auth is first used. */
    MDB_val ak = {strlen(META_AUTH), META_AUTH}, av = {0, NULL};
    lrc = mdb_get(txn, s->meta, &ak, &av);
    if (lrc && lrc != MDB_NOTFOUND) {
        rc = kv_snap_fail(w->err, w->errlen, -EIO, "write: reading the store: %s",
                          mdb_strerror(lrc));
        goto out;
    }
    bool has_auth = lrc == 0 && av.mv_size > 0;
    st.version = has_auth ? 4 : 3;
    rc = kv_snap_enc_header(e, &st);
    uint64_t n = 0;
    MDB_val k, v;
    lrc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    for (; rc == 0 && lrc == 0; lrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        struct hist_ent h;
        if (hist_decode(&k, &v, &h)) {
            lrc = MDB_CORRUPTED;
            break;
        }
        uint8_t tomb[REC_HDR] = {0};
        if (h.type == KV_EVENT_DELETE) /* create 0, mod = its revision, version 0, lease 0 */
            kv_le_put64(tomb + 8, (uint64_t)h.rev);
        rc = h.type == KV_EVENT_DELETE
                 ? kv_snap_enc_record(e, h.key, h.klen, tomb, REC_HDR)
                 : kv_snap_enc_record(e, h.key, h.klen, h.rec.mv_data, h.rec.mv_size);
        if (rc == 0 && step(s, "snapshot-record", ++n)) {
            rc = kv_snap_fail(w->err, w->errlen, -EIO, "write: stopped by the test hook");
            goto out;
        }
    }
    if (rc == 0 && lrc == MDB_NOTFOUND) {
        /* Version 3: then the leases, in the table's order. */
        mdb_cursor_close(cur);
        cur = NULL;
        lrc = mdb_cursor_open(txn, s->lease, &cur);
        for (lrc = lrc ? lrc : mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0 && lrc == 0;
             lrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
            if (k.mv_size != 8 || v.mv_size != LEASE_VAL) {
                lrc = MDB_CORRUPTED;
                break;
            }
            rc = kv_snap_enc_lease(e, (int64_t)kv_be64_get(k.mv_data),
                                   (int64_t)kv_le_get64(v.mv_data),
                                   (int64_t)kv_le_get64((const uint8_t *)v.mv_data + 8));
        }
    }
    if (rc == 0 && lrc == MDB_NOTFOUND && has_auth)
        rc = kv_snap_enc_auth(e, av.mv_data, av.mv_size); /* av: same read transaction */
    if (rc == 0 && lrc != MDB_NOTFOUND) {
        rc = kv_snap_fail(w->err, w->errlen, -EIO, "write: reading the store: %s",
                          mdb_strerror(lrc));
        goto out;
    }
    if (rc == 0)
        rc = kv_snap_enc_finish(e, NULL);
    if (rc) {
        kv_snap_fail(w->err, w->errlen, rc, "write: %s", strerror(-rc));
        goto out;
    }
    *index = st.index;
    *term = st.term;
out:
    if (cur)
        mdb_cursor_close(cur);
    if (txn)
        mdb_txn_abort(txn);
    pthread_rwlock_unlock(&s->env_lock);
    kv_snap_enc_free(e);
    return rc;
}

/* Commits a restore's write transaction and begins the next (LMDB holds a transaction's dirty
 * pages in memory). 0, or an LMDB code (*txn is then NULL), or MDB_PANIC with *hooked when
 * the test hook stops it. */
static int restore_commit(struct kv_store *s, MDB_env *env, MDB_txn **txn, uint64_t *n,
                          bool *hooked)
{
    if (step(s, "build-commit", (*n)++)) {
        *hooked = true;
        return MDB_PANIC;
    }
    int rc = mdb_txn_commit(*txn);
    *txn = NULL;
    return rc ? rc : mdb_txn_begin(env, NULL, 0, txn);
}

static int node_key_cmp(const void *a, const void *b)
{
    size_t al, bl;
    const uint8_t *ak = kv_index_key(*(const struct kv_index_node *const *)a, &al);
    const uint8_t *bk = kv_index_key(*(const struct kv_index_node *const *)b, &bl);
    return kv_bytes_cmp(ak, al, bk, bl);
}

/* The latest state of a restored history: for each key in order (an index of the history,
 * sorted once), its last write if a put goes at the end of "kv", and into "lkeys" when it has
 * a lease. Commits every restore_txn_bytes. 0, an LMDB code (restore_commit's), or EBADMSG:
 * a live key's lease is not in the snapshot. */
static int kv_from_hist(struct kv_store *s, MDB_env *env, MDB_txn **txn, const struct dbis *d,
                        uint64_t *n, bool *hooked)
{
    struct kv_index *x;
    int rc = idx_build(*txn, d->hist, &x);
    if (rc)
        return rc;
    size_t cnt = kv_index_keys(x), pending = 0;
    const struct kv_index_node **nodes = malloc((cnt ? cnt : 1) * sizeof *nodes);
    if (!nodes) {
        kv_index_free(x);
        return ENOMEM;
    }
    kv_index_nodes(x, nodes);
    qsort(nodes, cnt, sizeof *nodes, node_key_cmp);
    for (size_t i = 0; i < cnt && rc == 0; i++) {
        const struct kv_index_ent *e = kv_index_at(nodes[i], INT64_MAX);
        if (e->type != KV_EVENT_PUT)
            continue;
        MDB_val k, hv;
        k.mv_data = (void *)kv_index_key(nodes[i], &k.mv_size);
        uint8_t hk[KV_HIST_KEY];
        kv_hist_key(hk, e->rev, e->sub);
        MDB_val hkv = {KV_HIST_KEY, hk};
        struct hist_ent h;
        if ((rc = mdb_get(*txn, d->hist, &hkv, &hv)))
            break;
        if (hist_decode(&hkv, &hv, &h) || h.type != KV_EVENT_PUT) {
            rc = MDB_CORRUPTED;
            break;
        }
        if ((rc = mdb_put(*txn, d->kv, &k, &h.rec, MDB_APPEND)))
            break;
        /* A live key's lease must be among the snapshot's leases (they came first). */
        struct kv_rec r;
        if (rec_decode(&h.rec, &r)) {
            rc = MDB_CORRUPTED;
            break;
        }
        if (r.lease != 0) {
            struct kv_lease l;
            bool found;
            if ((rc = lease_read(*txn, d->lease, r.lease, &l, &found)))
                break;
            if (!found || k.mv_size > KV_MAX_LEASE_KEY) {
                rc = EBADMSG;
                break;
            }
            if ((rc = lease_link(*txn, d->lkeys, r.lease, k.mv_data, k.mv_size, true)))
                break;
        }
        pending += k.mv_size + h.rec.mv_size;
        if (pending >= s->restore_txn_bytes) {
            rc = restore_commit(s, env, txn, n, hooked);
            pending = 0;
        }
    }
    free(nodes);
    kv_index_free(x);
    return rc;
}

/* Builds the restored store in dir/kv.restore from the payload and syncs it (steps counted in
 * *n). 0, or a negative errno with the reason in r->err; the caller removes what was built. */
static int restore_build(struct kv_store *s, struct raft_snapshot_reader *r, uint64_t index,
                         uint64_t term, uint64_t *n)
{
    char *err = r->err, tmp[4200];
    size_t errlen = r->errlen;
    snprintf(tmp, sizeof tmp, "%s/" RESTORE_DIR, s->dir);
    if (step(s, "build", (*n)++))
        return kv_snap_fail(err, errlen, -EIO, "restore: stopped by the test hook at build");
    const char *why = remove_restore_leftover(s->dir); /* an earlier failed attempt's */
    if (why)
        return kv_snap_fail(err, errlen, -EIO, "restore: %s: %s", tmp, why);
    if (mkdir(tmp, 0700))
        return kv_snap_fail(err, errlen, -errno, "restore: %s: %s", tmp, strerror(errno));
    struct kv_snap_dec *d = kv_snap_dec_new(r->read, r->arg);
    MDB_env *env = NULL;
    MDB_txn *txn = NULL;
    struct dbis db;
    struct kv_snap_meta m;
    int rc, lrc;
    if (!d) {
        rc = kv_snap_fail(err, errlen, -ENOMEM, "restore: out of memory");
        goto out;
    }
    if ((rc = kv_snap_dec_header(d, &m, err, errlen)))
        goto out;
    if (m.index != index || (m.term && m.term != term)) {
        rc = kv_snap_fail(err, errlen, -EBADMSG,
                          "restore: the payload is the state at index %llu (term %llu), not at "
                          "index %llu (term %llu)", (unsigned long long)m.index,
                          (unsigned long long)m.term, (unsigned long long)index,
                          (unsigned long long)term);
        goto out;
    }
    /* Written without syncs, then synced once, whole, before it can take the old one's place. */
    MDB_val fk = {6, "format"}, fv = {strlen(KV_FORMAT), KV_FORMAT};
    bool hooked = false; /* set before the first goto lmdb, which reads it */
    if ((lrc = env_create(s, &env)) ||
        (lrc = mdb_env_open(env, tmp, MDB_NOTLS | MDB_NOSYNC, 0600)) ||
        (lrc = mdb_txn_begin(env, NULL, 0, &txn)) ||
        (lrc = dbis_open(txn, &db)) ||
        (lrc = mdb_put(txn, db.meta, &fk, &fv, 0)))
        goto lmdb;
    size_t pending = 0;
    struct kv_snap_rec rec;
    int64_t last_mod = 0;
    uint64_t sub = 0;
    while ((rc = kv_snap_dec_next(d, &rec, err, errlen)) == 1) {
        if (rec.is_auth) {
            struct kv_err aerr;
            struct kv_auth *a = kv_auth_decode(rec.rec, rec.rlen, &aerr);
            if (!a) {
                rc = kv_snap_fail(err, errlen, aerr.code == KV_CODE_INTERNAL ? -ENOMEM : -EBADMSG,
                                  "restore: %s", aerr.msg);
                goto out;
            }
            kv_auth_unref(a);
            MDB_val ak = {strlen(META_AUTH), META_AUTH}, av = {rec.rlen, (void *)rec.rec};
            if ((lrc = mdb_put(txn, db.meta, &ak, &av, 0)))
                goto lmdb;
        } else if (rec.is_lease) {
            struct kv_lease l = {rec.lease_id, rec.lease_ttl, rec.lease_remaining};
            if ((lrc = lease_write(txn, db.lease, &l)))
                goto lmdb;
        } else if (m.version == 1) {
            /* The latest state alone: the decoder checked the keys come in LMDB's order, so
             * each one goes at the end; the history is made from it below. */
            MDB_val k = {rec.klen, (void *)rec.key}, v = {rec.rlen, (void *)rec.rec};
            if ((lrc = mdb_put(txn, db.kv, &k, &v, MDB_APPEND)))
                goto lmdb;
        } else {
            /* The history, in order: each write goes at the end of "hist" (and of its key's
             * writes); the latest state is made from it below. */
            int64_t mod = (int64_t)kv_le_get64(rec.rec + 8);
            bool tomb = kv_le_get64(rec.rec + 16) == 0;
            sub = mod == last_mod ? sub + 1 : 0;
            last_mod = mod;
            uint8_t *dst;
            if ((lrc = hist_append(txn, db.hist, mod, sub, tomb ? KV_EVENT_DELETE : KV_EVENT_PUT,
                                   rec.key, rec.klen, tomb ? 0 : rec.rlen, &dst, MDB_APPEND)))
                goto lmdb;
            if (!tomb)
                memcpy(dst, rec.rec, rec.rlen);
        }
        pending += rec.klen + rec.rlen;
        if (pending >= s->restore_txn_bytes) {
            if ((lrc = restore_commit(s, env, &txn, n, &hooked)))
                goto lmdb;
            pending = 0;
        }
    }
    if (rc < 0)
        goto out; /* the decoder's reason is in err */
    lrc = m.version == 1 ? hist_from_kv(txn, db.kv, db.hist)
                         : kv_from_hist(s, env, &txn, &db, n, &hooked);
    if (lrc == EBADMSG) {
        rc = kv_snap_fail(err, errlen, -EBADMSG,
                          "restore: a key is attached to a lease the payload does not hold");
        goto out;
    }
    if (lrc || (lrc = state_write(txn, db.meta, index, term, m.rev, m.compact)))
        goto lmdb;
    lrc = mdb_txn_commit(txn);
    txn = NULL;
    if (lrc)
        goto lmdb;
    if (step(s, "sync-new", (*n)++)) {
        rc = kv_snap_fail(err, errlen, -EIO, "restore: stopped by the test hook at sync-new");
        goto out;
    }
    if ((lrc = mdb_env_sync(env, 1)))
        goto lmdb;
    rc = 0;
    goto out;
lmdb:
    if (hooked)
        rc = kv_snap_fail(err, errlen, -EIO, "restore: stopped by the test hook");
    else if (lrc == MDB_MAP_FULL)
        rc = kv_snap_fail(err, errlen, -ENOSPC, "restore: the state does not fit in the map size "
                          "(%llu bytes)", (unsigned long long)s->map_size);
    else
        rc = kv_snap_fail(err, errlen, -EIO, "restore: building %s: %s", tmp, mdb_strerror(lrc));
out:
    if (txn)
        mdb_txn_abort(txn);
    if (env)
        mdb_env_close(env);
    kv_snap_dec_free(d);
    return rc;
}

/* After the rename nothing can bring the old store back (its name is gone): a failure stops
 * this one (apply refuses, as after a failed sync) and the next start opens the new one. */
static int restore_broken(struct kv_store *s, char *err, size_t errlen, int rc, const char *what)
{
    atomic_store(&s->sync_err, EIO);
    return kv_snap_fail(err, errlen, rc, "restore: %s; the new store is in place on disk: restart "
                        "the member", what);
}

static int restore_locked(struct kv_store *s, struct raft_snapshot_reader *r, uint64_t index,
                          uint64_t term);

static int fsm_snapshot_restore(void *ctx, struct raft_snapshot_reader *r, uint64_t index,
                                uint64_t term)
{
    struct kv_store *s = ctx;
    /* No removal of compacted history meanwhile: not in the store being replaced (marked clean
     * for the restore), nor in the new one before it is in place. */
    pthread_mutex_lock(&s->compact_run_mu);
    int rc = restore_locked(s, r, index, term);
    pthread_mutex_unlock(&s->compact_run_mu);
    if (rc == 0) {
        /* The new store's compaction: its removal may be unfinished (the compactor goes on);
         * what it removed is synced. */
        MDB_txn *txn;
        struct phys ph = {0};
        pthread_rwlock_rdlock(&s->env_lock);
        if (s->env && mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn) == 0) {
            phys_read(txn, s->meta, &ph);
            mdb_txn_abort(txn);
        }
        pthread_rwlock_unlock(&s->env_lock);
        pthread_mutex_lock(&s->compact_mu);
        s->compact_told = s->compact_wanted = s->compact;
        s->compact_synced = ph.done;
        pthread_cond_signal(&s->compact_cv);
        pthread_mutex_unlock(&s->compact_mu);
        if (s->lease_hook)
            s->lease_hook(s->lease_arg, KV_LEASE_RESET, 0, 0);
        if (s->commit_hook)
            s->commit_hook(s->commit_arg, s->rev);
    }
    return rc;
}

static int restore_locked(struct kv_store *s, struct raft_snapshot_reader *r, uint64_t index,
                          uint64_t term)
{
    char *err = r->err;
    size_t errlen = r->errlen;
    uint64_t n = 0;
    int rc;
    if (atomic_load(&s->sync_err) || !s->env)
        return kv_snap_fail(err, errlen, -EIO, "restore: the store stopped after a failed sync or "
                            "restore; restart the member");
    /* 1. The old store synced and marked clean. From here to the end both the old and the new
     * store are whole on disk, so a machine crash at any step keeps whichever one data.mdb
     * names instead of discarding it as possibly torn (kv.state). */
    if (step(s, "sync-old", n++))
        return kv_snap_fail(err, errlen, -EIO, "restore: stopped by the test hook at sync-old");
    if ((rc = sync_store(s)))
        return kv_snap_fail(err, errlen, -EIO, "restore: syncing the current store: %s",
                            mdb_strerror(rc));
    if (s->lazy && (rc = kv_mark_write(s->dir, NULL)))
        return kv_snap_fail(err, errlen, -rc, "restore: marking the store clean: %s",
                            strerror(rc));
    /* 2. The new store beside the old one, synced; 3. the rename over data.mdb is the switch.
     * The old environment keeps its (now unlinked) file open, so reads go on meanwhile. */
    char from[4200], to[4200];
    snprintf(from, sizeof from, "%s/" RESTORE_DIR "/data.mdb", s->dir);
    snprintf(to, sizeof to, "%s/data.mdb", s->dir);
    rc = restore_build(s, r, index, term, &n);
    if (rc == 0 && step(s, "rename", n++))
        rc = kv_snap_fail(err, errlen, -EIO, "restore: stopped by the test hook at rename");
    else if (rc == 0 && rename(from, to))
        rc = kv_snap_fail(err, errlen, -errno, "restore: rename %s: %s", from, strerror(errno));
    if (rc) {
        /* The old store is untouched (the leftover, if this fails to remove it, goes at open);
         * its next unsynced commit marks it dirty again. */
        remove_restore_leftover(s->dir);
        atomic_store(&s->mark_pending, s->lazy);
        return rc;
    }
    if (step(s, "fsync-dir", n++))
        return restore_broken(s, err, errlen, -EIO, "stopped by the test hook at fsync-dir");
    if ((rc = kv_sync_dir(s->dir)))
        return restore_broken(s, err, errlen, -rc, "fsync of the directory failed");
    /* 4. The running store becomes the new one: readers wait for the swap, not longer. */
    if (step(s, "switch", n++))
        return restore_broken(s, err, errlen, -EIO, "stopped by the test hook at switch");
    pthread_rwlock_wrlock(&s->env_lock);
    env_close(s);
    const char *what, *why = env_load(s, &what);
    if (why)
        env_close(s);
    pthread_rwlock_unlock(&s->env_lock);
    if (why) {
        char m[200];
        snprintf(m, sizeof m, "opening the new store: %s: %s", what, why);
        return restore_broken(s, err, errlen, -EIO, m);
    }
    /* 5. Tidying: a failure only leaves kv.restore's lock file, which the next open removes.
     * kv.state stays clean (true: all is synced) until the next apply marks it dirty. */
    if (!step(s, "cleanup", n++))
        remove_restore_leftover(s->dir);
    atomic_store(&s->mark_pending, s->lazy);
    return 0;
}

const struct metrics_histogram *kv_store_commit_histogram(const struct kv_store *s)
{
    return &s->commit_hist;
}
