/* Unit tests of the write-ahead log: the API contract, error paths with injected I/O failures,
 * and concurrent appenders. Crash recovery is in wal_crash_test.c. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log/log.h"
#include "raft/wal/crc32c.h"
#include "raft/wal/wal.h"
#include "tests/wal/wal_test_util.h"

static char *dir;

static void setup(void)
{
    dir = tu_mkdtemp();
}

static void teardown(void)
{
    tu_rmtree(dir);
    free(dir);
}

TestSuite(wal, .init = setup, .fini = teardown, .timeout = 30);

static uint32_t len_of(uint64_t i)
{
    return (uint32_t)((i * 37) % 300); /* includes empty payloads */
}

static uint64_t term_of(uint64_t i)
{
    return 1 + i / 10;
}

static void small_opts(struct wal_options *o, uint64_t seg)
{
    wal_options_init(o);
    o->segment_size = seg;
    o->log = tu_quiet_log;
}

Test(wal, new_log_is_empty_and_starts_at_one)
{
    struct wal *w = tu_open(dir, NULL);
    cr_assert_eq(wal_first_index(w), 1);
    cr_assert_eq(wal_last_index(w), 0);
    cr_assert_eq(wal_durable_index(w), 0);
    struct raft_entry e;
    cr_assert_eq(wal_read(w, 1, &e), -ENOENT);
    struct raft_hard_state hs = {7, 7};
    wal_load_hard_state(w, &hs);
    cr_assert(hs.term == 0 && hs.voted_for == 0);
    wal_close(w);
}

Test(wal, append_read_and_reopen)
{
    struct wal *w = tu_open(dir, NULL);
    struct raft_entry batch[10];
    for (uint64_t i = 1; i <= 200; i += 10) {
        for (int k = 0; k < 10; k++)
            tu_entry(&batch[k], i + k, term_of(i + k), len_of(i + k), 0);
        cr_assert_eq(wal_append(w, batch, 10), 0, "%s", wal_errmsg());
        for (int k = 0; k < 10; k++)
            free(batch[k].data);
    }
    cr_assert_eq(wal_last_index(w), 200);
    /* Reads work whether or not the entries are durable yet. */
    for (uint64_t i = 1; i <= 200; i++)
        tu_expect_entry(w, i, term_of(i), len_of(i), 0);
    cr_assert_eq(wal_wait_durable(w, 200), 0);
    cr_assert_eq(wal_durable_index(w), 200);
    wal_close(w);

    w = tu_open(dir, NULL);
    cr_assert_eq(wal_first_index(w), 1);
    cr_assert_eq(wal_last_index(w), 200);
    cr_assert_eq(wal_durable_index(w), 200);
    for (uint64_t i = 1; i <= 200; i++)
        tu_expect_entry(w, i, term_of(i), len_of(i), 0);
    struct raft_entry *r;
    size_t n;
    cr_assert_eq(wal_read_range(w, 5, 150, 1000, &r, &n), 0);
    cr_assert(n >= 1 && n < 146, "max_bytes must stop the range early, got %zu", n);
    size_t bytes = 0;
    for (size_t k = 0; k < n; k++) {
        cr_assert_eq(r[k].index, 5 + k);
        bytes += r[k].len;
    }
    cr_assert(bytes >= 1000 || n == 146);
    cr_assert(bytes - r[n - 1].len < 1000, "one entry too many");
    wal_entries_free(r, n);
    cr_assert_eq(wal_read_range(w, 199, 201, 1 << 20, &r, &n), -ENOENT);
    /* Appending continues the recovered log. */
    tu_append_sync(w, 201, term_of(201), 5, 0);
    wal_close(w);
}

Test(wal, rejects_non_contiguous_or_invalid_appends)
{
    struct wal *w = tu_open(dir, NULL);
    struct raft_entry e[3];
    tu_entry(&e[0], 2, 1, 4, 0);
    cr_assert_eq(wal_append(w, e, 1), -EINVAL, "gap before the first entry");
    cr_assert(strstr(wal_errmsg(), "does not follow"), "%s", wal_errmsg());
    free(e[0].data);
    tu_append_sync(w, 1, 2, 4, 0);
    tu_entry(&e[0], 1, 2, 4, 0);
    cr_assert_eq(wal_append(w, e, 1), -EINVAL, "duplicate index");
    free(e[0].data);
    tu_entry(&e[0], 2, 2, 4, 0);
    tu_entry(&e[1], 4, 2, 4, 0);
    cr_assert_eq(wal_append(w, e, 2), -EINVAL, "gap inside a call");
    free(e[1].data);
    tu_entry(&e[1], 3, 1, 4, 0);
    cr_assert_eq(wal_append(w, e, 2), -EINVAL, "term going down inside a call");
    free(e[1].data);
    free(e[0].data);
    tu_entry(&e[0], 2, 1, 4, 0);
    cr_assert_eq(wal_append(w, e, 1), -EINVAL, "term below the last term");
    e[0].term = 2;
    e[0].type = 9;
    cr_assert_eq(wal_append(w, e, 1), -EINVAL, "bad type");
    free(e[0].data);
    cr_assert_eq(wal_last_index(w), 1, "nothing was added by the refused appends");
    wal_close(w);
}

Test(wal, rotation_makes_segments_and_all_survive_reopen)
{
    struct wal_options o;
    small_opts(&o, 4096);
    struct wal *w = tu_open(dir, &o);
    for (uint64_t i = 1; i <= 300; i++) {
        struct raft_entry e;
        tu_entry(&e, i, term_of(i), len_of(i), 1);
        cr_assert_eq(wal_append(w, &e, 1), 0);
        free(e.data);
    }
    cr_assert_eq(wal_wait_durable(w, 300), 0);
    wal_close(w);
    char **names;
    size_t n = tu_segments(dir, &names);
    cr_assert(n > 10, "expected many 4 KiB segments, got %zu", n);
    cr_assert_str_eq(names[0], "00000000000000000001.seg");
    for (size_t i = 0; i < n; i++) {
        char *p = tu_path(dir, names[i]);
        cr_assert_eq(tu_file_size(p), 4096, "segments are preallocated to their full size");
        free(p);
    }
    tu_free_names(names, n);
    w = tu_open(dir, &o);
    cr_assert_eq(wal_last_index(w), 300);
    for (uint64_t i = 1; i <= 300; i++)
        tu_expect_entry(w, i, term_of(i), len_of(i), 1);
    wal_close(w);
}

