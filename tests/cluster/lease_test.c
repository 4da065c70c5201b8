/* Leases against real craftd members on loopback (issue 16): grant, attach, revoke and
 * TimeToLive through a follower; keep-alives through a follower reach the leader; expiry within
 * [TTL, TTL + election timeout + a tick]; a leader change neither drops a kept-alive lease nor
 * expires one early; remaining TTLs survive a full restart (checkpoints every second); 1,200
 * leases expiring together are all revoked while puts go on; bad input; a keep-alive stream
 * whose client does not read. The Go client and etcdctl tests are the etcdctl_lease and go_lease scripts. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "tests/cluster/harness.h"

static struct hc C;

static void teardown(void) { hc_teardown(&C); }

static void nap(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- unary calls ---- */

static grpc_status_code call(int i, const char *method, const ProtobufCMessage *req,
                             const ProtobufCMessageDescriptor *desc, ProtobufCMessage **resp,
                             char *msg, size_t mlen)
{
    struct rpc_result res;
    *resp = NULL;
    rpc_channel_call_msg(hc_channel(&C, i), method, req, desc, 5000, resp, &res);
    grpc_status_code st = res.status;
    if (msg)
        snprintf(msg, mlen, "%s", res.message);
    rpc_result_free(&res);
    return st;
}

static grpc_status_code grant(int i, int64_t id, int64_t ttl, int64_t *got_id, int64_t *got_ttl,
                              char *msg, size_t mlen)
{
    Etcdserverpb__LeaseGrantRequest r = ETCDSERVERPB__LEASE_GRANT_REQUEST__INIT;
    r.id = id;
    r.ttl = ttl;
    ProtobufCMessage *m;
    grpc_status_code st = call(i, "/etcdserverpb.Lease/LeaseGrant", &r.base,
                               &etcdserverpb__lease_grant_response__descriptor, &m, msg, mlen);
    if (m) {
        Etcdserverpb__LeaseGrantResponse *g = (Etcdserverpb__LeaseGrantResponse *)m;
        if (got_id)
            *got_id = g->id;
        if (got_ttl)
            *got_ttl = g->ttl;
        protobuf_c_message_free_unpacked(m, NULL);
    }
    return st;
}

static grpc_status_code lease_revoke(int i, int64_t id, int64_t *rev, char *msg, size_t mlen)
{
    Etcdserverpb__LeaseRevokeRequest r = ETCDSERVERPB__LEASE_REVOKE_REQUEST__INIT;
    r.id = id;
    ProtobufCMessage *m;
    grpc_status_code st = call(i, "/etcdserverpb.Lease/LeaseRevoke", &r.base,
                               &etcdserverpb__lease_revoke_response__descriptor, &m, msg, mlen);
    if (m) {
        if (rev)
            *rev = ((Etcdserverpb__LeaseRevokeResponse *)m)->header->revision;
        protobuf_c_message_free_unpacked(m, NULL);
    }
    return st;
}

static grpc_status_code put(int i, const char *key, int64_t lease, int64_t *rev, char *msg,
                            size_t mlen)
{
    Etcdserverpb__PutRequest r = ETCDSERVERPB__PUT_REQUEST__INIT;
    r.key.data = (uint8_t *)key;
    r.key.len = strlen(key);
    r.value.data = (uint8_t *)"v";
    r.value.len = 1;
    r.lease = lease;
    ProtobufCMessage *m;
    grpc_status_code st = call(i, "/etcdserverpb.KV/Put", &r.base,
                               &etcdserverpb__put_response__descriptor, &m, msg, mlen);
    if (m) {
        if (rev)
            *rev = ((Etcdserverpb__PutResponse *)m)->header->revision;
        protobuf_c_message_free_unpacked(m, NULL);
    }
    return st;
}

/* TimeToLive on member i: the response (free it) or NULL with the status in *st. */
static Etcdserverpb__LeaseTimeToLiveResponse *ttl_of(int i, int64_t id, bool keys,
                                                     grpc_status_code *st)
{
    Etcdserverpb__LeaseTimeToLiveRequest r = ETCDSERVERPB__LEASE_TIME_TO_LIVE_REQUEST__INIT;
    r.id = id;
    r.keys = keys;
    ProtobufCMessage *m;
    *st = call(i, "/etcdserverpb.Lease/LeaseTimeToLive", &r.base,
               &etcdserverpb__lease_time_to_live_response__descriptor, &m, NULL, 0);
    return (Etcdserverpb__LeaseTimeToLiveResponse *)m;
}

