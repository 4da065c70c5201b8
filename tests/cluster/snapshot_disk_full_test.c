/* A full disk under a snapshot, with real craftd processes and a real file system (issue 13).
 * Member n1's <data-dir>/snap is a small tmpfs of its own (mounted before it starts; the WAL and
 * the KV store stay on the test's disk), filled until a snapshot cannot be written: the snapshot
 * fails with ENOSPC, which the node logs and retries after another --snapshot-count entries
 * (docs/node.md "Snapshots") - it is not a storage failure of the log, so the member keeps
 * serving reads and writes, compacts nothing (its first WAL segment stays while a member on a
 * disk with room deletes its own), and snapshots and compacts once the space is freed. Needs
 * root for mount(2): without it the test fails, never skips (BUILD: tags local). */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tests/cluster/harness.h"

static struct hc C;
static char snap_dir[600], filler[700];
static bool mounted;

static void teardown(void)
{
    for (int i = 0; i < C.n; i++)
        if (C.m[i].pid)
            hc_signal(&C, i, SIGKILL);
    if (mounted && umount2(snap_dir, MNT_DETACH) != 0)
        fprintf(stderr, "umount %s: %s\n", snap_dir, strerror(errno));
    mounted = false;
    hc_teardown(&C);
}

/* Linearizable reads on member m of keys [0, n). */
static void assert_reads(int m, int n)
{
    char key[32], want[32], got[4096];
    for (int i = 0; i < n; i += 7) {
        snprintf(key, sizeof key, "key/%04d", i);
        snprintf(want, sizeof want, "v%d-", i);
        cr_assert_eq(hc_get(&C, m, key, got, sizeof got, false), 1, "%s: read of %s failed",
                     C.m[m].name, key);
        cr_assert_eq(strncmp(got, want, strlen(want)), 0, "%s: %s = %.20s", C.m[m].name, key,
                     got);
    }
}

/* The first index of member m's oldest WAL segment ("<20 digits>.seg" in <data-dir>/raft), and
 * in *count how many there are. */
static uint64_t oldest_segment(int m, int *count)
{
    char path[600];
    snprintf(path, sizeof path, "%s/raft", C.m[m].data_dir);
    DIR *d = opendir(path);
    cr_assert(d, "%s: %s", path, strerror(errno));
    uint64_t best = UINT64_MAX;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        unsigned long long first;
        char tail[8];
        if (strlen(de->d_name) == 24 && sscanf(de->d_name, "%20llu%7s", &first, tail) == 2 &&
            !strcmp(tail, ".seg")) {
            n++;
            if (first < best)
                best = first;
        }
    }
    closedir(d);
    if (count)
        *count = n;
    return best;
}

/* Snapshot files ("*.snap") and leftovers of one (".snap.tmp") in member m's snap dir. */
static int count_files(int m, const char *suffix)
{
    char path[600];
    snprintf(path, sizeof path, "%s/snap", C.m[m].data_dir);
    DIR *d = opendir(path);
    cr_assert(d, "%s: %s", path, strerror(errno));
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t l = strlen(de->d_name), s = strlen(suffix);
        n += l > s && !strcmp(de->d_name + l - s, suffix);
    }
    closedir(d);
    return n;
}

static void nap(void)
{
    struct timespec ts = {0, 20 * 1000000L};
    nanosleep(&ts, NULL); /* bounded polls of logs and directories: no event to wait on */
}

