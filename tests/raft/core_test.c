/* Focused unit tests of the Raft core (raft/core/raft.h), driving one core by hand: vote rules, the
 * up-to-date check, votedFor reset, durability ordering, fast-backup hints, the commit rule for
 * old-term entries, flow control bounds, pre-vote, check-quorum, and rejection of bad input. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "raft/core/raft.h"

#define MAXM 512

struct out {
    struct raft_msg m[MAXM];
    int n;
    uint64_t seq; /* last persist_seq seen */
    struct raft_hard_state hs;
    bool hs_changed;
    uint64_t truncate_from;
    uint64_t committed_to;
};

static void out_clear(struct out *o)
{
    for (int i = 0; i < o->n; i++) {
        for (uint32_t k = 0; k < o->m[i].n_entries; k++)
            free(o->m[i].entries[k].data);
        free(o->m[i].entries);
    }
    memset(o, 0, sizeof(*o));
}

/* Take every ready; copy messages; optionally report each write persisted at once. */
static void drain(struct raft *r, bool persist, struct out *o)
{
    while (raft_has_ready(r)) {
        struct raft_ready rd;
        cr_assert_eq(raft_ready(r, &rd), 0);
        for (size_t i = 0; i < rd.n_msgs; i++) {
            cr_assert(o->n < MAXM);
            struct raft_msg *m = &o->m[o->n++];
            *m = rd.msgs[i];
            m->entries = NULL;
            if (rd.msgs[i].n_entries) {
                m->entries = calloc(rd.msgs[i].n_entries, sizeof(*m->entries));
                for (uint32_t k = 0; k < rd.msgs[i].n_entries; k++) {
                    m->entries[k] = rd.msgs[i].entries[k];
                    if (m->entries[k].len) {
                        m->entries[k].data = malloc(m->entries[k].len);
                        memcpy(m->entries[k].data, rd.msgs[i].entries[k].data,
                               m->entries[k].len);
                    }
                }
            }
        }
        if (rd.persist_seq) {
            o->seq = rd.persist_seq;
            o->hs = rd.hs;
            o->hs_changed |= rd.hs_changed;
            if (rd.truncate_from)
                o->truncate_from = rd.truncate_from;
        }
        if (rd.n_committed)
            o->committed_to = rd.committed[rd.n_committed - 1].index;
        uint64_t seq = rd.persist_seq;
        raft_advance(r, &rd);
        if (persist && seq)
            cr_assert_eq(raft_persisted(r, seq), 0);
    }
}

static int count(const struct out *o, int type, uint64_t to)
{
    int c = 0;
    for (int i = 0; i < o->n; i++)
        c += o->m[i].type == type && (!to || o->m[i].to == to);
    return c;
}

static const struct raft_msg *find(const struct out *o, int type, uint64_t to)
{
    for (int i = 0; i < o->n; i++)
        if (o->m[i].type == type && (!to || o->m[i].to == to))
            return &o->m[i];
    return NULL;
}


/* A core with the given log terms (entry i+1 has terms[i]) and hard state. */
static struct raft *mk(uint64_t id, size_t n_peers, const uint64_t *terms, size_t n_terms,
                       uint64_t term, uint64_t vote, void (*tweak)(struct raft_config *))
{
    static const uint64_t peers[] = {1, 2, 3, 4, 5};
    struct raft_config c;
    raft_config_default(&c);
    c.id = id;
    c.peers = peers;
    c.n_peers = n_peers;
    c.seed = 42;
    if (tweak)
        tweak(&c);
    struct raft_entry e[128];
    cr_assert(n_terms <= 128);
    for (size_t i = 0; i < n_terms; i++)
        e[i] = (struct raft_entry){.index = i + 1, .term = terms[i], .type = RAFT_ENTRY_NORMAL};
    struct raft_restore rs = {.hs = {term, vote}, .entries = e, .n_entries = n_terms};
    struct raft *r = NULL;
    cr_assert_eq(raft_new(&c, &rs, &r), 0);
    return r;
}

static struct raft_status status(struct raft *r)
{
    struct raft_status st;
    raft_status_get(r, &st);
    return st;
}

static struct raft_msg vote(uint64_t from, uint64_t to, uint64_t term, uint64_t li, uint64_t lt)
{
    return (struct raft_msg){.type = RAFT_MSG_VOTE, .from = from, .to = to, .term = term,
                             .last_log_index = li, .last_log_term = lt};
}

