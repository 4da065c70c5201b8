/* memnet.c: see memnet.h. One mutex for the whole network (tests are small); each endpoint has a
 * delivery thread that steps messages into its node with the mutex released. */
#include "tests/node/memnet.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "raft/snap/snap.h"

/* Inbound bound per endpoint: beyond it send() waits up to MEMNET_SEND_WAIT_MS and then fails,
 * as a real transport with a full window would (transport.h: "may block for a bounded time"). */
#define MEMNET_QUEUE_MAX 2048
#define MEMNET_SEND_WAIT_MS 100

struct batch {
    struct batch *next;
    size_t n;
    struct raft_msg *m; /* deep copies; entries of each in one allocation */
};

/* What one endpoint sent to one id (net->mu). */
struct link {
    uint64_t to;
    uint64_t msgs;   /* messages queued for delivery to `to` */
    unsigned closes; /* close_peer(to) calls */
};

#define MEMNET_LINKS (2 * MEMNET_MAX)

struct endpoint {
    struct memnet *net;
    uint64_t id;
    struct raft_transport tr;
    struct raft_node *node;
    bool partitioned, stalled, in_step, stop;
    unsigned snap_users; /* snapshot transfers into this endpoint's node running */
    atomic_uint try_calls;
    struct batch *head, *tail;
    size_t queued; /* messages in the queue */
    pthread_cond_t cv;    /* delivery thread: work or stop */
    pthread_cond_t space; /* senders: room in the queue */
    pthread_cond_t idle;  /* detach: no step running */
    pthread_t thread;
    struct link links[MEMNET_LINKS];
    size_t n_links;
};

struct memnet {
    pthread_mutex_t mu;
    struct endpoint *ep[MEMNET_MAX];
    size_t n_ep;
    unsigned drop_permille;
    unsigned snap_cuts; /* the next snap_cuts transfers break after their first chunk */
    bool snap_hold;     /* transfers wait after their first chunk until released */
    unsigned snap_held; /* transfers waiting there */
    pthread_cond_t snap_cv; /* snap_hold cleared, snap_held changed */
    uint64_t rng;
    struct memnet_stats st;
};

static void cond_init_mono(pthread_cond_t *cv)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
}

static void batch_free(struct batch *b)
{
    for (size_t i = 0; i < b->n; i++)
        free(b->m[i].entries);
    free(b->m);
    free(b);
}

static struct endpoint *find(struct memnet *net, uint64_t id)
{
    for (size_t i = 0; i < net->n_ep; i++)
        if (net->ep[i]->id == id)
            return net->ep[i];
    return NULL;
}

/* net->mu held: from's counters for `to`, or NULL when MEMNET_LINKS ids are taken. */
static struct link *link_of(struct endpoint *from, uint64_t to)
{
    for (size_t i = 0; i < from->n_links; i++)
        if (from->links[i].to == to)
            return &from->links[i];
    if (from->n_links == MEMNET_LINKS)
        return NULL;
    struct link *l = &from->links[from->n_links++];
    l->to = to;
    return l;
}

static void drop_queue(struct endpoint *ep)
{
    while (ep->head) {
        struct batch *b = ep->head;
        ep->head = b->next;
        ep->net->st.dropped += b->n;
        batch_free(b);
    }
    ep->tail = NULL;
    ep->queued = 0;
    pthread_cond_broadcast(&ep->space);
}

static void *deliver_main(void *arg)
{
    struct endpoint *ep = arg;
    struct memnet *net = ep->net;
    pthread_mutex_lock(&net->mu);
    for (;;) {
        while (!ep->stop && (!ep->head || ep->stalled || !ep->node))
        {
            if (ep->head && (!ep->node || ep->partitioned))
                drop_queue(ep);
            else
                pthread_cond_wait(&ep->cv, &net->mu);
        }
        if (ep->stop)
            break;
        struct batch *b = ep->head;
        ep->head = b->next;
        if (!ep->head)
            ep->tail = NULL;
        ep->queued -= b->n;
        pthread_cond_broadcast(&ep->space);
        if (ep->partitioned) {
            net->st.dropped += b->n;
            batch_free(b);
            continue;
        }
        struct raft_node *node = ep->node;
        ep->in_step = true;
        pthread_mutex_unlock(&net->mu);
        for (size_t i = 0; i < b->n; i++)
            raft_node_step(node, &b->m[i]);
        size_t cnt = b->n;
        batch_free(b);
        pthread_mutex_lock(&net->mu);
        ep->in_step = false;
        net->st.delivered += cnt;
        pthread_cond_broadcast(&ep->idle);
    }
    pthread_mutex_unlock(&net->mu);
    return NULL;
}

