/* Lifecycles: reconnect after a server restart, server shutdown and channel destroy with
 * calls and streams in flight, stream endings from either side. Clean under ASan. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "tests/rpc/util.h"

TestSuite(rpc_life, .fini = tt_leak_check);

#define DEADLINE 10000

struct cb_run {
    long n;
    atomic_int *fired;
    atomic_int status_count[17];
    struct tt_latch done;
};

struct cb_arg {
    struct cb_run *run;
    long i;
};

static void on_done(struct rpc_result *res, void *argp)
{
    struct cb_arg *a = argp;
    atomic_fetch_add(&a->run->fired[a->i], 1);
    static atomic_int reported;
    if (res->status != GRPC_STATUS_OK && res->status != GRPC_STATUS_CANCELLED &&
        res->status != GRPC_STATUS_UNAVAILABLE && atomic_fetch_add(&reported, 1) == 0)
        fprintf(stderr, "call %ld: %d %s\n", a->i, res->status, res->message);
    if ((int)res->status >= 0 && (int)res->status < 17)
        atomic_fetch_add(&a->run->status_count[res->status], 1);
    tt_latch_add(&a->run->done, 1);
    free(a);
}

static void cb_run_init(struct cb_run *run, long n)
{
    memset(run, 0, sizeof *run);
    run->n = n;
    run->fired = calloc((size_t)n, sizeof *run->fired);
    tt_latch_init(&run->done);
}

static void issue(struct rpc_channel *ch, struct cb_run *run, long i, const char *method,
                  int deadline_ms)
{
    struct cb_arg *a = malloc(sizeof *a);
    a->run = run;
    a->i = i;
    cr_assert_eq(rpc_channel_call_async(ch, method, "m", 1, deadline_ms, on_done, a), 0);
}

/* Completes every held call and stream; returns how many completions were no-ops. */
static int release_held(void)
{
    int closed = 0;
    pthread_mutex_lock(&tt_held.mu);
    for (int i = 0; i < tt_held.ncalls; i++) {
        int rc = rpc_call_reply(tt_held.calls[i], "late", 4);
        cr_assert(rc == 0 || rc == RPC_ECLOSED, "%d", rc);
        closed += rc == RPC_ECLOSED;
    }
    for (int i = 0; i < tt_held.nstreams; i++) {
        int rc = rpc_stream_finish(tt_held.streams[i], GRPC_STATUS_OK, NULL);
        cr_assert(rc == 0 || rc == RPC_ECLOSED, "%d", rc);
        closed += rc == RPC_ECLOSED;
    }
    tt_held.ncalls = tt_held.nstreams = 0;
    pthread_mutex_unlock(&tt_held.mu);
    return closed;
}

struct cs_run {
    atomic_int closes;
    grpc_status_code status;
    atomic_long msgs;
    struct tt_latch closed;
};

static void cs_msg(struct rpc_client_stream *s, const uint8_t *d, size_t l, void *arg)
{
    (void)s, (void)d, (void)l;
    struct cs_run *r = arg;
    atomic_fetch_add(&r->msgs, 1);
}

static void cs_close(struct rpc_client_stream *s, grpc_status_code st, const char *m, void *arg)
{
    (void)s, (void)m;
    struct cs_run *r = arg;
    r->status = st;
    atomic_fetch_add(&r->closes, 1);
    tt_latch_add(&r->closed, 1);
}

static const struct rpc_client_stream_handler cs_h = {cs_msg, cs_close, NULL};

