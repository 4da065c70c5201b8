/* transfer_test.c: raft_node_transfer_leader (etcd's MoveLeader) on a 3-member cluster: the named
 * follower becomes leader in a later term, misdirected transfers are refused with the errors
 * node.h documents and start nothing, and writes commit before and after. */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdlib.h>

#include "tests/node/cluster.h"

TestSuite(node_transfer, .timeout = 120);

/* c->mu held: `slot` leads in a term above `term` and every other running member follows it. */
static bool leads_later_term_locked(struct cluster *c, size_t slot, uint64_t term)
{
    const struct cluster_member *l = &c->m[slot];
    if (!l->running || l->role != RAFT_LEADER || l->term <= term)
        return false;
    for (size_t i = 0; i < c->n; i++) {
        const struct cluster_member *m = &c->m[i];
        if (i != slot && m->running && (m->term != l->term || m->leader != l->id))
            return false;
    }
    return true;
}

/* Waits on the harness's role events, until the deadline, for leads_later_term_locked. */
static bool wait_leads_later_term(struct cluster *c, size_t slot, uint64_t term, int timeout_ms)
{
    int64_t end = cl_now_ms() + timeout_ms;
    for (;;) {
        uint64_t gen = cluster_role_gen(c);
        pthread_mutex_lock(&c->mu);
        bool ok = leads_later_term_locked(c, slot, term);
        pthread_mutex_unlock(&c->mu);
        int64_t left = end - cl_now_ms();
        if (ok || left <= 0)
            return ok;
        cluster_wait_role_event(c, gen, (int)left);
    }
}

/* The ids memfsm recorded on `slot`, which must be exactly want[0..n). */
static void assert_applied(struct cluster *c, size_t slot, const uint64_t *want,
                           const uint64_t *want_idx, size_t n)
{
    size_t got;
    uint64_t *idx, *ids = memfsm_ids(c->m[slot].fsm, &got, &idx);
    cr_assert_eq(got, n, "member %zu applied %zu entries, not %zu", slot, got, n);
    for (size_t k = 0; k < n; k++) {
        cr_assert_eq(ids[k], want[k], "member %zu: entry %zu is id %" PRIu64, slot, k, ids[k]);
        cr_assert_eq(idx[k], want_idx[k], "member %zu: id %" PRIu64 " at index %" PRIu64, slot,
                     ids[k], idx[k]);
    }
    free(ids);
    free(idx);
}

Test(node_transfer, named_follower_takes_over_and_writes_still_commit)
{
    struct cluster c;
    cluster_init(&c, 3, 50, 300);
    cluster_start_all(&c);
    int l = cluster_wait_leader(&c, 5000);
    cr_assert_geq(l, 0, "no leader within 5 s");
    size_t old = (size_t)l, to = (old + 1) % 3, other = (old + 2) % 3;
    uint64_t ids[2] = {1, 2}, idx[2];
    cr_assert_eq(cluster_propose_wait(&c, old, ids[0], 5000, &idx[0], NULL), 0);

    struct raft_node_status st;
    cr_assert(cluster_status(&c, old, &st));
    uint64_t term0 = st.core.term;

    /* Refused, and nothing started: no transferee, and the leader still takes proposals (a
     * transfer in progress would refuse them with EBUSY). */
    cr_assert_eq(raft_node_transfer_leader(c.m[other].node, c.m[to].id), RAFT_NODE_ENOTLEADER);
    cr_assert_eq(raft_node_transfer_leader(c.m[old].node, 99), RAFT_NODE_EINVAL);
    cr_assert_eq(raft_node_transfer_leader(c.m[old].node, c.m[old].id), RAFT_NODE_EINVAL);
    cr_assert(cluster_status(&c, old, &st));
    cr_assert_eq(st.core.role, RAFT_LEADER);
    cr_assert_eq(st.core.transferee, 0, "a refused transfer left transferee %" PRIu64,
                 st.core.transferee);
    cr_assert(cluster_status(&c, to, &st));
    cr_assert_eq(st.core.role, RAFT_FOLLOWER);

    cr_assert_eq(raft_node_transfer_leader(c.m[old].node, c.m[to].id), 0);
    cr_assert(wait_leads_later_term(&c, to, term0, 5000),
              "member %zu did not take over from %zu (term %" PRIu64 ") within 5 s", to, old,
              term0);
    cr_assert(cluster_status(&c, to, &st));
    cr_assert_eq(st.core.role, RAFT_LEADER);
    cr_assert_gt(st.core.term, term0);

    /* The old leader now redirects to the new one, which commits. */
    uint64_t hint = 0;
    cr_assert_eq(cluster_propose_wait(&c, old, 77, 1000, NULL, &hint), RAFT_NODE_ENOTLEADER);
    cr_assert_eq(hint, c.m[to].id);
    cr_assert_eq(cluster_propose_wait(&c, to, ids[1], 5000, &idx[1], NULL), 0);
    cr_assert_gt(idx[1], idx[0]);
    for (size_t i = 0; i < 3; i++) {
        cr_assert(memfsm_wait_index(c.m[i].fsm, idx[1], 10000), "member %zu applied up to %" PRIu64,
                  i, memfsm_last_index(c.m[i].fsm));
        assert_applied(&c, i, ids, idx, 2);
    }
    cluster_destroy(&c);
}
