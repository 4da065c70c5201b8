/* Unary calls over mutual TLS: echo, status codes, identity, refusals, limits, bad config. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "rpc/proto/echo.pb-c.h"
#include "tests/rpc/util.h"

TestSuite(rpc_unary, .fini = tt_leak_check);
TestSuite(rpc_refuse, .fini = tt_leak_check);
TestSuite(rpc_config, .fini = tt_leak_check);
TestSuite(rpc_codec, .fini = tt_leak_check);

#define DEADLINE 10000

Test(rpc_unary, echo_over_mtls, .timeout = 60)
{
    struct rpc_server *srv = tt_server_start("server", 0, NULL);
    cr_assert_gt(rpc_server_port(srv), 0);
    struct rpc_channel *ch = tt_channel(rpc_server_port(srv), "a", "client", NULL);

    struct rpc_result r;
    cr_assert_eq(rpc_channel_call(ch, TT_ECHO, "hello", 5, DEADLINE, &r), 0);
    cr_assert_eq(r.status, GRPC_STATUS_OK, "status %d: %s", r.status, r.message);
    cr_assert_eq(r.len, 5);
    cr_assert_arr_eq(r.data, "hello", 5);
    rpc_result_free(&r);

    /* an empty message is a message too */
    cr_assert_eq(rpc_channel_call(ch, TT_ECHO, NULL, 0, DEADLINE, &r), 0);
    cr_assert_eq(r.status, GRPC_STATUS_OK);
    cr_assert_eq(r.len, 0);
    rpc_result_free(&r);

    /* protobuf-c both ways */
    Craft__Echo__EchoRequest req = CRAFT__ECHO__ECHO_REQUEST__INIT;
    req.payload.data = (uint8_t *)"pb";
    req.payload.len = 2;
    req.seq = 42;
    ProtobufCMessage *resp;
    cr_assert_eq(rpc_channel_call_msg(ch, TT_ECHO_MSG, &req.base, &craft__echo__echo_reply__descriptor,
                                      DEADLINE, &resp, &r),
                 0);
    cr_assert_eq(r.status, GRPC_STATUS_OK, "%s", r.message);
    cr_assert(resp);
    Craft__Echo__EchoReply *rep = (Craft__Echo__EchoReply *)resp;
    cr_assert_eq(rep->seq, 42);
    cr_assert_eq(rep->payload.len, 2);
    cr_assert_arr_eq(rep->payload.data, "pb", 2);
    protobuf_c_message_free_unpacked(resp, NULL);
    rpc_result_free(&r);
    cr_assert_eq(atomic_load(&tt_counts.echo), 2);
    cr_assert_eq(atomic_load(&tt_counts.echo_msg), 1);

    rpc_channel_destroy(ch);
    rpc_server_shutdown(srv, 1000);
}

Test(rpc_unary, unknown_method_is_unimplemented, .timeout = 60)
{
    struct rpc_server *srv = tt_server_start("server", 0, NULL);
    struct rpc_channel *ch = tt_channel(rpc_server_port(srv), "a", "client", NULL);
    struct rpc_result r;
    cr_assert_eq(rpc_channel_call(ch, "/craft.echo.Echo/Nope", "x", 1, DEADLINE, &r), 0);
    cr_assert_eq(r.status, GRPC_STATUS_UNIMPLEMENTED, "status %d: %s", r.status, r.message);
    cr_assert(strstr(r.message, "/craft.echo.Echo/Nope"), "message: %s", r.message);
    cr_assert_null(r.data);
    rpc_channel_destroy(ch);
    rpc_server_shutdown(srv, 1000);
}

