/* peers_test.c: a node's peers change while it runs (node_peers_set, raft/node/node_internal.h).
 * The core cannot change its configuration yet, so these tests call node_peers_set directly on
 * a running member: a removed peer's replicator stops (its thread is gone), its close_peer runs
 * exactly once and nothing more is sent to it; a peer added back receives the core's messages
 * again and catches up; peers added and removed over and over while proposals flow break
 * nothing; a removed peer's snapshot transfer in progress neither holds up the removal nor
 * leaks; and the "has run" markers are kept by id, for peers added later and for former members
 * found on disk. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "raft/node/node_internal.h"
#include "tests/node/cluster.h"

TestSuite(node_peers, .timeout = 120);

/* ---- helpers ---- */

/* The node's peer ids, in table order. */
static size_t peers_of(struct raft_node *n, uint64_t *out)
{
    pthread_mutex_lock(&n->peers_mu);
    size_t k = n->n_peers;
    for (size_t i = 0; i < k; i++)
        out[i] = n->peers[i]->id;
    pthread_mutex_unlock(&n->peers_mu);
    return k;
}

static bool has_peer(struct raft_node *n, uint64_t id)
{
    uint64_t v[RAFT_MAX_NODES];
    size_t k = peers_of(n, v);
    for (size_t i = 0; i < k; i++)
        if (v[i] == id)
            return true;
    return false;
}

/* Threads of this process named `name` (a replicator is "raft-rep-<id in hex>"): a joined
 * thread is gone from /proc/self/task. */
static int threads_named(const char *name)
{
    DIR *d = opendir("/proc/self/task");
    cr_assert_not_null(d);
    int cnt = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        char path[320], comm[32] = "";
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", de->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue; /* ended meanwhile */
        if (fgets(comm, sizeof comm, f))
            comm[strcspn(comm, "\n")] = 0;
        fclose(f);
        cnt += strcmp(comm, name) == 0;
    }
    closedir(d);
    return cnt;
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

static bool file_exists(const char *dir, uint64_t id)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/member-%016" PRIx64 ".ran", dir, id);
    return access(path, F_OK) == 0;
}

/* ---- tests ---- */

/* The leader stops replicating to a follower removed from its peers while proposals flow: the
 * follower's replicator thread ends, close_peer runs once, not one more message reaches it, and
 * the other two commit on. Added back, it gets the core's messages again and catches up. */
Test(node_peers, a_removed_peer_gets_nothing_and_catches_up_once_added_back)
{
    struct cluster c;
    cluster_init(&c, 3, 50, 300);
    cluster_start_all(&c);
    int l = cluster_wait_leader(&c, 5000);
    cr_assert_geq(l, 0);
    size_t f = (size_t)(l + 1) % 3, g = (size_t)(l + 2) % 3;
    struct raft_node *ln = c.m[l].node;
    uint64_t lid = c.m[l].id, fid = c.m[f].id, gid = c.m[g].id;
    char rep_f[16];
    snprintf(rep_f, sizeof rep_f, "raft-rep-%" PRIx64, fid);
    int rep_f_before = threads_named(rep_f); /* the other follower has one for f too */
    cr_assert_geq(rep_f_before, 2);

    struct loadgen lg;
    loadgen_start(&lg, &c, 4, 32, 0, 20000);
    cr_assert(loadgen_wait_acked(&lg, 300, 20000));

    uint64_t without_f[] = {lid, gid}; /* with itself in it, as the driver will pass it */
    cr_assert_eq(node_peers_set(ln, without_f, 2), 0);
    uint64_t v[RAFT_MAX_NODES];
    cr_assert_eq(peers_of(ln, v), 1);
    cr_assert_eq(v[0], gid);
    cr_assert_eq(threads_named(rep_f), rep_f_before - 1, "the removed replicator still runs");
    cr_assert_eq(memnet_closes(c.net, lid, fid), 1);
    cr_assert_eq(memnet_closes(c.net, lid, gid), 0);

    /* The core still addresses f (heartbeats, appends): those messages are dropped. */
    uint64_t to_f = memnet_link_msgs(c.net, lid, fid);
    uint64_t f_applied = memfsm_last_index(c.m[f].fsm);
    size_t acked = loadgen_acked(&lg);
    cr_assert(loadgen_wait_acked(&lg, acked + 1500, 30000), "no commits without f");
    /* The core still treats f as a follower: its pipeline to f stalls, and after two
     * heartbeats without progress it probes f again - a message dropped on the way. */
    bool probing = false;
    for (int i = 0; i < 300 && !probing; i++) {
        struct raft_progress_info pi;
        pthread_mutex_lock(&ln->mu);
        probing = raft_progress_get(ln->r, fid, &pi) == 0 && pi.state == RAFT_PROGRESS_PROBE;
        pthread_mutex_unlock(&ln->mu);
        if (!probing)
            usleep(10000);
    }
    cr_assert(probing, "the leader's core never probed the removed follower");
    cr_assert_eq(memnet_link_msgs(c.net, lid, fid), to_f, "the leader sent to a removed peer");
    uint64_t commit = status(&c, (size_t)l).core.commit_index;
    cr_assert_lt(memfsm_last_index(c.m[f].fsm), commit);
    cr_assert_lt(f_applied, commit);

    uint64_t all[] = {c.ids[0], c.ids[1], c.ids[2]};
    cr_assert_eq(node_peers_set(ln, all, 3), 0);
    cr_assert(has_peer(ln, fid) && has_peer(ln, gid));
    cr_assert_eq(threads_named(rep_f), rep_f_before);
    acked = loadgen_acked(&lg);
    cr_assert(loadgen_wait_acked(&lg, acked + 500, 30000));
    loadgen_stop(&lg);
    cr_assert(loadgen_exactly_once(&lg));
    size_t failed = 0;
    for (int k = 0; k < 16; k++)
        failed += lg.errs[k];
    cr_assert_eq(failed, 0, "%zu proposals failed while a follower was cut off", failed);
    loadgen_free(&lg);

    assert_same_history(&c); /* f caught up through the new replicator */
    cr_assert_gt(memnet_link_msgs(c.net, lid, fid), to_f, "nothing reached the added peer");
    cr_assert_eq(memnet_closes(c.net, lid, fid), 1, "close_peer ran again without a removal");
    cluster_destroy(&c);
}

