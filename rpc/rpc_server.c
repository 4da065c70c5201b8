/* Server side: a fixed pool of threads, each draining its own completion queue; calls are
 * accepted through the generic (unregistered) request path and dispatched by method name.
 *
 * Life of a call object (struct rpc_call). Two owners keep it alive:
 *   grpc_holds  the gRPC call is referenced; every batch we start on it counts in `pending`;
 *               dropped (and grpc_call_unref'd) once RECV_CLOSE_ON_SERVER has completed and no
 *               batch is outstanding;
 *   user_holds  a handler has it and has not completed it yet.
 * The object is freed when both are gone. Everything about a call's gRPC side happens under
 * its mutex; the server is touched only while grpc_holds, which shutdown waits out. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <grpc/support/time.h>

#include "log/log.h"
#include "rpc/rpc_internal.h"

/* Outstanding accepts per queue, for each registered unary method and for everything else:
 * absorbs bursts. */
#define ACCEPTS_PER_THREAD 32

enum reg_kind { REG_UNARY, REG_UNARY_MSG, REG_STREAM };

struct method_reg {
    char *name;
    size_t nlen;
    enum reg_kind kind;
    rpc_unary_fn unary;
    rpc_unary_msg_fn unary_msg;
    const ProtobufCMessageDescriptor *desc;
    struct rpc_stream_handler sh;
    void *ctx;
    void *grpc_method; /* unary: gRPC's handle from grpc_server_register_method */
    struct method_counters *mc; /* its own allocation: regs moves while methods register */
};

/* Calls of one method, counted lock-free (rpc_server_method_stats). */
struct method_counters {
    _Atomic uint64_t started;
    _Atomic uint64_t handled[RPC_STATUS_CODES];
};

struct worker {
    struct rpc_server *srv;
    grpc_completion_queue *cq;
    pthread_t th;
};

struct rpc_server {
    grpc_server *gs;
    int port;
    int nthreads;
    int nstarted; /* threads running (the first nstarted workers) */
    struct worker *w;
    struct method_reg *regs;
    int nregs;
    int stream_queue;
    bool started;

    pthread_mutex_t mu;
    pthread_cond_t cv; /* CLOCK_MONOTONIC */
    bool shutting_down;
    bool shutdown_done;
    int active; /* call objects with grpc_holds (accepting or live) */
    struct rpc_tag t_shutdown;
    struct rpc_tls_src *tls_src; /* reloadable TLS (tls->reload_sec > 0), else NULL */
};

struct rpc_call {
    pthread_mutex_t mu;
    struct rpc_server *srv; /* valid while grpc_holds */
    struct worker *w;
    const struct method_reg *reg; /* valid while grpc_holds */
    const struct method_reg *accept_reg; /* the registered method this accept waits for, or NULL */
    grpc_call *gc;
    grpc_call_details details;
    gpr_timespec deadline; /* registered accepts only */
    grpc_metadata_array md;
    grpc_byte_buffer *recv_bb;
    grpc_byte_buffer *send_bb;
    grpc_slice status_slice;
    bool has_status_slice;
    int close_cancelled;
    struct rpc_tag t_accept, t_recv, t_close, t_send, t_status;
    int pending;
    bool grpc_holds, user_holds, closed;
    bool is_stream;

    /* streams only */
    void *user;
    grpc_byte_buffer **q;
    int qcap, qhead, qlen;
    bool writing, reading, read_paused, close_delivered, finish_requested, status_sent, dead;
    bool hold_reads; /* rpc_stream_hold_reads */
    grpc_status_code finish_code;
    char *finish_msg;

    bool code_sent;             /* a status went out (c->mu): sent_code is what it said */
    grpc_status_code sent_code;
};

/* A server stream is a call; the distinct type keeps the two APIs apart at compile time. */
struct rpc_stream {
    struct rpc_call c;
};

static struct rpc_call *S2C(struct rpc_stream *s) { return &s->c; }
static struct rpc_stream *C2S(struct rpc_call *c) { return RPC_CONTAINER_OF(c, struct rpc_stream, c); }

/* ---- helpers ------------------------------------------------------------------------ */

static void server_active_dec(struct rpc_server *srv)
{
    pthread_mutex_lock(&srv->mu);
    if (--srv->active == 0)
        pthread_cond_broadcast(&srv->cv);
    pthread_mutex_unlock(&srv->mu);
}

static void call_free(struct rpc_call *c)
{
    for (int i = 0; i < c->qlen; i++)
        grpc_byte_buffer_destroy(c->q[(c->qhead + i) % c->qcap]);
    free(c->q);
    free(c->finish_msg);
    pthread_mutex_destroy(&c->mu);
    free(C2S(c));
}

/* A batch finished (or the event that stood for one was handled): drop it from pending and
 * release the gRPC side / free the object when nothing holds it any more. */
static void call_done_pending(struct rpc_call *c)
{
    grpc_call *gc = NULL;
    grpc_call_details d;
    grpc_metadata_array md;
    struct rpc_server *srv = c->srv;
    pthread_mutex_lock(&c->mu);
    c->pending--;
    bool release = c->grpc_holds && c->closed && c->pending == 0;
    if (release) {
        gc = c->gc;
        c->gc = NULL;
        d = c->details;
        md = c->md;
        c->grpc_holds = false;
        for (int i = 0; i < c->qlen; i++)
            grpc_byte_buffer_destroy(c->q[(c->qhead + i) % c->qcap]);
        c->qlen = 0;
    }
    bool free_now = !c->grpc_holds && !c->user_holds;
    pthread_mutex_unlock(&c->mu);
    if (release) {
        grpc_call_unref(gc);
        grpc_call_details_destroy(&d);
        grpc_metadata_array_destroy(&md);
        server_active_dec(srv);
    }
    if (free_now)
        call_free(c);
}

