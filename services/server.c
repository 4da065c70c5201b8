/* server.c: one craft member (see server.h). */
#include "services/server.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log/log.h"
#include "rpc/rpc.h"
#include "services/auth_service.h"
#include "services/auth_token.h"
#include "services/autocompact.h"
#include "services/cert_expiry.h"
#include "services/kv_service.h"
#include "services/lease_service.h"
#include "services/kvstore/kv_store.h"
#include "services/member_file.h"
#include "services/metrics_http.h"
#include "services/peer.h"
#include "services/proto/nodepb.pb-c.h"
#include "services/server_metrics.h"
#include "services/watch.h"

#define BIND_QUEUE 8       /* names waiting to be published */
#define WORKER_TICK_MS 200 /* the membership worker's look at removal and its own name */

struct craft_server {
    struct craftd_config cfg; /* cfg.cluster and cfg.self_id: as this member started */
    struct kv_store *store;
    struct kv_service *kv;    /* set under mu once created (on_conf may run before) */
    struct watch_hub *watch;  /* etcd's Watch, fed by the store's commit hook */
    struct lease_service *lease; /* etcd's Lease, fed by the store's lease hook */
    struct auth_service *auth;   /* etcd's Auth */
    struct auth_tokens *tokens;  /* Authenticate's simple tokens */
    struct peer *peer;
    struct raft_node *node;
    struct rpc_server *peer_srv, *client_srv;
    struct autocompact *autocompact; /* --auto-compaction-retention; NULL when off */
    struct metrics_http *metrics;    /* --listen-metrics-urls; NULL when none */
    struct server_metrics_src msrc;  /* what the metrics listener reads */
    struct cert_expiry certs;        /* the TLS files' expiry (craft_server_check_certs) */
    _Atomic uint64_t leader_changes; /* etcd_server_leader_changes_seen_total */
    uint64_t last_leader;            /* on_role's previous leader (0 = none) */

    pthread_mutex_t mu;
    struct cluster table;     /* the member table in force (on_conf) */
    struct cluster peer_table; /* what the peer layer serves (peer_table_locked) */
    pthread_mutex_t peer_set_mu; /* taken before mu: computing and setting peer_table, in order */
    struct raft_conf conf;    /* the configuration in force */
    bool have_conf;
    bool conf_without_self;   /* the configuration in force does not hold this member */
    bool was_member;          /* a configuration seen since start held this member */
    bool joining;             /* started empty to join a running cluster (join_cluster) */
    bool leaderless;          /* on_role: no leader known */
    bool removed;             /* this member learned it was removed from the cluster */
    char removed_why[320];
    void (*on_removed)(void *arg, const char *why);
    void *on_removed_arg;

    /* The membership worker: publishes names (leader only) and watches for this member's
     * removal being committed. */
    pthread_t worker;
    bool worker_started, stopping;
    pthread_cond_t cv;
    struct {
        uint64_t id;
        char name[CLUSTER_NAME_MAX];
    } bind[BIND_QUEUE];
    size_t n_bind;
};

/* A log line (log/log.h) with this member's id as "member" and the caller's file and line. */
#define SLOG(level, s, ...)                                                                       \
    log_emit((level), __FILE__, __LINE__, LOG_FIELDS(LOG_ID("member", (s)->cfg.self_id)),        \
             __VA_ARGS__)
#define logf_(s, ...) SLOG(LOG_LEVEL_INFO, s, __VA_ARGS__)
#define warnf_(s, ...) SLOG(LOG_LEVEL_WARN, s, __VA_ARGS__)

static void autocompact_log(void *arg, const char *line)
{
    logf_((struct craft_server *)arg, "%s", line);
}

/* mu held. A member's name for logs: its name, its id while unnamed, "none" for 0. */
static void name_locked(const struct craft_server *s, uint64_t id, char *buf, size_t len)
{
    const struct cluster_member *m = cluster_find_id(&s->table, id);
    if (!id)
        snprintf(buf, len, "none");
    else if (m && m->name[0])
        snprintf(buf, len, "%s", m->name);
    else
        snprintf(buf, len, "%016" PRIx64, id);
}

static void member_name(struct craft_server *s, uint64_t id, char *buf, size_t len)
{
    pthread_mutex_lock(&s->mu);
    name_locked(s, id, buf, len);
    pthread_mutex_unlock(&s->mu);
}

/* mu held. Whether to ask the peers if this member was removed (peer_probe_removed): when a
 * configuration it was in has been replaced by one without it, and when it knows no leader - a
 * removed learner or follower never hears from the leader again, and may never receive the
 * configuration that removed it (the leader stops sending to it once that is appended). */
static bool probe_removed_locked(const struct craft_server *s)
{
    return s->was_member && (s->conf_without_self || s->leaderless);
}

