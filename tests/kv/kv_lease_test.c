/* kv_lease_test.c: the store's lease table (kv_store.h "Leases"): grant, attach by Put (alone
 * and in a Txn), detach by overwrite or delete, revoke deleting every attached key at one
 * revision, checkpoints, the hook after commit, a restart, a snapshot round trip that keeps the
 * attachments, a payload whose key names a missing lease refused, a craft-kv-3 store upgraded,
 * and the bytes in use exact with the lease tables. */
#include <criterion/criterion.h>
#include <errno.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "services/kvstore/kv_snap.h"
#include "tests/kv/kv_test_util.h"

#define FREE_RES(r) craft__kv__result__free_unpacked((r), NULL)

static Craft__Kv__Result *grant(struct kvt *t, int64_t id, int64_t ttl)
{
    Etcdserverpb__LeaseGrantRequest g = ETCDSERVERPB__LEASE_GRANT_REQUEST__INIT;
    g.id = id;
    g.ttl = ttl;
    uint8_t *cmd;
    size_t len;
    cr_assert_eq(kv_cmd_encode_lease_grant(&g, &cmd, &len), 0);
    Craft__Kv__Result *r = kvt_apply(t, cmd, len, NULL);
    free(cmd);
    return r;
}

static void grant_ok(struct kvt *t, int64_t id, int64_t ttl)
{
    Craft__Kv__Result *r = grant(t, id, ttl);
    cr_assert_eq(r->code, 0, "grant %lld: %s", (long long)id, r->message);
    cr_assert_eq(r->resp_case, CRAFT__KV__RESULT__RESP_LEASE_GRANT);
    cr_assert(r->lease_grant->id == id && r->lease_grant->ttl == ttl);
    FREE_RES(r);
}

static Craft__Kv__Result *revoke(struct kvt *t, int64_t id)
{
    uint8_t *cmd;
    size_t len;
    cr_assert_eq(kv_cmd_encode_lease_revoke(id, &cmd, &len), 0);
    Craft__Kv__Result *r = kvt_apply(t, cmd, len, NULL);
    free(cmd);
    return r;
}

static Craft__Kv__Result *checkpoint(struct kvt *t, const int64_t *ids, const int64_t *rem,
                                     size_t n)
{
    Etcdserverpb__LeaseCheckpoint cp[8], *cpp[8];
    Etcdserverpb__LeaseCheckpointRequest r = ETCDSERVERPB__LEASE_CHECKPOINT_REQUEST__INIT;
    for (size_t i = 0; i < n; i++) {
        etcdserverpb__lease_checkpoint__init(&cp[i]);
        cp[i].id = ids[i];
        cp[i].remaining_ttl = rem[i];
        cpp[i] = &cp[i];
    }
    r.n_checkpoints = n;
    r.checkpoints = cpp;
    uint8_t *cmd;
    size_t len;
    cr_assert_eq(kv_cmd_encode_lease_checkpoint(&r, &cmd, &len), 0);
    Craft__Kv__Result *res = kvt_apply(t, cmd, len, NULL);
    free(cmd);
    return res;
}

static void put_lease_ok(struct kvt *t, const char *key, int64_t lease)
{
    Craft__Kv__Result *r = kvt_put_opt(t, key, "v", 0, lease);
    cr_assert_eq(r->code, 0, "put %s lease %lld: %s", key, (long long)lease, r->message);
    FREE_RES(r);
}

struct keys {
    char buf[4096];
    size_t n;
};

static int add_key(void *arg, const uint8_t *key, size_t len)
{
    struct keys *k = arg;
    size_t o = strlen(k->buf);
    snprintf(k->buf + o, sizeof k->buf - o, "%s%.*s", k->n ? "," : "", (int)len,
             (const char *)key);
    k->n++;
    return 0;
}

/* "ttl/remaining:key,key" of lease id, or "none". */
static const char *lease_text(struct kvt *t, int64_t id)
{
    static char out[4200];
    struct keys k = {{0}, 0};
    struct kv_lease l;
    struct kv_err err;
    int rc = kv_store_lease_get(t->s, id, &l, add_key, &k, &err);
    cr_assert_geq(rc, 0, "%s", err.msg);
    if (rc == 0)
        return "none";
    cr_assert_eq(l.id, id);
    snprintf(out, sizeof out, "%lld/%lld:%s", (long long)l.ttl, (long long)l.remaining, k.buf);
    return out;
}

