/* services/peer.h's counters (peer_stats_get) between two members' peers over real loopback gRPC
 * with mutual TLS: hand-made messages are counted exactly, packed into Batches by max_batch_bytes
 * and dropped by a member with no node attached; in a real two-member Raft cluster every write is
 * sent, received and handed to the node on both sides with nothing dropped; a send to a member
 * that went away counts as a failure, and a stream from a certificate naming no member as
 * refused. The Raft stream opened by hand (as a replicator opens it) with a certificate of the
 * cluster's CA that names no member is ended with PERMISSION_DENIED and its Batch never reaches
 * the member, while the same Batch with a member's certificate does. */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "raft/node/node.h"
#include "services/cluster.h"
#include "services/peer.h"
#include "services/peer_msg.h"
#include "tests/cluster/harness.h"

#define ENTRY_BYTES 1000
#define WRITES 50

struct member {
    struct peer *peer;
    struct rpc_server *srv;
    struct raft_node *node;
    char cert[400], key[400];
    struct rpc_tls tls;
};

static struct hc C; /* directory, certificates, ports; no processes */
static struct cluster cl;
static struct member mem[2];

static uint64_t id_of(int i) { return cl.members[i].id; }

static void setup(void)
{
    hc_setup(&C, 2, 100, 1000);
    char spec[256], err[256];
    size_t used = 0;
    for (int i = 0; i < 2; i++)
        used += (size_t)snprintf(spec + used, sizeof spec - used, "%sn%d=https://127.0.0.1:%d",
                                 i ? "," : "", i + 1, C.m[i].peer_port);
    cr_assert_eq(cluster_parse(spec, "peer-test", &cl, err, sizeof err), 0, "%s", err);
    memset(mem, 0, sizeof mem);
}

