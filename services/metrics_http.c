/* metrics_http.c: /metrics, /health and /version over libevent's evhttp (metrics_http.h).
 *
 * HTTP parsing is evhttp's; TLS is OpenSSL's through libevent-openssl bufferevents.
 *
 * Connection bound: evhttp 2.1 has no connection limit of its own, but it asks us (bevcb) for
 * every accepted connection's bufferevent. We keep a reference to each in a slot table of
 * max_connections entries; when evhttp is done with one (bufferevent_free: its callbacks are
 * cleared and its socket closed at once, but our reference keeps the struct), a sweep on the
 * loop thread every SWEEP_MS sees the cleared callbacks and drops our reference. With every slot
 * taken, a new connection gets a bufferevent whose socket is shut down one loop turn later
 * (TLS ones from a context without a certificate, so a handshake fails before any work).
 * bevcb never returns NULL for TLS: evhttp would then make a plaintext bufferevent.
 *
 * TLS files in operation (metrics_http.h reload_ms, crl_file): a timer on the same loop rebuilds
 * the context when a file changed and swaps it in only if it passes the start checks (reload). */
#include "services/metrics_http.h"

#include "log/log.h"
#include "rpc/rpc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/thread.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

struct listener {
    struct metrics_http *m;
    struct evhttp *http;
    bool tls;
    int port;
};

struct metrics_http {
    struct metrics_http_config cfg;
    char version[64];
    struct event_base *base;
    SSL_CTX *ctx;        /* client certificates required */
    SSL_CTX *refuse_ctx; /* no certificate: every handshake fails (past max_connections) */
    struct listener ls[METRICS_HTTP_MAX_URLS];
    size_t n;
    struct bufferevent **slots; /* max_connections; NULL = free */
    _Atomic unsigned conns;     /* slots taken */
    struct event *sweep;
    struct event *reload;    /* every cfg.reload_ms, with TLS */
    char *files[4];          /* copies of cert, key, CA and CRL file names (reload) */
    struct stat seen[4];     /* cert, key, CA, CRL as last checked (reload) */
    char last_err[512];      /* the reload failure last logged; "" when the files were usable */
    pthread_t thread;
    bool started;
};

static pthread_once_t evthread_once = PTHREAD_ONCE_INIT;
static int evthread_rc;
static void evthread_init(void) { evthread_rc = evthread_use_pthreads(); }

static void tls_err(char *err, size_t errlen, const char *what, const char *file)
{
    unsigned long e = ERR_get_error();
    char buf[256] = "";
    if (e)
        ERR_error_string_n(e, buf, sizeof buf);
    ERR_clear_error();
    snprintf(err, errlen, "metrics listener: %s %s: %s", what, file ? file : "",
             *buf ? buf : "failed");
}

/* Revocation, on top of OpenSSL's chain check: the leaf is refused when a CRL of the context's
 * store (crl_file's, added by rpc_tls_load_crls) of its issuer lists its serial. No
 * X509_V_FLAG_CRL_CHECK: that would also refuse clients of a CA without a CRL and every client
 * once a CRL passes its nextUpdate, which etcd (and our gRPC ports) do not. */
static int verify_crl(int ok, X509_STORE_CTX *xs)
{
    if (!ok || X509_STORE_CTX_get_error_depth(xs) != 0)
        return ok;
    X509 *x = X509_STORE_CTX_get_current_cert(xs);
    X509_STORE *st = X509_STORE_CTX_get0_store(xs);
    bool rev = false;
    if (x && st) {
        X509_STORE_lock(st);
        STACK_OF(X509_OBJECT) *objs = X509_STORE_get0_objects(st);
        for (int i = 0; i < sk_X509_OBJECT_num(objs) && !rev; i++) {
            X509_CRL *crl = X509_OBJECT_get0_X509_CRL(sk_X509_OBJECT_value(objs, i));
            X509_REVOKED *r = NULL;
            rev = crl && X509_CRL_get0_by_cert(crl, &r, x) == 1; /* issuer and serial */
        }
        X509_STORE_unlock(st);
    }
    if (!rev)
        return 1;
    char issuer[200] = "", serial[80] = "?";
    X509_NAME_oneline(X509_get_issuer_name(x), issuer, sizeof issuer);
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
    char *hex = bn ? BN_bn2hex(bn) : NULL;
    if (hex)
        snprintf(serial, sizeof serial, "%s", hex);
    OPENSSL_free(hex);
    BN_free(bn);
    log_emit_limited(LOG_LEVEL_WARN, __FILE__, __LINE__, 0, NULL,
                     "metrics listener: refused a client: certificate serial %s of %s is revoked",
                     serial, issuer);
    X509_STORE_CTX_set_error(xs, X509_V_ERR_CERT_REVOKED);
    return 0;
}

