/* backoff.h: how long to wait before reopening a connection that failed, shared by the peer's
 * Raft streams (peer.c) and the write-forwarding streams (forward.c).
 *
 * What it promises:
 * - Nothing here reads a clock: every `now` is the caller's, in milliseconds (clock_now_ms() in
 *   the services), so tests drive it with made-up times.
 * - A zeroed struct backoff has no failures and is ready at once.
 * - Each failure doubles the wait, from BACKOFF_MIN_MS up to BACKOFF_MAX_MS, and no attempt is
 *   ready until that long after the failure.
 * - A connection that lived longer than BACKOFF_GOOD_MS was a good one: when it ends, the
 *   failures before it are forgotten and the wait starts again at BACKOFF_MIN_MS.
 */
#ifndef CRAFT_SERVICES_BACKOFF_H
#define CRAFT_SERVICES_BACKOFF_H

#include <stdbool.h>
#include <stdint.h>

#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 1000
#define BACKOFF_GOOD_MS (2 * BACKOFF_MAX_MS)

struct backoff {
    int delay_ms;            /* the last wait; 0 when there was no failure since a reset */
    int64_t next_attempt_ms; /* no attempt is ready before this */
};

/* An attempt failed at now: the wait doubles (BACKOFF_MIN_MS after a reset, at most
 * BACKOFF_MAX_MS) and starts at now. */
void backoff_failed(struct backoff *b, int64_t now);

/* A connection opened at opened_ms ended at now: backoff_failed, after a backoff_reset when it
 * lived longer than BACKOFF_GOOD_MS. */
void backoff_ended(struct backoff *b, int64_t opened_ms, int64_t now);

/* Forgets the failures: ready at once, and the next failure waits BACKOFF_MIN_MS. */
void backoff_reset(struct backoff *b);

/* Whether an attempt may be made at now. */
bool backoff_ready(const struct backoff *b, int64_t now);

#endif
