/* watch_hub_test.c: services/watch.h's stream semantics against an in-memory history (the
 * hub's injectable event source, with kv_store_events's contract), over a real plaintext
 * loopback rpc server: created/canceled responses, ranges, catch-up and future starts, prev_kv,
 * filters, compaction, progress, watch ids, fragments, the per-stream bound, bad input, and a
 * reader that stops reading: bounded on the server and later every event exactly once. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rpc/rpc.h"
#include "services/kvstore/kv_store.h"
#include "services/watch.h"
#include "tests/services/watch_client.h"

/* ---- the in-memory history ---------------------------------------------------------------- */

struct hev {
    int64_t rev, sub;
    int type;
    char key[32];
    uint8_t *val;
    size_t vlen;
    int64_t create, version;
    bool has_prev;
    int64_t prev_create, prev_mod, prev_version;
    uint8_t *prev_val;
    size_t prev_vlen;
};

static struct {
    pthread_mutex_t mu;
    struct hev *ev;
    size_t n, cap;
    int64_t rev, compact;
    struct watch_hub *hub;
} H = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* The latest event of key (NULL: absent or deleted). */
static struct hev *latest(const char *key)
{
    for (size_t i = H.n; i-- > 0;)
        if (!strcmp(H.ev[i].key, key))
            return H.ev[i].type == KV_EVENT_PUT ? &H.ev[i] : NULL;
    return NULL;
}

/* Adds an event at the current revision (the caller bumped it). */
static void add(int type, const char *key, const void *val, size_t vlen, int64_t sub)
{
    if (H.n == H.cap) {
        H.cap = H.cap ? H.cap * 2 : 64;
        H.ev = realloc(H.ev, H.cap * sizeof *H.ev);
    }
    struct hev *p = latest(key);
    struct hev e = {.rev = H.rev, .sub = sub, .type = type};
    snprintf(e.key, sizeof e.key, "%s", key);
    if (p) {
        e.has_prev = true;
        e.prev_create = p->create;
        e.prev_mod = p->rev;
        e.prev_version = p->version;
        e.prev_val = p->val;
        e.prev_vlen = p->vlen;
    }
    if (type == KV_EVENT_PUT) {
        e.val = malloc(vlen ? vlen : 1);
        memcpy(e.val, val, vlen);
        e.vlen = vlen;
        e.create = p ? p->create : H.rev;
        e.version = p ? p->version + 1 : 1;
    }
    H.ev[H.n++] = e;
}

static int64_t put_n(const char *key, const void *val, size_t vlen)
{
    pthread_mutex_lock(&H.mu);
    H.rev++;
    add(KV_EVENT_PUT, key, val, vlen, 0);
    int64_t rev = H.rev;
    pthread_mutex_unlock(&H.mu);
    watch_hub_notify(H.hub, rev);
    return rev;
}

static int64_t put(const char *key, const char *val) { return put_n(key, val, strlen(val)); }

static int64_t del(const char *key)
{
    pthread_mutex_lock(&H.mu);
    H.rev++;
    add(KV_EVENT_DELETE, key, NULL, 0, 0);
    int64_t rev = H.rev;
    pthread_mutex_unlock(&H.mu);
    watch_hub_notify(H.hub, rev);
    return rev;
}

/* One revision with n puts of keys prefix0.. with vlen-byte values. */
static int64_t txn(const char *prefix, int n, size_t vlen)
{
    char *v = malloc(vlen);
    memset(v, 'x', vlen);
    pthread_mutex_lock(&H.mu);
    H.rev++;
    for (int i = 0; i < n; i++) {
        char k[32];
        snprintf(k, sizeof k, "%s%03d", prefix, i);
        add(KV_EVENT_PUT, k, v, vlen, i);
    }
    int64_t rev = H.rev;
    pthread_mutex_unlock(&H.mu);
    free(v);
    watch_hub_notify(H.hub, rev);
    return rev;
}

static void compact(int64_t rev)
{
    pthread_mutex_lock(&H.mu);
    H.compact = rev;
    pthread_mutex_unlock(&H.mu);
}

/* kv_store_events's contract over the array. */
static int src(void *arg, int64_t from, size_t max, bool with_prev, kv_event_cb cb, void *cbarg,
               int64_t *next_rev, int64_t *cur_rev, int64_t *compact_rev, struct kv_err *err)
{
    (void)arg;
    pthread_mutex_lock(&H.mu);
    int64_t cur = H.rev, next = cur + 1;
    if (cur_rev)
        *cur_rev = cur;
    if (compact_rev)
        *compact_rev = H.compact;
    if (from > 0 && from < H.compact) {
        pthread_mutex_unlock(&H.mu);
        err->code = KV_CODE_OUT_OF_RANGE;
        snprintf(err->msg, sizeof err->msg, "%s", KV_ERR_COMPACTED);
        return -1;
    }
    size_t count = 0;
    int rc = 0;
    for (size_t i = 0; from > 0 && i < H.n; i++) {
        struct hev *e = &H.ev[i];
        if (e->rev < from)
            continue;
        if (max && count >= max && e->rev != H.ev[i - 1].rev) {
            next = e->rev;
            break;
        }
        struct kv_event ev = {.type = e->type, .rev = e->rev, .sub = e->sub};
        ev.kv.key = (const uint8_t *)e->key;
        ev.kv.klen = strlen(e->key);
        ev.kv.mod = e->rev;
        if (e->type == KV_EVENT_PUT) {
            ev.kv.create = e->create;
            ev.kv.version = e->version;
            ev.kv.val = e->val;
            ev.kv.vlen = e->vlen;
        }
        if (with_prev && e->has_prev) {
            ev.has_prev = true;
            ev.prev.key = ev.kv.key;
            ev.prev.klen = ev.kv.klen;
            ev.prev.create = e->prev_create;
            ev.prev.mod = e->prev_mod;
            ev.prev.version = e->prev_version;
            ev.prev.val = e->prev_val;
            ev.prev.vlen = e->prev_vlen;
        }
        count++;
        rc = cb(cbarg, &ev);
        if (rc != 0) {
            next = e->rev;
            break;
        }
    }
    pthread_mutex_unlock(&H.mu);
    if (next_rev)
        *next_rev = next;
    return rc < 0 ? rc : 0;
}

