/* Certificates in operation (struct rpc_tls.reload_sec): a server's and a channel's certificate,
 * key and CA files re-read without a restart, while calls keep succeeding; bad files at reload
 * keep the old set and say why in the log; bad files at create are a clear error; the
 * refusals of unary_test hold with reloadable credentials too.
 *
 * Every test copies certificates from the shared directory (tests/rpc/util.h) into files of its
 * own, which it then overwrites. Waits are on conditions with deadlines: "a fresh connection
 * sees the new certificate", "the log has the line". */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "log/log.h"
#include "tests/rpc/util.h"

TestSuite(rpc_tls_reload, .fini = tt_leak_check);

#define DEADLINE 5000
#define WAIT_MS 20000 /* a change shows within 2 reload intervals (1 s each); generous margin */

/* ---- files -------------------------------------------------------------------------- */

static char work[512];

static void make_work(void)
{
    const char *tmp = getenv("TEST_TMPDIR");
    snprintf(work, sizeof work, "%s/tls-reload-XXXXXX", tmp ? tmp : "/tmp");
    cr_assert(mkdtemp(work), "mkdtemp: %s", strerror(errno));
}

static void drop_work(void)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", work);
    cr_assert_eq(system(cmd), 0);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    cr_assert(f, "open %s: %s", path, strerror(errno));
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 8192;
            buf = realloc(buf, cap);
            cr_assert(buf);
        }
        size_t n = fread(buf + len, 1, 4096, f);
        len += n;
        if (n == 0)
            break;
    }
    fclose(f);
    buf[len] = '\0';
    return buf;
}

/* Overwrites path in place (not atomically: a reader may see it half-written, as an operator's
 * `cp` would leave it). */
static void put_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert(f, "open %s: %s", path, strerror(errno));
    fputs(text, f);
    cr_assert_eq(fclose(f), 0);
}

/* dst := the certificate directory's src ("a/server.pem" style), or src1 + src2 concatenated. */
static void put_from(const char *dst, const char *src1, const char *src2)
{
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", tt_certs_dir(), src1);
    char *a = slurp(p), *b = NULL;
    if (src2) {
        snprintf(p, sizeof p, "%s/%s", tt_certs_dir(), src2);
        b = slurp(p);
    }
    size_t la = strlen(a), lb = b ? strlen(b) : 0;
    char *all = malloc(la + lb + 1);
    memcpy(all, a, la);
    if (b)
        memcpy(all + la, b, lb);
    all[la + lb] = '\0';
    put_text(dst, all);
    free(a), free(b), free(all);
}

/* A reloadable TLS configuration over files in the work directory named prefix-{ca,cert,key}. */
struct files {
    char ca[600], cert[600], key[600];
    struct rpc_tls tls;
};

static void files_init(struct files *f, const char *prefix, const char *ca, const char *name)
{
    snprintf(f->ca, sizeof f->ca, "%s/%s-ca.pem", work, prefix);
    snprintf(f->cert, sizeof f->cert, "%s/%s-cert.pem", work, prefix);
    snprintf(f->key, sizeof f->key, "%s/%s-key.pem", work, prefix);
    char src[256];
    snprintf(src, sizeof src, "%s/ca.pem", ca);
    put_from(f->ca, src, NULL);
    f->tls = (struct rpc_tls){.ca_file = f->ca, .reload_sec = 1, .stage_dir = work};
    if (name) {
        snprintf(src, sizeof src, "%s.pem", name);
        put_from(f->cert, src, NULL);
        snprintf(src, sizeof src, "%s-key.pem", name);
        put_from(f->key, src, NULL);
        f->tls.cert_file = f->cert;
        f->tls.key_file = f->key;
    }
}

/* Certificate first, then key: in between the pair does not match, which must not be taken. */
static void files_identity(struct files *f, const char *name)
{
    char src[256];
    snprintf(src, sizeof src, "%s.pem", name);
    put_from(f->cert, src, NULL);
    snprintf(src, sizeof src, "%s-key.pem", name);
    put_from(f->key, src, NULL);
}

/* ---- probes ------------------------------------------------------------------------- */

