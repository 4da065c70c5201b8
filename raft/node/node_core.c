/* node_core.c: start-up and recovery, shutdown, the ticker thread, the small entry points (step,
 * status, transfer, defaults, error strings) and the helpers every file uses (clock, log,
 * fail-stop). Driving the core (the Ready/Advance cycle, the WAL hand-off, the driver thread) lives
 * in node_driver.c, proposals and the applier in node_prop.c, the replicators in node_peer.c,
 * reads in node_read.c. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "raft/node/node_internal.h"

/* The largest max_entry_bytes accepted, so that one entry always fits the WAL's queue (64 MiB):
 * the driver appends in chunks of at least one entry (node_driver.c). */
#define NODE_MAX_ENTRY_BYTES (32u << 20)

const char *raft_node_strerror(int code)
{
    switch (code) {
    case RAFT_NODE_OK: return "ok";
    case RAFT_NODE_EINVAL: return "invalid argument";
    case RAFT_NODE_ENOTLEADER: return "not the leader";
    case RAFT_NODE_ESHUTDOWN: return "node shutting down";
    case RAFT_NODE_EBUSY: return "too many pending proposals or leadership transfer in progress";
    case RAFT_NODE_ETIMEDOUT: return "timed out";
    case RAFT_NODE_ELOST: return "leadership lost before the entry committed or the read confirmed";
    case RAFT_NODE_EIO: return "storage or state machine failure";
    case RAFT_NODE_ETOOBIG: return "proposal too big";
    case RAFT_NODE_ENOMEM: return "out of memory";
    case RAFT_NODE_EPENDING: return "a configuration change is in progress";
    default: return "unknown error";
    }
}

void raft_node_config_default(struct raft_node_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->heartbeat_ms = 100;
    cfg->election_ms = 1000;
    cfg->pre_vote = true;
    cfg->check_quorum = true;
    cfg->max_entry_bytes = (3u << 19) + (64u << 10); /* 1.5 MiB + 64 KiB, like etcd */
    cfg->max_pending = 65536;
    cfg->max_pending_reads = 65536;
    cfg->max_apply_batch = 1024;
    cfg->wal_segment_bytes = 64ull << 20;
    cfg->outbox_msgs = 4096;
    cfg->outbox_bytes = 64u << 20;
    cfg->snapshot_count = 10000;
    cfg->snapshot_catchup_entries = 5000;
    cfg->max_snapshots = 5;
    cfg->max_snapshot_sends = 2;
    cfg->warn_apply_ms = 100;
    cfg->warn_fdatasync_ms = 1000;
}

int64_t node_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void node_cond_init(pthread_cond_t *cv)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
}

static void ns_to_ts(int64_t ns, struct timespec *ts)
{
    ts->tv_sec = (time_t)(ns / 1000000000);
    ts->tv_nsec = (long)(ns % 1000000000);
}

void node_fail_locked(struct raft_node *n, int code, const char *what)
{
    if (n->fatal)
        return;
    n->fatal = code;
    /* Fail-stop: a node that cannot persist must not vote, acknowledge or lead. It stops ticking,
     * stepping and sending; the others elect a leader without it. Pending proposals are failed by
     * the driver (it sees fatal && !fatal_reported). Restarting the process recovers from disk. */
    node_error(n, "stopping writes after a failure: %s", what);
    pthread_cond_broadcast(&n->driver_cv);
    pthread_cond_broadcast(&n->apply_cv);
}

/* ---- ticker ---- */

