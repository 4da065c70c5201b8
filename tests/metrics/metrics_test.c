/* metrics_test: histogram bucketing (bounds are inclusive upper bounds, the +Inf bucket catches
 * the rest, sum and count add up, concurrent observers lose nothing) and the Prometheus text
 * rendering (HELP/TYPE lines, label escaping, cumulative buckets, float spelling, the bound). */
#include <criterion/criterion.h>
#include <pthread.h>
#include <string.h>

#include "metrics/metrics.h"

static const uint64_t small_bounds[3] = {10, 20, 40};

Test(histogram, bucketing_inclusive_upper_bounds)
{
    struct metrics_histogram h;
    cr_assert_eq(metrics_histogram_init(&h, small_bounds, 3, 1), 0);
    uint64_t vals[] = {0, 10, 11, 20, 21, 40, 41, 1000};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++)
        metrics_histogram_observe(&h, vals[i]);
    uint64_t c[METRICS_MAX_BUCKETS + 1], sum;
    cr_assert_eq(metrics_histogram_read(&h, c, &sum), 8);
    cr_assert_eq(c[0], 2); /* 0, 10 */
    cr_assert_eq(c[1], 2); /* 11, 20 */
    cr_assert_eq(c[2], 2); /* 21, 40 */
    cr_assert_eq(c[3], 2); /* 41, 1000: +Inf */
    cr_assert_eq(sum, 0 + 10 + 11 + 20 + 21 + 40 + 41 + 1000);
}

Test(histogram, init_refuses_bad_bounds)
{
    struct metrics_histogram h;
    static const uint64_t not_ascending[3] = {1, 3, 3};
    cr_assert_eq(metrics_histogram_init(&h, not_ascending, 3, 1), -1);
    cr_assert_eq(metrics_histogram_init(&h, small_bounds, 0, 1), -1);
    cr_assert_eq(metrics_histogram_init(&h, small_bounds, METRICS_MAX_BUCKETS + 1, 1), -1);
    cr_assert_eq(metrics_histogram_init(&h, small_bounds, 3, 0), -1);
}

Test(histogram, etcd_disk_buckets)
{
    /* etcd: ExponentialBuckets(0.001, 2, 14) */
    struct metrics_histogram h;
    cr_assert_eq(metrics_histogram_init(&h, metrics_buckets_etcd_disk, 14, 1e9), 0);
    metrics_histogram_observe(&h, 1500000); /* 1.5 ms: le=0.002 */
    metrics_histogram_observe(&h, 9000000000ull); /* 9 s: +Inf */
    struct metrics_buf b;
    metrics_buf_init(&b, 1 << 20);
    metrics_histogram_write(&b, "etcd_disk_wal_fsync_duration_seconds", NULL, &h);
    cr_assert(!b.failed);
    cr_assert(strstr(b.p, "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.001\"} 0\n"));
    cr_assert(strstr(b.p, "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.002\"} 1\n"));
    cr_assert(strstr(b.p, "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"8.192\"} 1\n"));
    cr_assert(strstr(b.p, "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"+Inf\"} 2\n"));
    cr_assert(strstr(b.p, "etcd_disk_wal_fsync_duration_seconds_sum 9.0015\n"), "%s", b.p);
    cr_assert(strstr(b.p, "etcd_disk_wal_fsync_duration_seconds_count 2\n"));
    metrics_buf_free(&b);
}

Test(histogram, rtt_buckets_start_at_a_tenth_of_a_millisecond)
{
    struct metrics_histogram h;
    cr_assert_eq(metrics_histogram_init(&h, metrics_buckets_etcd_rtt, 14, 1e9), 0);
    struct metrics_buf b;
    metrics_buf_init(&b, 1 << 20);
    const char *labels[] = {"To", "abc", NULL};
    metrics_histogram_write(&b, "rtt", labels, &h);
    cr_assert(strstr(b.p, "rtt_bucket{To=\"abc\",le=\"0.0001\"} 0\n"), "%s", b.p);
    cr_assert(strstr(b.p, "rtt_bucket{To=\"abc\",le=\"0.8192\"} 0\n"), "%s", b.p);
    cr_assert(strstr(b.p, "rtt_sum{To=\"abc\"} 0\n"));
    metrics_buf_free(&b);
}

#define THREADS 4
#define PER_THREAD 100000

static void *observer(void *arg)
{
    struct metrics_histogram *h = arg;
    for (uint64_t i = 0; i < PER_THREAD; i++)
        metrics_histogram_observe(h, i % 50);
    return NULL;
}

