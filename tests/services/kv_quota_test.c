/* kv_quota_test.c: the KV service's quota check (etcd's --quota-backend-bytes), on one member in
 * this process over plaintext loopback gRPC. Once the bytes in use plus a Put would pass the
 * quota, the Put is refused with "database space exceeded" before it enters the log (the log
 * does not grow: the store's full map, a per-entry error at apply, would have used an index);
 * Maintenance.Status reports the number the check used; a DeleteRange is still accepted, and
 * once a (physical) Compact has removed the history that still holds the deleted values, a Put
 * is accepted again - etcd's recovery from NOSPACE (delete, compact). A burst of Puts in flight together, with snapshots being
 * taken, gets OK or "database space exceeded" - never a failed state machine. */
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "rpc/rpc.h"
#include "services/kvstore/kv_store.h"
#include "services/proto/etcd/rpc.pb-c.h"
#include "services/server.h"

#define QUOTA (1u << 20) /* the smallest --quota-backend-bytes craftd accepts */
#define VLEN (64u << 10)

static char dir[64];
static struct craftd_config cfg;
static struct craft_server *srv;
static struct rpc_channel *ch;

/* Two loopback ports nobody listens on: the kernel's picks for port 0, both sockets held until
 * both are known so the two differ. */
static void pick_ports(int *a, int *b)
{
    int fd[2], *port[2] = {a, b};
    for (int i = 0; i < 2; i++) {
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof sa;
        fd[i] = socket(AF_INET, SOCK_STREAM, 0);
        cr_assert(fd[i] >= 0 && bind(fd[i], (struct sockaddr *)&sa, sizeof sa) == 0 &&
                  getsockname(fd[i], (struct sockaddr *)&sa, &len) == 0);
        *port[i] = ntohs(sa.sin_port);
    }
    close(fd[0]);
    close(fd[1]);
}

static bool is_leader(void)
{
    struct raft_node_status st;
    raft_node_status_get(craft_server_node(srv), &st);
    return st.core.role == RAFT_LEADER;
}

static void start(void)
{
    snprintf(dir, sizeof dir, "/tmp/kvquota.XXXXXX");
    cr_assert(mkdtemp(dir));
    int cport, pport;
    pick_ports(&cport, &pport);
    char lc[64], lp[64], cluster[96], data[96], quota[16], err[512];
    snprintf(lc, sizeof lc, "http://127.0.0.1:%d", cport);
    snprintf(lp, sizeof lp, "http://127.0.0.1:%d", pport);
    snprintf(cluster, sizeof cluster, "n1=%s", lp);
    snprintf(data, sizeof data, "%s/n1", dir);
    snprintf(quota, sizeof quota, "%u", QUOTA);
    const char *argv[] = {"craftd", "--name", "n1", "--data-dir", data,
                          "--listen-client-urls", lc, "--listen-peer-urls", lp,
                          "--initial-cluster", cluster, "--insecure-plaintext",
                          "--heartbeat-interval", "50", "--election-timeout", "300",
                          "--quota-backend-bytes", quota,
                          /* snapshots often: their read transactions keep pages in use */
                          "--snapshot-count", "8", "--snapshot-catchup-entries", "4"};
    cr_assert_eq(craftd_flags_parse((int)(sizeof argv / sizeof argv[0]), (char **)argv, &cfg, err,
                                    sizeof err),
                 0, "%s", err);
    srv = craft_server_start(&cfg, err, sizeof err);
    cr_assert(srv, "%s", err);
    char target[32];
    snprintf(target, sizeof target, "127.0.0.1:%d", cport);
    struct rpc_channel_config cc = {.target = target, .insecure = true, .wait_for_ready = true};
    ch = rpc_channel_create(&cc, err, sizeof err);
    cr_assert(ch, "%s", err);
    /* A single member elects itself after one election timeout; its role offers no event to
     * wait on, so poll it (bounded). */
    for (int i = 0; i < 500 && !is_leader(); i++)
        nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
    cr_assert(is_leader(), "the single member did not become leader");
}

