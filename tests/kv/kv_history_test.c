/* kv_history_test.c: the store's history beyond what the reference model (kv_model_test) checks:
 * stores and snapshots from before history come in with each key's last write as its history;
 * a store with the "keyrev" tree of format craft-kv-2 opens with it dropped and its history
 * intact; the history index's lock never makes apply wait for a reader's callback, and a
 * prev_kv read meeting the compactor between its commit and its index update is not "data
 * loss";
 * kv_store_events on bad and edge input (revisions below, above and far above, a callback that
 * stops or fails); the commit hook; the removal of a long compacted history while writes go
 * on. */
#include <criterion/criterion.h>
#include <errno.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "services/kvstore/kv_snap.h"
#include "tests/kv/kv_txn_build.h"

static void put_ok(struct kvt *t, const char *k, const char *v) { kvt_put_ok(t, k, v); }

struct evs {
    char text[4096];
    size_t n, stop_after;
    int fail_with;
};

static int collect(void *arg, const struct kv_event *ev)
{
    struct evs *e = arg;
    size_t len = strlen(e->text);
    snprintf(e->text + len, sizeof e->text - len, "%s%s:%.*s=%.*s@%lld/%lld%s",
             len ? " " : "", ev->type == KV_EVENT_PUT ? "P" : "D", (int)ev->kv.klen,
             (const char *)ev->kv.key, (int)ev->kv.vlen, (const char *)ev->kv.val,
             (long long)ev->rev, (long long)ev->kv.version, ev->has_prev ? "+prev" : "");
    e->n++;
    if (e->fail_with)
        return e->fail_with;
    return e->stop_after && e->n >= e->stop_after ? 1 : 0;
}

static const char *events(struct kvt *t, int64_t from, size_t max, int64_t *next)
{
    static struct evs e;
    memset(&e, 0, sizeof e);
    struct kv_err err;
    int64_t cur, comp;
    cr_assert_eq(kv_store_events(t->s, from, max, false, collect, &e, next, &cur, &comp, &err), 0,
                 "%s", err.msg);
    return e.text;
}

/* A store written by a build from before history: format "craft-kv-1", the latest state only. */
static void make_v1_store(const char *dir)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi meta, kv;
    cr_assert_eq(mdb_env_create(&env), 0);
    cr_assert_eq(mdb_env_set_maxdbs(env, 4), 0);
    cr_assert_eq(mdb_env_open(env, dir, MDB_NOTLS, 0600), 0);
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    cr_assert_eq(mdb_dbi_open(txn, "meta", MDB_CREATE, &meta), 0);
    cr_assert_eq(mdb_dbi_open(txn, "kv", MDB_CREATE, &kv), 0);
    MDB_val fk = {6, "format"}, fv = {10, "craft-kv-1"};
    cr_assert_eq(mdb_put(txn, meta, &fk, &fv, 0), 0);
    /* a=1 (put at 1, again at 4), b (created 2, txn at 5 with c), c (txn at 5) */
    struct {
        const char *k, *v;
        int64_t create, mod, ver;
    } recs[] = {{"a", "A", 1, 4, 2}, {"b", "B", 2, 5, 2}, {"c", "C", 5, 5, 1}};
    for (int i = 0; i < 3; i++) {
        uint8_t r[33];
        kv_le_put64(r, (uint64_t)recs[i].create);
        kv_le_put64(r + 8, (uint64_t)recs[i].mod);
        kv_le_put64(r + 16, (uint64_t)recs[i].ver);
        kv_le_put64(r + 24, 0);
        r[32] = (uint8_t)recs[i].v[0];
        MDB_val k = {1, (void *)recs[i].k}, v = {33, r};
        cr_assert_eq(mdb_put(txn, kv, &k, &v, 0), 0);
    }
    uint8_t st[32];
    kv_le_put64(st, 9);      /* applied index */
    kv_le_put64(st + 8, 5);  /* revision */
    kv_le_put64(st + 16, 3); /* compacted */
    kv_le_put64(st + 24, 2); /* term */
    MDB_val sk = {5, "state"}, sv = {32, st};
    cr_assert_eq(mdb_put(txn, meta, &sk, &sv, 0), 0);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