static bool leases_has(int i, int64_t id, size_t *n)
{
    Etcdserverpb__LeaseLeasesRequest r = ETCDSERVERPB__LEASE_LEASES_REQUEST__INIT;
    ProtobufCMessage *m;
    cr_assert_eq(call(i, "/etcdserverpb.Lease/LeaseLeases", &r.base,
                      &etcdserverpb__lease_leases_response__descriptor, &m, NULL, 0),
                 GRPC_STATUS_OK);
    Etcdserverpb__LeaseLeasesResponse *l = (Etcdserverpb__LeaseLeasesResponse *)m;
    bool has = false;
    for (size_t k = 0; k < l->n_leases; k++)
        has |= l->leases[k]->id == id;
    if (n)
        *n = l->n_leases;
    protobuf_c_message_free_unpacked(m, NULL);
    return has;
}

static bool exists(int i, const char *key)
{
    char v[16];
    int r = hc_get(&C, i, key, v, sizeof v, false);
    cr_assert_neq(r, -1, "get %s on member %d failed", key, i);
    return r == 1;
}

/* ---- keep-alive streams ---- */

struct ka {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int got;
    int64_t last_id, last_ttl;
    bool closed;
    grpc_status_code st;
    char msg[128];
    bool block;   /* the client does not read: on_message waits until block is false */
};

static void ka_on_message(struct rpc_client_stream *s, const uint8_t *d, size_t n, void *arg)
{
    (void)s;
    struct ka *k = arg;
    Etcdserverpb__LeaseKeepAliveResponse *r =
        etcdserverpb__lease_keep_alive_response__unpack(NULL, n, d);
    cr_assert(r);
    pthread_mutex_lock(&k->mu);
    while (k->block)
        pthread_cond_wait(&k->cv, &k->mu);
    k->got++;
    k->last_id = r->id;
    k->last_ttl = r->ttl;
    pthread_cond_broadcast(&k->cv);
    pthread_mutex_unlock(&k->mu);
    etcdserverpb__lease_keep_alive_response__free_unpacked(r, NULL);
}

static void ka_on_close(struct rpc_client_stream *s, grpc_status_code st, const char *msg,
                        void *arg)
{
    (void)s;
    struct ka *k = arg;
    pthread_mutex_lock(&k->mu);
    k->closed = true;
    k->st = st;
    snprintf(k->msg, sizeof k->msg, "%s", msg ? msg : "");
    pthread_cond_broadcast(&k->cv);
    pthread_mutex_unlock(&k->mu);
}

static const struct rpc_client_stream_handler ka_handler = {ka_on_message, ka_on_close, NULL};

static void ka_init(struct ka *k)
{
    memset(k, 0, sizeof *k);
    pthread_mutex_init(&k->mu, NULL);
    pthread_cond_init(&k->cv, NULL);
}

static int ka_send(struct rpc_client_stream *s, int64_t id)
{
    Etcdserverpb__LeaseKeepAliveRequest r = ETCDSERVERPB__LEASE_KEEP_ALIVE_REQUEST__INIT;
    r.id = id;
    uint8_t buf[16];
    size_t len = etcdserverpb__lease_keep_alive_request__pack(&r, buf);
    return rpc_client_stream_send(s, buf, len, 5000);
}

/* Waits (bounded) until k has `want` responses or is closed: true when it has them. */
static bool ka_wait(struct ka *k, int want, int timeout_ms)
{
    int64_t until = hc_now_ms() + timeout_ms;
    pthread_mutex_lock(&k->mu);
    while (k->got < want && !k->closed && hc_now_ms() < until) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 20 * 1000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&k->cv, &k->mu, &ts);
    }
    bool ok = k->got >= want;
    pthread_mutex_unlock(&k->mu);
    return ok;
}