static void stop(void)
{
    if (ch)
        rpc_channel_destroy(ch);
    ch = NULL;
    craft_server_stop(srv);
    srv = NULL;
    char cmd[96];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

/* A Put of n bytes of 'x'; the status, and etcd's message in msg. */
static grpc_status_code put(const char *key, size_t n, char *msg, size_t msglen)
{
    static uint8_t val[VLEN];
    memset(val, 'x', sizeof val);
    cr_assert_leq(n, sizeof val);
    Etcdserverpb__PutRequest req = ETCDSERVERPB__PUT_REQUEST__INIT;
    req.key.data = (uint8_t *)key;
    req.key.len = strlen(key);
    req.value.data = val;
    req.value.len = n;
    ProtobufCMessage *resp = NULL;
    struct rpc_result res;
    rpc_channel_call_msg(ch, "/etcdserverpb.KV/Put", &req.base,
                         &etcdserverpb__put_response__descriptor, 10000, &resp, &res);
    grpc_status_code st = res.status;
    snprintf(msg, msglen, "%s", res.message);
    rpc_result_free(&res);
    if (resp)
        protobuf_c_message_free_unpacked(resp, NULL);
    return st;
}

/* A call that must succeed; its decoded reply. */
static ProtobufCMessage *call_ok(const char *method, const ProtobufCMessage *req,
                                 const ProtobufCMessageDescriptor *resp_desc)
{
    ProtobufCMessage *resp = NULL;
    struct rpc_result res;
    rpc_channel_call_msg(ch, method, req, resp_desc, 10000, &resp, &res);
    cr_assert_eq(res.status, GRPC_STATUS_OK, "%s: %s", method, res.message);
    rpc_result_free(&res);
    return resp;
}

/* DeleteRange [key, end), which must succeed: how many keys it deleted. */
static int64_t delete_range(const char *key, const char *end)
{
    Etcdserverpb__DeleteRangeRequest del = ETCDSERVERPB__DELETE_RANGE_REQUEST__INIT;
    del.key.data = (uint8_t *)key;
    del.key.len = strlen(key);
    del.range_end.data = (uint8_t *)end;
    del.range_end.len = strlen(end);
    ProtobufCMessage *resp = call_ok("/etcdserverpb.KV/DeleteRange", &del.base,
                                     &etcdserverpb__delete_range_response__descriptor);
    int64_t n = ((Etcdserverpb__DeleteRangeResponse *)resp)->deleted;
    protobuf_c_message_free_unpacked(resp, NULL);
    return n;
}

/* Maintenance.Status, as etcdctl endpoint status asks it. */
static Etcdserverpb__StatusResponse *status(void)
{
    Etcdserverpb__StatusRequest req = ETCDSERVERPB__STATUS_REQUEST__INIT;
    return (Etcdserverpb__StatusResponse *)call_ok("/etcdserverpb.Maintenance/Status", &req.base,
                                                   &etcdserverpb__status_response__descriptor);
}

/* Compact to the current revision and wait for the removal (physical), as an operator recovering
 * from "database space exceeded" does. */
static void compact_all(void)
{
    Etcdserverpb__StatusResponse *st = status();
    Etcdserverpb__CompactionRequest req = ETCDSERVERPB__COMPACTION_REQUEST__INIT;
    req.revision = st->header->revision;
    req.physical = true;
    protobuf_c_message_free_unpacked(&st->base, NULL);
    ProtobufCMessage *r = call_ok("/etcdserverpb.KV/Compact", &req.base,
                                  &etcdserverpb__compaction_response__descriptor);
    protobuf_c_message_free_unpacked(r, NULL);
}

Test(kv_quota, writes_past_the_quota_are_refused_before_the_log_and_deletes_make_room,
     .init = start, .fini = stop, .timeout = 60)
{
    char key[16], msg[256];
    grpc_status_code st = GRPC_STATUS_OK;
    Etcdserverpb__StatusResponse *before = NULL;
    int i;
    for (i = 0; i < (int)(2 * QUOTA / VLEN) && st == GRPC_STATUS_OK; i++) {
        if (before)
            protobuf_c_message_free_unpacked(&before->base, NULL);
        before = status();
        snprintf(key, sizeof key, "big%02d", i);
        st = put(key, VLEN, msg, sizeof msg);
    }
    cr_assert_eq(st, GRPC_STATUS_RESOURCE_EXHAUSTED, "twice the quota was accepted");
    cr_assert_str_eq(msg, KV_ERR_NO_SPACE);
    int stored = i - 1;
    /* each value is held twice: the latest state and the history */
    cr_assert_gt(stored, 4, "only %d values of 64 KiB fitted in 1 MiB", stored);
    /* Refused before proposing: no log entry, no revision; and Status shows why. */
    Etcdserverpb__StatusResponse *after = status();
    cr_assert_eq(after->raftindex, before->raftindex, "the refused put entered the log");
    cr_assert_eq(after->header->revision, before->header->revision);
    cr_assert_gt((uint64_t)after->dbsizeinuse + 2 * VLEN, QUOTA, "in use: %lld",
                 (long long)after->dbsizeinuse);

    /* A delete is accepted over the quota; the history still holds the values until a
     * compaction removes them, which frees their pages. */
    cr_assert_eq(delete_range("big", "bih"), stored);
    compact_all();
    Etcdserverpb__StatusResponse *freed = status();
    cr_assert_lt(freed->dbsizeinuse + (int64_t)(stored / 2 * VLEN), after->dbsizeinuse,
                 "in use %lld after deleting from %lld", (long long)freed->dbsizeinuse,
                 (long long)after->dbsizeinuse);
    /* And the quota lets writes in again. */
    cr_assert_eq(put("small", 100, msg, sizeof msg), GRPC_STATUS_OK, "%s", msg);
    protobuf_c_message_free_unpacked(&before->base, NULL);
    protobuf_c_message_free_unpacked(&after->base, NULL);
    protobuf_c_message_free_unpacked(&freed->base, NULL);
}

/* Many Puts in flight at once, each checked against the bytes in use before any of them has
 * applied: together they pass the quota by far. Each gets OK or "database space exceeded" -
 * never a failed state machine (the store's map has room beyond the quota for what the check
 * let through) - and the member goes on serving. */
#define BURST 256
#define BURST_VLEN (16u << 10)

static pthread_mutex_t burst_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t burst_cv = PTHREAD_COND_INITIALIZER;
static int burst_left, burst_ok, burst_full, burst_other;
static char burst_other_msg[300];

static void burst_done(struct rpc_result *res, void *arg)
{
    (void)arg;
    pthread_mutex_lock(&burst_mu);
    if (res->status == GRPC_STATUS_OK)
        burst_ok++;
    else if (res->status == GRPC_STATUS_RESOURCE_EXHAUSTED && !strcmp(res->message, KV_ERR_NO_SPACE))
        burst_full++;
    else {
        burst_other++;
        snprintf(burst_other_msg, sizeof burst_other_msg, "%d %s", res->status, res->message);
    }
    burst_left--;
    pthread_cond_signal(&burst_cv);
    pthread_mutex_unlock(&burst_mu);
}

Test(kv_quota, a_burst_past_the_quota_is_refused_and_the_member_keeps_serving, .init = start,
     .fini = stop, .timeout = 60)
{
    static uint8_t val[BURST_VLEN];
    memset(val, 'y', sizeof val);
    burst_left = BURST;
    for (int i = 0; i < BURST; i++) {
        char key[24];
        snprintf(key, sizeof key, "burst%03d", i);
        Etcdserverpb__PutRequest req = ETCDSERVERPB__PUT_REQUEST__INIT;
        req.key.data = (uint8_t *)key;
        req.key.len = strlen(key);
        req.value.data = val;
        req.value.len = sizeof val;
        uint8_t *buf = malloc(protobuf_c_message_get_packed_size(&req.base));
        cr_assert_not_null(buf);
        size_t len = protobuf_c_message_pack(&req.base, buf);
        cr_assert_eq(rpc_channel_call_async(ch, "/etcdserverpb.KV/Put", buf, len, 20000,
                                            burst_done, NULL),
                     0);
        free(buf);
    }
    pthread_mutex_lock(&burst_mu);
    while (burst_left > 0)
        pthread_cond_wait(&burst_cv, &burst_mu); /* every call completes: the 20 s deadline */
    pthread_mutex_unlock(&burst_mu);
    cr_assert_eq(burst_other, 0, "%d answers were neither OK nor no-space, e.g. %s", burst_other,
                 burst_other_msg);
    cr_assert_gt(burst_ok, 0);
    /* Whatever got in (checked against the bytes in use before it applied), the store is now
     * past the quota and says so. */
    char msg[256];
    cr_assert_eq(put("one-more", BURST_VLEN, msg, sizeof msg), GRPC_STATUS_RESOURCE_EXHAUSTED,
                 "%d of %d x 16 KiB in a 1 MiB quota, and still room", burst_ok, BURST);
    cr_assert_str_eq(msg, KV_ERR_NO_SPACE);
    /* Still serving: a delete and a compaction make room and a Put goes in again. */
    cr_assert_eq(delete_range("burst", "bursu"), burst_ok);
    compact_all();
    cr_assert_eq(put("after", 100, msg, sizeof msg), GRPC_STATUS_OK, "%s", msg);
}
