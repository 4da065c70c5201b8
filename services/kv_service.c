/* kv_service.c: etcd v3 KV/Maintenance/Cluster over a craft node (see kv_service.h). */
#include "services/kv_service.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "services/cluster_api.h"
#include "services/forward.h"
#include "services/kv_req.h"
#include "services/auth_token.h"
#include "services/kvstore/kv_auth.h"
#include "services/kvstore/kv_cmd.h"
#include "services/maint_snapshot.h"
#include "services/node_gate.h"

/* etcd's client-facing errors (etcd 3.4 api/v3rpc/rpctypes/error.go). */
#define ERR_NO_LEADER "etcdserver: no leader"
#define ERR_TIMEOUT "etcdserver: request timed out"
#define ERR_TOO_LARGE "etcdserver: request is too large"
#define ERR_TOO_MANY "etcdserver: too many requests"
#define ERR_LEADER_CHANGED "etcdserver: leader changed"
#define ERR_STOPPED "etcdserver: server stopped"

struct kv_service {
    struct kv_service_config cfg;
    uint64_t cluster_id;        /* fixed at creation: membership changes keep it */
    pthread_rwlock_t cluster_mu;
    struct cluster cluster;     /* the member table in force (kv_service_set_cluster) */
    struct node_gate gate;      /* node uses from threads that outlive the client server */
    struct fwd *fwd;            /* Peer.Forwards, both sides */
    struct cluster_api *api;    /* Cluster service, MoveLeader, Peer.Member */
    struct maint_snapshot snap; /* Maintenance.Snapshot */
    atomic_bool learner;        /* kv_service_set_learner */
    /* Compact with physical=true: one thread each waits for the removal (bounded number) */
    pthread_mutex_t phys_mu;
    pthread_cond_t phys_cv;
    unsigned phys_waiting;      /* phys_mu */
    bool phys_stop;             /* phys_mu */
};

/* Compact calls with physical=true waiting at once; more are refused "too many requests". */
#define PHYS_MAX_WAITING 16

/* etcd's rule for learners (v3.4 isRPCSupportedForLearner): refused here, true if so. */
static bool refuse_learner(struct kv_service *s, struct rpc_call *call)
{
    if (!atomic_load_explicit(&s->learner, memory_order_relaxed))
        return false;
    rpc_call_fail(call, GRPC_STATUS_UNAVAILABLE, KV_ERR_LEARNER);
    return true;
}

/* The kinds of kv_req.h, whose functions the handlers call. */
enum op_kind {
    OP_PUT = KV_REQ_PUT,
    OP_DELETE = KV_REQ_DELETE,
    OP_TXN = KV_REQ_TXN,
    OP_COMPACT = KV_REQ_COMPACT,
    OP_RANGE = KV_REQ_RANGE,
    OP_LEASE_GRANT = KV_REQ_LEASE_GRANT,
    OP_LEASE_REVOKE = KV_REQ_LEASE_REVOKE,
    OP_AUTH, /* an auth management command: answered with an empty response of auth_resp */
};

/* One client call waiting for the log or for a read index. */
struct op {
    struct kv_service *s;
    struct rpc_call *call;
    enum op_kind kind;
    uint8_t *cmd; /* writes: the log command (forwarding needs it after propose fails) */
    size_t cmd_len;
    ProtobufCMessage *req; /* reads: the decoded request, freed with the op */
    int64_t physical_rev;  /* Compact with physical=true: its revision (else 0) */
    const ProtobufCMessageDescriptor *auth_resp; /* OP_AUTH: the response's type */
};

static void op_free(struct op *o)
{
    free(o->cmd);
    if (o->req)
        protobuf_c_message_free_unpacked(o->req, NULL);
    free(o);
}

static void fail(struct rpc_call *call, int code, const char *msg)
{
    rpc_call_fail(call, (grpc_status_code)code, msg);
}

