/* Membership changes on the deterministic simulator (raft.h "cluster configuration"): joint
 * consensus for every change of voters, learners that never vote or campaign, the leader that
 * removes itself, one change at a time. The simulator checks every safety property after every
 * event (including commit quorums against storage); each test asserts its own point. */
#include <criterion/criterion.h>
#include <stdlib.h>

#include "tests/sim/sim.h"

static struct sim *mk(int voters, int spares, uint64_t seed)
{
    struct sim_opts o;
    sim_opts_default(&o, voters, seed);
    o.spares = spares;
    struct sim *s = sim_new(&o);
    cr_assert_not_null(s);
    return s;
}

static void done(struct sim *s)
{
    cr_assert_eq(sim_violations(s), 0, "safety violation: %s", sim_violation(s));
    sim_free(s);
}

static struct raft_conf conf_of(struct sim *s, int i, uint64_t *index, bool *committed)
{
    struct raft_conf c;
    raft_conf_get(sim_raft(s, i), &c, index, committed);
    return c;
}

static struct raft_conf voters(int n, const int *idx)
{
    struct raft_conf c = {0};
    for (int k = 0; k < n; k++)
        c.voters[c.n_voters++] = sim_id(idx[k]);
    return c;
}

/* Run until leader l's configuration is final (committed, not joint), at most max_ms. */
static bool settle(struct sim *s, uint64_t max_ms)
{
    for (uint64_t t = 0; t < max_ms; t += 10) {
        int l = sim_leader(s);
        if (l >= 0) {
            bool committed;
            uint64_t ci;
            struct raft_conf c = conf_of(s, l, &ci, &committed);
            if (committed && !c.n_old && ci)
                return true;
        }
        sim_run(s, 10);
    }
    return false;
}

static uint64_t value = 500;

static void commit_on(struct sim *s, int expected)
{
    uint64_t v = value++;
    cr_assert_gt(sim_one(s, v, expected, true, 5000), 0, "value %llu not applied on %d nodes: %s",
                 (unsigned long long)v, expected, sim_violation(s));
}

Test(conf, grow_one_to_three_to_five_through_joint_configurations)
{
    struct sim *s = mk(1, 4, 1);
    int l = sim_wait_leader(s, 2000);
    cr_assert_eq(l, 0);
    commit_on(s, 1);
    /* 1 -> 3: one change of two voters goes C_old,new then C_new. */
    struct raft_conf c = voters(3, (int[]){0, 1, 2});
    uint64_t before = sim_stats(s)->conf_committed;
    cr_assert_eq(sim_change(s, l, &c), 0);
    struct raft_conf now = conf_of(s, l, NULL, NULL);
    cr_assert_eq(now.n_old, 1, "the change is joint at once");
    cr_assert(settle(s, 3000));
    cr_assert_eq(sim_stats(s)->conf_committed - before, 2, "C_old,new and C_new both commit");
    commit_on(s, 3);
    /* 3 -> 5. */
    c = voters(5, (int[]){0, 1, 2, 3, 4});
    cr_assert_eq(sim_change(s, sim_leader(s), &c), 0);
    cr_assert(settle(s, 3000));
    commit_on(s, 5);
    /* Shrink 5 -> 3 and the two removed members stop receiving entries. */
    c = voters(3, (int[]){0, 1, 2});
    cr_assert_eq(sim_change(s, sim_leader(s), &c), 0);
    cr_assert(settle(s, 3000));
    uint64_t idx = sim_one(s, value++, 3, true, 5000);
    cr_assert_gt(idx, 0);
    sim_run(s, 500);
    struct raft_status st;
    raft_status_get(sim_raft(s, 3), &st);
    cr_assert_lt(st.commit_index, idx, "a removed member still follows the log");
    /* (It may not know it was removed: the leader stops talking to it once C_new is appended.
     * The runtime tells it - a removed member's peers refuse it.) */
    done(s);
}

Test(conf, one_change_at_a_time_and_invalid_targets_refused)
{
    struct sim *s = mk(3, 2, 2);
    int l = sim_wait_leader(s, 2000);
    cr_assert_geq(l, 0);
    commit_on(s, 3);
    struct raft_conf c = voters(4, (int[]){0, 1, 2, 3});
    cr_assert_eq(sim_change(s, l, &c), 0);
    struct raft_conf d = voters(4, (int[]){0, 1, 2, 4});
    cr_assert_eq(sim_change(s, l, &d), RAFT_EPENDING, "second change while joint");
    cr_assert(settle(s, 3000));
    l = sim_leader(s);
    /* Invalid: no voters; a duplicate; a voter turned learner; a learner also a voter. */
    struct raft_conf bad = {0};
    cr_assert_eq(sim_change(s, l, &bad), RAFT_EINVAL);
    bad = voters(2, (int[]){0, 0});
    cr_assert_eq(sim_change(s, l, &bad), RAFT_EINVAL);
    bad = voters(3, (int[]){0, 1, 2});
    bad.learners[bad.n_learners++] = sim_id(3);
    cr_assert_eq(sim_change(s, l, &bad), RAFT_EINVAL, "demotion");
    bad = voters(4, (int[]){0, 1, 2, 3});
    bad.learners[bad.n_learners++] = sim_id(3);
    cr_assert_eq(sim_change(s, l, &bad), RAFT_EINVAL, "learner and voter");
    cr_assert_eq(conf_of(s, l, NULL, NULL).n_voters, 4, "nothing changed");
    /* Not the leader. */
    int f = (l + 1) % 4;
    cr_assert_eq(sim_change(s, f, &c), RAFT_ENOTLEADER);
    done(s);
}

