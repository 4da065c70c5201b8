/* The KV history seeds were written by make_kv_hist_corpus.py, a second encoder of the layout in
 * services/kvstore/kv_hist.h: check the C decoder reads each one as that spec says. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "services/kvstore/kv_hist.h"

/* Decodes seed `name` (length byte, key, value). */
static int decode(const char *name, struct kv_hist_ent *h)
{
    static uint8_t buf[4096];
    const char *base = getenv("TEST_SRCDIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/craft/tests/fuzz/corpus/kv_hist/%s", base ? base : ".", name);
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s", path);
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    cr_assert_geq(n, 1);
    size_t kn = buf[0];
    cr_assert_leq(kn, n - 1);
    return kv_hist_decode(buf + 1, kn, buf + 1 + kn, n - 1 - kn, h);
}

Test(kv_hist_corpus, valid_seeds_decode_as_the_spec_says)
{
    struct kv_hist_ent h;
    cr_assert_eq(decode("put", &h), 0);
    cr_assert(h.rev == 7 && h.sub == 0 && h.type == KV_HIST_PUT && h.klen == 3 &&
              !memcmp(h.key, "foo", 3) && h.rlen == 35 && !memcmp(h.rec + 32, "bar", 3));
    cr_assert_eq(decode("put_empty_value", &h), 0);
    cr_assert(h.rev == 1 && h.rlen == 32);
    cr_assert_eq(decode("delete", &h), 0);
    cr_assert(h.rev == 9 && h.sub == 2 && h.type == KV_HIST_DELETE && h.rlen == 0 && !h.rec);
    cr_assert_eq(decode("binary_key_long", &h), 0);
    cr_assert(h.rev == (int64_t)1 << 40 && h.sub == 5 && h.klen == 511 && h.rlen == 332);
}

Test(kv_hist_corpus, broken_seeds_are_refused)
{
    const char *bad[] = {"revision_zero",  "key_short",          "type_unknown",
                         "padding_set",    "key_length_zero",    "key_past_value",
                         "put_record_short", "delete_with_record", "key_too_long"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct kv_hist_ent h;
        cr_assert_eq(decode(bad[i], &h), -1, "%s was accepted", bad[i]);
    }
}

Test(kv_hist_corpus, hist_keys_sort_by_revision)
{
    /* big-endian: LMDB's byte order is the revisions' order */
    uint8_t a[KV_HIST_KEY], b[KV_HIST_KEY];
    kv_hist_key(a, 255, 9);
    kv_hist_key(b, 256, 0);
    cr_assert_lt(memcmp(a, b, sizeof a), 0);
}
