/* auth_service.c: etcd's Auth service over the replicated auth state (see auth_service.h). */
#include "services/auth_service.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "services/auth_token.h"
#include "services/kvstore/kv_auth.h"
#include "services/kvstore/kv_cmd.h"

#define SALT_LEN 16
#define KEY_LEN 32

/* ---- passwords ------------------------------------------------------------------------------- */

static void hex(const uint8_t *p, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", p[i]);
}

static int unhex(const char *s, uint8_t *out, size_t n)
{
    if (strlen(s) < 2 * n)
        return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1)
            return -1;
        out[i] = (uint8_t)v;
    }
    return 0;
}

static int derive(const char *password, const uint8_t *salt, int iter, uint8_t *key)
{
    return PKCS5_PBKDF2_HMAC(password, (int)strlen(password), salt, SALT_LEN, iter, EVP_sha256(),
                             KEY_LEN, key) == 1 ? 0 : -1;
}

int auth_hash_password(const char *password, char *out, size_t outlen)
{
    uint8_t salt[SALT_LEN], key[KEY_LEN];
    char sh[2 * SALT_LEN + 1], kh[2 * KEY_LEN + 1];
    if (outlen < 160 || RAND_bytes(salt, sizeof salt) != 1 ||
        derive(password, salt, AUTH_PBKDF2_ITER, key))
        return -1;
    hex(salt, sizeof salt, sh);
    hex(key, sizeof key, kh);
    snprintf(out, outlen, "pbkdf2-sha256$%d$%s$%s", AUTH_PBKDF2_ITER, sh, kh);
    return 0;
}

bool auth_check_password(const char *password, const char *hash)
{
    int iter;
    char sh[2 * SALT_LEN + 1], kh[2 * KEY_LEN + 1];
    uint8_t salt[SALT_LEN], want[KEY_LEN], got[KEY_LEN];
    if (sscanf(hash, "pbkdf2-sha256$%d$%32[0-9a-f]$%64[0-9a-f]", &iter, sh, kh) != 3 ||
        iter < 1 || iter > 10000000 || unhex(sh, salt, SALT_LEN) || unhex(kh, want, KEY_LEN) ||
        derive(password, salt, iter, got))
        return false;
    return CRYPTO_memcmp(got, want, KEY_LEN) == 0;
}

/* ---- changes: auth log commands -------------------------------------------------------------- */

struct write_method {
    const char *name;
    const ProtobufCMessageDescriptor *req, *resp;
    Craft__Kv__Command__OpCase op;
};

static const struct write_method writes[] = {
    {"AuthEnable", &etcdserverpb__auth_enable_request__descriptor,
     &etcdserverpb__auth_enable_response__descriptor, CRAFT__KV__COMMAND__OP_AUTH_ENABLE},
    {"AuthDisable", &etcdserverpb__auth_disable_request__descriptor,
     &etcdserverpb__auth_disable_response__descriptor, CRAFT__KV__COMMAND__OP_AUTH_DISABLE},
    {"UserAdd", &etcdserverpb__auth_user_add_request__descriptor,
     &etcdserverpb__auth_user_add_response__descriptor, CRAFT__KV__COMMAND__OP_USER_ADD},
    {"UserDelete", &etcdserverpb__auth_user_delete_request__descriptor,
     &etcdserverpb__auth_user_delete_response__descriptor, CRAFT__KV__COMMAND__OP_USER_DELETE},
    {"UserChangePassword", &etcdserverpb__auth_user_change_password_request__descriptor,
     &etcdserverpb__auth_user_change_password_response__descriptor,
     CRAFT__KV__COMMAND__OP_USER_CHANGE_PASSWORD},
    {"UserGrantRole", &etcdserverpb__auth_user_grant_role_request__descriptor,
     &etcdserverpb__auth_user_grant_role_response__descriptor,
     CRAFT__KV__COMMAND__OP_USER_GRANT_ROLE},
    {"UserRevokeRole", &etcdserverpb__auth_user_revoke_role_request__descriptor,
     &etcdserverpb__auth_user_revoke_role_response__descriptor,
     CRAFT__KV__COMMAND__OP_USER_REVOKE_ROLE},
    {"RoleAdd", &etcdserverpb__auth_role_add_request__descriptor,
     &etcdserverpb__auth_role_add_response__descriptor, CRAFT__KV__COMMAND__OP_ROLE_ADD},
    {"RoleDelete", &etcdserverpb__auth_role_delete_request__descriptor,
     &etcdserverpb__auth_role_delete_response__descriptor, CRAFT__KV__COMMAND__OP_ROLE_DELETE},
    {"RoleGrantPermission", &etcdserverpb__auth_role_grant_permission_request__descriptor,
     &etcdserverpb__auth_role_grant_permission_response__descriptor,
     CRAFT__KV__COMMAND__OP_ROLE_GRANT_PERMISSION},
    {"RoleRevokePermission", &etcdserverpb__auth_role_revoke_permission_request__descriptor,
     &etcdserverpb__auth_role_revoke_permission_response__descriptor,
     CRAFT__KV__COMMAND__OP_ROLE_REVOKE_PERMISSION},
};
#define N_WRITES (sizeof writes / sizeof writes[0])

