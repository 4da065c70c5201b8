/* peer.c: the Raft peer service over rpc/ (see peer.h for the contract). */
#include "services/peer.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "services/backoff.h"
#include "services/clock.h"
#include "raft/snap/snap.h"
#include "services/proto/raftpb.pb-c.h"

#define PEER_METHOD "/craft.raft.Peer/Raft"
#define HELLO_METHOD "/craft.raft.Peer/Hello"
#define HELLO_RETRY_MS 500
#define SNAPSHOT_METHOD "/craft.raft.Peer/Snapshot"
#define SNAPSHOT_CALL_MS 10000 /* one chunk's round trip, at most */
/* Protobuf framing per message and per entry, over-estimated so a Batch never exceeds the
 * receiver's limit. */
#define MSG_OVERHEAD 256
#define ENTRY_OVERHEAD 32

/* One client stream's liveness, shared by the replicator thread that owns the stream and the
 * channel thread that runs its on_close. Two references: freed by whichever lets go last. */
struct out_stream_ctx {
    atomic_int refs;
    atomic_bool dead;
};

struct peer_out {
    const struct cluster_member *m;
    struct rpc_channel *ch;
    /* Touched only by the replicator thread of this peer (transport.h). */
    struct rpc_client_stream *st;
    struct out_stream_ctx *ctx;
    int64_t opened_ms;
    struct backoff backoff;
    bool told_urls; /* this stream's first Batch carried our client URLs */
};

#define URLS_MAX 1024

struct peer {
    struct cluster cluster;
    uint64_t self_id;
    bool insecure;
    size_t max_batch_bytes, max_recv_bytes;
    int send_timeout_ms;
    struct raft_transport transport;
    struct peer_out out[CLUSTER_MAX_MEMBERS];
    size_t n_out;

    pthread_rwlock_t node_lock; /* readers: deliveries; writer: attach/detach */
    struct raft_node *node;

    char client_urls[URLS_MAX];                           /* ours */
    pthread_mutex_t urls_lock;
    char member_urls[CLUSTER_MAX_MEMBERS][URLS_MAX];      /* theirs, by cluster index */
    bool hello_answered[CLUSTER_MAX_MEMBERS]; /* answered our Hello (urls_lock) */
    uint64_t said_we_ran;                     /* a member that answered you_have_run, or 0 */

    /* Hello: a thread calls every peer whose URLs are unknown, every HELLO_RETRY_MS, until
     * each has answered (the answers arrive on channel threads). */
    pthread_t hello_thread;
    bool hello_started, stopping;
    pthread_cond_t hello_cv;   /* stopping, or all peers known (with urls_lock) */
    int hello_inflight;        /* calls whose callback has not run yet */

    atomic_uint_fast64_t batches_sent, msgs_sent, send_failures;
    atomic_uint_fast64_t batches_received, msgs_received, msgs_dropped, streams_refused;

    size_t snapshot_chunk;  /* bytes per Peer.Snapshot call */
    uint64_t snapshot_rate; /* bytes per second per transfer; 0 = unbounded */
    atomic_uint_fast64_t snapshots_sent, snapshots_failed;
};

static void ctx_unref(struct out_stream_ctx *c)
{
    if (atomic_fetch_sub(&c->refs, 1) == 1)
        free(c);
}

/* ---- outgoing ----------------------------------------------------------------------- */

static void out_on_message(struct rpc_client_stream *s, const uint8_t *d, size_t n, void *arg)
{
    (void)s, (void)d, (void)n, (void)arg; /* the server side never sends */
}

static void out_on_close(struct rpc_client_stream *s, grpc_status_code st, const char *msg,
                         void *arg)
{
    (void)s, (void)st, (void)msg;
    struct out_stream_ctx *c = arg;
    atomic_store(&c->dead, true);
    ctx_unref(c);
}

static void out_release(struct peer_out *o)
{
    if (!o->st)
        return;
    rpc_client_stream_cancel(o->st);
    ctx_unref(o->ctx);
    o->st = NULL;
    o->ctx = NULL;
}

/* A usable stream to o, or NULL while backing off after failures. A stream found dead counts
 * as ended now (backoff.h: one that lived a while starts the backoff from scratch); a stream
 * that cannot be opened is one more failure. A stream given back by close_peer leaves the
 * backoff as it was. */
