/* Snapshot transfer: a sender reads a committed snapshot in chunks, a receiver in another store
 * takes them in order, resumes after a reconnect or a restart, refuses chunks out of place, and
 * installs only a complete snapshot that verifies. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "raft/snap/snap.h"
#include "tests/snap/snap_test_util.h"
#include "tests/wal/wal_test_util.h"

#define CHUNK 4096
#define CFG 100
#define LEN 50000 /* file of 64 + 100 + 50000 + 8 bytes: 13 chunks, the last one short */

static char *root, *src_dir, *dst_dir;
static struct snap_store *src, *dst;
static uint8_t *image; /* the sender's file */
static size_t image_len;

static void dst_open(void)
{
    struct snap_options o;
    st_options(&o);
    o.max_chunk_bytes = CHUNK;
    dst = st_open(dst_dir, &o);
}

static void setup(void)
{
    root = tu_mkdtemp();
    src_dir = tu_path(root, "src");
    dst_dir = tu_path(root, "dst");
    tu_notice_count = 0;
    tu_last_notice[0] = 0;
    src = st_open(src_dir, NULL);
    st_make(src, 900, 5, CFG, LEN, 11);
    st_make(src, 1000, 6, CFG, LEN, 12);
    char *p = st_snap_path(src_dir, 1000, 6);
    image = st_slurp(p, &image_len);
    free(p);
    dst_open();
}

static void teardown(void)
{
    snap_store_close(dst);
    snap_store_close(src);
    free(image);
    tu_rmtree(root);
    free(root);
    free(src_dir);
    free(dst_dir);
}

TestSuite(transfer, .init = setup, .fini = teardown, .timeout = 60);

/* Sends chunks from `from` until `until` bytes (or the end); returns the last chunk's result. */
static int send(struct snap_file *f, uint64_t from, uint64_t until)
{
    uint8_t buf[CHUNK];
    int rc = 0;
    for (uint64_t off = from; off < until && rc == 0;) {
        size_t n;
        cr_assert_eq(snap_file_chunk(f, off, buf, sizeof buf, &n), 0, "%s", snap_errmsg());
        cr_assert(n > 0 && n <= CHUNK);
        if (n > until - off)
            n = (size_t)(until - off);
        rc = snap_recv_chunk(dst, off, buf, n);
        cr_assert(rc >= 0, "chunk at %llu: %d %s", (unsigned long long)off, rc, snap_errmsg());
        off += n;
    }
    return rc;
}

static long partial_size(void)
{
    char *p = st_partial_path(dst_dir, 1000, 6, image_len);
    long n = tu_file_size(p);
    free(p);
    return n;
}

static struct snap_file *sender(void)
{
    struct snap_file *f;
    cr_assert_eq(snap_load_newest(src, 0, &f), 0, "%s", snap_errmsg());
    cr_assert_eq(snap_file_size(f), image_len);
    return f;
}

static void expect_progress(int active, uint64_t received)
{
    struct snap_progress p;
    snap_recv_progress(dst, &p);
    cr_assert_eq(p.active, active);
    if (active) {
        cr_assert(p.index == 1000 && p.term == 6 && p.total_len == image_len);
        cr_assert_eq(p.received, received);
    }
}

Test(transfer, whole_snapshot_in_chunks)
{
    struct snap_file *f = sender();
    uint64_t off = 99;
    cr_assert_eq(snap_recv_begin(dst, 1000, 6, image_len, &off), 0, "%s", snap_errmsg());
    cr_assert_eq(off, 0);
    expect_progress(1, 0);
    cr_assert_eq(send(f, 0, image_len), 1, "the last chunk installs the snapshot");
    expect_progress(0, 0);
    st_expect_in(dst, 1000, 6, CFG, LEN, 12);
    cr_assert_eq(st_count(dst_dir, ".partial"), 0);
    /* Read back as a sender, the file gives chunks bounded by the store's max_chunk_bytes. */
    snap_file_close(f);
    cr_assert_eq(snap_open(dst, 1000, 6, &f), 0);
    uint8_t big[1 << 16];
    size_t n;
    cr_assert_eq(snap_file_chunk(f, 10, big, sizeof big, &n), 0);
    cr_assert_eq(n, CHUNK);
    cr_assert_eq(memcmp(big, image + 10, n), 0);
    cr_assert_eq(snap_file_chunk(f, image_len - 5, big, sizeof big, &n), 0);
    cr_assert_eq(n, 5);
    cr_assert_eq(snap_file_chunk(f, image_len, big, sizeof big, &n), 0);
    cr_assert_eq(n, 0);
    cr_assert_eq(snap_file_chunk(f, image_len + 1, big, sizeof big, &n), -EINVAL);
    snap_file_close(f);
}

