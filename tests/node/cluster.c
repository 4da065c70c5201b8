/* cluster.c: see cluster.h. Helpers run on the test's main thread use Criterion asserts; code on
 * other threads (callbacks, proposers) only counts, and the tests assert the counts. */
#include "tests/node/cluster.h"

#include "tests/wal/lazy_io.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define LG_PAYLOAD 64

int64_t cl_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void deadline(struct timespec *ts, int timeout_ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += timeout_ms / 1000;
    ts->tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    ts->tv_sec += ts->tv_nsec / 1000000000L;
    ts->tv_nsec %= 1000000000L;
}

static void cond_init_mono(pthread_cond_t *cv)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
}

static void rmtree(const char *path)
{
    DIR *d = opendir(path);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", path, de->d_name);
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
            rmtree(p);
        else
            unlink(p);
    }
    closedir(d);
    rmdir(path);
}

static void on_role(void *arg, uint64_t id, uint8_t role, uint64_t term, uint64_t leader)
{
    struct cluster_member *m = arg;
    struct cluster *c = m->c;
    (void)id;
    pthread_mutex_lock(&c->mu);
    m->role = role;
    m->term = term;
    m->leader = leader;
    c->role_gen++;
    if (role == RAFT_LEADER) {
        bool seen = false;
        for (size_t i = 0; i < c->n_leaders; i++) {
            if (c->leaders[i].term == term) {
                seen = true;
                if (c->leaders[i].id != m->id)
                    c->safety_violations++; /* two leaders in one term */
            }
        }
        if (!seen && c->n_leaders < sizeof c->leaders / sizeof c->leaders[0])
        {
            c->leaders[c->n_leaders].term = term;
            c->leaders[c->n_leaders].id = m->id;
            c->n_leaders++;
        }
    }
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

void cluster_init(struct cluster *c, size_t n, unsigned heartbeat_ms, unsigned election_ms)
{
    memset(c, 0, sizeof(*c));
    cr_assert(n <= CLUSTER_MAX);
    c->n = n;
    pthread_mutex_init(&c->mu, NULL);
    cond_init_mono(&c->cv);
    c->net = memnet_new();
    cr_assert_not_null(c->net);
    const char *tmp = getenv("TEST_TMPDIR");
    cr_assert(asprintf(&c->base, "%s/nodeXXXXXX", tmp && *tmp ? tmp : "/tmp") > 0);
    cr_assert_not_null(mkdtemp(c->base));
    raft_node_config_default(&c->tmpl);
    c->tmpl.heartbeat_ms = heartbeat_ms;
    c->tmpl.election_ms = election_ms;
    c->tmpl.wal_segment_bytes = 8u << 20;
    c->tmpl.n_peers = n;
    c->tmpl.peers = c->ids;
    for (size_t i = 0; i < n; i++) {
        struct cluster_member *m = &c->m[i];
        c->ids[i] = i + 1;
        m->c = c;
        m->slot = i;
        m->id = i + 1;
        cr_assert(asprintf(&m->dir, "%s/n%zu", c->base, i + 1) > 0);
        cr_assert(asprintf(&m->snap_dir, "%s/n%zu-snap", c->base, i + 1) > 0);
        pthread_rwlock_init(&m->rw, NULL);
    }
}

void cluster_start(struct cluster *c, size_t slot)
{
    struct cluster_member *m = &c->m[slot];
    cr_assert_null(m->node, "member %zu already running", slot);
    memfsm_free(m->fsm);
    m->fsm = memfsm_new();
    struct raft_node_config cfg = c->tmpl;
    cfg.id = m->id;
    cfg.data_dir = m->dir;
    cfg.snap_dir = c->snapshots ? m->snap_dir : NULL;
    cfg.fsm = memfsm_fsm(m->fsm);
    cfg.transport = memnet_transport(c->net, m->id);
    cfg.seed = 0x5eed0000 + m->id * 7919 + (uint64_t)cl_now_ms();
    cfg.on_role = on_role;
    cfg.on_role_arg = m;
    pthread_mutex_lock(&c->mu);
    m->running = true;
    m->role = RAFT_FOLLOWER;
    m->term = 0;
    m->leader = 0;
    pthread_mutex_unlock(&c->mu);
    char err[512] = "";
    struct raft_node *n = raft_node_start(&cfg, err, sizeof err);
    cr_assert_not_null(n, "start member %" PRIu64 ": %s", m->id, err);
    pthread_rwlock_wrlock(&m->rw);
    m->node = n;
    pthread_rwlock_unlock(&m->rw);
    memnet_attach(c->net, m->id, n);
}

void cluster_start_all(struct cluster *c)
{
    for (size_t i = 0; i < c->n; i++)
        cluster_start(c, i);
}

void cluster_stop(struct cluster *c, size_t slot)
{
    struct cluster_member *m = &c->m[slot];
    /* Off the network at once (the moment a crash would be noticed), then stop the threads. */
    memnet_detach(c->net, m->id);
    pthread_mutex_lock(&c->mu);
    m->running = false;
    c->role_gen++;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    pthread_rwlock_wrlock(&m->rw);
    struct raft_node *n = m->node;
    m->node = NULL;
    pthread_rwlock_unlock(&m->rw);
    raft_node_stop(n);
}

size_t cluster_power_loss(struct cluster *c, const size_t *slots, size_t n)
{
    cr_assert(c->tmpl.wal_io == lazy_io(), "power loss needs tmpl.wal_io = lazy_io()");
    struct raft_node *nodes[CLUSTER_MAX];
    for (size_t k = 0; k < n; k++) {
        struct cluster_member *m = &c->m[slots[k]];
        cr_assert_not_null(m->node, "member %zu is not running", slots[k]);
        memnet_detach(c->net, m->id);
    }
    size_t dropped = 0;
    for (size_t k = 0; k < n; k++) /* its log and its snapshots: one machine */
        dropped += lazy_io_crash(c->m[slots[k]].dir) + lazy_io_crash(c->m[slots[k]].snap_dir);
    for (size_t k = 0; k < n; k++) {
        struct cluster_member *m = &c->m[slots[k]];
        pthread_mutex_lock(&c->mu);
        m->running = false;
        c->role_gen++;
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->mu);
        pthread_rwlock_wrlock(&m->rw);
        nodes[k] = m->node;
        m->node = NULL;
        pthread_rwlock_unlock(&m->rw);
    }
    for (size_t k = 0; k < n; k++) {
        raft_node_stop(nodes[k]);
        lazy_io_revive(c->m[slots[k]].dir);
        lazy_io_revive(c->m[slots[k]].snap_dir);
    }
    return dropped;
}