Test(kv_history, a_store_from_before_history_is_upgraded_at_open)
{
    struct kvt t;
    kvt_open(&t, NULL);
    char dir[64];
    snprintf(dir, sizeof dir, "%s", t.dir);
    kv_store_close(t.s);
    remove(strcat(strcpy((char[128]){0}, dir), "/data.mdb"));
    remove(strcat(strcpy((char[128]){0}, dir), "/lock.mdb"));
    make_v1_store(dir);
    char err[256];
    t.s = kv_store_open(dir, &t.opts, err, sizeof err);
    cr_assert(t.s, "%s", err);
    t.index = kv_store_applied_index(t.s);
    cr_assert_eq(t.index, 9);
    int64_t next;
    cr_assert_str_eq(events(&t, 3, 0, &next), "P:a=A@4/2 P:b=B@5/2 P:c=C@5/1");
    cr_assert_eq(next, 6);
    /* writes go on with history from here */
    put_ok(&t, "a", "new");
    cr_assert_str_eq(events(&t, 5, 0, &next), "P:b=B@5/2 P:c=C@5/1 P:a=new@6/3");
    Etcdserverpb__RangeRequest r;
    kvt_range_req(&r, "a", NULL);
    r.revision = 5;
    Etcdserverpb__RangeResponse *resp = kvt_range(&t, &r);
    cr_assert_str_eq(kvt_keys(resp->kvs, resp->n_kvs, true), "a=A");
    etcdserverpb__range_response__free_unpacked(resp, NULL);
    kvt_reopen(&t); /* upgraded once: a second open finds the new format */
    cr_assert_str_eq(events(&t, 4, 0, &next), "P:a=A@4/2 P:b=B@5/2 P:c=C@5/1 P:a=new@6/3");
    kvt_close(&t);
}

/* What format craft-kv-2 had beyond the history (the same "hist" as now): the "keyrev" tree. The
 * test turns a store of this build into one: format record and a keyrev with duplicates. */
static void make_v2_store(const char *dir)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi meta, kr;
    cr_assert_eq(mdb_env_create(&env), 0);
    cr_assert_eq(mdb_env_set_maxdbs(env, 6), 0);
    cr_assert_eq(mdb_env_open(env, dir, MDB_NOTLS, 0600), 0);
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    cr_assert_eq(mdb_dbi_open(txn, "meta", 0, &meta), 0);
    MDB_val fk = {6, "format"}, fv = {10, "craft-kv-2"};
    cr_assert_eq(mdb_put(txn, meta, &fk, &fv, 0), 0);
    cr_assert_eq(mdb_dbi_open(txn, "keyrev", MDB_CREATE | MDB_DUPSORT | MDB_DUPFIXED, &kr), 0);
    for (int i = 1; i <= 3; i++) {
        uint8_t d[17] = {0};
        d[7] = (uint8_t)i;
        MDB_val k = {1, "a"}, v = {17, d};
        cr_assert_eq(mdb_put(txn, kr, &k, &v, 0), 0);
    }
    cr_assert_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

static bool has_keyrev(const char *dir)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi kr;
    cr_assert_eq(mdb_env_create(&env), 0);
    cr_assert_eq(mdb_env_set_maxdbs(env, 6), 0);
    cr_assert_eq(mdb_env_open(env, dir, MDB_NOTLS | MDB_RDONLY, 0600), 0);
    cr_assert_eq(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
    bool has = mdb_dbi_open(txn, "keyrev", MDB_DUPSORT | MDB_DUPFIXED, &kr) == 0;
    mdb_txn_abort(txn);
    mdb_env_close(env);
    return has;
}

