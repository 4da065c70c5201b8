/* snap_restore.c: a new member's data directory from a saved snapshot (see snap_restore.h). */
#include "services/snap_restore.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "raft/snap/snap.h"
#include "raft/wal/wal.h"
#include "services/kvstore/kv_snap.h"
#include "services/kvstore/kv_store.h"

#define HASH_LEN SNAP_RESTORE_HASH
#define BUF (1u << 20)

/* The region [0, len) of fd, read in order. */
struct region {
    int fd;
    uint64_t off, len;
};

static long region_read(void *arg, void *buf, size_t n)
{
    struct region *r = arg;
    if (r->off >= r->len)
        return 0;
    if (n > r->len - r->off)
        n = (size_t)(r->len - r->off);
    ssize_t k = pread(r->fd, buf, n, (off_t)r->off);
    if (k < 0)
        return -errno;
    if (k == 0)
        return -EIO; /* the file shrank under us */
    r->off += (uint64_t)k;
    return k;
}

static bool dir_usable(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT;
    struct dirent *de;
    bool empty = true;
    while (empty && (de = readdir(d)) != NULL)
        empty = !strcmp(de->d_name, ".") || !strcmp(de->d_name, "..");
    closedir(d);
    return empty;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* The file's last 32 bytes are the SHA-256 of the rest (Maintenance.Snapshot's trailer). */
