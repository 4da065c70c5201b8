/* ReadIndex in the core (raft_read_index, Raft thesis §6.4), driving one core by hand: a leader
 * read waits for a majority to echo its round (a minority, stale or duplicated echoes are not
 * enough), waits for the leader's first commit in its term, goes out at once as heartbeats,
 * fails when the leader steps down or cannot confirm within an election timeout; a follower read
 * goes through the leader. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "raft/core/raft.h"

#define MAXM 256
#define MAXR 64

struct out {
    struct raft_msg m[MAXM];
    int n;
    struct raft_read_state rs[MAXR];
    int nrs;
};

static void out_clear(struct out *o)
{
    memset(o, 0, sizeof(*o));
}

/* Take every ready, report its writes persisted at once; keep messages (without entries) and read
 * states. */
static void drain(struct raft *r, struct out *o)
{
    while (raft_has_ready(r)) {
        struct raft_ready rd;
        cr_assert_eq(raft_ready(r, &rd), 0);
        for (size_t i = 0; i < rd.n_msgs; i++) {
            cr_assert(o->n < MAXM);
            o->m[o->n] = rd.msgs[i];
            o->m[o->n].entries = NULL;
            o->m[o->n].n_entries = 0;
            o->n++;
        }
        for (size_t i = 0; i < rd.n_read_states; i++) {
            cr_assert(o->nrs < MAXR);
            o->rs[o->nrs++] = rd.read_states[i];
        }
        uint64_t seq = rd.persist_seq;
        raft_advance(r, &rd);
        if (seq)
            cr_assert_eq(raft_persisted(r, seq), 0);
    }
}

static const struct raft_msg *find(const struct out *o, int type, uint64_t to)
{
    for (int i = 0; i < o->n; i++)
        if (o->m[i].type == type && (!to || o->m[i].to == to))
            return &o->m[i];
    return NULL;
}

static struct raft_status status(struct raft *r)
{
    struct raft_status st;
    raft_status_get(r, &st);
    return st;
}

static uint32_t g_max_read = 0;

static struct raft *mk(uint64_t id, size_t n_peers, const uint64_t *terms, size_t n_terms,
                       uint64_t term)
{
    static const uint64_t peers[] = {1, 2, 3, 4, 5};
    struct raft_config c;
    raft_config_default(&c);
    c.id = id;
    c.peers = peers;
    c.n_peers = n_peers;
    c.seed = 7;
    if (g_max_read)
        c.max_read_pending = g_max_read;
    struct raft_entry e[16];
    for (size_t i = 0; i < n_terms; i++)
        e[i] = (struct raft_entry){.index = i + 1, .term = terms[i], .type = RAFT_ENTRY_NORMAL};
    struct raft_restore rs = {.hs = {term, 0}, .entries = e, .n_entries = n_terms};
    struct raft *r = NULL;
    cr_assert_eq(raft_new(&c, &rs, &r), 0);
    return r;
}

static void step(struct raft *r, struct raft_msg m)
{
    cr_assert_eq(raft_step(r, &m), 0, "step %s from %llu", raft_msg_type_name(m.type),
                 (unsigned long long)m.from);
}

static struct raft_msg ack(uint64_t from, uint64_t term, uint64_t match, uint64_t round)
{
    return (struct raft_msg){.type = RAFT_MSG_APPEND_RESP, .from = from, .to = 1, .term = term,
                             .match_index = match, .ctx = round};
}

/* Node 1 leads an n-node cluster in term `term` + 1, log `terms` + its no-op. With `commit`, the
 * no-op is acknowledged by a majority, so the leader has committed an entry of its term. */
