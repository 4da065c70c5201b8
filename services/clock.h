/* clock.h: the services' clock for timeouts and backoff.
 *
 * What it promises: clock_now_ms() is CLOCK_MONOTONIC in whole milliseconds, so it never jumps
 * with the wall clock, and a value converted back to a timespec can be waited on with a
 * condition variable set to CLOCK_MONOTONIC (forward.c's deadline thread does).
 */
#ifndef CRAFT_SERVICES_CLOCK_H
#define CRAFT_SERVICES_CLOCK_H

#include <stdint.h>

int64_t clock_now_ms(void);

#endif