Test(rpc_life, reconnect_after_server_restart, .timeout = 60)
{
    struct rpc_server *srv = tt_server_start("server", 0, NULL);
    int port = rpc_server_port(srv);
    struct rpc_channel *fast = tt_channel(port, "a", "client", NULL);
    struct rpc_channel_config wcfg = {.wait_for_ready = true};
    struct rpc_channel *waiting = tt_channel(port, "a", "client", &wcfg);
    struct rpc_result r;
    cr_assert_eq(rpc_channel_call(fast, TT_ECHO, "1", 1, DEADLINE, &r), 0);
    cr_assert_eq(r.status, GRPC_STATUS_OK);
    rpc_result_free(&r);
    cr_assert_eq(rpc_channel_call(waiting, TT_ECHO, "1", 1, DEADLINE, &r), 0);
    cr_assert_eq(r.status, GRPC_STATUS_OK);
    rpc_result_free(&r);

    rpc_server_shutdown(srv, 1000);
    /* server down: a fail-fast call is UNAVAILABLE, and quickly */
    cr_assert_eq(rpc_channel_call(fast, TT_ECHO, "2", 1, DEADLINE, &r), 0);
    cr_assert_eq(r.status, GRPC_STATUS_UNAVAILABLE, "status %d: %s", r.status, r.message);
    rpc_result_free(&r);
    /* a wait-for-ready call made now waits for the server to come back */
    struct cb_run run;
    cb_run_init(&run, 1);
    issue(waiting, &run, 0, TT_ECHO, 20000);

    srv = tt_server_start("server", port, NULL);
    cr_assert_eq(rpc_server_port(srv), port);
    cr_assert_eq(tt_latch_wait(&run.done, 1, 30000), 1);
    cr_assert_eq(atomic_load(&run.status_count[GRPC_STATUS_OK]), 1, "waiting call did not succeed");
    /* The fail-fast channel reconnects too, with no call waiting on it: the channel's own
     * connectivity watch must get its socket polled (rpc_grpc_init picks the poll engine,
     * under which nobody else would, and each connect step would wait for gRPC's 5 s backup
     * poller). gRPC reports no event for the reconnect, so poll with calls until a bound of
     * 4 s: its backoff is capped at reconnect_max_ms = 1 s by default. */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int ok = 0;
    double waited = 0;
    while (!ok && waited < 4.0) {
        cr_assert_eq(rpc_channel_call(fast, TT_ECHO, "3", 1, 1000, &r), 0);
        ok = r.status == GRPC_STATUS_OK;
        rpc_result_free(&r);
        if (!ok)
            usleep(20000);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        waited = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    }
    cr_assert(ok, "no reconnect within %.1f s", waited);
    rpc_channel_destroy(fast);
    rpc_channel_destroy(waiting);
    rpc_server_shutdown(srv, 1000);
    free(run.fired);
}

Test(rpc_life, server_shutdown_cancels_calls_in_flight, .timeout = 60)
{
    struct rpc_server *srv = tt_server_start("server", 0, NULL);
    struct rpc_channel *ch = tt_channel(rpc_server_port(srv), "a", "client", NULL);
    enum { N = 100, NS = 5 };
    struct cb_run run;
    cb_run_init(&run, N);
    for (long i = 0; i < N; i++)
        issue(ch, &run, i, TT_HOLD, 60000);
    struct cs_run sr[NS];
    struct rpc_client_stream *ss[NS];
    for (int k = 0; k < NS; k++) {
        memset(&sr[k], 0, sizeof sr[k]);
        tt_latch_init(&sr[k].closed);
        ss[k] = rpc_channel_stream_open(ch, TT_HOLD_STREAM, &cs_h, &sr[k]);
        cr_assert(ss[k]);
        cr_assert_eq(rpc_client_stream_send(ss[k], "s", 1, 1000), 0);
    }
    tt_wait_held(N, NS);

    /* nothing completes on its own: the short grace runs out and the rest is cancelled */
    rpc_server_shutdown(srv, 100);
    cr_assert_eq(tt_latch_wait(&run.done, N, 30000), N);
    for (long i = 0; i < N; i++)
        cr_assert_eq(atomic_load(&run.fired[i]), 1);
    cr_assert_eq(atomic_load(&run.status_count[GRPC_STATUS_OK]), 0);
    for (int k = 0; k < NS; k++) {
        cr_assert_eq(tt_latch_wait(&sr[k].closed, 1, 30000), 1);
        cr_assert_neq(sr[k].status, GRPC_STATUS_OK);
        cr_assert_eq(rpc_client_stream_send(ss[k], "x", 1, 0), RPC_ECLOSED);
        cr_assert_eq(rpc_client_stream_close(ss[k]), RPC_ECLOSED);
    }
    pthread_mutex_lock(&tt_held.mu);
    cr_assert_eq(tt_held.stream_closes, NS, "each server stream saw on_close once");
    cr_assert_eq(tt_held.last_close, GRPC_STATUS_CANCELLED);
    pthread_mutex_unlock(&tt_held.mu);
    /* handlers still hold their calls: completing them now is a harmless no-op that frees them */
    cr_assert_eq(release_held(), N + NS);
    rpc_channel_destroy(ch);
    for (int k = 0; k < NS; k++)
        cr_assert_eq(atomic_load(&sr[k].closes), 1);
    free(run.fired);
}

