/* snap.h: the snapshot file store (docs/snapshots.md has the byte-level format and the reasons).
 *
 * What this module promises:
 * - A snapshot is one file, <term:016x>-<index:016x>.snap, in the store's directory: a 64-byte
 *   header (index, term, lengths, its own CRC32C), an opaque configuration blob (at most
 *   SNAP_MAX_CONFIG bytes), an opaque payload (the state machine's bytes) and an 8-byte trailer
 *   holding the CRC32C of every byte before it. The module knows nothing of what the
 *   configuration or the payload mean.
 * - Writing is atomic: snap_create .. snap_commit write <name>.tmp, fsync it, rename it into place
 *   and fsync the directory. After a crash at any point the store holds either the complete new
 *   snapshot or nothing of it; leftover temporary files are removed when the store is opened.
 * - Nothing is used unverified: snap_open and snap_load_newest check the header, the size and the
 *   checksum of the whole file before returning it, and snap_file_read checks the checksum again
 *   while it streams the payload out, failing rather than returning the last bytes of a file that
 *   changed since. A damaged newer file is skipped (reported through the log callback, naming it)
 *   or makes the load fail (naming it), as the caller chooses.
 * - Retention: after each snapshot committed or installed, only the max_snapshots newest files are
 *   kept (the one just written is never deleted).
 * - Transfer: the sender reads a verified file in chunks (snap_file_chunk). The receiver
 *   (snap_recv_*) takes chunks strictly in order into a partial file kept aside, says how far it
 *   has got so a transfer resumes after a dropped connection or a restart of either side, and
 *   installs the snapshot only when it is complete and verifies; anything else is discarded with
 *   a clear error and the transfer starts over.
 * - Bounded: configuration size, snapshot size, chunk size and files kept each have a default and
 *   a limit (struct snap_options).
 *
 * Errors: 0 or a negative errno-style code, the reason from snap_errmsg() in the same thread (the
 * pure decoders take a buffer instead). Nothing here calls exit() or abort() on bad input.
 * Thread safety: store functions may be called from any thread at once; a snap_writer or snap_file
 * is used by one thread at a time. A writer must be finished before its store is closed; a
 * snap_file stays readable after its file is deleted and after the store is closed. The store locks
 * <dir>/snap.lock and touches only the files named above, but it is meant to have its own
 * directory (e.g. <data-dir>/snap). */
#ifndef CRAFT_RAFT_SNAP_H
#define CRAFT_RAFT_SNAP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define SNAP_HEADER_SIZE 64
#define SNAP_TRAILER_SIZE 8
#define SNAP_MAX_CONFIG (64u * 1024)        /* a configuration blob's largest size (format limit) */
#define SNAP_MAX_PAYLOAD (1ull << 48)       /* format limit: size sums never overflow */
#define SNAP_MAX_CHUNK (16u * 1024 * 1024)  /* the largest max_chunk_bytes */
#define SNAP_NAME_MAX 64                    /* any file name this module makes, with its NUL */

/* What a snapshot's header says. */
struct snap_header {
    uint64_t index;       /* the last log index the snapshot covers (>= 1) */
    uint64_t term;        /* that entry's term (>= 1) */
    uint32_t config_len;  /* <= SNAP_MAX_CONFIG */
    uint64_t payload_len; /* <= SNAP_MAX_PAYLOAD */
};

/* The whole file's size for a header: header + configuration + payload + trailer. */
uint64_t snap_file_size_for(const struct snap_header *h);

/* Receives notices (damaged files skipped, leftovers removed, partial transfers discarded)
 * instead of the logger (log/log.h: warn lines). Default: NULL, the logger. */
typedef void (*snap_log_fn)(void *arg, const char *msg);
/* Test hook: called before each disk step of a commit ("create"), a transfer's installation
 * ("recv") and retention ("retain"), step counting from 0; nonzero stops the operation there as a
 * crash would (files are left as they are). The store is then unusable except for
 * snap_store_close. */
typedef int (*snap_step_fn)(void *arg, const char *op, int step);
/* Test hooks: the calls that change files. NULL members use the real call. */
struct snap_io {
    ssize_t (*pwrite)(int fd, const void *buf, size_t len, off_t off);
    int (*fsync)(int fd);
};

