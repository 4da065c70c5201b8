/* kv_validate.c: request validation (etcd's v3rpc checks, including the duplicate-key rule for
 * Txn) and read-only detection. See kv_store.h; the log command's codec is kv_cmd.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "services/kvstore/kv_internal.h"

int kv_fail(struct kv_err *err, int code, const char *msg)
{
    if (err) {
        err->code = code;
        snprintf(err->msg, sizeof err->msg, "%s", msg);
    }
    return -1;
}

static int check_range(const Etcdserverpb__RangeRequest *r, bool strict_enums,
                       struct kv_err *err)
{
    if (!r || r->key.len == 0)
        return kv_fail(err, KV_CODE_INVALID_ARGUMENT, KV_ERR_EMPTY_KEY);
    /* etcd does not check these; an unknown sort target makes etcd's sorter nil (a panic in
     * sort.Sort), so craft rejects unknown values instead of guessing. */
    if (strict_enums && ((unsigned)r->sort_order > ETCDSERVERPB__RANGE_REQUEST__SORT_ORDER__DESCEND ||
                         (unsigned)r->sort_target > ETCDSERVERPB__RANGE_REQUEST__SORT_TARGET__VALUE))
        return kv_fail(err, KV_CODE_INVALID_ARGUMENT, KV_ERR_BAD_ENUM);
    return 0;
}

int kv_validate_range(const Etcdserverpb__RangeRequest *r, struct kv_err *err)
{
    return check_range(r, true, err);
}

int kv_validate_put(const Etcdserverpb__PutRequest *r, struct kv_err *err)
{
    if (!r || r->key.len == 0)
        return kv_fail(err, KV_CODE_INVALID_ARGUMENT, KV_ERR_EMPTY_KEY);
    if (r->ignore_value && r->value.len != 0)
        return kv_fail(err, KV_CODE_INVALID_ARGUMENT, KV_ERR_VALUE_PROVIDED);
    if (r->ignore_lease && r->lease != 0)
        return kv_fail(err, KV_CODE_INVALID_ARGUMENT, KV_ERR_LEASE_PROVIDED);
    if (r->key.len > KV_MAX_KEY)
        return kv_fail(err, KV_CODE_INVALID_ARGUMENT, KV_ERR_KEY_TOO_LONG);
    if (r->lease != 0 && r->key.len > KV_MAX_LEASE_KEY)
        return kv_fail(err, KV_CODE_INVALID_ARGUMENT, KV_ERR_LEASE_KEY_TOO_LONG);
    return 0;
}

int kv_validate_delete_range(const Etcdserverpb__DeleteRangeRequest *r, struct kv_err *err)
{
    if (!r || r->key.len == 0)
        return kv_fail(err, KV_CODE_INVALID_ARGUMENT, KV_ERR_EMPTY_KEY);
    return 0;
}

int kv_validate_compaction(const Etcdserverpb__CompactionRequest *r, struct kv_err *err)
{
    if (!r)
        return kv_fail(err, KV_CODE_INVALID_ARGUMENT, KV_ERR_BAD_COMMAND);
    return 0; /* every revision is checked against the store at apply time */
}

int kv_validate_lease_grant(const Etcdserverpb__LeaseGrantRequest *r, struct kv_err *err)
{
    if (!r)
        return kv_fail(err, KV_CODE_INVALID_ARGUMENT, KV_ERR_BAD_COMMAND);
    if (r->id == 0) /* etcd's lessor: lease 0 is "no lease" */
        return kv_fail(err, KV_CODE_NOT_FOUND, KV_ERR_LEASE_NOT_FOUND);
    if (r->ttl > KV_MAX_LEASE_TTL)
        return kv_fail(err, KV_CODE_OUT_OF_RANGE, KV_ERR_LEASE_TTL_TOO_LARGE);
    if (r->ttl < 1) /* the proposer raises it to the minimum: only a bypassing command */
        return kv_fail(err, KV_CODE_INVALID_ARGUMENT, KV_ERR_BAD_COMMAND);
    return 0;
}

int kv_validate_lease_checkpoint(const Etcdserverpb__LeaseCheckpointRequest *r,
                                 struct kv_err *err)
{
    if (!r || r->n_checkpoints > KV_MAX_LEASE_CHECKPOINTS)
        return kv_fail(err, KV_CODE_INVALID_ARGUMENT, KV_ERR_BAD_COMMAND);
    for (size_t i = 0; i < r->n_checkpoints; i++) {
        const Etcdserverpb__LeaseCheckpoint *c = r->checkpoints[i];
        if (!c || c->id == 0 || c->remaining_ttl < 0 || c->remaining_ttl > KV_MAX_LEASE_TTL)
            return kv_fail(err, KV_CODE_INVALID_ARGUMENT, KV_ERR_BAD_COMMAND);
    }
    return 0;
}

/* etcd's checkTxnRequest: op count against the budget (max_ops 0 = unlimited, as apply uses
 * it), compare keys, then each op; a nested txn gets the budget minus this level's ops. */
