/* node_read.c: linearizable reads (raft_node_read_index) over the core's ReadIndex
 * (raft_read_index, Raft thesis §6.4).
 *
 * Batching: at most one core round is in flight per node. A read that arrives while none is
 * starts one at once (the core sends its confirmation heartbeats, or a follower's request to the
 * leader, in the next ready); reads that arrive while one is in flight wait in the `queued` batch
 * and all join the next round, started by the driver as soon as the current one settles. So N
 * concurrent reads cost about two rounds, not N: one heartbeat round to a majority on the leader,
 * one request/answer with the leader on a follower.
 *
 * A batch moves QUEUED -> ROUND -> INDEXED. The driver settles a ROUND batch when the core
 * releases its ctx in a ready: index 0 (leadership lost, not confirmed in time) fails its reads
 * with ELOST; otherwise the batch is INDEXED at that index and completes once the applier has
 * applied that far (at once if it already has). The core settles every round it accepted within
 * an election timeout or at a role change (raft.h), so a round never blocks the queue forever.
 *
 * Exactly once: a read is in exactly one batch (and, with a timeout, in the deadline heap) from
 * the moment raft_node_read_index accepts it until one thread unlinks it under n->mu: the driver
 * (ELOST, EIO, or success when already applied), the applier (success), the ticker (ETIMEDOUT) or
 * raft_node_stop (ESHUTDOWN, before it returns). The callback runs after the lock is released. */
#include <stdlib.h>
#include <string.h>

#include "raft/node/node_internal.h"

/* ---- batches ---- */

static struct node_read_batch *batch_new(void)
{
    struct node_read_batch *b = calloc(1, sizeof(*b));
    if (b)
        b->state = NODE_BATCH_QUEUED;
    return b;
}

static void batch_add(struct node_read_batch *b, struct node_read *rd)
{
    rd->batch = b;
    rd->prev = NULL;
    rd->next = b->head;
    if (b->head)
        b->head->prev = rd;
    b->head = rd;
    b->n++;
}

static void batch_unlink(struct node_read_batch *b, struct node_read *rd)
{
    if (rd->prev)
        rd->prev->next = rd->next;
    else
        b->head = rd->next;
    if (rd->next)
        rd->next->prev = rd->prev;
    rd->prev = rd->next = NULL;
    rd->batch = NULL;
    b->n--;
}

static void done_push(struct node_read_done_list *l, struct node_read *rd, int err,
                      uint64_t index)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        struct node_read_done *v = realloc(l->v, cap * sizeof(*v));
        if (!v) {
            /* Cannot defer: complete in place (under n->mu; only under memory exhaustion). */
            rd->cb(rd->arg, err, index);
            free(rd);
            return;
        }
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = (struct node_read_done){rd, err, index};
}

/* Complete every read of b and free b (which the caller has already detached). */
static void batch_complete(struct node_reads *t, struct node_read_batch *b, int err,
                           uint64_t index, struct node_read_done_list *out)
{
    while (b->head) {
        struct node_read *rd = b->head;
        batch_unlink(b, rd);
        node_timer_remove(&t->timers, &rd->timer);
        t->count--;
        done_push(out, rd, err, index);
    }
    free(b);
}

void node_read_done_run(struct node_read_done_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        struct node_read_done *d = &l->v[i];
        d->rd->cb(d->rd->arg, d->err, d->index);
        free(d->rd);
    }
    free(l->v);
    memset(l, 0, sizeof(*l));
}

static int map_core_err(int rc)
{
    switch (rc) {
    case RAFT_ENOTLEADER: return RAFT_NODE_ENOTLEADER;
    case RAFT_EBUSY: return RAFT_NODE_EBUSY;
    case RAFT_ENOMEM: return RAFT_NODE_ENOMEM;
    default: return RAFT_NODE_EINVAL;
    }
}

/* n->mu held: hand the queued batch to the core as one round, if none is in flight. Returns the
 * core's refusal (the batch stays queued) or 0. */
static int start_round_locked(struct raft_node *n)
{
    struct node_reads *t = &n->reads;
    if (t->round || !t->queued)
        return 0;
    uint64_t ctx = ++t->next_ctx;
    int rc = raft_read_index(n->r, ctx);
    if (rc)
        return map_core_err(rc);
    t->round = t->queued;
    t->queued = NULL;
    t->round->state = NODE_BATCH_ROUND;
    t->round->ctx = ctx;
    t->rounds++;
    return 0; /* the heartbeats (or the request) leave with the ready: the caller drives */
}

/* ---- entry points ---- */

