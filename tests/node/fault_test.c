/* fault_test.c: the cluster under faults - leader stopped under load (failover time, restart and
 * catch-up), every member stopped and restarted (no acknowledged proposal lost), 5 members with 2
 * and then 3 down, a slow follower, and a lossy network. Heartbeat 50 ms, election 300 ms. */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/node/cluster.h"

TestSuite(node_fault, .timeout = 120);

/* Ids for direct proposals, far above the load generator's. */
static uint64_t probe_id = 1ull << 40;

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

/* Every acknowledged proposal of lg is in member slot's applied sequence, at its index. */
static void assert_acked_applied(struct cluster *c, size_t slot, struct loadgen *lg)
{
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

/* Member a's applied sequence is a prefix of b's (or equal). */
static void assert_same_prefix(struct cluster *c, size_t a, size_t b)
{
    size_t na, nb;
    uint64_t *ia, *ib, *xa = memfsm_ids(c->m[a].fsm, &na, &ia), *xb = memfsm_ids(c->m[b].fsm, &nb, &ib);
    size_t n = na < nb ? na : nb;
    cr_assert_eq(memcmp(xa, xb, n * sizeof(uint64_t)), 0, "members %zu and %zu diverge", a, b);
    cr_assert_eq(memcmp(ia, ib, n * sizeof(uint64_t)), 0, "members %zu and %zu diverge", a, b);
    free(xa);
    free(xb);
    free(ia);
    free(ib);
}

static size_t total_errs(struct loadgen *lg)
{
    size_t f = 0;
    for (int k = 0; k < 16; k++)
        f += lg->errs[k];
    return f;
}

Test(node_fault, leader_stopped_under_load_new_leader_within_1s_and_restart_catches_up)
{
    struct cluster c;
    cluster_init(&c, 3, 50, 300);
    cluster_start_all(&c);
    int old = cluster_wait_leader(&c, 5000);
    cr_assert_geq(old, 0);

    struct loadgen lg;
    loadgen_start(&lg, &c, 4, 16, 0, 2000);
    cr_assert(loadgen_wait_acked(&lg, 2000, 20000));

    int64_t t0 = cl_now_ms();
    cluster_stop(&c, (size_t)old);
    int64_t t_stopped = cl_now_ms();

    /* Served = a proposal committed and applied through a new leader. */
    int64_t t1 = 0;
    int nl = -1;
    while (!t1 && cl_now_ms() - t0 < 5000) {
        uint64_t gen = cluster_role_gen(&c);
        int l = cluster_leader(&c);
        if (l >= 0 && l != old) {
            int rc = cluster_propose_wait(&c, (size_t)l, probe_id++, 300, NULL, NULL);
            if (rc == 0) {
                t1 = cl_now_ms();
                nl = l;
                break;
            }
        }
        cluster_wait_role_event(&c, gen, 20);
    }
    cr_assert(t1, "no new leader served within 5 s");
    cr_log_info("failover: new leader %d served %" PRId64 " ms after the old one was cut off "
                "(stop itself took %" PRId64 " ms)",
                nl, t1 - t0, t_stopped - t0);
    cr_assert_lt(t1 - t0, 1000, "failover took %" PRId64 " ms", t1 - t0);

    /* The load carries on through the new leader. */
    size_t before = loadgen_acked(&lg);
    cr_assert(loadgen_wait_acked(&lg, before + 1000, 20000));

    /* The stopped member restarts from its directory and catches up under load. */
    cluster_start(&c, (size_t)old);
    cr_assert(loadgen_wait_acked(&lg, loadgen_acked(&lg) + 1000, 20000));
    loadgen_stop(&lg);
    cr_assert(loadgen_exactly_once(&lg));
    cr_assert_eq(lg.bad_result, 0);

    struct raft_node_status st;
    int l = cluster_wait_leader(&c, 5000);
    cr_assert_geq(l, 0);
    cr_assert(cluster_status(&c, (size_t)l, &st));
    cr_assert(memfsm_wait_index(c.m[old].fsm, st.core.commit_index, 20000),
              "restarted member applied up to %" PRIu64 " of %" PRIu64,
              memfsm_last_index(c.m[old].fsm), st.core.commit_index);
    for (size_t i = 0; i < 3; i++) {
        cr_assert(memfsm_wait_index(c.m[i].fsm, st.core.commit_index, 20000));
        assert_acked_applied(&c, i, &lg);
    }
    assert_same_prefix(&c, 0, 1);
    assert_same_prefix(&c, 1, 2);
    cr_log_info("acked %zu, errors %zu (shutdown/lost/timeouts around the failover)", lg.n_acked,
                total_errs(&lg));
    loadgen_free(&lg);
    cluster_destroy(&c);
}

Test(node_fault, full_restart_loses_no_acknowledged_proposal)
{
    struct cluster c;
    cluster_init(&c, 3, 50, 300);
    cluster_start_all(&c);
    cr_assert_geq(cluster_wait_leader(&c, 5000), 0);

    struct loadgen lg;
    loadgen_start(&lg, &c, 4, 32, 0, 2000);
    cr_assert(loadgen_wait_acked(&lg, 3000, 20000));
    /* Stop every member while proposals are in flight (leader last, so it keeps acking). */
    int l = cluster_leader(&c);
    for (size_t i = 0; i < 3; i++)
        if ((int)i != l)
            cluster_stop(&c, i);
    if (l >= 0)
        cluster_stop(&c, (size_t)l);
    loadgen_stop(&lg);
    cr_assert(loadgen_exactly_once(&lg));
    cr_assert_eq(lg.bad_result, 0);
    uint64_t max_acked = 0;
    for (size_t k = 0; k < lg.n_acked; k++)
        if (lg.acked_index[k] > max_acked)
            max_acked = lg.acked_index[k];
    cr_log_info("acked %zu (up to index %" PRIu64 ") before the full stop; %zu failed", lg.n_acked,
                max_acked, total_errs(&lg));

    /* Restart all with fresh state machines (applied_index 0): the whole log replays once the
     * new leader commits its no-op. */
    cluster_start_all(&c);
    cr_assert_geq(cluster_wait_leader(&c, 5000), 0);
    for (size_t i = 0; i < 3; i++) {
        cr_assert(memfsm_wait_index(c.m[i].fsm, max_acked, 20000),
                  "member %zu replayed up to %" PRIu64 " of %" PRIu64, i,
                  memfsm_last_index(c.m[i].fsm), max_acked);
        assert_acked_applied(&c, i, &lg);
    }
    assert_same_prefix(&c, 0, 1);
    assert_same_prefix(&c, 1, 2);
    loadgen_free(&lg);
    cluster_destroy(&c);
}

struct outcome {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    size_t done, timedout, other;
    int64_t last_ms;
};

static void outcome_cb(void *arg, int err, uint64_t index, uint64_t leader_id,
                       struct raft_fsm_result *res)
{
    (void)index;
    (void)leader_id;
    (void)res;
    struct outcome *o = arg;
    pthread_mutex_lock(&o->mu);
    o->done++;
    if (err == RAFT_NODE_ETIMEDOUT)
        o->timedout++;
    else
        o->other++;
    o->last_ms = cl_now_ms();
    pthread_cond_broadcast(&o->cv);
    pthread_mutex_unlock(&o->mu);
}

Test(node_fault, five_members_serve_with_two_down_and_time_out_with_three_down)
{
    struct cluster c;
    cluster_init(&c, 5, 50, 300);
    cluster_start_all(&c);
    int l = cluster_wait_leader(&c, 5000);
    cr_assert_geq(l, 0);
    size_t down[3], nd = 0;
    for (size_t i = 0; i < 5 && nd < 3; i++)
        if ((int)i != l)
            down[nd++] = i;

    cluster_stop(&c, down[0]);
    cluster_stop(&c, down[1]);
    struct loadgen lg;
    loadgen_start(&lg, &c, 4, 16, 1000, 2000);
    cr_assert(loadgen_wait_acked(&lg, 1000, 20000), "2 of 5 down: only %zu acked",
              loadgen_acked(&lg));
    loadgen_stop(&lg);
    cr_assert_eq(total_errs(&lg), 0);
    loadgen_free(&lg);

    /* Third member down: no majority. Proposals are accepted by the (still) leader and must
     * fail with ETIMEDOUT within their timeout - not hang. */
    cluster_stop(&c, down[2]);
    struct outcome o = {.done = 0};
    pthread_mutex_init(&o.mu, NULL);
    pthread_cond_init(&o.cv, NULL);
    uint8_t buf[64];
    size_t accepted = 0, refused = 0;
    int64_t t0 = cl_now_ms();
    for (int k = 0; k < 50; k++) {
        memfsm_payload(buf, sizeof buf, probe_id++);
        int rc = cluster_propose(&c, (size_t)l, buf, sizeof buf, 400, outcome_cb, &o, NULL);
        if (rc == 0)
            accepted++;
        else {
            refused++;
            cr_assert_eq(rc, RAFT_NODE_ENOTLEADER);
        }
    }
    cr_assert_gt(accepted, 0, "the leader refused everything at once");
    pthread_mutex_lock(&o.mu);
    while (o.done < accepted)
        pthread_cond_wait(&o.cv, &o.mu); /* the proposals' own timeout bounds this */
    pthread_mutex_unlock(&o.mu);
    int64_t took = o.last_ms - t0;
    cr_log_info("3 of 5 down: %zu accepted, all timed out after %" PRId64 " ms; %zu refused",
                accepted, took, refused);
    cr_assert_eq(o.timedout, accepted, "%zu completed otherwise", o.other);
    cr_assert_lt(took, 400 + 500, "timeouts fired late: %" PRId64 " ms", took);

    /* Check-quorum: the leader, cut off from a majority, steps down within two election
     * timeouts, so clients are told "not leader" instead of waiting. */
    uint64_t hint;
    int rc = 0;
    int64_t t2 = cl_now_ms();
    while (cl_now_ms() - t2 < 2000) {
        memfsm_payload(buf, sizeof buf, probe_id++);
        rc = cluster_propose(&c, (size_t)l, buf, sizeof buf, 100, outcome_cb, &o, &hint);
        if (rc == RAFT_NODE_ENOTLEADER)
            break;
        cr_assert_eq(rc, 0);
        accepted++;
        cluster_wait_role_event(&c, cluster_role_gen(&c), 50);
    }
    cr_assert_eq(rc, RAFT_NODE_ENOTLEADER, "isolated leader did not step down");

    /* One member back: a majority again, and proposals commit. */
    cluster_start(&c, down[2]);
    int nl = cluster_wait_leader(&c, 5000);
    cr_assert_geq(nl, 0);
    int rc2 = -1;
    for (int tries = 0; tries < 50 && rc2 != 0; tries++) {
        nl = cluster_leader(&c);
        rc2 = nl < 0 ? -1 : cluster_propose_wait(&c, (size_t)nl, probe_id++, 1000, NULL, NULL);
        if (rc2)
            cluster_wait_role_event(&c, cluster_role_gen(&c), 50);
    }
    cr_assert_eq(rc2, 0, "no commit after a majority came back");
    pthread_mutex_lock(&o.mu);
    while (o.done < accepted)
        pthread_cond_wait(&o.cv, &o.mu);
    pthread_mutex_unlock(&o.mu);
    cluster_destroy(&c);
    pthread_cond_destroy(&o.cv);
    pthread_mutex_destroy(&o.mu);
}

Test(node_fault, slow_follower_does_not_slow_commits)
{
    struct cluster c;
    cluster_init(&c, 3, 50, 300);
    cluster_start_all(&c);
    int l = cluster_wait_leader(&c, 5000);
    cr_assert_geq(l, 0);
    size_t slow = (size_t)((l + 1) % 3), fast = (size_t)((l + 2) % 3);
    const size_t batch = 4000;

    struct loadgen a;
    int64_t t0 = cl_now_ms();
    loadgen_start(&a, &c, 8, 16, batch, 5000);
    cr_assert(loadgen_wait_acked(&a, batch, 30000));
    int64_t ta = cl_now_ms() - t0;
    loadgen_stop(&a);
    cr_assert_eq(total_errs(&a), 0);

    memnet_stall(c.net, c.m[slow].id, true);
    size_t slow_before = memfsm_count(c.m[slow].fsm);
    struct loadgen b;
    t0 = cl_now_ms();
    loadgen_start(&b, &c, 8, 16, batch, 5000);
    cr_assert(loadgen_wait_acked(&b, batch, 30000), "stalled follower blocked commits: %zu acked",
              loadgen_acked(&b));
    int64_t tb = cl_now_ms() - t0;
    loadgen_stop(&b);
    cr_assert_eq(total_errs(&b), 0, "proposals failed while a follower was stalled");
    size_t slow_during = memfsm_count(c.m[slow].fsm);
    cr_log_info("%zu proposals: %" PRId64 " ms with all followers, %" PRId64
                " ms with one stalled (it applied %zu meanwhile)",
                batch, ta, tb, slow_during - slow_before);
    /* The stall was real: the slow member did not see the second batch... */
    cr_assert_lt(slow_during, 2 * batch);
    /* ...and it did not slow the others down much (generous: CI machines are noisy). */
    cr_assert_leq(tb, 4 * ta + 1500, "stalled follower slowed commits: %" PRId64 " vs %" PRId64
                  " ms", tb, ta);
    cr_assert_geq(memfsm_count(c.m[fast].fsm), 0);

    /* Unstalled, it catches up and agrees. */
    memnet_stall(c.net, c.m[slow].id, false);
    cr_assert(memfsm_wait_count(c.m[slow].fsm, 2 * batch, 20000), "slow member stuck at %zu",
              memfsm_count(c.m[slow].fsm));
    cr_assert(memfsm_wait_count(c.m[fast].fsm, 2 * batch, 20000));
    assert_same_prefix(&c, slow, (size_t)l);
    assert_same_prefix(&c, fast, (size_t)l);
    loadgen_free(&a);
    loadgen_free(&b);
    cluster_destroy(&c);
}

Test(node_fault, lossy_network_still_commits_the_same_sequence)
{
    struct cluster c;
    cluster_init(&c, 3, 50, 300);
    cluster_start_all(&c);
    cr_assert_geq(cluster_wait_leader(&c, 5000), 0);
    memnet_set_drop(c.net, 20); /* 2% of messages lost */
    struct loadgen lg;
    loadgen_start(&lg, &c, 4, 16, 2000, 3000);
    cr_assert(loadgen_wait_acked(&lg, 2000, 40000), "only %zu acked", loadgen_acked(&lg));
    loadgen_stop(&lg);
    memnet_set_drop(c.net, 0);
    cr_assert(loadgen_exactly_once(&lg));
    cr_assert_eq(lg.bad_result, 0);
    uint64_t max_acked = 0;
    for (size_t k = 0; k < lg.n_acked; k++)
        if (lg.acked_index[k] > max_acked)
            max_acked = lg.acked_index[k];
    for (size_t i = 0; i < 3; i++) {
        cr_assert(memfsm_wait_index(c.m[i].fsm, max_acked, 20000));
        assert_acked_applied(&c, i, &lg);
    }
    assert_same_prefix(&c, 0, 1);
    assert_same_prefix(&c, 1, 2);
    struct memnet_stats ms;
    memnet_stats(c.net, &ms);
    cr_log_info("lossy: %zu acked, %zu failed and retried, %" PRIu64 " messages dropped",
                lg.n_acked, total_errs(&lg), ms.dropped);
    loadgen_free(&lg);
    cluster_destroy(&c);
}

struct eio_tally {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    size_t done, ok, eio, other;
};

static void eio_cb(void *arg, int err, uint64_t index, uint64_t leader_id,
                   struct raft_fsm_result *res)
{
    (void)index;
    (void)leader_id;
    (void)res;
    struct eio_tally *t = arg;
    pthread_mutex_lock(&t->mu);
    t->done++;
    if (err == 0)
        t->ok++;
    else if (err == RAFT_NODE_EIO)
        t->eio++;
    else
        t->other++;
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
}

Test(node_fault, failing_state_machine_stops_the_member_not_the_cluster)
{
    struct cluster c;
    cluster_init(&c, 3, 50, 300);
    cluster_start_all(&c);
    int l = cluster_wait_leader(&c, 5000);
    cr_assert_geq(l, 0);
    struct raft_node_status st;
    cr_assert(cluster_status(&c, (size_t)l, &st));
    /* The leader's state machine fails a few entries from now. */
    memfsm_fail_from(c.m[l].fsm, st.core.last_index + 5);
    struct eio_tally t = {.done = 0};
    pthread_mutex_init(&t.mu, NULL);
    pthread_cond_init(&t.cv, NULL);
    uint8_t buf[64];
    size_t refused = 0; /* the failure may already have happened: propose says EIO at once */
    for (int k = 0; k < 20; k++) {
        memfsm_payload(buf, sizeof buf, probe_id++);
        int rc = cluster_propose(&c, (size_t)l, buf, sizeof buf, 0, eio_cb, &t, NULL);
        if (rc == RAFT_NODE_EIO)
            refused++;
        else
            cr_assert_eq(rc, 0);
    }
    /* No timeout was given: the failure itself must complete every accepted proposal. */
    pthread_mutex_lock(&t.mu);
    while (t.done + refused < 20)
        pthread_cond_wait(&t.cv, &t.mu);
    pthread_mutex_unlock(&t.mu);
    cr_assert_eq(t.other, 0);
    cr_assert_gt(t.eio + refused, 0);
    cr_assert_eq(t.ok + t.eio + refused, 20);
    memfsm_payload(buf, sizeof buf, probe_id++);
    cr_assert_eq(cluster_propose(&c, (size_t)l, buf, sizeof buf, 0, eio_cb, &t, NULL),
                 RAFT_NODE_EIO);
    /* The failed member went silent (fail-stop); the other two elect a leader and serve. */
    int64_t t0 = cl_now_ms();
    int rc = -1;
    while (rc != 0 && cl_now_ms() - t0 < 5000) {
        uint64_t gen = cluster_role_gen(&c);
        int nl = cluster_leader(&c);
        if (nl >= 0 && nl != l)
            rc = cluster_propose_wait(&c, (size_t)nl, probe_id++, 500, NULL, NULL);
        if (rc)
            cluster_wait_role_event(&c, gen, 20);
    }
    cr_assert_eq(rc, 0, "the others did not take over from the failed member");
    cluster_destroy(&c);
    pthread_cond_destroy(&t.cv);
    pthread_mutex_destroy(&t.mu);
}