void cluster_partition(struct cluster *c, size_t slot, bool on)
{
    pthread_mutex_lock(&c->mu);
    c->m[slot].partitioned = on;
    pthread_mutex_unlock(&c->mu);
    memnet_partition(c->net, c->m[slot].id, on);
}

void cluster_destroy(struct cluster *c)
{
    for (size_t i = 0; i < c->n; i++)
        if (c->m[i].node)
            cluster_stop(c, i);
    memnet_free(c->net);
    unsigned violations = c->safety_violations;
    for (size_t i = 0; i < c->n; i++) {
        memfsm_free(c->m[i].fsm);
        free(c->m[i].dir);
        free(c->m[i].snap_dir);
        pthread_rwlock_destroy(&c->m[i].rw);
    }
    rmtree(c->base);
    free(c->base);
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
    cr_assert_eq(violations, 0, "two leaders were elected in one term");
}

static int leader_locked(struct cluster *c)
{
    int best = -1;
    for (size_t i = 0; i < c->n; i++) {
        struct cluster_member *m = &c->m[i];
        if (m->running && m->role == RAFT_LEADER && (best < 0 || m->term > c->m[best].term))
            best = (int)i;
    }
    return best;
}

int cluster_leader(struct cluster *c)
{
    pthread_mutex_lock(&c->mu);
    int l = leader_locked(c);
    pthread_mutex_unlock(&c->mu);
    return l;
}

int cluster_wait_leader(struct cluster *c, int timeout_ms)
{
    struct timespec dl;
    deadline(&dl, timeout_ms);
    pthread_mutex_lock(&c->mu);
    int found = -1, rc = 0;
    for (;;) {
        int l = leader_locked(c);
        if (l >= 0) {
            bool all = true;
            for (size_t i = 0; i < c->n; i++) {
                struct cluster_member *m = &c->m[i];
                if (m->running && !m->partitioned &&
                    (m->term != c->m[l].term || m->leader != c->m[l].id))
                    all = false;
            }
            if (all) {
                found = l;
                break;
            }
        }
        if (rc == ETIMEDOUT)
            break;
        rc = pthread_cond_timedwait(&c->cv, &c->mu, &dl);
    }
    pthread_mutex_unlock(&c->mu);
    return found;
}

uint64_t cluster_role_gen(struct cluster *c)
{
    pthread_mutex_lock(&c->mu);
    uint64_t g = c->role_gen;
    pthread_mutex_unlock(&c->mu);
    return g;
}

