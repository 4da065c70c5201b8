/* wal.h: the Raft log and hard state on disk (docs/wal.md has the byte-level format).
 *
 * What this module promises:
 * - Entries are stored in index order in segment files; every record carries a CRC32C. An index is
 *   reported durable (wal_wait_durable, wal_durable_index, the on_durable callback) only after the
 *   fdatasync covering it has returned successfully.
 * - Group commit: wal_append only validates, encodes and enqueues; one writer thread inside the module
 *   takes everything pending, writes it with one pwrite and makes it durable with one fdatasync
 *   (two when the batch crosses into a new segment), then notifies. Indexes are assigned by the
 *   caller; an append must continue the log exactly (index == wal_last_index() + 1) or it is refused.
 * - Bounded: at most max_pending_entries / max_pending_bytes are queued or being written; beyond
 *   that wal_append returns -EAGAIN at once (it never blocks), so it is safe to call under a lock.
 * - After open, the log on disk is exactly a durable prefix of what was appended: a torn tail of the
 *   last segment is cut (and reported through the log callback); any other damage makes wal_open
 *   fail with a message naming the file and the offset. Nothing committed is silently dropped.
 * - A write, fdatasync or fallocate failure (ENOSPC, EIO) fails the batch and every entry queued
 *   after it: the durable index stays where it was, the failed entries are no longer in the log
 *   (wal_last_index() drops back to the durable index) and the caller may append them again later;
 *   the next batch first zeroes what the failed one may have left on disk.
 * - wal_truncate_suffix, wal_compact_prefix and wal_reset are crash-safe: after a crash at any
 *   point the log reopens either as before or as after, or (truncation only) as the old log cut
 *   somewhere between the two lengths, which is still a prefix of the old log.
 * - The term of the entry just before the first stored one is kept (wal_term_at(first - 1)), across
 *   compaction, reset and reopen, so the caller can anchor its log after a snapshot.
 * - wal_save_hard_state is durable and atomic before it returns.
 * - The data directory is locked (flock on <dir>/LOCK); a second opener, in this or another process,
 *   is refused.
 *
 * Errors: functions return 0 or a negative errno-style code; the reason is available from
 * wal_errmsg() in the same thread. Nothing here calls exit() or abort() on bad input.
 * Thread safety: every function may be called from any thread concurrently, except wal_close, which
 * must be the last call. */
#ifndef CRAFT_RAFT_WAL_H
#define CRAFT_RAFT_WAL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "raft/entry.h"

struct wal;

/* Called by the writer thread after each batch, without any WAL lock held. On success err == 0 and
 * every entry up to `index` (whose term is `term`) is durable. On failure err < 0: entries above
 * `index` were dropped and must be appended again. Because the callback runs unlocked, it may arrive
 * after a concurrent wal_truncate_suffix has already removed `index`: compare `term` with your own
 * log before trusting it (as etcd's raft does); likewise it may arrive after a wal_reset, for an
 * index at or below the reset point. It must not call wal_close, wal_truncate_suffix,
 * wal_compact_prefix or wal_reset (they wait for the writer), nor block on a lock held by a caller
 * of those. */
typedef void (*wal_durable_fn)(void *arg, uint64_t index, uint64_t term, int err);
/* Receives notices (a torn tail cut at open, leftover files removed) instead of the logger
 * (log/log.h: warn lines), e.g. to keep tests quiet. Default: NULL, the logger. */
typedef void (*wal_log_fn)(void *arg, const char *msg);

/* Test hooks: the system calls the module uses to change files. NULL members use the real call. */
struct wal_io {
    ssize_t (*pwrite)(int fd, const void *buf, size_t len, off_t off);
    int (*fdatasync)(int fd);
    int (*fsync)(int fd);
    int (*fallocate)(int fd, off_t off, off_t len); /* returns 0 or an errno value */
};
/* Test hook: called before each disk step of truncation, compaction and reset (op is "truncate",
 * "compact" or "reset", step counts from 0; wal_open calls it with "reset", from step 1, when it
 * finishes an interrupted reset); a nonzero return stops the operation there, as a crash would.
 * The handle is then unusable except for wal_close. */
typedef int (*wal_step_fn)(void *arg, const char *op, int step);

struct wal_options {
    uint64_t segment_size;      /* bytes per segment file, preallocated; default 64 MiB */
    size_t max_pending_entries; /* queued + being written; default 65536 */
    size_t max_pending_bytes;   /* encoded bytes queued + being written; default 64 MiB */
    uint32_t max_entry_bytes;   /* largest payload; default 16 MiB (capped to fit a segment) */
    wal_durable_fn on_durable;
    void *on_durable_arg;
    wal_log_fn log;
    void *log_arg;
    uint64_t log_id;            /* the member's id, as "member" on log lines; 0 = none */
    uint64_t warn_sync_ns;      /* an fdatasync longer than this logs "slow fdatasync"
                                 * (rate-limited); 0 = default 1 s (etcd's) */
    const struct wal_io *io; /* tests only */
    wal_step_fn step_hook;   /* tests only */
    void *step_arg;
};

void wal_options_init(struct wal_options *opts);

/* Opens (creating if needed) the log in `dir`, recovering it as described above. On failure *out
 * is NULL and err (errlen bytes, may be NULL) holds the reason. */
int wal_open(struct wal **out, const char *dir, const struct wal_options *opts, char *err,
             size_t errlen);
/* Waits for queued entries to be written (errors are dropped), stops the writer, unlocks. */
void wal_close(struct wal *w);

