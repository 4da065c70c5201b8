/* forward.c: batched write forwarding over Peer.Forwards (see forward.h for the contract).
 *
 * Locks: the member slots' ids have a read-write lock (f->tab_mu: written only by
 * fwd_set_cluster); each member's forwarding state (struct fwd_out) has a mutex, taken under
 * tab_mu; each accepted stream on the leader (struct fwd_in) has one. They are taken before rpc's
 * own locks (sends, cancel, finish) and never while calling done or propose, so callbacks may call
 * back into this module. A slot lives as long as the fwd: a member that leaves the table gives
 * its slot back (its stream retired first), and a stream's late callbacks find their slot's
 * mutex alive and their stream marked retired. */
#include "services/forward.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "services/backoff.h"
#include "services/clock.h"
#include "services/forward_req.h"
#include "services/proto/raftpb.pb-c.h"

#define FORWARDS_METHOD "/craft.raft.Peer/Forwards"
#define ITEM_OVERHEAD 32 /* protobuf framing of one item, over-estimated */
#define DEFAULT_MAX_ANSWER_BYTES (4u << 20)

/* ---- state ---------------------------------------------------------------------------- */

/* One forward waiting on a follower's stream. */
struct fwd_op {
    uint64_t id;
    int64_t deadline_ms;
    fwd_done_fn done;
    void *arg;
    struct fwd_op *next;                /* in a list of completions */
    int err;                            /* for the completion */
    const Craft__Raft__ForwardReplyItem *answer; /* for the completion, when err == 0 */
    size_t len;
    uint8_t cmd[];
};

/* One Peer.Forwards stream from this follower to one member. */
struct out_stream {
    atomic_int refs;   /* the out's while it is current, and rpc's until on_close */
    struct fwd_out *o;
    struct rpc_client_stream *st; /* NULL once given back */
    bool retired;      /* not current any more; its forwards have completed */
    bool writing;      /* one ForwardBatch is with rpc, not yet written */
    uint64_t next_id;  /* the next forward's id */
    uint64_t next_send; /* ids below were packed (or completed unsent) */
    struct fwd_op **slot; /* max_inflight; forward `id` waits in slot[id % max_inflight] */
    Craft__Raft__ForwardItem *items; /* max_batch_items, for packing */
    Craft__Raft__ForwardItem **itemp;
};

/* Forwarding from this member to one other member: one slot of f->out. */
struct fwd_out {
    struct fwd *f;
    uint64_t member; /* 0: a free slot (written under tab_mu and mu) */
    pthread_mutex_t mu;
    struct out_stream *cur; /* NULL: opened by the next submit, once the backoff is ready */
    int64_t opened_ms;      /* when the last stream was opened */
    struct backoff backoff;
};

/* One accepted Peer.Forwards stream on the leader. Every unanswered item holds a reference, so
 * the applier's late answers find it alive; st is cleared when the stream is finished, so
 * nothing is written to it after that. */
struct fwd_in {
    struct fwd *f;
    pthread_mutex_t mu;
    atomic_int refs; /* the stream's until on_close, and one per unanswered item */
    struct rpc_stream *st; /* NULL once finished */
    bool writing;
    int unanswered, queued;
    struct answer *head, *tail;
    Craft__Raft__ForwardReplyItem *items; /* max_batch_items, for packing */
    Craft__Raft__ForwardReplyItem **itemp;
};

struct fwd_item {
    struct fwd_in *in;
    uint64_t id;
};

/* An answer waiting to be packed (message and result copied behind it). */
struct answer {
    struct answer *next;
    uint64_t id, index;
    uint32_t code;
    size_t len;
    char *message;
    uint8_t data[];
};

struct fwd {
    struct peer *peer;
    uint64_t cluster_id;
    fwd_propose_fn propose;
    void *propose_ctx;
    int max_inflight, max_items;
    size_t max_bytes, max_answer;
    pthread_rwlock_t tab_mu; /* which member each slot serves */
    struct fwd_out out[CLUSTER_MAX_MEMBERS];

    /* Deadlines: a thread sleeps until the earliest one it knows of; a submit with an earlier
     * deadline wakes it. */
    pthread_mutex_t tmu;
    pthread_cond_t tcv; /* CLOCK_MONOTONIC */
    int64_t next_wake;
    atomic_bool stopping;
    bool timer_started;
    pthread_t timer;

