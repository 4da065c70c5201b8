/* craft-bench: a pipelined throughput benchmark for etcd v3 KV servers (craft or etcd itself).
 *
 * What it promises
 * - Load: --conns N gRPC channels (each its own TLS connection), spread round-robin over every
 *   --endpoints URL, each keeping --inflight M unary calls in flight (true pipelining: a
 *   completion immediately starts the next call on the same channel). The run lasts --duration
 *   seconds or --total requests, whichever is given (duration by default).
 * - Operations: an --mix of put, range (linearizable), srange (serializable range) and txn
 *   (compare mod_revision < max, then put), drawn at random by weight; keys are decimal indexes
 *   uniform over --key-space, zero-padded to --key-size bytes; values are --val-size bytes.
 *   --preload first writes every key of the key space once (not measured), so reads find data.
 * - Results: a progress line on stderr once a second (elapsed, ops/s over the last second and
 *   overall, p99 so far, errors; --quiet turns it off), then a table on stdout: per operation
 *   and in total, successful ops, ops/s and latency p50/p90/p99/p99.9/max from a log-linear
 *   histogram (128 sub-buckets per power of two: under 1% relative error, fixed 35 KiB per
 *   operation type whatever the run length), and failed calls counted by gRPC status code with
 *   the first message of each, and the client's own CPU time (user + system of this process
 *   over the run) per call: on a machine where client and servers share the cores, that is
 *   the part of the machine the client took; and the longest time between two successful
 *   completions (the unavailability a leader change or a membership change causes under load).
 *   --json prints one JSON object instead.
 * - Phases (--phases): each SIGUSR1 ends the current phase of the measured run and starts the
 *   next (up to 8), and the results add per phase: its start and length, successful ops,
 *   ops/s and latency percentiles over the calls that completed in it. A script marks an
 *   event this way (e.g. a compaction issued a few seconds in) and gets the latency before,
 *   during and after it from one run. Signals before the measured run starts are ignored.
 *   Latency is from just before the call starts to its completion callback; ops/s is
 *   successful calls divided by the time from the start to the last completion. Connections
 *   are established (one blocking call each) before the clock starts.
 * - Bounds: at most 1024 connections and 65536 calls in flight in total, 3600 s, 1e9 requests,
 *   1 KiB keys, 1 MiB values, 1e8 keys; memory is fixed by these (one slot per call in flight).
 * - Exit status: 0 when every call succeeded, 1 when some failed or the targets could not be
 *   reached or set up, 2 for bad flags (with one line naming the problem). SIGINT/SIGTERM stop
 *   the run early and still print the results.
 */
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
#include "services/proto/etcd/rpc.pb-c.h"

#define MAX_EPS 16
#define MAX_CONNS 1024
#define MAX_INFLIGHT_TOTAL 65536
#define MAX_DURATION_S 3600.0
#define MAX_TOTAL 1000000000LL
#define MAX_KEY_SIZE 1024
#define MAX_VAL_SIZE (1 << 20)
#define MAX_KEY_SPACE 100000000LL
#define MAX_WEIGHT 1000000LL
#define MAX_DEADLINE_MS 600000LL
#define MAX_CLIENT_THREADS 8
#define N_CODES 17 /* gRPC status codes 0..16 */
#define CODE_LOCAL N_CODES /* a call that could not even start */
#define MAX_PHASES 8

enum op { OP_PUT, OP_RANGE, OP_SRANGE, OP_TXN, N_OPS };
static const char *const op_names[N_OPS] = {"put", "range", "srange", "txn"};
static const char *const op_methods[N_OPS] = {"/etcdserverpb.KV/Put", "/etcdserverpb.KV/Range",
                                              "/etcdserverpb.KV/Range", "/etcdserverpb.KV/Txn"};
static const char *const code_names[N_CODES + 1] = {
    "OK",        "CANCELLED",         "UNKNOWN",          "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",   "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL",      "UNAVAILABLE",      "DATA_LOSS",
    "UNAUTHENTICATED", "NOT_STARTED"};

/* ---- options ------------------------------------------------------------------------------ */

