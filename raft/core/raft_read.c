/* raft_read.c: linearizable reads with ReadIndex (Raft thesis §6.4), without writing to the log.
 *
 * Leader (thesis §6.4, steps 1-3):
 *   1. A leader answers only once an entry of its own term has committed: until then its commit
 *      index may be behind entries an earlier leader committed. Reads that arrive earlier wait
 *      (round 0) and start when the no-op of raft_become_leader commits (raft_read_on_commit).
 *   2. The read index is the commit index at that moment.
 *   3. Leadership is confirmed with a heartbeat round: the read gets round number R
 *      (++read_round) and a heartbeat goes to every follower at once. Every AppendEntries carries
 *      the newest round; a follower echoes the round of the message it answers in APPEND_RESP. An
 *      echo of R >= the read's round in our term proves the follower still accepted our term after
 *      the read began, so no other leader can have committed anything before the read began
 *      (a leader of a higher term needs a majority that has left our term, and two majorities
 *      intersect). When a majority, the leader included, has echoed >= R the read is released.
 *   Rounds only grow for the core's lifetime, and responses of older terms never reach here
 *   (raft_step drops them), so a late or duplicated echo can never stand for a newer round; each
 *   follower counts once (its highest echo), so duplicates cannot make a majority either.
 * Follower (thesis §6.4.1): sends READ_INDEX to its leader, which runs the same round and answers
 *   READ_INDEX_RESP with the index (or 0: failed). The follower then serves the read once it has
 *   applied that far; that is the caller's job.
 * Failure is always reported, never silent: a role change, a new term or a new leader fails
 * every pending read at once (released with index 0; a leader answers its followers' reads with
 * 0), and a read not settled within an election timeout (election_tick ticks: lost messages, a
 * leader cut off from its majority without check-quorum) fails the same way. So every accepted
 * read is released exactly once. */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "raft/core/raft_internal.h"

static int push_state(struct raft *r, uint64_t ctx, uint64_t index)
{
    if (r->n_read_out == r->cap_read_out) {
        size_t cap = r->cap_read_out ? r->cap_read_out * 2 : 16;
        struct raft_read_state *n = realloc(r->read_out, cap * sizeof(*n));
        if (!n)
            return RAFT_ENOMEM;
        r->read_out = n;
        r->cap_read_out = cap;
    }
    r->read_out[r->n_read_out++] = (struct raft_read_state){ctx, index};
    return 0;
}

static void send_resp(struct raft *r, uint64_t to, uint64_t ctx, uint64_t index)
{
    struct raft_msg m = {.type = RAFT_MSG_READ_INDEX_RESP,
                         .to = to,
                         .term = r->hs.term,
                         .ctx = ctx,
                         .read_index = index};
    raft_send(r, &m);
}

/* Settle one read: locally as a read state, or as the answer to the follower that asked. */
static void answer(struct raft *r, const struct raft_read *rd, uint64_t index)
{
    if (rd->from)
        send_resp(r, rd->from, rd->ctx, index);
    else
        push_state(r, rd->ctx, index);
}

static int reads_push(struct raft *r, const struct raft_read *rd)
{
    if (r->n_reads == r->cap_reads) {
        size_t cap = r->cap_reads ? r->cap_reads * 2 : 16;
        struct raft_read *n = realloc(r->reads, cap * sizeof(*n));
        if (!n)
            return RAFT_ENOMEM;
        r->reads = n;
        r->cap_reads = cap;
    }
    r->reads[r->n_reads++] = *rd;
    return 0;
}

/* Drop reads[0 .. k). */
static void reads_shift(struct raft *r, size_t k)
{
    memmove(r->reads, r->reads + k, (r->n_reads - k) * sizeof(*r->reads));
    r->n_reads -= k;
}

static bool committed_in_term(const struct raft *r)
{
    uint64_t t;
    return r->commit && raft_log_term(&r->log, r->commit, &t) && t == r->hs.term;
}

/* Leader: release every read whose round a majority (the leader included) has acknowledged.
 * reads[] is in round order, with the reads still waiting for the first commit (round 0) last. */
static void release(struct raft *r)
{
    if (r->role != RAFT_LEADER || !r->n_reads)
        return;
    uint64_t acks[RAFT_MAX_NODES];
    for (size_t i = 0; i < r->n_peers; i++)
        acks[i] = r->peers[i] == r->id ? r->read_round : r->progress[i].read_ack;
    uint64_t confirmed = raft_quorum_index(r, acks); /* both majorities while joint */
    size_t k = 0;
    while (k < r->n_reads && r->reads[k].round && r->reads[k].round <= confirmed) {
        answer(r, &r->reads[k], r->reads[k].index);
        k++;
    }
    reads_shift(r, k);
}