static int check_txn(const Etcdserverpb__TxnRequest *r, long budget, bool limited, int depth,
                     struct kv_err *err)
{
    if (!r)
        return kv_fail(err, KV_CODE_INVALID_ARGUMENT, KV_ERR_BAD_COMMAND);
    if (depth > KV_MAX_TXN_DEPTH)
        return kv_fail(err, KV_CODE_INVALID_ARGUMENT, KV_ERR_TXN_TOO_DEEP);
    size_t opc = r->n_compare;
    if (opc < r->n_success)
        opc = r->n_success;
    if (opc < r->n_failure)
        opc = r->n_failure;
    if (limited && (long)opc > budget)
        return kv_fail(err, KV_CODE_INVALID_ARGUMENT, KV_ERR_TOO_MANY_OPS);
    for (size_t i = 0; i < r->n_compare; i++) {
        const Etcdserverpb__Compare *c = r->compare[i];
        if (!c || c->key.len == 0)
            return kv_fail(err, KV_CODE_INVALID_ARGUMENT, KV_ERR_EMPTY_KEY);
        /* etcd treats an unknown result as "true" and an unknown target as equal; craft
         * rejects them (docs/kv.md). */
        if ((unsigned)c->result > ETCDSERVERPB__COMPARE__COMPARE_RESULT__NOT_EQUAL ||
            (unsigned)c->target > ETCDSERVERPB__COMPARE__COMPARE_TARGET__LEASE)
            return kv_fail(err, KV_CODE_INVALID_ARGUMENT, KV_ERR_BAD_ENUM);
    }
    for (int branch = 0; branch < 2; branch++) {
        Etcdserverpb__RequestOp **ops = branch ? r->failure : r->success;
        size_t n = branch ? r->n_failure : r->n_success;
        for (size_t i = 0; i < n; i++) {
            const Etcdserverpb__RequestOp *op = ops[i];
            int rc = 0;
            switch (op ? op->request_case : 0) {
            case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE:
                rc = check_range(op->request_range, true, err);
                break;
            case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT:
                rc = kv_validate_put(op->request_put, err);
                break;
            case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_DELETE_RANGE:
                rc = kv_validate_delete_range(op->request_delete_range, err);
                break;
            case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_TXN:
                rc = check_txn(op->request_txn, budget - (long)opc, limited, depth + 1, err);
                break;
            default: /* an empty RequestOp: etcd answers "key not found" */
                rc = kv_fail(err, KV_CODE_INVALID_ARGUMENT, KV_ERR_KEY_NOT_FOUND);
            }
            if (rc)
                return rc;
        }
    }
    return 0;
}

/* ---- etcd's duplicate-key rule (v3rpc checkIntervals) ----
 * Per level: the deletes of this level form a set of intervals; each nested txn's puts (from
 * either branch) may not meet a put already collected or any collected delete, except that
 * the same key put in both branches of one nested txn is fine (only one runs); the nested
 * deletes then join the set; finally this level's puts may not meet any collected put or
 * delete. Deletes never conflict with each other. A delete interval is [key, range_end) with
 * range_end compared as plain bytes, or the single key when range_end is empty; as in etcd,
 * a from-key delete (range_end "\0") therefore conflicts with nothing. Sets are plain arrays:
 * the validated request is bounded by --max-txn-ops and the request size. */
struct kv_bytes {
    const uint8_t *p;
    size_t n;
};
struct kv_keyset {
    struct kv_bytes *v;
    size_t n, cap;
};
struct kv_ival {
    struct kv_bytes b, e; /* e.n == 0: the single key b */
};
struct kv_ivalset {
    struct kv_ival *v;
    size_t n, cap;
};

int kv_bytes_cmp(const void *a, size_t an, const void *b, size_t bn)
{
    size_t n = an < bn ? an : bn;
    int c = n ? memcmp(a, b, n) : 0; /* an empty ProtobufCBinaryData may have NULL data */
    if (c)
        return c;
    return an < bn ? -1 : an > bn;
}

static bool keyset_has(const struct kv_keyset *s, struct kv_bytes k)
{
    for (size_t i = 0; i < s->n; i++)
        if (kv_bytes_cmp(s->v[i].p, s->v[i].n, k.p, k.n) == 0)
            return true;
    return false;
}

static int keyset_add(struct kv_keyset *s, struct kv_bytes k)
{
    if (keyset_has(s, k))
        return 0;
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 8;
        void *v = realloc(s->v, cap * sizeof *s->v);
        if (!v)
            return -1;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = k;
    return 0;
}

static bool ivals_hit(const struct kv_ivalset *s, struct kv_bytes k)
{
    for (size_t i = 0; i < s->n; i++) {
        const struct kv_ival *iv = &s->v[i];
        if (iv->e.n == 0) {
            if (kv_bytes_cmp(iv->b.p, iv->b.n, k.p, k.n) == 0)
                return true;
        } else if (kv_bytes_cmp(iv->b.p, iv->b.n, k.p, k.n) <= 0 &&
                   kv_bytes_cmp(k.p, k.n, iv->e.p, iv->e.n) < 0) {
            return true;
        }
    }
    return false;
}