/* Caller holds c->mu and has checked the call is alive. */
static int call_batch(struct rpc_call *c, const grpc_op *ops, size_t n, struct rpc_tag *t)
{
    grpc_call_error e = grpc_call_start_batch(c->gc, ops, n, t, NULL);
    if (e != GRPC_CALL_OK) {
        log_error(NULL, "rpc: grpc_call_start_batch failed (%d)", (int)e);
        return RPC_ESTATE;
    }
    c->pending++;
    return 0;
}

/* Initial metadata, optional message and status in one batch (unary replies, failures,
 * UNIMPLEMENTED). Caller holds c->mu; bb becomes the call's. */
static void unary_send_final(struct rpc_call *c, grpc_byte_buffer *bb, grpc_status_code code,
                             const char *msg)
{
    grpc_op ops[3];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
    if (bb) {
        c->send_bb = bb;
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = bb;
    }
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = code;
    c->code_sent = true;
    c->sent_code = code;
    if (msg && *msg) {
        c->status_slice = grpc_slice_from_copied_string(msg);
        c->has_status_slice = true;
        ops[n].data.send_status_from_server.status_details = &c->status_slice;
    }
    n++;
    if (call_batch(c, ops, n, &c->t_send) != 0) {
        if (c->send_bb)
            grpc_byte_buffer_destroy(c->send_bb);
        c->send_bb = NULL;
        if (c->has_status_slice)
            grpc_slice_unref(c->status_slice);
        c->has_status_slice = false;
    }
}

static void on_unary_sent(struct rpc_tag *t, bool ok)
{
    (void)ok; /* failure means the call died; RECV_CLOSE tells the rest */
    struct rpc_call *c = RPC_CONTAINER_OF(t, struct rpc_call, t_send);
    pthread_mutex_lock(&c->mu);
    if (c->send_bb)
        grpc_byte_buffer_destroy(c->send_bb);
    c->send_bb = NULL;
    if (c->has_status_slice)
        grpc_slice_unref(c->status_slice);
    c->has_status_slice = false;
    pthread_mutex_unlock(&c->mu);
    call_done_pending(c);
}

/* Server-side failure before any handler owns the call. */
static void unary_fail_internal(struct rpc_call *c, grpc_status_code code, const char *msg)
{
    pthread_mutex_lock(&c->mu);
    if (c->grpc_holds && !c->closed)
        unary_send_final(c, NULL, code, msg);
    pthread_mutex_unlock(&c->mu);
}

static int unary_complete(struct rpc_call *c, grpc_byte_buffer *bb, grpc_status_code code,
                          const char *msg)
{
    if (!c) {
        if (bb)
            grpc_byte_buffer_destroy(bb);
        return RPC_EINVAL;
    }
    pthread_mutex_lock(&c->mu);
    if (!c->user_holds || c->is_stream) {
        pthread_mutex_unlock(&c->mu);
        if (bb)
            grpc_byte_buffer_destroy(bb);
        return RPC_ESTATE;
    }
    c->user_holds = false;
    int rc = RPC_ECLOSED;
    if (c->grpc_holds && !c->closed) {
        unary_send_final(c, bb, code, msg);
        bb = NULL;
        rc = 0;
    }
    bool free_now = !c->grpc_holds;
    pthread_mutex_unlock(&c->mu);
    if (bb)
        grpc_byte_buffer_destroy(bb);
    if (free_now)
        call_free(c);
    return rc;
}

int rpc_call_reply(struct rpc_call *call, const void *data, size_t len)
{
    if (len && !data)
        return RPC_EINVAL;
    grpc_byte_buffer *bb = rpc_bb_from_bytes(data, len);
    if (!bb)
        return RPC_ENOMEM;
    return unary_complete(call, bb, GRPC_STATUS_OK, NULL);
}

int rpc_call_reply_msg(struct rpc_call *call, const ProtobufCMessage *msg)
{
    if (!msg)
        return RPC_EINVAL;
    grpc_byte_buffer *bb = rpc_bb_from_msg(msg);
    if (!bb)
        return RPC_ENOMEM;
    return unary_complete(call, bb, GRPC_STATUS_OK, NULL);
}

int rpc_call_fail(struct rpc_call *call, grpc_status_code code, const char *msg)
{
    if (code == GRPC_STATUS_OK)
        return RPC_EINVAL; /* an OK unary call needs a reply message */
    return unary_complete(call, NULL, code, msg);
}

bool rpc_call_is_cancelled(struct rpc_call *call)
{
    pthread_mutex_lock(&call->mu);
    bool r = !call->grpc_holds || (call->closed && call->close_cancelled);
    pthread_mutex_unlock(&call->mu);
    return r;
}

static int peer_identity(struct rpc_call *c, struct rpc_peer *out)
{
    pthread_mutex_lock(&c->mu);
    int rc = RPC_ECLOSED;
    if (c->grpc_holds)
        rc = rpc_peer_from_call(c->gc, out);
    pthread_mutex_unlock(&c->mu);
    return rc;
}

