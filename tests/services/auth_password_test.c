/* auth_password_test: the stored form of a password (services/auth_service.h): PBKDF2 with a
 * random salt, never the password itself, and a check that takes the right one only. */
#include <criterion/criterion.h>
#include <string.h>

#include "services/auth_service.h"

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
