/* node_timer.c: the runtime's deadline heap (see struct node_timer in node_internal.h), shared by
 * waiting proposals and waiting reads. */
#include <stdlib.h>

#include "raft/node/node_internal.h"

static void swap(struct node_timer_heap *h, size_t a, size_t b)
{
    struct node_timer *x = h->v[a];
    h->v[a] = h->v[b];
    h->v[b] = x;
    h->v[a]->heap_pos = a;
    h->v[b]->heap_pos = b;
}

static void up(struct node_timer_heap *h, size_t i)
{
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h->v[p]->deadline_ns <= h->v[i]->deadline_ns)
            break;
        swap(h, i, p);
        i = p;
    }
}

static void down(struct node_timer_heap *h, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < h->n && h->v[l]->deadline_ns < h->v[m]->deadline_ns)
            m = l;
        if (r < h->n && h->v[r]->deadline_ns < h->v[m]->deadline_ns)
            m = r;
        if (m == i)
            return;
        swap(h, i, m);
        i = m;
    }
}

int node_timer_add(struct node_timer_heap *h, struct node_timer *t)
{
    t->heap_pos = SIZE_MAX;
    if (!t->deadline_ns)
        return 0;
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        struct node_timer **v = realloc(h->v, cap * sizeof(*v));
        if (!v)
            return RAFT_NODE_ENOMEM;
        h->v = v;
        h->cap = cap;
    }
    t->heap_pos = h->n;
    h->v[h->n++] = t;
    up(h, t->heap_pos);
    return 0;
}

void node_timer_remove(struct node_timer_heap *h, struct node_timer *t)
{
    if (t->heap_pos == SIZE_MAX)
        return;
    size_t i = t->heap_pos;
    h->n--;
    if (i != h->n) {
        h->v[i] = h->v[h->n];
        h->v[i]->heap_pos = i;
        down(h, i);
        up(h, i);
    }
    t->heap_pos = SIZE_MAX;
}

struct node_timer *node_timer_due(const struct node_timer_heap *h, int64_t now)
{
    return h->n && h->v[0]->deadline_ns <= now ? h->v[0] : NULL;
}

void node_timer_heap_free(struct node_timer_heap *h)
{
    free(h->v);
    h->v = NULL;
    h->n = h->cap = 0;
}