Test(wal, entry_larger_than_a_segment_is_refused)
{
    struct wal_options o;
    small_opts(&o, 4096);
    struct wal *w = tu_open(dir, &o);
    struct raft_entry e;
    tu_entry(&e, 1, 1, 4096, 0);
    cr_assert_eq(wal_append(w, &e, 1), -EMSGSIZE);
    free(e.data);
    /* The largest entry that fits still works, alone in its segment. */
    tu_append_sync(w, 1, 1, 10, 0);
    tu_append_sync(w, 2, 1, 4096 - 64, 0);
    wal_close(w);
    w = tu_open(dir, &o);
    tu_expect_entry(w, 2, 1, 4096 - 64, 0);
    wal_close(w);
}

Test(wal, truncate_suffix_within_and_across_segments)
{
    struct wal_options o;
    small_opts(&o, 4096);
    struct wal *w = tu_open(dir, &o);
    for (uint64_t i = 1; i <= 120; i++)
        tu_append_sync(w, i, 1, len_of(i), 0);
    cr_assert_eq(wal_truncate_suffix(w, 0), -EINVAL);
    cr_assert_eq(wal_truncate_suffix(w, 122), -EINVAL);
    cr_assert_eq(wal_truncate_suffix(w, 121), 0, "no-op at last+1");
    cr_assert_eq(wal_truncate_suffix(w, 100), 0, "%s", wal_errmsg());
    cr_assert_eq(wal_last_index(w), 99);
    cr_assert_eq(wal_durable_index(w), 99);
    struct raft_entry e;
    cr_assert_eq(wal_read(w, 100, &e), -ENOENT);
    /* Replace the tail with entries of a new term. */
    for (uint64_t i = 100; i <= 110; i++)
        tu_append_sync(w, i, 2, len_of(i), 7);
    cr_assert_eq(wal_truncate_suffix(w, 20), 0, "%s", wal_errmsg());
    cr_assert_eq(wal_last_index(w), 19);
    for (uint64_t i = 20; i <= 30; i++)
        tu_append_sync(w, i, 3, len_of(i), 9);
    wal_close(w);

    w = tu_open(dir, &o);
    cr_assert_eq(wal_last_index(w), 30);
    for (uint64_t i = 1; i < 20; i++)
        tu_expect_entry(w, i, 1, len_of(i), 0);
    for (uint64_t i = 20; i <= 30; i++)
        tu_expect_entry(w, i, 3, len_of(i), 9);
    /* Down to the very first entry: an empty log that continues at 1. */
    cr_assert_eq(wal_truncate_suffix(w, 1), 0, "%s", wal_errmsg());
    cr_assert_eq(wal_last_index(w), 0);
    wal_close(w);
    w = tu_open(dir, &o);
    cr_assert_eq(wal_last_index(w), 0);
    tu_append_sync(w, 1, 4, 3, 4);
    wal_close(w);
    w = tu_open(dir, &o);
    cr_assert_eq(wal_last_index(w), 1);
    tu_expect_entry(w, 1, 4, 3, 4);
    wal_close(w);
}

Test(wal, compact_prefix_deletes_whole_segments_only)
{
    struct wal_options o;
    small_opts(&o, 4096);
    struct wal *w = tu_open(dir, &o);
    for (uint64_t i = 1; i <= 300; i++)
        tu_append_sync(w, i, 1, len_of(i), 0);
    char **names;
    size_t before = tu_segments(dir, &names);
    tu_free_names(names, before);
    cr_assert_eq(wal_compact_prefix(w, 1), 0);
    cr_assert_eq(wal_first_index(w), 1, "nothing below 1");
    cr_assert_eq(wal_compact_prefix(w, 150), 0, "%s", wal_errmsg());
    uint64_t first = wal_first_index(w);
    cr_assert(first > 1 && first <= 150, "first %llu", (unsigned long long)first);
    size_t after = tu_segments(dir, &names);
    tu_free_names(names, after);
    cr_assert(after < before);
    struct raft_entry e;
    cr_assert_eq(wal_read(w, first - 1, &e), -ENOENT);
    cr_assert_eq(wal_truncate_suffix(w, first - 1), -EINVAL, "cannot truncate below first");
    for (uint64_t i = first; i <= 300; i++)
        tu_expect_entry(w, i, 1, len_of(i), 0);
    /* Compacting past the end keeps the last segment. */
    cr_assert_eq(wal_compact_prefix(w, 1000), 0);
    uint64_t first2 = wal_first_index(w);
    cr_assert(first2 <= 300 && first2 > first);
    wal_close(w);
    w = tu_open(dir, &o);
    cr_assert_eq(wal_first_index(w), first2);
    cr_assert_eq(wal_last_index(w), 300);
    for (uint64_t i = first2; i <= 300; i++)
        tu_expect_entry(w, i, 1, len_of(i), 0);
    tu_append_sync(w, 301, 1, 5, 0);
    wal_close(w);
}

Test(wal, hard_state_is_saved_and_reloaded)
{
    struct wal *w = tu_open(dir, NULL);
    struct raft_hard_state hs = {5, 3}, got;
    cr_assert_eq(wal_save_hard_state(w, &hs), 0);
    wal_load_hard_state(w, &got);
    cr_assert(got.term == 5 && got.voted_for == 3);
    hs.term = 6;
    hs.voted_for = 0;
    cr_assert_eq(wal_save_hard_state(w, &hs), 0);
    wal_close(w);
    w = tu_open(dir, NULL);
    wal_load_hard_state(w, &got);
    cr_assert(got.term == 6 && got.voted_for == 0);
    wal_close(w);
}

Test(wal, corrupt_hard_state_fails_open_clearly)
{
    struct wal *w = tu_open(dir, NULL);
    struct raft_hard_state hs = {5, 3};
    cr_assert_eq(wal_save_hard_state(w, &hs), 0);
    wal_close(w);
    char *p = tu_path(dir, "hardstate");
    tu_flip_bit(p, 9, 2);
    char err[256];
    cr_assert_eq(wal_open(&w, dir, NULL, err, sizeof err), -EBADMSG);
    cr_assert_null(w);
    cr_assert(strstr(err, "hardstate") && strstr(err, "corrupt"), "%s", err);
    tu_flip_bit(p, 9, 2);
    tu_truncate(p, 20);
    cr_assert_eq(wal_open(&w, dir, NULL, err, sizeof err), -EBADMSG);
    free(p);
}

