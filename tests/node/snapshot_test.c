/* snapshot_test.c: snapshots in the runtime, in-process clusters with real logs and snapshot
 * stores: the log is compacted every snapshot_count entries (memory and disk bounded), a
 * follower that was down while the log was compacted past it catches up by snapshot (also when
 * transfers break midway and must resume), and members restart from their snapshot plus the log
 * after it, ending with the same applied history as everyone else. */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tests/node/cluster.h"

TestSuite(node_snapshot, .timeout = 120);

static void setup(struct cluster *c, uint64_t count, uint64_t catchup)
{
    cluster_init(c, 3, 50, 300);
    c->snapshots = true;
    c->tmpl.snapshot_count = count;
    c->tmpl.snapshot_catchup_entries = catchup;
    c->tmpl.max_snapshots = 2;
}

static void propose_n(struct cluster *c, size_t total)
{
    struct loadgen lg;
    loadgen_start(&lg, c, 4, 32, total, 20000);
    cr_assert(loadgen_wait_acked(&lg, total, 60000), "only %zu of %zu acknowledged",
              loadgen_acked(&lg), total);
    loadgen_stop(&lg);
    cr_assert(loadgen_exactly_once(&lg));
    loadgen_free(&lg);
}

static struct raft_node_status status(struct cluster *c, size_t i)
{
    struct raft_node_status st;
    cr_assert(cluster_status(c, i, &st), "member %zu is not running", i);
    return st;
}

/* Every running member applied the same history up to the leader's commit index. */
static void assert_same_history(struct cluster *c)
{
    int l = cluster_wait_leader(c, 5000);
    cr_assert_geq(l, 0);
    uint64_t commit = status(c, (size_t)l).core.commit_index;
    for (size_t i = 0; i < c->n; i++)
        if (c->m[i].node)
            cr_assert(memfsm_wait_index(c->m[i].fsm, commit, 20000),
                      "member %zu did not apply up to %" PRIu64 " (at %" PRIu64 ")", i, commit,
                      memfsm_last_index(c->m[i].fsm));
    uint64_t sum = memfsm_checksum(c->m[l].fsm);
    size_t cnt = memfsm_count(c->m[l].fsm);
    for (size_t i = 0; i < c->n; i++) {
        if (!c->m[i].node)
            continue;
        cr_assert(memfsm_wait_index(c->m[i].fsm, commit, 1000));
        cr_assert_eq(memfsm_count(c->m[i].fsm), cnt, "member %zu applied %zu entries, not %zu", i,
                     memfsm_count(c->m[i].fsm), cnt);
        cr_assert_eq(memfsm_checksum(c->m[i].fsm), sum, "member %zu applied another history", i);
    }
}

Test(node_snapshot, log_is_compacted_every_snapshot_count_entries)
{
    struct cluster c;
    setup(&c, 200, 50);
    cluster_start_all(&c);
    cr_assert_geq(cluster_wait_leader(&c, 5000), 0);
    propose_n(&c, 2000);
    assert_same_history(&c);
    for (size_t i = 0; i < 3; i++) {
        struct raft_node_status st = status(&c, i);
        /* Snapshots every ~200 entries, 50 kept: the memory log holds a few hundred at most. */
        cr_assert_geq(st.core.snapshot_index, 1600, "member %zu snapshot at %" PRIu64, i,
                      st.core.snapshot_index);
        cr_assert_lt(st.core.last_index - st.core.first_index, 500,
                     "member %zu keeps %" PRIu64 " entries in memory", i,
                     st.core.last_index - st.core.first_index + 1);
        cr_assert_geq(memfsm_snapshots(c.m[i].fsm), 5);
    }
    cluster_destroy(&c);
}

Test(node_snapshot, follower_far_behind_catches_up_by_snapshot)
{
    struct cluster c;
    setup(&c, 100000, 10); /* snapshots only when asked */
    cluster_start_all(&c);
    int l = cluster_wait_leader(&c, 5000);
    cr_assert_geq(l, 0);
    size_t f = (size_t)(l + 1) % 3;
    propose_n(&c, 50);
    cluster_stop(&c, f);
    propose_n(&c, 1000);
    uint64_t idx = 0;
    cr_assert_eq(raft_node_snapshot_now(c.m[l].node, &idx), 0);
    struct raft_node_status ls = status(&c, (size_t)l);
    cr_assert_gt(ls.core.first_index, 100, "the leader still holds what the follower needs");
    struct memnet_stats before;
    memnet_stats(c.net, &before);
    cluster_start(&c, f);
    assert_same_history(&c);
    struct memnet_stats after;
    memnet_stats(c.net, &after);
    cr_assert_gt(after.snapshots, before.snapshots, "no snapshot was sent");
    cr_assert_geq(status(&c, f).core.snapshot_index, idx, "the follower did not install it");
    cluster_destroy(&c);
}

Test(node_snapshot, a_broken_transfer_resumes)
{
    struct cluster c;
    setup(&c, 100000, 10);
    cluster_start_all(&c);
    int l = cluster_wait_leader(&c, 5000);
    cr_assert_geq(l, 0);
    size_t f = (size_t)(l + 2) % 3;
    cluster_stop(&c, f);
    propose_n(&c, 3000); /* a snapshot of several 8 KiB chunks */
    cr_assert_eq(raft_node_snapshot_now(c.m[l].node, NULL), 0);
    memnet_cut_snapshots(c.net, 2);
    struct memnet_stats before;
    memnet_stats(c.net, &before);
    cluster_start(&c, f);
    assert_same_history(&c);
    struct memnet_stats after;
    memnet_stats(c.net, &after);
    cr_assert_geq(after.snapshots - before.snapshots, 3, "two broken transfers and one whole");
    cluster_destroy(&c);
}

