#include "tests/rpc/util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <criterion/hooks.h>

#include <openssl/crypto.h>

#include "rpc/proto/echo.pb-c.h"

struct tt_counts tt_counts;
struct tt_held tt_held = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

/* gRPC keeps some of its threads for the life of the process, and they do TLS work, so each
 * holds OpenSSL per-thread error state. OpenSSL's atexit cleanup drops the thread-local key
 * while those threads still run, and LeakSanitizer then reports their state as leaked (under
 * ASan only, and only when such a thread happened to do a handshake). Skipping that atexit
 * cleanup keeps the state reachable; the process is exiting anyway. */
__attribute__((constructor)) static void no_openssl_atexit(void)
{
    OPENSSL_init_crypto(OPENSSL_INIT_NO_ATEXIT, NULL);
}

/* Present only when linked with a sanitizer runtime that has LeakSanitizer. */
extern int __lsan_do_recoverable_leak_check(void) __attribute__((weak));

void tt_leak_check(void)
{
    if (__lsan_do_recoverable_leak_check)
        cr_assert_eq(__lsan_do_recoverable_leak_check(), 0, "LeakSanitizer found leaks (above)");
}

/* ---- certificates ------------------------------------------------------------------- */

static char certs_dir[512];

static void run(const char *script, const char *args)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s %s >/dev/null", script, args);
    if (system(cmd) != 0) {
        fprintf(stderr, "tests: failed: %s\n", cmd);
        exit(2);
    }
}

static void make_certs(void)
{
    const char *tmp = getenv("TEST_TMPDIR");
    snprintf(certs_dir, sizeof certs_dir, "%s/rpc-certs-XXXXXX", tmp ? tmp : "/tmp");
    if (!mkdtemp(certs_dir)) {
        fprintf(stderr, "tests: mkdtemp: %s\n", strerror(errno));
        exit(2);
    }
    char script[1024];
    const char *srcdir = getenv("TEST_SRCDIR");
    if (srcdir)
        snprintf(script, sizeof script, "%s/craft/certs/craft-certs", srcdir);
    else
        snprintf(script, sizeof script, "certs/craft-certs");
    char a[1024];
    const char *d = certs_dir;
    snprintf(a, sizeof a, "ca %s/a", d), run(script, a);
    snprintf(a, sizeof a, "node %s/a server --dns localhost --ip 127.0.0.1", d), run(script, a);
    snprintf(a, sizeof a, "client %s/a client", d), run(script, a);
    snprintf(a, sizeof a, "node %s/a node-a --dns node-a.craft.test --dns localhost --ip 127.0.0.1", d),
        run(script, a);
    snprintf(a, sizeof a, "client %s/a oldclient --days -1", d), run(script, a);
    snprintf(a, sizeof a, "node %s/a oldserver --dns localhost --ip 127.0.0.1 --days -1", d),
        run(script, a);
    snprintf(a, sizeof a, "ca %s/b --cn other-ca", d), run(script, a);
    snprintf(a, sizeof a, "client %s/b stranger", d), run(script, a);
    snprintf(a, sizeof a, "node %s/b server-b --dns localhost --ip 127.0.0.1", d), run(script, a);
    setenv("CRAFT_RPC_TEST_CERTS", certs_dir, 1);
}

/* Made once in the runner process, before Criterion starts the test processes, which find
 * the directory through the environment. */
ReportHook(PRE_ALL)(struct criterion_test_set *set)
{
    (void)set;
    make_certs();
    /* Bazel's env gives the runner (this process) a suppression for Criterion's own leaks;
     * the test processes, started afresh from here, get full leak checking. */
    setenv("LSAN_OPTIONS", "", 1);
}

ReportHook(POST_ALL)(struct criterion_global_stats *stats)
{
    (void)stats;
    if (certs_dir[0]) {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", certs_dir);
        if (system(cmd) != 0)
            fprintf(stderr, "tests: could not remove %s\n", certs_dir);
    }
}

