/* transport.h: how a craft node exchanges Raft messages with its peers.
 *
 * The runtime (node.h) never touches the network; it is handed a struct raft_transport. The
 * gRPC peer service (services/peer_*) is one implementation; tests use an in-memory one that
 * can drop, delay, stall and partition. The contract:
 * - send() is called only by the replicator thread that owns peer `to` (one thread per peer), so
 *   an implementation may keep per-peer state without locking against other peers. Messages to one
 *   peer are delivered in the order given, or not at all (Raft tolerates loss; it does not need
 *   retransmission from the transport). send() may block for a bounded time while the peer's
 *   outgoing window is full, never forever; it returns 0 when the messages were handed off, or a
 *   negative code when the peer is unreachable (the messages are dropped; the core retries).
 * - Received messages are handed to the node with raft_node_step() from any transport thread.
 * - close_peer(), if set, is called when the replicator for `to` stops (shutdown, removal).
 */
#ifndef CRAFT_RAFT_TRANSPORT_H
#define CRAFT_RAFT_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

#include "raft/raft.h"

struct raft_transport {
    void *ctx;
    int (*send)(void *ctx, uint64_t to, const struct raft_msg *msgs, size_t n);
    void (*close_peer)(void *ctx, uint64_t to);
};

#endif
