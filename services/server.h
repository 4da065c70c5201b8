/* server.h: one craft member, everything craftd runs, as a library: the state machine, the Raft
 * node, the peer service on the peer URL and the client API on the client URL, both over mutual
 * TLS (plaintext only with --insecure-plaintext).
 *
 * What it promises:
 * - craft_server_start() returns a serving member or NULL with one clear sentence in err (bad
 *   certificate files, a port in use, a data directory locked by another process, a damaged log).
 * - The client API is etcd v3's KV, Maintenance.Status and Cluster.MemberList, served by
 *   services/kv_service.h: any member answers any request (a follower forwards writes to the
 *   leader and relays the answer), with etcd's gRPC codes and messages; and etcd's Watch,
 *   served by services/watch.h from this member's own applied state. Beside them,
 *   craft.node.Node/Status (services/proto/nodepb.proto) tells this member's role, term, leader
 *   and indexes.
 * - One log line (log/log.h; "member", and on role changes "role", "term" and "leader" fields)
 *   per role, term or leader change, and per membership change (a member added, removed,
 *   promoted from learner, or publishing its name).
 * - Identity: a new data directory takes the member's id and the cluster id from the flags
 *   (--initial-cluster-state new) or from the running cluster (existing: the members listed in
 *   --initial-cluster are asked for the member table, and this member is the entry at its
 *   --initial-advertise-peer-urls; not there: "this member is not in the cluster: add it first
 *   with etcdctl member add"), and records them in <data-dir>/member (services/member_file.h);
 *   a restart takes them from there and refuses another --name. A new data directory still
 *   asks its peers whether they saw it run before (a lost disk is refused).
 * - Membership: the member table in force follows the Raft configuration (its entries carry the
 *   table, node.h on_conf) and is handed to the peer service and the KV service. The leader
 *   publishes the name of a member added by peer URL alone when it says Hello (a configuration
 *   change with the same voters and learners and the name filled in, as etcd's publish).
 * - Removal: when a peer refuses this member as removed from the cluster, or a configuration
 *   without it commits, it logs "this member was removed from the cluster" and tells the owner
 *   (craft_server_on_removed), which stops it; craftd then exits 1 with etcd's "the member has
 *   been permanently removed from the cluster".
 * - Metrics: with --listen-metrics-urls, /metrics, /health and /version are served on those URLs
 *   (services/metrics_http.h; what they say: services/server_metrics.h, docs/metrics.md) from
 *   the end of craft_server_start until the start of craft_server_stop.
 * - craft_server_stop() stops the client API, completes every pending write (UNAVAILABLE), stops
 *   the node and the peer service, and frees everything. Several servers may run in one process.
 */
#ifndef CRAFT_SERVICES_SERVER_H
#define CRAFT_SERVICES_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "raft/node/node.h"
#include "services/craftd_flags.h"
#include "services/forward.h"

struct craft_server;

struct craft_server *craft_server_start(const struct craftd_config *cfg, char *err, size_t errlen);
void craft_server_stop(struct craft_server *s);

struct raft_node *craft_server_node(struct craft_server *s);
/* Reads the TLS files' expiry again (services/cert_expiry.h): the metric's values, and a
 * warning for those within --tls-expiry-warning (at most once a day each). Returns how many
 * are within it. craftd calls it at start and every minute. */
size_t craft_server_check_certs(struct craft_server *s, int64_t now);
/* This member's id (from the flags, the member file, or the cluster it joined). */
uint64_t craft_server_member_id(struct craft_server *s);
/* A copy of the member table in force. */
void craft_server_cluster(struct craft_server *s, struct cluster *out);

/* fn runs once, on a server thread, when this member learns it was removed from the cluster
 * (at once if it already has); it must not block or stop the server itself: it tells the owner,
 * which then calls craft_server_stop. */
void craft_server_on_removed(struct craft_server *s, void (*fn)(void *arg, const char *why),
                             void *arg);
/* Whether this member learned it was removed (why copied, "" if not). */
bool craft_server_removed(struct craft_server *s, char *why, size_t len);
/* Counters of the member's write forwarding (tests). */
void craft_server_fwd_stats(struct craft_server *s, struct fwd_stats *out);
/* Counters of the member's Watch service (tests; services/watch.h). */
struct watch_stats;
void craft_server_watch_stats(struct craft_server *s, struct watch_stats *out);

#endif