Test(transfer, chunks_out_of_place_are_refused_and_change_nothing)
{
    uint8_t buf[CHUNK + 1];
    memcpy(buf, image, sizeof buf);
    cr_assert_eq(snap_recv_chunk(dst, 0, buf, 10), -ENOENT, "no transfer begun");
    uint64_t off;
    cr_assert_eq(snap_recv_begin(dst, 1000, 6, image_len, &off), 0);
    cr_assert_eq(snap_recv_chunk(dst, 0, buf, CHUNK + 1), -EMSGSIZE, "over max_chunk_bytes");
    cr_assert_eq(snap_recv_chunk(dst, 0, buf, 0), -EMSGSIZE, "empty");
    cr_assert_eq(snap_recv_chunk(dst, CHUNK, buf, CHUNK), -ERANGE, "a gap");
    cr_assert(strstr(snap_errmsg(), "stands at 0"), "%s", snap_errmsg());
    cr_assert_eq(snap_recv_chunk(dst, 0, image, CHUNK), 0);
    cr_assert_eq(snap_recv_chunk(dst, 0, image, CHUNK), -ERANGE, "a duplicate");
    cr_assert_eq(snap_recv_chunk(dst, 100, image + 100, CHUNK), -ERANGE, "an overlap");
    cr_assert_eq(snap_recv_chunk(dst, 2 * CHUNK, image + 2 * CHUNK, CHUNK), -ERANGE, "ahead");
    expect_progress(1, CHUNK);
    cr_assert_eq(partial_size(),
                 CHUNK, "nothing written by refused chunks");
    /* A chunk reaching past the total. */
    struct snap_file *f = sender();
    cr_assert_eq(send(f, CHUNK, image_len - 10), 0);
    uint8_t tail[20];
    memcpy(tail, image + image_len - 10, 10);
    cr_assert_eq(snap_recv_chunk(dst, image_len - 10, tail, 20), -EINVAL);
    cr_assert(strstr(snap_errmsg(), "beyond"), "%s", snap_errmsg());
    expect_progress(1, image_len - 10);
    cr_assert_eq(snap_recv_chunk(dst, image_len - 10, tail, 10), 1, "%s", snap_errmsg());
    st_expect_in(dst, 1000, 6, CFG, LEN, 12);
    snap_file_close(f);
}

Test(transfer, resumes_from_the_reported_offset_after_a_reconnect)
{
    struct snap_file *f = sender();
    uint64_t off;
    cr_assert_eq(snap_recv_begin(dst, 1000, 6, image_len, &off), 0);
    cr_assert_eq(send(f, 0, 5 * CHUNK + 17), 0);
    snap_file_close(f);
    /* The connection drops; a new leader (a new sender) begins the same snapshot. */
    f = sender();
    cr_assert_eq(snap_recv_begin(dst, 1000, 6, image_len, &off), 0);
    cr_assert_eq(off, 5 * CHUNK + 17, "resume where the transfer stood");
    cr_assert_eq(send(f, off, image_len), 1, "%s", snap_errmsg());
    st_expect_in(dst, 1000, 6, CFG, LEN, 12);
    snap_file_close(f);
}

Test(transfer, a_different_snapshot_replaces_a_partial_one)
{
    struct snap_file *old;
    cr_assert_eq(snap_open(src, 900, 5, &old), 0);
    uint64_t off;
    cr_assert_eq(snap_recv_begin(dst, 900, 5, snap_file_size(old), &off), 0);
    uint8_t buf[CHUNK];
    size_t n;
    cr_assert_eq(snap_file_chunk(old, 0, buf, sizeof buf, &n), 0);
    cr_assert_eq(snap_recv_chunk(dst, 0, buf, n), 0);
    uint64_t old_size = snap_file_size(old);
    snap_file_close(old);

    /* Same index and term but another length is another snapshot too. */
    cr_assert_eq(snap_recv_begin(dst, 900, 5, old_size + 1, &off), 0);
    cr_assert_eq(off, 0);
    cr_assert(strstr(tu_last_notice, "discarding a partial snapshot"), "%s", tu_last_notice);

    struct snap_file *f = sender();
    cr_assert_eq(snap_recv_begin(dst, 1000, 6, image_len, &off), 0);
    cr_assert_eq(off, 0);
    cr_assert_eq(st_count(dst_dir, ".partial"), 1, "only the new transfer is kept");
    cr_assert_eq(send(f, 0, image_len), 1);
    struct snap_info *a;
    cr_assert_eq(snap_list(dst, &a, &n), 0);
    cr_assert(n == 1 && a[0].index == 1000, "only the completed snapshot is installed");
    free(a);
    snap_file_close(f);
}

