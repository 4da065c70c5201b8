/* kv_auth_test: etcd 3.4's auth state and permission rules (services/kvstore/kv_auth.h): the
 * management commands with etcd's errors, the interval checks (points, ranges, prefixes,
 * from-key, overlapping and gapped grants, root), whole-request checks (Txn branches), and the
 * store's side: auth commands through apply, across a restart and through a snapshot. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "services/kvstore/kv_auth.h"
#include "services/kvstore/kv_cmd.h"
#include "tests/kv/kv_test_util.h"

typedef Craft__Kv__Command__OpCase op_t;

/* Applies one command; expects code (0 = success) and, on failure, etcd's message. Returns the
 * new state (or a unchanged on failure), releasing the old one on success. */
static struct kv_auth *run(struct kv_auth *a, op_t op, const ProtobufCMessage *req, int code,
                           const char *msg)
{
    uint8_t *b;
    size_t n;
    cr_assert_eq(kv_cmd_encode_auth(op, req, NULL, &b, &n), 0);
    Craft__Kv__Command *c = craft__kv__command__unpack(NULL, n, b);
    free(b);
    cr_assert(c);
    struct kv_auth *out = NULL;
    struct kv_err err = {0};
    int rc = kv_auth_apply(a, c, &out, &err);
    craft__kv__command__free_unpacked(c, NULL);
    if (code == 0) {
        cr_assert_eq(rc, 0, "op %d failed: %s", (int)op, err.msg);
        kv_auth_unref(a);
        return out;
    }
    cr_assert_eq(rc, -1, "op %d succeeded, expected %s", (int)op, msg);
    cr_assert_eq(err.code, code, "op %d: code %d, expected %d (%s)", (int)op, err.code, code, msg);
    cr_assert_str_eq(err.msg, msg);
    return a;
}

static struct kv_auth *user_add(struct kv_auth *a, const char *name, int code, const char *msg)
{
    Etcdserverpb__AuthUserAddRequest r = ETCDSERVERPB__AUTH_USER_ADD_REQUEST__INIT;
    r.name = (char *)name;
    return run(a, CRAFT__KV__COMMAND__OP_USER_ADD, &r.base, code, msg);
}

static struct kv_auth *role_add(struct kv_auth *a, const char *name, int code, const char *msg)
{
    Etcdserverpb__AuthRoleAddRequest r = ETCDSERVERPB__AUTH_ROLE_ADD_REQUEST__INIT;
    r.name = (char *)name;
    return run(a, CRAFT__KV__COMMAND__OP_ROLE_ADD, &r.base, code, msg);
}

static struct kv_auth *grant_role(struct kv_auth *a, const char *user, const char *role, int code,
                                  const char *msg)
{
    Etcdserverpb__AuthUserGrantRoleRequest r = ETCDSERVERPB__AUTH_USER_GRANT_ROLE_REQUEST__INIT;
    r.user = (char *)user;
    r.role = (char *)role;
    return run(a, CRAFT__KV__COMMAND__OP_USER_GRANT_ROLE, &r.base, code, msg);
}

static ProtobufCBinaryData bin(const char *s)
{
    return (ProtobufCBinaryData){s ? strlen(s) : 0, (uint8_t *)s};
}
#define FROM "\x01" /* stands for the one-byte "\0" range end */
static ProtobufCBinaryData end_bin(const char *s)
{
    static uint8_t zero = 0;
    if (s && strcmp(s, FROM) == 0)
        return (ProtobufCBinaryData){1, &zero};
    return bin(s);
}

static struct kv_auth *grant_perm(struct kv_auth *a, const char *role, int type, const char *key,
                                  const char *end, int code, const char *msg)
{
    Etcdserverpb__AuthRoleGrantPermissionRequest r =
        ETCDSERVERPB__AUTH_ROLE_GRANT_PERMISSION_REQUEST__INIT;
    Authpb__Permission p = AUTHPB__PERMISSION__INIT;
    p.permtype = (Authpb__Permission__Type)type;
    p.key = bin(key);
    p.range_end = end_bin(end);
    r.name = (char *)role;
    r.perm = &p;
    return run(a, CRAFT__KV__COMMAND__OP_ROLE_GRANT_PERMISSION, &r.base, code, msg);
}

