/* memstore.h: an in-memory register store implementing raft/fsm.h: the state machine craftd
 * runs until the LMDB-backed etcd KV store (issue 6) replaces it, and a small, obviously
 * correct machine for cluster tests.
 *
 * What it promises: a command (memstore_encode_put) sets key to value and its result is the
 * previous value (code MEMSTORE_HAD_PREV) or nothing (code 0); a command that does not decode
 * gets code MEMSTORE_EBADCMD and changes nothing. Nothing is kept across restarts
 * (applied_index() is 0), so a restarted member rebuilds the state from its log. Reads
 * (memstore_get) may run on any thread concurrently with apply.
 */
#ifndef CRAFT_SERVICES_MEMSTORE_H
#define CRAFT_SERVICES_MEMSTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "raft/fsm.h"

#define MEMSTORE_HAD_PREV 1
#define MEMSTORE_EBADCMD 2

struct memstore;

struct memstore *memstore_create(void);
void memstore_destroy(struct memstore *s);
/* The fsm table over s (valid while s lives). */
struct raft_fsm *memstore_fsm(struct memstore *s);

/* A Put command in a malloc'd buffer (*out, *len). 0 or -1 (out of memory, key too long). */
int memstore_encode_put(const void *key, size_t klen, const void *val, size_t vlen, uint8_t **out,
                        size_t *len);
/* Copies the value of key into a malloc'd buffer. true when found. */
bool memstore_get(struct memstore *s, const void *key, size_t klen, uint8_t **val, size_t *vlen);
uint64_t memstore_applied(struct memstore *s); /* last index applied */
uint64_t memstore_keys(struct memstore *s);
#endif
