/* Reloadable TLS material (rpc.h, struct rpc_tls.reload_sec; docs/rpc.md "Certificates in
 * operation").
 *
 * gRPC 1.51's file-watcher certificate provider re-reads files every interval, but it takes
 * whatever bytes it finds: it checks neither PEM nor that the key matches the certificate (only
 * that the files' mtimes did not change while it read them), and a pair that OpenSSL then
 * refuses leaves the connector without a usable handshaker ("Update handshaker factory
 * failed"). So the provider never sees the operator's files. A source polls them itself,
 * checks them as create does (rpc_pem_load), and only a set that passes is copied into a
 * private staging directory that the provider watches:
 *   <stage_dir>/rpc-tls-XXXXXX/ca.pem   the CA bundle
 *   <stage_dir>/rpc-tls-XXXXXX/id.pem   private key and certificate chain in one file, so a key
 *                                       and a certificate always change together
 * each written to a temporary name and renamed, with an mtime one second past the previous
 * one, so the provider's before/after mtime check catches a read that straddles a rename. A set
 * that fails the checks is not staged: the old one stays in use and the reason is logged once
 * (and again when it changes).
 *
 * One source per distinct configuration, shared (reference-counted) by every server and
 * channel made with it: craftd's peer channels share one poller and one provider.
 *
 * Name pinning (allowed_cn / allowed_hostname) needs these credentials too, for their
 * verifier hook: with reload_sec = 0 a pinned source has a static provider and no poller. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/string_util.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "log/log.h"
#include "rpc/rpc_internal.h"

/* The revocation lists in force for a source (crl_file), shared with the verifiers gRPC owns
 * (which may outlive the source): reference-counted, swapped whole under mu at a reload. */
struct crl_box {
    atomic_int refs;
    pthread_mutex_t mu;
    STACK_OF(X509_CRL) *crls;
};

static struct crl_box *crl_box_new(void)
{
    struct crl_box *b = calloc(1, sizeof *b);
    if (b) {
        atomic_init(&b->refs, 1);
        pthread_mutex_init(&b->mu, NULL);
    }
    return b;
}

static void crl_box_unref(struct crl_box *b)
{
    if (!b || atomic_fetch_sub(&b->refs, 1) != 1)
        return;
    sk_X509_CRL_pop_free(b->crls, X509_CRL_free);
    pthread_mutex_destroy(&b->mu);
    free(b);
}

#define CRL_MAX_BYTES (16u << 20)

/* Reads crl_file: every PEM CRL in it must parse (a block cut short is an error, not skipped)
 * and be signed by a CA of ca_pem with the CRL's issuer name. *text gets the file (to notice
 * changes), *out the CRLs. 0, or RPC_ETLS with err filled. */
static int crl_load(const char *path, const char *ca_pem, STACK_OF(X509_CRL) **out, char **text,
                    char *err, size_t errlen)
{
    *out = NULL;
    *text = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        rpc_errf(err, errlen, "crl_file %s: %s", path, strerror(errno));
        return RPC_ETLS;
    }
    char *buf = malloc(CRL_MAX_BYTES + 1);
    size_t n = buf ? fread(buf, 1, CRL_MAX_BYTES + 1, f) : 0;
    bool bad = !buf || ferror(f);
    fclose(f);
    if (bad || n > CRL_MAX_BYTES) {
        rpc_errf(err, errlen, "crl_file %s: %s", path,
                 bad ? "read error" : "larger than 16 MiB");
        free(buf);
        return RPC_ETLS;
    }
    buf[n] = '\0';
    STACK_OF(X509_CRL) *crls = sk_X509_CRL_new_null();
    STACK_OF(X509) *cas = sk_X509_new_null();
    int rc = RPC_ETLS, begins = 0;
    for (const char *q = buf; (q = strstr(q, "-----BEGIN X509 CRL-----")) != NULL; q++)
        begins++;
    BIO *bio = BIO_new_mem_buf(buf, (int)n);
    X509_CRL *c;
    while (bio && crls && (c = PEM_read_bio_X509_CRL(bio, NULL, NULL, NULL)) != NULL)
        sk_X509_CRL_push(crls, c);
    BIO_free(bio);
    bio = BIO_new_mem_buf(ca_pem, -1);
    X509 *x;
    while (bio && cas && (x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL)
        sk_X509_push(cas, x);
    BIO_free(bio);
    int got = crls ? sk_X509_CRL_num(crls) : 0;
    if (got == 0) {
        rpc_errf(err, errlen, "crl_file %s: no PEM CRL in it", path);
        goto out;
    }
    if (got < begins) {
        rpc_errf(err, errlen, "crl_file %s: %d of its %d CRLs are truncated or damaged", path,
                 begins - got, begins);
        goto out;
    }
    for (int i = 0; i < got; i++) {
        X509_CRL *crl = sk_X509_CRL_value(crls, i);
        bool ok = false;
        for (int k = 0; k < sk_X509_num(cas) && !ok; k++) {
            X509 *ca = sk_X509_value(cas, k);
            ok = X509_NAME_cmp(X509_get_subject_name(ca), X509_CRL_get_issuer(crl)) == 0 &&
                 X509_CRL_verify(crl, X509_get0_pubkey(ca)) == 1;
        }
        if (!ok) {
            char name[256];
            X509_NAME_oneline(X509_CRL_get_issuer(crl), name, sizeof name);
            rpc_errf(err, errlen, "crl_file %s: the CRL of %s is not signed by a CA of ca_file",
                     path, name);
            goto out;
        }
    }
    *out = crls;
    *text = buf;
    crls = NULL;
    buf = NULL;
    rc = 0;
out:
    sk_X509_CRL_pop_free(crls, X509_CRL_free);
    sk_X509_pop_free(cas, X509_free);
    free(buf);
    ERR_clear_error();
    return rc;
}

