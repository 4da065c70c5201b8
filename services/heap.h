/* heap.h: returning the allocator's free memory to the OS.
 *
 * craftd links gperftools' tcmalloc (//bazel:malloc, which defines CRAFT_TCMALLOC), which keeps
 * the pages it frees in its page heap and at its default release rate returns them to the OS
 * slowly (a first page after about 2 GiB of page frees, then about one per thousand freed):
 * after a burst (thousands of connections handshaking at once) the page heap stays at the
 * burst's high-water mark, and later bursts touch more of its pages, so VmRSS creeps up towards
 * it (docs/rpc.md "Hostile clients"). Go, and so etcd, has a background scavenger for the
 * same reason; heap_scavenge is craftd's, called about once a second from craftd's main loop,
 * and returns only pages that stayed free for HEAP_SCAVENGE_WINDOW seconds.
 * Without tcmalloc (--config=asan, whose allocator releases on its own) it does nothing.
 */
#ifndef CRAFT_SERVICES_HEAP_H
#define CRAFT_SERVICES_HEAP_H

#include <stddef.h>

/* Returns free pages held by the allocator beyond keep_bytes to the OS (they stay mapped, and
 * come back zeroed on next use); returns the bytes released, 0 when keep_bytes or less are free
 * or without tcmalloc. Cheap when there is nothing to do: one statistics read. */
size_t heap_release(size_t keep_bytes);

/* Pages must stay free over this many readings in a row (seconds, at craftd's one a second)
 * before heap_scavenge returns them: a loaded member's page heap rises and falls with its churn,
 * and pages it reuses within seconds are cheaper kept than faulted back in. */
#define HEAP_SCAVENGE_WINDOW 5

/* The last readings of the allocator's free pages. Zeroed to start. */
struct heap_scavenger {
    size_t free_bytes[HEAP_SCAVENGE_WINDOW];
    unsigned readings;
};

/* One reading: returns to the OS the free pages beyond keep_bytes that were free at each of
 * the last HEAP_SCAVENGE_WINDOW readings (the least of them, less keep_bytes); returns the
 * bytes released (0 without tcmalloc). */
size_t heap_scavenge(struct heap_scavenger *hs, size_t keep_bytes);

#endif
