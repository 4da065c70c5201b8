/* Joining a running cluster as etcd users do (--initial-cluster-state existing), and leaving it:
 * member n1 runs in this process (services/server.h, so the test can change the configuration
 * through its node: the Cluster API is not this test's subject), member n2 is a real craftd
 * process with mutual TLS started with `--initial-cluster n1=...,n2=... --initial-cluster-state
 * existing` and an empty data directory.
 * - Not in the cluster's member table: n2 exits 1 at once with "this member is not in the
 *   cluster: add it first with etcdctl member add".
 * - Added by peer URL alone (etcd's MemberAdd, here as a learner with an unnamed table entry):
 *   n2 starts with the cluster's id and the id the table gives it; n1, the leader, publishes
 *   n2's name when n2 says Hello; a restart keeps the identity (<data-dir>/member) and a restart
 *   under another --name is refused.
 * - Removed: n1's peer service refuses n2 as removed from the cluster and n2 exits 1 with etcd's
 *   "the member has been permanently removed from the cluster".
 * What this cannot show yet: n2 receiving the log (n1's node does not start replicating to
 * members added after it started; raft/node's dynamic peers will), so n2 never sees its own
 * name published, and a learner's promotion. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "raft/node/node.h"
#include "services/cluster.h"
#include "services/server.h"
#include "tests/cluster/harness.h"

#define TOKEN "join-test"

static struct hc C; /* n1's and n2's ports, directories and certificates */
static struct craftd_config cfg1;
static struct craft_server *n1;

static void nap_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* n1 alone, in this process; n2 (index 1) is started by each test with hc_start. */
static void setup(void)
{
    hc_setup(&C, 2, 100, 1000);
    snprintf(C.extra_flags, sizeof C.extra_flags,
             "--initial-cluster-state existing --initial-cluster-token " TOKEN);
    char lc[64], lp[64], cert[400], key[400], cluster[128];
    snprintf(lc, sizeof lc, "https://127.0.0.1:%d", C.m[0].client_port);
    snprintf(lp, sizeof lp, "https://127.0.0.1:%d", C.m[0].peer_port);
    snprintf(cert, sizeof cert, "%s/n1.pem", C.certs);
    snprintf(key, sizeof key, "%s/n1-key.pem", C.certs);
    snprintf(cluster, sizeof cluster, "n1=%s", lp);
    const char *argv[] = {"craftd", "--name", "n1", "--data-dir", C.m[0].data_dir,
                          "--listen-client-urls", lc, "--listen-peer-urls", lp,
                          "--initial-cluster", cluster, "--initial-cluster-token", TOKEN,
                          "--heartbeat-interval", "100", "--election-timeout", "1000",
                          "--cert-file", cert, "--key-file", key, "--trusted-ca-file", C.ca,
                          "--peer-cert-file", cert, "--peer-key-file", key,
                          "--peer-trusted-ca-file", C.ca};
    char err[512];
    cr_assert_eq(craftd_flags_parse((int)(sizeof argv / sizeof argv[0]), (char **)argv, &cfg1, err,
                                    sizeof err),
                 0, "%s", err);
    n1 = craft_server_start(&cfg1, err, sizeof err);
    cr_assert(n1, "%s", err);
    for (int i = 0; i < 100; i++) { /* a single member elects itself within an election timeout */
        struct raft_node_status st;
        raft_node_status_get(craft_server_node(n1), &st);
        if (st.core.role == RAFT_LEADER)
            return;
        nap_ms(50);
    }
    cr_assert_fail("n1 did not become leader");
}

static void teardown(void)
{
    C.m[0].pid = 0; /* n1 is no process: nothing for the harness to signal */
    hc_signal(&C, 1, SIGKILL);
    craft_server_stop(n1);
    n1 = NULL;
    hc_teardown(&C);
}

static void url_of(int i, char *buf, size_t len)
{
    snprintf(buf, len, "https://127.0.0.1:%d", C.m[i].peer_port);
}

/* Changes n1's configuration to n1 voting plus `learner` (0: none), with table t. */
static void change(const struct cluster *t, uint64_t learner)
{
    struct raft_conf target;
    memset(&target, 0, sizeof target);
    target.n_voters = 1;
    target.voters[0] = craft_server_member_id(n1);
    if (learner) {
        target.n_learners = 1;
        target.learners[0] = learner;
    }
    uint8_t *enc;
    size_t len;
    cr_assert_eq(cluster_encode(t, &enc, &len), 0);
    int rc = raft_node_change_conf(craft_server_node(n1), &target, enc, len, 5000, NULL);
    free(enc);
    cr_assert_eq(rc, 0, "change_conf: %s", raft_node_strerror(rc));
}

/* n1's table with n2 added by URL alone, as the Cluster API's MemberAdd does. */
static struct cluster with_n2_unnamed(void)
{
    struct cluster t;
    craft_server_cluster(n1, &t);
    char url[64], err[256];
    url_of(1, url, sizeof url);
    cr_assert_eq(cluster_add_unnamed(&t, url, TOKEN, err, sizeof err), 0, "%s", err);
    return t;
}

