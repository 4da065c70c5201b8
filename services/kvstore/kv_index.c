/* kv_index.c: a hash table of keys, each with its writes in an array (kv_index.h), and a skip
 * list (byte order) of the keys that have a delete among them. Only those: a put is a hash
 * probe (one or two cache misses) where keeping every key in order cost a skip list search, some
 * 30 misses in a store of 100,000 keys, 2 us a put (measured with kv-apply-bench); the store's
 * "kv" tree already has every other key in order. A skip list rather than a balanced tree:
 * ordered iteration is its bottom list and removal needs no rebalancing. */
#include "services/kvstore/kv_index.h"

#include <stdlib.h>
#include <string.h>

#define MAX_LEVEL 24 /* 4^24 keys before the top level is crowded: far beyond any store */

struct kv_index_node {
    struct kv_index_ent *ents; /* live writes: ents[off, off + n) */
    size_t off, n, cap;
    size_t n_del; /* deletes among them */
    uint32_t klen;
    uint8_t level;
    bool linked;  /* in the skip list: n_del > 0 */
    struct kv_index_node *next[]; /* level pointers, then the key's bytes */
};

struct kv_index {
    struct kv_index_node *head[MAX_LEVEL];
    int level;
    uint64_t rng;
    size_t keys, entries, deleted_keys;
    /* open addressing, linear probing, at most half full; NULL = empty slot */
    struct kv_index_node **tab;
    size_t tab_cap; /* a power of two */
};

/* FNV-1a: the keys are short (etcd keys are paths), and this is cheaper than their miss. */
static uint64_t key_hash(const void *key, size_t klen)
{
    const uint8_t *p = key;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < klen; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h ^ (h >> 29);
}

static const uint8_t *node_key(const struct kv_index_node *n)
{
    return (const uint8_t *)&n->next[n->level];
}

static int key_cmp(const struct kv_index_node *n, const void *key, size_t klen)
{
    size_t m = n->klen < klen ? n->klen : klen;
    int c = m ? memcmp(node_key(n), key, m) : 0;
    if (c)
        return c;
    return n->klen < klen ? -1 : n->klen > klen ? 1 : 0;
}

struct kv_index *kv_index_new(void)
{
    struct kv_index *x = calloc(1, sizeof *x);
    if (x) {
        x->level = 1;
        x->rng = 0x9e3779b97f4a7c15ull;
        x->tab_cap = 64;
        if (!(x->tab = calloc(x->tab_cap, sizeof *x->tab))) {
            free(x);
            return NULL;
        }
    }
    return x;
}

/* The slot holding key's node, or the empty slot where it would go. */
static size_t tab_slot(const struct kv_index *x, const void *key, size_t klen)
{
    size_t mask = x->tab_cap - 1, i = (size_t)key_hash(key, klen) & mask;
    while (x->tab[i] && !(x->tab[i]->klen == klen && key_cmp(x->tab[i], key, klen) == 0))
        i = (i + 1) & mask;
    return i;
}

static struct kv_index_node *tab_find(const struct kv_index *x, const void *key, size_t klen)
{
    return x->tab[tab_slot(x, key, klen)];
}

/* Room for one more key (the table stays at most half full). 0 or -1. */
static int tab_reserve(struct kv_index *x)
{
    if ((x->keys + 1) * 2 <= x->tab_cap)
        return 0;
    size_t cap = x->tab_cap * 2;
    struct kv_index_node **old = x->tab, **t = calloc(cap, sizeof *t);
    if (!t)
        return -1;
    size_t old_cap = x->tab_cap;
    x->tab = t;
    x->tab_cap = cap;
    for (size_t i = 0; i < old_cap; i++)
        if (old[i])
            x->tab[tab_slot(x, node_key(old[i]), old[i]->klen)] = old[i];
    free(old);
    return 0;
}