/* Fills the tmpfs: writes until ENOSPC, then gives back `room` bytes. */
static void fill(size_t room)
{
    int fd = open(filler, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    cr_assert_geq(fd, 0, "%s: %s", filler, strerror(errno));
    static char block[4096];
    off_t size = 0;
    for (;;) {
        ssize_t w = write(fd, block, sizeof block);
        if (w < 0) {
            cr_assert_eq(errno, ENOSPC, "filling %s: %s", filler, strerror(errno));
            break;
        }
        size += w;
    }
    cr_assert_gt(size, (off_t)room);
    cr_assert_eq(ftruncate(fd, size - (off_t)room), 0);
    close(fd);
}

Test(snapshot_disk_full, snapshot_write_fails_member_keeps_serving, .fini = teardown,
     .timeout = 180)
{
    cr_assert_eq(geteuid(), 0, "needs root: it mounts a tmpfs as a member's snapshot directory");
    hc_setup(&C, 3, 50, 300);
    /* Snapshots every 50 entries of about 1 KiB; 64 KiB WAL segments (which needs requests
     * below 32 KiB), so compaction has whole segments to delete. */
    snprintf(C.extra_flags, sizeof C.extra_flags,
             "--snapshot-count 50 --snapshot-catchup-entries 5 --wal-segment-bytes 65536 "
             "--max-request-bytes 16384");
    const int x = 0, y = 1; /* x: the member with the small disk; y: one with room */
    snprintf(snap_dir, sizeof snap_dir, "%s/snap", C.m[x].data_dir);
    snprintf(filler, sizeof filler, "%s/filler", snap_dir);
    cr_assert_eq(mkdir(C.m[x].data_dir, 0700), 0);
    cr_assert_eq(mkdir(snap_dir, 0700), 0);
    cr_assert_eq(mount("tmpfs", snap_dir, "tmpfs", 0, "size=1m,mode=0700"), 0, "mount %s: %s",
                 snap_dir, strerror(errno));
    mounted = true;
    hc_start_all(&C);
    cr_assert_geq(hc_wait_leader(&C, 10000), 0, "no leader");
    int64_t rev = hc_put_keys(&C, x, 0, 20, 1000);
    /* Full: room for the temporary file's header and configuration, not for the ~100 KiB state. */
    fill(16 << 10);
    int segs = 0;
    uint64_t first = oldest_segment(x, &segs);
    cr_assert_eq(first, 1, "%s's log starts at %llu", C.m[x].name, (unsigned long long)first);
    rev = hc_put_keys(&C, x, 20, 180, 1000); /* three snapshots due on every member */
    if (!hc_log_soon(&C, x, "failed: kv snapshot", 20000)) {
        hc_dump_log(&C, x);
        cr_assert_fail("%s logged no failed snapshot", C.m[x].name);
    }
    cr_assert(hc_log_has(&C, x, "No space left on device"), "%s: the failure is not ENOSPC",
              C.m[x].name);
    /* Still serving: it answers reads and takes writes, and never stopped. */
    assert_reads(x, 200);
    rev = hc_put_keys(&C, x, 200, 10, 1000);
    cr_assert_eq(hc_wait_exit(&C, x, 0), -1, "%s exited", C.m[x].name);
    /* A member with room took its snapshots and deleted its oldest segments: this much log
     * is compacted when a snapshot is possible (the control for the assertion below). */
    int64_t until = hc_now_ms() + 20000;
    while (oldest_segment(y, NULL) == 1 && hc_now_ms() < until)
        nap();
    cr_assert_gt(oldest_segment(y, NULL), 1, "%s compacted nothing", C.m[y].name);
    /* x compacted nothing: no snapshot, no leftover, its log from index 1. */
    cr_assert_eq(count_files(x, ".snap"), 0, "%s has a snapshot on a full disk", C.m[x].name);
    cr_assert_eq(count_files(x, ".tmp"), 0, "%s left a temporary snapshot file", C.m[x].name);
    int segs_now = 0;
    cr_assert_eq(oldest_segment(x, &segs_now), 1, "%s compacted its log with no snapshot",
                 C.m[x].name);
    cr_assert_gt(segs_now, segs, "%s's log did not grow", C.m[x].name);
    hc_assert_exact_state(&C, x, rev, 10000);

    /* Space again: the next due snapshot (after another --snapshot-count entries) is taken,
     * and the log compacted. */
    cr_assert_eq(unlink(filler), 0);
    rev = hc_put_keys(&C, x, 210, 60, 1000);
    until = hc_now_ms() + 30000;
    while ((count_files(x, ".snap") == 0 || oldest_segment(x, NULL) == 1) && hc_now_ms() < until)
        nap();
    if (count_files(x, ".snap") == 0 || oldest_segment(x, NULL) == 1) {
        hc_dump_log(&C, x);
        cr_assert_fail("%s: %d snapshots, log from %llu, after space was freed", C.m[x].name,
                       count_files(x, ".snap"), (unsigned long long)oldest_segment(x, NULL));
    }
    hc_assert_exact_state(&C, x, rev, 10000);
    assert_reads(x, 270);
}