/* A node error as etcd would say it: the gRPC code and message for the client. */
static void node_error(int err, int *code, const char **msg)
{
    *code = GRPC_STATUS_UNAVAILABLE;
    switch (err) {
    case RAFT_NODE_ENOTLEADER:
        *msg = ERR_NO_LEADER;
        break;
    case RAFT_NODE_EBUSY:
        *code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        *msg = ERR_TOO_MANY;
        break;
    case RAFT_NODE_ETIMEDOUT:
        *msg = ERR_TIMEOUT;
        break;
    case RAFT_NODE_ELOST:
        *msg = ERR_LEADER_CHANGED;
        break;
    case RAFT_NODE_ETOOBIG:
        *code = GRPC_STATUS_INVALID_ARGUMENT;
        *msg = ERR_TOO_LARGE;
        break;
    case RAFT_NODE_ESHUTDOWN:
        *msg = ERR_STOPPED;
        break;
    default:
        *msg = raft_node_strerror(err);
    }
}

static void fail_node(struct rpc_call *call, int err)
{
    int code;
    const char *msg;
    node_error(err, &code, &msg);
    fail(call, code, msg);
}

static void fill_header(struct kv_service *s, Etcdserverpb__ResponseHeader *h)
{
    h->cluster_id = s->cluster_id;
    h->member_id = s->cfg.self_id;
    h->raft_term = raft_node_term(s->cfg.node); /* every reply: no node lock (node.h) */
}

/* ---- auth (docs/auth.md) ---------------------------------------------------------------- */

/* cluster_api's and maint_snapshot's admin check: the root role (etcd's IsAdminPermitted). */
static int auth_admin(void *arg, struct rpc_call *call, struct rpc_stream *st, char *msg,
                      size_t msglen)
{
    struct kv_service *s = arg;
    struct kv_auth *a = kv_store_auth_get(s->cfg.store);
    struct kv_err err;
    char buf[RPC_PEER_NAME_MAX];
    const char *user;
    int rc = auth_caller(s->cfg.tokens, a, call, st, buf, sizeof buf, &user, &err);
    if (rc == 0)
        rc = kv_auth_check_admin(a, user, &err);
    kv_auth_unref(a);
    if (rc == 0)
        return 0;
    snprintf(msg, msglen, "%s", err.msg);
    return err.code;
}

int kv_service_caller(struct kv_service *s, const struct kv_auth *a, struct rpc_call *call,
                      char *buf, size_t buflen, const char **user)
{
    struct kv_err err;
    if (auth_caller(s->cfg.tokens, a, call, NULL, buf, buflen, user, &err) == 0)
        return 0;
    fail(call, err.code, err.msg);
    return -1;
}

/* A read's check, on this member's auth state after its read index (or at once when
 * serializable): true when refused (the call answered). */
static bool refuse_read(struct op *o)
{
    if (!kv_store_auth_enabled(o->s->cfg.store)) /* auth off: no lock, no reference */
        return false;
    struct kv_auth *a = kv_store_auth_get(o->s->cfg.store);
    int rc = 0;
    struct kv_err err;
    char buf[RPC_PEER_NAME_MAX];
    const char *user;
    if (kv_auth_enabled(a) &&
        (rc = auth_caller(o->s->cfg.tokens, a, o->call, NULL, buf, sizeof buf, &user, &err)) == 0) {
        rc = o->kind == OP_RANGE
                 ? kv_auth_check_range_req(a, user, (const Etcdserverpb__RangeRequest *)o->req,
                                           &err)
                 : kv_auth_check_txn(a, user, (const Etcdserverpb__TxnRequest *)o->req, &err);
    }
    kv_auth_unref(a);
    if (rc)
        fail(o->call, err.code, err.msg);
    return rc != 0;
}

/* ---- writes --------------------------------------------------------------------------- */

static void reply_result(struct op *o, const uint8_t *data, size_t len);

/* ---- Compact with physical=true ---- */

struct phys_wait {
    struct kv_service *s;
    struct rpc_call *call;
    int64_t rev;
    uint8_t *data;
    size_t len;
};

/* etcd: "the RPC will wait until the compaction is physically applied to the local database".
 * Here: until this member's store has removed the history below rev and synced that (it may
 * not even have applied the compaction yet when a follower relays the leader's answer). The
 * wait is sliced so that a stopping service ends it; it gives up after ten proposal timeouts. */
