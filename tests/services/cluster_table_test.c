/* The member table as data (services/cluster.h): canonical peer URLs first. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "services/cluster.h"

static char err[512];

#define TOKEN "tok"

/* ---- canonical URLs ---- */

Test(cluster_url, canonical_string_reads_back)
{
    const struct {
        const char *in, *canon;
    } cases[] = {
        {"https://127.0.0.1:2380", "https://127.0.0.1:2380"},
        {"http://node-1.example.com:80/", "http://node-1.example.com:80"},
        {"https://h:02380", "https://h:2380"},
        {"https://[::1]:2380", "https://[::1]:2380"},
        {"https://[::ffff:10.0.0.1]:1", "https://[::ffff:10.0.0.1]:1"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct cluster_url u, back;
        char s[CLUSTER_URL_MAX];
        cr_assert_eq(cluster_parse_url(cases[i].in, &u, err, sizeof err), 0, "%s", err);
        cluster_url_string(&u, s, sizeof s);
        cr_assert_str_eq(s, cases[i].canon);
        cr_assert_eq(cluster_parse_url(s, &back, err, sizeof err), 0, "%s", err);
        cr_assert(back.tls == u.tls && back.port == u.port && strcmp(back.host, u.host) == 0);
    }
}

Test(cluster_url, refuses_hosts_and_ports_that_would_not_read_back)
{
    const char *bad[] = {
        "https://[abc]:1",   /* brackets, but no IPv6 address */
        "https://[::1 x]:1", /* space inside the brackets */
        "https://[::g]:1",   /* not hex */
        "https://[]:1",      /* empty */
        "https://h: 80",     /* strtol would skip the space */
        "https://h:+80",     /* and take the sign */
        "https://h:-1",
        "https://h:",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct cluster_url u;
        err[0] = '\0';
        cr_assert_eq(cluster_parse_url(bad[i], &u, err, sizeof err), -1, "accepted '%s'", bad[i]);
        cr_assert_neq(err[0], '\0', "no message for '%s'", bad[i]);
    }
}

Test(cluster_url, initial_cluster_refuses_one_address_for_two_members)
{
    struct cluster c;
    cr_assert_eq(cluster_parse("a=https://h:1,b=http://H:1", TOKEN, &c, err, sizeof err), -1);
    cr_assert(strstr(err, "'a' and 'b' have the same peer URL"), "%s", err);
}