Test(histogram, concurrent_observers_lose_nothing)
{
    static struct metrics_histogram h;
    cr_assert_eq(metrics_histogram_init(&h, small_bounds, 3, 1), 0);
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        pthread_create(&t[i], NULL, observer, &h);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    uint64_t c[METRICS_MAX_BUCKETS + 1], sum;
    cr_assert_eq(metrics_histogram_read(&h, c, &sum), (uint64_t)THREADS * PER_THREAD);
    /* per thread: i % 50 over 100000 values = 2000 rounds of 0..49 */
    cr_assert_eq(c[0], THREADS * 2000ull * 11); /* 0..10 */
    cr_assert_eq(c[3], THREADS * 2000ull * 9);  /* 41..49 */
    cr_assert_eq(sum, THREADS * 2000ull * (49 * 50 / 2));
}

Test(render, family_and_samples)
{
    struct metrics_buf b;
    metrics_buf_init(&b, 1 << 20);
    metrics_family(&b, "grpc_server_handled_total", "counter", "Total RPCs\ncompleted \\ here.");
    const char *l[] = {"grpc_method", "Put", "grpc_code", "say \"hi\"\n\\", NULL};
    metrics_sample_u64(&b, "grpc_server_handled_total", l, 18446744073709551615ull);
    metrics_sample(&b, "g", NULL, 0.1);
    metrics_sample(&b, "g", NULL, 1e21);
    metrics_sample(&b, "g", NULL, 1.0 / 0.0);
    metrics_sample(&b, "g", NULL, -3);
    cr_assert(!b.failed);
    cr_assert_str_eq(b.p,
                     "# HELP grpc_server_handled_total Total RPCs\\ncompleted \\\\ here.\n"
                     "# TYPE grpc_server_handled_total counter\n"
                     "grpc_server_handled_total{grpc_method=\"Put\",grpc_code=\"say \\\"hi\\\"\\n\\\\\"} "
                     "18446744073709551615\n"
                     "g 0.1\n"
                     "g 1e+21\n"
                     "g +Inf\n"
                     "g -3\n");
    metrics_buf_free(&b);
}

Test(render, float_spelling_reads_back)
{
    char out[40];
    double vals[] = {0.001, 8.192, 1.0 / 3.0, 123456789.125, 5e-324, 0, -0.5};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        metrics_format_double(vals[i], out, sizeof out);
        cr_assert_eq(strtod(out, NULL), vals[i], "%s", out);
    }
    metrics_format_double(0.001, out, sizeof out);
    cr_assert_str_eq(out, "0.001");
    metrics_format_double(4096, out, sizeof out);
    cr_assert_str_eq(out, "4096");
    metrics_format_double(-0.0, out, sizeof out);
    cr_assert_str_eq(out, "0");
    metrics_format_double(0.0 / 0.0, out, sizeof out);
    cr_assert_str_eq(out, "NaN");
}

Test(render, bounded_buffer_fails_instead_of_truncating_silently)
{
    struct metrics_buf b;
    metrics_buf_init(&b, 64);
    for (int i = 0; i < 10; i++)
        metrics_sample_u64(&b, "a_rather_long_metric_name_total", NULL, (uint64_t)i);
    cr_assert(b.failed);
    cr_assert_leq(b.len, 64);
    metrics_buf_free(&b);
}

Test(render, counters_and_gauges)
{
    struct metrics_counter c = {0};
    struct metrics_gauge g = {0};
    metrics_counter_add(&c, 5);
    metrics_counter_add(&c, 2);
    metrics_gauge_set(&g, 10);
    metrics_gauge_add(&g, -12);
    cr_assert_eq(metrics_counter_get(&c), 7);
    cr_assert_eq(metrics_gauge_get(&g), -2);
}

Test(render, histogram_from_a_copy_reads_the_same)
{
    struct metrics_histogram h;
    cr_assert_eq(metrics_histogram_init(&h, small_bounds, 3, 1), 0);
    metrics_histogram_observe(&h, 5);
    metrics_histogram_observe(&h, 15);
    metrics_histogram_observe(&h, 99);
    uint64_t c[METRICS_MAX_BUCKETS + 1], sum;
    metrics_histogram_read(&h, c, &sum);
    struct metrics_buf a, b;
    metrics_buf_init(&a, 1 << 20);
    metrics_buf_init(&b, 1 << 20);
    const char *l[] = {"To", "x", NULL};
    metrics_histogram_write(&a, "h", l, &h);
    metrics_histogram_write_counts(&b, "h", l, small_bounds, 3, 1, c, sum);
    cr_assert_str_eq(a.p, b.p);
    cr_assert(strstr(a.p, "h_bucket{To=\"x\",le=\"20\"} 2\n"), "%s", a.p);
    cr_assert(strstr(a.p, "h_count{To=\"x\"} 3\n"), "%s", a.p);
    metrics_buf_free(&a);
    metrics_buf_free(&b);
}
