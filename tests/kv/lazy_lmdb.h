/* lazy_lmdb.h: power loss for code that does its own file I/O - LMDB's shared library, under the
 * KV store, and the store's kv.state - by interposing the libc calls it makes and routing those
 * on files under a tracked directory into tests/wal/lazy_io (the LazyFS-style undo log of
 * unsynced writes; lazy_io_crash(dir) then drops them, lazy_io_revive(dir) powers back on).
 *
 * What it promises:
 * - Linked into a test executable (not a shared library: only a definition in the executable
 *   comes before libc's, and ASan's, in the dynamic linker's search), it defines pwrite,
 *   pwrite64, write, writev, fdatasync and fsync. On a regular file under a tracked directory:
 *   pwrite becomes lazy_io's write (undo kept until the file is synced; a descriptor opened with
 *   O_DSYNC writes durably, as LMDB's meta-page descriptor does); write and writev (LMDB's
 *   multi-page runs, after an lseek) the same at the descriptor's offset, which they advance;
 *   fdatasync and fsync make the file's earlier writes durable. Under a directory whose power
 *   is off (lazy_io_crash) each of them fails with EIO. Everything else - other files, pipes,
 *   directories' fsyncs, and every call while nothing is tracked - goes to the next definition
 *   (dlsym RTLD_NEXT: ASan's interceptor under --config=asan, else libc).
 * - Not modelled (taken as durable at once, as lazy_io does): creating, truncating, renaming
 *   and unlinking files, and writes through a shared writable mapping (LMDB's MDB_WRITEMAP,
 *   which the store does not use). Reads are not touched: LMDB reads its read-only mapping, so
 *   a crash must be taken with the store closed or abandoned, and the store reopened after.
 * - Counts of the calls routed, so a test can check that the interposition happens at all.
 * Process-wide, thread-safe. */
#ifndef CRAFT_TESTS_KV_LAZY_LMDB_H
#define CRAFT_TESTS_KV_LAZY_LMDB_H

#include <stddef.h>
#include <stdint.h>

/* Route calls on files under dir (absolute, or relative to the working directory; at most 8
 * directories at once) / stop routing them. */
void lazy_lmdb_track(const char *dir);
void lazy_lmdb_untrack(const char *dir);

struct lazy_lmdb_counts {
    size_t pwrite, write, writev; /* writes routed into lazy_io */
    size_t dsync_writes;          /* of those, through an O_DSYNC descriptor */
    size_t fdatasync, fsync;      /* syncs routed */
};
/* Counts since the start. */
void lazy_lmdb_counts(struct lazy_lmdb_counts *c);

/* Test hook: called before every routed fdatasync or fsync (n counts them from 1), on the
 * syncing thread, before the sync reaches lazy_io - a hook calling lazy_io_crash there cuts
 * the power in the middle of the caller's sync, which then fails with EIO. NULL = none. */
typedef void (*lazy_lmdb_sync_fn)(void *arg, uint64_t n);
void lazy_lmdb_on_sync(lazy_lmdb_sync_fn fn, void *arg);

#endif