Test(wal, second_opener_is_refused_by_the_lock)
{
    struct wal *w = tu_open(dir, NULL), *w2;
    char err[256];
    cr_assert_eq(wal_open(&w2, dir, NULL, err, sizeof err), -EBUSY);
    char pid[32];
    snprintf(pid, sizeof pid, "pid %ld", (long)getpid());
    cr_assert(strstr(err, "in use") && strstr(err, pid), "%s", err);
    /* Another process too. */
    pid_t child = fork();
    if (child == 0) {
        struct wal *w3;
        char e3[256];
        _exit(wal_open(&w3, dir, NULL, e3, sizeof e3) == -EBUSY ? 0 : 1);
    }
    int status;
    cr_assert_eq(waitpid(child, &status, 0), child);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    wal_close(w);
    w = tu_open(dir, NULL); /* released on close */
    wal_close(w);
}

/* ---- injected I/O failures ---- */

static atomic_int fail_pwrite, fail_fdatasync, fail_fsync, fail_fallocate;

static ssize_t hook_pwrite(int fd, const void *buf, size_t len, off_t off)
{
    if (atomic_load(&fail_pwrite)) {
        /* Write half, as a disk filling up would, then fail. */
        if (len > 1 && atomic_load(&fail_pwrite) == 2) {
            atomic_store(&fail_pwrite, 1);
            return pwrite(fd, buf, len / 2, off);
        }
        errno = ENOSPC;
        return -1;
    }
    return pwrite(fd, buf, len, off);
}

static int hook_fdatasync(int fd)
{
    if (atomic_load(&fail_fdatasync)) {
        errno = EIO;
        return -1;
    }
    return fdatasync(fd);
}

static int hook_fsync(int fd)
{
    if (atomic_load(&fail_fsync)) {
        errno = EIO;
        return -1;
    }
    return fsync(fd);
}

static int hook_fallocate(int fd, off_t off, off_t len)
{
    if (atomic_load(&fail_fallocate))
        return ENOSPC;
    return posix_fallocate(fd, off, len);
}

static const struct wal_io failing_io = {hook_pwrite, hook_fdatasync, hook_fsync, hook_fallocate};

static void failing_opts(struct wal_options *o, uint64_t seg)
{
    small_opts(o, seg);
    o->io = &failing_io;
    atomic_store(&fail_pwrite, 0);
    atomic_store(&fail_fdatasync, 0);
    atomic_store(&fail_fsync, 0);
    atomic_store(&fail_fallocate, 0);
}

Test(wal, enospc_on_write_is_returned_and_retry_works)
{
    struct wal_options o;
    failing_opts(&o, 1 << 20);
    struct wal *w = tu_open(dir, &o);
    for (uint64_t i = 1; i <= 5; i++)
        tu_append_sync(w, i, 1, 100, 0);
    atomic_store(&fail_pwrite, 2); /* a short write, then ENOSPC */
    struct raft_entry e[3];
    for (int k = 0; k < 3; k++)
        tu_entry(&e[k], 6 + k, 1, 100, 0);
    cr_assert_eq(wal_append(w, e, 3), 0);
    cr_assert_eq(wal_wait_durable(w, 8), -ENOSPC);
    cr_assert(strstr(wal_errmsg(), "No space"), "%s", wal_errmsg());
    cr_assert_eq(wal_durable_index(w), 5, "nothing reported durable");
    cr_assert_eq(wal_last_index(w), 5, "failed entries left the log");
    cr_assert_eq(wal_append(w, &e[1], 1), -EINVAL, "must continue from the durable index");
    for (int k = 0; k < 3; k++)
        free(e[k].data);
    atomic_store(&fail_pwrite, 0);
    /* Retry with different content: the half-written failed batch must not come back. */
    tu_append_sync(w, 6, 2, 10, 5);
    wal_close(w);
    w = tu_open(dir, &o);
    cr_assert_eq(wal_last_index(w), 6);
    tu_expect_entry(w, 6, 2, 10, 5);
    wal_close(w);
}

Test(wal, eio_on_fdatasync_drops_the_batch_and_stale_records_never_return)
{
    struct wal_options o;
    failing_opts(&o, 1 << 20);
    struct wal *w = tu_open(dir, &o);
    for (uint64_t i = 1; i <= 5; i++)
        tu_append_sync(w, i, 1, 100, 0);
    atomic_store(&fail_fdatasync, 1); /* the records reach the file, the sync fails */
    struct raft_entry e[4];
    for (int k = 0; k < 4; k++)
        tu_entry(&e[k], 6 + k, 1, 100, 0);
    cr_assert_eq(wal_append(w, e, 4), 0);
    cr_assert_eq(wal_wait_durable(w, 6), -EIO);
    cr_assert_eq(wal_durable_index(w), 5);
    for (int k = 0; k < 4; k++)
        free(e[k].data);
    /* A retry while the disk still fails fails too (in the zeroing step). */
    struct raft_entry one;
    tu_entry(&one, 6, 1, 1, 0);
    cr_assert_eq(wal_append(w, &one, 1), 0);
    cr_assert_eq(wal_wait_durable(w, 6), -EIO);
    free(one.data);
    atomic_store(&fail_fdatasync, 0);
    /* A shorter replacement of 6: the old 7..9 written by the failed batch would follow it
     * validly if they had not been zeroed. */
    tu_append_sync(w, 6, 2, 3, 9);
    wal_close(w);
    w = tu_open(dir, &o);
    cr_assert_eq(wal_last_index(w), 6, "stale records resurrected: last %llu",
                 (unsigned long long)wal_last_index(w));
    tu_expect_entry(w, 6, 2, 3, 9);
    wal_close(w);
}

