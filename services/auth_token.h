/* auth_token.h: etcd's simple tokens (`--auth-token simple`, the default) and who a caller is.
 * docs/auth.md "Passwords and tokens".
 *
 * What it promises
 * - A token is issued by Authenticate on the member that took it and is known to that member
 *   only (etcd replicates simple tokens through Raft: a client that moves to another member
 *   gets "invalid auth token" and authenticates again, as etcd's clients do on that error). It
 *   is 32 random letters and digits, lives AUTH_TOKEN_TTL_S seconds from its last use (etcd's
 *   --auth-token-ttl default), and at most AUTH_TOKEN_MAX live at once (an Authenticate beyond
 *   that, when none has expired, gets ResourceExhausted).
 * - A token is valid only while its user exists with the password hash it authenticated with:
 *   deleting the user or changing the password invalidates it on every member (etcd's
 *   invalidateUser), checked against the auth state at each use.
 * - auth_caller decides who a call's caller is, with etcd's precedence: with auth enabled, a
 *   "token" in the request metadata names the user (an unknown or expired one is
 *   Unauthenticated "etcdserver: invalid auth token"); without a token, the client certificate's
 *   CN. Thread-safe.
 */
#ifndef CRAFT_SERVICES_AUTH_TOKEN_H
#define CRAFT_SERVICES_AUTH_TOKEN_H

#include <stdbool.h>
#include <stddef.h>

#include "rpc/rpc.h"
#include "services/kvstore/kv_auth.h"

#define AUTH_TOKEN_TTL_S 300
#define AUTH_TOKEN_MAX 4096
#define AUTH_TOKEN_LEN 32

struct auth_tokens;

struct auth_tokens *auth_tokens_new(void);
void auth_tokens_free(struct auth_tokens *t);
/* A new token for user, whose stored password hash is `hash`, into out[AUTH_TOKEN_LEN + 1].
 * 0, or -1 with *err (ResourceExhausted when full, Internal without randomness). */
int auth_tokens_issue(struct auth_tokens *t, const char *user, const char *hash, char *out,
                      struct kv_err *err);
/* The user of a live token, valid in state a (see above), into user[userlen]; refreshes its
 * lifetime. 0, or -1 (unknown, expired, invalidated: the entry is dropped). */
int auth_tokens_lookup(struct auth_tokens *t, const struct kv_auth *a, const char *token,
                       char *user, size_t userlen);

/* Who the caller of call (or, call NULL, of stream st) is, in state a: 0 with *user pointing
 * into buf (NULL = no identity at all: an --insecure test cluster), or -1 with *err. t may be
 * NULL (tokens not offered). */
int auth_caller(struct auth_tokens *t, const struct kv_auth *a, struct rpc_call *call,
                struct rpc_stream *st, char *buf, size_t buflen, const char **user,
                struct kv_err *err);

#endif