/* Peers added and removed over and over on every member while proposals flow, from the test's
 * thread, racing the inline drivers' routing and try_send: ids the core does not know (7, 8)
 * come and go everywhere, and the leader drops and regains one follower at a time. Every
 * proposal still completes exactly once, every member ends with the same history, each removal
 * closed its peer exactly once and no replicator of a removed peer is left. */
Test(node_peers, peers_come_and_go_while_proposals_flow)
{
    struct cluster c;
    cluster_init(&c, 3, 50, 300);
    cluster_start_all(&c);
    int l = cluster_wait_leader(&c, 5000);
    cr_assert_geq(l, 0);
    struct loadgen lg;
    loadgen_start(&lg, &c, 4, 32, 0, 20000);
    cr_assert(loadgen_wait_acked(&lg, 200, 20000));

    unsigned removed[3][16] = {{0}}; /* [member][peer id]: removals done */
    bool in[3][16] = {{false}};
    for (size_t i = 0; i < 3; i++)
        for (size_t j = 0; j < 3; j++)
            in[i][c.ids[j]] = true;
    size_t followers[2] = {(size_t)(l + 1) % 3, (size_t)(l + 2) % 3};
    for (int round = 0; round < 60; round++) {
        for (size_t i = 0; i < 3; i++) {
            uint64_t ids[8];
            size_t k = 0;
            for (size_t j = 0; j < 3; j++) {
                /* The leader, every other round, without one follower (each in turn). */
                bool drop = i == (size_t)l && round % 2 == 1 && j == followers[(round / 2) % 2];
                if (!drop)
                    ids[k++] = c.ids[j];
            }
            if (round % 3 != 2)
                ids[k++] = 7;
            if (round % 2 == 0)
                ids[k++] = 8;
            bool now[16] = {false};
            for (size_t q = 0; q < k; q++)
                now[ids[q]] = true;
            now[c.ids[i]] = true; /* itself: never a peer, never "removed" */
            cr_assert_eq(node_peers_set(c.m[i].node, ids, k), 0);
            for (uint64_t id = 1; id < 16; id++) {
                if (in[i][id] && !now[id] && id != c.ids[i])
                    removed[i][id]++;
                in[i][id] = now[id];
            }
        }
        size_t acked = loadgen_acked(&lg);
        cr_assert(loadgen_wait_acked(&lg, acked + 20, 20000), "round %d: no progress", round);
    }
    uint64_t all[] = {c.ids[0], c.ids[1], c.ids[2]};
    for (size_t i = 0; i < 3; i++) {
        cr_assert_eq(node_peers_set(c.m[i].node, all, 3), 0);
        for (uint64_t id = 1; id < 16; id++)
            if (in[i][id] && id != c.ids[0] && id != c.ids[1] && id != c.ids[2])
                removed[i][id]++;
    }
    size_t acked = loadgen_acked(&lg);
    cr_assert(loadgen_wait_acked(&lg, acked + 500, 30000));
    loadgen_stop(&lg);
    cr_assert(loadgen_exactly_once(&lg));
    cr_assert_eq(lg.bad_result, 0);
    cr_log_info("%zu proposals acknowledged; ENOTLEADER %zu, ETIMEDOUT %zu, ELOST %zu", lg.n_acked,
                lg.errs[-RAFT_NODE_ENOTLEADER], lg.errs[-RAFT_NODE_ETIMEDOUT],
                lg.errs[-RAFT_NODE_ELOST]);
    loadgen_free(&lg);
    assert_same_history(&c);

    cr_assert_eq(threads_named("raft-rep-7"), 0);
    cr_assert_eq(threads_named("raft-rep-8"), 0);
    cr_assert_gt(removed[l][7], 0);
    cr_assert_gt(removed[l][8], 0);
    for (size_t i = 0; i < 3; i++)
        for (uint64_t id = 1; id < 16; id++)
            cr_assert_eq(memnet_closes(c.net, c.ids[i], id), removed[i][id],
                         "member %" PRIu64 ": %u close_peer(%" PRIu64 ") for %u removals",
                         c.ids[i], memnet_closes(c.net, c.ids[i], id), id, removed[i][id]);
    cluster_destroy(&c);
}