Test(rpc_unary, malformed_protobuf_is_invalid_argument, .timeout = 60)
{
    struct rpc_server *srv = tt_server_start("server", 0, NULL);
    struct rpc_channel *ch = tt_channel(rpc_server_port(srv), "a", "client", NULL);
    /* a varint that never ends, then a field number 0: not a valid EchoRequest */
    static const uint8_t junk[] = {0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    struct rpc_result r;
    cr_assert_eq(rpc_channel_call(ch, TT_ECHO_MSG, junk, sizeof junk, DEADLINE, &r), 0);
    cr_assert_eq(r.status, GRPC_STATUS_INVALID_ARGUMENT, "status %d: %s", r.status, r.message);
    cr_assert_eq(atomic_load(&tt_counts.echo_msg), 0, "the handler must never see it");
    rpc_result_free(&r);

    /* and a reply that does not decode reaches the caller as INVALID_ARGUMENT too */
    Craft__Echo__EchoRequest req = CRAFT__ECHO__ECHO_REQUEST__INIT;
    ProtobufCMessage *resp = (ProtobufCMessage *)1;
    cr_assert_eq(rpc_channel_call_msg(ch, TT_GARBAGE, &req.base, &craft__echo__echo_reply__descriptor,
                                      DEADLINE, &resp, &r),
                 0);
    cr_assert_eq(r.status, GRPC_STATUS_INVALID_ARGUMENT, "status %d: %s", r.status, r.message);
    cr_assert_null(resp);
    rpc_result_free(&r);
    rpc_channel_destroy(ch);
    rpc_server_shutdown(srv, 1000);
}

Test(rpc_unary, oversized_messages_are_resource_exhausted, .timeout = 60)
{
    struct rpc_server *srv = tt_server_start("server", 0, NULL); /* 4 MiB default */
    struct rpc_channel_config cfg = {.max_send_bytes = 16u << 20, .max_recv_bytes = 1024};
    struct rpc_channel *ch = tt_channel(rpc_server_port(srv), "a", "client", &cfg);
    size_t big = (4u << 20) + 1;
    uint8_t *buf = calloc(1, big);
    struct rpc_result r;
    /* request over the server's limit */
    cr_assert_eq(rpc_channel_call(ch, TT_ECHO, buf, big, DEADLINE, &r), 0);
    cr_assert_eq(r.status, GRPC_STATUS_RESOURCE_EXHAUSTED, "status %d: %s", r.status, r.message);
    cr_assert_eq(atomic_load(&tt_counts.echo), 0, "the handler must never see it");
    rpc_result_free(&r);
    /* reply over the client's limit (1 KiB) */
    cr_assert_eq(rpc_channel_call(ch, TT_ECHO, buf, 2048, DEADLINE, &r), 0);
    cr_assert_eq(r.status, GRPC_STATUS_RESOURCE_EXHAUSTED, "status %d: %s", r.status, r.message);
    rpc_result_free(&r);
    /* request over the client's own send limit */
    struct rpc_channel_config small = {.max_send_bytes = 100};
    struct rpc_channel *ch2 = tt_channel(rpc_server_port(srv), "a", "client", &small);
    cr_assert_eq(rpc_channel_call(ch2, TT_ECHO, buf, 101, DEADLINE, &r), 0);
    cr_assert_eq(r.status, GRPC_STATUS_RESOURCE_EXHAUSTED, "status %d: %s", r.status, r.message);
    rpc_result_free(&r);
    /* and a message at the limit still goes through */
    cr_assert_eq(rpc_channel_call(ch2, TT_ECHO, buf, 100, DEADLINE, &r), 0);
    cr_assert_eq(r.status, GRPC_STATUS_OK, "status %d: %s", r.status, r.message);
    rpc_result_free(&r);
    free(buf);
    rpc_channel_destroy(ch2);
    rpc_channel_destroy(ch);
    rpc_server_shutdown(srv, 1000);
}

struct late_run {
    struct tt_latch done;
    grpc_status_code status;
};

static void on_late(struct rpc_result *res, void *arg)
{
    struct late_run *lr = arg;
    lr->status = res->status;
    tt_latch_add(&lr->done, 1);
}

Test(rpc_unary, deadline_exceeded_then_late_completion, .timeout = 60)
{
    struct rpc_server *srv = tt_server_start("server", 0, NULL);
    struct rpc_channel *ch = tt_channel(rpc_server_port(srv), "a", "client", NULL);
    struct rpc_result r;
    /* connect first, so the deadline below is spent in the handler, not the TLS handshake */
    cr_assert_eq(rpc_channel_call(ch, TT_ECHO, "warm", 4, DEADLINE, &r), 0);
    cr_assert_eq(r.status, GRPC_STATUS_OK);
    rpc_result_free(&r);
    struct late_run lr;
    tt_latch_init(&lr.done);
    cr_assert_eq(rpc_channel_call_async(ch, TT_HOLD, "slow", 4, 1500, on_late, &lr), 0);
    tt_wait_held(1, 0); /* the handler has it and sits on it */
    cr_assert_eq(tt_latch_wait(&lr.done, 1, 20000), 1);
    cr_assert_eq(lr.status, GRPC_STATUS_DEADLINE_EXCEEDED, "status %d", lr.status);
    /* the handler completes it only now, after the caller gave up */
    pthread_mutex_lock(&tt_held.mu);
    struct rpc_call *late = tt_held.calls[0];
    tt_held.ncalls = 0;
    pthread_mutex_unlock(&tt_held.mu);
    int rc = rpc_call_reply(late, "late", 4);
    cr_assert(rc == 0 || rc == RPC_ECLOSED, "late reply: %d", rc);
    /* the channel still works */
    cr_assert_eq(rpc_channel_call(ch, TT_ECHO, "ok", 2, DEADLINE, &r), 0);
    cr_assert_eq(r.status, GRPC_STATUS_OK);
    rpc_result_free(&r);
    /* a blocking call gets DEADLINE_EXCEEDED too */
    cr_assert_eq(rpc_channel_call(ch, TT_HOLD, "slow", 4, 300, &r), 0);
    cr_assert_eq(r.status, GRPC_STATUS_DEADLINE_EXCEEDED, "status %d: %s", r.status, r.message);
    rpc_result_free(&r);
    rpc_channel_destroy(ch);
    rpc_server_shutdown(srv, 1000);
    /* the call above may or may not have reached the handler: complete whatever it holds */
    pthread_mutex_lock(&tt_held.mu);
    for (int i = 0; i < tt_held.ncalls; i++)
        cr_assert_eq(rpc_call_reply(tt_held.calls[i], "x", 1), RPC_ECLOSED);
    tt_held.ncalls = 0;
    pthread_mutex_unlock(&tt_held.mu);
}

Test(rpc_unary, peer_identity_cn_and_sans, .timeout = 60)
{
    struct rpc_server *srv = tt_server_start("server", 0, NULL);
    struct rpc_channel *ch = tt_channel(rpc_server_port(srv), "a", "node-a", NULL);
    struct rpc_result r;
    cr_assert_eq(rpc_channel_call(ch, TT_WHO, NULL, 0, DEADLINE, &r), 0);
    cr_assert_eq(r.status, GRPC_STATUS_OK, "%s", r.message);
    char got[4096];
    snprintf(got, sizeof got, "%.*s", (int)r.len, (const char *)r.data);
    rpc_result_free(&r);
    cr_assert(strncmp(got, "cn=node-a;san=", 14) == 0, "identity: %s", got);
    cr_assert(strstr(got, "node-a.craft.test"), "identity: %s", got);
    cr_assert(strstr(got, "localhost"), "identity: %s", got);
    cr_assert(strstr(got, "127.0.0.1"), "identity: %s", got);
    rpc_channel_destroy(ch);

    /* a client certificate (clientAuth only) carries its name too */
    ch = tt_channel(rpc_server_port(srv), "a", "client", NULL);
    cr_assert_eq(rpc_channel_call(ch, TT_WHO, NULL, 0, DEADLINE, &r), 0);
    snprintf(got, sizeof got, "%.*s", (int)r.len, (const char *)r.data);
    rpc_result_free(&r);
    cr_assert_str_eq(got, "cn=client;san=client");
    rpc_channel_destroy(ch);
    rpc_server_shutdown(srv, 1000);

    /* plaintext has no identity to offer */
    srv = tt_server_start(NULL, 0, NULL);
    ch = tt_channel(rpc_server_port(srv), NULL, NULL, NULL);
    cr_assert_eq(rpc_channel_call(ch, TT_WHO, NULL, 0, DEADLINE, &r), 0);
    cr_assert_eq(r.status, GRPC_STATUS_OK, "%s", r.message);
    cr_assert_eq(r.len, 7);
    cr_assert_arr_eq(r.data, "noident", 7);
    rpc_result_free(&r);
    rpc_channel_destroy(ch);
    rpc_server_shutdown(srv, 1000);
}

/* ---- refusals: each must fail UNAVAILABLE without the handler ever running ------------ */

static void expect_refused(const char *server_cert, const char *client_ca, const char *client_cert,
                           const char *server_name)
{
    struct rpc_server *srv = tt_server_start(server_cert, 0, NULL);
    struct rpc_channel_config cfg = {.server_name = server_name};
    struct rpc_channel *ch = tt_channel(rpc_server_port(srv), client_ca, client_cert, &cfg);
    struct rpc_result r;
    cr_assert_eq(rpc_channel_call(ch, TT_ECHO, "x", 1, DEADLINE, &r), 0);
    cr_assert_eq(r.status, GRPC_STATUS_UNAVAILABLE, "status %d: %s", r.status, r.message);
    rpc_result_free(&r);
    cr_assert_eq(atomic_load(&tt_counts.echo), 0, "handler ran for a refused peer");
    rpc_channel_destroy(ch);
    rpc_server_shutdown(srv, 1000);
}

Test(rpc_refuse, client_without_certificate, .timeout = 60)
{
    expect_refused("server", "a", NULL, NULL);
}

Test(rpc_refuse, client_certificate_from_another_ca, .timeout = 60)
{
    expect_refused("server", "a", "b/stranger", NULL);
}

Test(rpc_refuse, expired_client_certificate, .timeout = 60)
{
    expect_refused("server", "a", "oldclient", NULL);
}

Test(rpc_refuse, expired_server_certificate, .timeout = 60)
{
    expect_refused("oldserver", "a", "client", NULL);
}

Test(rpc_refuse, server_name_mismatch, .timeout = 60)
{
    expect_refused("server", "a", "client", "wrong.example");
}

Test(rpc_refuse, server_from_another_ca, .timeout = 60)
{
    /* the client trusts only CA b; the server's certificate is from CA a */
    expect_refused("server", "b", "b/stranger", NULL);
}

Test(rpc_refuse, matching_server_name_is_accepted, .timeout = 60)
{
    /* control for server_name_mismatch: the same setup with a right name works */
    struct rpc_server *srv = tt_server_start("server", 0, NULL);
    struct rpc_channel_config cfg = {.server_name = "localhost"};
    struct rpc_channel *ch = tt_channel(rpc_server_port(srv), "a", "client", &cfg);
    struct rpc_result r;
    cr_assert_eq(rpc_channel_call(ch, TT_ECHO, "x", 1, DEADLINE, &r), 0);
    cr_assert_eq(r.status, GRPC_STATUS_OK, "status %d: %s", r.status, r.message);
    rpc_result_free(&r);
    rpc_channel_destroy(ch);
    rpc_server_shutdown(srv, 1000);
}

/* ---- bad configuration: a clear error, never a crash ---------------------------------- */

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert(f);
    fputs(text, f);
    fclose(f);
}

