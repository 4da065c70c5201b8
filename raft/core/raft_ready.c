/* raft_ready.c: the effects side. Outgoing messages, messages held back until the state they
 * depend on is durable, the storage pipeline (persist_seq), and the Ready/Advance hand-off. */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "raft/core/raft_internal.h"

void raft_msg_free(struct raft_msg *m)
{
    raft_entries_free(m->entries, m->n_entries);
    m->entries = NULL;
    m->n_entries = 0;
    free(m->conf);
    m->conf = NULL;
    m->conf_len = 0;
}

static int push_out(struct raft *r, const struct raft_msg *m)
{
    if (r->n_out == r->cap_out) {
        size_t cap = r->cap_out ? r->cap_out * 2 : 16;
        struct raft_msg *n = realloc(r->out, cap * sizeof(*n));
        if (!n)
            return RAFT_ENOMEM;
        r->out = n;
        r->cap_out = cap;
    }
    r->out[r->n_out++] = *m;
    return 0;
}

int raft_send(struct raft *r, struct raft_msg *m)
{
    m->from = r->id;
    int rc = push_out(r, m);
    if (rc)
        raft_msg_free(m);
    return rc;
}

/* The storage write that covers everything the core has decided so far: if anything is not yet
 * handed to storage, it will be in the next ready (last_seq + 1). */
static uint64_t current_seq(const struct raft *r)
{
    bool pending = r->hs_dirty || r->pending_truncate || r->install_index ||
                   r->readied_last < raft_log_last_index(&r->log);
    return pending ? r->last_seq + 1 : r->last_seq;
}

/* A message to self (the candidate's own vote) is delivered locally when released. */
static void deliver(struct raft *r, struct raft_msg *m)
{
    if (m->to == r->id) {
        if (m->type == RAFT_MSG_VOTE_RESP)
            raft_recv_vote_resp(r, m);
        raft_msg_free(m);
        return;
    }
    push_out(r, m) == 0 ? (void)0 : raft_msg_free(m);
}

/* Vote grants and append acks: Figure 2 "persist before responding". */
int raft_send_after_persist(struct raft *r, struct raft_msg *m)
{
    m->from = r->id;
    uint64_t seq = current_seq(r);
    if (seq <= r->persisted_seq) {
        deliver(r, m);
        return 0;
    }
    if (r->n_held == r->cap_held) {
        size_t cap = r->cap_held ? r->cap_held * 2 : 16;
        struct raft_held *n = realloc(r->held, cap * sizeof(*n));
        if (!n) {
            raft_msg_free(m);
            return RAFT_ENOMEM;
        }
        r->held = n;
        r->cap_held = cap;
    }
    r->held[r->n_held].m = *m;
    r->held[r->n_held].seq = seq;
    r->n_held++;
    return 0;
}

/* Drop in-memory entries >= index because a leader's log disagrees (§5.3). Storage must drop them
 * too if it was given them; nothing at or past index counts as durable any more. */
void raft_truncate_from(struct raft *r, uint64_t index)
{
    assert(index > r->commit);
    raft_log_truncate(&r->log, index);
    if (r->readied_last >= index) {
        if (!r->pending_truncate || index < r->pending_truncate)
            r->pending_truncate = index;
        r->readied_last = index - 1;
    }
    if (r->persisted_index >= index)
        r->persisted_index = index - 1;
    for (size_t i = 0; i < r->n_recs; i++)
        if (r->recs[i].covered >= index)
            r->recs[i].covered = index - 1;
    raft_conf_on_truncate(r); /* a configuration entry may have gone with the suffix */
}

void raft_install_snapshot(struct raft *r, uint64_t index, uint64_t term)
{
    assert(r->role == RAFT_FOLLOWER && index > r->commit);
    /* Entries up to our commit index are the same in every log (and in the snapshot); above it
     * nothing we stored may count as durable any more, since storage is replaced. */
    uint64_t keep = r->commit;
    raft_log_reset(&r->log, index, term);
    r->snap_index = index;
    r->snap_term = term;
    r->install_index = index;
    r->install_term = term;
    r->pending_truncate = 0; /* the install replaces the whole stored log */
    r->readied_last = index;
    if (r->persisted_index > keep)
        r->persisted_index = keep;
    for (size_t i = 0; i < r->n_recs; i++)
        if (r->recs[i].covered > keep)
            r->recs[i].covered = keep;
    /* The state machine is restored from the snapshot: nothing below it is delivered again. */
    r->commit = r->delivered = r->applied = index;
    raft_conf_on_truncate(r); /* the log is empty: the snapshot's configuration is in force */
}