static void *ticker_main(void *arg)
{
    struct raft_node *n = arg;
    int64_t period = (int64_t)n->tick_ms * 1000000;
    int64_t next = node_now_ns() + period;
    pthread_mutex_lock(&n->mu);
    while (!n->stopping) {
        struct timespec ts;
        ns_to_ts(next, &ts);
        pthread_cond_timedwait(&n->tick_cv, &n->mu, &ts);
        if (n->stopping)
            break;
        int64_t now = node_now_ns();
        if (now < next)
            continue; /* spurious wake-up */
        /* One tick per wake-up: after a stall (a paused VM) ticks are not replayed in a burst,
         * which would fire elections at once (timeouts are lower bounds anyway). */
        next += period;
        if (next <= now)
            next = now + period;
        if (!n->fatal) {
            raft_tick(n->r);
            node_kick_locked(n, NODE_DRIVE_INLINE);
        }
        /* Proposal timeouts are checked once per tick (heartbeat_ms / 2 granularity). */
        struct node_done_list l = {0};
        struct node_read_done_list rl = {0};
        node_props_expire_locked(n, now, &l);
        node_reads_expire_locked(n, now, &rl);
        if (l.n || rl.n) {
            pthread_mutex_unlock(&n->mu);
            node_done_run(&l);
            node_read_done_run(&rl);
            pthread_mutex_lock(&n->mu);
        }
    }
    pthread_mutex_unlock(&n->mu);
    return NULL;
}

/* ---- start / stop ---- */

static int load_log(struct raft_node *n, struct raft_restore *rs, char *err, size_t errlen)
{
    memset(rs, 0, sizeof(*rs));
    wal_load_hard_state(n->w, &rs->hs);
    int rc = node_snap_load(n, rs, err, errlen); /* may reset the log to the snapshot */
    if (rc)
        return rc;
    uint64_t first = wal_first_index(n->w), last = wal_last_index(n->w);
    if (last < first)
        return 0;
    if (first != 1 && !rs->snapshot_index) {
        snprintf(err, errlen, "%s: the log starts at %" PRIu64 " and there is no snapshot%s",
                 n->data_dir, first, n->cfg.snap_dir ? "" : " store (no snap_dir)");
        return RAFT_NODE_EINVAL;
    }
    size_t count = (size_t)(last - first + 1);
    struct raft_entry *all = calloc(count, sizeof(*all));
    if (!all) {
        snprintf(err, errlen, "out of memory loading %zu entries", count);
        return RAFT_NODE_ENOMEM;
    }
    size_t have = 0;
    while (have < count) {
        struct raft_entry *chunk;
        size_t k;
        rc = wal_read_range(n->w, first + have, last, 64u << 20, &chunk, &k);
        if (rc || k == 0) {
            snprintf(err, errlen, "%s: reading entry %" PRIu64 ": %s", n->data_dir,
                     first + have, rc ? wal_errmsg() : "no entries returned");
            wal_entries_free(all, have);
            return RAFT_NODE_EIO;
        }
        memcpy(all + have, chunk, k * sizeof(*chunk));
        free(chunk); /* the payloads now belong to `all` */
        have += k;
    }
    rs->entries = all;
    rs->n_entries = have;
    /* The tail after the snapshot counts towards the next one (snapshot_log_percent) as if
     * applied now: a member restarted often must not postpone its snapshots for ever. */
    for (size_t i = 0; i < have; i++)
        if (all[i].index > rs->snapshot_index)
            n->snap_log_bytes += all[i].len + NODE_ENTRY_OVERHEAD;
    return 0;
}

static void node_free(struct raft_node *n)
{
    if (n->w)
        wal_close(n->w);
    raft_free(n->r);
    node_props_free(&n->props);
    node_reads_free(&n->reads);
    free(n->precs);
    free(n->apply_results);
    free(n->peer_ids);
    free(n->boot_conf);
    free(n->data_dir);
    pthread_cond_destroy(&n->driver_cv);
    pthread_cond_destroy(&n->apply_cv);
    pthread_cond_destroy(&n->tick_cv);
    pthread_cond_destroy(&n->snap_cv);
    pthread_cond_destroy(&n->conf_cv);
    pthread_mutex_destroy(&n->peers_mu);
    pthread_mutex_destroy(&n->peers_set_mu);
    pthread_mutex_destroy(&n->mu);
    free(n);
}

