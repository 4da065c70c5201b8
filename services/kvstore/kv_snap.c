/* kv_snap.c: the snapshot payload codec (format and rules in kv_snap.h). */
#include "services/kvstore/kv_snap.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "raft/wal/crc32c.h"

#define ENC_BUF (256u << 10)
#define DEC_MIN (64u << 10)

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* ---- encoder ---- */

struct kv_snap_enc {
    kv_snap_write_fn write;
    void *arg;
    uint8_t *buf;
    size_t used;
    uint32_t crc;   /* over every byte handed to the sink */
    uint64_t total; /* bytes handed to the sink */
    uint64_t count;
    int err; /* sticky: after a failed write the stream is broken */
};

struct kv_snap_enc *kv_snap_enc_new(kv_snap_write_fn write, void *arg)
{
    struct kv_snap_enc *e = calloc(1, sizeof *e);
    if (e && !(e->buf = malloc(ENC_BUF))) {
        free(e);
        return NULL;
    }
    if (e) {
        e->write = write;
        e->arg = arg;
    }
    return e;
}

void kv_snap_enc_free(struct kv_snap_enc *e)
{
    if (e)
        free(e->buf);
    free(e);
}

/* Hands p[n] to the sink; crc says whether the bytes count in the trailer's CRC. */
static int enc_emit(struct kv_snap_enc *e, const void *p, size_t n, bool crc)
{
    if (crc)
        e->crc = crc32c(e->crc, p, n);
    int rc = e->write(e->arg, p, n);
    if (rc == 0)
        e->total += n;
    else
        e->err = rc < 0 ? rc : -EIO;
    return e->err;
}

static int enc_flush(struct kv_snap_enc *e)
{
    size_t n = e->used;
    e->used = 0;
    return n ? enc_emit(e, e->buf, n, true) : e->err;
}

static int enc_put(struct kv_snap_enc *e, const void *p, size_t n)
{
    if (e->err)
        return e->err;
    if (n <= ENC_BUF - e->used) {
        memcpy(e->buf + e->used, p, n);
        e->used += n;
        return 0;
    }
    if (enc_flush(e))
        return e->err;
    if (n >= ENC_BUF) /* a large value goes straight through, not through the buffer */
        return enc_emit(e, p, n, true);
    memcpy(e->buf, p, n);
    e->used = n;
    return 0;
}

int kv_snap_enc_header(struct kv_snap_enc *e, const struct kv_snap_meta *m)
{
    uint8_t h[KV_SNAP_HEADER];
    memcpy(h, KV_SNAP_MAGIC, 8);
    put32(h + 8, m->version ? m->version : KV_SNAP_VERSION);
    put32(h + 12, 0);
    kv_le_put64(h + 16, m->index);
    kv_le_put64(h + 24, m->term);
    kv_le_put64(h + 32, (uint64_t)m->rev);
    kv_le_put64(h + 40, (uint64_t)m->compact);
    return enc_put(e, h, sizeof h);
}

int kv_snap_enc_record(struct kv_snap_enc *e, const void *key, size_t klen, const void *rec,
                       size_t rlen)
{
    if (klen == 0 || klen > KV_SNAP_MAX_KEY || rlen < KV_SNAP_REC_FIXED ||
        rlen - KV_SNAP_REC_FIXED > UINT32_MAX)
        return -EINVAL;
    uint8_t h[KV_SNAP_REC_HEAD];
    put32(h, (uint32_t)klen);
    put32(h + 4, (uint32_t)(rlen - KV_SNAP_REC_FIXED));
    int rc;
    if ((rc = enc_put(e, h, sizeof h)) || (rc = enc_put(e, key, klen)) ||
        (rc = enc_put(e, rec, rlen)))
        return rc;
    e->count++;
    return 0;
}

