/* kv_snap.h: the KV store's snapshot payload (docs/kv.md "Snapshots"): its byte format, an
 * encoder that streams it out through a write callback, and a decoder that checks every byte it
 * pulls from a read callback. No LMDB here (kv_store.c walks and fills the databases), so the
 * fuzz target (tests/fuzz/kv_snap_fuzz.c) can build the decoder alone.
 *
 * Format, versions 1 to 4 (integers little-endian):
 *   header   "CRKVSNAP" | u32 version | u32 flags = 0 | u64 applied index | u64 term of the
 *            entry at that index (0 = the store does not know it) | i64 revision | i64 compacted
 *            revision                                                              (48 bytes)
 *   records  u32 key length (1..511) | u32 value length | key | i64 create_revision |
 *            i64 mod_revision | i64 version | i64 lease | value
 *            version 1 (the latest state, no history): one per key, keys strictly increasing
 *            (bytewise, a proper prefix first: LMDB's order).
 *            version 2 (the history, written since issue 15): one per write still kept, in the
 *            order of the writes: mod_revision never decreases, and the writes of one revision
 *            come in their order within it. version 0 marks a deletion (a tombstone): then
 *            create_revision, lease and the value length are 0 and mod_revision is the
 *            revision of the delete.
 *            version 3 (since leases, issue 16): version 2's records, whose puts may carry a
 *            lease, then one record per lease: key length 0 | value length 0 | i64 lease ID |
 *            i64 granted TTL (seconds) | i64 checkpointed remaining TTL (0 = none) | i64 0,
 *            IDs strictly increasing as unsigned numbers (the store's lease table order).
 *            version 4 (since auth, issue 20): version 3's records, then at most one auth
 *            record: key length 0 | value length n (1..KV_SNAP_MAX_AUTH) | n bytes of the
 *            auth state (a packed craft.kv.AuthState, kv_auth.h), and no record after it.
 *            No auth record = the empty state (auth disabled, no users or roles).
 *   trailer  "CRKVEND1" | u64 number of records | u32 CRC-32C of every byte before this field |
 *            u32 0                                                                  (24 bytes)
 *   and nothing after the trailer.
 * The bytes after a record's key (32 + value length) are exactly the store's LMDB record, so
 * neither side reformats them.
 *
 * What the decoder accepts, and nothing else: the magic, version 1 to 4, flags 0; 0 <= compacted
 * <= revision; per record (a put) 1 <= create_revision <= mod_revision <= revision, 1 <= version
 * <= mod_revision - create_revision + 1 (a version grows by at most one per revision), lease 0
 * before version 3; (a version 2 or 3 tombstone) 1 <= mod_revision <= revision and the zeros
 * above; (a version 3 lease) ID != 0, 1 <= TTL <= KV_SNAP_MAX_LEASE_TTL, 0 <= remaining <=
 * KV_SNAP_MAX_LEASE_TTL, the last word 0, no key record after the first lease; that a live key's
 * lease is among the leases is the store's check at restore; the order of its version; the trailer's count and CRC; the end of input right after it.
 * Any other input is -EBADMSG with a one-line reason; a read callback's error is passed on. An
 * accepted payload re-encodes to the same bytes (the fuzz target checks it).
 */
#ifndef CRAFT_SERVICES_KV_SNAP_H
#define CRAFT_SERVICES_KV_SNAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KV_SNAP_MAGIC "CRKVSNAP"
#define KV_SNAP_END_MAGIC "CRKVEND1"
#define KV_SNAP_VERSION 4    /* what the encoder writes by default; the decoder reads 1 to 4 */
#define KV_SNAP_MAX_AUTH (64u << 20) /* an auth record's bytes (kv_auth.h bounds the state) */
#define KV_SNAP_HEADER 48
#define KV_SNAP_TRAILER 24
#define KV_SNAP_REC_HEAD 8  /* key length, value length */
#define KV_SNAP_REC_FIXED 32 /* create, mod, version, lease: the start of the LMDB record */
#define KV_SNAP_MAX_KEY 511
#define KV_SNAP_MAX_LEASE_TTL 9000000000LL /* = KV_MAX_LEASE_TTL */