static void expect_server_error(const struct rpc_tls *tls, bool insecure, const char *listen,
                                const char *needle)
{
    struct rpc_server_config cfg = {.listen = listen, .tls = tls, .insecure = insecure};
    char err[512] = "";
    struct rpc_server *srv = rpc_server_create(&cfg, err, sizeof err);
    cr_assert_null(srv, "create should fail (%s)", needle);
    cr_assert(strstr(err, needle), "error \"%s\" should mention \"%s\"", err, needle);
}

Test(rpc_config, bad_tls_files_give_clear_errors, .timeout = 60)
{
    struct tt_tls t;
    char garbage[600], missing[600];
    snprintf(garbage, sizeof garbage, "%s/garbage-%d.pem", tt_certs_dir(), getpid());
    snprintf(missing, sizeof missing, "%s/no-such-file.pem", tt_certs_dir());
    write_file(garbage, "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n");

    tt_tls(&t, "a", "server");
    t.tls.cert_file = missing;
    expect_server_error(&t.tls, false, "127.0.0.1:0", "No such file");
    tt_tls(&t, "a", "server");
    t.tls.ca_file = missing;
    expect_server_error(&t.tls, false, "127.0.0.1:0", "ca_file");
    tt_tls(&t, "a", "server");
    t.tls.cert_file = garbage;
    expect_server_error(&t.tls, false, "127.0.0.1:0", "no PEM certificate");
    tt_tls(&t, "a", "server");
    t.tls.ca_file = garbage;
    expect_server_error(&t.tls, false, "127.0.0.1:0", "no PEM certificate");
    tt_tls(&t, "a", "server");
    t.tls.key_file = garbage;
    expect_server_error(&t.tls, false, "127.0.0.1:0", "private key");
    /* a key from another identity */
    struct tt_tls other;
    tt_tls(&other, "a", "client");
    tt_tls(&t, "a", "server");
    t.tls.key_file = other.key;
    expect_server_error(&t.tls, false, "127.0.0.1:0", "does not match");
    /* a directory is not a PEM file */
    tt_tls(&t, "a", "server");
    t.tls.cert_file = tt_certs_dir();
    expect_server_error(&t.tls, false, "127.0.0.1:0", "regular file");
    /* no TLS and not explicitly insecure */
    expect_server_error(NULL, false, "127.0.0.1:0", "insecure");
    /* a server needs its own certificate */
    tt_tls(&t, "a", NULL);
    expect_server_error(&t.tls, false, "127.0.0.1:0", "required");
    /* the same checks are available without creating anything */
    char err[512];
    tt_tls(&t, "a", "server");
    cr_assert_eq(rpc_tls_check(&t.tls, true, err, sizeof err), 0);
    t.tls.key_file = other.key;
    cr_assert_eq(rpc_tls_check(&t.tls, true, err, sizeof err), RPC_ETLS);

    /* channels check their files the same way */
    struct rpc_channel_config ccfg = {.target = "127.0.0.1:1"};
    tt_tls(&t, "a", "client");
    t.tls.ca_file = garbage;
    ccfg.tls = &t.tls;
    cr_assert_null(rpc_channel_create(&ccfg, err, sizeof err));
    cr_assert(strstr(err, "no PEM certificate"), "%s", err);
    tt_tls(&t, "a", "client");
    t.tls.key_file = NULL;
    cr_assert_null(rpc_channel_create(&ccfg, err, sizeof err));
    cr_assert(strstr(err, "together"), "%s", err);
    ccfg.tls = NULL;
    cr_assert_null(rpc_channel_create(&ccfg, err, sizeof err));
    cr_assert(strstr(err, "insecure"), "%s", err);
    unlink(garbage);
}