static struct raft *leader(size_t n, const uint64_t *terms, size_t nt, uint64_t term,
                           bool commit, struct out *o)
{
    struct raft *r = mk(1, n, terms, nt, term);
    cr_assert_eq(raft_campaign(r), 0);
    drain(r, o);
    for (uint64_t p = 2; p <= n / 2 + 1; p++)
        step(r, (struct raft_msg){.type = RAFT_MSG_VOTE_RESP, .from = p, .to = 1,
                                  .term = term + 1, .granted = true});
    cr_assert_eq(status(r).role, RAFT_LEADER);
    drain(r, o);
    if (commit) {
        for (uint64_t p = 2; p <= n / 2 + 1; p++)
            step(r, ack(p, term + 1, nt + 1, 0));
        drain(r, o);
        cr_assert_eq(status(r).commit_index, nt + 1);
    }
    out_clear(o);
    return r;
}

Test(read, leader_read_waits_for_a_majority_echo_of_its_round)
{
    struct out o = {0};
    struct raft *r = leader(3, NULL, 0, 1, true, &o);
    cr_assert_eq(raft_read_index(r, 77), 0);
    drain(r, &o);
    /* The confirmation heartbeats leave at once, carrying the new round. */
    const struct raft_msg *h2 = find(&o, RAFT_MSG_APPEND, 2), *h3 = find(&o, RAFT_MSG_APPEND, 3);
    cr_assert(h2 && h3, "no immediate heartbeat round");
    uint64_t round = h2->ctx;
    cr_assert_gt(round, 0);
    cr_assert_eq(h3->ctx, round);
    cr_assert_eq(o.nrs, 0, "released before any follower answered");
    /* A response to an older message (echo of round 0) proves nothing about the read. */
    step(r, ack(2, 2, 1, round - 1));
    drain(r, &o);
    cr_assert_eq(o.nrs, 0, "released on a stale echo");
    /* Leader + follower 2 echoing the round: a majority of 3. */
    step(r, ack(2, 2, 1, round));
    drain(r, &o);
    cr_assert_eq(o.nrs, 1);
    cr_assert_eq(o.rs[0].ctx, 77);
    cr_assert_eq(o.rs[0].index, 1, "read index is the commit index");
    /* Follower 3's late echo releases nothing more. */
    out_clear(&o);
    step(r, ack(3, 2, 1, round));
    drain(r, &o);
    cr_assert_eq(o.nrs, 0);
    raft_free(r);
}

Test(read, minority_and_duplicated_echoes_do_not_release)
{
    struct out o = {0};
    struct raft *r = leader(5, NULL, 0, 1, true, &o);
    cr_assert_eq(raft_read_index(r, 1), 0);
    drain(r, &o);
    uint64_t r1 = find(&o, RAFT_MSG_APPEND, 2)->ctx;
    out_clear(&o);
    cr_assert_eq(raft_read_index(r, 2), 0);
    drain(r, &o);
    uint64_t r2 = find(&o, RAFT_MSG_APPEND, 2)->ctx;
    cr_assert_gt(r2, r1);
    out_clear(&o);
    /* Follower 2 echoes round 2 three times (duplicates): leader + one follower is 2 of 5. */
    for (int k = 0; k < 3; k++)
        step(r, ack(2, 2, 1, r2));
    drain(r, &o);
    cr_assert_eq(o.nrs, 0, "released by a duplicated echo");
    /* Follower 3 answers an older message (reordered: echo of round 1). Leader (2), 2 (2) and 3
     * (1) have all seen round 1: read 1 is confirmed, read 2 is not. */
    step(r, ack(3, 2, 1, r1));
    drain(r, &o);
    cr_assert_eq(o.nrs, 1);
    cr_assert_eq(o.rs[0].ctx, 1);
    out_clear(&o);
    step(r, ack(4, 2, 1, r1));
    drain(r, &o);
    cr_assert_eq(o.nrs, 0, "read 2 released on echoes of an older round");
    /* A third echo of round 2 (follower 5) makes the majority. */
    step(r, ack(5, 2, 1, r2));
    drain(r, &o);
    cr_assert_eq(o.nrs, 1);
    cr_assert_eq(o.rs[0].ctx, 2);
    cr_assert_eq(o.rs[0].index, 1);
    raft_free(r);
}