Test(transfer, a_corrupted_chunk_fails_the_final_check_and_is_discarded)
{
    uint64_t off;
    cr_assert_eq(snap_recv_begin(dst, 1000, 6, image_len, &off), 0);
    uint8_t *bad = malloc(image_len);
    memcpy(bad, image, image_len);
    bad[30000] ^= 0x40; /* inside the payload: only the whole-file checksum can tell */
    int rc = 0;
    for (off = 0; off < image_len && rc == 0;) {
        size_t n = image_len - off < CHUNK ? image_len - off : CHUNK;
        rc = snap_recv_chunk(dst, off, bad + off, n);
        off += n;
    }
    cr_assert_eq(rc, -EBADMSG, "damaged data installed");
    cr_assert_eq(off, image_len, "refused only at the end");
    cr_assert(strstr(snap_errmsg(), "complete but not valid") &&
              strstr(snap_errmsg(), "checksum mismatch"), "%s", snap_errmsg());
    expect_progress(0, 0);
    cr_assert_eq(st_count(dst_dir, ".partial") + st_count(dst_dir, ".snap"), 0);
    struct snap_file *f;
    cr_assert_eq(snap_open(dst, 1000, 6, &f), -ENOENT);
    /* The leader sends it again, correctly. */
    f = sender();
    cr_assert_eq(snap_recv_begin(dst, 1000, 6, image_len, &off), 0);
    cr_assert_eq(off, 0);
    cr_assert_eq(send(f, 0, image_len), 1);
    st_expect_in(dst, 1000, 6, CFG, LEN, 12);
    snap_file_close(f);
    free(bad);
}

Test(transfer, bytes_of_another_snapshot_are_refused_at_the_header)
{
    uint64_t off;
    /* Begun as index 1000 term 6, but the bytes are those of 900/5 (the same size). */
    struct snap_file *old;
    cr_assert_eq(snap_open(src, 900, 5, &old), 0);
    cr_assert_eq(snap_file_size(old), image_len);
    cr_assert_eq(snap_recv_begin(dst, 1000, 6, image_len, &off), 0);
    uint8_t buf[40];
    size_t n;
    cr_assert_eq(snap_file_chunk(old, 0, buf, 40, &n), 0);
    cr_assert_eq(snap_recv_chunk(dst, 0, buf, 40), 0, "the header is not complete yet");
    cr_assert_eq(snap_file_chunk(old, 40, buf, 40, &n), 0);
    cr_assert_eq(snap_recv_chunk(dst, 40, buf, 40), -EBADMSG);
    cr_assert(strstr(snap_errmsg(), "not the snapshot begun") &&
              strstr(snap_errmsg(), "index 900 term 5"), "%s", snap_errmsg());
    expect_progress(0, 0);
    cr_assert_eq(st_count(dst_dir, ".partial"), 0);
    /* A damaged header is refused at the same point. */
    cr_assert_eq(snap_recv_begin(dst, 1000, 6, image_len, &off), 0);
    uint8_t hdr[CHUNK];
    memcpy(hdr, image, CHUNK);
    hdr[20] ^= 1;
    cr_assert_eq(snap_recv_chunk(dst, 0, hdr, CHUNK), -EBADMSG);
    cr_assert(strstr(snap_errmsg(), "header checksum mismatch"), "%s", snap_errmsg());
    expect_progress(0, 0);
    snap_file_close(old);
}

Test(transfer, restart_of_the_receiver_mid_transfer_resumes)
{
    struct snap_file *f = sender();
    uint64_t off;
    cr_assert_eq(snap_recv_begin(dst, 1000, 6, image_len, &off), 0);
    cr_assert_eq(send(f, 0, 7 * CHUNK), 0);
    snap_store_close(dst); /* the process stops */
    dst_open();
    expect_progress(1, 7 * CHUNK);
    cr_assert_eq(snap_recv_begin(dst, 1000, 6, image_len, &off), 0);
    cr_assert_eq(off, 7 * CHUNK);
    cr_assert_eq(send(f, off, 9 * CHUNK), 0);
    /* Restarted before the header was complete: the transfer still resumes. */
    snap_store_close(dst);
    dst_open();
    expect_progress(1, 9 * CHUNK);
    cr_assert_eq(send(f, 9 * CHUNK, image_len), 1);
    st_expect_in(dst, 1000, 6, CFG, LEN, 12);
    snap_file_close(f);

    snap_recv_abort(dst);
    cr_assert_eq(snap_recv_begin(dst, 1000, 6, image_len, &off), 0);
    cr_assert_eq(snap_recv_chunk(dst, 0, image, 30), 0);
    snap_store_close(dst);
    dst_open();
    expect_progress(1, 30);
    cr_assert_eq(snap_recv_chunk(dst, 30, image + 30, CHUNK), 0);
    expect_progress(1, 30 + CHUNK);
}