/* Stops whatever threads run, fails the pending proposals and frees the node. */
static void node_teardown(struct raft_node *n)
{
    pthread_mutex_lock(&n->mu);
    n->stopping = true;
    pthread_cond_broadcast(&n->driver_cv);
    pthread_cond_broadcast(&n->apply_cv);
    pthread_cond_broadcast(&n->tick_cv);
    pthread_mutex_unlock(&n->mu);
    if (n->ticker_started)
        pthread_join(n->ticker, NULL);
    if (n->driver_started)
        pthread_join(n->driver, NULL);
    if (n->applier_started)
        pthread_join(n->applier, NULL);
    /* The snapshot thread and any snapshot senders (they call into the core and the
     * transport), before the peers they belong to go. */
    node_snap_stop(n);
    /* The driver is gone, so nothing routes into the outboxes any more. */
    node_peers_stop(n);
    struct node_done_list l = {0};
    struct node_read_done_list rl = {0};
    pthread_mutex_lock(&n->mu);
    node_props_fail_all_locked(n, RAFT_NODE_ESHUTDOWN, &l);
    node_reads_fail_all_locked(n, RAFT_NODE_ESHUTDOWN, &rl);
    pthread_mutex_unlock(&n->mu);
    node_done_run(&l);
    node_read_done_run(&rl);
    node_free(n); /* wal_close may still call on_durable: n->mu is alive until after it */
}

static bool config_ok(const struct raft_node_config *c, char *err, size_t errlen)
{
    const char *why = NULL;
    if (!c->id)
        why = "id must be nonzero";
    else if (!c->peers || !c->n_peers || c->n_peers > RAFT_MAX_NODES)
        why = "peers must list 1..64 members";
    else if (!c->data_dir || !*c->data_dir)
        why = "data_dir is required";
    else if (!c->fsm || !c->fsm->apply || !c->fsm->applied_index)
        why = "fsm with apply and applied_index is required";
    else if (!c->transport || !c->transport->send)
        why = "transport with send is required";
    else if (c->snap_dir && (!c->fsm->snapshot_write || !c->fsm->snapshot_restore ||
                             !c->transport->send_snapshot))
        why = "snapshots need an fsm with snapshot_write and snapshot_restore and a transport "
              "with send_snapshot";
    else if (c->snapshot_log_percent > 10000)
        why = "snapshot_log_percent must be at most 10000";
    else if (c->heartbeat_ms < 2)
        why = "heartbeat_ms must be at least 2";
    else if (c->election_ms < 2 * c->heartbeat_ms)
        why = "election_ms must be at least 2 * heartbeat_ms";
    else if (!c->max_pending || !c->max_pending_reads || !c->max_apply_batch ||
             !c->max_entry_bytes)
        why = "max_pending, max_apply_batch and max_entry_bytes must be nonzero";
    else if (c->max_entry_bytes > NODE_MAX_ENTRY_BYTES ||
             c->max_entry_bytes > c->wal_segment_bytes / 2)
        /* The WAL refuses an entry that does not fit its queue or a segment; the node would
         * have to treat that as a storage failure. */
        why = "max_entry_bytes must be at most 32 MiB and half of wal_segment_bytes";
    if (why) {
        snprintf(err, errlen, "bad node configuration: %s", why);
        return false;
    }
    /* This member need not be among the peers: one that joins an existing cluster starts
     * outside the configuration (it never campaigns) until the leader's log or snapshot brings
     * the configuration that adds it; one that was removed restarts as a non-voter. */
    return true;
}

