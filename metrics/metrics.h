/* metrics.h: craft's metric primitives and their rendering in the Prometheus text exposition
 * format 0.0.4 (what `/metrics` serves; docs/metrics.md lists every metric).
 *
 * What it promises:
 * - Counting is cheap and lock-free: a counter or gauge is one relaxed atomic; observing a
 *   histogram is a scan of at most METRICS_MAX_BUCKETS fixed upper bounds and two relaxed
 *   atomic additions (the bucket's count and the sum). Nothing here locks, allocates or
 *   makes a system call on the counting side, so any thread may count on its hot path.
 * - Histograms have fixed buckets, set when the histogram is defined (etcd's buckets for the
 *   metrics that are etcd's: metrics_buckets_etcd_disk for fsync and commit durations,
 *   metrics_buckets_etcd_rtt for peer round trips). Values are whole numbers in the
 *   histogram's own unit (nanoseconds for durations, entries for sizes); `scale` converts
 *   them to the rendered unit (1e9: seconds). Buckets hold plain, not cumulative, counts; the
 *   renderer makes them cumulative, and the +Inf bucket is the count. Under concurrent
 *   observes a scrape may see a sum and a count that differ by the observations in flight;
 *   Prometheus tolerates that.
 * - Registration is static: each owner defines its metrics when it is created (a struct field,
 *   zeroed, then metrics_histogram_init), and whoever renders reads them at scrape time. There
 *   is no global registry and no name lookup.
 * - Rendering: metrics_buf collects the text, bounded by its max (past it, the buffer marks
 *   itself failed and drops the rest; the caller answers 500, never truncated data). Names
 *   are the caller's (constants); label values and help texts are escaped as the format wants
 *   (backslash, double quote, newline). Floats use the shortest text that reads back equal;
 *   +Inf, -Inf and NaN use the format's spelling.
 */
#ifndef CRAFT_METRICS_H
#define CRAFT_METRICS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct metrics_counter {
    _Atomic uint64_t v;
};
static inline void metrics_counter_add(struct metrics_counter *c, uint64_t n)
{
    atomic_fetch_add_explicit(&c->v, n, memory_order_relaxed);
}
static inline uint64_t metrics_counter_get(const struct metrics_counter *c)
{
    return atomic_load_explicit(&((struct metrics_counter *)c)->v, memory_order_relaxed);
}

struct metrics_gauge {
    _Atomic int64_t v;
};
static inline void metrics_gauge_set(struct metrics_gauge *g, int64_t v)
{
    atomic_store_explicit(&g->v, v, memory_order_relaxed);
}
static inline void metrics_gauge_add(struct metrics_gauge *g, int64_t n)
{
    atomic_fetch_add_explicit(&g->v, n, memory_order_relaxed);
}
static inline int64_t metrics_gauge_get(const struct metrics_gauge *g)
{
    return atomic_load_explicit(&((struct metrics_gauge *)g)->v, memory_order_relaxed);
}

#define METRICS_MAX_BUCKETS 24

struct metrics_histogram {
    const uint64_t *bounds; /* inclusive upper bounds ("le"), strictly ascending, in units */
    unsigned n_bounds;      /* 1 .. METRICS_MAX_BUCKETS */
    double scale;           /* units per rendered unit: 1e9 renders nanoseconds as seconds */
    _Atomic uint64_t buckets[METRICS_MAX_BUCKETS + 1]; /* [n_bounds] = above every bound */
    _Atomic uint64_t sum;                              /* in units */
};

/* etcd's ExponentialBuckets(0.001, 2, 14) in nanoseconds: 1 ms .. 8.192 s. etcd uses them for
 * etcd_disk_wal_fsync_duration_seconds, etcd_disk_backend_commit_duration_seconds and its
 * snapshot durations. */
extern const uint64_t metrics_buckets_etcd_disk[14];
/* etcd's ExponentialBuckets(0.0001, 2, 14) in nanoseconds: 0.1 ms .. 0.8192 s
 * (etcd_network_peer_round_trip_time_seconds). */
extern const uint64_t metrics_buckets_etcd_rtt[14];

/* Sets bounds (kept by pointer: static storage) and scale, and zeroes the counts. Returns 0, or
 * -1 when n is 0 or over METRICS_MAX_BUCKETS or the bounds are not strictly ascending. */
int metrics_histogram_init(struct metrics_histogram *h, const uint64_t *bounds, unsigned n,
                           double scale);
/* Counts one observation of v units. Any thread; lock-free. */
void metrics_histogram_observe(struct metrics_histogram *h, uint64_t v);
/* A consistent-enough copy for rendering or tests: per-bucket (not cumulative) counts into
 * counts[n_bounds + 1], the sum into *sum, and the total count returned. */
uint64_t metrics_histogram_read(const struct metrics_histogram *h, uint64_t *counts,
                                uint64_t *sum);

/* CLOCK_MONOTONIC in nanoseconds, for timing what a histogram observes. */
uint64_t metrics_now_ns(void);

/* Rendering. */
struct metrics_buf {
    char *p;
    size_t len, cap, max;
    bool failed; /* out of memory or past max: the text is incomplete */
};
void metrics_buf_init(struct metrics_buf *b, size_t max);
void metrics_buf_free(struct metrics_buf *b);
void metrics_buf_printf(struct metrics_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* "# HELP name help" and "# TYPE name type" (type: "counter", "gauge", "histogram",
 * "untyped"), once per metric family, before its samples. */
void metrics_family(struct metrics_buf *b, const char *name, const char *type, const char *help);
/* One sample line. labels: NULL, or pairs key, value, ..., terminated by NULL; values are
 * escaped. */
void metrics_sample(struct metrics_buf *b, const char *name, const char *const *labels, double v);
void metrics_sample_u64(struct metrics_buf *b, const char *name, const char *const *labels,
                        uint64_t v);
/* A histogram's samples: name_bucket{labels...,le="..."} cumulative counts ending in le="+Inf",
 * then name_sum (in the rendered unit) and name_count. */
void metrics_histogram_write(struct metrics_buf *b, const char *name, const char *const *labels,
                             const struct metrics_histogram *h);
/* The same from a copy: counts[0..n_bounds] per bucket (not cumulative), sum in units (e.g. a
 * histogram read elsewhere with metrics_histogram_read and handed over). */
void metrics_histogram_write_counts(struct metrics_buf *b, const char *name,
                                    const char *const *labels, const uint64_t *bounds,
                                    unsigned n_bounds, double scale, const uint64_t *counts,
                                    uint64_t sum);
/* Shortest decimal text of v that reads back equal ("+Inf", "-Inf", "NaN" too), into out. */
void metrics_format_double(double v, char *out, size_t len);

#endif