int rpc_call_peer_identity(struct rpc_call *call, struct rpc_peer *out)
{
    return peer_identity(call, out);
}

int rpc_stream_peer_identity(struct rpc_stream *s, struct rpc_peer *out)
{
    return peer_identity(S2C(s), out);
}

static int call_metadata(struct rpc_call *c, const char *key, char *out, size_t outlen)
{
    pthread_mutex_lock(&c->mu);
    int rc = RPC_ECLOSED;
    if (c->grpc_holds) {
        rc = 0;
        size_t klen = strlen(key);
        for (size_t i = 0; i < c->md.count && rc == 0; i++) {
            grpc_slice k = c->md.metadata[i].key, v = c->md.metadata[i].value;
            if (GRPC_SLICE_LENGTH(k) != klen || memcmp(GRPC_SLICE_START_PTR(k), key, klen) != 0)
                continue;
            size_t n = GRPC_SLICE_LENGTH(v);
            if (n >= outlen) {
                rc = RPC_EINVAL;
                break;
            }
            memcpy(out, GRPC_SLICE_START_PTR(v), n);
            out[n] = 0;
            rc = 1;
        }
    }
    pthread_mutex_unlock(&c->mu);
    return rc;
}

int rpc_call_metadata(struct rpc_call *call, const char *key, char *out, size_t outlen)
{
    return call_metadata(call, key, out, outlen);
}

int rpc_stream_metadata(struct rpc_stream *s, const char *key, char *out, size_t outlen)
{
    return call_metadata(S2C(s), key, out, outlen);
}

/* ---- unary receive ------------------------------------------------------------------ */

static void on_unary_recv(struct rpc_tag *t, bool ok)
{
    struct rpc_call *c = RPC_CONTAINER_OF(t, struct rpc_call, t_recv);
    grpc_byte_buffer *bb = c->recv_bb; /* only this thread touches recv_bb */
    c->recv_bb = NULL;
    const struct method_reg *reg = c->reg;
    if (ok && bb) {
        uint8_t *data;
        size_t len;
        int rc = rpc_bb_to_bytes(bb, &data, &len);
        grpc_byte_buffer_destroy(bb);
        if (rc != 0) {
            unary_fail_internal(c, GRPC_STATUS_INTERNAL, "cannot read the request message");
        } else if (reg->kind == REG_UNARY) {
            pthread_mutex_lock(&c->mu);
            c->user_holds = true;
            pthread_mutex_unlock(&c->mu);
            reg->unary(c, data, len, reg->ctx);
        } else {
            ProtobufCMessage *m = protobuf_c_message_unpack(reg->desc, NULL, len, data);
            if (!m) {
                char msg[200];
                snprintf(msg, sizeof msg, "request is not a valid %s", reg->desc->name);
                unary_fail_internal(c, GRPC_STATUS_INVALID_ARGUMENT, msg);
            } else {
                pthread_mutex_lock(&c->mu);
                c->user_holds = true;
                pthread_mutex_unlock(&c->mu);
                reg->unary_msg(c, m, reg->ctx);
                protobuf_c_message_free_unpacked(m, NULL);
            }
        }
        free(data);
    } else {
        if (bb)
            grpc_byte_buffer_destroy(bb);
        if (ok) /* the client half-closed without sending a request */
            unary_fail_internal(c, GRPC_STATUS_INVALID_ARGUMENT, "no request message");
    }
    call_done_pending(c); /* the recv batch stayed pending while the handler ran */
}

/* ---- streams ------------------------------------------------------------------------ */

/* Caller holds c->mu. */
static void stream_start_recv(struct rpc_call *c)
{
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &c->recv_bb;
    if (call_batch(c, &op, 1, &c->t_recv) == 0)
        c->reading = true;
}

static void stream_start_write(struct rpc_call *c, grpc_byte_buffer *bb)
{
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_SEND_MESSAGE;
    op.data.send_message.send_message = bb;
    c->send_bb = bb;
    if (call_batch(c, &op, 1, &c->t_send) == 0) {
        c->writing = true;
    } else {
        grpc_byte_buffer_destroy(bb);
        c->send_bb = NULL;
        c->dead = true;
    }
}

static void stream_start_status(struct rpc_call *c)
{
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    op.data.send_status_from_server.status = c->finish_code;
    c->code_sent = true;
    c->sent_code = c->finish_code;
    if (c->finish_msg && *c->finish_msg) {
        c->status_slice = grpc_slice_from_copied_string(c->finish_msg);
        c->has_status_slice = true;
        op.data.send_status_from_server.status_details = &c->status_slice;
    }
    c->status_sent = true;
    if (call_batch(c, &op, 1, &c->t_status) != 0 && c->has_status_slice) {
        grpc_slice_unref(c->status_slice);
        c->has_status_slice = false;
    }
}

static void stream_drop_queue(struct rpc_call *c)
{
    for (int i = 0; i < c->qlen; i++)
        grpc_byte_buffer_destroy(c->q[(c->qhead + i) % c->qcap]);
    c->qlen = 0;
}

/* Delivers on_close once. Called on the call's thread with c->mu not held, while an event of
 * the call is still counted in pending (so c stays alive). */
static void stream_deliver_close(struct rpc_call *c, grpc_status_code st)
{
    pthread_mutex_lock(&c->mu);
    bool deliver = !c->close_delivered;
    c->close_delivered = true;
    if (st != GRPC_STATUS_OK) { /* dead from the handler's view: sends and finish say so */
        c->dead = true;
        stream_drop_queue(c);
    }
    pthread_mutex_unlock(&c->mu);
    if (deliver && c->reg->sh.on_close)
        c->reg->sh.on_close(C2S(c), st, c->user);
}

