/* kv_service.h: etcd v3's KV, Maintenance (Status, Snapshot, MoveLeader) and Cluster gRPC
 * services over a craft node and its KV state machine (services/kvstore), so etcdctl and etcd
 * client libraries work unchanged. The Cluster service and MoveLeader are services/cluster_api.h's
 * (membership changes decided by the leader, with etcd's rules); this module creates it and
 * registers its methods with its own.
 *
 * What it promises:
 * - Any member serves any request. Writes (Put, DeleteRange, Txn with writes, Compact) are
 *   validated (invalid requests never enter the log), proposed on the leader, and answered once
 *   applied; a follower forwards the write to the leader over the mutual-TLS peer connection
 *   and relays the answer, so clients never need to find the leader. Forwarded writes travel
 *   batched on one ordered stream per leader (Peer.Forwards, services/forward.h: at most
 *   FWD_DEFAULT_MAX_INFLIGHT waiting per stream, beyond that "etcdserver: too many requests");
 *   each waits at most the proposal timeout + 1 s; a broken stream fails its writes with
 *   UNAVAILABLE "etcdserver: no leader", a leader that lost its leadership answers "etcdserver:
 *   leader changed".
 * - Reads (Range, read-only Txn) are linearizable by default: the member waits for a ReadIndex
 *   (raft/node/node.h raft_node_read_index: one leadership-confirming heartbeat round shared by every
 *   read waiting at that moment; a follower asks the leader for the index) and serves from its
 *   own state once it has applied that far. serializable=true Ranges are served at once from
 *   local state and may be stale.
 * - Writes that would grow the store past --quota-backend-bytes are refused before they enter the
 *   log (deletes and compaction are still accepted, to make room).
 * - The member table (who one may forward to) follows membership changes:
 *   kv_service_set_cluster() replaces it, from any thread, while writes are being forwarded.
 * - A learner serves only what etcd 3.4 lets a learner serve: Maintenance.Status and
 *   serializable Ranges; every other client call (writes, linearizable reads, Txn, Compact,
 *   the Cluster service, MoveLeader, Snapshot) gets UNAVAILABLE "etcdserver: rpc not supported
 *   for learner" (KV_ERR_LEARNER), so clients move to a voter. kv_service_set_learner() says
 *   which this member is (the configuration in force); checking it is one atomic load.
 * - Every response carries etcd's ResponseHeader: cluster_id, member_id (this member), revision,
 *   raft_term. Errors use etcd's gRPC codes and messages ("etcdserver: no leader",
 *   "etcdserver: request timed out", "etcdserver: request is too large", "etcdserver: too many
 *   requests", the store's validation and revision errors).
 */
#ifndef CRAFT_SERVICES_KV_SERVICE_H
#define CRAFT_SERVICES_KV_SERVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KV_ERR_LEARNER "etcdserver: rpc not supported for learner" /* etcd's, UNAVAILABLE */

#include "raft/node/node.h"
#include "rpc/rpc.h"
#include "services/cluster.h"
#include "services/forward.h"
#include "services/kvstore/kv_store.h"
#include "services/peer.h"

/* The etcd API level craft serves, reported by Maintenance.Status (etcdctl endpoint status). */
#define KV_SERVICE_VERSION "3.4.0"

struct auth_tokens;

struct kv_service_config {
    struct raft_node *node;
    struct kv_store *store;
    struct peer *peer;
    const struct cluster *cluster; /* the table from --initial-cluster (copied) */
    const char *token;             /* --initial-cluster-token (copied): ids of members added by
                                      URL; NULL = craftd's default "craft-cluster" */
    uint64_t self_id;
    const char *client_urls;       /* this member's --advertise-client-urls */
    unsigned timeout_ms;           /* a write's or read's wait for commit/read index */
    size_t max_request_bytes;      /* etcd's --max-request-bytes */
    unsigned max_txn_ops;          /* etcd's --max-txn-ops; 0 = 128 */
    uint64_t quota_bytes;          /* etcd's --quota-backend-bytes: writes past it are refused
                                      ("database space exceeded"); 0 = no check */
    unsigned election_ms;          /* --election-timeout: MoveLeader's wait, and how recently a
                                      member must have been heard from to count as started
                                      (cluster_api.h); 0 = 1000 */
    unsigned max_learners;         /* learners at once; 0 = CLUSTER_API_DEFAULT_MAX_LEARNERS (1,
                                      etcd's) */
    bool no_strict_reconfig_check; /* etcd's --strict-reconfig-check=false */
    struct auth_tokens *tokens;    /* Authenticate's tokens (auth_token.h); NULL = none */
};

