/* kv_model_test.c: randomized operation sequences, each op compared with a small reference
 * model (plain sorted arrays, the etcd rules written out the obvious way): every response
 * (kvs, count, more, deleted, prev_kvs, succeeded, revisions, errors) and the final state.
 * History: the model keeps its state at every revision and a log of every write, so Ranges
 * at old revisions (in and out of txns) and the history's events (kv_store_events from a
 * random revision, with and without prev_kv, with a bound; Watch's source) are checked too,
 * across compactions, whose physical removal is waited for (kv_store_compact_wait), and across
 * snapshots restored into a new store.
 * Writes are applied in batches of 1-6 entries, and the store is reopened now and then.
 * Leases (kv_store.h "Leases"): the model has a lease table (ID -> TTL, checkpointed remaining)
 * and each key's lease. Ops grant (IDs 1..4 and -2; sometimes 0, an existing one or a TTL too
 * large), revoke (existing or not; the attached keys deleted in key order at one revision, or
 * no revision when there are none), checkpoint (unknown IDs skipped; sometimes an invalid
 * remaining TTL that refuses the entry), and Puts alone or in Txns carry a lease (existing, or
 * unknown: NOT_FOUND before anything else, in a Txn for the executed path), ignore_lease (which
 * keeps the key's lease) or lease 0 (which detaches); a DeleteRange detaches. Compares on LEASE
 * see the keys' leases. KeyValue.lease is in every kv compared (kvs, prev_kvs, events, prev),
 * and after every batch, reopen and restore the table from kv_store_leases and each lease's
 * TTLs and keys from kv_store_lease_get must be the model's.
 * Reproducible: the failing seed and op number are in the assertion message; set KV_MODEL_SEED
 * to run only that seed.
 * Teeth: each of these bugs, injected into kv_store.c by hand, fails the test at the first seed
 * (checked with this file as committed; "alone" = with the lease-table checks turned off, and
 * no snapshots for (2), to see that the responses and events catch it too):
 * (1) del_key not detaching a deleted key from its lease: seed 1 op 127, lease 4 still lists
 *     "e" after a batch; alone, seed 2 op 169: a revoke deleted "b" (put again without a lease)
 *     through the stale attachment, so a Put's prev_kv is missing.
 * (2) revoke not deleting the attached keys: seed 1 op 73, the snapshot holds a key whose lease
 *     is gone and restore refuses it; alone, seed 1 op 86: the revoke's DELETE is not among the
 *     events.
 * (3) put_exec ignoring ignore_lease (always p->lease): seed 1 op 190, a Put's prev_kv shows the
 *     key detached (l0, want l4).
 * (4) kv_from_hist not rebuilding "lkeys": seed 2 op 43, after a snapshot restore leases 3 and
 *     4 list no keys (want "ca", "bb"); alone, seed 2 op 63: a revoke on the restored store
 *     deletes nothing (rev10, want rev11). */
#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "services/kvstore/kv_cmd.h"
#include "tests/kv/kv_txn_build.h"

#define SEQS 200
#define OPS 200

/* ---- output format shared by the model and the store's responses ---- */

struct out {
    char b[16384];
    size_t n;
};

static void outf(struct out *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (o->n < sizeof o->b)
        o->n += (size_t)vsnprintf(o->b + o->n, sizeof o->b - o->n, fmt, ap);
    va_end(ap);
}

static void out_kv(struct out *o, const char *k, size_t kn, const char *v, size_t vn, int64_t c,
                   int64_t m, int64_t ver, int64_t lease)
{
    outf(o, "{%.*s=%.*s c%lld m%lld v%lld l%lld}", (int)kn, k, (int)vn, v ? v : "", (long long)c,
         (long long)m, (long long)ver, (long long)lease);
}

static void out_pkv(struct out *o, const Mvccpb__KeyValue *kv)
{
    out_kv(o, (const char *)kv->key.data, kv->key.len, (const char *)kv->value.data,
           kv->value.len, kv->create_revision, kv->mod_revision, kv->version, kv->lease);
}

static void out_range(struct out *o, const Etcdserverpb__RangeResponse *r)
{
    outf(o, "R(rev%lld count%lld more%d [", (long long)r->header->revision, (long long)r->count,
         (int)r->more);
    for (size_t i = 0; i < r->n_kvs; i++)
        out_pkv(o, r->kvs[i]);
    outf(o, "])");
}

static void out_txn(struct out *o, const Etcdserverpb__TxnResponse *t)
{
    outf(o, "T(rev%lld ok%d [", (long long)t->header->revision, (int)t->succeeded);
    for (size_t i = 0; i < t->n_responses; i++) {
        const Etcdserverpb__ResponseOp *r = t->responses[i];
        switch (r->response_case) {
        case ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_RANGE:
            out_range(o, r->response_range);
            break;
        case ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_PUT:
            outf(o, "P(rev%lld ", (long long)r->response_put->header->revision);
            if (r->response_put->prev_kv)
                out_pkv(o, r->response_put->prev_kv);
            outf(o, ")");
            break;
        case ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_DELETE_RANGE:
            outf(o, "D(rev%lld n%lld [", (long long)r->response_delete_range->header->revision,
                 (long long)r->response_delete_range->deleted);
            for (size_t j = 0; j < r->response_delete_range->n_prev_kvs; j++)
                out_pkv(o, r->response_delete_range->prev_kvs[j]);
            outf(o, "])");
            break;
        case ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_TXN:
            out_txn(o, r->response_txn);
            break;
        default:
            outf(o, "?");
        }
    }
    outf(o, "])");
}

static void out_result(struct out *o, const Craft__Kv__Result *r)
{
    if (r->code) {
        outf(o, "E(%u %s)@%lld", r->code, r->message, (long long)r->revision);
        return;
    }
    switch (r->resp_case) {
    case CRAFT__KV__RESULT__RESP_PUT:
        outf(o, "P(rev%lld ", (long long)r->put->header->revision);
        if (r->put->prev_kv)
            out_pkv(o, r->put->prev_kv);
        outf(o, ")");
        break;
    case CRAFT__KV__RESULT__RESP_DELETE_RANGE:
        outf(o, "D(rev%lld n%lld [", (long long)r->delete_range->header->revision,
             (long long)r->delete_range->deleted);
        for (size_t j = 0; j < r->delete_range->n_prev_kvs; j++)
            out_pkv(o, r->delete_range->prev_kvs[j]);
        outf(o, "])");
        break;
    case CRAFT__KV__RESULT__RESP_TXN:
        out_txn(o, r->txn);
        break;
    case CRAFT__KV__RESULT__RESP_COMPACTION:
        outf(o, "C(rev%lld)", (long long)r->compaction->header->revision);
        break;
    case CRAFT__KV__RESULT__RESP_LEASE_GRANT:
        outf(o, "LG(rev%lld id%lld ttl%lld%s)", (long long)r->lease_grant->header->revision,
             (long long)r->lease_grant->id, (long long)r->lease_grant->ttl,
             r->lease_grant->error ? r->lease_grant->error : "");
        break;
    case CRAFT__KV__RESULT__RESP_LEASE_REVOKE:
        outf(o, "LR(rev%lld)", (long long)r->lease_revoke->header->revision);
        break;
    case CRAFT__KV__RESULT__RESP_LEASE_CHECKPOINT:
        outf(o, "LC(rev%lld)", (long long)r->lease_checkpoint->header->revision);
        break;
    default:
        outf(o, "?");
    }
    outf(o, "@%lld", (long long)r->revision);
}

