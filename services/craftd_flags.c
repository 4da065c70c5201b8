/* craftd_flags.c: craftd's command line (see craftd_flags.h). */
#include "services/craftd_flags.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

enum kind { STR, UINT, BOOL, DUR }; /* DUR: a Go duration ("10m", "1m30s", "500ms"), kept in ms */

struct flag {
    const char *name;
    enum kind kind;
    size_t off;         /* into struct craftd_config */
    unsigned width;     /* UINT: 4 or 8 bytes */
    uint64_t min, max;  /* UINT bounds */
    const char *def;    /* default, as text */
    const char *help;
};

#define F(field) offsetof(struct craftd_config, field)
#define U4(field) F(field), 4
#define U8(field) F(field), 8

/* The raw URL strings are parsed after every flag is read. */
struct raw {
    const char *listen_client, *advertise_client, *listen_peer, *advertise_peer;
    const char *listen_metrics;
    bool client_cert_auth, peer_client_cert_auth;
};

static const struct flag flags[] = {
    {"name", STR, F(name), 0, 0, 0, "default", "member name, as in --initial-cluster"},
    {"data-dir", STR, F(data_dir), 0, 0, 0, "NAME.craft", "directory for the log and state"},
    {"listen-client-urls", STR, 0, 0, 0, 0, "https://127.0.0.1:2379", "client API address (one URL)"},
    {"advertise-client-urls", STR, 0, 0, 0, 0, "= --listen-client-urls", "client URL told to peers and clients"},
    {"listen-peer-urls", STR, 0, 0, 0, 0, "https://127.0.0.1:2380", "peer address (one URL)"},
    {"initial-advertise-peer-urls", STR, 0, 0, 0, 0, "= --listen-peer-urls", "this member's peer URL; must match --initial-cluster"},
    {"initial-cluster", STR, F(initial_cluster), 0, 0, 0, "NAME=ADVERTISED-PEER-URL", "every member: name=https://host:port,..."},
    {"initial-cluster-state", STR, F(initial_cluster_state), 0, 0, 0, "new", "new (start a new cluster) or existing (join a running one that has added this member)"},
    {"initial-cluster-token", STR, F(initial_cluster_token), 0, 0, 0, "craft-cluster", "distinguishes clusters with the same members"},
    {"cert-file", STR, F(cert_file), 0, 0, 0, "", "client API certificate (PEM)"},
    {"key-file", STR, F(key_file), 0, 0, 0, "", "client API key (PEM)"},
    {"trusted-ca-file", STR, F(trusted_ca_file), 0, 0, 0, "", "CA that client certificates must chain to"},
    {"client-cert-auth", BOOL, 0, 0, 0, 0, "true", "require client certificates (craft: always true)"},
    {"peer-cert-file", STR, F(peer_cert_file), 0, 0, 0, "", "peer certificate (PEM); must name this member"},
    {"peer-key-file", STR, F(peer_key_file), 0, 0, 0, "", "peer key (PEM)"},
    {"peer-trusted-ca-file", STR, F(peer_trusted_ca_file), 0, 0, 0, "", "CA that peer certificates must chain to"},
    {"client-crl-file", STR, F(client_crl_file), 0, 0, 0, "", "PEM certificate revocation list(s) for client certificates, signed by --trusted-ca-file's CA; a revoked client is refused in the handshake (client listener and https metrics listener); re-read with the certificates"},
    {"peer-crl-file", STR, F(peer_crl_file), 0, 0, 0, "", "PEM certificate revocation list(s) for peer certificates, signed by --peer-trusted-ca-file's CA; checked both ways"},
    {"peer-cert-allowed-cn", STR, F(peer_cert_allowed_cn), 0, 0, 0, "", "comma-separated subject CNs a peer's certificate must have one of, checked in the handshake both ways, on top of naming its member"},
    {"peer-cert-allowed-hostname", STR, F(peer_cert_allowed_hostname), 0, 0, 0, "", "comma-separated names a peer's certificate must carry one of as a DNS or IP SAN, checked in the handshake both ways (not with --peer-cert-allowed-cn)"},
    {"peer-client-cert-auth", BOOL, 0, 0, 0, 0, "true", "require peer certificates (craft: always true)"},
    {"heartbeat-interval", UINT, U4(heartbeat_ms), 1, 60000, "100", "ms between leader heartbeats"},
    {"election-timeout", UINT, U4(election_ms), 2, 600000, "1000", "ms without a leader before an election"},
    {"max-request-bytes", UINT, U8(max_request_bytes), 1024, (32u << 20) - 1024, "1572864", "largest client request"},
    {"quota-backend-bytes", UINT, U8(quota_backend_bytes), 1u << 20, 1ull << 40, "2147483648", "largest size of the KV data file"},
    {"max-txn-ops", UINT, U4(max_txn_ops), 1, 1u << 20, "128", "operations per Txn"},
    {"experimental-watch-progress-notify-interval", DUR, U8(watch_progress_ms), 1, 86400000, "10m0s", "progress notifications to watches that asked for them (1ms .. 24h)"},
    {"insecure-plaintext", BOOL, F(insecure_plaintext), 0, 0, 0, "false", "allow http:// URLs (tests and demos only)"},
    {"proposal-timeout", UINT, U4(proposal_timeout_ms), 1, 600000, "5000", "ms a write may wait to commit"},
    {"max-append-entries", UINT, U4(max_append_entries), 1, 1u << 20, "64", "entries per AppendEntries"},
    {"max-append-bytes", UINT, U8(max_append_bytes), 1024, 64u << 20, "1048576", "payload bytes per AppendEntries"},
    {"max-inflight-msgs", UINT, U4(max_inflight_msgs), 1, 1u << 16, "64", "AppendEntries in flight per follower (1 = no pipelining)"},
    {"max-inflight-bytes", UINT, U8(max_inflight_bytes), 1024, 1ull << 34, "16777216", "payload bytes in flight per follower"},
    {"max-pending", UINT, U4(max_pending), 1, 1u << 24, "65536", "writes accepted but not yet applied"},
    {"wal-segment-bytes", UINT, U8(wal_segment_bytes), 1u << 16, 1ull << 32, "67108864", "log segment size"},
    {"backend-sync-interval", UINT, U4(backend_sync_ms), 0, 60000, "100", "ms the KV store may hold applied writes unsynced (the log has them; 0 = sync every batch)"},
    {"peer-send-timeout", UINT, U4(peer_send_timeout_ms), 1, 60000, "50", "ms a replicator waits for room in a peer's stream"},
    {"server-threads", UINT, U4(server_threads), 1, 64, "2", "gRPC completion-queue threads per listener"},
    {"snapshot-count", UINT, U8(snapshot_count), 1, 1ull << 32, "10000", "applied entries between snapshots (then the log before them is compacted)"},
    {"snapshot-log-percent", UINT, U4(snapshot_log_percent), 0, 10000, "50", "a snapshot also waits until the log applied since the last one is this percent of its size (bounds the cost of dumping a large store; 0 = --snapshot-count only)"},
    {"snapshot-log-max-bytes", UINT, U8(snapshot_log_max_bytes), 0, 1ull << 40, "67108864", "--snapshot-log-percent waits for at most this much log (it is kept in memory and replayed at restart; 0 = no cap)"},
    {"snapshot-catchup-entries", UINT, U8(snapshot_catchup_entries), 1, 1ull << 32, "5000", "entries kept before a snapshot for followers a little behind"},
    {"max-snapshots", UINT, U4(max_snapshots), 1, 10000, "5", "snapshot files kept in <data-dir>/snap"},
    {"max-snapshot-sends", UINT, U4(max_snapshot_sends), 1, 64, "2", "snapshot transfers to followers at once"},
    {"snapshot-chunk-bytes", UINT, U4(snapshot_chunk_bytes), 4096, 8u << 20, "1048576", "bytes per snapshot transfer call"},
    {"auto-compaction-mode", STR, F(auto_compaction_mode_text), 0, 0, 0, "periodic", "periodic (keep --auto-compaction-retention of time) or revision (keep that many revisions)"},
    {"auto-compaction-retention", STR, F(auto_compaction_retention_text), 0, 0, 0, "0", "history to keep: a duration (1h, 30m; a bare number = hours) or revisions; 0 = no automatic compaction"},
    {"snapshot-send-rate", UINT, U8(snapshot_send_rate), 0, 1ull << 40, "33554432", "bytes per second of one snapshot transfer (0 = unbounded)"},
    {"max-watches-per-stream", UINT, U4(max_watches_per_stream), 1, 1u << 20, "1024", "watches on one Watch stream"},
    {"max-watch-stream-bytes", UINT, U8(max_watch_stream_bytes), 65536, 1ull << 34, "8388608", "bytes of watch responses queued on one stream before its watches fall back to catching up"},
    {"max-watch-bytes", UINT, U8(max_watch_bytes), 1u << 20, 1ull << 40, "268435456", "bytes of watch responses queued on all streams together: each stream may queue an equal share (at most --max-watch-stream-bytes) before its watches fall back to catching up"},
    {"max-watch-hub-bytes", UINT, U8(max_watch_hub_bytes), 1u << 20, 1ull << 36, "67108864", "encoded events held for one revision across all caught-up watches"},
    {"listen-metrics-urls", STR, 0, 0, 0, 0, "", "comma-separated URLs serving /metrics, /health and /version (https:// with the client certificate flags and client certificates required; http:// is plaintext, served only when listed)"},
    {"max-metrics-connections", UINT, U4(max_metrics_connections), 1, 4096, "64", "connections at once on each metrics URL; more are closed at once"},
    {"max-metrics-request-bytes", UINT, U4(max_metrics_request_bytes), 256, 1u << 20, "8192", "request line and headers of a metrics request"},
    {"metrics-timeout", DUR, U8(metrics_timeout_ms), 1000, 3600000, "10s", "a metrics connection idle, or stalled reading or writing, this long is closed (1s .. 1h, whole seconds)"},
    {"logger", STR, F(logger_text), 0, 0, 0, "zap", "zap (JSON lines) or capnslog (plain text)"},
    {"log-level", STR, F(log_level_text), 0, 0, 0, "info", "debug, info, warn, error, panic or fatal"},
    {"log-outputs", STR, F(log_outputs), 0, 0, 0, "default", "default (= stderr), stderr, stdout or file paths, comma-separated (at most 8)"},
    {"max-log-line-bytes", UINT, U4(max_log_line_bytes), LOG_LINE_MIN, LOG_LINE_MAX, "4096", "longest log line; longer ones are cut and marked ...(truncated)"},
    {"log-rate-limit-interval", DUR, U8(log_rate_limit_interval_ms), 1, 3600000, "10s", "window of the repeated-warning limit (1ms .. 1h)"},
    {"log-rate-limit-burst", UINT, U4(log_rate_limit_burst), 1, 1000000, "3", "repeated warnings (peer unreachable, slow fdatasync, TLS handshake failures) written per call site and peer per window; the rest are counted"},
    {"experimental-warning-apply-duration", DUR, U8(warning_apply_ms), 1, 3600000, "100ms", "applying entries that takes longer is logged (\"apply request took too long\")"},
    {"warning-fdatasync-duration", DUR, U8(warning_fdatasync_ms), 1, 3600000, "1s", "a log fdatasync that takes longer is logged (\"slow fdatasync\")"},
    {"lease-revoke-rate", UINT, U4(lease_revoke_rate), 1, 1u << 20, "1000", "expired leases the leader revokes per second (etcd's fixed rate)"},
    {"experimental-enable-lease-checkpoint", BOOL, F(lease_checkpoint), 0, 0, 0, "true", "record remaining lease TTLs through Raft, so a leader change or restart does not start long leases over"},
    {"experimental-lease-checkpoint-interval", DUR, U8(lease_checkpoint_ms), 1000, 86400000, "5m0s", "how often each lease longer than this is checkpointed (1s .. 24h)"},
    {"max-lease-keepalive-inflight", UINT, U4(max_lease_keepalive_inflight), 1, 1u << 16, "1024", "keep-alive requests of one stream being renewed at once; beyond, the stream is not read"},
    {"max-lease-keepalive-streams", UINT, U4(max_lease_keepalive_streams), 1, 1u << 20, "10000", "LeaseKeepAlive streams at once on this member"},
    {"max-concurrent-streams", UINT, U4(max_concurrent_streams), 1, 1u << 24, "1024", "calls (streams) at once on one client connection; more wait in the client (etcd's default: unbounded)"},
    {"handshake-timeout", DUR, U8(handshake_timeout_ms), 100, 600000, "10s", "a connection to either listener that has not finished its TLS and HTTP/2 handshakes this long after accept is closed (100ms .. 10m)"},
    {"cipher-suites", STR, F(cipher_suites), 0, 0, 0, "", "comma-separated TLS 1.2 cipher suites (IANA names, as etcd's) for every listener and peer connection; empty = gRPC's list of ECDHE AEAD suites. TLS 1.3 suites are not configurable"},
    {"tls-expiry-warning", DUR, U8(tls_expiry_warning_ms), 0, 8760ull * 3600000, "720h", "a certificate file (client, peer, or their CA) that expires within this is logged at start and then once a day (0s = never); craft_tls_certificate_expiry_timestamp_seconds has every file's expiry either way"},
    {"tls-reload-interval", DUR, U8(tls_reload_ms), 0, 86400000, "5s", "how often the certificate, key, CA and CRL files of the client, peer and metrics listeners and of peer connections are checked for changes, taken for new handshakes without a restart if they pass the start-up checks (whole seconds, rounded up; 0 = read once at start)"},
    {"max-grpc-memory-bytes", UINT, U8(max_grpc_memory_bytes), 64u << 20, 1ull << 40, "268435456", "gRPC's memory (connections, HTTP/2 state, calls) per listener; under pressure idle connections get GOAWAY, then calls are cancelled"},
};
#define N_FLAGS (sizeof flags / sizeof flags[0])