struct raft_node *raft_node_start(const struct raft_node_config *cfg_in, char *err, size_t errlen)
{
    char dummy[8];
    if (!err) {
        err = dummy;
        errlen = sizeof dummy;
    }
    if (!cfg_in) {
        snprintf(err, errlen, "no configuration");
        return NULL;
    }
    struct raft_node_config c = *cfg_in, d;
    raft_node_config_default(&d);
    /* 0 = default for the tunables (node.h). */
    if (!c.heartbeat_ms)
        c.heartbeat_ms = d.heartbeat_ms;
    if (!c.election_ms)
        c.election_ms = d.election_ms;
    if (!c.max_entry_bytes)
        c.max_entry_bytes = d.max_entry_bytes;
    if (!c.max_pending)
        c.max_pending = d.max_pending;
    if (!c.max_pending_reads)
        c.max_pending_reads = d.max_pending_reads;
    if (!c.warn_apply_ms)
        c.warn_apply_ms = d.warn_apply_ms;
    if (!c.warn_fdatasync_ms)
        c.warn_fdatasync_ms = d.warn_fdatasync_ms;
    if (!c.max_apply_batch)
        c.max_apply_batch = d.max_apply_batch;
    if (!c.wal_segment_bytes)
        c.wal_segment_bytes = d.wal_segment_bytes;
    if (!c.outbox_msgs)
        c.outbox_msgs = d.outbox_msgs;
    if (!c.outbox_bytes)
        c.outbox_bytes = d.outbox_bytes;
    if (!c.snapshot_count)
        c.snapshot_count = d.snapshot_count;
    if (!c.max_snapshot_sends)
        c.max_snapshot_sends = d.max_snapshot_sends;
    if (!config_ok(&c, err, errlen))
        return NULL;

    struct raft_node *n = calloc(1, sizeof(*n));
    if (!n) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    metrics_histogram_init(&n->apply_hist, metrics_buckets_etcd_rtt, 14, 1e9);
    metrics_histogram_init(&n->snap_save_hist, metrics_buckets_etcd_disk, 14, 1e9);
    metrics_histogram_init(&n->snap_restore_hist, metrics_buckets_etcd_disk, 14, 1e9);
    pthread_mutex_init(&n->mu, NULL);
    pthread_mutex_init(&n->peers_mu, NULL);
    pthread_mutex_init(&n->peers_set_mu, NULL);
    node_cond_init(&n->driver_cv);
    node_cond_init(&n->apply_cv);
    node_cond_init(&n->tick_cv);
    node_cond_init(&n->snap_cv);
    node_cond_init(&n->conf_cv);
    n->peer_ids = malloc(c.n_peers * sizeof(uint64_t));
    n->data_dir = strdup(c.data_dir);
    if (!n->peer_ids || !n->data_dir || node_props_init(&n->props, c.max_pending)) {
        snprintf(err, errlen, "out of memory");
        node_free(n);
        return NULL;
    }
    memcpy(n->peer_ids, c.peers, c.n_peers * sizeof(uint64_t));
    c.peers = n->peer_ids;
    c.data_dir = n->data_dir;
    n->cfg = c;

    /* Clock mapping: the core counts ticks. One tick is half a heartbeat, so the leader's
     * heartbeat (heartbeat_tick = 2) fires every heartbeat_ms, and election_tick rounds
     * election_ms to whole ticks; the core randomises the timeout in [election_ms,
     * 2 * election_ms) (Raft paper §5.2). Half-heartbeat ticks keep the rounding error of both
     * below heartbeat_ms / 2. */
    n->tick_ms = c.heartbeat_ms / 2;
    struct raft_config rc;
    raft_config_default(&rc);
    rc.id = c.id;
    rc.peers = c.peers;
    rc.n_peers = c.n_peers;
    rc.seed = c.seed ? c.seed : (uint64_t)node_now_ns() ^ ((uint64_t)getpid() << 32);
    rc.heartbeat_tick = 2;
    rc.election_tick = (c.election_ms + n->tick_ms / 2) / n->tick_ms;
    if (rc.election_tick <= rc.heartbeat_tick)
        rc.election_tick = rc.heartbeat_tick + 1;
    rc.pre_vote = c.pre_vote;
    rc.check_quorum = c.check_quorum;
    if (c.max_append_entries)
        rc.max_append_entries = c.max_append_entries;
    if (c.max_append_bytes)
        rc.max_append_bytes = c.max_append_bytes;
    if (c.max_inflight_msgs)
        rc.max_inflight_msgs = c.max_inflight_msgs;
    if (c.max_inflight_bytes)
        rc.max_inflight_bytes = c.max_inflight_bytes;
    rc.max_entry_bytes = c.max_entry_bytes;