/* ---- the server ------------------------------------------------------------------------- */

static struct rpc_server *srv;
static struct rpc_channel *ch;
static uint64_t hub_bytes; /* max_hub_bytes for the next start (0 = default) */

static void start_with(size_t max_request, size_t max_send, unsigned per_stream,
                       uint64_t stream_bytes, uint64_t progress_ms)
{
    struct watch_config wc = {
        .cluster_id = 0xc1,
        .member_id = 0x31,
        .max_request_bytes = max_request,
        .max_send_bytes = max_send,
        .max_per_stream = per_stream,
        .max_stream_bytes = stream_bytes,
        .progress_interval_ms = progress_ms,
        .max_hub_bytes = hub_bytes,
        .events = src,
    };
    char err[256];
    H.hub = watch_hub_create(&wc, err, sizeof err);
    cr_assert(H.hub, "%s", err);
    struct rpc_server_config sc = {.listen = "127.0.0.1:0", .insecure = true,
                                   .max_send_bytes = max_send, .stream_queue = 16};
    srv = rpc_server_create(&sc, err, sizeof err);
    cr_assert(srv, "%s", err);
    cr_assert_eq(watch_hub_register(H.hub, srv, NULL), 0);
    cr_assert_eq(rpc_server_start(srv), 0);
    char target[32];
    snprintf(target, sizeof target, "127.0.0.1:%d", rpc_server_port(srv));
    struct rpc_channel_config cc = {.target = target, .insecure = true, .threads = 2,
                                    .max_recv_bytes = max_send};
    ch = rpc_channel_create(&cc, err, sizeof err);
    cr_assert(ch, "%s", err);
}

static void start(void) { start_with(1 << 20, 2 << 20, 0, 0, 0); }

static void stop(void)
{
    rpc_channel_destroy(ch);
    rpc_server_shutdown(srv, 1000);
    watch_hub_destroy(H.hub);
    for (size_t i = 0; i < H.n; i++)
        free(H.ev[i].val);
    free(H.ev);
    H.ev = NULL;
    H.n = H.cap = 0;
    H.rev = H.compact = 0;
}

/* ---- helpers ------------------------------------------------------------------------------ */

#define WAIT 5000

static Etcdserverpb__WatchResponse *next(struct wc *c)
{
    Etcdserverpb__WatchResponse *r = wc_next(c, WAIT);
    cr_assert(r, "no response within %d ms", WAIT);
    return r;
}

static void done(Etcdserverpb__WatchResponse *r) { etcdserverpb__watch_response__free_unpacked(r, NULL); }

/* Creates a watch and checks the created response; returns its id. */
static int64_t create(struct wc *c, struct wc_create cr)
{
    cr_assert_eq(wc_create(c, &cr), 0);
    Etcdserverpb__WatchResponse *r = next(c);
    cr_assert(r->created && !r->canceled, "create refused: %s", r->cancel_reason);
    cr_assert(r->header);
    cr_assert_eq(r->header->cluster_id, 0xc1);
    cr_assert_eq(r->header->member_id, 0x31);
    int64_t id = r->watch_id;
    done(r);
    return id;
}

/* A create that must be refused with reason. */
static void refused(struct wc *c, struct wc_create cr, const char *reason)
{
    cr_assert_eq(wc_create(c, &cr), 0);
    Etcdserverpb__WatchResponse *r = next(c);
    cr_assert(r->created && r->canceled);
    cr_assert_eq(r->watch_id, -1);
    cr_assert(strstr(r->cancel_reason, reason), "'%s' lacks '%s'", r->cancel_reason, reason);
    done(r);
}

static void expect_event(Etcdserverpb__WatchResponse *r, size_t i, int type, const char *key,
                         int64_t rev)
{
    cr_assert_gt(r->n_events, i);
    Mvccpb__Event *e = r->events[i];
    cr_assert_eq((int)e->type, type);
    cr_assert(e->kv);
    cr_assert_eq(e->kv->key.len, strlen(key));
    cr_assert(!memcmp(e->kv->key.data, key, strlen(key)), "key %.*s, want %s",
              (int)e->kv->key.len, e->kv->key.data, key);
    cr_assert_eq(e->kv->mod_revision, rev);
}

/* The next response is one event on watch id. */
static Etcdserverpb__WatchResponse *one(struct wc *c, int64_t id, int type, const char *key,
                                        int64_t rev)
{
    Etcdserverpb__WatchResponse *r = next(c);
    cr_assert_eq(r->watch_id, id);
    cr_assert_eq(r->n_events, 1, "%zu events", r->n_events);
    expect_event(r, 0, type, key, rev);
    return r;
}

