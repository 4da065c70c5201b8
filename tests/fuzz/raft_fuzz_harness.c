/* raft_fuzz_harness.c: see raft_fuzz_harness.h. Operations (opcode byte % 11, then operands):
 *
 *   0 deliver      the caller's (a message built or decoded from the following bytes)
 *   1 tick         n: 1 + n % 32 ticks
 *   2 persist      k: the oldest 1 + k % 8 pending writes become durable (raft_persisted)
 *   3 propose      len, data: a command of len % 48 bytes
 *   4 conf         voters, learners: raft_propose_conf over ids 1..8 (fz_conf_blob's masks)
 *   5 restart      k: k % (pending + 1) pending writes reach the disk, the rest are lost; the
 *                  core is rebuilt from the disk (raft_new with raft_restore)
 *   6 compact      rel(applied), rel(snapshot + 1): raft_compact, and the disk keeps the snapshot
 *   7 read         ctx: raft_read_index
 *   8 campaign     raft_campaign
 *   9 transfer     peer: raft_transfer_leader(peer % (members + 2))
 *  10 report       peer, ok: raft_report_snapshot
 *
 * After every operation the readies are taken as a runtime would (storage work queued as a
 * pending write, committed entries applied, messages checked and dropped), then the invariants:
 * the term never decreases (nor, across restarts, the durable term); the durable hard state
 * never changes its vote within a term; a vote grant leaves only once the vote it gives (or a
 * later term) is durable, an append acknowledgement only once what it acknowledges is; the commit index never
 * decreases while the core lives and never passes its last index; the applied index stays at or
 * below it; entries are applied in order, only once durable; storage work is contiguous and
 * never truncates at or below the commit index; entries at or below the commit index never
 * change; the core restarts from whatever it persisted. */
#include "tests/fuzz/raft_fuzz_harness.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FZ_SELF 1
#define FZ_MAX_PENDING 256 /* writes not yet durable; more are forced durable (memory bound) */
#define FZ_MAX_READY_LOOPS 1000

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "raft fuzz: invariant violated: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    abort();
}

/* ---- input ---- */

uint8_t fz_u8(struct fz_in *in)
{
    if (!in->n)
        return 0;
    in->n--;
    return *in->p++;
}

uint64_t fz_u64(struct fz_in *in)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)fz_u8(in) << (8 * i);
    return v;
}

uint64_t fz_rel(struct fz_in *in, uint64_t base)
{
    uint8_t b = fz_u8(in);
    if (b == 0xff)
        return fz_u64(in);
    if (b >= 0x80)
        return base + (uint64_t)(b - 0x80); /* wraps only for bases near UINT64_MAX: fine */
    uint64_t down = (uint64_t)(0x80 - b);
    return base > down ? base - down : 0;
}

/* ---- state ---- */

struct fz_disk {
    struct raft_hard_state hs;
    uint64_t snap_index, snap_term;
    uint8_t *conf;
    uint32_t conf_len;
    struct raft_entry *e; /* contiguous */
    size_t n, cap;
};

struct fz_write {
    uint64_t seq;
    uint64_t inst_index, inst_term;
    uint8_t *inst_conf;
    uint32_t inst_conf_len;
    bool hs_changed;
    struct raft_hard_state hs;
    uint64_t trunc;
    struct raft_entry *e;
    size_t n;
};

/* An entry seen at or below the commit index: it must never change while the core lives. */
struct fz_rec {
    uint64_t index, term, hash;
};

struct fz {
    struct raft *r;
    struct raft_config cfg;
    uint64_t peers[8];
    unsigned members;
    struct fz_disk d;
    struct fz_write *w;
    size_t nw;
    uint64_t last_seq;
    /* Invariant state for the current core (reset at restart from the disk). */
    uint64_t term_seen, commit_seen, applied;
    struct raft_hard_state ready_hs;
    struct fz_rec *rec;
    size_t nrec, caprec;
    unsigned ops;
};

void fz_status(const struct fz *f, struct raft_status *st) { raft_status_get(f->r, st); }

