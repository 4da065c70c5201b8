/* node_snap.c: snapshots in the runtime (Raft paper §7; docs/node.md "Snapshots").
 *
 * - Taking: a background thread ("raft-snap") writes the state machine's snapshot into the
 *   snapshot store (raft/snap/snap.h) every snapshot_count applied entries, without stopping
 *   apply (fsm.h: snapshot_write runs beside apply), then compacts the core's log
 *   (raft_compact, keeping snapshot_catchup_entries) and the WAL's (wal_compact_prefix). The
 *   snapshot is durable (snap_commit) before anything is dropped.
 * - Start-up: the newest snapshot that verifies (a damaged newer one is skipped, and named); the
 *   state machine is restored from it if it is behind it (a store discarded after a machine
 *   crash, or a new disk); the log must reach back to it.
 * - Sending: the core's RAFT_MSG_SNAPSHOT for a follower starts a sender thread for that
 *   follower (one per follower, max_snapshot_sends at once) which hands the file to the
 *   transport; the outcome goes back to the core (raft_report_snapshot), a failure after a pause
 *   so a follower that cannot take it is not flooded.
 * - Installing (follower): the transport receives the file into the store and steps the message
 *   (raft_node_step_snapshot); when the core asks for the install (rd.snapshot), the driver
 *   stops the applier and the snapshot thread, restores the state machine, resets the WAL to
 *   start after the snapshot, and moves the applied index to it. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "raft/node/node_internal.h"
#include "raft/snap/snap.h"

static long reader_read(void *arg, void *buf, size_t len)
{
    return snap_file_read(arg, buf, len);
}

/* A snapshot being taken: its file, and the payload bytes written so far (snapshot_log_percent
 * weighs the log against them). */
struct counting_writer {
    struct snap_writer *w;
    uint64_t bytes;
};

static int writer_write(void *arg, const void *buf, size_t len)
{
    struct counting_writer *cw = arg;
    cw->bytes += len;
    return snap_write(cw->w, buf, len);
}

/* Restores the state machine from f, a verified snapshot (index, term) of the store; closes f. */
static int restore_fsm(struct raft_node *n, struct snap_file *f, char *err, size_t errlen)
{
    uint64_t index = snap_file_header(f)->index, term = snap_file_header(f)->term;
    char why[256] = "";
    struct raft_snapshot_reader rd = {reader_read, f, why, sizeof why};
    struct raft_fsm *fsm = n->cfg.fsm;
    uint64_t t0 = metrics_now_ns();
    int rc = fsm->snapshot_restore(fsm->ctx, &rd, index, term);
    if (!rc)
        metrics_histogram_observe(&n->snap_restore_hist, metrics_now_ns() - t0);
    snap_file_close(f);
    if (rc)
        snprintf(err, errlen, "restoring the state machine from snapshot %" PRIu64 "/%" PRIu64
                              ": %s", index, term, why[0] ? why : strerror(rc < 0 ? -rc : rc));
    return rc;
}

