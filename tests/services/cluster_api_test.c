/* The Cluster API's rules as pure functions (services/cluster_api.h): the configuration a change
 * targets, etcd's strict reconfiguration check, a learner's readiness for promotion, peer URL
 * validation, and the gRPC code and message each refusal gets. */
#include <criterion/criterion.h>
#include <string.h>

#include "services/cluster_api.h"

static struct raft_conf conf_of(const uint64_t *voters, uint32_t nv, const uint64_t *learners,
                                uint32_t nl)
{
    struct raft_conf c;
    memset(&c, 0, sizeof c);
    c.n_voters = nv;
    memcpy(c.voters, voters, nv * sizeof *voters);
    c.n_learners = nl;
    if (nl)
        memcpy(c.learners, learners, nl * sizeof *learners);
    return c;
}

static bool in(const uint64_t *ids, uint32_t n, uint64_t id)
{
    for (uint32_t i = 0; i < n; i++)
        if (ids[i] == id)
            return true;
    return false;
}

/* ---- targets ---- */

Test(target, add_voter_and_learner)
{
    uint64_t v[] = {1, 2, 3};
    struct raft_conf c = conf_of(v, 3, NULL, 0), t;
    cr_assert_eq(cluster_api_target(&c, CLUSTER_API_ADD_VOTER, 9, &t), 0);
    cr_assert_eq(t.n_voters, 4);
    cr_assert(in(t.voters, t.n_voters, 9));
    cr_assert_eq(t.n_learners, 0);
    cr_assert_eq(t.n_old, 0);
    cr_assert_eq(cluster_api_target(&c, CLUSTER_API_ADD_LEARNER, 9, &t), 0);
    cr_assert_eq(t.n_voters, 3);
    cr_assert_eq(t.n_learners, 1);
    cr_assert_eq(t.learners[0], 9);
    /* An id already there, voter or learner, is refused. */
    cr_assert_eq(cluster_api_target(&c, CLUSTER_API_ADD_VOTER, 2, &t), CLUSTER_EEXIST);
    uint64_t l[] = {7};
    struct raft_conf cl = conf_of(v, 3, l, 1);
    cr_assert_eq(cluster_api_target(&cl, CLUSTER_API_ADD_LEARNER, 7, &t), CLUSTER_EEXIST);
}

Test(target, remove)
{
    uint64_t v[] = {1, 2, 3}, l[] = {7};
    struct raft_conf c = conf_of(v, 3, l, 1), t;
    cr_assert_eq(cluster_api_target(&c, CLUSTER_API_REMOVE, 2, &t), 0);
    cr_assert_eq(t.n_voters, 2);
    cr_assert(!in(t.voters, t.n_voters, 2));
    cr_assert(in(t.voters, t.n_voters, 1) && in(t.voters, t.n_voters, 3));
    cr_assert_eq(t.n_learners, 1);
    cr_assert_eq(cluster_api_target(&c, CLUSTER_API_REMOVE, 7, &t), 0);
    cr_assert_eq(t.n_voters, 3);
    cr_assert_eq(t.n_learners, 0);
    cr_assert_eq(cluster_api_target(&c, CLUSTER_API_REMOVE, 8, &t), CLUSTER_ENOTFOUND);
    uint64_t one[] = {1};
    struct raft_conf c1 = conf_of(one, 1, l, 1);
    cr_assert_eq(cluster_api_target(&c1, CLUSTER_API_REMOVE, 1, &t), CLUSTER_ELAST);
}

