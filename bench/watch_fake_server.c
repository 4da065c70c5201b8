/* watch-fake-server: a tiny etcd-shaped server (plaintext, one process, no Raft) that
 * watch_bench_check_test.sh points watch-bench at, to prove watch-bench's exactly-once check
 * counts what a broken server does: each mode breaks one delivery to the first watch of the
 * first stream at the fourth put, and nothing else.
 *
 *   watch-fake-server MODE     MODE: ok | drop | dup | mismatch | foreign | cancel
 *
 * It listens on 127.0.0.1 (a free port, printed as "port N" on stdout) and serves
 * KV/Range (an empty answer), KV/Put (the next revision; every watch of every open Watch stream
 * gets the put as a PUT event, sent under one lock so streams see revisions in order) and
 * Watch/Watch (each create answered `created` with the stream's next id, 0, 1, ...). Watches
 * are bounded (64 streams x 64 watches); it stops on SIGTERM or SIGINT.
 */
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rpc/rpc.h"
#include "services/proto/etcd/kv.pb-c.h"
#include "services/proto/etcd/rpc.pb-c.h"

#define MAX_STREAMS 64
#define MAX_WATCHES 64
#define FAULT_PUT 3 /* the fourth put (counting from 0) */

enum mode { M_OK, M_DROP, M_DUP, M_MISMATCH, M_FOREIGN, M_CANCEL };
static const char *const mode_names[] = {"ok", "drop", "dup", "mismatch", "foreign", "cancel"};

