/* log.c: the process-wide logger (see log.h). Everything, formatting included, happens under
 * one mutex: lines are few, and the static line buffer then needs no thread's stack. */
#include "log/log.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MSG_MAX LOG_LINE_MAX    /* a message is cut here before it is escaped */
#define SLOT_MSG 256            /* the last suppressed message kept per rate-limit slot */

struct slot {
    bool used;
    const char *file;
    int line;
    uint64_t key;
    uint64_t window_start, last_use; /* clock_ns */
    uint32_t count;                  /* lines written in the window */
    uint64_t suppressed;             /* lines not written since the last one written */
    enum log_level level;
    char msg[SLOT_MSG];              /* the last one suppressed */
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static _Atomic int min_level = LOG_LEVEL_INFO;

/* The configuration in force; mu. */
static enum log_format format = LOG_FORMAT_JSON;
static int fds[LOG_MAX_OUTPUTS] = {2};
static bool owned[LOG_MAX_OUTPUTS]; /* a file this module opened */
static size_t n_fds = 1;
static uint32_t max_line = LOG_DEFAULT_LINE_BYTES;
static uint64_t interval_ns = (uint64_t)LOG_DEFAULT_REPEAT_INTERVAL_MS * 1000000;
static uint32_t burst = LOG_DEFAULT_REPEAT_BURST;
static uint64_t (*clock_fn)(void);

static struct slot slots[LOG_LIMIT_SLOTS];
static char line_buf[LOG_LINE_MAX];
static char msg_buf[MSG_MAX];

/* ---- configuration ------------------------------------------------------------------------- */

int log_parse_logger(const char *v, enum log_format *out)
{
    if (!strcmp(v, "zap") || !strcmp(v, "json"))
        *out = LOG_FORMAT_JSON;
    else if (!strcmp(v, "capnslog") || !strcmp(v, "text"))
        *out = LOG_FORMAT_TEXT;
    else
        return -1;
    return 0;
}

static const char *const level_names[] = {"debug", "info", "warn", "error", "panic", "fatal"};

int log_parse_level(const char *v, enum log_level *out)
{
    for (int i = 0; i < (int)(sizeof level_names / sizeof level_names[0]); i++)
        if (!strcmp(v, level_names[i])) {
            *out = (enum log_level)i;
            return 0;
        }
    return -1;
}

const char *log_level_name(enum log_level l)
{
    return l >= LOG_LEVEL_DEBUG && l <= LOG_LEVEL_FATAL ? level_names[l] : "unknown";
}

/* Calls fn for each comma-separated output of v; stops at the first nonzero return. */
static int each_output(const char *v, int (*fn)(void *arg, const char *name, size_t len), void *arg)
{
    if (!v || !*v)
        v = "default";
    for (;;) {
        size_t n = strcspn(v, ",");
        int rc = fn(arg, v, n);
        if (rc)
            return rc;
        if (!v[n])
            return 0;
        v += n + 1;
    }
}

struct check {
    size_t n;
    char *err;
    size_t errlen;
};

static bool is_std(const char *name, size_t len, const char *what)
{
    return strlen(what) == len && !strncmp(name, what, len);
}

static int check_one(void *arg, const char *name, size_t len)
{
    struct check *c = arg;
    (void)name;
    if (len == 0) {
        snprintf(c->err, c->errlen, "--log-outputs: an empty output (want default, stderr, stdout "
                                    "or file paths, comma-separated)");
        return -1;
    }
    if (len >= 4096) {
        snprintf(c->err, c->errlen, "--log-outputs: a path is too long");
        return -1;
    }
    if (++c->n > LOG_MAX_OUTPUTS) {
        snprintf(c->err, c->errlen, "--log-outputs: at most %d outputs", LOG_MAX_OUTPUTS);
        return -1;
    }
    return 0;
}

int log_check_outputs(const char *outputs, char *err, size_t errlen)
{
    struct check c = {0, err, errlen};
    return each_output(outputs, check_one, &c);
}

struct opening {
    int fds[LOG_MAX_OUTPUTS];
    bool owned[LOG_MAX_OUTPUTS];
    size_t n;
    char *err;
    size_t errlen;
};

static int open_one(void *arg, const char *name, size_t len)
{
    struct opening *o = arg;
    int fd;
    bool own = false;
    if (is_std(name, len, "default") || is_std(name, len, "stderr"))
        fd = 2;
    else if (is_std(name, len, "stdout"))
        fd = 1;
    else {
        char path[4096];
        snprintf(path, sizeof path, "%.*s", (int)len, name);
        fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd < 0) {
            snprintf(o->err, o->errlen, "--log-outputs: cannot open %s: %s", path, strerror(errno));
            return -1;
        }
        own = true;
    }
    for (size_t i = 0; i < o->n; i++)
        if (!own && o->fds[i] == fd)
            return 0; /* stderr named twice: one copy of each line */
    o->fds[o->n] = fd;
    o->owned[o->n] = own;
    o->n++;
    return 0;
}

