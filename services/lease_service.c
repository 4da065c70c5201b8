/* lease_service.c: etcd's Lease service, its peer methods and the lessor thread (see
 * lease_service.h; docs/lease.md).
 *
 * Locks: ls->mu guards the lessor, the stream list and `stopping`; each stream's mu guards its
 * own state. ls->mu is never taken while a stream's mu is held, and no proposal is made with
 * ls->mu held: raft_node_propose may apply committed entries on the caller's thread, and
 * applying calls the store's lease hook and completion callbacks, which take ls->mu. Proposals
 * that must reach the log in the lessor's order (checkpoints, and the checkpoint reset before a
 * renew) are all made by the lessor thread: a renew that needs a reset queues it (ls->resets,
 * in token order), and the lessor thread takes that queue in the same ls->mu hold in which it
 * asks the lessor for checkpoints, then proposes the resets and then the checkpoints, with no
 * lock held. Every use of the node from a handler or the lessor thread is inside the node gate,
 * which lease_service_stop closes before the node stops. */
#include "services/lease_service.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "raft/node/node.h"
#include "rpc/rpc.h"
#include "services/clock.h"
#include "services/kv_service.h"
#include "services/kvstore/kv_cmd.h"
#include "services/kvstore/kv_store.h"
#include "services/lessor.h"
#include "services/node_gate.h"
#include "services/peer.h"

#define ERR_NO_LEADER "etcdserver: no leader"
#define ERR_LEADER_CHANGED "etcdserver: leader changed"
#define ERR_TIMEOUT "etcdserver: request timed out"
#define ERR_STOPPED "etcdserver: server stopped"
#define ERR_TOO_MANY "etcdserver: too many requests"
#define ERR_UNMARSHAL "grpc: error unmarshalling request"

_Static_assert(LEASE_MAX_TTL == KV_MAX_LEASE_TTL, "etcd's MaxLeaseTTL, twice");

#define NOT_PRIMARY (-1) /* a renew's outcome: ask the leader instead */
#define RESET_ATTEMPTS 3 /* checkpoint resets before one renew gives up */
#define LEASE_MAX_WAITING 4096 /* renews held for a promotion under way */

struct kstream;

struct lease_service {
    struct lease_service_config cfg;
    struct raft_node *node; /* set by start, before the servers start */
    struct kv_service *kv;
    struct peer *peer;
    struct node_gate gate;
    int64_t min_ttl;
    uint64_t id_base;
    atomic_uint_fast64_t id_seq;

    pthread_mutex_t mu;
    struct lessor *lessor;
    bool stopping;
    bool repromote; /* the store was reset, or the lessor could not track a grant */
    struct kstream *streams;
    size_t n_streams;
    struct lessor_checkpoint *cps; /* the lessor thread's buffer */
    struct renew *waiting;         /* renews held until this leader's lessor is promoted */
    size_t n_waiting;
    struct renew *resets, **resets_tail; /* renews whose checkpoint reset the lessor thread
                                            proposes, in token order (see the top) */

    pthread_t thread;
    bool started;
    pthread_mutex_t tmu;
    pthread_cond_t tcv;
    bool tstop;
    bool kick; /* a renew waits for the promotion: tick now */

    atomic_uint cp_inflight;
    atomic_uint revoke_inflight; /* revokes proposed, not yet applied or failed */
    /* the term the lessor was last promoted in (0: none), for renew_run's check that no newer
     * term has begun since (the lessor thread demotes only at its next tick) */
    atomic_uint_fast64_t primary_term;
    atomic_uint_fast64_t granted, revoked, renewed;
};

/* ---- helpers ---------------------------------------------------------------------------- */

static void node_error(int err, int *code, const char **msg)
{
    *code = GRPC_STATUS_UNAVAILABLE;
    switch (err) {
    case RAFT_NODE_ENOTLEADER:
    case RAFT_NODE_ELOST:
        *msg = ERR_LEADER_CHANGED;
        break;
    case RAFT_NODE_EBUSY:
        *code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        *msg = ERR_TOO_MANY;
        break;
    case RAFT_NODE_ETIMEDOUT:
        *msg = ERR_TIMEOUT;
        break;
    case RAFT_NODE_ESHUTDOWN:
        *msg = ERR_STOPPED;
        break;
    default:
        *msg = raft_node_strerror(err);
    }
}

/* This member's header as of now (inside the gate: the node is alive). */
static void header_now(struct lease_service *ls, Etcdserverpb__ResponseHeader *h)
{
    int64_t rev = 0;
    kv_store_status(ls->cfg.store, &rev, NULL, NULL, NULL);
    h->cluster_id = ls->cfg.cluster_id;
    h->member_id = ls->cfg.self_id;
    h->revision = rev;
    h->raft_term = raft_node_term(ls->node);
}

/* etcd's idutil: member bits on top, then milliseconds and a counter; positive. */
static int64_t next_id(struct lease_service *ls)
{
    for (;;) {
        uint64_t s = atomic_fetch_add(&ls->id_seq, 1) + 1;
        int64_t id = (int64_t)((ls->id_base | (s & ((1ull << 48) - 1))) & (uint64_t)INT64_MAX);
        if (id)
            return id;
    }
}

/* The leader as this member knows it: 1 = this member, 0 = another (*leader), -1 = none. */
static int leader_of(struct lease_service *ls, uint64_t *leader)
{
    struct raft_node_status st;
    raft_node_status_get(ls->node, &st);
    *leader = st.core.leader_id;
    if (st.core.role == RAFT_LEADER)
        return 1;
    return st.core.leader_id && st.core.leader_id != ls->cfg.self_id ? 0 : -1;
}

/* ---- renew at the leader's lessor ---------------------------------------------------------- */

struct renew {
    struct lease_service *ls;
    int64_t id;
    int attempts;
    uint64_t token;
    /* code 0 with ttl, NOT_PRIMARY, or a gRPC status; any thread, exactly once */
    void (*done)(struct renew *r, int code, const char *msg, int64_t ttl);
    struct renew *next_waiting; /* ls->waiting */
    struct renew *next_reset;   /* ls->resets */
    void (*retry)(struct renew *r); /* after the promotion: NULL = renew_run */
};

static void renew_run(struct renew *r);

/* A renew that reached this member while it is (or may be) the leader but its lessor is not
 * promoted yet: held until the lessor thread's next tick, which it starts at once - then renewed
 * if the promotion succeeded, else refused "leader changed" (the client retries). At most
 * LEASE_MAX_WAITING are held; beyond, refused at once. */
static void wait_for_promotion(struct renew *r)
{
    struct lease_service *ls = r->ls;
    pthread_mutex_lock(&ls->mu);
    bool held = !ls->stopping && ls->n_waiting < LEASE_MAX_WAITING;
    if (held) {
        r->next_waiting = ls->waiting;
        ls->waiting = r;
        ls->n_waiting++;
    }
    pthread_mutex_unlock(&ls->mu);
    if (!held) {
        r->done(r, GRPC_STATUS_UNAVAILABLE, ERR_LEADER_CHANGED, 0);
        return;
    }
    pthread_mutex_lock(&ls->tmu);
    ls->kick = true;
    pthread_cond_signal(&ls->tcv);
    pthread_mutex_unlock(&ls->tmu);
}