Test(read, a_refusal_in_the_term_also_confirms)
{
    struct out o = {0};
    struct raft *r = leader(3, NULL, 0, 1, true, &o);
    cr_assert_eq(raft_read_index(r, 5), 0);
    drain(r, &o);
    uint64_t round = find(&o, RAFT_MSG_APPEND, 2)->ctx;
    out_clear(&o);
    struct raft_msg rej = {.type = RAFT_MSG_APPEND_RESP, .from = 3, .to = 1, .term = 2,
                           .reject = true, .reject_index = 1, .conflict_index = 1, .ctx = round};
    step(r, rej);
    drain(r, &o);
    cr_assert_eq(o.nrs, 1);
    cr_assert_eq(o.rs[0].index, 1);
    raft_free(r);
}

Test(read, waits_for_the_leaders_first_commit_in_its_term)
{
    /* The log holds entries 1-2 of term 1, maybe committed by the previous leader; the new
     * leader (term 2) knows commit 0. Its no-op is at 3. */
    static const uint64_t terms[] = {1, 1};
    struct out o = {0};
    struct raft *r = leader(3, terms, 2, 1, false, &o);
    cr_assert_eq(status(r).commit_index, 0);
    cr_assert_eq(raft_read_index(r, 9), 0);
    drain(r, &o);
    cr_assert_null(find(&o, RAFT_MSG_APPEND, 0), "a round started before the first commit");
    /* Follower 2 holds the old entries but not the no-op yet: nothing commits (Figure 8). */
    step(r, ack(2, 2, 2, 0));
    drain(r, &o);
    cr_assert_eq(status(r).commit_index, 0);
    cr_assert_eq(o.nrs, 0, "answered with a commit index older than its own term");
    out_clear(&o);
    /* The no-op commits: now the round starts at once and uses the new commit index. */
    step(r, ack(2, 2, 3, 0));
    drain(r, &o);
    cr_assert_eq(status(r).commit_index, 3);
    cr_assert_eq(o.nrs, 0, "released without a round");
    const struct raft_msg *h = find(&o, RAFT_MSG_APPEND, 3);
    cr_assert(h && h->ctx > 0, "no round after the first commit");
    uint64_t round = h->ctx;
    out_clear(&o);
    step(r, ack(3, 2, 3, round));
    drain(r, &o);
    cr_assert_eq(o.nrs, 1);
    cr_assert_eq(o.rs[0].ctx, 9);
    cr_assert_eq(o.rs[0].index, 3);
    raft_free(r);
}

Test(read, single_member_answers_after_its_own_commit)
{
    static const uint64_t terms[] = {1};
    struct raft *r = mk(1, 1, terms, 1, 1);
    struct out o = {0};
    /* Campaign: the vote and the no-op persist in drain, which commits it. Before the no-op is
     * durable the read must wait. */
    cr_assert_eq(raft_campaign(r), 0);
    struct raft_ready rd;
    cr_assert_eq(raft_ready(r, &rd), 0);
    uint64_t seq = rd.persist_seq;
    raft_advance(r, &rd);
    cr_assert_eq(raft_persisted(r, seq), 0); /* the vote: now leader, no-op not durable */
    cr_assert_eq(status(r).role, RAFT_LEADER);
    cr_assert_eq(raft_read_index(r, 3), 0);
    cr_assert_eq(status(r).commit_index, 0);
    drain(r, &o); /* persists the no-op: commit 2, then the read */
    cr_assert_eq(status(r).commit_index, 2);
    cr_assert_eq(o.nrs, 1);
    cr_assert_eq(o.rs[0].ctx, 3);
    cr_assert_eq(o.rs[0].index, 2);
    out_clear(&o);
    cr_assert_eq(raft_read_index(r, 4), 0);
    drain(r, &o);
    cr_assert_eq(o.nrs, 1, "single member: released at once");
    cr_assert_eq(o.rs[0].index, 2);
    raft_free(r);
}

