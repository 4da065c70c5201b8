/* Client side: one grpc_channel, `threads` completion queues each drained by one pthread
 * (async callbacks and stream callbacks run there), a pluck queue per blocking call.
 *
 * Every live gRPC call holds a slot (ch->active) and sits on ch->calls so rpc_channel_destroy
 * can cancel it; the slot is taken before the gRPC call is created, so the grpc_channel
 * outlives every call made on it. */
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

struct cnode {
    struct cnode *prev, *next;
    grpc_call *gc;
};

struct rpc_channel {
    grpc_channel *gch;
    int nthreads, nstarted;
    grpc_completion_queue **cqs;
    pthread_t *th;
    atomic_uint rr;
    int max_inflight;
    int stream_queue;
    uint32_t md_flags; /* flags of SEND_INITIAL_METADATA (wait-for-ready) */

    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct cnode calls; /* sentinel of the live-call list */
    int active;
    bool closing;
    struct rpc_tag watch; /* the standing connectivity watch, see arm_watch_locked */
    struct rpc_tls_src *tls_src; /* reloadable TLS (tls->reload_sec > 0), else NULL */
};

/* ---- slots and the live-call list --------------------------------------------------- */

static int slot_acquire(struct rpc_channel *ch)
{
    int rc = 0;
    pthread_mutex_lock(&ch->mu);
    if (ch->closing)
        rc = RPC_ECLOSED;
    else if (ch->active >= ch->max_inflight)
        rc = RPC_EFULL;
    else
        ch->active++;
    pthread_mutex_unlock(&ch->mu);
    return rc;
}

static void slot_release(struct rpc_channel *ch)
{
    pthread_mutex_lock(&ch->mu);
    if (--ch->active == 0)
        pthread_cond_broadcast(&ch->cv);
    pthread_mutex_unlock(&ch->mu);
}

static void node_link(struct rpc_channel *ch, struct cnode *n, grpc_call *gc)
{
    pthread_mutex_lock(&ch->mu);
    n->gc = gc;
    n->next = ch->calls.next;
    n->prev = &ch->calls;
    ch->calls.next->prev = n;
    ch->calls.next = n;
    if (ch->closing) /* destroy began after we took the slot */
        grpc_call_cancel(gc, NULL);
    pthread_mutex_unlock(&ch->mu);
}

/* Unlinks and gives the slot back; the caller then unrefs the call (never cancelled after). */
static void node_unlink(struct rpc_channel *ch, struct cnode *n)
{
    pthread_mutex_lock(&ch->mu);
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = NULL;
    if (--ch->active == 0)
        pthread_cond_broadcast(&ch->cv);
    pthread_mutex_unlock(&ch->mu);
}

static grpc_completion_queue *next_cq(struct rpc_channel *ch)
{
    unsigned i = atomic_fetch_add(&ch->rr, 1);
    return ch->cqs[i % (unsigned)ch->nthreads];
}

static grpc_call *create_call(struct rpc_channel *ch, grpc_completion_queue *cq,
                              const char *method, int deadline_ms)
{
    grpc_slice m = grpc_slice_from_copied_string(method);
    grpc_call *gc = grpc_channel_create_call(ch->gch, NULL, GRPC_PROPAGATE_DEFAULTS, cq, m, NULL,
                                             rpc_deadline(deadline_ms), NULL);
    grpc_slice_unref(m);
    return gc;
}

static void result_set(struct rpc_result *r, grpc_status_code st, const char *msg)
{
    r->status = st;
    snprintf(r->message, sizeof r->message, "%s", msg);
}

/* ---- unary -------------------------------------------------------------------------- */

struct ucall {
    struct rpc_tag tag;
    struct cnode node;
    struct rpc_channel *ch;
    grpc_call *gc;
    grpc_metadata_array md_init, md_trail;
    grpc_byte_buffer *send_bb, *recv_bb;
    grpc_status_code status;
    grpc_slice details;
    rpc_done_fn cb;
    void *arg;
};

