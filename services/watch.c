/* watch.c: etcd's Watch service over the store's history (see watch.h, docs/watch.md).
 *
 * One mutex (hub.mu) guards every stream, watcher and counter, and every send happens under it,
 * so the order of a stream's responses (created, events, canceled, progress) is the order of
 * the decisions. The hub thread holds it for one bounded pass over new revisions (synced
 * watchers); a catch-up step reads the history without it (the watcher is marked busy) and
 * takes it to send. The commit hook never takes it (an atomic and wake_mu). */
#include "services/watch.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "raft/node/node.h"
#include "rpc/rpc.h"
#include "services/auth_token.h"
#include "services/kvstore/kv_auth.h"
#include "services/kvstore/kv_store.h"

#define HUB_PASS_EVENTS 4096  /* events per synced pass: bounds how long the pass holds mu */
#define SYNC_STEP_EVENTS 4096 /* events a catch-up step reads (etcd reads 1000 revisions) */
#define CTRL_MAX 64           /* control responses waiting for room; see ctrl_send */
#define HDR_SLACK 128         /* a WatchResponse's fields besides its events, generously */
#define ERR_BACKOFF_MS 100    /* after a storage error, before reading again */

#define ERR_TOO_MANY "craft: too many watches on this stream (--max-watches-per-stream)"
#define ERR_EVENT_BIG "craft: an event of this watch is larger than the largest message"
#define ERR_REV_BIG "craft: a revision's events exceed the largest message; watch with fragment"

struct buf {
    uint8_t *p;
    size_t len, cap;
};

struct wstream;

struct watcher {
    struct wstream *st; /* NULL once its stream closed (dead) */
    int64_t id;
    uint8_t *key, *end;
    size_t klen, elen;
    int range;
    bool prev_kv, fragment, progress_notify, no_put, no_delete;
    /* Every event before (next_rev, next_sub) was sent or is not wanted. */
    int64_t next_rev, next_sub;
    bool synced;
    size_t idx;  /* in hub.synced or hub.unsynced */
    bool busy;   /* a catch-up step reads for it without mu */
    bool dead;   /* canceled or its stream closed while busy: the step frees it */
    bool quiet;  /* progress_notify: nothing sent since the last tick */
    /* synced pass: events of the current revision not yet sent */
    struct buf pend;
    size_t pend_n;
    int64_t pend_first_sub;
    bool in_pend;
};

struct ctrl_msg {
    uint8_t *p;
    size_t len;
};

struct wstream {
    struct watch_hub *hub;
    struct rpc_stream *rs;
    struct wstream *prev, *next;
    struct watcher **w;
    size_t n, cap;
    size_t n_unsynced;
    int64_t next_id;
    bool finished;          /* rpc_stream_finish called: send nothing more */
    bool blocked;           /* a send found no room: nothing but control until on_sent */
    bool progress_pending;  /* a WatchProgressRequest waits for every watcher to be synced */
    uint64_t queued;        /* bytes sent since the queue was last empty (on_sent) */
    struct ctrl_msg ctrl[CTRL_MAX];
    size_t ctrl_head, nctrl;
};

struct watch_hub {
    struct watch_config cfg;
    _Atomic(struct raft_node *) node;
    pthread_mutex_t mu;
    pthread_t thread;
    bool started, stop;
    _Atomic int64_t commit_rev;  /* the store's revision, from the commit hook */
    pthread_mutex_t wake_mu;     /* never held while taking mu */
    pthread_cond_t wake_cv;
    bool wake;
    int64_t hub_rev; /* every synced watcher was sent every event up to it */
    struct watcher **synced, **unsynced;
    size_t n_synced, n_unsynced, cap_synced, cap_unsynced;
    size_t rr; /* round robin over unsynced */
    struct wstream *streams;
    size_t n_streams;
    uint64_t queued, queued_peak; /* the sum of the streams' queued, and its highest */
    uint64_t demoted;
    int64_t progress_due_ms;
    /* synced pass state */
    struct watcher **pend;
    size_t n_pend, cap_pend;
    uint64_t pass_bytes;
    int64_t pass_rev;
    struct buf enc_plain, enc_prev; /* the current event, encoded once for every watcher */
    uint64_t enc_seq, enc_done_plain, enc_done_prev; /* which event each encoding is of (the
                                                        source may reuse one struct) */
};

/* ---- small helpers ---------------------------------------------------------------------- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int buf_reserve(struct buf *b, size_t more)
{
    if (b->len + more <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more)
        cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int buf_put(struct buf *b, const void *d, size_t n)
{
    if (buf_reserve(b, n) != 0)
        return -1;
    if (n)
        memcpy(b->p + b->len, d, n);
    b->len += n;
    return 0;
}

/* Keeps a large buffer from pinning memory after one big revision. */
static void buf_clear(struct buf *b)
{
    b->len = 0;
    if (b->cap > (64u << 10)) {
        free(b->p);
        *b = (struct buf){0};
    }
}

static void buf_free(struct buf *b)
{
    free(b->p);
    *b = (struct buf){0};
}

/* ---- responses ---------------------------------------------------------------------------- */

static void fill_header(struct watch_hub *h, Etcdserverpb__ResponseHeader *hd, int64_t rev)
{
    hd->cluster_id = h->cfg.cluster_id;
    hd->member_id = h->cfg.member_id;
    hd->revision = rev;
    struct raft_node *n = atomic_load(&h->node);
    hd->raft_term = n ? raft_node_term(n) : 0;
}

/* Packs a response (header + fields in r) followed by `events` (already encoded field 11s:
 * protobuf fields may come in any order). malloc'd into *out. */
static int pack_response(struct watch_hub *h, Etcdserverpb__WatchResponse *r, int64_t rev,
                         const struct buf *events, uint8_t **out, size_t *len)
{
    Etcdserverpb__ResponseHeader hd = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    fill_header(h, &hd, rev);
    r->header = &hd;
    size_t n = etcdserverpb__watch_response__get_packed_size(r);
    size_t ev = events ? events->len : 0;
    uint8_t *p = malloc(n + ev ? n + ev : 1);
    if (!p)
        return -1;
    etcdserverpb__watch_response__pack(r, p);
    if (ev)
        memcpy(p + n, events->p, ev);
    *out = p;
    *len = n + ev;
    return 0;
}