static void *phys_main(void *arg)
{
    struct phys_wait *w = arg;
    struct kv_service *s = w->s;
    int rc = -ETIMEDOUT;
    bool stop = false;
    for (unsigned waited = 0; rc == -ETIMEDOUT && waited < 10 * s->cfg.timeout_ms; waited += 100) {
        pthread_mutex_lock(&s->phys_mu);
        stop = s->phys_stop;
        pthread_mutex_unlock(&s->phys_mu);
        if (stop)
            break;
        rc = kv_store_compact_wait(s->cfg.store, w->rev, 100);
    }
    if (rc == 0) {
        struct op o = {.s = s, .call = w->call, .kind = OP_COMPACT};
        reply_result(&o, w->data, w->len);
    } else {
        fail(w->call, GRPC_STATUS_UNAVAILABLE,
             rc == -ETIMEDOUT ? (stop ? ERR_STOPPED : ERR_TIMEOUT)
                              : "craft: removing compacted history failed");
    }
    free(w->data);
    free(w);
    pthread_mutex_lock(&s->phys_mu);
    s->phys_waiting--;
    pthread_cond_broadcast(&s->phys_cv);
    pthread_mutex_unlock(&s->phys_mu);
    return NULL;
}

/* A physical Compact's successful result: answered once the removal is done. true when a
 * waiter took the call (or it was answered here), false to answer at once. */
static bool reply_physical(struct op *o, const uint8_t *data, size_t len)
{
    struct kv_service *s = o->s;
    struct phys_wait *w = calloc(1, sizeof *w);
    if (w && len && !(w->data = malloc(len))) {
        free(w);
        w = NULL;
    }
    pthread_mutex_lock(&s->phys_mu);
    bool room = w && !s->phys_stop && s->phys_waiting < PHYS_MAX_WAITING;
    if (room)
        s->phys_waiting++;
    pthread_mutex_unlock(&s->phys_mu);
    if (!room) {
        if (w)
            free(w->data);
        free(w);
        fail(o->call, GRPC_STATUS_RESOURCE_EXHAUSTED, ERR_TOO_MANY);
        return true;
    }
    *w = (struct phys_wait){s, o->call, o->physical_rev, w->data, len};
    if (len)
        memcpy(w->data, data, len);
    pthread_t t;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&t, &at, phys_main, w);
    pthread_attr_destroy(&at);
    if (rc == 0)
        return true;
    free(w->data);
    free(w);
    pthread_mutex_lock(&s->phys_mu);
    s->phys_waiting--;
    pthread_mutex_unlock(&s->phys_mu);
    fail(o->call, GRPC_STATUS_RESOURCE_EXHAUSTED, ERR_TOO_MANY);
    return true;
}

/* Answers the client from an applied entry's result (a packed craft.kv.Result). */
/* An auth command's result: etcd's error, or the empty response of its type with a header. */
static void reply_auth(struct op *o, const uint8_t *data, size_t len)
{
    Craft__Kv__Result *r = kv_result_decode(data, len);
    if (!r || r->code) {
        fail(o->call, r ? (int)r->code : GRPC_STATUS_INTERNAL,
             r ? r->message : "craft: undecodable result");
        if (r)
            craft__kv__result__free_unpacked(r, NULL);
        return;
    }
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    h.revision = r->revision;
    fill_header(o->s, &h);
    craft__kv__result__free_unpacked(r, NULL);
    /* Every Auth write response is {ResponseHeader header = 1;}: set it by its descriptor. */
    uint64_t buf[64];
    ProtobufCMessage *m = (ProtobufCMessage *)buf;
    if (o->auth_resp->sizeof_message > sizeof buf) {
        fail(o->call, GRPC_STATUS_INTERNAL, "craft: response too large");
        return;
    }
    protobuf_c_message_init(o->auth_resp, m);
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(o->auth_resp, "header");
    if (f)
        *(Etcdserverpb__ResponseHeader **)((char *)m + f->offset) = &h;
    rpc_call_reply_msg(o->call, m);
}

