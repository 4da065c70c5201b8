/* kv_auth.h: etcd 3.4's auth state (users, roles, permissions, the enabled flag, the auth
 * revision) as a value, the auth log commands applied to it, and the permission checks.
 * docs/auth.md has the rules and every difference from etcd.
 *
 * What it promises
 * - A struct kv_auth is immutable once made and reference counted: the store publishes one
 *   after each applied batch that changed it, and any thread may hold and read one while apply
 *   makes the next (kv_store_auth_get). Its bytes (kv_auth_encode: a packed
 *   craft.kv.AuthState) are what the store keeps in LMDB and in the snapshot.
 * - kv_auth_decode accepts only a state this module could have made: users and roles sorted
 *   by name with no duplicates, names 1..KV_AUTH_MAX_NAME bytes, each user's roles sorted and
 *   unique, permission types READ/WRITE/READWRITE, keys within KV_AUTH_MAX_PERM_KEY, the
 *   bounds below; anything else is NULL with a reason (a corrupt store or snapshot).
 * - kv_auth_apply runs one auth command with etcd 3.4's authStore semantics and errors
 *   (etcd's gRPC codes and messages, rpctypes/error.go): the same state and command give the
 *   same result on every member. The revision starts at 1 (etcd's NewAuthStore) and every
 *   change bumps it by one except AuthEnable (as in etcd); a no-op (enabling when enabled,
 *   disabling when disabled, granting a role already granted) changes nothing. Failure leaves
 *   the state as it was.
 * - The checks are etcd's isOpPermitted / IsAdminPermitted over the same interval rules
 *   (range_perm_cache.go): a key alone is a point; range_end "\0" means every key from key
 *   on; an empty key or range_end compares above every other key (etcd's affine order); a
 *   range is allowed when the union of the user's permissions of that type covers it without
 *   a gap; a user with the root role is allowed everything. With auth disabled every check
 *   passes.
 * - Bounds (errors ResourceExhausted, craft's messages): KV_AUTH_MAX_USERS users,
 *   KV_AUTH_MAX_ROLES roles, KV_AUTH_MAX_PERMS permissions over all roles, KV_AUTH_MAX_GRANTS
 *   role grants over all users; names and keys longer than their bound are InvalidArgument.
 */
#ifndef CRAFT_SERVICES_KV_AUTH_H
#define CRAFT_SERVICES_KV_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "services/kvstore/kv_store.h"
#include "services/proto/etcd/kvcmd.pb-c.h"

#define KV_AUTH_MAX_USERS 4096
#define KV_AUTH_MAX_ROLES 4096
#define KV_AUTH_MAX_PERMS 16384
#define KV_AUTH_MAX_GRANTS 16384
#define KV_AUTH_MAX_NAME 256
#define KV_AUTH_MAX_PERM_KEY 1024
#define KV_AUTH_MAX_HASH 256

#define KV_CODE_PERMISSION_DENIED 7

/* etcd's messages (rpctypes/error.go) and codes. */
#define KV_ERR_ROOT_USER_NOT_EXIST "etcdserver: root user does not exist"       /* 9 */
#define KV_ERR_ROOT_ROLE_NOT_EXIST "etcdserver: root user does not have root role" /* 9 */
#define KV_ERR_USER_ALREADY_EXIST "etcdserver: user name already exists"      /* 9 */
#define KV_ERR_USER_EMPTY "etcdserver: user name is empty"                    /* 3 */
#define KV_ERR_USER_NOT_FOUND "etcdserver: user name not found"               /* 9 */
#define KV_ERR_ROLE_ALREADY_EXIST "etcdserver: role name already exists"      /* 9 */
#define KV_ERR_ROLE_NOT_FOUND "etcdserver: role name not found"               /* 9 */
#define KV_ERR_ROLE_EMPTY "etcdserver: role name is empty"                    /* 3 */
#define KV_ERR_AUTH_FAILED "etcdserver: authentication failed, invalid user ID or password" /* 3 */
#define KV_ERR_PERMISSION_DENIED "etcdserver: permission denied"              /* 7 */
#define KV_ERR_ROLE_NOT_GRANTED "etcdserver: role is not granted to the user" /* 9 */
#define KV_ERR_PERMISSION_NOT_GRANTED "etcdserver: permission is not granted to the role" /* 9 */
#define KV_ERR_AUTH_NOT_ENABLED "etcdserver: authentication is not enabled"   /* 9 */
#define KV_ERR_INVALID_AUTH_TOKEN "etcdserver: invalid auth token"            /* 16 */
#define KV_ERR_INVALID_AUTH_MGMT "etcdserver: invalid auth management"        /* 3 */

