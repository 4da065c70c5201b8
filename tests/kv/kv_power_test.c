/* kv_power_test.c: power loss under the KV store's own writes (kv_store.h "Durability"). LMDB's
 * and kv.state's system calls go through tests/kv/lazy_lmdb into tests/wal/lazy_io, which
 * drops every write not yet synced at a simulated power cut (lazy_io_crash; lazy_io_crash_torn
 * keeps a random half of the unsynced pages, as a disk without write order might), as LazyFS
 * does under etcd's robustness tests. A store whose power was cut is torn down with the power
 * still off (its close can make nothing durable), then reopened as another boot of the
 * machine. It must then be discarded, saying so, or hold exactly the state of the applied index
 * it reports - and whatever its mode promises: everything after a clean close, every batch but
 * the last with sync_every_batch. Key i (from 0) is put at log index i + 1 with value v<i>.
 * Also: a single Raft member running the store (its log under lazy_io too) restarted after a
 * power cut holds exactly the acknowledged puts; and LMDB alone, to pin down which of its
 * writes survive under each sync flag (its O_DSYNC meta-page descriptor included). */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "raft/core/raft.h"
#include "raft/node/node.h"
#include "services/kvstore/kv_cmd.h"
#include "tests/kv/kv_test_util.h"
#include "tests/kv/lazy_lmdb.h"
#include "tests/wal/lazy_io.h"

/* Applies the put of key i as the next log entry: the fsm's return (0, or -EIO once the
 * power is off). */
static int try_put(struct kvt *t, int i, size_t vlen)
{
    char key[32], val[2048];
    snprintf(key, sizeof key, "key%04d", i);
    int n = snprintf(val, sizeof val, "v%d", i);
    if (vlen > (size_t)n && vlen < sizeof val) {
        memset(val + n, '.', vlen - (size_t)n);
        val[vlen] = 0;
    }
    Etcdserverpb__PutRequest p = ETCDSERVERPB__PUT_REQUEST__INIT;
    p.key = kvt_bin(key);
    p.value = kvt_bin(val);
    uint8_t *cmd;
    size_t len;
    cr_assert_eq(kv_cmd_encode_put(&p, &cmd, &len), 0);
    struct raft_entry e = {.index = t->index + 1, .term = 1, .type = RAFT_ENTRY_NORMAL,
                           .data = cmd, .len = (uint32_t)len};
    struct raft_fsm_result res = {0};
    struct raft_fsm *f = kv_store_fsm(t->s);
    int rc = f->apply(f->ctx, &e, 1, e.index, &res);
    if (rc == 0) {
        cr_assert_eq(res.code, 0, "put %s: code %d", key, res.code);
        t->index = e.index;
    }
    free(cmd);
    free(res.data);
    return rc;
}

static void put_keys(struct kvt *t, int first, int n)
{
    for (int i = first; i < first + n; i++)
        cr_assert_eq(try_put(t, i, 0), 0, "put %d failed", i);
}

/* A store in a new directory whose files go through the layer. */
static void open_tracked(struct kvt *t, const struct kv_store_opts *o)
{
    memset(t, 0, sizeof *t);
    snprintf(t->dir, sizeof t->dir, "/tmp/kvpower.XXXXXX");
    cr_assert(mkdtemp(t->dir));
    lazy_lmdb_track(t->dir);
    t->opts = *o;
    char err[256];
    t->s = kv_store_open(t->dir, &t->opts, err, sizeof err);
    cr_assert(t->s, "open: %s", err);
    cr_assert_eq(kv_store_applied_index(t->s), 0);
}

/* Power cut now: unsynced writes dropped, then the store torn down with the power still off
 * (nothing it does on the way can reach the disk), then the power back. Returns how many writes
 * were dropped. */
static size_t cut_power(struct kvt *t)
{
    size_t dropped = lazy_io_crash(t->dir);
    kv_store_close(t->s);
    t->s = NULL;
    lazy_io_revive(t->dir);
    return dropped;
}

