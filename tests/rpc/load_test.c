/* Volume: many async calls in flight on one channel, and one long ordered bidi stream.
 * CRAFT_RPC_SCALE scales the counts (default 1.0: 10,000 calls, 100,000 messages). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "tests/rpc/util.h"

TestSuite(rpc_load, .fini = tt_leak_check);

struct async_run {
    long n;
    atomic_long *fired;   /* per call: how many times its callback ran */
    atomic_long mismatched, failed;
    struct tt_latch done;
};

struct async_arg {
    struct async_run *run;
    long i;
};

static void fill_payload(long i, uint8_t *buf, size_t *len)
{
    /* each request differs in content and length, so a reply matched to the wrong call shows */
    *len = 8 + (size_t)(i % 64);
    tt_put_seq(buf, (uint64_t)i);
    for (size_t k = 8; k < *len; k++)
        buf[k] = (uint8_t)(i * 31 + (long)k);
}

static void on_async(struct rpc_result *res, void *argp)
{
    struct async_arg *a = argp;
    struct async_run *run = a->run;
    atomic_fetch_add(&run->fired[a->i], 1);
    if (res->status != GRPC_STATUS_OK) {
        if (atomic_fetch_add(&run->failed, 1) == 0)
            fprintf(stderr, "call %ld: status %d %s\n", a->i, res->status, res->message);
    } else {
        uint8_t want[80];
        size_t wlen;
        fill_payload(a->i, want, &wlen);
        if (res->len != wlen || memcmp(res->data, want, wlen) != 0)
            atomic_fetch_add(&run->mismatched, 1);
    }
    free(a);
    tt_latch_add(&run->done, 1);
}

Test(rpc_load, ten_thousand_async_calls_in_flight, .timeout = 120)
{
    struct rpc_server *srv = tt_server_start("server", 0, NULL);
    struct rpc_channel *ch = tt_channel(rpc_server_port(srv), "a", "client", NULL);
    struct async_run run = {.n = tt_scaled(10000, 100)};
    run.fired = calloc((size_t)run.n, sizeof *run.fired);
    tt_latch_init(&run.done);
    /* all are issued before any is waited for: the whole set is in flight at once */
    for (long i = 0; i < run.n; i++) {
        struct async_arg *a = malloc(sizeof *a);
        a->run = &run;
        a->i = i;
        uint8_t buf[80];
        size_t len;
        fill_payload(i, buf, &len);
        cr_assert_eq(rpc_channel_call_async(ch, TT_ECHO, buf, len, 60000, on_async, a), 0);
    }
    cr_assert_eq(tt_latch_wait(&run.done, run.n, 100000), run.n, "not all callbacks fired");
    cr_assert_eq(atomic_load(&run.failed), 0);
    cr_assert_eq(atomic_load(&run.mismatched), 0, "a reply did not match its request");
    for (long i = 0; i < run.n; i++)
        cr_assert_eq(atomic_load(&run.fired[i]), 1, "callback %ld fired %ld times", i,
                     atomic_load(&run.fired[i]));
    cr_assert_eq(atomic_load(&tt_counts.echo), run.n);
    rpc_channel_destroy(ch);
    rpc_server_shutdown(srv, 1000);
    free(run.fired);
}

Test(rpc_load, inflight_bound_is_enforced, .timeout = 60)
{
    struct rpc_server *srv = tt_server_start("server", 0, NULL);
    struct rpc_channel_config cfg = {.max_inflight = 3};
    struct rpc_channel *ch = tt_channel(rpc_server_port(srv), "a", "client", &cfg);
    struct async_run run = {.n = 3};
    run.fired = calloc(3, sizeof *run.fired);
    tt_latch_init(&run.done);
    for (long i = 0; i < 3; i++) {
        struct async_arg *a = malloc(sizeof *a);
        *a = (struct async_arg){&run, i};
        cr_assert_eq(rpc_channel_call_async(ch, TT_HOLD, "h", 1, 60000, on_async, a), 0);
    }
    /* the server holds all three: a fourth does not fit */
    pthread_mutex_lock(&tt_held.mu);
    while (tt_held.ncalls < 3)
        pthread_cond_wait(&tt_held.cv, &tt_held.mu);
    pthread_mutex_unlock(&tt_held.mu);
    cr_assert_eq(rpc_channel_call_async(ch, TT_ECHO, "x", 1, 1000, on_async, NULL), RPC_EFULL);
    struct rpc_result r;
    cr_assert_eq(rpc_channel_call(ch, TT_ECHO, "x", 1, 1000, &r), RPC_EFULL);
    rpc_result_free(&r);
    pthread_mutex_lock(&tt_held.mu);
    for (int i = 0; i < tt_held.ncalls; i++) {
        uint8_t buf[80];
        size_t len;
        fill_payload(i, buf, &len); /* order of arrival is not order of issue: any payload */
        cr_assert_eq(rpc_call_fail(tt_held.calls[i], GRPC_STATUS_ABORTED, "released"), 0);
    }
    tt_held.ncalls = 0;
    pthread_mutex_unlock(&tt_held.mu);
    cr_assert_eq(tt_latch_wait(&run.done, 3, 30000), 3);
    cr_assert_eq(atomic_load(&run.failed), 3);
    /* and room again afterwards */
    cr_assert_eq(rpc_channel_call(ch, TT_ECHO, "x", 1, 10000, &r), 0);
    cr_assert_eq(r.status, GRPC_STATUS_OK);
    rpc_result_free(&r);
    rpc_channel_destroy(ch);
    rpc_server_shutdown(srv, 1000);
    free(run.fired);
}

