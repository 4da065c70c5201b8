/* Fuzz target for the snapshot format's decoders (raft/snap/snap_format.c) and the receiving side
 * of a transfer (raft/snap/snap_store.c), which parses the bytes it is sent. Any byte string is:
 *  - decoded as a header and as a whole image: 0 or -EBADMSG with a message, never a read outside
 *    the buffer (ASan) or undefined behaviour (UBSan); an accepted header re-encodes to the same
 *    bytes; an accepted image has exactly the size its header describes;
 *  - verified as a file by the streaming verifier, which must agree with the in-memory decoder to
 *    the message;
 *  - received as a transfer in chunks: installed exactly when the image decodes, then read back
 *    identical; otherwise refused with -EBADMSG and nothing left pending.
 * Built two ways: with clang's libFuzzer (run_snap_fuzz.sh) and as a plain corpus replay with the
 * default toolchain (replay_main.c). */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "raft/snap/snap.h"

#define CHUNK_MAX 4096

static struct snap_store *store;
static char dir[4096];

static void quiet(void *arg, const char *msg)
{
    (void)arg;
    (void)msg;
}

static int no_fsync(int fd)
{
    (void)fd;
    return 0; /* durability is not under test here; syncing would slow every input */
}

static void cleanup(void)
{
    snap_store_close(store);
    DIR *d = opendir(dir);
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL) {
        char p[sizeof dir + 256];
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        if (de->d_name[0] != '.')
            unlink(p);
    }
    if (d)
        closedir(d);
    rmdir(dir);
}

static void open_store(void)
{
    static struct snap_io io = {NULL, no_fsync};
    const char *base = getenv("TEST_TMPDIR");
    snprintf(dir, sizeof dir, "%s/snapfuzzXXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(dir))
        abort();
    struct snap_options o;
    snap_options_init(&o);
    o.max_snapshots = 1;
    o.max_chunk_bytes = CHUNK_MAX;
    o.log = quiet;
    o.io = &io;
    char err[512];
    if (snap_store_open(&store, dir, &o, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        abort();
    }
    atexit(cleanup);
}

static int message_ok(const char *err, size_t len)
{
    return err[0] != 0 && memchr(err, 0, len) != NULL;
}

static void check_decoders(const uint8_t *data, size_t size, int *decoded, struct snap_header *h)
{
    char err[512], err2[512];
    struct snap_header h2;
    int hrc = snap_decode_header(data, size, "fuzz", h, err, sizeof err);
    if (hrc != 0 && (hrc != -EBADMSG || !message_ok(err, sizeof err)))
        abort();
    if (hrc == 0) {
        uint8_t enc[SNAP_HEADER_SIZE];
        snap_encode_header(enc, h);
        if (memcmp(enc, data, SNAP_HEADER_SIZE) != 0)
            abort();
    }
    int rc = snap_decode(data, size, "fuzz", h, err, sizeof err);
    if (rc != 0 && (rc != -EBADMSG || !message_ok(err, sizeof err)))
        abort();
    if (rc == 0 && (hrc != 0 || snap_file_size_for(h) != size ||
                    h->config_len > SNAP_MAX_CONFIG))
        abort();
    int fd = memfd_create("snapfuzz", 0);
    if (fd < 0 || (size && write(fd, data, size) != (ssize_t)size))
        abort();
    int rc2 = snap_verify_fd(fd, "fuzz", &h2, err2, sizeof err2);
    close(fd);
    if (rc2 != rc || (rc != 0 && strcmp(err, err2) != 0))
        abort();
    *decoded = rc == 0;
}

/* Receives the bytes as the snapshot their header names (or 1/1), in chunks of a size derived
 * from the length. */
static void check_receive(const uint8_t *data, size_t size, int decoded,
                          const struct snap_header *h)
{
    uint64_t index = decoded ? h->index : 1, term = decoded ? h->term : 1, off;
    snap_recv_abort(store);
    int rc = snap_recv_begin(store, index, term, size, &off);
    if (size < SNAP_HEADER_SIZE + SNAP_TRAILER_SIZE) {
        if (rc != -EINVAL)
            abort();
        return;
    }
    if (rc != 0 || off != 0)
        abort();
    size_t chunk = 1 + size % 997;
    for (rc = 0; off < size && rc == 0;) {
        size_t n = size - off < chunk ? size - off : chunk;
        rc = snap_recv_chunk(store, off, data + off, n);
        off += n;
    }
    struct snap_progress p;
    snap_recv_progress(store, &p);
    if (!decoded) {
        if (rc != -EBADMSG || p.active)
            abort();
        return;
    }
    if (rc != 1 || off != size || p.active)
        abort();
    struct snap_file *f;
    if (snap_open(store, index, term, &f) != 0)
        abort();
    const uint8_t *payload = data + SNAP_HEADER_SIZE + h->config_len;
    if (memcmp(snap_file_config(f), data + SNAP_HEADER_SIZE, h->config_len) != 0)
        abort();
    uint8_t buf[1024];
    uint64_t got = 0;
    long n;
    while ((n = snap_file_read(f, buf, sizeof buf)) > 0) {
        if (got + (uint64_t)n > h->payload_len || memcmp(buf, payload + got, (size_t)n) != 0)
            abort();
        got += (uint64_t)n;
    }
    if (n != 0 || got != h->payload_len)
        abort();
    snap_file_close(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!store)
        open_store();
    struct snap_header h;
    int decoded;
    check_decoders(data, size, &decoded, &h);
    check_receive(data, size, decoded, &h);
    return 0;
}