Test(read, stepped_down_leader_fails_its_reads_and_never_releases_them)
{
    struct out o = {0};
    struct raft *r = leader(3, NULL, 0, 1, true, &o);
    cr_assert_eq(raft_read_index(r, 11), 0);
    drain(r, &o);
    uint64_t round = find(&o, RAFT_MSG_APPEND, 2)->ctx;
    /* A follower's forwarded read is pending too. */
    step(r, (struct raft_msg){.type = RAFT_MSG_READ_INDEX, .from = 3, .to = 1, .term = 2,
                              .ctx = 500});
    out_clear(&o);
    /* A leader of term 3 appears: we step down; both reads fail, none with an index. */
    step(r, (struct raft_msg){.type = RAFT_MSG_APPEND, .from = 2, .to = 1, .term = 3,
                              .prev_index = 1, .prev_term = 2, .commit = 1});
    drain(r, &o);
    cr_assert_eq(status(r).role, RAFT_FOLLOWER);
    cr_assert_eq(o.nrs, 1);
    cr_assert_eq(o.rs[0].ctx, 11);
    cr_assert_eq(o.rs[0].index, 0, "a deposed leader released a read index");
    const struct raft_msg *resp = find(&o, RAFT_MSG_READ_INDEX_RESP, 3);
    cr_assert(resp && resp->ctx == 500 && resp->read_index == 0);
    cr_assert_eq(resp->term, 2, "the failure answer carries the old term");
    /* Late echoes of the old round, in the old term, release nothing (and are ignored). */
    out_clear(&o);
    struct raft_msg late = ack(2, 2, 1, round);
    raft_step(r, &late);
    late.from = 3;
    raft_step(r, &late);
    drain(r, &o);
    cr_assert_eq(o.nrs, 0);
    raft_free(r);
}

Test(read, unconfirmed_read_fails_after_an_election_timeout)
{
    struct out o = {0};
    struct raft_config d;
    raft_config_default(&d);
    struct raft *r = leader(3, NULL, 0, 1, true, &o);
    cr_assert_eq(raft_read_index(r, 21), 0);
    drain(r, &o);
    /* Keep the leader in place (check-quorum needs an active follower) but never echo. */
    for (unsigned t = 0; t + 1 < d.election_tick; t++) {
        step(r, ack(2, 2, 1, 0));
        cr_assert_eq(raft_tick(r), 0);
        drain(r, &o);
        cr_assert_eq(o.nrs, 0);
    }
    step(r, ack(2, 2, 1, 0));
    cr_assert_eq(raft_tick(r), 0);
    drain(r, &o);
    cr_assert_eq(status(r).role, RAFT_LEADER);
    cr_assert_eq(o.nrs, 1, "no answer after an election timeout");
    cr_assert_eq(o.rs[0].ctx, 21);
    cr_assert_eq(o.rs[0].index, 0);
    raft_free(r);
}

Test(read, follower_reads_through_the_leader)
{
    struct out o = {0};
    struct raft *f = mk(2, 3, NULL, 0, 1);
    cr_assert_eq(raft_read_index(f, 5), RAFT_ENOTLEADER, "no leader known");
    cr_assert_eq(raft_read_index(f, 0), RAFT_EINVAL);
    step(f, (struct raft_msg){.type = RAFT_MSG_APPEND, .from = 1, .to = 2, .term = 2});
    drain(f, &o);
    out_clear(&o);
    cr_assert_eq(raft_read_index(f, 5), 0);
    drain(f, &o);
    const struct raft_msg *req = find(&o, RAFT_MSG_READ_INDEX, 1);
    cr_assert(req && req->ctx == 5 && req->term == 2);
    cr_assert_eq(o.nrs, 0);

    /* The leader side: the request runs a round, and the answer goes back to the follower. */
    struct out lo = {0};
    struct raft *l = leader(3, NULL, 0, 1, true, &lo);
    struct raft_msg fwd = *req;
    step(l, fwd);
    drain(l, &lo);
    const struct raft_msg *h = find(&lo, RAFT_MSG_APPEND, 3);
    cr_assert(h && h->ctx > 0);
    cr_assert_null(find(&lo, RAFT_MSG_READ_INDEX_RESP, 0), "answered before the round");
    uint64_t round = h->ctx;
    out_clear(&lo);
    step(l, ack(3, 2, 1, round));
    drain(l, &lo);
    const struct raft_msg *resp = find(&lo, RAFT_MSG_READ_INDEX_RESP, 2);
    cr_assert(resp && resp->ctx == 5 && resp->read_index == 1);
    cr_assert_eq(lo.nrs, 0, "a follower's read is not released on the leader");

    /* Back on the follower: released once; a duplicated answer is ignored. */
    out_clear(&o);
    struct raft_msg r1 = *resp;
    step(f, r1);
    step(f, r1);
    drain(f, &o);
    cr_assert_eq(o.nrs, 1);
    cr_assert_eq(o.rs[0].ctx, 5);
    cr_assert_eq(o.rs[0].index, 1);
    raft_free(l);
    raft_free(f);
}