int raft_persisted(struct raft *r, uint64_t seq)
{
    if (!r)
        return RAFT_EINVAL;
    if (seq > r->last_seq)
        return RAFT_ESTATE;
    if (seq <= r->persisted_seq)
        return 0;
    size_t k = 0;
    while (k < r->n_recs && r->recs[k].seq <= seq) {
        if (r->recs[k].covered > r->persisted_index)
            r->persisted_index = r->recs[k].covered;
        r->persisted_hs = r->recs[k].hs;
        k++;
    }
    memmove(r->recs, r->recs + k, (r->n_recs - k) * sizeof(*r->recs));
    r->n_recs -= k;
    r->persisted_seq = seq;

    /* Release held messages in the order they were made. Take them out of `held` first:
     * delivering the candidate's own vote may make it leader, which sends more. */
    size_t n = r->n_held, keep = 0, nrel = 0;
    struct raft_held *h = r->held;
    struct raft_msg *rel = n ? malloc(n * sizeof(*rel)) : NULL;
    if (n && !rel)
        return RAFT_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        if (h[i].seq <= seq)
            rel[nrel++] = h[i].m;
        else
            h[keep++] = h[i];
    }
    r->n_held = keep;
    for (size_t i = 0; i < nrel; i++)
        deliver(r, &rel[i]);
    free(rel);

    /* A leader counts its own log toward commit only once durable (thesis §10.2.1). */
    if (r->role == RAFT_LEADER)
        raft_maybe_commit(r);
    return 0;
}

static uint64_t apply_limit(const struct raft *r)
{
    return r->commit < r->persisted_index ? r->commit : r->persisted_index;
}

bool raft_has_ready(const struct raft *r)
{
    return r->n_out || r->n_read_out || r->hs_dirty || r->pending_truncate || r->install_index ||
           r->readied_last < raft_log_last_index(&r->log) || apply_limit(r) > r->delivered ||
           r->rep_role != r->role || r->rep_leader != r->leader_id || r->rep_term != r->hs.term ||
           r->rep_commit != r->commit;
}

static int copy_range(const struct raft *r, uint64_t lo, uint64_t hi, struct raft_entry **out,
                      size_t *n)
{
    *out = NULL;
    *n = 0;
    if (hi < lo)
        return 0;
    size_t cnt = (size_t)(hi - lo + 1);
    struct raft_entry *e = calloc(cnt, sizeof(*e));
    if (!e)
        return RAFT_ENOMEM;
    for (size_t i = 0; i < cnt; i++) {
        const struct raft_entry *src = raft_log_at(&r->log, lo + i);
        int rc = src ? raft_entry_copy(&e[i], src) : RAFT_ESTATE; /* never: compacted too far */
        if (rc) {
            raft_entries_free(e, i);
            return rc;
        }
    }
    *out = e;
    *n = cnt;
    return 0;
}

struct keyed_msg {
    struct raft_msg m;
    size_t seq;
};

