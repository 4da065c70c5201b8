/* History against real craftd processes (issue 15): every member answers a Range at an old
 * revision with the state then, and "compacted" below the compacted revision; automatic
 * compaction (--auto-compaction-mode periodic, --auto-compaction-retention 2s) moves the
 * compacted revision on every member by itself, through the log; Compact with physical=true
 * answers once the removal is done, and the history survives kill -9 and a restart. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "tests/cluster/harness.h"

static struct hc C;

static void teardown(void) { hc_teardown(&C); }

/* Range of `key` at `rev` on member i: the gRPC status, the value (when found) in val. */
static grpc_status_code range_at(int i, const char *key, int64_t rev, char *val, size_t vlen,
                                 char *msg, size_t mlen)
{
    Etcdserverpb__RangeRequest req = ETCDSERVERPB__RANGE_REQUEST__INIT;
    req.key.data = (uint8_t *)key;
    req.key.len = strlen(key);
    req.revision = rev;
    ProtobufCMessage *resp = NULL;
    struct rpc_result res;
    rpc_channel_call_msg(hc_channel(&C, i), "/etcdserverpb.KV/Range", &req.base,
                         &etcdserverpb__range_response__descriptor, 3000, &resp, &res);
    grpc_status_code st = res.status;
    snprintf(msg, mlen, "%s", res.message);
    rpc_result_free(&res);
    val[0] = 0;
    if (st == GRPC_STATUS_OK) {
        Etcdserverpb__RangeResponse *r = (Etcdserverpb__RangeResponse *)resp;
        if (r->n_kvs)
            snprintf(val, vlen, "%.*s", (int)r->kvs[0]->value.len,
                     (const char *)r->kvs[0]->value.data);
        protobuf_c_message_free_unpacked(resp, NULL);
    }
    return st;
}

static grpc_status_code compact(int i, int64_t rev, bool physical, char *msg, size_t mlen)
{
    Etcdserverpb__CompactionRequest req = ETCDSERVERPB__COMPACTION_REQUEST__INIT;
    req.revision = rev;
    req.physical = physical;
    ProtobufCMessage *resp = NULL;
    struct rpc_result res;
    rpc_channel_call_msg(hc_channel(&C, i), "/etcdserverpb.KV/Compact", &req.base,
                         &etcdserverpb__compaction_response__descriptor, 10000, &resp, &res);
    grpc_status_code st = res.status;
    snprintf(msg, mlen, "%s", res.message);
    rpc_result_free(&res);
    if (resp)
        protobuf_c_message_free_unpacked(resp, NULL);
    return st;
}

/* Waits (bounded poll: compaction runs on its own clock) until member i answers "compacted"
 * for a Range at rev. */
static bool wait_compacted(int i, int64_t rev, int timeout_ms)
{
    int64_t until = hc_now_ms() + timeout_ms;
    char val[64], msg[256];
    while (hc_now_ms() < until) {
        if (range_at(i, "k", rev, val, sizeof val, msg, sizeof msg) == GRPC_STATUS_OUT_OF_RANGE &&
            strstr(msg, "compacted"))
            return true;
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return false;
}

Test(history, old_revisions_read_on_every_member_then_compaction_and_restart,
     .fini = teardown, .timeout = 120)
{
    hc_setup(&C, 3, 50, 500);
    hc_start_all(&C);
    cr_assert_geq(hc_wait_leader(&C, 10000), 0);
    int64_t revs[10];
    for (int v = 0; v < 10; v++) {
        char val[16];
        snprintf(val, sizeof val, "v%d", v);
        cr_assert_eq(hc_put(&C, v % 3, "k", val, 5000, &revs[v]), GRPC_STATUS_OK);
    }
    char val[64], msg[256];
    for (int i = 0; i < 3; i++) {
        cr_assert(hc_wait_revision(&C, i, revs[9], 5000));
        for (int v = 0; v < 10; v++) {
            char want[16];
            snprintf(want, sizeof want, "v%d", v);
            cr_assert_eq(range_at(i, "k", revs[v], val, sizeof val, msg, sizeof msg),
                         GRPC_STATUS_OK, "%s", msg);
            cr_assert_str_eq(val, want, "member %d at revision %lld", i, (long long)revs[v]);
        }
        cr_assert_eq(range_at(i, "k", revs[9] + 100, val, sizeof val, msg, sizeof msg),
                     GRPC_STATUS_OUT_OF_RANGE);
        cr_assert(strstr(msg, "future revision"), "%s", msg);
    }
    /* Compact with physical: answered once the removal is done; every member then refuses the
     * revisions below it and still reads the one at it. */
    cr_assert_eq(compact(1, revs[5], true, msg, sizeof msg), GRPC_STATUS_OK, "%s", msg);
    for (int i = 0; i < 3; i++) {
        cr_assert(wait_compacted(i, revs[4], 5000), "member %d", i);
        cr_assert_eq(range_at(i, "k", revs[5], val, sizeof val, msg, sizeof msg), GRPC_STATUS_OK);
        cr_assert_str_eq(val, "v5");
    }
    cr_assert_eq(compact(0, revs[5], false, msg, sizeof msg), GRPC_STATUS_OUT_OF_RANGE);
    cr_assert(strstr(msg, "compacted"), "%s", msg);
    /* kill -9 and a restart: the history is still there */
    hc_signal(&C, 2, SIGKILL);
    hc_start(&C, 2);
    cr_assert(hc_wait_revision(&C, 2, revs[9], 10000));
    /* exactly where it was: the log tail after the store's applied index applied once */
    hc_assert_exact_state(&C, 2, revs[9], 10000);
    /* a linearizable read needs the leader known (ReadIndex): wait until member 2 knows it */
    cr_assert_geq(hc_wait_leader(&C, 10000), 0);
    cr_assert_eq(range_at(2, "k", revs[7], val, sizeof val, msg, sizeof msg), GRPC_STATUS_OK, "%s",
                 msg);
    cr_assert_str_eq(val, "v7");
    cr_assert(wait_compacted(2, revs[4], 5000));
}

Test(history, periodic_auto_compaction_moves_the_compacted_revision_on_every_member,
     .fini = teardown, .timeout = 120)
{
    hc_setup(&C, 3, 50, 500);
    snprintf(C.extra_flags, sizeof C.extra_flags,
             "--auto-compaction-mode=periodic --auto-compaction-retention=2s");
    hc_start_all(&C);
    cr_assert_geq(hc_wait_leader(&C, 10000), 0);
    int64_t first, last = 0;
    cr_assert_eq(hc_put(&C, 0, "k", "first", 5000, &first), GRPC_STATUS_OK);
    /* 2 s of history are kept: within a few seconds of writes the first revision goes */
    int64_t until = hc_now_ms() + 15000;
    bool gone = false;
    while (!gone && hc_now_ms() < until) {
        cr_assert_eq(hc_put(&C, 1, "k", "more", 5000, &last), GRPC_STATUS_OK);
        gone = wait_compacted(0, first, 200);
    }
    cr_assert(gone, "the first revision is still readable after 15 s with 2 s retention");
    for (int i = 1; i < 3; i++)
        cr_assert(wait_compacted(i, first, 5000), "member %d", i);
    /* and the recent history is still there */
    char val[64], msg[256];
    cr_assert_eq(range_at(2, "k", last, val, sizeof val, msg, sizeof msg), GRPC_STATUS_OK, "%s",
                 msg);
    cr_assert(hc_log_has(&C, hc_wait_leader(&C, 5000), "auto compaction: compacted to revision"));
}
