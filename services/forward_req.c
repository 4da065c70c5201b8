/* forward_req.c: Peer.Forwards' message decoding and checks (see forward_req.h). protobuf-c
 * only, so the fuzz target builds it alone. */
#include "services/forward_req.h"

#include <grpc/status.h>

Craft__Raft__ForwardBatch *fwd_req_batch(const uint8_t *data, size_t len, uint64_t cluster_id,
                                         int *code, const char **msg)
{
    Craft__Raft__ForwardBatch *b = craft__raft__forward_batch__unpack(NULL, len, data);
    if (!b) {
        *code = GRPC_STATUS_INVALID_ARGUMENT;
        *msg = FWD_REQ_ERR_MALFORMED;
        return NULL;
    }
    if (b->cluster_id != cluster_id) {
        craft__raft__forward_batch__free_unpacked(b, NULL);
        *code = GRPC_STATUS_FAILED_PRECONDITION;
        *msg = FWD_REQ_ERR_CLUSTER;
        return NULL;
    }
    return b;
}

int fwd_req_batch_room(size_t in_flight, size_t n_items, size_t max_inflight, int *code,
                       const char **msg)
{
    /* n_items is bounded by the message's length, but compare without adding: no overflow. */
    if (in_flight > max_inflight || n_items > max_inflight - in_flight) {
        *code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        *msg = FWD_REQ_ERR_INFLIGHT;
        return -1;
    }
    return 0;
}

Craft__Raft__ForwardReplyBatch *fwd_req_reply_batch(const uint8_t *data, size_t len)
{
    return craft__raft__forward_reply_batch__unpack(NULL, len, data);
}

void fwd_req_answer(const Craft__Raft__ForwardReplyItem *r, struct fwd_answer *a)
{
    *a = (struct fwd_answer){r->code, r->message ? r->message : "", r->result.data,
                             r->result.len, r->index};
}