void cluster_wait_role_event(struct cluster *c, uint64_t gen, int timeout_ms)
{
    struct timespec dl;
    deadline(&dl, timeout_ms);
    pthread_mutex_lock(&c->mu);
    int rc = 0;
    while (c->role_gen == gen && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&c->cv, &c->mu, &dl);
    pthread_mutex_unlock(&c->mu);
}

int cluster_propose(struct cluster *c, size_t slot, const void *data, size_t len, int timeout_ms,
                    raft_node_done_fn cb, void *arg, uint64_t *leader_id)
{
    struct cluster_member *m = &c->m[slot];
    pthread_rwlock_rdlock(&m->rw);
    int rc = m->node ? raft_node_propose(m->node, data, len, timeout_ms, cb, arg, leader_id)
                     : RAFT_NODE_ESHUTDOWN;
    pthread_rwlock_unlock(&m->rw);
    return rc;
}

int cluster_propose_wait(struct cluster *c, size_t slot, uint64_t id, int timeout_ms,
                         uint64_t *index, uint64_t *leader_id)
{
    /* Only for members that the calling test does not stop concurrently. */
    struct cluster_member *m = &c->m[slot];
    uint8_t buf[LG_PAYLOAD];
    memfsm_payload(buf, sizeof buf, id);
    struct raft_fsm_result res = {0};
    pthread_rwlock_rdlock(&m->rw);
    struct raft_node *n = m->node;
    pthread_rwlock_unlock(&m->rw);
    if (!n)
        return RAFT_NODE_ESHUTDOWN;
    int rc = raft_node_propose_wait(n, buf, sizeof buf, timeout_ms, &res, index, leader_id);
    if (rc == 0 && (res.len != 8 || memcmp(res.data, &id, 8) != 0))
        rc = -100; /* wrong result routed to this proposal */
    free(res.data);
    return rc;
}

bool cluster_status(struct cluster *c, size_t slot, struct raft_node_status *st)
{
    struct cluster_member *m = &c->m[slot];
    pthread_rwlock_rdlock(&m->rw);
    bool ok = m->node != NULL;
    if (ok)
        raft_node_status_get(m->node, st);
    pthread_rwlock_unlock(&m->rw);
    return ok;
}

/* ---- load generator ---- */

struct lg_req {
    struct loadgen *lg;
    unsigned t;
    uint64_t id;
    int64_t start_us;
};

enum { LG_ISSUED = 1, LG_ACCEPTED = 2, LG_REFUSED = 4 };

static void lg_err(struct loadgen *lg, int err)
{
    int k = -err;
    lg->errs[k > 0 && k < 16 ? k : 15]++;
}

static void lg_done(void *arg, int err, uint64_t index, uint64_t leader_id,
                    struct raft_fsm_result *res)
{
    (void)leader_id;
    struct lg_req *q = arg;
    struct loadgen *lg = q->lg;
    pthread_mutex_lock(&lg->mu);
    if (lg->completions[q->id] < 255)
        lg->completions[q->id]++;
    if (err == 0) {
        if (!res || res->len != 8 || memcmp(res->data, &q->id, 8) != 0)
            lg->bad_result++;
        if (lg->n_acked == lg->cap_acked) {
            size_t cap = lg->cap_acked ? lg->cap_acked * 2 : 4096;
            lg->acked = realloc(lg->acked, cap * sizeof(uint64_t));
            lg->acked_index = realloc(lg->acked_index, cap * sizeof(uint64_t));
            lg->lat_us = realloc(lg->lat_us, cap * sizeof(int64_t));
            lg->cap_acked = cap;
        }
        lg->acked[lg->n_acked] = q->id;
        lg->acked_index[lg->n_acked] = index;
        lg->lat_us[lg->n_acked] = now_us() - q->start_us;
        lg->n_acked++;
    } else {
        lg_err(lg, err);
    }
    lg->outstanding[q->t]--;
    lg->outstanding_total--;
    pthread_cond_broadcast(&lg->cv);
    pthread_mutex_unlock(&lg->mu);
    free(q);
}

struct lg_thread_arg {
    struct loadgen *lg;
    unsigned t;
};