int kv_snap_enc_lease(struct kv_snap_enc *e, int64_t id, int64_t ttl, int64_t remaining)
{
    if (id == 0 || ttl < 1 || ttl > KV_SNAP_MAX_LEASE_TTL || remaining < 0 ||
        remaining > KV_SNAP_MAX_LEASE_TTL)
        return -EINVAL;
    uint8_t b[KV_SNAP_REC_HEAD + KV_SNAP_REC_FIXED] = {0};
    kv_le_put64(b + 8, (uint64_t)id);
    kv_le_put64(b + 16, (uint64_t)ttl);
    kv_le_put64(b + 24, (uint64_t)remaining);
    int rc = enc_put(e, b, sizeof b);
    if (rc == 0)
        e->count++;
    return rc;
}

int kv_snap_enc_auth(struct kv_snap_enc *e, const void *state, size_t len)
{
    if (len == 0 || len > KV_SNAP_MAX_AUTH)
        return -EINVAL;
    uint8_t h[KV_SNAP_REC_HEAD];
    put32(h, 0);
    put32(h + 4, (uint32_t)len);
    int rc;
    if ((rc = enc_put(e, h, sizeof h)) || (rc = enc_put(e, state, len)))
        return rc;
    e->count++;
    return 0;
}

int kv_snap_enc_finish(struct kv_snap_enc *e, uint64_t *len)
{
    uint8_t t[KV_SNAP_TRAILER];
    memcpy(t, KV_SNAP_END_MAGIC, 8);
    kv_le_put64(t + 8, e->count);
    /* The CRC covers everything before its own field, so flush up to there first. */
    if (enc_put(e, t, 16) || enc_flush(e))
        return e->err;
    put32(t + 16, e->crc);
    put32(t + 20, 0);
    if (enc_emit(e, t + 16, 8, false))
        return e->err;
    if (len)
        *len = e->total;
    return 0;
}

/* ---- decoder ---- */

enum dec_state { DEC_HEADER, DEC_RECORDS, DEC_DONE, DEC_FAILED };

struct kv_snap_dec {
    kv_snap_read_fn read;
    void *arg;
    uint8_t *buf;
    size_t cap, pos, have; /* buf[pos, have) read but not consumed */
    bool eof;
    enum dec_state state;
    uint32_t crc;    /* over the consumed bytes */
    uint64_t offset; /* bytes consumed */
    uint64_t count;  /* records returned */
    int64_t rev;
    uint32_t version;
    int64_t prev_mod;              /* version 2: the last record's mod_revision */
    bool in_leases;                /* version 3: a lease came; only leases may follow */
    bool had_auth;                 /* version 4: the auth record came; nothing may follow */
    uint64_t prev_lease;           /* the last lease's ID, for the order check */
    uint8_t prev[KV_SNAP_MAX_KEY]; /* version 1: the last key, for the order check */
    size_t prev_len;
};

struct kv_snap_dec *kv_snap_dec_new(kv_snap_read_fn read, void *arg)
{
    struct kv_snap_dec *d = calloc(1, sizeof *d);
    if (d) {
        d->read = read;
        d->arg = arg;
    }
    return d;
}

void kv_snap_dec_free(struct kv_snap_dec *d)
{
    if (d)
        free(d->buf);
    free(d);
}

uint64_t kv_snap_dec_offset(const struct kv_snap_dec *d) { return d->offset; }

static void vfail(char *err, size_t errlen, const char *fmt, va_list ap)
{
    if (!err || !errlen)
        return;
    int n = snprintf(err, errlen, "kv snapshot: ");
    if (n >= 0 && (size_t)n < errlen)
        vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
}

int kv_snap_fail(char *err, size_t errlen, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail(err, errlen, fmt, ap);
    va_end(ap);
    return rc;
}

/* The decoder's reasons also say where: the offset of the first byte not accepted. */
__attribute__((format(printf, 5, 6))) static int dec_fail(struct kv_snap_dec *d, int rc,
                                                          char *err, size_t errlen,
                                                          const char *fmt, ...)
{
    d->state = DEC_FAILED;
    va_list ap;
    va_start(ap, fmt);
    vfail(err, errlen, fmt, ap);
    va_end(ap);
    size_t n = err && errlen ? strlen(err) : 0;
    if (err && n + 1 < errlen)
        snprintf(err + n, errlen - n, " (at byte %llu)", (unsigned long long)d->offset);
    return rc;
}