/* Member i's peer (max_batch_bytes 0: the default) and its peer server, started. */
static void start_peer(int i, size_t max_batch_bytes)
{
    struct member *m = &mem[i];
    snprintf(m->cert, sizeof m->cert, "%s/%s.pem", C.certs, C.m[i].name);
    snprintf(m->key, sizeof m->key, "%s/%s-key.pem", C.certs, C.m[i].name);
    m->tls = (struct rpc_tls){.ca_file = C.ca, .cert_file = m->cert, .key_file = m->key};
    struct peer_config pc = {.cluster = &cl, .self_id = id_of(i), .tls = &m->tls,
                             .max_batch_bytes = max_batch_bytes};
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

/* craft_server_stop's order: nodes detached and stopped, then peer servers, then peers. */
static void teardown(void)
{
    for (int i = 0; i < 2; i++) {
        if (mem[i].peer)
            peer_attach(mem[i].peer, NULL);
        if (mem[i].node)
            raft_node_stop(mem[i].node);
    }
    for (int i = 0; i < 2; i++)
        if (mem[i].srv)
            rpc_server_shutdown(mem[i].srv, 0);
    for (int i = 0; i < 2; i++)
        peer_destroy(mem[i].peer);
    hc_teardown(&C);
}

static struct peer_stats stats_of(int i)
{
    struct peer_stats s;
    peer_stats_get(mem[i].peer, &s);
    return s;
}

/* The counter at `field` of member i once it reaches want, or its value after 10 s. Counters
 * offer no event to wait on, so this polls them every 5 ms up to that bound. */
static uint64_t wait_counter(int i, size_t field, uint64_t want)
{
    int64_t until = hc_now_ms() + 10000;
    for (;;) {
        struct peer_stats s = stats_of(i);
        uint64_t v;
        memcpy(&v, (const char *)&s + field, sizeof v);
        if (v >= want || hc_now_ms() >= until)
            return v;
        nanosleep(&(struct timespec){0, 5 * 1000000L}, NULL);
    }
}
#define FIELD(f) offsetof(struct peer_stats, f)

/* Member 1 listens before member 0's peer exists: member 0's channel then connects at its first
 * attempt. Had that attempt failed, gRPC would fail a stream opened during the reconnect backoff
 * at once (fail fast), and the first hand-made send with it. */
static void start_receiver_first(size_t sender_max_batch_bytes)
{
    start_peer(1, 0);
    start_peer(0, sender_max_batch_bytes);
}

/* A heartbeat from member 0 to member 1. */
static struct raft_msg heartbeat(void)
{
    return (struct raft_msg){.type = RAFT_MSG_APPEND, .from = id_of(0), .to = id_of(1), .term = 1};
}

static int send_from_0(const struct raft_msg *msgs, size_t n)
{
    struct raft_transport *t = peer_transport(mem[0].peer);
    return t->send(t->ctx, id_of(1), msgs, n);
}

Test(peer_stats, hand_made_messages_are_counted_in_batches_and_dropped_without_a_node,
     .init = setup, .fini = teardown, .timeout = 60)
{
    /* A message with one 1,000-byte entry is sized 1,288 bytes (peer.c's over-estimate), so
     * 3,000-byte Batches take two of them, or four heartbeats (256 each). */
    start_receiver_first(3000);
    static uint8_t data[ENTRY_BYTES];
    struct raft_entry e[5];
    struct raft_msg m[5];
    for (int i = 0; i < 5; i++) {
        e[i] = (struct raft_entry){.index = (uint64_t)i + 1, .term = 1, .len = ENTRY_BYTES,
                                   .data = data};
        m[i] = heartbeat();
        m[i].prev_index = (uint64_t)i;
        m[i].prev_term = i ? 1 : 0;
        m[i].n_entries = 1;
        m[i].entries = &e[i];
    }
    cr_assert_eq(send_from_0(m, 5), 0);
    struct peer_stats a = stats_of(0);
    cr_assert_eq(a.batches_sent, 3, "5 messages in %llu Batches", (unsigned long long)a.batches_sent);
    cr_assert_eq(a.msgs_sent, 5);
    struct raft_msg hb[4] = {heartbeat(), heartbeat(), heartbeat(), heartbeat()};
    cr_assert_eq(send_from_0(hb, 4), 0);
    a = stats_of(0);
    cr_assert_eq(a.batches_sent, 4);
    cr_assert_eq(a.msgs_sent, 9);
    cr_assert_eq(a.send_failures, 0);

    /* Member 1 has no node attached: it accepts every Batch and drops every message. */
    cr_assert_eq(wait_counter(1, FIELD(msgs_dropped), 9), 9);
    struct peer_stats b = stats_of(1);
    cr_assert_eq(b.batches_received, 4);
    cr_assert_eq(b.msgs_received, 0);
    cr_assert_eq(b.streams_refused, 0);
    cr_assert_eq(b.batches_sent, 0, "member 1 had nothing to send");
    a = stats_of(0);
    cr_assert_eq(a.batches_received + a.msgs_dropped, 0, "member 0 received nothing");
}

/* ---- a real exchange: two Raft nodes over the two peers ------------------------------------ */

static int null_apply(void *ctx, const struct raft_entry *e, size_t n, uint64_t last_index,
                      struct raft_fsm_result *res)
{
    (void)ctx, (void)e, (void)n, (void)last_index, (void)res; /* results stay zero: ok */
    return 0;
}

static uint64_t null_applied_index(void *ctx)
{
    (void)ctx;
    return 0; /* keeps nothing across restarts */
}

static int no_snapshot_write(void *ctx, struct raft_snapshot_writer *w, uint64_t *index,
                             uint64_t *term)
{
    (void)ctx, (void)w, (void)index, (void)term;
    return -ENOSYS;
}

static int no_snapshot_restore(void *ctx, struct raft_snapshot_reader *r, uint64_t index,
                               uint64_t term)
{
    (void)ctx, (void)r, (void)index, (void)term;
    return -ENOSYS;
}

static struct raft_fsm null_fsm = {NULL, null_apply, null_applied_index, no_snapshot_write,
                                   no_snapshot_restore};

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t leader; /* the member that last said it leads, 0 once it stops */
} elected = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};