/* One call on a fresh channel (a fresh handshake): its status. */
static grpc_status_code probe(int port, const struct rpc_tls *tls, const char *server_name)
{
    char target[64], err[256] = "";
    snprintf(target, sizeof target, "127.0.0.1:%d", port);
    struct rpc_channel_config cfg = {.target = target, .tls = tls, .server_name = server_name};
    struct rpc_channel *ch = rpc_channel_create(&cfg, err, sizeof err);
    cr_assert(ch, "channel: %s", err);
    struct rpc_result r;
    cr_assert_eq(rpc_channel_call(ch, TT_ECHO, "x", 1, DEADLINE, &r), 0);
    grpc_status_code st = r.status;
    rpc_result_free(&r);
    rpc_channel_destroy(ch);
    return st;
}

/* A static (read once) client of the shared certificate directory. */
static grpc_status_code probe_as(int port, const char *ca, const char *name,
                                 const char *server_name)
{
    struct tt_tls t;
    tt_tls(&t, ca, name);
    return probe(port, &t.tls, server_name);
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000;
}

static void pause_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Polls until a fresh handshake as (ca, name) to port with server_name gives want; calls on
 * the long-lived channel `keep` (if any) must succeed all along. Fails the test at WAIT_MS. */
static void wait_probe(int port, const char *ca, const char *name, const char *server_name,
                       grpc_status_code want, struct rpc_channel *keep, const char *what)
{
    long end = now_ms() + WAIT_MS;
    grpc_status_code st;
    while ((st = probe_as(port, ca, name, server_name)) != want) {
        if (keep) {
            struct rpc_result r;
            cr_assert_eq(rpc_channel_call(keep, TT_ECHO, "k", 1, DEADLINE, &r), 0);
            cr_assert_eq(r.status, GRPC_STATUS_OK, "a call on an established channel failed "
                                                   "during the rotation: %d %s",
                         r.status, r.message);
            rpc_result_free(&r);
        }
        cr_assert(now_ms() < end, "%s: still status %d after %d ms", what, st, WAIT_MS);
        pause_ms(50);
    }
}

/* True when a fresh channel to target with tls is seen by the server with a Who reply
 * starting with want. */
static bool who_is(const char *target, const struct rpc_tls *tls, const char *want)
{
    char err[256] = "";
    struct rpc_channel_config cfg = {.target = target, .tls = tls};
    struct rpc_channel *ch = rpc_channel_create(&cfg, err, sizeof err);
    cr_assert(ch, "channel: %s", err);
    struct rpc_result r;
    cr_assert_eq(rpc_channel_call(ch, TT_WHO, NULL, 0, DEADLINE, &r), 0);
    bool ok = r.status == GRPC_STATUS_OK && r.len >= strlen(want) &&
              memcmp(r.data, want, strlen(want)) == 0;
    rpc_result_free(&r);
    rpc_channel_destroy(ch);
    return ok;
}

/* ---- log ---------------------------------------------------------------------------- */

static char log_path[600];

static void log_to_work(void)
{
    snprintf(log_path, sizeof log_path, "%s/log.json", work);
    struct log_config lc = {.outputs = log_path, .level = LOG_LEVEL_INFO};
    char err[256];
    cr_assert_eq(log_configure(&lc, err, sizeof err), 0, "%s", err);
}

/* Waits until the log has a line holding both needles. */
static void wait_log(const char *n1, const char *n2)
{
    long end = now_ms() + WAIT_MS;
    for (;;) {
        char *t = slurp(log_path);
        bool found = false;
        for (char *line = strtok(t, "\n"); line && !found; line = strtok(NULL, "\n"))
            found = strstr(line, n1) && strstr(line, n2);
        free(t);
        if (found)
            return;
        cr_assert(now_ms() < end, "no log line with \"%s\" and \"%s\" after %d ms", n1, n2,
                  WAIT_MS);
        pause_ms(50);
    }
}

/* ---- tests -------------------------------------------------------------------------- */

Test(rpc_tls_reload, server_certificate_rotation_same_ca, .timeout = 120)
{
    make_work();
    struct files s;
    files_init(&s, "s", "a", "a/server");
    struct rpc_server *srv = tt_server_start_tls(&s.tls, 0, NULL);
    int port = rpc_server_port(srv);
    struct tt_tls c;
    tt_tls(&c, "a", "client");
    char target[64], err[256] = "";
    snprintf(target, sizeof target, "127.0.0.1:%d", port);
    struct rpc_channel_config cc = {.target = target, .tls = &c.tls};
    struct rpc_channel *keep = rpc_channel_create(&cc, err, sizeof err);
    cr_assert(keep, "%s", err);

    /* "server" does not carry node-a.craft.test; its replacement "node-a" does */
    cr_assert_eq(probe_as(port, "a", "client", "node-a.craft.test"), GRPC_STATUS_UNAVAILABLE);
    files_identity(&s, "a/node-a");
    wait_probe(port, "a", "client", "node-a.craft.test", GRPC_STATUS_OK, keep,
               "new handshakes with the rotated server certificate");
    /* the old name is gone from new handshakes */
    cr_assert_eq(probe_as(port, "a", "client", "localhost"), GRPC_STATUS_OK);
    cr_assert_eq(probe_as(port, "a", "client", "server"), GRPC_STATUS_UNAVAILABLE);

    rpc_channel_destroy(keep);
    rpc_server_shutdown(srv, 1000);
    drop_work();
}

