/* services/peer.h with a member table that changes at run time, over real loopback gRPC with
 * mutual TLS (certificates from the harness: CN and a DNS SAN carry the member's name, and an IP
 * SAN 127.0.0.1):
 * - the authorization rule (peer_authorize) as the table changes: a member's certificate is
 *   accepted while the table names it, refused as "removed from the cluster" once it left (a
 *   bounded list), accepted again when it comes back; an unnamed member (etcd's MemberAdd by
 *   URL) is accepted from a certificate naming no member when the caller claims its id, and the
 *   strict name rule applies once its name is bound;
 * - a member removed while its Raft stream is open is refused at its next Batch, and learns it
 *   (on_removed, with the refusal's message);
 * - a member added without a name joins: its Raft stream and Hello are accepted, its Hello with
 *   its name reaches on_unnamed_hello, and the other side dials it by its URL's host;
 * - peer_join_discover finds this member's table by its peer URL, says clearly when it is not
 *   in the table, and names the members it tried when none answers. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "services/cluster.h"
#include "services/peer.h"
#include "tests/cluster/harness.h"

#define TOKEN "members-test"

static struct hc C; /* directory, certificates, ports; no processes */

struct member {
    struct peer *peer;
    struct rpc_server *srv;
    char cert[400], key[400];
    struct rpc_tls tls;
};
static struct member mem[3];

/* What the callbacks saw. */
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int removed_calls;
    char removed_why[300];
    int unnamed_calls;
    uint64_t unnamed_id;
    char unnamed_name[64];
} seen = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, "", 0, 0, ""};

static void on_removed(void *arg, const char *why)
{
    (void)arg;
    pthread_mutex_lock(&seen.mu);
    seen.removed_calls++;
    snprintf(seen.removed_why, sizeof seen.removed_why, "%s", why);
    pthread_cond_broadcast(&seen.cv);
    pthread_mutex_unlock(&seen.mu);
}

static void on_unnamed_hello(void *arg, uint64_t id, const char *name)
{
    (void)arg;
    pthread_mutex_lock(&seen.mu);
    seen.unnamed_calls++;
    seen.unnamed_id = id;
    snprintf(seen.unnamed_name, sizeof seen.unnamed_name, "%s", name);
    pthread_cond_broadcast(&seen.cv);
    pthread_mutex_unlock(&seen.mu);
}

/* Waits (up to 10 s) until *counter is positive: the callbacks come from RPC threads. */
static int wait_seen(int *counter)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 10;
    pthread_mutex_lock(&seen.mu);
    while (*counter == 0 && pthread_cond_timedwait(&seen.cv, &seen.mu, &until) == 0)
        ;
    int v = *counter;
    pthread_mutex_unlock(&seen.mu);
    return v;
}

static void setup(void)
{
    hc_setup(&C, 3, 100, 1000);
    memset(mem, 0, sizeof mem);
    pthread_mutex_lock(&seen.mu);
    seen.removed_calls = seen.unnamed_calls = 0;
    seen.removed_why[0] = seen.unnamed_name[0] = '\0';
    seen.unnamed_id = 0;
    pthread_mutex_unlock(&seen.mu);
}

static void teardown(void)
{
    for (int i = 0; i < 3; i++)
        if (mem[i].srv)
            rpc_server_shutdown(mem[i].srv, 0);
    for (int i = 0; i < 3; i++)
        peer_destroy(mem[i].peer);
    hc_teardown(&C);
}

static void url_of(int i, char *buf, size_t len)
{
    snprintf(buf, len, "https://127.0.0.1:%d", C.m[i].peer_port);
}

/* The table of the members in `which` (indexes), named as in the harness. */
static struct cluster table_of(const int *which, int n)
{
    char spec[512] = "", err[256];
    size_t used = 0;
    for (int k = 0; k < n; k++)
        used += (size_t)snprintf(spec + used, sizeof spec - used, "%sn%d=https://127.0.0.1:%d",
                                 k ? "," : "", which[k] + 1, C.m[which[k]].peer_port);
    struct cluster c;
    cr_assert_eq(cluster_parse(spec, TOKEN, &c, err, sizeof err), 0, "%s", err);
    return c;
}

