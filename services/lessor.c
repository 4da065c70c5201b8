/* lessor.c: the leader's lease expiries (see lessor.h). Leases live in a dense array; an
 * open-addressing hash maps IDs to their slot; two binary min-heaps of slots order them by
 * next due time (expiry, or the retry of an offered revoke) and by next checkpoint. */
#include "services/lessor.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define NONE UINT32_MAX

struct lease {
    int64_t id;
    int64_t ttl;      /* seconds */
    int64_t expiry;   /* ms */
    int64_t due;      /* expiry, or when an offered revoke may be offered again */
    int64_t cp_due;   /* next checkpoint (valid while cpos != NONE) */
    uint64_t cp_seq;  /* the offer that last recorded a remaining TTL */
    uint32_t hpos;    /* in the due heap */
    uint32_t cpos;    /* in the checkpoint heap, or NONE */
    bool cp_set;      /* the store may hold a nonzero remaining TTL */
};

struct note {
    int64_t id, ttl; /* ttl 0: a revoke */
};

enum state { IDLE, PROMOTING, PRIMARY };

struct lessor {
    struct lessor_config cfg;
    enum state state;
    struct lease *v;
    uint32_t n, cap;
    uint32_t *slots; /* hash: slot index + 1, 0 = empty */
    uint32_t nslots; /* power of two, >= 2 * cap */
    uint32_t *heap;  /* due heap: lease slots */
    uint32_t *cheap; /* checkpoint heap */
    uint32_t ncheap;
    uint64_t seq;
    struct note *notes; /* during a promotion */
    size_t nnotes, capnotes;
    bool overflow;
};

/* ---- hash --------------------------------------------------------------------------------- */

static uint32_t hash_of(int64_t id, uint32_t mask)
{
    uint64_t x = (uint64_t)id * 0x9E3779B97F4A7C15ull;
    return (uint32_t)(x >> 32) & mask;
}

static uint32_t find(const struct lessor *l, int64_t id)
{
    if (!l->nslots)
        return NONE;
    uint32_t mask = l->nslots - 1;
    for (uint32_t i = hash_of(id, mask);; i = (i + 1) & mask) {
        uint32_t s = l->slots[i];
        if (!s)
            return NONE;
        if (l->v[s - 1].id == id)
            return s - 1;
    }
}

static uint32_t *slot_of(struct lessor *l, int64_t id)
{
    uint32_t mask = l->nslots - 1;
    for (uint32_t i = hash_of(id, mask);; i = (i + 1) & mask)
        if (!l->slots[i] || l->v[l->slots[i] - 1].id == id)
            return &l->slots[i];
}

/* Linear probing with backward-shift deletion: no tombstones to clean up. */
static void hash_remove(struct lessor *l, int64_t id)
{
    uint32_t mask = l->nslots - 1;
    uint32_t i = (uint32_t)(slot_of(l, id) - l->slots);
    l->slots[i] = 0;
    for (uint32_t j = (i + 1) & mask; l->slots[j]; j = (j + 1) & mask) {
        uint32_t home = hash_of(l->v[l->slots[j] - 1].id, mask);
        /* move j back into the hole when its home is not in (i, j] cyclically */
        bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            l->slots[i] = l->slots[j];
            l->slots[j] = 0;
            i = j;
        }
    }
}

static int grow(struct lessor *l)
{
    uint32_t cap = l->cap ? l->cap * 2 : 64;
    struct lease *v = realloc(l->v, (size_t)cap * sizeof *v);
    if (!v)
        return -1;
    l->v = v;
    uint32_t *h = realloc(l->heap, (size_t)cap * sizeof *h);
    if (!h)
        return -1;
    l->heap = h;
    h = realloc(l->cheap, (size_t)cap * sizeof *h);
    if (!h)
        return -1;
    l->cheap = h;
    uint32_t ns = cap * 2;
    uint32_t *slots = calloc(ns, sizeof *slots);
    if (!slots)
        return -1;
    free(l->slots);
    l->slots = slots;
    l->nslots = ns;
    l->cap = cap;
    for (uint32_t i = 0; i < l->n; i++)
        *slot_of(l, l->v[i].id) = i + 1;
    return 0;
}

