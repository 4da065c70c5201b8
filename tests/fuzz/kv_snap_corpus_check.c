/* The KV snapshot seeds were written by make_kv_snap_corpus.py, a second encoder of the format
 * in services/kvstore/kv_snap.h: check the C decoder reads each one as that spec says. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "services/kvstore/kv_snap.h"

struct src {
    uint8_t buf[8192];
    size_t len, pos;
};

static long src_read(void *arg, void *p, size_t n)
{
    struct src *s = arg;
    if (n > s->len - s->pos)
        n = s->len - s->pos;
    memcpy(p, s->buf + s->pos, n);
    s->pos += n;
    return (long)n;
}

/* Decodes seed `name`: the result, the header, the record count and the reason. */
static int decode(const char *name, struct kv_snap_meta *m, size_t *count, char *err)
{
    static struct src s;
    const char *base = getenv("TEST_SRCDIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/craft/tests/fuzz/corpus/kv_snap/%s", base ? base : ".",
             name);
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s", path);
    s.len = fread(s.buf, 1, sizeof s.buf, f);
    s.pos = 0;
    fclose(f);
    struct kv_snap_dec *d = kv_snap_dec_new(src_read, &s);
    err[0] = 0;
    *count = 0;
    int rc = kv_snap_dec_header(d, m, err, 256);
    struct kv_snap_rec r;
    while (rc == 0 && (rc = kv_snap_dec_next(d, &r, err, 256)) == 1) {
        (*count)++;
        rc = 0;
    }
    kv_snap_dec_free(d);
    return rc;
}

Test(kv_snap_corpus, valid_seeds_decode_as_the_spec_says)
{
    struct kv_snap_meta m;
    size_t n;
    char err[256];
    cr_assert_eq(decode("empty_store", &m, &n, err), 0, "%s", err);
    cr_assert(m.index == 0 && m.term == 0 && m.rev == 0 && n == 0);
    cr_assert_eq(decode("three_keys", &m, &n, err), 0, "%s", err);
    cr_assert(m.index == 42 && m.term == 3 && m.rev == 9 && m.compact == 2 && n == 3);
    cr_assert_eq(decode("term_unknown", &m, &n, err), 0, "%s", err);
    cr_assert(m.index == 7 && m.term == 0 && n == 1);
    cr_assert_eq(decode("binary_keys_and_value", &m, &n, err), 0, "%s", err);
    cr_assert(m.index == 100 && m.rev == 300 && m.compact == 300 && n == 3);
    cr_assert_eq(decode("history", &m, &n, err), 0, "%s", err);
    cr_assert(m.version == 2 && m.index == 50 && m.rev == 7 && n == 8);
    cr_assert_eq(decode("three_keys", &m, &n, err), 0, "%s", err);
    cr_assert_eq(m.version, 1);
    cr_assert_eq(decode("leases", &m, &n, err), 0, "%s", err);
    cr_assert(m.version == 3 && m.index == 60 && m.rev == 4 && n == 7);
    cr_assert_eq(decode("leases_only", &m, &n, err), 0, "%s", err);
    cr_assert(m.version == 3 && n == 1);
    cr_assert_eq(decode("auth", &m, &n, err), 0, "%s", err);
    cr_assert(m.version == 4 && n == 3);
}

Test(kv_snap_corpus, broken_seeds_are_refused_for_their_reason)
{
    const struct {
        const char *name, *why;
    } cases[] = {
        {"bad_magic", "bad magic"},
        {"version_5", "format version 5"},
        {"auth_then_lease", "record 1: a record after the auth state"},
        {"auth_in_version_3", "record 0: a lease with 2 value bytes"},
        {"lease_before_key", "record 1: a key after the leases"},
        {"leases_out_of_order", "record 1: leases out of order"},
        {"lease_id_zero", "record 0: lease 0 with TTL 30"},
        {"lease_ttl_too_large", "TTL 9000000001"},
        {"lease_negative_remaining", "remaining -1"},
        {"lease_padding", "record 0: lease 1 with TTL 30"},
        {"lease_with_value", "a lease with 1 value bytes"},
        {"history_out_of_order", "record 1: revisions out of order"},
        {"history_tombstone_with_value", "a deletion at revision 3"},
        {"history_tombstone_past_revision", "a deletion at revision 8 of 1..7"},
        {"compacted_past_revision", "compacted revision 4"},
        {"keys_out_of_order", "record 1: keys out of order"},
        {"key_too_long", "key length 512"},
        {"revision_past_header", "outside 1..9"},
        {"version_too_high", "version 3"},
        {"lease_set", "lease 5"},
        {"count_wrong", "trailer counts 2 records, found 3"},
        {"crc_wrong", "CRC mismatch"},
        {"byte_after_end", "bytes after the trailer"},
        {"truncated_in_record", "truncated in a record"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct kv_snap_meta m;
        size_t n;
        char err[256];
        cr_assert_eq(decode(cases[i].name, &m, &n, err), -EBADMSG, "%s", cases[i].name);
        cr_assert(strstr(err, cases[i].why), "%s: \"%s\"", cases[i].name, err);
    }
}
