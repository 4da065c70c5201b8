/* services/forward.h on its own: two members' peers and forwarding over real loopback gRPC with
 * mutual TLS, with a test proposer on the leader instead of a Raft node (it answers at once, or
 * holds items for the test to answer). Thousands of forwards complete exactly once, packed into
 * far fewer batches; a stream broken mid-flight fails every waiting forward exactly once and the
 * answers that arrive after it are dropped; deadlines and the in-flight bound hold; a non-member
 * certificate, a malformed batch, another cluster's batch and an over-full batch are refused. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "services/cluster.h"
#include "services/forward.h"
#include "services/peer.h"
#include "services/proto/raftpb.pb-c.h"
#include "tests/cluster/harness.h"

#define FORWARDS "/craft.raft.Peer/Forwards"
#define MAXN 20000

static struct hc C; /* directory, certificates, ports */
static struct cluster cl;
static struct peer *peer[2];
static struct rpc_server *srv[2];
static struct fwd *fwd[2];
static struct rpc_tls tls[2];
static char certf[2][400], keyf[2][400];

/* The test proposer: answers with result = command at once, or holds the items. */
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool hold;
    int proposed;
    struct fwd_item *held[MAXN];
    int nheld;
} prop = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static void propose(void *ctx, struct fwd_item *item, const uint8_t *cmd, size_t len)
{
    (void)ctx;
    pthread_mutex_lock(&prop.mu);
    int n = ++prop.proposed;
    bool hold = prop.hold;
    if (hold)
        prop.held[prop.nheld++] = item;
    pthread_cond_broadcast(&prop.cv);
    pthread_mutex_unlock(&prop.mu);
    if (!hold)
        fwd_reply(item, &(struct fwd_answer){0, NULL, cmd, len, (uint64_t)n});
}

static void wait_proposed(int n)
{
    pthread_mutex_lock(&prop.mu);
    while (prop.proposed < n)
        pthread_cond_wait(&prop.cv, &prop.mu);
    pthread_mutex_unlock(&prop.mu);
}

/* Completions, one record per submitted forward. */
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    atomic_int fired[MAXN];
    int err[MAXN];
    char result[MAXN][16];
} rec = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static void on_done(void *arg, int err, const struct fwd_answer *a)
{
    long i = (long)(intptr_t)arg;
    atomic_fetch_add(&rec.fired[i], 1);
    rec.err[i] = err;
    if (err == FWD_OK && a->len < sizeof rec.result[i]) {
        if (a->len)
            memcpy(rec.result[i], a->result, a->len);
        rec.result[i][a->len] = '\0';
    }
    pthread_mutex_lock(&rec.mu);
    rec.done++;
    pthread_cond_broadcast(&rec.cv);
    pthread_mutex_unlock(&rec.mu);
}

static bool wait_done(int n, int timeout_ms)
{
    int64_t until = hc_now_ms() + timeout_ms;
    pthread_mutex_lock(&rec.mu);
    while (rec.done < n && hc_now_ms() < until) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000000L; /* re-check the clock: the wait itself is event-driven */
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&rec.cv, &rec.mu, &ts);
    }
    bool ok = rec.done >= n;
    pthread_mutex_unlock(&rec.mu);
    return ok;
}

static void start_member(int i, int max_inflight)
{
    struct peer_config pc = {.cluster = &cl, .self_id = cl.members[i].id, .tls = &tls[i]};
    char err[256];
    peer[i] = peer_create(&pc, err, sizeof err);
    cr_assert(peer[i], "%s", err);
    char listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", C.m[i].peer_port);
    struct rpc_server_config sc = {.listen = listen, .tls = &tls[i]};
    srv[i] = rpc_server_create(&sc, err, sizeof err);
    cr_assert(srv[i], "%s", err);
    struct fwd_config fc = {.peer = peer[i], .cluster = &cl, .propose = propose,
                            .max_inflight = max_inflight};
    fwd[i] = fwd_create(&fc);
    cr_assert(fwd[i]);
    cr_assert_eq(fwd_register(fwd[i], srv[i]), 0);
    cr_assert_eq(rpc_server_start(srv[i]), 0);
}

static void setup_with(int max_inflight)
{
    hc_setup(&C, 2, 50, 300);
    char spec[256], err[256];
    snprintf(spec, sizeof spec, "n1=https://127.0.0.1:%d,n2=https://127.0.0.1:%d",
             C.m[0].peer_port, C.m[1].peer_port);
    cr_assert_eq(cluster_parse(spec, "fwd-test", &cl, err, sizeof err), 0, "%s", err);
    for (int i = 0; i < 2; i++) {
        snprintf(certf[i], sizeof certf[i], "%s/%s.pem", C.certs, C.m[i].name);
        snprintf(keyf[i], sizeof keyf[i], "%s/%s-key.pem", C.certs, C.m[i].name);
        tls[i] = (struct rpc_tls){.ca_file = C.ca, .cert_file = certf[i], .key_file = keyf[i]};
    }
    prop.hold = false;
    prop.proposed = prop.nheld = 0;
    memset(rec.fired, 0, sizeof rec.fired);
    rec.done = 0;
    for (int i = 0; i < 2; i++)
        start_member(i, max_inflight);
}

