/* Helpers shared by the WAL tests: temporary directories, deterministic entries, file surgery. */
#ifndef CRAFT_TESTS_WAL_UTIL_H
#define CRAFT_TESTS_WAL_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "raft/wal/wal.h"

/* A fresh directory under $TEST_TMPDIR (or /tmp); the caller removes it with tu_rmtree. */
char *tu_mkdtemp(void);
void tu_rmtree(const char *path);
/* Copies the regular files of src into dst (created). */
void tu_copytree(const char *src, const char *dst);

/* Deterministic pseudo-random numbers (xorshift64*). */
uint64_t tu_rand(uint64_t *state);

/* Fills e for index/term with a payload of len bytes derived from (index, salt); data is malloc'd. */
void tu_entry(struct raft_entry *e, uint64_t index, uint64_t term, uint32_t len, uint64_t salt);
/* Asserts that entry `index` in w has the given term and the payload tu_entry made. */
void tu_expect_entry(struct wal *w, uint64_t index, uint64_t term, uint32_t len, uint64_t salt);

/* Appends one entry and waits for it to be durable; asserts success. */
void tu_append_sync(struct wal *w, uint64_t index, uint64_t term, uint32_t len, uint64_t salt);

/* Opens with the options (NULL: defaults with notices collected by tu_notices); asserts success. */
struct wal *tu_open(const char *dir, struct wal_options *o);
void tu_quiet_log(void *arg, const char *msg); /* a wal_log_fn that counts and keeps the last */
extern int tu_notice_count;
extern char tu_last_notice[512];

/* File helpers; paths are dir/name. */
char *tu_path(const char *dir, const char *name);
long tu_file_size(const char *path);
void tu_truncate(const char *path, long size);
void tu_flip_bit(const char *path, long offset, int bit);
void tu_write_at(const char *path, long offset, const void *buf, size_t len);
/* Sorted segment file names in dir; returns the count, *names malloc'd (free with tu_free_names). */
size_t tu_segments(const char *dir, char ***names);
void tu_free_names(char **names, size_t n);

#endif
