/* The seed corpus was written by make_wal_corpus.py, a second encoder of docs/wal.md: check the C
 * decoder reads each seed as that spec says. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "raft/wal/wal.h"
#include "raft/wal/wal_internal.h"

static uint8_t *load(const char *name, size_t *len)
{
    const char *base = getenv("TEST_SRCDIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/craft/tests/fuzz/corpus/wal/%s", base ? base : ".", name);
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s", path);
    static uint8_t buf[8192];
    *len = fread(buf, 1, sizeof buf, f);
    fclose(f);
    return buf;
}

static int decode(const char *name, uint64_t first, int is_last, struct wal_decode_result *res,
                  char *err)
{
    size_t len;
    uint8_t *buf = load(name, &len);
    return wal_segment_decode(buf, len, name, first, is_last, NULL, NULL, res, err, 512);
}

Test(corpus, seeds_decode_as_the_spec_says)
{
    struct wal_decode_result r;
    char err[512];
    cr_assert_eq(decode("empty_segment", 1, 1, &r, err), 0, "%s", err);
    cr_assert(r.count == 0 && r.end == 32 && r.dirty_end == 32);
    cr_assert_eq(decode("four_records", 5, 0, &r, err), 0, "%s", err);
    cr_assert(r.first_index == 5 && r.count == 4 && r.end == 246 - 32 && r.dirty_end == r.end);
    cr_assert_eq(decode("four_records", 4, 1, &r, err), -EBADMSG, "name and header disagree");
    cr_assert(strstr(err, "offset 16"), "%s", err);
    cr_assert_eq(decode("torn_last_record", 5, 1, &r, err), 0, "%s", err);
    cr_assert(r.count == 3 && r.dirty_end > r.end);
    cr_assert_eq(decode("torn_last_record", 5, 0, &r, err), -EBADMSG, "torn only in the newest");
    cr_assert_eq(decode("garbage_after_tail", 5, 1, &r, err), 0, "%s", err);
    cr_assert(r.count == 4 && r.dirty_end == r.end + 3);
    cr_assert_eq(decode("two_writes", 1, 1, &r, err), 0, "%s", err);
    cr_assert_eq(r.count, 3);
    cr_assert_eq(decode("later_write_after_damage", 1, 1, &r, err), -EBADMSG);
    cr_assert(strstr(err, "later write"), "%s", err);
    cr_assert_eq(decode("zero_header_then_record", 1, 1, &r, err), -EBADMSG);
    cr_assert(strstr(err, "checksum mismatch"), "%s", err);
    cr_assert_eq(decode("bad_magic", 1, 1, &r, err), -EBADMSG);
    cr_assert_eq(decode("header_only_short", 9, 1, &r, err), -EBADMSG);
    cr_assert(strstr(err, "truncated"), "%s", err);
}

Test(corpus, small_file_seeds_decode_as_the_spec_says)
{
    size_t len;
    uint8_t *buf;
    uint32_t v;
    uint64_t a, b;
    buf = load("hard_state", &len);
    cr_assert_eq(wal_decode_small(buf, len, WAL_HS_MAGIC, WAL_VERSION, &v, &a, &b), 0);
    cr_assert(v == 1 && a == 7 && b == 3);
    cr_assert_eq(wal_decode_small(buf, len - 1, WAL_HS_MAGIC, WAL_VERSION, &v, &a, &b), -EBADMSG);
    cr_assert_eq(wal_decode_small(buf, len, WAL_FIRST_MAGIC, 2, &v, &a, &b), -EBADMSG,
                 "another file's magic");

    struct wal_first_marker m;
    buf = load("first_marker", &len);
    cr_assert_eq(wal_decode_first(buf, len, &m), 0);
    cr_assert(m.first == 100 && !m.prev_known, "version 1 carries no term");
    buf = load("first_marker_v2", &len);
    cr_assert_eq(wal_decode_first(buf, len, &m), 0);
    cr_assert(m.first == 100 && m.prev_known && m.prev_term == 6);
    buf = load("first_marker_v2_at_1", &len);
    cr_assert_eq(wal_decode_first(buf, len, &m), 0);
    cr_assert(m.first == 1 && m.prev_known && m.prev_term == 0);
    buf = load("first_marker_v3", &len);
    cr_assert_eq(wal_decode_first(buf, len, &m), -ENOTSUP, "a newer version is not damage");
    buf = load("first_marker_v1_with_term", &len);
    cr_assert_eq(wal_decode_first(buf, len, &m), -EBADMSG, "version 1 always wrote 0 there");

    buf = load("reset_journal", &len);
    cr_assert_eq(wal_decode_reset(buf, len, &a, &b), 0);
    cr_assert(a == 5000 && b == 20);
    buf = load("reset_journal_empty", &len);
    cr_assert_eq(wal_decode_reset(buf, len, &a, &b), 0);
    cr_assert(a == 0 && b == 0);
    buf = load("reset_journal_term_0", &len);
    cr_assert_eq(wal_decode_reset(buf, len, &a, &b), -EBADMSG, "entries after 0 have a term");
}
