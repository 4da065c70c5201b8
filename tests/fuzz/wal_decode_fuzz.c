/* Fuzz target for the WAL's on-disk decoders (raft/wal/wal_format.c): any byte string is decoded as a
 * segment (as the newest segment and as an older one) and as each small file (hard state,
 * first-index marker of either version, reset journal). The segment decoder must return 0 or
 * -EBADMSG with a message and report offsets inside the buffer; the small-file decoders 0,
 * -EBADMSG or -ENOTSUP; none may read outside the buffer (ASan) or hit undefined behaviour
 * (UBSan). Built two ways: with clang's libFuzzer (run_wal_fuzz.sh) and as a plain corpus
 * replay with the default toolchain (replay_main.c). */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "raft/wal/wal.h"
#include "raft/wal/wal_internal.h"

struct walk {
    uint64_t next;
    size_t last_off;
    size_t len;
};

static int on_record(void *arg, const struct raft_entry *e, size_t off)
{
    struct walk *w = arg;
    /* Records come in index order, at increasing offsets, inside the buffer. */
    if (e->index != w->next || off < w->last_off || off + WAL_REC_HEADER_SIZE + e->len > w->len ||
        (e->len && !e->data))
        abort();
    w->next++;
    w->last_off = off + 1;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Decode with the first index the header claims, so inputs get past the name check. */
    uint64_t first = size >= 24 ? wal_get64(data + 16) : 1;
    for (int is_last = 0; is_last < 2; is_last++) {
        struct walk w = {first, 0, size};
        struct wal_decode_result res;
        char err[512];
        err[0] = 0;
        int rc = wal_segment_decode(data, size, "fuzz", first, is_last, on_record, &w, &res, err,
                                    sizeof err);
        if (rc != 0 && (rc != -EBADMSG || err[0] == 0 || memchr(err, 0, sizeof err) == NULL))
            abort();
        if (rc == 0 && (res.end > size || res.dirty_end > size || res.end > res.dirty_end ||
                        res.count != w.next - first || (!is_last && res.dirty_end != res.end)))
            abort();
    }
    /* The small files: 0 only for exactly 32 bytes, and what the decoders accept holds the
     * invariants recovery relies on. */
    uint32_t v;
    uint64_t a, b;
    int rc = wal_decode_small(data, size, WAL_HS_MAGIC, WAL_VERSION, &v, &a, &b);
    if (rc != 0 && rc != -EBADMSG && rc != -ENOTSUP)
        abort();
    if (rc == 0 && (size != WAL_SMALL_FILE_SIZE || v != WAL_VERSION))
        abort();
    struct wal_first_marker m;
    rc = wal_decode_first(data, size, &m);
    if (rc != 0 && rc != -EBADMSG && rc != -ENOTSUP)
        abort();
    if (rc == 0 && (size != WAL_SMALL_FILE_SIZE || m.first == 0 ||
                    (m.first == 1 && (m.prev_term != 0 || !m.prev_known)) ||
                    (!m.prev_known && m.prev_term != 0)))
        abort();
    rc = wal_decode_reset(data, size, &a, &b);
    if (rc != 0 && rc != -EBADMSG && rc != -ENOTSUP)
        abort();
    if (rc == 0 && (size != WAL_SMALL_FILE_SIZE || !wal_reset_args_ok(a, b)))
        abort();
    return 0;
}
