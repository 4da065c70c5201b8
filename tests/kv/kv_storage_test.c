/* kv_storage_test.c: the LMDB side of the store: batches are one transaction (all or nothing),
 * the applied index survives a restart exactly, a full map is a per-entry error that leaves the
 * store usable, bad log bytes are per-entry errors, bad files at open are clear errors, reads
 * see whole batches while apply runs, and the bytes in use (kv_store_size_in_use) are current
 * after every batch and after a restart. */
#include <criterion/criterion.h>
#include <errno.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "services/kvstore/kv_cmd.h"
#include "tests/kv/kv_txn_build.h"

#define FREE_RES(r) craft__kv__result__free_unpacked((r), NULL)

static uint8_t *put_cmd(const char *key, const char *val, size_t vlen, size_t *len)
{
    Etcdserverpb__PutRequest p = ETCDSERVERPB__PUT_REQUEST__INIT;
    p.key = kvt_bin(key);
    p.value.data = (uint8_t *)val;
    p.value.len = vlen;
    uint8_t *b;
    cr_assert_eq(kv_cmd_encode_put(&p, &b, len), 0);
    return b;
}

/* Applies n puts key<i>=val as one batch ending at last_index (0 = the last entry's). */
static int apply_batch(struct kvt *t, int first, int n, const char *val, uint64_t trailing,
                       struct raft_fsm_result *res)
{
    struct raft_entry es[64];
    cr_assert_leq(n, 64);
    for (int i = 0; i < n; i++) {
        char key[32];
        snprintf(key, sizeof key, "key%04d", first + i);
        size_t len;
        es[i] = (struct raft_entry){.index = ++t->index, .term = 2, .type = RAFT_ENTRY_NORMAL};
        es[i].data = put_cmd(key, val, strlen(val), &len);
        es[i].len = (uint32_t)len;
    }
    t->index += trailing; /* NOOP/CONFIG entries the runtime filtered out */
    struct raft_fsm *f = kv_store_fsm(t->s);
    int rc = f->apply(f->ctx, es, (size_t)n, t->index, res);
    for (int i = 0; i < n; i++)
        free(es[i].data);
    return rc;
}

static void free_results(struct raft_fsm_result *res, int n)
{
    for (int i = 0; i < n; i++)
        free(res[i].data);
}

Test(kv_storage, restart_keeps_applied_index_and_state_exactly)
{
    struct kvt t;
    kvt_open(&t, NULL);
    struct raft_fsm_result res[64] = {{0}};
    cr_assert_eq(apply_batch(&t, 0, 10, "v1", 0, res), 0);
    for (int i = 0; i < 10; i++) {
        cr_assert_eq(res[i].code, 0);
        Craft__Kv__Result *r = kv_result_decode(res[i].data, res[i].len);
        cr_assert_eq(r->put->header->revision, i + 1);
        FREE_RES(r);
    }
    free_results(res, 10);
    memset(res, 0, sizeof res);
    cr_assert_eq(apply_batch(&t, 5, 10, "v2", 3, res), 0); /* 3 trailing NOOPs */
    free_results(res, 10);
    cr_assert_eq(kv_store_applied_index(t.s), 23);
    kvt_reopen(&t);
    cr_assert_eq(kv_store_applied_index(t.s), 23);
    struct raft_fsm *f = kv_store_fsm(t.s);
    cr_assert_eq(f->applied_index(f->ctx), 23);
    cr_assert_eq(kvt_rev(&t), 20);
    cr_assert_eq(kvt_count(&t), 15);
    Etcdserverpb__RangeRequest q;
    kvt_range_req(&q, "key0007", NULL);
    Etcdserverpb__RangeResponse *resp = kvt_range(&t, &q);
    cr_assert_eq(resp->kvs[0]->version, 2);
    cr_assert_eq(resp->kvs[0]->create_revision, 8);
    cr_assert_eq(resp->kvs[0]->mod_revision, 13);
    cr_assert_eq(resp->kvs[0]->value.data[1], '2');
    etcdserverpb__range_response__free_unpacked(resp, NULL);
    /* the store goes on from there */
    Craft__Kv__Result *r = kvt_put(&t, "after", "x");
    cr_assert_eq(r->put->header->revision, 21);
    FREE_RES(r);
    kvt_close(&t);
}

