/* cluster.c: --initial-cluster parsing, derived member/cluster ids, and the member table as data:
 * its checks, binary encoding and edits (see cluster.h). */
#include "services/cluster.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static uint64_t first8(const unsigned char *d);

/* SHA-256 of parts[0..n) (each with its length), folded to a nonzero id. */
static uint64_t digest_id(const void *const *parts, const size_t *lens, size_t n)
{
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int dl = 0;
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    int ok = c && EVP_DigestInit_ex(c, EVP_sha256(), NULL);
    for (size_t i = 0; ok && i < n; i++)
        ok = EVP_DigestUpdate(c, parts[i], lens[i]);
    ok = ok && EVP_DigestFinal_ex(c, d, &dl) && dl >= 8;
    EVP_MD_CTX_free(c);
    if (!ok)
        return 0;
    return first8(d);
}

static uint64_t first8(const unsigned char *d)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | d[i];
    return v ? v : 1; /* 0 means "none" everywhere in raft/ (and "failed" in digest_id) */
}

uint64_t cluster_member_id(const char *name, const char *token)
{
    const void *parts[] = {"craft-member", name, token};
    size_t lens[] = {13, strlen(name) + 1, strlen(token)};
    return digest_id(parts, lens, 3);
}

uint64_t cluster_member_id_url(const char *peer_url, const char *token)
{
    struct cluster_url u;
    if (!peer_url || cluster_parse_url(peer_url, &u, NULL, 0) != 0)
        return 0;
    char canon[CLUSTER_URL_MAX];
    cluster_url_string(&u, canon, sizeof canon);
    if (!token)
        token = "";
    const void *parts[] = {"craft-member-url", canon, token};
    size_t lens[] = {17, strlen(canon) + 1, strlen(token)};
    return digest_id(parts, lens, 3);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static bool valid_name(const char *s)
{
    if (!*s || strlen(s) >= CLUSTER_NAME_MAX)
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '-' && *s != '_' && *s != '.')
            return false;
    return true;
}

/* Two URLs name the same listener: same port, same host ignoring case; the scheme is not
 * compared, since one address cannot serve two members whatever the scheme. */
static bool same_address(const struct cluster_url *a, const struct cluster_url *b)
{
    return a->port == b->port && strcasecmp(a->host, b->host) == 0;
}

int cluster_parse_url(const char *url, struct cluster_url *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    const char *p;
    if (strncmp(url, "https://", 8) == 0) {
        out->tls = true;
        p = url + 8;
    } else if (strncmp(url, "http://", 7) == 0) {
        p = url + 7;
    } else {
        return fail(err, errlen, "URL '%s' must start with https:// or http://", url);
    }
    const char *host = p, *host_end, *colon;
    if (*p == '[') { /* [IPv6]:port */
        host = p + 1;
        host_end = strchr(host, ']');
        if (!host_end || host_end[1] != ':')
            return fail(err, errlen, "URL '%s': bad IPv6 address (want [addr]:port)", url);
        colon = host_end + 1;
        /* Hex digits, ':' and '.' (an embedded IPv4), at least one ':': what is between the
         * brackets must read back the same from cluster_url_string(), which brackets a host
         * exactly when it contains ':'. */
        bool has_colon = false;
        for (const char *q = host; q < host_end; q++) {
            if (!isxdigit((unsigned char)*q) && *q != ':' && *q != '.')
                return fail(err, errlen, "URL '%s': bad IPv6 address", url);
            has_colon |= *q == ':';
        }
        if (!has_colon)
            return fail(err, errlen, "URL '%s': bad IPv6 address", url);
    } else {
        colon = strrchr(p, ':');
        if (!colon)
            return fail(err, errlen, "URL '%s' has no port", url);
        host_end = colon;
        for (const char *q = host; q < host_end; q++)
            if (!isalnum((unsigned char)*q) && *q != '-' && *q != '.')
                return fail(err, errlen, "URL '%s': bad host", url);
    }
    size_t hl = (size_t)(host_end - host);
    if (hl == 0 || hl >= CLUSTER_HOST_MAX)
        return fail(err, errlen, "URL '%s': empty or too long host", url);
    memcpy(out->host, host, hl);
    char *end;
    long port = strtol(colon + 1, &end, 10);
    /* Digits only: strtol alone would also take " 80" and "+80". */
    if (!isdigit((unsigned char)colon[1]) || (*end && strcmp(end, "/") != 0) || port < 1 ||
        port > 65535)
        return fail(err, errlen, "URL '%s': port must be 1..65535", url);
    out->port = (int)port;
    return 0;
}

