/* Crash simulation: a commit, an installation of a received snapshot and retention are stopped
 * before each of their disk steps (the test hook leaves the files exactly as a crash would), the
 * store is reopened, and it must hold either the complete new snapshot or nothing of it, with
 * every older snapshot still intact. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "raft/snap/snap.h"
#include "tests/snap/snap_test_util.h"
#include "tests/wal/wal_test_util.h"

#define CFG 33
#define LEN 200000

static char *root;

static void setup(void)
{
    root = tu_mkdtemp();
}

static void teardown(void)
{
    tu_rmtree(root);
    free(root);
}

TestSuite(crash, .init = setup, .fini = teardown, .timeout = 120);

static int stop_at, steps_seen;
static char trace[512]; /* the steps passed, for the message of a failed assertion */

static int stop_hook(void *arg, const char *op, int step)
{
    (void)arg;
    size_t used = strlen(trace);
    snprintf(trace + used, sizeof trace - used, " %s%d", op, step);
    return steps_seen++ >= stop_at;
}

static void hooked_options(struct snap_options *o, unsigned max_snapshots)
{
    st_options(o);
    o->max_snapshots = max_snapshots;
    o->step_hook = stop_hook;
    trace[0] = 0;
    steps_seen = 0;
}

/* A fresh store in root/name holding snapshots 10, 20, ... (n of them, as st_make writes them with
 * seed = index and term = index / 10), then closed. Returns the directory (malloc'd). */
static char *fresh_store(const char *name, unsigned max_snapshots, int n)
{
    char *dir = tu_path(root, name);
    tu_rmtree(dir);
    struct snap_options o;
    st_options(&o);
    o.max_snapshots = max_snapshots;
    struct snap_store *s = st_open(dir, &o);
    for (int i = 1; i <= n; i++)
        st_make(s, 10u * (unsigned)i, (unsigned)i, CFG, 1000, 10u * (unsigned)i);
    snap_store_close(s);
    return dir;
}

static int has(struct snap_info *a, size_t n, uint64_t index)
{
    for (size_t i = 0; i < n; i++)
        if (a[i].index == index)
            return 1;
    return 0;
}

/* Writes snapshot 30 into a store holding 10 and 20 (max_snapshots 2, so the commit also deletes
 * 10), stopping at step stop_at. Returns the commit's result. */
static int stopped_commit(const char *dir)
{
    struct snap_options o;
    hooked_options(&o, 2);
    struct snap_store *s = st_open(dir, &o);
    struct snap_writer *w;
    uint8_t cfg[CFG];
    st_bytes(cfg, CFG, 31); /* what st_make would write, so st_expect_in can check it */
    int rc = snap_create(s, 30, 3, cfg, CFG, &w);
    if (rc == 0) {
        uint8_t *p = malloc(LEN);
        st_bytes(p, LEN, 30);
        for (size_t off = 0; off < LEN && rc == 0; off += 50000)
            rc = snap_write(w, p + off, 50000);
        free(p);
        cr_assert_eq(rc, 0, "%s", snap_errmsg());
        rc = snap_commit(w);
    }
    snap_store_close(s);
    return rc;
}

Test(crash, commit_stopped_at_every_step)
{
    int seen_absent = 0, seen_present = 0;
    for (stop_at = 0;; stop_at++) {
        char *dir = fresh_store("s", 2, 2);
        int rc = stopped_commit(dir);
        int completed = rc == 0;
        cr_assert(completed || rc == -ECANCELED, "stop %d: %d %s", stop_at, rc, snap_errmsg());

        struct snap_options o;
        st_options(&o);
        o.max_snapshots = 2;
        struct snap_store *s = st_open(dir, &o); /* the restart */
        cr_assert_eq(st_count(dir, ".tmp"), 0, "stop %d: a temporary file survived the open",
                     stop_at);
        struct snap_info *a;
        size_t n;
        cr_assert_eq(snap_list(s, &a, &n), 0);
        int present = has(a, n, 30);
        cr_assert(has(a, n, 20), "stop %d (%s): snapshot 20 lost", stop_at, trace);
        cr_assert(present || has(a, n, 10),
                  "stop %d (%s): 10 deleted before 30 was in place", stop_at, trace);
        seen_present |= present;
        seen_absent |= !present;
        for (size_t i = 0; i < n; i++) /* whatever is there is complete */
            st_expect_in(s, a[i].index, a[i].index / 10, CFG, a[i].index == 30 ? LEN : 1000,
                         a[i].index);
        struct snap_file *f;
        cr_assert_eq(snap_load_newest(s, 0, &f), 0, "stop %d: %s", stop_at, snap_errmsg());
        cr_assert_eq(snap_file_header(f)->index, present ? 30 : 20);
        snap_file_close(f);
        free(a);
        /* And the store goes on: the next commit succeeds and retention catches up. */
        st_make(s, 40, 4, CFG, 1000, 40);
        cr_assert_eq(snap_list(s, &a, &n), 0);
        cr_assert(n == 2 && a[0].index == 40 && a[1].index == (present ? 30u : 20u));
        free(a);
        snap_store_close(s);
        free(dir);
        if (completed)
            break;
    }
    cr_assert(stop_at >= 7, "a commit has at least 7 steps, saw %d: %s", stop_at, trace);
    cr_assert(strstr(trace, "create0 create1 create2 create3 create4 create5 retain0"), "%s",
              trace);
    cr_assert(seen_absent && seen_present);
}

