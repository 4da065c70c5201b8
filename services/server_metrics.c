/* server_metrics.c: one member's /metrics text and /health answer (server_metrics.h). */
#include "services/server_metrics.h"

#include <dirent.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "raft/node/node.h"
#include "rpc/rpc.h"
#include "services/forward.h"
#include "services/kv_service.h"
#include "services/kvstore/kv_store.h"
#include "services/lease_service.h"
#include "services/peer.h"
#include "services/watch.h"

/* ---- helpers ---------------------------------------------------------------------------- */

static void one_u64(struct metrics_buf *b, const char *name, const char *type, const char *help,
                    uint64_t v)
{
    metrics_family(b, name, type, help);
    metrics_sample_u64(b, name, NULL, v);
}

static void one_f(struct metrics_buf *b, const char *name, const char *type, const char *help,
                  double v)
{
    metrics_family(b, name, type, help);
    metrics_sample(b, name, NULL, v);
}

static void one_hist(struct metrics_buf *b, const char *name, const char *help,
                     const struct metrics_histogram *h)
{
    metrics_family(b, name, "histogram", help);
    metrics_histogram_write(b, name, NULL, h);
}

/* etcd writes member ids as lower-case hex without padding (types.ID.String()). */
static void id_text(uint64_t id, char *buf, size_t len)
{
    snprintf(buf, len, "%" PRIx64, id);
}

/* One sample per peer (label To) of a per-peer figure; leader_only: only for the peers whose
 * replication progress this member knows (it leads). */
typedef uint64_t (*peer_figure)(const struct raft_node_peer_view *p);
static uint64_t pv_inflight_msgs(const struct raft_node_peer_view *p) { return p->inflight_msgs; }
static uint64_t pv_inflight_bytes(const struct raft_node_peer_view *p) { return p->inflight_bytes; }
static uint64_t pv_match(const struct raft_node_peer_view *p) { return p->match; }
static uint64_t pv_outbox_msgs(const struct raft_node_peer_view *p) { return p->outbox_msgs; }
static uint64_t pv_outbox_dropped(const struct raft_node_peer_view *p) { return p->outbox_dropped; }

static void peer_u64s(struct metrics_buf *b, const char *name, const char *type, const char *help,
                      const struct raft_node_peer_view *v, size_t nv, bool leader_only,
                      peer_figure fig)
{
    char id[24];
    metrics_family(b, name, type, help);
    for (size_t i = 0; i < nv; i++) {
        if (leader_only && !v[i].progress_known)
            continue;
        id_text(v[i].id, id, sizeof id);
        const char *l[] = {"To", id, NULL};
        metrics_sample_u64(b, name, l, fig(&v[i]));
    }
}

/* ---- process_* ---------------------------------------------------------------------------- */

void server_metrics_process(struct metrics_buf *b)
{
    long tick = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
    char buf[1024];
    FILE *f = fopen("/proc/self/stat", "r");
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f)
        fclose(f);
    buf[n] = '\0';
    /* Fields after the command, which is in parentheses and may hold anything: state is field 3,
     * utime 14, stime 15, starttime 22, vsize 23, rss 24. */
    char *p = strrchr(buf, ')');
    unsigned long long utime = 0, stime = 0, start = 0, vsize = 0, rss = 0;
    if (p && tick > 0 &&
        sscanf(p + 1,
               " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d %*d %*d "
               "%llu %llu %llu",
               &utime, &stime, &start, &vsize, &rss) == 5) {
        one_f(b, "process_cpu_seconds_total", "counter",
              "Total user and system CPU time spent in seconds.",
              (double)(utime + stime) / (double)tick);
        one_u64(b, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
                rss * (unsigned long long)page);
        one_u64(b, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", vsize);
        /* Boot time from /proc/stat's btime. */
        unsigned long long btime = 0;
        FILE *s = fopen("/proc/stat", "r");
        char line[256];
        while (s && fgets(line, sizeof line, s))
            if (sscanf(line, "btime %llu", &btime) == 1)
                break;
        if (s)
            fclose(s);
        if (btime)
            one_f(b, "process_start_time_seconds", "gauge",
                  "Start time of the process since unix epoch in seconds.",
                  (double)btime + (double)start / (double)tick);
    }
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        uint64_t fds = 0;
        struct dirent *e;
        while ((e = readdir(d)))
            if (e->d_name[0] != '.')
                fds++;
        closedir(d);
        one_u64(b, "process_open_fds", "gauge", "Number of open file descriptors.",
                fds ? fds - 1 : 0); /* less the one opendir holds */
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        one_u64(b, "process_max_fds", "gauge", "Maximum number of open file descriptors.",
                (uint64_t)rl.rlim_cur);
}