static struct kv_auth *enable(struct kv_auth *a, int code, const char *msg)
{
    Etcdserverpb__AuthEnableRequest r = ETCDSERVERPB__AUTH_ENABLE_REQUEST__INIT;
    return run(a, CRAFT__KV__COMMAND__OP_AUTH_ENABLE, &r.base, code, msg);
}

enum { R = AUTHPB__PERMISSION__TYPE__READ, W = AUTHPB__PERMISSION__TYPE__WRITE,
       RW = AUTHPB__PERMISSION__TYPE__READWRITE };
#define FP KV_CODE_FAILED_PRECONDITION
#define IA KV_CODE_INVALID_ARGUMENT

/* root with the root role, auth enabled. */
static struct kv_auth *with_root(void)
{
    struct kv_auth *a = kv_auth_new();
    cr_assert(a);
    a = user_add(a, "root", 0, NULL);
    a = grant_role(a, "root", "root", 0, NULL);
    return enable(a, 0, NULL);
}

static bool allowed(const struct kv_auth *a, const char *user, const char *key, const char *end,
                    enum kv_auth_perm p)
{
    ProtobufCBinaryData k = bin(key), e = end_bin(end);
    struct kv_err err;
    int rc = kv_auth_check(a, user, k.data, k.len, e.data, e.len, p, &err);
    if (rc)
        cr_assert_str_eq(err.msg, KV_ERR_PERMISSION_DENIED);
    return rc == 0;
}

Test(kv_auth, management_errors_are_etcds)
{
    struct kv_auth *a = kv_auth_new();
    cr_assert_eq(kv_auth_revision(a), 1);
    a = enable(a, FP, KV_ERR_ROOT_USER_NOT_EXIST);
    a = user_add(a, "root", 0, NULL);
    cr_assert_eq(kv_auth_revision(a), 2);
    a = enable(a, FP, KV_ERR_ROOT_ROLE_NOT_EXIST);
    a = user_add(a, "root", FP, KV_ERR_USER_ALREADY_EXIST);
    a = user_add(a, "", IA, KV_ERR_USER_EMPTY);
    a = role_add(a, "", IA, KV_ERR_ROLE_EMPTY);
    a = grant_role(a, "root", "nope", FP, KV_ERR_ROLE_NOT_FOUND);
    a = grant_role(a, "ghost", "root", FP, KV_ERR_USER_NOT_FOUND);
    a = grant_role(a, "root", "root", 0, NULL); /* the root role need not exist */
    uint64_t rev = kv_auth_revision(a);
    a = grant_role(a, "root", "root", 0, NULL); /* already granted: a no-op */
    cr_assert_eq(kv_auth_revision(a), rev);
    a = enable(a, 0, NULL);
    cr_assert(kv_auth_enabled(a));
    cr_assert_eq(kv_auth_revision(a), rev, "AuthEnable commits no revision (etcd)");
    a = role_add(a, "r", 0, NULL);
    a = role_add(a, "r", FP, KV_ERR_ROLE_ALREADY_EXIST);
    a = grant_perm(a, "nope", R, "a", NULL, FP, KV_ERR_ROLE_NOT_FOUND);
    a = grant_perm(a, "r", R, "b", "a", IA, KV_ERR_INVALID_AUTH_MGMT);
    a = grant_perm(a, "r", R, "b", "b", IA, KV_ERR_INVALID_AUTH_MGMT);
    Etcdserverpb__AuthUserDeleteRequest ud = ETCDSERVERPB__AUTH_USER_DELETE_REQUEST__INIT;
    ud.name = "root";
    a = run(a, CRAFT__KV__COMMAND__OP_USER_DELETE, &ud.base, IA, KV_ERR_INVALID_AUTH_MGMT);
    ud.name = "ghost";
    a = run(a, CRAFT__KV__COMMAND__OP_USER_DELETE, &ud.base, FP, KV_ERR_USER_NOT_FOUND);
    Etcdserverpb__AuthUserRevokeRoleRequest ur = ETCDSERVERPB__AUTH_USER_REVOKE_ROLE_REQUEST__INIT;
    ur.name = "root", ur.role = "root";
    a = run(a, CRAFT__KV__COMMAND__OP_USER_REVOKE_ROLE, &ur.base, IA, KV_ERR_INVALID_AUTH_MGMT);
    ur.role = "r";
    a = run(a, CRAFT__KV__COMMAND__OP_USER_REVOKE_ROLE, &ur.base, FP, KV_ERR_ROLE_NOT_GRANTED);
    Etcdserverpb__AuthRoleDeleteRequest rd = ETCDSERVERPB__AUTH_ROLE_DELETE_REQUEST__INIT;
    rd.role = "root";
    a = run(a, CRAFT__KV__COMMAND__OP_ROLE_DELETE, &rd.base, IA, KV_ERR_INVALID_AUTH_MGMT);
    Etcdserverpb__AuthRoleRevokePermissionRequest rr =
        ETCDSERVERPB__AUTH_ROLE_REVOKE_PERMISSION_REQUEST__INIT;
    rr.role = "r", rr.key = bin("a");
    a = run(a, CRAFT__KV__COMMAND__OP_ROLE_REVOKE_PERMISSION, &rr.base, FP,
            KV_ERR_PERMISSION_NOT_GRANTED);
    kv_auth_unref(a);
}

