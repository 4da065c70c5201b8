/* Fuzz target for what the client-facing services do with a request's bytes before anything
 * reaches the log or the node: the KV handlers (services/kv_req.c: Range, Put, DeleteRange,
 * Txn with its nesting walker, Compact - decode, validation, log command encoding), the Cluster
 * handlers (services/member_req.c: MemberAdd/Remove/Update/Promote and MoveLeader requests and
 * their table and configuration edits, a follower's Peer.Member hand-over, the leader's answer
 * a follower relays), the Maintenance requests craft serves (Status, Snapshot) and a
 * LeaseGrant's command encoding (kv_cmd.c), the Auth requests (auth_service.c: decode, the log
 * command, apply to a small auth state, kv_auth.c). The first
 * byte picks the path (byte % 9) and a parameter (byte / 9); the rest is the message.
 * Checked besides "no crash, no out-of-bounds read (ASan), no undefined behaviour (UBSan)":
 * a request validation accepts is encoded as a log command that passes the apply-side wire
 * check and decodes back to the same request (packed alike) that validates again; a read-only
 * Txn has no write; an accepted member edit leaves a table and configuration that hold it.
 * Built with clang's libFuzzer (run_fuzz.sh) and as a corpus replay with the default
 * toolchain. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "services/cluster_api.h"
#include "services/kvstore/kv_auth.h"
#include "services/kv_req.h"
#include "services/member_req.h"

#define CLUSTER_ID 0x1234u /* the cluster id the seeds' Peer.Member requests carry */

static void must(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "kv_req_fuzz: %s\n", what);
        abort();
    }
}

/* Packs m into a malloc'd buffer. */
static uint8_t *pack(const ProtobufCMessage *m, size_t *len)
{
    *len = protobuf_c_message_get_packed_size(m);
    uint8_t *b = malloc(*len ? *len : 1);
    must(b != NULL, "out of memory");
    protobuf_c_message_pack(m, b);
    return b;
}

static int same_packing(const ProtobufCMessage *a, const ProtobufCMessage *b)
{
    size_t na, nb;
    uint8_t *pa = pack(a, &na), *pb = pack(b, &nb);
    int same = na == nb && memcmp(pa, pb, na) == 0;
    free(pa);
    free(pb);
    return same;
}

/* The log command as apply sees it (kv_store.c apply_entry): the wire check, then unpack. */
static Craft__Kv__Command *command_back(const uint8_t *cmd, size_t len)
{
    struct kv_err err;
    must(kv_check_cmd_wire(cmd, len, &err) == 0, "an encoded command fails the wire check");
    Craft__Kv__Command *c = craft__kv__command__unpack(NULL, len, cmd);
    must(c != NULL, "an encoded command does not decode");
    return c;
}

static void kv_write(enum kv_req_kind kind, const uint8_t *m, size_t n)
{
    const ProtobufCMessageDescriptor *d =
        kind == KV_REQ_PUT      ? &etcdserverpb__put_request__descriptor
        : kind == KV_REQ_DELETE ? &etcdserverpb__delete_range_request__descriptor
                                : &etcdserverpb__compaction_request__descriptor;
    /* What the rpc layer does for these handlers (rpc_msg_unpack). */
    ProtobufCMessage *req = protobuf_c_message_unpack(d, NULL, n, m);
    if (!req)
        return;
    uint8_t *cmd;
    size_t len;
    int64_t phys;
    struct kv_err err;
    if (kv_req_write(kind, req, &cmd, &len, &phys, &err) != 0) {
        must(err.code != 0 && err.msg[0], "a refusal without a status");
        protobuf_c_message_free_unpacked(req, NULL);
        return;
    }
    Craft__Kv__Command *c = command_back(cmd, len);
    const ProtobufCMessage *back = NULL;
    struct kv_err again;
    switch (kind) {
    case KV_REQ_PUT:
        must(c->op_case == CRAFT__KV__COMMAND__OP_PUT, "a Put encoded as another command");
        back = &c->put->base;
        must(kv_validate_put(c->put, &again) == 0, "a Put valid before encoding is not after");
        break;
    case KV_REQ_DELETE:
        must(c->op_case == CRAFT__KV__COMMAND__OP_DELETE_RANGE, "a DeleteRange encoded wrong");
        back = &c->delete_range->base;
        must(kv_validate_delete_range(c->delete_range, &again) == 0,
             "a DeleteRange valid before encoding is not after");
        break;
    default: {
        const Etcdserverpb__CompactionRequest *r = (const Etcdserverpb__CompactionRequest *)req;
        must(c->op_case == CRAFT__KV__COMMAND__OP_COMPACTION, "a Compact encoded wrong");
        must(phys == (r->physical ? r->revision : 0), "physical revision wrong");
        back = &c->compaction->base;
        break;
    }
    }
    must(same_packing(req, back), "the command does not decode back to the request");
    craft__kv__command__free_unpacked(c, NULL);
    free(cmd);
    protobuf_c_message_free_unpacked(req, NULL);
}