Test(kv_storage, failed_batch_is_all_or_nothing)
{
    struct kvt t;
    struct kv_store_opts o = {.fail_at_index = 8};
    kvt_open(&t, &o);
    struct raft_fsm_result res[64] = {{0}};
    cr_assert_eq(apply_batch(&t, 0, 5, "a", 0, res), 0); /* indexes 1..5 */
    free_results(res, 5);
    memset(res, 0, sizeof res);
    /* indexes 6..10; the entry at 8 fails after 6 and 7 were applied in the transaction */
    cr_assert_eq(apply_batch(&t, 5, 5, "b", 0, res), -EIO);
    for (int i = 0; i < 5; i++)
        cr_assert_null(res[i].data, "no result may survive a failed batch");
    cr_assert_eq(kv_store_applied_index(t.s), 5);
    cr_assert_eq(kvt_rev(&t), 5);
    cr_assert_eq(kvt_count(&t), 5);
    /* after a restart (without the fault) the runtime replays from index 6 */
    t.opts.fail_at_index = 0;
    kvt_reopen(&t);
    cr_assert_eq(kv_store_applied_index(t.s), 5);
    t.index = 5;
    cr_assert_eq(apply_batch(&t, 5, 5, "b", 0, res), 0);
    free_results(res, 5);
    cr_assert_eq(kvt_rev(&t), 10);
    cr_assert_eq(kvt_count(&t), 10);
    kvt_close(&t);
}

Test(kv_storage, malformed_commands_are_entry_errors)
{
    struct kvt t;
    kvt_open(&t, NULL);
    kvt_put_ok(&t, "a", "1");
    const uint8_t junk[][8] = {{0xff, 0xff, 0xff, 0xff}, {0x0a, 0x7f, 0x01}, {0x1a, 0x02, 0x12, 0x05}};
    const size_t lens[] = {4, 3, 4};
    for (int i = 0; i < 3; i++) {
        int code;
        Craft__Kv__Result *r = kvt_apply(&t, junk[i], lens[i], &code);
        cr_assert_eq(code, KV_CODE_INVALID_ARGUMENT);
        cr_assert_str_eq(r->message, KV_ERR_BAD_COMMAND);
        cr_assert_eq(r->revision, 1);
        FREE_RES(r);
    }
    /* an empty command (no op set) */
    Craft__Kv__Result *r = kvt_apply(&t, NULL, 0, NULL);
    cr_assert_str_eq(r->message, KV_ERR_BAD_COMMAND);
    FREE_RES(r);
    /* a delete whose range_end is present but the key is empty */
    r = kvt_del(&t, "", "z", false);
    cr_assert_str_eq(r->message, KV_ERR_EMPTY_KEY);
    FREE_RES(r);
    cr_assert_eq(kvt_rev(&t), 1);
    cr_assert_eq(kvt_count(&t), 1);
    cr_assert_eq(kv_store_applied_index(t.s), t.index);
    kvt_close(&t);
}

