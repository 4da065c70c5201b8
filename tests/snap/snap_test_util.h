/* Helpers shared by the snapshot store's tests: deterministic snapshots written and checked
 * through the public API. Directory and file surgery come from tests/wal/wal_test_util.h. */
#ifndef CRAFT_TESTS_SNAP_UTIL_H
#define CRAFT_TESTS_SNAP_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "raft/snap/snap.h"

/* Opens the store with o (NULL: defaults, notices collected by tu_quiet_log); asserts success. */
struct snap_store *st_open(const char *dir, struct snap_options *o);
/* Default options with notices collected by tu_quiet_log. */
void st_options(struct snap_options *o);

/* Deterministic bytes for (seed, len); the configuration of a snapshot uses seed + 1. */
void st_bytes(uint8_t *buf, size_t len, uint64_t seed);

/* Writes and commits snapshot (index, term) with cfg_len configuration bytes and len payload
 * bytes, handing the payload to snap_write in pieces of varying size; asserts success. */
void st_make(struct snap_store *s, uint64_t index, uint64_t term, size_t cfg_len, size_t len,
             uint64_t seed);
/* Asserts f is the snapshot st_make wrote with these arguments: header, configuration, and the
 * payload streamed through snap_file_read (ending with 0 once the checksum matched). */
void st_expect(struct snap_file *f, uint64_t index, uint64_t term, size_t cfg_len, size_t len,
               uint64_t seed);
/* Opens (index, term) in s and st_expect()s it. */
void st_expect_in(struct snap_store *s, uint64_t index, uint64_t term, size_t cfg_len, size_t len,
                  uint64_t seed);

/* dir/<term:016x>-<index:016x>.snap, malloc'd. */
char *st_snap_path(const char *dir, uint64_t index, uint64_t term);
/* dir/<term:016x>-<index:016x>-<total:016x>.partial, malloc'd. */
char *st_partial_path(const char *dir, uint64_t index, uint64_t term, uint64_t total);
/* How many names in dir end with suffix. */
size_t st_count(const char *dir, const char *suffix);
/* Creates (or replaces) path with len bytes. */
void st_put(const char *path, const void *buf, size_t len);
/* The whole file, malloc'd. */
uint8_t *st_slurp(const char *path, size_t *len);

#endif
