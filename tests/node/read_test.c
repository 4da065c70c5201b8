/* read_test.c: linearizable reads (raft_node_read_index, ReadIndex of Raft thesis §6.4) on real
 * nodes: concurrent reads share few rounds; a read after a write waits until the write is applied
 * locally, on the leader and on followers; a partitioned old leader never answers a read; timeouts,
 * the pending bound, no leader, and shutdown complete each read exactly once. */
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tests/node/cluster.h"

TestSuite(node_read, .timeout = 120);

#define RT_MAX 8192

/* Counts completions per token; a second completion of one token is a bug. On success it also
 * notes the index read and how far the member's state machine had applied at that moment. */
struct rtally {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    size_t done, twice, by_err[16];
    unsigned calls[RT_MAX];
    uint64_t index[RT_MAX];
    uint64_t applied[RT_MAX];
};

struct rtok {
    struct rtally *t;
    unsigned k;
    struct memfsm *fsm;
};

static struct rtok toks[RT_MAX];

static void rt_init(struct rtally *t)
{
    memset(t, 0, sizeof(*t));
    pthread_mutex_init(&t->mu, NULL);
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&t->cv, &a);
    pthread_condattr_destroy(&a);
}

static void rt_cb(void *arg, int err, uint64_t index)
{
    struct rtok *tok = arg;
    struct rtally *t = tok->t;
    uint64_t applied = err == 0 && tok->fsm ? memfsm_last_index(tok->fsm) : 0;
    pthread_mutex_lock(&t->mu);
    if (t->calls[tok->k]++)
        t->twice++;
    t->index[tok->k] = index;
    t->applied[tok->k] = applied;
    t->by_err[-err < 16 ? -err : 15]++;
    t->done++;
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
}

static bool rt_wait(struct rtally *t, size_t n, int timeout_ms)
{
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += timeout_ms / 1000;
    dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    dl.tv_sec += dl.tv_nsec / 1000000000L;
    dl.tv_nsec %= 1000000000L;
    pthread_mutex_lock(&t->mu);
    int rc = 0;
    while (t->done < n && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&t->cv, &t->mu, &dl);
    bool ok = t->done >= n;
    pthread_mutex_unlock(&t->mu);
    return ok;
}

static size_t rt_done(struct rtally *t)
{
    pthread_mutex_lock(&t->mu);
    size_t n = t->done;
    pthread_mutex_unlock(&t->mu);
    return n;
}

/* raft_node_read_index on slot with token k, safe against a concurrent cluster_stop. */
static int read_tok(struct cluster *c, size_t slot, struct rtally *t, unsigned k, int timeout_ms)
{
    struct cluster_member *m = &c->m[slot];
    toks[k] = (struct rtok){t, k, m->fsm};
    pthread_rwlock_rdlock(&m->rw);
    int rc = m->node ? raft_node_read_index(m->node, timeout_ms, rt_cb, &toks[k])
                     : RAFT_NODE_ESHUTDOWN;
    pthread_rwlock_unlock(&m->rw);
    return rc;
}

static uint64_t rounds(struct cluster *c, size_t slot)
{
    struct raft_node_status st;
    cr_assert(cluster_status(c, slot, &st));
    return st.read_rounds;
}

/* A leader that every member follows and that has committed an entry of its term. */
static int settled_leader(struct cluster *c)
{
    int l = cluster_wait_leader(c, 10000);
    cr_assert_geq(l, 0, "no leader");
    cr_assert_eq(cluster_propose_wait(c, (size_t)l, 1, 5000, NULL, NULL), 0);
    return l;
}

Test(node_read, concurrent_reads_share_few_rounds_on_leader_and_follower)
{
    struct cluster c;
    cluster_init(&c, 3, 50, 500);
    cluster_start_all(&c);
    int l = settled_leader(&c);
    size_t f = (size_t)(l + 1) % 3;
    struct rtally t;
    rt_init(&t);
    const unsigned per = 2000;
    uint64_t r0l = rounds(&c, (size_t)l), r0f = rounds(&c, f);
    for (unsigned k = 0; k < per; k++) {
        cr_assert_eq(read_tok(&c, (size_t)l, &t, k, 5000), 0, "leader read %u refused", k);
        cr_assert_eq(read_tok(&c, f, &t, per + k, 5000), 0, "follower read %u refused", k);
    }
    cr_assert(rt_wait(&t, 2 * per, 20000), "only %zu of %u reads completed", rt_done(&t),
              2 * per);
    cr_assert_eq(t.by_err[0], 2 * per, "%zu reads failed in a stable cluster",
                 2 * per - t.by_err[0]);
    cr_assert_eq(t.twice, 0);
    uint64_t rl = rounds(&c, (size_t)l) - r0l, rf = rounds(&c, f) - r0f;
    cr_log_info("%u reads each: %" PRIu64 " rounds on the leader, %" PRIu64 " on a follower", per,
                rl, rf);
    cr_assert_geq(rl, 1);
    cr_assert_geq(rf, 1);
    /* Batching: reads that arrive while a round is under way share the next one. */
    cr_assert_lt(rl, per / 10, "%" PRIu64 " rounds for %u reads", rl, per);
    cr_assert_lt(rf, per / 10, "%" PRIu64 " rounds for %u reads", rf, per);
    struct raft_node_status st;
    cr_assert(cluster_status(&c, (size_t)l, &st));
    cr_assert_eq(st.reads_pending, 0);
    cluster_destroy(&c);
}

