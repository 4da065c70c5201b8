/* kv_snap_test.c: the snapshot payload codec (services/kvstore/kv_snap.h) on its own: round
 * trips through short reads and large values, and every rule of the decoder refusing the
 * payload that breaks it (truncation anywhere, magic, version, flags, revisions, key order and
 * length, version and lease of a record, trailer count, CRC, padding, bytes after the end). */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "raft/wal/crc32c.h"
#include "services/kvstore/kv_snap.h"
#include "tests/kv/kv_test_util.h"

struct rec {
    const char *key;
    int64_t create, mod, version, lease;
    const char *value;
};

static void build(struct kvt_buf *b, const struct kv_snap_meta *m, const struct rec *rs,
                  size_t n)
{
    *b = (struct kvt_buf){0};
    struct kv_snap_enc *e = kv_snap_enc_new(kvt_buf_write, b);
    cr_assert(e);
    cr_assert_eq(kv_snap_enc_header(e, m), 0);
    for (size_t i = 0; i < n; i++) {
        size_t vlen = strlen(rs[i].value);
        uint8_t *rec = malloc(32 + vlen);
        kv_le_put64(rec, (uint64_t)rs[i].create);
        kv_le_put64(rec + 8, (uint64_t)rs[i].mod);
        kv_le_put64(rec + 16, (uint64_t)rs[i].version);
        kv_le_put64(rec + 24, (uint64_t)rs[i].lease);
        memcpy(rec + 32, rs[i].value, vlen);
        cr_assert_eq(kv_snap_enc_record(e, rs[i].key, strlen(rs[i].key), rec, 32 + vlen), 0);
        free(rec);
    }
    uint64_t len = 0;
    cr_assert_eq(kv_snap_enc_finish(e, &len), 0);
    cr_assert_eq(len, b->len);
    kv_snap_enc_free(e);
    b->limit = b->len;
}

/* Decodes b to the end: 0 with *count records, or the failing code with the reason in err. */
static int decode(struct kvt_buf *b, struct kv_snap_meta *m, size_t *count, char *err)
{
    b->pos = 0;
    struct kv_snap_dec *d = kv_snap_dec_new(kvt_buf_read, b);
    cr_assert(d);
    struct kv_snap_meta mm;
    int rc = kv_snap_dec_header(d, m ? m : &mm, err, 256);
    size_t n = 0;
    struct kv_snap_rec r;
    while (rc == 0 && (rc = kv_snap_dec_next(d, &r, err, 256)) == 1) {
        n++;
        rc = 0;
    }
    if (rc == 0)
        cr_assert_eq(kv_snap_dec_offset(d), b->limit, "the whole input is the payload");
    kv_snap_dec_free(d);
    if (count)
        *count = n;
    return rc;
}

static void expect_refused(struct kvt_buf *b, const char *why)
{
    char err[256] = "";
    int rc = decode(b, NULL, NULL, err);
    cr_assert_eq(rc, -EBADMSG, "expected a refusal (%s), got %d %s", why, rc, err);
    cr_assert(strstr(err, why), "reason \"%s\" does not say \"%s\"", err, why);
}

static const struct kv_snap_meta META = {.index = 42, .term = 3, .rev = 9, .compact = 2,
                                         .version = 1};
static const struct kv_snap_meta META2 = {.index = 42, .term = 3, .rev = 9, .compact = 2,
                                          .version = 2};
static const struct rec RECS[] = {
    {"a", 1, 4, 2, 0, "one"},
    {"ab", 2, 2, 1, 0, ""},
    {"b", 5, 9, 5, 0, "five"},
};

/* Recomputes the trailer's CRC so that a deliberately broken payload fails on its own rule. */
static void fix_crc(struct kvt_buf *b)
{
    uint32_t c = crc32c(0, b->data, b->len - 8);
    for (int i = 0; i < 4; i++)
        b->data[b->len - 8 + i] = (uint8_t)(c >> (8 * i));
}

