/* harness.c: real craftd processes for tests (see harness.h). */
#include "tests/cluster/harness.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int64_t hc_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void nap_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void runfile(char *out, size_t len, const char *rel)
{
    const char *srcdir = getenv("TEST_SRCDIR"), *ws = getenv("TEST_WORKSPACE");
    cr_assert(srcdir && ws, "run under bazel test (TEST_SRCDIR unset)");
    snprintf(out, len, "%s/%s/%s", srcdir, ws, rel);
    cr_assert_eq(access(out, X_OK), 0, "missing runfile %s", out);
}

/* Below the kernel's ephemeral range (net.ipv4.ip_local_port_range), so no outgoing connection
 * of any process can get the port as its source port between this check and the member's bind:
 * a freed ephemeral port can (CI saw "address already in use" while other tests opened thousands
 * of connections). Ports this process handed out are not handed out again. */
int hc_free_port(void)
{
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    static unsigned char given[65536];
    static unsigned seed;
    int lo = 32768;
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
    if (f) {
        if (fscanf(f, "%d", &lo) != 1)
            lo = 32768;
        fclose(f);
    }
    pthread_mutex_lock(&mu);
    if (!seed)
        seed = (unsigned)getpid() ^ (unsigned)hc_now_ms();
    int port = 0;
    for (int try = 0; try < 1000 && lo > 11000 && !port; try++) {
        int p = 10000 + (int)(rand_r(&seed) % (unsigned)(lo - 10000));
        if (given[p])
            continue;
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET,
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                                .sin_port = htons((uint16_t)p)};
        if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0)
            port = p;
        if (fd >= 0)
            close(fd);
    }
    if (!port) { /* no room below the range: the kernel's pick */
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t al = sizeof a;
        cr_assert(fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
                  getsockname(fd, (struct sockaddr *)&a, &al) == 0);
        close(fd);
        port = ntohs(a.sin_port);
    }
    given[port] = 1;
    pthread_mutex_unlock(&mu);
    return port;
}

static void run(const char *cmd)
{
    int rc = system(cmd);
    cr_assert_eq(rc, 0, "command failed (%d): %s", rc, cmd);
}

void hc_setup(struct hc *c, int n, int heartbeat_ms, int election_ms)
{
    memset(c, 0, sizeof *c);
    cr_assert(n >= 1 && n <= HC_MAX);
    c->n = n;
    c->heartbeat_ms = heartbeat_ms;
    c->election_ms = election_ms;
    c->proposal_timeout_ms = 3000;
    const char *tmp = getenv("TEST_TMPDIR");
    snprintf(c->dir, sizeof c->dir, "%s/hc.XXXXXX", tmp ? tmp : "/tmp");
    cr_assert(mkdtemp(c->dir), "mkdtemp: %s", strerror(errno));
    runfile(c->craftd, sizeof c->craftd, "services/craftd");
    char tool[512], cmd[2048];
    runfile(tool, sizeof tool, "certs/craft-certs");
    snprintf(c->certs, sizeof c->certs, "%s/certs", c->dir);
    snprintf(cmd, sizeof cmd, "%s ca %s >/dev/null && %s client %s client >/dev/null", tool,
             c->certs, tool, c->certs);
    run(cmd);
    for (int i = 0; i < n; i++) {
        struct hc_member *m = &c->m[i];
        snprintf(m->name, sizeof m->name, "n%d", i + 1);
        snprintf(cmd, sizeof cmd, "%s node %s %s --dns localhost --ip 127.0.0.1 >/dev/null", tool,
                 c->certs, m->name);
        run(cmd);
        m->client_port = hc_free_port();
        m->peer_port = hc_free_port();
        char dir[sizeof c->dir], name[sizeof m->name]; /* copies: no overlap with *c */
        memcpy(dir, c->dir, sizeof dir);
        memcpy(name, m->name, sizeof name);
        snprintf(m->data_dir, sizeof m->data_dir, "%s/%s.data", dir, name);
        snprintf(m->log, sizeof m->log, "%s/%s.log", dir, name);
    }
    snprintf(c->ca, sizeof c->ca, "%s/ca.pem", c->certs);
    snprintf(c->cert, sizeof c->cert, "%s/client.pem", c->certs);
    snprintf(c->key, sizeof c->key, "%s/client-key.pem", c->certs);
    c->client_tls = (struct rpc_tls){.ca_file = c->ca, .cert_file = c->cert, .key_file = c->key};
}