static void on_role(void *arg, uint64_t id, uint8_t role, uint64_t term, uint64_t leader_id)
{
    (void)arg, (void)term, (void)leader_id;
    pthread_mutex_lock(&elected.mu);
    if (role == RAFT_LEADER)
        elected.leader = id;
    else if (elected.leader == id)
        elected.leader = 0;
    pthread_cond_broadcast(&elected.cv);
    pthread_mutex_unlock(&elected.mu);
}

/* The index of the member that leads, waiting up to 10 s; -1 if none. */
static int wait_leader(void)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 10;
    pthread_mutex_lock(&elected.mu);
    while (!elected.leader &&
           pthread_cond_timedwait(&elected.cv, &elected.mu, &until) != ETIMEDOUT)
        ;
    uint64_t leader = elected.leader;
    pthread_mutex_unlock(&elected.mu);
    return leader == id_of(0) ? 0 : leader == id_of(1) ? 1 : -1;
}

static void start_node(int i)
{
    uint64_t ids[2] = {id_of(0), id_of(1)}; /* copied by the node */
    struct raft_node_config nc;
    raft_node_config_default(&nc);
    nc.id = id_of(i);
    nc.peers = ids;
    nc.n_peers = 2;
    nc.data_dir = C.m[i].data_dir;
    nc.fsm = &null_fsm;
    nc.transport = peer_transport(mem[i].peer);
    nc.heartbeat_ms = (unsigned)C.heartbeat_ms;
    nc.election_ms = (unsigned)C.election_ms;
    nc.on_role = on_role;
    char err[256];
    mem[i].node = raft_node_start(&nc, err, sizeof err);
    cr_assert(mem[i].node, "%s", err);
    peer_attach(mem[i].peer, mem[i].node);
}

Test(peer_stats, a_raft_exchange_is_counted_on_both_sides_with_nothing_dropped, .init = setup,
     .fini = teardown, .timeout = 90)
{
    elected.leader = 0;
    for (int i = 0; i < 2; i++)
        start_peer(i, 0);
    for (int i = 0; i < 2; i++)
        start_node(i);
    int l = wait_leader();
    cr_assert_geq(l, 0, "no leader in 10 s");
    int f = 1 - l;
    struct peer_stats l0 = stats_of(l), f0 = stats_of(f);
    /* One at a time: each commits only after its entry went to the follower and the follower's
     * acknowledgement came back, so each adds at least one message each way. */
    for (int k = 0; k < WRITES; k++) {
        uint64_t who = 0;
        int rc = raft_node_propose_wait(mem[l].node, "w", 1, 5000, NULL, NULL, &who);
        cr_assert_eq(rc, 0, "write %d: %s (leader now %llu)", k, raft_node_strerror(rc),
                     (unsigned long long)who);
    }
    /* Counted just after the hand-off, so the last write's may still be on their way. */
    cr_assert_geq(wait_counter(l, FIELD(msgs_sent), l0.msgs_sent + WRITES), l0.msgs_sent + WRITES);
    cr_assert_geq(wait_counter(f, FIELD(msgs_received), f0.msgs_received + WRITES),
                  f0.msgs_received + WRITES);
    cr_assert_geq(wait_counter(f, FIELD(msgs_sent), f0.msgs_sent + WRITES), f0.msgs_sent + WRITES);
    cr_assert_geq(wait_counter(l, FIELD(msgs_received), l0.msgs_received + WRITES),
                  l0.msgs_received + WRITES);
    struct peer_stats l1 = stats_of(l), f1 = stats_of(f);
    cr_assert_gt(l1.batches_sent, l0.batches_sent);
    cr_assert_gt(f1.batches_received, f0.batches_received);
    cr_assert_leq(l1.batches_sent, l1.msgs_sent, "a Batch carries at least one message");
    cr_assert_leq(f1.batches_received, f1.msgs_received + f1.msgs_dropped);
    /* Both nodes were attached and the streams authenticated: nothing dropped or refused. */
    cr_assert_eq(l1.msgs_dropped, l0.msgs_dropped);
    cr_assert_eq(f1.msgs_dropped, f0.msgs_dropped);
    cr_assert_eq(l1.send_failures, l0.send_failures);
    cr_assert_eq(f1.send_failures, f0.send_failures);
    cr_assert_eq(l1.streams_refused + f1.streams_refused, 0);
}