/* The held renews, taken (lessor thread, or stop): each renewed if renew is set, else failed. */
static void waiting_flush(struct lease_service *ls, bool renew, const char *why)
{
    pthread_mutex_lock(&ls->mu);
    struct renew *w = ls->waiting;
    ls->waiting = NULL;
    ls->n_waiting = 0;
    pthread_mutex_unlock(&ls->mu);
    while (w) {
        struct renew *r = w;
        w = w->next_waiting;
        if (renew && r->retry)
            r->retry(r);
        else if (renew)
            renew_run(r);
        else
            r->done(r, GRPC_STATUS_UNAVAILABLE, why, 0);
    }
}


static void on_reset_applied(void *arg, int err, uint64_t index, uint64_t leader,
                             struct raft_fsm_result *res)
{
    (void)index, (void)leader, (void)res;
    struct renew *r = arg;
    struct lease_service *ls = r->ls;
    if (err) {
        int code;
        const char *msg;
        node_error(err, &code, &msg);
        r->done(r, code, msg, 0);
        return;
    }
    pthread_mutex_lock(&ls->mu);
    lessor_reset_applied(ls->lessor, r->id, r->token);
    pthread_mutex_unlock(&ls->mu);
    renew_run(r); /* on the applier thread: only the lessor and a queued proposal */
}

/* Lessor thread, no lock held, inside the gate: proposes a checkpoint recording remaining 0
 * for r's lease. */
static int propose_reset(struct renew *r)
{
    Etcdserverpb__LeaseCheckpoint c = ETCDSERVERPB__LEASE_CHECKPOINT__INIT;
    Etcdserverpb__LeaseCheckpoint *cp = &c;
    Etcdserverpb__LeaseCheckpointRequest req = ETCDSERVERPB__LEASE_CHECKPOINT_REQUEST__INIT;
    c.id = r->id;
    req.n_checkpoints = 1;
    req.checkpoints = &cp;
    uint8_t *cmd;
    size_t len;
    if (kv_cmd_encode_lease_checkpoint(&req, &cmd, &len) != 0)
        return RAFT_NODE_ENOMEM;
    int rc = raft_node_propose(r->ls->node, cmd, len, (int)r->ls->cfg.timeout_ms,
                               on_reset_applied, r, NULL);
    free(cmd);
    return rc;
}

/* ls->mu held: the queued resets, in token order; the queue is left empty. */
static struct renew *resets_take_locked(struct lease_service *ls)
{
    struct renew *list = ls->resets;
    ls->resets = NULL;
    ls->resets_tail = &ls->resets;
    return list;
}

/* Lessor thread (inside the gate, propose true) or stop (false), no lock held: proposes each
 * queued reset in order, or fails it with why. */
static void resets_run(struct renew *list, bool propose, const char *why)
{
    while (list) {
        struct renew *r = list;
        list = r->next_reset;
        int prc = propose ? propose_reset(r) : RAFT_NODE_ESHUTDOWN;
        if (prc != 0) {
            int code;
            const char *msg;
            node_error(prc, &code, &msg);
            r->done(r, code, propose ? msg : why, 0);
        }
    }
}

/* Renews r->id here if this member's lessor is the promoted leader's; r->done says how. */
static void renew_run(struct renew *r)
{
    struct lease_service *ls = r->ls;
    int64_t ttl = 0;
    uint64_t token = 0;
    pthread_mutex_lock(&ls->mu);
    if (ls->stopping) {
        pthread_mutex_unlock(&ls->mu);
        r->done(r, GRPC_STATUS_UNAVAILABLE, ERR_STOPPED, 0);
        return;
    }
    /* A newer term began here (this member stepped down, or was re-elected) and the lessor
     * thread has not caught up yet: not ours to renew - a former leader must not answer a
     * keep-alive the new leader's lessor never sees. */
    uint64_t pt = atomic_load(&ls->primary_term);
    int rc = pt && raft_node_term(ls->node) > pt
                 ? LESSOR_NOT_PRIMARY
                 : lessor_renew(ls->lessor, r->id, clock_now_ms(), &ttl, &token);
    if (rc == LESSOR_NEEDS_RESET) {
        /* The lessor thread proposes it, in token order (see the top); this thread may be the
         * applier, or a proposer applying inline. */
        bool queued = r->attempts++ < RESET_ATTEMPTS;
        if (queued) {
            r->token = token;
            r->next_reset = NULL;
            *ls->resets_tail = r;
            ls->resets_tail = &r->next_reset;
        }
        pthread_mutex_unlock(&ls->mu);
        if (!queued) {
            int code;
            const char *msg;
            node_error(RAFT_NODE_EBUSY, &code, &msg);
            r->done(r, code, msg, 0);
            return;
        }
        pthread_mutex_lock(&ls->tmu);
        ls->kick = true;
        pthread_cond_signal(&ls->tcv);
        pthread_mutex_unlock(&ls->tmu);
        return;
    }
    if (rc == LESSOR_OK)
        atomic_fetch_add(&ls->renewed, 1);
    pthread_mutex_unlock(&ls->mu);
    if (rc == LESSOR_NOT_PRIMARY)
        r->done(r, NOT_PRIMARY, NULL, 0);
    else /* not found, or expired and being revoked: etcd answers TTL 0 */
        r->done(r, 0, NULL, rc == LESSOR_OK ? ttl : 0);
}

/* ---- LeaseKeepAlive --------------------------------------------------------------------- */

struct reply {
    uint8_t *p;
    size_t len;
};

struct kstream {
    struct lease_service *ls;
    struct rpc_stream *rs;
    struct kstream *prev, *next; /* ls->streams, under ls->mu */
    pthread_mutex_t mu;
    int refs;             /* the rpc layer's (until on_close) + one per request not done */
    unsigned outstanding; /* requests being renewed + replies waiting in q */
    bool held;            /* rpc_stream_hold_reads(true) in force */
    bool finished;        /* rpc_stream_finish called: nothing more goes out */
    struct reply *q;      /* replies the rpc send queue had no room for (<= max_inflight) */
    size_t qhead, qn;
};

struct ka_req {
    struct renew r;
    struct kstream *st;
    Etcdserverpb__ResponseHeader h; /* as the request arrived (etcd fills it before renewing) */
};

static void kstream_unref_locked(struct kstream *st, bool *free_it)
{
    *free_it = --st->refs == 0;
}

static void kstream_free(struct kstream *st)
{
    for (size_t i = 0; i < st->qn; i++)
        free(st->q[(st->qhead + i) % st->ls->cfg.max_inflight].p);
    free(st->q);
    pthread_mutex_destroy(&st->mu);
    free(st);
}

/* st->mu held: ends the stream (once) and drops what waits to be sent. */
static void kstream_finish_locked(struct kstream *st, int code, const char *msg)
{
    if (st->finished)
        return;
    st->finished = true;
    for (; st->qn; st->qn--, st->outstanding--) {
        free(st->q[st->qhead].p);
        st->qhead = (st->qhead + 1) % st->ls->cfg.max_inflight;
    }
    rpc_stream_finish(st->rs, (grpc_status_code)code, msg);
}