/* Leader: a new round for every read that has none yet, confirmed by a heartbeat sent now rather
 * than at the next heartbeat tick (read latency is one round trip). */
static void start_round(struct raft *r)
{
    assert(r->role == RAFT_LEADER);
    uint64_t round = ++r->read_round;
    for (size_t i = 0; i < r->n_reads; i++) {
        if (!r->reads[i].round) {
            r->reads[i].round = round;
            r->reads[i].index = r->commit;
        }
    }
    for (size_t i = 0; i < r->n_peers; i++)
        if (r->peers[i] != r->id)
            raft_send_heartbeat(r, &r->progress[i]);
    release(r); /* a single-member cluster is its own majority */
}

static int leader_read(struct raft *r, uint64_t ctx, uint64_t from)
{
    assert(r->role == RAFT_LEADER);
    if (r->n_reads >= r->cfg.max_read_pending)
        return RAFT_EBUSY;
    struct raft_read rd = {.ctx = ctx, .from = from, .started = r->ticks};
    int rc = reads_push(r, &rd);
    if (rc)
        return rc;
    if (committed_in_term(r))
        start_round(r);
    /* else: step 1, wait for raft_read_on_commit(). */
    return 0;
}

int raft_read_index(struct raft *r, uint64_t ctx)
{
    if (!r || !ctx)
        return RAFT_EINVAL;
    if (r->role == RAFT_LEADER)
        return leader_read(r, ctx, 0);
    if (r->role != RAFT_FOLLOWER || !r->leader_id)
        return RAFT_ENOTLEADER;
    if (r->n_reads >= r->cfg.max_read_pending)
        return RAFT_EBUSY;
    struct raft_read rd = {.ctx = ctx, .from = r->leader_id, .started = r->ticks};
    int rc = reads_push(r, &rd);
    if (rc)
        return rc;
    struct raft_msg m = {.type = RAFT_MSG_READ_INDEX, .to = r->leader_id, .term = r->hs.term,
                         .ctx = ctx};
    rc = raft_send(r, &m);
    if (rc)
        r->n_reads--;
    return rc;
}

int raft_recv_read_index(struct raft *r, const struct raft_msg *m)
{
    if (!m->ctx)
        return RAFT_EINVAL;
    if (r->role != RAFT_LEADER) {
        send_resp(r, m->from, m->ctx, 0); /* not (or no longer) the leader: fail it fast */
        return 0;
    }
    int rc = leader_read(r, m->ctx, m->from);
    if (rc == RAFT_EBUSY) {
        send_resp(r, m->from, m->ctx, 0);
        return 0;
    }
    return rc;
}

int raft_recv_read_index_resp(struct raft *r, const struct raft_msg *m)
{
    /* Our reads went to leader_id; any change of role, term or leader already failed them. */
    if (r->role != RAFT_FOLLOWER || m->from != r->leader_id)
        return 0;
    for (size_t i = 0; i < r->n_reads; i++) {
        if (r->reads[i].ctx == m->ctx) {
            push_state(r, m->ctx, m->read_index);
            memmove(r->reads + i, r->reads + i + 1, (r->n_reads - i - 1) * sizeof(*r->reads));
            r->n_reads--;
            return 0;
        }
    }
    return 0; /* a duplicate, or the read already expired */
}

void raft_read_ack(struct raft *r, struct progress *pr, uint64_t round)
{
    assert(r->role == RAFT_LEADER);
    if (round > r->read_round)
        return; /* a round we never started: ignore */
    if (progress_read_acked(pr, round))
        release(r);
}

void raft_read_on_commit(struct raft *r)
{
    if (r->role == RAFT_LEADER && r->n_reads && !r->reads[r->n_reads - 1].round &&
        committed_in_term(r))
        start_round(r);
}

void raft_read_fail_all(struct raft *r)
{
    for (size_t i = 0; i < r->n_reads; i++) {
        /* A follower's forwarded read is settled by its own leader change; a leader answers the
         * followers that asked it, so they need not wait for a timeout. */
        if (r->role == RAFT_LEADER || !r->reads[i].from)
            answer(r, &r->reads[i], 0);
        else
            push_state(r, r->reads[i].ctx, 0);
    }
    r->n_reads = 0;
}

void raft_read_tick(struct raft *r)
{
    r->ticks++;
    size_t k = 0;
    while (k < r->n_reads && r->ticks - r->reads[k].started >= r->cfg.election_tick) {
        if (r->role == RAFT_LEADER)
            answer(r, &r->reads[k], 0);
        else
            push_state(r, r->reads[k].ctx, 0);
        k++;
    }
    if (k)
        reads_shift(r, k);
}

void raft_read_free(struct raft *r)
{
    free(r->reads);
    free(r->read_out);
}