const char *tt_certs_dir(void)
{
    const char *d = getenv("CRAFT_RPC_TEST_CERTS");
    return d ? d : certs_dir;
}

void tt_tls(struct tt_tls *t, const char *ca_dir, const char *name)
{
    memset(t, 0, sizeof *t);
    const char *d = tt_certs_dir();
    snprintf(t->ca, sizeof t->ca, "%s/%s/ca.pem", d, ca_dir);
    t->tls.ca_file = t->ca;
    if (name) {
        /* "b/stranger" style names pick a certificate of the other CA */
        const char *slash = strchr(name, '/');
        if (slash) {
            snprintf(t->cert, sizeof t->cert, "%s/%s.pem", d, name);
            snprintf(t->key, sizeof t->key, "%s/%s-key.pem", d, name);
        } else {
            snprintf(t->cert, sizeof t->cert, "%s/%s/%s.pem", d, ca_dir, name);
            snprintf(t->key, sizeof t->key, "%s/%s/%s-key.pem", d, ca_dir, name);
        }
        t->tls.cert_file = t->cert;
        t->tls.key_file = t->key;
    }
}

long tt_scaled(long n, long min)
{
    const char *s = getenv("CRAFT_RPC_SCALE");
    double f = s ? atof(s) : 1.0;
    if (f <= 0)
        f = 1.0;
    long v = (long)((double)n * f);
    return v < min ? min : v;
}

/* ---- the test service --------------------------------------------------------------- */

static void h_echo(struct rpc_call *call, const uint8_t *req, size_t len, void *ctx)
{
    (void)ctx;
    atomic_fetch_add(&tt_counts.echo, 1);
    rpc_call_reply(call, req, len);
}

static void h_echo_msg(struct rpc_call *call, const ProtobufCMessage *req, void *ctx)
{
    (void)ctx;
    atomic_fetch_add(&tt_counts.echo_msg, 1);
    const Craft__Echo__EchoRequest *r = (const Craft__Echo__EchoRequest *)req;
    Craft__Echo__EchoReply rep = CRAFT__ECHO__ECHO_REPLY__INIT;
    rep.payload = r->payload;
    rep.seq = r->seq;
    rpc_call_reply_msg(call, &rep.base);
}

static void h_garbage(struct rpc_call *call, const uint8_t *req, size_t len, void *ctx)
{
    (void)ctx, (void)req, (void)len;
    static const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0xff};
    rpc_call_reply(call, junk, sizeof junk);
}

static void h_who(struct rpc_call *call, const uint8_t *req, size_t len, void *ctx)
{
    (void)ctx, (void)req, (void)len;
    atomic_fetch_add(&tt_counts.who, 1);
    struct rpc_peer p;
    char out[4096];
    int rc = rpc_call_peer_identity(call, &p);
    if (rc == RPC_ENOIDENT) {
        snprintf(out, sizeof out, "noident");
    } else if (rc != 0) {
        snprintf(out, sizeof out, "error %d", rc);
    } else {
        size_t o = (size_t)snprintf(out, sizeof out, "cn=%s;san=", p.cn);
        for (int i = 0; i < p.nsans && o < sizeof out; i++)
            o += (size_t)snprintf(out + o, sizeof out - o, "%s%s", i ? "," : "", p.sans[i]);
    }
    rpc_call_reply(call, out, strlen(out));
}

static void h_hold(struct rpc_call *call, const uint8_t *req, size_t len, void *ctx)
{
    (void)ctx, (void)req, (void)len;
    atomic_fetch_add(&tt_counts.hold, 1);
    pthread_mutex_lock(&tt_held.mu);
    if (tt_held.ncalls < TT_MAX_HELD)
        tt_held.calls[tt_held.ncalls++] = call;
    else
        rpc_call_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "test holds too many");
    pthread_cond_broadcast(&tt_held.cv);
    pthread_mutex_unlock(&tt_held.mu);
}

