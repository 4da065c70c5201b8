/* members_test.c: membership changes of a live cluster of real craftd processes, through etcd's
 * Cluster API (MemberAdd/Remove/Promote/Update/List) and Maintenance.MoveLeader, with a write
 * load running and every acknowledged write checked on every member at the end. Spare members
 * (harness `unlisted`) are started after being added, with --initial-cluster-state existing, as
 * `etcdctl member add` tells an operator to. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/cluster/harness.h"

static struct hc C;

static void teardown(void) { hc_teardown(&C); }

/* ---- the etcd Cluster API, as a client sees it ---- */

struct call_err {
    grpc_status_code code;
    char msg[256];
};

static ProtobufCMessage *call(int i, const char *method, const ProtobufCMessage *req,
                              const ProtobufCMessageDescriptor *rd, struct call_err *err)
{
    ProtobufCMessage *resp = NULL;
    struct rpc_result res;
    rpc_channel_call_msg(hc_channel(&C, i), method, req, rd, 15000, &resp, &res);
    if (err) {
        err->code = res.status;
        snprintf(err->msg, sizeof err->msg, "%s", res.message);
    }
    rpc_result_free(&res);
    return res.status == GRPC_STATUS_OK ? resp : NULL;
}

/* A LeaseKeepAlive stream to member i, one request sent: the message it ends with (an answer
 * instead fails the test). */
struct ka_end {
    pthread_mutex_t mu;
    bool closed, answered;
    char msg[128];
};

static void ka_message(struct rpc_client_stream *s, const uint8_t *d, size_t n, void *arg)
{
    (void)s, (void)d, (void)n;
    struct ka_end *k = arg;
    pthread_mutex_lock(&k->mu);
    k->answered = true;
    pthread_mutex_unlock(&k->mu);
}

static void ka_close(struct rpc_client_stream *s, grpc_status_code st, const char *msg, void *arg)
{
    (void)s, (void)st;
    struct ka_end *k = arg;
    pthread_mutex_lock(&k->mu);
    k->closed = true;
    snprintf(k->msg, sizeof k->msg, "%s", msg ? msg : "");
    pthread_mutex_unlock(&k->mu);
}

static const char *keepalive_refusal(int i)
{
    static struct ka_end k;
    static const struct rpc_client_stream_handler h = {ka_message, ka_close, NULL};
    memset(&k, 0, sizeof k);
    pthread_mutex_init(&k.mu, NULL);
    struct rpc_client_stream *s =
        rpc_channel_stream_open(hc_channel(&C, i), "/etcdserverpb.Lease/LeaseKeepAlive", &h, &k);
    cr_assert(s);
    Etcdserverpb__LeaseKeepAliveRequest r = ETCDSERVERPB__LEASE_KEEP_ALIVE_REQUEST__INIT;
    r.id = 1;
    uint8_t buf[16];
    rpc_client_stream_send(s, buf, etcdserverpb__lease_keep_alive_request__pack(&r, buf), 5000);
    bool closed = false;
    for (int64_t end = hc_now_ms() + 10000; !closed && hc_now_ms() < end; usleep(10000)) {
        pthread_mutex_lock(&k.mu);
        closed = k.closed;
        pthread_mutex_unlock(&k.mu);
    }
    cr_assert(closed, "the keep-alive stream was not ended");
    cr_assert_not(k.answered, "the keep-alive was answered");
    rpc_client_stream_close(s);
    return k.msg;
}

static void peer_url(int m, char *buf, size_t len)
{
    snprintf(buf, len, "https://127.0.0.1:%d", C.m[m].peer_port);
}

/* MemberAdd of spare m's peer URL on member `via`: its id, or 0 with *err set. */
static uint64_t member_add(int via, int m, bool learner, struct call_err *err)
{
    char url[64];
    peer_url(m, url, sizeof url);
    char *urls[] = {url};
    Etcdserverpb__MemberAddRequest req = ETCDSERVERPB__MEMBER_ADD_REQUEST__INIT;
    req.n_peerurls = 1;
    req.peerurls = urls;
    req.islearner = learner;
    Etcdserverpb__MemberAddResponse *r = (Etcdserverpb__MemberAddResponse *)call(
        via, "/etcdserverpb.Cluster/MemberAdd", &req.base,
        &etcdserverpb__member_add_response__descriptor, err);
    uint64_t id = r && r->member ? r->member->id : 0;
    if (r)
        protobuf_c_message_free_unpacked(&r->base, NULL);
    return id;
}

