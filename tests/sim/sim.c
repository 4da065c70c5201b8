/* sim.c: the deterministic cluster simulator and safety checker (see sim.h). */
#include "tests/sim/sim.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* ---- small helpers ---- */

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) {
        fprintf(stderr, "sim: out of memory\n");
        exit(3);
    }
    return q;
}

#define GROW(arr, cap, need)                                                          \
    do {                                                                              \
        if ((size_t)(need) > (cap)) {                                                 \
            size_t nc_ = (cap) ? (cap) : 16;                                          \
            while (nc_ < (size_t)(need))                                              \
                nc_ *= 2;                                                             \
            (arr) = xrealloc((arr), nc_ * sizeof(*(arr)));                            \
            memset((arr) + (cap), 0, (nc_ - (cap)) * sizeof(*(arr)));                 \
            (cap) = nc_;                                                              \
        }                                                                             \
    } while (0)

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t entry_hash(const struct raft_entry *e)
{
    uint64_t h = mix64(0x1234 + e->type);
    for (uint32_t i = 0; i < e->len; i++)
        h = mix64(h ^ e->data[i]);
    return h;
}

static uint64_t entry_value(const struct raft_entry *e)
{
    uint64_t v = 0;
    if (e->type == RAFT_ENTRY_NORMAL && e->len == sizeof(v))
        memcpy(&v, e->data, sizeof(v));
    return v;
}

/* ---- state ---- */

/* A snapshot of the simulated state machine: the last index and term it covers and the hash
 * chain of every entry applied up to it (the "state"). */
struct snap {
    uint64_t index, term, chain;
    /* The configuration in force at index (raft_conf_blob_at; no ctx in the simulator, so it
     * fits): what a real snapshot's metadata carries. conf_len 0 = the initial one. */
    uint8_t conf[8 + 3 * 8 * SIM_MAX_NODES];
    uint32_t conf_len;
};

struct write {
    uint64_t seq, due;
    struct snap install; /* index != 0: replace the stored snapshot and log first */
    bool hs_changed;
    struct raft_hard_state hs;
    uint64_t trunc;
    struct raft_entry *e;
    size_t n;
};

struct node {
    struct raft *r;
    bool up;
    int group;
    unsigned phase;
    /* durable storage: hard state, snapshot, log entries doff+1 .. doff+dn (doff_term is the
     * term of entry doff, which a snapshot covers) */
    struct raft_hard_state dhs;
    struct snap dsnap;
    uint64_t doff, doff_term;
    struct raft_entry *dlog;
    size_t dn, dcap;
    /* storage writes issued but not yet durable, in order */
    struct write *w;
    size_t wn, wcap;
    uint64_t last_due;
    /* A stalled disk (a slow fdatasync): nothing becomes durable before stall_until. crash_at
     * (nonzero): the node loses power then, with every write still pending lost, and comes back
     * at restart_at (nonzero). */
    uint64_t stall_until, crash_at, restart_at;
    /* the log as emitted to storage (view), with Log Matching prefix hashes */
    uint64_t *vterm, *vprefix;
    size_t vn, vcap;
    /* state machine: applied index and the hash chain of what it applied; the newest snapshot
     * in memory (taken, restored or installed); a received snapshot waiting for the core */
    uint64_t applied, chain;
    struct snap msnap, rx;
    /* checker */
    uint64_t seen_commit;
    uint64_t lead_term; /* term in which we last saw it leading, checked for completeness */
    uint64_t conf_seen; /* newest configuration entry of its own term checked (leader) */
};

/* A message in flight. A SNAPSHOT carries the sender's snapshot (its bytes, in a real cluster);
 * report = not a message but the sender's transport noticing that the snapshot it sent to m.to
 * was lost (raft_report_snapshot). */
struct netmsg {
    uint64_t due;
    struct raft_msg m;
    struct snap snap;
    bool report;
};

struct gslot {
    bool set;
    uint64_t term, hash, value, commit_term;
    uint64_t chain; /* applied: hash chain of entries 1 .. index */
};

/* A linearizable read (raft_read_index) issued by the workload. ctx = its position + 1. */
struct simread {
    int node;
    uint64_t start;
    uint64_t min_index; /* highest index known committed anywhere when the read started */
    bool settled;       /* released (or lost with its node's crash) */
    uint64_t index;     /* released index (0 = failed or lost) */
};

struct lmslot {
    struct {
        uint64_t term, prefix;
    } *v;
    size_t n, cap;
};

struct sim {
    struct sim_opts o;
    uint64_t rng, now;
    int n;
    struct node nodes[SIM_MAX_NODES];
    struct netmsg *net;
    size_t nn, ncap;
    struct netmsg *due;
    size_t duecap;
    /* checker */
    uint64_t *leader_of;
    size_t leader_cap;
    struct gslot *committed, *applied;
    size_t ccap, acap;
    struct lmslot *lm;
    size_t lmcap;
    int violations;
    char vmsg[512];
    struct sim_stats st;
    /* reads */
    struct simread *reads;
    size_t nreads, rcap;
    uint64_t max_commit; /* highest commit index any node has reached */
};

static uint64_t rnd(struct sim *s)
{
    return mix64(s->rng += 0x9E3779B97F4A7C15ull);
}

static unsigned rnd_range(struct sim *s, unsigned lo, unsigned hi)
{
    return hi <= lo ? lo : lo + (unsigned)(rnd(s) % (hi - lo + 1));
}

static bool chance(struct sim *s, double p)
{
    return p > 0 && (double)(rnd(s) >> 11) / 9007199254740992.0 < p;
}

static void trace(struct sim *s, const char *fmt, ...)
{
    if (!s->o.trace)
        return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(s->o.trace, "t=%-6llu ", (unsigned long long)s->now);
    vfprintf(s->o.trace, fmt, ap);
    fputc('\n', s->o.trace);
    va_end(ap);
}

/* The core's decision trace (raft_config.trace), interleaved with the simulator's events. Only
 * cores built with RAFT_WITH_TRACE (craft-sim) call it. */
static void core_trace(void *arg, const char *line)
{
    trace(arg, "  core %s", line);
}

static void violation(struct sim *s, const char *fmt, ...)
{
    if (s->violations++ == 0) {
        va_list ap;
        va_start(ap, fmt);
        int k = snprintf(s->vmsg, sizeof(s->vmsg), "t=%llu: ", (unsigned long long)s->now);
        vsnprintf(s->vmsg + k, sizeof(s->vmsg) - (size_t)k, fmt, ap);
        va_end(ap);
        if (s->o.trace)
            fprintf(s->o.trace, "VIOLATION %s\n", s->vmsg);
    }
}

uint64_t sim_id(int i)
{
    return (uint64_t)i + 1;
}

void sim_opts_default(struct sim_opts *o, int nodes, uint64_t seed)
{
    memset(o, 0, sizeof(*o));
    struct raft_config c;
    raft_config_default(&c);
    o->nodes = nodes;
    o->seed = seed;
    o->tick_ms = 10;
    o->min_delay = 1;
    o->max_delay = 5;
    o->disk_min = 1;
    o->disk_max = 3;
    o->pre_vote = c.pre_vote;
    o->check_quorum = c.check_quorum;
    o->election_tick = c.election_tick;
    o->heartbeat_tick = c.heartbeat_tick;
    o->max_append_entries = c.max_append_entries;
    o->max_inflight_msgs = c.max_inflight_msgs;
}

/* ---- checker ---- */

static struct gslot *gslot(struct gslot **arr, size_t *cap, uint64_t index)
{
    GROW(*arr, *cap, index + 1);
    return &(*arr)[index];
}

/* Log Matching (§5.3): one (index, term) pair implies one identical prefix. */
static void view_append(struct sim *s, int i, const struct raft_entry *e)
{
    struct node *nd = &s->nodes[i];
    if (e->index != nd->vn + 1) {
        violation(s, "n%d storage stream not contiguous: got index %llu after %zu", i + 1,
                  (unsigned long long)e->index, nd->vn);
        return;
    }
    GROW(nd->vterm, nd->vcap, nd->vn + 1);
    nd->vprefix = xrealloc(nd->vprefix, nd->vcap * sizeof(uint64_t));
    uint64_t prev = nd->vn ? nd->vprefix[nd->vn - 1] : 0;
    uint64_t p = mix64(prev ^ mix64(e->term * 0x9E37ull + 7) ^ entry_hash(e));
    nd->vterm[nd->vn] = e->term;
    nd->vprefix[nd->vn] = p;
    nd->vn++;
    GROW(s->lm, s->lmcap, e->index + 1);
    struct lmslot *sl = &s->lm[e->index];
    for (size_t k = 0; k < sl->n; k++) {
        if (sl->v[k].term == e->term) {
            if (sl->v[k].prefix != p)
                violation(s, "Log Matching: n%d entry %llu term %llu has a different prefix or "
                          "content than another log's", i + 1, (unsigned long long)e->index,
                          (unsigned long long)e->term);
            return;
        }
    }
    GROW(sl->v, sl->cap, sl->n + 1);
    sl->v[sl->n].term = e->term;
    sl->v[sl->n].prefix = p;
    sl->n++;
}