void cluster_url_target(const struct cluster_url *u, char *buf, size_t len)
{
    if (strchr(u->host, ':'))
        snprintf(buf, len, "[%s]:%d", u->host, u->port);
    else
        snprintf(buf, len, "%s:%d", u->host, u->port);
}

void cluster_url_string(const struct cluster_url *u, char *buf, size_t len)
{
    /* Scheme, then the target written in place (a bounded buffer either way). */
    int k = snprintf(buf, len, "%s://", u->tls ? "https" : "http");
    if (k > 0 && (size_t)k < len)
        cluster_url_target(u, buf + k, len - (size_t)k);
}

int cluster_parse(const char *spec, const char *token, struct cluster *out, char *err,
                  size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (!spec || !*spec)
        return fail(err, errlen, "--initial-cluster is empty");
    char *copy = strdup(spec), *save = NULL;
    if (!copy)
        return fail(err, errlen, "out of memory");
    int rc = 0;
    for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(item, '=');
        if (!eq) {
            rc = fail(err, errlen, "--initial-cluster entry '%s' is not name=url", item);
            break;
        }
        *eq = '\0';
        if (!valid_name(item)) {
            rc = fail(err, errlen, "--initial-cluster: bad member name '%s' (letters, digits, - _ .)",
                      item);
            break;
        }
        if (cluster_find_name(out, item)) {
            rc = fail(err, errlen, "--initial-cluster names member '%s' twice", item);
            break;
        }
        if (out->n == CLUSTER_MAX_MEMBERS) {
            rc = fail(err, errlen, "--initial-cluster has more than %d members", CLUSTER_MAX_MEMBERS);
            break;
        }
        struct cluster_member *m = &out->members[out->n];
        char uerr[256];
        if (cluster_parse_url(eq + 1, &m->peer_url, uerr, sizeof uerr) != 0) {
            rc = fail(err, errlen, "--initial-cluster member '%s': %s", item, uerr);
            break;
        }
        snprintf(m->name, sizeof m->name, "%s", item);
        m->id = cluster_member_id(m->name, token);
        if (!m->id) {
            rc = fail(err, errlen, "cannot hash a member id (OpenSSL)");
            break;
        }
        for (size_t i = 0; i < out->n; i++) {
            if (out->members[i].id == m->id) {
                rc = fail(err, errlen, "member ids of '%s' and '%s' collide", out->members[i].name,
                          m->name);
                break;
            }
            if (same_address(&out->members[i].peer_url, &m->peer_url)) { /* as etcd refuses */
                rc = fail(err, errlen, "--initial-cluster members '%s' and '%s' have the same "
                          "peer URL", out->members[i].name, m->name);
                break;
            }
        }
        if (rc)
            break;
        out->n++;
    }
    free(copy);
    if (rc)
        return rc;
    if (out->n == 0)
        return fail(err, errlen, "--initial-cluster names no member");

    uint64_t ids[CLUSTER_MAX_MEMBERS];
    for (size_t i = 0; i < out->n; i++)
        ids[i] = out->members[i].id;
    qsort(ids, out->n, sizeof ids[0], cmp_u64);
    unsigned char b[CLUSTER_MAX_MEMBERS * 8];
    for (size_t i = 0; i < out->n; i++)
        for (int k = 0; k < 8; k++)
            b[i * 8 + k] = (unsigned char)(ids[i] >> (56 - 8 * k));
    const void *parts[] = {"craft-cluster", b, token};
    size_t lens[] = {14, out->n * 8, strlen(token)};
    out->id = digest_id(parts, lens, 3);
    return out->id ? 0 : fail(err, errlen, "cannot hash the cluster id (OpenSSL)");
}

const struct cluster_member *cluster_find_name(const struct cluster *c, const char *name)
{
    if (!name || !*name)
        return NULL; /* unnamed members have no name to find them by */
    for (size_t i = 0; i < c->n; i++)
        if (strcmp(c->members[i].name, name) == 0)
            return &c->members[i];
    return NULL;
}

const struct cluster_member *cluster_find_id(const struct cluster *c, uint64_t id)
{
    for (size_t i = 0; i < c->n; i++)
        if (c->members[i].id == id)
            return &c->members[i];
    return NULL;
}