/* Make node 1 the leader of a 3-node cluster in term `term`+1 starting from `terms`. */
static struct raft *mk_leader(const uint64_t *terms, size_t n, uint64_t term,
                              void (*tweak)(struct raft_config *), struct out *o)
{
    struct raft *r = mk(1, 3, terms, n, term, 0, tweak);
    cr_assert_eq(raft_campaign(r), 0);
    drain(r, true, o);
    struct raft_msg g = {.type = RAFT_MSG_VOTE_RESP, .from = 2, .to = 1, .term = term + 1,
                         .granted = true};
    cr_assert_eq(raft_step(r, &g), 0);
    cr_assert_eq(status(r).role, RAFT_LEADER);
    out_clear(o);
    return r;
}

Test(vote, grants_once_per_term_and_resets_on_new_term)
{
    struct raft *r = mk(1, 3, NULL, 0, 1, 0, NULL);
    struct out o = {0};
    struct raft_msg v = vote(2, 1, 2, 0, 0);
    cr_assert_eq(raft_step(r, &v), 0);
    drain(r, true, &o);
    const struct raft_msg *resp = find(&o, RAFT_MSG_VOTE_RESP, 2);
    cr_assert(resp && resp->granted && resp->term == 2);
    cr_assert_eq(status(r).voted_for, 2);
    out_clear(&o);

    /* Same term, another candidate: refused (one vote per term). */
    v = vote(3, 1, 2, 0, 0);
    cr_assert_eq(raft_step(r, &v), 0);
    drain(r, true, &o);
    resp = find(&o, RAFT_MSG_VOTE_RESP, 3);
    cr_assert(resp && !resp->granted);
    out_clear(&o);

    /* A higher term resets votedFor: node 3 now gets the vote. */
    v = vote(3, 1, 3, 0, 0);
    cr_assert_eq(raft_step(r, &v), 0);
    drain(r, true, &o);
    resp = find(&o, RAFT_MSG_VOTE_RESP, 3);
    cr_assert(resp && resp->granted && resp->term == 3);
    cr_assert_eq(status(r).term, 3);
    cr_assert_eq(status(r).voted_for, 3);
    cr_assert(o.hs_changed && o.hs.term == 3 && o.hs.voted_for == 3);
    out_clear(&o);
    raft_free(r);
}

Test(vote, up_to_date_check)
{
    static const uint64_t terms[] = {1, 1, 2, 2}; /* last = 4/2 */
    struct {
        uint64_t li, lt;
        bool grant;
    } cases[] = {
        {10, 1, false}, /* longer but older last term */
        {3, 2, false},  /* same last term, shorter */
        {4, 2, true},   /* identical */
        {5, 2, true},   /* same term, longer */
        {1, 3, true},   /* newer last term wins even if shorter */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct raft *r = mk(1, 3, terms, 4, 2, 0, NULL);
        struct out o = {0};
        struct raft_msg v = vote(2, 1, 3, cases[i].li, cases[i].lt);
        cr_assert_eq(raft_step(r, &v), 0);
        drain(r, true, &o);
        const struct raft_msg *resp = find(&o, RAFT_MSG_VOTE_RESP, 2);
        cr_assert(resp, "case %zu: no response", i);
        cr_assert_eq(resp->granted, cases[i].grant, "case %zu", i);
        cr_assert_eq(status(r).term, 3, "case %zu: higher term adopted even when refusing", i);
        out_clear(&o);
        raft_free(r);
    }
}

Test(durability, vote_grant_waits_for_persisted_hard_state)
{
    struct raft *r = mk(1, 3, NULL, 0, 1, 0, NULL);
    struct out o = {0};
    struct raft_msg v = vote(2, 1, 2, 0, 0);
    cr_assert_eq(raft_step(r, &v), 0);
    drain(r, false, &o); /* storage has NOT confirmed */
    cr_assert_eq(count(&o, RAFT_MSG_VOTE_RESP, 0), 0, "grant left before votedFor was durable");
    cr_assert(o.hs_changed && o.hs.voted_for == 2 && o.hs.term == 2);
    uint64_t seq = o.seq;
    cr_assert(seq > 0);
    out_clear(&o);
    cr_assert_eq(raft_persisted(r, seq), 0);
    drain(r, false, &o);
    const struct raft_msg *resp = find(&o, RAFT_MSG_VOTE_RESP, 2);
    cr_assert(resp && resp->granted);
    out_clear(&o);
    cr_assert_eq(raft_persisted(r, seq + 5), RAFT_ESTATE, "unknown seq must be refused");
    raft_free(r);
}

