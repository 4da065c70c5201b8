/* craftd's command line and --initial-cluster parsing: good input gives the right config, every
 * kind of bad input a clear error naming what is wrong. */
#include <criterion/criterion.h>
#include <stdarg.h>
#include <string.h>

#include "services/cluster.h"
#include "services/craftd_flags.h"

static struct craftd_config cfg;
static char err[512];

/* Parses a NULL-terminated argument list (argv[0] supplied). */
static int parse(const char *first, ...)
{
    const char *argv[64] = {"craftd"};
    int argc = 1;
    va_list ap;
    va_start(ap, first);
    for (const char *a = first; a && argc < 63; a = va_arg(ap, const char *))
        argv[argc++] = a;
    va_end(ap);
    err[0] = '\0';
    return craftd_flags_parse(argc, (char **)argv, &cfg, err, sizeof err);
}

#define TLS_FLAGS                                                                           \
    "--cert-file", "c.pem", "--key-file", "k.pem", "--trusted-ca-file", "ca.pem",           \
        "--peer-cert-file", "c.pem", "--peer-key-file", "k.pem", "--peer-trusted-ca-file", \
        "ca.pem"
#define CLUSTER3 "n1=https://127.0.0.1:2380,n2=https://127.0.0.1:2480,n3=https://127.0.0.1:2580"

Test(flags, full_etcd_style_config)
{
    cr_assert_eq(parse("--name", "n2", "--data-dir", "/tmp/d2", "--listen-client-urls",
                       "https://127.0.0.1:2479", "--advertise-client-urls",
                       "https://127.0.0.1:2479", "--listen-peer-urls", "https://127.0.0.1:2480",
                       "--initial-advertise-peer-urls=https://127.0.0.1:2480", "--initial-cluster",
                       CLUSTER3, "--initial-cluster-state", "new", "--heartbeat-interval=50",
                       "--election-timeout", "300", "--client-cert-auth", TLS_FLAGS, NULL),
                 0, "%s", err);
    cr_assert_str_eq(cfg.name, "n2");
    cr_assert_str_eq(cfg.data_dir, "/tmp/d2");
    cr_assert_eq(cfg.listen_client.port, 2479);
    cr_assert(cfg.listen_client.tls);
    cr_assert_eq(cfg.heartbeat_ms, 50);
    cr_assert_eq(cfg.election_ms, 300);
    cr_assert_eq(cfg.cluster.n, 3);
    cr_assert_eq(cfg.self_id, cfg.cluster.members[1].id);
    cr_assert_eq(cfg.max_request_bytes, 1572864, "etcd's default request limit");
}

Test(flags, defaults_match_etcd)
{
    cr_assert_eq(parse("--initial-cluster", "default=https://127.0.0.1:2380", TLS_FLAGS, NULL), 0,
                 "%s", err);
    cr_assert_eq(cfg.heartbeat_ms, 100);
    cr_assert_eq(cfg.election_ms, 1000);
    cr_assert_str_eq(cfg.data_dir, "default.craft");
    cr_assert_eq(cfg.listen_client.port, 2379);
    cr_assert_eq(cfg.listen_peer.port, 2380);
}

static void refused(const char *want, int rc)
{
    cr_assert_eq(rc, -1, "accepted, wanted an error containing '%s'", want);
    cr_assert(strstr(err, want), "error '%s' does not mention '%s'", err, want);
}