static bool member_remove(int via, uint64_t id, struct call_err *err)
{
    Etcdserverpb__MemberRemoveRequest req = ETCDSERVERPB__MEMBER_REMOVE_REQUEST__INIT;
    req.id = id;
    ProtobufCMessage *r = call(via, "/etcdserverpb.Cluster/MemberRemove", &req.base,
                               &etcdserverpb__member_remove_response__descriptor, err);
    if (r)
        protobuf_c_message_free_unpacked(r, NULL);
    return r != NULL;
}

static bool member_promote(int via, uint64_t id, struct call_err *err)
{
    Etcdserverpb__MemberPromoteRequest req = ETCDSERVERPB__MEMBER_PROMOTE_REQUEST__INIT;
    req.id = id;
    ProtobufCMessage *r = call(via, "/etcdserverpb.Cluster/MemberPromote", &req.base,
                               &etcdserverpb__member_promote_response__descriptor, err);
    if (r)
        protobuf_c_message_free_unpacked(r, NULL);
    return r != NULL;
}

static bool move_leader(int via, uint64_t to, struct call_err *err)
{
    Etcdserverpb__MoveLeaderRequest req = ETCDSERVERPB__MOVE_LEADER_REQUEST__INIT;
    req.targetid = to;
    ProtobufCMessage *r = call(via, "/etcdserverpb.Maintenance/MoveLeader", &req.base,
                               &etcdserverpb__move_leader_response__descriptor, err);
    if (r)
        protobuf_c_message_free_unpacked(r, NULL);
    return r != NULL;
}

/* MemberList on `via`: how many members, and how many of them learners; *id_of (may be NULL)
 * receives the id of the member whose peer URL is spare m's (0 if absent). */
static int member_list(int via, int m, uint64_t *id_of, int *learners)
{
    Etcdserverpb__MemberListRequest req = ETCDSERVERPB__MEMBER_LIST_REQUEST__INIT;
    Etcdserverpb__MemberListResponse *r = (Etcdserverpb__MemberListResponse *)call(
        via, "/etcdserverpb.Cluster/MemberList", &req.base,
        &etcdserverpb__member_list_response__descriptor, NULL);
    cr_assert_not_null(r, "MemberList on %s failed", C.m[via].name);
    char url[64];
    peer_url(m, url, sizeof url);
    if (id_of)
        *id_of = 0;
    int n = (int)r->n_members, l = 0;
    for (size_t k = 0; k < r->n_members; k++) {
        l += r->members[k]->islearner;
        for (size_t u = 0; id_of && u < r->members[k]->n_peerurls; u++)
            if (!strcmp(r->members[k]->peerurls[u], url))
                *id_of = r->members[k]->id;
    }
    if (learners)
        *learners = l;
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return n;
}

static uint64_t id_of(int via, int m)
{
    uint64_t id;
    member_list(via, m, &id, NULL);
    cr_assert_neq(id, 0, "%s is not in the member list", C.m[m].name);
    return id;
}

/* ---- the write load: every acknowledged write must survive ---- */

#define MAX_ACKED 20000

struct load {
    pthread_t th;
    volatile bool stop;
    pthread_mutex_t mu;
    int members[HC_MAX]; /* whom to write through, refreshed by the test */
    int n_members;
    int acked[MAX_ACKED];
    int n_acked, sent;
    int64_t last_ok_ms, max_gap_ms; /* longest time between two acknowledged writes */
};

static struct load L;

static void *load_main(void *arg)
{
    (void)arg;
    for (int k = 0; !L.stop && L.n_acked < MAX_ACKED; k++) {
        pthread_mutex_lock(&L.mu);
        int via = L.n_members ? L.members[k % L.n_members] : 0;
        int seq = L.sent++;
        pthread_mutex_unlock(&L.mu);
        char key[32], val[32];
        snprintf(key, sizeof key, "load/%06d", seq);
        snprintf(val, sizeof val, "v%d", seq);
        if (hc_put(&C, via, key, val, 3000, NULL) == GRPC_STATUS_OK) {
            pthread_mutex_lock(&L.mu);
            int64_t now = hc_now_ms();
            if (L.last_ok_ms && now - L.last_ok_ms > L.max_gap_ms)
                L.max_gap_ms = now - L.last_ok_ms;
            L.last_ok_ms = now;
            L.acked[L.n_acked++] = seq;
            pthread_mutex_unlock(&L.mu);
        }
    }
    return NULL;
}