Test(crash, installation_of_a_received_snapshot_stopped_at_every_step)
{
    char *src_dir = tu_path(root, "src");
    struct snap_store *src = st_open(src_dir, NULL);
    st_make(src, 1000, 6, CFG, LEN, 12);
    struct snap_file *f;
    cr_assert_eq(snap_open(src, 1000, 6, &f), 0);
    uint64_t total = snap_file_size(f);
    for (stop_at = 0;; stop_at++) {
        char *dir = fresh_store("dst", 1, 1); /* holds 10, which retention will delete */
        struct snap_options o;
        hooked_options(&o, 1);
        struct snap_store *s = st_open(dir, &o);
        uint64_t off;
        cr_assert_eq(snap_recv_begin(s, 1000, 6, total, &off), 0);
        int rc = 0;
        static uint8_t buf[1 << 20];
        while (off < total && rc == 0) {
            size_t n;
            cr_assert_eq(snap_file_chunk(f, off, buf, 65536, &n), 0);
            rc = snap_recv_chunk(s, off, buf, n);
            off += n;
        }
        snap_store_close(s);
        int completed = rc == 1;
        cr_assert(completed || rc == -ECANCELED, "stop %d: %d %s", stop_at, rc, snap_errmsg());
        cr_assert_eq(off, total, "every step is after the last chunk arrived");

        /* Whatever step the receiver stopped at, the last chunk had been stored: the snapshot is
         * installed, at the latest by the next open. */
        st_options(&o);
        o.max_snapshots = 1;
        s = st_open(dir, &o);
        struct snap_progress p;
        snap_recv_progress(s, &p);
        cr_assert(!p.active, "stop %d (%s): transfer still pending", stop_at, trace);
        cr_assert_eq(st_count(dir, ".partial"), 0);
        st_expect_in(s, 1000, 6, CFG, LEN, 12);
        struct snap_file *g;
        cr_assert_eq(snap_load_newest(s, 0, &g), 0);
        cr_assert_eq(snap_file_header(g)->index, 1000);
        snap_file_close(g);
        snap_store_close(s);
        free(dir);
        if (completed)
            break;
    }
    cr_assert(strstr(trace, "recv0 recv1 recv2 retain0"), "%s", trace);
    snap_file_close(f);
    snap_store_close(src);
    free(src_dir);
}

/* After a power failure a partial file may hold zeros where pages were lost, behind a size that
 * says they arrived. The transfer resumes from the size; the final check refuses the result and
 * the transfer starts over, never installing the hole. */
Test(crash, a_partial_file_with_lost_pages_is_caught_at_the_end)
{
    char *src_dir = tu_path(root, "src"), *dir = tu_path(root, "dst");
    struct snap_store *src = st_open(src_dir, NULL);
    st_make(src, 1000, 6, CFG, LEN, 12);
    struct snap_file *f;
    cr_assert_eq(snap_open(src, 1000, 6, &f), 0);
    uint64_t total = snap_file_size(f), off;
    struct snap_store *s = st_open(dir, NULL);
    cr_assert_eq(snap_recv_begin(s, 1000, 6, total, &off), 0);
    static uint8_t buf[1 << 16];
    size_t n;
    for (off = 0; off < 100000; off += n) {
        cr_assert_eq(snap_file_chunk(f, off, buf, sizeof buf, &n), 0);
        cr_assert_eq(snap_recv_chunk(s, off, buf, n), 0, "%s", snap_errmsg());
    }
    uint64_t sent = off;
    snap_store_close(s);
    char *p = st_partial_path(dir, 1000, 6, total);
    static const uint8_t zeros[4096];
    tu_write_at(p, 8192, zeros, sizeof zeros);
    s = st_open(dir, NULL);
    cr_assert_eq(snap_recv_begin(s, 1000, 6, total, &off), 0);
    cr_assert_eq(off, sent);
    int rc = 0;
    for (; off < total && rc == 0; off += n) {
        cr_assert_eq(snap_file_chunk(f, off, buf, sizeof buf, &n), 0);
        rc = snap_recv_chunk(s, off, buf, n);
    }
    cr_assert_eq(rc, -EBADMSG, "a file with a hole was installed");
    struct snap_file *g;
    cr_assert_eq(snap_open(s, 1000, 6, &g), -ENOENT);
    cr_assert_eq(snap_recv_begin(s, 1000, 6, total, &off), 0);
    cr_assert_eq(off, 0, "starts over");
    for (rc = 0; rc == 0; off += n) {
        cr_assert_eq(snap_file_chunk(f, off, buf, sizeof buf, &n), 0);
        rc = snap_recv_chunk(s, off, buf, n);
    }
    cr_assert_eq(rc, 1, "%s", snap_errmsg());
    st_expect_in(s, 1000, 6, CFG, LEN, 12);
    snap_store_close(s);
    snap_file_close(f);
    snap_store_close(src);
    free(p);
    free(dir);
    free(src_dir);
}