Test(kv_history, a_store_with_the_keyrev_tree_opens_without_it)
{
    struct kvt t;
    kvt_open(&t, NULL);
    put_ok(&t, "a", "1");                /* rev 1 */
    put_ok(&t, "b", "1");                /* rev 2 */
    put_ok(&t, "a", "2");                /* rev 3 */
    Craft__Kv__Result *d = kvt_del(&t, "b", NULL, false); /* rev 4 */
    cr_assert(d && d->code == 0 && d->delete_range->deleted == 1);
    craft__kv__result__free_unpacked(d, NULL);
    char dir[64];
    snprintf(dir, sizeof dir, "%s", t.dir);
    kv_store_close(t.s);
    make_v2_store(dir);
    cr_assert(has_keyrev(dir));
    char err[256];
    t.s = kv_store_open(dir, &t.opts, err, sizeof err);
    cr_assert(t.s, "%s", err);
    /* the history as before, at every revision, deleted key included */
    const char *want[] = {"", "a=1", "a=1,b=1", "a=2,b=1", "a=2"};
    for (int rev = 1; rev <= 4; rev++) {
        Etcdserverpb__RangeRequest r;
        kvt_range_req(&r, "a", "c");
        r.revision = rev;
        Etcdserverpb__RangeResponse *resp = kvt_range(&t, &r);
        cr_assert_str_eq(kvt_keys(resp->kvs, resp->n_kvs, true), want[rev], "at %d", rev);
        etcdserverpb__range_response__free_unpacked(resp, NULL);
    }
    kv_store_close(t.s);
    t.s = NULL;
    cr_assert_not(has_keyrev(dir), "the keyrev tree was not dropped");
    t.s = kv_store_open(dir, &t.opts, err, sizeof err); /* and opens again as craft-kv-3 */
    cr_assert(t.s, "%s", err);
    kvt_close(&t);
}

Test(kv_history, a_version_1_snapshot_restores_with_each_keys_last_write_as_history)
{
    struct kvt_buf b = {0};
    struct kv_snap_enc *e = kv_snap_enc_new(kvt_buf_write, &b);
    struct kv_snap_meta m = {.index = 20, .term = 3, .rev = 8, .compact = 2, .version = 1};
    cr_assert_eq(kv_snap_enc_header(e, &m), 0);
    const char *keys[] = {"x", "y", "z"};
    int64_t mods[] = {7, 8, 7};
    for (int i = 0; i < 3; i++) {
        uint8_t r[33];
        kv_le_put64(r, 1);
        kv_le_put64(r + 8, (uint64_t)mods[i]);
        kv_le_put64(r + 16, 1);
        kv_le_put64(r + 24, 0);
        r[32] = 'v';
        cr_assert_eq(kv_snap_enc_record(e, keys[i], 1, r, 33), 0);
    }
    cr_assert_eq(kv_snap_enc_finish(e, NULL), 0);
    kv_snap_enc_free(e);
    struct kvt t;
    kvt_open(&t, NULL);
    char err[256];
    cr_assert_eq(kvt_restore(&t, b.data, b.len, 20, 3, err, sizeof err), 0, "%s", err);
    free(b.data);
    int64_t next;
    cr_assert_str_eq(events(&t, 2, 0, &next), "P:x=v@7/1 P:z=v@7/1 P:y=v@8/1",
                     "the writes of one revision in key order");
    /* and a version 2 snapshot of that store carries the same history */
    struct kvt_buf b2 = {0};
    uint64_t idx, term;
    kvt_snapshot(&t, &b2, &idx, &term);
    struct kvt t2;
    kvt_open(&t2, NULL);
    cr_assert_eq(kvt_restore(&t2, b2.data, b2.len, idx, term, err, sizeof err), 0, "%s", err);
    free(b2.data);
    cr_assert_str_eq(events(&t2, 2, 0, &next), "P:x=v@7/1 P:z=v@7/1 P:y=v@8/1");
    kvt_close(&t2);
    kvt_close(&t);
}

