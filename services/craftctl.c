/* craftctl: craft's operator tool. Reads and writes use the etcd v3 KV API (etcdctl works too);
 * status uses craft's own craft.node.Node/Status.
 *
 *   craftctl [--endpoints URL[,URL...]] [--cacert F --cert F --key F | --insecure] CMD ...
 *     put KEY VALUE        write through the first endpoint (a follower forwards to the leader)
 *     get KEY              linearizable read from the first endpoint
 *     status               one line per endpoint: name, role, term, leader, commit, applied
 *     load N INFLIGHT [VALUE_BYTES]
 *                          N pipelined writes, INFLIGHT at a time, to the first endpoint;
 *                          prints writes/s and latency percentiles
 *
 * Exit status: 0 ok, 1 the request failed, 2 bad usage. Errors name the endpoint and the gRPC
 * status. Endpoints default to https://127.0.0.1:2379.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rpc/rpc.h"
#include "services/cluster.h"
#include "services/proto/etcd/rpc.pb-c.h"
#include "services/proto/nodepb.pb-c.h"

#define MAX_EP 16
#define DEADLINE_MS 10000
#define MAX_REDIRECTS 5

struct opts {
    struct rpc_tls tls;
    bool insecure;
    char *eps[MAX_EP];
    int n_eps;
};

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int usage(void)
{
    fprintf(stderr,
            "usage: craftctl [--endpoints URL,...] [--cacert F --cert F --key F | --insecure]\n"
            "                put KEY VALUE | get KEY | status | load N INFLIGHT [VALUE_BYTES]\n");
    return 2;
}

static struct rpc_channel *dial(const struct opts *o, const char *url, char *err, size_t errlen)
{
    struct cluster_url u;
    if (cluster_parse_url(url, &u, err, errlen) != 0)
        return NULL;
    if (u.tls == o->insecure) {
        snprintf(err, errlen, "%s: use https:// with certificates, or http:// with --insecure", url);
        return NULL;
    }
    char target[CLUSTER_HOST_MAX + 16];
    cluster_url_target(&u, target, sizeof target);
    struct rpc_channel_config cc = {
        .target = target,
        .tls = o->insecure ? NULL : &o->tls,
        .insecure = o->insecure,
        .threads = 1,
    };
    return rpc_channel_create(&cc, err, errlen);
}

/* Blocking call on url; 0 with *resp on OK, else prints the failure and returns 1. */
static int call(const struct opts *o, const char *url, const char *method, const ProtobufCMessage *req,
                const ProtobufCMessageDescriptor *desc, ProtobufCMessage **resp)
{
    char err[512];
    struct rpc_channel *ch = dial(o, url, err, sizeof err);
    if (!ch) {
        fprintf(stderr, "craftctl: %s\n", err);
        return 1;
    }
    struct rpc_result res;
    rpc_channel_call_msg(ch, method, req, desc, DEADLINE_MS, resp, &res);
    rpc_channel_destroy(ch);
    int rc = 0;
    if (res.status != GRPC_STATUS_OK) {
        fprintf(stderr, "craftctl: %s: %s (gRPC status %d)\n", url, res.message, res.status);
        rc = 1;
    }
    rpc_result_free(&res);
    return rc;
}

static int cmd_put(const struct opts *o, const char *key, const char *val)
{
    Etcdserverpb__PutRequest req = ETCDSERVERPB__PUT_REQUEST__INIT;
    req.key.data = (uint8_t *)key;
    req.key.len = strlen(key);
    req.value.data = (uint8_t *)val;
    req.value.len = strlen(val);
    ProtobufCMessage *resp = NULL;
    if (call(o, o->eps[0], "/etcdserverpb.KV/Put", &req.base, &etcdserverpb__put_response__descriptor,
             &resp) != 0)
        return 1;
    Etcdserverpb__PutResponse *r = (Etcdserverpb__PutResponse *)resp;
    printf("OK revision=%lld\n", (long long)(r->header ? r->header->revision : 0));
    protobuf_c_message_free_unpacked(resp, NULL);
    return 0;
}