/* A context from the files, checked as the gRPC ports check theirs (rpc_tls_check: PEM, key
 * matching certificate; rpc_tls_load_crls: the CRL file), so a half-written or mismatched set
 * is refused here, at start and at each reload alike. */
static SSL_CTX *tls_ctx(const struct metrics_http_config *cfg, char *err, size_t errlen)
{
    char why[400];
    struct rpc_tls t = {.ca_file = cfg->ca_file, .cert_file = cfg->cert_file,
                        .key_file = cfg->key_file};
    if (rpc_tls_check(&t, true, why, sizeof why) != 0) {
        snprintf(err, errlen, "metrics listener: %s", why);
        return NULL;
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        tls_err(err, errlen, "cannot create a TLS context", NULL);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    if (cfg->cipher_list && *cfg->cipher_list &&
        SSL_CTX_set_cipher_list(ctx, cfg->cipher_list) != 1) {
        tls_err(err, errlen, "cannot use the cipher suites", cfg->cipher_list);
        goto fail;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg->cert_file) != 1) {
        tls_err(err, errlen, "cannot read the certificate", cfg->cert_file);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, cfg->key_file, SSL_FILETYPE_PEM) != 1) {
        tls_err(err, errlen, "cannot read the key", cfg->key_file);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        tls_err(err, errlen, "the key does not match the certificate", cfg->key_file);
        goto fail;
    }
    if (SSL_CTX_load_verify_locations(ctx, cfg->ca_file, NULL) != 1) {
        tls_err(err, errlen, "cannot read the CA", cfg->ca_file);
        goto fail;
    }
    if (cfg->crl_file && *cfg->crl_file &&
        rpc_tls_load_crls(cfg->crl_file, cfg->ca_file, SSL_CTX_get_cert_store(ctx), why,
                          sizeof why) != 0) {
        snprintf(err, errlen, "metrics listener: %s", why);
        goto fail;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, verify_crl);
    SSL_CTX_set_verify_depth(ctx, 8);
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

/* What the files look like now (a missing one reads as zeros), to notice a change. */
static void files_stat(const struct metrics_http_config *cfg, struct stat st[4])
{
    const char *f[4] = {cfg->cert_file, cfg->key_file, cfg->ca_file, cfg->crl_file};
    memset(st, 0, 4 * sizeof *st);
    for (int i = 0; i < 4; i++)
        if (f[i] && *f[i] && stat(f[i], &st[i]) != 0)
            memset(&st[i], 0, sizeof st[i]);
}

static bool stat_same(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
           a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

/* On the loop thread every reload_ms: when a file changed since the last look, a new context
 * from the files, taken only if it passes every check (the stat is taken before the files are
 * read, so a write that lands during the read shows as a change at the next look). make_bev
 * runs on this thread too, so the swap needs no lock; an SSL holds a reference on its context,
 * so connections already up keep the old one until they close. */
static void reload(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    struct metrics_http *m = arg;
    struct stat now[4];
    files_stat(&m->cfg, now);
    bool changed = false;
    for (int i = 0; i < 4; i++)
        changed |= !stat_same(&now[i], &m->seen[i]);
    if (!changed)
        return;
    memcpy(m->seen, now, sizeof now);
    char err[512] = "";
    SSL_CTX *ctx = tls_ctx(&m->cfg, err, sizeof err);
    const struct log_field *f = LOG_FIELDS(
        LOG_STR("cert_file", m->cfg.cert_file), LOG_STR("key_file", m->cfg.key_file),
        LOG_STR("ca_file", m->cfg.ca_file),
        LOG_STR("crl_file", m->cfg.crl_file ? m->cfg.crl_file : ""));
    if (!ctx) {
        if (strcmp(err, m->last_err) != 0)
            log_error(f, "TLS reload refused, the certificates in use are kept: %s", err);
        snprintf(m->last_err, sizeof m->last_err, "%s", err);
        return;
    }
    SSL_CTX_free(m->ctx);
    m->ctx = ctx;
    m->last_err[0] = '\0';
    log_info(f, "metrics listener: TLS reload: new certificate, key, CA and CRL files in force "
                "for new connections");
}

#define SWEEP_MS 200

/* Drops our reference to every connection evhttp has freed (its callbacks cleared). */
static void sweep(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    struct metrics_http *m = arg;
    for (unsigned i = 0; i < m->cfg.max_connections; i++) {
        struct bufferevent *bev = m->slots[i];
        if (!bev)
            continue;
        bufferevent_event_cb ecb;
        bufferevent_data_cb rcb, wcb;
        bufferevent_getcb(bev, &rcb, &wcb, &ecb, NULL);
        if (!rcb && !wcb && !ecb) {
            m->slots[i] = NULL;
            bufferevent_decref(bev);
            atomic_fetch_sub_explicit(&m->conns, 1, memory_order_relaxed);
        }
    }
}

/* A refused connection, one loop turn after evhttp set its fd: shut the socket down, so evhttp
 * sees it closed and frees it at once (an idle refused client would otherwise hold its fd until
 * the timeout). */
static void refuse_now(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    struct bufferevent *bev = arg;
    evutil_socket_t s = bufferevent_getfd(bev);
    if (s >= 0)
        shutdown(s, SHUT_RDWR);
    bufferevent_decref(bev);
}

static struct bufferevent *new_bev(struct event_base *base, bool tls, SSL_CTX *ctx)
{
    if (!tls)
        return bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    SSL *ssl = SSL_new(ctx);
    if (!ssl)
        return NULL;
    struct bufferevent *bev =
        bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                       BEV_OPT_CLOSE_ON_FREE);
    if (!bev)
        SSL_free(ssl);
    return bev;
}

