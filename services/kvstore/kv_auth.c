/* kv_auth.c: the auth state as an immutable value, etcd 3.4's auth commands over it and its
 * permission checks. See kv_auth.h.
 *
 * A state is a packed craft.kv.AuthState unpacked by protobuf-c. A command builds the next state
 * as a draft: a new top-level message whose arrays point at the old users and roles, except for
 * the few the command replaces (allocated in a pool); the draft is packed and unpacked into the
 * new state, and the pool freed. Auth changes are rare and the state bounded, so the copy is
 * cheap next to the simplicity of never mutating a state that readers may hold. */
#include "services/kvstore/kv_auth.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "services/kvstore/kv_internal.h"

#define ROOT "root"
#define ERR_PERM_NOT_GIVEN "etcdserver: permission not given" /* etcd 3.5's; 3.4 crashes */
#define ERR_NO_MEMORY "craft: out of memory"

struct kv_auth {
    atomic_uint refs;
    Craft__Kv__AuthState *st;
};

/* ---- making and reading states ----------------------------------------------------------- */

static struct kv_auth *wrap(const uint8_t *data, size_t len)
{
    struct kv_auth *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    a->st = craft__kv__auth_state__unpack(NULL, len, data);
    if (!a->st) {
        free(a);
        return NULL;
    }
    atomic_init(&a->refs, 1);
    return a;
}

static struct kv_auth *from_msg(const Craft__Kv__AuthState *m)
{
    size_t n = craft__kv__auth_state__get_packed_size(m);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        return NULL;
    craft__kv__auth_state__pack(m, buf);
    struct kv_auth *a = wrap(buf, n);
    free(buf);
    return a;
}

struct kv_auth *kv_auth_new(void)
{
    Craft__Kv__AuthState m = CRAFT__KV__AUTH_STATE__INIT;
    m.revision = 1;
    return from_msg(&m);
}

struct kv_auth *kv_auth_ref(struct kv_auth *a)
{
    atomic_fetch_add(&a->refs, 1);
    return a;
}

void kv_auth_unref(struct kv_auth *a)
{
    if (!a || atomic_fetch_sub(&a->refs, 1) != 1)
        return;
    craft__kv__auth_state__free_unpacked(a->st, NULL);
    free(a);
}

int kv_auth_encode(const struct kv_auth *a, uint8_t **out, size_t *len)
{
    size_t n = craft__kv__auth_state__get_packed_size(a->st);
    *out = malloc(n ? n : 1);
    if (!*out)
        return -1;
    craft__kv__auth_state__pack(a->st, *out);
    *len = n;
    return 0;
}

bool kv_auth_enabled(const struct kv_auth *a) { return a->st->enabled; }
uint64_t kv_auth_revision(const struct kv_auth *a) { return a->st->revision; }
const Craft__Kv__AuthState *kv_auth_state(const struct kv_auth *a) { return a->st; }

static int name_cmp(ProtobufCBinaryData a, const char *b, size_t bn)
{
    return kv_bytes_cmp(a.data, a.len, b, bn);
}

/* Index of name in the sorted users (or roles), or where it would go (*found false). */
static size_t find_user(Authpb__User *const *us, size_t n, const char *name, size_t len,
                        bool *found)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = name_cmp(us[mid]->name, name, len);
        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = false;
    return lo;
}

static size_t find_role(Authpb__Role *const *rs, size_t n, const char *name, size_t len,
                        bool *found)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = name_cmp(rs[mid]->name, name, len);
        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = false;
    return lo;
}

const Authpb__User *kv_auth_user(const struct kv_auth *a, const char *name)
{
    bool found;
    size_t i = find_user(a->st->users, a->st->n_users, name, strlen(name), &found);
    return found ? a->st->users[i] : NULL;
}

const Authpb__Role *kv_auth_role(const struct kv_auth *a, const char *name)
{
    bool found;
    size_t i = find_role(a->st->roles, a->st->n_roles, name, strlen(name), &found);
    return found ? a->st->roles[i] : NULL;
}

static bool user_has(const Authpb__User *u, const char *role)
{
    for (size_t i = 0; i < u->n_roles; i++)
        if (strcmp(u->roles[i], role) == 0)
            return true;
    return false;
}

bool kv_auth_has_role(const struct kv_auth *a, const char *user, const char *role)
{
    const Authpb__User *u = user ? kv_auth_user(a, user) : NULL;
    return u && user_has(u, role);
}

/* ---- decoding: only what this module makes ----------------------------------------------- */

static struct kv_auth *bad(struct kv_auth *a, struct kv_err *err, const char *why)
{
    kv_auth_unref(a);
    kv_fail(err, KV_CODE_DATA_LOSS, why);
    return NULL;
}

static bool name_ok(ProtobufCBinaryData n)
{
    return n.len >= 1 && n.len <= KV_AUTH_MAX_NAME && !memchr(n.data, 0, n.len);
}