    atomic_uint_fast64_t batches_sent, items_sent, batches_received, items_received;
    atomic_uint_fast64_t answers_sent, answer_batches_sent, streams_opened, streams_refused;
};

/* ---- follower side -------------------------------------------------------------------- */

static void complete(struct fwd_op *list)
{
    while (list) {
        struct fwd_op *op = list;
        list = op->next;
        struct fwd_answer a;
        const Craft__Raft__ForwardReplyItem *r = op->answer;
        if (op->err == FWD_OK)
            fwd_req_answer(r, &a);
        op->done(op->arg, op->err, op->err == FWD_OK ? &a : NULL);
        free(op);
    }
}

static void take(struct fwd_op **slot, int err, struct fwd_op **list)
{
    struct fwd_op *op = *slot;
    *slot = NULL;
    op->err = err;
    op->next = *list;
    *list = op;
}

static void out_stream_unref(struct out_stream *s)
{
    if (atomic_fetch_sub(&s->refs, 1) != 1)
        return;
    free(s->slot);
    free(s->items);
    free(s->itemp);
    free(s);
}

/* The stream is done for: every forward on it completes with err, the handle goes back to rpc,
 * and the next submit opens a new stream (after the backoff). Caller holds o->mu. */
static void retire(struct fwd_out *o, struct out_stream *s, int err, struct fwd_op **list)
{
    if (s->retired)
        return;
    s->retired = true;
    for (int i = 0; i < o->f->max_inflight; i++)
        if (s->slot[i])
            take(&s->slot[i], err, list);
    if (s->st)
        rpc_client_stream_cancel(s->st);
    s->st = NULL;
    if (o->cur == s) {
        o->cur = NULL;
        backoff_ended(&o->backoff, o->opened_ms, clock_now_ms());
        out_stream_unref(s);
    }
}

/* Packs what waits to be sent into one ForwardBatch, if no batch is being written. Caller holds
 * o->mu. */
static void out_flush(struct fwd_out *o, struct out_stream *s, struct fwd_op **list)
{
    struct fwd *f = o->f;
    if (s->retired || s->writing)
        return;
    size_t n = 0, bytes = 0;
    uint64_t id = s->next_send;
    for (; id < s->next_id && n < (size_t)f->max_items; id++) {
        struct fwd_op *op = s->slot[id % (uint64_t)f->max_inflight];
        if (!op || op->id != id)
            continue; /* completed (deadline) before it was sent */
        if (n && bytes + op->len + ITEM_OVERHEAD > f->max_bytes)
            break;
        craft__raft__forward_item__init(&s->items[n]);
        s->items[n].id = id;
        s->items[n].command.data = op->cmd;
        s->items[n].command.len = op->len;
        s->itemp[n] = &s->items[n];
        bytes += op->len + ITEM_OVERHEAD;
        n++;
    }
    s->next_send = id;
    if (!n)
        return;
    Craft__Raft__ForwardBatch b = CRAFT__RAFT__FORWARD_BATCH__INIT;
    b.cluster_id = f->cluster_id;
    b.n_items = n;
    b.items = s->itemp;
    uint8_t *buf;
    size_t len;
    int rc = rpc_msg_pack(&b.base, &buf, &len);
    /* Counted before the send, as the answers are (they may arrive before this returns). */
    atomic_fetch_add(&f->batches_sent, 1);
    atomic_fetch_add(&f->items_sent, n);
    if (rc == 0) {
        rc = rpc_client_stream_send(s->st, buf, len, 0);
        free(buf);
    }
    if (rc != 0) {
        atomic_fetch_sub(&f->batches_sent, 1);
        atomic_fetch_sub(&f->items_sent, n);
        retire(o, s, FWD_ENOLEADER, list);
        return;
    }
    s->writing = true;
}

