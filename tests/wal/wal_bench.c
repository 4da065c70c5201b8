/* wal-bench: group-commit throughput and durable latency of raft/wal/wal.h, side by side with the raw
 * rate of one 256-byte pwrite + fdatasync on the same disk in the same run.
 *
 *   bazel run -c opt //tests/wal:wal-bench -- [--dir DIR] [--seconds S] [--size BYTES]
 *
 * Each appender thread takes the next index under a small lock (as the Raft leader assigns
 * indexes), appends one entry, and blocks in wal_wait_durable; latency is append-to-durable.
 *
 * --async: N appenders are N appends kept in flight without a thread each, the way the node
 * runtime uses the log: entries are appended by whoever holds the lock, and durability arrives
 * through the on_durable callback, which records each entry's latency and appends the next one
 * for that appender. This measures group commit without N blocked threads to wake per batch. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "raft/wal/wal.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct lat {
    double *v;
    size_t n, cap;
};

static void lat_add(struct lat *l, double x)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 4096;
        l->v = realloc(l->v, l->cap * sizeof *l->v);
        if (!l->v) {
            perror("realloc");
            exit(1);
        }
    }
    l->v[l->n++] = x;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(struct lat *l, double p)
{
    if (!l->n)
        return 0;
    size_t i = (size_t)(p * (double)(l->n - 1));
    return l->v[i];
}

static void rm_dir(const char *dir)
{
    char cmd[4300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
}

/* ---- raw fdatasync rate ---- */

static void raw_run(const char *dir, double seconds, size_t size, double *rate, struct lat *l)
{
    char path[4150];
    snprintf(path, sizeof path, "%s/raw", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || posix_fallocate(fd, 0, 64 << 20) != 0) {
        perror(path);
        exit(1);
    }
    uint8_t *buf = malloc(size);
    memset(buf, 0xab, size);
    off_t off = 0;
    size_t n = 0;
    double start = now_s(), t;
    while ((t = now_s()) - start < seconds) {
        if (pwrite(fd, buf, size, off) != (ssize_t)size || fdatasync(fd) != 0) {
            perror("raw write");
            exit(1);
        }
        lat_add(l, now_s() - t);
        off = (off + (off_t)size) % (64 << 20);
        n++;
    }
    *rate = (double)n / (now_s() - start);
    close(fd);
    unlink(path);
    free(buf);
}

/* ---- WAL with concurrent appenders ---- */

struct run {
    struct wal *w;
    pthread_mutex_t mu;
    uint64_t next;
    atomic_int stop;
    size_t size;
    uint8_t *payload;
};

struct worker {
    struct run *r;
    pthread_t t;
    struct lat l;
    int errors;
};

static void *appender(void *p)
{
    struct worker *wk = p;
    struct run *r = wk->r;
    while (!atomic_load(&r->stop)) {
        struct raft_entry e = {0, 1, RAFT_ENTRY_NORMAL, (uint32_t)r->size, r->payload};
        pthread_mutex_lock(&r->mu);
        e.index = r->next;
        double t0 = now_s();
        int rc = wal_append(r->w, &e, 1);
        if (rc == 0)
            r->next++;
        pthread_mutex_unlock(&r->mu);
        if (rc == 0)
            rc = wal_wait_durable(r->w, e.index);
        if (rc != 0) {
            wk->errors++;
            continue;
        }
        lat_add(&wk->l, now_s() - t0);
    }
    return NULL;
}

/* ---- async appenders: N appends in flight, completions via on_durable ---- */

struct async_run {
    struct wal *w;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t next, oldest; /* in flight: [oldest, next) */
    double *start;         /* ring of append times, by index % cap */
    size_t cap;
    struct lat l;
    int stop, errors;
    uint32_t size;
    uint8_t *payload;
};