/* ---- the reference model ---- */

#define MAXK 32
struct mkv {
    char key[16], val[16];
    int64_t create, mod, ver, lease;
};
/* A lease: its keys are those whose mkv.lease is its id. */
struct mlease {
    int64_t id, ttl, rem;
};
#define MAXL 8
struct model {
    struct mkv kv[MAXK]; /* sorted by key */
    int n;
    int64_t rev, compact;
    struct mlease ls[MAXL]; /* in grant order */
    int nl;
};

/* The lease IDs the ops use: a small space, so that grants collide and puts find them; -2 is
 * last in the store's (unsigned) order. */
static const int64_t LIDS[] = {1, 2, 3, 4, -2};
#define NLIDS 5

static struct mlease *m_lease(struct model *m, int64_t id)
{
    for (int i = 0; i < m->nl; i++)
        if (m->ls[i].id == id)
            return &m->ls[i];
    return NULL;
}

/* The model's history: every write in order (what kv_store_events must give back), and the
 * state at each revision. */
struct mev {
    int type; /* KV_EVENT_PUT / KV_EVENT_DELETE */
    struct mkv kv;
};
#define MAXEV 4096
static struct mev EV[MAXEV];
static int NEV;
static struct model STATES[OPS + 2];

static void ev_add(int type, const struct mkv *kv)
{
    cr_assert_lt(NEV, MAXEV);
    EV[NEV].type = type;
    EV[NEV].kv = *kv;
    NEV++;
}

static const char *KEYS[] = {"a", "aa", "ab", "b", "ba", "bb", "c", "ca", "d", "e"};
#define NKEYS 10

/* A span as etcd reads key/range_end: end NULL = the key; KVT_FROM = every key >= key. */
static bool in_span(const char *k, const char *key, const char *end)
{
    if (!end)
        return strcmp(k, key) == 0;
    if (strcmp(end, KVT_FROM) == 0)
        return strcmp(k, key) >= 0;
    return strcmp(k, key) >= 0 && strcmp(k, end) < 0;
}

static const char *bstr(ProtobufCBinaryData b, char *buf)
{
    if (b.len == 0)
        return NULL;
    if (b.len == 1 && b.data[0] == 0)
        return KVT_FROM;
    memcpy(buf, b.data, b.len);
    buf[b.len] = 0;
    return buf;
}

static struct mkv *m_get(struct model *m, const char *k)
{
    for (int i = 0; i < m->n; i++)
        if (strcmp(m->kv[i].key, k) == 0)
            return &m->kv[i];
    return NULL;
}

static void m_put(struct model *m, const char *k, const char *v, int64_t lease, int64_t rev)
{
    struct mkv *e = m_get(m, k);
    if (!e) {
        int i = m->n++;
        while (i > 0 && strcmp(m->kv[i - 1].key, k) > 0) {
            m->kv[i] = m->kv[i - 1];
            i--;
        }
        e = &m->kv[i];
        memset(e, 0, sizeof *e);
        snprintf(e->key, sizeof e->key, "%s", k);
        e->create = rev;
    }
    snprintf(e->val, sizeof e->val, "%s", v);
    e->lease = lease;
    e->mod = rev;
    e->ver++;
    ev_add(KV_EVENT_PUT, e);
}

static void out_m(struct out *o, const struct mkv *e, bool with_value)
{
    out_kv(o, e->key, strlen(e->key), with_value ? e->val : "", with_value ? strlen(e->val) : 0,
           e->create, e->mod, e->ver, e->lease);
}

static const Etcdserverpb__RangeRequest *g_sort_req;
static int m_sort_cmp(const void *pa, const void *pb)
{
    const struct mkv *a = *(const struct mkv *const *)pa, *b = *(const struct mkv *const *)pb;
    int c = 0;
    switch ((int)g_sort_req->sort_target) {
    case 0: c = strcmp(a->key, b->key); break;
    case 1: c = (a->ver > b->ver) - (a->ver < b->ver); break;
    case 2: c = (a->create > b->create) - (a->create < b->create); break;
    case 3: c = (a->mod > b->mod) - (a->mod < b->mod); break;
    case 4: c = strcmp(a->val, b->val); break;
    }
    int order = g_sort_req->sort_order;
    if (order == 0 && g_sort_req->sort_target != 0)
        order = 1;
    if (order == 2)
        c = -c;
    return c ? c : strcmp(a->key, b->key); /* ties in key order */
}

static void m_range(struct model *m, const Etcdserverpb__RangeRequest *r, int64_t hdr_rev,
                    struct out *o)
{
    char kb[16], eb[16];
    const char *key = bstr(r->key, kb), *end = bstr(r->range_end, eb);
    struct mkv *sel[MAXK];
    int n = 0, count = 0;
    for (int i = 0; i < m->n; i++) {
        struct mkv *e = &m->kv[i];
        if (!in_span(e->key, key, end))
            continue;
        count++;
        if ((r->min_mod_revision && e->mod < r->min_mod_revision) ||
            (r->max_mod_revision && e->mod > r->max_mod_revision) ||
            (r->min_create_revision && e->create < r->min_create_revision) ||
            (r->max_create_revision && e->create > r->max_create_revision))
            continue;
        sel[n++] = e;
    }
    if (r->count_only)
        n = 0;
    g_sort_req = r;
    qsort(sel, (size_t)n, sizeof sel[0], m_sort_cmp);
    bool more = false;
    if (r->limit > 0 && n > r->limit) {
        n = (int)r->limit;
        more = true;
    }
    outf(o, "R(rev%lld count%d more%d [", (long long)hdr_rev, count, (int)more);
    for (int i = 0; i < n; i++)
        out_m(o, sel[i], !r->keys_only);
    outf(o, "])");
}

