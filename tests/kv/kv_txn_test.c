/* kv_txn_test.c: Txn semantics as etcd 3.4 has them: the compare matrix (incl. missing keys and
 * compare ranges), branches, one revision per txn, nested txns whose compares all see the state
 * before the txn, the duplicate-key rule, path-dependent errors, read-only txns. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "services/kvstore/kv_cmd.h"
#include "tests/kv/kv_txn_build.h"

static struct kvt T;
static void setup(void) { kvt_open(&T, NULL); }
static void teardown(void) { kvt_close(&T); }
TestSuite(kv_txn, .init = setup, .fini = teardown);

#define FREE_RES(r) craft__kv__result__free_unpacked((r), NULL)
#define TGT(x) ETCDSERVERPB__COMPARE__COMPARE_TARGET__##x
#define RES(x) ETCDSERVERPB__COMPARE__COMPARE_RESULT__##x

/* Runs a one-compare txn with a marker put in success; true when the success branch ran. */
static bool eval(const char *key, const char *end, int target, int result, int64_t num,
                 const char *val)
{
    Etcdserverpb__TxnRequest *t = kb_txn();
    kb_cmp(t, key, end, target, result, num, val);
    kb_range(t, 0, "zz", NULL);
    kb_range(t, 1, "zz", NULL);
    Craft__Kv__Result *r = kvt_txn(&T, t);
    cr_assert_eq(r->code, 0, "%s", r->message);
    bool ok = r->txn->succeeded;
    cr_assert_eq(r->txn->n_responses, 1);
    FREE_RES(r);
    kb_free(t);
    return ok;
}

Test(kv_txn, compare_matrix)
{
    kvt_put_ok(&T, "k", "m"); /* rev 1 */
    kvt_put_ok(&T, "x", "1"); /* rev 2 */
    kvt_put_ok(&T, "k", "m"); /* rev 3: k version 2, create 1, mod 3 */
    struct {
        int target;
        int64_t actual;
    } ints[] = {{TGT(VERSION), 2}, {TGT(CREATE), 1}, {TGT(MOD), 3}, {TGT(LEASE), 0}};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        int64_t a = ints[i].actual;
        int tg = ints[i].target;
        cr_assert(eval("k", NULL, tg, RES(EQUAL), a, NULL));
        cr_assert_not(eval("k", NULL, tg, RES(EQUAL), a + 1, NULL));
        cr_assert(eval("k", NULL, tg, RES(NOT_EQUAL), a + 1, NULL));
        cr_assert_not(eval("k", NULL, tg, RES(NOT_EQUAL), a, NULL));
        cr_assert(eval("k", NULL, tg, RES(GREATER), a - 1, NULL));
        cr_assert_not(eval("k", NULL, tg, RES(GREATER), a, NULL));
        cr_assert(eval("k", NULL, tg, RES(LESS), a + 1, NULL));
        cr_assert_not(eval("k", NULL, tg, RES(LESS), a, NULL));
    }
    cr_assert(eval("k", NULL, TGT(VALUE), RES(EQUAL), 0, "m"));
    cr_assert_not(eval("k", NULL, TGT(VALUE), RES(EQUAL), 0, "n"));
    cr_assert(eval("k", NULL, TGT(VALUE), RES(NOT_EQUAL), 0, "n"));
    cr_assert(eval("k", NULL, TGT(VALUE), RES(GREATER), 0, "l"));
    cr_assert(eval("k", NULL, TGT(VALUE), RES(GREATER), 0, ""));
    cr_assert_not(eval("k", NULL, TGT(VALUE), RES(GREATER), 0, "ma"));
    cr_assert(eval("k", NULL, TGT(VALUE), RES(LESS), 0, "ma"));
    cr_assert_not(eval("k", NULL, TGT(VALUE), RES(LESS), 0, "m"));

    /* a missing key compares as the zero KeyValue ... */
    cr_assert(eval("nokey", NULL, TGT(VERSION), RES(EQUAL), 0, NULL));
    cr_assert(eval("nokey", NULL, TGT(CREATE), RES(EQUAL), 0, NULL));
    cr_assert(eval("nokey", NULL, TGT(MOD), RES(LESS), 1, NULL));
    cr_assert(eval("nokey", NULL, TGT(LEASE), RES(EQUAL), 0, NULL));
    cr_assert_not(eval("nokey", NULL, TGT(VERSION), RES(GREATER), 0, NULL));
    /* ... except that a VALUE compare on missing keys always fails (etcd) */
    cr_assert_not(eval("nokey", NULL, TGT(VALUE), RES(EQUAL), 0, ""));
    cr_assert_not(eval("nokey", NULL, TGT(VALUE), RES(NOT_EQUAL), 0, "x"));

    /* a compare range: every key in it must satisfy the compare */
    cr_assert(eval("k", "y", TGT(CREATE), RES(GREATER), 0, NULL));   /* k, x */
    cr_assert_not(eval("k", "y", TGT(VERSION), RES(EQUAL), 2, NULL)); /* x has version 1 */
    cr_assert(eval("a", KVT_FROM, TGT(MOD), RES(LESS), 4, NULL));
    cr_assert_not(eval("a", KVT_FROM, TGT(MOD), RES(LESS), 3, NULL));
    cr_assert(eval("l", "m", TGT(VERSION), RES(EQUAL), 0, NULL)); /* empty range: zero kv */

    /* a union member of another kind compares against zero / empty */
    Etcdserverpb__TxnRequest *t = kb_txn();
    kb_cmp(t, "k", NULL, TGT(VERSION), RES(GREATER), 99, NULL);
    t->compare[0]->target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_MOD_REVISION;
    Craft__Kv__Result *r = kvt_txn(&T, t);
    cr_assert(r->txn->succeeded); /* version 2 > 0 */
    FREE_RES(r);
    kb_free(t);
    /* several compares: all must hold */
    t = kb_txn();
    kb_cmp(t, "k", NULL, TGT(VERSION), RES(EQUAL), 2, NULL);
    kb_cmp(t, "x", NULL, TGT(VALUE), RES(EQUAL), 0, "2");
    r = kvt_txn(&T, t);
    cr_assert_not(r->txn->succeeded);
    FREE_RES(r);
    kb_free(t);
    cr_assert_eq(kvt_rev(&T), 3); /* compares and reads never make revisions */
}

