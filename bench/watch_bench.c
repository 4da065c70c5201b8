/* watch-bench: Watch fan-out against an etcd v3 server (craft or etcd itself).
 *
 * What it promises
 * - Watchers: --watchers W watches of one key prefix (a fresh directory per run, so earlier
 *   runs' keys never count), --per-stream K of them sharing one /etcdserverpb.Watch/Watch
 *   stream, the streams spread round-robin over --conns C gRPC channels (each its own TLS
 *   connection; C is capped at the number of streams), the channels round-robin over every
 *   --endpoints URL. Default K = 100: etcd's
 *   client library multiplexes all the watches of a client on one stream, and etcd's own
 *   `benchmark watch-latency` uses 100 watches per stream; K = 1 measures per-stream cost
 *   instead. Each watch is its own WatchCreateRequest (start revision 0: from now); every
 *   create of a stream is sent at once and the n-th `created` response of a stream is its
 *   n-th watch (servers answer creates in order). The creation time (first create sent to
 *   last `created` received) is reported; the writer starts only when every watch exists.
 * - Writer: one writer on its own connection (--writer-endpoint, default the first endpoint)
 *   puts at a steady --rate R per second for --duration D seconds (put i is due at
 *   start + i/R; at most --writer-inflight puts in flight, so a slow server makes the writer
 *   fall behind, reported as its lag, instead of queueing without bound). Each put writes a
 *   new key (prefix + sequence number) whose value carries the CLOCK_MONOTONIC time the put
 *   was sent; the reply's revision is kept per put.
 * - Results: events delivered per second over all watchers (unique events / the longer of
 *   the writer's schedule and the time from the first put to the last event), put-to-event latency p50/p90/p99/p99.9/max over every
 *   (watcher, event) delivery from a log-linear histogram (128 sub-buckets per power of two:
 *   under 1% relative error, fixed size), the writer's put latency and lag, watch creation
 *   time, and the client's CPU time (user + system of this process from the first put to the
 *   end of the drain) per event delivered. The latency is also given per endpoint (the
 *   watchers each member served), so a leader and its followers can be told apart. --json prints one JSON object instead of the text.
 * - Exactly once, in revision order: every watcher must see every acknowledged put once, with
 *   strictly increasing mod_revision. Counted per watcher and summed: lost (acknowledged puts
 *   the watcher never saw by the end of the --drain-ms wait), duplicated or out of order (an
 *   event whose revision is not above the watcher's previous one), mismatched (an event whose
 *   revision differs from the one the put's reply gave, or not a PUT of a new key), foreign (a
 *   key or value this run did not write), canceled watches and streams that ended early.
 * - Bounds: at most 100,000 watchers, 10,000 per stream, 1,024 connections, 100,000 puts/s,
 *   3,600 s and 10,000,000 puts per run (one 8-byte revision slot per put), 4,096 puts in
 *   flight, 64 KiB values. Memory is fixed by these; gRPC's own per-stream queues are bounded.
 * - Exit status: 0 when every watch was created, every put succeeded and no watcher saw a
 *   violation; 1 otherwise (or when the targets could not be reached); 2 for bad flags (one
 *   line naming the problem). SIGINT/SIGTERM stop the run early and still print the results.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench_client.h"
#include "bench/bench_hist.h"
#include "rpc/rpc.h"
#include "services/proto/etcd/kv.pb-c.h"
#include "services/proto/etcd/rpc.pb-c.h"

#define MAX_EPS 16
#define MAX_WATCHERS 100000
#define MAX_PER_STREAM 10000
#define MAX_CONNS 1024
#define MAX_RATE 100000
#define MAX_DURATION_S 3600.0
#define MAX_PUTS 10000000LL
#define MAX_WRITER_INFLIGHT 4096
#define MAX_VAL_SIZE 65536
#define MIN_VAL_SIZE 42 /* "%020lld %020llu" and a byte of padding */
#define MAX_PREFIX 200
#define MAX_WAIT_MS 600000LL
#define MAX_CLIENT_THREADS 8
#define SEQ_DIGITS 12

static const char *const watch_method = "/etcdserverpb.Watch/Watch";
static const char *const put_method = "/etcdserverpb.KV/Put";

static void hist_snap_of(struct hist *h, struct hist_snap *s)
{
    memset(s, 0, sizeof *s);
    hist_add_to(h, s);
}

/* ---- options ------------------------------------------------------------------------------ */

struct opts {
    char *eps[MAX_EPS];
    int n_eps;
    char *writer_ep;
    struct rpc_tls tls;
    bool insecure;
    const char *server_name;
    const char *prefix;
    long long watchers, per_stream, conns, rate, writer_inflight, val_size, drain_ms,
        create_timeout_ms, deadline_ms, threads;
    double duration;
    bool json, quiet;
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: watch-bench [flags]\n"
            "Watch fan-out against an etcd v3 server (craft or etcd): W watchers on one prefix,\n"
            "one writer at a steady rate; events/s, put-to-event latency, exactly-once check.\n"
            "  --endpoints URL[,URL...]  https://host:port (or http:// with --insecure); default\n"
            "                            https://127.0.0.1:2379; connections go round-robin\n"
            "  --writer-endpoint URL     where the writer puts (default: the first endpoint)\n"
            "  --cacert F --cert F --key F   mutual TLS files (https endpoints)\n"
            "  --insecure                plaintext (http:// endpoints)\n"
            "  --server-name NAME        name the server certificates must carry (default: host)\n"
            "  --watchers W              watches, 1..%d (default 1000)\n"
            "  --per-stream K            watches sharing one Watch stream, 1..%d (default 100,\n"
            "                            as etcd's client library and benchmark tool do)\n"
            "  --conns C                 connections for the watch streams, 1..%d (default 10;\n"
            "                            at most one per stream)\n"
            "  --rate R                  puts per second, 1..%d (default 100)\n"
            "  --duration S              seconds of puts, up to %.0f (default 10);\n"
            "                            rate x duration <= %lld\n"
            "  --writer-inflight N       puts in flight at most, 1..%d (default 256)\n"
            "  --val-size B              value bytes, %d..%d (default 64)\n"
            "  --prefix P                key prefix; each run watches P<pid>.<time>/ (default\n"
            "                            /watch-bench/)\n"
            "  --drain-ms T              wait after the last put for every event (default 10000)\n"
            "  --create-timeout-ms T     wait for every watch to be created (default 30000)\n"
            "  --deadline-ms T           per-put deadline (default 10000)\n"
            "  --client-threads T        callback threads per connection, 1..%d (default 1)\n"
            "  --json                    print the result as one JSON object\n"
            "  --quiet                   no progress line on stderr\n"
            "  --help                    this text\n"
            "Exit status: 0 every watch created, every put OK and every watcher saw every put\n"
            "exactly once in revision order; 1 otherwise or setup failed; 2 bad flags.\n",
            MAX_WATCHERS, MAX_PER_STREAM, MAX_CONNS, MAX_RATE, MAX_DURATION_S, MAX_PUTS,
            MAX_WRITER_INFLIGHT, MIN_VAL_SIZE, MAX_VAL_SIZE, MAX_CLIENT_THREADS);
}

