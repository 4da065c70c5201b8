/* kv_ops_test.c: every KV operation and option of the store, each asserted against etcd 3.4's
 * documented behaviour (revisions, versions, Range options, Put/DeleteRange options). */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "services/kvstore/kv_cmd.h"
#include "tests/kv/kv_test_util.h"

static struct kvt T;
static void setup(void) { kvt_open(&T, NULL); }
static void teardown(void) { kvt_close(&T); }
TestSuite(kv_ops, .init = setup, .fini = teardown);

#define FREE_RES(r) craft__kv__result__free_unpacked((r), NULL)

static Mvccpb__KeyValue *get1(const char *key)
{
    Etcdserverpb__RangeRequest r;
    kvt_range_req(&r, key, NULL);
    Etcdserverpb__RangeResponse *resp = kvt_range(&T, &r);
    static Mvccpb__KeyValue copy;
    static uint8_t val[4096];
    Mvccpb__KeyValue *out = NULL;
    if (resp->n_kvs) {
        cr_assert_eq(resp->n_kvs, 1);
        copy = *resp->kvs[0];
        if (copy.value.len)
            memcpy(val, copy.value.data, copy.value.len);
        copy.value.data = val;
        copy.key.data = NULL;
        out = &copy;
    }
    etcdserverpb__range_response__free_unpacked(resp, NULL);
    return out;
}

Test(kv_ops, fresh_store_is_empty_at_revision_zero)
{
    int64_t rev, comp, size, used;
    cr_assert_eq(kv_store_status(T.s, &rev, &comp, &size, &used), 0);
    cr_assert_eq(rev, 0);
    cr_assert_eq(comp, 0);
    cr_assert_gt(size, 0);
    cr_assert_leq(used, size);
    cr_assert_eq(kv_store_applied_index(T.s), 0);
    cr_assert_null(get1("a"));
}

Test(kv_ops, put_creates_revisions_and_versions)
{
    Craft__Kv__Result *r = kvt_put(&T, "a", "1");
    cr_assert_eq(r->code, 0);
    cr_assert_eq(r->resp_case, CRAFT__KV__RESULT__RESP_PUT);
    cr_assert_eq(r->put->header->revision, 1);
    cr_assert_eq(r->revision, 1);
    cr_assert_null(r->put->prev_kv);
    FREE_RES(r);
    Mvccpb__KeyValue *kv = get1("a");
    cr_assert(kv);
    cr_assert_eq(kv->create_revision, 1);
    cr_assert_eq(kv->mod_revision, 1);
    cr_assert_eq(kv->version, 1);
    cr_assert_eq(kv->lease, 0);
    cr_assert_eq(kv->value.len, 1);
    cr_assert_eq(kv->value.data[0], '1');

    kvt_put_ok(&T, "b", "x");
    r = kvt_put_opt(&T, "a", "2", PUT_PREV, 0);
    cr_assert_eq(r->put->header->revision, 3);
    cr_assert(r->put->prev_kv);
    cr_assert_eq(r->put->prev_kv->version, 1);
    cr_assert_eq(r->put->prev_kv->mod_revision, 1);
    cr_assert_eq(r->put->prev_kv->value.data[0], '1');
    FREE_RES(r);
    kv = get1("a");
    cr_assert_eq(kv->create_revision, 1);
    cr_assert_eq(kv->mod_revision, 3);
    cr_assert_eq(kv->version, 2);
    cr_assert_eq(kv->value.data[0], '2');
    cr_assert_eq(kvt_rev(&T), 3);

    /* A Put of the same value still makes a revision (etcd: a Put always does). */
    kvt_put_ok(&T, "a", "2");
    cr_assert_eq(kvt_rev(&T), 4);
    cr_assert_eq(get1("a")->version, 3);
    /* An empty value is a value. */
    kvt_put_ok(&T, "e", "");
    kv = get1("e");
    cr_assert(kv);
    cr_assert_eq(kv->value.len, 0);
}