static void on_role(void *arg, uint64_t id, uint8_t role, uint64_t term, uint64_t leader_id)
{
    struct craft_server *s = arg;
    (void)id;
    pthread_mutex_lock(&s->mu);
    s->leaderless = leader_id == 0;
    /* etcd counts a leader change whenever a leader becomes known that is not the last one
     * known (so losing the leader and finding the same one again counts too). */
    if (leader_id != 0 && leader_id != s->last_leader)
        atomic_fetch_add_explicit(&s->leader_changes, 1, memory_order_relaxed);
    s->last_leader = leader_id;
    bool probe = probe_removed_locked(s);
    pthread_mutex_unlock(&s->mu);
    if (s->peer)
        peer_probe_removed(s->peer, probe);
    char leader[CLUSTER_NAME_MAX + 20];
    member_name(s, leader_id, leader, sizeof leader);
    log_emit(LOG_LEVEL_INFO, __FILE__, __LINE__,
             LOG_FIELDS(LOG_ID("member", s->cfg.self_id), LOG_STR("role", raft_role_name(role)),
                        LOG_U64("term", term), LOG_ID("leader", leader_id)),
             "%s in term %llu, leader %s", raft_role_name(role), (unsigned long long)term, leader);
}

/* ---- membership: the table in force, names published, removal ----------------------------- */

/* This member learned it was removed: logged, and the owner told (once). */
static void mark_removed(struct craft_server *s, const char *why)
{
    pthread_mutex_lock(&s->mu);
    if (s->removed) {
        pthread_mutex_unlock(&s->mu);
        return;
    }
    s->removed = true;
    snprintf(s->removed_why, sizeof s->removed_why, "%s", why);
    void (*fn)(void *, const char *) = s->on_removed;
    void *arg = s->on_removed_arg;
    pthread_mutex_unlock(&s->mu);
    warnf_(s, "this member was removed from the cluster: %s", why);
    if (fn)
        fn(arg, why);
}

/* peer.h on_removed: a peer refused this member as removed. */
static void peer_says_removed(void *arg, const char *why)
{
    mark_removed(arg, why);
}