static void bad_usage(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("watch-bench: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs(" (watch-bench --help for usage)\n", stderr);
    va_end(ap);
    exit(2);
}

static long long parse_int(const char *flag, const char *v, long long lo, long long hi)
{
    long long x;
    char err[BENCH_ERR_MAX];
    if (bench_parse_int(flag, v, lo, hi, &x, err, sizeof err) != 0)
        bad_usage("%s", err);
    return x;
}

static void parse_args(int argc, char **argv, struct opts *o)
{
    static char default_ep[] = "https://127.0.0.1:2379";
    *o = (struct opts){.watchers = 1000, .per_stream = 100, .conns = 10, .rate = 100,
                       .duration = 10, .writer_inflight = 256, .val_size = 64,
                       .drain_ms = 10000, .create_timeout_ms = 30000, .deadline_ms = 10000,
                       .threads = 1, .prefix = "/watch-bench/"};
    char *endpoints = NULL;
    const struct bench_bool_flag bools[] = {
        {"--insecure", &o->insecure}, {"--json", &o->json}, {"--quiet", &o->quiet}, {NULL, NULL}};
    static const char *const valued[] = {
        "--endpoints", "--writer-endpoint", "--cacert", "--cert", "--key",
        "--server-name", "--watchers", "--per-stream", "--conns", "--rate", "--duration",
        "--writer-inflight", "--val-size", "--prefix", "--drain-ms", "--create-timeout-ms",
        "--deadline-ms", "--client-threads", NULL};
    char err[BENCH_ERR_MAX];
    for (int i = 1; i < argc; i++) {
        char *f, *v;
        int r = bench_flag_next(argc, argv, &i, bools, valued, &f, &v, err, sizeof err);
        if (r == BENCH_FLAG_HELP) {
            usage(stdout);
            exit(0);
        }
        if (r < 0)
            bad_usage("%s", err);
        if (r == BENCH_FLAG_BOOL)
            continue;
        if (!strcmp(f, "--endpoints")) {
            endpoints = v;
        } else if (!strcmp(f, "--writer-endpoint")) {
            o->writer_ep = v;
        } else if (!strcmp(f, "--cacert")) {
            o->tls.ca_file = v;
        } else if (!strcmp(f, "--cert")) {
            o->tls.cert_file = v;
        } else if (!strcmp(f, "--key")) {
            o->tls.key_file = v;
        } else if (!strcmp(f, "--server-name")) {
            o->server_name = v;
        } else if (!strcmp(f, "--watchers")) {
            o->watchers = parse_int(f, v, 1, MAX_WATCHERS);
        } else if (!strcmp(f, "--per-stream")) {
            o->per_stream = parse_int(f, v, 1, MAX_PER_STREAM);
        } else if (!strcmp(f, "--conns")) {
            o->conns = parse_int(f, v, 1, MAX_CONNS);
        } else if (!strcmp(f, "--rate")) {
            o->rate = parse_int(f, v, 1, MAX_RATE);
        } else if (!strcmp(f, "--duration")) {
            if (bench_parse_seconds(f, v, MAX_DURATION_S, &o->duration, err, sizeof err) != 0)
                bad_usage("%s", err);
        } else if (!strcmp(f, "--writer-inflight")) {
            o->writer_inflight = parse_int(f, v, 1, MAX_WRITER_INFLIGHT);
        } else if (!strcmp(f, "--val-size")) {
            o->val_size = parse_int(f, v, MIN_VAL_SIZE, MAX_VAL_SIZE);
        } else if (!strcmp(f, "--prefix")) {
            if (!*v || strlen(v) > MAX_PREFIX)
                bad_usage("--prefix: must be 1..%d bytes", MAX_PREFIX);
            o->prefix = v;
        } else if (!strcmp(f, "--drain-ms")) {
            o->drain_ms = parse_int(f, v, 0, MAX_WAIT_MS);
        } else if (!strcmp(f, "--create-timeout-ms")) {
            o->create_timeout_ms = parse_int(f, v, 1, MAX_WAIT_MS);
        } else if (!strcmp(f, "--deadline-ms")) {
            o->deadline_ms = parse_int(f, v, 1, MAX_WAIT_MS);
        } else if (!strcmp(f, "--client-threads")) {
            o->threads = parse_int(f, v, 1, MAX_CLIENT_THREADS);
        }
    }
    double puts = floor((double)o->rate * o->duration);
    if (puts < 1)
        bad_usage("--rate %lld x --duration %g is less than one put", o->rate, o->duration);
    if (puts > (double)MAX_PUTS)
        bad_usage("--rate x --duration = %.0f puts is more than %lld", puts, MAX_PUTS);
    if (!endpoints)
        endpoints = default_ep;
    if (bench_parse_endpoints(endpoints, o->insecure, o->eps, MAX_EPS, &o->n_eps, err,
                              sizeof err) != 0)
        bad_usage("%s", err);
    if (o->writer_ep) {
        if (bench_check_url("--writer-endpoint", o->writer_ep, o->insecure, err, sizeof err) != 0)
            bad_usage("%s", err);
    } else {
        o->writer_ep = o->eps[0];
    }
    if (bench_check_tls_flags(&o->tls, o->insecure, err, sizeof err) != 0)
        bad_usage("%s", err);
}

/* ---- state --------------------------------------------------------------------------------- */

/* One watch (its server id lives in its stream's table). Written only by its stream's callback
 * thread; the counters are atomics because the main thread reads them for progress and the
 * drain check. */
struct watcher {
    int64_t last_rev; /* revision of the newest event seen */
    _Atomic uint64_t unique, dups, mismatched, foreign;
    atomic_bool created, canceled;
};

/* One Watch stream carrying watchers [first, first + n). */
struct wstream {
    struct bench *b;
    struct rpc_client_stream *s;
    int conn;
    long long first, n;
    long long ncreated; /* callback thread only */
    int64_t *ids;       /* open addressing: watch id -> local index, cap slots */
    int *idx;
    long long cap;
    atomic_bool closed;
};

struct put_slot {
    struct bench *b;
    struct put_slot *next;
    long long seq;
    int64_t t0;
};

struct bench {
    const struct opts *o;
    struct rpc_channel **chans; /* o->conns watch channels */
    struct rpc_channel *wch;    /* the writer's channel */
    struct watcher *w;
    struct wstream *st;
    long long n_streams;
    char dir[MAX_PREFIX + 64]; /* this run's prefix: o->prefix + "<pid>.<ns>/" */
    size_t dir_len;
    long long n_puts;
    _Atomic int64_t *revs; /* revision per put, 0 until acknowledged */
    /* writer */
    pthread_mutex_t wmu;
    pthread_cond_t wcv;
    struct put_slot *slots, *free_slots;
    long long w_inflight;
    atomic_llong sent, acked, put_errors;
    atomic_bool writer_done;
    int64_t first_put_ns, max_lag_ns;
    char put_err[256];
    struct hist put_hist;
    /* watchers */
    struct hist ev_hist;
    struct hist ep_hist[MAX_EPS]; /* the same deliveries by the endpoint that served them */
    _Atomic int64_t last_event_ns;
    atomic_llong created, stream_errors, canceled;
    atomic_bool stopping;
    pthread_mutex_t msg_mu;
    char stream_err[256], cancel_reason[256];
};

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

/* Keeps the first message of a kind (dst is one of the bench's 256-byte message buffers). */
__attribute__((format(printf, 4, 5)))
static void note_msg(struct bench *b, char *dst, size_t size, const char *fmt, ...)
{
    pthread_mutex_lock(&b->msg_mu);
    if (!dst[0]) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(dst, size, fmt, ap);
        va_end(ap);
    }
    pthread_mutex_unlock(&b->msg_mu);
}