static void kv_txn(const uint8_t *m, size_t n, unsigned max_ops)
{
    Etcdserverpb__TxnRequest *read;
    uint8_t *cmd;
    size_t len;
    struct kv_err err;
    if (kv_req_txn(m, n, max_ops, &read, &cmd, &len, &err) != 0) {
        must(err.code != 0 && err.msg[0], "a refusal without a status");
        return;
    }
    if (read) {
        must(kv_txn_is_readonly(read), "a Txn served as a read has writes");
        etcdserverpb__txn_request__free_unpacked(read, NULL);
        return;
    }
    Craft__Kv__Command *c = command_back(cmd, len);
    must(c->op_case == CRAFT__KV__COMMAND__OP_TXN, "a Txn encoded as another command");
    must(!kv_txn_is_readonly(c->txn), "a write Txn came back read-only");
    struct kv_err again;
    must(kv_validate_txn(c->txn, max_ops, &again) == 0, "a Txn valid before encoding is not after");
    Etcdserverpb__TxnRequest *orig = etcdserverpb__txn_request__unpack(NULL, n, m);
    must(orig != NULL, "an accepted Txn does not decode twice");
    must(same_packing(&orig->base, &c->txn->base), "the command does not decode back to the Txn");
    etcdserverpb__txn_request__free_unpacked(orig, NULL);
    craft__kv__command__free_unpacked(c, NULL);
    free(cmd);
}

static void kv_range(const uint8_t *m, size_t n)
{
    struct kv_err err;
    Etcdserverpb__RangeRequest *r = kv_req_range(m, n, &err);
    if (!r) {
        must(err.code != 0 && err.msg[0], "a refusal without a status");
        return;
    }
    must(r->key.len > 0, "a Range without a key accepted");
    etcdserverpb__range_request__free_unpacked(r, NULL);
}

/* ---- the Cluster service ---- */

static struct cluster table;
static struct raft_conf conf;

static void setup_members(void)
{
    static int done;
    if (done)
        return;
    char err[160];
    must(cluster_parse("a=https://a.test:2380,b=https://b.test:2380,c=https://c.test:2380", "t",
                       &table, err, sizeof err) == 0,
         "the member table does not parse");
    table.id = CLUSTER_ID;
    conf = (struct raft_conf){.n_voters = 2, .n_learners = 1};
    conf.voters[0] = table.members[0].id;
    conf.voters[1] = table.members[1].id;
    conf.learners[0] = table.members[2].id;
    done = 1;
}

/* Ids below 8 name a member of the table by index, so that short seeds reach the edits. */
static uint64_t member_id(uint64_t id)
{
    return id < 8 ? table.members[id % table.n].id : id;
}

static void conf_holds(const struct raft_conf *c)
{
    must(c->n_voters >= 1 && c->n_voters + c->n_learners <= RAFT_MAX_NODES && c->n_old == 0,
         "a target configuration out of shape");
    for (uint32_t i = 0; i < c->n_voters; i++)
        for (uint32_t j = 0; j < c->n_learners; j++)
            must(c->voters[i] != c->learners[j], "a member both voter and learner");
}

