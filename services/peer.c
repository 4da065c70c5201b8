/* peer.c: the Raft peer service over rpc/ (see peer.h for the contract).
 *
 * The member table and one peer_out per other member live under table_lock (a read-write lock:
 * every send and every authorization reads, only peer_set_cluster writes). A peer_out is
 * reference counted: the table holds one reference while it lists the member, and every user
 * (a replicator's send, a Hello call, a snapshot transfer, a call or stream being opened) holds
 * one for as long as it uses the out, so a change of members never waits for them and never
 * frees an out in use. The last reference puts the out on a graveyard that the Hello thread
 * empties (closing its stream and destroying its channel there: never on an RPC callback
 * thread, where rpc_channel_destroy is not allowed). Lock order: set_lock, table_lock,
 * bind_lock, urls_lock. */
#include "log/log.h"
#include "metrics/metrics.h"
#include "services/peer.h"
#include "services/peer_msg.h"

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
#define PEER_BINDS_MAX 16 /* certificate name -> unnamed member, learned from Hellos */

struct peer;

/* One client stream's liveness, shared by the replicator thread that owns the stream and the
 * channel thread that runs its on_close. Two references: freed by whichever lets go last. */
struct out_stream_ctx {
    atomic_int refs;
    atomic_bool dead;
    struct peer *p; /* to report a refusal as removed */
};

#define URLS_MAX 1024

/* Another member, as long as the table lists it (and after, until its last user lets go). */
struct peer_out {
    atomic_int refs;
    atomic_bool gone;        /* no longer in the table */
    uint64_t id;
    char name[CLUSTER_NAME_MAX]; /* "" while unnamed: the channel then verifies the URL's host */
    struct cluster_url url;
    struct rpc_channel *ch;
    /* Touched only by the replicator thread of this peer (transport.h), and by the reaper once
     * nobody else holds the out. */
    struct rpc_client_stream *st;
    struct out_stream_ctx *ctx;
    int64_t opened_ms;
    struct backoff backoff;
    bool told_urls; /* this stream's first Batch carried our client URLs */
    /* urls_lock */
    char urls[URLS_MAX];     /* its --advertise-client-urls */
    bool hello_answered;     /* answered our Hello */
    bool hello_inflight;     /* a Hello call to it has not completed */
    int64_t hello_next_ms;   /* while we are unnamed: when to say Hello again */
    struct peer_out *next;   /* graveyard */
};

struct removed_member {
    uint64_t id;
    char name[CLUSTER_NAME_MAX];
};

/* Bytes of Raft Batches sent to and received from one member (etcd's
 * etcd_network_peer_sent_bytes_total / _received_bytes_total): slots claimed by id, lock-free. */
#define PEER_TRAFFIC_SLOTS (4 * CLUSTER_MAX_MEMBERS)
struct traffic_slot {
    _Atomic uint64_t id; /* 0 = free; once claimed, kept */
    _Atomic uint64_t sent, received;
    /* Round-trip probes (Batch.probe / probe_echo) to this member: the token outstanding (our
     * monotonic clock when sent; 0 = none), the token it sent us to echo back (0 = none), and
     * the measured round trips, etcd's buckets. */
    _Atomic uint64_t probe_out, echo_due, probe_last; /* probe_last: when we last sent one */
    struct metrics_histogram rtt;
};
#define PROBE_INTERVAL_NS (1000ull * 1000 * 1000)    /* a probe per member per second at most */
#define PROBE_GIVE_UP_NS (10ull * 1000 * 1000 * 1000) /* an unanswered probe is replaced after */

struct peer {
    struct traffic_slot traffic[PEER_TRAFFIC_SLOTS];
    uint64_t cluster_id, self_id;
    char self_name[CLUSTER_NAME_MAX];
    bool insecure;
    size_t max_batch_bytes, max_recv_bytes;
    int send_timeout_ms, stream_queue;
    struct rpc_tls tls;      /* copies of the paths (below) */
    char *tls_ca, *tls_cert, *tls_key, *tls_stage, *tls_allowed_cn, *tls_allowed_host, *tls_crl;
    struct raft_transport transport;

    pthread_mutex_t set_lock;     /* one peer_set_cluster at a time */
    pthread_rwlock_t table_lock;
    struct cluster cluster;       /* the table in force (table_lock) */
    struct peer_out *out[CLUSTER_MAX_MEMBERS];
    size_t n_out;
    struct removed_member removed[PEER_REMOVED_MAX]; /* oldest first */
    size_t n_removed;
    atomic_uint_fast64_t gen;     /* bumped by every table change */

    pthread_mutex_t bind_lock;
    struct {
        char name[RPC_PEER_NAME_MAX];
        uint64_t id;
    } binds[PEER_BINDS_MAX];
    size_t n_binds, binds_next;

    pthread_rwlock_t node_lock; /* readers: deliveries; writer: attach/detach */
    struct raft_node *node;

    char client_urls[URLS_MAX];                           /* ours */
    pthread_mutex_t urls_lock;
    uint64_t said_we_ran;                     /* a member that answered you_have_run, or 0 */

    /* Hello: a thread calls every peer whose URLs are unknown, every HELLO_RETRY_MS, until
     * each has answered (the answers arrive on channel threads); it also reaps the graveyard. */
    pthread_t hello_thread;
    bool hello_started, stopping;
    pthread_cond_t hello_cv;   /* stopping, an answer, a table change, an out to reap */
    int hello_inflight;        /* calls whose callback has not run yet */
    struct peer_out *grave;    /* outs nobody holds any more (urls_lock) */

    void (*on_unnamed_hello)(void *arg, uint64_t id, const char *name);
    void (*on_removed)(void *arg, const char *why);
    void *cb_arg;
    atomic_bool removed_told;
    atomic_bool probe_removed; /* peer_probe_removed */

    atomic_uint_fast64_t batches_sent, msgs_sent, send_failures;
    atomic_uint_fast64_t batches_received, msgs_received, msgs_dropped, streams_refused;

    size_t snapshot_chunk;  /* bytes per Peer.Snapshot call */
    uint64_t snapshot_rate; /* bytes per second per transfer; 0 = unbounded */
    atomic_uint_fast64_t snapshots_sent, snapshots_failed;
    uint64_t fault_chunk;              /* peer_config.test_fault_snapshot_chunk */
    atomic_uint_fast64_t chunks_sent;  /* data chunks sent, for fault_chunk */
};

static void ctx_unref(struct out_stream_ctx *c)
{
    if (atomic_fetch_sub(&c->refs, 1) == 1)
        free(c);
}

/* A peer refused us as removed from the cluster: tell the owner, once. */
static void note_removed(struct peer *p, const char *why)
{
    if (!p->on_removed || atomic_exchange(&p->removed_told, true))
        return;
    p->on_removed(p->cb_arg, why);
}

static bool says_removed(grpc_status_code st, const char *msg)
{
    return st == GRPC_STATUS_PERMISSION_DENIED && msg && strstr(msg, PEER_REMOVED_TEXT);
}

/* ---- the members: outs, references, the graveyard ------------------------------------ */

/* The out of member `id` with a reference taken (give it back with out_put), or NULL. */
static struct peer_out *out_get(struct peer *p, uint64_t id)
{
    struct peer_out *o = NULL;
    pthread_rwlock_rdlock(&p->table_lock);
    for (size_t i = 0; i < p->n_out; i++)
        if (p->out[i]->id == id) {
            o = p->out[i];
            atomic_fetch_add(&o->refs, 1);
            break;
        }
    pthread_rwlock_unlock(&p->table_lock);
    return o;
}