/* Writes idx as exactly `size` decimal digits (idx < 10^size). */
static void format_seq(char *buf, size_t size, long long idx)
{
    for (size_t i = size; i > 0; i--) {
        buf[i - 1] = (char)('0' + idx % 10);
        idx /= 10;
    }
}

/* ---- watch streams ------------------------------------------------------------------------ */

static uint64_t id_hash(int64_t id)
{
    uint64_t z = (uint64_t)id * 0x9E3779B97F4A7C15ull;
    return z ^ (z >> 29);
}

/* Local index of watch id on stream st, or -1. */
static long long st_lookup(const struct wstream *st, int64_t id)
{
    for (long long i = (long long)(id_hash(id) & (uint64_t)(st->cap - 1)), k = 0; k < st->cap;
         i = (i + 1) & (st->cap - 1), k++) {
        if (st->idx[i] < 0)
            return -1;
        if (st->ids[i] == id)
            return st->idx[i];
    }
    return -1;
}

/* Binds id to the next watcher of st still waiting for its `created`; false if the id is
 * already bound (a server bug) or every watcher is created. */
static bool st_bind(struct wstream *st, int64_t id)
{
    if (st->ncreated >= st->n || st_lookup(st, id) >= 0)
        return false;
    long long i = (long long)(id_hash(id) & (uint64_t)(st->cap - 1));
    while (st->idx[i] >= 0)
        i = (i + 1) & (st->cap - 1);
    st->ids[i] = id;
    st->idx[i] = (int)st->ncreated++;
    return true;
}

/* Parses a decimal of exactly `len` digits; false if anything else. */
static bool parse_digits(const uint8_t *p, size_t len, uint64_t *out)
{
    uint64_t x = 0;
    if (len == 0 || len > 20)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9')
            return false;
        x = x * 10 + (uint64_t)(p[i] - '0');
    }
    *out = x;
    return true;
}

static void on_event(struct bench *b, struct watcher *w, int ep, const Mvccpb__Event *ev,
                     int64_t t)
{
    const Mvccpb__KeyValue *kv = ev->kv;
    uint64_t seq, sent;
    if (!kv || kv->key.len != b->dir_len + SEQ_DIGITS ||
        memcmp(kv->key.data, b->dir, b->dir_len) != 0 ||
        !parse_digits(kv->key.data + b->dir_len, SEQ_DIGITS, &seq) ||
        seq >= (uint64_t)b->n_puts || kv->value.len < 41 ||
        !parse_digits(kv->value.data, 20, &sent)) {
        atomic_fetch_add_explicit(&w->foreign, 1, memory_order_relaxed);
        return;
    }
    int64_t rev = kv->mod_revision;
    if (rev <= w->last_rev) {
        atomic_fetch_add_explicit(&w->dups, 1, memory_order_relaxed);
        return;
    }
    w->last_rev = rev;
    int64_t known = atomic_load_explicit(&b->revs[seq], memory_order_relaxed);
    if (ev->type != MVCCPB__EVENT__EVENT_TYPE__PUT || kv->version != 1 ||
        kv->create_revision != rev || (known && known != rev))
        atomic_fetch_add_explicit(&w->mismatched, 1, memory_order_relaxed);
    uint64_t lat = t > (int64_t)sent ? (uint64_t)(t - (int64_t)sent) : 0;
    hist_record(&b->ev_hist, lat);
    hist_record(&b->ep_hist[ep], lat);
    atomic_fetch_add_explicit(&w->unique, 1, memory_order_release);
}

