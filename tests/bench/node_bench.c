/* node-bench: commit throughput and latency of a 3-member craft cluster in one process, over real
 * loopback gRPC with mutual TLS and fsync on, for 1, 64 and 1024 concurrent proposers with
 * 256-byte entries. Variants run side by side, alternating, in one invocation:
 *   pipelined+batched   max-inflight-msgs 64, max-append-entries 64 (the defaults)
 *   window=1            max-inflight-msgs 1: one AppendEntries in flight per follower
 *   1 entry/msg         max-append-entries 1: no batching on the wire
 * Proposals go straight to the leader's node (raft_node_propose), so the figures measure
 * replication and commit, not a client API. Usage:
 *   node-bench --certs DIR [--seconds S] [--rounds R] [--proposers 1,64,1024] [--json]
 * DIR holds craft-certs output with node certificates b1, b2, b3 (scripts/bench-node.sh makes
 * them). Prints one line per (variant, proposers) with the median of R rounds.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <time.h>
#include <unistd.h>

#include "services/kvstore/kv_cmd.h"
#include "services/kvstore/kv_store.h"
#include "services/server.h"

#define MAX_PROPOSERS 4096
#define MAX_SAMPLES (1 << 22)

struct variant {
    const char *name;
    uint32_t inflight, entries;
};
static const struct variant variants[] = {
    {"pipelined+batched", 64, 64},
    {"window=1", 1, 64},
    {"1 entry/msg", 64, 1},
};
#define N_VARIANTS (sizeof variants / sizeof variants[0])

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &al) != 0) {
        perror("node-bench: free port");
        exit(1);
    }
    close(fd);
    return ntohs(a.sin_port);
}

/* ---- one run: keep `window` proposals outstanding for `seconds` -------------------------- */

struct run {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct raft_node *node;
    uint8_t *cmd;
    size_t cmd_len;
    int64_t end_us;
    long outstanding, done, failed;
    int64_t *lat;
    long n_lat;
    bool stopping;
};

struct prop {
    struct run *r;
    int64_t start;
};

static void issue(struct run *r);

static void on_done(void *arg, int err, uint64_t index, uint64_t leader,
                    struct raft_fsm_result *res)
{
    (void)index, (void)leader, (void)res;
    struct prop *p = arg;
    struct run *r = p->r;
    int64_t t = now_us();
    pthread_mutex_lock(&r->mu);
    r->outstanding--;
    if (err)
        r->failed++;
    else {
        r->done++;
        if (r->n_lat < MAX_SAMPLES)
            r->lat[r->n_lat++] = t - p->start;
    }
    bool more = !r->stopping && t < r->end_us;
    if (!more && r->outstanding == 0)
        pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    free(p);
    if (more)
        issue(r);
}

