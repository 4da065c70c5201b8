/* raft_conf.c: cluster configuration - membership changes by joint consensus (Raft paper §6,
 * thesis §4.3) and learners (non-voting members, thesis §4.2.1).
 *
 * A configuration takes effect when its entry is appended (raft.h explains the choice); so the
 * configuration in force is always the newest one in the log, or the snapshot's when the log
 * after the snapshot holds none. The member list (peers[], with progress[] and votes[] parallel)
 * is rebuilt whenever that changes; quorums are counted per voter set: while joint, a decision
 * needs a majority of C_new and a majority of C_old.
 *
 * The leader drives a change: raft_propose_conf appends C_old,new; once that commits the leader
 * appends C_new (raft_conf_on_commit); once C_new commits, a leader that is not in it steps down
 * (§6: it "manages" the cluster until then without counting itself in C_new's majority). Only one
 * change at a time: a new one is refused while the newest configuration entry is uncommitted or
 * joint. A new leader that inherits a committed joint configuration finishes it the same way. */
#include <assert.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "raft/core/raft_internal.h"

enum { CONF_VERSION = 1, CONF_HEAD = 8 };

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static bool in_set(const uint64_t *s, uint32_t n, uint64_t id)
{
    for (uint32_t i = 0; i < n; i++)
        if (s[i] == id)
            return true;
    return false;
}

bool raft_conf_is_voter(const struct raft_conf *c, uint64_t id)
{
    return in_set(c->voters, c->n_voters, id) || in_set(c->old, c->n_old, id);
}

bool raft_conf_is_member(const struct raft_conf *c, uint64_t id)
{
    return raft_conf_is_voter(c, id) || in_set(c->learners, c->n_learners, id);
}

static bool sorted_unique(const uint64_t *s, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        if (!s[i] || (i && s[i] <= s[i - 1]))
            return false;
    return true;
}

/* Every id of c, sorted and unique, into out (RAFT_MAX_NODES slots); -1 if more. */
static int conf_members(const struct raft_conf *c, uint64_t self, uint64_t *out)
{
    uint64_t all[3 * RAFT_MAX_NODES + 1];
    size_t n = 0;
    memcpy(all + n, c->voters, c->n_voters * sizeof(uint64_t));
    n += c->n_voters;
    memcpy(all + n, c->old, c->n_old * sizeof(uint64_t));
    n += c->n_old;
    memcpy(all + n, c->learners, c->n_learners * sizeof(uint64_t));
    n += c->n_learners;
    if (self)
        all[n++] = self;
    qsort(all, n, sizeof(uint64_t), cmp_u64);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (k && out[k - 1] == all[i])
            continue;
        if (k == RAFT_MAX_NODES)
            return -1;
        out[k++] = all[i];
    }
    return (int)k;
}

/* Canonical (sorted) and consistent: voters nonempty, learners voting in neither set, and at
 * most RAFT_MAX_NODES members in all. */