static void queued_add(struct wstream *st, size_t len)
{
    struct watch_hub *h = st->hub;
    st->queued += len;
    h->queued += len;
    if (h->queued > h->queued_peak)
        h->queued_peak = h->queued;
}

/* What one stream may have queued: max_stream_bytes, or less when many streams share the
 * member's max_member_bytes (so a thousand streams that stop reading hold that much in all,
 * not a thousand times max_stream_bytes; a stream that reads drains its share and goes on). */
static uint64_t stream_bound(const struct watch_hub *h)
{
    uint64_t share = h->cfg.max_member_bytes / (h->n_streams ? h->n_streams : 1);
    return share < h->cfg.max_stream_bytes ? share : h->cfg.max_stream_bytes;
}

/* A send of events or a notification: refused (RPC_EFULL, stream marked blocked) when the
 * stream has control responses waiting, a send already found it full, or its bound is queued
 * (one message always goes when the queue is empty). */
static int stream_send(struct wstream *st, const uint8_t *p, size_t len)
{
    struct watch_hub *h = st->hub;
    if (st->finished)
        return RPC_ECLOSED;
    if (st->blocked || st->nctrl)
        return RPC_EFULL;
    if (st->queued && st->queued + len > stream_bound(h)) {
        st->blocked = true;
        return RPC_EFULL;
    }
    int rc = rpc_stream_send(st->rs, p, len);
    if (rc == 0)
        queued_add(st, len);
    else if (rc == RPC_EFULL)
        st->blocked = true;
    return rc;
}

static void stream_fail(struct wstream *st, grpc_status_code code, const char *msg)
{
    if (st->finished)
        return;
    st->finished = true;
    rpc_stream_finish(st->rs, code, msg);
}

/* Sends a control response (created, canceled, progress) or queues it behind the ones
 * waiting. Room: the rpc layer reads a request only while the send queue has room, and no
 * event is sent while control responses wait, so each request finds room for at least the
 * oldest waiting one and the queue stays at a response or two; CTRL_MAX is never reached by
 * a client that reads its stream, and one that makes it overflow is ended. Takes p. */
static void ctrl_send_raw(struct wstream *st, uint8_t *p, size_t len)
{
    if (st->finished) {
        free(p);
        return;
    }
    if (!st->nctrl) {
        int rc = rpc_stream_send(st->rs, p, len);
        if (rc != RPC_EFULL) {
            if (rc == 0)
                queued_add(st, len);
            free(p);
            return;
        }
    }
    if (st->nctrl == CTRL_MAX) {
        free(p);
        stream_fail(st, GRPC_STATUS_RESOURCE_EXHAUSTED,
                    "craft: watch stream's control responses overflowed");
        return;
    }
    st->ctrl[(st->ctrl_head + st->nctrl) % CTRL_MAX] = (struct ctrl_msg){p, len};
    st->nctrl++;
}