Test(kv_txn, branches_share_one_revision)
{
    kvt_put_ok(&T, "a", "1");
    kvt_put_ok(&T, "b", "2");
    kvt_put_ok(&T, "c", "3"); /* rev 3 */
    Etcdserverpb__TxnRequest *t = kb_txn();
    kb_cmp(t, "a", NULL, TGT(VALUE), RES(EQUAL), 0, "1");
    kb_range(t, 0, "a", "z");
    kb_put(t, 0, "a", "10", true);
    kb_put(t, 0, "new", "n", false);
    kb_del(t, 0, "b", "c", true);
    kb_range(t, 0, "a", "z");
    kb_del(t, 0, "nothing", NULL, false);
    kb_put(t, 1, "failed", "f", false);
    Craft__Kv__Result *r = kvt_txn(&T, t);
    cr_assert_eq(r->code, 0, "%s", r->message);
    Etcdserverpb__TxnResponse *x = r->txn;
    cr_assert(x->succeeded);
    cr_assert_eq(x->header->revision, 4);
    cr_assert_eq(r->revision, 4);
    cr_assert_eq(x->n_responses, 6);
    Etcdserverpb__RangeResponse *r0 = x->responses[0]->response_range;
    cr_assert_eq(x->responses[0]->response_case, ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_RANGE);
    cr_assert_str_eq(kvt_keys(r0->kvs, r0->n_kvs, true), "a=1,b=2,c=3");
    cr_assert_eq(r0->header->revision, 3); /* before the first write */
    Etcdserverpb__PutResponse *p1 = x->responses[1]->response_put;
    cr_assert_eq(p1->header->revision, 4);
    cr_assert_eq(p1->prev_kv->value.data[0], '1');
    cr_assert_eq(x->responses[2]->response_put->header->revision, 4);
    Etcdserverpb__DeleteRangeResponse *d3 = x->responses[3]->response_delete_range;
    cr_assert_eq(d3->deleted, 1);
    cr_assert_str_eq(kvt_keys(d3->prev_kvs, d3->n_prev_kvs, true), "b=2");
    Etcdserverpb__RangeResponse *r4 = x->responses[4]->response_range;
    cr_assert_str_eq(kvt_keys(r4->kvs, r4->n_kvs, true), "a=10,c=3,new=n"); /* sees the writes */
    cr_assert_eq(r4->header->revision, 4);
    cr_assert_eq(r4->kvs[0]->mod_revision, 4);
    cr_assert_eq(r4->kvs[0]->version, 2);
    cr_assert_eq(r4->kvs[2]->create_revision, 4);
    cr_assert_eq(x->responses[5]->response_delete_range->deleted, 0);
    cr_assert_eq(x->responses[5]->response_delete_range->header->revision, 4);
    FREE_RES(r);
    cr_assert_eq(kvt_rev(&T), 4);

    /* the failure branch */
    t->compare[0]->value.data[0] = '9';
    r = kvt_txn(&T, t);
    cr_assert_not(r->txn->succeeded);
    cr_assert_eq(r->txn->n_responses, 1);
    cr_assert_eq(r->txn->responses[0]->response_put->header->revision, 5);
    FREE_RES(r);
    kb_free(t);
    Etcdserverpb__RangeRequest q;
    kvt_range_req(&q, "failed", NULL);
    Etcdserverpb__RangeResponse *resp = kvt_range(&T, &q);
    cr_assert_eq(resp->n_kvs, 1);
    etcdserverpb__range_response__free_unpacked(resp, NULL);
}

