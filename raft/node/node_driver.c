/* node_driver.c: driving the core - the Ready/Advance cycle, the hand-off of each ready's storage
 * to the write-ahead log, the WAL's callbacks and the driver thread. Start-up, shutdown and the
 * ticker live in node_core.c, the replicators in node_peer.c, the applier in node_prop.c.
 *
 * Who drives: one thread at a time calls raft_ready()/raft_advance() and does the storage work;
 * it holds the right to drive (n->driving). To keep thread wake-ups off the commit path, the
 * thread that gives the core work drives it itself when nobody else is: the transport thread that
 * delivers a message (raft_node_step), the proposer, the ticker, and the WAL writer once entries
 * are durable (its callback reports raft_persisted() and sends the acks at once). Such inline
 * drivers never block: a ready whose storage could wait (a full WAL queue, a truncation, a hard
 * state write, or anything from the WAL writer's own thread) is handed with the right to drive to
 * the driver thread, which may wait; an inline driver also hands over after NODE_INLINE_READIES
 * readies so that no caller is kept long. Per ready the driver:
 *   1. takes the ready under n->mu, notes the committed range for the applier, releases n->mu;
 *   2. copies the messages into the per-peer outboxes: they leave at once, before this ready's
 *      write is durable. That is the leader's parallel write of thesis §10.2.1; the core holds back
 *      every message that needs durability (vote grants, append acks) until raft_persisted();
 *   3. does the storage work with no node lock held: truncation (waits for the WAL writer), then
 *      the hard state (synchronous write+fsync), then wal_append of the entries (a non-blocking
 *      enqueue; the WAL's writer thread makes them durable with group commit);
 *   4. records (persist_seq, last index written) and calls raft_advance().
 * Whoever drives next reports raft_persisted() for every record whose entries are now durable. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "raft/node/node_internal.h"

/* Entries and payload bytes per wal_append call: far below the WAL's queue bounds (65536 entries,
 * 64 MiB), so one call always fits once the writer drains - a batch bigger than the whole queue
 * would never be accepted. A chunk holds at least one entry, and max_entry_bytes is capped at
 * NODE_MAX_ENTRY_BYTES (node_core.c) so that one entry always fits too. */
#define NODE_WAL_CHUNK 1024
#define NODE_WAL_CHUNK_BYTES (16u << 20)

/* Readies an inline driver (a caller's thread) takes before leaving the rest to the driver thread. */
#define NODE_INLINE_READIES 4

/* store_ready: the rest of this ready's storage must be done by a thread that may wait. */
#define NODE_HANDOFF 1

/* ---- WAL callbacks (writer thread, no WAL lock held) ---- */

void node_on_durable(void *arg, uint64_t index, uint64_t term, int err)
{
    struct raft_node *n = arg;
    (void)index;
    (void)term;
    /* The index is not trusted here (it may predate a truncation, wal.h): the driver reads
     * wal_durable_index(), which the WAL keeps consistent with truncation. Taking n->mu is safe:
     * nobody holding it waits for the writer. */
    pthread_mutex_lock(&n->mu);
    n->durable_gen++;
    if (err < 0) {
        char what[160];
        snprintf(what, sizeof what, "log write failed: %s", strerror(-err));
        node_fail_locked(n, RAFT_NODE_EIO, what);
    }
    if (n->wal_waiting)
        pthread_cond_signal(&n->driver_cv); /* the driver thread waits for room in the queue */
    node_kick_locked(n, NODE_DRIVE_NOSTORE);
    pthread_mutex_unlock(&n->mu);
}

/* ---- driver ---- */

/* n->mu held: report every ready whose writes are now durable. Records are in seq order and
 * their `need` never decreases (a truncation clamps the older ones), so a prefix is done. */