Test(rpc_tls_reload, ca_rollover_server_and_channel, .timeout = 180)
{
    make_work();
    log_to_work();
    struct files s, c;
    files_init(&s, "s", "a", "a/server");
    files_init(&c, "c", "a", "a/client");
    struct rpc_server *srv = tt_server_start_tls(&s.tls, 0, NULL);
    int port = rpc_server_port(srv);
    char target[64], err[256] = "";
    snprintf(target, sizeof target, "127.0.0.1:%d", port);
    struct rpc_channel_config cc = {.target = target, .tls = &c.tls};
    struct rpc_channel *keep = rpc_channel_create(&cc, err, sizeof err);
    cr_assert(keep, "%s", err);
    struct rpc_result r;
    cr_assert_eq(rpc_channel_call(keep, TT_WHO, NULL, 0, DEADLINE, &r), 0);
    cr_assert_eq(r.status, GRPC_STATUS_OK, "%s", r.message);
    cr_assert(r.len >= 9 && memcmp(r.data, "cn=client", 9) == 0);
    rpc_result_free(&r);

    /* 1. both sides trust old and new CA: a client of the new CA is let in */
    cr_assert_eq(probe_as(port, "a", "b/stranger", NULL), GRPC_STATUS_UNAVAILABLE);
    put_from(s.ca, "a/ca.pem", "b/ca.pem");
    put_from(c.ca, "a/ca.pem", "b/ca.pem");
    wait_probe(port, "a", "b/stranger", NULL, GRPC_STATUS_OK, keep,
               "the server's CA bundle with the new CA");

    /* 2. the server moves to a certificate of the new CA */
    cr_assert_eq(probe_as(port, "b", "b/stranger", NULL), GRPC_STATUS_UNAVAILABLE);
    files_identity(&s, "b/server-b");
    wait_probe(port, "b", "b/stranger", NULL, GRPC_STATUS_OK, keep,
               "the server's certificate of the new CA");

    /* 3. the channel's own certificate is rotated; a server restart makes it handshake again,
     * which needs its reloaded CA bundle (the server is now of CA b) and shows its new name */
    files_identity(&c, "a/node-a");
    wait_log("TLS reload: new", c.cert);
    /* a fresh channel with the same configuration shares keep's provider: once it shows the
     * new name, keep's next handshake will too */
    long end = now_ms() + WAIT_MS;
    while (!who_is(target, &c.tls, "cn=node-a")) {
        cr_assert(now_ms() < end, "a fresh channel does not present the rotated certificate");
        pause_ms(50);
    }
    rpc_server_shutdown(srv, 1000);
    srv = tt_server_start_tls(&s.tls, port, NULL);
    end = now_ms() + WAIT_MS;
    for (;;) {
        cr_assert_eq(rpc_channel_call(keep, TT_WHO, NULL, 0, DEADLINE, &r), 0);
        if (r.status == GRPC_STATUS_OK) {
            cr_assert(r.len >= 9 && memcmp(r.data, "cn=node-a", 9) == 0,
                      "the established channel re-handshook with its old certificate: %.*s",
                      (int)r.len, (const char *)r.data);
            rpc_result_free(&r);
            break;
        }
        char got[300];
        snprintf(got, sizeof got, "%d %s", r.status, r.message);
        rpc_result_free(&r);
        cr_assert(now_ms() < end, "the established channel after the server restart: %s", got);
        pause_ms(50);
    }

    rpc_channel_destroy(keep);
    rpc_server_shutdown(srv, 1000);
    log_reset();
    drop_work();
}