/* st->mu held: reads resume once fewer than max_inflight requests are outstanding. */
static void kstream_release_locked(struct kstream *st)
{
    if (st->held && !st->finished && st->outstanding < st->ls->cfg.max_inflight) {
        st->held = false;
        rpc_stream_hold_reads(st->rs, false);
    }
}

static void ka_done(struct renew *r, int code, const char *msg, int64_t ttl);

static void on_forwarded_renew(struct rpc_result *res, void *arg)
{
    struct ka_req *q = arg;
    struct lease_service *ls = q->r.ls;
    int64_t ttl;
    if (res->status == GRPC_STATUS_OK) {
        if (lease_resp_keepalive(res->data, res->len, ls->cfg.cluster_id, q->r.id, &ttl) == 0)
            ka_done(&q->r, 0, NULL, ttl);
        else
            ka_done(&q->r, GRPC_STATUS_INTERNAL, "craft: the leader's answer does not decode", 0);
    } else if (res->status == GRPC_STATUS_DEADLINE_EXCEEDED) {
        ka_done(&q->r, GRPC_STATUS_UNAVAILABLE, ERR_TIMEOUT, 0);
    } else if (res->status == GRPC_STATUS_UNAVAILABLE || res->status == GRPC_STATUS_CANCELLED) {
        /* the leader's own "leader changed", or the leader unreachable (or us stopping) */
        bool etcd = strncmp(res->message, "etcdserver: ", 12) == 0;
        ka_done(&q->r, GRPC_STATUS_UNAVAILABLE, etcd ? res->message : ERR_NO_LEADER, 0);
    } else {
        ka_done(&q->r, res->status, res->message, 0);
    }
}

/* Not the promoted leader here: ask the leader (inside the gate). */
static void ka_forward(struct ka_req *q)
{
    struct lease_service *ls = q->r.ls;
    uint64_t leader;
    int who = leader_of(ls, &leader);
    if (who == 1) { /* elected, not yet promoted (docs/lease.md) */
        wait_for_promotion(&q->r);
        return;
    }
    if (who < 0) {
        ka_done(&q->r, GRPC_STATUS_UNAVAILABLE, ERR_NO_LEADER, 0);
        return;
    }
    Etcdserverpb__LeaseKeepAliveRequest m = ETCDSERVERPB__LEASE_KEEP_ALIVE_REQUEST__INIT;
    m.id = q->r.id;
    uint8_t buf[32];
    size_t len = etcdserverpb__lease_keep_alive_request__pack(&m, buf);
    /* the leader's own proposal timeout answers first; the extra second covers the hop */
    if (peer_call_async(ls->peer, leader, LEASE_PEER_RENEW, buf, len,
                        (int)ls->cfg.timeout_ms + 1000, on_forwarded_renew, q) != 0)
        ka_done(&q->r, GRPC_STATUS_UNAVAILABLE, ERR_NO_LEADER, 0);
}

/* A keep-alive's outcome (any thread): the reply, or the end of the stream. */
static void ka_done(struct renew *r, int code, const char *msg, int64_t ttl)
{
    struct ka_req *q = (struct ka_req *)r;
    struct kstream *st = q->st;
    if (code == NOT_PRIMARY) {
        /* only from renew_run on the handler's thread, inside the gate */
        ka_forward(q);
        return;
    }
    uint8_t *p = NULL;
    size_t len = 0;
    if (code == 0) {
        Etcdserverpb__LeaseKeepAliveResponse m = ETCDSERVERPB__LEASE_KEEP_ALIVE_RESPONSE__INIT;
        m.header = &q->h;
        m.id = r->id;
        m.ttl = ttl;
        if (rpc_msg_pack(&m.base, &p, &len) != 0) {
            code = GRPC_STATUS_RESOURCE_EXHAUSTED;
            msg = "out of memory";
        }
    }
    pthread_mutex_lock(&st->mu);
    bool sent = true;
    if (st->finished) {
        /* ended meanwhile: the reply has nowhere to go */
    } else if (code) {
        kstream_finish_locked(st, code, msg);
    } else if (!st->qn) {
        int rc = rpc_stream_send(st->rs, p, len);
        sent = rc != RPC_EFULL;
    } else {
        sent = false;
    }
    size_t cap = st->ls->cfg.max_inflight;
    if (!sent && st->qn < cap) { /* the rpc queue is full: keep it (outstanding bounds q) */
        st->q[(st->qhead + st->qn) % cap] = (struct reply){p, len};
        st->qn++;
        p = NULL;
    } else {
        st->outstanding--;
    }
    kstream_release_locked(st);
    bool free_it;
    kstream_unref_locked(st, &free_it);
    pthread_mutex_unlock(&st->mu);
    free(p);
    free(q);
    if (free_it)
        kstream_free(st);
}

static void *ka_open(struct rpc_stream *rs, void *ctx)
{
    struct lease_service *ls = ctx;
    struct kstream *st = calloc(1, sizeof *st);
    if (st)
        st->q = calloc(ls->cfg.max_inflight, sizeof *st->q);
    pthread_mutex_lock(&ls->mu);
    int code = 0;
    const char *msg = NULL;
    if (ls->stopping) {
        code = GRPC_STATUS_UNAVAILABLE, msg = ERR_STOPPED;
    } else if (kv_service_is_learner(ls->kv)) { /* etcd: "rpc not supported for learner" */
        code = GRPC_STATUS_UNAVAILABLE, msg = KV_ERR_LEARNER;
    } else if (!st || !st->q) {
        code = GRPC_STATUS_RESOURCE_EXHAUSTED, msg = "out of memory";
    } else if (ls->n_streams >= ls->cfg.max_streams) {
        code = GRPC_STATUS_RESOURCE_EXHAUSTED, msg = ERR_TOO_MANY;
    } else {
        st->ls = ls;
        st->rs = rs;
        st->refs = 1;
        pthread_mutex_init(&st->mu, NULL);
        st->next = ls->streams;
        if (ls->streams)
            ls->streams->prev = st;
        ls->streams = st;
        ls->n_streams++;
    }
    pthread_mutex_unlock(&ls->mu);
    if (code) {
        if (st)
            free(st->q);
        free(st);
        rpc_stream_finish(rs, (grpc_status_code)code, msg);
        return NULL;
    }
    return st;
}