static int m_delete(struct model *m, const char *key, const char *end, bool prev, struct out *o,
                    int64_t rev)
{
    int j = 0, deleted = 0;
    for (int i = 0; i < m->n; i++) {
        if (in_span(m->kv[i].key, key, end)) {
            if (prev && o)
                out_m(o, &m->kv[i], true);
            struct mkv tomb = {.mod = rev};
            snprintf(tomb.key, sizeof tomb.key, "%s", m->kv[i].key);
            ev_add(KV_EVENT_DELETE, &tomb);
            deleted++;
        } else {
            m->kv[j++] = m->kv[i];
        }
    }
    m->n = j;
    return deleted;
}

/* etcd's duplicate-key rule over string sets (see kv_validate.c for the rule in words). */
struct sset {
    char k[64][16];
    int n;
};
struct dset {
    char b[64][16], e[64][16];
    bool point[64];
    int n;
};
static bool ss_has(const struct sset *s, const char *k)
{
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->k[i], k))
            return true;
    return false;
}
static void ss_add(struct sset *s, const char *k)
{
    if (!ss_has(s, k))
        snprintf(s->k[s->n++], 16, "%s", k);
}
static bool ds_hit(const struct dset *d, const char *k)
{
    for (int i = 0; i < d->n; i++) {
        if (d->point[i] ? !strcmp(d->b[i], k)
                        : (strcmp(d->b[i], k) <= 0 &&
                           /* the "\0" end compares as the byte string "\0": below every key */
                           (strcmp(d->e[i], KVT_FROM) != 0 && strcmp(k, d->e[i]) < 0)))
            return true;
    }
    return false;
}
static bool m_dups(Etcdserverpb__RequestOp **ops, size_t n, struct sset *puts, struct dset *dels)
{
    char kb[16], eb[16];
    for (size_t i = 0; i < n; i++)
        if (ops[i]->request_case == ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_DELETE_RANGE) {
            const char *k = bstr(ops[i]->request_delete_range->key, kb);
            const char *e = bstr(ops[i]->request_delete_range->range_end, eb);
            int j = dels->n++;
            snprintf(dels->b[j], 16, "%s", k);
            snprintf(dels->e[j], 16, "%s", e ? e : "");
            dels->point[j] = e == NULL;
        }
    for (size_t i = 0; i < n; i++) {
        if (ops[i]->request_case != ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_TXN)
            continue;
        Etcdserverpb__TxnRequest *t = ops[i]->request_txn;
        struct sset pt = {0}, pe = {0};
        struct dset dt = {0}, de = {0};
        if (m_dups(t->success, t->n_success, &pt, &dt) || m_dups(t->failure, t->n_failure, &pe, &de))
            return true;
        for (int j = 0; j < pt.n; j++) {
            if (ss_has(puts, pt.k[j]) || ds_hit(dels, pt.k[j]))
                return true;
            ss_add(puts, pt.k[j]);
        }
        for (int j = 0; j < pe.n; j++) {
            if ((ss_has(puts, pe.k[j]) && !ss_has(&pt, pe.k[j])) || ds_hit(dels, pe.k[j]))
                return true;
            ss_add(puts, pe.k[j]);
        }
        for (int j = 0; j < dt.n; j++)
            dels->point[dels->n] = dt.point[j], memcpy(dels->b[dels->n], dt.b[j], 16),
            memcpy(dels->e[dels->n++], dt.e[j], 16);
        for (int j = 0; j < de.n; j++)
            dels->point[dels->n] = de.point[j], memcpy(dels->b[dels->n], de.b[j], 16),
            memcpy(dels->e[dels->n++], de.e[j], 16);
    }
    for (size_t i = 0; i < n; i++) {
        if (ops[i]->request_case != ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT)
            continue;
        const char *k = bstr(ops[i]->request_put->key, kb);
        if (ss_has(puts, k) || ds_hit(dels, k))
            return true;
        ss_add(puts, k);
    }
    return false;
}

static bool m_compare(struct model *pre, const Etcdserverpb__Compare *c)
{
    char kb[16], eb[16], vb[16];
    const char *key = bstr(c->key, kb), *end = bstr(c->range_end, eb);
    bool any = false;
    struct mkv zero = {{0}, {0}, 0, 0, 0, 0};
    for (int i = 0; i <= pre->n; i++) {
        struct mkv *e;
        if (i < pre->n) {
            e = &pre->kv[i];
            if (!in_span(e->key, key, end))
                continue;
            any = true;
        } else {
            if (any)
                break;
            if (c->target == ETCDSERVERPB__COMPARE__COMPARE_TARGET__VALUE)
                return false;
            e = &zero;
        }
        int res;
        switch (c->target) {
        case 0: res = (e->ver > c->version) - (e->ver < c->version); break;
        case 1: res = (e->create > c->create_revision) - (e->create < c->create_revision); break;
        case 2: res = (e->mod > c->mod_revision) - (e->mod < c->mod_revision); break;
        case 4: res = (e->lease > c->lease) - (e->lease < c->lease); break;
        default: {
            const char *v = bstr(c->value, vb);
            res = strcmp(e->val, v ? v : "");
            res = (res > 0) - (res < 0);
        }
        }
        bool ok = c->result == 0 ? res == 0 : c->result == 1 ? res > 0 : c->result == 2 ? res < 0 : res != 0;
        if (!ok)
            return false;
    }
    return true;
}

struct mtx {
    struct model *live, pre;
    bool path[64];
    int np, pos;
    bool changed, failed;
    int64_t rev0;
};

static void m_path(struct mtx *x, const Etcdserverpb__TxnRequest *t)
{
    bool ok = true;
    for (size_t i = 0; i < t->n_compare && ok; i++)
        ok = m_compare(&x->pre, t->compare[i]);
    x->path[x->np++] = ok;
    Etcdserverpb__RequestOp **ops = ok ? t->success : t->failure;
    size_t n = ok ? t->n_success : t->n_failure;
    for (size_t i = 0; i < n; i++)
        if (ops[i]->request_case == ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_TXN)
            m_path(x, ops[i]->request_txn);
}