/* ---- heaps (of lease slots; each lease knows its position) ---------------------------------- */

static int64_t key_due(const struct lessor *l, uint32_t s) { return l->v[s].due; }
static int64_t key_cp(const struct lessor *l, uint32_t s) { return l->v[s].cp_due; }

struct heapdef {
    uint32_t *a;
    uint32_t n;
    int64_t (*key)(const struct lessor *, uint32_t);
    size_t pos_off; /* offsetof(struct lease, hpos or cpos) */
};

static uint32_t *posp(struct lessor *l, const struct heapdef *h, uint32_t s)
{
    return (uint32_t *)((char *)&l->v[s] + h->pos_off);
}

static void hset(struct lessor *l, const struct heapdef *h, uint32_t i, uint32_t s)
{
    h->a[i] = s;
    *posp(l, h, s) = i;
}

static void sift_up(struct lessor *l, const struct heapdef *h, uint32_t i)
{
    uint32_t s = h->a[i];
    int64_t k = h->key(l, s);
    while (i > 0) {
        uint32_t p = (i - 1) / 2;
        if (h->key(l, h->a[p]) <= k)
            break;
        hset(l, h, i, h->a[p]);
        i = p;
    }
    hset(l, h, i, s);
}

static void sift_down(struct lessor *l, const struct heapdef *h, uint32_t i)
{
    uint32_t s = h->a[i];
    int64_t k = h->key(l, s);
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= h->n)
            break;
        if (c + 1 < h->n && h->key(l, h->a[c + 1]) < h->key(l, h->a[c]))
            c++;
        if (h->key(l, h->a[c]) >= k)
            break;
        hset(l, h, i, h->a[c]);
        i = c;
    }
    hset(l, h, i, s);
}

static struct heapdef due_heap(struct lessor *l)
{
    return (struct heapdef){l->heap, l->n, key_due, offsetof(struct lease, hpos)};
}

static struct heapdef cp_heap(struct lessor *l)
{
    return (struct heapdef){l->cheap, l->ncheap, key_cp, offsetof(struct lease, cpos)};
}

/* Removes position i of heap h (whose size the caller then decrements). */
static void heap_remove_at(struct lessor *l, struct heapdef *h, uint32_t i)
{
    uint32_t last = h->a[h->n - 1];
    h->n--;
    if (i == h->n)
        return;
    hset(l, h, i, last);
    sift_up(l, h, i);
    sift_down(l, h, *posp(l, h, last));
}

static void due_update(struct lessor *l, uint32_t s, int64_t due)
{
    l->v[s].due = due;
    struct heapdef h = due_heap(l);
    uint32_t i = l->v[s].hpos;
    sift_up(l, &h, i);
    sift_down(l, &h, l->v[s].hpos);
}

static void cp_schedule(struct lessor *l, uint32_t s, int64_t now)
{
    struct lease *x = &l->v[s];
    if (!l->cfg.checkpoint_ms || x->ttl > INT64_MAX / 1000 || x->ttl * 1000 <= l->cfg.checkpoint_ms)
        return;
    x->cp_due = now + l->cfg.checkpoint_ms;
    struct heapdef h = cp_heap(l);
    if (x->cpos == NONE) {
        h.n = ++l->ncheap;
        hset(l, &h, h.n - 1, s);
        sift_up(l, &h, h.n - 1);
    } else {
        sift_up(l, &h, x->cpos);
        sift_down(l, &h, x->cpos);
    }
}

/* ---- leases ------------------------------------------------------------------------------- */

static int64_t add_ms(int64_t a, int64_t b)
{
    return b > 0 && a > INT64_MAX - b ? INT64_MAX : a + b;
}

static int64_t secs_ms(int64_t s)
{
    return s > INT64_MAX / 1000 ? INT64_MAX : s * 1000;
}

