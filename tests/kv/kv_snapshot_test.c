/* kv_snapshot_test.c: the store's snapshots through the fsm table (kv_store.h "Snapshots"):
 * a round trip through a region of a file; the index and term reported; a snapshot write held
 * midway while batches keep applying, which still restores to the state at its own index;
 * refused payloads that leave the store as it was; a state too large for the map; a failure and
 * a real process crash (and a simulated machine crash) before every step of a restore, each
 * leaving the old store or the new one; readers running through a restore. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "services/kvstore/kv_snap.h"
#include "tests/kv/kv_test_util.h"

static void put_range(struct kvt *t, const char *prefix, int from, int to, const char *val)
{
    for (int i = from; i < to; i++) {
        char key[32];
        snprintf(key, sizeof key, "%s%03d", prefix, i);
        kvt_put_ok(t, key, val);
    }
}

static void drop(Craft__Kv__Result *r)
{
    cr_assert_eq(r->code, 0, "%s", r->message);
    craft__kv__result__free_unpacked(r, NULL);
}

/* Puts, overwrites, a delete, a range delete and a compaction: versions, create and mod
 * revisions and the compacted revision all differ from a plain load. */
static void fill(struct kvt *t, const char *prefix)
{
    put_range(t, prefix, 0, 30, "first");
    put_range(t, prefix, 5, 10, "second");
    char a[32], b[32];
    snprintf(a, sizeof a, "%s%03d", prefix, 7);
    drop(kvt_del(t, a, NULL, false));
    snprintf(a, sizeof a, "%s%03d", prefix, 20);
    snprintf(b, sizeof b, "%s%03d", prefix, 25);
    drop(kvt_del(t, a, b, false));
    drop(kvt_compact(t, kvt_rev(t) - 3));
}

static bool exists(const char *dir, const char *name)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    struct stat st;
    return stat(path, &st) == 0;
}

static void assert_same(struct kvt *a, const char *want)
{
    char *got = kvt_dump(a);
    cr_assert_str_eq(got, want);
    free(got);
}

/* ---- a file region: the way a snapshot file store will hand the payload over ---- */

static int fd_write(void *arg, const void *p, size_t n)
{
    int fd = *(int *)arg;
    while (n) {
        ssize_t k = write(fd, p, n);
        if (k < 0)
            return -errno;
        p = (const char *)p + k;
        n -= (size_t)k;
    }
    return 0;
}

struct region {
    int fd;
    off_t off, end;
};

static long region_read(void *arg, void *p, size_t n)
{
    struct region *r = arg;
    if ((off_t)n > r->end - r->off)
        n = (size_t)(r->end - r->off);
    ssize_t k = n ? pread(r->fd, p, n, r->off) : 0;
    if (k < 0)
        return -errno;
    r->off += k;
    return k;
}

Test(kv_snapshot, round_trip_through_a_file_region)
{
    struct kvt a, b;
    kvt_open(&a, NULL);
    fill(&a, "k");
    char path[128];
    snprintf(path, sizeof path, "%s/snap.file", a.dir);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    cr_assert_geq(fd, 0);
    /* An outer header before the payload and more bytes after it: the payload is a region. */
    char outer[100];
    memset(outer, 'H', sizeof outer);
    cr_assert_eq(write(fd, outer, sizeof outer), (ssize_t)sizeof outer);
    char err[256] = "";
    struct raft_snapshot_writer w = {fd_write, &fd, err, sizeof err};
    struct raft_fsm *fa = kv_store_fsm(a.s);
    uint64_t index = 0, term = 0;
    cr_assert_eq(fa->snapshot_write(fa->ctx, &w, &index, &term), 0, "%s", err);
    off_t end = lseek(fd, 0, SEEK_CUR);
    cr_assert_eq(write(fd, outer, 50), 50);
    cr_assert_eq(index, kv_store_applied_index(a.s));
    cr_assert_eq(term, 1, "kvt_apply's entries have term 1");

    /* B syncs every batch (no kv.state marks): the other durability mode restores too. */
    struct kv_store_opts every = {.sync_every_batch = true};
    kvt_open(&b, &every);
    kvt_put_ok(&b, "other", "gone after the restore");
    struct region rg = {fd, sizeof outer, end};
    struct raft_snapshot_reader r = {region_read, &rg, err, sizeof err};
    struct raft_fsm *fb = kv_store_fsm(b.s);
    cr_assert_eq(fb->snapshot_restore(fb->ctx, &r, index, term), 0, "%s", err);
    close(fd);
    b.index = kv_store_applied_index(b.s);
    cr_assert_eq(b.index, index);
    char *want = kvt_dump(&a);
    assert_same(&b, want);
    cr_assert(!exists(b.dir, "kv.restore"));
    /* Applies continue at index + 1 on both alike. */
    kvt_put_ok(&a, "k005", "third");
    kvt_put_ok(&b, "k005", "third");
    free(want);
    want = kvt_dump(&a);
    assert_same(&b, want);
    /* And it is the store on disk. */
    kvt_reopen(&b);
    assert_same(&b, want);
    int64_t in_use = kv_store_size_in_use(b.s), status_in_use = 0;
    cr_assert_eq(kv_store_status(b.s, NULL, NULL, NULL, &status_in_use), 0);
    cr_assert_eq(in_use, status_in_use, "the size in use is that of the restored store");
    free(want);
    kvt_close(&a);
    kvt_close(&b);
}

