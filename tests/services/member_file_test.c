/* services/member_file.h: <data-dir>/member round-trips this member's identity and starting
 * table, is replaced atomically (no temporary file left), and every damaged or foreign file is
 * refused with its path and the reason, never half read. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "services/cluster.h"
#include "services/member_file.h"

static char dir[256], path[300], err[512];

static void setup(void)
{
    const char *tmp = getenv("TEST_TMPDIR");
    snprintf(dir, sizeof dir, "%s/mf.XXXXXX", tmp ? tmp : "/tmp");
    cr_assert(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/%s", dir, MEMBER_FILE_NAME);
}

static void teardown(void)
{
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

/* A joined member: n1..n2 by name, this one added by URL (unnamed in the table). */
static struct member_file joined(void)
{
    struct member_file m;
    memset(&m, 0, sizeof m);
    cr_assert_eq(cluster_parse("n1=https://127.0.0.1:2380,n2=https://127.0.0.1:2480", "tok",
                               &m.table, err, sizeof err),
                 0, "%s", err);
    cr_assert_eq(cluster_add_unnamed(&m.table, "https://127.0.0.1:2680", "tok", err, sizeof err),
                 0);
    snprintf(m.name, sizeof m.name, "n4");
    m.member_id = m.table.members[2].id;
    return m;
}

static char *slurp(size_t *len)
{
    FILE *f = fopen(path, "rb");
    cr_assert(f);
    static char buf[65536];
    *len = fread(buf, 1, sizeof buf - 1, f);
    buf[*len] = '\0';
    fclose(f);
    return buf;
}

static void spit(const char *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    cr_assert(f);
    cr_assert_eq(fwrite(data, 1, len, f), len);
    fclose(f);
}