static int ivals_add(struct kv_ivalset *s, struct kv_ival iv)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 8;
        void *v = realloc(s->v, cap * sizeof *s->v);
        if (!v)
            return -1;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = iv;
    return 0;
}

#define DUP(err) kv_fail(err, KV_CODE_INVALID_ARGUMENT, KV_ERR_DUPLICATE_KEY)
#define NOMEM(err) kv_fail(err, KV_CODE_RESOURCE_EXHAUSTED, "craft: out of memory")

static int check_intervals(Etcdserverpb__RequestOp **reqs, size_t n, struct kv_keyset *puts,
                           struct kv_ivalset *dels, struct kv_err *err)
{
    for (size_t i = 0; i < n; i++) {
        if (reqs[i]->request_case != ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_DELETE_RANGE)
            continue;
        const Etcdserverpb__DeleteRangeRequest *d = reqs[i]->request_delete_range;
        struct kv_ival iv = {{d->key.data, d->key.len}, {d->range_end.data, d->range_end.len}};
        if (ivals_add(dels, iv))
            return NOMEM(err);
    }
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (reqs[i]->request_case != ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_TXN)
            continue;
        const Etcdserverpb__TxnRequest *t = reqs[i]->request_txn;
        struct kv_keyset pthen = {0}, pelse = {0};
        struct kv_ivalset dthen = {0}, delse = {0};
        rc = check_intervals(t->success, t->n_success, &pthen, &dthen, err);
        if (rc == 0)
            rc = check_intervals(t->failure, t->n_failure, &pelse, &delse, err);
        for (size_t j = 0; rc == 0 && j < pthen.n; j++) {
            if (keyset_has(puts, pthen.v[j]) || ivals_hit(dels, pthen.v[j]))
                rc = DUP(err);
            else if (keyset_add(puts, pthen.v[j]))
                rc = NOMEM(err);
        }
        for (size_t j = 0; rc == 0 && j < pelse.n; j++) {
            if (keyset_has(puts, pelse.v[j]) && !keyset_has(&pthen, pelse.v[j]))
                rc = DUP(err);
            else if (ivals_hit(dels, pelse.v[j]))
                rc = DUP(err);
            else if (keyset_add(puts, pelse.v[j]))
                rc = NOMEM(err);
        }
        for (size_t j = 0; rc == 0 && j < dthen.n; j++)
            if (ivals_add(dels, dthen.v[j]))
                rc = NOMEM(err);
        for (size_t j = 0; rc == 0 && j < delse.n; j++)
            if (ivals_add(dels, delse.v[j]))
                rc = NOMEM(err);
        free(pthen.v), free(pelse.v), free(dthen.v), free(delse.v);
    }
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (reqs[i]->request_case != ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT)
            continue;
        const Etcdserverpb__PutRequest *p = reqs[i]->request_put;
        struct kv_bytes k = {p->key.data, p->key.len};
        if (keyset_has(puts, k) || ivals_hit(dels, k))
            rc = DUP(err);
        else if (keyset_add(puts, k))
            rc = NOMEM(err);
    }
    return rc;
}

static int check_duplicates(const Etcdserverpb__TxnRequest *r, struct kv_err *err)
{
    int rc = 0;
    for (int branch = 0; branch < 2 && rc == 0; branch++) {
        struct kv_keyset puts = {0};
        struct kv_ivalset dels = {0};
        rc = branch ? check_intervals(r->failure, r->n_failure, &puts, &dels, err)
                    : check_intervals(r->success, r->n_success, &puts, &dels, err);
        free(puts.v);
        free(dels.v);
    }
    return rc;
}

int kv_validate_txn_limits(const Etcdserverpb__TxnRequest *r, unsigned max_txn_ops, bool limited,
                           struct kv_err *err)
{
    if (check_txn(r, max_txn_ops ? (long)max_txn_ops : KV_DEFAULT_MAX_TXN_OPS, limited, 0, err))
        return -1;
    return check_duplicates(r, err);
}

int kv_validate_txn(const Etcdserverpb__TxnRequest *r, unsigned max_txn_ops, struct kv_err *err)
{
    return kv_validate_txn_limits(r, max_txn_ops, true, err);
}

bool kv_txn_is_readonly(const Etcdserverpb__TxnRequest *r)
{
    for (int branch = 0; branch < 2; branch++) {
        Etcdserverpb__RequestOp **ops = branch ? r->failure : r->success;
        size_t n = branch ? r->n_failure : r->n_success;
        for (size_t i = 0; i < n; i++) {
            switch (ops[i] ? ops[i]->request_case : 0) {
            case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT:
            case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_DELETE_RANGE:
                return false;
            case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_TXN:
                if (ops[i]->request_txn && !kv_txn_is_readonly(ops[i]->request_txn))
                    return false;
                break;
            default:
                break;
            }
        }
    }
    return true;
}