static void reply_result(struct op *o, const uint8_t *data, size_t len)
{
    if (o->kind == OP_AUTH) {
        reply_auth(o, data, len);
        return;
    }
    Craft__Kv__Result *r;
    ProtobufCMessage *resp;
    Etcdserverpb__ResponseHeader **hp;
    int code;
    const char *msg;
    if (kv_req_result((enum kv_req_kind)o->kind, data, len, &r, &resp, &hp, &code, &msg)) {
        fail(o->call, code, msg);
        if (r)
            craft__kv__result__free_unpacked(r, NULL);
        return;
    }
    if (o->kind == OP_COMPACT && o->physical_rev && reply_physical(o, data, len)) {
        craft__kv__result__free_unpacked(r, NULL);
        return;
    }
    if (!resp) {
        fail(o->call, code, msg);
        craft__kv__result__free_unpacked(r, NULL);
        return;
    }
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    Etcdserverpb__ResponseHeader *orig = *hp;
    h.revision = orig ? orig->revision : r->revision;
    fill_header(o->s, &h);
    *hp = &h;
    rpc_call_reply_msg(o->call, resp);
    *hp = orig; /* the unpacked message frees its own header */
    craft__kv__result__free_unpacked(r, NULL);
}

static void on_applied(void *arg, int err, uint64_t index, uint64_t leader,
                       struct raft_fsm_result *res)
{
    (void)index, (void)leader;
    struct op *o = arg;
    if (err)
        fail_node(o->call, err);
    else
        reply_result(o, res->data, res->len);
    op_free(o);
}

static void on_forwarded(void *arg, int err, const struct fwd_answer *a)
{
    struct op *o = arg;
    if (err == FWD_OK && a->code)
        fail(o->call, (int)a->code, a->message);
    else if (err == FWD_OK)
        reply_result(o, a->result, a->len);
    else /* the leader could not be reached or did not answer in time: the client may retry */
        fail(o->call, GRPC_STATUS_UNAVAILABLE,
             err == FWD_ETIMEDOUT ? ERR_TIMEOUT : err == FWD_ESHUTDOWN ? ERR_STOPPED : ERR_NO_LEADER);
    op_free(o);
}

static void forward(struct op *o, uint64_t leader)
{
    /* The leader's own timeout answers first; the extra second covers the hop. */
    int rc = fwd_submit(o->s->fwd, leader, o->cmd, o->cmd_len, (int)o->s->cfg.timeout_ms + 1000,
                        on_forwarded, o);
    if (rc == FWD_EBUSY)
        fail(o->call, GRPC_STATUS_RESOURCE_EXHAUSTED, ERR_TOO_MANY);
    else if (rc != FWD_OK)
        fail(o->call, GRPC_STATUS_UNAVAILABLE, ERR_NO_LEADER);
    if (rc != FWD_OK)
        op_free(o);
}

/* etcd's quota check: a write that could grow the store refuses to enter the log once the
 * data in use plus this request's cost would pass --quota-backend-bytes, so every member's apply
 * stays within its map (members applying a full store in different batch shapes could
 * otherwise disagree). Deletes and compaction stay allowed, to make room. */
static bool over_quota(struct kv_service *s, enum op_kind kind, size_t len)
{
    if ((kind != OP_PUT && kind != OP_TXN && kind != OP_LEASE_GRANT) || !s->cfg.quota_bytes)
        return false;
    /* O(1): as of the last applied batch, like etcd's check against concurrent applies. */
    int64_t in_use = kv_store_size_in_use(s->cfg.store);
    /* LMDB pages, copy-on-write and the key index cost more than the raw bytes: 2x. */
    return (uint64_t)in_use + 2 * (uint64_t)len > s->cfg.quota_bytes;
}