uint64_t fz_term_at(const struct fz *f, uint64_t index)
{
    const struct raft_entry *e = raft_log_get(f->r, index);
    return e ? e->term : 0;
}

unsigned fz_members(const struct fz *f) { return f->members; }

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t entry_hash(const struct raft_entry *e)
{
    uint64_t h = mix64(0x5eed + e->type);
    for (uint32_t i = 0; i < e->len; i++)
        h = mix64(h ^ e->data[i]);
    return h;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        abort();
    return p;
}

static void entries_free(struct raft_entry *e, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(e[i].data);
    free(e);
}

uint8_t *fz_conf_blob(uint8_t voters, uint8_t learners, uint8_t old, uint32_t *len)
{
    struct raft_conf c;
    memset(&c, 0, sizeof c);
    if (!voters)
        voters = 1;
    learners &= (uint8_t)~(voters | old);
    for (unsigned i = 0; i < 8; i++) {
        if (voters & (1u << i))
            c.voters[c.n_voters++] = i + 1;
        if (old & (1u << i))
            c.old[c.n_old++] = i + 1;
        if (learners & (1u << i))
            c.learners[c.n_learners++] = i + 1;
    }
    uint8_t *out = NULL;
    if (raft_conf_encode(&c, NULL, 0, &out, len) != 0)
        return NULL;
    return out;
}

/* ---- the disk ---- */

static uint64_t disk_last(const struct fz_disk *d)
{
    return d->n ? d->e[d->n - 1].index : d->snap_index;
}

/* Whether the disk holds entry index of term (a snapshot covers what it names). */
static bool disk_holds(const struct fz_disk *d, uint64_t index, uint64_t term)
{
    if (index <= d->snap_index)
        return true;
    if (!d->n || index < d->e[0].index || index > disk_last(d))
        return false;
    return d->e[index - d->e[0].index].term == term;
}

static void disk_set_hs(struct fz_disk *d, struct raft_hard_state hs)
{
    if (hs.term < d->hs.term)
        fail("durable term goes back from %" PRIu64 " to %" PRIu64, d->hs.term, hs.term);
    if (hs.term == d->hs.term && d->hs.voted_for && hs.voted_for != d->hs.voted_for)
        fail("durable vote in term %" PRIu64 " changes from %" PRIu64 " to %" PRIu64, hs.term,
             d->hs.voted_for, hs.voted_for);
    d->hs = hs;
}

static void disk_truncate(struct fz_disk *d, uint64_t from)
{
    while (d->n && d->e[d->n - 1].index >= from) {
        free(d->e[d->n - 1].data);
        d->n--;
    }
}

/* Write w reaches the disk (takes its entries and configuration). */
static void disk_apply(struct fz_disk *d, struct fz_write *w)
{
    if (w->inst_index) {
        disk_truncate(d, 0);
        d->snap_index = w->inst_index;
        d->snap_term = w->inst_term;
        free(d->conf);
        d->conf = w->inst_conf;
        d->conf_len = w->inst_conf_len;
        w->inst_conf = NULL;
    }
    if (w->hs_changed)
        disk_set_hs(d, w->hs);
    if (w->trunc) {
        if (w->trunc <= d->snap_index)
            fail("storage truncation from %" PRIu64 " reaches into the snapshot at %" PRIu64,
                 w->trunc, d->snap_index);
        disk_truncate(d, w->trunc);
    }
    if (w->n && w->e[0].index != disk_last(d) + 1)
        fail("storage work appends %" PRIu64 " after %" PRIu64, w->e[0].index, disk_last(d));
    if (d->n + w->n > d->cap) {
        d->cap = (d->n + w->n) * 2;
        d->e = realloc(d->e, d->cap * sizeof(*d->e));
        if (!d->e)
            abort();
    }
    for (size_t i = 0; i < w->n; i++) {
        if (w->e[i].term > d->hs.term)
            fail("entry %" PRIu64 " of term %" PRIu64 " stored beyond the durable term %" PRIu64,
                 w->e[i].index, w->e[i].term, d->hs.term);
        d->e[d->n++] = w->e[i];
    }
    free(w->e);
    w->e = NULL;
    w->n = 0;
}

