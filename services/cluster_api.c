/* cluster_api.c: etcd's Cluster service and Maintenance.MoveLeader (see cluster_api.h).
 *
 * Threads: MemberList is answered on the gRPC thread that received it. Changes and MoveLeader
 * wait for the cluster (seconds), so they run on one worker thread per member, in arrival order;
 * a follower hands changes to the leader with an async Peer.Member call and relays the answer
 * from the peer channel's thread. Every use of the node is inside the owner's gate
 * (node_gate.h), so nothing touches the node once its owner has begun to stop it.
 */
#include "services/cluster_api.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "services/clock.h"
#include "services/member_req.h"
#include "services/proto/etcd/rpc.pb-c.h"
#include "services/proto/raftpb.pb-c.h"

#define MEMBER_METHOD "/craft.raft.Peer/Member"
#define DEFAULT_TOKEN "craft-cluster" /* craftd's --initial-cluster-token default */
#define RETRY_MS 20                   /* a change behind another one looks again this often */

/* etcd 3.4's messages (etcdserver/api/v3rpc/rpctypes/error.go, etcdserver/errors.go). */
#define ERR_NO_LEADER "etcdserver: no leader"
#define ERR_NOT_LEADER "etcdserver: not leader"
#define ERR_LEADER_CHANGED "etcdserver: leader changed"
#define ERR_TIMEOUT "etcdserver: request timed out"
#define ERR_STOPPED "etcdserver: server stopped"
#define ERR_TOO_MANY "etcdserver: too many requests"
#define ERR_TOO_LARGE "etcdserver: request is too large"
#define ERR_NOT_STARTED "etcdserver: re-configuration failed due to not enough started members"
#define ERR_UNHEALTHY "etcdserver: unhealthy cluster"
#define ERR_NOT_LEARNER "etcdserver: can only promote a learner member"
#define ERR_NOT_READY "etcdserver: can only promote a learner member which is in sync with leader"
#define ERR_LEARNERS "etcdserver: too many learner members in cluster"
#define ERR_BAD_TRANSFEREE "etcdserver: bad leader transferee"
#define ERR_TRANSFER_TIMEOUT "etcdserver: request timed out, leader transfer took too long"
#define ERR_UNMARSHAL "grpc: error unmarshalling request"

/* Peer.Member's method numbers (raftpb.proto); MoveLeader never leaves this member. */
enum {
    M_ADD = MEMBER_REQ_ADD,
    M_REMOVE = MEMBER_REQ_REMOVE,
    M_UPDATE = MEMBER_REQ_UPDATE,
    M_PROMOTE = MEMBER_REQ_PROMOTE,
    M_MOVE_LEADER = MEMBER_REQ_MOVE_LEADER,
};

/* One change (or MoveLeader) from a client, or from a follower over Peer.Member. */
struct op {
    struct op *next;
    struct cluster_api *a;
    struct rpc_call *call;
    int method;
    bool from_peer;      /* answer with a MemberReply */
    bool internal;       /* the leader's own (an automatic promotion): nobody to answer */
    int64_t deadline_ms; /* the proposal timeout, from arrival */
    size_t len;
    uint8_t req[];       /* the etcdserverpb request as received */
};

struct cluster_api {
    struct cluster_api_config cfg;
    struct cluster initial;
    char *token, *client_urls;
    uint64_t cluster_id; /* fixed at creation: membership changes keep it */

    pthread_mutex_t mu;
    pthread_cond_t cv; /* work queued, or stopping */
    struct op *head, *tail;
    int queued;
    bool stopping;
    pthread_t worker;
    bool worker_started;
    atomic_int forwarding; /* Peer.Member calls from this member in flight */
};

/* The configuration in force and its member table. */
struct view {
    struct raft_conf conf;
    struct cluster table;
};

/* ---- the rules ------------------------------------------------------------------------- */

void cluster_api_status(int err, bool from_cluster, bool from_node, int *code, const char **msg)
{
    *code = GRPC_STATUS_FAILED_PRECONDITION;
    if (from_cluster) {
        *msg = cluster_strerror(err);
        switch (err) {
        case CLUSTER_ENOTFOUND: *code = GRPC_STATUS_NOT_FOUND; break;
        case CLUSTER_EBADURL:
        case CLUSTER_EBADNAME:
        case CLUSTER_EINVAL: *code = GRPC_STATUS_INVALID_ARGUMENT; break;
        case CLUSTER_ENOMEM: *code = GRPC_STATUS_RESOURCE_EXHAUSTED; break;
        case CLUSTER_EBADMSG: *code = GRPC_STATUS_INTERNAL; break;
        default: break; /* EEXIST, EURLEXISTS, EFULL, ELAST */
        }
        return;
    }
    if (from_node) {
        *code = GRPC_STATUS_UNAVAILABLE;
        switch (err) {
        case RAFT_NODE_ENOTLEADER:
        case RAFT_NODE_ELOST: *msg = ERR_LEADER_CHANGED; break;
        case RAFT_NODE_ETIMEDOUT:
        case RAFT_NODE_EPENDING: /* still behind another change at the deadline */
        case RAFT_NODE_EBUSY: *msg = ERR_TIMEOUT; break;
        case RAFT_NODE_ESHUTDOWN: *msg = ERR_STOPPED; break;
        case RAFT_NODE_ETOOBIG:
            *code = GRPC_STATUS_INVALID_ARGUMENT;
            *msg = ERR_TOO_LARGE;
            break;
        case RAFT_NODE_ENOMEM:
            *code = GRPC_STATUS_RESOURCE_EXHAUSTED;
            *msg = "out of memory";
            break;
        case RAFT_NODE_EINVAL:
            *code = GRPC_STATUS_INTERNAL; /* the target is built to be valid */
            *msg = raft_node_strerror(err);
            break;
        default: *msg = raft_node_strerror(err); break;
        }
        return;
    }
    switch (err) {
    case CLUSTER_API_ENOTSTARTED: *msg = ERR_NOT_STARTED; break;
    case CLUSTER_API_EUNHEALTHY:
        *code = GRPC_STATUS_UNAVAILABLE;
        *msg = ERR_UNHEALTHY;
        break;
    case CLUSTER_API_ENOTLEARNER: *msg = ERR_NOT_LEARNER; break;
    case CLUSTER_API_ENOTREADY: *msg = ERR_NOT_READY; break;
    case CLUSTER_API_ELEARNERS: *msg = ERR_LEARNERS; break;
    case CLUSTER_API_EBADTARGET: *msg = ERR_BAD_TRANSFEREE; break;
    case CLUSTER_API_ENOTLEADER: *msg = ERR_NOT_LEADER; break;
    case CLUSTER_API_ETRANSFER:
        *code = GRPC_STATUS_UNKNOWN; /* etcd's togRPCError has no entry for it */
        *msg = ERR_TRANSFER_TIMEOUT;
        break;
    case CLUSTER_API_EONEURL:
        *code = GRPC_STATUS_INVALID_ARGUMENT;
        *msg = "craft: a member has exactly one peer URL";
        break;
    default:
        *code = GRPC_STATUS_INTERNAL;
        *msg = "craft: unexpected error";
    }
}

