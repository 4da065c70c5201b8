/* snap_format.c: the snapshot file format (docs/snapshots.md): header and trailer encoding, the
 * decoder of an image in memory and the streaming verifier of a file. No state, no allocation
 * but the verifier's read buffer. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "raft/snap/snap.h"
#include "raft/snap/snap_internal.h"
#include "raft/wal/crc32c.h"

#define CRC32C_POLY 0x82F63B78u /* reflected Castagnoli polynomial, as in crc32c.c */
#define VERIFY_BUF (256u * 1024) /* the streaming verifier's read size */

static int bad(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int bad(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -EBADMSG;
}

uint64_t snap_file_size_for(const struct snap_header *h)
{
    return SNAP_HEADER_SIZE + (uint64_t)h->config_len + h->payload_len + SNAP_TRAILER_SIZE;
}

void snap_encode_header(uint8_t out[SNAP_HEADER_SIZE], const struct snap_header *h)
{
    memset(out, 0, SNAP_HEADER_SIZE);
    memcpy(out, SNAP_MAGIC, 8);
    snap_put32(out + 8, SNAP_VERSION);
    snap_put32(out + 12, h->config_len);
    snap_put64(out + 16, h->index);
    snap_put64(out + 24, h->term);
    snap_put64(out + 32, h->payload_len);
    snap_put32(out + SNAP_HDR_CRC_OFF, crc32c(0, out, SNAP_HDR_CRC_OFF));
}

int snap_decode_header(const uint8_t *buf, size_t len, const char *name, struct snap_header *h,
                       char *err, size_t errlen)
{
    if (len < SNAP_HEADER_SIZE)
        return bad(err, errlen, "%s: truncated header: %zu bytes, a header is %d", name, len,
                   SNAP_HEADER_SIZE);
    if (memcmp(buf, SNAP_MAGIC, 8) != 0)
        return bad(err, errlen, "%s: offset 0: bad magic: not a craft snapshot", name);
    uint32_t version = snap_get32(buf + 8);
    if (version != SNAP_VERSION)
        return bad(err, errlen, "%s: offset 8: unsupported format version %" PRIu32
                   " (this build reads %u)", name, version, SNAP_VERSION);
    /* The lengths are trusted only once the header's own checksum matches. */
    uint32_t stored = snap_get32(buf + SNAP_HDR_CRC_OFF);
    uint32_t computed = crc32c(0, buf, SNAP_HDR_CRC_OFF);
    if (stored != computed)
        return bad(err, errlen, "%s: offset %d: header checksum mismatch (stored %08" PRIx32
                   ", computed %08" PRIx32 ")", name, SNAP_HDR_CRC_OFF, stored, computed);
    for (int i = 40; i < SNAP_HDR_CRC_OFF; i++)
        if (buf[i] != 0)
            return bad(err, errlen, "%s: offset %d: reserved byte is not zero", name, i);
    h->config_len = snap_get32(buf + 12);
    h->index = snap_get64(buf + 16);
    h->term = snap_get64(buf + 24);
    h->payload_len = snap_get64(buf + 32);
    if (h->config_len > SNAP_MAX_CONFIG)
        return bad(err, errlen, "%s: offset 12: configuration length %" PRIu32
                   " exceeds the limit of %u bytes", name, h->config_len, SNAP_MAX_CONFIG);
    if (h->payload_len > SNAP_MAX_PAYLOAD)
        return bad(err, errlen, "%s: offset 32: payload length %" PRIu64
                   " exceeds the format limit of %llu bytes", name, h->payload_len,
                   SNAP_MAX_PAYLOAD);
    if (h->index == 0 || h->term == 0)
        return bad(err, errlen, "%s: offset 16: index %" PRIu64 " and term %" PRIu64
                   " must both be positive", name, h->index, h->term);
    return 0;
}

int snap_check_size(const struct snap_header *h, uint64_t size, const char *name, char *err,
                    size_t errlen)
{
    uint64_t want = snap_file_size_for(h);
    if (size < want)
        return bad(err, errlen, "%s: truncated: the file is %" PRIu64 " bytes but its header "
                   "describes %" PRIu64 " (configuration %" PRIu32 " + payload %" PRIu64 ")",
                   name, size, want, h->config_len, h->payload_len);
    if (size > want)
        return bad(err, errlen, "%s: payload length mismatch: the file is %" PRIu64 " bytes but "
                   "its header describes %" PRIu64 " (configuration %" PRIu32 " + payload %"
                   PRIu64 ")", name, size, want, h->config_len, h->payload_len);
    return 0;
}

void snap_encode_trailer(uint8_t out[8], uint32_t crc)
{
    snap_put32(out, crc);
    memcpy(out + 4, SNAP_END_MAGIC, 4);
}

int snap_check_trailer(const uint8_t tr[8], uint32_t computed, uint64_t offset, const char *name,
                       char *err, size_t errlen)
{
    if (memcmp(tr + 4, SNAP_END_MAGIC, 4) != 0)
        return bad(err, errlen, "%s: offset %" PRIu64 ": bad trailer marker", name, offset + 4);
    uint32_t stored = snap_get32(tr);
    if (stored != computed)
        return bad(err, errlen, "%s: offset %" PRIu64 ": checksum mismatch (stored %08" PRIx32
                   ", computed %08" PRIx32 "): the file is damaged", name, offset, stored,
                   computed);
    return 0;
}

int snap_decode(const uint8_t *buf, size_t len, const char *name, struct snap_header *h,
                char *err, size_t errlen)
{
    int rc = snap_decode_header(buf, len, name, h, err, errlen);
    if (rc == 0)
        rc = snap_check_size(h, len, name, err, errlen);
    if (rc != 0)
        return rc;
    size_t body = len - SNAP_TRAILER_SIZE;
    return snap_check_trailer(buf + body, crc32c(0, buf, body), body, name, err, errlen);
}

int snap_read_full(int fd, void *out, size_t len, uint64_t off, const char *name, char *err,
                   size_t errlen)
{
    uint8_t *buf = out;
    while (len > 0) {
        ssize_t n = pread(fd, buf, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            if (err && errlen)
                snprintf(err, errlen, "%s: read at offset %" PRIu64 ": %s", name, off,
                         strerror(e));
            return -e;
        }
        if (n == 0)
            return bad(err, errlen, "%s: truncated at offset %" PRIu64 " while reading", name,
                       off);
        buf += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

int snap_crc_range(int fd, uint64_t off, uint64_t len, uint32_t *crc, const char *name, char *err,
                   size_t errlen)
{
    uint8_t *buf = malloc(VERIFY_BUF);
    if (!buf) {
        if (err && errlen)
            snprintf(err, errlen, "%s: out of memory", name);
        return -ENOMEM;
    }
    int rc = 0;
    while (len > 0 && rc == 0) {
        size_t n = len < VERIFY_BUF ? (size_t)len : VERIFY_BUF;
        rc = snap_read_full(fd, buf, n, off, name, err, errlen);
        *crc = crc32c(*crc, buf, n);
        off += n;
        len -= n;
    }
    free(buf);
    return rc;
}

int snap_verify_fd(int fd, const char *name, struct snap_header *h, char *err, size_t errlen)
{
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        if (err && errlen)
            snprintf(err, errlen, "%s: stat: %s", name, strerror(e));
        return -e;
    }
    uint64_t size = (uint64_t)st.st_size;
    uint8_t hdr[SNAP_HEADER_SIZE];
    size_t hlen = size < SNAP_HEADER_SIZE ? (size_t)size : SNAP_HEADER_SIZE;
    int rc = snap_read_full(fd, hdr, hlen, 0, name, err, errlen);
    if (rc == 0)
        rc = snap_decode_header(hdr, hlen, name, h, err, errlen);
    if (rc == 0)
        rc = snap_check_size(h, size, name, err, errlen);
    if (rc != 0)
        return rc;
    uint64_t body = size - SNAP_TRAILER_SIZE;
    uint32_t crc = crc32c(0, hdr, SNAP_HEADER_SIZE);
    rc = snap_crc_range(fd, SNAP_HEADER_SIZE, body - SNAP_HEADER_SIZE, &crc, name, err, errlen);
    uint8_t tr[SNAP_TRAILER_SIZE];
    if (rc == 0)
        rc = snap_read_full(fd, tr, sizeof tr, body, name, err, errlen);
    if (rc == 0)
        rc = snap_check_trailer(tr, crc, body, name, err, errlen);
    return rc;
}

/* ---- CRC combination ----
 * The CRC register is linear over GF(2), so crc(A||B) = Z^|B|(crc(A)) ^ crc(B), where Z advances
 * the bare register (without the initial and final inversions, which cancel) over one zero byte.
 * Z is a 32x32 bit matrix, stored as the images of the 32 unit vectors; Z^n is built by repeated
 * squaring, so the cost is O(log n) matrix products whatever the payload's size. */

static uint32_t gf2_apply(const uint32_t m[32], uint32_t v)
{
    uint32_t r = 0;
    for (int i = 0; v; i++, v >>= 1)
        if (v & 1)
            r ^= m[i];
    return r;
}

static void gf2_square(uint32_t out[32], const uint32_t m[32])
{
    for (int i = 0; i < 32; i++)
        out[i] = gf2_apply(m, m[i]);
}

uint32_t snap_crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b)
{
    uint32_t op[32], sq[32];
    /* One zero bit: the register shifts right, and a 1 shifted out folds in the polynomial. */
    op[0] = CRC32C_POLY;
    for (int i = 1; i < 32; i++)
        op[i] = 1u << (i - 1);
    gf2_square(sq, op); /* 2 bits */
    gf2_square(op, sq); /* 4 bits */
    gf2_square(sq, op); /* 8 bits: one zero byte */
    memcpy(op, sq, sizeof op);
    while (len_b) {
        if (len_b & 1)
            crc_a = gf2_apply(op, crc_a);
        len_b >>= 1;
        if (len_b) {
            gf2_square(sq, op);
            memcpy(op, sq, sizeof op);
        }
    }
    return crc_a ^ crc_b;
}
