/* node_prop.c: proposals (the pending table, timeouts, completion) and the applier thread.
 *
 * Exactly-once completion: a proposal lives in the pending table from the moment the core accepts
 * it (same critical section as raft_propose) until one thread removes it under n->mu - the applier
 * (applied: success, or ELOST when another entry committed at its index), the ticker (timeout),
 * the driver (storage failure) or raft_node_stop (shutdown). The remover runs the callback after
 * dropping n->mu. A proposal that timed out and commits later is simply not found any more.
 *
 * Leadership changes: a proposal stays pending when its node steps down, because the entry may
 * still commit (a new leader may have it: Raft paper §5.4.2 / Figure 8). It is decided when its
 * index is applied - success if the applied entry has the proposal's term, ELOST if not - or
 * earlier, as soon as an entry of a higher term is applied at a lower index: terms never decrease
 * along the log, so every later index then holds a term above the proposal's (Log Matching,
 * §5.3). Its timeout, if any, still bounds the wait when the cluster cannot commit at all.
 *
 * The applier copies up to max_apply_batch committed entries out of the core's in-memory log
 * under n->mu (no queue of its own to bound: the core already holds them), applies them without
 * any lock, then completes the matching proposals. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "raft/node/node_internal.h"

/* ---- the pending table ---- */

int node_props_init(struct node_props *t, uint32_t max_pending)
{
    memset(t, 0, sizeof(*t));
    size_t nb = 64;
    while (nb < max_pending / 2 && nb < (1u << 20))
        nb *= 2;
    t->buckets = calloc(nb, sizeof(*t->buckets));
    if (!t->buckets)
        return RAFT_NODE_ENOMEM;
    t->mask = nb - 1;
    return 0;
}

void node_props_free(struct node_props *t)
{
    /* Only called once every proposal has been completed (raft_node_stop fails them all). */
    free(t->buckets);
    node_timer_heap_free(&t->timers);
    memset(t, 0, sizeof(*t));
}

static size_t bucket_of(const struct node_props *t, uint64_t index)
{
    return (size_t)((index * 0x9E3779B97F4A7C15ull) >> 32) & t->mask;
}

static int props_insert(struct node_props *t, struct node_prop *p)
{
    int rc = node_timer_add(&t->timers, &p->timer);
    if (rc)
        return rc;
    size_t b = bucket_of(t, p->index);
    p->next = t->buckets[b];
    t->buckets[b] = p;
    t->count++;
    return 0;
}

static void props_remove(struct node_props *t, struct node_prop *p)
{
    struct node_prop **pp = &t->buckets[bucket_of(t, p->index)];
    while (*pp != p)
        pp = &(*pp)->next;
    *pp = p->next;
    node_timer_remove(&t->timers, &p->timer);
    t->count--;
}

static void done_push(struct raft_node *n, struct node_done_list *l, struct node_prop *p, int err,
                      uint64_t index, struct raft_fsm_result *res)
{
    if (err)
        n->props_failed++; /* n->mu held by every caller */
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        struct node_done *v = realloc(l->v, cap * sizeof(*v));
        if (!v) {
            /* Cannot defer: complete in place. Callers hold n->mu, so this breaks the "no lock
             * in callbacks" rule only under memory exhaustion, never exactly-once. */
            struct raft_fsm_result zero = {0};
            p->cb(p->arg, err, index, 0, res ? res : &zero);
            if (res)
                free(res->data);
            free(p);
            return;
        }
        l->v = v;
        l->cap = cap;
    }
    struct node_done *d = &l->v[l->n++];
    d->p = p;
    d->err = err;
    d->index = index;
    if (res) {
        d->res = *res;
        res->data = NULL; /* moved */
    } else {
        memset(&d->res, 0, sizeof(d->res));
    }
}

void node_done_run(struct node_done_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        struct node_done *d = &l->v[i];
        d->p->cb(d->p->arg, d->err, d->index, 0, &d->res);
        free(d->res.data); /* NULL if the proposer stole it */
        free(d->p);
    }
    free(l->v);
    memset(l, 0, sizeof(*l));
}

void node_props_fail_all_locked(struct raft_node *n, int err, struct node_done_list *out)
{
    struct node_props *t = &n->props;
    for (size_t b = 0; b <= t->mask && t->count; b++) {
        while (t->buckets[b]) {
            struct node_prop *p = t->buckets[b];
            props_remove(t, p);
            done_push(n, out, p, err, p->index, NULL);
        }
    }
}