Test(kv_txn, txn_that_writes_nothing_makes_no_revision)
{
    kvt_put_ok(&T, "a", "1");
    Etcdserverpb__TxnRequest *t = kb_txn();
    kb_del(t, 0, "zz", NULL, false);
    kb_range(t, 0, "a", NULL);
    Craft__Kv__Result *r = kvt_txn(&T, t);
    cr_assert_eq(r->txn->header->revision, 1);
    cr_assert_eq(r->revision, 1);
    FREE_RES(r);
    kb_free(t);
    t = kb_txn(); /* an empty txn */
    r = kvt_txn(&T, t);
    cr_assert_eq(r->code, 0);
    cr_assert(r->txn->succeeded);
    cr_assert_eq(r->txn->header->revision, 1);
    FREE_RES(r);
    kb_free(t);
    cr_assert_eq(kvt_rev(&T), 1);
}

Test(kv_txn, nested_txns_compare_before_writes)
{
    kvt_put_ok(&T, "a", "1"); /* rev 1 */
    Etcdserverpb__TxnRequest *t = kb_txn(), *sub = kb_txn(), *sub2 = kb_txn();
    kb_put(t, 0, "a", "2", false);
    /* the nested compare sees a=1 although the put above runs first */
    kb_cmp(sub, "a", NULL, TGT(VALUE), RES(EQUAL), 0, "1");
    kb_put(sub, 0, "b", "sub-then", false);
    kb_range(sub, 0, "a", NULL);
    kb_put(sub, 1, "b", "sub-else", false); /* same key in both branches: allowed */
    kb_sub(t, 0, sub);
    kb_cmp(sub2, "b", NULL, TGT(VERSION), RES(EQUAL), 0, NULL); /* b is absent before */
    kb_put(sub2, 0, "c", "sub2", false);
    kb_sub(t, 0, sub2);
    Craft__Kv__Result *r = kvt_txn(&T, t);
    cr_assert_eq(r->code, 0, "%s", r->message);
    Etcdserverpb__TxnResponse *x = r->txn;
    cr_assert_eq(x->header->revision, 2);
    cr_assert_eq(x->n_responses, 3);
    Etcdserverpb__TxnResponse *s1 = x->responses[1]->response_txn;
    cr_assert(s1->succeeded);
    cr_assert_eq(s1->n_responses, 2);
    cr_assert_eq(s1->header->revision, 0); /* etcd leaves nested txn headers empty */
    Etcdserverpb__RangeResponse *rr = s1->responses[1]->response_range;
    cr_assert_str_eq(kvt_keys(rr->kvs, rr->n_kvs, true), "a=2");
    Etcdserverpb__TxnResponse *s2 = x->responses[2]->response_txn;
    cr_assert(s2->succeeded);
    FREE_RES(r);
    kb_free(t);
    Etcdserverpb__RangeRequest q;
    kvt_range_req(&q, "a", KVT_FROM);
    Etcdserverpb__RangeResponse *resp = kvt_range(&T, &q);
    cr_assert_str_eq(kvt_keys(resp->kvs, resp->n_kvs, true), "a=2,b=sub-then,c=sub2");
    for (size_t i = 0; i < resp->n_kvs; i++)
        cr_assert_eq(resp->kvs[i]->mod_revision, 2);
    etcdserverpb__range_response__free_unpacked(resp, NULL);
}

