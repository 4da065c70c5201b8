/* node_peer.c: one outbox and one replicator thread per peer.
 *
 * The driving thread (node_driver.c "Who drives") first offers each ready's messages for peer P to
 * the transport's non-blocking try_send when nothing is queued for P and no send to P is in
 * progress: on the commit path that saves waking the replicator. Otherwise, and for whatever
 * try_send did not take, it copies them into P's outbox (under P's own mutex, never with the
 * node mutex held) and signals P's replicator. The replicator takes everything queued in
 * one go and hands it to transport->send() as one batch, so a burst of AppendEntries, heartbeats
 * and responses to one peer costs one send call. Batching by entries and bytes inside each
 * AppendEntries, and the pipeline window by messages and bytes, are the core's job (raft.h flow
 * control); this layer only keeps the peers apart: a send() that blocks on a slow or dead peer
 * stalls that peer's thread alone.
 *
 * Bounds: an outbox holds at most cfg.outbox_msgs messages and cfg.outbox_bytes payload bytes.
 * While its replicator is stuck the core keeps producing heartbeats (and, until its window is
 * full, appends), so on overflow the OLDEST messages are dropped: the newest carry the freshest
 * term and commit index, and Raft tolerates loss - a follower that misses appends rejects the
 * next one (or the leader sees no progress for two heartbeats) and the core re-probes it from its
 * match index (raft_append.c).
 *
 * Peers come and go (node_peers_set, once the core reports a new configuration): the table
 * n->peers holds pointers to heap-allocated peers, replaced under n->peers_mu, which the routing
 * thread holds for the whole of node_route_msgs - one uncontended lock per ready, none per
 * message. A removed peer leaves the table first, so nothing routes to it any more; then its
 * replicator is woken and joined, its outbox dropped, the transport's close_peer called, and it
 * is freed. Messages the core still addresses to it are dropped like any message to an id
 * that is not a peer. A snapshot transfer to it in progress carries on as an orphan
 * (node_snap.c) rather than holding up the removal for the length of a transfer. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "raft/node/node_internal.h"

static size_t msg_bytes(const struct raft_msg *m)
{
    size_t b = 0;
    for (uint32_t i = 0; i < m->n_entries; i++)
        b += m->entries[i].len;
    return b;
}

/* Deep copy with one allocation: the entry array followed by every payload. Freed with
 * free(dst->entries). */
static int msg_copy(struct raft_msg *dst, const struct raft_msg *src)
{
    *dst = *src;
    dst->entries = NULL;
    if (!src->n_entries)
        return 0;
    size_t bytes = msg_bytes(src);
    size_t head = src->n_entries * sizeof(struct raft_entry);
    uint8_t *blob = malloc(head + bytes);
    if (!blob)
        return RAFT_NODE_ENOMEM;
    struct raft_entry *e = (struct raft_entry *)blob;
    uint8_t *p = blob + head;
    for (uint32_t i = 0; i < src->n_entries; i++) {
        e[i] = src->entries[i];
        if (e[i].len) {
            memcpy(p, src->entries[i].data, e[i].len);
            e[i].data = p;
            p += e[i].len;
        } else {
            e[i].data = NULL;
        }
    }
    dst->entries = e;
    return 0;
}

static void msgs_free(struct raft_msg *m, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(m[i].entries);
}

/* peer->mu held: make room for `cnt` messages of `bytes` payload by dropping the oldest. */
static void outbox_make_room(struct raft_node *n, struct node_peer *p, size_t cnt, size_t bytes)
{
    size_t drop = 0, freed = 0;
    while (drop < p->n &&
           (p->n - drop + cnt > n->cfg.outbox_msgs || p->bytes - freed + bytes > n->cfg.outbox_bytes)) {
        freed += msg_bytes(&p->box[drop]);
        drop++;
    }
    if (!drop)
        return;
    msgs_free(p->box, drop);
    memmove(p->box, p->box + drop, (p->n - drop) * sizeof(*p->box));
    p->n -= drop;
    p->bytes -= freed;
    p->dropped += drop;
}