static void *reply_held_later(void *arg)
{
    (void)arg;
    release_held();
    return NULL;
}

Test(rpc_life, server_shutdown_grace_lets_calls_finish, .timeout = 60)
{
    struct rpc_server *srv = tt_server_start("server", 0, NULL);
    struct rpc_channel *ch = tt_channel(rpc_server_port(srv), "a", "client", NULL);
    enum { N = 20 };
    struct cb_run run;
    cb_run_init(&run, N);
    for (long i = 0; i < N; i++)
        issue(ch, &run, i, TT_HOLD, 60000);
    tt_wait_held(N, 0);
    /* another thread answers while shutdown waits out its (long) grace */
    pthread_t th;
    pthread_create(&th, NULL, reply_held_later, NULL);
    rpc_server_shutdown(srv, 20000);
    pthread_join(th, NULL);
    cr_assert_eq(tt_latch_wait(&run.done, N, 30000), N);
    cr_assert_eq(atomic_load(&run.status_count[GRPC_STATUS_OK]), N);
    rpc_channel_destroy(ch);
    free(run.fired);
}

Test(rpc_life, channel_destroy_cancels_calls_in_flight, .timeout = 60)
{
    struct rpc_server *srv = tt_server_start("server", 0, NULL);
    struct rpc_channel *ch = tt_channel(rpc_server_port(srv), "a", "client", NULL);
    enum { N = 500, NS = 4 };
    struct cb_run run;
    cb_run_init(&run, N);
    for (long i = 0; i < N; i++)
        issue(ch, &run, i, TT_HOLD, 60000);
    struct cs_run sr[NS];
    for (int k = 0; k < NS; k++) {
        memset(&sr[k], 0, sizeof sr[k]);
        tt_latch_init(&sr[k].closed);
        struct rpc_client_stream *s = rpc_channel_stream_open(ch, TT_HOLD_STREAM, &cs_h, &sr[k]);
        cr_assert(s);
        cr_assert_eq(rpc_client_stream_send(s, "s", 1, 1000), 0);
        if (k % 2)
            cr_assert_eq(rpc_client_stream_close(s), 0); /* handle given back early */
        /* even k: the handle is still held when the channel goes; its husk is freed below */
        if (k % 2 == 0)
            sr[k].msgs = (long)(intptr_t)s;
    }
    tt_wait_held(N, NS);
    rpc_channel_destroy(ch);
    /* destroy returns after every callback ran, once, with CANCELLED */
    cr_assert_eq(tt_latch_wait(&run.done, N, 1), N);
    for (long i = 0; i < N; i++)
        cr_assert_eq(atomic_load(&run.fired[i]), 1);
    cr_assert_eq(atomic_load(&run.status_count[GRPC_STATUS_CANCELLED]), N);
    for (int k = 0; k < NS; k++) {
        cr_assert_eq(atomic_load(&sr[k].closes), 1);
        cr_assert_eq(sr[k].status, GRPC_STATUS_CANCELLED);
        if (k % 2 == 0) {
            struct rpc_client_stream *s = (struct rpc_client_stream *)(intptr_t)sr[k].msgs;
            cr_assert_eq(rpc_client_stream_send(s, "x", 1, 0), RPC_ECLOSED);
            cr_assert_eq(rpc_client_stream_cancel(s), RPC_ECLOSED);
        }
    }
    /* the server sees the cancellations too: its calls become no-ops to complete */
    rpc_server_shutdown(srv, 2000);
    cr_assert_eq(release_held(), N + NS);
    free(run.fired);
}

/* ---- stream endings ------------------------------------------------------------------ */

