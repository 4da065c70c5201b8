/* rpc: a small C API over the gRPC C core (1.51): servers, channels, unary calls, ordered
 * bidirectional streams, mutual TLS and protobuf-c messages. It knows nothing of Raft.
 *
 * What this module promises
 * - Security by default: a server or channel needs a struct rpc_tls (CA + own certificate +
 *   key, read and checked with OpenSSL at create time) and then speaks mutual TLS: a server
 *   requires and verifies a client certificate against the CA; a channel verifies the server
 *   against the CA and an expected name. Plaintext only with an explicit `insecure = true`
 *   (tests and local demos). A peer refused at the handshake makes calls fail UNAVAILABLE.
 *   With reload_sec the files are re-checked and a changed set that passes is taken for new
 *   handshakes (one that fails is not: the old set stays, the log says why); with
 *   allowed_cn / allowed_hostname the other side's names are pinned in the handshake, and with
 *   crl_file a certificate its CRL lists is refused there.
 * - Threads: a server runs a fixed pool of `threads` pthreads, each draining its own gRPC
 *   completion queue; every event of one call (its handler, its stream callbacks) runs on
 *   the one pool thread that accepted it, so callbacks of one stream never run concurrently
 *   and arrive in order. A channel likewise runs `threads` callback threads; async-call
 *   callbacks and client-stream callbacks run there. Callbacks must not block for long and
 *   must never call rpc_server_shutdown / rpc_channel_destroy or a blocking send.
 * - Completion from any thread: a handler may return without answering and complete the call
 *   later from any thread (rpc_call_reply / rpc_call_reply_msg / rpc_call_fail), exactly once.
 *   The same holds for rpc_stream_finish on a server stream. That completion is what frees
 *   the handle; a call whose peer went away (cancel, deadline, server shutdown) still needs
 *   it: completing it is then a harmless no-op that returns RPC_ECLOSED and frees it. This is
 *   the one rule that keeps shutdown free of leaks and use-after-free.
 * - Shutdown: rpc_server_shutdown stops accepting, waits up to grace_ms for calls in flight
 *   to finish, cancels the rest, waits for gRPC to release them, joins the threads and frees
 *   everything it owns. Handles still held by handlers stay valid (as inert husks) until the
 *   handler completes them. rpc_channel_destroy cancels every call and stream in flight (each
 *   async callback fires exactly once, with CANCELLED; each stream's on_close fires once),
 *   joins its threads and frees the channel.
 * - Status: gRPC status codes and messages reach callers unchanged; an unknown method gives
 *   UNIMPLEMENTED, a request over max_recv_bytes RESOURCE_EXHAUSTED, an undecodable protobuf
 *   INVALID_ARGUMENT (the handler never sees it), a missed deadline DEADLINE_EXCEEDED.
 * - Bounds: thread counts, message sizes, per-stream send queues, async calls in flight per
 *   channel and concurrent streams per connection are config fields; 0 picks the default
 *   documented next to each field. A full queue is an error return (RPC_EFULL), never an
 *   unbounded buffer.
 * - gRPC init: every server and channel calls grpc_init() when created and grpc_shutdown()
 *   when destroyed (gRPC reference-counts them); the caller needs no global init. Create and
 *   destroy them after fork(), never before. gRPC may finish shutting down on its own threads
 *   after the last destroy; at exit, with none left, rpc waits (up to 5 s) until it has, so
 *   no gRPC thread still runs under OpenSSL's exit handler. The first one sets GRPC_POLL_STRATEGY=poll
 *   unless the environment names an engine (the thread waiting on a queue reads its calls'
 *   sockets; see docs/rpc.md), so create the first one before starting threads that read
 *   the environment.
 * - Errors: functions return 0 or a negative RPC_E* code; create functions return NULL and
 *   write a one-line reason into err[errlen]. Nothing here exits or aborts on bad input.
 *
 * docs/rpc.md has the longer story (threading, shutdown, bounds, TLS and identity).
 */
#ifndef CRAFT_RPC_H
#define CRAFT_RPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <grpc/status.h>
#include <protobuf-c/protobuf-c.h>