/* etcd's --auto-compaction-retention: for the periodic mode a Go duration ("1h", "30m", "90s",
 * "1h30m", "500ms") or a bare whole number of hours, for the revision mode a whole number of
 * revisions. *out = milliseconds or revisions (0 = off). 0, or -1 with a reason. */
#define HOUR_MS (3600ull * 1000)

static int parse_duration(const char *v, uint64_t *ms);

static int bad_retention(char *err, size_t errlen, const char *text, const char *want)
{
    snprintf(err, errlen, "--auto-compaction-retention '%s': %s", text, want);
    return -1;
}

static int parse_retention(bool revision_mode, const char *text, uint64_t *out, char *err, size_t errlen)
{
    const uint64_t max_ms = 10ull * 366 * 24 * HOUR_MS; /* ten years: plenty, no overflow */
    const char *p = text;
    if (!p || !*p)
        return bad_retention(err, errlen, "", "empty");
    bool digits_only = strspn(p, "0123456789") == strlen(p);
    if (revision_mode || digits_only) {
        if (!digits_only || strlen(p) > 15)
            return bad_retention(err, errlen, text,
                                 revision_mode ? "the revision mode wants a whole number of "
                                                 "revisions (at most 15 digits)"
                                               : "too large");
        uint64_t n = strtoull(p, NULL, 10);
        if (!revision_mode) { /* etcd: a bare number is hours */
            if (n > max_ms / HOUR_MS)
                return bad_retention(err, errlen, text, "more than ten years");
            n *= HOUR_MS;
        }
        *out = n;
        return 0;
    }
    /* A Go duration: the same grammar as every duration flag (parse_duration). */
    uint64_t total;
    if (parse_duration(p, &total) != 0)
        return bad_retention(err, errlen, text,
                             "want a duration such as 1h, 30m, 90s, 1h30m or 500ms, or a whole "
                             "number of hours (each number takes one of the units h, m, s, ms; "
                             "an unknown unit or a missing number is refused)");
    if (total > max_ms)
        return bad_retention(err, errlen, text, "more than ten years");
    *out = total;
    return 0;
}

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