Test(rpc_config, bad_addresses, .timeout = 60)
{
    struct tt_tls t;
    tt_tls(&t, "a", "server");
    expect_server_error(&t.tls, false, "not-an-address:xyz", "cannot listen");
    expect_server_error(NULL, true, "", "no listen address");
    /* a port already taken */
    struct rpc_server *srv = tt_server_start("server", 0, NULL);
    char listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", rpc_server_port(srv));
    expect_server_error(&t.tls, false, listen, "cannot listen");
    rpc_server_shutdown(srv, 0);
    struct rpc_server_config cfg = {.listen = "127.0.0.1:0", .insecure = true, .threads = 1000};
    char err[256];
    cr_assert_null(rpc_server_create(&cfg, err, sizeof err));
    cr_assert(strstr(err, "threads"), "%s", err);
}

Test(rpc_codec, pack_unpack_and_malformed, .timeout = 30)
{
    Craft__Echo__EchoRequest req = CRAFT__ECHO__ECHO_REQUEST__INIT;
    req.payload.data = (uint8_t *)"abc";
    req.payload.len = 3;
    req.seq = 1ull << 40;
    uint8_t *buf;
    size_t len;
    cr_assert_eq(rpc_msg_pack(&req.base, &buf, &len), 0);
    ProtobufCMessage *m = rpc_msg_unpack(&craft__echo__echo_request__descriptor, buf, len);
    cr_assert(m);
    Craft__Echo__EchoRequest *back = (Craft__Echo__EchoRequest *)m;
    cr_assert_eq(back->seq, 1ull << 40);
    cr_assert_eq(back->payload.len, 3);
    protobuf_c_message_free_unpacked(m, NULL);
    /* every truncation of a valid message with a length-delimited field either fails or
     * decodes to something; none may crash (ASan watches the reads) */
    for (size_t cut = 0; cut < len; cut++) {
        m = rpc_msg_unpack(&craft__echo__echo_request__descriptor, buf, cut);
        if (m)
            protobuf_c_message_free_unpacked(m, NULL);
    }
    /* a length that runs past the end */
    static const uint8_t overrun[] = {0x0a, 0x7f, 'x'};
    cr_assert_null(rpc_msg_unpack(&craft__echo__echo_request__descriptor, overrun, sizeof overrun));
    free(buf);
    cr_assert_str_eq(rpc_strerror(RPC_EFULL), "queue full");
}

