/* The Lease seeds were written by make_lease_corpus.py, a second encoder of etcd's messages:
 * check services/lease_req.c reads each one as the service needs - requests decoded as etcd
 * would, the leader's answers accepted only for this cluster and this lease with a TTL in
 * range, Grants raised to the minimum or refused as etcd refuses them. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "services/lease_service.h"

static uint8_t seed[4096];

/* The seed's message (after its path byte); its length. */
static size_t load(const char *name)
{
    const char *base = getenv("TEST_SRCDIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/craft/tests/fuzz/corpus/lease/%s", base ? base : ".", name);
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s", path);
    size_t len = fread(seed, 1, sizeof seed, f);
    fclose(f);
    cr_assert_geq(len, 1);
    return len - 1;
}

Test(lease_corpus, requests)
{
    int64_t id;
    bool keys;
    size_t n = load("ka_request");
    cr_assert_eq(lease_req_keepalive(seed + 1, n, &id), 0);
    cr_assert_eq(id, 7);
    n = load("ka_request_empty");
    cr_assert_eq(lease_req_keepalive(seed + 1, n, &id), 0);
    cr_assert_eq(id, 0); /* renewed as lease 0: not found, TTL 0 */
    n = load("ka_request_negative");
    cr_assert_eq(lease_req_keepalive(seed + 1, n, &id), 0);
    cr_assert_eq(id, -3);
    n = load("ka_request_truncated");
    cr_assert_eq(lease_req_keepalive(seed + 1, n, &id), -1);
    n = load("ttl_request_keys");
    cr_assert_eq(lease_req_ttl(seed + 1, n, &id, &keys), 0);
    cr_assert(id == 7 && keys);
    n = load("ttl_request_bad_wire");
    cr_assert_eq(lease_req_ttl(seed + 1, n, &id, &keys), -1);
}

Test(lease_corpus, leader_answers)
{
    int64_t ttl = -5;
    size_t n = load("ka_answer");
    cr_assert_eq(lease_resp_keepalive(seed + 1, n, 0x1234, 7, &ttl), 0);
    cr_assert_eq(ttl, 10);
    n = load("ka_answer_not_found");
    cr_assert_eq(lease_resp_keepalive(seed + 1, n, 0x1234, 7, &ttl), 0);
    cr_assert_eq(ttl, 0);
    const char *refused[] = {"ka_answer_other_cluster", "ka_answer_other_lease",
                             "ka_answer_negative_ttl", "ka_answer_huge_ttl", "ka_answer_no_header"};
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++) {
        n = load(refused[i]);
        cr_assert_eq(lease_resp_keepalive(seed + 1, n, 0x1234, 7, &ttl), -1, "%s", refused[i]);
    }
    n = load("ttl_answer_keys");
    Etcdserverpb__LeaseTimeToLiveResponse *r = lease_resp_ttl(seed + 1, n, 0x1234, 7);
    cr_assert_not_null(r);
    cr_assert(r->ttl == 9 && r->grantedttl == 10 && r->n_keys == 2);
    cr_assert(r->keys[1].len == 3 && !memcmp(r->keys[1].data, "b/c", 3));
    etcdserverpb__lease_time_to_live_response__free_unpacked(r, NULL);
    n = load("ttl_answer_not_found");
    r = lease_resp_ttl(seed + 1, n, 0x1234, 7);
    cr_assert_not_null(r);
    cr_assert_eq(r->ttl, -1);
    etcdserverpb__lease_time_to_live_response__free_unpacked(r, NULL);
    n = load("ttl_answer_below_minus_one");
    cr_assert_null(lease_resp_ttl(seed + 1, n, 0x1234, 7));
    n = load("ttl_answer_other_lease");
    cr_assert_null(lease_resp_ttl(seed + 1, n, 0x1234, 7));
}

static int prepare(const char *name, Etcdserverpb__LeaseGrantRequest **g, int *code)
{
    size_t n = load(name);
    *g = etcdserverpb__lease_grant_request__unpack(NULL, n, seed + 1);
    cr_assert_not_null(*g, "%s", name);
    const char *msg;
    return lease_grant_prepare(*g, 2, 42, code, &msg);
}

Test(lease_corpus, grants)
{
    Etcdserverpb__LeaseGrantRequest *g;
    int code = 0;
    cr_assert_eq(prepare("grant_zero", &g, &code), 0);
    cr_assert(g->ttl == 2 && g->id == 42); /* the minimum, and the proposer's id */
    etcdserverpb__lease_grant_request__free_unpacked(g, NULL);
    cr_assert_eq(prepare("grant_negative", &g, &code), 0);
    cr_assert(g->ttl == 2 && g->id == 99);
    etcdserverpb__lease_grant_request__free_unpacked(g, NULL);
    cr_assert_eq(prepare("grant_huge", &g, &code), -1);
    cr_assert_eq(code, GRPC_STATUS_OUT_OF_RANGE);
    etcdserverpb__lease_grant_request__free_unpacked(g, NULL);
    cr_assert_eq(prepare("grant_max", &g, &code), 0);
    cr_assert_eq(g->ttl, LEASE_MAX_TTL);
    etcdserverpb__lease_grant_request__free_unpacked(g, NULL);
}
