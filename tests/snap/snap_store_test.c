/* The snapshot store: round trips, damaged files refused by name, fallback to an older snapshot,
 * retention, leftovers, the lock, bounds, and write failures (a full disk). */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "raft/snap/snap.h"
#include "raft/wal/crc32c.h"
#include "tests/snap/snap_test_util.h"
#include "tests/wal/wal_test_util.h"

static char *root, *dir;

static void setup(void)
{
    root = tu_mkdtemp();
    dir = tu_path(root, "snap");
    tu_notice_count = 0;
    tu_last_notice[0] = 0;
}

static void teardown(void)
{
    tu_rmtree(root);
    free(root);
    free(dir);
}

TestSuite(store, .init = setup, .fini = teardown, .timeout = 60);

Test(store, round_trip_with_configuration_and_payload)
{
    struct snap_store *s = st_open(dir, NULL);
    /* The payload spans several of the verifier's read buffers and odd write sizes. */
    st_make(s, 1000, 3, 300, (1 << 20) + 123, 1);
    st_expect_in(s, 1000, 3, 300, (1 << 20) + 123, 1);
    st_make(s, 1, 1, 0, 0, 2); /* the smallest: no configuration, an empty payload */
    st_expect_in(s, 1, 1, 0, 0, 2);
    st_make(s, 2, 1, SNAP_MAX_CONFIG, 5, 3);
    st_expect_in(s, 2, 1, SNAP_MAX_CONFIG, 5, 3);
    snap_store_close(s);

    s = st_open(dir, NULL);
    struct snap_file *f;
    cr_assert_eq(snap_load_newest(s, 0, &f), 0, "%s", snap_errmsg());
    st_expect(f, 1000, 3, 300, (1 << 20) + 123, 1);
    snap_file_close(f);
    cr_assert_eq(tu_notice_count, 0, "%s", tu_last_notice);
    snap_store_close(s);
}

Test(store, file_holds_exactly_what_the_spec_says)
{
    struct snap_store *s = st_open(dir, NULL);
    st_make(s, 0x1234, 0x56, 3, 10, 9);
    snap_store_close(s);
    char *p = st_snap_path(dir, 0x1234, 0x56);
    cr_assert(strstr(p, "/0000000000000056-0000000000001234.snap"), "%s", p);
    size_t len;
    uint8_t *b = st_slurp(p, &len);
    cr_assert_eq(len, 64 + 3 + 10 + 8);
    cr_assert(memcmp(b, "CRFTSNAP", 8) == 0 && b[8] == 1 && b[12] == 3 && b[16] == 0x34 &&
              b[17] == 0x12 && b[24] == 0x56 && b[32] == 10);
    uint32_t crc = crc32c(0, b, len - 8);
    cr_assert(b[len - 8] == (crc & 0xFF) && b[len - 5] == crc >> 24, "trailer CRC");
    cr_assert(memcmp(b + len - 4, "CRSE", 4) == 0);
    free(b);
    free(p);
}

/* A producer that writes to the descriptor itself, as mdb_env_copyfd2 does. */
Test(store, payload_written_through_the_descriptor)
{
    struct snap_store *s = st_open(dir, NULL);
    size_t len = 300000;
    uint8_t *p = malloc(len), cfg[7];
    st_bytes(p, len, 5);
    st_bytes(cfg, sizeof cfg, 6);
    struct snap_writer *w;
    cr_assert_eq(snap_create(s, 77, 4, cfg, sizeof cfg, &w), 0, "%s", snap_errmsg());
    int fd = snap_writer_fd(w);
    cr_assert(fd >= 0);
    for (size_t off = 0; off < len; off += 65536) {
        size_t k = len - off < 65536 ? len - off : 65536;
        cr_assert_eq(write(fd, p + off, k), (ssize_t)k);
    }
    cr_assert_eq(snap_write(w, "x", 1), -EINVAL, "snap_write after snap_writer_fd");
    cr_assert_eq(snap_commit(w), 0, "%s", snap_errmsg());
    st_expect_in(s, 77, 4, sizeof cfg, len, 5);
    free(p);
    snap_store_close(s);
}

