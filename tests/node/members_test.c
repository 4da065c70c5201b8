/* members_test.c: membership changes on running nodes (raft_node_change_conf, node.h) with
 * proposals flowing: replicators start for new members and stop for removed ones (node_peers_set
 * driven by the driver), every acknowledged write reaches every member of the new configuration,
 * a learner catches up by snapshot and is promoted, the leader removes itself and hands over, and
 * the configuration survives a restart of every member. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/node/cluster.h"

TestSuite(node_members, .timeout = 180);

static struct raft_conf voters_of(struct cluster *c, const size_t *slots, size_t k)
{
    struct raft_conf t = {0};
    for (size_t i = 0; i < k; i++)
        t.voters[t.n_voters++] = c->ids[slots[i]];
    return t;
}

/* cluster_wait_leader wants every running member to follow the leader, which members outside
 * the configuration never do: here, the member that leads by its own account in the highest
 * term, waited for on role events. */
static int leader_wait(struct cluster *c, int timeout_ms)
{
    int64_t end = cl_now_ms() + timeout_ms;
    for (;;) {
        uint64_t gen = cluster_role_gen(c);
        int l = cluster_leader(c);
        if (l >= 0 || cl_now_ms() >= end)
            return l;
        cluster_wait_role_event(c, gen, 100);
    }
}

static int change(struct cluster *c, size_t slot, const struct raft_conf *t)
{
    pthread_rwlock_rdlock(&c->m[slot].rw);
    int rc = c->m[slot].node ? raft_node_change_conf(c->m[slot].node, t, "t", 1, 10000, NULL)
                             : RAFT_NODE_ESHUTDOWN;
    pthread_rwlock_unlock(&c->m[slot].rw);
    return rc;
}

static struct raft_conf conf_of(struct cluster *c, size_t slot)
{
    struct raft_conf t = {0};
    pthread_rwlock_rdlock(&c->m[slot].rw);
    cr_assert_not_null(c->m[slot].node);
    cr_assert_eq(raft_node_conf_get(c->m[slot].node, &t, NULL, NULL, NULL), 0);
    pthread_rwlock_unlock(&c->m[slot].rw);
    return t;
}

/* Every slot in `slots` applied up to the leader's last applied entry, with the same state. */
static void assert_same_state(struct cluster *c, const size_t *slots, size_t k)
{
    int l = leader_wait(c, 10000);
    cr_assert_geq(l, 0);
    uint64_t idx = 0;
    cr_assert_eq(cluster_propose_wait(c, (size_t)l, 999999, 10000, &idx, NULL), 0);
    for (size_t i = 0; i < k; i++)
        cr_assert(memfsm_wait_index(c->m[slots[i]].fsm, idx, 20000),
                  "member %zu did not apply %llu", slots[i], (unsigned long long)idx);
    uint64_t sum = memfsm_checksum(c->m[slots[0]].fsm);
    size_t cnt = memfsm_count(c->m[slots[0]].fsm);
    for (size_t i = 1; i < k; i++) {
        cr_assert_eq(memfsm_count(c->m[slots[i]].fsm), cnt, "member %zu differs", slots[i]);
        cr_assert_eq(memfsm_checksum(c->m[slots[i]].fsm), sum, "member %zu differs", slots[i]);
    }
}

Test(node_members, grow_one_to_three_under_load_then_shrink)
{
    struct cluster c;
    cluster_init(&c, 3, 50, 500);
    c.tmpl.n_peers = 1; /* slots 1 and 2 start outside the configuration */
    cluster_start_all(&c);
    cr_assert_eq(leader_wait(&c, 10000), 0);
    struct loadgen lg;
    loadgen_start(&lg, &c, 4, 16, 0, 20000);
    cr_assert(loadgen_wait_acked(&lg, 200, 30000));
    size_t all[] = {0, 1, 2};
    struct raft_conf t = voters_of(&c, all, 3);
    cr_assert_eq(change(&c, 0, &t), 0);
    cr_assert_eq(change(&c, 0, &t), 0, "the same configuration again is a no-op change");
    size_t now = loadgen_acked(&lg);
    cr_assert(loadgen_wait_acked(&lg, now + 200, 30000));
    loadgen_stop(&lg);
    cr_assert(loadgen_exactly_once(&lg));
    for (size_t i = 0; i < 3; i++)
        cr_assert_eq(conf_of(&c, i).n_voters, 3, "member %zu", i);
    assert_same_state(&c, all, 3);
    /* Shrink back to {1, 2} (slot 2 leaves): it stops receiving entries. */
    size_t two[] = {0, 1};
    t = voters_of(&c, two, 2);
    int l = leader_wait(&c, 10000);
    cr_assert_eq(change(&c, (size_t)l, &t), 0);
    assert_same_state(&c, two, 2);
    struct raft_node_status st, lst;
    cr_assert(cluster_status(&c, 2, &st));
    cr_assert(cluster_status(&c, 0, &lst));
    cr_assert_lt(st.core.commit_index, lst.core.commit_index,
                 "the removed member still follows the log");
    loadgen_free(&lg);
    cluster_destroy(&c);
}