static int copy_msgs(const struct raft_msg *in, size_t n, struct raft_msg **out)
{
    struct raft_msg *m = calloc(n, sizeof(*m));
    if (!m)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        m[i] = in[i];
        m[i].entries = NULL;
        if (!in[i].n_entries)
            continue;
        size_t bytes = 0;
        for (uint32_t k = 0; k < in[i].n_entries; k++)
            bytes += in[i].entries[k].len;
        size_t head = in[i].n_entries * sizeof(struct raft_entry);
        uint8_t *blob = malloc(head + bytes);
        if (!blob) {
            for (size_t j = 0; j < i; j++)
                free(m[j].entries);
            free(m);
            return -ENOMEM;
        }
        struct raft_entry *e = (struct raft_entry *)blob;
        uint8_t *p = blob + head;
        for (uint32_t k = 0; k < in[i].n_entries; k++) {
            e[k] = in[i].entries[k];
            if (e[k].len) {
                memcpy(p, in[i].entries[k].data, e[k].len);
                e[k].data = p;
                p += e[k].len;
            }
        }
        m[i].entries = e;
    }
    *out = m;
    return 0;
}

static uint64_t rnd(struct memnet *net)
{
    uint64_t x = net->rng += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* may_wait false (try_send): a full queue returns 1 at once, nothing sent. */
static int ep_send_mode(void *ctx, uint64_t to, const struct raft_msg *msgs, size_t n,
                        bool may_wait)
{
    struct endpoint *from = ctx;
    struct memnet *net = from->net;
    struct raft_msg *m;
    if (copy_msgs(msgs, n, &m))
        return -ENOMEM;
    struct batch *b = calloc(1, sizeof(*b));
    if (!b) {
        for (size_t i = 0; i < n; i++)
            free(m[i].entries);
        free(m);
        return -ENOMEM;
    }
    b->m = m;
    b->n = n;

    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_nsec += MEMNET_SEND_WAIT_MS * 1000000L;
    dl.tv_sec += dl.tv_nsec / 1000000000L;
    dl.tv_nsec %= 1000000000L;

    pthread_mutex_lock(&net->mu);
    net->st.send_calls++;
    net->st.sent += n;
    struct endpoint *dst = find(net, to);
    int rc = 0;
    if (!dst || !dst->node || dst->partitioned || from->partitioned) {
        rc = -EHOSTUNREACH;
    } else {
        if (net->drop_permille) {
            size_t keep = 0;
            for (size_t i = 0; i < b->n; i++) {
                if (rnd(net) % 1000 < net->drop_permille) {
                    free(b->m[i].entries);
                    net->st.dropped++;
                } else {
                    b->m[keep++] = b->m[i];
                }
            }
            b->n = keep;
        }
        while (rc == 0 && dst->queued + b->n > MEMNET_QUEUE_MAX && dst->queued > 0) {
            if (!may_wait) {
                rc = 1;
                break;
            }
            if (pthread_cond_timedwait(&dst->space, &net->mu, &dl) == ETIMEDOUT)
                rc = -EAGAIN;
            if (!dst->node || dst->partitioned || from->partitioned)
                rc = -EHOSTUNREACH;
        }
    }
    if (rc == 0 && b->n) {
        struct link *l = link_of(from, to);
        if (l)
            l->msgs += b->n;
        if (dst->tail)
            dst->tail->next = b;
        else
            dst->head = b;
        dst->tail = b;
        dst->queued += b->n;
        pthread_cond_signal(&dst->cv);
        b = NULL;
    } else if (rc < 0) {
        net->st.send_failed++;
        net->st.dropped += b->n;
    }
    pthread_mutex_unlock(&net->mu);
    if (b)
        batch_free(b);
    return rc;
}

/* InstallSnapshot: the file goes chunk by chunk straight into the receiver's snapshot store,
 * resuming where the receiver stands, then the message is stepped there. Synchronous, on the
 * sender's snapshot thread. */
#define MEMNET_SNAP_CHUNK (8u << 10)
static int ep_send_snapshot(void *ctx, uint64_t to, const struct raft_msg *m, struct snap_file *f)
{
    struct endpoint *from = ctx;
    struct memnet *net = from->net;
    pthread_mutex_lock(&net->mu);
    struct endpoint *dst = find(net, to);
    if (!dst || !dst->node || dst->partitioned || from->partitioned) {
        pthread_mutex_unlock(&net->mu);
        return -EHOSTUNREACH;
    }
    struct raft_node *node = dst->node;
    dst->snap_users++;
    bool cut = net->snap_cuts > 0;
    if (cut)
        net->snap_cuts--;
    net->st.snapshots++;
    pthread_mutex_unlock(&net->mu);

    int rc = -EIO;
    struct snap_store *store = raft_node_snap_store(node);
    uint8_t *buf = malloc(MEMNET_SNAP_CHUNK);
    uint64_t total = snap_file_size(f), off = 0;
    if (store && buf &&
        snap_recv_begin(store, m->snapshot_index, m->snapshot_term, total, &off) == 0) {
        int got = 0;
        while (off < total) {
            size_t len = 0;
            pthread_mutex_lock(&net->mu);
            bool gone = !dst->node || dst->partitioned || from->partitioned;
            pthread_mutex_unlock(&net->mu);
            if (gone || snap_file_chunk(f, off, buf, MEMNET_SNAP_CHUNK, &len) || !len)
                break;
            got = snap_recv_chunk(store, off, buf, len);
            if (got < 0)
                break;
            off += len;
            pthread_mutex_lock(&net->mu);
            if (net->snap_hold && off < total) {
                net->snap_held++;
                pthread_cond_broadcast(&net->snap_cv);
                while (net->snap_hold && dst->node)
                    pthread_cond_wait(&net->snap_cv, &net->mu);
                net->snap_held--;
            }
            pthread_mutex_unlock(&net->mu);
            if (cut && off < total)
                break; /* the connection broke: the receiver keeps what it has */
        }
        if (got == 1) {
            raft_node_step_snapshot(node, m);
            rc = 0;
        }
    }
    free(buf);
    pthread_mutex_lock(&net->mu);
    dst->snap_users--;
    pthread_cond_broadcast(&dst->idle);
    pthread_mutex_unlock(&net->mu);
    return rc;
}

static void ep_close_peer(void *ctx, uint64_t to)
{
    struct endpoint *from = ctx;
    pthread_mutex_lock(&from->net->mu);
    struct link *l = link_of(from, to);
    if (l)
        l->closes++;
    pthread_mutex_unlock(&from->net->mu);
}

static int ep_send(void *ctx, uint64_t to, const struct raft_msg *msgs, size_t n)
{
    return ep_send_mode(ctx, to, msgs, n, true);
}

/* Every other call is refused as "full", so both the inline path and the replicator's run. */
static long ep_try_send(void *ctx, uint64_t to, const struct raft_msg *msgs, size_t n)
{
    struct endpoint *from = ctx;
    if (atomic_fetch_add(&from->try_calls, 1) % 2)
        return 0;
    int rc = ep_send_mode(ctx, to, msgs, n, false);
    return rc < 0 ? rc : rc == 1 ? 0 : (long)n;
}

struct memnet *memnet_new(void)
{
    struct memnet *net = calloc(1, sizeof(*net));
    if (!net)
        return NULL;
    pthread_mutex_init(&net->mu, NULL);
    pthread_cond_init(&net->snap_cv, NULL);
    net->rng = 42;
    return net;
}

struct raft_transport *memnet_transport(struct memnet *net, uint64_t id)
{
    pthread_mutex_lock(&net->mu);
    struct endpoint *ep = find(net, id);
    if (!ep && net->n_ep < MEMNET_MAX) {
        ep = calloc(1, sizeof(*ep));
        if (ep) {
            ep->net = net;
            ep->id = id;
            ep->tr.ctx = ep;
            ep->tr.send = ep_send;
            ep->tr.try_send = ep_try_send;
            ep->tr.close_peer = ep_close_peer;
            ep->tr.send_snapshot = ep_send_snapshot;
            pthread_cond_init(&ep->cv, NULL);
            cond_init_mono(&ep->space);
            pthread_cond_init(&ep->idle, NULL);
            if (pthread_create(&ep->thread, NULL, deliver_main, ep) != 0) {
                free(ep);
                ep = NULL;
            } else {
                net->ep[net->n_ep++] = ep;
            }
        }
    }
    pthread_mutex_unlock(&net->mu);
    return ep ? &ep->tr : NULL;
}

void memnet_attach(struct memnet *net, uint64_t id, struct raft_node *n)
{
    memnet_transport(net, id);
    pthread_mutex_lock(&net->mu);
    struct endpoint *ep = find(net, id);
    ep->node = n;
    pthread_cond_signal(&ep->cv);
    pthread_mutex_unlock(&net->mu);
}

void memnet_detach(struct memnet *net, uint64_t id)
{
    pthread_mutex_lock(&net->mu);
    struct endpoint *ep = find(net, id);
    if (ep) {
        ep->node = NULL;
        drop_queue(ep);
        pthread_cond_broadcast(&net->snap_cv); /* a held transfer into it gives up */
        while (ep->in_step || ep->snap_users)
            pthread_cond_wait(&ep->idle, &net->mu);
    }
    pthread_mutex_unlock(&net->mu);
}

void memnet_partition(struct memnet *net, uint64_t id, bool on)
{
    pthread_mutex_lock(&net->mu);
    struct endpoint *ep = find(net, id);
    if (ep) {
        ep->partitioned = on;
        pthread_cond_signal(&ep->cv);
        pthread_cond_broadcast(&ep->space);
    }
    pthread_mutex_unlock(&net->mu);
}

void memnet_stall(struct memnet *net, uint64_t id, bool on)
{
    pthread_mutex_lock(&net->mu);
    struct endpoint *ep = find(net, id);
    if (ep) {
        ep->stalled = on;
        pthread_cond_signal(&ep->cv);
    }
    pthread_mutex_unlock(&net->mu);
}

void memnet_set_drop(struct memnet *net, unsigned permille)
{
    pthread_mutex_lock(&net->mu);
    net->drop_permille = permille;
    pthread_mutex_unlock(&net->mu);
}

void memnet_cut_snapshots(struct memnet *net, unsigned n)
{
    pthread_mutex_lock(&net->mu);
    net->snap_cuts = n;
    pthread_mutex_unlock(&net->mu);
}

void memnet_hold_snapshots(struct memnet *net, bool on)
{
    pthread_mutex_lock(&net->mu);
    net->snap_hold = on;
    pthread_cond_broadcast(&net->snap_cv);
    pthread_mutex_unlock(&net->mu);
}

bool memnet_wait_snapshots_held(struct memnet *net, unsigned n, int timeout_ms)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += timeout_ms / 1000;
    dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    dl.tv_sec += dl.tv_nsec / 1000000000L;
    dl.tv_nsec %= 1000000000L;
    pthread_mutex_lock(&net->mu);
    while (net->snap_held < n && pthread_cond_timedwait(&net->snap_cv, &net->mu, &dl) != ETIMEDOUT)
        ;
    bool ok = net->snap_held >= n;
    pthread_mutex_unlock(&net->mu);
    return ok;
}