/* The node's log now starts after (index, term), which a snapshot covers: its view continues
 * from the prefix hash some log had for that entry. A snapshot of an entry no log ever held is
 * itself a violation. */
static void view_reset_at(struct sim *s, int i, uint64_t index, uint64_t term)
{
    struct node *nd = &s->nodes[i];
    nd->vn = 0;
    if (!index)
        return;
    GROW(nd->vterm, nd->vcap, index);
    nd->vprefix = xrealloc(nd->vprefix, nd->vcap * sizeof(uint64_t));
    uint64_t prefix = 0;
    bool found = false;
    for (size_t k = 0; index < s->lmcap && k < s->lm[index].n; k++)
        if (s->lm[index].v[k].term == term) {
            prefix = s->lm[index].v[k].prefix;
            found = true;
        }
    if (!found)
        violation(s, "n%d log starts after %llu/%llu, an entry no log ever held", i + 1,
                  (unsigned long long)index, (unsigned long long)term);
    nd->vterm[index - 1] = term;
    nd->vprefix[index - 1] = prefix;
    nd->vn = index;
}

static void view_rebuild(struct sim *s, int i)
{
    struct node *nd = &s->nodes[i];
    view_reset_at(s, i, nd->doff, nd->doff_term);
    for (size_t k = 0; k < nd->dn; k++)
        view_append(s, i, &nd->dlog[k]);
}

/* State Machine Safety for snapshots: a snapshot at index must hold exactly what every node
 * applied up to index (the same hash chain). */
static void check_snapshot(struct sim *s, int i, const struct snap *sn, const char *what)
{
    if (!sn->index)
        return;
    const struct gslot *g = sn->index < s->acap ? &s->applied[sn->index] : NULL;
    if (!g || !g->set || g->chain != sn->chain || g->term != sn->term)
        violation(s, "State Machine Safety: n%d %s a snapshot at %llu/%llu whose state differs "
                  "from what was applied up to it", i + 1, what, (unsigned long long)sn->index,
                  (unsigned long long)sn->term);
}

/* Leader Completeness (§5.4): an entry committed in term T is in every leader's log for terms
 * after T. */
static void check_has_committed(struct sim *s, int i, uint64_t index)
{
    struct raft_status st;
    raft_status_get(s->nodes[i].r, &st);
    struct gslot *g = &s->committed[index];
    if (!g->set || g->commit_term >= st.term)
        return;
    if (index <= st.snapshot_index)
        return; /* in its snapshot, which check_snapshot verified */
    const struct raft_entry *e = raft_log_get(s->nodes[i].r, index);
    if (!e || e->term != g->term || entry_hash(e) != g->hash)
        violation(s, "Leader Completeness: leader n%d (term %llu) lacks entry %llu committed "
                  "in term %llu", i + 1, (unsigned long long)st.term,
                  (unsigned long long)index, (unsigned long long)g->commit_term);
}

/* Whether node j's durable storage (snapshot or log) holds entry index of term `term`. */
static bool holds(const struct sim *s, int j, uint64_t index, uint64_t term)
{
    const struct node *nd = &s->nodes[j];
    if (index <= nd->dsnap.index)
        return true; /* a snapshot only covers committed entries, checked by check_snapshot */
    if (index <= nd->doff || index > nd->doff + nd->dn)
        return false;
    return nd->dlog[index - nd->doff - 1].term == term;
}

static size_t count_holders(const struct sim *s, const uint64_t *set, uint32_t n, uint64_t index,
                            uint64_t term)
{
    size_t k = 0;
    for (uint32_t v = 0; v < n; v++) {
        int j = (int)set[v] - 1;
        k += j >= 0 && j < s->n && holds(s, j, index, term);
    }
    return k;
}

/* A leader's commit index moved to `index`: the entry must be durable on a majority of the
 * voters, and while joint on a majority of the old voters too (§6). Checked against storage, not
 * the leader's bookkeeping, so a wrong quorum rule is caught the moment it commits. */
static void check_commit_quorum(struct sim *s, int i, uint64_t index)
{
    const struct raft_entry *e = raft_log_get(s->nodes[i].r, index);
    if (!e)
        return;
    struct raft_conf c;
    raft_conf_get(s->nodes[i].r, &c, NULL, NULL);
    size_t a = count_holders(s, c.voters, c.n_voters, index, e->term);
    size_t b = count_holders(s, c.old, c.n_old, index, e->term);
    if (a < c.n_voters / 2 + 1 || (c.n_old && b < c.n_old / 2 + 1))
        violation(s, "Commit quorum: leader n%d commits %llu stored on %zu of %u voters%s", i + 1,
                  (unsigned long long)index, a, c.n_voters,
                  c.n_old ? " (joint: and a majority of the old voters needed too)" : "");
}

/* Membership (§6): a leader appends a configuration only once the previous one committed (one
 * change at a time), and only a legal successor: from C_old either C_old,new (old voters =
 * C_old's) or a change of learners; from C_old,new only C_new. */
static void check_conf_leader(struct sim *s, int i, const struct raft_status *st)
{
    struct node *nd = &s->nodes[i];
    struct raft_conf c;
    uint64_t ci;
    raft_conf_get(nd->r, &c, &ci, NULL);
    if (!ci || ci == nd->conf_seen)
        return;
    nd->conf_seen = ci;
    const struct raft_entry *e = raft_log_get(nd->r, ci);
    if (!e || e->term != st->term)
        return; /* inherited from an earlier leader, checked when that one appended it */
    const struct raft_entry *p = NULL;
    for (uint64_t k = ci - 1; k > st->snapshot_index && k >= st->first_index; k--) {
        const struct raft_entry *x = raft_log_get(nd->r, k);
        if (x && x->type == RAFT_ENTRY_CONFIG) {
            p = x;
            break;
        }
    }
    if (!p)
        return; /* the previous one is in the snapshot: committed */
    if (p->index >= s->ccap || !s->committed[p->index].set)
        violation(s, "One change at a time: leader n%d appends configuration %llu while %llu "
                     "has not committed", i + 1, (unsigned long long)ci,
                  (unsigned long long)p->index);
    struct raft_conf pc;
    if (raft_conf_decode(p->data, p->len, &pc, NULL, NULL))
        return;
    bool same_voters = c.n_voters == pc.n_voters &&
                       !memcmp(c.voters, pc.voters, c.n_voters * sizeof(uint64_t));
    bool ok;
    if (pc.n_old)
        ok = !c.n_old && same_voters;
    else
        ok = c.n_old ? c.n_old == pc.n_voters &&
                           !memcmp(c.old, pc.voters, c.n_old * sizeof(uint64_t))
                     : same_voters;
    if (!ok)
        violation(s, "Configuration succession: leader n%d appends at %llu a configuration "
                     "that cannot follow the one at %llu", i + 1, (unsigned long long)ci,
                  (unsigned long long)p->index);
}

