/* Fuzz target for the checks craftctl snapshot restore makes of a saved file before writing
 * anything (services/snap_restore_check.c): the SHA-256 trailer, the zero padding, every byte of
 * the KV payload. Each input is tried as a whole file, and again with its correct SHA-256
 * appended so the padding and payload checks behind the hash are reached too. Anything accepted
 * must name a payload inside the file that ends with the KV trailer. */
#include <openssl/evp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "services/snap_restore.h"

static void check(const uint8_t *buf, size_t len)
{
    struct kv_snap_meta m;
    uint64_t plen = 0;
    char err[300];
    if (snap_restore_check_image(buf, len, &m, &plen, err, sizeof err) != 0)
        return;
    if (plen < KV_SNAP_HEADER + KV_SNAP_TRAILER || plen > len - SNAP_RESTORE_HASH ||
        memcmp(buf + plen - KV_SNAP_TRAILER, KV_SNAP_END_MAGIC, 8) != 0)
        abort(); /* accepted, but the payload it names is not one */
    for (uint64_t i = plen; i < len - SNAP_RESTORE_HASH; i++)
        if (buf[i] != 0)
            abort(); /* accepted a nonzero byte as padding */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check(data, size);
    uint8_t *buf = malloc(size + SNAP_RESTORE_HASH);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    unsigned int hl = 0;
    if (EVP_Digest(data, size, buf + size, &hl, EVP_sha256(), NULL) == 1)
        check(buf, size + SNAP_RESTORE_HASH);
    free(buf);
    return 0;
}
