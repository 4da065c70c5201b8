/* auth_token.c: simple tokens and who a caller is (see auth_token.h). */
#include "services/auth_token.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct token {
    char token[AUTH_TOKEN_LEN + 1]; /* "" = free slot */
    char user[KV_AUTH_MAX_NAME + 1];
    char hash[KV_AUTH_MAX_HASH + 1];
    int64_t expires_ms;
};

struct auth_tokens {
    pthread_mutex_t mu;
    struct token *slots; /* AUTH_TOKEN_MAX; a linear scan: bounded, and Authenticate is rare */
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

struct auth_tokens *auth_tokens_new(void)
{
    struct auth_tokens *t = calloc(1, sizeof *t);
    if (!t || !(t->slots = calloc(AUTH_TOKEN_MAX, sizeof *t->slots))) {
        free(t);
        return NULL;
    }
    pthread_mutex_init(&t->mu, NULL);
    return t;
}

void auth_tokens_free(struct auth_tokens *t)
{
    if (!t)
        return;
    OPENSSL_cleanse(t->slots, AUTH_TOKEN_MAX * sizeof *t->slots);
    free(t->slots);
    pthread_mutex_destroy(&t->mu);
    free(t);
}

int auth_tokens_issue(struct auth_tokens *t, const char *user, const char *hash, char *out,
                      struct kv_err *err)
{
    static const char alphabet[] =
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"; /* 62 */
    uint8_t rnd[AUTH_TOKEN_LEN];
    if (RAND_bytes(rnd, sizeof rnd) != 1) {
        err->code = KV_CODE_INTERNAL;
        snprintf(err->msg, sizeof err->msg, "craft: no randomness for a token");
        return -1;
    }
    for (size_t i = 0; i < AUTH_TOKEN_LEN; i++)
        out[i] = alphabet[rnd[i] % 62];
    out[AUTH_TOKEN_LEN] = 0;
    int64_t now = now_ms();
    pthread_mutex_lock(&t->mu);
    struct token *slot = NULL;
    for (size_t i = 0; i < AUTH_TOKEN_MAX && !slot; i++)
        if (!t->slots[i].token[0] || t->slots[i].expires_ms <= now)
            slot = &t->slots[i];
    if (slot) {
        snprintf(slot->token, sizeof slot->token, "%s", out);
        snprintf(slot->user, sizeof slot->user, "%s", user);
        snprintf(slot->hash, sizeof slot->hash, "%s", hash);
        slot->expires_ms = now + AUTH_TOKEN_TTL_S * 1000;
    }
    pthread_mutex_unlock(&t->mu);
    if (!slot) {
        err->code = KV_CODE_RESOURCE_EXHAUSTED;
        snprintf(err->msg, sizeof err->msg, "craft: too many auth tokens (at most %d live)",
                 AUTH_TOKEN_MAX);
        return -1;
    }
    return 0;
}

int auth_tokens_lookup(struct auth_tokens *t, const struct kv_auth *a, const char *token,
                       char *user, size_t userlen)
{
    if (strlen(token) != AUTH_TOKEN_LEN)
        return -1;
    int64_t now = now_ms();
    int rc = -1;
    pthread_mutex_lock(&t->mu);
    for (size_t i = 0; i < AUTH_TOKEN_MAX; i++) {
        struct token *s = &t->slots[i];
        if (!s->token[0] || CRYPTO_memcmp(s->token, token, AUTH_TOKEN_LEN) != 0)
            continue;
        const Authpb__User *u = kv_auth_user(a, s->user);
        bool same = u && u->password.len == strlen(s->hash) &&
                    memcmp(u->password.data, s->hash, u->password.len) == 0;
        if (s->expires_ms <= now || !same) {
            s->token[0] = 0; /* expired, or its user deleted or given another password */
            break;
        }
        s->expires_ms = now + AUTH_TOKEN_TTL_S * 1000;
        snprintf(user, userlen, "%s", s->user);
        rc = 0;
        break;
    }
    pthread_mutex_unlock(&t->mu);
    return rc;
}

int auth_caller(struct auth_tokens *t, const struct kv_auth *a, struct rpc_call *call,
                struct rpc_stream *st, char *buf, size_t buflen, const char **user,
                struct kv_err *err)
{
    *user = NULL;
    if (t && kv_auth_enabled(a)) {
        char token[128];
        int rc = call ? rpc_call_metadata(call, "token", token, sizeof token)
                      : rpc_stream_metadata(st, "token", token, sizeof token);
        if (rc == RPC_EINVAL || (rc == 1 && auth_tokens_lookup(t, a, token, buf, buflen))) {
            err->code = 16; /* UNAUTHENTICATED */
            snprintf(err->msg, sizeof err->msg, "%s", KV_ERR_INVALID_AUTH_TOKEN);
            return -1;
        }
        if (rc == 1) {
            *user = buf;
            return 0;
        }
    }
    struct rpc_peer id;
    int rc = call ? rpc_call_peer_identity(call, &id) : rpc_stream_peer_identity(st, &id);
    if (rc == 0) {
        snprintf(buf, buflen, "%s", id.cn);
        *user = buf;
    }
    return 0;
}
