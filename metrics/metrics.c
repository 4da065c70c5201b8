/* metrics.c: counters, gauges, fixed-bucket histograms and Prometheus text (metrics.h). */
#include "metrics/metrics.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MS 1000000ull
#define US100 100000ull

const uint64_t metrics_buckets_etcd_disk[14] = {
    1 * MS,   2 * MS,   4 * MS,    8 * MS,    16 * MS,   32 * MS,   64 * MS,
    128 * MS, 256 * MS, 512 * MS,  1024 * MS, 2048 * MS, 4096 * MS, 8192 * MS,
};

const uint64_t metrics_buckets_etcd_rtt[14] = {
    1 * US100,   2 * US100,   4 * US100,    8 * US100,    16 * US100,   32 * US100,
    64 * US100,  128 * US100, 256 * US100,  512 * US100,  1024 * US100, 2048 * US100,
    4096 * US100, 8192 * US100,
};

int metrics_histogram_init(struct metrics_histogram *h, const uint64_t *bounds, unsigned n,
                           double scale)
{
    if (n == 0 || n > METRICS_MAX_BUCKETS || !bounds || !(scale > 0))
        return -1;
    for (unsigned i = 1; i < n; i++)
        if (bounds[i] <= bounds[i - 1])
            return -1;
    h->bounds = bounds;
    h->n_bounds = n;
    h->scale = scale;
    for (unsigned i = 0; i <= METRICS_MAX_BUCKETS; i++)
        atomic_store_explicit(&h->buckets[i], 0, memory_order_relaxed);
    atomic_store_explicit(&h->sum, 0, memory_order_relaxed);
    return 0;
}

