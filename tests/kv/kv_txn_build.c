/* kv_txn_build.c: see kv_txn_build.h. */
#include "tests/kv/kv_txn_build.h"

#include <stdlib.h>
#include <string.h>

ProtobufCBinaryData kb_dup(const char *s)
{
    ProtobufCBinaryData b = kvt_bin(s), d = {b.len, NULL};
    if (b.len) {
        d.data = malloc(b.len);
        memcpy(d.data, b.data, b.len);
    }
    return d;
}

Etcdserverpb__TxnRequest *kb_txn(void)
{
    Etcdserverpb__TxnRequest *t = malloc(sizeof *t);
    etcdserverpb__txn_request__init(t);
    return t;
}

#define PUSH(arr, n, x)                                                                            \
    do {                                                                                           \
        (arr) = realloc((arr), ((n) + 1) * sizeof *(arr));                                         \
        (arr)[(n)++] = (x);                                                                        \
    } while (0)

void kb_cmp(Etcdserverpb__TxnRequest *t, const char *key, const char *end, int target,
            int result, int64_t num, const char *val)
{
    Etcdserverpb__Compare *c = malloc(sizeof *c);
    etcdserverpb__compare__init(c);
    c->key = kb_dup(key);
    c->range_end = kb_dup(end);
    c->target = target;
    c->result = result;
    switch (target) {
    case ETCDSERVERPB__COMPARE__COMPARE_TARGET__VERSION:
        c->target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_VERSION;
        c->version = num;
        break;
    case ETCDSERVERPB__COMPARE__COMPARE_TARGET__CREATE:
        c->target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_CREATE_REVISION;
        c->create_revision = num;
        break;
    case ETCDSERVERPB__COMPARE__COMPARE_TARGET__MOD:
        c->target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_MOD_REVISION;
        c->mod_revision = num;
        break;
    case ETCDSERVERPB__COMPARE__COMPARE_TARGET__LEASE:
        c->target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_LEASE;
        c->lease = num;
        break;
    default:
        c->target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_VALUE;
        c->value = kb_dup(val);
        break;
    }
    PUSH(t->compare, t->n_compare, c);
}

static Etcdserverpb__RequestOp *op_new(Etcdserverpb__TxnRequest *t, int branch)
{
    Etcdserverpb__RequestOp *op = malloc(sizeof *op);
    etcdserverpb__request_op__init(op);
    if (branch)
        PUSH(t->failure, t->n_failure, op);
    else
        PUSH(t->success, t->n_success, op);
    return op;
}

Etcdserverpb__PutRequest *kb_put_req(Etcdserverpb__TxnRequest *t, int branch, const char *key,
                                     const char *val)
{
    Etcdserverpb__RequestOp *op = op_new(t, branch);
    Etcdserverpb__PutRequest *p = malloc(sizeof *p);
    etcdserverpb__put_request__init(p);
    p->key = kb_dup(key);
    p->value = kb_dup(val);
    op->request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT;
    op->request_put = p;
    return p;
}

void kb_put(Etcdserverpb__TxnRequest *t, int branch, const char *key, const char *val, bool prev)
{
    kb_put_req(t, branch, key, val)->prev_kv = prev;
}

void kb_del(Etcdserverpb__TxnRequest *t, int branch, const char *key, const char *end, bool prev)
{
    Etcdserverpb__RequestOp *op = op_new(t, branch);
    Etcdserverpb__DeleteRangeRequest *d = malloc(sizeof *d);
    etcdserverpb__delete_range_request__init(d);
    d->key = kb_dup(key);
    d->range_end = kb_dup(end);
    d->prev_kv = prev;
    op->request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_DELETE_RANGE;
    op->request_delete_range = d;
}

Etcdserverpb__RangeRequest *kb_range(Etcdserverpb__TxnRequest *t, int branch, const char *key,
                                     const char *end)
{
    Etcdserverpb__RequestOp *op = op_new(t, branch);
    Etcdserverpb__RangeRequest *r = malloc(sizeof *r);
    etcdserverpb__range_request__init(r);
    r->key = kb_dup(key);
    r->range_end = kb_dup(end);
    op->request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE;
    op->request_range = r;
    return r;
}

void kb_sub(Etcdserverpb__TxnRequest *t, int branch, Etcdserverpb__TxnRequest *sub)
{
    Etcdserverpb__RequestOp *op = op_new(t, branch);
    op->request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_TXN;
    op->request_txn = sub;
}

void kb_empty_op(Etcdserverpb__TxnRequest *t, int branch) { (void)op_new(t, branch); }

void kb_free(Etcdserverpb__TxnRequest *t) { etcdserverpb__txn_request__free_unpacked(t, NULL); }
