/* raft_core.c: construction, roles and their transitions, the clock, message dispatch with the
 * term rules that apply to every message (Raft paper Figure 2, "Rules for Servers"), proposals and
 * leadership transfer. The RPC handlers live in raft_vote.c and raft_append.c. */
#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "raft/core/raft_internal.h"

const char *raft_strerror(int rc)
{
    switch (rc) {
    case RAFT_OK: return "ok";
    case RAFT_EINVAL: return "invalid argument or malformed message";
    case RAFT_ENOTLEADER: return "not the leader";
    case RAFT_EBUSY: return "leadership transfer in progress";
    case RAFT_ENOMEM: return "out of memory";
    case RAFT_EUNKNOWN: return "unknown node";
    case RAFT_ETOOBIG: return "bound exceeded";
    case RAFT_ESTATE: return "not valid in the current state";
    case RAFT_EPENDING: return "a configuration change is in progress";
    default: return "unknown error";
    }
}

const char *raft_role_name(int role)
{
    static const char *names[] = {"follower", "precandidate", "candidate", "leader"};
    return role >= 0 && role <= RAFT_LEADER ? names[role] : "?";
}

const char *raft_msg_type_name(int type)
{
    static const char *names[] = {"none",         "vote",       "vote_resp",
                                  "prevote",      "prevote_resp", "append",
                                  "append_resp",  "timeout_now", "snapshot",
                                  "?",            "read_index", "read_index_resp"};
    return type >= 0 && type <= RAFT_MSG_TYPE_MAX ? names[type] : "?";
}

void raft_config_default(struct raft_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->election_tick = 10;
    cfg->heartbeat_tick = 2;
    cfg->pre_vote = true;
    cfg->check_quorum = true;
    cfg->max_append_entries = 64;
    cfg->max_append_bytes = 1u << 20;
    cfg->max_inflight_msgs = 64;
    cfg->max_inflight_bytes = 16u << 20;
    cfg->max_msg_entries = 4096;
    cfg->max_entry_bytes = 64u << 20;
    cfg->max_read_pending = 1024;
}

#ifdef RAFT_WITH_TRACE
void raft_trace(const struct raft *r, const char *fmt, ...)
{
    if (!r->cfg.trace)
        return;
    char line[320];
    int k = snprintf(line, sizeof line, "n%" PRIu64 " %s term=%" PRIu64 ": ", r->id,
                     raft_role_name(r->role), r->hs.term);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + k, sizeof line - (size_t)k, fmt, ap);
    va_end(ap);
    r->cfg.trace(r->cfg.trace_arg, line);
}
#endif