struct kv_auth *kv_auth_decode(const void *data, size_t len, struct kv_err *err)
{
    if (len == 0)
        return kv_auth_new() ?: (kv_fail(err, KV_CODE_INTERNAL, ERR_NO_MEMORY), NULL);
    struct kv_auth *a = wrap(data, len);
    if (!a)
        return bad(NULL, err, "craft: auth state: not a craft.kv.AuthState");
    const Craft__Kv__AuthState *s = a->st;
    if (s->revision < 1)
        return bad(a, err, "craft: auth state: revision 0");
    if (s->n_users > KV_AUTH_MAX_USERS || s->n_roles > KV_AUTH_MAX_ROLES)
        return bad(a, err, "craft: auth state: too many users or roles");
    size_t grants = 0, perms = 0;
    for (size_t i = 0; i < s->n_users; i++) {
        const Authpb__User *u = s->users[i];
        if (!name_ok(u->name) || u->password.len > KV_AUTH_MAX_HASH)
            return bad(a, err, "craft: auth state: a user's name or password hash");
        if (i && kv_bytes_cmp(s->users[i - 1]->name.data, s->users[i - 1]->name.len, u->name.data,
                              u->name.len) >= 0)
            return bad(a, err, "craft: auth state: users out of order");
        grants += u->n_roles;
        for (size_t j = 0; j < u->n_roles; j++) {
            size_t n = strlen(u->roles[j]);
            if (n < 1 || n > KV_AUTH_MAX_NAME || (j && strcmp(u->roles[j - 1], u->roles[j]) >= 0))
                return bad(a, err, "craft: auth state: a user's roles");
        }
    }
    for (size_t i = 0; i < s->n_roles; i++) {
        const Authpb__Role *r = s->roles[i];
        if (!name_ok(r->name))
            return bad(a, err, "craft: auth state: a role's name");
        if (i && kv_bytes_cmp(s->roles[i - 1]->name.data, s->roles[i - 1]->name.len, r->name.data,
                              r->name.len) >= 0)
            return bad(a, err, "craft: auth state: roles out of order");
        perms += r->n_keypermission;
        for (size_t j = 0; j < r->n_keypermission; j++) {
            const Authpb__Permission *p = r->keypermission[j];
            if ((unsigned)p->permtype > AUTHPB__PERMISSION__TYPE__READWRITE ||
                p->key.len > KV_AUTH_MAX_PERM_KEY || p->range_end.len > KV_AUTH_MAX_PERM_KEY)
                return bad(a, err, "craft: auth state: a permission");
            if (j && kv_bytes_cmp(r->keypermission[j - 1]->key.data,
                                  r->keypermission[j - 1]->key.len, p->key.data, p->key.len) > 0)
                return bad(a, err, "craft: auth state: permissions out of order");
        }
    }
    if (grants > KV_AUTH_MAX_GRANTS || perms > KV_AUTH_MAX_PERMS)
        return bad(a, err, "craft: auth state: too many grants or permissions");
    return a;
}

/* ---- commands ------------------------------------------------------------------------------ */

/* Allocations of a draft, freed together once it is packed. */
struct pool {
    void **p;
    size_t n, cap;
    bool oom;
};

static void *pool_alloc(struct pool *pl, size_t size)
{
    if (pl->oom)
        return NULL;
    if (pl->n == pl->cap) {
        size_t cap = pl->cap ? 2 * pl->cap : 16;
        void **p = realloc(pl->p, cap * sizeof *p);
        if (!p) {
            pl->oom = true;
            return NULL;
        }
        pl->p = p, pl->cap = cap;
    }
    void *m = calloc(1, size ? size : 1);
    if (!m) {
        pl->oom = true;
        return NULL;
    }
    return pl->p[pl->n++] = m;
}

static void pool_free(struct pool *pl)
{
    for (size_t i = 0; i < pl->n; i++)
        free(pl->p[i]);
    free(pl->p);
}

struct draft {
    Craft__Kv__AuthState st;
    struct pool pool;
    struct kv_err *err;
};

static int fail(struct draft *d, int code, const char *msg) { return kv_fail(d->err, code, msg); }

static int nomem(struct draft *d) { return fail(d, KV_CODE_INTERNAL, ERR_NO_MEMORY); }

/* Copies of the old arrays, with room for one more, in the pool. */
static int draft_init(struct draft *d, const Craft__Kv__AuthState *old, struct kv_err *err)
{
    d->st = *old;
    d->st.base.unknown_fields = NULL, d->st.base.n_unknown_fields = 0;
    d->err = err;
    Authpb__User **us = pool_alloc(&d->pool, (old->n_users + 1) * sizeof *us);
    Authpb__Role **rs = pool_alloc(&d->pool, (old->n_roles + 1) * sizeof *rs);
    if (!us || !rs)
        return nomem(d);
    /* an empty array may be NULL, which memcpy must never get, even for 0 bytes */
    if (old->n_users)
        memcpy(us, old->users, old->n_users * sizeof *us);
    if (old->n_roles)
        memcpy(rs, old->roles, old->n_roles * sizeof *rs);
    d->st.users = us, d->st.roles = rs;
    return 0;
}