enum {
    RPC_OK = 0,
    RPC_EINVAL = -1,    /* bad argument or configuration */
    RPC_ENOMEM = -2,
    RPC_ETLS = -3,      /* certificate or key file missing, not PEM, or not matching */
    RPC_EBIND = -4,     /* cannot listen on the address */
    RPC_ESTATE = -5,    /* wrong moment: register after start, completed twice, ... */
    RPC_EFULL = -6,     /* a bounded queue is full: retry later */
    RPC_ECLOSED = -7,   /* the call, stream, server or channel is finished or closing */
    RPC_ETIMEDOUT = -8, /* a blocking send waited timeout_ms for room */
    RPC_ENOIDENT = -9,  /* no verified peer identity (insecure connection) */
};

/* Returns a static description of an RPC_E* code. */
const char *rpc_strerror(int code);

/* Defaults used when a config field is 0. */
#define RPC_DEFAULT_MAX_MSG (4u << 20)      /* 4 MiB, both directions */
#define RPC_DEFAULT_SERVER_THREADS 2
#define RPC_MAX_THREADS 64
#define RPC_DEFAULT_CHANNEL_THREADS 1
#define RPC_DEFAULT_STREAM_QUEUE 1024       /* queued outgoing messages per stream */
#define RPC_DEFAULT_MAX_INFLIGHT 65536      /* async calls + streams per channel */
#define RPC_DEFAULT_MAX_STREAMS 4096        /* concurrent HTTP/2 streams per connection */
#define RPC_DEFAULT_HANDSHAKE_MS 10000      /* server: TCP accept to HTTP/2 ready (gRPC's: 120 s) */
#define RPC_DEFAULT_SERVER_MEMORY (256u << 20) /* server: gRPC's memory quota per server */
#define RPC_DEFAULT_RECONNECT_MAX_MS 1000   /* reconnect backoff ceiling of a channel */

/* PEM files. A server needs all three. A channel needs ca_file; cert_file and key_file are
 * given together or not at all (a client without a certificate is refused by our servers,
 * which is useful in tests).
 *
 * Reload (reload_sec > 0): the files are polled every reload_sec seconds and a changed set is
 * taken for the handshakes that follow (connections already up keep theirs), without a restart.
 * A set is taken only when it passes the checks create makes (PEM, key matching certificate):
 * a half-written, truncated or mismatched file is not taken, the set in use is kept and the
 * reason is logged (error level, once per distinct reason). A change takes effect within
 * 2 * reload_sec (one poll here, one of gRPC's provider). Checked copies are kept mode 0600 in a
 * directory made inside stage_dir (default $TMPDIR or /tmp) and removed when the last server
 * or channel using them is gone. Servers and channels with the same fields share one poller.
 * reload_sec = 0: the files are read once at create. */
struct rpc_tls {
    const char *ca_file;
    const char *cert_file;
    const char *key_file;
    unsigned reload_sec;
    const char *stage_dir;
    /* Name pinning (etcd's --peer-cert-allowed-cn / --peer-cert-allowed-hostname), on top of the
     * CA check: comma-separated lists, NULL or "" for none, at most one of the two. With
     * allowed_cn the other side's certificate (a client's for a server, the server's for a
     * channel) must have one of these subject CNs; with allowed_hostname one of its DNS or IP
     * SANs must equal one of these (DNS names case-insensitively, no wildcards). Checked in the
     * handshake (gRPC's TLS credentials with a verifier of ours): a refused certificate makes
     * the connection fail, calls see UNAVAILABLE, and the refusal is logged (rate-limited). */
    const char *allowed_cn;
    const char *allowed_hostname;
    /* Revocation (etcd's --client-crl-file / --peer-crl-file): a PEM file of one or more CRLs,
     * each signed by a CA of ca_file (checked at create: a clear error otherwise). The other
     * side's leaf certificate is refused in the handshake when a CRL of its issuer lists its
     * serial. With reload_sec the file is re-checked with the others; a bad one keeps the set
     * in force and is logged. A CRL's nextUpdate is not enforced (as etcd). NULL or "": none. */
    const char *crl_file;
};