Test(kv_auth, role_delete_takes_it_from_users_and_state_round_trips)
{
    struct kv_auth *a = with_root();
    a = user_add(a, "alice", 0, NULL);
    a = role_add(a, "r", 0, NULL);
    a = role_add(a, "s", 0, NULL);
    a = grant_role(a, "alice", "s", 0, NULL);
    a = grant_role(a, "alice", "r", 0, NULL);
    const Authpb__User *u = kv_auth_user(a, "alice");
    cr_assert_eq(u->n_roles, 2);
    cr_assert_str_eq(u->roles[0], "r", "roles are kept sorted");
    Etcdserverpb__AuthRoleDeleteRequest rd = ETCDSERVERPB__AUTH_ROLE_DELETE_REQUEST__INIT;
    rd.role = "r";
    a = run(a, CRAFT__KV__COMMAND__OP_ROLE_DELETE, &rd.base, 0, NULL);
    u = kv_auth_user(a, "alice");
    cr_assert_eq(u->n_roles, 1);
    cr_assert_str_eq(u->roles[0], "s");
    uint8_t *b;
    size_t n;
    cr_assert_eq(kv_auth_encode(a, &b, &n), 0);
    struct kv_err err;
    struct kv_auth *c = kv_auth_decode(b, n, &err);
    cr_assert(c, "%s", err.msg);
    cr_assert_eq(kv_auth_revision(c), kv_auth_revision(a));
    cr_assert(kv_auth_has_role(c, "alice", "s"));
    /* a state no command makes is refused: users out of order */
    Craft__Kv__AuthState *st = craft__kv__auth_state__unpack(NULL, n, b);
    Authpb__User *t = st->users[0];
    st->users[0] = st->users[1], st->users[1] = t;
    size_t m = craft__kv__auth_state__get_packed_size(st);
    uint8_t *bb = malloc(m);
    craft__kv__auth_state__pack(st, bb);
    cr_assert_null(kv_auth_decode(bb, m, &err));
    cr_assert_eq(err.code, KV_CODE_DATA_LOSS);
    free(bb);
    st->users[1] = st->users[0], st->users[0] = t;
    craft__kv__auth_state__free_unpacked(st, NULL);
    free(b);
    kv_auth_unref(c);
    kv_auth_unref(a);
}