Test(rpc_life, client_cancel_reaches_server_stream, .timeout = 60)
{
    struct rpc_server *srv = tt_server_start("server", 0, NULL);
    struct rpc_channel *ch = tt_channel(rpc_server_port(srv), "a", "client", NULL);
    struct cs_run r = {0};
    tt_latch_init(&r.closed);
    struct rpc_client_stream *s = rpc_channel_stream_open(ch, TT_HOLD_STREAM, &cs_h, &r);
    cr_assert_eq(rpc_client_stream_send(s, "s", 1, 1000), 0);
    tt_wait_held(0, 1);
    cr_assert_eq(rpc_client_stream_cancel(s), 0);
    cr_assert_eq(tt_latch_wait(&r.closed, 1, 10000), 1);
    cr_assert_eq(r.status, GRPC_STATUS_CANCELLED);
    pthread_mutex_lock(&tt_held.mu);
    while (tt_held.stream_closes < 1)
        pthread_cond_wait(&tt_held.cv, &tt_held.mu);
    cr_assert_eq(tt_held.last_close, GRPC_STATUS_CANCELLED);
    pthread_mutex_unlock(&tt_held.mu);
    cr_assert_eq(release_held(), 1);
    rpc_channel_destroy(ch);
    rpc_server_shutdown(srv, 1000);
}

Test(rpc_life, server_finish_reaches_client_with_status, .timeout = 60)
{
    struct rpc_server *srv = tt_server_start("server", 0, NULL);
    struct rpc_channel *ch = tt_channel(rpc_server_port(srv), "a", "client", NULL);
    struct cs_run r = {0};
    tt_latch_init(&r.closed);
    struct rpc_client_stream *s = rpc_channel_stream_open(ch, TT_HOLD_STREAM, &cs_h, &r);
    cr_assert_eq(rpc_client_stream_send(s, "s", 1, 1000), 0);
    tt_wait_held(0, 1);
    pthread_mutex_lock(&tt_held.mu);
    struct rpc_stream *ss = tt_held.streams[0];
    tt_held.nstreams = 0;
    pthread_mutex_unlock(&tt_held.mu);
    /* identity is there on streams too */
    struct rpc_peer p;
    cr_assert_eq(rpc_stream_peer_identity(ss, &p), 0);
    cr_assert_str_eq(p.cn, "client");
    /* messages queued before finish go out first, in order */
    cr_assert_eq(rpc_stream_send(ss, "one", 3), 0);
    cr_assert_eq(rpc_stream_send(ss, "two", 3), 0);
    cr_assert_eq(rpc_stream_finish(ss, GRPC_STATUS_FAILED_PRECONDITION, "not the leader"), 0);
    cr_assert_eq(tt_latch_wait(&r.closed, 1, 10000), 1);
    cr_assert_eq(r.status, GRPC_STATUS_FAILED_PRECONDITION);
    cr_assert_eq(atomic_load(&r.msgs), 2);
    cr_assert_eq(rpc_client_stream_send(s, "x", 1, 0), RPC_ECLOSED);
    cr_assert_eq(rpc_client_stream_close(s), RPC_ECLOSED);
    rpc_channel_destroy(ch);
    rpc_server_shutdown(srv, 1000);
}

Test(rpc_life, bounded_client_send_queue, .timeout = 60)
{
    /* The server's handler blocks in its first on_message, so the server stops reading and
     * HTTP/2 flow control stops our writes; the bounded queue then fills and says so. */
    struct rpc_server *srv = tt_server_start("server", 0, NULL);
    struct rpc_channel_config cfg = {.stream_queue = 4, .max_send_bytes = 8u << 20};
    struct rpc_channel *ch = tt_channel(rpc_server_port(srv), "a", "client", &cfg);
    struct cs_run r = {0};
    tt_latch_init(&r.closed);
    struct rpc_client_stream *s = rpc_channel_stream_open(ch, TT_SINK, &cs_h, &r);
    size_t big = 1u << 20;
    uint8_t *buf = calloc(1, big);
    int rc = 0, sent = 0;
    /* at most: one write in flight + 4 queued + what the flow-control windows absorb */
    while (sent < 64 && (rc = rpc_client_stream_send(s, buf, big, 0)) == 0)
        sent++;
    cr_assert_eq(rc, RPC_EFULL, "queue never filled (sent %d): %s", sent, rpc_strerror(rc));
    /* writes may still drain into gRPC's and the kernel's buffers for a while (gRPC grows
     * the HTTP/2 window); a blocking send must eventually time out all the same */
    while (sent < 256 && (rc = rpc_client_stream_send(s, buf, big, 300)) == 0)
        sent++;
    cr_assert_eq(rc, RPC_ETIMEDOUT, "sent %d: %s", sent, rpc_strerror(rc));
    /* once the server reads again, a blocking send finds room */
    tt_gate_open();
    cr_assert_eq(rpc_client_stream_send(s, buf, big, 10000), 0);
    free(buf);
    cr_assert_eq(rpc_client_stream_close(s), 0);
    cr_assert_eq(tt_latch_wait(&r.closed, 1, 10000), 1);
    cr_assert_eq(r.status, GRPC_STATUS_OK);
    rpc_channel_destroy(ch);
    rpc_server_shutdown(srv, 1000);
}

