/* memstore.c: in-memory register store (see memstore.h). A chained hash table under a rwlock. */
#include "services/memstore.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define CMD_PUT 1

struct item {
    struct item *next;
    uint64_t hash;
    size_t klen, vlen;
    uint8_t *val;
    uint8_t key[];
};

struct memstore {
    struct raft_fsm fsm;
    pthread_rwlock_t lock;
    struct item **buckets;
    size_t nbuckets, count;
    uint64_t applied;
};

static uint64_t hash_bytes(const uint8_t *p, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static struct item **find(struct memstore *s, const uint8_t *key, size_t klen, uint64_t h)
{
    struct item **pp = &s->buckets[h & (s->nbuckets - 1)];
    while (*pp && !((*pp)->hash == h && (*pp)->klen == klen && memcmp((*pp)->key, key, klen) == 0))
        pp = &(*pp)->next;
    return pp;
}

static int grow(struct memstore *s)
{
    size_t n = s->nbuckets * 2;
    struct item **b = calloc(n, sizeof *b);
    if (!b)
        return -1;
    for (size_t i = 0; i < s->nbuckets; i++)
        for (struct item *it = s->buckets[i], *next; it; it = next) {
            next = it->next;
            it->next = b[it->hash & (n - 1)];
            b[it->hash & (n - 1)] = it;
        }
    free(s->buckets);
    s->buckets = b;
    s->nbuckets = n;
    return 0;
}

/* Applies one command; fills res. Called with the write lock held. */
static int apply_one(struct memstore *s, const struct raft_entry *e, struct raft_fsm_result *res)
{
    if (e->len < 5 || e->data[0] != CMD_PUT) {
        res->code = MEMSTORE_EBADCMD;
        return 0;
    }
    uint32_t klen;
    memcpy(&klen, e->data + 1, 4);
    if (klen > e->len - 5) {
        res->code = MEMSTORE_EBADCMD;
        return 0;
    }
    const uint8_t *key = e->data + 5, *val = key + klen;
    size_t vlen = e->len - 5 - klen;
    uint64_t h = hash_bytes(key, klen);
    struct item **pp = find(s, key, klen, h);
    uint8_t *nv = malloc(vlen ? vlen : 1);
    if (!nv)
        return -1;
    memcpy(nv, val, vlen);
    if (*pp) {
        res->code = MEMSTORE_HAD_PREV;
        res->data = (*pp)->val; /* the previous value goes to the proposer */
        res->len = (*pp)->vlen;
        (*pp)->val = nv;
        (*pp)->vlen = vlen;
        return 0;
    }
    struct item *it = malloc(sizeof *it + klen);
    if (!it) {
        free(nv);
        return -1;
    }
    it->hash = h;
    it->klen = klen;
    it->vlen = vlen;
    it->val = nv;
    memcpy(it->key, key, klen);
    it->next = NULL;
    *pp = it;
    if (++s->count > s->nbuckets)
        grow(s); /* failing to grow only makes chains longer */
    return 0;
}

static int fsm_apply(void *ctx, const struct raft_entry *es, size_t n, uint64_t last_index,
                     struct raft_fsm_result *results)
{
    struct memstore *s = ctx;
    int rc = 0;
    pthread_rwlock_wrlock(&s->lock);
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = apply_one(s, &es[i], &results[i]);
    if (rc == 0)
        s->applied = last_index;
    pthread_rwlock_unlock(&s->lock);
    return rc;
}

static uint64_t fsm_applied_index(void *ctx)
{
    (void)ctx;
    return 0; /* nothing survives a restart: replay the whole log */
}

static int fsm_snapshot_write(void *ctx, struct raft_snapshot_writer *w, uint64_t *index,
                              uint64_t *term)
{
    (void)ctx, (void)w, (void)index, (void)term;
    return -38; /* -ENOSYS: snapshots arrive with the snapshot issue */
}

static int fsm_snapshot_restore(void *ctx, struct raft_snapshot_reader *r, uint64_t index,
                                uint64_t term)
{
    (void)ctx, (void)r, (void)index, (void)term;
    return -38;
}

struct memstore *memstore_create(void)
{
    struct memstore *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->nbuckets = 1024;
    s->buckets = calloc(s->nbuckets, sizeof *s->buckets);
    if (!s->buckets) {
        free(s);
        return NULL;
    }
    pthread_rwlock_init(&s->lock, NULL);
    s->fsm = (struct raft_fsm){s, fsm_apply, fsm_applied_index, fsm_snapshot_write,
                               fsm_snapshot_restore};
    return s;
}

void memstore_destroy(struct memstore *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->nbuckets; i++)
        for (struct item *it = s->buckets[i], *next; it; it = next) {
            next = it->next;
            free(it->val);
            free(it);
        }
    free(s->buckets);
    pthread_rwlock_destroy(&s->lock);
    free(s);
}

struct raft_fsm *memstore_fsm(struct memstore *s) { return &s->fsm; }

int memstore_encode_put(const void *key, size_t klen, const void *val, size_t vlen, uint8_t **out,
                        size_t *len)
{
    if (klen > UINT32_MAX)
        return -1;
    uint8_t *b = malloc(5 + klen + vlen);
    if (!b)
        return -1;
    uint32_t k = (uint32_t)klen;
    b[0] = CMD_PUT;
    memcpy(b + 1, &k, 4);
    if (klen)
        memcpy(b + 5, key, klen);
    if (vlen)
        memcpy(b + 5 + klen, val, vlen);
    *out = b;
    *len = 5 + klen + vlen;
    return 0;
}

bool memstore_get(struct memstore *s, const void *key, size_t klen, uint8_t **val, size_t *vlen)
{
    uint64_t h = hash_bytes(key, klen);
    pthread_rwlock_rdlock(&s->lock);
    struct item *it = *find(s, key, klen, h);
    bool found = false;
    if (it && (*val = malloc(it->vlen ? it->vlen : 1))) {
        memcpy(*val, it->val, it->vlen);
        *vlen = it->vlen;
        found = true;
    }
    pthread_rwlock_unlock(&s->lock);
    return found;
}

uint64_t memstore_applied(struct memstore *s)
{
    pthread_rwlock_rdlock(&s->lock);
    uint64_t a = s->applied;
    pthread_rwlock_unlock(&s->lock);
    return a;
}

uint64_t memstore_keys(struct memstore *s)
{
    pthread_rwlock_rdlock(&s->lock);
    uint64_t n = s->count;
    pthread_rwlock_unlock(&s->lock);
    return n;
}