static int cmd_get(const struct opts *o, const char *key)
{
    Etcdserverpb__RangeRequest req = ETCDSERVERPB__RANGE_REQUEST__INIT;
    req.key.data = (uint8_t *)key;
    req.key.len = strlen(key);
    ProtobufCMessage *resp = NULL;
    if (call(o, o->eps[0], "/etcdserverpb.KV/Range", &req.base,
             &etcdserverpb__range_response__descriptor, &resp) != 0)
        return 1;
    Etcdserverpb__RangeResponse *r = (Etcdserverpb__RangeResponse *)resp;
    int rc = r->n_kvs ? 0 : 1;
    if (r->n_kvs)
        printf("%.*s\n", (int)r->kvs[0]->value.len, (const char *)r->kvs[0]->value.data);
    else
        fprintf(stderr, "craftctl: key not found\n");
    protobuf_c_message_free_unpacked(resp, NULL);
    return rc;
}

static const char *role_name(uint32_t r)
{
    static const char *names[] = {"follower", "pre-candidate", "candidate", "leader"};
    return r < 4 ? names[r] : "?";
}

static int cmd_status(const struct opts *o)
{
    int rc = 0;
    for (int i = 0; i < o->n_eps; i++) {
        Craft__Node__StatusRequest req = CRAFT__NODE__STATUS_REQUEST__INIT;
        ProtobufCMessage *resp = NULL;
        if (call(o, o->eps[i], "/craft.node.Node/Status", &req.base,
                 &craft__node__status_reply__descriptor, &resp) != 0) {
            rc = 1;
            continue;
        }
        Craft__Node__StatusReply *r = (Craft__Node__StatusReply *)resp;
        printf("%s, %s, id=%016llx, %s, term=%llu, leader=%s, commit=%llu, applied=%llu, "
               "revision=%lld\n",
               o->eps[i], r->name, (unsigned long long)r->member_id, role_name(r->role),
               (unsigned long long)r->term, *r->leader_name ? r->leader_name : "none",
               (unsigned long long)r->commit_index, (unsigned long long)r->applied_index,
               (long long)r->revision);
        protobuf_c_message_free_unpacked(resp, NULL);
    }
    return rc;
}

/* ---- load: pipelined writes ------------------------------------------------------------ */

struct load {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct rpc_channel *ch;
    long total, issued, done, failed, inflight, window;
    int64_t *lat; /* per write, microseconds */
    uint8_t *value;
    size_t vlen;
    char first_error[320];
};

struct load_call {
    struct load *l;
    long seq;
    int64_t start;
};

static void load_issue(struct load *l);

static void load_done(struct rpc_result *res, void *arg)
{
    struct load_call *c = arg;
    struct load *l = c->l;
    int64_t lat = now_us() - c->start;
    pthread_mutex_lock(&l->mu);
    l->lat[c->seq] = lat;
    l->done++;
    l->inflight--;
    if (res->status != GRPC_STATUS_OK) {
        if (!l->failed++)
            snprintf(l->first_error, sizeof l->first_error, "%.256s (status %d)", res->message,
                     res->status);
    }
    pthread_mutex_unlock(&l->mu);
    free(c);
    load_issue(l);
    pthread_cond_broadcast(&l->cv);
}

