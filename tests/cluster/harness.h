/* harness.h: real craftd processes on loopback for integration and fault tests.
 *
 * A cluster lives in a fresh temporary directory: certificates made by certs/craft-certs, one
 * data directory and one log file per member, ports picked free on 127.0.0.1. Members are
 * started with fork+exec of the craftd built by Bazel (found through the test's runfiles), and
 * can be stopped (SIGTERM), killed (SIGKILL), paused (SIGSTOP) and restarted with the same flags
 * and data. Clients speak mutual TLS with a client certificate. Waits are bounded polls of the
 * members' Status (a process start offers no event to wait on).
 */
#ifndef CRAFT_TESTS_CLUSTER_HARNESS_H
#define CRAFT_TESTS_CLUSTER_HARNESS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "rpc/rpc.h"
#include "services/proto/etcd/rpc.pb-c.h"
#include "services/proto/nodepb.pb-c.h"

#define HC_MAX 7

struct hc_member {
    char name[16];
    int client_port, peer_port;
    pid_t pid; /* 0 when not running */
    char data_dir[512], log[512];
    struct rpc_channel *ch; /* client channel, made on first use */
};

struct hc {
    int n;
    int heartbeat_ms, election_ms, proposal_timeout_ms;
    char dir[256], certs[300], craftd[512];
    struct rpc_tls client_tls;
    char ca[400], cert[400], key[400];
    struct hc_member m[HC_MAX];
    char extra_flags[512]; /* appended to every member's command line (space separated) */
    /* Membership tests: a member with unlisted set is left out of every --initial-cluster (a
     * spare, not yet added); one with existing set starts with --initial-cluster-state existing
     * (it joins a running cluster, as after `etcdctl member add`). Both false after hc_setup. */
    bool unlisted[HC_MAX];
    bool existing[HC_MAX];
};

/* Makes the directory, certificates and ports; starts nothing. Fails the test on error. */
void hc_setup(struct hc *c, int n, int heartbeat_ms, int election_ms);
void hc_start(struct hc *c, int i);
void hc_start_all(struct hc *c);
void hc_signal(struct hc *c, int i, int sig); /* SIGKILL/SIGTERM also reap the process */
/* Stops every member and removes the directory. */
void hc_teardown(struct hc *c);

/* Status of member i: 0 and *out (free with protobuf_c_message_free_unpacked), or -1. */
int hc_status(struct hc *c, int i, Craft__Node__StatusReply **out);
/* Index of the member that is leader and is recognised by every running member that answers,
 * waiting up to timeout_ms; -1 if none. */
int hc_wait_leader(struct hc *c, int timeout_ms);
/* Waits until member i's KV store has reached revision rev; false on timeout. */
bool hc_wait_revision(struct hc *c, int i, int64_t rev, int timeout_ms);

/* After a restart, apply exactly once: waits until member i and every other running member
 * that answers report the same applied index and the same revision (caught up, nothing in
 * between), and, when rev > 0, that revision is exactly rev. An entry applied twice shows as a
 * revision above rev or above the others' at the same applied index. Fails the test (with every
 * member's figures) when that is not reached within timeout_ms; returns the applied index. */
uint64_t hc_assert_exact_state(struct hc *c, int i, int64_t rev, int timeout_ms);

/* Blocking etcd KV Put on member i (any member: followers forward); returns the gRPC status,
 * *rev set to the write's revision on OK. */
grpc_status_code hc_put(struct hc *c, int i, const char *key, const char *val, int deadline_ms,
                        int64_t *rev);
/* The same Put, async (rpc_channel_call_async rules: 0 and cb fires once, or an rpc error). */
int hc_put_async(struct hc *c, int i, const char *key, const char *val, int deadline_ms,
                 rpc_done_fn cb, void *arg);
/* Blocking etcd KV Range of one key on member i (linearizable unless serializable): 1 found
 * (value copied to val), 0 not found, -1 failed. */
int hc_get(struct hc *c, int i, const char *key, char *val, size_t vlen, bool serializable);

struct rpc_channel *hc_channel(struct hc *c, int i);
int64_t hc_now_ms(void);
/* A loopback port that could be bound just now, below the kernel's ephemeral range, never the
 * same twice in one process. */
int hc_free_port(void);
/* Pulls the last lines of member i's log into the test output (for failures). */
void hc_dump_log(struct hc *c, int i);
/* Whether member i's log has a line containing needle. */
bool hc_log_has(struct hc *c, int i, const char *needle);
/* The same, polling (bounded: there is no event to wait on) for up to ms. */
bool hc_log_soon(struct hc *c, int i, const char *needle, int ms);
/* Puts keys key/<from>..key/<from+n-1> (4 digits) on member i, each value "v<k>-" padded with 'x'
 * to vlen bytes; every put must be acknowledged (the test fails otherwise). Returns the last
 * put's revision. */
int64_t hc_put_keys(struct hc *c, int i, int from, int n, size_t vlen);
/* The index of member i's newest snapshot file (<data-dir>/snap/<term>-<index>.snap), 0 if none. */
uint64_t hc_newest_snap_index(struct hc *c, int i);
/* Waits (bounded poll) for member i to exit on its own; its exit status (128 + signal if killed
 * by one), or -1 if it still runs after timeout_ms. */
int hc_wait_exit(struct hc *c, int i, int timeout_ms);

#endif