    struct wal_options wo;
    wal_options_init(&wo);
    wo.segment_size = c.wal_segment_bytes;
    if (wo.max_entry_bytes < c.max_entry_bytes)
        wo.max_entry_bytes = c.max_entry_bytes;
    wo.on_durable = node_on_durable;
    wo.on_durable_arg = n;
    wo.log_id = c.id;
    wo.warn_sync_ns = c.warn_fdatasync_ms * 1000000;
    wo.io = c.wal_io;
    if (wal_open(&n->w, c.data_dir, &wo, err, errlen)) {
        n->w = NULL;
        node_free(n);
        return NULL;
    }
    if (node_members_load(n, err, errlen)) {
        node_free(n);
        return NULL;
    }
    struct raft_restore rs;
    int rcode = load_log(n, &rs, err, errlen);
    if (rcode) {
        node_free(n);
        return NULL;
    }
    rcode = raft_new(&rc, &rs, &n->r);
    wal_entries_free((struct raft_entry *)rs.entries, rs.n_entries);
    free(n->boot_conf);
    n->boot_conf = NULL;
    n->boot_conf_len = 0;
    if (rcode) {
        snprintf(err, errlen, "%s: cannot start the core from the stored log: %s", c.data_dir,
                 raft_strerror(rcode));
        n->r = NULL;
        node_free(n);
        return NULL;
    }
    n->wal_last = wal_last_index(n->w);
    struct raft_status st;
    raft_status_get(n->r, &st);
    n->rep_role = st.role;
    n->rep_term = st.term;
    n->rep_leader = st.leader_id;

    /* A state machine that keeps its data (and applied index) across restarts replays only the
     * tail of the log (fsm.h); an in-memory one returns 0 and replays everything. */
    n->applied = c.fsm->applied_index(c.fsm->ctx);
    const struct raft_entry *e = n->applied ? raft_log_get(n->r, n->applied) : NULL;
    n->applied_term = e ? e->term : n->applied == st.snapshot_index ? st.snapshot_term : 0;

    int prc = node_peers_start(n);
    if (prc == 0)
        prc = node_snap_start(n);
    if (prc == 0 && node_driver_start(n) == 0)
        n->driver_started = true;
    if (n->driver_started && node_applier_start(n) == 0)
        n->applier_started = true;
    if (n->applier_started && pthread_create(&n->ticker, NULL, ticker_main, n) == 0) {
        n->ticker_started = true;
        pthread_setname_np(n->ticker, "raft-ticker"); /* names show in top -H, perf, gdb */
    }
    if (!n->ticker_started) {
        snprintf(err, errlen, "cannot start the node's threads");
        node_teardown(n);
        return NULL;
    }
    return n;
}

void raft_node_stop(struct raft_node *n)
{
    if (n)
        node_teardown(n);
}

/* ---- small entry points ---- */

void raft_node_step(struct raft_node *n, const struct raft_msg *m)
{
    if (!n || !m)
        return;
    /* The runtime does not receive snapshots yet (no transfer, nothing to install): an
     * InstallSnapshot from a peer is dropped here, before the core could accept it and ask for
     * an install this node cannot carry out. Its own core never compacts, so never sends one. */
    if (m->type == RAFT_MSG_SNAPSHOT)
        return;
    node_members_note(n, m);
    pthread_mutex_lock(&n->mu);
    if (!n->stopping && !n->fatal) {
        node_note_heard_locked(n, m->from);
        raft_step(n->r, m); /* bad input is refused by the core with an error code: dropped */
        node_kick_locked(n, NODE_DRIVE_INLINE);
    }
    pthread_mutex_unlock(&n->mu);
}