/* evhttp asks for each accepted connection's bufferevent (it sets the fd afterwards). */
static struct bufferevent *make_bev(struct event_base *base, void *arg)
{
    struct listener *l = arg;
    struct metrics_http *m = l->m;
    unsigned slot = m->cfg.max_connections;
    for (unsigned i = 0; i < m->cfg.max_connections; i++)
        if (!m->slots[i]) {
            slot = i;
            break;
        }
    if (slot < m->cfg.max_connections) {
        struct bufferevent *bev = new_bev(base, l->tls, m->ctx);
        if (bev) {
            bufferevent_incref(bev);
            m->slots[slot] = bev;
            atomic_fetch_add_explicit(&m->conns, 1, memory_order_relaxed);
            return bev;
        }
    }
    /* Full (or out of memory): a bufferevent whose socket is shut down one loop turn later (and
     * for TLS, whose context has no certificate, so a handshake fails before any work). */
    struct bufferevent *bev = new_bev(base, l->tls, m->refuse_ctx);
    if (bev) {
        struct timeval now = {0, 0};
        bufferevent_incref(bev);
        if (event_base_once(base, -1, EV_TIMEOUT, refuse_now, bev, &now) != 0)
            bufferevent_decref(bev); /* then the timeout closes it */
    }
    if (!bev && l->tls) {
        /* Nothing could be allocated: evhttp would make a plaintext bufferevent of NULL and
         * serve HTTP without TLS on a TLS port. Better to stop than to do that. */
        log_emit(LOG_LEVEL_FATAL, __FILE__, __LINE__, NULL,
                 "metrics listener: out of memory for a TLS connection");
        abort();
    }
    return bev;
}

static void send_text(struct evhttp_request *req, int code, const char *reason,
                      const char *ctype, const char *body, size_t len)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", ctype);
    evhttp_add_header(h, "X-Content-Type-Options", "nosniff");
    struct evbuffer *out = evhttp_request_get_output_buffer(req);
    evbuffer_add(out, body, len);
    evhttp_send_reply(req, code, reason, NULL);
}

static void send_plain(struct evhttp_request *req, int code, const char *reason, const char *body)
{
    send_text(req, code, reason, "text/plain; charset=utf-8", body, strlen(body));
}

/* Writes s as the contents of a JSON string (escaping quotes, backslashes and controls). */
static void json_str(char *out, size_t len, const char *s)
{
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p && o + 7 < len; p++) {
        if (*p == '"' || *p == '\\') {
            out[o++] = '\\';
            out[o++] = (char)*p;
        } else if (*p < 0x20) {
            o += (size_t)snprintf(out + o, len - o, "\\u%04x", *p);
        } else {
            out[o++] = (char)*p;
        }
    }
    out[o] = '\0';
}

