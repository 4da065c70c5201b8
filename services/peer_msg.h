/* peer_msg.h: the Raft stream's wire form (craft.raft.Batch and Message, proto/raftpb.proto)
 * mapped to and from the core's struct raft_msg. No gRPC and no state: the peer service
 * (peer.c) uses it for every Batch it sends and receives and for the message a snapshot chunk
 * carries, and tests/fuzz/peer_batch_fuzz.c feeds it a peer's bytes.
 *
 * What it promises about outside bytes: a Batch that protobuf-c cannot parse is refused whole;
 * a message with a type outside 1..RAFT_MSG_TYPE_MAX, an entry type outside raft/entry.h's, or a
 * payload or configuration longer than 32 bits can carry is marked not ok (the rest of the Batch
 * stands). Everything else is passed through field for field: the core (raft_step) judges
 * what the fields say. Nothing is read outside the bytes given. */
#ifndef CRAFT_SERVICES_PEER_MSG_H
#define CRAFT_SERVICES_PEER_MSG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "raft/core/raft.h"
#include "services/proto/raftpb.pb-c.h"

/* m into pm, its entries into pe[0..m->n_entries) with pep pointing at them. pm points into m
 * (data is not copied): pack it while m lives. */
void peer_msg_to_pb(const struct raft_msg *m, Craft__Raft__Message *pm, Craft__Raft__Entry *pe,
                    Craft__Raft__Entry **pep);

/* pm into m, its entries into es[0..pm->n_entries) (es may be NULL when pm has none). m points
 * into pm. false: not a message the core can take (see above); m is then unspecified. */
bool peer_msg_from_pb(const Craft__Raft__Message *pm, struct raft_msg *m, struct raft_entry *es);

/* The RAFT_MSG_SNAPSHOT a Peer.Snapshot chunk carries (pm may be NULL): false unless pm is a
 * snapshot message without entries naming a snapshot (index and term nonzero). */
bool peer_msg_snapshot_from_pb(const Craft__Raft__Message *pm, struct raft_msg *m);

/* A received Batch. msgs[i] is pb->msgs[i] mapped, valid when ok[i]; entries and data point into
 * pb and es, so everything lives until peer_batch_free. */
struct peer_batch {
    Craft__Raft__Batch *pb; /* cluster_id, client_urls, probe, probe_echo, and the raw msgs */
    struct raft_msg *msgs;
    bool *ok;
    size_t n;
    struct raft_entry *es; /* every message's entries, one after the other */
};

enum {
    PEER_BATCH_OK = 0,
    PEER_BATCH_EMALFORMED = -1, /* not a craft.raft.Batch */
    PEER_BATCH_ENOMEM = -2,
};

/* Decode len bytes from a peer into *b (zeroed first). 0, or a PEER_BATCH_E* code (b->n is 0).
 * Call peer_batch_free either way. */
int peer_batch_decode(const uint8_t *data, size_t len, struct peer_batch *b);
void peer_batch_free(struct peer_batch *b);

#endif