/* The lease of key as a Range reports it (-1: no such key). */
static int64_t key_lease(struct kvt *t, const char *key)
{
    Etcdserverpb__RangeRequest q;
    kvt_range_req(&q, key, NULL);
    Etcdserverpb__RangeResponse *r = kvt_range(t, &q);
    int64_t lease = r->n_kvs ? r->kvs[0]->lease : -1;
    etcdserverpb__range_response__free_unpacked(r, NULL);
    return lease;
}

Test(kv_lease, grant_checks_and_does_not_move_the_revision)
{
    struct kvt t;
    kvt_open(&t, NULL);
    kvt_put_ok(&t, "x", "1");
    grant_ok(&t, 7, 30);
    cr_assert_eq(kvt_rev(&t), 1, "a grant writes no key");
    cr_assert_str_eq(lease_text(&t, 7), "30/0:");
    Craft__Kv__Result *r = grant(&t, 7, 60);
    cr_assert_eq(r->code, KV_CODE_FAILED_PRECONDITION);
    cr_assert_str_eq(r->message, KV_ERR_LEASE_EXISTS);
    FREE_RES(r);
    cr_assert_str_eq(lease_text(&t, 7), "30/0:", "the failed grant changed nothing");
    r = grant(&t, 0, 30);
    cr_assert_eq(r->code, KV_CODE_NOT_FOUND);
    cr_assert_str_eq(r->message, KV_ERR_LEASE_NOT_FOUND);
    FREE_RES(r);
    r = grant(&t, 8, KV_MAX_LEASE_TTL + 1);
    cr_assert_eq(r->code, KV_CODE_OUT_OF_RANGE);
    cr_assert_str_eq(r->message, KV_ERR_LEASE_TTL_TOO_LARGE);
    FREE_RES(r);
    r = grant(&t, 8, 0);
    cr_assert_eq(r->code, KV_CODE_INVALID_ARGUMENT, "the proposer raises a TTL to the minimum");
    FREE_RES(r);
    grant_ok(&t, -5, KV_MAX_LEASE_TTL); /* etcd: any nonzero id, a negative one too */
    cr_assert_str_eq(lease_text(&t, 8), "none");
    kvt_close(&t);
}

Test(kv_lease, put_attaches_overwrite_and_delete_detach)
{
    struct kvt t;
    kvt_open(&t, NULL);
    Craft__Kv__Result *r = kvt_put_opt(&t, "a", "v", 0, 9);
    cr_assert_eq(r->code, KV_CODE_NOT_FOUND);
    cr_assert_str_eq(r->message, KV_ERR_LEASE_NOT_FOUND);
    FREE_RES(r);
    cr_assert_eq(kvt_rev(&t), 0, "a put on an unknown lease writes nothing");
    grant_ok(&t, 9, 30);
    grant_ok(&t, 10, 30);
    put_lease_ok(&t, "b", 9);
    put_lease_ok(&t, "a", 9);
    put_lease_ok(&t, "c", 10);
    cr_assert_str_eq(lease_text(&t, 9), "30/0:a,b");
    cr_assert_eq(key_lease(&t, "a"), 9);
    /* ignore_lease keeps it; another lease moves it; lease 0 detaches */
    r = kvt_put_opt(&t, "a", "w", PUT_IGNORE_LEASE, 0);
    cr_assert_eq(r->code, 0, "%s", r->message);
    FREE_RES(r);
    cr_assert_eq(key_lease(&t, "a"), 9);
    put_lease_ok(&t, "a", 10);
    cr_assert_str_eq(lease_text(&t, 9), "30/0:b");
    cr_assert_str_eq(lease_text(&t, 10), "30/0:a,c");
    kvt_put_ok(&t, "c", "plain");
    cr_assert_eq(key_lease(&t, "c"), 0);
    cr_assert_str_eq(lease_text(&t, 10), "30/0:a");
    r = kvt_del(&t, "a", NULL, false);
    cr_assert_eq(r->code, 0);
    FREE_RES(r);
    cr_assert_str_eq(lease_text(&t, 10), "30/0:");
    /* A key with a lease is at most 503 bytes (lkeys' composite key); without, 511. */
    char key[512];
    memset(key, 'k', sizeof key);
    key[504] = '\0';
    r = kvt_put_opt(&t, key, "v", 0, 9);
    cr_assert_eq(r->code, KV_CODE_INVALID_ARGUMENT);
    cr_assert_str_eq(r->message, KV_ERR_LEASE_KEY_TOO_LONG);
    FREE_RES(r);
    key[503] = '\0';
    put_lease_ok(&t, key, 9);
    cr_assert_eq(key_lease(&t, key), 9);
    kvt_close(&t);
}