/* Starts the whole unary exchange as one batch. bb becomes the call's. */
static int unary_start(struct rpc_channel *ch, struct ucall *u, grpc_completion_queue *cq,
                       const char *method, grpc_byte_buffer *bb, int deadline_ms)
{
    int rc = slot_acquire(ch);
    if (rc != 0) {
        grpc_byte_buffer_destroy(bb);
        return rc;
    }
    u->ch = ch;
    u->gc = create_call(ch, cq, method, deadline_ms);
    if (!u->gc) {
        grpc_byte_buffer_destroy(bb);
        slot_release(ch);
        return RPC_EINVAL;
    }
    u->send_bb = bb;
    grpc_metadata_array_init(&u->md_init);
    grpc_metadata_array_init(&u->md_trail);
    u->details = grpc_empty_slice();
    node_link(ch, &u->node, u->gc);

    grpc_op ops[6];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].flags = ch->md_flags;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = bb;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &u->md_init;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &u->recv_bb;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &u->md_trail;
    ops[5].data.recv_status_on_client.status = &u->status;
    ops[5].data.recv_status_on_client.status_details = &u->details;
    grpc_call_error e = grpc_call_start_batch(u->gc, ops, 6, &u->tag, NULL);
    if (e != GRPC_CALL_OK) {
        log_error(NULL, "rpc: grpc_call_start_batch failed (%d)", (int)e);
        return RPC_ESTATE; /* caller runs unary_finish to clean up */
    }
    return 0;
}

/* Turns a finished exchange into *r and releases everything gRPC-side. */
static void unary_finish(struct ucall *u, bool ok, struct rpc_result *r)
{
    memset(r, 0, sizeof *r);
    if (!ok) {
        result_set(r, GRPC_STATUS_INTERNAL, "call batch failed");
    } else {
        r->status = u->status;
        rpc_slice_to_str(u->details, r->message, sizeof r->message);
        if (u->status == GRPC_STATUS_OK) {
            if (!u->recv_bb)
                result_set(r, GRPC_STATUS_INTERNAL, "server sent no reply message");
            else if (rpc_bb_to_bytes(u->recv_bb, &r->data, &r->len) != 0)
                result_set(r, GRPC_STATUS_INTERNAL, "cannot read the reply message");
        }
    }
    if (u->recv_bb)
        grpc_byte_buffer_destroy(u->recv_bb);
    grpc_byte_buffer_destroy(u->send_bb);
    grpc_slice_unref(u->details);
    grpc_metadata_array_destroy(&u->md_init);
    grpc_metadata_array_destroy(&u->md_trail);
    node_unlink(u->ch, &u->node);
    grpc_call_unref(u->gc);
}

static void on_async_done(struct rpc_tag *t, bool ok)
{
    struct ucall *u = RPC_CONTAINER_OF(t, struct ucall, tag);
    struct rpc_result r;
    unary_finish(u, ok, &r);
    u->cb(&r, u->arg);
    rpc_result_free(&r);
    free(u);
}

int rpc_channel_call_async(struct rpc_channel *ch, const char *method, const void *req,
                           size_t len, int deadline_ms, rpc_done_fn cb, void *arg)
{
    if (!ch || !method || !cb || (len && !req))
        return RPC_EINVAL;
    struct ucall *u = calloc(1, sizeof *u);
    grpc_byte_buffer *bb = u ? rpc_bb_from_bytes(req, len) : NULL;
    if (!bb) {
        free(u);
        return RPC_ENOMEM;
    }
    u->tag.fn = on_async_done;
    u->cb = cb;
    u->arg = arg;
    int rc = unary_start(ch, u, next_cq(ch), method, bb, deadline_ms);
    if (rc == RPC_ESTATE) {
        struct rpc_result r;
        unary_finish(u, false, &r);
        rpc_result_free(&r);
    }
    if (rc != 0)
        free(u);
    return rc;
}