Test(rpc_tls_reload, bad_files_at_reload_keep_the_old_set, .timeout = 180)
{
    make_work();
    log_to_work();
    struct files s;
    files_init(&s, "s", "a", "a/server");
    struct rpc_server *srv = tt_server_start_tls(&s.tls, 0, NULL);
    int port = rpc_server_port(srv);

    /* a truncated certificate (the first half of the new one) */
    char p[1024];
    snprintf(p, sizeof p, "%s/a/node-a.pem", tt_certs_dir());
    char *cert = slurp(p);
    char *half = strndup(cert, strlen(cert) / 2);
    put_text(s.cert, half);
    free(half);
    wait_log("TLS reload refused", "no PEM certificate");
    cr_assert_eq(probe_as(port, "a", "client", "localhost"), GRPC_STATUS_OK,
                 "the old certificate must still be served");
    cr_assert_eq(probe_as(port, "a", "client", "node-a.craft.test"), GRPC_STATUS_UNAVAILABLE);

    /* the whole new certificate, but the old key */
    put_text(s.cert, cert);
    free(cert);
    wait_log("TLS reload refused", "does not match");
    cr_assert_eq(probe_as(port, "a", "client", "localhost"), GRPC_STATUS_OK,
                 "the old certificate must still be served");
    cr_assert_eq(probe_as(port, "a", "client", "node-a.craft.test"), GRPC_STATUS_UNAVAILABLE);

    /* a CA bundle whose second certificate is cut short */
    snprintf(p, sizeof p, "%s/a/ca.pem", tt_certs_dir());
    char *ca = slurp(p);
    snprintf(p, sizeof p, "%s/b/ca.pem", tt_certs_dir());
    char *cb = slurp(p);
    size_t la = strlen(ca), lb = strlen(cb) / 2;
    char *bundle = malloc(la + lb + 1);
    memcpy(bundle, ca, la);
    memcpy(bundle + la, cb, lb);
    bundle[la + lb] = '\0';
    put_text(s.ca, bundle);
    wait_log("TLS reload refused", "truncated or damaged");
    cr_assert_eq(probe_as(port, "a", "b/stranger", NULL), GRPC_STATUS_UNAVAILABLE);

    /* a missing key file */
    put_text(s.ca, ca);
    free(ca), free(cb), free(bundle);
    cr_assert_eq(unlink(s.key), 0);
    wait_log("TLS reload refused", "No such file");
    cr_assert_eq(probe_as(port, "a", "client", "localhost"), GRPC_STATUS_OK);

    /* the right key arrives: the new certificate is taken */
    snprintf(p, sizeof p, "a/node-a-key.pem");
    put_from(s.key, p, NULL);
    wait_probe(port, "a", "client", "node-a.craft.test", GRPC_STATUS_OK, NULL,
               "the repaired certificate and key");

    rpc_server_shutdown(srv, 1000);
    log_reset();
    drop_work();
}