/* ---- grpc_server_* (go-grpc-prometheus's names and labels, as etcd serves them) ------------ */

static const char *const code_names[RPC_STATUS_CODES] = {
    "OK",       "Canceled",          "Unknown",          "InvalidArgument", "DeadlineExceeded",
    "NotFound", "AlreadyExists",     "PermissionDenied", "ResourceExhausted",
    "FailedPrecondition", "Aborted", "OutOfRange",       "Unimplemented",   "Internal",
    "Unavailable", "DataLoss",       "Unauthenticated",
};

struct grpc_walk {
    struct metrics_buf *b;
    bool handled; /* which family is being written */
};

static void grpc_one(void *arg, const struct rpc_method_stat *st)
{
    struct grpc_walk *w = arg;
    /* "/etcdserverpb.KV/Range" -> service "etcdserverpb.KV", method "Range" */
    char service[128];
    const char *slash = strrchr(st->name, '/');
    if (!slash || slash == st->name)
        return;
    size_t sl = (size_t)(slash - st->name - 1);
    if (sl >= sizeof service)
        return;
    memcpy(service, st->name + 1, sl);
    service[sl] = '\0';
    /* craft's rpc layer serves every stream as bidirectional; etcd's proto says which are
     * server streams (only Maintenance.Snapshot among the methods craft serves). */
    const char *type = !st->stream ? "unary"
                       : !strcmp(st->name, "/etcdserverpb.Maintenance/Snapshot") ? "server_stream"
                                                                                 : "bidi_stream";
    if (!w->handled) {
        const char *l[] = {"grpc_type", type, "grpc_service", service, "grpc_method", slash + 1,
                           NULL};
        metrics_sample_u64(w->b, "grpc_server_started_total", l, st->started);
        return;
    }
    for (int c = 0; c < RPC_STATUS_CODES; c++) {
        const char *l[] = {"grpc_type",   type,          "grpc_service", service,
                           "grpc_method", slash + 1,     "grpc_code",    code_names[c],
                           NULL};
        metrics_sample_u64(w->b, "grpc_server_handled_total", l, st->handled[c]);
    }
}

static void grpc_metrics(struct metrics_buf *b, struct rpc_server *srv)
{
    struct grpc_walk w = {b, false};
    metrics_family(b, "grpc_server_started_total", "counter",
                   "Total number of RPCs started on the server.");
    rpc_server_method_stats(srv, grpc_one, &w);
    w.handled = true;
    metrics_family(b, "grpc_server_handled_total", "counter",
                   "Total number of RPCs completed on the server, regardless of success or failure.");
    rpc_server_method_stats(srv, grpc_one, &w);
}

/* ---- per peer ------------------------------------------------------------------------------ */

#define MAX_PEERS 64