/* Makes need bytes available at buf + pos. 0; 1 when the input ends first; or a negative
 * errno. The buffer grows with the bytes that actually arrive, never straight to a length the
 * input claims, so a lying length costs no more memory than the input holds. */
static int dec_fill(struct kv_snap_dec *d, size_t need)
{
    if (d->have - d->pos >= need)
        return 0;
    if (d->pos) {
        memmove(d->buf, d->buf + d->pos, d->have - d->pos);
        d->have -= d->pos;
        d->pos = 0;
    }
    while (d->have < need) {
        if (d->eof)
            return 1;
        if (d->have == d->cap) {
            size_t cap = d->cap ? d->cap * 2 : DEC_MIN;
            if (cap > need && need > DEC_MIN)
                cap = need;
            uint8_t *b = realloc(d->buf, cap);
            if (!b)
                return -ENOMEM;
            d->buf = b;
            d->cap = cap;
        }
        long n = d->read(d->arg, d->buf + d->have, d->cap - d->have);
        if (n < 0)
            return n >= -4095 ? (int)n : -EIO;
        if ((size_t)n > d->cap - d->have)
            return -EIO; /* the source claims more than it was asked for */
        if (n == 0)
            d->eof = true;
        d->have += (size_t)n;
    }
    return 0;
}

static void dec_consume(struct kv_snap_dec *d, size_t n)
{
    d->crc = crc32c(d->crc, d->buf + d->pos, n);
    d->pos += n;
    d->offset += n;
}

/* dec_fill's result as the caller's return: a short input is a truncated payload. */
static int dec_short(struct kv_snap_dec *d, int rc, char *err, size_t errlen, const char *where)
{
    if (rc == 1)
        return dec_fail(d, -EBADMSG, err, errlen, "truncated in %s", where);
    return dec_fail(d, rc, err, errlen, "reading %s: %s", where, strerror(-rc));
}

int kv_snap_dec_header(struct kv_snap_dec *d, struct kv_snap_meta *m, char *err, size_t errlen)
{
    if (d->state != DEC_HEADER)
        return dec_fail(d, -EINVAL, err, errlen, "header requested twice");
    int rc = dec_fill(d, KV_SNAP_HEADER);
    if (rc)
        return dec_short(d, rc, err, errlen, "the header");
    const uint8_t *p = d->buf + d->pos;
    if (memcmp(p, KV_SNAP_MAGIC, 8) != 0)
        return dec_fail(d, -EBADMSG, err, errlen, "not a craft KV snapshot (bad magic)");
    uint32_t version = get32(p + 8);
    if (version < 1 || version > 4)
        return dec_fail(d, -EBADMSG, err, errlen, "format version %u; this build reads 1 to 4",
                        version);
    if (get32(p + 12) != 0)
        return dec_fail(d, -EBADMSG, err, errlen, "unknown flags 0x%x", get32(p + 12));
    struct kv_snap_meta h = {kv_le_get64(p + 16), kv_le_get64(p + 24),
                             (int64_t)kv_le_get64(p + 32), (int64_t)kv_le_get64(p + 40), version};
    if (h.compact < 0 || h.compact > h.rev)
        return dec_fail(d, -EBADMSG, err, errlen, "revision %lld with compacted revision %lld",
                        (long long)h.rev, (long long)h.compact);
    dec_consume(d, KV_SNAP_HEADER);
    d->rev = h.rev;
    d->version = version;
    d->state = DEC_RECORDS;
    *m = h;
    return 0;
}

