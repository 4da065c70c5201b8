/* propose_test.c: the proposal API's errors and its exactly-once completion: not leader (with the
 * right hint), too big, too many pending, shutdown, timeout (once, even if applied later),
 * leadership lost (the entry overwritten). */
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tests/node/cluster.h"

TestSuite(node_propose, .timeout = 120);

#define TALLY_MAX 4096

/* Counts completions per token; a second completion of one token is recorded as a bug. */
struct tally {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    size_t done;
    size_t by_err[16];
    unsigned calls[TALLY_MAX];
    int err[TALLY_MAX];
    size_t twice;
    size_t ok_bad_result;
};

struct token {
    struct tally *t;
    unsigned k;
    uint64_t id;
};

static struct token tokens[TALLY_MAX];

static void tally_init(struct tally *t)
{
    memset(t, 0, sizeof(*t));
    pthread_mutex_init(&t->mu, NULL);
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&t->cv, &a);
    pthread_condattr_destroy(&a);
}

static void tally_cb(void *arg, int err, uint64_t index, uint64_t leader_id,
                     struct raft_fsm_result *res)
{
    (void)index;
    (void)leader_id;
    struct token *tok = arg;
    struct tally *t = tok->t;
    pthread_mutex_lock(&t->mu);
    if (t->calls[tok->k]++)
        t->twice++;
    t->err[tok->k] = err;
    t->by_err[-err < 16 ? -err : 15]++;
    if (err == 0 && (!res || res->len != 8 || memcmp(res->data, &tok->id, 8)))
        t->ok_bad_result++;
    t->done++;
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
}

static bool tally_wait(struct tally *t, size_t n, int timeout_ms)
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

static size_t tally_done(struct tally *t)
{
    pthread_mutex_lock(&t->mu);
    size_t n = t->done;
    pthread_mutex_unlock(&t->mu);
    return n;
}

/* Propose token k (id 1000 + k) on slot. */
static int propose_tok(struct cluster *c, size_t slot, struct tally *t, unsigned k, int timeout_ms,
                       uint64_t *hint)
{
    tokens[k] = (struct token){t, k, 1000 + k};
    uint8_t buf[64];
    memfsm_payload(buf, sizeof buf, tokens[k].id);
    return cluster_propose(c, slot, buf, sizeof buf, timeout_ms, tally_cb, &tokens[k], hint);
}

Test(node_propose, not_leader_gives_the_leader_id_and_too_big_is_refused)
{
    struct cluster c;
    cluster_init(&c, 3, 50, 300);
    c.tmpl.max_entry_bytes = 1024;
    cluster_start_all(&c);
    int l = cluster_wait_leader(&c, 5000);
    cr_assert_geq(l, 0);
    struct tally t;
    tally_init(&t);
    unsigned k = 0;
    for (size_t i = 0; i < 3; i++) {
        if ((int)i == l)
            continue;
        uint64_t hint = 0;
        cr_assert_eq(propose_tok(&c, i, &t, k++, 0, &hint), RAFT_NODE_ENOTLEADER);
        cr_assert_eq(hint, c.m[l].id, "follower %zu hinted %" PRIu64, i, hint);
        uint64_t idx = 0;
        hint = 0;
        cr_assert_eq(cluster_propose_wait(&c, i, 7, 1000, &idx, &hint), RAFT_NODE_ENOTLEADER);
        cr_assert_eq(hint, c.m[l].id);
    }
    /* Too big: refused at once, on the leader too. */
    static uint8_t big[1025];
    cr_assert_eq(cluster_propose(&c, (size_t)l, big, sizeof big, 0, tally_cb, &tokens[0], NULL),
                 RAFT_NODE_ETOOBIG);
    tokens[k] = (struct token){&t, k, 0}; /* payload of zeros: id 0 */
    cr_assert_eq(cluster_propose(&c, (size_t)l, big, 1024, 2000, tally_cb, &tokens[k], NULL), 0);
    k++;
    cr_assert(tally_wait(&t, 1, 5000));
    cr_assert_eq(t.by_err[0], 1, "the 1024-byte proposal did not commit");
    /* Refused proposals never call back. */
    cr_assert_eq(tally_done(&t), 1);
    cr_assert_eq(t.twice, 0);
    cluster_destroy(&c);
}

Test(node_propose, too_many_pending_then_shutdown_completes_all_exactly_once)
{
    struct cluster c;
    cluster_init(&c, 3, 50, 1000);
    c.tmpl.max_pending = 8;
    cluster_start_all(&c);
    int l = cluster_wait_leader(&c, 5000);
    cr_assert_geq(l, 0);
    /* Cut both followers off so nothing commits and the proposals stay pending. */
    for (size_t i = 0; i < 3; i++)
        if ((int)i != l)
            cluster_partition(&c, i, true);
    struct tally t;
    tally_init(&t);
    for (unsigned k = 0; k < 8; k++)
        cr_assert_eq(propose_tok(&c, (size_t)l, &t, k, 0, NULL), 0, "proposal %u refused", k);
    cr_assert_eq(propose_tok(&c, (size_t)l, &t, 8, 0, NULL), RAFT_NODE_EBUSY);
    struct raft_node_status st;
    cr_assert(cluster_status(&c, (size_t)l, &st));
    cr_assert_eq(st.pending, 8);
    cr_assert_eq(tally_done(&t), 0);

    cluster_stop(&c, (size_t)l);
    /* Every pending callback ran before raft_node_stop returned, once, with ESHUTDOWN. */
    cr_assert_eq(tally_done(&t), 8);
    cr_assert_eq(t.by_err[-RAFT_NODE_ESHUTDOWN], 8);
    cr_assert_eq(t.twice, 0);
    cr_assert_eq(t.calls[8], 0);
    cluster_destroy(&c);
}