static bool has(const uint64_t *ids, uint32_t n, uint64_t id)
{
    for (uint32_t i = 0; i < n; i++)
        if (ids[i] == id)
            return true;
    return false;
}



int cluster_api_strict_check(const struct raft_conf *cur, const bool *started,
                             enum cluster_api_change ch, uint64_t id)
{
    size_t voters = cur->n_voters, up = 0, up_others = 0, others = 0;
    for (size_t i = 0; i < voters; i++) {
        up += started[i];
        if (cur->voters[i] != id) {
            others++;
            up_others += started[i];
        }
    }
    switch (ch) {
    case CLUSTER_API_ADD_VOTER:
        /* etcd's IsReadyToAddVotingMember: the new voter counts toward the quorum, not as
         * started; a second voter for a one-member cluster is allowed (restoring a cluster). */
        if (!(up == 1 && voters + 1 == 2) && up < (voters + 1) / 2 + 1)
            return CLUSTER_API_ENOTSTARTED;
        return up < voters ? CLUSTER_API_EUNHEALTHY : 0;
    case CLUSTER_API_ADD_LEARNER:
        /* etcd's mayAddMember: connected to every voter, learner or not. */
        return up < voters ? CLUSTER_API_EUNHEALTHY : 0;
    case CLUSTER_API_REMOVE:
        /* IsReadyToRemoveVotingMember: those that stay keep a started quorum. A learner's
         * removal is not checked (others == voters). */
        if (others == voters)
            return 0;
        return up_others < others / 2 + 1 ? CLUSTER_API_ENOTSTARTED : 0;
    case CLUSTER_API_PROMOTE:
        /* IsReadyToPromoteMember: the learner counts as a started voter. */
        return up + 1 < (voters + 1) / 2 + 1 ? CLUSTER_API_ENOTSTARTED : 0;
    case CLUSTER_API_UPDATE:
        return 0;
    }
    return 0;
}

bool cluster_api_learner_ready(uint64_t match, uint64_t leader_index)
{
    /* etcd: not ready when match < 0.9 * leader's. In integers: the lag may be at most a tenth
     * of the leader's index (lag <= L/10 <=> lag <= floor(L/10) for an integer lag). */
    return match >= leader_index || leader_index - match <= leader_index / 10;
}



/* ---- answers ------------------------------------------------------------------------------ */

static void fill_header(struct cluster_api *a, Etcdserverpb__ResponseHeader *h, bool in_gate)
{
    h->cluster_id = a->cluster_id;
    h->member_id = a->cfg.self_id;
    if (in_gate) {
        h->raft_term = raft_node_term(a->cfg.node);
    } else if (node_gate_enter(a->cfg.gate)) {
        h->raft_term = raft_node_term(a->cfg.node);
        node_gate_leave(a->cfg.gate);
    }
}

/* Completes o's call: with resp (code 0) or the status; a Peer.Member call gets a MemberReply
 * either way. */
static void deliver(struct op *o, int code, const char *msg, const ProtobufCMessage *resp)
{
    if (o->internal)
        return;
    if (!o->from_peer) {
        if (code)
            rpc_call_fail(o->call, (grpc_status_code)code, msg);
        else
            rpc_call_reply_msg(o->call, resp);
        return;
    }
    Craft__Raft__MemberReply r = CRAFT__RAFT__MEMBER_REPLY__INIT;
    r.code = (uint32_t)code;
    r.message = (char *)(msg ? msg : "");
    uint8_t *buf = NULL;
    size_t len = 0;
    if (!code && rpc_msg_pack(resp, &buf, &len) != 0) {
        r.code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        r.message = "out of memory";
    }
    r.response.data = buf;
    r.response.len = len;
    rpc_call_reply_msg(o->call, &r.base);
    free(buf);
}

static void deliver_err(struct op *o, int err, bool from_cluster, bool from_node)
{
    int code;
    const char *msg;
    cluster_api_status(err, from_cluster, from_node, &code, &msg);
    deliver(o, code, msg, NULL);
}

/* A refusal by the rules: a table edit's CLUSTER_E* or one of ours (CLUSTER_API_E*). */
static void deliver_rule(struct op *o, int err)
{
    deliver_err(o, err, err > CLUSTER_API_ENOTSTARTED, false);
}

/* Members as etcd lists them, with the strings they point to. */
struct member_list {
    size_t n;
    Etcdserverpb__Member m[CLUSTER_MAX_MEMBERS];
    Etcdserverpb__Member *mp[CLUSTER_MAX_MEMBERS];
    char peer[CLUSTER_MAX_MEMBERS][CLUSTER_URL_MAX];
    char client[CLUSTER_MAX_MEMBERS][1024];
    char *pu[CLUSTER_MAX_MEMBERS], *cu[CLUSTER_MAX_MEMBERS];
};