struct kv_auth;

/* The state with nothing in it: auth disabled, revision 1. NULL = out of memory. */
struct kv_auth *kv_auth_new(void);
/* From kv_auth_encode's bytes; len 0 = the empty state. NULL with *err (DataLoss, the reason)
 * for anything else. */
struct kv_auth *kv_auth_decode(const void *data, size_t len, struct kv_err *err);
/* The state's bytes (malloc'd). 0 or -1 (no memory). */
int kv_auth_encode(const struct kv_auth *a, uint8_t **out, size_t *len);
struct kv_auth *kv_auth_ref(struct kv_auth *a);
void kv_auth_unref(struct kv_auth *a); /* NULL is fine */

/* True when cmd is an auth command (kvcmd.proto fields 8..18). */
bool kv_auth_is_cmd(const Craft__Kv__Command *cmd);
/* Applies auth command cmd to a: 0 with *out the new state (a is untouched), or -1 with *err
 * (etcd's error; nothing changed) - or *err INTERNAL/"out of memory" when memory ran out. */
int kv_auth_apply(const struct kv_auth *a, const Craft__Kv__Command *cmd, struct kv_auth **out,
                  struct kv_err *err);

bool kv_auth_enabled(const struct kv_auth *a);
uint64_t kv_auth_revision(const struct kv_auth *a);
/* The state itself, to read (Get/List answers); valid while a is held. */
const Craft__Kv__AuthState *kv_auth_state(const struct kv_auth *a);
const Authpb__User *kv_auth_user(const struct kv_auth *a, const char *name);
const Authpb__Role *kv_auth_role(const struct kv_auth *a, const char *name);
bool kv_auth_has_role(const struct kv_auth *a, const char *user, const char *role);

enum kv_auth_perm { KV_AUTH_READ = 0, KV_AUTH_WRITE = 1 };

/* etcd's isOpPermitted for one key (end NULL/elen 0) or range: 0 allowed; -1 with *err:
 * user "" InvalidArgument KV_ERR_USER_EMPTY, otherwise PermissionDenied. */
int kv_auth_check(const struct kv_auth *a, const char *user, const void *key, size_t klen,
                  const void *end, size_t elen, enum kv_auth_perm p, struct kv_err *err);
/* etcd's IsAdminPermitted: 0 when auth is off or user has the root role; else -1 with *err
 * (KV_ERR_USER_EMPTY, KV_ERR_USER_NOT_FOUND, or KV_ERR_PERMISSION_DENIED). */
int kv_auth_check_admin(const struct kv_auth *a, const char *user, struct kv_err *err);

/* Whole requests, as etcd 3.4's authApplierV3 checks them. Range: read on the range. Put:
 * write on the key, read too with prev_kv. DeleteRange: write on the range, read too with
 * prev_kv. Txn: read on every compare's range, then every op of the success AND failure
 * branches as above, nested Txns included (etcd 3.4 skips them; craft does not). */
int kv_auth_check_range_req(const struct kv_auth *a, const char *user,
                            const Etcdserverpb__RangeRequest *r, struct kv_err *err);
int kv_auth_check_put(const struct kv_auth *a, const char *user, const Etcdserverpb__PutRequest *r,
                      struct kv_err *err);
int kv_auth_check_delete(const struct kv_auth *a, const char *user,
                         const Etcdserverpb__DeleteRangeRequest *r, struct kv_err *err);
int kv_auth_check_txn(const struct kv_auth *a, const char *user,
                      const Etcdserverpb__TxnRequest *r, struct kv_err *err);

#endif