static grpc_status_code stream_end_status(struct rpc_call *c)
{
    return (c->dead || (c->closed && c->close_cancelled)) ? GRPC_STATUS_CANCELLED
                                                          : GRPC_STATUS_OK;
}

static void on_stream_recv(struct rpc_tag *t, bool ok)
{
    struct rpc_call *c = RPC_CONTAINER_OF(t, struct rpc_call, t_recv);
    grpc_byte_buffer *bb = c->recv_bb;
    c->recv_bb = NULL;
    bool ended = true;
    grpc_status_code st = GRPC_STATUS_CANCELLED;
    if (ok && bb) {
        uint8_t *data;
        size_t len;
        int rc = rpc_bb_to_bytes(bb, &data, &len);
        grpc_byte_buffer_destroy(bb);
        if (rc == 0) {
            if (c->reg->sh.on_message)
                c->reg->sh.on_message(C2S(c), data, len, c->user);
            free(data);
        }
        pthread_mutex_lock(&c->mu);
        c->reading = false;
        if (rc != 0) {
            c->dead = true;
            stream_drop_queue(c);
            grpc_call_cancel_with_status(c->gc, GRPC_STATUS_INTERNAL,
                                         "cannot read a stream message", NULL);
        }
        if (!c->dead && !c->closed && !c->finish_requested) {
            ended = false;
            if (c->qlen < c->qcap && !c->hold_reads)
                stream_start_recv(c);
            else
                c->read_paused = true; /* resumed when a write drains the queue, or on release */
        }
        st = stream_end_status(c);
        pthread_mutex_unlock(&c->mu);
    } else {
        if (bb)
            grpc_byte_buffer_destroy(bb);
        pthread_mutex_lock(&c->mu);
        c->reading = false;
        /* The end of the reads is either the client's half-close or the call dying; the
         * close event may come later, so ask gRPC which one it was. */
        st = ok && !grpc_call_failed_before_recv_message(c->gc) ? stream_end_status(c)
                                                                : GRPC_STATUS_CANCELLED;
        pthread_mutex_unlock(&c->mu);
    }
    if (ended)
        stream_deliver_close(c, st);
    call_done_pending(c);
}

static void on_stream_write(struct rpc_tag *t, bool ok)
{
    struct rpc_call *c = RPC_CONTAINER_OF(t, struct rpc_call, t_send);
    pthread_mutex_lock(&c->mu);
    grpc_byte_buffer_destroy(c->send_bb);
    c->send_bb = NULL;
    c->writing = false;
    if (!ok) {
        c->dead = true;
        stream_drop_queue(c);
    } else if (c->qlen > 0 && !c->closed) {
        grpc_byte_buffer *bb = c->q[c->qhead];
        c->qhead = (c->qhead + 1) % c->qcap;
        c->qlen--;
        stream_start_write(c, bb);
    }
    if (!c->writing && c->finish_requested && !c->status_sent && !c->dead && !c->closed)
        stream_start_status(c);
    if (c->read_paused && c->qlen < c->qcap && !c->hold_reads && !c->dead && !c->closed &&
        !c->finish_requested) {
        c->read_paused = false;
        stream_start_recv(c);
    }
    /* The user's handle and context are alive: the handler has not finished the stream and
     * on_close (delivered on this thread) has not run. */
    bool drained = ok && !c->writing && !c->dead && !c->closed && !c->finish_requested &&
                   !c->close_delivered;
    pthread_mutex_unlock(&c->mu);
    if (drained && c->reg->sh.on_sent)
        c->reg->sh.on_sent(C2S(c), c->user);
    call_done_pending(c);
}

static void on_stream_status(struct rpc_tag *t, bool ok)
{
    (void)ok;
    struct rpc_call *c = RPC_CONTAINER_OF(t, struct rpc_call, t_status);
    pthread_mutex_lock(&c->mu);
    if (c->has_status_slice)
        grpc_slice_unref(c->status_slice);
    c->has_status_slice = false;
    pthread_mutex_unlock(&c->mu);
    call_done_pending(c);
}

static int stream_enqueue(struct rpc_call *c, grpc_byte_buffer *bb)
{
    int rc;
    pthread_mutex_lock(&c->mu);
    if (!c->is_stream) {
        rc = RPC_EINVAL;
    } else if (c->finish_requested || !c->grpc_holds || c->closed || c->dead) {
        rc = RPC_ECLOSED;
    } else if (!c->writing) {
        stream_start_write(c, bb);
        bb = NULL;
        rc = c->dead ? RPC_ECLOSED : 0;
    } else if (c->qlen >= c->qcap) {
        rc = RPC_EFULL;
    } else {
        c->q[(c->qhead + c->qlen) % c->qcap] = bb;
        c->qlen++;
        bb = NULL;
        rc = 0;
    }
    pthread_mutex_unlock(&c->mu);
    if (bb)
        grpc_byte_buffer_destroy(bb);
    return rc;
}

int rpc_stream_send(struct rpc_stream *s, const void *data, size_t len)
{
    if (!s || (len && !data))
        return RPC_EINVAL;
    grpc_byte_buffer *bb = rpc_bb_from_bytes(data, len);
    if (!bb)
        return RPC_ENOMEM;
    return stream_enqueue(S2C(s), bb);
}

