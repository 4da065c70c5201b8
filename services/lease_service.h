/* lease_service.h: etcd v3's Lease service (LeaseGrant, LeaseRevoke, LeaseKeepAlive,
 * LeaseTimeToLive, LeaseLeases) on the client port, the peer methods behind it, and the
 * leader's lessor thread that expires leases and checkpoints their remaining TTLs.
 * docs/lease.md has the design and every deviation from etcd.
 *
 * What it promises
 * - Grant and Revoke are writes (services/kv_service.h kv_service_lease_write): proposed on the
 *   leader, forwarded by a follower, answered from the applied entry; a learner refuses them.
 *   Grant: TTL above KV_MAX_LEASE_TTL is OUT_OF_RANGE "etcdserver: too large lease TTL"; a TTL
 *   below the minimum (ceil(1.5 x election timeout) seconds, etcd's) is raised to it; ID 0
 *   gets a positive ID chosen here (member bits, time and a counter, as etcd's idutil); the
 *   quota applies to Grant, not to Revoke.
 * - Expiry is the leader's decision (services/lessor.h), on the monotonic clock: a lessor
 *   thread per member follows the node's role; once leader, it waits until everything
 *   committed before its term is applied (raft_node_read_index), promotes the lessor from the
 *   store with every lease extended by an election timeout, then every tick proposes revokes
 *   of expired leases (at most revoke_rate per second) and, when enabled, checkpoints of
 *   remaining TTLs every checkpoint interval (batches of at most LEASE_CHECKPOINT_BATCH).
 *   Losing leadership demotes it.
 * - LeaseKeepAlive (bidi stream): each request is renewed at the leader's lessor - here when
 *   this member is the promoted leader, else forwarded to the leader with an async unary call
 *   on the peer port (Peer.LeaseRenew) - and answered LeaseKeepAliveResponse{ID, TTL} (TTL 0:
 *   not found or expired) with this member's header (revision as of the request's arrival).
 *   Answers may come out of order. A renew that needs the store's remaining TTL cleared first
 *   (lessor.h) is answered once that checkpoint is applied. A renew (or a TimeToLive) reaching
 *   a leader whose lessor is not promoted yet waits for the promotion (at most 4096 at once;
 *   the promotion is bounded by the proposal timeout). An error (no leader, leadership lost,
 *   time-out: UNAVAILABLE with etcd's text) ends the stream, as etcd ends it; clients reopen
 *   it.
 * - Bounds: at most max_inflight requests of one stream are being renewed or waiting to be
 *   sent; at that point the stream is no longer read (gRPC flow control holds the client
 *   back), and a client that never reads fills the rpc layer's send queue, which also stops
 *   reading - so a stream holds at most stream_queue + max_inflight small replies. At most
 *   max_streams keep-alive streams (beyond: RESOURCE_EXHAUSTED "etcdserver: too many
 *   requests").
 * - LeaseTimeToLive is answered by the leader (forwarded: Peer.LeaseTimeToLive): TTL in whole
 *   seconds, -1 for an unknown lease, the attached keys when asked. LeaseLeases lists this
 *   member's store (any member, as etcd lists its own lessor).
 * - After lease_service_stop nothing answers: open keep-alive streams end UNAVAILABLE
 *   "etcdserver: server stopped", new calls get the same, the lessor thread has stopped.
 */
#ifndef CRAFT_SERVICES_LEASE_SERVICE_H
#define CRAFT_SERVICES_LEASE_SERVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <grpc/status.h>

#include "services/proto/etcd/rpc.pb-c.h"

/* Declared, not included, so the request decoders build alone (tests/fuzz). */
struct raft_node;
struct rpc_server;
struct kv_store;
struct kv_service;
struct peer;

#define LEASE_DEFAULT_REVOKE_RATE 1000             /* etcd's leaseRevokeRate */
#define LEASE_DEFAULT_CHECKPOINT_MS (5 * 60 * 1000) /* etcd's 5m */
#define LEASE_DEFAULT_MAX_INFLIGHT 1024            /* --max-lease-keepalive-inflight */
#define LEASE_DEFAULT_MAX_STREAMS 10000            /* --max-lease-keepalive-streams */
#define LEASE_CHECKPOINT_BATCH 1000                /* etcd's maxLeaseCheckpointBatchSize */
#define LEASE_CHECKPOINTS_INFLIGHT 8               /* checkpoint entries proposed, unapplied */

/* etcd's MaxLeaseTTL and its text (the store's KV_MAX_LEASE_TTL and KV_ERR_LEASE_TTL_TOO_LARGE:
 * lease_service.c asserts they agree), here so the decoders build without the store. */
