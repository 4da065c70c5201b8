/* kv_txn_build.h: building Txn requests on the heap in tests (freed with
 * etcdserverpb__txn_request__free_unpacked). Keys use kvt_bin's conventions (KVT_FROM = "\0"). */
#ifndef CRAFT_TESTS_KV_TXN_BUILD_H
#define CRAFT_TESTS_KV_TXN_BUILD_H

#include "tests/kv/kv_test_util.h"

ProtobufCBinaryData kb_dup(const char *s);
Etcdserverpb__TxnRequest *kb_txn(void);
/* Compare: target ETCDSERVERPB__COMPARE__COMPARE_TARGET__*, result ..._RESULT__*; the number
 * goes to the oneof member matching the target, val to `value` for VALUE. */
void kb_cmp(Etcdserverpb__TxnRequest *t, const char *key, const char *end, int target,
            int result, int64_t num, const char *val);
/* Ops appended to the success (branch 0) or failure (branch 1) list. */
void kb_put(Etcdserverpb__TxnRequest *t, int branch, const char *key, const char *val, bool prev);
Etcdserverpb__PutRequest *kb_put_req(Etcdserverpb__TxnRequest *t, int branch, const char *key,
                                     const char *val);
void kb_del(Etcdserverpb__TxnRequest *t, int branch, const char *key, const char *end, bool prev);
Etcdserverpb__RangeRequest *kb_range(Etcdserverpb__TxnRequest *t, int branch, const char *key,
                                     const char *end);
void kb_sub(Etcdserverpb__TxnRequest *t, int branch, Etcdserverpb__TxnRequest *sub);
void kb_empty_op(Etcdserverpb__TxnRequest *t, int branch);
void kb_free(Etcdserverpb__TxnRequest *t);

#endif
