/* snap_store.c: the snapshot store: the directory, atomic commits, verified reads, retention and
 * the receiving side of transfers. The format is in snap_format.c; docs/snapshots.md explains why
 * each step ordering is crash-safe. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log/log.h"
#include "raft/snap/snap.h"
#include "raft/snap/snap_internal.h"
#include "raft/wal/crc32c.h"

#define SNAP_SUFFIX ".snap"
#define TMP_SUFFIX ".snap.tmp"
#define PARTIAL_SUFFIX ".partial"
#define LOCK_FILE "snap.lock"
#define MIN_FILE (SNAP_HEADER_SIZE + SNAP_TRAILER_SIZE)
#define MAX_FILE (SNAP_MAX_PAYLOAD + SNAP_MAX_CONFIG + MIN_FILE)
#define DEFAULT_MAX_SNAPSHOTS 5
#define DEFAULT_MAX_CHUNK (1u << 20)
#define DEFAULT_MAX_SNAPSHOT_BYTES (16ull << 30)
#define MAX_READ_CALL (1u << 30) /* snap_file_read returns a long: keep each call far below */

/* The transfer being received: at most one per store, kept in <term>-<index>-<total>.partial. */
struct recv_state {
    int active, fd;
    uint64_t index, term, total, received;
    char name[SNAP_NAME_MAX];
};

struct snap_store {
    char *dir;
    int dirfd, lockfd;
    struct snap_options o;
    struct snap_io io;
    _Atomic int broken; /* a test hook stopped an operation: behave as a crashed process */
    _Atomic uint64_t pending; /* names the temporary files of snapshots named at commit */
    pthread_mutex_t mu; /* renames, deletions and the transfer state */
    struct recv_state rx;
};

struct snap_writer {
    struct snap_store *s;
    int fd;
    struct snap_header h;
    char name[SNAP_NAME_MAX], tmp[SNAP_NAME_MAX];
    uint64_t off;      /* end of what snap_write has written */
    uint32_t body_crc; /* of the configuration and the payload written so far */
    int fd_given;      /* the producer writes through snap_writer_fd */
    int err;           /* the first failure: only snap_abort is left */
};

struct snap_file {
    int fd;
    char *path;
    struct snap_header h;
    uint8_t *config;
    uint64_t size;
    uint32_t stored_crc; /* the trailer's */
    uint32_t crc;        /* over header, configuration and the payload read so far */
    uint64_t pos;        /* payload bytes read so far */
    uint32_t max_chunk;
};

static _Thread_local char tl_err[1024];