/* ---- ordered stream ----------------------------------------------------------------- */

struct stream_run {
    uint64_t next;       /* next sequence number expected back (callbacks: one thread) */
    atomic_long out_of_order;
    struct tt_latch got;
    struct tt_latch closed;
    grpc_status_code close_status;
    char close_msg[256];
    atomic_int closes;
};

static void cs_message(struct rpc_client_stream *s, const uint8_t *data, size_t len, void *arg)
{
    (void)s;
    struct stream_run *r = arg;
    if (len < 8 || tt_get_seq(data) != r->next)
        atomic_fetch_add(&r->out_of_order, 1);
    r->next++;
    tt_latch_add(&r->got, 1);
}

static void cs_close(struct rpc_client_stream *s, grpc_status_code st, const char *msg, void *arg)
{
    (void)s;
    struct stream_run *r = arg;
    r->close_status = st;
    snprintf(r->close_msg, sizeof r->close_msg, "%s", msg);
    atomic_fetch_add(&r->closes, 1);
    tt_latch_add(&r->closed, 1);
}

Test(rpc_load, bidi_stream_keeps_order, .timeout = 120)
{
    struct rpc_server *srv = tt_server_start("server", 0, NULL);
    struct rpc_channel *ch = tt_channel(rpc_server_port(srv), "a", "client", NULL);
    long n = tt_scaled(100000, 1000);
    struct stream_run run = {0};
    tt_latch_init(&run.got);
    tt_latch_init(&run.closed);
    static const struct rpc_client_stream_handler h = {cs_message, cs_close, NULL};
    struct rpc_client_stream *s = rpc_channel_stream_open(ch, TT_STREAM, &h, &run);
    cr_assert(s);
    uint8_t buf[32];
    memset(buf, 0xab, sizeof buf);
    for (long i = 0; i < n; i++) {
        tt_put_seq(buf, (uint64_t)i);
        int rc = rpc_client_stream_send(s, buf, sizeof buf, 30000);
        cr_assert_eq(rc, 0, "send %ld: %s", i, rpc_strerror(rc));
    }
    cr_assert_eq(tt_latch_wait(&run.got, n, 100000), n, "not every message came back");
    cr_assert_eq(rpc_client_stream_close(s), 0);
    cr_assert_eq(tt_latch_wait(&run.closed, 1, 30000), 1);
    cr_assert_eq(run.close_status, GRPC_STATUS_OK, "close: %d %s", run.close_status, run.close_msg);
    cr_assert_eq(atomic_load(&run.out_of_order), 0, "messages came back out of order");
    cr_assert_eq(atomic_load(&tt_counts.stream_msgs), n);
    cr_assert_eq(atomic_load(&tt_counts.stream_open), 1);
    rpc_channel_destroy(ch);
    cr_assert_eq(atomic_load(&run.closes), 1, "on_close must fire once");
    rpc_server_shutdown(srv, 1000);
}

/* Many streams at once on one channel, each checked for order. */
Test(rpc_load, concurrent_streams_each_keep_order, .timeout = 120)
{
    struct rpc_server *srv = tt_server_start("server", 0, NULL);
    struct rpc_channel_config cfg = {.threads = 2};
    struct rpc_channel *ch = tt_channel(rpc_server_port(srv), "a", "client", &cfg);
    enum { NS = 16 };
    long n = tt_scaled(2000, 100);
    struct stream_run runs[NS];
    struct rpc_client_stream *ss[NS];
    static const struct rpc_client_stream_handler h = {cs_message, cs_close, NULL};
    for (int k = 0; k < NS; k++) {
        memset(&runs[k], 0, sizeof runs[k]);
        tt_latch_init(&runs[k].got);
        tt_latch_init(&runs[k].closed);
        ss[k] = rpc_channel_stream_open(ch, TT_STREAM, &h, &runs[k]);
        cr_assert(ss[k]);
    }
    uint8_t buf[16];
    for (long i = 0; i < n; i++)
        for (int k = 0; k < NS; k++) {
            tt_put_seq(buf, (uint64_t)i);
            cr_assert_eq(rpc_client_stream_send(ss[k], buf, sizeof buf, 30000), 0);
        }
    for (int k = 0; k < NS; k++) {
        cr_assert_eq(rpc_client_stream_close(ss[k]), 0);
        cr_assert_eq(tt_latch_wait(&runs[k].closed, 1, 60000), 1);
        cr_assert_eq(tt_latch_wait(&runs[k].got, n, 1000), n);
        cr_assert_eq(runs[k].close_status, GRPC_STATUS_OK, "%s", runs[k].close_msg);
        cr_assert_eq(atomic_load(&runs[k].out_of_order), 0);
    }
    rpc_channel_destroy(ch);
    rpc_server_shutdown(srv, 1000);
}