/* A client that half-closes without sending the request (raw gRPC core, which rpc/'s channel
 * never does): unary methods are registered with gRPC, which reads the request before handing
 * over the call, so this reaches our accept with no payload. The caller gets INVALID_ARGUMENT
 * and the handler never runs. */
Test(rpc_unary, missing_request_is_invalid_argument, .timeout = 60)
{
    struct rpc_server *srv = tt_server_start(NULL, 0, NULL); /* plaintext: raw core client */
    char target[64];
    snprintf(target, sizeof target, "127.0.0.1:%d", rpc_server_port(srv));
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    grpc_channel *ch = grpc_channel_create(target, creds, NULL);
    grpc_channel_credentials_release(creds);
    grpc_completion_queue *cq = grpc_completion_queue_create_for_pluck(NULL);
    grpc_slice method = grpc_slice_from_static_string(TT_ECHO);
    gpr_timespec deadline = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                         gpr_time_from_millis(DEADLINE, GPR_TIMESPAN));
    grpc_call *call = grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq, method, NULL,
                                               deadline, NULL);
    cr_assert_not_null(call);
    grpc_metadata_array md_init, md_trail;
    grpc_metadata_array_init(&md_init);
    grpc_metadata_array_init(&md_trail);
    grpc_status_code status = GRPC_STATUS_OK;
    grpc_slice details = grpc_empty_slice();
    grpc_byte_buffer *reply = NULL;
    grpc_op ops[5];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT; /* no GRPC_OP_SEND_MESSAGE */
    ops[2].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[2].data.recv_initial_metadata.recv_initial_metadata = &md_init;
    ops[3].op = GRPC_OP_RECV_MESSAGE;
    ops[3].data.recv_message.recv_message = &reply;
    ops[4].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[4].data.recv_status_on_client.trailing_metadata = &md_trail;
    ops[4].data.recv_status_on_client.status = &status;
    ops[4].data.recv_status_on_client.status_details = &details;
    int tag = 1;
    cr_assert_eq(grpc_call_start_batch(call, ops, 5, &tag, NULL), GRPC_CALL_OK);
    grpc_event ev = grpc_completion_queue_pluck(cq, &tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    cr_assert_eq(ev.type, GRPC_OP_COMPLETE);
    cr_assert_eq(status, GRPC_STATUS_INVALID_ARGUMENT, "status %d", status);
    char *msg = grpc_slice_to_c_string(details);
    cr_assert(strstr(msg, "no request message"), "details: %s", msg);
    gpr_free(msg);
    cr_assert_null(reply);
    cr_assert_eq(atomic_load(&tt_counts.echo), 0, "the handler must never see it");

    grpc_slice_unref(details);
    grpc_metadata_array_destroy(&md_init);
    grpc_metadata_array_destroy(&md_trail);
    grpc_call_unref(call);
    grpc_channel_destroy(ch);
    grpc_completion_queue_shutdown(cq);
    while (grpc_completion_queue_pluck(cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
           GRPC_QUEUE_SHUTDOWN)
        ;
    grpc_completion_queue_destroy(cq);
    rpc_server_shutdown(srv, 1000);
}