/* Nothing more arrives: a progress request is answered next (it follows every event). */
static void nothing_more(struct wc *c)
{
    cr_assert_eq(wc_progress(c), 0);
    Etcdserverpb__WatchResponse *r = next(c);
    cr_assert_eq(r->watch_id, -1, "unexpected response for watch %lld (%zu events)",
                 (long long)r->watch_id, r->n_events);
    cr_assert_eq(r->n_events, 0);
    done(r);
}

/* ---- tests -------------------------------------------------------------------------------- */

Test(watch_hub, create_events_and_cancel, .init = start, .fini = stop, .timeout = 30)
{
    put("x", "0");
    struct wc *c = wc_open(ch);
    cr_assert_eq(wc_create(c, &(struct wc_create){.key = "a"}), 0);
    Etcdserverpb__WatchResponse *r = next(c);
    cr_assert(r->created && !r->canceled);
    cr_assert_eq(r->watch_id, 0, "etcd's first automatic id is 0");
    cr_assert_eq(r->header->revision, 1, "created at the current revision");
    done(r);
    int64_t r1 = put("a", "1");
    put("b", "1");
    int64_t r3 = del("a");
    done(one(c, 0, 0, "a", r1));
    done(one(c, 0, 1, "a", r3));
    cr_assert_eq(wc_cancel(c, 0), 0);
    r = next(c);
    cr_assert(r->canceled && !r->created);
    cr_assert_eq(r->watch_id, 0);
    done(r);
    put("a", "2");
    cr_assert_eq(wc_cancel(c, 42), 0); /* unknown: ignored, as etcd */
    nothing_more(c);
    wc_close(c);
}

Test(watch_hub, ranges_prefix_from_key_and_empty_key, .init = start, .fini = stop, .timeout = 30)
{
    struct wc *c = wc_open(ch);
    int64_t pre = create(c, (struct wc_create){.key = "p/", .end = "p0"});
    int64_t from = create(c, (struct wc_create){.key = "q", .end_zero = true});
    int64_t all = create(c, (struct wc_create){.key = "", .end_zero = true});
    int64_t rng = create(c, (struct wc_create){.key = "b", .end = "d"});
    int64_t r1 = put("p/1", "v");
    int64_t r2 = put("c", "v");
    int64_t r3 = put("z", "v");
    int64_t r4 = put("d", "v");
    /* Per revision, the responses of the watches it matches, each once. */
    int seen[4][4] = {{0}};
    int64_t ids[4] = {pre, from, all, rng};
    int64_t revs[4] = {r1, r2, r3, r4};
    int want[4][4] = {{1, 0, 1, 0}, {0, 0, 1, 1}, {0, 1, 1, 0}, {0, 0, 1, 0}};
    int total = 0;
    for (int k = 0; k < 4; k++)
        for (int j = 0; j < 4; j++)
            total += want[k][j];
    for (int n = 0; n < total; n++) {
        Etcdserverpb__WatchResponse *r = next(c);
        cr_assert_eq(r->n_events, 1);
        int k = -1, j = -1;
        for (int i = 0; i < 4; i++) {
            if (revs[i] == r->events[0]->kv->mod_revision)
                k = i;
            if (ids[i] == r->watch_id)
                j = i;
        }
        cr_assert(k >= 0 && j >= 0);
        seen[k][j]++;
        done(r);
    }
    for (int k = 0; k < 4; k++)
        for (int j = 0; j < 4; j++)
            cr_assert_eq(seen[k][j], want[k][j], "revision %d watch %d", k, j);
    nothing_more(c);
    wc_close(c);
}

Test(watch_hub, start_revision_past_and_future_and_prev_kv, .init = start, .fini = stop,
     .timeout = 30)
{
    int64_t r1 = put("k", "1");
    int64_t r2 = put("k", "2");
    int64_t r3 = del("k");
    struct wc *c = wc_open(ch);
    int64_t past = create(c, (struct wc_create){.key = "k", .start = r1, .prev_kv = true});
    /* Catch-up: the three revisions, in order, once each (one response may hold several). */
    int64_t want[] = {r1, r2, r3};
    int got = 0;
    while (got < 3) {
        Etcdserverpb__WatchResponse *r = next(c);
        cr_assert_eq(r->watch_id, past);
        for (size_t i = 0; i < r->n_events; i++, got++) {
            cr_assert_lt(got, 3);
            Mvccpb__Event *e = r->events[i];
            cr_assert_eq(e->kv->mod_revision, want[got]);
            if (got == 0)
                cr_assert_null(e->prev_kv, "a creation has no prev_kv");
            else
                cr_assert(e->prev_kv && e->prev_kv->mod_revision == want[got - 1]);
        }
        done(r);
    }
    cr_assert_eq(got, 3);
    int64_t fut = create(c, (struct wc_create){.key = "k", .start = r3 + 3});
    int64_t r4 = put("k", "4");
    done(one(c, past, 0, "k", r4));
    put("k", "5");
    int64_t r6 = put("k", "6");
    Etcdserverpb__WatchResponse *r = next(c);
    cr_assert_eq(r->watch_id, past);
    done(r);
    /* r6 = r3 + 3: both watches get it, in either order */
    bool f = false, p = false;
    for (int i = 0; i < 2; i++) {
        r = next(c);
        cr_assert_eq(r->events[0]->kv->mod_revision, r6);
        f |= r->watch_id == fut;
        p |= r->watch_id == past;
        done(r);
    }
    cr_assert(f && p);
    nothing_more(c);
    wc_close(c);
}