Test(kv_ops, put_prev_kv_on_missing_key_is_absent)
{
    Craft__Kv__Result *r = kvt_put_opt(&T, "k", "v", PUT_PREV, 0);
    cr_assert_eq(r->code, 0);
    cr_assert_null(r->put->prev_kv);
    FREE_RES(r);
}

Test(kv_ops, put_ignore_value_keeps_value_and_bumps_version)
{
    kvt_put_ok(&T, "k", "v1");
    Craft__Kv__Result *r = kvt_put_opt(&T, "k", NULL, PUT_IGNORE_VALUE | PUT_PREV, 0);
    cr_assert_eq(r->code, 0, "%s", r->message);
    cr_assert_eq(r->put->header->revision, 2);
    FREE_RES(r);
    Mvccpb__KeyValue *kv = get1("k");
    cr_assert_eq(kv->version, 2);
    cr_assert_eq(kv->mod_revision, 2);
    cr_assert_eq(kv->value.len, 2);
    cr_assert_eq(memcmp(kv->value.data, "v1", 2), 0);
    /* ignore_value on a missing key: etcd's "key not found", nothing changes */
    r = kvt_put_opt(&T, "missing", NULL, PUT_IGNORE_VALUE, 0);
    cr_assert_eq(r->code, KV_CODE_INVALID_ARGUMENT);
    cr_assert_str_eq(r->message, KV_ERR_KEY_NOT_FOUND);
    cr_assert_eq(r->resp_case, CRAFT__KV__RESULT__RESP__NOT_SET);
    FREE_RES(r);
    cr_assert_eq(kvt_rev(&T), 2);
    /* ignore_lease too needs the key */
    r = kvt_put_opt(&T, "missing", "v", PUT_IGNORE_LEASE, 0);
    cr_assert_str_eq(r->message, KV_ERR_KEY_NOT_FOUND);
    FREE_RES(r);
    r = kvt_put_opt(&T, "k", "v2", PUT_IGNORE_LEASE, 0);
    cr_assert_eq(r->code, 0);
    FREE_RES(r);
}

Test(kv_ops, put_validation_errors)
{
    struct kv_err err;
    Etcdserverpb__PutRequest p = ETCDSERVERPB__PUT_REQUEST__INIT;
    cr_assert_eq(kv_validate_put(&p, &err), -1);
    cr_assert_eq(err.code, KV_CODE_INVALID_ARGUMENT);
    cr_assert_str_eq(err.msg, KV_ERR_EMPTY_KEY);
    p.key = kvt_bin("k");
    p.value = kvt_bin("v");
    p.ignore_value = 1;
    cr_assert_eq(kv_validate_put(&p, &err), -1);
    cr_assert_str_eq(err.msg, KV_ERR_VALUE_PROVIDED);
    p.ignore_value = 0;
    p.ignore_lease = 1;
    p.lease = 5;
    cr_assert_eq(kv_validate_put(&p, &err), -1);
    cr_assert_str_eq(err.msg, KV_ERR_LEASE_PROVIDED);
    p.ignore_lease = 0;
    cr_assert_eq(kv_validate_put(&p, &err), 0);
    char longkey[600];
    memset(longkey, 'x', sizeof longkey - 1);
    longkey[sizeof longkey - 1] = 0;
    p.key = kvt_bin(longkey);
    p.lease = 0;
    cr_assert_eq(kv_validate_put(&p, &err), -1);
    cr_assert_str_eq(err.msg, KV_ERR_KEY_TOO_LONG);

    /* The same checks at apply time: an invalid command in the log changes nothing. */
    Craft__Kv__Result *r = kvt_put(&T, "", "v");
    cr_assert_eq(r->code, KV_CODE_INVALID_ARGUMENT);
    cr_assert_str_eq(r->message, KV_ERR_EMPTY_KEY);
    FREE_RES(r);
    r = kvt_put_opt(&T, "k", "v", PUT_IGNORE_VALUE, 0);
    cr_assert_str_eq(r->message, KV_ERR_VALUE_PROVIDED);
    FREE_RES(r);
    r = kvt_put_opt(&T, "k", "v", 0, 7);
    cr_assert_eq(r->code, KV_CODE_NOT_FOUND);
    cr_assert_str_eq(r->message, KV_ERR_LEASE_NOT_FOUND);
    FREE_RES(r);
    r = kvt_put(&T, longkey, "v");
    cr_assert_str_eq(r->message, KV_ERR_KEY_TOO_LONG);
    FREE_RES(r);
    cr_assert_eq(kvt_rev(&T), 0);
    cr_assert_null(get1("k"));
}