static struct rpc_client_stream *out_stream(struct peer_out *o)
{
    int64_t now = clock_now_ms();
    if (o->st && !atomic_load(&o->ctx->dead))
        return o->st;
    if (o->st) {
        out_release(o);
        backoff_ended(&o->backoff, o->opened_ms, now);
    }
    if (!backoff_ready(&o->backoff, now))
        return NULL;
    struct out_stream_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    atomic_init(&c->refs, 2);
    atomic_init(&c->dead, false);
    static const struct rpc_client_stream_handler h = {out_on_message, out_on_close, NULL};
    o->st = rpc_channel_stream_open(o->ch, PEER_METHOD, &h, c);
    if (!o->st) {
        free(c);
        backoff_failed(&o->backoff, now);
        return NULL;
    }
    o->ctx = c;
    o->opened_ms = now;
    o->told_urls = false;
    return o->st;
}

static size_t msg_size(const struct raft_msg *m)
{
    size_t n = MSG_OVERHEAD;
    for (uint32_t i = 0; i < m->n_entries; i++)
        n += ENTRY_OVERHEAD + m->entries[i].len;
    return n;
}

static void msg_to_pb(const struct raft_msg *m, Craft__Raft__Message *pm, Craft__Raft__Entry *pe,
                      Craft__Raft__Entry **pep)
{
    craft__raft__message__init(pm);
    pm->type = m->type;
    pm->from = m->from;
    pm->to = m->to;
    pm->term = m->term;
    pm->last_log_index = m->last_log_index;
    pm->last_log_term = m->last_log_term;
    pm->transfer = m->transfer;
    pm->granted = m->granted;
    pm->prev_index = m->prev_index;
    pm->prev_term = m->prev_term;
    pm->commit = m->commit;
    pm->reject = m->reject;
    pm->match_index = m->match_index;
    pm->reject_index = m->reject_index;
    pm->conflict_term = m->conflict_term;
    pm->conflict_index = m->conflict_index;
    pm->ctx = m->ctx;
    pm->read_index = m->read_index;
    pm->snapshot_index = m->snapshot_index;
    pm->snapshot_term = m->snapshot_term;
    pm->conf.data = m->conf;
    pm->conf.len = m->conf_len;
    for (uint32_t i = 0; i < m->n_entries; i++) {
        const struct raft_entry *e = &m->entries[i];
        craft__raft__entry__init(&pe[i]);
        pe[i].index = e->index;
        pe[i].term = e->term;
        pe[i].type = e->type;
        pe[i].data.len = e->len;
        pe[i].data.data = e->data; /* packed by copy; never written through */
        pep[i] = &pe[i];
    }
    pm->n_entries = m->n_entries;
    pm->entries = m->n_entries ? pep : NULL;
}

/* Packs msgs[0..n) into one Batch and queues it, waiting up to timeout_ms for room. 0 or a
 * negative rpc code. */
static int send_batch(struct peer *p, struct peer_out *o, const struct raft_msg *msgs, size_t n,
                      int timeout_ms)
{
    size_t n_entries = 0;
    for (size_t i = 0; i < n; i++)
        n_entries += msgs[i].n_entries;
    Craft__Raft__Message *pm = calloc(n, sizeof *pm);
    Craft__Raft__Message **pmp = calloc(n, sizeof *pmp);
    Craft__Raft__Entry *pe = calloc(n_entries ? n_entries : 1, sizeof *pe);
    Craft__Raft__Entry **pep = calloc(n_entries ? n_entries : 1, sizeof *pep);
    int rc = RPC_ENOMEM;
    if (!pm || !pmp || !pe || !pep)
        goto out;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        msg_to_pb(&msgs[i], &pm[i], pe + k, pep + k);
        pmp[i] = &pm[i];
        k += msgs[i].n_entries;
    }
    Craft__Raft__Batch b = CRAFT__RAFT__BATCH__INIT;
    b.cluster_id = p->cluster.id;
    b.n_msgs = n;
    b.msgs = pmp;
    uint8_t *buf;
    size_t len;
    struct rpc_client_stream *st = out_stream(o);
    if (!st) {
        rc = RPC_ECLOSED;
        goto out;
    }
    if (!o->told_urls)
        b.client_urls = p->client_urls;
    rc = rpc_msg_pack(&b.base, &buf, &len);
    if (rc == 0) {
        rc = rpc_client_stream_send(st, buf, len, timeout_ms);
        o->told_urls = o->told_urls || rc == 0;
        free(buf);
    }
out:
    free(pm);
    free(pmp);
    free(pe);
    free(pep);
    return rc;
}

/* Queues msgs in Batches of at most max_batch_bytes (a single larger message goes alone; the
 * core bounds messages well below the receiver's limit). Returns how many messages were queued
 * (fewer than n only when the stream stayed full for timeout_ms), or -1: unreachable. */
