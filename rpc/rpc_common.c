/* Pieces shared by the server and the channel: errors, the completion-queue loop, PEM
 * loading and checking (OpenSSL), the byte-buffer codec and peer identity. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <grpc/byte_buffer_reader.h>
#include <grpc/slice.h>
#include <grpc/support/log.h>
#include <grpc/support/time.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "log/log.h"
#include "rpc/rpc_internal.h"

/* PEM files are small; anything larger is not what we were asked to load. */
#define PEM_MAX_BYTES (1u << 20)

const char *rpc_strerror(int code)
{
    switch (code) {
    case RPC_OK: return "ok";
    case RPC_EINVAL: return "invalid argument";
    case RPC_ENOMEM: return "out of memory";
    case RPC_ETLS: return "unusable TLS certificate or key";
    case RPC_EBIND: return "cannot listen";
    case RPC_ESTATE: return "wrong state";
    case RPC_EFULL: return "queue full";
    case RPC_ECLOSED: return "closed";
    case RPC_ETIMEDOUT: return "timed out";
    case RPC_ENOIDENT: return "no verified peer identity";
    default: return "unknown error";
    }
}

void rpc_errf(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* gRPC core's own lines (gpr_log) through craft's logger at their level, marked "logger":"grpc"
 * and rate-limited per gRPC source line: a port scan makes one "Handshake failed with fatal
 * error SSL_ERROR_SSL" per connection. */
static void grpc_log_line(gpr_log_func_args *a)
{
    enum log_level level = a->severity == GPR_LOG_SEVERITY_DEBUG  ? LOG_LEVEL_DEBUG
                           : a->severity == GPR_LOG_SEVERITY_INFO ? LOG_LEVEL_INFO
                                                                  : LOG_LEVEL_ERROR;
    log_emit_limited(level, a->file ? a->file : "grpc", a->line, 0,
                     LOG_FIELDS(LOG_STR("logger", "grpc")), "%s", a->message ? a->message : "");
}

static atomic_bool grpc_started; /* grpc_first_init ran: GRPC_SSL_CIPHER_SUITES was read */

/* Servers and channels alive (rpc_grpc_init minus rpc_grpc_shutdown calls). */
static atomic_int grpc_users;

/* At exit, after the last server or channel went: let gRPC's shutdown finish (rpc_internal.h).
 * With servers or channels still alive gRPC will not shut down, so there is nothing to wait for.
 * grpc_is_initialized() takes the lock gRPC's shutdown holds while it joins its threads. */
static void wait_for_grpc_shutdown(void)
{
    if (atomic_load(&grpc_users) != 0)
        return;
    for (int ms = 0; ms < RPC_SHUTDOWN_WAIT_MS && grpc_is_initialized(); ms++)
        nanosleep(&(struct timespec){0, 1000000}, NULL);
}

static void grpc_first_init(void)
{
    atomic_store(&grpc_started, true);
    /* OpenSSL first, so that its exit handler (registered by its initialisation) runs after
     * ours: exit handlers run in the reverse order of registration. */
    OPENSSL_init_ssl(0, NULL);
    atexit(wait_for_grpc_shutdown);
    /* Read by gRPC at its first grpc_init; an operator's own choice wins. */
    setenv("GRPC_POLL_STRATEGY", "poll", 0);
    rpc_absl_deadlock_detection_off();
    gpr_set_log_function(grpc_log_line);
    /* gRPC prints errors only unless GRPC_VERBOSITY says otherwise; --log-level debug asks for
     * all of its lines too. Set before the first grpc_init, which then keeps it. */
    if (!getenv("GRPC_VERBOSITY"))
        gpr_set_log_verbosity(log_enabled(LOG_LEVEL_DEBUG) ? GPR_LOG_SEVERITY_DEBUG
                                                           : GPR_LOG_SEVERITY_ERROR);
}

void rpc_grpc_init(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, grpc_first_init);
    atomic_fetch_add(&grpc_users, 1);
    grpc_init();
}

void rpc_grpc_shutdown(void)
{
    grpc_shutdown();
    atomic_fetch_sub(&grpc_users, 1);
}

void rpc_cond_init_monotonic(pthread_cond_t *cv)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &ca);
    pthread_condattr_destroy(&ca);
}