Test(rpc_life, completing_twice_is_refused, .timeout = 60)
{
    struct rpc_server *srv = tt_server_start("server", 0, NULL);
    struct rpc_channel *ch = tt_channel(rpc_server_port(srv), "a", "client", NULL);
    struct cb_run run;
    cb_run_init(&run, 1);
    issue(ch, &run, 0, TT_HOLD, DEADLINE);
    tt_wait_held(1, 0);
    pthread_mutex_lock(&tt_held.mu);
    struct rpc_call *c = tt_held.calls[0];
    tt_held.ncalls = 0;
    pthread_mutex_unlock(&tt_held.mu);
    cr_assert_eq(rpc_call_fail(c, GRPC_STATUS_OK, "ok is not a failure"), RPC_EINVAL);
    cr_assert_eq(rpc_call_fail(c, GRPC_STATUS_NOT_FOUND, "no such key"), 0);
    /* c is freed once gRPC is done with it; a second completion is a caller bug we cannot
     * detect safely after that, so it is only checked while the call is alive (see rpc.h) */
    cr_assert_eq(tt_latch_wait(&run.done, 1, 10000), 1);
    cr_assert_eq(atomic_load(&run.status_count[GRPC_STATUS_NOT_FOUND]), 1);
    rpc_channel_destroy(ch);
    rpc_server_shutdown(srv, 1000);
    free(run.fired);
}

/* Client side whose on_message blocks until released: the client stops reading. */
static pthread_mutex_t cgate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cgate_cv = PTHREAD_COND_INITIALIZER;
static bool cgate_open;

static void cs_msg_blocking(struct rpc_client_stream *s, const uint8_t *d, size_t l, void *arg)
{
    pthread_mutex_lock(&cgate_mu);
    while (!cgate_open)
        pthread_cond_wait(&cgate_cv, &cgate_mu);
    pthread_mutex_unlock(&cgate_mu);
    cs_msg(s, d, l, arg);
}

Test(rpc_life, bounded_server_send_queue, .timeout = 60)
{
    struct rpc_server_config scfg = {.stream_queue = 4, .max_send_bytes = 8u << 20};
    struct rpc_server *srv = tt_server_start("server", 0, &scfg);
    struct rpc_channel_config cfg = {.max_recv_bytes = 8u << 20};
    struct rpc_channel *ch = tt_channel(rpc_server_port(srv), "a", "client", &cfg);
    struct cs_run r = {0};
    tt_latch_init(&r.closed);
    static const struct rpc_client_stream_handler h = {cs_msg_blocking, cs_close, NULL};
    struct rpc_client_stream *s = rpc_channel_stream_open(ch, TT_HOLD_STREAM, &h, &r);
    cr_assert_eq(rpc_client_stream_send(s, "s", 1, 1000), 0);
    tt_wait_held(0, 1);
    pthread_mutex_lock(&tt_held.mu);
    struct rpc_stream *ss = tt_held.streams[0];
    tt_held.nstreams = 0;
    pthread_mutex_unlock(&tt_held.mu);
    /* the client reads nothing, so the server's writes stall and its queue fills; the server
     * side never blocks, it says RPC_EFULL */
    size_t big = 1u << 20;
    uint8_t *buf = calloc(1, big);
    int rc = 0, sent = 0;
    while (sent < 256 && (rc = rpc_stream_send(ss, buf, big)) == 0)
        sent++;
    cr_assert_eq(rc, RPC_EFULL, "sent %d: %s", sent, rpc_strerror(rc));
    free(buf);
    cr_assert_eq(rpc_stream_finish(ss, GRPC_STATUS_OK, NULL), 0);
    /* released, the client gets every queued message, then the status */
    pthread_mutex_lock(&cgate_mu);
    cgate_open = true;
    pthread_cond_broadcast(&cgate_cv);
    pthread_mutex_unlock(&cgate_mu);
    cr_assert_eq(tt_latch_wait(&r.closed, 1, 30000), 1);
    cr_assert_eq(r.status, GRPC_STATUS_OK);
    cr_assert_eq(atomic_load(&r.msgs), sent);
    cr_assert_eq(rpc_client_stream_close(s), RPC_ECLOSED);
    rpc_channel_destroy(ch);
    rpc_server_shutdown(srv, 1000);
}