static int cmp_keyed(const void *a, const void *b)
{
    const struct keyed_msg *x = a, *y = b;
    if (x->m.to != y->m.to)
        return x->m.to < y->m.to ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Group messages by destination, keeping their order per destination: a counting sort over
 * member slots, or - when some go to a non-member (the leader of a configuration this member has
 * not seen yet, a member just removed), which is rare - a sort by (id, position). */
static int sort_msgs(struct raft *r, struct raft_msg *in, size_t n, struct raft_msg **out)
{
    *out = NULL;
    if (!n)
        return 0;
    struct raft_msg *m = malloc(n * sizeof(*m));
    size_t *count = calloc(r->n_peers + 2, sizeof(*count));
    if (!m || !count) {
        free(m);
        free(count);
        return RAFT_ENOMEM;
    }
    for (size_t i = 0; i < n; i++)
        count[raft_peer_index(r, in[i].to) + 1]++;
    if (count[r->n_peers + 1]) {
        free(count);
        struct keyed_msg *k = malloc(n * sizeof(*k));
        if (!k) {
            free(m);
            return RAFT_ENOMEM;
        }
        for (size_t i = 0; i < n; i++)
            k[i] = (struct keyed_msg){in[i], i};
        qsort(k, n, sizeof(*k), cmp_keyed);
        for (size_t i = 0; i < n; i++)
            m[i] = k[i].m;
        free(k);
        *out = m;
        return 0;
    }
    /* peers[] is sorted by id (raft_conf.c), so slot order is destination order. */
    for (size_t i = 1; i <= r->n_peers; i++)
        count[i] += count[i - 1];
    for (size_t i = 0; i < n; i++)
        m[count[raft_peer_index(r, in[i].to)]++] = in[i];
    free(count);
    *out = m;
    return 0;
}

int raft_ready(struct raft *r, struct raft_ready *rd)
{
    if (!r || !rd)
        return RAFT_EINVAL;
    memset(rd, 0, sizeof(*rd));
    uint64_t last = raft_log_last_index(&r->log);
    int rc;

    if (r->hs_dirty || r->pending_truncate || r->install_index || r->readied_last < last) {
        if (r->n_recs == r->cap_recs) {
            size_t cap = r->cap_recs ? r->cap_recs * 2 : 16;
            struct raft_persist_rec *n = realloc(r->recs, cap * sizeof(*n));
            if (!n)
                return RAFT_ENOMEM;
            r->recs = n;
            r->cap_recs = cap;
        }
        rc = copy_range(r, r->readied_last + 1, last, &rd->entries, &rd->n_entries);
        if (rc)
            return rc;
        rd->persist_seq = ++r->last_seq;
        rd->snapshot.index = r->install_index;
        rd->snapshot.term = r->install_term;
        r->install_index = r->install_term = 0;
        rd->hs_changed = r->hs_dirty;
        rd->truncate_from = r->pending_truncate;
        r->recs[r->n_recs++] = (struct raft_persist_rec){rd->persist_seq, last, r->hs};
        r->hs_dirty = false;
        r->pending_truncate = 0;
        r->readied_last = last;
    }
    rd->hs = r->hs;

    uint64_t lim = apply_limit(r);
    if (lim > r->delivered) {
        rc = copy_range(r, r->delivered + 1, lim, &rd->committed, &rd->n_committed);
        if (rc)
            return rc; /* storage part already taken: caller must still advance */
        r->delivered = lim;
    }

    rc = sort_msgs(r, r->out, r->n_out, &rd->msgs);
    if (rc)
        return rc;
    rd->n_msgs = r->n_out;
    r->n_out = 0;

    rd->read_states = r->read_out; /* handed over whole; a new array grows on demand */
    rd->n_read_states = r->n_read_out;
    r->read_out = NULL;
    r->n_read_out = r->cap_read_out = 0;

    rd->commit_index = r->commit;
    rd->term = r->hs.term;
    rd->leader_id = r->leader_id;
    rd->role = r->role;
    r->rep_role = r->role;
    r->rep_leader = r->leader_id;
    r->rep_term = r->hs.term;
    r->rep_commit = r->commit;
    return 0;
}

void raft_advance(struct raft *r, struct raft_ready *rd)
{
    (void)r;
    if (!rd)
        return;
    raft_entries_free(rd->entries, rd->n_entries);
    raft_entries_free(rd->committed, rd->n_committed);
    for (size_t i = 0; i < rd->n_msgs; i++)
        raft_msg_free(&rd->msgs[i]);
    free(rd->msgs);
    free(rd->read_states);
    memset(rd, 0, sizeof(*rd));
}

size_t raft_ready_msgs_to(const struct raft_ready *rd, uint64_t to, const struct raft_msg **first)
{
    size_t lo = 0, hi = rd->n_msgs;
    while (lo < hi) { /* first message with .to >= to */
        size_t mid = lo + (hi - lo) / 2;
        if (rd->msgs[mid].to < to)
            lo = mid + 1;
        else
            hi = mid;
    }
    size_t end = lo;
    while (end < rd->n_msgs && rd->msgs[end].to == to)
        end++;
    *first = end > lo ? &rd->msgs[lo] : NULL;
    return end - lo;
}