/* Appends k entries (indexes next..next+k-1); called with a->mu held. */
static void async_append(struct async_run *a, size_t k)
{
    struct raft_entry es[256];
    while (k > 0) {
        size_t m = k < 256 ? k : 256;
        double t = now_s();
        for (size_t i = 0; i < m; i++) {
            es[i] = (struct raft_entry){a->next + i, 1, RAFT_ENTRY_NORMAL, a->size, a->payload};
            a->start[(a->next + i) % a->cap] = t;
        }
        if (wal_append(a->w, es, m) != 0) {
            a->errors++;
            a->stop = 1;
            return;
        }
        a->next += m;
        k -= m;
    }
}

static void async_durable(void *arg, uint64_t index, uint64_t term, int err)
{
    (void)term;
    struct async_run *a = arg;
    double t = now_s();
    pthread_mutex_lock(&a->mu);
    if (err) {
        a->errors++;
        a->stop = 1;
    }
    size_t done = 0;
    for (; a->oldest <= index && a->oldest < a->next; a->oldest++, done++)
        lat_add(&a->l, t - a->start[a->oldest % a->cap]);
    if (!a->stop)
        async_append(a, done); /* each finished appender appends again */
    if (a->oldest == a->next)
        pthread_cond_broadcast(&a->cv);
    pthread_mutex_unlock(&a->mu);
}

static int nosync;
static int fake_fdatasync(int fd)
{
    (void)fd;
    return 0;
}
static const struct wal_io nosync_io = {NULL, fake_fdatasync, NULL, NULL};

static void wal_run(const char *dir, int threads, double seconds, size_t size, double *rate,
                    struct lat *all, int *errors)
{
    char sub[4150];
    snprintf(sub, sizeof sub, "%s/wal-%d", dir, threads);
    struct run r = {.next = 1, .size = size};
    pthread_mutex_init(&r.mu, NULL);
    r.payload = malloc(size);
    memset(r.payload, 0x5a, size);
    char err[1024];
    struct wal_options o;
    wal_options_init(&o);
    if (nosync)
        o.io = &nosync_io; /* --nosync: the CPU cost alone, nothing is durable */
    if (wal_open(&r.w, sub, &o, err, sizeof err) != 0) {
        fprintf(stderr, "wal_open: %s\n", err);
        exit(1);
    }
    struct worker *wk = calloc((size_t)threads, sizeof *wk);
    double start = now_s();
    for (int i = 0; i < threads; i++) {
        wk[i].r = &r;
        pthread_create(&wk[i].t, NULL, appender, &wk[i]);
    }
    /* The measurement window; the appenders synchronise through the WAL, not through time. */
    struct timespec ts = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
    nanosleep(&ts, NULL);
    atomic_store(&r.stop, 1);
    size_t total = 0;
    *errors = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(wk[i].t, NULL);
        total += wk[i].l.n;
        *errors += wk[i].errors;
        for (size_t k = 0; k < wk[i].l.n; k++)
            lat_add(all, wk[i].l.v[k]);
        free(wk[i].l.v);
    }
    *rate = (double)total / (now_s() - start);
    wal_close(r.w);
    rm_dir(sub);
    free(wk);
    free(r.payload);
}

static void async_run(const char *dir, int inflight, double seconds, size_t size, double *rate,
                      struct lat *all, int *errors)
{
    char sub[4150];
    snprintf(sub, sizeof sub, "%s/wal-async-%d", dir, inflight);
    struct async_run a = {.next = 1, .oldest = 1, .cap = (size_t)inflight + 1, .size = (uint32_t)size};
    pthread_mutex_init(&a.mu, NULL);
    pthread_cond_init(&a.cv, NULL);
    a.start = calloc(a.cap, sizeof *a.start);
    a.payload = malloc(size);
    memset(a.payload, 0x5a, size);
    char err[1024];
    struct wal_options o;
    wal_options_init(&o);
    o.on_durable = async_durable;
    o.on_durable_arg = &a;
    if (nosync)
        o.io = &nosync_io;
    if (wal_open(&a.w, sub, &o, err, sizeof err) != 0) {
        fprintf(stderr, "wal_open: %s\n", err);
        exit(1);
    }
    double start = now_s();
    pthread_mutex_lock(&a.mu);
    async_append(&a, (size_t)inflight);
    pthread_mutex_unlock(&a.mu);
    struct timespec ts = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
    nanosleep(&ts, NULL); /* the measurement window */
    pthread_mutex_lock(&a.mu);
    a.stop = 1;
    while (a.oldest != a.next && !a.errors)
        pthread_cond_wait(&a.cv, &a.mu); /* drain what is in flight */
    size_t n = a.l.n;
    pthread_mutex_unlock(&a.mu);
    *rate = (double)n / (now_s() - start);
    *errors = a.errors;
    wal_close(a.w);
    for (size_t k = 0; k < a.l.n; k++)
        lat_add(all, a.l.v[k]);
    free(a.l.v);
    free(a.start);
    free(a.payload);
    rm_dir(sub);
}