void *rpc_cq_loop(void *arg)
{
    grpc_completion_queue *cq = arg;
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type == GRPC_OP_COMPLETE) {
            struct rpc_tag *t = ev.tag;
            t->fn(t, ev.success != 0);
        }
    }
    return NULL;
}

gpr_timespec rpc_deadline(int ms)
{
    if (ms <= 0)
        return gpr_inf_future(GPR_CLOCK_MONOTONIC);
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(ms, GPR_TIMESPAN));
}

int rpc_tls_set_cipher_suites(const char *names, char *openssl_names, size_t n, char *err,
                              size_t errlen)
{
    if (atomic_load(&grpc_started)) {
        rpc_errf(err, errlen, "cipher suites: gRPC has already read its list");
        return RPC_ESTATE;
    }
    if (!names || !*names) {
        rpc_errf(err, errlen, "cipher suites: empty list");
        return RPC_EINVAL;
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_method());
    size_t cap = strlen(names) * 2 + 64;
    char *list = malloc(cap), *copy = strdup(names);
    int rc = RPC_ENOMEM;
    if (!ctx || !list || !copy)
        goto out;
    /* every suite this OpenSSL has, to look names up in */
    SSL_CTX_set_security_level(ctx, 0);
    SSL_CTX_set_cipher_list(ctx, "ALL:COMPLEMENTOFALL");
    STACK_OF(SSL_CIPHER) *all = SSL_CTX_get_ciphers(ctx);
    list[0] = '\0';
    rc = RPC_EINVAL;
    for (char *save = NULL, *t = strtok_r(copy, ", ", &save); t; t = strtok_r(NULL, ", ", &save)) {
        const SSL_CIPHER *found = NULL;
        for (int i = 0; all && i < sk_SSL_CIPHER_num(all) && !found; i++) {
            const SSL_CIPHER *c = sk_SSL_CIPHER_value(all, i);
            const char *std = SSL_CIPHER_standard_name(c);
            if ((std && strcmp(std, t) == 0) || strcmp(SSL_CIPHER_get_name(c), t) == 0)
                found = c;
        }
        if (!found) {
            rpc_errf(err, errlen, "cipher suites: unknown suite %s", t);
            goto out;
        }
        if (strcmp(SSL_CIPHER_get_version(found), "TLSv1.3") == 0) {
            rpc_errf(err, errlen,
                     "cipher suites: %s is a TLS 1.3 suite; those are not configurable", t);
            goto out;
        }
        const char *on = SSL_CIPHER_get_name(found);
        size_t used = strlen(list);
        if (used + strlen(on) + 2 > cap) {
            rpc_errf(err, errlen, "cipher suites: list too long");
            goto out;
        }
        snprintf(list + used, cap - used, "%s%s", used ? ":" : "", on);
    }
    if (!list[0]) {
        rpc_errf(err, errlen, "cipher suites: empty list");
        goto out;
    }
    /* gRPC hands the list to SSL_CTX_set_cipher_list with TLS 1.3's defaults left alone */
    setenv("GRPC_SSL_CIPHER_SUITES", list, 1);
    if (openssl_names)
        snprintf(openssl_names, n, "%s", list);
    rc = 0;
out:
    if (rc == RPC_ENOMEM)
        rpc_errf(err, errlen, "cipher suites: out of memory");
    SSL_CTX_free(ctx);
    free(list);
    free(copy);
    ERR_clear_error();
    return rc;
}

/* ---- PEM ---------------------------------------------------------------------------- */

static char *read_file(const char *what, const char *path, char *err, size_t errlen)
{
    if (!path || !*path) {
        rpc_errf(err, errlen, "%s: no file given", what);
        return NULL;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        rpc_errf(err, errlen, "%s %s: %s", what, path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > PEM_MAX_BYTES) {
        rpc_errf(err, errlen, "%s %s: not a regular file of at most %u bytes", what, path,
                 PEM_MAX_BYTES);
        fclose(f);
        return NULL;
    }
    char *buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        rpc_errf(err, errlen, "%s %s: out of memory", what, path);
        fclose(f);
        return NULL;
    }
    size_t n = fread(buf, 1, (size_t)st.st_size, f);
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        rpc_errf(err, errlen, "%s %s: read error", what, path);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    if (strlen(buf) != n) {
        rpc_errf(err, errlen, "%s %s: not a PEM file (contains NUL bytes)", what, path);
        free(buf);
        return NULL;
    }
    return buf;
}

