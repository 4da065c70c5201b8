/* auth_service.h: etcd 3.4's Auth gRPC service (etcdserverpb.Auth) over the replicated auth
 * state (services/kvstore/kv_auth.h), so `etcdctl user/role/auth` work unchanged. docs/auth.md.
 *
 * What it promises
 * - Changes (AuthEnable/Disable, UserAdd/Delete/ChangePassword/GrantRole/RevokeRole,
 *   RoleAdd/Delete/GrantPermission/RevokePermission) become auth log commands through the KV
 *   service's write path (kv_service_auth_write): proposed on the leader or forwarded to it,
 *   each carrying the caller's identity; apply checks the root role (etcd's
 *   needAdminPermission) and runs etcd's rules, answering etcd's errors.
 * - A password is never logged: the member that takes UserAdd/UserChangePassword stores a
 *   PBKDF2-HMAC-SHA256 hash (AUTH_PBKDF2_ITER iterations, a random 16-byte salt) in the command.
 * - Reads (UserGet/List, RoleGet/List) wait for a ReadIndex and answer from this member's
 *   state: UserList/RoleList need the root role; UserGet the root role or to be that user;
 *   RoleGet the root role or to hold that role (etcd's rules).
 * - Authenticate checks a user's password against this member's applied state (auth enabled;
 *   else etcd's "authentication is not enabled"; a wrong password, a user without one or an
 *   unknown user: etcd's "authentication failed, invalid user ID or password") and answers a
 *   simple token (auth_token.h) that later calls send as "token" metadata; a token names the
 *   caller ahead of the certificate's CN, as in etcd.
 * - Every decoder of outside bytes is protobuf-c's for these messages (bounded by the server's
 *   message size); the fuzz target tests/fuzz/kv_req_fuzz.c feeds them.
 */
#ifndef CRAFT_SERVICES_AUTH_SERVICE_H
#define CRAFT_SERVICES_AUTH_SERVICE_H

#include <stddef.h>

#include "rpc/rpc.h"
#include "services/kv_service.h"

#define AUTH_PBKDF2_ITER 100000

/* Registers etcdserverpb.Auth's methods on the client server, served over kv. NULL on failure.
 * Free after the server has shut down. */
struct auth_service;
struct auth_service *auth_service_register(struct kv_service *kv, struct rpc_server *srv);
void auth_service_free(struct auth_service *as);

/* The stored form of a password: "pbkdf2-sha256$<iterations>$<salt hex>$<hash hex>" in
 * out[outlen] (at least 160 bytes). 0 or -1. */
int auth_hash_password(const char *password, char *out, size_t outlen);
/* Whether password matches a hash made by auth_hash_password. */
bool auth_check_password(const char *password, const char *hash);

#endif