static void close_owned(const int *f, const bool *own, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (own[i])
            close(f[i]);
}

int log_configure(const struct log_config *c, char *err, size_t errlen)
{
    if (c->max_line_bytes && (c->max_line_bytes < LOG_LINE_MIN || c->max_line_bytes > LOG_LINE_MAX)) {
        snprintf(err, errlen, "max line bytes %u: want %d to %d", c->max_line_bytes, LOG_LINE_MIN,
                 LOG_LINE_MAX);
        return -1;
    }
    if (log_check_outputs(c->outputs, err, errlen) != 0)
        return -1;
    struct opening o = {.err = err, .errlen = errlen};
    if (each_output(c->outputs, open_one, &o) != 0) {
        close_owned(o.fds, o.owned, o.n);
        return -1;
    }
    pthread_mutex_lock(&mu);
    int old_fds[LOG_MAX_OUTPUTS];
    bool old_owned[LOG_MAX_OUTPUTS];
    size_t old_n = n_fds;
    memcpy(old_fds, fds, sizeof fds);
    memcpy(old_owned, owned, sizeof owned);
    memcpy(fds, o.fds, sizeof fds);
    memcpy(owned, o.owned, sizeof owned);
    n_fds = o.n;
    format = c->format;
    max_line = c->max_line_bytes ? c->max_line_bytes : LOG_DEFAULT_LINE_BYTES;
    interval_ns = (c->repeat_interval_ms ? c->repeat_interval_ms : LOG_DEFAULT_REPEAT_INTERVAL_MS) *
                  1000000ull;
    burst = c->repeat_burst ? c->repeat_burst : LOG_DEFAULT_REPEAT_BURST;
    clock_fn = c->clock_ns;
    atomic_store_explicit(&min_level, (int)c->level, memory_order_relaxed);
    pthread_mutex_unlock(&mu);
    close_owned(old_fds, old_owned, old_n);
    return 0;
}

void log_reset(void)
{
    struct log_config def = {.format = LOG_FORMAT_JSON, .level = LOG_LEVEL_INFO};
    char err[64];
    log_configure(&def, err, sizeof err); /* stderr only: cannot fail */
    pthread_mutex_lock(&mu);
    memset(slots, 0, sizeof slots);
    pthread_mutex_unlock(&mu);
}

bool log_enabled(enum log_level l)
{
    return (int)l >= atomic_load_explicit(&min_level, memory_order_relaxed);
}

/* ---- building a line ------------------------------------------------------------------------ */

/* The line being built in line_buf. `budget` is where content must stop so that the ending
 * (truncation mark, closing and newline) still fits. */
struct line {
    char *p;
    size_t len, budget;
    bool json, trunc;
};

static bool put(struct line *l, const char *s, size_t n)
{
    if (l->len + n > l->budget) {
        l->trunc = true;
        return false;
    }
    memcpy(l->p + l->len, s, n);
    l->len += n;
    return true;
}

/* Length of the valid UTF-8 sequence at s (n bytes left), or 0 when s[0] does not start one. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t need;
    unsigned char lo = 0x80, hi = 0xBF; /* the second byte's range */
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        need = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0)
            lo = 0xA0; /* no overlong forms */
        else if (c == 0xED)
            hi = 0x9F; /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F; /* nothing above U+10FFFF */
    } else
        return 0;
    if (n < need || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < need; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    return need;
}

/* Appends s[0..n) escaped, without quotes: JSON's escapes (invalid UTF-8 as U+FFFD), or in text
 * \xNN for control bytes and invalid UTF-8. Stops (trunc) at the first piece that does not fit,
 * so an escape is never split. */