/* l lists every member of table, a learner when conf says so; table must outlive l. */
static void list_fill(struct cluster_api *a, const struct raft_conf *conf,
                      const struct cluster *table, struct member_list *l)
{
    l->n = table->n;
    for (size_t i = 0; i < table->n; i++) {
        const struct cluster_member *c = &table->members[i];
        cluster_url_string(&c->peer_url, l->peer[i], sizeof l->peer[i]);
        if (c->id == a->cfg.self_id)
            snprintf(l->client[i], sizeof l->client[i], "%s", a->client_urls);
        else
            peer_client_urls(a->cfg.peer, c->id, l->client[i], sizeof l->client[i]);
        Etcdserverpb__Member *m = &l->m[i];
        etcdserverpb__member__init(m);
        m->id = c->id;
        m->name = (char *)c->name;
        l->pu[i] = l->peer[i];
        m->n_peerurls = 1;
        m->peerurls = &l->pu[i];
        l->cu[i] = l->client[i];
        m->n_clienturls = l->client[i][0] ? 1 : 0; /* unknown until the member spoke */
        m->clienturls = &l->cu[i];
        m->islearner = has(conf->learners, conf->n_learners, c->id);
        l->mp[i] = m;
    }
}

/* Gate held. 0, a node error, or CLUSTER_EBADMSG (a context that is not a table). */
static int view_get(struct cluster_api *a, struct view *v)
{
    uint8_t *ctx = NULL;
    size_t len = 0;
    bool committed;
    int rc = raft_node_conf_get(a->cfg.node, &v->conf, &ctx, &len, &committed);
    if (rc != 0)
        return rc;
    char err[160];
    if (!len)
        v->table = a->initial;
    else if (cluster_decode(ctx, len, &v->table, err, sizeof err) != 0)
        rc = CLUSTER_EBADMSG;
    free(ctx);
    return rc;
}

/* ---- MemberList ------------------------------------------------------------------------------ */

/* etcd 3.4 serves a learner's clients Status and serializable Ranges only. True if refused. */
static bool refuse_learner(struct cluster_api *a, struct rpc_call *call)
{
    if (!a->cfg.learner || !atomic_load_explicit(a->cfg.learner, memory_order_relaxed))
        return false;
    rpc_call_fail(call, GRPC_STATUS_UNAVAILABLE, "etcdserver: rpc not supported for learner");
    return true;
}

