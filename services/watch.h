/* watch.h: etcd v3's Watch service (/etcdserverpb.Watch/Watch, a bidirectional stream), served
 * by any member from its own applied state through the store's history (kv_store_events).
 *
 * What it promises (etcd 3.4's semantics; docs/watch.md has the design and every deviation)
 * - Many watches per stream. A create (key; range_end: none = one key, "\0" = every key >= key,
 *   else [key, range_end); an empty key means "\0") is answered `created` with header.revision
 *   = the revision the watch starts after, then its events. start_revision 0 = from the next
 *   revision; one in the past is caught up from history; one in the future waits for it; one
 *   below the compacted revision gets a response with compact_revision set and canceled. A
 *   client-chosen watch_id (0 = the server picks: a stream counter from 0, skipping ids in use
 *   and never going back, as etcd) that is in use on the stream, an empty or inverted range, a negative start_revision or watch_id,
 *   a key or range_end over WATCH_MAX_KEY bytes, or more than max_per_stream watches: a
 *   response with created and canceled set, watch_id -1 and a cancel_reason. Unknown filter
 *   values are ignored (etcd); NOPUT and NODELETE drop those events.
 * - Events of each watch arrive in (revision, order in the revision) order, each exactly once,
 *   every event of one revision in one response; with fragment, a response over
 *   max_request_bytes is split at event boundaries, `fragment` set on all but the last piece.
 *   A revision whose events cannot fit one message (max_send_bytes) without fragment, or a
 *   single event that cannot fit at all, cancels that watch with a cancel_reason saying so.
 * - Cancel: a response with canceled set, after which the watch sends nothing (an unknown id
 *   is ignored, as etcd). WatchProgressRequest: a response with watch_id -1 and
 *   header.revision R, sent once every watch of the stream has been sent every event up to R
 *   (at once when all are caught up). progress_notify: every progress_interval_ms a caught-up
 *   watch that sent nothing during the interval gets an empty response whose header.revision
 *   means the same. A half-close ends the stream OK; undecodable bytes end it
 *   INVALID_ARGUMENT.
 * - Delivery: one hub thread, woken by the store's commit hook, reads each new revision range
 *   once and matches it against every caught-up ("synced") watch; a watch behind the hub
 *   ("unsynced": a past start_revision, or a slow stream) catches up alone in bounded steps,
 *   interleaved with the hub's passes, and joins the synced set once it reaches them. A
 *   stream whose gRPC send queue is full, or which has more than its bound queued (the
 *   smaller of max_stream_bytes and max_member_bytes / streams open), gets nothing more: its
 *   watches fall back to catching up from the first event not sent, once the stream drains.
 *   So the bytes queued on all streams stay within max_member_bytes plus one message per
 *   stream (one always goes when a stream's queue is empty, so every watch makes progress; a
 *   message is one revision, or revisions packed up to max_request_bytes for a watch
 *   catching up).
 *   Memory is bounded by the flags below, never by the client.
 * - Threads: callbacks run on the rpc server's threads and never block beyond one hub mutex
 *   held for a bounded pass. The commit hook only sets an atomic and signals.
 */
#ifndef CRAFT_SERVICES_WATCH_H
#define CRAFT_SERVICES_WATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "services/proto/etcd/rpc.pb-c.h"

/* Declared, not included, so the request decoder builds alone (tests/fuzz): raft/node/node.h,
 * rpc/rpc.h, services/kvstore/kv_store.h. */
struct raft_node;
struct rpc_server;
struct kv_store;
struct kv_err;
struct kv_event;

#define WATCH_MAX_KEY 4096                          /* key and range_end of a watch, bytes */
#define WATCH_DEFAULT_MAX_PER_STREAM 1024           /* --max-watches-per-stream */
#define WATCH_DEFAULT_STREAM_BYTES (8ull << 20)     /* --max-watch-stream-bytes */
#define WATCH_DEFAULT_HUB_BYTES (64ull << 20)       /* --max-watch-hub-bytes */
#define WATCH_DEFAULT_MEMBER_BYTES (256ull << 20)   /* --max-watch-bytes */
#define WATCH_DEFAULT_PROGRESS_MS (10ull * 60 * 1000) /* etcd's 10m */

/* etcd's texts (mvcc/watcher.go), and craft's own. */
#define WATCH_ERR_EMPTY_RANGE "mvcc: watcher range is empty"
#define WATCH_ERR_DUP_ID "mvcc: duplicate watch ID provided on the WatchStream"