/* peer.h on_unnamed_hello: queued for the worker, which publishes it if this member leads. */
static void on_unnamed_hello(void *arg, uint64_t id, const char *name)
{
    struct craft_server *s = arg;
    pthread_mutex_lock(&s->mu);
    bool queued = false;
    for (size_t i = 0; i < s->n_bind; i++)
        queued |= s->bind[i].id == id;
    if (!queued && s->n_bind < BIND_QUEUE) {
        s->bind[s->n_bind].id = id;
        snprintf(s->bind[s->n_bind].name, sizeof s->bind[0].name, "%s", name);
        s->n_bind++;
        pthread_cond_signal(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
}

static bool conf_has(const uint64_t *ids, uint32_t n, uint64_t id)
{
    for (uint32_t i = 0; i < n; i++)
        if (ids[i] == id)
            return true;
    return false;
}

/* mu held. One line per change between the table and configuration in force and the new ones. */
static void log_changes_locked(struct craft_server *s, const struct cluster *t,
                               const struct raft_conf *conf)
{
    char url[CLUSTER_URL_MAX];
    for (size_t i = 0; i < t->n; i++) {
        const struct cluster_member *m = &t->members[i];
        const struct cluster_member *o = cluster_find_id(&s->table, m->id);
        const char *shown = m->name[0] ? m->name : "(unnamed)";
        cluster_url_string(&m->peer_url, url, sizeof url);
        if (!o)
            logf_(s, "member %s (%016" PRIx64 ") added, peer URL %s%s", shown, m->id, url,
                  conf_has(conf->learners, conf->n_learners, m->id) ? ", as a learner" : "");
        else if (!o->name[0] && m->name[0])
            logf_(s, "member %016" PRIx64 " published its name: %s", m->id, m->name);
        if (o && (o->peer_url.port != m->peer_url.port || strcmp(o->peer_url.host, m->peer_url.host)))
            logf_(s, "member %s (%016" PRIx64 ") peer URL now %s", shown, m->id, url);
    }
    for (size_t i = 0; i < s->table.n; i++) {
        const struct cluster_member *o = &s->table.members[i];
        if (!cluster_find_id(t, o->id))
            logf_(s, "member %s (%016" PRIx64 ") removed", o->name[0] ? o->name : "(unnamed)",
                  o->id);
    }
    if (!s->have_conf)
        return;
    for (uint32_t i = 0; i < conf->n_voters; i++) {
        uint64_t id = conf->voters[i];
        if (conf_has(s->conf.learners, s->conf.n_learners, id)) {
            char n[CLUSTER_NAME_MAX + 20];
            name_locked(s, id, n, sizeof n);
            logf_(s, "learner %s promoted to voter", n);
        }
    }
}

/* mu held. The table the peer layer serves (calls in and out, who is refused as removed): the
 * table in force plus the members it dropped that Raft may still need - members of the
 * configuration in force (a joint one still counts C_old's voters), the leader (a leader that
 * removed itself leads until C_new commits, and that needs our answers), and every dropped member
 * while the configuration without it is not known committed. Dropping them at once cut a leader
 * that removed itself off from the acknowledgements it needed, and refused it as removed, so it
 * stopped before C_new could commit. Into *out; whether it differs from what the peer layer has
 * (then it is recorded as what it has). */
static bool peer_table_locked(struct craft_server *s, bool committed, uint64_t leader,
                              struct cluster *out)
{
    *out = s->table;
    for (size_t i = 0; i < s->peer_table.n; i++) {
        const struct cluster_member *m = &s->peer_table.members[i];
        if (cluster_find_id(out, m->id) || out->n == CLUSTER_MAX_MEMBERS)
            continue;
        if (!committed || m->id == leader || raft_conf_is_member(&s->conf, m->id))
            out->members[out->n++] = *m;
    }
    if (out->n != s->table.n && cluster_check(out, NULL, 0) != 0)
        *out = s->table; /* a kept member clashes with a new one (its URL reused): the table wins */
    bool same = out->n == s->peer_table.n;
    for (size_t i = 0; same && i < out->n; i++) {
        const struct cluster_member *o = cluster_find_id(&s->peer_table, out->members[i].id);
        same = o && memcmp(o, &out->members[i], sizeof *o) == 0;
    }
    s->peer_table = *out;
    return !same;
}

/* Served as a learner (kv_service_set_learner): a learner, and also a member that joined and
 * has not yet received the configuration that adds it (every member joins as a learner) or one
 * that was removed. */
static bool learner_in(const struct raft_conf *c, uint64_t id)
{
    return !raft_conf_is_voter(c, id);
}

/* node.h on_conf: the configuration in force changed (and once at start). Its ctx is the member
 * table (cluster_encode); an empty one means the initial table: kept. Called by the node's
 * driver, one call at a time, possibly before raft_node_start has returned. */
static void on_conf(void *arg, const struct raft_conf *conf, const uint8_t *ctx, size_t ctx_len)
{
    struct craft_server *s = arg;
    struct cluster t;
    char derr[256];
    pthread_mutex_lock(&s->mu);
    t = s->table;
    pthread_mutex_unlock(&s->mu);
    if (ctx_len && cluster_decode(ctx, ctx_len, &t, derr, sizeof derr) != 0)
        warnf_(s, "the configuration's member table does not decode (%s): keeping the one in force",
              derr);
    else if (ctx_len && t.id != s->cfg.cluster.id)
        warnf_(s, "the configuration's member table is of cluster %016" PRIx64 ", not %016" PRIx64
                 ": keeping the one in force",
              t.id, s->cfg.cluster.id);
    pthread_mutex_lock(&s->mu);
    if (!ctx_len || t.id != s->cfg.cluster.id)
        t = s->table;
    log_changes_locked(s, &t, conf);
    s->table = t;
    s->conf = *conf;
    s->have_conf = true;
    s->conf_without_self = !raft_conf_is_member(conf, s->cfg.self_id);
    /* A member that joins replays configurations from before it was added: being left out of
     * those is no removal. Only one held since start and then left out is (a member removed
     * while it was down, whose log says nothing of it, is refused by its peers instead). A
     * joining member's starting configuration (no table: the one from discovery) does not
     * count: the leader's log then takes it back to before it was added. */
    s->was_member = s->was_member || (!s->conf_without_self && (ctx_len || !s->joining));
    if (s->peer)
        peer_probe_removed(s->peer, probe_removed_locked(s));
    if (s->kv) {
        kv_service_set_cluster(s->kv, &t);
        kv_service_set_learner(s->kv, learner_in(conf, s->cfg.self_id));
    }
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    /* peer_set_mu, then mu: the worker's later look must not undo this with an older table.
     * mu is let go before the peer layer is told, whose callbacks take it. */
    pthread_mutex_lock(&s->peer_set_mu);
    pthread_mutex_lock(&s->mu);
    /* Not known committed here (this runs on the driver, which must not be asked); the worker
     * lets dropped members go once it is. */
    struct cluster pt;
    bool changed = peer_table_locked(s, false, 0, &pt);
    pthread_mutex_unlock(&s->mu);
    if (s->peer && changed)
        peer_set_cluster(s->peer, &pt);
    pthread_mutex_unlock(&s->peer_set_mu);
}

/* On the leader: binds `name` to unnamed member `id` in the member table (etcd's publish), by
 * a configuration change with the same voters and learners. Quietly nothing when this member
 * does not lead, a change is in progress, or the name is bound already: the member says Hello
 * again while it is unnamed. */
static void publish_name(struct craft_server *s, uint64_t id, const char *name)
{
    struct raft_node_status st;
    raft_node_status_get(s->node, &st);
    if (st.core.role != RAFT_LEADER)
        return;
    struct raft_conf conf;
    uint8_t *ctx = NULL;
    size_t len = 0;
    bool committed = false;
    if (raft_node_conf_get(s->node, &conf, &ctx, &len, &committed) != 0 || !len || conf.n_old ||
        !committed) {
        free(ctx); /* no table in the log (the initial one has names), or a change under way */
        return;
    }
    struct cluster t;
    char err[256];
    int rc = cluster_decode(ctx, len, &t, err, sizeof err);
    free(ctx);
    if (rc != 0 || cluster_set_name(&t, id, name, err, sizeof err) != 0)
        return; /* named already (or by now removed): nothing to publish */
    uint8_t *enc = NULL;
    size_t enc_len = 0;
    if (cluster_encode(&t, &enc, &enc_len) != 0)
        return;
    int timeout = (int)s->cfg.proposal_timeout_ms;
    if (timeout > 3000)
        timeout = 3000; /* craft_server_stop waits for this worker */
    rc = raft_node_change_conf(s->node, &conf, enc, enc_len, timeout, NULL);
    free(enc);
    if (rc == 0)
        logf_(s, "published member %016" PRIx64 "'s name %s", id, name);
    else if (rc != RAFT_NODE_EPENDING && rc != RAFT_NODE_ENOTLEADER)
        warnf_(s, "publishing member %016" PRIx64 "'s name %s: %s (it will say Hello again)", id,
              name, raft_node_strerror(rc));
}

/* Whether the configuration in force, committed, leaves this member out. */
static bool removal_committed(struct craft_server *s)
{
    struct raft_conf conf;
    bool committed = false;
    if (raft_node_conf_get(s->node, &conf, NULL, NULL, &committed) != 0)
        return false;
    return committed && !raft_conf_is_member(&conf, s->cfg.self_id);
}

static bool same_ids(const uint64_t *a, uint32_t na, const uint64_t *b, uint32_t nb)
{
    return na == nb && memcmp(a, b, na * sizeof *a) == 0;
}

static bool same_conf(const struct raft_conf *a, const struct raft_conf *b)
{
    return same_ids(a->voters, a->n_voters, b->voters, b->n_voters) &&
           same_ids(a->old, a->n_old, b->old, b->n_old) &&
           same_ids(a->learners, a->n_learners, b->learners, b->n_learners);
}

/* The peer layer still serves members the table dropped (peer_table_locked): once the
 * configuration in force is known committed, those no longer needed go. */
static void let_dropped_members_go(struct craft_server *s)
{
    struct raft_conf conf;
    bool committed = false;
    if (raft_node_conf_get(s->node, &conf, NULL, NULL, &committed) != 0)
        return;
    struct raft_node_status st;
    raft_node_status_get(s->node, &st);
    struct cluster pt;
    pthread_mutex_lock(&s->peer_set_mu);
    pthread_mutex_lock(&s->mu);
    /* Judged against the configuration on_conf recorded: a newer one not seen yet waits. A
     * member still catching up on history (it joined and has not yet reached the configuration
     * that adds it) lets nobody go: the members missing from old tables were added later, not
     * removed, and refusing them as removed made a member that had joined just before it stop. */
    committed = committed && same_conf(&conf, &s->conf) && s->was_member;
    bool changed = peer_table_locked(s, committed, st.core.leader_id, &pt);
    pthread_mutex_unlock(&s->mu);
    if (changed)
        peer_set_cluster(s->peer, &pt);
    pthread_mutex_unlock(&s->peer_set_mu);
}

static void *worker_main(void *arg)
{
    struct craft_server *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->stopping) {
        if (s->n_bind) {
            uint64_t id = s->bind[0].id;
            char name[CLUSTER_NAME_MAX];
            memcpy(name, s->bind[0].name, sizeof name);
            memmove(&s->bind[0], &s->bind[1], (s->n_bind - 1) * sizeof s->bind[0]);
            s->n_bind--;
            pthread_mutex_unlock(&s->mu);
            publish_name(s, id, name);
            pthread_mutex_lock(&s->mu);
            continue;
        }
        /* A leader still unnamed in its own table (it joined by URL and was elected before
         * anyone published it) publishes itself. */
        const struct cluster_member *self = cluster_find_id(&s->table, s->cfg.self_id);
        bool self_unnamed = self && !self->name[0];
        bool check_removed = s->conf_without_self && s->was_member && !s->removed;
        bool kept = s->peer_table.n != s->table.n;
        pthread_mutex_unlock(&s->mu);
        if (self_unnamed)
            publish_name(s, s->cfg.self_id, s->cfg.name);
        if (check_removed && removal_committed(s))
            mark_removed(s, "a configuration without this member was committed");
        if (kept)
            let_dropped_members_go(s);
        pthread_mutex_lock(&s->mu);
        if (s->stopping || s->n_bind)
            continue;
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += WORKER_TICK_MS * 1000000L;
        until.tv_sec += until.tv_nsec / 1000000000L;
        until.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&s->cv, &s->mu, &until);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

void craft_server_on_removed(struct craft_server *s, void (*fn)(void *arg, const char *why),
                             void *arg)
{
    pthread_mutex_lock(&s->mu);
    s->on_removed = fn;
    s->on_removed_arg = arg;
    bool now = s->removed;
    char why[sizeof s->removed_why];
    memcpy(why, s->removed_why, sizeof why);
    pthread_mutex_unlock(&s->mu);
    if (now && fn)
        fn(arg, why);
}

bool craft_server_removed(struct craft_server *s, char *why, size_t len)
{
    pthread_mutex_lock(&s->mu);
    bool r = s->removed;
    if (why && len)
        snprintf(why, len, "%s", r ? s->removed_why : "");
    pthread_mutex_unlock(&s->mu);
    return r;
}

void craft_server_cluster(struct craft_server *s, struct cluster *out)
{
    pthread_mutex_lock(&s->mu);
    *out = s->table;
    pthread_mutex_unlock(&s->mu);
}

uint64_t craft_server_member_id(struct craft_server *s) { return s->cfg.self_id; }

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
    char leader[CLUSTER_NAME_MAX + 20] = "";
    if (st.core.leader_id)
        member_name(s, st.core.leader_id, leader, sizeof leader);
    r.leader_name = leader;
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
                                    int max_streams, const char *what, char *err, size_t errlen)
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
        .max_streams = max_streams,
        .handshake_timeout_ms = (int)cfg->handshake_timeout_ms,
        .max_memory_bytes = (size_t)cfg->max_grpc_memory_bytes,
    };
    struct rpc_server *srv = rpc_server_create(&sc, rerr, sizeof rerr);
    if (!srv)
        snprintf(err, errlen, "%s listener %s: %s", what, addr, rerr);
    return srv;
}