Test(node_snapshot, members_restart_from_their_snapshot)
{
    struct cluster c;
    setup(&c, 300, 20);
    cluster_start_all(&c);
    cr_assert_geq(cluster_wait_leader(&c, 5000), 0);
    propose_n(&c, 1500);
    assert_same_history(&c);
    for (size_t i = 0; i < 3; i++) {
        uint64_t snap = status(&c, i).core.snapshot_index;
        cr_assert_gt(snap, 0);
        cluster_stop(&c, i);
        cluster_start(&c, i);
        struct raft_node_status st = status(&c, i);
        cr_assert_geq(st.core.snapshot_index, snap, "member %zu restarted without it", i);
        cr_assert_gt(st.core.first_index, 1, "member %zu loaded the whole log", i);
    }
    propose_n(&c, 100);
    assert_same_history(&c);
    cluster_destroy(&c);
}

/* A snapshot that cannot be written (a full disk) is logged and retried later; the member keeps
 * serving, keeps its log (nothing is compacted without a snapshot), and snapshots again once it
 * can. */
Test(node_snapshot, a_failing_snapshot_leaves_the_member_serving)
{
    struct cluster c;
    setup(&c, 100, 10);
    cluster_start_all(&c);
    int l = cluster_wait_leader(&c, 5000);
    cr_assert_geq(l, 0);
    memfsm_fail_snapshots(c.m[l].fsm, true);
    propose_n(&c, 500);
    struct raft_node_status st = status(&c, (size_t)l);
    cr_assert_eq(st.core.snapshot_index, 0, "a snapshot was taken with a full disk");
    cr_assert_eq(st.core.first_index, 1, "the log was compacted without a snapshot");
    cr_assert_eq(memfsm_snapshots(c.m[l].fsm), 0);
    memfsm_fail_snapshots(c.m[l].fsm, false);
    propose_n(&c, 300);
    uint64_t idx = 0;
    cr_assert_eq(raft_node_snapshot_now(c.m[l].node, &idx), 0);
    cr_assert_gt(idx, 500);
    cr_assert_gt(status(&c, (size_t)l).core.first_index, 1);
    assert_same_history(&c);
    cluster_destroy(&c);
}

/* snapshot_log_percent: the state machine's snapshot here grows with every entry applied (memfsm
 * dumps all of them), as a KV store with an uncompacted history does. Counting entries alone,
 * 3,000 entries at snapshot_count 50 give 14-16 full dumps of a growing state (applies come in
 * batches); waiting until the log since the last snapshot is 10x its size gives 4, each paid for
 * by the log written since. A cap on that wait (snapshot_log_max_bytes) brings the count back. */
static size_t snapshots_taken(struct cluster *c, uint64_t *max_in_memory)
{
    size_t most = 0;
    *max_in_memory = 0;
    for (size_t i = 0; i < 3; i++) {
        struct raft_node_status st = status(c, i);
        size_t k = memfsm_snapshots(c->m[i].fsm);
        most = k > most ? k : most;
        uint64_t mem = st.core.last_index - st.core.first_index + 1;
        *max_in_memory = mem > *max_in_memory ? mem : *max_in_memory;
    }
    return most;
}

Test(node_snapshot, snapshots_wait_for_log_worth_their_size)
{
    struct cluster c;
    setup(&c, 50, 20);
    c.tmpl.snapshot_log_percent = 1000;
    cluster_start_all(&c);
    cr_assert_geq(cluster_wait_leader(&c, 5000), 0);
    propose_n(&c, 3000);
    assert_same_history(&c);
    uint64_t mem = 0;
    size_t taken = snapshots_taken(&c, &mem);
    cr_assert_geq(taken, 1, "no snapshot at all");
    cr_assert_leq(taken, 7, "%zu snapshots of a growing state: the log's size was not waited for",
                  taken);
    for (size_t i = 0; i < 3; i++)
        cr_assert_gt(status(&c, i).core.snapshot_index, 0, "member %zu never compacted", i);
    cluster_destroy(&c);
}

Test(node_snapshot, the_log_waited_for_is_capped)
{
    struct cluster c;
    setup(&c, 50, 20);
    c.tmpl.snapshot_log_percent = 1000;
    c.tmpl.snapshot_log_max_bytes = 2048; /* about 40 entries: snapshot_count governs again */
    cluster_start_all(&c);
    cr_assert_geq(cluster_wait_leader(&c, 5000), 0);
    propose_n(&c, 3000);
    assert_same_history(&c);
    uint64_t mem = 0;
    size_t taken = snapshots_taken(&c, &mem);
    cr_assert_geq(taken, 10, "only %zu snapshots: the cap was not applied", taken);
    /* Compaction runs in the background: wait (bounded) for the last one to land. */
    for (int64_t until = cl_now_ms() + 5000; mem >= 400 && cl_now_ms() < until;) {
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
        snapshots_taken(&c, &mem);
    }
    cr_assert_lt(mem, 400, "%" PRIu64 " entries in memory with snapshots every ~50", mem);
    cluster_destroy(&c);
}
