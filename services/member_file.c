/* member_file.c: <data-dir>/member (see member_file.h). */
#include "services/member_file.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "raft/wal/crc32c.h"

#define MEMBER_FILE_MAX 65536 /* a 64-member table in hex is under 40 KiB */

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int member_file_write(const char *data_dir, const struct member_file *m, char *err, size_t errlen)
{
    const struct cluster_member *self = cluster_find_id(&m->table, m->member_id);
    if (!m->name[0] || !self)
        return fail(err, errlen, "member file: member %016" PRIx64 " ('%s') is not in its table",
                    m->member_id, m->name);
    uint8_t *t = NULL;
    size_t tlen = 0;
    if (cluster_encode(&m->table, &t, &tlen) != 0)
        return fail(err, errlen, "member file: the member table does not encode");
    size_t cap = 256 + CLUSTER_NAME_MAX + 2 * tlen;
    char *buf = malloc(cap);
    if (!buf) {
        free(t);
        return fail(err, errlen, "out of memory");
    }
    int n = snprintf(buf, cap, "craft-member 1\nname %s\nmember-id %016" PRIx64
                               "\ncluster-id %016" PRIx64 "\ntable ",
                     m->name, m->member_id, m->table.id);
    size_t len = (size_t)n;
    for (size_t i = 0; i < tlen; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%02x", t[i]);
    buf[len++] = '\n';
    len += (size_t)snprintf(buf + len, cap - len, "crc32c %08" PRIx32 "\n", crc32c(0, buf, len));
    free(t);

    char path[4200], tmp[4200];
    snprintf(path, sizeof path, "%s/%s", data_dir, MEMBER_FILE_NAME);
    snprintf(tmp, sizeof tmp, "%s/%s.tmp", data_dir, MEMBER_FILE_NAME);
    int rc = -1;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        fail(err, errlen, "cannot write %s: %s", tmp, strerror(errno));
        goto out;
    }
    if (write_all(fd, buf, len) != 0 || fsync(fd) != 0) {
        fail(err, errlen, "cannot write %s: %s", tmp, strerror(errno));
        close(fd);
        unlink(tmp);
        goto out;
    }
    close(fd);
    if (rename(tmp, path) != 0) {
        fail(err, errlen, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
        unlink(tmp);
        goto out;
    }
    int dfd = open(data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) != 0) {
        fail(err, errlen, "cannot sync directory %s: %s", data_dir, strerror(errno));
        if (dfd >= 0)
            close(dfd);
        goto out;
    }
    close(dfd);
    rc = 0;
out:
    free(buf);
    return rc;
}

/* The next line of *p (without its '\n'), which must start with "key "; NULL otherwise. */
static char *field(char **p, const char *key)
{
    char *line = *p, *nl = strchr(line, '\n');
    if (!nl)
        return NULL;
    *nl = '\0';
    *p = nl + 1;
    size_t kl = strlen(key);
    if (strncmp(line, key, kl) != 0 || line[kl] != ' ')
        return NULL;
    return line + kl + 1;
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Exactly 16 lowercase hex digits. */
static int parse_id(const char *s, uint64_t *v)
{
    if (!s || strlen(s) != 16)
        return -1;
    *v = 0;
    for (int i = 0; i < 16; i++) {
        int h = hexval(s[i]);
        if (h < 0)
            return -1;
        *v = *v << 4 | (uint64_t)h;
    }
    return 0;
}

int member_file_read(const char *data_dir, struct member_file *out, char *err, size_t errlen)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", data_dir, MEMBER_FILE_NAME);
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno == ENOENT)
            return 1;
        return fail(err, errlen, "cannot read %s: %s", path, strerror(errno));
    }
    char *buf = malloc(MEMBER_FILE_MAX + 1);
    if (!buf) {
        fclose(f);
        return fail(err, errlen, "out of memory");
    }
    size_t len = fread(buf, 1, MEMBER_FILE_MAX + 1, f);
    int ioerr = ferror(f);
    fclose(f);
    int rc = -1;
    const char *why = NULL;
    uint8_t *t = NULL;
    if (ioerr) {
        why = "read error";
        goto out;
    }
    if (len > MEMBER_FILE_MAX) {
        why = "too large";
        goto out;
    }
    buf[len] = '\0';
    if (strlen(buf) != len) {
        why = "a NUL byte";
        goto out;
    }
    /* The checksum line covers every byte before it. */
    char *crcline = len ? strstr(buf, "\ncrc32c ") : NULL;
    uint32_t want = 0;
    if (!crcline || strlen(crcline) != 1 + 7 + 8 + 1 || crcline[16] != '\n') {
        why = "no checksum line at the end (truncated?)";
        goto out;
    }
    for (int i = 0; i < 8; i++) {
        int h = hexval(crcline[8 + i]);
        if (h < 0) {
            why = "a malformed checksum";
            goto out;
        }
        want = want << 4 | (uint32_t)h;
    }
    if (crc32c(0, buf, (size_t)(crcline - buf) + 1) != want) {
        why = "checksum mismatch (damaged)";
        goto out;
    }
    crcline[1] = '\0';
    char *p = buf, *v;
    memset(out, 0, sizeof *out);
    if (strncmp(p, "craft-member 1\n", 15) != 0) {
        why = "not a craft member file, or another version";
        goto out;
    }
    p += 15;
    if (!(v = field(&p, "name")) || !*v || strlen(v) >= sizeof out->name) {
        why = "bad name line";
        goto out;
    }
    snprintf(out->name, sizeof out->name, "%s", v);
    uint64_t cid;
    if (parse_id(field(&p, "member-id"), &out->member_id) != 0 || !out->member_id) {
        why = "bad member-id line";
        goto out;
    }
    if (parse_id(field(&p, "cluster-id"), &cid) != 0 || !cid) {
        why = "bad cluster-id line";
        goto out;
    }
    v = field(&p, "table");
    size_t hl = v ? strlen(v) : 0;
    if (!v || hl == 0 || hl % 2) {
        why = "bad table line";
        goto out;
    }
    t = malloc(hl / 2);
    if (!t) {
        why = "out of memory";
        goto out;
    }
    for (size_t i = 0; i < hl / 2; i++) {
        int hi = hexval(v[2 * i]), lo = hexval(v[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            why = "bad table line";
            goto out;
        }
        t[i] = (uint8_t)(hi << 4 | lo);
    }
    char derr[256];
    if (cluster_decode(t, hl / 2, &out->table, derr, sizeof derr) != 0) {
        rc = fail(err, errlen, "%s: %s", path, derr);
        why = NULL;
        goto out;
    }
    if (*p) {
        why = "unexpected lines";
        goto out;
    }
    if (out->table.id != cid) {
        why = "the table's cluster id differs from cluster-id";
        goto out;
    }
    if (!cluster_find_id(&out->table, out->member_id)) {
        why = "member-id is not in the table";
        goto out;
    }
    rc = 0;
out:
    if (why)
        fail(err, errlen, "%s: %s", path, why);
    free(t);
    free(buf);
    return rc;
}