static const char *dup_check(Etcdserverpb__TxnRequest *t)
{
    static struct kv_err err;
    memset(&err, 0, sizeof err);
    int rc = kv_validate_txn(t, 0, &err);
    /* apply repeats the check: an invalid txn in the log changes nothing */
    int64_t rev = kvt_rev(&T);
    Craft__Kv__Result *r = kvt_txn(&T, t);
    if (rc) {
        cr_assert_eq(r->code, (uint32_t)err.code);
        cr_assert_str_eq(r->message, err.msg);
        cr_assert_eq(kvt_rev(&T), rev);
    } else {
        cr_assert_eq(r->code, 0, "%s", r->message);
    }
    FREE_RES(r);
    kb_free(t);
    return rc ? err.msg : "ok";
}

Test(kv_txn, duplicate_keys_as_etcd)
{
    Etcdserverpb__TxnRequest *t = kb_txn();
    kb_put(t, 0, "a", "1", false);
    kb_put(t, 0, "a", "2", false);
    cr_assert_str_eq(dup_check(t), KV_ERR_DUPLICATE_KEY);

    t = kb_txn(); /* put inside a deleted range */
    kb_del(t, 0, "a", "c", false);
    kb_put(t, 0, "b", "1", false);
    cr_assert_str_eq(dup_check(t), KV_ERR_DUPLICATE_KEY);

    t = kb_txn(); /* put of the deleted single key, in either order */
    kb_put(t, 0, "b", "1", false);
    kb_del(t, 0, "b", NULL, false);
    cr_assert_str_eq(dup_check(t), KV_ERR_DUPLICATE_KEY);

    t = kb_txn(); /* the range end is exclusive */
    kb_del(t, 0, "a", "c", false);
    kb_put(t, 0, "c", "1", false);
    cr_assert_str_eq(dup_check(t), "ok");

    t = kb_txn(); /* overlapping deletes are fine */
    kb_del(t, 0, "a", "c", false);
    kb_del(t, 0, "b", "d", false);
    cr_assert_str_eq(dup_check(t), "ok");

    t = kb_txn(); /* success and failure lists are checked separately */
    kb_put(t, 0, "a", "1", false);
    kb_put(t, 1, "a", "1", false);
    cr_assert_str_eq(dup_check(t), "ok");

    t = kb_txn(); /* a nested put against the parent's put */
    Etcdserverpb__TxnRequest *s = kb_txn();
    kb_put(s, 0, "a", "1", false);
    kb_sub(t, 0, s);
    kb_put(t, 0, "a", "2", false);
    cr_assert_str_eq(dup_check(t), KV_ERR_DUPLICATE_KEY);

    t = kb_txn(); /* a nested put inside the parent's delete */
    s = kb_txn();
    kb_put(s, 1, "b", "1", false);
    kb_sub(t, 0, s);
    kb_del(t, 0, "a", "c", false);
    cr_assert_str_eq(dup_check(t), KV_ERR_DUPLICATE_KEY);

    t = kb_txn(); /* the same key in both branches of one nested txn is fine */
    s = kb_txn();
    kb_put(s, 0, "a", "1", false);
    kb_put(s, 1, "a", "2", false);
    kb_sub(t, 0, s);
    cr_assert_str_eq(dup_check(t), "ok");

    t = kb_txn(); /* two nested txns putting one key */
    s = kb_txn();
    kb_put(s, 0, "a", "1", false);
    kb_sub(t, 0, s);
    s = kb_txn();
    kb_put(s, 1, "a", "1", false);
    kb_sub(t, 0, s);
    cr_assert_str_eq(dup_check(t), KV_ERR_DUPLICATE_KEY);

    t = kb_txn(); /* a nested delete, then the parent's put of a key in it */
    s = kb_txn();
    kb_del(s, 0, "a", "z", false);
    kb_sub(t, 0, s);
    kb_put(t, 0, "m", "1", false);
    cr_assert_str_eq(dup_check(t), KV_ERR_DUPLICATE_KEY);

    t = kb_txn(); /* etcd 3.4 quirk: a from-key delete ("\0" end) conflicts with nothing */
    kb_del(t, 0, "a", KVT_FROM, false);
    kb_put(t, 0, "b", "1", false);
    cr_assert_str_eq(dup_check(t), "ok");
}