static void persist_progress_locked(struct raft_node *n)
{
    if (!n->n_precs)
        return;
    uint64_t durable = wal_durable_index(n->w), seq = 0;
    size_t k = 0;
    while (k < n->n_precs && n->precs[k].need <= durable)
        seq = n->precs[k++].seq;
    if (!k)
        return;
    memmove(n->precs, n->precs + k, (n->n_precs - k) * sizeof(*n->precs));
    n->n_precs -= k;
    int rc = raft_persisted(n->r, seq);
    if (rc)
        node_error(n, "raft_persisted(%" PRIu64 "): %s", seq, raft_strerror(rc));
}

static int precs_push(struct raft_node *n, uint64_t seq, uint64_t need)
{
    if (n->n_precs == n->cap_precs) {
        size_t cap = n->cap_precs ? n->cap_precs * 2 : 64;
        struct node_persist *p = realloc(n->precs, cap * sizeof(*p));
        if (!p)
            return RAFT_NODE_ENOMEM;
        n->precs = p;
        n->cap_precs = cap;
    }
    n->precs[n->n_precs++] = (struct node_persist){seq, need};
    return 0;
}

/* Enqueue entries with the WAL, waiting (not spinning, not dropping) while its queue is full:
 * back-pressure from the disk reaches the core because the driver stops taking readies. Without
 * may_wait, a full queue returns NODE_HANDOFF instead, *done entries having been enqueued. */
static int wal_append_all(struct raft_node *n, const struct raft_entry *e, size_t cnt,
                          size_t *donep, bool may_wait)
{
    size_t done = *donep;
    while (done < cnt) {
        size_t k = 0, bytes = 0;
        while (done + k < cnt && k < NODE_WAL_CHUNK &&
               (k == 0 || bytes + e[done + k].len <= NODE_WAL_CHUNK_BYTES))
            bytes += e[done + k++].len;
        pthread_mutex_lock(&n->mu);
        uint64_t gen = n->durable_gen;
        pthread_mutex_unlock(&n->mu);
        int rc = wal_append(n->w, e + done, k);
        if (rc == -EAGAIN && !may_wait) {
            *donep = done;
            return NODE_HANDOFF;
        }
        if (rc == -EAGAIN) {
            pthread_mutex_lock(&n->mu);
            n->wal_waiting = true;
            while (n->durable_gen == gen && !n->stopping && !n->fatal)
                pthread_cond_wait(&n->driver_cv, &n->mu);
            n->wal_waiting = false;
            bool quit = n->stopping || n->fatal;
            pthread_mutex_unlock(&n->mu);
            if (quit)
                return RAFT_NODE_ESHUTDOWN;
            continue;
        }
        if (rc) {
            char what[300];
            snprintf(what, sizeof what, "wal_append %" PRIu64 ": %s", e[done].index,
                     wal_errmsg());
            pthread_mutex_lock(&n->mu);
            node_fail_locked(n, RAFT_NODE_EIO, what);
            pthread_mutex_unlock(&n->mu);
            return RAFT_NODE_EIO;
        }
        done += k;
        n->wal_last = e[done - 1].index;
    }
    *donep = done;
    return 0;
}

/* Whether rd's storage has a step that waits: truncating what was handed to the WAL (it waits
 * for the writer) or the synchronous hard-state write. */
static bool ready_needs_wait(const struct raft_node *n, const struct raft_ready *rd)
{
    return rd->hs_changed || rd->snapshot.index ||
           (rd->truncate_from && rd->truncate_from <= n->wal_last);
}

/* The storage part of one ready, no lock held. Order: truncate (the disk stays a prefix of the
 * log), hard state, entries. The hard state goes before the entries so the log on disk never
 * holds a term above the saved currentTerm (raft_new refuses such a log); it is synchronous, so
 * once the WAL reports the entries durable the whole ready is. On success *need is the index the
 * WAL must report durable. *done counts the entries already enqueued (a ready handed over midway
 * resumes there; truncation and hard state then happened already). Without may_wait, returns
 * NODE_HANDOFF at the first step that could block. */