Test(member_file, round_trips_and_replaces_atomically, .init = setup, .fini = teardown)
{
    struct member_file m = joined(), r;
    cr_assert_eq(member_file_read(dir, &r, err, sizeof err), 1, "no file yet");
    cr_assert_eq(member_file_write(dir, &m, err, sizeof err), 0, "%s", err);
    memset(&r, 0x5a, sizeof r);
    cr_assert_eq(member_file_read(dir, &r, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(r.name, "n4");
    cr_assert_eq(r.member_id, m.member_id);
    cr_assert_eq(r.table.id, m.table.id);
    cr_assert_eq(r.table.n, 3);
    cr_assert_str_eq(r.table.members[2].name, "");
    cr_assert_eq(r.table.members[2].id, cluster_member_id_url("https://127.0.0.1:2680", "tok"));

    /* The layout the header documents. */
    size_t len = 0;
    char *text = slurp(&len);
    char head[200];
    snprintf(head, sizeof head, "craft-member 1\nname n4\nmember-id %016llx\ncluster-id %016llx\ntable 02",
             (unsigned long long)m.member_id, (unsigned long long)m.table.id);
    cr_assert_eq(strncmp(text, head, strlen(head)), 0, "%s", text);
    cr_assert(strstr(text, "\ncrc32c "));

    /* Replaced: the new record, and no temporary file left behind. */
    cr_assert_eq(cluster_set_name(&m.table, m.member_id, "n4", err, sizeof err), 0);
    cr_assert_eq(member_file_write(dir, &m, err, sizeof err), 0, "%s", err);
    cr_assert_eq(member_file_read(dir, &r, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(r.table.members[2].name, "n4");
    char tmp[320];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    cr_assert_neq(access(tmp, F_OK), 0);
}

Test(member_file, write_refuses_a_member_not_in_its_table, .init = setup, .fini = teardown)
{
    struct member_file m = joined();
    m.member_id = 42;
    cr_assert_eq(member_file_write(dir, &m, err, sizeof err), -1);
    cr_assert(strstr(err, "not in its table"), "%s", err);
    m = joined();
    m.name[0] = '\0';
    cr_assert_eq(member_file_write(dir, &m, err, sizeof err), -1);
    cr_assert_neq(access(path, F_OK), 0, "nothing written");
}

/* Every damaged variant is refused with the path and a reason containing `why`. */
static void refused(const char *data, size_t len, const char *why)
{
    spit(data, len);
    struct member_file r;
    err[0] = '\0';
    cr_assert_eq(member_file_read(dir, &r, err, sizeof err), -1, "accepted; wanted '%s'", why);
    cr_assert(strstr(err, path) && strstr(err, why), "'%s' does not name the file and '%s'", err,
              why);
}

/* The good file's text with `from` replaced by `to` and the checksum recomputed by writing a
 * record and patching it: the checks behind the checksum must hold on their own. */
Test(member_file, damage_and_foreign_files_are_refused, .init = setup, .fini = teardown)
{
    struct member_file m = joined();
    cr_assert_eq(member_file_write(dir, &m, err, sizeof err), 0, "%s", err);
    size_t len = 0;
    char good[65536];
    const char *text = slurp(&len);
    memcpy(good, text, len + 1);

    refused("", 0, "no checksum line");
    refused(good, len - 1, "no checksum line");           /* its last newline cut */
    refused(good, len / 2, "no checksum line");           /* truncated */
    char bad[65536];
    memcpy(bad, good, len + 1);
    bad[20] ^= 1; /* a bit flipped in the name line */
    refused(bad, len, "checksum mismatch");
    memcpy(bad, good, len + 1);
    bad[len - 2] = 'x';
    refused(bad, len, "malformed checksum");
    memcpy(bad, good, len + 1);
    bad[3] = '\0';
    refused(bad, len, "NUL byte");
    refused("hello\ncrc32c 00000000\n", 22, "checksum mismatch");
}

/* Field checks behind a valid checksum (a file written by hand, or by another version). */
#include "raft/wal/crc32c.h"

static void refused_with_crc(const char *body, const char *why)
{
    char buf[4096];
    size_t n = (size_t)snprintf(buf, sizeof buf, "%s", body);
    n += (size_t)snprintf(buf + n, sizeof buf - n, "crc32c %08x\n", crc32c(0, buf, n));
    refused(buf, n, why);
}

Test(member_file, fields_are_checked_behind_the_checksum, .init = setup, .fini = teardown)
{
    struct member_file m = joined();
    uint8_t *t;
    size_t tlen;
    cr_assert_eq(cluster_encode(&m.table, &t, &tlen), 0);
    char hex[8192] = "";
    for (size_t i = 0; i < tlen; i++)
        sprintf(hex + 2 * i, "%02x", t[i]);
    free(t);
    char body[10000];
    refused_with_crc("craft-member 2\nname n4\n", "another version");
    refused_with_crc("craft-member 1\nname \n", "bad name line");
    refused_with_crc("craft-member 1\nname n4\nmember-id 12\n", "bad member-id line");
    refused_with_crc("craft-member 1\nname n4\nmember-id 0000000000000000\n", "bad member-id");
    refused_with_crc("craft-member 1\nname n4\nmember-id 00000000000000AB\n", "bad member-id");
    refused_with_crc("craft-member 1\nname n4\nmember-id 00000000000000ab\ncluster-id x\n",
                     "bad cluster-id line");
    snprintf(body, sizeof body,
             "craft-member 1\nname n4\nmember-id %016llx\ncluster-id %016llx\ntable %s\n",
             (unsigned long long)m.member_id, (unsigned long long)(m.table.id ^ 1), hex);
    refused_with_crc(body, "cluster id differs");
    snprintf(body, sizeof body,
             "craft-member 1\nname n4\nmember-id %016llx\ncluster-id %016llx\ntable %s\n",
             (unsigned long long)(m.member_id ^ 1), (unsigned long long)m.table.id, hex);
    refused_with_crc(body, "member-id is not in the table");
    snprintf(body, sizeof body,
             "craft-member 1\nname n4\nmember-id %016llx\ncluster-id %016llx\ntable %.20s\n",
             (unsigned long long)m.member_id, (unsigned long long)m.table.id, hex);
    refused_with_crc(body, "cluster table: truncated");
    snprintf(body, sizeof body,
             "craft-member 1\nname n4\nmember-id %016llx\ncluster-id %016llx\ntable %s\nextra 1\n",
             (unsigned long long)m.member_id, (unsigned long long)m.table.id, hex);
    refused_with_crc(body, "unexpected lines");
    /* And the same body without the damage is accepted (the test's checksum is the real one). */
    snprintf(body, sizeof body,
             "craft-member 1\nname n4\nmember-id %016llx\ncluster-id %016llx\ntable %s\n",
             (unsigned long long)m.member_id, (unsigned long long)m.table.id, hex);
    char buf[10100];
    size_t n = (size_t)snprintf(buf, sizeof buf, "%s", body);
    n += (size_t)snprintf(buf + n, sizeof buf - n, "crc32c %08x\n", crc32c(0, buf, n));
    spit(buf, n);
    struct member_file r;
    cr_assert_eq(member_file_read(dir, &r, err, sizeof err), 0, "%s", err);
    cr_assert_eq(r.member_id, m.member_id);
}
