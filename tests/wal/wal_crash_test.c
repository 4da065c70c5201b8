/* Crash simulation: a log is written once, then copies of it are cut, bit-flipped, zeroed or
 * stripped of segments, and reopened. Recovery must return exactly the entries that survive
 * intact when the damage is at the tail, and an error naming the file otherwise. Truncation,
 * compaction and reset are stopped after every step and reopened; reset also fails at every I/O
 * call. All randomness is seeded. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "raft/wal/wal.h"
#include "tests/wal/wal_test_util.h"

#define SEG_SIZE 4096
#define MAX_ENTRIES 512
#define MAX_SEGS 64

static char *root, *src;
static uint32_t lens[MAX_ENTRIES + 1];
static uint64_t terms[MAX_ENTRIES + 1];
static uint64_t n_entries;

/* Layout of the pristine log, read back with the decoder. */
struct seg_layout {
    char name[32];
    uint64_t first, count;
    size_t offs[MAX_ENTRIES + 1]; /* offs[count] = end of data */
};
static struct seg_layout segs[MAX_SEGS];
static size_t n_segs;

static void opts(struct wal_options *o)
{
    wal_options_init(o);
    o->segment_size = SEG_SIZE;
    o->log = tu_quiet_log;
}

static int layout_record(void *arg, const struct raft_entry *e, size_t off)
{
    struct seg_layout *s = arg;
    s->offs[e->index - s->first] = off;
    return 0;
}

static void read_layout(const char *dir)
{
    char **names;
    n_segs = tu_segments(dir, &names);
    cr_assert(n_segs >= 4 && n_segs <= MAX_SEGS, "%zu segments", n_segs);
    for (size_t i = 0; i < n_segs; i++) {
        struct seg_layout *s = &segs[i];
        snprintf(s->name, sizeof s->name, "%s", names[i]);
        s->first = strtoull(names[i], NULL, 10);
        char *p = tu_path(dir, names[i]);
        int fd = open(p, O_RDONLY);
        long size = tu_file_size(p);
        uint8_t *buf = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
        struct wal_decode_result res;
        char err[256];
        cr_assert_eq(wal_segment_decode(buf, (size_t)size, p, s->first, i + 1 == n_segs,
                                        layout_record, s, &res, err, sizeof err),
                     0, "%s", err);
        s->count = res.count;
        s->offs[s->count] = res.end;
        munmap(buf, (size_t)size);
        close(fd);
        free(p);
    }
    tu_free_names(names, n_segs);
}

/* The pristine log: writes of 1 to 3 entries, each made durable before the next. */
static void setup(void)
{
    root = tu_mkdtemp();
    src = tu_path(root, "src");
    struct wal_options o;
    opts(&o);
    struct wal *w = tu_open(src, &o);
    uint64_t rng = 20261122;
    n_entries = 0;
    while (n_entries < 160) {
        struct raft_entry e[3];
        int k = 1 + (int)(tu_rand(&rng) % 3);
        for (int j = 0; j < k; j++) {
            uint64_t i = ++n_entries;
            lens[i] = (uint32_t)(tu_rand(&rng) % 200);
            terms[i] = 1 + i / 40;
            tu_entry(&e[j], i, terms[i], lens[i], 0);
        }
        cr_assert_eq(wal_append(w, e, (size_t)k), 0, "%s", wal_errmsg());
        cr_assert_eq(wal_wait_durable(w, n_entries), 0);
        for (int j = 0; j < k; j++)
            free(e[j].data);
    }
    wal_close(w);
    read_layout(src);
}

static void teardown(void)
{
    tu_rmtree(root);
    free(root);
    free(src);
}

TestSuite(crash, .init = setup, .fini = teardown, .timeout = 60);

/* A fresh copy of the pristine log. */
static char *copy(void)
{
    static int n;
    char name[32];
    snprintf(name, sizeof name, "c%d", n++);
    char *d = tu_path(root, name);
    tu_copytree(src, d);
    return d;
}