static int dec_trailer(struct kv_snap_dec *d, char *err, size_t errlen)
{
    int rc = dec_fill(d, KV_SNAP_TRAILER);
    if (rc)
        return dec_short(d, rc, err, errlen, "the trailer");
    const uint8_t *p = d->buf + d->pos;
    uint64_t count = kv_le_get64(p + 8);
    if (count != d->count)
        return dec_fail(d, -EBADMSG, err, errlen, "trailer counts %llu records, found %llu",
                        (unsigned long long)count, (unsigned long long)d->count);
    dec_consume(d, 16);
    p = d->buf + d->pos;
    if (get32(p) != d->crc)
        return dec_fail(d, -EBADMSG, err, errlen, "CRC mismatch (stored %08x, computed %08x)",
                        get32(p), d->crc);
    if (get32(p + 4) != 0)
        return dec_fail(d, -EBADMSG, err, errlen, "trailer padding is not zero");
    dec_consume(d, 8);
    /* The payload must end here: bytes after it mean the caller's region is not this payload. */
    if ((rc = dec_fill(d, 1)) == 0)
        return dec_fail(d, -EBADMSG, err, errlen, "bytes after the trailer");
    if (rc < 0)
        return dec_short(d, rc, err, errlen, "past the trailer");
    d->state = DEC_DONE;
    return 0;
}

static int key_cmp(const uint8_t *a, size_t an, const uint8_t *b, size_t bn)
{
    int c = memcmp(a, b, an < bn ? an : bn);
    return c ? c : (an > bn) - (an < bn);
}

/* A version 3 lease record (key length 0), its head in the buffer. */
static int dec_lease(struct kv_snap_dec *d, struct kv_snap_rec *r, size_t vlen, char *err,
                     size_t errlen)
{
    unsigned long long n = (unsigned long long)d->count;
    if (vlen != 0)
        return dec_fail(d, -EBADMSG, err, errlen, "record %llu: a lease with %zu value bytes", n,
                        vlen);
    int rc = dec_fill(d, KV_SNAP_REC_HEAD + KV_SNAP_REC_FIXED);
    if (rc)
        return dec_short(d, rc, err, errlen, "a lease");
    const uint8_t *p = d->buf + d->pos + KV_SNAP_REC_HEAD;
    int64_t id = (int64_t)kv_le_get64(p), ttl = (int64_t)kv_le_get64(p + 8);
    int64_t rem = (int64_t)kv_le_get64(p + 16);
    if (id == 0 || ttl < 1 || ttl > KV_SNAP_MAX_LEASE_TTL || rem < 0 ||
        rem > KV_SNAP_MAX_LEASE_TTL || kv_le_get64(p + 24) != 0)
        return dec_fail(d, -EBADMSG, err, errlen,
                        "record %llu: lease %lld with TTL %lld, remaining %lld", n, (long long)id,
                        (long long)ttl, (long long)rem);
    if (d->in_leases && (uint64_t)id <= d->prev_lease)
        return dec_fail(d, -EBADMSG, err, errlen, "record %llu: leases out of order", n);
    d->in_leases = true;
    d->prev_lease = (uint64_t)id;
    *r = (struct kv_snap_rec){NULL, 0, p, KV_SNAP_REC_FIXED, true, id, ttl, rem, false};
    dec_consume(d, KV_SNAP_REC_HEAD + KV_SNAP_REC_FIXED);
    d->count++;
    return 1;
}

/* A version 4 auth record (key length 0, value length > 0), its head in the buffer. The
 * bytes are the store's to check (kv_auth_decode). */
static int dec_auth(struct kv_snap_dec *d, struct kv_snap_rec *r, size_t vlen, char *err,
                    size_t errlen)
{
    if (vlen > KV_SNAP_MAX_AUTH)
        return dec_fail(d, -EBADMSG, err, errlen, "record %llu: auth state of %zu bytes",
                        (unsigned long long)d->count, vlen);
    int rc = dec_fill(d, KV_SNAP_REC_HEAD + vlen);
    if (rc)
        return dec_short(d, rc, err, errlen, "the auth state");
    *r = (struct kv_snap_rec){.rec = d->buf + d->pos + KV_SNAP_REC_HEAD, .rlen = vlen,
                              .is_auth = true};
    d->had_auth = true;
    dec_consume(d, KV_SNAP_REC_HEAD + vlen);
    d->count++;
    return 1;
}