void node_props_expire_locked(struct raft_node *n, int64_t now, struct node_done_list *out)
{
    struct node_props *t = &n->props;
    struct node_timer *due;
    while ((due = node_timer_due(&t->timers, now))) {
        struct node_prop *p = NODE_CONTAINER_OF(due, struct node_prop, timer);
        props_remove(t, p);
        done_push(n, out, p, RAFT_NODE_ETIMEDOUT, p->index, NULL);
    }
}

/* ---- proposing ---- */

int raft_node_propose(struct raft_node *n, const void *data, size_t len, int timeout_ms,
                      raft_node_done_fn cb, void *arg, uint64_t *leader_id)
{
    if (leader_id)
        *leader_id = 0;
    if (!n || !cb || (len && !data))
        return RAFT_NODE_EINVAL;
    if (len > n->cfg.max_entry_bytes)
        return RAFT_NODE_ETOOBIG;
    struct node_prop *p = calloc(1, sizeof(*p));
    if (!p)
        return RAFT_NODE_ENOMEM;
    p->cb = cb;
    p->arg = arg;
    if (timeout_ms > 0)
        p->timer.deadline_ns = node_now_ns() + (int64_t)timeout_ms * 1000000;

    int rc;
    uint64_t hint = 0;
    pthread_mutex_lock(&n->mu);
    if (n->stopping) {
        rc = RAFT_NODE_ESHUTDOWN;
    } else if (n->fatal) {
        rc = RAFT_NODE_EIO;
    } else if (n->props.count >= n->cfg.max_pending) {
        rc = RAFT_NODE_EBUSY;
    } else {
        rc = raft_propose(n->r, RAFT_ENTRY_NORMAL, data, (uint32_t)len, &p->index, &p->term,
                          &hint);
        switch (rc) {
        case RAFT_OK:
            rc = props_insert(&n->props, p);
            /* On ENOMEM the entry is in the log but nobody waits for it: harmless. */
            node_kick_locked(n, NODE_DRIVE_INLINE);
            break;
        case RAFT_ENOTLEADER: rc = RAFT_NODE_ENOTLEADER; break;
        case RAFT_EBUSY: rc = RAFT_NODE_EBUSY; break;
        case RAFT_ETOOBIG: rc = RAFT_NODE_ETOOBIG; break;
        case RAFT_ENOMEM: rc = RAFT_NODE_ENOMEM; break;
        default: rc = RAFT_NODE_EINVAL; break;
        }
    }
    pthread_mutex_unlock(&n->mu);
    if (rc) {
        free(p);
        if (rc == RAFT_NODE_ENOTLEADER && leader_id)
            *leader_id = hint;
    }
    return rc;
}

struct node_waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    int err;
    uint64_t index;
    struct raft_fsm_result res;
};