static void link_get(struct memnet *net, uint64_t from, uint64_t to, struct link *out)
{
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&net->mu);
    struct endpoint *ep = find(net, from);
    for (size_t i = 0; ep && i < ep->n_links; i++)
        if (ep->links[i].to == to)
            *out = ep->links[i];
    pthread_mutex_unlock(&net->mu);
}

uint64_t memnet_link_msgs(struct memnet *net, uint64_t from, uint64_t to)
{
    struct link l;
    link_get(net, from, to, &l);
    return l.msgs;
}

unsigned memnet_closes(struct memnet *net, uint64_t from, uint64_t to)
{
    struct link l;
    link_get(net, from, to, &l);
    return l.closes;
}

void memnet_stats(struct memnet *net, struct memnet_stats *out)
{
    pthread_mutex_lock(&net->mu);
    *out = net->st;
    pthread_mutex_unlock(&net->mu);
}

void memnet_free(struct memnet *net)
{
    if (!net)
        return;
    for (size_t i = 0; i < net->n_ep; i++) {
        struct endpoint *ep = net->ep[i];
        pthread_mutex_lock(&net->mu);
        ep->stop = true;
        pthread_cond_signal(&ep->cv);
        pthread_mutex_unlock(&net->mu);
        pthread_join(ep->thread, NULL);
        drop_queue(ep);
        pthread_cond_destroy(&ep->cv);
        pthread_cond_destroy(&ep->space);
        pthread_cond_destroy(&ep->idle);
        free(ep);
    }
    pthread_cond_destroy(&net->snap_cv);
    pthread_mutex_destroy(&net->mu);
    free(net);
}