int kv_snap_dec_next(struct kv_snap_dec *d, struct kv_snap_rec *r, char *err, size_t errlen)
{
    if (d->state == DEC_DONE)
        return 0;
    if (d->state != DEC_RECORDS)
        return dec_fail(d, -EINVAL, err, errlen, "records requested out of turn");
    int rc = dec_fill(d, KV_SNAP_REC_HEAD);
    if (rc)
        return dec_short(d, rc, err, errlen, "a record");
    const uint8_t *p = d->buf + d->pos;
    /* "CRKV" as a key length is far above 511, so the trailer cannot pass for a record. */
    if (memcmp(p, KV_SNAP_END_MAGIC, 8) == 0)
        return dec_trailer(d, err, errlen);
    unsigned long long n = (unsigned long long)d->count;
    size_t klen = get32(p), vlen = get32(p + 4);
    if (d->had_auth)
        return dec_fail(d, -EBADMSG, err, errlen, "record %llu: a record after the auth state", n);
    if (klen == 0 && vlen > 0 && d->version >= 4)
        return dec_auth(d, r, vlen, err, errlen);
    if (klen == 0 && d->version >= 3)
        return dec_lease(d, r, vlen, err, errlen);
    if (d->in_leases)
        return dec_fail(d, -EBADMSG, err, errlen, "record %llu: a key after the leases", n);
    if (klen == 0 || klen > KV_SNAP_MAX_KEY)
        return dec_fail(d, -EBADMSG, err, errlen, "record %llu: key length %zu", n, klen);
    size_t len = KV_SNAP_REC_HEAD + klen + KV_SNAP_REC_FIXED + vlen;
    if ((rc = dec_fill(d, len)))
        return dec_short(d, rc, err, errlen, "a record");
    p = d->buf + d->pos;
    const uint8_t *key = p + KV_SNAP_REC_HEAD, *rec = key + klen;
    if (d->version == 1 && n > 0 && key_cmp(d->prev, d->prev_len, key, klen) >= 0)
        return dec_fail(d, -EBADMSG, err, errlen, "record %llu: keys out of order", n);
    int64_t create = (int64_t)kv_le_get64(rec), mod = (int64_t)kv_le_get64(rec + 8);
    int64_t version = (int64_t)kv_le_get64(rec + 16), lease = (int64_t)kv_le_get64(rec + 24);
    if (d->version >= 2 && n > 0 && mod < d->prev_mod)
        return dec_fail(d, -EBADMSG, err, errlen, "record %llu: revisions out of order", n);
    if (d->version >= 2 && version == 0) { /* a tombstone */
        if (mod < 1 || mod > d->rev || create != 0 || lease != 0 || vlen != 0)
            return dec_fail(d, -EBADMSG, err, errlen,
                            "record %llu: a deletion at revision %lld of 1..%lld with create "
                            "%lld, lease %lld, %zu value bytes", n, (long long)mod,
                            (long long)d->rev, (long long)create, (long long)lease, vlen);
    } else if (create < 1 || mod < create || mod > d->rev)
        return dec_fail(d, -EBADMSG, err, errlen,
                        "record %llu: revisions %lld..%lld outside 1..%lld", n,
                        (long long)create, (long long)mod, (long long)d->rev);
    else if (version < 1 || version > mod - create + 1)
        return dec_fail(d, -EBADMSG, err, errlen, "record %llu: version %lld", n,
                        (long long)version);
    if (lease != 0 && d->version < 3)
        return dec_fail(d, -EBADMSG, err, errlen, "record %llu: lease %lld", n,
                        (long long)lease);
    memcpy(d->prev, key, klen);
    d->prev_len = klen;
    d->prev_mod = mod;
    *r = (struct kv_snap_rec){key, klen, rec, KV_SNAP_REC_FIXED + vlen, false, 0, 0, 0, false};
    dec_consume(d, len);
    d->count++;
    return 1;
}
