/* log.h: craft's process-wide logger, shaped like etcd's (etcd 3.4's --logger, --log-level and
 * --log-outputs; docs/logging.md).
 *
 * What it promises:
 * - Formats: JSON lines, one object per line, like etcd's zap logger (LOG_FORMAT_JSON, the
 *   default): {"level":"info","ts":"2026-12-04T13:00:00.123Z","caller":"services/server.c:123",
 *   "msg":"...", then the line's fields in the order given}; or plain text like etcd's capnslog
 *   (LOG_FORMAT_TEXT): "2026-12-04 13:00:00.123456 I | services/server.c:123: msg key=value".
 *   Field values: strings (JSON strings), unsigned and signed integers (JSON numbers), member
 *   ids (etcd's hex text without padding, as a string), durations (Go's text: "1.5s", "120ms",
 *   as a string) and booleans.
 * - JSON escaping is complete: '"' and '\' escaped, control bytes as \n \r \t \b \f or \u00XX
 *   (DEL too), and every byte that is not part of valid UTF-8 (stray continuation bytes,
 *   truncated or overlong sequences, surrogates, above U+10FFFF) becomes U+FFFD, so every line
 *   is valid JSON whatever a message or field holds. In text format control bytes and invalid
 *   UTF-8 are written as \xNN, so a line stays one line.
 * - Bounded lines: a line, newline included, is at most max_line_bytes (LOG_LINE_MIN ..
 *   LOG_LINE_MAX). A longer one is cut and ends with LOG_TRUNCATED_MARK (JSON: as the last field,
 *   so the line stays valid JSON; its text fields are cut, never split inside an escape).
 * - Lines never interleave: each line is formatted whole, then written with one write(2) per
 *   output (a short write is continued) under one process-wide mutex. Any thread may log; the
 *   logger never calls back into its caller. Nothing here exits or aborts: "panic" and "fatal"
 *   are levels for filtering, as etcd's flag accepts them.
 * - Levels below the configured one cost one relaxed atomic load (log_enabled) and nothing else.
 * - Rate limiting (the log_*_limited calls): per call site and key (a peer's id, say), at most
 *   `repeat_burst` lines per `repeat_interval_ms`; the rest are counted, not written. The first
 *   line written after that window says "(suppressed N similar)" and carries "suppressed":N.
 *   log_flush_suppressed(false) ends every window that has ended with lines held back and no
 *   line since (craftd calls it every interval): it writes the last line held back (message,
 *   level and caller; not its fields) with the count of the others. Every line is thus written
 *   or counted exactly once: lines plus their "suppressed" counts = calls. At most LOG_LIMIT_SLOTS sites and keys are tracked at once; past
 *   that the least recently limited one is forgotten (its pending count is written first).
 * - Outputs: "default" (= stderr), "stderr", "stdout" or file paths (appended to, created 0644),
 *   comma-separated, at most LOG_MAX_OUTPUTS. Before log_configure: JSON at info on stderr.
 * - The pure consensus core (raft/core) never logs: it does no I/O.
 */
#ifndef CRAFT_LOG_H
#define CRAFT_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum log_level {
    LOG_LEVEL_DEBUG,
    LOG_LEVEL_INFO,
    LOG_LEVEL_WARN,
    LOG_LEVEL_ERROR,
    LOG_LEVEL_PANIC,
    LOG_LEVEL_FATAL,
};

enum log_format { LOG_FORMAT_JSON, LOG_FORMAT_TEXT };

#define LOG_MAX_OUTPUTS 8
#define LOG_LINE_MIN 256
#define LOG_LINE_MAX 16384
#define LOG_LIMIT_SLOTS 128
#define LOG_TRUNCATED_MARK "...(truncated)"

/* Defaults: craftd's flag defaults (docs/logging.md). */
#define LOG_DEFAULT_LINE_BYTES 4096
#define LOG_DEFAULT_REPEAT_INTERVAL_MS 10000
#define LOG_DEFAULT_REPEAT_BURST 3