static void setup(void) { setup_with(0); }
static void setup_small(void) { setup_with(8); }

/* The order kv_service and craft_server keep: servers, then peers, then fwd. */
static void teardown(void)
{
    for (int i = 0; i < 2; i++)
        if (srv[i])
            rpc_server_shutdown(srv[i], 0);
    for (int i = 0; i < 2; i++) {
        peer_destroy(peer[i]);
        fwd_destroy(fwd[i]);
        srv[i] = NULL;
    }
    hc_teardown(&C);
}

static int submit(long i, int deadline_ms)
{
    char cmd[24];
    int n = snprintf(cmd, sizeof cmd, "c%ld", i);
    return fwd_submit(fwd[1], cl.members[0].id, (const uint8_t *)cmd, (size_t)n, deadline_ms,
                      on_done, (void *)(intptr_t)i);
}

Test(forward, twenty_thousand_forwards_complete_once_packed_into_batches, .init = setup,
     .fini = teardown, .timeout = 120)
{
    for (long i = 0; i < MAXN; i++) {
        int rc;
        while ((rc = submit(i, 20000)) == FWD_EBUSY) {
            /* 4,096 wait already: let some complete (an event, not a sleep). */
            pthread_mutex_lock(&rec.mu);
            int seen = rec.done;
            while (rec.done == seen)
                pthread_cond_wait(&rec.cv, &rec.mu);
            pthread_mutex_unlock(&rec.mu);
        }
        cr_assert_eq(rc, FWD_OK, "submit %ld: %d", i, rc);
    }
    cr_assert(wait_done(MAXN, 60000), "only %d of %d completed", rec.done, MAXN);
    for (long i = 0; i < MAXN; i++) {
        char want[24];
        snprintf(want, sizeof want, "c%ld", i);
        cr_assert_eq(atomic_load(&rec.fired[i]), 1, "forward %ld completed %d times", i,
                     atomic_load(&rec.fired[i]));
        cr_assert_eq(rec.err[i], FWD_OK, "forward %ld: %d", i, rec.err[i]);
        cr_assert_str_eq(rec.result[i], want, "forward %ld got another's answer", i);
    }
    struct fwd_stats f, l;
    fwd_stats_get(fwd[1], &f);
    fwd_stats_get(fwd[0], &l);
    cr_log_info("follower: %llu items in %llu batches; leader: %llu answers in %llu batches",
                (unsigned long long)f.items_sent, (unsigned long long)f.batches_sent,
                (unsigned long long)l.answers_sent, (unsigned long long)l.answer_batches_sent);
    cr_assert_eq(f.items_sent, MAXN);
    cr_assert_eq(f.streams_opened, 1);
    cr_assert_eq(l.items_received, MAXN);
    cr_assert_eq(l.answers_sent, MAXN);
    /* Submitted faster than one write at a time can carry them: they must have been packed. */
    cr_assert_lt(f.batches_sent, MAXN / 4);
    cr_assert_lt(l.answer_batches_sent, MAXN / 4);
}

Test(forward, a_broken_stream_fails_every_waiting_forward_once, .init = setup, .fini = teardown,
     .timeout = 60)
{
    prop.hold = true;
    const int n = 1000;
    for (long i = 0; i < n; i++)
        cr_assert_eq(submit(i, 30000), FWD_OK);
    wait_proposed(n);
    /* The leader's peer port goes away with 1,000 forwards unanswered. */
    rpc_server_shutdown(srv[0], 0);
    srv[0] = NULL;
    cr_assert(wait_done(n, 10000), "only %d of %d completed after the stream broke", rec.done, n);
    for (long i = 0; i < n; i++) {
        cr_assert_eq(atomic_load(&rec.fired[i]), 1);
        cr_assert_eq(rec.err[i], FWD_ENOLEADER, "forward %ld: %d", i, rec.err[i]);
    }
    /* The applier's answers arrive after the stream ended: dropped, and nothing completes twice
     * (under ASan this also checks that nothing touches the finished stream). */
    pthread_mutex_lock(&prop.mu);
    for (int i = 0; i < prop.nheld; i++)
        fwd_reply(prop.held[i], &(struct fwd_answer){0, NULL, (const uint8_t *)"late", 4, 1});
    prop.nheld = 0;
    pthread_mutex_unlock(&prop.mu);
    for (long i = 0; i < n; i++)
        cr_assert_eq(atomic_load(&rec.fired[i]), 1);
    /* A forward now fails (at once or when its new stream fails), never hangs. */
    int rc = submit(n, 30000);
    cr_assert(rc == FWD_ENOLEADER || rc == FWD_OK);
    if (rc == FWD_OK) {
        cr_assert(wait_done(n + 1, 10000));
        cr_assert_eq(rec.err[n], FWD_ENOLEADER);
    }
}