static void member_change(int method, const uint8_t *m, size_t n, bool tls)
{
    ProtobufCMessage *req = protobuf_c_message_unpack(member_req_desc(method), NULL, n, m);
    if (!req)
        return;
    struct cluster next = table;
    struct raft_conf target;
    struct cluster_url u;
    char err[160];
    int rc;
    switch (method) {
    case MEMBER_REQ_ADD: {
        const Etcdserverpb__MemberAddRequest *r = (const Etcdserverpb__MemberAddRequest *)req;
        rc = cluster_api_check_urls(r->peerurls, r->n_peerurls, tls, &u);
        uint64_t id = 0;
        if (rc == 0)
            rc = member_req_add_by_url(&next, &u, "t", 42, &id);
        if (rc == 0) {
            must(next.n == table.n + 1 && cluster_find_id(&next, id), "an add lost its member");
            rc = cluster_api_target(&conf, r->islearner ? CLUSTER_API_ADD_LEARNER
                                                        : CLUSTER_API_ADD_VOTER,
                                    id, &target);
            must(rc == 0, "a new member's id already in the configuration");
            conf_holds(&target);
            must(cluster_check(&next, err, sizeof err) == 0, "an add broke the table");
        }
        break;
    }
    case MEMBER_REQ_REMOVE: {
        uint64_t id = member_id(((const Etcdserverpb__MemberRemoveRequest *)req)->id);
        rc = cluster_remove(&next, id, err, sizeof err);
        if (rc == 0)
            rc = cluster_api_target(&conf, CLUSTER_API_REMOVE, id, &target);
        if (rc == 0) {
            must(!cluster_find_id(&next, id), "a removed member stayed");
            conf_holds(&target);
        }
        break;
    }
    case MEMBER_REQ_UPDATE: {
        const Etcdserverpb__MemberUpdateRequest *r = (const Etcdserverpb__MemberUpdateRequest *)req;
        rc = cluster_api_check_urls(r->peerurls, r->n_peerurls, tls, &u);
        uint64_t id = member_id(r->id);
        if (rc == 0)
            rc = cluster_update_peer_url(&next, id, r->peerurls[0], err, sizeof err);
        if (rc == 0)
            rc = cluster_api_target(&conf, CLUSTER_API_UPDATE, id, &target);
        if (rc == 0) {
            const struct cluster_member *mm = cluster_find_id(&next, id);
            must(mm && mm->peer_url.port == u.port, "an update lost its URL");
            must(cluster_check(&next, err, sizeof err) == 0, "an update broke the table");
        }
        break;
    }
    case MEMBER_REQ_PROMOTE: {
        uint64_t id = member_id(((const Etcdserverpb__MemberPromoteRequest *)req)->id);
        rc = cluster_find_id(&table, id) ? cluster_api_target(&conf, CLUSTER_API_PROMOTE, id,
                                                              &target)
                                         : CLUSTER_ENOTFOUND;
        if (rc == 0)
            conf_holds(&target);
        break;
    }
    default: /* MoveLeader: only a voter may be the transferee */
        rc = 0;
        break;
    }
    must(rc <= 0, "a rule answered with a positive code");
    protobuf_c_message_free_unpacked(req, NULL);
}

static void peer_member(const uint8_t *m, size_t n, bool tls)
{
    Craft__Raft__MemberRequest *r = craft__raft__member_request__unpack(NULL, n, m);
    if (!r)
        return;
    int code;
    const char *msg;
    if (member_req_peer_check(r, CLUSTER_ID, &code, &msg) == 0) {
        must(r->method >= MEMBER_REQ_ADD && r->method <= MEMBER_REQ_PROMOTE, "a method let in");
        member_change((int)r->method, r->request.data, r->request.len, tls);
    }
    craft__raft__member_request__free_unpacked(r, NULL);
}

/* A follower relays the leader's answer with its own header (cluster_api.c relay). */
static void member_reply(const uint8_t *m, size_t n, int method)
{
    Craft__Raft__MemberReply *r = craft__raft__member_reply__unpack(NULL, n, m);
    if (!r)
        return;
    if (r->code == 0) {
        ProtobufCMessage *resp = protobuf_c_message_unpack(member_req_response_desc(method), NULL,
                                                           r->response.len, r->response.data);
        if (resp) {
            Etcdserverpb__ResponseHeader **hp = member_req_header(method, resp);
            Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT, *orig = *hp;
            h.cluster_id = CLUSTER_ID;
            *hp = &h;
            size_t len;
            free(pack(resp, &len));
            *hp = orig;
            protobuf_c_message_free_unpacked(resp, NULL);
        }
    }
    craft__raft__member_reply__free_unpacked(r, NULL);
}