/* on_sent: a server stream that answers each request with a burst of three messages gets one
 * on_sent per burst (the writes complete on the stream's own thread, after on_message has queued
 * all three), never after on_close; a client gets on_sent once its message is written. */
#define BURST_METHOD "/craft.echo.Echo/Burst"

struct burst {
    atomic_int sent, after_close, closed;
    struct tt_latch drained;
};
static struct burst burst;

static void burst_message(struct rpc_stream *s, const uint8_t *d, size_t n, void *user)
{
    (void)d, (void)n, (void)user;
    for (int i = 0; i < 3; i++)
        cr_assert_eq(rpc_stream_send(s, "b", 1), 0);
}

static void burst_sent(struct rpc_stream *s, void *user)
{
    (void)s, (void)user;
    if (atomic_load(&burst.closed))
        atomic_fetch_add(&burst.after_close, 1);
    atomic_fetch_add(&burst.sent, 1);
    tt_latch_add(&burst.drained, 1);
}

static void burst_close(struct rpc_stream *s, grpc_status_code st, void *user)
{
    (void)st, (void)user;
    atomic_store(&burst.closed, 1);
    rpc_stream_finish(s, GRPC_STATUS_OK, NULL);
}

struct client_sent {
    atomic_int sent;
    struct tt_latch latch;
};

static void cs_sent(struct rpc_client_stream *s, void *arg)
{
    (void)s;
    struct client_sent *c = arg;
    atomic_fetch_add(&c->sent, 1);
    tt_latch_add(&c->latch, 1);
}

static struct client_sent client_sent;
static struct cs_run burst_run;

static void bcs_msg(struct rpc_client_stream *s, const uint8_t *d, size_t l, void *arg)
{
    (void)arg;
    cs_msg(s, d, l, &burst_run);
}

static void bcs_close(struct rpc_client_stream *s, grpc_status_code st, const char *m, void *arg)
{
    (void)arg;
    cs_close(s, st, m, &burst_run);
}

static void bcs_sent(struct rpc_client_stream *s, void *arg)
{
    (void)arg;
    cs_sent(s, &client_sent);
}