static void ws_on_message(struct rpc_client_stream *s, const uint8_t *data, size_t len, void *arg)
{
    (void)s;
    struct wstream *st = arg;
    struct bench *b = st->b;
    int64_t t = bench_now_ns();
    Etcdserverpb__WatchResponse *r = (Etcdserverpb__WatchResponse *)rpc_msg_unpack(
        &etcdserverpb__watch_response__descriptor, data, len);
    if (!r) {
        atomic_fetch_add(&b->stream_errors, 1);
        note_msg(b, b->stream_err, sizeof b->stream_err, "an undecodable WatchResponse");
        return;
    }
    long long li = st_lookup(st, r->watch_id);
    bool newly_created = false;
    if (r->created) {
        if (li >= 0 || !st_bind(st, r->watch_id)) {
            atomic_fetch_add(&b->stream_errors, 1);
            note_msg(b, b->stream_err, sizeof b->stream_err,
                     "a `created` response for a watch id already in use, or one too many");
        } else {
            li = st->ncreated - 1;
            newly_created = true;
        }
    }
    if (li < 0) {
        if (!r->created) { /* e.g. a progress notification for the whole stream (id -1) */
            if (r->n_events) {
                atomic_fetch_add(&b->stream_errors, 1);
                note_msg(b, b->stream_err, sizeof b->stream_err, "events for an unknown watch id");
            }
        }
    } else {
        struct watcher *w = &b->w[st->first + li];
        for (size_t i = 0; i < r->n_events; i++)
            on_event(b, w, st->conn % b->o->n_eps, r->events[i], t);
        if (r->n_events) {
            int64_t m = atomic_load_explicit(&b->last_event_ns, memory_order_relaxed);
            while (t > m && !atomic_compare_exchange_weak_explicit(
                                &b->last_event_ns, &m, t, memory_order_relaxed,
                                memory_order_relaxed))
                ;
        }
        if (r->canceled && !atomic_exchange(&w->canceled, true)) {
            atomic_fetch_add(&b->canceled, 1);
            note_msg(b, b->cancel_reason, sizeof b->cancel_reason,
                     "%s (compact_revision %" PRId64 ")",
                     r->cancel_reason && *r->cancel_reason ? r->cancel_reason : "no reason given",
                     r->compact_revision);
        }
        /* Counted last: whoever sees every watch created also sees one canceled at birth. */
        if (newly_created) {
            atomic_store(&w->created, true);
            atomic_fetch_add(&b->created, 1);
        }
    }
    protobuf_c_message_free_unpacked(&r->base, NULL);
}

static void ws_on_close(struct rpc_client_stream *s, grpc_status_code status, const char *msg,
                        void *arg)
{
    (void)s;
    struct wstream *st = arg;
    struct bench *b = st->b;
    atomic_store(&st->closed, true);
    if (!atomic_load(&b->stopping)) {
        atomic_fetch_add(&b->stream_errors, 1);
        note_msg(b, b->stream_err, sizeof b->stream_err,
                 "a Watch stream ended early: gRPC status %d: %s", (int)status,
                 msg && *msg ? msg : "(no message)");
    }
}

static const struct rpc_client_stream_handler ws_handler = {
    .on_message = ws_on_message,
    .on_close = ws_on_close,
};

/* Opens stream st and sends its creates. 0 or -1 (message on stderr). */
static int ws_start(struct bench *b, struct wstream *st)
{
    st->s = rpc_channel_stream_open(b->chans[st->conn], watch_method, &ws_handler, st);
    if (!st->s) {
        fprintf(stderr, "watch-bench: cannot open a Watch stream\n");
        return -1;
    }
    char end[MAX_PREFIX + 64];
    memcpy(end, b->dir, b->dir_len);
    end[b->dir_len - 1]++; /* the directory ends in '/': '/' + 1 = '0' ends the prefix range */
    Etcdserverpb__WatchCreateRequest cr = ETCDSERVERPB__WATCH_CREATE_REQUEST__INIT;
    cr.key.data = (uint8_t *)b->dir;
    cr.key.len = b->dir_len;
    cr.range_end.data = (uint8_t *)end;
    cr.range_end.len = b->dir_len;
    Etcdserverpb__WatchRequest req = ETCDSERVERPB__WATCH_REQUEST__INIT;
    req.request_union_case = ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST;
    req.create_request = &cr;
    uint8_t buf[2 * MAX_PREFIX + 256];
    size_t len = protobuf_c_message_pack(&req.base, buf);
    for (long long i = 0; i < st->n; i++) {
        int rc = rpc_client_stream_send(st->s, buf, len, (int)b->o->create_timeout_ms);
        if (rc != 0) {
            fprintf(stderr, "watch-bench: cannot send a watch create: %s\n", rpc_strerror(rc));
            return -1;
        }
    }
    return 0;
}

/* ---- writer --------------------------------------------------------------------------------- */

static void on_put_done(struct rpc_result *res, void *arg)
{
    struct put_slot *ps = arg;
    struct bench *b = ps->b;
    int64_t t = bench_now_ns();
    if (res->status == GRPC_STATUS_OK) {
        Etcdserverpb__PutResponse *pr = (Etcdserverpb__PutResponse *)rpc_msg_unpack(
            &etcdserverpb__put_response__descriptor, res->data, res->len);
        if (pr && pr->header && pr->header->revision > 0) {
            atomic_store_explicit(&b->revs[ps->seq], pr->header->revision, memory_order_relaxed);
            hist_record(&b->put_hist, (uint64_t)(t - ps->t0));
            atomic_fetch_add(&b->acked, 1);
        } else {
            atomic_fetch_add(&b->put_errors, 1);
            note_msg(b, b->put_err, sizeof b->put_err, "a PutResponse without a revision");
        }
        if (pr)
            protobuf_c_message_free_unpacked(&pr->base, NULL);
    } else {
        atomic_fetch_add(&b->put_errors, 1);
        note_msg(b, b->put_err, sizeof b->put_err, "gRPC status %d: %s", (int)res->status,
                 res->message);
    }
    pthread_mutex_lock(&b->wmu);
    ps->next = b->free_slots;
    b->free_slots = ps;
    b->w_inflight--;
    pthread_cond_signal(&b->wcv);
    pthread_mutex_unlock(&b->wmu);
}