Test(kv_history, events_on_edge_and_bad_input)
{
    struct kvt t;
    kvt_open(&t, NULL);
    put_ok(&t, "a", "1"); /* 1 */
    Etcdserverpb__TxnRequest *tx = kb_txn();
    kb_put(tx, 0, "b", "2", false);
    kb_put(tx, 0, "c", "3", false);
    Craft__Kv__Result *r = kvt_txn(&t, tx); /* 2: two writes */
    cr_assert_eq(r->code, 0);
    craft__kv__result__free_unpacked(r, NULL);
    kb_free(tx);
    r = kvt_del(&t, "a", NULL, false); /* 3 */
    craft__kv__result__free_unpacked(r, NULL);
    int64_t next, cur, comp;
    /* from 0 or below: nothing, resume after the current revision (a watch from "now") */
    cr_assert_str_eq(events(&t, 0, 0, &next), "");
    cr_assert_eq(next, 4);
    cr_assert_str_eq(events(&t, -5, 0, &next), "");
    cr_assert_eq(next, 4);
    /* the future, even the far future: nothing yet, resume there */
    cr_assert_str_eq(events(&t, INT64_MAX, 0, &next), "");
    cr_assert_eq(next, INT64_MAX);
    cr_assert_str_eq(events(&t, 4, 0, &next), "");
    cr_assert_eq(next, 4);
    /* the bound never splits a revision */
    cr_assert_str_eq(events(&t, 1, 2, &next), "P:a=1@1/1 P:b=2@2/1 P:c=3@2/1");
    cr_assert_eq(next, 3);
    cr_assert_str_eq(events(&t, 3, 1, &next), "D:a=@3/0");
    cr_assert_eq(next, 4);
    /* a callback that stops mid-revision resumes in it; one that fails passes its error back */
    struct evs e = {.stop_after = 2};
    struct kv_err err;
    cr_assert_eq(kv_store_events(t.s, 1, 0, false, collect, &e, &next, &cur, &comp, &err), 0);
    cr_assert_eq(e.n, 2);
    cr_assert_eq(next, 2, "stopped inside revision 2");
    e = (struct evs){.stop_after = 3};
    cr_assert_eq(kv_store_events(t.s, 1, 0, false, collect, &e, &next, &cur, &comp, &err), 0);
    cr_assert_eq(next, 3, "stopped at the end of revision 2");
    e = (struct evs){.fail_with = -ENOSPC};
    cr_assert_eq(kv_store_events(t.s, 1, 0, false, collect, &e, &next, &cur, &comp, &err),
                 -ENOSPC);
    /* below the compacted revision */
    r = kvt_compact(&t, 2);
    cr_assert_eq(r->code, 0);
    craft__kv__result__free_unpacked(r, NULL);
    e = (struct evs){0};
    cr_assert_eq(kv_store_events(t.s, 1, 0, false, collect, &e, &next, &cur, &comp, &err), -1);
    cr_assert_eq(err.code, KV_CODE_OUT_OF_RANGE);
    cr_assert_str_eq(err.msg, KV_ERR_COMPACTED);
    cr_assert_eq(comp, 2);
    cr_assert_eq(cur, 3);
    cr_assert_eq(e.n, 0);
    /* with prev: the delete's previous version is the put at 1, gone below the compaction at 2
     * (a later write at 2 or after... a's next write is the delete at 3 > 2: kept) */
    cr_assert_eq(kv_store_compact_wait(t.s, 2, 5000), 0);
    e = (struct evs){0};
    cr_assert_eq(kv_store_events(t.s, 3, 0, true, collect, &e, &next, &cur, &comp, &err), 0);
    cr_assert_str_eq(e.text, "D:a=@3/0+prev");
    kvt_close(&t);
}

struct hook_seen {
    int64_t revs[64];
    int n;
};

static void hook(void *arg, int64_t rev)
{
    struct hook_seen *h = arg;
    if (h->n < 64)
        h->revs[h->n++] = rev;
}