static void outbox_push(struct raft_node *n, struct node_peer *p, const struct raft_msg *m,
                        size_t cnt)
{
    /* Copy outside the peer lock so the replicator is not held up by large payloads. */
    struct raft_msg *cp = malloc(cnt * sizeof(*cp));
    if (!cp)
        return; /* dropped: the core retries */
    size_t ok = 0, bytes = 0;
    for (size_t i = 0; i < cnt; i++) {
        if (msg_copy(&cp[ok], &m[i]) == 0) {
            bytes += msg_bytes(&cp[ok]);
            ok++;
        }
    }
    /* A single batch bigger than the whole outbox keeps only its newest messages. */
    size_t skip = 0;
    while (ok - skip > n->cfg.outbox_msgs ||
           (ok - skip > 1 && bytes > n->cfg.outbox_bytes)) {
        bytes -= msg_bytes(&cp[skip]);
        skip++;
    }
    msgs_free(cp, skip);

    pthread_mutex_lock(&p->mu);
    p->dropped += skip;
    outbox_make_room(n, p, ok - skip, bytes);
    if (p->n + (ok - skip) > p->cap) {
        size_t cap = p->cap ? p->cap : 64;
        while (cap < p->n + (ok - skip))
            cap *= 2;
        struct raft_msg *nb = realloc(p->box, cap * sizeof(*nb));
        if (!nb) {
            pthread_mutex_unlock(&p->mu);
            msgs_free(cp + skip, ok - skip);
            free(cp);
            return;
        }
        p->box = nb;
        p->cap = cap;
    }
    memcpy(p->box + p->n, cp + skip, (ok - skip) * sizeof(*cp));
    p->n += ok - skip;
    p->bytes += bytes;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    free(cp);
}

/* The fast path: when nothing is queued for p and its replicator is not sending, the thread
 * that made the messages hands them to the transport itself (try_send never blocks), saving a
 * thread wake-up on the commit path; whatever does not fit goes to the outbox, after them. Only
 * the thread driving the node routes messages, so nothing can be queued for p meanwhile. */
static size_t try_send_now(struct raft_node *n, struct node_peer *p, const struct raft_msg *m,
                           size_t cnt)
{
    const struct raft_transport *t = n->cfg.transport;
    if (!t->try_send)
        return 0;
    pthread_mutex_lock(&p->mu);
    bool idle = !p->n && !p->busy && !p->stop;
    p->busy = p->busy || idle;
    pthread_mutex_unlock(&p->mu);
    if (!idle)
        return 0;
    long sent = t->try_send(t->ctx, p->id, m, cnt);
    pthread_mutex_lock(&p->mu);
    p->busy = false;
    pthread_mutex_unlock(&p->mu);
    /* Unreachable: dropped, as the replicator would (the core retries). */
    return sent < 0 ? cnt : (size_t)sent;
}

void node_route_msgs(struct raft_node *n, const struct raft_ready *rd)
{
    if (!rd->n_msgs)
        return;
    /* Held while routing, so node_peers_set cannot free a peer under us. Messages to an id that
     * is not a peer (any more: the core may still address a member just removed) are dropped. */
    pthread_mutex_lock(&n->peers_mu);
    for (size_t i = 0; i < n->n_peers; i++) {
        struct node_peer *p = n->peers[i];
        const struct raft_msg *first;
        size_t cnt = raft_ready_msgs_to(rd, p->id, &first);
        for (size_t j = 0; j < cnt; j++)
            if (first[j].type == RAFT_MSG_APPEND)
                metrics_histogram_observe(&p->append_entries, first[j].n_entries);
        /* InstallSnapshot goes to its own sender thread (node_snap.c), not the outbox: it
         * carries a whole file. The messages around it keep their order. */
        size_t k = 0;
        while (k < cnt) {
            size_t run = 0;
            while (k + run < cnt && first[k + run].type != RAFT_MSG_SNAPSHOT)
                run++;
            size_t sent = run ? try_send_now(n, p, first + k, run) : 0;
            if (run > sent)
                outbox_push(n, p, first + k + sent, run - sent);
            k += run;
            if (k < cnt)
                node_snap_send(n, p, &first[k++]);
        }
    }
    pthread_mutex_unlock(&n->peers_mu);
}

