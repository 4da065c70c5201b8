#include "tests/snap/snap_test_util.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/wal/wal_test_util.h"

void st_options(struct snap_options *o)
{
    snap_options_init(o);
    o->log = tu_quiet_log;
}

struct snap_store *st_open(const char *dir, struct snap_options *o)
{
    struct snap_options def;
    if (!o) {
        st_options(&def);
        o = &def;
    }
    struct snap_store *s;
    char err[512] = "";
    int rc = snap_store_open(&s, dir, o, err, sizeof err);
    cr_assert_eq(rc, 0, "snap_store_open %s: %d %s", dir, rc, err);
    return s;
}

void st_bytes(uint8_t *buf, size_t len, uint64_t seed)
{
    uint64_t st = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < len; i++)
        buf[i] = (uint8_t)(tu_rand(&st) >> 56);
}

void st_make(struct snap_store *s, uint64_t index, uint64_t term, size_t cfg_len, size_t len,
             uint64_t seed)
{
    uint8_t *cfg = malloc(cfg_len + 1), *p = malloc(len + 1);
    st_bytes(cfg, cfg_len, seed + 1);
    st_bytes(p, len, seed);
    struct snap_writer *w;
    int rc = snap_create(s, index, term, cfg, cfg_len, &w);
    cr_assert_eq(rc, 0, "snap_create: %d %s", rc, snap_errmsg());
    uint64_t rng = seed + 7;
    for (size_t off = 0; off < len;) {
        size_t k = 1 + (size_t)(tu_rand(&rng) % 70000);
        if (k > len - off)
            k = len - off;
        rc = snap_write(w, p + off, k);
        cr_assert_eq(rc, 0, "snap_write: %d %s", rc, snap_errmsg());
        off += k;
    }
    rc = snap_commit(w);
    cr_assert_eq(rc, 0, "snap_commit: %d %s", rc, snap_errmsg());
    free(cfg);
    free(p);
}

void st_expect(struct snap_file *f, uint64_t index, uint64_t term, size_t cfg_len, size_t len,
               uint64_t seed)
{
    const struct snap_header *h = snap_file_header(f);
    cr_assert_eq(h->index, index);
    cr_assert_eq(h->term, term);
    cr_assert_eq(h->config_len, cfg_len);
    cr_assert_eq(h->payload_len, len);
    cr_assert_eq(snap_file_size(f), SNAP_HEADER_SIZE + cfg_len + len + SNAP_TRAILER_SIZE);
    uint8_t *want = malloc(cfg_len + len + 1), *got = malloc(len + 1);
    st_bytes(want, cfg_len, seed + 1);
    cr_assert(memcmp(snap_file_config(f), want, cfg_len) == 0, "configuration differs");
    st_bytes(want, len, seed);
    size_t off = 0;
    for (;;) {
        long n = snap_file_read(f, got + off, 4093);
        cr_assert(n >= 0, "snap_file_read: %ld %s", n, snap_errmsg());
        if (n == 0)
            break;
        off += (size_t)n;
        cr_assert(off <= len);
    }
    cr_assert_eq(off, len);
    cr_assert(memcmp(got, want, len) == 0, "payload differs");
    free(want);
    free(got);
}

void st_expect_in(struct snap_store *s, uint64_t index, uint64_t term, size_t cfg_len, size_t len,
                  uint64_t seed)
{
    struct snap_file *f;
    int rc = snap_open(s, index, term, &f);
    cr_assert_eq(rc, 0, "snap_open %" PRIu64 "/%" PRIu64 ": %d %s", index, term, rc,
                 snap_errmsg());
    st_expect(f, index, term, cfg_len, len, seed);
    snap_file_close(f);
}

char *st_snap_path(const char *dir, uint64_t index, uint64_t term)
{
    char *p;
    cr_assert(asprintf(&p, "%s/%016" PRIx64 "-%016" PRIx64 ".snap", dir, term, index) > 0);
    return p;
}

char *st_partial_path(const char *dir, uint64_t index, uint64_t term, uint64_t total)
{
    char *p;
    cr_assert(asprintf(&p, "%s/%016" PRIx64 "-%016" PRIx64 "-%016" PRIx64 ".partial", dir, term,
                       index, total) > 0);
    return p;
}

size_t st_count(const char *dir, const char *suffix)
{
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    size_t n = 0, sl = strlen(suffix);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t l = strlen(de->d_name);
        if (l >= sl && strcmp(de->d_name + l - sl, suffix) == 0)
            n++;
    }
    closedir(d);
    return n;
}

void st_put(const char *path, const void *buf, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    cr_assert(fd >= 0, "create %s", path);
    cr_assert_eq(write(fd, buf, len), (ssize_t)len);
    close(fd);
}

uint8_t *st_slurp(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY);
    cr_assert(fd >= 0, "open %s", path);
    struct stat st;
    cr_assert_eq(fstat(fd, &st), 0);
    uint8_t *buf = malloc((size_t)st.st_size + 1);
    cr_assert_eq(pread(fd, buf, (size_t)st.st_size, 0), st.st_size);
    close(fd);
    *len = (size_t)st.st_size;
    return buf;
}