static char *seg_path(const char *dir, size_t s)
{
    return tu_path(dir, segs[s].name);
}

/* Opens dir and checks it holds exactly entries 1..last, then that the log accepts a new entry
 * and keeps it across another reopen. */
static void expect_prefix(const char *dir, uint64_t last, const char *what)
{
    struct wal_options o;
    opts(&o);
    struct wal *w;
    char err[1024] = "";
    int rc = wal_open(&w, dir, &o, err, sizeof err);
    cr_assert_eq(rc, 0, "%s: open failed: %s", what, err);
    cr_assert_eq(wal_last_index(w), last, "%s: last %llu, want %llu", what,
                 (unsigned long long)wal_last_index(w), (unsigned long long)last);
    for (uint64_t i = 1; i <= last; i++)
        tu_expect_entry(w, i, terms[i], lens[i], 0);
    tu_append_sync(w, last + 1, 99, 17, 5);
    wal_close(w);
    w = tu_open(dir, &o);
    cr_assert_eq(wal_last_index(w), last + 1, "%s: the repaired log lost the new entry", what);
    tu_expect_entry(w, last + 1, 99, 17, 5);
    wal_close(w);
}

static void expect_error(const char *dir, const char *needle, const char *what)
{
    struct wal_options o;
    opts(&o);
    struct wal *w;
    char err[1024] = "";
    int rc = wal_open(&w, dir, &o, err, sizeof err);
    cr_assert_neq(rc, 0, "%s: open succeeded with last %llu", what,
                  rc == 0 ? (unsigned long long)wal_last_index(w) : 0ull);
    cr_assert_null(w);
    cr_assert(strstr(err, needle), "%s: error \"%s\" does not mention \"%s\"", what, err,
              needle);
}

/* Entries of segment s wholly below byte `cut`. */
static uint64_t records_before(size_t s, size_t cut)
{
    uint64_t k = 0;
    while (k < segs[s].count && segs[s].offs[k + 1] <= cut)
        k++;
    return k;
}

/* What a cut of segment s at `cut` must recover to; returns 0 when it must fail. */
static int cut_outcome(size_t s, size_t cut, uint64_t *last)
{
    if (cut < WAL_SEG_HEADER_SIZE)
        return 0;
    uint64_t k = records_before(s, cut);
    if (s + 1 < n_segs) {
        *last = n_entries;
        return k == segs[s].count; /* only zeros were cut */
    }
    *last = segs[s].first + k - 1;
    return 1;
}

static void check_cut(size_t s, size_t cut)
{
    char what[128];
    snprintf(what, sizeof what, "cut %.40s at %zu", segs[s].name, cut);
    char *d = copy(), *p = seg_path(d, s);
    tu_truncate(p, (long)cut);
    uint64_t last;
    if (cut_outcome(s, cut, &last))
        expect_prefix(d, last, what);
    else
        expect_error(d, segs[s].name, what);
    free(p);
    tu_rmtree(d);
    free(d);
}

Test(crash, cut_at_every_record_boundary)
{
    for (size_t s = 0; s < n_segs; s++) {
        check_cut(s, 0);
        check_cut(s, 17);
        for (uint64_t k = 0; k <= segs[s].count; k++)
            check_cut(s, segs[s].offs[k]);
    }
}

Test(crash, cut_at_random_offsets)
{
    uint64_t rng = 7;
    for (int i = 0; i < 150; i++) {
        size_t s = (size_t)(tu_rand(&rng) % n_segs);
        if (i % 2)
            s = n_segs - 1; /* the interesting case: half the cuts hit the newest segment */
        check_cut(s, (size_t)(tu_rand(&rng) % (segs[s].offs[segs[s].count] + 64)));
    }
}