static void os_message(struct rpc_client_stream *st, const uint8_t *data, size_t len, void *arg)
{
    (void)st;
    struct out_stream *s = arg;
    struct fwd_out *o = s->o;
    Craft__Raft__ForwardReplyBatch *b = fwd_req_reply_batch(data, len);
    struct fwd_op *list = NULL;
    pthread_mutex_lock(&o->mu);
    if (!b) {
        retire(o, s, FWD_ENOLEADER, &list); /* a leader we cannot understand */
    } else if (!s->retired) {
        for (size_t i = 0; i < b->n_items; i++) {
            uint64_t id = b->items[i]->id;
            struct fwd_op **slot = &s->slot[id % (uint64_t)o->f->max_inflight];
            if (id >= s->next_send || !*slot || (*slot)->id != id)
                continue; /* not sent by us, or completed already (deadline) */
            (*slot)->answer = b->items[i];
            take(slot, FWD_OK, &list);
        }
    }
    pthread_mutex_unlock(&o->mu);
    complete(list);
    if (b)
        protobuf_c_message_free_unpacked(&b->base, NULL);
}

static void os_sent(struct rpc_client_stream *st, void *arg)
{
    (void)st;
    struct out_stream *s = arg;
    struct fwd_op *list = NULL;
    pthread_mutex_lock(&s->o->mu);
    s->writing = false;
    out_flush(s->o, s, &list);
    pthread_mutex_unlock(&s->o->mu);
    complete(list);
}

static void os_close(struct rpc_client_stream *st, grpc_status_code code, const char *msg,
                     void *arg)
{
    (void)st, (void)code, (void)msg;
    struct out_stream *s = arg;
    struct fwd_op *list = NULL;
    pthread_mutex_lock(&s->o->mu);
    retire(s->o, s, FWD_ENOLEADER, &list);
    pthread_mutex_unlock(&s->o->mu);
    complete(list);
    out_stream_unref(s);
}

/* The current stream to o, opened if there is none and the backoff allows. Caller holds o->mu. */
static struct out_stream *out_stream_get(struct fwd_out *o)
{
    struct fwd *f = o->f;
    if (o->cur)
        return o->cur;
    int64_t now = clock_now_ms();
    if (!backoff_ready(&o->backoff, now))
        return NULL;
    struct out_stream *s = calloc(1, sizeof *s);
    if (s) {
        s->slot = calloc((size_t)f->max_inflight, sizeof *s->slot);
        s->items = calloc((size_t)f->max_items, sizeof *s->items);
        s->itemp = calloc((size_t)f->max_items, sizeof *s->itemp);
    }
    static const struct rpc_client_stream_handler h = {os_message, os_close, os_sent};
    if (s && s->slot && s->items && s->itemp) {
        /* Ready before the open: a stream that fails at once runs os_close on a channel thread
         * right away (which then waits for o->mu). */
        atomic_init(&s->refs, 2);
        s->o = o;
        s->next_id = s->next_send = 1;
        s->st = peer_stream_open(f->peer, o->member, FORWARDS_METHOD, &h, s);
    }
    if (!s || !s->st) {
        if (s) {
            atomic_init(&s->refs, 1);
            out_stream_unref(s);
        }
        /* Charged like the end of the last stream, as it always was here (peer.c counts a
         * failed open as a plain failure): after a stream that lived longer than
         * BACKOFF_GOOD_MS, or before any, failed opens retry after BACKOFF_MIN_MS each time. */
        backoff_ended(&o->backoff, o->opened_ms, now);
        return NULL;
    }
    o->cur = s;
    o->opened_ms = now;
    atomic_fetch_add(&f->streams_opened, 1);
    return s;
}

static void timer_note(struct fwd *f, int64_t deadline)
{
    pthread_mutex_lock(&f->tmu);
    if (deadline < f->next_wake) {
        f->next_wake = deadline;
        pthread_cond_signal(&f->tcv);
    }
    pthread_mutex_unlock(&f->tmu);
}