Test(kv_history, the_commit_hook_hears_every_batch_and_a_restore)
{
    struct kvt t;
    kvt_open(&t, NULL);
    struct hook_seen h = {0};
    kv_store_set_commit_hook(t.s, hook, &h);
    put_ok(&t, "a", "1");
    put_ok(&t, "b", "2");
    Craft__Kv__Result *r = kvt_del(&t, "zzz", NULL, false); /* deletes nothing: same revision */
    craft__kv__result__free_unpacked(r, NULL);
    cr_assert_eq(h.n, 3);
    cr_assert(h.revs[0] == 1 && h.revs[1] == 2 && h.revs[2] == 2);
    struct kvt_buf b = {0};
    uint64_t idx, term;
    kvt_snapshot(&t, &b, &idx, &term);
    struct kvt t2;
    kvt_open(&t2, NULL);
    for (int i = 0; i < 5; i++)
        put_ok(&t2, "other", "x");
    struct hook_seen h2 = {0};
    kv_store_set_commit_hook(t2.s, hook, &h2);
    char err[256];
    cr_assert_eq(kvt_restore(&t2, b.data, b.len, idx, term ? term : 1, err, sizeof err), 0, "%s",
                 err);
    free(b.data);
    cr_assert_eq(h2.n, 1);
    cr_assert_eq(h2.revs[0], 2, "a restore can take the revision back");
    kvt_close(&t2);
    kvt_close(&t);
}

Test(kv_history, a_long_history_is_removed_in_the_background_while_writes_go_on,
     .timeout = 120)
{
    struct kvt t;
    kvt_open(&t, NULL);
    /* 20,000 revisions of 50 keys, then a compaction near the end */
    for (int i = 0; i < 20000; i++) {
        char k[16], v[16];
        snprintf(k, sizeof k, "k%02d", i % 50);
        snprintf(v, sizeof v, "%d", i);
        put_ok(&t, k, v);
    }
    int64_t before = kv_store_size_in_use(t.s);
    Craft__Kv__Result *r = kvt_compact(&t, 19950);
    cr_assert_eq(r->code, 0);
    craft__kv__result__free_unpacked(r, NULL);
    /* writes go on meanwhile (the applier waits for at most one removal transaction) */
    for (int i = 0; i < 200; i++)
        put_ok(&t, "during", "x");
    cr_assert_eq(kv_store_compact_wait(t.s, 19950, 60000), 0);
    put_ok(&t, "after", "x"); /* the size in use is published by the applier */
    int64_t after = kv_store_size_in_use(t.s);
    cr_assert_lt(after, before / 4, "20,000 revisions removed: %lld -> %lld bytes",
                 (long long)before, (long long)after);
    /* every key still reads at the compacted revision: its last write at or below it */
    Etcdserverpb__RangeRequest rq;
    kvt_range_req(&rq, "k", "l");
    rq.revision = 19950;
    Etcdserverpb__RangeResponse *resp = kvt_range(&t, &rq);
    cr_assert_eq(resp->n_kvs, 50);
    for (size_t i = 0; i < resp->n_kvs; i++)
        cr_assert_leq(resp->kvs[i]->mod_revision, 19950);
    etcdserverpb__range_response__free_unpacked(resp, NULL);
    int64_t next;
    cr_assert_str_eq(events(&t, 19950, 1, &next), "P:k49=19949@19950/399");
    kvt_close(&t);
}

/* ---- the index's lock and the compactor's two steps (found in review of the index) ---- */

struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool reached, released, put_done, put_seen;
};

static void gate_init(struct gate *g)
{
    memset(g, 0, sizeof *g);
    pthread_mutex_init(&g->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&g->cv, &ca);
    pthread_condattr_destroy(&ca);
}

/* Waits (g->mu held) until *flag, for at most 10 s: a deadline, so a bug fails the test
 * instead of hanging it. */
static bool gate_wait(struct gate *g, bool *flag)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += 10;
    while (!*flag)
        if (pthread_cond_timedwait(&g->cv, &g->mu, &ts) != 0)
            break;
    return *flag;
}