static void check_node(struct sim *s, int i)
{
    struct node *nd = &s->nodes[i];
    if (!nd->up)
        return;
    struct raft_status st;
    raft_status_get(nd->r, &st);

    /* The core's log must be exactly what it told storage (emitted after every event). */
    uint64_t vt = nd->vn ? nd->vterm[nd->vn - 1] : 0;
    if (st.last_index != nd->vn || st.last_term != vt)
        violation(s, "n%d core log (last %llu/%llu) differs from its storage stream (%zu/%llu)",
                  i + 1, (unsigned long long)st.last_index, (unsigned long long)st.last_term,
                  nd->vn, (unsigned long long)vt);
    if (st.commit_index > st.last_index)
        violation(s, "n%d commit %llu beyond last index %llu", i + 1,
                  (unsigned long long)st.commit_index, (unsigned long long)st.last_index);

    /* Election Safety (§5.2): at most one leader per term. */
    if (st.role == RAFT_LEADER) {
        GROW(s->leader_of, s->leader_cap, st.term + 1);
        if (s->leader_of[st.term] && s->leader_of[st.term] != st.id)
            violation(s, "Election Safety: n%llu and n%llu both leaders in term %llu",
                      (unsigned long long)s->leader_of[st.term], (unsigned long long)st.id,
                      (unsigned long long)st.term);
        s->leader_of[st.term] = st.id;
        if (nd->lead_term != st.term) {
            nd->lead_term = st.term;
            trace(s, "n%d becomes leader term=%llu last=%llu", i + 1,
                  (unsigned long long)st.term, (unsigned long long)st.last_index);
            for (uint64_t k = 1; k < s->ccap && s->committed[k].set; k++)
                check_has_committed(s, i, k);
        }
    }

    /* Newly committed entries: the same index never commits two different entries. */
#ifndef SIM_NO_COMMIT_QUORUM_CHECK /* inject.sh: measure what the faults alone catch */
    if (st.commit_index > nd->seen_commit && st.role == RAFT_LEADER)
        check_commit_quorum(s, i, st.commit_index);
#endif
    if (st.commit_index > nd->seen_commit) {
        for (uint64_t k = nd->seen_commit + 1; k <= st.commit_index; k++) {
            if (k <= st.snapshot_index)
                continue; /* committed through a snapshot, which check_snapshot verified */
            const struct raft_entry *e = raft_log_get(nd->r, k);
            if (!e) {
                violation(s, "n%d committed index %llu missing from its log", i + 1,
                          (unsigned long long)k);
                break;
            }
            struct gslot *g = gslot(&s->committed, &s->ccap, k);
            uint64_t h = entry_hash(e);
            if (!g->set) {
                *g = (struct gslot){true, e->term, h, entry_value(e), st.term, 0};
                if (e->type == RAFT_ENTRY_CONFIG)
                    s->st.conf_committed++;
                for (int j = 0; j < s->n; j++) /* leaders of later terms must hold it */
                    if (s->nodes[j].up && j != i) {
                        struct raft_status sj;
                        raft_status_get(s->nodes[j].r, &sj);
                        if (sj.role == RAFT_LEADER)
                            check_has_committed(s, j, k);
                    }
            } else if (g->term != e->term || g->hash != h) {
                violation(s, "committed entry %llu differs: n%d has term %llu, earlier term %llu",
                          (unsigned long long)k, i + 1, (unsigned long long)e->term,
                          (unsigned long long)g->term);
            }
        }
        nd->seen_commit = st.commit_index;
        if (st.commit_index > s->max_commit)
            s->max_commit = st.commit_index;
    }
    if (st.commit_index < nd->seen_commit)
        violation(s, "n%d commit index went back from %llu to %llu", i + 1,
                  (unsigned long long)nd->seen_commit, (unsigned long long)st.commit_index);
    if (st.role == RAFT_LEADER)
        check_conf_leader(s, i, &st); /* after the commits above are recorded */
}

/* ---- ready processing: storage, network, state machine ---- */

static bool connected(const struct sim *s, int a, int b)
{
    return s->nodes[a].up && s->nodes[b].up && s->nodes[a].group == s->nodes[b].group;
}

static void msg_copy(struct raft_msg *dst, const struct raft_msg *src)
{
    *dst = *src;
    dst->entries = NULL;
    if (src->n_entries) {
        dst->entries = xrealloc(NULL, src->n_entries * sizeof(*dst->entries));
        for (uint32_t k = 0; k < src->n_entries; k++) {
            dst->entries[k] = src->entries[k];
            if (src->entries[k].len) {
                dst->entries[k].data = xrealloc(NULL, src->entries[k].len);
                memcpy(dst->entries[k].data, src->entries[k].data, src->entries[k].len);
            }
        }
    }
    dst->conf = NULL;
    if (src->conf_len) {
        dst->conf = xrealloc(NULL, src->conf_len);
        memcpy(dst->conf, src->conf, src->conf_len);
    }
}

static void msg_free(struct raft_msg *m)
{
    for (uint32_t k = 0; k < m->n_entries; k++)
        free(m->entries[k].data);
    free(m->entries);
    m->entries = NULL;
    free(m->conf);
    m->conf = NULL;
}

static void describe(char *buf, size_t len, const struct raft_msg *m)
{
    switch (m->type) {
    case RAFT_MSG_VOTE:
    case RAFT_MSG_PREVOTE:
        snprintf(buf, len, "last=%llu/%llu%s", (unsigned long long)m->last_log_index,
                 (unsigned long long)m->last_log_term, m->transfer ? " transfer" : "");
        break;
    case RAFT_MSG_VOTE_RESP:
    case RAFT_MSG_PREVOTE_RESP:
        snprintf(buf, len, "%s", m->granted ? "granted" : "rejected");
        break;
    case RAFT_MSG_APPEND:
        snprintf(buf, len, "prev=%llu/%llu n=%u commit=%llu round=%llu",
                 (unsigned long long)m->prev_index, (unsigned long long)m->prev_term, m->n_entries,
                 (unsigned long long)m->commit, (unsigned long long)m->ctx);
        break;
    case RAFT_MSG_APPEND_RESP:
        if (m->reject)
            snprintf(buf, len, "reject at=%llu hint=%llu/%llu round=%llu",
                     (unsigned long long)m->reject_index, (unsigned long long)m->conflict_term,
                     (unsigned long long)m->conflict_index, (unsigned long long)m->ctx);
        else
            snprintf(buf, len, "ok match=%llu round=%llu", (unsigned long long)m->match_index,
                     (unsigned long long)m->ctx);
        break;
    case RAFT_MSG_READ_INDEX:
        snprintf(buf, len, "ctx=%llu", (unsigned long long)m->ctx);
        break;
    case RAFT_MSG_SNAPSHOT:
        snprintf(buf, len, "snapshot=%llu/%llu commit=%llu",
                 (unsigned long long)m->snapshot_index, (unsigned long long)m->snapshot_term,
                 (unsigned long long)m->commit);
        break;
    case RAFT_MSG_READ_INDEX_RESP:
        snprintf(buf, len, "ctx=%llu index=%llu", (unsigned long long)m->ctx,
                 (unsigned long long)m->read_index);
        break;
    default:
        buf[0] = 0;
    }
}

/* Highest index committed anywhere so far: every client write acknowledged until now is at or
 * below it. */
static uint64_t global_commit(struct sim *s)
{
    uint64_t c = s->max_commit;
    for (int i = 0; i < s->n; i++) {
        if (!s->nodes[i].up)
            continue;
        struct raft_status st;
        raft_status_get(s->nodes[i].r, &st);
        if (st.commit_index > c)
            c = st.commit_index;
    }
    return c;
}

/* Linearizability of reads (thesis §6.4): a read released with index i must cover every write
 * acknowledged before the read began, i.e. i >= the highest index committed anywhere at its start;
 * and it must name a committed index. Each read is released exactly once, by the node it was
 * issued on. */
static void read_released(struct sim *s, int i, const struct raft_read_state *rs)
{
    if (rs->ctx == 0 || rs->ctx > s->nreads) {
        violation(s, "n%d released unknown read ctx %llu", i + 1, (unsigned long long)rs->ctx);
        return;
    }
    struct simread *rd = &s->reads[rs->ctx - 1];
    if (rd->node != i || rd->settled) {
        violation(s, "read %llu (issued on n%d) released %s on n%d", (unsigned long long)rs->ctx,
                  rd->node + 1, rd->settled ? "twice" : "elsewhere", i + 1);
        return;
    }
    rd->settled = true;
    rd->index = rs->index;
    if (!rs->index) {
        s->st.reads_failed++;
        trace(s, "n%d read %llu failed", i + 1, (unsigned long long)rs->ctx);
        return;
    }
    s->st.reads_ok++;
    uint64_t gc = global_commit(s);
    trace(s, "n%d read %llu released index=%llu (needs >= %llu)", i + 1,
          (unsigned long long)rs->ctx, (unsigned long long)rs->index,
          (unsigned long long)rd->min_index);
    if (rs->index < rd->min_index)
        violation(s, "Linearizable read: n%d read %llu started at t=%llu released index %llu, "
                  "but index %llu was committed before it started", i + 1,
                  (unsigned long long)rs->ctx, (unsigned long long)rd->start,
                  (unsigned long long)rs->index, (unsigned long long)rd->min_index);
    else if (rs->index > gc)
        violation(s, "n%d read %llu released index %llu beyond any commit (%llu)", i + 1,
                  (unsigned long long)rs->ctx, (unsigned long long)rs->index,
                  (unsigned long long)gc);
}

