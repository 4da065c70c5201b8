/* heap.h: returning the allocator's free memory to the OS.
 *
 * craftd links gperftools' tcmalloc (//bazel:malloc, which defines CRAFT_TCMALLOC), which keeps
 * the pages it frees in its page heap and at its default release rate returns them to the OS
 * slowly (a first page after about 2 GiB of page frees, then about one per thousand freed):
 * after a burst (thousands of connections handshaking at once) the page heap stays at the
 * burst's high-water mark, and later bursts touch more of its pages, so VmRSS creeps up towards
 * it (docs/rpc.md "Hostile clients"). Go, and so etcd, has a background scavenger for the
 * same reason; heap_release is craftd's, called about once a second from craftd's main loop.
 * Without tcmalloc (--config=asan, whose allocator releases on its own) it does nothing.
 */
#ifndef CRAFT_SERVICES_HEAP_H
#define CRAFT_SERVICES_HEAP_H

#include <stddef.h>

/* Returns free pages held by the allocator beyond keep_bytes to the OS (they stay mapped, and
 * come back zeroed on next use); returns the bytes released, 0 when keep_bytes or less are free
 * or without tcmalloc. Cheap when there is nothing to do: one statistics read. */
size_t heap_release(size_t keep_bytes);

#endif