static void reopen_as(struct kvt *t, const char *boot)
{
    t->opts.boot_id = boot;
    char err[256];
    t->s = kv_store_open(t->dir, &t->opts, err, sizeof err);
    cr_assert(t->s, "reopen after the power cut: %s", err);
    t->index = kv_store_applied_index(t->s);
}

/* Whether the store holds exactly keys 0 .. nkeys-1 with their values and revisions, at
 * revision nkeys, and nothing else: false with what is wrong in why[len]. Asserts nothing (it
 * also runs in a child). */
static bool exact_keys(struct kvt *t, uint64_t nkeys, char *why, size_t len)
{
    uint64_t applied = kv_store_applied_index(t->s);
    int64_t rev = -1;
    bool ok = true;
    if (kv_store_status(t->s, &rev, NULL, NULL, NULL) != 0 || rev != (int64_t)nkeys) {
        snprintf(why, len, "revision %lld at applied index %llu, expected %llu", (long long)rev,
                 (unsigned long long)applied, (unsigned long long)nkeys);
        return false;
    }
    Etcdserverpb__RangeRequest r;
    kvt_range_req(&r, KVT_FROM, KVT_FROM);
    Etcdserverpb__RangeResponse *resp = NULL;
    struct kv_err e;
    if (kv_store_range(t->s, &r, &resp, &e) != 0) {
        snprintf(why, len, "range failed at applied index %llu: %s", (unsigned long long)applied,
                 e.msg);
        return false;
    }
    if (resp->n_kvs != nkeys) {
        snprintf(why, len, "at applied index %llu the store holds %zu keys, expected %llu",
                 (unsigned long long)applied, resp->n_kvs, (unsigned long long)nkeys);
        ok = false;
    }
    for (size_t i = 0; ok && i < resp->n_kvs; i++) {
        char key[32], val[32];
        snprintf(key, sizeof key, "key%04zu", i);
        int vl = snprintf(val, sizeof val, "v%zu", i);
        const Mvccpb__KeyValue *kv = resp->kvs[i];
        ok = kv->key.len == strlen(key) && !memcmp(kv->key.data, key, kv->key.len) &&
             kv->value.len >= (size_t)vl && !memcmp(kv->value.data, val, (size_t)vl) &&
             (vl == (int)kv->value.len || kv->value.data[vl] == '.') &&
             kv->mod_revision == (int64_t)i + 1;
        if (!ok)
            snprintf(why, len, "at applied index %llu, key %zu is %.*s=%.*s (rev %lld), "
                     "expected %s=%s (rev %zu)", (unsigned long long)applied, i,
                     (int)kv->key.len, (const char *)kv->key.data,
                     (int)(kv->value.len < 16 ? kv->value.len : 16),
                     (const char *)kv->value.data, (long long)kv->mod_revision, key, val, i + 1);
    }
    etcdserverpb__range_response__free_unpacked(resp, NULL);
    return ok;
}

/* The store holds exactly the state of the applied index it reports (or was discarded: index
 * 0, empty): key i put at index i + 1. */
static bool exact_state(struct kvt *t, char *why, size_t len)
{
    return exact_keys(t, kv_store_applied_index(t->s), why, len);
}

/* Asserts exact_state; returns the applied index. */
static uint64_t check_exact(struct kvt *t, const char *what)
{
    char why[512];
    cr_assert(exact_state(t, why, sizeof why), "%s: %s", what, why);
    return kv_store_applied_index(t->s);
}

static void assert_discarded(struct kvt *t, const char *what, size_t dropped)
{
    cr_assert(strstr(kv_store_open_note(t->s), "machine restarted") &&
                  kv_store_applied_index(t->s) == 0,
              "%s: a store left dirty by boot-A, %zu unsynced writes dropped by the power cut, "
              "was trusted by boot-B (applied index %llu, note \"%s\"); it may be torn and must "
              "be discarded",
              what, dropped, (unsigned long long)kv_store_applied_index(t->s),
              kv_store_open_note(t->s));
}