Test(kv_ops, max_size_key_and_large_value)
{
    char key[KV_MAX_KEY + 1];
    memset(key, 'k', KV_MAX_KEY);
    key[KV_MAX_KEY] = 0;
    size_t vlen = 1 << 20;
    char *val = malloc(vlen + 1);
    memset(val, 'v', vlen);
    val[vlen] = 0;
    kvt_put_ok(&T, key, val);
    Etcdserverpb__RangeRequest r;
    kvt_range_req(&r, key, NULL);
    Etcdserverpb__RangeResponse *resp = kvt_range(&T, &r);
    cr_assert_eq(resp->n_kvs, 1);
    cr_assert_eq(resp->kvs[0]->key.len, KV_MAX_KEY);
    cr_assert_eq(resp->kvs[0]->value.len, vlen);
    etcdserverpb__range_response__free_unpacked(resp, NULL);
    /* A longer key can be read (it is simply absent) and can start a range. */
    char longer[KV_MAX_KEY + 10];
    memset(longer, 'k', sizeof longer - 1);
    longer[sizeof longer - 1] = 0;
    kvt_range_req(&r, longer, NULL);
    resp = kvt_range(&T, &r);
    cr_assert_eq(resp->n_kvs, 0);
    etcdserverpb__range_response__free_unpacked(resp, NULL);
    kvt_put_ok(&T, "kl", "after");
    kvt_range_req(&r, longer, KVT_FROM);
    resp = kvt_range(&T, &r);
    cr_assert_str_eq(kvt_keys(resp->kvs, resp->n_kvs, false), "kl");
    cr_assert_eq(resp->count, 1);
    etcdserverpb__range_response__free_unpacked(resp, NULL);
    free(val);
}

static void put_abc(void)
{
    /* revisions: a=1, b=2, c=3, ab=4, d=5, b again=6 */
    kvt_put_ok(&T, "a", "3");
    kvt_put_ok(&T, "b", "1");
    kvt_put_ok(&T, "c", "2");
    kvt_put_ok(&T, "ab", "5");
    kvt_put_ok(&T, "d", "4");
    kvt_put_ok(&T, "b", "9");
}

static const char *range_keys(const char *key, const char *end, void (*mod)(Etcdserverpb__RangeRequest *),
                              int64_t *count, bool *more)
{
    Etcdserverpb__RangeRequest r;
    kvt_range_req(&r, key, end);
    if (mod)
        mod(&r);
    Etcdserverpb__RangeResponse *resp = kvt_range(&T, &r);
    const char *k = kvt_keys(resp->kvs, resp->n_kvs, false);
    if (count)
        *count = resp->count;
    if (more)
        *more = resp->more;
    cr_assert_eq(resp->header->revision, kvt_rev(&T));
    etcdserverpb__range_response__free_unpacked(resp, NULL);
    return k;
}

