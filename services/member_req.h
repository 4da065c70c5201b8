/* member_req.h: what the Cluster service (cluster_api.c) does with the bytes of a membership
 * request, apart from gRPC and the node, so the fuzz target (tests/fuzz/kv_req_fuzz.c) runs
 * the handlers' code: the request messages of MemberAdd/Remove/Update/Promote and MoveLeader,
 * a follower's Peer.Member hand-over, the leader's answer a follower relays, and the table edit
 * an Add makes. (The rules cluster_api_check_urls and cluster_api_target, declared in
 * cluster_api.h, are defined in member_req.c for the same reason.)
 *
 * What it promises
 * - The descriptors and header slots per method (MEMBER_REQ_*: Peer.Member's numbers); an
 *   unknown method gets MoveLeader's request and Promote's response, as cluster_api.c always did
 *   (callers check the method first).
 * - member_req_peer_check: a Peer.Member request of another cluster is FAILED_PRECONDITION, an
 *   unknown method INVALID_ARGUMENT.
 * - member_req_add_by_url: appends a member known by its peer URL only (see member_req.c).
 */
#ifndef CRAFT_SERVICES_MEMBER_REQ_H
#define CRAFT_SERVICES_MEMBER_REQ_H

#include <stddef.h>
#include <stdint.h>

#include "services/cluster.h"
#include "services/proto/etcd/rpc.pb-c.h"
#include "services/proto/raftpb.pb-c.h"

/* Peer.Member's method numbers (raftpb.proto); MoveLeader never leaves the member called. */
enum {
    MEMBER_REQ_ADD = 1,
    MEMBER_REQ_REMOVE = 2,
    MEMBER_REQ_UPDATE = 3,
    MEMBER_REQ_PROMOTE = 4,
    MEMBER_REQ_MOVE_LEADER = 5,
};

const ProtobufCMessageDescriptor *member_req_desc(int method);
/* The leader's response to a forwarded change (MEMBER_REQ_ADD..PROMOTE). */
const ProtobufCMessageDescriptor *member_req_response_desc(int method);
/* The header slot of a response decoded with member_req_response_desc(method). */
Etcdserverpb__ResponseHeader **member_req_header(int method, ProtobufCMessage *m);

/* A follower's Peer.Member request: 0, or -1 with the status to answer. */
int member_req_peer_check(const Craft__Raft__MemberRequest *r, uint64_t cluster_id, int *code,
                          const char **msg);

/* Appends a member known by its peer URL u only (name "" until it starts) to c, its id
 * cluster_member_id_url of the URL with the token salted by `salt`: 0 (*id set),
 * CLUSTER_EURLEXISTS (another member listens there), CLUSTER_EEXIST, CLUSTER_EFULL. */
int member_req_add_by_url(struct cluster *c, const struct cluster_url *u, const char *token,
                          uint64_t salt, uint64_t *id);

#endif