int node_snap_load(struct raft_node *n, struct raft_restore *rs, char *err, size_t errlen)
{
    if (!n->cfg.snap_dir)
        return 0;
    struct snap_options o;
    snap_options_init(&o);
    o.max_snapshots = n->cfg.max_snapshots;
    o.log_id = n->cfg.id;
    o.io = n->cfg.snap_io;
    char sub[512];
    if (snap_store_open(&n->snaps, n->cfg.snap_dir, &o, sub, sizeof sub)) {
        snprintf(err, errlen, "snapshot store %s: %s", n->cfg.snap_dir, sub);
        n->snaps = NULL;
        return RAFT_NODE_EIO;
    }
    struct snap_file *f;
    int rc = snap_load_newest(n->snaps, 1, &f);
    if (rc == -ENOENT)
        return 0;
    if (rc) {
        snprintf(err, errlen, "snapshot store %s: %s", n->cfg.snap_dir, snap_errmsg());
        return RAFT_NODE_EIO;
    }
    uint64_t index = snap_file_header(f)->index, term = snap_file_header(f)->term;
    n->snap_bytes = snap_file_size(f);
    /* The cluster configuration in force at the snapshot (empty in files written before
     * membership changes existed: the core then starts from cfg.peers). */
    uint32_t clen = snap_file_header(f)->config_len;
    if (clen) {
        n->boot_conf = malloc(clen);
        if (!n->boot_conf) {
            snap_file_close(f);
            snprintf(err, errlen, "out of memory");
            return RAFT_NODE_ENOMEM;
        }
        memcpy(n->boot_conf, snap_file_config(f), clen);
        n->boot_conf_len = clen;
    }
    struct raft_fsm *fsm = n->cfg.fsm;
    if (fsm->applied_index(fsm->ctx) < index) {
        /* The file verified as it was loaded: restore from it as it is, not a second read. */
        node_log(n, "restoring the state machine from snapshot %" PRIu64 " (term %" PRIu64 ")",
                 index, term);
        if (restore_fsm(n, f, sub, sizeof sub)) {
            snprintf(err, errlen, "%s: %s", n->cfg.snap_dir, sub);
            return RAFT_NODE_EIO;
        }
    } else {
        snap_file_close(f);
    }
    /* The log must continue the snapshot. One that ends before it, or disagrees with it there,
     * is superseded by it (a crash between an install's restore and its log reset): the
     * snapshot only holds committed entries. One that starts after it lost entries. */
    uint64_t first = wal_first_index(n->w), last = wal_last_index(n->w), t = 0;
    if (last < index || (first <= index && (wal_term_at(n->w, index, &t) || t != term))) {
        node_log(n, "the log ends before snapshot %" PRIu64 " or disagrees with it: reset to it",
                 index);
        if (wal_reset(n->w, index, term)) {
            snprintf(err, errlen, "%s: resetting the log to snapshot %" PRIu64 ": %s",
                     n->data_dir, index, wal_errmsg());
            return RAFT_NODE_EIO;
        }
    } else if (first > index + 1) {
        snprintf(err, errlen,
                 "%s: the log starts at %" PRIu64 " but the newest usable snapshot in %s ends "
                 "at %" PRIu64 ": entries in between are missing",
                 n->data_dir, first, n->cfg.snap_dir, index);
        return RAFT_NODE_EIO;
    }
    rs->snapshot_index = index;
    rs->snapshot_term = term;
    rs->conf = n->boot_conf;
    rs->conf_len = n->boot_conf_len;
    n->snap_index = index;
    return 0;
}

/* ---- taking snapshots ---- */

/* snapshot_count entries applied since the last snapshot, and (snapshot_log_percent) enough
 * log bytes to pay for dumping a state of the last snapshot's size. */
static bool count_due_locked(const struct raft_node *n)
{
    return n->applied >= n->snap_index + n->cfg.snapshot_count &&
           n->applied >= n->snap_retry_at &&
           (n->snap_log_bytes >= UINT64_MAX / 100 || /* (no overflow below) */
            n->snap_log_bytes * 100 >= n->snap_bytes * n->cfg.snapshot_log_percent ||
            (n->cfg.snapshot_log_max_bytes && n->snap_log_bytes >= n->cfg.snapshot_log_max_bytes));
}

static bool compact_due_locked(struct raft_node *n);

static bool due_locked(struct raft_node *n)
{
    return !n->installing && !n->fatal &&
           (n->snap_asked > n->snap_served || count_due_locked(n) || compact_due_locked(n));
}

void node_snap_applied_locked(struct raft_node *n)
{
    /* (After an apply the core has applied n->applied: a compaction waiting for that is due.) */
    if (n->snaps && (count_due_locked(n) ||
                     (n->compact_pending && n->applied >= n->compact_pending)))
        pthread_cond_broadcast(&n->snap_cv);
}

/* n->mu held: the core has applied up to the snapshot taken last, so the log before it may go. */
static bool compact_due_locked(struct raft_node *n)
{
    if (!n->compact_pending)
        return false;
    struct raft_status st;
    raft_status_get(n->r, &st);
    return st.applied_index >= n->compact_pending;
}

/* No lock held, n->snapshotting ours: if compact_due_locked, drops the core's log before the
 * snapshot taken last, less the catch-up entries, and the WAL's segments below that. */
