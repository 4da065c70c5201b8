/* peer.h: the Raft peer service over gRPC (services/proto/raftpb.proto): a struct raft_transport
 * for the node runtime, and the server side that feeds received messages to the node.
 *
 * What it promises:
 * - Outgoing: one rpc/ channel and one ordered client stream (Peer.Raft) per peer, opened lazily
 *   and reopened after failures with a bounded backoff. send() packs the messages into Batches of
 *   at most max_batch_bytes and queues them on the stream, waiting at most send_timeout_ms for
 *   room; a peer that is down or too slow makes send() fail at once or after that bound, and the
 *   messages are dropped (the consensus core retries). It never blocks the other peers.
 * - Incoming: a Peer.Raft stream is accepted only from a TLS peer whose verified certificate names
 *   a cluster member (CN or a SAN equal to the member's name) other than this one; others are
 *   refused with PERMISSION_DENIED. A Batch from another cluster (cluster id) is refused with
 *   FAILED_PRECONDITION. A message whose `from` is not the authenticated member, or whose `to`
 *   is not this member, is dropped. A Batch that does not decode ends the stream with
 *   INVALID_ARGUMENT. With insecure (plaintext, tests only) the claimed `from` is trusted.
 * - Forwarded client writes use the same channels: services/forward.h opens one Peer.Forwards
 *   stream per leader through peer_stream_open and authorizes incoming ones with
 *   peer_stream_member (the Peer.Raft rule above). Unary calls between members (Peer.Hello)
 *   are authorized with peer_call_member.
 * - Snapshots (InstallSnapshot): send_snapshot streams a snapshot file to a peer with Peer.Snapshot,
 *   one chunk (snapshot_chunk_bytes, default 1 MiB) per call, each acknowledged with where the
 *   receiver stands, so a transfer resumes after a dropped connection or a restart; paced to
 *   snapshot_rate bytes per second. The receiving side writes the chunks into its node's snapshot
 *   store (raft/snap/snap.h: kept aside, verified whole) and hands the leader's message to the
 *   node only then; a chunk from anyone but the named leader is refused.
 * - Client URLs: every member calls Peer.Hello on each peer (retrying every 500 ms until it has
 *   answered once) so that each member knows every other member's --advertise-client-urls,
 *   for MemberList and for telling clients where the leader is.
 * - Messages received before a node is attached, or after it is detached, are dropped; detach
 *   waits for deliveries in progress, so the node can then be stopped safely.
 */
#ifndef CRAFT_SERVICES_PEER_H
#define CRAFT_SERVICES_PEER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "raft/node/node.h"
#include "raft/node/transport.h"
#include "rpc/rpc.h"
#include "services/cluster.h"

#define PEER_DEFAULT_MAX_BATCH_BYTES (4u << 20) /* one Batch on the wire */
#define PEER_DEFAULT_SEND_TIMEOUT_MS 50         /* wait for room in a peer's stream queue */
#define PEER_DEFAULT_STREAM_QUEUE 256           /* Batches queued per peer stream */
#define PEER_DEFAULT_MAX_RECV_BYTES (16u << 20) /* largest Batch accepted */
#define PEER_DEFAULT_SNAPSHOT_CHUNK (1u << 20)  /* bytes per Peer.Snapshot call */

struct peer_config {
    const struct cluster *cluster; /* copied */
    uint64_t self_id;
    const struct rpc_tls *tls;     /* peer certificate, key and CA; required unless insecure */
    bool insecure;
    size_t max_batch_bytes;        /* 0 = default */
    int send_timeout_ms;           /* 0 = default */
    int stream_queue;              /* 0 = default */
    size_t max_recv_bytes;         /* 0 = default */
    const char *client_urls;       /* this member's --advertise-client-urls, told to peers */
    size_t snapshot_chunk_bytes;   /* 0 = default; at most max_recv_bytes - 64 KiB */
    uint64_t snapshot_rate;        /* snapshot bytes per second per transfer; 0 = unbounded */
};

struct peer;

struct peer *peer_create(const struct peer_config *cfg, char *err, size_t errlen);
/* Closes every stream and channel and frees. Detach the node (and stop it) first. */
void peer_destroy(struct peer *p);

/* The transport to give the node runtime (valid while p lives). */
struct raft_transport *peer_transport(struct peer *p);

/* Registers Peer.Raft and Peer.Hello on srv (before rpc_server_start). */
int peer_register(struct peer *p, struct rpc_server *srv);

/* Where received messages go. NULL detaches (waiting for deliveries in progress). */
void peer_attach(struct peer *p, struct raft_node *node);

/* An async unary call to member `to` on its peer port (e.g. Peer.Hello), over the same mutual
 * TLS channel as the Raft stream. 0 and cb fires once (rpc.h rpc_channel_call_async rules), or
 * an rpc error at once (unknown member, channel full). */
int peer_call_async(struct peer *p, uint64_t to, const char *method, const void *req, size_t len,
                    int deadline_ms, rpc_done_fn cb, void *arg);

/* Opens a client stream to member `to` on the same channel (e.g. Peer.Forwards; rpc.h rules:
 * give the handle back with close or cancel). NULL for an unknown member or a full channel.
 * Streams still open when peer_destroy runs get on_close(CANCELLED) before it returns. */
struct rpc_client_stream *peer_stream_open(struct peer *p, uint64_t to, const char *method,
                                           const struct rpc_client_stream_handler *h, void *arg);

/* The member a unary call (or a stream) on the peer port comes from: its verified certificate
 * must name a member of the cluster other than this one. Returns the member's id, or 0 (refuse
 * it). With insecure (tests only) every caller is accepted and 1 is returned. */
uint64_t peer_call_member(struct peer *p, struct rpc_call *call);
uint64_t peer_stream_member(struct peer *p, struct rpc_stream *s);

/* The cluster id every peer message carries. */
uint64_t peer_cluster_id(struct peer *p);

/* The --advertise-client-urls member `id` told us (copied into buf; "" if not known yet). */
void peer_client_urls(struct peer *p, uint64_t id, char *buf, size_t len);

/* Counters since peer_create, over all peers (for tests and metrics). Outgoing: Batches and
 * messages queued on a stream, and send()/try_send() calls that failed (the peer unreachable, in
 * backoff, or its queue full past the timeout). Incoming: Batches accepted from a member of this
 * cluster, their messages handed to the node or dropped (no node attached, a malformed message,
 * or a wrong sender or recipient), and Peer.Raft streams refused for their certificate. */
struct peer_stats {
    uint64_t batches_sent, msgs_sent, send_failures;
    uint64_t batches_received, msgs_received, msgs_dropped, streams_refused;
    uint64_t snapshots_sent, snapshots_failed; /* InstallSnapshot transfers (Peer.Snapshot) */
};
void peer_stats_get(struct peer *p, struct peer_stats *out);

/* Waits up to timeout_ms until every other member has answered this member's Hello (the Hello
 * thread retries every 500 ms), or one said it has seen this member run before (PeerHello
 * you_have_run). Returns how many answered; *has_run_says is the id of a member that said so, or
 * 0. For a start with an empty data directory: a nonzero *has_run_says means this member lost
 * its disk (services/server.c refuses to start). */
int peer_wait_hello(struct peer *p, int timeout_ms, uint64_t *has_run_says);

#endif