static bool put_escaped(struct line *l, const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        char esc[8];
        const char *piece = esc;
        size_t plen, adv = 1;
        if (c >= 0x20 && c < 0x7F && !(l->json && (c == '"' || c == '\\'))) {
            size_t j = i; /* a run of plain ASCII at once */
            while (j < n && s[j] >= 0x20 && s[j] < 0x7F && !(l->json && (s[j] == '"' || s[j] == '\\')))
                j++;
            if (!put(l, str + i, j - i)) {
                /* as much of the run as fits */
                size_t room = l->budget - l->len;
                memcpy(l->p + l->len, str + i, room);
                l->len += room;
                return false;
            }
            i = j;
            continue;
        }
        if (c >= 0x80 && (plen = utf8_len(s + i, n - i)) > 0) {
            piece = str + i;
            adv = plen;
        } else if (l->json) {
            switch (c) {
            case '"': piece = "\\\""; break;
            case '\\': piece = "\\\\"; break;
            case '\n': piece = "\\n"; break;
            case '\r': piece = "\\r"; break;
            case '\t': piece = "\\t"; break;
            case '\b': piece = "\\b"; break;
            case '\f': piece = "\\f"; break;
            default:
                if (c >= 0x80)
                    piece = "\\ufffd";
                else
                    snprintf(esc, sizeof esc, "\\u%04x", c);
            }
            plen = strlen(piece);
        } else {
            snprintf(esc, sizeof esc, "\\x%02x", c);
            plen = 4;
        }
        if (!put(l, piece, plen))
            return false;
        i += adv;
    }
    return true;
}

/* A JSON string value (quoted), or in text the bare escaped text. 1: written whole; 0: cut, ending
 * with the truncation mark (the budget keeps room for it and the closing quote); -1: nothing
 * written (not even the opening quote fits). A string given as `cut` gets the mark anyway. */
static int put_string(struct line *l, const char *s, size_t n, bool cut)
{
    if (l->json && !put(l, "\"", 1))
        return -1;
    bool whole = put_escaped(l, s, n) && !cut;
    if (!whole) {
        l->trunc = true;
        memcpy(l->p + l->len, LOG_TRUNCATED_MARK, strlen(LOG_TRUNCATED_MARK));
        l->len += strlen(LOG_TRUNCATED_MARK);
    }
    if (l->json)
        l->p[l->len++] = '"';
    return whole ? 1 : 0;
}

/* Go's time.Duration text: "0s", "750ns", "1.5µs", "3.828422ms", "1.5s", "1m30s", "1h0m0s". */
static void duration_text(uint64_t ns, char *out, size_t len)
{
    if (ns == 0) {
        snprintf(out, len, "0s");
        return;
    }
    const char *unit;
    uint64_t scale;
    int digits;
    char prefix[48] = "";
    if (ns < 1000) {
        snprintf(out, len, "%" PRIu64 "ns", ns);
        return;
    } else if (ns < 1000000) {
        unit = "\xc2\xb5s", scale = 1000, digits = 3;
    } else if (ns < 1000000000) {
        unit = "ms", scale = 1000000, digits = 6;
    } else {
        uint64_t secs = ns / 1000000000;
        if (secs >= 3600)
            snprintf(prefix, sizeof prefix, "%" PRIu64 "h%" PRIu64 "m", secs / 3600, secs / 60 % 60);
        else if (secs >= 60)
            snprintf(prefix, sizeof prefix, "%" PRIu64 "m", secs / 60);
        ns -= (secs - secs % 60) * 1000000000;
        unit = "s", scale = 1000000000, digits = 9;
    }
    uint64_t whole = ns / scale, frac = ns % scale;
    char f[16] = "";
    if (frac) {
        snprintf(f, sizeof f, ".%0*" PRIu64, digits, frac);
        size_t k = strlen(f);
        while (f[k - 1] == '0')
            f[--k] = '\0';
    }
    snprintf(out, len, "%s%" PRIu64 "%s%s", prefix, whole, f, unit);
}

/* One field: JSON ,"key":value or text " key=value". Rolled back whole when its key or a number
 * does not fit; a string value that does not fit is cut with the mark. False when the line is
 * full. */