static size_t total_grants(const Craft__Kv__AuthState *s)
{
    size_t n = 0;
    for (size_t i = 0; i < s->n_users; i++)
        n += s->users[i]->n_roles;
    return n;
}

static size_t total_perms(const Craft__Kv__AuthState *s)
{
    size_t n = 0;
    for (size_t i = 0; i < s->n_roles; i++)
        n += s->roles[i]->n_keypermission;
    return n;
}

/* A shallow copy of user u in the pool, its roles array copied too (room for one more). */
static Authpb__User *user_copy(struct draft *d, const Authpb__User *u)
{
    Authpb__User *c = pool_alloc(&d->pool, sizeof *c);
    char **roles = pool_alloc(&d->pool, (u->n_roles + 1) * sizeof *roles);
    if (!c || !roles)
        return NULL;
    *c = *u;
    c->base.unknown_fields = NULL, c->base.n_unknown_fields = 0;
    if (u->n_roles)
        memcpy(roles, u->roles, u->n_roles * sizeof *roles);
    c->roles = roles;
    return c;
}

static Authpb__Role *role_copy(struct draft *d, const Authpb__Role *r, size_t extra)
{
    Authpb__Role *c = pool_alloc(&d->pool, sizeof *c);
    Authpb__Permission **ps = pool_alloc(&d->pool, (r->n_keypermission + extra) * sizeof *ps);
    if (!c || !ps)
        return NULL;
    *c = *r;
    c->base.unknown_fields = NULL, c->base.n_unknown_fields = 0;
    if (r->n_keypermission)
        memcpy(ps, r->keypermission, r->n_keypermission * sizeof *ps);
    c->keypermission = ps;
    return c;
}

static bool str_name_ok(const char *s) { return strlen(s) <= KV_AUTH_MAX_NAME; }

static int user_lookup(struct draft *d, const char *name, size_t *idx)
{
    bool found;
    *idx = find_user(d->st.users, d->st.n_users, name, strlen(name), &found);
    return found ? 0 : fail(d, KV_CODE_FAILED_PRECONDITION, KV_ERR_USER_NOT_FOUND);
}

static int role_lookup(struct draft *d, const char *name, size_t *idx)
{
    bool found;
    *idx = find_role(d->st.roles, d->st.n_roles, name, strlen(name), &found);
    return found ? 0 : fail(d, KV_CODE_FAILED_PRECONDITION, KV_ERR_ROLE_NOT_FOUND);
}

static int auth_enable(struct draft *d)
{
    if (d->st.enabled)
        return 1; /* etcd: already enabled, ignored */
    size_t i;
    bool found;
    i = find_user(d->st.users, d->st.n_users, ROOT, strlen(ROOT), &found);
    if (!found)
        return fail(d, KV_CODE_FAILED_PRECONDITION, KV_ERR_ROOT_USER_NOT_EXIST);
    if (!user_has(d->st.users[i], ROOT))
        return fail(d, KV_CODE_FAILED_PRECONDITION, KV_ERR_ROOT_ROLE_NOT_EXIST);
    d->st.enabled = true;
    d->st.revision--; /* etcd's AuthEnable does not commit a revision */
    return 0;
}

static int auth_disable(struct draft *d)
{
    if (!d->st.enabled)
        return 1;
    d->st.enabled = false;
    return 0;
}

static int user_add(struct draft *d, const Etcdserverpb__AuthUserAddRequest *r)
{
    if (!r->name[0])
        return fail(d, KV_CODE_INVALID_ARGUMENT, KV_ERR_USER_EMPTY);
    if (!str_name_ok(r->name))
        return fail(d, KV_CODE_INVALID_ARGUMENT,
                    "craft: user name is too long (at most 256 bytes)");
    if (strlen(r->password) > KV_AUTH_MAX_HASH)
        return fail(d, KV_CODE_INVALID_ARGUMENT, "craft: password hash is too long");
    bool found;
    size_t i = find_user(d->st.users, d->st.n_users, r->name, strlen(r->name), &found);
    if (found)
        return fail(d, KV_CODE_FAILED_PRECONDITION, KV_ERR_USER_ALREADY_EXIST);
    if (d->st.n_users >= KV_AUTH_MAX_USERS)
        return fail(d, KV_CODE_RESOURCE_EXHAUSTED, "craft: too many users (at most 4096)");
    Authpb__User *u = pool_alloc(&d->pool, sizeof *u);
    Authpb__UserAddOptions *o = pool_alloc(&d->pool, sizeof *o);
    if (!u || !o)
        return nomem(d);
    authpb__user__init(u);
    authpb__user_add_options__init(o);
    o->no_password = r->options && r->options->no_password;
    u->name = (ProtobufCBinaryData){strlen(r->name), (uint8_t *)r->name};
    if (!o->no_password)
        u->password = (ProtobufCBinaryData){strlen(r->password), (uint8_t *)r->password};
    u->options = o;
    memmove(&d->st.users[i + 1], &d->st.users[i], (d->st.n_users - i) * sizeof *d->st.users);
    d->st.users[i] = u;
    d->st.n_users++;
    return 0;
}

