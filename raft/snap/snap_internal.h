/* snap_internal.h: what snap_format.c shares with snap_store.c (private to //raft/snap).
 * docs/snapshots.md describes every byte. All integers are little-endian. */
#ifndef CRAFT_RAFT_SNAP_SNAP_INTERNAL_H
#define CRAFT_RAFT_SNAP_SNAP_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "raft/snap/snap.h"

#define SNAP_MAGIC "CRFTSNAP"     /* 8 bytes at offset 0, no terminator on disk */
#define SNAP_END_MAGIC "CRSE"     /* 4 bytes closing the trailer */
#define SNAP_VERSION 1u
#define SNAP_HDR_CRC_OFF 60       /* the header's own CRC32C covers bytes 0..59 */

static inline void snap_put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline void snap_put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint32_t snap_get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t snap_get64(const uint8_t *p)
{
    return (uint64_t)snap_get32(p) | (uint64_t)snap_get32(p + 4) << 32;
}

/* CRC32C of A||B from crc(A), crc(B) and the length of B, without reading A or B again: the
 * writer checksums the payload as it streams and prepends the header, known only at the end. */
uint32_t snap_crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);

/* The 8-byte trailer for a file whose bytes before it have checksum crc. */
void snap_encode_trailer(uint8_t out[8], uint32_t crc);
/* Checks a trailer against the checksum computed over the bytes before it, found at `offset`.
 * 0, or -EBADMSG with the reason. */
int snap_check_trailer(const uint8_t tr[8], uint32_t computed, uint64_t offset, const char *name,
                       char *err, size_t errlen);
/* Checks that a file of `size` bytes is exactly what header h describes. */
int snap_check_size(const struct snap_header *h, uint64_t size, const char *name, char *err,
                    size_t errlen);

/* Reads exactly len bytes at off. A file that ends first counts as damage (-EBADMSG): sizes are
 * checked before reading, so only a file shrinking meanwhile gets there. */
int snap_read_full(int fd, void *buf, size_t len, uint64_t off, const char *name, char *err,
                   size_t errlen);
/* Extends *crc over the len bytes of the file at off, read through a bounded buffer. */
int snap_crc_range(int fd, uint64_t off, uint64_t len, uint32_t *crc, const char *name, char *err,
                   size_t errlen);

#endif