struct kv_service;

struct kv_service *kv_service_create(const struct kv_service_config *cfg);
/* Registers KV, Maintenance (Status, Snapshot, MoveLeader) and Cluster on the client server. */
int kv_service_register_client(struct kv_service *s, struct rpc_server *client_srv);
/* Registers Peer.Forwards and Peer.Member on the peer server. */
int kv_service_register_peer(struct kv_service *s, struct rpc_server *peer_srv);
/* Leases (services/lease_service.h): a LeaseGrant (revoke false) or LeaseRevoke log command
 * (cmd, malloc'd, taken) goes the way of every write - refused on a learner, a grant also past
 * the quota, proposed on the leader or forwarded to it - and call is answered from the applied
 * entry's result (LeaseGrantResponse / LeaseRevokeResponse with this member's header). */
void kv_service_lease_write(struct kv_service *s, struct rpc_call *call, bool revoke,
                            uint8_t *cmd, size_t len);
/* ---- Auth (services/auth_service.h, docs/auth.md) ----
 * Every write carries the caller's identity (its certificate's CN) into the log, where apply
 * checks it against the auth state at that point (kv_store.h "Auth"); reads are checked on this
 * member's auth state after their read index (serializable ones at once). */
/* An auth log command (cmd, malloc'd, taken) goes the way of every write; call is answered with
 * the empty response of type resp (every Auth write response is just a header) or the result's
 * error. */
void kv_service_auth_write(struct kv_service *s, struct rpc_call *call,
                           const ProtobufCMessageDescriptor *resp, uint8_t *cmd, size_t len);
/* Calls fn(arg, true) once this member has applied everything committed when it was called
 * (a ReadIndex), or fn(arg, false) after failing call with the node's error. */
void kv_service_read_barrier(struct kv_service *s, struct rpc_call *call,
                             void (*fn)(void *arg, bool ok), void *arg);
/* Who the caller of call is, in auth state a (auth_token.h auth_caller: a token, else the
 * certificate's CN): 0 with *user (NULL = no identity) pointing into buf, or -1 after failing
 * call with "invalid auth token". */
struct kv_auth;
int kv_service_caller(struct kv_service *s, const struct kv_auth *a, struct rpc_call *call,
                      char *buf, size_t buflen, const char **user);
/* The member's simple tokens (auth_token.h), for Authenticate; may be NULL. */
struct auth_tokens *kv_service_tokens(struct kv_service *s);
void kv_service_fill_header(struct kv_service *s, Etcdserverpb__ResponseHeader *h);
struct kv_store *kv_service_store(struct kv_service *s);
/* Whether this member is served as a learner now (kv_service_set_learner). */
bool kv_service_is_learner(struct kv_service *s);
/* The member table in force changed (the node's on_conf, decoded): forwarding follows it. Any
 * thread; the cluster id must stay the same. */
void kv_service_set_cluster(struct kv_service *s, const struct cluster *c);
/* Whether this member is to be served as a learner: not a voter in the configuration in force
 * (a learner, a member still joining, or a removed one; the node's on_conf). */
void kv_service_set_learner(struct kv_service *s, bool learner);
/* A copy of the member table kv_service_set_cluster last set (or the initial one). */
void kv_service_cluster_get(struct kv_service *s, struct cluster *out);
/* Forwarding counters (services/forward.h). */
void kv_service_fwd_stats(struct kv_service *s, struct fwd_stats *out);
/* Fails the writes this member is forwarding ("etcdserver: server stopped") and drops answers
 * that arrive later, fails queued membership changes, and returns once no thread of this service
 * uses the node (a membership change under way may hold it up to the proposal timeout): call it
 * before stopping the node. From then on peer-port requests are refused without the node. */
void kv_service_stop_forwarding(struct kv_service *s);
/* After both servers are shut down, the node stopped and the peer destroyed (their calls and
 * streams have completed). */
void kv_service_destroy(struct kv_service *s);

#endif