/* Damages the one snapshot on disk and checks snap_open refuses it naming the file and why. */
static void expect_damage_refused(void (*damage)(const char *path), const char *why)
{
    tu_rmtree(dir);
    struct snap_store *s = st_open(dir, NULL);
    st_make(s, 50, 2, 20, 1000, 4);
    char *p = st_snap_path(dir, 50, 2);
    damage(p);
    struct snap_file *f;
    int rc = snap_open(s, 50, 2, &f);
    cr_assert_eq(rc, -EBADMSG, "%s: %d", why, rc);
    cr_assert_null(f);
    cr_assert(strstr(snap_errmsg(), p), "'%s' does not name %s", snap_errmsg(), p);
    cr_assert(strstr(snap_errmsg(), why), "'%s' does not say '%s'", snap_errmsg(), why);
    rc = snap_load_newest(s, 0, &f);
    cr_assert_eq(rc, -EBADMSG);
    cr_assert(strstr(snap_errmsg(), p) && strstr(snap_errmsg(), why), "%s", snap_errmsg());
    free(p);
    snap_store_close(s);
}

static void cut_header(const char *p)
{
    tu_truncate(p, 30);
}
static void bad_magic(const char *p)
{
    tu_write_at(p, 0, "XRFT", 4);
}
static void bad_version(const char *p)
{
    tu_write_at(p, 8, "\x09", 1);
}
static void flip_payload(const char *p)
{
    tu_flip_bit(p, 64 + 20 + 500, 3);
}
static void flip_config(const char *p)
{
    tu_flip_bit(p, 64 + 3, 0);
}
static void cut_payload(const char *p)
{
    tu_truncate(p, tu_file_size(p) - 1);
}
static void extra_byte(const char *p)
{
    tu_write_at(p, tu_file_size(p), "", 1);
}
/* A header that is self-consistent (its checksum matches) but claims an oversized config. */
static void oversize_config(const char *p)
{
    uint8_t h[64];
    int fd = open(p, O_RDWR);
    cr_assert_eq(pread(fd, h, 64, 0), 64);
    close(fd);
    h[12] = 0x01, h[13] = 0x00, h[14] = 0x01; /* 65537 */
    uint32_t c = crc32c(0, h, 60);
    for (int i = 0; i < 4; i++)
        h[60 + i] = (uint8_t)(c >> (8 * i));
    tu_write_at(p, 0, h, 64);
}
static void bad_trailer(const char *p)
{
    tu_write_at(p, tu_file_size(p) - 2, "??", 2);
}

Test(store, damaged_files_are_refused_by_name_with_the_reason)
{
    expect_damage_refused(cut_header, "truncated header");
    expect_damage_refused(bad_magic, "bad magic");
    expect_damage_refused(bad_version, "unsupported format version 9");
    expect_damage_refused(flip_payload, "checksum mismatch");
    expect_damage_refused(flip_config, "checksum mismatch");
    expect_damage_refused(cut_payload, "truncated: the file is");
    expect_damage_refused(extra_byte, "payload length mismatch");
    expect_damage_refused(oversize_config, "configuration length 65537 exceeds the limit");
    expect_damage_refused(bad_trailer, "bad trailer marker");
}

Test(store, a_file_whose_header_names_another_snapshot_is_refused)
{
    struct snap_store *s = st_open(dir, NULL);
    st_make(s, 10, 2, 0, 10, 1);
    char *a = st_snap_path(dir, 10, 2), *b = st_snap_path(dir, 11, 2);
    cr_assert_eq(rename(a, b), 0);
    struct snap_file *f;
    cr_assert_eq(snap_open(s, 11, 2, &f), -EBADMSG);
    cr_assert(strstr(snap_errmsg(), "the header names index 10 term 2"), "%s", snap_errmsg());
    cr_assert_eq(snap_open(s, 10, 2, &f), -ENOENT);
    free(a);
    free(b);
    snap_store_close(s);
}