Test(crash, flip_random_bits)
{
    uint64_t rng = 99;
    for (int i = 0; i < 200; i++) {
        size_t s = (size_t)(tu_rand(&rng) % n_segs);
        if (i % 2)
            s = n_segs - 1;
        size_t end = segs[s].offs[segs[s].count];
        size_t range = end + 200 < SEG_SIZE ? end + 200 : SEG_SIZE;
        size_t off = (size_t)(tu_rand(&rng) % range);
        int bit = (int)(tu_rand(&rng) % 8);
        char what[128];
        snprintf(what, sizeof what, "flip bit %d of %.40s at %zu", bit, segs[s].name, off);
        char *d = copy(), *p = seg_path(d, s);
        tu_flip_bit(p, (long)off, bit);
        int is_last = s + 1 == n_segs;
        if (off < WAL_SEG_HEADER_SIZE) {
            expect_error(d, segs[s].name, what);
        } else if (off >= end) {
            /* Garbage after the last record: the tail of a write that never completed in the
             * newest segment; never written by this WAL in an older one. */
            if (is_last) {
                int before = tu_notice_count;
                expect_prefix(d, n_entries, what);
                cr_assert(tu_notice_count > before, "%s: the discarded tail was not reported",
                          what);
            } else {
                expect_error(d, segs[s].name, what);
            }
        } else {
            uint64_t r = records_before(s, off); /* the damaged record */
            if (is_last && r + 1 == segs[s].count) {
                expect_prefix(d, segs[s].first + r - 1, what); /* checksum-failing last record */
            } else {
                char needle[64];
                snprintf(needle, sizeof needle, "%.30s: offset %zu", segs[s].name, segs[s].offs[r]);
                expect_error(d, needle, what);
            }
        }
        free(p);
        tu_rmtree(d);
        free(d);
    }
}

Test(crash, deleted_segments)
{
    for (size_t s = 0; s < n_segs; s++) {
        char *d = copy(), *p = seg_path(d, s);
        cr_assert_eq(unlink(p), 0);
        char what[64];
        snprintf(what, sizeof what, "delete %.40s", segs[s].name);
        if (s + 1 < n_segs)
            expect_error(d, "missing", what);
        else
            /* Indistinguishable from a crash before the segment was created: see docs/wal.md. */
            expect_prefix(d, segs[s].first - 1, what);
        free(p);
        tu_rmtree(d);
        free(d);
    }
    /* All segments gone while the marker remains. */
    char *d = copy();
    for (size_t s = 0; s < n_segs; s++) {
        char *p = seg_path(d, s);
        unlink(p);
        free(p);
    }
    expect_error(d, "missing", "all segments deleted");
    tu_rmtree(d);
    free(d);
}

Test(crash, leftover_temporary_files_are_removed)
{
    char *d = copy();
    char *p = tu_path(d, "00000000000000009999.seg.tmp");
    int fd = open(p, O_CREAT | O_WRONLY, 0600);
    cr_assert_eq(write(fd, "junk", 4), 4);
    close(fd);
    expect_prefix(d, n_entries, "leftover tmp");
    cr_assert_neq(access(p, F_OK), 0, "the temporary file is still there");
    free(p);
    tu_rmtree(d);
    free(d);
}

/* ---- torn multi-record writes ---- */

/* A log whose last write holds many records spanning several sectors. */
static char *torn_log(size_t *write_start, size_t *write_end, uint64_t *first_of_write)
{
    char *d = tu_path(root, "torn");
    struct wal_options o;
    wal_options_init(&o);
    o.segment_size = 65536;
    o.log = tu_quiet_log;
    struct wal *w = tu_open(d, &o);
    for (uint64_t i = 1; i <= 20; i++) {
        terms[i] = 1;
        lens[i] = 150;
        tu_append_sync(w, i, 1, 150, 0);
    }
    struct raft_entry e[20];
    for (int k = 0; k < 20; k++) {
        terms[21 + k] = 1;
        lens[21 + k] = 150;
        tu_entry(&e[k], 21 + (uint64_t)k, 1, 150, 0);
    }
    cr_assert_eq(wal_append(w, e, 20), 0);
    cr_assert_eq(wal_wait_durable(w, 40), 0);
    for (int k = 0; k < 20; k++)
        free(e[k].data);
    wal_close(w);
    *first_of_write = 21;
    *write_start = WAL_SEG_HEADER_SIZE + 20 * (WAL_REC_HEADER_SIZE + 150);
    *write_end = *write_start + 20 * (WAL_REC_HEADER_SIZE + 150);
    return d;
}