static void metrics_render(void *arg, struct metrics_buf *b)
{
    struct craft_server *s = arg;
    server_metrics_render(&s->msrc, b);
}

static bool metrics_health(void *arg, char *reason, size_t len)
{
    struct craft_server *s = arg;
    return server_metrics_health(&s->msrc, reason, len);
}

/* --listen-metrics-urls: /metrics, /health, /version (services/metrics_http.h). */
static int start_metrics(struct craft_server *s, char *err, size_t errlen)
{
    const struct craftd_config *cfg = &s->cfg;
    s->msrc = (struct server_metrics_src){
        .node = s->node,
        .store = s->store,
        .kv = s->kv,
        .peer = s->peer,
        .client_srv = s->client_srv,
        .watch = s->watch,
        .lease = s->lease,
        .leader_changes = &s->leader_changes,
        .quota_bytes = cfg->quota_backend_bytes,
        .version = KV_SERVICE_VERSION,
        .certs = &s->certs,
    };
    struct metrics_http_config mc = {
        .urls = cfg->listen_metrics,
        .n_urls = cfg->n_listen_metrics,
        .cert_file = cfg->cert_file,
        .key_file = cfg->key_file,
        .ca_file = cfg->trusted_ca_file,
        .cipher_list = cfg->cipher_list,
        .crl_file = cfg->client_crl_file,
        .reload_ms = (unsigned)cfg->tls_reload_ms,
        .max_connections = cfg->max_metrics_connections,
        .max_header_bytes = cfg->max_metrics_request_bytes,
        .timeout_s = (unsigned)(cfg->metrics_timeout_ms / 1000),
        .render = metrics_render,
        .health = metrics_health,
        .version = KV_SERVICE_VERSION,
        .arg = s,
    };
    s->metrics = metrics_http_start(&mc, err, errlen);
    return s->metrics ? 0 : -1;
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

/* Staged TLS copies a previous run left behind (it crashed or was killed): they hold private
 * keys, so they go before new ones are made. Only rpc's own names are touched. */
static void remove_stale_tls(const char *tls_dir)
{
    DIR *d = opendir(tls_dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, "rpc-tls-", 8) != 0)
            continue;
        static const char *const names[] = {"ca.pem", "id.pem", "ca.pem.tmp", "id.pem.tmp"};
        char path[4600];
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
            snprintf(path, sizeof path, "%s/%s/%s", tls_dir, e->d_name, names[i]);
            unlink(path);
        }
        snprintf(path, sizeof path, "%s/%s", tls_dir, e->d_name);
        rmdir(path);
    }
    closedir(d);
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
        char who[CLUSTER_NAME_MAX + 20];
        name_locked(s, says, who, sizeof who); /* not running yet: nobody else holds mu */
        snprintf(err, errlen,
                 "member %s has already been bootstrapped: member %s has seen it run, but its "
                 "data directory %s holds no Raft state (a lost or wiped disk). Starting it "
                 "again as itself could let it vote twice in one term. Remove the member and add "
                 "it back as a new one, with an empty data directory",
                 cfg->name, who, cfg->data_dir);
        return -1;
    }
    if (answered < (int)cfg->cluster.n - 1)
        warnf_(s, "new data directory: %d of %zu peers answered within %u ms whether this member "
                 "ran before; starting as a new member",
              answered, cfg->cluster.n - 1, cfg->election_ms);
    return 0;
}