static void load_set(const int *members, int n)
{
    pthread_mutex_lock(&L.mu);
    memcpy(L.members, members, (size_t)n * sizeof(int));
    L.n_members = n;
    pthread_mutex_unlock(&L.mu);
}

static void load_start(const int *members, int n)
{
    memset(&L, 0, sizeof L);
    pthread_mutex_init(&L.mu, NULL);
    load_set(members, n);
    cr_assert_eq(pthread_create(&L.th, NULL, load_main, NULL), 0);
}

static int load_acked(void)
{
    pthread_mutex_lock(&L.mu);
    int n = L.n_acked;
    pthread_mutex_unlock(&L.mu);
    return n;
}

/* Wait until `more` further writes are acknowledged (the cluster serves). */
static void load_progress(int more, int timeout_ms)
{
    int want = load_acked() + more;
    int64_t end = hc_now_ms() + timeout_ms;
    while (load_acked() < want && hc_now_ms() < end)
        usleep(20000);
    if (load_acked() < want)
        for (int i = 0; i < C.n; i++)
            hc_dump_log(&C, i);
    cr_assert_geq(load_acked(), want, "writes stalled: %d acknowledged", load_acked());
}

/* Stop the load; then every acknowledged write is on every member in `final` (read locally,
 * once each has caught up with a fresh write's revision). */
static void load_check(const int *final, int n)
{
    L.stop = true;
    pthread_join(L.th, NULL);
    int64_t rev = 0;
    cr_assert_eq(hc_put(&C, final[0], "load/fence", "x", 10000, &rev), GRPC_STATUS_OK);
    for (int k = 0; k < n; k++) {
        cr_assert(hc_wait_revision(&C, final[k], rev, 30000), "%s did not catch up",
                  C.m[final[k]].name);
        for (int a = 0; a < L.n_acked; a++) {
            char key[32], want[32], got[64];
            snprintf(key, sizeof key, "load/%06d", L.acked[a]);
            snprintf(want, sizeof want, "v%d", L.acked[a]);
            cr_assert_eq(hc_get(&C, final[k], key, got, sizeof got, true), 1,
                         "%s lost acknowledged write %s", C.m[final[k]].name, key);
            cr_assert_str_eq(got, want);
        }
    }
}

static int leader_or_die(int timeout_ms)
{
    int l = hc_wait_leader(&C, timeout_ms);
    cr_assert_geq(l, 0, "no leader");
    return l;
}

/* Add spare m (as a voter or learner) through `via` and start it joining. */
static uint64_t add_and_start(int via, int m, bool learner)
{
    struct call_err e;
    uint64_t id = member_add(via, m, learner, &e);
    cr_assert_neq(id, 0, "MemberAdd %s: %d %s", C.m[m].name, e.code, e.msg);
    C.unlisted[m] = false;
    C.existing[m] = true;
    hc_start(&C, m);
    return id;
}

/* `flags`: extra flags for every member (NULL for none), in force from the first start. */
static void setup(int total, int initial, const char *flags)
{
    hc_setup(&C, total, 50, 400);
    if (flags)
        snprintf(C.extra_flags, sizeof C.extra_flags, "%s", flags);
    for (int i = initial; i < total; i++)
        C.unlisted[i] = true;
    for (int i = 0; i < initial; i++)
        hc_start(&C, i);
}

Test(members, grow_one_to_three_to_five_then_shrink_to_three, .fini = teardown, .timeout = 300)
{
    setup(5, 1, NULL);
    leader_or_die(10000);
    load_start((int[]){0}, 1);
    load_progress(50, 10000);
    for (int m = 1; m < 5; m++) {
        add_and_start(hc_wait_leader(&C, 10000), m, false);
        cr_assert(hc_wait_leader(&C, 30000) >= 0);
        int who[HC_MAX];
        for (int k = 0; k <= m; k++)
            who[k] = k;
        load_set(who, m + 1);
        load_progress(50, 20000);
        cr_assert_eq(member_list(0, 0, NULL, NULL), m + 1);
    }
    /* Shrink 5 -> 3: remove the last two (whoever leads). */
    for (int m = 4; m >= 3; m--) {
        load_set((int[]){0, 1, 2}, 3);
        struct call_err e;
        uint64_t id = id_of(0, m);
        cr_assert(member_remove(leader_or_die(10000), id, &e), "remove %s: %s", C.m[m].name,
                  e.msg);
        load_progress(50, 20000);
    }
    cr_assert_eq(member_list(0, 0, NULL, NULL), 3);
    for (int m = 3; m < 5; m++) /* a removed member stops by itself and says why */
        cr_assert_geq(hc_wait_exit(&C, m, 20000), 0, "%s still runs after removal", C.m[m].name);
    load_check((int[]){0, 1, 2}, 3);
}

