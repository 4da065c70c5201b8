/* metrics_http.h: the listener behind --listen-metrics-urls: /metrics (Prometheus text
 * exposition 0.0.4), /health and /version (etcd's shapes), over HTTP/1.1 on libevent's evhttp,
 * with OpenSSL bufferevents for https://.
 *
 * What it promises:
 * - https:// URLs speak TLS (1.2 or later) with the given certificate and key, and REQUIRE a
 *   client certificate that chains to the given CA: a client without one, or with one from
 *   another CA, fails the handshake and sees no byte of HTTP. http:// URLs are served only when
 *   the caller passes them (craftd_flags refuses them without --insecure-plaintext) and are
 *   plaintext.
 * - Routes: GET (or HEAD) /metrics -> 200, text/plain; version=0.0.4, the text the render
 *   callback wrote (500 if it failed or grew past max_response_bytes); GET /health -> 200
 *   {"health":"true","reason":""} or 503 with "false" and the reason, etcd 3.4/3.5's body and
 *   codes (503 bodies end in a newline, as Go's http.Error writes them); GET /version ->
 *   {"etcdserver":"V","etcdcluster":"V"}. Another method on a known path -> 405 with
 *   "Allow: GET"; an unknown path -> 404. A query string is ignored.
 * - Bounds, each with a default when 0: at most max_connections connections at once (64; past
 *   it a new connection is closed at once: for https its handshake fails, before any work),
 *   request head (request line + headers) at most max_header_bytes (8192; past it evhttp
 *   answers 431/400 and closes), a body at most 1 KiB, a connection idle, or stalled reading or
 *   writing, for timeout_s seconds (10) is closed, a response at most max_response_bytes
 *   (4 MiB). One response is buffered per connection at a time (evhttp reads a connection's
 *   next request only after answering the previous one), so a client that never reads holds
 *   at most one response, until the timeout.
 * - One thread ("metrics-http") runs the event loop and the callbacks; they must not block
 *   for long (the render reads atomics and takes the node lock briefly).
 * - TLS files in operation: see reload_ms and crl_file below (rpc.h's rules, shared checks).
 * - Errors: metrics_http_start returns NULL with one sentence in err (unreadable or mismatched
 *   certificate files, an address that cannot be bound). Nothing here exits on bad input.
 */
#ifndef CRAFT_SERVICES_METRICS_HTTP_H
#define CRAFT_SERVICES_METRICS_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include "metrics/metrics.h"
#include "services/cluster.h"

#define METRICS_HTTP_MAX_URLS 8
#define METRICS_HTTP_DEFAULT_MAX_CONNECTIONS 64
#define METRICS_HTTP_DEFAULT_MAX_HEADER_BYTES 8192
#define METRICS_HTTP_DEFAULT_TIMEOUT_S 10
#define METRICS_HTTP_DEFAULT_MAX_RESPONSE_BYTES (4u << 20)

struct metrics_http_config {
    const struct cluster_url *urls; /* where to listen; port 0 picks one (metrics_http_port) */
    size_t n_urls;                  /* 1 .. METRICS_HTTP_MAX_URLS */
    const char *cert_file, *key_file, *ca_file; /* required if any URL is https:// */
    const char *cipher_list; /* TLS 1.2 suites in OpenSSL's names; NULL or "" = OpenSSL's */
    /* Revocation (craftd's --client-crl-file), checked as rpc_tls.crl_file: a client whose
     * certificate a CRL of its issuer lists is refused in the handshake. NULL or "": none. */
    const char *crl_file;
    /* The certificate, key, CA and CRL files are re-checked this often (--tls-reload-interval):
     * a changed set that passes every check made at start is taken for new connections
     * (connections already up keep theirs); one that fails is not taken, the set in use is
     * kept and the reason is logged (once per distinct reason). 0: read once at start. */
    unsigned reload_ms;
    unsigned max_connections;
    unsigned max_header_bytes;
    unsigned timeout_s;
    size_t max_response_bytes;

    /* Writes the /metrics text into b. Called on the listener's thread. */
    void (*render)(void *arg, struct metrics_buf *b);
    /* Whether the member is healthy; if not, reason gets etcd's words ("RAFT NO LEADER",
     * "ALARM NOSPACE"). */
    bool (*health)(void *arg, char *reason, size_t len);
    const char *version; /* /version's etcdserver and etcdcluster (copied) */
    void *arg;
};

struct metrics_http;

struct metrics_http *metrics_http_start(const struct metrics_http_config *cfg, char *err,
                                        size_t errlen);
/* Closes every listener and connection and joins the thread. NULL is fine. */
void metrics_http_stop(struct metrics_http *m);
/* The port URL i listens on (the one picked, for port 0), or -1. */
int metrics_http_port(const struct metrics_http *m, size_t i);
/* Connections open now (tests). */
unsigned metrics_http_connections(const struct metrics_http *m);

#endif