Test(rpc_tls_reload, bad_files_at_create_are_clear_errors, .timeout = 60)
{
    make_work();
    struct files s;
    files_init(&s, "s", "a", "a/server");
    char p[1024];
    snprintf(p, sizeof p, "%s/a/server.pem", tt_certs_dir());
    char *cert = slurp(p);
    char *half = strndup(cert, strlen(cert) / 2);
    struct {
        const char *what, *want;
    } cases[] = {{"truncated", "no PEM certificate"}, {"mismatched", "does not match"},
                 {"missing", "No such file"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        files_init(&s, "s", "a", "a/server");
        if (i == 0)
            put_text(s.cert, half);
        if (i == 1)
            put_from(s.key, "a/client-key.pem", NULL);
        if (i == 2)
            cr_assert_eq(unlink(s.ca), 0);
        char err[256] = "";
        struct rpc_server_config cfg = {.listen = "127.0.0.1:0", .tls = &s.tls};
        struct rpc_server *srv = rpc_server_create(&cfg, err, sizeof err);
        cr_assert_null(srv, "%s: created", cases[i].what);
        cr_assert(strstr(err, cases[i].want), "%s: error '%s'", cases[i].what, err);
        char target[] = "127.0.0.1:1";
        struct rpc_channel_config cc = {.target = target, .tls = &s.tls};
        struct rpc_channel *ch = rpc_channel_create(&cc, err, sizeof err);
        cr_assert_null(ch, "%s: channel created", cases[i].what);
        cr_assert(strstr(err, cases[i].want), "%s: channel error '%s'", cases[i].what, err);
    }
    free(cert), free(half);
    drop_work();
}

/* unary_test's refusals, with reloadable credentials on both sides. */
Test(rpc_tls_reload, refusals_hold_with_reloadable_credentials, .timeout = 120)
{
    make_work();
    struct files s;
    files_init(&s, "s", "a", "a/server");
    struct rpc_server *srv = tt_server_start_tls(&s.tls, 0, NULL);
    int port = rpc_server_port(srv);
    struct {
        const char *ca, *name, *server_name;
        grpc_status_code want;
    } cases[] = {
        {"a", "a/client", NULL, GRPC_STATUS_OK},
        {"a", "a/client", "localhost", GRPC_STATUS_OK},
        {"a", NULL, NULL, GRPC_STATUS_UNAVAILABLE},                   /* no client certificate */
        {"a", "b/stranger", NULL, GRPC_STATUS_UNAVAILABLE},           /* client of another CA */
        {"a", "a/oldclient", NULL, GRPC_STATUS_UNAVAILABLE},          /* expired client */
        {"a", "a/client", "wrong.example", GRPC_STATUS_UNAVAILABLE},  /* server name */
        {"b", "b/stranger", NULL, GRPC_STATUS_UNAVAILABLE},           /* server of another CA */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct files c;
        char prefix[16];
        snprintf(prefix, sizeof prefix, "c%zu", i);
        files_init(&c, prefix, cases[i].ca, cases[i].name);
        grpc_status_code st = probe(port, &c.tls, cases[i].server_name);
        cr_assert_eq(st, cases[i].want, "case %zu (%s, %s, %s): status %d", i, cases[i].ca,
                     cases[i].name ? cases[i].name : "-",
                     cases[i].server_name ? cases[i].server_name : "-", st);
    }
    rpc_server_shutdown(srv, 1000);
    /* an expired server certificate */
    files_init(&s, "s", "a", "a/oldserver");
    srv = tt_server_start_tls(&s.tls, 0, NULL);
    cr_assert_eq(probe_as(rpc_server_port(srv), "a", "client", NULL), GRPC_STATUS_UNAVAILABLE);
    rpc_server_shutdown(srv, 1000);
    drop_work();
}

/* Name pinning (rpc_tls.allowed_cn / allowed_hostname): refused in the handshake, both ways. */
Test(rpc_tls_reload, name_pinning_in_the_handshake, .timeout = 120)
{
    make_work();
    log_to_work();
    struct tt_tls st, ct;
    tt_tls(&st, "a", "server");

    /* a server that lets in only clients named node-a (or "other") */
    st.tls.allowed_cn = "other, node-a";
    struct rpc_server *srv = tt_server_start_tls(&st.tls, 0, NULL);
    int port = rpc_server_port(srv);
    cr_assert_eq(probe_as(port, "a", "node-a", NULL), GRPC_STATUS_OK);
    cr_assert_eq(probe_as(port, "a", "client", NULL), GRPC_STATUS_UNAVAILABLE,
                 "a client whose CN is not allowed");
    wait_log("TLS: refused a client", "certificate CN \\\"client\\\" is not one of the allowed");
    rpc_server_shutdown(srv, 1000);

    /* ... or only clients carrying the SAN node-a.craft.test */
    st.tls.allowed_cn = NULL;
    st.tls.allowed_hostname = "NODE-A.craft.test";
    srv = tt_server_start_tls(&st.tls, 0, NULL);
    port = rpc_server_port(srv);
    cr_assert_eq(probe_as(port, "a", "node-a", NULL), GRPC_STATUS_OK);
    cr_assert_eq(probe_as(port, "a", "client", NULL), GRPC_STATUS_UNAVAILABLE,
                 "a client without an allowed host name");
    rpc_server_shutdown(srv, 1000);

    /* a channel pins the server's names; the server-name check still applies */
    st.tls.allowed_hostname = NULL;
    srv = tt_server_start_tls(&st.tls, 0, NULL);
    port = rpc_server_port(srv);
    tt_tls(&ct, "a", "client");
    ct.tls.allowed_cn = "server";
    cr_assert_eq(probe(port, &ct.tls, NULL), GRPC_STATUS_OK);
    cr_assert_eq(probe(port, &ct.tls, "wrong.example"), GRPC_STATUS_UNAVAILABLE,
                 "pinning must not replace the server-name check");
    ct.tls.allowed_cn = "node-a";
    cr_assert_eq(probe(port, &ct.tls, NULL), GRPC_STATUS_UNAVAILABLE, "a server CN not allowed");
    ct.tls.allowed_cn = NULL;
    ct.tls.allowed_hostname = "localhost";
    cr_assert_eq(probe(port, &ct.tls, NULL), GRPC_STATUS_OK);
    ct.tls.allowed_hostname = "nope.example";
    cr_assert_eq(probe(port, &ct.tls, NULL), GRPC_STATUS_UNAVAILABLE,
                 "a server without an allowed host name");
    /* with reloading too */
    ct.tls.reload_sec = 1;
    ct.tls.stage_dir = work;
    ct.tls.allowed_hostname = "127.0.0.1";
    cr_assert_eq(probe(port, &ct.tls, NULL), GRPC_STATUS_OK, "an IP SAN");
    ct.tls.allowed_hostname = "127.0.0.2";
    cr_assert_eq(probe(port, &ct.tls, NULL), GRPC_STATUS_UNAVAILABLE);

    /* both at once: etcd refuses that, so do we */
    ct.tls.allowed_cn = "server";
    char err[256] = "", target[64];
    snprintf(target, sizeof target, "127.0.0.1:%d", port);
    struct rpc_channel_config cc = {.target = target, .tls = &ct.tls};
    cr_assert_null(rpc_channel_create(&cc, err, sizeof err));
    cr_assert(strstr(err, "mutually exclusive"), "%s", err);

    rpc_server_shutdown(srv, 1000);
    log_reset();
    drop_work();
}

/* The negotiated protocol of an `openssl s_client` handshake with a client certificate of CA a:
 * "TLSv1.2", "TLSv1.3", or "" when the server refused it. */
static void s_client(int port, const char *opts, char *proto, size_t n)
{
    const char *d = tt_certs_dir();
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "openssl s_client -connect 127.0.0.1:%d %s -cert %s/a/client.pem -key "
             "%s/a/client-key.pem -CAfile %s/a/ca.pem -alpn h2 </dev/null 2>/dev/null",
             port, opts, d, d, d);
    FILE *f = popen(cmd, "r");
    cr_assert(f, "popen: %s", strerror(errno));
    char line[512];
    proto[0] = '\0';
    while (fgets(line, sizeof line, f)) {
        /* "New, TLSv1.2, Cipher is ECDHE-..." or "New, (NONE), Cipher is (NONE)" */
        if (strncmp(line, "New, ", 5) == 0 && strncmp(line + 5, "(NONE)", 6) != 0) {
            const char *e = strchr(line + 5, ',');
            snprintf(proto, n, "%.*s", e ? (int)(e - line - 5) : 0, line + 5);
        }
    }
    pclose(f);
}