static int compact_pending(struct raft_node *n)
{
    pthread_mutex_lock(&n->mu);
    if (!compact_due_locked(n)) {
        pthread_mutex_unlock(&n->mu);
        return 0;
    }
    uint64_t index = n->compact_pending;
    n->compact_pending = 0;
    struct raft_status st;
    raft_status_get(n->r, &st);
    uint64_t keep = n->cfg.snapshot_catchup_entries;
    uint64_t first_kept = index + 1 > keep ? index + 1 - keep : 1;
    if (first_kept < st.first_index)
        first_kept = st.first_index;
    int rc = raft_compact(n->r, index, first_kept);
    pthread_mutex_unlock(&n->mu);
    if (rc) /* an install overtook it: its snapshot is newer */
        return 0;
    if (first_kept > 1 && wal_compact_prefix(n->w, first_kept)) {
        node_error(n, "compacting the log to %" PRIu64 ": %s", first_kept, wal_errmsg());
        return RAFT_NODE_EIO;
    }
    return 0;
}

/* No lock held, n->snapshotting ours: one snapshot, then the compaction it allows. */
/* n->mu held: a copy of the configuration in force at index (raft_conf_blob_at), or NULL. */
static uint8_t *conf_at_locked(struct raft_node *n, uint64_t index, uint32_t *len)
{
    const uint8_t *b = raft_conf_blob_at(n->r, index, len);
    uint8_t *c = b && *len ? malloc(*len) : NULL;
    if (c)
        memcpy(c, b, *len);
    return c;
}

static int take(struct raft_node *n, uint64_t *out_index)
{
    struct raft_fsm *fsm = n->cfg.fsm;
    struct snap_writer *w;
    /* The snapshot carries the configuration in force at its index (§7). The index is known only
     * once the state machine has written it, so take the configuration at the applied index now
     * and check below that none changed in between (if one did, this snapshot is dropped and
     * the next one carries it). */
    pthread_mutex_lock(&n->mu);
    uint64_t from = n->applied;
    uint64_t log_bytes = n->snap_log_bytes; /* what this snapshot pays for */
    uint32_t clen = 0;
    uint8_t *conf = conf_at_locked(n, from, &clen);
    pthread_mutex_unlock(&n->mu);
    if (!conf) {
        node_error(n, "snapshot: the configuration at %" PRIu64 " is unknown", from);
        return RAFT_NODE_EIO;
    }
    int rc = snap_create(n->snaps, 0, 0, conf, clen, &w);
    if (rc) {
        free(conf);
        node_error(n, "snapshot: %s", snap_errmsg());
        return RAFT_NODE_EIO;
    }
    char why[256] = "";
    struct counting_writer cw = {w, 0};
    struct raft_snapshot_writer wr = {writer_write, &cw, why, sizeof why};
    uint64_t index = 0, term = 0;
    rc = fsm->snapshot_write(fsm->ctx, &wr, &index, &term);
    pthread_mutex_lock(&n->mu);
    if (!rc && !term) {
        /* The machine saw that entry only as a batch's trailing NOOP/CONFIG (fsm.h). */
        const struct raft_entry *e = raft_log_get(n->r, index);
        struct raft_status st;
        raft_status_get(n->r, &st);
        term = e ? e->term : st.snapshot_index == index ? st.snapshot_term : 0;
    }
    uint64_t prev = n->snap_index;
    uint32_t nlen = 0;
    const uint8_t *now = !rc && term ? raft_conf_blob_at(n->r, index, &nlen) : NULL;
    bool conf_moved = !rc && term && (!now || nlen != clen || memcmp(now, conf, clen));
    pthread_mutex_unlock(&n->mu);
    free(conf);
    if (conf_moved) {
        snap_abort(w);
        node_log(n, "snapshot at %" PRIu64 ": the configuration changed while it was written; "
                    "the next one will carry it", index);
        *out_index = prev;
        return 0;
    }
    if (rc || !term || index <= prev) {
        snap_abort(w);
        if (rc || !term)
            node_error(n, "snapshot from applied index %" PRIu64 " failed: %s; the log is kept "
                          "and the next try comes after %" PRIu64 " more entries", from,
                       rc ? why : "the term of its index is unknown", n->cfg.snapshot_count);
        *out_index = prev;
        return rc ? RAFT_NODE_EIO : 0; /* nothing new applied since the last one: not an error */
    }
    if (snap_commit_as(w, index, term)) {
        node_error(n, "snapshot %" PRIu64 ": %s", index, snap_errmsg());
        return RAFT_NODE_EIO;
    }
    /* Durable: it counts as taken. */
    pthread_mutex_lock(&n->mu);
    *out_index = index;
    if (index <= n->snap_index) { /* an install overtook it: its snapshot is newer */
        pthread_mutex_unlock(&n->mu);
        return 0;
    }
    n->snap_index = index;
    n->snap_bytes = cw.bytes + clen;
    n->snap_log_bytes -= log_bytes < n->snap_log_bytes ? log_bytes : n->snap_log_bytes;
    /* The log before it may go once the core has applied up to it (raft_compact refuses more).
     * The machine can be ahead of the core: after a restart it keeps its applied index while
     * the core learns the commit index again from a leader (a member alone may never), and
     * between an apply and its report. Compacting waits for that instead of the snapshot being
     * taken again and again, a full dump each time (it was: a restarted member without a
     * quorum dumped its store back to back). */
    n->compact_pending = index;
    pthread_mutex_unlock(&n->mu);
    return compact_pending(n);
}

