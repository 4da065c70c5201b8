/* Seed sweeps: many randomized chaos runs (see sim_chaos) per cluster size, each checking every
 * safety property after every event plus liveness after healing. CRAFT_SIM_SEEDS sets the number
 * of seeds per size (default 2000; the 7-node sweep runs a quarter of it). A failure names the
 * seed and the command that replays it with a trace. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/sim/sim.h"

static unsigned long seeds(void)
{
    const char *e = getenv("CRAFT_SIM_SEEDS");
    if (e && *e) {
        char *end;
        unsigned long n = strtoul(e, &end, 10);
        cr_assert(*end == 0 && n > 0, "CRAFT_SIM_SEEDS must be a positive integer, got '%s'", e);
        return n;
    }
    return 2000;
}

static void sweep_with(int nodes, unsigned long n, bool members)
{
    unsigned long bad = 0, installs = 0, taken = 0, changes = 0;
    char msg[600], first[900] = "";
    for (unsigned long seed = 1; seed <= n; seed++) {
        struct sim_stats st;
        int rc = members ? sim_chaos_members(nodes, seed, NULL, msg, sizeof(msg), &st)
                         : sim_chaos(nodes, seed, NULL, msg, sizeof(msg), &st);
        installs += st.snapshots_installed;
        taken += st.snapshots_taken;
        changes += st.conf_committed;
        if (rc) {
            if (!bad++)
                snprintf(first, sizeof(first),
                         "seed %lu: %s; replay: craft-sim --nodes %d%s --seed %lu", seed, msg,
                         nodes, members ? " --members" : "", seed);
        }
    }
    printf("nodes=%d%s seeds=%lu violations=%lu snapshots taken=%lu installed=%lu "
           "configurations committed=%lu\n", nodes, members ? " members" : "", n, bad, taken,
           installs, changes);
    cr_assert_eq(bad, 0, "%lu of %lu seeds failed; first %s", bad, n, first);
    /* The sweep really drives snapshots: followers install them, not only leaders take them
     * (about one install per two seeds at three nodes). */
    if (nodes > 1)
        cr_assert_geq(installs, n / 8, "only %lu snapshot installs in %lu seeds", installs, n);
    /* And membership: configurations really change (several per seed on average). */
    if (members)
        cr_assert_geq(changes, n, "only %lu configurations committed in %lu seeds", changes, n);
}

static void sweep(int nodes, unsigned long n)
{
    sweep_with(nodes, n, false);
}

Test(seeds, three_nodes, .timeout = 900)
{
    sweep(3, seeds());
}

Test(seeds, five_nodes, .timeout = 900)
{
    sweep(5, seeds());
}

Test(seeds, seven_nodes, .timeout = 900)
{
    unsigned long n = seeds() / 4;
    sweep(7, n ? n : 1);
}

/* Membership changes under crashes and partitions: 2,000 seeds per starting size by default
 * (the seven-node start a quarter), each with two spare nodes to add. */
Test(members, from_one_node, .timeout = 900)
{
    sweep_with(1, seeds(), true);
}

Test(members, from_three_nodes, .timeout = 900)
{
    sweep_with(3, seeds(), true);
}

Test(members, from_five_nodes, .timeout = 900)
{
    sweep_with(5, seeds(), true);
}

Test(members, from_seven_nodes, .timeout = 900)
{
    unsigned long n = seeds() / 4;
    sweep_with(7, n ? n : 1, true);
}

/* Same seed, same run: the trace of a replay is byte-identical. */
Test(seeds, replay_is_deterministic)
{
    char *a = NULL, *b = NULL, msg[600];
    size_t la = 0, lb = 0;
    FILE *fa = open_memstream(&a, &la), *fb = open_memstream(&b, &lb);
    cr_assert(fa && fb);
    sim_chaos(5, 4242, fa, msg, sizeof(msg), NULL);
    sim_chaos(5, 4242, fb, msg, sizeof(msg), NULL);
    fclose(fa);
    fclose(fb);
    cr_assert_gt(la, 1000, "trace suspiciously short");
    cr_assert_eq(la, lb);
    cr_assert(memcmp(a, b, la) == 0, "two runs of one seed differ");
    free(a);
    free(b);
}