Test(kv_txn, validation_errors)
{
    struct kv_err err;
    Etcdserverpb__TxnRequest *t = kb_txn();
    for (int i = 0; i < 129; i++) {
        char k[16];
        snprintf(k, sizeof k, "k%d", i);
        kb_put(t, 0, k, "v", false);
    }
    cr_assert_eq(kv_validate_txn(t, 0, &err), -1);
    cr_assert_str_eq(err.msg, KV_ERR_TOO_MANY_OPS);
    cr_assert_eq(kv_validate_txn(t, 200, &err), 0);
    /* the op limit is a member-local flag: apply does not enforce it */
    Craft__Kv__Result *r = kvt_txn(&T, t);
    cr_assert_eq(r->code, 0);
    FREE_RES(r);
    kb_free(t);

    t = kb_txn();
    kb_cmp(t, "", NULL, TGT(VERSION), RES(EQUAL), 0, NULL);
    cr_assert_eq(kv_validate_txn(t, 0, &err), -1);
    cr_assert_str_eq(err.msg, KV_ERR_EMPTY_KEY);
    kb_free(t);

    t = kb_txn();
    kb_empty_op(t, 1);
    cr_assert_eq(kv_validate_txn(t, 0, &err), -1);
    cr_assert_str_eq(err.msg, KV_ERR_KEY_NOT_FOUND);
    r = kvt_txn(&T, t);
    cr_assert_str_eq(r->message, KV_ERR_KEY_NOT_FOUND);
    FREE_RES(r);
    kb_free(t);

    t = kb_txn();
    kb_cmp(t, "a", NULL, 7, RES(EQUAL), 0, NULL);
    cr_assert_eq(kv_validate_txn(t, 0, &err), -1);
    cr_assert_str_eq(err.msg, KV_ERR_BAD_ENUM);
    t->compare[0]->target = TGT(MOD);
    t->compare[0]->result = 4;
    r = kvt_txn(&T, t);
    cr_assert_str_eq(r->message, KV_ERR_BAD_ENUM);
    FREE_RES(r);
    kb_free(t);

    t = kb_txn();
    Etcdserverpb__TxnRequest *s = kb_txn();
    kb_put(s, 0, "", "v", false);
    kb_sub(t, 1, s);
    cr_assert_eq(kv_validate_txn(t, 0, &err), -1);
    cr_assert_str_eq(err.msg, KV_ERR_EMPTY_KEY);
    kb_free(t);

    t = kb_txn(); /* nesting deeper than the op budget allows */
    Etcdserverpb__TxnRequest *cur = t;
    for (int i = 0; i < 300; i++) {
        Etcdserverpb__TxnRequest *n = kb_txn();
        kb_sub(cur, 0, n);
        cur = n;
    }
    cr_assert_eq(kv_validate_txn(t, 0, &err), -1);
    cr_assert_str_eq(err.msg, KV_ERR_TOO_MANY_OPS);
    r = kvt_txn(&T, t);
    cr_assert_str_eq(r->message, KV_ERR_TXN_TOO_DEEP);
    FREE_RES(r);
    kb_free(t);
    cr_assert_eq(kvt_rev(&T), 1);
}