int fwd_submit(struct fwd *f, uint64_t leader, const uint8_t *cmd, size_t len, int deadline_ms,
               fwd_done_fn done, void *arg)
{
    if (!leader)
        return FWD_ENOLEADER;
    struct fwd_op *op = malloc(sizeof *op + len);
    if (!op)
        return FWD_ENOMEM;
    *op = (struct fwd_op){.deadline_ms = clock_now_ms() + deadline_ms, .done = done, .arg = arg,
                          .len = len};
    memcpy(op->cmd, cmd, len);
    int64_t deadline = op->deadline_ms;
    struct fwd_op *list = NULL;
    int rc = FWD_OK;
    pthread_rwlock_rdlock(&f->tab_mu);
    struct fwd_out *o = NULL;
    for (size_t i = 0; i < CLUSTER_MAX_MEMBERS && !o; i++)
        if (f->out[i].member == leader)
            o = &f->out[i];
    if (!o) {
        pthread_rwlock_unlock(&f->tab_mu);
        free(op);
        return FWD_ENOLEADER;
    }
    pthread_mutex_lock(&o->mu);
    bool stopping = atomic_load(&f->stopping);
    struct out_stream *s = stopping ? NULL : out_stream_get(o);
    struct fwd_op **slot = s ? &s->slot[s->next_id % (uint64_t)f->max_inflight] : NULL;
    if (!s) {
        rc = stopping ? FWD_ESHUTDOWN : FWD_ENOLEADER;
    } else if (*slot) {
        rc = FWD_EBUSY;
    } else {
        op->id = s->next_id++;
        *slot = op;
        out_flush(o, s, &list);
    }
    pthread_mutex_unlock(&o->mu);
    pthread_rwlock_unlock(&f->tab_mu);
    if (rc != FWD_OK) {
        free(op);
        return rc;
    }
    complete(list);
    timer_note(f, deadline);
    return FWD_OK;
}

/* Completes every forward past its deadline; returns the earliest deadline still waiting. */
static int64_t expire(struct fwd *f, int64_t now)
{
    int64_t next = INT64_MAX;
    struct fwd_op *list = NULL;
    pthread_rwlock_rdlock(&f->tab_mu);
    for (size_t i = 0; i < CLUSTER_MAX_MEMBERS; i++) {
        struct fwd_out *o = &f->out[i];
        pthread_mutex_lock(&o->mu);
        struct out_stream *s = o->cur;
        for (int k = 0; s && k < f->max_inflight; k++) {
            if (!s->slot[k])
                continue;
            if (s->slot[k]->deadline_ms <= now)
                take(&s->slot[k], FWD_ETIMEDOUT, &list);
            else if (s->slot[k]->deadline_ms < next)
                next = s->slot[k]->deadline_ms;
        }
        pthread_mutex_unlock(&o->mu);
    }
    pthread_rwlock_unlock(&f->tab_mu);
    complete(list);
    return next;
}

static void *timer_main(void *arg)
{
    struct fwd *f = arg;
    pthread_mutex_lock(&f->tmu);
    while (!atomic_load(&f->stopping)) {
        int64_t now = clock_now_ms();
        if (now < f->next_wake) {
            if (f->next_wake == INT64_MAX) {
                pthread_cond_wait(&f->tcv, &f->tmu);
            } else {
                struct timespec until = {(time_t)(f->next_wake / 1000),
                                         (long)(f->next_wake % 1000) * 1000000L};
                pthread_cond_timedwait(&f->tcv, &f->tmu, &until);
            }
            continue;
        }
        f->next_wake = INT64_MAX; /* submits from here on lower it again */
        pthread_mutex_unlock(&f->tmu);
        int64_t next = expire(f, now);
        pthread_mutex_lock(&f->tmu);
        if (next < f->next_wake)
            f->next_wake = next;
    }
    pthread_mutex_unlock(&f->tmu);
    return NULL;
}

/* ---- leader side ---------------------------------------------------------------------- */

static void in_unref(struct fwd_in *in)
{
    if (atomic_fetch_sub(&in->refs, 1) != 1)
        return;
    while (in->head) {
        struct answer *a = in->head;
        in->head = a->next;
        free(a);
    }
    pthread_mutex_destroy(&in->mu);
    free(in->items);
    free(in->itemp);
    free(in);
}

/* Finishes the stream once; queued answers are dropped. Caller holds in->mu. */
static void in_end(struct fwd_in *in, grpc_status_code code, const char *msg)
{
    if (!in->st)
        return;
    rpc_stream_finish(in->st, code, msg);
    in->st = NULL;
    while (in->head) {
        struct answer *a = in->head;
        in->head = a->next;
        free(a);
    }
    in->tail = NULL;
    in->queued = 0;
}

/* Packs queued answers into one ForwardReplyBatch, if none is being written. Caller holds
 * in->mu. */
