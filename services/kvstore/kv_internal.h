/* kv_internal.h: helpers shared by the kvstore files (not part of the contract). */
#ifndef CRAFT_SERVICES_KV_INTERNAL_H
#define CRAFT_SERVICES_KV_INTERNAL_H

#include "services/kvstore/kv_store.h"

/* Fills *err (if non-NULL) and returns -1. */
int kv_fail(struct kv_err *err, int code, const char *msg);
/* memcmp order, a proper prefix first (LMDB's default key order). */
int kv_bytes_cmp(const void *a, size_t an, const void *b, size_t bn);
/* kv_validate_txn with the op budget optional (limited = false at apply time). */
int kv_validate_txn_limits(const Etcdserverpb__TxnRequest *r, unsigned max_txn_ops, bool limited,
                           struct kv_err *err);
/* kv_check_txn_wire for a log command's bytes (a Command holding a TxnRequest). */
int kv_check_cmd_wire(const void *data, size_t len, struct kv_err *err);

#endif
