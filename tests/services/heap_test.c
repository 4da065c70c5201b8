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