/* A Grant as the Lease service proposes it once its rules passed (lease_service.c: the
 * request's TTL and ID, validated, encoded): the command decodes back to them. */
static void lease_grant(const uint8_t *m, size_t n)
{
    Etcdserverpb__LeaseGrantRequest *g = etcdserverpb__lease_grant_request__unpack(NULL, n, m);
    if (!g)
        return;
    struct kv_err err;
    uint8_t *cmd;
    size_t len;
    if (kv_validate_lease_grant(g, &err) == 0) {
        must(kv_cmd_encode_lease_grant(g, &cmd, &len) == 0, "out of memory");
        Craft__Kv__Command *c = command_back(cmd, len);
        must(c->op_case == CRAFT__KV__COMMAND__OP_LEASE_GRANT && c->lease_grant->id == g->id &&
                 c->lease_grant->ttl == g->ttl,
             "a Grant does not decode back");
        craft__kv__command__free_unpacked(c, NULL);
        free(cmd);
    }
    etcdserverpb__lease_grant_request__free_unpacked(g, NULL);
}

/* ---- Auth (services/auth_service.c) ---- */

static const struct {
    const ProtobufCMessageDescriptor *d;
    Craft__Kv__Command__OpCase op; /* 0: a read (decoded only) */
} auth_reqs[] = {
    {&etcdserverpb__auth_enable_request__descriptor, CRAFT__KV__COMMAND__OP_AUTH_ENABLE},
    {&etcdserverpb__auth_disable_request__descriptor, CRAFT__KV__COMMAND__OP_AUTH_DISABLE},
    {&etcdserverpb__auth_user_add_request__descriptor, CRAFT__KV__COMMAND__OP_USER_ADD},
    {&etcdserverpb__auth_user_delete_request__descriptor, CRAFT__KV__COMMAND__OP_USER_DELETE},
    {&etcdserverpb__auth_user_change_password_request__descriptor,
     CRAFT__KV__COMMAND__OP_USER_CHANGE_PASSWORD},
    {&etcdserverpb__auth_user_grant_role_request__descriptor,
     CRAFT__KV__COMMAND__OP_USER_GRANT_ROLE},
    {&etcdserverpb__auth_user_revoke_role_request__descriptor,
     CRAFT__KV__COMMAND__OP_USER_REVOKE_ROLE},
    {&etcdserverpb__auth_role_add_request__descriptor, CRAFT__KV__COMMAND__OP_ROLE_ADD},
    {&etcdserverpb__auth_role_delete_request__descriptor, CRAFT__KV__COMMAND__OP_ROLE_DELETE},
    {&etcdserverpb__auth_role_grant_permission_request__descriptor,
     CRAFT__KV__COMMAND__OP_ROLE_GRANT_PERMISSION},
    {&etcdserverpb__auth_role_revoke_permission_request__descriptor,
     CRAFT__KV__COMMAND__OP_ROLE_REVOKE_PERMISSION},
    {&etcdserverpb__auth_user_get_request__descriptor, 0},
    {&etcdserverpb__auth_user_list_request__descriptor, 0},
    {&etcdserverpb__auth_role_get_request__descriptor, 0},
    {&etcdserverpb__auth_role_list_request__descriptor, 0},
    {&etcdserverpb__authenticate_request__descriptor, 0},
};
#define N_AUTH_REQS (sizeof auth_reqs / sizeof auth_reqs[0])