void craftd_flags_usage(FILE *out)
{
    fprintf(out, "usage: craftd [flags]   (--flag value or --flag=value)\n\n");
    for (size_t i = 0; i < N_FLAGS; i++)
        fprintf(out, "  --%-28s %s (default %s)\n", flags[i].name, flags[i].help, flags[i].def);
}

static int parse_bool(const char *v, bool *out)
{
    if (!strcmp(v, "true") || !strcmp(v, "1"))
        *out = true;
    else if (!strcmp(v, "false") || !strcmp(v, "0"))
        *out = false;
    else
        return -1;
    return 0;
}

/* A Go duration (time.ParseDuration, whole numbers): one or more NUMBER UNIT with UNIT ms, s,
 * m or h; into milliseconds. */
static int parse_duration(const char *v, uint64_t *ms)
{
    uint64_t total = 0;
    const char *p = v;
    if (!*p)
        return -1;
    while (*p) {
        if (*p < '0' || *p > '9')
            return -1;
        char *end;
        errno = 0;
        unsigned long long n = strtoull(p, &end, 10);
        if (errno || n > 1000000000ull)
            return -1;
        uint64_t unit;
        if (!strncmp(end, "ms", 2)) {
            unit = 1;
            end += 2;
        } else if (*end == 's') {
            unit = 1000;
            end++;
        } else if (*end == 'm') {
            unit = 60000;
            end++;
        } else if (*end == 'h') {
            unit = 3600000;
            end++;
        } else {
            return -1;
        }
        total += n * unit;
        if (total > 1ull << 50)
            return -1;
        p = end;
    }
    *ms = total;
    return 0;
}

