/* server.h: one craft member, everything craftd runs, as a library: the state machine, the Raft
 * node, the peer service on the peer URL and the client API on the client URL, both over mutual
 * TLS (plaintext only with --insecure-plaintext).
 *
 * What it promises:
 * - craft_server_start() returns a serving member or NULL with one clear sentence in err (bad
 *   certificate files, a port in use, a data directory locked by another process, a damaged log).
 * - The client API is etcd v3's KV, Maintenance.Status and Cluster.MemberList, served by
 *   services/kv_service.h: any member answers any request (a follower forwards writes to the
 *   leader and relays the answer), with etcd's gRPC codes and messages. Beside it,
 *   craft.node.Node/Status (services/proto/nodepb.proto) tells this member's role, term, leader
 *   and indexes.
 * - One log line (stderr) per role, term or leader change.
 * - craft_server_stop() stops the client API, completes every pending write (UNAVAILABLE), stops
 *   the node and the peer service, and frees everything. Several servers may run in one process.
 */
#ifndef CRAFT_SERVICES_SERVER_H
#define CRAFT_SERVICES_SERVER_H

#include <stddef.h>

#include "raft/node/node.h"
#include "services/craftd_flags.h"
#include "services/forward.h"

struct craft_server;

struct craft_server *craft_server_start(const struct craftd_config *cfg, char *err, size_t errlen);
void craft_server_stop(struct craft_server *s);

struct raft_node *craft_server_node(struct craft_server *s);
/* Counters of the member's write forwarding (tests). */
void craft_server_fwd_stats(struct craft_server *s, struct fwd_stats *out);

#endif
