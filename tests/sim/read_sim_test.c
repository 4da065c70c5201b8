/* ReadIndex scenarios on the deterministic simulator (the checker verifies every released read:
 * index >= everything committed before the read began). A leader cut off in a minority never
 * answers a read, even after the majority has moved on and committed more; the majority's
 * members answer with indexes covering the new writes; a read started before a leader's first
 * commit in its term waits for it. */
#include <criterion/criterion.h>
#include <stdlib.h>

#include "tests/sim/sim.h"

static struct sim *mk(int n, uint64_t seed)
{
    struct sim_opts o;
    sim_opts_default(&o, n, seed);
    struct sim *s = sim_new(&o);
    cr_assert_not_null(s);
    return s;
}

static void done(struct sim *s)
{
    cr_assert_eq(sim_violations(s), 0, "violation: %s", sim_violation(s));
    sim_free(s);
}

/* Run until read ctx settles (at most max_ms); its index (0 = failed). */
static uint64_t settle(struct sim *s, uint64_t ctx, uint64_t max_ms)
{
    uint64_t idx = 0;
    for (uint64_t t = 0; t < max_ms && sim_read_state(s, ctx, &idx) == 0; t++)
        sim_run(s, 1);
    cr_assert_eq(sim_read_state(s, ctx, &idx), 1, "read %llu not settled in %llu ms",
                 (unsigned long long)ctx, (unsigned long long)max_ms);
    return idx;
}

Test(read_sim, minority_leader_never_answers_majority_does)
{
    struct sim *s = mk(5, 1);
    int l = sim_wait_leader(s, 2000);
    cr_assert_geq(l, 0);
    uint64_t w = sim_one(s, 1001, 5, true, 2000);
    cr_assert_gt(w, 0);
    /* Reads on the leader and a follower succeed and cover the write. */
    uint64_t c1, c2;
    int f = (l + 1) % 5;
    cr_assert_eq(sim_read(s, l, &c1), 0);
    cr_assert_eq(sim_read(s, f, &c2), 0);
    cr_assert_geq(settle(s, c1, 500), w);
    cr_assert_geq(settle(s, c2, 500), w);

    /* Leader + one follower in a minority; the three others elect a leader and commit. */
    int g[5];
    for (int i = 0; i < 5; i++)
        g[i] = (i == l || i == f) ? 1 : 0;
    sim_partition(s, g);
    uint64_t old_read;
    cr_assert_eq(sim_read(s, l, &old_read), 0, "the cut-off leader still believes it leads");
    int nl = -1;
    for (int k = 0; k < 40 && nl < 0; k++) {
        sim_run(s, 50);
        int c = sim_leader(s);
        if (c >= 0 && c != l)
            nl = c;
    }
    cr_assert_geq(nl, 0, "the majority elected nobody");
    uint64_t w2 = sim_one(s, 2002, 3, true, 3000);
    cr_assert_gt(w2, w);
    /* The old leader's read failed (index 0): it was never confirmed by a majority. */
    cr_assert_eq(settle(s, old_read, 1000), 0, "a minority leader answered a read");
    /* Reads in the minority now fail or are refused; in the majority they cover w2. */
    uint64_t c3, c4;
    if (sim_read(s, f, &c3) == 0)
        cr_assert_eq(settle(s, c3, 1000), 0, "a minority follower answered a read");
    int mf = -1;
    for (int i = 0; i < 5; i++)
        if (g[i] == 0 && i != nl)
            mf = i;
    cr_assert_eq(sim_read(s, mf, &c4), 0);
    cr_assert_geq(settle(s, c4, 1000), w2);
    sim_heal(s);
    sim_run(s, 500);
    done(s);
}

Test(read_sim, new_leader_waits_for_its_first_commit)
{
    struct sim *s = mk(3, 2);
    int l = sim_wait_leader(s, 2000);
    cr_assert_geq(l, 0);
    uint64_t w = sim_one(s, 1001, 3, true, 2000);
    cr_assert_gt(w, 0);
    /* Crash the leader; the next leader reads right after winning, before its no-op commits: it
     * must still answer with an index covering w (never its possibly stale commit index). */
    sim_crash(s, l);
    int nl = -1;
    uint64_t ctx = 0;
    for (int t = 0; t < 3000 && nl < 0; t++) {
        sim_run(s, 1);
        for (int i = 0; i < 3; i++) {
            struct raft *r = sim_raft(s, i);
            if (!r || i == l)
                continue;
            struct raft_status st;
            raft_status_get(r, &st);
            if (st.role == RAFT_LEADER) {
                nl = i;
                cr_assert_eq(sim_read(s, i, &ctx), 0);
                break;
            }
        }
    }
    cr_assert_geq(nl, 0);
    uint64_t idx = settle(s, ctx, 1000);
    cr_assert_gt(idx, w, "read index %llu does not cover the new leader's no-op after %llu",
                 (unsigned long long)idx, (unsigned long long)w);
    sim_restart(s, l);
    sim_run(s, 500);
    done(s);
}