/* TLS 1.2 is the floor and gRPC's AEAD suites the only ones, with either kind of credentials
 * (docs/rpc.md: 1.51's C API can change neither). */
Test(rpc_tls_reload, tls_1_2_minimum_and_aead_suites_only, .timeout = 60)
{
    make_work();
    struct tt_tls st;
    tt_tls(&st, "a", "server");
    for (int reload = 0; reload < 2; reload++) {
        st.tls.reload_sec = (unsigned)reload;
        st.tls.stage_dir = work;
        struct rpc_server *srv = tt_server_start_tls(&st.tls, 0, NULL);
        int port = rpc_server_port(srv);
        char proto[32];
        s_client(port, "-tls1_2", proto, sizeof proto);
        cr_assert_str_eq(proto, "TLSv1.2", "reload %d: a TLS 1.2 client", reload);
        s_client(port, "-tls1_3", proto, sizeof proto);
        cr_assert_str_eq(proto, "TLSv1.3", "reload %d: a TLS 1.3 client", reload);
        s_client(port, "-tls1_1 -cipher DEFAULT@SECLEVEL=0", proto, sizeof proto);
        cr_assert_str_eq(proto, "", "reload %d: a TLS 1.1 client was let in", reload);
        s_client(port, "-tls1_2 -cipher ECDHE-ECDSA-AES128-SHA", proto, sizeof proto);
        cr_assert_str_eq(proto, "", "reload %d: a CBC suite was accepted", reload);
        rpc_server_shutdown(srv, 1000);
    }
    drop_work();
}

/* rpc_tls_set_cipher_suites (craftd's --cipher-suites): names checked, TLS 1.2 suites limited
 * for the whole process, and only before gRPC starts. Criterion runs each test in a fresh
 * process, so gRPC has not started here yet. */
