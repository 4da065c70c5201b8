/* transport.h: how a craft node exchanges Raft messages with its peers.
 *
 * The runtime (node.h) never touches the network; it is handed a struct raft_transport. The
 * gRPC peer service (services/peer.h, services/peer.c) is one implementation; tests use an
 * in-memory one that can drop, delay, stall and partition. The contract:
 * - send() and try_send() for peer `to` are never called concurrently (the runtime serializes
 *   them per peer), so an implementation may keep per-peer state without locking against other
 *   calls for the same peer. Messages to one peer are delivered in the order given, or not at all
 *   (Raft tolerates loss; it does not need retransmission from the transport). send() may block
 *   for a bounded time while the peer's outgoing window is full, never forever; it returns 0
 *   when the messages were handed off, or a negative code when the peer is unreachable (the
 *   messages are dropped; the core retries). send() runs on the peer's replicator thread.
 * - try_send(), optional, never blocks: it hands off the first k <= n messages and returns k
 *   (fewer than n when the window is full: the runtime queues the rest for send()), or a negative
 *   code like send(). The runtime calls it from whichever thread produced the messages (the
 *   driver, a transport thread delivering a message, the WAL writer) when nothing is queued for
 *   that peer, to save the hand-off to the replicator thread on the commit path.
 * - Received messages are handed to the node with raft_node_step() from any transport thread.
 * - close_peer(), if set, is called when the replicator for `to` stops (shutdown, removal),
 *   once per replicator; after a removal, send() and try_send() are no longer called for `to`
 *   (until it is added again), but a send_snapshot() to it already under way may still run.
 * - send_snapshot(), needed with snapshots, carries one snapshot file to one peer (below).
 */
#ifndef CRAFT_RAFT_TRANSPORT_H
#define CRAFT_RAFT_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

#include "raft/core/raft.h"

struct snap_file;

struct raft_transport {
    void *ctx;
    int (*send)(void *ctx, uint64_t to, const struct raft_msg *msgs, size_t n);
    long (*try_send)(void *ctx, uint64_t to, const struct raft_msg *msgs, size_t n); /* or NULL */
    void (*close_peer)(void *ctx, uint64_t to);
    /* InstallSnapshot (needed when the node has a snapshot store): deliver the snapshot file f
     * (raft/snap/snap.h: read it with snap_file_chunk) to `to` and, once the receiver holds it
     * whole and verified, hand m (RAFT_MSG_SNAPSHOT naming it) to the receiving node with
     * raft_node_step_snapshot. Blocks on a thread of the node's own for the whole transfer;
     * resumes where the receiver says it stands; bounds its rate so heartbeats and other peers'
     * traffic still flow. 0 when delivered, a negative code when the transfer failed. */
    int (*send_snapshot)(void *ctx, uint64_t to, const struct raft_msg *m, struct snap_file *f);
};

#endif