int raft_node_read_index(struct raft_node *n, int timeout_ms, raft_node_read_fn cb, void *arg)
{
    if (!n || !cb)
        return RAFT_NODE_EINVAL;
    struct node_read *rd = calloc(1, sizeof(*rd));
    if (!rd)
        return RAFT_NODE_ENOMEM;
    rd->cb = cb;
    rd->arg = arg;
    if (timeout_ms > 0)
        rd->timer.deadline_ns = node_now_ns() + (int64_t)timeout_ms * 1000000;

    struct node_reads *t = &n->reads;
    int rc = 0;
    pthread_mutex_lock(&n->mu);
    struct raft_status st;
    raft_status_get(n->r, &st);
    if (n->stopping)
        rc = RAFT_NODE_ESHUTDOWN;
    else if (n->fatal)
        rc = RAFT_NODE_EIO;
    else if (t->count >= n->cfg.max_pending_reads)
        rc = RAFT_NODE_EBUSY;
    else if (st.role != RAFT_LEADER && !st.leader_id)
        rc = RAFT_NODE_ENOTLEADER;
    else if (!t->queued && !(t->queued = batch_new()))
        rc = RAFT_NODE_ENOMEM;
    else if ((rc = node_timer_add(&t->timers, &rd->timer)) == 0) {
        batch_add(t->queued, rd);
        t->count++;
        rc = start_round_locked(n);
        if (rc == 0)
            node_kick_locked(n, NODE_DRIVE_INLINE); /* rd may be done and freed after this */
        if (rc) {
            /* No round was in flight, so this read is the only one queued: refuse it now. */
            batch_unlink(t->queued, rd);
            node_timer_remove(&t->timers, &rd->timer);
            t->count--;
            free(t->queued);
            t->queued = NULL;
        }
    }
    pthread_mutex_unlock(&n->mu);
    if (rc)
        free(rd);
    return rc;
}

void node_reads_on_ready_locked(struct raft_node *n, const struct raft_ready *rd,
                                struct node_read_done_list *out)
{
    struct node_reads *t = &n->reads;
    for (size_t i = 0; i < rd->n_read_states; i++) {
        const struct raft_read_state *s = &rd->read_states[i];
        if (!t->round || s->ctx != t->round->ctx)
            continue; /* not ours any more (cannot happen: one round at a time) */
        struct node_read_batch *b = t->round;
        t->round = NULL;
        if (s->index == 0) {
            batch_complete(t, b, RAFT_NODE_ELOST, 0, out);
        } else if (s->index <= n->applied) {
            batch_complete(t, b, 0, s->index, out);
        } else {
            b->state = NODE_BATCH_INDEXED;
            b->index = s->index;
            struct node_read_batch **pp = &t->indexed;
            while (*pp && (*pp)->index <= b->index)
                pp = &(*pp)->next;
            b->next = *pp;
            *pp = b;
            pthread_cond_signal(&n->apply_cv);
        }
    }
    if (!t->round && t->queued) {
        int rc = start_round_locked(n);
        if (rc) {
            struct node_read_batch *b = t->queued;
            t->queued = NULL;
            batch_complete(t, b, rc, 0, out);
        }
    }
}

void node_reads_applied_locked(struct raft_node *n, struct node_read_done_list *out)
{
    struct node_reads *t = &n->reads;
    while (t->indexed && t->indexed->index <= n->applied) {
        struct node_read_batch *b = t->indexed;
        t->indexed = b->next;
        batch_complete(t, b, 0, b->index, out);
    }
}

void node_reads_expire_locked(struct raft_node *n, int64_t now, struct node_read_done_list *out)
{
    struct node_reads *t = &n->reads;
    struct node_timer *due;
    while ((due = node_timer_due(&t->timers, now))) {
        struct node_read *rd = NODE_CONTAINER_OF(due, struct node_read, timer);
        struct node_read_batch *b = rd->batch;
        node_timer_remove(&t->timers, &rd->timer);
        batch_unlink(b, rd);
        t->count--;
        done_push(out, rd, RAFT_NODE_ETIMEDOUT, 0);
        if (b->n)
            continue;
        /* An emptied batch: a queued one goes, an indexed one leaves the list; a round stays
         * until the core settles its ctx. */
        if (b == t->queued) {
            t->queued = NULL;
            free(b);
        } else if (b->state == NODE_BATCH_INDEXED) {
            struct node_read_batch **pp = &t->indexed;
            while (*pp != b)
                pp = &(*pp)->next;
            *pp = b->next;
            free(b);
        }
    }
}

void node_reads_fail_all_locked(struct raft_node *n, int err, struct node_read_done_list *out)
{
    struct node_reads *t = &n->reads;
    if (t->queued)
        batch_complete(t, t->queued, err, 0, out);
    t->queued = NULL;
    if (t->round)
        batch_complete(t, t->round, err, 0, out);
    t->round = NULL;
    while (t->indexed) {
        struct node_read_batch *b = t->indexed;
        t->indexed = b->next;
        batch_complete(t, b, err, 0, out);
    }
}

void node_reads_free(struct node_reads *t)
{
    /* Every read was completed by raft_node_stop; only empty batches can remain. */
    free(t->queued);
    free(t->round);
    while (t->indexed) {
        struct node_read_batch *b = t->indexed;
        t->indexed = b->next;
        free(b);
    }
    node_timer_heap_free(&t->timers);
    memset(t, 0, sizeof(*t));
}