Test(kv_storage, full_map_is_an_entry_error_and_the_store_stays_usable)
{
    struct kvt t;
    struct kv_store_opts o = {.map_size = 1 << 20};
    kvt_open(&t, &o);
    size_t vlen = 100 << 10;
    char *big = malloc(vlen);
    memset(big, 'x', vlen);
    int i, code = 0;
    Craft__Kv__Result *r = NULL;
    for (i = 0; i < 40; i++) {
        char key[16];
        snprintf(key, sizeof key, "big%02d", i);
        size_t len;
        uint8_t *cmd = put_cmd(key, big, vlen, &len);
        r = kvt_apply(&t, cmd, len, &code);
        free(cmd);
        if (code)
            break;
        FREE_RES(r);
    }
    cr_assert_lt(i, 40, "a 1 MiB map must fill up");
    cr_assert_eq(code, KV_CODE_RESOURCE_EXHAUSTED);
    cr_assert_str_eq(r->message, KV_ERR_NO_SPACE);
    FREE_RES(r);
    cr_assert_eq(kvt_rev(&t), i, "the failed put made no revision");
    cr_assert_eq(kvt_count(&t), i);
    cr_assert_eq(kv_store_applied_index(t.s), t.index, "the failed entry still counts as applied");

    /* a batch that mixes fitting and non-fitting entries: each gets its own result */
    struct raft_entry es[3];
    size_t len;
    es[0] = (struct raft_entry){.index = ++t.index, .type = RAFT_ENTRY_NORMAL};
    es[0].data = put_cmd("small1", "s", 1, &len);
    es[0].len = (uint32_t)len;
    es[1] = (struct raft_entry){.index = ++t.index, .type = RAFT_ENTRY_NORMAL};
    es[1].data = put_cmd("huge", big, vlen, &len);
    es[1].len = (uint32_t)len;
    es[2] = (struct raft_entry){.index = ++t.index, .type = RAFT_ENTRY_NORMAL};
    es[2].data = put_cmd("small2", "s", 1, &len);
    es[2].len = (uint32_t)len;
    struct raft_fsm_result res[3] = {{0}};
    struct raft_fsm *f = kv_store_fsm(t.s);
    cr_assert_eq(f->apply(f->ctx, es, 3, t.index, res), 0);
    cr_assert_eq(res[0].code, 0);
    cr_assert_eq(res[1].code, KV_CODE_RESOURCE_EXHAUSTED);
    cr_assert_eq(res[2].code, 0);
    Craft__Kv__Result *r2 = kv_result_decode(res[2].data, res[2].len);
    cr_assert_eq(r2->put->header->revision, i + 2);
    FREE_RES(r2);
    free_results(res, 3);
    for (int j = 0; j < 3; j++)
        free(es[j].data);
    cr_assert_eq(kv_store_applied_index(t.s), t.index);
    cr_assert_eq(kvt_rev(&t), i + 2);

    /* deleting frees room for the next big value */
    r = kvt_del(&t, "big", "bih", false);
    cr_assert_eq(r->code, 0, "%s", r->message);
    cr_assert_eq(r->delete_range->deleted, i);
    FREE_RES(r);
    /* LMDB reuses pages freed by a transaction only once a later one has committed (the
     * previous snapshot stays intact until then): one small write in between */
    kvt_put_ok(&t, "tick", "t");
    size_t clen;
    uint8_t *cmd = put_cmd("again", big, vlen, &clen);
    r = kvt_apply(&t, cmd, clen, &code);
    free(cmd);
    cr_assert_eq(code, 0, "%s", r->message);
    FREE_RES(r);
    int64_t size, used;
    cr_assert_eq(kv_store_status(t.s, NULL, NULL, &size, &used), 0);
    cr_assert_leq(size, 1 << 20);
    cr_assert_leq(used, size);
    kvt_reopen(&t);
    cr_assert_eq(kvt_count(&t), 4); /* small1, small2, tick, again */
    free(big);
    kvt_close(&t);
}

static void expect_open_error(const char *dir, const char *needle)
{
    char err[256] = "";
    struct kv_store *s = kv_store_open(dir, NULL, err, sizeof err);
    cr_assert_null(s, "open of %s must fail", dir);
    cr_assert(strstr(err, needle), "error '%s' lacks '%s'", err, needle);
}

Test(kv_storage, bad_files_at_open_are_clear_errors)
{
    char dir[] = "/tmp/kvbad.XXXXXX", path[128];
    cr_assert(mkdtemp(dir));
    /* a corrupt data file */
    snprintf(path, sizeof path, "%s/data.mdb", dir);
    FILE *fp = fopen(path, "w");
    for (int i = 0; i < 5000; i++)
        fputs("not lmdb ", fp);
    fclose(fp);
    expect_open_error(dir, "not an LMDB file");
    /* a data file that cannot be opened for writing: a directory in its place */
    remove(path);
    cr_assert_eq(mkdir(path, 0700), 0);
    expect_open_error(dir, "data.mdb");
    rmdir(path);
    /* no such directory; a file instead of a directory */
    expect_open_error("/tmp/kv-no-such-dir/x", "No such file");
    snprintf(path, sizeof path, "%s/file", dir);
    fclose(fopen(path, "w"));
    expect_open_error(path, "not a directory");
    remove(path);
    /* an LMDB store of something else */
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    cr_assert_eq(mdb_env_create(&env), 0);
    mdb_env_set_maxdbs(env, 4);
    cr_assert_eq(mdb_env_open(env, dir, 0, 0600), 0);
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    cr_assert_eq(mdb_dbi_open(txn, "meta", MDB_CREATE, &dbi), 0);
    MDB_val k = {6, "format"}, v = {5, "other"};
    cr_assert_eq(mdb_put(txn, dbi, &k, &v, 0), 0);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    expect_open_error(dir, "not a craft KV store");
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
    /* bad options */
    struct kv_store_opts o = {.map_size = 1000};
    char err[256];
    cr_assert_null(kv_store_open("/tmp", &o, err, sizeof err));
    cr_assert(strstr(err, "map size"));
}

Test(kv_storage, second_open_is_refused_while_locked)
{
    struct kvt t;
    kvt_open(&t, NULL);
    expect_open_error(t.dir, "locked");
    kv_store_close(t.s);
    char err[256];
    t.s = kv_store_open(t.dir, NULL, err, sizeof err);
    cr_assert(t.s, "reopen after close: %s", err);
    kvt_close(&t);
}