Test(rpc_life, on_sent_fires_once_the_send_queue_drains, .timeout = 60)
{
    memset(&burst, 0, sizeof burst);
    tt_latch_init(&burst.drained);
    memset(&client_sent, 0, sizeof client_sent);
    tt_latch_init(&client_sent.latch);
    memset(&burst_run, 0, sizeof burst_run);
    tt_latch_init(&burst_run.closed);

    struct tt_tls tls;
    tt_tls(&tls, "a", "server");
    struct rpc_server_config sc = {.listen = "127.0.0.1:0", .tls = &tls.tls, .threads = 1};
    char err[256];
    struct rpc_server *srv = rpc_server_create(&sc, err, sizeof err);
    cr_assert(srv, "%s", err);
    static const struct rpc_stream_handler h = {NULL, burst_message, burst_close, burst_sent};
    cr_assert_eq(rpc_server_register_stream(srv, BURST_METHOD, &h, NULL), 0);
    cr_assert_eq(rpc_server_start(srv), 0);
    struct rpc_channel *ch = tt_channel(rpc_server_port(srv), "a", "client", NULL);
    static const struct rpc_client_stream_handler ch_h = {bcs_msg, bcs_close, bcs_sent};
    struct rpc_client_stream *s = rpc_channel_stream_open(ch, BURST_METHOD, &ch_h, NULL);
    cr_assert(s);
    for (int round = 1; round <= 5; round++) {
        cr_assert_eq(rpc_client_stream_send(s, "q", 1, 1000), 0);
        cr_assert_eq(tt_latch_wait(&client_sent.latch, round, 10000), round);
        cr_assert_eq(tt_latch_wait(&burst.drained, round, 10000), round);
    }
    /* Three messages per burst, one on_sent per burst (not one per message). */
    cr_assert_eq(atomic_load(&burst.sent), 5);
    cr_assert_eq(atomic_load(&client_sent.sent), 5);
    cr_assert_eq(rpc_client_stream_close(s), 0);
    cr_assert_eq(tt_latch_wait(&burst_run.closed, 1, 10000), 1);
    cr_assert_eq(atomic_load(&burst_run.msgs), 15);
    rpc_channel_destroy(ch);
    rpc_server_shutdown(srv, 1000);
    cr_assert_eq(atomic_load(&burst.after_close), 0);
}

/* ---- rpc_stream_hold_reads: a handler with work outstanding per request stops reading ---- */

#define HOLDREADS_METHOD "/craft.test.T/HoldReads"

static struct {
    struct tt_latch msgs;
    _Atomic(struct rpc_stream *) s;
} hr;

static void hr_message(struct rpc_stream *s, const uint8_t *d, size_t l, void *user)
{
    (void)d, (void)l, (void)user;
    if (!atomic_load(&hr.s)) { /* the first request: hold until the test releases */
        atomic_store(&hr.s, s);
        cr_assert_eq(rpc_stream_hold_reads(s, true), 0);
    }
    tt_latch_add(&hr.msgs, 1);
}

static void hr_close(struct rpc_stream *s, grpc_status_code st, void *user)
{
    (void)st, (void)user;
    rpc_stream_finish(s, GRPC_STATUS_OK, NULL);
}

Test(rpc_life, hold_reads_stops_and_resumes_reading, .timeout = 60)
{
    memset(&hr, 0, sizeof hr);
    tt_latch_init(&hr.msgs);
    struct cs_run run;
    memset(&run, 0, sizeof run);
    tt_latch_init(&run.closed);
    struct tt_tls tls;
    tt_tls(&tls, "a", "server");
    struct rpc_server_config sc = {.listen = "127.0.0.1:0", .tls = &tls.tls, .threads = 1};
    char err[256];
    struct rpc_server *srv = rpc_server_create(&sc, err, sizeof err);
    cr_assert(srv, "%s", err);
    static const struct rpc_stream_handler h = {NULL, hr_message, hr_close, NULL};
    cr_assert_eq(rpc_server_register_stream(srv, HOLDREADS_METHOD, &h, NULL), 0);
    cr_assert_eq(rpc_server_start(srv), 0);
    struct rpc_channel *ch = tt_channel(rpc_server_port(srv), "a", "client", NULL);
    struct rpc_client_stream *s = rpc_channel_stream_open(ch, HOLDREADS_METHOD, &cs_h, &run);
    cr_assert(s);
    for (int i = 0; i < 10; i++)
        cr_assert_eq(rpc_client_stream_send(s, "q", 1, 1000), 0);
    cr_assert_eq(tt_latch_wait(&hr.msgs, 1, 10000), 1);
    /* held: the other nine stay unread (a bounded wait for something that must not happen) */
    cr_assert_eq(tt_latch_wait(&hr.msgs, 2, 300), 1);
    /* released from another thread than the stream's: reading resumes */
    cr_assert_eq(rpc_stream_hold_reads(atomic_load(&hr.s), false), 0);
    cr_assert_eq(tt_latch_wait(&hr.msgs, 10, 10000), 10);
    cr_assert_eq(rpc_client_stream_close(s), 0);
    cr_assert_eq(tt_latch_wait(&run.closed, 1, 10000), 1);
    cr_assert_eq(run.status, GRPC_STATUS_OK);
    rpc_channel_destroy(ch);
    rpc_server_shutdown(srv, 1000);
}
