/* services/clock.h: clock_now_ms() reads CLOCK_MONOTONIC (forward.c waits for its values on a
 * CLOCK_MONOTONIC condition variable), so it lies between two readings of that clock. */
#include <criterion/criterion.h>
#include <time.h>

#include "services/clock.h"

static int64_t monotonic_ms(void)
{
    struct timespec ts;
    cr_assert_eq(clock_gettime(CLOCK_MONOTONIC, &ts), 0);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

Test(clock, now_is_the_monotonic_clock_in_milliseconds)
{
    for (int i = 0; i < 1000; i++) {
        int64_t before = monotonic_ms();
        int64_t now = clock_now_ms();
        int64_t after = monotonic_ms();
        cr_assert(before <= now && now <= after, "%lld not in [%lld, %lld]", (long long)now,
                  (long long)before, (long long)after);
    }
}
