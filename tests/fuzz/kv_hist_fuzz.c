/* Fuzz target for the KV store's history record decoders (services/kvstore/kv_hist.c): the
 * code that reads what the history holds, for Watch, old-revision reads and compaction. The
 * input's first byte (mod 33) is the length of the LMDB key; the key, then the value, follow.
 * The decoders must never crash, read out of bounds (ASan) or hit undefined behaviour (UBSan);
 * what they accept must obey kv_hist.h's rules and re-encode to exactly the input. Built with
 * clang's libFuzzer (run_kv_hist_fuzz.sh) and as a corpus replay (replay_main.c). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "services/kvstore/kv_hist.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    size_t kn = data[0] % 33;
    if (kn > size - 1)
        kn = size - 1;
    const uint8_t *k = data + 1, *v = data + 1 + kn;
    size_t vn = size - 1 - kn;
    struct kv_hist_ent h;
    if (kv_hist_decode(k, kn, v, vn, &h) == 0) {
        if (h.rev < 1 || h.klen == 0 || h.klen > KV_HIST_MAX_KEY ||
            (h.type != KV_HIST_PUT && h.type != KV_HIST_DELETE) ||
            (h.type == KV_HIST_PUT && (h.rlen < KV_HIST_REC_MIN || !h.rec)) ||
            (h.type == KV_HIST_DELETE && (h.rlen != 0 || h.rec)) ||
            h.key != v + KV_HIST_HEAD || KV_HIST_HEAD + h.klen + h.rlen != vn)
            abort();
        uint8_t key[KV_HIST_KEY], head[KV_HIST_HEAD];
        kv_hist_key(key, h.rev, h.sub);
        kv_hist_head(head, h.klen, h.type);
        if (kn != KV_HIST_KEY || memcmp(key, k, kn) || memcmp(head, v, KV_HIST_HEAD) ||
            (h.rlen && memcmp(h.rec, v + KV_HIST_HEAD + h.klen, h.rlen)))
            abort(); /* one encoding per record */
    }
    return 0;
}
