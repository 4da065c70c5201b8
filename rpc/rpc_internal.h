/* Internals shared by rpc_*.c; not part of the contract. */
#ifndef CRAFT_RPC_INTERNAL_H
#define CRAFT_RPC_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <grpc/byte_buffer.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>

#include "rpc/rpc.h"

#define RPC_CONTAINER_OF(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* Every tag we hand gRPC points at one of these; the completion-queue loop calls fn. */
struct rpc_tag {
    void (*fn)(struct rpc_tag *t, bool ok);
};

/* grpc_init(), after choosing gRPC's "poll" engine unless GRPC_POLL_STRATEGY is set: with
 * it the thread that waits on a completion queue also reads the sockets of that queue's
 * calls, so a message is handled by the thread that received it. Under the default epoll1
 * engine one thread polls for the whole process and wakes the queue's thread for each
 * event; docs/benchmarks.md measures the difference. The first call also turns off the
 * deadlock detector of gRPC's abseil mutexes (rpc_absl.cc). */
void rpc_grpc_init(void);
/* grpc_shutdown() for a server or channel being destroyed. gRPC may finish its library shutdown
 * on one of its own threads after the last such call (an internal reference, such as a channel's
 * last call, is often dropped there), and a process that exits meanwhile races gRPC's threads
 * with OpenSSL's exit handler, which then leaks or frees under them the per-thread state
 * (error queues, random generators) of threads still exiting; LeakSanitizer reported it. So the
 * first rpc_grpc_init registers an exit handler that, when no server or channel is left, waits
 * (up to RPC_SHUTDOWN_WAIT_MS) until gRPC says it is no longer initialized. */
void rpc_grpc_shutdown(void);
#define RPC_SHUTDOWN_WAIT_MS 5000
/* rpc_absl.cc: absl::SetMutexDeadlockDetectionMode(kIgnore). */
void rpc_absl_deadlock_detection_off(void);

/* A condition variable whose timed waits use CLOCK_MONOTONIC (not moved by clock changes). */
void rpc_cond_init_monotonic(pthread_cond_t *cv);

/* Runs until the queue is shut down and drained. arg is a grpc_completion_queue *. */
void *rpc_cq_loop(void *arg);

void rpc_errf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Loaded, checked PEM text (NUL-terminated, malloc'd; cert/key NULL when absent). */
struct rpc_pem {
    char *ca, *cert, *key;
};
int rpc_pem_load(const struct rpc_tls *tls, bool need_cert, struct rpc_pem *out, char *err,
                 size_t errlen);
void rpc_pem_free(struct rpc_pem *p);

/* True when tls needs gRPC's TLS credentials (rpc_tls.c) rather than the static SSL ones:
 * reloading, or name pinning. */
bool rpc_tls_dynamic(const struct rpc_tls *tls);
/* rpc_tls.c: reloadable TLS material shared by servers and channels with the same struct
 * rpc_tls (rpc_tls_dynamic). get: a reference (the files checked as rpc_pem_load does at the
 * first get; NULL + err when they fail); put: gives it back (the last one stops the poller and
 * removes the staged copies). The credentials watch the staged copies. */
struct rpc_tls_src;
struct rpc_tls_src *rpc_tls_src_get(const struct rpc_tls *tls, bool need_cert, char *err,
                                    size_t errlen);
void rpc_tls_src_put(struct rpc_tls_src *s);
grpc_server_credentials *rpc_tls_src_server_creds(struct rpc_tls_src *s);
grpc_channel_credentials *rpc_tls_src_channel_creds(struct rpc_tls_src *s);

/* Codec between bytes and grpc_byte_buffer. */
grpc_byte_buffer *rpc_bb_from_bytes(const void *data, size_t len);
grpc_byte_buffer *rpc_bb_from_msg(const ProtobufCMessage *m);
/* Copies the whole buffer into *out (malloc'd, at least 1 byte allocated). 0 or RPC_ENOMEM/
 * RPC_EINVAL. */
int rpc_bb_to_bytes(grpc_byte_buffer *bb, uint8_t **out, size_t *len);

/* Fills out from a live call's auth context. */
int rpc_peer_from_call(grpc_call *gc, struct rpc_peer *out);

/* Copies a status-details slice into a fixed buffer. */
void rpc_slice_to_str(grpc_slice s, char *buf, size_t n);

gpr_timespec rpc_deadline(int ms);

/* A config field: 0 (or negative) picks def, anything else is clamped to [lo, hi]. */
int rpc_clamp_int(int v, int def, int lo, int hi);
/* A message-size config field as gRPC's int channel argument (0 = RPC_DEFAULT_MAX_MSG). */
int rpc_size_arg(size_t v);

#endif