Test(kv_snap, round_trip_through_short_reads)
{
    struct kvt_buf b;
    build(&b, &META, RECS, 3);
    cr_assert_eq(b.len, KV_SNAP_HEADER + 3 * (8 + 32) + 1 + 3 + 2 + 0 + 1 + 4 + KV_SNAP_TRAILER);
    for (size_t max = 0; max < 4; max++) {
        b.max_read = max; /* 0 = unlimited, then 1, 2, 3 bytes per read */
        b.pos = 0;
        struct kv_snap_dec *d = kv_snap_dec_new(kvt_buf_read, &b);
        struct kv_snap_meta m;
        char err[256];
        cr_assert_eq(kv_snap_dec_header(d, &m, err, sizeof err), 0, "%s", err);
        cr_assert(m.index == 42 && m.term == 3 && m.rev == 9 && m.compact == 2);
        struct kv_snap_rec r;
        for (size_t i = 0; i < 3; i++) {
            cr_assert_eq(kv_snap_dec_next(d, &r, err, sizeof err), 1, "%s", err);
            cr_assert_eq(r.klen, strlen(RECS[i].key));
            cr_assert_eq(memcmp(r.key, RECS[i].key, r.klen), 0);
            cr_assert_eq(r.rlen, 32 + strlen(RECS[i].value));
            cr_assert_eq((int64_t)kv_le_get64(r.rec + 8), RECS[i].mod);
            cr_assert_eq(memcmp(r.rec + 32, RECS[i].value, r.rlen - 32), 0);
        }
        cr_assert_eq(kv_snap_dec_next(d, &r, err, sizeof err), 0, "%s", err);
        cr_assert_eq(kv_snap_dec_next(d, &r, err, sizeof err), 0, "the end stays the end");
        cr_assert_eq(kv_snap_dec_offset(d), b.len);
        kv_snap_dec_free(d);
    }
    free(b.data);
}

Test(kv_snap, values_larger_than_the_buffers_round_trip)
{
    size_t big = 3u << 20; /* past the encoder's 256 KiB buffer and the decoder's first 64 KiB */
    char *v = malloc(big + 1);
    for (size_t i = 0; i < big; i++)
        v[i] = (char)('a' + i % 26);
    v[big] = 0;
    struct rec rs[] = {{"big", 1, 1, 1, 0, v}, {"small", 2, 2, 1, 0, "x"}};
    struct kv_snap_meta m = {7, 1, 2, 0, 1};
    struct kvt_buf b;
    build(&b, &m, rs, 2);
    b.max_read = 100000;
    size_t n;
    char err[256];
    cr_assert_eq(decode(&b, NULL, &n, err), 0, "%s", err);
    cr_assert_eq(n, 2);
    free(b.data);
    free(v);
}

Test(kv_snap, every_truncation_is_refused)
{
    struct kvt_buf b;
    build(&b, &META, RECS, 3);
    for (size_t cut = 0; cut < b.len; cut++) {
        b.limit = cut;
        expect_refused(&b, "truncated");
    }
    free(b.data);
}

Test(kv_snap, header_damage_is_refused)
{
    struct kvt_buf b;
    build(&b, &META, RECS, 3);
    b.data[0] = 'X';
    expect_refused(&b, "bad magic");
    b.data[0] = 'C';
    b.data[8] = 5;
    expect_refused(&b, "format version 5; this build reads 1 to 4");
    b.data[8] = 1;
    b.data[12] = 1;
    expect_refused(&b, "unknown flags");
    b.data[12] = 0;
    struct kv_snap_meta m = META;
    m.compact = m.rev + 1;
    free(b.data);
    build(&b, &m, NULL, 0);
    expect_refused(&b, "compacted revision");
    m.rev = -1;
    m.compact = 0;
    free(b.data);
    build(&b, &m, NULL, 0);
    expect_refused(&b, "compacted revision");
    free(b.data);
}

Test(kv_snap, trailer_damage_is_refused)
{
    struct kvt_buf b;
    build(&b, &META, RECS, 3);
    size_t v0 = KV_SNAP_HEADER + 8 + 1 + 32; /* the first record's first value byte */
    b.data[v0] ^= 1;
    expect_refused(&b, "CRC mismatch");
    b.data[v0] ^= 1;
    b.data[b.len - 16] ^= 1; /* the count */
    expect_refused(&b, "trailer counts");
    b.data[b.len - 16] ^= 1;
    b.data[b.len - 1] = 1;
    expect_refused(&b, "padding");
    b.data[b.len - 1] = 0;
    uint8_t extra = 0;
    kvt_buf_write(&b, &extra, 1);
    b.limit = b.len;
    expect_refused(&b, "bytes after the trailer");
    free(b.data);
}