Test(node_propose, shutdown_under_load_completes_every_proposal_once)
{
    struct cluster c;
    cluster_init(&c, 3, 50, 300);
    cluster_start_all(&c);
    int l = cluster_wait_leader(&c, 5000);
    cr_assert_geq(l, 0);
    /* Many proposals without timeout in flight, some committing, when the leader stops. */
    struct tally t;
    tally_init(&t);
    unsigned n = 0;
    for (; n < 1000; n++)
        cr_assert_eq(propose_tok(&c, (size_t)l, &t, n, 0, NULL), 0);
    cr_assert(tally_wait(&t, 1, 5000));
    for (; n < 2000; n++)
        cr_assert_eq(propose_tok(&c, (size_t)l, &t, n, 0, NULL), 0);
    cluster_stop(&c, (size_t)l);
    cr_assert_eq(tally_done(&t), n, "%zu of %u completed when stop returned", tally_done(&t), n);
    cr_assert_eq(t.twice, 0);
    cr_assert_eq(t.ok_bad_result, 0);
    size_t ok = t.by_err[0], shut = t.by_err[-RAFT_NODE_ESHUTDOWN];
    cr_log_info("stop under load: %zu applied, %zu shut down", ok, shut);
    cr_assert_eq(ok + shut, n);
    cr_assert_gt(ok, 0);
    cluster_destroy(&c);
}

Test(node_propose, timeout_completes_once_even_if_applied_later)
{
    struct cluster c;
    /* A long election timeout keeps the leader in place across the short partition. */
    cluster_init(&c, 3, 50, 1500);
    cluster_start_all(&c);
    int l = cluster_wait_leader(&c, 10000);
    cr_assert_geq(l, 0);
    for (size_t i = 0; i < 3; i++)
        if ((int)i != l)
            cluster_partition(&c, i, true);
    struct tally t;
    tally_init(&t);
    int64_t t0 = cl_now_ms();
    for (unsigned k = 0; k < 50; k++)
        cr_assert_eq(propose_tok(&c, (size_t)l, &t, k, 150, NULL), 0);
    cr_assert(tally_wait(&t, 50, 2000), "timeouts did not fire: %zu", tally_done(&t));
    int64_t took = cl_now_ms() - t0;
    cr_assert_eq(t.by_err[-RAFT_NODE_ETIMEDOUT], 50);
    cr_assert_geq(took, 150);
    cr_assert_lt(took, 150 + 400, "timeouts fired after %" PRId64 " ms", took);

    /* Heal: the same leader commits the 50 entries and applies them. */
    for (size_t i = 0; i < 3; i++)
        cluster_partition(&c, i, false);
    cr_assert(memfsm_wait_count(c.m[l].fsm, 50, 10000), "entries not applied after healing");
    cr_assert_eq(cluster_leader(&c), l);
    /* A proposal after them: once it is applied, the 50 certainly were settled by the applier. */
    cr_assert_eq(cluster_propose_wait(&c, (size_t)l, 99, 5000, NULL, NULL), 0);
    cr_assert_eq(tally_done(&t), 50);
    cr_assert_eq(t.twice, 0, "a timed-out proposal completed again when applied");
    cluster_destroy(&c);
}

Test(node_propose, overwritten_entries_complete_with_elost)
{
    struct cluster c;
    cluster_init(&c, 3, 50, 300);
    cluster_start_all(&c);
    int old = cluster_wait_leader(&c, 5000);
    cr_assert_geq(old, 0);
    /* Isolate the leader; it accepts proposals that can never commit. */
    cluster_partition(&c, (size_t)old, true);
    struct tally t;
    tally_init(&t);
    unsigned n = 0;
    for (; n < 20; n++) {
        int rc = propose_tok(&c, (size_t)old, &t, n, 0, NULL);
        if (rc)
            break; /* it already stepped down (check-quorum): fine, fewer proposals */
    }
    cr_assert_gt(n, 0);
    /* The other two elect a leader of a higher term and commit over those indexes. */
    int nl = -1;
    int64_t t0 = cl_now_ms();
    while (cl_now_ms() - t0 < 5000) {
        uint64_t gen = cluster_role_gen(&c);
        int l = cluster_leader(&c);
        if (l >= 0 && l != old &&
            cluster_propose_wait(&c, (size_t)l, 5000 + (uint64_t)l, 500, NULL, NULL) == 0) {
            nl = l;
            break;
        }
        cluster_wait_role_event(&c, gen, 20);
    }
    cr_assert_geq(nl, 0, "no new leader");
    for (int k = 0; k < 30; k++)
        cr_assert_eq(cluster_propose_wait(&c, (size_t)nl, 6000 + (uint64_t)k, 2000, NULL, NULL), 0);
    /* The old leader is told (it may have stepped down already: the proposals wait, since the
     * entries might still have committed). Healing overwrites them: ELOST, exactly once. */
    cr_assert_eq(tally_done(&t), 0);
    cluster_partition(&c, (size_t)old, false);
    cr_assert(tally_wait(&t, n, 10000), "%zu of %u completed after healing", tally_done(&t), n);
    cr_assert_eq(t.by_err[-RAFT_NODE_ELOST], n);
    cr_assert_eq(t.twice, 0);
    /* And the old leader applies the new leader's entries instead. */
    cr_assert(memfsm_wait_count(c.m[old].fsm, 31, 10000));
    cluster_destroy(&c);
}