struct fstream {
    struct rpc_stream *s;
    int nwatch;
    int canceled; /* watch 0 canceled (mode cancel) */
    int used;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct fstream streams[MAX_STREAMS]; /* in order of opening */
static int64_t revision = 1;
static long long n_puts;
static enum mode mode;

static void header(Etcdserverpb__ResponseHeader *h)
{
    h->cluster_id = 1;
    h->member_id = 1;
    h->revision = revision;
    h->raft_term = 1;
}

static void on_range(struct rpc_call *call, const ProtobufCMessage *req, void *ctx)
{
    (void)req;
    (void)ctx;
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    Etcdserverpb__RangeResponse r = ETCDSERVERPB__RANGE_RESPONSE__INIT;
    pthread_mutex_lock(&mu);
    header(&h);
    pthread_mutex_unlock(&mu);
    r.header = &h;
    rpc_call_reply_msg(call, &r.base);
}

/* Sends one WatchResponse with one PUT event of kv to watch id on s. */
static void send_event(struct rpc_stream *s, int64_t id, Mvccpb__KeyValue *kv)
{
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    header(&h);
    Mvccpb__Event ev = MVCCPB__EVENT__INIT;
    ev.type = MVCCPB__EVENT__EVENT_TYPE__PUT;
    ev.kv = kv;
    Mvccpb__Event *evs[1] = {&ev};
    Etcdserverpb__WatchResponse r = ETCDSERVERPB__WATCH_RESPONSE__INIT;
    r.header = &h;
    r.watch_id = id;
    r.n_events = 1;
    r.events = evs;
    rpc_stream_send_msg(s, &r.base);
}

static void on_put(struct rpc_call *call, const ProtobufCMessage *req, void *ctx)
{
    (void)ctx;
    const Etcdserverpb__PutRequest *p = (const Etcdserverpb__PutRequest *)req;
    pthread_mutex_lock(&mu);
    int64_t rev = ++revision;
    long long n = n_puts++;
    Mvccpb__KeyValue kv = MVCCPB__KEY_VALUE__INIT;
    kv.key = p->key;
    kv.value = p->value;
    kv.create_revision = rev;
    kv.mod_revision = rev;
    kv.version = 1;
    bool first = true;
    for (int i = 0; i < MAX_STREAMS; i++) {
        struct fstream *f = &streams[i];
        if (!f->used)
            continue;
        for (int w = 0; w < f->nwatch; w++) {
            bool target = first && w == 0 && n == FAULT_PUT;
            if (first && w == 0 && f->canceled)
                continue;
            if (target && mode == M_DROP)
                continue;
            if (target && mode == M_MISMATCH) {
                Mvccpb__KeyValue bad = kv;
                bad.version = 2;
                send_event(f->s, w, &bad);
                continue;
            }
            send_event(f->s, w, &kv);
            if (target && mode == M_DUP)
                send_event(f->s, w, &kv);
            if (target && mode == M_FOREIGN) {
                Mvccpb__KeyValue other = kv;
                other.key.data = (uint8_t *)"/elsewhere/1";
                other.key.len = strlen("/elsewhere/1");
                send_event(f->s, w, &other);
            }
            if (target && mode == M_CANCEL) {
                Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
                header(&h);
                Etcdserverpb__WatchResponse r = ETCDSERVERPB__WATCH_RESPONSE__INIT;
                r.header = &h;
                r.watch_id = w;
                r.canceled = 1;
                r.cancel_reason = "fake-server: canceled on purpose";
                rpc_stream_send_msg(f->s, &r.base);
                f->canceled = 1;
            }
        }
        first = false;
    }
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    header(&h);
    pthread_mutex_unlock(&mu);
    Etcdserverpb__PutResponse r = ETCDSERVERPB__PUT_RESPONSE__INIT;
    r.header = &h;
    rpc_call_reply_msg(call, &r.base);
}

static void *w_open(struct rpc_stream *s, void *ctx)
{
    (void)ctx;
    pthread_mutex_lock(&mu);
    struct fstream *f = NULL;
    for (int i = 0; i < MAX_STREAMS && !f; i++)
        if (!streams[i].used)
            f = &streams[i];
    if (f)
        *f = (struct fstream){.s = s, .used = 1};
    pthread_mutex_unlock(&mu);
    if (!f)
        rpc_stream_finish(s, GRPC_STATUS_RESOURCE_EXHAUSTED, "fake-server: too many streams");
    return f;
}

static void w_message(struct rpc_stream *s, const uint8_t *data, size_t len, void *user)
{
    struct fstream *f = user;
    Etcdserverpb__WatchRequest *req = (Etcdserverpb__WatchRequest *)rpc_msg_unpack(
        &etcdserverpb__watch_request__descriptor, data, len);
    if (!f || !req)
        goto out;
    if (req->request_union_case == ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST) {
        pthread_mutex_lock(&mu);
        Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
        header(&h);
        Etcdserverpb__WatchResponse r = ETCDSERVERPB__WATCH_RESPONSE__INIT;
        r.header = &h;
        if (f->nwatch < MAX_WATCHES) {
            r.watch_id = f->nwatch++;
            r.created = 1;
        } else {
            r.watch_id = -1;
            r.created = 1;
            r.canceled = 1;
            r.cancel_reason = "fake-server: too many watches";
        }
        rpc_stream_send_msg(s, &r.base);
        pthread_mutex_unlock(&mu);
    }
out:
    if (req)
        protobuf_c_message_free_unpacked(&req->base, NULL);
}

static void w_close(struct rpc_stream *s, grpc_status_code status, void *user)
{
    (void)status;
    struct fstream *f = user;
    if (!f)
        return;
    pthread_mutex_lock(&mu);
    f->used = 0;
    rpc_stream_finish(s, GRPC_STATUS_OK, "");
    pthread_mutex_unlock(&mu);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: watch-fake-server ok|drop|dup|mismatch|foreign|cancel\n");
        return 2;
    }
    int m = -1;
    for (int i = 0; i < (int)(sizeof mode_names / sizeof mode_names[0]); i++)
        if (!strcmp(argv[1], mode_names[i]))
            m = i;
    if (m < 0) {
        fprintf(stderr, "watch-fake-server: unknown mode '%s'\n", argv[1]);
        return 2;
    }
    mode = (enum mode)m;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL); /* before gRPC starts its threads */
    char err[256];
    struct rpc_server_config cfg = {.listen = "127.0.0.1:0", .insecure = true};
    struct rpc_server *srv = rpc_server_create(&cfg, err, sizeof err);
    if (!srv) {
        fprintf(stderr, "watch-fake-server: %s\n", err);
        return 1;
    }
    static const struct rpc_stream_handler wh = {
        .on_open = w_open, .on_message = w_message, .on_close = w_close};
    if (rpc_server_register_unary_msg(srv, "/etcdserverpb.KV/Range",
                                      &etcdserverpb__range_request__descriptor, on_range, NULL) ||
        rpc_server_register_unary_msg(srv, "/etcdserverpb.KV/Put",
                                      &etcdserverpb__put_request__descriptor, on_put, NULL) ||
        rpc_server_register_stream(srv, "/etcdserverpb.Watch/Watch", &wh, NULL) ||
        rpc_server_start(srv)) {
        fprintf(stderr, "watch-fake-server: cannot start\n");
        rpc_server_shutdown(srv, 0);
        return 1;
    }
    printf("port %d\n", rpc_server_port(srv));
    fflush(stdout);
    int sig;
    sigwait(&set, &sig);
    rpc_server_shutdown(srv, 1000);
    return 0;
}