static void *replicator_main(void *arg)
{
    struct node_peer *p = arg;
    struct raft_node *n = p->node;
    struct raft_msg *spare = NULL;
    size_t spare_cap = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && (!p->n || p->busy))
            pthread_cond_wait(&p->cv, &p->mu);
        if (p->stop)
            break;
        /* Take the whole outbox; give the replicator's previous (empty) buffer back to it. */
        struct raft_msg *batch = p->box;
        size_t cnt = p->n, cap = p->cap;
        p->box = spare;
        p->cap = spare_cap;
        p->n = 0;
        p->bytes = 0;
        p->busy = true;
        pthread_mutex_unlock(&p->mu);

        /* Returns an error when the peer is unreachable: the messages are lost, which Raft
         * tolerates (the core resends on its heartbeat / probe schedule). */
        n->cfg.transport->send(n->cfg.transport->ctx, p->id, batch, cnt);
        msgs_free(batch, cnt);
        spare = batch;
        spare_cap = cap;
        pthread_mutex_lock(&p->mu);
        p->busy = false;
    }
    pthread_mutex_unlock(&p->mu);
    free(spare);
    return NULL;
}

/* A new peer with its replicator running, or NULL. */
static struct node_peer *peer_new(struct raft_node *n, uint64_t id)
{
    struct node_peer *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->node = n;
    p->id = id;
    metrics_histogram_init(&p->append_entries, raft_node_append_bounds, RAFT_NODE_APPEND_BOUNDS, 1);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    if (pthread_create(&p->thread, NULL, replicator_main, p) != 0) {
        pthread_cond_destroy(&p->cv);
        pthread_mutex_destroy(&p->mu);
        free(p);
        return NULL;
    }
    char name[16];
    snprintf(name, sizeof name, "raft-rep-%" PRIx64, id & 0xffff);
    pthread_setname_np(p->thread, name);
    return p;
}

/* p is in no table any more, so nothing routes to it: stop its replicator (it may first finish
 * a send in progress), drop what is queued, tell the transport, free it. */
static void peer_free(struct raft_node *n, struct node_peer *p, bool close)
{
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->thread, NULL);
    msgs_free(p->box, p->n);
    free(p->box);
    if (close && n->cfg.transport->close_peer)
        n->cfg.transport->close_peer(n->cfg.transport->ctx, p->id);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

static struct node_peer *peer_find(struct node_peer *const *v, size_t cnt, uint64_t id)
{
    for (size_t i = 0; i < cnt; i++)
        if (v[i]->id == id)
            return v[i];
    return NULL;
}

