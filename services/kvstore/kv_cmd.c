/* kv_cmd.c: the KV log command and result codec, and the wire walkers that bound a request's
 * Txn nesting before protobuf-c unpacks it. See kv_cmd.h. */
#include "services/kvstore/kv_cmd.h"

#include <stdlib.h>

#include "services/kvstore/kv_internal.h"

/* ---- nesting depth on the wire ----
 * protobuf-c unpacks nested messages recursively, so a request of nested Txns (4 bytes a
 * level: 375,000 levels in 1.5 MiB) would overflow the stack before any check ran. These walk
 * the wire format without unpacking: TxnRequest fields 2 and 3 hold RequestOps, RequestOp field
 * 4 holds a TxnRequest, Command field 3 holds a TxnRequest. Returns 0, WIRE_BAD (not protobuf)
 * or WIRE_DEEP. The recursion is bounded by KV_MAX_TXN_DEPTH. */
#define WIRE_BAD 1
#define WIRE_DEEP 2

static bool varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    *v = 0;
    for (int shift = 0; shift < 64 && *p < end; shift += 7) {
        uint8_t b = *(*p)++;
        *v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            return true;
    }
    return false;
}

typedef int (*wire_next)(const uint8_t *p, size_t n, int depth);

static int wire_walk(const uint8_t *p, size_t n, uint32_t nested, wire_next next, int depth)
{
    if (n == 0)
        return 0; /* p may be NULL (an empty entry): NULL + 0 is undefined in C */
    const uint8_t *end = p + n;
    while (p < end) {
        uint64_t key, v;
        if (!varint(&p, end, &key))
            return WIRE_BAD;
        uint64_t field = key >> 3;
        switch (key & 7) {
        case 0:
            if (!varint(&p, end, &v))
                return WIRE_BAD;
            break;
        case 1:
            if (end - p < 8)
                return WIRE_BAD;
            p += 8;
            break;
        case 5:
            if (end - p < 4)
                return WIRE_BAD;
            p += 4;
            break;
        case 2: {
            if (!varint(&p, end, &v) || v > (uint64_t)(end - p))
                return WIRE_BAD;
            if (field < 32 && (nested >> field & 1)) {
                int rc = next(p, (size_t)v, depth);
                if (rc)
                    return rc;
            }
            p += v;
            break;
        }
        default: /* groups: never in these messages */
            return WIRE_BAD;
        }
    }
    return 0;
}

static int wire_txn(const uint8_t *p, size_t n, int depth);

static int wire_op(const uint8_t *p, size_t n, int depth)
{
    return wire_walk(p, n, 1u << 4, wire_txn, depth + 1);
}

static int wire_txn(const uint8_t *p, size_t n, int depth)
{
    if (depth > KV_MAX_TXN_DEPTH)
        return WIRE_DEEP;
    return wire_walk(p, n, 1u << 2 | 1u << 3, wire_op, depth);
}

/* The same bound on a Result: field 5 holds a TxnResponse, whose field 3 holds ResponseOps,
 * whose field 4 holds a TxnResponse. */
static int wire_resp_txn(const uint8_t *p, size_t n, int depth);

static int wire_resp_op(const uint8_t *p, size_t n, int depth)
{
    return wire_walk(p, n, 1u << 4, wire_resp_txn, depth + 1);
}

static int wire_resp_txn(const uint8_t *p, size_t n, int depth)
{
    if (depth > KV_MAX_TXN_DEPTH)
        return WIRE_DEEP;
    return wire_walk(p, n, 1u << 3, wire_resp_op, depth);
}

int kv_check_txn_wire(const void *data, size_t len, struct kv_err *err)
{
    int rc = data || !len ? wire_txn(data, len, 0) : WIRE_BAD;
    if (rc == WIRE_DEEP)
        return kv_fail(err, KV_CODE_INVALID_ARGUMENT, KV_ERR_TXN_TOO_DEEP);
    if (rc)
        return kv_fail(err, KV_CODE_INVALID_ARGUMENT, "craft: malformed TxnRequest");
    return 0;
}

int kv_check_cmd_wire(const void *data, size_t len, struct kv_err *err)
{
    int rc = data || !len ? wire_walk(data, len, 1u << 3, wire_txn, 0) : WIRE_BAD;
    if (rc == WIRE_DEEP)
        return kv_fail(err, KV_CODE_INVALID_ARGUMENT, KV_ERR_TXN_TOO_DEEP);
    if (rc)
        return kv_fail(err, KV_CODE_INVALID_ARGUMENT, KV_ERR_BAD_COMMAND);
    return 0;
}

/* ---- the log command and the result ---- */

static int encode(Craft__Kv__Command *c, uint8_t **out, size_t *len)
{
    size_t n = craft__kv__command__get_packed_size(c);
    uint8_t *b = malloc(n ? n : 1);
    if (!b)
        return -1;
    craft__kv__command__pack(c, b);
    *out = b;
    *len = n;
    return 0;
}