static void ka_end(struct rpc_client_stream *s, struct ka *k)
{
    rpc_client_stream_close(s);
    int64_t until = hc_now_ms() + 5000;
    pthread_mutex_lock(&k->mu);
    while (!k->closed && hc_now_ms() < until) {
        pthread_mutex_unlock(&k->mu);
        nap(5);
        pthread_mutex_lock(&k->mu);
    }
    bool closed = k->closed;
    pthread_mutex_unlock(&k->mu);
    cr_assert(closed, "keep-alive stream did not close");
}

/* One keep-alive on its own stream to member i: the TTL answered, or -1 when the stream
 * ended without an answer (no leader, leader changed: a client retries). */
static int64_t keepalive(int i, int64_t id)
{
    struct ka k;
    ka_init(&k);
    struct rpc_client_stream *s =
        rpc_channel_stream_open(hc_channel(&C, i), "/etcdserverpb.Lease/LeaseKeepAlive",
                                &ka_handler, &k);
    cr_assert(s);
    int64_t ttl = -1;
    if (ka_send(s, id) == 0 && ka_wait(&k, 1, 6000)) {
        cr_assert_eq(k.last_id, id);
        ttl = k.last_ttl;
    }
    ka_end(s, &k);
    return ttl;
}

/* keepalive() until it is answered, as clients retry a stream that ended (a leader change
 * under way, or a promotion that failed; docs/lease.md). */
static int64_t keepalive_retry(int i, int64_t id)
{
    int64_t ttl = -1;
    for (int64_t until = hc_now_ms() + 10000; ttl < 0 && hc_now_ms() < until;) {
        ttl = keepalive(i, id);
        if (ttl < 0)
            nap(50);
    }
    return ttl;
}

static int leader_and_follower(int *f)
{
    int l = hc_wait_leader(&C, 10000);
    cr_assert_geq(l, 0, "no leader");
    *f = (l + 1) % C.n;
    return l;
}

/* ---- tests ---- */