/* ---- failures and refusals --------------------------------------------------------------- */

Test(peer_stats, a_member_gone_counts_a_failure_and_a_stranger_is_refused, .init = setup,
     .fini = teardown, .timeout = 60)
{
    start_receiver_first(0);
    struct raft_msg hb = heartbeat();

    /* A peer with a certificate of the cluster's CA that names no member (the client's),
     * claiming to be member 0: member 1 refuses its stream and takes nothing from it. */
    struct rpc_tls client_tls = {.ca_file = C.ca, .cert_file = C.cert, .key_file = C.key};
    struct peer_config pc = {.cluster = &cl, .self_id = id_of(0), .tls = &client_tls};
    char err[256];
    struct peer *stranger = peer_create(&pc, err, sizeof err);
    cr_assert(stranger, "%s", err);
    struct raft_transport *t = peer_transport(stranger);
    cr_assert_eq(t->send(t->ctx, id_of(1), &hb, 1), 0, "queued before the refusal");
    cr_assert_eq(wait_counter(1, FIELD(streams_refused), 1), 1);
    peer_destroy(stranger);
    struct peer_stats b = stats_of(1);
    cr_assert_eq(b.batches_received + b.msgs_received + b.msgs_dropped, 0);

    /* Member 0's stream works, then member 1's peer port goes away: sends succeed until the
     * stream is found dead (or its queue stays full), and the first that fails is counted. */
    cr_assert_eq(send_from_0(&hb, 1), 0);
    cr_assert_eq(wait_counter(1, FIELD(msgs_dropped), 1), 1, "the first heartbeat arrived");
    rpc_server_shutdown(mem[1].srv, 0);
    mem[1].srv = NULL;
    uint64_t queued = 1;
    int rc;
    int64_t until = hc_now_ms() + 10000;
    while ((rc = send_from_0(&hb, 1)) == 0 && hc_now_ms() < until)
        queued++;
    cr_assert_neq(rc, 0, "sends to a member that went away kept succeeding for 10 s");
    struct peer_stats a = stats_of(0);
    cr_assert_eq(a.send_failures, 1);
    cr_assert_eq(a.batches_sent, queued, "a failed send is not counted as sent");
    cr_assert_eq(a.msgs_sent, queued);
}

/* ---- the Raft stream itself, opened by hand ------------------------------------------------- */

#define RAFT_METHOD "/craft.raft.Peer/Raft"

struct raw {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool closed;
    grpc_status_code status;
};

static void raw_message(struct rpc_client_stream *s, const uint8_t *d, size_t n, void *arg)
{
    (void)s, (void)d, (void)n, (void)arg;
}

