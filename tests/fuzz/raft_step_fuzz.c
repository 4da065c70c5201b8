/* Structured fuzz target for the Raft core (raft/core): one core with its storage
 * (raft_fuzz_harness.h) fed a fuzzed sequence of operations, where "deliver" builds a message
 * of any type field by field - fields near the core's own state (fz_rel) so that elections,
 * appends, snapshots and configuration entries are reached, or anything at all. A peer's bytes are
 * outside input: whatever a message says, the core must never crash, assert, leak or hang, and
 * must keep the harness's invariants. Built with clang's libFuzzer (run_fuzz.sh) and as a corpus
 * replay (replay_main.c).
 *
 * deliver's operands (make_raft_step_corpus.py writes them):
 *   type    byte: a type in 0..11 (0 and 9 are invalid) for values < 0xf0, else the raw byte
 *   who     byte: bits 0-2 pick from (members 2..n, self, a stranger, 0, an 8-byte id follows);
 *                 bit 3: `to` is not self (bits 4-6 pick it the same way)
 *   flags   byte: transfer 1, granted 2, reject 4, entries 8 (also on types that take none),
 *                 conf 16 (likewise)
 *   term    rel(current term)
 *   then per type (rel = fz_rel; "last" is the core's last index):
 *     VOTE, PREVOTE      rel(last) last_log_index, rel(last term) last_log_term
 *     APPEND             rel(last) prev_index, rel(term at prev_index) prev_term,
 *                        rel(last) commit, ctx byte, entries
 *     APPEND_RESP        rel(last) match_index, rel(last) reject_index, rel(term)
 *                        conflict_term, rel(last) conflict_index, ctx byte
 *     SNAPSHOT           rel(last) snapshot_index, rel(term) snapshot_term,
 *                        rel(snapshot_index) commit, conf
 *     READ_INDEX         ctx byte
 *     READ_INDEX_RESP    ctx byte, rel(commit) read_index
 *   entries: count byte (% 8, or % 64 when >= 0xc0), then per entry: rel(term) term, index
 *            byte (0x80: the next index, else rel of it), type byte (% 4: 3 is invalid), and
 *            data: a NORMAL/NOOP entry len byte (% 64) + bytes; a CONFIG entry a mode byte:
 *            < 0x80 three masks for fz_conf_blob (voters, learners, old), else len + raw bytes
 *   conf:    mode byte: 0 none, 1..0x7f fz_conf_blob's three masks, else len + raw bytes */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "raft/core/raft.h"
#include "tests/fuzz/raft_fuzz_harness.h"

#define MAX_ENTRIES 64

static uint64_t pick_id(struct fz *f, struct fz_in *in, unsigned sel)
{
    unsigned n = fz_members(f);
    switch (sel & 7) {
    case 0: return n >= 2 ? 2 : 7;
    case 1: return n >= 3 ? 3 : 2;
    case 2: return n >= 4 ? 4 : 3;
    case 3: return 1; /* self */
    case 4: return 9; /* a stranger */
    case 5: return 0;
    case 6: return n >= 2 ? 2 : 5;
    default: return fz_u64(in);
    }
}

/* Data for a configuration: fz_conf_blob's masks, or raw bytes. Sets *len; malloc'ed. */
static uint8_t *conf_bytes(struct fz_in *in, uint8_t mode, uint32_t *len)
{
    if (mode < 0x80) {
        uint8_t v = fz_u8(in), l = fz_u8(in), o = fz_u8(in);
        uint8_t *b = fz_conf_blob(v, l, o, len);
        if (b)
            return b;
    }
    *len = fz_u8(in);
    uint8_t *b = malloc(*len ? *len : 1);
    if (!b)
        abort();
    for (uint32_t i = 0; i < *len; i++)
        b[i] = fz_u8(in);
    return b;
}

