/* rpc-bench: echo over the rpc layer (mutual TLS by default) on loopback; calls/s and
 * p50/p99 latency for blocking unary, async unary with N in flight, and a bidi stream with
 * a window of N messages in flight.
 *
 *   rpc-bench serve --listen HOST:PORT (--ca F --cert F --key F | --insecure) [--threads N]
 *   rpc-bench run   --target HOST:PORT (--ca F --cert F --key F | --insecure)
 *                   --mode unary|async|stream [--inflight N] [--duration S] [--payload B]
 *                   [--server-name NAME] [--threads N]
 *   rpc-bench all   (--certs DIR | --insecure) [--duration S] [--payload B]
 *
 * `all` starts a server in this process and runs unary (1 caller), async (64 and 512 in
 * flight) and stream (window 512) in turn, printing one table. DIR is what
 * `certs/craft-certs` makes: ca.pem, server.pem/server-key.pem (node certificate for
 * localhost/127.0.0.1), client.pem/client-key.pem. Bad flags: a message and exit 2. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rpc/rpc.h"

#define M_ECHO "/craft.echo.Echo/Echo"
#define M_STREAM "/craft.echo.Echo/Stream"
#define MAX_SAMPLES 4000000

static void die_usage(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "rpc-bench: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n(see the top of rpc/bench/rpc_bench.c or docs/benchmarks.md)\n");
    va_end(ap);
    exit(2);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- options ------------------------------------------------------------------------ */

struct opts {
    const char *listen, *target, *ca, *cert, *key, *certs, *server_name, *mode;
    bool insecure;
    int threads, inflight, payload;
    double duration;
};

static long parse_long(const char *flag, const char *v, long lo, long hi)
{
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || *end || end == v || n < lo || n > hi)
        die_usage("%s wants an integer in %ld..%ld, got '%s'", flag, lo, hi, v);
    return n;
}

static void parse(int argc, char **argv, struct opts *o)
{
    for (int i = 2; i < argc; i++) {
        const char *f = argv[i];
        if (strcmp(f, "--insecure") == 0) {
            o->insecure = true;
            continue;
        }
        if (i + 1 >= argc)
            die_usage("%s needs a value", f);
        const char *v = argv[++i];
        if (strcmp(f, "--listen") == 0) o->listen = v;
        else if (strcmp(f, "--target") == 0) o->target = v;
        else if (strcmp(f, "--ca") == 0) o->ca = v;
        else if (strcmp(f, "--cert") == 0) o->cert = v;
        else if (strcmp(f, "--key") == 0) o->key = v;
        else if (strcmp(f, "--certs") == 0) o->certs = v;
        else if (strcmp(f, "--server-name") == 0) o->server_name = v;
        else if (strcmp(f, "--mode") == 0) o->mode = v;
        else if (strcmp(f, "--threads") == 0) o->threads = (int)parse_long(f, v, 1, RPC_MAX_THREADS);
        else if (strcmp(f, "--inflight") == 0) o->inflight = (int)parse_long(f, v, 1, 100000);
        else if (strcmp(f, "--payload") == 0) o->payload = (int)parse_long(f, v, 0, 4 << 20);
        else if (strcmp(f, "--duration") == 0) o->duration = (double)parse_long(f, v, 1, 3600);
        else die_usage("unknown flag '%s'", f);
    }
}

static void need_tls(const struct opts *o)
{
    if (o->insecure)
        return;
    if (!o->ca || !o->cert || !o->key)
        die_usage("give --ca, --cert and --key (or --insecure for plaintext)");
}

/* ---- server ------------------------------------------------------------------------- */

static void h_echo(struct rpc_call *call, const uint8_t *req, size_t len, void *ctx)
{
    (void)ctx;
    rpc_call_reply(call, req, len);
}

static void s_message(struct rpc_stream *s, const uint8_t *data, size_t len, void *user)
{
    (void)user;
    rpc_stream_send(s, data, len); /* reading pauses while the send queue is full */
}

static void s_close(struct rpc_stream *s, grpc_status_code st, void *user)
{
    (void)user;
    rpc_stream_finish(s, st == GRPC_STATUS_OK ? GRPC_STATUS_OK : GRPC_STATUS_CANCELLED, NULL);
}

