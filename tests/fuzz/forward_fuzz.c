/* Fuzz target for what forwarding decodes from peers (services/forward_req.c, used by
 * forward.c): at the leader, a follower's ForwardBatch (its cluster id, the in-flight bound,
 * each item's command as the leader proposes it and the state machine will decode it); at the
 * follower, the leader's ForwardReplyBatch (items matched to the forwards waiting, each answer
 * mapped as the done callback gets it, and the result decoded and mapped to the client's
 * response as kv_service.c does: kv_result_decode, kv_req_result). The first byte picks the
 * side (byte % 2) and a parameter (byte / 2); the rest is the message. Checked besides "no
 * crash, no out-of-bounds read, no undefined behaviour": an accepted batch is of this cluster
 * and within the bound; a decoded result nests Txns no deeper than a command may; a forward completes at most once, and only one that was sent; every
 * answer gives the client a status or a response of the request's kind. Built with clang's
 * libFuzzer (run_fuzz.sh) and as a corpus replay with the default toolchain. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "services/forward_req.h"
#include "services/kv_req.h"
#include "services/kvstore/kv_cmd.h"

#define CLUSTER_ID 0x1234u /* the cluster id the seeds' batches carry */
#define MAX_INFLIGHT 16    /* the leader's bound per stream, and the follower's slots */
#define MAX_REQUEST 1024   /* the leader's --max-request-bytes */
#define SENT 12            /* the follower sent forwards 0..SENT-1 (and 2..SENT-1 wait) */

static void must(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "forward_fuzz: %s\n", what);
        abort();
    }
}

/* Txn levels in a decoded TxnResponse: at most KV_MAX_TXN_DEPTH + 1 when the decoder bounds
 * them (a deeper result is what overflowed a follower's stack in protobuf-c's recursion). */
static int txn_levels(const Etcdserverpb__TxnResponse *t)
{
    int deepest = 0;
    for (size_t i = 0; i < t->n_responses; i++) {
        const Etcdserverpb__ResponseOp *op = t->responses[i];
        if (op->response_case == ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_TXN) {
            int d = txn_levels(op->response_txn);
            if (d > deepest)
                deepest = d;
        }
    }
    return deepest + 1;
}

/* The leader: what in_message and kv_service.c's propose_item do with a batch. */
static void leader(const uint8_t *m, size_t n, unsigned in_flight)
{
    int code = 0;
    const char *msg = NULL;
    Craft__Raft__ForwardBatch *b = fwd_req_batch(m, n, CLUSTER_ID, &code, &msg);
    if (!b) {
        must(code != 0 && msg && msg[0], "a refused batch without a status");
        return;
    }
    must(b->cluster_id == CLUSTER_ID, "a batch of another cluster accepted");
    if (fwd_req_batch_room(in_flight, b->n_items, MAX_INFLIGHT, &code, &msg) != 0) {
        must(in_flight + b->n_items > MAX_INFLIGHT && code != 0, "a batch refused with room");
    } else {
        must(in_flight + b->n_items <= MAX_INFLIGHT, "a batch past the bound accepted");
        for (size_t i = 0; i < b->n_items; i++) {
            const ProtobufCBinaryData *c = &b->items[i]->command;
            if (c->len > MAX_REQUEST)
                continue; /* answered "request is too large" */
            /* Proposed as is; each member's apply then checks and decodes it. */
            struct kv_err err;
            if (kv_check_cmd_wire(c->data, c->len, &err) == 0) {
                Craft__Kv__Command *cmd = craft__kv__command__unpack(NULL, c->len, c->data);
                if (cmd)
                    craft__kv__command__free_unpacked(cmd, NULL);
            } else {
                must(err.code != 0, "a refused command without a status");
            }
        }
    }
    craft__raft__forward_batch__free_unpacked(b, NULL);
}

/* The follower: os_message's matching, complete()'s mapping, kv_service.c's on_forwarded. */
static void follower(const uint8_t *m, size_t n, enum kv_req_kind kind)
{
    Craft__Raft__ForwardReplyBatch *b = fwd_req_reply_batch(m, n);
    if (!b)
        return; /* the stream is retired: every forward fails "no leader" */
    /* Forwards 0 and 1 already completed at their deadline; 2..SENT-1 wait, each in slot
     * id % MAX_INFLIGHT, as forward.c keeps them. */
    uint64_t slot[MAX_INFLIGHT];
    bool busy[MAX_INFLIGHT] = {false};
    for (uint64_t id = 2; id < SENT; id++) {
        slot[id % MAX_INFLIGHT] = id;
        busy[id % MAX_INFLIGHT] = true;
    }
    unsigned completed = 0;
    for (size_t i = 0; i < b->n_items; i++) {
        uint64_t id = b->items[i]->id;
        uint64_t s = id % MAX_INFLIGHT;
        if (id >= SENT || !busy[s] || slot[s] != id)
            continue; /* not sent by us, or completed already */
        busy[s] = false;
        completed++;
        struct fwd_answer a;
        fwd_req_answer(b->items[i], &a);
        must(a.message != NULL, "an answer without a message");
        if (a.code)
            continue; /* the client gets (code, message) */
        Craft__Kv__Result *r;
        ProtobufCMessage *resp;
        Etcdserverpb__ResponseHeader **hp;
        int code;
        const char *msg;
        int rc = kv_req_result(kind, a.result, a.len, &r, &resp, &hp, &code, &msg);
        if (rc != 0 || !resp) {
            must(code != 0 && msg != NULL, "a failed answer without a status");
        } else {
            static const ProtobufCMessageDescriptor *const want[] = {
                [KV_REQ_PUT] = &etcdserverpb__put_response__descriptor,
                [KV_REQ_DELETE] = &etcdserverpb__delete_range_response__descriptor,
                [KV_REQ_TXN] = &etcdserverpb__txn_response__descriptor,
                [KV_REQ_COMPACT] = &etcdserverpb__compaction_response__descriptor,
                [KV_REQ_RANGE] = NULL,
                [KV_REQ_LEASE_GRANT] = &etcdserverpb__lease_grant_response__descriptor,
                [KV_REQ_LEASE_REVOKE] = &etcdserverpb__lease_revoke_response__descriptor,
            };
            must(resp->descriptor == want[kind], "a response of another kind than the request's");
            if (r->resp_case == CRAFT__KV__RESULT__RESP_TXN)
                must(txn_levels(r->txn) <= KV_MAX_TXN_DEPTH + 1, "a result nested too deep");
            /* The member's own header goes in while the response is packed. */
            Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
            Etcdserverpb__ResponseHeader *orig = *hp;
            h.revision = orig ? orig->revision : r->revision;
            *hp = &h;
            size_t len = protobuf_c_message_get_packed_size(resp);
            uint8_t *buf = malloc(len ? len : 1);
            must(buf != NULL, "out of memory");
            must(protobuf_c_message_pack(resp, buf) == len, "a response packs short");
            free(buf);
            *hp = orig;
        }
        if (r)
            craft__kv__result__free_unpacked(r, NULL);
    }
    must(completed <= SENT - 2, "a forward completed twice");
    craft__raft__forward_reply_batch__free_unpacked(b, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned param = data[0] / 2;
    if (data[0] % 2 == 0)
        leader(data + 1, size - 1, param % (MAX_INFLIGHT + 2));
    else
        follower(data + 1, size - 1, (enum kv_req_kind)(param % (KV_REQ_LEASE_REVOKE + 1)));
    return 0;
}