static uint64_t record_at_offset(size_t off) /* index of the record covering off in torn_log */
{
    return 1 + (off - WAL_SEG_HEADER_SIZE) / (WAL_REC_HEADER_SIZE + 150);
}

Test(crash, torn_sector_inside_the_last_write_is_cut)
{
    size_t ws, we;
    uint64_t f;
    char *d = torn_log(&ws, &we, &f);
    n_entries = 40;
    static const uint8_t zero[512];
    size_t block = (ws + 1024) / 512 * 512; /* a sector in the middle of the last write */
    char *p = tu_path(d, "00000000000000000001.seg");
    tu_write_at(p, (long)block, zero, 512);
    expect_prefix(d, record_at_offset(block) - 1, "zeroed sector in the last write");
    free(p);
    tu_rmtree(d);
    free(d);
}

Test(crash, zeroed_sector_in_an_earlier_write_is_an_error)
{
    size_t ws, we;
    uint64_t f;
    char *d = torn_log(&ws, &we, &f);
    static const uint8_t zero[512];
    char *p = tu_path(d, "00000000000000000001.seg");
    tu_write_at(p, 1024, zero, 512); /* inside entries 1..20, each its own write */
    size_t bad = WAL_SEG_HEADER_SIZE + (record_at_offset(1024) - 1) * (WAL_REC_HEADER_SIZE + 150);
    char needle[64];
    snprintf(needle, sizeof needle, "offset %zu", bad);
    expect_error(d, needle, "zeroed sector before a later write");
    expect_error(d, "later write", "zeroed sector before a later write");
    free(p);
    tu_rmtree(d);
    free(d);
}

Test(crash, bit_flip_inside_the_last_write_is_an_error)
{
    size_t ws, we;
    uint64_t f;
    char *d = torn_log(&ws, &we, &f);
    char *p = tu_path(d, "00000000000000000001.seg");
    tu_flip_bit(p, (long)(ws + 700), 3); /* acknowledged records of the same write follow */
    expect_error(d, "checksum mismatch", "bit flip in the last write");
    free(p);
    tu_rmtree(d);
    free(d);
}

/* ---- truncation and compaction stopped at each step ---- */

static int stop_at;
static int steps_seen;

static int step_hook(void *arg, const char *op, int step)
{
    (void)arg;
    (void)op;
    steps_seen++;
    return step >= stop_at;
}

static void check_log_matches(struct wal *w, uint64_t first, uint64_t last, const char *what)
{
    cr_assert_eq(wal_first_index(w), first, "%s: first %llu", what,
                 (unsigned long long)wal_first_index(w));
    cr_assert(wal_last_index(w) >= last, "%s", what);
    for (uint64_t i = first; i <= last; i++)
        tu_expect_entry(w, i, terms[i], lens[i], 0);
}

