/* lazy_io.c: see lazy_io.h. An undo log per unsynced write, dropped when its file is synced,
 * replayed backwards at a crash. Its own file changes are raw system calls, so that a binary
 * which also interposes the libc calls (tests/kv/lazy_lmdb.c routes them here) does not see
 * them again. */
#include "tests/wal/lazy_io.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

struct undo {
    dev_t dev;
    ino_t ino;
    char path[PATH_MAX];
    off_t off, old_size;
    size_t len;     /* bytes of the write */
    size_t old_len; /* bytes of old data kept (the part of the write below old_size) */
    uint8_t *old;
    uint8_t *data; /* the bytes written: put back after the rollback if durable (or kept by a
                    * torn crash) */
    bool durable;  /* written through an O_DSYNC (or O_SYNC) descriptor */
    uint64_t seq;  /* order of the writes */
};

#define MAX_DOWN 16

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct undo *undos;
static size_t n_undos, cap_undos;
static char down[MAX_DOWN][PATH_MAX]; /* directories whose power is off */
static size_t writes_seen, syncs_seen;
static uint64_t next_seq = 1;

/* The real calls, never an interposed libc function. */
static ssize_t sys_pwrite(int fd, const void *buf, size_t len, off_t off)
{
    return syscall(SYS_pwrite64, fd, buf, len, off);
}
static int sys_fdatasync(int fd) { return (int)syscall(SYS_fdatasync, fd); }
static int sys_fsync(int fd) { return (int)syscall(SYS_fsync, fd); }
static int sys_ftruncate(int fd, off_t len) { return (int)syscall(SYS_ftruncate, fd, len); }

static bool under(const char *path, const char *dir)
{
    size_t k = strlen(dir);
    return strncmp(path, dir, k) == 0 && (path[k] == '/' || path[k] == 0);
}

static bool fd_path(int fd, char *out)
{
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, PATH_MAX - 1);
    if (n < 0)
        return false;
    out[n] = 0;
    return true;
}

static bool is_down_locked(int fd)
{
    char path[PATH_MAX];
    if (!fd_path(fd, path))
        return false;
    for (size_t i = 0; i < MAX_DOWN; i++)
        if (down[i][0] && under(path, down[i]))
            return true;
    return false;
}

/* The bytes u's write replaces, read through fd or, when fd is write-only, the file's path. */
static bool read_old(int fd, struct undo *u, int fl)
{
    if (!u->old_len)
        return true;
    int rfd = fl >= 0 && (fl & O_ACCMODE) == O_WRONLY ? open(u->path, O_RDONLY | O_CLOEXEC) : fd;
    bool ok = rfd >= 0 && pread(rfd, u->old, u->old_len, u->off) == (ssize_t)u->old_len;
    if (rfd >= 0 && rfd != fd)
        close(rfd);
    return ok;
}

static ssize_t lazy_pwrite(int fd, const void *buf, size_t len, off_t off)
{
    pthread_mutex_lock(&mu);
    writes_seen++;
    if (is_down_locked(fd)) {
        pthread_mutex_unlock(&mu);
        errno = EIO;
        return -1;
    }
    struct stat st;
    struct undo u = {0};
    if (fstat(fd, &st) != 0 || !fd_path(fd, u.path)) {
        pthread_mutex_unlock(&mu);
        return -1;
    }
    u.seq = next_seq++;
    u.dev = st.st_dev;
    u.ino = st.st_ino;
    u.off = off;
    u.len = len;
    u.old_size = st.st_size;
    int fl = fcntl(fd, F_GETFL);
    u.durable = fl >= 0 && (fl & O_DSYNC) == O_DSYNC; /* O_SYNC includes O_DSYNC's bit */
    /* (A durable write is never undone: only its new bytes are kept.) */
    u.old_len = u.durable || off >= st.st_size ? 0
                : (size_t)(st.st_size - off) < len ? (size_t)(st.st_size - off) : len;
    u.old = malloc(u.old_len ? u.old_len : 1);
    u.data = malloc(len ? len : 1);
    if (!u.old || !u.data || !read_old(fd, &u, fl)) {
        free(u.old);
        free(u.data);
        pthread_mutex_unlock(&mu);
        errno = EIO;
        return -1;
    }
    memcpy(u.data, buf, len);
    if (n_undos == cap_undos) {
        size_t nc = cap_undos ? 2 * cap_undos : 256;
        struct undo *p = realloc(undos, nc * sizeof(*p));
        if (!p) {
            free(u.old);
            free(u.data);
            pthread_mutex_unlock(&mu);
            errno = ENOMEM;
            return -1;
        }
        undos = p;
        cap_undos = nc;
    }
    undos[n_undos++] = u;
    ssize_t n = sys_pwrite(fd, buf, len, off);
    pthread_mutex_unlock(&mu);
    return n;
}