static struct netmsg *net_push(struct sim *s, uint64_t due)
{
    GROW(s->net, s->ncap, s->nn + 1);
    struct netmsg *nm = &s->net[s->nn++];
    memset(nm, 0, sizeof(*nm));
    nm->due = due;
    return nm;
}

/* The transfer of the snapshot m carried ended (delivered, or lost): its sender's transport
 * learns it a little later, as a stream's end or its error. */
static void snapshot_report(struct sim *s, const struct raft_msg *m, bool ok)
{
    if (m->type != RAFT_MSG_SNAPSHOT)
        return;
    struct netmsg *nm = net_push(s, s->now + 20);
    nm->report = true;
    nm->m = (struct raft_msg){.type = RAFT_MSG_SNAPSHOT, .from = m->from, .to = m->to,
                              .granted = ok};
}

static void net_send(struct sim *s, const struct raft_msg *m)
{
    s->st.sent_total++;
    if (m->type <= RAFT_MSG_TYPE_MAX)
        s->st.sent[m->type]++;
    if (m->type == RAFT_MSG_APPEND && m->n_entries)
        s->st.append_with_entries++;
    int a = (int)m->from - 1, b = (int)m->to - 1;
    char d[128];
    if (s->o.trace)
        describe(d, sizeof(d), m);
    /* Durability before acknowledgement: a vote grant needs its term and vote on disk, an
     * append ack the acknowledged entries. */
    const struct node *src = a >= 0 && a < s->n ? &s->nodes[a] : NULL;
    if (src && m->type == RAFT_MSG_VOTE_RESP && m->granted &&
        (src->dhs.term != m->term || src->dhs.voted_for != m->to))
        violation(s, "Durability: n%d grants its vote to n%d in term %llu before it is durable "
                  "(disk: term %llu vote %llu)", a + 1, b + 1, (unsigned long long)m->term,
                  (unsigned long long)src->dhs.term, (unsigned long long)src->dhs.voted_for);
    if (src && m->type == RAFT_MSG_APPEND_RESP && !m->reject &&
        m->match_index > src->doff + src->dn)
        violation(s, "Durability: n%d acknowledges index %llu with its log durable to %llu",
                  a + 1, (unsigned long long)m->match_index,
                  (unsigned long long)(src->doff + src->dn));
    if (src && m->type == RAFT_MSG_SNAPSHOT &&
        (src->msnap.index != m->snapshot_index || src->msnap.term != m->snapshot_term))
        violation(s, "n%d sends snapshot %llu/%llu but holds %llu/%llu", a + 1,
                  (unsigned long long)m->snapshot_index, (unsigned long long)m->snapshot_term,
                  (unsigned long long)src->msnap.index, (unsigned long long)src->msnap.term);
    if (src && m->type == RAFT_MSG_SNAPSHOT &&
        (m->conf_len != src->msnap.conf_len ||
         (m->conf_len && memcmp(m->conf, src->msnap.conf, m->conf_len))))
        violation(s, "n%d sends snapshot %llu with a configuration other than its snapshot's",
                  a + 1, (unsigned long long)m->snapshot_index);
    if (s->nn > 200000)
        violation(s, "message storm: %zu messages in flight", s->nn);
    if (b < 0 || b >= s->n || !connected(s, a, b) || chance(s, s->o.drop)) {
        s->st.dropped++;
        if (s->o.trace)
            trace(s, "n%d -> n%d %s term=%llu %s DROPPED", a + 1, b + 1,
                  raft_msg_type_name(m->type), (unsigned long long)m->term, d);
        snapshot_report(s, m, false);
        return;
    }
    int copies = chance(s, s->o.dup) ? 2 : 1;
    for (int c = 0; c < copies; c++) {
        struct netmsg *nm = net_push(s, s->now + rnd_range(s, s->o.min_delay, s->o.max_delay));
        msg_copy(&nm->m, m);
        if (m->type == RAFT_MSG_SNAPSHOT)
            nm->snap = src->msnap;
    }
    if (s->o.trace)
        trace(s, "n%d -> n%d %s term=%llu %s%s", a + 1, b + 1, raft_msg_type_name(m->type),
              (unsigned long long)m->term, d, copies == 2 ? " (dup)" : "");
}

static void process_ready(struct sim *s, int i)
{
    struct node *nd = &s->nodes[i];
    while (nd->up && raft_has_ready(nd->r)) {
        struct raft_ready rd;
        int rc = raft_ready(nd->r, &rd);
        if (rc) {
            violation(s, "n%d raft_ready failed: %s", i + 1, raft_strerror(rc));
            return;
        }
        struct snap install = {0};
        if (rd.snapshot.index) {
            /* Install the received snapshot: the state machine is restored from it now; the
             * stored snapshot and log are replaced when this write is durable. */
            if (rd.snapshot.index != nd->rx.index || rd.snapshot.term != nd->rx.term)
                violation(s, "n%d installs snapshot %llu/%llu but received %llu/%llu", i + 1,
                          (unsigned long long)rd.snapshot.index,
                          (unsigned long long)rd.snapshot.term, (unsigned long long)nd->rx.index,
                          (unsigned long long)nd->rx.term);
            install = nd->rx;
            s->st.snapshots_installed++;
            check_snapshot(s, i, &install, "installs");
            trace(s, "n%d installs snapshot %llu/%llu", i + 1,
                  (unsigned long long)install.index, (unsigned long long)install.term);
            nd->applied = install.index;
            nd->chain = install.chain;
            nd->msnap = install;
            view_reset_at(s, i, install.index, install.term);
        }
        if (rd.persist_seq) {
            if (rd.truncate_from) {
                if (rd.role == RAFT_LEADER)
                    violation(s, "Leader Append-Only: leader n%d truncates its log from %llu",
                              i + 1, (unsigned long long)rd.truncate_from);
                if (rd.truncate_from - 1 < nd->vn)
                    nd->vn = rd.truncate_from - 1;
                trace(s, "n%d truncate from %llu", i + 1, (unsigned long long)rd.truncate_from);
            }
            for (size_t k = 0; k < rd.n_entries; k++)
                view_append(s, i, &rd.entries[k]);
            GROW(nd->w, nd->wcap, nd->wn + 1);
            struct write *w = &nd->w[nd->wn++];
            uint64_t due = s->now + rnd_range(s, s->o.disk_min, s->o.disk_max);
            if (due < nd->last_due)
                due = nd->last_due; /* one disk: writes finish in order */
            if (due < nd->stall_until)
                due = nd->stall_until;
            nd->last_due = due;
            *w = (struct write){rd.persist_seq, due,    install,    rd.hs_changed, rd.hs,
                                rd.truncate_from, rd.entries, rd.n_entries};
            rd.entries = NULL; /* the write owns them now */
            rd.n_entries = 0;
        }
        for (size_t k = 0; k < rd.n_msgs; k++)
            net_send(s, &rd.msgs[k]);
        for (size_t k = 0; k < rd.n_committed; k++) {
            const struct raft_entry *e = &rd.committed[k];
            if (e->index != nd->applied + 1)
                violation(s, "n%d applies %llu after %llu", i + 1, (unsigned long long)e->index,
                          (unsigned long long)nd->applied);
            /* State Machine Safety: no two nodes apply different entries at one index. */
            struct gslot *g = gslot(&s->applied, &s->acap, e->index);
            uint64_t h = entry_hash(e);
            nd->chain = mix64(nd->chain ^ h);
            if (!g->set)
                *g = (struct gslot){true, e->term, h, entry_value(e), 0, nd->chain};
            else if (g->term != e->term || g->hash != h || g->chain != nd->chain)
                violation(s, "State Machine Safety: n%d applies term %llu at %llu, another node "
                          "applied term %llu (or a different history before it)", i + 1,
                          (unsigned long long)e->term, (unsigned long long)e->index,
                          (unsigned long long)g->term);
            nd->applied = e->index;
            raft_applied(nd->r, e->index);
        }
        for (size_t k = 0; k < rd.n_read_states; k++)
            read_released(s, i, &rd.read_states[k]);
        if (s->o.trace && rd.n_committed)
            trace(s, "n%d applies %llu..%llu", i + 1, (unsigned long long)rd.committed[0].index,
                  (unsigned long long)rd.committed[rd.n_committed - 1].index);
        raft_advance(nd->r, &rd);
    }
    check_node(s, i);
}