const char *snap_errmsg(void)
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
#define notice(s, ...) notice_at((s), __FILE__, __LINE__, __VA_ARGS__)
static void notice_at(struct snap_store *s, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void notice_at(struct snap_store *s, const char *file, int line, const char *fmt, ...)
{
    char msg[1280];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (s->o.log) {
        s->o.log(s->o.log_arg, msg);
        return;
    }
    struct log_field f[] = {LOG_ID("member", s->o.log_id), {.key = NULL}};
    log_emit(LOG_LEVEL_WARN, file, line, s->o.log_id ? f : NULL, "%s", msg);
}

void snap_options_init(struct snap_options *o)
{
    memset(o, 0, sizeof *o);
    o->max_snapshots = DEFAULT_MAX_SNAPSHOTS;
    o->max_chunk_bytes = DEFAULT_MAX_CHUNK;
    o->max_snapshot_bytes = DEFAULT_MAX_SNAPSHOT_BYTES;
}

/* ---- system calls, through the test hooks ---- */

static ssize_t real_pwrite(int fd, const void *buf, size_t len, off_t off)
{
    return pwrite(fd, buf, len, off);
}

static int io_write(struct snap_store *s, int fd, const void *buf, size_t len, uint64_t off)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = s->io.pwrite(fd, p, len, (off_t)off);
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

static int io_sync(struct snap_store *s, int fd)
{
    return s->io.fsync(fd) == 0 ? 0 : -errno;
}

/* A simulated crash point for tests: nonzero means stop here, leaving the files as they are. */
static int step(struct snap_store *s, const char *op, int k)
{
    if (s->o.step_hook && s->o.step_hook(s->o.step_arg, op, k)) {
        atomic_store(&s->broken, 1);
        seterr(-ECANCELED, "%s stopped by the test hook at step %d", op, k);
        return 1;
    }
    return 0;
}

static int check_usable(struct snap_store *s)
{
    if (atomic_load(&s->broken))
        return seterr(-EIO, "%s: store unusable after an operation was stopped; reopen it",
                      s->dir);
    return 0;
}

/* What snap_create and snap_recv_begin check before anything else. */
static int check_start(struct snap_store *s, uint64_t index, uint64_t term)
{
    int rc = check_usable(s);
    if (rc == 0 && (index == 0 || term == 0))
        rc = seterr(-EINVAL, "snapshot index %" PRIu64 " and term %" PRIu64
                    " must both be positive", index, term);
    return rc;
}

/* ---- names ---- */

static void snap_name(char buf[SNAP_NAME_MAX], uint64_t index, uint64_t term)
{
    snprintf(buf, SNAP_NAME_MAX, "%016" PRIx64 "-%016" PRIx64 SNAP_SUFFIX, term, index);
}

static void partial_name(char buf[SNAP_NAME_MAX], uint64_t index, uint64_t term, uint64_t total)
{
    snprintf(buf, SNAP_NAME_MAX, "%016" PRIx64 "-%016" PRIx64 "-%016" PRIx64 PARTIAL_SUFFIX, term,
             index, total);
}

/* Exactly 16 lowercase hex digits, as the names are written: no other spelling is ours. */
static int parse_hex16(const char *p, uint64_t *v)
{
    uint64_t x = 0;
    for (int i = 0; i < 16; i++) {
        char c = p[i];
        if (c >= '0' && c <= '9')
            x = x << 4 | (uint64_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            x = x << 4 | (uint64_t)(c - 'a' + 10);
        else
            return 0;
    }
    *v = x;
    return 1;
}

/* "<term>-<index><suffix>", or with total, "<term>-<index>-<total><suffix>". */
static int parse_name(const char *name, const char *suffix, uint64_t *index, uint64_t *term,
                      uint64_t *total)
{
    size_t stem = total ? 50 : 33, n = strlen(name);
    if (n != stem + strlen(suffix) || strcmp(name + stem, suffix) != 0 || name[16] != '-' ||
        (total && name[33] != '-'))
        return 0;
    if (!parse_hex16(name, term) || !parse_hex16(name + 17, index) ||
        (total && !parse_hex16(name + 34, total)))
        return 0;
    return *index > 0 && *term > 0;
}

/* Copies a name parse_name accepted (so shorter than SNAP_NAME_MAX). */
static void copy_name(char dst[SNAP_NAME_MAX], const char *src)
{
    size_t n = strnlen(src, SNAP_NAME_MAX - 1);
    memcpy(dst, src, n);
    dst[n] = 0;
}

static int newer(uint64_t index_a, uint64_t term_a, uint64_t index_b, uint64_t term_b)
{
    return index_a > index_b || (index_a == index_b && term_a > term_b);
}

static int cmp_newest_first(const void *a, const void *b)
{
    const struct snap_info *x = a, *y = b;
    if (newer(x->index, x->term, y->index, y->term))
        return -1;
    return newer(y->index, y->term, x->index, x->term);
}

/* ---- listing and retention ---- */

/* A directory stream over the store's directory, from its start. */
static int open_dir(struct snap_store *s, DIR **out)
{
    int fd = dup(s->dirfd);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        return seterr(-e, "%s: opendir: %s", s->dir, strerror(e));
    }
    rewinddir(d); /* the duplicate shares the position of earlier scans */
    *out = d;
    return 0;
}

static int list_locked(struct snap_store *s, struct snap_info **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    DIR *d;
    int rc = open_dir(s, &d);
    if (rc != 0)
        return rc;
    struct snap_info *a = NULL;
    size_t cnt = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        uint64_t index, term;
        if (!parse_name(de->d_name, SNAP_SUFFIX, &index, &term, NULL))
            continue;
        if (cnt == cap) {
            cap = cap ? cap * 2 : 8;
            struct snap_info *b = realloc(a, cap * sizeof *b);
            if (!b) {
                free(a);
                closedir(d);
                return seterr(-ENOMEM, "out of memory");
            }
            a = b;
        }
        a[cnt].index = index;
        a[cnt].term = term;
        copy_name(a[cnt].name, de->d_name);
        cnt++;
    }
    closedir(d);
    if (cnt)
        qsort(a, cnt, sizeof *a, cmp_newest_first);
    *out = a;
    *n = cnt;
    return 0;
}

