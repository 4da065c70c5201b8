/* kv_hist.h: the byte layout of the KV store's history records in LMDB (docs/kv.md "History"),
 * with an encoder and a checking decoder. No LMDB here, so the fuzz target
 * (tests/fuzz/kv_hist_fuzz.c) builds it alone; kv_store.c reads and writes the databases.
 *
 *   "hist" key    revision (u64 big-endian) | sub (u64 big-endian)                 16 bytes
 *                 big-endian, so LMDB's byte order is the order of the writes
 *   "hist" value  u32 key length (LE, 1..511) | u8 type (0 put, 1 delete) | 3 zero bytes | key
 *                 | a put's record: create, mod, version, lease (i64 LE each) and the value;
 *                 a delete has nothing after the key
 *
 * What the decoders accept, and nothing else: those lengths, revision >= 1, a known type, zero
 * padding, a put's record at least 32 bytes, a delete's empty. What they accept re-encodes to
 * the same bytes (the fuzz target checks it): one encoding per record. */
#ifndef CRAFT_SERVICES_KV_HIST_H
#define CRAFT_SERVICES_KV_HIST_H

#include <stddef.h>
#include <stdint.h>

#define KV_HIST_KEY 16
#define KV_HIST_HEAD 8
#define KV_HIST_REC_MIN 32 /* create, mod, version, lease */
#define KV_HIST_MAX_KEY 511
#define KV_HIST_PUT 0
#define KV_HIST_DELETE 1

static inline void kv_be64_put(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (56 - 8 * i));
}

static inline uint64_t kv_be64_get(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

/* One decoded "hist" entry; the pointers point into the value given to the decoder. */
struct kv_hist_ent {
    int64_t rev;
    uint64_t sub;
    int type;
    const uint8_t *key;
    size_t klen;
    const uint8_t *rec; /* a put's record (rlen >= 32); NULL and 0 for a delete */
    size_t rlen;
};

void kv_hist_key(uint8_t out[KV_HIST_KEY], int64_t rev, uint64_t sub);
/* The value's first KV_HIST_HEAD bytes, for a key of klen bytes. */
void kv_hist_head(uint8_t out[KV_HIST_HEAD], size_t klen, int type);
/* 0 with *h filled, or -1 when the bytes are not a history entry. */
int kv_hist_decode(const void *key, size_t klen, const void *val, size_t vlen,
                   struct kv_hist_ent *h);

#endif