/* Empties slot i, moving back the entries after it that probed past it (no tombstones). */
static void tab_delete(struct kv_index *x, size_t i)
{
    size_t mask = x->tab_cap - 1, j = i;
    x->tab[i] = NULL;
    for (;;) {
        j = (j + 1) & mask;
        if (!x->tab[j])
            return;
        size_t home = (size_t)key_hash(node_key(x->tab[j]), x->tab[j]->klen) & mask;
        /* x->tab[j] may move to i when its home is not in (i, j] (cyclically) */
        if ((j > i && (home <= i || home > j)) || (j < i && home <= i && home > j)) {
            x->tab[i] = x->tab[j];
            x->tab[j] = NULL;
            i = j;
        }
    }
}

void kv_index_free(struct kv_index *x)
{
    if (!x)
        return;
    for (size_t i = 0; i < x->tab_cap; i++)
        if (x->tab[i]) {
            free(x->tab[i]->ents);
            free(x->tab[i]);
        }
    free(x->tab);
    free(x);
}

/* Fills upd[i] with the level-i forward pointer after which key belongs; returns the first
 * node at or after key (or NULL). */
static struct kv_index_node *locate(struct kv_index *x, const void *key, size_t klen,
                                    struct kv_index_node **upd[MAX_LEVEL])
{
    struct kv_index_node **p = x->head;
    for (int i = x->level - 1; i >= 0; i--) {
        while (p[i] && key_cmp(p[i], key, klen) < 0)
            p = p[i]->next;
        upd[i] = &p[i];
    }
    return p[0];
}

static int random_level(struct kv_index *x)
{
    x->rng ^= x->rng << 13;
    x->rng ^= x->rng >> 7;
    x->rng ^= x->rng << 17;
    uint64_t r = x->rng;
    int level = 1;
    while (level < MAX_LEVEL && (r & 3) == 0) {
        level++;
        r >>= 2;
    }
    return level;
}

static bool ent_after(const struct kv_index_ent *a, int64_t rev, uint64_t sub)
{
    return a->rev > rev || (a->rev == rev && a->sub > sub);
}

/* Links n into the skip list (it has a delete among its writes now). */
static void list_link(struct kv_index *x, struct kv_index_node *n)
{
    struct kv_index_node **upd[MAX_LEVEL];
    locate(x, node_key(n), n->klen, upd);
    for (int i = x->level; i < n->level; i++)
        upd[i] = &x->head[i];
    if (n->level > x->level)
        x->level = n->level;
    for (int i = 0; i < n->level; i++) {
        n->next[i] = *upd[i];
        *upd[i] = n;
    }
    n->linked = true;
    x->deleted_keys++;
}

static void list_unlink(struct kv_index *x, struct kv_index_node *n)
{
    struct kv_index_node **upd[MAX_LEVEL];
    locate(x, node_key(n), n->klen, upd);
    for (int l = 0; l < n->level; l++)
        if (*upd[l] == n)
            *upd[l] = n->next[l];
    while (x->level > 1 && !x->head[x->level - 1])
        x->level--;
    n->linked = false;
    x->deleted_keys--;
}

int kv_index_add(struct kv_index *x, const void *key, size_t klen, const struct kv_index_ent *e)
{
    struct kv_index_node *n = tab_find(x, key, klen);
    if (n) {
        if (!ent_after(e, n->ents[n->off + n->n - 1].rev, n->ents[n->off + n->n - 1].sub))
            return -2;
        if (n->off + n->n == n->cap) {
            if (n->off >= n->n) { /* half or more is removed room at the front: reuse it */
                memmove(n->ents, n->ents + n->off, n->n * sizeof *n->ents);
                n->off = 0;
            } else {
                size_t cap = n->cap * 2;
                struct kv_index_ent *g = realloc(n->ents, cap * sizeof *g);
                if (!g)
                    return -1;
                n->ents = g;
                n->cap = cap;
            }
        }
        n->ents[n->off + n->n++] = *e;
    } else {
        if (tab_reserve(x))
            return -1;
        int level = random_level(x);
        n = malloc(sizeof *n + (size_t)level * sizeof n->next[0] + klen);
        struct kv_index_ent *ents = malloc(sizeof *ents);
        if (!n || !ents) {
            free(n);
            free(ents);
            return -1;
        }
        *n = (struct kv_index_node){.ents = ents, .n = 1, .cap = 1, .klen = (uint32_t)klen,
                                    .level = (uint8_t)level};
        ents[0] = *e;
        if (klen)
            memcpy((uint8_t *)&n->next[level], key, klen);
        x->tab[tab_slot(x, key, klen)] = n;
        x->keys++;
    }
    x->entries++;
    if (e->type == KV_INDEX_DELETE && n->n_del++ == 0)
        list_link(x, n);
    return 0;
}

