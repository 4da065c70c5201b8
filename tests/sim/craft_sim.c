/* craft-sim: run the Raft simulator over many seeds, or replay one seed with a trace.
 *   craft-sim --nodes N --seeds S [--first F]   runs seeds F .. F+S-1; last line "seeds=S violations=V"
 *   craft-sim --nodes N --seed X                replays seed X with a readable trace on stdout
 *   --members: membership changes during the chaos (sim_chaos_members)
 * Exit 0 if no violation, 1 if any, 2 on bad flags. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/sim/sim.h"

static int usage(const char *why)
{
    fprintf(stderr,
            "craft-sim: %s\n"
            "usage: craft-sim [--nodes N] [--members] (--seeds S [--first F] | --seed X)\n"
            "  --nodes N   cluster size, 1..%d (default 3)\n"
            "  --members   random membership changes (add, remove, promote, replace)\n"
            "  --seeds S   run S seeds (F .. F+S-1), print a summary line\n"
            "  --first F   first seed of a --seeds run (default 1)\n"
            "  --seed X    replay one seed with a readable trace\n",
            why, SIM_MAX_NODES);
    return 2;
}

static int parse_u64(const char *s, unsigned long long *out)
{
    if (!s || !*s || *s == '-')
        return -1;
    char *end;
    errno = 0;
    *out = strtoull(s, &end, 10);
    return errno || *end ? -1 : 0;
}

int main(int argc, char **argv)
{
    unsigned long long nodes = 3, seeds = 0, first = 1, seed = 0;
    bool have_seeds = false, have_seed = false, members = false;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        unsigned long long *dst = NULL;
        if (!strcmp(f, "--members")) {
            members = true;
            continue;
        }
        if (!strcmp(f, "--nodes"))
            dst = &nodes;
        else if (!strcmp(f, "--seeds"))
            dst = &seeds, have_seeds = true;
        else if (!strcmp(f, "--first"))
            dst = &first;
        else if (!strcmp(f, "--seed"))
            dst = &seed, have_seed = true;
        else if (!strcmp(f, "--help") || !strcmp(f, "-h"))
            return usage("help"), 0;
        else {
            char buf[256];
            snprintf(buf, sizeof(buf), "unknown flag '%s'", f);
            return usage(buf);
        }
        if (i + 1 >= argc) {
            char buf[256];
            snprintf(buf, sizeof(buf), "flag %s needs a value", f);
            return usage(buf);
        }
        if (parse_u64(argv[++i], dst)) {
            char buf[256];
            snprintf(buf, sizeof(buf), "flag %s: '%s' is not a non-negative integer", f, argv[i]);
            return usage(buf);
        }
    }
    if (nodes < 1 || nodes > SIM_MAX_NODES)
        return usage("--nodes out of range");
    if (have_seeds == have_seed)
        return usage("give exactly one of --seeds or --seed");
    if (have_seeds && seeds == 0)
        return usage("--seeds must be at least 1");

    char msg[600];
    int (*run)(int, uint64_t, FILE *, char *, size_t, struct sim_stats *) =
        members ? sim_chaos_members : sim_chaos;
    const char *mflag = members ? " --members" : "";
    if (have_seed) {
        int bad = run((int)nodes, seed, stdout, msg, sizeof(msg), NULL);
        printf("seed=%llu nodes=%llu result: %s\n", seed, nodes, bad ? msg : "ok");
        return bad;
    }
    unsigned long long violations = 0;
    for (unsigned long long k = 0; k < seeds; k++) {
        unsigned long long x = first + k;
        if (run((int)nodes, x, NULL, msg, sizeof(msg), NULL)) {
            violations++;
            printf("seed %llu: VIOLATION %s\n  replay: craft-sim --nodes %llu%s --seed %llu\n",
                   x, msg, nodes, mflag, x);
            fflush(stdout);
        }
    }
    printf("seeds=%llu violations=%llu\n", seeds, violations);
    return violations ? 1 : 0;
}
