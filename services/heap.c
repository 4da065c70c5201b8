/* heap.c: see heap.h. */
#include "services/heap.h"

#ifdef CRAFT_TCMALLOC
#include <gperftools/malloc_extension_c.h>

static size_t free_bytes(void)
{
    size_t n = 0;
    return MallocExtension_GetNumericProperty("tcmalloc.pageheap_free_bytes", &n) ? n : 0;
}

static size_t release_bytes(size_t n)
{
    size_t unmapped0 = 0, unmapped1 = 0;
    MallocExtension_GetNumericProperty("tcmalloc.pageheap_unmapped_bytes", &unmapped0);
    /* Releases whole spans, so possibly a little more than asked. */
    MallocExtension_ReleaseToSystem(n);
    MallocExtension_GetNumericProperty("tcmalloc.pageheap_unmapped_bytes", &unmapped1);
    return unmapped1 > unmapped0 ? unmapped1 - unmapped0 : 0;
}

#else

static size_t free_bytes(void) { return 0; }

static size_t release_bytes(size_t n)
{
    (void)n;
    return 0;
}

#endif

size_t heap_release(size_t keep_bytes)
{
    size_t f = free_bytes();
    return f > keep_bytes ? release_bytes(f - keep_bytes) : 0;
}

size_t heap_scavenge(struct heap_scavenger *hs, size_t keep_bytes)
{
    hs->free_bytes[hs->readings++ % HEAP_SCAVENGE_WINDOW] = free_bytes();
    if (hs->readings < HEAP_SCAVENGE_WINDOW)
        return 0;
    size_t least = hs->free_bytes[0];
    for (int i = 1; i < HEAP_SCAVENGE_WINDOW; i++)
        if (hs->free_bytes[i] < least)
            least = hs->free_bytes[i];
    if (least <= keep_bytes)
        return 0;
    size_t released = release_bytes(least - keep_bytes);
    /* Those pages are gone from every earlier reading too: not released twice. */
    for (int i = 0; i < HEAP_SCAVENGE_WINDOW; i++)
        hs->free_bytes[i] = hs->free_bytes[i] > released ? hs->free_bytes[i] - released : 0;
    return released;
}
