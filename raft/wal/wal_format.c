/* wal_format.c: encoding and decoding of segments, records and the small files (hard state,
 * first-index marker, reset journal). No I/O here, so the decoders can be fuzzed on byte
 * buffers. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "raft/wal/crc32c.h"
#include "raft/wal/wal.h"
#include "raft/wal/wal_internal.h"

/* Record header layout (see docs/wal.md):
 *   0 u32 header crc (over bytes 4..31)   4 u32 payload length   8 u64 index   16 u64 term
 *  24 u32 payload crc   28 u8 type   29 u24 batch_pos (records before this one in the same write) */

void wal_encode_seg_header(uint8_t hdr[WAL_SEG_HEADER_SIZE], uint64_t first)
{
    memset(hdr, 0, WAL_SEG_HEADER_SIZE);
    memcpy(hdr, WAL_SEG_MAGIC, 8);
    wal_put32(hdr + 8, WAL_VERSION);
    wal_put64(hdr + 16, first);
    wal_put32(hdr + 24, crc32c(0, hdr, 24));
}

void wal_encode_record(uint8_t *rec, const struct raft_entry *e)
{
    wal_put32(rec + 4, e->len);
    wal_put64(rec + 8, e->index);
    wal_put64(rec + 16, e->term);
    wal_put32(rec + 24, e->len ? crc32c(0, e->data, e->len) : crc32c(0, "", 0));
    rec[28] = e->type;
    if (e->len)
        memcpy(rec + WAL_REC_HEADER_SIZE, e->data, e->len);
    wal_record_set_batch_pos(rec, 0);
}

void wal_record_set_batch_pos(uint8_t *rec, uint32_t pos)
{
    rec[29] = (uint8_t)pos;
    rec[30] = (uint8_t)(pos >> 8);
    rec[31] = (uint8_t)(pos >> 16);
    wal_put32(rec, crc32c(0, rec + 4, WAL_REC_HEADER_SIZE - 4));
}

void wal_encode_small(uint8_t buf[WAL_SMALL_FILE_SIZE], const char magic[4], uint32_t version,
                      uint64_t a, uint64_t b)
{
    memset(buf, 0, WAL_SMALL_FILE_SIZE);
    memcpy(buf, magic, 4);
    wal_put32(buf + 4, version);
    wal_put64(buf + 8, a);
    wal_put64(buf + 16, b);
    wal_put32(buf + 24, crc32c(0, buf, 24));
}

int wal_decode_small(const uint8_t *buf, size_t len, const char magic[4], uint32_t max_version,
                     uint32_t *version, uint64_t *a, uint64_t *b)
{
    if (len != WAL_SMALL_FILE_SIZE || memcmp(buf, magic, 4) != 0 ||
        wal_get32(buf + 24) != crc32c(0, buf, 24) || wal_get32(buf + 28) != 0)
        return -EBADMSG;
    /* Checked after the checksum: an intact file of an unknown version is not damage. */
    uint32_t v = wal_get32(buf + 4);
    if (v == 0 || v > max_version)
        return -ENOTSUP;
    *version = v;
    *a = wal_get64(buf + 8);
    *b = wal_get64(buf + 16);
    return 0;
}

void wal_encode_first(uint8_t buf[WAL_SMALL_FILE_SIZE], uint64_t first, uint64_t prev_term)
{
    /* Version 1 says all there is to say about a log starting at 1, and older builds can still
     * open a directory that was never compacted or reset. */
    uint32_t v = first == 1 && prev_term == 0 ? 1 : WAL_FIRST_VERSION;
    wal_encode_small(buf, WAL_FIRST_MAGIC, v, first, prev_term);
}

int wal_decode_first(const uint8_t *buf, size_t len, struct wal_first_marker *m)
{
    uint32_t v;
    uint64_t first, term;
    int rc = wal_decode_small(buf, len, WAL_FIRST_MAGIC, WAL_FIRST_VERSION, &v, &first, &term);
    if (rc != 0)
        return rc;
    /* Version 1 wrote 0 where version 2 keeps the term. */
    if (first == 0 || (v == 1 && term != 0) || (first == 1 && term != 0))
        return -EBADMSG;
    m->first = first;
    m->prev_term = term;
    m->prev_known = v >= 2 || first == 1;
    return 0;
}

int wal_reset_args_ok(uint64_t index, uint64_t term)
{
    return index != UINT64_MAX && (index == 0) == (term == 0);
}

void wal_encode_reset(uint8_t buf[WAL_SMALL_FILE_SIZE], uint64_t index, uint64_t term)
{
    wal_encode_small(buf, WAL_RESET_MAGIC, WAL_VERSION, index, term);
}

int wal_decode_reset(const uint8_t *buf, size_t len, uint64_t *index, uint64_t *term)
{
    uint32_t v;
    int rc = wal_decode_small(buf, len, WAL_RESET_MAGIC, WAL_VERSION, &v, index, term);
    if (rc == 0 && !wal_reset_args_ok(*index, *term))
        rc = -EBADMSG;
    return rc;
}

/* Size of the valid record at off whose index is > min_index (any index when min_index == 0 and
 * want == 0), or 0. Checks cheap fields before checksums so scanning garbage stays fast. */