Test(durability, append_ack_waits_for_persisted_entries)
{
    struct raft *r = mk(1, 3, NULL, 0, 1, 0, NULL);
    struct out o = {0};
    uint8_t payload[3] = {1, 2, 3};
    struct raft_entry e[2] = {{.index = 1, .term = 1, .len = 3, .data = payload},
                              {.index = 2, .term = 1, .len = 3, .data = payload}};
    struct raft_msg a = {.type = RAFT_MSG_APPEND, .from = 2, .to = 1, .term = 1,
                         .n_entries = 2, .entries = e, .commit = 0};
    cr_assert_eq(raft_step(r, &a), 0);
    drain(r, false, &o);
    cr_assert_eq(count(&o, RAFT_MSG_APPEND_RESP, 0), 0, "ack left before entries were durable");
    cr_assert_eq(status(r).persisted_index, 0);
    uint64_t seq = o.seq;
    out_clear(&o);
    cr_assert_eq(raft_persisted(r, seq), 0);
    drain(r, false, &o);
    const struct raft_msg *resp = find(&o, RAFT_MSG_APPEND_RESP, 2);
    cr_assert(resp && !resp->reject && resp->match_index == 2);
    cr_assert_eq(status(r).persisted_index, 2);
    out_clear(&o);
    raft_free(r);
}

Test(durability, candidate_counts_own_vote_only_when_persisted)
{
    struct raft *r = mk(1, 3, NULL, 0, 1, 0, NULL);
    struct out o = {0};
    cr_assert_eq(raft_campaign(r), 0);
    drain(r, false, &o);
    uint64_t seq = o.seq;
    cr_assert_eq(count(&o, RAFT_MSG_VOTE, 0), 2);
    out_clear(&o);
    struct raft_msg g = {.type = RAFT_MSG_VOTE_RESP, .from = 2, .to = 1, .term = 2,
                         .granted = true};
    cr_assert_eq(raft_step(r, &g), 0);
    cr_assert_eq(status(r).role, RAFT_CANDIDATE, "won with a vote for itself not yet durable");
    cr_assert_eq(raft_persisted(r, seq), 0);
    cr_assert_eq(status(r).role, RAFT_LEADER);
    raft_free(r);
}

Test(durability, leader_counts_itself_only_when_persisted)
{
    struct out o = {0};
    struct raft *r = mk(1, 3, NULL, 0, 1, 0, NULL);
    cr_assert_eq(raft_campaign(r), 0);
    drain(r, true, &o);
    struct raft_msg g = {.type = RAFT_MSG_VOTE_RESP, .from = 2, .to = 1, .term = 2,
                         .granted = true};
    cr_assert_eq(raft_step(r, &g), 0);
    out_clear(&o);
    drain(r, false, &o); /* the no-op goes to storage and to both followers at once */
    cr_assert_eq(count(&o, RAFT_MSG_APPEND, 0), 2, "replication must not wait for own fsync");
    uint64_t seq = o.seq;
    out_clear(&o);
    struct raft_msg ack = {.type = RAFT_MSG_APPEND_RESP, .from = 2, .to = 1, .term = 2,
                           .match_index = 1};
    cr_assert_eq(raft_step(r, &ack), 0);
    cr_assert_eq(status(r).commit_index, 0, "committed with the leader's copy not durable");
    cr_assert_eq(raft_persisted(r, seq), 0);
    cr_assert_eq(status(r).commit_index, 1);
    raft_free(r);
}

Test(append, fast_backup_hint)
{
    static const uint64_t terms[] = {1, 1, 1, 2, 2, 2, 2};
    struct raft *r = mk(1, 3, terms, 7, 3, 0, NULL);
    struct out o = {0};
    /* Mismatch at 6 (we hold term 2 there): hint = term 2, first index of term 2 = 4. */
    struct raft_msg a = {.type = RAFT_MSG_APPEND, .from = 2, .to = 1, .term = 3,
                         .prev_index = 6, .prev_term = 3};
    cr_assert_eq(raft_step(r, &a), 0);
    drain(r, true, &o);
    const struct raft_msg *resp = find(&o, RAFT_MSG_APPEND_RESP, 2);
    cr_assert(resp && resp->reject);
    cr_assert_eq(resp->conflict_term, 2);
    cr_assert_eq(resp->conflict_index, 4);
    cr_assert_eq(resp->reject_index, 6);
    out_clear(&o);
    /* prev beyond our log: hint = no term, our last index + 1. */
    a.prev_index = 20;
    cr_assert_eq(raft_step(r, &a), 0);
    drain(r, true, &o);
    resp = find(&o, RAFT_MSG_APPEND_RESP, 2);
    cr_assert(resp && resp->reject && resp->conflict_term == 0 && resp->conflict_index == 8);
    out_clear(&o);
    raft_free(r);
}

