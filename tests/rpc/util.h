/* Shared helpers for the rpc tests: certificates made once per test binary (before Criterion
 * forks), an echo service with counters, small waiting primitives. */
#ifndef CRAFT_TESTS_RPC_UTIL_H
#define CRAFT_TESTS_RPC_UTIL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "rpc/rpc.h"

/* Paths of one identity inside the test certificate directory. Layout:
 *   a/: ca, server (node: localhost, 127.0.0.1), client, node-a (node: node-a.craft.test,
 *       localhost, 127.0.0.1), oldclient (expired), oldserver (node, expired)
 *   b/: ca (another CA), stranger (client of CA b), server-b (node of CA b: localhost,
 *       127.0.0.1) */
struct tt_tls {
    char ca[512], cert[512], key[512];
    struct rpc_tls tls;
};
/* ca_dir "a" or "b"; name NULL for no certificate (CA only). */
void tt_tls(struct tt_tls *t, const char *ca_dir, const char *name);
const char *tt_certs_dir(void);

/* Test size: CRAFT_RPC_SCALE (default 1.0) multiplies the big counts; at least `min`. */
long tt_scaled(long n, long min);

/* Counters the echo service bumps; reset by tt_server_start. */
struct tt_counts {
    atomic_int echo, echo_msg, who, hold, stream_open, stream_msgs, stream_close;
};
extern struct tt_counts tt_counts;

/* Calls held by the Hold method (completed by the test). */
#define TT_MAX_HELD 4096
struct tt_held {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct rpc_call *calls[TT_MAX_HELD];
    int ncalls;
    struct rpc_stream *streams[TT_MAX_HELD];
    int nstreams;
    int stream_closes; /* on_close of held streams */
    grpc_status_code last_close;
};
extern struct tt_held tt_held;
/* Waits (at most 20 s, then fails the test) until the server holds that many. */
void tt_wait_held(int calls, int streams);

/* Methods of the test service:
 *   /craft.echo.Echo/Echo      raw bytes echoed
 *   /craft.echo.Echo/EchoMsg   EchoRequest -> EchoReply (decoded by the library)
 *   /craft.echo.Echo/Garbage   replies bytes that are no valid protobuf
 *   /craft.echo.Echo/Who       replies "cn=<CN>;san=<a>,<b>..." or "noident"
 *   /craft.echo.Echo/Hold      keeps the call in tt_held.calls unanswered
 *   /craft.echo.Echo/Stream    bidi echo; checks 8-byte big-endian sequence numbers
 *   /craft.echo.Echo/HoldStream  bidi; keeps the stream in tt_held.streams */
#define TT_ECHO "/craft.echo.Echo/Echo"
#define TT_ECHO_MSG "/craft.echo.Echo/EchoMsg"
#define TT_GARBAGE "/craft.echo.Echo/Garbage"
#define TT_WHO "/craft.echo.Echo/Who"
#define TT_HOLD "/craft.echo.Echo/Hold"
#define TT_STREAM "/craft.echo.Echo/Stream"
#define TT_HOLD_STREAM "/craft.echo.Echo/HoldStream"
/*   /craft.echo.Echo/Sink      bidi; on_message blocks its server thread until tt_gate_open()
 *                              (so the server stops reading), then ends the stream OK */
#define TT_SINK "/craft.echo.Echo/Sink"
void tt_gate_open(void);

/* Starts the test service. server_cert NULL: insecure. cfg may be NULL (defaults); its tls,
 * insecure and listen fields are overwritten (listen = "127.0.0.1:<port>", port 0 = any). */
struct rpc_server *tt_server_start(const char *server_cert, int port,
                                   struct rpc_server_config *cfg);

/* The same with any TLS configuration (NULL: insecure). */
struct rpc_server *tt_server_start_tls(const struct rpc_tls *tls, int port,
                                       struct rpc_server_config *cfg);

/* Channel to 127.0.0.1:port. client_ca/client_cert as tt_tls; client_ca NULL: insecure. cfg
 * may be NULL. */
struct rpc_channel *tt_channel(int port, const char *ca_dir, const char *client_cert,
                               struct rpc_channel_config *cfg);

/* Sequence numbers in stream messages. */
void tt_put_seq(uint8_t *p, uint64_t v);
uint64_t tt_get_seq(const uint8_t *p);

/* A counter with a condition variable, for "wait until N things happened". */
struct tt_latch {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    long n;
};
void tt_latch_init(struct tt_latch *l);
void tt_latch_add(struct tt_latch *l, long d);
/* Waits until n >= target or timeout_ms passes; returns n. */
long tt_latch_wait(struct tt_latch *l, long target, int timeout_ms);

/* Criterion's test processes end without LeakSanitizer's exit-time check, so leaks would go
 * unseen: every suite runs this as its .fini. Under ASan it runs LeakSanitizer now and fails the
 * test on a leak; elsewhere it does nothing. */
void tt_leak_check(void);

#endif