static int check_hash(int fd, uint64_t size, char *err, size_t errlen)
{
    uint8_t *buf = malloc(BUF), want[HASH_LEN], got[HASH_LEN];
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int rc = -1;
    if (!buf || !md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    struct region r = {fd, 0, size - HASH_LEN};
    long k;
    while ((k = region_read(&r, buf, BUF)) > 0)
        EVP_DigestUpdate(md, buf, (size_t)k);
    if (k < 0 || pread(fd, want, HASH_LEN, (off_t)(size - HASH_LEN)) != HASH_LEN) {
        snprintf(err, errlen, "reading the file: %s", strerror(k < 0 ? (int)-k : EIO));
        goto out;
    }
    EVP_DigestFinal_ex(md, got, NULL);
    if (memcmp(got, want, HASH_LEN) != 0) {
        snprintf(err, errlen, "checksum mismatch: the file is truncated or corrupted (its last 32 "
                              "bytes are not the SHA-256 of the rest)");
        goto out;
    }
    rc = 0;
out:
    EVP_MD_CTX_free(md);
    free(buf);
    return rc;
}

/* Where the KV payload ends before the padding (snap_restore_payload_end on the file's tail). */
static int payload_len(int fd, uint64_t data, uint64_t *len, char *err, size_t errlen)
{
    uint8_t tail[512 + KV_SNAP_TRAILER];
    size_t n = data < sizeof tail ? (size_t)data : sizeof tail, end;
    if (pread(fd, tail, n, (off_t)(data - n)) != (ssize_t)n) {
        snprintf(err, errlen, "reading the file: %s", strerror(errno ? errno : EIO));
        return -1;
    }
    if (snap_restore_payload_end(tail, n, &end)) {
        snprintf(err, errlen, "not a craft KV snapshot: no KV snapshot trailer at its end");
        return -1;
    }
    *len = data - (n - end);
    return 0;
}

static int fill(const char *file, int fd, uint64_t plen, const char *data_dir, uint64_t map_size,
                struct snap_restore_info *info, char *err, size_t errlen)
{
    char kv[4200], raft[4200], snap[4200], sub[512] = "";
    snprintf(kv, sizeof kv, "%s/kv", data_dir);
    snprintf(raft, sizeof raft, "%s/raft", data_dir);
    snprintf(snap, sizeof snap, "%s/snap", data_dir);
    if ((mkdir(data_dir, 0700) != 0 && errno != EEXIST) || mkdir(kv, 0700) != 0 ||
        mkdir(raft, 0700) != 0 || mkdir(snap, 0700) != 0) {
        snprintf(err, errlen, "%s: %s", data_dir, strerror(errno));
        return -1;
    }
    /* The header: where the log starts. */
    struct region r = {fd, 0, plen};
    struct kv_snap_dec *d = kv_snap_dec_new(region_read, &r);
    struct kv_snap_meta m;
    if (!d || kv_snap_dec_header(d, &m, sub, sizeof sub) != 0) {
        kv_snap_dec_free(d);
        snprintf(err, errlen, "%s: %s", file, d ? sub : "out of memory");
        return -1;
    }
    kv_snap_dec_free(d);
    if (m.index == 0) {
        snprintf(err, errlen, "%s: the snapshot is of an empty store (applied index 0)", file);
        return -1;
    }
    /* A term the store did not know: any positive one will do in a new cluster, as long as every
     * member restored from this file picks the same. */
    uint64_t term = m.term ? m.term : 1;
    *info = (struct snap_restore_info){m.index, term, m.rev};

    /* kv/: the store, restored (and synced) from the payload; the full check happens here. */
    struct kv_store_opts ko = {.map_size = map_size};
    struct kv_store *s = kv_store_open(kv, &ko, sub, sizeof sub);
    if (!s) {
        snprintf(err, errlen, "KV store %s: %s", kv, sub);
        return -1;
    }
    struct raft_fsm *fsm = kv_store_fsm(s);
    r = (struct region){fd, 0, plen};
    struct raft_snapshot_reader rd = {region_read, &r, sub, sizeof sub};
    int rc = fsm->snapshot_restore(fsm->ctx, &rd, m.index, term);
    kv_store_close(s);
    if (rc) {
        snprintf(err, errlen, "%s: %s", file, sub[0] ? sub : strerror(-rc));
        return -1;
    }
    /* snap/: the snapshot itself, for followers that will need it. */
    struct snap_store *ss;
    if (snap_store_open(&ss, snap, NULL, sub, sizeof sub)) {
        snprintf(err, errlen, "snapshot store %s: %s", snap, sub);
        return -1;
    }
    struct snap_writer *w = NULL;
    rc = snap_create(ss, m.index, term, NULL, 0, &w);
    uint8_t *buf = rc ? NULL : malloc(BUF);
    r = (struct region){fd, 0, plen};
    long k = 0;
    while (buf && (k = region_read(&r, buf, BUF)) > 0 && (rc = snap_write(w, buf, (size_t)k)) == 0)
        ;
    free(buf);
    if (!rc && k == 0 && w)
        rc = snap_commit(w);
    else if (w)
        snap_abort(w);
    if (rc || k < 0) {
        snprintf(err, errlen, "snapshot store %s: %s", snap, rc ? snap_errmsg() : "read failed");
        snap_store_close(ss);
        return -1;
    }
    snap_store_close(ss);
    /* raft/: a log that starts after the snapshot, and a hard state of its term. */
    struct wal *wl;
    if (wal_open(&wl, raft, NULL, sub, sizeof sub)) {
        snprintf(err, errlen, "log %s: %s", raft, sub);
        return -1;
    }
    struct raft_hard_state hs = {term, 0};
    rc = wal_save_hard_state(wl, &hs);
    if (rc == 0)
        rc = wal_reset(wl, m.index, term);
    if (rc)
        snprintf(err, errlen, "log %s: %s", raft, wal_errmsg());
    wal_close(wl);
    return rc ? -1 : 0;
}

int snap_restore(const char *file, const char *data_dir, uint64_t map_size,
                 struct snap_restore_info *info, char *err, size_t errlen)
{
    if (!dir_usable(data_dir)) {
        snprintf(err, errlen, "%s: the data directory exists and is not empty", data_dir);
        return -1;
    }
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        snprintf(err, errlen, "%s: %s", file, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    uint64_t size = (uint64_t)st.st_size, plen = 0;
    char sub[400];
    int rc = -1;
    if (size < HASH_LEN + KV_SNAP_HEADER + KV_SNAP_TRAILER)
        snprintf(err, errlen, "%s: %" PRIu64 " bytes is too short for a snapshot (truncated?)",
                 file, size);
    else if (check_hash(fd, size, sub, sizeof sub) || payload_len(fd, size - HASH_LEN, &plen, sub,
                                                                   sizeof sub))
        snprintf(err, errlen, "%s: %s", file, sub);
    else if ((rc = fill(file, fd, plen, data_dir, map_size, info, err, errlen)) != 0)
        nftw(data_dir, rm_one, 16, FTW_DEPTH | FTW_PHYS); /* leave nothing half made */
    close(fd);
    return rc;
}
