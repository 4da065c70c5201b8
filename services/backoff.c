/* backoff.c: see backoff.h. */
#include "services/backoff.h"

void backoff_failed(struct backoff *b, int64_t now)
{
    b->delay_ms = b->delay_ms ? b->delay_ms * 2 : BACKOFF_MIN_MS;
    if (b->delay_ms > BACKOFF_MAX_MS)
        b->delay_ms = BACKOFF_MAX_MS;
    b->next_attempt_ms = now + b->delay_ms;
}

void backoff_ended(struct backoff *b, int64_t opened_ms, int64_t now)
{
    if (now - opened_ms > BACKOFF_GOOD_MS)
        backoff_reset(b);
    backoff_failed(b, now);
}

void backoff_reset(struct backoff *b)
{
    b->delay_ms = 0;
    b->next_attempt_ms = 0;
}

bool backoff_ready(const struct backoff *b, int64_t now) { return now >= b->next_attempt_ms; }