static long send_msgs(struct peer *p, uint64_t to, const struct raft_msg *msgs, size_t n,
                      int timeout_ms)
{
    struct peer_out *o = NULL;
    for (size_t i = 0; i < p->n_out; i++)
        if (p->out[i].m->id == to)
            o = &p->out[i];
    if (!o)
        return -1;
    size_t i = 0;
    while (i < n) {
        size_t j = i, bytes = 0;
        while (j < n && (j == i || bytes + msg_size(&msgs[j]) <= p->max_batch_bytes))
            bytes += msg_size(&msgs[j++]);
        int rc = send_batch(p, o, msgs + i, j - i, timeout_ms);
        if (rc == RPC_EFULL && timeout_ms == 0)
            return (long)i; /* the replicator sends the rest, waiting for room */
        if (rc != 0) {
            atomic_fetch_add(&p->send_failures, 1);
            return -1;
        }
        atomic_fetch_add(&p->batches_sent, 1);
        atomic_fetch_add(&p->msgs_sent, j - i);
        i = j;
    }
    return (long)n;
}

static int transport_send(void *arg, uint64_t to, const struct raft_msg *msgs, size_t n)
{
    struct peer *p = arg;
    return send_msgs(p, to, msgs, n, p->send_timeout_ms) == (long)n ? 0 : -1;
}

static long transport_try_send(void *arg, uint64_t to, const struct raft_msg *msgs, size_t n)
{
    return send_msgs(arg, to, msgs, n, 0);
}

static void transport_close_peer(void *arg, uint64_t to)
{
    struct peer *p = arg;
    for (size_t i = 0; i < p->n_out; i++)
        if (p->out[i].m->id == to)
            out_release(&p->out[i]);
}

/* ---- incoming ----------------------------------------------------------------------- */

struct in_stream {
    struct peer *p;
    uint64_t from; /* authenticated member; 0 with insecure */
    bool finished;
};

static void in_finish(struct rpc_stream *s, struct in_stream *in, grpc_status_code code,
                      const char *msg)
{
    if (!in->finished) {
        in->finished = true;
        rpc_stream_finish(s, code, msg);
    }
}