/* What the header carries: the state the records are a copy of. */
struct kv_snap_meta {
    uint64_t index; /* applied index */
    uint64_t term;  /* term of the entry at index; 0 = not known */
    int64_t rev, compact;
    uint32_t version; /* payload format: 1 (latest state), 2 (history), 3 (history and
                         leases) or 4 (and the auth state); 0 to the encoder = 4 */
};

/* One decoded record; the pointers are valid until the next call on the decoder. A lease
 * (version 3) has klen 0, key NULL, and is_lease set with its three numbers. */
struct kv_snap_rec {
    const uint8_t *key;
    size_t klen;
    const uint8_t *rec; /* create, mod, version, lease (i64 each), then the value */
    size_t rlen;        /* 32 + value length */
    bool is_lease;
    int64_t lease_id, lease_ttl, lease_remaining;
    bool is_auth; /* version 4's auth record: its bytes in rec/rlen */
};

/* Sink: writes all len bytes, returns 0 or a negative errno. Source: returns the number of bytes
 * read (> 0), 0 at the end of the input, or a negative errno; short reads are fine. */
typedef int (*kv_snap_write_fn)(void *arg, const void *buf, size_t len);
typedef long (*kv_snap_read_fn)(void *arg, void *buf, size_t len);

static inline void kv_le_put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint64_t kv_le_get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* Fills err (errlen bytes; NULL = not wanted) with "kv snapshot: " and the formatted reason,
 * and returns rc: the decoder and the store's snapshot functions word their reasons alike. */
__attribute__((format(printf, 4, 5))) int kv_snap_fail(char *err, size_t errlen, int rc,
                                                       const char *fmt, ...);

/* Encoder: header, then the records in key order, then finish (which writes the trailer and
 * flushes). Writes are buffered; each function returns 0 or a negative errno (the sink's, or
 * -EINVAL for a record the format cannot hold). NULL from new = out of memory. */
struct kv_snap_enc;
struct kv_snap_enc *kv_snap_enc_new(kv_snap_write_fn write, void *arg);
int kv_snap_enc_header(struct kv_snap_enc *e, const struct kv_snap_meta *m);
int kv_snap_enc_record(struct kv_snap_enc *e, const void *key, size_t klen, const void *rec,
                       size_t rlen);
/* A lease, after every record (version 3 only; -EINVAL for values the format cannot hold). */
int kv_snap_enc_lease(struct kv_snap_enc *e, int64_t id, int64_t ttl, int64_t remaining);
/* The auth state's bytes (version 4 only), after the leases, at most once; -EINVAL for an empty
 * or oversized one. */
int kv_snap_enc_auth(struct kv_snap_enc *e, const void *state, size_t len);
/* *len (may be NULL) receives the payload's length in bytes. */
int kv_snap_enc_finish(struct kv_snap_enc *e, uint64_t *len);
void kv_snap_enc_free(struct kv_snap_enc *e);

/* Decoder: header once, then next until it returns 0 (the trailer checked, the input ended) or
 * a negative errno (-EBADMSG: not a valid payload; -ENOMEM; the source's error) with a reason in
 * err. After an error only free is valid. NULL from new = out of memory. */
struct kv_snap_dec;
struct kv_snap_dec *kv_snap_dec_new(kv_snap_read_fn read, void *arg);
int kv_snap_dec_header(struct kv_snap_dec *d, struct kv_snap_meta *m, char *err, size_t errlen);
/* 1 with *r filled, 0 at the verified end, or a negative errno. */
int kv_snap_dec_next(struct kv_snap_dec *d, struct kv_snap_rec *r, char *err, size_t errlen);
/* Bytes consumed so far (the payload's length once next returned 0). */
uint64_t kv_snap_dec_offset(const struct kv_snap_dec *d);
void kv_snap_dec_free(struct kv_snap_dec *d);

#endif
