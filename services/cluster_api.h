/* cluster_api.h: etcd v3's Cluster service (MemberList, MemberAdd, MemberRemove, MemberUpdate,
 * MemberPromote) and Maintenance.MoveLeader over a craft node, with etcd 3.4's rules, gRPC codes
 * and messages, so `etcdctl member ...` and `etcdctl move-leader` work unchanged.
 *
 * What it promises:
 * - The member table is the configuration's: every configuration entry carries the whole table
 *   after the change as its context (cluster_encode; an empty context means the table from
 *   --initial-cluster), so the voters and learners Raft uses and the names and URLs clients see
 *   never disagree. MemberList answers from the configuration in force on this member (the
 *   newest in its log, as etcd 3.4 answers from its own view): every voter and learner with id,
 *   name ("" until a member added by URL has started), peer URL, client URLs (what the member
 *   told us, or this member's own) and isLearner.
 * - A change (MemberAdd, MemberRemove, MemberUpdate, MemberPromote) is decided by the leader: a
 *   follower hands the client's request to it over the peer port (Peer.Member, unary, at most
 *   the proposal timeout + 1 s) and relays its answer; with no leader known the client gets
 *   UNAVAILABLE "etcdserver: no leader". The leader checks the request against the table and the
 *   configuration in force, then proposes the new configuration with the new table as context
 *   (raft_node_change_conf: joint consensus when voters change) and answers once it is in force
 *   and committed: MemberAdd with the new member and every member, the others with every member.
 *   A refused change changes nothing.
 * - etcd's rules, in this order:
 *   MemberAdd: exactly one peer URL, http(s)://host:port with the cluster's scheme ("etcdserver:
 *   given member URLs are invalid"); not another member's address ("etcdserver: Peer URLs
 *   already exists"); at most max_learners learners ("etcdserver: too many learner members in
 *   cluster"); the strict check below. The new member's id is derived from its URL and the
 *   cluster token; its name is "" until it starts.
 *   MemberRemove: an unknown id is "etcdserver: member not found"; removing a voter passes the
 *   strict check; the leader may remove itself (it steps down once the change commits).
 *   MemberUpdate: an unknown id, bad or taken URLs as above; the voters stay as they are.
 *   MemberPromote: unknown id; not a learner ("etcdserver: can only promote a learner member");
 *   a learner whose log (the leader's view: its match index) is behind 90% of the leader's last
 *   index ("etcdserver: can only promote a learner member which is in sync with leader"); the
 *   strict check.
 * - Strict reconfiguration check (etcd's --strict-reconfig-check, on by default): a member is
 *   "started" when the leader heard from it within the last election timeout (the leader itself
 *   always is). Adding a voter needs started voters >= a quorum of the voters after the change
 *   (adding the second voter to a one-member cluster is allowed, as etcd allows it); removing a
 *   voter needs started voters among those that stay >= their quorum; promoting counts the
 *   learner as started. Otherwise "etcdserver: re-configuration failed due to not enough started
 *   members". Adding any member also needs every voter started ("etcdserver: unhealthy cluster"),
 *   as etcd refuses an add while the leader is not connected to every voter.
 * - One change at a time: changes run in arrival order on one worker thread per member (at most
 *   CLUSTER_API_MAX_QUEUED waiting, beyond that "etcdserver: too many requests"). A change that
 *   finds another still in progress (started by an earlier leader, or one that timed out), or a
 *   leadership transfer under way, waits for it and is then checked afresh; past the proposal
 *   timeout it fails "etcdserver: request timed out" having changed nothing. (etcd's raft drops
 *   such a proposal and the client sees the same time-out.) Other outcomes of the change: a
 *   leadership change before it committed is "etcdserver: leader changed" (it may still take
 *   effect); its own time-out "etcdserver: request timed out".
 * - MoveLeader (leader only, as etcd: elsewhere FAILED_PRECONDITION "etcdserver: not leader";
 *   etcdctl sends it to the leader itself): a target that is not a voter is "etcdserver: bad
 *   leader transferee"; the leader hands over (raft_node_transfer_leader) and answers once it
 *   sees the target lead, at most two election timeouts + 1 s (then etcd's UNKNOWN "etcdserver:
 *   request timed out, leader transfer took too long"). Moving to the leader itself succeeds at
 *   once.
 * - Every answer carries etcd's ResponseHeader of the member the client called.
 */
#ifndef CRAFT_SERVICES_CLUSTER_API_H
#define CRAFT_SERVICES_CLUSTER_API_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "raft/core/raft.h"
#include "raft/node/node.h"
#include "rpc/rpc.h"
#include "services/cluster.h"
#include "services/node_gate.h"
#include "services/peer.h"

#define CLUSTER_API_DEFAULT_MAX_LEARNERS 1 /* etcd 3.4's maxLearners */
#define CLUSTER_API_MAX_QUEUED 16          /* changes waiting per member, and forwarded ones */