static bool mark_says(const char *dir, const char *what)
{
    char path[128], text[128] = "";
    snprintf(path, sizeof path, "%s/kv.state", dir);
    FILE *f = fopen(path, "r");
    cr_assert(f, "%s", path);
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = 0;
    return strstr(text, what) != NULL;
}

Test(kv_snapshot, a_restored_store_stays_trusted_until_the_next_apply)
{
    struct kvt a, b;
    kvt_open(&a, NULL);
    fill(&a, "k");
    struct kvt_buf buf = {0};
    uint64_t index, term;
    kvt_snapshot(&a, &buf, &index, &term);
    struct kv_store_opts o = {.boot_id = "boot-A"};
    kvt_open(&b, &o);
    kvt_put_ok(&b, "x", "unsynced");
    cr_assert(mark_says(b.dir, "dirty boot-A"));
    char err[256] = "";
    cr_assert_eq(kvt_restore(&b, buf.data, buf.len, index, term, err, sizeof err), 0, "%s",
                 err);
    /* Everything is synced: a machine crash now would keep the restored store. */
    cr_assert(mark_says(b.dir, "clean"));
    kvt_put_ok(&b, "y", "unsynced again");
    cr_assert(mark_says(b.dir, "dirty boot-A"), "marked before the first unsynced commit");
    free(buf.data);
    kvt_close(&a);
    kvt_close(&b);
}

/* ---- index and term ---- */

static void apply_raw(struct kvt *t, uint64_t term, uint64_t trailing)
{
    Etcdserverpb__PutRequest p = ETCDSERVERPB__PUT_REQUEST__INIT;
    p.key = kvt_bin("t");
    p.value = kvt_bin("v");
    uint8_t *buf;
    size_t len;
    cr_assert_eq(kv_cmd_encode_put(&p, &buf, &len), 0);
    struct raft_entry e = {.index = ++t->index, .term = term, .type = RAFT_ENTRY_NORMAL,
                           .len = (uint32_t)len, .data = buf};
    struct raft_fsm_result res = {0};
    struct raft_fsm *f = kv_store_fsm(t->s);
    t->index += trailing; /* NOOP/CONFIG entries the runtime filtered out */
    cr_assert_eq(f->apply(f->ctx, &e, 1, t->index, &res), 0);
    free(res.data);
    free(buf);
}