Test(kv_auth, intervals_points_prefixes_from_key_and_gaps)
{
    struct kv_auth *a = with_root();
    a = user_add(a, "u", 0, NULL);
    a = role_add(a, "r", 0, NULL);
    a = grant_role(a, "u", "r", 0, NULL);
    a = grant_perm(a, "r", R, "k1", NULL, 0, NULL);    /* the key k1 */
    a = grant_perm(a, "r", RW, "a", "c", 0, NULL);     /* [a, c) */
    a = grant_perm(a, "r", R, "c", "e", 0, NULL);      /* [c, e): adjoins [a, c) */
    a = grant_perm(a, "r", R, "g", "h", 0, NULL);      /* [g, h): a gap [e, g) before it */
    a = grant_perm(a, "r", W, "p/", "p0", 0, NULL);    /* the prefix p/ */
    a = grant_perm(a, "r", R, "x", FROM, 0, NULL);     /* every key from x */

    cr_assert(allowed(a, "u", "k1", NULL, KV_AUTH_READ));
    cr_assert_not(allowed(a, "u", "k1", NULL, KV_AUTH_WRITE), "READ gives no write");
    cr_assert_not(allowed(a, "u", "k2", NULL, KV_AUTH_READ));
    cr_assert_not(allowed(a, "u", "k1", "k2", KV_AUTH_READ), "a point covers no range");
    cr_assert(allowed(a, "u", "b", NULL, KV_AUTH_WRITE), "READWRITE gives write");
    cr_assert(allowed(a, "u", "a", "c", KV_AUTH_READ));
    cr_assert(allowed(a, "u", "a", "e", KV_AUTH_READ), "adjoining grants cover together");
    cr_assert_not(allowed(a, "u", "a", "e", KV_AUTH_WRITE), "[c, e) is read only");
    cr_assert_not(allowed(a, "u", "a", "h", KV_AUTH_READ), "the gap [e, g)");
    cr_assert_not(allowed(a, "u", "f", NULL, KV_AUTH_READ));
    cr_assert_not(allowed(a, "u", "c", NULL, KV_AUTH_WRITE), "end is exclusive");
    cr_assert(allowed(a, "u", "p/1", NULL, KV_AUTH_WRITE));
    cr_assert(allowed(a, "u", "p/", "p0", KV_AUTH_WRITE), "the whole prefix");
    cr_assert_not(allowed(a, "u", "p", "p0", KV_AUTH_WRITE), "wider than the prefix");
    cr_assert(allowed(a, "u", "x", FROM, KV_AUTH_READ), "from-key within from-key");
    cr_assert(allowed(a, "u", "zzz", NULL, KV_AUTH_READ));
    cr_assert(allowed(a, "u", "y", "z", KV_AUTH_READ));
    cr_assert_not(allowed(a, "u", "w", FROM, KV_AUTH_READ));
    /* root is allowed everything; unknown users nothing */
    cr_assert(allowed(a, "root", "anything", FROM, KV_AUTH_WRITE));
    cr_assert_not(allowed(a, "nobody", "k1", NULL, KV_AUTH_READ));
    struct kv_err err;
    cr_assert_eq(kv_auth_check(a, NULL, "k1", 2, NULL, 0, KV_AUTH_READ, &err), -1);
    cr_assert_str_eq(err.msg, KV_ERR_USER_EMPTY);
    cr_assert_eq(kv_auth_check_admin(a, "u", &err), -1);
    cr_assert_eq(err.code, KV_CODE_PERMISSION_DENIED);
    cr_assert_eq(kv_auth_check_admin(a, "root", &err), 0);
    cr_assert_eq(kv_auth_check_admin(a, "ghost", &err), -1);
    cr_assert_str_eq(err.msg, KV_ERR_USER_NOT_FOUND);
    /* revoking takes the grant away */
    Etcdserverpb__AuthRoleRevokePermissionRequest rr =
        ETCDSERVERPB__AUTH_ROLE_REVOKE_PERMISSION_REQUEST__INIT;
    rr.role = "r", rr.key = bin("c"), rr.range_end = bin("e");
    a = run(a, CRAFT__KV__COMMAND__OP_ROLE_REVOKE_PERMISSION, &rr.base, 0, NULL);
    cr_assert_not(allowed(a, "u", "a", "e", KV_AUTH_READ));
    cr_assert(allowed(a, "u", "a", "c", KV_AUTH_READ));
    kv_auth_unref(a);
}