Test(node_read, read_after_write_waits_for_the_write_on_every_member)
{
    struct cluster c;
    cluster_init(&c, 3, 50, 500);
    cluster_start_all(&c);
    int l = settled_leader(&c);
    struct rtally t;
    rt_init(&t);
    unsigned k = 0;
    for (unsigned round = 0; round < 20; round++) {
        uint64_t idx = 0;
        cr_assert_eq(cluster_propose_wait(&c, (size_t)l, 100 + round, 5000, &idx, NULL), 0);
        /* The write is acknowledged: a read that starts now, anywhere, must cover it, and its
         * callback must find it applied locally (followers may not have it yet when asked). */
        unsigned first = k;
        for (size_t i = 0; i < 3; i++)
            cr_assert_eq(read_tok(&c, i, &t, k++, 5000), 0);
        cr_assert(rt_wait(&t, k, 5000));
        for (unsigned j = first; j < k; j++) {
            cr_assert_eq(t.calls[j], 1);
            cr_assert_geq(t.index[j], idx, "read %u on member %u: index %" PRIu64 " < write %" PRIu64,
                          j, j - first, t.index[j], idx);
            cr_assert_geq(t.applied[j], t.index[j],
                          "read %u completed with applied %" PRIu64 " < read index %" PRIu64, j,
                          t.applied[j], t.index[j]);
        }
    }
    cr_assert_eq(t.by_err[0], k);
    cluster_destroy(&c);
}

Test(node_read, partitioned_old_leader_never_answers)
{
    struct cluster c;
    cluster_init(&c, 3, 50, 300);
    cluster_start_all(&c);
    int old = settled_leader(&c);
    cluster_partition(&c, (size_t)old, true);
    struct rtally t;
    rt_init(&t);
    unsigned k = 0, refused = 0;
    /* Reads on the cut-off leader, before and after the others elect a new leader and write. */
    for (; k < 50; k++)
        if (read_tok(&c, (size_t)old, &t, k, 4000) != 0)
            refused++;
    int nl = -1;
    int64_t t0 = cl_now_ms();
    while (cl_now_ms() - t0 < 5000 && nl < 0) {
        uint64_t gen = cluster_role_gen(&c);
        int l = cluster_leader(&c);
        if (l >= 0 && l != old &&
            cluster_propose_wait(&c, (size_t)l, 7000, 500, NULL, NULL) == 0)
            nl = l;
        else
            cluster_wait_role_event(&c, gen, 20);
    }
    cr_assert_geq(nl, 0, "no new leader");
    for (unsigned j = 0; j < 50; j++, k++) {
        int rc = read_tok(&c, (size_t)old, &t, k, 4000);
        if (rc) {
            cr_assert(rc == RAFT_NODE_ENOTLEADER, "read refused with %d", rc);
            refused++;
        }
    }
    cr_assert(rt_wait(&t, k - refused, 8000), "%zu of %u accepted reads completed", rt_done(&t),
              k - refused);
    cr_assert_eq(t.by_err[0], 0, "a partitioned old leader answered %zu reads", t.by_err[0]);
    cr_assert_eq(t.twice, 0);
    /* Failed, each with a reason: leadership lost or unconfirmed, or (for reads queued behind
     * a failed round) no leader known any more, or timed out. */
    size_t lost = t.by_err[-RAFT_NODE_ELOST], nl_ = t.by_err[-RAFT_NODE_ENOTLEADER],
           to = t.by_err[-RAFT_NODE_ETIMEDOUT];
    cr_log_info("old leader: %u refused at once; %zu lost, %zu no leader, %zu timed out", refused,
                lost, nl_, to);
    cr_assert_eq(lost + nl_ + to, k - refused);
    cr_assert_gt(lost, 0);
    /* The new leader serves reads, and once healed the old one (now a follower) does too. */
    cr_assert_eq(read_tok(&c, (size_t)nl, &t, k++, 4000), 0);
    cr_assert(rt_wait(&t, k - refused, 5000));
    cr_assert_eq(t.by_err[0], 1);
    cluster_partition(&c, (size_t)old, false);
    cr_assert_geq(cluster_wait_leader(&c, 5000), 0);
    int rc = RAFT_NODE_ENOTLEADER;
    for (int tries = 0; tries < 100 && rc; tries++) {
        struct rtally t2;
        rt_init(&t2);
        rc = read_tok(&c, (size_t)old, &t2, RT_MAX - 1, 4000);
        if (rc == 0) {
            cr_assert(rt_wait(&t2, 1, 5000));
            rc = t2.by_err[0] == 1 ? 0 : -1;
        }
        if (rc)
            cluster_wait_role_event(&c, cluster_role_gen(&c), 20);
    }
    cr_assert_eq(rc, 0, "the healed old leader cannot serve a read");
    cluster_destroy(&c);
}