static void write_free(struct write *w)
{
    for (size_t k = 0; k < w->n; k++)
        free(w->e[k].data);
    free(w->e);
    w->e = NULL;
}

/* A storage write became durable: apply it to the node's "disk", then tell the core. */
static void disk_complete(struct sim *s, int i)
{
    struct node *nd = &s->nodes[i];
    struct write w = nd->w[0];
    memmove(nd->w, nd->w + 1, (nd->wn - 1) * sizeof(*nd->w));
    nd->wn--;
    if (w.install.index) {
        nd->dsnap = w.install;
        for (size_t k = 0; k < nd->dn; k++)
            free(nd->dlog[k].data);
        nd->dn = 0;
        nd->doff = w.install.index;
        nd->doff_term = w.install.term;
    }
    if (w.hs_changed)
        nd->dhs = w.hs;
    if (w.trunc) {
        while (nd->dn && nd->doff + nd->dn >= w.trunc) {
            free(nd->dlog[nd->dn - 1].data);
            nd->dn--;
        }
    }
    GROW(nd->dlog, nd->dcap, nd->dn + w.n);
    for (size_t k = 0; k < w.n; k++) {
        nd->dlog[nd->dn++] = w.e[k];
        w.e[k].data = NULL;
    }
    write_free(&w);
    int rc = raft_persisted(nd->r, w.seq);
    if (rc)
        violation(s, "n%d raft_persisted(%llu): %s", i + 1, (unsigned long long)w.seq,
                  raft_strerror(rc));
    process_ready(s, i);
}

static void start_node(struct sim *s, int i)
{
    struct node *nd = &s->nodes[i];
    uint64_t peers[SIM_MAX_NODES];
    for (int k = 0; k < s->o.nodes; k++) /* spares start outside the configuration */
        peers[k] = sim_id(k);
    struct raft_config c;
    raft_config_default(&c);
    c.id = sim_id(i);
    c.peers = peers;
    c.n_peers = (size_t)s->o.nodes;
    c.seed = rnd(s);
    c.pre_vote = s->o.pre_vote;
    c.check_quorum = s->o.check_quorum;
    c.election_tick = s->o.election_tick;
    c.heartbeat_tick = s->o.heartbeat_tick;
    c.max_append_entries = s->o.max_append_entries;
    c.max_inflight_msgs = s->o.max_inflight_msgs;
    if (s->o.trace) {
        c.trace = core_trace;
        c.trace_arg = s;
    }
    struct raft_restore rs = {.hs = nd->dhs,
                              .entries = nd->dlog,
                              .n_entries = nd->dn,
                              .snapshot_index = nd->dsnap.index,
                              .snapshot_term = nd->dsnap.term,
                              .conf = nd->dsnap.conf_len ? nd->dsnap.conf : NULL,
                              .conf_len = nd->dsnap.conf_len};
    int rc = raft_new(&c, &rs, &nd->r);
    if (rc) {
        violation(s, "n%d raft_new: %s", i + 1, raft_strerror(rc));
        nd->r = NULL;
        nd->up = false;
        return;
    }
    nd->up = true;
    /* The state machine is volatile: restored from the stored snapshot, then the log replays. */
    nd->applied = nd->dsnap.index;
    nd->chain = nd->dsnap.chain;
    nd->msnap = nd->dsnap;
    nd->rx = (struct snap){0};
    nd->seen_commit = nd->dsnap.index;
    nd->lead_term = 0;
    nd->conf_seen = 0;
    nd->last_due = 0;
    nd->stall_until = nd->crash_at = nd->restart_at = 0;
    view_rebuild(s, i);
    nd->phase = rnd_range(s, 0, s->o.tick_ms - 1);
}

struct sim *sim_new(const struct sim_opts *o)
{
    if (o->nodes < 1 || o->spares < 0 || o->nodes + o->spares > SIM_MAX_NODES)
        return NULL;
    struct sim *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->o = *o;
    if (!s->o.tick_ms)
        s->o.tick_ms = 10;
    s->n = o->nodes + o->spares;
    s->rng = mix64(o->seed + 0x5151);
    for (int i = 0; i < s->n; i++)
        start_node(s, i);
    return s;
}

static void stop_node(struct sim *s, int i)
{
    struct node *nd = &s->nodes[i];
    raft_free(nd->r);
    nd->r = NULL;
    nd->up = false;
    for (size_t k = 0; k < nd->wn; k++)
        write_free(&nd->w[k]);
    nd->wn = 0;
}

void sim_free(struct sim *s)
{
    if (!s)
        return;
    for (int i = 0; i < s->n; i++) {
        struct node *nd = &s->nodes[i];
        stop_node(s, i);
        for (size_t k = 0; k < nd->dn; k++)
            free(nd->dlog[k].data);
        free(nd->dlog);
        free(nd->w);
        free(nd->vterm);
        free(nd->vprefix);
    }
    for (size_t k = 0; k < s->nn; k++)
        msg_free(&s->net[k].m);
    free(s->net);
    free(s->due);
    for (size_t k = 0; k < s->lmcap; k++)
        free(s->lm[k].v);
    free(s->lm);
    free(s->leader_of);
    free(s->committed);
    free(s->applied);
    free(s->reads);
    free(s);
}

/* ---- time ---- */

static void deliver(struct sim *s, struct netmsg *nm)
{
    struct raft_msg *m = &nm->m;
    int a = (int)m->from - 1, b = (int)m->to - 1;
    if (nm->report) {
        if (s->nodes[a].up) {
            trace(s, "n%d: the snapshot sent to n%d was %s", a + 1, b + 1,
                  m->granted ? "delivered" : "lost");
            raft_report_snapshot(s->nodes[a].r, m->to, m->granted);
            process_ready(s, a);
        }
        return;
    }
    if (!connected(s, a, b)) {
        s->st.dropped++;
        snapshot_report(s, m, false);
        return;
    }
    if (m->type == RAFT_MSG_SNAPSHOT) {
        s->nodes[b].rx = nm->snap; /* the whole snapshot arrived and checks out */
        s->st.snapshots_delivered++;
        snapshot_report(s, m, true);
    }
    s->st.delivered++;
    if (m->type == RAFT_MSG_APPEND_RESP && m->reject)
        s->st.append_rejects++;
    int rc = raft_step(s->nodes[b].r, m);
    if (rc == RAFT_EUNKNOWN) {
        /* An answer from a node the receiver's configuration no longer (or not yet) holds: a
         * removed member's late acknowledgement. Dropped, as it must be. */
        struct raft_conf c;
        raft_conf_get(s->nodes[b].r, &c, NULL, NULL);
        if (!raft_conf_is_member(&c, m->from))
            rc = 0;
    }
    if (rc) {
        /* Every message here comes from a correct peer: the core must accept it. */
        char d[128];
        describe(d, sizeof(d), m);
        violation(s, "n%d rejected %s from n%d (term %llu %s): %s", b + 1,
                  raft_msg_type_name(m->type), a + 1, (unsigned long long)m->term, d,
                  raft_strerror(rc));
    }
    process_ready(s, b);
}

static void step_ms(struct sim *s)
{
    s->now++;
    /* Network: deliver what is due in send order (random delays already reorder; equal
     * delays keep FIFO, like a stream). Take them out first: delivering sends more. */
    size_t keep = 0, ndue = 0;
    for (size_t k = 0; k < s->nn; k++) {
        if (s->net[k].due <= s->now) {
            GROW(s->due, s->duecap, ndue + 1);
            s->due[ndue++] = s->net[k];
        } else {
            s->net[keep++] = s->net[k];
        }
    }
    s->nn = keep;
    for (size_t k = 0; k < ndue; k++) {
        deliver(s, &s->due[k]);
        msg_free(&s->due[k].m);
    }
    for (int i = 0; i < s->n; i++) {
        struct node *nd = &s->nodes[i];
        if (nd->up && nd->crash_at && nd->crash_at <= s->now)
            sim_crash(s, i);
        if (!nd->up && nd->restart_at && nd->restart_at <= s->now)
            sim_restart(s, i);
        while (nd->up && nd->wn && nd->w[0].due <= s->now)
            disk_complete(s, i);
    }
    for (int i = 0; i < s->n; i++) {
        struct node *nd = &s->nodes[i];
        if (nd->up && (s->now + nd->phase) % s->o.tick_ms == 0) {
            raft_tick(nd->r);
            process_ready(s, i);
        }
    }
}

