/* Snapshot transfers with real craftd processes and a fault TLS keeps out of reach from outside
 * (issue 13): the leader, built with its test faults (services:craftd_testfaults,
 * CRAFT_TEST_FAULT_SNAPSHOT_CHUNK, docs/snapshots.md "Test fault"), flips one byte in the
 * middle of a chunk of the snapshot it sends a follower that was down. The chunks carry no
 * checksum of their own: the follower's store checks the whole file when the last chunk is in,
 * refuses it, says why in its log, and the next transfer (after an election timeout) starts
 * over and installs a good copy; the follower ends in exactly the others' state. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tests/cluster/harness.h"

static struct hc C;

static void teardown(void) { hc_teardown(&C); }

/* Member m holds every key put_keys wrote, with its value whole (serializable reads). */
static void assert_keys(int m, int n, size_t vlen)
{
    char key[32], want[4096], got[4096];
    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof key, "key/%04d", i);
        int k = snprintf(want, sizeof want, "v%d-", i);
        memset(want + k, 'x', vlen - (size_t)k);
        want[vlen] = 0;
        cr_assert_eq(hc_get(&C, m, key, got, sizeof got, true), 1, "%s lacks %s", C.m[m].name,
                     key);
        cr_assert_str_eq(got, want, "%s: %s differs", C.m[m].name, key);
    }
}

Test(snapshot_fault, corrupted_chunk_refused_and_sent_again, .fini = teardown, .timeout = 180)
{
    hc_setup(&C, 3, 50, 300);
    /* The same harness, the craftd with test faults (next to craftd in the runfiles). */
    size_t len = strlen(C.craftd);
    cr_assert(len < sizeof C.craftd - 12);
    strcat(C.craftd, "_testfaults");
    /* 4 KiB chunks: the snapshot (about 300 KiB) takes some 75; the third is corrupted, in
     * its middle - past the 64-byte header, so only the whole-file check can catch it. Every
     * member gets the variable; only the leader sends snapshots. */
    snprintf(C.extra_flags, sizeof C.extra_flags,
             "--snapshot-count 50 --snapshot-catchup-entries 5 --snapshot-chunk-bytes 4096");
    cr_assert_eq(setenv("CRAFT_TEST_FAULT_SNAPSHOT_CHUNK", "3", 1), 0);
    hc_start_all(&C);
    unsetenv("CRAFT_TEST_FAULT_SNAPSHOT_CHUNK");
    int l = hc_wait_leader(&C, 10000);
    cr_assert_geq(l, 0, "no leader");
    cr_assert(hc_log_has(&C, l, "test fault build"), "%s runs without the test fault",
              C.m[l].name);
    int f = (l + 1) % 3;
    int64_t rev = hc_put_keys(&C, l, 0, 5, 1000);
    cr_assert(hc_wait_revision(&C, f, rev, 10000));
    Craft__Node__StatusReply *st = NULL;
    cr_assert_eq(hc_status(&C, f, &st), 0);
    uint64_t f_last = st->last_index;
    protobuf_c_message_free_unpacked(&st->base, NULL);
    hc_signal(&C, f, SIGKILL);
    rev = hc_put_keys(&C, l, 5, 295, 1000);
    /* Past f's log plus the 5 catch-up entries the leader can only send a snapshot. */
    int64_t until = hc_now_ms() + 30000;
    while (hc_newest_snap_index(&C, l) < f_last + 6 && hc_now_ms() < until) {
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
    cr_assert_geq(hc_newest_snap_index(&C, l), f_last + 6, "%s compacted nothing", C.m[l].name);
    hc_start(&C, f);
    if (!hc_wait_revision(&C, f, rev, 60000)) {
        hc_dump_log(&C, l);
        hc_dump_log(&C, f);
        cr_assert_fail("%s did not catch up to revision %lld", C.m[f].name, (long long)rev);
    }
    /* The fault was injected on the way to f, f refused the file at the whole-file check and
     * said why, and the leader was told. */
    cr_assert(hc_log_has(&C, l, "test fault: flipped byte"), "%s corrupted no chunk",
              C.m[l].name);
    if (!hc_log_soon(&C, f, "complete but not valid", 10000)) {
        hc_dump_log(&C, f);
        cr_assert_fail("%s did not refuse the corrupted snapshot", C.m[f].name);
    }
    cr_assert(hc_log_has(&C, f, "refused a snapshot chunk"), "%s gave no reason in its log",
              C.m[f].name);
    cr_assert(hc_log_has(&C, f, ": checksum mismatch"), "%s refused it for another reason",
              C.m[f].name);
    cr_assert(hc_log_has(&C, l, "refused at offset"), "%s was not told", C.m[l].name);
    /* Then a good copy, sent again from the start, was installed. */
    cr_assert(hc_log_soon(&C, f, "installed snapshot", 10000), "%s caught up without a snapshot",
              C.m[f].name);
    hc_assert_exact_state(&C, f, rev, 10000);
    assert_keys(f, 300, 1000);
    /* And it comes back from that snapshot after a restart. */
    hc_signal(&C, f, SIGKILL);
    hc_start(&C, f);
    cr_assert(hc_wait_revision(&C, f, rev, 30000));
    hc_assert_exact_state(&C, f, rev, 10000);
}