static int store_ready(struct raft_node *n, const struct raft_ready *rd, uint64_t *need,
                       size_t *done, bool may_wait)
{
    if (*done == 0 && ready_needs_wait(n, rd) && !may_wait)
        return NODE_HANDOFF;
    if (*done == 0 && rd->snapshot.index &&
        node_snap_install(n, rd->snapshot.index, rd->snapshot.term))
        return RAFT_NODE_EIO; /* the node has stopped writes (node_snap_install says why) */
    if (*done == 0 && rd->truncate_from && rd->truncate_from <= n->wal_last) {
        if (wal_truncate_suffix(n->w, rd->truncate_from)) {
            char what[300];
            snprintf(what, sizeof what, "wal_truncate_suffix %" PRIu64 ": %s", rd->truncate_from,
                     wal_errmsg());
            pthread_mutex_lock(&n->mu);
            node_fail_locked(n, RAFT_NODE_EIO, what);
            pthread_mutex_unlock(&n->mu);
            return RAFT_NODE_EIO;
        }
        n->wal_last = rd->truncate_from - 1;
        /* Older readies' entries at or past the cut are gone; they are "done" once what is left
         * below the cut is durable (the core clamps its own records the same way). */
        for (size_t i = 0; i < n->n_precs; i++)
            if (n->precs[i].need > n->wal_last)
                n->precs[i].need = n->wal_last;
    }
    if (*done == 0 && rd->hs_changed && wal_save_hard_state(n->w, &rd->hs)) {
        char what[300];
        snprintf(what, sizeof what, "wal_save_hard_state: %s", wal_errmsg());
        pthread_mutex_lock(&n->mu);
        node_fail_locked(n, RAFT_NODE_EIO, what);
        pthread_mutex_unlock(&n->mu);
        return RAFT_NODE_EIO;
    }
    if (rd->n_entries) {
        int rc = wal_append_all(n, rd->entries, rd->n_entries, done, may_wait);
        if (rc)
            return rc;
    }
    *need = n->wal_last;
    return 0;
}

/* n->mu held, n->driving ours. Takes and processes one ready; returns false when there was
 * none, or when its storage was handed to the driver thread (the right to drive went with it). */