int rpc_tls_load_crls(const char *crl_file, const char *ca_file, X509_STORE *store, char *err,
                      size_t errlen)
{
    struct rpc_tls t = {.ca_file = ca_file};
    struct rpc_pem p;
    int rc = rpc_pem_load(&t, false, &p, err, errlen);
    if (rc != 0)
        return rc;
    STACK_OF(X509_CRL) *crls = NULL;
    char *text = NULL;
    rc = crl_load(crl_file, p.ca, &crls, &text, err, errlen);
    rpc_pem_free(&p);
    for (int i = 0; rc == 0 && store && i < sk_X509_CRL_num(crls); i++)
        if (X509_STORE_add_crl(store, sk_X509_CRL_value(crls, i)) != 1) { /* takes a ref */
            ERR_clear_error();
            rpc_errf(err, errlen, "crl_file %s: cannot add its CRLs (out of memory)", crl_file);
            rc = RPC_ETLS;
        }
    sk_X509_CRL_pop_free(crls, X509_CRL_free);
    free(text);
    return rc;
}

struct rpc_tls_src {
    struct rpc_tls_src *next; /* registry list */
    int refs;                 /* under reg_mu */
    char *ca_file, *cert_file, *key_file, *stage_dir, *allowed_cn, *allowed_host, *crl_file;
    struct crl_box *crl; /* with crl_file */
    char *cur_crl;       /* the CRL file's text in force (poller only) */
    unsigned reload_sec;
    bool has_cert;
    bool polling; /* the poller thread runs (reload_sec > 0) */
    char dir[PATH_MAX];
    char ca_path[PATH_MAX + 16], id_path[PATH_MAX + 16];
    grpc_tls_certificate_provider *prov;

    /* Only the poller thread touches these after create. */
    char *cur_ca, *cur_id; /* staged contents */
    time_t last_mtime;     /* mtime given to the last staged file */
    char last_err[512];    /* the reason last logged, "" when the files were usable */

    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* CLOCK_MONOTONIC */
    bool stop;
};

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static struct rpc_tls_src *reg_head;

static bool str_eq(const char *a, const char *b)
{
    return strcmp(a ? a : "", b ? b : "") == 0;
}

static char *dup_or_null(const char *s)
{
    return s && *s ? strdup(s) : NULL;
}

/* Writes data to dir/name through a temporary file and a rename, mode 0600, with an mtime past
 * the previous staged file's. 0 or -1 (errno). */