/* --initial-cluster-state existing with an empty data directory: the running cluster's id and
 * member table from the members --initial-cluster lists, and this member's id from the entry at
 * its --initial-advertise-peer-urls (etcd's MemberAdd put it there). */
static int join_cluster(struct craft_server *s, const struct rpc_tls *peer_tls, char *err,
                        size_t errlen)
{
    struct craftd_config *cfg = &s->cfg;
    int wait_ms = 5 * (int)cfg->election_ms;
    if (wait_ms < 5000)
        wait_ms = 5000;
    struct cluster t;
    char sub[1500];
    int rc = peer_join_discover(&cfg->cluster, cfg->name, &cfg->advertise_peer,
                                cfg->listen_peer.tls ? peer_tls : NULL, !cfg->listen_peer.tls,
                                wait_ms, &t, sub, sizeof sub);
    if (rc != 0) {
        snprintf(err, errlen, "%s", sub);
        return -1;
    }
    const struct cluster_member *me = cluster_find_url(&t, &cfg->advertise_peer);
    char url[CLUSTER_URL_MAX];
    cluster_url_string(&cfg->advertise_peer, url, sizeof url);
    if (me->name[0] && strcmp(me->name, cfg->name) != 0) {
        snprintf(err, errlen,
                 "the cluster's member at peer URL %s is named %s, not --name %s: start it with "
                 "--name %s, or add this member with its own peer URL",
                 url, me->name, cfg->name, me->name);
        return -1;
    }
    const struct cluster_member *same = cluster_find_name(&t, cfg->name);
    if (same && same->id != me->id) {
        snprintf(err, errlen, "the cluster already has a member named %s at another peer URL",
                 cfg->name);
        return -1;
    }
    logf_(s, "joining cluster %016" PRIx64 " as member %016" PRIx64 " (%s at %s), %zu members",
          t.id, me->id, me->name[0] ? "named" : "added by peer URL", url, t.n);
    cfg->self_id = me->id;
    cfg->cluster = t;
    return 0;
}