uint64_t sim_now(const struct sim *s)
{
    return s->now;
}

void sim_run(struct sim *s, uint64_t ms)
{
    for (uint64_t k = 0; k < ms; k++)
        step_ms(s);
}

struct raft *sim_raft(struct sim *s, int i)
{
    return s->nodes[i].up ? s->nodes[i].r : NULL;
}

/* ---- faults ---- */

void sim_disconnect(struct sim *s, int i)
{
    s->nodes[i].group = 100 + i;
    trace(s, "n%d disconnected", i + 1);
}

void sim_connect(struct sim *s, int i)
{
    s->nodes[i].group = 0;
    trace(s, "n%d connected", i + 1);
}

void sim_partition(struct sim *s, const int *groups)
{
    for (int i = 0; i < s->n; i++)
        s->nodes[i].group = groups[i];
    if (s->o.trace) {
        char buf[128];
        int k = 0;
        for (int i = 0; i < s->n; i++)
            k += snprintf(buf + k, sizeof(buf) - (size_t)k, " n%d:%d", i + 1, groups[i]);
        trace(s, "partition%s", buf);
    }
}

void sim_heal(struct sim *s)
{
    for (int i = 0; i < s->n; i++)
        s->nodes[i].group = 0;
    trace(s, "network healed");
}

bool sim_connected(const struct sim *s, int i)
{
    return s->nodes[i].group == 0;
}

void sim_crash(struct sim *s, int i)
{
    if (!s->nodes[i].up)
        return;
    trace(s, "n%d CRASH (%zu unpersisted writes lost)", i + 1, s->nodes[i].wn);
    stop_node(s, i);
    for (size_t k = 0; k < s->nreads; k++) /* its reads die with it (a client sees an error) */
        if (s->reads[k].node == i)
            s->reads[k].settled = true;
}

void sim_power_cut(struct sim *s, int i, unsigned stall_ms, unsigned after_ms, unsigned down_ms)
{
    struct node *nd = &s->nodes[i];
    if (!nd->up)
        return;
    if (nd->stall_until < s->now + stall_ms)
        nd->stall_until = s->now + stall_ms;
    for (size_t k = 0; k < nd->wn; k++) /* what is pending now waits for the disk too */
        if (nd->w[k].due < nd->stall_until)
            nd->w[k].due = nd->stall_until;
    nd->crash_at = s->now + after_ms;
    nd->restart_at = nd->crash_at + down_ms + 1;
    trace(s, "n%d disk stalls for %u ms, power lost in %u ms for %u ms", i + 1, stall_ms,
          after_ms, down_ms + 1);
}

void sim_restart(struct sim *s, int i)
{
    if (s->nodes[i].up)
        return;
    start_node(s, i);
    trace(s, "n%d restart term=%llu vote=%llu log=%zu", i + 1,
          (unsigned long long)s->nodes[i].dhs.term, (unsigned long long)s->nodes[i].dhs.voted_for,
          s->nodes[i].dn);
}

bool sim_up(const struct sim *s, int i)
{
    return s->nodes[i].up;
}

void sim_set_unreliable(struct sim *s, bool on)
{
    s->o.drop = on ? 0.1 : 0;
    s->o.dup = on ? 0.05 : 0;
    s->o.max_delay = on ? 27 : 5;
}

/* ---- queries and helpers for tests ---- */

int sim_leader(struct sim *s)
{
    int best = -1;
    uint64_t bt = 0;
    for (int i = 0; i < s->n; i++) {
        if (!s->nodes[i].up)
            continue;
        struct raft_status st;
        raft_status_get(s->nodes[i].r, &st);
        if (st.role == RAFT_LEADER && st.term >= bt) {
            best = i;
            bt = st.term;
        }
    }
    return best;
}

int sim_compact(struct sim *s, int i, uint64_t index, uint64_t catchup)
{
    struct node *nd = &s->nodes[i];
    if (!nd->up)
        return RAFT_ESTATE;
    if (!index)
        index = nd->applied;
    /* A snapshot is taken of applied state with the disk idle, so the stored log and snapshot
     * change in the order a real node's would (no earlier write still pending behind it). A
     * request past the applied index goes to the core regardless: it must refuse it. */
    if (index <= nd->msnap.index || (nd->wn && index <= nd->applied))
        return RAFT_ESTATE;
    struct raft_status st;
    raft_status_get(nd->r, &st);
    uint64_t first_kept = index + 1 > catchup ? index + 1 - catchup : 1;
    if (first_kept < st.first_index)
        first_kept = st.first_index;
    /* The snapshot records the configuration in force at its index (written before the core
     * compacts, as a real node does). */
    struct snap taken = {0};
    uint32_t clen = 0;
    const uint8_t *cb = index <= st.last_index ? raft_conf_blob_at(nd->r, index, &clen) : NULL;
    if (cb && clen <= sizeof(taken.conf)) {
        memcpy(taken.conf, cb, clen);
        taken.conf_len = clen;
    }
    int rc = raft_compact(nd->r, index, first_kept);
    trace(s, "n%d snapshot at %llu, log kept from %llu: %s", i + 1, (unsigned long long)index,
          (unsigned long long)first_kept, raft_strerror(rc));
    if (rc)
        return rc;
    raft_status_get(nd->r, &st);
    s->st.snapshots_taken++;
    taken.index = index;
    taken.term = st.snapshot_term;
    taken.chain = nd->chain;
    nd->msnap = taken;
    check_snapshot(s, i, &nd->msnap, "takes");
    nd->dsnap = nd->msnap; /* written and synced before the log drops anything */
    /* The stored log drops what the core dropped. */
    size_t drop = first_kept - 1 > nd->doff ? (size_t)(first_kept - 1 - nd->doff) : 0;
    if (drop > nd->dn)
        drop = nd->dn;
    if (drop) {
        nd->doff_term = nd->dlog[drop - 1].term;
        for (size_t k = 0; k < drop; k++)
            free(nd->dlog[k].data);
        memmove(nd->dlog, nd->dlog + drop, (nd->dn - drop) * sizeof(*nd->dlog));
        nd->dn -= drop;
        nd->doff += drop;
    }
    process_ready(s, i);
    return 0;
}

int sim_size(const struct sim *s)
{
    return s->n;
}

int sim_change(struct sim *s, int i, const struct raft_conf *target)
{
    if (!s->nodes[i].up)
        return RAFT_ESTATE;
    uint64_t index = 0;
    int rc = raft_propose_conf(s->nodes[i].r, target, NULL, 0, &index, NULL, NULL);
    if (s->o.trace) {
        char buf[160];
        int k = 0;
        for (uint32_t v = 0; v < target->n_voters; v++)
            k += snprintf(buf + k, sizeof(buf) - (size_t)k, " n%llu",
                          (unsigned long long)target->voters[v]);
        k += snprintf(buf + k, sizeof(buf) - (size_t)k, " learners:");
        for (uint32_t v = 0; v < target->n_learners; v++)
            k += snprintf(buf + k, sizeof(buf) - (size_t)k, " n%llu",
                          (unsigned long long)target->learners[v]);
        trace(s, "n%d proposes configuration voters:%s at %llu: %s", i + 1, buf,
              (unsigned long long)index, raft_strerror(rc));
    }
    if (rc == 0)
        s->st.conf_proposed++;
    process_ready(s, i);
    return rc;
}

int sim_transfer(struct sim *s, int from, int to)
{
    if (!s->nodes[from].up)
        return RAFT_ESTATE;
    int rc = raft_transfer_leader(s->nodes[from].r, sim_id(to));
    trace(s, "n%d transfer leadership to n%d: %s", from + 1, to + 1, raft_strerror(rc));
    process_ready(s, from);
    return rc;
}

int sim_count_leaders(struct sim *s)
{
    int cnt = 0;
    for (int i = 0; i < s->n; i++) {
        if (!s->nodes[i].up || s->nodes[i].group != 0)
            continue;
        struct raft_status st;
        raft_status_get(s->nodes[i].r, &st);
        cnt += st.role == RAFT_LEADER;
    }
    return cnt;
}

uint64_t sim_max_term(struct sim *s)
{
    uint64_t t = 0;
    for (int i = 0; i < s->n; i++) {
        if (!s->nodes[i].up)
            continue;
        struct raft_status st;
        raft_status_get(s->nodes[i].r, &st);
        if (st.term > t)
            t = st.term;
    }
    return t;
}