Test(store, newest_damaged_falls_back_to_an_older_one_only_when_allowed)
{
    struct snap_store *s = st_open(dir, NULL);
    struct snap_file *f;
    cr_assert_eq(snap_load_newest(s, 1, &f), -ENOENT, "empty store");
    cr_assert(strstr(snap_errmsg(), "no snapshot"), "%s", snap_errmsg());
    st_make(s, 100, 1, 8, 5000, 1);
    st_make(s, 200, 1, 8, 5000, 2);
    st_make(s, 300, 2, 8, 5000, 3);
    char *p3 = st_snap_path(dir, 300, 2), *p2 = st_snap_path(dir, 200, 1);
    tu_flip_bit(p3, 2000, 1);

    cr_assert_eq(snap_load_newest(s, 0, &f), -EBADMSG);
    cr_assert(strstr(snap_errmsg(), p3) && strstr(snap_errmsg(), "not falling back"), "%s",
              snap_errmsg());

    tu_notice_count = 0;
    cr_assert_eq(snap_load_newest(s, 1, &f), 0, "%s", snap_errmsg());
    st_expect(f, 200, 1, 8, 5000, 2);
    snap_file_close(f);
    cr_assert_eq(tu_notice_count, 1);
    cr_assert(strstr(tu_last_notice, p3) && strstr(tu_last_notice, "skipped"), "%s",
              tu_last_notice);

    /* Every file damaged: an error naming them, never "no snapshot". */
    tu_truncate(p2, 100);
    char *p1 = st_snap_path(dir, 100, 1);
    tu_write_at(p1, 0, "junk", 4);
    cr_assert_eq(snap_load_newest(s, 1, &f), -EBADMSG);
    cr_assert(strstr(snap_errmsg(), "no snapshot verifies") &&
              strstr(snap_errmsg(), "0000000000000002-000000000000012c.snap") &&
              strstr(snap_errmsg(), "0000000000000001-0000000000000064.snap"), "%s",
              snap_errmsg());
    free(p1);
    free(p2);
    free(p3);
    snap_store_close(s);
}

Test(store, a_file_changed_after_it_was_verified_fails_the_last_read)
{
    struct snap_store *s = st_open(dir, NULL);
    st_make(s, 5, 1, 4, 10000, 1);
    struct snap_file *f;
    cr_assert_eq(snap_open(s, 5, 1, &f), 0);
    char *p = st_snap_path(dir, 5, 1);
    tu_flip_bit(p, 64 + 4 + 9000, 0);
    uint8_t buf[4096];
    long n, total = 0;
    while ((n = snap_file_read(f, buf, sizeof buf)) > 0)
        total += n;
    cr_assert_eq(n, -EBADMSG, "the damage went unnoticed");
    cr_assert(total < 10000, "the read completing the payload must fail, got %ld bytes", total);
    cr_assert(strstr(snap_errmsg(), "checksum mismatch"), "%s", snap_errmsg());
    snap_file_close(f);
    free(p);
    snap_store_close(s);
}

Test(store, list_is_newest_first_by_index_then_term)
{
    struct snap_store *s = st_open(dir, NULL);
    st_make(s, 5, 2, 0, 1, 1);
    st_make(s, 10, 1, 0, 1, 2); /* its name sorts first, but its index is higher */
    st_make(s, 10, 3, 0, 1, 3);
    st_make(s, 7, 3, 0, 1, 4);
    struct snap_info *a;
    size_t n;
    cr_assert_eq(snap_list(s, &a, &n), 0);
    cr_assert_eq(n, 4);
    uint64_t want[4][2] = {{10, 3}, {10, 1}, {7, 3}, {5, 2}};
    for (size_t i = 0; i < n; i++)
        cr_assert(a[i].index == want[i][0] && a[i].term == want[i][1], "%zu: %s", i, a[i].name);
    free(a);
    snap_store_close(s);
}