const struct cluster_member *cluster_find_url(const struct cluster *c, const struct cluster_url *u)
{
    for (size_t i = 0; i < c->n; i++)
        if (same_address(&c->members[i].peer_url, u))
            return &c->members[i];
    return NULL;
}

const struct cluster_member *cluster_find_cert(const struct cluster *c, const char *cn,
                                               const char (*sans)[256], int nsans)
{
    const struct cluster_member *m = cn && *cn ? cluster_find_name(c, cn) : NULL;
    for (int i = 0; !m && i < nsans; i++)
        m = cluster_find_name(c, sans[i]);
    return m;
}

/* ---- The member table as data: checks, binary encoding, edits ---- */

/* Like fail(), with a code. */
static int failc(int code, char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* u is a URL cluster_parse_url() could have produced: host a NUL-terminated string inside its
 * buffer, and its canonical string reads back as the same URL. */
static bool url_consistent(const struct cluster_url *u)
{
    if (!memchr(u->host, '\0', sizeof u->host) || u->port < 1 || u->port > 65535)
        return false;
    char s[CLUSTER_URL_MAX];
    struct cluster_url back;
    cluster_url_string(u, s, sizeof s);
    return cluster_parse_url(s, &back, NULL, 0) == 0 && back.tls == u->tls &&
           back.port == u->port && strcmp(back.host, u->host) == 0;
}

int cluster_check(const struct cluster *c, char *err, size_t errlen)
{
    if (c->n < 1 || c->n > CLUSTER_MAX_MEMBERS)
        return failc(CLUSTER_EINVAL, err, errlen, "member count %zu outside 1..%d", c->n,
                     CLUSTER_MAX_MEMBERS);
    if (c->id == 0)
        return failc(CLUSTER_EINVAL, err, errlen, "cluster id is 0");
    for (size_t i = 0; i < c->n; i++) {
        const struct cluster_member *m = &c->members[i];
        if (m->id == 0)
            return failc(CLUSTER_EINVAL, err, errlen, "member %zu: id is 0", i);
        if (!memchr(m->name, '\0', sizeof m->name) || (m->name[0] && !valid_name(m->name)))
            return failc(CLUSTER_EINVAL, err, errlen,
                         "member %zu: bad name (\"\" or 1..%d of letters, digits, - _ .)", i,
                         CLUSTER_NAME_MAX - 1);
        if (!url_consistent(&m->peer_url))
            return failc(CLUSTER_EINVAL, err, errlen, "member %zu ('%s'): bad peer URL", i,
                         m->name);
        for (size_t j = 0; j < i; j++) {
            const struct cluster_member *o = &c->members[j];
            if (o->id == m->id)
                return failc(CLUSTER_EINVAL, err, errlen,
                             "members %zu ('%s') and %zu ('%s') have the same id %016" PRIx64, j,
                             o->name, i, m->name, m->id);
            if (m->name[0] && strcmp(o->name, m->name) == 0)
                return failc(CLUSTER_EINVAL, err, errlen, "members %zu and %zu are both named '%s'",
                             j, i, m->name);
            if (same_address(&o->peer_url, &m->peer_url))
                return failc(CLUSTER_EINVAL, err, errlen,
                             "members %zu ('%s') and %zu ('%s') have the same peer address", j,
                             o->name, i, m->name);
        }
    }
    return 0;
}

/* Encoding, version 2 (all integers little-endian):
 *   u8 version (2) | u64 cluster id | u8 member count (1..CLUSTER_MAX_MEMBERS)
 *   then per member: u64 id | u8 name length (0..CLUSTER_NAME_MAX-1; 0 = unnamed) | name
 *                    | u16 URL length (1..CLUSTER_URL_MAX-1) | canonical peer URL
 *                    | u8 flags (bit 0: promote; other bits must be 0)
 * and nothing after the last member. Version 1 (written before membership changes could add a
 * voter as a learner first) is the same without the flags byte, and is still read. */
/* Version 2 adds a flags byte after each member's URL (bit 0: promote); 1 is still read. */
#define CLUSTER_FORMAT_VERSION 2
#define CLUSTER_FLAG_PROMOTE 1u

static uint8_t *put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        *p++ = (uint8_t)(v >> (8 * i));
    return p;
}

