/* kv_hist.c: the history records' codec (layout and rules in kv_hist.h). */
#include "services/kvstore/kv_hist.h"

#include <string.h>

void kv_hist_key(uint8_t out[KV_HIST_KEY], int64_t rev, uint64_t sub)
{
    kv_be64_put(out, (uint64_t)rev);
    kv_be64_put(out + 8, sub);
}

void kv_hist_head(uint8_t out[KV_HIST_HEAD], size_t klen, int type)
{
    out[0] = (uint8_t)klen;
    out[1] = (uint8_t)(klen >> 8);
    out[2] = (uint8_t)(klen >> 16);
    out[3] = (uint8_t)(klen >> 24);
    out[4] = (uint8_t)type;
    out[5] = out[6] = out[7] = 0;
}

int kv_hist_decode(const void *key, size_t klen, const void *val, size_t vlen,
                   struct kv_hist_ent *h)
{
    if (klen != KV_HIST_KEY || vlen < KV_HIST_HEAD)
        return -1;
    const uint8_t *k = key, *p = val;
    uint32_t n = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                 (uint32_t)p[3] << 24;
    int64_t rev = (int64_t)kv_be64_get(k);
    if (rev < 1 || n == 0 || n > KV_HIST_MAX_KEY || vlen - KV_HIST_HEAD < n ||
        p[4] > KV_HIST_DELETE || p[5] || p[6] || p[7])
        return -1;
    size_t rlen = vlen - KV_HIST_HEAD - n;
    if (p[4] == KV_HIST_PUT ? rlen < KV_HIST_REC_MIN : rlen != 0)
        return -1;
    *h = (struct kv_hist_ent){rev, kv_be64_get(k + 8), p[4], p + KV_HIST_HEAD, n,
                              rlen ? p + KV_HIST_HEAD + n : NULL, rlen};
    return 0;
}