Test(store, retention_keeps_the_newest_max_snapshots)
{
    struct snap_options o;
    st_options(&o);
    o.max_snapshots = 3;
    struct snap_store *s = st_open(dir, &o);
    for (uint64_t i = 1; i <= 6; i++)
        st_make(s, i * 10, 1, 0, 100, i);
    struct snap_info *a;
    size_t n;
    cr_assert_eq(snap_list(s, &a, &n), 0);
    cr_assert_eq(n, 3);
    cr_assert(a[0].index == 60 && a[1].index == 50 && a[2].index == 40);
    free(a);
    /* One older than all kept is still kept: it is what the caller just wrote. */
    st_make(s, 5, 1, 0, 100, 9);
    cr_assert_eq(snap_list(s, &a, &n), 0);
    cr_assert_eq(n, 4);
    cr_assert_eq(a[3].index, 5);
    free(a);
    /* The next commit trims back to three. */
    st_make(s, 70, 1, 0, 100, 7);
    cr_assert_eq(snap_list(s, &a, &n), 0);
    cr_assert(n == 3 && a[0].index == 70 && a[2].index == 50);
    free(a);
    st_expect_in(s, 70, 1, 0, 100, 7);
    snap_store_close(s);

    o.max_snapshots = 0; /* keep all */
    s = st_open(dir, &o);
    for (uint64_t i = 8; i <= 12; i++)
        st_make(s, i * 10, 1, 0, 10, i);
    cr_assert_eq(snap_list(s, &a, &n), 0);
    cr_assert_eq(n, 8);
    free(a);
    snap_store_close(s);
}

Test(store, default_options_are_documented_values)
{
    struct snap_options o;
    snap_options_init(&o);
    cr_assert_eq(o.max_snapshots, 5);
    cr_assert_eq(o.max_chunk_bytes, 1u << 20);
    cr_assert_eq(o.max_snapshot_bytes, 16ull << 30);
    struct snap_store *s = st_open(dir, NULL);
    for (uint64_t i = 1; i <= 7; i++)
        st_make(s, i, 1, 0, 1, i);
    cr_assert_eq(st_count(dir, ".snap"), 5);
    snap_store_close(s);
}

Test(store, leftovers_are_removed_at_open_and_foreign_files_left_alone)
{
    struct snap_store *s = st_open(dir, NULL);
    st_make(s, 9, 1, 0, 10, 1);
    snap_store_close(s);
    char *tmp = tu_path(dir, "0000000000000001-000000000000000a.snap.tmp");
    char *foreign = tu_path(dir, "notes.snap.tmp");
    st_put(tmp, "half", 4);
    st_put(foreign, "mine", 4);
    s = st_open(dir, NULL);
    cr_assert_eq(access(tmp, F_OK), -1, "the unfinished snapshot is still there");
    cr_assert_eq(access(foreign, F_OK), 0, "a file that is not the store's was removed");
    cr_assert(strstr(tu_last_notice, "unfinished snapshot"), "%s", tu_last_notice);
    st_expect_in(s, 9, 1, 0, 10, 1);
    free(tmp);
    free(foreign);
    snap_store_close(s);
}

Test(store, a_second_store_on_the_directory_is_refused)
{
    struct snap_store *s = st_open(dir, NULL), *t;
    char err[256];
    cr_assert_eq(snap_store_open(&t, dir, NULL, err, sizeof err), -EBUSY);
    cr_assert_null(t);
    cr_assert(strstr(err, "in use"), "%s", err);
    snap_store_close(s);
    t = st_open(dir, NULL);
    snap_store_close(t);
}