int main(int argc, char **argv)
{
    int async = 0;
    const char *dir = NULL;
    double seconds = 3;
    size_t size = 256;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--dir") && i + 1 < argc)
            dir = argv[++i];
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
            seconds = atof(argv[++i]);
        else if (!strcmp(argv[i], "--nosync"))
            nosync = 1;
        else if (!strcmp(argv[i], "--async"))
            async = 1;
        else if (!strcmp(argv[i], "--size") && i + 1 < argc)
            size = (size_t)atol(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--dir DIR] [--seconds S] [--size BYTES] [--async] [--nosync]\n",
                    argv[0]);
            return 2;
        }
    }
    if (seconds <= 0 || size == 0 || size > (1 << 20)) {
        fprintf(stderr, "bad --seconds or --size\n");
        return 2;
    }
    char tmpl[4096];
    char *made = NULL;
    if (!dir) {
        const char *base = getenv("TMPDIR");
        snprintf(tmpl, sizeof tmpl, "%s/wal-bench.XXXXXX", base && *base ? base : "/tmp");
        made = mkdtemp(tmpl);
        if (!made) {
            perror("mkdtemp");
            return 1;
        }
        dir = made;
    }
    printf("wal-bench: dir %s, %zu-byte entries, %.1f s per run\n", dir, size, seconds);
    /* The disk is shared and noisy: each WAL run is paired with a raw run just before it, and
     * its ratio is against that pair's raw rate. */
    printf("%-22s %12s %10s %10s %10s %12s\n", "", "appends/s", "p50 ms", "p99 ms", "x raw",
           "raw ops/s");
    static const int threads[] = {1, 16, 256};
    for (size_t i = 0; i < sizeof threads / sizeof threads[0]; i++) {
        double raw_rate, rate;
        struct lat raw = {0}, l = {0};
        raw_run(dir, seconds, size, &raw_rate, &raw);
        qsort(raw.v, raw.n, sizeof *raw.v, cmp_d);
        printf("%-22s %12.0f %10.3f %10.3f %10s %12s\n", "raw write+fdatasync", raw_rate,
               pct(&raw, 0.5) * 1e3, pct(&raw, 0.99) * 1e3, "", "");
        int errors;
        if (async)
            async_run(dir, threads[i], seconds, size, &rate, &l, &errors);
        else
            wal_run(dir, threads[i], seconds, size, &rate, &l, &errors);
        qsort(l.v, l.n, sizeof *l.v, cmp_d);
        char name[64];
        snprintf(name, sizeof name, "wal, %d %s", threads[i],
                 async ? "in flight" : threads[i] > 1 ? "appenders" : "appender");
        printf("%-22s %12.0f %10.3f %10.3f %10.1f %12.0f%s\n", name, rate, pct(&l, 0.5) * 1e3,
               pct(&l, 0.99) * 1e3, rate / raw_rate, raw_rate, errors ? "  (errors!)" : "");
        fflush(stdout);
        free(l.v);
        free(raw.v);
    }
    if (made)
        rm_dir(made);
    return 0;
}