static int user_delete(struct draft *d, const char *name)
{
    if (d->st.enabled && strcmp(name, ROOT) == 0)
        return fail(d, KV_CODE_INVALID_ARGUMENT, KV_ERR_INVALID_AUTH_MGMT);
    size_t i;
    if (user_lookup(d, name, &i))
        return -1;
    memmove(&d->st.users[i], &d->st.users[i + 1], (d->st.n_users - i - 1) * sizeof *d->st.users);
    d->st.n_users--;
    return 0;
}

static int user_passwd(struct draft *d, const Etcdserverpb__AuthUserChangePasswordRequest *r)
{
    size_t i;
    if (user_lookup(d, r->name, &i))
        return -1;
    if (strlen(r->password) > KV_AUTH_MAX_HASH)
        return fail(d, KV_CODE_INVALID_ARGUMENT, "craft: password hash is too long");
    Authpb__User *u = user_copy(d, d->st.users[i]);
    if (!u)
        return nomem(d);
    u->password = (ProtobufCBinaryData){strlen(r->password), (uint8_t *)r->password};
    d->st.users[i] = u;
    return 0;
}

static int user_grant(struct draft *d, const Etcdserverpb__AuthUserGrantRoleRequest *r)
{
    size_t i, ri;
    if (user_lookup(d, r->user, &i))
        return -1;
    if (strcmp(r->role, ROOT) != 0 && role_lookup(d, r->role, &ri))
        return -1; /* etcd: the root role need not exist to be granted */
    if (!r->role[0] || !str_name_ok(r->role))
        return fail(d, KV_CODE_FAILED_PRECONDITION, KV_ERR_ROLE_NOT_FOUND);
    const Authpb__User *old = d->st.users[i];
    size_t at = 0;
    while (at < old->n_roles && strcmp(old->roles[at], r->role) < 0)
        at++;
    if (at < old->n_roles && strcmp(old->roles[at], r->role) == 0)
        return 1; /* etcd: already granted, ignored */
    if (total_grants(&d->st) >= KV_AUTH_MAX_GRANTS)
        return fail(d, KV_CODE_RESOURCE_EXHAUSTED, "craft: too many role grants (at most 16384)");
    Authpb__User *u = user_copy(d, old);
    if (!u)
        return nomem(d);
    memmove(&u->roles[at + 1], &u->roles[at], (u->n_roles - at) * sizeof *u->roles);
    u->roles[at] = r->role;
    u->n_roles++;
    d->st.users[i] = u;
    return 0;
}

/* Removes role from user slot i; 0 when it was granted, 1 when not (nothing done). */
static int user_drop_role(struct draft *d, size_t i, const char *role)
{
    const Authpb__User *old = d->st.users[i];
    if (!user_has(old, role))
        return 1;
    Authpb__User *u = user_copy(d, old);
    if (!u)
        return nomem(d);
    size_t n = 0;
    for (size_t j = 0; j < old->n_roles; j++)
        if (strcmp(old->roles[j], role) != 0)
            u->roles[n++] = old->roles[j];
    u->n_roles = n;
    d->st.users[i] = u;
    return 0;
}

static int user_revoke(struct draft *d, const Etcdserverpb__AuthUserRevokeRoleRequest *r)
{
    if (d->st.enabled && strcmp(r->name, ROOT) == 0 && strcmp(r->role, ROOT) == 0)
        return fail(d, KV_CODE_INVALID_ARGUMENT, KV_ERR_INVALID_AUTH_MGMT);
    size_t i;
    if (user_lookup(d, r->name, &i))
        return -1;
    int rc = user_drop_role(d, i, r->role);
    if (rc == 1)
        return fail(d, KV_CODE_FAILED_PRECONDITION, KV_ERR_ROLE_NOT_GRANTED);
    return rc;
}