static void *snap_main(void *arg)
{
    struct raft_node *n = arg;
    pthread_mutex_lock(&n->mu);
    for (;;) {
        while (!n->stopping && !due_locked(n))
            pthread_cond_wait(&n->snap_cv, &n->mu);
        if (n->stopping)
            break;
        uint64_t asked = n->snap_asked;
        bool dump = asked > n->snap_served || count_due_locked(n); /* else: compaction only */
        n->snapshotting = true;
        pthread_mutex_unlock(&n->mu);
        uint64_t index = 0;
        uint64_t t0 = metrics_now_ns();
        int rc = dump ? take(n, &index) : compact_pending(n);
        if (!rc && dump)
            metrics_histogram_observe(&n->snap_save_hist, metrics_now_ns() - t0);
        pthread_mutex_lock(&n->mu);
        n->snapshotting = false;
        if (rc)
            n->snap_retry_at = n->applied + n->cfg.snapshot_count; /* not in a loop */
        if (dump) {
            n->snap_served = asked;
            n->snap_result = rc;
        }
        pthread_cond_broadcast(&n->snap_cv); /* requesters, an install waiting for us */
    }
    pthread_mutex_unlock(&n->mu);
    return NULL;
}

int node_snap_start(struct raft_node *n)
{
    if (!n->snaps)
        return 0;
    if (pthread_create(&n->snap_thread, NULL, snap_main, n))
        return RAFT_NODE_ENOMEM;
    n->snap_thread_started = true;
    pthread_setname_np(n->snap_thread, "raft-snap");
    return 0;
}

int raft_node_snapshot_now(struct raft_node *n, uint64_t *index)
{
    if (!n || !n->snaps)
        return RAFT_NODE_EINVAL;
    pthread_mutex_lock(&n->mu);
    uint64_t mine = ++n->snap_asked;
    pthread_cond_broadcast(&n->snap_cv);
    while (n->snap_served < mine && !n->stopping && !n->fatal)
        pthread_cond_wait(&n->snap_cv, &n->mu);
    int rc = n->stopping ? RAFT_NODE_ESHUTDOWN : n->fatal ? n->fatal : n->snap_result;
    if (index)
        *index = n->snap_index;
    pthread_mutex_unlock(&n->mu);
    return rc;
}

/* ---- sending snapshots ---- */