/* Who this member is: from <data-dir>/member when the data directory has Raft state, from the
 * running cluster when it joins, from the flags otherwise. *record: write the member file. */
static int find_identity(struct craft_server *s, bool fresh, const struct rpc_tls *peer_tls,
                         bool *record, char *err, size_t errlen)
{
    struct craftd_config *cfg = &s->cfg;
    *record = true;
    if (fresh) {
        s->joining = cfg->join_existing;
        return cfg->join_existing ? join_cluster(s, peer_tls, err, errlen) : 0;
    }
    struct member_file mf;
    char sub[600];
    int rc = member_file_read(cfg->data_dir, &mf, sub, sizeof sub);
    if (rc < 0) {
        snprintf(err, errlen, "%s", sub);
        return -1;
    }
    if (rc == 1)
        return 0; /* a data directory from before member files: the flags, as they were; kept */
    *record = false;
    if (strcmp(mf.name, cfg->name) != 0) {
        snprintf(err, errlen,
                 "data directory %s belongs to member %s (%016" PRIx64 "), not --name %s",
                 cfg->data_dir, mf.name, mf.member_id, cfg->name);
        return -1;
    }
    if (mf.member_id != cfg->self_id || mf.table.id != cfg->cluster.id)
        logf_(s, "member %016" PRIx64 " of cluster %016" PRIx64 " as recorded in %s/%s (the "
                 "flags' --initial-cluster and token count only for a new data directory)",
              mf.member_id, mf.table.id, cfg->data_dir, MEMBER_FILE_NAME);
    cfg->self_id = mf.member_id;
    cfg->cluster = mf.table;
    return 0;
}

struct craft_server *craft_server_start(const struct craftd_config *cfg, char *err, size_t errlen)
{
    struct craft_server *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->peer_set_mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->cfg = *cfg;
    s->certs.member_id = cfg->self_id;
    cert_expiry_add(&s->certs, "client", s->cfg.cert_file);
    cert_expiry_add(&s->certs, "client-ca", s->cfg.trusted_ca_file);
    cert_expiry_add(&s->certs, "peer", s->cfg.peer_cert_file);
    cert_expiry_add(&s->certs, "peer-ca", s->cfg.peer_trusted_ca_file);
    if (cfg->initial_cluster == cfg->default_cluster)
        s->cfg.initial_cluster = s->cfg.default_cluster;
    if (cfg->data_dir == cfg->default_data_dir)
        s->cfg.data_dir = s->cfg.default_data_dir;
    cfg = &s->cfg;

