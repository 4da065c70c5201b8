/* kv_req.h: what the KV service (kv_service.c) does with a client's bytes before and after the
 * log, apart from gRPC, so the fuzz target (tests/fuzz/kv_req_fuzz.c) runs the handlers' code.
 *
 * What it promises
 * - kv_req_write: a decoded Put, DeleteRange or Compact is validated (kv_validate_*) and, when
 *   valid, encoded as the log command (kv_cmd_encode_*). Nothing invalid gets a command.
 * - kv_req_range: Range's bytes are decoded and validated; kv_req_txn: a Txn's bytes are
 *   walked for nesting (kv_check_txn_wire) before protobuf-c unpacks them, then decoded and
 *   validated; a read-only Txn is handed back decoded (served by ReadIndex), another encoded.
 * - kv_req_result: an applied entry's result (or a leader's forwarded one) is decoded and the
 *   response for the request's kind picked out, or an error status for the client; a result of
 *   the wrong kind or that does not decode is INTERNAL, never a crash.
 * - Errors carry the gRPC status code and etcd's message (struct kv_err); any byte string gets
 *   an answer without reading outside it.
 */
#ifndef CRAFT_SERVICES_KV_REQ_H
#define CRAFT_SERVICES_KV_REQ_H

#include <stddef.h>
#include <stdint.h>

#include "services/kvstore/kv_cmd.h"
#include "services/kvstore/kv_store.h"

/* The request kinds the KV service proposes or reads. */
enum kv_req_kind {
    KV_REQ_PUT,
    KV_REQ_DELETE,
    KV_REQ_TXN,
    KV_REQ_COMPACT,
    KV_REQ_RANGE,
    KV_REQ_LEASE_GRANT,
    KV_REQ_LEASE_REVOKE,
};

#define KV_REQ_ERR_UNMARSHAL "grpc: error unmarshalling request"
#define KV_REQ_ERR_NOMEM "out of memory"

/* m is a decoded PutRequest (KV_REQ_PUT), DeleteRangeRequest (KV_REQ_DELETE) or
 * CompactionRequest (KV_REQ_COMPACT). 0: *cmd (malloc'd) and *len hold the log command and
 * *physical_rev is the Compact's revision when it asked for physical (else 0). -1: *err (the
 * validation's answer, or RESOURCE_EXHAUSTED KV_REQ_ERR_NOMEM). */
int kv_req_write(enum kv_req_kind kind, const ProtobufCMessage *m, uint8_t **cmd, size_t *len,
                 int64_t *physical_rev, struct kv_err *err);

/* A RangeRequest's bytes: the decoded, valid request (free with
 * etcdserverpb__range_request__free_unpacked), or NULL with *err. */
Etcdserverpb__RangeRequest *kv_req_range(const uint8_t *data, size_t len, struct kv_err *err);

/* A TxnRequest's bytes (max_txn_ops as kv_validate_txn). 0 and either *read (a read-only
 * Txn, decoded; free with etcdserverpb__txn_request__free_unpacked) or *cmd and *clen (the log
 * command, malloc'd; *read NULL); or -1 with *err. */
int kv_req_txn(const uint8_t *data, size_t len, unsigned max_txn_ops,
               Etcdserverpb__TxnRequest **read, uint8_t **cmd, size_t *clen, struct kv_err *err);

/* An applied entry's result for a request of `kind` (a packed craft.kv.Result). -1: answer
 * status (*code, *msg) - INTERNAL when it does not decode, else the result's own error; *res is
 * then the decoded result still to free when not NULL (msg points into it). 0: *res is the
 * decoded result (free with craft__kv__result__free_unpacked) and *resp the response in it to
 * send, with *hp its header slot (to be replaced by the member's while sending; *hp may hold
 * NULL, then the revision is res->revision); or *resp NULL when the result is of another kind
 * (*code INTERNAL, *msg say so). */
int kv_req_result(enum kv_req_kind kind, const uint8_t *data, size_t len, Craft__Kv__Result **res,
                  ProtobufCMessage **resp, Etcdserverpb__ResponseHeader ***hp, int *code,
                  const char **msg);

#endif
