/* wal_log.c: the write-ahead log: recovery at open, group commit by one writer thread, reads,
 * truncation, compaction and the hard state. The format is in wal_format.c; docs/wal.md explains
 * the design and why each step ordering is crash-safe. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "log/log.h"
#include "metrics/metrics.h"
#include "raft/wal/crc32c.h"
#include "raft/wal/wal.h"
#include "raft/wal/wal_internal.h"

#define SEG_NAME_DIGITS 20
#define SEG_SUFFIX ".seg"
#define TMP_SUFFIX ".tmp"
#define HARD_STATE_FILE "hardstate"
#define FIRST_FILE "first"
#define RESET_FILE "reset"
#define LOCK_FILE "LOCK"
#define MAX_SEGMENT_SIZE (1ull << 30) /* record offsets are kept as u32 */
#define MIN_SEGMENT_SIZE 4096ull

/* One segment file. Its in-memory index (offs, terms) covers only records known durable. */
struct seg {
    uint64_t first;
    int fd;
    uint64_t count;
    uint32_t *offs;
    uint64_t *terms;
    size_t cap;
    uint64_t end;   /* end of the last durable record */
    uint64_t dirty; /* end of bytes written so far (> end after a failed write: zero before reuse) */
    uint64_t size;  /* capacity: records must end at or below it */
    int prealloc;   /* [0, size) has been allocated with fallocate */
};

/* An appended entry waiting to be written; rec is its encoded record. */
struct pend {
    struct pend *next;
    uint64_t index, term;
    uint32_t rec_len;
    struct seg *seg; /* where the writer put it */
    uint32_t off;
    uint8_t rec[];
};

struct wal {
    /* Every fdatasync of a segment (the commit path's durability point), as etcd's
     * etcd_disk_wal_fsync_duration_seconds: its duration, with etcd's buckets. */
    struct metrics_histogram fsync_hist;
    char *dir;
    int dirfd, lockfd;
    struct wal_options o;
    struct wal_io io;

    pthread_mutex_t mu; /* everything below except the atomics and the hard state */
    pthread_cond_t work_cv; /* writer: pending work or stop */
    pthread_cond_t idle_cv; /* exclusive operations: the writer has finished its batch */
    pthread_t writer;
    int writer_started, stopping, broken, in_flight;

    struct seg **segs;
    size_t nsegs, segcap;
    uint64_t first_index;
    uint64_t prev_term; /* term of entry first_index - 1, when prev_known */
    int prev_known;     /* 0 only for a log compacted by a build whose marker had no term */
    uint64_t last_term, durable_term;
    _Atomic uint64_t last, durable;
    _Atomic uint64_t resets; /* completed wal_reset calls: waiters across one are cancelled */
    struct pend *qhead, *qtail, *inflight;
    size_t q_entries, q_bytes; /* queued + being written */
    char broken_msg[1024];

    /* Waiters for durability sleep on a futex (dseq changes after every batch) rather than a
     * condition variable: a broadcast to hundreds of waiters then costs no mutex hand-off
     * between them, which is most of the group-commit cycle on a small machine. */
    _Atomic uint32_t dseq;
    pthread_mutex_t dmu;   /* drop_msg */
    _Atomic int drop_err;  /* error of the last failed batch, for waiters of dropped entries */
    char drop_msg[1024];

    pthread_mutex_t hsmu;
    struct raft_hard_state hs;

    uint8_t *batch;
    size_t batch_cap;
};

static _Thread_local char tl_err[1024];

const char *wal_errmsg(void)
{
    return tl_err;
}

static int seterr(int rc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int seterr(int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tl_err, sizeof tl_err, fmt, ap);
    va_end(ap);
    return rc;
}

/* A warning (log/log.h, with the caller's file and line and the member's id), or the message to
 * the options' log callback when one is set. Every notice is about something unusual found or
 * repaired, hence warn. */