/* The request is only read by pack; the casts drop const to fit protobuf-c's struct. */
int kv_cmd_encode_put(const Etcdserverpb__PutRequest *r, uint8_t **out, size_t *len)
{
    Craft__Kv__Command c = CRAFT__KV__COMMAND__INIT;
    c.op_case = CRAFT__KV__COMMAND__OP_PUT;
    c.put = (Etcdserverpb__PutRequest *)r;
    return encode(&c, out, len);
}

int kv_cmd_encode_delete_range(const Etcdserverpb__DeleteRangeRequest *r, uint8_t **out,
                               size_t *len)
{
    Craft__Kv__Command c = CRAFT__KV__COMMAND__INIT;
    c.op_case = CRAFT__KV__COMMAND__OP_DELETE_RANGE;
    c.delete_range = (Etcdserverpb__DeleteRangeRequest *)r;
    return encode(&c, out, len);
}

int kv_cmd_encode_txn(const Etcdserverpb__TxnRequest *r, uint8_t **out, size_t *len)
{
    Craft__Kv__Command c = CRAFT__KV__COMMAND__INIT;
    c.op_case = CRAFT__KV__COMMAND__OP_TXN;
    c.txn = (Etcdserverpb__TxnRequest *)r;
    return encode(&c, out, len);
}

int kv_cmd_encode_compaction(const Etcdserverpb__CompactionRequest *r, uint8_t **out,
                             size_t *len)
{
    Craft__Kv__Command c = CRAFT__KV__COMMAND__INIT;
    c.op_case = CRAFT__KV__COMMAND__OP_COMPACTION;
    c.compaction = (Etcdserverpb__CompactionRequest *)r;
    return encode(&c, out, len);
}

int kv_cmd_encode_lease_grant(const Etcdserverpb__LeaseGrantRequest *r, uint8_t **out,
                              size_t *len)
{
    /* Only the fields apply reads: a client's unknown fields stay out of the log (protobuf-c
     * would pack an overlong tag 0 back as one no member can decode). */
    Etcdserverpb__LeaseGrantRequest g = ETCDSERVERPB__LEASE_GRANT_REQUEST__INIT;
    g.ttl = r->ttl;
    g.id = r->id;
    Craft__Kv__Command c = CRAFT__KV__COMMAND__INIT;
    c.op_case = CRAFT__KV__COMMAND__OP_LEASE_GRANT;
    c.lease_grant = &g;
    return encode(&c, out, len);
}

int kv_cmd_encode_lease_revoke(int64_t id, uint8_t **out, size_t *len)
{
    Etcdserverpb__LeaseRevokeRequest r = ETCDSERVERPB__LEASE_REVOKE_REQUEST__INIT;
    r.id = id;
    Craft__Kv__Command c = CRAFT__KV__COMMAND__INIT;
    c.op_case = CRAFT__KV__COMMAND__OP_LEASE_REVOKE;
    c.lease_revoke = &r;
    return encode(&c, out, len);
}

int kv_cmd_encode_lease_checkpoint(const Etcdserverpb__LeaseCheckpointRequest *r, uint8_t **out,
                                   size_t *len)
{
    Craft__Kv__Command c = CRAFT__KV__COMMAND__INIT;
    c.op_case = CRAFT__KV__COMMAND__OP_LEASE_CHECKPOINT;
    c.lease_checkpoint = (Etcdserverpb__LeaseCheckpointRequest *)r;
    return encode(&c, out, len);
}

