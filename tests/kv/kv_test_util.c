/* kv_test_util.c: see kv_test_util.h. */
#include "tests/kv/kv_test_util.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "services/kvstore/kv_cmd.h"

void kvt_open(struct kvt *t, const struct kv_store_opts *opts)
{
    memset(t, 0, sizeof *t);
    snprintf(t->dir, sizeof t->dir, "/tmp/kvtest.XXXXXX");
    cr_assert(mkdtemp(t->dir));
    if (opts)
        t->opts = *opts;
    char err[256];
    t->s = kv_store_open(t->dir, &t->opts, err, sizeof err);
    cr_assert(t->s, "open: %s", err);
    t->index = kv_store_applied_index(t->s);
}

void kvt_reopen(struct kvt *t)
{
    kv_store_close(t->s);
    char err[256];
    t->s = kv_store_open(t->dir, &t->opts, err, sizeof err);
    cr_assert(t->s, "reopen: %s", err);
}

void kvt_close(struct kvt *t)
{
    if (t->s)
        kv_store_close(t->s);
    t->s = NULL;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", t->dir);
    cr_assert(system(cmd) == 0);
}

Craft__Kv__Result *kvt_apply(struct kvt *t, const uint8_t *cmd, size_t len, int *code)
{
    struct raft_fsm *f = kv_store_fsm(t->s);
    struct raft_entry e = {.index = ++t->index, .term = 1, .type = RAFT_ENTRY_NORMAL,
                           .len = (uint32_t)len, .data = (uint8_t *)cmd};
    struct raft_fsm_result res = {0};
    int rc = f->apply(f->ctx, &e, 1, e.index, &res);
    cr_assert_eq(rc, 0, "apply failed: %d", rc);
    cr_assert_eq(f->applied_index(f->ctx), e.index);
    Craft__Kv__Result *r = kv_result_decode(res.data, res.len);
    cr_assert(r, "result does not decode");
    cr_assert_eq((int)r->code, res.code);
    if (code)
        *code = res.code;
    free(res.data);
    return r;
}

ProtobufCBinaryData kvt_bin(const char *s)
{
    ProtobufCBinaryData b = {0, NULL};
    if (s && strcmp(s, KVT_FROM) == 0) {
        static uint8_t zero = 0;
        b.len = 1;
        b.data = &zero;
    } else if (s) {
        b.len = strlen(s);
        b.data = (uint8_t *)s;
    }
    return b;
}

Craft__Kv__Result *kvt_put_opt(struct kvt *t, const char *key, const char *val, int flags,
                               int64_t lease)
{
    Etcdserverpb__PutRequest p = ETCDSERVERPB__PUT_REQUEST__INIT;
    p.key = kvt_bin(key);
    p.value = kvt_bin(val);
    p.prev_kv = (flags & PUT_PREV) != 0;
    p.ignore_value = (flags & PUT_IGNORE_VALUE) != 0;
    p.ignore_lease = (flags & PUT_IGNORE_LEASE) != 0;
    p.lease = lease;
    uint8_t *b;
    size_t n;
    cr_assert_eq(kv_cmd_encode_put(&p, &b, &n), 0);
    Craft__Kv__Result *r = kvt_apply(t, b, n, NULL);
    free(b);
    return r;
}

Craft__Kv__Result *kvt_put(struct kvt *t, const char *key, const char *val)
{
    return kvt_put_opt(t, key, val, 0, 0);
}

void kvt_put_ok(struct kvt *t, const char *key, const char *val)
{
    Craft__Kv__Result *r = kvt_put(t, key, val);
    cr_assert_eq(r->code, 0, "put %s: %s", key, r->message);
    craft__kv__result__free_unpacked(r, NULL);
}

Craft__Kv__Result *kvt_del(struct kvt *t, const char *key, const char *end, bool prev)
{
    Etcdserverpb__DeleteRangeRequest d = ETCDSERVERPB__DELETE_RANGE_REQUEST__INIT;
    d.key = kvt_bin(key);
    d.range_end = kvt_bin(end);
    d.prev_kv = prev;
    uint8_t *b;
    size_t n;
    cr_assert_eq(kv_cmd_encode_delete_range(&d, &b, &n), 0);
    Craft__Kv__Result *r = kvt_apply(t, b, n, NULL);
    free(b);
    return r;
}

Craft__Kv__Result *kvt_compact(struct kvt *t, int64_t rev)
{
    Etcdserverpb__CompactionRequest c = ETCDSERVERPB__COMPACTION_REQUEST__INIT;
    c.revision = rev;
    uint8_t *b;
    size_t n;
    cr_assert_eq(kv_cmd_encode_compaction(&c, &b, &n), 0);
    Craft__Kv__Result *r = kvt_apply(t, b, n, NULL);
    free(b);
    return r;
}

Craft__Kv__Result *kvt_txn(struct kvt *t, const Etcdserverpb__TxnRequest *x)
{
    uint8_t *b;
    size_t n;
    cr_assert_eq(kv_cmd_encode_txn(x, &b, &n), 0);
    Craft__Kv__Result *r = kvt_apply(t, b, n, NULL);
    free(b);
    return r;
}

