/* peer_msg.c: see peer_msg.h. */
#include "services/peer_msg.h"

#include <stdlib.h>
#include <string.h>

void peer_msg_to_pb(const struct raft_msg *m, Craft__Raft__Message *pm, Craft__Raft__Entry *pe,
                    Craft__Raft__Entry **pep)
{
    craft__raft__message__init(pm);
    pm->type = m->type;
    pm->from = m->from;
    pm->to = m->to;
    pm->term = m->term;
    pm->last_log_index = m->last_log_index;
    pm->last_log_term = m->last_log_term;
    pm->transfer = m->transfer;
    pm->granted = m->granted;
    pm->prev_index = m->prev_index;
    pm->prev_term = m->prev_term;
    pm->commit = m->commit;
    pm->reject = m->reject;
    pm->match_index = m->match_index;
    pm->reject_index = m->reject_index;
    pm->conflict_term = m->conflict_term;
    pm->conflict_index = m->conflict_index;
    pm->ctx = m->ctx;
    pm->read_index = m->read_index;
    pm->snapshot_index = m->snapshot_index;
    pm->snapshot_term = m->snapshot_term;
    pm->conf.data = m->conf;
    pm->conf.len = m->conf_len;
    for (uint32_t i = 0; i < m->n_entries; i++) {
        const struct raft_entry *e = &m->entries[i];
        craft__raft__entry__init(&pe[i]);
        pe[i].index = e->index;
        pe[i].term = e->term;
        pe[i].type = e->type;
        pe[i].data.len = e->len;
        pe[i].data.data = e->data; /* packed by copy; never written through */
        pep[i] = &pe[i];
    }
    pm->n_entries = m->n_entries;
    pm->entries = m->n_entries ? pep : NULL;
}

bool peer_msg_from_pb(const Craft__Raft__Message *pm, struct raft_msg *m, struct raft_entry *es)
{
    if (pm->type == RAFT_MSG_NONE || pm->type > RAFT_MSG_TYPE_MAX)
        return false;
    if (pm->n_entries > UINT32_MAX || (pm->n_entries && !es))
        return false;
    memset(m, 0, sizeof *m);
    m->type = (uint8_t)pm->type;
    m->from = pm->from;
    m->to = pm->to;
    m->term = pm->term;
    m->last_log_index = pm->last_log_index;
    m->last_log_term = pm->last_log_term;
    m->transfer = pm->transfer;
    m->granted = pm->granted;
    m->prev_index = pm->prev_index;
    m->prev_term = pm->prev_term;
    m->commit = pm->commit;
    m->reject = pm->reject;
    m->match_index = pm->match_index;
    m->reject_index = pm->reject_index;
    m->conflict_term = pm->conflict_term;
    m->conflict_index = pm->conflict_index;
    m->ctx = pm->ctx;
    m->read_index = pm->read_index;
    m->snapshot_index = pm->snapshot_index;
    m->snapshot_term = pm->snapshot_term;
    if (pm->conf.len > UINT32_MAX)
        return false;
    m->conf = pm->conf.len ? pm->conf.data : NULL; /* valid while pm is; the core copies it */
    m->conf_len = (uint32_t)pm->conf.len;
    for (size_t i = 0; i < pm->n_entries; i++) {
        const Craft__Raft__Entry *pe = pm->entries[i];
        if (pe->type > RAFT_ENTRY_CONFIG || pe->data.len > UINT32_MAX)
            return false;
        es[i].index = pe->index;
        es[i].term = pe->term;
        es[i].type = (uint8_t)pe->type;
        es[i].len = (uint32_t)pe->data.len;
        es[i].data = pe->data.len ? pe->data.data : NULL;
    }
    m->n_entries = (uint32_t)pm->n_entries;
    m->entries = pm->n_entries ? es : NULL;
    return true;
}

bool peer_msg_snapshot_from_pb(const Craft__Raft__Message *pm, struct raft_msg *m)
{
    return pm && !pm->n_entries && peer_msg_from_pb(pm, m, NULL) &&
           m->type == RAFT_MSG_SNAPSHOT && m->snapshot_index && m->snapshot_term;
}

int peer_batch_decode(const uint8_t *data, size_t len, struct peer_batch *b)
{
    memset(b, 0, sizeof *b);
    b->pb = (Craft__Raft__Batch *)protobuf_c_message_unpack(&craft__raft__batch__descriptor, NULL,
                                                            len, data);
    if (!b->pb)
        return PEER_BATCH_EMALFORMED;
    size_t n = b->pb->n_msgs, n_entries = 0;
    for (size_t i = 0; i < n; i++) {
        /* Each entry took at least two bytes of the input, so this cannot wrap; checked anyway. */
        if (b->pb->msgs[i]->n_entries > SIZE_MAX / sizeof *b->es - n_entries)
            return PEER_BATCH_EMALFORMED;
        n_entries += b->pb->msgs[i]->n_entries;
    }
    b->msgs = calloc(n ? n : 1, sizeof *b->msgs);
    b->ok = calloc(n ? n : 1, sizeof *b->ok);
    b->es = calloc(n_entries ? n_entries : 1, sizeof *b->es);
    if (!b->msgs || !b->ok || !b->es)
        return PEER_BATCH_ENOMEM;
    b->n = n;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        b->ok[i] = peer_msg_from_pb(b->pb->msgs[i], &b->msgs[i], b->es + k);
        k += b->pb->msgs[i]->n_entries;
    }
    return PEER_BATCH_OK;
}

void peer_batch_free(struct peer_batch *b)
{
    if (b->pb)
        protobuf_c_message_free_unpacked(&b->pb->base, NULL);
    free(b->msgs);
    free(b->ok);
    free(b->es);
    memset(b, 0, sizeof *b);
}