static struct rpc_server *start_server(const char *listen, const struct rpc_tls *tls, int threads)
{
    struct rpc_server_config cfg = {
        .listen = listen, .tls = tls, .insecure = tls == NULL, .threads = threads};
    char err[512];
    struct rpc_server *srv = rpc_server_create(&cfg, err, sizeof err);
    if (!srv) {
        fprintf(stderr, "rpc-bench: %s\n", err);
        exit(1);
    }
    static const struct rpc_stream_handler sh = {NULL, s_message, s_close, NULL};
    if (rpc_server_register_unary(srv, M_ECHO, h_echo, NULL) != 0 ||
        rpc_server_register_stream(srv, M_STREAM, &sh, NULL) != 0 || rpc_server_start(srv) != 0) {
        fprintf(stderr, "rpc-bench: cannot start the server\n");
        exit(1);
    }
    return srv;
}

/* ---- latency samples ---------------------------------------------------------------- */

struct lat {
    pthread_mutex_t mu;
    double *us;
    long n;
    long errors;
    double last_done;
};

static void lat_add(struct lat *l, double us, bool ok, double t)
{
    pthread_mutex_lock(&l->mu);
    if (!ok)
        l->errors++;
    else if (l->n < MAX_SAMPLES)
        l->us[l->n++] = us;
    if (t > l->last_done)
        l->last_done = t;
    pthread_mutex_unlock(&l->mu);
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

struct row {
    char mode[32];
    int inflight;
    double rate, p50, p99;
    long errors;
};

static void lat_finish(struct lat *l, double start, struct row *r)
{
    qsort(l->us, (size_t)l->n, sizeof *l->us, cmp_d);
    double el = l->last_done - start;
    r->rate = el > 0 ? (double)l->n / el : 0;
    r->p50 = l->n ? l->us[l->n / 2] : 0;
    r->p99 = l->n ? l->us[(long)((double)l->n * 0.99)] : 0;
    r->errors = l->errors;
}

/* ---- client modes ------------------------------------------------------------------- */

struct run {
    struct rpc_channel *ch;
    uint8_t *payload;
    size_t len;
    double end;
    struct lat lat;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    long active; /* async: callers still going; stream: messages in flight */
    long sent, received;
    bool closed;
};

static void *unary_caller(void *arg)
{
    struct run *r = arg;
    for (;;) {
        double t0 = now_s();
        if (t0 >= r->end)
            break;
        struct rpc_result res;
        rpc_channel_call(r->ch, M_ECHO, r->payload, r->len, 10000, &res);
        double t1 = now_s();
        lat_add(&r->lat, (t1 - t0) * 1e6, res.status == GRPC_STATUS_OK, t1);
        rpc_result_free(&res);
    }
    return NULL;
}

struct actx {
    struct run *r;
    double t0;
};

static void async_done(struct rpc_result *res, void *arg)
{
    struct actx *a = arg;
    struct run *r = a->r;
    double t1 = now_s();
    lat_add(&r->lat, (t1 - a->t0) * 1e6, res->status == GRPC_STATUS_OK, t1);
    if (t1 < r->end) {
        a->t0 = t1;
        if (rpc_channel_call_async(r->ch, M_ECHO, r->payload, r->len, 10000, async_done, a) == 0)
            return;
    }
    free(a);
    pthread_mutex_lock(&r->mu);
    if (--r->active == 0)
        pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static void stream_msg(struct rpc_client_stream *s, const uint8_t *d, size_t len, void *arg)
{
    (void)s;
    struct run *r = arg;
    double t1 = now_s(), t0 = 0;
    if (len >= sizeof t0)
        memcpy(&t0, d, sizeof t0);
    lat_add(&r->lat, (t1 - t0) * 1e6, len >= sizeof t0, t1);
    pthread_mutex_lock(&r->mu);
    r->received++;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static void stream_close(struct rpc_client_stream *s, grpc_status_code st, const char *m, void *arg)
{
    (void)s;
    struct run *r = arg;
    if (st != GRPC_STATUS_OK)
        fprintf(stderr, "rpc-bench: stream ended with %d %s\n", st, m);
    pthread_mutex_lock(&r->mu);
    r->closed = true;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static struct row run_mode(const struct rpc_channel_config *ccfg, const char *mode, int inflight,
                           double duration, int payload)
{
    struct row row = {0};
    snprintf(row.mode, sizeof row.mode, "%s", mode);
    row.inflight = inflight;
    char err[512];
    struct rpc_channel *ch = rpc_channel_create(ccfg, err, sizeof err);
    if (!ch) {
        fprintf(stderr, "rpc-bench: %s\n", err);
        exit(1);
    }
    struct run r = {.ch = ch};
    r.len = strcmp(mode, "stream") == 0 && payload < 8 ? 8 : (size_t)payload;
    r.payload = calloc(1, r.len + 1);
    r.lat.us = malloc(sizeof(double) * MAX_SAMPLES);
    pthread_mutex_init(&r.lat.mu, NULL);
    pthread_mutex_init(&r.mu, NULL);
    pthread_cond_init(&r.cv, NULL);
    /* warm up: connect (TLS handshake) before the clock starts */
    struct rpc_result res;
    rpc_channel_call(ch, M_ECHO, "w", 1, 10000, &res);
    if (res.status != GRPC_STATUS_OK) {
        fprintf(stderr, "rpc-bench: cannot reach the server: %d %s\n", res.status, res.message);
        exit(1);
    }
    rpc_result_free(&res);

    double start = now_s();
    r.end = start + duration;
    if (strcmp(mode, "unary") == 0) {
        pthread_t th[256];
        int n = inflight > 256 ? 256 : inflight;
        row.inflight = n;
        for (int i = 0; i < n; i++)
            pthread_create(&th[i], NULL, unary_caller, &r);
        for (int i = 0; i < n; i++)
            pthread_join(th[i], NULL);
    } else if (strcmp(mode, "async") == 0) {
        r.active = inflight;
        for (int i = 0; i < inflight; i++) {
            struct actx *a = malloc(sizeof *a);
            a->r = &r;
            a->t0 = now_s();
            if (rpc_channel_call_async(ch, M_ECHO, r.payload, r.len, 10000, async_done, a) != 0) {
                free(a);
                pthread_mutex_lock(&r.mu);
                r.active--;
                pthread_mutex_unlock(&r.mu);
            }
        }
        pthread_mutex_lock(&r.mu);
        while (r.active > 0)
            pthread_cond_wait(&r.cv, &r.mu);
        pthread_mutex_unlock(&r.mu);
    } else {
        static const struct rpc_client_stream_handler h = {stream_msg, stream_close, NULL};
        struct rpc_client_stream *s = rpc_channel_stream_open(ch, M_STREAM, &h, &r);
        if (!s) {
            fprintf(stderr, "rpc-bench: cannot open a stream\n");
            exit(1);
        }
        while (now_s() < r.end) {
            pthread_mutex_lock(&r.mu);
            while (r.sent - r.received >= inflight && !r.closed)
                pthread_cond_wait(&r.cv, &r.mu);
            bool closed = r.closed;
            pthread_mutex_unlock(&r.mu);
            if (closed)
                break;
            double t = now_s();
            memcpy(r.payload, &t, sizeof t);
            if (rpc_client_stream_send(s, r.payload, r.len, 10000) != 0)
                break;
            r.sent++;
        }
        pthread_mutex_lock(&r.mu);
        while (r.received < r.sent && !r.closed)
            pthread_cond_wait(&r.cv, &r.mu);
        pthread_mutex_unlock(&r.mu);
        rpc_client_stream_close(s);
        pthread_mutex_lock(&r.mu);
        while (!r.closed)
            pthread_cond_wait(&r.cv, &r.mu);
        pthread_mutex_unlock(&r.mu);
    }
    rpc_channel_destroy(ch);
    lat_finish(&r.lat, start, &row);
    free(r.lat.us);
    free(r.payload);
    return row;
}

static void print_header(void)
{
    printf("%-8s %9s %12s %10s %10s %7s\n", "mode", "inflight", "calls/s", "p50 us", "p99 us",
           "errors");
}

static void print_row(const struct row *r)
{
    printf("%-8s %9d %12.0f %10.0f %10.0f %7ld\n", r->mode, r->inflight, r->rate, r->p50, r->p99,
           r->errors);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        die_usage("give a command: serve, run or all");
    struct opts o = {.inflight = 1, .duration = 5, .payload = 64};
    parse(argc, argv, &o);
    const char *cmd = argv[1];
    struct rpc_tls tls;
    char paths[3][1024];

    if (strcmp(cmd, "serve") == 0) {
        if (!o.listen)
            die_usage("serve needs --listen HOST:PORT");
        need_tls(&o);
        tls = (struct rpc_tls){.ca_file = o.ca, .cert_file = o.cert, .key_file = o.key};
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGINT);
        sigaddset(&set, SIGTERM);
        pthread_sigmask(SIG_BLOCK, &set, NULL); /* every thread inherits the mask */
        struct rpc_server *srv = start_server(o.listen, o.insecure ? NULL : &tls, o.threads);
        fprintf(stderr, "rpc-bench: serving on port %d (%s); Ctrl-C stops\n",
                rpc_server_port(srv), o.insecure ? "plaintext" : "mutual TLS");
        int sig;
        sigwait(&set, &sig);
        rpc_server_shutdown(srv, 1000);
        return 0;
    }
    if (strcmp(cmd, "run") == 0) {
        if (!o.target)
            die_usage("run needs --target HOST:PORT");
        if (!o.mode || (strcmp(o.mode, "unary") && strcmp(o.mode, "async") && strcmp(o.mode, "stream")))
            die_usage("run needs --mode unary|async|stream");
        need_tls(&o);
        tls = (struct rpc_tls){.ca_file = o.ca, .cert_file = o.cert, .key_file = o.key};
        struct rpc_channel_config c = {.target = o.target, .tls = o.insecure ? NULL : &tls,
                                       .insecure = o.insecure, .server_name = o.server_name,
                                       .threads = o.threads};
        print_header();
        struct row r = run_mode(&c, o.mode, o.inflight, o.duration, o.payload);
        print_row(&r);
        return 0;
    }
    if (strcmp(cmd, "all") == 0) {
        if (!o.certs && !o.insecure)
            die_usage("all needs --certs DIR (made by certs/craft-certs) or --insecure");
        struct rpc_tls stls = {0};
        if (!o.insecure) {
            snprintf(paths[0], sizeof paths[0], "%s/ca.pem", o.certs);
            snprintf(paths[1], sizeof paths[1], "%s/server.pem", o.certs);
            snprintf(paths[2], sizeof paths[2], "%s/server-key.pem", o.certs);
            stls = (struct rpc_tls){.ca_file = paths[0], .cert_file = paths[1], .key_file = paths[2]};
        }
        struct rpc_server *srv = start_server("127.0.0.1:0", o.insecure ? NULL : &stls, o.threads);
        char target[64], ccert[1024], ckey[1024];
        snprintf(target, sizeof target, "127.0.0.1:%d", rpc_server_port(srv));
        snprintf(ccert, sizeof ccert, "%s/client.pem", o.certs ? o.certs : "");
        snprintf(ckey, sizeof ckey, "%s/client-key.pem", o.certs ? o.certs : "");
        tls = (struct rpc_tls){.ca_file = paths[0], .cert_file = ccert, .key_file = ckey};
        struct rpc_channel_config c = {
            .target = target, .tls = o.insecure ? NULL : &tls, .insecure = o.insecure};
        printf("# echo, %d-byte payload, %.0f s per row, %s, server and client in one process\n",
               o.payload, o.duration, o.insecure ? "plaintext" : "mutual TLS");
        print_header();
        static const struct { const char *mode; int inflight; } plan[] = {
            {"unary", 1}, {"async", 64}, {"async", 512}, {"stream", 512}};
        for (size_t i = 0; i < sizeof plan / sizeof plan[0]; i++) {
            struct row r = run_mode(&c, plan[i].mode, plan[i].inflight, o.duration, o.payload);
            print_row(&r);
        }
        rpc_server_shutdown(srv, 1000);
        return 0;
    }
    die_usage("unknown command '%s' (serve, run, all)", cmd);
}
