/* forward.h: followers hand client writes to the leader in batches, over one ordered stream per
 * leader on the peer port (Peer.Forwards, services/proto/raftpb.proto), and the leader answers
 * in batches on the same stream. What a forwarded write means (proposing it, the answer's status)
 * is the caller's (kv_service.c); this module is the transport.
 *
 * What it promises:
 * - Follower side: fwd_submit() queues a command for member `leader`. The stream to it is opened
 *   on first use over the peer's mutual-TLS channel and reopened after it breaks, with backoff
 *   (50 ms doubling to 1 s; forwards during a backoff fail at once). One ForwardBatch is being
 *   written at a time; what is submitted meanwhile goes out packed into the next one as soon as
 *   that write completes (at most max_batch_items items and about max_batch_bytes per message;
 *   no timer, so a lone write is sent at once).
 * - Every submitted forward completes exactly once (done): with the leader's answer, or with
 *   FWD_ENOLEADER when its stream breaks or cannot be used, FWD_ETIMEDOUT at its own deadline,
 *   FWD_ESHUTDOWN when the fwd is destroyed. A late answer for a forward that already completed
 *   is ignored. At most max_inflight forwards wait per stream; beyond that fwd_submit refuses
 *   with FWD_EBUSY (and done never fires).
 * - Leader side (fwd_register): a Peer.Forwards stream is accepted only from a member's verified
 *   certificate (as Peer.Raft; PERMISSION_DENIED otherwise); a batch from another cluster ends it
 *   with FAILED_PRECONDITION, one that does not decode with INVALID_ARGUMENT. Each item goes to
 *   cfg.propose, which answers it exactly once with fwd_reply, now or later from any thread (the
 *   applier). Answers are packed like the follower's batches. A follower never has more than
 *   max_inflight forwards unanswered on a stream, so a batch that would pass that ends the stream
 *   with RESOURCE_EXHAUSTED (bounding the leader's work and queued answers). The stream's context is
 *   reference-counted by every unanswered item, so an answer after the stream ended is dropped,
 *   never written to a dead stream.
 * - Destroy only after the peer (its channels) and the peer server are gone and the node that
 *   answers fwd_reply has stopped.
 */
#ifndef CRAFT_SERVICES_FORWARD_H
#define CRAFT_SERVICES_FORWARD_H

#include <stddef.h>
#include <stdint.h>

#include "rpc/rpc.h"
#include "services/cluster.h"
#include "services/forward_req.h" /* struct fwd_answer */
#include "services/peer.h"

#define FWD_DEFAULT_MAX_INFLIGHT 4096          /* forwards awaiting an answer, per stream */
#define FWD_DEFAULT_MAX_BATCH_ITEMS 512        /* items per ForwardBatch / ForwardReplyBatch */
#define FWD_DEFAULT_MAX_BATCH_BYTES (1u << 20) /* bytes per batch (one larger item goes alone) */

enum {
    FWD_OK = 0,
    FWD_ENOLEADER = -1, /* the stream to the leader broke, or cannot be opened now */
    FWD_ETIMEDOUT = -2, /* no answer by the forward's deadline */
    FWD_EBUSY = -3,     /* max_inflight forwards already wait on this stream */
    FWD_ENOMEM = -4,
    FWD_ESHUTDOWN = -5, /* the fwd is being destroyed */
};

/* Follower side: completion of one forward. err is FWD_OK (a is the leader's answer, valid
 * during the call) or an FWD_E* code (a is NULL). Runs on a peer channel thread, the deadline
 * thread or the destroying thread; it must not block for long. */
typedef void (*fwd_done_fn)(void *arg, int err, const struct fwd_answer *a);

/* Leader side: one forwarded command (valid during the call only); answer it exactly once. */
struct fwd_item;
typedef void (*fwd_propose_fn)(void *ctx, struct fwd_item *item, const uint8_t *cmd, size_t len);

struct fwd_config {
    struct peer *peer;          /* channels, certificates, cluster id */
    const struct cluster *cluster; /* the members one may forward to at first (copied; later
                                    * tables come through fwd_set_cluster) */
    fwd_propose_fn propose;     /* leader side */
    void *propose_ctx;
    int max_inflight;           /* 0 = FWD_DEFAULT_MAX_INFLIGHT */
    int max_batch_items;        /* 0 = FWD_DEFAULT_MAX_BATCH_ITEMS */
    size_t max_batch_bytes;     /* 0 = FWD_DEFAULT_MAX_BATCH_BYTES */
    size_t max_answer_bytes;    /* larger results are answered RESOURCE_EXHAUSTED instead of
                                   being sent (the peers' message limit); 0 = 4 MiB */
};

struct fwd;

struct fwd *fwd_create(const struct fwd_config *cfg);
/* Fails every forward still waiting (FWD_ESHUTDOWN) and refuses new ones; answers arriving
 * afterwards are dropped. Call it before stopping what done callbacks use (the node). */
void fwd_stop(struct fwd *f);
/* fwd_stop, then stops the deadline thread and frees. */
void fwd_destroy(struct fwd *f);

/* Registers Peer.Forwards on the peer server (before it starts). */
int fwd_register(struct fwd *f, struct rpc_server *peer_srv);

/* The members one may forward to are now those of c (membership changed; any thread). A member
 * that left: the forwards waiting on its stream complete with FWD_ENOLEADER and its stream ends.
 * A member that joined: forwards to it open a stream on first use (peer_stream_open must know
 * it by then, or they fail FWD_ENOLEADER). Members in both keep their stream. */
void fwd_set_cluster(struct fwd *f, const struct cluster *c);

/* Forwards cmd (copied) to member `leader`. 0: done fires exactly once (possibly before this
 * returns, when the stream breaks at once). Otherwise an FWD_E* code and done never fires. */
int fwd_submit(struct fwd *f, uint64_t leader, const uint8_t *cmd, size_t len, int deadline_ms,
               fwd_done_fn done, void *arg);

/* Leader side: the answer to item (see struct fwd_answer; message and result are copied). Exactly
 * once per item, from any thread; item is invalid afterwards. */
void fwd_reply(struct fwd_item *item, const struct fwd_answer *a);

/* Counters for tests and status. */
struct fwd_stats {
    uint64_t batches_sent, items_sent;       /* follower side */
    uint64_t batches_received, items_received, answers_sent, answer_batches_sent; /* leader */
    uint64_t streams_opened, streams_refused;
};
void fwd_stats_get(struct fwd *f, struct fwd_stats *out);

#endif
