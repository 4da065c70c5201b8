/* Fuzz target for the KV snapshot payload decoder (services/kvstore/kv_snap.c), the code that
 * reads a snapshot's bytes before a restore lets any of them into LMDB. Any byte string is
 * decoded twice, once in reads as large as asked and once in reads of 1 to 13 bytes; both must
 * reach the same verdict: 0 (accepted) or -EBADMSG with a message, never a crash, an
 * out-of-bounds read (ASan) or undefined behaviour (UBSan). What is accepted must obey the
 * format's rules (version 1: keys strictly increasing; versions 2 and 3: a history in write
 * order, tombstones only there; version 3: then leases in order; version 4: then at most one
 * auth record, last; records at least 32 bytes)
 * and re-encode to exactly the input: the format has one encoding per state. Built with clang's libFuzzer (run_kv_snap_fuzz.sh) and as a corpus replay with the default toolchain (replay_main.c). */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "services/kvstore/kv_snap.h"

struct src {
    const uint8_t *data;
    size_t len, pos;
    unsigned step; /* 0: as much as asked; else reads of 1..13 bytes in turn */
};

static long src_read(void *arg, void *buf, size_t n)
{
    struct src *s = arg;
    size_t left = s->len - s->pos;
    if (n > left)
        n = left;
    if (s->step) {
        size_t cap = 1 + s->step++ % 13;
        if (n > cap)
            n = cap;
    }
    if (n)
        memcpy(buf, s->data + s->pos, n);
    s->pos += n;
    return (long)n;
}

struct sink {
    uint8_t *data;
    size_t len, cap;
};

static int sink_write(void *arg, const void *buf, size_t n)
{
    struct sink *k = arg;
    if (k->len + n > k->cap) {
        size_t cap = k->cap ? k->cap * 2 : 1024;
        while (cap < k->len + n)
            cap *= 2;
        uint8_t *d = realloc(k->data, cap);
        if (!d)
            abort();
        k->data = d;
        k->cap = cap;
    }
    memcpy(k->data + k->len, buf, n);
    k->len += n;
    return 0;
}

struct verdict {
    int rc;
    uint64_t count;
    char err[256];
};

/* Decodes data; with enc non-NULL, re-encodes what it accepts. */
static void decode(const uint8_t *data, size_t size, unsigned step, struct kv_snap_enc *enc,
                   struct verdict *v)
{
    struct src s = {data, size, 0, step};
    struct kv_snap_dec *d = kv_snap_dec_new(src_read, &s);
    if (!d)
        abort();
    struct kv_snap_meta m;
    v->err[0] = 0;
    v->count = 0;
    v->rc = kv_snap_dec_header(d, &m, v->err, sizeof v->err);
    if (v->rc == 0 && enc && kv_snap_enc_header(enc, &m) != 0)
        abort();
    uint8_t prev[KV_SNAP_MAX_KEY];
    size_t prev_len = 0;
    int64_t prev_mod = 0;
    struct kv_snap_rec r;
    bool in_leases = false, had_auth = false;
    uint64_t prev_lease = 0;
    while (v->rc == 0 && (v->rc = kv_snap_dec_next(d, &r, v->err, sizeof v->err)) == 1) {
        if (had_auth)
            abort(); /* nothing after the auth record */
        if (r.is_auth) {
            if (m.version < 4 || r.rlen == 0 || r.rlen > KV_SNAP_MAX_AUTH)
                abort();
            had_auth = true;
            if (enc && kv_snap_enc_auth(enc, r.rec, r.rlen) != 0)
                abort();
            v->count++;
            v->rc = 0;
            continue;
        }
        if (r.is_lease) {
            if (m.version < 3 || r.lease_id == 0 || r.lease_ttl < 1 ||
                r.lease_ttl > KV_SNAP_MAX_LEASE_TTL || r.lease_remaining < 0 ||
                (in_leases && (uint64_t)r.lease_id <= prev_lease))
                abort(); /* a lease the format does not allow */
            in_leases = true;
            prev_lease = (uint64_t)r.lease_id;
            if (enc && kv_snap_enc_lease(enc, r.lease_id, r.lease_ttl, r.lease_remaining) != 0)
                abort();
            v->count++;
            v->rc = 0;
            continue;
        }
        if (in_leases)
            abort(); /* a key after the leases */
        if (r.klen == 0 || r.klen > KV_SNAP_MAX_KEY || r.rlen < KV_SNAP_REC_FIXED)
            abort();
        int64_t create = (int64_t)kv_le_get64(r.rec), mod = (int64_t)kv_le_get64(r.rec + 8);
        int64_t version = (int64_t)kv_le_get64(r.rec + 16);
        if (m.version == 1 && v->count > 0) {
            int c = memcmp(prev, r.key, prev_len < r.klen ? prev_len : r.klen);
            if (c > 0 || (c == 0 && prev_len >= r.klen))
                abort(); /* not strictly increasing */
        }
        if (m.version >= 2 && ((v->count > 0 && mod < prev_mod) || mod < 1 || mod > m.rev))
            abort(); /* history out of write order */
        if (version == 0 && (m.version < 2 || create != 0 || r.rlen != KV_SNAP_REC_FIXED))
            abort(); /* a tombstone only in a history, with nothing but its revision */
        if (version != 0 && (create < 1 || create > mod))
            abort();
        memcpy(prev, r.key, r.klen);
        prev_len = r.klen;
        prev_mod = mod;
        if (enc && kv_snap_enc_record(enc, r.key, r.klen, r.rec, r.rlen) != 0)
            abort();
        v->count++;
        v->rc = 0;
    }
    if (v->rc == 0 && kv_snap_dec_offset(d) != size)
        abort(); /* accepted, so the payload is the whole input */
    kv_snap_dec_free(d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct verdict a, b;
    decode(data, size, 0, NULL, &a);
    decode(data, size, 1, NULL, &b);
    if (a.rc != 0 && (a.rc != -EBADMSG || a.err[0] == 0 || !memchr(a.err, 0, sizeof a.err)))
        abort();
    /* Read sizes must not change the verdict, the reason or what was read. */
    if (a.rc != b.rc || a.count != b.count || strcmp(a.err, b.err) != 0)
        abort();
    if (a.rc != 0)
        return 0;
    /* Accepted: once more through the encoder (only now: its buffer is large). */
    struct sink out = {0};
    struct kv_snap_enc *enc = kv_snap_enc_new(sink_write, &out);
    if (!enc)
        abort();
    decode(data, size, 0, enc, &b);
    uint64_t len = 0;
    if (b.rc != 0 || kv_snap_enc_finish(enc, &len) != 0 || len != size || out.len != size ||
        memcmp(out.data, data, size) != 0)
        abort();
    kv_snap_enc_free(enc);
    free(out.data);
    return 0;
}