/* The event source: kv_store_events's contract (cb is a kv_event_cb). Tests may inject their
 * own. */
typedef int (*watch_events_fn)(void *src, int64_t from_rev, size_t max_events, bool with_prev,
                               int (*cb)(void *arg, const struct kv_event *ev), void *arg,
                               int64_t *next_rev, int64_t *cur_rev, int64_t *compact_rev,
                               struct kv_err *err);

struct auth_tokens;

struct watch_config {
    struct kv_store *store;       /* the source, unless events is set */
    uint64_t cluster_id, member_id;
    size_t max_request_bytes;     /* etcd's --max-request-bytes: the fragment size */
    size_t max_send_bytes;        /* the client server's largest message */
    unsigned max_per_stream;      /* 0 = WATCH_DEFAULT_MAX_PER_STREAM */
    uint64_t max_stream_bytes;    /* bytes queued on one stream; 0 = default */
    uint64_t max_member_bytes;    /* bytes queued on all streams together: each stream's bound
                                   * is the smaller of max_stream_bytes and an equal share of
                                   * this; 0 = default */
    uint64_t max_hub_bytes;       /* encoded events the hub holds for one revision; 0 = default */
    uint64_t progress_interval_ms; /* 0 = 10 minutes */
    struct auth_tokens *tokens;   /* Authenticate's tokens (auth_token.h), for who a stream's
                                     caller is; NULL = certificates only */
    /* Tests: another source than kv_store_events(store, ...), and no commit hook is set
     * (call watch_hub_notify). */
    watch_events_fn events;
    void *events_arg;
};

struct watch_hub;

/* Creates the hub and its thread and sets the store's commit hook: call before the store is
 * applied to. NULL with a reason in err. */
struct watch_hub *watch_hub_create(const struct watch_config *cfg, char *err, size_t errlen);
/* Registers /etcdserverpb.Watch/Watch on the client server; node gives raft_term for headers
 * (NULL: 0). */
int watch_hub_register(struct watch_hub *h, struct rpc_server *srv, struct raft_node *node);
/* The commit hook: the store's revision is now rev. Never blocks. */
void watch_hub_notify(void *hub, int64_t rev);
/* After the client server is shut down (every stream closed): clears the hook, stops the
 * thread, frees everything. NULL is fine. */
void watch_hub_destroy(struct watch_hub *h);

/* Counters, for tests. */
struct watch_stats {
    uint64_t streams, synced, unsynced; /* now */
    uint64_t demoted;                   /* synced watches moved back to catching up */
    int64_t hub_rev;                    /* every synced watch has every event up to it */
    uint64_t queued_bytes, queued_peak; /* on all streams now, and the most since the start */
};
void watch_hub_stats(struct watch_hub *h, struct watch_stats *out);

/* ---- Decoding and checking one WatchRequest (what the stream does with client bytes) ---- */
enum { WATCH_REQ_NONE, WATCH_REQ_CREATE, WATCH_REQ_CANCEL, WATCH_REQ_PROGRESS };
enum { WATCH_KEY_ONE, WATCH_KEY_RANGE, WATCH_KEY_FROM };

struct watch_req {
    int kind;              /* WATCH_REQ_*; NONE: nothing set (etcd ignores it) */
    int64_t watch_id;      /* CREATE (0 = server picks) and CANCEL */
    /* CREATE, normalized as etcd does: */
    const uint8_t *key, *end; /* point into msg (or a static "\0") */
    size_t klen, elen;
    int range;             /* WATCH_KEY_* */
    int64_t start_rev;
    bool prev_kv, progress_notify, fragment, no_put, no_delete;
    char error[128];       /* CREATE that must be refused: the cancel_reason; "" = valid */
    Etcdserverpb__WatchRequest *msg;
};

/* 0 and *out (free with watch_req_free), or -1 when the bytes are not a WatchRequest. */
int watch_req_decode(const uint8_t *data, size_t len, struct watch_req *out);
void watch_req_free(struct watch_req *r);
/* Whether a watch of r (a valid CREATE) covers key. */
bool watch_req_matches(const struct watch_req *r, const uint8_t *key, size_t klen);
/* The same for a range kind and bounds (WATCH_KEY_*; end unused for ONE and FROM). */
bool watch_key_matches(int range, const uint8_t *k, size_t kl, const uint8_t *e, size_t el,
                       const uint8_t *key, size_t klen);

#endif
