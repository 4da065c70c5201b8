/* peer.h: the Raft peer service over gRPC (services/proto/raftpb.proto): a struct raft_transport
 * for the node runtime, and the server side that feeds received messages to the node.
 *
 * What it promises:
 * - Outgoing: one rpc/ channel and one ordered client stream (Peer.Raft) per peer, opened lazily
 *   and reopened after failures with a bounded backoff. send() packs the messages into Batches of
 *   at most max_batch_bytes and queues them on the stream, waiting at most send_timeout_ms for
 *   room; a peer that is down or too slow makes send() fail at once or after that bound, and the
 *   messages are dropped (the consensus core retries). It never blocks the other peers.
 * - The member table changes at run time (peer_set_cluster, from the configuration in force):
 *   members that leave lose their channel, streams and pending calls (closed in the
 *   background), members that come get a channel (streams open lazily, as for every member).
 *   The hot path (send, deliver) takes a read lock and a reference, never waits for a change.
 * - Who a caller is (authorization), always by the table in force:
 *   - a verified certificate whose CN or a SAN equals a member's name is that member (the
 *     strict rule; this member's own name is refused);
 *   - a member added by peer URL alone (etcd's MemberAdd) has no name until it publishes it: a
 *     certificate that names no member (CN and SANs) is accepted as unnamed member Y when the
 *     caller claims to be Y (Hello's member_id, the `from` of its first Raft message, a
 *     snapshot's sender) and Y is unnamed in the table; the name-to-Y binding is remembered
 *     (for calls that claim nothing, such as Peer.Forwards) while Y stays unnamed. Once the
 *     name is published (cluster_set_name) the strict rule applies;
 *   - a certificate naming a member that was in the table and is no longer (a small bounded
 *     list of the latest PEER_REMOVED_MAX removed names and ids, forgotten if they come back),
 *     or claiming such an id, is refused with PERMISSION_DENIED "member X was removed from the
 *     cluster" (PEER_REMOVED_TEXT); any other caller with "peer certificate names no other
 *     member of this cluster".
 * - Incoming: a Peer.Raft stream is accepted only from a member (above); others are refused
 *   with PERMISSION_DENIED, and an accepted stream is checked again at its next Batch after
 *   every table change (a member removed meanwhile is then refused). A Batch from another
 *   cluster (cluster id) is refused with FAILED_PRECONDITION. A message whose `from` is not the
 *   authenticated member, or whose `to` is not this member, is dropped. A Batch that does not
 *   decode ends the stream with INVALID_ARGUMENT. With insecure (plaintext, tests only) the
 *   claimed `from` is trusted, except that a removed member's id is refused.
 * - Removed: when a peer refuses this member as removed (its Raft stream or its Hello), the
 *   on_removed callback runs once.
 * - Forwarded client writes use the same channels: services/forward.h opens one Peer.Forwards
 *   stream per leader through peer_stream_open and authorizes incoming ones with
 *   peer_stream_member (the Peer.Raft rule above). Unary calls between members (Peer.Hello)
 *   are authorized with peer_call_member.
 * - Snapshots (InstallSnapshot): send_snapshot streams a snapshot file to a peer with Peer.Snapshot,
 *   one chunk (snapshot_chunk_bytes, default 1 MiB) per call, each acknowledged with where the
 *   receiver stands, so a transfer resumes after a dropped connection or a restart; paced to
 *   snapshot_rate bytes per second. The receiving side writes the chunks into its node's snapshot
 *   store (raft/snap/snap.h: kept aside, verified whole) and hands the leader's message to the
 *   node only then; a chunk from anyone but the named leader is refused. A chunk the store
 *   refuses (a transfer that does not verify, a full disk) is logged by the receiver with the
 *   store's reason and fails the call with it; the sender logs it too.
 * - Client URLs: every member calls Peer.Hello on each peer (retrying every 500 ms until it has
 *   answered once; members added later too) so that each member knows every other member's
 *   --advertise-client-urls, for MemberList and for telling clients where the leader is.
 * - Publishing the name: while this member is unnamed in its own table it calls Hello on every
 *   peer about once a second (PEER_PUBLISH_RETRY_MS), with its name; a member that receives a
 *   Hello from an unnamed member whose certificate carries the name it sends calls
 *   on_unnamed_hello (the server's leader then binds the name in the table).
 * - Asking whether it was removed (peer_probe_removed): a member whose configuration in force
 *   leaves it out cannot learn on its own that the change committed (the leader no longer sends
 *   to it); while the owner asks, it calls Hello on every peer about once a second, and a peer
 *   that has let it go refuses it as removed (on_removed).
 * - Joining (peer_join_discover): a member started with --initial-cluster-state existing and no
 *   data asks the listed members for the cluster id and member table (Hello with join set).
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

/* Part of the message a member refused as removed gets (and looks for). */
#define PEER_REMOVED_TEXT "removed from the cluster"
#define PEER_REMOVED_MAX 16          /* removed names and ids remembered */
#define PEER_PUBLISH_RETRY_MS 1000   /* Hello again while this member is unnamed */