Test(kv_auth, disabled_allows_everything)
{
    struct kv_auth *a = kv_auth_new();
    cr_assert(allowed(a, "nobody", "k", NULL, KV_AUTH_WRITE));
    struct kv_err err;
    cr_assert_eq(kv_auth_check_admin(a, NULL, &err), 0);
    kv_auth_unref(a);
}

static Etcdserverpb__RequestOp *op_range(const char *key)
{
    Etcdserverpb__RequestOp *o = calloc(1, sizeof *o);
    Etcdserverpb__RangeRequest *r = calloc(1, sizeof *r);
    etcdserverpb__request_op__init(o);
    etcdserverpb__range_request__init(r);
    r->key = bin(key);
    o->request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE;
    o->request_range = r;
    return o;
}

static Etcdserverpb__RequestOp *op_put(const char *key)
{
    Etcdserverpb__RequestOp *o = calloc(1, sizeof *o);
    Etcdserverpb__PutRequest *p = calloc(1, sizeof *p);
    etcdserverpb__request_op__init(o);
    etcdserverpb__put_request__init(p);
    p->key = bin(key);
    o->request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT;
    o->request_put = p;
    return o;
}

Test(kv_auth, txn_checks_compares_and_both_branches)
{
    struct kv_auth *a = with_root();
    a = user_add(a, "u", 0, NULL);
    a = role_add(a, "r", 0, NULL);
    a = grant_role(a, "u", "r", 0, NULL);
    a = grant_perm(a, "r", RW, "ok", NULL, 0, NULL);
    Etcdserverpb__TxnRequest t = ETCDSERVERPB__TXN_REQUEST__INIT;
    Etcdserverpb__Compare cmp = ETCDSERVERPB__COMPARE__INIT, *cmps[] = {&cmp};
    cmp.key = bin("ok");
    Etcdserverpb__RequestOp *succ[] = {op_put("ok")}, *fail[] = {op_range("secret")};
    t.n_compare = 1, t.compare = cmps;
    t.n_success = 1, t.success = succ;
    struct kv_err err;
    cr_assert_eq(kv_auth_check_txn(a, "u", &t, &err), 0);
    t.n_failure = 1, t.failure = fail;
    cr_assert_eq(kv_auth_check_txn(a, "u", &t, &err), -1,
                 "a forbidden read in the failure branch alone is refused");
    cr_assert_eq(err.code, KV_CODE_PERMISSION_DENIED);
    t.n_failure = 0;
    cmp.key = bin("secret");
    cr_assert_eq(kv_auth_check_txn(a, "u", &t, &err), -1, "a compare needs read");
    cmp.key = bin("ok");
    /* a nested Txn's ops are checked too */
    Etcdserverpb__TxnRequest inner = ETCDSERVERPB__TXN_REQUEST__INIT;
    Etcdserverpb__RequestOp *ip[] = {op_put("secret")};
    inner.n_failure = 1, inner.failure = ip;
    Etcdserverpb__RequestOp nest = ETCDSERVERPB__REQUEST_OP__INIT, *np[] = {&nest};
    nest.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_TXN;
    nest.request_txn = &inner;
    t.n_failure = 1, t.failure = np;
    cr_assert_eq(kv_auth_check_txn(a, "u", &t, &err), -1);
    cr_assert_eq(kv_auth_check_txn(a, "root", &t, &err), 0);
    /* DeleteRange with prev_kv needs read as well as write */
    a = grant_perm(a, "r", W, "w", NULL, 0, NULL);
    Etcdserverpb__DeleteRangeRequest d = ETCDSERVERPB__DELETE_RANGE_REQUEST__INIT;
    d.key = bin("w");
    cr_assert_eq(kv_auth_check_delete(a, "u", &d, &err), 0);
    d.prev_kv = true;
    cr_assert_eq(kv_auth_check_delete(a, "u", &d, &err), -1);
    Etcdserverpb__PutRequest p = ETCDSERVERPB__PUT_REQUEST__INIT;
    p.key = bin("w");
    cr_assert_eq(kv_auth_check_put(a, "u", &p, &err), 0);
    p.prev_kv = true;
    cr_assert_eq(kv_auth_check_put(a, "u", &p, &err), -1);
    for (int i = 0; i < 1; i++) {
        free(succ[i]->request_put), free(succ[i]);
        free(fail[i]->request_range), free(fail[i]);
        free(ip[i]->request_put), free(ip[i]);
    }
    kv_auth_unref(a);
}

