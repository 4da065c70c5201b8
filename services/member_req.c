/* member_req.c: the Cluster service's decoding of membership requests and answers, and the
 * rules that read their fields (see member_req.h; cluster_api_check_urls and cluster_api_target
 * are cluster_api.h's). No gRPC calls and no node, so the fuzz target builds it alone. */
#include "services/member_req.h"

#include <grpc/status.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "services/cluster_api.h"

static bool has(const uint64_t *ids, uint32_t n, uint64_t id)
{
    for (uint32_t i = 0; i < n; i++)
        if (ids[i] == id)
            return true;
    return false;
}

static void drop(uint64_t *ids, uint32_t *n, uint64_t id)
{
    uint32_t k = 0;
    for (uint32_t i = 0; i < *n; i++)
        if (ids[i] != id)
            ids[k++] = ids[i];
    *n = k;
}

int cluster_api_target(const struct raft_conf *cur, enum cluster_api_change ch, uint64_t id,
                       struct raft_conf *out)
{
    *out = *cur;
    out->n_old = 0;
    bool voter = has(cur->voters, cur->n_voters, id);
    bool learner = has(cur->learners, cur->n_learners, id);
    switch (ch) {
    case CLUSTER_API_ADD_VOTER:
    case CLUSTER_API_ADD_LEARNER:
        if (voter || learner)
            return CLUSTER_EEXIST;
        if (cur->n_voters + cur->n_learners >= RAFT_MAX_NODES)
            return CLUSTER_EFULL;
        if (ch == CLUSTER_API_ADD_VOTER)
            out->voters[out->n_voters++] = id;
        else
            out->learners[out->n_learners++] = id;
        return 0;
    case CLUSTER_API_REMOVE:
        if (!voter && !learner)
            return CLUSTER_ENOTFOUND;
        if (voter && cur->n_voters == 1)
            return CLUSTER_ELAST;
        drop(out->voters, &out->n_voters, id);
        drop(out->learners, &out->n_learners, id);
        return 0;
    case CLUSTER_API_PROMOTE:
        if (voter)
            return CLUSTER_API_ENOTLEARNER;
        if (!learner)
            return CLUSTER_ENOTFOUND;
        drop(out->learners, &out->n_learners, id);
        out->voters[out->n_voters++] = id;
        return 0;
    case CLUSTER_API_UPDATE:
        return voter || learner ? 0 : CLUSTER_ENOTFOUND;
    }
    return CLUSTER_EINVAL;
}

int cluster_api_check_urls(char *const *urls, size_t n, bool tls, struct cluster_url *out)
{
    if (n == 0)
        return CLUSTER_EBADURL;
    if (n > 1)
        return CLUSTER_API_EONEURL;
    char err[128];
    if (!urls[0] || cluster_parse_url(urls[0], out, err, sizeof err) != 0 || out->tls != tls)
        return CLUSTER_EBADURL;
    return 0;
}

/* The id is salted by the leader's last log index: a member removed and added back at the
 * same address gets a new id, as etcd never reuses one - its peers remember the old id as
 * removed and as having run. The joining member finds itself in the table by its URL, so it
 * need not compute the id. */
int member_req_add_by_url(struct cluster *c, const struct cluster_url *u, const char *token,
                          uint64_t salt, uint64_t *id)
{
    for (size_t i = 0; i < c->n; i++)
        if (c->members[i].peer_url.port == u->port &&
            strcasecmp(c->members[i].peer_url.host, u->host) == 0)
            return CLUSTER_EURLEXISTS;
    char canon[CLUSTER_URL_MAX], salted[600];
    cluster_url_string(u, canon, sizeof canon);
    snprintf(salted, sizeof salted, "%s/%llu", token, (unsigned long long)salt);
    uint64_t nid = cluster_member_id_url(canon, salted);
    if (cluster_find_id(c, nid))
        return CLUSTER_EEXIST;
    if (c->n >= CLUSTER_MAX_MEMBERS)
        return CLUSTER_EFULL;
    struct cluster_member *m = &c->members[c->n++];
    memset(m, 0, sizeof *m);
    m->id = nid;
    m->peer_url = *u;
    *id = nid;
    return 0;
}

const ProtobufCMessageDescriptor *member_req_desc(int method)
{
    switch (method) {
    case MEMBER_REQ_ADD: return &etcdserverpb__member_add_request__descriptor;
    case MEMBER_REQ_REMOVE: return &etcdserverpb__member_remove_request__descriptor;
    case MEMBER_REQ_UPDATE: return &etcdserverpb__member_update_request__descriptor;
    case MEMBER_REQ_PROMOTE: return &etcdserverpb__member_promote_request__descriptor;
    default: return &etcdserverpb__move_leader_request__descriptor;
    }
}

const ProtobufCMessageDescriptor *member_req_response_desc(int method)
{
    switch (method) {
    case MEMBER_REQ_ADD: return &etcdserverpb__member_add_response__descriptor;
    case MEMBER_REQ_REMOVE: return &etcdserverpb__member_remove_response__descriptor;
    case MEMBER_REQ_UPDATE: return &etcdserverpb__member_update_response__descriptor;
    default: return &etcdserverpb__member_promote_response__descriptor;
    }
}

Etcdserverpb__ResponseHeader **member_req_header(int method, ProtobufCMessage *m)
{
    switch (method) {
    case MEMBER_REQ_ADD: return &((Etcdserverpb__MemberAddResponse *)m)->header;
    case MEMBER_REQ_REMOVE: return &((Etcdserverpb__MemberRemoveResponse *)m)->header;
    case MEMBER_REQ_UPDATE: return &((Etcdserverpb__MemberUpdateResponse *)m)->header;
    default: return &((Etcdserverpb__MemberPromoteResponse *)m)->header;
    }
}

int member_req_peer_check(const Craft__Raft__MemberRequest *r, uint64_t cluster_id, int *code,
                          const char **msg)
{
    if (r->cluster_id != cluster_id) {
        *code = GRPC_STATUS_FAILED_PRECONDITION;
        *msg = "cluster id mismatch";
        return -1;
    }
    if (r->method < MEMBER_REQ_ADD || r->method > MEMBER_REQ_PROMOTE) {
        *code = GRPC_STATUS_INVALID_ARGUMENT;
        *msg = "craft: unknown membership method";
        return -1;
    }
    return 0;
}
