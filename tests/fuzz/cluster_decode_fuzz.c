/* Fuzz target for the member table decoder (services/cluster.c: cluster_decode), the code that
 * reads the table a configuration-change entry or a snapshot from a peer carries. Any byte
 * string gets a verdict: 0, or CLUSTER_EBADMSG with a "cluster table: ..." message in
 * printable ASCII; never a crash, an out-of-bounds read (ASan) or undefined behaviour (UBSan),
 * and a refusal leaves the output untouched. What is accepted must be a valid table
 * (cluster_check) and re-encode to exactly the input: the format has one encoding per table
 * (a version 1 input re-encodes as version 2: the same bytes with a zero flags byte added after
 * each member's URL, which is checked by taking those bytes out again).
 * An accepted table then goes through each edit, whose results must stay valid and encodable.
 * Built with clang's libFuzzer (run_cluster_fuzz.sh) and as a corpus replay with the default
 * toolchain (replay_main.c). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "services/cluster.h"

/* A valid table must encode, and decode back to the same bytes. */
static void check_valid(const struct cluster *c)
{
    char err[256];
    if (cluster_check(c, err, sizeof err) != 0)
        abort();
    uint8_t *b = NULL, *b2 = NULL;
    size_t len = 0, len2 = 0;
    static struct cluster d;
    if (cluster_encode(c, &b, &len) != 0 || cluster_decode(b, len, &d, err, sizeof err) != 0 ||
        cluster_encode(&d, &b2, &len2) != 0 || len2 != len || memcmp(b, b2, len) != 0)
        abort();
    free(b);
    free(b2);
}

static void must(int rc, int want)
{
    if (rc != want)
        abort();
}

/* The edits on an accepted table: each either refuses (changing nothing) or leaves it valid. */
static void edit(const struct cluster *accepted)
{
    static struct cluster c, before;
    char err[256];
    int rc;
    c = *accepted;
    /* Another member's address is taken; one's own is not. */
    if (c.n > 1) {
        char url[CLUSTER_URL_MAX];
        cluster_url_string(&c.members[1].peer_url, url, sizeof url);
        before = c;
        must(cluster_update_peer_url(&c, c.members[0].id, url, err, sizeof err),
             CLUSTER_EURLEXISTS);
        if (memcmp(&c, &before, sizeof c) != 0)
            abort();
        rc = cluster_add(&c, "fuzz-new", url, "t", err, sizeof err);
        if (rc != CLUSTER_EURLEXISTS && rc != CLUSTER_EEXIST) /* EEXIST: "fuzz-new" is taken */
            abort();
    }
    char own[CLUSTER_URL_MAX];
    cluster_url_string(&c.members[0].peer_url, own, sizeof own);
    must(cluster_update_peer_url(&c, c.members[0].id, own, err, sizeof err), 0);
    check_valid(&c);
    /* Adding an existing name (same token or not) is refused; a fresh one fits unless full. */
    must(cluster_add(&c, c.members[0].name, "https://fuzz.invalid:1", "t", err, sizeof err) < 0,
         1);
    rc = cluster_add(&c, "fuzz-new", "https://fuzz.invalid:65535", "t", err, sizeof err);
    if (rc == 0)
        check_valid(&c);
    else if (rc != CLUSTER_EFULL && rc != CLUSTER_EURLEXISTS && rc != CLUSTER_EEXIST)
        abort();
    /* Remove members from the front until one is left; the last one stays. */
    while (c.n > 1) {
        uint64_t id = c.members[0].id;
        must(cluster_remove(&c, id, err, sizeof err), 0);
        if (cluster_find_id(&c, id))
            abort();
        check_valid(&c);
    }
    must(cluster_remove(&c, c.members[0].id, err, sizeof err), CLUSTER_ELAST);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct cluster c, untouched;
    char err[256];
    memset(&c, 0x5a, sizeof c);
    memset(&untouched, 0x5a, sizeof untouched);
    memset(err, 0, sizeof err);
    int rc = cluster_decode(data, size, &c, err, sizeof err);
    if (rc != 0) {
        if (rc != CLUSTER_EBADMSG || strncmp(err, "cluster table: ", 15) != 0 ||
            err[15] == '\0' || !memchr(err, '\0', sizeof err))
            abort();
        for (const char *q = err; *q; q++)
            if (*q < 0x20 || *q > 0x7e)
                abort();
        if (memcmp(&c, &untouched, sizeof c) != 0)
            abort(); /* written on error */
        return 0;
    }
    /* Accepted: a valid table, and the input is its one encoding. */
    if (cluster_check(&c, err, sizeof err) != 0)
        abort();
    uint8_t *b = NULL;
    size_t len = 0;
    if (cluster_encode(&c, &b, &len) != 0)
        abort();
    if (data[0] == 1) { /* drop each member's flags byte (all 0) and the version: version 1 */
        if (len != size + c.n || b[0] != 2)
            abort();
        size_t at = 10, out = 10;
        b[0] = 1;
        for (size_t i = 0; i < c.n; i++) {
            size_t ul = (size_t)b[at + 8 + 1 + b[at + 8]] | (size_t)b[at + 8 + 2 + b[at + 8]] << 8;
            size_t m = 8 + 1 + b[at + 8] + 2 + ul;
            if (b[at + m] != 0)
                abort();
            memmove(b + out, b + at, m);
            out += m;
            at += m + 1;
        }
        len = out;
    }
    if (len != size || memcmp(b, data, size) != 0)
        abort();
    free(b);
    edit(&c);
    return 0;
}