Test(kv_ops, range_single_prefix_fromkey_all)
{
    put_abc();
    int64_t count;
    bool more;
    cr_assert_str_eq(range_keys("a", NULL, NULL, &count, &more), "a");
    cr_assert_eq(count, 1);
    cr_assert_str_eq(range_keys("zz", NULL, NULL, &count, &more), "");
    cr_assert_eq(count, 0);
    cr_assert_str_eq(range_keys("a", "c", NULL, &count, NULL), "a,ab,b");
    cr_assert_eq(count, 3);
    cr_assert_str_eq(range_keys("a", "b", NULL, NULL, NULL), "a,ab"); /* prefix "a" */
    cr_assert_str_eq(range_keys("b", KVT_FROM, NULL, NULL, NULL), "b,c,d");
    cr_assert_str_eq(range_keys("\x01", KVT_FROM, NULL, NULL, NULL), "a,ab,b,c,d");
    /* key "\0" with range_end "\0": every key */
    Etcdserverpb__RangeRequest r;
    kvt_range_req(&r, KVT_FROM, KVT_FROM);
    Etcdserverpb__RangeResponse *resp = kvt_range(&T, &r);
    cr_assert_str_eq(kvt_keys(resp->kvs, resp->n_kvs, true), "a=3,ab=5,b=9,c=2,d=4");
    cr_assert_eq(resp->count, 5);
    etcdserverpb__range_response__free_unpacked(resp, NULL);
    /* range_end <= key: nothing */
    cr_assert_str_eq(range_keys("c", "b", NULL, &count, NULL), "");
    cr_assert_eq(count, 0);
    cr_assert_str_eq(range_keys("c", "c", NULL, NULL, NULL), "");
}

static void lim2(Etcdserverpb__RangeRequest *r) { r->limit = 2; }
static void lim5(Etcdserverpb__RangeRequest *r) { r->limit = 5; }
static void limneg(Etcdserverpb__RangeRequest *r) { r->limit = -1; }
static void count_only(Etcdserverpb__RangeRequest *r) { r->count_only = 1; r->limit = 1; }

Test(kv_ops, range_limit_more_count)
{
    put_abc();
    int64_t count;
    bool more;
    cr_assert_str_eq(range_keys("a", KVT_FROM, lim2, &count, &more), "a,ab");
    cr_assert_eq(count, 5);
    cr_assert(more);
    cr_assert_str_eq(range_keys("a", KVT_FROM, lim5, &count, &more), "a,ab,b,c,d");
    cr_assert_not(more);
    cr_assert_str_eq(range_keys("a", KVT_FROM, limneg, &count, &more), "a,ab,b,c,d");
    cr_assert_not(more);
    cr_assert_str_eq(range_keys("a", KVT_FROM, count_only, &count, &more), "");
    cr_assert_eq(count, 5);
    cr_assert_not(more);
}

static void keys_only(Etcdserverpb__RangeRequest *r) { r->keys_only = 1; }

Test(kv_ops, range_keys_only)
{
    put_abc();
    Etcdserverpb__RangeRequest r;
    kvt_range_req(&r, "a", "c");
    keys_only(&r);
    Etcdserverpb__RangeResponse *resp = kvt_range(&T, &r);
    cr_assert_eq(resp->n_kvs, 3);
    for (size_t i = 0; i < resp->n_kvs; i++) {
        cr_assert_eq(resp->kvs[i]->value.len, 0);
        cr_assert_gt(resp->kvs[i]->version, 0);
        cr_assert_gt(resp->kvs[i]->mod_revision, 0);
    }
    etcdserverpb__range_response__free_unpacked(resp, NULL);
}

#define SORTFN(name, ord, tgt)                                                                     \
    static void name(Etcdserverpb__RangeRequest *r)                                                \
    {                                                                                              \
        r->sort_order = ETCDSERVERPB__RANGE_REQUEST__SORT_ORDER__##ord;                            \
        r->sort_target = ETCDSERVERPB__RANGE_REQUEST__SORT_TARGET__##tgt;                          \
    }