static void ka_message(struct rpc_stream *rs, const uint8_t *data, size_t len, void *user)
{
    (void)rs;
    struct kstream *st = user;
    if (!st)
        return;
    struct lease_service *ls = st->ls;
    int64_t id;
    int bad = lease_req_keepalive(data, len, &id);
    pthread_mutex_lock(&st->mu);
    if (st->finished || bad) {
        if (bad)
            kstream_finish_locked(st, GRPC_STATUS_INVALID_ARGUMENT, ERR_UNMARSHAL);
        pthread_mutex_unlock(&st->mu);
        return;
    }
    st->outstanding++;
    st->refs++;
    if (st->outstanding >= ls->cfg.max_inflight && !st->held) {
        st->held = true; /* no more requests until some are answered (lease_service.h) */
        rpc_stream_hold_reads(st->rs, true);
    }
    pthread_mutex_unlock(&st->mu);
    struct ka_req *q = calloc(1, sizeof *q);
    if (!q) { /* the rpc layer's reference keeps st alive while this handler runs */
        pthread_mutex_lock(&st->mu);
        st->outstanding--;
        st->refs--;
        kstream_finish_locked(st, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        pthread_mutex_unlock(&st->mu);
        return;
    }
    *q = (struct ka_req){.r = {.ls = ls, .id = id, .done = ka_done}, .st = st};
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    q->h = h;
    if (!node_gate_enter(&ls->gate)) {
        ka_done(&q->r, GRPC_STATUS_UNAVAILABLE, ERR_STOPPED, 0);
        return;
    }
    header_now(ls, &q->h);
    renew_run(&q->r);
    node_gate_leave(&ls->gate);
}

static void ka_sent(struct rpc_stream *rs, void *user)
{
    struct kstream *st = user;
    if (!st)
        return;
    pthread_mutex_lock(&st->mu);
    size_t cap = st->ls->cfg.max_inflight;
    while (st->qn && !st->finished) {
        struct reply *m = &st->q[st->qhead];
        if (rpc_stream_send(rs, m->p, m->len) == RPC_EFULL)
            break;
        free(m->p);
        st->qhead = (st->qhead + 1) % cap;
        st->qn--;
        st->outstanding--;
    }
    kstream_release_locked(st);
    pthread_mutex_unlock(&st->mu);
}

static void ka_close(struct rpc_stream *rs, grpc_status_code status, void *user)
{
    (void)rs, (void)status;
    struct kstream *st = user;
    if (!st)
        return;
    struct lease_service *ls = st->ls;
    pthread_mutex_lock(&ls->mu);
    if (st->prev)
        st->prev->next = st->next;
    else
        ls->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    ls->n_streams--;
    pthread_mutex_unlock(&ls->mu);
    pthread_mutex_lock(&st->mu);
    /* a half-close ends the stream OK, as etcd's recv loop returning at EOF */
    kstream_finish_locked(st, GRPC_STATUS_OK, NULL);
    bool free_it;
    kstream_unref_locked(st, &free_it);
    pthread_mutex_unlock(&st->mu);
    if (free_it)
        kstream_free(st);
}

/* ---- Peer.LeaseRenew: the leader's side of a forwarded keep-alive ------------------------- */

struct peer_renew {
    struct renew r;
    struct rpc_call *call;
    Etcdserverpb__ResponseHeader h;
};

static void peer_renew_done(struct renew *r, int code, const char *msg, int64_t ttl)
{
    struct peer_renew *p = (struct peer_renew *)r;
    if (code == NOT_PRIMARY) {
        /* a follower sent it to us as the leader: maybe elected and not promoted yet; if not
         * leader at all, the next tick refuses it "leader changed" */
        wait_for_promotion(r);
        return;
    } else if (code) {
        rpc_call_fail(p->call, (grpc_status_code)code, msg);
    } else {
        Etcdserverpb__LeaseKeepAliveResponse m = ETCDSERVERPB__LEASE_KEEP_ALIVE_RESPONSE__INIT;
        m.header = &p->h;
        m.id = r->id;
        m.ttl = ttl;
        rpc_call_reply_msg(p->call, &m.base);
    }
    free(p);
}

static bool peer_allowed(struct lease_service *ls, struct rpc_call *call)
{
    if (peer_call_member(ls->peer, call))
        return true;
    rpc_call_fail(call, GRPC_STATUS_PERMISSION_DENIED, "only cluster members may forward leases");
    return false;
}

static void handle_peer_renew(struct rpc_call *call, const uint8_t *data, size_t len, void *ctx)
{
    struct lease_service *ls = ctx;
    int64_t id;
    if (!peer_allowed(ls, call))
        return;
    if (lease_req_keepalive(data, len, &id) != 0) {
        rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT, ERR_UNMARSHAL);
        return;
    }
    struct peer_renew *p = calloc(1, sizeof *p);
    if (!p) {
        rpc_call_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    *p = (struct peer_renew){.r = {.ls = ls, .id = id, .done = peer_renew_done}, .call = call,
                             .h = h};
    if (!node_gate_enter(&ls->gate)) {
        peer_renew_done(&p->r, GRPC_STATUS_UNAVAILABLE, ERR_STOPPED, 0);
        return;
    }
    header_now(ls, &p->h);
    renew_run(&p->r);
    node_gate_leave(&ls->gate);
}

/* ---- LeaseTimeToLive ---------------------------------------------------------------------- */

struct keys {
    uint8_t **p;
    size_t n, cap, bytes, max;
    bool overflow;
};

static int collect_key(void *arg, const uint8_t *key, size_t len)
{
    struct keys *k = arg;
    if (k->bytes + len + 8 > k->max) {
        k->overflow = true;
        return 1;
    }
    if (k->n == k->cap) {
        size_t cap = k->cap ? 2 * k->cap : 16;
        uint8_t **p = realloc(k->p, cap * sizeof *p);
        if (!p)
            return k->overflow = true, 1;
        k->p = p;
        k->cap = cap;
    }
    uint8_t *c = malloc(len + 1 + sizeof(size_t));
    if (!c)
        return k->overflow = true, 1;
    memcpy(c, &len, sizeof len);
    memcpy(c + sizeof len, key, len);
    k->p[k->n++] = c;
    k->bytes += len + 8;
    return 0;
}

static void ttl_answer(struct lease_service *ls, struct rpc_call *call, int64_t id, bool keys,
                       bool may_wait);

/* A TimeToLive held for the promotion (wait_for_promotion). */
struct ttl_wait {
    struct renew r;
    struct rpc_call *call;
    bool keys;
};

static void ttl_wait_done(struct renew *r, int code, const char *msg, int64_t ttl)
{
    (void)ttl;
    struct ttl_wait *w = (struct ttl_wait *)r;
    rpc_call_fail(w->call, (grpc_status_code)code, msg);
    free(w);
}

static void ttl_wait_retry(struct renew *r)
{
    struct ttl_wait *w = (struct ttl_wait *)r;
    ttl_answer(r->ls, w->call, r->id, w->keys, false);
    free(w);
}

/* Answers a TimeToLive at the leader (inside the gate); one that finds the lessor not promoted
 * waits for the promotion once (may_wait). */
static void ttl_answer(struct lease_service *ls, struct rpc_call *call, int64_t id, bool keys,
                       bool may_wait)
{
    int64_t remaining = 0, granted = 0;
    pthread_mutex_lock(&ls->mu);
    int rc = lessor_remaining(ls->lessor, id, clock_now_ms(), &remaining, &granted);
    pthread_mutex_unlock(&ls->mu);
    if (rc == LESSOR_NOT_PRIMARY) {
        struct ttl_wait *w = may_wait ? calloc(1, sizeof *w) : NULL;
        if (!w) {
            rpc_call_fail(call, GRPC_STATUS_UNAVAILABLE, ERR_LEADER_CHANGED);
            return;
        }
        w->r = (struct renew){.ls = ls, .id = id, .done = ttl_wait_done, .retry = ttl_wait_retry};
        w->call = call;
        w->keys = keys;
        wait_for_promotion(&w->r);
        return;
    }
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    header_now(ls, &h);
    Etcdserverpb__LeaseTimeToLiveResponse m = ETCDSERVERPB__LEASE_TIME_TO_LIVE_RESPONSE__INIT;
    m.header = &h;
    m.id = id;
    m.ttl = -1; /* etcd's answer for a lease that does not exist */
    struct keys k = {.max = ls->cfg.max_send_bytes - (64u << 10)};
    ProtobufCBinaryData *bins = NULL;
    if (rc == LESSOR_OK) {
        struct kv_lease l;
        struct kv_err err;
        int found = kv_store_lease_get(ls->cfg.store, id, &l, keys ? collect_key : NULL, &k, &err);
        if (found < 0 && !k.overflow) {
            rpc_call_fail(call, (grpc_status_code)err.code, err.msg);
            goto out;
        }
        if (k.overflow) {
            rpc_call_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED,
                          "craft: too many keys attached to the lease to list");
            goto out;
        }
        if (found == 1) {
            m.ttl = remaining;
            m.grantedttl = granted;
        }
        bins = calloc(k.n ? k.n : 1, sizeof *bins);
        if (!bins) {
            rpc_call_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
            goto out;
        }
        for (size_t i = 0; i < k.n; i++) {
            size_t len;
            memcpy(&len, k.p[i], sizeof len);
            bins[i] = (ProtobufCBinaryData){len, k.p[i] + sizeof len};
        }
        m.n_keys = found == 1 ? k.n : 0;
        m.keys = bins;
    }
    rpc_call_reply_msg(call, &m.base);
out:
    for (size_t i = 0; i < k.n; i++)
        free(k.p[i]);
    free(k.p);
    free(bins);
}