Test(append, conflicting_suffix_truncated_and_reported_to_storage)
{
    static const uint64_t terms[] = {1, 1, 2, 2};
    struct raft *r = mk(1, 3, terms, 4, 3, 0, NULL);
    struct out o = {0};
    struct raft_entry e[2] = {{.index = 3, .term = 3}, {.index = 4, .term = 3}};
    struct raft_msg a = {.type = RAFT_MSG_APPEND, .from = 2, .to = 1, .term = 3,
                         .prev_index = 2, .prev_term = 1, .n_entries = 2, .entries = e};
    cr_assert_eq(raft_step(r, &a), 0);
    drain(r, true, &o);
    cr_assert_eq(o.truncate_from, 3);
    cr_assert_eq(raft_log_get(r, 3)->term, 3);
    cr_assert_eq(raft_log_get(r, 4)->term, 3);
    const struct raft_msg *resp = find(&o, RAFT_MSG_APPEND_RESP, 2);
    cr_assert(resp && !resp->reject && resp->match_index == 4);
    out_clear(&o);
    raft_free(r);
}

Test(append, leader_uses_hint_to_skip_a_whole_term)
{
    /* Leader log: 1,1,1 then 3,3,3 (index 4..6), leader of term 4 with no-op at 7. */
    static const uint64_t terms[] = {1, 1, 1, 3, 3, 3};
    struct out o = {0};
    struct raft *r = mk_leader(terms, 6, 3, NULL, &o);
    drain(r, true, &o);
    const struct raft_msg *probe = find(&o, RAFT_MSG_APPEND, 3);
    cr_assert(probe && probe->prev_index == 6);
    out_clear(&o);
    /* Follower 3 held term 2 from index 4 on: leader has no term 2, so next = 4 (one trip). */
    struct raft_msg rej = {.type = RAFT_MSG_APPEND_RESP, .from = 3, .to = 1, .term = 4,
                           .reject = true, .reject_index = 6, .conflict_term = 2,
                           .conflict_index = 4};
    cr_assert_eq(raft_step(r, &rej), 0);
    struct raft_progress_info pi;
    cr_assert_eq(raft_progress_get(r, 3, &pi), 0);
    cr_assert_eq(pi.next, 4);
    cr_assert_eq(pi.state, RAFT_PROGRESS_PROBE);
    drain(r, true, &o);
    probe = find(&o, RAFT_MSG_APPEND, 3);
    cr_assert(probe && probe->prev_index == 3 && probe->prev_term == 1 && probe->n_entries == 4);
    out_clear(&o);
    /* Follower 2 shares term 1 but diverges: hint term 1 -> resume after leader's last term-1
     * entry (index 3). */
    rej.from = 2;
    rej.conflict_term = 1;
    rej.conflict_index = 1;
    cr_assert_eq(raft_step(r, &rej), 0);
    cr_assert_eq(raft_progress_get(r, 2, &pi), 0);
    cr_assert_eq(pi.next, 4);
    raft_free(r);
}

Test(commit, old_term_entries_commit_only_with_current_term_entry)
{
    /* Figure 8: index 2 is from term 2; leader of term 3 must not commit it by counting. */
    static const uint64_t terms[] = {1, 2};
    struct out o = {0};
    struct raft *r = mk_leader(terms, 2, 2, NULL, &o);
    cr_assert_eq(status(r).term, 3);
    drain(r, true, &o); /* no-op at 3 persisted on the leader */
    out_clear(&o);
    struct raft_msg ack = {.type = RAFT_MSG_APPEND_RESP, .from = 2, .to = 1, .term = 3,
                           .match_index = 2};
    cr_assert_eq(raft_step(r, &ack), 0);
    cr_assert_eq(status(r).commit_index, 0, "an old-term entry was committed by counting");
    ack.match_index = 3;
    cr_assert_eq(raft_step(r, &ack), 0);
    cr_assert_eq(status(r).commit_index, 3);
    drain(r, true, &o);
    cr_assert_eq(o.committed_to, 3);
    out_clear(&o);
    raft_free(r);
}

Test(step, higher_term_in_any_message_steps_down)
{
    struct out o = {0};
    struct raft *r = mk_leader(NULL, 0, 1, NULL, &o);
    struct raft_msg m = {.type = RAFT_MSG_APPEND_RESP, .from = 3, .to = 1, .term = 9,
                         .reject = true, .reject_index = 0, .conflict_index = 1};
    cr_assert_eq(raft_step(r, &m), 0);
    cr_assert_eq(status(r).role, RAFT_FOLLOWER);
    cr_assert_eq(status(r).term, 9);
    cr_assert_eq(status(r).voted_for, 0);
    raft_free(r);
}

Test(step, stale_leader_told_newer_term)
{
    struct raft *r = mk(1, 3, NULL, 0, 5, 0, NULL);
    struct out o = {0};
    struct raft_msg a = {.type = RAFT_MSG_APPEND, .from = 2, .to = 1, .term = 3};
    cr_assert_eq(raft_step(r, &a), 0);
    drain(r, true, &o);
    const struct raft_msg *resp = find(&o, RAFT_MSG_APPEND_RESP, 2);
    cr_assert(resp && resp->reject && resp->term == 5);
    out_clear(&o);
    raft_free(r);
}