Test(lease, grant_attach_ttl_revoke_through_a_follower, .fini = teardown, .timeout = 120)
{
    hc_setup(&C, 3, 50, 1000);
    hc_start_all(&C);
    int f, l = leader_and_follower(&f);
    (void)l;
    char msg[256];
    int64_t id, ttl, rev, rev_b;

    /* TTLs: zero and negative get etcd's minimum (ceil(1.5 x 1 s) = 2 s), huge is refused */
    cr_assert_eq(grant(f, 0, 0, &id, &ttl, msg, sizeof msg), GRPC_STATUS_OK, "%s", msg);
    cr_assert_gt(id, 0);
    cr_assert_eq(ttl, 2);
    int64_t id2;
    cr_assert_eq(grant(f, 0, -5, &id2, &ttl, msg, sizeof msg), GRPC_STATUS_OK, "%s", msg);
    cr_assert_eq(ttl, 2);
    cr_assert_neq(id2, id, "generated ids are unique");
    cr_assert_eq(grant(f, 0, 9000000001LL, NULL, NULL, msg, sizeof msg),
                 GRPC_STATUS_OUT_OF_RANGE);
    cr_assert_str_eq(msg, "etcdserver: too large lease TTL");

    /* a chosen id; reusing it is refused */
    cr_assert_eq(grant(f, 777, 30, &id, &ttl, msg, sizeof msg), GRPC_STATUS_OK, "%s", msg);
    cr_assert_eq(id, 777);
    cr_assert_eq(ttl, 30);
    cr_assert_eq(grant(l, 777, 30, NULL, NULL, msg, sizeof msg),
                 GRPC_STATUS_FAILED_PRECONDITION);
    cr_assert_str_eq(msg, "etcdserver: lease already exists");

    /* attach two keys; an unknown lease is refused */
    cr_assert_eq(put(f, "a", 777, &rev, msg, sizeof msg), GRPC_STATUS_OK, "%s", msg);
    cr_assert_eq(put(f, "b", 777, &rev_b, msg, sizeof msg), GRPC_STATUS_OK, "%s", msg);
    cr_assert_eq(put(f, "c", 123456, NULL, msg, sizeof msg), GRPC_STATUS_NOT_FOUND);
    cr_assert_str_eq(msg, "etcdserver: requested lease not found");

    /* TimeToLive on a follower (the leader answers) with the keys; unknown: TTL -1 */
    grpc_status_code st;
    Etcdserverpb__LeaseTimeToLiveResponse *t = ttl_of(f, 777, true, &st);
    cr_assert_eq(st, GRPC_STATUS_OK);
    /* 31: a leader whose lessor is promoted after the grant applied extends it by an election
     * timeout (never shortens it), as after any leader change. */
    cr_assert(t->ttl >= 28 && t->ttl <= 31, "ttl %lld", (long long)t->ttl);
    cr_assert_eq(t->grantedttl, 30);
    cr_assert_eq(t->n_keys, 2);
    cr_assert(t->keys[0].len == 1 && t->keys[0].data[0] == 'a');
    cr_assert(t->keys[1].len == 1 && t->keys[1].data[0] == 'b');
    cr_assert_eq(t->header->member_id != 0, true);
    protobuf_c_message_free_unpacked(&t->base, NULL);
    t = ttl_of(f, 4242, false, &st);
    cr_assert_eq(st, GRPC_STATUS_OK);
    cr_assert_eq(t->ttl, -1);
    protobuf_c_message_free_unpacked(&t->base, NULL);

    /* every member lists it once it has applied the puts after it */
    for (int i = 0; i < C.n; i++) {
        cr_assert(hc_wait_revision(&C, i, rev_b, 5000));
        cr_assert(leases_has(i, 777, NULL), "member %d does not list lease 777", i);
    }

    /* keep-alive through the follower: TTL 30 answered; unknown: TTL 0 */
    cr_assert_eq(keepalive_retry(f, 777), 30);
    cr_assert_eq(keepalive(f, 4242), 0);

    /* revoke through the follower while the third member is paused: both keys go at one new
     * revision, and once it runs again it is behind - LeaseLeases there still must not list the
     * lease (the list waits for a ReadIndex round) */
    int g = 3 - l - f;
    hc_signal(&C, g, SIGSTOP);
    cr_assert_eq(lease_revoke(f, 777, &rev, msg, sizeof msg), GRPC_STATUS_OK, "%s", msg);
    hc_signal(&C, g, SIGCONT);
    cr_assert_not(leases_has(g, 777, NULL), "the member that was paused lists a revoked lease");
    cr_assert_eq(rev, rev_b + 1);
    cr_assert_not(exists(f, "a"));
    cr_assert_not(exists(l, "b"));
    cr_assert_not(leases_has(l, 777, NULL));
    cr_assert_not(leases_has(f, 777, NULL));
    cr_assert_eq(lease_revoke(f, 777, NULL, msg, sizeof msg), GRPC_STATUS_NOT_FOUND);
    cr_assert_str_eq(msg, "etcdserver: requested lease not found");
}

