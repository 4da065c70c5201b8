#include "bench/bench_client.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>

#include "services/cluster.h"
#include "services/proto/etcd/rpc.pb-c.h"

int bench_flag_next(int argc, char **argv, int *i, const struct bench_bool_flag *bools,
                    const char *const *valued, char **flag, char **value, char *err,
                    size_t errlen)
{
    char *f = argv[*i];
    if (!strcmp(f, "--help") || !strcmp(f, "-h"))
        return BENCH_FLAG_HELP;
    if (strncmp(f, "--", 2) != 0) {
        snprintf(err, errlen, "unexpected argument '%s'", f);
        return -1;
    }
    char *v = NULL;
    char *eq = strchr(f, '=');
    if (eq) {
        *eq = 0;
        v = eq + 1;
    }
    for (const struct bench_bool_flag *b = bools; b->name; b++) {
        if (strcmp(f, b->name) != 0)
            continue;
        if (v) {
            snprintf(err, errlen, "%s takes no value", f);
            return -1;
        }
        *b->value = true;
        return BENCH_FLAG_BOOL;
    }
    bool known = false;
    for (const char *const *k = valued; *k; k++)
        known = known || !strcmp(f, *k);
    if (!known) {
        snprintf(err, errlen, "unknown flag %s", f);
        return -1;
    }
    if (!v) {
        if (*i + 1 >= argc) {
            snprintf(err, errlen, "%s needs a value", f);
            return -1;
        }
        v = argv[++*i];
    }
    *flag = f;
    *value = v;
    return BENCH_FLAG_VALUE;
}

int bench_parse_int(const char *flag, const char *v, long long lo, long long hi, long long *out,
                    char *err, size_t errlen)
{
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end) {
        snprintf(err, errlen, "%s: '%s' is not an integer", flag, v);
        return -1;
    }
    if (x < lo || x > hi) {
        snprintf(err, errlen, "%s: %lld is out of range %lld..%lld", flag, x, lo, hi);
        return -1;
    }
    *out = x;
    return 0;
}

int bench_parse_seconds(const char *flag, const char *v, double max_s, double *out, char *err,
                        size_t errlen)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || (*end && strcmp(end, "s"))) {
        snprintf(err, errlen, "%s: '%s' is not a number of seconds", flag, v);
        return -1;
    }
    if (!(x > 0 && x <= max_s)) {
        snprintf(err, errlen, "%s: %s is out of range (0, %.0f] seconds", flag, v, max_s);
        return -1;
    }
    *out = x;
    return 0;
}

int bench_check_url(const char *flag, const char *url, bool insecure, char *err, size_t errlen)
{
    struct cluster_url u;
    char uerr[300];
    if (cluster_parse_url(url, &u, uerr, sizeof uerr) != 0) {
        snprintf(err, errlen, "%s: %s", flag, uerr);
        return -1;
    }
    if (u.tls == insecure) {
        snprintf(err, errlen,
                 "%s: %s: use https:// with --cacert/--cert/--key, or http:// with --insecure",
                 flag, url);
        return -1;
    }
    return 0;
}

int bench_parse_endpoints(char *list, bool insecure, char **eps, int max, int *n, char *err,
                          size_t errlen)
{
    char *save = NULL;
    for (char *e = strtok_r(list, ",", &save); e; e = strtok_r(NULL, ",", &save)) {
        if (*n == max) {
            snprintf(err, errlen, "--endpoints: at most %d endpoints", max);
            return -1;
        }
        if (bench_check_url("--endpoints", e, insecure, err, errlen) != 0)
            return -1;
        eps[(*n)++] = e;
    }
    if (*n == 0) {
        snprintf(err, errlen, "--endpoints: no endpoint given");
        return -1;
    }
    return 0;
}

int bench_check_tls_flags(const struct rpc_tls *tls, bool insecure, char *err, size_t errlen)
{
    if (!insecure) {
        if (!tls->ca_file) {
            snprintf(err, errlen,
                     "--cacert is required for https:// endpoints (or --insecure with http://)");
            return -1;
        }
        if (!tls->cert_file != !tls->key_file) {
            snprintf(err, errlen, "--cert and --key go together");
            return -1;
        }
    } else if (tls->ca_file || tls->cert_file || tls->key_file) {
        snprintf(err, errlen, "--insecure takes no --cacert/--cert/--key");
        return -1;
    }
    return 0;
}

struct rpc_channel *bench_channel_open(const char *url, const struct rpc_tls *tls,
                                       const char *server_name, int threads, int max_inflight,
                                       size_t salt, char *err, size_t errlen)
{
    struct cluster_url u;
    char target[CLUSTER_HOST_MAX + 16];
    if (cluster_parse_url(url, &u, err, errlen) != 0)
        return NULL;
    cluster_url_target(&u, target, sizeof target);
    struct rpc_channel_config cc = {
        .target = target,
        .tls = tls,
        .insecure = tls == NULL,
        .server_name = server_name,
        .threads = threads,
        .max_inflight = max_inflight,
        .wait_for_ready = true,
        .max_recv_bytes = RPC_DEFAULT_MAX_MSG + salt,
    };
    return rpc_channel_create(&cc, err, errlen);
}

int bench_hello(struct rpc_channel *ch, const char *key, int deadline_ms, char *err,
                size_t errlen)
{
    Etcdserverpb__RangeRequest req = ETCDSERVERPB__RANGE_REQUEST__INIT;
    req.key.data = (uint8_t *)key;
    req.key.len = strlen(key);
    req.serializable = true;
    ProtobufCMessage *resp = NULL;
    struct rpc_result res;
    rpc_channel_call_msg(ch, "/etcdserverpb.KV/Range", &req.base,
                         &etcdserverpb__range_response__descriptor, deadline_ms, &resp, &res);
    int rc = 0;
    if (res.status != GRPC_STATUS_OK) {
        snprintf(err, errlen, "%s (gRPC status %d)", res.message, res.status);
        rc = -1;
    }
    if (resp)
        protobuf_c_message_free_unpacked(resp, NULL);
    rpc_result_free(&res);
    return rc;
}

int64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void bench_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

double bench_cpu_us(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

void bench_json_str(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            printf("\\%c", ch);
        else if (ch < 0x20)
            printf("\\u%04x", ch);
        else
            putchar(ch);
    }
    putchar('"');
}