Test(wal, enospc_creating_a_segment_is_returned_and_retry_works)
{
    struct wal_options o;
    failing_opts(&o, 4096);
    struct wal *w = tu_open(dir, &o);
    uint64_t i = 1;
    char **names;
    while (tu_segments(dir, &names) == 1) {
        tu_free_names(names, 1);
        tu_append_sync(w, i, 1, 200, 0);
        i++;
    }
    tu_free_names(names, 2);
    /* Fill the second segment to just before rotation, then fail the third's creation. */
    uint64_t per_seg = i - 1; /* entries that made segment 1 overflow */
    for (uint64_t k = 1; k < per_seg - 1; k++, i++)
        tu_append_sync(w, i, 1, 200, 0);
    atomic_store(&fail_fallocate, 1);
    uint64_t before = wal_durable_index(w);
    struct raft_entry e[3];
    for (int k = 0; k < 3; k++)
        tu_entry(&e[k], i + k, 1, 200, 0);
    cr_assert_eq(wal_append(w, e, 3), 0);
    int rc = wal_wait_durable(w, i + 2);
    cr_assert_eq(rc, -ENOSPC, "rc %d %s", rc, wal_errmsg());
    cr_assert(wal_durable_index(w) >= before && wal_durable_index(w) < i + 2);
    uint64_t d = wal_durable_index(w);
    cr_assert_eq(wal_last_index(w), d);
    atomic_store(&fail_fallocate, 0);
    for (uint64_t k = d + 1; k <= i + 2; k++)
        tu_append_sync(w, k, 1, 200, 0);
    for (int k = 0; k < 3; k++)
        free(e[k].data);
    wal_close(w);
    w = tu_open(dir, &o);
    cr_assert_eq(wal_last_index(w), i + 2);
    for (uint64_t k = 1; k <= i + 2; k++)
        tu_expect_entry(w, k, 1, 200, 0);
    wal_close(w);
}

Test(wal, failed_hard_state_save_keeps_the_old_one)
{
    struct wal_options o;
    failing_opts(&o, 1 << 20);
    struct wal *w = tu_open(dir, &o);
    struct raft_hard_state hs = {3, 1}, got;
    cr_assert_eq(wal_save_hard_state(w, &hs), 0);
    atomic_store(&fail_fsync, 1);
    struct raft_hard_state hs2 = {4, 2};
    cr_assert_eq(wal_save_hard_state(w, &hs2), -EIO);
    cr_assert(strstr(wal_errmsg(), "hardstate"), "%s", wal_errmsg());
    wal_load_hard_state(w, &got);
    cr_assert(got.term == 3 && got.voted_for == 1);
    atomic_store(&fail_fsync, 0);
    wal_close(w);
    w = tu_open(dir, &o);
    wal_load_hard_state(w, &got);
    cr_assert(got.term == 3 && got.voted_for == 1);
    wal_close(w);
}

/* ---- a writer held inside fdatasync, to control what is in flight ---- */

static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static int gate_closed, gate_entered;

static int gated_fdatasync(int fd)
{
    pthread_mutex_lock(&gate_mu);
    gate_entered++;
    pthread_cond_broadcast(&gate_cv);
    while (gate_closed)
        pthread_cond_wait(&gate_cv, &gate_mu);
    pthread_mutex_unlock(&gate_mu);
    return fdatasync(fd);
}

static const struct wal_io gated_io = {NULL, gated_fdatasync, NULL, NULL};

static void gate_set(int closed)
{
    pthread_mutex_lock(&gate_mu);
    gate_closed = closed;
    pthread_cond_broadcast(&gate_cv);
    pthread_mutex_unlock(&gate_mu);
}

static void gate_wait_entered(int n)
{
    pthread_mutex_lock(&gate_mu);
    while (gate_entered < n)
        pthread_cond_wait(&gate_cv, &gate_mu);
    pthread_mutex_unlock(&gate_mu);
}

static void append_range(struct wal *w, uint64_t lo, uint64_t hi, uint64_t term, uint64_t salt)
{
    for (uint64_t i = lo; i <= hi; i++) {
        struct raft_entry e;
        tu_entry(&e, i, term, len_of(i), salt);
        cr_assert_eq(wal_append(w, &e, 1), 0, "append %llu: %s", (unsigned long long)i,
                     wal_errmsg());
        free(e.data);
    }
}

Test(wal, queue_is_bounded_and_refuses_with_eagain)
{
    struct wal_options o;
    small_opts(&o, 1 << 20);
    o.io = &gated_io;
    o.max_pending_entries = 4;
    gate_set(1);
    gate_entered = 0;
    struct wal *w = tu_open(dir, &o);
    append_range(w, 1, 1, 1, 0);
    gate_wait_entered(1); /* entry 1 is being written and still counts */
    append_range(w, 2, 4, 1, 0);
    struct raft_entry e;
    tu_entry(&e, 5, 1, 10, 0);
    cr_assert_eq(wal_append(w, &e, 1), -EAGAIN);
    cr_assert(strstr(wal_errmsg(), "queue full"), "%s", wal_errmsg());
    gate_set(0);
    cr_assert_eq(wal_wait_durable(w, 4), 0);
    cr_assert_eq(wal_append(w, &e, 1), 0, "room again once written");
    free(e.data);
    cr_assert_eq(wal_wait_durable(w, 5), 0);
    wal_close(w);

    small_opts(&o, 1 << 20);
    o.max_pending_bytes = 1000;
    w = tu_open(dir, &o);
    tu_entry(&e, 6, 1, 2000, 0);
    cr_assert_eq(wal_append(w, &e, 1), -EAGAIN, "larger than the byte bound");
    free(e.data);
    wal_close(w);
}

struct trunc_arg {
    struct wal *w;
    uint64_t index;
    int rc;
};

static void *truncate_thread(void *p)
{
    struct trunc_arg *a = p;
    a->rc = wal_truncate_suffix(a->w, a->index);
    return NULL;
}

/* Opens a log whose fdatasync is gated, with some prefix of 1..10 in flight and the rest of
 * 1..20 queued. */
static struct wal *open_with_a_batch_in_flight(struct wal_options *o)
{
    small_opts(o, 1 << 20);
    o->io = &gated_io;
    gate_set(1);
    gate_entered = 0;
    struct wal *w = tu_open(dir, o);
    append_range(w, 1, 10, 1, 0);
    gate_wait_entered(1);
    append_range(w, 11, 20, 1, 0);
    return w;
}

/* Runs fn(arg) on a thread, opens the gate, and waits for fn, which must itself wait for the
 * batch the gate holds. */
static void run_as_the_gate_opens(void *(*fn)(void *), void *arg)
{
    pthread_t t;
    pthread_create(&t, NULL, fn, arg);
    gate_set(0);
    pthread_join(t, NULL);
}