void metrics_histogram_observe(struct metrics_histogram *h, uint64_t v)
{
    unsigned i = 0;
    while (i < h->n_bounds && v > h->bounds[i])
        i++;
    atomic_fetch_add_explicit(&h->buckets[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum, v, memory_order_relaxed);
}

uint64_t metrics_histogram_read(const struct metrics_histogram *h, uint64_t *counts, uint64_t *sum)
{
    struct metrics_histogram *m = (struct metrics_histogram *)h;
    uint64_t total = 0;
    for (unsigned i = 0; i <= h->n_bounds; i++) {
        counts[i] = atomic_load_explicit(&m->buckets[i], memory_order_relaxed);
        total += counts[i];
    }
    *sum = atomic_load_explicit(&m->sum, memory_order_relaxed);
    return total;
}

uint64_t metrics_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void metrics_buf_init(struct metrics_buf *b, size_t max)
{
    memset(b, 0, sizeof *b);
    b->max = max;
}

void metrics_buf_free(struct metrics_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

static void buf_put(struct metrics_buf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n + 1 > b->max) {
        b->failed = true;
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        if (cap > b->max)
            cap = b->max;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->failed = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void buf_puts(struct metrics_buf *b, const char *s) { buf_put(b, s, strlen(s)); }

void metrics_buf_printf(struct metrics_buf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->failed = true;
        return;
    }
    if ((size_t)n < sizeof tmp) {
        buf_put(b, tmp, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) {
        b->failed = true;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    buf_put(b, big, (size_t)n);
    free(big);
}

/* Escapes backslash and newline (help text), and the double quote too (label values). */
static void buf_escaped(struct metrics_buf *b, const char *s, bool quote)
{
    for (const char *p = s; *p; p++) {
        if (*p == '\\')
            buf_put(b, "\\\\", 2);
        else if (*p == '\n')
            buf_put(b, "\\n", 2);
        else if (quote && *p == '"')
            buf_put(b, "\\\"", 2);
        else
            buf_put(b, p, 1);
    }
}

void metrics_family(struct metrics_buf *b, const char *name, const char *type, const char *help)
{
    buf_puts(b, "# HELP ");
    buf_puts(b, name);
    buf_put(b, " ", 1);
    buf_escaped(b, help, false);
    buf_puts(b, "\n# TYPE ");
    buf_puts(b, name);
    buf_put(b, " ", 1);
    buf_puts(b, type);
    buf_put(b, "\n", 1);
}

/* name{k="v",...[,extra_key="extra_val"]} followed by a space. */
static void sample_head(struct metrics_buf *b, const char *name, const char *suffix,
                        const char *const *labels, const char *extra_key, const char *extra_val)
{
    buf_puts(b, name);
    if (suffix)
        buf_puts(b, suffix);
    bool any = false;
    if (labels)
        for (size_t i = 0; labels[i] && labels[i + 1]; i += 2) {
            buf_put(b, any ? "," : "{", 1);
            buf_puts(b, labels[i]);
            buf_put(b, "=\"", 2);
            buf_escaped(b, labels[i + 1], true);
            buf_put(b, "\"", 1);
            any = true;
        }
    if (extra_key) {
        buf_put(b, any ? "," : "{", 1);
        buf_puts(b, extra_key);
        buf_put(b, "=\"", 2);
        buf_escaped(b, extra_val, true);
        buf_put(b, "\"", 1);
        any = true;
    }
    if (any)
        buf_put(b, "}", 1);
    buf_put(b, " ", 1);
}

void metrics_format_double(double v, char *out, size_t len)
{
    if (isnan(v)) {
        snprintf(out, len, "NaN");
        return;
    }
    if (isinf(v)) {
        snprintf(out, len, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    if (v > -1e15 && v < 1e15 && v == (double)(int64_t)v) { /* whole: "4096", not "4e+03" */
        snprintf(out, len, "%lld", (long long)v);
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(out, len, "%.*g", prec, v);
        if (strtod(out, NULL) == v)
            return;
    }
}

void metrics_sample(struct metrics_buf *b, const char *name, const char *const *labels, double v)
{
    char num[40];
    metrics_format_double(v, num, sizeof num);
    sample_head(b, name, NULL, labels, NULL, NULL);
    buf_puts(b, num);
    buf_put(b, "\n", 1);
}

void metrics_sample_u64(struct metrics_buf *b, const char *name, const char *const *labels,
                        uint64_t v)
{
    char num[24];
    snprintf(num, sizeof num, "%llu", (unsigned long long)v);
    sample_head(b, name, NULL, labels, NULL, NULL);
    buf_puts(b, num);
    buf_put(b, "\n", 1);
}

void metrics_histogram_write(struct metrics_buf *b, const char *name, const char *const *labels,
                             const struct metrics_histogram *h)
{
    uint64_t counts[METRICS_MAX_BUCKETS + 1], sum;
    metrics_histogram_read(h, counts, &sum);
    metrics_histogram_write_counts(b, name, labels, h->bounds, h->n_bounds, h->scale, counts, sum);
}

void metrics_histogram_write_counts(struct metrics_buf *b, const char *name,
                                    const char *const *labels, const uint64_t *bounds,
                                    unsigned n_bounds, double scale, const uint64_t *counts,
                                    uint64_t sum)
{
    uint64_t cum = 0;
    char le[40], num[40];
    for (unsigned i = 0; i <= n_bounds; i++) {
        cum += counts[i];
        if (i < n_bounds)
            metrics_format_double((double)bounds[i] / scale, le, sizeof le);
        else
            snprintf(le, sizeof le, "+Inf");
        sample_head(b, name, "_bucket", labels, "le", le);
        snprintf(num, sizeof num, "%llu", (unsigned long long)cum);
        buf_puts(b, num);
        buf_put(b, "\n", 1);
    }
    sample_head(b, name, "_sum", labels, NULL, NULL);
    metrics_format_double((double)sum / scale, num, sizeof num);
    buf_puts(b, num);
    buf_put(b, "\n", 1);
    sample_head(b, name, "_count", labels, NULL, NULL);
    snprintf(num, sizeof num, "%llu", (unsigned long long)cum);
    buf_puts(b, num);
    buf_put(b, "\n", 1);
}