/* Member i's peer with table c (self_id its id in c), its peer server started. */
static void start_peer(int i, const struct cluster *c, uint64_t self_id)
{
    struct member *m = &mem[i];
    snprintf(m->cert, sizeof m->cert, "%s/%s.pem", C.certs, C.m[i].name);
    snprintf(m->key, sizeof m->key, "%s/%s-key.pem", C.certs, C.m[i].name);
    m->tls = (struct rpc_tls){.ca_file = C.ca, .cert_file = m->cert, .key_file = m->key};
    struct peer_config pc = {.cluster = c,
                             .self_id = self_id,
                             .name = C.m[i].name,
                             .tls = &m->tls,
                             .on_removed = on_removed,
                             .on_unnamed_hello = on_unnamed_hello};
    char listen[64], err[256];
    m->peer = peer_create(&pc, err, sizeof err);
    cr_assert(m->peer, "%s", err);
    snprintf(listen, sizeof listen, "127.0.0.1:%d", C.m[i].peer_port);
    m->srv = rpc_server_create(&(struct rpc_server_config){.listen = listen, .tls = &m->tls}, err,
                               sizeof err);
    cr_assert(m->srv, "%s", err);
    cr_assert_eq(peer_register(m->peer, m->srv), 0);
    cr_assert_eq(rpc_server_start(m->srv), 0);
}

static struct rpc_peer cert_named(const char *cn)
{
    struct rpc_peer c;
    memset(&c, 0, sizeof c);
    snprintf(c.cn, sizeof c.cn, "%s", cn);
    snprintf(c.sans[0], sizeof c.sans[0], "%s", cn);
    snprintf(c.sans[1], sizeof c.sans[1], "127.0.0.1");
    c.nsans = 2;
    return c;
}

/* peer_authorize for a certificate named cn claiming `claimed`; why into *why. */
static uint64_t who(struct peer *p, const char *cn, uint64_t claimed, char *why)
{
    struct rpc_peer c = cert_named(cn);
    return peer_authorize(p, &c, claimed, why, 256);
}

