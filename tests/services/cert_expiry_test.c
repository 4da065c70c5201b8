/* cert_expiry_test: services/cert_expiry.h - the earliest notAfter of a PEM file, the warning
 * for a file that expires within the window (at start, then once a day while it does, again at
 * once after a renewal comes close again), bad files, and the metric. Certificates are made here
 * with OpenSSL, self-signed, with the expiries each case needs. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "log/log.h"
#include "services/cert_expiry.h"

#define DAY 86400
#define TEXT(b) ((b).p ? (b).p : "")

static char dir[64], logf[128];

static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/certexp.XXXXXX");
    cr_assert(mkdtemp(dir));
    snprintf(logf, sizeof logf, "%s/log", dir);
    struct log_config c = {.level = LOG_LEVEL_INFO, .outputs = logf};
    char err[256];
    cr_assert_eq(log_configure(&c, err, sizeof err), 0, "%s", err);
}

static void teardown(void)
{
    log_reset();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

/* Appends to path (dir/name) a self-signed certificate valid until now + secs; returns its
 * notAfter as OpenSSL stored it (whole seconds). */
static int64_t add_cert(const char *name, int64_t now, int64_t secs)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    cr_assert(k);
    X509 *x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_time_adj_ex(X509_getm_notBefore(x), 0, -3600, (time_t *)&now);
    X509_time_adj_ex(X509_getm_notAfter(x), (int)(secs / DAY), (long)(secs % DAY), (time_t *)&now);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                               (const unsigned char *)name, -1, -1, 0);
    X509_set_issuer_name(x, X509_get_subject_name(x));
    X509_set_pubkey(x, k);
    cr_assert(X509_sign(x, k, EVP_sha256()));
    char path[128];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "a");
    cr_assert(f);
    cr_assert(PEM_write_X509(f, x));
    fclose(f);
    X509_free(x);
    EVP_PKEY_free(k);
    return now + secs;
}

static const char *path_of(const char *name)
{
    static char p[4][128];
    static int i;
    i = (i + 1) % 4;
    snprintf(p[i], sizeof p[i], "%s/%s", dir, name);
    return p[i];
}

/* Lines of the log file holding needle. */
static int log_lines(const char *needle)
{
    FILE *f = fopen(logf, "r");
    if (!f)
        return 0;
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof line, f))
        n += strstr(line, needle) != NULL;
    fclose(f);
    return n;
}

TestSuite(cert_expiry, .init = setup, .fini = teardown);

Test(cert_expiry, the_earliest_expiry_of_a_chain_or_bundle)
{
    int64_t now = (int64_t)time(NULL), t;
    char err[256];
    add_cert("chain.pem", now, 90 * DAY);
    int64_t soon = add_cert("chain.pem", now, 10 * DAY);
    add_cert("chain.pem", now, 400 * DAY);
    cr_assert_eq(cert_expiry_earliest(path_of("chain.pem"), &t, err, sizeof err), 0, "%s", err);
    cr_assert_eq(t, soon, "earliest %lld, want %lld", (long long)t, (long long)soon);
}

Test(cert_expiry, bad_files_are_clear_errors)
{
    int64_t t;
    char err[256];
    cr_assert_eq(cert_expiry_earliest(path_of("missing.pem"), &t, err, sizeof err), -1);
    cr_assert(strstr(err, "missing.pem") && strstr(err, "No such file"), "%s", err);
    FILE *f = fopen(path_of("junk.pem"), "w");
    fputs("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n", f);
    fclose(f);
    cr_assert_eq(cert_expiry_earliest(path_of("junk.pem"), &t, err, sizeof err), -1);
    cr_assert(strstr(err, "no certificate"), "%s", err);
    f = fopen(path_of("empty.pem"), "w");
    fclose(f);
    cr_assert_eq(cert_expiry_earliest(path_of("empty.pem"), &t, err, sizeof err), -1);
    cr_assert(strstr(err, "no certificate"), "%s", err);
}