static void peer_metrics(struct metrics_buf *b, const struct server_metrics_src *src)
{
    struct peer_traffic t[MAX_PEERS];
    size_t nt = peer_traffic_get(src->peer, t, MAX_PEERS);
    char id[24];
    metrics_family(b, "etcd_network_peer_sent_bytes_total", "counter",
                   "The total number of bytes sent to peers.");
    for (size_t i = 0; i < nt; i++) {
        id_text(t[i].id, id, sizeof id);
        const char *l[] = {"To", id, NULL};
        metrics_sample_u64(b, "etcd_network_peer_sent_bytes_total", l, t[i].sent_bytes);
    }
    metrics_family(b, "etcd_network_peer_received_bytes_total", "counter",
                   "The total number of bytes received from peers.");
    for (size_t i = 0; i < nt; i++) {
        id_text(t[i].id, id, sizeof id);
        const char *l[] = {"From", id, NULL};
        metrics_sample_u64(b, "etcd_network_peer_received_bytes_total", l, t[i].received_bytes);
    }
    metrics_family(b, "etcd_network_peer_round_trip_time_seconds", "histogram",
                   "Round-Trip-Time histogram between peers");
    for (size_t i = 0; i < nt; i++) {
        id_text(t[i].id, id, sizeof id);
        const char *l[] = {"To", id, NULL};
        metrics_histogram_write_counts(b, "etcd_network_peer_round_trip_time_seconds", l,
                                       metrics_buckets_etcd_rtt, 14, 1e9, t[i].rtt_counts,
                                       t[i].rtt_sum_ns);
    }

    struct raft_node_peer_view *v = calloc(MAX_PEERS, sizeof *v);
    if (!v) {
        b->failed = true;
        return;
    }
    size_t nv = raft_node_peers_view(src->node, v, MAX_PEERS);
    if (nv > MAX_PEERS)
        nv = MAX_PEERS;

    metrics_family(b, "craft_append_entries_per_message", "histogram",
                   "Entries carried by each AppendEntries routed to a peer (heartbeats count 0).");
    for (size_t i = 0; i < nv; i++) {
        id_text(v[i].id, id, sizeof id);
        const char *l[] = {"To", id, NULL};
        metrics_histogram_write_counts(b, "craft_append_entries_per_message", l,
                                       raft_node_append_bounds, RAFT_NODE_APPEND_BOUNDS, 1,
                                       v[i].append_counts, v[i].append_sum);
    }
    peer_u64s(b, "craft_peer_inflight_messages", "gauge",
              "AppendEntries in flight to a follower (the pipeline window in use; leader only).",
              v, nv, true, pv_inflight_msgs);
    peer_u64s(b, "craft_peer_inflight_bytes", "gauge",
              "Entry payload bytes in flight to a follower (leader only).", v, nv, true,
              pv_inflight_bytes);
    peer_u64s(b, "craft_peer_match_index", "gauge",
              "Highest log index known to be stored on a follower (leader only).", v, nv, true,
              pv_match);
    peer_u64s(b, "craft_replicator_outbox_messages", "gauge",
              "Messages waiting in a peer's outbox for its replicator thread.", v, nv, false,
              pv_outbox_msgs);
    peer_u64s(b, "craft_replicator_outbox_dropped_total", "counter",
              "Messages dropped because a peer's outbox overflowed (Raft resends).", v, nv,
              false, pv_outbox_dropped);
    free(v);
}

/* ---- the whole page ------------------------------------------------------------------------ */