/* Gives a reference back; the last one sends the out to the graveyard (the Hello thread closes
 * and frees it). Any thread, no lock held. */
static void out_put(struct peer *p, struct peer_out *o)
{
    if (atomic_fetch_sub(&o->refs, 1) != 1)
        return;
    pthread_mutex_lock(&p->urls_lock);
    o->next = p->grave;
    p->grave = o;
    pthread_cond_broadcast(&p->hello_cv);
    pthread_mutex_unlock(&p->urls_lock);
}

/* A new out for member m (one reference: the table's), its channel created (no connection
 * yet: gRPC connects on first use). NULL with err filled. */
static struct peer_out *out_new(struct peer *p, const struct cluster_member *m, char *err,
                                size_t errlen)
{
    struct peer_out *o = calloc(1, sizeof *o);
    if (!o) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    atomic_init(&o->refs, 1);
    atomic_init(&o->gone, false);
    o->id = m->id;
    memcpy(o->name, m->name, sizeof o->name);
    o->url = m->peer_url;
    char target[CLUSTER_HOST_MAX + 16];
    cluster_url_target(&m->peer_url, target, sizeof target);
    struct rpc_channel_config cc = {
        .target = target,
        .tls = p->insecure ? NULL : &p->tls,
        /* Verify that the member we dialed is that member: its certificate must carry the
         * member's name (craft-certs puts it in the CN and a DNS SAN). A member added by URL
         * alone has no name yet: its certificate must then carry the URL's host (DNS or IP
         * SAN), as gRPC checks by default - and as etcd checks every peer. */
        .server_name = m->name[0] ? m->name : NULL,
        .insecure = p->insecure,
        .threads = 1,
        .max_send_bytes = p->max_recv_bytes + (64u << 10),
        /* Peer.Forwards answers carry state machine results (a Put's prev_kv can be a
         * whole request's size). */
        .max_recv_bytes = p->max_recv_bytes + (64u << 10),
        .stream_queue = p->stream_queue,
        .reconnect_max_ms = BACKOFF_MAX_MS,
    };
    char cerr[256];
    o->ch = rpc_channel_create(&cc, cerr, sizeof cerr);
    if (!o->ch) {
        snprintf(err, errlen, "channel to %s (%s): %s", m->name[0] ? m->name : "unnamed member",
                 target, cerr);
        free(o);
        return NULL;
    }
    return o;
}

static void out_release(struct peer_out *o);

/* Closes and frees an out nobody holds. Not on an RPC callback thread. */
static void out_free(struct peer_out *o)
{
    out_release(o);
    rpc_channel_destroy(o->ch);
    free(o);
}

/* Frees the graveyard's outs (without holding urls_lock while destroying channels). */
static void reap(struct peer *p)
{
    pthread_mutex_lock(&p->urls_lock);
    struct peer_out *g = p->grave;
    p->grave = NULL;
    pthread_mutex_unlock(&p->urls_lock);
    while (g) {
        struct peer_out *next = g->next;
        out_free(g);
        g = next;
    }
}

/* ---- outgoing ----------------------------------------------------------------------- */

static void out_on_message(struct rpc_client_stream *s, const uint8_t *d, size_t n, void *arg)
{
    (void)s, (void)d, (void)n, (void)arg; /* the server side never sends */
}