static void *in_open(struct rpc_stream *s, void *ctx)
{
    struct peer *p = ctx;
    struct in_stream *in = calloc(1, sizeof *in);
    if (!in) {
        rpc_stream_finish(s, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return NULL;
    }
    in->p = p;
    if (p->insecure)
        return in;
    struct rpc_peer id;
    const struct cluster_member *m = NULL;
    if (rpc_stream_peer_identity(s, &id) == 0)
        m = cluster_find_cert(&p->cluster, id.cn, (const char(*)[256])id.sans, id.nsans);
    if (!m || m->id == p->self_id) {
        atomic_fetch_add(&p->streams_refused, 1);
        in_finish(s, in, GRPC_STATUS_PERMISSION_DENIED,
                  "peer certificate names no other member of this cluster");
        return in;
    }
    in->from = m->id;
    return in;
}

/* Validates and converts one message; entries point into pm. false: drop it. */
static bool pb_to_msg(const Craft__Raft__Message *pm, struct raft_msg *m, struct raft_entry *es)
{
    if (pm->type == RAFT_MSG_NONE || pm->type > RAFT_MSG_TYPE_MAX)
        return false;
    memset(m, 0, sizeof *m);
    m->type = (uint8_t)pm->type;
    m->from = pm->from;
    m->to = pm->to;
    m->term = pm->term;
    m->last_log_index = pm->last_log_index;
    m->last_log_term = pm->last_log_term;
    m->transfer = pm->transfer;
    m->granted = pm->granted;
    m->prev_index = pm->prev_index;
    m->prev_term = pm->prev_term;
    m->commit = pm->commit;
    m->reject = pm->reject;
    m->match_index = pm->match_index;
    m->reject_index = pm->reject_index;
    m->conflict_term = pm->conflict_term;
    m->conflict_index = pm->conflict_index;
    m->ctx = pm->ctx;
    m->read_index = pm->read_index;
    m->snapshot_index = pm->snapshot_index;
    m->snapshot_term = pm->snapshot_term;
    if (pm->conf.len > UINT32_MAX)
        return false;
    m->conf = pm->conf.len ? pm->conf.data : NULL; /* valid while pm is; the core copies it */
    m->conf_len = (uint32_t)pm->conf.len;
    for (size_t i = 0; i < pm->n_entries; i++) {
        const Craft__Raft__Entry *pe = pm->entries[i];
        if (pe->type > RAFT_ENTRY_CONFIG || pe->data.len > UINT32_MAX)
            return false;
        es[i].index = pe->index;
        es[i].term = pe->term;
        es[i].type = (uint8_t)pe->type;
        es[i].len = (uint32_t)pe->data.len;
        es[i].data = pe->data.len ? pe->data.data : NULL;
    }
    m->n_entries = (uint32_t)pm->n_entries;
    m->entries = pm->n_entries ? es : NULL;
    return true;
}

static void in_message(struct rpc_stream *s, const uint8_t *data, size_t len, void *user)
{
    struct in_stream *in = user;
    if (!in || in->finished)
        return;
    struct peer *p = in->p;
    Craft__Raft__Batch *b =
        (Craft__Raft__Batch *)rpc_msg_unpack(&craft__raft__batch__descriptor, data, len);
    if (!b) {
        in_finish(s, in, GRPC_STATUS_INVALID_ARGUMENT, "malformed raft Batch");
        return;
    }
    if (b->cluster_id != p->cluster.id) {
        in_finish(s, in, GRPC_STATUS_FAILED_PRECONDITION,
                  "cluster id mismatch: the peer was started with another --initial-cluster");
        protobuf_c_message_free_unpacked(&b->base, NULL);
        return;
    }
    atomic_fetch_add(&p->batches_received, 1);
    /* Insecure streams have no verified identity: take the sender's word (tests only). */
    uint64_t sender = in->from ? in->from : b->n_msgs ? b->msgs[0]->from : 0;
    if (b->client_urls && *b->client_urls && sender) {
        pthread_mutex_lock(&p->urls_lock);
        for (size_t i = 0; i < p->cluster.n; i++)
            if (p->cluster.members[i].id == sender && sender != p->self_id)
                snprintf(p->member_urls[i], URLS_MAX, "%s", b->client_urls);
        pthread_mutex_unlock(&p->urls_lock);
    }
    size_t max_entries = 0;
    for (size_t i = 0; i < b->n_msgs; i++)
        if (b->msgs[i]->n_entries > max_entries)
            max_entries = b->msgs[i]->n_entries;
    struct raft_entry *es = calloc(max_entries ? max_entries : 1, sizeof *es);
    pthread_rwlock_rdlock(&p->node_lock);
    for (size_t i = 0; i < b->n_msgs; i++) {
        struct raft_msg m;
        bool ok = es && pb_to_msg(b->msgs[i], &m, es) && m.to == p->self_id &&
                  (p->insecure || m.from == in->from) && p->node;
        if (ok) {
            raft_node_step(p->node, &m);
            atomic_fetch_add(&p->msgs_received, 1);
        } else {
            atomic_fetch_add(&p->msgs_dropped, 1);
        }
    }
    pthread_rwlock_unlock(&p->node_lock);
    free(es);
    protobuf_c_message_free_unpacked(&b->base, NULL);
}

static void in_close(struct rpc_stream *s, grpc_status_code status, void *user)
{
    (void)status;
    struct in_stream *in = user;
    if (!in) {
        return;
    }
    in_finish(s, in, GRPC_STATUS_OK, NULL);
    free(in);
}

/* ---- Hello: exchanging client URLs ------------------------------------------------------ */

static void set_member_urls(struct peer *p, uint64_t id, const char *urls)
{
    if (!urls || !*urls || id == p->self_id)
        return;
    pthread_mutex_lock(&p->urls_lock);
    for (size_t i = 0; i < p->cluster.n; i++)
        if (p->cluster.members[i].id == id)
            snprintf(p->member_urls[i], URLS_MAX, "%s", urls);
    pthread_mutex_unlock(&p->urls_lock);
}

static void handle_hello(struct rpc_call *call, const ProtobufCMessage *m, void *ctx)
{
    struct peer *p = ctx;
    const Craft__Raft__PeerHello *h = (const Craft__Raft__PeerHello *)m;
    uint64_t from = peer_call_member(p, call);
    if (!from) {
        rpc_call_fail(call, GRPC_STATUS_PERMISSION_DENIED, "only cluster members may call Hello");
        return;
    }
    if (h->cluster_id != p->cluster.id) {
        rpc_call_fail(call, GRPC_STATUS_FAILED_PRECONDITION, "cluster id mismatch");
        return;
    }
    set_member_urls(p, p->insecure ? h->member_id : from, h->client_urls);
    Craft__Raft__PeerHello r = CRAFT__RAFT__PEER_HELLO__INIT;
    r.cluster_id = p->cluster.id;
    r.client_urls = p->client_urls;
    r.member_id = p->self_id;
    pthread_rwlock_rdlock(&p->node_lock);
    r.you_have_run = p->node && raft_node_has_run(p->node, p->insecure ? h->member_id : from);
    pthread_rwlock_unlock(&p->node_lock);
    rpc_call_reply_msg(call, &r.base);
}

struct hello_call {
    struct peer *p;
    uint64_t to;
};

static void hello_done(struct rpc_result *res, void *arg)
{
    struct hello_call *hc = arg;
    struct peer *p = hc->p;
    if (res->status == GRPC_STATUS_OK) {
        Craft__Raft__PeerHello *h = (Craft__Raft__PeerHello *)rpc_msg_unpack(
            &craft__raft__peer_hello__descriptor, res->data, res->len);
        bool ours = h && h->cluster_id == p->cluster.id;
        if (ours)
            set_member_urls(p, hc->to, h->client_urls);
        pthread_mutex_lock(&p->urls_lock);
        for (size_t i = 0; ours && i < p->cluster.n; i++)
            if (p->cluster.members[i].id == hc->to)
                p->hello_answered[i] = true;
        if (ours && h->you_have_run && !p->said_we_ran)
            p->said_we_ran = hc->to;
        pthread_mutex_unlock(&p->urls_lock);
        if (h)
            protobuf_c_message_free_unpacked(&h->base, NULL);
    }
    pthread_mutex_lock(&p->urls_lock);
    p->hello_inflight--;
    pthread_cond_broadcast(&p->hello_cv);
    pthread_mutex_unlock(&p->urls_lock);
    free(hc);
}

static void *hello_main(void *arg)
{
    struct peer *p = arg;
    Craft__Raft__PeerHello h = CRAFT__RAFT__PEER_HELLO__INIT;
    h.cluster_id = p->cluster.id;
    h.client_urls = p->client_urls;
    h.member_id = p->self_id;
    uint8_t *buf = NULL;
    size_t len = 0;
    if (rpc_msg_pack(&h.base, &buf, &len) != 0)
        return NULL;
    pthread_mutex_lock(&p->urls_lock);
    while (!p->stopping) {
        size_t unknown = 0;
        for (size_t i = 0; i < p->n_out; i++) {
            size_t k = (size_t)(p->out[i].m - p->cluster.members);
            if ((p->member_urls[k][0] && p->hello_answered[k]) ||
                p->hello_inflight >= (int)p->n_out)
                continue;
            unknown++;
            struct hello_call *hc = malloc(sizeof *hc);
            if (!hc)
                continue;
            *hc = (struct hello_call){p, p->out[i].m->id};
            p->hello_inflight++;
            pthread_mutex_unlock(&p->urls_lock);
            int rc = rpc_channel_call_async(p->out[i].ch, HELLO_METHOD, buf, len, HELLO_RETRY_MS,
                                            hello_done, hc);
            pthread_mutex_lock(&p->urls_lock);
            if (rc != 0) {
                p->hello_inflight--;
                free(hc);
            }
        }
        if (!unknown && p->hello_inflight == 0)
            break; /* every peer's URLs are known */
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += (long)HELLO_RETRY_MS * 1000000L;
        until.tv_sec += until.tv_nsec / 1000000000L;
        until.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&p->hello_cv, &p->urls_lock, &until);
    }
    pthread_mutex_unlock(&p->urls_lock);
    free(buf);
    return NULL;
}

