/* Certificates in operation on real members (--tls-reload-interval; docs/rpc.md "Certificates
 * in operation"): while writes run through two members (one of them forwarding to the leader),
 * every member's certificate is re-issued by the same CA, then the CA is rolled over (old and
 * new CA side by side in the bundle, then every member on a certificate of the new CA), with no
 * member restarted for it. Fresh handshakes must show each step on every member's client port;
 * a member restarted at the end must rejoin over peer connections made with the new
 * certificates (the peer port's own check that a certificate names its member included). No
 * write may fail beyond one retry. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdarg.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tests/cluster/harness.h"

static struct hc C;

static void teardown(void) { hc_teardown(&C); }

static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    cr_assert_eq(system(cmd), 0, "failed: %s", cmd);
}

static void pause_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- the write load ------------------------------------------------------------------ */

static atomic_bool stop;
static atomic_long ok_writes, failed_writes;
static char failure[512];

static void *writer(void *arg)
{
    (void)arg;
    for (long n = 0; !atomic_load(&stop); n++) {
        char key[32], val[32];
        snprintf(key, sizeof key, "w%ld", n);
        snprintf(val, sizeof val, "v%ld", n);
        int member = (int)(n % 2); /* n1 and n2: one of them forwards to the leader */
        grpc_status_code st = hc_put(&C, member, key, val, 3000, NULL);
        if (st != GRPC_STATUS_OK) /* one retry: an election or a reconnect may cost one */
            st = hc_put(&C, member, key, val, 3000, NULL);
        if (st == GRPC_STATUS_OK) {
            atomic_fetch_add(&ok_writes, 1);
        } else {
            if (atomic_fetch_add(&failed_writes, 1) == 0)
                snprintf(failure, sizeof failure, "put %s on n%d: status %d", key, member + 1, st);
        }
    }
    return NULL;
}

/* ---- probes -------------------------------------------------------------------------- */

/* A Status call on a fresh channel to member i's client port (a fresh handshake). */
static bool status_ok(int i, const char *ca, const char *cert, const char *key,
                      const char *server_name)
{
    char target[64], err[256] = "";
    snprintf(target, sizeof target, "127.0.0.1:%d", C.m[i].client_port);
    struct rpc_tls tls = {.ca_file = ca, .cert_file = cert, .key_file = key};
    struct rpc_channel_config cc = {.target = target, .tls = &tls, .server_name = server_name};
    struct rpc_channel *ch = rpc_channel_create(&cc, err, sizeof err);
    cr_assert(ch, "channel: %s", err);
    struct rpc_result r;
    rpc_channel_call(ch, "/craft.node.Node/Status", NULL, 0, 3000, &r);
    bool ok = r.status == GRPC_STATUS_OK;
    rpc_result_free(&r);
    rpc_channel_destroy(ch);
    return ok;
}

static void wait_status_ok(int i, const char *ca, const char *cert, const char *key,
                           const char *server_name, const char *what)
{
    int64_t until = hc_now_ms() + 30000;
    while (!status_ok(i, ca, cert, key, server_name)) {
        if (hc_now_ms() > until) {
            hc_dump_log(&C, i);
            cr_assert_fail("n%d: %s not seen by a fresh handshake within 30 s", i + 1, what);
        }
        pause_ms(100);
    }
}

static void wait_log(int i, const char *needle)
{
    int64_t until = hc_now_ms() + 30000;
    while (!hc_log_has(&C, i, needle)) {
        if (hc_now_ms() > until) {
            hc_dump_log(&C, i);
            cr_assert_fail("n%d: no log line with \"%s\" within 30 s", i + 1, needle);
        }
        pause_ms(100);
    }
}