struct ttl_fwd {
    struct lease_service *ls;
    struct rpc_call *call;
    int64_t id;
    Etcdserverpb__ResponseHeader h;
};

static void on_forwarded_ttl(struct rpc_result *res, void *arg)
{
    struct ttl_fwd *f = arg;
    if (res->status == GRPC_STATUS_OK) {
        Etcdserverpb__LeaseTimeToLiveResponse *m =
            lease_resp_ttl(res->data, res->len, f->ls->cfg.cluster_id, f->id);
        if (m) {
            Etcdserverpb__ResponseHeader *orig = m->header;
            m->header = &f->h;
            rpc_call_reply_msg(f->call, &m->base);
            m->header = orig;
            etcdserverpb__lease_time_to_live_response__free_unpacked(m, NULL);
        } else {
            rpc_call_fail(f->call, GRPC_STATUS_INTERNAL,
                          "craft: the leader's answer does not decode");
        }
    } else if (res->status == GRPC_STATUS_DEADLINE_EXCEEDED) {
        rpc_call_fail(f->call, GRPC_STATUS_UNAVAILABLE, ERR_TIMEOUT);
    } else if (res->status == GRPC_STATUS_UNAVAILABLE || res->status == GRPC_STATUS_CANCELLED) {
        bool etcd = strncmp(res->message, "etcdserver: ", 12) == 0;
        rpc_call_fail(f->call, GRPC_STATUS_UNAVAILABLE, etcd ? res->message : ERR_NO_LEADER);
    } else {
        rpc_call_fail(f->call, res->status, res->message);
    }
    free(f);
}

static void handle_ttl(struct rpc_call *call, const uint8_t *data, size_t len, void *ctx)
{
    struct lease_service *ls = ctx;
    int64_t id;
    bool keys;
    if (kv_service_is_learner(ls->kv)) {
        rpc_call_fail(call, GRPC_STATUS_UNAVAILABLE, KV_ERR_LEARNER);
        return;
    }
    if (lease_req_ttl(data, len, &id, &keys) != 0) {
        rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT, ERR_UNMARSHAL);
        return;
    }
    if (!node_gate_enter(&ls->gate)) {
        rpc_call_fail(call, GRPC_STATUS_UNAVAILABLE, ERR_STOPPED);
        return;
    }
    uint64_t leader;
    int who = leader_of(ls, &leader);
    struct ttl_fwd *f = who == 0 ? calloc(1, sizeof *f) : NULL;
    if (who == 1) {
        ttl_answer(ls, call, id, keys, true);
    } else if (who < 0) {
        rpc_call_fail(call, GRPC_STATUS_UNAVAILABLE, ERR_NO_LEADER);
    } else if (!f) {
        rpc_call_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    } else {
        Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
        *f = (struct ttl_fwd){ls, call, id, h};
        header_now(ls, &f->h);
        if (peer_call_async(ls->peer, leader, LEASE_PEER_TTL, data, len,
                            (int)ls->cfg.timeout_ms + 1000, on_forwarded_ttl, f) != 0) {
            rpc_call_fail(call, GRPC_STATUS_UNAVAILABLE, ERR_NO_LEADER);
            free(f);
        }
    }
    node_gate_leave(&ls->gate);
}

static void handle_peer_ttl(struct rpc_call *call, const uint8_t *data, size_t len, void *ctx)
{
    struct lease_service *ls = ctx;
    int64_t id;
    bool keys;
    if (!peer_allowed(ls, call))
        return;
    if (lease_req_ttl(data, len, &id, &keys) != 0) {
        rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT, ERR_UNMARSHAL);
        return;
    }
    if (!node_gate_enter(&ls->gate)) {
        rpc_call_fail(call, GRPC_STATUS_UNAVAILABLE, ERR_STOPPED);
        return;
    }
    ttl_answer(ls, call, id, keys, true);
    node_gate_leave(&ls->gate);
}

/* ---- Grant, Revoke, Leases -------------------------------------------------------------- */

