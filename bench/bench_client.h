/* bench_client: what the load generators (craft-bench, watch-bench) share besides the
 * histogram: reading their flags and reaching an etcd v3 server.
 *
 * What it promises
 * - Flags: bench_flag_next reads one --flag, --flag=value or --flag value from argv (boolean
 *   flags set in place, a value for every other known flag), and the parsers check integers,
 *   seconds and endpoint URLs. None of them prints or exits: each returns 0, or -1 with one
 *   line naming the problem in err (as the tools print it after "<tool>: "); the tools turn
 *   that into their exit status 2.
 * - Connections: bench_channel_open builds one channel (mutual TLS with the given files, or
 *   plaintext when tls is NULL) to an http(s):// URL already checked by
 *   bench_parse_endpoints/bench_check_url; bench_hello does one serializable read on it so the
 *   TLS handshake is over before anything is timed.
 * - Time: a monotonic clock in ns and this process's CPU time (user + system) in us.
 * - Output: a string printed as a JSON string literal.
 * Messages longer than BENCH_ERR_MAX - 1 bytes (an argument thousands of bytes long) are cut.
 */
#ifndef CRAFT_BENCH_CLIENT_H
#define CRAFT_BENCH_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rpc/rpc.h"

#define BENCH_ERR_MAX 4096 /* an err buffer that holds any message below whole */

/* A boolean flag and where its value goes. Tables end with {NULL, NULL}. */
struct bench_bool_flag {
    const char *name;
    bool *value;
};

enum {
    BENCH_FLAG_VALUE = 0, /* *flag takes *value */
    BENCH_FLAG_BOOL = 1,  /* a boolean flag, already set */
    BENCH_FLAG_HELP = 2,  /* --help or -h */
};

/* Reads the flag at argv[*i] (and its value at argv[*i + 1], advancing *i). bools and valued
 * (NULL-terminated) list the known flags. "--flag=value" is split in place. Returns a
 * BENCH_FLAG_ code, or -1 with err: "unexpected argument 'x'", "--flag takes no value",
 * "unknown flag --flag", "--flag needs a value". */
int bench_flag_next(int argc, char **argv, int *i, const struct bench_bool_flag *bools,
                    const char *const *valued, char **flag, char **value, char *err,
                    size_t errlen);

/* A decimal integer in lo..hi. */
int bench_parse_int(const char *flag, const char *v, long long lo, long long hi, long long *out,
                    char *err, size_t errlen);

/* A number of seconds (an optional trailing "s") in (0, max_s]. */
int bench_parse_seconds(const char *flag, const char *v, double max_s, double *out, char *err,
                        size_t errlen);

/* url is http(s)://host:port, https:// unless insecure (then http://). */
int bench_check_url(const char *flag, const char *url, bool insecure, char *err, size_t errlen);

/* Splits the comma-separated --endpoints list in place into eps (at most max), each checked
 * as by bench_check_url; at least one. */
int bench_parse_endpoints(char *list, bool insecure, char **eps, int max, int *n, char *err,
                          size_t errlen);

/* The TLS flags agree with insecure: --cacert required (and --cert with --key) unless
 * insecure, none of them with it. Reads no file (rpc_tls_check does). */
int bench_check_tls_flags(const struct rpc_tls *tls, bool insecure, char *err, size_t errlen);

/* A channel to url (checked before). tls NULL: plaintext. salt makes the channel's receive
 * limit differ by that many bytes: gRPC shares one TCP connection among channels whose target
 * and arguments are equal (its global subchannel pool), so channels given distinct salts
 * really open one connection each. NULL with err on failure. */
struct rpc_channel *bench_channel_open(const char *url, const struct rpc_tls *tls,
                                       const char *server_name, int threads, int max_inflight,
                                       size_t salt, char *err, size_t errlen);

/* One serializable Range of key on ch. On failure -1 with err "<message> (gRPC status N)". */
int bench_hello(struct rpc_channel *ch, const char *key, int deadline_ms, char *err,
                size_t errlen);

/* CLOCK_MONOTONIC in ns; async-signal-safe. */
int64_t bench_now_ns(void);

void bench_sleep_ms(int ms);

/* CPU time (user + system) this process has used, in microseconds (0 if unknown). */
double bench_cpu_us(void);

/* Prints s to stdout as a JSON string: quote and backslash escaped, control bytes as \u00XX. */
void bench_json_str(const char *s);

#endif