static int role_add(struct draft *d, const char *name)
{
    if (!name[0])
        return fail(d, KV_CODE_INVALID_ARGUMENT, KV_ERR_ROLE_EMPTY);
    if (!str_name_ok(name))
        return fail(d, KV_CODE_INVALID_ARGUMENT,
                    "craft: role name is too long (at most 256 bytes)");
    bool found;
    size_t i = find_role(d->st.roles, d->st.n_roles, name, strlen(name), &found);
    if (found)
        return fail(d, KV_CODE_FAILED_PRECONDITION, KV_ERR_ROLE_ALREADY_EXIST);
    if (d->st.n_roles >= KV_AUTH_MAX_ROLES)
        return fail(d, KV_CODE_RESOURCE_EXHAUSTED, "craft: too many roles (at most 4096)");
    Authpb__Role *r = pool_alloc(&d->pool, sizeof *r);
    if (!r)
        return nomem(d);
    authpb__role__init(r);
    r->name = (ProtobufCBinaryData){strlen(name), (uint8_t *)name};
    memmove(&d->st.roles[i + 1], &d->st.roles[i], (d->st.n_roles - i) * sizeof *d->st.roles);
    d->st.roles[i] = r;
    d->st.n_roles++;
    return 0;
}

static int role_delete(struct draft *d, const char *name)
{
    if (d->st.enabled && strcmp(name, ROOT) == 0)
        return fail(d, KV_CODE_INVALID_ARGUMENT, KV_ERR_INVALID_AUTH_MGMT);
    size_t i;
    if (role_lookup(d, name, &i))
        return -1;
    memmove(&d->st.roles[i], &d->st.roles[i + 1], (d->st.n_roles - i - 1) * sizeof *d->st.roles);
    d->st.n_roles--;
    for (size_t u = 0; u < d->st.n_users; u++)
        if (user_drop_role(d, u, name) < 0)
            return -1;
    return 0;
}

static bool bytes_eq(ProtobufCBinaryData a, ProtobufCBinaryData b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.data, b.data, a.len) == 0);
}

static int role_grant(struct draft *d, const Etcdserverpb__AuthRoleGrantPermissionRequest *r)
{
    size_t i;
    if (role_lookup(d, r->name, &i))
        return -1;
    const Authpb__Permission *p = r->perm;
    if (!p)
        return fail(d, KV_CODE_INVALID_ARGUMENT, ERR_PERM_NOT_GIVEN);
    if ((unsigned)p->permtype > AUTHPB__PERMISSION__TYPE__READWRITE)
        return fail(d, KV_CODE_INVALID_ARGUMENT, KV_ERR_BAD_ENUM);
    if (p->key.len > KV_AUTH_MAX_PERM_KEY || p->range_end.len > KV_AUTH_MAX_PERM_KEY)
        return fail(d, KV_CODE_INVALID_ARGUMENT,
                    "craft: permission key or range end is too long (at most 1024 bytes)");
    /* An inverted range, [key, range_end) with range_end <= key: etcd 3.4 stores it and its
     * interval tree then matches odd keys; craft refuses it (docs/auth.md). range_end "\0"
     * means "from key" and is not inverted. */
    bool from_key = p->range_end.len == 1 && p->range_end.data[0] == 0;
    if (p->range_end.len && !from_key &&
        kv_bytes_cmp(p->key.data, p->key.len, p->range_end.data, p->range_end.len) >= 0)
        return fail(d, KV_CODE_INVALID_ARGUMENT, KV_ERR_INVALID_AUTH_MGMT);
    const Authpb__Role *old = d->st.roles[i];
    Authpb__Role *c = role_copy(d, old, 1);
    Authpb__Permission *np = pool_alloc(&d->pool, sizeof *np);
    if (!c || !np)
        return nomem(d);
    authpb__permission__init(np);
    np->permtype = p->permtype;
    np->key = p->key;
    np->range_end = p->range_end;
    size_t at = 0;
    while (at < c->n_keypermission &&
           kv_bytes_cmp(c->keypermission[at]->key.data, c->keypermission[at]->key.len, p->key.data,
                        p->key.len) <= 0) {
        if (bytes_eq(c->keypermission[at]->key, p->key) &&
            bytes_eq(c->keypermission[at]->range_end, p->range_end)) {
            c->keypermission[at] = np; /* etcd: an update of the type */
            d->st.roles[i] = c;
            return 0;
        }
        at++;
    }
    if (total_perms(&d->st) >= KV_AUTH_MAX_PERMS)
        return fail(d, KV_CODE_RESOURCE_EXHAUSTED, "craft: too many permissions (at most 16384)");
    memmove(&c->keypermission[at + 1], &c->keypermission[at],
            (c->n_keypermission - at) * sizeof *c->keypermission);
    c->keypermission[at] = np;
    c->n_keypermission++;
    d->st.roles[i] = c;
    return 0;
}

static int role_revoke(struct draft *d, const Etcdserverpb__AuthRoleRevokePermissionRequest *r)
{
    size_t i;
    if (role_lookup(d, r->role, &i))
        return -1;
    const Authpb__Role *old = d->st.roles[i];
    Authpb__Role *c = role_copy(d, old, 0);
    if (!c)
        return nomem(d);
    size_t n = 0;
    for (size_t j = 0; j < old->n_keypermission; j++)
        if (!bytes_eq(old->keypermission[j]->key, r->key) ||
            !bytes_eq(old->keypermission[j]->range_end, r->range_end))
            c->keypermission[n++] = old->keypermission[j];
    if (n == old->n_keypermission)
        return fail(d, KV_CODE_FAILED_PRECONDITION, KV_ERR_PERMISSION_NOT_GRANTED);
    c->n_keypermission = n;
    d->st.roles[i] = c;
    return 0;
}