static uint32_t read_entries(struct fz *f, struct fz_in *in, const struct raft_msg *m,
                             struct raft_entry *es)
{
    (void)f;
    uint8_t c = fz_u8(in);
    uint32_t n = c >= 0xc0 ? c % MAX_ENTRIES : c % 8;
    for (uint32_t i = 0; i < n; i++) {
        struct raft_entry *e = &es[i];
        memset(e, 0, sizeof *e);
        e->term = fz_rel(in, m->term);
        uint8_t ib = fz_u8(in);
        uint64_t next = m->prev_index + 1 + i;
        if (ib != 0x80)
            e->index = fz_rel(&(struct fz_in){&ib, 1}, next);
        else
            e->index = next;
        uint8_t t = fz_u8(in);
        e->type = t % 4;
        if (e->type == RAFT_ENTRY_CONFIG) {
            e->data = conf_bytes(in, fz_u8(in), &e->len);
        } else {
            e->len = fz_u8(in) % 64;
            e->data = e->len ? malloc(e->len) : NULL;
            if (e->len && !e->data)
                abort();
            for (uint32_t k = 0; k < e->len; k++)
                e->data[k] = fz_u8(in);
        }
        if (!e->len) {
            free(e->data);
            e->data = NULL;
        }
    }
    return n;
}

static void deliver(struct fz *f, struct fz_in *in)
{
    struct raft_status st;
    fz_status(f, &st);
    struct raft_msg m;
    memset(&m, 0, sizeof m);
    uint8_t t = fz_u8(in);
    m.type = t < 0xf0 ? t % 12 : t;
    uint8_t who = fz_u8(in);
    m.from = pick_id(f, in, who);
    m.to = who & 8 ? pick_id(f, in, who >> 4) : 1;
    uint8_t flags = fz_u8(in);
    m.transfer = flags & 1;
    m.granted = flags & 2;
    m.reject = flags & 4;
    m.term = fz_rel(in, st.term);
    struct raft_entry es[MAX_ENTRIES];
    bool want_entries = flags & 8, want_conf = flags & 16;
    switch (m.type) {
    case RAFT_MSG_VOTE:
    case RAFT_MSG_PREVOTE:
        m.last_log_index = fz_rel(in, st.last_index);
        m.last_log_term = fz_rel(in, st.last_term);
        break;
    case RAFT_MSG_APPEND:
        m.prev_index = fz_rel(in, st.last_index);
        m.prev_term = fz_rel(in, fz_term_at(f, m.prev_index) ? fz_term_at(f, m.prev_index)
                                                               : st.last_term);
        m.commit = fz_rel(in, st.last_index);
        m.ctx = fz_u8(in);
        want_entries = true;
        break;
    case RAFT_MSG_APPEND_RESP:
        m.match_index = fz_rel(in, st.last_index);
        m.reject_index = fz_rel(in, st.last_index);
        m.conflict_term = fz_rel(in, st.term);
        m.conflict_index = fz_rel(in, st.last_index);
        m.ctx = fz_u8(in);
        break;
    case RAFT_MSG_SNAPSHOT:
        m.snapshot_index = fz_rel(in, st.last_index);
        m.snapshot_term = fz_rel(in, st.term);
        m.commit = fz_rel(in, m.snapshot_index);
        want_conf = true;
        break;
    case RAFT_MSG_READ_INDEX:
        m.ctx = fz_u8(in);
        break;
    case RAFT_MSG_READ_INDEX_RESP:
        m.ctx = fz_u8(in);
        m.read_index = fz_rel(in, st.commit_index);
        break;
    default:
        break;
    }
    if (want_entries) {
        m.n_entries = read_entries(f, in, &m, es);
        m.entries = m.n_entries ? es : NULL;
    }
    if (want_conf) {
        uint8_t mode = fz_u8(in);
        if (mode)
            m.conf = conf_bytes(in, mode, &m.conf_len);
        if (!m.conf_len) {
            free(m.conf);
            m.conf = NULL;
        }
    }
    fz_step(f, &m);
    for (uint32_t i = 0; i < m.n_entries; i++)
        free(es[i].data);
    free(m.conf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_run(data, size, deliver);
    return 0;
}