/* A follower removed while the leader is sending it a snapshot: the removal does not wait for
 * the transfer (the test holds it midway), the transfer finishes on its own once released and
 * gives its slot back, and the follower added again catches up. Stopping the members joins and
 * frees every sender (ASan would see a leak or a use after free). */
Test(node_peers, a_removed_peer_s_snapshot_transfer_does_not_hold_up_the_removal)
{
    struct cluster c;
    cluster_init(&c, 3, 50, 300);
    c.snapshots = true;
    c.tmpl.snapshot_count = 100000; /* only when asked */
    c.tmpl.snapshot_catchup_entries = 10;
    c.tmpl.max_snapshots = 2;
    cluster_start_all(&c);
    int l = cluster_wait_leader(&c, 5000);
    cr_assert_geq(l, 0);
    size_t f = (size_t)(l + 1) % 3, g = (size_t)(l + 2) % 3;
    uint64_t lid = c.m[l].id, fid = c.m[f].id, gid = c.m[g].id;
    struct raft_node *ln = c.m[l].node;
    cluster_stop(&c, f);
    propose_n(&c, 3000); /* a snapshot of several chunks */
    cr_assert_eq(raft_node_snapshot_now(ln, NULL), 0);
    memnet_hold_snapshots(c.net, true);
    cluster_start(&c, f);
    cr_assert(memnet_wait_snapshots_held(c.net, 1, 10000), "no snapshot transfer began");

    pthread_mutex_lock(&ln->mu);
    cr_assert_eq(ln->snap_sends, 1);
    pthread_mutex_unlock(&ln->mu);
    int64_t t0 = cl_now_ms();
    uint64_t without_f[] = {lid, gid};
    cr_assert_eq(node_peers_set(ln, without_f, 2), 0);
    int64_t took = cl_now_ms() - t0;
    cr_assert_lt(took, 1000, "the removal waited %" PRId64 " ms for the transfer", took);
    cr_assert_eq(memnet_closes(c.net, lid, fid), 1);
    pthread_mutex_lock(&ln->mu);
    cr_assert_not_null(ln->snap_orphans, "the transfer is not kept as an orphan");
    cr_assert_eq(ln->snap_orphans->to, fid);
    cr_assert(ln->snap_orphans->running);
    pthread_mutex_unlock(&ln->mu);
    propose_n(&c, 100); /* the leader serves meanwhile */

    memnet_hold_snapshots(c.net, false);
    bool freed = false;
    for (int i = 0; i < 500 && !freed; i++) {
        pthread_mutex_lock(&ln->mu);
        freed = ln->snap_sends == 0 && (!ln->snap_orphans || !ln->snap_orphans->running);
        pthread_mutex_unlock(&ln->mu);
        if (!freed)
            usleep(10000);
    }
    cr_assert(freed, "the orphaned transfer did not end or kept its slot");

    uint64_t all[] = {c.ids[0], c.ids[1], c.ids[2]};
    cr_assert_eq(node_peers_set(ln, all, 3), 0);
    pthread_mutex_lock(&ln->mu);
    cr_assert_null(ln->snap_orphans, "an ended orphan was not joined");
    pthread_mutex_unlock(&ln->mu);
    propose_n(&c, 100);
    assert_same_history(&c);
    cr_assert_geq(status(&c, f).core.snapshot_index, 3000, "the follower did not install it");
    cluster_destroy(&c);
}