static bool drive_once_locked(struct raft_node *n, enum node_drive_mode mode)
{
    persist_progress_locked(n);
    if (n->stopping || n->fatal || !raft_has_ready(n->r))
        return false;
    struct raft_ready rd;
    int rc = raft_ready(n->r, &rd);
    if (rc) {
        /* Out of memory inside the core; it may already have taken the storage part, so
         * continuing could acknowledge what was never written. Stop writes instead. */
        raft_advance(n->r, &rd);
        node_fail_locked(n, RAFT_NODE_ENOMEM, "raft_ready failed: out of memory");
        return false;
    }
    if (rd.n_committed) {
        n->apply_to = rd.committed[rd.n_committed - 1].index;
        if (mode == NODE_DRIVE_THREAD)
            pthread_cond_signal(&n->apply_cv); /* inline drivers apply when they let go */
    }
    struct node_read_done_list rl = {0};
    if (rd.n_read_states || n->reads.queued)
        node_reads_on_ready_locked(n, &rd, &rl);
    bool role_changed =
        rd.role != n->rep_role || rd.term != n->rep_term || rd.leader_id != n->rep_leader;
    n->rep_role = rd.role;
    n->rep_term = rd.term;
    n->rep_leader = rd.leader_id;
    atomic_store_explicit(&n->term_seen, rd.term, memory_order_relaxed);
    if (n->conf_waiters)
        pthread_cond_broadcast(&n->conf_cv); /* raft_node_change_conf watches commit and role */
    /* A new configuration: tell the owner (and later start or stop replicators) before this
     * ready's messages, which may be the first to a new member, are routed. */
    struct raft_status cst;
    raft_status_get(n->r, &cst);
    struct raft_conf conf;
    uint8_t *cctx = NULL;
    uint32_t cctx_len = 0;
    bool conf_changed = cst.conf_gen != n->conf_gen_seen;
    /* The leader may be outside our configuration: a leader that removed itself keeps leading
     * until C_new commits, which needs our acknowledgements - so it stays a peer while it leads. */
    bool peers_changed = conf_changed || rd.leader_id != n->peer_leader;
    if (peers_changed) {
        n->peer_leader = rd.leader_id;
        raft_conf_get(n->r, &conf, NULL, NULL);
    }
    if (conf_changed) {
        n->conf_gen_seen = cst.conf_gen;
        uint32_t blen = 0;
        const uint8_t *blob = raft_conf_blob_at(n->r, cst.last_index, &blen);
        const uint8_t *c = NULL;
        struct raft_conf tmp;
        if (blob && raft_conf_decode(blob, blen, &tmp, &c, &cctx_len) == 0 && cctx_len) {
            cctx = malloc(cctx_len);
            if (cctx)
                memcpy(cctx, c, cctx_len);
            else
                cctx_len = 0;
        }
    }
    pthread_mutex_unlock(&n->mu);

    if (conf_changed && n->cfg.on_conf)
        n->cfg.on_conf(n->cfg.on_conf_arg, &conf, cctx, cctx_len);
    free(cctx);
    if (peers_changed) {
        /* Replicators follow the configuration in force: one per member (voter, old voter or
         * learner) but this one, and the leader. A joint configuration keeps C_old's members
         * until C_new. */
        uint64_t ids[3 * RAFT_MAX_NODES + 1];
        size_t k = 0;
        if (rd.leader_id)
            ids[k++] = rd.leader_id;
        for (uint32_t i = 0; i < conf.n_voters; i++)
            ids[k++] = conf.voters[i];
        for (uint32_t i = 0; i < conf.n_old; i++)
            ids[k++] = conf.old[i];
        for (uint32_t i = 0; i < conf.n_learners; i++)
            ids[k++] = conf.learners[i];
        size_t u = 0;
        for (size_t i = 0; i < k; i++) { /* unique (the sets overlap while joint) */
            bool dup = false;
            for (size_t j = 0; j < u && !dup; j++)
                dup = ids[j] == ids[i];
            if (!dup)
                ids[u++] = ids[i];
        }
        int prc = node_peers_set(n, ids, u);
        if (prc)
            node_warn(n, "configuration change: peers not updated: %s", raft_node_strerror(prc));
    }
    /* Messages first: none of them waits for this ready's write (see the file comment). */
    node_route_msgs(n, &rd);
    node_read_done_run(&rl);
    if (role_changed && n->cfg.on_role)
        n->cfg.on_role(n->cfg.on_role_arg, n->cfg.id, rd.role, rd.term, rd.leader_id);
    uint64_t need = 0;
    size_t done = 0;
    int src = 0;
    if (rd.persist_seq)
        src = mode == NODE_DRIVE_NOSTORE
                  ? NODE_HANDOFF
                  : store_ready(n, &rd, &need, &done, mode == NODE_DRIVE_THREAD);

    pthread_mutex_lock(&n->mu);
    if (src == NODE_HANDOFF) {
        n->handoff = rd;
        n->handoff_done = done;
        n->has_handoff = true;
        pthread_cond_signal(&n->driver_cv);
        return false;
    }
    if (rd.persist_seq && src == 0 && precs_push(n, rd.persist_seq, need))
        node_fail_locked(n, RAFT_NODE_ENOMEM, "out of memory tracking writes");
    raft_advance(n->r, &rd);
    return true;
}