Test(tls, rotation_and_ca_rollover_under_writes, .fini = teardown, .timeout = 300)
{
    hc_setup(&C, 3, 100, 1000);
    snprintf(C.extra_flags, sizeof C.extra_flags, "--tls-reload-interval 1s");
    /* the test's own client rolls over too: its channels reload the CA bundle */
    C.client_tls.reload_sec = 1;
    C.client_tls.stage_dir = C.dir;
    hc_start_all(&C);
    cr_assert_geq(hc_wait_leader(&C, 20000), 0, "no leader");
    for (int i = 0; i < C.n; i++)
        hc_channel(&C, i); /* made before the writer shares them */
    char tool[1024] = "certs/craft-certs";
    const char *srcdir = getenv("TEST_SRCDIR");
    if (srcdir)
        snprintf(tool, sizeof tool, "%s/craft/certs/craft-certs", srcdir);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, writer, NULL), 0);

    /* 1. every member re-issued by the same CA, with a name the old certificate lacks */
    for (int i = 0; i < C.n; i++) {
        char extra[64];
        snprintf(extra, sizeof extra, "%s-v2.example", C.m[i].name);
        cr_assert(!status_ok(i, C.ca, C.cert, C.key, extra));
        sh("%s node %s %s --dns localhost --ip 127.0.0.1 --dns %s >/dev/null", tool, C.certs,
           C.m[i].name, extra);
    }
    for (int i = 0; i < C.n; i++) {
        char extra[64];
        snprintf(extra, sizeof extra, "%s-v2.example", C.m[i].name);
        wait_status_ok(i, C.ca, C.cert, C.key, extra, "the re-issued certificate");
    }

    /* 2. CA rollover: the bundle holds old and new CA, then every member moves to the new one */
    char certs2[400], ca2[450], cert2[450], key2[450];
    snprintf(certs2, sizeof certs2, "%s/certs2", C.dir);
    sh("%s ca %s --cn craft-ca-2 >/dev/null && %s client %s client2 >/dev/null", tool, certs2,
       tool, certs2);
    snprintf(ca2, sizeof ca2, "%s/ca.pem", certs2);
    snprintf(cert2, sizeof cert2, "%s/client2.pem", certs2);
    snprintf(key2, sizeof key2, "%s/client2-key.pem", certs2);
    cr_assert(!status_ok(0, C.ca, cert2, key2, NULL), "a client of the new CA before the bundle");
    sh("cat '%s' '%s' > '%s.new' && mv '%s.new' '%s'", C.ca, ca2, C.ca, C.ca, C.ca);
    for (int i = 0; i < C.n; i++)
        wait_status_ok(i, C.ca, cert2, key2, NULL, "the CA bundle with the new CA");
    for (int i = 0; i < C.n; i++) {
        const char *nm = C.m[i].name;
        sh("%s node %s %s --dns localhost --ip 127.0.0.1 >/dev/null && cp %s/%s.pem %s/%s.pem && "
           "cp %s/%s-key.pem %s/%s-key.pem",
           tool, certs2, nm, certs2, nm, C.certs, nm, certs2, nm, C.certs, nm);
    }
    /* trusting only the new CA: the member now presents a certificate of the new CA */
    for (int i = 0; i < C.n; i++)
        wait_status_ok(i, ca2, cert2, key2, NULL, "the certificate of the new CA");
    for (int i = 0; i < C.n; i++)
        wait_log(i, "TLS reload: new CA bundle");

    /* 3. a member restarted now rejoins over peer connections made with the new certificates;
     * its peers never restarted */
    hc_signal(&C, 2, SIGTERM);
    hc_start(&C, 2);
    cr_assert_geq(hc_wait_leader(&C, 20000), 0, "no leader after n3's restart");
    int64_t rev = 0;
    grpc_status_code st = GRPC_STATUS_UNAVAILABLE;
    for (int t = 0; t < 20 && st != GRPC_STATUS_OK; t++)
        st = hc_put(&C, 2, "after-restart", "x", 3000, &rev);
    cr_assert_eq(st, GRPC_STATUS_OK, "a put through the restarted n3");
    for (int i = 0; i < C.n; i++)
        cr_assert(hc_wait_revision(&C, i, rev, 20000), "n%d did not reach revision %lld", i + 1,
                  (long long)rev);

    atomic_store(&stop, true);
    pthread_join(th, NULL);
    cr_assert_eq(atomic_load(&failed_writes), 0, "%ld writes failed (after a retry); first: %s",
                 atomic_load(&failed_writes), failure);
    cr_assert_gt(atomic_load(&ok_writes), 20, "the write load barely ran: %ld",
                 atomic_load(&ok_writes));
}