int sim_wait_leader(struct sim *s, uint64_t max_ms)
{
    for (uint64_t waited = 0; waited <= max_ms; waited += 50) {
        int cnt = 0, who = -1;
        uint64_t lt = 0;
        for (int i = 0; i < s->n; i++) {
            if (!s->nodes[i].up || s->nodes[i].group != 0)
                continue;
            struct raft_status st;
            raft_status_get(s->nodes[i].r, &st);
            if (st.role == RAFT_LEADER) {
                if (!cnt || st.term > lt) {
                    who = i;
                    lt = st.term;
                }
                cnt++;
            }
        }
        if (cnt == 1)
            return who;
        sim_run(s, 50);
    }
    return -1;
}

int sim_propose(struct sim *s, int i, uint64_t value, uint64_t *index)
{
    if (!s->nodes[i].up)
        return RAFT_ESTATE;
    int rc = raft_propose(s->nodes[i].r, RAFT_ENTRY_NORMAL, &value, sizeof(value), index, NULL,
                          NULL);
    if (rc == 0)
        trace(s, "n%d accepts proposal value=%llu", i + 1, (unsigned long long)value);
    process_ready(s, i);
    return rc;
}

int sim_read(struct sim *s, int i, uint64_t *ctx)
{
    if (!s->nodes[i].up)
        return RAFT_ESTATE;
    uint64_t c = s->nreads + 1;
    int rc = raft_read_index(s->nodes[i].r, c);
    if (rc == 0) {
        GROW(s->reads, s->rcap, s->nreads + 1);
        s->reads[s->nreads++] = (struct simread){i, s->now, global_commit(s), false, 0};
        s->st.reads_started++;
        trace(s, "n%d read %llu starts (needs >= %llu)", i + 1, (unsigned long long)c,
              (unsigned long long)s->reads[s->nreads - 1].min_index);
        if (ctx)
            *ctx = c;
    }
    process_ready(s, i);
    return rc;
}

int sim_read_state(const struct sim *s, uint64_t ctx, uint64_t *index)
{
    if (ctx == 0 || ctx > s->nreads)
        return -1;
    if (index)
        *index = s->reads[ctx - 1].index;
    return s->reads[ctx - 1].settled;
}

/* Every read accepted must settle within an election timeout of ticks (plus slack): a read that
 * hangs would hang its client. */
static void check_reads_settle(struct sim *s)
{
    uint64_t bound = (uint64_t)(s->o.election_tick + 3) * s->o.tick_ms;
    for (size_t k = 0; k < s->nreads; k++) {
        struct simread *rd = &s->reads[k];
        if (!rd->settled && s->now - rd->start > bound) {
            violation(s, "read %zu on n%d started at t=%llu never settled", k + 1, rd->node + 1,
                      (unsigned long long)rd->start);
            rd->settled = true;
        }
    }
}

int sim_n_applied(struct sim *s, uint64_t index, uint64_t *value)
{
    int cnt = 0;
    for (int i = 0; i < s->n; i++)
        cnt += s->nodes[i].applied >= index;
    if (value)
        *value = index < s->acap && s->applied[index].set ? s->applied[index].value : 0;
    return cnt;
}

uint64_t sim_one(struct sim *s, uint64_t value, int expected, bool retry, uint64_t max_ms)
{
    uint64_t start = s->now;
    int starts = 0;
    while (s->now - start < max_ms) {
        uint64_t index = 0;
        for (int k = 0; k < s->n; k++) {
            int i = (starts + k) % s->n;
            if (s->nodes[i].up && sim_propose(s, i, value, &index) == 0)
                break;
            index = 0;
        }
        starts++;
        if (index) {
            uint64_t t0 = s->now;
            while (s->now - t0 < 2000 && s->now - start < max_ms) {
                uint64_t v;
                if (sim_n_applied(s, index, &v) >= expected && v == value)
                    return index;
                sim_run(s, 20);
            }
            if (!retry)
                return 0;
        } else {
            sim_run(s, 50);
        }
    }
    return 0;
}

const struct sim_stats *sim_stats(const struct sim *s)
{
    return &s->st;
}

int sim_violations(const struct sim *s)
{
    return s->violations;
}

const char *sim_violation(const struct sim *s)
{
    return s->violations ? s->vmsg : "";
}

/* ---- the randomized run ---- */

/* A random change at leader l: add a node as voter or learner, remove a member, promote a
 * learner, or replace a voter (one joint change that adds one voter and removes another). The
 * core refuses some (a change already in flight, a voter turned learner): that is part of it. */
static void change_random(struct sim *s, int l)
{
    struct raft_conf c;
    raft_conf_get(s->nodes[l].r, &c, NULL, NULL);
    c.n_old = 0; /* a joint configuration's target; proposing from it must be refused */
    int outside[SIM_MAX_NODES], no = 0;
    for (int k = 0; k < s->n; k++)
        if (!raft_conf_is_member(&c, sim_id(k)))
            outside[no++] = k;
    uint64_t op = rnd(s) % 6;
    if ((op <= 1 || op == 4) && no) {
        uint64_t id = sim_id(outside[rnd(s) % (uint64_t)no]);
        if (op == 1)
            c.learners[c.n_learners++] = id;
        else
            c.voters[c.n_voters++] = id;
        if (op == 4 && c.n_voters > 1) { /* replace: drop another voter in the same change */
            uint32_t v = (uint32_t)(rnd(s) % (c.n_voters - 1));
            c.voters[v] = c.voters[--c.n_voters];
        }
    } else if (op == 2 && c.n_voters > 1) {
        uint32_t v = (uint32_t)(rnd(s) % c.n_voters);
        c.voters[v] = c.voters[--c.n_voters];
    } else if (op == 3 && c.n_learners) {
        uint32_t v = (uint32_t)(rnd(s) % c.n_learners);
        c.voters[c.n_voters++] = c.learners[v]; /* promote */
        c.learners[v] = c.learners[--c.n_learners];
    } else if (op == 5 && c.n_learners) {
        uint32_t v = (uint32_t)(rnd(s) % c.n_learners);
        c.learners[v] = c.learners[--c.n_learners];
    } else if (c.n_voters > 1 && chance(s, 0.3)) {
        /* An invalid one: a voter turned learner (refused, nothing changes). */
        c.learners[c.n_learners++] = c.voters[0];
        c.voters[0] = c.voters[--c.n_voters];
    }
    sim_change(s, l, &c);
}

/* Leader l's configuration is final (not joint, committed) and every member applied index with
 * value. */
static bool members_applied(struct sim *s, int l, uint64_t index, uint64_t value)
{
    struct raft_conf c;
    uint64_t ci;
    bool committed;
    raft_conf_get(s->nodes[l].r, &c, &ci, &committed);
    if (c.n_old || !committed || index >= s->acap || !s->applied[index].set ||
        s->applied[index].value != value)
        return false;
    for (int k = 0; k < s->n; k++)
        if (raft_conf_is_member(&c, sim_id(k)) && s->nodes[k].applied < index)
            return false;
    return true;
}

static int chaos(int nodes, uint64_t seed, bool members, FILE *tr, char *msg, size_t msglen,
                 struct sim_stats *stats)
{
    struct sim_opts o;
    sim_opts_default(&o, nodes, seed);
    o.trace = tr;
    if (members)
        o.spares = nodes + 2 <= SIM_MAX_NODES ? 2 : SIM_MAX_NODES - nodes;
    uint64_t pick = mix64(seed ^ 0xC4A05ull);
    /* Vary the fault mix per seed so the seeds cover calm and harsh networks. */
    static const double drops[] = {0, 0.02, 0.1, 0.25};
    static const double dups[] = {0, 0.05};
    static const unsigned delays[] = {3, 10, 30};
    o.drop = drops[pick % 4];
    o.dup = dups[(pick >> 8) % 2];
    o.max_delay = delays[(pick >> 16) % 3];
    o.pre_vote = ((pick >> 24) % 4) != 0; /* a quarter of the runs without pre-vote */
    o.check_quorum = ((pick >> 32) % 4) != 0;
    static const uint32_t batch[] = {64, 4, 1, 1};
    o.max_append_entries = batch[(pick >> 40) % 4];
    /* A tiny window only with real batches, so catching up after healing stays well inside
     * the liveness bound. */
    o.max_inflight_msgs = ((pick >> 48) % 2) || o.max_append_entries == 1 ? 64 : 2;
    o.disk_max = ((pick >> 56) % 2) ? 3 : 25; /* slow disks: crashes lose more */
    static const unsigned evs[] = {20, 50, 100};
    unsigned ev = evs[(pick >> 60) % 3]; /* ms between fault decisions */
    struct sim *s = sim_new(&o);
    if (!s) {
        snprintf(msg, msglen, "bad options");
        return 1;
    }
    nodes = s->n; /* faults and the workload reach the spares too */
    if (tr)
        fprintf(tr, "seed=%llu nodes=%d drop=%.2f dup=%.2f delay=1..%u pre_vote=%d "
                    "check_quorum=%d max_append=%u max_inflight=%u disk=1..%u faults every %u ms\n",
                (unsigned long long)seed, nodes, o.drop, o.dup, o.max_delay, o.pre_vote,
                o.check_quorum, o.max_append_entries, o.max_inflight_msgs, o.disk_max, ev);