int node_peers_set(struct raft_node *n, const uint64_t *ids, size_t k)
{
    if (!ids && k)
        return RAFT_NODE_EINVAL;
    struct node_peer *next[RAFT_MAX_NODES], *added[RAFT_MAX_NODES], *gone[RAFT_MAX_NODES];
    size_t nn = 0, na = 0, ng = 0;
    for (size_t i = 0; i < k; i++) {
        if (!ids[i])
            return RAFT_NODE_EINVAL;
        bool dup = ids[i] == n->cfg.id;
        for (size_t j = 0; j < i && !dup; j++)
            dup = ids[j] == ids[i];
        if (!dup && ++nn > RAFT_MAX_NODES)
            return RAFT_NODE_EINVAL;
    }
    nn = 0;

    pthread_mutex_lock(&n->peers_set_mu);
    /* Only node_peers_set writes the table and it holds peers_set_mu: reading it here needs no
     * peers_mu. The new peers start before the table changes, so a failure changes nothing. */
    for (size_t i = 0; i < k; i++) {
        if (ids[i] == n->cfg.id || peer_find(next, nn, ids[i]))
            continue;
        struct node_peer *p = peer_find(n->peers, n->n_peers, ids[i]);
        if (!p) {
            p = peer_new(n, ids[i]);
            if (!p) {
                while (na)
                    peer_free(n, added[--na], false);
                pthread_mutex_unlock(&n->peers_set_mu);
                return RAFT_NODE_ENOMEM;
            }
            added[na++] = p;
        }
        next[nn++] = p;
    }
    for (size_t i = 0; i < n->n_peers; i++)
        if (!peer_find(next, nn, n->peers[i]->id))
            gone[ng++] = n->peers[i];
    for (size_t i = 0; i < na; i++)
        node_members_set_peer(n, added[i]->id, true);

    pthread_mutex_lock(&n->peers_mu); /* waits for a routing in progress to finish */
    memcpy(n->peers, next, nn * sizeof(*next));
    n->n_peers = nn;
    pthread_mutex_unlock(&n->peers_mu);

    /* No thread can reach the removed peers through the table now. A snapshot sender holds no
     * pointer to its peer, only its own state, which the orphan list keeps. */
    pthread_mutex_lock(&n->mu);
    for (size_t i = 0; i < ng; i++)
        node_snap_orphan_locked(n, gone[i]);
    node_snap_reap_locked(n);
    pthread_mutex_unlock(&n->mu);
    for (size_t i = 0; i < ng; i++) {
        node_members_set_peer(n, gone[i]->id, false);
        peer_free(n, gone[i], true);
    }
    pthread_mutex_unlock(&n->peers_set_mu);
    return 0;
}

int node_peers_start(struct raft_node *n)
{
    return node_peers_set(n, n->cfg.peers, n->cfg.n_peers);
}

void node_peers_stop(struct raft_node *n)
{
    pthread_mutex_lock(&n->peers_set_mu);
    pthread_mutex_lock(&n->peers_mu);
    size_t cnt = n->n_peers;
    struct node_peer *v[RAFT_MAX_NODES];
    memcpy(v, n->peers, cnt * sizeof(*v));
    n->n_peers = 0;
    pthread_mutex_unlock(&n->peers_mu);
    for (size_t i = 0; i < cnt; i++)
        peer_free(n, v[i], true);
    pthread_mutex_unlock(&n->peers_set_mu);
}

const uint64_t raft_node_append_bounds[RAFT_NODE_APPEND_BOUNDS] = {
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096,
};

size_t raft_node_peers_view(struct raft_node *n, struct raft_node_peer_view *out, size_t max)
{
    pthread_mutex_lock(&n->peers_mu);
    size_t total = n->n_peers, k = total < max ? total : max;
    for (size_t i = 0; i < k; i++) {
        struct node_peer *p = n->peers[i];
        struct raft_node_peer_view *v = &out[i];
        memset(v, 0, sizeof *v);
        v->id = p->id;
        metrics_histogram_read(&p->append_entries, v->append_counts, &v->append_sum);
        pthread_mutex_lock(&p->mu);
        v->outbox_msgs = p->n;
        v->outbox_bytes = p->bytes;
        v->outbox_dropped = p->dropped;
        pthread_mutex_unlock(&p->mu);
    }
    pthread_mutex_lock(&n->mu);
    for (size_t i = 0; i < k; i++) {
        struct raft_progress_info pi;
        if (raft_progress_get(n->r, out[i].id, &pi) == 0) {
            out[i].progress_known = true;
            out[i].state = pi.state;
            out[i].match = pi.match;
            out[i].inflight_msgs = pi.inflight_msgs;
            out[i].inflight_bytes = pi.inflight_bytes;
        }
    }
    pthread_mutex_unlock(&n->mu);
    pthread_mutex_unlock(&n->peers_mu);
    return total;
}