static void write_free(struct fz_write *w)
{
    entries_free(w->e, w->n);
    free(w->inst_conf);
}

/* ---- the core ---- */

static void start_core(struct fz *f)
{
    struct raft_restore rs = {.hs = f->d.hs,
                              .entries = f->d.e,
                              .n_entries = f->d.n,
                              .snapshot_index = f->d.snap_index,
                              .snapshot_term = f->d.snap_term,
                              .conf = f->d.conf,
                              .conf_len = f->d.conf_len};
    int rc = raft_new(&f->cfg, &rs, &f->r);
    if (rc)
        fail("the core cannot restart from what it persisted: %s", raft_strerror(rc));
    f->term_seen = f->d.hs.term;
    f->commit_seen = f->applied = f->d.snap_index;
    f->ready_hs = f->d.hs;
    f->last_seq = 0;
    free(f->rec);
    f->rec = NULL;
    f->nrec = f->caprec = 0;
}

/* Entries up to commit must never change: remember those newly at or below it that the core
 * holds in memory (indices may be huge - a snapshot can name any index - so only held ones). */
static void record_committed(struct fz *f, uint64_t first, uint64_t upto)
{
    uint64_t from = f->commit_seen + 1 > first ? f->commit_seen + 1 : first;
    for (uint64_t i = from; i <= upto; i++) {
        const struct raft_entry *e = raft_log_get(f->r, i);
        if (!e)
            break;
        if (f->nrec == f->caprec) {
            f->caprec = f->caprec ? f->caprec * 2 : 64;
            f->rec = realloc(f->rec, f->caprec * sizeof(*f->rec));
            if (!f->rec)
                abort();
        }
        f->rec[f->nrec++] = (struct fz_rec){i, e->term, entry_hash(e)};
    }
}

/* Compare the remembered entries with the log; forget those the log no longer holds. */
static void verify_committed(struct fz *f)
{
    size_t keep = 0;
    for (size_t k = 0; k < f->nrec; k++) {
        const struct raft_entry *e = raft_log_get(f->r, f->rec[k].index);
        if (!e)
            continue;
        if (e->term != f->rec[k].term || entry_hash(e) != f->rec[k].hash)
            fail("committed entry %" PRIu64 " changed (term %" PRIu64 " -> %" PRIu64 ")",
                 f->rec[k].index, f->rec[k].term, e->term);
        f->rec[keep++] = f->rec[k];
    }
    f->nrec = keep;
}

static void check(struct fz *f)
{
    struct raft_status st;
    raft_status_get(f->r, &st);
    if (st.term < f->term_seen)
        fail("term goes back from %" PRIu64 " to %" PRIu64, f->term_seen, st.term);
    if (st.commit_index < f->commit_seen)
        fail("commit index goes back from %" PRIu64 " to %" PRIu64, f->commit_seen,
             st.commit_index);
    if (st.commit_index > st.last_index)
        fail("commit index %" PRIu64 " beyond the last index %" PRIu64, st.commit_index,
             st.last_index);
    if (st.applied_index > st.commit_index || f->applied > st.commit_index)
        fail("applied %" PRIu64 " (state machine %" PRIu64 ") beyond commit %" PRIu64,
             st.applied_index, f->applied, st.commit_index);
    if (st.role == RAFT_LEADER && st.leader_id != FZ_SELF)
        fail("leader names n%" PRIu64 " as leader", st.leader_id);
    record_committed(f, st.first_index, st.commit_index);
    f->term_seen = st.term;
    f->commit_seen = st.commit_index;
    if (++f->ops % 16 == 0)
        verify_committed(f);
}