struct snap_options {
    unsigned max_snapshots;      /* files kept after a commit; default 5 (etcd's --max-snapshots);
                                    0 keeps all */
    uint32_t max_chunk_bytes;    /* largest chunk read or accepted; default 1 MiB,
                                    1 .. SNAP_MAX_CHUNK */
    uint64_t max_snapshot_bytes; /* largest whole file written or received; default 16 GiB,
                                    up to the format limit; set it above the state machine's
                                    quota */
    snap_log_fn log;
    void *log_arg;
    uint64_t log_id;             /* the member's id, as "member" on log lines; 0 = none */
    snap_step_fn step_hook;      /* tests only */
    void *step_arg;
    const struct snap_io *io;    /* tests only */
};

void snap_options_init(struct snap_options *o);

struct snap_store;
struct snap_writer;
struct snap_file;

/* Opens (creating if needed) the store in `dir`: locks it, removes leftover temporary files, and
 * recovers an interrupted transfer (resumable, or installed if it was complete and verifies, or
 * discarded). On failure *out is NULL and err (may be NULL) holds the reason. */
int snap_store_open(struct snap_store **out, const char *dir, const struct snap_options *o,
                    char *err, size_t errlen);
/* Closes the store; a transfer in progress stays on disk to resume at the next open. */
void snap_store_close(struct snap_store *s);

/* ---- listing and reading ---- */

struct snap_info {
    uint64_t index, term;
    char name[SNAP_NAME_MAX];
};
/* The snapshot files by name, newest (highest index, then term) first, not verified. *out is
 * malloc'd (free() it); *n may be 0. */
int snap_list(struct snap_store *s, struct snap_info **out, size_t *n);

/* Opens and verifies the snapshot (index, term). -ENOENT if there is none, -EBADMSG with the
 * file named if it is damaged. */
int snap_open(struct snap_store *s, uint64_t index, uint64_t term, struct snap_file **out);

/* Opens the newest snapshot that verifies. A newer one that does not verify is, if skip_damaged,
 * reported through the log callback by name and passed over; otherwise the call fails with
 * -EBADMSG naming it. -ENOENT when there is no snapshot file at all; -EBADMSG naming them when
 * there are files but none verifies (never "no snapshot" then). */
int snap_load_newest(struct snap_store *s, int skip_damaged, struct snap_file **out);

const struct snap_header *snap_file_header(const struct snap_file *f);
const void *snap_file_config(const struct snap_file *f); /* header->config_len bytes */
uint64_t snap_file_size(const struct snap_file *f);
/* Streams the payload from its start: returns the number of bytes read (> 0), 0 at the end once
 * the whole file's checksum has matched, or a negative error (-EBADMSG if it no longer matches:
 * the read that would complete the payload fails instead). Shaped like fsm.h's
 * raft_snapshot_reader. */
long snap_file_read(struct snap_file *f, void *buf, size_t len);
/* The sender's side of a transfer: reads up to min(max, max_chunk_bytes) raw bytes of the file at
 * `offset` into buf; *n is 0 at the end. -EINVAL if offset is beyond the file. */
int snap_file_chunk(struct snap_file *f, uint64_t offset, void *buf, size_t max, size_t *n);
void snap_file_close(struct snap_file *f);

/* ---- writing ---- */

/* Starts writing the snapshot (index, term) - or, with both 0, one named at snap_commit_as - with
 * its configuration blob (config_len <= SNAP_MAX_CONFIG; config may be NULL when config_len is
 * 0). The payload follows through
 * snap_write or snap_writer_fd, then snap_commit or snap_abort. An existing snapshot of the same
 * name is replaced at commit. -EBUSY if one of that name is being written already. */
int snap_create(struct snap_store *s, uint64_t index, uint64_t term, const void *config,
                size_t config_len, struct snap_writer **out);