Test(watch_hub, filters_and_unknown_filter_values, .init = start, .fini = stop, .timeout = 30)
{
    struct wc *c = wc_open(ch);
    int64_t noput = create(c, (struct wc_create){.key = "f", .filters = {0}, .n_filters = 1});
    int64_t nodel = create(c, (struct wc_create){.key = "f", .filters = {1, 7}, .n_filters = 2});
    int64_t r1 = put("f", "1");
    done(one(c, nodel, 0, "f", r1));
    int64_t r2 = del("f");
    done(one(c, noput, 1, "f", r2));
    nothing_more(c);
    wc_close(c);
}

Test(watch_hub, compacted_start_revision, .init = start, .fini = stop, .timeout = 30)
{
    for (int i = 0; i < 5; i++)
        put("c", "v");
    compact(4);
    struct wc *c = wc_open(ch);
    int64_t id = create(c, (struct wc_create){.key = "c", .start = 2, .id = 9});
    cr_assert_eq(id, 9);
    Etcdserverpb__WatchResponse *r = next(c);
    cr_assert_eq(r->watch_id, 9);
    cr_assert(r->canceled);
    cr_assert_eq(r->compact_revision, 4);
    cr_assert_eq(r->n_events, 0);
    done(r);
    /* the id is free again */
    cr_assert_eq(create(c, (struct wc_create){.key = "c", .start = 4, .id = 9}), 9);
    r = next(c);
    cr_assert_eq(r->n_events, 2);
    cr_assert_eq(r->events[0]->kv->mod_revision, 4);
    done(r);
    nothing_more(c);
    wc_close(c);
}

Test(watch_hub, progress_request_and_ids, .init = start, .fini = stop, .timeout = 30)
{
    put("a", "1");
    struct wc *c = wc_open(ch);
    cr_assert_eq(wc_progress(c), 0); /* no watch: answered at once */
    Etcdserverpb__WatchResponse *r = next(c);
    cr_assert_eq(r->watch_id, -1);
    cr_assert_eq(r->header->revision, 1);
    done(r);
    cr_assert_eq(create(c, (struct wc_create){.key = "a", .id = 1}), 1);
    cr_assert_eq(create(c, (struct wc_create){.key = "a"}), 0);
    cr_assert_eq(create(c, (struct wc_create){.key = "a"}), 2, "automatic ids skip used ones");
    refused(c, (struct wc_create){.key = "a", .id = 1}, WATCH_ERR_DUP_ID);
    refused(c, (struct wc_create){.key = "b", .end = "a"}, WATCH_ERR_EMPTY_RANGE);
    refused(c, (struct wc_create){.key = "b", .end = "b"}, WATCH_ERR_EMPTY_RANGE);
    refused(c, (struct wc_create){.key = "a", .start = -3}, "start_revision");
    refused(c, (struct wc_create){.key = "a", .id = -5}, "watch_id");
    char big[WATCH_MAX_KEY + 2];
    memset(big, 'k', sizeof big - 1);
    big[sizeof big - 1] = 0;
    refused(c, (struct wc_create){.key = big}, "longer");
    int64_t r2 = put("a", "2");
    for (int i = 0; i < 3; i++)
        done(next(c));
    cr_assert_eq(wc_progress(c), 0);
    r = next(c);
    cr_assert_eq(r->watch_id, -1);
    cr_assert_eq(r->header->revision, r2);
    done(r);
    wc_close(c);
}

Test(watch_hub, garbage_ends_the_stream, .init = start, .fini = stop, .timeout = 30)
{
    struct wc *c = wc_open(ch);
    static const uint8_t garbage[] = {0x0a, 0x7f, 'x'};
    cr_assert_eq(wc_send_raw(c, garbage, sizeof garbage), 0);
    grpc_status_code st;
    cr_assert(wc_ended(c, WAIT, &st));
    cr_assert_eq(st, GRPC_STATUS_INVALID_ARGUMENT);
    wc_close(c);
    /* an empty request (no union member) is ignored, as etcd */
    c = wc_open(ch);
    cr_assert_eq(wc_send_raw(c, (const uint8_t *)"", 0), 0);
    nothing_more(c);
    wc_close(c);
}

static void start_small(void) { start_with(4096, 64 << 10, 8, 0, 300); }