    /* Reloaded TLS files are checked, then staged under <data-dir>/tls (rpc/rpc.h). */
    char tls_dir[4200];
    snprintf(tls_dir, sizeof tls_dir, "%s/tls", cfg->data_dir);
    unsigned reload_sec = (unsigned)((cfg->tls_reload_ms + 999) / 1000);
    struct rpc_tls peer_tls = {.ca_file = cfg->peer_trusted_ca_file,
                               .cert_file = cfg->peer_cert_file,
                               .key_file = cfg->peer_key_file,
                               .reload_sec = reload_sec,
                               .stage_dir = tls_dir,
                               .allowed_cn = cfg->peer_cert_allowed_cn,
                               .allowed_hostname = cfg->peer_cert_allowed_hostname,
                               .crl_file = cfg->peer_crl_file};
    struct rpc_tls client_tls = {.ca_file = cfg->trusted_ca_file,
                                 .cert_file = cfg->cert_file,
                                 .key_file = cfg->key_file,
                                 .reload_sec = reload_sec,
                                 .stage_dir = tls_dir,
                                 .crl_file = cfg->client_crl_file};
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
    remove_stale_tls(tls_dir);
    struct kv_store_opts ko = {.map_size = kv_store_map_size(cfg->quota_backend_bytes),
                               .sync_every_batch = cfg->backend_sync_ms == 0,
                               .sync_interval_ms = cfg->backend_sync_ms};
    s->store = kv_store_open(kv_dir, &ko, sub, sizeof sub);
    if (!s->store) {
        snprintf(err, errlen, "KV store %s: %s", kv_dir, sub);
        goto fail;
    }
    if (*kv_store_open_note(s->store))
        logf_(s, "kv store %s: %s", kv_dir, kv_store_open_note(s->store));
    bool record = false;
    if (find_identity(s, fresh, &peer_tls, &record, err, errlen) != 0)
        goto fail;
    s->table = cfg->cluster;
    s->peer_table = cfg->cluster;
    struct peer_config pc = {
        .cluster = &cfg->cluster,
        .self_id = cfg->self_id,
        .name = cfg->name,
        .on_unnamed_hello = on_unnamed_hello,
        .on_removed = peer_says_removed,
        .cb_arg = s,
        .tls = cfg->listen_peer.tls ? &peer_tls : NULL,
        .insecure = !cfg->listen_peer.tls,
        .send_timeout_ms = (int)cfg->peer_send_timeout_ms,
        .client_urls = cfg->advertise_client_urls,
        .snapshot_chunk_bytes = cfg->snapshot_chunk_bytes,
        .snapshot_rate = cfg->snapshot_send_rate,
        .test_fault_snapshot_chunk = cfg->test_fault_snapshot_chunk,
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
    /* --max-concurrent-streams is the client port's (etcd's); members open a handful of streams
     * to each other, and the peer port keeps rpc's default. */
    s->peer_srv = listen_on(&cfg->listen_peer, &peer_tls, cfg, peer_max, 0, "peer", err, errlen);
    if (!s->peer_srv || peer_register(s->peer, s->peer_srv) != 0)
        goto fail;
    /* As etcd: gRPC takes up to 512 KiB over --max-request-bytes, so a request just over the
     * limit gets etcd's "request is too large" from the service, not a transport error. */
    s->client_srv = listen_on(&cfg->listen_client, &client_tls, cfg,
                              cfg->max_request_bytes + (512u << 10),
                              (int)cfg->max_concurrent_streams, "client", err, errlen);
    if (!s->client_srv ||
        rpc_server_register_unary_msg(s->client_srv, "/craft.node.Node/Status",
                                      &craft__node__status_request__descriptor, handle_status, s))
        goto fail;

    if (fresh && cfg->cluster.n > 1 && check_not_bootstrapped(s, err, errlen))
        goto fail;
    if (record) {
        struct member_file mf = {.member_id = cfg->self_id, .table = cfg->cluster};
        snprintf(mf.name, sizeof mf.name, "%s", cfg->name);
        if (member_file_write(cfg->data_dir, &mf, sub, sizeof sub) != 0) {
            snprintf(err, errlen, "%s", sub);
            goto fail;
        }
    }

    s->tokens = auth_tokens_new();
    if (!s->tokens) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    /* The store's commit hook must be set before the node applies anything (replay too). */
    struct watch_config wc = {
        .tokens = s->tokens,
        .store = s->store,
        .cluster_id = cfg->cluster.id,
        .member_id = cfg->self_id,
        .max_request_bytes = cfg->max_request_bytes,
        .max_send_bytes = cfg->max_request_bytes + (512u << 10), /* the client listener's */
        .max_per_stream = cfg->max_watches_per_stream,
        .max_stream_bytes = cfg->max_watch_stream_bytes,
        .max_member_bytes = cfg->max_watch_bytes,
        .max_hub_bytes = cfg->max_watch_hub_bytes,
        .progress_interval_ms = cfg->watch_progress_ms,
    };
    s->watch = watch_hub_create(&wc, sub, sizeof sub);
    if (!s->watch) {
        snprintf(err, errlen, "%s", sub);
        goto fail;
    }
    struct lease_service_config lc = {
        .store = s->store,
        .cluster_id = cfg->cluster.id,
        .self_id = cfg->self_id,
        .election_ms = cfg->election_ms,
        .tick_ms = cfg->heartbeat_ms < 100 ? cfg->heartbeat_ms : 100,
        .timeout_ms = cfg->proposal_timeout_ms,
        .revoke_rate = cfg->lease_revoke_rate,
        .checkpoint = cfg->lease_checkpoint,
        .checkpoint_ms = cfg->lease_checkpoint_ms,
        .max_inflight = cfg->max_lease_keepalive_inflight,
        .max_streams = cfg->max_lease_keepalive_streams,
        .max_send_bytes = cfg->max_request_bytes + (512u << 10), /* the client listener's */
    };
    s->lease = lease_service_create(&lc);
    if (!s->lease) {
        snprintf(err, errlen, "cannot set up the Lease service");
        goto fail;
    }

