/* services/cluster_api.h over real loopback gRPC with mutual TLS, three members in one process
 * (services/server.h), with raw calls etcdctl cannot make: MoveLeader sent to a follower gets
 * etcd's FAILED_PRECONDITION "etcdserver: not leader"; two MemberAdds at once (one through a
 * follower) are decided one after the other - one is added, the other refused by etcd's rule with
 * nothing half-done; a change relayed by a follower carries the follower's header; an undecodable
 * request is INVALID_ARGUMENT; Peer.Member from a certificate that is not a member's is refused. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rpc/rpc.h"
#include "services/proto/etcd/rpc.pb-c.h"
#include "services/proto/raftpb.pb-c.h"
#include "services/server.h"
#include "tests/cluster/harness.h"

static struct hc C; /* directory, certificates and ports; no processes */
static struct craftd_config cfg[3];
static struct craft_server *srv[3];

static void start(void)
{
    hc_setup(&C, 3, 50, 300);
    char cluster[512];
    snprintf(cluster, sizeof cluster,
             "n1=https://127.0.0.1:%d,n2=https://127.0.0.1:%d,n3=https://127.0.0.1:%d",
             C.m[0].peer_port, C.m[1].peer_port, C.m[2].peer_port);
    for (int i = 0; i < 3; i++) {
        char lc[64], lp[64], cert[400], key[400];
        snprintf(lc, sizeof lc, "https://127.0.0.1:%d", C.m[i].client_port);
        snprintf(lp, sizeof lp, "https://127.0.0.1:%d", C.m[i].peer_port);
        snprintf(cert, sizeof cert, "%s/%s.pem", C.certs, C.m[i].name);
        snprintf(key, sizeof key, "%s/%s-key.pem", C.certs, C.m[i].name);
        const char *argv[] = {"craftd", "--name", C.m[i].name, "--data-dir", C.m[i].data_dir,
                              "--listen-client-urls", lc, "--listen-peer-urls", lp,
                              "--initial-cluster", cluster, "--heartbeat-interval", "50",
                              "--election-timeout", "300", "--proposal-timeout", "3000",
                              "--cert-file", cert, "--key-file", key, "--trusted-ca-file", C.ca,
                              "--peer-cert-file", cert, "--peer-key-file", key,
                              "--peer-trusted-ca-file", C.ca};
        char err[512];
        cr_assert_eq(craftd_flags_parse((int)(sizeof argv / sizeof argv[0]), (char **)argv,
                                        &cfg[i], err, sizeof err),
                     0, "%s", err);
        srv[i] = craft_server_start(&cfg[i], err, sizeof err);
        cr_assert(srv[i], "%s", err);
        C.m[i].pid = 1; /* "running", for the harness's channels; nothing to signal */
    }
}

static void stop(void)
{
    for (int i = 0; i < 3; i++) {
        if (C.m[i].ch)
            rpc_channel_destroy(C.m[i].ch);
        C.m[i].ch = NULL;
        C.m[i].pid = 0;
        craft_server_stop(srv[i]);
        srv[i] = NULL;
    }
    hc_teardown(&C);
}

/* The leader once the members agree on one (and have heard from each other for a while, so the
 * strict check counts every voter started). */
static int leader_index(void)
{
    int l = hc_wait_leader(&C, 10000);
    cr_assert_geq(l, 0, "no leader");
    struct timespec ts = {0, 200 * 1000000L}; /* heartbeats to every member: 4 rounds */
    nanosleep(&ts, NULL);
    return l;
}

static grpc_status_code call(int i, const char *method, const ProtobufCMessage *req,
                             const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp,
                             char *msg, size_t msglen)
{
    struct rpc_result res;
    *resp = NULL;
    rpc_channel_call_msg(hc_channel(&C, i), method, req, resp_desc, 10000, resp, &res);
    snprintf(msg, msglen, "%s", res.message);
    rpc_result_free(&res);
    return res.status;
}

