/* The Watch request seeds were written by make_watch_corpus.py, a second encoder of etcd's
 * WatchRequest: check services/watch_req.c reads each one as etcd's server would (its
 * normalization of keys and ranges, its ignored filter values) and refuses what craft refuses
 * with a reason. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "services/watch.h"

static uint8_t seed[16384];

static int decode(const char *name, struct watch_req *r)
{
    const char *base = getenv("TEST_SRCDIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/craft/tests/fuzz/corpus/watch/%s", base ? base : ".", name);
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s", path);
    size_t len = fread(seed, 1, sizeof seed, f);
    fclose(f);
    return watch_req_decode(seed, len, r);
}

static void key_is(const struct watch_req *r, const char *key, size_t klen)
{
    cr_assert_eq(r->klen, klen);
    cr_assert(!memcmp(r->key, key, klen));
}

Test(watch_corpus, creates)
{
    struct watch_req r;
    cr_assert_eq(decode("create_key", &r), 0);
    cr_assert_eq(r.kind, WATCH_REQ_CREATE);
    key_is(&r, "foo", 3);
    cr_assert_eq(r.range, WATCH_KEY_ONE);
    cr_assert_str_empty(r.error);
    cr_assert(watch_req_matches(&r, (const uint8_t *)"foo", 3));
    cr_assert(!watch_req_matches(&r, (const uint8_t *)"foo0", 4));
    watch_req_free(&r);

    cr_assert_eq(decode("create_prefix_all_options", &r), 0);
    key_is(&r, "p/", 2);
    cr_assert_eq(r.range, WATCH_KEY_RANGE);
    cr_assert_eq(r.start_rev, 5);
    cr_assert_eq(r.watch_id, 7);
    cr_assert(r.progress_notify && r.prev_kv && r.fragment && r.no_put && r.no_delete);
    cr_assert(watch_req_matches(&r, (const uint8_t *)"p/x", 3));
    cr_assert(!watch_req_matches(&r, (const uint8_t *)"p0", 2));
    cr_assert(!watch_req_matches(&r, (const uint8_t *)"p", 1));
    watch_req_free(&r);

    cr_assert_eq(decode("create_from_key", &r), 0);
    cr_assert_eq(r.range, WATCH_KEY_FROM);
    cr_assert(watch_req_matches(&r, (const uint8_t *)"zzz", 3));
    cr_assert(!watch_req_matches(&r, (const uint8_t *)"\x00", 1));
    watch_req_free(&r);

    cr_assert_eq(decode("create_every_key", &r), 0);
    cr_assert_eq(r.range, WATCH_KEY_FROM);
    cr_assert(watch_req_matches(&r, (const uint8_t *)"\x00", 1));
    watch_req_free(&r);

    cr_assert_eq(decode("create_empty_key", &r), 0, "etcd: an empty key is \"\\0\"");
    key_is(&r, "\0", 1);
    cr_assert_eq(r.range, WATCH_KEY_ONE);
    cr_assert_str_empty(r.error);
    watch_req_free(&r);

    cr_assert_eq(decode("create_huge_start", &r), 0);
    cr_assert_eq(r.start_rev, INT64_MAX);
    cr_assert_str_empty(r.error, "a future revision waits");
    watch_req_free(&r);

    cr_assert_eq(decode("create_unknown_filter_unpacked", &r), 0);
    cr_assert(!r.no_put && r.no_delete, "etcd ignores unknown filter values");
    cr_assert_str_empty(r.error);
    watch_req_free(&r);

    cr_assert_eq(decode("create_range_end_max", &r), 0);
    cr_assert_str_empty(r.error);
    watch_req_free(&r);
}

Test(watch_corpus, refused_creates)
{
    struct watch_req r;
    const struct {
        const char *seed, *reason;
    } bad[] = {
        {"create_inverted_range", WATCH_ERR_EMPTY_RANGE},
        {"create_equal_range", WATCH_ERR_EMPTY_RANGE},
        {"create_negative_start", "start_revision"},
        {"create_negative_id", "watch_id"},
        {"create_key_too_long", "longer than 4096"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_eq(decode(bad[i].seed, &r), 0, "%s", bad[i].seed);
        cr_assert_eq(r.kind, WATCH_REQ_CREATE);
        cr_assert(strstr(r.error, bad[i].reason), "%s: '%s'", bad[i].seed, r.error);
        watch_req_free(&r);
    }
}

Test(watch_corpus, other_requests)
{
    struct watch_req r;
    cr_assert_eq(decode("cancel", &r), 0);
    cr_assert_eq(r.kind, WATCH_REQ_CANCEL);
    cr_assert_eq(r.watch_id, 3);
    watch_req_free(&r);
    cr_assert_eq(decode("cancel_zero", &r), 0);
    cr_assert_eq(r.kind, WATCH_REQ_CANCEL);
    cr_assert_eq(r.watch_id, 0);
    watch_req_free(&r);
    cr_assert_eq(decode("progress", &r), 0);
    cr_assert_eq(r.kind, WATCH_REQ_PROGRESS);
    watch_req_free(&r);
    cr_assert_eq(decode("empty", &r), 0);
    cr_assert_eq(r.kind, WATCH_REQ_NONE);
    watch_req_free(&r);
    cr_assert_eq(decode("unknown_field", &r), 0);
    cr_assert_eq(r.kind, WATCH_REQ_NONE);
    watch_req_free(&r);
    cr_assert_eq(decode("create_then_cancel", &r), 0);
    cr_assert_eq(r.kind, WATCH_REQ_CANCEL, "a oneof keeps the last member");
    cr_assert_eq(r.watch_id, 9);
    watch_req_free(&r);
    cr_assert_eq(decode("truncated", &r), -1);
    cr_assert_eq(decode("bad_wire_type", &r), -1);
}