Test(kv_txn, path_dependent_errors_apply_nothing)
{
    kvt_put_ok(&T, "a", "1"); /* rev 1 */
    /* ignore_value on a missing key on the executed path: the whole txn fails */
    Etcdserverpb__TxnRequest *t = kb_txn();
    kb_put(t, 0, "b", "2", false);
    kb_put_req(t, 0, "missing", NULL)->ignore_value = 1;
    Craft__Kv__Result *r = kvt_txn(&T, t);
    cr_assert_eq(r->code, KV_CODE_INVALID_ARGUMENT);
    cr_assert_str_eq(r->message, KV_ERR_KEY_NOT_FOUND);
    FREE_RES(r);
    kb_free(t);
    cr_assert_eq(kvt_rev(&T), 1);
    /* ... but not on the branch that does not run */
    t = kb_txn();
    kb_put(t, 0, "b", "2", false);
    kb_put_req(t, 1, "missing", NULL)->ignore_value = 1;
    kb_put_req(t, 1, "x", "v")->lease = 5;
    r = kvt_txn(&T, t);
    cr_assert_eq(r->code, 0, "%s", r->message);
    FREE_RES(r);
    kb_free(t);
    cr_assert_eq(kvt_rev(&T), 2);
    /* a lease on the path */
    t = kb_txn();
    kb_put_req(t, 0, "x", "v")->lease = 5;
    r = kvt_txn(&T, t);
    cr_assert_eq(r->code, KV_CODE_NOT_FOUND);
    cr_assert_str_eq(r->message, KV_ERR_LEASE_NOT_FOUND);
    FREE_RES(r);
    kb_free(t);
    /* range revisions inside a txn */
    t = kb_txn();
    kb_put(t, 0, "c", "3", false);
    kb_range(t, 0, "a", "z")->revision = 3;
    r = kvt_txn(&T, t);
    cr_assert_eq(r->code, KV_CODE_OUT_OF_RANGE);
    cr_assert_str_eq(r->message, KV_ERR_FUTURE_REV);
    FREE_RES(r);
    t->success[1]->request_range->revision = -1; /* etcd: compacted inside a txn */
    r = kvt_txn(&T, t);
    cr_assert_str_eq(r->message, KV_ERR_COMPACTED);
    FREE_RES(r);
    cr_assert_eq(kvt_rev(&T), 2);
    /* revision == the txn's start: the state before the txn, even after its own put */
    t->success[1]->request_range->revision = 2;
    r = kvt_txn(&T, t);
    cr_assert_eq(r->code, 0, "%s", r->message);
    Etcdserverpb__RangeResponse *rr = r->txn->responses[1]->response_range;
    cr_assert_str_eq(kvt_keys(rr->kvs, rr->n_kvs, true), "a=1,b=2");
    cr_assert_eq(rr->header->revision, 3);
    FREE_RES(r);
    /* an older revision: the state then, from the history */
    t->success[1]->request_range->revision = 1;
    r = kvt_txn(&T, t);
    cr_assert_eq(r->code, 0, "%s", r->message);
    rr = r->txn->responses[1]->response_range;
    cr_assert_str_eq(kvt_keys(rr->kvs, rr->n_kvs, true), "a=1");
    cr_assert_eq(rr->header->revision, 4);
    FREE_RES(r);
    kb_free(t);
    cr_assert_eq(kvt_rev(&T), 4);
}

Test(kv_txn, read_only_txn_served_without_the_log)
{
    kvt_put_ok(&T, "a", "1");
    Etcdserverpb__TxnRequest *t = kb_txn(), *s = kb_txn();
    kb_cmp(t, "a", NULL, TGT(VALUE), RES(EQUAL), 0, "1");
    kb_range(t, 0, "a", NULL);
    kb_range(s, 0, "a", KVT_FROM);
    kb_sub(t, 0, s);
    cr_assert(kv_txn_is_readonly(t));
    Etcdserverpb__TxnResponse *resp = NULL;
    struct kv_err err;
    cr_assert_eq(kv_store_txn_read(T.s, t, &resp, &err), 0, "%s", err.msg);
    cr_assert(resp->succeeded);
    cr_assert_eq(resp->header->revision, 1);
    cr_assert_eq(resp->responses[0]->response_range->n_kvs, 1);
    cr_assert_eq(resp->responses[1]->response_txn->responses[0]->response_range->n_kvs, 1);
    etcdserverpb__txn_response__free_unpacked(resp, NULL);
    kb_put(s, 1, "b", "2", false); /* a write, even on a branch not taken */
    cr_assert_not(kv_txn_is_readonly(t));
    resp = NULL;
    cr_assert_eq(kv_store_txn_read(T.s, t, &resp, &err), -1);
    cr_assert_null(resp);
    kb_free(t);
}

