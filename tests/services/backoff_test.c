/* services/backoff.h with made-up times: the wait doubles from 50 ms and stops at 1 s, no attempt
 * is ready before the wait is over, a reset forgets the failures, and the end of a connection
 * that lived longer than 2 s starts again from 50 ms while a shorter one's keeps doubling. */
#include <criterion/criterion.h>

#include "services/backoff.h"

#define T0 1000000 /* an arbitrary clock reading */

Test(backoff, a_fresh_backoff_is_ready_at_once)
{
    struct backoff b = {0};
    cr_assert(backoff_ready(&b, 0));
    cr_assert(backoff_ready(&b, T0));
}

Test(backoff, each_failure_doubles_the_wait_up_to_the_cap)
{
    static const int want[] = {50, 100, 200, 400, 800, 1000, 1000, 1000};
    struct backoff b = {0};
    int64_t now = T0;
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        backoff_failed(&b, now);
        cr_assert_eq(b.delay_ms, want[i], "failure %zu waits %d ms", i + 1, b.delay_ms);
        cr_assert_eq(b.next_attempt_ms, now + want[i]);
        now += want[i] + 7; /* the next attempt, a little after it was allowed */
    }
}

Test(backoff, no_attempt_is_ready_before_the_wait_is_over)
{
    struct backoff b = {0};
    backoff_failed(&b, T0);
    cr_assert_not(backoff_ready(&b, T0));
    cr_assert_not(backoff_ready(&b, T0 + BACKOFF_MIN_MS - 1));
    cr_assert(backoff_ready(&b, T0 + BACKOFF_MIN_MS));
    backoff_failed(&b, T0 + BACKOFF_MIN_MS);
    cr_assert_not(backoff_ready(&b, T0 + 3 * BACKOFF_MIN_MS - 1));
    cr_assert(backoff_ready(&b, T0 + 3 * BACKOFF_MIN_MS));
}

Test(backoff, a_reset_forgets_the_failures)
{
    struct backoff b = {0};
    for (int i = 0; i < 10; i++)
        backoff_failed(&b, T0);
    cr_assert_eq(b.delay_ms, BACKOFF_MAX_MS);
    backoff_reset(&b);
    cr_assert(backoff_ready(&b, T0), "a reset ends the current wait");
    backoff_failed(&b, T0);
    cr_assert_eq(b.delay_ms, BACKOFF_MIN_MS);
    cr_assert_eq(b.next_attempt_ms, T0 + BACKOFF_MIN_MS);
}

Test(backoff, a_long_lived_connection_ending_starts_from_scratch)
{
    struct backoff b = {0};
    for (int i = 0; i < 4; i++)
        backoff_failed(&b, T0);
    cr_assert_eq(b.delay_ms, 400);
    /* Opened at T0, ended just after BACKOFF_GOOD_MS: a good connection. */
    int64_t end = T0 + BACKOFF_GOOD_MS + 1;
    backoff_ended(&b, T0, end);
    cr_assert_eq(b.delay_ms, BACKOFF_MIN_MS);
    cr_assert_eq(b.next_attempt_ms, end + BACKOFF_MIN_MS);
    cr_assert_not(backoff_ready(&b, end));
}

Test(backoff, a_short_lived_connection_ending_keeps_doubling)
{
    struct backoff b = {0};
    for (int i = 0; i < 4; i++)
        backoff_failed(&b, T0);
    /* Exactly BACKOFF_GOOD_MS is not longer than it: one more failure. */
    int64_t end = T0 + BACKOFF_GOOD_MS;
    backoff_ended(&b, T0, end);
    cr_assert_eq(b.delay_ms, 800);
    cr_assert_eq(b.next_attempt_ms, end + 800);
    backoff_ended(&b, end, end + 10);
    cr_assert_eq(b.delay_ms, BACKOFF_MAX_MS);
}
