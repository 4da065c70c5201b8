/* heap_test: heap_release returns the allocator's free pages beyond what it is told to keep
 * (services/heap.h); without tcmalloc (--config=asan) it does nothing. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "services/heap.h"

Test(heap, returns_free_pages_beyond_keep)
{
#ifdef CRAFT_TCMALLOC
    enum { N = 64, SZ = 1 << 20 }; /* large: tcmalloc gives them back to its page heap at free */
    static void *p[N];
    heap_release(0);
    for (int i = 0; i < N; i++) {
        p[i] = malloc(SZ);
        cr_assert(p[i]);
        memset(p[i], 1, SZ); /* resident */
    }
    for (int i = 0; i < N; i++)
        free(p[i]);
    size_t keep = (size_t)16 << 20, got = heap_release(keep);
    cr_assert_geq(got, (size_t)(N * SZ) - keep - (4u << 20), "released %zu bytes", got);
    cr_assert_eq(heap_release(keep), 0, "nothing more to release");
#else
    cr_assert_eq(heap_release(0), 0);
#endif
}

/* heap_scavenge returns only what stayed free over its whole window: pages reused in between
 * stay, pages free at every reading go. */
Test(heap, scavenge_returns_only_pages_free_over_the_window)
{
#ifdef CRAFT_TCMALLOC
    enum { N = 64, SZ = 1 << 20 };
    static void *p[N];
    size_t keep = (size_t)16 << 20;
    heap_release(0);
    struct heap_scavenger hs = {0};
    for (int i = 0; i < N; i++) {
        p[i] = malloc(SZ);
        cr_assert(p[i]);
        memset(p[i], 1, SZ);
    }
    for (int i = 0; i < N; i++)
        free(p[i]);
    /* Free for a moment only: reused before the window is over. */
    for (int r = 0; r < HEAP_SCAVENGE_WINDOW - 1; r++)
        cr_assert_eq(heap_scavenge(&hs, keep), 0, "reading %d released before the window", r);
    for (int i = 0; i < N; i++) {
        p[i] = malloc(SZ);
        cr_assert(p[i]);
        memset(p[i], 2, SZ);
    }
    size_t got = heap_scavenge(&hs, keep);
    cr_assert_lt(got, (size_t)8 << 20, "released %zu bytes of pages in use again", got);
    for (int i = 0; i < N; i++)
        free(p[i]);
    /* Free at every reading of a whole window: released once, at its end. */
    for (int r = 0; r < HEAP_SCAVENGE_WINDOW - 1; r++)
        cr_assert_eq(heap_scavenge(&hs, keep), 0, "reading %d released before the window", r);
    got = heap_scavenge(&hs, keep);
    cr_assert_geq(got, (size_t)(N * SZ) - keep - (4u << 20), "released %zu bytes", got);
    cr_assert_eq(heap_scavenge(&hs, keep), 0, "released twice");
#else
    struct heap_scavenger hs = {0};
    for (int r = 0; r <= HEAP_SCAVENGE_WINDOW; r++)
        cr_assert_eq(heap_scavenge(&hs, 0), 0);
#endif
}