/* TLS 1.2 cipher suites of every server and channel of the process (etcd's --cipher-suites):
 * comma-separated IANA names ("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256") or OpenSSL ones.
 * gRPC 1.51 reads its list once, from GRPC_SSL_CIPHER_SUITES, when it first builds a TLS
 * context, so this must run before the first server or channel is created. TLS 1.3 suites
 * cannot be chosen (1.51 leaves them to OpenSSL; all three are AEAD): naming one is an error,
 * as is a name OpenSSL does not know. On 0, openssl_names (if not NULL) gets the list in
 * OpenSSL's names, for other TLS users of the process. 0, RPC_EINVAL (err says which name) or
 * RPC_ESTATE (gRPC already started). */
int rpc_tls_set_cipher_suites(const char *names, char *openssl_names, size_t n, char *err,
                              size_t errlen);

/* Checks the files as create would: readable, PEM, key matching certificate. Expiry is not
 * checked here (the TLS handshake refuses expired certificates). 0 or RPC_ETLS/RPC_EINVAL. */
int rpc_tls_check(const struct rpc_tls *tls, bool need_cert, char *err, size_t errlen);

/* For TLS users outside gRPC (the metrics listener): checks crl_file as a server with
 * rpc_tls.crl_file does at create and at each reload (every PEM CRL in it parses, none is cut
 * short, each is signed by a CA of ca_file with the CRL's issuer name) and, when store is not
 * NULL and the checks pass, adds its CRLs to store (an OpenSSL X509_STORE; nothing is added
 * otherwise). The file is read once. 0, or RPC_ETLS with err filled. */
struct x509_store_st;
int rpc_tls_load_crls(const char *crl_file, const char *ca_file, struct x509_store_st *store,
                      char *err, size_t errlen);

/* ------------------------------------------------------------------------------------ */
/* Messages (protobuf-c)                                                                  */

/* Packs m into a malloc'd buffer (*out, *len; free() it). 0 or RPC_ENOMEM. */
int rpc_msg_pack(const ProtobufCMessage *m, uint8_t **out, size_t *len);
/* Unpacks; NULL if the bytes are not a valid message of desc. Free with
 * protobuf_c_message_free_unpacked(m, NULL). */
ProtobufCMessage *rpc_msg_unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
                                 size_t len);

/* ------------------------------------------------------------------------------------ */
/* Server                                                                                 */

struct rpc_server;
struct rpc_call;   /* one unary call, handed to a handler */
struct rpc_stream; /* one server side of a bidirectional stream */

struct rpc_server_config {
    const char *listen;        /* "host:port"; port 0 picks a free port (see rpc_server_port) */
    const struct rpc_tls *tls; /* required unless insecure */
    bool insecure;             /* plaintext: tests and demos only */
    int threads;               /* completion-queue threads; default 2, at most 64 */
    size_t max_recv_bytes;     /* largest request message; default 4 MiB; larger:
                                  RESOURCE_EXHAUSTED before any handler runs */
    size_t max_send_bytes;     /* largest reply message; default 4 MiB */
    int max_streams;           /* concurrent calls per client connection; default 4096 */
    int stream_queue;          /* outgoing messages queued per server stream; default 1024 */
    int handshake_timeout_ms;  /* a connection that has not finished its TLS and HTTP/2
                                  handshakes this long after accept is closed (garbage, or an
                                  idle socket, before TLS); default 10 s */
    size_t max_memory_bytes;   /* gRPC's memory for this server's connections and calls (its
                                  resource quota: read buffers, HTTP/2 state, call arenas);
                                  under pressure gRPC sends GOAWAY to connections with no
                                  calls, then cancels calls (RESOURCE_EXHAUSTED); default
                                  256 MiB. Messages queued by handlers are not counted. */
};

/* Unary handler: req/len are valid only until the handler returns. The handler (or anyone it
 * hands `call` to) completes the call exactly once, now or later, from any thread. */
