/* The snapshot format (docs/snapshots.md) through the pure decoder and the streaming verifier:
 * images built here byte by byte from the spec decode, and every kind of damage is refused with
 * a message that says what is wrong. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "raft/snap/snap.h"
#include "raft/wal/crc32c.h"

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* A header written from the table in docs/snapshots.md, not with snap_encode_header. */
static void spec_header(uint8_t h[64], uint32_t version, uint32_t cfg, uint64_t index,
                        uint64_t term, uint64_t payload)
{
    memset(h, 0, 64);
    memcpy(h, "CRFTSNAP", 8);
    put32(h + 8, version);
    put32(h + 12, cfg);
    put64(h + 16, index);
    put64(h + 24, term);
    put64(h + 32, payload);
    put32(h + 60, crc32c(0, h, 60));
}

/* A whole image: header, configuration, payload, trailer (CRC32C of all before it, "CRSE"). */
static uint8_t *spec_image(size_t cfg, size_t payload, size_t *len)
{
    *len = 64 + cfg + payload + 8;
    uint8_t *b = malloc(*len);
    spec_header(b, 1, (uint32_t)cfg, 42, 7, payload);
    for (size_t i = 64; i < *len - 8; i++)
        b[i] = (uint8_t)(i * 31 + 5);
    put32(b + *len - 8, crc32c(0, b, *len - 8));
    memcpy(b + *len - 4, "CRSE", 4);
    return b;
}

/* Decodes in memory and through a file descriptor; both must agree. Returns the code; the
 * message is left in err. */
static int check(const uint8_t *buf, size_t len, struct snap_header *h, char err[512])
{
    char err2[512] = "";
    struct snap_header h2;
    err[0] = 0;
    int rc = snap_decode(buf, len, "img", h, err, 512);
    int fd = memfd_create("snap", 0);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, buf, len), (ssize_t)len);
    int rc2 = snap_verify_fd(fd, "img", &h2, err2, sizeof err2);
    close(fd);
    cr_assert_eq(rc, rc2, "decode %d (%s), verify_fd %d (%s)", rc, err, rc2, err2);
    cr_assert_str_eq(err, err2);
    if (rc == 0)
        cr_assert(h->index == h2.index && h->term == h2.term && h->config_len == h2.config_len &&
                  h->payload_len == h2.payload_len);
    else
        cr_assert(rc == -EBADMSG && err[0], "rc %d, message '%s'", rc, err);
    return rc;
}

static void expect_refused(const uint8_t *buf, size_t len, const char *why)
{
    struct snap_header h;
    char err[512];
    cr_assert_eq(check(buf, len, &h, err), -EBADMSG, "accepted, expected '%s'", why);
    cr_assert(strstr(err, why), "'%s' does not say '%s'", err, why);
    cr_assert(strncmp(err, "img: ", 5) == 0, "'%s' does not name the file", err);
}

Test(format, spec_image_decodes)
{
    size_t len;
    uint8_t *b = spec_image(10, 300, &len);
    struct snap_header h;
    char err[512];
    cr_assert_eq(check(b, len, &h, err), 0, "%s", err);
    cr_assert(h.index == 42 && h.term == 7 && h.config_len == 10 && h.payload_len == 300);
    cr_assert_eq(snap_file_size_for(&h), len);
    uint8_t enc[64];
    snap_encode_header(enc, &h);
    cr_assert(memcmp(enc, b, 64) == 0, "snap_encode_header differs from the spec");
    free(b);
    b = spec_image(0, 0, &len);
    cr_assert_eq(len, 72);
    cr_assert_eq(check(b, len, &h, err), 0, "the smallest snapshot: %s", err);
    free(b);
}

Test(format, every_kind_of_damage_is_refused_with_its_reason)
{
    size_t len;
    uint8_t *b = spec_image(10, 300, &len), *d = malloc(len + 1);
    expect_refused(b, 10, "truncated header: 10 bytes");
    expect_refused(b, 0, "truncated header: 0 bytes");
#define DAMAGED(stmt, why)                                                                         \
    do {                                                                                           \
        memcpy(d, b, len);                                                                         \
        stmt;                                                                                      \
        expect_refused(d, dlen, why);                                                              \
    } while (0)
    size_t dlen = len;
    DAMAGED(d[3] ^= 1, "bad magic");
    DAMAGED(spec_header(d, 2, 10, 42, 7, 300), "unsupported format version 2 (this build reads 1)");
    DAMAGED(d[17] ^= 0x10, "header checksum mismatch");
    DAMAGED(spec_header(d, 1, 65537, 42, 7, 300), "configuration length 65537 exceeds the limit");
    DAMAGED(spec_header(d, 1, 10, 42, 7, 1ull << 60), "payload length 1152921504606846976 exceeds");
    DAMAGED(spec_header(d, 1, 10, 0, 7, 300), "must both be positive");
    DAMAGED((d[45] = 1, put32(d + 60, crc32c(0, d, 60))), "offset 45: reserved byte");
    DAMAGED(spec_header(d, 1, 10, 42, 7, 299), "payload length mismatch");
    DAMAGED(spec_header(d, 1, 10, 42, 7, 301), "truncated: the file is 382 bytes");
    DAMAGED(d[200] ^= 4, "checksum mismatch");
    DAMAGED(d[len - 8] ^= 4, "checksum mismatch");
    DAMAGED(d[len - 1] = 'X', "bad trailer marker");
    dlen = len - 1;
    DAMAGED((void)0, "truncated: the file is 381 bytes");
    dlen = len + 1;
    DAMAGED(d[len] = 0, "payload length mismatch");
#undef DAMAGED
    free(b);
    free(d);
}

Test(format, every_prefix_and_every_bit_flip_is_refused)
{
    size_t len;
    uint8_t *b = spec_image(5, 40, &len), *d = malloc(len);
    struct snap_header h;
    char err[512];
    for (size_t cut = 0; cut < len; cut++)
        cr_assert_eq(check(b, cut, &h, err), -EBADMSG, "prefix of %zu bytes accepted", cut);
    for (size_t bit = 0; bit < len * 8; bit++) {
        memcpy(d, b, len);
        d[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        cr_assert_eq(check(d, len, &h, err), -EBADMSG, "flip of bit %zu accepted", bit);
    }
    free(b);
    free(d);
}

Test(format, decode_header_never_reads_past_a_short_buffer)
{
    size_t len;
    uint8_t *b = spec_image(0, 0, &len);
    struct snap_header h;
    char err[128];
    for (size_t n = 0; n < 64; n++) {
        uint8_t *p = malloc(n ? n : 1);
        memcpy(p, b, n);
        cr_assert_eq(snap_decode_header(p, n, "x", &h, err, sizeof err), -EBADMSG);
        free(p);
    }
    cr_assert_eq(snap_decode_header(b, 64, "x", &h, err, sizeof err), 0, "%s", err);
    free(b);
}
