/* Until the store's history lands: weak stand-ins so the hub links (the tests inject their own
 * source and set no hook). */
#include "services/kvstore/kv_store.h"

__attribute__((weak)) int kv_store_events(struct kv_store *s, int64_t from_rev, size_t max_events,
                                          bool with_prev, kv_event_cb cb, void *arg,
                                          int64_t *next_rev, int64_t *cur_rev, int64_t *compact_rev,
                                          struct kv_err *err)
{
    (void)s, (void)from_rev, (void)max_events, (void)with_prev, (void)cb, (void)arg;
    (void)next_rev, (void)cur_rev, (void)compact_rev;
    err->code = KV_CODE_INTERNAL;
    return -1;
}

__attribute__((weak)) void kv_store_set_commit_hook(struct kv_store *s,
                                                    void (*fn)(void *arg, int64_t rev), void *arg)
{
    (void)s, (void)fn, (void)arg;
}