Test(flags, bad_input_gets_clear_errors)
{
    refused("unknown flag '--bogus'", parse("--bogus", "1", NULL));
    refused("needs a value", parse("--name", NULL));
    refused("whole number", parse("--heartbeat-interval", "fast", TLS_FLAGS, NULL));
    refused("whole number", parse("--heartbeat-interval", "-5", TLS_FLAGS, NULL));
    refused("whole number", parse("--election-timeout", "99999999999", TLS_FLAGS, NULL));
    refused("at least twice", parse("--heartbeat-interval", "100", "--election-timeout", "150",
                                    TLS_FLAGS, NULL));
    refused("plaintext is refused", parse("--listen-client-urls", "http://127.0.0.1:2379",
                                          "--advertise-client-urls", "http://127.0.0.1:2379",
                                          TLS_FLAGS, NULL));
    refused("--cert-file", parse("--peer-cert-file", "c", "--peer-key-file", "k",
                                 "--peer-trusted-ca-file", "ca", NULL));
    refused("--peer-cert-file", parse("--cert-file", "c", "--key-file", "k", "--trusted-ca-file",
                                      "ca", NULL));
    refused("not a member", parse("--name", "n9", "--initial-cluster", CLUSTER3, TLS_FLAGS, NULL));
    refused("disagrees", parse("--name", "n1", "--initial-cluster", CLUSTER3,
                               "--listen-peer-urls", "https://127.0.0.1:9999", TLS_FLAGS, NULL));
    refused("invalid value \"maybe\" for flag -initial-cluster-state: invalid value",
            parse("--initial-cluster-state", "maybe", TLS_FLAGS, NULL));
    refused("(want new or existing)", parse("--initial-cluster-state=New", TLS_FLAGS, NULL));
    refused("invalid value \"\" for flag -initial-cluster-state",
            parse("--initial-cluster-state=", TLS_FLAGS, NULL));
    refused("not supported", parse("--client-cert-auth=false", TLS_FLAGS, NULL));
    refused("one URL", parse("--listen-client-urls", "https://a:1,https://b:2", TLS_FLAGS, NULL));
    refused("unexpected argument", parse("stray", NULL));
    refused("true or false", parse("--insecure-plaintext=maybe", NULL));
    refused("at least twice --max-request-bytes",
            parse("--wal-segment-bytes", "1048576", "--max-request-bytes", "1000000", TLS_FLAGS, NULL));
    refused("whole number", parse("--max-request-bytes", "67108864", TLS_FLAGS, NULL));
}

/* etcd's --initial-cluster-state: new by default; existing joins a running cluster. */
Test(flags, initial_cluster_state_new_or_existing)
{
    cr_assert_eq(parse("--initial-cluster", "default=https://127.0.0.1:2380", TLS_FLAGS, NULL), 0,
                 "%s", err);
    cr_assert_str_eq(cfg.initial_cluster_state, "new");
    cr_assert_not(cfg.join_existing);
    cr_assert_eq(parse("--name", "n3", "--initial-cluster", CLUSTER3, "--listen-peer-urls",
                       "https://127.0.0.1:2580", "--initial-cluster-state", "existing", TLS_FLAGS,
                       NULL),
                 0, "%s", err);
    cr_assert_str_eq(cfg.initial_cluster_state, "existing");
    cr_assert(cfg.join_existing);
    cr_assert_eq(parse("--initial-cluster-state=new", TLS_FLAGS, NULL), 0, "%s", err);
    cr_assert_not(cfg.join_existing);
}

Test(flags, insecure_plaintext_is_explicit)
{
    cr_assert_eq(parse("--insecure-plaintext", "--listen-client-urls", "http://127.0.0.1:2379",
                       "--listen-peer-urls", "http://127.0.0.1:2380", NULL),
                 0, "%s", err);
    cr_assert_not(cfg.listen_client.tls);
    cr_assert(cfg.insecure_plaintext);
}

