/* kv_test_util.h: helpers for the KV store tests: a store in a fresh temporary directory,
 * building requests, applying commands through the fsm table and decoding the results. */
#ifndef CRAFT_TESTS_KV_TEST_UTIL_H
#define CRAFT_TESTS_KV_TEST_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "services/kvstore/kv_cmd.h"
#include "services/kvstore/kv_store.h"

struct kvt {
    struct kv_store *s;
    char dir[64];
    uint64_t index; /* last log index used */
    struct kv_store_opts opts;
};

/* A store in a new temporary directory (opts may be NULL). Aborts the test on failure. */
void kvt_open(struct kvt *t, const struct kv_store_opts *opts);
/* Close and open again on the same directory. */
void kvt_reopen(struct kvt *t);
void kvt_close(struct kvt *t); /* closes and removes the directory */

/* Applies one command as the next log entry; returns its decoded result (caller frees with
 * craft__kv__result__free_unpacked) and stores the fsm code in *code if non-NULL. */
Craft__Kv__Result *kvt_apply(struct kvt *t, const uint8_t *cmd, size_t len, int *code);

Craft__Kv__Result *kvt_put(struct kvt *t, const char *key, const char *val);
/* Put with options: flags PUT_PREV, PUT_IGNORE_VALUE, PUT_IGNORE_LEASE; lease. */
#define PUT_PREV 1
#define PUT_IGNORE_VALUE 2
#define PUT_IGNORE_LEASE 4
Craft__Kv__Result *kvt_put_opt(struct kvt *t, const char *key, const char *val, int flags,
                               int64_t lease);
Craft__Kv__Result *kvt_del(struct kvt *t, const char *key, const char *end, bool prev);
Craft__Kv__Result *kvt_compact(struct kvt *t, int64_t rev);
Craft__Kv__Result *kvt_txn(struct kvt *t, const Etcdserverpb__TxnRequest *r);
/* Put (and forget the result); asserts success. */
void kvt_put_ok(struct kvt *t, const char *key, const char *val);

/* A range request on key/end (end NULL = none; "\\0" written as KVT_FROM). */
#define KVT_FROM "\x01from"
void kvt_range_req(Etcdserverpb__RangeRequest *r, const char *key, const char *end);
ProtobufCBinaryData kvt_bin(const char *s);
/* kv_store_range; asserts success. */
Etcdserverpb__RangeResponse *kvt_range(struct kvt *t, const Etcdserverpb__RangeRequest *r);
/* Keys of a response, joined by ',' into a static buffer (values with '=' if with_values). */
const char *kvt_keys(Mvccpb__KeyValue **kvs, size_t n, bool with_values);
int64_t kvt_rev(struct kvt *t);
/* How many keys the store holds (a count_only Range over everything). */
int64_t kvt_count(struct kvt *t);

/* The whole state as text (malloc'd): "rev R compact C applied I|key=value c/m/v,...". */
char *kvt_dump(struct kvt *t);

/* A growable byte buffer, with a snapshot sink and source over it. max_read > 0 caps each
 * read (short reads); pos is where the next read starts, limit where the input ends. */
struct kvt_buf {
    uint8_t *data;
    size_t len, cap, pos, limit, max_read;
};
int kvt_buf_write(void *arg, const void *p, size_t n);
long kvt_buf_read(void *arg, void *p, size_t n);
/* snapshot_write into b (emptied first), asserting success. */
void kvt_snapshot(struct kvt *t, struct kvt_buf *b, uint64_t *index, uint64_t *term);
/* snapshot_restore from p[len]; the fsm's return, with its reason in err. On success t->index
 * follows the store's applied index, so kvt_apply goes on from index + 1. */
int kvt_restore(struct kvt *t, const uint8_t *p, size_t len, uint64_t index, uint64_t term,
                char *err, size_t errlen);

#endif
