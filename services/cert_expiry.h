/* cert_expiry.h: when the member's certificates expire (issue 20: "a certificate that expires
 * within a set time is logged each day and exported as a metric").
 *
 * What it promises:
 * - cert_expiry_earliest reads a PEM file (a certificate and its chain, or a CA bundle) and
 *   gives the earliest notAfter among its certificates, in Unix seconds: the first expiry that
 *   breaks a handshake. A file that cannot be read or holds no certificate is an error with a
 *   reason, never a crash.
 * - struct cert_expiry watches up to CERT_EXPIRY_MAX labelled files (client, client-ca, peer,
 *   peer-ca: the files craftd serves and dials with). cert_expiry_check reads them again
 *   (rotated files are picked up, as the TLS reload picks them up), stores each one's earliest
 *   notAfter for the metric, and logs a warning for each file that expires within the window or
 *   has expired: at the first check, then at most once a day per file while it stays so. An
 *   unreadable file is logged at the same pace and keeps its last good value.
 * - cert_expiry_metrics writes craft_tls_certificate_expiry_timestamp_seconds{file="LABEL"}
 *   for every file read at least once. Reading the values is lock-free (atomics): a scrape
 *   never waits for a check.
 */
#ifndef CRAFT_SERVICES_CERT_EXPIRY_H
#define CRAFT_SERVICES_CERT_EXPIRY_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "metrics/metrics.h"

#define CERT_EXPIRY_MAX 8
#define CERT_EXPIRY_WARN_EVERY_S 86400 /* a day between warnings about one file */

struct cert_expiry_file {
    const char *label, *path;  /* not copied: the caller keeps them */
    _Atomic int64_t not_after; /* 0 = never read */
    int64_t last_warn;         /* Unix seconds; 0 = never */
};

struct cert_expiry {
    struct cert_expiry_file f[CERT_EXPIRY_MAX];
    size_t n;
    uint64_t member_id; /* on log lines */
};

/* 0 and *not_after, or -1 and a reason in err. */
int cert_expiry_earliest(const char *path, int64_t *not_after, char *err, size_t errlen);

/* Adds a file to watch under label; NULL or "" path is skipped. One file under two labels (the
 * same certificate for clients and peers) is watched, and reported, under each. */
void cert_expiry_add(struct cert_expiry *ce, const char *label, const char *path);

/* One check at time now (Unix seconds): warns about files expiring within window_s (0: never
 * warn). Returns how many files are within the window or expired. */
size_t cert_expiry_check(struct cert_expiry *ce, int64_t now, int64_t window_s);

void cert_expiry_metrics(const struct cert_expiry *ce, struct metrics_buf *b);

#endif