/* Readers on other threads while the applier writes: each read sees whole batches. Every batch
 * writes the same value to keys a and b (a txn), so a read that sees them differ saw half. */
struct reader_arg {
    struct kv_store *s;
    _Atomic int *stop;
    _Atomic long reads, torn;
};

static void *reader(void *p)
{
    struct reader_arg *a = p;
    Etcdserverpb__RangeRequest r;
    kvt_range_req(&r, "a", "c");
    while (!*a->stop) {
        Etcdserverpb__RangeResponse *resp = NULL;
        struct kv_err err;
        if (kv_store_range(a->s, &r, &resp, &err) == 0) {
            if (resp->n_kvs == 2 &&
                (resp->kvs[0]->value.len != resp->kvs[1]->value.len ||
                 memcmp(resp->kvs[0]->value.data, resp->kvs[1]->value.data,
                        resp->kvs[0]->value.len) != 0 ||
                 resp->kvs[0]->mod_revision != resp->header->revision))
                a->torn++;
            etcdserverpb__range_response__free_unpacked(resp, NULL);
            a->reads++;
        }
    }
    return NULL;
}

Test(kv_storage, concurrent_reads_see_whole_batches)
{
    struct kvt t;
    kvt_open(&t, NULL);
    _Atomic int stop = 0;
    struct reader_arg a[2] = {{.s = t.s, .stop = &stop}, {.s = t.s, .stop = &stop}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pthread_create(&th[i], NULL, reader, &a[i]), 0);
    /* At least 300 batches, and on until each reader has read 50 times while batches were being
     * written (an unsynced apply is fast enough to finish 300 before a reader starts); bounded. */
    int i;
    for (i = 0; i < 300 || ((a[0].reads < 50 || a[1].reads < 50) && i < 1000000); i++) {
        char v[16];
        snprintf(v, sizeof v, "%d", i);
        Etcdserverpb__TxnRequest *x = kb_txn();
        kb_put(x, 0, "a", v, false);
        kb_put(x, 0, "b", v, false);
        Craft__Kv__Result *r = kvt_txn(&t, x);
        cr_assert_eq(r->code, 0);
        FREE_RES(r);
        kb_free(x);
    }
    stop = 1;
    for (int k = 0; k < 2; k++)
        pthread_join(th[k], NULL);
    for (int k = 0; k < 2; k++) {
        cr_assert_eq(a[k].torn, 0, "reader %d saw %ld torn batches", k, (long)a[k].torn);
        cr_assert_geq(a[k].reads, 50, "reader %d read %ld times in %d batches", k,
                      (long)a[k].reads, i);
    }
    kvt_close(&t);
}

/* ---- bytes in use (kv_store_size_in_use, the quota check's number) ---- */

/* The bytes in use the long way: the file's pages minus those on LMDB's free list, walked record
 * by record (each record's value is a page list whose first word is its length). The store must
 * be closed: a process must not open one LMDB environment twice. */
static int64_t walked_in_use(const char *dir)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_cursor *cur;
    cr_assert_eq(mdb_env_create(&env), 0);
    cr_assert_eq(mdb_env_set_maxdbs(env, 6), 0);
    cr_assert_eq(mdb_env_open(env, dir, MDB_RDONLY, 0600), 0);
    cr_assert_eq(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
    cr_assert_eq(mdb_cursor_open(txn, 0, &cur), 0);
    int64_t free_pages = 0;
    MDB_val k, v;
    for (int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        size_t n;
        cr_assert_geq(v.mv_size, sizeof n);
        memcpy(&n, v.mv_data, sizeof n);
        free_pages += (int64_t)n;
    }
    mdb_cursor_close(cur);
    MDB_envinfo info;
    MDB_stat st;
    mdb_env_info(env, &info);
    mdb_env_stat(env, &st);
    mdb_txn_abort(txn);
    mdb_env_close(env);
    return ((int64_t)info.me_last_pgno + 1 - free_pages) * (int64_t)st.ms_psize;
}

/* The accessor agrees with kv_store_status, and returns its value in use. */
static int64_t in_use_now(struct kvt *t)
{
    int64_t in_use = kv_store_size_in_use(t->s), size, status_in_use;
    cr_assert_eq(kv_store_status(t->s, NULL, NULL, &size, &status_in_use), 0);
    cr_assert_eq(in_use, status_in_use, "accessor %lld, status %lld", (long long)in_use,
                 (long long)status_in_use);
    cr_assert_leq(in_use, size);
    return in_use;
}