Test(read, follower_fails_its_reads_when_its_leader_changes)
{
    struct out o = {0};
    struct raft *f = mk(2, 3, NULL, 0, 1);
    step(f, (struct raft_msg){.type = RAFT_MSG_APPEND, .from = 1, .to = 2, .term = 2});
    cr_assert_eq(raft_read_index(f, 8), 0);
    drain(f, &o);
    out_clear(&o);
    /* Node 3 leads term 3: the read sent to node 1 fails at once. */
    step(f, (struct raft_msg){.type = RAFT_MSG_APPEND, .from = 3, .to = 2, .term = 3});
    drain(f, &o);
    cr_assert_eq(o.nrs, 1);
    cr_assert_eq(o.rs[0].ctx, 8);
    cr_assert_eq(o.rs[0].index, 0);
    /* The old leader's late answer is not believed. */
    out_clear(&o);
    struct raft_msg late = {.type = RAFT_MSG_READ_INDEX_RESP, .from = 1, .to = 2, .term = 2,
                            .ctx = 8, .read_index = 1};
    raft_step(f, &late);
    late.term = 3; /* even if it were in the new term, it is not from our leader */
    raft_step(f, &late);
    drain(f, &o);
    cr_assert_eq(o.nrs, 0);
    raft_free(f);
}

Test(read, non_leader_refuses_forwarded_reads_and_bound_is_enforced)
{
    struct out o = {0};
    struct raft *f = mk(2, 3, NULL, 0, 1);
    step(f, (struct raft_msg){.type = RAFT_MSG_READ_INDEX, .from = 3, .to = 2, .term = 1,
                              .ctx = 4});
    drain(f, &o);
    const struct raft_msg *resp = find(&o, RAFT_MSG_READ_INDEX_RESP, 3);
    cr_assert(resp && resp->ctx == 4 && resp->read_index == 0);
    struct raft_msg bad = {.type = RAFT_MSG_READ_INDEX, .from = 3, .to = 2, .term = 1};
    cr_assert_eq(raft_step(f, &bad), RAFT_EINVAL, "ctx 0 accepted");
    bad.type = 8;
    bad.ctx = 1;
    cr_assert_eq(raft_step(f, &bad), RAFT_EINVAL, "reserved type 8 accepted");
    raft_free(f);

    g_max_read = 2;
    struct raft *l = leader(3, NULL, 0, 1, true, &o);
    g_max_read = 0;
    cr_assert_eq(raft_read_index(l, 1), 0);
    cr_assert_eq(raft_read_index(l, 2), 0);
    cr_assert_eq(raft_read_index(l, 3), RAFT_EBUSY);
    out_clear(&o);
    step(l, (struct raft_msg){.type = RAFT_MSG_READ_INDEX, .from = 2, .to = 1, .term = 2,
                              .ctx = 9});
    drain(l, &o);
    resp = find(&o, RAFT_MSG_READ_INDEX_RESP, 2);
    cr_assert(resp && resp->ctx == 9 && resp->read_index == 0, "over the bound: answered failed");
    raft_free(l);
}