bool kv_auth_is_cmd(const Craft__Kv__Command *cmd)
{
    return cmd->op_case >= CRAFT__KV__COMMAND__OP_AUTH_ENABLE &&
           cmd->op_case <= CRAFT__KV__COMMAND__OP_ROLE_REVOKE_PERMISSION;
}

/* A nested message protobuf-c left NULL (the client sent none) would be etcd's empty one. */
#define REQ(field, msg)                                                                           \
    do {                                                                                          \
        if (!cmd->field)                                                                          \
            return kv_fail(err, KV_CODE_INVALID_ARGUMENT, KV_ERR_BAD_COMMAND);                    \
        (void)(msg *)cmd->field;                                                                  \
    } while (0)

int kv_auth_apply(const struct kv_auth *a, const Craft__Kv__Command *cmd, struct kv_auth **out,
                  struct kv_err *err)
{
    struct draft d = {0};
    int rc;
    *out = NULL;
    if (!kv_auth_is_cmd(cmd))
        return kv_fail(err, KV_CODE_INVALID_ARGUMENT, KV_ERR_BAD_COMMAND);
    if (draft_init(&d, a->st, err)) {
        pool_free(&d.pool);
        return -1;
    }
    switch (cmd->op_case) {
    case CRAFT__KV__COMMAND__OP_AUTH_ENABLE:
        rc = auth_enable(&d);
        break;
    case CRAFT__KV__COMMAND__OP_AUTH_DISABLE:
        rc = auth_disable(&d);
        break;
    case CRAFT__KV__COMMAND__OP_USER_ADD:
        REQ(user_add, Etcdserverpb__AuthUserAddRequest);
        rc = user_add(&d, cmd->user_add);
        break;
    case CRAFT__KV__COMMAND__OP_USER_DELETE:
        REQ(user_delete, Etcdserverpb__AuthUserDeleteRequest);
        rc = user_delete(&d, cmd->user_delete->name);
        break;
    case CRAFT__KV__COMMAND__OP_USER_CHANGE_PASSWORD:
        REQ(user_change_password, Etcdserverpb__AuthUserChangePasswordRequest);
        rc = user_passwd(&d, cmd->user_change_password);
        break;
    case CRAFT__KV__COMMAND__OP_USER_GRANT_ROLE:
        REQ(user_grant_role, Etcdserverpb__AuthUserGrantRoleRequest);
        rc = user_grant(&d, cmd->user_grant_role);
        break;
    case CRAFT__KV__COMMAND__OP_USER_REVOKE_ROLE:
        REQ(user_revoke_role, Etcdserverpb__AuthUserRevokeRoleRequest);
        rc = user_revoke(&d, cmd->user_revoke_role);
        break;
    case CRAFT__KV__COMMAND__OP_ROLE_ADD:
        REQ(role_add, Etcdserverpb__AuthRoleAddRequest);
        rc = role_add(&d, cmd->role_add->name);
        break;
    case CRAFT__KV__COMMAND__OP_ROLE_DELETE:
        REQ(role_delete, Etcdserverpb__AuthRoleDeleteRequest);
        rc = role_delete(&d, cmd->role_delete->role);
        break;
    case CRAFT__KV__COMMAND__OP_ROLE_GRANT_PERMISSION:
        REQ(role_grant_permission, Etcdserverpb__AuthRoleGrantPermissionRequest);
        rc = role_grant(&d, cmd->role_grant_permission);
        break;
    case CRAFT__KV__COMMAND__OP_ROLE_REVOKE_PERMISSION:
        REQ(role_revoke_permission, Etcdserverpb__AuthRoleRevokePermissionRequest);
        rc = role_revoke(&d, cmd->role_revoke_permission);
        break;
    default:
        rc = kv_fail(err, KV_CODE_INVALID_ARGUMENT, KV_ERR_BAD_COMMAND);
    }
    if (rc == 0)
        d.st.revision++;
    if (rc >= 0) /* 1: a no-op that succeeds; the same state again */
        *out = from_msg(&d.st);
    pool_free(&d.pool);
    if (rc < 0)
        return -1;
    if (!*out)
        return kv_fail(err, KV_CODE_INTERNAL, ERR_NO_MEMORY);
    return 0;
}

/* ---- checks: etcd's interval rules -------------------------------------------------------- */

/* etcd's BytesAffineComparable: an empty key is above every other. */
static int affine_cmp(const uint8_t *a, size_t an, const uint8_t *b, size_t bn)
{
    if (an == 0)
        return bn == 0 ? 0 : 1;
    if (bn == 0)
        return -1;
    return kv_bytes_cmp(a, an, b, bn);
}