Test(watch_hub, fragment_and_oversized_revisions, .init = start_small, .fini = stop, .timeout = 30)
{
    struct wc *c = wc_open(ch);
    int64_t frag = create(c, (struct wc_create){.key = "t/", .end = "t0", .fragment = true});
    int64_t whole = create(c, (struct wc_create){.key = "t/", .end = "t0"});
    int64_t rev = txn("t/", 10, 1000); /* ~10 KiB: over the 4 KiB fragment size */
    int frag_events = 0, frag_msgs = 0, whole_msgs = 0;
    bool last_seen = false;
    while (!last_seen || whole_msgs == 0) {
        Etcdserverpb__WatchResponse *r = next(c);
        if (r->watch_id == whole) {
            cr_assert_eq(r->n_events, 10, "without fragment: one response");
            cr_assert(!r->fragment);
            whole_msgs++;
        } else {
            cr_assert_eq(r->watch_id, frag);
            cr_assert(!last_seen);
            for (size_t i = 0; i < r->n_events; i++) {
                char k[8];
                snprintf(k, sizeof k, "t/%03d", frag_events + (int)i);
                expect_event(r, i, 0, k, rev);
            }
            frag_events += (int)r->n_events;
            frag_msgs++;
            last_seen = !r->fragment;
        }
        done(r);
    }
    cr_assert_eq(frag_events, 10);
    cr_assert_geq(frag_msgs, 3);
    cr_assert_eq(whole_msgs, 1);
    /* 100 KiB in one revision: over the 64 KiB message limit; the fragmenting watch gets it in
     * pieces, the other is canceled with a reason. */
    txn("t/", 100, 1000);
    frag_events = 0;
    bool canceled = false;
    last_seen = false;
    while (!last_seen || !canceled) {
        Etcdserverpb__WatchResponse *r = next(c);
        if (r->watch_id == whole) {
            cr_assert(r->canceled);
            cr_assert(strstr(r->cancel_reason, "fragment"), "%s", r->cancel_reason);
            canceled = true;
        } else {
            frag_events += (int)r->n_events;
            last_seen = !r->fragment;
        }
        done(r);
    }
    cr_assert_eq(frag_events, 100);
    struct watch_stats s;
    watch_hub_stats(H.hub, &s);
    cr_assert_geq(s.demoted, 1, "the 16-message queue filled mid-revision: resumed from history");
    nothing_more(c);
    wc_close(c);
}

Test(watch_hub, watches_per_stream_bound, .init = start_small, .fini = stop, .timeout = 30)
{
    struct wc *c = wc_open(ch);
    for (int i = 0; i < 8; i++)
        create(c, (struct wc_create){.key = "m"});
    refused(c, (struct wc_create){.key = "m"}, "too many watches");
    cr_assert_eq(wc_cancel(c, 3), 0);
    done(next(c));
    create(c, (struct wc_create){.key = "m"}); /* room again */
    /* another stream has its own bound */
    struct wc *d = wc_open(ch);
    create(d, (struct wc_create){.key = "m"});
    int64_t rev = put("m", "1");
    for (int i = 0; i < 9; i++) {
        Etcdserverpb__WatchResponse *r = wc_next(i < 8 ? c : d, WAIT);
        cr_assert(r);
        cr_assert_eq(r->events[0]->kv->mod_revision, rev);
        done(r);
    }
    wc_close(c);
    wc_close(d);
}

Test(watch_hub, progress_notify_when_quiet, .init = start_small, .fini = stop, .timeout = 30)
{
    struct wc *c = wc_open(ch);
    int64_t id = create(c, (struct wc_create){.key = "n", .progress_notify = true});
    int64_t rev = put("other", "1");
    /* Every 300 ms while nothing is sent to it: empty responses, the revision catching up. */
    for (int64_t seen = -1; seen != rev;) {
        Etcdserverpb__WatchResponse *r = next(c);
        cr_assert_eq(r->watch_id, id);
        cr_assert_eq(r->n_events, 0);
        cr_assert_leq(r->header->revision, rev);
        seen = r->header->revision;
        done(r);
    }
    wc_close(c);
}

static void start_small_hub(void)
{
    hub_bytes = 8 << 10;
    start_with(1 << 20, 2 << 20, 0, 0, 0);
    hub_bytes = 0;
}

/* The hub holds at most max_hub_bytes of one revision's events across its watches: past it,
 * the watches that would grow it catch up alone - and still get every event once. */
Test(watch_hub, hub_bound_moves_watches_to_catching_up, .init = start_small_hub, .fini = stop,
     .timeout = 30)
{
    struct wc *c = wc_open(ch);
    int64_t id[4];
    for (int i = 0; i < 4; i++)
        id[i] = create(c, (struct wc_create){.key = "h/", .end = "h0"});
    int64_t rev = txn("h/", 10, 1000); /* 10 KiB per watch, 40 KiB in all, over 8 KiB */
    int got[4] = {0};
    for (int n = 0; n < 40;) {
        Etcdserverpb__WatchResponse *r = next(c);
        int w = -1;
        for (int i = 0; i < 4; i++)
            if (id[i] == r->watch_id)
                w = i;
        cr_assert_geq(w, 0);
        for (size_t i = 0; i < r->n_events; i++) {
            char k[8];
            snprintf(k, sizeof k, "h/%03d", got[w]);
            expect_event(r, i, 0, k, rev);
            got[w]++;
            n++;
        }
        done(r);
    }
    for (int i = 0; i < 4; i++)
        cr_assert_eq(got[i], 10);
    struct watch_stats s;
    watch_hub_stats(H.hub, &s);
    cr_assert_geq(s.demoted, 1, "the bound was passed");
    nothing_more(c);
    wc_close(c);
}

static void start_slow(void) { start_with(1 << 20, 2 << 20, 0, 64 << 10, 0); }

/* A reader that stops reading: the server queues at most its bounds, the watch falls back to
 * catching up, and once the reader reads again it gets every event exactly once, in order. */
