/* raft_fuzz_harness.h: one Raft core (raft/core/raft.h) driven by a fuzzed sequence of operations,
 * with the storage a runtime gives it (a durable log, hard state and snapshot, and the writes a
 * ready hands out, durable only once reported persisted) and its invariants checked after every
 * step. Shared by the structured fuzz targets raft_step_fuzz.c (messages built field by field)
 * and peer_batch_fuzz.c (messages decoded from craft.raft.Batch bytes).
 *
 * Input: one configuration byte, then operations, each an opcode byte and its operands
 * (raft_fuzz_harness.c lists them; make_raft_step_corpus.py writes the same layout). The
 * "deliver" operation is the caller's: it reads its operands from the input and steps messages
 * into the core with fz_step. Any violated invariant, or a core call failing where it must not,
 * aborts with a message on stderr. */
#ifndef CRAFT_TESTS_FUZZ_RAFT_FUZZ_HARNESS_H
#define CRAFT_TESTS_FUZZ_RAFT_FUZZ_HARNESS_H

#include <stddef.h>
#include <stdint.h>

#include "raft/core/raft.h"

struct fz;

/* The unread part of the input; reads past its end give zeros. */
struct fz_in {
    const uint8_t *p;
    size_t n;
};

uint8_t fz_u8(struct fz_in *in);
uint64_t fz_u64(struct fz_in *in);
/* A field near base: one byte b gives base + b - 0x80 (floored at 0); 0xff is followed by an
 * absolute 8-byte little-endian value. Seeds reach deep states with exact values this way. */
uint64_t fz_rel(struct fz_in *in, uint64_t base);

/* The core's state a message builder needs to pick plausible fields. */
void fz_status(const struct fz *f, struct raft_status *st);
/* The term of the entry at index in the core's log (0 if not held). */
uint64_t fz_term_at(const struct fz *f, uint64_t index);
/* Number of members of the initial configuration (ids 1..n; the core is id 1). */
unsigned fz_members(const struct fz *f);

/* Step one message into the core; the return code is the core's. */
int fz_step(struct fz *f, const struct raft_msg *m);

/* Run the whole input; deliver is called for opcode 0. */
void fz_run(const uint8_t *data, size_t size, void (*deliver)(struct fz *f, struct fz_in *in));

/* A valid encoded configuration from masks over ids 1..8 (bit i = id i + 1), for config entries
 * and snapshot metadata: voters (at least id 1 if empty), learners (minus voters), old (joint
 * when nonzero). Returns a malloc'ed blob, or NULL. */
uint8_t *fz_conf_blob(uint8_t voters, uint8_t learners, uint8_t old, uint32_t *len);

#endif