static void on_request(struct evhttp_request *req, void *arg)
{
    struct listener *l = arg;
    struct metrics_http *m = l->m;
    const char *uri = evhttp_request_get_uri(req);
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    char path[64];
    size_t plen = strcspn(uri ? uri : "", "?#");
    if (!uri || plen >= sizeof path) {
        send_plain(req, 404, "Not Found", "404 page not found\n");
        return;
    }
    memcpy(path, uri, plen);
    path[plen] = '\0';
    bool is_metrics = !strcmp(path, "/metrics"), is_health = !strcmp(path, "/health"),
         is_version = !strcmp(path, "/version");
    if (!is_metrics && !is_health && !is_version) {
        send_plain(req, 404, "Not Found", "404 page not found\n");
        return;
    }
    if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET");
        send_plain(req, 405, "Method Not Allowed", "Method Not Allowed\n");
        return;
    }
    if (is_metrics) {
        struct metrics_buf b;
        metrics_buf_init(&b, m->cfg.max_response_bytes);
        m->cfg.render(m->cfg.arg, &b);
        if (b.failed || !b.p)
            send_plain(req, 500, "Internal Server Error",
                       "metrics could not be rendered (out of memory or over the response bound)\n");
        else
            send_text(req, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", b.p, b.len);
        metrics_buf_free(&b);
    } else if (is_health) {
        char reason[128] = "", esc[256], body[320];
        bool ok = m->cfg.health(m->cfg.arg, reason, sizeof reason);
        json_str(esc, sizeof esc, ok ? "" : reason);
        /* etcd: 200 with the JSON; otherwise http.Error: 503 and the JSON plus a newline. */
        snprintf(body, sizeof body, "{\"health\":\"%s\",\"reason\":\"%s\"}%s",
                 ok ? "true" : "false", esc, ok ? "" : "\n");
        if (ok)
            send_plain(req, 200, "OK", body);
        else
            send_plain(req, 503, "Service Unavailable", body);
    } else {
        char body[200];
        snprintf(body, sizeof body, "{\"etcdserver\":\"%s\",\"etcdcluster\":\"%s\"}", m->version,
                 m->version);
        send_text(req, 200, "OK", "application/json", body, strlen(body));
    }
}

static void *loop_main(void *arg)
{
    struct metrics_http *m = arg;
    prctl(PR_SET_NAME, "metrics-http", 0, 0, 0);
    event_base_loop(m->base, EVLOOP_NO_EXIT_ON_EMPTY);
    return NULL;
}

static int bound_port(struct evhttp_bound_socket *bs)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&ss, &sl) != 0)
        return -1;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return -1;
}