static void check_msg(struct fz *f, const struct raft_msg *m)
{
    if (m->from != FZ_SELF || m->to == FZ_SELF || !m->to || !m->term)
        fail("message %s from n%" PRIu64 " to n%" PRIu64 " in term %" PRIu64,
             raft_msg_type_name(m->type), m->from, m->to, m->term);
    /* A grant may leave once the disk says it (or a later term, after which this member can
     * never vote in m->term again: the term changed before the vote was written). */
    if (m->type == RAFT_MSG_VOTE_RESP && m->granted && f->d.hs.term <= m->term &&
        (f->d.hs.term != m->term || f->d.hs.voted_for != m->to))
        fail("vote for n%" PRIu64 " in term %" PRIu64 " sent before it is durable (disk: "
             "term %" PRIu64 " vote %" PRIu64 ")", m->to, m->term, f->d.hs.term,
             f->d.hs.voted_for);
    if (m->type == RAFT_MSG_APPEND_RESP && !m->reject && m->match_index > disk_last(&f->d))
        fail("append acknowledged up to %" PRIu64 " with the disk at %" PRIu64, m->match_index,
             disk_last(&f->d));
}

static void persist(struct fz *f, size_t k)
{
    if (k > f->nw)
        k = f->nw;
    if (!k)
        return;
    for (size_t i = 0; i < k; i++)
        disk_apply(&f->d, &f->w[i]);
    uint64_t seq = f->w[k - 1].seq;
    for (size_t i = 0; i < k; i++)
        write_free(&f->w[i]);
    memmove(f->w, f->w + k, (f->nw - k) * sizeof(*f->w));
    f->nw -= k;
    int rc = raft_persisted(f->r, seq);
    if (rc)
        fail("raft_persisted(%" PRIu64 "): %s", seq, raft_strerror(rc));
}

static void take_readies(struct fz *f)
{
    for (int loops = 0; raft_has_ready(f->r); loops++) {
        if (loops == FZ_MAX_READY_LOOPS)
            fail("readies never run out");
        struct raft_ready rd;
        int rc = raft_ready(f->r, &rd);
        if (rc)
            fail("raft_ready: %s", raft_strerror(rc));
        if (rd.snapshot.index) {
            uint32_t len = 0;
            const uint8_t *conf = raft_conf_blob_at(f->r, rd.snapshot.index, &len);
            if (!conf || !len)
                fail("no configuration for the installed snapshot %" PRIu64, rd.snapshot.index);
            if (rd.snapshot.index <= f->applied || rd.snapshot.index <= f->commit_seen)
                fail("snapshot %" PRIu64 " installed over applied %" PRIu64 " commit %" PRIu64,
                     rd.snapshot.index, f->applied, f->commit_seen);
            f->applied = rd.snapshot.index; /* the state machine restored from it */
            if (!rd.persist_seq)
                fail("snapshot install without storage work");
        }
        if (rd.persist_seq) {
            if (rd.persist_seq != f->last_seq + 1)
                fail("persist_seq %" PRIu64 " after %" PRIu64, rd.persist_seq, f->last_seq);
            f->last_seq = rd.persist_seq;
            if (rd.truncate_from && rd.truncate_from <= f->commit_seen)
                fail("truncation from %" PRIu64 " at or below commit %" PRIu64, rd.truncate_from,
                     f->commit_seen);
            if (rd.hs.term < f->ready_hs.term ||
                (rd.hs.term == f->ready_hs.term && f->ready_hs.voted_for &&
                 rd.hs.voted_for != f->ready_hs.voted_for))
                fail("hard state %" PRIu64 "/%" PRIu64 " after %" PRIu64 "/%" PRIu64, rd.hs.term,
                     rd.hs.voted_for, f->ready_hs.term, f->ready_hs.voted_for);
            f->ready_hs = rd.hs;
            if (f->nw == FZ_MAX_PENDING)
                persist(f, f->nw / 2); /* a real disk catches up too */
            f->w = realloc(f->w, (f->nw + 1) * sizeof(*f->w));
            if (!f->w)
                abort();
            struct fz_write *w = &f->w[f->nw++];
            *w = (struct fz_write){.seq = rd.persist_seq,
                                   .inst_index = rd.snapshot.index,
                                   .inst_term = rd.snapshot.term,
                                   .hs_changed = rd.hs_changed,
                                   .hs = rd.hs,
                                   .trunc = rd.truncate_from,
                                   .e = rd.entries,
                                   .n = rd.n_entries};
            if (rd.snapshot.index) {
                uint32_t len = 0;
                const uint8_t *conf = raft_conf_blob_at(f->r, rd.snapshot.index, &len);
                w->inst_conf = xmalloc(len);
                memcpy(w->inst_conf, conf, len);
                w->inst_conf_len = len;
            }
            rd.entries = NULL; /* the write owns them now */
            rd.n_entries = 0;
        }
        for (size_t i = 0; i < rd.n_msgs; i++)
            check_msg(f, &rd.msgs[i]);
        for (size_t i = 0; i < rd.n_committed; i++) {
            const struct raft_entry *e = &rd.committed[i];
            if (e->index != f->applied + 1)
                fail("applies %" PRIu64 " after %" PRIu64, e->index, f->applied);
            if (e->index > rd.commit_index)
                fail("applies %" PRIu64 " beyond commit %" PRIu64, e->index, rd.commit_index);
            if (!disk_holds(&f->d, e->index, e->term))
                fail("applies %" PRIu64 " (term %" PRIu64 ") before it is durable", e->index,
                     e->term);
            f->applied = e->index;
            if (raft_applied(f->r, e->index))
                fail("raft_applied(%" PRIu64 ") refused", e->index);
        }
        raft_advance(f->r, &rd);
    }
}