static bool put_field(struct line *l, const struct log_field *f)
{
    size_t start = l->len;
    char num[128];
    const char *text = num; /* a value written as a string */
    bool quoted = true;
    switch (f->kind) {
    case LOG_FIELD_STR: text = f->s ? f->s : ""; break;
    case LOG_FIELD_ID: snprintf(num, sizeof num, "%" PRIx64, f->u); break;
    case LOG_FIELD_DUR: duration_text(f->u, num, sizeof num); break;
    case LOG_FIELD_U64: snprintf(num, sizeof num, "%" PRIu64, f->u), quoted = false; break;
    case LOG_FIELD_I64: snprintf(num, sizeof num, "%" PRId64, f->i), quoted = false; break;
    case LOG_FIELD_BOOL: snprintf(num, sizeof num, "%s", f->b ? "true" : "false"), quoted = false; break;
    }
    bool ok = l->json ? put(l, ",", 1) && put_string(l, f->key, strlen(f->key), false) == 1 &&
                            put(l, ":", 1)
                      : put(l, " ", 1) && put_escaped(l, f->key, strlen(f->key)) && put(l, "=", 1);
    if (ok && !quoted) {
        if (put(l, num, strlen(num)))
            return true;
    } else if (ok && !l->json && !*text) {
        if (put(l, "\"\"", 2))
            return true;
    } else if (ok) {
        int rc = put_string(l, text, strlen(text), false);
        if (rc >= 0)
            return rc == 1;
    }
    l->len = start;
    l->trunc = true;
    return false;
}

static const char level_letter[] = {'D', 'I', 'W', 'E', 'C', 'C'}; /* capnslog's letters */

/* mu held. Formats one line into line_buf; returns its length (newline included). msg is
 * msg_buf (room to append the suppressed count). */
static size_t format_line(enum log_level level, const char *file, int line_no,
                          const struct log_field *fields, bool msg_cut, uint64_t suppressed)
{
    struct line l = {.p = line_buf, .json = format == LOG_FORMAT_JSON};
    const char *tail = l.json ? ",\"truncated\":true}" : "";
    size_t mark = strlen(LOG_TRUNCATED_MARK);
    l.budget = max_line - (mark + (l.json ? 1 : 0) + strlen(tail) + 1);

    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);
    char when[40], head[128], caller[160];
    strftime(when, sizeof when, l.json ? "%Y-%m-%dT%H:%M:%S" : "%Y-%m-%d %H:%M:%S", &tm);
    if (l.json)
        snprintf(head, sizeof head, "{\"level\":\"%s\",\"ts\":\"%s.%03ldZ\",\"caller\":",
                 log_level_name(level), when, now.tv_nsec / 1000000);
    else
        snprintf(head, sizeof head, "%s.%06ld %c | ", when, now.tv_nsec / 1000, level_letter[level]);
    /* gRPC's files arrive with its source tree's path: keep from "src/" on. At most 120 bytes of
     * path, so the head, caller and the start of msg always fit in LOG_LINE_MIN. */
    const char *src = strstr(file, "/src/");
    snprintf(caller, sizeof caller, "%.120s:%d", src ? src + 1 : file, line_no);
    size_t mlen = strlen(msg_buf);
    if (suppressed && !msg_cut) {
        int n = snprintf(msg_buf + mlen, sizeof msg_buf - mlen, " (suppressed %" PRIu64 " similar)",
                         suppressed);
        if (n > 0 && (size_t)n < sizeof msg_buf - mlen)
            mlen += (size_t)n;
        else
            msg_buf[mlen] = '\0';
    }

    bool ok = put(&l, head, strlen(head));
    if (l.json)
        ok = ok && put_string(&l, caller, strlen(caller), false) >= 0 && put(&l, ",\"msg\":", 7) &&
             put_string(&l, msg_buf, mlen, msg_cut) == 1;
    else
        ok = ok && put_escaped(&l, caller, strlen(caller)) && put(&l, ": ", 2) &&
             put_string(&l, msg_buf, mlen, msg_cut) == 1;
    if (ok && suppressed) {
        struct log_field f = LOG_U64("suppressed", suppressed);
        ok = put_field(&l, &f);
    }
    for (const struct log_field *f = fields; ok && f && f->key; f++)
        ok = put_field(&l, f);
    if (!l.trunc && ok) {
        if (l.json)
            l.p[l.len++] = '}';
    } else if (l.json) {
        memcpy(l.p + l.len, tail, strlen(tail));
        l.len += strlen(tail);
    } else if (l.len < mark || memcmp(l.p + l.len - mark, LOG_TRUNCATED_MARK, mark) != 0) {
        memcpy(l.p + l.len, LOG_TRUNCATED_MARK, mark);
        l.len += mark;
    }
    l.p[l.len++] = '\n';
    return l.len;
}