static void *lg_main(void *arg)
{
    struct lg_thread_arg *ta = arg;
    struct loadgen *lg = ta->lg;
    unsigned t = ta->t;
    free(ta);
    uint8_t buf[LG_PAYLOAD];
    pthread_mutex_lock(&lg->mu);
    for (;;) {
        if (lg->stop)
            break;
        if (lg->total && lg->n_acked + lg->outstanding_total >= lg->total) {
            if (lg->n_acked >= lg->total)
                break;
            pthread_cond_wait(&lg->cv, &lg->mu);
            continue;
        }
        if (lg->outstanding[t] >= lg->window) {
            pthread_cond_wait(&lg->cv, &lg->mu);
            continue;
        }
        if (lg->next_id + 1 >= lg->cap_ids)
            break;
        uint64_t id = ++lg->next_id;
        lg->completions[id] = 0;
        lg->outstanding[t]++;
        lg->outstanding_total++;
        pthread_mutex_unlock(&lg->mu);

        struct lg_req *q = malloc(sizeof(*q));
        q->lg = lg;
        q->t = t;
        q->id = id;
        q->start_us = now_us();
        memfsm_payload(buf, sizeof buf, id);
        uint64_t gen = cluster_role_gen(lg->c);
        int slot = cluster_leader(lg->c);
        int rc = slot < 0 ? RAFT_NODE_ENOTLEADER
                          : cluster_propose(lg->c, (size_t)slot, buf, sizeof buf, lg->timeout_ms,
                                            lg_done, q, NULL);
        pthread_mutex_lock(&lg->mu);
        if (rc) {
            free(q);
            lg_err(lg, rc);
            lg->outstanding[t]--;
            lg->outstanding_total--;
            pthread_cond_broadcast(&lg->cv);
            /* No leader (or it just changed): wait for the next role event, bounded. */
            pthread_mutex_unlock(&lg->mu);
            cluster_wait_role_event(lg->c, gen, 20);
            pthread_mutex_lock(&lg->mu);
        }
    }
    pthread_mutex_unlock(&lg->mu);
    return NULL;
}

void loadgen_start(struct loadgen *lg, struct cluster *c, unsigned threads, unsigned window,
                   size_t total, int timeout_ms)
{
    memset(lg, 0, sizeof(*lg));
    cr_assert(threads >= 1 && threads <= LG_MAX_THREADS);
    lg->c = c;
    lg->threads = threads;
    lg->window = window;
    lg->total = total;
    lg->timeout_ms = timeout_ms;
    lg->cap_ids = 1u << 21;
    lg->completions = calloc(lg->cap_ids, 1);
    cr_assert_not_null(lg->completions);
    pthread_mutex_init(&lg->mu, NULL);
    cond_init_mono(&lg->cv);
    for (unsigned t = 0; t < threads; t++) {
        struct lg_thread_arg *a = malloc(sizeof(*a));
        a->lg = lg;
        a->t = t;
        cr_assert_eq(pthread_create(&lg->th[t], NULL, lg_main, a), 0);
    }
}

bool loadgen_wait_acked(struct loadgen *lg, size_t n, int timeout_ms)
{
    struct timespec dl;
    deadline(&dl, timeout_ms);
    pthread_mutex_lock(&lg->mu);
    int rc = 0;
    while (lg->n_acked < n && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&lg->cv, &lg->mu, &dl);
    bool ok = lg->n_acked >= n;
    pthread_mutex_unlock(&lg->mu);
    return ok;
}

size_t loadgen_acked(struct loadgen *lg)
{
    pthread_mutex_lock(&lg->mu);
    size_t n = lg->n_acked;
    pthread_mutex_unlock(&lg->mu);
    return n;
}

void loadgen_stop(struct loadgen *lg)
{
    pthread_mutex_lock(&lg->mu);
    lg->stop = true;
    pthread_cond_broadcast(&lg->cv);
    pthread_mutex_unlock(&lg->mu);
    for (unsigned t = 0; t < lg->threads; t++)
        pthread_join(lg->th[t], NULL);
    /* Every accepted proposal completes: applied, lost, timed out or shut down. The bound is
     * the proposals' own timeout plus slack; a hang here is a bug in the node. */
    struct timespec dl;
    deadline(&dl, (lg->timeout_ms > 0 ? lg->timeout_ms : 5000) + 5000);
    pthread_mutex_lock(&lg->mu);
    int rc = 0;
    while (lg->outstanding_total && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&lg->cv, &lg->mu, &dl);
    size_t left = lg->outstanding_total;
    pthread_mutex_unlock(&lg->mu);
    cr_assert_eq(left, 0, "%zu proposals never completed", left);
}

bool loadgen_exactly_once(struct loadgen *lg)
{
    pthread_mutex_lock(&lg->mu);
    bool ok = true;
    for (uint64_t id = 1; id <= lg->next_id; id++)
        if (lg->completions[id] > 1)
            ok = false;
    pthread_mutex_unlock(&lg->mu);
    return ok;
}

void loadgen_free(struct loadgen *lg)
{
    free(lg->acked);
    free(lg->acked_index);
    free(lg->lat_us);
    free(lg->completions);
    pthread_cond_destroy(&lg->cv);
    pthread_mutex_destroy(&lg->mu);
}