SORTFN(key_desc, DESCEND, KEY)
SORTFN(key_asc, ASCEND, KEY)
SORTFN(val_asc, ASCEND, VALUE)
SORTFN(val_desc, DESCEND, VALUE)
SORTFN(mod_none, NONE, MOD)
SORTFN(mod_desc, DESCEND, MOD)
SORTFN(create_asc, ASCEND, CREATE)
SORTFN(create_desc, DESCEND, CREATE)
SORTFN(ver_desc, DESCEND, VERSION)
SORTFN(ver_asc, ASCEND, VERSION)
static void val_desc_lim2(Etcdserverpb__RangeRequest *r)
{
    val_desc(r);
    r->limit = 2;
}
static void val_desc_keys_only(Etcdserverpb__RangeRequest *r)
{
    val_desc(r);
    r->keys_only = 1;
}

Test(kv_ops, range_sorting)
{
    put_abc(); /* values a=3 ab=5 b=9 c=2 d=4; mod a1 c3 ab4 d5 b6; create a1 b2 c3 ab4 d5 */
    cr_assert_str_eq(range_keys("a", KVT_FROM, key_desc, NULL, NULL), "d,c,b,ab,a");
    cr_assert_str_eq(range_keys("a", KVT_FROM, key_asc, NULL, NULL), "a,ab,b,c,d");
    cr_assert_str_eq(range_keys("a", KVT_FROM, val_asc, NULL, NULL), "c,a,d,ab,b");
    cr_assert_str_eq(range_keys("a", KVT_FROM, val_desc, NULL, NULL), "b,ab,d,a,c");
    /* NONE with a target other than KEY sorts ascending, as etcd does */
    cr_assert_str_eq(range_keys("a", KVT_FROM, mod_none, NULL, NULL), "a,c,ab,d,b");
    cr_assert_str_eq(range_keys("a", KVT_FROM, mod_desc, NULL, NULL), "b,d,ab,c,a");
    cr_assert_str_eq(range_keys("a", KVT_FROM, create_asc, NULL, NULL), "a,b,c,ab,d");
    cr_assert_str_eq(range_keys("a", KVT_FROM, create_desc, NULL, NULL), "d,ab,c,b,a");
    /* versions: b=2, the rest 1; ties keep key order */
    cr_assert_str_eq(range_keys("a", KVT_FROM, ver_desc, NULL, NULL), "b,a,ab,c,d");
    cr_assert_str_eq(range_keys("a", KVT_FROM, ver_asc, NULL, NULL), "a,ab,c,d,b");
    int64_t count;
    bool more;
    /* limit applies after sorting */
    cr_assert_str_eq(range_keys("a", KVT_FROM, val_desc_lim2, &count, &more), "b,ab");
    cr_assert(more);
    cr_assert_eq(count, 5);
    /* keys_only still sorts by the values */
    cr_assert_str_eq(range_keys("a", KVT_FROM, val_desc_keys_only, NULL, NULL), "b,ab,d,a,c");
}

static void min_mod4(Etcdserverpb__RangeRequest *r) { r->min_mod_revision = 4; }
static void max_mod3(Etcdserverpb__RangeRequest *r) { r->max_mod_revision = 3; }
static void min_create2_max_create4(Etcdserverpb__RangeRequest *r)
{
    r->min_create_revision = 2;
    r->max_create_revision = 4;
}
static void min_mod4_lim1(Etcdserverpb__RangeRequest *r)
{
    r->min_mod_revision = 4;
    r->limit = 1;
}

Test(kv_ops, range_revision_filters)
{
    put_abc();
    int64_t count;
    bool more;
    cr_assert_str_eq(range_keys("a", KVT_FROM, min_mod4, &count, &more), "ab,b,d");
    cr_assert_eq(count, 5); /* count is before the filters, as in etcd */
    cr_assert_str_eq(range_keys("a", KVT_FROM, max_mod3, NULL, NULL), "a,c");
    cr_assert_str_eq(range_keys("a", KVT_FROM, min_create2_max_create4, NULL, NULL), "ab,b,c");
    cr_assert_str_eq(range_keys("a", KVT_FROM, min_mod4_lim1, &count, &more), "ab");
    cr_assert(more);
}