Test(forward, each_forward_keeps_its_deadline_and_late_answers_are_dropped, .init = setup,
     .fini = teardown, .timeout = 60)
{
    prop.hold = true;
    for (long i = 0; i < 10; i++)
        cr_assert_eq(submit(i, 300), FWD_OK);
    for (long i = 10; i < 20; i++)
        cr_assert_eq(submit(i, 30000), FWD_OK);
    wait_proposed(20);
    int64_t t0 = hc_now_ms();
    cr_assert(wait_done(10, 10000));
    cr_assert_lt(hc_now_ms() - t0, 5000);
    for (long i = 0; i < 10; i++) {
        cr_assert_eq(atomic_load(&rec.fired[i]), 1);
        cr_assert_eq(rec.err[i], FWD_ETIMEDOUT);
    }
    /* Answer everything: the first ten are late and ignored, the others complete. */
    pthread_mutex_lock(&prop.mu);
    for (int i = 0; i < prop.nheld; i++)
        fwd_reply(prop.held[i],
                  &(struct fwd_answer){5, "etcdserver: leader changed", NULL, 0, 0});
    prop.nheld = 0;
    pthread_mutex_unlock(&prop.mu);
    cr_assert(wait_done(20, 10000));
    for (long i = 0; i < 20; i++)
        cr_assert_eq(atomic_load(&rec.fired[i]), 1, "forward %ld: %d completions", i,
                     atomic_load(&rec.fired[i]));
    for (long i = 10; i < 20; i++)
        cr_assert_eq(rec.err[i], FWD_OK);
}

Test(forward, a_member_that_leaves_the_table_fails_its_forwards_and_can_come_back,
     .init = setup, .fini = teardown, .timeout = 60)
{
    prop.hold = true;
    const int n = 100;
    for (long i = 0; i < n; i++)
        cr_assert_eq(submit(i, 30000), FWD_OK);
    wait_proposed(n);
    /* Member 0 (the leader here) is removed from the table: what waits on it fails at once. */
    struct cluster without = cl;
    char err[160];
    cr_assert_eq(cluster_remove(&without, cl.members[0].id, err, sizeof err), 0, "%s", err);
    fwd_set_cluster(fwd[1], &without);
    cr_assert(wait_done(n, 5000), "only %d of %d completed after the member left", rec.done, n);
    for (long i = 0; i < n; i++) {
        cr_assert_eq(atomic_load(&rec.fired[i]), 1);
        cr_assert_eq(rec.err[i], FWD_ENOLEADER, "forward %ld: %d", i, rec.err[i]);
    }
    cr_assert_eq(submit(n, 30000), FWD_ENOLEADER, "a member not in the table is forwarded to");
    /* The held items' answers go nowhere (the follower ended the stream). */
    pthread_mutex_lock(&prop.mu);
    for (int i = 0; i < prop.nheld; i++)
        fwd_reply(prop.held[i], &(struct fwd_answer){0, NULL, (const uint8_t *)"late", 4, 1});
    prop.nheld = 0;
    prop.hold = false;
    pthread_mutex_unlock(&prop.mu);
    /* Back in the table (e.g. the table of a later configuration): forwarded to again, at once
     * (its slot's backoff starts afresh). */
    fwd_set_cluster(fwd[1], &cl);
    cr_assert_eq(submit(n + 1, 30000), FWD_OK);
    cr_assert(wait_done(n + 1, 10000));
    cr_assert_eq(rec.err[n + 1], FWD_OK);
    char want[24];
    snprintf(want, sizeof want, "c%d", n + 1);
    cr_assert_str_eq(rec.result[n + 1], want);
    for (long i = 0; i < n; i++)
        cr_assert_eq(atomic_load(&rec.fired[i]), 1, "forward %ld completed twice", i);
    struct fwd_stats f;
    fwd_stats_get(fwd[1], &f);
    cr_assert_eq(f.streams_opened, 2);
}

Test(forward, in_flight_forwards_are_bounded, .init = setup_small, .fini = teardown,
     .timeout = 60)
{
    prop.hold = true;
    for (long i = 0; i < 8; i++)
        cr_assert_eq(submit(i, 30000), FWD_OK);
    cr_assert_eq(submit(8, 30000), FWD_EBUSY);
    wait_proposed(8);
    pthread_mutex_lock(&prop.mu);
    fwd_reply(prop.held[0], &(struct fwd_answer){0, NULL, (const uint8_t *)"c0", 2, 1});
    pthread_mutex_unlock(&prop.mu);
    cr_assert(wait_done(1, 10000));
    cr_assert_eq(submit(8, 30000), FWD_OK, "a completed forward frees its place");
    pthread_mutex_lock(&prop.mu);
    for (int i = 1; i < prop.nheld; i++)
        fwd_reply(prop.held[i], &(struct fwd_answer){0, NULL, (const uint8_t *)"x", 1, 1});
    prop.nheld = 0;
    pthread_mutex_unlock(&prop.mu);
}