Test(lease, expiry_keepalive_and_many_requests_on_one_stream, .fini = teardown, .timeout = 120)
{
    hc_setup(&C, 3, 50, 500);
    /* a small in-flight bound, so the burst below is held back and resumed many times */
    snprintf(C.extra_flags, sizeof C.extra_flags, "--max-lease-keepalive-inflight 8");
    hc_start_all(&C);
    int f, l = leader_and_follower(&f);
    (void)l;
    char msg[256];

    /* expiry within [TTL, TTL + election timeout + a tick], with the key deleted */
    int64_t id, ttl;
    int64_t sent = hc_now_ms();
    cr_assert_eq(grant(f, 0, 2, &id, &ttl, msg, sizeof msg), GRPC_STATUS_OK, "%s", msg);
    cr_assert_eq(put(f, "exp", id, NULL, msg, sizeof msg), GRPC_STATUS_OK, "%s", msg);
    int64_t gone = 0;
    while (hc_now_ms() < sent + 6000) {
        if (!exists(l, "exp")) {
            gone = hc_now_ms();
            break;
        }
        nap(20);
    }
    cr_assert_gt(gone, 0, "the key never expired");
    /* 2000 ms TTL; +500 election timeout, +100 tick, +250 for the revoke to commit and the
     * poll that sees it */
    cr_assert(gone - sent >= 2000 && gone - sent <= 2850, "expired after %lld ms",
              (long long)(gone - sent));

    /* keep-alives through the follower keep a 2 s lease alive for 4 s */
    cr_assert_eq(grant(f, 0, 2, &id, NULL, msg, sizeof msg), GRPC_STATUS_OK, "%s", msg);
    cr_assert_eq(put(f, "kept", id, NULL, msg, sizeof msg), GRPC_STATUS_OK);
    cr_assert_eq(keepalive_retry(f, id), 2); /* the leader's lessor is promoted */
    struct ka k;
    ka_init(&k);
    struct rpc_client_stream *s = rpc_channel_stream_open(
        hc_channel(&C, f), "/etcdserverpb.Lease/LeaseKeepAlive", &ka_handler, &k);
    cr_assert(s);
    for (int r = 1; r <= 8; r++) {
        cr_assert_eq(ka_send(s, id), 0);
        cr_assert(ka_wait(&k, r, 3000), "keep-alive %d: %s", r, k.msg);
        cr_assert_eq(k.last_ttl, 2);
        nap(500);
    }
    cr_assert(exists(l, "kept"));

    /* 3,000 requests at once on the same stream, 8 renewed at a time: every one answered */
    int base = k.got;
    for (int r = 0; r < 3000; r++)
        cr_assert_eq(ka_send(s, id), 0);
    cr_assert(ka_wait(&k, base + 3000, 30000), "%d of 3000 answered", k.got - base);
    cr_assert_not(k.closed);
    ka_end(s, &k);
}

Test(lease, leader_change_keeps_leases_and_expires_none_early, .fini = teardown, .timeout = 120)
{
    hc_setup(&C, 3, 50, 500);
    snprintf(C.extra_flags, sizeof C.extra_flags, "--experimental-lease-checkpoint-interval 1s");
    hc_start_all(&C);
    int f, l = leader_and_follower(&f);
    char msg[256];
    int64_t kept, idle;
    cr_assert_eq(grant(f, 0, 3, &kept, NULL, msg, sizeof msg), GRPC_STATUS_OK, "%s", msg);
    cr_assert_eq(put(f, "kept", kept, NULL, msg, sizeof msg), GRPC_STATUS_OK);
    int64_t granted = hc_now_ms();
    cr_assert_eq(grant(f, 0, 8, &idle, NULL, msg, sizeof msg), GRPC_STATUS_OK, "%s", msg);
    cr_assert_eq(put(f, "idle", idle, NULL, msg, sizeof msg), GRPC_STATUS_OK);

    /* keep `kept` alive through the follower every 500 ms; stop the leader on the way. A
     * keep-alive that lands during the election is refused and retried, as clients do. */
    bool stopped = false;
    int failures = 0;
    while (hc_now_ms() < granted + 6000) {
        if (!stopped && hc_now_ms() > granted + 2000) {
            hc_signal(&C, l, SIGKILL);
            stopped = true;
        }
        if (keepalive(f, kept) < 0)
            failures++;
        else
            cr_assert(exists(f, "kept"));
        nap(400);
    }
    cr_assert_lt(failures, 6);
    int nl = hc_wait_leader(&C, 10000);
    cr_assert_geq(nl, 0);
    cr_assert_neq(nl, l);
    cr_assert(exists(f, "kept"), "the kept-alive lease expired across the leader change");
    /* `idle` (8 s, never renewed) is still there before its TTL ... */
    while (hc_now_ms() < granted + 7500)
        nap(50);
    cr_assert(exists(f, "idle"), "a lease expired early after the leader change");
    /* ... and goes within its TTL + the promote extension + a checkpoint interval, the
     * election and a tick */
    int64_t gone = 0;
    while (hc_now_ms() < granted + 15000) {
        if (!exists(f, "idle")) {
            gone = hc_now_ms();
            break;
        }
        nap(50);
    }
    cr_assert_gt(gone, 0, "the idle lease never expired after the leader change");
    cr_assert_geq(gone - granted, 8000);
}