/* pass 0: put checks; 1: range revisions. Returns an error string or NULL. */
static const char *m_check(struct mtx *x, const Etcdserverpb__TxnRequest *t, int pass)
{
    bool ok = x->path[x->pos++];
    Etcdserverpb__RequestOp **ops = ok ? t->success : t->failure;
    size_t n = ok ? t->n_success : t->n_failure;
    char kb[16];
    for (size_t i = 0; i < n; i++) {
        const char *e = NULL;
        if (ops[i]->request_case == ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_TXN)
            e = m_check(x, ops[i]->request_txn, pass);
        else if (pass == 0 &&
                 ops[i]->request_case == ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT) {
            /* etcd's checkRequestPut: the key for ignore_*, then the lease */
            const Etcdserverpb__PutRequest *p = ops[i]->request_put;
            if ((p->ignore_value || p->ignore_lease) && !m_get(&x->pre, bstr(p->key, kb)))
                e = "3 " KV_ERR_KEY_NOT_FOUND;
            else if (p->lease && !m_lease(&x->pre, p->lease))
                e = "5 " KV_ERR_LEASE_NOT_FOUND;
        }
        else if (pass == 1 && ops[i]->request_case == ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE) {
            int64_t rv = ops[i]->request_range->revision;
            if (rv > x->rev0)
                e = "11 " KV_ERR_FUTURE_REV;
            else if (rv < 0 || (rv > 0 && rv < x->pre.compact))
                e = "11 " KV_ERR_COMPACTED;
        }
        if (e)
            return e;
    }
    return NULL;
}

static void m_exec(struct mtx *x, const Etcdserverpb__TxnRequest *t, struct out *o, bool top)
{
    bool ok = x->path[x->pos++];
    Etcdserverpb__RequestOp **ops = ok ? t->success : t->failure;
    size_t n = ok ? t->n_success : t->n_failure;
    struct out body = {.n = 0};
    char kb[16], eb[16], vb[16];
    for (size_t i = 0; i < n; i++) {
        const Etcdserverpb__RequestOp *op = ops[i];
        int64_t cur = x->rev0 + x->changed;
        switch (op->request_case) {
        case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE:
        {
            /* at a revision: as before the txn wrote, or from the history */
            int64_t rv = op->request_range->revision;
            m_range(rv == 0 ? x->live : rv >= x->rev0 ? &x->pre : &STATES[rv], op->request_range,
                    cur, &body);
        }
            break;
        case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT: {
            const Etcdserverpb__PutRequest *p = op->request_put;
            const char *k = bstr(p->key, kb);
            struct mkv *e = m_get(x->live, k);
            if ((p->ignore_value || p->ignore_lease) && !e) { /* gone since the checks: the
                                                               * whole txn fails */
                x->failed = true;
                break;
            }
            outf(&body, "P(rev%lld ", (long long)(x->rev0 + 1));
            if (p->prev_kv && e)
                out_m(&body, e, true);
            outf(&body, ")");
            const char *v = p->ignore_value ? (e ? e->val : "") : bstr(p->value, vb);
            char vcopy[16];
            snprintf(vcopy, sizeof vcopy, "%s", v ? v : "");
            m_put(x->live, k, vcopy, p->ignore_lease ? e->lease : p->lease, x->rev0 + 1);
            x->changed = true;
            break;
        }
        case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_DELETE_RANGE: {
            const Etcdserverpb__DeleteRangeRequest *d = op->request_delete_range;
            struct out prev = {.n = 0};
            int nd = m_delete(x->live, bstr(d->key, kb), bstr(d->range_end, eb), d->prev_kv, &prev,
                              x->rev0 + 1);
            if (nd)
                x->changed = true;
            outf(&body, "D(rev%lld n%d [%s])", (long long)(x->rev0 + x->changed), nd, prev.b);
            break;
        }
        case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_TXN:
            m_exec(x, op->request_txn, &body, false);
            break;
        default:
            break;
        }
    }
    outf(o, "T(rev%lld ok%d [%s])", top ? (long long)(x->rev0 + x->changed) : 0LL, (int)ok,
         body.n ? body.b : "");
}

