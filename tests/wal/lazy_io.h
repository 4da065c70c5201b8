/* lazy_io.h: power loss for tests, after LazyFS (what etcd's robustness tests run under): an I/O
 * layer over the write-ahead log's hooks (wal.h struct wal_io) that forgets, at a simulated
 * crash, every write not yet made durable by an fdatasync or fsync of its file.
 *
 * What it promises:
 * - A write reaches the file at once (reads see it, as they would see the page cache), and the
 *   layer keeps the bytes it replaced (and the file's size before it) until the next fdatasync
 *   or fsync of that file succeeds.
 * - A write through a descriptor opened with O_DSYNC or O_SYNC is durable when it returns (as
 *   such a write is): nothing syncs it, and a crash keeps it.
 * - lazy_io_crash(dir) rolls back, newest first, every write still unsynced to a file under dir:
 *   the files then hold exactly what was synced. From then on every hooked call on a file under
 *   dir fails with EIO (the machine is off) until lazy_io_revive(dir), so the node being torn
 *   down cannot make anything durable after its crash.
 * - Only file data is modelled: creating, renaming, truncating and unlinking files (which the
 *   log makes durable with directory fsyncs) are taken as durable at once. A file renamed within
 *   its directory after an unsynced write (a temporary file put in place) is found by its inode
 *   and rolled back under its new name.
 * Process-wide (the hooks take no argument) and thread-safe. The layer changes files with raw
 * system calls, so a binary interposing libc's (tests/kv/lazy_lmdb.h) may route them here. */
#ifndef CRAFT_TESTS_WAL_LAZY_IO_H
#define CRAFT_TESTS_WAL_LAZY_IO_H

#include <stddef.h>

#include "raft/snap/snap.h"
#include "raft/wal/wal.h"

const struct wal_io *lazy_io(void);
/* The same layer for the snapshot store's hooks (raft/snap/snap.h struct snap_io). */
const struct snap_io *lazy_snap_io(void);
/* Power loss under dir (an absolute path or one relative to the working directory): returns
 * how many unsynced writes were rolled back. */
size_t lazy_io_crash(const char *dir);
/* Power loss under dir on a disk that reorders writes (as ext4 may: it keeps no write order
 * between syncs): like lazy_io_crash, but each aligned 4 KiB page of each unsynced write is then
 * put back with probability 1/2 (seeded: the same seed and writes give the same files), as if
 * the disk had written it before the power went. Returns how many writes were unsynced. */
size_t lazy_io_crash_torn(const char *dir, unsigned seed);
/* Power back on under dir. */
void lazy_io_revive(const char *dir);
/* Unsynced writes kept for files under dir (NULL: all). */
size_t lazy_io_unsynced(const char *dir);
/* Counts since the start: writes seen, syncs seen. */
void lazy_io_counts(size_t *writes, size_t *syncs);

#endif