Test(kv_snapshot, reports_the_term_of_the_applied_index_when_it_is_known)
{
    struct kvt a, b;
    kvt_open(&a, NULL);
    kvt_open(&b, NULL);
    struct kvt_buf buf = {0};
    uint64_t index, term;
    apply_raw(&a, 5, 0);
    kvt_snapshot(&a, &buf, &index, &term);
    cr_assert(index == 1 && term == 5, "%llu %llu", (unsigned long long)index,
              (unsigned long long)term);
    char err[256] = "";
    cr_assert_eq(kvt_restore(&b, buf.data, buf.len, 1, 4, err, sizeof err), -EBADMSG);
    cr_assert(strstr(err, "not at index 1 (term 4)"), "%s", err);
    cr_assert_eq(kvt_restore(&b, buf.data, buf.len, 2, 5, err, sizeof err), -EBADMSG);
    cr_assert_eq(kv_store_applied_index(b.s), 0, "refused: nothing changed");

    /* A batch whose last_index names filtered entries: their term never reached the store. */
    apply_raw(&a, 6, 2);
    kvt_snapshot(&a, &buf, &index, &term);
    cr_assert(index == 4 && term == 0, "%llu %llu", (unsigned long long)index,
              (unsigned long long)term);
    /* The restorer names the term (the runtime's log has it); the store keeps it. */
    cr_assert_eq(kvt_restore(&b, buf.data, buf.len, 4, 7, err, sizeof err), 0, "%s", err);
    kvt_reopen(&b);
    kvt_snapshot(&b, &buf, &index, &term);
    cr_assert(index == 4 && term == 7, "%llu %llu", (unsigned long long)index,
              (unsigned long long)term);
    free(buf.data);
    kvt_close(&a);
    kvt_close(&b);
}

Test(kv_snapshot, a_state_record_from_before_terms_reads_as_term_zero)
{
    struct kvt a;
    kvt_open(&a, NULL);
    kvt_put_ok(&a, "k", "v");
    kv_store_close(a.s);
    a.s = NULL;
    /* Rewrite the state record in the 24-byte layout older stores have. */
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi meta;
    cr_assert_eq(mdb_env_create(&env), 0);
    mdb_env_set_maxdbs(env, 4);
    cr_assert_eq(mdb_env_open(env, a.dir, 0, 0600), 0);
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    cr_assert_eq(mdb_dbi_open(txn, "meta", 0, &meta), 0);
    uint8_t st[24] = {0};
    st[0] = 9;  /* applied index */
    st[8] = 1;  /* revision */
    MDB_val k = {5, "state"}, v = {sizeof st, st};
    cr_assert_eq(mdb_put(txn, meta, &k, &v, 0), 0);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    char err[256];
    a.s = kv_store_open(a.dir, NULL, err, sizeof err);
    cr_assert(a.s, "%s", err);
    struct kvt_buf buf = {0};
    uint64_t index, term;
    kvt_snapshot(&a, &buf, &index, &term);
    cr_assert(index == 9 && term == 0);
    free(buf.data);
    kvt_close(&a);
}

/* ---- writes go on while a snapshot is written ---- */

struct pause {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t at;
    bool paused, resume;
};