Test(kv_snap, record_rules_are_enforced)
{
    struct {
        struct rec r[2];
        const char *why;
    } cases[] = {
        {{{"b", 1, 1, 1, 0, ""}, {"a", 1, 1, 1, 0, ""}}, "keys out of order"},
        {{{"a", 1, 1, 1, 0, ""}, {"a", 1, 1, 1, 0, ""}}, "keys out of order"},
        {{{"ab", 1, 1, 1, 0, ""}, {"a", 1, 1, 1, 0, ""}}, "keys out of order"},
        {{{"a", 0, 1, 1, 0, ""}, {"b", 1, 1, 1, 0, ""}}, "revisions 0..1"},
        {{{"a", 3, 2, 1, 0, ""}, {"b", 1, 1, 1, 0, ""}}, "revisions 3..2"},
        {{{"a", 1, 10, 1, 0, ""}, {"b", 1, 1, 1, 0, ""}}, "outside 1..9"},
        {{{"a", 1, 1, 0, 0, ""}, {"b", 1, 1, 1, 0, ""}}, "version 0"},
        {{{"a", 2, 4, 4, 0, ""}, {"b", 1, 1, 1, 0, ""}}, "version 4"},
        {{{"a", 1, 1, 1, 7, ""}, {"b", 1, 1, 1, 0, ""}}, "lease 7"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct kvt_buf b;
        build(&b, &META, cases[i].r, 2);
        expect_refused(&b, cases[i].why);
        free(b.data);
    }
    /* Key lengths the encoder will not write: patched in, CRC fixed. */
    struct kvt_buf b;
    build(&b, &META, RECS, 1);
    b.data[KV_SNAP_HEADER] = 0;
    fix_crc(&b);
    expect_refused(&b, "key length 0");
    b.data[KV_SNAP_HEADER] = 0;
    b.data[KV_SNAP_HEADER + 1] = 2; /* 512 */
    fix_crc(&b);
    expect_refused(&b, "key length 512");
    free(b.data);
}

static long failing_read(void *arg, void *p, size_t n)
{
    (void)arg, (void)p, (void)n;
    return -EIO;
}

static int failing_write(void *arg, const void *p, size_t n)
{
    (void)arg, (void)p, (void)n;
    return -ENOSPC;
}

Test(kv_snap, source_and_sink_errors_are_passed_on)
{
    struct kv_snap_dec *d = kv_snap_dec_new(failing_read, NULL);
    struct kv_snap_meta m;
    char err[256] = "";
    cr_assert_eq(kv_snap_dec_header(d, &m, err, sizeof err), -EIO);
    cr_assert(strstr(err, "reading the header"), "%s", err);
    kv_snap_dec_free(d);
    struct kv_snap_enc *e = kv_snap_enc_new(failing_write, NULL);
    cr_assert_eq(kv_snap_enc_header(e, &META), 0, "buffered, not written yet");
    cr_assert_eq(kv_snap_enc_finish(e, NULL), -ENOSPC);
    cr_assert_eq(kv_snap_enc_finish(e, NULL), -ENOSPC, "the failure sticks");
    kv_snap_enc_free(e);
    e = kv_snap_enc_new(kvt_buf_write, &(struct kvt_buf){0});
    cr_assert_eq(kv_snap_enc_record(e, "", 0, "0123456789012345678901234567890123", 32),
                 -EINVAL);
    cr_assert_eq(kv_snap_enc_record(e, "k", 1, "short", 5), -EINVAL);
    kv_snap_enc_free(e);
}

/* Version 2 (the history): records in write order, keys may repeat, version 0 = a deletion. */
Test(kv_snap, history_payloads_round_trip_and_damage_is_refused)
{
    const struct rec hist[] = {
        {"b", 1, 1, 1, 0, "old"}, {"a", 2, 2, 1, 0, "x"}, {"b", 1, 3, 2, 0, "new"},
        {"a", 0, 4, 0, 0, ""},    {"c", 5, 5, 1, 0, "1"}, {"c", 0, 5, 0, 0, ""},
    };
    struct kvt_buf b;
    build(&b, &META2, hist, 6);
    struct kv_snap_meta m;
    size_t n;
    char err[256];
    cr_assert_eq(decode(&b, &m, &n, err), 0, "%s", err);
    cr_assert(m.version == 2 && n == 6);
    free(b.data);
    struct {
        struct rec r[2];
        const char *why;
    } cases[] = {
        {{{"a", 2, 2, 1, 0, ""}, {"b", 1, 1, 1, 0, ""}}, "revisions out of order"},
        {{{"a", 0, 2, 0, 0, "v"}, {"b", 3, 3, 1, 0, ""}}, "a deletion at revision 2"},
        {{{"a", 1, 2, 0, 0, ""}, {"b", 3, 3, 1, 0, ""}}, "a deletion at revision 2"},
        {{{"a", 0, 2, 0, 4, ""}, {"b", 3, 3, 1, 0, ""}}, "a deletion at revision 2"},
        {{{"a", 0, 10, 0, 0, ""}, {"b", 3, 3, 1, 0, ""}}, "a deletion at revision 10 of 1..9"},
        {{{"b", 0, 0, 0, 0, ""}, {"a", 1, 1, 1, 0, ""}}, "a deletion at revision 0"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        build(&b, &META2, cases[i].r, 2);
        expect_refused(&b, cases[i].why);
        free(b.data);
    }
}