/* ---- Snapshot: InstallSnapshot's bytes ------------------------------------------------------ */

/* Sender (transport send_snapshot, on the node's sender thread): where the receiver stands, then
 * chunks from there, each acknowledged before the next (the receiver writes them in order), at
 * most snapshot_rate bytes per second so the transfer leaves room for heartbeats and the other
 * peers' replication. */
static int transport_send_snapshot(void *ctx, uint64_t to, const struct raft_msg *m,
                                   struct snap_file *f)
{
    struct peer *p = ctx;
    struct peer_out *o = NULL;
    for (size_t i = 0; i < p->n_out; i++)
        if (p->out[i].m->id == to)
            o = &p->out[i];
    if (!o)
        return -EINVAL;
    Craft__Raft__Message pm;
    msg_to_pb(m, &pm, NULL, NULL);
    Craft__Raft__SnapshotChunk c = CRAFT__RAFT__SNAPSHOT_CHUNK__INIT;
    c.cluster_id = p->cluster.id;
    c.msg = &pm;
    c.total = snap_file_size(f);
    uint8_t *buf = malloc(p->snapshot_chunk);
    if (!buf)
        return -ENOMEM;
    int64_t t0 = clock_now_ms();
    uint64_t sent = 0, off = 0;
    bool asked = false;
    int rc = -EIO;
    for (;;) {
        pthread_mutex_lock(&p->urls_lock);
        bool stopping = p->stopping;
        pthread_mutex_unlock(&p->urls_lock);
        if (stopping)
            break;
        size_t n = 0;
        if (asked && snap_file_chunk(f, off, buf, p->snapshot_chunk, &n))
            break;
        c.offset = off;
        c.data.data = buf;
        c.data.len = asked ? n : 0; /* the first call only asks where to start */
        Craft__Raft__SnapshotAck *ack = NULL;
        struct rpc_result res;
        int crc = rpc_channel_call_msg(o->ch, SNAPSHOT_METHOD, &c.base,
                                       &craft__raft__snapshot_ack__descriptor, SNAPSHOT_CALL_MS,
                                       (ProtobufCMessage **)&ack, &res);
        if (crc != 0 || res.status != GRPC_STATUS_OK || !ack) {
            rpc_result_free(&res);
            break; /* the node reports the failure; the next transfer resumes */
        }
        rpc_result_free(&res);
        bool done = ack->done;
        uint64_t next = ack->next_offset;
        protobuf_c_message_free_unpacked(&ack->base, NULL);
        if (done) {
            rc = 0;
            break;
        }
        if (next > c.total || (asked && n == 0))
            break;
        sent += asked ? n : 0;
        off = next;
        asked = true;
        /* Pace: never ahead of snapshot_rate bytes per second since the transfer began. */
        if (p->snapshot_rate) {
            int64_t due = t0 + (int64_t)(sent * 1000 / p->snapshot_rate);
            int64_t now = clock_now_ms();
            if (due > now) {
                struct timespec ts = {(due - now) / 1000, (long)((due - now) % 1000) * 1000000L};
                nanosleep(&ts, NULL);
            }
        }
    }
    free(buf);
    atomic_fetch_add(rc == 0 ? &p->snapshots_sent : &p->snapshots_failed, 1);
    return rc;
}