Test(kv_lease, revoke_deletes_every_attached_key_at_one_revision)
{
    struct kvt t;
    kvt_open(&t, NULL);
    grant_ok(&t, 3, 30);
    put_lease_ok(&t, "k2", 3);
    put_lease_ok(&t, "k1", 3);
    kvt_put_ok(&t, "other", "x");
    put_lease_ok(&t, "k3", 3);
    int64_t before = kvt_rev(&t);
    Craft__Kv__Result *r = revoke(&t, 3);
    cr_assert_eq(r->code, 0, "%s", r->message);
    cr_assert_eq(r->resp_case, CRAFT__KV__RESULT__RESP_LEASE_REVOKE);
    cr_assert_eq(r->lease_revoke->header->revision, before + 1);
    FREE_RES(r);
    cr_assert_eq(kvt_rev(&t), before + 1, "one revision for all three deletes");
    cr_assert_eq(kvt_count(&t), 1, "only the key without a lease is left");
    cr_assert_str_eq(lease_text(&t, 3), "none");
    r = revoke(&t, 3);
    cr_assert_eq(r->code, KV_CODE_NOT_FOUND);
    cr_assert_str_eq(r->message, KV_ERR_LEASE_NOT_FOUND);
    FREE_RES(r);
    /* A lease without keys: revoked without a new revision. */
    grant_ok(&t, 4, 30);
    r = revoke(&t, 4);
    cr_assert_eq(r->code, 0);
    FREE_RES(r);
    cr_assert_eq(kvt_rev(&t), before + 1);
    kvt_close(&t);
}

struct evs {
    char buf[512];
    int64_t rev[8];
    size_t n;
};

static int ev_cb(void *arg, const struct kv_event *ev)
{
    struct evs *e = arg;
    size_t o = strlen(e->buf);
    snprintf(e->buf + o, sizeof e->buf - o, "%s%s %.*s@%lld.%lld", e->n ? "," : "",
             ev->type == KV_EVENT_PUT ? "put" : "del", (int)ev->kv.klen,
             (const char *)ev->kv.key, (long long)ev->rev, (long long)ev->sub);
    if (e->n < 8)
        e->rev[e->n] = ev->rev;
    e->n++;
    return 0;
}

Test(kv_lease, revoke_events_are_one_revision_in_key_order)
{
    struct kvt t;
    kvt_open(&t, NULL);
    grant_ok(&t, 3, 30);
    put_lease_ok(&t, "b", 3);
    put_lease_ok(&t, "a", 3);
    Craft__Kv__Result *r = revoke(&t, 3);
    FREE_RES(r);
    struct evs e = {{0}, {0}, 0};
    struct kv_err err;
    cr_assert_eq(kv_store_events(t.s, 3, 0, false, ev_cb, &e, NULL, NULL, NULL, &err), 0);
    cr_assert_str_eq(e.buf, "del a@3.0,del b@3.1");
    kvt_close(&t);
}

Test(kv_lease, txn_put_checks_its_lease_before_any_write)
{
    struct kvt t;
    kvt_open(&t, NULL);
    grant_ok(&t, 5, 30);
    Etcdserverpb__PutRequest p1 = ETCDSERVERPB__PUT_REQUEST__INIT, p2 = p1;
    p1.key = kvt_bin("x");
    p1.value = kvt_bin("1");
    p1.lease = 5;
    p2.key = kvt_bin("y");
    p2.value = kvt_bin("2");
    p2.lease = 6; /* unknown */
    Etcdserverpb__RequestOp o1 = ETCDSERVERPB__REQUEST_OP__INIT, o2 = o1, *ops[2] = {&o1, &o2};
    o1.request_case = o2.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT;
    o1.request_put = &p1;
    o2.request_put = &p2;
    Etcdserverpb__TxnRequest txn = ETCDSERVERPB__TXN_REQUEST__INIT;
    txn.n_success = 2;
    txn.success = ops;
    Craft__Kv__Result *r = kvt_txn(&t, &txn);
    cr_assert_eq(r->code, KV_CODE_NOT_FOUND);
    cr_assert_str_eq(r->message, KV_ERR_LEASE_NOT_FOUND);
    FREE_RES(r);
    cr_assert_eq(kvt_rev(&t), 0);
    cr_assert_str_eq(lease_text(&t, 5), "30/0:", "nothing attached by the failed txn");
    p2.lease = 5;
    r = kvt_txn(&t, &txn);
    cr_assert_eq(r->code, 0, "%s", r->message);
    FREE_RES(r);
    cr_assert_str_eq(lease_text(&t, 5), "30/0:x,y");
    /* Compare on LEASE sees it. */
    Etcdserverpb__Compare c = ETCDSERVERPB__COMPARE__INIT, *cp = &c;
    c.key = kvt_bin("x");
    c.target = ETCDSERVERPB__COMPARE__COMPARE_TARGET__LEASE;
    c.target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_LEASE;
    c.lease = 5;
    Etcdserverpb__TxnRequest q = ETCDSERVERPB__TXN_REQUEST__INIT;
    q.n_compare = 1;
    q.compare = &cp;
    r = kvt_txn(&t, &q);
    cr_assert_eq(r->code, 0);
    cr_assert(r->txn->succeeded, "x is attached to lease 5");
    FREE_RES(r);
    kvt_close(&t);
}