struct opts {
    char *eps[MAX_EPS];
    int n_eps;
    struct rpc_tls tls;
    bool insecure;
    const char *server_name;
    long long conns, inflight, total, key_size, val_size, key_space, deadline_ms, threads;
    double duration;
    bool duration_set, total_set;
    long long weight[N_OPS];
    const char *mix_spec;
    bool preload, json, quiet, phases;
    uint64_t seed;
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: craft-bench [flags]\n"
            "Pipelined load against an etcd v3 KV API (craft or etcd).\n"
            "  --endpoints URL[,URL...]  https://host:port (or http:// with --insecure); default\n"
            "                            https://127.0.0.1:2379; connections go round-robin\n"
            "  --cacert F --cert F --key F   mutual TLS files (https endpoints)\n"
            "  --insecure                plaintext (http:// endpoints)\n"
            "  --server-name NAME        name the server certificates must carry (default: host)\n"
            "  --conns N                 connections, 1..%d (default 1)\n"
            "  --inflight M              calls in flight per connection (default 1); N*M <= %d\n"
            "  --duration S              seconds to run, up to %.0f (default 10)\n"
            "  --total N                 run N requests instead of a duration (1..1e9)\n"
            "  --mix OP=W[,OP=W...]      ops: put, range (linearizable), srange (serializable),\n"
            "                            txn (compare mod_revision + put); default put=100\n"
            "  --key-size B              key bytes, 1..%d (default 16)\n"
            "  --val-size B              value bytes, 0..%d (default 256)\n"
            "  --key-space K             distinct keys, 1..1e8 (default 100000)\n"
            "  --preload                 write every key once before measuring\n"
            "  --deadline-ms T           per-call deadline (default 10000)\n"
            "  --client-threads T        callback threads per connection, 1..%d (default 1)\n"
            "  --seed N                  random seed (default 1)\n"
            "  --json                    print the result as one JSON object\n"
            "  --quiet                   no progress line on stderr\n"
            "  --phases                  each SIGUSR1 starts a new phase (up to %d); results per\n"
            "                            phase too (latency before, during, after an event)\n"
            "  --help                    this text\n"
            "Exit status: 0 all calls succeeded, 1 some failed or setup failed, 2 bad flags.\n",
            MAX_CONNS, MAX_INFLIGHT_TOTAL, MAX_DURATION_S, MAX_KEY_SIZE, MAX_VAL_SIZE,
            MAX_CLIENT_THREADS, MAX_PHASES);
}