/* A sync interval far longer than any test: only the test's own syncs and close's happen. */
static const struct kv_store_opts lazy_opts = {.boot_id = "boot-A", .sync_interval_ms = 60000};
static const struct kv_store_opts batch_opts = {.boot_id = "boot-A", .sync_every_batch = true};

Test(kv_power, lmdb_and_kv_state_writes_go_through_the_layer)
{
    struct kvt t;
    struct lazy_lmdb_counts c0, c;
    lazy_lmdb_counts(&c0);
    open_tracked(&t, &lazy_opts);
    /* 1 KiB values: several leaf pages per commit, written as one lseek + writev run. */
    for (int i = 0; i < 40; i++)
        cr_assert_eq(try_put(&t, i, 1000), 0);
    lazy_lmdb_counts(&c);
    cr_assert_gt(c.pwrite, c0.pwrite, "no pwrite of LMDB's reached the layer");
    cr_assert_gt(c.writev, c0.writev, "no writev of LMDB's reached the layer");
    cr_assert_gt(c.write, c0.write, "kv.state's write did not reach the layer");
    cr_assert_gt(c.fdatasync, c0.fdatasync, "kv.state's fdatasync did not reach the layer");
    cr_assert_eq(c.dsync_writes, c0.dsync_writes, "lazy mode wrote through LMDB's O_DSYNC fd");
    cr_assert_gt(lazy_io_unsynced(t.dir), 0, "the store's commits are not kept as unsynced");
    size_t syncs = c.fdatasync;
    cr_assert_eq(kv_store_sync(t.s), 0);
    lazy_lmdb_counts(&c);
    cr_assert_gt(c.fdatasync, syncs, "mdb_env_sync's fdatasync did not reach the layer");
    cr_assert_eq(lazy_io_unsynced(t.dir), 0, "kv_store_sync left writes unsynced");
    kvt_close(&t);
}

Test(kv_power, o_dsync_writes_survive_and_others_do_not)
{
    char dir[] = "/tmp/kvpower.XXXXXX", path[64];
    cr_assert(mkdtemp(dir));
    lazy_lmdb_track(dir);
    snprintf(path, sizeof path, "%s/f", dir);
    int fd = open(path, O_RDWR | O_CREAT, 0600), dfd;
    cr_assert_geq(fd, 0);
    cr_assert_eq(pwrite(fd, "aaaaaaaa", 8, 0), 8);
    cr_assert_eq(fdatasync(fd), 0);
    cr_assert_eq(pwrite(fd, "bbbbbbbb", 8, 0), 8); /* lost */
    cr_assert_geq(dfd = open(path, O_WRONLY | O_DSYNC), 0);
    cr_assert_eq(pwrite(dfd, "cc", 2, 2), 2); /* durable at once, like LMDB's meta writes */
    struct iovec iov[2] = {{"dd", 2}, {"ee", 2}};
    cr_assert_eq(lseek(fd, 8, SEEK_SET), 8);
    cr_assert_eq(writev(fd, iov, 2), 4); /* lost: the file shrinks back */
    cr_assert_eq(lseek(fd, 0, SEEK_CUR), 12);
    cr_assert_eq(write(fd, "ff", 2), 2);
    char buf[16] = "";
    cr_assert_eq(pread(fd, buf, sizeof buf, 0), 14);
    cr_assert_str_eq(buf, "bbccbbbbddeeff");
    cr_assert_eq(lazy_io_crash(dir), 3); /* the pwrite, the writev, the write */
    cr_assert_eq(pwrite(fd, "x", 1, 0), -1, "a write with the power off succeeded");
    cr_assert_eq(errno, EIO);
    cr_assert_eq(fsync(fd), -1);
    lazy_io_revive(dir);
    memset(buf, 0, sizeof buf);
    cr_assert_eq(pread(fd, buf, sizeof buf, 0), 8);
    cr_assert_str_eq(buf, "aaccaaaa");
    close(fd);
    close(dfd);
    unlink(path);
    lazy_lmdb_untrack(dir);
    rmdir(dir);
}