/* Puts n_puts keys, put i due at first_put_ns + i / rate; stops early on interrupt or when
 * a put cannot even start. */
static void *writer_main(void *arg)
{
    struct bench *b = arg;
    const struct opts *o = b->o;
    size_t klen = b->dir_len + SEQ_DIGITS;
    char key[MAX_PREFIX + 64 + SEQ_DIGITS + 1];
    uint8_t *val = malloc((size_t)o->val_size + 1);
    if (!val) {
        atomic_fetch_add(&b->put_errors, 1);
        note_msg(b, b->put_err, sizeof b->put_err, "out of memory");
        atomic_store(&b->writer_done, true);
        return NULL;
    }
    memset(val, 'x', (size_t)o->val_size);
    memcpy(key, b->dir, b->dir_len);
    size_t cap = protobuf_c_message_get_packed_size(&(Etcdserverpb__PutRequest){
                     .base = PROTOBUF_C_MESSAGE_INIT(&etcdserverpb__put_request__descriptor)}.base) +
                 klen + (size_t)o->val_size + 32;
    uint8_t *buf = malloc(cap);
    for (long long seq = 0; buf && seq < b->n_puts && !interrupted; seq++) {
        int64_t due = b->first_put_ns + (int64_t)((double)seq * 1e9 / (double)o->rate);
        struct timespec ts = {(time_t)(due / 1000000000), (long)(due % 1000000000)};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR && !interrupted)
            ;
        pthread_mutex_lock(&b->wmu);
        while (!b->free_slots)
            pthread_cond_wait(&b->wcv, &b->wmu);
        struct put_slot *ps = b->free_slots;
        b->free_slots = ps->next;
        b->w_inflight++;
        pthread_mutex_unlock(&b->wmu);
        format_seq(key + b->dir_len, SEQ_DIGITS, seq);
        int64_t t = bench_now_ns();
        if (t - due > b->max_lag_ns)
            b->max_lag_ns = t - due;
        char stamp[48];
        snprintf(stamp, sizeof stamp, "%020" PRId64 " %020lld", t, seq);
        memcpy(val, stamp, 41);
        Etcdserverpb__PutRequest put = ETCDSERVERPB__PUT_REQUEST__INIT;
        put.key.data = (uint8_t *)key;
        put.key.len = klen;
        put.value.data = val;
        put.value.len = (size_t)o->val_size;
        size_t len = protobuf_c_message_pack(&put.base, buf);
        ps->seq = seq;
        ps->t0 = t;
        int rc = rpc_channel_call_async(b->wch, put_method, buf, len, (int)o->deadline_ms,
                                        on_put_done, ps);
        if (rc != 0) {
            atomic_fetch_add(&b->put_errors, 1);
            note_msg(b, b->put_err, sizeof b->put_err, "%s", rpc_strerror(rc));
            pthread_mutex_lock(&b->wmu);
            ps->next = b->free_slots;
            b->free_slots = ps;
            b->w_inflight--;
            pthread_mutex_unlock(&b->wmu);
            break;
        }
        atomic_fetch_add(&b->sent, 1);
    }
    if (!buf) {
        atomic_fetch_add(&b->put_errors, 1);
        note_msg(b, b->put_err, sizeof b->put_err, "out of memory");
    }
    /* Wait for the puts in flight (each completes by its deadline). */
    pthread_mutex_lock(&b->wmu);
    while (b->w_inflight > 0)
        pthread_cond_wait(&b->wcv, &b->wmu);
    pthread_mutex_unlock(&b->wmu);
    free(buf);
    free(val);
    atomic_store(&b->writer_done, true);
    return NULL;
}

/* ---- connections ---------------------------------------------------------------------------- */

/* A channel to url; `streams` Watch streams will share it (each takes an in-flight slot). */
static struct rpc_channel *open_channel(const struct opts *o, const char *url, long long salt,
                                        long long streams)
{
    char err[512];
    struct rpc_channel *ch = bench_channel_open(url, o->insecure ? NULL : &o->tls, o->server_name,
                                                (int)o->threads,
                                                (int)(o->writer_inflight + streams + 16),
                                                (size_t)salt, err, sizeof err);
    if (!ch)
        fprintf(stderr, "watch-bench: %s: %s\n", url, err);
    return ch;
}

/* One serializable read, so the TLS handshake is done before anything is timed. */
static int hello(const struct opts *o, struct rpc_channel *ch, const char *url)
{
    char err[512];
    if (bench_hello(ch, "watch-bench-hello", (int)o->deadline_ms, err, sizeof err) != 0) {
        fprintf(stderr, "watch-bench: cannot reach %s: %s\n", url, err);
        return -1;
    }
    return 0;
}

/* ---- totals and output ---------------------------------------------------------------------- */

struct totals {
    uint64_t events, lost, dups, mismatched, foreign;
    long long bad_watchers; /* watchers with any violation */
    long long canceled, not_created;
};

static uint64_t events_so_far(struct bench *b)
{
    uint64_t n = 0;
    for (long long i = 0; i < b->o->watchers; i++)
        n += atomic_load_explicit(&b->w[i].unique, memory_order_relaxed);
    return n;
}