Test(node_members, leader_removes_itself_and_hands_over)
{
    struct cluster c;
    cluster_init(&c, 3, 50, 500);
    cluster_start_all(&c);
    int l = cluster_wait_leader(&c, 10000);
    cr_assert_geq(l, 0);
    size_t keep[2], k = 0;
    for (size_t i = 0; i < 3; i++)
        if ((int)i != l)
            keep[k++] = i;
    struct raft_conf t = voters_of(&c, keep, 2);
    int rc = change(&c, (size_t)l, &t);
    cr_assert_eq(rc, 0, "%s", raft_node_strerror(rc));
    int nl = -1;
    for (int tries = 0; tries < 100 && (nl < 0 || nl == l); tries++) {
        uint64_t gen = cluster_role_gen(&c);
        nl = leader_wait(&c, 200);
        if (nl < 0 || nl == l)
            cluster_wait_role_event(&c, gen, 200);
    }
    cr_assert(nl >= 0 && nl != l, "no new leader among the remaining members (got %d)", nl);
    assert_same_state(&c, keep, 2);
    struct raft_node_status st;
    cr_assert(cluster_status(&c, (size_t)l, &st));
    cr_assert_neq(st.core.role, RAFT_LEADER);
    cr_assert_not(st.core.voter);
    cluster_destroy(&c);
}

Test(node_members, learner_catches_up_by_snapshot_then_is_promoted)
{
    struct cluster c;
    cluster_init(&c, 2, 50, 500);
    c.snapshots = true;
    c.tmpl.snapshot_count = 100;
    c.tmpl.snapshot_catchup_entries = 10;
    c.tmpl.n_peers = 1;
    cluster_start_all(&c);
    cr_assert_eq(leader_wait(&c, 10000), 0);
    for (uint64_t i = 1; i <= 400; i++)
        cr_assert_eq(cluster_propose_wait(&c, 0, i, 10000, NULL, NULL), 0);
    struct raft_conf t = {.n_voters = 1, .voters = {c.ids[0]}, .n_learners = 1,
                          .learners = {c.ids[1]}};
    cr_assert_eq(change(&c, 0, &t), 0);
    size_t both[] = {0, 1};
    assert_same_state(&c, both, 2); /* the learner holds everything */
    struct raft_node_status st;
    cr_assert(cluster_status(&c, 1, &st));
    cr_assert_not(st.core.voter);
    cr_assert_gt(st.core.snapshot_index, 0, "the learner did not get a snapshot");
    /* Promote: a change of voters, through the joint configuration. */
    t = voters_of(&c, both, 2);
    cr_assert_eq(change(&c, 0, &t), 0);
    cr_assert(cluster_status(&c, 1, &st));
    for (int i = 0; i < 100 && !st.core.voter; i++) {
        assert_same_state(&c, both, 2);
        cr_assert(cluster_status(&c, 1, &st));
    }
    cr_assert(st.core.voter);
    cluster_destroy(&c);
}

Test(node_members, configuration_survives_a_restart_of_every_member)
{
    struct cluster c;
    cluster_init(&c, 3, 50, 500);
    c.tmpl.n_peers = 1;
    cluster_start_all(&c);
    cr_assert_eq(leader_wait(&c, 10000), 0);
    size_t all[] = {0, 1, 2};
    struct raft_conf t = voters_of(&c, all, 3);
    cr_assert_eq(change(&c, 0, &t), 0);
    assert_same_state(&c, all, 3);
    for (size_t i = 0; i < 3; i++)
        cluster_stop(&c, i);
    cluster_start_all(&c); /* still started with n_peers = 1: the log says 3 */
    cr_assert_geq(leader_wait(&c, 10000), 0);
    for (size_t i = 0; i < 3; i++)
        cr_assert_eq(conf_of(&c, i).n_voters, 3, "member %zu", i);
    assert_same_state(&c, all, 3);
    cluster_destroy(&c);
}