static bool conf_valid(const struct raft_conf *c)
{
    if (!c->n_voters || c->n_voters > RAFT_MAX_NODES || c->n_old > RAFT_MAX_NODES ||
        c->n_learners > RAFT_MAX_NODES)
        return false;
    if (!sorted_unique(c->voters, c->n_voters) || !sorted_unique(c->old, c->n_old) ||
        !sorted_unique(c->learners, c->n_learners))
        return false;
    for (uint32_t i = 0; i < c->n_learners; i++)
        if (raft_conf_is_voter(c, c->learners[i]))
            return false;
    uint64_t m[RAFT_MAX_NODES];
    return conf_members(c, 0, m) >= 0;
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* Layout: version, n_voters, n_old, n_learners (one byte each), ctx_len (u32 LE), then the ids
 * (u64 LE: voters, old, learners), then ctx. */
int raft_conf_encode(const struct raft_conf *c, const void *ctx, uint32_t ctx_len, uint8_t **out,
                     uint32_t *len)
{
    if (!c || !out || !len || (ctx_len && !ctx) || !conf_valid(c))
        return RAFT_EINVAL;
    size_t ids = (size_t)c->n_voters + c->n_old + c->n_learners;
    size_t total = CONF_HEAD + 8 * ids + ctx_len;
    if (total > UINT32_MAX)
        return RAFT_ETOOBIG;
    uint8_t *p = malloc(total);
    if (!p)
        return RAFT_ENOMEM;
    p[0] = CONF_VERSION;
    p[1] = (uint8_t)c->n_voters;
    p[2] = (uint8_t)c->n_old;
    p[3] = (uint8_t)c->n_learners;
    for (int i = 0; i < 4; i++)
        p[4 + i] = (uint8_t)(ctx_len >> (8 * i));
    uint8_t *q = p + CONF_HEAD;
    for (uint32_t i = 0; i < c->n_voters; i++, q += 8)
        put64(q, c->voters[i]);
    for (uint32_t i = 0; i < c->n_old; i++, q += 8)
        put64(q, c->old[i]);
    for (uint32_t i = 0; i < c->n_learners; i++, q += 8)
        put64(q, c->learners[i]);
    if (ctx_len)
        memcpy(q, ctx, ctx_len);
    *out = p;
    *len = (uint32_t)total;
    return 0;
}

int raft_conf_decode(const uint8_t *p, size_t len, struct raft_conf *out, const uint8_t **ctx,
                     uint32_t *ctx_len)
{
    if (!p || !out || len < CONF_HEAD || p[0] != CONF_VERSION)
        return RAFT_EINVAL;
    struct raft_conf c = {.n_voters = p[1], .n_old = p[2], .n_learners = p[3]};
    if (c.n_voters > RAFT_MAX_NODES || c.n_old > RAFT_MAX_NODES || c.n_learners > RAFT_MAX_NODES)
        return RAFT_EINVAL;
    uint32_t cl = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 |
                  (uint32_t)p[7] << 24;
    size_t ids = (size_t)c.n_voters + c.n_old + c.n_learners;
    if (len != CONF_HEAD + 8 * ids + (size_t)cl)
        return RAFT_EINVAL;
    const uint8_t *q = p + CONF_HEAD;
    for (uint32_t i = 0; i < c.n_voters; i++, q += 8)
        c.voters[i] = get64(q);
    for (uint32_t i = 0; i < c.n_old; i++, q += 8)
        c.old[i] = get64(q);
    for (uint32_t i = 0; i < c.n_learners; i++, q += 8)
        c.learners[i] = get64(q);
    if (!conf_valid(&c))
        return RAFT_EINVAL;
    *out = c;
    if (ctx)
        *ctx = cl ? q : NULL;
    if (ctx_len)
        *ctx_len = cl;
    return 0;
}

/* ---- the configuration in force and the member list ---- */

static int rec_set(struct raft_conf_rec *rec, const struct raft_conf *c, const uint8_t *blob,
                   uint32_t len)
{
    uint8_t *b = NULL;
    if (len) {
        b = malloc(len);
        if (!b)
            return RAFT_ENOMEM;
        memcpy(b, blob, len);
    }
    free(rec->blob);
    rec->c = *c;
    rec->blob = b;
    rec->len = len;
    return 0;
}

/* Rebuild peers[], progress[] and votes[] for the members of r->conf (and self), keeping the
 * progress of members that stay. New members of a leader probe from after its last entry. */
static int rebuild_members(struct raft *r)
{
    uint64_t ids[RAFT_MAX_NODES];
    int k = conf_members(&r->conf.c, r->id, ids);
    if (k < 0)
        return RAFT_EINVAL;
    size_t n = (size_t)k;
    uint64_t *peers = malloc(n * sizeof(*peers));
    struct progress *prog = calloc(n, sizeof(*prog));
    int8_t *votes = calloc(n, 1);
    if (!peers || !prog || !votes)
        goto nomem;
    memcpy(peers, ids, n * sizeof(*peers));
    uint64_t last = raft_log_last_index(&r->log);
    size_t made = 0;
    for (size_t i = 0; i < n; i++, made++) {
        size_t j = raft_peer_index(r, ids[i]);
        if (j < r->n_peers) {
            prog[i] = r->progress[j];
            votes[i] = r->votes[j];
            r->progress[j].id = 0; /* moved */
            continue;
        }
        if (progress_init(&prog[i], ids[i], r->cfg.max_inflight_msgs, r->cfg.max_inflight_bytes))
            goto nomem_undo;
        if (r->role == RAFT_LEADER)
            progress_reset_leader(&prog[i], last, ids[i] == r->id);
    }
    for (size_t j = 0; j < r->n_peers; j++)
        if (r->progress[j].id)
            progress_free(&r->progress[j]);
    free(r->peers);
    free(r->progress);
    free(r->votes);
    r->peers = peers;
    r->progress = prog;
    r->votes = votes;
    r->n_peers = n;
    return 0;
nomem_undo:
    /* Put moved progress back, free the new ones. */
    for (size_t i = 0; i < made; i++) {
        size_t j = raft_peer_index(r, ids[i]);
        if (j < r->n_peers)
            r->progress[j] = prog[i];
        else
            progress_free(&prog[i]);
    }
nomem:
    free(peers);
    free(prog);
    free(votes);
    return RAFT_ENOMEM;
}

int raft_conf_adopt(struct raft *r, const struct raft_conf *c, const uint8_t *blob, uint32_t len,
                    uint64_t index)
{
    struct raft_conf_rec old = {0};
    if (rec_set(&old, &r->conf.c, r->conf.blob, r->conf.len))
        return RAFT_ENOMEM;
    int rc = rec_set(&r->conf, c, blob, len);
    if (!rc)
        rc = rebuild_members(r);
    if (rc) {
        rec_set(&r->conf, &old.c, old.blob, old.len); /* same size or smaller: cannot fail */
        free(old.blob);
        return rc;
    }
    free(old.blob);
    uint64_t prev = r->conf_index;
    r->conf_index = index;
    r->conf_gen++;
    if (prev != index)
        RAFT_TRACE(r, "configuration at %" PRIu64 ": %u voters%s%s, %u learners", index,
                   c->n_voters, c->n_old ? ", joint with old voters: " : "",
                   c->n_old ? "yes" : "", c->n_learners);
    return 0;
}

/* The newest configuration entry in (lo, hi] of the log, or NULL. */
static const struct raft_entry *newest_conf_entry(const struct raft *r, uint64_t lo, uint64_t hi)
{
    if (lo < r->log.offset)
        lo = r->log.offset;
    for (uint64_t i = hi; i > lo; i--) {
        const struct raft_entry *e = raft_log_at(&r->log, i);
        if (e && e->type == RAFT_ENTRY_CONFIG)
            return e;
    }
    return NULL;
}

static int adopt_entry(struct raft *r, const struct raft_entry *e)
{
    struct raft_conf c;
    if (raft_conf_decode(e->data, e->len, &c, NULL, NULL))
        return RAFT_EINVAL; /* every entry was checked when it entered the log */
    return raft_conf_adopt(r, &c, e->data, e->len, e->index);
}

int raft_conf_on_append(struct raft *r, uint64_t from)
{
    const struct raft_entry *e = newest_conf_entry(r, from - 1, raft_log_last_index(&r->log));
    return e ? adopt_entry(r, e) : 0;
}

int raft_conf_on_truncate(struct raft *r)
{
    if (r->conf_index && r->conf_index <= raft_log_last_index(&r->log) &&
        r->conf_index > r->log.offset)
        return 0; /* the entry carrying it is still there */
    const struct raft_entry *e = newest_conf_entry(r, r->snap_index, raft_log_last_index(&r->log));
    if (e)
        return adopt_entry(r, e);
    return raft_conf_adopt(r, &r->snap_conf.c, r->snap_conf.blob, r->snap_conf.len, 0);
}

int raft_conf_on_compact(struct raft *r, uint64_t snapshot_index)
{
    const struct raft_entry *e = newest_conf_entry(r, r->snap_index, snapshot_index);
    if (!e)
        return 0; /* unchanged since the previous snapshot */
    struct raft_conf c;
    if (raft_conf_decode(e->data, e->len, &c, NULL, NULL))
        return RAFT_EINVAL;
    int rc = rec_set(&r->snap_conf, &c, e->data, e->len);
    if (!rc && r->conf_index == e->index)
        r->conf_index = 0; /* now carried by the snapshot */
    return rc;
}

const uint8_t *raft_conf_blob_at(const struct raft *r, uint64_t index, uint32_t *len)
{
    if (index < r->snap_index || index > raft_log_last_index(&r->log))
        return NULL;
    const struct raft_entry *e = newest_conf_entry(r, r->snap_index, index);
    if (e) {
        *len = e->len;
        return e->data;
    }
    *len = r->snap_conf.len;
    return r->snap_conf.blob;
}

void raft_conf_get(const struct raft *r, struct raft_conf *out, uint64_t *index, bool *committed)
{
    if (out)
        *out = r->conf.c;
    if (index)
        *index = r->conf_index;
    if (committed)
        *committed = r->conf_index <= r->commit;
}

void raft_conf_free(struct raft *r)
{
    free(r->conf.blob);
    free(r->snap_conf.blob);
    r->conf.blob = r->snap_conf.blob = NULL;
}

/* A member may campaign if it votes in the configuration in force or - while that one is not
 * known to be committed - in the one before it. The second case is a leader that appended a C_new
 * without itself and lost leadership before C_new reached the others: they are still in
 * C_old,new, whose C_old majority may need it, and its longer log means only it can win - so it
 * must be able to, then finish the change (commit C_new, counting only C_new's majority) and step
 * down (§6). Its commit index may not say the joint entry committed (a restart forgets it), so
 * the rule looks one configuration back, not at the commit index. Without it the cluster can
 * stall for ever (the simulator found both cases). A removed member that never learns C_new
 * committed may keep trying; pre-vote and the leader lease keep that from disturbing anyone, and
 * the runtime stops a removed member. */
bool raft_may_campaign(const struct raft *r)
{
    /* The term space is exhausted: a campaign would need term + 1. Only a peer's forged term can
     * bring us here (2^64 elections cannot happen), and a peer's bytes must not make set_term's
     * "terms only grow" assertion fire; such a member just never campaigns again. Found by
     * tests/fuzz/raft_step_fuzz.c (an APPEND of term 2^64-1, then TimeoutNow). */
    if (r->hs.term == UINT64_MAX)
        return false;
    if (raft_is_voter(r, r->id))
        return true;
    if (!r->conf_index || r->conf_index <= r->commit)
        return false; /* the configuration in force is committed */
    const struct raft_entry *e = newest_conf_entry(r, r->snap_index, r->conf_index - 1);
    struct raft_conf c;
    if (!e)
        return raft_conf_is_voter(&r->snap_conf.c, r->id);
    return raft_conf_decode(e->data, e->len, &c, NULL, NULL) == 0 && raft_conf_is_voter(&c, r->id);
}

/* ---- quorums ---- */

bool raft_is_voter(const struct raft *r, uint64_t id)
{
    return raft_conf_is_voter(&r->conf.c, id);
}

static size_t count_flag(const struct raft *r, const uint64_t *set, uint32_t n, const int8_t *flags,
                         int8_t want)
{
    size_t k = 0;
    for (uint32_t i = 0; i < n; i++) {
        size_t j = raft_peer_index(r, set[i]);
        k += j < r->n_peers && flags[j] == want;
    }
    return k;
}

bool raft_quorum_has(const struct raft *r, const int8_t *flags, int8_t want)
{
    const struct raft_conf *c = &r->conf.c;
    if (count_flag(r, c->voters, c->n_voters, flags, want) < c->n_voters / 2 + 1)
        return false;
    return !c->n_old || count_flag(r, c->old, c->n_old, flags, want) >= c->n_old / 2 + 1;
}

bool raft_quorum_lost(const struct raft *r, const int8_t *flags, int8_t want)
{
    const struct raft_conf *c = &r->conf.c;
    if (count_flag(r, c->voters, c->n_voters, flags, want) >= c->n_voters / 2 + 1)
        return true;
    return c->n_old && count_flag(r, c->old, c->n_old, flags, want) >= c->n_old / 2 + 1;
}

static int cmp_desc(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x > y ? -1 : x < y;
}

/* The value a majority of `set` has reached: the (n/2+1)-th largest. */
static uint64_t set_index(const struct raft *r, const uint64_t *set, uint32_t n,
                          const uint64_t *vals)
{
    uint64_t v[RAFT_MAX_NODES];
    for (uint32_t i = 0; i < n; i++) {
        size_t j = raft_peer_index(r, set[i]);
        v[i] = j < r->n_peers ? vals[j] : 0;
    }
    qsort(v, n, sizeof(v[0]), cmp_desc);
    return v[n / 2];
}

uint64_t raft_quorum_index(const struct raft *r, const uint64_t *vals)
{
    const struct raft_conf *c = &r->conf.c;
    uint64_t a = set_index(r, c->voters, c->n_voters, vals);
    if (!c->n_old)
        return a;
    uint64_t b = set_index(r, c->old, c->n_old, vals);
    return a < b ? a : b; /* joint: both majorities (§6) */
}

/* ---- the leader's side of a change ---- */

static int append_conf(struct raft *r, const struct raft_conf *c, const void *ctx, uint32_t ctx_len,
                       uint64_t *index)
{
    uint8_t *blob;
    uint32_t len;
    int rc = raft_conf_encode(c, ctx, ctx_len, &blob, &len);
    if (rc)
        return rc;
    struct raft_entry e = {.index = raft_log_last_index(&r->log) + 1,
                           .term = r->hs.term,
                           .type = RAFT_ENTRY_CONFIG,
                           .len = len,
                           .data = blob};
    rc = raft_log_append(&r->log, &e);
    if (!rc) {
        rc = raft_conf_adopt(r, c, blob, len, e.index);
        if (rc)
            raft_log_truncate(&r->log, e.index); /* never readied: nothing to undo in storage */
    }
    free(blob);
    if (rc)
        return rc;
    if (index)
        *index = e.index;
    return 0;
}

static void sort_ids(uint64_t *s, uint32_t n)
{
    qsort(s, n, sizeof(uint64_t), cmp_u64);
}

int raft_propose_conf(struct raft *r, const struct raft_conf *target, const void *ctx,
                      uint32_t ctx_len, uint64_t *index, uint64_t *term, uint64_t *leader_hint)
{
    if (!r || !target || (ctx_len && !ctx))
        return RAFT_EINVAL;
    if (leader_hint)
        *leader_hint = r->leader_id;
    if (r->role != RAFT_LEADER)
        return RAFT_ENOTLEADER;
    if (r->transferee)
        return RAFT_EBUSY;
    const struct raft_conf *cur = &r->conf.c;
    if (cur->n_old || r->conf_index > r->commit)
        return RAFT_EPENDING; /* one change at a time (§6; thesis §4.1) */
    if (target->n_old || target->n_voters > RAFT_MAX_NODES ||
        target->n_learners > RAFT_MAX_NODES)
        return RAFT_EINVAL;
    if (ctx_len > r->cfg.max_entry_bytes)
        return RAFT_ETOOBIG;
    struct raft_conf next = *target;
    sort_ids(next.voters, next.n_voters);
    sort_ids(next.learners, next.n_learners);
    if (!conf_valid(&next))
        return RAFT_EINVAL;
    for (uint32_t i = 0; i < next.n_learners; i++)
        if (in_set(cur->voters, cur->n_voters, next.learners[i]))
            return RAFT_EINVAL; /* a voter cannot become a learner (etcd has no demotion) */
    bool same_voters = next.n_voters == cur->n_voters &&
                       !memcmp(next.voters, cur->voters, cur->n_voters * sizeof(uint64_t));
    if (!same_voters) {
        /* C_old,new: the new voters with the old ones as the second majority. */
        memcpy(next.old, cur->voters, cur->n_voters * sizeof(uint64_t));
        next.n_old = cur->n_voters;
        uint64_t m[RAFT_MAX_NODES];
        if (conf_members(&next, 0, m) < 0)
            return RAFT_EINVAL;
    }
    uint64_t at;
    int rc = append_conf(r, &next, ctx, ctx_len, &at);
    if (rc)
        return rc;
    RAFT_TRACE(r, "proposes configuration at %" PRIu64 "%s", at,
               same_voters ? "" : " (joint: C_old,new)");
    if (index)
        *index = at;
    if (term)
        *term = r->hs.term;
    raft_bcast_append(r);
    raft_maybe_commit(r); /* a single voter commits at once once persisted */
    return 0;
}

void raft_conf_on_commit(struct raft *r)
{
    if (r->role != RAFT_LEADER || r->conf_index > r->commit)
        return;
    const struct raft_conf *cur = &r->conf.c;
    if (cur->n_old) {
        /* C_old,new committed: now C_new alone, with the same context. */
        struct raft_conf next = *cur;
        next.n_old = 0;
        const uint8_t *ctx = NULL;
        uint32_t ctx_len = 0;
        struct raft_conf tmp;
        if (raft_conf_decode(r->conf.blob, r->conf.len, &tmp, &ctx, &ctx_len))
            return;
        uint64_t at;
        if (append_conf(r, &next, ctx, ctx_len, &at) == 0) {
            RAFT_TRACE(r, "joint configuration committed: appends C_new at %" PRIu64, at);
            raft_bcast_append(r);
        }
        return;
    }
    if (!raft_is_voter(r, r->id)) {
        /* C_new without us has committed: hand over (§6). */
        RAFT_TRACE(r, "steps down: the committed configuration at %" PRIu64
                      " does not include it", r->conf_index);
        /* Hand over at once (thesis §3.10): a voter of C_new whose log is complete campaigns now
         * instead of after an election timeout. */
        uint64_t last = raft_log_last_index(&r->log);
        for (size_t i = 0; i < r->n_peers; i++)
            if (r->peers[i] != r->id && raft_is_voter(r, r->peers[i]) &&
                r->progress[i].match == last) {
                raft_send_timeout_now(r, r->peers[i]);
                break;
            }
        raft_become_follower(r, r->hs.term, 0);
    }
}