/* [b, e); a point k is [k, k "\0"). The end of a point points into buf. */
struct ivl {
    const uint8_t *b, *e;
    size_t bl, el;
};

/* etcd's Interval.Compare == 0: the two overlap. */
static bool overlaps(const struct ivl *x, const struct ivl *q)
{
    if (affine_cmp(x->b, x->bl, q->b, q->bl) < 0 && affine_cmp(x->e, x->el, q->b, q->bl) <= 0)
        return false;
    return affine_cmp(x->b, x->bl, q->e, q->el) < 0;
}

/* The point [k, k "\0") in a malloc'd end. */
static int point(struct ivl *v, const uint8_t *k, size_t kl, uint8_t **buf)
{
    *buf = malloc(kl + 1);
    if (!*buf)
        return -1;
    if (kl)
        memcpy(*buf, k, kl);
    (*buf)[kl] = 0;
    *v = (struct ivl){k, *buf, kl, kl + 1};
    return 0;
}

static bool is_nul(const uint8_t *p, size_t n) { return n == 1 && p[0] == 0; }

static int ivl_sort(const void *pa, const void *pb)
{
    const struct ivl *a = pa, *b = pb;
    return affine_cmp(a->b, a->bl, b->b, b->bl);
}

static bool type_gives(int t, enum kv_auth_perm p)
{
    if (t == AUTHPB__PERMISSION__TYPE__READWRITE)
        return true;
    return p == KV_AUTH_READ ? t == AUTHPB__PERMISSION__TYPE__READ
                             : t == AUTHPB__PERMISSION__TYPE__WRITE;
}

/* The permissions of type p (etcd's merged interval tree) that overlap q, with the point ends
 * they own. */
struct hits {
    struct ivl *v;
    uint8_t **own; /* the point ends some v[] point into, to free (any order) */
    size_t n, cap;
};

static void hits_free(struct hits *h)
{
    for (size_t i = 0; i < h->n; i++)
        free(h->own[i]);
    free(h->v);
    free(h->own);
}

static int hits_collect(const struct kv_auth *a, const Authpb__User *u, const struct ivl *q,
                        enum kv_auth_perm p, struct hits *h)
{
    for (size_t i = 0; i < u->n_roles; i++) {
        const Authpb__Role *r = kv_auth_role(a, u->roles[i]);
        for (size_t j = 0; r && j < r->n_keypermission; j++) {
            const Authpb__Permission *pm = r->keypermission[j];
            if (!type_gives(pm->permtype, p))
                continue;
            struct ivl v;
            uint8_t *own = NULL;
            if (pm->range_end.len == 0) {
                if (point(&v, pm->key.data, pm->key.len, &own))
                    return -1;
            } else {
                bool open = is_nul(pm->range_end.data, pm->range_end.len);
                v = (struct ivl){pm->key.data, open ? NULL : pm->range_end.data, pm->key.len,
                                 open ? 0 : pm->range_end.len};
            }
            if (!overlaps(&v, q)) {
                free(own);
                continue;
            }
            if (h->n == h->cap) {
                size_t nc = h->cap ? 2 * h->cap : 8;
                struct ivl *nv = realloc(h->v, nc * sizeof *nv);
                if (nv)
                    h->v = nv;
                uint8_t **no = nv ? realloc(h->own, nc * sizeof *no) : NULL;
                if (!no) {
                    free(own);
                    return -1;
                }
                h->own = no, h->cap = nc;
            }
            h->v[h->n] = v;
            h->own[h->n++] = own;
        }
    }
    return 0;
}

/* etcd's Contains: the overlapping intervals in begin order must chain without a gap (each
 * begin at most the running max end), start at or before q's begin and reach q's end. */
static bool hits_contain(struct hits *h, const struct ivl *q)
{
    if (h->n == 0)
        return false;
    qsort(h->v, h->n, sizeof *h->v, ivl_sort); /* own[] only lists what to free */
    const struct ivl *max = &h->v[0];
    for (size_t i = 1; i < h->n; i++) {
        if (affine_cmp(max->e, max->el, h->v[i].b, h->v[i].bl) < 0)
            return false;
        if (affine_cmp(h->v[i].e, h->v[i].el, max->e, max->el) > 0)
            max = &h->v[i];
    }
    return affine_cmp(max->e, max->el, q->e, q->el) >= 0 &&
           affine_cmp(h->v[0].b, h->v[0].bl, q->b, q->bl) <= 0;
}

