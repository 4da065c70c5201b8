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
 * match index (raft_append.c). */
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
    for (size_t i = 0; i < n->n_peers; i++) {
        const struct raft_msg *first;
        size_t cnt = raft_ready_msgs_to(rd, n->peers[i].id, &first);
        /* InstallSnapshot goes to its own sender thread (node_snap.c), not the outbox: it
         * carries a whole file. The messages around it keep their order. */
        size_t k = 0;
        while (k < cnt) {
            size_t run = 0;
            while (k + run < cnt && first[k + run].type != RAFT_MSG_SNAPSHOT)
                run++;
            size_t sent = run ? try_send_now(n, &n->peers[i], first + k, run) : 0;
            if (run > sent)
                outbox_push(n, &n->peers[i], first + k + sent, run - sent);
            k += run;
            if (k < cnt)
                node_snap_send(n, &n->peers[i], &first[k++]);
        }
    }
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

int node_peers_start(struct raft_node *n)
{
    n->peers = calloc(n->cfg.n_peers, sizeof(*n->peers));
    if (!n->peers)
        return RAFT_NODE_ENOMEM;
    for (size_t i = 0; i < n->cfg.n_peers; i++) {
        if (n->cfg.peers[i] == n->cfg.id)
            continue;
        struct node_peer *p = &n->peers[n->n_peers++];
        p->node = n;
        p->id = n->cfg.peers[i];
        pthread_mutex_init(&p->mu, NULL);
        pthread_cond_init(&p->cv, NULL);
        if (pthread_create(&p->thread, NULL, replicator_main, p) != 0)
            return RAFT_NODE_ENOMEM;
        p->started = true;
        node_members_set_peer(n, p->id, true);
        char name[16];
        snprintf(name, sizeof name, "raft-rep-%" PRIx64, p->id & 0xffff);
        pthread_setname_np(p->thread, name);
    }
    return 0;
}

void node_peers_stop(struct raft_node *n)
{
    for (size_t i = 0; i < n->n_peers; i++) {
        struct node_peer *p = &n->peers[i];
        if (p->started) {
            pthread_mutex_lock(&p->mu);
            p->stop = true;
            pthread_cond_signal(&p->cv);
            pthread_mutex_unlock(&p->mu);
            pthread_join(p->thread, NULL);
            if (n->cfg.transport->close_peer)
                n->cfg.transport->close_peer(n->cfg.transport->ctx, p->id);
        }
        msgs_free(p->box, p->n);
        free(p->box);
        pthread_cond_destroy(&p->cv);
        pthread_mutex_destroy(&p->mu);
    }
    n->n_peers = 0;
}
