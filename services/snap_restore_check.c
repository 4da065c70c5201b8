/* snap_restore_check.c: the checks of a saved snapshot file that need no disk and no store (see
 * snap_restore.h), shared by snap_restore and the fuzz target tests/fuzz/restore_check_fuzz.c. */
#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

#include "services/kvstore/kv_snap.h"
#include "services/snap_restore.h"

int snap_restore_payload_end(const uint8_t *tail, size_t n, size_t *end)
{
    for (size_t e = n; e >= KV_SNAP_TRAILER; e--) {
        if (e < n && tail[e] != 0)
            return -1; /* a nonzero byte after the candidate end: not padding */
        if (n - e >= 512)
            return -1; /* Maintenance.Snapshot pads to 512 bytes, never more */
        if (memcmp(tail + e - KV_SNAP_TRAILER, KV_SNAP_END_MAGIC, 8) == 0) {
            *end = e;
            return 0;
        }
    }
    return -1;
}

struct mem {
    const uint8_t *p;
    size_t left;
};

static long mem_read(void *arg, void *buf, size_t len)
{
    struct mem *m = arg;
    if (len > m->left)
        len = m->left;
    memcpy(buf, m->p, len);
    m->p += len;
    m->left -= len;
    return (long)len;
}

int snap_restore_check_image(const uint8_t *buf, size_t len, struct kv_snap_meta *meta,
                             uint64_t *payload_len, char *err, size_t errlen)
{
    if (len < SNAP_RESTORE_HASH + KV_SNAP_HEADER + KV_SNAP_TRAILER) {
        snprintf(err, errlen, "%zu bytes is too short for a snapshot (truncated?)", len);
        return -EBADMSG;
    }
    size_t data = len - SNAP_RESTORE_HASH;
    uint8_t got[SNAP_RESTORE_HASH];
    unsigned int glen = 0;
    if (EVP_Digest(buf, data, got, &glen, EVP_sha256(), NULL) != 1 || glen != SNAP_RESTORE_HASH) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    if (memcmp(got, buf + data, SNAP_RESTORE_HASH) != 0) {
        snprintf(err, errlen, "checksum mismatch: the file is truncated or corrupted (its last 32 "
                              "bytes are not the SHA-256 of the rest)");
        return -EBADMSG;
    }
    size_t n = data < 512 + KV_SNAP_TRAILER ? data : 512 + KV_SNAP_TRAILER, end;
    if (snap_restore_payload_end(buf + data - n, n, &end)) {
        snprintf(err, errlen, "not a craft KV snapshot: no KV snapshot trailer at its end");
        return -EBADMSG;
    }
    *payload_len = data - (n - end);
    /* The whole payload, record by record, as a restore will read it. */
    struct mem m = {buf, (size_t)*payload_len};
    struct kv_snap_dec *d = kv_snap_dec_new(mem_read, &m);
    if (!d) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    int rc = kv_snap_dec_header(d, meta, err, errlen);
    struct kv_snap_rec r;
    if (rc == 0)
        do
            rc = kv_snap_dec_next(d, &r, err, errlen);
        while (rc == 1);
    kv_snap_dec_free(d);
    return rc;
}