int kv_auth_check(const struct kv_auth *a, const char *user, const void *key, size_t klen,
                  const void *end, size_t elen, enum kv_auth_perm p, struct kv_err *err)
{
    if (!a->st->enabled)
        return 0;
    if (!user)
        return kv_fail(err, KV_CODE_INVALID_ARGUMENT, KV_ERR_USER_EMPTY);
    const Authpb__User *u = kv_auth_user(a, user);
    if (!u)
        return kv_fail(err, KV_CODE_PERMISSION_DENIED, KV_ERR_PERMISSION_DENIED);
    if (user_has(u, ROOT))
        return 0;
    struct ivl q;
    uint8_t *buf = NULL;
    int rc;
    if (elen == 0) {
        if (point(&q, key, klen, &buf))
            return kv_fail(err, KV_CODE_INTERNAL, ERR_NO_MEMORY);
    } else {
        bool open = is_nul(end, elen);
        q = (struct ivl){key, open ? NULL : end, klen, open ? 0 : elen};
    }
    struct hits h = {0};
    rc = hits_collect(a, u, &q, p, &h);
    if (rc == 0) /* a point needs one overlap (etcd's Intersects), a range the whole cover */
        rc = elen == 0 ? h.n > 0 : hits_contain(&h, &q);
    hits_free(&h);
    free(buf);
    if (rc < 0)
        return kv_fail(err, KV_CODE_INTERNAL, ERR_NO_MEMORY);
    return rc ? 0 : kv_fail(err, KV_CODE_PERMISSION_DENIED, KV_ERR_PERMISSION_DENIED);
}

int kv_auth_check_admin(const struct kv_auth *a, const char *user, struct kv_err *err)
{
    if (!a->st->enabled)
        return 0;
    if (!user || !user[0])
        return kv_fail(err, KV_CODE_INVALID_ARGUMENT, KV_ERR_USER_EMPTY);
    const Authpb__User *u = kv_auth_user(a, user);
    if (!u)
        return kv_fail(err, KV_CODE_FAILED_PRECONDITION, KV_ERR_USER_NOT_FOUND);
    if (!user_has(u, ROOT))
        return kv_fail(err, KV_CODE_PERMISSION_DENIED, KV_ERR_PERMISSION_DENIED);
    return 0;
}

#define CHECK(k, e, p)                                                                            \
    kv_auth_check(a, user, (k).data, (k).len, (e).data, (e).len, p, err)

int kv_auth_check_range_req(const struct kv_auth *a, const char *user,
                            const Etcdserverpb__RangeRequest *r, struct kv_err *err)
{
    return CHECK(r->key, r->range_end, KV_AUTH_READ);
}

int kv_auth_check_put(const struct kv_auth *a, const char *user, const Etcdserverpb__PutRequest *r,
                      struct kv_err *err)
{
    ProtobufCBinaryData none = {0, NULL};
    if (CHECK(r->key, none, KV_AUTH_WRITE))
        return -1;
    return r->prev_kv ? CHECK(r->key, none, KV_AUTH_READ) : 0;
}

int kv_auth_check_delete(const struct kv_auth *a, const char *user,
                         const Etcdserverpb__DeleteRangeRequest *r, struct kv_err *err)
{
    if (CHECK(r->key, r->range_end, KV_AUTH_WRITE))
        return -1;
    return r->prev_kv ? CHECK(r->key, r->range_end, KV_AUTH_READ) : 0;
}

static int check_ops(const struct kv_auth *a, const char *user, Etcdserverpb__RequestOp *const *ops,
                     size_t n, struct kv_err *err)
{
    ProtobufCBinaryData none = {0, NULL};
    for (size_t i = 0; i < n; i++) {
        const Etcdserverpb__RequestOp *op = ops[i];
        switch (op->request_case) {
        case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE:
            if (op->request_range && kv_auth_check_range_req(a, user, op->request_range, err))
                return -1;
            break;
        case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT:
            /* etcd checks a Txn's put for write only, prev_kv or not */
            if (op->request_put && CHECK(op->request_put->key, none, KV_AUTH_WRITE))
                return -1;
            break;
        case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_DELETE_RANGE: {
            const Etcdserverpb__DeleteRangeRequest *d = op->request_delete_range;
            if (d && d->prev_kv && CHECK(d->key, d->range_end, KV_AUTH_READ))
                return -1;
            if (d && CHECK(d->key, d->range_end, KV_AUTH_WRITE))
                return -1;
            break;
        }
        case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_TXN:
            if (op->request_txn && kv_auth_check_txn(a, user, op->request_txn, err))
                return -1;
            break;
        default:
            break;
        }
    }
    return 0;
}

int kv_auth_check_txn(const struct kv_auth *a, const char *user,
                      const Etcdserverpb__TxnRequest *r, struct kv_err *err)
{
    if (!a->st->enabled)
        return 0;
    for (size_t i = 0; i < r->n_compare; i++)
        if (CHECK(r->compare[i]->key, r->compare[i]->range_end, KV_AUTH_READ))
            return -1;
    if (check_ops(a, user, r->success, r->n_success, err))
        return -1;
    return check_ops(a, user, r->failure, r->n_failure, err);
}
