/* cluster.c: --initial-cluster parsing and derived member/cluster ids (see cluster.h). */
#include "services/cluster.h"

#include <ctype.h>
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
    char target[CLUSTER_HOST_MAX + 16];
    cluster_url_target(u, target, sizeof target);
    snprintf(buf, len, "%s://%s", u->tls ? "https" : "http", target);
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

const struct cluster_member *cluster_find_cert(const struct cluster *c, const char *cn,
                                               const char (*sans)[256], int nsans)
{
    const struct cluster_member *m = cn && *cn ? cluster_find_name(c, cn) : NULL;
    for (int i = 0; !m && i < nsans; i++)
        m = cluster_find_name(c, sans[i]);
    return m;
}