struct metrics_http *metrics_http_start(const struct metrics_http_config *cfg, char *err,
                                        size_t errlen)
{
    if (!cfg || cfg->n_urls == 0 || cfg->n_urls > METRICS_HTTP_MAX_URLS || !cfg->render ||
        !cfg->health) {
        snprintf(err, errlen, "metrics listener: bad configuration (1 to %d URLs)",
                 METRICS_HTTP_MAX_URLS);
        return NULL;
    }
    pthread_once(&evthread_once, evthread_init);
    if (evthread_rc != 0) {
        snprintf(err, errlen, "metrics listener: libevent has no pthreads support");
        return NULL;
    }
    struct metrics_http *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, errlen, "metrics listener: out of memory");
        return NULL;
    }
    m->cfg = *cfg;
    if (!m->cfg.max_connections)
        m->cfg.max_connections = METRICS_HTTP_DEFAULT_MAX_CONNECTIONS;
    if (!m->cfg.max_header_bytes)
        m->cfg.max_header_bytes = METRICS_HTTP_DEFAULT_MAX_HEADER_BYTES;
    if (!m->cfg.timeout_s)
        m->cfg.timeout_s = METRICS_HTTP_DEFAULT_TIMEOUT_S;
    if (!m->cfg.max_response_bytes)
        m->cfg.max_response_bytes = METRICS_HTTP_DEFAULT_MAX_RESPONSE_BYTES;
    snprintf(m->version, sizeof m->version, "%s", cfg->version ? cfg->version : "");
    m->cfg.version = m->version;
    m->cfg.urls = NULL; /* not kept */
    const char *names[4] = {cfg->cert_file, cfg->key_file, cfg->ca_file, cfg->crl_file};
    for (int i = 0; i < 4; i++)
        if (names[i] && *names[i] && !(m->files[i] = strdup(names[i]))) {
            snprintf(err, errlen, "metrics listener: out of memory");
            goto fail;
        }
    m->cfg.cert_file = m->files[0];
    m->cfg.key_file = m->files[1];
    m->cfg.ca_file = m->files[2];
    m->cfg.crl_file = m->files[3];

    bool any_tls = false;
    for (size_t i = 0; i < cfg->n_urls; i++)
        any_tls |= cfg->urls[i].tls;
    if (any_tls) {
        if (!cfg->cert_file || !*cfg->cert_file || !cfg->key_file || !*cfg->key_file ||
            !cfg->ca_file || !*cfg->ca_file) {
            snprintf(err, errlen, "metrics listener: https:// needs a certificate, key and CA");
            goto fail;
        }
        files_stat(&m->cfg, m->seen); /* before the files are read: see reload */
        if (!(m->ctx = tls_ctx(&m->cfg, err, errlen)))
            goto fail;
        if (!(m->refuse_ctx = SSL_CTX_new(TLS_server_method()))) {
            tls_err(err, errlen, "cannot create a TLS context", NULL);
            goto fail;
        }
    }
    if (!(m->base = event_base_new()) ||
        !(m->slots = calloc(m->cfg.max_connections, sizeof *m->slots)) ||
        !(m->sweep = event_new(m->base, -1, EV_PERSIST, sweep, m))) {
        snprintf(err, errlen, "metrics listener: cannot create an event loop");
        goto fail;
    }
    struct timeval tv = {0, SWEEP_MS * 1000};
    event_add(m->sweep, &tv);
    if (m->ctx && m->cfg.reload_ms) {
        struct timeval rt = {m->cfg.reload_ms / 1000, (m->cfg.reload_ms % 1000) * 1000};
        if (!(m->reload = event_new(m->base, -1, EV_PERSIST, reload, m)) ||
            event_add(m->reload, &rt) != 0) {
            snprintf(err, errlen, "metrics listener: cannot start the TLS reload timer");
            goto fail;
        }
    }
    for (size_t i = 0; i < cfg->n_urls; i++) {
        const struct cluster_url *u = &cfg->urls[i];
        struct listener *l = &m->ls[i];
        l->m = m;
        l->tls = u->tls;
        if (!(l->http = evhttp_new(m->base))) {
            snprintf(err, errlen, "metrics listener: out of memory");
            goto fail;
        }
        m->n = i + 1;
        evhttp_set_bevcb(l->http, make_bev, l);
        evhttp_set_gencb(l->http, on_request, l);
        evhttp_set_timeout(l->http, (int)m->cfg.timeout_s);
        evhttp_set_max_headers_size(l->http, m->cfg.max_header_bytes);
        evhttp_set_max_body_size(l->http, 1024);
        struct evhttp_bound_socket *bs =
            evhttp_bind_socket_with_handle(l->http, u->host, (ev_uint16_t)u->port);
        if (!bs) {
            snprintf(err, errlen, "metrics listener: cannot listen on %s:%d: %s", u->host, u->port,
                     strerror(errno));
            goto fail;
        }
        l->port = bound_port(bs);
    }
    if (pthread_create(&m->thread, NULL, loop_main, m) != 0) {
        snprintf(err, errlen, "metrics listener: cannot start its thread");
        goto fail;
    }
    m->started = true;
    return m;
fail:
    metrics_http_stop(m);
    return NULL;
}

void metrics_http_stop(struct metrics_http *m)
{
    if (!m)
        return;
    if (m->started) {
        event_base_loopbreak(m->base);
        pthread_join(m->thread, NULL);
    }
    for (size_t i = 0; i < m->n; i++)
        if (m->ls[i].http)
            evhttp_free(m->ls[i].http); /* closes its listeners and connections */
    if (m->slots)
        for (unsigned i = 0; i < m->cfg.max_connections; i++)
            if (m->slots[i])
                bufferevent_decref(m->slots[i]);
    free(m->slots);
    for (int i = 0; i < 4; i++)
        free(m->files[i]);
    if (m->sweep)
        event_free(m->sweep);
    if (m->reload)
        event_free(m->reload);
    if (m->base)
        event_base_free(m->base);
    if (m->ctx)
        SSL_CTX_free(m->ctx);
    if (m->refuse_ctx)
        SSL_CTX_free(m->refuse_ctx);
    free(m);
}

int metrics_http_port(const struct metrics_http *m, size_t i)
{
    return m && i < m->n ? m->ls[i].port : -1;
}

unsigned metrics_http_connections(const struct metrics_http *m)
{
    return atomic_load_explicit(&((struct metrics_http *)m)->conns, memory_order_relaxed);
}