Test(crash, truncation_stopped_at_every_step)
{
    /* Cut inside the second segment: later segments are deleted, the second is shortened. */
    uint64_t cut = segs[1].first + segs[1].count / 2;
    int completed = 0;
    for (stop_at = 0; !completed && stop_at < 64; stop_at++) {
        char what[64];
        snprintf(what, sizeof what, "truncate stopped at step %d", stop_at);
        char *d = copy();
        struct wal_options o;
        opts(&o);
        o.step_hook = step_hook;
        struct wal *w = tu_open(d, &o);
        int rc = wal_truncate_suffix(w, cut);
        completed = rc == 0;
        cr_assert(rc == 0 || rc == -EINTR, "%s: rc %d %s", what, rc, wal_errmsg());
        wal_close(w);

        opts(&o);
        w = tu_open(d, &o);
        uint64_t last = wal_last_index(w);
        cr_assert(last >= cut - 1 && last <= n_entries, "%s: last %llu", what,
                  (unsigned long long)last);
        if (completed)
            cr_assert_eq(last, cut - 1, "%s", what);
        check_log_matches(w, 1, last, what);
        /* Finish the job and continue, as the node would after restarting. */
        cr_assert_eq(wal_truncate_suffix(w, cut), 0, "%s", wal_errmsg());
        tu_append_sync(w, cut, 50, 9, 1);
        wal_close(w);
        w = tu_open(d, &o);
        cr_assert_eq(wal_last_index(w), cut, "%s", what);
        check_log_matches(w, 1, cut - 1, what);
        tu_expect_entry(w, cut, 50, 9, 1);
        wal_close(w);
        tu_rmtree(d);
        free(d);
    }
    cr_assert(completed && stop_at > 3, "truncation has several steps (%d)", stop_at);
}

Test(crash, compaction_stopped_at_every_step)
{
    uint64_t upto = segs[3].first + 1; /* drops segments 0..2 */
    int completed = 0;
    for (stop_at = 0; !completed && stop_at < 64; stop_at++) {
        char what[64];
        snprintf(what, sizeof what, "compact stopped at step %d", stop_at);
        char *d = copy();
        struct wal_options o;
        opts(&o);
        o.step_hook = step_hook;
        struct wal *w = tu_open(d, &o);
        int rc = wal_compact_prefix(w, upto);
        completed = rc == 0;
        cr_assert(rc == 0 || rc == -EINTR, "%s: rc %d %s", what, rc, wal_errmsg());
        wal_close(w);

        opts(&o);
        w = tu_open(d, &o);
        uint64_t first = wal_first_index(w);
        /* Before the marker is durable nothing changed; after it, open completes the job. */
        cr_assert(first == (stop_at == 0 ? 1 : segs[3].first), "%s: first %llu", what,
                  (unsigned long long)first);
        check_log_matches(w, first, n_entries, what);
        char **names;
        size_t n = tu_segments(d, &names);
        tu_free_names(names, n);
        cr_assert_eq(n, stop_at == 0 ? n_segs : n_segs - 3, "%s: %zu segment files", what, n);
        tu_append_sync(w, n_entries + 1, 70, 3, 3);
        wal_close(w);
        tu_rmtree(d);
        free(d);
    }
    cr_assert(completed && stop_at == 5, "marker + 3 unlinks, then done (%d)", stop_at);
}

/* ---- reset stopped at each step, and failing at each I/O call ---- */

/* The reset points tried: past the end, inside the log, at an index whose successor names an
 * existing segment file, and back to an empty log from 1. */
struct reset_case {
    uint64_t index, term;
};

static size_t reset_cases(struct reset_case *c)
{
    c[0] = (struct reset_case){n_entries + 100, 9};
    c[1] = (struct reset_case){segs[1].first + 3, 3};
    c[2] = (struct reset_case){segs[2].first - 1, 4};
    c[3] = (struct reset_case){0, 0};
    return 4;
}

static int reset_stop_at, open_stop_at;

static int reset_hook(void *arg, const char *op, int step)
{
    (void)arg;
    cr_assert_str_eq(op, "reset");
    return step >= reset_stop_at;
}

static int open_hook(void *arg, const char *op, int step)
{
    (void)arg;
    cr_assert_str_eq(op, "reset");
    cr_assert(step >= 1, "open only finishes a committed reset (step %d)", step);
    return step >= open_stop_at;
}

static void expect_no_leftovers(const char *dir, const char *what)
{
    char *p = tu_path(dir, "reset");
    cr_assert_neq(access(p, F_OK), 0, "%s: the reset journal is left behind", what);
    free(p);
}

