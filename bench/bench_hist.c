/* bench_hist.c: see bench_hist.h. */
#include "bench/bench_hist.h"

#include <math.h>

static unsigned hist_index(uint64_t v)
{
    if (v >= (2ull << H_MAX_MSB))
        v = (2ull << H_MAX_MSB) - 1;
    if (v < H_SUB)
        return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = msb - H_SUB_BITS;
    unsigned mant = (unsigned)(v >> shift) - H_SUB;
    return H_SUB + shift * H_SUB + mant;
}

/* Highest value that lands in bucket i. */
static uint64_t hist_bucket_high(unsigned i)
{
    if (i < H_SUB)
        return i;
    unsigned shift = (i - H_SUB) / H_SUB, mant = (i - H_SUB) % H_SUB;
    return (((uint64_t)H_SUB + mant) << shift) + ((uint64_t)1 << shift) - 1;
}

void hist_record(struct hist *h, uint64_t v)
{
    atomic_fetch_add_explicit(&h->b[hist_index(v)], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
    uint64_t m = atomic_load_explicit(&h->max, memory_order_relaxed);
    while (v > m && !atomic_compare_exchange_weak_explicit(&h->max, &m, v, memory_order_relaxed,
                                                           memory_order_relaxed))
        ;
}

void hist_add_to(struct hist *h, struct hist_snap *s)
{
    for (unsigned i = 0; i < H_BUCKETS; i++) {
        uint64_t n = atomic_load_explicit(&h->b[i], memory_order_relaxed);
        s->b[i] += n;
        s->count += n; /* count from the buckets so percentiles are consistent */
    }
    uint64_t m = atomic_load_explicit(&h->max, memory_order_relaxed);
    if (m > s->max)
        s->max = m;
}

void hist_reset(struct hist *h)
{
    for (unsigned i = 0; i < H_BUCKETS; i++)
        atomic_store(&h->b[i], 0);
    atomic_store(&h->count, 0);
    atomic_store(&h->max, 0);
}

/* The q-quantile (0 < q <= 1) in ns: the highest value equivalent to the sample of rank
 * ceil(q * count), capped by the true maximum. 0 for an empty histogram. */
uint64_t hist_quantile(const struct hist_snap *s, double q)
{
    if (s->count == 0)
        return 0;
    uint64_t rank = (uint64_t)ceil(q * (double)s->count);
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < H_BUCKETS; i++) {
        seen += s->b[i];
        if (seen >= rank) {
            uint64_t v = hist_bucket_high(i);
            return v < s->max ? v : s->max;
        }
    }
    return s->max;
}
