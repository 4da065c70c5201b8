/* The automatic compaction scheduler (services/autocompact.h), driven with made-up time and
 * revisions: etcd's periodic and revision modes, leadership, failures, long retentions. */
#include <criterion/criterion.h>

#include "services/autocompact.h"

Test(autocompact, periodic_compacts_to_the_revision_one_retention_ago)
{
    struct ac_sched a;
    ac_sched_init(&a, AC_PERIODIC, 10000, 0, 0); /* 10 s */
    cr_assert_eq(a.interval_ms, 1000, "a tenth of the retention");
    cr_assert_eq(a.keep, 11);
    int64_t got = 0;
    uint64_t t = 0;
    /* revision 100 * seconds; nothing before a whole retention has passed */
    for (t = 1000; t < 10000; t += 1000)
        cr_assert_eq(ac_sched_tick(&a, t, (int64_t)t / 10, true), 0, "at %llu", (unsigned long long)t);
    got = ac_sched_tick(&a, 10000, 1000, true);
    cr_assert_eq(got, 100, "the oldest sample: the revision at 1 s");
    ac_sched_done(&a, 10000, got, true);
    /* then every min(retention, 1 h) = 10 s, to the revision about 10 s before */
    for (t = 11000; t < 20000; t += 1000)
        cr_assert_eq(ac_sched_tick(&a, t, (int64_t)t / 10, true), 0);
    got = ac_sched_tick(&a, 20000, 2000, true);
    cr_assert_eq(got, 1000);
    /* a failure is retried at the next tick, with the window moved on */
    ac_sched_done(&a, 20000, got, false);
    cr_assert_eq(ac_sched_tick(&a, 21000, 2100, true), 1100);
}

Test(autocompact, periodic_samples_as_a_follower_and_compacts_once_it_leads)
{
    struct ac_sched a;
    ac_sched_init(&a, AC_PERIODIC, 10000, 0, 0);
    for (uint64_t t = 1000; t <= 30000; t += 1000)
        cr_assert_eq(ac_sched_tick(&a, t, (int64_t)t, false), 0, "followers never compact");
    /* leader now: the window is full already */
    cr_assert_eq(ac_sched_tick(&a, 31000, 31000, true), 21000);
}

Test(autocompact, periodic_with_no_writes_does_not_compact_again)
{
    struct ac_sched a;
    ac_sched_init(&a, AC_PERIODIC, 5000, 0, 0);
    int64_t got = 0;
    for (uint64_t t = 500; t <= 5000; t += 500)
        got = ac_sched_tick(&a, t, 42, true);
    cr_assert_eq(got, 42);
    ac_sched_done(&a, 5000, 42, true);
    for (uint64_t t = 5500; t <= 20000; t += 500)
        cr_assert_eq(ac_sched_tick(&a, t, 42, true), 0, "revision 42 is compacted already");
}

Test(autocompact, revision_mode_keeps_the_last_n)
{
    struct ac_sched a;
    ac_sched_init(&a, AC_REVISION, 1000, 0, 0);
    cr_assert_eq(a.interval_ms, AC_REVISION_INTERVAL_MS, "etcd checks every 5 minutes");
    cr_assert_eq(ac_sched_tick(&a, 1, 900, true), 0, "not enough history yet");
    cr_assert_eq(ac_sched_tick(&a, 2, 30000, false), 0, "followers never compact");
    int64_t got = ac_sched_tick(&a, 3, 30000, true);
    cr_assert_eq(got, 29000);
    ac_sched_done(&a, 3, got, true);
    cr_assert_eq(ac_sched_tick(&a, 4, 30000, true), 0, "nothing new");
    cr_assert_eq(ac_sched_tick(&a, 5, 30500, true), 29500);
    ac_sched_init(&a, AC_REVISION, 1000, 200, 0);
    cr_assert_eq(a.interval_ms, 200);
}

Test(autocompact, long_retentions_sample_less_often_with_bounded_memory)
{
    struct ac_sched a;
    ac_sched_init(&a, AC_PERIODIC, 24ull * AC_HOUR_MS, 0, 0);
    cr_assert_eq(a.interval_ms, 6 * 60 * 1000, "a tenth of an hour (etcd)");
    cr_assert_eq(a.keep, 241);
    ac_sched_init(&a, AC_PERIODIC, 100ull * 24 * AC_HOUR_MS, 0, 0); /* 100 days */
    cr_assert_leq(a.keep, AC_MAX_SAMPLES);
    cr_assert_geq((uint64_t)(a.keep - 1) * a.interval_ms + a.interval_ms,
                  100ull * 24 * AC_HOUR_MS, "the window still spans the retention, to a sample");
    ac_sched_init(&a, AC_PERIODIC, 0, 0, 0);
    cr_assert_eq(ac_sched_tick(&a, 1000, 5, true), 0, "0 = off");
}