int rpc_stream_send_msg(struct rpc_stream *s, const ProtobufCMessage *msg)
{
    if (!s || !msg)
        return RPC_EINVAL;
    grpc_byte_buffer *bb = rpc_bb_from_msg(msg);
    if (!bb)
        return RPC_ENOMEM;
    return stream_enqueue(S2C(s), bb);
}

int rpc_stream_hold_reads(struct rpc_stream *s, bool hold)
{
    if (!s)
        return RPC_EINVAL;
    struct rpc_call *c = S2C(s);
    pthread_mutex_lock(&c->mu);
    int rc = RPC_ECLOSED;
    if (c->user_holds) {
        rc = 0;
        c->hold_reads = hold;
        if (!hold && c->read_paused && c->qlen < c->qcap && c->grpc_holds && !c->dead &&
            !c->closed && !c->finish_requested) {
            c->read_paused = false;
            stream_start_recv(c);
        }
    }
    pthread_mutex_unlock(&c->mu);
    return rc;
}

int rpc_stream_finish(struct rpc_stream *s, grpc_status_code code, const char *msg)
{
    if (!s)
        return RPC_EINVAL;
    struct rpc_call *c = S2C(s);
    char *m = strdup(msg ? msg : "");
    if (!m)
        return RPC_ENOMEM;
    pthread_mutex_lock(&c->mu);
    if (!c->user_holds) {
        pthread_mutex_unlock(&c->mu);
        free(m);
        return RPC_ESTATE;
    }
    c->user_holds = false;
    c->finish_requested = true;
    c->finish_code = code;
    c->finish_msg = m;
    int rc = RPC_ECLOSED;
    if (c->grpc_holds && !c->closed && !c->dead) {
        rc = 0;
        if (!c->writing) /* otherwise the last write completion sends it */
            stream_start_status(c);
    }
    bool free_now = !c->grpc_holds;
    pthread_mutex_unlock(&c->mu);
    if (free_now)
        call_free(c);
    return rc;
}

/* ---- accept and close --------------------------------------------------------------- */

static void on_close(struct rpc_tag *t, bool ok)
{
    (void)ok;
    struct rpc_call *c = RPC_CONTAINER_OF(t, struct rpc_call, t_close);
    pthread_mutex_lock(&c->mu);
    c->closed = true;
    bool deliver = false;
    grpc_status_code st = c->close_cancelled ? GRPC_STATUS_CANCELLED : GRPC_STATUS_OK;
    /* The call is over: count it handled once, with the status it was answered with (a call
     * that ended without one, the client gone first, as CANCELLED). */
    if (c->reg) {
        grpc_status_code code = c->code_sent ? c->sent_code : GRPC_STATUS_CANCELLED;
        if ((unsigned)code < RPC_STATUS_CODES)
            atomic_fetch_add_explicit(&c->reg->mc->handled[code], 1, memory_order_relaxed);
    }
    if (c->is_stream) {
        if (c->close_cancelled) {
            c->dead = true;
            stream_drop_queue(c);
        }
        deliver = !c->reading && !c->close_delivered;
    }
    pthread_mutex_unlock(&c->mu);
    if (deliver)
        stream_deliver_close(c, st);
    call_done_pending(c);
}

static const struct method_reg *find_method(struct rpc_server *srv, grpc_slice m)
{
    size_t n = GRPC_SLICE_LENGTH(m);
    for (int i = 0; i < srv->nregs; i++)
        if (srv->regs[i].nlen == n && memcmp(srv->regs[i].name, GRPC_SLICE_START_PTR(m), n) == 0)
            return &srv->regs[i];
    return NULL;
}

static void request_one(struct worker *w, const struct method_reg *reg);

