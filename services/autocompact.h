/* autocompact.h: etcd's automatic history compaction (--auto-compaction-mode,
 * --auto-compaction-retention), decided by the leader and carried out through the log as a
 * Compact entry, so every member compacts at the same revision.
 *
 * What it promises (etcd 3.4's v3compactor, same meanings):
 * - periodic, retention P (a duration): every member samples its revision every
 *   min(P, 1 h) / 10 and keeps the samples of the last P; once P has passed since it started
 *   (then every min(P, 1 h)) the leader compacts to the oldest sample - so about P of history
 *   stays readable. A failed compaction is retried at the next sample.
 * - revision, retention N: every 5 minutes the leader compacts to (revision - N) when that is
 *   positive and new.
 * - retention 0 turns it off (craftd_flags.h parses the flags: a Go duration or a bare number
 *   of hours for periodic, a number of revisions for revision). A compaction that finds the revision already compacted counts as
 *   done (a manual Compact got there first).
 * The scheduler (ac_sched_*) is pure: time and revisions come in, the revision to compact comes
 * out, so tests drive it without clocks. autocompact_start runs it on a thread of its own. */
#ifndef CRAFT_SERVICES_AUTOCOMPACT_H
#define CRAFT_SERVICES_AUTOCOMPACT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "raft/node/node.h"
#include "services/kvstore/kv_store.h"

enum { AC_PERIODIC = 0, AC_REVISION = 1 };

#define AC_REVISION_INTERVAL_MS (5u * 60 * 1000) /* etcd's checkCompactionInterval */
#define AC_HOUR_MS (3600u * 1000)

#define AC_MAX_SAMPLES 256

struct ac_sched {
    int mode;
    uint64_t retention;   /* ms (periodic) or revisions */
    uint64_t interval_ms; /* call ac_sched_tick this often */
    /* periodic */
    int64_t samples[AC_MAX_SAMPLES];
    size_t n, keep;
    uint64_t last_ms, wait_ms; /* last success (start at first), how long to wait from it */
    /* revision */
    int64_t last_rev;
};

/* revision_interval_ms: how often the revision mode checks (0 = 5 minutes, etcd's). */
void ac_sched_init(struct ac_sched *a, int mode, uint64_t retention, uint64_t revision_interval_ms,
                   uint64_t now_ms);
/* One tick, every interval_ms: the member's current revision, whether it leads. Returns the
 * revision to compact to now, or 0. */
int64_t ac_sched_tick(struct ac_sched *a, uint64_t now_ms, int64_t rev, bool leader);
/* The outcome of the compaction tick asked for (ok also when it was already compacted). */
void ac_sched_done(struct ac_sched *a, uint64_t now_ms, int64_t rev, bool ok);

struct autocompact;
/* A thread that ticks the scheduler and proposes Compact on the leader. NULL when retention is
 * 0 (nothing to do) or the thread cannot start. log(arg, line) hears of each compaction. */
struct autocompact *autocompact_start(struct raft_node *node, struct kv_store *store, int mode,
                                      uint64_t retention, uint64_t revision_interval_ms,
                                      int timeout_ms, void (*log)(void *arg, const char *line),
                                      void *log_arg);
void autocompact_stop(struct autocompact *a);

#endif