Test(lease, remaining_ttl_survives_a_full_restart, .fini = teardown, .timeout = 120)
{
    hc_setup(&C, 3, 50, 500);
    snprintf(C.extra_flags, sizeof C.extra_flags, "--experimental-lease-checkpoint-interval 1s");
    hc_start_all(&C);
    int f, l = leader_and_follower(&f);
    (void)l;
    char msg[256];
    int64_t id;
    cr_assert_eq(grant(f, 0, 30, &id, NULL, msg, sizeof msg), GRPC_STATUS_OK, "%s", msg);
    int64_t rev = 0;
    cr_assert_eq(put(f, "long", id, &rev, msg, sizeof msg), GRPC_STATUS_OK);
    nap(8000); /* several checkpoints; the latest says at most 23 s are left */
    for (int i = 0; i < C.n; i++)
        hc_signal(&C, i, SIGTERM);
    hc_start_all(&C);
    cr_assert_geq(hc_wait_leader(&C, 10000), 0);
    grpc_status_code st = GRPC_STATUS_UNAVAILABLE;
    Etcdserverpb__LeaseTimeToLiveResponse *t = NULL;
    for (int tries = 0; tries < 100 && st != GRPC_STATUS_OK; tries++) {
        t = ttl_of(f, id, false, &st); /* the new leader promotes within a tick or two */
        if (st != GRPC_STATUS_OK)
            nap(50);
    }
    cr_assert_eq(st, GRPC_STATUS_OK);
    /* neither reset to 30 nor lost: at most 23 left + 0.5 s extension, rounded up */
    cr_assert(t->ttl > 10 && t->ttl <= 24, "TTL after restart %lld", (long long)t->ttl);
    cr_assert_eq(t->grantedttl, 30);
    protobuf_c_message_free_unpacked(&t->base, NULL);
    cr_assert(exists(f, "long"));
    /* Every member replayed only its log tail: still at the put's revision. */
    for (int i = 0; i < C.n; i++)
        hc_assert_exact_state(&C, i, rev, 10000);
}

struct counter {
    pthread_mutex_t mu;
    int ok, done;
};

static void on_put_done(struct rpc_result *res, void *arg)
{
    struct counter *c = arg;
    pthread_mutex_lock(&c->mu);
    c->done++;
    c->ok += res->status == GRPC_STATUS_OK;
    pthread_mutex_unlock(&c->mu);
}

Test(lease, many_leases_expiring_together_are_all_revoked, .fini = teardown, .timeout = 180)
{
    enum { N = 1200 };
    hc_setup(&C, 3, 50, 500);
    hc_start_all(&C);
    int f, l = leader_and_follower(&f);
    char msg[256], key[32];
    struct counter c = {.ok = 0};
    pthread_mutex_init(&c.mu, NULL);
    /* granted and attached asynchronously, so every lease is in place well within its 8 s
     * (also under ASan) and they all expire within about a second of each other */
    for (int i = 0; i < N; i++) {
        Etcdserverpb__LeaseGrantRequest g = ETCDSERVERPB__LEASE_GRANT_REQUEST__INIT;
        g.id = 100000 + i;
        g.ttl = 8;
        uint8_t buf[64];
        size_t len = etcdserverpb__lease_grant_request__pack(&g, buf);
        cr_assert_eq(rpc_channel_call_async(hc_channel(&C, l), "/etcdserverpb.Lease/LeaseGrant",
                                            buf, len, 10000, on_put_done, &c),
                     0);
    }
    for (int i = 0; i < N; i++) {
        Etcdserverpb__PutRequest r = ETCDSERVERPB__PUT_REQUEST__INIT;
        snprintf(key, sizeof key, "m/%05d", i);
        r.key.data = (uint8_t *)key;
        r.key.len = strlen(key);
        r.lease = 100000 + i;
        uint8_t buf[64];
        size_t len = etcdserverpb__put_request__pack(&r, buf);
        /* a put may overtake its grant on the way: wait for the grants first */
        if (i == 0)
            while (true) {
                pthread_mutex_lock(&c.mu);
                int done = c.done;
                pthread_mutex_unlock(&c.mu);
                if (done == N)
                    break;
                nap(10);
            }
        cr_assert_eq(rpc_channel_call_async(hc_channel(&C, f), "/etcdserverpb.KV/Put", buf, len,
                                            10000, on_put_done, &c),
                     0);
    }
    while (true) {
        pthread_mutex_lock(&c.mu);
        int done = c.done;
        pthread_mutex_unlock(&c.mu);
        if (done == 2 * N)
            break;
        nap(10);
    }
    cr_assert_eq(c.ok, 2 * N);
    /* puts keep being served while they expire, and every lease goes */
    int64_t until = hc_now_ms() + 20000;
    size_t left = N;
    while (hc_now_ms() < until) {
        cr_assert_eq(put(f, "other", 0, NULL, msg, sizeof msg), GRPC_STATUS_OK, "%s", msg);
        leases_has(l, 0, &left);
        if (!left)
            break;
        nap(100);
    }
    cr_assert_eq(left, 0, "%zu leases left", left);
    Etcdserverpb__RangeRequest r = ETCDSERVERPB__RANGE_REQUEST__INIT;
    r.key.data = (uint8_t *)"m/";
    r.key.len = 2;
    r.range_end.data = (uint8_t *)"m0";
    r.range_end.len = 2;
    r.count_only = true;
    ProtobufCMessage *m;
    cr_assert_eq(call(l, "/etcdserverpb.KV/Range", &r.base,
                      &etcdserverpb__range_response__descriptor, &m, NULL, 0),
                 GRPC_STATUS_OK);
    cr_assert_eq(((Etcdserverpb__RangeResponse *)m)->count, 0);
    protobuf_c_message_free_unpacked(m, NULL);
}