/* ---- through the store ---- */

static void store_cmd(struct kvt *t, op_t op, const ProtobufCMessage *req, int code)
{
    uint8_t *b;
    size_t n;
    cr_assert_eq(kv_cmd_encode_auth(op, req, NULL, &b, &n), 0);
    int fc;
    Craft__Kv__Result *r = kvt_apply(t, b, n, &fc);
    free(b);
    cr_assert(r);
    cr_assert_eq((int)r->code, code, "op %d: %u %s", (int)op, r->code, r->message);
    craft__kv__result__free_unpacked(r, NULL);
}

static void setup_store(struct kvt *t)
{
    Etcdserverpb__AuthUserAddRequest ua = ETCDSERVERPB__AUTH_USER_ADD_REQUEST__INIT;
    ua.name = "root";
    store_cmd(t, CRAFT__KV__COMMAND__OP_USER_ADD, &ua.base, 0);
    ua.name = "alice";
    store_cmd(t, CRAFT__KV__COMMAND__OP_USER_ADD, &ua.base, 0);
    Etcdserverpb__AuthRoleAddRequest ra = ETCDSERVERPB__AUTH_ROLE_ADD_REQUEST__INIT;
    ra.name = "r";
    store_cmd(t, CRAFT__KV__COMMAND__OP_ROLE_ADD, &ra.base, 0);
    Etcdserverpb__AuthUserGrantRoleRequest g = ETCDSERVERPB__AUTH_USER_GRANT_ROLE_REQUEST__INIT;
    g.user = "root", g.role = "root";
    store_cmd(t, CRAFT__KV__COMMAND__OP_USER_GRANT_ROLE, &g.base, 0);
    g.user = "alice", g.role = "r";
    store_cmd(t, CRAFT__KV__COMMAND__OP_USER_GRANT_ROLE, &g.base, 0);
    Etcdserverpb__AuthRoleGrantPermissionRequest gp =
        ETCDSERVERPB__AUTH_ROLE_GRANT_PERMISSION_REQUEST__INIT;
    Authpb__Permission p = AUTHPB__PERMISSION__INIT;
    p.permtype = AUTHPB__PERMISSION__TYPE__READ, p.key = bin("a/"), p.range_end = bin("a0");
    gp.name = "r", gp.perm = &p;
    store_cmd(t, CRAFT__KV__COMMAND__OP_ROLE_GRANT_PERMISSION, &gp.base, 0);
    Etcdserverpb__AuthEnableRequest en = ETCDSERVERPB__AUTH_ENABLE_REQUEST__INIT;
    store_cmd(t, CRAFT__KV__COMMAND__OP_AUTH_ENABLE, &en.base, 0);
    Etcdserverpb__AuthUserDeleteRequest ud = ETCDSERVERPB__AUTH_USER_DELETE_REQUEST__INIT;
    ud.name = "root"; /* refused once enabled, and the refusal is a result, not a failure */
    store_cmd(t, CRAFT__KV__COMMAND__OP_USER_DELETE, &ud.base, KV_CODE_INVALID_ARGUMENT);
}

