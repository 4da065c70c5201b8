/* craftd_flags.h: craftd's command line, with etcd's flag names so etcd users already know them.
 *
 * What it promises: craftd_flags_parse() accepts `--flag value` and `--flag=value`, fills a
 * validated struct craftd_config, or returns -1 with one clear sentence in err (the caller exits
 * with status 2): an unknown flag, a missing value, a bad number or URL, https:// URLs without
 * their certificate flags, http:// URLs without --insecure-plaintext, --name missing from
 * --initial-cluster, an advertised peer URL that disagrees with --initial-cluster, an election
 * timeout under twice the heartbeat interval, an --initial-cluster-state other than new or
 * existing (etcd's message: invalid value "X" for flag -initial-cluster-state: ...). craftd_flags_usage() prints every flag with its
 * default.
 * --listen-metrics-urls (etcd's flag) takes a comma-separated list of at most
 * CRAFTD_MAX_METRICS_URLS URLs; https:// ones need --cert-file, --key-file and --trusted-ca-file
 * (the client API's TLS, client certificates required); an http:// one is served in plaintext
 * because it was given: naming it is the explicit choice (there is no default metrics URL).
 * --logger (zap or capnslog), --log-level (debug .. fatal) and --log-outputs (default, stderr,
 * stdout or paths, comma-separated) take etcd's values; a bad one is refused with the values
 * wanted (a path that cannot be opened is found later, when craftd opens it).
 * --max-grpc-memory-bytes must hold four of the largest client requests (4 x (--max-request-bytes
 * + 512 KiB)) and is at least 64 MiB (four of the peer port's 16 MiB batches).
 */
#ifndef CRAFT_SERVICES_CRAFTD_FLAGS_H
#define CRAFT_SERVICES_CRAFTD_FLAGS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "log/log.h"
#include "services/cluster.h"

#define CRAFTD_MAX_METRICS_URLS 8

struct craftd_config {
    /* etcd's flags */
    const char *name;
    const char *data_dir;
    struct cluster_url listen_client, advertise_client, listen_peer, advertise_peer;
    const char *advertise_client_urls; /* as given, told to peers and clients */
    const char *initial_cluster;
    const char *initial_cluster_state; /* "new" or "existing" (etcd's values) */
    const char *initial_cluster_token;
    const char *cert_file, *key_file, *trusted_ca_file;
    const char *peer_cert_file, *peer_key_file, *peer_trusted_ca_file;
    const char *peer_cert_allowed_cn, *peer_cert_allowed_hostname; /* comma-separated, "" = any */
    const char *client_crl_file, *peer_crl_file; /* etcd's; "" = none */
    const char *cipher_suites; /* etcd's --cipher-suites; checked and applied by craftd.c */
    char cipher_list[1024];    /* derived (craftd.c): the same in OpenSSL's names, "" = default */
    unsigned heartbeat_ms, election_ms;
    uint64_t max_request_bytes;
    uint64_t quota_backend_bytes;
    uint32_t max_txn_ops;
    uint64_t watch_progress_ms; /* etcd's --experimental-watch-progress-notify-interval */