/* Applies one command to the model; writes the expected result string. */
static void m_apply(struct model *m, const Craft__Kv__Command *c, struct out *o)
{
    char kb[16], eb[16], vb[16];
    switch (c->op_case) {
    case CRAFT__KV__COMMAND__OP_PUT: {
        const Etcdserverpb__PutRequest *p = c->put;
        const char *k = bstr(p->key, kb);
        struct mkv *e = m_get(m, k);
        if (p->ignore_value && p->value.len) {
            outf(o, "E(3 %s)@%lld", KV_ERR_VALUE_PROVIDED, (long long)m->rev);
            return;
        }
        if (p->ignore_lease && p->lease) {
            outf(o, "E(3 %s)@%lld", KV_ERR_LEASE_PROVIDED, (long long)m->rev);
            return;
        }
        if (p->lease && !m_lease(m, p->lease)) { /* etcd checks the lease first */
            outf(o, "E(5 %s)@%lld", KV_ERR_LEASE_NOT_FOUND, (long long)m->rev);
            return;
        }
        if ((p->ignore_value || p->ignore_lease) && !e) {
            outf(o, "E(3 %s)@%lld", KV_ERR_KEY_NOT_FOUND, (long long)m->rev);
            return;
        }
        outf(o, "P(rev%lld ", (long long)(m->rev + 1));
        if (p->prev_kv && e)
            out_m(o, e, true);
        outf(o, ")");
        const char *v = p->ignore_value ? e->val : bstr(p->value, vb);
        char vcopy[16];
        snprintf(vcopy, sizeof vcopy, "%s", v ? v : "");
        m_put(m, k, vcopy, p->ignore_lease ? e->lease : p->lease, ++m->rev);
        outf(o, "@%lld", (long long)m->rev);
        return;
    }
    case CRAFT__KV__COMMAND__OP_DELETE_RANGE: {
        const Etcdserverpb__DeleteRangeRequest *d = c->delete_range;
        struct out prev = {.n = 0};
        int n = m_delete(m, bstr(d->key, kb), bstr(d->range_end, eb), d->prev_kv, &prev,
                         m->rev + 1);
        if (n)
            m->rev++;
        outf(o, "D(rev%lld n%d [%s])@%lld", (long long)m->rev, n, prev.b, (long long)m->rev);
        return;
    }
    case CRAFT__KV__COMMAND__OP_COMPACTION: {
        int64_t r = c->compaction->revision;
        if (r <= m->compact)
            outf(o, "E(11 %s)@%lld", KV_ERR_COMPACTED, (long long)m->rev);
        else if (r > m->rev)
            outf(o, "E(11 %s)@%lld", KV_ERR_FUTURE_REV, (long long)m->rev);
        else {
            m->compact = r;
            outf(o, "C(rev%lld)@%lld", (long long)m->rev, (long long)m->rev);
        }
        return;
    }
    case CRAFT__KV__COMMAND__OP_TXN: {
        const Etcdserverpb__TxnRequest *t = c->txn;
        struct sset ps = {0};
        struct dset ds = {0};
        struct sset ps2 = {0};
        struct dset ds2 = {0};
        if (m_dups(t->success, t->n_success, &ps, &ds) || m_dups(t->failure, t->n_failure, &ps2, &ds2)) {
            outf(o, "E(3 %s)@%lld", KV_ERR_DUPLICATE_KEY, (long long)m->rev);
            return;
        }
        static struct mtx x;
        memset(&x, 0, sizeof x);
        int nev0 = NEV;
        x.live = m;
        x.pre = *m;
        x.rev0 = m->rev;
        m_path(&x, t);
        const char *err = NULL;
        if (!kv_txn_is_readonly(t)) {
            x.pos = 0;
            err = m_check(&x, t, 0);
        }
        if (!err) {
            x.pos = 0;
            err = m_check(&x, t, 1);
        }
        if (err) {
            outf(o, "E(%s)@%lld", err, (long long)m->rev);
            return;
        }
        x.pos = 0;
        struct out body = {.n = 0};
        m_exec(&x, t, &body, true);
        if (x.failed) {
            *m = x.pre;
            NEV = nev0;
            outf(o, "E(3 %s)@%lld", KV_ERR_KEY_NOT_FOUND, (long long)m->rev);
            return;
        }
        outf(o, "%s", body.b);
        if (x.changed)
            m->rev++;
        outf(o, "@%lld", (long long)m->rev);
        return;
    }
    case CRAFT__KV__COMMAND__OP_LEASE_GRANT: {
        const Etcdserverpb__LeaseGrantRequest *g = c->lease_grant;
        if (g->id == 0)
            outf(o, "E(5 %s)@%lld", KV_ERR_LEASE_NOT_FOUND, (long long)m->rev);
        else if (g->ttl > KV_MAX_LEASE_TTL)
            outf(o, "E(11 %s)@%lld", KV_ERR_LEASE_TTL_TOO_LARGE, (long long)m->rev);
        else if (m_lease(m, g->id))
            outf(o, "E(9 %s)@%lld", KV_ERR_LEASE_EXISTS, (long long)m->rev);
        else {
            cr_assert_lt(m->nl, MAXL);
            m->ls[m->nl++] = (struct mlease){g->id, g->ttl, 0};
            outf(o, "LG(rev%lld id%lld ttl%lld)@%lld", (long long)m->rev, (long long)g->id,
                 (long long)g->ttl, (long long)m->rev);
        }
        return;
    }
    case CRAFT__KV__COMMAND__OP_LEASE_REVOKE: {
        /* etcd's lessor: every attached key deleted in key order at one new revision (none:
         * the revision stays), then the lease */
        int64_t id = c->lease_revoke->id;
        struct mlease *l = m_lease(m, id);
        if (!l) {
            outf(o, "E(5 %s)@%lld", KV_ERR_LEASE_NOT_FOUND, (long long)m->rev);
            return;
        }
        int j = 0, n = 0;
        for (int i = 0; i < m->n; i++) {
            if (m->kv[i].lease == id) {
                struct mkv tomb = {.mod = m->rev + 1};
                snprintf(tomb.key, sizeof tomb.key, "%s", m->kv[i].key);
                ev_add(KV_EVENT_DELETE, &tomb);
                n++;
            } else {
                m->kv[j++] = m->kv[i];
            }
        }
        m->n = j;
        if (n)
            m->rev++;
        *l = m->ls[--m->nl];
        outf(o, "LR(rev%lld)@%lld", (long long)m->rev, (long long)m->rev);
        return;
    }
    case CRAFT__KV__COMMAND__OP_LEASE_CHECKPOINT: {
        const Etcdserverpb__LeaseCheckpointRequest *r = c->lease_checkpoint;
        for (size_t i = 0; i < r->n_checkpoints; i++)
            if (r->checkpoints[i]->remaining_ttl < 0) { /* refused whole, before any change */
                outf(o, "E(3 %s)@%lld", KV_ERR_BAD_COMMAND, (long long)m->rev);
                return;
            }
        for (size_t i = 0; i < r->n_checkpoints; i++) {
            struct mlease *l = m_lease(m, r->checkpoints[i]->id);
            if (l) /* unknown IDs are skipped */
                l->rem = r->checkpoints[i]->remaining_ttl;
        }
        outf(o, "LC(rev%lld)@%lld", (long long)m->rev, (long long)m->rev);
        return;
    }
    default:
        return;
    }
}

/* ---- random generation ---- */

static uint64_t rng;
static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}
static int rn(int n) { return (int)(rnd() % (uint64_t)n); }
static const char *rkey(void) { return KEYS[rn(NKEYS)]; }
static const char *rend(void)
{
    int x = rn(10);
    return x < 4 ? NULL : x < 6 ? KVT_FROM : rkey();
}
static const char *rval(void)
{
    static const char *V[] = {"", "x", "y", "z", "xy", "zz"};
    return V[rn(6)];
}
static int64_t rrev(struct model *m)
{
    int x = rn(10);
    return x < 4 ? 0 : x == 4 ? m->rev : x == 5 ? m->rev + 1 : x == 6 ? m->rev - 1 : x == 7 ? -1
         : x == 8 ? m->compact - 1 + rn((int)(m->rev - m->compact) + 2) : m->compact;
}

/* A lease ID from the small space (granted or not). */
static int64_t rid(void) { return LIDS[rn(NLIDS)]; }
/* A Put's lease: none (or 0 when none exists), one that exists, or 1 in 20 any ID (most
 * likely unknown). */
static int64_t rlease(const struct model *m)
{
    int x = rn(20);
    return x < 8 || (x < 19 && !m->nl) ? 0 : x < 19 ? m->ls[rn(m->nl)].id : rid();
}
/* A Compare's number: for LEASE, 0 or an ID of the space (-2 is below every other); else a
 * revision or version. */
static int64_t rcmpnum(const struct model *m, int target)
{
    if (target == ETCDSERVERPB__COMPARE__COMPARE_TARGET__LEASE)
        return rn(6) ? rid() : 0;
    return rn((int)m->rev + 2);
}

static void rand_range(Etcdserverpb__RangeRequest *r, struct model *m)
{
    r->limit = rn(3) ? 0 : rn(4);
    r->sort_order = rn(3) ? 0 : rn(3);
    r->sort_target = rn(3) ? 0 : rn(5);
    r->keys_only = rn(5) == 0;
    r->count_only = rn(8) == 0;
    if (rn(5) == 0)
        r->min_mod_revision = rn((int)m->rev + 2);
    if (rn(5) == 0)
        r->max_mod_revision = rn((int)m->rev + 2);
    if (rn(6) == 0)
        r->min_create_revision = rn((int)m->rev + 2);
    if (rn(6) == 0)
        r->max_create_revision = rn((int)m->rev + 2);
}