Test(wal, truncation_with_writes_in_flight_and_queued)
{
    struct wal_options o;
    struct wal *w = open_with_a_batch_in_flight(&o);
    /* Queued entries above the point can be cut without touching the disk, but the truncation
     * must first wait for the batch in flight. */
    struct trunc_arg a = {w, 15, -1};
    run_as_the_gate_opens(truncate_thread, &a);
    cr_assert_eq(a.rc, 0, "%s", wal_errmsg());
    cr_assert_eq(wal_last_index(w), 14);
    cr_assert_eq(wal_wait_durable(w, 15), -ECANCELED);
    cr_assert_eq(wal_wait_durable(w, 14), 0);
    append_range(w, 15, 16, 2, 3);
    /* Now cut below the durable index while more is queued. */
    cr_assert_eq(wal_wait_durable(w, 16), 0);
    gate_set(1);
    gate_entered = 0;
    append_range(w, 17, 18, 2, 3);
    gate_wait_entered(1);
    append_range(w, 19, 25, 2, 3);
    a.index = 8;
    run_as_the_gate_opens(truncate_thread, &a);
    cr_assert_eq(a.rc, 0, "%s", wal_errmsg());
    cr_assert_eq(wal_last_index(w), 7);
    cr_assert_eq(wal_durable_index(w), 7);
    cr_assert_eq(wal_wait_durable(w, 20), -ECANCELED);
    append_range(w, 8, 9, 3, 4);
    cr_assert_eq(wal_wait_durable(w, 9), 0);
    wal_close(w);
    w = tu_open(dir, &o);
    cr_assert_eq(wal_last_index(w), 9);
    for (uint64_t i = 1; i <= 7; i++)
        tu_expect_entry(w, i, 1, len_of(i), 0);
    for (uint64_t i = 8; i <= 9; i++)
        tu_expect_entry(w, i, 3, len_of(i), 4);
    wal_close(w);
}

/* ---- group commit with concurrent appenders ---- */

struct shared {
    struct wal *w;
    pthread_mutex_t mu; /* hands out indexes in order, as the Raft leader does */
    uint64_t next;
    int per_thread;
    atomic_int failures;
};

static void *appender(void *p)
{
    struct shared *s = p;
    for (int k = 0; k < s->per_thread; k++) {
        pthread_mutex_lock(&s->mu);
        uint64_t i = s->next++;
        struct raft_entry e;
        tu_entry(&e, i, 1, 64, 11);
        int rc = wal_append(s->w, &e, 1);
        pthread_mutex_unlock(&s->mu);
        free(e.data);
        if (rc != 0 || wal_wait_durable(s->w, i) != 0 || wal_durable_index(s->w) < i)
            atomic_fetch_add(&s->failures, 1);
    }
    return NULL;
}

static atomic_uint_fast64_t cb_last;
static atomic_int cb_calls, cb_regress;

static void on_durable(void *arg, uint64_t index, uint64_t term, int err)
{
    (void)arg;
    (void)term;
    if (err == 0) {
        if (index < atomic_load(&cb_last))
            atomic_fetch_add(&cb_regress, 1);
        atomic_store(&cb_last, index);
    }
    atomic_fetch_add(&cb_calls, 1);
}

Test(wal, concurrent_appenders_are_all_durable_and_batched)
{
    struct wal_options o;
    small_opts(&o, 64 * 1024);
    o.on_durable = on_durable;
    atomic_store(&cb_last, 0);
    atomic_store(&cb_calls, 0);
    atomic_store(&cb_regress, 0);
    struct shared s = {.next = 1, .per_thread = 300};
    pthread_mutex_init(&s.mu, NULL);
    s.w = tu_open(dir, &o);
    enum { T = 16 };
    pthread_t t[T];
    for (int i = 0; i < T; i++)
        pthread_create(&t[i], NULL, appender, &s);
    for (int i = 0; i < T; i++)
        pthread_join(t[i], NULL);
    uint64_t n = (uint64_t)T * (uint64_t)s.per_thread;
    cr_assert_eq(atomic_load(&s.failures), 0);
    cr_assert_eq(wal_durable_index(s.w), n);
    wal_close(s.w); /* joins the writer: every callback has run */
    cr_assert_eq(atomic_load(&cb_last), n);
    cr_assert_eq(atomic_load(&cb_regress), 0);
    /* Sixteen threads waiting each on their own entry: batches must hold many entries. */
    cr_assert(atomic_load(&cb_calls) < (int)n, "%d batches for %llu entries",
              atomic_load(&cb_calls), (unsigned long long)n);
    s.w = tu_open(dir, &o);
    cr_assert_eq(wal_last_index(s.w), n);
    for (uint64_t i = 1; i <= n; i++)
        tu_expect_entry(s.w, i, 1, 64, 11);
    wal_close(s.w);
}

Test(wal, close_flushes_queued_entries)
{
    struct wal *w = tu_open(dir, NULL);
    append_range(w, 1, 50, 1, 0);
    wal_close(w);
    w = tu_open(dir, NULL);
    cr_assert_eq(wal_last_index(w), 50);
    tu_expect_entry(w, 50, 1, len_of(50), 0);
    wal_close(w);
}

/* ---- reset (a snapshot installed) and the term before the first entry ---- */

/* Opens a log of 4 KiB segments holding entries 1..n (term_of, len_of, salt 0). */
static struct wal *open_filled(struct wal_options *o, uint64_t n)
{
    small_opts(o, 4096);
    struct wal *w = tu_open(dir, o);
    for (uint64_t i = 1; i <= n; i++)
        tu_append_sync(w, i, term_of(i), len_of(i), 0);
    return w;
}

/* Asserts that appending entry (index, term) is refused: it does not continue the log. */
static void expect_append_refused(struct wal *w, uint64_t index, uint64_t term, const char *why)
{
    struct raft_entry e;
    tu_entry(&e, index, term, 3, 0);
    cr_assert_eq(wal_append(w, &e, 1), -EINVAL, "%s", why);
    free(e.data);
}

/* Appends `index` to a log just reset to index - 1, closes, reopens, and checks that entry is the
 * whole log. Returns the reopened handle. */
static struct wal *append_sole_entry_and_reopen(struct wal *w, struct wal_options *o,
                                                uint64_t index, uint64_t term)
{
    tu_append_sync(w, index, term, len_of(index), 8);
    wal_close(w);
    w = tu_open(dir, o);
    cr_assert_eq(wal_first_index(w), index);
    cr_assert_eq(wal_last_index(w), index);
    tu_expect_entry(w, index, term, len_of(index), 8);
    return w;
}