Test(store, bounds_are_enforced)
{
    struct snap_options o;
    st_options(&o);
    char err[256];
    struct snap_store *s;
    o.max_chunk_bytes = 0;
    cr_assert_eq(snap_store_open(&s, dir, &o, err, sizeof err), -EINVAL);
    o.max_chunk_bytes = SNAP_MAX_CHUNK + 1;
    cr_assert_eq(snap_store_open(&s, dir, &o, err, sizeof err), -EINVAL);
    cr_assert(strstr(err, "max_chunk_bytes"), "%s", err);
    o.max_chunk_bytes = 4096;
    o.max_snapshot_bytes = 71;
    cr_assert_eq(snap_store_open(&s, dir, &o, err, sizeof err), -EINVAL);

    o.max_snapshot_bytes = 1000;
    s = st_open(dir, &o);
    struct snap_writer *w;
    static uint8_t big[SNAP_MAX_CONFIG + 1];
    cr_assert_eq(snap_create(s, 1, 1, big, sizeof big, &w), -EMSGSIZE);
    cr_assert_eq(snap_create(s, 0, 1, NULL, 0, &w), -EINVAL);
    cr_assert_eq(snap_create(s, 1, 0, NULL, 0, &w), -EINVAL);
    cr_assert_eq(snap_create(s, 1, 1, big, 1000, &w), -EFBIG);
    cr_assert_eq(snap_create(s, 1, 1, big, 100, &w), 0);
    cr_assert_eq(snap_write(w, big, 828), 0, "exactly the limit: %s", snap_errmsg());
    cr_assert_eq(snap_write(w, big, 1), -EFBIG);
    cr_assert(strstr(snap_errmsg(), "max_snapshot_bytes"), "%s", snap_errmsg());
    cr_assert_eq(snap_commit(w), -EFBIG, "a failed writer cannot commit");
    cr_assert_eq(st_count(dir, ".tmp") + st_count(dir, ".snap"), 0);
    snap_store_close(s);
}

Test(store, a_snapshot_of_the_same_name_is_written_once_at_a_time_and_replaced)
{
    struct snap_store *s = st_open(dir, NULL);
    struct snap_writer *w, *w2;
    cr_assert_eq(snap_create(s, 4, 1, NULL, 0, &w), 0);
    cr_assert_eq(snap_create(s, 4, 1, NULL, 0, &w2), -EBUSY);
    cr_assert(strstr(snap_errmsg(), "being written"), "%s", snap_errmsg());
    snap_abort(w);
    cr_assert_eq(st_count(dir, ".tmp"), 0, "abort removes the temporary file");
    st_make(s, 4, 1, 2, 30, 1);
    st_make(s, 4, 1, 3, 40, 2);
    st_expect_in(s, 4, 1, 3, 40, 2);
    cr_assert_eq(st_count(dir, ".snap"), 1);
    snap_store_close(s);
}

/* ---- a full disk ---- */

static int fail_after; /* pwrite calls that succeed before one fails with ENOSPC; -1: never */
static int fail_fsync;

static ssize_t enospc_pwrite(int fd, const void *buf, size_t len, off_t off)
{
    if (fail_after == 0) {
        errno = ENOSPC;
        return -1;
    }
    if (fail_after > 0)
        fail_after--;
    /* A short write first, as a filling disk gives. */
    return pwrite(fd, buf, len > 1000 ? len / 2 : len, off);
}

static int eio_fsync(int fd)
{
    if (fail_fsync) {
        errno = EIO;
        return -1;
    }
    return fsync(fd);
}