Test(propose, non_leader_refuses_with_hint)
{
    struct raft *r = mk(1, 3, NULL, 0, 1, 0, NULL);
    struct out o = {0};
    struct raft_msg a = {.type = RAFT_MSG_APPEND, .from = 3, .to = 1, .term = 1};
    cr_assert_eq(raft_step(r, &a), 0);
    drain(r, true, &o);
    out_clear(&o);
    uint64_t hint = 0, v = 7;
    cr_assert_eq(raft_propose(r, RAFT_ENTRY_NORMAL, &v, sizeof(v), NULL, NULL, &hint),
                 RAFT_ENOTLEADER);
    cr_assert_eq(hint, 3);
    cr_assert_eq(status(r).last_index, 0);
    raft_free(r);
}

static void tiny_window(struct raft_config *c)
{
    c->max_append_entries = 1;
    c->max_inflight_msgs = 3;
}

Test(flow, window_bounded_by_count_and_batches_by_entries)
{
    struct out o = {0};
    struct raft *r = mk_leader(NULL, 0, 1, tiny_window, &o);
    drain(r, true, &o);
    out_clear(&o);
    /* Follower 2 acks the no-op: REPLICATE. */
    struct raft_msg ack = {.type = RAFT_MSG_APPEND_RESP, .from = 2, .to = 1, .term = 2,
                           .match_index = 1};
    cr_assert_eq(raft_step(r, &ack), 0);
    struct raft_progress_info pi;
    cr_assert_eq(raft_progress_get(r, 2, &pi), 0);
    cr_assert_eq(pi.state, RAFT_PROGRESS_PIPELINE);
    for (uint64_t v = 0; v < 10; v++)
        cr_assert_eq(raft_propose(r, RAFT_ENTRY_NORMAL, &v, sizeof(v), NULL, NULL, NULL), 0);
    drain(r, true, &o);
    cr_assert_eq(count(&o, RAFT_MSG_APPEND, 2), 3, "window of 3 messages not respected");
    for (int i = 0; i < o.n; i++)
        cr_assert_leq(o.m[i].n_entries, 1);
    cr_assert_eq(raft_progress_get(r, 2, &pi), 0);
    cr_assert_eq(pi.inflight_msgs, 3);
    /* Follower 3 never answered: still probing, one message at a time. */
    cr_assert_eq(count(&o, RAFT_MSG_APPEND, 3), 0);
    out_clear(&o);
    /* An ack frees the window and lets more go. */
    ack.match_index = 3;
    cr_assert_eq(raft_step(r, &ack), 0);
    drain(r, true, &o);
    cr_assert_eq(count(&o, RAFT_MSG_APPEND, 2), 2);
    out_clear(&o);
    raft_free(r);
}

static void byte_window(struct raft_config *c)
{
    c->max_append_bytes = 100;
    c->max_inflight_bytes = 250;
}

Test(flow, window_bounded_by_bytes)
{
    struct out o = {0};
    struct raft *r = mk_leader(NULL, 0, 1, byte_window, &o);
    drain(r, true, &o);
    out_clear(&o);
    struct raft_msg ack = {.type = RAFT_MSG_APPEND_RESP, .from = 2, .to = 1, .term = 2,
                           .match_index = 1};
    cr_assert_eq(raft_step(r, &ack), 0);
    uint8_t buf[60] = {0};
    for (int v = 0; v < 10; v++)
        cr_assert_eq(raft_propose(r, RAFT_ENTRY_NORMAL, buf, sizeof(buf), NULL, NULL, NULL), 0);
    drain(r, true, &o);
    size_t bytes = 0;
    for (int i = 0; i < o.n; i++) {
        if (o.m[i].type != RAFT_MSG_APPEND || o.m[i].to != 2)
            continue;
        size_t b = 0;
        for (uint32_t k = 0; k < o.m[i].n_entries; k++)
            b += o.m[i].entries[k].len;
        cr_assert_leq(b, 100, "batch over max_append_bytes");
        bytes += b;
    }
    cr_assert_gt(bytes, 0);
    cr_assert_leq(bytes, 250 + 60, "in-flight bytes far over the bound");
    struct raft_progress_info pi;
    cr_assert_eq(raft_progress_get(r, 2, &pi), 0);
    cr_assert_lt(pi.next, 12, "all entries sent despite the byte window");
    out_clear(&o);
    raft_free(r);
}

