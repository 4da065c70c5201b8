/* The leader's lease expiries (services/lessor.h), driven by a fake clock: times are plain
 * milliseconds passed in. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <time.h>

#include "services/lessor.h"

static struct lessor *primary(int64_t checkpoint_ms)
{
    struct lessor_config c = {.retry_ms = 3000, .checkpoint_ms = checkpoint_ms};
    struct lessor *l = lessor_create(&c);
    cr_assert(l);
    lessor_promote_begin(l);
    cr_assert_eq(lessor_promote_end(l, 0), LESSOR_OK);
    cr_assert(lessor_is_primary(l));
    return l;
}

static size_t expired_at(struct lessor *l, int64_t now, int64_t *ids, size_t max)
{
    return lessor_expired(l, now, ids, max);
}

Test(lessor, expires_exactly_at_ttl)
{
    struct lessor *l = primary(0);
    int64_t ids[4];
    cr_assert_eq(lessor_granted(l, 1000, 7, 5), LESSOR_OK);
    cr_assert_eq(expired_at(l, 5999, ids, 4), 0);
    cr_assert_eq(lessor_next_due(l), 6000);
    int64_t rem, granted;
    cr_assert_eq(lessor_remaining(l, 7, 5999, &rem, &granted), LESSOR_OK);
    cr_assert_eq(rem, 0); /* 1 ms left: whole seconds, truncated (etcd) */
    cr_assert_eq(granted, 5);
    cr_assert_eq(lessor_remaining(l, 7, 2500, &rem, &granted), LESSOR_OK);
    cr_assert_eq(rem, 3);
    cr_assert_eq(expired_at(l, 6000, ids, 4), 1);
    cr_assert_eq(ids[0], 7);
    /* expired: a renew is answered as etcd answers it (TTL 0), it is being revoked */
    int64_t ttl;
    uint64_t tok;
    cr_assert_eq(lessor_renew(l, 7, 6000, &ttl, &tok), LESSOR_EXPIRED);
    cr_assert_eq(lessor_renew(l, 8, 6000, &ttl, &tok), LESSOR_NOT_FOUND);
    lessor_revoked(l, 7);
    cr_assert_eq(lessor_count(l), 0);
    cr_assert_eq(lessor_remaining(l, 7, 6000, &rem, &granted), LESSOR_NOT_FOUND);
    lessor_destroy(l);
}

Test(lessor, renew_restarts_the_ttl)
{
    struct lessor *l = primary(0);
    int64_t ids[4], ttl;
    uint64_t tok;
    lessor_granted(l, 0, 1, 10);
    cr_assert_eq(lessor_renew(l, 1, 9000, &ttl, &tok), LESSOR_OK);
    cr_assert_eq(ttl, 10);
    cr_assert_eq(expired_at(l, 18999, ids, 4), 0);
    cr_assert_eq(expired_at(l, 19000, ids, 4), 1);
    lessor_destroy(l);
}

Test(lessor, promote_extends_and_uses_checkpointed_remaining)
{
    struct lessor_config c = {.checkpoint_ms = 0};
    struct lessor *l = lessor_create(&c);
    int64_t ttl, ids[4];
    uint64_t tok;
    cr_assert_eq(lessor_renew(l, 1, 0, &ttl, &tok), LESSOR_NOT_PRIMARY);
    lessor_granted(l, 0, 1, 10); /* not primary: ignored */
    lessor_promote_begin(l);
    cr_assert_eq(lessor_renew(l, 1, 0, &ttl, &tok), LESSOR_NOT_PRIMARY);
    cr_assert_eq(lessor_promote_add(l, 100000, 1000, 1, 10, 0), LESSOR_OK);
    cr_assert_eq(lessor_promote_add(l, 100000, 1000, 2, 60, 4), LESSOR_OK);
    cr_assert_eq(lessor_promote_end(l, 100000), LESSOR_OK);
    cr_assert_eq(lessor_count(l), 2);
    /* 2: remaining 4 s + 1 s extension; 1: TTL 10 s + 1 s */
    cr_assert_eq(expired_at(l, 104999, ids, 4), 0);
    cr_assert_eq(expired_at(l, 105000, ids, 4), 1);
    cr_assert_eq(ids[0], 2);
    lessor_revoked(l, 2);
    cr_assert_eq(expired_at(l, 110999, ids, 4), 0);
    cr_assert_eq(expired_at(l, 111000, ids, 4), 1);
    cr_assert_eq(ids[0], 1);
    lessor_destroy(l);
}

