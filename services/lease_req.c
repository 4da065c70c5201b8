/* lease_req.c: the Lease service's handling of bytes from outside - client keep-alive and
 * TimeToLive requests, the leader's answers to forwarded ones - and the Grant rules (see
 * lease_service.h). protobuf-c only, so the fuzz target builds it alone. */
#include <limits.h>

#include "services/lease_service.h"

int lease_req_keepalive(const uint8_t *data, size_t len, int64_t *id)
{
    Etcdserverpb__LeaseKeepAliveRequest *r =
        etcdserverpb__lease_keep_alive_request__unpack(NULL, len, data);
    if (!r)
        return -1;
    *id = r->id;
    etcdserverpb__lease_keep_alive_request__free_unpacked(r, NULL);
    return 0;
}

int lease_req_ttl(const uint8_t *data, size_t len, int64_t *id, bool *keys)
{
    Etcdserverpb__LeaseTimeToLiveRequest *r =
        etcdserverpb__lease_time_to_live_request__unpack(NULL, len, data);
    if (!r)
        return -1;
    *id = r->id;
    *keys = r->keys;
    etcdserverpb__lease_time_to_live_request__free_unpacked(r, NULL);
    return 0;
}

int lease_resp_keepalive(const uint8_t *data, size_t len, uint64_t cluster_id, int64_t id,
                         int64_t *ttl)
{
    Etcdserverpb__LeaseKeepAliveResponse *r =
        etcdserverpb__lease_keep_alive_response__unpack(NULL, len, data);
    if (!r)
        return -1;
    /* A TTL out of range would reach the client as a lease that lives for ever or is gone. */
    int rc = r->header && r->header->cluster_id == cluster_id && r->id == id && r->ttl >= 0 &&
                     r->ttl <= LEASE_MAX_TTL
                 ? 0
                 : -1;
    if (rc == 0)
        *ttl = r->ttl;
    etcdserverpb__lease_keep_alive_response__free_unpacked(r, NULL);
    return rc;
}

Etcdserverpb__LeaseTimeToLiveResponse *lease_resp_ttl(const uint8_t *data, size_t len,
                                                      uint64_t cluster_id, int64_t id)
{
    Etcdserverpb__LeaseTimeToLiveResponse *r =
        etcdserverpb__lease_time_to_live_response__unpack(NULL, len, data);
    if (r && (!r->header || r->header->cluster_id != cluster_id || r->id != id || r->ttl < -1 ||
              r->ttl > LEASE_MAX_TTL || r->grantedttl < 0 ||
              r->grantedttl > LEASE_MAX_TTL)) {
        etcdserverpb__lease_time_to_live_response__free_unpacked(r, NULL);
        r = NULL;
    }
    return r;
}

int64_t lease_min_ttl(unsigned election_ms)
{
    /* etcd: minTTL = ceil(3/2 * electionTicks * heartbeat) in seconds */
    return ((int64_t)election_ms * 3 + 1999) / 2000;
}

int lease_grant_prepare(Etcdserverpb__LeaseGrantRequest *r, int64_t min_ttl, int64_t next_id,
                        int *code, const char **msg)
{
    if (r->ttl > LEASE_MAX_TTL) {
        *code = GRPC_STATUS_OUT_OF_RANGE;
        *msg = LEASE_ERR_TTL_TOO_LARGE;
        return -1;
    }
    if (r->ttl < min_ttl) /* zero and negative TTLs too, as etcd's lessor raises them */
        r->ttl = min_ttl;
    if (r->id == 0)
        r->id = next_id;
    return 0;
}