void hc_start(struct hc *c, int i)
{
    struct hc_member *m = &c->m[i];
    cr_assert_eq(m->pid, 0, "%s already running", m->name);
    char cluster[2048] = "", *p = cluster;
    for (int k = 0; k < c->n; k++)
        if (!c->unlisted[k] || k == i)
            p += sprintf(p, "%s%s=https://127.0.0.1:%d", p != cluster ? "," : "", c->m[k].name,
                         c->m[k].peer_port);
    char curl[64], purl[64], hb[16], et[16], pt[16], cert[400], key[400];
    snprintf(curl, sizeof curl, "https://127.0.0.1:%d", m->client_port);
    snprintf(purl, sizeof purl, "https://127.0.0.1:%d", m->peer_port);
    snprintf(hb, sizeof hb, "%d", c->heartbeat_ms);
    snprintf(et, sizeof et, "%d", c->election_ms);
    snprintf(pt, sizeof pt, "%d", c->proposal_timeout_ms);
    snprintf(cert, sizeof cert, "%s/%s.pem", c->certs, m->name);
    snprintf(key, sizeof key, "%s/%s-key.pem", c->certs, m->name);
    const char *argv[64] = {c->craftd, "--name", m->name, "--data-dir", m->data_dir,
                            "--listen-client-urls", curl, "--advertise-client-urls", curl,
                            "--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl,
                            "--initial-cluster", cluster, "--heartbeat-interval", hb,
                            "--election-timeout", et, "--proposal-timeout", pt,
                            "--cert-file", cert, "--key-file", key, "--trusted-ca-file", c->ca,
                            "--peer-cert-file", cert, "--peer-key-file", key,
                            "--peer-trusted-ca-file", c->ca};
    int argc = 0;
    while (argv[argc])
        argc++;
    if (c->existing[i]) {
        argv[argc++] = "--initial-cluster-state";
        argv[argc++] = "existing";
    }
    char extra[512];
    snprintf(extra, sizeof extra, "%s", c->extra_flags);
    for (char *save = NULL, *t = strtok_r(extra, " ", &save); t && argc < 62;
         t = strtok_r(NULL, " ", &save))
        argv[argc++] = t;
    argv[argc] = NULL;
    fflush(NULL);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        int fd = open(m->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execv(c->craftd, (char **)argv);
        _exit(127);
    }
    m->pid = pid;
}

void hc_start_all(struct hc *c)
{
    for (int i = 0; i < c->n; i++)
        hc_start(c, i);
}

void hc_signal(struct hc *c, int i, int sig)
{
    struct hc_member *m = &c->m[i];
    if (!m->pid)
        return;
    if (sig == SIGTERM || sig == SIGKILL)
        kill(m->pid, SIGCONT); /* a paused member must run to die */
    kill(m->pid, sig);
    if (sig == SIGTERM || sig == SIGKILL) {
        int st;
        waitpid(m->pid, &st, 0);
        m->pid = 0;
        if (m->ch) { /* a fresh channel after restart: no reconnect backoff to wait out */
            rpc_channel_destroy(m->ch);
            m->ch = NULL;
        }
    }
}

void hc_teardown(struct hc *c)
{
    for (int i = 0; i < c->n; i++) {
        hc_signal(c, i, SIGKILL);
        if (c->m[i].ch)
            rpc_channel_destroy(c->m[i].ch);
        c->m[i].ch = NULL;
    }
    if (c->dir[0]) {
        char cmd[400];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", c->dir);
        if (system(cmd) != 0)
            fprintf(stderr, "cannot remove %s\n", c->dir);
    }
}

struct rpc_channel *hc_channel(struct hc *c, int i)
{
    struct hc_member *m = &c->m[i];
    if (!m->ch) {
        char target[64], err[256];
        snprintf(target, sizeof target, "127.0.0.1:%d", m->client_port);
        /* wait_for_ready: a call waits (up to its deadline) for a member that is starting or
         * whose connection is in gRPC's reconnect backoff, instead of failing at once. */
        struct rpc_channel_config cc = {.target = target,
                                        .tls = &c->client_tls,
                                        .threads = 1,
                                        .wait_for_ready = true,
                                        .reconnect_max_ms = 200};
        m->ch = rpc_channel_create(&cc, err, sizeof err);
        cr_assert(m->ch, "channel: %s", err);
    }
    return m->ch;
}

int hc_status(struct hc *c, int i, Craft__Node__StatusReply **out)
{
    if (!c->m[i].pid)
        return -1;
    Craft__Node__StatusRequest req = CRAFT__NODE__STATUS_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    struct rpc_result res;
    rpc_channel_call_msg(hc_channel(c, i), "/craft.node.Node/Status", &req.base,
                         &craft__node__status_reply__descriptor, 1000, &resp, &res);
    rpc_result_free(&res);
    if (res.status != GRPC_STATUS_OK)
        return -1;
    *out = (Craft__Node__StatusReply *)resp;
    return 0;
}