Test(members, remove_the_leader, .fini = teardown, .timeout = 240)
{
    setup(3, 3, NULL);
    int l = leader_or_die(10000);
    int others[2], k = 0;
    for (int i = 0; i < 3; i++)
        if (i != l)
            others[k++] = i;
    load_start(others, 2);
    load_progress(50, 10000);
    struct call_err e;
    uint64_t id = id_of(others[0], l);
    cr_assert(member_remove(l, id, &e), "remove the leader: %d %s", e.code, e.msg);
    int nl = leader_or_die(20000);
    cr_assert(nl != l);
    load_progress(100, 20000);
    cr_assert_eq(member_list(others[0], 0, NULL, NULL), 2);
    load_check(others, 2);
    printf("remove the leader: longest gap between acknowledged writes %lld ms\n",
           (long long)L.max_gap_ms);
}

Test(members, learner_catches_up_then_is_promoted, .fini = teardown, .timeout = 240)
{
    setup(4, 3, "--snapshot-count 200 --snapshot-catchup-entries 20");
    leader_or_die(10000);
    load_start((int[]){0, 1, 2}, 3);
    load_progress(600, 30000); /* several snapshots' worth: the learner needs one */
    int l = leader_or_die(10000);
    uint64_t id = add_and_start(l, 3, true);
    int learners = 0;
    cr_assert_eq(member_list(0, 0, NULL, &learners), 4);
    cr_assert_eq(learners, 1);
    /* A learner serves what etcd 3.4 lets it: serializable reads and Status, nothing else. */
    char got[64], key0[32], want0[32];
    pthread_mutex_lock(&L.mu);
    snprintf(key0, sizeof key0, "load/%06d", L.acked[0]);
    snprintf(want0, sizeof want0, "v%d", L.acked[0]);
    pthread_mutex_unlock(&L.mu);
    bool served = false;
    for (int64_t end = hc_now_ms() + 20000; !served && hc_now_ms() < end; usleep(50000))
        served = hc_get(&C, 3, key0, got, sizeof got, true) == 1;
    cr_assert(served, "the learner never served a serializable read of an acknowledged write");
    cr_assert_str_eq(got, want0);
    struct call_err pe;
    Etcdserverpb__PutRequest put = ETCDSERVERPB__PUT_REQUEST__INIT;
    put.key.data = (uint8_t *)"k";
    put.key.len = 1;
    cr_assert_null(call(3, "/etcdserverpb.KV/Put", &put.base,
                        &etcdserverpb__put_response__descriptor, &pe));
    cr_assert_eq(pe.code, GRPC_STATUS_UNAVAILABLE);
    cr_assert_str_eq(pe.msg, "etcdserver: rpc not supported for learner");
    Etcdserverpb__RangeRequest rr = ETCDSERVERPB__RANGE_REQUEST__INIT;
    rr.key.data = (uint8_t *)"k";
    rr.key.len = 1;
    cr_assert_null(call(3, "/etcdserverpb.KV/Range", &rr.base,
                        &etcdserverpb__range_response__descriptor, &pe));
    cr_assert_str_eq(pe.msg, "etcdserver: rpc not supported for learner", "linearizable read");
    /* the Lease API too, the keep-alive stream included (etcd's interceptor refuses them all) */
    Etcdserverpb__LeaseGrantRequest lg = ETCDSERVERPB__LEASE_GRANT_REQUEST__INIT;
    lg.ttl = 10;
    cr_assert_null(call(3, "/etcdserverpb.Lease/LeaseGrant", &lg.base,
                        &etcdserverpb__lease_grant_response__descriptor, &pe));
    cr_assert_str_eq(pe.msg, "etcdserver: rpc not supported for learner", "LeaseGrant");
    Etcdserverpb__LeaseLeasesRequest ll = ETCDSERVERPB__LEASE_LEASES_REQUEST__INIT;
    cr_assert_null(call(3, "/etcdserverpb.Lease/LeaseLeases", &ll.base,
                        &etcdserverpb__lease_leases_response__descriptor, &pe));
    cr_assert_str_eq(pe.msg, "etcdserver: rpc not supported for learner", "LeaseLeases");
    cr_assert_str_eq(keepalive_refusal(3), "etcdserver: rpc not supported for learner");
    /* Promote once it has caught up (refused while it lags: retried). */
    struct call_err e = {0};
    bool ok = false;
    for (int t = 0; t < 150 && !ok; t++) {
        ok = member_promote(leader_or_die(10000), id, &e);
        if (!ok)
            usleep(100000);
    }
    cr_assert(ok, "promote: %d %s", e.code, e.msg);
    cr_assert_eq(member_list(0, 0, NULL, &learners), 4);
    cr_assert_eq(learners, 0);
    if (!hc_log_has(&C, 3, "installed snapshot"))
        hc_dump_log(&C, 3);
    cr_assert(hc_log_has(&C, 3, "installed snapshot"), "the learner caught up without a snapshot");
    cr_assert_not(hc_log_has(&C, 3, "candidate in term"), "the learner campaigned");
    load_set((int[]){0, 1, 2, 3}, 4);
    load_progress(50, 20000);
    load_check((int[]){0, 1, 2, 3}, 4);
}