/* Adds or replaces lease id expiring at expiry. */
static int put(struct lessor *l, int64_t now, int64_t id, int64_t ttl, int64_t expiry, bool cp_set)
{
    uint32_t s = find(l, id);
    if (s == NONE) {
        if (l->n == l->cap && grow(l) != 0)
            return LESSOR_ENOMEM;
        s = l->n++;
        l->v[s] = (struct lease){.id = id, .cpos = NONE};
        *slot_of(l, id) = s + 1;
        struct heapdef h = due_heap(l);
        hset(l, &h, s, s);
    }
    struct lease *x = &l->v[s];
    x->ttl = ttl;
    x->expiry = expiry;
    x->cp_set = cp_set;
    x->cp_seq = cp_set ? ++l->seq : 0;
    due_update(l, s, expiry);
    cp_schedule(l, s, now);
    return LESSOR_OK;
}

static void drop(struct lessor *l, int64_t id)
{
    uint32_t s = find(l, id);
    if (s == NONE)
        return;
    struct heapdef h = due_heap(l);
    heap_remove_at(l, &h, l->v[s].hpos);
    if (l->v[s].cpos != NONE) {
        struct heapdef c = cp_heap(l);
        heap_remove_at(l, &c, l->v[s].cpos);
        l->ncheap--;
    }
    hash_remove(l, id);
    uint32_t last = --l->n;
    if (s != last) { /* the last lease moves into s */
        l->v[s] = l->v[last];
        l->heap[l->v[s].hpos] = s;
        if (l->v[s].cpos != NONE)
            l->cheap[l->v[s].cpos] = s;
        *slot_of(l, l->v[s].id) = s + 1;
    }
}

static void clear(struct lessor *l)
{
    l->n = 0;
    l->ncheap = 0;
    if (l->slots)
        memset(l->slots, 0, (size_t)l->nslots * sizeof *l->slots);
    l->nnotes = 0;
    l->overflow = false;
}

/* ---- the contract ------------------------------------------------------------------------- */

struct lessor *lessor_create(const struct lessor_config *cfg)
{
    struct lessor *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->cfg = *cfg;
    if (l->cfg.retry_ms <= 0)
        l->cfg.retry_ms = LESSOR_DEFAULT_RETRY_MS;
    if (l->cfg.checkpoint_ms < 0)
        l->cfg.checkpoint_ms = 0;
    if (!l->cfg.max_pending)
        l->cfg.max_pending = LESSOR_DEFAULT_MAX_PENDING;
    return l;
}

void lessor_destroy(struct lessor *l)
{
    if (!l)
        return;
    free(l->v);
    free(l->slots);
    free(l->heap);
    free(l->cheap);
    free(l->notes);
    free(l);
}

void lessor_promote_begin(struct lessor *l)
{
    clear(l);
    l->state = PROMOTING;
}

int lessor_promote_add(struct lessor *l, int64_t now_ms, int64_t extend_ms, int64_t id,
                       int64_t ttl, int64_t remaining)
{
    if (l->state != PROMOTING)
        return LESSOR_NOT_PRIMARY;
    int64_t expiry = add_ms(add_ms(now_ms, secs_ms(remaining > 0 ? remaining : ttl)), extend_ms);
    int rc = put(l, now_ms, id, ttl, expiry, remaining > 0);
    if (rc != LESSOR_OK)
        lessor_demote(l);
    return rc;
}

int lessor_promote_end(struct lessor *l, int64_t now_ms)
{
    if (l->state != PROMOTING)
        return LESSOR_NOT_PRIMARY;
    if (l->overflow) {
        lessor_demote(l);
        return LESSOR_EOVERFLOW;
    }
    /* Replay what was applied while the store was read: a grant the read already saw is kept
     * as read (with the extension), a revoke removes. */
    for (size_t i = 0; i < l->nnotes; i++) {
        const struct note *nt = &l->notes[i];
        if (nt->ttl == 0) {
            drop(l, nt->id);
        } else if (find(l, nt->id) == NONE &&
                   put(l, now_ms, nt->id, nt->ttl, add_ms(now_ms, secs_ms(nt->ttl)), false)) {
            lessor_demote(l);
            return LESSOR_ENOMEM;
        }
    }
    l->nnotes = 0;
    l->state = PRIMARY;
    return LESSOR_OK;
}

void lessor_demote(struct lessor *l)
{
    clear(l);
    l->state = IDLE;
}

bool lessor_is_primary(const struct lessor *l) { return l->state == PRIMARY; }

size_t lessor_count(const struct lessor *l) { return l->n; }