static void bad_usage(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("craft-bench: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs(" (craft-bench --help for usage)\n", stderr);
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

static void parse_mix(struct opts *o, char *spec)
{
    memset(o->weight, 0, sizeof o->weight);
    long long sum = 0;
    char *save = NULL;
    for (char *item = strtok_r(spec, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(item, '=');
        if (!eq)
            bad_usage("--mix: '%s' is not OP=WEIGHT", item);
        *eq = 0;
        int op = -1;
        for (int i = 0; i < N_OPS; i++)
            if (!strcmp(item, op_names[i]))
                op = i;
        if (op < 0)
            bad_usage("--mix: unknown operation '%s' (put, range, srange, txn)", item);
        o->weight[op] += parse_int("--mix", eq + 1, 0, MAX_WEIGHT);
        sum += o->weight[op];
    }
    if (sum <= 0)
        bad_usage("--mix: the weights must add up to more than 0");
}

static int digits(long long x)
{
    int d = 1;
    while (x >= 10) {
        x /= 10;
        d++;
    }
    return d;
}

static void parse_args(int argc, char **argv, struct opts *o)
{
    static char default_ep[] = "https://127.0.0.1:2379";
    static char default_mix[] = "put=100";
    *o = (struct opts){.conns = 1, .inflight = 1, .duration = 10, .key_size = 16,
                       .val_size = 256, .key_space = 100000, .deadline_ms = 10000,
                       .threads = 1, .seed = 1};
    char *mix = default_mix;
    char *endpoints = NULL;
    const struct bench_bool_flag bools[] = {
        {"--insecure", &o->insecure}, {"--preload", &o->preload}, {"--json", &o->json},
        {"--quiet", &o->quiet},       {"--phases", &o->phases},   {NULL, NULL}};
    static const char *const valued[] = {
        "--endpoints", "--cacert",    "--cert",     "--key",      "--server-name",
        "--conns",     "--inflight",  "--duration", "--total",    "--mix",
        "--key-size",  "--val-size",  "--key-space", "--deadline-ms", "--client-threads",
        "--seed",      NULL};
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
        } else if (!strcmp(f, "--cacert")) {
            o->tls.ca_file = v;
        } else if (!strcmp(f, "--cert")) {
            o->tls.cert_file = v;
        } else if (!strcmp(f, "--key")) {
            o->tls.key_file = v;
        } else if (!strcmp(f, "--server-name")) {
            o->server_name = v;
        } else if (!strcmp(f, "--conns")) {
            o->conns = parse_int(f, v, 1, MAX_CONNS);
        } else if (!strcmp(f, "--inflight")) {
            o->inflight = parse_int(f, v, 1, MAX_INFLIGHT_TOTAL);
        } else if (!strcmp(f, "--duration")) {
            if (bench_parse_seconds(f, v, MAX_DURATION_S, &o->duration, err, sizeof err) != 0)
                bad_usage("%s", err);
            o->duration_set = true;
        } else if (!strcmp(f, "--total")) {
            o->total = parse_int(f, v, 1, MAX_TOTAL);
            o->total_set = true;
        } else if (!strcmp(f, "--mix")) {
            mix = v;
        } else if (!strcmp(f, "--key-size")) {
            o->key_size = parse_int(f, v, 1, MAX_KEY_SIZE);
        } else if (!strcmp(f, "--val-size")) {
            o->val_size = parse_int(f, v, 0, MAX_VAL_SIZE);
        } else if (!strcmp(f, "--key-space")) {
            o->key_space = parse_int(f, v, 1, MAX_KEY_SPACE);
        } else if (!strcmp(f, "--deadline-ms")) {
            o->deadline_ms = parse_int(f, v, 1, MAX_DEADLINE_MS);
        } else if (!strcmp(f, "--client-threads")) {
            o->threads = parse_int(f, v, 1, MAX_CLIENT_THREADS);
        } else if (!strcmp(f, "--seed")) {
            o->seed = (uint64_t)parse_int(f, v, 0, LLONG_MAX);
        } else {
            bad_usage("unknown flag %s", f);
        }
    }
    o->mix_spec = strdup(mix);
    parse_mix(o, mix);
    if (o->duration_set && o->total_set)
        bad_usage("give --duration or --total, not both");
    if (o->conns * o->inflight > MAX_INFLIGHT_TOTAL)
        bad_usage("--conns x --inflight = %lld is more than %d calls in flight", o->conns * o->inflight,
                  MAX_INFLIGHT_TOTAL);
    if (digits(o->key_space - 1) > o->key_size)
        bad_usage("--key-size %lld is too small for --key-space %lld (needs %d digits)", o->key_size,
                  o->key_space, digits(o->key_space - 1));
    if (!endpoints)
        endpoints = default_ep;
    if (bench_parse_endpoints(endpoints, o->insecure, o->eps, MAX_EPS, &o->n_eps, err,
                              sizeof err) != 0 ||
        bench_check_tls_flags(&o->tls, o->insecure, err, sizeof err) != 0)
        bad_usage("%s", err);
}

/* ---- the load engine ---------------------------------------------------------------------- */

struct bench;

struct slot {
    struct slot *next;
    struct conn *c;
    int op;
    int64_t t0;
};

struct conn {
    pthread_mutex_t mu;
    struct bench *b;
    struct rpc_channel *ch;
    const char *url;
    struct slot *slots, *free; /* one slot per call in flight */
    int inflight;
    bool dead;       /* a call could not start: this connection stops issuing */
    int64_t last_ns; /* last completion */
    uint64_t rng;
};

struct bench {
    const struct opts *o;
    struct conn *conns;
    uint8_t *value;
    long long weight_sum;
    atomic_bool stop;
    atomic_bool record;      /* completions count (false once the run is over) */
    bool preloading;         /* keys in order, ops all puts */
    long long limit;         /* requests to issue in this phase; 0 = until stop */
    atomic_llong issued;
    struct hist hist[N_OPS];
    _Atomic uint64_t errs[N_CODES + 1];
    _Atomic int64_t last_ok_ns; /* time of the newest successful completion (0: none yet) */
    _Atomic int64_t max_gap_ns; /* longest time between two successful completions */
    pthread_mutex_t err_mu;
    char err_msg[N_CODES + 1][256]; /* first message per code */
    struct hist phase_hist[MAX_PHASES]; /* --phases: completions by the phase they fell in */
};

static volatile sig_atomic_t interrupted;

/* --phases: the current phase and when each began (ns, CLOCK_MONOTONIC). The SIGUSR1 handler
 * moves to the next phase once phases_armed is set (the measured run started); lock-free
 * atomics, so the handler may touch them. */
static atomic_int phase_now;
static atomic_bool phases_armed;
static _Atomic int64_t phase_start[MAX_PHASES];

static void on_phase_signal(int sig)
{
    (void)sig;
    int p = atomic_load(&phase_now);
    if (!atomic_load(&phases_armed) || p + 1 >= MAX_PHASES)
        return;
    atomic_store(&phase_start[p + 1], bench_now_ns());
    atomic_store(&phase_now, p + 1);
}

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

static uint64_t rng_next(uint64_t *s)
{
    /* splitmix64: fast, and good enough to pick keys and operations */
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void format_key(char *buf, size_t size, long long idx)
{
    for (size_t i = size; i > 0; i--) {
        buf[i - 1] = (char)('0' + idx % 10);
        idx /= 10;
    }
}

static void note_error(struct bench *b, int code, const char *msg)
{
    if (code < 0 || code > N_CODES)
        code = GRPC_STATUS_UNKNOWN;
    if (atomic_fetch_add(&b->errs[code], 1) == 0) {
        pthread_mutex_lock(&b->err_mu);
        snprintf(b->err_msg[code], sizeof b->err_msg[code], "%s", msg);
        pthread_mutex_unlock(&b->err_mu);
    }
}

static void conn_pump(struct conn *c);

static void on_done(struct rpc_result *res, void *arg)
{
    struct slot *s = arg;
    struct conn *c = s->c;
    struct bench *b = c->b;
    int64_t t = bench_now_ns();
    if (atomic_load_explicit(&b->record, memory_order_relaxed)) {
        if (res->status == GRPC_STATUS_OK) {
            hist_record(&b->hist[s->op], (uint64_t)(t - s->t0));
            if (atomic_load_explicit(&phases_armed, memory_order_relaxed))
                hist_record(&b->phase_hist[atomic_load_explicit(&phase_now, memory_order_relaxed)],
                            (uint64_t)(t - s->t0));
            int64_t prev = atomic_exchange_explicit(&b->last_ok_ns, t, memory_order_relaxed);
            int64_t gap = prev && t > prev ? t - prev : 0;
            int64_t max = atomic_load_explicit(&b->max_gap_ns, memory_order_relaxed);
            while (gap > max && !atomic_compare_exchange_weak_explicit(
                                    &b->max_gap_ns, &max, gap, memory_order_relaxed,
                                    memory_order_relaxed))
                ;
        } else
            note_error(b, (int)res->status, res->message);
    }
    pthread_mutex_lock(&c->mu);
    s->next = c->free;
    c->free = s;
    c->inflight--;
    c->last_ns = t;
    pthread_mutex_unlock(&c->mu);
    conn_pump(c);
}

static int pick_op(struct bench *b, struct conn *c)
{
    if (b->preloading)
        return OP_PUT;
    long long r = (long long)(rng_next(&c->rng) % (uint64_t)b->weight_sum);
    for (int i = 0; i < N_OPS; i++) {
        if (r < b->o->weight[i])
            return i;
        r -= b->o->weight[i];
    }
    return OP_PUT;
}

/* Builds and starts one call in slot s. 0 or an RPC_E* code (then no callback will come). */
static int start_op(struct conn *c, struct slot *s, long long ticket)
{
    struct bench *b = c->b;
    const struct opts *o = b->o;
    char key[MAX_KEY_SIZE];
    long long idx = b->preloading ? ticket : (long long)(rng_next(&c->rng) % (uint64_t)o->key_space);
    format_key(key, (size_t)o->key_size, idx);
    int op = pick_op(b, c);

    Etcdserverpb__PutRequest put = ETCDSERVERPB__PUT_REQUEST__INIT;
    put.key.data = (uint8_t *)key;
    put.key.len = (size_t)o->key_size;
    put.value.data = b->value;
    put.value.len = (size_t)o->val_size;
    Etcdserverpb__RangeRequest range = ETCDSERVERPB__RANGE_REQUEST__INIT;
    range.key = put.key;
    range.serializable = op == OP_SRANGE;
    Etcdserverpb__Compare cmp = ETCDSERVERPB__COMPARE__INIT;
    cmp.result = ETCDSERVERPB__COMPARE__COMPARE_RESULT__LESS;
    cmp.target = ETCDSERVERPB__COMPARE__COMPARE_TARGET__MOD;
    cmp.key = put.key;
    cmp.target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_MOD_REVISION;
    cmp.mod_revision = INT64_MAX;
    Etcdserverpb__Compare *cmps[1] = {&cmp};
    Etcdserverpb__RequestOp rop = ETCDSERVERPB__REQUEST_OP__INIT;
    rop.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT;
    rop.request_put = &put;
    Etcdserverpb__RequestOp *rops[1] = {&rop};
    Etcdserverpb__TxnRequest txn = ETCDSERVERPB__TXN_REQUEST__INIT;
    txn.n_compare = 1;
    txn.compare = cmps;
    txn.n_success = 1;
    txn.success = rops;

    const ProtobufCMessage *m = op == OP_PUT   ? &put.base
                                : op == OP_TXN ? &txn.base
                                               : &range.base;
    uint8_t stack[4096], *buf = stack;
    size_t len = protobuf_c_message_get_packed_size(m);
    if (len > sizeof stack && !(buf = malloc(len)))
        return RPC_ENOMEM;
    protobuf_c_message_pack(m, buf);
    s->op = op;
    s->t0 = bench_now_ns();
    int rc = rpc_channel_call_async(c->ch, op_methods[op], buf, len, (int)o->deadline_ms, on_done, s);
    if (buf != stack)
        free(buf);
    return rc;
}

/* Starts calls until the connection's window is full or the phase is over. */
static void conn_pump(struct conn *c)
{
    struct bench *b = c->b;
    pthread_mutex_lock(&c->mu);
    while (!c->dead && c->free && !atomic_load_explicit(&b->stop, memory_order_relaxed)) {
        long long ticket = 0;
        if (b->limit > 0 && (ticket = atomic_fetch_add(&b->issued, 1)) >= b->limit)
            break;
        struct slot *s = c->free;
        c->free = s->next;
        c->inflight++;
        pthread_mutex_unlock(&c->mu);
        int rc = start_op(c, s, ticket);
        pthread_mutex_lock(&c->mu);
        if (rc != 0) {
            s->next = c->free;
            c->free = s;
            c->inflight--;
            c->dead = true;
            pthread_mutex_unlock(&c->mu);
            note_error(b, CODE_LOCAL, rpc_strerror(rc));
            return;
        }
    }
    pthread_mutex_unlock(&c->mu);
}

/* Calls in flight over every connection; *all_dead when no connection can start calls. */
static long long total_inflight(struct bench *b, bool *all_dead)
{
    long long n = 0;
    *all_dead = true;
    for (long long i = 0; i < b->o->conns; i++) {
        pthread_mutex_lock(&b->conns[i].mu);
        n += b->conns[i].inflight;
        *all_dead = *all_dead && b->conns[i].dead;
        pthread_mutex_unlock(&b->conns[i].mu);
    }
    return n;
}

static uint64_t total_errors(struct bench *b)
{
    uint64_t n = 0;
    for (int i = 0; i <= N_CODES; i++)
        n += atomic_load(&b->errs[i]);
    return n;
}

static void snap_all(struct bench *b, struct hist_snap *s)
{
    memset(s, 0, sizeof *s);
    for (int i = 0; i < N_OPS; i++)
        hist_add_to(&b->hist[i], s);
}

/* Runs one phase: starts every connection, stops after `seconds` (when limit is 0) or once
 * `limit` requests were issued, then waits for the calls in flight. Returns the time from the
 * start to the last completion, in ns. */
static int64_t run_phase(struct bench *b, double seconds, long long limit, bool progress,
                         const char *label, struct hist_snap *progress_buf)
{
    const struct opts *o = b->o;
    b->limit = limit;
    atomic_store(&b->issued, 0);
    atomic_store(&b->stop, false);
    int64_t t0 = bench_now_ns();
    for (long long i = 0; i < o->conns; i++)
        b->conns[i].last_ns = t0;
    for (long long i = 0; i < o->conns; i++)
        conn_pump(&b->conns[i]);
    int64_t next_tick = t0 + 1000000000;
    uint64_t last_count = 0;
    int64_t last_t = t0;
    bool tty = isatty(2);
    bool printed = false;
    for (;;) {
        bench_sleep_ms(20);
        int64_t t = bench_now_ns();
        if (interrupted)
            atomic_store(&b->stop, true);
        if (limit == 0 && (double)(t - t0) >= seconds * 1e9)
            atomic_store(&b->stop, true);
        /* Over (stop set, or every ticket taken) is read before the calls in flight: after
         * that no connection starts another call, so zero in flight means done. */
        bool all_dead;
        bool over = atomic_load(&b->stop) || (limit > 0 && atomic_load(&b->issued) >= limit);
        long long n = total_inflight(b, &all_dead);
        if ((over || all_dead) && n == 0)
            break;
        if (atomic_load(&b->stop) && (double)(t - t0) > seconds * 1e9 + (double)o->deadline_ms * 1e6 + 5e9) {
            fprintf(stderr, "craft-bench: calls still in flight %.0f s after the end; giving up on them\n",
                    (double)o->deadline_ms / 1e3 + 5);
            break;
        }
        if (progress && t >= next_tick) {
            snap_all(b, progress_buf);
            double el = (double)(t - t0) / 1e9;
            double cur = (double)(progress_buf->count - last_count) / ((double)(t - last_t) / 1e9);
            fprintf(stderr, "%s%s %6.1fs  %9.0f ops/s now  %9.0f avg  p99 %8.3f ms  errors %" PRIu64 "%s",
                    tty ? "\r" : "", label, el, cur, (double)progress_buf->count / el,
                    (double)hist_quantile(progress_buf, 0.99) / 1e6, total_errors(b),
                    tty ? "\033[K" : "\n");
            printed = true;
            last_count = progress_buf->count;
            last_t = t;
            next_tick += 1000000000;
            if (next_tick < t)
                next_tick = t + 1000000000;
        }
    }
    if (printed && tty)
        fputc('\n', stderr);
    atomic_store(&b->stop, true);
    int64_t last = t0;
    for (long long i = 0; i < o->conns; i++) {
        pthread_mutex_lock(&b->conns[i].mu);
        if (b->conns[i].last_ns > last)
            last = b->conns[i].last_ns;
        pthread_mutex_unlock(&b->conns[i].mu);
    }
    return last - t0;
}

/* ---- output ------------------------------------------------------------------------------ */

static double ms(uint64_t ns)
{
    return (double)ns / 1e6;
}

static void print_row_json(const char *name, const struct hist_snap *s, double secs)
{
    printf("\"%s\":{\"ops\":%" PRIu64 ",\"ops_per_sec\":%.1f,\"p50_ms\":%.3f,\"p90_ms\":%.3f,"
           "\"p99_ms\":%.3f,\"p999_ms\":%.3f,\"max_ms\":%.3f}",
           name, s->count, secs > 0 ? (double)s->count / secs : 0.0, ms(hist_quantile(s, 0.5)),
           ms(hist_quantile(s, 0.9)), ms(hist_quantile(s, 0.99)), ms(hist_quantile(s, 0.999)),
           ms(s->max));
}

static void print_row(const char *name, const struct hist_snap *s, double secs)
{
    printf("%-7s %10" PRIu64 " %11.1f %9.3f %9.3f %9.3f %9.3f %9.3f\n", name, s->count,
           secs > 0 ? (double)s->count / secs : 0.0, ms(hist_quantile(s, 0.5)),
           ms(hist_quantile(s, 0.9)), ms(hist_quantile(s, 0.99)), ms(hist_quantile(s, 0.999)),
           ms(s->max));
}

/* The phases of the measured run (--phases), as JSON array elements or as text rows. A phase
 * ends where the next begins, the last one at the last completion of the run. */
static int64_t run_end_ns;

static void print_phases(struct bench *b, bool json)
{
    static struct hist_snap s;
    int n = atomic_load(&phase_now) + 1;
    int64_t t0 = atomic_load(&phase_start[0]);
    if (!json)
        printf("%-7s %8s %8s %10s %11s %9s %9s %9s %9s %9s\n", "phase", "start s", "secs", "ok",
               "ops/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms");
    for (int p = 0; p < n; p++) {
        int64_t start = atomic_load(&phase_start[p]);
        int64_t end = p + 1 < n ? atomic_load(&phase_start[p + 1]) : run_end_ns;
        double secs = end > start ? (double)(end - start) / 1e9 : 0;
        memset(&s, 0, sizeof s);
        hist_add_to(&b->phase_hist[p], &s);
        if (json) {
            printf("%s{\"phase\":%d,\"start_s\":%.3f,\"seconds\":%.3f,", p ? "," : "", p,
                   (double)(start - t0) / 1e9, secs);
            print_row_json("total", &s, secs);
            putchar('}');
        } else {
            printf("%-7d %8.3f %8.3f %10" PRIu64 " %11.1f %9.3f %9.3f %9.3f %9.3f %9.3f\n", p,
                   (double)(start - t0) / 1e9, secs, s.count, secs > 0 ? (double)s.count / secs : 0.0,
                   ms(hist_quantile(&s, 0.5)), ms(hist_quantile(&s, 0.9)),
                   ms(hist_quantile(&s, 0.99)), ms(hist_quantile(&s, 0.999)), ms(s.max));
        }
    }
}

static void report(struct bench *b, double secs, double cpu_us)
{
    const struct opts *o = b->o;
    static struct hist_snap per[N_OPS], all;
    memset(&all, 0, sizeof all);
    for (int i = 0; i < N_OPS; i++) {
        memset(&per[i], 0, sizeof per[i]);
        hist_add_to(&b->hist[i], &per[i]);
        hist_add_to(&b->hist[i], &all);
    }
    uint64_t nerr = total_errors(b);
    uint64_t calls = all.count + nerr;
    double cpu_per_call = calls ? cpu_us / (double)calls : 0;
    if (o->json) {
        printf("{\"endpoints\":[");
        for (int i = 0; i < o->n_eps; i++) {
            if (i)
                putchar(',');
            bench_json_str(o->eps[i]);
        }
        printf("],\"conns\":%lld,\"inflight\":%lld,\"mix\":", o->conns, o->inflight);
        bench_json_str(o->mix_spec);
        printf(",\"key_size\":%lld,\"val_size\":%lld,\"key_space\":%lld,\"seconds\":%.3f,",
               o->key_size, o->val_size, o->key_space, secs);
        print_row_json("total", &all, secs);
        printf(",\"client_cpu_us_per_call\":%.1f,\"max_gap_ms\":%.1f,\"by_op\":{", cpu_per_call,
               (double)atomic_load(&b->max_gap_ns) / 1e6);
        bool first = true;
        for (int i = 0; i < N_OPS; i++) {
            if (!o->weight[i])
                continue;
            if (!first)
                putchar(',');
            first = false;
            print_row_json(op_names[i], &per[i], secs);
        }
        printf("},\"errors\":%" PRIu64 ",\"errors_by_code\":{", nerr);
        first = true;
        for (int i = 0; i <= N_CODES; i++) {
            uint64_t n = atomic_load(&b->errs[i]);
            if (!n)
                continue;
            if (!first)
                putchar(',');
            first = false;
            printf("\"%s\":{\"count\":%" PRIu64 ",\"first\":", code_names[i], n);
            bench_json_str(b->err_msg[i]);
            putchar('}');
        }
        putchar('}');
        if (o->phases) {
            printf(",\"phases\":[");
            print_phases(b, true);
            putchar(']');
        }
        printf(",\"interrupted\":%s}\n", interrupted ? "true" : "false");
    } else {
        printf("craft-bench: %.2f s, %d endpoint%s, %lld connection%s x %lld in flight, mix %s, "
               "key %lld B, value %lld B, key space %lld%s\n",
               secs, o->n_eps, o->n_eps == 1 ? "" : "s", o->conns, o->conns == 1 ? "" : "s",
               o->inflight, o->mix_spec, o->key_size, o->val_size, o->key_space,
               interrupted ? " (interrupted)" : "");
        printf("%-7s %10s %11s %9s %9s %9s %9s %9s\n", "op", "ok", "ops/s", "p50 ms", "p90 ms",
               "p99 ms", "p99.9 ms", "max ms");
        int shown = 0;
        for (int i = 0; i < N_OPS; i++) {
            if (o->weight[i]) {
                print_row(op_names[i], &per[i], secs);
                shown++;
            }
        }
        if (shown > 1)
            print_row("total", &all, secs);
        printf("client CPU: %.1f us per call (user + system of craft-bench, %.2f s)\n",
               cpu_per_call, cpu_us / 1e6);
        printf("longest gap between successful calls: %.1f ms\n",
               (double)atomic_load(&b->max_gap_ns) / 1e6);
        if (o->phases)
            print_phases(b, false);
        if (!nerr) {
            printf("errors: none\n");
        } else {
            printf("errors: %" PRIu64 "\n", nerr);
            for (int i = 0; i <= N_CODES; i++) {
                uint64_t n = atomic_load(&b->errs[i]);
                if (n)
                    printf("  %-18s %10" PRIu64 "  first: %s\n", code_names[i], n, b->err_msg[i]);
            }
        }
    }
    fflush(stdout);
}

/* ---- main ---------------------------------------------------------------------------------- */

static struct bench the_bench; /* large (histograms): static, not on the stack */

int main(int argc, char **argv)
{
    static struct opts o;
    parse_args(argc, argv, &o);
    if (!o.insecure) {
        char err[512];
        if (rpc_tls_check(&o.tls, false, err, sizeof err) != 0) {
            fprintf(stderr, "craft-bench: %s\n", err);
            return 1;
        }
    }
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (o.phases) {
        struct sigaction ps = {0};
        ps.sa_handler = on_phase_signal;
        ps.sa_flags = SA_RESTART;
        sigaction(SIGUSR1, &ps, NULL);
    }

    struct bench *b = &the_bench;
    b->o = &o;
    pthread_mutex_init(&b->err_mu, NULL);
    for (int i = 0; i < N_OPS; i++)
        b->weight_sum += o.weight[i];
    b->value = malloc((size_t)o.val_size + 1);
    b->conns = calloc((size_t)o.conns, sizeof *b->conns);
    if (!b->value || !b->conns) {
        fprintf(stderr, "craft-bench: out of memory\n");
        return 1;
    }
    uint64_t vs = o.seed ^ 0x5eed;
    for (long long i = 0; i < o.val_size; i++)
        b->value[i] = (uint8_t)('a' + rng_next(&vs) % 26);

    int rc = 0;
    long long made = 0;
    for (; made < o.conns; made++) {
        struct conn *c = &b->conns[made];
        pthread_mutex_init(&c->mu, NULL);
        c->b = b;
        c->url = o.eps[made % o.n_eps];
        c->rng = o.seed * 0x100000001B3ull + (uint64_t)made * 0x9E3779B97F4A7C15ull + 1;
        c->slots = calloc((size_t)o.inflight, sizeof *c->slots);
        if (!c->slots) {
            fprintf(stderr, "craft-bench: out of memory\n");
            rc = 1;
            break;
        }
        for (long long k = 0; k < o.inflight; k++) {
            c->slots[k].c = c;
            c->slots[k].next = k + 1 < o.inflight ? &c->slots[k + 1] : NULL;
        }
        c->free = &c->slots[0];
        char err[512];
        /* A salt per channel, so --conns N really opens N connections. */
        c->ch = bench_channel_open(c->url, o.insecure ? NULL : &o.tls, o.server_name,
                                   (int)o.threads, (int)o.inflight + 4, (size_t)made, err,
                                   sizeof err);
        if (!c->ch) {
            fprintf(stderr, "craft-bench: %s: %s\n", c->url, err);
            free(c->slots);
            rc = 1;
            break;
        }
    }
    /* Connect (TLS handshake) before the clock starts: one serializable read per connection. */
    for (long long i = 0; rc == 0 && i < made && !interrupted; i++) {
        char err[512];
        if (bench_hello(b->conns[i].ch, "craft-bench-hello", (int)o.deadline_ms, err,
                        sizeof err) != 0) {
            fprintf(stderr, "craft-bench: cannot reach %s: %s\n", b->conns[i].url, err);
            rc = 1;
        }
    }
    static struct hist_snap progress_buf;
    if (rc == 0 && !interrupted && o.preload) {
        b->preloading = true;
        atomic_store(&b->record, true);
        if (!o.quiet)
            fprintf(stderr, "craft-bench: preloading %lld keys\n", o.key_space);
        run_phase(b, 0, o.key_space, !o.quiet, "preload", &progress_buf);
        atomic_store(&b->record, false);
        uint64_t nerr = total_errors(b);
        bool all_dead;
        total_inflight(b, &all_dead);
        if (nerr) {
            fprintf(stderr, "craft-bench: preload failed (%" PRIu64 " errors)\n", nerr);
            for (int i = 0; i <= N_CODES; i++)
                if (atomic_load(&b->errs[i]))
                    fprintf(stderr, "  %s: %s\n", code_names[i], b->err_msg[i]);
            rc = 1;
        }
        for (int i = 0; i < N_OPS; i++)
            hist_reset(&b->hist[i]);
        /* The run's longest gap starts with the run: not from the preload's last put (CI saw a
         * 17.4 ms "gap" in a 16 ms run). */
        atomic_store(&b->last_ok_ns, 0);
        atomic_store(&b->max_gap_ns, 0);
        b->preloading = false;
    }
    bool ran = false;
    if (rc == 0 && !interrupted) {
        ran = true;
        atomic_store(&b->record, true);
        if (o.phases) {
            atomic_store(&phase_start[0], bench_now_ns());
            atomic_store(&phases_armed, true);
        }
        double cpu0 = bench_cpu_us();
        int64_t ns = run_phase(b, o.duration, o.total_set ? o.total : 0, !o.quiet, "craft-bench",
                               &progress_buf);
        atomic_store(&phases_armed, false);
        run_end_ns = atomic_load(&phase_start[0]) + ns;
        double cpu = bench_cpu_us() - cpu0;
        atomic_store(&b->record, false);
        report(b, (double)ns / 1e9, cpu);
        rc = total_errors(b) ? 1 : 0;
        bool any_ok = false;
        for (int i = 0; i < N_OPS; i++)
            any_ok = any_ok || atomic_load(&b->hist[i].count) > 0;
        if (!any_ok)
            rc = 1;
    }
    if (rc == 0 && !ran) {
        fprintf(stderr, "craft-bench: interrupted before the run\n");
        rc = 1;
    }
    for (long long i = 0; i < made; i++) {
        rpc_channel_destroy(b->conns[i].ch);
        free(b->conns[i].slots);
        pthread_mutex_destroy(&b->conns[i].mu);
    }
    free(b->conns);
    free(b->value);
    free((void *)o.mix_spec);
    return rc;
}