Test(peer_members, authorization_follows_the_table, .init = setup, .fini = teardown,
     .timeout = 60)
{
    const int all[] = {0, 1, 2};
    struct cluster t = table_of(all, 3);
    uint64_t n1 = t.members[0].id, n2 = t.members[1].id, n3 = t.members[2].id;
    start_peer(0, &t, n1);
    struct peer *p = mem[0].peer;
    char why[256];

    cr_assert_eq(who(p, "n2", 0, why), n2);
    cr_assert_eq(who(p, "n3", 12345, why), n3, "the certificate decides, not the claim");
    cr_assert_eq(who(p, "n1", 0, why), 0);
    cr_assert(strstr(why, "names this member"), "%s", why);
    cr_assert_eq(who(p, "stranger", n2, why), 0, "a claim alone is not enough for a named member");
    cr_assert(strstr(why, "names no other member"), "%s", why);

    /* n2 leaves: its certificate, or its id claimed, is refused as removed. */
    struct cluster without = t;
    cr_assert_eq(cluster_remove(&without, n2, why, sizeof why), 0);
    peer_set_cluster(p, &without);
    struct cluster got;
    peer_get_cluster(p, &got);
    cr_assert_eq(got.n, 2);
    cr_assert_eq(got.id, t.id, "the cluster id stays");
    cr_assert_eq(who(p, "n2", 0, why), 0);
    cr_assert(strstr(why, "member n2 (") && strstr(why, PEER_REMOVED_TEXT), "%s", why);
    cr_assert_eq(who(p, "stranger", n2, why), 0);
    cr_assert(strstr(why, PEER_REMOVED_TEXT), "a removed id claimed: %s", why);
    cr_assert_eq(who(p, "n3", 0, why), n3, "the others are unaffected");

    /* n2 comes back (same name and id): accepted again, no longer listed as removed. */
    peer_set_cluster(p, &t);
    cr_assert_eq(who(p, "n2", 0, why), n2);

    /* An unnamed member (etcd's MemberAdd by URL): a certificate that names no member may claim
     * it; the binding then serves calls that claim nothing; a member's certificate may not. */
    struct cluster added = t;
    cr_assert_eq(cluster_add_unnamed(&added, "https://127.0.0.1:1", TOKEN, why, sizeof why), 0);
    uint64_t u = added.members[3].id;
    cr_assert_eq(u, cluster_member_id_url("https://127.0.0.1:1", TOKEN));
    peer_set_cluster(p, &added);
    cr_assert_eq(who(p, "n4", 0, why), 0, "no claim and no binding yet");
    cr_assert_eq(who(p, "n4", u, why), u);
    cr_assert_eq(who(p, "n4", 0, why), u, "bound by the accepted claim");
    cr_assert_eq(who(p, "n2", u, why), n2, "a member's certificate stays that member");
    cr_assert_eq(who(p, "n4", n1, why), u, "a claim of this member is no claim");

    /* Its name published: the strict rule. */
    struct cluster named = added;
    cr_assert_eq(cluster_set_name(&named, u, "n4", why, sizeof why), 0);
    peer_set_cluster(p, &named);
    cr_assert_eq(who(p, "n4", 0, why), u);
    cr_assert_eq(who(p, "other", u, why), 0, "no longer unnamed: a claim is not enough");
    cr_assert(strstr(why, "names no other member"), "%s", why);

    /* The removed list is bounded: of 20 members removed, the oldest 4 are forgotten. */
    struct cluster big = named;
    for (int i = 0; i < 20; i++) {
        char name[16], url[64];
        snprintf(name, sizeof name, "x%d", i);
        snprintf(url, sizeof url, "https://127.0.0.2:%d", 1000 + i);
        cr_assert_eq(cluster_add(&big, name, url, TOKEN, why, sizeof why), 0, "%s", why);
    }
    peer_set_cluster(p, &big);
    cr_assert_eq(who(p, "x0", 0, why), cluster_member_id("x0", TOKEN));
    for (int i = 0; i < 20; i++) { /* one at a time, oldest first */
        char name[16];
        snprintf(name, sizeof name, "x%d", i);
        cr_assert_eq(cluster_remove(&big, cluster_member_id(name, TOKEN), why, sizeof why), 0);
        peer_set_cluster(p, &big);
    }
    for (int i = 0; i < 20; i++) {
        char name[16];
        snprintf(name, sizeof name, "x%d", i);
        cr_assert_eq(who(p, name, 0, why), 0);
        if (i < 20 - PEER_REMOVED_MAX)
            cr_assert(strstr(why, "names no other member"), "%s forgotten: %s", name, why);
        else
            cr_assert(strstr(why, PEER_REMOVED_TEXT), "%s remembered: %s", name, why);
    }
}

static struct raft_msg heartbeat(uint64_t from, uint64_t to)
{
    return (struct raft_msg){.type = RAFT_MSG_APPEND, .from = from, .to = to, .term = 1};
}

static uint64_t batches_received(int i)
{
    struct peer_stats s;
    peer_stats_get(mem[i].peer, &s);
    return s.batches_received;
}

static uint64_t streams_refused(int i)
{
    struct peer_stats s;
    peer_stats_get(mem[i].peer, &s);
    return s.streams_refused;
}

/* Sends heartbeats from member `from` (id fid) to `to` (id tid) every 20 ms until member `to`
 * has received one more Batch, or its refusals reach `refused`; false after 10 s. */
static bool deliver(int from, uint64_t fid, int to, uint64_t tid, uint64_t refused)
{
    uint64_t b0 = batches_received(to);
    struct raft_transport *t = peer_transport(mem[from].peer);
    struct raft_msg hb = heartbeat(fid, tid);
    for (int64_t until = hc_now_ms() + 10000; hc_now_ms() < until;) {
        t->send(t->ctx, tid, &hb, 1); /* fails while the stream is refused or reconnecting */
        if (batches_received(to) > b0 || (refused && streams_refused(to) >= refused))
            return true;
        nanosleep(&(struct timespec){0, 20 * 1000000L}, NULL);
    }
    return false;
}

