/* watch_req.c: decoding and checking one WatchRequest (watch.h), apart from the stream so the
 * fuzz target builds with nothing but protobuf-c. */
#include <stdio.h>
#include <string.h>

#include "services/watch.h"

#define ERR_NEG_REV "craft: start_revision must not be negative"
#define ERR_NEG_ID "craft: watch_id must not be negative"
#define ERR_KEY_LONG "craft: watch key or range_end longer than 4096 bytes"

static int key_cmp(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    size_t n = alen < blen ? alen : blen;
    int c = n ? memcmp(a, b, n) : 0;
    if (c)
        return c;
    return alen < blen ? -1 : alen > blen;
}

bool watch_key_matches(int range, const uint8_t *k, size_t kl, const uint8_t *e, size_t el,
                       const uint8_t *key, size_t klen)
{
    switch (range) {
    case WATCH_KEY_ONE:
        return klen == kl && (!kl || memcmp(key, k, kl) == 0);
    case WATCH_KEY_FROM:
        return key_cmp(key, klen, k, kl) >= 0;
    default:
        return key_cmp(key, klen, k, kl) >= 0 && key_cmp(key, klen, e, el) < 0;
    }
}

/* ---- decoding ----------------------------------------------------------------------------- */

static const uint8_t zero_key[1] = {0};

int watch_req_decode(const uint8_t *data, size_t len, struct watch_req *out)
{
    memset(out, 0, sizeof *out);
    Etcdserverpb__WatchRequest *m = etcdserverpb__watch_request__unpack(NULL, len, data);
    if (!m)
        return -1;
    out->msg = m;
    switch (m->request_union_case) {
    case ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CANCEL_REQUEST:
        out->kind = WATCH_REQ_CANCEL;
        out->watch_id = m->cancel_request ? m->cancel_request->watch_id : 0;
        return 0;
    case ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_PROGRESS_REQUEST:
        out->kind = WATCH_REQ_PROGRESS;
        return 0;
    case ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST:
        break;
    default:
        return 0; /* WATCH_REQ_NONE: etcd skips a request with no union set */
    }
    const Etcdserverpb__WatchCreateRequest *c = m->create_request;
    out->kind = WATCH_REQ_CREATE;
    if (!c)
        return 0; /* protobuf-c always fills a set oneof member; be safe anyway */
    out->watch_id = c->watch_id;
    out->start_rev = c->start_revision;
    out->prev_kv = c->prev_kv;
    out->progress_notify = c->progress_notify;
    out->fragment = c->fragment;
    for (size_t i = 0; i < c->n_filters; i++) { /* etcd ignores values it does not know */
        if (c->filters[i] == ETCDSERVERPB__WATCH_CREATE_REQUEST__FILTER_TYPE__NOPUT)
            out->no_put = true;
        else if (c->filters[i] == ETCDSERVERPB__WATCH_CREATE_REQUEST__FILTER_TYPE__NODELETE)
            out->no_delete = true;
    }
    /* etcd's normalization (v3rpc/watch.go): "" is "\0", the smallest key; range_end ""
     * watches one key, "\0" every key >= key. */
    out->key = c->key.len ? c->key.data : zero_key;
    out->klen = c->key.len ? c->key.len : 1;
    out->end = c->range_end.data;
    out->elen = c->range_end.len;
    if (c->range_end.len == 0)
        out->range = WATCH_KEY_ONE;
    else if (c->range_end.len == 1 && c->range_end.data[0] == 0)
        out->range = WATCH_KEY_FROM;
    else
        out->range = WATCH_KEY_RANGE;
    const char *e = NULL;
    if (out->klen > WATCH_MAX_KEY || out->elen > WATCH_MAX_KEY)
        e = ERR_KEY_LONG;
    else if (out->range == WATCH_KEY_RANGE &&
             key_cmp(out->key, out->klen, out->end, out->elen) >= 0)
        e = WATCH_ERR_EMPTY_RANGE;
    else if (out->start_rev < 0)
        e = ERR_NEG_REV;
    else if (out->watch_id < 0)
        e = ERR_NEG_ID;
    if (e)
        snprintf(out->error, sizeof out->error, "%s", e);
    return 0;
}

void watch_req_free(struct watch_req *r)
{
    if (r->msg)
        protobuf_c_message_free_unpacked(&r->msg->base, NULL);
    r->msg = NULL;
}

bool watch_req_matches(const struct watch_req *r, const uint8_t *key, size_t klen)
{
    return watch_key_matches(r->range, r->key, r->klen, r->end, r->elen, key, klen);
}
