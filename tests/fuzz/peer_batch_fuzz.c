/* Fuzz target for the Raft stream's decoder (services/peer_msg.c) and, through it, the Raft core:
 * the harness of raft_fuzz_harness.h (a core with storage, invariants checked after every step)
 * where "deliver" is a peer's bytes, decoded as peer.c decodes them and stepped into the core.
 * Whatever the bytes, the decoder must refuse them cleanly or map them, every mapped message
 * must survive the reverse mapping and a protobuf round trip unchanged (what peer.c sends is
 * what the receiver steps), and the core must keep its invariants. Built with clang's
 * libFuzzer (run_fuzz.sh) and as a corpus replay (replay_main.c).
 *
 * deliver's operands (make_peer_batch_corpus.py writes them): a kind byte, a 2-byte
 * little-endian length and that many bytes (cut at the input's end). Kind even: a
 * craft.raft.Batch from the Raft stream (peer.c in_message), each message it maps stepped in
 * turn. Kind odd: a craft.raft.SnapshotChunk (peer.c handle_snapshot), whose snapshot message is
 * stepped once - as the runtime does once the whole snapshot has arrived. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "raft/core/raft.h"
#include "services/peer_msg.h"
#include "tests/fuzz/raft_fuzz_harness.h"

static bool same_msg(const struct raft_msg *a, const struct raft_msg *b)
{
    if (a->type != b->type || a->from != b->from || a->to != b->to || a->term != b->term ||
        a->last_log_index != b->last_log_index || a->last_log_term != b->last_log_term ||
        a->transfer != b->transfer || a->granted != b->granted ||
        a->prev_index != b->prev_index || a->prev_term != b->prev_term ||
        a->commit != b->commit || a->n_entries != b->n_entries || a->reject != b->reject ||
        a->match_index != b->match_index || a->reject_index != b->reject_index ||
        a->conflict_term != b->conflict_term || a->conflict_index != b->conflict_index ||
        a->ctx != b->ctx || a->read_index != b->read_index ||
        a->snapshot_index != b->snapshot_index || a->snapshot_term != b->snapshot_term ||
        a->conf_len != b->conf_len || (a->conf_len && memcmp(a->conf, b->conf, a->conf_len)))
        return false;
    for (uint32_t i = 0; i < a->n_entries; i++) {
        const struct raft_entry *x = &a->entries[i], *y = &b->entries[i];
        if (x->index != y->index || x->term != y->term || x->type != y->type ||
            x->len != y->len || (x->len && memcmp(x->data, y->data, x->len)))
            return false;
    }
    return true;
}

/* m, mapped back to the wire, packed, unpacked and mapped again, must come out the same. */
static void round_trip(const struct raft_msg *m)
{
    size_t n = m->n_entries;
    Craft__Raft__Entry *pe = calloc(n ? n : 1, sizeof *pe);
    Craft__Raft__Entry **pep = calloc(n ? n : 1, sizeof *pep);
    if (!pe || !pep)
        abort();
    Craft__Raft__Message pm;
    peer_msg_to_pb(m, &pm, pe, pep);
    Craft__Raft__Batch b = CRAFT__RAFT__BATCH__INIT;
    Craft__Raft__Message *pmp = &pm;
    b.n_msgs = 1;
    b.msgs = &pmp;
    size_t len = protobuf_c_message_get_packed_size(&b.base);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf || protobuf_c_message_pack(&b.base, buf) != len)
        abort();
    struct peer_batch again;
    if (peer_batch_decode(buf, len, &again) != PEER_BATCH_OK || again.n != 1 || !again.ok[0] ||
        !same_msg(m, &again.msgs[0]))
        abort();
    peer_batch_free(&again);
    free(buf);
    free(pe);
    free(pep);
}

static void deliver(struct fz *f, struct fz_in *in)
{
    uint8_t kind = fz_u8(in);
    size_t len = fz_u8(in);
    len |= (size_t)fz_u8(in) << 8;
    if (len > in->n)
        len = in->n;
    const uint8_t *p = in->p;
    in->p += len;
    in->n -= len;
    if (kind % 2 == 0) {
        struct peer_batch b;
        int rc = peer_batch_decode(p, len, &b);
        if (rc != PEER_BATCH_OK && rc != PEER_BATCH_EMALFORMED)
            abort(); /* nothing here runs out of memory */
        if (rc == PEER_BATCH_OK && b.n != b.pb->n_msgs)
            abort();
        for (size_t i = 0; i < b.n; i++) {
            if (!b.ok[i])
                continue;
            round_trip(&b.msgs[i]);
            fz_step(f, &b.msgs[i]);
        }
        peer_batch_free(&b);
        return;
    }
    Craft__Raft__SnapshotChunk *c = (Craft__Raft__SnapshotChunk *)protobuf_c_message_unpack(
        &craft__raft__snapshot_chunk__descriptor, NULL, len, p);
    if (!c)
        return;
    struct raft_msg m;
    if (peer_msg_snapshot_from_pb(c->msg, &m)) {
        if (m.type != RAFT_MSG_SNAPSHOT || m.n_entries || !m.snapshot_index || !m.snapshot_term)
            abort();
        fz_step(f, &m);
    }
    protobuf_c_message_free_unpacked(&c->base, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_run(data, size, deliver);
    return 0;
}