/* The file behind fd is synced: its writes made before the sync began are durable. The real
 * call runs outside the lock, so members' syncs overlap as they would on one disk. */
static int synced(int fd, int (*real)(int))
{
    pthread_mutex_lock(&mu);
    syncs_seen++;
    uint64_t before = next_seq;
    bool off_now = is_down_locked(fd);
    pthread_mutex_unlock(&mu);
    if (off_now) {
        errno = EIO;
        return -1;
    }
    int rc = real(fd);
    struct stat st;
    pthread_mutex_lock(&mu);
    if (is_down_locked(fd)) { /* the power went while it ran: it did not complete */
        pthread_mutex_unlock(&mu);
        errno = EIO;
        return -1;
    }
    if (rc == 0 && fstat(fd, &st) == 0) {
        size_t keep = 0;
        for (size_t i = 0; i < n_undos; i++) {
            if (undos[i].dev == st.st_dev && undos[i].ino == st.st_ino && undos[i].seq < before) {
                free(undos[i].old);
                free(undos[i].data);
            }
            else
                undos[keep++] = undos[i];
        }
        n_undos = keep;
    }
    pthread_mutex_unlock(&mu);
    return rc;
}

static int lazy_fdatasync(int fd) { return synced(fd, sys_fdatasync); }
static int lazy_fsync(int fd) { return synced(fd, sys_fsync); }

static int lazy_fallocate(int fd, off_t off, off_t len)
{
    pthread_mutex_lock(&mu);
    bool off_now = is_down_locked(fd);
    pthread_mutex_unlock(&mu);
    return off_now ? EIO : posix_fallocate(fd, off, len);
}

static const struct wal_io io = {lazy_pwrite, lazy_fdatasync, lazy_fsync, lazy_fallocate};

const struct wal_io *lazy_io(void)
{
    return &io;
}

static const struct snap_io snap_io = {lazy_pwrite, lazy_fsync};

const struct snap_io *lazy_snap_io(void)
{
    return &snap_io;
}

static void resolve(const char *dir, char *out)
{
    if (!realpath(dir, out))
        snprintf(out, PATH_MAX, "%s", dir);
}

/* The file written as u->path, or renamed since within its directory (a temporary file put in
 * place): opened for writing, or -1 when it is gone. */
static int open_undo_target(const struct undo *u)
{
    int fd = open(u->path, O_WRONLY | O_CLOEXEC);
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) == 0 && st.st_dev == u->dev && st.st_ino == u->ino)
        return fd;
    if (fd >= 0)
        close(fd);
    char parent[PATH_MAX];
    snprintf(parent, sizeof parent, "%s", u->path);
    char *slash = strrchr(parent, '/');
    if (!slash)
        return -1;
    *slash = 0;
    DIR *d = opendir(parent);
    if (!d)
        return -1;
    fd = -1;
    struct dirent *de;
    while (fd < 0 && (de = readdir(d)) != NULL) {
        if (de->d_ino != u->ino)
            continue;
        char p[PATH_MAX + 256];
        snprintf(p, sizeof p, "%s/%s", parent, de->d_name);
        fd = open(p, O_WRONLY | O_CLOEXEC);
        if (fd >= 0 && (fstat(fd, &st) != 0 || st.st_dev != u->dev || st.st_ino != u->ino)) {
            close(fd);
            fd = -1;
        }
    }
    closedir(d);
    return fd;
}