Test(conf, learner_replicates_but_never_votes_or_campaigns)
{
    struct sim *s = mk(1, 1, 3);
    int l = sim_wait_leader(s, 2000);
    cr_assert_eq(l, 0);
    struct raft_conf c = voters(1, (int[]){0});
    c.learners[c.n_learners++] = sim_id(1);
    cr_assert_eq(sim_change(s, l, &c), 0);
    cr_assert_eq(conf_of(s, l, NULL, NULL).n_old, 0, "adding a learner is not joint");
    cr_assert(settle(s, 2000));
    commit_on(s, 2); /* the learner applies entries */
    cr_assert_eq(sim_transfer(s, 0, 1), RAFT_ESTATE, "a learner cannot take leadership");
    /* The only voter goes away: the learner must not take over. */
    sim_crash(s, 0);
    sim_run(s, 3000);
    struct raft_status st;
    raft_status_get(sim_raft(s, 1), &st);
    cr_assert_neq(st.role, RAFT_LEADER);
    cr_assert_neq(st.role, RAFT_CANDIDATE);
    cr_assert_eq(sim_stats(s)->sent[RAFT_MSG_VOTE] + sim_stats(s)->sent[RAFT_MSG_PREVOTE], 0,
                 "the learner asked for votes");
    /* Promote it once the voter is back: it then counts in the quorum. */
    sim_restart(s, 0);
    l = sim_wait_leader(s, 3000);
    cr_assert_eq(l, 0);
    cr_assert_eq(sim_change(s, l, &(struct raft_conf){.n_voters = 2, .voters = {1, 2}}), 0);
    cr_assert(settle(s, 3000));
    sim_crash(s, 1);
    uint64_t idx = 0;
    cr_assert_eq(sim_propose(s, 0, value++, &idx), 0);
    sim_run(s, 500);
    raft_status_get(sim_raft(s, 0), &st);
    cr_assert_lt(st.commit_index, idx, "with the promoted member down nothing commits");
    done(s);
}

Test(conf, removed_leader_steps_down_once_c_new_commits)
{
    struct sim *s = mk(3, 0, 4);
    int l = sim_wait_leader(s, 2000);
    cr_assert_geq(l, 0);
    commit_on(s, 3);
    int keep[2], k = 0;
    for (int i = 0; i < 3; i++)
        if (i != l)
            keep[k++] = i;
    struct raft_conf c = voters(2, keep);
    cr_assert_eq(sim_change(s, l, &c), 0);
    /* It keeps leading through the joint phase, then hands over. */
    for (int t = 0; t < 3000 && sim_leader(s) == l; t += 10)
        sim_run(s, 10);
    struct raft_status st;
    raft_status_get(sim_raft(s, l), &st);
    cr_assert_neq(st.role, RAFT_LEADER, "the removed leader still leads");
    cr_assert_not(st.voter);
    int nl = sim_wait_leader(s, 3000);
    cr_assert(nl == keep[0] || nl == keep[1], "new leader %d", nl);
    commit_on(s, 2);
    /* The removed member never campaigns again. */
    uint64_t term = st.term;
    sim_run(s, 3000);
    raft_status_get(sim_raft(s, l), &st);
    cr_assert_neq(st.role, RAFT_CANDIDATE);
    cr_assert_leq(sim_max_term(s), term + 2, "terms kept moving after the removal");
    done(s);
}

Test(conf, configuration_survives_restart_and_snapshot)
{
    struct sim *s = mk(3, 1, 5);
    int l = sim_wait_leader(s, 2000);
    cr_assert_geq(l, 0);
    struct raft_conf c = voters(4, (int[]){0, 1, 2, 3});
    cr_assert_eq(sim_change(s, l, &c), 0);
    cr_assert(settle(s, 3000));
    commit_on(s, 4);
    /* Snapshot everywhere past the change, then restart everyone: the configuration comes back
     * from the snapshot's metadata, not from the initial three voters. */
    for (int i = 0; i < 4; i++)
        sim_compact(s, i, 0, 0);
    for (int i = 0; i < 4; i++) {
        sim_crash(s, i);
        sim_restart(s, i);
    }
    l = sim_wait_leader(s, 3000);
    cr_assert_geq(l, 0);
    for (int i = 0; i < 4; i++) {
        struct raft_conf got = conf_of(s, i, NULL, NULL);
        cr_assert_eq(got.n_voters, 4, "n%d has %u voters after restart", i + 1, got.n_voters);
    }
    commit_on(s, 4);
    done(s);
}

/* A removed member stops for good (craftd exits once it sees itself removed): the leader of two
 * that removes itself leaves the other as the only voter, which must elect itself at once. */
Test(conf, lone_voter_left_after_the_leader_removed_itself_and_stopped)
{
    struct sim *s = mk(2, 0, 7);
    int l = sim_wait_leader(s, 2000);
    cr_assert_geq(l, 0);
    commit_on(s, 2);
    int keep = 1 - l;
    struct raft_conf c = voters(1, &keep);
    cr_assert_eq(sim_change(s, l, &c), 0);
    for (int t = 0; t < 3000 && sim_leader(s) == l; t += 1)
        sim_run(s, 1);
    cr_assert_neq(sim_leader(s), l, "the removed leader still leads");
    sim_crash(s, l);
    cr_assert_eq(sim_wait_leader(s, 3000), keep, "the lone voter left did not elect itself");
    commit_on(s, 1);
    done(s);
}