static size_t record_at(const uint8_t *buf, size_t len, size_t off, uint64_t want,
                        uint64_t min_index, struct raft_entry *e, uint32_t *batch_pos)
{
    if (len - off < WAL_REC_HEADER_SIZE)
        return 0;
    const uint8_t *h = buf + off;
    uint64_t index = wal_get64(h + 8);
    uint32_t plen = wal_get32(h + 4);
    if (want ? index != want : index <= min_index)
        return 0;
    if (h[28] > RAFT_ENTRY_CONFIG || plen > len - off - WAL_REC_HEADER_SIZE)
        return 0;
    if (wal_get32(h) != crc32c(0, h + 4, WAL_REC_HEADER_SIZE - 4))
        return 0;
    if (wal_get32(h + 24) != crc32c(0, h + WAL_REC_HEADER_SIZE, plen))
        return 0;
    e->index = index;
    e->term = wal_get64(h + 16);
    e->type = h[28];
    e->len = plen;
    e->data = plen ? (uint8_t *)h + WAL_REC_HEADER_SIZE : NULL;
    *batch_pos = (uint32_t)h[29] | (uint32_t)h[30] << 8 | (uint32_t)h[31] << 16;
    return WAL_REC_HEADER_SIZE + (size_t)plen;
}

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -EBADMSG;
}

/* Offset just past the last nonzero byte of buf[from..len), or `from` if all are zero. */
static size_t nonzero_end(const uint8_t *buf, size_t from, size_t len)
{
    while (len > from && buf[len - 1] == 0)
        len--;
    return len;
}

/* Does an all-zero sector-aligned block start in [from, to)? That is what a torn write leaves in
 * preallocated space: sectors of the write that never reached the disk read back as zeros. */
static int zero_sector_in(const uint8_t *buf, size_t len, size_t from, size_t to)
{
    for (size_t s = from / WAL_SECTOR * WAL_SECTOR; s < to; s += WAL_SECTOR) {
        size_t e = s + WAL_SECTOR < len ? s + WAL_SECTOR : len;
        if (nonzero_end(buf, s, e) == s)
            return 1;
    }
    return 0;
}

int wal_segment_decode(const uint8_t *buf, size_t len, const char *name, uint64_t expected_first,
                       int is_last, wal_record_fn fn, void *arg, struct wal_decode_result *res,
                       char *err, size_t errlen)
{
    memset(res, 0, sizeof(*res));
    if (len < WAL_SEG_HEADER_SIZE)
        return fail(err, errlen, "%s: offset 0: segment header truncated (%zu bytes)", name, len);
    if (memcmp(buf, WAL_SEG_MAGIC, 8) != 0)
        return fail(err, errlen, "%s: offset 0: not a WAL segment (bad magic)", name);
    if (wal_get32(buf + 24) != crc32c(0, buf, 24) || wal_get32(buf + 28) != 0)
        return fail(err, errlen, "%s: offset 0: segment header checksum mismatch", name);
    if (wal_get32(buf + 8) != WAL_VERSION || wal_get32(buf + 12) != 0)
        return fail(err, errlen, "%s: offset 8: unsupported segment version %u", name,
                    wal_get32(buf + 8));
    uint64_t first = wal_get64(buf + 16);
    if (first != expected_first)
        return fail(err, errlen,
                    "%s: offset 16: header names first index %llu but the file name says %llu",
                    name, (unsigned long long)first, (unsigned long long)expected_first);
    if (first == 0)
        return fail(err, errlen, "%s: offset 16: first index 0 is invalid", name);

    size_t off = WAL_SEG_HEADER_SIZE;
    uint64_t next = first;
    res->first_index = first;
    for (;;) {
        struct raft_entry e;
        uint32_t pos;
        size_t n = off < len ? record_at(buf, len, off, next, 0, &e, &pos) : 0;
        if (n) {
            if (fn && fn(arg, &e, off) != 0)
                break;
            off += n;
            next++;
            if (next == 0)
                return fail(err, errlen, "%s: offset %zu: index overflow", name, off);
            continue;
        }
        size_t nz = nonzero_end(buf, off, len);
        if (nz == off)
            break; /* the preallocated zeros after the last record: a clean end */
        if (!is_last)
            return fail(err, errlen,
                        "%s: offset %zu: corrupt or unexpected data where entry %llu or zeros "
                        "were expected (not the newest segment)",
                        name, off, (unsigned long long)next);
        /* Something undecodable in the newest segment. It may be the torn end of the last write,
         * which was never acknowledged, or damage to durable data. Look for valid records after
         * it: one written by a later write (batch_pos tells where its write began) proves the
         * damaged bytes were synced before, so they are committed data. */
        size_t first_valid = 0;
        for (size_t p = off + 1; p + WAL_REC_HEADER_SIZE <= nz; p++) {
            struct raft_entry v;
            uint32_t vpos;
            if (!record_at(buf, len, p, 0, next, &v, &vpos))
                continue;
            if (v.index - vpos > next)
                return fail(err, errlen,
                            "%s: offset %zu: corrupt record where entry %llu was expected, but a "
                            "later write survives at offset %zu (entry %llu): refusing to drop "
                            "committed entries",
                            name, off, (unsigned long long)next, p, (unsigned long long)v.index);
            if (!first_valid)
                first_valid = p;
        }
        /* Valid records of the same write follow: only a torn write (sectors that stayed zero)
         * explains a bad record in the middle of them; a checksum failure without zeros is
         * damage to a record that was acknowledged. */
        if (first_valid && !zero_sector_in(buf, len, off, first_valid))
            return fail(err, errlen,
                        "%s: offset %zu: checksum mismatch in entry %llu, followed by valid "
                        "entries at offset %zu: refusing to drop committed entries",
                        name, off, (unsigned long long)next, first_valid);
        res->end = off;
        res->dirty_end = nz;
        res->count = next - first;
        return 0;
    }
    res->end = off;
    res->dirty_end = off;
    res->count = next - first;
    return 0;
}