/* A flag bound in milliseconds as text: "1ms", "1s", "24h". */
static void dur_text(uint64_t ms, char *out, size_t len)
{
    unsigned long long v = (unsigned long long)ms;
    if (v && v % 3600000 == 0)
        snprintf(out, len, "%lluh", v / 3600000);
    else if (v && v % 60000 == 0)
        snprintf(out, len, "%llum", v / 60000);
    else if (v && v % 1000 == 0)
        snprintf(out, len, "%llus", v / 1000);
    else
        snprintf(out, len, "%llums", v);
}

static int set_flag(const struct flag *f, const char *v, struct craftd_config *cfg, struct raw *raw,
                    char *err, size_t errlen)
{
    char *base = (char *)cfg;
    if (!strcmp(f->name, "listen-client-urls"))
        raw->listen_client = v;
    else if (!strcmp(f->name, "advertise-client-urls"))
        raw->advertise_client = v;
    else if (!strcmp(f->name, "listen-peer-urls"))
        raw->listen_peer = v;
    else if (!strcmp(f->name, "initial-advertise-peer-urls"))
        raw->advertise_peer = v;
    else if (!strcmp(f->name, "listen-metrics-urls"))
        raw->listen_metrics = v;
    else if (f->kind == STR)
        *(const char **)(base + f->off) = v;
    else if (f->kind == BOOL) {
        bool b;
        if (parse_bool(v, &b) != 0)
            return fail(err, errlen, "--%s wants true or false, not '%s'", f->name, v);
        if (!strcmp(f->name, "client-cert-auth"))
            raw->client_cert_auth = b;
        else if (!strcmp(f->name, "peer-client-cert-auth"))
            raw->peer_client_cert_auth = b;
        else
            *(bool *)(base + f->off) = b;
    } else if (f->kind == DUR) {
        uint64_t ms;
        if (parse_duration(v, &ms) != 0 || ms < f->min || ms > f->max) {
            char lo[24], hi[24];
            dur_text(f->min, lo, sizeof lo);
            dur_text(f->max, hi, sizeof hi);
            return fail(err, errlen, "--%s wants a duration such as 10m, 30s or 500ms (%s to %s), "
                                     "not '%s'",
                        f->name, lo, hi, v);
        }
        *(uint64_t *)(base + f->off) = ms;
    } else {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(v, &end, 10);
        if (!*v || *end || errno || v[0] == '-' || n < f->min || n > f->max)
            return fail(err, errlen, "--%s wants a whole number from %llu to %llu, not '%s'",
                        f->name, (unsigned long long)f->min, (unsigned long long)f->max, v);
        if (f->width == 4)
            *(uint32_t *)(base + f->off) = (uint32_t)n;
        else
            *(uint64_t *)(base + f->off) = n;
    }
    return 0;
}

