/* log_test: the logger's line formats (etcd's zap JSON and capnslog text), JSON escaping of
 * control bytes, quotes and invalid UTF-8, level filtering, bounded lines with the truncation
 * mark, Go duration text, outputs, rate limiting on a fake clock, and whole lines from many
 * threads at once. Each test logs to a file of its own and reads it back. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log/log.h"

static char path[64];

/* Logs to a fresh temporary file with the given settings. */
static void setup_file(enum log_format fmt, enum log_level level, uint32_t max_line)
{
    snprintf(path, sizeof path, "/tmp/craft_log_test_XXXXXX");
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    close(fd);
    struct log_config c = {.format = fmt, .level = level, .outputs = path, .max_line_bytes = max_line};
    char err[256];
    cr_assert_eq(log_configure(&c, err, sizeof err), 0, "%s", err);
}

/* Everything written so far (malloc'd). */
static char *slurp(void)
{
    FILE *f = fopen(path, "r");
    cr_assert(f);
    static char buf[4 << 20];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return strdup(buf);
}

static void done(void)
{
    log_reset();
    unlink(path);
}

static int count_lines(const char *s)
{
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

/* The line without its timestamp: `{"level":"info","ts":"...","caller"...` with the ts value
 * checked for etcd's shape (2026-12-04T13:00:00.123Z) and cut out. */
static const char *json_without_ts(char *line)
{
    char *ts = strstr(line, "\"ts\":\"");
    cr_assert(ts, "no ts in %s", line);
    char *v = ts + 6;
    int y, mo, d, h, mi, s, ms;
    char z;
    cr_assert_eq(sscanf(v, "%4d-%2d-%2dT%2d:%2d:%2d.%3d%c", &y, &mo, &d, &h, &mi, &s, &ms, &z), 8,
                 "ts shape: %s", v);
    cr_assert_eq(z, 'Z');
    cr_assert_eq(v[24], '"', "ts has millisecond precision: %s", v);
    memmove(ts + 5, v + 25, strlen(v + 25) + 1); /* keeps `"ts":` */
    return line;
}

Test(json, line_shape_with_fields_in_order)
{
    setup_file(LOG_FORMAT_JSON, LOG_LEVEL_INFO, 0);
    log_emit(LOG_LEVEL_INFO, "services/server.c", 123, 
             LOG_FIELDS(LOG_ID("member", 0x8e9e05c52164694dull), LOG_U64("term", 7),
                        LOG_ID("leader", 0xa1), LOG_I64("delta", -3), LOG_BOOL("ok", true),
                        LOG_DUR("took", 1500000000ull), LOG_STR("name", "n1"), LOG_STR("none", NULL)),
             "became %s", "leader");
    char *out = slurp();
    cr_assert_str_eq(json_without_ts(out),
                     "{\"level\":\"info\",\"ts\":,\"caller\":\"services/server.c:123\","
                     "\"msg\":\"became leader\",\"member\":\"8e9e05c52164694d\",\"term\":7,"
                     "\"leader\":\"a1\",\"delta\":-3,\"ok\":true,\"took\":\"1.5s\",\"name\":\"n1\","
                     "\"none\":\"\"}\n");
    free(out);
    done();
}

Test(json, macros_name_the_callers_file_and_line)
{
    setup_file(LOG_FORMAT_JSON, LOG_LEVEL_DEBUG, 0);
    int line = __LINE__ + 1;
    log_warn(NULL, "w");
    char *out = slurp();
    char want[128];
    snprintf(want, sizeof want, "\"level\":\"warn\"");
    cr_assert(strstr(out, want), "%s", out);
    snprintf(want, sizeof want, "\"caller\":\"tests/log/log_test.c:%d\",\"msg\":\"w\"}\n", line);
    cr_assert(strstr(out, want), "%s", out);
    free(out);
    done();
}

Test(json, escapes_quotes_backslashes_and_control_bytes)
{
    setup_file(LOG_FORMAT_JSON, LOG_LEVEL_INFO, 0);
    log_emit(LOG_LEVEL_INFO, "f.c", 1, LOG_FIELDS(LOG_STR("k\"ey", "a\tb")),
             "q\" b\\ n\n r\r t\t b\b f\f one\x01 esc\x1b del\x7f end");
    char *out = slurp();
    cr_assert(strstr(out, "\"msg\":\"q\\\" b\\\\ n\\n r\\r t\\t b\\b f\\f one\\u0001 esc\\u001b "
                          "del\\u007f end\",\"k\\\"ey\":\"a\\tb\"}\n"),
              "%s", out);
    cr_assert_eq(count_lines(out), 1);
    free(out);
    done();
}

Test(json, valid_utf8_passes_and_invalid_bytes_become_replacement_characters)
{
    setup_file(LOG_FORMAT_JSON, LOG_LEVEL_INFO, 0);
    /* é (2 bytes), € (3), U+1F600 (4), U+10FFFF (the largest) pass unchanged. */
    log_emit(LOG_LEVEL_INFO, "f.c", 1, NULL, "%s", "\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf");
    /* A stray continuation byte, overlong forms (C0 AF, E0 80 80), a surrogate (ED A0 80), above
     * U+10FFFF (F4 90 80 80), a byte never valid (F5), a sequence cut by the end (E2 82). Each
     * bad byte is one U+FFFD (as Go's decoder and zap do). */
    log_emit(LOG_LEVEL_INFO, "f.c", 2, NULL, "%s",
             "a\x80 b\xc0\xaf c\xe0\x80\x80 d\xed\xa0\x80 e\xf4\x90\x80\x80 f\xf5 g\xe2\x82");
    char *out = slurp();
    cr_assert(strstr(out, "\"msg\":\"\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf\"}"), "%s", out);
    cr_assert(strstr(out, "\"msg\":\"a\\ufffd b\\ufffd\\ufffd c\\ufffd\\ufffd\\ufffd "
                          "d\\ufffd\\ufffd\\ufffd e\\ufffd\\ufffd\\ufffd\\ufffd f\\ufffd "
                          "g\\ufffd\\ufffd\"}"),
              "%s", out);
    free(out);
    done();
}

Test(json, levels_below_the_configured_one_are_dropped)
{
    setup_file(LOG_FORMAT_JSON, LOG_LEVEL_WARN, 0);
    cr_assert_not(log_enabled(LOG_LEVEL_INFO));
    cr_assert(log_enabled(LOG_LEVEL_ERROR));
    log_debug(NULL, "d");
    log_info(NULL, "i");
    log_warn(NULL, "w");
    log_error(NULL, "e");
    log_emit(LOG_LEVEL_FATAL, "f.c", 1, NULL, "f"); /* a level only: nothing exits */
    char *out = slurp();
    cr_assert_eq(count_lines(out), 3, "%s", out);
    cr_assert(strstr(out, "\"level\":\"warn\""));
    cr_assert(strstr(out, "\"level\":\"error\""));
    cr_assert(strstr(out, "\"level\":\"fatal\""));
    cr_assert_null(strstr(out, "\"level\":\"info\""));
    free(out);
    done();
}

Test(text, capnslog_shape)
{
    setup_file(LOG_FORMAT_TEXT, LOG_LEVEL_INFO, 0);
    log_emit(LOG_LEVEL_WARN, "raft/wal/wal_log.c", 9, LOG_FIELDS(LOG_U64("term", 2), LOG_STR("s", "")),
             "slow \"fdatasync\"\nsecond\xff line");
    char *out = slurp();
    int y, mo, d, h, mi, s, us, n = 0;
    cr_assert_eq(sscanf(out, "%4d-%2d-%2d %2d:%2d:%2d.%6d %n", &y, &mo, &d, &h, &mi, &s, &us, &n), 7,
                 "%s", out);
    cr_assert_str_eq(out + n, "W | raft/wal/wal_log.c:9: slow \"fdatasync\"\\x0asecond\\xff line "
                              "term=2 s=\"\"\n");
    free(out);
    done();
}

/* The line's bytes before the mark hold whole escapes only: an even run of backslashes. */
static void assert_no_split_escape(const char *line)
{
    const char *m = strstr(line, LOG_TRUNCATED_MARK);
    cr_assert(m, "no mark in %s", line);
    int bs = 0;
    for (const char *p = m - 1; p >= line && *p == '\\'; p--)
        bs++;
    cr_assert_eq(bs % 2, 0, "an escape was split: %s", line);
}

Test(truncation, long_message_is_cut_with_the_mark_and_stays_json)
{
    setup_file(LOG_FORMAT_JSON, LOG_LEVEL_INFO, 256);
    char big[1000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    log_emit(LOG_LEVEL_INFO, "f.c", 1, LOG_FIELDS(LOG_U64("term", 5)), "%s", big);
    char *out = slurp();
    size_t len = strlen(out);
    cr_assert_leq(len, 256);
    cr_assert_gt(len, 200, "the line uses its room");
    const char *tail = "aaa" LOG_TRUNCATED_MARK "\",\"truncated\":true}\n";
    cr_assert_str_eq(out + len - strlen(tail), tail, "%s", out);
    cr_assert_null(strstr(out, "\"term\""), "fields after a cut message are dropped");
    free(out);
    done();
}

Test(truncation, never_splits_an_escape_or_a_utf8_sequence)
{
    for (int shift = 0; shift < 6; shift++) {
        setup_file(LOG_FORMAT_JSON, LOG_LEVEL_INFO, 256 + (uint32_t)shift);
        char big[600];
        size_t k = 0;
        while (k + 6 < sizeof big) {
            big[k++] = '"';
            big[k++] = '\x01';
            big[k++] = '\xe2', big[k++] = '\x82', big[k++] = '\xac';
        }
        big[k] = '\0';
        log_emit(LOG_LEVEL_INFO, "f.c", 1, NULL, "%s", big);
        char *out = slurp();
        cr_assert_leq(strlen(out), 256 + (size_t)shift);
        assert_no_split_escape(out);
        const char *m = strstr(out, LOG_TRUNCATED_MARK);
        /* Before the mark: a whole escape or a whole euro sign, never part of one. */
        cr_assert(!strncmp(m - 2, "\\\"", 2) || !strncmp(m - 6, "\\u0001", 6) ||
                      !strncmp(m - 3, "\xe2\x82\xac", 3),
                  "%s", out);
        free(out);
        done();
    }
}

Test(truncation, a_field_that_does_not_fit_is_dropped_whole)
{
    setup_file(LOG_FORMAT_JSON, LOG_LEVEL_INFO, 256);
    char mid[100];
    memset(mid, 'm', sizeof mid - 1);
    mid[sizeof mid - 1] = '\0';
    /* msg fits; the number field that follows does not: it is rolled back, not half written. */
    log_emit(LOG_LEVEL_INFO, "f.c", 1,
             LOG_FIELDS(LOG_U64("term", 1), LOG_U64("a_long_key_name_that_pushes_past_the_end", 123456789)),
             "%s", mid);
    char *out = slurp();
    cr_assert_leq(strlen(out), 256);
    cr_assert(strstr(out, "\"term\":1,\"truncated\":true}\n"), "%s", out);
    free(out);
    done();
}

Test(truncation, text_lines_end_with_the_mark)
{
    setup_file(LOG_FORMAT_TEXT, LOG_LEVEL_INFO, 256);
    char big[1000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    log_info(NULL, "%s", big);
    char *out = slurp();
    cr_assert_leq(strlen(out), 256);
    cr_assert_str_eq(out + strlen(out) - strlen(LOG_TRUNCATED_MARK) - 1, LOG_TRUNCATED_MARK "\n");
    free(out);
    done();
}

static void assert_duration(uint64_t ns, const char *want)
{
    setup_file(LOG_FORMAT_JSON, LOG_LEVEL_INFO, 0);
    log_info(LOG_FIELDS(LOG_DUR("took", ns)), "d");
    char *out = slurp();
    char exp[64];
    snprintf(exp, sizeof exp, "\"took\":\"%s\"}", want);
    cr_assert(strstr(out, exp), "%llu ns: %s", (unsigned long long)ns, out);
    free(out);
    done();
}

Test(json, durations_as_go_writes_them)
{
    assert_duration(0, "0s");
    assert_duration(750, "750ns");
    assert_duration(1500, "1.5\xc2\xb5s");
    assert_duration(3828422, "3.828422ms");
    assert_duration(100000000, "100ms");
    assert_duration(1000000000, "1s");
    assert_duration(1234567891, "1.234567891s");
    assert_duration(90000000000ull, "1m30s");
    assert_duration(3600000000000ull, "1h0m0s");
    assert_duration(3723500000000ull, "1h2m3.5s");
}

Test(config, parsers_take_etcds_values)
{
    enum log_format f;
    cr_assert_eq(log_parse_logger("zap", &f), 0);
    cr_assert_eq(f, LOG_FORMAT_JSON);
    cr_assert_eq(log_parse_logger("capnslog", &f), 0);
    cr_assert_eq(f, LOG_FORMAT_TEXT);
    cr_assert_eq(log_parse_logger("Zap", &f), -1);
    cr_assert_eq(log_parse_logger("", &f), -1);
    const char *names[] = {"debug", "info", "warn", "error", "panic", "fatal"};
    for (int i = 0; i < 6; i++) {
        enum log_level l;
        cr_assert_eq(log_parse_level(names[i], &l), 0);
        cr_assert_eq((int)l, i);
        cr_assert_str_eq(log_level_name(l), names[i]);
    }
    enum log_level l;
    cr_assert_eq(log_parse_level("warning", &l), -1);
    cr_assert_eq(log_parse_level("INFO", &l), -1);
}

Test(config, bad_outputs_are_refused_and_change_nothing)
{
    setup_file(LOG_FORMAT_JSON, LOG_LEVEL_INFO, 0);
    char err[256];
    cr_assert_eq(log_check_outputs("stderr,,stdout", err, sizeof err), -1);
    cr_assert(strstr(err, "empty"), "%s", err);
    cr_assert_eq(log_check_outputs("1,2,3,4,5,6,7,8,9", err, sizeof err), -1);
    cr_assert(strstr(err, "at most 8"), "%s", err);
    cr_assert_eq(log_check_outputs("default", err, sizeof err), 0);
    cr_assert_eq(log_check_outputs(NULL, err, sizeof err), 0);
    struct log_config c = {.outputs = "/nonexistent-dir/x.log", .level = LOG_LEVEL_ERROR};
    cr_assert_eq(log_configure(&c, err, sizeof err), -1);
    cr_assert(strstr(err, "cannot open /nonexistent-dir/x.log"), "%s", err);
    c = (struct log_config){.outputs = path, .max_line_bytes = 100};
    cr_assert_eq(log_configure(&c, err, sizeof err), -1);
    log_info(NULL, "still here"); /* the file, at info: the failed calls changed nothing */
    char *out = slurp();
    cr_assert(strstr(out, "still here"));
    free(out);
    done();
}

Test(config, two_files_get_every_line)
{
    char p2[64] = "/tmp/craft_log_test2_XXXXXX";
    int fd = mkstemp(p2);
    cr_assert(fd >= 0);
    close(fd);
    snprintf(path, sizeof path, "/tmp/craft_log_test_XXXXXX");
    fd = mkstemp(path);
    close(fd);
    char outs[160], err[256];
    snprintf(outs, sizeof outs, "%s,%s", path, p2);
    struct log_config c = {.outputs = outs};
    cr_assert_eq(log_configure(&c, err, sizeof err), 0, "%s", err);
    log_info(NULL, "both");
    char *a = slurp();
    snprintf(path, sizeof path, "%s", p2);
    char *b = slurp();
    cr_assert(strstr(a, "\"msg\":\"both\""));
    cr_assert_str_eq(a, b);
    free(a);
    free(b);
    done();
}

/* ---- rate limiting on a fake clock ---- */

static uint64_t fake_now;
static uint64_t fake_clock(void) { return fake_now; }

static void setup_limited(uint32_t burst, uint64_t interval_ms)
{
    setup_file(LOG_FORMAT_JSON, LOG_LEVEL_INFO, 0);
    struct log_config c = {.outputs = path, .repeat_burst = burst, .repeat_interval_ms = interval_ms,
                           .clock_ns = fake_clock};
    char err[256];
    cr_assert_eq(log_configure(&c, err, sizeof err), 0, "%s", err);
    fake_now = 1000000000;
}

static void peer_down(uint64_t peer, int i)
{
    log_warn_limited(peer, LOG_FIELDS(LOG_ID("remote-peer-id", peer)), "peer %llx unreachable (%d)",
                     (unsigned long long)peer, i);
}

Test(limit, burst_per_window_then_one_summary_with_the_count)
{
    setup_limited(3, 1000);
    for (int i = 0; i < 10; i++)
        peer_down(0xaa, i);
    char *out = slurp();
    cr_assert_eq(count_lines(out), 3, "%s", out);
    cr_assert(strstr(out, "unreachable (2)"));
    cr_assert_null(strstr(out, "unreachable (3)"));
    free(out);

    fake_now += 999 * 1000000ull; /* the window has not ended */
    log_flush_suppressed(false);
    out = slurp();
    cr_assert_eq(count_lines(out), 3);
    free(out);

    fake_now += 1000000; /* it has */
    log_flush_suppressed(false);
    log_flush_suppressed(false); /* the count is written once */
    log_flush_suppressed(true);
    out = slurp();
    cr_assert_eq(count_lines(out), 4, "%s", out);
    cr_assert(strstr(out, "\"msg\":\"peer aa unreachable (9) (suppressed 6 similar)\","
                          "\"suppressed\":6}\n"),
              "%s", out);
    free(out);
    done();
}

Test(limit, the_next_line_after_the_window_carries_the_count)
{
    setup_limited(2, 1000);
    for (int i = 0; i < 5; i++)
        peer_down(0xbb, i);
    fake_now += 2000000000ull;
    peer_down(0xbb, 5);
    peer_down(0xbb, 6);
    peer_down(0xbb, 7); /* suppressed again */
    char *out = slurp();
    cr_assert_eq(count_lines(out), 4, "%s", out);
    cr_assert(strstr(out, "\"msg\":\"peer bb unreachable (5) (suppressed 3 similar)\","
                          "\"suppressed\":3,\"remote-peer-id\":\"bb\"}\n"),
              "%s", out);
    cr_assert(strstr(out, "unreachable (6)\""));
    free(out);
    done();
}

Test(limit, keys_and_call_sites_are_limited_apart)
{
    setup_limited(1, 1000);
    for (int i = 0; i < 5; i++) {
        peer_down(1, i);
        peer_down(2, i);
        log_warn_limited(1, NULL, "another site"); /* same key, another line */
    }
    char *out = slurp();
    cr_assert_eq(count_lines(out), 3, "%s", out);
    cr_assert(strstr(out, "peer 1 unreachable (0)"));
    cr_assert(strstr(out, "peer 2 unreachable (0)"));
    cr_assert(strstr(out, "another site"));
    free(out);
    done();
}

Test(limit, more_keys_than_slots_evict_and_report_the_oldest)
{
    setup_limited(1, 1000);
    peer_down(0, 0);
    peer_down(0, 1); /* suppressed: pending on key 0 */
    for (uint64_t k = 1; k <= LOG_LIMIT_SLOTS; k++) {
        fake_now += 1; /* key 0 is the least recently used */
        peer_down(k, 0);
    }
    char *out = slurp();
    cr_assert(strstr(out, "\"msg\":\"peer 0 unreachable (1)\"}"), "the line held back, late: %s", out);
    cr_assert_eq(count_lines(out), 2 + LOG_LIMIT_SLOTS);
    free(out);
    done();
}

Test(limit, below_the_level_nothing_is_counted)
{
    setup_limited(1, 1000);
    struct log_config c = {.outputs = path, .level = LOG_LEVEL_ERROR, .repeat_burst = 1,
                           .repeat_interval_ms = 1000, .clock_ns = fake_clock};
    char err[256];
    cr_assert_eq(log_configure(&c, err, sizeof err), 0);
    for (int i = 0; i < 5; i++)
        peer_down(3, i);
    fake_now += 5000000000ull;
    log_flush_suppressed(false);
    char *out = slurp();
    cr_assert_str_eq(out, "");
    free(out);
    done();
}

/* ---- many threads ---- */

#define THREADS 8
#define PER_THREAD 400

static void *spam(void *arg)
{
    long t = (long)arg;
    char pad[300];
    memset(pad, 'a' + (int)t, sizeof pad - 1);
    pad[sizeof pad - 1] = '\0';
    for (int i = 0; i < PER_THREAD; i++)
        log_info(LOG_FIELDS(LOG_I64("t", t), LOG_I64("i", i)), "%s", pad);
    return NULL;
}

Test(threads, lines_never_interleave)
{
    setup_file(LOG_FORMAT_JSON, LOG_LEVEL_INFO, 0);
    pthread_t th[THREADS];
    for (long t = 0; t < THREADS; t++)
        pthread_create(&th[t], NULL, spam, (void *)t);
    for (int t = 0; t < THREADS; t++)
        pthread_join(th[t], NULL);
    char *out = slurp();
    cr_assert_eq(count_lines(out), THREADS * PER_THREAD);
    int seen[THREADS] = {0};
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
        cr_assert_eq(strncmp(line, "{\"level\":\"info\"", 15), 0, "%.80s", line);
        char *msg = strstr(line, "\"msg\":\"");
        cr_assert(msg);
        int t = msg[7] - 'a';
        cr_assert(t >= 0 && t < THREADS);
        cr_assert_eq(strspn(msg + 7, (char[]){(char)('a' + t), 0}), 299, "a mixed line: %.80s", msg);
        char want[64];
        snprintf(want, sizeof want, "\",\"t\":%d,\"i\":%d}", t, seen[t]);
        cr_assert(strstr(msg, want), "lines of one thread in order: %s", want);
        seen[t]++;
    }
    free(out);
    done();
}

Test(limit, flush_all_writes_counts_of_windows_still_open)
{
    setup_limited(1, 1000);
    for (int i = 0; i < 4; i++)
        peer_down(0xcc, i);
    fake_now += 1000; /* well inside the window */
    log_flush_suppressed(false);
    char *out = slurp();
    cr_assert_eq(count_lines(out), 1, "%s", out);
    free(out);
    log_flush_suppressed(true); /* at exit */
    out = slurp();
    cr_assert_eq(count_lines(out), 2, "%s", out);
    cr_assert(strstr(out, "peer cc unreachable (3) (suppressed 2 similar)"), "%s", out);
    free(out);
    done();
}

/* ---- every line is valid JSON, whatever the bytes: a small checker and random input ---- */

/* A JSON string at *p (RFC 8259: no raw control bytes, known escapes only, valid UTF-8). */
static bool json_string(const unsigned char **p)
{
    const unsigned char *s = *p;
    if (*s++ != '"')
        return false;
    for (;;) {
        unsigned char c = *s;
        if (c == '"')
            break;
        if (c < 0x20)
            return false;
        if (c == '\\') {
            s++;
            if (*s == 'u') {
                for (int i = 1; i <= 4; i++)
                    if (!strchr("0123456789abcdefABCDEF", s[i]) || !s[i])
                        return false;
                s += 5;
            } else if (*s && strchr("\"\\/bfnrt", *s)) {
                s++;
            } else {
                return false;
            }
            continue;
        }
        if (c < 0x80) {
            s++;
            continue;
        }
        size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
        if (c < 0xC2 || c > 0xF4)
            return false;
        unsigned cp = c & (0x7F >> need);
        for (size_t i = 1; i < need; i++) {
            if ((s[i] & 0xC0) != 0x80)
                return false;
            cp = cp << 6 | (s[i] & 0x3F);
        }
        if ((need == 3 && cp < 0x800) || (need == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        s += need;
    }
    *p = s + 1;
    return true;
}

/* One line: {"key":value,...} with string, integer or true/false values, then "\n" and the end. */
static bool json_line(const char *line)
{
    const unsigned char *p = (const unsigned char *)line;
    if (*p++ != '{')
        return false;
    for (bool first = true;; first = false) {
        if (*p == '}' && !first)
            break;
        if (!first && *p++ != ',')
            return false;
        if (!json_string(&p) || *p++ != ':')
            return false;
        if (*p == '"') {
            if (!json_string(&p))
                return false;
        } else if (!strncmp((const char *)p, "true", 4)) {
            p += 4;
        } else if (!strncmp((const char *)p, "false", 5)) {
            p += 5;
        } else {
            if (*p == '-')
                p++;
            if (*p < '0' || *p > '9')
                return false;
            while (*p >= '0' && *p <= '9')
                p++;
        }
    }
    return p[1] == '\n' && p[2] == '\0';
}

Test(json, random_bytes_and_lengths_always_give_valid_json_lines)
{
    /* The checker itself refuses what the logger must never write. */
    cr_assert(json_line("{\"a\":\"x\\u00e9\",\"n\":-1,\"b\":true}\n"));
    cr_assert_not(json_line("{\"a\":\"raw\nnewline\"}\n"));
    cr_assert_not(json_line("{\"a\":\"bad \xc0\xaf utf8\"}\n"));
    cr_assert_not(json_line("{\"a\":\"surrogate \xed\xa0\x80\"}\n"));
    cr_assert_not(json_line("{\"a\":\"split \\u00\"}\n"));
    cr_assert_not(json_line("{\"a\":\"x\"\n"));
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    for (int round = 0; round < 300; round++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        uint32_t max = LOG_LINE_MIN + (uint32_t)(seed >> 33) % 1200;
        setup_file(LOG_FORMAT_JSON, LOG_LEVEL_INFO, max);
        char msg[1500], val[300];
        size_t mlen = (seed >> 20) % sizeof msg, vlen = (seed >> 7) % sizeof val;
        for (size_t i = 0; i < mlen; i++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            msg[i] = (char)(1 + (seed >> 40) % 255); /* any byte but NUL */
        }
        msg[mlen] = '\0';
        for (size_t i = 0; i < vlen; i++)
            val[i] = msg[(i * 7) % (mlen ? mlen : 1)] ? msg[(i * 7) % (mlen ? mlen : 1)] : 'x';
        val[vlen] = '\0';
        log_info(LOG_FIELDS(LOG_STR("v", val), LOG_U64("n", round), LOG_I64("neg", -round),
                            LOG_BOOL("b", round & 1), LOG_DUR("d", seed >> 20)),
                 "%s", msg);
        char *out = slurp();
        cr_assert_leq(strlen(out), max, "round %d", round);
        cr_assert(json_line(out), "round %d (max %u): not valid JSON: %s", round, max, out);
        free(out);
        done();
    }
}