Test(rpc_tls_reload, cipher_suites_before_grpc_starts, .timeout = 60)
{
    char names[256], err[256];
    cr_assert_eq(rpc_tls_set_cipher_suites("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,TLS_NOPE",
                                           names, sizeof names, err, sizeof err),
                 RPC_EINVAL);
    cr_assert(strstr(err, "unknown suite TLS_NOPE"), "%s", err);
    cr_assert_eq(rpc_tls_set_cipher_suites("TLS_AES_128_GCM_SHA256", names, sizeof names, err,
                                           sizeof err),
                 RPC_EINVAL);
    cr_assert(strstr(err, "TLS 1.3 suite"), "%s", err);
    cr_assert_eq(rpc_tls_set_cipher_suites("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, "
                                           "ECDHE-ECDSA-CHACHA20-POLY1305",
                                           names, sizeof names, err, sizeof err),
                 0, "%s", err);
    cr_assert_str_eq(names, "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305");

    make_work();
    struct tt_tls st;
    tt_tls(&st, "a", "server");
    struct rpc_server *srv = tt_server_start_tls(&st.tls, 0, NULL);
    int port = rpc_server_port(srv);
    char proto[32];
    s_client(port, "-tls1_2 -cipher ECDHE-ECDSA-AES256-GCM-SHA384", proto, sizeof proto);
    cr_assert_str_eq(proto, "TLSv1.2", "a suite of the list");
    s_client(port, "-tls1_2 -cipher ECDHE-ECDSA-AES128-GCM-SHA256", proto, sizeof proto);
    cr_assert_str_eq(proto, "", "a suite gRPC offers by default but the list leaves out");
    s_client(port, "-tls1_3", proto, sizeof proto);
    cr_assert_str_eq(proto, "TLSv1.3", "TLS 1.3 keeps OpenSSL's suites");
    cr_assert_eq(rpc_tls_set_cipher_suites("ECDHE-ECDSA-AES128-GCM-SHA256", NULL, 0, err,
                                           sizeof err),
                 RPC_ESTATE, "too late: gRPC has read its list");
    rpc_server_shutdown(srv, 1000);
    drop_work();
}

/* ---- revocation ----------------------------------------------------------------------- */

static X509 *read_cert(const char *name) /* "a/client" */
{
    char p[1024];
    snprintf(p, sizeof p, "%s/%s.pem", tt_certs_dir(), name);
    FILE *f = fopen(p, "r");
    cr_assert(f, "%s: %s", p, strerror(errno));
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    cr_assert(x, "%s: no certificate", p);
    return x;
}

/* Writes to path (in place, as an operator's editor would) a CRL of CA ca_dir revoking the
 * certificates named ("a/client", ...). */
static void make_crl(const char *path, const char *ca_dir, const char *const *names, int n)
{
    char p[1024];
    snprintf(p, sizeof p, "%s/ca", ca_dir);
    X509 *ca = read_cert(p);
    snprintf(p, sizeof p, "%s/%s/ca-key.pem", tt_certs_dir(), ca_dir);
    FILE *f = fopen(p, "r");
    cr_assert(f);
    EVP_PKEY *key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    cr_assert(key);
    X509_CRL *crl = X509_CRL_new();
    X509_CRL_set_version(crl, 1);
    X509_CRL_set_issuer_name(crl, X509_get_subject_name(ca));
    ASN1_TIME *t = ASN1_TIME_new();
    X509_gmtime_adj(t, 0);
    X509_CRL_set1_lastUpdate(crl, t);
    X509_gmtime_adj(t, 86400);
    X509_CRL_set1_nextUpdate(crl, t);
    X509_gmtime_adj(t, 0);
    for (int i = 0; i < n; i++) {
        X509 *c = read_cert(names[i]);
        X509_REVOKED *r = X509_REVOKED_new();
        X509_REVOKED_set_serialNumber(r, X509_get_serialNumber(c));
        X509_REVOKED_set_revocationDate(r, t);
        X509_CRL_add0_revoked(crl, r);
        X509_free(c);
    }
    X509_CRL_sort(crl);
    cr_assert(X509_CRL_sign(crl, key, EVP_sha256()) > 0);
    BIO *bio = BIO_new(BIO_s_mem());
    PEM_write_bio_X509_CRL(bio, crl);
    char *data;
    long len = BIO_get_mem_data(bio, &data);
    char *text = strndup(data, (size_t)len);
    put_text(path, text);
    free(text);
    BIO_free(bio);
    ASN1_TIME_free(t);
    X509_CRL_free(crl);
    EVP_PKEY_free(key);
    X509_free(ca);
}

