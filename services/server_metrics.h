/* server_metrics.h: what one member's /metrics and /health say (docs/metrics.md lists every
 * metric, its type, labels and meaning, and which are etcd's).
 *
 * What it promises:
 * - server_metrics_render writes the member's metrics in the Prometheus text format: etcd's
 *   names where craft measures the same thing (etcd_server_*, etcd_disk_wal_fsync_*,
 *   etcd_mvcc_db_*, etcd_network_peer_*_bytes_total, grpc_server_*, process_*), craft's own
 *   under craft_*. Most values are read at scrape time from state the member keeps anyway
 *   (node status, per-peer progress, store size, /proc); the few counted on hot paths are
 *   relaxed atomics and fixed-bucket histograms owned by their modules (metrics/metrics.h).
 * - server_metrics_health is etcd's /health rule: false with "ALARM NOSPACE" when the store is
 *   full (its data in use is within 2 KiB of --quota-backend-bytes, so a 1 KiB write would be
 *   refused: craft's stand-in for etcd's NOSPACE alarm, which craft does not keep), else false
 *   with "RAFT NO LEADER" when this member knows no leader, else true.
 * - Both run on the metrics listener's thread, take the node's locks only briefly, and may run
 *   while the member serves; the member stops the listener before anything they read.
 */
#ifndef CRAFT_SERVICES_SERVER_METRICS_H
#define CRAFT_SERVICES_SERVER_METRICS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "metrics/metrics.h"
#include "services/cert_expiry.h"

struct raft_node;
struct kv_store;
struct kv_service;
struct peer;
struct rpc_server;
struct watch_hub;
struct lease_service;

struct server_metrics_src {
    struct raft_node *node;
    struct kv_store *store;
    struct kv_service *kv;
    struct peer *peer;
    struct rpc_server *client_srv;
    struct watch_hub *watch;
    struct lease_service *lease;            /* NULL: no lease metrics */
    const _Atomic uint64_t *leader_changes; /* etcd_server_leader_changes_seen_total */
    uint64_t quota_bytes;                   /* --quota-backend-bytes (0 = none) */
    const char *version;                    /* etcd_server_version's label */
    const struct cert_expiry *certs;        /* NULL: no certificate expiry metric */
};

void server_metrics_render(const struct server_metrics_src *src, struct metrics_buf *b);
bool server_metrics_health(const struct server_metrics_src *src, char *reason, size_t len);

/* process_* from /proc/self (CPU, memory, open and maximum descriptors, start time), as the
 * Prometheus client libraries write them. */
void server_metrics_process(struct metrics_buf *b);

#endif