static void issue(struct run *r)
{
    struct prop *p = malloc(sizeof *p);
    if (!p)
        abort(); /* a benchmark binary: out of memory is not bad input */
    p->r = r;
    p->start = now_us();
    pthread_mutex_lock(&r->mu);
    r->outstanding++;
    pthread_mutex_unlock(&r->mu);
    int rc = raft_node_propose(r->node, r->cmd, r->cmd_len, 10000, on_done, p, NULL);
    if (rc != 0) {
        pthread_mutex_lock(&r->mu);
        r->outstanding--;
        r->failed++;
        r->stopping = true; /* not leader or overloaded: end this run, it will be reported */
        if (r->outstanding == 0)
            pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
        free(p);
    }
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

struct result {
    double ops, p50_ms, p99_ms;
    long failed;
};

static struct result run_load(struct raft_node *leader, int window, double seconds)
{
    static int64_t *lat;
    if (!lat && !(lat = malloc(sizeof *lat * MAX_SAMPLES)))
        abort();
    struct run r = {.node = leader, .lat = lat};
    pthread_mutex_init(&r.mu, NULL);
    pthread_cond_init(&r.cv, NULL);
    uint8_t value[256];
    memset(value, 'v', sizeof value);
    Etcdserverpb__PutRequest put = ETCDSERVERPB__PUT_REQUEST__INIT;
    put.key.data = (uint8_t *)"bench-key";
    put.key.len = 9;
    put.value.data = value;
    put.value.len = sizeof value;
    if (kv_cmd_encode_put(&put, &r.cmd, &r.cmd_len) != 0)
        abort(); /* out of memory in a benchmark */
    int64_t t0 = now_us();
    r.end_us = t0 + (int64_t)(seconds * 1e6);
    for (int i = 0; i < window; i++)
        issue(&r);
    pthread_mutex_lock(&r.mu);
    while (r.outstanding > 0 || (!r.stopping && now_us() < r.end_us))
        pthread_cond_wait(&r.cv, &r.mu);
    pthread_mutex_unlock(&r.mu);
    double secs = (double)(now_us() - t0) / 1e6;
    struct result res = {.ops = (double)r.done / secs, .failed = r.failed};
    if (r.n_lat) {
        qsort(r.lat, (size_t)r.n_lat, sizeof *r.lat, cmp_i64);
        res.p50_ms = (double)r.lat[r.n_lat / 2] / 1000.0;
        res.p99_ms = (double)r.lat[r.n_lat * 99 / 100] / 1000.0;
    }
    free(r.cmd);
    return res;
}

/* ---- cluster ---------------------------------------------------------------------------- */

struct cluster3 {
    struct craft_server *s[3];
    struct craftd_config cfg[3];
    char dir[256];
};

static void cluster_start(struct cluster3 *c, const char *certs, const struct variant *v)
{
    snprintf(c->dir, sizeof c->dir, "/tmp/node-bench.XXXXXX");
    if (!mkdtemp(c->dir)) {
        perror("node-bench: mkdtemp");
        exit(1);
    }
    int pp[3], cp[3];
    for (int i = 0; i < 3; i++) {
        pp[i] = free_port();
        cp[i] = free_port();
    }
    char cluster[512];
    snprintf(cluster, sizeof cluster,
             "b1=https://127.0.0.1:%d,b2=https://127.0.0.1:%d,b3=https://127.0.0.1:%d", pp[0], pp[1],
             pp[2]);
    for (int i = 0; i < 3; i++) {
        char name[16], data[300], lc[64], lp[64], cert[400], key[400], ca[400], inflight[16],
            entries[16];
        snprintf(name, sizeof name, "b%d", i + 1);
        snprintf(data, sizeof data, "%s/%s", c->dir, name);
        snprintf(lc, sizeof lc, "https://127.0.0.1:%d", cp[i]);
        snprintf(lp, sizeof lp, "https://127.0.0.1:%d", pp[i]);
        snprintf(cert, sizeof cert, "%s/%s.pem", certs, name);
        snprintf(key, sizeof key, "%s/%s-key.pem", certs, name);
        snprintf(ca, sizeof ca, "%s/ca.pem", certs);
        snprintf(inflight, sizeof inflight, "%u", v->inflight);
        snprintf(entries, sizeof entries, "%u", v->entries);
        const char *argv[] = {"craftd", "--name", name, "--data-dir", data,
                              "--listen-client-urls", lc, "--listen-peer-urls", lp,
                              "--initial-cluster", cluster, "--cert-file", cert, "--key-file", key,
                              "--trusted-ca-file", ca, "--peer-cert-file", cert, "--peer-key-file",
                              key, "--peer-trusted-ca-file", ca, "--heartbeat-interval", "50",
                              "--election-timeout", "500", "--max-inflight-msgs", inflight,
                              "--max-append-entries", entries, "--proposal-timeout", "30000"};
        char err[512];
        int argc = (int)(sizeof argv / sizeof argv[0]);
        if (craftd_flags_parse(argc, (char **)argv, &c->cfg[i], err, sizeof err) != 0) {
            fprintf(stderr, "node-bench: %s\n", err);
            exit(1);
        }
        c->s[i] = craft_server_start(&c->cfg[i], err, sizeof err);
        if (!c->s[i]) {
            fprintf(stderr, "node-bench: %s\n", err);
            exit(1);
        }
    }
}

static struct raft_node *cluster_leader(struct cluster3 *c)
{
    for (int tries = 0; tries < 1000; tries++) {
        for (int i = 0; i < 3; i++) {
            struct raft_node_status st;
            raft_node_status_get(craft_server_node(c->s[i]), &st);
            if (st.core.role == RAFT_LEADER && st.applied_index >= st.core.commit_index &&
                st.core.commit_index > 0)
                return craft_server_node(c->s[i]);
        }
        usleep(10000); /* a benchmark waiting for an election; not a test */
    }
    fprintf(stderr, "node-bench: no leader\n");
    exit(1);
}

static void cluster_stop(struct cluster3 *c)
{
    for (int i = 0; i < 3; i++)
        craft_server_stop(c->s[i]);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", c->dir);
    if (system(cmd) != 0)
        fprintf(stderr, "node-bench: cannot remove %s\n", c->dir);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    const char *certs = NULL;
    double seconds = 3;
    int rounds = 3, np = 0;
    int proposers[8];
    bool json = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--certs") && i + 1 < argc)
            certs = argv[++i];
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
            seconds = atof(argv[++i]);
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
            rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--proposers") && i + 1 < argc) {
            char *save = NULL, *copy = argv[++i];
            for (char *t = strtok_r(copy, ",", &save); t && np < 8; t = strtok_r(NULL, ",", &save))
                proposers[np++] = atoi(t);
        } else if (!strcmp(argv[i], "--json"))
            json = true;
        else {
            fprintf(stderr, "usage: node-bench --certs DIR [--seconds S] [--rounds R] "
                            "[--proposers 1,64,1024] [--json]\n");
            return 2;
        }
    }
    if (!np) {
        proposers[np++] = 1;
        proposers[np++] = 64;
        proposers[np++] = 1024;
    }
    for (int i = 0; i < np; i++)
        if (proposers[i] < 1 || proposers[i] > MAX_PROPOSERS) {
            fprintf(stderr, "node-bench: proposers must be 1..%d\n", MAX_PROPOSERS);
            return 2;
        }
    if (!certs || seconds <= 0 || seconds > 600 || rounds < 1 || rounds > 50) {
        fprintf(stderr, "node-bench: --certs DIR is required; seconds 0..600, rounds 1..50\n");
        return 2;
    }

    static struct result res[N_VARIANTS][8][50];
    /* Rounds alternate the variants so drift on a shared machine hits all of them alike. */
    for (int r = 0; r < rounds; r++)
        for (size_t v = 0; v < N_VARIANTS; v++) {
            struct cluster3 c;
            cluster_start(&c, certs, &variants[v]);
            struct raft_node *leader = cluster_leader(&c);
            run_load(leader, 64, 0.5); /* warm-up: connections, segment preallocation */
            for (int p = 0; p < np; p++) {
                res[v][p][r] = run_load(leader, proposers[p], seconds);
                fprintf(stderr, "round %d %-18s %5d proposers: %8.0f commits/s p50 %7.2f ms p99 %7.2f ms%s\n",
                        r + 1, variants[v].name, proposers[p], res[v][p][r].ops,
                        res[v][p][r].p50_ms, res[v][p][r].p99_ms,
                        res[v][p][r].failed ? " (failures)" : "");
            }
            cluster_stop(&c);
        }

    if (!json)
        printf("\n%-18s %10s %12s %10s %10s %8s\n", "variant", "proposers", "commits/s", "p50 ms",
               "p99 ms", "vs best");
    for (int p = 0; p < np; p++) {
        double med_ops[N_VARIANTS];
        for (size_t v = 0; v < N_VARIANTS; v++) {
            double o[50];
            for (int r = 0; r < rounds; r++)
                o[r] = res[v][p][r].ops;
            qsort(o, (size_t)rounds, sizeof o[0], cmp_double);
            med_ops[v] = o[rounds / 2];
        }
        for (size_t v = 0; v < N_VARIANTS; v++) {
            double p50[50], p99[50];
            for (int r = 0; r < rounds; r++) {
                p50[r] = res[v][p][r].p50_ms;
                p99[r] = res[v][p][r].p99_ms;
            }
            qsort(p50, (size_t)rounds, sizeof p50[0], cmp_double);
            qsort(p99, (size_t)rounds, sizeof p99[0], cmp_double);
            if (json)
                printf("{\"variant\":\"%s\",\"proposers\":%d,\"commits_per_s\":%.0f,\"p50_ms\":%.3f,"
                       "\"p99_ms\":%.3f}\n",
                       variants[v].name, proposers[p], med_ops[v], p50[rounds / 2], p99[rounds / 2]);
            else
                printf("%-18s %10d %12.0f %10.2f %10.2f %7.2fx\n", variants[v].name, proposers[p],
                       med_ops[v], p50[rounds / 2], p99[rounds / 2], med_ops[v] / med_ops[0]);
        }
    }
    return 0;
}
