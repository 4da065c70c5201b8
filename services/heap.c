/* heap.c: see heap.h. */
#include "services/heap.h"

#ifdef CRAFT_TCMALLOC
#include <gperftools/malloc_extension_c.h>

size_t heap_release(size_t keep_bytes)
{
    size_t free_bytes = 0, unmapped0 = 0, unmapped1 = 0;
    if (!MallocExtension_GetNumericProperty("tcmalloc.pageheap_free_bytes", &free_bytes) ||
        free_bytes <= keep_bytes)
        return 0;
    MallocExtension_GetNumericProperty("tcmalloc.pageheap_unmapped_bytes", &unmapped0);
    /* Releases whole spans, so possibly a little more than asked. */
    MallocExtension_ReleaseToSystem(free_bytes - keep_bytes);
    MallocExtension_GetNumericProperty("tcmalloc.pageheap_unmapped_bytes", &unmapped1);
    return unmapped1 > unmapped0 ? unmapped1 - unmapped0 : 0;
}

#else

size_t heap_release(size_t keep_bytes)
{
    (void)keep_bytes;
    return 0;
}

#endif