/* Receiver: one chunk into the node's snapshot store (raft/snap: kept aside, verified whole),
 * and the leader's message to the node once the snapshot is complete. */
static void handle_snapshot(struct rpc_call *call, const ProtobufCMessage *msg, void *ctx)
{
    struct peer *p = ctx;
    const Craft__Raft__SnapshotChunk *c = (const Craft__Raft__SnapshotChunk *)msg;
    uint64_t from = peer_call_member(p, call);
    struct raft_msg m;
    if (!from) {
        rpc_call_fail(call, GRPC_STATUS_PERMISSION_DENIED, "only cluster members may send snapshots");
        return;
    }
    if (c->cluster_id != p->cluster.id) {
        rpc_call_fail(call, GRPC_STATUS_FAILED_PRECONDITION, "cluster id mismatch");
        return;
    }
    if (!c->msg || c->msg->n_entries || !pb_to_msg(c->msg, &m, NULL) ||
        m.type != RAFT_MSG_SNAPSHOT || m.to != p->self_id || (!p->insecure && m.from != from) ||
        !m.snapshot_index || !m.snapshot_term) {
        rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "not a snapshot for this member");
        return;
    }
    pthread_rwlock_rdlock(&p->node_lock);
    struct snap_store *s = p->node ? raft_node_snap_store(p->node) : NULL;
    if (!s) {
        pthread_rwlock_unlock(&p->node_lock);
        rpc_call_fail(call, GRPC_STATUS_FAILED_PRECONDITION, "this member takes no snapshots");
        return;
    }
    Craft__Raft__SnapshotAck ack = CRAFT__RAFT__SNAPSHOT_ACK__INIT;
    struct snap_progress pg;
    snap_recv_progress(s, &pg);
    bool same = pg.active && pg.index == m.snapshot_index && pg.term == m.snapshot_term &&
                pg.total_len == c->total;
    int rc = 0;
    uint64_t at = pg.received;
    if (!same || c->data.len == 0)
        rc = snap_recv_begin(s, m.snapshot_index, m.snapshot_term, c->total, &at);
    if (rc == 0 && c->data.len && c->offset == at) {
        rc = snap_recv_chunk(s, c->offset, c->data.data, c->data.len);
        if (rc == 1) {
            raft_node_step_snapshot(p->node, &m);
            ack.done = true;
            rc = 0;
        }
        at = c->offset + c->data.len;
    }
    pthread_rwlock_unlock(&p->node_lock);
    if (rc < 0) {
        char why[300];
        snprintf(why, sizeof why, "snapshot %" PRIu64 "/%" PRIu64 ": %s", m.snapshot_index,
                 m.snapshot_term, snap_errmsg());
        rpc_call_fail(call, rc == -EFBIG || rc == -ENOSPC ? GRPC_STATUS_RESOURCE_EXHAUSTED
                                                          : GRPC_STATUS_FAILED_PRECONDITION,
                      why);
        return;
    }
    ack.next_offset = at;
    rpc_call_reply_msg(call, &ack.base);
}