int rpc_channel_call(struct rpc_channel *ch, const char *method, const void *req, size_t len,
                     int deadline_ms, struct rpc_result *out)
{
    memset(out, 0, sizeof *out);
    if (!ch || !method || (len && !req)) {
        result_set(out, GRPC_STATUS_INVALID_ARGUMENT, "bad arguments");
        return RPC_EINVAL;
    }
    grpc_byte_buffer *bb = rpc_bb_from_bytes(req, len);
    if (!bb) {
        result_set(out, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return RPC_ENOMEM;
    }
    /* A private pluck queue: the caller's thread waits on it, so this works from callbacks. */
    grpc_completion_queue *cq = grpc_completion_queue_create_for_pluck(NULL);
    struct ucall u;
    memset(&u, 0, sizeof u);
    int rc = unary_start(ch, &u, cq, method, bb, deadline_ms);
    if (rc == 0) {
        grpc_event ev = grpc_completion_queue_pluck(cq, &u.tag, gpr_inf_future(GPR_CLOCK_REALTIME),
                                                    NULL);
        unary_finish(&u, ev.success != 0, out);
    } else if (rc == RPC_ESTATE) {
        unary_finish(&u, false, out);
    } else {
        result_set(out, rc == RPC_ECLOSED ? GRPC_STATUS_CANCELLED : GRPC_STATUS_RESOURCE_EXHAUSTED,
                   rpc_strerror(rc));
    }
    grpc_completion_queue_shutdown(cq);
    while (grpc_completion_queue_pluck(cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
           GRPC_QUEUE_SHUTDOWN)
        ;
    grpc_completion_queue_destroy(cq);
    return rc == RPC_ESTATE ? 0 : rc;
}

int rpc_channel_call_msg(struct rpc_channel *ch, const char *method, const ProtobufCMessage *req,
                         const ProtobufCMessageDescriptor *resp_desc, int deadline_ms,
                         ProtobufCMessage **resp, struct rpc_result *out)
{
    *resp = NULL;
    memset(out, 0, sizeof *out);
    if (!req || !resp_desc) {
        result_set(out, GRPC_STATUS_INVALID_ARGUMENT, "bad arguments");
        return RPC_EINVAL;
    }
    uint8_t *buf;
    size_t len;
    if (rpc_msg_pack(req, &buf, &len) != 0) {
        result_set(out, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return RPC_ENOMEM;
    }
    int rc = rpc_channel_call(ch, method, buf, len, deadline_ms, out);
    free(buf);
    if (rc == 0 && out->status == GRPC_STATUS_OK) {
        *resp = protobuf_c_message_unpack(resp_desc, NULL, out->len, out->data);
        if (!*resp) {
            char msg[200];
            snprintf(msg, sizeof msg, "reply is not a valid %s", resp_desc->name);
            result_set(out, GRPC_STATUS_INVALID_ARGUMENT, msg);
        }
    }
    return rc;
}

/* ---- client streams ----------------------------------------------------------------- */

struct rpc_client_stream {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* room in the send queue, or the stream died (CLOCK_MONOTONIC) */
    struct rpc_channel *ch; /* valid while grpc_holds */
    struct cnode node;
    grpc_call *gc;
    struct rpc_client_stream_handler h;
    void *arg;
    struct rpc_tag t_start, t_recv, t_status, t_send, t_hclose;
    grpc_metadata_array md_init, md_trail;
    grpc_byte_buffer *recv_bb, *send_bb;
    grpc_status_code status;
    grpc_slice details;
    grpc_byte_buffer **q;
    int qcap, qhead, qlen;
    int pending;
    bool grpc_holds, user_holds, writing, hclose_requested, hclose_sent;
    bool reading_done, status_done, close_delivered, dead;
};

static void cs_free(struct rpc_client_stream *s)
{
    for (int i = 0; i < s->qlen; i++)
        grpc_byte_buffer_destroy(s->q[(s->qhead + i) % s->qcap]);
    free(s->q);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}

static void cs_drop_queue(struct rpc_client_stream *s)
{
    for (int i = 0; i < s->qlen; i++)
        grpc_byte_buffer_destroy(s->q[(s->qhead + i) % s->qcap]);
    s->qlen = 0;
}

/* Caller holds s->mu. */
static bool cs_batch(struct rpc_client_stream *s, const grpc_op *ops, size_t n, struct rpc_tag *t)
{
    grpc_call_error e = grpc_call_start_batch(s->gc, ops, n, t, NULL);
    if (e != GRPC_CALL_OK) {
        log_error(NULL, "rpc: grpc_call_start_batch failed (%d)", (int)e);
        return false;
    }
    s->pending++;
    return true;
}

static void cs_start_write(struct rpc_client_stream *s, grpc_byte_buffer *bb)
{
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_SEND_MESSAGE;
    op.data.send_message.send_message = bb;
    s->send_bb = bb;
    if (cs_batch(s, &op, 1, &s->t_send)) {
        s->writing = true;
    } else {
        grpc_byte_buffer_destroy(bb);
        s->send_bb = NULL;
        s->dead = true;
    }
}

static void cs_start_hclose(struct rpc_client_stream *s)
{
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    s->hclose_sent = true;
    cs_batch(s, &op, 1, &s->t_hclose);
}

static void cs_start_recv(struct rpc_client_stream *s)
{
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &s->recv_bb;
    if (!cs_batch(s, &op, 1, &s->t_recv))
        s->reading_done = true;
}

static void cs_done_pending(struct rpc_client_stream *s)
{
    pthread_mutex_lock(&s->mu);
    s->pending--;
    bool release = s->grpc_holds && s->status_done && s->reading_done && s->pending == 0;
    grpc_call *gc = s->gc;
    struct rpc_channel *ch = s->ch;
    if (release) {
        s->grpc_holds = false;
        s->gc = NULL;
        grpc_metadata_array_destroy(&s->md_init);
        grpc_metadata_array_destroy(&s->md_trail);
        grpc_slice_unref(s->details);
        cs_drop_queue(s);
    }
    bool free_now = !s->grpc_holds && !s->user_holds;
    pthread_mutex_unlock(&s->mu);
    if (release) {
        node_unlink(ch, &s->node);
        grpc_call_unref(gc);
    }
    if (free_now)
        cs_free(s);
}

/* on_close once, after the last on_message and the final status. Called on the stream's
 * thread while one of its events is still pending (so s is alive). */
static void cs_maybe_deliver_close(struct rpc_client_stream *s)
{
    pthread_mutex_lock(&s->mu);
    bool deliver = s->reading_done && s->status_done && !s->close_delivered;
    s->close_delivered = s->close_delivered || deliver;
    char msg[256];
    rpc_slice_to_str(s->details, msg, sizeof msg);
    grpc_status_code st = s->status;
    pthread_mutex_unlock(&s->mu);
    if (deliver && s->h.on_close)
        s->h.on_close(s, st, msg, s->arg);
}

static void on_cs_start(struct rpc_tag *t, bool ok)
{
    (void)ok; /* a failure shows up as the final status */
    cs_done_pending(RPC_CONTAINER_OF(t, struct rpc_client_stream, t_start));
}

static void on_cs_hclose(struct rpc_tag *t, bool ok)
{
    (void)ok;
    cs_done_pending(RPC_CONTAINER_OF(t, struct rpc_client_stream, t_hclose));
}

static void on_cs_recv(struct rpc_tag *t, bool ok)
{
    struct rpc_client_stream *s = RPC_CONTAINER_OF(t, struct rpc_client_stream, t_recv);
    grpc_byte_buffer *bb = s->recv_bb; /* only this thread touches recv_bb */
    s->recv_bb = NULL;
    if (ok && bb) {
        uint8_t *data;
        size_t len;
        int rc = rpc_bb_to_bytes(bb, &data, &len);
        grpc_byte_buffer_destroy(bb);
        if (rc == 0 && s->h.on_message)
            s->h.on_message(s, data, len, s->arg);
        if (rc == 0)
            free(data);
        pthread_mutex_lock(&s->mu);
        if (rc != 0)
            grpc_call_cancel_with_status(s->gc, GRPC_STATUS_INTERNAL,
                                         "cannot read a stream message", NULL);
        cs_start_recv(s); /* keep reading until the end of the stream */
        pthread_mutex_unlock(&s->mu);
    } else {
        if (bb)
            grpc_byte_buffer_destroy(bb);
        pthread_mutex_lock(&s->mu);
        s->reading_done = true;
        pthread_mutex_unlock(&s->mu);
        cs_maybe_deliver_close(s);
    }
    cs_done_pending(s);
}

static void on_cs_status(struct rpc_tag *t, bool ok)
{
    struct rpc_client_stream *s = RPC_CONTAINER_OF(t, struct rpc_client_stream, t_status);
    pthread_mutex_lock(&s->mu);
    if (!ok) {
        s->status = GRPC_STATUS_INTERNAL;
    }
    s->status_done = true;
    s->dead = true;
    cs_drop_queue(s);
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    cs_maybe_deliver_close(s);
    cs_done_pending(s);
}

static void on_cs_send(struct rpc_tag *t, bool ok)
{
    struct rpc_client_stream *s = RPC_CONTAINER_OF(t, struct rpc_client_stream, t_send);
    pthread_mutex_lock(&s->mu);
    grpc_byte_buffer_destroy(s->send_bb);
    s->send_bb = NULL;
    s->writing = false;
    if (!ok) {
        s->dead = true;
        cs_drop_queue(s);
    } else if (s->qlen > 0 && !s->dead) {
        grpc_byte_buffer *bb = s->q[s->qhead];
        s->qhead = (s->qhead + 1) % s->qcap;
        s->qlen--;
        cs_start_write(s, bb);
    }
    if (!s->writing && s->hclose_requested && !s->hclose_sent && !s->dead)
        cs_start_hclose(s);
    /* The user still holds the handle and on_close (this thread) has not run. */
    bool drained = ok && !s->writing && !s->dead && s->user_holds && !s->hclose_requested &&
                   !s->close_delivered;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (drained && s->h.on_sent)
        s->h.on_sent(s, s->arg);
    cs_done_pending(s);
}

struct rpc_client_stream *rpc_channel_stream_open(struct rpc_channel *ch, const char *method,
                                                  const struct rpc_client_stream_handler *h,
                                                  void *arg)
{
    if (!ch || !method || !h)
        return NULL;
    struct rpc_client_stream *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->qcap = ch->stream_queue;
    s->q = calloc((size_t)s->qcap, sizeof *s->q);
    if (!s->q || slot_acquire(ch) != 0) {
        free(s->q);
        free(s);
        return NULL;
    }
    pthread_mutex_init(&s->mu, NULL);
    rpc_cond_init_monotonic(&s->cv);
    s->ch = ch;
    s->h = *h;
    s->arg = arg;
    s->t_start.fn = on_cs_start;
    s->t_recv.fn = on_cs_recv;
    s->t_status.fn = on_cs_status;
    s->t_send.fn = on_cs_send;
    s->t_hclose.fn = on_cs_hclose;
    grpc_metadata_array_init(&s->md_init);
    grpc_metadata_array_init(&s->md_trail);
    s->details = grpc_empty_slice();
    s->gc = create_call(ch, next_cq(ch), method, 0);
    if (!s->gc) {
        slot_release(ch);
        grpc_metadata_array_destroy(&s->md_init);
        grpc_metadata_array_destroy(&s->md_trail);
        cs_free(s);
        return NULL;
    }
    s->grpc_holds = true;
    s->user_holds = true;
    node_link(ch, &s->node, s->gc);

    pthread_mutex_lock(&s->mu);
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].flags = ch->md_flags;
    ops[1].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[1].data.recv_initial_metadata.recv_initial_metadata = &s->md_init;
    cs_batch(s, ops, 2, &s->t_start);
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[0].data.recv_status_on_client.trailing_metadata = &s->md_trail;
    ops[0].data.recv_status_on_client.status = &s->status;
    ops[0].data.recv_status_on_client.status_details = &s->details;
    if (!cs_batch(s, ops, 1, &s->t_status))
        s->status_done = true; /* cannot happen on a fresh call; keeps release reachable */
    cs_start_recv(s);
    pthread_mutex_unlock(&s->mu);
    return s;
}

int rpc_client_stream_send(struct rpc_client_stream *s, const void *data, size_t len,
                           int timeout_ms)
{
    if (!s || (len && !data))
        return RPC_EINVAL;
    grpc_byte_buffer *bb = rpc_bb_from_bytes(data, len);
    if (!bb)
        return RPC_ENOMEM;
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    if (timeout_ms > 0) {
        until.tv_sec += timeout_ms / 1000;
        until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
    }
    int rc;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        if (!s->user_holds || s->hclose_requested) {
            rc = RPC_ESTATE;
        } else if (s->dead || !s->grpc_holds) {
            rc = RPC_ECLOSED;
        } else if (!s->writing) {
            cs_start_write(s, bb);
            bb = NULL;
            rc = s->dead ? RPC_ECLOSED : 0;
        } else if (s->qlen < s->qcap) {
            s->q[(s->qhead + s->qlen) % s->qcap] = bb;
            s->qlen++;
            bb = NULL;
            rc = 0;
        } else if (timeout_ms <= 0) {
            rc = RPC_EFULL;
        } else if (pthread_cond_timedwait(&s->cv, &s->mu, &until) == ETIMEDOUT) {
            rc = RPC_ETIMEDOUT;
        } else {
            continue;
        }
        break;
    }
    pthread_mutex_unlock(&s->mu);
    if (bb)
        grpc_byte_buffer_destroy(bb);
    return rc;
}

static int cs_release_user(struct rpc_client_stream *s, bool cancel)
{
    if (!s)
        return RPC_EINVAL;
    pthread_mutex_lock(&s->mu);
    if (!s->user_holds) {
        pthread_mutex_unlock(&s->mu);
        return RPC_ESTATE;
    }
    s->user_holds = false;
    int rc = RPC_ECLOSED;
    if (s->grpc_holds && !s->dead) {
        rc = 0;
        if (cancel) {
            grpc_call_cancel(s->gc, NULL);
        } else if (!s->hclose_requested) {
            s->hclose_requested = true;
            if (!s->writing)
                cs_start_hclose(s);
        }
    }
    bool free_now = !s->grpc_holds;
    pthread_mutex_unlock(&s->mu);
    if (free_now)
        cs_free(s);
    return rc;
}

int rpc_client_stream_close(struct rpc_client_stream *s) { return cs_release_user(s, false); }
int rpc_client_stream_cancel(struct rpc_client_stream *s) { return cs_release_user(s, true); }

/* ---- channel lifecycle -------------------------------------------------------------- */

/* A standing connectivity watch on the first queue keeps that queue's pollset among the
 * channel's interested parties. Calls fail fast while the channel is down, so a reconnect
 * often has no call waiting on it; under the poll engine (rpc_grpc_init) nobody would then
 * read its socket and each step of the connect and TLS handshake would wait for gRPC's 5 s
 * backup poller. Re-armed on every change until the channel closes; grpc_channel_destroy
 * completes the last one (state SHUTDOWN) before the queues drain. */
static void arm_watch_locked(struct rpc_channel *ch)
{
    grpc_connectivity_state st = grpc_channel_check_connectivity_state(ch->gch, 0);
    grpc_channel_watch_connectivity_state(ch->gch, st, gpr_inf_future(GPR_CLOCK_MONOTONIC),
                                          ch->cqs[0], &ch->watch);
}

static void on_watch(struct rpc_tag *t, bool ok)
{
    (void)ok;
    struct rpc_channel *ch = RPC_CONTAINER_OF(t, struct rpc_channel, watch);
    pthread_mutex_lock(&ch->mu);
    if (!ch->closing)
        arm_watch_locked(ch);
    pthread_mutex_unlock(&ch->mu);
}

struct rpc_channel *rpc_channel_create(const struct rpc_channel_config *cfg, char *err,
                                       size_t errlen)
{
    if (!cfg || !cfg->target || !*cfg->target) {
        rpc_errf(err, errlen, "channel: no target");
        return NULL;
    }
    if (cfg->threads > RPC_MAX_THREADS || cfg->threads < 0) {
        rpc_errf(err, errlen, "channel: threads must be 1..%d", RPC_MAX_THREADS);
        return NULL;
    }
    struct rpc_pem pem = {0};
    if (!cfg->insecure) {
        if (!cfg->tls) {
            rpc_errf(err, errlen, "channel: no TLS configuration (set insecure for plaintext)");
            return NULL;
        }
        if (rpc_pem_load(cfg->tls, false, &pem, err, errlen) != 0)
            return NULL;
    }
    struct rpc_channel *ch = calloc(1, sizeof *ch);
    int n = rpc_clamp_int(cfg->threads, RPC_DEFAULT_CHANNEL_THREADS, 1, RPC_MAX_THREADS);
    if (ch) {
        ch->cqs = calloc((size_t)n, sizeof *ch->cqs);
        ch->th = calloc((size_t)n, sizeof *ch->th);
    }
    if (!ch || !ch->cqs || !ch->th) {
        if (ch) {
            free(ch->cqs);
            free(ch->th);
        }
        free(ch);
        rpc_pem_free(&pem);
        rpc_errf(err, errlen, "channel: out of memory");
        return NULL;
    }
    ch->nthreads = n;
    ch->max_inflight = rpc_clamp_int(cfg->max_inflight, RPC_DEFAULT_MAX_INFLIGHT, 1, 1 << 24);
    ch->stream_queue = rpc_clamp_int(cfg->stream_queue, RPC_DEFAULT_STREAM_QUEUE, 1, 1 << 20);
    ch->md_flags = cfg->wait_for_ready ? (GRPC_INITIAL_METADATA_WAIT_FOR_READY |
                                          GRPC_INITIAL_METADATA_WAIT_FOR_READY_EXPLICITLY_SET)
                                       : 0;
    pthread_mutex_init(&ch->mu, NULL);
    pthread_cond_init(&ch->cv, NULL);
    ch->calls.next = ch->calls.prev = &ch->calls;

    rpc_grpc_init();
    int backoff_max = rpc_clamp_int(cfg->reconnect_max_ms, RPC_DEFAULT_RECONNECT_MAX_MS, 100, 600000);
    grpc_arg args[8];
    memset(args, 0, sizeof args);
    int na = 0;
    args[na].type = GRPC_ARG_INTEGER;
    args[na].key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[na++].value.integer = rpc_size_arg(cfg->max_recv_bytes);
    args[na].type = GRPC_ARG_INTEGER;
    args[na].key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
    args[na++].value.integer = rpc_size_arg(cfg->max_send_bytes);
    /* Reconnect quickly after a peer restarts: gRPC's defaults back off up to 2 minutes.
     * (GRPC_ARG_MIN_RECONNECT_BACKOFF_MS stays at its default: it is also the connect
     * timeout, and a short one fails TLS handshakes on a loaded machine.) */
    args[na].type = GRPC_ARG_INTEGER;
    args[na].key = GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS;
    args[na++].value.integer = 100;
    args[na].type = GRPC_ARG_INTEGER;
    args[na].key = GRPC_ARG_MAX_RECONNECT_BACKOFF_MS;
    args[na++].value.integer = backoff_max;
    /* No hidden retries: a call runs once, and messages are not buffered for replay. */
    args[na].type = GRPC_ARG_INTEGER;
    args[na].key = GRPC_ARG_ENABLE_RETRIES;
    args[na++].value.integer = 0;
    /* A connection of its own: gRPC would otherwise let channels to one target with equal
     * credentials share one (its global subchannel pool), so a new channel would not make a
     * new handshake with certificates reloaded since (rpc_tls.reload_sec). */
    args[na].type = GRPC_ARG_INTEGER;
    args[na].key = GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL;
    args[na++].value.integer = 1;
    if (!cfg->insecure && cfg->server_name && *cfg->server_name) {
        args[na].type = GRPC_ARG_STRING;
        args[na].key = GRPC_SSL_TARGET_NAME_OVERRIDE_ARG;
        args[na++].value.string = (char *)cfg->server_name;
    }
    grpc_channel_args cargs = {(size_t)na, args};
    grpc_channel_credentials *creds;
    if (cfg->insecure) {
        creds = grpc_insecure_credentials_create();
    } else if (rpc_tls_dynamic(cfg->tls)) {
        rpc_pem_free(&pem);
        ch->tls_src = rpc_tls_src_get(cfg->tls, false, err, errlen);
        if (!ch->tls_src) {
            rpc_channel_destroy(ch);
            return NULL;
        }
        creds = rpc_tls_src_channel_creds(ch->tls_src);
    } else {
        grpc_ssl_pem_key_cert_pair pair = {pem.key, pem.cert};
        creds = grpc_ssl_credentials_create(pem.ca, pem.cert ? &pair : NULL, NULL, NULL);
    }
    ch->gch = creds ? grpc_channel_create(cfg->target, creds, &cargs) : NULL;
    if (creds)
        grpc_channel_credentials_release(creds);
    rpc_pem_free(&pem);
    if (!ch->gch) {
        rpc_errf(err, errlen, "channel: cannot create a channel to %s", cfg->target);
        rpc_channel_destroy(ch);
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        ch->cqs[i] = grpc_completion_queue_create_for_next(NULL);
        if (pthread_create(&ch->th[i], NULL, rpc_cq_loop, ch->cqs[i]) != 0) {
            grpc_completion_queue_destroy(ch->cqs[i]);
            ch->cqs[i] = NULL;
            rpc_errf(err, errlen, "channel: cannot start thread %d", i);
            rpc_channel_destroy(ch);
            return NULL;
        }
        pthread_setname_np(ch->th[i], "rpc-channel"); /* names show in top -H, perf, gdb */
        ch->nstarted++;
    }
    ch->watch.fn = on_watch;
    pthread_mutex_lock(&ch->mu);
    arm_watch_locked(ch);
    pthread_mutex_unlock(&ch->mu);
    return ch;
}

void rpc_channel_destroy(struct rpc_channel *ch)
{
    if (!ch)
        return;
    pthread_mutex_lock(&ch->mu);
    ch->closing = true;
    for (struct cnode *n = ch->calls.next; n != &ch->calls; n = n->next)
        grpc_call_cancel(n->gc, NULL);
    while (ch->active > 0)
        pthread_cond_wait(&ch->cv, &ch->mu);
    pthread_mutex_unlock(&ch->mu);
    if (ch->gch)
        grpc_channel_destroy(ch->gch);
    rpc_tls_src_put(ch->tls_src);
    for (int i = 0; i < ch->nstarted; i++)
        grpc_completion_queue_shutdown(ch->cqs[i]);
    for (int i = 0; i < ch->nstarted; i++) {
        pthread_join(ch->th[i], NULL);
        grpc_completion_queue_destroy(ch->cqs[i]);
    }
    free(ch->cqs);
    free(ch->th);
    pthread_mutex_destroy(&ch->mu);
    pthread_cond_destroy(&ch->cv);
    free(ch);
    rpc_grpc_shutdown();
}