Test(target, promote_and_update)
{
    uint64_t v[] = {1, 2, 3}, l[] = {7};
    struct raft_conf c = conf_of(v, 3, l, 1), t;
    cr_assert_eq(cluster_api_target(&c, CLUSTER_API_PROMOTE, 7, &t), 0);
    cr_assert_eq(t.n_voters, 4);
    cr_assert(in(t.voters, t.n_voters, 7));
    cr_assert_eq(t.n_learners, 0);
    cr_assert_eq(cluster_api_target(&c, CLUSTER_API_PROMOTE, 2, &t), CLUSTER_API_ENOTLEARNER);
    cr_assert_eq(cluster_api_target(&c, CLUSTER_API_PROMOTE, 8, &t), CLUSTER_ENOTFOUND);
    /* An update keeps the members: only the table (the entry's context) changes. */
    cr_assert_eq(cluster_api_target(&c, CLUSTER_API_UPDATE, 7, &t), 0);
    cr_assert_eq(memcmp(&t, &c, sizeof t), 0);
    cr_assert_eq(cluster_api_target(&c, CLUSTER_API_UPDATE, 8, &t), CLUSTER_ENOTFOUND);
}

Test(target, joint_input_gives_a_plain_target)
{
    uint64_t v[] = {1, 2, 3};
    struct raft_conf c = conf_of(v, 3, NULL, 0), t;
    c.n_old = 2;
    c.old[0] = 1;
    c.old[1] = 2;
    cr_assert_eq(cluster_api_target(&c, CLUSTER_API_ADD_LEARNER, 9, &t), 0);
    cr_assert_eq(t.n_old, 0);
}

Test(target, full)
{
    struct raft_conf c;
    memset(&c, 0, sizeof c);
    for (uint32_t i = 0; i < RAFT_MAX_NODES; i++)
        c.voters[c.n_voters++] = i + 1;
    struct raft_conf t;
    cr_assert_eq(cluster_api_target(&c, CLUSTER_API_ADD_LEARNER, 1000, &t), CLUSTER_EFULL);
}

/* ---- etcd's strict reconfiguration check ---- */

static int strict(uint32_t voters, uint32_t up, enum cluster_api_change ch, uint64_t id,
                  bool id_up)
{
    /* Voters 1..voters; the first `up` of them started, except that id's flag is id_up. */
    struct raft_conf c;
    memset(&c, 0, sizeof c);
    bool started[RAFT_MAX_NODES];
    for (uint32_t i = 0; i < voters; i++) {
        c.voters[c.n_voters++] = i + 1;
        started[i] = i < up;
    }
    if (id >= 1 && id <= voters)
        started[id - 1] = id_up;
    return cluster_api_strict_check(&c, started, ch, id);
}

Test(strict, add_voter)
{
    /* A second voter for a one-member cluster is allowed (etcd: restoring a cluster). */
    cr_assert_eq(strict(1, 1, CLUSTER_API_ADD_VOTER, 99, false), 0);
    /* 3 voters, all started: 3 >= quorum 3 of 4. */
    cr_assert_eq(strict(3, 3, CLUSTER_API_ADD_VOTER, 99, false), 0);
    /* 3 voters, 2 started: 2 < 3 of 4. */
    cr_assert_eq(strict(3, 2, CLUSTER_API_ADD_VOTER, 99, false), CLUSTER_API_ENOTSTARTED);
    /* 4 voters, 3 started: 3 >= quorum 3 of 5, but not every voter is connected. */
    cr_assert_eq(strict(4, 3, CLUSTER_API_ADD_VOTER, 99, false), CLUSTER_API_EUNHEALTHY);
    /* 2 voters, 1 started: 1 < quorum 2 of 3 (the one-member exception needs 2 members). */
    cr_assert_eq(strict(2, 1, CLUSTER_API_ADD_VOTER, 99, false), CLUSTER_API_ENOTSTARTED);
}

Test(strict, add_learner)
{
    cr_assert_eq(strict(3, 3, CLUSTER_API_ADD_LEARNER, 99, false), 0);
    cr_assert_eq(strict(1, 1, CLUSTER_API_ADD_LEARNER, 99, false), 0);
    cr_assert_eq(strict(3, 2, CLUSTER_API_ADD_LEARNER, 99, false), CLUSTER_API_EUNHEALTHY);
}

