/* lazy_io_test.c: the power-loss layer itself (lazy_io.h): what it keeps and drops at a crash,
 * on a plain file and under the write-ahead log - including a log whose fdatasync never reaches
 * the disk, which kill -9 cannot tell from a correct one and a power loss can. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/wal/lazy_io.h"
#include "tests/wal/wal_test_util.h"

static char buf_of(const char *path, long off)
{
    int fd = open(path, O_RDONLY);
    cr_assert(fd >= 0);
    char c = 0;
    cr_assert_eq(pread(fd, &c, 1, off), 1);
    close(fd);
    return c;
}

Test(lazy_io, a_crash_keeps_synced_writes_and_drops_the_rest)
{
    char *dir = tu_mkdtemp();
    char *path = tu_path(dir, "f");
    int fd = open(path, O_RDWR | O_CREAT, 0600);
    cr_assert(fd >= 0);
    const struct wal_io *io = lazy_io();
    cr_assert_eq(io->pwrite(fd, "aaaa", 4, 0), 4);
    cr_assert_eq(io->fdatasync(fd), 0);
    cr_assert_eq(io->pwrite(fd, "bb", 2, 1), 2);     /* overwrites, unsynced */
    cr_assert_eq(io->pwrite(fd, "cccc", 4, 4), 4);   /* extends, unsynced */
    cr_assert_eq(buf_of(path, 1), 'b', "reads see unsynced writes");
    cr_assert_eq(lazy_io_unsynced(dir), 2);
    cr_assert_eq(lazy_io_crash(dir), 2);
    /* Power off: the disk refuses everything until revived. */
    errno = 0;
    cr_assert_eq(io->pwrite(fd, "x", 1, 0), -1);
    cr_assert_eq(errno, EIO);
    cr_assert_eq(io->fdatasync(fd), -1);
    close(fd);
    lazy_io_revive(dir);
    cr_assert_eq(tu_file_size(path), 4, "the unsynced extension survived");
    cr_assert_eq(buf_of(path, 1), 'a');
    cr_assert_eq(buf_of(path, 2), 'a');
    cr_assert_eq(lazy_io_unsynced(dir), 0);
    free(path);
    tu_rmtree(dir);
    free(dir);
}

/* The log's entries survive a crash exactly as far as wal_wait_durable said. */
Test(lazy_io, the_log_keeps_every_entry_it_reported_durable)
{
    char *dir = tu_mkdtemp();
    struct wal_options o;
    wal_options_init(&o);
    o.segment_size = 1 << 20;
    o.io = lazy_io();
    o.log = tu_quiet_log;
    struct wal *w = tu_open(dir, &o);
    for (uint64_t i = 1; i <= 50; i++)
        tu_append_sync(w, i, 1, 100, 7);
    cr_assert_eq(lazy_io_unsynced(dir), 0, "a durable entry left an unsynced write");
    lazy_io_crash(dir);
    wal_close(w);
    lazy_io_revive(dir);
    w = tu_open(dir, &o);
    cr_assert_eq(wal_last_index(w), 50);
    for (uint64_t i = 1; i <= 50; i++)
        tu_expect_entry(w, i, 1, 100, 7);
    wal_close(w);
    tu_rmtree(dir);
    free(dir);
}

/* A log whose fdatasync is a no-op (the bug): every entry is "durable" at once, and a power loss
 * takes them all. The layer sees it; kill -9 (the page cache survives) would not. */
static int no_sync(int fd)
{
    (void)fd;
    return 0;
}

Test(lazy_io, a_log_that_skips_fdatasync_loses_what_it_reported_durable)
{
    char *dir = tu_mkdtemp();
    struct wal_io broken = *lazy_io();
    broken.fdatasync = no_sync;
    struct wal_options o;
    wal_options_init(&o);
    o.segment_size = 1 << 20;
    o.io = &broken;
    o.log = tu_quiet_log;
    struct wal *w = tu_open(dir, &o);
    for (uint64_t i = 1; i <= 20; i++)
        tu_append_sync(w, i, 1, 100, 9);
    cr_assert_gt(lazy_io_unsynced(dir), 0);
    lazy_io_crash(dir);
    wal_close(w);
    lazy_io_revive(dir);
    w = tu_open(dir, &o);
    cr_assert_lt(wal_last_index(w), 20, "entries never synced survived the power loss");
    wal_close(w);
    tu_rmtree(dir);
    free(dir);
}
