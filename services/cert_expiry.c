/* cert_expiry.c: see cert_expiry.h. */
#include "services/cert_expiry.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/asn1.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "log/log.h"

/* PEM files are small; anything larger is not a certificate file (rpc's own limit). */
#define PEM_MAX_BYTES (1 << 20)

int cert_expiry_earliest(const char *path, int64_t *not_after, char *err, size_t errlen)
{
    FILE *fp = fopen(path, "r");
    if (!fp) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    if (fseek(fp, 0, SEEK_END) != 0 || ftell(fp) > PEM_MAX_BYTES || fseek(fp, 0, SEEK_SET) != 0) {
        snprintf(err, errlen, "%s: not a certificate file (over 1 MiB or not seekable)", path);
        fclose(fp);
        return -1;
    }
    int64_t earliest = 0;
    int n = 0;
    X509 *x;
    while ((x = PEM_read_X509(fp, NULL, NULL, NULL))) {
        struct tm tm;
        const ASN1_TIME *t = X509_get0_notAfter(x);
        if (t && ASN1_TIME_to_tm(t, &tm) == 1) {
            int64_t s = (int64_t)timegm(&tm);
            if (!n || s < earliest)
                earliest = s;
            n++;
        }
        X509_free(x);
    }
    ERR_clear_error(); /* the end of the file reads as "no start line" */
    fclose(fp);
    if (!n) {
        snprintf(err, errlen, "%s: no certificate with a readable expiry in it", path);
        return -1;
    }
    *not_after = earliest;
    return 0;
}

void cert_expiry_add(struct cert_expiry *ce, const char *label, const char *path)
{
    if (!path || !*path || ce->n == CERT_EXPIRY_MAX)
        return;
    ce->f[ce->n].label = label;
    ce->f[ce->n].path = path;
    atomic_init(&ce->f[ce->n].not_after, 0);
    ce->f[ce->n].last_warn = 0;
    ce->n++;
}

size_t cert_expiry_check(struct cert_expiry *ce, int64_t now, int64_t window_s)
{
    size_t due = 0;
    for (size_t i = 0; i < ce->n; i++) {
        struct cert_expiry_file *f = &ce->f[i];
        char err[512];
        int64_t t;
        bool quiet = f->last_warn && now - f->last_warn < CERT_EXPIRY_WARN_EVERY_S;
        if (cert_expiry_earliest(f->path, &t, err, sizeof err) != 0) {
            if (!quiet) {
                log_warn(LOG_FIELDS(LOG_ID("member", ce->member_id), LOG_STR("file", f->label)),
                         "cannot read the certificate's expiry: %s", err);
                f->last_warn = now;
            }
            continue;
        }
        atomic_store(&f->not_after, t);
        if (!window_s || t - now > window_s) {
            f->last_warn = 0; /* a renewed file: warn at once if it comes close again */
            continue;
        }
        due++;
        if (quiet)
            continue;
        f->last_warn = now;
        if (t <= now)
            log_warn(LOG_FIELDS(LOG_ID("member", ce->member_id), LOG_STR("file", f->label),
                                LOG_STR("path", f->path), LOG_I64("not-after", t)),
                     "certificate expired %lld hours ago: handshakes with it fail",
                     (long long)((now - t) / 3600));
        else
            log_warn(LOG_FIELDS(LOG_ID("member", ce->member_id), LOG_STR("file", f->label),
                                LOG_STR("path", f->path), LOG_I64("not-after", t)),
                     "certificate expires in %lld hours: renew it (the TLS reload takes the new "
                     "files without a restart)",
                     (long long)((t - now) / 3600));
    }
    return due;
}

void cert_expiry_metrics(const struct cert_expiry *ce, struct metrics_buf *b)
{
    bool any = false;
    for (size_t i = 0; i < ce->n; i++) {
        int64_t t = atomic_load(&ce->f[i].not_after);
        if (t <= 0) /* never read (or a certificate from before 1970) */
            continue;
        if (!any)
            metrics_family(b, "craft_tls_certificate_expiry_timestamp_seconds", "gauge",
                           "The earliest notAfter among the certificates of a file the member "
                           "serves or dials with (client, client-ca, peer, peer-ca), in Unix "
                           "seconds.");
        any = true;
        const char *labels[] = {"file", ce->f[i].label, NULL};
        metrics_sample_u64(b, "craft_tls_certificate_expiry_timestamp_seconds", labels,
                           (uint64_t)t);
    }
}