Test(kv_lease, checkpoints_record_remaining_ttl)
{
    struct kvt t;
    kvt_open(&t, NULL);
    grant_ok(&t, 1, 100);
    grant_ok(&t, 2, 100);
    int64_t ids[] = {1, 2, 99}, rem[] = {40, 70, 5};
    Craft__Kv__Result *r = checkpoint(&t, ids, rem, 3);
    cr_assert_eq(r->code, 0, "%s (unknown ids are skipped)", r->message);
    FREE_RES(r);
    cr_assert_str_eq(lease_text(&t, 1), "100/40:");
    cr_assert_str_eq(lease_text(&t, 2), "100/70:");
    cr_assert_str_eq(lease_text(&t, 99), "none");
    int64_t one[] = {1}, zero[] = {0}, neg[] = {-1};
    FREE_RES(checkpoint(&t, one, zero, 1));
    cr_assert_str_eq(lease_text(&t, 1), "100/0:", "0 clears it");
    r = checkpoint(&t, one, neg, 1);
    cr_assert_eq(r->code, KV_CODE_INVALID_ARGUMENT);
    FREE_RES(r);
    cr_assert_eq(kvt_rev(&t), 0);
    kvt_close(&t);
}

struct hook_log {
    char buf[512];
};

static void on_lease(void *arg, enum kv_lease_change what, int64_t id, int64_t ttl)
{
    struct hook_log *h = arg;
    size_t o = strlen(h->buf);
    snprintf(h->buf + o, sizeof h->buf - o, "%s%lld/%lld ",
             what == KV_LEASE_GRANTED ? "+" : what == KV_LEASE_REVOKED ? "-" : "reset",
             (long long)id, (long long)ttl);
}

static int list_cb(void *arg, const struct kv_lease *l)
{
    struct hook_log *h = arg;
    size_t o = strlen(h->buf);
    snprintf(h->buf + o, sizeof h->buf - o, "%lld:%lld/%lld ", (long long)l->id,
             (long long)l->ttl, (long long)l->remaining);
    return 0;
}

