/* memnet.h: an in-memory transport for whole clusters in one process (tests only).
 *
 * Every member has an endpoint with an inbound queue and its own delivery thread, which hands the
 * queued messages to the member's node with raft_node_step() - so delivery is asynchronous and
 * ordered per link, as over a real stream. Faults: partition (a member's links are cut both ways),
 * stall (a member's inbound link stops delivering: senders' messages queue up to a bound, then
 * send() blocks for a bounded time and fails - a slow follower), and random drops. Snapshots
 * (send_snapshot) go chunk by chunk into the receiver's snapshot store; transfers can be made to
 * break midway (memnet_cut_snapshots) or wait midway until released (memnet_hold_snapshots).
 * Each endpoint counts, per destination id, the messages it queued there and its close_peer
 * calls. */
#ifndef CRAFT_TESTS_NODE_MEMNET_H
#define CRAFT_TESTS_NODE_MEMNET_H

#include <stdbool.h>
#include <stdint.h>

#include "raft/node/node.h"

#define MEMNET_MAX 16

struct memnet;

struct memnet *memnet_new(void);
/* All nodes must be detached first. */
void memnet_free(struct memnet *net);
/* The transport for member `id` (created on first use; lives until memnet_free). */
struct raft_transport *memnet_transport(struct memnet *net, uint64_t id);
/* Deliver to `n` from now on. */
void memnet_attach(struct memnet *net, uint64_t id, struct raft_node *n);
/* Stop delivering to id: drops its queue and returns once no raft_node_step() on it is running,
 * so the node may then be stopped and freed. */
void memnet_detach(struct memnet *net, uint64_t id);
void memnet_partition(struct memnet *net, uint64_t id, bool on);
void memnet_stall(struct memnet *net, uint64_t id, bool on);
/* Drop each message with probability permille/1000. */
void memnet_set_drop(struct memnet *net, unsigned permille);

/* The next n snapshot transfers break after their first chunk (the receiver keeps it). */
void memnet_cut_snapshots(struct memnet *net, unsigned n);

/* While on, every snapshot transfer waits after its first chunk until it is turned off. */
void memnet_hold_snapshots(struct memnet *net, bool on);
/* Wait (bounded) until n transfers wait at the hold. */
bool memnet_wait_snapshots_held(struct memnet *net, unsigned n, int timeout_ms);

/* Messages `from` queued for delivery to `to` (accepted by send or try_send). */
uint64_t memnet_link_msgs(struct memnet *net, uint64_t from, uint64_t to);
/* close_peer(to) calls made on `from`'s transport. */
unsigned memnet_closes(struct memnet *net, uint64_t from, uint64_t to);

struct memnet_stats {
    uint64_t sent, delivered, dropped, send_calls, send_failed;
    uint64_t snapshots; /* snapshot transfers begun */
};
void memnet_stats(struct memnet *net, struct memnet_stats *out);

#endif