Test(kv_power, lazy_store_with_unsynced_writes_is_discarded)
{
    struct kvt t;
    open_tracked(&t, &lazy_opts);
    put_keys(&t, 0, 20);
    cr_assert_eq(kv_store_sync(t.s), 0);
    put_keys(&t, 20, 30);
    size_t dropped = cut_power(&t);
    cr_assert_gt(dropped, 0);
    reopen_as(&t, "boot-B");
    check_exact(&t, "lazy store, power cut with unsynced writes");
    assert_discarded(&t, "lazy store, power cut with unsynced writes", dropped);
    /* Rebuilt from the log, it works again. */
    put_keys(&t, 0, 5);
    check_exact(&t, "rebuilt store");
    kvt_close(&t);
}

Test(kv_power, clean_close_survives_a_power_cut)
{
    struct kvt t;
    open_tracked(&t, &lazy_opts);
    put_keys(&t, 0, 40);
    kv_store_close(t.s);
    t.s = NULL;
    size_t dropped = lazy_io_crash(t.dir);
    lazy_io_revive(t.dir);
    reopen_as(&t, "boot-B");
    uint64_t applied = check_exact(&t, "power cut after a clean close");
    cr_assert_eq(applied, 40,
                 "power cut after a clean close: the store came back at applied index %llu, "
                 "40 were applied before close (%zu writes were still unsynced after close)",
                 (unsigned long long)applied, dropped);
    cr_assert_str_empty(kv_store_open_note(t.s));
    kvt_close(&t);
}

Test(kv_power, every_batch_store_keeps_all_but_the_last_batch)
{
    struct kvt t;
    open_tracked(&t, &batch_opts);
    put_keys(&t, 0, 30);
    cut_power(&t);
    reopen_as(&t, "boot-B");
    cr_assert_str_empty(kv_store_open_note(t.s));
    uint64_t applied = check_exact(&t, "every-batch store, power cut under load");
    /* Each commit's fdatasync makes its pages and the previous commit's meta page durable. */
    cr_assert_geq(applied, 29,
                  "every-batch store, power cut under load: came back at applied index %llu, "
                  "30 batches were committed (each commit syncs, so at least 29 must survive)",
                  (unsigned long long)applied);
    kvt_close(&t);
}

struct cut_at {
    const char *dir;
    uint64_t at, fired; /* cut at the at-th sync from now */
    size_t dropped;     /* by the cut */
};

static void cut_on_sync(void *arg, uint64_t n)
{
    struct cut_at *c = arg;
    if (!c->fired && n == c->at) {
        c->fired = n;
        c->dropped = lazy_io_crash(c->dir);
    }
}

static void cut_at_sync(struct cut_at *c, const char *dir, uint64_t after)
{
    struct lazy_lmdb_counts k;
    lazy_lmdb_counts(&k);
    *c = (struct cut_at){dir, k.fdatasync + k.fsync + after, 0, 0};
    lazy_lmdb_on_sync(cut_on_sync, c);
}

Test(kv_power, every_batch_power_cut_inside_a_commit_sync)
{
    struct kvt t;
    open_tracked(&t, &batch_opts);
    struct cut_at c;
    cut_at_sync(&c, t.dir, 12); /* inside the 12th batch's fdatasync */
    int rc = 0, i;
    for (i = 0; i < 40 && (rc = try_put(&t, i, 0)) == 0; i++)
        ;
    lazy_lmdb_on_sync(NULL, NULL);
    uint64_t acked = t.index;
    cr_assert(c.fired, "the store synced fewer than 12 times in 40 batches (%d applied)", i);
    cr_assert_eq(rc, -EIO, "the batch whose sync lost power returned %d", rc);
    cr_assert_eq(acked, 11);
    if (!c.fired)
        lazy_io_crash(t.dir);
    kv_store_close(t.s);
    lazy_io_revive(t.dir);
    reopen_as(&t, "boot-B");
    cr_assert_str_empty(kv_store_open_note(t.s));
    uint64_t applied = check_exact(&t, "every-batch store, power cut inside a commit's sync");
    cr_assert_geq(applied + 1, acked,
                  "every-batch store: came back at applied index %llu after %llu batches were "
                  "acknowledged", (unsigned long long)applied, (unsigned long long)acked);
    kvt_close(&t);
}