Test(strict, remove)
{
    /* 3 voters all up, remove one: the other 2 are started, 2 >= quorum 2 of 2. */
    cr_assert_eq(strict(3, 3, CLUSTER_API_REMOVE, 3, true), 0);
    /* 3 voters, 3 is down: removing the downed one keeps 2 started of 2. */
    cr_assert_eq(strict(3, 2, CLUSTER_API_REMOVE, 3, false), 0);
    /* 3 voters, 3 is down, removing 2 (up): 1 started of 2 that stay < 2. */
    cr_assert_eq(strict(3, 2, CLUSTER_API_REMOVE, 2, true), CLUSTER_API_ENOTSTARTED);
    /* A learner (not among the voters) is removed without the check. */
    cr_assert_eq(strict(3, 1, CLUSTER_API_REMOVE, 99, false), 0);
    /* 5 voters, 2 down, remove an up one: 2 of 4 started < 3. */
    cr_assert_eq(strict(5, 3, CLUSTER_API_REMOVE, 1, true), CLUSTER_API_ENOTSTARTED);
}

Test(strict, promote)
{
    /* The learner counts as started: 3 voters, 2 started -> 3 of 4 >= 3. */
    cr_assert_eq(strict(3, 2, CLUSTER_API_PROMOTE, 99, false), 0);
    /* 3 voters, 1 started -> 2 of 4 < 3. */
    cr_assert_eq(strict(3, 1, CLUSTER_API_PROMOTE, 99, false), CLUSTER_API_ENOTSTARTED);
    cr_assert_eq(strict(1, 1, CLUSTER_API_PROMOTE, 99, false), 0);
}

Test(strict, update_is_not_checked)
{
    cr_assert_eq(strict(3, 1, CLUSTER_API_UPDATE, 2, false), 0);
}

/* ---- learner readiness (etcd: match >= 90% of the leader's) ---- */

Test(ready, ninety_percent)
{
    cr_assert(cluster_api_learner_ready(0, 0));
    cr_assert(cluster_api_learner_ready(90, 100));
    cr_assert(!cluster_api_learner_ready(89, 100));
    cr_assert(cluster_api_learner_ready(100, 100));
    cr_assert(cluster_api_learner_ready(120, 100)); /* a leader's view never says so, but fine */
    cr_assert(!cluster_api_learner_ready(0, 5));
    /* 0.9 * 15 = 13.5: 13 is behind, 14 is in sync. */
    cr_assert(!cluster_api_learner_ready(13, 15));
    cr_assert(cluster_api_learner_ready(14, 15));
    /* No overflow at the top of the range. */
    uint64_t big = UINT64_MAX;
    cr_assert(cluster_api_learner_ready(big - big / 10, big));
    cr_assert(!cluster_api_learner_ready(big - big / 10 - 1, big));
}

/* ---- peer URLs ---- */

Test(urls, exactly_one_valid_of_the_clusters_scheme)
{
    struct cluster_url u;
    char *ok[] = {"https://10.0.0.9:2380"};
    cr_assert_eq(cluster_api_check_urls(ok, 1, true, &u), 0);
    cr_assert_eq(u.port, 2380);
    cr_assert_str_eq(u.host, "10.0.0.9");
    cr_assert_eq(cluster_api_check_urls(ok, 0, true, &u), CLUSTER_EBADURL);
    char *two[] = {"https://10.0.0.9:2380", "https://10.0.0.9:2381"};
    cr_assert_eq(cluster_api_check_urls(two, 2, true, &u), CLUSTER_API_EONEURL);
    char *bad[] = {"10.0.0.9:2380"};
    cr_assert_eq(cluster_api_check_urls(bad, 1, true, &u), CLUSTER_EBADURL);
    char *port[] = {"https://10.0.0.9:99999"};
    cr_assert_eq(cluster_api_check_urls(port, 1, true, &u), CLUSTER_EBADURL);
    /* A plaintext member for a TLS cluster (or the reverse) could never talk to it. */
    char *plain[] = {"http://10.0.0.9:2380"};
    cr_assert_eq(cluster_api_check_urls(plain, 1, true, &u), CLUSTER_EBADURL);
    cr_assert_eq(cluster_api_check_urls(plain, 1, false, &u), 0);
}