Test(lease, a_keepalive_stream_that_never_reads, .fini = teardown, .timeout = 120)
{
    hc_setup(&C, 1, 50, 500);
    snprintf(C.extra_flags, sizeof C.extra_flags, "--max-lease-keepalive-inflight 16");
    hc_start_all(&C);
    cr_assert_geq(hc_wait_leader(&C, 10000), 0);
    char msg[256], target[64], err[256];
    int64_t id;
    cr_assert_eq(grant(0, 0, 60, &id, NULL, msg, sizeof msg), GRPC_STATUS_OK, "%s", msg);
    cr_assert_eq(keepalive_retry(0, id), 60); /* the lessor is promoted */
    /* its own channel: its one callback thread blocks, as a client that never reads */
    snprintf(target, sizeof target, "127.0.0.1:%d", C.m[0].client_port);
    struct rpc_channel_config cc = {.target = target, .tls = &C.client_tls, .threads = 1,
                                    .stream_queue = 64};
    struct rpc_channel *ch = rpc_channel_create(&cc, err, sizeof err);
    cr_assert(ch, "%s", err);
    struct ka k;
    ka_init(&k);
    k.block = true;
    struct rpc_client_stream *s =
        rpc_channel_stream_open(ch, "/etcdserverpb.Lease/LeaseKeepAlive", &ka_handler, &k);
    cr_assert(s);
    /* send until the server stops reading and flow control holds the sender back */
    Etcdserverpb__LeaseKeepAliveRequest r = ETCDSERVERPB__LEASE_KEEP_ALIVE_REQUEST__INIT;
    r.id = id;
    uint8_t buf[16];
    size_t len = etcdserverpb__lease_keep_alive_request__pack(&r, buf);
    int sent = 0;
    bool held_back = false;
    while (sent < 2000000) {
        int rc = rpc_client_stream_send(s, buf, len, 200);
        if (rc == RPC_ETIMEDOUT || rc == RPC_EFULL) {
            held_back = true;
            break;
        }
        cr_assert_eq(rc, 0);
        sent++;
    }
    cr_assert(held_back, "the server read %d requests from a client that never reads", sent);
    /* the member serves others meanwhile */
    cr_assert_eq(put(0, "x", 0, NULL, msg, sizeof msg), GRPC_STATUS_OK, "%s", msg);
    cr_assert_eq(keepalive(0, id), 60);
    /* the client reads again: every request it got through is answered */
    pthread_mutex_lock(&k.mu);
    k.block = false;
    pthread_cond_broadcast(&k.cv);
    pthread_mutex_unlock(&k.mu);
    cr_assert(ka_wait(&k, sent, 60000), "%d of %d answered", k.got, sent);
    ka_end(s, &k);
    rpc_channel_destroy(ch);
}