/* ---- lifecycle ---------------------------------------------------------------------- */

struct peer *peer_create(const struct peer_config *cfg, char *err, size_t errlen)
{
    if (!cfg->cluster || !cluster_find_id(cfg->cluster, cfg->self_id)) {
        snprintf(err, errlen, "this member is not in the cluster");
        return NULL;
    }
    if (!cfg->insecure && !cfg->tls) {
        snprintf(err, errlen, "peer TLS files are required (or an explicit insecure mode)");
        return NULL;
    }
    struct peer *p = calloc(1, sizeof *p);
    if (!p) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    p->cluster = *cfg->cluster;
    p->self_id = cfg->self_id;
    p->insecure = cfg->insecure;
    p->max_batch_bytes = cfg->max_batch_bytes ? cfg->max_batch_bytes : PEER_DEFAULT_MAX_BATCH_BYTES;
    p->max_recv_bytes = cfg->max_recv_bytes ? cfg->max_recv_bytes : PEER_DEFAULT_MAX_RECV_BYTES;
    if (p->max_batch_bytes > p->max_recv_bytes)
        p->max_batch_bytes = p->max_recv_bytes;
    p->send_timeout_ms = cfg->send_timeout_ms ? cfg->send_timeout_ms : PEER_DEFAULT_SEND_TIMEOUT_MS;
    pthread_rwlock_init(&p->node_lock, NULL);
    pthread_mutex_init(&p->urls_lock, NULL);
    pthread_cond_init(&p->hello_cv, NULL);
    snprintf(p->client_urls, sizeof p->client_urls, "%s", cfg->client_urls ? cfg->client_urls : "");
    for (size_t i = 0; i < p->cluster.n; i++)
        if (p->cluster.members[i].id == p->self_id)
            snprintf(p->member_urls[i], URLS_MAX, "%s", p->client_urls);
    p->transport.ctx = p;
    p->transport.send = transport_send;
    p->transport.try_send = transport_try_send;
    p->transport.close_peer = transport_close_peer;
    p->transport.send_snapshot = transport_send_snapshot;
    p->snapshot_chunk = cfg->snapshot_chunk_bytes ? cfg->snapshot_chunk_bytes
                                                  : PEER_DEFAULT_SNAPSHOT_CHUNK;
    p->snapshot_rate = cfg->snapshot_rate;

    for (size_t i = 0; i < p->cluster.n; i++) {
        const struct cluster_member *m = &p->cluster.members[i];
        if (m->id == p->self_id)
            continue;
        char target[CLUSTER_HOST_MAX + 16];
        cluster_url_target(&m->peer_url, target, sizeof target);
        struct rpc_channel_config cc = {
            .target = target,
            .tls = cfg->tls,
            /* Verify that the member we dialed is that member: its certificate must carry
             * the member's name (craft-certs puts it in the CN and a DNS SAN). */
            .server_name = m->name,
            .insecure = cfg->insecure,
            .threads = 1,
            .max_send_bytes = p->max_recv_bytes + (64u << 10),
            /* Peer.Forwards answers carry state machine results (a Put's prev_kv can be a
             * whole request's size). */
            .max_recv_bytes = p->max_recv_bytes + (64u << 10),
            .stream_queue = cfg->stream_queue ? cfg->stream_queue : PEER_DEFAULT_STREAM_QUEUE,
            .reconnect_max_ms = BACKOFF_MAX_MS,
        };
        char cerr[256];
        struct peer_out *o = &p->out[p->n_out];
        o->m = &p->cluster.members[i];
        o->ch = rpc_channel_create(&cc, cerr, sizeof cerr);
        if (!o->ch) {
            snprintf(err, errlen, "channel to %s: %s", m->name, cerr);
            peer_destroy(p);
            return NULL;
        }
        p->n_out++;
    }
    p->hello_started = pthread_create(&p->hello_thread, NULL, hello_main, p) == 0;
    return p;
}

void peer_destroy(struct peer *p)
{
    if (!p)
        return;
    if (p->hello_started) {
        pthread_mutex_lock(&p->urls_lock);
        p->stopping = true;
        pthread_cond_broadcast(&p->hello_cv);
        pthread_mutex_unlock(&p->urls_lock);
        pthread_join(p->hello_thread, NULL);
    }
    /* Destroying the channels fires the callbacks of Hello calls still in flight. */
    for (size_t i = 0; i < p->n_out; i++) {
        out_release(&p->out[i]);
        rpc_channel_destroy(p->out[i].ch);
    }
    pthread_rwlock_destroy(&p->node_lock);
    pthread_mutex_destroy(&p->urls_lock);
    pthread_cond_destroy(&p->hello_cv);
    free(p);
}