/* ---- statuses: etcd's codes and exact messages ---- */

static void expect(int err, bool from_cluster, bool from_node, int code, const char *msg)
{
    int c;
    const char *m;
    cluster_api_status(err, from_cluster, from_node, &c, &m);
    cr_assert_eq(c, code, "err %d: code %d, want %d", err, c, code);
    cr_assert_str_eq(m, msg);
}

Test(status, etcds_codes_and_messages)
{
    expect(CLUSTER_API_ENOTSTARTED, false, false, GRPC_STATUS_FAILED_PRECONDITION,
           "etcdserver: re-configuration failed due to not enough started members");
    expect(CLUSTER_API_EUNHEALTHY, false, false, GRPC_STATUS_UNAVAILABLE,
           "etcdserver: unhealthy cluster");
    expect(CLUSTER_API_ENOTLEARNER, false, false, GRPC_STATUS_FAILED_PRECONDITION,
           "etcdserver: can only promote a learner member");
    expect(CLUSTER_API_ENOTREADY, false, false, GRPC_STATUS_FAILED_PRECONDITION,
           "etcdserver: can only promote a learner member which is in sync with leader");
    expect(CLUSTER_API_ELEARNERS, false, false, GRPC_STATUS_FAILED_PRECONDITION,
           "etcdserver: too many learner members in cluster");
    expect(CLUSTER_API_EBADTARGET, false, false, GRPC_STATUS_FAILED_PRECONDITION,
           "etcdserver: bad leader transferee");
    expect(CLUSTER_API_ENOTLEADER, false, false, GRPC_STATUS_FAILED_PRECONDITION,
           "etcdserver: not leader");
    expect(CLUSTER_API_ETRANSFER, false, false, GRPC_STATUS_UNKNOWN,
           "etcdserver: request timed out, leader transfer took too long");
    expect(CLUSTER_ENOTFOUND, true, false, GRPC_STATUS_NOT_FOUND, "etcdserver: member not found");
    expect(CLUSTER_EURLEXISTS, true, false, GRPC_STATUS_FAILED_PRECONDITION,
           "etcdserver: Peer URLs already exists");
    expect(CLUSTER_EEXIST, true, false, GRPC_STATUS_FAILED_PRECONDITION,
           "etcdserver: member ID already exist");
    expect(CLUSTER_EBADURL, true, false, GRPC_STATUS_INVALID_ARGUMENT,
           "etcdserver: given member URLs are invalid");
    /* Node outcomes of a change. */
    expect(RAFT_NODE_ETIMEDOUT, false, true, GRPC_STATUS_UNAVAILABLE,
           "etcdserver: request timed out");
    expect(RAFT_NODE_EPENDING, false, true, GRPC_STATUS_UNAVAILABLE,
           "etcdserver: request timed out");
    expect(RAFT_NODE_ELOST, false, true, GRPC_STATUS_UNAVAILABLE, "etcdserver: leader changed");
    expect(RAFT_NODE_ESHUTDOWN, false, true, GRPC_STATUS_UNAVAILABLE,
           "etcdserver: server stopped");
    expect(RAFT_NODE_ETOOBIG, false, true, GRPC_STATUS_INVALID_ARGUMENT,
           "etcdserver: request is too large");
}

Test(status, node_and_cluster_codes_overlap_but_not_their_answers)
{
    /* -2 is both CLUSTER_ENOTFOUND and RAFT_NODE_ENOTLEADER: the domain decides. */
    cr_assert_eq(CLUSTER_ENOTFOUND, RAFT_NODE_ENOTLEADER);
    int c1, c2;
    const char *m1, *m2;
    cluster_api_status(-2, true, false, &c1, &m1);
    cluster_api_status(-2, false, true, &c2, &m2);
    cr_assert_neq(c1, c2);
    cr_assert_str_neq(m1, m2);
}