/* splitmix64: the core's only randomness, seeded by the caller so runs replay exactly. */
uint64_t raft_rand(struct raft *r)
{
    uint64_t z = (r->rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

size_t raft_peer_index(const struct raft *r, uint64_t id)
{
    for (size_t i = 0; i < r->n_peers; i++)
        if (r->peers[i] == id)
            return i;
    return r->n_peers;
}

static void reset_election_timer(struct raft *r)
{
    r->election_elapsed = 0;
    /* §5.2: randomized in [T, 2T) so split votes are rare. */
    r->randomized_timeout =
        r->cfg.election_tick + (unsigned)(raft_rand(r) % r->cfg.election_tick);
}

static void set_term(struct raft *r, uint64_t term)
{
    if (term != r->hs.term) {
        assert(term > r->hs.term);
        r->hs.term = term;
        r->hs.voted_for = 0; /* votedFor belongs to one term (Figure 2) */
        r->hs_dirty = true;
    }
}

/* Load the stored log after the snapshot (§7): everything up to snapshot_index is committed and
 * applied (the state machine restored it). Stored entries at or below the snapshot (kept for
 * catching up followers) are kept in memory after the first of them, whose term anchors the log;
 * where they overlap the snapshot they must agree with it. */
static int restore_log(struct raft *r, const struct raft_restore *rs)
{
    raft_log_free(&r->log);
    r->hs = rs->hs;
    const struct raft_entry *e = rs->entries;
    size_t n = rs->n_entries, k = 0;
    uint64_t snap = rs->snapshot_index;
    if (n && (e[0].index == 0 || e[0].index > snap + 1))
        return RAFT_EINVAL; /* a gap between the snapshot and the log */
    if (snap > RAFT_INDEX_LIMIT || (n && e[0].index > RAFT_INDEX_LIMIT - (n - 1)))
        return RAFT_EINVAL; /* beyond any log this core writes (raft_internal.h) */
    uint64_t prev_term = 0;
    for (size_t i = 0; i < n; i++) {
        if (e[i].index != e[0].index + i || e[i].term < prev_term || e[i].term > rs->hs.term ||
            (e[i].len && !e[i].data) || e[i].term == 0)
            return RAFT_EINVAL;
        if (e[i].index == snap && e[i].term != rs->snapshot_term)
            return RAFT_EINVAL; /* the log disagrees with the snapshot */
        if (e[i].type > RAFT_ENTRY_CONFIG ||
            (e[i].type == RAFT_ENTRY_CONFIG && raft_conf_decode(e[i].data, e[i].len, &(struct raft_conf){0}, NULL, NULL)))
            return RAFT_EINVAL;
        prev_term = e[i].term;
    }
    if (n && e[0].index <= snap) {
        r->log.offset = e[0].index; /* entries up to e[0] are covered by the snapshot */
        r->log.offset_term = e[0].term;
        k = 1;
    } else {
        r->log.offset = snap;
        r->log.offset_term = rs->snapshot_term;
    }
    for (; k < n; k++)
        if (raft_log_append(&r->log, &e[k]))
            return RAFT_ENOMEM;
    r->snap_index = snap;
    r->snap_term = rs->snapshot_term;
    r->commit = r->applied = r->delivered = snap;
    return raft_conf_on_truncate(r); /* the newest configuration entry in the log, if any */
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The configuration in force at the snapshot (or at the start): the restored one, else the
 * initial voters of cfg->peers. */
static int initial_conf(const struct raft_config *cfg, const struct raft_restore *rs,
                        struct raft_conf *c, uint8_t **blob, uint32_t *len)
{
    if (rs && rs->conf_len) {
        if (raft_conf_decode(rs->conf, rs->conf_len, c, NULL, NULL))
            return RAFT_EINVAL;
        *blob = malloc(rs->conf_len);
        if (!*blob)
            return RAFT_ENOMEM;
        memcpy(*blob, rs->conf, rs->conf_len);
        *len = rs->conf_len;
        return 0;
    }
    if (!cfg->peers || !cfg->n_peers || cfg->n_peers > RAFT_MAX_NODES)
        return RAFT_EINVAL;
    memset(c, 0, sizeof(*c));
    memcpy(c->voters, cfg->peers, cfg->n_peers * sizeof(uint64_t));
    c->n_voters = (uint32_t)cfg->n_peers;
    qsort(c->voters, c->n_voters, sizeof(uint64_t), cmp_u64);
    return raft_conf_encode(c, NULL, 0, blob, len); /* EINVAL for zero or duplicate ids */
}

int raft_new(const struct raft_config *cfg, const struct raft_restore *rs, struct raft **out)
{
    if (!cfg || !out || !cfg->id)
        return RAFT_EINVAL;
    if (!cfg->election_tick || !cfg->heartbeat_tick || cfg->heartbeat_tick >= cfg->election_tick ||
        !cfg->max_append_entries || !cfg->max_inflight_msgs || !cfg->max_append_bytes ||
        !cfg->max_inflight_bytes || !cfg->max_msg_entries)
        return RAFT_EINVAL;
    if (rs && ((rs->n_entries && !rs->entries) || (!rs->snapshot_index != !rs->snapshot_term) ||
               rs->snapshot_term > rs->hs.term))
        return RAFT_EINVAL;

    struct raft *r = calloc(1, sizeof(*r));
    if (!r)
        return RAFT_ENOMEM;
    r->cfg = *cfg;
    r->cfg.peers = NULL;
    if (!r->cfg.max_read_pending)
        r->cfg.max_read_pending = 1024;
    r->id = cfg->id;
    r->rng = cfg->seed ^ (cfg->id * 0x2545F4914F6CDD1Dull);
    /* The member list follows the configuration (raft_conf.c); this member need not be in it -
     * one that was removed restarts as a non-voter. */
    int rc = initial_conf(cfg, rs, &r->snap_conf.c, &r->snap_conf.blob, &r->snap_conf.len);
    if (!rc)
        rc = raft_conf_adopt(r, &r->snap_conf.c, r->snap_conf.blob, r->snap_conf.len, 0);
    if (!rc && rs)
        rc = restore_log(r, rs);
    if (rc) {
        raft_free(r);
        return rc;
    }
    r->persisted_hs = r->hs;
    r->persisted_index = r->readied_last = raft_log_last_index(&r->log);
    r->role = RAFT_FOLLOWER;
    r->rep_term = r->hs.term;
    reset_election_timer(r);
    *out = r;
    return 0;
}

void raft_free(struct raft *r)
{
    if (!r)
        return;
    raft_log_free(&r->log);
    for (size_t i = 0; i < r->n_out; i++)
        raft_msg_free(&r->out[i]);
    for (size_t i = 0; i < r->n_held; i++)
        raft_msg_free(&r->held[i].m);
    if (r->progress)
        for (size_t i = 0; i < r->n_peers; i++)
            progress_free(&r->progress[i]);
    free(r->out);
    free(r->held);
    free(r->recs);
    raft_read_free(r);
    raft_conf_free(r);
    free(r->progress);
    free(r->votes);
    free(r->peers);
    free(r);
}

/* ---- roles (Figure 4 of the paper; pre-candidate from thesis §9.6) ---- */

void raft_become_follower(struct raft *r, uint64_t term, uint64_t leader)
{
    /* Pending reads belong to one leadership (ours, or the leader we asked): settle them before
     * the term moves, so a deposed leader's answers to its followers carry its old term. */
    if (r->role != RAFT_FOLLOWER || term != r->hs.term || leader != r->leader_id) {
        if (leader)
            RAFT_TRACE(r, "follows n%" PRIu64 " in term %" PRIu64, leader, term);
        else
            RAFT_TRACE(r, "becomes a follower in term %" PRIu64 ", no leader known", term);
        raft_read_fail_all(r);
    }
    set_term(r, term);
    r->role = RAFT_FOLLOWER;
    r->leader_id = leader;
    r->transferee = 0;
    reset_election_timer(r);
}

static void count_self_and_maybe_win(struct raft *r);

void raft_become_precandidate(struct raft *r)
{
    /* Ask whether we could win before bumping the term: a node that cannot win (partitioned,
     * stale log) never disturbs the cluster's term (thesis §9.6). */
    assert(r->role != RAFT_LEADER);
    RAFT_TRACE(r, "election timeout: pre-vote for term %" PRIu64, r->hs.term + 1);
    raft_read_fail_all(r);
    r->role = RAFT_PRECANDIDATE;
    r->leader_id = 0;
    memset(r->votes, 0, r->n_peers);
    reset_election_timer(r);
    r->votes[raft_peer_index(r, r->id)] = 1; /* a pre-vote needs nothing durable */
    for (size_t i = 0; i < r->n_peers; i++) {
        if (r->peers[i] == r->id || !raft_is_voter(r, r->peers[i]))
            continue;
        struct raft_msg m = {.type = RAFT_MSG_PREVOTE,
                             .to = r->peers[i],
                             .term = r->hs.term + 1,
                             .last_log_index = raft_log_last_index(&r->log),
                             .last_log_term = raft_log_last_term(&r->log)};
        raft_send(r, &m);
    }
    count_self_and_maybe_win(r);
}

void raft_become_candidate(struct raft *r, bool transfer)
{
    assert(r->role != RAFT_LEADER);
    RAFT_TRACE(r, "campaigns for term %" PRIu64 "%s", r->hs.term + 1,
               transfer ? " (leadership transfer)" : "");
    raft_read_fail_all(r);
    set_term(r, r->hs.term + 1);
    r->hs.voted_for = r->id;
    r->hs_dirty = true;
    r->role = RAFT_CANDIDATE;
    r->leader_id = 0;
    memset(r->votes, 0, r->n_peers);
    reset_election_timer(r);
    for (size_t i = 0; i < r->n_peers; i++) {
        if (r->peers[i] == r->id || !raft_is_voter(r, r->peers[i]))
            continue;
        struct raft_msg m = {.type = RAFT_MSG_VOTE,
                             .to = r->peers[i],
                             .term = r->hs.term,
                             .transfer = transfer,
                             .last_log_index = raft_log_last_index(&r->log),
                             .last_log_term = raft_log_last_term(&r->log)};
        raft_send(r, &m);
    }
    /* Our own vote counts only once term + votedFor are durable: a crash before that could let
     * this node vote again in the same term. It arrives as a held message to ourselves. */
    struct raft_msg self = {
        .type = RAFT_MSG_VOTE_RESP, .to = r->id, .term = r->hs.term, .granted = true};
    raft_send_after_persist(r, &self);
}

static void count_self_and_maybe_win(struct raft *r)
{
    assert(r->role == RAFT_PRECANDIDATE || r->role == RAFT_CANDIDATE);
    if (raft_quorum_has(r, r->votes, 1)) {
        if (r->role == RAFT_PRECANDIDATE)
            raft_become_candidate(r, false);
        else if (r->role == RAFT_CANDIDATE)
            raft_become_leader(r);
    }
}

void raft_become_leader(struct raft *r)
{
    assert(r->role == RAFT_CANDIDATE);
    RAFT_TRACE(r, "wins the election with a majority of votes");
    r->role = RAFT_LEADER;
    r->leader_id = r->id;
    r->transferee = 0;
    r->heartbeat_elapsed = 0;
    r->election_elapsed = 0;
    uint64_t last = raft_log_last_index(&r->log);
    for (size_t i = 0; i < r->n_peers; i++)
        progress_reset_leader(&r->progress[i], last, r->peers[i] == r->id);
    /* A no-op of the new term lets entries of older terms commit (§5.4.2, §8). */
    struct raft_entry noop = {.index = last + 1, .term = r->hs.term, .type = RAFT_ENTRY_NOOP};
    raft_log_append(&r->log, &noop);
    raft_bcast_append(r);
    raft_maybe_commit(r); /* single-node cluster */
}

/* ---- clock ---- */

static void campaign(struct raft *r)
{
    if (r->cfg.pre_vote)
        raft_become_precandidate(r); /* a lone voter wins its pre-vote at once */
    else
        raft_become_candidate(r, false);
}

int raft_tick(struct raft *r)
{
    if (!r)
        return RAFT_EINVAL;
    raft_read_tick(r);
    if (r->role != RAFT_LEADER) {
        if (++r->election_elapsed < r->randomized_timeout)
            return 0;
        if (raft_may_campaign(r)) {
            campaign(r);
        } else {
            /* A learner or a removed member never campaigns (thesis §4.2.1); it only forgets a
             * leader it no longer hears from. */
            if (r->role != RAFT_FOLLOWER || r->leader_id)
                raft_become_follower(r, r->hs.term, 0);
            r->election_elapsed = 0;
        }
        return 0;
    }
    if (r->transferee && ++r->transfer_elapsed >= r->cfg.election_tick) {
        RAFT_TRACE(r, "transfer to n%" PRIu64 " timed out: proposals resume", r->transferee);
        r->transferee = 0; /* target did not take over in time: resume (thesis §3.10) */
    }
    if (++r->election_elapsed >= r->cfg.election_tick) {
        r->election_elapsed = 0;
        if (r->cfg.check_quorum) {
            /* Check-quorum (thesis §6.2): a leader that has not heard from a majority within
             * an election timeout steps down, so clients can find the real leader. */
            int8_t heard[RAFT_MAX_NODES];
            size_t active = 0;
            for (size_t i = 0; i < r->n_peers; i++) {
                bool h = progress_take_active(&r->progress[i]);
                heard[i] = r->peers[i] == r->id || h;
                active += (size_t)heard[i];
            }
            if (!raft_quorum_has(r, heard, 1)) {
                RAFT_TRACE(r, "steps down (check-quorum): heard from %zu of %zu members in an "
                              "election timeout, not a majority", active, r->n_peers);
                raft_become_follower(r, r->hs.term, 0);
                return 0;
            }
        }
    }
    if (++r->heartbeat_elapsed >= r->cfg.heartbeat_tick) {
        r->heartbeat_elapsed = 0;
        raft_bcast_heartbeat(r);
    }
    return 0;
}

/* ---- messages ---- */

static int validate(const struct raft *r, const struct raft_msg *m)
{
    if (m->type == RAFT_MSG_NONE || m->type > RAFT_MSG_TYPE_MAX || m->type == 9)
        return RAFT_EINVAL; /* 9: reserved */
    if (m->to != r->id || !m->from || m->from == r->id)
        return RAFT_EUNKNOWN;
    /* A leader or candidate this member does not know yet may be real: its configuration (in
     * entries this member has not received) may include us, and it is how we catch up. Only
     * answers to our own requests must come from members. */
    bool answer = m->type == RAFT_MSG_APPEND_RESP || m->type == RAFT_MSG_VOTE_RESP ||
                  m->type == RAFT_MSG_PREVOTE_RESP;
    if (answer && raft_peer_index(r, m->from) == r->n_peers)
        return RAFT_EUNKNOWN;
    if (m->conf_len && (m->type != RAFT_MSG_SNAPSHOT || !m->conf))
        return RAFT_EINVAL;
    if (m->n_entries && m->type != RAFT_MSG_APPEND)
        return RAFT_EINVAL;
    if (m->n_entries > r->cfg.max_msg_entries)
        return RAFT_ETOOBIG;
    if (m->n_entries && !m->entries)
        return RAFT_EINVAL;
    if (m->term == 0)
        return RAFT_EINVAL; /* every real message is sent in some term >= 1 */
    return 0;
}

int raft_step(struct raft *r, const struct raft_msg *m)
{
    if (!r || !m)
        return RAFT_EINVAL;
    int rc = validate(r, m);
    if (rc)
        return rc;

    if (m->term > r->hs.term) {
        if (m->type == RAFT_MSG_VOTE || m->type == RAFT_MSG_PREVOTE) {
            /* Leader lease (thesis §4.2.3, with check-quorum): while we hear from a leader, a
             * disruptive candidate is ignored, term and all - unless the leader itself asked for
             * the election (TimeoutNow). */
            bool in_lease = r->cfg.check_quorum && r->leader_id &&
                            r->election_elapsed < r->cfg.election_tick;
            if (in_lease && !m->transfer) {
                RAFT_TRACE(r, "ignores %s from n%" PRIu64 " for term %" PRIu64
                              ": leader n%" PRIu64 " heard within the lease",
                           raft_msg_type_name(m->type), m->from, m->term, r->leader_id);
                return 0;
            }
        }
        if (m->type == RAFT_MSG_PREVOTE || (m->type == RAFT_MSG_PREVOTE_RESP && m->granted)) {
            /* A pre-vote carries a prospective term: it never changes ours. */
        } else {
            RAFT_TRACE(r, "sees the newer term %" PRIu64 " in %s from n%" PRIu64 "%s", m->term,
                       raft_msg_type_name(m->type), m->from,
                       r->role == RAFT_FOLLOWER ? "" : ": steps down");
            bool from_leader = m->type == RAFT_MSG_APPEND || m->type == RAFT_MSG_SNAPSHOT;
            raft_become_follower(r, m->term, from_leader ? m->from : 0);
        }
    } else if (m->term < r->hs.term) {
        /* Answer stale senders with our term so they step down (Figure 2); ignore the rest. */
        struct raft_msg resp = {.to = m->from, .term = r->hs.term};
        switch (m->type) {
        case RAFT_MSG_APPEND:
        case RAFT_MSG_SNAPSHOT:
            resp.type = RAFT_MSG_APPEND_RESP;
            resp.reject = true;
            resp.reject_index = m->prev_index;
            return raft_send(r, &resp);
        case RAFT_MSG_VOTE:
        case RAFT_MSG_PREVOTE:
            resp.type = m->type == RAFT_MSG_VOTE ? RAFT_MSG_VOTE_RESP : RAFT_MSG_PREVOTE_RESP;
            return raft_send(r, &resp);
        case RAFT_MSG_READ_INDEX:
            /* Fail the read at once; our term tells the sender its leader is gone. */
            resp.type = RAFT_MSG_READ_INDEX_RESP;
            resp.ctx = m->ctx;
            return raft_send(r, &resp);
        default:
            return 0;
        }
    }

    switch (m->type) {
    case RAFT_MSG_VOTE:
    case RAFT_MSG_PREVOTE:
        return raft_recv_vote(r, m);
    case RAFT_MSG_VOTE_RESP:
    case RAFT_MSG_PREVOTE_RESP:
        return raft_recv_vote_resp(r, m);
    case RAFT_MSG_APPEND:
        return raft_recv_append(r, m);
    case RAFT_MSG_APPEND_RESP:
        return raft_recv_append_resp(r, m);
    case RAFT_MSG_SNAPSHOT:
        return raft_recv_snapshot(r, m);
    case RAFT_MSG_TIMEOUT_NOW:
        if (r->role == RAFT_LEADER || !raft_may_campaign(r))
            return 0;
        if (m->from != r->leader_id && r->leader_id)
            return RAFT_EINVAL;
        /* The leader found us up to date: campaign at once, without pre-vote (thesis §3.10). */
        RAFT_TRACE(r, "TimeoutNow from n%" PRIu64, m->from);
        raft_become_candidate(r, true);
        return 0;
    case RAFT_MSG_READ_INDEX:
        return raft_recv_read_index(r, m);
    case RAFT_MSG_READ_INDEX_RESP:
        return raft_recv_read_index_resp(r, m);
    }
    return RAFT_EINVAL;
}

/* ---- client-facing events ---- */

int raft_propose(struct raft *r, uint8_t type, const void *data, uint32_t len, uint64_t *index,
                 uint64_t *term, uint64_t *leader_hint)
{
    if (!r || (len && !data) || type != RAFT_ENTRY_NORMAL)
        return RAFT_EINVAL;
    if (leader_hint)
        *leader_hint = r->leader_id;
    if (r->role != RAFT_LEADER)
        return RAFT_ENOTLEADER;
    if (r->transferee)
        return RAFT_EBUSY;
    if (len > r->cfg.max_entry_bytes)
        return RAFT_ETOOBIG;
    struct raft_entry e = {.index = raft_log_last_index(&r->log) + 1,
                           .term = r->hs.term,
                           .type = type,
                           .len = len,
                           .data = (uint8_t *)data};
    int rc = raft_log_append(&r->log, &e);
    if (rc)
        return rc;
    if (index)
        *index = e.index;
    if (term)
        *term = e.term;
    raft_bcast_append(r);
    return 0;
}

int raft_transfer_leader(struct raft *r, uint64_t to)
{
    if (!r)
        return RAFT_EINVAL;
    if (r->role != RAFT_LEADER)
        return RAFT_ENOTLEADER;
    size_t i = raft_peer_index(r, to);
    if (i == r->n_peers)
        return RAFT_EUNKNOWN;
    if (to == r->id || !raft_is_voter(r, to))
        return RAFT_ESTATE; /* a learner cannot lead */
    RAFT_TRACE(r, "transfers leadership to n%" PRIu64, to);
    r->transferee = to;
    r->transfer_elapsed = 0;
    struct progress *pr = &r->progress[i];
    if (pr->match == raft_log_last_index(&r->log))
        raft_send_timeout_now(r, to);
    else
        raft_send_append(r, pr, false);
    return 0;
}

int raft_compact(struct raft *r, uint64_t snapshot_index, uint64_t first_kept)
{
    if (!r)
        return RAFT_EINVAL;
    uint64_t t;
    if (snapshot_index > r->applied || snapshot_index < r->snap_index ||
        !raft_log_term(&r->log, snapshot_index, &t))
        return RAFT_ESTATE;
    if (first_kept <= r->log.offset || first_kept > snapshot_index + 1)
        return RAFT_EINVAL;
    if (snapshot_index > r->snap_index)
        RAFT_TRACE(r, "snapshot at %" PRIu64 " (term %" PRIu64 "), log kept from %" PRIu64,
                   snapshot_index, t, first_kept);
    int rc = raft_conf_on_compact(r, snapshot_index); /* before snap_index moves */
    if (rc)
        return rc;
    r->snap_index = snapshot_index;
    r->snap_term = t;
    /* Entries up to snapshot_index were applied, so delivered, persisted and committed. */
    if (first_kept - 1 > r->log.offset)
        raft_log_compact(&r->log, first_kept - 1);
    return 0;
}

int raft_report_snapshot(struct raft *r, uint64_t peer, bool ok)
{
    if (!r)
        return RAFT_EINVAL;
    if (r->role != RAFT_LEADER)
        return RAFT_ESTATE;
    size_t i = raft_peer_index(r, peer);
    if (i == r->n_peers || peer == r->id)
        return RAFT_EUNKNOWN;
    struct progress *pr = &r->progress[i];
    if (pr->state != RAFT_PROGRESS_SNAPSHOT)
        return 0; /* already acknowledged, or a report of an older transfer */
    RAFT_TRACE(r, "snapshot %" PRIu64 " to n%" PRIu64 " %s", pr->pending_snapshot, peer,
               ok ? "delivered: probes after it" : "failed: probes again");
    progress_snapshot_done(pr, ok);
    if (!ok)
        raft_send_append(r, pr, true);
    return 0;
}

int raft_campaign(struct raft *r)
{
    if (!r)
        return RAFT_EINVAL;
    if (r->role == RAFT_LEADER || !raft_may_campaign(r))
        return RAFT_ESTATE;
    raft_become_candidate(r, false);
    return 0;
}

int raft_applied(struct raft *r, uint64_t index)
{
    if (!r || index > r->delivered)
        return RAFT_EINVAL;
    if (index > r->applied)
        r->applied = index;
    return 0;
}

/* ---- inspection ---- */

void raft_status_get(const struct raft *r, struct raft_status *st)
{
    st->id = r->id;
    st->role = r->role;
    st->term = r->hs.term;
    st->voted_for = r->hs.voted_for;
    st->leader_id = r->leader_id;
    st->commit_index = r->commit;
    st->applied_index = r->applied;
    st->last_index = raft_log_last_index(&r->log);
    st->last_term = raft_log_last_term(&r->log);
    st->persisted_index = r->persisted_index;
    st->transferee = r->transferee;
    st->first_index = r->log.offset + 1;
    st->snapshot_index = r->snap_index;
    st->snapshot_term = r->snap_term;
    st->voter = raft_is_voter(r, r->id);
    st->conf_joint = r->conf.c.n_old > 0;
    st->conf_index = r->conf_index;
    st->conf_gen = r->conf_gen;
}

int raft_progress_get(const struct raft *r, uint64_t peer, struct raft_progress_info *out)
{
    if (r->role != RAFT_LEADER)
        return RAFT_ESTATE;
    size_t i = raft_peer_index(r, peer);
    if (i == r->n_peers)
        return RAFT_EUNKNOWN;
    const struct progress *pr = &r->progress[i];
    out->state = pr->state;
    out->match = pr->id == r->id ? r->persisted_index : pr->match;
    out->next = pr->next;
    out->inflight_msgs = progress_window_count(&pr->window);
    out->inflight_bytes = progress_window_bytes(&pr->window);
    return 0;
}

const struct raft_entry *raft_log_get(const struct raft *r, uint64_t index)
{
    return raft_log_at(&r->log, index);
}