static int stage_write(struct rpc_tls_src *s, const char *path, const char *data)
{
    char tmp[PATH_MAX + 32];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    size_t len = strlen(data), off = 0;
    while (off < len) {
        ssize_t n = write(fd, data + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int e = errno;
            close(fd);
            unlink(tmp);
            errno = e;
            return -1;
        }
        off += (size_t)n;
    }
    time_t now = time(NULL);
    time_t t = now > s->last_mtime ? now : s->last_mtime + 1;
    struct timespec ts[2] = {{.tv_sec = t}, {.tv_sec = t}};
    if (futimens(fd, ts) != 0 || close(fd) != 0 || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        errno = e;
        return -1;
    }
    s->last_mtime = t;
    return 0;
}

/* Key first, then the chain: the provider reads the same file as key and as certificate. */
static char *id_text(const struct rpc_pem *p)
{
    size_t lk = strlen(p->key), lc = strlen(p->cert);
    char *t = malloc(lk + lc + 2);
    if (!t)
        return NULL;
    memcpy(t, p->key, lk);
    t[lk] = '\n';
    memcpy(t + lk + 1, p->cert, lc + 1);
    return t;
}

static void free_secret(char *t)
{
    if (t) {
        memset(t, 0, strlen(t));
        free(t);
    }
}

static struct rpc_tls tls_of(const struct rpc_tls_src *s)
{
    return (struct rpc_tls){.ca_file = s->ca_file, .cert_file = s->cert_file,
                            .key_file = s->key_file};
}

/* Stages whatever changed in a set that passed the checks. 0, or -1 with err filled. */
static int stage(struct rpc_tls_src *s, const struct rpc_pem *p, bool *ca_changed,
                 bool *id_changed, char *err, size_t errlen)
{
    *ca_changed = *id_changed = false;
    if (!s->cur_ca || strcmp(s->cur_ca, p->ca) != 0) {
        char *ca = strdup(p->ca);
        if (!ca || stage_write(s, s->ca_path, ca) != 0) {
            rpc_errf(err, errlen, "cannot stage %s: %s", s->ca_path, strerror(errno));
            free(ca);
            return -1;
        }
        free(s->cur_ca);
        s->cur_ca = ca;
        *ca_changed = true;
    }
    if (!s->has_cert)
        return 0;
    char *id = id_text(p);
    if (!id) {
        rpc_errf(err, errlen, "out of memory");
        return -1;
    }
    if (s->cur_id && strcmp(s->cur_id, id) == 0) {
        free_secret(id);
        return 0;
    }
    if (stage_write(s, s->id_path, id) != 0) {
        rpc_errf(err, errlen, "cannot stage %s: %s", s->id_path, strerror(errno));
        free_secret(id);
        return -1;
    }
    free_secret(s->cur_id);
    s->cur_id = id;
    *id_changed = true;
    return 0;
}

static void poll_once(struct rpc_tls_src *s)
{
    struct rpc_tls t = tls_of(s);
    struct rpc_pem p;
    char err[512] = "";
    bool ca_changed = false, id_changed = false;
    int rc = rpc_pem_load(&t, s->has_cert, &p, err, sizeof err);
    STACK_OF(X509_CRL) *crls = NULL;
    char *crl_text = NULL;
    bool crl_changed = false;
    /* the set as a whole: a bad CRL keeps the old certificates too, and the other way round */
    if (rc == 0 && s->crl_file)
        rc = crl_load(s->crl_file, p.ca, &crls, &crl_text, err, sizeof err);
    if (rc == 0)
        rc = stage(s, &p, &ca_changed, &id_changed, err, sizeof err);
    if (rc == 0 && crl_text && strcmp(crl_text, s->cur_crl ? s->cur_crl : "") != 0) {
        pthread_mutex_lock(&s->crl->mu);
        STACK_OF(X509_CRL) *old = s->crl->crls;
        s->crl->crls = crls;
        pthread_mutex_unlock(&s->crl->mu);
        crls = old;
        free(s->cur_crl);
        s->cur_crl = crl_text;
        crl_text = NULL;
        crl_changed = true;
    }
    sk_X509_CRL_pop_free(crls, X509_CRL_free);
    free(crl_text);
    if (p.ca)
        rpc_pem_free(&p);
    const struct log_field *f = LOG_FIELDS(LOG_STR("ca_file", s->ca_file),
                                           LOG_STR("cert_file", s->cert_file ? s->cert_file : ""),
                                           LOG_STR("key_file", s->key_file ? s->key_file : ""));
    if (rc != 0) {
        if (strcmp(err, s->last_err) != 0)
            log_error(f, "TLS reload refused, the certificates in use are kept: %s", err);
        snprintf(s->last_err, sizeof s->last_err, "%s", err);
        return;
    }
    if (s->last_err[0] && !ca_changed && !id_changed && !crl_changed)
        log_info(f, "TLS files usable again; the certificates in use are unchanged");
    s->last_err[0] = '\0';
    if (crl_changed)
        log_info(LOG_FIELDS(LOG_STR("crl_file", s->crl_file)),
                 "TLS reload: new revocation list in force for new handshakes");
    if (ca_changed || id_changed)
        log_info(f, "TLS reload: new %s%s%s staged; new handshakes use it within %us",
                 ca_changed ? "CA bundle" : "", ca_changed && id_changed ? " and " : "",
                 id_changed ? "certificate and key" : "", s->reload_sec);
}