Test(flow, rejection_drops_back_to_probe)
{
    struct out o = {0};
    struct raft *r = mk_leader(NULL, 0, 1, NULL, &o);
    drain(r, true, &o);
    out_clear(&o);
    struct raft_msg ack = {.type = RAFT_MSG_APPEND_RESP, .from = 2, .to = 1, .term = 2,
                           .match_index = 1};
    cr_assert_eq(raft_step(r, &ack), 0);
    for (uint64_t v = 0; v < 5; v++)
        cr_assert_eq(raft_propose(r, RAFT_ENTRY_NORMAL, &v, sizeof(v), NULL, NULL, NULL), 0);
    drain(r, true, &o);
    out_clear(&o);
    struct raft_msg rej = {.type = RAFT_MSG_APPEND_RESP, .from = 2, .to = 1, .term = 2,
                           .reject = true, .reject_index = 3, .conflict_term = 0,
                           .conflict_index = 2};
    cr_assert_eq(raft_step(r, &rej), 0);
    struct raft_progress_info pi;
    cr_assert_eq(raft_progress_get(r, 2, &pi), 0);
    cr_assert_eq(pi.state, RAFT_PROGRESS_PROBE);
    cr_assert_eq(pi.next, 2);
    raft_free(r);
}

Test(prevote, timeout_does_not_bump_term)
{
    struct raft *r = mk(1, 3, NULL, 0, 4, 0, NULL);
    struct out o = {0};
    for (int i = 0; i < 40; i++)
        raft_tick(r);
    drain(r, true, &o);
    cr_assert_eq(status(r).term, 4, "pre-vote must not change the term");
    cr_assert_eq(status(r).role, RAFT_PRECANDIDATE);
    const struct raft_msg *pv = find(&o, RAFT_MSG_PREVOTE, 2);
    cr_assert(pv && pv->term == 5);
    cr_assert_eq(count(&o, RAFT_MSG_VOTE, 0), 0);
    out_clear(&o);
    raft_free(r);
}

Test(prevote, voter_does_not_change_term)
{
    struct raft *r = mk(1, 3, NULL, 0, 4, 0, NULL);
    struct out o = {0};
    struct raft_msg pv = {.type = RAFT_MSG_PREVOTE, .from = 2, .to = 1, .term = 5};
    cr_assert_eq(raft_step(r, &pv), 0);
    drain(r, true, &o);
    const struct raft_msg *resp = find(&o, RAFT_MSG_PREVOTE_RESP, 2);
    cr_assert(resp && resp->granted && resp->term == 5);
    cr_assert_eq(status(r).term, 4);
    cr_assert_eq(status(r).voted_for, 0);
    out_clear(&o);
    raft_free(r);
}

Test(lease, follower_with_live_leader_ignores_higher_term_vote)
{
    struct raft *r = mk(1, 3, NULL, 0, 2, 0, NULL);
    struct out o = {0};
    struct raft_msg a = {.type = RAFT_MSG_APPEND, .from = 3, .to = 1, .term = 2};
    cr_assert_eq(raft_step(r, &a), 0);
    drain(r, true, &o);
    out_clear(&o);
    struct raft_msg v = vote(2, 1, 7, 0, 0);
    cr_assert_eq(raft_step(r, &v), 0);
    drain(r, true, &o);
    cr_assert_eq(status(r).term, 2, "disruptive candidate changed the term");
    cr_assert_eq(count(&o, RAFT_MSG_VOTE_RESP, 0), 0);
    /* The same request marked as a leadership transfer is honoured. */
    v.transfer = true;
    cr_assert_eq(raft_step(r, &v), 0);
    drain(r, true, &o);
    cr_assert_eq(status(r).term, 7);
    cr_assert_eq(count(&o, RAFT_MSG_VOTE_RESP, 2), 1);
    out_clear(&o);
    raft_free(r);
}

Test(check_quorum, isolated_leader_steps_down)
{
    struct out o = {0};
    struct raft *r = mk_leader(NULL, 0, 1, NULL, &o);
    for (int i = 0; i < 25 && status(r).role == RAFT_LEADER; i++) {
        raft_tick(r);
        drain(r, true, &o);
        out_clear(&o);
    }
    cr_assert_eq(status(r).role, RAFT_FOLLOWER);
    raft_free(r);
}