/* mu held. */
static void write_line(size_t len)
{
    for (size_t i = 0; i < n_fds; i++) {
        size_t off = 0;
        while (off < len) {
            ssize_t n = write(fds[i], line_buf + off, len - off);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break; /* nowhere to report it */
            off += (size_t)n;
        }
    }
}

/* mu held. Formats the message into msg_buf; true when it was cut. */
static bool format_msg(const char *fmt, va_list ap)
{
    int n = vsnprintf(msg_buf, sizeof msg_buf, fmt, ap);
    if (n < 0) {
        snprintf(msg_buf, sizeof msg_buf, "(unformattable message: %s)", fmt);
        return false;
    }
    return (size_t)n >= sizeof msg_buf;
}

void log_emit(enum log_level level, const char *file, int line, const struct log_field *fields,
              const char *fmt, ...)
{
    if (!log_enabled(level))
        return;
    int saved = errno; /* callers may log between a failure and reading errno */
    pthread_mutex_lock(&mu);
    va_list ap;
    va_start(ap, fmt);
    bool cut = format_msg(fmt, ap);
    va_end(ap);
    write_line(format_line(level, file, line, fields, cut, 0));
    pthread_mutex_unlock(&mu);
    errno = saved;
}

/* ---- rate limiting ------------------------------------------------------------------------ */

static uint64_t now_ns(void)
{
    if (clock_fn)
        return clock_fn();
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000 + (uint64_t)ts.tv_nsec;
}

/* mu held. Writes the last line held back (its message, level and caller; its fields are not
 * kept) with the count of the others, and starts a new window: every line held back is then
 * either written or counted, once. */
static void write_summary(struct slot *s, uint64_t now)
{
    size_t n = strlen(s->msg);
    bool cut = n == SLOT_MSG - 1;
    snprintf(msg_buf, sizeof msg_buf, "%s", s->msg);
    write_line(format_line(s->level, s->file, s->line, NULL, cut, s->suppressed - 1));
    s->suppressed = 0;
    s->window_start = now;
    s->count = 1;
}

/* mu held. The slot of (file, line, key), taken (the least recently used one evicted, its
 * pending count written first) when it has none. */
static struct slot *slot_get(const char *file, int line, uint64_t key, uint64_t now)
{
    struct slot *free_slot = NULL, *lru = NULL;
    for (size_t i = 0; i < LOG_LIMIT_SLOTS; i++) {
        struct slot *s = &slots[i];
        if (!s->used) {
            if (!free_slot)
                free_slot = s;
            continue;
        }
        if (s->line == line && s->key == key && (s->file == file || !strcmp(s->file, file)))
            return s;
        if (!lru || s->last_use < lru->last_use)
            lru = s;
    }
    struct slot *s = free_slot;
    if (!s) {
        s = lru;
        if (s->suppressed)
            write_summary(s, now);
    }
    memset(s, 0, sizeof *s);
    s->used = true;
    s->file = file;
    s->line = line;
    s->key = key;
    s->window_start = now;
    return s;
}

void log_emit_limited(enum log_level level, const char *file, int line, uint64_t key,
                      const struct log_field *fields, const char *fmt, ...)
{
    if (!log_enabled(level))
        return;
    int saved = errno;
    pthread_mutex_lock(&mu);
    uint64_t now = now_ns();
    struct slot *s = slot_get(file, line, key, now);
    s->last_use = now;
    if (now - s->window_start >= interval_ns) {
        s->window_start = now;
        s->count = 0;
    }
    va_list ap;
    va_start(ap, fmt);
    bool cut = format_msg(fmt, ap);
    va_end(ap);
    if (s->count < burst) {
        s->count++;
        uint64_t pending = s->suppressed;
        s->suppressed = 0;
        write_line(format_line(level, file, line, fields, cut, pending));
    } else {
        s->suppressed++;
        s->level = level;
        size_t n = strnlen(msg_buf, sizeof s->msg - 1);
        memcpy(s->msg, msg_buf, n);
        s->msg[n] = '\0';
    }
    pthread_mutex_unlock(&mu);
    errno = saved;
}

void log_flush_suppressed(bool all)
{
    pthread_mutex_lock(&mu);
    uint64_t now = now_ns();
    for (size_t i = 0; i < LOG_LIMIT_SLOTS; i++) {
        struct slot *s = &slots[i];
        if (s->used && s->suppressed && (all || now - s->window_start >= interval_ns) &&
            log_enabled(s->level))
            write_summary(s, now);
    }
    pthread_mutex_unlock(&mu);
}