/* n2's Status, waiting up to timeout_ms for it to answer. */
static Craft__Node__StatusReply *status_of_n2(int timeout_ms)
{
    int64_t until = hc_now_ms() + timeout_ms;
    do {
        Craft__Node__StatusReply *st;
        if (hc_status(&C, 1, &st) == 0)
            return st;
        nap_ms(50);
    } while (hc_now_ms() < until);
    return NULL;
}

Test(join, a_member_not_in_the_table_is_refused_clearly, .init = setup, .fini = teardown,
     .timeout = 60)
{
    int64_t t0 = hc_now_ms();
    hc_start(&C, 1);
    int code = hc_wait_exit(&C, 1, 15000);
    if (code != 1)
        hc_dump_log(&C, 1);
    cr_assert_eq(code, 1, "n2 exited %d, want 1 (-1: still running)", code);
    cr_assert(hc_log_has(&C, 1, "this member is not in the cluster: add it first with etcdctl "
                                "member add"),
              "no explanation in n2's log");
    cr_assert(hc_log_has(&C, 1, " n1 at https://127.0.0.1:"), "the member asked is not named");
    cr_assert_lt(hc_now_ms() - t0, 10000, "n1 answered: no need to wait for the bound");
}

Test(join, an_added_member_joins_is_published_keeps_its_identity_and_stops_when_removed,
     .init = setup, .fini = teardown, .timeout = 120)
{
    struct cluster t = with_n2_unnamed();
    uint64_t u = t.members[1].id;
    char url[64];
    url_of(1, url, sizeof url);
    cr_assert_eq(u, cluster_member_id_url(url, TOKEN));
    change(&t, u);
    struct cluster now;
    craft_server_cluster(n1, &now);
    cr_assert_eq(now.n, 2, "n1's table has the new member once the change is in force");

    /* n2 joins: the cluster's id, and the id n1's table gave it. */
    hc_start(&C, 1);
    Craft__Node__StatusReply *st = status_of_n2(15000);
    if (!st)
        hc_dump_log(&C, 1);
    cr_assert(st, "n2 never answered");
    cr_assert_eq(st->member_id, u, "%016llx", (unsigned long long)st->member_id);
    cr_assert_eq(st->cluster_id, cfg1.cluster.id);
    cr_assert_str_eq(st->name, "n2");
    protobuf_c_message_free_unpacked(&st->base, NULL);
    cr_assert(hc_log_has(&C, 1, "joining cluster"));

    /* n1 leads: it publishes n2's name when n2 says Hello. */
    bool named = false;
    for (int64_t until = hc_now_ms() + 15000; !named && hc_now_ms() < until; nap_ms(50)) {
        craft_server_cluster(n1, &now);
        const struct cluster_member *m = cluster_find_id(&now, u);
        named = m && strcmp(m->name, "n2") == 0;
    }
    cr_assert(named, "n1 never published n2's name");
    struct raft_conf conf;
    bool committed = false;
    cr_assert_eq(raft_node_conf_get(craft_server_node(n1), &conf, NULL, NULL, &committed), 0);
    cr_assert(committed);
    cr_assert_eq(conf.n_learners, 1, "publishing changed the table, not the configuration");
    cr_assert_eq(conf.learners[0], u);

    /* A restart keeps the identity (from <data-dir>/member, not from the flags). */
    hc_signal(&C, 1, SIGTERM);
    hc_start(&C, 1);
    st = status_of_n2(15000);
    cr_assert(st, "n2 did not come back");
    cr_assert_eq(st->member_id, u);
    cr_assert_eq(st->cluster_id, cfg1.cluster.id);
    protobuf_c_message_free_unpacked(&st->base, NULL);

    /* Another --name for the same data directory is refused. */
    hc_signal(&C, 1, SIGTERM);
    char saved[512];
    memcpy(saved, C.extra_flags, sizeof saved);
    snprintf(C.extra_flags, sizeof C.extra_flags,
             "--initial-cluster-state existing --initial-cluster-token " TOKEN
             " --name n9 --initial-cluster n1=https://127.0.0.1:%d,n9=%s",
             C.m[0].peer_port, url);
    hc_start(&C, 1);
    int code = hc_wait_exit(&C, 1, 15000);
    cr_assert_eq(code, 1, "n2's directory under --name n9: exit %d", code);
    cr_assert(hc_log_has(&C, 1, "belongs to member n2"), "no explanation");
    memcpy(C.extra_flags, saved, sizeof saved);
    hc_start(&C, 1);
    st = status_of_n2(15000);
    cr_assert(st, "n2 did not come back under its own name");
    protobuf_c_message_free_unpacked(&st->base, NULL);

    /* Removed: n1 refuses n2 (its Hello, its Raft stream) as removed; n2 stops. */
    craft_server_cluster(n1, &now);
    char err[256];
    cr_assert_eq(cluster_remove(&now, u, err, sizeof err), 0);
    change(&now, 0);
    code = hc_wait_exit(&C, 1, 20000);
    if (code != 1)
        hc_dump_log(&C, 1);
    cr_assert_eq(code, 1, "the removed member exited %d, want 1 (-1: still running)", code);
    cr_assert(hc_log_has(&C, 1, "this member was removed from the cluster"));
    cr_assert(hc_log_has(&C, 1, "the member has been permanently removed from the cluster"));
    cr_assert(hc_log_has(&C, 1, "member n2 ("), "the refusal names the member");
}
