/* The restore fuzz seeds (make_restore_corpus.py) get the verdicts snap_restore.h promises:
 * files saved from craft are accepted with the payload's index; truncated, corrupted and badly
 * padded ones are refused with the reason. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "services/snap_restore.h"

static int verdict(const char *name, char *err, size_t errlen, uint64_t *plen)
{
    char path[512];
    const char *base = getenv("TEST_SRCDIR");
    snprintf(path, sizeof path, "%s/craft/tests/fuzz/corpus/restore/%s", base ? base : ".", name);
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s", path);
    static uint8_t buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    struct kv_snap_meta m;
    return snap_restore_check_image(buf, n, &m, plen, err, errlen);
}

Test(restore_corpus, saved_files_are_accepted)
{
    const char *ok[] = {"three_keys.db", "empty_store.db", "binary_keys_and_value.db",
                        "no_padding.db"};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        char err[300] = "";
        uint64_t plen = 0;
        cr_assert_eq(verdict(ok[i], err, sizeof err, &plen), 0, "%s: %s", ok[i], err);
        cr_assert_gt(plen, 0);
    }
}

Test(restore_corpus, damaged_files_are_refused_with_the_reason)
{
    struct {
        const char *name, *why;
    } bad[] = {
        {"truncated.db", "checksum mismatch"},
        {"flipped_byte.db", "checksum mismatch"},
        {"too_much_padding.db", "no KV snapshot trailer"},
        {"junk_in_padding.db", "no KV snapshot trailer"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char err[300] = "";
        uint64_t plen;
        cr_assert_neq(verdict(bad[i].name, err, sizeof err, &plen), 0, "%s accepted", bad[i].name);
        cr_assert(strstr(err, bad[i].why), "%s: '%s' does not say '%s'", bad[i].name, err,
                  bad[i].why);
    }
}
