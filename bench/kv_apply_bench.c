/* kv-apply-bench: the KV store's apply path alone, without Raft, gRPC or other processes: puts
 * of random keys applied in batches, as the applier does, timed in CPU and wall time per put.
 * It isolates what the store costs a put (docs/benchmarks.md "The store's apply path"), which a
 * cluster benchmark on a shared 2-core machine measures only through a lot of noise.
 *
 *   kv-apply-bench [--puts N] [--batch B] [--keys K] [--value BYTES] [--dir DIR] [--json]
 *
 * Defaults: 200,000 puts in batches of 256 over 100,000 keys of 16 bytes, 256-byte values (the
 * put-1024 workload's), in a fresh store under $TMPDIR (removed after). The store syncs in the
 * background as in craftd (lazy mode); the figures count every thread of the process. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "services/kvstore/kv_cmd.h"
#include "services/kvstore/kv_store.h"

static int usage(const char *why)
{
    fprintf(stderr, "kv-apply-bench: %s\nusage: kv-apply-bench [--puts N] [--batch B] "
                    "[--keys K] [--value BYTES] [--dir DIR] [--json]\n", why);
    return 2;
}

/* A decimal in [min, max], or -1. */
static long long num(const char *s, long long min, long long max)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max)
        return -1;
    return v;
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static double wall_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t rnd(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

int main(int argc, char **argv)
{
    long long puts = 200000, batch = 256, keys = 100000, vlen = 256;
    const char *dir = NULL;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        long long *dst = !strcmp(a, "--puts")    ? &puts
                         : !strcmp(a, "--batch") ? &batch
                         : !strcmp(a, "--keys")  ? &keys
                         : !strcmp(a, "--value") ? &vlen
                                                 : NULL;
        if (dst) {
            if (i + 1 >= argc)
                return usage("a flag needs a value");
            long long max = dst == &vlen ? 1 << 20 : dst == &batch ? 100000 : 1000000000;
            if ((*dst = num(argv[++i], dst == &vlen ? 0 : 1, max)) < 0)
                return usage("a value is not a number in range");
        } else if (!strcmp(a, "--dir") && i + 1 < argc) {
            dir = argv[++i];
        } else if (!strcmp(a, "--json")) {
            json = true;
        } else {
            return usage("unknown flag");
        }
    }
    char tmpl[4096];
    if (!dir) {
        const char *t = getenv("TMPDIR");
        snprintf(tmpl, sizeof tmpl, "%s/kv-apply-bench.XXXXXX", t && *t ? t : "/tmp");
        if (!mkdtemp(tmpl)) {
            perror("kv-apply-bench: mkdtemp");
            return 1;
        }
    }
    const char *d = dir ? dir : tmpl;
    char err[256];
    struct kv_store *s = kv_store_open(d, NULL, err, sizeof err);
    if (!s) {
        fprintf(stderr, "kv-apply-bench: %s\n", err);
        return 1;
    }
    struct raft_fsm *fsm = kv_store_fsm(s);
    struct raft_entry *es = calloc((size_t)batch, sizeof *es);
    struct raft_fsm_result *res = calloc((size_t)batch, sizeof *res);
    uint8_t *val = malloc((size_t)vlen + 1);
    if (!es || !res || !val)
        return 1;
    memset(val, 'v', (size_t)vlen);
    uint64_t x = 88172645463325252ull, index = fsm->applied_index(fsm->ctx);
    double c0 = cpu_s(), w0 = wall_s();
    int rc = 0;
    for (long long done = 0; done < puts && rc == 0;) {
        size_t n = (size_t)(puts - done < batch ? puts - done : batch);
        for (size_t i = 0; i < n; i++) {
            char key[32];
            snprintf(key, sizeof key, "key-%011" PRIu64, rnd(&x) % (uint64_t)keys);
            Etcdserverpb__PutRequest p = ETCDSERVERPB__PUT_REQUEST__INIT;
            p.key = (ProtobufCBinaryData){16, (uint8_t *)key};
            p.value = (ProtobufCBinaryData){(size_t)vlen, val};
            uint8_t *cmd;
            size_t len;
            if (kv_cmd_encode_put(&p, &cmd, &len))
                return 1;
            es[i] = (struct raft_entry){.index = ++index, .term = 1, .type = RAFT_ENTRY_NORMAL,
                                        .data = cmd, .len = (uint32_t)len};
        }
        rc = fsm->apply(fsm->ctx, es, n, index, res);
        for (size_t i = 0; i < n; i++) {
            free(es[i].data);
            if (res[i].code && rc == 0)
                rc = -res[i].code;
            free(res[i].data);
            res[i] = (struct raft_fsm_result){0};
        }
        done += (long long)n;
    }
    double w1 = wall_s();
    kv_store_close(s);
    double c2 = cpu_s(), w2 = wall_s();
    if (!dir) {
        char cmd[4200];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpl);
        if (system(cmd) != 0)
            fprintf(stderr, "kv-apply-bench: could not remove %s\n", tmpl);
    }
    free(es);
    free(res);
    free(val);
    if (rc) {
        fprintf(stderr, "kv-apply-bench: apply failed (%d)\n", rc);
        return 1;
    }
    /* The close's final sync is part of what the puts cost: it writes what they dirtied. */
    double us_cpu = (c2 - c0) * 1e6 / (double)puts, us_wall = (w2 - w0) * 1e6 / (double)puts;
    double apply_wall = (w1 - w0) * 1e6 / (double)puts;
    if (json)
        printf("{\"puts\":%lld,\"batch\":%lld,\"keys\":%lld,\"value\":%lld,\"cpu_us_per_put\":%.3f,"
               "\"wall_us_per_put\":%.3f,\"apply_wall_us_per_put\":%.3f}\n",
               puts, batch, keys, vlen, us_cpu, us_wall, apply_wall);
    else
        printf("kv-apply-bench: %lld puts, batches of %lld, %lld keys, %lld-byte values: "
               "%.2f us CPU/put, %.2f us wall/put (%.2f applying, the rest the final sync)\n",
               puts, batch, keys, vlen, us_cpu, us_wall, apply_wall);
    return 0;
}
