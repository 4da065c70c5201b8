/* The snapshot seed corpus was written by make_snap_corpus.py, a second encoder of
 * docs/snapshots.md: check the C decoder reads each seed as that spec says. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "raft/snap/snap.h"

static int decode(const char *name, struct snap_header *h, char *err)
{
    const char *base = getenv("TEST_SRCDIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/craft/tests/fuzz/corpus/snap/%s", base ? base : ".", name);
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s", path);
    static uint8_t buf[8192];
    size_t len = fread(buf, 1, sizeof buf, f);
    fclose(f);
    err[0] = 0;
    return snap_decode(buf, len, name, h, err, 512);
}

static void refused(const char *name, const char *why)
{
    struct snap_header h;
    char err[512];
    cr_assert_eq(decode(name, &h, err), -EBADMSG, "%s accepted", name);
    cr_assert(strstr(err, why), "%s: '%s' does not say '%s'", name, err, why);
}

Test(corpus, valid_seeds_decode_as_the_spec_says)
{
    struct snap_header h;
    char err[512];
    cr_assert_eq(decode("smallest", &h, err), 0, "%s", err);
    cr_assert(h.index == 1 && h.term == 1 && h.config_len == 0 && h.payload_len == 0);
    cr_assert_eq(decode("small", &h, err), 0, "%s", err);
    cr_assert(h.index == 9 && h.term == 2 && h.config_len == 5 && h.payload_len == 40);
    cr_assert_eq(decode("config_only", &h, err), 0, "%s", err);
    cr_assert(h.index == 0x1234 && h.term == 5 && h.config_len == 100 && h.payload_len == 0);
    cr_assert_eq(decode("larger", &h, err), 0, "%s", err);
    cr_assert(h.index == 1ull << 40 && h.term == 77 && h.config_len == 23 &&
              h.payload_len == 3000);
}

Test(corpus, damaged_seeds_are_refused_for_their_reason)
{
    refused("truncated_header", "truncated header: 30 bytes");
    refused("bad_magic", "bad magic");
    refused("bad_version", "unsupported format version 2");
    refused("header_checksum", "header checksum mismatch");
    refused("oversize_config", "configuration length 65537 exceeds the limit");
    refused("reserved_not_zero", "offset 45: reserved byte is not zero");
    refused("index_zero", "must both be positive");
    refused("payload_length_short", "payload length mismatch");
    refused("payload_length_long", "truncated: the file is 117 bytes");
    refused("checksum", "checksum mismatch (stored");
    refused("trailer_marker", "bad trailer marker");
}