Test(transfer, a_partial_file_that_cannot_be_the_snapshot_is_discarded_at_open)
{
    uint64_t off;
    cr_assert_eq(snap_recv_begin(dst, 1000, 6, image_len, &off), 0);
    cr_assert_eq(snap_recv_chunk(dst, 0, image, CHUNK), 0);
    snap_store_close(dst);
    char *p = st_partial_path(dst_dir, 1000, 6, image_len);
    tu_flip_bit(p, 3, 2); /* the header, already checked once, is damaged while stopped */
    dst_open();
    expect_progress(0, 0);
    cr_assert(strstr(tu_last_notice, "discarding a partial snapshot") &&
              strstr(tu_last_notice, "bad magic"), "%s", tu_last_notice);
    cr_assert_eq(access(p, F_OK), -1);
    snap_store_close(dst);
    /* Longer than it announces. */
    st_put(p, image, 200);
    char *q = st_partial_path(dst_dir, 1000, 6, 100);
    cr_assert_eq(rename(p, q), 0);
    dst_open();
    expect_progress(0, 0);
    cr_assert(strstr(tu_last_notice, "longer than"), "%s", tu_last_notice);
    free(p);
    free(q);
}

Test(transfer, the_sender_keeps_reading_a_snapshot_that_retention_deleted)
{
    struct snap_file *f;
    cr_assert_eq(snap_open(src, 900, 5, &f), 0);
    for (uint64_t i = 0; i < 6; i++)
        st_make(src, 2000 + i, 7, 0, 10, i); /* 900 falls out of the five kept */
    struct snap_file *g;
    cr_assert_eq(snap_open(src, 900, 5, &g), -ENOENT);
    uint64_t off;
    cr_assert_eq(snap_recv_begin(dst, 900, 5, snap_file_size(f), &off), 0);
    uint8_t buf[CHUNK];
    int rc = 0;
    for (off = 0; rc == 0;) {
        size_t n;
        cr_assert_eq(snap_file_chunk(f, off, buf, sizeof buf, &n), 0);
        rc = snap_recv_chunk(dst, off, buf, n);
        off += n;
    }
    cr_assert_eq(rc, 1, "%s", snap_errmsg());
    st_expect_in(dst, 900, 5, CFG, LEN, 11);
    snap_file_close(f);
}

static int fail_next_write;

static ssize_t flaky_pwrite(int fd, const void *buf, size_t len, off_t off)
{
    if (fail_next_write) {
        fail_next_write = 0;
        /* Half of it lands before the disk fills. */
        if (pwrite(fd, buf, len / 2, off) < 0)
            return -1;
        errno = ENOSPC;
        return -1;
    }
    return pwrite(fd, buf, len, off);
}

Test(transfer, a_failed_write_leaves_the_transfer_where_it_was)
{
    snap_store_close(dst);
    struct snap_io io = {flaky_pwrite, NULL};
    struct snap_options o;
    st_options(&o);
    o.max_chunk_bytes = CHUNK;
    o.io = &io;
    dst = st_open(dst_dir, &o);
    struct snap_file *f = sender();
    uint64_t off;
    cr_assert_eq(snap_recv_begin(dst, 1000, 6, image_len, &off), 0);
    cr_assert_eq(send(f, 0, 3 * CHUNK), 0);
    fail_next_write = 1;
    cr_assert_eq(snap_recv_chunk(dst, 3 * CHUNK, image + 3 * CHUNK, CHUNK), -ENOSPC);
    expect_progress(1, 3 * CHUNK);
    cr_assert_eq(partial_size(),
                 3 * CHUNK, "the half-written chunk is cut off");
    cr_assert_eq(send(f, 3 * CHUNK, image_len), 1, "the same chunk again, then the rest");
    st_expect_in(dst, 1000, 6, CFG, LEN, 12);
    snap_file_close(f);
}

Test(transfer, totals_are_bounded)
{
    uint64_t off;
    cr_assert_eq(snap_recv_begin(dst, 1000, 6, 71, &off), -EINVAL);
    cr_assert_eq(snap_recv_begin(dst, 0, 6, 100, &off), -EINVAL);
    cr_assert_eq(snap_recv_begin(dst, 1000, 6, (16ull << 30) + 1, &off), -EFBIG);
    cr_assert(strstr(snap_errmsg(), "max_snapshot_bytes"), "%s", snap_errmsg());
    expect_progress(0, 0);
}