/* Takes ownership of cmd. */
static void write_start(struct kv_service *s, struct rpc_call *call, enum op_kind kind,
                        uint8_t *cmd, size_t len, int64_t physical_rev,
                        const ProtobufCMessageDescriptor *auth_resp)
{
    if (len > s->cfg.max_request_bytes) {
        free(cmd);
        fail(call, GRPC_STATUS_INVALID_ARGUMENT, ERR_TOO_LARGE);
        return;
    }
    if (over_quota(s, kind, len)) {
        free(cmd);
        fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, KV_ERR_NO_SPACE);
        return;
    }
    /* Who asked goes into the command: apply checks it against the auth state at its place in
     * the log, on every member alike, and forwarding carries it to the leader unchanged. */
    char buf[RPC_PEER_NAME_MAX];
    const char *user;
    struct kv_auth *a = kv_store_auth_get(s->cfg.store);
    int who = kv_service_caller(s, a, call, buf, sizeof buf, &user);
    kv_auth_unref(a);
    if (who) {
        free(cmd);
        return;
    }
    struct op *o = calloc(1, sizeof *o);
    if (!o || kv_cmd_set_user(&cmd, &len, user)) {
        free(o);
        free(cmd);
        fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    *o = (struct op){s, call, kind, cmd, len, NULL, physical_rev, auth_resp};
    uint64_t leader = 0;
    int rc = raft_node_propose(s->cfg.node, cmd, len, (int)s->cfg.timeout_ms, on_applied, o,
                               &leader);
    if (rc == RAFT_NODE_ENOTLEADER && leader && leader != s->cfg.self_id) {
        forward(o, leader);
        return;
    }
    if (rc != 0) {
        fail_node(call, rc);
        op_free(o);
    }
}

/* Validates, encodes and proposes one decoded write request (Put, DeleteRange, Compact). */
static void write_request(struct kv_service *s, struct rpc_call *call, enum op_kind kind,
                          const ProtobufCMessage *m)
{
    struct kv_err err;
    uint8_t *cmd;
    size_t len;
    int64_t physical_rev;
    if (refuse_learner(s, call))
        return;
    if (kv_req_write((enum kv_req_kind)kind, m, &cmd, &len, &physical_rev, &err)) {
        fail(call, err.code, err.msg);
        return;
    }
    write_start(s, call, kind, cmd, len, physical_rev, NULL);
}

static void handle_put(struct rpc_call *call, const ProtobufCMessage *m, void *ctx)
{
    write_request(ctx, call, OP_PUT, m);
}

static void handle_delete_range(struct rpc_call *call, const ProtobufCMessage *m, void *ctx)
{
    write_request(ctx, call, OP_DELETE, m);
}

static void handle_compact(struct rpc_call *call, const ProtobufCMessage *m, void *ctx)
{
    write_request(ctx, call, OP_COMPACT, m);
}

void kv_service_lease_write(struct kv_service *s, struct rpc_call *call, bool revoke,
                           uint8_t *cmd, size_t len)
{
    if (refuse_learner(s, call)) {
        free(cmd);
        return;
    }
    write_start(s, call, revoke ? OP_LEASE_REVOKE : OP_LEASE_GRANT, cmd, len, 0, NULL);
}

void kv_service_auth_write(struct kv_service *s, struct rpc_call *call,
                           const ProtobufCMessageDescriptor *resp, uint8_t *cmd, size_t len)
{
    if (refuse_learner(s, call)) {
        free(cmd);
        return;
    }
    write_start(s, call, OP_AUTH, cmd, len, 0, resp);
}

void kv_service_fill_header(struct kv_service *s, Etcdserverpb__ResponseHeader *h)
{
    fill_header(s, h);
}

struct barrier {
    void (*fn)(void *arg, bool ok);
    void *arg;
    struct rpc_call *call;
};

static void on_barrier(void *arg, int err, uint64_t index)
{
    (void)index;
    struct barrier *b = arg;
    if (err)
        fail_node(b->call, err);
    b->fn(b->arg, err == 0);
    free(b);
}

void kv_service_read_barrier(struct kv_service *s, struct rpc_call *call,
                             void (*fn)(void *arg, bool ok), void *arg)
{
    if (refuse_learner(s, call)) {
        fn(arg, false);
        return;
    }
    struct barrier *b = malloc(sizeof *b);
    if (!b) {
        fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        fn(arg, false);
        return;
    }
    *b = (struct barrier){fn, arg, call};
    int rc = raft_node_read_index(s->cfg.node, (int)s->cfg.timeout_ms, on_barrier, b);
    if (rc != 0) {
        fail_node(call, rc);
        fn(arg, false);
        free(b);
    }
}

struct kv_store *kv_service_store(struct kv_service *s) { return s->cfg.store; }

struct auth_tokens *kv_service_tokens(struct kv_service *s) { return s->cfg.tokens; }

bool kv_service_is_learner(struct kv_service *s)
{
    return atomic_load_explicit(&s->learner, memory_order_relaxed);
}