/* The "has run" markers are kept by id: a peer added later is marked once its message proves it
 * has durable state; an id that is not a peer is not; a removed peer keeps its marker; and a
 * restart loads the markers of every id on disk, also of ids outside cfg.peers. */
Test(node_peers, has_run_markers_are_kept_by_id)
{
    struct cluster c;
    cluster_init(&c, 3, 50, 300);
    cluster_start_all(&c);
    cr_assert_geq(cluster_wait_leader(&c, 5000), 0);
    size_t s = 0;
    struct raft_node *n = c.m[s].node;
    cr_assert(!raft_node_has_run(n, 9));

    /* An acknowledgement from 9, a peer now: the core refuses it (9 is not in its
     * configuration) but it proves 9 has durable state. */
    uint64_t with9[] = {1, 2, 3, 9};
    cr_assert_eq(node_peers_set(n, with9, 4), 0);
    cr_assert(has_peer(n, 9));
    cr_assert_eq(threads_named("raft-rep-9"), 1);
    struct raft_msg m = {0};
    m.type = RAFT_MSG_APPEND_RESP;
    m.from = 9;
    m.to = c.m[s].id;
    m.term = 1;
    m.match_index = 1;
    raft_node_step(n, &m);
    cr_assert(raft_node_has_run(n, 9));
    cr_assert(file_exists(c.m[s].dir, 9));
    m.from = 10; /* not a peer */
    raft_node_step(n, &m);
    cr_assert(!raft_node_has_run(n, 10));
    cr_assert(!file_exists(c.m[s].dir, 10));

    uint64_t all[] = {1, 2, 3};
    cr_assert_eq(node_peers_set(n, all, 3), 0);
    cr_assert_eq(threads_named("raft-rep-9"), 0);
    cr_assert_eq(memnet_closes(c.net, c.m[s].id, 9), 1);
    cr_assert(raft_node_has_run(n, 9), "a removed peer lost its marker");

    /* Bad sets change nothing. */
    uint64_t zero[] = {1, 0};
    cr_assert_eq(node_peers_set(n, zero, 2), RAFT_NODE_EINVAL);
    uint64_t many[RAFT_MAX_NODES + 1];
    for (size_t i = 0; i <= RAFT_MAX_NODES; i++)
        many[i] = 100 + i;
    cr_assert_eq(node_peers_set(n, many, RAFT_MAX_NODES + 1), RAFT_NODE_EINVAL);
    uint64_t v[RAFT_MAX_NODES];
    cr_assert_eq(peers_of(n, v), 2);

    /* A former member's marker on disk (0xaa, never configured) is loaded at restart, and so
     * is 9's. */
    bool ran_before[3];
    for (size_t j = 0; j < 3; j++)
        ran_before[j] = raft_node_has_run(n, c.m[j].id);
    cluster_stop(&c, s);
    char path[4096];
    snprintf(path, sizeof path, "%s/member-%016" PRIx64 ".ran", c.m[s].dir, (uint64_t)0xaa);
    int fd = open(path, O_WRONLY | O_CREAT, 0600);
    cr_assert_geq(fd, 0);
    close(fd);
    cluster_start(&c, s);
    n = c.m[s].node;
    cr_assert(raft_node_has_run(n, 0xaa));
    cr_assert(raft_node_has_run(n, 9));
    cr_assert(!raft_node_has_run(n, 0xbb));
    cr_assert(!raft_node_has_run(n, 10));
    for (size_t j = 0; j < 3; j++)
        if (j != s)
            cr_assert_eq(raft_node_has_run(n, c.m[j].id), ran_before[j], "peer %" PRIu64,
                         c.m[j].id);
    cluster_destroy(&c);
}