static int pause_hook(void *arg, const char *op, uint64_t n)
{
    struct pause *p = arg;
    if (strcmp(op, "snapshot-record") != 0 || n != p->at)
        return 0;
    pthread_mutex_lock(&p->mu);
    p->paused = true;
    pthread_cond_broadcast(&p->cv);
    while (!p->resume)
        pthread_cond_wait(&p->cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
    return 0;
}

struct writer_job {
    struct kvt *t;
    struct kvt_buf buf;
    uint64_t index, term;
};

static void *writer_main(void *arg)
{
    struct writer_job *j = arg;
    kvt_snapshot(j->t, &j->buf, &j->index, &j->term);
    return NULL;
}

Test(kv_snapshot, writes_go_on_while_a_snapshot_is_written)
{
    struct pause p = {.at = 15};
    pthread_mutex_init(&p.mu, NULL);
    pthread_cond_init(&p.cv, NULL);
    struct kv_store_opts o = {.step_hook = pause_hook, .step_arg = &p};
    struct kvt a;
    kvt_open(&a, &o);
    fill(&a, "k");
    uint64_t at = kv_store_applied_index(a.s);
    char *then = kvt_dump(&a);

    struct writer_job j = {.t = &a};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, writer_main, &j), 0);
    pthread_mutex_lock(&p.mu);
    while (!p.paused)
        pthread_cond_wait(&p.cv, &p.mu);
    pthread_mutex_unlock(&p.mu);
    /* The writer holds its read transaction midway through the keys. Batches apply, on keys
     * it has written and keys still ahead of it, and readers see them at once. */
    kvt_put_ok(&a, "k000", "after");
    kvt_put_ok(&a, "k029", "after");
    put_range(&a, "new", 0, 20, "after");
    drop(kvt_del(&a, "k010", "k015", false));
    cr_assert_eq(kv_store_applied_index(a.s), at + 23);
    char *now = kvt_dump(&a);
    cr_assert(strstr(now, "k029=after"), "%s", now);
    pthread_mutex_lock(&p.mu);
    p.resume = true;
    pthread_cond_broadcast(&p.cv);
    pthread_mutex_unlock(&p.mu);
    cr_assert_eq(pthread_join(th, NULL), 0);
    cr_assert_eq(j.index, at, "the snapshot is of the state where it started");

    /* It restores to exactly that state, into a new store and over the store that moved on. */
    struct kvt b;
    kvt_open(&b, NULL);
    char err[256] = "";
    cr_assert_eq(kvt_restore(&b, j.buf.data, j.buf.len, j.index, j.term, err, sizeof err), 0,
                 "%s", err);
    assert_same(&b, then);
    cr_assert_eq(kvt_restore(&a, j.buf.data, j.buf.len, j.index, j.term, err, sizeof err), 0,
                 "%s", err);
    assert_same(&a, then);
    /* Applies continue from index + 1, revisions from the snapshot's. */
    int64_t rev = kvt_rev(&a);
    kvt_put_ok(&a, "k001", "again");
    cr_assert_eq(kv_store_applied_index(a.s), at + 1);
    cr_assert_eq(kvt_rev(&a), rev + 1);
    free(then);
    free(now);
    free(j.buf.data);
    kvt_close(&a);
    kvt_close(&b);
}

static int failing_sink(void *arg, const void *p, size_t n)
{
    (void)arg, (void)p, (void)n;
    return -ENOSPC;
}

Test(kv_snapshot, a_failing_sink_fails_the_write_and_nothing_else)
{
    struct kvt a;
    kvt_open(&a, NULL);
    fill(&a, "k");
    char err[256] = "";
    struct raft_snapshot_writer w = {failing_sink, NULL, err, sizeof err};
    struct raft_fsm *f = kv_store_fsm(a.s);
    uint64_t index = 77, term = 77;
    cr_assert_eq(f->snapshot_write(f->ctx, &w, &index, &term), -ENOSPC);
    cr_assert(strstr(err, "No space left"), "%s", err);
    cr_assert(index == 77 && term == 77, "not set on failure");
    kvt_put_ok(&a, "k", "v");
    kvt_close(&a);
}

/* ---- refused payloads ---- */

Test(kv_snapshot, refused_payloads_leave_the_store_as_it_was)
{
    struct kvt a, n;
    kvt_open(&a, NULL);
    fill(&a, "old");
    kvt_open(&n, NULL);
    put_range(&n, "n", 0, 3, "x");
    struct kvt_buf buf = {0};
    uint64_t index, term;
    kvt_snapshot(&n, &buf, &index, &term);
    char *before = kvt_dump(&a);
    char err[256];
    for (size_t cut = 0; cut < buf.len; cut++) {
        err[0] = 0;
        int rc = kvt_restore(&a, buf.data, cut, index, term, err, sizeof err);
        cr_assert_eq(rc, -EBADMSG, "cut at %zu: %d %s", cut, rc, err);
        cr_assert(strstr(err, "truncated"), "cut at %zu: %s", cut, err);
        cr_assert(!exists(a.dir, "kv.restore"), "cut at %zu: leftover", cut);
    }
    assert_same(&a, before);
    struct {
        size_t at;
        uint8_t x;
        const char *why;
    } damage[] = {
        {0, 'X', "bad magic"},
        {8, 9, "format version 9"},
        {KV_SNAP_HEADER + 8 + 4 + 32, 'Z', "CRC mismatch"}, /* the first value's byte */
    };
    for (size_t i = 0; i < sizeof damage / sizeof damage[0]; i++) {
        uint8_t keep = buf.data[damage[i].at];
        buf.data[damage[i].at] = damage[i].x;
        cr_assert_eq(kvt_restore(&a, buf.data, buf.len, index, term, err, sizeof err),
                     -EBADMSG);
        cr_assert(strstr(err, damage[i].why), "%s", err);
        buf.data[damage[i].at] = keep;
    }
    cr_assert_eq(kvt_restore(&a, buf.data, buf.len, index + 1, term, err, sizeof err),
                 -EBADMSG);
    cr_assert(strstr(err, "not at index"), "%s", err);
    uint8_t zero = 0;
    kvt_buf_write(&buf, &zero, 1);
    cr_assert_eq(kvt_restore(&a, buf.data, buf.len, index, term, err, sizeof err), -EBADMSG);
    cr_assert(strstr(err, "bytes after the trailer"), "%s", err);
    assert_same(&a, before);
    /* Still the old store, and it goes on. */
    uint64_t applied = kv_store_applied_index(a.s);
    kvt_put_ok(&a, "old999", "v");
    cr_assert_eq(kv_store_applied_index(a.s), applied + 1);
    free(before);
    free(buf.data);
    kvt_close(&a);
    kvt_close(&n);
}