static void out_on_close(struct rpc_client_stream *s, grpc_status_code st, const char *msg,
                         void *arg)
{
    (void)s;
    struct out_stream_ctx *c = arg;
    if (says_removed(st, msg))
        note_removed(c->p, msg);
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
static struct rpc_client_stream *out_stream(struct peer *p, struct peer_out *o)
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
    c->p = p;
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

/* The traffic slot of member id (claimed if new), or NULL when every slot is taken. */
static struct traffic_slot *traffic_of(struct peer *p, uint64_t id)
{
    if (!id)
        return NULL;
    for (size_t i = 0; i < PEER_TRAFFIC_SLOTS; i++) {
        uint64_t have = atomic_load_explicit(&p->traffic[i].id, memory_order_acquire);
        if (have == id)
            return &p->traffic[i];
        if (have == 0) {
            uint64_t zero = 0;
            if (atomic_compare_exchange_strong(&p->traffic[i].id, &zero, id) || zero == id)
                return &p->traffic[i]; /* rtt was initialised in peer_create */
        }
    }
    return NULL;
}

static void traffic_add(struct peer *p, uint64_t id, bool sent, size_t bytes)
{
    struct traffic_slot *t = traffic_of(p, id);
    if (t)
        atomic_fetch_add_explicit(sent ? &t->sent : &t->received, bytes, memory_order_relaxed);
}

size_t peer_traffic_get(struct peer *p, struct peer_traffic *out, size_t max)
{
    size_t n = 0;
    for (size_t i = 0; i < PEER_TRAFFIC_SLOTS && n < max; i++) {
        uint64_t id = atomic_load_explicit(&p->traffic[i].id, memory_order_acquire);
        if (!id)
            continue;
        out[n].id = id;
        out[n].sent_bytes = atomic_load_explicit(&p->traffic[i].sent, memory_order_relaxed);
        out[n].received_bytes = atomic_load_explicit(&p->traffic[i].received, memory_order_relaxed);
        out[n].rtt_count = metrics_histogram_read(&p->traffic[i].rtt, out[n].rtt_counts,
                                                  &out[n].rtt_sum_ns);
        n++;
    }
    return n;
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
        peer_msg_to_pb(&msgs[i], &pm[i], pe + k, pep + k);
        pmp[i] = &pm[i];
        k += msgs[i].n_entries;
    }
    Craft__Raft__Batch b = CRAFT__RAFT__BATCH__INIT;
    b.cluster_id = p->cluster_id;
    b.n_msgs = n;
    b.msgs = pmp;
    uint8_t *buf;
    size_t len;
    struct rpc_client_stream *st = out_stream(p, o);
    if (!st) {
        rc = RPC_ECLOSED;
        goto out;
    }
    if (!o->told_urls)
        b.client_urls = p->client_urls;
    /* Round-trip probes: echo the token this member last sent us, and - as the leader, on a
     * batch of heartbeats alone, which the follower answers at once (appends with entries wait
     * for its fsync) - send one of our own if none is out. */
    struct traffic_slot *ts = n ? traffic_of(p, msgs[0].to) : NULL;
    if (ts) {
        b.probe_echo = atomic_exchange_explicit(&ts->echo_due, 0, memory_order_relaxed);
        bool heartbeats = true;
        for (size_t i = 0; i < n && heartbeats; i++)
            heartbeats = msgs[i].type == RAFT_MSG_APPEND && msgs[i].n_entries == 0;
        /* At most one a second, and one at a time (an unanswered one is given up on after
         * PROBE_GIVE_UP_NS). */
        uint64_t now = metrics_now_ns(), out = atomic_load(&ts->probe_out);
        if (heartbeats && now - atomic_load(&ts->probe_last) >= PROBE_INTERVAL_NS &&
            (!out || now - out > PROBE_GIVE_UP_NS) &&
            atomic_compare_exchange_strong(&ts->probe_out, &out, now)) {
            atomic_store(&ts->probe_last, now);
            b.probe = now;
        }
    }
    rc = rpc_msg_pack(&b.base, &buf, &len);
    if (rc == 0) {
        rc = rpc_client_stream_send(st, buf, len, timeout_ms);
        o->told_urls = o->told_urls || rc == 0;
        if (rc == 0 && n)
            traffic_add(p, msgs[0].to, true, len);
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
 * (fewer than n only when the stream stayed full for timeout_ms), or -1: unreachable, or not a
 * member (any more). */
static long send_msgs(struct peer *p, uint64_t to, const struct raft_msg *msgs, size_t n,
                      int timeout_ms)
{
    struct peer_out *o = out_get(p, to);
    if (!o)
        return -1;
    size_t i = 0;
    long ret = (long)n;
    while (i < n) {
        size_t j = i, bytes = 0;
        while (j < n && (j == i || bytes + msg_size(&msgs[j]) <= p->max_batch_bytes))
            bytes += msg_size(&msgs[j++]);
        int rc = send_batch(p, o, msgs + i, j - i, timeout_ms);
        if (rc == RPC_EFULL && timeout_ms == 0) {
            ret = (long)i; /* the replicator sends the rest, waiting for room */
            break;
        }
        if (rc != 0) {
            atomic_fetch_add(&p->send_failures, 1);
            /* Repeats every heartbeat while the peer is down: rate-limited per peer. */
            if (rc == RPC_EFULL)
                log_warn_limited(to,
                                 LOG_FIELDS(LOG_ID("member", p->self_id), LOG_ID("remote-peer-id", to)),
                                 "peer %016" PRIx64 " is slow: its stream stayed full for %d ms; "
                                 "messages dropped (Raft resends)",
                                 to, timeout_ms);
            else
                log_warn_limited(to,
                                 LOG_FIELDS(LOG_ID("member", p->self_id), LOG_ID("remote-peer-id", to),
                                            LOG_STR("error", rpc_strerror(rc))),
                                 "peer %016" PRIx64 " unreachable: %s", to, rpc_strerror(rc));
            ret = -1;
            break;
        }
        atomic_fetch_add(&p->batches_sent, 1);
        atomic_fetch_add(&p->msgs_sent, j - i);
        i = j;
    }
    out_put(p, o);
    return ret;
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
    struct peer_out *o = out_get(p, to);
    if (o) {
        out_release(o);
        out_put(p, o);
    }
}

/* ---- who is calling: authorization by the table in force ------------------------------ */

static bool cert_has_name(const struct rpc_peer *cert, const char *name)
{
    if (!name || !*name)
        return false;
    if (strcmp(cert->cn, name) == 0)
        return true;
    for (int i = 0; i < cert->nsans; i++)
        if (strcmp(cert->sans[i], name) == 0)
            return true;
    return false;
}

/* table_lock held. The removed member cert (or the claimed id) stands for, or NULL. */
static const struct removed_member *removed_match(const struct peer *p, const struct rpc_peer *cert,
                                                  uint64_t claimed)
{
    for (size_t i = 0; i < p->n_removed; i++) {
        const struct removed_member *r = &p->removed[i];
        if ((claimed && r->id == claimed) || (cert && cert_has_name(cert, r->name)))
            return r;
    }
    return NULL;
}

/* table_lock held (read). Whether some member other than this one is unnamed. */
static bool has_unnamed(const struct peer *p)
{
    for (size_t i = 0; i < p->cluster.n; i++)
        if (!p->cluster.members[i].name[0] && p->cluster.members[i].id != p->self_id)
            return true;
    return false;
}

/* The unnamed member a Hello bound cert's name to, or 0 (bind_lock taken here). */
static uint64_t bind_lookup(struct peer *p, const struct rpc_peer *cert)
{
    uint64_t id = 0;
    pthread_mutex_lock(&p->bind_lock);
    for (size_t i = 0; !id && i < p->n_binds; i++)
        if (cert_has_name(cert, p->binds[i].name))
            id = p->binds[i].id;
    pthread_mutex_unlock(&p->bind_lock);
    return id;
}

static void bind_add(struct peer *p, const struct rpc_peer *cert, uint64_t id)
{
    const char *name = cert->cn[0] ? cert->cn : cert->nsans ? cert->sans[0] : "";
    if (!*name)
        return;
    pthread_mutex_lock(&p->bind_lock);
    size_t i;
    for (i = 0; i < p->n_binds; i++)
        if (strcmp(p->binds[i].name, name) == 0)
            break;
    if (i == p->n_binds) {
        if (p->n_binds < PEER_BINDS_MAX) {
            i = p->n_binds++;
        } else {
            i = p->binds_next;
            p->binds_next = (p->binds_next + 1) % PEER_BINDS_MAX;
        }
    }
    snprintf(p->binds[i].name, sizeof p->binds[i].name, "%s", name);
    p->binds[i].id = id;
    pthread_mutex_unlock(&p->bind_lock);
}

static void why_removed(const struct removed_member *r, char *why, size_t whylen)
{
    if (r->name[0])
        snprintf(why, whylen, "member %s (%016" PRIx64 ") was " PEER_REMOVED_TEXT, r->name, r->id);
    else
        snprintf(why, whylen, "member %016" PRIx64 " was " PEER_REMOVED_TEXT, r->id);
}

uint64_t peer_authorize(struct peer *p, const struct rpc_peer *cert, uint64_t claimed, char *why,
                        size_t whylen)
{
    uint64_t id = 0;
    bool bind = false;
    char tmp[8];
    if (!why || !whylen) {
        why = tmp;
        whylen = sizeof tmp;
    }
    why[0] = '\0';
    pthread_rwlock_rdlock(&p->table_lock);
    const struct cluster_member *m =
        cluster_find_cert(&p->cluster, cert->cn, (const char(*)[256])cert->sans, cert->nsans);
    const struct cluster_member *u;
    if (m) {
        /* The strict rule: the certificate names a member. */
        if (m->id != p->self_id)
            id = m->id;
        else
            snprintf(why, whylen, "peer certificate names this member");
    } else if (claimed && claimed != p->self_id && (u = cluster_find_id(&p->cluster, claimed)) &&
               !u->name[0]) {
        /* An unnamed member, claimed by a certificate that names no member. */
        id = claimed;
        bind = true;
    } else {
        uint64_t b = bind_lookup(p, cert);
        if (b && b != p->self_id && (u = cluster_find_id(&p->cluster, b)) && !u->name[0])
            id = b;
    }
    if (!id && !m) {
        const struct removed_member *r = removed_match(p, cert, claimed);
        if (r)
            why_removed(r, why, whylen);
        else
            snprintf(why, whylen, "peer certificate names no other member of this cluster");
    }
    pthread_rwlock_unlock(&p->table_lock);
    if (bind)
        bind_add(p, cert, id);
    return id;
}

/* Insecure (tests only): no certificate, the claim is trusted - but not a removed member's. */
static uint64_t authorize_insecure(struct peer *p, uint64_t claimed, char *why, size_t whylen)
{
    if (!claimed)
        return 1;
    pthread_rwlock_rdlock(&p->table_lock);
    const struct removed_member *r =
        cluster_find_id(&p->cluster, claimed) ? NULL : removed_match(p, NULL, claimed);
    if (r)
        why_removed(r, why, whylen);
    pthread_rwlock_unlock(&p->table_lock);
    return r ? 0 : claimed;
}

static uint64_t call_member(struct peer *p, struct rpc_call *call, uint64_t claimed, char *why,
                            size_t whylen)
{
    if (p->insecure)
        return authorize_insecure(p, claimed, why, whylen);
    struct rpc_peer id;
    if (rpc_call_peer_identity(call, &id) != 0) {
        snprintf(why, whylen, "no verified peer certificate");
        return 0;
    }
    return peer_authorize(p, &id, claimed, why, whylen);
}

uint64_t peer_call_member(struct peer *p, struct rpc_call *call)
{
    if (p->insecure)
        return 1;
    char why[8];
    return call_member(p, call, 0, why, sizeof why);
}

uint64_t peer_stream_member(struct peer *p, struct rpc_stream *s)
{
    if (p->insecure)
        return 1;
    struct rpc_peer id;
    if (rpc_stream_peer_identity(s, &id) != 0)
        return 0;
    return peer_authorize(p, &id, 0, NULL, 0);
}

/* ---- incoming ----------------------------------------------------------------------- */

struct in_stream {
    struct peer *p;
    uint64_t from;  /* authenticated member; 0 with insecure, or until the first Batch */
    bool pending;   /* an unnamed member may be calling: decided by the first Batch's sender */
    uint64_t gen;   /* the table generation `from` was checked against */
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

static void in_refuse(struct rpc_stream *s, struct in_stream *in, const char *why)
{
    atomic_fetch_add(&in->p->streams_refused, 1);
    in_finish(s, in, GRPC_STATUS_PERMISSION_DENIED, why);
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
    in->gen = atomic_load(&p->gen);
    if (p->insecure) {
        in->pending = true; /* the first Batch's sender: refused if removed */
        return in;
    }
    struct rpc_peer id;
    char why[200] = "no verified peer certificate";
    if (rpc_stream_peer_identity(s, &id) == 0)
        in->from = peer_authorize(p, &id, 0, why, sizeof why);
    if (in->from)
        return in;
    pthread_rwlock_rdlock(&p->table_lock);
    /* An unnamed member's stream names no member: its first Batch says who it claims to be. */
    in->pending = !strstr(why, PEER_REMOVED_TEXT) && strstr(why, "no other member") &&
                  has_unnamed(p);
    pthread_rwlock_unlock(&p->table_lock);
    if (!in->pending)
        in_refuse(s, in, why);
    return in;
}

/* Who sends this Batch, checked again after any table change (and first for a stream that may
 * come from an unnamed member): true to go on, false when the stream was refused. */
static bool in_check(struct rpc_stream *s, struct in_stream *in, const Craft__Raft__Batch *b)
{
    struct peer *p = in->p;
    uint64_t gen = atomic_load(&p->gen);
    if (!in->pending && in->gen == gen)
        return true;
    uint64_t first = b->n_msgs ? b->msgs[0]->from : 0;
    uint64_t claimed = in->pending || p->insecure ? first : in->from;
    char why[200] = "no verified peer certificate";
    uint64_t from = 0;
    if (p->insecure) {
        from = authorize_insecure(p, claimed, why, sizeof why);
    } else {
        struct rpc_peer id;
        if (rpc_stream_peer_identity(s, &id) == 0)
            from = peer_authorize(p, &id, claimed, why, sizeof why);
    }
    if (!from || (!in->pending && !p->insecure && from != in->from)) {
        in_refuse(s, in, from ? "peer certificate now names another member" : why);
        return false;
    }
    if (!p->insecure)
        in->from = from;
    in->pending = false;
    in->gen = gen;
    return true;
}

static void set_member_urls(struct peer *p, uint64_t id, const char *urls)
{
    if (!urls || !*urls || id == p->self_id)
        return;
    struct peer_out *o = out_get(p, id);
    if (!o)
        return;
    pthread_mutex_lock(&p->urls_lock);
    snprintf(o->urls, URLS_MAX, "%s", urls);
    pthread_mutex_unlock(&p->urls_lock);
    out_put(p, o);
}

static void in_message(struct rpc_stream *s, const uint8_t *data, size_t len, void *user)
{
    struct in_stream *in = user;
    if (!in || in->finished)
        return;
    struct peer *p = in->p;
    struct peer_batch pb;
    int rc = peer_batch_decode(data, len, &pb); /* peer_msg.h: every bound checked there */
    if (rc != PEER_BATCH_OK) {
        peer_batch_free(&pb);
        in_finish(s, in,
                  rc == PEER_BATCH_ENOMEM ? GRPC_STATUS_RESOURCE_EXHAUSTED
                                          : GRPC_STATUS_INVALID_ARGUMENT,
                  rc == PEER_BATCH_ENOMEM ? "out of memory" : "malformed raft Batch");
        return;
    }
    const Craft__Raft__Batch *b = pb.pb;
    if (b->cluster_id != p->cluster_id) {
        in_finish(s, in, GRPC_STATUS_FAILED_PRECONDITION,
                  "cluster id mismatch: the peer was started with another --initial-cluster");
        peer_batch_free(&pb);
        return;
    }
    if (!in_check(s, in, b)) {
        peer_batch_free(&pb);
        return;
    }
    atomic_fetch_add(&p->batches_received, 1);
    /* Insecure streams have no verified identity: take the sender's word (tests only). */
    uint64_t sender = in->from ? in->from : b->n_msgs ? b->msgs[0]->from : 0;
    traffic_add(p, sender, false, len);
    struct traffic_slot *ts = (b->probe || b->probe_echo) ? traffic_of(p, sender) : NULL;
    if (ts && b->probe)
        atomic_store_explicit(&ts->echo_due, b->probe, memory_order_relaxed);
    if (ts && b->probe_echo) {
        uint64_t want = b->probe_echo;
        if (atomic_compare_exchange_strong(&ts->probe_out, &want, 0))
            metrics_histogram_observe(&ts->rtt, metrics_now_ns() - b->probe_echo);
    }
    if (b->client_urls && *b->client_urls && sender)
        set_member_urls(p, sender, b->client_urls);
    pthread_rwlock_rdlock(&p->node_lock);
    for (size_t i = 0; i < pb.n; i++) {
        const struct raft_msg *m = &pb.msgs[i];
        bool ok = pb.ok[i] && m->to == p->self_id && (p->insecure || m->from == in->from) &&
                  p->node;
        if (ok) {
            raft_node_step(p->node, m);
            atomic_fetch_add(&p->msgs_received, 1);
        } else {
            atomic_fetch_add(&p->msgs_dropped, 1);
        }
    }
    pthread_rwlock_unlock(&p->node_lock);
    peer_batch_free(&pb);
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

/* ---- Hello: client URLs, publishing our name, joining ---------------------------------- */

/* The member table, encoded (for an answer to a joining member); NULL on failure. */
static uint8_t *table_encoded(struct peer *p, size_t *len)
{
    uint8_t *buf = NULL;
    pthread_rwlock_rdlock(&p->table_lock);
    int rc = cluster_encode(&p->cluster, &buf, len);
    pthread_rwlock_unlock(&p->table_lock);
    return rc == 0 ? buf : NULL;
}

static void handle_hello(struct rpc_call *call, const ProtobufCMessage *m, void *ctx)
{
    struct peer *p = ctx;
    const Craft__Raft__PeerHello *h = (const Craft__Raft__PeerHello *)m;
    Craft__Raft__PeerHello r = CRAFT__RAFT__PEER_HELLO__INIT;
    r.cluster_id = p->cluster_id;
    r.client_urls = p->client_urls;
    r.member_id = p->self_id;
    r.name = p->self_name;
    if (h->join) {
        /* A member joining with no data: any holder of a certificate from our CA may read the
         * member table (clients can read the same with MemberList). */
        uint8_t *t = table_encoded(p, &r.members.len);
        if (!t) {
            rpc_call_fail(call, GRPC_STATUS_INTERNAL, "cannot encode the member table");
            return;
        }
        r.members.data = t;
        rpc_call_reply_msg(call, &r.base);
        free(t);
        return;
    }
    char why[200];
    uint64_t from = call_member(p, call, h->member_id, why, sizeof why);
    if (!from) {
        rpc_call_fail(call, GRPC_STATUS_PERMISSION_DENIED, why);
        return;
    }
    if (h->cluster_id != p->cluster_id) {
        rpc_call_fail(call, GRPC_STATUS_FAILED_PRECONDITION, "cluster id mismatch");
        return;
    }
    if (p->insecure)
        from = h->member_id;
    set_member_urls(p, from, h->client_urls);
    /* An unnamed member publishing its name: the name must be one its certificate carries. */
    if (h->name && *h->name && p->on_unnamed_hello) {
        pthread_rwlock_rdlock(&p->table_lock);
        const struct cluster_member *mm = cluster_find_id(&p->cluster, from);
        bool unnamed = mm && !mm->name[0] && !cluster_find_name(&p->cluster, h->name);
        pthread_rwlock_unlock(&p->table_lock);
        struct rpc_peer cert;
        if (unnamed && (p->insecure || (rpc_call_peer_identity(call, &cert) == 0 &&
                                        cert_has_name(&cert, h->name))))
            p->on_unnamed_hello(p->cb_arg, from, h->name);
    }
    pthread_rwlock_rdlock(&p->node_lock);
    r.you_have_run = p->node && raft_node_has_run(p->node, from);
    pthread_rwlock_unlock(&p->node_lock);
    rpc_call_reply_msg(call, &r.base);
}

struct hello_call {
    struct peer *p;
    struct peer_out *o; /* a reference, given back when the call completes */
};

static void hello_done(struct rpc_result *res, void *arg)
{
    struct hello_call *hc = arg;
    struct peer *p = hc->p;
    struct peer_out *o = hc->o;
    Craft__Raft__PeerHello *h = NULL;
    if (res->status == GRPC_STATUS_OK)
        h = (Craft__Raft__PeerHello *)rpc_msg_unpack(&craft__raft__peer_hello__descriptor,
                                                    res->data, res->len);
    else if (says_removed(res->status, res->message))
        note_removed(p, res->message);
    bool ours = h && h->cluster_id == p->cluster_id;
    pthread_mutex_lock(&p->urls_lock);
    if (ours) {
        if (h->client_urls && *h->client_urls)
            snprintf(o->urls, URLS_MAX, "%s", h->client_urls);
        o->hello_answered = true;
        if (h->you_have_run && !p->said_we_ran)
            p->said_we_ran = o->id;
    }
    o->hello_inflight = false;
    pthread_mutex_unlock(&p->urls_lock);
    if (h)
        protobuf_c_message_free_unpacked(&h->base, NULL);
    free(hc);
    out_put(p, o); /* before the count drops: peer_destroy waits for it, then frees */
    pthread_mutex_lock(&p->urls_lock);
    p->hello_inflight--;
    pthread_cond_broadcast(&p->hello_cv);
    pthread_mutex_unlock(&p->urls_lock);
}

void peer_probe_removed(struct peer *p, bool on)
{
    if (!p || atomic_exchange(&p->probe_removed, on) == on || !on)
        return;
    pthread_mutex_lock(&p->urls_lock);
    pthread_cond_broadcast(&p->hello_cv);
    pthread_mutex_unlock(&p->urls_lock);
}

/* Whether this member is in its own table without a name (it must publish it). */
static bool self_unnamed(struct peer *p)
{
    pthread_rwlock_rdlock(&p->table_lock);
    const struct cluster_member *m = cluster_find_id(&p->cluster, p->self_id);
    bool unnamed = m && !m->name[0];
    pthread_rwlock_unlock(&p->table_lock);
    return unnamed;
}

/* The Hello thread: every HELLO_RETRY_MS (or when woken), Hello to each member that has not
 * answered yet (members added later included), and - while this member is unnamed - to every
 * member each PEER_PUBLISH_RETRY_MS; and the graveyard emptied. */
static void *hello_main(void *arg)
{
    struct peer *p = arg;
    Craft__Raft__PeerHello h = CRAFT__RAFT__PEER_HELLO__INIT;
    h.cluster_id = p->cluster_id;
    h.client_urls = p->client_urls;
    h.member_id = p->self_id;
    h.name = p->self_name;
    uint8_t *buf = NULL;
    size_t len = 0;
    if (rpc_msg_pack(&h.base, &buf, &len) != 0)
        return NULL;
    for (;;) {
        reap(p);
        struct peer_out *outs[CLUSTER_MAX_MEMBERS];
        size_t n = 0;
        bool publish = self_unnamed(p) || atomic_load(&p->probe_removed);
        pthread_rwlock_rdlock(&p->table_lock);
        for (size_t i = 0; i < p->n_out; i++) {
            outs[n] = p->out[i];
            atomic_fetch_add(&outs[n++]->refs, 1);
        }
        pthread_rwlock_unlock(&p->table_lock);
        int64_t now = clock_now_ms();
        struct peer_out *call[CLUSTER_MAX_MEMBERS];
        size_t n_call = 0;
        pthread_mutex_lock(&p->urls_lock);
        bool stopping = p->stopping;
        for (size_t i = 0; i < n && !stopping; i++) {
            struct peer_out *o = outs[i];
            bool need = !(o->urls[0] && o->hello_answered) || (publish && now >= o->hello_next_ms);
            if (!need || o->hello_inflight)
                continue;
            o->hello_inflight = true;
            o->hello_next_ms = now + PEER_PUBLISH_RETRY_MS;
            p->hello_inflight++;
            call[n_call++] = o;
        }
        pthread_mutex_unlock(&p->urls_lock);
        for (size_t i = 0; i < n_call; i++) {
            struct peer_out *o = call[i];
            struct hello_call *hc = malloc(sizeof *hc);
            atomic_fetch_add(&o->refs, 1); /* the call's */
            int rc = RPC_ENOMEM;
            if (hc) {
                *hc = (struct hello_call){p, o};
                rc = rpc_channel_call_async(o->ch, HELLO_METHOD, buf, len, HELLO_RETRY_MS,
                                            hello_done, hc);
            }
            if (rc != 0) {
                free(hc);
                pthread_mutex_lock(&p->urls_lock);
                o->hello_inflight = false;
                p->hello_inflight--;
                pthread_mutex_unlock(&p->urls_lock);
                out_put(p, o);
            }
        }
        for (size_t i = 0; i < n; i++)
            out_put(p, outs[i]);
        pthread_mutex_lock(&p->urls_lock);
        if (p->stopping) {
            pthread_mutex_unlock(&p->urls_lock);
            break;
        }
        if (!p->grave) {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_nsec += (long)HELLO_RETRY_MS * 1000000L;
            until.tv_sec += until.tv_nsec / 1000000000L;
            until.tv_nsec %= 1000000000L;
            pthread_cond_timedwait(&p->hello_cv, &p->urls_lock, &until);
        }
        pthread_mutex_unlock(&p->urls_lock);
    }
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
    struct peer_out *o = out_get(p, to);
    if (!o)
        return -EINVAL;
    Craft__Raft__Message pm;
    peer_msg_to_pb(m, &pm, NULL, NULL);
    Craft__Raft__SnapshotChunk c = CRAFT__RAFT__SNAPSHOT_CHUNK__INIT;
    c.cluster_id = p->cluster_id;
    c.msg = &pm;
    c.total = snap_file_size(f);
    uint8_t *buf = malloc(p->snapshot_chunk);
    if (!buf) {
        out_put(p, o);
        return -ENOMEM;
    }
    int64_t t0 = clock_now_ms();
    uint64_t sent = 0, off = 0;
    bool asked = false;
    int rc = -EIO;
    for (;;) {
        pthread_mutex_lock(&p->urls_lock);
        bool stopping = p->stopping;
        pthread_mutex_unlock(&p->urls_lock);
        if (stopping || atomic_load(&o->gone))
            break; /* shutting down, or the member left the cluster */
        size_t n = 0;
        if (asked && snap_file_chunk(f, off, buf, p->snapshot_chunk, &n))
            break;
        if (asked && n && p->fault_chunk &&
            atomic_fetch_add(&p->chunks_sent, 1) + 1 == p->fault_chunk) {
            buf[n / 2] ^= 0x20; /* the test fault: buf is a copy, the file stays intact */
            log_warn(LOG_FIELDS(LOG_ID("member", p->self_id), LOG_ID("remote-peer-id", to)),
                     "test fault: flipped byte %" PRIu64 " of snapshot %" PRIu64 "/%" PRIu64
                     " (chunk %" PRIu64 ") sent to %016" PRIx64,
                     off + n / 2, m->snapshot_index, m->snapshot_term, p->fault_chunk, to);
        }
        c.offset = off;
        c.data.data = buf;
        c.data.len = asked ? n : 0; /* the first call only asks where to start */
        Craft__Raft__SnapshotAck *ack = NULL;
        struct rpc_result res;
        int crc = rpc_channel_call_msg(o->ch, SNAPSHOT_METHOD, &c.base,
                                       &craft__raft__snapshot_ack__descriptor, SNAPSHOT_CALL_MS,
                                       (ProtobufCMessage **)&ack, &res);
        if (crc != 0 || res.status != GRPC_STATUS_OK || !ack) {
            if (crc == 0 && res.status != GRPC_STATUS_OK && res.status != GRPC_STATUS_UNAVAILABLE)
                log_warn(LOG_FIELDS(LOG_ID("member", p->self_id), LOG_ID("remote-peer-id", to)),
                         "snapshot %" PRIu64 "/%" PRIu64 " to %016" PRIx64
                         " refused at offset %" PRIu64 ": %s",
                         m->snapshot_index, m->snapshot_term, to, off, res.message);
            if (ack)
                protobuf_c_message_free_unpacked(&ack->base, NULL);
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
    out_put(p, o);
    atomic_fetch_add(rc == 0 ? &p->snapshots_sent : &p->snapshots_failed, 1);
    return rc;
}

/* Receiver: one chunk into the node's snapshot store (raft/snap: kept aside, verified whole),
 * and the leader's message to the node once the snapshot is complete. */
static void handle_snapshot(struct rpc_call *call, const ProtobufCMessage *msg, void *ctx)
{
    struct peer *p = ctx;
    const Craft__Raft__SnapshotChunk *c = (const Craft__Raft__SnapshotChunk *)msg;
    char why[200];
    uint64_t from = call_member(p, call, c->msg ? c->msg->from : 0, why, sizeof why);
    struct raft_msg m;
    if (!from) {
        rpc_call_fail(call, GRPC_STATUS_PERMISSION_DENIED, why);
        return;
    }
    if (c->cluster_id != p->cluster_id) {
        rpc_call_fail(call, GRPC_STATUS_FAILED_PRECONDITION, "cluster id mismatch");
        return;
    }
    if (!peer_msg_snapshot_from_pb(c->msg, &m) || m.to != p->self_id ||
        (!p->insecure && m.from != from)) {
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
        snprintf(why, sizeof why, "snapshot %" PRIu64 "/%" PRIu64 ": %s", m.snapshot_index,
                 m.snapshot_term, snap_errmsg());
        /* Rare (a damaged transfer, a full disk): our leaders stop a transfer at its first
         * refusal and retry after an election timeout. Rate-limited per sender all the same. */
        log_warn_limited(from,
                         LOG_FIELDS(LOG_ID("member", p->self_id), LOG_ID("remote-peer-id", from)),
                         "refused a snapshot chunk at offset %" PRIu64 " from %016" PRIx64
                         ": snapshot %" PRIu64 "/%" PRIu64 ": %s",
                         c->offset, from, m.snapshot_index, m.snapshot_term, snap_errmsg());
        rpc_call_fail(call, rc == -EFBIG || rc == -ENOSPC ? GRPC_STATUS_RESOURCE_EXHAUSTED
                                                          : GRPC_STATUS_FAILED_PRECONDITION,
                      why);
        return;
    }
    ack.next_offset = at;
    rpc_call_reply_msg(call, &ack.base);
}

/* ---- the member table changes --------------------------------------------------------- */

static bool same_member(const struct peer_out *o, const struct cluster_member *m)
{
    return o->id == m->id && strcmp(o->name, m->name) == 0 && o->url.tls == m->peer_url.tls &&
           o->url.port == m->peer_url.port && strcmp(o->url.host, m->peer_url.host) == 0;
}

/* table_lock held (write). */
static void removed_forget(struct peer *p, const struct cluster_member *m)
{
    for (size_t i = 0; i < p->n_removed;) {
        struct removed_member *r = &p->removed[i];
        if (r->id == m->id || (m->name[0] && strcmp(r->name, m->name) == 0)) {
            memmove(r, r + 1, (p->n_removed - i - 1) * sizeof *r);
            p->n_removed--;
        } else {
            i++;
        }
    }
}

/* table_lock held (write). */
static void removed_add(struct peer *p, const struct cluster_member *m)
{
    for (size_t i = 0; i < p->n_removed; i++)
        if (p->removed[i].id == m->id)
            return;
    if (p->n_removed == PEER_REMOVED_MAX) { /* forget the oldest */
        memmove(p->removed, p->removed + 1, (PEER_REMOVED_MAX - 1) * sizeof p->removed[0]);
        p->n_removed--;
    }
    size_t i = p->n_removed++;
    p->removed[i].id = m->id;
    memcpy(p->removed[i].name, m->name, sizeof p->removed[i].name);
}

void peer_set_cluster(struct peer *p, const struct cluster *c)
{
    if (!c || c->n == 0 || cluster_check(c, NULL, 0) != 0)
        return;
    pthread_mutex_lock(&p->set_lock);
    /* The outs in force (only this function changes them, and set_lock is ours). */
    struct peer_out *old[CLUSTER_MAX_MEMBERS], *nw[CLUSTER_MAX_MEMBERS];
    size_t n_old = 0, n_new = 0;
    pthread_rwlock_rdlock(&p->table_lock);
    for (size_t i = 0; i < p->n_out; i++)
        old[n_old++] = p->out[i];
    pthread_rwlock_unlock(&p->table_lock);
    bool kept[CLUSTER_MAX_MEMBERS] = {false};
    for (size_t i = 0; i < c->n; i++) {
        const struct cluster_member *m = &c->members[i];
        if (m->id == p->self_id)
            continue;
        struct peer_out *o = NULL, *prev = NULL;
        for (size_t k = 0; k < n_old; k++)
            if (old[k]->id == m->id) {
                prev = old[k];
                if (same_member(old[k], m)) {
                    o = old[k]; /* the table's reference moves to the new list */
                    kept[k] = true;
                }
            }
        if (!o) {
            char err[400];
            o = out_new(p, m, err, sizeof err);
            if (!o) {
                log_warn(LOG_FIELDS(LOG_ID("member", p->self_id), LOG_ID("remote-peer-id", m->id)),
                         "peer member %016" PRIx64 " left out: %s", m->id, err);
                continue;
            }
            if (prev) { /* a new name or peer URL: what it told us still holds */
                pthread_mutex_lock(&p->urls_lock);
                memcpy(o->urls, prev->urls, sizeof o->urls);
                pthread_mutex_unlock(&p->urls_lock);
            }
        }
        nw[n_new++] = o;
    }
    pthread_rwlock_wrlock(&p->table_lock);
    for (size_t i = 0; i < p->cluster.n; i++)
        if (!cluster_find_id(c, p->cluster.members[i].id))
            removed_add(p, &p->cluster.members[i]);
    for (size_t i = 0; i < c->n; i++)
        removed_forget(p, &c->members[i]);
    uint64_t keep_id = p->cluster_id;
    p->cluster = *c;
    p->cluster.id = keep_id;
    memcpy(p->out, nw, n_new * sizeof nw[0]);
    p->n_out = n_new;
    atomic_fetch_add(&p->gen, 1);
    pthread_rwlock_unlock(&p->table_lock);
    for (size_t k = 0; k < n_old; k++)
        if (!kept[k]) {
            atomic_store(&old[k]->gone, true);
            out_put(p, old[k]); /* the table's reference: closed once its users let go */
        }
    pthread_mutex_lock(&p->urls_lock);
    pthread_cond_broadcast(&p->hello_cv); /* new members: Hello */
    pthread_mutex_unlock(&p->urls_lock);
    pthread_mutex_unlock(&p->set_lock);
}

void peer_get_cluster(struct peer *p, struct cluster *out)
{
    pthread_rwlock_rdlock(&p->table_lock);
    *out = p->cluster;
    pthread_rwlock_unlock(&p->table_lock);
}

/* ---- lifecycle ---------------------------------------------------------------------- */

struct peer *peer_create(const struct peer_config *cfg, char *err, size_t errlen)
{
    if (!cfg->cluster || !cluster_find_id(cfg->cluster, cfg->self_id) ||
        cluster_check(cfg->cluster, NULL, 0) != 0) {
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
    for (size_t i = 0; i < PEER_TRAFFIC_SLOTS; i++)
        metrics_histogram_init(&p->traffic[i].rtt, metrics_buckets_etcd_rtt, 14, 1e9);
    p->cluster = *cfg->cluster;
    p->cluster_id = cfg->cluster->id;
    p->self_id = cfg->self_id;
    const struct cluster_member *self = cluster_find_id(cfg->cluster, cfg->self_id);
    snprintf(p->self_name, sizeof p->self_name, "%s",
             cfg->name ? cfg->name : self->name);
    p->insecure = cfg->insecure;
    if (cfg->tls) {
        p->tls_ca = cfg->tls->ca_file ? strdup(cfg->tls->ca_file) : NULL;
        p->tls_cert = cfg->tls->cert_file ? strdup(cfg->tls->cert_file) : NULL;
        p->tls_key = cfg->tls->key_file ? strdup(cfg->tls->key_file) : NULL;
        p->tls_stage = cfg->tls->stage_dir ? strdup(cfg->tls->stage_dir) : NULL;
        p->tls_allowed_cn = cfg->tls->allowed_cn ? strdup(cfg->tls->allowed_cn) : NULL;
        p->tls_allowed_host =
            cfg->tls->allowed_hostname ? strdup(cfg->tls->allowed_hostname) : NULL;
        p->tls_crl = cfg->tls->crl_file ? strdup(cfg->tls->crl_file) : NULL;
        p->tls = (struct rpc_tls){.ca_file = p->tls_ca,
                                  .cert_file = p->tls_cert,
                                  .key_file = p->tls_key,
                                  .reload_sec = cfg->tls->reload_sec,
                                  .stage_dir = p->tls_stage,
                                  .allowed_cn = p->tls_allowed_cn,
                                  .allowed_hostname = p->tls_allowed_host,
                                  .crl_file = p->tls_crl};
    }
    p->max_batch_bytes = cfg->max_batch_bytes ? cfg->max_batch_bytes : PEER_DEFAULT_MAX_BATCH_BYTES;
    p->max_recv_bytes = cfg->max_recv_bytes ? cfg->max_recv_bytes : PEER_DEFAULT_MAX_RECV_BYTES;
    if (p->max_batch_bytes > p->max_recv_bytes)
        p->max_batch_bytes = p->max_recv_bytes;
    p->send_timeout_ms = cfg->send_timeout_ms ? cfg->send_timeout_ms : PEER_DEFAULT_SEND_TIMEOUT_MS;
    p->stream_queue = cfg->stream_queue ? cfg->stream_queue : PEER_DEFAULT_STREAM_QUEUE;
    pthread_mutex_init(&p->set_lock, NULL);
    pthread_rwlock_init(&p->table_lock, NULL);
    pthread_mutex_init(&p->bind_lock, NULL);
    pthread_rwlock_init(&p->node_lock, NULL);
    pthread_mutex_init(&p->urls_lock, NULL);
    pthread_cond_init(&p->hello_cv, NULL);
    atomic_init(&p->gen, 0);
    atomic_init(&p->removed_told, false);
    p->on_unnamed_hello = cfg->on_unnamed_hello;
    p->on_removed = cfg->on_removed;
    p->cb_arg = cfg->cb_arg;
    snprintf(p->client_urls, sizeof p->client_urls, "%s", cfg->client_urls ? cfg->client_urls : "");
    p->transport.ctx = p;
    p->transport.send = transport_send;
    p->transport.try_send = transport_try_send;
    p->transport.close_peer = transport_close_peer;
    p->transport.send_snapshot = transport_send_snapshot;
    p->snapshot_chunk = cfg->snapshot_chunk_bytes ? cfg->snapshot_chunk_bytes
                                                  : PEER_DEFAULT_SNAPSHOT_CHUNK;
    p->snapshot_rate = cfg->snapshot_rate;
    p->fault_chunk = cfg->test_fault_snapshot_chunk;
    atomic_init(&p->chunks_sent, 0);

    for (size_t i = 0; i < p->cluster.n; i++) {
        const struct cluster_member *m = &p->cluster.members[i];
        if (m->id == p->self_id)
            continue;
        struct peer_out *o = out_new(p, m, err, errlen);
        if (!o) {
            peer_destroy(p);
            return NULL;
        }
        p->out[p->n_out++] = o;
    }
    p->hello_started = pthread_create(&p->hello_thread, NULL, hello_main, p) == 0;
    return p;
}

void peer_destroy(struct peer *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->urls_lock);
    p->stopping = true;
    pthread_cond_broadcast(&p->hello_cv);
    pthread_mutex_unlock(&p->urls_lock);
    if (p->hello_started)
        pthread_join(p->hello_thread, NULL);
    /* The table lets go of every out; Hello calls still in flight hold theirs until their
     * deadline (HELLO_RETRY_MS) completes them. */
    pthread_rwlock_wrlock(&p->table_lock);
    struct peer_out *outs[CLUSTER_MAX_MEMBERS];
    size_t n = p->n_out;
    memcpy(outs, p->out, n * sizeof outs[0]);
    p->n_out = 0;
    pthread_rwlock_unlock(&p->table_lock);
    for (size_t i = 0; i < n; i++)
        out_put(p, outs[i]);
    pthread_mutex_lock(&p->urls_lock);
    while (p->hello_inflight > 0)
        pthread_cond_wait(&p->hello_cv, &p->urls_lock);
    pthread_mutex_unlock(&p->urls_lock);
    reap(p);
    pthread_rwlock_destroy(&p->table_lock);
    pthread_rwlock_destroy(&p->node_lock);
    pthread_mutex_destroy(&p->set_lock);
    pthread_mutex_destroy(&p->bind_lock);
    pthread_mutex_destroy(&p->urls_lock);
    pthread_cond_destroy(&p->hello_cv);
    free(p->tls_ca);
    free(p->tls_cert);
    free(p->tls_key);
    free(p->tls_stage);
    free(p->tls_allowed_cn);
    free(p->tls_allowed_host);
    free(p->tls_crl);
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
    size_t answered = 0;
    for (;;) {
        pthread_rwlock_rdlock(&p->table_lock);
        pthread_mutex_lock(&p->urls_lock);
        answered = 0;
        for (size_t i = 0; i < p->n_out; i++)
            answered += p->out[i]->hello_answered;
        size_t n = p->n_out;
        pthread_rwlock_unlock(&p->table_lock);
        bool done = answered == n || p->said_we_ran || p->stopping ||
                    pthread_cond_timedwait(&p->hello_cv, &p->urls_lock, &until) == ETIMEDOUT;
        *has_run_says = p->said_we_ran;
        pthread_mutex_unlock(&p->urls_lock);
        if (done)
            break;
    }
    return (int)answered;
}

void peer_client_urls(struct peer *p, uint64_t id, char *buf, size_t len)
{
    if (len == 0)
        return;
    buf[0] = '\0';
    if (id == p->self_id) {
        snprintf(buf, len, "%s", p->client_urls);
        return;
    }
    struct peer_out *o = out_get(p, id);
    if (!o)
        return;
    pthread_mutex_lock(&p->urls_lock);
    snprintf(buf, len, "%s", o->urls);
    pthread_mutex_unlock(&p->urls_lock);
    out_put(p, o);
}

int peer_call_async(struct peer *p, uint64_t to, const char *method, const void *req, size_t len,
                    int deadline_ms, rpc_done_fn cb, void *arg)
{
    struct peer_out *o = out_get(p, to);
    if (!o)
        return RPC_EINVAL;
    int rc = rpc_channel_call_async(o->ch, method, req, len, deadline_ms, cb, arg);
    out_put(p, o);
    return rc;
}

struct rpc_client_stream *peer_stream_open(struct peer *p, uint64_t to, const char *method,
                                           const struct rpc_client_stream_handler *h, void *arg)
{
    struct peer_out *o = out_get(p, to);
    if (!o)
        return NULL;
    struct rpc_client_stream *st = rpc_channel_stream_open(o->ch, method, h, arg);
    out_put(p, o);
    return st;
}

uint64_t peer_cluster_id(struct peer *p) { return p->cluster_id; }

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

/* ---- joining a running cluster ------------------------------------------------------------- */

int peer_join_discover(const struct cluster *listed, const char *self_name,
                       const struct cluster_url *self_url, const struct rpc_tls *tls, bool insecure,
                       int timeout_ms, struct cluster *out, char *err, size_t errlen)
{
    struct target {
        const struct cluster_member *m;
        struct rpc_channel *ch;
        char last[300];
        bool answered; /* with a table that does not hold us */
    } t[CLUSTER_MAX_MEMBERS];
    size_t n = 0;
    memset(t, 0, sizeof t);
    for (size_t i = 0; i < listed->n; i++) {
        const struct cluster_member *m = &listed->members[i];
        if (strcmp(m->name, self_name) == 0)
            continue;
        char target[CLUSTER_HOST_MAX + 16];
        cluster_url_target(&m->peer_url, target, sizeof target);
        struct rpc_channel_config cc = {.target = target,
                                        .tls = insecure ? NULL : tls,
                                        .server_name = m->name[0] ? m->name : NULL,
                                        .insecure = insecure,
                                        .threads = 1,
                                        .max_recv_bytes = 1u << 20,
                                        .reconnect_max_ms = 500};
        t[n].m = m;
        t[n].ch = rpc_channel_create(&cc, t[n].last, sizeof t[n].last);
        snprintf(t[n].last, sizeof t[n].last, "%s", t[n].ch ? "no answer yet" : "no channel");
        n++;
    }
    int rc = PEER_JOIN_EUNREACHABLE;
    if (n == 0) {
        snprintf(err, errlen, "--initial-cluster-state existing: --initial-cluster names no other "
                              "member to ask for the cluster");
        return rc;
    }
    Craft__Raft__PeerHello h = CRAFT__RAFT__PEER_HELLO__INIT;
    h.join = true;
    h.name = (char *)self_name;
    int64_t deadline = clock_now_ms() + timeout_ms;
    bool done = false;
    while (!done) {
        int64_t round = clock_now_ms();
        size_t answered = 0;
        for (size_t i = 0; i < n && !done; i++) {
            if (!t[i].ch)
                continue;
            int64_t left = deadline - clock_now_ms();
            if (left < 50)
                left = 50;
            Craft__Raft__PeerHello *r = NULL;
            struct rpc_result res = {0};
            int crc = rpc_channel_call_msg(t[i].ch, HELLO_METHOD, &h.base,
                                           &craft__raft__peer_hello__descriptor,
                                           (int)(left < 2000 ? left : 2000),
                                           (ProtobufCMessage **)&r, &res);
            if (crc != 0) {
                snprintf(t[i].last, sizeof t[i].last, "%s", rpc_strerror(crc));
            } else if (res.status != GRPC_STATUS_OK) {
                snprintf(t[i].last, sizeof t[i].last, "%s", res.message[0] ? res.message : "failed");
                if (says_removed(res.status, res.message)) {
                    snprintf(err, errlen, "this member was " PEER_REMOVED_TEXT " (%s says: %s)",
                             t[i].m->name, res.message);
                    rc = PEER_JOIN_EREMOVED;
                    done = true;
                }
            } else if (!r || !r->members.len) {
                snprintf(t[i].last, sizeof t[i].last, "answered without a member table");
            } else {
                struct cluster c;
                char derr[200];
                if (cluster_decode(r->members.data, r->members.len, &c, derr, sizeof derr) != 0) {
                    snprintf(t[i].last, sizeof t[i].last, "%s", derr);
                } else if (c.id != r->cluster_id) {
                    snprintf(t[i].last, sizeof t[i].last, "its table's cluster id differs");
                } else if (!cluster_find_url(&c, self_url)) {
                    snprintf(t[i].last, sizeof t[i].last, "its member table has no member at "
                                                          "this peer URL");
                    t[i].answered = true;
                } else {
                    *out = c;
                    rc = 0;
                    done = true;
                }
            }
            rpc_result_free(&res);
            if (r)
                protobuf_c_message_free_unpacked(&r->base, NULL);
            answered += t[i].answered;
        }
        if (done)
            break;
        if (answered == n) {
            rc = PEER_JOIN_ENOTMEMBER;
            break;
        }
        if (clock_now_ms() >= deadline)
            break;
        int64_t wait = round + HELLO_RETRY_MS - clock_now_ms();
        if (wait > 0) {
            struct timespec ts = {wait / 1000, (long)(wait % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    if (rc != 0 && rc != PEER_JOIN_EREMOVED) {
        size_t answered = 0;
        for (size_t i = 0; i < n; i++)
            answered += t[i].answered;
        if (answered)
            rc = PEER_JOIN_ENOTMEMBER;
        int k = snprintf(err, errlen, "%s",
                         rc == PEER_JOIN_ENOTMEMBER
                             ? PEER_JOIN_NOT_MEMBER_TEXT " (asked"
                             : "--initial-cluster-state existing: no member of --initial-cluster "
                               "answered with the member table within");
        if (rc != PEER_JOIN_ENOTMEMBER && k >= 0 && (size_t)k < errlen)
            k += snprintf(err + k, errlen - (size_t)k, " %d ms (tried", timeout_ms);
        for (size_t i = 0; i < n && k >= 0 && (size_t)k < errlen; i++) {
            char url[CLUSTER_URL_MAX];
            cluster_url_string(&t[i].m->peer_url, url, sizeof url);
            k += snprintf(err + k, errlen - (size_t)k, "%s %s at %s: %s", i ? ";" : "",
                          t[i].m->name, url, t[i].last);
        }
        if (k >= 0 && (size_t)k < errlen)
            snprintf(err + k, errlen - (size_t)k, ")");
    }
    for (size_t i = 0; i < n; i++)
        if (t[i].ch)
            rpc_channel_destroy(t[i].ch);
    return rc;
}