Test(kv_power, lazy_power_cut_inside_a_background_sync)
{
    struct kvt t;
    open_tracked(&t, &lazy_opts);
    put_keys(&t, 0, 20);
    struct cut_at c;
    cut_at_sync(&c, t.dir, 1);
    cr_assert_eq(kv_store_sync(t.s), -EIO); /* what the syncer thread runs */
    lazy_lmdb_on_sync(NULL, NULL);
    cr_assert(c.fired);
    cr_assert_neq(try_put(&t, 20, 0), 0, "apply went on after a failed sync");
    kv_store_close(t.s);
    lazy_io_revive(t.dir);
    reopen_as(&t, "boot-B");
    check_exact(&t, "lazy store, power cut inside a sync");
    assert_discarded(&t, "lazy store, power cut inside a sync", c.dropped);
    kvt_close(&t);
}

Test(kv_power, power_cut_inside_close_final_sync)
{
    struct kvt t;
    open_tracked(&t, &lazy_opts);
    put_keys(&t, 0, 20);
    struct cut_at c;
    cut_at_sync(&c, t.dir, 1);
    kv_store_close(t.s); /* its final sync loses power: it must not mark the store clean */
    t.s = NULL;
    lazy_lmdb_on_sync(NULL, NULL);
    cr_assert(c.fired);
    lazy_io_revive(t.dir);
    reopen_as(&t, "boot-B");
    check_exact(&t, "lazy store, power cut inside close's sync");
    assert_discarded(&t, "lazy store, power cut inside close's sync", c.dropped);
    kvt_close(&t);
}

/* ---- torn power cuts: the disk wrote back some unsynced pages and not others ---- */

/* How reopen_in_child judges the store. */
#define DISCARDED 0          /* exact_state, and discarded */
#define READABLE UINT64_MAX  /* opens, and a read of everything succeeds */
/* (else: exact_state, trusted, at least at that applied index) */

/* After a power cut under t->dir: reopens it as boot-B in a child process (a torn store wrongly
 * trusted may make LMDB abort or crash) and says what is wrong in why[len], or returns true.
 * The open's own changes stay: discarding the store, marking it. */
static bool reopen_in_child(struct kvt *t, uint64_t min_applied, char *why, size_t len)
{
    int p[2];
    cr_assert_eq(pipe(p), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        char msg[512] = "";
        t->opts.boot_id = "boot-B";
        char err[256];
        t->s = kv_store_open(t->dir, &t->opts, err, sizeof err);
        Etcdserverpb__RangeRequest r;
        Etcdserverpb__RangeResponse *resp = NULL;
        struct kv_err e;
        if (!t->s)
            snprintf(msg, sizeof msg, "reopen failed: %s", err);
        else if (min_applied == READABLE) {
            kvt_range_req(&r, KVT_FROM, KVT_FROM);
            if (kv_store_range(t->s, &r, &resp, &e) != 0)
                snprintf(msg, sizeof msg, "a read of everything failed: %s", e.msg);
        } else if (exact_state(t, msg, sizeof msg)) {
            uint64_t applied = kv_store_applied_index(t->s);
            const char *note = kv_store_open_note(t->s);
            if (!min_applied && !strstr(note, "machine restarted"))
                snprintf(msg, sizeof msg, "trusted at applied index %llu (note \"%s\"), not "
                         "discarded", (unsigned long long)applied, note);
            else if (min_applied && (applied < min_applied || note[0]))
                snprintf(msg, sizeof msg, "came back at applied index %llu (note \"%s\"), "
                         "expected at least %llu", (unsigned long long)applied, note,
                         (unsigned long long)min_applied);
        }
        ssize_t n = write(p[1], msg, strlen(msg));
        _exit(n < 0 ? 2 : 0);
    }
    close(p[1]);
    ssize_t n = read(p[0], why, len - 1);
    close(p[0]);
    why[n > 0 ? n : 0] = 0;
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    if (WIFSIGNALED(st))
        snprintf(why, len, "reopening it killed the process (signal %d): LMDB read a torn "
                 "store", WTERMSIG(st));
    return !why[0];
}

