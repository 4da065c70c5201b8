/* power_test.c: power loss, not just kill -9. The members' logs run through lazy_io
 * (tests/wal/lazy_io.h), which drops every write not yet synced at a simulated crash, as a
 * machine losing power drops its page cache; kill -9 keeps it, so only this catches a log that
 * reports entries durable before its fdatasync (or without one). Every acknowledged proposal
 * must survive the loss of power of every member at once, and of the leader alone. */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include "tests/node/cluster.h"
#include "tests/wal/lazy_io.h"

TestSuite(node_power, .timeout = 120);

static size_t pos_of(const uint64_t *idx, size_t n, uint64_t index)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (idx[mid] < index)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static uint64_t max_acked_index(const struct loadgen *lg)
{
    uint64_t m = 0;
    for (size_t k = 0; k < lg->n_acked; k++)
        if (lg->acked_index[k] > m)
            m = lg->acked_index[k];
    return m;
}

/* Member slot replays its log (fresh memfsm) past every acknowledged index, and every
 * acknowledged proposal is there, at its index. */
static void assert_acked_survived(struct cluster *c, size_t slot, struct loadgen *lg)
{
    uint64_t want = max_acked_index(lg);
    cr_assert(memfsm_wait_index(c->m[slot].fsm, want, 20000),
              "member %zu came back with its log up to %" PRIu64 " only, but %" PRIu64
              " was acknowledged (entries reported durable were not on disk)",
              slot, memfsm_last_index(c->m[slot].fsm), want);
    size_t n;
    uint64_t *idx, *ids = memfsm_ids(c->m[slot].fsm, &n, &idx);
    for (size_t k = 0; k < lg->n_acked; k++) {
        size_t p = pos_of(idx, n, lg->acked_index[k]);
        cr_assert(p < n && idx[p] == lg->acked_index[k] && ids[p] == lg->acked[k],
                  "member %zu lost acknowledged id %" PRIu64 " at index %" PRIu64, slot,
                  lg->acked[k], lg->acked_index[k]);
    }
    free(ids);
    free(idx);
}

static void start_lazy(struct cluster *c, size_t n, bool snapshots)
{
    cluster_init(c, n, 50, 300);
    c->tmpl.wal_io = lazy_io();
    c->tmpl.snap_io = lazy_snap_io();
    if (snapshots) { /* often, keeping few entries: the log is compacted under the load */
        c->snapshots = true;
        c->tmpl.snapshot_count = 300;
        c->tmpl.snapshot_catchup_entries = 20;
    }
    cluster_start_all(c);
    cr_assert_geq(cluster_wait_leader(c, 5000), 0);
}

Test(node_power, every_member_loses_power_under_load_and_no_acknowledged_proposal_is_lost)
{
    struct cluster c;
    start_lazy(&c, 3, false);
    size_t w0, s0;
    lazy_io_counts(&w0, &s0);
    struct loadgen lg;
    loadgen_start(&lg, &c, 4, 32, 0, 2000);
    cr_assert(loadgen_wait_acked(&lg, 2000, 20000));
    size_t w1, s1;
    lazy_io_counts(&w1, &s1);
    cr_assert_gt(w1 - w0, 0, "the logs did not write through lazy_io");
    /* All at once, proposals in flight. */
    size_t dropped = cluster_power_loss(&c, (const size_t[]){0, 1, 2}, 3);
    loadgen_stop(&lg);
    cr_assert(loadgen_exactly_once(&lg));
    cr_log_info("acked %zu (up to index %" PRIu64 "); %zu unsynced writes lost with the power",
                lg.n_acked, max_acked_index(&lg), dropped);
    /* Fresh state machines: each member replays whatever its log kept. */
    cluster_start_all(&c);
    cr_assert_geq(cluster_wait_leader(&c, 10000), 0);
    for (size_t i = 0; i < 3; i++)
        assert_acked_survived(&c, i, &lg);
    loadgen_free(&lg);
    cluster_destroy(&c);
}

Test(node_power, leader_loses_power_under_load_then_every_member_does)
{
    struct cluster c;
    start_lazy(&c, 3, false);
    struct loadgen lg;
    loadgen_start(&lg, &c, 4, 32, 0, 2000);
    cr_assert(loadgen_wait_acked(&lg, 1000, 20000));
    int l = cluster_leader(&c);
    cr_assert_geq(l, 0);
    cluster_power_loss(&c, (const size_t[]){(size_t)l}, 1);
    /* The other two elect a leader and take more; the old leader comes back and catches up. */
    size_t before = loadgen_acked(&lg);
    cr_assert(loadgen_wait_acked(&lg, before + 1000, 20000), "no progress without the leader");
    cluster_start(&c, (size_t)l);
    cr_assert(loadgen_wait_acked(&lg, loadgen_acked(&lg) + 500, 20000));
    cluster_power_loss(&c, (const size_t[]){0, 1, 2}, 3);
    loadgen_stop(&lg);
    cr_assert(loadgen_exactly_once(&lg));
    cluster_start_all(&c);
    cr_assert_geq(cluster_wait_leader(&c, 10000), 0);
    for (size_t i = 0; i < 3; i++)
        assert_acked_survived(&c, i, &lg);
    loadgen_free(&lg);
    cluster_destroy(&c);
}

/* With snapshots every 300 entries and the log compacted behind them: what the log dropped must
 * be in a snapshot that was synced first, or the power loss takes acknowledged entries. */
Test(node_power, every_member_loses_power_with_the_log_compacted_behind_snapshots)
{
    struct cluster c;
    start_lazy(&c, 3, true);
    struct loadgen lg;
    loadgen_start(&lg, &c, 4, 32, 0, 2000);
    cr_assert(loadgen_wait_acked(&lg, 3000, 30000));
    size_t snaps = 0;
    for (size_t i = 0; i < 3; i++)
        snaps += memfsm_snapshots(c.m[i].fsm);
    cr_assert_gt(snaps, 0, "no snapshot was taken");
    cluster_power_loss(&c, (const size_t[]){0, 1, 2}, 3);
    loadgen_stop(&lg);
    cr_assert(loadgen_exactly_once(&lg));
    cluster_start_all(&c);
    cr_assert_geq(cluster_wait_leader(&c, 10000), 0);
    for (size_t i = 0; i < 3; i++)
        assert_acked_survived(&c, i, &lg);
    loadgen_free(&lg);
    cluster_destroy(&c);
}