struct cluster_api_config {
    struct raft_node *node;
    struct peer *peer;             /* client URLs of the others; Peer.Member to the leader */
    struct node_gate *gate;        /* entered around every use of node (the owner closes it
                                      before stopping the node) */
    const struct cluster *initial; /* the table from --initial-cluster (copied) */
    const char *token;             /* --initial-cluster-token (copied); NULL = craftd's default */
    uint64_t self_id;
    const char *client_urls;       /* this member's --advertise-client-urls (copied) */
    unsigned timeout_ms;           /* a change's wait (the proposal timeout); 0 = 5000 */
    unsigned election_ms;          /* --election-timeout; 0 = 1000 */
    unsigned max_learners;         /* 0 = CLUSTER_API_DEFAULT_MAX_LEARNERS */
    bool no_strict_check;          /* etcd's --strict-reconfig-check=false */
    const atomic_bool *learner;    /* true while this member is a learner: every method is
                                      refused with "etcdserver: rpc not supported for learner"
                                      (etcd 3.4); NULL = never */
    /* Auth (docs/auth.md): MemberAdd/Remove/Update/Promote need the root role, as in etcd.
     * admin(arg, call, NULL, ...) returns 0 when the caller may, else the gRPC code with etcd's
     * message in msg. NULL = no check. */
    int (*admin)(void *arg, struct rpc_call *call, struct rpc_stream *st, char *msg,
                 size_t msglen);
    void *admin_arg;
};

struct cluster_api;

struct cluster_api *cluster_api_create(const struct cluster_api_config *cfg);
/* Registers the Cluster service's five methods and Maintenance.MoveLeader on the client server. */
int cluster_api_register_client(struct cluster_api *a, struct rpc_server *client_srv);
/* Registers Peer.Member on the peer server. */
int cluster_api_register_peer(struct cluster_api *a, struct rpc_server *peer_srv);
/* Fails every queued change ("etcdserver: server stopped") and refuses new ones; the change
 * under way (if any) ends when the owner closes the gate, which waits for its node call. */
void cluster_api_stop(struct cluster_api *a);
/* After the servers are shut down and the peer destroyed (forwarded calls have completed). */
void cluster_api_destroy(struct cluster_api *a);

/* ---- the rules, as pure functions (exposed for tests) --------------------------------------- */

enum cluster_api_change {
    CLUSTER_API_ADD_VOTER,
    CLUSTER_API_ADD_LEARNER,
    CLUSTER_API_REMOVE,
    CLUSTER_API_UPDATE,
    CLUSTER_API_PROMOTE,
};

/* Errors of the rules (negative, apart from cluster.h's and node.h's codes). */
enum {
    CLUSTER_API_ENOTSTARTED = -100, /* etcd's ErrGRPCMemberNotEnoughStarted */
    CLUSTER_API_EUNHEALTHY = -101,  /* ErrGRPCUnhealthy */
    CLUSTER_API_ENOTLEARNER = -102, /* ErrGRPCMemberNotLearner */
    CLUSTER_API_ENOTREADY = -103,   /* ErrGRPCLearnerNotReady */
    CLUSTER_API_ELEARNERS = -104,   /* ErrGRPCTooManyLearners */
    CLUSTER_API_EBADTARGET = -105,  /* ErrGRPCBadLeaderTransferee */
    CLUSTER_API_ENOTLEADER = -106,  /* ErrGRPCNotLeader (MoveLeader elsewhere than the leader) */
    CLUSTER_API_ETRANSFER = -107,   /* etcd's ErrTimeoutLeaderTransfer */
    CLUSTER_API_EONEURL = -108,     /* craft's own: a member has exactly one peer URL */
};

/* etcd's gRPC status for a rule's error (CLUSTER_API_E*), for a table edit's (cluster.h
 * CLUSTER_E*) with from_cluster, or for a node error during a change (node.h RAFT_NODE_E*) with
 * from_node. *msg is a static string. */
void cluster_api_status(int err, bool from_cluster, bool from_node, int *code, const char **msg);

/* The configuration after the change of member id (the table edit was already checked):
 * ADD_VOTER and PROMOTE make id a voter (PROMOTE: it was a learner), ADD_LEARNER a learner, REMOVE
 * drops it from voters or learners, UPDATE keeps cur's members. cur must not be joint. 0, or
 * CLUSTER_ENOTFOUND (REMOVE/PROMOTE/UPDATE of a non-member), CLUSTER_EEXIST (adding a member),
 * CLUSTER_API_ENOTLEARNER (PROMOTE of a voter), CLUSTER_ELAST (REMOVE of the only voter),
 * CLUSTER_EFULL (RAFT_MAX_NODES). */
int cluster_api_target(const struct raft_conf *cur, enum cluster_api_change ch, uint64_t id,
                       struct raft_conf *out);

/* The strict check (see above): started[i] says whether cur->voters[i] is started. id is the
 * member removed or promoted. 0, CLUSTER_API_ENOTSTARTED or CLUSTER_API_EUNHEALTHY. */
int cluster_api_strict_check(const struct raft_conf *cur, const bool *started,
                             enum cluster_api_change ch, uint64_t id);

/* etcd's isLearnerReady: a learner at match is in sync with a leader whose log ends at
 * leader_index when match >= 90% of it. */
bool cluster_api_learner_ready(uint64_t match, uint64_t leader_index);

/* MemberAdd/MemberUpdate's peer URLs: exactly one, valid (cluster_parse_url), of the scheme
 * `tls` says. 0 (*out parsed), CLUSTER_EBADURL or CLUSTER_API_EONEURL. */
int cluster_api_check_urls(char *const *urls, size_t n, bool tls, struct cluster_url *out);

#endif