/* Closes the store, checks its last number against the file walked page by page, reopens it and
 * checks that open computes the same number before anything is applied. */
static int64_t in_use_across_restart(struct kvt *t)
{
    int64_t in_use = in_use_now(t);
    kv_store_close(t->s);
    t->s = NULL;
    /* Exact: no database is DUPSORT (kv_store.c size_in_use). */
    int64_t walked = walked_in_use(t->dir);
    cr_assert_eq(in_use, walked, "the file's pages minus its free pages: walked %lld, in use %lld",
                 (long long)walked, (long long)in_use);
    char err[256];
    t->s = kv_store_open(t->dir, &t->opts, err, sizeof err);
    cr_assert(t->s, "reopen: %s", err);
    cr_assert_eq(kv_store_size_in_use(t->s), in_use, "right after open");
    return in_use;
}

Test(kv_storage, size_in_use_follows_puts_deletes_compaction_and_restart)
{
    struct kvt t;
    kvt_open(&t, NULL);
    int64_t prev = in_use_across_restart(&t);
    cr_assert_gt(prev, 0, "a new store has its meta pages and databases");
    /* 3000-byte values: one overflow page each, so every put grows the store by a page. */
    char val[3001];
    memset(val, 'v', sizeof val - 1);
    val[sizeof val - 1] = '\0';
    struct raft_fsm_result res[50];
    for (int b = 0; b < 4; b++) {
        memset(res, 0, sizeof res); /* fsm.h: the caller zeroes the results */
        cr_assert_eq(apply_batch(&t, b * 50, 50, val, 0, res), 0);
        free_results(res, 50);
        int64_t now = in_use_now(&t);
        cr_assert_geq(now, prev + 50 * 3000, "batch %d: %lld after %lld", b, (long long)now,
                      (long long)prev);
        prev = now;
    }
    int64_t full = in_use_across_restart(&t);

    /* Deleting half the keys puts their pages on the free list: the number drops at once. */
    Craft__Kv__Result *r = kvt_del(&t, "key0000", "key0100", false);
    cr_assert_eq(r->code, 0, "%s", r->message);
    cr_assert_eq(r->delete_range->deleted, 100);
    FREE_RES(r);
    int64_t after_del = in_use_now(&t), size;
    cr_assert_lt(after_del, full - 100 * 3000, "%lld after %lld", (long long)after_del,
                 (long long)full);
    cr_assert_eq(kv_store_status(t.s, NULL, NULL, &size, NULL), 0);
    cr_assert_gt(size, after_del, "the free pages stay in the file");
    int64_t crev = kvt_rev(&t);
    r = kvt_compact(&t, crev);
    cr_assert_eq(r->code, 0, "%s", r->message);
    FREE_RES(r);
    /* The removal runs in the background, pausing between batches: wait for all of it, or a
     * removal still going on after the restart below frees pages while the last put is
     * measured. */
    cr_assert_eq(kv_store_compact_wait(t.s, crev, 30000), 0);
    in_use_now(&t);
    /* With a long free list now, the walked file agrees and a restart computes the same. */
    int64_t after = in_use_across_restart(&t);
    cr_assert_lt(after, full);
    /* Puts reuse the freed pages and the number grows again. */
    kvt_put_ok(&t, "again", val);
    cr_assert_gt(in_use_now(&t), after);
    kvt_close(&t);
}

/* A batch that overflows the map goes one entry per transaction (apply_isolated); the number
 * is published there too. */
Test(kv_storage, size_in_use_after_a_batch_that_filled_the_map)
{
    struct kvt t;
    struct kv_store_opts o = {.map_size = 1 << 20};
    kvt_open(&t, &o);
    int64_t before = in_use_now(&t);
    size_t vlen = 100 << 10;
    char *big = malloc(vlen + 1);
    memset(big, 'x', vlen);
    big[vlen] = '\0';
    struct raft_fsm_result res[12] = {{0}};
    cr_assert_eq(apply_batch(&t, 0, 12, big, 0, res), 0);
    int ok = 0, full = 0;
    for (int i = 0; i < 12; i++) {
        ok += res[i].code == 0;
        full += res[i].code == KV_CODE_RESOURCE_EXHAUSTED;
    }
    free_results(res, 12);
    cr_assert(ok > 0 && full > 0 && ok + full == 12, "%d fitted, %d did not", ok, full);
    cr_assert_geq(in_use_now(&t), before + ok * (int64_t)vlen);
    in_use_across_restart(&t);
    free(big);
    kvt_close(&t);
}