static void gate_set(struct gate *g, bool *flag)
{
    pthread_mutex_lock(&g->mu);
    *flag = true;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

/* A consumer of events that is slow: it holds the first event until the test's put is done. */
static int held_cb(void *arg, const struct kv_event *ev)
{
    (void)ev;
    struct gate *g = arg;
    pthread_mutex_lock(&g->mu);
    g->reached = true;
    pthread_cond_broadcast(&g->cv);
    g->put_seen = gate_wait(g, &g->put_done);
    pthread_mutex_unlock(&g->mu);
    return 1;
}

struct events_job {
    struct kv_store *s;
    struct gate *g;
    int rc;
};

static void *events_main(void *arg)
{
    struct events_job *j = arg;
    struct kv_err err;
    int64_t next, cur, comp;
    j->rc = kv_store_events(j->s, 1, 0, true, held_cb, j->g, &next, &cur, &comp, &err);
    return NULL;
}

Test(kv_history, a_reader_of_events_with_prev_kv_does_not_hold_back_apply)
{
    struct kvt t;
    kvt_open(&t, NULL);
    put_ok(&t, "a", "1");
    put_ok(&t, "a", "2");
    struct gate g;
    gate_init(&g);
    struct events_job j = {t.s, &g, -99};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, events_main, &j), 0);
    pthread_mutex_lock(&g.mu);
    cr_assert(gate_wait(&g, &g.reached), "the reader never called back");
    pthread_mutex_unlock(&g.mu);
    put_ok(&t, "b", "1"); /* the applier takes the index's lock for this write */
    gate_set(&g, &g.put_done);
    pthread_join(th, NULL);
    cr_assert_eq(j.rc, 0);
    cr_assert(g.put_seen, "the put waited for the reader's callback to return");
    kvt_close(&t);
}

/* Holds the compactor between its commit and its index update, once. */
static int compact_hook(void *arg, const char *op, uint64_t n)
{
    (void)n;
    struct gate *g = arg;
    if (strcmp(op, "compact-committed") != 0)
        return 0;
    pthread_mutex_lock(&g->mu);
    if (!g->reached) {
        g->reached = true;
        pthread_cond_broadcast(&g->cv);
        gate_wait(g, &g->released);
    }
    pthread_mutex_unlock(&g->mu);
    return 0;
}

static int count_events(void *arg, const struct kv_event *ev)
{
    struct evs *e = arg;
    return collect(e, ev);
}

Test(kv_history, prev_kv_from_the_compacted_revision_meanwhile_the_compactor_updates_the_index)
{
    struct gate g;
    gate_init(&g);
    struct kv_store_opts o = {.step_hook = compact_hook, .step_arg = &g};
    struct kvt t;
    kvt_open(&t, &o);
    put_ok(&t, "a", "1"); /* rev 1: superseded at 2, removed by Compact(2) */
    put_ok(&t, "a", "2"); /* rev 2 */
    put_ok(&t, "b", "1"); /* rev 3 */
    Craft__Kv__Result *c = kvt_compact(&t, 2);
    cr_assert_eq(c->code, 0);
    craft__kv__result__free_unpacked(c, NULL);
    pthread_mutex_lock(&g.mu);
    cr_assert(gate_wait(&g, &g.reached), "the compactor never committed a batch");
    pthread_mutex_unlock(&g.mu);
    /* "hist" has lost a@1, the index still names it: the prev of a@2 is compacted, not lost */
    static struct evs e;
    memset(&e, 0, sizeof e);
    struct kv_err err = {0};
    int64_t next, cur, comp;
    int rc = kv_store_events(t.s, 2, 0, true, count_events, &e, &next, &cur, &comp, &err);
    gate_set(&g, &g.released);
    cr_assert_eq(rc, 0, "events from the compacted revision with prev_kv: %d %s", err.code,
                 err.msg);
    cr_assert_str_eq(e.text, "P:a=2@2/2 P:b=1@3/1");
    cr_assert_eq(kv_store_compact_wait(t.s, 2, 10000), 0);
    /* and once the index is updated too, the same answer */
    memset(&e, 0, sizeof e);
    cr_assert_eq(kv_store_events(t.s, 2, 0, true, count_events, &e, &next, &cur, &comp, &err), 0);
    cr_assert_str_eq(e.text, "P:a=2@2/2 P:b=1@3/1");
    kvt_close(&t);
}