#define LEASE_MAX_TTL 9000000000LL
#define LEASE_ERR_TTL_TOO_LARGE "etcdserver: too large lease TTL"

#define LEASE_PEER_RENEW "/craft.raft.Peer/LeaseRenew"
#define LEASE_PEER_TTL "/craft.raft.Peer/LeaseTimeToLive"

struct lease_service_config {
    struct kv_store *store;
    uint64_t cluster_id, self_id;
    unsigned election_ms;   /* the promote extension and the minimum TTL; 0 = 1000 */
    unsigned tick_ms;       /* the lessor thread's period; 0 = 100 */
    unsigned timeout_ms;    /* proposals and forwarded calls; 0 = 5000 */
    unsigned revoke_rate;   /* 0 = LEASE_DEFAULT_REVOKE_RATE */
    bool checkpoint;        /* etcd's --experimental-enable-lease-checkpoint */
    uint64_t checkpoint_ms; /* 0 = LEASE_DEFAULT_CHECKPOINT_MS */
    unsigned max_inflight;  /* 0 = default */
    unsigned max_streams;   /* 0 = default */
    size_t max_send_bytes;  /* the client server's largest reply (TimeToLive's keys); 0 = 4 MiB */
};

struct lease_service;

/* Creates the service and sets the store's lease hook: call before the store is applied to
 * (before the node starts). NULL on failure. */
struct lease_service *lease_service_create(const struct lease_service_config *cfg);
/* Starts the lessor thread over node, with kv for Grant and Revoke and peer for forwarding.
 * 0 or -1. */
int lease_service_start(struct lease_service *ls, struct raft_node *node, struct kv_service *kv,
                        struct peer *peer);
/* Registers the Lease service on the client server and Peer.LeaseRenew / LeaseTimeToLive on
 * the peer server (before they start). */
int lease_service_register(struct lease_service *ls, struct rpc_server *client_srv,
                           struct rpc_server *peer_srv);
/* Ends every keep-alive stream UNAVAILABLE, refuses what comes later, stops the lessor thread
 * and waits for every use of the node from this service: call before stopping the node. */
void lease_service_stop(struct lease_service *ls);
/* After the servers are shut down, the node stopped and the peer destroyed. NULL is fine. */
void lease_service_destroy(struct lease_service *ls);

/* Counters since create (etcd_debugging_lease_*_total; docs/metrics.md). */
struct lease_stats {
    uint64_t granted, revoked, renewed; /* applied grants and revokes; renews at this lessor */
    uint64_t streams;                   /* keep-alive streams open now */
    bool primary;                       /* this member's lessor is the promoted leader's */
    uint64_t leases;                    /* leases the primary lessor tracks (0 elsewhere) */
};
void lease_stats_get(struct lease_service *ls, struct lease_stats *out);

/* ---- What the service does with bytes from outside (pure; tests/fuzz) ---- */

/* A LeaseKeepAliveRequest (the stream's and Peer.LeaseRenew's request): 0 and *id, or -1. */
int lease_req_keepalive(const uint8_t *data, size_t len, int64_t *id);
/* A LeaseTimeToLiveRequest: 0 with *id and *keys, or -1. */
int lease_req_ttl(const uint8_t *data, size_t len, int64_t *id, bool *keys);
/* The leader's LeaseKeepAliveResponse to a forwarded renew: 0 with *ttl when it decodes, names
 * id and comes from cluster_id; -1 otherwise. */
int lease_resp_keepalive(const uint8_t *data, size_t len, uint64_t cluster_id, int64_t id,
                         int64_t *ttl);
/* The leader's LeaseTimeToLiveResponse: the message (free with
 * etcdserverpb__lease_time_to_live_response__free_unpacked) when it decodes, names id and
 * comes from cluster_id; NULL otherwise. */
Etcdserverpb__LeaseTimeToLiveResponse *lease_resp_ttl(const uint8_t *data, size_t len,
                                                      uint64_t cluster_id, int64_t id);
/* etcd's minimum TTL for an election timeout: ceil(1.5 x election_ms) in seconds. */
int64_t lease_min_ttl(unsigned election_ms);
/* A Grant as it will enter the log: TTL raised to min_ttl; ID 0 replaced by next_id (which
 * must be nonzero). 0, or -1 with *code and *msg (GRPC_STATUS_OUT_OF_RANGE: too large)
 * - never a TTL or ID the store would refuse for being unset. */
int lease_grant_prepare(Etcdserverpb__LeaseGrantRequest *r, int64_t min_ttl, int64_t next_id,
                        int *code, const char **msg);

#endif
