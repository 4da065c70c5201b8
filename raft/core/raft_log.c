/* raft_log.c: the core's in-memory log: entries after `offset` (everything, until the caller
 * compacts it after a snapshot). Each entry owns a copy of its payload. */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "raft/core/raft_internal.h"

uint64_t raft_log_last_index(const struct raft_log *l)
{
    return l->offset + l->n;
}

uint64_t raft_log_last_term(const struct raft_log *l)
{
    return l->n ? l->e[l->n - 1].term : l->offset_term;
}

bool raft_log_term(const struct raft_log *l, uint64_t index, uint64_t *term)
{
    if (index == l->offset) {
        *term = l->offset_term;
        return true;
    }
    if (index < l->offset || index > l->offset + l->n)
        return false;
    *term = l->e[index - l->offset - 1].term;
    return true;
}

const struct raft_entry *raft_log_at(const struct raft_log *l, uint64_t index)
{
    if (index <= l->offset || index > l->offset + l->n)
        return NULL;
    return &l->e[index - l->offset - 1];
}

int raft_entry_copy(struct raft_entry *dst, const struct raft_entry *src)
{
    *dst = *src;
    dst->data = NULL;
    if (src->len) {
        dst->data = malloc(src->len);
        if (!dst->data)
            return RAFT_ENOMEM;
        memcpy(dst->data, src->data, src->len);
    }
    return 0;
}

void raft_entries_free(struct raft_entry *e, size_t n)
{
    if (!e)
        return;
    for (size_t i = 0; i < n; i++)
        free(e[i].data);
    free(e);
}

int raft_log_append(struct raft_log *l, const struct raft_entry *e)
{
    assert(e->index == raft_log_last_index(l) + 1);
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        struct raft_entry *ne = realloc(l->e, cap * sizeof(*ne));
        if (!ne)
            return RAFT_ENOMEM;
        l->e = ne;
        l->cap = cap;
    }
    int rc = raft_entry_copy(&l->e[l->n], e);
    if (rc)
        return rc;
    l->n++;
    return 0;
}

void raft_log_truncate(struct raft_log *l, uint64_t from)
{
    assert(from > l->offset);
    while (l->n && l->offset + l->n >= from) {
        free(l->e[l->n - 1].data);
        l->n--;
    }
}

void raft_log_compact(struct raft_log *l, uint64_t upto)
{
    assert(upto > l->offset && upto <= raft_log_last_index(l));
    size_t k = (size_t)(upto - l->offset);
    l->offset_term = l->e[k - 1].term;
    for (size_t i = 0; i < k; i++)
        free(l->e[i].data);
    memmove(l->e, l->e + k, (l->n - k) * sizeof(*l->e));
    l->n -= k;
    l->offset = upto;
}

void raft_log_reset(struct raft_log *l, uint64_t index, uint64_t term)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->e[i].data);
    l->n = 0;
    l->offset = index;
    l->offset_term = term;
}

void raft_log_free(struct raft_log *l)
{
    raft_entries_free(l->e, l->n);
    memset(l, 0, sizeof(*l));
}

/* First index of the run of entries with the same term as `index` (fast backup hint). */
uint64_t raft_log_first_of_term(const struct raft_log *l, uint64_t index)
{
    uint64_t t;
    if (!raft_log_term(l, index, &t) || index == l->offset)
        return index;
    uint64_t i = index;
    while (i - 1 > l->offset && l->e[i - 1 - l->offset - 1].term == t)
        i--;
    return i;
}

/* Last index holding `term`, or 0 if none. Terms never decrease along a log, so binary search for
 * the last entry with term <= `term`. */
uint64_t raft_log_last_of_term(const struct raft_log *l, uint64_t term)
{
    size_t lo = 0, hi = l->n; /* find first position with e.term > term */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (l->e[mid].term <= term)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return 0;
    return l->e[lo - 1].term == term ? l->offset + lo : 0;
}