static void in_flush(struct fwd_in *in)
{
    struct fwd *f = in->f;
    if (!in->st || in->writing || !in->head)
        return;
    size_t n = 0, bytes = 0;
    struct answer *a = in->head;
    for (; a && n < (size_t)f->max_items; a = a->next) {
        if (n && bytes + a->len + ITEM_OVERHEAD > f->max_bytes)
            break;
        Craft__Raft__ForwardReplyItem *r = &in->items[n];
        craft__raft__forward_reply_item__init(r);
        r->id = a->id;
        r->code = a->code;
        r->message = a->message;
        r->result.data = a->data;
        r->result.len = a->len;
        r->index = a->index;
        in->itemp[n++] = r;
        bytes += a->len + strlen(a->message) + ITEM_OVERHEAD;
    }
    Craft__Raft__ForwardReplyBatch b = CRAFT__RAFT__FORWARD_REPLY_BATCH__INIT;
    b.n_items = n;
    b.items = in->itemp;
    /* Counted before the send: the follower may complete these before this thread returns, and
     * whoever has seen an answer arrive must also see it counted here. */
    atomic_fetch_add(&f->answer_batches_sent, 1);
    atomic_fetch_add(&f->answers_sent, n);
    int rc = rpc_stream_send_msg(in->st, &b.base);
    while (in->head != a) { /* sent or not, these are done with */
        struct answer *d = in->head;
        in->head = d->next;
        free(d);
        in->queued--;
    }
    if (!in->head)
        in->tail = NULL;
    if (rc != 0) {
        atomic_fetch_sub(&f->answer_batches_sent, 1);
        atomic_fetch_sub(&f->answers_sent, n);
        /* The stream is dead or we are out of memory: ending it makes the follower fail what
         * waits on it at once rather than at each deadline. */
        in_end(in, GRPC_STATUS_UNAVAILABLE, "cannot send forward answers");
        return;
    }
    in->writing = true;
}

static struct answer *answer_new(struct fwd *f, uint64_t id, const struct fwd_answer *ans)
{
    struct fwd_answer big = {GRPC_STATUS_RESOURCE_EXHAUSTED,
                             "craft: the result is too large to forward", NULL, 0, 0};
    if (ans->len > f->max_answer)
        ans = &big;
    const char *msg = ans->message ? ans->message : "";
    size_t mlen = strlen(msg);
    struct answer *a = malloc(sizeof *a + ans->len + mlen + 1);
    if (!a)
        return NULL;
    *a = (struct answer){.id = id, .index = ans->index, .code = ans->code, .len = ans->len};
    if (ans->len)
        memcpy(a->data, ans->result, ans->len);
    a->message = (char *)a->data + ans->len;
    memcpy(a->message, msg, mlen + 1);
    return a;
}