    /* craft's own */
    bool insecure_plaintext;
    unsigned proposal_timeout_ms;
    uint32_t max_append_entries;
    uint64_t max_append_bytes;
    uint32_t max_inflight_msgs;
    uint64_t max_inflight_bytes;
    uint32_t max_pending;
    uint64_t wal_segment_bytes;
    unsigned backend_sync_ms; /* 0 = sync the KV store with every applied batch */
    unsigned peer_send_timeout_ms;
    unsigned server_threads;
    uint64_t snapshot_count;           /* etcd's --snapshot-count */
    uint64_t snapshot_catchup_entries; /* etcd's --snapshot-catchup-entries */
    uint32_t snapshot_log_percent;     /* raft_node_config.snapshot_log_percent */
    uint64_t snapshot_log_max_bytes;   /* raft_node_config.snapshot_log_max_bytes */
    uint32_t max_snapshots;            /* etcd's --max-snapshots */
    uint32_t max_snapshot_sends;
    uint32_t snapshot_chunk_bytes;
    uint64_t snapshot_send_rate;       /* bytes per second; 0 = unbounded */
    uint32_t max_watches_per_stream;   /* services/watch.h */
    uint64_t max_watch_stream_bytes;
    uint64_t max_watch_bytes;
    uint64_t max_watch_hub_bytes;
    const char *auto_compaction_mode_text;      /* etcd's --auto-compaction-mode */
    const char *auto_compaction_retention_text; /* etcd's --auto-compaction-retention */
    /* The metrics listener (services/metrics_http.h): none when n_listen_metrics is 0. */
    struct cluster_url listen_metrics[CRAFTD_MAX_METRICS_URLS]; /* etcd's --listen-metrics-urls */
    size_t n_listen_metrics;
    uint32_t max_metrics_connections;   /* connections at once, over all metrics URLs' each */
    uint32_t max_metrics_request_bytes; /* request line + headers */
    uint64_t metrics_timeout_ms;        /* idle or stalled connection; whole seconds */
    /* Logging (log/log.h, docs/logging.md): etcd 3.4's --logger, --log-level, --log-outputs. */
    const char *logger_text, *log_level_text, *log_outputs;
    enum log_format log_format;
    enum log_level log_level;
    uint32_t max_log_line_bytes;
    uint64_t log_rate_limit_interval_ms;
    uint32_t log_rate_limit_burst;
    uint64_t warning_apply_ms;     /* etcd's --experimental-warning-apply-duration */
    uint64_t warning_fdatasync_ms; /* etcd's fixed 1 s "slow fdatasync", as a flag */
    /* Leases (services/lease_service.h) */
    uint32_t lease_revoke_rate;            /* expired leases revoked per second */
    bool lease_checkpoint;                 /* etcd's --experimental-enable-lease-checkpoint */
    uint64_t lease_checkpoint_ms;          /* etcd's --experimental-lease-checkpoint-interval */
    uint32_t max_lease_keepalive_inflight; /* per stream */
    uint32_t max_lease_keepalive_streams;
    /* gRPC listeners (rpc/rpc.h, docs/rpc.md "Hostile clients") */
    uint32_t max_concurrent_streams; /* etcd's --max-concurrent-streams: per client connection */
    uint64_t handshake_timeout_ms;   /* accept to TLS + HTTP/2 ready, both listeners */
    uint64_t max_grpc_memory_bytes;  /* gRPC's resource quota, per listener */
    uint64_t tls_reload_ms;          /* TLS files re-checked this often (rpc_tls.reload_sec);
                                        0 = read once at start */
    uint64_t tls_expiry_warning_ms;  /* certificate files expiring within this are logged
                                        daily (services/cert_expiry.h); 0 = never */

    /* derived */
    bool join_existing;       /* --initial-cluster-state existing: with an empty data directory,
                               * join the running cluster (services/server.h) */
    struct cluster cluster;
    uint64_t self_id;
    bool auto_compaction_revision;      /* the mode: revision (else periodic) */
    uint64_t auto_compaction_retention; /* ms (periodic) or revisions; 0 = off */
    unsigned auto_compaction_interval_ms; /* revision mode's check interval; 0 = 5 minutes
                                             (etcd's); not a flag: in-process tests set it */
    uint64_t test_fault_snapshot_chunk; /* not a flag: peer_config's test fault; set only by the
                                           craftd_testfaults build (services/craftd.c) */
    char default_data_dir[CLUSTER_NAME_MAX + 8];
    char default_cluster[CLUSTER_NAME_MAX + 600];
};

void craftd_flags_usage(FILE *out);
/* Returns 0 (config filled), 1 (--help or --version was asked: print and exit 0), or -1. */
int craftd_flags_parse(int argc, char **argv, struct craftd_config *cfg, char *err, size_t errlen);

#endif