static void totals_of(struct bench *b, struct totals *t)
{
    memset(t, 0, sizeof *t);
    uint64_t acked = (uint64_t)atomic_load(&b->acked);
    for (long long i = 0; i < b->o->watchers; i++) {
        struct watcher *w = &b->w[i];
        uint64_t u = atomic_load(&w->unique), d = atomic_load(&w->dups),
                 m = atomic_load(&w->mismatched), f = atomic_load(&w->foreign);
        uint64_t lost = u < acked ? acked - u : 0;
        t->events += u;
        t->lost += lost;
        t->dups += d;
        t->mismatched += m;
        t->foreign += f;
        bool canceled = atomic_load(&w->canceled), created = atomic_load(&w->created);
        t->canceled += canceled;
        t->not_created += !created;
        if (lost || d || m || f || canceled || !created)
            t->bad_watchers++;
    }
}

static double ms(uint64_t ns)
{
    return (double)ns / 1e6;
}

/* {"count":..,"p50_ms":..,...} of s */
static void json_lat_obj(const struct hist_snap *s)
{
    printf("{\"count\":%" PRIu64 ",\"p50_ms\":%.3f,\"p90_ms\":%.3f,\"p99_ms\":%.3f,"
           "\"p999_ms\":%.3f,\"max_ms\":%.3f}",
           s->count, ms(hist_quantile(s, 0.5)), ms(hist_quantile(s, 0.9)),
           ms(hist_quantile(s, 0.99)), ms(hist_quantile(s, 0.999)), ms(s->max));
}

static void json_lat(const char *name, const struct hist_snap *s)
{
    printf("\"%s\":", name);
    json_lat_obj(s);
}

static void text_lat(const char *name, const struct hist_snap *s)
{
    printf("%-13s %10" PRIu64 " %9.3f %9.3f %9.3f %9.3f %9.3f\n", name, s->count,
           ms(hist_quantile(s, 0.5)), ms(hist_quantile(s, 0.9)), ms(hist_quantile(s, 0.99)),
           ms(hist_quantile(s, 0.999)), ms(s->max));
}

struct run_times {
    double create_ms; /* first create sent to last `created` */
    double put_secs;  /* first put due to last put acknowledged */
    double event_secs; /* first put due to last event received */
    double cpu_us;    /* client CPU from the first put to the end of the drain */
    bool ran;
};

static void report(struct bench *b, const struct run_times *rt)
{
    const struct opts *o = b->o;
    static struct hist_snap ev, put;
    hist_snap_of(&b->ev_hist, &ev);
    hist_snap_of(&b->put_hist, &put);
    struct totals t;
    totals_of(b, &t);
    long long sent = atomic_load(&b->sent), acked = atomic_load(&b->acked),
              perr = atomic_load(&b->put_errors), serr = atomic_load(&b->stream_errors);
    double ev_rate = rt->event_secs > 0 ? (double)t.events / rt->event_secs : 0;
    double put_rate = rt->put_secs > 0 ? (double)acked / rt->put_secs : 0;
    double cpu_per_event = t.events ? rt->cpu_us / (double)t.events : 0;
    uint64_t violations = t.lost + t.dups + t.mismatched + t.foreign + (uint64_t)t.canceled +
                          (uint64_t)t.not_created;
    if (o->json) {
        printf("{\"endpoints\":[");
        for (int i = 0; i < o->n_eps; i++) {
            if (i)
                putchar(',');
            bench_json_str(o->eps[i]);
        }
        printf("],\"writer_endpoint\":");
        bench_json_str(o->writer_ep);
        printf(",\"watchers\":%lld,\"per_stream\":%lld,\"streams\":%lld,\"conns\":%lld,"
               "\"rate\":%lld,\"duration\":%.3f,\"val_size\":%lld,\"prefix\":",
               o->watchers, o->per_stream, b->n_streams, o->conns, o->rate, o->duration,
               o->val_size);
        bench_json_str(b->dir);
        printf(",\"create_ms\":%.1f,\"puts_sent\":%lld,\"puts_acked\":%lld,\"put_errors\":%lld,"
               "\"puts_per_sec\":%.1f,\"writer_max_lag_ms\":%.1f,",
               rt->create_ms, sent, acked, perr, put_rate, ms((uint64_t)b->max_lag_ns));
        json_lat("put", &put);
        printf(",\"events\":%" PRIu64 ",\"events_expected\":%" PRIu64 ",\"events_per_sec\":%.1f,",
               t.events, (uint64_t)acked * (uint64_t)o->watchers, ev_rate);
        json_lat("latency", &ev);
        printf(",\"latency_by_endpoint\":{");
        for (int i = 0; i < o->n_eps; i++) {
            static struct hist_snap e;
            hist_snap_of(&b->ep_hist[i], &e);
            if (i)
                putchar(',');
            bench_json_str(o->eps[i]);
            putchar(':');
            json_lat_obj(&e);
        }
        putchar('}');
        printf(",\"lost\":%" PRIu64 ",\"duplicated\":%" PRIu64 ",\"mismatched\":%" PRIu64
               ",\"foreign\":%" PRIu64 ",\"canceled\":%lld,\"not_created\":%lld,"
               "\"watchers_with_violations\":%lld,\"violations\":%" PRIu64
               ",\"stream_errors\":%lld,\"client_cpu_us_per_event\":%.2f,\"errors\":{",
               t.lost, t.dups, t.mismatched, t.foreign, t.canceled, t.not_created, t.bad_watchers,
               violations, serr, cpu_per_event);
        bool first = true;
        const char *names[] = {"put", "stream", "cancel"};
        const char *msgs[] = {b->put_err, b->stream_err, b->cancel_reason};
        for (int i = 0; i < 3; i++) {
            if (!msgs[i][0])
                continue;
            printf("%s\"%s\":", first ? "" : ",", names[i]);
            bench_json_str(msgs[i]);
            first = false;
        }
        printf("},\"interrupted\":%s}\n", interrupted ? "true" : "false");
    } else {
        printf("watch-bench: %lld watchers (%lld per stream, %lld stream%s over %lld connection%s, "
               "%d endpoint%s) on %s, %lld puts/s for %.1f s%s\n",
               o->watchers, o->per_stream, b->n_streams, b->n_streams == 1 ? "" : "s", o->conns,
               o->conns == 1 ? "" : "s", o->n_eps, o->n_eps == 1 ? "" : "s", b->dir, o->rate,
               o->duration, interrupted ? " (interrupted)" : "");
        printf("created: %lld of %lld watches in %.1f ms\n", (long long)atomic_load(&b->created),
               o->watchers, rt->create_ms);
        printf("puts: %lld sent, %lld acknowledged (%.1f/s), %lld failed; writer lag max %.1f ms\n",
               sent, acked, put_rate, perr, ms((uint64_t)b->max_lag_ns));
        printf("events: %" PRIu64 " of %" PRIu64 " delivered, %.1f events/s\n", t.events,
               (uint64_t)acked * (uint64_t)o->watchers, ev_rate);
        printf("%-13s %10s %9s %9s %9s %9s %9s\n", "latency", "count", "p50 ms", "p90 ms",
               "p99 ms", "p99.9 ms", "max ms");
        text_lat("put-to-event", &ev);
        text_lat("put", &put);
        for (int i = 0; o->n_eps > 1 && i < o->n_eps; i++) {
            static struct hist_snap e;
            hist_snap_of(&b->ep_hist[i], &e);
            printf("  watchers on %s%s:\n", o->eps[i], strcmp(o->eps[i], o->writer_ep) ? "" : " (the writer's)");
            text_lat("  put-to-event", &e);
        }
        printf("exactly once: lost %" PRIu64 ", duplicated or out of order %" PRIu64
               ", mismatched %" PRIu64 ", foreign %" PRIu64
               ", canceled %lld, not created %lld: %lld watcher%s with violations\n",
               t.lost, t.dups, t.mismatched, t.foreign, t.canceled, t.not_created, t.bad_watchers,
               t.bad_watchers == 1 ? "" : "s");
        printf("client CPU: %.2f us per event (user + system of watch-bench, %.2f s)\n",
               cpu_per_event, rt->cpu_us / 1e6);
        if (perr)
            printf("put errors: %lld, first: %s\n", perr, b->put_err);
        if (serr)
            printf("stream errors: %lld, first: %s\n", serr, b->stream_err);
        if (t.canceled)
            printf("canceled watches: %lld, first: %s\n", t.canceled, b->cancel_reason);
    }
    fflush(stdout);
}