int hc_wait_leader(struct hc *c, int timeout_ms)
{
    int64_t until = hc_now_ms() + timeout_ms;
    do {
        uint64_t leader = 0;
        int leader_idx = -1, answered = 0;
        bool agree = true;
        for (int i = 0; i < c->n; i++) {
            Craft__Node__StatusReply *st;
            if (hc_status(c, i, &st) != 0)
                continue;
            answered++;
            if (st->role == 3)
                leader_idx = i;
            if (!leader)
                leader = st->leader_id;
            agree = agree && st->leader_id && st->leader_id == leader;
            protobuf_c_message_free_unpacked(&st->base, NULL);
        }
        if (answered && agree && leader_idx >= 0)
            return leader_idx;
        nap_ms(10);
    } while (hc_now_ms() < until);
    return -1;
}

bool hc_wait_revision(struct hc *c, int i, int64_t rev, int timeout_ms)
{
    int64_t until = hc_now_ms() + timeout_ms;
    do {
        Craft__Node__StatusReply *st;
        if (hc_status(c, i, &st) == 0) {
            bool ok = st->revision >= rev;
            protobuf_c_message_free_unpacked(&st->base, NULL);
            if (ok)
                return true;
        }
        nap_ms(10);
    } while (hc_now_ms() < until);
    return false;
}

uint64_t hc_assert_exact_state(struct hc *c, int i, int64_t rev, int timeout_ms)
{
    int64_t until = hc_now_ms() + timeout_ms;
    char why[512] = "";
    for (;;) {
        uint64_t applied[HC_MAX] = {0};
        int64_t revs[HC_MAX] = {0};
        bool up[HC_MAX] = {false}, same = true;
        for (int k = 0; k < c->n; k++) {
            Craft__Node__StatusReply *st;
            if (hc_status(c, k, &st) != 0)
                continue;
            up[k] = true;
            applied[k] = st->applied_index;
            revs[k] = st->revision;
            protobuf_c_message_free_unpacked(&st->base, NULL);
        }
        int n = 0;
        if (up[i])
            for (int k = 0; k < c->n; k++)
                if (up[k]) {
                    n += snprintf(why + n, sizeof why - (size_t)n, " %s applied=%llu rev=%lld;",
                                  c->m[k].name, (unsigned long long)applied[k],
                                  (long long)revs[k]);
                    if (n >= (int)sizeof why)
                        n = (int)sizeof why - 1;
                    same = same && applied[k] == applied[i] && revs[k] == revs[i];
                }
        if (up[i] && same && (rev <= 0 || revs[i] == rev))
            return applied[i];
        /* Equal applied indexes with different revisions, or a revision past the one expected,
         * cannot heal: an entry was applied twice (or skipped). */
        if (up[i] && rev > 0 && revs[i] > rev)
            cr_assert_fail("%s: revision %lld, expected exactly %lld (applied twice?):%s",
                           c->m[i].name, (long long)revs[i], (long long)rev, why);
        if (hc_now_ms() >= until)
            cr_assert_fail("%s: not at the same applied index and revision as the others%s "
                           "within %d ms:%s", c->m[i].name,
                           rev > 0 ? " (expected revision exactly)" : "", timeout_ms,
                           up[i] ? why : " (no status)");
        nap_ms(20);
    }
}

grpc_status_code hc_put(struct hc *c, int i, const char *key, const char *val, int deadline_ms,
                        int64_t *rev)
{
    Etcdserverpb__PutRequest req = ETCDSERVERPB__PUT_REQUEST__INIT;
    req.key.data = (uint8_t *)key;
    req.key.len = strlen(key);
    req.value.data = (uint8_t *)val;
    req.value.len = strlen(val);
    ProtobufCMessage *resp = NULL;
    struct rpc_result res;
    rpc_channel_call_msg(hc_channel(c, i), "/etcdserverpb.KV/Put", &req.base,
                         &etcdserverpb__put_response__descriptor, deadline_ms, &resp, &res);
    grpc_status_code st = res.status;
    rpc_result_free(&res);
    if (st == GRPC_STATUS_OK) {
        Etcdserverpb__PutResponse *r = (Etcdserverpb__PutResponse *)resp;
        if (rev)
            *rev = r->header ? r->header->revision : 0;
        protobuf_c_message_free_unpacked(resp, NULL);
    }
    return st;
}