Test(cert_expiry, warned_at_start_then_once_a_day_and_again_after_a_renewal)
{
    int64_t now = (int64_t)time(NULL);
    add_cert("peer.pem", now, 10 * DAY);
    int64_t far = add_cert("ca.pem", now, 400 * DAY);
    struct cert_expiry ce = {.member_id = 0xabc};
    cert_expiry_add(&ce, "peer", path_of("peer.pem"));
    cert_expiry_add(&ce, "peer-ca", path_of("ca.pem"));
    cert_expiry_add(&ce, "client-ca", path_of("ca.pem")); /* the same file, another label */
    cert_expiry_add(&ce, "client", NULL);                 /* not configured: skipped */
    cr_assert_eq(ce.n, 3);
    int64_t window = 30 * DAY;
    cr_assert_eq(cert_expiry_check(&ce, now, window), 1);
    cr_assert_eq(log_lines("certificate expires in"), 1, "a warning at the first check");
    cr_assert_eq(log_lines("\"file\":\"peer\""), 1);
    cr_assert_eq(cert_expiry_check(&ce, now + 3600, window), 1);
    cr_assert_eq(cert_expiry_check(&ce, now + DAY - 60, window), 1);
    cr_assert_eq(log_lines("certificate expires in"), 1, "no second warning within the day");
    cr_assert_eq(cert_expiry_check(&ce, now + DAY + 1, window), 1);
    cr_assert_eq(log_lines("certificate expires in"), 2, "a day later, again");
    cr_assert_eq(cert_expiry_check(&ce, now + 11 * DAY, window), 1);
    cr_assert_eq(log_lines("certificate expired"), 1, "past its expiry: said so");
    /* Renewed (the operator rotates the file): no warning while it is far, and the metric
     * follows the new file. */
    cr_assert_eq(unlink(path_of("peer.pem")), 0);
    int64_t renewed = add_cert("peer.pem", now + 11 * DAY, 365 * DAY);
    cr_assert_eq(cert_expiry_check(&ce, now + 11 * DAY + 60, window), 0);
    cr_assert_eq(log_lines("certificate expire"), 3, "nothing about a renewed file");
    struct metrics_buf b;
    metrics_buf_init(&b, 1 << 16);
    cert_expiry_metrics(&ce, &b);
    char want[256];
    snprintf(want, sizeof want,
             "craft_tls_certificate_expiry_timestamp_seconds{file=\"peer\"} %lld\n",
             (long long)renewed);
    cr_assert(strstr(TEXT(b), want), "metrics:\n%s", TEXT(b));
    snprintf(want, sizeof want,
             "craft_tls_certificate_expiry_timestamp_seconds{file=\"peer-ca\"} %lld\n",
             (long long)far);
    cr_assert(strstr(TEXT(b), want), "metrics:\n%s", TEXT(b));
    metrics_buf_free(&b);
    /* An unreadable file keeps its last value and is logged (once a day too). */
    cr_assert_eq(unlink(path_of("peer.pem")), 0);
    cert_expiry_check(&ce, now + 12 * DAY, window);
    cert_expiry_check(&ce, now + 12 * DAY + 60, window);
    cr_assert_eq(log_lines("cannot read the certificate's expiry"), 1);
    cr_assert_eq(atomic_load(&ce.f[0].not_after), renewed);
}

Test(cert_expiry, window_zero_never_warns)
{
    int64_t now = (int64_t)time(NULL);
    add_cert("c.pem", now, -DAY); /* expired */
    struct cert_expiry ce = {0};
    cert_expiry_add(&ce, "client", path_of("c.pem"));
    cr_assert_eq(cert_expiry_check(&ce, now, 0), 0);
    cr_assert_eq(log_lines("certificate expire"), 0);
    cr_assert_neq(atomic_load(&ce.f[0].not_after), 0, "the metric's value is read anyway");
}