void kvt_range_req(Etcdserverpb__RangeRequest *r, const char *key, const char *end)
{
    etcdserverpb__range_request__init(r);
    r->key = kvt_bin(key);
    r->range_end = kvt_bin(end);
}

Etcdserverpb__RangeResponse *kvt_range(struct kvt *t, const Etcdserverpb__RangeRequest *r)
{
    Etcdserverpb__RangeResponse *resp = NULL;
    struct kv_err err = {0};
    int rc = kv_store_range(t->s, r, &resp, &err);
    cr_assert_eq(rc, 0, "range: %d %s", err.code, err.msg);
    cr_assert(resp && resp->header);
    return resp;
}

const char *kvt_keys(Mvccpb__KeyValue **kvs, size_t n, bool with_values)
{
    static char buf[8192];
    size_t o = 0;
    buf[0] = 0;
    for (size_t i = 0; i < n && o < sizeof buf - 1; i++) {
        o += (size_t)snprintf(buf + o, sizeof buf - o, "%s%.*s", i ? "," : "",
                              (int)kvs[i]->key.len, (const char *)kvs[i]->key.data);
        if (with_values && o < sizeof buf - 1)
            o += (size_t)snprintf(buf + o, sizeof buf - o, "=%.*s", (int)kvs[i]->value.len,
                                  (const char *)kvs[i]->value.data);
    }
    return buf;
}

int64_t kvt_rev(struct kvt *t)
{
    int64_t rev = -1;
    cr_assert_eq(kv_store_status(t->s, &rev, NULL, NULL, NULL), 0);
    return rev;
}

int64_t kvt_count(struct kvt *t)
{
    Etcdserverpb__RangeRequest r;
    kvt_range_req(&r, KVT_FROM, KVT_FROM);
    r.count_only = 1;
    Etcdserverpb__RangeResponse *resp = kvt_range(t, &r);
    int64_t n = resp->count;
    etcdserverpb__range_response__free_unpacked(resp, NULL);
    return n;
}

char *kvt_dump(struct kvt *t)
{
    int64_t rev, compact;
    cr_assert_eq(kv_store_status(t->s, &rev, &compact, NULL, NULL), 0);
    Etcdserverpb__RangeRequest r;
    kvt_range_req(&r, KVT_FROM, KVT_FROM);
    Etcdserverpb__RangeResponse *resp = kvt_range(t, &r);
    size_t cap = 256, o = 0;
    for (size_t i = 0; i < resp->n_kvs; i++)
        cap += resp->kvs[i]->key.len + resp->kvs[i]->value.len + 80;
    char *s = malloc(cap);
    cr_assert(s);
    o += (size_t)snprintf(s, cap, "rev %lld compact %lld applied %llu|", (long long)rev,
                          (long long)compact,
                          (unsigned long long)kv_store_applied_index(t->s));
    for (size_t i = 0; i < resp->n_kvs; i++) {
        const Mvccpb__KeyValue *kv = resp->kvs[i];
        o += (size_t)snprintf(s + o, cap - o, "%.*s=%.*s %lld/%lld/%lld,", (int)kv->key.len,
                              (const char *)kv->key.data, (int)kv->value.len,
                              (const char *)kv->value.data, (long long)kv->create_revision,
                              (long long)kv->mod_revision, (long long)kv->version);
    }
    etcdserverpb__range_response__free_unpacked(resp, NULL);
    return s;
}

int kvt_buf_write(void *arg, const void *p, size_t n)
{
    struct kvt_buf *b = arg;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        uint8_t *d = realloc(b->data, cap);
        if (!d)
            return -ENOMEM;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

long kvt_buf_read(void *arg, void *p, size_t n)
{
    struct kvt_buf *b = arg;
    size_t left = b->limit - b->pos;
    if (n > left)
        n = left;
    if (b->max_read && n > b->max_read)
        n = b->max_read;
    if (n)
        memcpy(p, b->data + b->pos, n);
    b->pos += n;
    return (long)n;
}

void kvt_snapshot(struct kvt *t, struct kvt_buf *b, uint64_t *index, uint64_t *term)
{
    b->len = b->pos = 0;
    char err[256] = "";
    struct raft_snapshot_writer w = {kvt_buf_write, b, err, sizeof err};
    struct raft_fsm *f = kv_store_fsm(t->s);
    int rc = f->snapshot_write(f->ctx, &w, index, term);
    cr_assert_eq(rc, 0, "snapshot_write: %d %s", rc, err);
    b->limit = b->len;
}

int kvt_restore(struct kvt *t, const uint8_t *p, size_t len, uint64_t index, uint64_t term,
                char *err, size_t errlen)
{
    struct kvt_buf b = {.data = (uint8_t *)p, .len = len, .limit = len};
    struct raft_snapshot_reader r = {kvt_buf_read, &b, err, errlen};
    struct raft_fsm *f = kv_store_fsm(t->s);
    int rc = f->snapshot_restore(f->ctx, &r, index, term);
    if (rc == 0)
        t->index = kv_store_applied_index(t->s);
    return rc;
}