Test(watch_hub, slow_reader_bounded_then_every_event_once, .init = start_slow, .fini = stop,
     .timeout = 120)
{
    /* its own channel: its paused callback holds that channel's thread */
    char target[32], err[256];
    snprintf(target, sizeof target, "127.0.0.1:%d", rpc_server_port(srv));
    struct rpc_channel_config cc = {.target = target, .insecure = true, .threads = 1};
    struct rpc_channel *slow = rpc_channel_create(&cc, err, sizeof err);
    cr_assert(slow, "%s", err);
    struct wc *c = wc_open(slow);
    int64_t id = create(c, (struct wc_create){.key = "s/", .end = "s0"});
    struct wc *other = wc_open(ch); /* a fast reader on another stream is not held back */
    int64_t oid = create(other, (struct wc_create){.key = "s/", .end = "s0"});
    wc_pause(c, true);
    char val[1024];
    memset(val, 'v', sizeof val);
    enum { N = 3000 };
    int64_t first = 0;
    for (int i = 0; i < N; i++) {
        char k[16];
        snprintf(k, sizeof k, "s/%05d", i);
        int64_t r = put_n(k, val, sizeof val);
        if (!first)
            first = r;
    }
    /* The fast reader gets all N now, while c does not read. */
    int got = 0;
    while (got < N) {
        Etcdserverpb__WatchResponse *r = wc_next(other, WAIT);
        cr_assert(r, "fast reader stalled at %d", got);
        cr_assert_eq(r->watch_id, oid);
        got += (int)r->n_events;
        done(r);
    }
    struct watch_stats s;
    watch_hub_stats(H.hub, &s);
    cr_assert_geq(s.demoted, 1, "the slow stream's watch was moved back to catching up");
    wc_pause(c, false);
    int64_t want = first;
    while (want < first + N) {
        Etcdserverpb__WatchResponse *r = wc_next(c, WAIT);
        cr_assert(r, "slow reader got up to %lld", (long long)want);
        cr_assert_eq(r->watch_id, id);
        for (size_t i = 0; i < r->n_events; i++, want++)
            cr_assert_eq(r->events[i]->kv->mod_revision, want, "exactly once, in order");
        done(r);
    }
    nothing_more(c);
    watch_hub_stats(H.hub, &s);
    cr_assert_eq(s.unsynced, 0);
    wc_close(c);
    wc_close(other);
    rpc_channel_destroy(slow);
}

/* ---- a reference model --------------------------------------------------------------------- */

/* Random puts, deletes, multi-key revisions and compactions; watches created along the way with
 * random keys, ranges, start revisions, filters, prev_kv and fragment, on four streams, two of
 * which stop reading now and then. Once the writes end and every stream reports progress at the
 * last revision, each watch must have received exactly the history's matching events from its
 * start, in order, each once - or, if a compaction overtook it while it caught up, a prefix of
 * them and then the compacted cancel. */
struct mwatch {
    int stream;
    int64_t id, start;
    char key[8], end[8];
    int range; /* WATCH_KEY_* */
    bool no_put, no_delete, prev_kv;
    int64_t *revs; /* received: revision, key index (from the key's digits), type, prev */
    char (*keys)[8];
    int *types;
    bool *prevs;
    size_t n, cap;
    bool canceled;
    int64_t compact_rev;
};

static bool model_wants(const struct mwatch *w, const struct hev *e)
{
    if (e->rev < w->start)
        return false;
    if (e->type == KV_EVENT_DELETE ? w->no_delete : w->no_put)
        return false;
    return watch_key_matches(w->range, (const uint8_t *)w->key, strlen(w->key),
                             (const uint8_t *)w->end, strlen(w->end), (const uint8_t *)e->key,
                             strlen(e->key));
}

static void mw_take(struct mwatch *ws, int nw, int stream, Etcdserverpb__WatchResponse *r)
{
    if (r->watch_id == -1)
        return;
    struct mwatch *w = NULL;
    for (int i = 0; i < nw; i++)
        if (ws[i].stream == stream && ws[i].id == r->watch_id && !ws[i].canceled)
            w = &ws[i];
    cr_assert(w, "a response for unknown watch %lld on stream %d", (long long)r->watch_id,
              stream);
    if (r->canceled) {
        w->canceled = true;
        w->compact_rev = r->compact_revision;
        cr_assert_gt(r->compact_revision, 0, "canceled without compaction: %s", r->cancel_reason);
        return;
    }
    for (size_t i = 0; i < r->n_events; i++) {
        if (w->n == w->cap) {
            w->cap = w->cap ? w->cap * 2 : 64;
            w->revs = realloc(w->revs, w->cap * sizeof *w->revs);
            w->keys = realloc(w->keys, w->cap * sizeof *w->keys);
            w->types = realloc(w->types, w->cap * sizeof *w->types);
            w->prevs = realloc(w->prevs, w->cap * sizeof *w->prevs);
        }
        Mvccpb__Event *e = r->events[i];
        w->revs[w->n] = e->kv->mod_revision;
        snprintf(w->keys[w->n], sizeof w->keys[0], "%.*s", (int)e->kv->key.len, e->kv->key.data);
        w->types[w->n] = (int)e->type;
        w->prevs[w->n] = e->prev_kv != NULL;
        w->n++;
    }
}