int hc_put_async(struct hc *c, int i, const char *key, const char *val, int deadline_ms,
                 rpc_done_fn cb, void *arg)
{
    Etcdserverpb__PutRequest req = ETCDSERVERPB__PUT_REQUEST__INIT;
    req.key.data = (uint8_t *)key;
    req.key.len = strlen(key);
    req.value.data = (uint8_t *)val;
    req.value.len = strlen(val);
    uint8_t *buf;
    size_t len;
    int rc = rpc_msg_pack(&req.base, &buf, &len);
    if (rc != 0)
        return rc;
    rc = rpc_channel_call_async(hc_channel(c, i), "/etcdserverpb.KV/Put", buf, len, deadline_ms,
                                cb, arg);
    free(buf);
    return rc;
}

int hc_get(struct hc *c, int i, const char *key, char *val, size_t vlen, bool serializable)
{
    Etcdserverpb__RangeRequest req = ETCDSERVERPB__RANGE_REQUEST__INIT;
    req.key.data = (uint8_t *)key;
    req.key.len = strlen(key);
    req.serializable = serializable;
    ProtobufCMessage *resp = NULL;
    struct rpc_result res;
    rpc_channel_call_msg(hc_channel(c, i), "/etcdserverpb.KV/Range", &req.base,
                         &etcdserverpb__range_response__descriptor, 3000, &resp, &res);
    grpc_status_code st = res.status;
    if (st != GRPC_STATUS_OK) /* say why: a failed read must not look like a lost write */
        fprintf(stderr, "hc_get %s on %s: status %d: %s\n", key, c->m[i].name, (int)st,
                res.message);
    rpc_result_free(&res);
    if (st != GRPC_STATUS_OK)
        return -1;
    Etcdserverpb__RangeResponse *r = (Etcdserverpb__RangeResponse *)resp;
    int found = r->n_kvs ? 1 : 0;
    if (found && val)
        snprintf(val, vlen, "%.*s", (int)r->kvs[0]->value.len, (const char *)r->kvs[0]->value.data);
    protobuf_c_message_free_unpacked(resp, NULL);
    return found;
}

bool hc_log_has(struct hc *c, int i, const char *needle)
{
    FILE *f = fopen(c->m[i].log, "r");
    if (!f)
        return false;
    char line[2048];
    bool found = false;
    while (!found && fgets(line, sizeof line, f))
        found = strstr(line, needle) != NULL;
    fclose(f);
    return found;
}

bool hc_log_soon(struct hc *c, int i, const char *needle, int ms)
{
    int64_t until = hc_now_ms() + ms;
    while (!hc_log_has(c, i, needle) && hc_now_ms() < until) {
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return hc_log_has(c, i, needle);
}

int64_t hc_put_keys(struct hc *c, int i, int from, int n, size_t vlen)
{
    char key[32], *val = malloc(vlen + 32);
    cr_assert(val);
    int64_t rev = 0;
    for (int k = from; k < from + n; k++) {
        snprintf(key, sizeof key, "key/%04d", k);
        int h = snprintf(val, vlen + 32, "v%d-", k);
        memset(val + h, 'x', vlen > (size_t)h ? vlen - (size_t)h : 0);
        val[vlen > (size_t)h ? vlen : (size_t)h] = 0;
        cr_assert_eq(hc_put(c, i, key, val, 5000, &rev), GRPC_STATUS_OK, "put %s on %s", key,
                     c->m[i].name);
    }
    free(val);
    return rev;
}

uint64_t hc_newest_snap_index(struct hc *c, int i)
{
    char path[600];
    snprintf(path, sizeof path, "%s/snap", c->m[i].data_dir);
    DIR *d = opendir(path);
    if (!d)
        return 0;
    uint64_t best = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        unsigned long long term, index;
        char tail[8];
        if (sscanf(de->d_name, "%16llx-%16llx%7s", &term, &index, tail) == 3 &&
            !strcmp(tail, ".snap") && index > best)
            best = index;
    }
    closedir(d);
    return best;
}

int hc_wait_exit(struct hc *c, int i, int timeout_ms)
{
    int64_t until = hc_now_ms() + timeout_ms;
    do {
        int st;
        pid_t r = waitpid(c->m[i].pid, &st, WNOHANG);
        if (r == c->m[i].pid) {
            c->m[i].pid = 0;
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    } while (hc_now_ms() < until);
    return -1;
}

void hc_dump_log(struct hc *c, int i)
{
    char cmd[700];
    snprintf(cmd, sizeof cmd, "echo '--- %s log:'; tail -n 30 '%s' >&2", c->m[i].name, c->m[i].log);
    if (system(cmd) != 0)
        fprintf(stderr, "(no log)\n");
}