Test(kv_ops, range_revision_future_compacted_current)
{
    put_abc();
    Etcdserverpb__RangeRequest r;
    kvt_range_req(&r, "a", NULL);
    struct kv_err err;
    Etcdserverpb__RangeResponse *resp = NULL;
    r.revision = 7;
    cr_assert_eq(kv_store_range(T.s, &r, &resp, &err), -1);
    cr_assert_eq(err.code, KV_CODE_OUT_OF_RANGE);
    cr_assert_str_eq(err.msg, KV_ERR_FUTURE_REV);
    /* an older revision is read from the history: "a" as it was, and absent before its put */
    kvt_put_ok(&T, "a", "new"); /* revision 7 */
    r.revision = 5;
    resp = kvt_range(&T, &r);
    cr_assert_eq(resp->n_kvs, 1);
    cr_assert_eq(resp->header->revision, 7, "the header has the current revision, as in etcd");
    cr_assert_eq(resp->kvs[0]->mod_revision, 1);
    cr_assert_eq(resp->kvs[0]->value.len, 1);
    cr_assert_eq(resp->kvs[0]->value.data[0], '3');
    etcdserverpb__range_response__free_unpacked(resp, NULL);
    Craft__Kv__Result *cres = kvt_compact(&T, 6);
    cr_assert_eq(cres->code, 0, "%s", cres->message);
    craft__kv__result__free_unpacked(cres, NULL);
    r.revision = 5;
    cr_assert_eq(kv_store_range(T.s, &r, &resp, &err), -1);
    cr_assert_eq(err.code, KV_CODE_OUT_OF_RANGE);
    cr_assert_str_eq(err.msg, KV_ERR_COMPACTED);
    r.revision = 6;
    resp = kvt_range(&T, &r);
    cr_assert_eq(resp->n_kvs, 1);
    etcdserverpb__range_response__free_unpacked(resp, NULL);
    r.revision = -3; /* <= 0: the current revision */
    resp = kvt_range(&T, &r);
    cr_assert_eq(resp->n_kvs, 1);
    etcdserverpb__range_response__free_unpacked(resp, NULL);
}

Test(kv_ops, range_validation)
{
    Etcdserverpb__RangeRequest r;
    kvt_range_req(&r, NULL, NULL);
    struct kv_err err;
    Etcdserverpb__RangeResponse *resp = NULL;
    cr_assert_eq(kv_validate_range(&r, &err), -1);
    cr_assert_str_eq(err.msg, KV_ERR_EMPTY_KEY);
    cr_assert_eq(err.code, KV_CODE_INVALID_ARGUMENT);
    cr_assert_eq(kv_store_range(T.s, &r, &resp, &err), -1);
    cr_assert_null(resp);
    kvt_range_req(&r, "a", NULL);
    r.sort_target = 9;
    cr_assert_eq(kv_store_range(T.s, &r, &resp, &err), -1);
    cr_assert_str_eq(err.msg, KV_ERR_BAD_ENUM);
    r.sort_target = 0;
    r.sort_order = -1;
    cr_assert_eq(kv_validate_range(&r, &err), -1);
    cr_assert_str_eq(err.msg, KV_ERR_BAD_ENUM);
}