static void model_run(unsigned seed)
{
    srand(seed);
    char target[32], err[256];
    snprintf(target, sizeof target, "127.0.0.1:%d", rpc_server_port(srv));
    struct rpc_channel_config cc = {.target = target, .insecure = true, .threads = 1};
    struct rpc_channel *slow = rpc_channel_create(&cc, err, sizeof err);
    cr_assert(slow, "%s", err);
    struct wc *st[4] = {wc_open(ch), wc_open(ch), wc_open(slow), wc_open(slow)};
    bool paused = false;
    enum { NW = 48, OPS = 1500 };
    static struct mwatch ws[NW];
    memset(ws, 0, sizeof ws);
    int nw = 0;
    int64_t synced_rev = 0; /* every watch of streams 0 and 1 was sent every event up to it */
    int64_t fast_floor = INT64_MAX; /* lowest start of their watches created since */
    char val[3000];
    memset(val, 'v', sizeof val);
    for (int op = 0; op < OPS; op++) {
        if (op % 100 == 99) {
            /* Writes here are instant; the hub is not. Now and then the writer waits for the
             * two reading streams' watches to be caught up (their progress responses), as a
             * client waiting on its writes would pace itself; a compaction later stays below
             * what both were sent, so only watches on the pausing streams can be overtaken. */
            for (int s2 = 0; s2 < 2; s2++) {
                cr_assert_eq(wc_progress(st[s2]), 0);
                for (;;) {
                    Etcdserverpb__WatchResponse *resp = next(st[s2]);
                    bool progress = resp->watch_id == -1;
                    if (progress && (s2 == 0 || resp->header->revision < synced_rev))
                        synced_rev = resp->header->revision;
                    if (!progress)
                        mw_take(ws, nw, s2, resp);
                    done(resp);
                    if (progress)
                        break;
                }
            }
            fast_floor = INT64_MAX;
        }
        int r = rand() % 100;
        char key[8];
        snprintf(key, sizeof key, "k%02d", rand() % 40);
        if (r < 55) {
            put_n(key, val, (size_t)(rand() % (int)sizeof val));
        } else if (r < 70) {
            del(key);
        } else if (r < 78) {
            char pre[4];
            snprintf(pre, sizeof pre, "t%d", rand() % 3);
            txn(pre, 1 + rand() % 12, (size_t)(rand() % 1500));
        } else if (r < 80) {
            int64_t limit = synced_rev < fast_floor ? synced_rev : fast_floor;
            pthread_mutex_lock(&H.mu);
            if (rand() % 2 == 0 && limit > 20 && H.compact < limit - 20)
                H.compact = limit - rand() % 20;
            pthread_mutex_unlock(&H.mu);
        } else if (r < 84 && !paused) {
            paused = true;
            wc_pause(st[2], true); /* both slow streams share the one channel thread */
        } else if (r < 90 && paused) {
            paused = false;
            wc_pause(st[2], false);
        } else if (r < 100 && nw < NW) {
            struct mwatch *w = &ws[nw];
            w->stream = rand() % 4;
            if (paused && w->stream >= 2)
                w->stream = rand() % 2; /* its created response must be read now */
            struct wc_create c = {0};
            int kind = rand() % 4;
            snprintf(w->key, sizeof w->key, "%s", kind == 3 ? "t" : key);
            if (kind == 1 || kind == 3) {
                snprintf(w->end, sizeof w->end, "%s", kind == 3 ? "u" : "k3");
                w->range = WATCH_KEY_RANGE;
                if (strcmp(w->key, w->end) >= 0)
                    snprintf(w->key, sizeof w->key, "k0");
                c.end = w->end;
            } else if (kind == 2) {
                w->range = WATCH_KEY_FROM;
                c.end_zero = true;
            }
            c.key = w->key;
            pthread_mutex_lock(&H.mu);
            int64_t cur = H.rev, lo = H.compact > 1 ? H.compact : 1;
            pthread_mutex_unlock(&H.mu);
            int64_t start = rand() % 3 == 0 ? 0 : lo + rand() % (cur - lo + 6);
            c.start = start;
            w->no_put = rand() % 6 == 0;
            w->no_delete = !w->no_put && rand() % 6 == 0;
            if (w->no_put)
                c.filters[c.n_filters++] = 0;
            if (w->no_delete)
                c.filters[c.n_filters++] = 1;
            c.prev_kv = w->prev_kv = rand() % 2;
            c.fragment = rand() % 2;
            cr_assert_eq(wc_create(st[w->stream], &c), 0);
            /* the created response: responses of other watches of the stream may come first */
            for (;;) {
                Etcdserverpb__WatchResponse *resp = next(st[w->stream]);
                if (resp->created) {
                    cr_assert(!resp->canceled, "%s", resp->cancel_reason);
                    w->id = resp->watch_id;
                    w->start = start ? start : resp->header->revision + 1;
                    if (w->stream < 2 && w->start < fast_floor)
                        fast_floor = w->start;
                    done(resp);
                    break;
                }
                mw_take(ws, nw, w->stream, resp);
                done(resp);
            }
            nw++;
        }
    }
    if (paused)
        wc_pause(st[2], false);
    pthread_mutex_lock(&H.mu);
    int64_t last = H.rev;
    pthread_mutex_unlock(&H.mu);
    /* Every stream: a progress response at the last revision means all was sent. */
    for (int s = 0; s < 4; s++) {
        for (int64_t seen = 0; seen < last;) {
            cr_assert_eq(wc_progress(st[s]), 0);
            for (;;) {
                Etcdserverpb__WatchResponse *resp = next(st[s]);
                bool progress = resp->watch_id == -1;
                if (progress)
                    seen = resp->header->revision;
                else
                    mw_take(ws, nw, s, resp);
                done(resp);
                if (progress)
                    break;
            }
        }
    }
    for (int i = 0; i < nw; i++) {
        struct mwatch *w = &ws[i];
        size_t k = 0;
        pthread_mutex_lock(&H.mu);
        for (size_t j = 0; j < H.n; j++) {
            struct hev *e = &H.ev[j];
            if (!model_wants(w, e))
                continue;
            if (k == w->n) {
                cr_assert(w->canceled, "seed %u watch %d (%s..%s from %lld): %zu events, missing "
                          "rev %lld",
                          seed, i, w->key, w->end, (long long)w->start, w->n, (long long)e->rev);
                /* a compaction overtook it while it caught up: its position was below it */
                int64_t pos = w->n ? w->revs[w->n - 1] : w->start;
                cr_assert_lt(pos, w->compact_rev, "seed %u watch %d", seed, i);
                break;
            }
            cr_assert_eq(w->revs[k], e->rev, "seed %u watch %d event %zu", seed, i, k);
            cr_assert_str_eq(w->keys[k], e->key, "seed %u watch %d event %zu", seed, i, k);
            cr_assert_eq(w->types[k], e->type);
            cr_assert_eq(w->prevs[k], w->prev_kv && e->has_prev, "seed %u watch %d event %zu",
                         seed, i, k);
            k++;
        }
        pthread_mutex_unlock(&H.mu);
        cr_assert_eq(k, w->n, "seed %u watch %d: %zu extra events", seed, i, w->n - k);
        cr_assert(!w->canceled || w->stream >= 2, "seed %u watch %d of reading stream %d was "
                  "overtaken by a compaction below what its stream had been sent",
                  seed, i, w->stream);
    }
    size_t total = 0, canceled = 0;
    for (int i = 0; i < nw; i++) {
        total += ws[i].n;
        canceled += ws[i].canceled;
        if (getenv("MODEL_DEBUG") && ws[i].canceled)
            fprintf(stderr, "  watch %d stream %d start %lld got %zu last %lld compact %lld\n", i,
                    ws[i].stream, (long long)ws[i].start, ws[i].n,
                    (long long)(ws[i].n ? ws[i].revs[ws[i].n - 1] : 0),
                    (long long)ws[i].compact_rev);
    }
    struct watch_stats hs;
    watch_hub_stats(H.hub, &hs);
    fprintf(stderr, "seed %u: %d watches, %zu events checked, %zu canceled by compaction, %llu "
                    "demotions\n",
            seed, nw, total, canceled, (unsigned long long)hs.demoted);
    cr_assert_gt(total, 1000, "the model checked too little");
    for (int i = 0; i < nw; i++) {
        free(ws[i].revs);
        free(ws[i].keys);
        free(ws[i].types);
        free(ws[i].prevs);
    }
    for (int s = 0; s < 4; s++)
        wc_close(st[s]);
    rpc_channel_destroy(slow);
}