typedef void (*rpc_unary_fn)(struct rpc_call *call, const uint8_t *req, size_t len, void *ctx);
/* Same with the request decoded as req_desc; req is freed when the handler returns. A request
 * that does not decode is answered INVALID_ARGUMENT without calling the handler. */
typedef void (*rpc_unary_msg_fn)(struct rpc_call *call, const ProtobufCMessage *req, void *ctx);

/* Bidirectional stream handler. All three callbacks of one stream run on one pool thread, in
 * order: on_open, on_message*, on_close (exactly once). `user` is what on_open returned (or
 * the registration ctx when on_open is NULL). on_close's status is GRPC_STATUS_OK when the
 * client half-closed cleanly, CANCELLED when the call died (client cancel, deadline,
 * connection loss, server shutdown). After on_message returns, the next message is read
 * only while the stream's send queue is below stream_queue: a slow peer reader slows
 * reading, so an echo-style handler (one send per message) never sees RPC_EFULL. The
 * handler must call rpc_stream_finish exactly once (before or after on_close); that frees
 * the stream once on_close has also run. */
struct rpc_stream_handler {
    void *(*on_open)(struct rpc_stream *s, void *ctx);
    void (*on_message)(struct rpc_stream *s, const uint8_t *data, size_t len, void *user);
    void (*on_close)(struct rpc_stream *s, grpc_status_code status, void *user);
    /* Optional: a write completed and no message is queued behind it, so one sent now goes
     * out at once. A sender that gathers what arrives while a message is being written can
     * send it all as one message from here (no timer). Same thread as the other callbacks;
     * never after on_close nor after rpc_stream_finish. */
    void (*on_sent)(struct rpc_stream *s, void *user);
};

/* Creates a server bound to cfg->listen (not yet serving). NULL + err on failure. */
struct rpc_server *rpc_server_create(const struct rpc_server_config *cfg, char *err,
                                     size_t errlen);
/* The bound TCP port (useful with port 0). */
int rpc_server_port(const struct rpc_server *srv);

/* Calls of each registered method since the server was created, counted lock-free (for
 * grpc_server_started_total / grpc_server_handled_total, docs/metrics.md): started = accepted,
 * handled[code] = finished with that status code (a call that ended without a status sent - the
 * client went away first - counts as CANCELLED). Calls of unknown methods are not counted. */
#define RPC_STATUS_CODES 17
struct rpc_method_stat {
    const char *name; /* "/package.Service/Method" */
    bool stream;      /* a stream handler (else unary) */
    uint64_t started;
    uint64_t handled[RPC_STATUS_CODES];
};
/* fn once per registered method, on the calling thread; after registration is over (once the
 * server is started), from any thread, until rpc_server_shutdown. */
void rpc_server_method_stats(struct rpc_server *srv,
                             void (*fn)(void *arg, const struct rpc_method_stat *st), void *arg);
/* Register handlers by full method name "/package.Service/Method", before rpc_server_start.
 * 0, RPC_EINVAL (bad name, duplicate) or RPC_ESTATE (already started). */
int rpc_server_register_unary(struct rpc_server *srv, const char *method, rpc_unary_fn fn,
                              void *ctx);
int rpc_server_register_unary_msg(struct rpc_server *srv, const char *method,
                                  const ProtobufCMessageDescriptor *req_desc,
                                  rpc_unary_msg_fn fn, void *ctx);
int rpc_server_register_stream(struct rpc_server *srv, const char *method,
                               const struct rpc_stream_handler *h, void *ctx);
/* Starts the threads and begins accepting calls. */
int rpc_server_start(struct rpc_server *srv);
/* Stops accepting; waits up to grace_ms for calls in flight to complete, then cancels the
 * rest; joins the threads and frees the server (srv is invalid afterwards). Also fine on a
 * server that was never started. Never call it from a handler or callback. */
void rpc_server_shutdown(struct rpc_server *srv, int grace_ms);

/* Complete a unary call: exactly one of these, once. 0 when the reply was handed to gRPC,
 * RPC_ECLOSED when the call had already died (nothing sent; the handle is freed either
 * way), RPC_ESTATE when the call was already completed (a bug in the caller), RPC_ENOMEM. */