Test(lessor, notifications_during_promotion_are_replayed)
{
    struct lessor_config c = {0};
    struct lessor *l = lessor_create(&c);
    int64_t rem, granted;
    lessor_promote_begin(l);
    /* applied while the store was read: 3 granted (the read missed it), 4 revoked (the read
     * saw it still), 5 granted (the read saw it too) */
    lessor_granted(l, 0, 3, 20);
    lessor_revoked(l, 4);
    lessor_granted(l, 0, 5, 30);
    lessor_promote_add(l, 0, 1000, 4, 10, 0);
    lessor_promote_add(l, 0, 1000, 5, 30, 0);
    cr_assert_eq(lessor_promote_end(l, 0), LESSOR_OK);
    cr_assert_eq(lessor_count(l), 2);
    cr_assert_eq(lessor_remaining(l, 3, 0, &rem, &granted), LESSOR_OK);
    cr_assert_eq(rem, 20);
    cr_assert_eq(lessor_remaining(l, 4, 0, &rem, &granted), LESSOR_NOT_FOUND);
    cr_assert_eq(lessor_remaining(l, 5, 0, &rem, &granted), LESSOR_OK);
    cr_assert_eq(rem, 31); /* as read, with the extension */
    lessor_destroy(l);
}

Test(lessor, promotion_overflow_fails_and_demotes)
{
    struct lessor_config c = {.max_pending = 4};
    struct lessor *l = lessor_create(&c);
    lessor_promote_begin(l);
    for (int i = 1; i <= 5; i++)
        lessor_granted(l, 0, i, 10);
    cr_assert_eq(lessor_promote_end(l, 0), LESSOR_EOVERFLOW);
    cr_assert_not(lessor_is_primary(l));
    cr_assert_eq(lessor_count(l), 0);
    lessor_destroy(l);
}

Test(lessor, demote_clears)
{
    struct lessor *l = primary(0);
    int64_t ttl, ids[4];
    uint64_t tok;
    lessor_granted(l, 0, 1, 5);
    lessor_granted(l, 0, 2, 5);
    lessor_demote(l);
    cr_assert_not(lessor_is_primary(l));
    cr_assert_eq(lessor_count(l), 0);
    cr_assert_eq(lessor_renew(l, 1, 0, &ttl, &tok), LESSOR_NOT_PRIMARY);
    cr_assert_eq(expired_at(l, 100000, ids, 4), 0);
    lessor_granted(l, 0, 3, 5); /* ignored while not primary */
    cr_assert_eq(lessor_count(l), 0);
    lessor_destroy(l);
}

Test(lessor, expired_batches_are_bounded_and_retried)
{
    struct lessor *l = primary(0);
    int64_t ids[10];
    for (int i = 1; i <= 25; i++)
        lessor_granted(l, 0, i, 1);
    cr_assert_eq(expired_at(l, 1000, ids, 10), 10);
    cr_assert_eq(expired_at(l, 1000, ids, 10), 10);
    cr_assert_eq(expired_at(l, 1000, ids, 10), 5);
    /* every one offered once; none again until the retry interval passes */
    cr_assert_eq(expired_at(l, 3999, ids, 10), 0);
    lessor_revoked(l, 1); /* its revoke was applied; the others' proposals were lost */
    size_t again = 0;
    while ((again += expired_at(l, 4000, ids, 10)) % 10 == 0 && again)
        ;
    cr_assert_eq(again, 24);
    cr_assert_eq(expired_at(l, 4000, ids, 10), 0);
    lessor_destroy(l);
}

Test(lessor, expired_in_expiry_order)
{
    struct lessor *l = primary(0);
    int64_t ids[3];
    lessor_granted(l, 0, 30, 3);
    lessor_granted(l, 0, 10, 1);
    lessor_granted(l, 0, 20, 2);
    cr_assert_eq(expired_at(l, 3000, ids, 3), 3);
    cr_assert_eq(ids[0], 10);
    cr_assert_eq(ids[1], 20);
    cr_assert_eq(ids[2], 30);
    lessor_destroy(l);
}

Test(lessor, checkpoints_every_interval_for_long_leases)
{
    struct lessor *l = primary(1000);
    struct lessor_checkpoint cps[4];
    lessor_granted(l, 0, 1, 10);
    lessor_granted(l, 0, 2, 1); /* TTL not above the interval: never checkpointed */
    cr_assert_eq(lessor_checkpoints(l, 999, cps, 4), 0);
    cr_assert_eq(lessor_checkpoints(l, 1000, cps, 4), 1);
    cr_assert_eq(cps[0].id, 1);
    cr_assert_eq(cps[0].remaining, 9);
    cr_assert_eq(lessor_checkpoints(l, 1500, cps, 4), 0);
    cr_assert_eq(lessor_checkpoints(l, 2000, cps, 4), 1);
    cr_assert_eq(cps[0].remaining, 8);
    lessor_destroy(l);
}

Test(lessor, checkpoint_batches_are_bounded)
{
    struct lessor *l = primary(1000);
    struct lessor_checkpoint cps[100];
    for (int i = 1; i <= 250; i++)
        lessor_granted(l, 0, i, 100);
    cr_assert_eq(lessor_checkpoints(l, 1000, cps, 100), 100);
    cr_assert_eq(lessor_checkpoints(l, 1000, cps, 100), 100);
    cr_assert_eq(lessor_checkpoints(l, 1000, cps, 100), 50);
    cr_assert_eq(lessor_checkpoints(l, 1000, cps, 100), 0);
    lessor_destroy(l);
}