static void handle_grant(struct rpc_call *call, const ProtobufCMessage *m, void *ctx)
{
    struct lease_service *ls = ctx;
    Etcdserverpb__LeaseGrantRequest r = *(const Etcdserverpb__LeaseGrantRequest *)m;
    int code;
    const char *msg;
    struct kv_err err;
    if (lease_grant_prepare(&r, ls->min_ttl, r.id ? 0 : next_id(ls), &code, &msg) != 0) {
        rpc_call_fail(call, (grpc_status_code)code, msg);
        return;
    }
    if (kv_validate_lease_grant(&r, &err) != 0) {
        rpc_call_fail(call, (grpc_status_code)err.code, err.msg);
        return;
    }
    uint8_t *cmd;
    size_t len;
    if (kv_cmd_encode_lease_grant(&r, &cmd, &len) != 0) {
        rpc_call_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    kv_service_lease_write(ls->kv, call, false, cmd, len);
}

static void handle_revoke(struct rpc_call *call, const ProtobufCMessage *m, void *ctx)
{
    struct lease_service *ls = ctx;
    uint8_t *cmd;
    size_t len;
    if (kv_cmd_encode_lease_revoke(((const Etcdserverpb__LeaseRevokeRequest *)m)->id, &cmd,
                                   &len) != 0) {
        rpc_call_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    kv_service_lease_write(ls->kv, call, true, cmd, len);
}

struct idlist {
    Etcdserverpb__LeaseStatus *v;
    size_t n, cap, max;
};

static int collect_id(void *arg, const struct kv_lease *l)
{
    struct idlist *a = arg;
    if (a->n == a->max)
        return 1;
    if (a->n == a->cap) {
        size_t cap = a->cap ? 2 * a->cap : 64;
        Etcdserverpb__LeaseStatus *v = realloc(a->v, cap * sizeof *v);
        if (!v)
            return 1;
        a->v = v;
        a->cap = cap;
    }
    Etcdserverpb__LeaseStatus s = ETCDSERVERPB__LEASE_STATUS__INIT;
    s.id = l->id;
    a->v[a->n++] = s;
    return 0;
}

/* LeaseLeases lists the store once this member has applied everything committed when the call
 * arrived (a ReadIndex round), so a lease revoked or expired anywhere before the call is never
 * listed. etcd 3.4 lists its local lessor without that round; a client that asks a lagging
 * follower there can see a lease that is already gone. */
struct leases_op {
    struct lease_service *ls;
    struct rpc_call *call;
};

static void serve_leases(struct lease_service *ls, struct rpc_call *call)
{
    /* each listed lease costs at most 13 bytes on the wire */
    struct idlist a = {.max = (ls->cfg.max_send_bytes - (64u << 10)) / 13};
    struct kv_err err;
    int rc = kv_store_leases(ls->cfg.store, collect_id, &a, &err);
    if (rc < 0) {
        rpc_call_fail(call, (grpc_status_code)err.code, err.msg);
    } else if (rc > 0) {
        rpc_call_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED,
                      a.n == a.max ? "craft: too many leases to list in one response"
                                   : "out of memory");
    } else if (!node_gate_enter(&ls->gate)) {
        rpc_call_fail(call, GRPC_STATUS_UNAVAILABLE, ERR_STOPPED);
    } else {
        Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
        header_now(ls, &h);
        node_gate_leave(&ls->gate);
        Etcdserverpb__LeaseStatus **ptrs = calloc(a.n ? a.n : 1, sizeof *ptrs);
        if (!ptrs) {
            rpc_call_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        } else {
            for (size_t i = 0; i < a.n; i++)
                ptrs[i] = &a.v[i];
            Etcdserverpb__LeaseLeasesResponse r = ETCDSERVERPB__LEASE_LEASES_RESPONSE__INIT;
            r.header = &h;
            r.n_leases = a.n;
            r.leases = ptrs;
            rpc_call_reply_msg(call, &r.base);
            free(ptrs);
        }
    }
    free(a.v);
}

static void fail_node(struct rpc_call *call, int err)
{
    int code;
    const char *msg;
    node_error(err, &code, &msg);
    rpc_call_fail(call, (grpc_status_code)code, msg);
}

/* a node thread, once: the service outlives the node (lease_service_destroy comes after
 * raft_node_stop, which fires every pending read first) */
static void on_leases_read(void *arg, int err, uint64_t index)
{
    (void)index;
    struct leases_op *o = arg;
    if (err)
        fail_node(o->call, err);
    else
        serve_leases(o->ls, o->call);
    free(o);
}

static void handle_leases(struct rpc_call *call, const ProtobufCMessage *m, void *ctx)
{
    (void)m;
    struct lease_service *ls = ctx;
    if (kv_service_is_learner(ls->kv)) {
        rpc_call_fail(call, GRPC_STATUS_UNAVAILABLE, KV_ERR_LEARNER);
        return;
    }
    struct leases_op *o = malloc(sizeof *o);
    if (!o) {
        rpc_call_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    *o = (struct leases_op){ls, call};
    if (!node_gate_enter(&ls->gate)) {
        free(o);
        rpc_call_fail(call, GRPC_STATUS_UNAVAILABLE, ERR_STOPPED);
        return;
    }
    int rc = raft_node_read_index(ls->node, (int)ls->cfg.timeout_ms, on_leases_read, o);
    node_gate_leave(&ls->gate);
    if (rc != 0) {
        free(o);
        fail_node(call, rc);
    }
}

/* ---- the store's lease hook (applier thread) ---------------------------------------------- */

static void on_lease_change(void *arg, enum kv_lease_change what, int64_t id, int64_t ttl)
{
    struct lease_service *ls = arg;
    int64_t now = clock_now_ms();
    pthread_mutex_lock(&ls->mu);
    switch (what) {
    case KV_LEASE_GRANTED:
        atomic_fetch_add(&ls->granted, 1);
        if (lessor_granted(ls->lessor, now, id, ttl) != LESSOR_OK) {
            lessor_demote(ls->lessor);
            ls->repromote = true;
        }
        break;
    case KV_LEASE_REVOKED:
        atomic_fetch_add(&ls->revoked, 1);
        lessor_revoked(ls->lessor, id);
        break;
    default: /* a snapshot replaced the table: promote again from the store */
        lessor_demote(ls->lessor);
        ls->repromote = true;
        break;
    }
    pthread_mutex_unlock(&ls->mu);
}

/* ---- the lessor thread ------------------------------------------------------------------ */

struct sync_read {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    int err;
};

static void on_read(void *arg, int err, uint64_t index)
{
    (void)index;
    struct sync_read *w = arg;
    pthread_mutex_lock(&w->mu);
    w->done = true;
    w->err = err;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

struct promo {
    struct lease_service *ls;
    int64_t now, extend;
    int rc;
};

static int promote_one(void *arg, const struct kv_lease *l)
{
    struct promo *p = arg;
    pthread_mutex_lock(&p->ls->mu);
    p->rc = lessor_promote_add(p->ls->lessor, p->now, p->extend, l->id, l->ttl, l->remaining);
    pthread_mutex_unlock(&p->ls->mu);
    return p->rc ? 1 : 0;
}

/* Newly leader (inside the gate): once everything committed before this term is applied, the
 * lessor takes every lease from the store, extended by an election timeout. 0 or -1. */
static int promote(struct lease_service *ls)
{
    struct sync_read w = {.done = false};
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    int rc = raft_node_read_index(ls->node, (int)ls->cfg.timeout_ms, on_read, &w);
    if (rc == 0) {
        pthread_mutex_lock(&w.mu);
        while (!w.done)
            pthread_cond_wait(&w.cv, &w.mu); /* fires once, within the timeout */
        rc = w.err;
        pthread_mutex_unlock(&w.mu);
    }
    pthread_mutex_destroy(&w.mu);
    pthread_cond_destroy(&w.cv);
    if (rc != 0)
        return -1;
    pthread_mutex_lock(&ls->mu);
    ls->repromote = false;
    lessor_promote_begin(ls->lessor); /* grants applied from now on are noted */
    pthread_mutex_unlock(&ls->mu);
    struct promo p = {ls, clock_now_ms(), ls->cfg.election_ms, 0};
    struct kv_err err;
    rc = kv_store_leases(ls->cfg.store, promote_one, &p, &err);
    pthread_mutex_lock(&ls->mu);
    if (rc != 0 || p.rc != 0)
        lessor_demote(ls->lessor);
    else
        rc = lessor_promote_end(ls->lessor, clock_now_ms());
    pthread_mutex_unlock(&ls->mu);
    return rc == 0 ? 0 : -1;
}

static void on_revoke_done(void *arg, int err, uint64_t index, uint64_t leader,
                           struct raft_fsm_result *res)
{
    /* the hook saw the revoke applied; a failed one is offered again after the retry */
    (void)err, (void)index, (void)leader, (void)res;
    struct lease_service *ls = arg;
    atomic_fetch_sub(&ls->revoke_inflight, 1);
}

static void on_checkpoint_done(void *arg, int err, uint64_t index, uint64_t leader,
                               struct raft_fsm_result *res)
{
    (void)err, (void)index, (void)leader, (void)res;
    struct lease_service *ls = arg;
    atomic_fetch_sub(&ls->cp_inflight, 1);
}

/* Proposes revokes for up to max expired leases (inside the gate); returns how many. */
static size_t revoke_expired(struct lease_service *ls, int64_t now, size_t max)
{
    int64_t ids[256];
    size_t done = 0;
    while (done < max) {
        size_t want = max - done < 256 ? max - done : 256;
        pthread_mutex_lock(&ls->mu);
        size_t k = lessor_expired(ls->lessor, now, ids, want);
        pthread_mutex_unlock(&ls->mu);
        for (size_t i = 0; i < k; i++) {
            uint8_t *cmd;
            size_t len;
            if (kv_cmd_encode_lease_revoke(ids[i], &cmd, &len) != 0)
                continue;
            atomic_fetch_add(&ls->revoke_inflight, 1);
            if (raft_node_propose(ls->node, cmd, len, (int)ls->cfg.timeout_ms, on_revoke_done,
                                  ls, NULL) != 0)
                atomic_fetch_sub(&ls->revoke_inflight, 1);
            free(cmd);
        }
        done += k;
        if (k < want)
            break;
    }
    return done;
}

/* Proposes due checkpoints, a batch per entry, a few entries in flight (inside the gate). */
static void checkpoint_due(struct lease_service *ls, int64_t now)
{
    while (atomic_load(&ls->cp_inflight) < LEASE_CHECKPOINTS_INFLIGHT) {
        pthread_mutex_lock(&ls->mu);
        /* the resets queued before these checkpoints were offered go into the log first */
        struct renew *resets = resets_take_locked(ls);
        size_t k = lessor_checkpoints(ls->lessor, now, ls->cps, LEASE_CHECKPOINT_BATCH);
        pthread_mutex_unlock(&ls->mu);
        resets_run(resets, true, NULL);
        int rc = -1;
        if (k) {
            Etcdserverpb__LeaseCheckpoint *v = calloc(k, sizeof *v);
            Etcdserverpb__LeaseCheckpoint **pv = calloc(k, sizeof *pv);
            uint8_t *cmd = NULL;
            size_t len;
            if (v && pv) {
                for (size_t i = 0; i < k; i++) {
                    Etcdserverpb__LeaseCheckpoint c = ETCDSERVERPB__LEASE_CHECKPOINT__INIT;
                    c.id = ls->cps[i].id;
                    c.remaining_ttl = ls->cps[i].remaining;
                    v[i] = c;
                    pv[i] = &v[i];
                }
                Etcdserverpb__LeaseCheckpointRequest r =
                    ETCDSERVERPB__LEASE_CHECKPOINT_REQUEST__INIT;
                r.n_checkpoints = k;
                r.checkpoints = pv;
                if (kv_cmd_encode_lease_checkpoint(&r, &cmd, &len) == 0) {
                    /* no lock held (see the top); only this thread proposes checkpoints */
                    atomic_fetch_add(&ls->cp_inflight, 1);
                    rc = raft_node_propose(ls->node, cmd, len, (int)ls->cfg.timeout_ms,
                                           on_checkpoint_done, ls, NULL);
                    if (rc != 0)
                        atomic_fetch_sub(&ls->cp_inflight, 1);
                }
            }
            free(cmd);
            free(v);
            free(pv);
        }
        if (k < LEASE_CHECKPOINT_BATCH || rc != 0)
            break;
    }
}

struct lessor_loop {
    uint64_t term;    /* the term the lessor was promoted in (0: not promoted) */
    double tokens;    /* revokes allowed now */
    int64_t last_ms;
};

static void lessor_tick(struct lease_service *ls, struct lessor_loop *lp)
{
    if (!node_gate_enter(&ls->gate))
        return;
    struct raft_node_status st;
    raft_node_status_get(ls->node, &st);
    int64_t now = clock_now_ms();
    pthread_mutex_lock(&ls->mu);
    bool primary = lessor_is_primary(ls->lessor) && !ls->repromote;
    if (st.core.role != RAFT_LEADER && (lessor_is_primary(ls->lessor) || lp->term))
        lessor_demote(ls->lessor);
    struct renew *resets = resets_take_locked(ls);
    pthread_mutex_unlock(&ls->mu);
    resets_run(resets, true, NULL); /* a failed proposal answers the renew with its error */
    if (st.core.role != RAFT_LEADER) {
        lp->term = 0;
        atomic_store(&ls->primary_term, 0);
    } else if ((!primary || lp->term != st.core.term) && lp->term == st.core.term &&
               atomic_load(&ls->cp_inflight) > 0) {
        /* Promoted again in the same term (a restore, a grant it could not track): not while
         * a checkpoint of ours is in flight, or the store could be read before it applies and
         * a renew would skip the reset that checkpoint needs (a new term's read index waits
         * for the old term's entries). Next tick. */
    } else if (!primary || lp->term != st.core.term) {
        lp->term = promote(ls) == 0 ? st.core.term : 0;
        atomic_store(&ls->primary_term, lp->term);
        lp->tokens = 0;
        lp->last_ms = clock_now_ms();
    } else {
        /* etcd revokes leaseRevokeRate/2 every 500 ms; here rate x elapsed, one tick of burst */
        double per_tick = (double)ls->cfg.revoke_rate * ls->cfg.tick_ms / 1000.0;
        lp->tokens += (double)ls->cfg.revoke_rate * (double)(now - lp->last_ms) / 1000.0;
        if (lp->tokens > (per_tick < 1 ? 1 : per_tick))
            lp->tokens = per_tick < 1 ? 1 : per_tick;
        lp->last_ms = now;
        /* At most one tick's worth of revokes unapplied: when the cluster applies slower than
         * the rate (a loaded machine), revokes wait here instead of queueing in the log ahead
         * of every client write (a put waited ~2 s behind 10,000 expiring leases under ASan). */
        size_t cap = per_tick < 1 ? 1 : (size_t)per_tick;
        size_t inflight = atomic_load(&ls->revoke_inflight);
        size_t allowed = inflight < cap ? cap - inflight : 0;
        if (lp->tokens >= 1 && allowed > 0)
            lp->tokens -= (double)revoke_expired(
                ls, now, (size_t)lp->tokens < allowed ? (size_t)lp->tokens : allowed);
        if (ls->cfg.checkpoint)
            checkpoint_due(ls, now);
    }
    /* renews held for the promotion: renewed now if it happened, else refused */
    pthread_mutex_lock(&ls->mu);
    bool promoted = lessor_is_primary(ls->lessor);
    pthread_mutex_unlock(&ls->mu);
    waiting_flush(ls, promoted, ERR_LEADER_CHANGED);
    node_gate_leave(&ls->gate);
}

static void *lessor_main(void *arg)
{
    struct lease_service *ls = arg;
    struct lessor_loop lp = {0, 0, clock_now_ms()};
    pthread_mutex_lock(&ls->tmu);
    while (!ls->tstop) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += (long)ls->cfg.tick_ms * 1000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        if (!ls->kick)
            pthread_cond_timedwait(&ls->tcv, &ls->tmu, &ts);
        ls->kick = false;
        if (ls->tstop)
            break;
        pthread_mutex_unlock(&ls->tmu);
        lessor_tick(ls, &lp);
        pthread_mutex_lock(&ls->tmu);
    }
    pthread_mutex_unlock(&ls->tmu);
    return NULL;
}

/* ---- lifecycle ---------------------------------------------------------------------------- */

struct lease_service *lease_service_create(const struct lease_service_config *cfg)
{
    struct lease_service *ls = calloc(1, sizeof *ls);
    if (!ls)
        return NULL;
    ls->cfg = *cfg;
    if (!ls->cfg.election_ms)
        ls->cfg.election_ms = 1000;
    if (!ls->cfg.tick_ms)
        ls->cfg.tick_ms = 100;
    if (!ls->cfg.timeout_ms)
        ls->cfg.timeout_ms = 5000;
    if (!ls->cfg.revoke_rate)
        ls->cfg.revoke_rate = LEASE_DEFAULT_REVOKE_RATE;
    if (!ls->cfg.checkpoint_ms)
        ls->cfg.checkpoint_ms = LEASE_DEFAULT_CHECKPOINT_MS;
    if (!ls->cfg.max_inflight)
        ls->cfg.max_inflight = LEASE_DEFAULT_MAX_INFLIGHT;
    if (!ls->cfg.max_streams)
        ls->cfg.max_streams = LEASE_DEFAULT_MAX_STREAMS;
    if (ls->cfg.max_send_bytes < (256u << 10))
        ls->cfg.max_send_bytes = RPC_DEFAULT_MAX_MSG;
    ls->min_ttl = lease_min_ttl(ls->cfg.election_ms);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    uint64_t ms = (uint64_t)now.tv_sec * 1000 + (uint64_t)now.tv_nsec / 1000000;
    ls->id_base = ls->cfg.self_id << 48;
    atomic_init(&ls->id_seq, (ms & ((1ull << 40) - 1)) << 8);
    struct lessor_config lc = {
        .checkpoint_ms = ls->cfg.checkpoint ? (int64_t)ls->cfg.checkpoint_ms : 0,
    };
    ls->lessor = lessor_create(&lc);
    ls->cps = calloc(LEASE_CHECKPOINT_BATCH, sizeof *ls->cps);
    if (!ls->lessor || !ls->cps) {
        lessor_destroy(ls->lessor);
        free(ls->cps);
        free(ls);
        return NULL;
    }
    node_gate_init(&ls->gate);
    pthread_mutex_init(&ls->mu, NULL);
    ls->resets_tail = &ls->resets;
    pthread_mutex_init(&ls->tmu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&ls->tcv, &ca);
    pthread_condattr_destroy(&ca);
    kv_store_set_lease_hook(ls->cfg.store, on_lease_change, ls);
    return ls;
}

int lease_service_start(struct lease_service *ls, struct raft_node *node, struct kv_service *kv,
                        struct peer *peer)
{
    ls->node = node;
    ls->kv = kv;
    ls->peer = peer;
    ls->started = pthread_create(&ls->thread, NULL, lessor_main, ls) == 0;
    if (!ls->started)
        return -1;
    pthread_setname_np(ls->thread, "lessor");
    return 0;
}

int lease_service_register(struct lease_service *ls, struct rpc_server *client_srv,
                           struct rpc_server *peer_srv)
{
    static const struct rpc_stream_handler ka = {
        .on_open = ka_open,
        .on_message = ka_message,
        .on_close = ka_close,
        .on_sent = ka_sent,
    };
    int rc = 0;
    rc |= rpc_server_register_unary_msg(client_srv, "/etcdserverpb.Lease/LeaseGrant",
                                        &etcdserverpb__lease_grant_request__descriptor,
                                        handle_grant, ls);
    rc |= rpc_server_register_unary_msg(client_srv, "/etcdserverpb.Lease/LeaseRevoke",
                                        &etcdserverpb__lease_revoke_request__descriptor,
                                        handle_revoke, ls);
    rc |= rpc_server_register_stream(client_srv, "/etcdserverpb.Lease/LeaseKeepAlive", &ka, ls);
    rc |= rpc_server_register_unary(client_srv, "/etcdserverpb.Lease/LeaseTimeToLive",
                                    handle_ttl, ls);
    rc |= rpc_server_register_unary_msg(client_srv, "/etcdserverpb.Lease/LeaseLeases",
                                        &etcdserverpb__lease_leases_request__descriptor,
                                        handle_leases, ls);
    rc |= rpc_server_register_unary(peer_srv, LEASE_PEER_RENEW, handle_peer_renew, ls);
    rc |= rpc_server_register_unary(peer_srv, LEASE_PEER_TTL, handle_peer_ttl, ls);
    return rc ? -1 : 0;
}

void lease_service_stop(struct lease_service *ls)
{
    if (!ls)
        return;
    pthread_mutex_lock(&ls->mu);
    ls->stopping = true;
    for (struct kstream *st = ls->streams; st; st = st->next) {
        pthread_mutex_lock(&st->mu);
        kstream_finish_locked(st, GRPC_STATUS_UNAVAILABLE, ERR_STOPPED);
        pthread_mutex_unlock(&st->mu);
    }
    pthread_mutex_unlock(&ls->mu);
    if (ls->started) {
        pthread_mutex_lock(&ls->tmu);
        ls->tstop = true;
        pthread_cond_signal(&ls->tcv);
        pthread_mutex_unlock(&ls->tmu);
        pthread_join(ls->thread, NULL);
        ls->started = false;
    }
    waiting_flush(ls, false, ERR_STOPPED); /* none come after `stopping` */
    pthread_mutex_lock(&ls->mu);
    struct renew *resets = resets_take_locked(ls);
    pthread_mutex_unlock(&ls->mu);
    resets_run(resets, false, ERR_STOPPED);
    node_gate_close(&ls->gate); /* a promotion's read index ends within the proposal timeout */
    pthread_mutex_lock(&ls->mu);
    lessor_demote(ls->lessor);
    pthread_mutex_unlock(&ls->mu);
}

void lease_service_destroy(struct lease_service *ls)
{
    if (!ls)
        return;
    lease_service_stop(ls);
    kv_store_set_lease_hook(ls->cfg.store, NULL, NULL);
    lessor_destroy(ls->lessor);
    free(ls->cps);
    node_gate_destroy(&ls->gate);
    pthread_mutex_destroy(&ls->mu);
    pthread_mutex_destroy(&ls->tmu);
    pthread_cond_destroy(&ls->tcv);
    free(ls);
}

void lease_stats_get(struct lease_service *ls, struct lease_stats *out)
{
    out->granted = atomic_load(&ls->granted);
    out->revoked = atomic_load(&ls->revoked);
    out->renewed = atomic_load(&ls->renewed);
    pthread_mutex_lock(&ls->mu);
    out->streams = ls->n_streams;
    out->primary = lessor_is_primary(ls->lessor);
    out->leases = lessor_count(ls->lessor);
    pthread_mutex_unlock(&ls->mu);
}