Test(cluster_api, move_leader_on_a_follower_is_etcds_not_leader, .init = start, .fini = stop,
     .timeout = 60)
{
    int l = leader_index(), f = (l + 1) % 3;
    Etcdserverpb__MoveLeaderRequest req = ETCDSERVERPB__MOVE_LEADER_REQUEST__INIT;
    req.targetid = cfg[f].self_id;
    ProtobufCMessage *resp;
    char msg[256];
    grpc_status_code st = call(f, "/etcdserverpb.Maintenance/MoveLeader", &req.base,
                               &etcdserverpb__move_leader_response__descriptor, &resp, msg,
                               sizeof msg);
    cr_assert_eq(st, GRPC_STATUS_FAILED_PRECONDITION, "status %d: %s", st, msg);
    cr_assert_str_eq(msg, "etcdserver: not leader");
    /* On the leader: a target that is no member is a bad transferee; a follower takes over. */
    req.targetid = 0x1234;
    st = call(l, "/etcdserverpb.Maintenance/MoveLeader", &req.base,
              &etcdserverpb__move_leader_response__descriptor, &resp, msg, sizeof msg);
    cr_assert_eq(st, GRPC_STATUS_FAILED_PRECONDITION, "status %d: %s", st, msg);
    cr_assert_str_eq(msg, "etcdserver: bad leader transferee");
    req.targetid = cfg[f].self_id;
    st = call(l, "/etcdserverpb.Maintenance/MoveLeader", &req.base,
              &etcdserverpb__move_leader_response__descriptor, &resp, msg, sizeof msg);
    cr_assert_eq(st, GRPC_STATUS_OK, "status %d: %s", st, msg);
    Etcdserverpb__MoveLeaderResponse *r = (Etcdserverpb__MoveLeaderResponse *)resp;
    cr_assert(r->header && r->header->member_id == cfg[l].self_id);
    protobuf_c_message_free_unpacked(resp, NULL);
    struct raft_node_status ns;
    raft_node_status_get(craft_server_node(srv[l]), &ns);
    cr_assert_eq(ns.core.leader_id, cfg[f].self_id, "answered before the target led");
}

struct add_call {
    int member;
    char url[64];
    grpc_status_code st;
    char msg[256];
    uint64_t header_member, added_id;
    size_t n_members;
};

static void *add_thread(void *arg)
{
    struct add_call *a = arg;
    Etcdserverpb__MemberAddRequest req = ETCDSERVERPB__MEMBER_ADD_REQUEST__INIT;
    char *urls[] = {a->url};
    req.n_peerurls = 1;
    req.peerurls = urls;
    ProtobufCMessage *resp;
    a->st = call(a->member, "/etcdserverpb.Cluster/MemberAdd", &req.base,
                 &etcdserverpb__member_add_response__descriptor, &resp, a->msg, sizeof a->msg);
    if (a->st == GRPC_STATUS_OK) {
        Etcdserverpb__MemberAddResponse *r = (Etcdserverpb__MemberAddResponse *)resp;
        a->header_member = r->header ? r->header->member_id : 0;
        a->added_id = r->member ? r->member->id : 0;
        a->n_members = r->n_members;
        protobuf_c_message_free_unpacked(resp, NULL);
    }
    return NULL;
}