Test(lessor, renew_after_a_checkpoint_needs_a_reset_first)
{
    struct lessor *l = primary(1000);
    struct lessor_checkpoint cps[2];
    int64_t ttl;
    uint64_t tok, tok2;
    lessor_granted(l, 0, 1, 10);
    cr_assert_eq(lessor_renew(l, 1, 500, &ttl, &tok), LESSOR_OK); /* nothing recorded yet */
    cr_assert_eq(lessor_checkpoints(l, 3000, cps, 2), 1);
    cr_assert_eq(lessor_renew(l, 1, 3100, &ttl, &tok), LESSOR_NEEDS_RESET);
    /* a checkpoint offered after the reset was proposed: the store holds it, not 0 */
    cr_assert_eq(lessor_checkpoints(l, 4000, cps, 2), 1);
    lessor_reset_applied(l, 1, tok);
    cr_assert_eq(lessor_renew(l, 1, 4100, &ttl, &tok2), LESSOR_NEEDS_RESET);
    cr_assert_neq(tok2, tok);
    lessor_reset_applied(l, 1, tok2);
    cr_assert_eq(lessor_renew(l, 1, 4200, &ttl, &tok), LESSOR_OK);
    cr_assert_eq(ttl, 10);
    int64_t ids[2];
    cr_assert_eq(expired_at(l, 14199, ids, 2), 0);
    cr_assert_eq(expired_at(l, 14200, ids, 2), 1);
    lessor_destroy(l);
}

Test(lessor, promoted_remaining_needs_a_reset)
{
    struct lessor_config c = {.checkpoint_ms = 1000};
    struct lessor *l = lessor_create(&c);
    int64_t ttl;
    uint64_t tok;
    lessor_promote_begin(l);
    lessor_promote_add(l, 0, 1000, 1, 100, 40);
    lessor_promote_add(l, 0, 1000, 2, 100, 0);
    lessor_promote_end(l, 0);
    cr_assert_eq(lessor_renew(l, 1, 10, &ttl, &tok), LESSOR_NEEDS_RESET);
    cr_assert_eq(lessor_renew(l, 2, 10, &ttl, &tok), LESSOR_OK);
    lessor_destroy(l);
}

Test(lessor, checkpoint_skips_just_renewed_and_expired)
{
    struct lessor *l = primary(1000);
    struct lessor_checkpoint cps[4];
    int64_t ttl;
    uint64_t tok;
    lessor_granted(l, 0, 1, 10);
    lessor_granted(l, 0, 2, 2); /* above the interval, but expired at its second */
    cr_assert_eq(lessor_renew(l, 1, 999, &ttl, &tok), LESSOR_OK);
    /* at 1000: 1 was renewed 1 ms ago (10 s left: nothing shorter to record); 2 has 1 s */
    cr_assert_eq(lessor_checkpoints(l, 1000, cps, 4), 1);
    cr_assert_eq(cps[0].id, 2);
    cr_assert_eq(cps[0].remaining, 1);
    /* at 2000: 1 has 9 s left; 2 expired at 2000: skipped */
    cr_assert_eq(lessor_checkpoints(l, 2000, cps, 4), 1);
    cr_assert_eq(cps[0].id, 1);
    cr_assert_eq(cps[0].remaining, 9);
    lessor_destroy(l);
}

Test(lessor, hundred_thousand_leases)
{
    struct lessor *l = primary(300000);
    const int n = 100000;
    srand(7);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 1; i <= n; i++)
        cr_assert_eq(lessor_granted(l, 0, (int64_t)i * 7919, 10 + i % 50), LESSOR_OK);
    cr_assert_eq(lessor_count(l), (size_t)n);
    int64_t ttl;
    uint64_t tok;
    for (int r = 0; r < 5 * n; r++) {
        int i = 1 + rand() % n;
        cr_assert_eq(lessor_renew(l, (int64_t)i * 7919, 5000, &ttl, &tok), LESSOR_OK);
    }
    /* revoke every third, then let everything expire in batches */
    for (int i = 3; i <= n; i += 3)
        lessor_revoked(l, (int64_t)i * 7919);
    size_t left = lessor_count(l), seen = 0;
    int64_t *ids = malloc(1000 * sizeof *ids);
    int64_t prev = 0;
    for (;;) {
        int64_t due = lessor_next_due(l);
        if (due == INT64_MAX || due > 1000000)
            break;
        size_t k = expired_at(l, due, ids, 1000);
        cr_assert_gt(k, 0);
        cr_assert_geq(due, prev);
        prev = due;
        for (size_t j = 0; j < k; j++)
            lessor_revoked(l, ids[j]);
        seen += k;
    }
    cr_assert_eq(seen, left);
    cr_assert_eq(lessor_count(l), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    /* O(log n) each: well under a second here even under a sanitizer; a scan per call would
     * take minutes */
    cr_assert_lt(secs, 20.0);
    free(ids);
    lessor_destroy(l);
}