int cluster_encode(const struct cluster *c, uint8_t **out, size_t *len)
{
    if (cluster_check(c, NULL, 0) != 0)
        return CLUSTER_EINVAL;
    char urls[CLUSTER_MAX_MEMBERS][CLUSTER_URL_MAX];
    size_t size = 1 + 8 + 1;
    for (size_t i = 0; i < c->n; i++) {
        cluster_url_string(&c->members[i].peer_url, urls[i], sizeof urls[i]);
        size += 8 + 1 + strlen(c->members[i].name) + 2 + strlen(urls[i]) + 1;
    }
    uint8_t *buf = malloc(size), *p = buf;
    if (!buf)
        return CLUSTER_ENOMEM;
    *p++ = CLUSTER_FORMAT_VERSION;
    p = put_u64(p, c->id);
    *p++ = (uint8_t)c->n;
    for (size_t i = 0; i < c->n; i++) {
        size_t nl = strlen(c->members[i].name), ul = strlen(urls[i]);
        p = put_u64(p, c->members[i].id);
        *p++ = (uint8_t)nl;
        memcpy(p, c->members[i].name, nl);
        p += nl;
        *p++ = (uint8_t)ul;
        *p++ = (uint8_t)(ul >> 8);
        memcpy(p, urls[i], ul);
        p += ul;
        *p++ = c->members[i].promote ? CLUSTER_FLAG_PROMOTE : 0;
    }
    *out = buf;
    *len = size;
    return 0;
}

struct reader {
    const uint8_t *p;
    size_t len, pos;
};

static bool get(struct reader *r, void *dst, size_t n)
{
    if (r->len - r->pos < n)
        return false;
    if (n)
        memcpy(dst, r->p + r->pos, n);
    r->pos += n;
    return true;
}

static bool get_u64(struct reader *r, uint64_t *v)
{
    uint8_t b[8];
    if (!get(r, b, 8))
        return false;
    *v = 0;
    for (int i = 7; i >= 0; i--)
        *v = *v << 8 | b[i];
    return true;
}

/* A decoding error: "cluster table: ..." in printable ASCII (the bytes came from outside). */
static int bad(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        int k = snprintf(err, errlen, "cluster table: ");
        if (k >= 0 && (size_t)k < errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(err + k, errlen - (size_t)k, fmt, ap);
            va_end(ap);
        }
        for (char *q = err; *q; q++)
            if (*q < 0x20 || *q > 0x7e)
                *q = '?';
    }
    return CLUSTER_EBADMSG;
}

int cluster_decode(const uint8_t *p, size_t len, struct cluster *out, char *err, size_t errlen)
{
    static const uint8_t none[1];
    struct reader r = {p ? p : none, p ? len : 0, 0};
    struct cluster *c = calloc(1, sizeof *c); /* out is written only on success */
    if (!c)
        return failc(CLUSTER_ENOMEM, err, errlen, "out of memory");
    int rc = 0;
    uint8_t version, count;
    if (!get(&r, &version, 1)) {
        rc = bad(err, errlen, "empty");
        goto out;
    }
    if (version != 1 && version != CLUSTER_FORMAT_VERSION) {
        rc = bad(err, errlen, "format version %u (this build reads 1 and %d)", version,
                 CLUSTER_FORMAT_VERSION);
        goto out;
    }
    if (!get_u64(&r, &c->id) || !get(&r, &count, 1)) {
        rc = bad(err, errlen, "truncated in the header");
        goto out;
    }
    if (count < 1 || count > CLUSTER_MAX_MEMBERS) {
        rc = bad(err, errlen, "member count %u outside 1..%d", count, CLUSTER_MAX_MEMBERS);
        goto out;
    }
    for (size_t i = 0; i < count; i++) {
        struct cluster_member *m = &c->members[i];
        uint8_t nl, ul2[2];
        char url[CLUSTER_URL_MAX], canon[CLUSTER_URL_MAX], uerr[128];
        if (!get_u64(&r, &m->id) || !get(&r, &nl, 1)) {
            rc = bad(err, errlen, "truncated in member %zu", i);
            goto out;
        }
        if (nl > CLUSTER_NAME_MAX - 1) {
            rc = bad(err, errlen, "member %zu: name length %u outside 0..%d", i, nl,
                     CLUSTER_NAME_MAX - 1);
            goto out;
        }
        if (!get(&r, m->name, nl) || !get(&r, ul2, 2)) {
            rc = bad(err, errlen, "truncated in member %zu", i);
            goto out;
        }
        size_t ul = (size_t)ul2[0] | (size_t)ul2[1] << 8;
        if (strlen(m->name) != nl || (nl && !valid_name(m->name))) {
            rc = bad(err, errlen, "member %zu: bad name '%s' (letters, digits, - _ .)", i, m->name);
            goto out;
        }
        if (ul < 1 || ul > CLUSTER_URL_MAX - 1) {
            rc = bad(err, errlen, "member %zu ('%s'): peer URL length %zu outside 1..%d", i,
                     m->name, ul, CLUSTER_URL_MAX - 1);
            goto out;
        }
        if (!get(&r, url, ul)) {
            rc = bad(err, errlen, "truncated in member %zu ('%s')", i, m->name);
            goto out;
        }
        url[ul] = '\0';
        if (strlen(url) != ul) {
            rc = bad(err, errlen, "member %zu ('%s'): peer URL contains a NUL byte", i, m->name);
            goto out;
        }
        if (cluster_parse_url(url, &m->peer_url, uerr, sizeof uerr) != 0) {
            rc = bad(err, errlen, "member %zu ('%s'): %s", i, m->name, uerr);
            goto out;
        }
        cluster_url_string(&m->peer_url, canon, sizeof canon);
        if (strcmp(canon, url) != 0) {
            rc = bad(err, errlen, "member %zu ('%s'): peer URL '%s' is not canonical ('%s')", i,
                     m->name, url, canon);
            goto out;
        }
        uint8_t flags = 0;
        if (version >= 2 && !get(&r, &flags, 1)) {
            rc = bad(err, errlen, "truncated in member %zu ('%s')", i, m->name);
            goto out;
        }
        if (flags & ~CLUSTER_FLAG_PROMOTE) {
            rc = bad(err, errlen, "member %zu ('%s'): unknown flags 0x%02x", i, m->name, flags);
            goto out;
        }
        m->promote = flags & CLUSTER_FLAG_PROMOTE;
        c->n++;
    }
    if (r.pos != r.len) {
        rc = bad(err, errlen, "%zu bytes after the last member", r.len - r.pos);
        goto out;
    }
    char cerr[256];
    if (cluster_check(c, cerr, sizeof cerr) != 0) {
        rc = bad(err, errlen, "%s", cerr);
        goto out;
    }
    memcpy(out, c, sizeof *c);
out:
    free(c);
    return rc;
}