/* ---- reads ----------------------------------------------------------------------------- */

static void serve_read(struct op *o)
{
    struct kv_service *s = o->s;
    if (refuse_read(o))
        return;
    struct kv_err err;
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT, *orig;
    if (o->kind == OP_RANGE) {
        Etcdserverpb__RangeResponse *resp;
        if (kv_store_range(s->cfg.store, (const Etcdserverpb__RangeRequest *)o->req, &resp, &err)) {
            fail(o->call, err.code, err.msg);
            return;
        }
        orig = resp->header;
        h.revision = orig ? orig->revision : 0;
        fill_header(s, &h);
        resp->header = &h;
        rpc_call_reply_msg(o->call, &resp->base);
        resp->header = orig;
        etcdserverpb__range_response__free_unpacked(resp, NULL);
    } else {
        Etcdserverpb__TxnResponse *resp;
        if (kv_store_txn_read(s->cfg.store, (const Etcdserverpb__TxnRequest *)o->req, &resp,
                              &err)) {
            fail(o->call, err.code, err.msg);
            return;
        }
        orig = resp->header;
        h.revision = orig ? orig->revision : 0;
        fill_header(s, &h);
        resp->header = &h;
        rpc_call_reply_msg(o->call, &resp->base);
        resp->header = orig;
        etcdserverpb__txn_response__free_unpacked(resp, NULL);
    }
}

static void on_read_index(void *arg, int err, uint64_t index)
{
    (void)index;
    struct op *o = arg;
    if (err)
        fail_node(o->call, err);
    else
        serve_read(o);
    op_free(o);
}