Test(kv_ops, delete_single_range_prev_kv)
{
    put_abc(); /* rev 6 */
    Craft__Kv__Result *r = kvt_del(&T, "zz", NULL, true);
    cr_assert_eq(r->code, 0);
    cr_assert_eq(r->delete_range->deleted, 0);
    cr_assert_eq(r->delete_range->n_prev_kvs, 0);
    cr_assert_eq(r->delete_range->header->revision, 6); /* nothing deleted: no revision */
    FREE_RES(r);
    cr_assert_eq(kvt_rev(&T), 6);

    r = kvt_del(&T, "a", NULL, false);
    cr_assert_eq(r->delete_range->deleted, 1);
    cr_assert_eq(r->delete_range->n_prev_kvs, 0);
    cr_assert_eq(r->delete_range->header->revision, 7);
    FREE_RES(r);
    cr_assert_null(get1("a"));

    r = kvt_del(&T, "a", "c", true); /* ab, b */
    cr_assert_eq(r->delete_range->deleted, 2);
    cr_assert_str_eq(kvt_keys(r->delete_range->prev_kvs, r->delete_range->n_prev_kvs, true),
                     "ab=5,b=9");
    cr_assert_eq(r->delete_range->prev_kvs[1]->version, 2);
    cr_assert_eq(r->delete_range->header->revision, 8);
    FREE_RES(r);

    r = kvt_del(&T, "c", KVT_FROM, false); /* c, d */
    cr_assert_eq(r->delete_range->deleted, 2);
    FREE_RES(r);
    cr_assert_eq(kvt_rev(&T), 9);
    cr_assert_str_eq(range_keys("\x01", KVT_FROM, NULL, NULL, NULL), "");

    /* a re-created key starts over: version 1, new create revision */
    kvt_put_ok(&T, "a", "again");
    Mvccpb__KeyValue *kv = get1("a");
    cr_assert_eq(kv->version, 1);
    cr_assert_eq(kv->create_revision, 10);
    cr_assert_eq(kv->mod_revision, 10);

    r = kvt_del(&T, "", NULL, false);
    cr_assert_str_eq(r->message, KV_ERR_EMPTY_KEY);
    FREE_RES(r);
}

Test(kv_ops, compaction)
{
    put_abc(); /* rev 6 */
    Craft__Kv__Result *r = kvt_compact(&T, 7);
    cr_assert_eq(r->code, KV_CODE_OUT_OF_RANGE);
    cr_assert_str_eq(r->message, KV_ERR_FUTURE_REV);
    FREE_RES(r);
    r = kvt_compact(&T, 0);
    cr_assert_str_eq(r->message, KV_ERR_COMPACTED);
    FREE_RES(r);
    r = kvt_compact(&T, 4);
    cr_assert_eq(r->code, 0);
    cr_assert_eq(r->resp_case, CRAFT__KV__RESULT__RESP_COMPACTION);
    cr_assert_eq(r->compaction->header->revision, 6);
    FREE_RES(r);
    int64_t rev, comp;
    cr_assert_eq(kv_store_status(T.s, &rev, &comp, NULL, NULL), 0);
    cr_assert_eq(rev, 6);
    cr_assert_eq(comp, 4);
    r = kvt_compact(&T, 4);
    cr_assert_str_eq(r->message, KV_ERR_COMPACTED);
    FREE_RES(r);
    r = kvt_compact(&T, 3);
    cr_assert_str_eq(r->message, KV_ERR_COMPACTED);
    FREE_RES(r);
    r = kvt_compact(&T, 6);
    cr_assert_eq(r->code, 0);
    FREE_RES(r);
    /* data is untouched: no history is kept, so there is none to drop */
    cr_assert_str_eq(range_keys("a", KVT_FROM, NULL, NULL, NULL), "a,ab,b,c,d");
    cr_assert_eq(kvt_rev(&T), 6);
}

Test(kv_ops, encode_decode_roundtrip)
{
    Etcdserverpb__PutRequest p = ETCDSERVERPB__PUT_REQUEST__INIT;
    p.key = kvt_bin("key");
    p.value = kvt_bin("value");
    p.prev_kv = 1;
    uint8_t *b;
    size_t n;
    cr_assert_eq(kv_cmd_encode_put(&p, &b, &n), 0);
    Craft__Kv__Command *c = craft__kv__command__unpack(NULL, n, b);
    cr_assert(c);
    cr_assert_eq(c->op_case, CRAFT__KV__COMMAND__OP_PUT);
    cr_assert_eq(c->put->key.len, 3);
    cr_assert(c->put->prev_kv);
    craft__kv__command__free_unpacked(c, NULL);
    free(b);
    cr_assert_null(kv_result_decode("\xff\xff\xff", 3));
}