/* Parses every certificate in pem; returns how many (0 when none parse). *first gets the first
 * one when first is non-NULL. */
static int pem_count_certs(const char *pem, X509 **first)
{
    BIO *bio = BIO_new_mem_buf(pem, -1);
    if (!bio)
        return 0;
    int n = 0;
    X509 *x;
    while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
        if (n == 0 && first)
            *first = x;
        else
            X509_free(x);
        n++;
    }
    BIO_free(bio);
    ERR_clear_error(); /* the loop ends on a "no start line" error; do not leak it */
    return n;
}

/* How many PEM certificate blocks pem starts: more than pem_count_certs parses means one is cut
 * short or damaged (a file caught half-written, say), which OpenSSL alone would skip quietly. */
static int pem_count_begins(const char *pem)
{
    int n = 0;
    for (const char *p = pem; (p = strstr(p, "-----BEGIN CERTIFICATE-----")) != NULL; p++)
        n++;
    return n;
}

/* 0 when every certificate block of file parses and there is at least one; else RPC_ETLS. */
static int check_certs(const char *what, const char *path, const char *pem, X509 **first,
                       char *err, size_t errlen)
{
    int n = pem_count_certs(pem, first);
    if (n == 0) {
        rpc_errf(err, errlen, "%s %s: no PEM certificate in it", what, path);
        return RPC_ETLS;
    }
    int m = pem_count_begins(pem);
    if (n < m) {
        rpc_errf(err, errlen, "%s %s: %d of its %d certificates are truncated or damaged", what,
                 path, m - n, m);
        return RPC_ETLS;
    }
    return 0;
}

int rpc_pem_load(const struct rpc_tls *tls, bool need_cert, struct rpc_pem *out, char *err,
                 size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (!tls) {
        rpc_errf(err, errlen, "no TLS configuration (set insecure explicitly for plaintext)");
        return RPC_EINVAL;
    }
    bool has_cert = tls->cert_file && *tls->cert_file;
    bool has_key = tls->key_file && *tls->key_file;
    if (need_cert && (!has_cert || !has_key)) {
        rpc_errf(err, errlen, "TLS: cert_file and key_file are required");
        return RPC_EINVAL;
    }
    if (has_cert != has_key) {
        rpc_errf(err, errlen, "TLS: cert_file and key_file go together");
        return RPC_EINVAL;
    }
    int rc = RPC_ETLS;
    X509 *cert = NULL;
    EVP_PKEY *key = NULL;
    if (!(out->ca = read_file("ca_file", tls->ca_file, err, errlen)))
        goto fail;
    if (check_certs("ca_file", tls->ca_file, out->ca, NULL, err, errlen) != 0)
        goto fail;
    if (!has_cert)
        return 0;
    if (!(out->cert = read_file("cert_file", tls->cert_file, err, errlen)))
        goto fail;
    if (check_certs("cert_file", tls->cert_file, out->cert, &cert, err, errlen) != 0)
        goto fail;
    if (!(out->key = read_file("key_file", tls->key_file, err, errlen)))
        goto fail;
    BIO *bio = BIO_new_mem_buf(out->key, -1);
    if (bio) {
        key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
        BIO_free(bio);
    }
    if (!key) {
        rpc_errf(err, errlen, "key_file %s: no unencrypted PEM private key in it", tls->key_file);
        goto fail;
    }
    if (X509_check_private_key(cert, key) != 1) {
        rpc_errf(err, errlen, "key_file %s does not match the certificate in cert_file %s",
                 tls->key_file, tls->cert_file);
        goto fail;
    }
    X509_free(cert);
    EVP_PKEY_free(key);
    ERR_clear_error();
    return 0;
fail:
    ERR_clear_error();
    X509_free(cert);
    EVP_PKEY_free(key);
    rpc_pem_free(out);
    return rc;
}

void rpc_pem_free(struct rpc_pem *p)
{
    free(p->ca);
    free(p->cert);
    if (p->key) {
        memset(p->key, 0, strlen(p->key)); /* do not leave key material in freed memory */
        free(p->key);
    }
    memset(p, 0, sizeof *p);
}

int rpc_tls_check(const struct rpc_tls *tls, bool need_cert, char *err, size_t errlen)
{
    struct rpc_pem p;
    int rc = rpc_pem_load(tls, need_cert, &p, err, errlen);
    if (rc == 0)
        rpc_pem_free(&p);
    return rc;
}