/* Enqueues n entries (copied; the caller keeps ownership). entries[0].index must be
 * wal_last_index()+1 and the rest consecutive, terms non-decreasing. Returns 0, -EINVAL
 * (not contiguous, bad type), -EMSGSIZE (payload too large), -EAGAIN (queue full), or the error
 * that made the handle unusable. */
int wal_append(struct wal *w, const struct raft_entry *entries, size_t n);
/* Blocks until `index` is durable (0) or is no longer in the log because its batch failed or was
 * truncated (the failure's error, or -ECANCELED). A wait in progress when a wal_reset happens
 * returns -ECANCELED; one begun after it returns 0 for indexes up to the reset point, which the
 * caller's snapshot covers. */
int wal_wait_durable(struct wal *w, uint64_t index);
uint64_t wal_durable_index(struct wal *w);
/* Durations of the log's segment fdatasyncs (etcd's etcd_disk_wal_fsync_duration_seconds,
 * etcd's buckets; metrics/metrics.h), counted lock-free by the writer; valid until wal_close. */
struct metrics_histogram;
const struct metrics_histogram *wal_fsync_histogram(const struct wal *w);

uint64_t wal_first_index(struct wal *w); /* first entry kept; last+1 when the log is empty */
uint64_t wal_last_index(struct wal *w);  /* last entry appended (queued or durable); first-1 if none */
/* Term of entry `index` in [first, last], and also of first - 1, the entry just before the first
 * stored one (0 for entry 0; after wal_compact_prefix the last entry deleted; after wal_reset the
 * reset term), so that an append at prev_index == first - 1 can be checked. -ENOENT outside
 * [first - 1, last], and for first - 1 in a log compacted by a build that did not record that term
 * (first-index marker version 1, docs/wal.md). */
int wal_term_at(struct wal *w, uint64_t index, uint64_t *term);
/* Reads one entry (queued entries included). out->data is malloc'd (NULL when len == 0): free() it.
 * -ENOENT outside [first, last]; -EIO and a message if the disk no longer holds what was written. */
int wal_read(struct wal *w, uint64_t index, struct raft_entry *out);
/* Reads entries lo..hi inclusive, stopping early once max_bytes of payload are collected (at least
 * one entry is always returned). *out is a malloc'd array of *n entries: free with
 * wal_entries_free. */
int wal_read_range(struct wal *w, uint64_t lo, uint64_t hi, size_t max_bytes,
                   struct raft_entry **out, size_t *n);
void wal_entries_free(struct raft_entry *entries, size_t n);

/* Removes entries >= index (a follower's conflicting tail). Waits for a batch being written, drops
 * queued entries >= index (their waiters get -ECANCELED), then cuts the files. index must be in
 * [first, last+1]; index == last+1 is a no-op. */
int wal_truncate_suffix(struct wal *w, uint64_t index);
/* Deletes whole segments whose entries are all < index (for snapshots). The last segment is never
 * deleted, so wal_first_index() may stay below index. */
int wal_compact_prefix(struct wal *w, uint64_t index);
/* Replaces the whole log with an empty one that continues after (index, term), as when a snapshot
 * up to index is installed: afterwards wal_first_index() == index + 1, wal_last_index() ==
 * wal_durable_index() == index, wal_term_at(index) gives term, and the next append must be
 * index + 1 with a term >= term. Every entry is discarded, whether index lies beyond the last
 * entry, inside the log or below its first entry. Waits for a batch being written, drops queued
 * entries (their waiters get -ECANCELED), then replaces the files; durable on return.
 * (0, 0) is a log empty from 1; otherwise term must be >= 1 and index < UINT64_MAX (-EINVAL).
 * A failure before the change is committed (writing the 32-byte journal on a full disk) leaves
 * the log as before, minus the queued entries, and the handle usable; a failure after it leaves
 * the handle unusable (later calls return -EIO) and the next wal_open finishes the reset. Either
 * way the error is returned and the log reopens as before or as after, never a mix. */
int wal_reset(struct wal *w, uint64_t index, uint64_t term);

/* Replaces the hard state durably and atomically (write + fsync + rename + directory fsync). */
int wal_save_hard_state(struct wal *w, const struct raft_hard_state *hs);
/* The hard state as last saved ({0, 0} for a new directory). */
void wal_load_hard_state(struct wal *w, struct raft_hard_state *hs);

/* The message of the last failed wal_* call made by this thread. */
const char *wal_errmsg(void);

/* ---- The segment decoder, used by recovery and exposed for fuzzing and tests. ---- */

#define WAL_SEG_HEADER_SIZE 32
#define WAL_REC_HEADER_SIZE 32

/* Called for each valid record in order; data points into the buffer. Nonzero return stops. */
typedef int (*wal_record_fn)(void *arg, const struct raft_entry *e, size_t offset);

struct wal_decode_result {
    uint64_t first_index; /* from the header */
    uint64_t count;       /* valid records */
    size_t end;           /* offset just past the last valid record */
    size_t dirty_end;     /* offset past the last nonzero byte (>= end); > end means a torn tail */
};

/* Decodes one segment image. expected_first is the index named by the file name; is_last says
 * whether it is the newest segment (only there may a torn tail be cut). Returns 0 with *res filled
 * (res->dirty_end > res->end when bytes after the last valid record must be discarded), or
 * -EBADMSG with a message naming `name` and the offset. Never reads outside buf[0..len). */
int wal_segment_decode(const uint8_t *buf, size_t len, const char *name, uint64_t expected_first,
                       int is_last, wal_record_fn fn, void *arg, struct wal_decode_result *res,
                       char *err, size_t errlen);

#endif