    const uint64_t chaos_ms = 6000, live_bound = 10000;
    uint64_t value = 1000;
    while (s->now < chaos_ms && !s->violations) {
        step_ms(s);
        if (chance(s, 1.0 / 6)) {
            /* Workload: mostly to the leader (so logs grow, and diverge when it is cut off),
             * sometimes to a random node (exercising the not-leader path). */
            int i = sim_leader(s);
            if (i < 0 || chance(s, 0.2))
                i = (int)(rnd(s) % (uint64_t)nodes);
            if (s->nodes[i].up)
                sim_propose(s, i, value++, NULL);
        }
        if (chance(s, 1.0 / 8)) {
            /* Reads, on the leader or anywhere (a follower asks its leader). */
            int i = sim_leader(s);
            if (i < 0 || chance(s, 0.5))
                i = (int)(rnd(s) % (uint64_t)nodes);
            if (s->nodes[i].up)
                sim_read(s, i, NULL);
        }
        if (s->now % 100 == 0)
            check_reads_settle(s);
        if (s->now % ev == 0) {
            /* Faults. Crashing or cutting off the leader right after it accepted entries is what
             * builds the mixed-term logs of Figure 8. */
            uint64_t r = rnd(s) % 100;
            int i = (int)(rnd(s) % (uint64_t)nodes), l = sim_leader(s);
            if (r < 8)
                sim_crash(s, i);
            else if (r < 14 && l >= 0)
                sim_crash(s, l);
            else if (r < 32)
                sim_restart(s, i);
            else if (r < 38) {
                int g[SIM_MAX_NODES];
                for (int k = 0; k < nodes; k++)
                    g[k] = (int)(rnd(s) % 2);
                sim_partition(s, g);
            } else if (r < 44 && l >= 0)
                sim_disconnect(s, l);
            else if (r < 54)
                sim_heal(s);
            else if (r < 56 && l >= 0)
                sim_transfer(s, l, i);
            else if (r < 68) {
                /* Snapshots and log compaction, on the leader as often as anywhere else, with
                 * none, a few or many entries kept for catching up: a follower that was down
                 * or cut off then needs a snapshot, or entries, or both. */
                static const uint64_t keep[] = {0, 3, 30};
                int who = r < 62 && l >= 0 ? l : i;
                /* Now and then ask at the commit index, which may not be applied yet: the core
                 * must refuse to drop what the state machine has not got. */
                uint64_t at = 0;
                if (r >= 66 && s->nodes[who].up) {
                    struct raft_status st;
                    raft_status_get(s->nodes[who].r, &st);
                    at = st.commit_index;
                }
                sim_compact(s, who, at, keep[rnd(s) % 3]);
            } else if (members && r < 78 && l >= 0) {
                change_random(s, l);
            } else if (r >= 92 && l >= 0) {
                /* Power loss on the leader while its disk is slow, and at the same instant on
                 * some followers whose disks are slow too (one rack): the others store and
                 * ack what the leader sent; the leader's copy and theirs are still unsynced
                 * when the power goes. Usually a bare minority of the followers, so that those
                 * who stored an entry are exactly the quorum that committed it. */
                unsigned stall = rnd_range(s, 10, 120), after = rnd_range(s, 5, stall - 1);
                sim_power_cut(s, l, stall, after, rnd_range(s, 0, 100));
                int want = chance(s, 0.75) ? (nodes - 1) / 2 : (int)(rnd(s) % (uint64_t)nodes);
                for (int k = 0; k < 4 * nodes && want > 0; k++) {
                    int j = (int)(rnd(s) % (uint64_t)nodes);
                    if (s->nodes[j].up && !s->nodes[j].crash_at) {
                        sim_power_cut(s, j, stall, after, rnd_range(s, 0, 100));
                        want--;
                    }
                }
                /* Half the time the whole cluster loses power (the others' disks keep up, so
                 * they lose little), and all come back in a random order. */
                if (chance(s, 0.5))
                    for (int j = 0; j < nodes; j++)
                        if (s->nodes[j].up && !s->nodes[j].crash_at)
                            sim_power_cut(s, j, 0, after, rnd_range(s, 0, 100));
            }
        }
    }

    /* Heal everything; a leader must emerge and a new entry commit everywhere in bounded time. */
    if (!s->violations) {
        for (int i = 0; i < nodes; i++) {
            s->nodes[i].crash_at = s->nodes[i].restart_at = 0; /* no power cut still armed */
            sim_restart(s, i);
        }
        sim_heal(s);
        s->o.drop = 0;
        s->o.dup = 0;
        trace(s, "chaos over: all nodes up, network healed and reliable");
        uint64_t healed = s->now, index = 0, live = 0xFEEDull << 32 | (seed & 0xFFFFFFFF);
        bool ok = false;
        while (s->now - healed < live_bound && !s->violations) {
            step_ms(s);
            uint64_t v;
            int l = members ? sim_leader(s) : -1;
            if (members ? index && l >= 0 && members_applied(s, l, index, live)
                        : index && sim_n_applied(s, index, &v) == nodes && v == live) {
                ok = true;
                break;
            }
            /* (Re)submit when nothing of ours is pending at the current leader. */
            if (s->now % 20 == 0) {
                int l = sim_leader(s);
                bool lost = index && sim_n_applied(s, index, &v) > 0 && v != live;
                if (l >= 0 && (!index || lost || s->now % 500 == 0)) {
                    uint64_t idx;
                    if (sim_propose(s, l, live, &idx) == 0)
                        index = idx;
                }
            }
        }
        if (!ok && !s->violations)
            violation(s, "liveness: no new entry committed on all %s within %llu ms of healing",
                      members ? "members of a final configuration" : "nodes",
                      (unsigned long long)live_bound);
        struct raft_conf fin = {0};
        int fl = sim_leader(s);
        if (fl >= 0)
            raft_conf_get(s->nodes[fl].r, &fin, NULL, NULL);
        /* Healed and stable: a read on every node succeeds (retried if a round fails), and
         * nothing stays pending. */
        for (int i = 0; i < nodes && ok && !s->violations; i++) {
            if (members && !raft_conf_is_member(&fin, sim_id(i)))
                continue; /* a removed or never added node has no leader to ask */
            uint64_t t0 = s->now;
            bool done = false;
            while (!done && s->now - t0 < 3000 && !s->violations) {
                uint64_t ctx = 0;
                if (sim_read(s, i, &ctx) != 0) {
                    sim_run(s, 20);
                    continue;
                }
                while (sim_read_state(s, ctx, NULL) == 0 && s->now - t0 < 3000)
                    step_ms(s);
                done = s->reads[ctx - 1].settled && s->reads[ctx - 1].index;
            }
            if (!done && !s->violations)
                violation(s, "liveness: no read succeeded on n%d within 3000 ms of a stable "
                             "cluster", i + 1);
        }
        sim_run(s, (uint64_t)(s->o.election_tick + 4) * s->o.tick_ms);
        check_reads_settle(s);
    }
    int bad = s->violations > 0;
    snprintf(msg, msglen, "%s", bad ? s->vmsg : "ok");
    if (stats)
        *stats = s->st;
    sim_free(s);
    return bad;
}

int sim_chaos(int nodes, uint64_t seed, FILE *tr, char *msg, size_t msglen,
              struct sim_stats *stats)
{
    return chaos(nodes, seed, false, tr, msg, msglen, stats);
}

int sim_chaos_members(int nodes, uint64_t seed, FILE *tr, char *msg, size_t msglen,
                      struct sim_stats *stats)
{
    return chaos(nodes, seed, true, tr, msg, msglen, stats);
}