/* The log as it was before the reset: the pristine one. */
static void expect_before(struct wal *w, const char *what)
{
    cr_assert_eq(wal_first_index(w), 1, "%s: first %llu", what,
                 (unsigned long long)wal_first_index(w));
    cr_assert_eq(wal_last_index(w), n_entries, "%s: last %llu", what,
                 (unsigned long long)wal_last_index(w));
    check_log_matches(w, 1, n_entries, what);
}

/* The log as wal_reset(c) leaves it: empty after (index, term), one segment file. */
static void expect_after(struct wal *w, const char *dir, const struct reset_case *c,
                         const char *what)
{
    cr_assert_eq(wal_first_index(w), c->index + 1, "%s: first %llu", what,
                 (unsigned long long)wal_first_index(w));
    cr_assert_eq(wal_last_index(w), c->index, "%s: last %llu", what,
                 (unsigned long long)wal_last_index(w));
    uint64_t t = 77;
    cr_assert_eq(wal_term_at(w, c->index, &t), 0, "%s: %s", what, wal_errmsg());
    cr_assert_eq(t, c->term, "%s: term %llu", what, (unsigned long long)t);
    char **names;
    size_t n = tu_segments(dir, &names);
    char want[32];
    snprintf(want, sizeof want, "%020llu.seg", (unsigned long long)c->index + 1);
    cr_assert(n == 1 && strcmp(names[0], want) == 0, "%s: %zu segments, first %s", what, n,
              n ? names[0] : "-");
    tu_free_names(names, n);
    expect_no_leftovers(dir, what);
}

/* Reopens (no hooks) and checks the log is before or after as `after` says; then that it takes
 * an entry and keeps it. */
static void reopen_and_check(const char *dir, const struct reset_case *c, int after,
                             const char *what)
{
    struct wal_options o;
    opts(&o);
    struct wal *w = tu_open(dir, &o);
    if (after)
        expect_after(w, dir, c, what);
    else
        expect_before(w, what);
    uint64_t next = wal_last_index(w) + 1;
    tu_append_sync(w, next, 99, 11, 6);
    wal_close(w);
    w = tu_open(dir, &o);
    cr_assert_eq(wal_last_index(w), next, "%s", what);
    tu_expect_entry(w, next, 99, 11, 6);
    wal_close(w);
}

Test(crash, reset_stopped_at_every_step)
{
    struct reset_case cases[4];
    size_t nc = reset_cases(cases);
    for (size_t ci = 0; ci < nc; ci++) {
        const struct reset_case *c = &cases[ci];
        int completed = 0;
        for (reset_stop_at = 0; !completed && reset_stop_at < 64; reset_stop_at++) {
            char what[96];
            snprintf(what, sizeof what, "reset to %llu stopped at step %d",
                     (unsigned long long)c->index, reset_stop_at);
            char *d = copy();
            struct wal_options o;
            opts(&o);
            o.step_hook = reset_hook;
            struct wal *w = tu_open(d, &o);
            int rc = wal_reset(w, c->index, c->term);
            completed = rc == 0;
            cr_assert(rc == 0 || rc == -EINTR, "%s: rc %d %s", what, rc, wal_errmsg());
            wal_close(w);
            /* Step 0 comes before the journal, the commit point: only then is it "before". */
            reopen_and_check(d, c, reset_stop_at > 0, what);
            tu_rmtree(d);
            free(d);
        }
        /* Steps 0..n_segs+4: journal, commit, one unlink per segment, marker, new segment,
         * journal removal; the run at n_segs+5 completes and the loop counts once more. */
        cr_assert(completed && reset_stop_at == (int)n_segs + 6, "reset took %d steps",
                  reset_stop_at);
    }
}