/* ---- raw streams against the leader's Peer.Forwards ---------------------------------------- */

struct raw {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool closed;
    grpc_status_code status;
};

static void raw_message(struct rpc_client_stream *s, const uint8_t *d, size_t n, void *arg)
{
    (void)s, (void)d, (void)n, (void)arg;
}

static void raw_close(struct rpc_client_stream *s, grpc_status_code st, const char *m, void *arg)
{
    (void)s;
    struct raw *r = arg;
    (void)m;
    pthread_mutex_lock(&r->mu);
    r->status = st;
    r->closed = true;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* Opens Peer.Forwards on the leader with the given certificate, sends one message, and returns
 * the status the leader ended the stream with. */
static grpc_status_code raw_send(const char *cert, const char *key, const void *msg, size_t len)
{
    struct rpc_tls t = {.ca_file = C.ca, .cert_file = cert, .key_file = key};
    char target[64], err[256];
    snprintf(target, sizeof target, "127.0.0.1:%d", C.m[0].peer_port);
    struct rpc_channel_config cc = {.target = target, .tls = &t, .server_name = "n1"};
    struct rpc_channel *ch = rpc_channel_create(&cc, err, sizeof err);
    cr_assert(ch, "%s", err);
    struct raw r = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, 0};
    static const struct rpc_client_stream_handler h = {raw_message, raw_close, NULL};
    struct rpc_client_stream *s = rpc_channel_stream_open(ch, FORWARDS, &h, &r);
    cr_assert(s);
    cr_assert_eq(rpc_client_stream_send(s, msg, len, 5000), 0);
    pthread_mutex_lock(&r.mu);
    while (!r.closed) /* the leader ends the stream; the test's timeout bounds a bug */
        pthread_cond_wait(&r.cv, &r.mu);
    pthread_mutex_unlock(&r.mu);
    rpc_client_stream_cancel(s);
    rpc_channel_destroy(ch);
    return r.status;
}

static size_t batch(uint64_t cluster_id, int items, uint8_t **out)
{
    Craft__Raft__ForwardItem it[16], *itp[16];
    for (int i = 0; i < items; i++) {
        craft__raft__forward_item__init(&it[i]);
        it[i].id = (uint64_t)i + 1;
        it[i].command.data = (uint8_t *)"cmd";
        it[i].command.len = 3;
        itp[i] = &it[i];
    }
    Craft__Raft__ForwardBatch b = CRAFT__RAFT__FORWARD_BATCH__INIT;
    b.cluster_id = cluster_id;
    b.n_items = (size_t)items;
    b.items = itp;
    size_t len;
    cr_assert_eq(rpc_msg_pack(&b.base, out, &len), 0);
    return len;
}

Test(forward, strangers_garbage_other_clusters_and_floods_are_refused, .init = setup_small,
     .fini = teardown, .timeout = 60)
{
    uint8_t *ok, *other, *flood;
    size_t ok_len = batch(cl.id, 1, &ok);
    size_t other_len = batch(cl.id + 1, 1, &other);
    size_t flood_len = batch(cl.id, 9, &flood); /* the leader allows 8 unanswered */
    /* A certificate of the cluster's CA that names no member (the client certificate). */
    cr_assert_eq(raw_send(C.cert, C.key, ok, ok_len), GRPC_STATUS_PERMISSION_DENIED);
    struct fwd_stats st;
    fwd_stats_get(fwd[0], &st);
    cr_assert_eq(st.streams_refused, 1);
    /* A member's certificate, but a length-delimited field that runs past the end. */
    static const uint8_t garbage[] = {0x12, 0x7f, 'x', 'y'};
    cr_assert_eq(raw_send(certf[1], keyf[1], garbage, sizeof garbage),
                 GRPC_STATUS_INVALID_ARGUMENT);
    cr_assert_eq(raw_send(certf[1], keyf[1], other, other_len), GRPC_STATUS_FAILED_PRECONDITION);
    cr_assert_eq(raw_send(certf[1], keyf[1], flood, flood_len), GRPC_STATUS_RESOURCE_EXHAUSTED);
    pthread_mutex_lock(&prop.mu);
    cr_assert_eq(prop.proposed, 0, "a refused batch reached the proposer");
    pthread_mutex_unlock(&prop.mu);
    free(ok);
    free(other);
    free(flood);
}