#define TORN_SEEDS 8

Test(kv_power, lazy_store_torn_by_a_power_cut_is_discarded)
{
    for (unsigned seed = 1; seed <= TORN_SEEDS; seed++) {
        struct kvt t;
        open_tracked(&t, &lazy_opts);
        for (int i = 0; i < 60; i++) {
            cr_assert_eq(try_put(&t, i, 700), 0);
            if (i == 19)
                cr_assert_eq(kv_store_sync(t.s), 0);
        }
        size_t dropped = lazy_io_crash_torn(t.dir, seed);
        cr_assert_gt(dropped, 0);
        kv_store_close(t.s);
        t.s = NULL;
        lazy_io_revive(t.dir);
        char why[512];
        cr_assert(reopen_in_child(&t, DISCARDED, why, sizeof why),
                  "lazy store left dirty by boot-A, torn power cut (seed %u, %zu unsynced "
                  "writes): %s", seed, dropped, why);
        kvt_close(&t);
    }
}

Test(kv_power, every_batch_store_torn_by_a_power_cut_keeps_all_but_the_last_batch)
{
    for (unsigned seed = 1; seed <= TORN_SEEDS; seed++) {
        struct kvt t;
        open_tracked(&t, &batch_opts);
        for (int i = 0; i < 60; i++)
            cr_assert_eq(try_put(&t, i, 700), 0);
        size_t dropped = lazy_io_crash_torn(t.dir, seed);
        kv_store_close(t.s);
        t.s = NULL;
        lazy_io_revive(t.dir);
        char why[512];
        cr_assert(reopen_in_child(&t, 59, why, sizeof why),
                  "every-batch store, torn power cut after 60 batches (seed %u, %zu unsynced "
                  "writes): %s", seed, dropped, why);
        kvt_close(&t);
    }
}

/* ---- a Raft member running the store: its log and its store lose power together ---- */

struct member {
    char base[32], raft_dir[64], kv_dir[64];
    struct kv_store_opts opts;
    struct kv_store *s;
    struct raft_node *n;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool leader;
};

static int no_send(void *ctx, uint64_t to, const struct raft_msg *m, size_t n)
{
    (void)ctx, (void)to, (void)m, (void)n;
    return 0; /* a single member: nobody to send to */
}
static void no_close(void *ctx, uint64_t to) { (void)ctx, (void)to; }
static struct raft_transport alone = {NULL, no_send, NULL, no_close, NULL};

static void on_role(void *arg, uint64_t id, uint8_t role, uint64_t term, uint64_t leader)
{
    (void)id, (void)term, (void)leader;
    struct member *m = arg;
    pthread_mutex_lock(&m->mu);
    m->leader = role == RAFT_LEADER;
    pthread_cond_broadcast(&m->cv);
    pthread_mutex_unlock(&m->mu);
}

/* Opens the store as boot, starts the member on it and waits until it leads. */
static void member_start(struct member *m, const char *boot)
{
    m->opts.boot_id = boot;
    char err[512];
    m->s = kv_store_open(m->kv_dir, &m->opts, err, sizeof err);
    cr_assert(m->s, "open the store as %s: %s", boot, err);
    struct raft_node_config cfg;
    raft_node_config_default(&cfg);
    static const uint64_t peers[] = {1};
    cfg.id = 1;
    cfg.peers = peers;
    cfg.n_peers = 1;
    cfg.data_dir = m->raft_dir;
    cfg.fsm = kv_store_fsm(m->s);
    cfg.transport = &alone;
    cfg.heartbeat_ms = 10;
    cfg.election_ms = 40;
    cfg.wal_segment_bytes = 8u << 20;
    cfg.wal_io = lazy_io();
    cfg.on_role = on_role;
    cfg.on_role_arg = m;
    m->leader = false;
    m->n = raft_node_start(&cfg, err, sizeof err);
    cr_assert(m->n, "start the member: %s", err);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 10;
    pthread_mutex_lock(&m->mu);
    while (!m->leader && pthread_cond_timedwait(&m->cv, &m->mu, &ts) == 0)
        ;
    bool led = m->leader;
    pthread_mutex_unlock(&m->mu);
    cr_assert(led, "the single member did not become leader in 10 s");
}