struct log_config {
    enum log_format format;
    enum log_level level;
    const char *outputs;         /* NULL or "" = "default" */
    uint32_t max_line_bytes;     /* 0 = LOG_DEFAULT_LINE_BYTES; else LOG_LINE_MIN .. LOG_LINE_MAX */
    uint64_t repeat_interval_ms; /* 0 = LOG_DEFAULT_REPEAT_INTERVAL_MS */
    uint32_t repeat_burst;       /* 0 = LOG_DEFAULT_REPEAT_BURST */
    uint64_t (*clock_ns)(void);  /* tests: the rate limiter's clock; NULL = CLOCK_MONOTONIC */
};

/* etcd's values: "zap" (JSON) or "capnslog" (text); "json" and "text" are accepted too. 0 or -1. */
int log_parse_logger(const char *v, enum log_format *out);
/* debug, info, warn, error, panic or fatal (etcd's). 0 or -1. */
int log_parse_level(const char *v, enum log_level *out);
const char *log_level_name(enum log_level l);
/* Checks an --log-outputs value without opening anything: 0, or -1 with a sentence in err. */
int log_check_outputs(const char *outputs, char *err, size_t errlen);

/* Replaces the configuration: opens the outputs (files appended to), then switches to them
 * and closes the files of the previous one. On failure (-1, err filled) nothing changes. */
int log_configure(const struct log_config *c, char *err, size_t errlen);
/* Back to the defaults (JSON, info, stderr), files closed, rate-limit state forgotten. */
void log_reset(void);

bool log_enabled(enum log_level l);

enum log_field_kind { LOG_FIELD_STR, LOG_FIELD_U64, LOG_FIELD_I64, LOG_FIELD_ID, LOG_FIELD_DUR, LOG_FIELD_BOOL };

struct log_field {
    const char *key; /* NULL ends a list */
    enum log_field_kind kind;
    union {
        const char *s; /* NULL is written as "" */
        uint64_t u;    /* U64, ID; DUR: nanoseconds */
        int64_t i;
        bool b;
    };
};

#define LOG_STR(k, v) {.key = (k), .kind = LOG_FIELD_STR, .s = (v)}
#define LOG_U64(k, v) {.key = (k), .kind = LOG_FIELD_U64, .u = (uint64_t)(v)}
#define LOG_I64(k, v) {.key = (k), .kind = LOG_FIELD_I64, .i = (int64_t)(v)}
#define LOG_ID(k, v) {.key = (k), .kind = LOG_FIELD_ID, .u = (uint64_t)(v)}
#define LOG_DUR(k, ns) {.key = (k), .kind = LOG_FIELD_DUR, .u = (uint64_t)(ns)}
#define LOG_BOOL(k, v) {.key = (k), .kind = LOG_FIELD_BOOL, .b = (v)}
/* A field list for one call: LOG_FIELDS(LOG_ID("member", id), LOG_U64("term", t)). */
#define LOG_FIELDS(...) ((const struct log_field[]){__VA_ARGS__, {.key = NULL}})

/* Writes one line (if `level` is enabled). file and line name the caller; fields may be NULL. */
void log_emit(enum log_level level, const char *file, int line, const struct log_field *fields,
              const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* The same, rate-limited per (file, line, key) as described above. */
void log_emit_limited(enum log_level level, const char *file, int line, uint64_t key,
                      const struct log_field *fields, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
/* Writes "(suppressed N similar)" lines for windows that ended with lines suppressed (with
 * `all`, for every window with lines suppressed: at exit). */
void log_flush_suppressed(bool all);

#define log_debug(fields, ...) log_emit(LOG_LEVEL_DEBUG, __FILE__, __LINE__, fields, __VA_ARGS__)
#define log_info(fields, ...) log_emit(LOG_LEVEL_INFO, __FILE__, __LINE__, fields, __VA_ARGS__)
#define log_warn(fields, ...) log_emit(LOG_LEVEL_WARN, __FILE__, __LINE__, fields, __VA_ARGS__)
#define log_error(fields, ...) log_emit(LOG_LEVEL_ERROR, __FILE__, __LINE__, fields, __VA_ARGS__)
#define log_warn_limited(key, fields, ...) \
    log_emit_limited(LOG_LEVEL_WARN, __FILE__, __LINE__, key, fields, __VA_ARGS__)

#endif
