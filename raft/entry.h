/* entry.h: the log entry and hard state shared by the consensus core (raft.h), the write-ahead
 * log (wal.h) and the node runtime. Plain data; each module copies what it keeps. */
#ifndef CRAFT_RAFT_ENTRY_H
#define CRAFT_RAFT_ENTRY_H

#include <stddef.h>
#include <stdint.h>

enum raft_entry_type {
    RAFT_ENTRY_NORMAL = 0, /* an application command for the state machine */
    RAFT_ENTRY_NOOP = 1,   /* appended by each new leader (Raft paper §8) */
    RAFT_ENTRY_CONFIG = 2, /* a cluster configuration (raft.h raft_conf_encode) */
};

struct raft_entry {
    uint64_t index;
    uint64_t term;
    uint8_t type;  /* enum raft_entry_type */
    uint32_t len;  /* payload bytes */
    uint8_t *data; /* payload; NULL when len == 0 */
};

/* The state every server must persist before answering RPCs (Raft paper Figure 2). */
struct raft_hard_state {
    uint64_t term;      /* currentTerm */
    uint64_t voted_for; /* candidate id voted for in term, 0 = none */
};

#endif