Test(kv_snapshot, a_state_larger_than_the_map_is_refused)
{
    struct kvt a, b;
    struct kv_store_opts big = {.map_size = 16u << 20}, small = {.map_size = 1u << 20};
    kvt_open(&a, &big);
    char *v = malloc(100001);
    memset(v, 'v', 100000);
    v[100000] = 0;
    put_range(&a, "k", 0, 30, v); /* 3 MB */
    free(v);
    struct kvt_buf buf = {0};
    uint64_t index, term;
    kvt_snapshot(&a, &buf, &index, &term);
    kvt_open(&b, &small);
    kvt_put_ok(&b, "mine", "v");
    char *before = kvt_dump(&b);
    char err[256] = "";
    cr_assert_eq(kvt_restore(&b, buf.data, buf.len, index, term, err, sizeof err), -ENOSPC);
    cr_assert(strstr(err, "does not fit in the map size"), "%s", err);
    assert_same(&b, before);
    cr_assert(!exists(b.dir, "kv.restore"));
    kvt_put_ok(&b, "mine2", "v");
    free(before);
    free(buf.data);
    kvt_close(&a);
    kvt_close(&b);
}

/* ---- a failure or a crash before every step of a restore ---- */

struct crash_at {
    uint64_t at;    /* stop before the call with this number */
    int fd;         /* crash: the child writes the step's name here and exits; -1: fail it */
    char op[32];
};

static int crash_hook(void *arg, const char *op, uint64_t n)
{
    struct crash_at *c = arg;
    if (strcmp(op, "snapshot-record") == 0 || strcmp(op, "compact-committed") == 0 ||
        n != c->at)
        return 0; /* restore steps only */
    snprintf(c->op, sizeof c->op, "%s", op);
    if (c->fd >= 0) {
        ssize_t k = write(c->fd, op, strlen(op));
        _exit(k > 0 ? 0 : 5);
    }
    return 1;
}

/* The steps before the rename leave the old store; the rename is the switch. */
static bool before_switch(const char *op)
{
    const char *old[] = {"sync-old", "build", "build-commit", "sync-new", "rename"};
    for (size_t i = 0; i < sizeof old / sizeof old[0]; i++)
        if (!strcmp(op, old[i]))
            return true;
    return false;
}

static void copy_dir(const char *from, const char *to)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -a '%s' '%s'", to, from, to);
    cr_assert_eq(system(cmd), 0);
}

/* A store with the old state (closed cleanly, in template) and a payload of another state. */
struct scenario {
    char template[64];
    char *old_dump, *new_dump;
    struct kvt_buf payload;
    uint64_t index, term;
};