static void ctrl_send(struct wstream *st, Etcdserverpb__WatchResponse *r, int64_t rev)
{
    uint8_t *p;
    size_t len;
    if (pack_response(st->hub, r, rev, NULL, &p, &len) != 0) {
        stream_fail(st, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    ctrl_send_raw(st, p, len);
}

static void ctrl_flush(struct wstream *st)
{
    while (st->nctrl && !st->finished) {
        struct ctrl_msg *m = &st->ctrl[st->ctrl_head];
        int rc = rpc_stream_send(st->rs, m->p, m->len);
        if (rc == RPC_EFULL)
            return;
        if (rc == 0)
            queued_add(st, m->len);
        free(m->p);
        st->ctrl_head = (st->ctrl_head + 1) % CTRL_MAX;
        st->nctrl--;
    }
}

static void send_created(struct wstream *st, int64_t id, bool canceled, const char *reason,
                         int64_t rev)
{
    Etcdserverpb__WatchResponse r = ETCDSERVERPB__WATCH_RESPONSE__INIT;
    r.watch_id = id;
    r.created = true;
    r.canceled = canceled;
    r.cancel_reason = (char *)(reason ? reason : "");
    ctrl_send(st, &r, rev);
}

/* Events (and fragment flag) for watcher w; 0 or an RPC_E* code. */
static int send_events(struct watcher *w, const struct buf *events, bool fragment, int64_t rev)
{
    struct wstream *st = w->st;
    Etcdserverpb__WatchResponse r = ETCDSERVERPB__WATCH_RESPONSE__INIT;
    r.watch_id = w->id;
    r.fragment = fragment;
    uint8_t *p;
    size_t len;
    if (st->finished || st->blocked || st->nctrl)
        return st->finished ? RPC_ECLOSED : RPC_EFULL;
    if (pack_response(st->hub, &r, rev, events, &p, &len) != 0)
        return RPC_ENOMEM;
    int rc = stream_send(st, p, len);
    free(p);
    if (rc == 0)
        w->quiet = false;
    return rc;
}

/* ---- event encoding ---------------------------------------------------------------------- */

static void kv_of(const struct kv_event_kv *e, Mvccpb__KeyValue *kv)
{
    kv->key.data = (uint8_t *)e->key;
    kv->key.len = e->klen;
    kv->create_revision = e->create;
    kv->mod_revision = e->mod;
    kv->version = e->version;
    kv->lease = e->lease;
    kv->value.data = (uint8_t *)e->val;
    kv->value.len = e->vlen;
}

static size_t varint(uint8_t *o, uint64_t v)
{
    size_t n = 0;
    do {
        o[n] = (uint8_t)(v & 0x7f);
        v >>= 7;
        if (v)
            o[n] |= 0x80;
        n++;
    } while (v);
    return n;
}

/* Appends ev as WatchResponse field 11 (an mvccpb.Event) to b; with its prev_kv if asked and
 * known (etcd leaves prev_kv out of a creation). */
static int encode_event(struct buf *b, const struct kv_event *ev, bool with_prev)
{
    Mvccpb__Event e = MVCCPB__EVENT__INIT;
    Mvccpb__KeyValue kv = MVCCPB__KEY_VALUE__INIT, prev = MVCCPB__KEY_VALUE__INIT;
    e.type = ev->type == KV_EVENT_DELETE ? MVCCPB__EVENT__EVENT_TYPE__DELETE
                                         : MVCCPB__EVENT__EVENT_TYPE__PUT;
    kv_of(&ev->kv, &kv);
    e.kv = &kv;
    if (with_prev && ev->has_prev) {
        kv_of(&ev->prev, &prev);
        e.prev_kv = &prev;
    }
    size_t n = mvccpb__event__get_packed_size(&e);
    if (buf_reserve(b, n + 11) != 0)
        return -1;
    b->p[b->len++] = (11 << 3) | 2;
    b->len += varint(b->p + b->len, n);
    mvccpb__event__pack(&e, b->p + b->len);
    b->len += n;
    return 0;
}

/* Whether w wants ev (apart from the revision position). */
static bool wants(const struct watcher *w, const struct kv_event *ev)
{
    if (ev->type == KV_EVENT_DELETE ? w->no_delete : w->no_put)
        return false;
    return watch_key_matches(w->range, w->key, w->klen, w->end, w->elen, ev->kv.key, ev->kv.klen);
}

static bool before_next(const struct watcher *w, const struct kv_event *ev)
{
    return ev->rev < w->next_rev || (ev->rev == w->next_rev && ev->sub < w->next_sub);
}

/* ---- watcher sets ------------------------------------------------------------------------- */

static int arr_reserve(struct watcher ***a, size_t n, size_t *cap)
{
    if (n < *cap)
        return 0;
    size_t c = *cap ? *cap * 2 : 16;
    struct watcher **p = realloc(*a, c * sizeof *p);
    if (!p)
        return -1;
    *a = p;
    *cap = c;
    return 0;
}

static int arr_push(struct watcher ***a, size_t *n, size_t *cap, struct watcher *w)
{
    if (arr_reserve(a, *n, cap) != 0)
        return -1;
    w->idx = *n;
    (*a)[(*n)++] = w;
    return 0;
}

static void arr_remove(struct watcher **a, size_t *n, struct watcher *w)
{
    size_t i = w->idx;
    a[i] = a[--*n];
    a[i]->idx = i;
}

static void pend_drop(struct watch_hub *h, struct watcher *w)
{
    if (!w->in_pend)
        return;
    for (size_t i = 0; i < h->n_pend; i++)
        if (h->pend[i] == w) {
            h->pend[i] = h->pend[--h->n_pend];
            break;
        }
    w->in_pend = false;
    h->pass_bytes -= w->pend.len;
    w->pend_n = 0;
    buf_clear(&w->pend);
}

static void progress_check(struct wstream *st);

/* Out of hub.synced / hub.unsynced (the watcher stays on its stream). */
static void unlink_set(struct watch_hub *h, struct watcher *w)
{
    pend_drop(h, w);
    if (w->synced) {
        arr_remove(h->synced, &h->n_synced, w);
    } else {
        arr_remove(h->unsynced, &h->n_unsynced, w);
        if (w->st)
            w->st->n_unsynced--;
    }
}

/* Into hub.synced when nothing between its position and the hub's is missing, else
 * hub.unsynced. Returns -1 only on out of memory. */
static int place(struct watch_hub *h, struct watcher *w)
{
    if (w->next_rev > h->hub_rev) {
        if (arr_push(&h->synced, &h->n_synced, &h->cap_synced, w) != 0)
            return -1;
        w->synced = true;
        return 0;
    }
    if (arr_push(&h->unsynced, &h->n_unsynced, &h->cap_unsynced, w) != 0)
        return -1;
    w->synced = false;
    w->st->n_unsynced++;
    return 0;
}

static void watcher_free(struct watcher *w)
{
    free(w->key);
    free(w->end);
    buf_free(&w->pend);
    free(w);
}

/* Off its stream's list. */
static void stream_detach(struct wstream *st, struct watcher *w)
{
    for (size_t i = 0; i < st->n; i++)
        if (st->w[i] == w) {
            st->w[i] = st->w[--st->n];
            break;
        }
}

/* Removes w from everything and frees it (or leaves it to the step reading for it). */
static void watcher_remove(struct watch_hub *h, struct watcher *w)
{
    unlink_set(h, w);
    struct wstream *st = w->st;
    if (st)
        stream_detach(st, w);
    w->st = NULL;
    if (w->busy)
        w->dead = true;
    else
        watcher_free(w);
    if (st)
        progress_check(st);
}

/* A synced watcher that could not be sent the events at (rev, sub) and after: it catches up
 * from there on its own. */
static void demote(struct watch_hub *h, struct watcher *w, int64_t rev, int64_t sub)
{
    unlink_set(h, w);
    w->next_rev = rev;
    w->next_sub = sub;
    w->synced = false;
    h->demoted++;
    w->st->n_unsynced++;
    if (arr_push(&h->unsynced, &h->n_unsynced, &h->cap_unsynced, w) != 0) {
        w->st->n_unsynced--;
        struct wstream *st = w->st;
        stream_detach(st, w);
        w->st = NULL;
        watcher_free(w);
        stream_fail(st, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    }
}

/* A watch ended by the server: etcd's canceled response (with a reason), then gone. */
static void cancel_watch(struct watch_hub *h, struct watcher *w, const char *reason,
                         int64_t compact_rev, int64_t rev)
{
    Etcdserverpb__WatchResponse r = ETCDSERVERPB__WATCH_RESPONSE__INIT;
    r.watch_id = w->id;
    r.canceled = true;
    r.compact_revision = compact_rev;
    r.cancel_reason = (char *)(reason ? reason : "");
    if (w->st)
        ctrl_send(w->st, &r, rev);
    watcher_remove(h, w);
}

/* A pending WatchProgressRequest is answered once every watcher of the stream is synced, with
 * the revision every one of them has been sent everything up to. A stream without watches has
 * nothing to wait for: the store's revision, as etcd answers (the hub's own may lag the commit
 * hook by a pass; under ASan a test saw 0 for a put already applied at 1). */
static void progress_check(struct wstream *st)
{
    if (!st->progress_pending || st->n_unsynced)
        return;
    st->progress_pending = false;
    Etcdserverpb__WatchResponse r = ETCDSERVERPB__WATCH_RESPONSE__INIT;
    r.watch_id = -1;
    int64_t rev = st->hub->hub_rev;
    if (!st->n) {
        int64_t committed = atomic_load(&st->hub->commit_rev);
        rev = committed > rev ? committed : rev;
    }
    ctrl_send(st, &r, rev);
}

static void hub_wake(struct watch_hub *h)
{
    pthread_mutex_lock(&h->wake_mu);
    h->wake = true;
    pthread_cond_signal(&h->wake_cv);
    pthread_mutex_unlock(&h->wake_mu);
}

/* ---- the synced pass ------------------------------------------------------------------------ */

static int src_events(struct watch_hub *h, int64_t from, size_t max, bool prev, kv_event_cb cb,
                      void *arg, int64_t *next, int64_t *cur, int64_t *compact,
                      struct kv_err *err)
{
    if (h->cfg.events)
        return h->cfg.events(h->cfg.events_arg, from, max, prev, cb, arg, next, cur, compact,
                             err);
    return kv_store_events(h->cfg.store, from, max, prev, cb, arg, next, cur, compact, err);
}

/* Sends every pending watcher its events of the revision the pass just finished. */
static void flush_revision(struct watch_hub *h)
{
    while (h->n_pend) {
        struct watcher *w = h->pend[--h->n_pend];
        w->in_pend = false;
        int rc = send_events(w, &w->pend, false, h->pass_rev);
        int64_t first = w->pend_first_sub;
        w->pend_n = 0;
        buf_clear(&w->pend);
        if (rc == 0) {
            w->next_rev = h->pass_rev + 1;
            w->next_sub = 0;
        } else {
            demote(h, w, h->pass_rev, first);
        }
    }
    h->pass_bytes = 0;
}

static const struct buf *encoded(struct watch_hub *h, const struct kv_event *ev, bool prev)
{
    struct buf *b = prev ? &h->enc_prev : &h->enc_plain;
    uint64_t *done = prev ? &h->enc_done_prev : &h->enc_done_plain;
    if (*done != h->enc_seq) {
        b->len = 0;
        if (encode_event(b, ev, prev) != 0)
            return NULL;
        *done = h->enc_seq;
    }
    return b;
}

/* Adds ev to synced watcher w's pending response. */
static void pass_add(struct watch_hub *h, struct watcher *w, const struct kv_event *ev)
{
    const struct buf *e = encoded(h, ev, w->prev_kv);
    if (!e) {
        demote(h, w, ev->rev, w->in_pend ? w->pend_first_sub : ev->sub);
        return;
    }
    size_t n = e->len, hard = h->cfg.max_send_bytes;
    if (n + HDR_SLACK > hard) {
        cancel_watch(h, w, ERR_EVENT_BIG, 0, ev->rev);
        return;
    }
    if (w->fragment && w->pend_n && w->pend.len + n + HDR_SLACK > h->cfg.max_request_bytes) {
        int rc = send_events(w, &w->pend, true, ev->rev);
        if (rc != 0) {
            demote(h, w, ev->rev, w->pend_first_sub);
            return;
        }
        h->pass_bytes -= w->pend.len;
        buf_clear(&w->pend);
        w->pend_n = 0;
        /* stays in h->pend: the rest of the revision follows */
    } else if (!w->fragment && w->pend.len + n + HDR_SLACK > hard) {
        cancel_watch(h, w, ERR_REV_BIG, 0, ev->rev);
        return;
    }
    if (h->pass_bytes + n > h->cfg.max_hub_bytes) {
        demote(h, w, ev->rev, w->pend_n ? w->pend_first_sub : ev->sub);
        return;
    }
    if (!w->in_pend) {
        struct watcher **p = h->pend;
        if (h->n_pend == h->cap_pend) {
            size_t c = h->cap_pend ? h->cap_pend * 2 : 16;
            p = realloc(h->pend, c * sizeof *p);
            if (!p) {
                demote(h, w, ev->rev, ev->sub);
                return;
            }
            h->pend = p;
            h->cap_pend = c;
        }
        h->pend[h->n_pend++] = w;
        w->in_pend = true;
    }
    if (!w->pend_n)
        w->pend_first_sub = ev->sub;
    if (buf_put(&w->pend, e->p, n) != 0) {
        demote(h, w, ev->rev, w->pend_first_sub);
        return;
    }
    w->pend_n++;
    h->pass_bytes += n;
}

static int pass_event(void *arg, const struct kv_event *ev)
{
    struct watch_hub *h = arg;
    h->enc_seq++;
    if (ev->rev != h->pass_rev) {
        if (h->pass_rev)
            flush_revision(h);
        h->pass_rev = ev->rev;
    }
    for (size_t i = 0; i < h->n_synced;) {
        struct watcher *w = h->synced[i];
        if (wants(w, ev) && !before_next(w, ev))
            pass_add(h, w, ev);
        if (i < h->n_synced && h->synced[i] == w)
            i++; /* else w left the set and another took its slot */
    }
    return 0;
}

/* One bounded pass over the revisions after hub_rev, for every synced watcher. mu held. */
static void synced_pass(struct watch_hub *h, int64_t *backoff)
{
    bool prev = false;
    for (size_t i = 0; i < h->n_synced && !prev; i++)
        prev = h->synced[i]->prev_kv;
    int64_t next = 0, cur = 0, compact = 0;
    struct kv_err err = {0};
    h->pass_rev = 0;
    int rc = src_events(h, h->hub_rev + 1, HUB_PASS_EVENTS, prev, pass_event, h, &next, &cur,
                        &compact, &err);
    if (h->pass_rev)
        flush_revision(h);
    buf_clear(&h->enc_plain);
    buf_clear(&h->enc_prev);
    if (rc == 0) {
        if (next - 1 > h->hub_rev)
            h->hub_rev = next - 1;
        /* Positions follow the hub even for watchers nothing matched, so each position is
         * exact: a restore that takes the store back replays nothing to anyone. */
        for (size_t i = 0; i < h->n_synced; i++) {
            struct watcher *w = h->synced[i];
            if (w->next_rev <= h->hub_rev) {
                w->next_rev = h->hub_rev + 1;
                w->next_sub = 0;
            }
        }
        return;
    }
    if (err.code == KV_CODE_OUT_OF_RANGE && compact > h->hub_rev + 1) {
        /* A compaction overtook the hub: watchers still needing what it removed are told. */
        for (size_t i = 0; i < h->n_synced;) {
            struct watcher *w = h->synced[i];
            if (w->next_rev < compact)
                cancel_watch(h, w, NULL, compact, cur);
            else
                i++;
        }
        h->hub_rev = compact - 1;
        return;
    }
    *backoff = now_ms() + ERR_BACKOFF_MS;
}

/* ---- catching up ------------------------------------------------------------------------ */

struct step {
    struct watch_hub *h;
    struct watcher *w;
    int64_t from, sub0;
    struct buf resp, cur; /* whole revisions; the current revision's events */
    struct buf one;       /* the event being added */
    size_t resp_n, cur_n;
    int64_t resp_rev, resp_sub; /* where resp's content starts */
    int64_t rev;                /* revision of cur */
    int64_t rev_sub;            /* where the undelivered part of `rev` starts */
    bool stopped;               /* stopped by us: resume at (stop_rev, stop_sub) */
    int64_t stop_rev, stop_sub;
    const char *cancel;         /* this watch must be canceled (too big) */
    bool failed;                /* a send failed or the watcher went away */
};

/* cur (the revision `rev`) joins resp if it fits; false when resp must be sent first. */
static bool step_close_rev(struct step *s)
{
    if (!s->cur_n)
        return true;
    if (s->resp_n && s->resp.len + s->cur.len + HDR_SLACK > s->h->cfg.max_request_bytes)
        return false;
    if (!s->resp_n) {
        s->resp_rev = s->rev;
        s->resp_sub = s->rev_sub;
    }
    if (buf_put(&s->resp, s->cur.p, s->cur.len) != 0)
        return false;
    s->resp_n += s->cur_n;
    s->cur_n = 0;
    s->cur.len = 0;
    return true;
}

/* Sends a fragment of the current revision (mu taken here). */
static int step_send_fragment(struct step *s, int64_t cur_rev)
{
    struct watch_hub *h = s->h;
    pthread_mutex_lock(&h->mu);
    int rc = s->w->dead ? RPC_ECLOSED : send_events(s->w, &s->cur, true, cur_rev);
    pthread_mutex_unlock(&h->mu);
    return rc;
}

static int step_event(void *arg, const struct kv_event *ev)
{
    struct step *s = arg;
    struct watcher *w = s->w;
    if (ev->rev == s->from && ev->sub < s->sub0)
        return 0;
    if (ev->rev != s->rev) {
        if (s->rev && !step_close_rev(s)) {
            s->stopped = true;
            s->stop_rev = s->rev;
            s->stop_sub = s->rev_sub;
            return 1;
        }
        s->rev = ev->rev;
        s->rev_sub = ev->rev == s->from ? s->sub0 : 0;
        s->cur_n = 0;
        s->cur.len = 0;
    }
    if (!wants(w, ev))
        return 0;
    s->one.len = 0;
    if (encode_event(&s->one, ev, w->prev_kv) != 0) {
        s->failed = true;
        return 1;
    }
    size_t n = s->one.len, hard = s->h->cfg.max_send_bytes;
    if (n + HDR_SLACK > hard) {
        s->cancel = ERR_EVENT_BIG;
        return 1;
    }
    if (w->fragment && s->cur_n && s->cur.len + n + HDR_SLACK > s->h->cfg.max_request_bytes) {
        if (s->resp_n) { /* send what is whole first; the next step fragments this one */
            s->stopped = true;
            s->stop_rev = s->rev;
            s->stop_sub = s->rev_sub;
            return 1;
        }
        if (step_send_fragment(s, ev->rev) != 0) {
            s->failed = true;
            s->stopped = true;
            s->stop_rev = s->rev;
            s->stop_sub = s->rev_sub;
            return 1;
        }
        s->cur_n = 0;
        s->cur.len = 0;
        s->rev_sub = ev->sub; /* the fragments sent are delivered */
    } else if (!w->fragment && s->cur.len + n + HDR_SLACK > hard) {
        s->cancel = ERR_REV_BIG;
        return 1;
    }
    if (buf_put(&s->cur, s->one.p, n) != 0) {
        s->failed = true;
        return 1;
    }
    s->cur_n++;
    return 0;
}

/* One catch-up step for unsynced watcher w: read from its position without mu, send, and
 * move it to the synced set if it reached the hub. mu held on entry and return. */
static void catch_up(struct watch_hub *h, struct watcher *w, int64_t *backoff)
{
    struct step s = {.h = h, .w = w, .from = w->next_rev, .sub0 = w->next_sub};
    w->busy = true;
    pthread_mutex_unlock(&h->mu);
    int64_t next = 0, cur = 0, compact = 0;
    struct kv_err err = {0};
    int rc = src_events(h, s.from, SYNC_STEP_EVENTS, w->prev_kv, step_event, &s, &next, &cur,
                        &compact, &err);
    pthread_mutex_lock(&h->mu);
    w->busy = false;
    if (w->dead) {
        watcher_free(w);
        goto out;
    }
    if (rc < 0) {
        if (err.code == KV_CODE_OUT_OF_RANGE && compact > 0)
            cancel_watch(h, w, NULL, compact, cur); /* etcd: compact_revision, canceled */
        else
            *backoff = now_ms() + ERR_BACKOFF_MS;
        goto out;
    }
    /* Where the watcher will be once everything read was sent. */
    int64_t res_rev = next, res_sub = 0;
    if (s.stopped) {
        res_rev = s.stop_rev;
        res_sub = s.stop_sub;
    }
    if (!s.stopped && !s.failed && !s.cancel && s.cur_n && !step_close_rev(&s)) {
        /* cur did not fit behind resp: it is sent next step */
        res_rev = s.rev;
        res_sub = s.rev_sub;
    }
    if (s.failed && !s.stopped) { /* out of memory encoding: retry later */
        *backoff = now_ms() + ERR_BACKOFF_MS;
        goto out;
    }
    if (s.cancel && !s.stopped) { /* what is whole before the revision too big still goes */
        res_rev = s.rev;
        res_sub = s.rev_sub;
    }
    if (res_rev < s.from || (res_rev == s.from && res_sub < s.sub0)) {
        res_rev = s.from; /* a source with nothing from `from` on: the position stays */
        res_sub = s.sub0;
    }
    if (s.resp_n) {
        if (send_events(w, &s.resp, false, cur) != 0) {
            w->next_rev = s.resp_rev; /* nothing of resp was delivered */
            w->next_sub = s.resp_sub;
            goto out;
        }
    }
    if (s.cancel) {
        cancel_watch(h, w, s.cancel, 0, cur);
        goto out;
    }
    w->next_rev = res_rev;
    w->next_sub = res_sub;
    if (w->next_rev > h->hub_rev && !w->st->blocked &&
        arr_reserve(&h->synced, h->n_synced, &h->cap_synced) == 0) {
        unlink_set(h, w);
        place(h, w); /* synced: room was reserved */
        progress_check(w->st);
    }
out:
    buf_free(&s.resp);
    buf_free(&s.cur);
    buf_free(&s.one);
}

/* The next unsynced watcher that can make progress (its stream has room), round robin. */
static struct watcher *pick_unsynced(struct watch_hub *h)
{
    for (size_t k = 0; k < h->n_unsynced; k++) {
        size_t i = (h->rr + k) % h->n_unsynced;
        struct watcher *w = h->unsynced[i];
        if (w->busy || !w->st || w->st->blocked || w->st->nctrl || w->st->finished)
            continue;
        h->rr = i + 1;
        return w;
    }
    return NULL;
}

/* progress_notify: a synced watcher that sent nothing during the interval gets an empty
 * response at hub_rev (etcd sends it only to synced watchers, which have every event up to
 * it). */
static void progress_tick(struct watch_hub *h)
{
    for (struct wstream *st = h->streams; st; st = st->next)
        for (size_t i = 0; i < st->n; i++) {
            struct watcher *w = st->w[i];
            if (!w->progress_notify)
                continue;
            if (w->synced && w->quiet) {
                Etcdserverpb__WatchResponse r = ETCDSERVERPB__WATCH_RESPONSE__INIT;
                r.watch_id = w->id;
                uint8_t *p;
                size_t len;
                if (pack_response(h, &r, h->hub_rev, NULL, &p, &len) == 0) {
                    stream_send(st, p, len); /* no room: skipped, as etcd does */
                    free(p);
                }
            }
            w->quiet = true;
        }
}

static void *hub_main(void *arg)
{
    struct watch_hub *h = arg;
    int64_t backoff = 0;
    bool pass_next = true; /* whose turn it is when both passes and steps have work */
    pthread_mutex_lock(&h->mu);
    while (!h->stop) {
        int64_t now = now_ms();
        int64_t c = atomic_load(&h->commit_rev);
        if (c < h->hub_rev) /* a snapshot restore took the store back: watchers keep their
                               positions and skip what they had */
            h->hub_rev = c;
        if (now >= h->progress_due_ms) {
            progress_tick(h);
            h->progress_due_ms = now + (int64_t)h->cfg.progress_interval_ms;
        }
        /* Passes and catch-up steps take turns while both have work: synced watchers wait
         * for at most one bounded step, and a steady stream of writes cannot starve the
         * watchers catching up. */
        struct watcher *w = now >= backoff && !pass_next ? pick_unsynced(h) : NULL;
        if (!w && now >= backoff && c > h->hub_rev) {
            if (h->n_synced) {
                synced_pass(h, &backoff);
            } else {
                h->hub_rev = c; /* nobody to deliver to: unsynced watchers read for themselves */
            }
            for (struct wstream *st = h->streams; st; st = st->next)
                progress_check(st);
            pass_next = false;
            continue;
        }
        if (!w && now >= backoff)
            w = pick_unsynced(h);
        if (w) {
            catch_up(h, w, &backoff);
            pass_next = true;
            continue;
        }
        int64_t until = h->progress_due_ms;
        if (backoff > now && backoff < until)
            until = backoff;
        pthread_mutex_unlock(&h->mu);
        pthread_mutex_lock(&h->wake_mu);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int64_t wait = until - now_ms();
        if (wait < 0)
            wait = 0;
        if (wait > 60000)
            wait = 60000;
        ts.tv_sec += wait / 1000;
        ts.tv_nsec += (wait % 1000) * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        while (!h->wake && wait > 0)
            if (pthread_cond_timedwait(&h->wake_cv, &h->wake_mu, &ts) == ETIMEDOUT)
                break;
        h->wake = false;
        pthread_mutex_unlock(&h->wake_mu);
        pthread_mutex_lock(&h->mu);
    }
    pthread_mutex_unlock(&h->mu);
    return NULL;
}

/* ---- the stream ---------------------------------------------------------------------------- */

static struct watcher *find_watcher(struct wstream *st, int64_t id)
{
    for (size_t i = 0; i < st->n; i++)
        if (st->w[i]->id == id)
            return st->w[i];
    return NULL;
}

/* etcd's isWatchPermitted: with auth enabled, read permission on the request's key and
 * range_end as sent, checked on this member's auth state when the watch is created (etcd checks
 * then too; a later revocation does not end a watch). */
static bool watch_refused(struct watch_hub *h, struct wstream *st, const struct watch_req *r)
{
    if (!h->cfg.store || !r->msg || !r->msg->create_request)
        return false;
    struct kv_auth *a = kv_store_auth_get(h->cfg.store);
    bool refused = false;
    if (kv_auth_enabled(a)) {
        char buf[RPC_PEER_NAME_MAX];
        const char *user;
        const Etcdserverpb__WatchCreateRequest *c = r->msg->create_request;
        struct kv_err err;
        refused = auth_caller(h->cfg.tokens, a, NULL, st->rs, buf, sizeof buf, &user, &err) ||
                  kv_auth_check(a, user, c->key.data, c->key.len, c->range_end.data,
                                c->range_end.len, KV_AUTH_READ, &err) != 0;
    }
    kv_auth_unref(a);
    return refused;
}

static void handle_create(struct watch_hub *h, struct wstream *st, const struct watch_req *r)
{
    int64_t rev = atomic_load(&h->commit_rev);
    if (rev < h->hub_rev)
        rev = h->hub_rev;
    if (r->error[0]) {
        send_created(st, -1, true, r->error, rev);
        return;
    }
    if (st->n >= h->cfg.max_per_stream) {
        send_created(st, -1, true, ERR_TOO_MANY, rev);
        return;
    }
    if (watch_refused(h, st, r)) {
        /* etcd's answer: created and canceled, the reason being the gRPC error's text */
        send_created(st, -1, true, "rpc error: code = PermissionDenied desc = "
                     KV_ERR_PERMISSION_DENIED, rev);
        return;
    }
    int64_t id = r->watch_id;
    if (id == 0) { /* etcd's AutoWatchID: the stream's counter, skipping ids in use */
        while (find_watcher(st, st->next_id))
            st->next_id++;
        id = st->next_id++;
    } else if (find_watcher(st, id)) {
        send_created(st, -1, true, WATCH_ERR_DUP_ID, rev);
        return;
    }
    struct watcher *w = calloc(1, sizeof *w);
    if (w) {
        w->key = malloc(r->klen);
        w->end = malloc(r->elen ? r->elen : 1);
    }
    if (!w || !w->key || !w->end) {
        if (w)
            watcher_free(w);
        send_created(st, -1, true, "out of memory", rev);
        return;
    }
    if (st->n == st->cap) {
        size_t c = st->cap ? st->cap * 2 : 8;
        struct watcher **p = realloc(st->w, c * sizeof *p);
        if (!p) {
            watcher_free(w);
            send_created(st, -1, true, "out of memory", rev);
            return;
        }
        st->w = p;
        st->cap = c;
    }
    memcpy(w->key, r->key, r->klen);
    w->klen = r->klen;
    if (r->elen)
        memcpy(w->end, r->end, r->elen);
    w->elen = r->elen;
    w->range = r->range;
    w->id = id;
    w->prev_kv = r->prev_kv;
    w->fragment = r->fragment;
    w->progress_notify = r->progress_notify;
    w->no_put = r->no_put;
    w->no_delete = r->no_delete;
    w->next_rev = r->start_rev ? r->start_rev : rev + 1;
    w->quiet = true;
    w->st = st;
    /* created first: no event of w can be sent before it (sends happen under mu, and none
     * while control responses wait). */
    send_created(st, id, false, NULL, rev);
    if (place(h, w) != 0) {
        watcher_free(w);
        Etcdserverpb__WatchResponse c = ETCDSERVERPB__WATCH_RESPONSE__INIT;
        c.watch_id = id;
        c.canceled = true;
        c.cancel_reason = "out of memory";
        ctrl_send(st, &c, rev);
        return;
    }
    st->w[st->n++] = w;
    if (!w->synced)
        hub_wake(h);
}

static void *on_open(struct rpc_stream *rs, void *ctx)
{
    struct watch_hub *h = ctx;
    struct wstream *st = calloc(1, sizeof *st);
    if (!st) {
        rpc_stream_finish(rs, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return NULL;
    }
    st->hub = h;
    st->rs = rs;
    pthread_mutex_lock(&h->mu);
    st->next = h->streams;
    if (h->streams)
        h->streams->prev = st;
    h->streams = st;
    h->n_streams++;
    pthread_mutex_unlock(&h->mu);
    return st;
}

static void on_message(struct rpc_stream *rs, const uint8_t *data, size_t len, void *user)
{
    (void)rs;
    struct wstream *st = user;
    if (!st)
        return;
    struct watch_hub *h = st->hub;
    struct watch_req r;
    int rc = watch_req_decode(data, len, &r);
    pthread_mutex_lock(&h->mu);
    if (st->finished) {
        /* nothing more for a stream we ended */
    } else if (rc != 0) {
        stream_fail(st, GRPC_STATUS_INVALID_ARGUMENT, "grpc: error unmarshalling request");
    } else {
        ctrl_flush(st); /* a request finds room: older control responses go first */
        if (r.kind == WATCH_REQ_CREATE) {
            handle_create(h, st, &r);
        } else if (r.kind == WATCH_REQ_CANCEL) {
            struct watcher *w = find_watcher(st, r.watch_id);
            if (w) { /* etcd answers only a known id */
                int64_t rev = atomic_load(&h->commit_rev);
                Etcdserverpb__WatchResponse c = ETCDSERVERPB__WATCH_RESPONSE__INIT;
                c.watch_id = w->id;
                c.canceled = true;
                ctrl_send(st, &c, rev > h->hub_rev ? rev : h->hub_rev);
                watcher_remove(h, w);
            }
        } else if (r.kind == WATCH_REQ_PROGRESS) {
            st->progress_pending = true;
            progress_check(st);
        }
    }
    pthread_mutex_unlock(&h->mu);
    watch_req_free(&r);
}

static void on_sent(struct rpc_stream *rs, void *user)
{
    (void)rs;
    struct wstream *st = user;
    if (!st)
        return;
    struct watch_hub *h = st->hub;
    pthread_mutex_lock(&h->mu);
    h->queued -= st->queued;
    st->queued = 0; /* everything sent was written */
    ctrl_flush(st);
    bool was = st->blocked;
    st->blocked = false;
    bool wake = was || st->n_unsynced;
    pthread_mutex_unlock(&h->mu);
    if (wake)
        hub_wake(h);
}

static void on_close(struct rpc_stream *rs, grpc_status_code status, void *user)
{
    (void)status;
    struct wstream *st = user;
    if (!st)
        return; /* on_open failed and finished it */
    struct watch_hub *h = st->hub;
    pthread_mutex_lock(&h->mu);
    st->progress_pending = false;
    while (st->n)
        watcher_remove(h, st->w[st->n - 1]);
    if (!st->finished) {
        st->finished = true;
        /* a half-close ends the stream OK, as etcd's recvLoop returning nil */
        rpc_stream_finish(rs, GRPC_STATUS_OK, NULL);
    }
    while (st->nctrl) {
        free(st->ctrl[st->ctrl_head].p);
        st->ctrl_head = (st->ctrl_head + 1) % CTRL_MAX;
        st->nctrl--;
    }
    h->queued -= st->queued; /* gone with the stream */
    st->queued = 0;
    if (st->prev)
        st->prev->next = st->next;
    else
        h->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    h->n_streams--;
    pthread_mutex_unlock(&h->mu);
    free(st->w);
    free(st);
}

/* ---- lifecycle ------------------------------------------------------------------------------ */

void watch_hub_notify(void *hub, int64_t rev)
{
    struct watch_hub *h = hub;
    atomic_store(&h->commit_rev, rev);
    hub_wake(h);
}

static int first_rev(void *arg, const struct kv_event *ev)
{
    (void)arg, (void)ev;
    return 1;
}

struct watch_hub *watch_hub_create(const struct watch_config *cfg, char *err, size_t errlen)
{
    if (!cfg->events && !cfg->store) {
        snprintf(err, errlen, "watch: no store");
        return NULL;
    }
    struct watch_hub *h = calloc(1, sizeof *h);
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    h->cfg = *cfg;
    if (!h->cfg.max_per_stream)
        h->cfg.max_per_stream = WATCH_DEFAULT_MAX_PER_STREAM;
    if (!h->cfg.max_stream_bytes)
        h->cfg.max_stream_bytes = WATCH_DEFAULT_STREAM_BYTES;
    if (!h->cfg.max_hub_bytes)
        h->cfg.max_hub_bytes = WATCH_DEFAULT_HUB_BYTES;
    if (!h->cfg.max_member_bytes)
        h->cfg.max_member_bytes = WATCH_DEFAULT_MEMBER_BYTES;
    if (!h->cfg.progress_interval_ms)
        h->cfg.progress_interval_ms = WATCH_DEFAULT_PROGRESS_MS;
    if (!h->cfg.max_send_bytes)
        h->cfg.max_send_bytes = RPC_DEFAULT_MAX_MSG;
    if (!h->cfg.max_request_bytes || h->cfg.max_request_bytes > h->cfg.max_send_bytes)
        h->cfg.max_request_bytes = h->cfg.max_send_bytes;
    pthread_mutex_init(&h->mu, NULL);
    pthread_mutex_init(&h->wake_mu, NULL);
    pthread_cond_init(&h->wake_cv, NULL);
    /* The store's revision now: from_rev 0 reads nothing and says it. */
    int64_t next = 0, cur = 0;
    struct kv_err kerr = {0};
    if (src_events(h, 0, 1, false, first_rev, NULL, &next, &cur, NULL, &kerr) != 0) {
        snprintf(err, errlen, "watch: reading the store's revision: %s", kerr.msg);
        watch_hub_destroy(h);
        return NULL;
    }
    h->hub_rev = cur;
    atomic_store(&h->commit_rev, cur);
    h->progress_due_ms = now_ms() + (int64_t)h->cfg.progress_interval_ms;
    if (pthread_create(&h->thread, NULL, hub_main, h) != 0) {
        snprintf(err, errlen, "watch: cannot start the hub thread");
        watch_hub_destroy(h);
        return NULL;
    }
    h->started = true;
    if (!cfg->events)
        kv_store_set_commit_hook(cfg->store, watch_hub_notify, h);
    return h;
}

int watch_hub_register(struct watch_hub *h, struct rpc_server *srv, struct raft_node *node)
{
    atomic_store(&h->node, node);
    static const struct rpc_stream_handler sh = {
        .on_open = on_open,
        .on_message = on_message,
        .on_close = on_close,
        .on_sent = on_sent,
    };
    return rpc_server_register_stream(srv, "/etcdserverpb.Watch/Watch", &sh, h) ? -1 : 0;
}

void watch_hub_stats(struct watch_hub *h, struct watch_stats *out)
{
    pthread_mutex_lock(&h->mu);
    out->streams = h->n_streams;
    out->synced = h->n_synced;
    out->unsynced = h->n_unsynced;
    out->demoted = h->demoted;
    out->hub_rev = h->hub_rev;
    out->queued_bytes = h->queued;
    out->queued_peak = h->queued_peak;
    pthread_mutex_unlock(&h->mu);
}

void watch_hub_destroy(struct watch_hub *h)
{
    if (!h)
        return;
    if (!h->cfg.events && h->cfg.store && h->started)
        kv_store_set_commit_hook(h->cfg.store, NULL, NULL);
    if (h->started) {
        pthread_mutex_lock(&h->mu);
        h->stop = true;
        pthread_mutex_unlock(&h->mu);
        hub_wake(h);
        pthread_join(h->thread, NULL);
    }
    /* Streams left (the server was not shut down first) lose their watchers here. */
    while (h->streams) {
        struct wstream *st = h->streams;
        st->finished = true; /* its rpc handle may be gone: send nothing */
        while (st->n)
            watcher_remove(h, st->w[st->n - 1]);
        h->streams = st->next;
        while (st->nctrl) {
            free(st->ctrl[st->ctrl_head].p);
            st->ctrl_head = (st->ctrl_head + 1) % CTRL_MAX;
            st->nctrl--;
        }
        free(st->w);
        free(st);
    }
    free(h->synced);
    free(h->unsynced);
    free(h->pend);
    buf_free(&h->enc_plain);
    buf_free(&h->enc_prev);
    pthread_mutex_destroy(&h->mu);
    pthread_mutex_destroy(&h->wake_mu);
    pthread_cond_destroy(&h->wake_cv);
    free(h);
}
