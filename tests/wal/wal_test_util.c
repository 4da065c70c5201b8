#include "tests/wal/wal_test_util.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int tu_notice_count;
char tu_last_notice[512];

char *tu_mkdtemp(void)
{
    const char *base = getenv("TEST_TMPDIR");
    char *path;
    cr_assert(asprintf(&path, "%s/walXXXXXX", base && *base ? base : "/tmp") > 0);
    cr_assert_not_null(mkdtemp(path), "mkdtemp %s", path);
    return path;
}

void tu_rmtree(const char *path)
{
    DIR *d = opendir(path);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        char *p = tu_path(path, de->d_name);
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
            tu_rmtree(p);
        else
            unlink(p);
        free(p);
    }
    closedir(d);
    rmdir(path);
}

void tu_copytree(const char *src, const char *dst)
{
    mkdir(dst, 0700);
    DIR *d = opendir(src);
    cr_assert_not_null(d);
    struct dirent *de;
    static char buf[1 << 16];
    while ((de = readdir(d)) != NULL) {
        char *s = tu_path(src, de->d_name), *t = tu_path(dst, de->d_name);
        struct stat st;
        if (stat(s, &st) == 0 && S_ISREG(st.st_mode)) {
            int in = open(s, O_RDONLY), out = open(t, O_WRONLY | O_CREAT | O_TRUNC, 0600);
            cr_assert(in >= 0 && out >= 0);
            ssize_t n;
            while ((n = read(in, buf, sizeof buf)) > 0)
                cr_assert_eq(write(out, buf, (size_t)n), n);
            close(in);
            close(out);
        }
        free(s);
        free(t);
    }
    closedir(d);
}

uint64_t tu_rand(uint64_t *s)
{
    uint64_t x = *s ? *s : 0x9E3779B97F4A7C15ull;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1Dull;
}

void tu_entry(struct raft_entry *e, uint64_t index, uint64_t term, uint32_t len, uint64_t salt)
{
    e->index = index;
    e->term = term;
    e->type = (uint8_t)(index % 3);
    e->len = len;
    e->data = NULL;
    if (len) {
        e->data = malloc(len);
        uint64_t st = index * 1000003u + salt + 1;
        for (uint32_t i = 0; i < len; i++)
            e->data[i] = (uint8_t)(tu_rand(&st) >> 56);
    }
}

void tu_expect_entry(struct wal *w, uint64_t index, uint64_t term, uint32_t len, uint64_t salt)
{
    struct raft_entry got, want;
    int rc = wal_read(w, index, &got);
    cr_assert_eq(rc, 0, "read %llu: %d %s", (unsigned long long)index, rc, wal_errmsg());
    tu_entry(&want, index, term, len, salt);
    cr_assert_eq(got.index, index);
    cr_assert_eq(got.term, term, "entry %llu term %llu want %llu", (unsigned long long)index,
                 (unsigned long long)got.term, (unsigned long long)term);
    cr_assert_eq(got.type, want.type);
    cr_assert_eq(got.len, len, "entry %llu len %u want %u", (unsigned long long)index, got.len,
                 len);
    if (len)
        cr_assert(memcmp(got.data, want.data, len) == 0, "entry %llu payload differs",
                  (unsigned long long)index);
    uint64_t t = 0;
    cr_assert_eq(wal_term_at(w, index, &t), 0);
    cr_assert_eq(t, term);
    free(got.data);
    free(want.data);
}

void tu_append_sync(struct wal *w, uint64_t index, uint64_t term, uint32_t len, uint64_t salt)
{
    struct raft_entry e;
    tu_entry(&e, index, term, len, salt);
    int rc = wal_append(w, &e, 1);
    cr_assert_eq(rc, 0, "append %llu: %d %s", (unsigned long long)index, rc, wal_errmsg());
    free(e.data);
    rc = wal_wait_durable(w, index);
    cr_assert_eq(rc, 0, "wait %llu: %d %s", (unsigned long long)index, rc, wal_errmsg());
}

void tu_quiet_log(void *arg, const char *msg)
{
    (void)arg;
    tu_notice_count++;
    snprintf(tu_last_notice, sizeof tu_last_notice, "%s", msg);
}

struct wal *tu_open(const char *dir, struct wal_options *o)
{
    struct wal_options def;
    if (!o) {
        wal_options_init(&def);
        def.log = tu_quiet_log;
        o = &def;
    }
    struct wal *w;
    char err[256] = "";
    int rc = wal_open(&w, dir, o, err, sizeof err);
    cr_assert_eq(rc, 0, "wal_open %s: %d %s", dir, rc, err);
    return w;
}

char *tu_path(const char *dir, const char *name)
{
    char *p;
    cr_assert(asprintf(&p, "%s/%s", dir, name) > 0);
    return p;
}

long tu_file_size(const char *path)
{
    struct stat st;
    cr_assert_eq(stat(path, &st), 0, "stat %s", path);
    return (long)st.st_size;
}

void tu_truncate(const char *path, long size)
{
    cr_assert_eq(truncate(path, size), 0, "truncate %s", path);
}

void tu_flip_bit(const char *path, long offset, int bit)
{
    int fd = open(path, O_RDWR);
    cr_assert(fd >= 0);
    uint8_t b;
    cr_assert_eq(pread(fd, &b, 1, offset), 1);
    b ^= (uint8_t)(1u << bit);
    cr_assert_eq(pwrite(fd, &b, 1, offset), 1);
    close(fd);
}

void tu_write_at(const char *path, long offset, const void *buf, size_t len)
{
    int fd = open(path, O_RDWR);
    cr_assert(fd >= 0);
    cr_assert_eq(pwrite(fd, buf, len, offset), (ssize_t)len);
    close(fd);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

size_t tu_segments(const char *dir, char ***names)
{
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    size_t n = 0;
    char **a = NULL;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t l = strlen(de->d_name);
        if (l == 24 && !strcmp(de->d_name + 20, ".seg")) {
            a = realloc(a, (n + 1) * sizeof *a);
            a[n++] = strdup(de->d_name);
        }
    }
    closedir(d);
    if (n)
        qsort(a, n, sizeof *a, cmp_str);
    *names = a;
    return n;
}

void tu_free_names(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}