static size_t segment_count(void)
{
    char **names;
    size_t n = tu_segments(dir, &names);
    tu_free_names(names, n);
    return n;
}

/* Asserts the log is the empty one wal_reset(index, term) leaves, with one segment file. */
static void expect_reset_log(struct wal *w, uint64_t index, uint64_t term)
{
    cr_assert_eq(wal_first_index(w), index + 1);
    cr_assert_eq(wal_last_index(w), index);
    cr_assert_eq(wal_durable_index(w), index);
    uint64_t t = 0;
    cr_assert_eq(wal_term_at(w, index, &t), 0, "%s", wal_errmsg());
    cr_assert_eq(t, term);
    cr_assert_eq(wal_term_at(w, index + 1, &t), -ENOENT);
    if (index > 0)
        cr_assert_eq(wal_term_at(w, index - 1, &t), -ENOENT);
    struct raft_entry e;
    cr_assert_eq(wal_read(w, index, &e), -ENOENT, "the reset point is not an entry");
    char **names;
    size_t n = tu_segments(dir, &names);
    char want[32];
    snprintf(want, sizeof want, "%020llu.seg", (unsigned long long)index + 1);
    cr_assert(n == 1 && strcmp(names[0], want) == 0, "%zu segments, first %s, want only %s", n,
              n ? names[0] : "-", want);
    tu_free_names(names, n);
    char *p = tu_path(dir, "reset");
    cr_assert_neq(access(p, F_OK), 0, "the reset journal is left behind");
    free(p);
}

Test(wal, reset_forward_past_the_end_then_append_and_reopen)
{
    struct wal_options o;
    struct wal *w = open_filled(&o, 100);
    cr_assert(segment_count() > 3);
    cr_assert_eq(wal_reset(w, 5000, 20), 0, "%s", wal_errmsg());
    expect_reset_log(w, 5000, 20);
    struct raft_entry e;
    cr_assert_eq(wal_read(w, 50, &e), -ENOENT, "old entries are gone");
    /* The next append must be 5001, at a term no lower than the reset's. */
    expect_append_refused(w, 5001, 19, "term below the reset term");
    expect_append_refused(w, 101, 20, "the old log's next index");
    for (uint64_t i = 5001; i <= 5150; i++)
        tu_append_sync(w, i, 20 + (i > 5100), len_of(i), 2);
    wal_close(w);

    w = tu_open(dir, &o);
    cr_assert_eq(wal_first_index(w), 5001);
    cr_assert_eq(wal_last_index(w), 5150);
    uint64_t t = 0;
    cr_assert_eq(wal_term_at(w, 5000, &t), 0, "the reset term survives reopen: %s", wal_errmsg());
    cr_assert_eq(t, 20);
    for (uint64_t i = 5001; i <= 5150; i++)
        tu_expect_entry(w, i, 20 + (i > 5100), len_of(i), 2);
    /* Truncating everything appended since goes back to the reset point and its term. */
    cr_assert_eq(wal_truncate_suffix(w, 5001), 0, "%s", wal_errmsg());
    cr_assert_eq(wal_last_index(w), 5000);
    expect_append_refused(w, 5001, 19, "the reset term still bounds appends");
    wal_close(w);
    w = tu_open(dir, &o);
    expect_reset_log(w, 5000, 20);
    wal_close(w);
}

Test(wal, reset_backward_discards_every_entry)
{
    struct wal_options o;
    struct wal *w = open_filled(&o, 120);
    /* Inside the log, and at an index whose successor names an existing segment file. */
    char **names;
    size_t n = tu_segments(dir, &names);
    uint64_t at = strtoull(names[2], NULL, 10) - 1;
    tu_free_names(names, n);
    cr_assert_eq(wal_reset(w, at, 9), 0, "%s", wal_errmsg());
    expect_reset_log(w, at, 9);
    w = append_sole_entry_and_reopen(w, &o, at + 1, 9);
    /* Below the first index too: the WAL does not judge, it replaces. */
    cr_assert_eq(wal_reset(w, 3, 2), 0, "%s", wal_errmsg());
    expect_reset_log(w, 3, 2);
    /* And (0, 0): an empty log from 1, as new. */
    cr_assert_eq(wal_reset(w, 0, 0), 0, "%s", wal_errmsg());
    expect_reset_log(w, 0, 0);
    wal_close(append_sole_entry_and_reopen(w, &o, 1, 1));
}

Test(wal, reset_refuses_bad_arguments_and_changes_nothing)
{
    struct wal *w = tu_open(dir, NULL);
    for (uint64_t i = 1; i <= 5; i++)
        tu_append_sync(w, i, 2, 10, 0);
    static const uint64_t bad[][2] = {{0, 1}, {7, 0}, {UINT64_MAX, 3}};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        cr_assert_eq(wal_reset(w, bad[k][0], bad[k][1]), -EINVAL, "reset(%llu, %llu)",
                     (unsigned long long)bad[k][0], (unsigned long long)bad[k][1]);
        cr_assert(strstr(wal_errmsg(), "reset"), "%s", wal_errmsg());
        cr_assert_eq(wal_first_index(w), 1);
        cr_assert_eq(wal_last_index(w), 5);
    }
    tu_append_sync(w, 6, 2, 10, 0);
    wal_close(w);
    w = tu_open(dir, NULL);
    cr_assert_eq(wal_last_index(w), 6);
    for (uint64_t i = 1; i <= 6; i++)
        tu_expect_entry(w, i, 2, 10, 0);
    wal_close(w);
}

struct reset_arg {
    struct wal *w;
    uint64_t index, term;
    int rc;
};

static void *reset_thread(void *p)
{
    struct reset_arg *a = p;
    a->rc = wal_reset(a->w, a->index, a->term);
    return NULL;
}

Test(wal, reset_waits_for_the_batch_in_flight_and_drops_the_queue)
{
    struct wal_options o;
    struct wal *w = open_with_a_batch_in_flight(&o);
    struct reset_arg a = {w, 12, 3, -1};
    run_as_the_gate_opens(reset_thread, &a);
    cr_assert_eq(a.rc, 0, "%s", wal_errmsg());
    /* Below 12 or not, every queued entry was dropped and its waiter told so. */
    for (uint64_t i = 13; i <= 20; i++)
        cr_assert_eq(wal_wait_durable(w, i), -ECANCELED, "entry %llu", (unsigned long long)i);
    wal_close(append_sole_entry_and_reopen(w, &o, 13, 3));
}