void tt_wait_held(int calls, int streams)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 20;
    pthread_mutex_lock(&tt_held.mu);
    int rc = 0;
    while ((tt_held.ncalls < calls || tt_held.nstreams < streams) && rc == 0)
        rc = pthread_cond_timedwait(&tt_held.cv, &tt_held.mu, &until);
    int nc = tt_held.ncalls, ns = tt_held.nstreams;
    pthread_mutex_unlock(&tt_held.mu);
    cr_assert(nc >= calls && ns >= streams, "server holds %d/%d calls, %d/%d streams", nc, calls,
              ns, streams);
}

/* Echo stream: per-stream state checks the client's sequence numbers arrive in order. */
struct echo_stream {
    uint64_t next;
    bool out_of_order;
};

static void *s_open(struct rpc_stream *s, void *ctx)
{
    (void)s, (void)ctx;
    atomic_fetch_add(&tt_counts.stream_open, 1);
    return calloc(1, sizeof(struct echo_stream));
}

static void s_message(struct rpc_stream *s, const uint8_t *data, size_t len, void *user)
{
    struct echo_stream *es = user;
    atomic_fetch_add(&tt_counts.stream_msgs, 1);
    if (len >= 8) {
        if (tt_get_seq(data) != es->next)
            es->out_of_order = true;
        es->next = tt_get_seq(data) + 1;
    }
    int rc = rpc_stream_send(s, data, len);
    if (rc != 0 && rc != RPC_ECLOSED)
        fprintf(stderr, "tests: echo stream send failed: %s\n", rpc_strerror(rc));
}

static void s_close(struct rpc_stream *s, grpc_status_code st, void *user)
{
    struct echo_stream *es = user;
    atomic_fetch_add(&tt_counts.stream_close, 1);
    if (es->out_of_order)
        rpc_stream_finish(s, GRPC_STATUS_DATA_LOSS, "out of order");
    else
        rpc_stream_finish(s, st == GRPC_STATUS_OK ? GRPC_STATUS_OK : GRPC_STATUS_CANCELLED,
                          "echo stream done");
    free(es);
}

static void *hs_open(struct rpc_stream *s, void *ctx)
{
    (void)ctx;
    pthread_mutex_lock(&tt_held.mu);
    if (tt_held.nstreams < TT_MAX_HELD)
        tt_held.streams[tt_held.nstreams++] = s;
    pthread_cond_broadcast(&tt_held.cv);
    pthread_mutex_unlock(&tt_held.mu);
    return NULL;
}

static void hs_message(struct rpc_stream *s, const uint8_t *data, size_t len, void *user)
{
    (void)s, (void)data, (void)len, (void)user;
}

static void hs_close(struct rpc_stream *s, grpc_status_code st, void *user)
{
    (void)s, (void)user;
    pthread_mutex_lock(&tt_held.mu);
    tt_held.stream_closes++;
    tt_held.last_close = st;
    pthread_cond_broadcast(&tt_held.cv);
    pthread_mutex_unlock(&tt_held.mu);
}

static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static bool gate_opened;

void tt_gate_open(void)
{
    pthread_mutex_lock(&gate_mu);
    gate_opened = true;
    pthread_cond_broadcast(&gate_cv);
    pthread_mutex_unlock(&gate_mu);
}

static void sink_message(struct rpc_stream *s, const uint8_t *data, size_t len, void *user)
{
    (void)s, (void)data, (void)len, (void)user;
    pthread_mutex_lock(&gate_mu);
    while (!gate_opened)
        pthread_cond_wait(&gate_cv, &gate_mu);
    pthread_mutex_unlock(&gate_mu);
}

static void sink_close(struct rpc_stream *s, grpc_status_code st, void *user)
{
    (void)st, (void)user;
    rpc_stream_finish(s, GRPC_STATUS_OK, NULL);
}

struct rpc_server *tt_server_start(const char *server_cert, int port,
                                   struct rpc_server_config *cfg)
{
    struct rpc_server_config def = {0};
    if (!cfg)
        cfg = &def;
    static struct tt_tls tls; /* the server copies what it needs at create time */
    if (server_cert) {
        tt_tls(&tls, "a", server_cert);
        return tt_server_start_tls(&tls.tls, port, cfg);
    }
    return tt_server_start_tls(NULL, port, cfg);
}