/* The position in n's live writes of the first one at or after (rev, sub). */
static size_t lower_bound(const struct kv_index_node *n, int64_t rev, uint64_t sub)
{
    size_t lo = 0, hi = n->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const struct kv_index_ent *m = &n->ents[n->off + mid];
        if (m->rev < rev || (m->rev == rev && m->sub < sub))
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

int kv_index_remove(struct kv_index *x, const void *key, size_t klen, int64_t rev, uint64_t sub)
{
    size_t slot = tab_slot(x, key, klen);
    struct kv_index_node *n = x->tab[slot];
    if (!n)
        return -1;
    size_t i = lower_bound(n, rev, sub);
    if (i == n->n || n->ents[n->off + i].rev != rev || n->ents[n->off + i].sub != sub)
        return -1;
    bool was_delete = n->ents[n->off + i].type == KV_INDEX_DELETE;
    if (i == 0) {
        n->off++; /* the usual case: compaction removes the oldest first */
    } else {
        memmove(&n->ents[n->off + i], &n->ents[n->off + i + 1],
                (n->n - i - 1) * sizeof *n->ents);
    }
    n->n--;
    x->entries--;
    if (was_delete && --n->n_del == 0)
        list_unlink(x, n);
    if (n->n > 0) {
        if (n->off > 16 && n->off >= n->n) { /* give back memory as the list shrinks */
            memmove(n->ents, n->ents + n->off, n->n * sizeof *n->ents);
            n->off = 0;
            struct kv_index_ent *sh = realloc(n->ents, n->n * sizeof *sh);
            if (sh) {
                n->ents = sh;
                n->cap = n->n;
            }
        }
        return 0;
    }
    tab_delete(x, slot);
    free(n->ents);
    free(n);
    x->keys--;
    return 0;
}

const struct kv_index_node *kv_index_find(const struct kv_index *x, const void *key, size_t klen)
{
    return tab_find(x, key, klen);
}

const struct kv_index_node *kv_index_seek(const struct kv_index *x, const void *key, size_t klen)
{
    struct kv_index_node *const *p = x->head;
    for (int i = x->level - 1; i >= 0; i--)
        while (p[i] && key_cmp(p[i], key, klen) < 0)
            p = p[i]->next;
    return p[0];
}

const struct kv_index_node *kv_index_first(const struct kv_index *x)
{
    return x->head[0];
}

const struct kv_index_node *kv_index_next(const struct kv_index_node *n)
{
    return n->next[0];
}

const uint8_t *kv_index_key(const struct kv_index_node *n, size_t *klen)
{
    *klen = n->klen;
    return node_key(n);
}

const struct kv_index_ent *kv_index_ents(const struct kv_index_node *n, size_t *count)
{
    *count = n->n;
    return n->ents + n->off;
}

const struct kv_index_ent *kv_index_at(const struct kv_index_node *n, int64_t rev)
{
    /* the first write after rev, then the one before it */
    size_t i = rev == INT64_MAX ? n->n : lower_bound(n, rev + 1, 0);
    return i ? &n->ents[n->off + i - 1] : NULL;
}

const struct kv_index_ent *kv_index_before(const struct kv_index_node *n, int64_t rev,
                                           uint64_t sub)
{
    size_t i = lower_bound(n, rev, sub);
    return i ? &n->ents[n->off + i - 1] : NULL;
}

size_t kv_index_keys(const struct kv_index *x)
{
    return x->keys;
}

size_t kv_index_entries(const struct kv_index *x)
{
    return x->entries;
}

size_t kv_index_deleted_keys(const struct kv_index *x)
{
    return x->deleted_keys;
}

size_t kv_index_nodes(const struct kv_index *x, const struct kv_index_node **out)
{
    size_t n = 0;
    for (size_t i = 0; i < x->tab_cap; i++)
        if (x->tab[i])
            out[n++] = x->tab[i];
    return n;
}