/* An on_durable callback that can be held, keeping the writer from taking the queue. */
static atomic_int cb_hold, cb_held;

static void holding_on_durable(void *arg, uint64_t index, uint64_t term, int err)
{
    (void)arg;
    (void)index;
    (void)term;
    (void)err;
    pthread_mutex_lock(&gate_mu);
    atomic_fetch_add(&cb_held, 1);
    pthread_cond_broadcast(&gate_cv);
    while (atomic_load(&cb_hold))
        pthread_cond_wait(&gate_cv, &gate_mu);
    pthread_mutex_unlock(&gate_mu);
}

struct waiter {
    struct wal *w;
    uint64_t index;
    atomic_int tid;
    int rc;
};

static void *wait_thread(void *p)
{
    struct waiter *a = p;
    atomic_store(&a->tid, (int)syscall(SYS_gettid));
    a->rc = wal_wait_durable(a->w, a->index);
    return NULL;
}

/* Returns once the waiter is asleep in the kernel. After publishing its tid it runs only
 * wal_wait_durable, whose one blocking call is the futex wait, so state S in
 * /proc/self/task/<tid>/stat means the wait is in progress. The kernel's own view of the thread
 * is the signal: no timed sleep. */
static void wait_until_asleep(struct waiter *a)
{
    while (atomic_load(&a->tid) == 0)
        sched_yield();
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/self/task/%d/stat", atomic_load(&a->tid));
    for (;;) {
        FILE *f = fopen(path, "r");
        cr_assert_not_null(f, "%s", path);
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = 0;
        const char *p = strrchr(buf, ')'); /* the state follows the command name */
        if (p && p[1] == ' ' && p[2] == 'S')
            return;
        sched_yield();
    }
}

Test(wal, reset_forward_cancels_waits_in_progress_on_queued_entries)
{
    struct wal_options o;
    small_opts(&o, 1 << 20);
    o.on_durable = holding_on_durable;
    atomic_store(&cb_hold, 1);
    atomic_store(&cb_held, 0);
    struct wal *w = tu_open(dir, &o);
    append_range(w, 1, 1, 1, 0);
    pthread_mutex_lock(&gate_mu);
    while (atomic_load(&cb_held) == 0)
        pthread_cond_wait(&gate_cv, &gate_mu);
    pthread_mutex_unlock(&gate_mu);
    /* The writer sits in the callback: 2..10 stay queued, and nothing else wakes waiters. */
    append_range(w, 2, 10, 1, 0);
    struct waiter a = {.w = w, .index = 5};
    pthread_t t;
    pthread_create(&t, NULL, wait_thread, &a);
    wait_until_asleep(&a);
    /* Forward past the waited index: durable jumps to 1000, yet entry 5 was never written. */
    cr_assert_eq(wal_reset(w, 1000, 4), 0, "%s", wal_errmsg());
    pthread_join(t, NULL);
    cr_assert_eq(a.rc, -ECANCELED, "a wait across a reset must not report a dropped entry durable");
    /* A wait begun after the reset: the snapshot covers index 5. */
    cr_assert_eq(wal_wait_durable(w, 5), 0);
    cr_assert_eq(wal_wait_durable(w, 1001), -ECANCELED);
    expect_reset_log(w, 1000, 4);
    pthread_mutex_lock(&gate_mu);
    atomic_store(&cb_hold, 0);
    pthread_cond_broadcast(&gate_cv);
    pthread_mutex_unlock(&gate_mu);
    tu_append_sync(w, 1001, 4, 9, 9);
    wal_close(w);
    w = tu_open(dir, NULL);
    cr_assert_eq(wal_last_index(w), 1001, "none of 2..10 was written after the reset");
    tu_expect_entry(w, 1001, 4, 9, 9);
    wal_close(w);
}

Test(wal, term_before_the_first_entry_survives_compaction_and_reopen)
{
    struct wal_options o;
    struct wal *w = open_filled(&o, 300);
    uint64_t t = 99;
    cr_assert_eq(wal_term_at(w, 0, &t), 0, "entry 0 has term 0");
    cr_assert_eq(t, 0);
    cr_assert_eq(wal_compact_prefix(w, 150), 0, "%s", wal_errmsg());
    uint64_t first = wal_first_index(w);
    cr_assert(first > 1);
    cr_assert_eq(wal_term_at(w, first - 1, &t), 0, "%s", wal_errmsg());
    cr_assert_eq(t, term_of(first - 1));
    cr_assert_eq(wal_term_at(w, first - 2, &t), -ENOENT);
    wal_close(w);
    w = tu_open(dir, &o);
    cr_assert_eq(wal_first_index(w), first);
    t = 0;
    cr_assert_eq(wal_term_at(w, first - 1, &t), 0, "%s", wal_errmsg());
    cr_assert_eq(t, term_of(first - 1), "term %llu of entry %llu", (unsigned long long)t,
                 (unsigned long long)first - 1);
    /* Truncating to empty leaves the log ending there, with that term. */
    cr_assert_eq(wal_truncate_suffix(w, first), 0, "%s", wal_errmsg());
    cr_assert_eq(wal_last_index(w), first - 1);
    expect_append_refused(w, first, term_of(first - 1) - 1, "below the term before first");
    wal_close(w);
}

/* A first-index marker as the version 1 format wrote it (docs/wal.md): no term. */
static void write_marker(uint32_t version, uint64_t first, uint64_t b)
{
    uint8_t buf[32] = "CRFI";
    for (int i = 0; i < 4; i++)
        buf[4 + i] = (uint8_t)(version >> (8 * i));
    for (int i = 0; i < 8; i++) {
        buf[8 + i] = (uint8_t)(first >> (8 * i));
        buf[16 + i] = (uint8_t)(b >> (8 * i));
    }
    uint32_t crc = crc32c(0, buf, 24);
    for (int i = 0; i < 4; i++)
        buf[24 + i] = (uint8_t)(crc >> (8 * i));
    char *p = tu_path(dir, "first");
    int fd = open(p, O_WRONLY | O_TRUNC);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, buf, sizeof buf), (ssize_t)sizeof buf);
    close(fd);
    free(p);
}