Test(peer_members, a_member_removed_is_refused_at_its_next_batch_and_told, .init = setup,
     .fini = teardown, .timeout = 60)
{
    const int two[] = {0, 1};
    struct cluster t = table_of(two, 2);
    uint64_t n1 = t.members[0].id, n2 = t.members[1].id;
    start_peer(0, &t, n1);
    start_peer(1, &t, n2);
    cr_assert(deliver(1, n2, 0, n1, 0), "n2's Batch never reached n1");
    cr_assert_eq(streams_refused(0), 0);

    struct cluster without = t;
    char err[256];
    cr_assert_eq(cluster_remove(&without, n2, err, sizeof err), 0);
    peer_set_cluster(mem[0].peer, &without);
    /* n2's open stream is checked again at its next Batch and refused as removed. */
    cr_assert(deliver(1, n2, 0, n1, 1), "n1 never refused n2");
    cr_assert_geq(streams_refused(0), 1);
    cr_assert_eq(wait_seen(&seen.removed_calls), 1, "n2 was never told it was removed");
    pthread_mutex_lock(&seen.mu);
    cr_assert(strstr(seen.removed_why, "member n2") && strstr(seen.removed_why, PEER_REMOVED_TEXT),
              "%s", seen.removed_why);
    pthread_mutex_unlock(&seen.mu);
    /* n1 sends nothing to a member it no longer has. */
    struct raft_transport *tr = peer_transport(mem[0].peer);
    struct raft_msg hb = heartbeat(n1, n2);
    cr_assert_neq(tr->send(tr->ctx, n2, &hb, 1), 0);
    char urls[64];
    peer_client_urls(mem[0].peer, n2, urls, sizeof urls);
    cr_assert_str_eq(urls, "");
}

Test(peer_members, an_unnamed_member_is_accepted_and_publishes_its_name, .init = setup,
     .fini = teardown, .timeout = 60)
{
    const int one[] = {0};
    struct cluster t = table_of(one, 1);
    uint64_t n1 = t.members[0].id;
    char url2[64], err[256];
    url_of(1, url2, sizeof url2);
    struct cluster added = t;
    cr_assert_eq(cluster_add_unnamed(&added, url2, TOKEN, err, sizeof err), 0, "%s", err);
    uint64_t u = added.members[1].id;

    /* n1 knows only itself; n2 starts from the table with itself unnamed (as a joining member
     * does). n2's stream to n1 is refused until n1's table has the new member. */
    start_peer(0, &t, n1);
    start_peer(1, &added, u);
    cr_assert(deliver(1, u, 0, n1, 1), "n1 never refused the stranger");
    cr_assert_eq(batches_received(0), 0);
    peer_set_cluster(mem[0].peer, &added);
    cr_assert(deliver(1, u, 0, n1, 0), "n1 never accepted the unnamed member's stream");
    /* n1 dials the unnamed member by its URL's host (its certificate has IP SAN 127.0.0.1). */
    cr_assert(deliver(0, n1, 1, u, 0), "n1 could not reach the unnamed member");

    /* n2's Hello (repeated while it is unnamed) carries its name, in its certificate. */
    int calls = wait_seen(&seen.unnamed_calls);
    cr_assert_geq(calls, 1, "no Hello from the unnamed member reached on_unnamed_hello");
    pthread_mutex_lock(&seen.mu);
    cr_assert_eq(seen.unnamed_id, u);
    cr_assert_str_eq(seen.unnamed_name, "n2");
    pthread_mutex_unlock(&seen.mu);

    /* Bound: both sides take the table with the name; the stream goes on, now by name. */
    struct cluster named = added;
    cr_assert_eq(cluster_set_name(&named, u, "n2", err, sizeof err), 0);
    peer_set_cluster(mem[0].peer, &named);
    peer_set_cluster(mem[1].peer, &named);
    cr_assert(deliver(1, u, 0, n1, 0));
    cr_assert(deliver(0, n1, 1, u, 0), "n1 reaches n2 by name");
    cr_assert_eq(streams_refused(1), 0);
    uint64_t refused = streams_refused(0);
    cr_assert(deliver(1, u, 0, n1, 0));
    cr_assert_eq(streams_refused(0), refused, "nothing refused once named");
    cr_assert_eq(seen.removed_calls, 0);
}