#define notice(w, ...) notice_at((w), __FILE__, __LINE__, __VA_ARGS__)
static void notice_at(struct wal *w, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void notice_at(struct wal *w, const char *file, int line, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (w->o.log) {
        w->o.log(w->o.log_arg, msg);
        return;
    }
    struct log_field f[] = {LOG_ID("member", w->o.log_id), {.key = NULL}};
    log_emit(LOG_LEVEL_WARN, file, line, w->o.log_id ? f : NULL, "%s", msg);
}

/* ---- system calls, through the test hooks ---- */

static ssize_t real_pwrite(int fd, const void *buf, size_t len, off_t off)
{
    return pwrite(fd, buf, len, off);
}

static int real_fallocate(int fd, off_t off, off_t len)
{
    return posix_fallocate(fd, off, len);
}

static int io_write(struct wal *w, int fd, const void *buf, size_t len, uint64_t off)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = w->io.pwrite(fd, p, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -errno : -EIO;
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

static int io_datasync(struct wal *w, int fd)
{
    uint64_t t0 = metrics_now_ns();
    int rc = w->io.fdatasync(fd) == 0 ? 0 : -errno;
    uint64_t took = metrics_now_ns() - t0;
    metrics_histogram_observe(&w->fsync_hist, took);
    if (took > w->o.warn_sync_ns) /* etcd's words and fields (wal.go), rate-limited */
        log_emit_limited(LOG_LEVEL_WARN, __FILE__, __LINE__, w->o.log_id,
                         LOG_FIELDS(LOG_ID("member", w->o.log_id), LOG_DUR("took", took),
                                    LOG_DUR("expected-duration", w->o.warn_sync_ns)),
                         "slow fdatasync");
    return rc;
}

static int io_sync(struct wal *w, int fd)
{
    return w->io.fsync(fd) == 0 ? 0 : -errno;
}

static int io_allocate(struct wal *w, int fd, uint64_t len)
{
    int rc = w->io.fallocate(fd, 0, (off_t)len);
    return rc == 0 ? 0 : -rc;
}

/* A simulated crash point for tests: nonzero means stop now. */
static int step(struct wal *w, const char *op, int k)
{
    if (w->o.step_hook && w->o.step_hook(w->o.step_arg, op, k)) {
        w->broken = 1;
        snprintf(w->broken_msg, sizeof w->broken_msg, "%s stopped by the test hook at step %d", op,
                 k);
        return 1;
    }
    return 0;
}

/* ---- small files: hard state and first-index marker ---- */

/* Replaces dir/name atomically: the reader sees the old or the new contents, never a mix. */
static int write_small(struct wal *w, const char *name, const uint8_t buf[WAL_SMALL_FILE_SIZE])
{
    char tmp[64];
    snprintf(tmp, sizeof tmp, "%s" TMP_SUFFIX, name);
    int fd = openat(w->dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return seterr(-errno, "%s/%s: create: %s", w->dir, tmp, strerror(errno));
    int rc = io_write(w, fd, buf, WAL_SMALL_FILE_SIZE, 0);
    if (rc == 0)
        rc = io_sync(w, fd);
    close(fd);
    if (rc == 0 && renameat(w->dirfd, tmp, w->dirfd, name) != 0)
        rc = -errno;
    if (rc == 0)
        rc = io_sync(w, w->dirfd); /* makes the rename itself durable */
    if (rc != 0) {
        unlinkat(w->dirfd, tmp, 0);
        return seterr(rc, "%s/%s: write: %s", w->dir, name, strerror(-rc));
    }
    return 0;
}

/* Reads dir/name (at most one byte more than a small file, so an oversized one is seen): 1 and
 * *len when present, 0 when absent, <0 when unreadable. */
static int read_small(struct wal *w, const char *name, uint8_t buf[WAL_SMALL_FILE_SIZE + 1],
                      size_t *len)
{
    int fd = openat(w->dirfd, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0;
        return seterr(-errno, "%s/%s: open: %s", w->dir, name, strerror(errno));
    }
    ssize_t n = pread(fd, buf, WAL_SMALL_FILE_SIZE + 1, 0);
    int e = errno;
    close(fd);
    if (n < 0)
        return seterr(-e, "%s/%s: read: %s", w->dir, name, strerror(e));
    *len = (size_t)n;
    return 1;
}

/* The error for a small file its decoder refused with rc. */
static int small_error(struct wal *w, const char *name, const uint8_t *buf, size_t len, int rc)
{
    if (rc == -ENOTSUP)
        return seterr(rc, "%s/%s: offset 4: unsupported version %" PRIu32
                          " (written by a newer build?)",
                      w->dir, name, wal_get32(buf + 4));
    return seterr(-EBADMSG, "%s/%s: offset 0: corrupt (%zu bytes, bad size, magic, checksum or "
                            "values)",
                  w->dir, name, len);
}

/* ---- segments ---- */

static void seg_name(char *buf, size_t len, uint64_t first)
{
    snprintf(buf, len, "%0*" PRIu64 SEG_SUFFIX, SEG_NAME_DIGITS, first);
}

static int seg_parse_name(const char *name, uint64_t *first)
{
    size_t n = strlen(name);
    if (n != SEG_NAME_DIGITS + strlen(SEG_SUFFIX) || strcmp(name + SEG_NAME_DIGITS, SEG_SUFFIX))
        return 0;
    uint64_t v = 0;
    for (int i = 0; i < SEG_NAME_DIGITS; i++) {
        if (name[i] < '0' || name[i] > '9')
            return 0;
        if (v > (UINT64_MAX - 9) / 10)
            return 0;
        v = v * 10 + (uint64_t)(name[i] - '0');
    }
    *first = v;
    return 1;
}

static void seg_free(struct seg *s)
{
    if (!s)
        return;
    if (s->fd >= 0)
        close(s->fd);
    free(s->offs);
    free(s->terms);
    free(s);
}

static struct seg *seg_new(uint64_t first, int fd)
{
    struct seg *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->first = first;
    s->fd = fd;
    return s;
}

static int seg_index_add(struct seg *s, uint32_t off, uint64_t term)
{
    if (s->count == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 256;
        uint32_t *o = realloc(s->offs, cap * sizeof *o);
        if (!o)
            return -ENOMEM;
        s->offs = o;
        uint64_t *t = realloc(s->terms, cap * sizeof *t);
        if (!t)
            return -ENOMEM;
        s->terms = t;
        s->cap = cap;
    }
    s->offs[s->count] = off;
    s->terms[s->count] = term;
    s->count++;
    return 0;
}

static int segs_push(struct wal *w, struct seg *s)
{
    if (w->nsegs == w->segcap) {
        size_t cap = w->segcap ? w->segcap * 2 : 8;
        struct seg **a = realloc(w->segs, cap * sizeof *a);
        if (!a)
            return -ENOMEM;
        w->segs = a;
        w->segcap = cap;
    }
    w->segs[w->nsegs++] = s;
    return 0;
}

/* Creates a preallocated segment starting at `first`. It appears under its final name only once
 * its header is durable, so a segment file never has a missing or partial header after a crash.
 * With may_defer, a failed preallocation is left to the writer to retry (as at open) rather than
 * failing: a reset, which has just freed the old segments, must not fail for want of space that
 * only later appends need. */
static int seg_create(struct wal *w, uint64_t first, int may_defer, struct seg **out)
{
    char name[64], tmp[80];
    seg_name(name, sizeof name, first);
    snprintf(tmp, sizeof tmp, "%s" TMP_SUFFIX, name);
    int fd = openat(w->dirfd, tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return seterr(-errno, "%s/%s: create: %s", w->dir, tmp, strerror(errno));
    uint8_t hdr[WAL_SEG_HEADER_SIZE];
    wal_encode_seg_header(hdr, first);
    int rc = io_allocate(w, fd, w->o.segment_size);
    int prealloc = rc == 0;
    const char *what = "preallocate";
    if (rc != 0 && may_defer) {
        notice(w, "%s/%s: cannot preallocate %" PRIu64 " bytes now (%s); will retry", w->dir,
               name, w->o.segment_size, strerror(-rc));
        rc = 0;
    }
    if (rc == 0) {
        what = "write header";
        rc = io_write(w, fd, hdr, sizeof hdr, 0);
    }
    if (rc == 0) {
        what = "fsync";
        rc = io_sync(w, fd);
    }
    if (rc == 0 && renameat(w->dirfd, tmp, w->dirfd, name) != 0) {
        what = "rename";
        rc = -errno;
    }
    if (rc == 0) {
        what = "fsync directory";
        rc = io_sync(w, w->dirfd);
    }
    if (rc != 0) {
        close(fd);
        unlinkat(w->dirfd, tmp, 0);
        return seterr(rc, "%s/%s: %s: %s", w->dir, name, what, strerror(-rc));
    }
    struct seg *s = seg_new(first, fd);
    if (!s) {
        close(fd);
        return seterr(-ENOMEM, "out of memory");
    }
    s->end = s->dirty = WAL_SEG_HEADER_SIZE;
    s->size = w->o.segment_size;
    s->prealloc = prealloc;
    *out = s;
    return 0;
}

/* ---- locating entries (mu held) ---- */

static uint64_t written_last(struct wal *w)
{
    struct seg *s = w->segs[w->nsegs - 1];
    return s->first + s->count - 1;
}

static struct seg *seg_find(struct wal *w, uint64_t index)
{
    size_t lo = 0, hi = w->nsegs;
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (w->segs[mid]->first <= index)
            lo = mid;
        else
            hi = mid;
    }
    return w->segs[lo];
}

static struct pend *pend_find(struct wal *w, uint64_t index)
{
    for (struct pend *p = w->inflight; p; p = p->next)
        if (p->index == index)
            return p;
    for (struct pend *p = w->qhead; p; p = p->next)
        if (p->index == index)
            return p;
    return NULL;
}

/* Term of entry index in [first - 1, last]; 0 below that, or for first - 1 when unknown. */
static uint64_t term_of(struct wal *w, uint64_t index)
{
    if (index + 1 == w->first_index)
        return w->prev_known ? w->prev_term : 0;
    if (index < w->first_index || index == 0)
        return 0;
    if (index <= written_last(w)) {
        struct seg *s = seg_find(w, index);
        return s->terms[index - s->first];
    }
    struct pend *p = pend_find(w, index);
    return p ? p->term : 0;
}

/* Decodes a record image, checking both checksums. */
static int decode_one(const uint8_t *rec, size_t len, uint64_t index, struct raft_entry *out)
{
    if (len < WAL_REC_HEADER_SIZE || wal_get64(rec + 8) != index ||
        wal_get32(rec) != crc32c(0, rec + 4, WAL_REC_HEADER_SIZE - 4))
        return -EIO;
    uint32_t plen = wal_get32(rec + 4);
    if (plen > len - WAL_REC_HEADER_SIZE ||
        wal_get32(rec + 24) != crc32c(0, rec + WAL_REC_HEADER_SIZE, plen))
        return -EIO;
    out->index = index;
    out->term = wal_get64(rec + 16);
    out->type = rec[28];
    out->len = plen;
    out->data = NULL;
    if (plen) {
        out->data = malloc(plen);
        if (!out->data)
            return -ENOMEM;
        memcpy(out->data, rec + WAL_REC_HEADER_SIZE, plen);
    }
    return 0;
}

static int read_locked(struct wal *w, uint64_t index, struct raft_entry *out)
{
    if (w->broken) /* memory may no longer describe the files (a reset stopped half way) */
        return seterr(-EIO, "wal unusable: %s", w->broken_msg);
    if (index < w->first_index || index > atomic_load(&w->last) || index == 0)
        return seterr(-ENOENT, "entry %" PRIu64 " is not in the log [%" PRIu64 ", %" PRIu64 "]",
                      index, w->first_index, atomic_load(&w->last));
    if (index > written_last(w)) {
        struct pend *p = pend_find(w, index);
        if (!p)
            return seterr(-ENOENT, "entry %" PRIu64 " not found", index);
        return decode_one(p->rec, p->rec_len, index, out);
    }
    struct seg *s = seg_find(w, index);
    uint64_t off = s->offs[index - s->first];
    /* The header gives the length; s->end is the writer's and may be moving. */
    uint8_t hdr[WAL_REC_HEADER_SIZE];
    uint8_t *buf = NULL;
    int rc = -EIO;
    if (pread(s->fd, hdr, sizeof hdr, (off_t)off) == (ssize_t)sizeof hdr) {
        size_t len = WAL_REC_HEADER_SIZE + (size_t)wal_get32(hdr + 4);
        if (len - WAL_REC_HEADER_SIZE <= w->o.segment_size && (buf = malloc(len)) == NULL)
            return seterr(-ENOMEM, "out of memory");
        if (buf && pread(s->fd, buf, len, (off_t)off) == (ssize_t)len)
            rc = decode_one(buf, len, index, out);
        free(buf);
    }
    if (rc == -EIO) {
        char name[64];
        seg_name(name, sizeof name, s->first);
        return seterr(rc, "%s/%s: offset %" PRIu64 ": entry %" PRIu64 " unreadable or corrupt",
                      w->dir, name, off, index);
    }
    return rc == -ENOMEM ? seterr(rc, "out of memory") : rc;
}

/* ---- the writer ---- */

static int batch_reserve(struct wal *w, size_t len)
{
    if (len <= w->batch_cap)
        return 0;
    size_t cap = w->batch_cap ? w->batch_cap : 65536;
    while (cap < len)
        cap *= 2;
    uint8_t *b = realloc(w->batch, cap);
    if (!b)
        return -ENOMEM;
    w->batch = b;
    w->batch_cap = cap;
    return 0;
}

/* Makes the synced prefix of a batch visible: index entries and the durable mark. */
static void publish(struct wal *w, struct pend *from, struct pend *to)
{
    pthread_mutex_lock(&w->mu);
    for (struct pend *p = from;; p = p->next) {
        if (seg_index_add(p->seg, p->off, p->term) != 0) {
            /* Without an index the entry cannot be read back: stop, as for an I/O error. */
            w->broken = 1;
            snprintf(w->broken_msg, sizeof w->broken_msg, "out of memory indexing the log");
            break;
        }
        atomic_store(&w->durable, p->index);
        w->durable_term = p->term;
        if (p == to)
            break;
    }
    pthread_mutex_unlock(&w->mu);
}

/* Writes and syncs the list (outside mu). The usual case is one pwrite and one fdatasync; a batch
 * crossing into a new segment syncs the old one before creating the next, so an older segment is
 * always complete when a newer one exists. Returns 0 or the error; whatever was synced before an
 * error has been published. */
static int write_batch(struct wal *w, struct pend *list)
{
    struct seg *s = w->segs[w->nsegs - 1];
    char name[64];
    int rc;
    if (s->dirty > s->end) {
        /* A failed write may have left records past the durable end; zero them durably first
         * so that recovery can never mistake them for part of the log. */
        size_t zlen = (size_t)(s->dirty - s->end);
        if ((rc = batch_reserve(w, zlen)) != 0)
            return seterr(rc, "out of memory");
        memset(w->batch, 0, zlen);
        if ((rc = io_write(w, s->fd, w->batch, zlen, s->end)) != 0 ||
            (rc = io_datasync(w, s->fd)) != 0) {
            seg_name(name, sizeof name, s->first);
            return seterr(rc, "%s/%s: zeroing after a failed write: %s", w->dir, name,
                          strerror(-rc));
        }
        s->dirty = s->end;
    }
    struct pend *p = list;
    while (p) {
        if (!s->prealloc) {
            /* Open could not preallocate (disk full); try again now. */
            if ((rc = io_allocate(w, s->fd, s->size)) != 0) {
                seg_name(name, sizeof name, s->first);
                return seterr(rc, "%s/%s: preallocate: %s", w->dir, name, strerror(-rc));
            }
            s->prealloc = 1;
        }
        size_t len = 0;
        uint32_t pos = 0;
        struct pend *chunk = p, *last = NULL;
        while (p && s->end + len + p->rec_len <= s->size && pos < WAL_MAX_BATCH_POS) {
            if ((rc = batch_reserve(w, len + p->rec_len)) != 0)
                return seterr(rc, "out of memory");
            memcpy(w->batch + len, p->rec, p->rec_len);
            wal_record_set_batch_pos(w->batch + len, pos++);
            p->seg = s;
            p->off = (uint32_t)(s->end + len);
            len += p->rec_len;
            last = p;
            p = p->next;
        }
        if (len == 0) {
            /* The next record does not fit: rotate. s is already synced (every chunk is). */
            struct seg *ns;
            if ((rc = seg_create(w, p->index, 0, &ns)) != 0)
                return rc;
            pthread_mutex_lock(&w->mu);
            rc = segs_push(w, ns);
            pthread_mutex_unlock(&w->mu);
            if (rc != 0) {
                seg_free(ns);
                return seterr(rc, "out of memory");
            }
            s = ns;
            continue;
        }
        if (s->end + len > s->dirty)
            s->dirty = s->end + len;
        seg_name(name, sizeof name, s->first);
        if ((rc = io_write(w, s->fd, w->batch, len, s->end)) != 0)
            return seterr(rc, "%s/%s: write at offset %" PRIu64 ": %s", w->dir, name, s->end,
                          strerror(-rc));
        if ((rc = io_datasync(w, s->fd)) != 0)
            return seterr(rc, "%s/%s: fdatasync: %s", w->dir, name, strerror(-rc));
        s->end += len;
        publish(w, chunk, last);
    }
    return 0;
}

static void pend_free_list(struct pend *p)
{
    while (p) {
        struct pend *n = p->next;
        free(p);
        p = n;
    }
}

/* What waiters of entries no longer in the log are told. */
static void set_drop_err(struct wal *w, int err, const char *msg)
{
    pthread_mutex_lock(&w->dmu);
    atomic_store(&w->drop_err, err);
    snprintf(w->drop_msg, sizeof w->drop_msg, "%s", msg);
    pthread_mutex_unlock(&w->dmu);
}

static void wake_waiters(struct wal *w, int err, const char *msg)
{
    if (err)
        set_drop_err(w, err, msg);
    atomic_fetch_add(&w->dseq, 1);
    syscall(SYS_futex, &w->dseq, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

/* mu held: forget queued entries from node `from` on (and everything queued after it). */
static void drop_queue_from(struct wal *w, struct pend *prev)
{
    struct pend *p = prev ? prev->next : w->qhead;
    for (struct pend *q = p; q; q = q->next) {
        w->q_entries--;
        w->q_bytes -= q->rec_len;
    }
    pend_free_list(p);
    if (prev) {
        prev->next = NULL;
        w->qtail = prev;
    } else {
        w->qhead = w->qtail = NULL;
    }
}

/* mu held: forgets every queued entry; the log then ends with the batch being written, if any. */
static void drop_queue_all(struct wal *w)
{
    drop_queue_from(w, NULL);
    struct pend *t = w->inflight;
    while (t && t->next)
        t = t->next;
    atomic_store(&w->last, t ? t->index : atomic_load(&w->durable));
    w->last_term = t ? t->term : w->durable_term;
}

static void *writer_main(void *arg)
{
    struct wal *w = arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!w->stopping && (!w->qhead || w->broken))
            pthread_cond_wait(&w->work_cv, &w->mu);
        if (!w->qhead || w->broken)
            break;
        struct pend *list = w->qhead;
        w->qhead = w->qtail = NULL;
        w->inflight = list;
        w->in_flight = 1;
        pthread_mutex_unlock(&w->mu);

        int rc = write_batch(w, list);

        pthread_mutex_lock(&w->mu);
        for (struct pend *q = list; q; q = q->next) {
            w->q_entries--;
            w->q_bytes -= q->rec_len;
        }
        w->inflight = NULL;
        if (rc == 0 && w->broken)
            rc = seterr(-ENOMEM, "%s", w->broken_msg);
        if (rc != 0) {
            /* Entries queued meanwhile follow the failed ones: they go too. */
            drop_queue_from(w, NULL);
            atomic_store(&w->last, atomic_load(&w->durable));
            w->last_term = w->durable_term;
        }
        w->in_flight = 0;
        pthread_cond_broadcast(&w->idle_cv);
        uint64_t d = atomic_load(&w->durable), dt = w->durable_term;
        pthread_mutex_unlock(&w->mu);

        wake_waiters(w, rc, tl_err);
        if (w->o.on_durable)
            w->o.on_durable(w->o.on_durable_arg, d, dt, rc);
        pend_free_list(list); /* off the lock and after the wake-up: appenders come first */
        pthread_mutex_lock(&w->mu);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* ---- public API ---- */

void wal_options_init(struct wal_options *o)
{
    memset(o, 0, sizeof *o);
    o->segment_size = 64ull << 20;
    o->max_pending_entries = 65536;
    o->max_pending_bytes = 64u << 20;
    o->max_entry_bytes = 16u << 20;
    o->warn_sync_ns = 1000000000; /* etcd's warnSyncDuration */
}

int wal_append(struct wal *w, const struct raft_entry *e, size_t n)
{
    if (n == 0)
        return 0;
    struct pend *head = NULL, *tail = NULL;
    size_t bytes = 0;
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && (e[i].index != e[i - 1].index + 1 || e[i].term < e[i - 1].term)) {
            rc = seterr(-EINVAL, "append: entries not consecutive at %" PRIu64, e[i].index);
            break;
        }
        if (e[i].type > RAFT_ENTRY_CONFIG || (e[i].len && !e[i].data)) {
            rc = seterr(-EINVAL, "append: entry %" PRIu64 " has a bad type or no data", e[i].index);
            break;
        }
        if (e[i].len > w->o.max_entry_bytes) {
            rc = seterr(-EMSGSIZE, "append: entry %" PRIu64 " has %u bytes, limit %u", e[i].index,
                        e[i].len, w->o.max_entry_bytes);
            break;
        }
        uint32_t rl = WAL_REC_HEADER_SIZE + e[i].len;
        struct pend *p = malloc(sizeof *p + rl);
        if (!p) {
            rc = seterr(-ENOMEM, "out of memory");
            break;
        }
        p->next = NULL;
        p->index = e[i].index;
        p->term = e[i].term;
        p->rec_len = rl;
        p->seg = NULL;
        p->off = 0;
        wal_encode_record(p->rec, &e[i]);
        bytes += rl;
        if (tail)
            tail->next = p;
        else
            head = p;
        tail = p;
    }
    if (rc != 0) {
        pend_free_list(head);
        return rc;
    }

    pthread_mutex_lock(&w->mu);
    uint64_t last = atomic_load(&w->last);
    if (w->broken)
        rc = seterr(-EIO, "wal unusable: %s", w->broken_msg);
    else if (e[0].index != last + 1)
        rc = seterr(-EINVAL, "append: entry %" PRIu64 " does not follow the last entry %" PRIu64,
                    e[0].index, last);
    else if (e[0].term < w->last_term)
        rc = seterr(-EINVAL, "append: term %" PRIu64 " of entry %" PRIu64
                             " is below the last term %" PRIu64,
                    e[0].term, e[0].index, w->last_term);
    else if (w->q_entries + n > w->o.max_pending_entries ||
             w->q_bytes + bytes > w->o.max_pending_bytes)
        rc = seterr(-EAGAIN, "append: queue full (%zu entries, %zu bytes pending)",
                    w->q_entries, w->q_bytes);
    if (rc == 0) {
        if (w->qtail)
            w->qtail->next = head;
        else
            w->qhead = head;
        w->qtail = tail;
        w->q_entries += n;
        w->q_bytes += bytes;
        w->last_term = tail->term;
        atomic_store(&w->last, tail->index);
        pthread_cond_signal(&w->work_cv);
    }
    pthread_mutex_unlock(&w->mu);
    if (rc != 0)
        pend_free_list(head);
    return rc;
}

int wal_wait_durable(struct wal *w, uint64_t index)
{
    uint64_t resets = atomic_load(&w->resets);
    for (;;) {
        /* Read the sequence before the state: a change after this read makes the futex wait
         * return at once, so no wake-up is lost. */
        uint32_t seq = atomic_load(&w->dseq);
        uint64_t durable = atomic_load(&w->durable), last = atomic_load(&w->last);
        /* A reset moves durable forward without writing what was queued. It counts itself
         * before moving durable, so reading the count after durable never misses it. */
        if (atomic_load(&w->resets) != resets)
            return seterr(-ECANCELED, "entry %" PRIu64 " was discarded by wal_reset before this "
                                      "wait saw it durable", index);
        if (durable >= index)
            return 0;
        if (last < index) {
            int rc = atomic_load(&w->drop_err);
            if (rc == 0 || rc == -ECANCELED)
                return seterr(-ECANCELED, "entry %" PRIu64 " was removed from the log before it "
                                          "became durable", index);
            pthread_mutex_lock(&w->dmu);
            seterr(rc, "entry %" PRIu64 " dropped: %s", index, w->drop_msg);
            pthread_mutex_unlock(&w->dmu);
            return rc;
        }
        syscall(SYS_futex, &w->dseq, FUTEX_WAIT_PRIVATE, seq, NULL, NULL, 0);
    }
}

uint64_t wal_durable_index(struct wal *w)
{
    return atomic_load(&w->durable);
}

uint64_t wal_last_index(struct wal *w)
{
    return atomic_load(&w->last);
}

uint64_t wal_first_index(struct wal *w)
{
    pthread_mutex_lock(&w->mu);
    uint64_t f = w->first_index;
    pthread_mutex_unlock(&w->mu);
    return f;
}

int wal_term_at(struct wal *w, uint64_t index, uint64_t *term)
{
    int rc = 0;
    pthread_mutex_lock(&w->mu);
    uint64_t first = w->first_index, last = atomic_load(&w->last);
    if (w->broken)
        rc = seterr(-EIO, "wal unusable: %s", w->broken_msg);
    else if (index + 1 == first && !w->prev_known)
        rc = seterr(-ENOENT, "the term of entry %" PRIu64 ", just before the first stored entry, is "
                             "unknown: the log was compacted by a build that did not record it",
                    index);
    else if (index + 1 < first || index > last)
        rc = seterr(-ENOENT, "entry %" PRIu64 " is not in the log [%" PRIu64 ", %" PRIu64 "]",
                    index, first, last);
    else
        *term = term_of(w, index);
    pthread_mutex_unlock(&w->mu);
    return rc;
}

int wal_read(struct wal *w, uint64_t index, struct raft_entry *out)
{
    pthread_mutex_lock(&w->mu);
    int rc = read_locked(w, index, out);
    pthread_mutex_unlock(&w->mu);
    return rc;
}

void wal_entries_free(struct raft_entry *e, size_t n)
{
    if (!e)
        return;
    for (size_t i = 0; i < n; i++)
        free(e[i].data);
    free(e);
}

int wal_read_range(struct wal *w, uint64_t lo, uint64_t hi, size_t max_bytes,
                   struct raft_entry **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    if (hi < lo)
        return seterr(-EINVAL, "read_range: empty range %" PRIu64 "..%" PRIu64, lo, hi);
    size_t cap = hi - lo + 1 < 64 ? (size_t)(hi - lo + 1) : 64, cnt = 0, bytes = 0;
    struct raft_entry *a = malloc(cap * sizeof *a);
    if (!a)
        return seterr(-ENOMEM, "out of memory");
    int rc = 0;
    pthread_mutex_lock(&w->mu);
    for (uint64_t i = lo; i <= hi && (cnt == 0 || bytes < max_bytes); i++) {
        if (cnt == cap) {
            struct raft_entry *b = realloc(a, cap * 2 * sizeof *a);
            if (!b) {
                rc = seterr(-ENOMEM, "out of memory");
                break;
            }
            a = b;
            cap *= 2;
        }
        if ((rc = read_locked(w, i, &a[cnt])) != 0)
            break;
        bytes += a[cnt++].len;
        if (i == UINT64_MAX)
            break;
    }
    pthread_mutex_unlock(&w->mu);
    if (rc != 0) {
        wal_entries_free(a, cnt);
        return rc;
    }
    *out = a;
    *n = cnt;
    return 0;
}

/* mu held: waits until no batch is being written, so the files are ours alone. */
static void wait_idle(struct wal *w)
{
    while (w->in_flight)
        pthread_cond_wait(&w->idle_cv, &w->mu);
}

static int break_wal(struct wal *w, int rc)
{
    w->broken = 1;
    snprintf(w->broken_msg, sizeof w->broken_msg, "%s", tl_err);
    return rc;
}

/* mu held, idle. Cuts the files so entries >= index are gone. Order: newest segments are deleted
 * first (so what remains is always a prefix of the old log), each unlink made durable before the
 * next; then the segment holding `index` is cut with ftruncate, a single journaled metadata change
 * that is either done or not after a crash, and synced before any new write reuses the space. */
static int truncate_files(struct wal *w, uint64_t index)
{
    int k = 0, rc;
    char name[64];
    while (w->nsegs > 1 && w->segs[w->nsegs - 1]->first >= index) {
        struct seg *s = w->segs[w->nsegs - 1];
        if (step(w, "truncate", k++))
            return seterr(-EINTR, "truncate stopped by the test hook");
        seg_name(name, sizeof name, s->first);
        if (unlinkat(w->dirfd, name, 0) != 0 && errno != ENOENT)
            return break_wal(w, seterr(-errno, "%s/%s: unlink: %s", w->dir, name,
                                       strerror(errno)));
        if ((rc = io_sync(w, w->dirfd)) != 0)
            return break_wal(w, seterr(rc, "%s: fsync directory: %s", w->dir, strerror(-rc)));
        w->nsegs--;
        seg_free(s);
    }
    struct seg *s = w->segs[w->nsegs - 1];
    seg_name(name, sizeof name, s->first);
    if (index < s->first + s->count || s->dirty > s->end) {
        uint64_t keep = index >= s->first + s->count ? s->count : index - s->first;
        uint64_t off = keep == s->count ? s->end : s->offs[keep];
        if (step(w, "truncate", k++))
            return seterr(-EINTR, "truncate stopped by the test hook");
        if (ftruncate(s->fd, (off_t)off) != 0)
            return break_wal(w, seterr(-errno, "%s/%s: ftruncate: %s", w->dir, name,
                                       strerror(errno)));
        if (step(w, "truncate", k++))
            return seterr(-EINTR, "truncate stopped by the test hook");
        if ((rc = io_sync(w, s->fd)) != 0)
            return break_wal(w, seterr(rc, "%s/%s: fsync: %s", w->dir, name, strerror(-rc)));
        s->count = keep;
        s->end = s->dirty = off;
        if (step(w, "truncate", k++))
            return seterr(-EINTR, "truncate stopped by the test hook");
        /* Reserve the space again; if the disk is full, the writer retries before writing. */
        s->prealloc = io_allocate(w, s->fd, s->size) == 0;
    }
    return 0;
}

int wal_truncate_suffix(struct wal *w, uint64_t index)
{
    int rc = 0;
    pthread_mutex_lock(&w->mu);
    wait_idle(w);
    uint64_t last = atomic_load(&w->last);
    if (w->broken) {
        rc = seterr(-EIO, "wal unusable: %s", w->broken_msg);
    } else if (index < w->first_index || index == 0 || index > last + 1) {
        rc = seterr(-EINVAL, "truncate: %" PRIu64 " is outside [%" PRIu64 ", %" PRIu64 "]", index,
                    w->first_index, last + 1);
    } else if (index <= last) {
        /* Queued entries >= index go first; they are all above the written ones. */
        struct pend *prev = NULL;
        for (struct pend *p = w->qhead; p && p->index < index; p = p->next)
            prev = p;
        drop_queue_from(w, prev);
        if (index <= atomic_load(&w->durable)) {
            rc = truncate_files(w, index);
            if (rc == 0) {
                atomic_store(&w->durable, index - 1);
                w->durable_term = term_of(w, index - 1);
            }
        }
        if (rc == 0) {
            atomic_store(&w->last, index - 1);
            w->last_term = term_of(w, index - 1);
        }
    }
    pthread_mutex_unlock(&w->mu);
    wake_waiters(w, -ECANCELED, "truncated");
    return rc;
}

int wal_compact_prefix(struct wal *w, uint64_t index)
{
    int rc = 0;
    pthread_mutex_lock(&w->mu);
    wait_idle(w);
    size_t j = 0;
    while (j + 1 < w->nsegs && w->segs[j + 1]->first <= index)
        j++;
    if (w->broken) {
        rc = seterr(-EIO, "wal unusable: %s", w->broken_msg);
    } else if (j > 0) {
        /* The marker naming the new first index is durable before any segment goes: a crash in
         * between leaves segments that open deletes, never a log with a hole at its start. It
         * also keeps the term of the last entry deleted, which anchors the log after a restart.
         * segs[j - 1] is complete (only the newest segment can be empty), so that term is known. */
        uint64_t first = w->segs[j]->first, prev_term = term_of(w, first - 1);
        uint8_t buf[WAL_SMALL_FILE_SIZE];
        wal_encode_first(buf, first, prev_term);
        if (step(w, "compact", 0)) {
            rc = seterr(-EINTR, "compact stopped by the test hook");
        } else if ((rc = write_small(w, FIRST_FILE, buf)) != 0) {
            /* Nothing changed: the old marker is still in place. */
        } else {
            size_t i;
            for (i = 0; i < j && rc == 0; i++) {
                char name[64];
                seg_name(name, sizeof name, w->segs[i]->first);
                if (step(w, "compact", 1 + (int)i))
                    rc = seterr(-EINTR, "compact stopped by the test hook");
                else if (unlinkat(w->dirfd, name, 0) != 0 && errno != ENOENT)
                    rc = seterr(-errno, "%s/%s: unlink: %s", w->dir, name, strerror(errno));
            }
            if (rc == 0 && (rc = io_sync(w, w->dirfd)) != 0)
                seterr(rc, "%s: fsync directory: %s", w->dir, strerror(-rc));
            if (rc != 0 && rc != -EINTR)
                break_wal(w, rc);
            if (rc == 0) {
                for (i = 0; i < j; i++)
                    seg_free(w->segs[i]);
                memmove(w->segs, w->segs + j, (w->nsegs - j) * sizeof *w->segs);
                w->nsegs -= j;
                w->first_index = first;
                w->prev_term = prev_term;
                w->prev_known = 1;
            }
        }
    }
    pthread_mutex_unlock(&w->mu);
    return rc;
}

int wal_save_hard_state(struct wal *w, const struct raft_hard_state *hs)
{
    uint8_t buf[WAL_SMALL_FILE_SIZE];
    wal_encode_small(buf, WAL_HS_MAGIC, WAL_VERSION, hs->term, hs->voted_for);
    pthread_mutex_lock(&w->hsmu);
    int rc = write_small(w, HARD_STATE_FILE, buf);
    if (rc == 0)
        w->hs = *hs;
    pthread_mutex_unlock(&w->hsmu);
    return rc;
}

void wal_load_hard_state(struct wal *w, struct raft_hard_state *hs)
{
    pthread_mutex_lock(&w->hsmu);
    *hs = w->hs;
    pthread_mutex_unlock(&w->hsmu);
}

/* ---- open ---- */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int lock_dir(struct wal *w)
{
    w->lockfd = openat(w->dirfd, LOCK_FILE, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (w->lockfd < 0)
        return seterr(-errno, "%s/%s: %s", w->dir, LOCK_FILE, strerror(errno));
    if (flock(w->lockfd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        char pid[32] = "";
        ssize_t n = pread(w->lockfd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = 0;
        pid[strcspn(pid, "\n")] = 0;
        if (e == EWOULDBLOCK)
            return seterr(-EBUSY, "%s: data directory is in use by another process (pid %s)",
                          w->dir, pid[0] ? pid : "unknown");
        return seterr(-e, "%s/%s: flock: %s", w->dir, LOCK_FILE, strerror(e));
    }
    char pid[32];
    int len = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(w->lockfd, 0) != 0 || pwrite(w->lockfd, pid, (size_t)len, 0) != len)
        return seterr(-errno, "%s/%s: write: %s", w->dir, LOCK_FILE, strerror(errno));
    return 0;
}

/* Lists segment names (sorted first indexes). With remove_tmp (open only: at run time the hard
 * state may be mid-write) it also removes leftover temporary files. */
static int scan_dir(struct wal *w, int remove_tmp, uint64_t **firsts, size_t *n)
{
    int fd = dup(w->dirfd);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        if (fd >= 0)
            close(fd);
        return seterr(-errno, "%s: opendir: %s", w->dir, strerror(errno));
    }
    rewinddir(d);
    size_t cnt = 0, cap = 0;
    uint64_t *a = NULL;
    struct dirent *de;
    int rc = 0;
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        uint64_t first;
        if (remove_tmp && len > strlen(TMP_SUFFIX) &&
            strcmp(de->d_name + len - strlen(TMP_SUFFIX), TMP_SUFFIX) == 0) {
            /* A file never renamed into place: its operation did not happen. */
            notice(w, "%s/%s: removing an unfinished temporary file", w->dir, de->d_name);
            unlinkat(w->dirfd, de->d_name, 0);
            continue;
        }
        if (!seg_parse_name(de->d_name, &first))
            continue;
        if (cnt == cap) {
            cap = cap ? cap * 2 : 16;
            uint64_t *b = realloc(a, cap * sizeof *b);
            if (!b) {
                rc = seterr(-ENOMEM, "out of memory");
                break;
            }
            a = b;
        }
        a[cnt++] = first;
    }
    closedir(d);
    if (rc != 0) {
        free(a);
        return rc;
    }
    if (cnt)
        qsort(a, cnt, sizeof *a, cmp_u64);
    *firsts = a;
    *n = cnt;
    return 0;
}

static int index_record(void *arg, const struct raft_entry *e, size_t off)
{
    return seg_index_add(arg, (uint32_t)off, e->term) != 0;
}

/* Opens and decodes one segment; repairs a torn tail when it is the newest. */
static int load_segment(struct wal *w, uint64_t first, int is_last, struct seg **out)
{
    char name[64], path[4200];
    seg_name(name, sizeof name, first);
    snprintf(path, sizeof path, "%s/%s", w->dir, name);
    int fd = openat(w->dirfd, name, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return seterr(-errno, "%s: open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return seterr(-errno, "%s: stat: %s", path, strerror(errno));
    }
    if ((uint64_t)st.st_size > MAX_SEGMENT_SIZE) {
        close(fd);
        return seterr(-EBADMSG, "%s: %lld bytes, larger than any segment this WAL writes", path,
                      (long long)st.st_size);
    }
    size_t len = (size_t)st.st_size;
    uint8_t *buf = NULL;
    if (len) {
        buf = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (buf == MAP_FAILED) {
            close(fd);
            return seterr(-errno, "%s: mmap: %s", path, strerror(errno));
        }
    }
    struct seg *s = seg_new(first, fd);
    if (!s) {
        if (buf)
            munmap(buf, len);
        close(fd);
        return seterr(-ENOMEM, "out of memory");
    }
    struct wal_decode_result res;
    int rc = wal_segment_decode(buf ? buf : (const uint8_t *)"", len, path, first, is_last,
                                index_record, s, &res, tl_err, sizeof tl_err);
    if (rc == 0 && res.count != s->count)
        rc = seterr(-ENOMEM, "out of memory indexing %s", path);
    if (buf)
        munmap(buf, len);
    if (rc != 0) {
        seg_free(s);
        return rc;
    }
    s->end = s->dirty = res.end;
    s->size = (uint64_t)len > w->o.segment_size ? (uint64_t)len : w->o.segment_size;
    if (res.dirty_end > res.end) {
        /* Only possible in the newest segment (the decoder refuses it elsewhere). */
        notice(w, "%s: torn tail at offset %zu (%zu bytes after entry %" PRIu64 ") discarded",
               path, res.end, res.dirty_end - res.end, first + s->count - 1);
        s->dirty = res.dirty_end;
    }
    if (is_last) {
        s->prealloc = (uint64_t)len >= s->size || io_allocate(w, fd, s->size) == 0;
        if (!s->prealloc)
            notice(w, "%s: cannot preallocate %" PRIu64 " bytes now; will retry", path, s->size);
        if (s->dirty > s->end) {
            /* Zero the torn bytes now, so they can never be read as records later. */
            size_t zlen = (size_t)(s->dirty - s->end);
            uint8_t *z = calloc(1, zlen);
            rc = z ? io_write(w, fd, z, zlen, s->end) : -ENOMEM;
            free(z);
            if (rc == 0)
                rc = io_datasync(w, fd);
            if (rc != 0) {
                seg_free(s);
                return seterr(rc, "%s: discarding the torn tail: %s", path, strerror(-rc));
            }
            s->dirty = s->end;
        }
    }
    *out = s;
    return 0;
}

/* ---- reset: the log replaced by an empty one (a snapshot installed) ---- */

static int reset_stopped(void)
{
    return seterr(-EINTR, "reset stopped by the test hook");
}

static void drop_segments(struct wal *w)
{
    for (size_t i = 0; i < w->nsegs; i++)
        seg_free(w->segs[i]);
    w->nsegs = 0;
}

/* Finishes a reset whose journal (RESET_FILE) is durable: deletes every segment, writes the marker
 * {index + 1, term}, creates the empty segment index + 1, and removes the journal last. Each step
 * may be repeated and open repeats them all while the journal exists, so a crash anywhere leaves a
 * reset that the next open finishes. No append can slip in before the journal is gone: wal_reset
 * holds mu throughout. mu held, or called by open. */
static int reset_finish(struct wal *w, uint64_t index, uint64_t term)
{
    int k = 1, rc;
    uint64_t *firsts;
    size_t n;
    if (step(w, "reset", k++))
        return reset_stopped();
    if ((rc = scan_dir(w, 0, &firsts, &n)) != 0)
        return rc;
    for (size_t i = 0; i < n && rc == 0; i++) {
        char name[64];
        seg_name(name, sizeof name, firsts[i]);
        if (step(w, "reset", k++))
            rc = reset_stopped();
        else if (unlinkat(w->dirfd, name, 0) != 0 && errno != ENOENT)
            rc = seterr(-errno, "%s/%s: unlink: %s", w->dir, name, strerror(errno));
    }
    free(firsts);
    if (rc == 0 && (rc = io_sync(w, w->dirfd)) != 0)
        seterr(rc, "%s: fsync directory: %s", w->dir, strerror(-rc));
    if (rc != 0)
        return rc;
    /* Closing the old segments releases their space before the new one is made. */
    drop_segments(w);
    uint8_t buf[WAL_SMALL_FILE_SIZE];
    wal_encode_first(buf, index + 1, term);
    if (step(w, "reset", k++))
        return reset_stopped();
    if ((rc = write_small(w, FIRST_FILE, buf)) != 0)
        return rc;
    if (step(w, "reset", k++))
        return reset_stopped();
    struct seg *s;
    if ((rc = seg_create(w, index + 1, 1, &s)) != 0)
        return rc;
    if (segs_push(w, s) != 0) {
        seg_free(s);
        return seterr(-ENOMEM, "out of memory");
    }
    if (step(w, "reset", k++))
        return reset_stopped();
    if (unlinkat(w->dirfd, RESET_FILE, 0) != 0)
        return seterr(-errno, "%s/%s: unlink: %s", w->dir, RESET_FILE, strerror(errno));
    if ((rc = io_sync(w, w->dirfd)) != 0)
        return seterr(rc, "%s: fsync directory: %s", w->dir, strerror(-rc));
    return 0;
}

/* After a failed journal write: 0 when no journal can appear at the next open (then nothing
 * changed), else the error. write_small may fail after its rename (in the directory fsync), and a
 * journal left behind would make the next open discard entries appended meanwhile. */
static int reset_undo_journal(struct wal *w)
{
    if (faccessat(w->dirfd, RESET_FILE, F_OK, 0) != 0 && errno == ENOENT)
        return 0; /* never renamed into place */
    int rc = unlinkat(w->dirfd, RESET_FILE, 0) == 0 ? io_sync(w, w->dirfd) : -errno;
    return rc == 0 ? 0 : seterr(rc, "%s/%s: removing after a failed write: %s", w->dir, RESET_FILE,
                                strerror(-rc));
}

int wal_reset(struct wal *w, uint64_t index, uint64_t term)
{
    if (!wal_reset_args_ok(index, term))
        return seterr(-EINVAL, "reset: (index %" PRIu64 ", term %" PRIu64 ") is no log position: "
                               "entry 0 has term 0, every later entry a term >= 1, and the index "
                               "must be below 2^64-1",
                      index, term);
    int rc = 0;
    pthread_mutex_lock(&w->mu);
    /* Queued entries go whatever happens below (the caller is replacing the log), and before
     * waiting for the batch in flight, so that the writer never writes what is about to be
     * discarded; the second drop takes what was appended during the wait. */
    drop_queue_all(w);
    set_drop_err(w, -ECANCELED, "replaced by wal_reset"); /* for waiters woken by that batch */
    wait_idle(w);
    drop_queue_all(w);
    if (w->broken) {
        rc = seterr(-EIO, "wal unusable: %s", w->broken_msg);
    } else {
        /* The journal is the commit point: before it is durable the files are as before, after
         * it open finishes the reset (reset_finish). */
        uint8_t buf[WAL_SMALL_FILE_SIZE];
        wal_encode_reset(buf, index, term);
        if (step(w, "reset", 0)) {
            rc = reset_stopped();
        } else if ((rc = write_small(w, RESET_FILE, buf)) != 0) {
            char msg[sizeof tl_err];
            snprintf(msg, sizeof msg, "%s", tl_err);
            int urc = reset_undo_journal(w);
            if (urc != 0)
                break_wal(w, urc);
            seterr(rc, "%s", msg);
        } else {
            /* Committed. Count the reset before moving durable: see wal_wait_durable. */
            atomic_fetch_add(&w->resets, 1);
            w->first_index = index + 1;
            w->prev_term = term;
            w->prev_known = 1;
            w->durable_term = w->last_term = term;
            atomic_store(&w->durable, index);
            atomic_store(&w->last, index);
            rc = reset_finish(w, index, term);
            if (rc != 0 && rc != -EINTR)
                break_wal(w, rc); /* memory and files disagree until open finishes the reset */
        }
    }
    pthread_mutex_unlock(&w->mu);
    wake_waiters(w, -ECANCELED, "replaced by wal_reset");
    return rc;
}

/* ---- recovery ---- */

/* Finishes a reset whose journal survived a crash or a failure; 0 when there is none. */
static int recover_reset(struct wal *w)
{
    uint8_t buf[WAL_SMALL_FILE_SIZE + 1];
    size_t len;
    uint64_t index, term;
    int rc = read_small(w, RESET_FILE, buf, &len);
    if (rc <= 0)
        return rc;
    if ((rc = wal_decode_reset(buf, len, &index, &term)) != 0)
        return small_error(w, RESET_FILE, buf, len, rc);
    notice(w, "%s: finishing an interrupted reset of the log to entry %" PRIu64 " (term %" PRIu64
              ")",
           w->dir, index, term);
    rc = reset_finish(w, index, term);
    drop_segments(w); /* the usual recovery below loads the new segment */
    return rc;
}

static int recover(struct wal *w)
{
    uint8_t buf[WAL_SMALL_FILE_SIZE + 1];
    size_t len;
    uint32_t version;
    uint64_t hs_term, hs_vote;
    int rc = read_small(w, HARD_STATE_FILE, buf, &len);
    if (rc < 0)
        return rc;
    if (rc == 1) {
        if ((rc = wal_decode_small(buf, len, WAL_HS_MAGIC, WAL_VERSION, &version, &hs_term,
                                   &hs_vote)) != 0)
            return small_error(w, HARD_STATE_FILE, buf, len, rc);
        w->hs.term = hs_term;
        w->hs.voted_for = hs_vote;
    }
    if ((rc = recover_reset(w)) != 0)
        return rc;
    struct wal_first_marker m = {0};
    int have_marker = read_small(w, FIRST_FILE, buf, &len);
    if (have_marker < 0)
        return have_marker;
    if (have_marker && (rc = wal_decode_first(buf, len, &m)) != 0)
        return small_error(w, FIRST_FILE, buf, len, rc);
    uint64_t marker = m.first;

    uint64_t *firsts = NULL;
    size_t n = 0;
    if ((rc = scan_dir(w, 1, &firsts, &n)) != 0)
        return rc;
    if (n == 0) {
        free(firsts);
        if (have_marker)
            return seterr(-EBADMSG, "%s: no segment files, but %s says the log starts at %" PRIu64
                                    ": segments are missing",
                          w->dir, FIRST_FILE, marker);
        /* A new log. The marker goes first: a directory with segments but no marker is damaged. */
        wal_encode_first(buf, 1, 0);
        struct seg *s;
        if ((rc = write_small(w, FIRST_FILE, buf)) != 0 || (rc = seg_create(w, 1, 0, &s)) != 0)
            return rc;
        if (segs_push(w, s) != 0) {
            seg_free(s);
            return seterr(-ENOMEM, "out of memory");
        }
        w->first_index = 1;
        w->prev_known = 1; /* entry 0 has term 0 */
        return 0;
    }
    if (!have_marker) {
        free(firsts);
        return seterr(-EBADMSG, "%s: segment files exist but %s is missing", w->dir, FIRST_FILE);
    }
    /* Finish an interrupted compaction: segments wholly below the marker were being deleted. */
    size_t skip = 0;
    while (skip + 1 < n && firsts[skip + 1] <= marker) {
        char name[64];
        seg_name(name, sizeof name, firsts[skip]);
        notice(w, "%s/%s: below the first index %" PRIu64 ", removing (interrupted compaction)",
               w->dir, name, marker);
        if (unlinkat(w->dirfd, name, 0) != 0) {
            rc = seterr(-errno, "%s/%s: unlink: %s", w->dir, name, strerror(errno));
            free(firsts);
            return rc;
        }
        skip++;
    }
    if (skip && (rc = io_sync(w, w->dirfd)) != 0) {
        free(firsts);
        return seterr(rc, "%s: fsync directory: %s", w->dir, strerror(-rc));
    }
    if (firsts[skip] > marker) {
        rc = seterr(-EBADMSG, "%s: the log starts at %" PRIu64 " (%s) but the first segment "
                              "starts at %" PRIu64 ": segments are missing",
                    w->dir, marker, FIRST_FILE, firsts[skip]);
        free(firsts);
        return rc;
    }
    for (size_t i = skip; i < n && rc == 0; i++) {
        struct seg *s;
        if ((rc = load_segment(w, firsts[i], i + 1 == n, &s)) != 0)
            break;
        if (w->nsegs) {
            struct seg *p = w->segs[w->nsegs - 1];
            if (p->first + p->count != s->first) {
                char a[64], b[64];
                seg_name(a, sizeof a, p->first);
                seg_name(b, sizeof b, s->first);
                rc = seterr(-EBADMSG, "%s: %s ends after entry %" PRIu64 " but the next segment "
                                      "%s starts at %" PRIu64 ": entries are missing",
                            w->dir, a, p->first + p->count - 1, b, s->first);
                seg_free(s);
                break;
            }
        }
        if (segs_push(w, s) != 0) {
            seg_free(s);
            rc = seterr(-ENOMEM, "out of memory");
        }
    }
    free(firsts);
    if (rc == 0) {
        /* The marker's term is for the entry just before the marker, which is the first entry
         * unless the first segment starts below the marker (tolerated above; no step makes it). */
        w->first_index = w->segs[0]->first;
        w->prev_known = w->first_index == 1 || (w->first_index == marker && m.prev_known);
        w->prev_term = w->first_index == marker ? m.prev_term : 0;
    }
    return rc;
}

static void wal_free(struct wal *w)
{
    for (size_t i = 0; i < w->nsegs; i++)
        seg_free(w->segs[i]);
    free(w->segs);
    pend_free_list(w->qhead);
    pend_free_list(w->inflight);
    if (w->lockfd >= 0)
        close(w->lockfd); /* releases the flock */
    if (w->dirfd >= 0)
        close(w->dirfd);
    pthread_mutex_destroy(&w->mu);
    pthread_mutex_destroy(&w->dmu);
    pthread_mutex_destroy(&w->hsmu);
    pthread_cond_destroy(&w->work_cv);
    pthread_cond_destroy(&w->idle_cv);
    free(w->batch);
    free(w->dir);
    free(w);
}

int wal_open(struct wal **out, const char *dir, const struct wal_options *opts, char *err,
             size_t errlen)
{
    *out = NULL;
    tl_err[0] = 0;
    struct wal *w = calloc(1, sizeof *w);
    if (!w) {
        if (err && errlen)
            snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    w->dirfd = w->lockfd = -1;
    metrics_histogram_init(&w->fsync_hist, metrics_buckets_etcd_disk, 14, 1e9);
    if (opts)
        w->o = *opts;
    else
        wal_options_init(&w->o);
    if (!w->o.warn_sync_ns)
        w->o.warn_sync_ns = 1000000000;
    pthread_mutex_init(&w->mu, NULL);
    pthread_mutex_init(&w->dmu, NULL);
    pthread_mutex_init(&w->hsmu, NULL);
    pthread_cond_init(&w->work_cv, NULL);
    pthread_cond_init(&w->idle_cv, NULL);
    w->io.pwrite = w->o.io && w->o.io->pwrite ? w->o.io->pwrite : real_pwrite;
    w->io.fdatasync = w->o.io && w->o.io->fdatasync ? w->o.io->fdatasync : fdatasync;
    w->io.fsync = w->o.io && w->o.io->fsync ? w->o.io->fsync : fsync;
    w->io.fallocate = w->o.io && w->o.io->fallocate ? w->o.io->fallocate : real_fallocate;

    int rc = 0;
    struct wal_options *o = &w->o;
    if (o->segment_size < MIN_SEGMENT_SIZE || o->segment_size > MAX_SEGMENT_SIZE)
        rc = seterr(-EINVAL, "segment_size %" PRIu64 " outside [%llu, %llu]", o->segment_size,
                    MIN_SEGMENT_SIZE, MAX_SEGMENT_SIZE);
    else if (o->max_pending_entries == 0 || o->max_pending_bytes == 0)
        rc = seterr(-EINVAL, "max_pending_entries and max_pending_bytes must be positive");
    if (o->max_pending_entries > WAL_MAX_BATCH_POS)
        o->max_pending_entries = WAL_MAX_BATCH_POS;
    if (o->max_entry_bytes > o->segment_size - WAL_SEG_HEADER_SIZE - WAL_REC_HEADER_SIZE)
        o->max_entry_bytes =
            (uint32_t)(o->segment_size - WAL_SEG_HEADER_SIZE - WAL_REC_HEADER_SIZE);
    if (rc == 0 && !(w->dir = strdup(dir)))
        rc = seterr(-ENOMEM, "out of memory");
    if (rc == 0 && mkdir(dir, 0700) != 0 && errno != EEXIST)
        rc = seterr(-errno, "%s: mkdir: %s", dir, strerror(errno));
    if (rc == 0 && (w->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
        rc = seterr(-errno, "%s: open: %s", dir, strerror(errno));
    if (rc == 0)
        rc = lock_dir(w);
    if (rc == 0)
        rc = recover(w);
    if (rc == 0) {
        struct seg *s = w->segs[w->nsegs - 1];
        uint64_t last = s->first + s->count - 1;
        atomic_store(&w->last, last);
        atomic_store(&w->durable, last);
        w->last_term = w->durable_term = term_of(w, last);
        if (pthread_create(&w->writer, NULL, writer_main, w) != 0)
            rc = seterr(-EAGAIN, "cannot start the writer thread");
        else {
            w->writer_started = 1;
            pthread_setname_np(w->writer, "wal-writer");
        }
    }
    if (rc != 0) {
        if (err && errlen)
            snprintf(err, errlen, "%s", tl_err);
        wal_free(w);
        return rc;
    }
    *out = w;
    return 0;
}

void wal_close(struct wal *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->mu);
    w->stopping = 1;
    pthread_cond_signal(&w->work_cv);
    pthread_mutex_unlock(&w->mu);
    if (w->writer_started)
        pthread_join(w->writer, NULL);
    wal_free(w);
}

const struct metrics_histogram *wal_fsync_histogram(const struct wal *w)
{
    return &w->fsync_hist;
}