int kv_cmd_encode_auth(Craft__Kv__Command__OpCase op, const ProtobufCMessage *req,
                       const char *hash, uint8_t **out, size_t *len)
{
    /* Fresh messages with only the known fields, as for lease grants above. */
    Craft__Kv__Command c = CRAFT__KV__COMMAND__INIT;
    Etcdserverpb__AuthEnableRequest en = ETCDSERVERPB__AUTH_ENABLE_REQUEST__INIT;
    Etcdserverpb__AuthDisableRequest dis = ETCDSERVERPB__AUTH_DISABLE_REQUEST__INIT;
    Etcdserverpb__AuthUserAddRequest ua = ETCDSERVERPB__AUTH_USER_ADD_REQUEST__INIT;
    Authpb__UserAddOptions uo = AUTHPB__USER_ADD_OPTIONS__INIT;
    Etcdserverpb__AuthUserDeleteRequest ud = ETCDSERVERPB__AUTH_USER_DELETE_REQUEST__INIT;
    Etcdserverpb__AuthUserChangePasswordRequest up =
        ETCDSERVERPB__AUTH_USER_CHANGE_PASSWORD_REQUEST__INIT;
    Etcdserverpb__AuthUserGrantRoleRequest ug = ETCDSERVERPB__AUTH_USER_GRANT_ROLE_REQUEST__INIT;
    Etcdserverpb__AuthUserRevokeRoleRequest ur = ETCDSERVERPB__AUTH_USER_REVOKE_ROLE_REQUEST__INIT;
    Etcdserverpb__AuthRoleAddRequest ra = ETCDSERVERPB__AUTH_ROLE_ADD_REQUEST__INIT;
    Etcdserverpb__AuthRoleDeleteRequest rd = ETCDSERVERPB__AUTH_ROLE_DELETE_REQUEST__INIT;
    Etcdserverpb__AuthRoleGrantPermissionRequest rg =
        ETCDSERVERPB__AUTH_ROLE_GRANT_PERMISSION_REQUEST__INIT;
    Authpb__Permission pm = AUTHPB__PERMISSION__INIT;
    Etcdserverpb__AuthRoleRevokePermissionRequest rr =
        ETCDSERVERPB__AUTH_ROLE_REVOKE_PERMISSION_REQUEST__INIT;
    c.op_case = op;
    switch (op) {
    case CRAFT__KV__COMMAND__OP_AUTH_ENABLE:
        c.auth_enable = &en;
        break;
    case CRAFT__KV__COMMAND__OP_AUTH_DISABLE:
        c.auth_disable = &dis;
        break;
    case CRAFT__KV__COMMAND__OP_USER_ADD: {
        const Etcdserverpb__AuthUserAddRequest *r = (const void *)req;
        ua.name = r->name;
        ua.password = (char *)(hash ? hash : "");
        uo.no_password = r->options && r->options->no_password;
        ua.options = &uo;
        c.user_add = &ua;
        break;
    }
    case CRAFT__KV__COMMAND__OP_USER_DELETE:
        ud.name = ((const Etcdserverpb__AuthUserDeleteRequest *)req)->name;
        c.user_delete = &ud;
        break;
    case CRAFT__KV__COMMAND__OP_USER_CHANGE_PASSWORD:
        up.name = ((const Etcdserverpb__AuthUserChangePasswordRequest *)req)->name;
        up.password = (char *)(hash ? hash : "");
        c.user_change_password = &up;
        break;
    case CRAFT__KV__COMMAND__OP_USER_GRANT_ROLE:
        ug.user = ((const Etcdserverpb__AuthUserGrantRoleRequest *)req)->user;
        ug.role = ((const Etcdserverpb__AuthUserGrantRoleRequest *)req)->role;
        c.user_grant_role = &ug;
        break;
    case CRAFT__KV__COMMAND__OP_USER_REVOKE_ROLE:
        ur.name = ((const Etcdserverpb__AuthUserRevokeRoleRequest *)req)->name;
        ur.role = ((const Etcdserverpb__AuthUserRevokeRoleRequest *)req)->role;
        c.user_revoke_role = &ur;
        break;
    case CRAFT__KV__COMMAND__OP_ROLE_ADD:
        ra.name = ((const Etcdserverpb__AuthRoleAddRequest *)req)->name;
        c.role_add = &ra;
        break;
    case CRAFT__KV__COMMAND__OP_ROLE_DELETE:
        rd.role = ((const Etcdserverpb__AuthRoleDeleteRequest *)req)->role;
        c.role_delete = &rd;
        break;
    case CRAFT__KV__COMMAND__OP_ROLE_GRANT_PERMISSION: {
        const Etcdserverpb__AuthRoleGrantPermissionRequest *r = (const void *)req;
        rg.name = r->name;
        if (r->perm) {
            pm.permtype = r->perm->permtype;
            pm.key = r->perm->key;
            pm.range_end = r->perm->range_end;
            rg.perm = &pm;
        }
        c.role_grant_permission = &rg;
        break;
    }
    case CRAFT__KV__COMMAND__OP_ROLE_REVOKE_PERMISSION: {
        const Etcdserverpb__AuthRoleRevokePermissionRequest *r = (const void *)req;
        rr.role = r->role;
        rr.key = r->key;
        rr.range_end = r->range_end;
        c.role_revoke_permission = &rr;
        break;
    }
    default:
        return -1;
    }
    return encode(&c, out, len);
}

static size_t put_varint(uint8_t *p, uint64_t v)
{
    size_t n = 0;
    do {
        p[n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v);
    return n;
}

int kv_cmd_set_user(uint8_t **cmd, size_t *len, const char *user)
{
    /* A message field may come anywhere in a message, and protobuf-c merges repeats of it:
     * appending field 100 to the packed Command is the same as packing it with auth set. */
    Craft__Kv__AuthInfo ai = CRAFT__KV__AUTH_INFO__INIT;
    ai.user = (char *)(user ? user : "");
    ai.anonymous = !user;
    size_t n = craft__kv__auth_info__get_packed_size(&ai);
    uint8_t *b = realloc(*cmd, *len + 20 + n);
    if (!b)
        return -1;
    size_t at = *len;
    at += put_varint(b + at, 100u << 3 | 2);
    at += put_varint(b + at, n);
    craft__kv__auth_info__pack(&ai, b + at);
    *cmd = b;
    *len = at + n;
    return 0;
}

Craft__Kv__Result *kv_result_decode(const void *data, size_t len)
{
    if (!data && len)
        return NULL;
    /* A follower decodes the leader's bytes (forward.h): bound the nesting first, as for a
     * command (the store's own results are never deeper than the command they answer). */
    if (wire_walk(data, len, 1u << 5, wire_resp_txn, 0))
        return NULL;
    return craft__kv__result__unpack(NULL, len, data);
}