/* Only one URL per listener for now: gRPC listens on one address per rpc_server. */
static int one_url(const char *flag, const char *v, struct cluster_url *u, char *err, size_t errlen)
{
    if (strchr(v, ','))
        return fail(err, errlen, "--%s: craft takes one URL here, not a list ('%s')", flag, v);
    char uerr[256];
    if (cluster_parse_url(v, u, uerr, sizeof uerr) != 0)
        return fail(err, errlen, "--%s: %s", flag, uerr);
    return 0;
}

/* --listen-metrics-urls: "url[,url...]", each parsed; https:// ones need the client TLS files. */
static int metrics_urls(const char *v, struct craftd_config *cfg, char *err, size_t errlen)
{
    const char *p = v;
    cfg->n_listen_metrics = 0;
    while (*p) {
        size_t n = strcspn(p, ",");
        if (n == 0)
            return fail(err, errlen, "--listen-metrics-urls: an empty URL in '%s'", v);
        if (cfg->n_listen_metrics == CRAFTD_MAX_METRICS_URLS)
            return fail(err, errlen, "--listen-metrics-urls: at most %d URLs",
                        CRAFTD_MAX_METRICS_URLS);
        char one[512], uerr[256];
        if (n >= sizeof one)
            return fail(err, errlen, "--listen-metrics-urls: a URL is too long");
        memcpy(one, p, n);
        one[n] = '\0';
        struct cluster_url *u = &cfg->listen_metrics[cfg->n_listen_metrics];
        if (cluster_parse_url(one, u, uerr, sizeof uerr) != 0)
            return fail(err, errlen, "--listen-metrics-urls: %s", uerr);
        if (u->tls && (!cfg->cert_file || !*cfg->cert_file || !cfg->key_file ||
                       !*cfg->key_file || !cfg->trusted_ca_file || !*cfg->trusted_ca_file))
            return fail(err, errlen, "--listen-metrics-urls has https:// URLs: --cert-file, "
                                     "--key-file and --trusted-ca-file are required");
        cfg->n_listen_metrics++;
        p += n;
        if (*p == ',' && !*++p)
            return fail(err, errlen, "--listen-metrics-urls: an empty URL in '%s'", v);
    }
    return 0;
}