Test(peer_members, join_discovery_finds_this_member_or_says_why_not, .init = setup,
     .fini = teardown, .timeout = 60)
{
    const int one[] = {0}, both[] = {0, 1}, all[] = {0, 1, 2};
    struct cluster t = table_of(one, 1);
    start_peer(0, &t, t.members[0].id);
    struct cluster listed = table_of(both, 2); /* n2's --initial-cluster: n1 and itself */
    struct cluster_url self_url = listed.members[1].peer_url;
    char cert[400], key[400], err[1024];
    snprintf(cert, sizeof cert, "%s/n2.pem", C.certs);
    snprintf(key, sizeof key, "%s/n2-key.pem", C.certs);
    struct rpc_tls tls = {.ca_file = C.ca, .cert_file = cert, .key_file = key};
    struct cluster out;

    /* Not in n1's table: refused at once (n1 answered), with the words etcd users need. */
    int64_t t0 = hc_now_ms();
    int rc = peer_join_discover(&listed, "n2", &self_url, &tls, false, 5000, &out, err, sizeof err);
    cr_assert_eq(rc, PEER_JOIN_ENOTMEMBER, "%d: %s", rc, err);
    cr_assert(strstr(err, PEER_JOIN_NOT_MEMBER_TEXT) && strstr(err, "n1 at https://127.0.0.1:"),
              "%s", err);
    cr_assert_lt(hc_now_ms() - t0, 4000, "every listed member answered: no wait for the timeout");

    /* Added (by URL, unnamed): found, with n1's cluster id. */
    char url2[64];
    url_of(1, url2, sizeof url2);
    struct cluster added = t;
    cr_assert_eq(cluster_add_unnamed(&added, url2, TOKEN, err, sizeof err), 0);
    peer_set_cluster(mem[0].peer, &added);
    rc = peer_join_discover(&listed, "n2", &self_url, &tls, false, 5000, &out, err, sizeof err);
    cr_assert_eq(rc, 0, "%s", err);
    cr_assert_eq(out.id, t.id);
    cr_assert_eq(out.n, 2);
    const struct cluster_member *me = cluster_find_url(&out, &self_url);
    cr_assert(me);
    cr_assert_eq(me->id, cluster_member_id_url(url2, TOKEN));
    cr_assert_str_eq(me->name, "");

    /* Nobody listening at n3's URL: bounded, every member tried named. */
    struct cluster listed3 = table_of(all, 3);
    struct cluster only3 = listed3;
    cr_assert_eq(cluster_remove(&only3, listed3.members[0].id, err, sizeof err), 0);
    t0 = hc_now_ms();
    rc = peer_join_discover(&only3, "n2", &self_url, &tls, false, 1500, &out, err, sizeof err);
    cr_assert_eq(rc, PEER_JOIN_EUNREACHABLE, "%d: %s", rc, err);
    cr_assert(strstr(err, "no member of --initial-cluster answered") && strstr(err, "n3 at"), "%s",
              err);
    cr_assert_lt(hc_now_ms() - t0, 5000);
    cr_assert_geq(hc_now_ms() - t0, 1400, "it waited the bound");

    /* Only itself listed: nobody to ask. */
    const int me_only[] = {1};
    struct cluster solo = table_of(me_only, 1);
    rc = peer_join_discover(&solo, "n2", &self_url, &tls, false, 1500, &out, err, sizeof err);
    cr_assert_eq(rc, PEER_JOIN_EUNREACHABLE);
    cr_assert(strstr(err, "names no other member"), "%s", err);
}