static void start_model(void) { start_with(8192, 64 << 10, 0, 64 << 10, 0); }

Test(watch_hub, reference_model_seed_1, .init = start_model, .fini = stop, .timeout = 120)
{
    model_run(1);
}

Test(watch_hub, reference_model_seed_2, .init = start_model, .fini = stop, .timeout = 120)
{
    model_run(2);
}

Test(watch_hub, reference_model_seed_3, .init = start_model, .fini = stop, .timeout = 120)
{
    model_run(3);
}

/* The default bound: 1024 watches on one stream, the next refused; one write reaches all. */
Test(watch_hub, thousands_of_watches_on_one_stream, .init = start, .fini = stop, .timeout = 60)
{
    struct wc *c = wc_open(ch);
    for (int i = 0; i < WATCH_DEFAULT_MAX_PER_STREAM; i++) {
        char k[16];
        snprintf(k, sizeof k, "w/%04d", i % 100);
        cr_assert_eq(wc_create(c, &(struct wc_create){.key = k}), 0);
    }
    for (int i = 0; i < WATCH_DEFAULT_MAX_PER_STREAM; i++) {
        Etcdserverpb__WatchResponse *r = next(c);
        cr_assert(r->created && !r->canceled);
        cr_assert_eq(r->watch_id, i);
        done(r);
    }
    refused(c, (struct wc_create){.key = "w/0000"}, "too many watches");
    int64_t rev = put("w/0007", "x"); /* watched by ids 7, 107, ..., 1007 */
    for (int i = 0; i < 11; i++) {
        Etcdserverpb__WatchResponse *r = next(c);
        cr_assert_eq(r->watch_id % 100, 7);
        cr_assert_eq(r->events[0]->kv->mod_revision, rev);
        done(r);
    }
    nothing_more(c);
    wc_close(c);
}

/* A snapshot restore can take the store back (the commit hook reports a lower revision): the
 * revisions it then replays were sent already and are skipped, not sent twice. */
Test(watch_hub, restore_back_skips_what_was_sent, .init = start, .fini = stop, .timeout = 30)
{
    struct wc *c = wc_open(ch);
    int64_t id = create(c, (struct wc_create){.key = "r"});
    int64_t r1 = put("r", "1");
    int64_t r2 = put("r", "2");
    int64_t r3 = put("r", "3");
    done(one(c, id, 0, "r", r1));
    done(one(c, id, 0, "r", r2));
    done(one(c, id, 0, "r", r3));
    nothing_more(c); /* the hub has passed r3 */
    pthread_mutex_lock(&H.mu); /* back to r1, as a restored snapshot */
    for (size_t i = 1; i < H.n; i++)
        free(H.ev[i].val);
    H.n = 1;
    H.rev = r1;
    pthread_mutex_unlock(&H.mu);
    watch_hub_notify(H.hub, r1);
    cr_assert_eq(put("r", "2"), r2); /* the log replayed */
    cr_assert_eq(put("r", "3"), r3);
    int64_t r4 = put("r", "4");
    done(one(c, id, 0, "r", r4));
    nothing_more(c);
    wc_close(c);
}