/* ---- codec -------------------------------------------------------------------------- */

grpc_byte_buffer *rpc_bb_from_bytes(const void *data, size_t len)
{
    grpc_slice s = len ? grpc_slice_from_copied_buffer(data, len) : grpc_empty_slice();
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

grpc_byte_buffer *rpc_bb_from_msg(const ProtobufCMessage *m)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    /* Pack straight into a gRPC slice: one copy fewer than packing into a heap buffer. */
    grpc_slice s = grpc_slice_malloc(n);
    protobuf_c_message_pack(m, GRPC_SLICE_START_PTR(s));
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

int rpc_bb_to_bytes(grpc_byte_buffer *bb, uint8_t **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    grpc_byte_buffer_reader r;
    if (!grpc_byte_buffer_reader_init(&r, bb))
        return RPC_EINVAL; /* e.g. a compressed message we cannot decompress */
    size_t n = grpc_byte_buffer_length(r.buffer_out);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) {
        grpc_byte_buffer_reader_destroy(&r);
        return RPC_ENOMEM;
    }
    size_t off = 0;
    grpc_slice s;
    while (grpc_byte_buffer_reader_next(&r, &s)) {
        size_t sl = GRPC_SLICE_LENGTH(s);
        if (off + sl <= n)
            memcpy(buf + off, GRPC_SLICE_START_PTR(s), sl);
        off += sl;
        grpc_slice_unref(s);
    }
    grpc_byte_buffer_reader_destroy(&r);
    if (off != n) {
        free(buf);
        return RPC_EINVAL;
    }
    *out = buf;
    *len = n;
    return 0;
}

int rpc_msg_pack(const ProtobufCMessage *m, uint8_t **out, size_t *len)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        return RPC_ENOMEM;
    *len = protobuf_c_message_pack(m, buf);
    *out = buf;
    return 0;
}

ProtobufCMessage *rpc_msg_unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
                                 size_t len)
{
    return protobuf_c_message_unpack(desc, NULL, len, data);
}

void rpc_result_free(struct rpc_result *r)
{
    if (!r)
        return;
    free(r->data);
    r->data = NULL;
    r->len = 0;
}

void rpc_slice_to_str(grpc_slice s, char *buf, size_t n)
{
    size_t l = GRPC_SLICE_LENGTH(s);
    if (l >= n)
        l = n - 1;
    memcpy(buf, GRPC_SLICE_START_PTR(s), l);
    buf[l] = '\0';
}

/* ---- identity ----------------------------------------------------------------------- */

static void copy_prop(char *dst, const grpc_auth_property *p)
{
    size_t l = p->value_length < RPC_PEER_NAME_MAX - 1 ? p->value_length : RPC_PEER_NAME_MAX - 1;
    memcpy(dst, p->value, l);
    dst[l] = '\0';
}

int rpc_peer_from_call(grpc_call *gc, struct rpc_peer *out)
{
    memset(out, 0, sizeof *out);
    grpc_auth_context *ac = grpc_call_auth_context(gc);
    if (!ac)
        return RPC_ENOIDENT;
    if (!grpc_auth_context_peer_is_authenticated(ac)) {
        grpc_auth_context_release(ac);
        return RPC_ENOIDENT;
    }
    grpc_auth_property_iterator it =
        grpc_auth_context_find_properties_by_name(ac, GRPC_X509_CN_PROPERTY_NAME);
    const grpc_auth_property *p = grpc_auth_property_iterator_next(&it);
    if (p)
        copy_prop(out->cn, p);
    it = grpc_auth_context_find_properties_by_name(ac, GRPC_X509_SAN_PROPERTY_NAME);
    while ((p = grpc_auth_property_iterator_next(&it)) != NULL && out->nsans < RPC_PEER_MAX_SANS)
        copy_prop(out->sans[out->nsans++], p);
    grpc_auth_context_release(ac);
    return 0;
}

int rpc_clamp_int(int v, int def, int lo, int hi)
{
    if (v <= 0)
        return def;
    return v < lo ? lo : v > hi ? hi : v;
}

int rpc_size_arg(size_t v)
{
    if (v == 0)
        return (int)RPC_DEFAULT_MAX_MSG;
    return v > (size_t)0x7fffffff ? 0x7fffffff : (int)v;
}