int snap_list(struct snap_store *s, struct snap_info **out, size_t *n)
{
    pthread_mutex_lock(&s->mu);
    int rc = list_locked(s, out, n);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* Keeps the max_snapshots newest files and `keep` (just written), deleting the rest oldest first.
 * Failing to delete is only reported: the snapshot just written is in place either way. */
static int retain(struct snap_store *s, const char *keep)
{
    if (s->o.max_snapshots == 0)
        return 0;
    struct snap_info *a;
    size_t n;
    if (list_locked(s, &a, &n) != 0) {
        notice(s, "%s: retention skipped: %s", s->dir, tl_err);
        return 0;
    }
    size_t kept = 0, deleted = 0;
    int rc = 0;
    int *drop = calloc(n ? n : 1, sizeof *drop);
    if (!drop) {
        free(a);
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (strcmp(a[i].name, keep) == 0 || kept < s->o.max_snapshots)
            kept++;
        else
            drop[i] = 1;
    }
    for (size_t i = n; i-- > 0 && rc == 0;) {
        if (!drop[i])
            continue;
        if (step(s, "retain", (int)deleted)) {
            rc = -ECANCELED;
            break;
        }
        if (unlinkat(s->dirfd, a[i].name, 0) != 0)
            notice(s, "%s/%s: cannot delete an old snapshot: %s", s->dir, a[i].name,
                   strerror(errno));
        else
            deleted++;
    }
    if (rc == 0 && deleted && io_sync(s, s->dirfd) != 0)
        notice(s, "%s: fsync after deleting old snapshots: %s", s->dir, strerror(errno));
    free(drop);
    free(a);
    return rc;
}

/* ---- reading ---- */

static int open_file(struct snap_store *s, const char *name, uint64_t index, uint64_t term,
                     struct snap_file **out)
{
    *out = NULL;
    struct snap_file *f = calloc(1, sizeof *f);
    if (!f || asprintf(&f->path, "%s/%s", s->dir, name) < 0) {
        free(f);
        return seterr(-ENOMEM, "out of memory");
    }
    f->max_chunk = s->o.max_chunk_bytes;
    char err[512];
    int rc = 0;
    f->fd = openat(s->dirfd, name, O_RDONLY | O_CLOEXEC);
    if (f->fd < 0)
        rc = errno == ENOENT ? seterr(-ENOENT, "%s: no such snapshot", f->path)
                             : seterr(-errno, "%s: open: %s", f->path, strerror(errno));
    if (rc == 0 && (rc = snap_verify_fd(f->fd, f->path, &f->h, err, sizeof err)) != 0)
        seterr(rc, "%s", err);
    if (rc == 0 && (f->h.index != index || f->h.term != term))
        rc = seterr(-EBADMSG, "%s: the header names index %" PRIu64 " term %" PRIu64
                    ", the file name index %" PRIu64 " term %" PRIu64, f->path, f->h.index,
                    f->h.term, index, term);
    /* Keep the configuration in memory and start the running checksum snap_file_read extends. */
    uint8_t hdr[SNAP_HEADER_SIZE], tr[SNAP_TRAILER_SIZE];
    if (rc == 0) {
        f->size = snap_file_size_for(&f->h);
        f->config = malloc(f->h.config_len ? f->h.config_len : 1);
        if (!f->config)
            rc = seterr(-ENOMEM, "out of memory");
    }
    if (rc == 0 && ((rc = snap_read_full(f->fd, hdr, sizeof hdr, 0, f->path, err, sizeof err)) ||
                    (rc = snap_read_full(f->fd, f->config, f->h.config_len, SNAP_HEADER_SIZE,
                                         f->path, err, sizeof err)) ||
                    (rc = snap_read_full(f->fd, tr, sizeof tr, f->size - SNAP_TRAILER_SIZE,
                                         f->path, err, sizeof err))))
        seterr(rc, "%s", err);
    if (rc != 0) {
        snap_file_close(f);
        return rc;
    }
    f->crc = crc32c(crc32c(0, hdr, sizeof hdr), f->config, f->h.config_len);
    f->stored_crc = snap_get32(tr);
    *out = f;
    return 0;
}

int snap_open(struct snap_store *s, uint64_t index, uint64_t term, struct snap_file **out)
{
    char name[SNAP_NAME_MAX];
    snap_name(name, index, term);
    return open_file(s, name, index, term, out);
}

int snap_load_newest(struct snap_store *s, int skip_damaged, struct snap_file **out)
{
    *out = NULL;
    struct snap_info *a;
    size_t n;
    int rc = snap_list(s, &a, &n);
    if (rc != 0)
        return rc;
    char damaged[512] = "";
    size_t used = 0, found = 0;
    for (size_t i = 0; i < n; i++) {
        rc = open_file(s, a[i].name, a[i].index, a[i].term, out);
        if (rc == -ENOENT)
            continue; /* deleted since the listing (retention): not damage */
        if (rc == 0 || (rc != -EBADMSG && rc != -EIO)) {
            free(a);
            return rc;
        }
        if (!skip_damaged) {
            char msg[sizeof tl_err];
            snprintf(msg, sizeof msg, "%s", tl_err);
            free(a);
            return seterr(rc, "%s; not falling back to an older snapshot", msg);
        }
        notice(s, "%s; skipped, trying an older snapshot", tl_err);
        int k = snprintf(damaged + used, sizeof damaged - used, "%s%s", found ? ", " : "",
                         a[i].name);
        if (k > 0 && (size_t)k < sizeof damaged - used)
            used += (size_t)k;
        found++;
    }
    free(a);
    if (found)
        return seterr(-EBADMSG, "%s: no snapshot verifies (damaged: %s)", s->dir, damaged);
    return seterr(-ENOENT, "%s: no snapshot", s->dir);
}

const struct snap_header *snap_file_header(const struct snap_file *f)
{
    return &f->h;
}

const void *snap_file_config(const struct snap_file *f)
{
    return f->config;
}

uint64_t snap_file_size(const struct snap_file *f)
{
    return f->size;
}

long snap_file_read(struct snap_file *f, void *buf, size_t len)
{
    uint64_t left = f->h.payload_len - f->pos;
    if (left == 0) {
        if (f->crc != f->stored_crc)
            return seterr(-EBADMSG, "%s: checksum mismatch at the end of the payload: the file "
                          "changed since it was verified", f->path);
        return 0;
    }
    if (len == 0)
        return seterr(-EINVAL, "snap_file_read: empty buffer");
    size_t n = len < left ? len : (size_t)left;
    if (n > MAX_READ_CALL)
        n = MAX_READ_CALL;
    char err[512];
    int rc = snap_read_full(f->fd, buf, n, SNAP_HEADER_SIZE + f->h.config_len + f->pos, f->path,
                            err, sizeof err);
    if (rc != 0)
        return seterr(rc, "%s", err);
    f->crc = crc32c(f->crc, buf, n);
    f->pos += n;
    /* The read that completes the payload is the last chance to refuse it. */
    if (f->pos == f->h.payload_len && f->crc != f->stored_crc)
        return seterr(-EBADMSG, "%s: checksum mismatch at the end of the payload: the file "
                      "changed since it was verified", f->path);
    return (long)n;
}

int snap_file_chunk(struct snap_file *f, uint64_t offset, void *buf, size_t max, size_t *n)
{
    *n = 0;
    if (offset > f->size)
        return seterr(-EINVAL, "%s: chunk offset %" PRIu64 " is beyond the file's %" PRIu64
                      " bytes", f->path, offset, f->size);
    uint64_t k = f->size - offset;
    if (k > max)
        k = max;
    if (k > f->max_chunk)
        k = f->max_chunk;
    char err[512];
    int rc = snap_read_full(f->fd, buf, (size_t)k, offset, f->path, err, sizeof err);
    if (rc != 0)
        return seterr(rc, "%s", err);
    *n = (size_t)k;
    return 0;
}

void snap_file_close(struct snap_file *f)
{
    if (!f)
        return;
    if (f->fd >= 0)
        close(f->fd);
    free(f->config);
    free(f->path);
    free(f);
}

/* ---- writing ---- */

int snap_create(struct snap_store *s, uint64_t index, uint64_t term, const void *config,
                size_t config_len, struct snap_writer **out)
{
    *out = NULL;
    bool deferred = index == 0 && term == 0; /* named at snap_commit_as */
    int rc = deferred ? check_usable(s) : check_start(s, index, term);
    if (rc != 0)
        return rc;
    if (config_len > SNAP_MAX_CONFIG)
        return seterr(-EMSGSIZE, "configuration of %zu bytes exceeds the limit of %u", config_len,
                      SNAP_MAX_CONFIG);
    if (!config && config_len)
        return seterr(-EINVAL, "configuration is NULL but %zu bytes long", config_len);
    if (MIN_FILE + config_len > s->o.max_snapshot_bytes)
        return seterr(-EFBIG, "configuration of %zu bytes alone exceeds max_snapshot_bytes %"
                      PRIu64, config_len, s->o.max_snapshot_bytes);
    struct snap_writer *w = calloc(1, sizeof *w);
    if (!w)
        return seterr(-ENOMEM, "out of memory");
    w->s = s;
    w->h = (struct snap_header){index, term, (uint32_t)config_len, 0};
    if (deferred) {
        snprintf(w->tmp, sizeof w->tmp, "pending-%016" PRIx64 TMP_SUFFIX,
                 atomic_fetch_add(&s->pending, 1));
    } else {
        snap_name(w->name, index, term);
        snprintf(w->tmp, sizeof w->tmp, "%016" PRIx64 "-%016" PRIx64 TMP_SUFFIX, term, index);
    }
    if (step(s, "create", 0)) {
        free(w);
        return -ECANCELED;
    }
    /* O_EXCL: a leftover from a crash was removed at open, so an existing one is being written. */
    w->fd = openat(s->dirfd, w->tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (w->fd < 0) {
        rc = errno == EEXIST
                 ? seterr(-EBUSY, "%s/%s: a snapshot of that name is being written", s->dir,
                          w->tmp)
                 : seterr(-errno, "%s/%s: create: %s", s->dir, w->tmp, strerror(errno));
        free(w);
        return rc;
    }
    if (step(s, "create", 1)) {
        close(w->fd);
        free(w);
        return -ECANCELED;
    }
    /* The header is written again at commit with the payload's length; this one holds the place. */
    uint8_t hdr[SNAP_HEADER_SIZE];
    snap_encode_header(hdr, &w->h);
    rc = io_write(s, w->fd, hdr, sizeof hdr, 0);
    if (rc == 0 && config_len)
        rc = io_write(s, w->fd, config, config_len, SNAP_HEADER_SIZE);
    if (rc != 0) {
        seterr(rc, "%s/%s: write: %s", s->dir, w->tmp, strerror(-rc));
        snap_abort(w);
        return rc;
    }
    w->body_crc = crc32c(0, config, config_len);
    w->off = SNAP_HEADER_SIZE + config_len;
    *out = w;
    return 0;
}

/* The largest payload the bounds allow for this configuration. */
static uint64_t max_payload(const struct snap_writer *w)
{
    uint64_t m = w->s->o.max_snapshot_bytes - MIN_FILE - w->h.config_len;
    return m < SNAP_MAX_PAYLOAD ? m : SNAP_MAX_PAYLOAD;
}

int snap_write(struct snap_writer *w, const void *buf, size_t len)
{
    if (w->err)
        return w->err;
    if (w->fd_given)
        return seterr(-EINVAL, "snap_write after snap_writer_fd");
    uint64_t payload = w->off - SNAP_HEADER_SIZE - w->h.config_len;
    if (len > max_payload(w) - payload) {
        w->err = seterr(-EFBIG, "%s/%s: snapshot larger than max_snapshot_bytes %" PRIu64,
                        w->s->dir, w->tmp, w->s->o.max_snapshot_bytes);
        return w->err;
    }
    int rc = io_write(w->s, w->fd, buf, len, w->off);
    if (rc != 0) {
        w->err = seterr(rc, "%s/%s: write: %s", w->s->dir, w->tmp, strerror(-rc));
        return rc;
    }
    w->body_crc = crc32c(w->body_crc, buf, len);
    w->off += len;
    return 0;
}

int snap_writer_fd(struct snap_writer *w)
{
    if (w->err)
        return w->err;
    if (lseek(w->fd, (off_t)w->off, SEEK_SET) < 0) {
        w->err = seterr(-errno, "%s/%s: lseek: %s", w->s->dir, w->tmp, strerror(errno));
        return w->err;
    }
    w->fd_given = 1;
    return w->fd;
}

/* The payload a producer wrote through the descriptor: its length and checksum, read back. */
static int measure_fd_payload(struct snap_writer *w)
{
    struct stat st;
    if (fstat(w->fd, &st) != 0)
        return seterr(-errno, "%s/%s: stat: %s", w->s->dir, w->tmp, strerror(errno));
    uint64_t start = SNAP_HEADER_SIZE + w->h.config_len, size = (uint64_t)st.st_size;
    if (size < start)
        return seterr(-EIO, "%s/%s: the payload producer cut the file to %" PRIu64 " bytes",
                      w->s->dir, w->tmp, size);
    if (size - start > max_payload(w))
        return seterr(-EFBIG, "%s/%s: snapshot larger than max_snapshot_bytes %" PRIu64,
                      w->s->dir, w->tmp, w->s->o.max_snapshot_bytes);
    char err[512];
    uint32_t crc = 0;
    /* The configuration is re-read too: the producer owned the descriptor meanwhile. */
    int rc = snap_crc_range(w->fd, SNAP_HEADER_SIZE, size - SNAP_HEADER_SIZE, &crc, w->tmp, err,
                            sizeof err);
    if (rc != 0)
        return seterr(rc, "%s/%s", w->s->dir, err);
    w->body_crc = crc;
    w->off = size;
    return 0;
}

/* Renames dir/from to dir/to, makes the rename durable, then applies retention; called with mu
 * held. The file must be complete and synced: from this rename on it is a snapshot. op and
 * first_step name the test hook's steps. *renamed tells the caller whether `from` is gone. */
static int install(struct snap_store *s, const char *from, const char *to, const char *op,
                   int first_step, int *renamed)
{
    *renamed = 0;
    if (step(s, op, first_step))
        return -ECANCELED;
    if (renameat(s->dirfd, from, s->dirfd, to) != 0)
        return seterr(-errno, "%s/%s: rename to %s: %s", s->dir, from, to, strerror(errno));
    *renamed = 1;
    if (step(s, op, first_step + 1))
        return -ECANCELED;
    int rc = io_sync(s, s->dirfd);
    if (rc != 0)
        return seterr(rc, "%s: fsync of the directory after installing %s: %s", s->dir, to,
                      strerror(-rc));
    return retain(s, to);
}

/* Writes the final trailer and header and syncs the file (steps 2 and 3 of "create"). */
static int commit_finish_file(struct snap_writer *w)
{
    struct snap_store *s = w->s;
    w->h.payload_len = w->off - SNAP_HEADER_SIZE - w->h.config_len;
    uint8_t hdr[SNAP_HEADER_SIZE], tr[SNAP_TRAILER_SIZE];
    snap_encode_header(hdr, &w->h);
    snap_encode_trailer(tr, snap_crc32c_combine(crc32c(0, hdr, sizeof hdr), w->body_crc,
                                                w->off - SNAP_HEADER_SIZE));
    if (step(s, "create", 2))
        return -ECANCELED;
    int rc = io_write(s, w->fd, tr, sizeof tr, w->off);
    if (rc == 0)
        rc = io_write(s, w->fd, hdr, sizeof hdr, 0);
    if (rc != 0)
        return seterr(rc, "%s/%s: write: %s", s->dir, w->tmp, strerror(-rc));
    if (step(s, "create", 3))
        return -ECANCELED;
    if ((rc = io_sync(s, w->fd)) != 0)
        return seterr(rc, "%s/%s: fsync: %s", s->dir, w->tmp, strerror(-rc));
    return 0;
}

int snap_commit_as(struct snap_writer *w, uint64_t index, uint64_t term)
{
    if (w->h.index || w->h.term || !index || !term) {
        int rc = seterr(-EINVAL, "snap_commit_as(%" PRIu64 ", %" PRIu64 "): only for a snapshot "
                        "created without index and term, and both must be positive", index, term);
        snap_abort(w);
        return rc;
    }
    w->h.index = index;
    w->h.term = term;
    snap_name(w->name, index, term);
    return snap_commit(w);
}

int snap_commit(struct snap_writer *w)
{
    struct snap_store *s = w->s;
    int rc = w->err ? w->err : check_usable(s);
    if (rc == 0 && !w->h.index) {
        snap_abort(w);
        return seterr(-EINVAL, "a snapshot created without index and term needs snap_commit_as");
    }
    if (rc == 0 && w->fd_given)
        rc = measure_fd_payload(w);
    if (rc == 0)
        rc = commit_finish_file(w);
    int renamed = 0;
    if (rc == 0) {
        pthread_mutex_lock(&s->mu);
        rc = install(s, w->tmp, w->name, "create", 4, &renamed);
        pthread_mutex_unlock(&s->mu);
    }
    close(w->fd);
    w->fd = -1;
    /* A stop by the test hook is a simulated crash: the files stay exactly as they are. */
    if (rc != 0 && rc != -ECANCELED && !renamed && !atomic_load(&s->broken))
        unlinkat(s->dirfd, w->tmp, 0);
    free(w);
    return rc;
}

void snap_abort(struct snap_writer *w)
{
    if (!w)
        return;
    if (w->fd >= 0)
        close(w->fd);
    unlinkat(w->s->dirfd, w->tmp, 0);
    free(w);
}

/* ---- receiving ---- */

static void rx_discard(struct snap_store *s)
{
    if (!s->rx.active)
        return;
    close(s->rx.fd);
    unlinkat(s->dirfd, s->rx.name, 0);
    memset(&s->rx, 0, sizeof s->rx);
}

/* The first 64 bytes received must be the header of the snapshot begun: refusing a wrong stream
 * here saves receiving the rest of it. */
static int rx_check_header(struct snap_store *s)
{
    struct recv_state *r = &s->rx;
    uint8_t hdr[SNAP_HEADER_SIZE];
    struct snap_header h;
    char path[PATH_MAX + SNAP_NAME_MAX], err[512];
    snprintf(path, sizeof path, "%s/%s", s->dir, r->name);
    int rc = snap_read_full(r->fd, hdr, sizeof hdr, 0, path, err, sizeof err);
    if (rc == 0)
        rc = snap_decode_header(hdr, sizeof hdr, path, &h, err, sizeof err);
    if (rc != 0)
        return seterr(rc, "%s", err);
    if (h.index != r->index || h.term != r->term || snap_file_size_for(&h) != r->total)
        return seterr(-EBADMSG, "%s: the data received is not the snapshot begun: its header "
                      "says index %" PRIu64 " term %" PRIu64 " size %" PRIu64 ", the transfer "
                      "is for index %" PRIu64 " term %" PRIu64 " size %" PRIu64, path, h.index,
                      h.term, snap_file_size_for(&h), r->index, r->term, r->total);
    return 0;
}

/* The partial file is complete: verify it whole, then install it as a commit does. 1 when
 * installed; when it does not verify (or cannot be synced or renamed) it is discarded. */
static int rx_finish(struct snap_store *s)
{
    struct recv_state *r = &s->rx;
    char path[PATH_MAX + SNAP_NAME_MAX], err[sizeof tl_err], name[SNAP_NAME_MAX];
    snprintf(path, sizeof path, "%s/%s", s->dir, r->name);
    snap_name(name, r->index, r->term);
    struct snap_header h;
    int rc = snap_verify_fd(r->fd, path, &h, err, sizeof err);
    if (rc == 0 && rx_check_header(s) != 0) /* the header was checked on arrival; cheap to redo */
        rc = -EBADMSG, snprintf(err, sizeof err, "%s", tl_err);
    if (rc != 0) {
        seterr(rc, "snapshot transfer (index %" PRIu64 " term %" PRIu64 ") complete but not "
               "valid; discarded, begin again: %s", r->index, r->term, err);
        rx_discard(s);
        return rc;
    }
    if (step(s, "recv", 0))
        return -ECANCELED;
    if ((rc = io_sync(s, r->fd)) != 0) {
        seterr(rc, "%s: fsync: %s; the transfer is discarded", path, strerror(-rc));
        rx_discard(s);
        return rc;
    }
    int renamed;
    rc = install(s, r->name, name, "recv", 1, &renamed);
    if (renamed) {
        close(r->fd);
        memset(r, 0, sizeof *r);
    } else if (rc != -ECANCELED) {
        rx_discard(s);
    }
    return rc == 0 ? 1 : rc;
}

int snap_recv_begin(struct snap_store *s, uint64_t index, uint64_t term, uint64_t total_len,
                    uint64_t *offset)
{
    *offset = 0;
    int rc = check_start(s, index, term);
    if (rc != 0)
        return rc;
    if (total_len < MIN_FILE)
        return seterr(-EINVAL, "snapshot of %" PRIu64 " bytes: the smallest is %d", total_len,
                      MIN_FILE);
    if (total_len > s->o.max_snapshot_bytes)
        return seterr(-EFBIG, "snapshot of %" PRIu64 " bytes exceeds max_snapshot_bytes %" PRIu64,
                      total_len, s->o.max_snapshot_bytes);
    pthread_mutex_lock(&s->mu);
    struct recv_state *r = &s->rx;
    if (r->active && r->index == index && r->term == term && r->total == total_len) {
        *offset = r->received;
        pthread_mutex_unlock(&s->mu);
        return 0;
    }
    if (r->active) {
        notice(s, "%s/%s: discarding a partial snapshot (%" PRIu64 " of %" PRIu64 " bytes): "
               "the snapshot of index %" PRIu64 " term %" PRIu64 " size %" PRIu64 " begins",
               s->dir, r->name, r->received, r->total, index, term, total_len);
        rx_discard(s);
    }
    partial_name(r->name, index, term, total_len);
    r->fd = openat(s->dirfd, r->name, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (r->fd < 0)
        rc = seterr(-errno, "%s/%s: create: %s", s->dir, r->name, strerror(errno));
    else {
        r->active = 1;
        r->index = index;
        r->term = term;
        r->total = total_len;
        r->received = 0;
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static int recv_chunk_locked(struct snap_store *s, uint64_t offset, const void *buf, size_t len)
{
    struct recv_state *r = &s->rx;
    int rc = check_usable(s);
    if (rc != 0)
        return rc;
    if (!r->active)
        return seterr(-ENOENT, "%s: no snapshot transfer in progress", s->dir);
    if (len == 0 || len > s->o.max_chunk_bytes)
        return seterr(-EMSGSIZE, "chunk of %zu bytes: a chunk holds 1 to %" PRIu32 " bytes", len,
                      s->o.max_chunk_bytes);
    if (offset != r->received)
        return seterr(-ERANGE, "chunk at offset %" PRIu64 ", the transfer stands at %" PRIu64,
                      offset, r->received);
    if (len > r->total - offset)
        return seterr(-EINVAL, "chunk at offset %" PRIu64 " of %zu bytes ends beyond the "
                      "snapshot's %" PRIu64 " bytes", offset, len, r->total);
    rc = io_write(s, r->fd, buf, len, offset);
    if (rc != 0) {
        /* Nothing past `received` counts; cutting it keeps the size equal to the progress. */
        if (ftruncate(r->fd, (off_t)r->received) != 0)
            notice(s, "%s/%s: ftruncate after a failed write: %s", s->dir, r->name,
                   strerror(errno));
        return seterr(rc, "%s/%s: write: %s", s->dir, r->name, strerror(-rc));
    }
    uint64_t before = r->received;
    r->received += len;
    if (before < SNAP_HEADER_SIZE && r->received >= SNAP_HEADER_SIZE &&
        (rc = rx_check_header(s)) != 0) {
        rx_discard(s);
        return rc;
    }
    return r->received == r->total ? rx_finish(s) : 0;
}

int snap_recv_chunk(struct snap_store *s, uint64_t offset, const void *buf, size_t len)
{
    pthread_mutex_lock(&s->mu);
    int rc = recv_chunk_locked(s, offset, buf, len);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

void snap_recv_progress(struct snap_store *s, struct snap_progress *p)
{
    pthread_mutex_lock(&s->mu);
    *p = (struct snap_progress){s->rx.active, s->rx.index, s->rx.term, s->rx.total,
                                s->rx.received};
    pthread_mutex_unlock(&s->mu);
}

void snap_recv_abort(struct snap_store *s)
{
    pthread_mutex_lock(&s->mu);
    rx_discard(s);
    pthread_mutex_unlock(&s->mu);
}

/* ---- opening ---- */

static int lock_dir(struct snap_store *s)
{
    s->lockfd = openat(s->dirfd, LOCK_FILE, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (s->lockfd < 0)
        return seterr(-errno, "%s/%s: %s", s->dir, LOCK_FILE, strerror(errno));
    if (flock(s->lockfd, LOCK_EX | LOCK_NB) != 0) {
        if (errno == EWOULDBLOCK)
            return seterr(-EBUSY, "%s: snapshot directory is in use by another store", s->dir);
        return seterr(-errno, "%s/%s: flock: %s", s->dir, LOCK_FILE, strerror(errno));
    }
    return 0;
}

/* A transfer interrupted by a restart: resume it (the file's size is the progress), install it
 * if it was complete, or discard it if its bytes cannot be the snapshot its name announces. Any
 * damage inside what was received is caught by the final verification. */
static int rx_recover(struct snap_store *s, const char *name, uint64_t index, uint64_t term,
                      uint64_t total)
{
    struct recv_state *r = &s->rx;
    int fd = openat(s->dirfd, name, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return seterr(-errno, "%s/%s: open: %s", s->dir, name, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return seterr(-e, "%s/%s: stat: %s", s->dir, name, strerror(e));
    }
    *r = (struct recv_state){1, fd, index, term, total, (uint64_t)st.st_size, ""};
    copy_name(r->name, name);
    int bad = 0;
    if (total < MIN_FILE || total > s->o.max_snapshot_bytes)
        bad = seterr(-EINVAL, "%s/%s: its size is outside the bounds", s->dir, name);
    else if (r->received > total)
        bad = seterr(-EINVAL, "%s/%s: it is longer than its announced size", s->dir, name);
    else if (r->received >= SNAP_HEADER_SIZE)
        bad = rx_check_header(s);
    if (bad) {
        notice(s, "discarding a partial snapshot: %s", tl_err);
        rx_discard(s);
        return 0;
    }
    if (r->received < total)
        return 0;
    int rc = rx_finish(s); /* complete before the crash: finish the installation now */
    if (rc == -EBADMSG) {
        notice(s, "%s", tl_err);
        return 0;
    }
    return rc < 0 ? rc : 0;
}

/* Removes unfinished temporary files and every partial transfer but the newest, which is
 * recovered. */
static int scan_leftovers(struct snap_store *s)
{
    DIR *d;
    int rc = open_dir(s, &d);
    if (rc != 0)
        return rc;
    char best[SNAP_NAME_MAX] = "";
    uint64_t bi = 0, bt = 0, btotal = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        uint64_t index, term, total;
        if (parse_name(de->d_name, TMP_SUFFIX, &index, &term, NULL)) {
            notice(s, "%s/%s: removing an unfinished snapshot (a commit that did not complete)",
                   s->dir, de->d_name);
            unlinkat(s->dirfd, de->d_name, 0);
        } else if (parse_name(de->d_name, PARTIAL_SUFFIX, &index, &term, &total)) {
            /* Only one transfer is received at a time, so only a crash between discarding one
             * and starting the next can leave two. */
            const char *drop = best[0] && !newer(index, term, bi, bt) ? de->d_name : best;
            if (drop[0]) {
                notice(s, "%s/%s: removing an older partial snapshot", s->dir, drop);
                unlinkat(s->dirfd, drop, 0);
            }
            if (drop != de->d_name) {
                copy_name(best, de->d_name);
                bi = index, bt = term, btotal = total;
            }
        }
    }
    closedir(d);
    return best[0] ? rx_recover(s, best, bi, bt, btotal) : 0;
}

static void store_free(struct snap_store *s)
{
    if (s->rx.active)
        close(s->rx.fd); /* the partial file stays for the next open */
    if (s->lockfd >= 0)
        close(s->lockfd);
    if (s->dirfd >= 0)
        close(s->dirfd);
    pthread_mutex_destroy(&s->mu);
    free(s->dir);
    free(s);
}

int snap_store_open(struct snap_store **out, const char *dir, const struct snap_options *o,
                    char *err, size_t errlen)
{
    *out = NULL;
    tl_err[0] = 0;
    struct snap_store *s = calloc(1, sizeof *s);
    if (!s) {
        if (err && errlen)
            snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    s->dirfd = s->lockfd = -1;
    pthread_mutex_init(&s->mu, NULL);
    if (o)
        s->o = *o;
    else
        snap_options_init(&s->o);
    s->io.pwrite = s->o.io && s->o.io->pwrite ? s->o.io->pwrite : real_pwrite;
    s->io.fsync = s->o.io && s->o.io->fsync ? s->o.io->fsync : fsync;
    int rc = 0;
    if (s->o.max_chunk_bytes == 0 || s->o.max_chunk_bytes > SNAP_MAX_CHUNK)
        rc = seterr(-EINVAL, "max_chunk_bytes %" PRIu32 " outside [1, %u]", s->o.max_chunk_bytes,
                    SNAP_MAX_CHUNK);
    else if (s->o.max_snapshot_bytes < MIN_FILE || s->o.max_snapshot_bytes > MAX_FILE)
        rc = seterr(-EINVAL, "max_snapshot_bytes %" PRIu64 " outside [%d, %llu]",
                    s->o.max_snapshot_bytes, MIN_FILE, MAX_FILE);
    if (rc == 0 && !(s->dir = strdup(dir)))
        rc = seterr(-ENOMEM, "out of memory");
    if (rc == 0 && mkdir(dir, 0700) != 0 && errno != EEXIST)
        rc = seterr(-errno, "%s: mkdir: %s", dir, strerror(errno));
    if (rc == 0 && (s->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
        rc = seterr(-errno, "%s: open: %s", dir, strerror(errno));
    if (rc == 0)
        rc = lock_dir(s);
    if (rc == 0)
        rc = scan_leftovers(s);
    if (rc != 0) {
        if (err && errlen)
            snprintf(err, errlen, "%s", tl_err);
        store_free(s);
        return rc;
    }
    *out = s;
    return 0;
}

void snap_store_close(struct snap_store *s)
{
    if (s)
        store_free(s);
}