static uint8_t marker_version(void)
{
    char *p = tu_path(dir, "first");
    int fd = open(p, O_RDONLY);
    uint8_t v = 0;
    cr_assert_eq(pread(fd, &v, 1, 4), 1);
    close(fd);
    free(p);
    return v;
}

Test(wal, version_1_marker_still_opens_and_a_newer_one_is_refused)
{
    struct wal_options o;
    struct wal *w = open_filled(&o, 300);
    wal_close(w);
    cr_assert_eq(marker_version(), 1, "a log from 1 keeps the marker older builds read");
    /* An old uncompacted log: the term before entry 1 is 0 by definition. */
    write_marker(1, 1, 0);
    w = tu_open(dir, &o);
    uint64_t t = 9;
    cr_assert_eq(wal_term_at(w, 0, &t), 0);
    cr_assert_eq(t, 0);
    cr_assert_eq(wal_compact_prefix(w, 150), 0, "%s", wal_errmsg());
    uint64_t first = wal_first_index(w);
    wal_close(w);
    cr_assert_eq(marker_version(), 2, "compaction records the term: version 2");
    /* An old compacted log: it opens, but the term before its first entry is unknown. */
    write_marker(1, first, 0);
    w = tu_open(dir, &o);
    cr_assert_eq(wal_first_index(w), first);
    cr_assert_eq(wal_last_index(w), 300);
    cr_assert_eq(wal_term_at(w, first - 1, &t), -ENOENT);
    cr_assert(strstr(wal_errmsg(), "unknown"), "%s", wal_errmsg());
    for (uint64_t i = first; i <= 300; i++)
        tu_expect_entry(w, i, term_of(i), len_of(i), 0);
    tu_append_sync(w, 301, term_of(301), 5, 0);
    wal_close(w);
    /* A marker from a newer build is refused by name, not taken for damage. */
    write_marker(3, first, 7);
    char err[512] = "";
    cr_assert_eq(wal_open(&w, dir, &o, err, sizeof err), -ENOTSUP);
    cr_assert(strstr(err, "first") && strstr(err, "unsupported version 3"), "%s", err);
    /* A version 1 marker with a term is not something version 1 wrote. */
    write_marker(1, first, 7);
    cr_assert_eq(wal_open(&w, dir, &o, err, sizeof err), -EBADMSG);
    cr_assert(strstr(err, "first") && strstr(err, "corrupt"), "%s", err);
}

Test(wal, reset_on_a_full_disk_defers_preallocation)
{
    struct wal_options o;
    failing_opts(&o, 1 << 20);
    struct wal *w = tu_open(dir, &o);
    for (uint64_t i = 1; i <= 5; i++)
        tu_append_sync(w, i, 1, 100, 0);
    /* With no room to preallocate, the reset still completes (it has just freed the old
     * segments); the writer retries, and appends fail until there is room. */
    atomic_store(&fail_fallocate, 1);
    cr_assert_eq(wal_reset(w, 50, 2), 0, "%s", wal_errmsg());
    expect_reset_log(w, 50, 2);
    struct raft_entry e;
    tu_entry(&e, 51, 2, 10, 0);
    cr_assert_eq(wal_append(w, &e, 1), 0);
    cr_assert_eq(wal_wait_durable(w, 51), -ENOSPC);
    free(e.data);
    cr_assert_eq(wal_last_index(w), 50);
    wal_close(w);
    /* Reopening on the still-full disk works too. */
    w = tu_open(dir, &o);
    expect_reset_log(w, 50, 2);
    atomic_store(&fail_fallocate, 0);
    tu_append_sync(w, 51, 2, 10, 0);
    wal_close(w);
    w = tu_open(dir, &o);
    cr_assert_eq(wal_last_index(w), 51);
    tu_expect_entry(w, 51, 2, 10, 0);
    wal_close(w);
}

/* Lines of the log file at path that contain needle. */
static int lines_with(const char *path, const char *needle, char *first, size_t first_len)
{
    FILE *f = fopen(path, "r");
    cr_assert(f);
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof line, f))
        if (strstr(line, needle) && n++ == 0 && first)
            snprintf(first, first_len, "%s", line);
    fclose(f);
    return n;
}

Test(wal, slow_fdatasync_is_logged_and_rate_limited)
{
    char *path = tu_path(dir, "craft.log");
    struct log_config lc = {.outputs = path, .repeat_burst = 2, .repeat_interval_ms = 3600000};
    char err[256];
    cr_assert_eq(log_configure(&lc, err, sizeof err), 0, "%s", err);
    struct wal_options o;
    small_opts(&o, 1 << 20);
    o.warn_sync_ns = 1; /* every fdatasync is "slow" */
    o.log_id = 0xabc;
    struct wal *w = tu_open(dir, &o);
    for (uint64_t i = 1; i <= 6; i++)
        tu_append_sync(w, i, 1, 10, 0); /* one fdatasync each, at least */
    wal_close(w);
    char first[4096] = "";
    cr_assert_eq(lines_with(path, "\"msg\":\"slow fdatasync\"", first, sizeof first), 2,
                 "the burst, then nothing within the window");
    cr_assert(strstr(first, "\"level\":\"warn\""), "%s", first);
    cr_assert(strstr(first, "\"member\":\"abc\",\"took\":\""), "%s", first);
    cr_assert(strstr(first, "\"expected-duration\":\"1ns\"}"), "%s", first);
    log_flush_suppressed(true); /* at exit: the rest, counted */
    char last[4096];
    cr_assert_eq(lines_with(path, "slow fdatasync (suppressed ", last, sizeof last), 1);
    log_reset();

    /* Under the threshold: nothing. */
    char *dir2 = tu_mkdtemp();
    lc.repeat_burst = 0;
    cr_assert_eq(log_configure(&lc, err, sizeof err), 0, "%s", err);
    o.warn_sync_ns = 3600ull * 1000000000; /* an hour */
    w = tu_open(dir2, &o);
    tu_append_sync(w, 1, 1, 10, 0);
    wal_close(w);
    cr_assert_eq(lines_with(path, "slow fdatasync", NULL, 0), 3, "no new line");
    log_reset();
    tu_rmtree(dir2);
    free(dir2);
    free(path);
}