static void scenario_make(struct scenario *sc)
{
    *sc = (struct scenario){0};
    struct kvt t, n;
    struct kv_store_opts o = {.boot_id = "boot-A"};
    kvt_open(&t, &o);
    fill(&t, "old");
    sc->old_dump = kvt_dump(&t);
    kv_store_close(t.s);
    snprintf(sc->template, sizeof sc->template, "%s", t.dir);
    kvt_open(&n, NULL);
    fill(&n, "new");
    put_range(&n, "new", 40, 60, "more");
    kvt_snapshot(&n, &sc->payload, &sc->index, &sc->term);
    sc->new_dump = kvt_dump(&n);
    kvt_close(&n);
}

static void scenario_free(struct scenario *sc)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", sc->template);
    cr_assert_eq(system(cmd), 0);
    free(sc->old_dump);
    free(sc->new_dump);
    free(sc->payload.data);
}

/* Opens dir as boot `boot` and checks it holds `want` (old, new, or NULL = empty: discarded),
 * has no leftover, and takes the next write. */
static void check_reopened(const char *dir, const char *boot, const char *want, const char *op)
{
    struct kvt t = {0};
    snprintf(t.dir, sizeof t.dir, "%s", dir);
    t.opts.boot_id = boot;
    char err[256];
    t.s = kv_store_open(dir, &t.opts, err, sizeof err);
    cr_assert(t.s, "%s, before %s: %s", boot, op, err);
    cr_assert(!exists(dir, "kv.restore"), "before %s: leftover kept", op);
    char *got = kvt_dump(&t);
    cr_assert_str_eq(got, want ? want : "rev 0 compact 0 applied 0|", "%s, before %s", boot, op);
    free(got);
    t.index = kv_store_applied_index(t.s);
    kvt_put_ok(&t, "zz", "next");
    kvt_close(&t);
}

Test(kv_snapshot, a_crash_before_any_restore_step_leaves_the_old_or_the_new_store,
     .timeout = 120)
{
    struct scenario sc;
    scenario_make(&sc);
    char dir[64], machine[64];
    snprintf(dir, sizeof dir, "%.40s.crash", sc.template);
    snprintf(machine, sizeof machine, "%.40s.machine", sc.template);
    const char *seen[32];
    size_t steps = 0;
    for (uint64_t at = 0;; at++) {
        copy_dir(sc.template, dir);
        int pfd[2];
        cr_assert_eq(pipe(pfd), 0);
        pid_t pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
            close(pfd[0]);
            struct crash_at c = {.at = at, .fd = pfd[1]};
            struct kv_store_opts o = {.boot_id = "boot-A", .step_hook = crash_hook,
                                      .step_arg = &c, .restore_txn_bytes = 1000};
            char err[256];
            struct kv_store *s = kv_store_open(dir, &o, err, sizeof err);
            if (!s)
                _exit(3);
            struct raft_snapshot_reader r;
            struct kvt_buf b = sc.payload;
            b.pos = 0;
            r = (struct raft_snapshot_reader){kvt_buf_read, &b, err, sizeof err};
            struct raft_fsm *f = kv_store_fsm(s);
            int rc = f->snapshot_restore(f->ctx, &r, sc.index, sc.term);
            _exit(rc == 0 ? 10 : 4); /* no crash point left: restored */
        }
        close(pfd[1]);
        char op[32] = "";
        ssize_t k = read(pfd[0], op, sizeof op - 1);
        close(pfd[0]);
        int st;
        cr_assert_eq(waitpid(pid, &st, 0), pid);
        cr_assert(WIFEXITED(st), "child died: %d", st);
        if (WEXITSTATUS(st) == 10) {
            /* Past the last step: the restored store, and a machine crash keeps it too. */
            copy_dir(dir, machine);
            check_reopened(dir, "boot-A", sc.new_dump, "the end");
            check_reopened(machine, "boot-B", sc.new_dump, "the end");
            break;
        }
        cr_assert(WEXITSTATUS(st) == 0 && k > 0, "child failed: %d", WEXITSTATUS(st));
        op[k] = 0;
        cr_assert_lt(steps, 32);
        seen[steps++] = strdup(op);
        const char *want = before_switch(op) ? sc.old_dump : sc.new_dump;
        copy_dir(dir, machine);
        /* The process died: the page cache keeps its writes. */
        check_reopened(dir, "boot-A", want, op);
        /* The machine died: only synced writes count. Before the first step the old store may
         * hold unsynced writes (kv.state dirty), so it is discarded, as without a restore;
         * after it both stores are synced and kv.state says clean. */
        check_reopened(machine, "boot-B", at == 0 ? NULL : want, op);
    }
    /* Every step was a crash point, in this order, with the build committed in parts. */
    const char *order[] = {"sync-old", "build", "build-commit", "sync-new", "rename",
                           "fsync-dir", "switch", "cleanup"};
    size_t i = 0;
    for (size_t o = 0; o < sizeof order / sizeof order[0]; o++) {
        cr_assert_lt(i, steps, "no step %s", order[o]);
        cr_assert_str_eq(seen[i], order[o]);
        i++;
        while (!strcmp(order[o], "build-commit") && i < steps && !strcmp(seen[i], order[o]))
            i++; /* one per transaction of the build but the last */
    }
    cr_assert_eq(i, steps, "steps after cleanup");
    for (i = 0; i < steps; i++)
        free((char *)seen[i]);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", dir, machine);
    cr_assert_eq(system(cmd), 0);
    scenario_free(&sc);
}

