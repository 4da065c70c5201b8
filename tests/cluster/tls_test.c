/* Certificates in operation on real members (--tls-reload-interval; docs/rpc.md "Certificates
 * in operation"): while writes run through two members (one of them forwarding to the leader),
 * every member's certificate is re-issued by the same CA, then the CA is rolled over (old and
 * new CA side by side in the bundle, then every member on a certificate of the new CA), with no
 * member restarted for it. Fresh handshakes must show each step on every member's client port;
 * a member restarted at the end must rejoin over peer connections made with the new
 * certificates (the peer port's own check that a certificate names its member included). No
 * write may fail beyond one retry. The writes go to the leader and a follower (which forwards). */
#include <criterion/criterion.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
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
/* The member the writer leaves alone (the one about to be restarted), changed under wmu so
 * that no put is using its channel when the harness destroys it. */
static pthread_mutex_t wmu = PTHREAD_MUTEX_INITIALIZER;
static int avoid = 2;

static void *writer(void *arg)
{
    (void)arg;
    for (long n = 0; !atomic_load(&stop); n++) {
        char key[32], val[32];
        snprintf(key, sizeof key, "w%ld", n);
        snprintf(val, sizeof val, "v%ld", n);
        pthread_mutex_lock(&wmu);
        /* alternately the two members not avoided: at least one follower, which forwards */
        int member = (avoid + 1 + (int)(n % 2)) % 3;
        grpc_status_code st = hc_put(&C, member, key, val, 3000, NULL);
        if (st != GRPC_STATUS_OK) /* one retry: a reconnect may cost one */
            st = hc_put(&C, member, key, val, 3000, NULL);
        pthread_mutex_unlock(&wmu);
        if (st == GRPC_STATUS_OK) {
            atomic_fetch_add(&ok_writes, 1);
        } else {
            if (atomic_fetch_add(&failed_writes, 1) == 0)
                snprintf(failure, sizeof failure, "put %s on n%d: status %d", key, member + 1,
                         st);
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
     * its peers never restarted. A follower: restarting the leader would fail writes for an
     * election, which is not what this test is about. */
    int l = hc_wait_leader(&C, 20000);
    cr_assert_geq(l, 0, "no leader before the restart");
    int victim = (l + 1) % 3;
    pthread_mutex_lock(&wmu);
    avoid = victim;
    hc_signal(&C, victim, SIGTERM);
    pthread_mutex_unlock(&wmu);
    hc_start(&C, victim);
    cr_assert_geq(hc_wait_leader(&C, 20000), 0, "no leader after the restart");
    int64_t rev = 0;
    grpc_status_code st = GRPC_STATUS_UNAVAILABLE;
    for (int t = 0; t < 20 && st != GRPC_STATUS_OK; t++)
        st = hc_put(&C, victim, "after-restart", "x", 3000, &rev);
    cr_assert_eq(st, GRPC_STATUS_OK, "a put through the restarted n%d", victim + 1);
    for (int i = 0; i < C.n; i++)
        cr_assert(hc_wait_revision(&C, i, rev, 20000), "n%d did not reach revision %lld", i + 1,
                  (long long)rev);

    atomic_store(&stop, true);
    pthread_join(th, NULL);
    if (atomic_load(&failed_writes))
        for (int i = 0; i < C.n; i++)
            hc_dump_log(&C, i);
    cr_assert_eq(atomic_load(&failed_writes), 0, "%ld writes failed (after a retry); first: %s",
                 atomic_load(&failed_writes), failure);
    cr_assert_gt(atomic_load(&ok_writes), 20, "the write load barely ran: %ld",
                 atomic_load(&ok_writes));
}

/* --peer-cert-allowed-cn: a member whose certificate's CN is not in the list is refused in the
 * handshake by the others (their listeners refuse it as a client; their channels would refuse it
 * as a server), while the allowed ones form a quorum and serve. */
Test(tls, peer_whose_cn_is_not_allowed_is_refused, .fini = teardown, .timeout = 120)
{
    hc_setup(&C, 3, 100, 1000);
    snprintf(C.extra_flags, sizeof C.extra_flags, "--peer-cert-allowed-cn n1,n2");
    hc_start_all(&C);
    /* hc_wait_leader wants every member to agree; n3 cannot: the allowed two must */
    int l = -1;
    for (int64_t until = hc_now_ms() + 20000; l < 0; pause_ms(100)) {
        Craft__Node__StatusReply *a = NULL, *b = NULL;
        if (hc_status(&C, 0, &a) == 0 && hc_status(&C, 1, &b) == 0 && a->leader_id &&
            a->leader_id == b->leader_id)
            l = a->leader_id == a->member_id ? 0 : a->leader_id == b->member_id ? 1 : 2;
        if (a)
            protobuf_c_message_free_unpacked(&a->base, NULL);
        if (b)
            protobuf_c_message_free_unpacked(&b->base, NULL);
        cr_assert(l >= 0 || hc_now_ms() < until, "n1 and n2 agree on no leader");
    }
    cr_assert(l == 0 || l == 1, "leader n%d: not one of the allowed members", l + 1);
    int64_t rev = 0;
    cr_assert_eq(hc_put(&C, 1 - l, "k", "v", 5000, &rev), GRPC_STATUS_OK);
    cr_assert(hc_wait_revision(&C, 1 - l, rev, 10000));
    wait_log(0, "certificate CN \\\"n3\\\" is not one of the allowed CNs");
    wait_log(1, "certificate CN \\\"n3\\\" is not one of the allowed CNs");
    /* n3 never gets the write: it cannot reach anyone, and no one can reach it */
    Craft__Node__StatusReply *st = NULL, *ls = NULL;
    cr_assert_eq(hc_status(&C, l, &ls), 0);
    cr_assert_eq(hc_status(&C, 2, &st), 0);
    cr_assert_lt(st->applied_index, ls->applied_index, "n3 applied %llu entries, the leader %llu",
                 (unsigned long long)st->applied_index, (unsigned long long)ls->applied_index);
    protobuf_c_message_free_unpacked(&st->base, NULL);
    protobuf_c_message_free_unpacked(&ls->base, NULL);
}

/* A CRL of the cluster's CA revoking member `name`'s certificate, written to path. */
static void write_crl_revoking(const char *path, const char *name)
{
    char p[600];
    snprintf(p, sizeof p, "%s/ca.pem", C.certs);
    FILE *f = fopen(p, "r");
    cr_assert(f);
    X509 *ca = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    snprintf(p, sizeof p, "%s/ca-key.pem", C.certs);
    f = fopen(p, "r");
    cr_assert(f);
    EVP_PKEY *key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    snprintf(p, sizeof p, "%s/%s.pem", C.certs, name);
    f = fopen(p, "r");
    cr_assert(f);
    X509 *c = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    cr_assert(ca && key && c);
    X509_CRL *crl = X509_CRL_new();
    X509_CRL_set_version(crl, 1);
    X509_CRL_set_issuer_name(crl, X509_get_subject_name(ca));
    ASN1_TIME *t = ASN1_TIME_new();
    X509_gmtime_adj(t, 0);
    X509_CRL_set1_lastUpdate(crl, t);
    X509_REVOKED *r = X509_REVOKED_new();
    X509_REVOKED_set_serialNumber(r, X509_get_serialNumber(c));
    X509_REVOKED_set_revocationDate(r, t);
    X509_CRL_add0_revoked(crl, r);
    X509_gmtime_adj(t, 86400);
    X509_CRL_set1_nextUpdate(crl, t);
    cr_assert(X509_CRL_sign(crl, key, EVP_sha256()) > 0);
    f = fopen(path, "w");
    cr_assert(f);
    PEM_write_X509_CRL(f, crl);
    fclose(f);
    ASN1_TIME_free(t);
    X509_CRL_free(crl);
    X509_free(c);
    EVP_PKEY_free(key);
    X509_free(ca);
}

/* --peer-crl-file: a member whose certificate is revoked is refused in the handshake by the
 * others, which form a quorum and serve. */
Test(tls, revoked_peer_is_refused, .fini = teardown, .timeout = 120)
{
    hc_setup(&C, 3, 100, 1000);
    char crl[400];
    snprintf(crl, sizeof crl, "%s/crl.pem", C.dir);
    write_crl_revoking(crl, "n3");
    snprintf(C.extra_flags, sizeof C.extra_flags, "--peer-crl-file %s", crl);
    hc_start_all(&C);
    int l = -1;
    for (int64_t until = hc_now_ms() + 20000; l < 0; pause_ms(100)) {
        Craft__Node__StatusReply *a = NULL, *b = NULL;
        if (hc_status(&C, 0, &a) == 0 && hc_status(&C, 1, &b) == 0 && a->leader_id &&
            a->leader_id == b->leader_id)
            l = a->leader_id == a->member_id ? 0 : a->leader_id == b->member_id ? 1 : 2;
        if (a)
            protobuf_c_message_free_unpacked(&a->base, NULL);
        if (b)
            protobuf_c_message_free_unpacked(&b->base, NULL);
        cr_assert(l >= 0 || hc_now_ms() < until, "n1 and n2 agree on no leader");
    }
    cr_assert(l == 0 || l == 1, "leader n%d: the revoked member", l + 1);
    int64_t rev = 0;
    cr_assert_eq(hc_put(&C, 1 - l, "k", "v", 5000, &rev), GRPC_STATUS_OK);
    wait_log(0, "is revoked");
    wait_log(1, "is revoked");
    Craft__Node__StatusReply *st = NULL, *ls = NULL;
    cr_assert_eq(hc_status(&C, l, &ls), 0);
    cr_assert_eq(hc_status(&C, 2, &st), 0);
    cr_assert_lt(st->applied_index, ls->applied_index, "n3 applied %llu entries, the leader %llu",
                 (unsigned long long)st->applied_index, (unsigned long long)ls->applied_index);
    protobuf_c_message_free_unpacked(&st->base, NULL);
    protobuf_c_message_free_unpacked(&ls->base, NULL);
}