static void on_accept(struct rpc_tag *t, bool ok)
{
    struct rpc_call *c = RPC_CONTAINER_OF(t, struct rpc_call, t_accept);
    struct rpc_server *srv = c->srv;
    if (!ok) { /* shutting down: the request was never matched to a call */
        if (c->recv_bb)
            grpc_byte_buffer_destroy(c->recv_bb);
        c->recv_bb = NULL;
        grpc_call_details_destroy(&c->details);
        grpc_metadata_array_destroy(&c->md);
        call_free(c);
        server_active_dec(srv);
        return;
    }
    request_one(c->w, c->accept_reg); /* keep the number of outstanding accepts constant */

    const struct method_reg *reg =
        c->accept_reg ? c->accept_reg : find_method(srv, c->details.method);
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &c->close_cancelled;

    if (reg)
        atomic_fetch_add_explicit(&reg->mc->started, 1, memory_order_relaxed);
    pthread_mutex_lock(&c->mu);
    c->reg = reg;
    c->pending = 1; /* the close batch, started below */
    if (grpc_call_start_batch(c->gc, &op, 1, &c->t_close, NULL) != GRPC_CALL_OK) {
        /* Cannot happen on a fresh call; treat it as closed so the call is released. */
        c->closed = true;
        pthread_mutex_unlock(&c->mu);
        call_done_pending(c);
        return;
    }
    if (!reg) {
        char msg[300];
        snprintf(msg, sizeof msg, "unknown method %.*s", (int)GRPC_SLICE_LENGTH(c->details.method),
                 (const char *)GRPC_SLICE_START_PTR(c->details.method));
        c->t_send.fn = on_unary_sent;
        unary_send_final(c, NULL, GRPC_STATUS_UNIMPLEMENTED, msg);
        pthread_mutex_unlock(&c->mu);
        return;
    }
    if (c->accept_reg) {
        /* A registered unary method: gRPC read the request (or saw the client half-close
         * without one) before handing the call over, so no receive batch is needed. */
        c->t_recv.fn = on_unary_recv;
        c->t_send.fn = on_unary_sent;
        c->pending++; /* stands for the receive; on_unary_recv drops it */
        pthread_mutex_unlock(&c->mu);
        on_unary_recv(&c->t_recv, true);
        return;
    }
    if (reg->kind != REG_STREAM) {
        op.op = GRPC_OP_RECV_MESSAGE;
        op.data.recv_message.recv_message = &c->recv_bb;
        c->t_recv.fn = on_unary_recv;
        c->t_send.fn = on_unary_sent;
        call_batch(c, &op, 1, &c->t_recv);
        pthread_mutex_unlock(&c->mu);
        return;
    }
    /* Stream: initial metadata goes out with the first read, so sends never precede it. */
    c->is_stream = true;
    c->t_recv.fn = on_stream_recv;
    c->t_send.fn = on_stream_write;
    c->t_status.fn = on_stream_status;
    c->qcap = srv->stream_queue;
    c->q = calloc((size_t)c->qcap, sizeof *c->q);
    c->user = reg->sh.on_open ? NULL : reg->ctx;
    if (!c->q) {
        unary_send_final(c, NULL, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        pthread_mutex_unlock(&c->mu);
        return;
    }
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_RECV_MESSAGE;
    ops[1].data.recv_message.recv_message = &c->recv_bb;
    if (call_batch(c, ops, 2, &c->t_recv) == 0)
        c->reading = true;
    c->user_holds = true;
    pthread_mutex_unlock(&c->mu);
    /* The read cannot complete before on_open returns: it is delivered on this thread. */
    if (reg->sh.on_open)
        c->user = reg->sh.on_open(C2S(c), reg->ctx);
}

/* Arms one accept on w's queue: for the registered unary method reg (the request message comes
 * with the call), or for any other method when reg is NULL (streams, and names nobody
 * registered, which are answered UNIMPLEMENTED). */
static void request_one(struct worker *w, const struct method_reg *reg)
{
    struct rpc_server *srv = w->srv;
    struct rpc_stream *st = calloc(1, sizeof *st);
    if (!st) {
        log_emit_limited(LOG_LEVEL_ERROR, __FILE__, __LINE__, 0, NULL,
                         "rpc: out of memory accepting a call");
        return;
    }
    struct rpc_call *c = &st->c;
    pthread_mutex_init(&c->mu, NULL);
    c->srv = srv;
    c->w = w;
    c->t_accept.fn = on_accept;
    c->t_close.fn = on_close;
    c->accept_reg = reg;
    c->grpc_holds = true;
    grpc_call_details_init(&c->details);
    grpc_metadata_array_init(&c->md);
    pthread_mutex_lock(&srv->mu);
    if (srv->shutting_down) {
        pthread_mutex_unlock(&srv->mu);
        grpc_call_details_destroy(&c->details);
        grpc_metadata_array_destroy(&c->md);
        call_free(c);
        return;
    }
    srv->active++;
    pthread_mutex_unlock(&srv->mu);
    grpc_call_error e =
        reg ? grpc_server_request_registered_call(srv->gs, reg->grpc_method, &c->gc, &c->deadline,
                                                  &c->md, &c->recv_bb, w->cq, w->cq, &c->t_accept)
            : grpc_server_request_call(srv->gs, &c->gc, &c->details, &c->md, w->cq, w->cq,
                                       &c->t_accept);
    if (e != GRPC_CALL_OK) {
        grpc_call_details_destroy(&c->details);
        grpc_metadata_array_destroy(&c->md);
        call_free(c);
        server_active_dec(srv);
    }
}

/* ---- server lifecycle --------------------------------------------------------------- */

static void on_shutdown(struct rpc_tag *t, bool ok)
{
    (void)ok;
    struct rpc_server *srv = RPC_CONTAINER_OF(t, struct rpc_server, t_shutdown);
    pthread_mutex_lock(&srv->mu);
    srv->shutdown_done = true;
    pthread_cond_broadcast(&srv->cv);
    pthread_mutex_unlock(&srv->mu);
}

struct rpc_server *rpc_server_create(const struct rpc_server_config *cfg, char *err,
                                     size_t errlen)
{
    if (!cfg || !cfg->listen || !*cfg->listen) {
        rpc_errf(err, errlen, "server: no listen address");
        return NULL;
    }
    if (cfg->threads > RPC_MAX_THREADS || cfg->threads < 0) {
        rpc_errf(err, errlen, "server: threads must be 1..%d", RPC_MAX_THREADS);
        return NULL;
    }
    struct rpc_pem pem = {0};
    if (!cfg->insecure) {
        if (!cfg->tls) {
            rpc_errf(err, errlen, "server: no TLS configuration (set insecure for plaintext)");
            return NULL;
        }
        if (rpc_pem_load(cfg->tls, true, &pem, err, errlen) != 0)
            return NULL;
    }
    struct rpc_server *srv = calloc(1, sizeof *srv);
    if (!srv) {
        rpc_pem_free(&pem);
        rpc_errf(err, errlen, "server: out of memory");
        return NULL;
    }
    srv->nthreads = rpc_clamp_int(cfg->threads, RPC_DEFAULT_SERVER_THREADS, 1, RPC_MAX_THREADS);
    srv->stream_queue = rpc_clamp_int(cfg->stream_queue, RPC_DEFAULT_STREAM_QUEUE, 1, 1 << 20);
    srv->w = calloc((size_t)srv->nthreads, sizeof *srv->w);
    pthread_mutex_init(&srv->mu, NULL);
    rpc_cond_init_monotonic(&srv->cv);
    srv->t_shutdown.fn = on_shutdown;
    if (!srv->w) {
        rpc_pem_free(&pem);
        pthread_mutex_destroy(&srv->mu);
        pthread_cond_destroy(&srv->cv);
        free(srv);
        rpc_errf(err, errlen, "server: out of memory");
        return NULL;
    }

    rpc_grpc_init();
    /* The quota bounds what gRPC allocates for this server's connections; the server's
     * channel args hold a reference of their own. */
    grpc_resource_quota *quota = grpc_resource_quota_create("rpc-server");
    grpc_resource_quota_resize(quota, cfg->max_memory_bytes ? cfg->max_memory_bytes
                                                            : RPC_DEFAULT_SERVER_MEMORY);
    grpc_arg args[6];
    memset(args, 0, sizeof args);
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[0].value.integer = rpc_size_arg(cfg->max_recv_bytes);
    args[1].type = GRPC_ARG_INTEGER;
    args[1].key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
    args[1].value.integer = rpc_size_arg(cfg->max_send_bytes);
    args[2].type = GRPC_ARG_INTEGER;
    args[2].key = GRPC_ARG_MAX_CONCURRENT_STREAMS;
    args[2].value.integer = rpc_clamp_int(cfg->max_streams, RPC_DEFAULT_MAX_STREAMS, 1, 1 << 24);
    args[3].type = GRPC_ARG_INTEGER;
    args[3].key = GRPC_ARG_ALLOW_REUSEPORT; /* a port held by someone else must be an error */
    args[3].value.integer = 0;
    args[4].type = GRPC_ARG_INTEGER;
    args[4].key = GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS;
    args[4].value.integer =
        rpc_clamp_int(cfg->handshake_timeout_ms, RPC_DEFAULT_HANDSHAKE_MS, 10, 3600 * 1000);
    args[5].type = GRPC_ARG_POINTER;
    args[5].key = GRPC_ARG_RESOURCE_QUOTA;
    args[5].value.pointer.p = quota;
    args[5].value.pointer.vtable = grpc_resource_quota_arg_vtable();
    grpc_channel_args ch_args = {6, args};
    srv->gs = grpc_server_create(&ch_args, NULL);
    grpc_resource_quota_unref(quota);
    for (int i = 0; i < srv->nthreads; i++) {
        srv->w[i].srv = srv;
        srv->w[i].cq = grpc_completion_queue_create_for_next(NULL);
        grpc_server_register_completion_queue(srv->gs, srv->w[i].cq, NULL);
    }
    grpc_server_credentials *creds;
    if (cfg->insecure) {
        creds = grpc_insecure_server_credentials_create();
    } else if (rpc_tls_dynamic(cfg->tls)) {
        rpc_pem_free(&pem);
        srv->tls_src = rpc_tls_src_get(cfg->tls, true, err, errlen);
        if (!srv->tls_src) {
            rpc_server_shutdown(srv, 0);
            return NULL;
        }
        creds = rpc_tls_src_server_creds(srv->tls_src);
    } else {
        grpc_ssl_pem_key_cert_pair pair = {pem.key, pem.cert};
        creds = grpc_ssl_server_credentials_create_ex(
            pem.ca, &pair, 1, GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY, NULL);
    }
    srv->port = creds ? grpc_server_add_http2_port(srv->gs, cfg->listen, creds) : 0;
    if (creds)
        grpc_server_credentials_release(creds);
    rpc_pem_free(&pem);
    if (srv->port <= 0) {
        rpc_errf(err, errlen, "server: cannot listen on %s (address in use or invalid)",
                 cfg->listen);
        rpc_server_shutdown(srv, 0);
        return NULL;
    }
    return srv;
}

int rpc_server_port(const struct rpc_server *srv) { return srv->port; }

void rpc_server_method_stats(struct rpc_server *srv,
                             void (*fn)(void *arg, const struct rpc_method_stat *st), void *arg)
{
    for (int i = 0; i < srv->nregs; i++) {
        const struct method_reg *r = &srv->regs[i];
        struct rpc_method_stat st = {.name = r->name, .stream = r->kind == REG_STREAM};
        st.started = atomic_load_explicit(&r->mc->started, memory_order_relaxed);
        for (int k = 0; k < RPC_STATUS_CODES; k++)
            st.handled[k] = atomic_load_explicit(&r->mc->handled[k], memory_order_relaxed);
        fn(arg, &st);
    }
}

static int add_reg(struct rpc_server *srv, const char *method, struct method_reg r)
{
    if (!srv || !method || method[0] != '/' || !strchr(method + 1, '/'))
        return RPC_EINVAL;
    if (srv->started)
        return RPC_ESTATE;
    for (int i = 0; i < srv->nregs; i++)
        if (strcmp(srv->regs[i].name, method) == 0)
            return RPC_EINVAL;
    struct method_reg *n = realloc(srv->regs, (size_t)(srv->nregs + 1) * sizeof *n);
    if (!n)
        return RPC_ENOMEM;
    srv->regs = n;
    r.name = strdup(method);
    r.mc = calloc(1, sizeof *r.mc);
    if (!r.name || !r.mc) {
        free(r.name);
        free(r.mc);
        return RPC_ENOMEM;
    }
    r.nlen = strlen(method);
    srv->regs[srv->nregs++] = r;
    return 0;
}

int rpc_server_register_unary(struct rpc_server *srv, const char *method, rpc_unary_fn fn,
                              void *ctx)
{
    if (!fn)
        return RPC_EINVAL;
    return add_reg(srv, method, (struct method_reg){.kind = REG_UNARY, .unary = fn, .ctx = ctx});
}

int rpc_server_register_unary_msg(struct rpc_server *srv, const char *method,
                                  const ProtobufCMessageDescriptor *req_desc,
                                  rpc_unary_msg_fn fn, void *ctx)
{
    if (!fn || !req_desc)
        return RPC_EINVAL;
    return add_reg(srv, method,
                   (struct method_reg){
                       .kind = REG_UNARY_MSG, .unary_msg = fn, .desc = req_desc, .ctx = ctx});
}

int rpc_server_register_stream(struct rpc_server *srv, const char *method,
                               const struct rpc_stream_handler *h, void *ctx)
{
    if (!h || !h->on_message)
        return RPC_EINVAL;
    return add_reg(srv, method, (struct method_reg){.kind = REG_STREAM, .sh = *h, .ctx = ctx});
}

int rpc_server_start(struct rpc_server *srv)
{
    if (!srv)
        return RPC_EINVAL;
    if (srv->started)
        return RPC_ESTATE;
    /* Unary methods are registered with gRPC, which then reads the request before handing
     * over the call: one batch and one completion fewer per call than the generic path. */
    for (int i = 0; i < srv->nregs; i++)
        if (srv->regs[i].kind != REG_STREAM)
            srv->regs[i].grpc_method = grpc_server_register_method(
                srv->gs, srv->regs[i].name, NULL, GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
    grpc_server_start(srv->gs);
    srv->started = true;
    for (int i = 0; i < srv->nthreads; i++) {
        if (pthread_create(&srv->w[i].th, NULL, rpc_cq_loop, srv->w[i].cq) != 0) {
            /* Queues without a thread get no accepts; shutdown drains them itself. */
            log_error(NULL, "rpc: cannot start server thread %d", i);
            return RPC_ENOMEM;
        }
        pthread_setname_np(srv->w[i].th, "rpc-server");
        srv->nstarted++;
        for (int k = 0; k < ACCEPTS_PER_THREAD; k++) {
            request_one(&srv->w[i], NULL);
            for (int r = 0; r < srv->nregs; r++)
                if (srv->regs[r].grpc_method)
                    request_one(&srv->w[i], &srv->regs[r]);
        }
    }
    return 0;
}

void rpc_server_shutdown(struct rpc_server *srv, int grace_ms)
{
    if (!srv)
        return;
    pthread_mutex_lock(&srv->mu);
    srv->shutting_down = true;
    pthread_mutex_unlock(&srv->mu);

    grpc_server_shutdown_and_notify(srv->gs, srv->w[0].cq, &srv->t_shutdown);
    if (!srv->started) {
        /* No threads: drain queue 0 ourselves until the shutdown tag shows up. */
        for (;;) {
            grpc_event ev = grpc_completion_queue_next(srv->w[0].cq,
                                                       gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
            if (ev.type == GRPC_OP_COMPLETE && ev.tag == &srv->t_shutdown)
                break;
        }
        srv->shutdown_done = true;
    }

    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    if (grace_ms > 0) {
        until.tv_sec += grace_ms / 1000;
        until.tv_nsec += (long)(grace_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
    }
    pthread_mutex_lock(&srv->mu);
    int rc = 0;
    while (!srv->shutdown_done && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&srv->cv, &srv->mu, &until);
    bool done = srv->shutdown_done;
    pthread_mutex_unlock(&srv->mu);
    if (!done)
        grpc_server_cancel_all_calls(srv->gs); /* every call's RECV_CLOSE now completes */

    pthread_mutex_lock(&srv->mu);
    while (!srv->shutdown_done || (srv->started && srv->active > 0))
        pthread_cond_wait(&srv->cv, &srv->mu);
    pthread_mutex_unlock(&srv->mu);

    grpc_server_destroy(srv->gs);
    rpc_tls_src_put(srv->tls_src);
    for (int i = 0; i < srv->nthreads; i++)
        grpc_completion_queue_shutdown(srv->w[i].cq);
    for (int i = 0; i < srv->nthreads; i++) {
        if (i < srv->nstarted) {
            pthread_join(srv->w[i].th, NULL);
        } else {
            grpc_event ev;
            do
                ev = grpc_completion_queue_next(srv->w[i].cq, gpr_inf_future(GPR_CLOCK_REALTIME),
                                                NULL);
            while (ev.type != GRPC_QUEUE_SHUTDOWN);
        }
        grpc_completion_queue_destroy(srv->w[i].cq);
    }
    for (int i = 0; i < srv->nregs; i++) {
        free(srv->regs[i].name);
        free(srv->regs[i].mc);
    }
    free(srv->regs);
    free(srv->w);
    pthread_mutex_destroy(&srv->mu);
    pthread_cond_destroy(&srv->cv);
    free(srv);
    rpc_grpc_shutdown();
}