Test(members, promote_a_lagging_learner_is_refused, .fini = teardown, .timeout = 180)
{
    setup(4, 3, NULL);
    leader_or_die(10000);
    int l = leader_or_die(10000);
    struct call_err e;
    uint64_t id = member_add(l, 3, true, &e); /* added, never started: it lags for ever */
    cr_assert_neq(id, 0, "%s", e.msg);
    for (int k = 0; k < 20; k++)
        cr_assert_eq(hc_put(&C, l, "k", "v", 5000, NULL), GRPC_STATUS_OK);
    cr_assert_not(member_promote(l, id, &e));
    cr_assert(strstr(e.msg, "in sync with leader"), "got %d '%s'", e.code, e.msg);
    /* Nothing changed: it is still a learner, and it can be removed. */
    int learners;
    cr_assert_eq(member_list(l, 0, NULL, &learners), 4);
    cr_assert_eq(learners, 1);
    cr_assert(member_remove(l, id, &e), "%s", e.msg);
    cr_assert_eq(member_list(l, 0, NULL, NULL), 3);
}

Test(members, move_the_leader_to_each_member_in_turn, .fini = teardown, .timeout = 240)
{
    setup(3, 3, NULL);
    leader_or_die(10000);
    load_start((int[]){0, 1, 2}, 3);
    load_progress(50, 10000);
    for (int round = 0; round < 3; round++) {
        int target = (leader_or_die(10000) + 1) % 3;
        uint64_t id = id_of(0, target);
        struct call_err e;
        cr_assert(move_leader(leader_or_die(10000), id, &e), "move to %s: %d %s",
                  C.m[target].name, e.code, e.msg);
        cr_assert_eq(leader_or_die(10000), target);
        load_progress(30, 10000);
    }
    /* Not the leader / a bad target: etcd's errors. */
    int l = leader_or_die(10000);
    struct call_err e;
    cr_assert_not(move_leader(l, 12345, &e));
    cr_assert(strstr(e.msg, "bad leader transferee"), "got '%s'", e.msg);
    load_check((int[]){0, 1, 2}, 3);
    printf("move-leader: longest gap between acknowledged writes %lld ms\n",
           (long long)L.max_gap_ms);
}