struct peer_config {
    const struct cluster *cluster; /* copied: the table to start with (peer_set_cluster later) */
    uint64_t self_id;
    const char *name;              /* this member's --name, told to peers in Hello */
    const struct rpc_tls *tls;     /* peer certificate, key and CA; required unless insecure */
    bool insecure;
    size_t max_batch_bytes;        /* 0 = default */
    int send_timeout_ms;           /* 0 = default */
    int stream_queue;              /* 0 = default */
    size_t max_recv_bytes;         /* 0 = default */
    const char *client_urls;       /* this member's --advertise-client-urls, told to peers */
    size_t snapshot_chunk_bytes;   /* 0 = default; at most max_recv_bytes - 64 KiB */
    uint64_t snapshot_rate;        /* snapshot bytes per second per transfer; 0 = unbounded */
    /* Test fault, never set in production: flip one byte in the middle of the Nth snapshot chunk
     * this member sends (counted from 1 over all its transfers; once), as a transfer damaged on
     * the way would be. TLS makes that impossible to do from outside, and the receiver's
     * whole-file check must catch it (docs/snapshots.md "Test fault"). Only craftd_testfaults
     * (services/BUILD) sets it, from CRAFT_TEST_FAULT_SNAPSHOT_CHUNK. 0 = off. */
    uint64_t test_fault_snapshot_chunk;
    /* Called on an RPC thread (must not block, must not call back into the peer) when member
     * `id`, unnamed in the table, said Hello with a certificate that carries `name`. May be NULL. */
    void (*on_unnamed_hello)(void *arg, uint64_t id, const char *name);
    /* Called once, on an RPC thread (must not block), when a peer refused this member as removed
     * from the cluster; why is the peer's message. May be NULL. */
    void (*on_removed)(void *arg, const char *why);
    void *cb_arg;
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

/* Replaces the member table (a valid table, cluster_check(); its cluster id is not used: the
 * wire's stays the one given at creation). Members no longer in it: channel, streams and calls
 * closed (in the background), their names and ids remembered as removed; members new to it or
 * whose name or peer URL changed: a new channel (the old one closed), told Hello. Any thread
 * but an RPC callback of this peer's own channels; calls are serialized. */
void peer_set_cluster(struct peer *p, const struct cluster *c);
/* While on: Hello to every peer each PEER_PUBLISH_RETRY_MS, so a refusal as removed arrives. */
void peer_probe_removed(struct peer *p, bool on);
/* A copy of the member table in force. */
void peer_get_cluster(struct peer *p, struct cluster *out);

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

/* The member a unary call (or a stream) on the peer port comes from, by the rules above (no
 * claim: an unnamed member only through a binding its Hello made). Returns the member's id, or
 * 0 (refuse it). With insecure (tests only) every caller is accepted and 1 is returned. */
uint64_t peer_call_member(struct peer *p, struct rpc_call *call);
uint64_t peer_stream_member(struct peer *p, struct rpc_stream *s);

/* The authorization rule itself, for a verified certificate `cert` and the member id the caller
 * claims (0: none): the member's id, or 0 with why filled ("... removed from the cluster" when
 * it is a removed member). Used by the handlers above; exposed for tests. */
uint64_t peer_authorize(struct peer *p, const struct rpc_peer *cert, uint64_t claimed, char *why,
                        size_t whylen);

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

/* Bytes of Raft message Batches (Peer.Raft streams; not snapshots, forwarded writes or Hello)
 * sent to and received from each member since peer_create, counted lock-free (etcd's
 * etcd_network_peer_sent_bytes_total / _received_bytes_total), and round trips to it
 * (etcd_network_peer_round_trip_time_seconds): at most once a second, a Batch of heartbeats
 * alone carries a probe token that the member echoes in its next Batch back (raftpb.proto
 * Batch.probe); the time from sending to the echo is one round trip, network plus the
 * follower's handling of a heartbeat. Only a leader sends heartbeats, so only a leader measures.
 * Buckets: metrics_buckets_etcd_rtt (per bucket, not cumulative; [14] = above). Fills up to
 * max, one per member ever exchanged with; returns how many were filled. */
struct peer_traffic {
    uint64_t id;
    uint64_t sent_bytes, received_bytes;
    uint64_t rtt_counts[15], rtt_sum_ns, rtt_count;
};
size_t peer_traffic_get(struct peer *p, struct peer_traffic *out, size_t max);

/* Waits up to timeout_ms until every other member has answered this member's Hello (the Hello
 * thread retries every 500 ms), or one said it has seen this member run before (PeerHello
 * you_have_run). Returns how many answered; *has_run_says is the id of a member that said so, or
 * 0. For a start with an empty data directory: a nonzero *has_run_says means this member lost
 * its disk (services/server.c refuses to start). */
int peer_wait_hello(struct peer *p, int timeout_ms, uint64_t *has_run_says);

/* Joining a running cluster (--initial-cluster-state existing with an empty data directory):
 * asks the members of `listed` (--initial-cluster) other than the one named self_name for the
 * cluster id and member table (Peer.Hello with join set, over the peer TLS of tls; plaintext
 * with insecure), round after round every 500 ms, until one answers with a table holding a
 * member at self_url's address (-> 0, *out filled), or every listed member has answered with
 * one that does not (-> PEER_JOIN_ENOTMEMBER: "this member is not in the cluster: add it first
 * with etcdctl member add"), or timeout_ms pass (-> PEER_JOIN_ENOTMEMBER if some answered
 * without it, else PEER_JOIN_EUNREACHABLE naming every member tried and its last error). A
 * refusal as removed gives PEER_JOIN_EREMOVED. err gets one sentence in every case. */
enum { PEER_JOIN_EUNREACHABLE = -1, PEER_JOIN_ENOTMEMBER = -2, PEER_JOIN_EREMOVED = -3 };
#define PEER_JOIN_NOT_MEMBER_TEXT "this member is not in the cluster: add it first with etcdctl member add"
int peer_join_discover(const struct cluster *listed, const char *self_name,
                       const struct cluster_url *self_url, const struct rpc_tls *tls, bool insecure,
                       int timeout_ms, struct cluster *out, char *err, size_t errlen);

#endif