Test(kv_lease, hook_tells_grants_and_revokes_after_commit_and_reset_after_restore)
{
    struct kvt t, u;
    kvt_open(&t, NULL);
    kvt_open(&u, NULL);
    struct hook_log h = {{0}}, hu = {{0}};
    kv_store_set_lease_hook(t.s, on_lease, &h);
    kv_store_set_lease_hook(u.s, on_lease, &hu);
    grant_ok(&t, 1, 10);
    grant_ok(&t, 2, 20);
    Craft__Kv__Result *r = grant(&t, 2, 20); /* refused: not told */
    FREE_RES(r);
    FREE_RES(revoke(&t, 1));
    cr_assert_str_eq(h.buf, "+1/10 +2/20 -1/0 ");
    struct kvt_buf b = {0};
    uint64_t index, term;
    kvt_snapshot(&t, &b, &index, &term);
    char err[256];
    cr_assert_eq(kvt_restore(&u, b.data, b.len, index, term, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(hu.buf, "reset0/0 ");
    struct hook_log l = {{0}};
    struct kv_err kerr;
    cr_assert_eq(kv_store_leases(u.s, list_cb, &l, &kerr), 0);
    cr_assert_str_eq(l.buf, "2:20/0 ");
    free(b.data);
    kvt_close(&t);
    kvt_close(&u);
}

Test(kv_lease, leases_and_attachments_survive_restart_and_snapshot)
{
    struct kvt t, u;
    kvt_open(&t, NULL);
    grant_ok(&t, 1, 10);
    grant_ok(&t, -2, 20);
    grant_ok(&t, 300, 30);
    put_lease_ok(&t, "a", 1);
    put_lease_ok(&t, "b", -2);
    put_lease_ok(&t, "c", 1);
    put_lease_ok(&t, "d", 1); /* then overwritten without a lease: history keeps the old one */
    kvt_put_ok(&t, "d", "plain");
    int64_t ids[] = {300}, rem[] = {12};
    FREE_RES(checkpoint(&t, ids, rem, 1));
    kvt_reopen(&t);
    cr_assert_str_eq(lease_text(&t, 1), "10/0:a,c");
    struct hook_log l = {{0}};
    struct kv_err kerr;
    cr_assert_eq(kv_store_leases(t.s, list_cb, &l, &kerr), 0);
    cr_assert_str_eq(l.buf, "1:10/0 300:30/12 -2:20/0 ", "the table's (unsigned) order");

    struct kvt_buf b = {0};
    uint64_t index, term;
    kvt_snapshot(&t, &b, &index, &term);
    kvt_open(&u, NULL);
    char err[256];
    cr_assert_eq(kvt_restore(&u, b.data, b.len, index, term, err, sizeof err), 0, "%s", err);
    char *dt = kvt_dump(&t), *du = kvt_dump(&u);
    cr_assert_str_eq(du, dt);
    free(dt);
    free(du);
    struct hook_log lu = {{0}};
    cr_assert_eq(kv_store_leases(u.s, list_cb, &lu, &kerr), 0);
    cr_assert_str_eq(lu.buf, l.buf);
    cr_assert_str_eq(lease_text(&u, 1), "10/0:a,c");
    cr_assert_eq(key_lease(&u, "d"), 0);
    /* The attachments were rebuilt: a revoke on the restored store finds its keys. */
    FREE_RES(revoke(&u, 1));
    cr_assert_eq(kvt_count(&u), 2, "b and d are left");
    free(b.data);
    kvt_close(&t);
    kvt_close(&u);
}

Test(kv_lease, restore_refuses_a_key_whose_lease_is_not_in_the_payload)
{
    struct kvt t;
    kvt_open(&t, NULL);
    kvt_put_ok(&t, "keep", "me");
    struct kvt_buf b = {0};
    struct kv_snap_enc *e = kv_snap_enc_new(kvt_buf_write, &b);
    struct kv_snap_meta m = {.index = 50, .term = 2, .rev = 2, .compact = 0, .version = 3};
    cr_assert_eq(kv_snap_enc_header(e, &m), 0);
    uint8_t rec[32] = {0};
    kv_le_put64(rec, 1);
    kv_le_put64(rec + 8, 1);
    kv_le_put64(rec + 16, 1);
    kv_le_put64(rec + 24, 9); /* lease 9 */
    cr_assert_eq(kv_snap_enc_record(e, "k", 1, rec, 32), 0);
    cr_assert_eq(kv_snap_enc_lease(e, 8, 30, 0), 0); /* not 9 */
    cr_assert_eq(kv_snap_enc_finish(e, NULL), 0);
    kv_snap_enc_free(e);
    char err[256] = "";
    cr_assert_eq(kvt_restore(&t, b.data, b.len, 50, 2, err, sizeof err), -EBADMSG);
    cr_assert(strstr(err, "attached to a lease the payload does not hold"), "%s", err);
    cr_assert_eq(kvt_count(&t), 1, "the old store serves on");
    free(b.data);
    kvt_close(&t);
}

Test(kv_lease, a_store_from_before_leases_is_upgraded_at_open)
{
    struct kvt t;
    kvt_open(&t, NULL);
    kvt_put_ok(&t, "a", "1");
    kv_store_close(t.s);
    t.s = NULL;
    /* Make it a craft-kv-3 store: that format record, no lease tables. */
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi meta, lease, lkeys;
    cr_assert_eq(mdb_env_create(&env), 0);
    mdb_env_set_maxdbs(env, 8);
    mdb_env_set_mapsize(env, KV_DEFAULT_MAP_SIZE);
    cr_assert_eq(mdb_env_open(env, t.dir, 0, 0600), 0);
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    cr_assert_eq(mdb_dbi_open(txn, "meta", 0, &meta), 0);
    cr_assert_eq(mdb_dbi_open(txn, "lease", 0, &lease), 0);
    cr_assert_eq(mdb_dbi_open(txn, "lkeys", 0, &lkeys), 0);
    cr_assert_eq(mdb_drop(txn, lease, 1), 0);
    cr_assert_eq(mdb_drop(txn, lkeys, 1), 0);
    MDB_val k = {6, "format"}, v = {10, "craft-kv-3"};
    cr_assert_eq(mdb_put(txn, meta, &k, &v, 0), 0);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    kvt_reopen(&t);
    grant_ok(&t, 1, 10);
    put_lease_ok(&t, "a", 1);
    kvt_reopen(&t);
    cr_assert_str_eq(lease_text(&t, 1), "10/0:a");
    kvt_close(&t);
}
