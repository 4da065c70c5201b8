/* Fuzz target for the WAL's on-disk decoders (raft/wal/wal_format.c): any byte string is decoded as a
 * segment (as the newest segment and as an older one) and as a small file. The decoder must
 * return 0 or -EBADMSG with a message, report offsets inside the buffer, and never read outside
 * it (ASan) or hit undefined behaviour (UBSan). Built two ways: with clang's libFuzzer
 * (run_wal_fuzz.sh) and as a plain corpus replay with the default toolchain (replay_main.c). */
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
    uint64_t a, b;
    (void)wal_decode_small(data, size, "CRHS", &a, &b);
    (void)wal_decode_small(data, size, "CRFI", &a, &b);
    return 0;
}
