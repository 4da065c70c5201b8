/* kv_cmd.h: the bytes the KV state machine exchanges with the Raft log.
 *
 * What it promises
 * - A log command is a packed craft.kv.Command (services/proto/etcd/kvcmd.proto) holding one
 *   etcd request unchanged (put, delete_range, txn or compaction); kv_cmd_encode_* produce
 *   exactly that and fail only for lack of memory. They do not validate: call kv_validate_*
 *   (kv_store.h) first, so that nothing invalid enters the log.
 * - An applied entry's result (raft_fsm_result data/len) is a packed craft.kv.Result: a gRPC
 *   status code and etcd's message, or the etcd response for the command's kind.
 * - Decoding never reads outside data[0, len): malformed bytes get NULL or -1. protobuf-c
 *   unpacks nested messages by recursion, so the kv_check_*_wire walkers bound the Txn nesting
 *   of a request or command on its raw bytes (themselves recursing at most KV_MAX_TXN_DEPTH
 *   levels) before it is unpacked. kv_result_decode bounds a Result's TxnResponse nesting
 *   the same way (a follower decodes the leader's forwarded results): deeper than
 *   KV_MAX_TXN_DEPTH, which no store result is, it returns NULL.
 */
#ifndef CRAFT_SERVICES_KV_CMD_H
#define CRAFT_SERVICES_KV_CMD_H

#include <stddef.h>
#include <stdint.h>

#include "services/kvstore/kv_store.h"
#include "services/proto/etcd/kvcmd.pb-c.h"
#include "services/proto/etcd/rpc.pb-c.h"

/* A log command in a malloc'd buffer (*out, *len), for raft proposal. 0 or -1 (no memory). */
int kv_cmd_encode_put(const Etcdserverpb__PutRequest *r, uint8_t **out, size_t *len);
int kv_cmd_encode_delete_range(const Etcdserverpb__DeleteRangeRequest *r, uint8_t **out,
                               size_t *len);
int kv_cmd_encode_txn(const Etcdserverpb__TxnRequest *r, uint8_t **out, size_t *len);
int kv_cmd_encode_compaction(const Etcdserverpb__CompactionRequest *r, uint8_t **out,
                             size_t *len);
/* Lease commands: r must already carry what apply needs (kv_store.h "Leases"). */
int kv_cmd_encode_lease_grant(const Etcdserverpb__LeaseGrantRequest *r, uint8_t **out,
                              size_t *len);
int kv_cmd_encode_lease_revoke(int64_t id, uint8_t **out, size_t *len);
int kv_cmd_encode_lease_checkpoint(const Etcdserverpb__LeaseCheckpointRequest *r, uint8_t **out,
                                   size_t *len);
/* An auth command (op one of kvcmd.proto's auth fields) from the client's decoded request of
 * that kind: only the known fields go into the log; a UserAdd's or UserChangePassword's
 * password is replaced by `hash` (kv_auth.h; NULL = none). 0 or -1 (no memory, bad op). */
int kv_cmd_encode_auth(Craft__Kv__Command__OpCase op, const ProtobufCMessage *req,
                       const char *hash, uint8_t **out, size_t *len);
/* Says who asked (kvcmd.proto AuthInfo; user NULL = no verified identity) on the command in
 * *cmd (malloc'd; realloc'd here), so that apply checks it against the auth state. Call once,
 * on the member that took the client's call. 0 or -1 (no memory; *cmd unchanged). */
int kv_cmd_set_user(uint8_t **cmd, size_t *len, const char *user);
/* The Result of an applied entry (raft_fsm_result data/len); NULL if it does not decode.
 * Free with craft__kv__result__free_unpacked(res, NULL). */
Craft__Kv__Result *kv_result_decode(const void *data, size_t len);

/* For the serialized TxnRequest as received, before protobuf-c unpacks it: protobuf-c
 * unpacks nested messages recursively, so deeply nested Txns (4 bytes a level) would overflow
 * the stack. 0, or -1 with *err (InvalidArgument; KV_ERR_TXN_TOO_DEEP beyond
 * KV_MAX_TXN_DEPTH levels). apply() runs kv_check_cmd_wire on every command. */
int kv_check_txn_wire(const void *data, size_t len, struct kv_err *err);
/* The same for a log command's bytes (a Command holding a TxnRequest); other malformed bytes
 * get InvalidArgument KV_ERR_BAD_COMMAND. */
int kv_check_cmd_wire(const void *data, size_t len, struct kv_err *err);

#endif