static void waiter_done(void *arg, int err, uint64_t index, uint64_t leader_id,
                        struct raft_fsm_result *res)
{
    (void)leader_id;
    struct node_waiter *w = arg;
    pthread_mutex_lock(&w->mu);
    w->err = err;
    w->index = index;
    if (res) {
        w->res = *res;
        res->data = NULL; /* the waiter owns it now */
    }
    w->done = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

int raft_node_propose_wait(struct raft_node *n, const void *data, size_t len, int timeout_ms,
                           struct raft_fsm_result *res, uint64_t *index, uint64_t *leader_id)
{
    struct node_waiter w = {.done = false};
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    int rc = raft_node_propose(n, data, len, timeout_ms, waiter_done, &w, leader_id);
    if (rc == 0) {
        /* The proposal's own timeout (enforced by the ticker) bounds this wait. */
        pthread_mutex_lock(&w.mu);
        while (!w.done)
            pthread_cond_wait(&w.cv, &w.mu);
        pthread_mutex_unlock(&w.mu);
        rc = w.err;
        if (index)
            *index = w.index;
        if (res)
            *res = w.res;
        else
            free(w.res.data);
    }
    pthread_cond_destroy(&w.cv);
    pthread_mutex_destroy(&w.mu);
    return rc;
}

/* ---- the applier ---- */

/* n->mu held: after entry (index, term) was applied, decide the proposals it settles. */
static void settle_locked(struct raft_node *n, uint64_t index, uint64_t term,
                          struct raft_fsm_result *res, struct node_done_list *out)
{
    struct node_props *t = &n->props;
    struct node_prop **pp = &t->buckets[bucket_of(t, index)];
    bool used = false;
    while (*pp) {
        struct node_prop *p = *pp;
        if (p->index != index) {
            pp = &p->next;
            continue;
        }
        props_remove(t, p); /* unlinks *pp: do not advance */
        if (p->term == term && !used) {
            done_push(n, out, p, 0, index, res);
            used = true;
        } else {
            done_push(n, out, p, RAFT_NODE_ELOST, index, NULL);
        }
    }
}

/* n->mu held: an entry of `term` was applied; every pending proposal of a lower term sits at a
 * higher index (lower ones were settled) that must now hold a term >= `term`: it is lost. */
static void settle_lower_terms_locked(struct raft_node *n, uint64_t term,
                                      struct node_done_list *out)
{
    struct node_props *t = &n->props;
    for (size_t b = 0; b <= t->mask && t->count; b++) {
        struct node_prop **pp = &t->buckets[b];
        while (*pp) {
            struct node_prop *p = *pp;
            if (p->term < term) {
                props_remove(t, p);
                done_push(n, out, p, RAFT_NODE_ELOST, p->index, NULL);
            } else {
                pp = &p->next;
            }
        }
    }
}

/* A batch of committed entries copied out of the core: one allocation for the entries (all of
 * them, for settling) and one blob for the NORMAL payloads passed to the state machine. */
struct apply_batch {
    struct raft_entry *all; /* lo..hi, payloads not copied (data NULL) */
    struct raft_entry *normal;
    size_t n_all, n_normal;
    uint8_t *blob;
};

/* n->mu held. */
static int batch_copy_locked(struct raft_node *n, uint64_t lo, uint64_t hi, struct apply_batch *b)
{
    memset(b, 0, sizeof(*b));
    size_t cnt = (size_t)(hi - lo + 1), bytes = 0, nn = 0;
    for (uint64_t i = lo; i <= hi; i++) {
        const struct raft_entry *e = raft_log_get(n->r, i);
        if (!e)
            return RAFT_NODE_EIO; /* committed entries are never dropped: cannot happen */
        if (e->type == RAFT_ENTRY_NORMAL) {
            bytes += e->len;
            nn++;
        }
    }
    b->all = calloc(cnt, sizeof(*b->all));
    b->normal = nn ? calloc(nn, sizeof(*b->normal)) : NULL;
    b->blob = bytes ? malloc(bytes) : NULL;
    if (!b->all || (nn && !b->normal) || (bytes && !b->blob)) {
        free(b->all);
        free(b->normal);
        free(b->blob);
        return RAFT_NODE_ENOMEM;
    }
    uint8_t *p = b->blob;
    for (uint64_t i = lo; i <= hi; i++) {
        const struct raft_entry *e = raft_log_get(n->r, i);
        struct raft_entry *a = &b->all[b->n_all++];
        *a = *e;
        a->data = NULL;
        if (e->type == RAFT_ENTRY_NORMAL) {
            struct raft_entry *x = &b->normal[b->n_normal++];
            *x = *e;
            if (e->len) {
                memcpy(p, e->data, e->len);
                x->data = p;
                p += e->len;
            } else {
                x->data = NULL;
            }
        }
    }
    return 0;
}

static void batch_free(struct apply_batch *b)
{
    free(b->all);
    free(b->normal);
    free(b->blob);
}

/* n->mu held, n->applying ours (taken by the caller): applies one batch of committed entries
 * and completes what it settles; false when the node must stop applying (fatal). Releases and
 * retakes n->mu. */
static bool apply_once_locked(struct raft_node *n)
{
    struct raft_fsm *fsm = n->cfg.fsm;
    struct raft_fsm_result *results = n->apply_results;
    uint64_t lo = n->applied + 1, hi = n->apply_to;
    if (hi - lo + 1 > n->cfg.max_apply_batch)
        hi = lo + n->cfg.max_apply_batch - 1;
    struct apply_batch b;
    int rc = batch_copy_locked(n, lo, hi, &b);
    if (rc) {
        node_fail_locked(n, rc, "applier: cannot copy committed entries");
        return false;
    }
    pthread_mutex_unlock(&n->mu);

    if (b.n_normal) {
        memset(results, 0, b.n_normal * sizeof(*results));
        uint64_t t0 = metrics_now_ns();
        rc = fsm->apply(fsm->ctx, b.normal, b.n_normal, hi, results);
        uint64_t took = metrics_now_ns() - t0;
        metrics_histogram_observe(&n->apply_hist, took);
        uint64_t expected = n->cfg.warn_apply_ms * 1000000;
        if (took > expected) /* etcd's words; per batch here, not per request; rate-limited */
            log_emit_limited(LOG_LEVEL_WARN, __FILE__, __LINE__, n->cfg.id,
                             LOG_FIELDS(LOG_ID("member", n->cfg.id), LOG_DUR("took", took),
                                        LOG_DUR("expected-duration", expected),
                                        LOG_U64("entries", b.n_normal), LOG_U64("first-index", lo),
                                        LOG_U64("last-index", hi)),
                             "apply request took too long");
    }

    pthread_mutex_lock(&n->mu);
    if (rc < 0) {
        /* fsm.h: a failing apply is fatal; the state machine is now behind the log. */
        for (size_t i = 0; i < b.n_normal; i++)
            free(results[i].data);
        batch_free(&b);
        char what[96]; /* the cause in the one log line (a full disk says so) */
        snprintf(what, sizeof what, "state machine apply() failed: %s", strerror(-rc));
        node_fail_locked(n, RAFT_NODE_EIO, what);
        return false;
    }
    struct node_done_list l = {0};
    size_t k = 0; /* position in results (NORMAL entries only) */
    for (size_t i = 0; i < b.n_all; i++) {
        const struct raft_entry *e = &b.all[i];
        n->snap_log_bytes += e->len + NODE_ENTRY_OVERHEAD;
        struct raft_fsm_result *res = e->type == RAFT_ENTRY_NORMAL ? &results[k++] : NULL;
        if (n->props.count)
            settle_locked(n, e->index, e->term, res, &l);
        if (res) {
            free(res->data); /* nobody waited for it here (NULL when moved) */
            res->data = NULL;
        }
    }
    uint64_t last_term = b.all[b.n_all - 1].term;
    if (last_term > n->applied_term) {
        if (n->props.count)
            settle_lower_terms_locked(n, last_term, &l);
        n->applied_term = last_term;
    }
    n->applied = hi;
    raft_applied(n->r, hi);
    node_snap_applied_locked(n); /* a snapshot may be due */
    batch_free(&b);
    struct node_read_done_list rl = {0};
    node_reads_applied_locked(n, &rl); /* linearizable reads waiting for this index */
    if (l.n || rl.n) {
        pthread_mutex_unlock(&n->mu);
        node_done_run(&l);
        node_read_done_run(&rl);
        pthread_mutex_lock(&n->mu);
    }
    return true;
}

/* Larger batches go to the applier thread: under load a transport thread applying hundreds of
 * entries and sending their replies would stop reading the network (measured: fewer puts/s). */
#define NODE_INLINE_APPLY_MAX 8

void node_apply_inline_locked(struct raft_node *n)
{
    if (n->applying || n->installing || n->stopping || n->fatal || n->apply_to <= n->applied ||
        n->apply_to - n->applied > NODE_INLINE_APPLY_MAX || !n->apply_results)
        return;
    n->applying = true;
    apply_once_locked(n);
    n->applying = false;
    if (n->installing)
        pthread_cond_broadcast(&n->snap_cv); /* the install waits for the applier to let go */
    /* More committed meanwhile (or a stop waits): the applier thread's turn. */
    if (n->apply_to > n->applied || n->stopping)
        pthread_cond_broadcast(&n->apply_cv);
}

static void *applier_main(void *arg)
{
    struct raft_node *n = arg;
    pthread_mutex_lock(&n->mu);
    for (;;) {
        while (!n->stopping && !n->fatal &&
               (n->apply_to <= n->applied || n->applying || n->installing))
            pthread_cond_wait(&n->apply_cv, &n->mu);
        if (n->stopping || n->fatal)
            break;
        n->applying = true;
        bool ok = apply_once_locked(n);
        n->applying = false;
        if (n->installing)
            pthread_cond_broadcast(&n->snap_cv);
        if (!ok)
            break;
    }
    /* An inline applier may still be finishing: the node is freed after this thread ends. */
    while (n->applying)
        pthread_cond_wait(&n->apply_cv, &n->mu);
    pthread_mutex_unlock(&n->mu);
    return NULL;
}

int node_applier_start(struct raft_node *n)
{
    n->apply_results = calloc(n->cfg.max_apply_batch, sizeof(*n->apply_results));
    if (!n->apply_results)
        return RAFT_NODE_ENOMEM;
    if (pthread_create(&n->applier, NULL, applier_main, n))
        return RAFT_NODE_ENOMEM;
    pthread_setname_np(n->applier, "raft-apply");
    return 0;
}