Test(kv_snapshot, a_failure_at_any_restore_step_leaves_the_old_or_the_new_store,
     .timeout = 120)
{
    struct scenario sc;
    scenario_make(&sc);
    char dir[64];
    snprintf(dir, sizeof dir, "%.40s.fail", sc.template);
    for (uint64_t at = 0;; at++) {
        copy_dir(sc.template, dir);
        struct crash_at c = {.at = at, .fd = -1};
        struct kvt t = {0};
        snprintf(t.dir, sizeof t.dir, "%s", dir);
        t.opts = (struct kv_store_opts){.boot_id = "boot-A", .step_hook = crash_hook,
                                        .step_arg = &c, .restore_txn_bytes = 1000};
        char err[256] = "";
        t.s = kv_store_open(dir, &t.opts, err, sizeof err);
        cr_assert(t.s, "%s", err);
        t.index = kv_store_applied_index(t.s);
        int rc = kvt_restore(&t, sc.payload.data, sc.payload.len, sc.index, sc.term, err,
                             sizeof err);
        if (!c.op[0]) {
            cr_assert_eq(rc, 0, "%s", err);
            assert_same(&t, sc.new_dump);
            kvt_close(&t);
            break;
        }
        char *expect = NULL;
        if (before_switch(c.op)) {
            /* Refused, and the old store goes on as if nothing happened. */
            cr_assert_eq(rc, -EIO, "%s: %s", c.op, err);
            cr_assert(strstr(err, "stopped by the test hook"), "%s", err);
            cr_assert(!exists(dir, "kv.restore"), "%s: leftover", c.op);
            assert_same(&t, sc.old_dump);
            kvt_put_ok(&t, "zz", "next");
            expect = kvt_dump(&t);
        } else if (!strcmp(c.op, "cleanup")) {
            /* Restored; only kv.restore's lock file is left, for the next open. */
            cr_assert_eq(rc, 0, "%s", err);
            assert_same(&t, sc.new_dump);
            cr_assert(exists(dir, "kv.restore"));
        } else {
            /* Past the rename: the store stops (apply refuses) until a restart, which finds
             * the new store. */
            cr_assert_eq(rc, -EIO, "%s: %s", c.op, err);
            cr_assert(strstr(err, "restart the member"), "%s", err);
            struct raft_fsm *f = kv_store_fsm(t.s);
            struct raft_entry e = {.index = t.index + 1, .term = 1, .type = RAFT_ENTRY_NORMAL};
            struct raft_fsm_result res = {0};
            cr_assert_eq(f->apply(f->ctx, &e, 1, e.index, &res), -EIO);
        }
        kv_store_close(t.s);
        t.s = NULL;
        check_reopened(dir, "boot-A", expect ? expect : sc.new_dump, c.op);
        free(expect);
    }
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
    scenario_free(&sc);
}