void server_metrics_render(const struct server_metrics_src *src, struct metrics_buf *b)
{
    struct raft_node_status st;
    raft_node_status_get(src->node, &st);
    bool has_leader = st.core.leader_id != 0;
    bool is_leader = st.core.role == RAFT_LEADER;

    one_u64(b, "etcd_server_has_leader", "gauge",
            "Whether or not a leader exists. 1 is existence, 0 is not.", has_leader);
    one_u64(b, "etcd_server_is_leader", "gauge",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.", is_leader);
    one_u64(b, "etcd_server_is_learner", "gauge",
            "Whether or not this member is a learner. 1 if is, 0 otherwise.", !st.core.voter);
    one_u64(b, "etcd_server_leader_changes_seen_total", "counter",
            "The number of leader changes seen.",
            atomic_load_explicit(src->leader_changes, memory_order_relaxed));
    /* etcd declares these two as gauges set to the commit and applied indexes; craft's never
     * decrease within a process, so they are counters here (rate() works on either). */
    one_u64(b, "etcd_server_proposals_committed_total", "counter",
            "The total number of consensus proposals committed.", st.core.commit_index);
    one_u64(b, "etcd_server_proposals_applied_total", "counter",
            "The total number of consensus proposals applied.", st.applied_index);
    one_u64(b, "etcd_server_proposals_pending", "gauge",
            "The current number of pending proposals to commit.", st.pending);
    one_u64(b, "etcd_server_proposals_failed_total", "counter",
            "The total number of failed proposals seen.", st.props_failed);
    metrics_family(b, "etcd_server_version", "gauge",
                   "Which version is running. 1 for 'server_version' label with current version.");
    const char *vl[] = {"server_version", src->version ? src->version : "", NULL};
    metrics_sample_u64(b, "etcd_server_version", vl, 1);
    if (src->quota_bytes)
        one_u64(b, "etcd_server_quota_backend_bytes", "gauge",
                "Current backend storage quota size in bytes.", src->quota_bytes);

    struct raft_node_metrics nm;
    raft_node_metrics_get(src->node, &nm);
    one_hist(b, "etcd_disk_wal_fsync_duration_seconds",
             "The latency distributions of fsync called by WAL.", nm.wal_fsync);
    one_hist(b, "etcd_disk_backend_commit_duration_seconds",
             "The latency distributions of commit called by backend.",
             kv_store_commit_histogram(src->store));

    int64_t rev = 0, compact_rev = 0, db_size = 0, in_use = 0;
    if (kv_store_status(src->store, &rev, &compact_rev, &db_size, &in_use) == 0) {
        one_u64(b, "etcd_mvcc_db_total_size_in_bytes", "gauge",
                "Total size of the underlying database physically allocated in bytes.",
                (uint64_t)db_size);
        one_u64(b, "etcd_mvcc_db_total_size_in_use_in_bytes", "gauge",
                "Total size of the underlying database logically in use in bytes.",
                (uint64_t)in_use);
        one_u64(b, "craft_kv_revision", "gauge", "The KV store's current revision.",
                (uint64_t)rev);
        one_u64(b, "craft_kv_compact_revision", "gauge",
                "The revision the KV store's history is compacted to.", (uint64_t)compact_rev);
    }

    peer_metrics(b, src);
    grpc_metrics(b, src->client_srv);
    server_metrics_process(b);

    /* craft's own */
    one_u64(b, "craft_raft_term", "gauge", "The current Raft term.", st.core.term);
    one_u64(b, "craft_raft_durable_index", "gauge",
            "The last log index durable in this member's write-ahead log.", st.durable_index);
    one_u64(b, "craft_apply_lag_entries", "gauge",
            "Entries committed but not yet applied to the state machine on this member.",
            st.core.commit_index > st.applied_index ? st.core.commit_index - st.applied_index : 0);
    one_u64(b, "craft_raft_snapshot_index", "gauge",
            "The index of this member's newest snapshot (0 = none).", st.core.snapshot_index);
    one_hist(b, "craft_apply_batch_duration_seconds",
             "Duration of each state machine apply() call (one batch of committed entries).",
             nm.apply_batch);
    one_hist(b, "craft_snapshot_save_duration_seconds",
             "Duration of writing each snapshot of the state machine.", nm.snapshot_save);
    one_hist(b, "craft_snapshot_restore_duration_seconds",
             "Duration of each state machine restore from a snapshot (at start or from a leader).",
             nm.snapshot_restore);
    one_u64(b, "craft_read_index_rounds_total", "counter",
            "ReadIndex rounds started (each confirms leadership for a batch of linearizable reads).",
            st.read_rounds);
    one_u64(b, "craft_read_index_pending", "gauge",
            "Linearizable reads waiting for their ReadIndex.", st.reads_pending);

    struct fwd_stats fs;
    memset(&fs, 0, sizeof fs);
    kv_service_fwd_stats(src->kv, &fs);
    one_u64(b, "craft_forward_batches_sent_total", "counter",
            "Batches of writes this member forwarded to the leader.", fs.batches_sent);
    one_u64(b, "craft_forward_items_sent_total", "counter",
            "Writes this member forwarded to the leader.", fs.items_sent);
    one_u64(b, "craft_forward_batches_received_total", "counter",
            "Batches of forwarded writes this member received as leader.", fs.batches_received);
    one_u64(b, "craft_forward_items_received_total", "counter",
            "Forwarded writes this member received as leader.", fs.items_received);

    struct peer_stats ps;
    peer_stats_get(src->peer, &ps);
    one_u64(b, "craft_peer_batches_sent_total", "counter",
            "Batches of Raft messages queued to peers.", ps.batches_sent);
    one_u64(b, "craft_peer_messages_sent_total", "counter", "Raft messages queued to peers.",
            ps.msgs_sent);
    one_u64(b, "craft_peer_send_failures_total", "counter",
            "Sends to peers that failed (unreachable, in backoff, or a full stream past "
            "--peer-send-timeout).",
            ps.send_failures);
    one_u64(b, "craft_peer_messages_received_total", "counter",
            "Raft messages received from peers and handed to the node.", ps.msgs_received);
    one_u64(b, "craft_peer_messages_dropped_total", "counter",
            "Raft messages received from peers and dropped (malformed, wrong sender or recipient).",
            ps.msgs_dropped);
    one_u64(b, "craft_snapshots_sent_total", "counter",
            "Snapshot transfers to followers completed.", ps.snapshots_sent);
    one_u64(b, "craft_snapshots_send_failed_total", "counter",
            "Snapshot transfers to followers that failed.", ps.snapshots_failed);

    if (src->watch) {
        struct watch_stats ws;
        watch_hub_stats(src->watch, &ws);
        one_u64(b, "craft_watch_streams", "gauge", "Watch streams open on this member.",
                ws.streams);
        one_u64(b, "craft_watch_synced", "gauge",
                "Watches caught up with the store (fed from the applier).", ws.synced);
        one_u64(b, "craft_watch_unsynced", "gauge",
                "Watches catching up from history.", ws.unsynced);
    }
    if (src->certs)
        cert_expiry_metrics(src->certs, b);
    if (src->lease) {
        struct lease_stats ls;
        lease_stats_get(src->lease, &ls);
        one_u64(b, "etcd_debugging_lease_granted_total", "counter",
                "The total number of granted leases.", ls.granted);
        one_u64(b, "etcd_debugging_lease_revoked_total", "counter",
                "The total number of revoked leases.", ls.revoked);
        one_u64(b, "etcd_debugging_lease_renewed_total", "counter",
                "The number of renewed leases seen by the leader.", ls.renewed);
        one_u64(b, "craft_lease_keepalive_streams", "gauge",
                "LeaseKeepAlive streams open on this member.", ls.streams);
    }
}

bool server_metrics_health(const struct server_metrics_src *src, char *reason, size_t len)
{
    if (src->quota_bytes) {
        int64_t in_use = kv_store_size_in_use(src->store);
        if (in_use > 0 && (uint64_t)in_use + 2048 > src->quota_bytes) {
            snprintf(reason, len, "ALARM NOSPACE");
            return false;
        }
    }
    struct raft_node_status st;
    raft_node_status_get(src->node, &st);
    if (st.core.leader_id == 0) {
        snprintf(reason, len, "RAFT NO LEADER");
        return false;
    }
    return true;
}