Test(kv_txn, ignore_value_put_after_from_key_delete_fails_whole_txn)
{
    kvt_put_ok(&T, "a", "1");
    kvt_put_ok(&T, "b", "2"); /* rev 2 */
    /* etcd's duplicate-key rule lets a from-key delete and a later put of a key in it through;
     * with ignore_value the put then finds no key (etcd 3.4 panics): craft fails the whole
     * txn with "key not found" and undoes the delete. */
    Etcdserverpb__TxnRequest *t = kb_txn(), *s1 = kb_txn(), *s2 = kb_txn();
    kb_put(t, 0, "c", "3", false);
    kb_del(s1, 0, "a", KVT_FROM, false);
    kb_sub(t, 0, s1);
    kb_put_req(s2, 0, "b", NULL)->ignore_value = 1;
    kb_sub(t, 0, s2);
    struct kv_err err;
    cr_assert_eq(kv_validate_txn(t, 0, &err), 0);
    Craft__Kv__Result *r = kvt_txn(&T, t);
    cr_assert_eq(r->code, KV_CODE_INVALID_ARGUMENT);
    cr_assert_str_eq(r->message, KV_ERR_KEY_NOT_FOUND);
    FREE_RES(r);
    kb_free(t);
    cr_assert_eq(kvt_rev(&T), 2);
    Etcdserverpb__RangeRequest q;
    kvt_range_req(&q, "a", KVT_FROM);
    Etcdserverpb__RangeResponse *resp = kvt_range(&T, &q);
    cr_assert_str_eq(kvt_keys(resp->kvs, resp->n_kvs, true), "a=1,b=2");
    etcdserverpb__range_response__free_unpacked(resp, NULL);
    /* and the store goes on */
    kvt_put_ok(&T, "c", "3");
    cr_assert_eq(kvt_rev(&T), 3);
}

/* 20,000 levels of Txn in RequestOp in Txn, as raw protobuf: refused before any unpacking
 * (protobuf-c would recurse 40,000 frames deep; a 1.5 MiB request can nest ten times more). */
Test(kv_txn, deeply_nested_wire_txn_is_refused_without_unpacking)
{
    size_t levels = 20000, cap = levels * 8 + 16, n = 0;
    uint8_t *buf = malloc(cap), *tmp = malloc(cap);
    /* build from the inside out: txn = {2: op}, op = {4: txn} */
    for (size_t i = 0; i < levels; i++) {
        for (int f = 0; f < 2; f++) {
            uint8_t hdr[12];
            size_t h = 0;
            hdr[h++] = f == 0 ? (4 << 3 | 2) : (2 << 3 | 2);
            size_t v = n;
            do {
                hdr[h++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
                v >>= 7;
            } while (v);
            memcpy(tmp, hdr, h);
            memcpy(tmp + h, buf, n);
            n += h;
            memcpy(buf, tmp, n);
        }
    }
    struct kv_err err;
    cr_assert_eq(kv_check_txn_wire(buf, n, &err), -1);
    cr_assert_str_eq(err.msg, KV_ERR_TXN_TOO_DEEP);
    /* the same as a log command (Command field 3) */
    uint8_t hdr[12];
    size_t h = 0, v = n;
    hdr[h++] = 3 << 3 | 2;
    do {
        hdr[h++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v);
    memcpy(tmp, hdr, h);
    memcpy(tmp + h, buf, n);
    Craft__Kv__Result *r = kvt_apply(&T, tmp, n + h, NULL);
    cr_assert_str_eq(r->message, KV_ERR_TXN_TOO_DEEP);
    FREE_RES(r);
    /* a shallow one passes; garbage does not */
    Etcdserverpb__TxnRequest *t = kb_txn();
    kb_sub(t, 0, kb_txn());
    size_t len = etcdserverpb__txn_request__get_packed_size(t);
    etcdserverpb__txn_request__pack(t, buf);
    cr_assert_eq(kv_check_txn_wire(buf, len, &err), 0);
    kb_free(t);
    cr_assert_eq(kv_check_txn_wire("\x12\x7f", 2, &err), -1);
    free(buf);
    free(tmp);
}