Test(kv_snapshot, a_store_whose_sync_failed_refuses_to_restore)
{
    struct kvt a;
    struct kv_store_opts o = {.fail_sync = true};
    kvt_open(&a, &o);
    kvt_put_ok(&a, "k", "v");
    struct kvt_buf buf = {0};
    uint64_t index, term;
    kvt_snapshot(&a, &buf, &index, &term);
    char err[256] = "";
    cr_assert_eq(kvt_restore(&a, buf.data, buf.len, index, term, err, sizeof err), -EIO);
    cr_assert(strstr(err, "syncing the current store"), "%s", err);
    cr_assert(!exists(a.dir, "kv.restore"));
    free(buf.data);
    kvt_close(&a);
}

/* ---- readers through a restore ---- */

struct readers {
    struct kvt *t;
    long reads_at_switch; /* reads that have happened when the swap starts */
    pthread_barrier_t start;
    _Atomic bool stop;
    int64_t old_rev, new_rev, old_count, new_count;
    _Atomic long reads, bad;
};

static void *reader_main(void *arg)
{
    struct readers *r = arg;
    pthread_barrier_wait(&r->start);
    while (!atomic_load(&r->stop)) {
        Etcdserverpb__RangeRequest q;
        kvt_range_req(&q, KVT_FROM, KVT_FROM);
        q.count_only = 1;
        Etcdserverpb__RangeResponse *resp = NULL;
        struct kv_err err;
        if (kv_store_range(r->t->s, &q, &resp, &err) != 0) {
            atomic_fetch_add(&r->bad, 1);
            continue;
        }
        int64_t rev = resp->header->revision, count = resp->count;
        /* one whole state or the other, never a mix */
        if (!((rev == r->old_rev && count == r->old_count) ||
              (rev == r->new_rev && count == r->new_count)))
            atomic_fetch_add(&r->bad, 1);
        atomic_fetch_add(&r->reads, 1);
        etcdserverpb__range_response__free_unpacked(resp, NULL);
    }
    return NULL;
}

/* Holds the restore before its swap until the readers are reading. */
static int switch_hook(void *arg, const char *op, uint64_t n)
{
    (void)n;
    struct readers *r = arg;
    if (!strcmp(op, "switch")) {
        while (atomic_load(&r->reads) < 10)
            sched_yield();
        r->reads_at_switch = atomic_load(&r->reads);
    }
    return 0;
}

Test(kv_snapshot, readers_see_the_old_or_the_new_state_through_a_restore)
{
    struct kvt a, n;
    struct readers r = {0};
    struct kv_store_opts o = {.step_hook = switch_hook, .step_arg = &r};
    kvt_open(&a, &o);
    fill(&a, "old");
    kvt_open(&n, NULL);
    put_range(&n, "new", 0, 50, "v");
    struct kvt_buf buf = {0};
    uint64_t index, term;
    kvt_snapshot(&n, &buf, &index, &term);
    r.t = &a;
    r.old_rev = kvt_rev(&a);
    r.new_rev = kvt_rev(&n);
    r.old_count = kvt_count(&a);
    r.new_count = 50;
    cr_assert_neq(r.old_count, r.new_count);
    enum { READERS = 3 };
    pthread_t th[READERS];
    pthread_barrier_init(&r.start, NULL, READERS + 1);
    for (int i = 0; i < READERS; i++)
        cr_assert_eq(pthread_create(&th[i], NULL, reader_main, &r), 0);
    pthread_barrier_wait(&r.start);
    char err[256] = "";
    cr_assert_eq(kvt_restore(&a, buf.data, buf.len, index, term, err, sizeof err), 0, "%s",
                 err);
    /* Let every reader finish reads of the new state too before stopping them. */
    long after = atomic_load(&r.reads);
    while (atomic_load(&r.reads) < after + 3 * READERS)
        sched_yield();
    atomic_store(&r.stop, true);
    for (int i = 0; i < READERS; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&r.start);
    cr_assert_eq(atomic_load(&r.bad), 0, "a read saw neither state, or failed");
    cr_assert_geq(r.reads_at_switch, 10, "readers were running when the swap came");
    free(buf.data);
    kvt_close(&a);
    kvt_close(&n);
}