Test(cluster_api, two_adds_at_once_are_decided_one_after_the_other, .init = start, .fini = stop,
     .timeout = 60)
{
    int l = leader_index(), f = (l + 1) % 3;
    struct add_call a[2] = {{.member = l}, {.member = f}};
    snprintf(a[0].url, sizeof a[0].url, "https://127.0.0.1:%d", 40001);
    snprintf(a[1].url, sizeof a[1].url, "https://127.0.0.1:%d", 40002);
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, add_thread, &a[i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    int ok = (a[0].st == GRPC_STATUS_OK) + (a[1].st == GRPC_STATUS_OK);
    cr_assert_eq(ok, 1, "adds: %d '%s', %d '%s'", a[0].st, a[0].msg, a[1].st, a[1].msg);
    struct add_call *won = a[0].st == GRPC_STATUS_OK ? &a[0] : &a[1];
    struct add_call *lost = won == &a[0] ? &a[1] : &a[0];
    /* The second one sees four voters-to-be, one never started (the first one, a learner until
     * it catches up, counts as the voter it will be): etcd refuses an add while the leader is
     * not connected to every voter. */
    cr_assert_eq(lost->st, GRPC_STATUS_UNAVAILABLE, "%d: %s", lost->st, lost->msg);
    cr_assert_str_eq(lost->msg, "etcdserver: unhealthy cluster");
    cr_assert_eq(won->n_members, 4);
    cr_assert_neq(won->added_id, 0);
    /* The header names the member the client called, even when the leader decided. */
    cr_assert_eq(won->header_member, cfg[won->member].self_id);
    /* Every member lists the four (the change committed before the answer). */
    Etcdserverpb__MemberListRequest lr = ETCDSERVERPB__MEMBER_LIST_REQUEST__INIT;
    ProtobufCMessage *resp;
    char msg[256];
    cr_assert_eq(call(l, "/etcdserverpb.Cluster/MemberList", &lr.base,
                      &etcdserverpb__member_list_response__descriptor, &resp, msg, sizeof msg),
                 GRPC_STATUS_OK, "%s", msg);
    Etcdserverpb__MemberListResponse *list = (Etcdserverpb__MemberListResponse *)resp;
    cr_assert_eq(list->n_members, 4);
    bool found = false;
    for (size_t i = 0; i < list->n_members; i++)
        if (list->members[i]->id == won->added_id) {
            found = true;
            cr_assert_str_eq(list->members[i]->name, "");
            cr_assert_eq(list->members[i]->n_peerurls, 1);
            cr_assert_str_eq(list->members[i]->peerurls[0], won->url);
            /* Added as a voter: a learner until it has caught up (it never starts here). */
            cr_assert(list->members[i]->islearner);
        }
    cr_assert(found);
    protobuf_c_message_free_unpacked(resp, NULL);
}

Test(cluster_api, garbage_and_strangers_are_refused, .init = start, .fini = stop, .timeout = 60)
{
    int l = leader_index(), f = (l + 1) % 3;
    /* Bytes that are no MemberAdd (a field 1 of wire type 7). */
    static const uint8_t junk[] = {0x0f, 0xff, 0xff};
    struct rpc_result res;
    rpc_channel_call(hc_channel(&C, f), "/etcdserverpb.Cluster/MemberAdd", junk, sizeof junk,
                     10000, &res);
    cr_assert_eq(res.status, GRPC_STATUS_INVALID_ARGUMENT, "%d: %s", res.status, res.message);
    rpc_result_free(&res);
    /* Peer.Member on the leader's peer port with the client's certificate (no member's name). */
    char target[64], err[256];
    snprintf(target, sizeof target, "127.0.0.1:%d", C.m[l].peer_port);
    struct rpc_channel_config cc = {.target = target, .tls = &C.client_tls, .threads = 1};
    struct rpc_channel *ch = rpc_channel_create(&cc, err, sizeof err);
    cr_assert(ch, "%s", err);
    Etcdserverpb__MemberRemoveRequest rr = ETCDSERVERPB__MEMBER_REMOVE_REQUEST__INIT;
    rr.id = cfg[f].self_id;
    uint8_t *inner;
    size_t inner_len;
    cr_assert_eq(rpc_msg_pack(&rr.base, &inner, &inner_len), 0);
    Craft__Raft__MemberRequest mr = CRAFT__RAFT__MEMBER_REQUEST__INIT;
    mr.cluster_id = cfg[l].cluster.id;
    mr.method = 2;
    mr.request.data = inner;
    mr.request.len = inner_len;
    ProtobufCMessage *resp = NULL;
    rpc_channel_call_msg(ch, "/craft.raft.Peer/Member", &mr.base,
                         &craft__raft__member_reply__descriptor, 10000, &resp, &res);
    cr_assert_eq(res.status, GRPC_STATUS_PERMISSION_DENIED, "%d: %s", res.status, res.message);
    rpc_result_free(&res);
    free(inner);
    rpc_channel_destroy(ch);
    /* Nothing was removed. */
    Etcdserverpb__MemberListRequest lr = ETCDSERVERPB__MEMBER_LIST_REQUEST__INIT;
    char msg[256];
    cr_assert_eq(call(f, "/etcdserverpb.Cluster/MemberList", &lr.base,
                      &etcdserverpb__member_list_response__descriptor, &resp, msg, sizeof msg),
                 GRPC_STATUS_OK, "%s", msg);
    cr_assert_eq(((Etcdserverpb__MemberListResponse *)resp)->n_members, 3);
    protobuf_c_message_free_unpacked(resp, NULL);
}