/* Appends payload bytes. -EFBIG past max_snapshot_bytes. After an error, only snap_abort. */
int snap_write(struct snap_writer *w, const void *buf, size_t len);
/* For a producer that writes to a file descriptor itself (LMDB's mdb_env_copyfd2): the file,
 * positioned just after what has been written, for sequential write()s. Do not close it or move
 * its position backwards. The payload is then whatever the file holds at snap_commit, which reads
 * it back once to checksum it; snap_write may no longer be used. */
int snap_writer_fd(struct snap_writer *w);
/* Finishes the file (header with the final length, trailer), fsyncs it, renames it into place,
 * fsyncs the directory, then applies retention. Frees w whatever the outcome. On an error the
 * temporary file is removed, unless the error came after the rename (directory fsync): then the
 * complete file is in place but may not survive a crash. */
int snap_commit(struct snap_writer *w);
/* For a producer that learns which state it wrote only once it has written it (fsm.h's
 * snapshot_write reports its index at the end): snap_create with index and term both 0, then
 * name it here; otherwise as snap_commit. -EINVAL (and w freed) for a writer created with an
 * index, or a zero index or term. */
int snap_commit_as(struct snap_writer *w, uint64_t index, uint64_t term);
/* Drops an unfinished snapshot: removes its temporary file and frees w. */
void snap_abort(struct snap_writer *w);

/* ---- receiving a transfer (one at a time per store) ---- */

/* Begins, or resumes, receiving the snapshot (index, term) of total_len bytes (the whole file).
 * *offset is where the sender must continue: what was already received of this same snapshot
 * (after a dropped connection or a restart), else 0. A transfer of any other snapshot in
 * progress is discarded. -EINVAL for a total below the smallest file, -EFBIG above
 * max_snapshot_bytes. */
int snap_recv_begin(struct snap_store *s, uint64_t index, uint64_t term, uint64_t total_len,
                    uint64_t *offset);
/* Writes the chunk at `offset` (1..max_chunk_bytes bytes). Returns 0 when more is expected, 1 when
 * this was the last chunk and the snapshot verified and is installed (snap_open finds it), or:
 * -ENOENT no transfer in progress; -ERANGE offset is not where the transfer stands (duplicates
 * and gaps alike; nothing written; ask snap_recv_progress); -EMSGSIZE chunk too large or empty;
 * -EINVAL the chunk ends beyond total_len; -EBADMSG the data is not the snapshot begun (its
 * header disagrees, or the complete file fails verification): the partial file is discarded and
 * the transfer must begin again; a write error (-ENOSPC, -EIO) leaves the transfer where it was,
 * so the same chunk may be sent again. */
int snap_recv_chunk(struct snap_store *s, uint64_t offset, const void *buf, size_t len);

struct snap_progress {
    int active; /* a transfer is in progress; the fields below describe it */
    uint64_t index, term, total_len;
    uint64_t received; /* bytes held; the next chunk must start here */
};
void snap_recv_progress(struct snap_store *s, struct snap_progress *p);
/* Discards the transfer in progress, if any. */
void snap_recv_abort(struct snap_store *s);

/* The message of the last failed snap_* store call made by this thread. */
const char *snap_errmsg(void);

/* ---- the format, exposed for the fuzzer and tests; pure functions, no I/O but the last ---- */

/* Writes the 64-byte header for h (the caller checks the bounds). */
void snap_encode_header(uint8_t out[SNAP_HEADER_SIZE], const struct snap_header *h);
/* Decodes and checks a header (magic, version, checksum, bounds, reserved bytes); never reads
 * beyond buf[0..len). 0, or -EBADMSG with "<name>: offset N: reason" in err. */
int snap_decode_header(const uint8_t *buf, size_t len, const char *name, struct snap_header *h,
                       char *err, size_t errlen);
/* Checks a whole snapshot image in memory: header, size, trailer and checksum. On success the
 * configuration is at buf + SNAP_HEADER_SIZE and the payload follows it. */
int snap_decode(const uint8_t *buf, size_t len, const char *name, struct snap_header *h,
                char *err, size_t errlen);
/* The same check over an open file, streamed through a bounded buffer (the file is never loaded
 * whole). -EBADMSG when damaged, another negative code when it cannot be read; err says which. */
int snap_verify_fd(int fd, const char *name, struct snap_header *h, char *err, size_t errlen);

#endif