/* ---- operations ---- */

static void op_restart(struct fz *f, size_t keep)
{
    if (keep > f->nw)
        keep = f->nw;
    for (size_t i = 0; i < f->nw; i++) {
        if (i < keep)
            disk_apply(&f->d, &f->w[i]);
        write_free(&f->w[i]);
    }
    f->nw = 0;
    raft_free(f->r);
    f->r = NULL;
    start_core(f);
}

static void op_compact(struct fz *f, struct fz_in *in)
{
    uint64_t si = fz_rel(in, f->applied);
    uint64_t kept = fz_rel(in, si + 1);
    const struct raft_entry *e = raft_log_get(f->r, si);
    uint64_t term = e ? e->term : 0;
    struct raft_status st;
    raft_status_get(f->r, &st);
    if (si == st.snapshot_index)
        term = st.snapshot_term;
    /* raft_compact's contract: the state machine has a durable snapshot at si - so the state up
     * to si must be durable (an installed snapshot whose write is not, is not). */
    if (si > disk_last(&f->d) || !disk_holds(&f->d, si, term))
        return;
    uint32_t len = 0;
    const uint8_t *conf = raft_conf_blob_at(f->r, si, &len);
    uint8_t *copy = NULL;
    if (conf && len) {
        copy = xmalloc(len);
        memcpy(copy, conf, len);
    }
    if (raft_compact(f->r, si, kept) != 0) {
        free(copy);
        return;
    }
    if (!copy)
        fail("compaction at %" PRIu64 " accepted with no configuration there", si);
    if (si > f->d.snap_index) {
        f->d.snap_index = si;
        f->d.snap_term = term;
        free(f->d.conf);
        f->d.conf = copy;
        f->d.conf_len = len;
        copy = NULL;
    }
    free(copy);
    /* The disk may drop what the core dropped. */
    size_t drop = 0;
    while (drop < f->d.n && f->d.e[drop].index < kept)
        free(f->d.e[drop++].data);
    if (drop) {
        memmove(f->d.e, f->d.e + drop, (f->d.n - drop) * sizeof(*f->d.e));
        f->d.n -= drop;
    }
}

int fz_step(struct fz *f, const struct raft_msg *m)
{
    int rc = raft_step(f->r, m);
    if (rc > 0 || rc < RAFT_EPENDING)
        fail("raft_step returned %d", rc);
    return rc;
}