int rpc_call_reply(struct rpc_call *call, const void *data, size_t len);
int rpc_call_reply_msg(struct rpc_call *call, const ProtobufCMessage *msg);
int rpc_call_fail(struct rpc_call *call, grpc_status_code code, const char *msg);
/* True once the call is known to be dead (cancelled, deadline, shutdown): a late handler can
 * skip work. */
bool rpc_call_is_cancelled(struct rpc_call *call);

/* Verified identity of the TLS peer, from gRPC's auth context. */
#define RPC_PEER_MAX_SANS 16
#define RPC_PEER_NAME_MAX 256
struct rpc_peer {
    char cn[RPC_PEER_NAME_MAX];                   /* subject common name ("" if none) */
    int nsans;                                    /* entries in sans */
    char sans[RPC_PEER_MAX_SANS][RPC_PEER_NAME_MAX]; /* DNS names and IP addresses */
};
/* 0, RPC_ENOIDENT (insecure: no verified certificate) or RPC_ECLOSED (the call is gone). */
int rpc_call_peer_identity(struct rpc_call *call, struct rpc_peer *out);
int rpc_stream_peer_identity(struct rpc_stream *s, struct rpc_peer *out);
/* The value of the client's request metadata `key` (lower case, as gRPC keeps it), e.g. etcd's
 * "token": 1 with out[outlen] filled (NUL-terminated), 0 when absent, RPC_EINVAL when it does
 * not fit in outlen - 1 bytes, RPC_ECLOSED when the call is gone. */
int rpc_call_metadata(struct rpc_call *call, const char *key, char *out, size_t outlen);
int rpc_stream_metadata(struct rpc_stream *s, const char *key, char *out, size_t outlen);

/* Queue one message on a server stream; messages go out in rpc_stream_send order, whatever
 * the calling threads. Never blocks: RPC_EFULL when stream_queue messages are already
 * waiting, RPC_ECLOSED when the stream is dead or finished, RPC_ENOMEM. */
int rpc_stream_send(struct rpc_stream *s, const void *data, size_t len);
int rpc_stream_send_msg(struct rpc_stream *s, const ProtobufCMessage *msg);
/* Stops (hold) or resumes reading requests of a server stream: while held, on_message is not
 * called and the client's sends are held back by HTTP/2 flow control (the one message being
 * read when hold is set is still delivered). For a handler that has work outstanding per
 * request and must bound it. Any thread, until rpc_stream_finish. 0 or RPC_ECLOSED. */
int rpc_stream_hold_reads(struct rpc_stream *s, bool hold);
/* Ends the stream with a status after every queued message has been written. Exactly once
 * per stream, from any thread; same returns as rpc_call_reply. */
int rpc_stream_finish(struct rpc_stream *s, grpc_status_code code, const char *msg);

/* ------------------------------------------------------------------------------------ */
/* Channel (client)                                                                       */

struct rpc_channel;
struct rpc_client_stream;

struct rpc_channel_config {
    const char *target;          /* "host:port" */
    const struct rpc_tls *tls;   /* required unless insecure; cert/key optional */
    const char *server_name;     /* name the server certificate must carry; default: the
                                    host of target (an IP matches an IP SAN) */
    bool insecure;               /* plaintext: tests and demos only */
    int threads;                 /* callback threads; default 1, at most 64 */
    size_t max_recv_bytes;       /* default 4 MiB; larger replies: RESOURCE_EXHAUSTED */
    size_t max_send_bytes;       /* default 4 MiB; larger requests: RESOURCE_EXHAUSTED */
    int max_inflight;            /* calls in flight (async and blocking) + open streams;
                                    default 65536; beyond it calls return RPC_EFULL and
                                    rpc_channel_stream_open returns NULL */
    int stream_queue;            /* outgoing messages queued per client stream; default 1024 */
    bool wait_for_ready;         /* false (default): a call made while the server is
                                    unreachable fails UNAVAILABLE at once; true: it waits
                                    for a connection until its deadline */
    int reconnect_max_ms;        /* reconnect backoff ceiling; default 1000 ms */
};

