/* wal_internal.h: the on-disk format shared by the WAL's files (private to //raft:wal).
 * docs/wal.md describes every byte. All integers are little-endian. */
#ifndef CRAFT_RAFT_WAL_WAL_INTERNAL_H
#define CRAFT_RAFT_WAL_WAL_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "raft/entry.h"

#define WAL_SEG_MAGIC "CRFTWSEG" /* 8 bytes, no terminator on disk */
#define WAL_VERSION 1u             /* segments, hard state, reset journal */
#define WAL_FIRST_VERSION 2u       /* first-index marker; 2 added the term before the first index */
#define WAL_SMALL_FILE_SIZE 32     /* hard state, first-index marker, reset journal */
#define WAL_HS_MAGIC "CRHS"
#define WAL_FIRST_MAGIC "CRFI"
#define WAL_RESET_MAGIC "CRRS"
#define WAL_MAX_BATCH_POS 0xFFFFFFu /* batch_pos is 24 bits on disk */
#define WAL_SECTOR 512           /* the unit a torn write is assumed to lose or keep */

static inline void wal_put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline void wal_put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint32_t wal_get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t wal_get64(const uint8_t *p)
{
    return (uint64_t)wal_get32(p) | (uint64_t)wal_get32(p + 4) << 32;
}

/* Writes a segment header for a segment whose first entry is `first`. */
void wal_encode_seg_header(uint8_t hdr[WAL_SEG_HEADER_SIZE], uint64_t first);
/* Encodes e's header and payload into rec (WAL_REC_HEADER_SIZE + e->len bytes) with batch_pos 0;
 * the payload checksum is computed here, off the writer's critical path. */
void wal_encode_record(uint8_t *rec, const struct raft_entry *e);
/* Sets the record's position within its write and recomputes the header checksum. */
void wal_record_set_batch_pos(uint8_t *rec, uint32_t pos);

/* Small atomic files (hard state, first-index marker, reset journal): 4-byte magic, version, two
 * u64 values, checksum. */
void wal_encode_small(uint8_t buf[WAL_SMALL_FILE_SIZE], const char magic[4], uint32_t version,
                      uint64_t a, uint64_t b);
/* 0 with the version and values; -EBADMSG for a bad size, magic, checksum or reserved bytes;
 * -ENOTSUP for an intact file whose version is 0 or above max_version (a newer writer's). */
int wal_decode_small(const uint8_t *buf, size_t len, const char magic[4], uint32_t max_version,
                     uint32_t *version, uint64_t *a, uint64_t *b);

/* The first-index marker: the log's first index and the term of the entry just before it.
 * Version 1 (older builds) carried no term: prev_known is 0 then, except at first == 1, where the
 * term of entry 0 is 0 by definition. */
struct wal_first_marker {
    uint64_t first;
    uint64_t prev_term;
    int prev_known;
};
/* Writes version 1 when it can express the marker (first == 1), else version 2. */
void wal_encode_first(uint8_t buf[WAL_SMALL_FILE_SIZE], uint64_t first, uint64_t prev_term);
/* As wal_decode_small; also -EBADMSG when first is 0, or first is 1 with a nonzero term. */
int wal_decode_first(const uint8_t *buf, size_t len, struct wal_first_marker *m);

/* The reset journal: the (index, term) a wal_reset is replacing the log with. */
void wal_encode_reset(uint8_t buf[WAL_SMALL_FILE_SIZE], uint64_t index, uint64_t term);
/* As wal_decode_small; also -EBADMSG for arguments wal_reset refuses (wal_reset_args_ok). */
int wal_decode_reset(const uint8_t *buf, size_t len, uint64_t *index, uint64_t *term);
/* Whether (index, term) may be a reset point: entry 0 has term 0, every real entry a term >= 1
 * (Raft's terms start at 1), and index + 1 must exist. */
int wal_reset_args_ok(uint64_t index, uint64_t term);

#endif
