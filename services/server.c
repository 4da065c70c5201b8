/* server.c: one craft member (see server.h). */
#include "services/server.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "rpc/rpc.h"
#include "services/kv_service.h"
#include "services/kvstore/kv_store.h"
#include "services/peer.h"
#include "services/proto/nodepb.pb-c.h"

struct craft_server {
    struct craftd_config cfg;
    struct kv_store *store;
    struct kv_service *kv;
    struct peer *peer;
    struct raft_node *node;
    struct rpc_server *peer_srv, *client_srv;
};

static void logf_(const struct craft_server *s, const char *fmt, ...)
{
    char ts[32];
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s.%03ldZ craftd %s: %s\n", ts, now.tv_nsec / 1000000, s->cfg.name, line);
}

static const char *member_name(const struct craft_server *s, uint64_t id)
{
    const struct cluster_member *m = cluster_find_id(&s->cfg.cluster, id);
    return m ? m->name : id ? "?" : "none";
}

static void on_role(void *arg, uint64_t id, uint8_t role, uint64_t term, uint64_t leader_id)
{
    struct craft_server *s = arg;
    (void)id;
    logf_(s, "%s in term %llu, leader %s", raft_role_name(role), (unsigned long long)term,
          member_name(s, leader_id));
}

/* ---- client API ---------------------------------------------------------------------- */

static void handle_status(struct rpc_call *call, const ProtobufCMessage *m, void *ctx)
{
    (void)m;
    struct craft_server *s = ctx;
    struct raft_node_status st;
    raft_node_status_get(s->node, &st);
    char urls[1024] = "";
    if (st.core.leader_id)
        peer_client_urls(s->peer, st.core.leader_id, urls, sizeof urls);
    Craft__Node__StatusReply r = CRAFT__NODE__STATUS_REPLY__INIT;
    r.member_id = s->cfg.self_id;
    r.name = (char *)s->cfg.name;
    r.cluster_id = s->cfg.cluster.id;
    r.role = st.core.role;
    r.term = st.core.term;
    r.leader_id = st.core.leader_id;
    r.leader_name = (char *)(st.core.leader_id ? member_name(s, st.core.leader_id) : "");
    r.leader_client_urls = urls;
    r.commit_index = st.core.commit_index;
    r.applied_index = st.applied_index;
    r.last_index = st.core.last_index;
    r.durable_index = st.durable_index;
    int64_t rev = 0;
    kv_store_status(s->store, &rev, NULL, NULL, NULL);
    r.revision = rev;
    rpc_call_reply_msg(call, &r.base);
}

/* ---- lifecycle ----------------------------------------------------------------------- */

static struct rpc_server *listen_on(const struct cluster_url *u, const struct rpc_tls *tls,
                                    const struct craftd_config *cfg, size_t max_msg,
                                    const char *what, char *err, size_t errlen)
{
    char addr[CLUSTER_HOST_MAX + 16], rerr[256];
    cluster_url_target(u, addr, sizeof addr);
    struct rpc_server_config sc = {
        .listen = addr,
        .tls = u->tls ? tls : NULL,
        .insecure = !u->tls,
        .threads = (int)cfg->server_threads,
        .max_recv_bytes = max_msg,
        .max_send_bytes = max_msg,
    };
    struct rpc_server *srv = rpc_server_create(&sc, rerr, sizeof rerr);
    if (!srv)
        snprintf(err, errlen, "%s listener %s: %s", what, addr, rerr);
    return srv;
}

static int mkdir_p(const char *path)
{
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return -1;
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            if (mkdir(buf, 0700) != 0 && errno != EEXIST)
                return -1;
            *p = '/';
        }
    return mkdir(buf, 0700) != 0 && errno != EEXIST ? -1 : 0;
}

/* True when dir is missing or empty: this member has never stored Raft state there. */
static bool dir_is_empty(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT;
    struct dirent *de;
    bool empty = true;
    while (empty && (de = readdir(d)) != NULL)
        empty = !strcmp(de->d_name, ".") || !strcmp(de->d_name, "..");
    closedir(d);
    return empty;
}

/* A member starting with no Raft state asks its peers whether they have seen it run before
 * (etcd refuses the same start with "member ... has already been bootstrapped"). One that has
 * run lost its disk: its votes went with it, so rejoining as itself with term 0 and no vote could
 * let it vote twice in a term (Raft paper Figure 2). It waits up to an election timeout for the
 * answers; peers that do not answer in time are not waited for (as etcd), and that is logged. */
