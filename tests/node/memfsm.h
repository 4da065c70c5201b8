/* memfsm.h: a tiny in-memory state machine for node tests. It records, in order, the index and
 * the 64-bit id (the first 8 bytes of the payload) of every entry applied, keeps a running
 * checksum over them, and answers each entry with an 8-byte result holding that id, so a test can
 * check that completions carry the right result. It keeps nothing across restarts
 * (applied_index() == 0): a restarted member replays its whole log, or restores a snapshot
 * (snapshot_write / snapshot_restore carry the whole record; applied_index() is then the
 * snapshot's index). */
#ifndef CRAFT_TESTS_NODE_MEMFSM_H
#define CRAFT_TESTS_NODE_MEMFSM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "raft/node/fsm.h"

struct memfsm;

struct memfsm *memfsm_new(void);
void memfsm_free(struct memfsm *m);
struct raft_fsm *memfsm_fsm(struct memfsm *m);

/* Wait (condition variable, bounded) until at least `count` entries were applied / until the
 * highest index covered reaches `index`. Return false on timeout. */
bool memfsm_wait_count(struct memfsm *m, size_t count, int timeout_ms);
bool memfsm_wait_index(struct memfsm *m, uint64_t index, int timeout_ms);

size_t memfsm_count(struct memfsm *m);
uint64_t memfsm_last_index(struct memfsm *m);
uint64_t memfsm_checksum(struct memfsm *m);
/* A malloc'd copy of the applied ids (and indexes if idx != NULL); *n receives the count. */
uint64_t *memfsm_ids(struct memfsm *m, size_t *n, uint64_t **idx);
/* Number of apply() calls and the largest batch seen. */
void memfsm_batches(struct memfsm *m, size_t *calls, size_t *max_batch);

/* Successful snapshot_write calls. */
size_t memfsm_snapshots(struct memfsm *m);
/* Make snapshot_write fail with -ENOSPC (a full disk), or stop doing so. */
void memfsm_fail_snapshots(struct memfsm *m, bool on);

/* Make apply() fail (return -EIO) for any batch reaching index >= `index` (0 = never). */
void memfsm_fail_from(struct memfsm *m, uint64_t index);

/* Make each apply() call take at least `us` microseconds (< 1 s; 0 = as fast as it can). */
void memfsm_slow_apply(struct memfsm *m, unsigned us);

/* Payload helpers: `len` >= 8 bytes, id in the first 8. */
void memfsm_payload(uint8_t *buf, size_t len, uint64_t id);

#endif
