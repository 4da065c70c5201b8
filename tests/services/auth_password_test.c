/* auth_password_test: the stored form of a password (services/auth_service.h): PBKDF2 with a
 * random salt, never the password itself, and a check that takes the right one only; simple
 * tokens (services/auth_token.h): unique, invalidated with their user or password, bounded. */
#include <criterion/criterion.h>
#include <string.h>

#include "services/auth_service.h"
#include "services/auth_token.h"
#include "services/kvstore/kv_auth.h"

Test(auth_password, hash_checks_the_right_password_only)
{
    char h1[200], h2[200];
    cr_assert_eq(auth_hash_password("s3cret", h1, sizeof h1), 0);
    cr_assert_eq(auth_hash_password("s3cret", h2, sizeof h2), 0);
    cr_assert_eq(strncmp(h1, "pbkdf2-sha256$100000$", 21), 0, "%s", h1);
    cr_assert_null(strstr(h1, "s3cret"), "the password is in its hash: %s", h1);
    cr_assert_str_neq(h1, h2, "two hashes of one password share their salt");
    cr_assert(auth_check_password("s3cret", h1));
    cr_assert(auth_check_password("s3cret", h2));
    cr_assert_not(auth_check_password("s3creT", h1), "a wrong password passes");
    cr_assert_not(auth_check_password("", h1));
    cr_assert_not(auth_check_password("s3cret", ""), "an empty hash passes");
    cr_assert_not(auth_check_password("s3cret", "pbkdf2-sha256$0$00$00"));
    char small[10];
    cr_assert_eq(auth_hash_password("x", small, sizeof small), -1);
}

/* An auth state (enabled) with one user, erin, whose stored hash is `hash` (NULL: no users). */
static struct kv_auth *state_with(const char *hash)
{
    Craft__Kv__AuthState st = CRAFT__KV__AUTH_STATE__INIT;
    Authpb__User u = AUTHPB__USER__INIT, *us[] = {&u};
    u.name = (ProtobufCBinaryData){4, (uint8_t *)"erin"};
    u.password = (ProtobufCBinaryData){hash ? strlen(hash) : 0, (uint8_t *)hash};
    st.enabled = true;
    st.revision = 3;
    st.n_users = hash ? 1 : 0;
    st.users = us;
    uint8_t buf[256];
    size_t n = craft__kv__auth_state__pack(&st, buf);
    struct kv_err err;
    struct kv_auth *a = kv_auth_decode(buf, n, &err);
    cr_assert(a, "%s", err.msg);
    return a;
}

Test(auth_tokens, a_token_names_its_user_until_the_password_changes_or_the_user_goes)
{
    struct auth_tokens *t = auth_tokens_new();
    struct kv_auth *a = state_with("h1"), *b = state_with("h2"), *none = state_with(NULL);
    char tok[AUTH_TOKEN_LEN + 1], tok2[AUTH_TOKEN_LEN + 1], user[64];
    struct kv_err err;
    cr_assert_eq(auth_tokens_issue(t, "erin", "h1", tok, &err), 0);
    cr_assert_eq(auth_tokens_issue(t, "erin", "h1", tok2, &err), 0);
    cr_assert_str_neq(tok, tok2, "two tokens alike");
    cr_assert_eq(strlen(tok), AUTH_TOKEN_LEN);
    cr_assert_eq(auth_tokens_lookup(t, a, tok, user, sizeof user), 0);
    cr_assert_str_eq(user, "erin");
    cr_assert_eq(auth_tokens_lookup(t, a, "x", user, sizeof user), -1, "a made-up token passes");
    cr_assert_eq(auth_tokens_lookup(t, b, tok, user, sizeof user), -1,
                 "a token outlives a password change");
    cr_assert_eq(auth_tokens_lookup(t, a, tok, user, sizeof user), -1,
                 "an invalidated token came back");
    cr_assert_eq(auth_tokens_lookup(t, none, tok2, user, sizeof user), -1,
                 "a token outlives its user");
    /* bounded: the table fills, then refuses */
    int issued = 0;
    while (auth_tokens_issue(t, "erin", "h1", tok, &err) == 0)
        issued++;
    cr_assert_eq(issued, AUTH_TOKEN_MAX, "issued %d tokens", issued);
    cr_assert_eq(err.code, KV_CODE_RESOURCE_EXHAUSTED);
    kv_auth_unref(a);
    kv_auth_unref(b);
    kv_auth_unref(none);
    auth_tokens_free(t);
}
