/* forward_req.h: the decoding of what peers send on Peer.Forwards (forward.h), apart from the
 * streams, so the fuzz target (tests/fuzz/forward_fuzz.c) runs forward.c's own code.
 *
 * What it promises
 * - Leader side: fwd_req_batch decodes a follower's ForwardBatch and refuses one that does not
 *   decode (INVALID_ARGUMENT) or comes from another cluster (FAILED_PRECONDITION);
 *   fwd_req_batch_room refuses a batch that would take the stream past max_inflight unanswered
 *   forwards (RESOURCE_EXHAUSTED). The status ends the stream (forward.h).
 * - Follower side: fwd_req_reply_batch decodes the leader's ForwardReplyBatch (NULL: not
 *   understood); fwd_req_answer maps one item to the struct fwd_answer the caller's done gets
 *   (message never NULL; result and message point into the item).
 * - Any byte string gets one of these answers without reading outside it.
 */
#ifndef CRAFT_SERVICES_FORWARD_REQ_H
#define CRAFT_SERVICES_FORWARD_REQ_H

#include <stddef.h>
#include <stdint.h>

#include "services/proto/raftpb.pb-c.h"

/* The leader's answer to one forward: code/message are the gRPC status for the client (0: the
 * entry was applied, result is the state machine's result for it, index where it committed).
 * (forward.h's; here so that this header needs neither gRPC nor the peer.) */
struct fwd_answer {
    uint32_t code;
    const char *message;
    const uint8_t *result;
    size_t len;
    uint64_t index;
};

#define FWD_REQ_ERR_MALFORMED "malformed ForwardBatch"
#define FWD_REQ_ERR_CLUSTER "cluster id mismatch"
#define FWD_REQ_ERR_INFLIGHT "more forwards in flight than allowed"

/* A ForwardBatch's bytes for this cluster: the batch (free with
 * craft__raft__forward_batch__free_unpacked), or NULL with the stream's end status. */
Craft__Raft__ForwardBatch *fwd_req_batch(const uint8_t *data, size_t len, uint64_t cluster_id,
                                         int *code, const char **msg);
/* 0 when n_items more forwards fit beside in_flight ones (at most max_inflight), else -1 with
 * the stream's end status. */
int fwd_req_batch_room(size_t in_flight, size_t n_items, size_t max_inflight, int *code,
                       const char **msg);

/* A ForwardReplyBatch's bytes: the batch (free with
 * craft__raft__forward_reply_batch__free_unpacked), or NULL. */
Craft__Raft__ForwardReplyBatch *fwd_req_reply_batch(const uint8_t *data, size_t len);
/* One answer as the follower's done callback gets it (valid while r lives). */
void fwd_req_answer(const Craft__Raft__ForwardReplyItem *r, struct fwd_answer *a);

#endif