static void *poller(void *arg)
{
    struct rpc_tls_src *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->stop) {
        struct timespec dl;
        clock_gettime(CLOCK_MONOTONIC, &dl);
        dl.tv_sec += s->reload_sec;
        while (!s->stop && pthread_cond_timedwait(&s->cv, &s->mu, &dl) != ETIMEDOUT)
            ;
        if (s->stop)
            break;
        pthread_mutex_unlock(&s->mu);
        poll_once(s);
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

bool rpc_tls_dynamic(const struct rpc_tls *tls)
{
    return tls && (tls->reload_sec > 0 || (tls->allowed_cn && *tls->allowed_cn) ||
                   (tls->allowed_hostname && *tls->allowed_hostname) ||
                   (tls->crl_file && *tls->crl_file));
}

static void src_free(struct rpc_tls_src *s)
{
    if (s->prov)
        grpc_tls_certificate_provider_release(s->prov);
    if (s->dir[0]) {
        unlink(s->ca_path);
        unlink(s->id_path);
        rmdir(s->dir);
    }
    free(s->ca_file);
    free(s->cert_file);
    free(s->key_file);
    free(s->stage_dir);
    free(s->allowed_cn);
    free(s->allowed_host);
    free(s->crl_file);
    free(s->cur_crl);
    crl_box_unref(s->crl);
    free(s->cur_ca);
    free_secret(s->cur_id);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}

static struct rpc_tls_src *src_create(const struct rpc_tls *tls, bool need_cert, char *err,
                                      size_t errlen)
{
    struct rpc_pem p;
    if (rpc_pem_load(tls, need_cert, &p, err, errlen) != 0)
        return NULL;
    struct rpc_tls_src *s = calloc(1, sizeof *s);
    if (!s) {
        rpc_pem_free(&p);
        rpc_errf(err, errlen, "TLS: out of memory");
        return NULL;
    }
    pthread_mutex_init(&s->mu, NULL);
    rpc_cond_init_monotonic(&s->cv);
    s->refs = 1;
    s->reload_sec = tls->reload_sec;
    s->has_cert = p.cert != NULL;
    s->ca_file = dup_or_null(tls->ca_file);
    s->cert_file = dup_or_null(tls->cert_file);
    s->key_file = dup_or_null(tls->key_file);
    s->stage_dir = dup_or_null(tls->stage_dir);
    s->allowed_cn = dup_or_null(tls->allowed_cn);
    s->allowed_host = dup_or_null(tls->allowed_hostname);
    if (s->allowed_cn && s->allowed_host) {
        rpc_errf(err, errlen, "TLS: allowed_cn and allowed_hostname are mutually exclusive");
        goto fail;
    }
    s->crl_file = dup_or_null(tls->crl_file);
    if (s->crl_file) {
        STACK_OF(X509_CRL) *crls;
        if (crl_load(s->crl_file, p.ca, &crls, &s->cur_crl, err, errlen) != 0)
            goto fail;
        if (!(s->crl = crl_box_new())) {
            sk_X509_CRL_pop_free(crls, X509_CRL_free);
            rpc_errf(err, errlen, "TLS: out of memory");
            goto fail;
        }
        s->crl->crls = crls;
    }
    if (s->reload_sec == 0) {
        /* pinning only: the files as read now, for good */
        grpc_tls_identity_pairs *pairs = NULL;
        if (s->has_cert) {
            pairs = grpc_tls_identity_pairs_create();
            grpc_tls_identity_pairs_add_pair(pairs, p.key, p.cert);
        }
        s->prov = grpc_tls_certificate_provider_static_data_create(p.ca, pairs);
        rpc_pem_free(&p);
        return s;
    }
    const char *base = s->stage_dir ? s->stage_dir : getenv("TMPDIR");
    if (!base || !*base)
        base = "/tmp";
    if (mkdir(base, 0700) != 0 && errno != EEXIST) {
        rpc_errf(err, errlen, "TLS stage_dir %s: %s", base, strerror(errno));
        goto fail;
    }
    if (snprintf(s->dir, sizeof s->dir, "%s/rpc-tls-XXXXXX", base) >= (int)sizeof s->dir ||
        !mkdtemp(s->dir)) {
        rpc_errf(err, errlen, "TLS stage_dir %s: cannot make a directory in it: %s", base,
                 strerror(errno));
        s->dir[0] = '\0';
        goto fail;
    }
    snprintf(s->ca_path, sizeof s->ca_path, "%s/ca.pem", s->dir);
    snprintf(s->id_path, sizeof s->id_path, "%s/id.pem", s->dir);
    bool a, b;
    if (stage(s, &p, &a, &b, err, errlen) != 0)
        goto fail;
    s->prov = grpc_tls_certificate_provider_file_watcher_create(
        s->has_cert ? s->id_path : NULL, s->has_cert ? s->id_path : NULL, s->ca_path,
        s->reload_sec);
    if (!s->prov) {
        rpc_errf(err, errlen, "TLS: gRPC refused the file-watcher certificate provider");
        goto fail;
    }
    if (pthread_create(&s->th, NULL, poller, s) != 0) {
        rpc_errf(err, errlen, "TLS: cannot start the reload thread");
        goto fail;
    }
    s->polling = true;
    pthread_setname_np(s->th, "rpc-tls-reload");
    rpc_pem_free(&p);
    return s;
fail:
    rpc_pem_free(&p);
    src_free(s);
    return NULL;
}

struct rpc_tls_src *rpc_tls_src_get(const struct rpc_tls *tls, bool need_cert, char *err,
                                    size_t errlen)
{
    if (!rpc_tls_dynamic(tls)) {
        rpc_errf(err, errlen, "TLS: neither reload nor name pinning");
        return NULL;
    }
    bool want_cert = tls->cert_file && *tls->cert_file;
    pthread_mutex_lock(&reg_mu);
    for (struct rpc_tls_src *s = reg_head; s; s = s->next) {
        if (s->has_cert == want_cert && s->reload_sec == tls->reload_sec &&
            str_eq(s->ca_file, tls->ca_file) && str_eq(s->cert_file, tls->cert_file) &&
            str_eq(s->key_file, tls->key_file) && str_eq(s->stage_dir, tls->stage_dir) &&
            str_eq(s->allowed_cn, tls->allowed_cn) &&
            str_eq(s->allowed_host, tls->allowed_hostname) &&
            str_eq(s->crl_file, tls->crl_file)) {
            s->refs++;
            pthread_mutex_unlock(&reg_mu);
            if (need_cert && !s->has_cert) {
                rpc_tls_src_put(s);
                rpc_errf(err, errlen, "TLS: cert_file and key_file are required");
                return NULL;
            }
            return s;
        }
    }
    struct rpc_tls_src *s = src_create(tls, need_cert, err, errlen);
    if (s) {
        s->next = reg_head;
        reg_head = s;
    }
    pthread_mutex_unlock(&reg_mu);
    return s;
}

void rpc_tls_src_put(struct rpc_tls_src *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&reg_mu);
    bool last = --s->refs == 0;
    if (last)
        for (struct rpc_tls_src **pp = &reg_head; *pp; pp = &(*pp)->next)
            if (*pp == s) {
                *pp = s->next;
                break;
            }
    pthread_mutex_unlock(&reg_mu);
    if (!last)
        return;
    if (s->polling) {
        pthread_mutex_lock(&s->mu);
        s->stop = true;
        pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->th, NULL);
    }
    src_free(s);
}