    /* The configuration to start from when the log has none. A member joining a running cluster
     * starts outside it (the others as voters): it joined as a learner, and until the leader's
     * log or snapshot says what it is, it must not campaign - with its empty log it could not
     * win, but it would disturb the others (a learner's pre-votes were seen in the 1 GiB learner
     * benchmark while its snapshot was still on the way). */
    uint64_t ids[CLUSTER_MAX_MEMBERS];
    size_t n_ids = 0;
    for (size_t i = 0; i < cfg->cluster.n; i++)
        if (!s->joining || cfg->cluster.members[i].id != cfg->self_id)
            ids[n_ids++] = cfg->cluster.members[i].id;
    struct raft_node_config nc;
    raft_node_config_default(&nc);
    nc.id = cfg->self_id;
    nc.peers = ids;
    nc.n_peers = n_ids;
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
    nc.snapshot_log_percent = cfg->snapshot_log_percent;
    nc.snapshot_log_max_bytes = cfg->snapshot_log_max_bytes;
    nc.max_snapshots = cfg->max_snapshots;
    nc.max_snapshot_sends = cfg->max_snapshot_sends;
    nc.warn_apply_ms = cfg->warning_apply_ms;
    nc.warn_fdatasync_ms = cfg->warning_fdatasync_ms;
    nc.on_role = on_role;
    nc.on_role_arg = s;
    nc.on_conf = on_conf;
    nc.on_conf_arg = s;
    s->node = raft_node_start(&nc, sub, sizeof sub);
    if (!s->node) {
        snprintf(err, errlen, "%s", sub);
        goto fail;
    }
    s->worker_started = pthread_create(&s->worker, NULL, worker_main, s) == 0;
    if (!s->worker_started) {
        snprintf(err, errlen, "cannot start the membership thread");
        goto fail;
    }
    struct kv_service_config kc = {
        .tokens = s->tokens,
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
        .token = cfg->initial_cluster_token,
        .election_ms = cfg->election_ms,
    };
    struct kv_service *kv = kv_service_create(&kc);
    if (kv) {
        pthread_mutex_lock(&s->mu);
        s->kv = kv;
        kv_service_set_cluster(kv, &s->table); /* what on_conf found before kv existed */
        kv_service_set_learner(kv, s->have_conf && learner_in(&s->conf, s->cfg.self_id));
        pthread_mutex_unlock(&s->mu);
    }
    if (!s->kv || kv_service_register_client(s->kv, s->client_srv) != 0 ||
        watch_hub_register(s->watch, s->client_srv, s->node) != 0 ||
        kv_service_register_peer(s->kv, s->peer_srv) != 0 ||
        lease_service_register(s->lease, s->client_srv, s->peer_srv) != 0 ||
        !(s->auth = auth_service_register(s->kv, s->client_srv)) ||
        lease_service_start(s->lease, s->node, s->kv, s->peer) != 0) {
        snprintf(err, errlen, "cannot set up the KV service");
        goto fail;
    }
    peer_attach(s->peer, s->node);
    if (cfg->auto_compaction_retention) {
        s->autocompact = autocompact_start(s->node, s->store,
                                           cfg->auto_compaction_revision ? AC_REVISION
                                                                         : AC_PERIODIC,
                                           cfg->auto_compaction_retention,
                                           cfg->auto_compaction_interval_ms,
                                           (int)cfg->proposal_timeout_ms, autocompact_log, s);
        if (!s->autocompact) {
            snprintf(err, errlen, "cannot start the automatic compaction thread");
            goto fail;
        }
    }
    if (rpc_server_start(s->peer_srv) != 0 || rpc_server_start(s->client_srv) != 0) {
        snprintf(err, errlen, "cannot start the listeners");
        goto fail;
    }
    if (cfg->n_listen_metrics && start_metrics(s, err, errlen) != 0)
        goto fail;
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
    metrics_http_stop(s->metrics); /* first: it reads the node, store, peer and client server */
    s->metrics = NULL;
    /* The membership worker first: it calls into the node (a name being published waits at
     * most 3 s). */
    if (s->worker_started) {
        pthread_mutex_lock(&s->mu);
        s->stopping = true;
        pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->worker, NULL);
    }
    autocompact_stop(s->autocompact); /* it proposes through the node */
    lease_service_stop(s->lease); /* keep-alive streams end UNAVAILABLE; its thread proposes */
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
    auth_service_free(s->auth);
    lease_service_destroy(s->lease); /* after the node and the peer: their callbacks ran */
    watch_hub_destroy(s->watch); /* after the streams (client server) and the applier (node) */
    auth_tokens_free(s->tokens); /* after everything that asks who a caller is */
    kv_store_close(s->store);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->peer_set_mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}

struct raft_node *craft_server_node(struct craft_server *s) { return s->node; }

size_t craft_server_check_certs(struct craft_server *s, int64_t now)
{
    return cert_expiry_check(&s->certs, now, (int64_t)(s->cfg.tls_expiry_warning_ms / 1000));
}

void craft_server_fwd_stats(struct craft_server *s, struct fwd_stats *out)
{
    kv_service_fwd_stats(s->kv, out);
}

void craft_server_watch_stats(struct craft_server *s, struct watch_stats *out)
{
    watch_hub_stats(s->watch, out);
}