#define PIECE 4096 /* what a torn crash keeps or drops: a page */

static size_t crash(const char *dir, bool torn, uint64_t seed)
{
    uint64_t rng = seed * 0x9E3779B97F4A7C15ull + 1;
    char d[PATH_MAX];
    resolve(dir, d);
    pthread_mutex_lock(&mu);
    for (size_t i = 0; i < MAX_DOWN; i++)
        if (!down[i][0]) {
            snprintf(down[i], PATH_MAX, "%s", d);
            break;
        }
    size_t dropped = 0, keep = 0;
    /* Newest first, so the oldest write's bytes and size are what remain. */
    for (size_t i = n_undos; i-- > 0;) {
        struct undo *u = &undos[i];
        if (!under(u->path, d) || u->durable)
            continue;
        dropped++;
        int fd = open_undo_target(u);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) != 0) {
            if (fd >= 0)
                close(fd);
            continue; /* unlinked since: that change counts as durable */
        }
        if (u->old_len && sys_pwrite(fd, u->old, u->old_len, u->off) != (ssize_t)u->old_len)
            fprintf(stderr, "lazy_io: cannot roll back %s: %s\n", u->path, strerror(errno));
        if ((off_t)(u->off + (off_t)u->len) > u->old_size && st.st_size > u->old_size &&
            sys_ftruncate(fd, u->old_size) != 0)
            fprintf(stderr, "lazy_io: cannot truncate %s: %s\n", u->path, strerror(errno));
        close(fd);
    }
    /* Writes through an O_DSYNC descriptor reached the disk when they returned, whatever
     * unsynced writes before them did: put them back, oldest first; a torn crash also puts
     * back the pages of unsynced writes that it keeps. */
    for (size_t i = 0; i < n_undos; i++) {
        struct undo *u = &undos[i];
        if (!under(u->path, d) || (!u->durable && !torn))
            continue;
        int fd = open_undo_target(u);
        if (fd < 0)
            continue;
        for (size_t at = 0; at < u->len;) {
            size_t n = PIECE - (size_t)((u->off + (off_t)at) % PIECE);
            if (n > u->len - at)
                n = u->len - at;
            rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
            if ((u->durable || (rng >> 32) & 1) &&
                sys_pwrite(fd, u->data + at, n, u->off + (off_t)at) != (ssize_t)n)
                fprintf(stderr, "lazy_io: cannot redo %s: %s\n", u->path, strerror(errno));
            at += n;
        }
        close(fd);
    }
    for (size_t i = 0; i < n_undos; i++) {
        if (under(undos[i].path, d)) {
            free(undos[i].old);
            free(undos[i].data);
        } else
            undos[keep++] = undos[i];
    }
    n_undos = keep;
    pthread_mutex_unlock(&mu);
    return dropped;
}

size_t lazy_io_crash(const char *dir) { return crash(dir, false, 0); }

size_t lazy_io_crash_torn(const char *dir, unsigned seed) { return crash(dir, true, seed); }

void lazy_io_revive(const char *dir)
{
    char d[PATH_MAX];
    resolve(dir, d);
    pthread_mutex_lock(&mu);
    for (size_t i = 0; i < MAX_DOWN; i++)
        if (!strcmp(down[i], d))
            down[i][0] = 0;
    pthread_mutex_unlock(&mu);
}

size_t lazy_io_unsynced(const char *dir)
{
    char d[PATH_MAX] = "";
    if (dir)
        resolve(dir, d);
    pthread_mutex_lock(&mu);
    size_t k = 0;
    for (size_t i = 0; i < n_undos; i++)
        k += !dir || under(undos[i].path, d);
    pthread_mutex_unlock(&mu);
    return k;
}

void lazy_io_counts(size_t *writes, size_t *syncs)
{
    pthread_mutex_lock(&mu);
    if (writes)
        *writes = writes_seen;
    if (syncs)
        *syncs = syncs_seen;
    pthread_mutex_unlock(&mu);
}