struct rpc_server *tt_server_start_tls(const struct rpc_tls *tls, int port,
                                       struct rpc_server_config *cfg)
{
    struct rpc_server_config def = {0};
    if (!cfg)
        cfg = &def;
    char listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
    cfg->listen = listen;
    cfg->tls = tls;
    cfg->insecure = tls == NULL;
    memset(&tt_counts, 0, sizeof tt_counts);
    char err[256] = "";
    struct rpc_server *srv = rpc_server_create(cfg, err, sizeof err);
    cr_assert(srv, "server create: %s", err);
    static const struct rpc_stream_handler echo_sh = {s_open, s_message, s_close, NULL};
    static const struct rpc_stream_handler hold_sh = {hs_open, hs_message, hs_close, NULL};
    cr_assert_eq(rpc_server_register_unary(srv, TT_ECHO, h_echo, NULL), 0);
    cr_assert_eq(rpc_server_register_unary_msg(srv, TT_ECHO_MSG, &craft__echo__echo_request__descriptor,
                                               h_echo_msg, NULL),
                 0);
    cr_assert_eq(rpc_server_register_unary(srv, TT_GARBAGE, h_garbage, NULL), 0);
    cr_assert_eq(rpc_server_register_unary(srv, TT_WHO, h_who, NULL), 0);
    cr_assert_eq(rpc_server_register_unary(srv, TT_HOLD, h_hold, NULL), 0);
    cr_assert_eq(rpc_server_register_stream(srv, TT_STREAM, &echo_sh, NULL), 0);
    cr_assert_eq(rpc_server_register_stream(srv, TT_HOLD_STREAM, &hold_sh, NULL), 0);
    static const struct rpc_stream_handler sink_sh = {NULL, sink_message, sink_close, NULL};
    cr_assert_eq(rpc_server_register_stream(srv, TT_SINK, &sink_sh, NULL), 0);
    cr_assert_eq(rpc_server_register_unary(srv, TT_ECHO, h_echo, NULL), RPC_EINVAL,
                 "duplicate registration must be refused");
    cr_assert_eq(rpc_server_start(srv), 0);
    cr_assert_eq(rpc_server_register_unary(srv, "/x.Y/Z", h_echo, NULL), RPC_ESTATE);
    return srv;
}

struct rpc_channel *tt_channel(int port, const char *ca_dir, const char *client_cert,
                               struct rpc_channel_config *cfg)
{
    struct rpc_channel_config def = {0};
    if (!cfg)
        cfg = &def;
    static struct tt_tls tls;
    char target[64];
    snprintf(target, sizeof target, "127.0.0.1:%d", port);
    cfg->target = target;
    if (ca_dir) {
        tt_tls(&tls, ca_dir, client_cert);
        cfg->tls = &tls.tls;
        cfg->insecure = false;
    } else {
        cfg->tls = NULL;
        cfg->insecure = true;
    }
    char err[256] = "";
    struct rpc_channel *ch = rpc_channel_create(cfg, err, sizeof err);
    cr_assert(ch, "channel create: %s", err);
    return ch;
}

void tt_put_seq(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

uint64_t tt_get_seq(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

void tt_latch_init(struct tt_latch *l)
{
    pthread_mutex_init(&l->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&l->cv, &ca);
    pthread_condattr_destroy(&ca);
    l->n = 0;
}

void tt_latch_add(struct tt_latch *l, long d)
{
    pthread_mutex_lock(&l->mu);
    l->n += d;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
}

long tt_latch_wait(struct tt_latch *l, long target, int timeout_ms)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&l->mu);
    while (l->n < target && pthread_cond_timedwait(&l->cv, &l->mu, &until) != ETIMEDOUT)
        ;
    long n = l->n;
    pthread_mutex_unlock(&l->mu);
    return n;
}
