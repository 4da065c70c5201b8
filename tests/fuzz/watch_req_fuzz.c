/* Fuzz target for the Watch stream's request path (services/watch_req.c: watch_req_decode and
 * the key matching a create sets up): any bytes get a verdict - -1 (not a WatchRequest, the
 * stream ends INVALID_ARGUMENT) or a request of one kind - never a crash, an out-of-bounds read
 * (ASan) or undefined behaviour (UBSan). A create is normalized as etcd does (an empty key is
 * "\0"), its refusal reason is printable, and a valid one matches its own key exactly when
 * its range says so: a single key and a from-key range always, a range [key, end) always
 * (end > key is checked). Built with clang's libFuzzer (run_fuzz.sh) and as a corpus
 * replay with the default toolchain (replay_main.c). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "services/watch.h"

static void check_create(const struct watch_req *r)
{
    if (!r->key || r->klen == 0)
        abort(); /* "" is normalized to "\0" */
    for (const char *p = r->error; *p; p++)
        if (*p < 0x20 || *p > 0x7e)
            abort();
    if (r->error[0])
        return;
    if (r->klen > WATCH_MAX_KEY || r->elen > WATCH_MAX_KEY || r->start_rev < 0 ||
        r->watch_id < 0)
        abort();
    if (r->range != WATCH_KEY_ONE && r->range != WATCH_KEY_FROM && r->range != WATCH_KEY_RANGE)
        abort();
    /* A watch covers its own key (an empty range was refused). */
    if (!watch_req_matches(r, r->key, r->klen))
        abort();
    /* A single-key watch covers nothing longer; a range never covers its end. */
    uint8_t longer[WATCH_MAX_KEY + 1];
    memcpy(longer, r->key, r->klen);
    longer[r->klen] = 0;
    if (r->range == WATCH_KEY_ONE && watch_req_matches(r, longer, r->klen + 1))
        abort();
    if (r->range == WATCH_KEY_RANGE && watch_req_matches(r, r->end, r->elen))
        abort();
    if (r->range == WATCH_KEY_FROM && !watch_req_matches(r, longer, r->klen + 1))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct watch_req r;
    if (watch_req_decode(data, size, &r) != 0) {
        if (r.msg)
            abort(); /* a refusal holds nothing */
        return 0;
    }
    switch (r.kind) {
    case WATCH_REQ_CREATE:
        check_create(&r);
        break;
    case WATCH_REQ_NONE:
    case WATCH_REQ_CANCEL:
    case WATCH_REQ_PROGRESS:
        break;
    default:
        abort();
    }
    watch_req_free(&r);
    if (r.msg)
        abort();
    return 0;
}