void fwd_reply(struct fwd_item *item, const struct fwd_answer *ans)
{
    struct fwd_in *in = item->in;
    struct answer *a = answer_new(in->f, item->id, ans);
    free(item);
    pthread_mutex_lock(&in->mu);
    in->unanswered--;
    if (!in->st) {
        free(a); /* the stream ended: nobody to tell */
    } else if (!a) {
        in_end(in, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    } else {
        if (in->tail)
            in->tail->next = a;
        else
            in->head = a;
        in->tail = a;
        in->queued++;
        in_flush(in);
    }
    pthread_mutex_unlock(&in->mu);
    in_unref(in);
}

static void *in_open(struct rpc_stream *s, void *ctx)
{
    struct fwd *f = ctx;
    struct fwd_in *in = calloc(1, sizeof *in);
    if (in) {
        in->items = calloc((size_t)f->max_items, sizeof *in->items);
        in->itemp = calloc((size_t)f->max_items, sizeof *in->itemp);
    }
    if (!in || !in->items || !in->itemp) {
        if (in) {
            free(in->items);
            free(in->itemp);
            free(in);
        }
        rpc_stream_finish(s, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return NULL;
    }
    in->f = f;
    pthread_mutex_init(&in->mu, NULL);
    atomic_init(&in->refs, 1);
    in->st = s;
    if (!peer_stream_member(f->peer, s)) {
        atomic_fetch_add(&f->streams_refused, 1);
        pthread_mutex_lock(&in->mu);
        in_end(in, GRPC_STATUS_PERMISSION_DENIED, "only cluster members may forward writes");
        pthread_mutex_unlock(&in->mu);
    }
    return in;
}

static void in_end_locked(struct fwd_in *in, grpc_status_code code, const char *msg)
{
    pthread_mutex_lock(&in->mu);
    in_end(in, code, msg);
    pthread_mutex_unlock(&in->mu);
}

static void in_message(struct rpc_stream *s, const uint8_t *data, size_t len, void *user)
{
    (void)s;
    struct fwd_in *in = user;
    if (!in)
        return;
    struct fwd *f = in->f;
    int code;
    const char *msg;
    /* Malformed or of another cluster: the stream ends (in_end does nothing once it has). */
    Craft__Raft__ForwardBatch *b = fwd_req_batch(data, len, f->cluster_id, &code, &msg);
    if (!b) {
        in_end_locked(in, (grpc_status_code)code, msg);
        return;
    }
    pthread_mutex_lock(&in->mu);
    if (!in->st) {
        pthread_mutex_unlock(&in->mu);
    } else if (fwd_req_batch_room((size_t)(in->unanswered + in->queued), b->n_items,
                                  (size_t)f->max_inflight, &code, &msg) != 0) {
        in_end(in, (grpc_status_code)code, msg);
        pthread_mutex_unlock(&in->mu);
    } else {
        /* Each item holds the context until it is answered (by fwd_reply, maybe right away). */
        in->unanswered += (int)b->n_items;
        atomic_fetch_add(&in->refs, (int)b->n_items);
        pthread_mutex_unlock(&in->mu);
        atomic_fetch_add(&f->batches_received, 1);
        atomic_fetch_add(&f->items_received, b->n_items);
        for (size_t i = 0; i < b->n_items; i++) {
            struct fwd_item *it = malloc(sizeof *it);
            if (!it) {
                /* The follower learns at once (the stream ends) instead of at its deadline. */
                pthread_mutex_lock(&in->mu);
                in->unanswered--;
                in_end(in, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
                pthread_mutex_unlock(&in->mu);
                in_unref(in);
                continue;
            }
            *it = (struct fwd_item){in, b->items[i]->id};
            f->propose(f->propose_ctx, it, b->items[i]->command.data, b->items[i]->command.len);
        }
    }
    protobuf_c_message_free_unpacked(&b->base, NULL);
}

static void in_sent(struct rpc_stream *s, void *user)
{
    (void)s;
    struct fwd_in *in = user;
    if (!in)
        return;
    pthread_mutex_lock(&in->mu);
    in->writing = false;
    in_flush(in);
    pthread_mutex_unlock(&in->mu);
}

static void in_close(struct rpc_stream *s, grpc_status_code status, void *user)
{
    (void)s, (void)status;
    struct fwd_in *in = user;
    if (!in)
        return;
    in_end_locked(in, GRPC_STATUS_OK, NULL);
    in_unref(in);
}

/* ---- lifecycle ------------------------------------------------------------------------ */

struct fwd *fwd_create(const struct fwd_config *cfg)
{
    struct fwd *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    f->peer = cfg->peer;
    f->cluster_id = peer_cluster_id(cfg->peer);
    f->propose = cfg->propose;
    f->propose_ctx = cfg->propose_ctx;
    f->max_inflight = cfg->max_inflight > 0 ? cfg->max_inflight : FWD_DEFAULT_MAX_INFLIGHT;
    f->max_items = cfg->max_batch_items > 0 ? cfg->max_batch_items : FWD_DEFAULT_MAX_BATCH_ITEMS;
    f->max_bytes = cfg->max_batch_bytes ? cfg->max_batch_bytes : FWD_DEFAULT_MAX_BATCH_BYTES;
    f->max_answer = cfg->max_answer_bytes ? cfg->max_answer_bytes : DEFAULT_MAX_ANSWER_BYTES;
    pthread_rwlock_init(&f->tab_mu, NULL);
    for (size_t i = 0; i < CLUSTER_MAX_MEMBERS; i++) {
        f->out[i].f = f;
        pthread_mutex_init(&f->out[i].mu, NULL);
    }
    for (size_t i = 0; i < cfg->cluster->n && i < CLUSTER_MAX_MEMBERS; i++)
        f->out[i].member = cfg->cluster->members[i].id;
    pthread_mutex_init(&f->tmu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&f->tcv, &ca);
    pthread_condattr_destroy(&ca);
    f->next_wake = INT64_MAX;
    f->timer_started = pthread_create(&f->timer, NULL, timer_main, f) == 0;
    if (!f->timer_started) {
        fwd_destroy(f);
        return NULL;
    }
    return f;
}

void fwd_stop(struct fwd *f)
{
    atomic_store(&f->stopping, true);
    struct fwd_op *list = NULL;
    pthread_rwlock_rdlock(&f->tab_mu);
    for (size_t i = 0; i < CLUSTER_MAX_MEMBERS; i++) {
        struct fwd_out *o = &f->out[i];
        pthread_mutex_lock(&o->mu);
        if (o->cur)
            retire(o, o->cur, FWD_ESHUTDOWN, &list);
        pthread_mutex_unlock(&o->mu);
    }
    pthread_rwlock_unlock(&f->tab_mu);
    complete(list);
}

void fwd_set_cluster(struct fwd *f, const struct cluster *c)
{
    struct fwd_op *list = NULL;
    int64_t now = clock_now_ms();
    pthread_rwlock_wrlock(&f->tab_mu);
    /* Members that left: their forwards fail as if the stream broke, and the slot is free. */
    for (size_t i = 0; i < CLUSTER_MAX_MEMBERS; i++) {
        struct fwd_out *o = &f->out[i];
        if (!o->member || cluster_find_id(c, o->member))
            continue;
        pthread_mutex_lock(&o->mu);
        if (o->cur)
            retire(o, o->cur, FWD_ENOLEADER, &list);
        o->member = 0;
        backoff_reset(&o->backoff);
        pthread_mutex_unlock(&o->mu);
    }
    /* Members that joined take a free slot (there is one: a table has at most as many members
     * as there are slots). */
    for (size_t k = 0; k < c->n; k++) {
        uint64_t id = c->members[k].id;
        struct fwd_out *free_slot = NULL;
        bool known = false;
        for (size_t i = 0; i < CLUSTER_MAX_MEMBERS && !known; i++) {
            known = f->out[i].member == id;
            if (!f->out[i].member && !free_slot)
                free_slot = &f->out[i];
        }
        if (known || !free_slot)
            continue;
        pthread_mutex_lock(&free_slot->mu);
        free_slot->member = id;
        free_slot->opened_ms = now;
        backoff_reset(&free_slot->backoff);
        pthread_mutex_unlock(&free_slot->mu);
    }
    pthread_rwlock_unlock(&f->tab_mu);
    complete(list);
}

void fwd_destroy(struct fwd *f)
{
    if (!f)
        return;
    fwd_stop(f);
    pthread_mutex_lock(&f->tmu);
    pthread_cond_signal(&f->tcv);
    pthread_mutex_unlock(&f->tmu);
    if (f->timer_started)
        pthread_join(f->timer, NULL);
    for (size_t i = 0; i < CLUSTER_MAX_MEMBERS; i++)
        pthread_mutex_destroy(&f->out[i].mu);
    pthread_rwlock_destroy(&f->tab_mu);
    pthread_mutex_destroy(&f->tmu);
    pthread_cond_destroy(&f->tcv);
    free(f);
}

int fwd_register(struct fwd *f, struct rpc_server *peer_srv)
{
    static const struct rpc_stream_handler h = {in_open, in_message, in_close, in_sent};
    return rpc_server_register_stream(peer_srv, FORWARDS_METHOD, &h, f);
}

void fwd_stats_get(struct fwd *f, struct fwd_stats *out)
{
    out->batches_sent = atomic_load(&f->batches_sent);
    out->items_sent = atomic_load(&f->items_sent);
    out->batches_received = atomic_load(&f->batches_received);
    out->items_received = atomic_load(&f->items_received);
    out->answers_sent = atomic_load(&f->answers_sent);
    out->answer_batches_sent = atomic_load(&f->answer_batches_sent);
    out->streams_opened = atomic_load(&f->streams_opened);
    out->streams_refused = atomic_load(&f->streams_refused);
}