/* --client-crl-file / --peer-crl-file (rpc_tls.crl_file): a revoked client refused by a server,
 * a revoked server refused by a channel, an updated CRL in force without a restart, a bad one
 * at reload leaving the old in force. */
Test(rpc_tls_reload, revocation_in_the_handshake_and_crl_updates, .timeout = 120)
{
    make_work();
    log_to_work();
    char crl[600];
    snprintf(crl, sizeof crl, "%s/crl.pem", work);
    const char *client[] = {"a/client"}, *node_a[] = {"a/node-a"}, *server[] = {"a/server"};
    make_crl(crl, "a", client, 1);
    struct files s;
    files_init(&s, "s", "a", "a/server");
    s.tls.crl_file = crl;
    struct rpc_server *srv = tt_server_start_tls(&s.tls, 0, NULL);
    int port = rpc_server_port(srv);
    cr_assert_eq(probe_as(port, "a", "client", NULL), GRPC_STATUS_UNAVAILABLE,
                 "a revoked client was let in");
    cr_assert_eq(probe_as(port, "a", "node-a", NULL), GRPC_STATUS_OK);
    wait_log("TLS: refused a client", "is revoked");

    /* the CRL now revokes node-a instead: taken without a restart */
    make_crl(crl, "a", node_a, 1);
    wait_probe(port, "a", "client", NULL, GRPC_STATUS_OK, NULL, "the updated CRL");
    cr_assert_eq(probe_as(port, "a", "node-a", NULL), GRPC_STATUS_UNAVAILABLE);

    /* bad CRL files at reload: the one in force stays, the log says why */
    char *good = slurp(crl);
    char *half = strndup(good, strlen(good) / 2);
    put_text(crl, half);
    wait_log("TLS reload refused", "no PEM CRL");
    cr_assert_eq(probe_as(port, "a", "node-a", NULL), GRPC_STATUS_UNAVAILABLE, "old CRL kept");
    cr_assert_eq(probe_as(port, "a", "client", NULL), GRPC_STATUS_OK);
    make_crl(crl, "b", client, 1); /* signed by a CA the server does not trust */
    wait_log("TLS reload refused", "is not signed by a CA of ca_file");
    cr_assert_eq(probe_as(port, "a", "node-a", NULL), GRPC_STATUS_UNAVAILABLE, "old CRL kept");
    cr_assert_eq(probe_as(port, "a", "client", NULL), GRPC_STATUS_OK, "old CRL kept");
    free(good), free(half);

    /* a channel refuses a revoked server (a peer dialing a peer) */
    char crl2[600];
    snprintf(crl2, sizeof crl2, "%s/crl2.pem", work);
    make_crl(crl2, "a", server, 1);
    struct tt_tls ct;
    tt_tls(&ct, "a", "client");
    ct.tls.crl_file = crl2;
    cr_assert_eq(probe(port, &ct.tls, NULL), GRPC_STATUS_UNAVAILABLE, "a revoked server");
    make_crl(crl2, "a", node_a, 1);
    cr_assert_eq(probe(port, &ct.tls, NULL), GRPC_STATUS_OK);

    rpc_server_shutdown(srv, 1000);
    log_reset();
    drop_work();
}

Test(rpc_tls_reload, bad_crl_at_create_is_a_clear_error, .timeout = 60)
{
    make_work();
    char crl[600], err[256];
    snprintf(crl, sizeof crl, "%s/crl.pem", work);
    const char *client[] = {"a/client"};
    struct tt_tls st;
    tt_tls(&st, "a", "server");
    st.tls.crl_file = crl;
    struct rpc_server_config cfg = {.listen = "127.0.0.1:0", .tls = &st.tls};
    cr_assert_null(rpc_server_create(&cfg, err, sizeof err));
    cr_assert(strstr(err, "No such file"), "missing: %s", err);
    put_text(crl, "not a CRL\n");
    cr_assert_null(rpc_server_create(&cfg, err, sizeof err));
    cr_assert(strstr(err, "no PEM CRL"), "garbage: %s", err);
    make_crl(crl, "b", client, 1);
    cr_assert_null(rpc_server_create(&cfg, err, sizeof err));
    cr_assert(strstr(err, "is not signed by a CA of ca_file"), "other CA: %s", err);
    make_crl(crl, "a", client, 1);
    struct rpc_server *srv = rpc_server_create(&cfg, err, sizeof err);
    cr_assert(srv, "a good CRL: %s", err);
    rpc_server_shutdown(srv, 1000);
    drop_work();
}
