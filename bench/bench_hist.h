/* bench_hist: the load generators' latency histogram (craft-bench, watch-bench).
 *
 * What it promises
 * - Log-linear buckets over nanoseconds: every value below 2^7 has its own bucket, above that
 *   each power of two is split into 128 equal buckets, so a quantile is within 1% of the true
 *   sample; values past 2^41 ns (about 37 minutes) clamp. Fixed size (about 35 KiB), whatever
 *   the run length.
 * - hist_record is lock-free and safe from any number of threads at once (relaxed
 *   atomics); readers take a plain copy (hist_add_to, which merges) and compute
 *   quantiles on it, so a copy taken during a run is consistent with itself (its count comes
 *   from its buckets) though not a single instant of the run.
 * - hist_quantile(q) is the highest value of the bucket holding the sample of rank
 *   ceil(q x count), capped by the true maximum; 0 for an empty histogram.
 */
#ifndef CRAFT_BENCH_HIST_H
#define CRAFT_BENCH_HIST_H

#include <stdatomic.h>
#include <stdint.h>

/* Values in nanoseconds. Below 2^H_SUB_BITS each value has its own bucket; above, each power
 * of two is split into H_SUB equal buckets. Values past 2^(H_MAX_MSB+1) ns (~37 min) clamp. */
#define H_SUB_BITS 7
#define H_SUB (1u << H_SUB_BITS)
#define H_MAX_MSB 40
#define H_BUCKETS (H_SUB + (H_MAX_MSB - H_SUB_BITS + 1) * H_SUB)

struct hist {
    _Atomic uint64_t b[H_BUCKETS];
    _Atomic uint64_t count, max;
};

/* A plain copy for reading (merged over operations). */
struct hist_snap {
    uint64_t b[H_BUCKETS];
    uint64_t count, max;
};

/* Adds v (ns) to h; any thread. */
void hist_record(struct hist *h, uint64_t v);
/* Adds h's buckets and maximum into s (s->count counts the buckets). */
void hist_add_to(struct hist *h, struct hist_snap *s);
/* Empties h (no recording may run meanwhile). */
void hist_reset(struct hist *h);
/* The q-quantile (0 < q <= 1) of s in ns; 0 when s is empty. */
uint64_t hist_quantile(const struct hist_snap *s, double q);

#endif