static void raw_close(struct rpc_client_stream *s, grpc_status_code st, const char *m, void *arg)
{
    (void)s, (void)m;
    struct raw *r = arg;
    pthread_mutex_lock(&r->mu);
    r->status = st;
    r->closed = true;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* A valid Batch for member 1: one heartbeat claiming to come from member 0. */
static size_t heartbeat_batch(uint8_t **out)
{
    struct raft_msg hb = heartbeat();
    Craft__Raft__Message pm, *pmp = &pm;
    peer_msg_to_pb(&hb, &pm, NULL, NULL);
    Craft__Raft__Batch b = CRAFT__RAFT__BATCH__INIT;
    b.cluster_id = cl.id;
    b.n_msgs = 1;
    b.msgs = &pmp;
    size_t len;
    cr_assert_eq(rpc_msg_pack(&b.base, out, &len), 0);
    return len;
}

/* Opens Peer.Raft on member 1 with the given certificate - as member 0's replicator does - and
 * sends one Batch. A member's stream stays open (the receiver never ends it): then this returns
 * GRPC_STATUS_OK once member 1 has counted the Batch. Otherwise the status member 1 ended the
 * stream with. */
static grpc_status_code raft_stream_send(const char *cert, const char *key, const void *msg,
                                         size_t len)
{
    struct rpc_tls t = {.ca_file = C.ca, .cert_file = cert, .key_file = key};
    char target[64], err[256];
    snprintf(target, sizeof target, "127.0.0.1:%d", C.m[1].peer_port);
    struct rpc_channel_config cc = {.target = target, .tls = &t, .server_name = C.m[1].name};
    struct rpc_channel *ch = rpc_channel_create(&cc, err, sizeof err);
    cr_assert(ch, "%s", err);
    struct raw r = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, 0};
    static const struct rpc_client_stream_handler h = {raw_message, raw_close, NULL};
    uint64_t before = stats_of(1).batches_received;
    struct rpc_client_stream *s = rpc_channel_stream_open(ch, RAFT_METHOD, &h, &r);
    cr_assert(s);
    cr_assert_eq(rpc_client_stream_send(s, msg, len, 5000), 0);
    /* Either member 1 ends the stream, or it takes the Batch; polled, bounded by 10 s. */
    int64_t until = hc_now_ms() + 10000;
    grpc_status_code st = GRPC_STATUS_DEADLINE_EXCEEDED;
    for (;;) {
        pthread_mutex_lock(&r.mu);
        bool closed = r.closed;
        grpc_status_code cst = r.status;
        pthread_mutex_unlock(&r.mu);
        if (closed) {
            st = cst;
            break;
        }
        if (stats_of(1).batches_received > before) {
            st = GRPC_STATUS_OK;
            break;
        }
        if (hc_now_ms() >= until)
            break;
        nanosleep(&(struct timespec){0, 5 * 1000000L}, NULL);
    }
    rpc_client_stream_cancel(s);
    rpc_channel_destroy(ch);
    return st;
}

Test(peer_auth, a_raft_stream_with_a_certificate_naming_no_member_is_refused, .init = setup,
     .fini = teardown, .timeout = 60)
{
    start_peer(1, 0);
    uint8_t *batch;
    size_t len = heartbeat_batch(&batch);

    /* A certificate of the cluster's CA that names no member (the client certificate), sending
     * a well-formed Batch that claims to come from member 0: refused, and nothing taken. */
    cr_assert_eq(raft_stream_send(C.cert, C.key, batch, len), GRPC_STATUS_PERMISSION_DENIED);
    struct peer_stats s = stats_of(1);
    cr_assert_eq(s.streams_refused, 1);
    cr_assert_eq(s.batches_received + s.msgs_received + s.msgs_dropped, 0,
                 "a refused stream's Batch reached the member");

    /* The same bytes on the same path with member 0's certificate are taken (counted as
     * dropped: no node is attached), so the refusal above is the certificate's doing. */
    char cert0[400], key0[400];
    snprintf(cert0, sizeof cert0, "%s/%s.pem", C.certs, C.m[0].name);
    snprintf(key0, sizeof key0, "%s/%s-key.pem", C.certs, C.m[0].name);
    cr_assert_eq(raft_stream_send(cert0, key0, batch, len), GRPC_STATUS_OK);
    cr_assert_eq(wait_counter(1, FIELD(msgs_dropped), 1), 1);
    s = stats_of(1);
    cr_assert_eq(s.streams_refused, 1);
    cr_assert_eq(s.batches_received, 1);
    free(batch);
}