/* Takes ownership of req. */
static void read_start(struct kv_service *s, struct rpc_call *call, enum op_kind kind,
                       ProtobufCMessage *req, bool serializable)
{
    struct op *o = calloc(1, sizeof *o);
    if (!o) {
        protobuf_c_message_free_unpacked(req, NULL);
        fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    *o = (struct op){s, call, kind == OP_RANGE ? OP_RANGE : OP_TXN, NULL, 0, req, 0, NULL};
    if (serializable) {
        serve_read(o);
        op_free(o);
        return;
    }
    int rc = raft_node_read_index(s->cfg.node, (int)s->cfg.timeout_ms, on_read_index, o);
    if (rc != 0) {
        fail_node(call, rc);
        op_free(o);
    }
}

/* Range and Txn keep their decoded request past the handler (a read waits for its index), so
 * they decode it themselves. */
static void handle_range(struct rpc_call *call, const uint8_t *data, size_t len, void *ctx)
{
    struct kv_err err;
    Etcdserverpb__RangeRequest *r = kv_req_range(data, len, &err);
    if (!r) {
        fail(call, err.code, err.msg);
        return;
    }
    if (!r->serializable && refuse_learner(ctx, call)) {
        protobuf_c_message_free_unpacked(&r->base, NULL);
        return;
    }
    read_start(ctx, call, OP_RANGE, &r->base, r->serializable);
}

static void handle_txn(struct rpc_call *call, const uint8_t *data, size_t len, void *ctx)
{
    struct kv_service *s = ctx;
    if (refuse_learner(s, call))
        return;
    struct kv_err err;
    Etcdserverpb__TxnRequest *r;
    uint8_t *cmd;
    size_t clen;
    if (kv_req_txn(data, len, s->cfg.max_txn_ops, &r, &cmd, &clen, &err)) {
        fail(call, err.code, err.msg);
        return;
    }
    if (r) { /* read-only */
        read_start(s, call, OP_TXN, &r->base, false);
        return;
    }
    write_start(s, call, OP_TXN, cmd, clen, 0, NULL);
}

/* ---- Maintenance.Status (Cluster and MoveLeader: cluster_api.c) ---------------------------- */

static void handle_status(struct rpc_call *call, const ProtobufCMessage *m, void *ctx)
{
    (void)m;
    struct kv_service *s = ctx;
    struct raft_node_status st;
    raft_node_status_get(s->cfg.node, &st);
    int64_t rev = 0, db = 0, in_use = 0;
    kv_store_status(s->cfg.store, &rev, NULL, &db, &in_use);
    struct raft_conf conf;
    bool committed;
    bool learner = raft_node_conf_get(s->cfg.node, &conf, NULL, NULL, &committed) == 0 &&
                   raft_conf_is_member(&conf, s->cfg.self_id) &&
                   !raft_conf_is_voter(&conf, s->cfg.self_id);
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    h.cluster_id = s->cluster_id;
    h.member_id = s->cfg.self_id;
    h.revision = rev;
    h.raft_term = st.core.term;
    Etcdserverpb__StatusResponse r = ETCDSERVERPB__STATUS_RESPONSE__INIT;
    r.header = &h;
    r.version = (char *)KV_SERVICE_VERSION;
    r.dbsize = db;
    r.dbsizeinuse = in_use;
    r.leader = st.core.leader_id;
    r.raftindex = st.core.commit_index;
    r.raftterm = st.core.term;
    r.raftappliedindex = st.applied_index;
    r.islearner = learner;
    rpc_call_reply_msg(call, &r.base);
}

/* ---- Peer.Forwards: the leader's side of a forwarded write ------------------------------- */

/* A node error in the client's terms, for the follower to relay. */
static void forward_error(int err, int *code, const char **msg)
{
    node_error(err, code, msg);
    if (err == RAFT_NODE_ENOTLEADER)
        *msg = ERR_LEADER_CHANGED; /* it was leader when the follower sent it */
}

static void answer_item(struct fwd_item *item, int code, const char *msg)
{
    fwd_reply(item, &(struct fwd_answer){(uint32_t)code, msg, NULL, 0, 0});
}

static void on_item_applied(void *arg, int err, uint64_t index, uint64_t leader,
                            struct raft_fsm_result *res)
{
    (void)leader;
    int code;
    const char *msg;
    if (err) {
        forward_error(err, &code, &msg);
        answer_item(arg, code, msg);
    } else {
        fwd_reply(arg, &(struct fwd_answer){0, NULL, res->data, res->len, index});
    }
}

/* One item of a Peer.Forwards batch (the stream is already authorized and of this cluster). */
static void propose_item(void *ctx, struct fwd_item *item, const uint8_t *cmd, size_t len)
{
    struct kv_service *s = ctx;
    if (len > s->cfg.max_request_bytes) {
        answer_item(item, GRPC_STATUS_INVALID_ARGUMENT, ERR_TOO_LARGE);
        return;
    }
    /* The peer server outlives the node (server.c): after kv_service_stop_forwarding a batch
     * must not reach it. */
    if (!node_gate_enter(&s->gate)) {
        answer_item(item, GRPC_STATUS_UNAVAILABLE, ERR_STOPPED);
        return;
    }
    int rc = raft_node_propose(s->cfg.node, cmd, len, (int)s->cfg.timeout_ms, on_item_applied,
                               item, NULL);
    node_gate_leave(&s->gate);
    if (rc != 0) {
        int code;
        const char *msg;
        forward_error(rc, &code, &msg);
        answer_item(item, code, msg);
    }
}

/* ---- lifecycle --------------------------------------------------------------------------- */

struct kv_service *kv_service_create(const struct kv_service_config *cfg)
{
    struct kv_service *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->cfg = *cfg;
    s->cluster = *cfg->cluster;
    s->cfg.cluster = NULL; /* the table is s->cluster, under cluster_mu */
    s->cluster_id = s->cluster.id;
    pthread_rwlock_init(&s->cluster_mu, NULL);
    pthread_mutex_init(&s->phys_mu, NULL);
    pthread_cond_init(&s->phys_cv, NULL);
    node_gate_init(&s->gate);
    struct fwd_config fc = {
        .peer = cfg->peer,
        .cluster = &s->cluster,
        .propose = propose_item,
        .propose_ctx = s,
        /* A Put's result can carry a prev_kv as large as a request. */
        .max_answer_bytes = cfg->max_request_bytes + (64u << 10),
    };
    s->fwd = fwd_create(&fc);
    struct cluster_api_config ac = {
        .admin = auth_admin,
        .admin_arg = s,
        .node = cfg->node,
        .peer = cfg->peer,
        .gate = &s->gate,
        .initial = cfg->cluster,
        .token = cfg->token,
        .self_id = cfg->self_id,
        .client_urls = cfg->client_urls,
        .timeout_ms = cfg->timeout_ms,
        .election_ms = cfg->election_ms,
        .max_learners = cfg->max_learners,
        .no_strict_check = cfg->no_strict_reconfig_check,
        .learner = &s->learner,
    };
    s->api = s->fwd ? cluster_api_create(&ac) : NULL;
    if (!s->api) {
        fwd_destroy(s->fwd);
        node_gate_destroy(&s->gate);
        pthread_rwlock_destroy(&s->cluster_mu);
        free(s);
        return NULL;
    }
    s->snap.fsm = kv_store_fsm(cfg->store);
    s->snap.cluster_id = s->cluster_id;
    s->snap.member_id = cfg->self_id;
    s->snap.learner = &s->learner;
    s->snap.admin = auth_admin;
    s->snap.admin_arg = s;
    return s;
}

int kv_service_register_client(struct kv_service *s, struct rpc_server *srv)
{
    int rc = 0;
    rc |= rpc_server_register_unary(srv, "/etcdserverpb.KV/Range", handle_range, s);
    rc |= rpc_server_register_unary_msg(srv, "/etcdserverpb.KV/Put",
                                        &etcdserverpb__put_request__descriptor, handle_put, s);
    rc |= rpc_server_register_unary_msg(srv, "/etcdserverpb.KV/DeleteRange",
                                        &etcdserverpb__delete_range_request__descriptor,
                                        handle_delete_range, s);
    rc |= rpc_server_register_unary(srv, "/etcdserverpb.KV/Txn", handle_txn, s);
    rc |= rpc_server_register_unary_msg(srv, "/etcdserverpb.KV/Compact",
                                        &etcdserverpb__compaction_request__descriptor,
                                        handle_compact, s);
    rc |= rpc_server_register_unary_msg(srv, "/etcdserverpb.Maintenance/Status",
                                        &etcdserverpb__status_request__descriptor, handle_status, s);
    rc |= cluster_api_register_client(s->api, srv);
    rc |= maint_snapshot_register(srv, &s->snap);
    return rc ? -1 : 0;
}

int kv_service_register_peer(struct kv_service *s, struct rpc_server *srv)
{
    return fwd_register(s->fwd, srv) != 0 || cluster_api_register_peer(s->api, srv) != 0 ? -1 : 0;
}

void kv_service_set_cluster(struct kv_service *s, const struct cluster *c)
{
    pthread_rwlock_wrlock(&s->cluster_mu);
    s->cluster = *c;
    pthread_rwlock_unlock(&s->cluster_mu);
    fwd_set_cluster(s->fwd, c);
}

void kv_service_set_learner(struct kv_service *s, bool learner)
{
    atomic_store(&s->learner, learner);
}

void kv_service_cluster_get(struct kv_service *s, struct cluster *out)
{
    pthread_rwlock_rdlock(&s->cluster_mu);
    *out = s->cluster;
    pthread_rwlock_unlock(&s->cluster_mu);
}

void kv_service_fwd_stats(struct kv_service *s, struct fwd_stats *out)
{
    fwd_stats_get(s->fwd, out);
}

void kv_service_stop_forwarding(struct kv_service *s)
{
    if (!s)
        return;
    fwd_stop(s->fwd);
    cluster_api_stop(s->api);
    node_gate_close(&s->gate); /* waits for a membership change's node call to return */
}

void kv_service_destroy(struct kv_service *s)
{
    if (!s)
        return;
    /* physical Compact waiters end within one 100 ms slice */
    pthread_mutex_lock(&s->phys_mu);
    s->phys_stop = true;
    while (s->phys_waiting)
        pthread_cond_wait(&s->phys_cv, &s->phys_mu);
    pthread_mutex_unlock(&s->phys_mu);
    pthread_mutex_destroy(&s->phys_mu);
    pthread_cond_destroy(&s->phys_cv);
    node_gate_close(&s->gate); /* a no-op after kv_service_stop_forwarding */
    fwd_destroy(s->fwd);
    cluster_api_destroy(s->api);
    node_gate_destroy(&s->gate);
    pthread_rwlock_destroy(&s->cluster_mu);
    free(s);
}

