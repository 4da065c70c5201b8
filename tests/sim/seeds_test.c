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

static void sweep(int nodes, unsigned long n)
{
    unsigned long bad = 0, installs = 0, taken = 0;
    char msg[600], first[900] = "";
    for (unsigned long seed = 1; seed <= n; seed++) {
        struct sim_stats st;
        int rc = sim_chaos(nodes, seed, NULL, msg, sizeof(msg), &st);
        installs += st.snapshots_installed;
        taken += st.snapshots_taken;
        if (rc) {
            if (!bad++)
                snprintf(first, sizeof(first), "seed %lu: %s; replay: craft-sim --nodes %d --seed %lu",
                         seed, msg, nodes, seed);
        }
    }
    printf("nodes=%d seeds=%lu violations=%lu snapshots taken=%lu installed=%lu\n", nodes, n, bad,
           taken, installs);
    cr_assert_eq(bad, 0, "%lu of %lu seeds failed; first %s", bad, n, first);
    /* The sweep really drives snapshots: followers install them, not only leaders take them
     * (about one install per two seeds at three nodes). */
    cr_assert_geq(installs, n / 8, "only %lu snapshot installs in %lu seeds", installs, n);
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