static void *sender_main(void *arg)
{
    struct node_snap_sender *s = arg;
    struct raft_node *n = s->n;
    const struct raft_transport *t = n->cfg.transport;
    pthread_mutex_lock(&n->mu);
    while (!n->stopping && !s->orphan && n->snap_sends >= n->cfg.max_snapshot_sends)
        pthread_cond_wait(&n->snap_cv, &n->mu);
    int rc = RAFT_NODE_ESHUTDOWN;
    if (!n->stopping && !s->orphan) {
        n->snap_sends++;
        pthread_mutex_unlock(&n->mu);
        struct snap_file *f;
        rc = snap_open(n->snaps, s->msg.snapshot_index, s->msg.snapshot_term, &f);
        if (rc == 0) {
            /* The configuration travels with the message, from the file's metadata: the same
             * bytes the core named (the file was written with raft_conf_blob_at). */
            struct raft_msg m = s->msg;
            m.conf = (uint8_t *)snap_file_config(f);
            m.conf_len = snap_file_header(f)->config_len;
            rc = t->send_snapshot(t->ctx, s->to, &m, f);
            snap_file_close(f);
        } else {
            node_warn(n, "snapshot for %016" PRIx64 ": %s", s->to, snap_errmsg());
        }
        pthread_mutex_lock(&n->mu);
        n->snap_sends--;
        pthread_cond_broadcast(&n->snap_cv);
    }
    if (rc && !n->stopping && !s->orphan) {
        /* Pause before the core sends it again, so a follower that cannot take it (down,
         * refusing, out of disk) is not sent the snapshot in a tight loop. A removal ends it:
         * no snapshot goes to a former peer anyway. */
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += n->cfg.election_ms / 1000;
        ts.tv_nsec += (long)(n->cfg.election_ms % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        while (!n->stopping && !s->orphan &&
               pthread_cond_timedwait(&n->snap_cv, &n->mu, &ts) != ETIMEDOUT)
            ;
    }
    /* Done before the report: the core may answer it with the next snapshot for this peer at
     * once, which the driver thread then routes here (it joins this thread, never this thread
     * itself, hence no inline drive from here). An orphan reports too: a core that no longer
     * has the peer ignores it (RAFT_EUNKNOWN), one that has it again needs it to send the next
     * snapshot (node_snap_send holds a new transfer back while this one runs). */
    s->running = false;
    if (!n->stopping && !n->fatal) {
        raft_report_snapshot(n->r, s->to, rc == 0);
        pthread_cond_signal(&n->driver_cv);
    }
    pthread_mutex_unlock(&n->mu);
    return NULL;
}

/* Joins and frees the orphans that have ended (their threads hold no lock any more: `running`
 * is cleared last, under n->mu). */
void node_snap_reap_locked(struct raft_node *n)
{
    struct node_snap_sender **pp = &n->snap_orphans;
    while (*pp) {
        struct node_snap_sender *s = *pp;
        if (s->running) {
            pp = &s->next;
            continue;
        }
        *pp = s->next;
        if (s->joinable)
            pthread_join(s->thread, NULL);
        free(s);
    }
}

void node_snap_orphan_locked(struct raft_node *n, struct node_peer *p)
{
    struct node_snap_sender *s = p->snd;
    p->snd = NULL;
    if (s) {
        s->orphan = true;
        s->next = n->snap_orphans;
        n->snap_orphans = s;
        pthread_cond_broadcast(&n->snap_cv); /* out of a wait for a slot or a pause */
    }
}

void node_snap_send(struct raft_node *n, struct node_peer *p, const struct raft_msg *m)
{
    pthread_mutex_lock(&n->mu);
    node_snap_reap_locked(n);
    bool busy = p->snd && p->snd->running;
    for (struct node_snap_sender *o = n->snap_orphans; o && !busy; o = o->next)
        busy = o->to == p->id; /* a transfer from before a removal and a re-add still runs */
    if (!n->snaps || busy || n->stopping) {
        /* One transfer per follower: the core sends the message again after this one's
         * outcome is reported. */
        pthread_mutex_unlock(&n->mu);
        return;
    }
    struct node_snap_sender *s = p->snd;
    if (!s) {
        s = calloc(1, sizeof(*s));
        if (!s) {
            pthread_mutex_unlock(&n->mu);
            return;
        }
        s->n = n;
        s->to = p->id;
        p->snd = s;
    } else if (s->joinable) {
        pthread_join(s->thread, NULL); /* it has ended: it cleared `running` */
        s->joinable = false;
    }
    s->msg = *m;
    s->msg.entries = NULL;
    s->msg.n_entries = 0;
    s->msg.conf = NULL; /* the core's copy dies with the ready; the file has it */
    s->msg.conf_len = 0;
    s->running = s->joinable = pthread_create(&s->thread, NULL, sender_main, s) == 0;
    pthread_mutex_unlock(&n->mu);
}

/* ---- installing (follower) ---- */

void raft_node_step_snapshot(struct raft_node *n, const struct raft_msg *m)
{
    if (!n || !m || m->type != RAFT_MSG_SNAPSHOT || !n->snaps)
        return;
    /* Only its presence: the store installs only files it verified whole, and the install reads
     * it again through a verifying reader (a full read here would be a third one, on the
     * transport's thread). */
    struct snap_info *list;
    size_t cnt = 0;
    bool have = false;
    if (snap_list(n->snaps, &list, &cnt) == 0) {
        for (size_t i = 0; i < cnt && !have; i++)
            have = list[i].index == m->snapshot_index && list[i].term == m->snapshot_term;
        free(list);
    }
    if (!have) {
        node_warn(n, "InstallSnapshot %" PRIu64 "/%" PRIu64 " from %016" PRIx64
                    " without the snapshot in the store: dropped",
                 m->snapshot_index, m->snapshot_term, m->from);
        return;
    }
    node_members_note(n, m);
    pthread_mutex_lock(&n->mu);
    if (!n->stopping && !n->fatal) {
        raft_step(n->r, m);
        node_kick_locked(n, NODE_DRIVE_INLINE);
    }
    pthread_mutex_unlock(&n->mu);
}

struct snap_store *raft_node_snap_store(struct raft_node *n)
{
    return n ? n->snaps : NULL;
}

int node_snap_install(struct raft_node *n, uint64_t index, uint64_t term)
{
    pthread_mutex_lock(&n->mu);
    n->installing = true; /* no new apply or snapshot_write starts */
    while (n->applying || n->snapshotting)
        pthread_cond_wait(&n->snap_cv, &n->mu);
    pthread_mutex_unlock(&n->mu);

    char why[512];
    struct snap_file *f;
    int rc = snap_open(n->snaps, index, term, &f);
    uint64_t bytes = 0;
    if (rc) {
        snprintf(why, sizeof why, "snapshot %" PRIu64 "/%" PRIu64 ": %s", index, term,
                 snap_errmsg());
    } else {
        bytes = snap_file_size(f);
        rc = restore_fsm(n, f, why, sizeof why);
    }
    if (rc == 0 && wal_reset(n->w, index, term)) {
        snprintf(why, sizeof why, "resetting the log to snapshot %" PRIu64 ": %s", index,
                 wal_errmsg());
        rc = RAFT_NODE_EIO;
    }
    pthread_mutex_lock(&n->mu);
    n->installing = false;
    struct node_read_done_list rl = {0};
    if (rc) {
        node_fail_locked(n, RAFT_NODE_EIO, why);
    } else {
        node_log(n, "installed snapshot %" PRIu64 " (term %" PRIu64 ")", index, term);
        n->applied = n->apply_to = index;
        n->applied_term = term;
        if (index > n->snap_index) {
            n->snap_index = index;
            n->snap_bytes = bytes;
            n->snap_log_bytes = 0;
        }
        n->wal_last = index;
        /* Older readies' writes above the snapshot were dropped with the log: they are "done"
         * once the reset is (the core clamped its own records the same way). */
        for (size_t i = 0; i < n->n_precs; i++)
            if (n->precs[i].need > index)
                n->precs[i].need = index;
        node_reads_applied_locked(n, &rl);
    }
    pthread_cond_broadcast(&n->apply_cv);
    pthread_cond_broadcast(&n->snap_cv);
    pthread_mutex_unlock(&n->mu);
    node_read_done_run(&rl);
    return rc ? RAFT_NODE_EIO : 0;
}

void node_snap_stop(struct raft_node *n)
{
    pthread_mutex_lock(&n->mu);
    pthread_cond_broadcast(&n->snap_cv);
    pthread_mutex_unlock(&n->mu);
    if (n->snap_thread_started)
        pthread_join(n->snap_thread, NULL);
    n->snap_thread_started = false;
    /* Every sender, the peers' and the orphans': `stopping` ends their waits; a transfer in
     * progress ends when the transport returns. Nothing starts new ones (the driver is gone,
     * node_peers_set is not called concurrently with the stop). */
    pthread_mutex_lock(&n->peers_mu);
    pthread_mutex_lock(&n->mu);
    struct node_snap_sender *all = n->snap_orphans;
    n->snap_orphans = NULL;
    for (size_t i = 0; i < n->n_peers; i++) {
        struct node_snap_sender *s = n->peers[i]->snd;
        n->peers[i]->snd = NULL;
        if (s) {
            s->next = all;
            all = s;
        }
    }
    pthread_mutex_unlock(&n->mu);
    pthread_mutex_unlock(&n->peers_mu);
    while (all) {
        struct node_snap_sender *s = all;
        all = s->next;
        if (s->joinable)
            pthread_join(s->thread, NULL);
        free(s);
    }
    snap_store_close(n->snaps);
    n->snaps = NULL;
}