/* ---- name pinning ------------------------------------------------------------------ */

/* One verifier per credentials; gRPC owns it and calls destruct when done with it. */
struct pin {
    grpc_tls_certificate_verifier_external ext; /* ext.user_data points back here */
    char *cns, *hosts;
    grpc_tls_certificate_verifier *hostname; /* channels: gRPC's own name check, run first */
    struct crl_box *crl;                     /* a reference, or NULL */
};

/* Whether the leaf certificate (PEM) is revoked by a CRL of b; why says so. */
static bool revoked(struct crl_box *b, const char *pem, char *why, size_t whylen)
{
    if (!pem) {
        snprintf(why, whylen, "no certificate to check against the CRL");
        return true;
    }
    BIO *bio = BIO_new_mem_buf(pem, -1);
    X509 *x = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    if (!x) {
        ERR_clear_error();
        snprintf(why, whylen, "the certificate does not parse for the CRL check");
        return true;
    }
    bool r = false;
    pthread_mutex_lock(&b->mu);
    for (int i = 0; b->crls && i < sk_X509_CRL_num(b->crls) && !r; i++) {
        X509_REVOKED *rev = NULL;
        /* matches the CRL's issuer with the certificate's and looks its serial up */
        r = X509_CRL_get0_by_cert(sk_X509_CRL_value(b->crls, i), &rev, x) == 1;
    }
    pthread_mutex_unlock(&b->mu);
    if (r) {
        char issuer[200] = "", serial[80] = "";
        X509_NAME_oneline(X509_get_issuer_name(x), issuer, sizeof issuer);
        BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
        char *hex = bn ? BN_bn2hex(bn) : NULL;
        snprintf(serial, sizeof serial, "%s", hex ? hex : "?");
        OPENSSL_free(hex);
        BN_free(bn);
        snprintf(why, whylen, "certificate serial %s of %s is revoked", serial, issuer);
    }
    X509_free(x);
    ERR_clear_error();
    return r;
}