/* Outcome of a call. data is malloc'd (NULL when there is no reply). */
struct rpc_result {
    grpc_status_code status;
    char message[256]; /* status message, truncated */
    uint8_t *data;
    size_t len;
};
void rpc_result_free(struct rpc_result *r);

struct rpc_channel *rpc_channel_create(const struct rpc_channel_config *cfg, char *err,
                                       size_t errlen);
/* Cancels every call and stream in flight (callbacks fire, once, with CANCELLED), waits for
 * gRPC to release them, joins the threads and frees the channel. Not from a callback, and
 * not while another thread is still starting calls on ch. */
void rpc_channel_destroy(struct rpc_channel *ch);

/* Blocking unary call; deadline_ms <= 0 means none. Fills *out (free with rpc_result_free)
 * and returns 0 whenever the call ran, whatever its status; RPC_ECLOSED/RPC_EFULL/RPC_EINVAL/
 * RPC_ENOMEM when it could not start (then out->status says so too). It waits on a private
 * completion queue, so it is safe from any thread, channel callbacks included. */
int rpc_channel_call(struct rpc_channel *ch, const char *method, const void *req, size_t len,
                     int deadline_ms, struct rpc_result *out);
/* Same with protobuf-c messages: on OK, *resp is the decoded reply (free with
 * protobuf_c_message_free_unpacked); an undecodable reply becomes INVALID_ARGUMENT. */
int rpc_channel_call_msg(struct rpc_channel *ch, const char *method, const ProtobufCMessage *req,
                         const ProtobufCMessageDescriptor *resp_desc, int deadline_ms,
                         ProtobufCMessage **resp, struct rpc_result *out);

/* Async unary call. On 0, cb fires exactly once on a channel thread with the outcome; res is
 * valid during the callback only (a callback may keep res->data by setting it to NULL and
 * freeing it later). On error (RPC_EFULL, RPC_ECLOSED, ...) cb never fires. */
typedef void (*rpc_done_fn)(struct rpc_result *res, void *arg);
int rpc_channel_call_async(struct rpc_channel *ch, const char *method, const void *req,
                           size_t len, int deadline_ms, rpc_done_fn cb, void *arg);

/* Client side of a bidirectional stream. Callbacks run on one channel thread, in order:
 * on_message* then on_close exactly once, with the final status and message. */
struct rpc_client_stream_handler {
    void (*on_message)(struct rpc_client_stream *s, const uint8_t *data, size_t len, void *arg);
    void (*on_close)(struct rpc_client_stream *s, grpc_status_code status, const char *msg,
                     void *arg);
    /* Optional, as rpc_stream_handler.on_sent: a write completed and nothing is queued behind
     * it. Never after on_close, nor once the handle was given back (close/cancel). */
    void (*on_sent)(struct rpc_client_stream *s, void *arg);
};
/* Opens a stream (no deadline; it lives until closed, cancelled or the channel goes). NULL
 * when the channel is closing or full. */
struct rpc_client_stream *rpc_channel_stream_open(struct rpc_channel *ch, const char *method,
                                                  const struct rpc_client_stream_handler *h,
                                                  void *arg);
/* Queues one message; messages go out in order. When stream_queue messages are waiting it
 * waits up to timeout_ms for room (0: do not wait) and then returns RPC_EFULL/RPC_ETIMEDOUT.
 * RPC_ECLOSED when the stream is dead. Never call with timeout_ms > 0 from a callback. */
int rpc_client_stream_send(struct rpc_client_stream *s, const void *data, size_t len,
                           int timeout_ms);
/* Half-closes after the queued messages (the server sees the end of the stream) and gives
 * the handle back: no more sends; on_close still fires once, after which s is freed. */
int rpc_client_stream_close(struct rpc_client_stream *s);
/* Cancels the stream now (on_close fires with CANCELLED) and gives the handle back. */
int rpc_client_stream_cancel(struct rpc_client_stream *s);

#endif