const char *cluster_strerror(int code)
{
    switch (code) {
    case 0:
        return "ok";
    case CLUSTER_ENOTFOUND:
        return "etcdserver: member not found";
    case CLUSTER_EEXIST:
        return "etcdserver: member ID already exist";
    case CLUSTER_EURLEXISTS:
        return "etcdserver: Peer URLs already exists";
    case CLUSTER_EBADURL:
        return "etcdserver: given member URLs are invalid";
    case CLUSTER_EBADNAME:
        return "craft: bad member name";
    case CLUSTER_EFULL:
        return "craft: too many members";
    case CLUSTER_ELAST:
        return "craft: cannot remove the only member";
    case CLUSTER_EBADMSG:
        return "craft: malformed member table";
    case CLUSTER_ENOMEM:
        return "craft: out of memory";
    default:
        return "craft: invalid member table";
    }
}

/* Fails with code and its etcd string, word for word: etcd's clients match on the text. */
static int fail_etcd(int code, char *err, size_t errlen)
{
    return failc(code, err, errlen, "%s", cluster_strerror(code));
}

/* Parses a peer URL given to an edit; refuses one whose canonical form would not read back
 * (the table must stay encodable). */
static int edit_url(const char *url, struct cluster_url *u, char *err, size_t errlen)
{
    if (!url || cluster_parse_url(url, u, NULL, 0) != 0 || !url_consistent(u))
        return fail_etcd(CLUSTER_EBADURL, err, errlen);
    return 0;
}

/* The index of the member other than `except` listening on u's address, or -1. */
static long address_user(const struct cluster *c, const struct cluster_url *u, uint64_t except)
{
    for (size_t i = 0; i < c->n; i++)
        if (c->members[i].id != except && same_address(&c->members[i].peer_url, u))
            return (long)i;
    return -1;
}