static bool all_streams_closed(struct bench *b)
{
    for (long long i = 0; i < b->n_streams; i++)
        if (!atomic_load(&b->st[i].closed))
            return false;
    return true;
}

/* Waits (polling every 20 ms) until every watch is created, a stream failed, the timeout or
 * an interrupt. 0 when all were created. */
static int wait_created(struct bench *b)
{
    int64_t limit = bench_now_ns() + b->o->create_timeout_ms * 1000000;
    while (atomic_load(&b->created) < b->o->watchers) {
        if (interrupted || atomic_load(&b->stream_errors) || atomic_load(&b->canceled) ||
            bench_now_ns() > limit)
            return -1;
        bench_sleep_ms(5);
    }
    return atomic_load(&b->canceled) ? -1 : 0;
}

/* Runs the writer and watches the deliveries: a progress line a second, then the drain. */
static void run(struct bench *b, struct run_times *rt)
{
    const struct opts *o = b->o;
    b->first_put_ns = bench_now_ns() + 20000000; /* 20 ms from now: the writer thread is up by then */
    double cpu0 = bench_cpu_us();
    pthread_t wt;
    if (pthread_create(&wt, NULL, writer_main, b) != 0) {
        fprintf(stderr, "watch-bench: cannot start the writer thread\n");
        atomic_fetch_add(&b->put_errors, 1);
        return;
    }
    rt->ran = true;
    bool tty = isatty(2), printed = false;
    int64_t next_tick = b->first_put_ns + 1000000000, drain_until = 0, last_t = b->first_put_ns;
    uint64_t last_events = 0;
    static struct hist_snap s;
    for (;;) {
        bench_sleep_ms(20);
        int64_t t = bench_now_ns();
        bool wdone = atomic_load(&b->writer_done);
        uint64_t events = events_so_far(b);
        uint64_t want = (uint64_t)atomic_load(&b->acked) * (uint64_t)o->watchers;
        if (wdone && events >= want)
            break;
        if (wdone && !drain_until)
            drain_until = t + o->drain_ms * 1000000;
        if (drain_until && t >= drain_until)
            break;
        if (interrupted && wdone)
            break;
        if (all_streams_closed(b) && wdone)
            break;
        if (!o->quiet && t >= next_tick) {
            hist_snap_of(&b->ev_hist, &s);
            double el = (double)(t - b->first_put_ns) / 1e9;
            fprintf(stderr,
                    "%swatch-bench %6.1fs  puts %8lld  %9.0f events/s now  backlog %9" PRIu64
                    "  p99 %8.3f ms%s",
                    tty ? "\r" : "", el, (long long)atomic_load(&b->acked),
                    (double)(events - last_events) / ((double)(t - last_t) / 1e9),
                    want > events ? want - events : 0, ms(hist_quantile(&s, 0.99)),
                    tty ? "\033[K" : "\n");
            printed = true;
            last_events = events;
            last_t = t;
            next_tick += 1000000000;
            if (next_tick < t)
                next_tick = t + 1000000000;
        }
    }
    if (printed && tty)
        fputc('\n', stderr);
    pthread_join(wt, NULL);
    rt->cpu_us = bench_cpu_us() - cpu0;
    int64_t last_ev = atomic_load(&b->last_event_ns);
    /* Events per second over the writer's schedule, or longer when the last events came
     * later (a server that falls behind delivers less than rate x watchers per second). */
    rt->event_secs = last_ev > b->first_put_ns ? (double)(last_ev - b->first_put_ns) / 1e9 : 0;
    if (rt->event_secs < (double)b->n_puts / (double)o->rate)
        rt->event_secs = (double)b->n_puts / (double)o->rate;
    rt->put_secs = (double)o->duration;
}