Test(transfer, sends_timeout_now_once_target_is_up_to_date)
{
    struct out o = {0};
    struct raft *r = mk_leader(NULL, 0, 1, NULL, &o);
    drain(r, true, &o);
    out_clear(&o);
    cr_assert_eq(raft_transfer_leader(r, 3), 0);
    uint64_t v = 1;
    cr_assert_eq(raft_propose(r, RAFT_ENTRY_NORMAL, &v, sizeof(v), NULL, NULL, NULL), RAFT_EBUSY);
    drain(r, true, &o);
    cr_assert_eq(count(&o, RAFT_MSG_TIMEOUT_NOW, 0), 0, "target not caught up yet");
    out_clear(&o);
    struct raft_msg ack = {.type = RAFT_MSG_APPEND_RESP, .from = 3, .to = 1, .term = 2,
                           .match_index = 1};
    cr_assert_eq(raft_step(r, &ack), 0);
    drain(r, true, &o);
    cr_assert_eq(count(&o, RAFT_MSG_TIMEOUT_NOW, 3), 1);
    out_clear(&o);
    cr_assert_eq(raft_transfer_leader(r, 1), RAFT_ESTATE);
    cr_assert_eq(raft_transfer_leader(r, 9), RAFT_EUNKNOWN);
    raft_free(r);

    /* The target campaigns at once, flagged so voters skip their lease. */
    struct raft *f = mk(3, 3, NULL, 0, 2, 0, NULL);
    struct raft_msg a = {.type = RAFT_MSG_APPEND, .from = 1, .to = 3, .term = 2};
    cr_assert_eq(raft_step(f, &a), 0);
    drain(f, true, &o);
    out_clear(&o);
    struct raft_msg tn = {.type = RAFT_MSG_TIMEOUT_NOW, .from = 1, .to = 3, .term = 2};
    cr_assert_eq(raft_step(f, &tn), 0);
    drain(f, true, &o);
    cr_assert_eq(status(f).role, RAFT_CANDIDATE);
    cr_assert_eq(status(f).term, 3);
    const struct raft_msg *vr = find(&o, RAFT_MSG_VOTE, 1);
    cr_assert(vr && vr->transfer);
    out_clear(&o);
    raft_free(f);
}