static void rand_ops(Etcdserverpb__TxnRequest *t, int branch, struct model *m, int depth)
{
    int n = rn(4);
    for (int i = 0; i < n; i++) {
        int x = rn(10);
        if (x < 4) {
            Etcdserverpb__PutRequest *p = kb_put_req(t, branch, rkey(), rval());
            p->prev_kv = rn(2);
            if (rn(6) == 0)
                p->ignore_lease = 1; /* with lease 0: a lease with it fails validation */
            else
                p->lease = rlease(m);
            if (rn(8) == 0) {
                free(p->value.data);
                p->value = (ProtobufCBinaryData){0, NULL};
                p->ignore_value = 1;
            }
        } else if (x < 6) {
            kb_del(t, branch, rkey(), rend(), rn(2));
        } else if (x < 9 || depth >= 2) {
            Etcdserverpb__RangeRequest *r = kb_range(t, branch, rkey(), rend());
            rand_range(r, m);
            r->revision = rn(4) ? 0 : rrev(m);
        } else {
            Etcdserverpb__TxnRequest *s = kb_txn();
            int nc = rn(3);
            for (int j = 0; j < nc; j++) {
                int tg = rn(5);
                kb_cmp(s, rkey(), rn(4) ? NULL : rend(), tg, rn(4), rcmpnum(m, tg), rval());
            }
            rand_ops(s, 0, m, depth + 1);
            rand_ops(s, 1, m, depth + 1);
            kb_sub(t, branch, s);
        }
    }
}

static Etcdserverpb__TxnRequest *rand_txn(struct model *m)
{
    Etcdserverpb__TxnRequest *t = kb_txn();
    int nc = rn(3);
    for (int j = 0; j < nc; j++) {
        int tg = rn(5);
        int64_t num = rcmpnum(m, tg);
        kb_cmp(t, rkey(), rn(4) ? NULL : rend(), tg, rn(4), num, rval());
    }
    rand_ops(t, 0, m, 0);
    rand_ops(t, 1, m, 0);
    return t;
}

/* ---- the run ---- */

struct evgot {
    struct out o;
    size_t n;
};

static int ev_cb(void *arg, const struct kv_event *ev)
{
    struct evgot *g = arg;
    outf(&g->o, "%s(", ev->type == KV_EVENT_PUT ? "PUT" : "DEL");
    out_kv(&g->o, (const char *)ev->kv.key, ev->kv.klen, (const char *)ev->kv.val, ev->kv.vlen,
           ev->kv.create, ev->kv.mod, ev->kv.version, ev->kv.lease);
    if (ev->has_prev)
        out_kv(&g->o, (const char *)ev->prev.key, ev->prev.klen, (const char *)ev->prev.val,
               ev->prev.vlen, ev->prev.create, ev->prev.mod, ev->prev.version, ev->prev.lease);
    outf(&g->o, ")");
    g->n++;
    return 0;
}

/* kv_store_events from a random revision (sometimes below the compacted one, sometimes in the
 * future), with a random bound and prev_kv, against the model's log. The removal of compacted
 * history is waited for first: which previous versions survive it is then exact (a write's
 * previous version below the compacted revision c is gone when the write is at c itself, kept
 * when it is after c). */
static void check_events(struct kvt *t, struct model *m, uint64_t seed, int op)
{
    cr_assert_eq(kv_store_compact_wait(t->s, m->compact, 10000), 0);
    /* the last 40 revisions at most, so the expected text fits its buffer */
    int64_t lo = m->rev - 40 > m->compact - 1 ? m->rev - 40 : m->compact - 1;
    int64_t from = rn(8) == 0 ? m->compact - 1 : lo + rn((int)(m->rev - lo) + 3);
    size_t max = rn(3) ? 0 : (size_t)(1 + rn(4));
    bool with_prev = rn(2);
    static struct evgot got;
    static struct out want;
    got.o.n = want.n = 0;
    got.o.b[0] = want.b[0] = 0;
    got.n = 0;
    int64_t next = -7, cur = -7, comp = -7;
    struct kv_err err;
    int rc = kv_store_events(t->s, from, max, with_prev, ev_cb, &got, &next, &cur, &comp, &err);
    cr_assert_eq(cur, m->rev, "seed %llu op %d", (unsigned long long)seed, op);
    cr_assert_eq(comp, m->compact, "seed %llu op %d", (unsigned long long)seed, op);
    if (from > 0 && from < m->compact) {
        cr_assert(rc == -1 && err.code == KV_CODE_OUT_OF_RANGE &&
                      strcmp(err.msg, KV_ERR_COMPACTED) == 0,
                  "seed %llu op %d: events from %lld below the compacted %lld", (unsigned long long)seed,
                  op, (long long)from, (long long)m->compact);
        return;
    }
    cr_assert_eq(rc, 0, "seed %llu op %d: %s", (unsigned long long)seed, op, err.msg);
    int64_t want_next = from <= 0 ? m->rev + 1 : from > m->rev ? from : m->rev + 1;
    size_t n = 0;
    for (int i = 0; i < NEV && from > 0; i++) {
        const struct mev *e = &EV[i];
        if (e->kv.mod < from)
            continue;
        if (max && n >= max && e->kv.mod != EV[i - 1].kv.mod) {
            want_next = e->kv.mod;
            break;
        }
        outf(&want, "%s(", e->type == KV_EVENT_PUT ? "PUT" : "DEL");
        out_kv(&want, e->kv.key, strlen(e->kv.key), e->kv.val, strlen(e->kv.val), e->kv.create,
               e->kv.mod, e->kv.ver, e->kv.lease);
        if (with_prev) {
            const struct mev *p = NULL;
            for (int j = i - 1; j >= 0 && !p; j--)
                if (!strcmp(EV[j].kv.key, e->kv.key))
                    p = &EV[j];
            if (p && p->type == KV_EVENT_PUT && (p->kv.mod >= m->compact || e->kv.mod > m->compact))
                out_kv(&want, p->kv.key, strlen(p->kv.key), p->kv.val, strlen(p->kv.val),
                       p->kv.create, p->kv.mod, p->kv.ver, p->kv.lease);
        }
        outf(&want, ")");
        n++;
    }
    cr_assert_lt(want.n, sizeof want.b - 1, "the expected events overflow the buffer");
    cr_assert_str_eq(got.o.b, want.b, "seed %llu op %d: events from %lld (max %zu, prev %d)\n got  %s\n want %s",
                     (unsigned long long)seed, op, (long long)from, max, (int)with_prev, got.o.b,
                     want.b);
    cr_assert_eq(next, want_next, "seed %llu op %d: next", (unsigned long long)seed, op);
}