/* n->mu held: a message from `from` arrived now. */
void node_note_heard_locked(struct raft_node *n, uint64_t from)
{
    if (!from)
        return;
    int64_t now = node_now_ns() / 1000000;
    struct node_heard *slot = &n->heard[0];
    for (size_t i = 0; i < sizeof n->heard / sizeof n->heard[0]; i++) {
        if (n->heard[i].id == from) {
            slot = &n->heard[i];
            break;
        }
        if (n->heard[i].ms < slot->ms)
            slot = &n->heard[i];
    }
    slot->id = from;
    slot->ms = now;
}

int raft_node_progress(struct raft_node *n, uint64_t id, uint64_t *match, uint64_t *last_index,
                       int64_t *heard_ms_ago)
{
    if (!n)
        return RAFT_NODE_EINVAL;
    pthread_mutex_lock(&n->mu);
    struct raft_status st;
    raft_status_get(n->r, &st);
    struct raft_progress_info pi;
    int rc = 0;
    if (st.role != RAFT_LEADER)
        rc = RAFT_NODE_ENOTLEADER;
    else if (raft_progress_get(n->r, id, &pi) != 0)
        rc = RAFT_NODE_EINVAL;
    if (rc == 0) {
        int64_t ago = id == n->cfg.id ? 0 : -1;
        for (size_t i = 0; ago < 0 && i < sizeof n->heard / sizeof n->heard[0]; i++)
            if (n->heard[i].id == id)
                ago = node_now_ns() / 1000000 - n->heard[i].ms;
        if (match)
            *match = pi.match;
        if (last_index)
            *last_index = st.last_index;
        if (heard_ms_ago)
            *heard_ms_ago = ago;
    }
    pthread_mutex_unlock(&n->mu);
    return rc;
}

int raft_node_transfer_leader(struct raft_node *n, uint64_t to)
{
    if (!n)
        return RAFT_NODE_EINVAL;
    pthread_mutex_lock(&n->mu);
    int rc;
    if (n->stopping)
        rc = RAFT_NODE_ESHUTDOWN;
    else if (n->fatal)
        rc = RAFT_NODE_EIO;
    else {
        rc = raft_transfer_leader(n->r, to);
        switch (rc) {
        case RAFT_OK: break;
        case RAFT_ENOTLEADER: rc = RAFT_NODE_ENOTLEADER; break;
        default: rc = RAFT_NODE_EINVAL; break;
        }
        node_kick_locked(n, NODE_DRIVE_INLINE);
    }
    pthread_mutex_unlock(&n->mu);
    return rc;
}

