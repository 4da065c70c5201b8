/* watch_client.c: see watch_client.h. */
#include "tests/services/watch_client.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct item {
    Etcdserverpb__WatchResponse *r;
    struct item *next;
};

struct wc {
    struct rpc_client_stream *s;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct item *head, *tail;
    int n;
    bool ended, paused;
    grpc_status_code status;
};

static void deadline(struct timespec *ts, int ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000;
    if (ts->tv_nsec >= 1000000000) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000;
    }
}

static void on_message(struct rpc_client_stream *s, const uint8_t *data, size_t len, void *arg)
{
    (void)s;
    struct wc *c = arg;
    Etcdserverpb__WatchResponse *r = etcdserverpb__watch_response__unpack(NULL, len, data);
    pthread_mutex_lock(&c->mu);
    while (c->paused) /* a reader that does not read: the channel thread waits here */
        pthread_cond_wait(&c->cv, &c->mu);
    struct item *it = calloc(1, sizeof *it);
    it->r = r;
    if (c->tail)
        c->tail->next = it;
    else
        c->head = it;
    c->tail = it;
    c->n++;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

static void on_close(struct rpc_client_stream *s, grpc_status_code status, const char *msg,
                     void *arg)
{
    (void)s, (void)msg;
    struct wc *c = arg;
    pthread_mutex_lock(&c->mu);
    c->ended = true;
    c->status = status;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

static const struct rpc_client_stream_handler handler = {
    .on_message = on_message,
    .on_close = on_close,
};

struct wc *wc_open(struct rpc_channel *ch)
{
    struct wc *c = calloc(1, sizeof *c);
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    c->s = rpc_channel_stream_open(ch, "/etcdserverpb.Watch/Watch", &handler, c);
    if (!c->s) {
        free(c);
        return NULL;
    }
    return c;
}

void wc_close(struct wc *c)
{
    if (!c)
        return;
    wc_pause(c, false);
    rpc_client_stream_close(c->s); /* gives the handle back, ended or not */
    grpc_status_code st;
    if (!wc_ended(c, 10000, &st))
        return; /* leaked on purpose: on_close may still fire */
    pthread_mutex_lock(&c->mu);
    while (c->head) {
        struct item *it = c->head;
        c->head = it->next;
        if (it->r)
            etcdserverpb__watch_response__free_unpacked(it->r, NULL);
        free(it);
    }
    pthread_mutex_unlock(&c->mu);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c);
}

static int send_req(struct wc *c, Etcdserverpb__WatchRequest *req)
{
    size_t n = etcdserverpb__watch_request__get_packed_size(req);
    uint8_t *p = malloc(n ? n : 1);
    etcdserverpb__watch_request__pack(req, p);
    int rc = rpc_client_stream_send(c->s, p, n, 5000);
    free(p);
    return rc;
}

int wc_send_raw(struct wc *c, const uint8_t *data, size_t len)
{
    return rpc_client_stream_send(c->s, data, len, 5000);
}

int wc_create(struct wc *c, const struct wc_create *r)
{
    Etcdserverpb__WatchCreateRequest cr = ETCDSERVERPB__WATCH_CREATE_REQUEST__INIT;
    static uint8_t zero[1] = {0};
    cr.key.data = (uint8_t *)r->key;
    cr.key.len = r->key ? strlen(r->key) : 0;
    if (r->end_zero) {
        cr.range_end.data = zero;
        cr.range_end.len = 1;
    } else if (r->end) {
        cr.range_end.data = (uint8_t *)r->end;
        cr.range_end.len = strlen(r->end);
    }
    cr.start_revision = r->start;
    cr.watch_id = r->id;
    cr.prev_kv = r->prev_kv;
    cr.fragment = r->fragment;
    cr.progress_notify = r->progress_notify;
    Etcdserverpb__WatchCreateRequest__FilterType f[4];
    for (int i = 0; i < r->n_filters; i++)
        f[i] = (Etcdserverpb__WatchCreateRequest__FilterType)r->filters[i];
    cr.filters = f;
    cr.n_filters = (size_t)r->n_filters;
    Etcdserverpb__WatchRequest req = ETCDSERVERPB__WATCH_REQUEST__INIT;
    req.request_union_case = ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST;
    req.create_request = &cr;
    return send_req(c, &req);
}

int wc_cancel(struct wc *c, int64_t id)
{
    Etcdserverpb__WatchCancelRequest cr = ETCDSERVERPB__WATCH_CANCEL_REQUEST__INIT;
    cr.watch_id = id;
    Etcdserverpb__WatchRequest req = ETCDSERVERPB__WATCH_REQUEST__INIT;
    req.request_union_case = ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CANCEL_REQUEST;
    req.cancel_request = &cr;
    return send_req(c, &req);
}

int wc_progress(struct wc *c)
{
    Etcdserverpb__WatchProgressRequest pr = ETCDSERVERPB__WATCH_PROGRESS_REQUEST__INIT;
    Etcdserverpb__WatchRequest req = ETCDSERVERPB__WATCH_REQUEST__INIT;
    req.request_union_case = ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_PROGRESS_REQUEST;
    req.progress_request = &pr;
    return send_req(c, &req);
}

Etcdserverpb__WatchResponse *wc_next(struct wc *c, int timeout_ms)
{
    struct timespec ts;
    deadline(&ts, timeout_ms);
    pthread_mutex_lock(&c->mu);
    while (!c->head && !c->ended)
        if (pthread_cond_timedwait(&c->cv, &c->mu, &ts) != 0)
            break;
    Etcdserverpb__WatchResponse *r = NULL;
    if (c->head) {
        struct item *it = c->head;
        c->head = it->next;
        if (!c->head)
            c->tail = NULL;
        c->n--;
        r = it->r;
        free(it);
    }
    pthread_mutex_unlock(&c->mu);
    return r;
}

bool wc_ended(struct wc *c, int timeout_ms, grpc_status_code *status)
{
    struct timespec ts;
    deadline(&ts, timeout_ms);
    pthread_mutex_lock(&c->mu);
    while (!c->ended)
        if (pthread_cond_timedwait(&c->cv, &c->mu, &ts) != 0)
            break;
    bool e = c->ended;
    if (status)
        *status = c->status;
    pthread_mutex_unlock(&c->mu);
    return e;
}

void wc_pause(struct wc *c, bool paused)
{
    pthread_mutex_lock(&c->mu);
    c->paused = paused;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

int wc_queued(struct wc *c)
{
    pthread_mutex_lock(&c->mu);
    int n = c->n;
    pthread_mutex_unlock(&c->mu);
    return n;
}