/* A state with something in it: root (root role), user u with role r granting [a, c). */
static struct kv_auth *auth_base(void)
{
    static const uint8_t state[] = {
        0x08, 0x01, 0x10, 0x07,                                   /* enabled, revision 7 */
        0x1a, 0x0c, 0x0a, 0x04, 'r', 'o', 'o', 't', 0x1a, 0x04, 'r', 'o', 'o', 't',
        0x1a, 0x06, 0x0a, 0x01, 'u', 0x1a, 0x01, 'r',
        0x22, 0x0d, 0x0a, 0x01, 'r', 0x12, 0x08, 0x08, 0x02, 0x12, 0x01, 'a', 0x1a, 0x01, 'c',
    };
    struct kv_err err;
    struct kv_auth *a = kv_auth_decode(state, sizeof state, &err);
    must(a != NULL, "the base auth state does not decode");
    return a;
}

/* An Auth request as the service decodes it; a change as it enters the log (the password
 * replaced by a hash), applied to a small state: the command passes the wire check and decodes
 * to the same op, and any state apply makes decodes again (kv_auth_decode accepts only what
 * this module makes). */
static void auth_req(unsigned which, const uint8_t *m, size_t n)
{
    ProtobufCMessage *req = protobuf_c_message_unpack(auth_reqs[which].d, NULL, n, m);
    if (!req)
        return;
    if (auth_reqs[which].op) {
        uint8_t *cmd;
        size_t len;
        must(kv_cmd_encode_auth(auth_reqs[which].op, req, "pbkdf2-sha256$1$00$00", &cmd, &len) == 0,
             "out of memory");
        must(kv_cmd_set_user(&cmd, &len, n % 2 ? "u" : NULL) == 0, "out of memory");
        Craft__Kv__Command *c = command_back(cmd, len);
        must(c->op_case == auth_reqs[which].op && c->auth, "an auth command decodes wrong");
        struct kv_auth *a = auth_base(), *next = NULL;
        struct kv_err err;
        if (kv_auth_apply(a, c, &next, &err) == 0) {
            uint8_t *b;
            size_t bl;
            must(kv_auth_encode(next, &b, &bl) == 0, "out of memory");
            struct kv_auth *back = kv_auth_decode(b, bl, &err);
            must(back != NULL, "apply made an auth state that does not decode");
            must(kv_auth_revision(back) >= kv_auth_revision(a), "the auth revision went back");
            kv_auth_unref(back);
            free(b);
            kv_auth_unref(next);
        } else {
            must(err.code != 0 && err.msg[0], "a refused auth command without an error");
        }
        kv_auth_unref(a);
        craft__kv__command__free_unpacked(c, NULL);
        free(cmd);
    }
    protobuf_c_message_free_unpacked(req, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    setup_members();
    unsigned kind = data[0] % 9, param = data[0] / 9; /* param: 0..28 */
    const uint8_t *m = data + 1;
    size_t n = size - 1;
    switch (kind) {
    case 0: kv_range(m, n); break;
    case 1: kv_write(KV_REQ_PUT, m, n); break;
    case 2: kv_write(KV_REQ_DELETE, m, n); break;
    case 3: kv_write(KV_REQ_COMPACT, m, n); break;
    case 4: kv_txn(m, n, param & 1 ? 0 : 2 + param); break; /* 0 = the default budget */
    case 5: member_change(MEMBER_REQ_ADD + (int)(param % 5), m, n, param / 5 % 2); break;
    case 6: peer_member(m, n, param % 2); break;
    case 7: member_reply(m, n, MEMBER_REQ_ADD + (int)(param % 4)); break;
    default: { /* Maintenance.Status, Maintenance.Snapshot, Cluster.MemberList; LeaseGrant;
                  parameter 12 and above: the Auth requests */
        if (param >= 12) {
            if (param - 12 < N_AUTH_REQS)
                auth_req(param - 12, m, n);
            break;
        }
        static const ProtobufCMessageDescriptor *const d[] = {
            &etcdserverpb__status_request__descriptor,
            &etcdserverpb__snapshot_request__descriptor,
            &etcdserverpb__member_list_request__descriptor,
        };
        if (param % 4 == 3) {
            lease_grant(m, n);
            break;
        }
        ProtobufCMessage *r = protobuf_c_message_unpack(d[param % 4], NULL, n, m);
        if (r)
            protobuf_c_message_free_unpacked(r, NULL);
        break;
    }
    }
    return 0;
}
