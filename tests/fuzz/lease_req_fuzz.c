/* Fuzz target for what the Lease service does with bytes from outside (services/lease_req.c):
 * a client's or a follower's LeaseKeepAliveRequest and LeaseTimeToLiveRequest, the leader's
 * answers to forwarded ones, and a LeaseGrantRequest put through the Grant rules. The first
 * byte picks the path, the rest is the message. Every input gets a verdict - never a crash, an
 * out-of-bounds read (ASan) or undefined behaviour (UBSan) - and what is accepted holds what
 * the service relies on: a forwarded answer names the lease asked about and this cluster, with
 * a TTL in range; a prepared Grant has an ID and a TTL the store accepts. Built with clang's
 * libFuzzer (run_fuzz.sh) and as a corpus replay with the default toolchain. */
#include <stdint.h>
#include <stdlib.h>

#include "services/lease_service.h"

#define CLUSTER 0x1234u /* the cluster id the seeds' answers carry */
#define ID 7            /* the lease id the seeds' answers name */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t kind = data[0];
    const uint8_t *m = data + 1;
    size_t n = size - 1;
    int64_t id, ttl;
    bool keys;
    switch (kind % 5) {
    case 0: /* the stream's request, and Peer.LeaseRenew's */
        if (lease_req_keepalive(m, n, &id) == 0) {
            Etcdserverpb__LeaseKeepAliveRequest r = ETCDSERVERPB__LEASE_KEEP_ALIVE_REQUEST__INIT;
            r.id = id;
            uint8_t buf[16];
            size_t len = etcdserverpb__lease_keep_alive_request__pack(&r, buf);
            int64_t again;
            if (lease_req_keepalive(buf, len, &again) != 0 || again != id)
                abort();
        }
        break;
    case 1: /* LeaseTimeToLive and Peer.LeaseTimeToLive */
        (void)lease_req_ttl(m, n, &id, &keys);
        break;
    case 2: /* the leader's answer to a forwarded keep-alive */
        if (lease_resp_keepalive(m, n, CLUSTER, ID, &ttl) == 0 &&
            (ttl < 0 || ttl > LEASE_MAX_TTL))
            abort();
        break;
    case 3: { /* the leader's answer to a forwarded TimeToLive */
        Etcdserverpb__LeaseTimeToLiveResponse *r = lease_resp_ttl(m, n, CLUSTER, ID);
        if (r) {
            if (r->id != ID || !r->header || r->header->cluster_id != CLUSTER || r->ttl < -1 ||
                r->ttl > LEASE_MAX_TTL || (r->n_keys && !r->keys))
                abort();
            etcdserverpb__lease_time_to_live_response__free_unpacked(r, NULL);
        }
        break;
    }
    default: { /* a Grant through the rules, the minimum from the first byte */
        Etcdserverpb__LeaseGrantRequest *g = etcdserverpb__lease_grant_request__unpack(NULL, n, m);
        if (!g)
            break;
        int64_t min = 1 + kind / 5;
        int code;
        const char *msg;
        if (lease_grant_prepare(g, min, 42, &code, &msg) == 0) {
            if (g->id == 0 || g->ttl < min || g->ttl > LEASE_MAX_TTL)
                abort();
        } else if (code != GRPC_STATUS_OUT_OF_RANGE || g->ttl <= LEASE_MAX_TTL) {
            abort();
        }
        etcdserverpb__lease_grant_request__free_unpacked(g, NULL);
        break;
    }
    }
    return 0;
}