Test(crash, reset_stopped_then_open_stopped_while_finishing_it)
{
    struct reset_case cases[4];
    reset_cases(cases);
    const struct reset_case *c = &cases[0];
    int steps = (int)n_segs + 4; /* the last step that stops a reset */
    for (reset_stop_at = 1; reset_stop_at <= steps; reset_stop_at++) {
        int opened = 0;
        for (open_stop_at = 1; !opened && open_stop_at < 64; open_stop_at++) {
            char what[96];
            snprintf(what, sizeof what, "reset stopped at %d, open stopped at %d", reset_stop_at,
                     open_stop_at);
            char *d = copy();
            struct wal_options o;
            opts(&o);
            o.step_hook = reset_hook;
            struct wal *w = tu_open(d, &o);
            cr_assert_eq(wal_reset(w, c->index, c->term), -EINTR, "%s", what);
            wal_close(w);
            o.step_hook = open_hook;
            char err[512] = "";
            int rc = wal_open(&w, d, &o, err, sizeof err);
            opened = rc == 0;
            if (opened)
                wal_close(w);
            else
                cr_assert(rc == -EINTR && strstr(err, "stopped"), "%s: rc %d %s", what, rc, err);
            reopen_and_check(d, c, 1, what);
            tu_rmtree(d);
            free(d);
        }
        cr_assert(opened && open_stop_at > 3, "finishing at open has several steps (%d)",
                  open_stop_at);
    }
}

/* Fault injection for resets: the n-th call of one kind fails (transient), or every call from
 * the n-th on (a disk that stays full). Calls are counted only while a kind is armed. */
enum fault_kind { FAULT_NONE, FAULT_PWRITE, FAULT_FSYNC, FAULT_FALLOCATE };
static atomic_int fault_kind, fault_at, fault_calls, fault_persist;

static int fault_now(enum fault_kind k)
{
    if (atomic_load(&fault_kind) != (int)k)
        return 0;
    int call = atomic_fetch_add(&fault_calls, 1) + 1;
    return atomic_load(&fault_persist) ? call >= atomic_load(&fault_at)
                                       : call == atomic_load(&fault_at);
}

static ssize_t fault_pwrite(int fd, const void *buf, size_t len, off_t off)
{
    if (fault_now(FAULT_PWRITE)) {
        errno = ENOSPC;
        return -1;
    }
    return pwrite(fd, buf, len, off);
}

static int fault_fsync(int fd)
{
    if (fault_now(FAULT_FSYNC)) {
        errno = EIO;
        return -1;
    }
    return fsync(fd);
}

static int fault_fallocate(int fd, off_t off, off_t len)
{
    return fault_now(FAULT_FALLOCATE) ? ENOSPC : posix_fallocate(fd, off, len);
}

static const struct wal_io fault_io = {fault_pwrite, NULL, fault_fsync, fault_fallocate};

static void fault_arm(enum fault_kind k, int at, int persist)
{
    atomic_store(&fault_calls, 0);
    atomic_store(&fault_at, at);
    atomic_store(&fault_persist, persist);
    atomic_store(&fault_kind, (int)k);
}