static void run_op(struct fz *f, struct fz_in *in, void (*deliver)(struct fz *, struct fz_in *))
{
    uint8_t op = fz_u8(in) % 11;
    uint64_t idx, term, hint;
    switch (op) {
    case 0:
        deliver(f, in);
        break;
    case 1: {
        unsigned n = 1 + fz_u8(in) % 32;
        for (unsigned i = 0; i < n; i++)
            if (raft_tick(f->r))
                fail("raft_tick failed");
        break;
    }
    case 2:
        persist(f, 1 + fz_u8(in) % 8);
        break;
    case 3: {
        uint8_t buf[48];
        uint32_t len = fz_u8(in) % 48;
        for (uint32_t i = 0; i < len; i++)
            buf[i] = fz_u8(in);
        int rc = raft_propose(f->r, RAFT_ENTRY_NORMAL, buf, len, &idx, &term, &hint);
        if (rc && rc != RAFT_ENOTLEADER && rc != RAFT_EBUSY && rc != RAFT_ETOOBIG)
            fail("raft_propose: %s", raft_strerror(rc));
        break;
    }
    case 4: {
        uint8_t v = fz_u8(in), l = fz_u8(in);
        struct raft_conf c;
        memset(&c, 0, sizeof c);
        l &= (uint8_t)~v;
        for (unsigned i = 0; i < 8; i++) {
            if (v & (1u << i))
                c.voters[c.n_voters++] = i + 1;
            if (l & (1u << i))
                c.learners[c.n_learners++] = i + 1;
        }
        raft_propose_conf(f->r, &c, NULL, 0, &idx, &term, &hint);
        break;
    }
    case 5:
        op_restart(f, fz_u8(in) % (f->nw + 1));
        break;
    case 6:
        op_compact(f, in);
        break;
    case 7:
        raft_read_index(f->r, fz_u8(in));
        break;
    case 8:
        raft_campaign(f->r);
        break;
    case 9:
        raft_transfer_leader(f->r, fz_u8(in) % (f->members + 2));
        break;
    case 10: {
        uint8_t b = fz_u8(in);
        raft_report_snapshot(f->r, (b & 0x7f) % (f->members + 2), b & 0x80);
        break;
    }
    }
}

void fz_run(const uint8_t *data, size_t size, void (*deliver)(struct fz *f, struct fz_in *in))
{
    struct fz_in in = {data, size};
    struct fz f;
    memset(&f, 0, sizeof f);
    uint8_t c = fz_u8(&in);
    f.members = 1 + (c & 3);
    for (unsigned i = 0; i < f.members; i++)
        f.peers[i] = i + 1;
    raft_config_default(&f.cfg);
    f.cfg.id = FZ_SELF;
    f.cfg.peers = f.peers;
    f.cfg.n_peers = f.members;
    f.cfg.seed = c >> 5;
    f.cfg.pre_vote = c & 4;
    f.cfg.check_quorum = c & 8;
    if (c & 16) {
        /* Small bounds, so flow control and the input bounds are reached with few bytes. */
        f.cfg.max_append_entries = 2;
        f.cfg.max_append_bytes = 64;
        f.cfg.max_inflight_msgs = 2;
        f.cfg.max_inflight_bytes = 128;
        f.cfg.max_msg_entries = 6;
        f.cfg.max_entry_bytes = 40;
        f.cfg.max_read_pending = 3;
    }
    start_core(&f);
    /* RAFT_FUZZ_TRACE=1: one line per operation, to see how deep a seed reaches. */
    static int trace = -1;
    if (trace < 0)
        trace = getenv("RAFT_FUZZ_TRACE") != NULL;
    while (in.n) {
        uint8_t op = in.p[0];
        run_op(&f, &in, deliver);
        take_readies(&f);
        check(&f);
        if (trace) {
            struct raft_status st;
            raft_status_get(f.r, &st);
            fprintf(stderr, "op %2u: %-12s term %" PRIu64 " vote %" PRIu64 " last %" PRIu64
                    " commit %" PRIu64 " applied %" PRIu64 " snapshot %" PRIu64
                    " disk %" PRIu64 " pending %zu\n", op % 11u, raft_role_name(st.role),
                    st.term, st.voted_for, st.last_index, st.commit_index, f.applied,
                    st.snapshot_index, disk_last(&f.d), f.nw);
        }
    }
    verify_committed(&f);
    /* Everything pending becomes durable, then a restart: the core must start from it. */
    op_restart(&f, f.nw);
    take_readies(&f);
    check(&f);
    raft_free(f.r);
    for (size_t i = 0; i < f.nw; i++)
        write_free(&f.w[i]);
    free(f.w);
    entries_free(f.d.e, f.d.n);
    free(f.d.conf);
    free(f.rec);
}