static int check_tls(const char *what, bool tls, bool insecure, const char *cert, const char *key,
                     const char *ca, const char *flagprefix, char *err, size_t errlen)
{
    if (!tls && !insecure)
        return fail(err, errlen,
                    "%s URLs are http://: plaintext is refused unless --insecure-plaintext is given",
                    what);
    if (tls && (!cert || !*cert || !key || !*key || !ca || !*ca))
        return fail(err, errlen, "%s URLs are https://: --%scert-file, --%skey-file and "
                                 "--%strusted-ca-file are required",
                    what, flagprefix, flagprefix, flagprefix);
    return 0;
}

int craftd_flags_parse(int argc, char **argv, struct craftd_config *cfg, char *err, size_t errlen)
{
    memset(cfg, 0, sizeof *cfg);
    struct raw raw = {.client_cert_auth = true, .peer_client_cert_auth = true};
    cfg->name = "default";
    cfg->initial_cluster_state = "new";
    cfg->initial_cluster_token = "craft-cluster";
    cfg->heartbeat_ms = 100;
    cfg->election_ms = 1000;
    cfg->max_request_bytes = 1572864; /* etcd's 1.5 MiB */
    cfg->quota_backend_bytes = 2ull << 30;
    cfg->max_txn_ops = 128;
    cfg->proposal_timeout_ms = 5000;
    cfg->max_append_entries = 64;
    cfg->max_append_bytes = 1u << 20;
    cfg->max_inflight_msgs = 64;
    cfg->max_inflight_bytes = 16u << 20;
    cfg->max_pending = 65536;
    cfg->wal_segment_bytes = 64u << 20;
    cfg->backend_sync_ms = 100;
    cfg->peer_send_timeout_ms = 50;
    cfg->server_threads = 2;
    cfg->snapshot_count = 10000;
    cfg->snapshot_catchup_entries = 5000;
    cfg->snapshot_log_percent = 50;
    cfg->snapshot_log_max_bytes = 64u << 20;
    cfg->max_snapshots = 5;
    cfg->max_snapshot_sends = 2;
    cfg->snapshot_chunk_bytes = 1u << 20;
    cfg->snapshot_send_rate = 32u << 20;
    cfg->watch_progress_ms = 10 * 60 * 1000; /* etcd's 10m */
    cfg->max_watches_per_stream = 1024;
    cfg->max_watch_stream_bytes = 8u << 20;
    cfg->max_watch_bytes = 256u << 20;
    cfg->max_watch_hub_bytes = 64u << 20;
    cfg->auto_compaction_mode_text = "periodic";
    cfg->auto_compaction_retention_text = "0";
    cfg->max_metrics_connections = 64;
    cfg->max_metrics_request_bytes = 8192;
    cfg->metrics_timeout_ms = 10000;
    cfg->logger_text = "zap";
    cfg->log_level_text = "info";
    cfg->log_outputs = "default";
    cfg->max_log_line_bytes = LOG_DEFAULT_LINE_BYTES;
    cfg->log_rate_limit_interval_ms = LOG_DEFAULT_REPEAT_INTERVAL_MS;
    cfg->log_rate_limit_burst = LOG_DEFAULT_REPEAT_BURST;
    cfg->warning_apply_ms = 100;    /* etcd's */
    cfg->warning_fdatasync_ms = 1000; /* etcd's warnSyncDuration */
    cfg->lease_revoke_rate = 1000;
    cfg->lease_checkpoint = true;
    cfg->lease_checkpoint_ms = 5 * 60 * 1000;
    cfg->max_lease_keepalive_inflight = 1024;
    cfg->max_lease_keepalive_streams = 10000;
    cfg->max_concurrent_streams = 1024;
    cfg->handshake_timeout_ms = 10000;
    cfg->tls_reload_ms = 5000;
    cfg->tls_expiry_warning_ms = 720ull * 3600000; /* 30 days */
    cfg->max_grpc_memory_bytes = 256u << 20;
    raw.listen_client = "https://127.0.0.1:2379";
    raw.listen_peer = "https://127.0.0.1:2380";

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            craftd_flags_usage(stdout);
            return 1;
        }
        if (!strcmp(a, "--version")) {
            printf("craftd 0.1.0 (etcd API 3.4 compatible target)\n");
            return 1;
        }
        if (strncmp(a, "--", 2) != 0 && !(a[0] == '-' && a[1] && a[1] != '-'))
            return fail(err, errlen, "unexpected argument '%s' (flags start with --)", a);
        const char *name = a + (a[1] == '-' ? 2 : 1); /* etcd (Go) accepts -flag too */
        const char *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const struct flag *f = NULL;
        for (size_t k = 0; k < N_FLAGS; k++)
            if (strlen(flags[k].name) == nlen && !strncmp(flags[k].name, name, nlen))
                f = &flags[k];
        if (!f)
            return fail(err, errlen, "unknown flag '--%.*s' (see craftd --help)", (int)nlen, name);
        const char *v;
        if (eq)
            v = eq + 1;
        else if (f->kind == BOOL && (i + 1 >= argc || parse_bool(argv[i + 1], &(bool){0}) != 0))
            v = "true"; /* a bare boolean flag */
        else if (i + 1 < argc)
            v = argv[++i];
        else
            return fail(err, errlen, "flag --%s needs a value", f->name);
        if (set_flag(f, v, cfg, &raw, err, errlen) != 0)
            return -1;
    }

    if (!raw.client_cert_auth || !raw.peer_client_cert_auth)
        return fail(err, errlen, "craft always requires client certificates on https:// "
                                 "listeners; --client-cert-auth=false and "
                                 "--peer-client-cert-auth=false are not supported");
    if (!raw.advertise_client)
        raw.advertise_client = raw.listen_client;
    if (!raw.advertise_peer)
        raw.advertise_peer = raw.listen_peer;
    if (one_url("listen-client-urls", raw.listen_client, &cfg->listen_client, err, errlen) ||
        one_url("advertise-client-urls", raw.advertise_client, &cfg->advertise_client, err, errlen) ||
        one_url("listen-peer-urls", raw.listen_peer, &cfg->listen_peer, err, errlen) ||
        one_url("initial-advertise-peer-urls", raw.advertise_peer, &cfg->advertise_peer, err,
                errlen))
        return -1;
    cfg->advertise_client_urls = raw.advertise_client;
    if (cfg->listen_client.tls != cfg->advertise_client.tls ||
        cfg->listen_peer.tls != cfg->advertise_peer.tls)
        return fail(err, errlen, "listen and advertise URLs must use the same scheme");
    if (check_tls("client", cfg->listen_client.tls, cfg->insecure_plaintext, cfg->cert_file,
                  cfg->key_file, cfg->trusted_ca_file, "", err, errlen) ||
        check_tls("peer", cfg->listen_peer.tls, cfg->insecure_plaintext, cfg->peer_cert_file,
                  cfg->peer_key_file, cfg->peer_trusted_ca_file, "peer-", err, errlen))
        return -1;
    if (cfg->peer_cert_allowed_cn && *cfg->peer_cert_allowed_cn &&
        cfg->peer_cert_allowed_hostname && *cfg->peer_cert_allowed_hostname)
        return fail(err, errlen, "--peer-cert-allowed-cn and --peer-cert-allowed-hostname are "
                                 "mutually exclusive (as in etcd)");
    if (raw.listen_metrics && metrics_urls(raw.listen_metrics, cfg, err, errlen) != 0)
        return -1;
    /* etcd's words (Go's flag package), then which values. */
    if (log_parse_logger(cfg->logger_text, &cfg->log_format) != 0)
        return fail(err, errlen, "invalid value \"%s\" for flag -logger: want zap or capnslog",
                    cfg->logger_text);
    if (log_parse_level(cfg->log_level_text, &cfg->log_level) != 0)
        return fail(err, errlen,
                    "invalid value \"%s\" for flag -log-level: want debug, info, warn, error, "
                    "panic or fatal",
                    cfg->log_level_text);
    if (log_check_outputs(cfg->log_outputs, err, errlen) != 0)
        return -1;
    if (cfg->metrics_timeout_ms % 1000)
        return fail(err, errlen, "--metrics-timeout wants whole seconds, not %llu ms",
                    (unsigned long long)cfg->metrics_timeout_ms);
    if (strcmp(cfg->auto_compaction_mode_text, "periodic") &&
        strcmp(cfg->auto_compaction_mode_text, "revision"))
        return fail(err, errlen, "--auto-compaction-mode wants periodic or revision, not '%s'",
                    cfg->auto_compaction_mode_text);
    cfg->auto_compaction_revision = !strcmp(cfg->auto_compaction_mode_text, "revision");
    if (parse_retention(cfg->auto_compaction_revision, cfg->auto_compaction_retention_text,
                        &cfg->auto_compaction_retention, err, errlen))
        return -1;
    /* A log entry must fit twice in a segment (the runtime refuses otherwise, raft/node/node.h). */
    if (cfg->wal_segment_bytes < 2 * (cfg->max_request_bytes + 1024))
        return fail(err, errlen,
                    "--wal-segment-bytes (%llu) must be at least twice --max-request-bytes (%llu) "
                    "plus framing",
                    (unsigned long long)cfg->wal_segment_bytes,
                    (unsigned long long)cfg->max_request_bytes);
    /* Below a few requests' worth, gRPC would cancel ordinary large calls under pressure. */
    if (cfg->max_grpc_memory_bytes < 4 * (cfg->max_request_bytes + (512u << 10)))
        return fail(err, errlen,
                    "--max-grpc-memory-bytes (%llu) must be at least four times "
                    "--max-request-bytes (%llu) plus 512 KiB",
                    (unsigned long long)cfg->max_grpc_memory_bytes,
                    (unsigned long long)cfg->max_request_bytes);
    /* etcd's own words (Go's flag package over etcd's SelectiveStringValue), then which values. */
    if (strcmp(cfg->initial_cluster_state, "new") && strcmp(cfg->initial_cluster_state, "existing"))
        return fail(err, errlen,
                    "invalid value \"%s\" for flag -initial-cluster-state: invalid value (want "
                    "new or existing)",
                    cfg->initial_cluster_state);
    cfg->join_existing = strcmp(cfg->initial_cluster_state, "existing") == 0;
    if (cfg->election_ms < 2 * cfg->heartbeat_ms)
        return fail(err, errlen,
                    "--election-timeout (%u ms) must be at least twice --heartbeat-interval (%u ms)",
                    cfg->election_ms, cfg->heartbeat_ms);

    if (!cfg->initial_cluster) {
        snprintf(cfg->default_cluster, sizeof cfg->default_cluster, "%s=%s", cfg->name,
                 raw.advertise_peer);
        cfg->initial_cluster = cfg->default_cluster;
    }
    char cerr[400];
    if (cluster_parse(cfg->initial_cluster, cfg->initial_cluster_token, &cfg->cluster, cerr,
                      sizeof cerr) != 0)
        return fail(err, errlen, "%s", cerr);
    const struct cluster_member *self = cluster_find_name(&cfg->cluster, cfg->name);
    if (!self)
        return fail(err, errlen, "--name '%s' is not a member of --initial-cluster", cfg->name);
    const struct cluster_url *a = &cfg->advertise_peer, *b = &self->peer_url;
    if (a->port != b->port || strcmp(a->host, b->host) != 0 || a->tls != b->tls)
        return fail(err, errlen,
                    "--initial-advertise-peer-urls (%s) disagrees with %s's entry in "
                    "--initial-cluster",
                    raw.advertise_peer, cfg->name);
    for (size_t i = 0; i < cfg->cluster.n; i++)
        if (cfg->cluster.members[i].peer_url.tls != cfg->listen_peer.tls)
            return fail(err, errlen, "--initial-cluster mixes http:// and https:// peer URLs");
    cfg->self_id = self->id;

    if (!cfg->data_dir || !*cfg->data_dir) {
        snprintf(cfg->default_data_dir, sizeof cfg->default_data_dir, "%s.craft", cfg->name);
        cfg->data_dir = cfg->default_data_dir;
    }
    return 0;
}
