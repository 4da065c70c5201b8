/* lessor.h: the leader's view of when each lease expires (docs/lease.md).
 *
 * What it promises
 * - A pure module: no threads, no locks, no clock reads, no I/O. Time is passed in as
 *   milliseconds of a monotonic clock; the caller serializes calls (services/lease_service.c
 *   holds one mutex around them).
 * - Only a primary lessor (the leader's, after lessor_promote_end) knows expiries. A lessor
 *   that is not primary holds nothing, answers LESSOR_NOT_PRIMARY and ignores grants and
 *   revokes: a new leader rebuilds everything from the store when promoted.
 * - Promotion (etcd's Promote): each lease from the store expires at now + (its checkpointed
 *   remaining TTL if > 0, else its TTL) seconds + extend_ms; the caller passes at least an
 *   election timeout as extend_ms, so no lease expires because leadership moved. Grants and
 *   revokes told while the store is being read (between begin and end) are replayed in order
 *   at the end, so a lease applied meanwhile is neither lost nor resurrected.
 * - A lease granted while primary expires at now + TTL; a renew restarts that. A lease whose
 *   expiry has passed (expiry <= now) is expired: renew answers LESSOR_EXPIRED (etcd answers
 *   TTL 0: it is being revoked) and lessor_expired offers it for revocation, at most once per
 *   retry_ms, until the store's revoke removes it (lessor_revoked).
 * - Checkpoints (etcd's lease checkpointing): every checkpoint_ms, each lease whose TTL exceeds
 *   checkpoint_ms is offered with its remaining TTL (whole seconds, rounded up), to be recorded
 *   through Raft. A lease with a nonzero remaining TTL recorded in the store (from promotion or
 *   from an offered checkpoint) is not renewed directly: renew answers LESSOR_NEEDS_RESET and a
 *   token, the caller records remaining 0 through Raft, reports it with lessor_reset_applied,
 *   and renews again - so a later leader never starts from a stale short remaining TTL.
 * - Bounds and cost: about 100 bytes per lease; renew, grant, revoke O(log n) (a min-heap by
 *   next due time and an open-addressing hash by ID); expired and checkpoints O(k log n) for k
 *   returned. Notifications held during a promotion: at most max_pending (beyond: the
 *   promotion fails and is retried).
 */
#ifndef CRAFT_SERVICES_LESSOR_H
#define CRAFT_SERVICES_LESSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LESSOR_DEFAULT_RETRY_MS 3000       /* etcd's defaultExpiredleaseRetryInterval */
#define LESSOR_DEFAULT_MAX_PENDING 65536   /* notifications held during one promotion */

struct lessor_config {
    int64_t retry_ms;      /* an expired lease is offered again after this; 0 = default */
    int64_t checkpoint_ms; /* checkpoint interval; 0 = no checkpoints */
    size_t max_pending;    /* 0 = default */
};

enum lessor_result {
    LESSOR_OK = 0,
    LESSOR_NOT_FOUND = -1,
    LESSOR_EXPIRED = -2,     /* expiry passed: being revoked */
    LESSOR_NEEDS_RESET = -3, /* record remaining TTL 0 first (see above) */
    LESSOR_NOT_PRIMARY = -4, /* not the leader's lessor, or not promoted yet */
    LESSOR_ENOMEM = -5,
    LESSOR_EOVERFLOW = -6,   /* too many notifications during the promotion */
};

struct lessor_checkpoint {
    int64_t id;
    int64_t remaining; /* seconds, > 0 */
};

struct lessor;

struct lessor *lessor_create(const struct lessor_config *cfg);
void lessor_destroy(struct lessor *l);

/* Promotion: begin, add every lease of the store (kv_store_leases), end. ttl and remaining
 * are the store's (seconds); remaining 0 = none recorded. add and end return LESSOR_OK,
 * LESSOR_ENOMEM or (end) LESSOR_EOVERFLOW; after an error the lessor is demoted. */
void lessor_promote_begin(struct lessor *l);
int lessor_promote_add(struct lessor *l, int64_t now_ms, int64_t extend_ms, int64_t id,
                       int64_t ttl, int64_t remaining);
int lessor_promote_end(struct lessor *l, int64_t now_ms);
/* Forgets every lease (leadership lost, a snapshot restored, the service stopping). */
void lessor_demote(struct lessor *l);
bool lessor_is_primary(const struct lessor *l);
size_t lessor_count(const struct lessor *l);

/* The store applied a grant or a revoke (its lease hook). Meaningful while primary or
 * promoting; ignored otherwise. granted returns LESSOR_ENOMEM when it could not track the
 * lease (the caller demotes and promotes again). */
int lessor_granted(struct lessor *l, int64_t now_ms, int64_t id, int64_t ttl);
void lessor_revoked(struct lessor *l, int64_t id);

/* Renews lease id: LESSOR_OK with *ttl (its granted TTL; it now expires at now + ttl),
 * LESSOR_NOT_FOUND, LESSOR_EXPIRED, LESSOR_NOT_PRIMARY, or LESSOR_NEEDS_RESET with *token for
 * lessor_reset_applied. */
int lessor_renew(struct lessor *l, int64_t id, int64_t now_ms, int64_t *ttl, uint64_t *token);
/* A checkpoint recording remaining 0 for id, proposed after renew gave token, was applied.
 * Unless a checkpoint was offered for id since then, id has no remaining TTL recorded. */
void lessor_reset_applied(struct lessor *l, int64_t id, uint64_t token);
/* TimeToLive: LESSOR_OK with *remaining (whole seconds left, truncated; 0 once expired) and
 * *granted (TTL), LESSOR_NOT_FOUND or LESSOR_NOT_PRIMARY. */
int lessor_remaining(const struct lessor *l, int64_t id, int64_t now_ms, int64_t *remaining,
                     int64_t *granted);

/* Up to max expired leases not offered within retry_ms, earliest expiry first; each is not
 * offered again for retry_ms. Returns how many were written to ids. */
size_t lessor_expired(struct lessor *l, int64_t now_ms, int64_t *ids, size_t max);
/* Up to max checkpoints that are due (see above); each lease is next due checkpoint_ms later.
 * Leases that need none now (expired, or not below their TTL) are rescheduled and skipped. */
size_t lessor_checkpoints(struct lessor *l, int64_t now_ms, struct lessor_checkpoint *out,
                          size_t max);
/* When the next lease expires or is offered again (INT64_MAX: none), for tests. */
int64_t lessor_next_due(const struct lessor *l);

#endif