Test(members, bad_requests_change_nothing, .fini = teardown, .timeout = 120)
{
    setup(3, 3, NULL);
    int l = leader_or_die(10000);
    struct call_err e;
    cr_assert_not(member_remove(l, 987654321, &e), "unknown id removed");
    cr_assert(strstr(e.msg, "member not found"), "got '%s'", e.msg);
    cr_assert_not(member_promote(l, 987654321, &e));
    cr_assert(strstr(e.msg, "member not found"), "got '%s'", e.msg);
    cr_assert_not(member_promote(l, id_of(l, (l + 1) % 3), &e), "a voter promoted");
    cr_assert(strstr(e.msg, "can only promote a learner member"), "got '%s'", e.msg);
    /* A peer URL already used by a member; malformed URLs. */
    char *dup[] = {NULL};
    char url[64];
    peer_url((l + 1) % 3, url, sizeof url);
    dup[0] = url;
    const char *bad[] = {"not a url", "ftp://127.0.0.1:1", "https://127.0.0.1:99999", ""};
    Etcdserverpb__MemberAddRequest req = ETCDSERVERPB__MEMBER_ADD_REQUEST__INIT;
    req.n_peerurls = 1;
    req.peerurls = dup;
    cr_assert_null(call(l, "/etcdserverpb.Cluster/MemberAdd", &req.base,
                        &etcdserverpb__member_add_response__descriptor, &e));
    cr_assert(strstr(e.msg, "Peer URLs already exists"), "got '%s'", e.msg);
    for (size_t b = 0; b < sizeof bad / sizeof bad[0]; b++) {
        char *u[] = {(char *)bad[b]};
        req.peerurls = u;
        cr_assert_null(call(l, "/etcdserverpb.Cluster/MemberAdd", &req.base,
                            &etcdserverpb__member_add_response__descriptor, &e),
                       "'%s' accepted", bad[b]);
        cr_assert_neq(e.code, GRPC_STATUS_OK);
    }
    cr_assert_eq(member_list(l, 0, NULL, NULL), 3, "a bad request changed the membership");
    cr_assert_eq(hc_put(&C, l, "after", "ok", 5000, NULL), GRPC_STATUS_OK);
}

Test(members, replace_a_member_whose_disk_was_lost, .fini = teardown, .timeout = 240)
{
    setup(4, 3, NULL);
    int l = leader_or_die(10000);
    int lost = (l + 1) % 3, keep = (l + 2) % 3;
    load_start((int[]){l, keep}, 2);
    load_progress(50, 10000);
    uint64_t id = id_of(l, lost);
    hc_signal(&C, lost, SIGKILL);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", C.m[lost].data_dir);
    cr_assert_eq(system(cmd), 0);
    /* Back as itself with an empty disk it must refuse (it could vote twice in a term). */
    hc_start(&C, lost);
    cr_assert_gt(hc_wait_exit(&C, lost, 20000), 0, "started again as itself with a lost disk");
    /* The operator's way: remove it, add a fresh member. */
    struct call_err e;
    cr_assert(member_remove(leader_or_die(10000), id, &e), "%s", e.msg);
    add_and_start(leader_or_die(10000), 3, false);
    load_set((int[]){l, keep, 3}, 3);
    load_progress(100, 30000);
    cr_assert_eq(member_list(keep, 0, NULL, NULL), 3);
    load_check((int[]){l, keep, 3}, 3);
}

struct async_add {
    int via, m;
    uint64_t id;
    struct call_err e;
};

static void *add_main(void *arg)
{
    struct async_add *a = arg;
    a->id = member_add(a->via, a->m, false, &a->e);
    return NULL;
}

Test(members, leader_cut_off_in_the_middle_of_a_change, .fini = teardown, .timeout = 240)
{
    setup(4, 3, NULL);
    int l = leader_or_die(10000);
    int f1 = (l + 1) % 3, f2 = (l + 2) % 3;
    load_start((int[]){f1, f2}, 2);
    load_progress(50, 10000);
    /* The add goes in, and the leader freezes at once: C_old,new may or may not have left it. */
    struct async_add a = {.via = l, .m = 3};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, add_main, &a), 0);
    usleep(2000);
    hc_signal(&C, l, SIGSTOP);
    pthread_join(th, NULL);
    /* The rest elect a leader and serve; the change either completed or left no trace. */
    load_progress(50, 30000);
    int n = member_list(f1, 3, NULL, NULL);
    cr_assert(n == 3 || n == 4, "%d members", n);
    hc_signal(&C, l, SIGCONT);
    if (n == 4) { /* it went through: the new member joins and catches up */
        C.unlisted[3] = false;
        C.existing[3] = true;
        hc_start(&C, 3);
    }
    load_set((int[]){0, 1, 2}, 3);
    load_progress(50, 30000);
    cr_assert_eq(member_list(l, 3, NULL, NULL), n, "the members disagree");
    if (n == 4)
        load_check((int[]){0, 1, 2, 3}, 4);
    else
        load_check((int[]){0, 1, 2}, 3);
}