static int check_not_bootstrapped(struct craft_server *s, char *err, size_t errlen)
{
    const struct craftd_config *cfg = &s->cfg;
    uint64_t says = 0;
    int answered = peer_wait_hello(s->peer, (int)cfg->election_ms, &says);
    if (says) {
        const struct cluster_member *m = cluster_find_id(&cfg->cluster, says);
        snprintf(err, errlen,
                 "member %s has already been bootstrapped: member %s has seen it run, but its "
                 "data directory %s holds no Raft state (a lost or wiped disk). Starting it "
                 "again as itself could let it vote twice in one term. Remove the member and add "
                 "it back as a new one, with an empty data directory",
                 cfg->name, m ? m->name : "?", cfg->data_dir);
        return -1;
    }
    if (answered < (int)cfg->cluster.n - 1)
        logf_(s, "new data directory: %d of %zu peers answered within %u ms whether this member "
                 "ran before; starting as a new member",
              answered, cfg->cluster.n - 1, cfg->election_ms);
    return 0;
}

struct craft_server *craft_server_start(const struct craftd_config *cfg, char *err, size_t errlen)
{
    struct craft_server *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->cfg = *cfg;
    if (cfg->initial_cluster == cfg->default_cluster)
        s->cfg.initial_cluster = s->cfg.default_cluster;
    if (cfg->data_dir == cfg->default_data_dir)
        s->cfg.data_dir = s->cfg.default_data_dir;
    cfg = &s->cfg;

    struct rpc_tls peer_tls = {cfg->peer_trusted_ca_file, cfg->peer_cert_file, cfg->peer_key_file};
    struct rpc_tls client_tls = {cfg->trusted_ca_file, cfg->cert_file, cfg->key_file};
    char sub[512], raft_dir[4200], kv_dir[4200];

    /* <data-dir>/raft: the write-ahead log and hard state; <data-dir>/kv: the LMDB store. */
    char snap_dir[4200];
    snprintf(raft_dir, sizeof raft_dir, "%s/raft", cfg->data_dir);
    snprintf(kv_dir, sizeof kv_dir, "%s/kv", cfg->data_dir);
    snprintf(snap_dir, sizeof snap_dir, "%s/snap", cfg->data_dir);
    bool fresh = dir_is_empty(raft_dir);
    if (mkdir_p(raft_dir) != 0 || mkdir_p(kv_dir) != 0 || mkdir_p(snap_dir) != 0) {
        snprintf(err, errlen, "cannot create data directory %s: %s", cfg->data_dir,
                 strerror(errno));
        goto fail;
    }
    struct kv_store_opts ko = {.map_size = cfg->quota_backend_bytes,
                               .sync_every_batch = cfg->backend_sync_ms == 0,
                               .sync_interval_ms = cfg->backend_sync_ms};
    s->store = kv_store_open(kv_dir, &ko, sub, sizeof sub);
    if (!s->store) {
        snprintf(err, errlen, "KV store %s: %s", kv_dir, sub);
        goto fail;
    }
    if (*kv_store_open_note(s->store))
        logf_(s, "kv store %s: %s", kv_dir, kv_store_open_note(s->store));
    struct peer_config pc = {
        .cluster = &cfg->cluster,
        .self_id = cfg->self_id,
        .tls = cfg->listen_peer.tls ? &peer_tls : NULL,
        .insecure = !cfg->listen_peer.tls,
        .send_timeout_ms = (int)cfg->peer_send_timeout_ms,
        .client_urls = cfg->advertise_client_urls,
        .snapshot_chunk_bytes = cfg->snapshot_chunk_bytes,
        .snapshot_rate = cfg->snapshot_send_rate,
    };
    s->peer = peer_create(&pc, sub, sizeof sub);
    if (!s->peer) {
        snprintf(err, errlen, "peer service: %s", sub);
        goto fail;
    }
    /* The peer port carries Raft batches, forwarded client writes and their results. */
    size_t peer_max = PEER_DEFAULT_MAX_RECV_BYTES;
    if (cfg->max_request_bytes + (64u << 10) > peer_max)
        peer_max = cfg->max_request_bytes + (64u << 10);
    s->peer_srv = listen_on(&cfg->listen_peer, &peer_tls, cfg, peer_max, "peer", err, errlen);
    if (!s->peer_srv || peer_register(s->peer, s->peer_srv) != 0)
        goto fail;
    /* As etcd: gRPC takes up to 512 KiB over --max-request-bytes, so a request just over the
     * limit gets etcd's "request is too large" from the service, not a transport error. */
    s->client_srv = listen_on(&cfg->listen_client, &client_tls, cfg,
                              cfg->max_request_bytes + (512u << 10), "client", err, errlen);
    if (!s->client_srv ||
        rpc_server_register_unary_msg(s->client_srv, "/craft.node.Node/Status",
                                      &craft__node__status_request__descriptor, handle_status, s))
        goto fail;