static void note(struct lessor *l, int64_t id, int64_t ttl)
{
    if (l->nnotes == l->capnotes) {
        size_t cap = l->capnotes ? l->capnotes * 2 : 64;
        if (cap > l->cfg.max_pending)
            cap = l->cfg.max_pending;
        struct note *n = cap > l->capnotes ? realloc(l->notes, cap * sizeof *n) : NULL;
        if (!n) {
            l->overflow = true;
            return;
        }
        l->notes = n;
        l->capnotes = cap;
    }
    l->notes[l->nnotes++] = (struct note){id, ttl};
}

int lessor_granted(struct lessor *l, int64_t now_ms, int64_t id, int64_t ttl)
{
    if (ttl < 1)
        ttl = 1;
    if (l->state == PROMOTING) {
        note(l, id, ttl);
        return LESSOR_OK;
    }
    if (l->state != PRIMARY)
        return LESSOR_OK;
    return put(l, now_ms, id, ttl, add_ms(now_ms, secs_ms(ttl)), false);
}

void lessor_revoked(struct lessor *l, int64_t id)
{
    if (l->state == PROMOTING)
        note(l, id, 0);
    else if (l->state == PRIMARY)
        drop(l, id);
}

int lessor_renew(struct lessor *l, int64_t id, int64_t now_ms, int64_t *ttl, uint64_t *token)
{
    if (l->state != PRIMARY)
        return LESSOR_NOT_PRIMARY;
    uint32_t s = find(l, id);
    if (s == NONE)
        return LESSOR_NOT_FOUND;
    struct lease *x = &l->v[s];
    if (x->expiry <= now_ms)
        return LESSOR_EXPIRED;
    if (x->cp_set) {
        *token = x->cp_seq;
        return LESSOR_NEEDS_RESET;
    }
    x->expiry = add_ms(now_ms, secs_ms(x->ttl));
    due_update(l, s, x->expiry);
    *ttl = x->ttl;
    return LESSOR_OK;
}

void lessor_reset_applied(struct lessor *l, int64_t id, uint64_t token)
{
    if (l->state != PRIMARY)
        return;
    uint32_t s = find(l, id);
    if (s != NONE && l->v[s].cp_seq == token)
        l->v[s].cp_set = false;
}

int lessor_remaining(const struct lessor *l, int64_t id, int64_t now_ms, int64_t *remaining,
                     int64_t *granted)
{
    if (l->state != PRIMARY)
        return LESSOR_NOT_PRIMARY;
    uint32_t s = find(l, id);
    if (s == NONE)
        return LESSOR_NOT_FOUND;
    const struct lease *x = &l->v[s];
    *remaining = x->expiry > now_ms ? (x->expiry - now_ms) / 1000 : 0;
    *granted = x->ttl;
    return LESSOR_OK;
}

size_t lessor_expired(struct lessor *l, int64_t now_ms, int64_t *ids, size_t max)
{
    size_t k = 0;
    if (l->state != PRIMARY)
        return 0;
    while (k < max && l->n && l->v[l->heap[0]].due <= now_ms) {
        uint32_t s = l->heap[0];
        ids[k++] = l->v[s].id;
        due_update(l, s, add_ms(now_ms, l->cfg.retry_ms));
    }
    return k;
}

size_t lessor_checkpoints(struct lessor *l, int64_t now_ms, struct lessor_checkpoint *out,
                          size_t max)
{
    size_t k = 0;
    if (l->state != PRIMARY)
        return 0;
    while (k < max && l->ncheap && l->v[l->cheap[0]].cp_due <= now_ms) {
        uint32_t s = l->cheap[0];
        struct lease *x = &l->v[s];
        cp_schedule(l, s, now_ms);
        if (x->expiry <= now_ms)
            continue;
        int64_t left = (x->expiry - now_ms + 999) / 1000; /* etcd rounds up */
        if (left >= x->ttl)
            continue; /* renewed (or extended) since: nothing shorter to record */
        x->cp_set = true;
        x->cp_seq = ++l->seq;
        out[k++] = (struct lessor_checkpoint){x->id, left};
    }
    return k;
}

int64_t lessor_next_due(const struct lessor *l)
{
    return l->state == PRIMARY && l->n ? l->v[l->heap[0]].due : INT64_MAX;
}