Test(node_read, timeout_fires_once)
{
    struct cluster c;
    /* A long election timeout keeps the leader (and its round) in place for the whole test. */
    cluster_init(&c, 3, 50, 3000);
    cluster_start_all(&c);
    int l = settled_leader(&c);
    for (size_t i = 0; i < 3; i++)
        if ((int)i != l)
            cluster_partition(&c, i, true);
    struct rtally t;
    rt_init(&t);
    int64_t t0 = cl_now_ms();
    for (unsigned k = 0; k < 50; k++)
        cr_assert_eq(read_tok(&c, (size_t)l, &t, k, 150), 0);
    cr_assert(rt_wait(&t, 50, 2000), "timeouts did not fire: %zu", rt_done(&t));
    int64_t took = cl_now_ms() - t0;
    cr_assert_eq(t.by_err[-RAFT_NODE_ETIMEDOUT], 50);
    cr_assert_geq(took, 150);
    cr_assert_lt(took, 150 + 400, "timeouts fired after %" PRId64 " ms", took);
    /* Healed: the round in flight settles (or expires) without completing anyone again, and new
     * reads succeed. */
    for (size_t i = 0; i < 3; i++)
        cluster_partition(&c, i, false);
    int rc = -1;
    for (int tries = 0; tries < 50 && rc; tries++) {
        struct rtally t2;
        rt_init(&t2);
        cr_assert_eq(read_tok(&c, (size_t)l, &t2, RT_MAX - 1, 2000), 0);
        cr_assert(rt_wait(&t2, 1, 5000));
        rc = t2.by_err[0] == 1 ? 0 : -1;
    }
    cr_assert_eq(rc, 0);
    cr_assert_eq(rt_done(&t), 50);
    cr_assert_eq(t.twice, 0);
    cluster_destroy(&c);
}

Test(node_read, bound_and_shutdown_complete_every_read_once)
{
    struct cluster c;
    cluster_init(&c, 3, 50, 3000);
    c.tmpl.max_pending_reads = 64;
    cluster_start_all(&c);
    int l = settled_leader(&c);
    for (size_t i = 0; i < 3; i++)
        if ((int)i != l)
            cluster_partition(&c, i, true);
    struct rtally t;
    rt_init(&t);
    for (unsigned k = 0; k < 64; k++)
        cr_assert_eq(read_tok(&c, (size_t)l, &t, k, 0), 0, "read %u refused", k);
    cr_assert_eq(read_tok(&c, (size_t)l, &t, 64, 0), RAFT_NODE_EBUSY);
    struct raft_node_status st;
    cr_assert(cluster_status(&c, (size_t)l, &st));
    cr_assert_eq(st.reads_pending, 64);
    cr_assert_eq(rt_done(&t), 0);

    cluster_stop(&c, (size_t)l);
    /* Every waiting read completed before raft_node_stop returned, once, with ESHUTDOWN. */
    cr_assert_eq(rt_done(&t), 64);
    cr_assert_eq(t.by_err[-RAFT_NODE_ESHUTDOWN], 64);
    cr_assert_eq(t.twice, 0);
    cr_assert_eq(t.calls[64], 0, "a refused read called back");
    cr_assert_eq(read_tok(&c, (size_t)l, &t, 65, 0), RAFT_NODE_ESHUTDOWN);
    cluster_destroy(&c);
}

Test(node_read, no_leader_known_is_refused_at_once)
{
    struct cluster c;
    cluster_init(&c, 3, 50, 300);
    cluster_start(&c, 0); /* alone: it can never learn of a leader */
    struct rtally t;
    rt_init(&t);
    cr_assert_eq(read_tok(&c, 0, &t, 0, 1000), RAFT_NODE_ENOTLEADER);
    cr_assert_eq(read_tok(&c, 0, &t, 1, 1000), RAFT_NODE_ENOTLEADER);
    cr_assert_eq(rt_done(&t), 0);
    cluster_destroy(&c);
}

Test(node_read, single_member_reads_without_peers)
{
    struct cluster c;
    cluster_init(&c, 1, 50, 300);
    cluster_start_all(&c);
    int l = settled_leader(&c);
    struct rtally t;
    rt_init(&t);
    for (unsigned k = 0; k < 100; k++)
        cr_assert_eq(read_tok(&c, (size_t)l, &t, k, 2000), 0);
    cr_assert(rt_wait(&t, 100, 5000));
    cr_assert_eq(t.by_err[0], 100);
    for (unsigned k = 0; k < 100; k++)
        cr_assert_geq(t.index[k], 2, "read %u index %" PRIu64 " misses the write", k, t.index[k]);
    cluster_destroy(&c);
}