Test(store, a_full_disk_fails_the_snapshot_and_leaves_the_store_working)
{
    struct snap_io io = {enospc_pwrite, eio_fsync};
    struct snap_options o;
    st_options(&o);
    o.io = &io;
    fail_after = -1;
    fail_fsync = 0;
    struct snap_store *s = st_open(dir, &o);
    st_make(s, 1, 1, 5, 5000, 1);
    for (int k = 0; k < 6; k++) {
        fail_after = k;
        struct snap_writer *w;
        int rc = snap_create(s, 2, 1, "cfg", 3, &w);
        if (rc == 0) {
            uint8_t buf[3000];
            st_bytes(buf, sizeof buf, 3);
            for (int i = 0; i < 4 && rc == 0; i++)
                rc = snap_write(w, buf, sizeof buf);
            if (rc == 0)
                rc = snap_commit(w);
            else {
                cr_assert_eq(snap_commit(w), -ENOSPC, "commit after a failed write");
                cr_assert(strstr(snap_errmsg(), "No space left"), "%s", snap_errmsg());
            }
        }
        cr_assert_eq(rc, -ENOSPC, "failure after %d writes: %d %s", k, rc, snap_errmsg());
        cr_assert_eq(st_count(dir, ".tmp"), 0, "the temporary file is removed");
        cr_assert_eq(st_count(dir, ".snap"), 1);
    }
    fail_after = -1;
    fail_fsync = 1;
    struct snap_writer *w;
    cr_assert_eq(snap_create(s, 2, 1, NULL, 0, &w), 0);
    cr_assert_eq(snap_commit(w), -EIO);
    cr_assert(strstr(snap_errmsg(), "fsync"), "%s", snap_errmsg());
    cr_assert_eq(st_count(dir, ".tmp") + st_count(dir, ".snap"), 1);
    fail_fsync = 0;
    st_make(s, 2, 1, 5, 5000, 2);
    st_expect_in(s, 1, 1, 5, 5000, 1);
    st_expect_in(s, 2, 1, 5, 5000, 2);
    snap_store_close(s);
}

/* A producer that learns its index only after writing (fsm.h's snapshot_write) creates the
 * snapshot unnamed and names it at commit; two unnamed ones can be written at once; a plain
 * commit of an unnamed one, or naming a named one, is refused and leaves nothing behind. */
Test(store, a_snapshot_named_at_commit)
{
    struct snap_store *s = st_open(dir, NULL);
    struct snap_writer *a, *b, *c;
    cr_assert_eq(snap_create(s, 0, 0, "cfg", 3, &a), 0, "%s", snap_errmsg());
    cr_assert_eq(snap_create(s, 0, 0, NULL, 0, &b), 0, "%s", snap_errmsg());
    cr_assert_eq(snap_write(a, "payload", 7), 0);
    cr_assert_eq(snap_write(b, "x", 1), 0);
    cr_assert_eq(snap_commit_as(a, 42, 7), 0, "%s", snap_errmsg());
    cr_assert_eq(snap_commit(b), -EINVAL, "an unnamed snapshot committed without a name");
    cr_assert_eq(snap_create(s, 5, 2, NULL, 0, &c), 0);
    cr_assert_eq(snap_commit_as(c, 6, 2), -EINVAL, "a named snapshot renamed");
    struct snap_file *f;
    cr_assert_eq(snap_open(s, 42, 7, &f), 0, "%s", snap_errmsg());
    cr_assert_eq(snap_file_header(f)->config_len, 3);
    cr_assert_eq(snap_file_header(f)->payload_len, 7);
    char buf[16];
    cr_assert_eq(snap_file_read(f, buf, sizeof buf), 7);
    cr_assert_eq(memcmp(buf, "payload", 7), 0);
    snap_file_close(f);
    struct snap_info *list;
    size_t n;
    cr_assert_eq(snap_list(s, &list, &n), 0);
    cr_assert_eq(n, 1, "only the named one is in the store");
    free(list);
    snap_store_close(s);
    /* No temporary file was left behind for the refused ones. */
    s = st_open(dir, NULL);
    cr_assert_eq(tu_notice_count, 0, "leftovers: %s", tu_last_notice);
    snap_store_close(s);
}