Test(cluster, parses_and_derives_stable_ids)
{
    struct cluster a, b, c;
    cr_assert_eq(cluster_parse(CLUSTER3, "tok", &a, err, sizeof err), 0, "%s", err);
    cr_assert_eq(cluster_parse(CLUSTER3, "tok", &b, err, sizeof err), 0);
    cr_assert_eq(cluster_parse(CLUSTER3, "other", &c, err, sizeof err), 0);
    cr_assert_eq(a.n, 3);
    cr_assert_str_eq(a.members[2].name, "n3");
    cr_assert_str_eq(a.members[2].peer_url.host, "127.0.0.1");
    cr_assert_eq(a.members[2].peer_url.port, 2580);
    cr_assert_eq(a.id, b.id, "same flags, same cluster id");
    cr_assert_neq(a.id, c.id, "another token, another cluster");
    cr_assert_neq(a.members[0].id, c.members[0].id);
    cr_assert_neq(a.members[0].id, a.members[1].id);
    for (size_t i = 0; i < a.n; i++)
        cr_assert_neq(a.members[i].id, 0);
    /* Member order does not change the cluster id. */
    cr_assert_eq(cluster_parse("n3=https://127.0.0.1:2580,n1=https://127.0.0.1:2380,"
                               "n2=https://127.0.0.1:2480",
                               "tok", &b, err, sizeof err),
                 0);
    cr_assert_eq(a.id, b.id);
    cr_assert_eq(cluster_parse("v6=https://[::1]:2380", "tok", &b, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(b.members[0].peer_url.host, "::1");
    char t[64];
    cluster_url_target(&b.members[0].peer_url, t, sizeof t);
    cr_assert_str_eq(t, "[::1]:2380");
}

Test(cluster, refuses_bad_specs)
{
    struct cluster c;
    const char *bad[] = {"",
                         "n1",
                         "n1=",
                         "=https://h:1",
                         "n1=ftp://h:1",
                         "n1=https://h",
                         "n1=https://h:0",
                         "n1=https://h:70000",
                         "n1=https://h:12x",
                         "n1=https://h:1,n1=https://h:2",
                         "bad name=https://h:1",
                         "n1=https://[::1:1",
                         "n1=https://ho$t:1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        cr_assert_eq(cluster_parse(bad[i], "t", &c, err, sizeof err), -1, "accepted '%s'", bad[i]);
        cr_assert_neq(err[0], '\0', "no message for '%s'", bad[i]);
    }
    char many[64 * 40] = "";
    for (int i = 0; i < 65; i++) {
        char item[40];
        snprintf(item, sizeof item, "%sm%d=https://h:%d", i ? "," : "", i, 1000 + i);
        strcat(many, item);
    }
    cr_assert_eq(cluster_parse(many, "t", &c, err, sizeof err), -1);
    cr_assert(strstr(err, "more than"), "%s", err);
}

/* etcd's --auto-compaction-mode and --auto-compaction-retention: off by default; periodic takes a
 * duration or a bare number of hours, revision a number of revisions. */
Test(flags, auto_compaction)
{
    cr_assert_eq(parse(TLS_FLAGS, NULL), 0, "%s", err);
    cr_assert_eq(cfg.auto_compaction_retention, 0, "off by default, as in etcd");
    cr_assert(!cfg.auto_compaction_revision, "periodic by default, as in etcd");
    cr_assert_eq(parse("--auto-compaction-retention", "1h30m", TLS_FLAGS, NULL), 0, "%s", err);
    cr_assert_eq(cfg.auto_compaction_retention, 5400000);
    cr_assert_eq(parse("--auto-compaction-retention=2", TLS_FLAGS, NULL), 0, "%s", err);
    cr_assert_eq(cfg.auto_compaction_retention, 7200000, "a bare number is hours");
    cr_assert_eq(parse("--auto-compaction-retention=500ms", TLS_FLAGS, NULL), 0, "%s", err);
    cr_assert_eq(cfg.auto_compaction_retention, 500);
    cr_assert_eq(parse("--auto-compaction-mode", "revision", "--auto-compaction-retention",
                       "1000", TLS_FLAGS, NULL),
                 0, "%s", err);
    cr_assert(cfg.auto_compaction_revision);
    cr_assert_eq(cfg.auto_compaction_retention, 1000);
    refused("wants periodic or revision, not 'hourly'",
            parse("--auto-compaction-mode=hourly", TLS_FLAGS, NULL));
    refused("whole number of revisions", parse("--auto-compaction-mode=revision",
                                               "--auto-compaction-retention=1h", TLS_FLAGS, NULL));
    refused("unknown unit", parse("--auto-compaction-retention=5d", TLS_FLAGS, NULL));
    refused("want a duration", parse("--auto-compaction-retention=h", TLS_FLAGS, NULL));
    refused("want a duration", parse("--auto-compaction-retention=-1h", TLS_FLAGS, NULL));
    refused("more than ten years", parse("--auto-compaction-retention=99999999h", TLS_FLAGS, NULL));
    refused("empty", parse("--auto-compaction-retention=", TLS_FLAGS, NULL));
}

/* Watch: etcd's --experimental-watch-progress-notify-interval (a Go duration, 10m by default) and
 * craft's bounds. */
/* --tls-expiry-warning: a duration, 30 days by default, 0s = never, at most a year. */
Test(flags, tls_expiry_warning)
{
    cr_assert_eq(parse(TLS_FLAGS, NULL), 0, "%s", err);
    cr_assert_eq(cfg.tls_expiry_warning_ms, 720ull * 3600000);
    cr_assert_eq(parse("--tls-expiry-warning=0s", TLS_FLAGS, NULL), 0, "%s", err);
    cr_assert_eq(cfg.tls_expiry_warning_ms, 0);
    cr_assert_eq(parse("--tls-expiry-warning", "168h", TLS_FLAGS, NULL), 0, "%s", err);
    cr_assert_eq(cfg.tls_expiry_warning_ms, 168ull * 3600000);
    refused("wants a duration", parse("--tls-expiry-warning=30", TLS_FLAGS, NULL));
    refused("wants a duration", parse("--tls-expiry-warning=9000h", TLS_FLAGS, NULL));
}

Test(flags, watch)
{
    cr_assert_eq(parse(TLS_FLAGS, NULL), 0, "%s", err);
    cr_assert_eq(cfg.watch_progress_ms, 600000, "etcd's 10m");
    cr_assert_eq(cfg.max_watches_per_stream, 1024);
    cr_assert_eq(cfg.max_watch_stream_bytes, 8u << 20);
    cr_assert_eq(cfg.max_watch_hub_bytes, 64u << 20);
    cr_assert_eq(cfg.max_watch_bytes, 256u << 20);
    cr_assert_eq(parse("--experimental-watch-progress-notify-interval", "1m30s", TLS_FLAGS, NULL),
                 0, "%s", err);
    cr_assert_eq(cfg.watch_progress_ms, 90000);
    cr_assert_eq(parse("--experimental-watch-progress-notify-interval=250ms", TLS_FLAGS, NULL), 0,
                 "%s", err);
    cr_assert_eq(cfg.watch_progress_ms, 250);
    cr_assert_eq(parse("--max-watches-per-stream=5", "--max-watch-stream-bytes=65536",
                       "--max-watch-hub-bytes=1048576", "--max-watch-bytes=2097152", TLS_FLAGS,
                       NULL),
                 0, "%s", err);
    cr_assert_eq(cfg.max_watch_bytes, 2097152);
    cr_assert_eq(cfg.max_watches_per_stream, 5);
    cr_assert_eq(cfg.max_watch_stream_bytes, 65536);
    cr_assert_eq(cfg.max_watch_hub_bytes, 1048576);
    refused("wants a duration", parse("--experimental-watch-progress-notify-interval=10", TLS_FLAGS, NULL));
    refused("wants a duration", parse("--experimental-watch-progress-notify-interval=0s", TLS_FLAGS, NULL));
    refused("wants a duration", parse("--experimental-watch-progress-notify-interval=25h", TLS_FLAGS, NULL));
    refused("wants a duration", parse("--experimental-watch-progress-notify-interval=1x", TLS_FLAGS, NULL));
    refused("wants a duration", parse("--experimental-watch-progress-notify-interval=", TLS_FLAGS, NULL));
    refused("from 1 to", parse("--max-watches-per-stream=0", TLS_FLAGS, NULL));
    refused("from 65536", parse("--max-watch-stream-bytes=100", TLS_FLAGS, NULL));
    refused("from 1048576", parse("--max-watch-bytes=65536", TLS_FLAGS, NULL));
}

/* etcd's --listen-metrics-urls: a list; https:// needs the client TLS files; http:// is served
 * because it was listed; and the listener's bounds. */
Test(flags, listen_metrics_urls)
{
    cr_assert_eq(parse(TLS_FLAGS, NULL), 0, "%s", err);
    cr_assert_eq(cfg.n_listen_metrics, 0, "no metrics listener unless asked for");
    cr_assert_eq(cfg.max_metrics_connections, 64);
    cr_assert_eq(cfg.max_metrics_request_bytes, 8192);
    cr_assert_eq(cfg.metrics_timeout_ms, 10000);
    cr_assert_eq(parse("--listen-metrics-urls", "https://127.0.0.1:2381,http://10.0.0.1:9100",
                       "--max-metrics-connections=8", "--max-metrics-request-bytes", "4096",
                       "--metrics-timeout=1m", TLS_FLAGS, NULL),
                 0, "%s", err);
    cr_assert_eq(cfg.n_listen_metrics, 2);
    cr_assert(cfg.listen_metrics[0].tls);
    cr_assert_eq(cfg.listen_metrics[0].port, 2381);
    cr_assert_not(cfg.listen_metrics[1].tls);
    cr_assert_str_eq(cfg.listen_metrics[1].host, "10.0.0.1");
    cr_assert_eq(cfg.listen_metrics[1].port, 9100);
    cr_assert_eq(cfg.max_metrics_connections, 8);
    cr_assert_eq(cfg.max_metrics_request_bytes, 4096);
    cr_assert_eq(cfg.metrics_timeout_ms, 60000);
    /* http:// alone needs no certificate and no --insecure-plaintext: listing it is the choice */
    cr_assert_eq(parse("--listen-metrics-urls=http://127.0.0.1:9100", TLS_FLAGS, NULL), 0, "%s",
                 err);
    cr_assert_eq(cfg.n_listen_metrics, 1);
    refused("--cert-file, --key-file and --trusted-ca-file are required",
            parse("--insecure-plaintext", "--listen-client-urls", "http://127.0.0.1:2379",
                  "--listen-peer-urls", "http://127.0.0.1:2380", "--listen-metrics-urls",
                  "https://127.0.0.1:2381", NULL));
    refused("--listen-metrics-urls: an empty URL", parse("--listen-metrics-urls=https://a:1,,https://b:2", TLS_FLAGS, NULL));
    refused("--listen-metrics-urls: an empty URL", parse("--listen-metrics-urls=https://a:1,", TLS_FLAGS, NULL));
    refused("--listen-metrics-urls:", parse("--listen-metrics-urls=ftp://a:1", TLS_FLAGS, NULL));
    refused("--listen-metrics-urls:", parse("--listen-metrics-urls=https://a", TLS_FLAGS, NULL));
    refused("at most 8 URLs",
            parse("--listen-metrics-urls=http://a:1,http://a:2,http://a:3,http://a:4,http://a:5,"
                  "http://a:6,http://a:7,http://a:8,http://a:9", TLS_FLAGS, NULL));
    refused("from 1 to 4096", parse("--max-metrics-connections=0", TLS_FLAGS, NULL));
    refused("from 256", parse("--max-metrics-request-bytes=10", TLS_FLAGS, NULL));
    refused("(1s to 1h)", parse("--metrics-timeout=500ms", TLS_FLAGS, NULL));
    refused("whole seconds", parse("--metrics-timeout=1500ms", TLS_FLAGS, NULL));
}

Test(flags, logging)
{
#define ONE "--initial-cluster", "default=https://127.0.0.1:2380", TLS_FLAGS
    cr_assert_eq(parse(ONE, NULL), 0, "%s", err);
    cr_assert_eq(cfg.log_format, LOG_FORMAT_JSON, "etcd's zap by default");
    cr_assert_eq(cfg.log_level, LOG_LEVEL_INFO);
    cr_assert_str_eq(cfg.log_outputs, "default");
    cr_assert_eq(cfg.max_log_line_bytes, 4096);
    cr_assert_eq(cfg.log_rate_limit_interval_ms, 10000);
    cr_assert_eq(cfg.log_rate_limit_burst, 3);
    cr_assert_eq(cfg.warning_apply_ms, 100, "etcd's --experimental-warning-apply-duration");
    cr_assert_eq(cfg.warning_fdatasync_ms, 1000, "etcd's slow fdatasync threshold");

    cr_assert_eq(parse(ONE, "--logger", "capnslog", "--log-level=warn", "--log-outputs",
                       "stderr,/var/log/craft.log", "--max-log-line-bytes", "512",
                       "--log-rate-limit-interval", "1m", "--log-rate-limit-burst", "10",
                       "--experimental-warning-apply-duration", "250ms",
                       "--warning-fdatasync-duration", "2s", NULL),
                 0, "%s", err);
    cr_assert_eq(cfg.log_format, LOG_FORMAT_TEXT);
    cr_assert_eq(cfg.log_level, LOG_LEVEL_WARN);
    cr_assert_str_eq(cfg.log_outputs, "stderr,/var/log/craft.log");
    cr_assert_eq(cfg.max_log_line_bytes, 512);
    cr_assert_eq(cfg.log_rate_limit_interval_ms, 60000);
    cr_assert_eq(cfg.log_rate_limit_burst, 10);
    cr_assert_eq(cfg.warning_apply_ms, 250);
    cr_assert_eq(cfg.warning_fdatasync_ms, 2000);

    cr_assert_eq(parse(ONE, "--logger", "zapp", NULL), -1);
    cr_assert_str_eq(err, "invalid value \"zapp\" for flag -logger: want zap or capnslog");
    cr_assert_eq(parse(ONE, "--log-level", "warning", NULL), -1);
    cr_assert(strstr(err, "invalid value \"warning\" for flag -log-level"), "%s", err);
    cr_assert_eq(parse(ONE, "--log-outputs", "stderr,", NULL), -1);
    cr_assert(strstr(err, "--log-outputs: an empty output"), "%s", err);
    cr_assert_eq(parse(ONE, "--log-outputs", "a,b,c,d,e,f,g,h,i", NULL), -1);
    cr_assert(strstr(err, "at most 8"), "%s", err);
    cr_assert_eq(parse(ONE, "--max-log-line-bytes", "100", NULL), -1);
    cr_assert(strstr(err, "--max-log-line-bytes wants a whole number from 256 to 16384"), "%s", err);
    cr_assert_eq(parse(ONE, "--experimental-warning-apply-duration", "0s", NULL), -1);
    cr_assert(strstr(err, "--experimental-warning-apply-duration wants a duration"), "%s", err);
#undef ONE
}

Test(flags, leases)
{
    cr_assert_eq(parse(TLS_FLAGS, NULL), 0, "%s", err);
    cr_assert_eq(cfg.lease_revoke_rate, 1000, "etcd's leaseRevokeRate");
    cr_assert(cfg.lease_checkpoint, "craft checkpoints by default");
    cr_assert_eq(cfg.lease_checkpoint_ms, 5 * 60 * 1000, "etcd's 5m");
    cr_assert_eq(cfg.max_lease_keepalive_inflight, 1024);
    cr_assert_eq(cfg.max_lease_keepalive_streams, 10000);
    cr_assert_eq(parse("--lease-revoke-rate=50", "--experimental-enable-lease-checkpoint=false",
                       "--experimental-lease-checkpoint-interval", "1s",
                       "--max-lease-keepalive-inflight=8", "--max-lease-keepalive-streams", "3",
                       TLS_FLAGS, NULL),
                 0, "%s", err);
    cr_assert_eq(cfg.lease_revoke_rate, 50);
    cr_assert_not(cfg.lease_checkpoint);
    cr_assert_eq(cfg.lease_checkpoint_ms, 1000);
    cr_assert_eq(cfg.max_lease_keepalive_inflight, 8);
    cr_assert_eq(cfg.max_lease_keepalive_streams, 3);
    refused("--lease-revoke-rate", parse("--lease-revoke-rate=0", TLS_FLAGS, NULL));
    refused("--experimental-lease-checkpoint-interval",
            parse("--experimental-lease-checkpoint-interval=500ms", TLS_FLAGS, NULL));
    refused("--max-lease-keepalive-inflight",
            parse("--max-lease-keepalive-inflight=0", TLS_FLAGS, NULL));
}

Test(flags, tls_reload_interval)
{
    cr_assert_eq(parse(TLS_FLAGS, NULL), 0, "%s", err);
    cr_assert_eq(cfg.tls_reload_ms, 5000);
    cr_assert_eq(parse("--tls-reload-interval=1m", TLS_FLAGS, NULL), 0, "%s", err);
    cr_assert_eq(cfg.tls_reload_ms, 60000);
    cr_assert_eq(parse("--tls-reload-interval", "0s", TLS_FLAGS, NULL), 0, "%s", err);
    cr_assert_eq(cfg.tls_reload_ms, 0, "0 = read once at start");
    refused("--tls-reload-interval wants a duration",
            parse("--tls-reload-interval=25h", TLS_FLAGS, NULL));
    refused("--tls-reload-interval wants a duration",
            parse("--tls-reload-interval=5", TLS_FLAGS, NULL));
}

Test(flags, peer_cert_allowed_names)
{
    cr_assert_eq(parse(TLS_FLAGS, NULL), 0, "%s", err);
    cr_assert_null(cfg.peer_cert_allowed_cn);
    cr_assert_null(cfg.peer_cert_allowed_hostname);
    cr_assert_eq(parse("--peer-cert-allowed-cn", "n1,n2", TLS_FLAGS, NULL), 0, "%s", err);
    cr_assert_str_eq(cfg.peer_cert_allowed_cn, "n1,n2");
    cr_assert_eq(parse("--peer-cert-allowed-hostname=peer.example", TLS_FLAGS, NULL), 0, "%s", err);
    cr_assert_str_eq(cfg.peer_cert_allowed_hostname, "peer.example");
    cr_assert_eq(parse("--cipher-suites", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", TLS_FLAGS,
                       NULL),
                 0, "%s", err);
    cr_assert_str_eq(cfg.cipher_suites, "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                     "kept as given: craftd checks the names before gRPC starts");
    cr_assert_eq(parse("--client-crl-file", "c.crl", "--peer-crl-file", "p.crl", TLS_FLAGS, NULL),
                 0, "%s", err);
    cr_assert_str_eq(cfg.client_crl_file, "c.crl");
    cr_assert_str_eq(cfg.peer_crl_file, "p.crl");
    refused("--peer-cert-allowed-cn and --peer-cert-allowed-hostname are mutually exclusive",
            parse("--peer-cert-allowed-cn=a", "--peer-cert-allowed-hostname=b", TLS_FLAGS, NULL));
}

Test(flags, grpc_listener_bounds)
{
    cr_assert_eq(parse(TLS_FLAGS, NULL), 0, "%s", err);
    cr_assert_eq(cfg.max_concurrent_streams, 1024, "bounded, unlike etcd's math.MaxUint32");
    cr_assert_eq(cfg.handshake_timeout_ms, 10000);
    cr_assert_eq(cfg.max_grpc_memory_bytes, 256u << 20);
    cr_assert_eq(parse("--max-concurrent-streams", "16", "--handshake-timeout=500ms",
                       "--max-grpc-memory-bytes", "67108864", TLS_FLAGS, NULL),
                 0, "%s", err);
    cr_assert_eq(cfg.max_concurrent_streams, 16);
    cr_assert_eq(cfg.handshake_timeout_ms, 500);
    cr_assert_eq(cfg.max_grpc_memory_bytes, 64u << 20);
    refused("--max-concurrent-streams wants a whole number",
            parse("--max-concurrent-streams=0", TLS_FLAGS, NULL));
    refused("--handshake-timeout wants a duration",
            parse("--handshake-timeout=50ms", TLS_FLAGS, NULL));
    refused("--max-grpc-memory-bytes wants a whole number",
            parse("--max-grpc-memory-bytes=1048576", TLS_FLAGS, NULL));
    /* four of the largest requests must fit */
    refused("--max-grpc-memory-bytes (67108864) must be at least four times --max-request-bytes",
            parse("--max-request-bytes", "20000000", "--wal-segment-bytes", "67108864",
                  "--max-grpc-memory-bytes", "67108864", TLS_FLAGS, NULL));
    cr_assert_eq(parse("--max-request-bytes", "20000000", "--max-grpc-memory-bytes", "90000000",
                       TLS_FLAGS, NULL),
                 0, "%s", err);
}