/* The lease table: kv_store_leases (every lease, in the table's order: the ID as an unsigned
 * number) and kv_store_lease_get for each ID of the space (TTLs, then the attached keys in key
 * order, or none), against the model's. */
struct lgot {
    struct out o;
    int n;
};

static int lease_list_cb(void *arg, const struct kv_lease *l)
{
    struct lgot *g = arg;
    outf(&g->o, "%lld:%lld/%lld ", (long long)l->id, (long long)l->ttl, (long long)l->remaining);
    g->n++;
    return 0;
}

static int lease_key_cb(void *arg, const uint8_t *key, size_t len)
{
    struct lgot *g = arg;
    outf(&g->o, "%s%.*s", g->n++ ? "," : "", (int)len, (const char *)key);
    return 0;
}

static int mlease_cmp(const void *pa, const void *pb)
{
    uint64_t a = (uint64_t)((const struct mlease *)pa)->id,
             b = (uint64_t)((const struct mlease *)pb)->id;
    return (a > b) - (a < b);
}

static void check_leases(struct kvt *t, const struct model *m, uint64_t seed, int op,
                         const char *when)
{
    static struct lgot got;
    static struct out want;
    got.o.n = want.n = 0;
    got.o.b[0] = want.b[0] = 0;
    got.n = 0;
    struct kv_err err;
    outf(&got.o, "list[");
    cr_assert_eq(kv_store_leases(t->s, lease_list_cb, &got, &err), 0, "%s", err.msg);
    outf(&got.o, "]");
    for (int i = 0; i < NLIDS; i++) {
        struct kv_lease l;
        outf(&got.o, " %lld:", (long long)LIDS[i]);
        got.n = 0;
        int rc = kv_store_lease_get(t->s, LIDS[i], &l, lease_key_cb, &got, &err);
        cr_assert_geq(rc, 0, "%s", err.msg);
        if (rc == 0)
            outf(&got.o, "none");
        else
            outf(&got.o, "=%lld:%lld/%lld", (long long)l.id, (long long)l.ttl,
                 (long long)l.remaining);
    }
    struct mlease ls[MAXL];
    memcpy(ls, m->ls, sizeof ls);
    qsort(ls, (size_t)m->nl, sizeof ls[0], mlease_cmp);
    outf(&want, "list[");
    for (int i = 0; i < m->nl; i++)
        outf(&want, "%lld:%lld/%lld ", (long long)ls[i].id, (long long)ls[i].ttl,
             (long long)ls[i].rem);
    outf(&want, "]");
    for (int i = 0; i < NLIDS; i++) {
        int64_t id = LIDS[i];
        outf(&want, " %lld:", (long long)id);
        const struct mlease *l = NULL;
        for (int j = 0; j < m->nl; j++)
            if (m->ls[j].id == id)
                l = &m->ls[j];
        if (!l) {
            outf(&want, "none");
            continue;
        }
        int n = 0;
        for (int j = 0; j < m->n; j++) /* the model's keys are in key order */
            if (m->kv[j].lease == id)
                outf(&want, "%s%s", n++ ? "," : "", m->kv[j].key);
        outf(&want, "=%lld:%lld/%lld", (long long)id, (long long)l->ttl, (long long)l->rem);
    }
    cr_assert_str_eq(got.o.b, want.b, "seed %llu op %d (leases, %s)\n got  %s\n want %s",
                     (unsigned long long)seed, op, when, got.o.b, want.b);
}

struct pending {
    uint8_t *cmd;
    size_t len;
    char want[16384];
};

static void flush(struct kvt *t, const struct model *m, struct pending *p, int n, uint64_t seed,
                  int op)
{
    if (!n)
        return;
    struct raft_entry es[8];
    struct raft_fsm_result res[8] = {{0}};
    for (int i = 0; i < n; i++)
        es[i] = (struct raft_entry){.index = ++t->index, .term = 1, .type = RAFT_ENTRY_NORMAL,
                                    .len = (uint32_t)p[i].len, .data = p[i].cmd};
    struct raft_fsm *f = kv_store_fsm(t->s);
    cr_assert_eq(f->apply(f->ctx, es, (size_t)n, t->index, res), 0);
    for (int i = 0; i < n; i++) {
        Craft__Kv__Result *r = kv_result_decode(res[i].data, res[i].len);
        cr_assert(r);
        static struct out got;
        got.n = 0;
        got.b[0] = 0;
        out_result(&got, r);
        cr_assert_str_eq(got.b, p[i].want, "seed %llu, op %d (batch entry %d)\n got  %s\n want %s",
                         (unsigned long long)seed, op - n + i + 1, i, got.b, p[i].want);
        craft__kv__result__free_unpacked(r, NULL);
        free(res[i].data);
        free(p[i].cmd);
    }
    check_leases(t, m, seed, op, "after a batch");
}