/* Issues writes until INFLIGHT are outstanding or all are issued. */
static void load_issue(struct load *l)
{
    for (;;) {
        pthread_mutex_lock(&l->mu);
        if (l->issued >= l->total || l->inflight >= l->window) {
            pthread_mutex_unlock(&l->mu);
            return;
        }
        long seq = l->issued++;
        l->inflight++;
        pthread_mutex_unlock(&l->mu);

        char key[32];
        snprintf(key, sizeof key, "load/%08ld", seq);
        Etcdserverpb__PutRequest req = ETCDSERVERPB__PUT_REQUEST__INIT;
        req.key.data = (uint8_t *)key;
        req.key.len = strlen(key);
        req.value.data = l->value;
        req.value.len = l->vlen;
        uint8_t *buf;
        size_t len;
        struct load_call *c = malloc(sizeof *c);
        int rc = c && rpc_msg_pack(&req.base, &buf, &len) == 0 ? 0 : -1;
        if (rc == 0) {
            *c = (struct load_call){l, seq, now_us()};
            rc = rpc_channel_call_async(l->ch, "/etcdserverpb.KV/Put", buf, len, DEADLINE_MS,
                                        load_done, c);
            free(buf);
        }
        if (rc != 0) {
            free(c);
            pthread_mutex_lock(&l->mu);
            l->inflight--;
            l->done++;
            if (!l->failed++)
                snprintf(l->first_error, sizeof l->first_error, "cannot start a call");
            pthread_mutex_unlock(&l->mu);
            pthread_cond_broadcast(&l->cv);
        }
    }
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static int cmd_load(const struct opts *o, long n, long inflight, long vbytes)
{
    char err[512];
    const char *url = o->eps[0];
    struct load l = {.total = n, .window = inflight, .vlen = (size_t)vbytes};
    pthread_mutex_init(&l.mu, NULL);
    pthread_cond_init(&l.cv, NULL);
    l.lat = calloc((size_t)n, sizeof *l.lat);
    l.value = malloc((size_t)vbytes + 1);
    if (!l.lat || !l.value) {
        fprintf(stderr, "craftctl: out of memory\n");
        return 1;
    }
    memset(l.value, 'x', (size_t)vbytes);
    l.ch = dial(o, url, err, sizeof err);
    if (!l.ch) {
        fprintf(stderr, "craftctl: %s\n", err);
        return 1;
    }
    int64_t t0 = now_us();
    load_issue(&l);
    pthread_mutex_lock(&l.mu);
    while (l.done < l.total)
        pthread_cond_wait(&l.cv, &l.mu);
    pthread_mutex_unlock(&l.mu);
    double secs = (double)(now_us() - t0) / 1e6;
    rpc_channel_destroy(l.ch);
    qsort(l.lat, (size_t)n, sizeof *l.lat, cmp_i64);
    printf("load: %ld writes of %ld bytes, %ld in flight, to %s\n", n, vbytes, inflight, url);
    printf("load: %.0f writes/s, p50 %.2f ms, p99 %.2f ms, max %.2f ms, %ld failed%s%s\n",
           (double)n / secs, (double)l.lat[n / 2] / 1000.0, (double)l.lat[n * 99 / 100] / 1000.0,
           (double)l.lat[n - 1] / 1000.0, l.failed, l.failed ? ": " : "", l.first_error);
    free(l.lat);
    free(l.value);
    return l.failed ? 1 : 0;
}

int main(int argc, char **argv)
{
    struct opts o = {0};
    int i = 1;
    for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "--insecure")) {
            o.insecure = true;
            continue;
        }
        if (i + 1 >= argc)
            return usage();
        const char *v = argv[++i];
        if (!strcmp(f, "--endpoints")) {
            /* Split in place (argv is writable): nothing to free. */
            char *save = NULL;
            for (char *e = strtok_r(argv[i], ",", &save); e && o.n_eps < MAX_EP;
                 e = strtok_r(NULL, ",", &save))
                o.eps[o.n_eps++] = e;
        } else if (!strcmp(f, "--cacert")) {
            o.tls.ca_file = v;
        } else if (!strcmp(f, "--cert")) {
            o.tls.cert_file = v;
        } else if (!strcmp(f, "--key")) {
            o.tls.key_file = v;
        } else {
            fprintf(stderr, "craftctl: unknown flag %s\n", f);
            return usage();
        }
    }
    if (o.n_eps == 0)
        o.eps[o.n_eps++] = "https://127.0.0.1:2379";
    if (!o.insecure && !o.tls.ca_file) {
        fprintf(stderr, "craftctl: --cacert (and --cert/--key) are required, or --insecure\n");
        return 2;
    }
    if (i >= argc)
        return usage();
    const char *cmd = argv[i++];
    int nargs = argc - i;
    if (!strcmp(cmd, "put") && nargs == 2)
        return cmd_put(&o, argv[i], argv[i + 1]);
    if (!strcmp(cmd, "get") && nargs == 1)
        return cmd_get(&o, argv[i]);
    if (!strcmp(cmd, "status") && nargs == 0)
        return cmd_status(&o);
    if (!strcmp(cmd, "load") && (nargs == 2 || nargs == 3)) {
        long n = atol(argv[i]), inflight = atol(argv[i + 1]);
        long vb = nargs == 3 ? atol(argv[i + 2]) : 256;
        if (n < 1 || n > 100000000 || inflight < 1 || inflight > 65536 || vb < 0 || vb > (1 << 20)) {
            fprintf(stderr, "craftctl: load N (1..1e8) INFLIGHT (1..65536) [VALUE_BYTES (0..1MiB)]\n");
            return 2;
        }
        return cmd_load(&o, n, inflight, vb);
    }
    return usage();
}
