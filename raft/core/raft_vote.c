/* raft_vote.c: RequestVote and PreVote, both sides (Raft paper §5.2, §5.4.1; thesis §9.6).
 * raft_step() has already applied the term rules, so here m->term == our term, except a PreVote
 * (prospective term, may be higher) and a granted PreVote response (echoes term + 1). */
#include <assert.h>
#include <inttypes.h>
#include <string.h>

#include "raft/core/raft_internal.h"

/* §5.4.1: grant only to a candidate whose log is at least as up to date as ours: a later last
 * term wins; with equal last terms the longer log wins. */
static bool log_up_to_date(const struct raft *r, uint64_t last_index, uint64_t last_term)
{
    uint64_t my_term = raft_log_last_term(&r->log);
    return last_term > my_term ||
           (last_term == my_term && last_index >= raft_log_last_index(&r->log));
}

int raft_recv_vote(struct raft *r, const struct raft_msg *m)
{
    bool pre = m->type == RAFT_MSG_PREVOTE;
    /* One vote per term (Figure 2); and no vote while we know a live leader of this term.
     * A pre-vote for a future term is not a vote and binds nothing. */
    bool can_vote = r->hs.voted_for == m->from ||
                    (r->hs.voted_for == 0 && r->leader_id == 0) || (pre && m->term > r->hs.term);
    bool grant = can_vote && log_up_to_date(r, m->last_log_index, m->last_log_term);
    struct raft_msg resp = {
        .type = pre ? RAFT_MSG_PREVOTE_RESP : RAFT_MSG_VOTE_RESP,
        .to = m->from,
        .granted = grant,
        .term = grant && pre ? m->term : r->hs.term,
    };
    RAFT_TRACE(r, "%s %s to n%" PRIu64 " for term %" PRIu64 "%s", grant ? "grants" : "refuses",
               pre ? "pre-vote" : "vote", m->from, m->term,
               grant      ? ""
               : !can_vote ? (r->hs.voted_for ? ": already voted in this term"
                                              : ": a leader of this term is known")
                           : ": its log is behind ours (§5.4.1)");
    if (!grant || pre)
        return raft_send(r, &resp);
    if (r->hs.voted_for != m->from) {
        r->hs.voted_for = m->from;
        r->hs_dirty = true;
    }
    /* Granting resets our election timer (§5.2) so we do not compete with the candidate. */
    r->election_elapsed = 0;
    /* The grant leaves only after votedFor is durable. */
    return raft_send_after_persist(r, &resp);
}

int raft_recv_vote_resp(struct raft *r, const struct raft_msg *m)
{
    bool pre = m->type == RAFT_MSG_PREVOTE_RESP;
    if (pre) {
        if (r->role != RAFT_PRECANDIDATE)
            return 0;
        /* Granted answers echo the prospective term; rejections carry the voter's term. */
        if (m->granted ? m->term != r->hs.term + 1 : m->term != r->hs.term)
            return 0;
    } else {
        if (r->role != RAFT_CANDIDATE || m->term != r->hs.term)
            return 0;
    }
    size_t i = raft_peer_index(r, m->from);
    if (i == r->n_peers)
        return RAFT_EUNKNOWN;
    if (r->votes[i] == 0)
        r->votes[i] = m->granted ? 1 : -1;
    /* While joint, winning needs a majority of C_new and of C_old (§6); a majority of either
     * refusing loses. */
    if (raft_quorum_has(r, r->votes, 1)) {
        if (pre)
            raft_become_candidate(r, false);
        else
            raft_become_leader(r);
    } else if (raft_quorum_lost(r, r->votes, -1)) {
        /* Cannot win this round: wait as a follower for a new timeout. */
        RAFT_TRACE(r, "loses the %s: refused by a majority", pre ? "pre-vote" : "election");
        raft_become_follower(r, r->hs.term, 0);
    }
    return 0;
}