/* One registration per method; ctx points at one of these. */
struct method_ctx {
    struct kv_service *kv;
    const struct write_method *w;
    int read; /* READ_* for the reads */
};

static void handle_write(struct rpc_call *call, const ProtobufCMessage *m, void *ctx)
{
    const struct method_ctx *mc = ctx;
    const char *password = NULL;
    if (mc->w->op == CRAFT__KV__COMMAND__OP_USER_ADD) {
        const Etcdserverpb__AuthUserAddRequest *r = (const void *)m;
        if (!(r->options && r->options->no_password))
            password = r->password;
    } else if (mc->w->op == CRAFT__KV__COMMAND__OP_USER_CHANGE_PASSWORD) {
        password = ((const Etcdserverpb__AuthUserChangePasswordRequest *)m)->password;
    }
    char hash[200];
    if (password && auth_hash_password(password, hash, sizeof hash)) {
        rpc_call_fail(call, GRPC_STATUS_INTERNAL, "craft: cannot hash the password");
        return;
    }
    uint8_t *cmd;
    size_t len;
    if (kv_cmd_encode_auth(mc->w->op, m, password ? hash : NULL, &cmd, &len)) {
        rpc_call_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    OPENSSL_cleanse(hash, sizeof hash);
    kv_service_auth_write(mc->kv, call, mc->w->resp, cmd, len);
}

/* ---- reads: after a ReadIndex, from this member's state -------------------------------------- */

enum { READ_USER_GET = 1, READ_USER_LIST, READ_ROLE_GET, READ_ROLE_LIST };

struct read_op {
    struct kv_service *kv;
    struct rpc_call *call;
    int kind;
    char *name;
};

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

/* Names as NUL-terminated strings for a response; they live in a. */
static void answer_read(struct read_op *o, struct kv_auth *a)
{
    char buf[RPC_PEER_NAME_MAX];
    const char *user;
    if (kv_service_caller(o->kv, a, o->call, buf, sizeof buf, &user))
        return;
    struct kv_err err;
    bool admin = kv_auth_check_admin(a, user, &err) == 0;
    const Craft__Kv__AuthState *st = kv_auth_state(a);
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    int64_t rev = 0;
    kv_store_status(kv_service_store(o->kv), &rev, NULL, NULL, NULL);
    h.revision = rev;
    kv_service_fill_header(o->kv, &h);
    switch (o->kind) {
    case READ_USER_GET: {
        if (!admin && !(user && strcmp(user, o->name) == 0))
            break;
        const Authpb__User *u = kv_auth_user(a, o->name);
        if (!u) {
            rpc_call_fail(o->call, (grpc_status_code)KV_CODE_FAILED_PRECONDITION,
                          KV_ERR_USER_NOT_FOUND);
            return;
        }
        Etcdserverpb__AuthUserGetResponse r = ETCDSERVERPB__AUTH_USER_GET_RESPONSE__INIT;
        r.header = &h;
        r.n_roles = u->n_roles;
        r.roles = u->roles;
        rpc_call_reply_msg(o->call, &r.base);
        return;
    }
    case READ_ROLE_GET: {
        if (!admin && !kv_auth_has_role(a, user, o->name))
            break;
        const Authpb__Role *ro = kv_auth_role(a, o->name);
        if (!ro) {
            rpc_call_fail(o->call, (grpc_status_code)KV_CODE_FAILED_PRECONDITION,
                          KV_ERR_ROLE_NOT_FOUND);
            return;
        }
        Etcdserverpb__AuthRoleGetResponse r = ETCDSERVERPB__AUTH_ROLE_GET_RESPONSE__INIT;
        r.header = &h;
        r.n_perm = ro->n_keypermission;
        r.perm = ro->keypermission;
        rpc_call_reply_msg(o->call, &r.base);
        return;
    }
    case READ_USER_LIST:
    case READ_ROLE_LIST: {
        if (!admin)
            break;
        bool users = o->kind == READ_USER_LIST;
        size_t n = users ? st->n_users : st->n_roles;
        char **names = calloc(n + 1, sizeof *names);
        size_t i = 0;
        for (; names && i < n; i++) {
            ProtobufCBinaryData b = users ? st->users[i]->name : st->roles[i]->name;
            if (!(names[i] = malloc(b.len + 1)))
                break;
            memcpy(names[i], b.data, b.len);
            names[i][b.len] = 0;
        }
        if (!names || i < n) {
            rpc_call_fail(o->call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        } else if (users) {
            Etcdserverpb__AuthUserListResponse r = ETCDSERVERPB__AUTH_USER_LIST_RESPONSE__INIT;
            r.header = &h, r.n_users = n, r.users = names;
            rpc_call_reply_msg(o->call, &r.base);
        } else {
            Etcdserverpb__AuthRoleListResponse r = ETCDSERVERPB__AUTH_ROLE_LIST_RESPONSE__INIT;
            r.header = &h, r.n_roles = n, r.roles = names;
            rpc_call_reply_msg(o->call, &r.base);
        }
        for (size_t j = 0; names && j < i; j++)
            free(names[j]);
        free(names);
        return;
    }
    }
    rpc_call_fail(o->call, (grpc_status_code)err.code, err.msg);
}

static void on_readable(void *arg, bool ok)
{
    struct read_op *o = arg;
    if (ok) {
        struct kv_auth *a = kv_store_auth_get(kv_service_store(o->kv));
        answer_read(o, a);
        kv_auth_unref(a);
    }
    free(o->name);
    free(o);
}

static void handle_read(struct rpc_call *call, const ProtobufCMessage *m, void *ctx)
{
    const struct method_ctx *mc = ctx;
    const char *name = "";
    if (mc->read == READ_USER_GET)
        name = ((const Etcdserverpb__AuthUserGetRequest *)m)->name;
    else if (mc->read == READ_ROLE_GET)
        name = ((const Etcdserverpb__AuthRoleGetRequest *)m)->role;
    struct read_op *o = calloc(1, sizeof *o);
    if (!o || !(o->name = dup_str(name))) {
        free(o);
        rpc_call_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    o->kv = mc->kv, o->call = call, o->kind = mc->read;
    kv_service_read_barrier(mc->kv, call, on_readable, o);
}

/* ---- Authenticate: a password for a simple token --------------------------------------------- */

/* Checked against this member's applied state, in the gRPC thread (the hash costs tens of
 * milliseconds on purpose; etcd runs bcrypt in the request's goroutine too). */
static void handle_authenticate(struct rpc_call *call, const ProtobufCMessage *m, void *ctx)
{
    const struct method_ctx *mc = ctx;
    const Etcdserverpb__AuthenticateRequest *r = (const void *)m;
    struct auth_tokens *t = kv_service_tokens(mc->kv);
    struct kv_auth *a = kv_store_auth_get(kv_service_store(mc->kv));
    char hash[KV_AUTH_MAX_HASH + 1] = "", token[AUTH_TOKEN_LEN + 1];
    const Authpb__User *u = kv_auth_enabled(a) ? kv_auth_user(a, r->name) : NULL;
    if (u && !(u->options && u->options->no_password) && u->password.len < sizeof hash) {
        memcpy(hash, u->password.data, u->password.len);
        hash[u->password.len] = 0;
    }
    bool enabled = kv_auth_enabled(a);
    kv_auth_unref(a);
    struct kv_err err;
    if (!t)
        rpc_call_fail(call, GRPC_STATUS_UNIMPLEMENTED, "craft: tokens are not offered");
    else if (!enabled)
        rpc_call_fail(call, (grpc_status_code)KV_CODE_FAILED_PRECONDITION,
                      KV_ERR_AUTH_NOT_ENABLED);
    else if (!hash[0] || !auth_check_password(r->password, hash))
        rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT, KV_ERR_AUTH_FAILED);
    else if (auth_tokens_issue(t, r->name, hash, token, &err))
        rpc_call_fail(call, (grpc_status_code)err.code, err.msg);
    else {
        Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
        kv_service_fill_header(mc->kv, &h);
        Etcdserverpb__AuthenticateResponse resp = ETCDSERVERPB__AUTHENTICATE_RESPONSE__INIT;
        resp.header = &h;
        resp.token = token;
        rpc_call_reply_msg(call, &resp.base);
    }
    OPENSSL_cleanse(hash, sizeof hash);
    OPENSSL_cleanse(token, sizeof token);
}

/* ---- registration ---------------------------------------------------------------------------- */

static const struct {
    const char *name;
    const ProtobufCMessageDescriptor *req;
    int kind;
} reads[] = {
    {"UserGet", &etcdserverpb__auth_user_get_request__descriptor, READ_USER_GET},
    {"UserList", &etcdserverpb__auth_user_list_request__descriptor, READ_USER_LIST},
    {"RoleGet", &etcdserverpb__auth_role_get_request__descriptor, READ_ROLE_GET},
    {"RoleList", &etcdserverpb__auth_role_list_request__descriptor, READ_ROLE_LIST},
};
#define N_READS (sizeof reads / sizeof reads[0])

struct auth_service {
    struct method_ctx ctx[N_WRITES + N_READS + 1];
};

struct auth_service *auth_service_register(struct kv_service *kv, struct rpc_server *srv)
{
    struct auth_service *as = calloc(1, sizeof *as);
    if (!as)
        return NULL;
    struct method_ctx *ctx = as->ctx;
    int rc = 0;
    char name[96];
    for (size_t i = 0; i < N_WRITES; i++) {
        ctx[i] = (struct method_ctx){kv, &writes[i], 0};
        snprintf(name, sizeof name, "/etcdserverpb.Auth/%s", writes[i].name);
        rc |= rpc_server_register_unary_msg(srv, name, writes[i].req, handle_write, &ctx[i]);
    }
    for (size_t i = 0; i < N_READS; i++) {
        ctx[N_WRITES + i] = (struct method_ctx){kv, NULL, reads[i].kind};
        snprintf(name, sizeof name, "/etcdserverpb.Auth/%s", reads[i].name);
        rc |= rpc_server_register_unary_msg(srv, name, reads[i].req, handle_read,
                                            &ctx[N_WRITES + i]);
    }
    ctx[N_WRITES + N_READS] = (struct method_ctx){kv, NULL, 0};
    rc |= rpc_server_register_unary_msg(srv, "/etcdserverpb.Auth/Authenticate",
                                        &etcdserverpb__authenticate_request__descriptor,
                                        handle_authenticate, &ctx[N_WRITES + N_READS]);
    if (rc) {
        free(as);
        return NULL;
    }
    return as;
}

void auth_service_free(struct auth_service *as) { free(as); }