static void handle_member_list(struct rpc_call *call, const ProtobufCMessage *m, void *ctx)
{
    (void)m;
    struct cluster_api *a = ctx;
    if (refuse_learner(a, call))
        return;
    struct view *v = malloc(sizeof *v);
    struct member_list *l = malloc(sizeof *l);
    if (!v || !l) {
        rpc_call_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    if (!node_gate_enter(a->cfg.gate)) {
        rpc_call_fail(call, GRPC_STATUS_UNAVAILABLE, ERR_STOPPED);
        goto out;
    }
    int rc = view_get(a, v);
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    fill_header(a, &h, true);
    node_gate_leave(a->cfg.gate);
    if (rc != 0) {
        rpc_call_fail(call, GRPC_STATUS_INTERNAL, "craft: the configuration's member table does "
                                                  "not decode");
        goto out;
    }
    list_fill(a, &v->conf, &v->table, l);
    Etcdserverpb__MemberListResponse r = ETCDSERVERPB__MEMBER_LIST_RESPONSE__INIT;
    r.header = &h;
    r.n_members = l->n;
    r.members = l->mp;
    rpc_call_reply_msg(call, &r.base);
out:
    free(v);
    free(l);
}

/* ---- changes, on the leader's worker ------------------------------------------------------ */

/* What became of one attempt at an op: answered (DONE; DONE_LEFT when it also left the gate),
 * to be tried again (RETRY: nothing was proposed), or to be handed to w->leader (FORWARD). */
enum outcome { DONE, DONE_LEFT, RETRY, FORWARD };

struct work {
    struct cluster_api *a;
    struct op *o;
    struct view v;           /* the configuration and table before */
    struct cluster next;     /* the table after */
    struct raft_conf target; /* the configuration after */
    uint64_t leader;         /* FORWARD: where to */
    struct member_list list;
};

/* Not (or no longer) the leader. A client's change goes on to the leader we know of; a change a
 * follower handed us is refused (it sent it when we led: one hop only). */
static enum outcome not_leader(struct work *w, uint64_t leader)
{
    if (w->o->internal)
        return DONE; /* an automatic promotion is the leader's own: nothing to pass on */
    if (!w->o->from_peer && leader && leader != w->a->cfg.self_id) {
        w->leader = leader;
        return FORWARD;
    }
    deliver(w->o, GRPC_STATUS_UNAVAILABLE, w->o->from_peer ? ERR_LEADER_CHANGED : ERR_NO_LEADER,
            NULL);
    return DONE;
}

/* Whether the leader heard from `id` within an election timeout (etcd's "started"). */
static bool started(struct cluster_api *a, uint64_t id)
{
    int64_t ago = -1;
    if (id == a->cfg.self_id)
        return true;
    return raft_node_progress(a->cfg.node, id, NULL, NULL, &ago) == 0 && ago >= 0 &&
           ago <= (int64_t)a->cfg.election_ms;
}

static int strict_check(struct work *w, enum cluster_api_change ch, uint64_t id)
{
    if (w->a->cfg.no_strict_check)
        return 0;
    /* A learner on its way to voter (MemberAdd of a voter, marked promote) counts as the voter
     * it will be: etcd's rules see a voter there (one that may not have started). Except when it
     * is the one being promoted. */
    struct raft_conf eff = w->v.conf;
    for (uint32_t i = 0; i < w->v.conf.n_learners; i++) {
        const struct cluster_member *m = cluster_find_id(&w->v.table, w->v.conf.learners[i]);
        if (m && m->promote && !(ch == CLUSTER_API_PROMOTE && m->id == id) &&
            eff.n_voters < RAFT_MAX_NODES)
            eff.voters[eff.n_voters++] = m->id;
    }
    bool up[RAFT_MAX_NODES];
    for (uint32_t i = 0; i < eff.n_voters; i++)
        up[i] = started(w->a, eff.voters[i]);
    return cluster_api_strict_check(&eff, up, ch, id);
}

/* Proposes w->target with w->next as its table and waits (gate held). DONE with the error
 * delivered, or 0 in *ok and nothing delivered yet. */
static enum outcome change(struct work *w, bool *ok)
{
    *ok = false;
    uint8_t *ctx = NULL;
    size_t len = 0;
    int rc = cluster_encode(&w->next, &ctx, &len);
    if (rc != 0) {
        deliver_err(w->o, rc, true, false);
        return DONE;
    }
    int64_t left = w->o->deadline_ms - clock_now_ms();
    uint64_t leader = 0;
    rc = raft_node_change_conf(w->a->cfg.node, &w->target, ctx, len, left > 0 ? (int)left : 1,
                               &leader);
    free(ctx);
    if (rc == RAFT_NODE_EPENDING || rc == RAFT_NODE_EBUSY)
        return RETRY; /* behind another change or a transfer: nothing was proposed */
    if (rc == RAFT_NODE_ENOTLEADER)
        return not_leader(w, leader);
    if (rc != 0) {
        deliver_err(w->o, rc, false, true);
        return DONE;
    }
    *ok = true;
    return DONE;
}

/* The members after a change: the response's list. */
static void reply_members(struct work *w, const Etcdserverpb__Member *added)
{
    list_fill(w->a, &w->target, &w->next, &w->list);
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    fill_header(w->a, &h, true);
    switch (w->o->method) {
    case M_ADD: {
        Etcdserverpb__MemberAddResponse r = ETCDSERVERPB__MEMBER_ADD_RESPONSE__INIT;
        r.header = &h;
        for (size_t i = 0; i < w->list.n; i++)
            if (w->list.m[i].id == added->id)
                r.member = &w->list.m[i];
        r.n_members = w->list.n;
        r.members = w->list.mp;
        deliver(w->o, 0, NULL, &r.base);
        break;
    }
    case M_REMOVE: {
        Etcdserverpb__MemberRemoveResponse r = ETCDSERVERPB__MEMBER_REMOVE_RESPONSE__INIT;
        r.header = &h;
        r.n_members = w->list.n;
        r.members = w->list.mp;
        deliver(w->o, 0, NULL, &r.base);
        break;
    }
    case M_UPDATE: {
        Etcdserverpb__MemberUpdateResponse r = ETCDSERVERPB__MEMBER_UPDATE_RESPONSE__INIT;
        r.header = &h;
        r.n_members = w->list.n;
        r.members = w->list.mp;
        deliver(w->o, 0, NULL, &r.base);
        break;
    }
    default: {
        Etcdserverpb__MemberPromoteResponse r = ETCDSERVERPB__MEMBER_PROMOTE_RESPONSE__INIT;
        r.header = &h;
        r.n_members = w->list.n;
        r.members = w->list.mp;
        deliver(w->o, 0, NULL, &r.base);
        break;
    }
    }
}

static bool own_scheme_tls(const struct work *w)
{
    const struct cluster_member *self = cluster_find_id(&w->v.table, w->a->cfg.self_id);
    if (!self)
        self = &w->a->initial.members[0]; /* a leader outside the table: use the cluster's */
    return self->peer_url.tls;
}

/* Learners the operator asked for: etcd's limit counts these, not voters on their way in. */
static unsigned operator_learners(const struct view *v)
{
    unsigned n = 0;
    for (uint32_t i = 0; i < v->conf.n_learners; i++) {
        const struct cluster_member *m = cluster_find_id(&v->table, v->conf.learners[i]);
        n += !(m && m->promote);
    }
    return n;
}

static enum outcome do_add(struct work *w, const Etcdserverpb__MemberAddRequest *r)
{
    struct cluster_url u;
    int rc = cluster_api_check_urls(r->peerurls, r->n_peerurls, own_scheme_tls(w), &u);
    if (rc != 0) {
        deliver_rule(w->o, rc);
        return DONE;
    }
    uint64_t id = 0;
    w->next = w->v.table;
    struct raft_node_status st;
    raft_node_status_get(w->a->cfg.node, &st);
    rc = member_req_add_by_url(&w->next, &u, w->a->token, st.core.last_index, &id);
    if (rc != 0) {
        deliver_err(w->o, rc, true, false);
        return DONE;
    }
    unsigned max_learners = w->a->cfg.max_learners;
    if (r->islearner && operator_learners(&w->v) + 1 > max_learners) {
        deliver_err(w->o, CLUSTER_API_ELEARNERS, false, false);
        return DONE;
    }
    enum cluster_api_change ch = r->islearner ? CLUSTER_API_ADD_LEARNER : CLUSTER_API_ADD_VOTER;
    rc = cluster_api_target(&w->v.conf, ch, id, &w->target);
    if (rc == 0)
        rc = strict_check(w, ch, id);
    if (rc != 0) {
        deliver_rule(w->o, rc);
        return DONE;
    }
    /* A voter joins as a learner first and the leader promotes it once it is in sync (Raft
     * paper §6's catch-up phase, thesis §4.2.1): `etcdctl member add` comes before the new
     * member starts, and a voter that has not started would count in C_old,new's majority at
     * once - with one more member down the cluster would stop (etcd has the same window with its
     * single-server change; it recommends learners for that reason). The table marks it
     * (promote), so whichever member leads promotes it (promote_ready). etcd's check for adding
     * a voter still applies, to the voter it will become. */
    if (!r->islearner) {
        cluster_api_target(&w->v.conf, CLUSTER_API_ADD_LEARNER, id, &w->target);
        for (size_t i = 0; i < w->next.n; i++)
            if (w->next.members[i].id == id)
                w->next.members[i].promote = true;
    }
    bool ok;
    enum outcome out = change(w, &ok);
    if (ok) {
        Etcdserverpb__Member added = ETCDSERVERPB__MEMBER__INIT;
        added.id = id;
        reply_members(w, &added);
    }
    return out;
}

static enum outcome do_remove(struct work *w, const Etcdserverpb__MemberRemoveRequest *r)
{
    w->next = w->v.table;
    char err[160];
    int rc = cluster_remove(&w->next, r->id, err, sizeof err);
    if (rc == 0)
        rc = cluster_api_target(&w->v.conf, CLUSTER_API_REMOVE, r->id, &w->target);
    if (rc != 0) {
        deliver_rule(w->o, rc);
        return DONE;
    }
    rc = strict_check(w, CLUSTER_API_REMOVE, r->id);
    if (rc != 0) {
        deliver_err(w->o, rc, false, false);
        return DONE;
    }
    bool ok;
    enum outcome out = change(w, &ok);
    if (ok)
        reply_members(w, NULL);
    return out;
}

static enum outcome do_update(struct work *w, const Etcdserverpb__MemberUpdateRequest *r)
{
    struct cluster_url u;
    int rc = cluster_api_check_urls(r->peerurls, r->n_peerurls, own_scheme_tls(w), &u);
    if (rc != 0) {
        deliver_rule(w->o, rc);
        return DONE;
    }
    w->next = w->v.table;
    char err[160];
    rc = cluster_update_peer_url(&w->next, r->id, r->peerurls[0], err, sizeof err);
    if (rc == 0)
        rc = cluster_api_target(&w->v.conf, CLUSTER_API_UPDATE, r->id, &w->target);
    if (rc != 0) {
        deliver_err(w->o, rc, true, false);
        return DONE;
    }
    bool ok;
    enum outcome out = change(w, &ok);
    if (ok)
        reply_members(w, NULL);
    return out;
}

static enum outcome do_promote(struct work *w, const Etcdserverpb__MemberPromoteRequest *r)
{
    int rc = cluster_find_id(&w->v.table, r->id)
                 ? cluster_api_target(&w->v.conf, CLUSTER_API_PROMOTE, r->id, &w->target)
                 : CLUSTER_ENOTFOUND;
    if (rc != 0) {
        deliver_rule(w->o, rc);
        return DONE;
    }
    uint64_t match = 0, last = 0;
    rc = raft_node_progress(w->a->cfg.node, r->id, &match, &last, NULL);
    if (rc == RAFT_NODE_ENOTLEADER) {
        struct raft_node_status st;
        raft_node_status_get(w->a->cfg.node, &st);
        return not_leader(w, st.core.leader_id);
    }
    if (rc != 0 || !cluster_api_learner_ready(match, last)) {
        deliver_err(w->o, CLUSTER_API_ENOTREADY, false, false);
        return DONE;
    }
    rc = strict_check(w, CLUSTER_API_PROMOTE, r->id);
    if (rc != 0) {
        deliver_err(w->o, rc, false, false);
        return DONE;
    }
    w->next = w->v.table; /* the table does not say who learns: the configuration does */
    for (size_t i = 0; i < w->next.n; i++)
        if (w->next.members[i].id == r->id)
            w->next.members[i].promote = false; /* done */
    bool ok;
    enum outcome out = change(w, &ok);
    if (ok)
        reply_members(w, NULL);
    return out;
}

/* MoveLeader: hand over, then wait (gate left while sleeping) until the target leads. */
static enum outcome do_move_leader(struct work *w, const Etcdserverpb__MoveLeaderRequest *r)
{
    struct cluster_api *a = w->a;
    uint64_t to = r->targetid;
    if (!has(w->v.conf.voters, w->v.conf.n_voters, to)) {
        deliver_err(w->o, CLUSTER_API_EBADTARGET, false, false);
        return DONE;
    }
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    Etcdserverpb__MoveLeaderResponse resp = ETCDSERVERPB__MOVE_LEADER_RESPONSE__INIT;
    resp.header = &h;
    if (to == a->cfg.self_id) { /* etcd: the leader already is the transferee */
        fill_header(a, &h, true);
        deliver(w->o, 0, NULL, &resp.base);
        return DONE;
    }
    int rc = raft_node_transfer_leader(a->cfg.node, to);
    if (rc == RAFT_NODE_ENOTLEADER || rc == RAFT_NODE_EINVAL) {
        deliver_err(w->o, rc == RAFT_NODE_EINVAL ? CLUSTER_API_EBADTARGET : CLUSTER_API_ENOTLEADER,
                    false, false);
        return DONE;
    }
    if (rc != 0) {
        deliver_err(w->o, rc, false, true);
        return DONE;
    }
    /* The core gives up after an election timeout; the new leader is seen within another. */
    int64_t deadline = clock_now_ms() + 2 * (int64_t)a->cfg.election_ms + 1000;
    long step_ms = a->cfg.election_ms / 20 ? (long)a->cfg.election_ms / 20 : 1;
    for (;;) {
        struct raft_node_status st;
        raft_node_status_get(a->cfg.node, &st);
        if (st.core.leader_id == to) {
            fill_header(a, &h, true);
            deliver(w->o, 0, NULL, &resp.base);
            return DONE;
        }
        if (clock_now_ms() >= deadline) {
            deliver_err(w->o, CLUSTER_API_ETRANSFER, false, false);
            return DONE;
        }
        node_gate_leave(a->cfg.gate);
        struct timespec ts = {0, step_ms * 1000000L};
        nanosleep(&ts, NULL);
        if (!node_gate_enter(a->cfg.gate)) {
            deliver(w->o, GRPC_STATUS_UNAVAILABLE, ERR_STOPPED, NULL);
            return DONE_LEFT;
        }
    }
}


/* One attempt at w->o (gate held). */
static enum outcome run_once(struct work *w)
{
    struct cluster_api *a = w->a;
    struct op *o = w->o;
    struct raft_node_status st;
    raft_node_status_get(a->cfg.node, &st);
    if (st.core.role != RAFT_LEADER) {
        if (o->method != M_MOVE_LEADER)
            return not_leader(w, st.core.leader_id);
        deliver_err(o, CLUSTER_API_ENOTLEADER, false, false);
        return DONE;
    }
    int rc = view_get(a, &w->v);
    if (rc != 0) {
        deliver(o, GRPC_STATUS_INTERNAL, "craft: the configuration's member table does not decode",
                NULL);
        return DONE;
    }
    if (w->v.conf.n_old && o->method != M_MOVE_LEADER)
        return RETRY; /* joint: the previous change is not finished */
    ProtobufCMessage *req = rpc_msg_unpack(member_req_desc(o->method), o->req, o->len);
    if (!req) {
        deliver(o, GRPC_STATUS_INVALID_ARGUMENT, ERR_UNMARSHAL, NULL);
        return DONE;
    }
    enum outcome out;
    switch (o->method) {
    case M_ADD: out = do_add(w, (const Etcdserverpb__MemberAddRequest *)req); break;
    case M_REMOVE: out = do_remove(w, (const Etcdserverpb__MemberRemoveRequest *)req); break;
    case M_UPDATE: out = do_update(w, (const Etcdserverpb__MemberUpdateRequest *)req); break;
    case M_PROMOTE: out = do_promote(w, (const Etcdserverpb__MemberPromoteRequest *)req); break;
    default: out = do_move_leader(w, (const Etcdserverpb__MoveLeaderRequest *)req); break;
    }
    protobuf_c_message_free_unpacked(req, NULL);
    return out;
}

static bool stopping(struct cluster_api *a)
{
    pthread_mutex_lock(&a->mu);
    bool s = a->stopping;
    pthread_mutex_unlock(&a->mu);
    return s;
}

static void forward_op(struct cluster_api *a, struct op *o, uint64_t leader);

/* Runs o to its answer (or hands it to the leader); frees it. */
static void run_op(struct cluster_api *a, struct op *o)
{
    struct work *w = calloc(1, sizeof *w);
    if (!w) {
        deliver(o, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory", NULL);
        free(o);
        return;
    }
    w->a = a;
    w->o = o;
    enum outcome out = DONE;
    for (;;) {
        if (o->call && rpc_call_is_cancelled(o->call)) { /* the client gave up while waiting */
            deliver(o, GRPC_STATUS_CANCELLED, "cancelled", NULL);
            break;
        }
        if (!node_gate_enter(a->cfg.gate)) {
            deliver(o, GRPC_STATUS_UNAVAILABLE, ERR_STOPPED, NULL);
            break;
        }
        out = run_once(w);
        if (out != DONE_LEFT)
            node_gate_leave(a->cfg.gate);
        if (out != RETRY)
            break;
        if (clock_now_ms() + RETRY_MS >= o->deadline_ms || stopping(a)) {
            deliver_err(o, RAFT_NODE_EPENDING, false, true); /* changed nothing */
            break;
        }
        struct timespec ts = {0, RETRY_MS * 1000000L};
        nanosleep(&ts, NULL);
    }
    uint64_t leader = w->leader;
    free(w);
    if (out == FORWARD)
        forward_op(a, o, leader);
    else
        free(o);
}

static struct op *op_new(struct cluster_api *a, struct rpc_call *call, int method,
                         const uint8_t *req, size_t len, bool from_peer);

/* Worker, no lock: on the leader, promote the learners MemberAdd added as voters (marked
 * promote in the table) once they are in sync (etcd's rule: 90% of the leader's log). Whether
 * this member leads is looked at again on each pass, so a new leader finishes the job. */
static void promote_ready(struct cluster_api *a)
{
    uint64_t ready[RAFT_MAX_NODES];
    size_t n = 0;
    if (!node_gate_enter(a->cfg.gate))
        return;
    struct view v;
    struct raft_node_status st;
    raft_node_status_get(a->cfg.node, &st);
    if (st.core.role == RAFT_LEADER && view_get(a, &v) == 0)
        for (uint32_t i = 0; i < v.conf.n_learners; i++) {
            const struct cluster_member *m = cluster_find_id(&v.table, v.conf.learners[i]);
            uint64_t match = 0, last = 0;
            if (m && m->promote &&
                raft_node_progress(a->cfg.node, m->id, &match, &last, NULL) == 0 &&
                cluster_api_learner_ready(match, last))
                ready[n++] = m->id;
        }
    node_gate_leave(a->cfg.gate);
    for (size_t i = 0; i < n; i++) {
        Etcdserverpb__MemberPromoteRequest r = ETCDSERVERPB__MEMBER_PROMOTE_REQUEST__INIT;
        r.id = ready[i];
        uint8_t *buf = NULL;
        size_t len = 0;
        struct op *o =
            rpc_msg_pack(&r.base, &buf, &len) == 0 ? op_new(a, NULL, M_PROMOTE, buf, len, false)
                                                    : NULL;
        free(buf);
        if (o) {
            o->internal = true;
            run_op(a, o);
        }
    }
}

static void *worker_main(void *arg)
{
    struct cluster_api *a = arg;
    for (;;) {
        pthread_mutex_lock(&a->mu);
        if (!a->head && !a->stopping) {
            /* Idle: look for learners to promote every quarter election timeout. */
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            long ms = (long)a->cfg.election_ms / 4 ? (long)a->cfg.election_ms / 4 : 1;
            ts.tv_sec += ms / 1000;
            ts.tv_nsec += (ms % 1000) * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&a->cv, &a->mu, &ts);
        }
        if (!a->head && !a->stopping) {
            pthread_mutex_unlock(&a->mu);
            promote_ready(a);
            continue;
        }
        struct op *o = a->head;
        if (o) {
            a->head = o->next;
            if (!a->head)
                a->tail = NULL;
            a->queued--;
        }
        pthread_mutex_unlock(&a->mu);
        if (!o)
            return NULL;
        run_op(a, o);
    }
}

static struct op *op_new(struct cluster_api *a, struct rpc_call *call, int method,
                         const uint8_t *req, size_t len, bool from_peer)
{
    struct op *o = malloc(sizeof *o + len);
    if (!o)
        return NULL;
    *o = (struct op){.a = a, .call = call, .method = method, .from_peer = from_peer,
                     .deadline_ms = clock_now_ms() + a->cfg.timeout_ms, .len = len};
    if (len)
        memcpy(o->req, req, len);
    return o;
}

static void enqueue(struct cluster_api *a, struct op *o)
{
    pthread_mutex_lock(&a->mu);
    bool stopped = a->stopping, full = a->queued >= CLUSTER_API_MAX_QUEUED;
    if (!stopped && !full) {
        if (a->tail)
            a->tail->next = o;
        else
            a->head = o;
        a->tail = o;
        a->queued++;
        pthread_cond_signal(&a->cv);
    }
    pthread_mutex_unlock(&a->mu);
    if (stopped || full) {
        deliver(o, stopped ? GRPC_STATUS_UNAVAILABLE : GRPC_STATUS_RESOURCE_EXHAUSTED,
                stopped ? ERR_STOPPED : ERR_TOO_MANY, NULL);
        free(o);
    }
}

/* ---- a follower's side: Peer.Member to the leader -------------------------------------------- */



/* The leader's response, with this member's header (the member the client called). */
static void relay(struct op *o, const uint8_t *data, size_t len)
{
    ProtobufCMessage *m = rpc_msg_unpack(member_req_response_desc(o->method), data, len);
    if (!m) {
        rpc_call_fail(o->call, GRPC_STATUS_INTERNAL, "craft: the leader's answer does not decode");
        return;
    }
    Etcdserverpb__ResponseHeader **hp = member_req_header(o->method, m);
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT, *orig = *hp;
    fill_header(o->a, &h, false);
    *hp = &h;
    rpc_call_reply_msg(o->call, m);
    *hp = orig; /* the unpacked message frees its own */
    protobuf_c_message_free_unpacked(m, NULL);
}

static void on_forwarded(struct rpc_result *res, void *arg)
{
    struct op *o = arg;
    struct cluster_api *a = o->a;
    if (res->status == GRPC_STATUS_OK) {
        Craft__Raft__MemberReply *r = (Craft__Raft__MemberReply *)rpc_msg_unpack(
            &craft__raft__member_reply__descriptor, res->data, res->len);
        if (!r)
            rpc_call_fail(o->call, GRPC_STATUS_UNAVAILABLE, ERR_NO_LEADER);
        else if (r->code)
            rpc_call_fail(o->call, (grpc_status_code)r->code, r->message);
        else
            relay(o, r->response.data, r->response.len);
        if (r)
            protobuf_c_message_free_unpacked(&r->base, NULL);
    } else if (res->status == GRPC_STATUS_DEADLINE_EXCEEDED) {
        rpc_call_fail(o->call, GRPC_STATUS_UNAVAILABLE, ERR_TIMEOUT);
    } else if (res->status == GRPC_STATUS_UNAVAILABLE || res->status == GRPC_STATUS_CANCELLED) {
        rpc_call_fail(o->call, GRPC_STATUS_UNAVAILABLE, ERR_NO_LEADER); /* unreachable, or us
                                                                            stopping */
    } else { /* the leader refused the call itself (e.g. not our cluster): say so */
        rpc_call_fail(o->call, res->status, res->message);
    }
    atomic_fetch_sub(&a->forwarding, 1);
    free(o);
}

/* Hands a client's change to the leader; takes o. */
static void forward_op(struct cluster_api *a, struct op *o, uint64_t leader)
{
    if (atomic_fetch_add(&a->forwarding, 1) >= CLUSTER_API_MAX_QUEUED) {
        atomic_fetch_sub(&a->forwarding, 1);
        deliver(o, GRPC_STATUS_RESOURCE_EXHAUSTED, ERR_TOO_MANY, NULL);
        free(o);
        return;
    }
    Craft__Raft__MemberRequest r = CRAFT__RAFT__MEMBER_REQUEST__INIT;
    r.cluster_id = a->cluster_id;
    r.method = (uint32_t)o->method;
    r.request.data = o->req;
    r.request.len = o->len;
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = rpc_msg_pack(&r.base, &buf, &len);
    /* The leader's own time-out answers first; the extra second covers the hop. */
    if (rc == 0)
        rc = peer_call_async(a->cfg.peer, leader, MEMBER_METHOD, buf, len,
                             (int)a->cfg.timeout_ms + 1000, on_forwarded, o);
    free(buf);
    if (rc != 0) {
        atomic_fetch_sub(&a->forwarding, 1);
        deliver(o, GRPC_STATUS_UNAVAILABLE, ERR_NO_LEADER, NULL);
        free(o);
    }
}

/* ---- handlers -------------------------------------------------------------------------------- */

static void handle_change(struct rpc_call *call, const uint8_t *data, size_t len,
                          struct cluster_api *a, int method)
{
    if (refuse_learner(a, call))
        return;
    if (a->cfg.admin) {
        char msg[160];
        int code = a->cfg.admin(a->cfg.admin_arg, call, NULL, msg, sizeof msg);
        if (code) {
            rpc_call_fail(call, (grpc_status_code)code, msg);
            return;
        }
    }
    ProtobufCMessage *m = rpc_msg_unpack(member_req_desc(method), data, len);
    if (!m) {
        rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT, ERR_UNMARSHAL);
        return;
    }
    protobuf_c_message_free_unpacked(m, NULL);
    struct op *o = op_new(a, call, method, data, len, false);
    if (!o) {
        rpc_call_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    if (!node_gate_enter(a->cfg.gate)) {
        deliver(o, GRPC_STATUS_UNAVAILABLE, ERR_STOPPED, NULL);
        free(o);
        return;
    }
    struct raft_node_status st;
    raft_node_status_get(a->cfg.node, &st);
    node_gate_leave(a->cfg.gate);
    if (st.core.role == RAFT_LEADER) {
        enqueue(a, o);
    } else if (method == M_MOVE_LEADER) { /* etcd: only the leader moves its leadership */
        deliver_err(o, CLUSTER_API_ENOTLEADER, false, false);
        free(o);
    } else if (st.core.leader_id && st.core.leader_id != a->cfg.self_id) {
        forward_op(a, o, st.core.leader_id);
    } else {
        deliver(o, GRPC_STATUS_UNAVAILABLE, ERR_NO_LEADER, NULL);
        free(o);
    }
}

static void handle_add(struct rpc_call *call, const uint8_t *data, size_t len, void *ctx)
{
    handle_change(call, data, len, ctx, M_ADD);
}

static void handle_remove(struct rpc_call *call, const uint8_t *data, size_t len, void *ctx)
{
    handle_change(call, data, len, ctx, M_REMOVE);
}

static void handle_update(struct rpc_call *call, const uint8_t *data, size_t len, void *ctx)
{
    handle_change(call, data, len, ctx, M_UPDATE);
}

static void handle_promote(struct rpc_call *call, const uint8_t *data, size_t len, void *ctx)
{
    handle_change(call, data, len, ctx, M_PROMOTE);
}

static void handle_move_leader(struct rpc_call *call, const uint8_t *data, size_t len, void *ctx)
{
    handle_change(call, data, len, ctx, M_MOVE_LEADER);
}

/* Peer.Member: a follower's client's change, for us to decide as the leader. */
static void handle_peer_member(struct rpc_call *call, const ProtobufCMessage *m, void *ctx)
{
    struct cluster_api *a = ctx;
    const Craft__Raft__MemberRequest *r = (const Craft__Raft__MemberRequest *)m;
    if (!peer_call_member(a->cfg.peer, call)) {
        rpc_call_fail(call, GRPC_STATUS_PERMISSION_DENIED,
                      "only cluster members may hand over membership changes");
        return;
    }
    int code;
    const char *msg;
    if (member_req_peer_check(r, a->cluster_id, &code, &msg) != 0) {
        rpc_call_fail(call, (grpc_status_code)code, msg);
        return;
    }
    struct op *o = op_new(a, call, (int)r->method, r->request.data, r->request.len, true);
    if (!o) {
        rpc_call_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    enqueue(a, o);
}

/* ---- lifecycle ------------------------------------------------------------------------------- */

struct cluster_api *cluster_api_create(const struct cluster_api_config *cfg)
{
    struct cluster_api *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    a->cfg = *cfg;
    a->initial = *cfg->initial;
    a->cluster_id = a->initial.id;
    a->token = strdup(cfg->token ? cfg->token : DEFAULT_TOKEN);
    a->client_urls = strdup(cfg->client_urls ? cfg->client_urls : "");
    if (!a->cfg.timeout_ms)
        a->cfg.timeout_ms = 5000;
    if (!a->cfg.election_ms)
        a->cfg.election_ms = 1000;
    if (!a->cfg.max_learners)
        a->cfg.max_learners = CLUSTER_API_DEFAULT_MAX_LEARNERS;
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->cv, NULL);
    atomic_init(&a->forwarding, 0);
    if (a->token && a->client_urls)
        a->worker_started = pthread_create(&a->worker, NULL, worker_main, a) == 0;
    if (!a->worker_started) {
        cluster_api_destroy(a);
        return NULL;
    }
    pthread_setname_np(a->worker, "cluster-api");
    return a;
}

int cluster_api_register_client(struct cluster_api *a, struct rpc_server *srv)
{
    int rc = 0;
    rc |= rpc_server_register_unary_msg(srv, "/etcdserverpb.Cluster/MemberList",
                                        &etcdserverpb__member_list_request__descriptor,
                                        handle_member_list, a);
    rc |= rpc_server_register_unary(srv, "/etcdserverpb.Cluster/MemberAdd", handle_add, a);
    rc |= rpc_server_register_unary(srv, "/etcdserverpb.Cluster/MemberRemove", handle_remove, a);
    rc |= rpc_server_register_unary(srv, "/etcdserverpb.Cluster/MemberUpdate", handle_update, a);
    rc |= rpc_server_register_unary(srv, "/etcdserverpb.Cluster/MemberPromote", handle_promote,
                                    a);
    rc |= rpc_server_register_unary(srv, "/etcdserverpb.Maintenance/MoveLeader",
                                    handle_move_leader, a);
    return rc ? -1 : 0;
}

int cluster_api_register_peer(struct cluster_api *a, struct rpc_server *srv)
{
    return rpc_server_register_unary_msg(srv, MEMBER_METHOD, &craft__raft__member_request__descriptor,
                                         handle_peer_member, a) != 0
               ? -1
               : 0;
}

void cluster_api_stop(struct cluster_api *a)
{
    if (!a)
        return;
    pthread_mutex_lock(&a->mu);
    a->stopping = true;
    struct op *list = a->head;
    a->head = a->tail = NULL;
    a->queued = 0;
    pthread_cond_broadcast(&a->cv);
    pthread_mutex_unlock(&a->mu);
    while (list) {
        struct op *o = list;
        list = o->next;
        deliver(o, GRPC_STATUS_UNAVAILABLE, ERR_STOPPED, NULL);
        free(o);
    }
}

void cluster_api_destroy(struct cluster_api *a)
{
    if (!a)
        return;
    cluster_api_stop(a);
    if (a->worker_started)
        pthread_join(a->worker, NULL);
    pthread_mutex_destroy(&a->mu);
    pthread_cond_destroy(&a->cv);
    free(a->token);
    free(a->client_urls);
    free(a);
}
