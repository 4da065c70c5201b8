/* The member table seeds were written by make_cluster_corpus.py, a second encoder of the format
 * in services/cluster.h (and of the member and cluster ids): check the C code reads each one as
 * that spec says, and writes the same bytes for the same table. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "services/cluster.h"

static uint8_t seed[32768];

/* Reads seed `name`; returns its length. */
static size_t load(const char *name)
{
    const char *base = getenv("TEST_SRCDIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/craft/tests/fuzz/corpus/cluster/%s", base ? base : ".",
             name);
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s", path);
    size_t len = fread(seed, 1, sizeof seed, f);
    fclose(f);
    return len;
}

static int decode(const char *name, struct cluster *c, char *err)
{
    size_t len = load(name);
    err[0] = 0;
    return cluster_decode(seed, len, c, err, 256);
}

/* The C encoder writes exactly the seed's bytes for c. */
static void encodes_to_seed(const struct cluster *c, const char *name)
{
    size_t len = load(name);
    uint8_t *b;
    size_t blen;
    cr_assert_eq(cluster_encode(c, &b, &blen), 0);
    cr_assert_eq(blen, len, "%s", name);
    cr_assert_eq(memcmp(b, seed, len), 0, "%s", name);
    free(b);
}

Test(cluster_corpus, valid_seeds_decode_as_the_spec_says)
{
    struct cluster c, p;
    char err[256];

    /* The tables cluster_parse() builds, ids included, are the ones the second encoder wrote. */
    const char *spec3 = "n1=https://127.0.0.1:2380,n2=https://127.0.0.1:2480,"
                        "n3=https://127.0.0.1:2580";
    cr_assert_eq(cluster_parse(spec3, "tok", &p, err, sizeof err), 0, "%s", err);
    encodes_to_seed(&p, "three_members");
    cr_assert_eq(decode("three_members", &c, err), 0, "%s", err);
    cr_assert_eq(c.id, p.id);
    cr_assert_eq(c.n, 3);
    cr_assert_str_eq(c.members[2].name, "n3");
    cr_assert_eq(c.members[2].id, cluster_member_id("n3", "tok"));
    cr_assert_eq(c.members[2].peer_url.port, 2580);
    cr_assert_eq(cluster_parse("solo=https://127.0.0.1:2380", "tok", &p, err, sizeof err), 0);
    encodes_to_seed(&p, "one_member");

    /* etcd's MemberAdd: three_members plus a member with no name and a URL-derived id. */
    struct cluster added;
    cr_assert_eq(cluster_parse(spec3, "tok", &added, err, sizeof err), 0, "%s", err);
    cr_assert_eq(decode("unnamed_member", &c, err), 0, "%s", err);
    cr_assert_eq(c.n, 4);
    cr_assert_eq(c.id, added.id, "the cluster id stays");
    cr_assert_str_eq(c.members[3].name, "");
    cr_assert_eq(c.members[3].id, cluster_member_id_url("https://127.0.0.1:2680", "tok"));
    cr_assert_eq(cluster_add_unnamed(&added, "https://127.0.0.1:2680", "tok", err, sizeof err), 0);
    encodes_to_seed(&added, "unnamed_member");

    cr_assert_eq(decode("ipv6_and_http", &c, err), 0, "%s", err);
    cr_assert(c.id == 0xa1a2a3a4a5a6a7a8ull && c.n == 3);
    cr_assert_eq(c.members[0].id, 0x0102030405060708ull);
    cr_assert_str_eq(c.members[1].peer_url.host, "fd00::2");
    cr_assert(!c.members[2].peer_url.tls);
    cr_assert_str_eq(c.members[2].name, "c-3.x_y");
    cr_assert_str_eq(c.members[2].peer_url.host, "node.example.com");
    encodes_to_seed(&c, "ipv6_and_http");

    cr_assert_eq(decode("full_table", &c, err), 0, "%s", err);
    cr_assert_eq(c.n, CLUSTER_MAX_MEMBERS);
    cr_assert_eq(strlen(c.members[63].name), CLUSTER_NAME_MAX - 1);
    cr_assert_eq(strlen(c.members[0].peer_url.host), CLUSTER_HOST_MAX - 1);
    cr_assert_eq(c.members[0].id, cluster_member_id(c.members[0].name, "tok"));
    cr_assert_eq(c.members[63].peer_url.port, 65535 - 63);
    encodes_to_seed(&c, "full_table");

    /* Version 2's flags: beta is to be promoted. Version 1 (no flags) still reads. */
    cr_assert_eq(decode("to_promote", &c, err), 0, "%s", err);
    cr_assert(c.n == 2 && !c.members[0].promote && c.members[1].promote);
    encodes_to_seed(&c, "to_promote");
    cr_assert_eq(decode("version_1", &c, err), 0, "%s", err);
    cr_assert(c.n == 1 && !c.members[0].promote);
    cr_assert_str_eq(c.members[0].name, "alpha");
}

Test(cluster_corpus, broken_seeds_are_refused_for_their_reason)
{
    const struct {
        const char *name, *why;
    } cases[] = {
        {"version_3", "format version 3"},
        {"unknown_flags", "member 0 ('a'): unknown flags 0x80"},
        {"flags_missing", "truncated in member 0 ('a')"},
        {"cluster_id_zero", "cluster id is 0"},
        {"count_zero", "member count 0"},
        {"count_65", "member count 65"},
        {"member_id_zero", "member 1: id is 0"},
        {"duplicate_id", "have the same id"},
        {"duplicate_name", "both named 'alpha'"},
        {"duplicate_address", "have the same peer address"},
        {"name_too_long", "name length 64"},
        {"name_bad_char", "bad name 'a/b'"},
        {"url_too_long", "peer URL length 1000"},
        {"url_with_nul", "contains a NUL byte"},
        {"url_not_canonical", "is not canonical"},
        {"url_bad_port", "port must be 1..65535"},
        {"byte_after_end", "1 bytes after the last member"},
        {"truncated_in_member", "truncated in member 0 ('n1')"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct cluster c;
        char err[256];
        cr_assert_eq(decode(cases[i].name, &c, err), CLUSTER_EBADMSG, "%s", cases[i].name);
        cr_assert(strstr(err, cases[i].why), "%s: \"%s\"", cases[i].name, err);
    }
}