int raft_node_change_conf(struct raft_node *n, const struct raft_conf *target, const void *ctx,
                          size_t ctx_len, int timeout_ms, uint64_t *leader_id)
{
    if (!n || !target || (ctx_len && !ctx))
        return RAFT_NODE_EINVAL;
    if (ctx_len > n->cfg.max_entry_bytes)
        return RAFT_NODE_ETOOBIG;
    int64_t deadline = timeout_ms > 0 ? node_now_ns() + (int64_t)timeout_ms * 1000000 : 0;
    pthread_mutex_lock(&n->mu);
    int rc;
    uint64_t index = 0, term = 0, hint = 0;
    if (n->stopping) {
        rc = RAFT_NODE_ESHUTDOWN;
    } else if (n->fatal) {
        rc = RAFT_NODE_EIO;
    } else {
        rc = raft_propose_conf(n->r, target, ctx, (uint32_t)ctx_len, &index, &term, &hint);
        switch (rc) {
        case RAFT_OK: break;
        case RAFT_ENOTLEADER: rc = RAFT_NODE_ENOTLEADER; break;
        case RAFT_EPENDING: rc = RAFT_NODE_EPENDING; break;
        case RAFT_EBUSY: rc = RAFT_NODE_EBUSY; break;
        case RAFT_ETOOBIG: rc = RAFT_NODE_ETOOBIG; break;
        case RAFT_ENOMEM: rc = RAFT_NODE_ENOMEM; break;
        default: rc = RAFT_NODE_EINVAL; break;
        }
        if (rc == 0)
            node_kick_locked(n, NODE_DRIVE_INLINE);
    }
    if (leader_id)
        *leader_id = hint;
    /* Wait until the configuration in force is final (not joint), carried by an entry at or after
     * ours, and committed - in the term we proposed in (a new leader may finish it, but then we
     * no longer know: ELOST). */
    n->conf_waiters++;
    while (rc == 0) {
        struct raft_conf c;
        uint64_t ci;
        bool committed;
        raft_conf_get(n->r, &c, &ci, &committed);
        struct raft_status st;
        raft_status_get(n->r, &st);
        if (!c.n_old && ci >= index && committed)
            break;
        if (n->stopping) {
            rc = RAFT_NODE_ESHUTDOWN;
        } else if (n->fatal) {
            rc = RAFT_NODE_EIO;
        } else if (st.term != term || (st.role != RAFT_LEADER && !(ci >= index && committed))) {
            /* A leader outside C_new steps down when C_new commits: that is success, above. */
            rc = RAFT_NODE_ELOST;
        } else if (deadline && node_now_ns() >= deadline) {
            rc = RAFT_NODE_ETIMEDOUT;
        } else if (deadline) {
            int64_t left = deadline - node_now_ns();
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_sec += left / 1000000000;
            ts.tv_nsec += left % 1000000000;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&n->conf_cv, &n->mu, &ts);
        } else {
            pthread_cond_wait(&n->conf_cv, &n->mu);
        }
    }
    n->conf_waiters--;
    pthread_mutex_unlock(&n->mu);
    return rc;
}

int raft_node_conf_get(struct raft_node *n, struct raft_conf *out, uint8_t **ctx, size_t *ctx_len,
                       bool *committed)
{
    if (!n || !out)
        return RAFT_NODE_EINVAL;
    pthread_mutex_lock(&n->mu);
    uint64_t ci;
    raft_conf_get(n->r, out, &ci, committed);
    int rc = 0;
    if (ctx) {
        *ctx = NULL;
        *ctx_len = 0;
        struct raft_status st;
        raft_status_get(n->r, &st);
        uint32_t len = 0;
        const uint8_t *blob = raft_conf_blob_at(n->r, st.last_index, &len);
        const uint8_t *c = NULL;
        uint32_t cl = 0;
        struct raft_conf tmp;
        if (blob && raft_conf_decode(blob, len, &tmp, &c, &cl) == 0 && cl) {
            *ctx = malloc(cl);
            if (*ctx) {
                memcpy(*ctx, c, cl);
                *ctx_len = cl;
            } else {
                rc = RAFT_NODE_ENOMEM;
            }
        }
    }
    pthread_mutex_unlock(&n->mu);
    return rc;
}

uint64_t raft_node_term(struct raft_node *n)
{
    return atomic_load_explicit(&n->term_seen, memory_order_relaxed);
}

void raft_node_status_get(struct raft_node *n, struct raft_node_status *st)
{
    memset(st, 0, sizeof(*st));
    pthread_mutex_lock(&n->mu);
    raft_status_get(n->r, &st->core);
    st->applied_index = n->applied;
    st->durable_index = wal_durable_index(n->w);
    st->pending = (uint32_t)n->props.count;
    st->reads_pending = (uint32_t)n->reads.count;
    st->read_rounds = n->reads.rounds;
    st->props_failed = n->props_failed;
    st->fatal = n->fatal;
    pthread_mutex_unlock(&n->mu);
}

void raft_node_metrics_get(struct raft_node *n, struct raft_node_metrics *out)
{
    out->wal_fsync = wal_fsync_histogram(n->w);
    out->apply_batch = &n->apply_hist;
    out->snapshot_save = &n->snap_save_hist;
    out->snapshot_restore = &n->snap_restore_hist;
}