void node_kick_locked(struct raft_node *n, enum node_drive_mode mode)
{
    if (n->driving || n->stopping || n->fatal)
        return; /* whoever drives looks at the core again before letting go */
    n->driving = true;
    int k = 0;
    bool enough = false;
    /* Storage is only enqueued here: the WAL writer does group commit. (Writing an idle log in
     * the caller's thread was tried: no gain for one put in flight, and 40% fewer puts/s with
     * 1,024 in flight, because that thread stalled; docs/benchmarks.md.) */
    while (!enough && drive_once_locked(n, mode))
        enough = ++k == NODE_INLINE_READIES && mode != NODE_DRIVE_THREAD;
    if (enough) {
        /* Enough for one caller: the driver thread takes over if more is there. */
        n->driving = false;
        pthread_cond_signal(&n->driver_cv);
    } else if (!n->has_handoff) {
        n->driving = false;
        if (n->stopping)
            pthread_cond_broadcast(&n->driver_cv); /* the driver thread waits to exit */
    }
    if (mode != NODE_DRIVE_THREAD && n->apply_to > n->applied) {
        /* Apply what this thread committed (e.g. the leader's transport thread that received
         * the acknowledgement), unless the applier is busy: then it continues on its own. */
        node_apply_inline_locked(n);
        if (n->apply_to > n->applied && !n->applying)
            pthread_cond_signal(&n->apply_cv);
    }
}

/* Driver thread, n->mu held, n->driving ours: the storage an inline driver left, then go on. */
static void finish_handoff_locked(struct raft_node *n)
{
    struct raft_ready rd = n->handoff;
    size_t done = n->handoff_done;
    n->has_handoff = false;
    pthread_mutex_unlock(&n->mu);
    uint64_t need = 0;
    int src = store_ready(n, &rd, &need, &done, true);
    pthread_mutex_lock(&n->mu);
    if (src == 0 && precs_push(n, rd.persist_seq, need))
        node_fail_locked(n, RAFT_NODE_ENOMEM, "out of memory tracking writes");
    raft_advance(n->r, &rd);
}

static void *driver_main(void *arg)
{
    struct raft_node *n = arg;
    pthread_mutex_lock(&n->mu);
    for (;;) {
        if (n->has_handoff) {
            finish_handoff_locked(n); /* even when stopping: the ready must be advanced */
            while (drive_once_locked(n, NODE_DRIVE_THREAD))
                ;
            if (!n->has_handoff)
                n->driving = false;
            continue;
        }
        if (n->stopping) {
            if (!n->driving)
                break;
            pthread_cond_wait(&n->driver_cv, &n->mu); /* an inline driver is finishing */
            continue;
        }
        if (n->fatal) {
            if (!n->fatal_reported) {
                n->fatal_reported = true;
                struct node_done_list l = {0};
                struct node_read_done_list rl = {0};
                node_props_fail_all_locked(n, n->fatal, &l);
                node_reads_fail_all_locked(n, n->fatal, &rl);
                pthread_mutex_unlock(&n->mu);
                node_done_run(&l);
                node_read_done_run(&rl);
                pthread_mutex_lock(&n->mu);
                continue;
            }
            pthread_cond_wait(&n->driver_cv, &n->mu);
            continue;
        }
        if (n->driving) {
            pthread_cond_wait(&n->driver_cv, &n->mu); /* someone drives inline */
            continue;
        }
        /* Durable progress or work nobody drove yet; else sleep. The WAL callback, proposers,
         * deliveries and the ticker drive inline and wake this thread only when they hand over. */
        uint64_t gen = n->durable_gen;
        node_kick_locked(n, NODE_DRIVE_THREAD);
        if (!n->driving && !n->stopping && !n->fatal && gen == n->durable_gen &&
            !raft_has_ready(n->r))
            pthread_cond_wait(&n->driver_cv, &n->mu);
    }
    pthread_mutex_unlock(&n->mu);
    return NULL;
}

int node_driver_start(struct raft_node *n)
{
    if (pthread_create(&n->driver, NULL, driver_main, n))
        return RAFT_NODE_ENOMEM;
    pthread_setname_np(n->driver, "raft-driver"); /* names show in top -H, perf, gdb */
    return 0;
}