int cluster_add(struct cluster *c, const char *name, const char *peer_url, const char *token,
                char *err, size_t errlen)
{
    if (!name || !valid_name(name))
        return failc(CLUSTER_EBADNAME, err, errlen,
                     "craft: bad member name '%.*s' (1..%d of letters, digits, - _ .)",
                     CLUSTER_NAME_MAX, name ? name : "", CLUSTER_NAME_MAX - 1);
    struct cluster_url u;
    int rc = edit_url(peer_url, &u, err, errlen);
    if (rc)
        return rc;
    uint64_t id = cluster_member_id(name, token ? token : "");
    if (!id)
        return failc(CLUSTER_ENOMEM, err, errlen, "craft: cannot hash a member id (OpenSSL)");
    if (cluster_find_id(c, id))
        return fail_etcd(CLUSTER_EEXIST, err, errlen);
    if (cluster_find_name(c, name))
        return failc(CLUSTER_EEXIST, err, errlen, "craft: member name '%s' already in use", name);
    if (address_user(c, &u, 0) >= 0)
        return fail_etcd(CLUSTER_EURLEXISTS, err, errlen);
    if (c->n >= CLUSTER_MAX_MEMBERS)
        return failc(CLUSTER_EFULL, err, errlen, "craft: too many members (at most %d)",
                     CLUSTER_MAX_MEMBERS);
    struct cluster_member *m = &c->members[c->n];
    memset(m, 0, sizeof *m);
    m->id = id;
    snprintf(m->name, sizeof m->name, "%s", name);
    m->peer_url = u;
    c->n++;
    return 0;
}

int cluster_add_unnamed(struct cluster *c, const char *peer_url, const char *token, char *err,
                        size_t errlen)
{
    struct cluster_url u;
    int rc = edit_url(peer_url, &u, err, errlen);
    if (rc)
        return rc;
    uint64_t id = cluster_member_id_url(peer_url, token ? token : "");
    if (!id)
        return failc(CLUSTER_ENOMEM, err, errlen, "craft: cannot hash a member id (OpenSSL)");
    if (cluster_find_id(c, id))
        return fail_etcd(CLUSTER_EEXIST, err, errlen);
    if (address_user(c, &u, 0) >= 0)
        return fail_etcd(CLUSTER_EURLEXISTS, err, errlen);
    if (c->n >= CLUSTER_MAX_MEMBERS)
        return failc(CLUSTER_EFULL, err, errlen, "craft: too many members (at most %d)",
                     CLUSTER_MAX_MEMBERS);
    struct cluster_member *m = &c->members[c->n];
    memset(m, 0, sizeof *m);
    m->id = id;
    m->peer_url = u;
    c->n++;
    return 0;
}

int cluster_set_name(struct cluster *c, uint64_t id, const char *name, char *err, size_t errlen)
{
    const struct cluster_member *m = cluster_find_id(c, id);
    if (!m)
        return fail_etcd(CLUSTER_ENOTFOUND, err, errlen);
    if (!name || !valid_name(name))
        return failc(CLUSTER_EBADNAME, err, errlen,
                     "craft: bad member name '%.*s' (1..%d of letters, digits, - _ .)",
                     CLUSTER_NAME_MAX, name ? name : "", CLUSTER_NAME_MAX - 1);
    if (strcmp(m->name, name) == 0)
        return 0;
    if (m->name[0])
        return failc(CLUSTER_EEXIST, err, errlen, "craft: member %016" PRIx64 " is already named '%s'",
                     id, m->name);
    if (cluster_find_name(c, name))
        return failc(CLUSTER_EEXIST, err, errlen, "craft: member name '%s' already in use", name);
    snprintf(c->members[m - c->members].name, sizeof m->name, "%s", name);
    return 0;
}

int cluster_remove(struct cluster *c, uint64_t id, char *err, size_t errlen)
{
    const struct cluster_member *m = cluster_find_id(c, id);
    if (!m)
        return fail_etcd(CLUSTER_ENOTFOUND, err, errlen);
    if (c->n == 1)
        return fail_etcd(CLUSTER_ELAST, err, errlen);
    size_t i = (size_t)(m - c->members);
    memmove(&c->members[i], &c->members[i + 1], (c->n - i - 1) * sizeof c->members[0]);
    c->n--;
    memset(&c->members[c->n], 0, sizeof c->members[0]);
    return 0;
}

int cluster_update_peer_url(struct cluster *c, uint64_t id, const char *peer_url, char *err,
                            size_t errlen)
{
    struct cluster_url u;
    int rc = edit_url(peer_url, &u, err, errlen);
    if (rc)
        return rc;
    const struct cluster_member *m = cluster_find_id(c, id);
    if (!m)
        return fail_etcd(CLUSTER_ENOTFOUND, err, errlen);
    if (address_user(c, &u, id) >= 0)
        return fail_etcd(CLUSTER_EURLEXISTS, err, errlen);
    c->members[m - c->members].peer_url = u;
    return 0;
}