/* Proposes the put of key i and waits until it is applied; returns its log index. */
static uint64_t member_put(struct member *m, int i)
{
    char key[32], val[2048];
    snprintf(key, sizeof key, "key%04d", i);
    int n = snprintf(val, sizeof val, "v%d", i);
    memset(val + n, '.', 700 - (size_t)n);
    val[700] = 0;
    Etcdserverpb__PutRequest p = ETCDSERVERPB__PUT_REQUEST__INIT;
    p.key = kvt_bin(key);
    p.value = kvt_bin(val);
    uint8_t *cmd;
    size_t len;
    cr_assert_eq(kv_cmd_encode_put(&p, &cmd, &len), 0);
    struct raft_fsm_result res = {0};
    uint64_t index = 0;
    int rc = raft_node_propose_wait(m->n, cmd, len, 10000, &res, &index, NULL);
    cr_assert_eq(rc, 0, "put %s: %d", key, rc);
    cr_assert_eq(res.code, 0, "put %s: code %d", key, res.code);
    free(res.data);
    free(cmd);
    return index;
}

static void member_run(const struct kv_store_opts *o, unsigned seed, bool torn)
{
    struct member m = {.opts = *o};
    pthread_mutex_init(&m.mu, NULL);
    pthread_cond_init(&m.cv, NULL);
    snprintf(m.base, sizeof m.base, "/tmp/kvpower.XXXXXX");
    cr_assert(mkdtemp(m.base));
    snprintf(m.raft_dir, sizeof m.raft_dir, "%s/raft", m.base);
    snprintf(m.kv_dir, sizeof m.kv_dir, "%s/kv", m.base);
    cr_assert_eq(mkdir(m.kv_dir, 0700), 0);
    lazy_lmdb_track(m.kv_dir);
    member_start(&m, "boot-A");
    const int n = 40;
    for (int i = 0; i < n; i++)
        member_put(&m, i);
    /* The power goes: the log and the store lose what they did not sync, at one instant. */
    size_t dropped = torn ? lazy_io_crash_torn(m.base, seed) : lazy_io_crash(m.base);
    raft_node_stop(m.n);
    kv_store_close(m.s);
    lazy_io_revive(m.base);
    /* First a look at the store alone, in a child: a torn one wrongly trusted may make LMDB
     * abort. */
    struct kvt probe = {.opts = m.opts};
    snprintf(probe.dir, sizeof probe.dir, "%s", m.kv_dir);
    char why[512];
    cr_assert(reopen_in_child(&probe, READABLE, why, sizeof why),
              "%s member's store after a %s power cut (seed %u, %zu unsynced writes dropped): "
              "%s", o->sync_every_batch ? "every-batch" : "lazy", torn ? "torn" : "full", seed,
              dropped, why);
    member_start(&m, "boot-B");
    const char *note = kv_store_open_note(m.s);
    /* One more put: applied in order, so when it is, the whole log before it is too. */
    uint64_t last = member_put(&m, n);
    struct kvt t = {.s = m.s};
    const char *what = o->sync_every_batch ? "every-batch" : "lazy";
    /* Exactly the acknowledged puts and the one after them: none lost, none applied twice. */
    cr_assert(exact_keys(&t, n + 1, why, sizeof why),
              "%s member after a %s power cut (seed %u, %zu unsynced writes dropped; store "
              "note \"%s\"), %d puts acknowledged then one more: %s", what,
              torn ? "torn" : "full", seed, dropped, note, n, why);
    cr_assert_eq(kv_store_applied_index(m.s), last);
    raft_node_stop(m.n);
    kv_store_close(m.s);
    lazy_lmdb_untrack(m.kv_dir);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", m.base);
    cr_assert(system(cmd) == 0);
    pthread_cond_destroy(&m.cv);
    pthread_mutex_destroy(&m.mu);
}