    if (fresh && cfg->cluster.n > 1 && check_not_bootstrapped(s, err, errlen))
        goto fail;

    uint64_t ids[CLUSTER_MAX_MEMBERS];
    for (size_t i = 0; i < cfg->cluster.n; i++)
        ids[i] = cfg->cluster.members[i].id;
    struct raft_node_config nc;
    raft_node_config_default(&nc);
    nc.id = cfg->self_id;
    nc.peers = ids;
    nc.n_peers = cfg->cluster.n;
    nc.data_dir = raft_dir;
    nc.fsm = kv_store_fsm(s->store);
    nc.transport = peer_transport(s->peer);
    nc.heartbeat_ms = cfg->heartbeat_ms;
    nc.election_ms = cfg->election_ms;
    nc.max_append_entries = cfg->max_append_entries;
    nc.max_append_bytes = cfg->max_append_bytes;
    nc.max_inflight_msgs = cfg->max_inflight_msgs;
    nc.max_inflight_bytes = cfg->max_inflight_bytes;
    nc.max_entry_bytes = (uint32_t)cfg->max_request_bytes + 1024; /* + command framing */
    nc.max_pending = cfg->max_pending;
    nc.wal_segment_bytes = cfg->wal_segment_bytes;
    nc.snap_dir = snap_dir;
    nc.snapshot_count = cfg->snapshot_count;
    nc.snapshot_catchup_entries = cfg->snapshot_catchup_entries;
    nc.max_snapshots = cfg->max_snapshots;
    nc.max_snapshot_sends = cfg->max_snapshot_sends;
    nc.on_role = on_role;
    nc.on_role_arg = s;
    s->node = raft_node_start(&nc, sub, sizeof sub);
    if (!s->node) {
        snprintf(err, errlen, "%s", sub);
        goto fail;
    }
    struct kv_service_config kc = {
        .node = s->node,
        .store = s->store,
        .peer = s->peer,
        .cluster = &cfg->cluster,
        .self_id = cfg->self_id,
        .client_urls = cfg->advertise_client_urls,
        .timeout_ms = cfg->proposal_timeout_ms,
        .max_request_bytes = cfg->max_request_bytes,
        .max_txn_ops = cfg->max_txn_ops,
        .quota_bytes = cfg->quota_backend_bytes,
    };
    s->kv = kv_service_create(&kc);
    if (!s->kv || kv_service_register_client(s->kv, s->client_srv) != 0 ||
        kv_service_register_peer(s->kv, s->peer_srv) != 0) {
        snprintf(err, errlen, "cannot set up the KV service");
        goto fail;
    }
    peer_attach(s->peer, s->node);
    if (rpc_server_start(s->peer_srv) != 0 || rpc_server_start(s->client_srv) != 0) {
        snprintf(err, errlen, "cannot start the listeners");
        goto fail;
    }
    logf_(s, "member %016llx of cluster %016llx serving clients on %s, peers on port %d",
          (unsigned long long)cfg->self_id, (unsigned long long)cfg->cluster.id,
          cfg->advertise_client_urls, cfg->listen_peer.port);
    return s;
fail:
    craft_server_stop(s);
    return NULL;
}

void craft_server_stop(struct craft_server *s)
{
    if (!s)
        return;
    /* Clients first (no new writes), then the node (its pending writes fail and their calls
     * complete as no-ops on closed handles), then the peers. */
    if (s->client_srv)
        rpc_server_shutdown(s->client_srv, 500);
    kv_service_stop_forwarding(s->kv); /* before the node goes: answers read its status */
    if (s->peer)
        peer_attach(s->peer, NULL);
    if (s->node)
        raft_node_stop(s->node);
    if (s->peer_srv)
        rpc_server_shutdown(s->peer_srv, 0);
    peer_destroy(s->peer);
    kv_service_destroy(s->kv);
    kv_store_close(s->store);
    free(s);
}

struct raft_node *craft_server_node(struct craft_server *s) { return s->node; }

void craft_server_fwd_stats(struct craft_server *s, struct fwd_stats *out)
{
    kv_service_fwd_stats(s->kv, out);
}