/* ---- main ----------------------------------------------------------------------------------- */

static struct bench the_bench; /* large (histograms): static, not on the stack */

int main(int argc, char **argv)
{
    static struct opts o;
    parse_args(argc, argv, &o);
    if (!o.insecure) {
        char err[512];
        if (rpc_tls_check(&o.tls, false, err, sizeof err) != 0) {
            fprintf(stderr, "watch-bench: %s\n", err);
            return 1;
        }
    }
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct bench *b = &the_bench;
    b->o = &o;
    pthread_mutex_init(&b->wmu, NULL);
    pthread_cond_init(&b->wcv, NULL);
    pthread_mutex_init(&b->msg_mu, NULL);
    b->n_puts = (long long)floor((double)o.rate * o.duration);
    b->n_streams = (o.watchers + o.per_stream - 1) / o.per_stream;
    if (o.conns > b->n_streams) /* a connection without a stream would only cost a handshake */
        o.conns = b->n_streams;
    struct timespec rts;
    clock_gettime(CLOCK_REALTIME, &rts);
    snprintf(b->dir, sizeof b->dir, "%s%ld.%lld%09ld/", o.prefix, (long)getpid(),
             (long long)rts.tv_sec, rts.tv_nsec);
    b->dir_len = strlen(b->dir);
    b->revs = calloc((size_t)b->n_puts, sizeof *b->revs);
    b->w = calloc((size_t)o.watchers, sizeof *b->w);
    b->st = calloc((size_t)b->n_streams, sizeof *b->st);
    b->slots = calloc((size_t)o.writer_inflight, sizeof *b->slots);
    b->chans = calloc((size_t)o.conns, sizeof *b->chans);
    if (!b->revs || !b->w || !b->st || !b->slots || !b->chans) {
        fprintf(stderr, "watch-bench: out of memory\n");
        return 1;
    }
    for (long long i = 0; i < o.writer_inflight; i++) {
        b->slots[i].b = b;
        b->slots[i].next = i + 1 < o.writer_inflight ? &b->slots[i + 1] : NULL;
    }
    b->free_slots = &b->slots[0];
    int rc = 0;
    for (long long i = 0; rc == 0 && i < b->n_streams; i++) {
        struct wstream *st = &b->st[i];
        st->b = b;
        st->conn = (int)(i % o.conns);
        st->first = i * o.per_stream;
        st->n = st->first + o.per_stream <= o.watchers ? o.per_stream : o.watchers - st->first;
        st->cap = 2;
        while (st->cap < 2 * st->n)
            st->cap *= 2;
        st->ids = calloc((size_t)st->cap, sizeof *st->ids);
        st->idx = malloc((size_t)st->cap * sizeof *st->idx);
        if (!st->ids || !st->idx) {
            fprintf(stderr, "watch-bench: out of memory\n");
            rc = 1;
            break;
        }
        for (long long k = 0; k < st->cap; k++)
            st->idx[k] = -1;
    }

    /* Connections: the watch channels round-robin over the endpoints, and the writer's. */
    long long made = 0;
    for (; rc == 0 && made < o.conns; made++) {
        const char *url = o.eps[made % o.n_eps];
        long long streams = (b->n_streams + o.conns - 1) / o.conns;
        if (!(b->chans[made] = open_channel(&o, url, made, streams)) ||
            hello(&o, b->chans[made], url)) {
            rc = 1;
            made++;
            break;
        }
    }
    if (rc == 0 && (!(b->wch = open_channel(&o, o.writer_ep, o.conns, 0)) ||
                    hello(&o, b->wch, o.writer_ep)))
        rc = 1;

    /* Every watch created before the first put. */
    struct run_times rt = {0};
    if (rc == 0 && !interrupted) {
        int64_t c0 = bench_now_ns();
        for (long long i = 0; rc == 0 && i < b->n_streams; i++)
            if (ws_start(b, &b->st[i]) != 0)
                rc = 1;
        if (rc == 0 && wait_created(b) != 0) {
            pthread_mutex_lock(&b->msg_mu);
            if (b->cancel_reason[0])
                fprintf(stderr, "watch-bench: a watch was canceled at creation: %s\n",
                        b->cancel_reason);
            else
                fprintf(stderr, "watch-bench: %lld of %lld watches created%s%s\n",
                        (long long)atomic_load(&b->created), o.watchers,
                        b->stream_err[0] ? ": " : " before the timeout", b->stream_err);
            pthread_mutex_unlock(&b->msg_mu);
            rc = 1;
        }
        rt.create_ms = (double)(bench_now_ns() - c0) / 1e6;
        if (!o.quiet && rc == 0)
            fprintf(stderr, "watch-bench: %lld watches created in %.1f ms\n", o.watchers,
                    rt.create_ms);
    }
    if (rc == 0 && !interrupted) {
        run(b, &rt);
        atomic_store(&b->stopping, true);
        report(b, &rt);
        struct totals t;
        totals_of(b, &t);
        if (t.lost || t.dups || t.mismatched || t.foreign || t.canceled || t.not_created ||
            atomic_load(&b->put_errors) || atomic_load(&b->stream_errors) || t.events == 0 ||
            atomic_load(&b->sent) < b->n_puts)
            rc = 1;
    } else if (rc == 0) {
        fprintf(stderr, "watch-bench: interrupted before the run\n");
        rc = 1;
    }
    atomic_store(&b->stopping, true);
    for (long long i = 0; i < b->n_streams; i++)
        if (b->st[i].s)
            rpc_client_stream_cancel(b->st[i].s);
    for (long long i = 0; i < made; i++)
        if (b->chans[i])
            rpc_channel_destroy(b->chans[i]);
    if (b->wch)
        rpc_channel_destroy(b->wch);
    for (long long i = 0; i < b->n_streams; i++) {
        free(b->st[i].ids);
        free(b->st[i].idx);
    }
    free(b->st);
    free(b->w);
    free(b->revs);
    free(b->slots);
    free(b->chans);
    return rc;
}