struct raft_transport *peer_transport(struct peer *p) { return &p->transport; }

int peer_register(struct peer *p, struct rpc_server *srv)
{
    static const struct rpc_stream_handler h = {in_open, in_message, in_close, NULL};
    if (rpc_server_register_stream(srv, PEER_METHOD, &h, p) != 0 ||
        rpc_server_register_unary_msg(srv, SNAPSHOT_METHOD,
                                      &craft__raft__snapshot_chunk__descriptor, handle_snapshot,
                                      p) != 0)
        return -1;
    return rpc_server_register_unary_msg(srv, HELLO_METHOD, &craft__raft__peer_hello__descriptor,
                                         handle_hello, p);
}

void peer_attach(struct peer *p, struct raft_node *node)
{
    pthread_rwlock_wrlock(&p->node_lock);
    p->node = node;
    pthread_rwlock_unlock(&p->node_lock);
}

int peer_wait_hello(struct peer *p, int timeout_ms, uint64_t *has_run_says)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    until.tv_sec += until.tv_nsec / 1000000000L;
    until.tv_nsec %= 1000000000L;
    pthread_mutex_lock(&p->urls_lock);
    size_t answered = 0;
    for (;;) {
        answered = 0;
        for (size_t i = 0; i < p->n_out; i++)
            answered += p->hello_answered[p->out[i].m - p->cluster.members];
        if (answered == p->n_out || p->said_we_ran || p->stopping ||
            pthread_cond_timedwait(&p->hello_cv, &p->urls_lock, &until) == ETIMEDOUT)
            break;
    }
    *has_run_says = p->said_we_ran;
    pthread_mutex_unlock(&p->urls_lock);
    return (int)answered;
}

void peer_client_urls(struct peer *p, uint64_t id, char *buf, size_t len)
{
    if (len == 0)
        return;
    buf[0] = '\0';
    pthread_mutex_lock(&p->urls_lock);
    for (size_t i = 0; i < p->cluster.n; i++)
        if (p->cluster.members[i].id == id)
            snprintf(buf, len, "%s", p->member_urls[i]);
    pthread_mutex_unlock(&p->urls_lock);
}

int peer_call_async(struct peer *p, uint64_t to, const char *method, const void *req, size_t len,
                    int deadline_ms, rpc_done_fn cb, void *arg)
{
    for (size_t i = 0; i < p->n_out; i++)
        if (p->out[i].m->id == to)
            return rpc_channel_call_async(p->out[i].ch, method, req, len, deadline_ms, cb, arg);
    return RPC_EINVAL;
}

struct rpc_client_stream *peer_stream_open(struct peer *p, uint64_t to, const char *method,
                                           const struct rpc_client_stream_handler *h, void *arg)
{
    for (size_t i = 0; i < p->n_out; i++)
        if (p->out[i].m->id == to)
            return rpc_channel_stream_open(p->out[i].ch, method, h, arg);
    return NULL;
}

static uint64_t member_of(struct peer *p, int rc, const struct rpc_peer *id)
{
    if (rc != 0)
        return 0;
    const struct cluster_member *m =
        cluster_find_cert(&p->cluster, id->cn, (const char(*)[256])id->sans, id->nsans);
    return m && m->id != p->self_id ? m->id : 0;
}

uint64_t peer_call_member(struct peer *p, struct rpc_call *call)
{
    if (p->insecure)
        return 1;
    struct rpc_peer id;
    return member_of(p, rpc_call_peer_identity(call, &id), &id);
}

uint64_t peer_stream_member(struct peer *p, struct rpc_stream *s)
{
    if (p->insecure)
        return 1;
    struct rpc_peer id;
    return member_of(p, rpc_stream_peer_identity(s, &id), &id);
}

uint64_t peer_cluster_id(struct peer *p) { return p->cluster.id; }

void peer_stats_get(struct peer *p, struct peer_stats *out)
{
    out->batches_sent = atomic_load(&p->batches_sent);
    out->msgs_sent = atomic_load(&p->msgs_sent);
    out->send_failures = atomic_load(&p->send_failures);
    out->batches_received = atomic_load(&p->batches_received);
    out->msgs_received = atomic_load(&p->msgs_received);
    out->msgs_dropped = atomic_load(&p->msgs_dropped);
    out->streams_refused = atomic_load(&p->streams_refused);
    out->snapshots_sent = atomic_load(&p->snapshots_sent);
    out->snapshots_failed = atomic_load(&p->snapshots_failed);
}