Test(kv_power, lazy_member_power_cut_replays_its_log_into_the_store)
{
    member_run(&lazy_opts, 0, false);
    for (unsigned seed = 1; seed <= 3; seed++)
        member_run(&lazy_opts, seed, true);
}

Test(kv_power, every_batch_member_power_cut_applies_each_entry_once)
{
    member_run(&batch_opts, 0, false);
    for (unsigned seed = 1; seed <= 3; seed++)
        member_run(&batch_opts, seed, true);
}

/* ---- LMDB itself: which of its writes a power cut keeps ---- */

/* A one-key transaction in a fresh LMDB environment opened with flags; then the power goes
 * (the environment closed first: LMDB reads through its mapping) and the environment is read
 * back. Returns whether the key survived; *dsync counts writes through an O_DSYNC fd. */
static bool lmdb_commit_survives(unsigned flags, size_t *dsync)
{
    char dir[] = "/tmp/kvpower.XXXXXX";
    cr_assert(mkdtemp(dir));
    lazy_lmdb_track(dir);
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_val k = {3, (void *)"key"}, v = {5, (void *)"value"}, got = {0, NULL};
    cr_assert_eq(mdb_env_create(&env), 0);
    cr_assert_eq(mdb_env_set_mapsize(env, 1 << 20), 0);
    cr_assert_eq(mdb_env_open(env, dir, flags, 0600), 0);
    /* A first, synced commit, so the file exists whole before the one under test. */
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    cr_assert_eq(mdb_dbi_open(txn, NULL, 0, &dbi), 0);
    cr_assert_eq(mdb_put(txn, dbi, &(MDB_val){5, (void *)"first"}, &v, 0), 0);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    cr_assert_eq(mdb_env_sync(env, 1), 0);
    struct lazy_lmdb_counts c0, c1;
    lazy_lmdb_counts(&c0);
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    cr_assert_eq(mdb_put(txn, dbi, &k, &v, 0), 0);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    lazy_lmdb_counts(&c1);
    *dsync = c1.dsync_writes - c0.dsync_writes;
    mdb_env_close(env);
    lazy_io_crash(dir);
    lazy_io_revive(dir);
    cr_assert_eq(mdb_env_create(&env), 0);
    cr_assert_eq(mdb_env_set_mapsize(env, 1 << 20), 0);
    cr_assert_eq(mdb_env_open(env, dir, MDB_RDONLY, 0600), 0);
    cr_assert_eq(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
    cr_assert_eq(mdb_dbi_open(txn, NULL, 0, &dbi), 0);
    cr_assert_eq(mdb_get(txn, dbi, &(MDB_val){5, (void *)"first"}, &got), 0,
                 "the synced commit is lost");
    bool kept = mdb_get(txn, dbi, &k, &got) == 0;
    mdb_txn_abort(txn);
    mdb_env_close(env);
    lazy_lmdb_untrack(dir);
    char cmd[64];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert(system(cmd) == 0);
    return kept;
}

Test(kv_power, lmdb_full_sync_commit_survives_through_its_o_dsync_meta_write)
{
    size_t dsync;
    /* Flags 0: fdatasync of the pages, then the meta page through LMDB's O_DSYNC fd. */
    cr_assert(lmdb_commit_survives(0, &dsync), "a fully synced LMDB commit was lost");
    cr_assert_eq(dsync, 1, "LMDB wrote %zu meta pages through its O_DSYNC fd", dsync);
    /* MDB_NOMETASYNC: the meta page rides on the next commit's sync - lost with the power. */
    cr_assert_not(lmdb_commit_survives(MDB_NOMETASYNC, &dsync),
                  "an MDB_NOMETASYNC commit survived without its meta page synced");
    cr_assert_eq(dsync, 0);
    cr_assert_not(lmdb_commit_survives(MDB_NOSYNC, &dsync));
}