/* Whether name is one of the comma-separated list's entries (DNS names: any case). */
static bool in_list(const char *list, const char *name, bool nocase)
{
    if (!list || !name)
        return false;
    size_t n = strlen(name);
    for (const char *p = list; *p;) {
        const char *e = strchr(p, ',');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        while (l && isspace((unsigned char)*p))
            p++, l--;
        while (l && isspace((unsigned char)p[l - 1]))
            l--;
        if (l == n && (nocase ? strncasecmp(p, name, n) == 0 : strncmp(p, name, n) == 0))
            return true;
        if (!e)
            break;
        p = e + 1;
    }
    return false;
}

static bool any_in_list(const char *list, char **names, size_t n, bool nocase)
{
    for (size_t i = 0; i < n; i++)
        if (in_list(list, names[i], nocase))
            return true;
    return false;
}

static void pin_async_unused(grpc_tls_custom_verification_check_request *r, void *arg,
                             grpc_status_code st, const char *details)
{
    (void)r, (void)arg, (void)st, (void)details;
}

static int pin_verify(void *user_data, grpc_tls_custom_verification_check_request *req,
                      grpc_tls_on_custom_verification_check_done_cb cb, void *cb_arg,
                      grpc_status_code *sync_status, char **sync_error_details)
{
    (void)cb, (void)cb_arg;
    struct pin *p = user_data;
    if (p->hostname) {
        grpc_status_code hs = GRPC_STATUS_OK;
        char *hd = NULL;
        if (!grpc_tls_certificate_verifier_verify(p->hostname, req, pin_async_unused, NULL, &hs,
                                                  &hd)) {
            /* gRPC 1.51's host-name verifier is synchronous; anything else is refused */
            *sync_status = GRPC_STATUS_UNAUTHENTICATED;
            *sync_error_details = gpr_strdup("host-name check did not complete");
            return 1;
        }
        if (hs != GRPC_STATUS_OK) {
            *sync_status = hs;
            *sync_error_details = hd ? hd : gpr_strdup("host-name check failed");
            return 1;
        }
        gpr_free(hd);
    }
    const char *cn = req->peer_info.common_name ? req->peer_info.common_name : "";
    char why[600] = "";
    if (p->cns && !in_list(p->cns, cn, false))
        snprintf(why, sizeof why, "certificate CN \"%s\" is not one of the allowed CNs (%s)", cn,
                 p->cns);
    else if (p->hosts && !any_in_list(p->hosts, req->peer_info.san_names.dns_names,
                                      req->peer_info.san_names.dns_names_size, true) &&
             !any_in_list(p->hosts, req->peer_info.san_names.ip_names,
                          req->peer_info.san_names.ip_names_size, false))
        snprintf(why, sizeof why,
                 "certificate (CN \"%s\") has none of the allowed host names (%s) among its SANs",
                 cn, p->hosts);
    else if (p->crl)
        revoked(p->crl, req->peer_info.peer_cert, why, sizeof why);
    if (why[0]) {
        log_emit_limited(LOG_LEVEL_WARN, __FILE__, __LINE__, 0, LOG_FIELDS(LOG_STR("cn", cn)),
                         "TLS: refused a %s: %s", req->target_name ? "server" : "client", why);
        *sync_status = GRPC_STATUS_UNAUTHENTICATED;
        *sync_error_details = gpr_strdup(why);
    } else {
        *sync_status = GRPC_STATUS_OK;
    }
    return 1;
}

