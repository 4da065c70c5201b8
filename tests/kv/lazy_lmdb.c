/* lazy_lmdb.c: see lazy_lmdb.h. The definitions below win over libc's for every caller in the
 * process (the executable is first in the dynamic linker's search, and the linker exports
 * them because liblmdb.so and libc users reference them); calls not on a tracked file go on to
 * the next definition. lazy_io changes files with raw system calls, so it never comes back
 * here. */
#include "tests/kv/lazy_lmdb.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "tests/wal/lazy_io.h"

#define MAX_TRACKED 8

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static char tracked[MAX_TRACKED][PATH_MAX];
static atomic_int n_tracked; /* fast path: nothing tracked, straight to the real call */
static struct lazy_lmdb_counts counts;
static uint64_t n_syncs;
static lazy_lmdb_sync_fn sync_fn;
static void *sync_arg;

/* The next definition of name (ASan's interceptor, or libc's). */
static void *next(const char *name)
{
    void *p = dlsym(RTLD_NEXT, name);
    if (!p)
        abort(); /* no way to go on, nor to say so through write() */
    return p;
}

#define REAL(type, name) \
    static _Atomic(type) real_##name; \
    static type get_##name(void) \
    { \
        type f = atomic_load(&real_##name); \
        if (!f) { \
            f = (type)next(#name); \
            atomic_store(&real_##name, f); \
        } \
        return f; \
    }

typedef ssize_t (*pwrite_t)(int, const void *, size_t, off_t);
typedef ssize_t (*write_t)(int, const void *, size_t);
typedef ssize_t (*writev_t)(int, const struct iovec *, int);
typedef int (*sync_t)(int);
REAL(pwrite_t, pwrite)
REAL(pwrite_t, pwrite64)
REAL(write_t, write)
REAL(writev_t, writev)
REAL(sync_t, fdatasync)
REAL(sync_t, fsync)

static void resolve(const char *dir, char *out)
{
    if (!realpath(dir, out))
        snprintf(out, PATH_MAX, "%s", dir);
}

void lazy_lmdb_track(const char *dir)
{
    char d[PATH_MAX];
    resolve(dir, d);
    pthread_mutex_lock(&mu);
    for (int i = 0; i < MAX_TRACKED; i++)
        if (!tracked[i][0]) {
            snprintf(tracked[i], PATH_MAX, "%s", d);
            atomic_fetch_add(&n_tracked, 1);
            break;
        }
    pthread_mutex_unlock(&mu);
}

void lazy_lmdb_untrack(const char *dir)
{
    char d[PATH_MAX];
    resolve(dir, d);
    pthread_mutex_lock(&mu);
    for (int i = 0; i < MAX_TRACKED; i++)
        if (tracked[i][0] && !strcmp(tracked[i], d)) {
            tracked[i][0] = 0;
            atomic_fetch_sub(&n_tracked, 1);
        }
    pthread_mutex_unlock(&mu);
}

void lazy_lmdb_counts(struct lazy_lmdb_counts *c)
{
    pthread_mutex_lock(&mu);
    *c = counts;
    pthread_mutex_unlock(&mu);
}

void lazy_lmdb_on_sync(lazy_lmdb_sync_fn fn, void *arg)
{
    pthread_mutex_lock(&mu);
    sync_fn = fn;
    sync_arg = arg;
    pthread_mutex_unlock(&mu);
}

/* fd is a regular file under a tracked directory. errno is kept for the caller. */
static bool is_tracked(int fd)
{
    if (atomic_load(&n_tracked) == 0)
        return false;
    int saved = errno;
    bool yes = false;
    struct stat st;
    char link[64], path[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
        (n = readlink(link, path, sizeof path - 1)) > 0) {
        path[n] = 0;
        pthread_mutex_lock(&mu);
        for (int i = 0; i < MAX_TRACKED && !yes; i++) {
            size_t k = strlen(tracked[i]);
            yes = k && !strncmp(path, tracked[i], k) && path[k] == '/';
        }
        pthread_mutex_unlock(&mu);
    }
    errno = saved;
    return yes;
}

static void count(size_t *c, int fd)
{
    int fl = fcntl(fd, F_GETFL);
    pthread_mutex_lock(&mu);
    (*c)++;
    if (c != &counts.fdatasync && c != &counts.fsync && fl >= 0 && (fl & O_DSYNC) == O_DSYNC)
        counts.dsync_writes++;
    pthread_mutex_unlock(&mu);
}

ssize_t pwrite(int fd, const void *buf, size_t len, off_t off)
{
    if (!is_tracked(fd))
        return get_pwrite()(fd, buf, len, off);
    count(&counts.pwrite, fd);
    return lazy_io()->pwrite(fd, buf, len, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t len, off64_t off)
{
    if (!is_tracked(fd))
        return get_pwrite64()(fd, buf, len, off);
    count(&counts.pwrite, fd);
    return lazy_io()->pwrite(fd, buf, len, off);
}

/* write and writev: a pwrite at the descriptor's offset (the end with O_APPEND), which then
 * moves past what was written. */
static ssize_t write_at_offset(int fd, const void *buf, size_t len)
{
    off_t off;
    struct stat st;
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0 && (fl & O_APPEND))
        off = fstat(fd, &st) == 0 ? st.st_size : -1;
    else
        off = lseek(fd, 0, SEEK_CUR);
    if (off < 0)
        return -1;
    ssize_t n = lazy_io()->pwrite(fd, buf, len, off);
    if (n > 0 && lseek(fd, off + n, SEEK_SET) < 0)
        return -1;
    return n;
}

ssize_t write(int fd, const void *buf, size_t len)
{
    if (!is_tracked(fd))
        return get_write()(fd, buf, len);
    count(&counts.write, fd);
    return write_at_offset(fd, buf, len);
}

ssize_t writev(int fd, const struct iovec *iov, int n)
{
    if (!is_tracked(fd))
        return get_writev()(fd, iov, n);
    count(&counts.writev, fd);
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += iov[i].iov_len;
    char *buf = malloc(total ? total : 1);
    if (!buf) {
        errno = ENOMEM;
        return -1;
    }
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        memcpy(buf + at, iov[i].iov_base, iov[i].iov_len);
        at += iov[i].iov_len;
    }
    ssize_t r = write_at_offset(fd, buf, total);
    int saved = errno;
    free(buf);
    errno = saved;
    return r;
}

static void before_sync(void)
{
    pthread_mutex_lock(&mu);
    uint64_t k = ++n_syncs;
    lazy_lmdb_sync_fn fn = sync_fn;
    void *arg = sync_arg;
    pthread_mutex_unlock(&mu);
    if (fn)
        fn(arg, k);
}

int fdatasync(int fd)
{
    if (!is_tracked(fd))
        return get_fdatasync()(fd);
    count(&counts.fdatasync, fd);
    before_sync();
    return lazy_io()->fdatasync(fd);
}

int fsync(int fd)
{
    if (!is_tracked(fd))
        return get_fsync()(fd);
    count(&counts.fsync, fd);
    before_sync();
    return lazy_io()->fsync(fd);
}