static void expect_state(struct kv_store *s, const char *when)
{
    struct kv_auth *a = kv_store_auth_get(s);
    cr_assert(a);
    cr_assert(kv_auth_enabled(a), "%s: auth is not enabled", when);
    cr_assert(allowed(a, "alice", "a/x", NULL, KV_AUTH_READ), "%s: alice lost her read", when);
    cr_assert_not(allowed(a, "alice", "a/x", NULL, KV_AUTH_WRITE), "%s: alice may write", when);
    cr_assert_not(allowed(a, "alice", "b", NULL, KV_AUTH_READ), "%s: alice may read b", when);
    cr_assert(allowed(a, "root", "b", NULL, KV_AUTH_WRITE), "%s: root may not write", when);
    kv_auth_unref(a);
}

Test(kv_auth, store_applies_keeps_across_restart_and_snapshot)
{
    struct kvt t;
    kvt_open(&t, NULL);
    struct kv_auth *a = kv_store_auth_get(t.s);
    cr_assert_not(kv_auth_enabled(a));
    kv_auth_unref(a);
    kvt_put_ok(&t, "a/1", "v");
    setup_store(&t);
    expect_state(t.s, "applied");
    kvt_reopen(&t);
    expect_state(t.s, "after a reopen");

    struct kvt_buf buf = {0};
    uint64_t index, term;
    kvt_snapshot(&t, &buf, &index, &term);
    cr_assert_eq(buf.data[8], 4, "payload version 4");
    struct kvt u;
    kvt_open(&u, NULL);
    char err[256];
    cr_assert_eq(kvt_restore(&u, buf.data, buf.len, index, term, err, sizeof err), 0, "%s", err);
    expect_state(u.s, "restored from the snapshot");
    kvt_reopen(&u);
    expect_state(u.s, "restored, then reopened");
    /* apply checks a command that says who asked, at its point in the log */
    Etcdserverpb__PutRequest put = ETCDSERVERPB__PUT_REQUEST__INIT;
    put.key = bin("a/1");
    const char *who[] = {"alice", "root", NULL};
    const int want[] = {KV_CODE_PERMISSION_DENIED, 0, KV_CODE_INVALID_ARGUMENT};
    for (int i = 0; i < 3; i++) {
        uint8_t *b;
        size_t n;
        cr_assert_eq(kv_cmd_encode_put(&put, &b, &n), 0);
        cr_assert_eq(kv_cmd_set_user(&b, &n, who[i]), 0);
        int fc;
        Craft__Kv__Result *r = kvt_apply(&u, b, n, &fc);
        free(b);
        cr_assert_eq((int)r->code, want[i], "put by %s: %u %s", who[i] ? who[i] : "(none)",
                     r->code, r->message);
        craft__kv__result__free_unpacked(r, NULL);
    }
    /* a store that never had an auth command writes version 3 (older builds read it), which
     * restores to the empty auth state, replacing the one the store had */
    struct kvt v;
    kvt_open(&v, NULL);
    kvt_put_ok(&v, "k", "v");
    struct kvt_buf b3 = {0};
    kvt_snapshot(&v, &b3, &index, &term);
    cr_assert_eq(b3.data[8], 3, "a store without auth writes payload version %d", b3.data[8]);
    cr_assert_eq(kvt_restore(&u, b3.data, b3.len, index, term, err, sizeof err), 0, "%s", err);
    a = kv_store_auth_get(u.s);
    cr_assert_not(kv_auth_enabled(a));
    cr_assert_null(kv_auth_user(a, "alice"));
    kv_auth_unref(a);
    free(buf.data);
    free(b3.data);
    kvt_close(&v);
    kvt_close(&u);
    kvt_close(&t);
}