static void pin_cancel(void *user_data, grpc_tls_custom_verification_check_request *req)
{
    (void)user_data, (void)req; /* pin_verify never goes asynchronous */
}

static void pin_destruct(void *user_data)
{
    struct pin *p = user_data;
    if (p->hostname)
        grpc_tls_certificate_verifier_release(p->hostname);
    crl_box_unref(p->crl);
    free(p->cns);
    free(p->hosts);
    free(p);
}

/* Sets a pinning verifier on o when s pins names; a channel's keeps gRPC's host-name check.
 * False when out of memory (then no credentials may be made from o: the pinning would be
 * lost). */
static bool set_pin(struct rpc_tls_src *s, grpc_tls_credentials_options *o, bool channel)
{
    if (!s->allowed_cn && !s->allowed_host && !s->crl)
        return true;
    struct pin *p = calloc(1, sizeof *p);
    if (p) {
        p->cns = s->allowed_cn ? strdup(s->allowed_cn) : NULL;
        p->hosts = s->allowed_host ? strdup(s->allowed_host) : NULL;
    }
    if (!p || (s->allowed_cn && !p->cns) || (s->allowed_host && !p->hosts)) {
        if (p) {
            free(p->cns);
            free(p->hosts);
            free(p);
        }
        return false;
    }
    if (channel)
        p->hostname = grpc_tls_certificate_verifier_host_name_create();
    if (s->crl) {
        atomic_fetch_add(&s->crl->refs, 1);
        p->crl = s->crl;
    }
    p->ext = (grpc_tls_certificate_verifier_external){
        .user_data = p, .verify = pin_verify, .cancel = pin_cancel, .destruct = pin_destruct};
    grpc_tls_certificate_verifier *v = grpc_tls_certificate_verifier_external_create(&p->ext);
    grpc_tls_credentials_options_set_certificate_verifier(o, v); /* takes its own reference */
    grpc_tls_certificate_verifier_release(v);
    return true;
}

grpc_server_credentials *rpc_tls_src_server_creds(struct rpc_tls_src *s)
{
    grpc_tls_credentials_options *o = grpc_tls_credentials_options_create();
    grpc_tls_credentials_options_set_certificate_provider(o, s->prov);
    grpc_tls_credentials_options_watch_root_certs(o);
    grpc_tls_credentials_options_watch_identity_key_cert_pairs(o);
    grpc_tls_credentials_options_set_cert_request_type(
        o, GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    bool ok = set_pin(s, o, false);
    grpc_server_credentials *c = grpc_tls_server_credentials_create(o); /* takes o */
    if (!ok) { /* the only way to free o */
        grpc_server_credentials_release(c);
        c = NULL;
    }
    return c;
}

grpc_channel_credentials *rpc_tls_src_channel_creds(struct rpc_tls_src *s)
{
    grpc_tls_credentials_options *o = grpc_tls_credentials_options_create();
    grpc_tls_credentials_options_set_certificate_provider(o, s->prov);
    grpc_tls_credentials_options_watch_root_certs(o);
    if (s->has_cert)
        grpc_tls_credentials_options_watch_identity_key_cert_pairs(o);
    /* Chain and name checked as with the static credentials: with no verifier set, gRPC 1.51
     * uses its host-name verifier against the target name (or the override). */
    grpc_tls_credentials_options_set_verify_server_cert(o, 1);
    bool ok = set_pin(s, o, true);
    grpc_channel_credentials *c = grpc_tls_credentials_create(o); /* takes o */
    if (!ok) {
        grpc_channel_credentials_release(c);
        c = NULL;
    }
    return c;
}