Test(input, malformed_messages_are_dropped_with_an_error)
{
    static const uint64_t terms[] = {1, 1};
    struct raft *r = mk(1, 3, terms, 2, 1, 0, NULL);
    struct raft_status before = status(r);
    struct raft_entry gap[2] = {{.index = 2, .term = 1}, {.index = 4, .term = 1}};
    struct raft_entry badterm[1] = {{.index = 3, .term = 9}};
    struct raft_entry nodata[1] = {{.index = 3, .term = 1, .len = 5, .data = NULL}};
    struct raft_entry big[1] = {{.index = UINT64_MAX, .term = 1}};
    struct {
        struct raft_msg m;
        int rc;
    } cases[] = {
        {{.type = 0, .from = 2, .to = 1, .term = 1}, RAFT_EINVAL},
        {{.type = 99, .from = 2, .to = 1, .term = 1}, RAFT_EINVAL},
        {{.type = RAFT_MSG_APPEND_RESP, .from = 7, .to = 1, .term = 1}, RAFT_EUNKNOWN},
        {{.type = RAFT_MSG_VOTE_RESP, .from = 7, .to = 1, .term = 1}, RAFT_EUNKNOWN},
        {{.type = RAFT_MSG_APPEND, .from = 0, .to = 1, .term = 1}, RAFT_EUNKNOWN},
        {{.type = RAFT_MSG_VOTE, .from = 2, .to = 1, .term = 1, .conf_len = 3}, RAFT_EINVAL},
        {{.type = RAFT_MSG_APPEND, .from = 1, .to = 1, .term = 1}, RAFT_EUNKNOWN},
        {{.type = RAFT_MSG_APPEND, .from = 2, .to = 3, .term = 1}, RAFT_EUNKNOWN},
        {{.type = RAFT_MSG_APPEND, .from = 2, .to = 1, .term = 0}, RAFT_EINVAL},
        {{.type = RAFT_MSG_APPEND, .from = 2, .to = 1, .term = 1, .prev_index = 1,
          .prev_term = 1, .n_entries = 2, .entries = gap}, RAFT_EINVAL},
        {{.type = RAFT_MSG_APPEND, .from = 2, .to = 1, .term = 1, .prev_index = 2,
          .prev_term = 1, .n_entries = 1, .entries = badterm}, RAFT_EINVAL},
        {{.type = RAFT_MSG_APPEND, .from = 2, .to = 1, .term = 1, .prev_index = 2,
          .prev_term = 1, .n_entries = 1, .entries = nodata}, RAFT_EINVAL},
        {{.type = RAFT_MSG_APPEND, .from = 2, .to = 1, .term = 1, .prev_index = UINT64_MAX - 1,
          .prev_term = 1, .n_entries = 1, .entries = big}, RAFT_EINVAL},
        {{.type = RAFT_MSG_APPEND, .from = 2, .to = 1, .term = 1, .n_entries = 3,
          .entries = NULL}, RAFT_EINVAL},
        {{.type = RAFT_MSG_APPEND, .from = 2, .to = 1, .term = 1, .n_entries = 100000,
          .entries = gap}, RAFT_ETOOBIG},
        {{.type = RAFT_MSG_VOTE, .from = 2, .to = 1, .term = 1, .n_entries = 1,
          .entries = gap}, RAFT_EINVAL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        cr_assert_eq(raft_step(r, &cases[i].m), cases[i].rc, "case %zu", i);
        struct raft_status st = status(r);
        cr_assert_eq(st.term, before.term, "case %zu changed the term", i);
        cr_assert_eq(st.last_index, before.last_index, "case %zu changed the log", i);
    }
    cr_assert_eq(raft_step(r, NULL), RAFT_EINVAL);
    cr_assert_eq(raft_step(NULL, &cases[0].m), RAFT_EINVAL);
    raft_free(r);

    /* Responses that name indexes the leader never had. */
    struct out o = {0};
    struct raft *l = mk_leader(NULL, 0, 1, NULL, &o);
    struct raft_msg ack = {.type = RAFT_MSG_APPEND_RESP, .from = 2, .to = 1, .term = 2,
                           .match_index = 1000000};
    cr_assert_eq(raft_step(l, &ack), RAFT_EINVAL);
    struct raft_msg rej = {.type = RAFT_MSG_APPEND_RESP, .from = 2, .to = 1, .term = 2,
                           .reject = true, .reject_index = UINT64_MAX, .conflict_index = 1};
    cr_assert_eq(raft_step(l, &rej), RAFT_EINVAL);
    cr_assert_eq(status(l).commit_index, 0);
    raft_free(l);
}

Test(config, bad_configuration_refused)
{
    struct raft_config c;
    raft_config_default(&c);
    struct raft *r = NULL;
    uint64_t peers[] = {1, 2, 2};
    c.id = 1;
    c.peers = peers;
    c.n_peers = 3;
    cr_assert_eq(raft_new(&c, NULL, &r), RAFT_EINVAL, "duplicate peer");
    peers[2] = 3;
    c.id = 1;
    c.heartbeat_tick = c.election_tick;
    cr_assert_eq(raft_new(&c, NULL, &r), RAFT_EINVAL, "heartbeat >= election timeout");
    raft_config_default(&c);
    c.id = 1;
    c.peers = peers;
    c.n_peers = 3;
    struct raft_entry e[2] = {{.index = 1, .term = 1}, {.index = 3, .term = 1}};
    struct raft_restore rs = {.hs = {1, 0}, .entries = e, .n_entries = 2};
    cr_assert_eq(raft_new(&c, &rs, &r), RAFT_EINVAL, "non-contiguous stored log");
    rs.n_entries = 1;
    cr_assert_eq(raft_new(&c, &rs, &r), 0);
    raft_free(r);
}

Test(ready, messages_grouped_by_destination)
{
    struct out o = {0};
    struct raft *r = mk_leader(NULL, 0, 1, NULL, &o);
    raft_tick(r);
    raft_tick(r);
    struct raft_ready rd;
    cr_assert_eq(raft_ready(r, &rd), 0);
    for (size_t i = 1; i < rd.n_msgs; i++)
        cr_assert_leq(rd.msgs[i - 1].to, rd.msgs[i].to);
    const struct raft_msg *first;
    size_t n2 = raft_ready_msgs_to(&rd, 2, &first);
    cr_assert_gt(n2, 0);
    for (size_t i = 0; i < n2; i++)
        cr_assert_eq(first[i].to, 2);
    size_t n3 = raft_ready_msgs_to(&rd, 3, &first);
    cr_assert_eq(n2 + n3, rd.n_msgs);
    cr_assert_eq(raft_ready_msgs_to(&rd, 9, &first), 0);
    cr_assert_null(first);
    raft_advance(r, &rd);
    raft_free(r);
}

Test(single, one_node_cluster_commits_alone)
{
    static const uint64_t one[] = {1};
    struct raft_config c;
    raft_config_default(&c);
    c.id = 1;
    c.peers = one;
    c.n_peers = 1;
    struct raft *r = NULL;
    cr_assert_eq(raft_new(&c, NULL, &r), 0);
    struct out o = {0};
    for (int i = 0; i < 30 && status(r).role != RAFT_LEADER; i++) {
        raft_tick(r);
        drain(r, true, &o);
    }
    cr_assert_eq(status(r).role, RAFT_LEADER);
    uint64_t v = 5, idx;
    cr_assert_eq(raft_propose(r, RAFT_ENTRY_NORMAL, &v, sizeof(v), &idx, NULL, NULL), 0);
    drain(r, true, &o);
    cr_assert_eq(status(r).commit_index, idx);
    cr_assert_eq(o.committed_to, idx);
    out_clear(&o);
    raft_free(r);
}