static void run_seed(uint64_t seed)
{
    struct kvt t;
    kvt_open(&t, NULL);
    static struct model m;
    memset(&m, 0, sizeof m);
    NEV = 0;
    STATES[0] = m;
    rng = seed * 2654435761u + 88172645463325252ull;
    static struct pending pend[6];
    int np = 0, batch = 1 + rn(6);
    for (int op = 0; op < OPS; op++) {
        int x = rn(100);
        if (x < 20) { /* a read, served outside the log */
            flush(&t, &m, pend, np, seed, op), np = 0;
            Etcdserverpb__RangeRequest r;
            kvt_range_req(&r, rkey(), rend());
            rand_range(&r, &m);
            r.revision = rrev(&m);
            static struct out want, got;
            want.n = got.n = 0;
            want.b[0] = got.b[0] = 0;
            if (r.revision > m.rev)
                outf(&want, "E(11 %s)", KV_ERR_FUTURE_REV);
            else if (r.revision > 0 && r.revision < m.compact)
                outf(&want, "E(11 %s)", KV_ERR_COMPACTED);
            else
                m_range(r.revision > 0 ? &STATES[r.revision] : &m, &r, m.rev, &want);
            Etcdserverpb__RangeResponse *resp = NULL;
            struct kv_err err;
            if (kv_store_range(t.s, &r, &resp, &err))
                outf(&got, "E(%d %s)", err.code, err.msg);
            else {
                out_range(&got, resp);
                etcdserverpb__range_response__free_unpacked(resp, NULL);
            }
                cr_assert_str_eq(got.b, want.b, "seed %llu, op %d (range)\n got  %s\n want %s",
                             (unsigned long long)seed, op, got.b, want.b);
            continue;
        }
        if (x < 26) { /* the history's events from a revision */
            flush(&t, &m, pend, np, seed, op), np = 0;
            check_events(&t, &m, seed, op);
            continue;
        }
        if (x == 27) { /* a snapshot, restored into a new store that takes over: the history
                        * goes with it */
            flush(&t, &m, pend, np, seed, op), np = 0;
            struct kvt_buf b = {0};
            uint64_t idx, term;
            kvt_snapshot(&t, &b, &idx, &term);
            struct kvt t2;
            kvt_open(&t2, NULL);
            char err[256];
            cr_assert_eq(kvt_restore(&t2, b.data, b.len, idx, term ? term : 1, err, sizeof err), 0,
                         "seed %llu op %d: %s", (unsigned long long)seed, op, err);
            free(b.data);
            kvt_close(&t);
            t = t2;
            check_leases(&t, &m, seed, op, "after a snapshot restore");
            continue;
        }
        if (x == 26) { /* a restart */
            flush(&t, &m, pend, np, seed, op), np = 0;
            kvt_reopen(&t);
            cr_assert_eq(kv_store_applied_index(t.s), t.index);
            check_leases(&t, &m, seed, op, "after a reopen");
            continue;
        }
        Craft__Kv__Command c = CRAFT__KV__COMMAND__INIT;
        Etcdserverpb__PutRequest p = ETCDSERVERPB__PUT_REQUEST__INIT;
        Etcdserverpb__DeleteRangeRequest d = ETCDSERVERPB__DELETE_RANGE_REQUEST__INIT;
        Etcdserverpb__CompactionRequest cp = ETCDSERVERPB__COMPACTION_REQUEST__INIT;
        Etcdserverpb__LeaseGrantRequest g = ETCDSERVERPB__LEASE_GRANT_REQUEST__INIT;
        Etcdserverpb__LeaseRevokeRequest rv = ETCDSERVERPB__LEASE_REVOKE_REQUEST__INIT;
        Etcdserverpb__LeaseCheckpointRequest ck = ETCDSERVERPB__LEASE_CHECKPOINT_REQUEST__INIT;
        Etcdserverpb__LeaseCheckpoint cks[3], *ckp[3];
        Etcdserverpb__TxnRequest *tx = NULL;
        if (x < 48) {
            p.key = kvt_bin(rkey());
            p.value = kvt_bin(rval());
            p.prev_kv = rn(2);
            if (rn(6) == 0) {
                p.ignore_value = 1;
                if (rn(3))
                    p.value = (ProtobufCBinaryData){0, NULL};
            }
            p.lease = rlease(&m);
            if (rn(6) == 0) {
                p.ignore_lease = 1;
                if (rn(4))
                    p.lease = 0;
            }
            c.op_case = CRAFT__KV__COMMAND__OP_PUT;
            c.put = &p;
        } else if (x < 53) {
            g.id = rn(12) == 0 ? 0 : rid();
            g.ttl = rn(40) == 0 ? KV_MAX_LEASE_TTL + rn(2) : 1 + rn(100);
            c.op_case = CRAFT__KV__COMMAND__OP_LEASE_GRANT;
            c.lease_grant = &g;
        } else if (x < 55) {
            rv.id = rn(4) && m.nl ? m.ls[rn(m.nl)].id : rn(8) ? rid() : 0;
            c.op_case = CRAFT__KV__COMMAND__OP_LEASE_REVOKE;
            c.lease_revoke = &rv;
        } else if (x < 56) {
            ck.n_checkpoints = (size_t)(1 + rn(3));
            for (size_t i = 0; i < ck.n_checkpoints; i++) {
                etcdserverpb__lease_checkpoint__init(&cks[i]);
                cks[i].id = rn(3) && m.nl ? m.ls[rn(m.nl)].id : rid();
                cks[i].remaining_ttl = rn(20) == 0 ? -1 : rn(150);
                ckp[i] = &cks[i];
            }
            ck.checkpoints = ckp;
            c.op_case = CRAFT__KV__COMMAND__OP_LEASE_CHECKPOINT;
            c.lease_checkpoint = &ck;
        } else if (x < 70) {
            d.key = kvt_bin(rkey());
            d.range_end = kvt_bin(rend());
            d.prev_kv = rn(2);
            c.op_case = CRAFT__KV__COMMAND__OP_DELETE_RANGE;
            c.delete_range = &d;
        } else if (x < 95) {
            tx = rand_txn(&m);
            c.op_case = CRAFT__KV__COMMAND__OP_TXN;
            c.txn = tx;
        } else {
            cp.revision = m.compact - 1 + rn((int)(m.rev - m.compact) + 3);
            c.op_case = CRAFT__KV__COMMAND__OP_COMPACTION;
            c.compaction = &cp;
        }
        struct pending *pe = &pend[np++];
        pe->len = craft__kv__command__get_packed_size(&c);
        pe->cmd = malloc(pe->len + 1);
        craft__kv__command__pack(&c, pe->cmd);
        struct out want = {.n = 0};
        want.b[0] = 0;
        int64_t rev0 = m.rev;
        m_apply(&m, &c, &want);
        if (m.rev != rev0)
            STATES[m.rev] = m;
        memcpy(pe->want, want.b, want.n + 1);
        if (tx)
            kb_free(tx);
        if (np == batch) {
            flush(&t, &m, pend, np, seed, op + 1), np = 0;
            batch = 1 + rn(6);
        }
    }
    flush(&t, &m, pend, np, seed, OPS);
    /* the final state, key by key */
    Etcdserverpb__RangeRequest all;
    kvt_range_req(&all, KVT_FROM, KVT_FROM);
    Etcdserverpb__RangeResponse *resp = kvt_range(&t, &all);
    static struct out got, want;
    got.n = want.n = 0;
    out_range(&got, resp);
    m_range(&m, &all, m.rev, &want);
    cr_assert_str_eq(got.b, want.b, "seed %llu: final state", (unsigned long long)seed);
    etcdserverpb__range_response__free_unpacked(resp, NULL);
    int64_t rev, comp;
    cr_assert_eq(kv_store_status(t.s, &rev, &comp, NULL, NULL), 0);
    cr_assert_eq(rev, m.rev, "seed %llu", (unsigned long long)seed);
    cr_assert_eq(comp, m.compact, "seed %llu", (unsigned long long)seed);
    check_leases(&t, &m, seed, OPS, "final");
    kvt_close(&t);
}

Test(kv_model, random_sequences_match_the_reference_model, .timeout = 840)
{
    const char *only = getenv("KV_MODEL_SEED");
    if (only) {
        run_seed(strtoull(only, NULL, 10));
        return;
    }
    for (uint64_t seed = 1; seed <= SEQS; seed++)
        run_seed(seed);
}