Test(crash, reset_failing_at_every_io_call_opens_before_or_after)
{
    struct reset_case cases[4];
    reset_cases(cases);
    const struct reset_case *c = &cases[0];
    static const char *const kinds[] = {NULL, "pwrite", "fsync", "fallocate"};
    for (int k = FAULT_PWRITE; k <= FAULT_FALLOCATE; k++) {
        for (int persist = 0; persist <= 1; persist++) {
            int seen_before = 0, seen_after_failure = 0, done = 0;
            for (int at = 1; !done && at < 64; at++) {
                char what[96];
                snprintf(what, sizeof what, "%s %s from call %d", kinds[k],
                         persist ? "failing" : "failing once", at);
                char *d = copy();
                struct wal_options o;
                opts(&o);
                o.io = &fault_io;
                fault_arm(FAULT_NONE, 0, 0);
                struct wal *w = tu_open(d, &o);
                fault_arm((enum fault_kind)k, at, persist);
                int rc = wal_reset(w, c->index, c->term);
                done = atomic_load(&fault_calls) < at; /* every call of the kind succeeded */
                fault_arm(FAULT_NONE, 0, 0);
                if (done || k == FAULT_FALLOCATE)
                    cr_assert_eq(rc, 0, "%s: a deferred preallocation is no failure: %s", what,
                                 wal_errmsg());
                int appended = 0;
                if (rc != 0) {
                    cr_assert(wal_errmsg()[0], "%s: no message", what);
                    /* Usable (nothing committed: the log is as before) or refusing: never an
                     * append to a log that the next open would replace. */
                    struct raft_entry e;
                    tu_entry(&e, n_entries + 1, 99, 11, 6);
                    int arc = wal_append(w, &e, 1);
                    free(e.data);
                    cr_assert(arc == 0 || arc == -EIO, "%s: append %d", what, arc);
                    if (arc == 0) {
                        cr_assert_eq(wal_last_index(w), n_entries + 1, "%s", what);
                        cr_assert_eq(wal_wait_durable(w, n_entries + 1), 0, "%s", what);
                        appended = 1;
                    }
                }
                wal_close(w);
                /* The disk may still be full at the next start: preallocation stays failing. */
                opts(&o);
                o.io = &fault_io;
                fault_arm(FAULT_FALLOCATE, 1, 1);
                w = tu_open(d, &o);
                fault_arm(FAULT_NONE, 0, 0);
                int after = wal_first_index(w) != 1;
                if (rc == 0 || appended)
                    cr_assert_eq(after, rc == 0, "%s: reopened %s", what,
                                 after ? "after the reset" : "before it");
                if (after) {
                    expect_after(w, d, c, what);
                    seen_after_failure += rc != 0;
                } else {
                    cr_assert_eq(wal_last_index(w), n_entries + (uint64_t)appended, "%s", what);
                    check_log_matches(w, 1, n_entries, what);
                    if (appended)
                        tu_expect_entry(w, n_entries + 1, 99, 11, 6);
                    seen_before++;
                }
                wal_close(w);
                tu_rmtree(d);
                free(d);
            }
            cr_assert(done, "%s never stopped failing", kinds[k]);
            /* Writes and syncs fail on both sides of the commit point. */
            if (k != FAULT_FALLOCATE)
                cr_assert(seen_before && seen_after_failure, "%s: before %d, after %d", kinds[k],
                          seen_before, seen_after_failure);
        }
    }
}

/* ---- the decoder on arbitrary bytes ---- */

Test(crash, decoder_never_reads_out_of_bounds_on_mutations)
{
    char *p = seg_path(src, n_segs - 1);
    long size = tu_file_size(p);
    uint8_t *orig = malloc((size_t)size), *buf = malloc((size_t)size);
    int fd = open(p, O_RDONLY);
    cr_assert_eq(pread(fd, orig, (size_t)size, 0), size);
    close(fd);
    uint64_t rng = 5;
    for (int i = 0; i < 2000; i++) {
        memcpy(buf, orig, (size_t)size);
        int muts = 1 + (int)(tu_rand(&rng) % 8);
        for (int m = 0; m < muts; m++)
            buf[tu_rand(&rng) % (uint64_t)size] = (uint8_t)tu_rand(&rng);
        size_t len = (size_t)(tu_rand(&rng) % (uint64_t)(size + 1));
        /* An exact-size heap copy lets ASan catch any read past the end. */
        uint8_t *exact = malloc(len ? len : 1);
        memcpy(exact, buf, len);
        struct wal_decode_result res;
        char err[1024] = "";
        int rc = wal_segment_decode(exact, len, "x", segs[n_segs - 1].first, (int)(i & 1), NULL,
                                    NULL, &res, err, sizeof err);
        cr_assert(rc == 0 || (rc == -EBADMSG && err[0]), "rc %d", rc);
        if (rc == 0)
            cr_assert(res.end <= len && res.dirty_end <= len && res.end <= res.dirty_end);
        free(exact);
    }
    free(orig);
    free(buf);
    free(p);
}
