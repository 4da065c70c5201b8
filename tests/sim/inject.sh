#!/bin/bash
# Prove the simulator has teeth: build a copy of the core with one classic Raft bug injected
# (outside the repository, so nothing in the tree changes), sweep seeds, print the first failing
# seeds and how to replay them. Usage: tests/sim/inject.sh <A|B|C|D|F|I|J|K|L|O|P|Q|R|S|T> [seeds] [nodes]
#   A  commit rule counts replicas of old-term entries (Figure 8 / §5.4.2)
#   B  votedFor not reset when the term changes
#   C  vote granted without the log up-to-date check (§5.4.1)
#   D  append acknowledged before the entries are durable
#   O  a leader counts its own entries toward commitment before they are durable (§10.2.1)
#   F  vote granted without persisting votedFor
#   R  ReadIndex: a read released without a majority confirming the leader (§6.4 step 3)
#   S  ReadIndex: a new leader answers before committing an entry of its term (§6.4 step 1)
#   P  progress: appends still in flight counted as stored (match taken from next, not the ack)
#   I  InstallSnapshot: a snapshot at or below the commit index is installed anyway (§7)
#   K  compaction: the log is compacted past the applied index
#   Q  InstallSnapshot: the follower acknowledges the snapshot before it is durable
#   J  membership: during the joint phase an entry commits with only the new majority (§6)
#   T  membership: a second change is accepted while the previous one is still in flight
#   L  membership: a leader removed by C_new keeps leading and serves reads on its own
# J, T and L sweep with membership changes (craft-sim --members).
# SIM_CFLAGS adds compiler flags: SIM_CFLAGS=-DSIM_NO_COMMIT_QUORUM_CHECK turns off the check of
# each commit against the voters' storage, to measure what the faults alone expose (O: a
# committed entry lost with the leader's unsynced copy).
# The copy is built with NDEBUG, so the simulator's checker, not an assert in the core, has to
# catch the bug.
set -euo pipefail
bug=${1:?bug letter}; seeds=${2:-2000}; nodes=${3:-3}
members=; f2=
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/raft/core" "$work/tests/sim"
cp "$root"/raft/entry.h "$work/raft/"
cp "$root"/raft/core/*.c "$root"/raft/core/*.h "$work/raft/core/"
cp "$root"/tests/sim/sim.c "$root"/tests/sim/sim.h "$root"/tests/sim/craft_sim.c "$work/tests/sim/"
case $bug in
A) f=raft/core/raft_append.c
   old='raft_log_term(&r->log, n, &t) && t == r->hs.term'
   new='raft_log_term(&r->log, n, &t)' ;;
B) f=raft/core/raft_core.c
   old='        r->hs.voted_for = 0; /* votedFor belongs to one term (Figure 2) */'
   new='' ;;
C) f=raft/core/raft_vote.c
   old='bool grant = can_vote && log_up_to_date(r, m->last_log_index, m->last_log_term);'
   new='bool grant = can_vote || !log_up_to_date(r, 0, 0);' ;;
D) f=raft/core/raft_append.c
   old='    /* The ack means "stored": it waits for the entries to be durable. */
    return raft_send_after_persist(r, &resp);'
   new='    return raft_send(r, &resp);' ;;
O) f=raft/core/raft_append.c
   old='r->peers[i] == r->id ? r->persisted_index : r->progress[i].match;'
   new='r->peers[i] == r->id ? raft_log_last_index(&r->log) : r->progress[i].match;' ;;
I) f=raft/core/raft_append.c
   old='    if (m->snapshot_index <= r->commit) {'
   new='    if (false) {' ;;
K) f=raft/core/raft_core.c
   old='    if (snapshot_index > r->applied || snapshot_index < r->snap_index ||'
   new='    if (snapshot_index < r->snap_index ||' ;;
Q) f=raft/core/raft_append.c
   old='    /* The ack claims the snapshot (or the log up to match) is stored: it waits until it is. */
    return raft_send_after_persist(r, &resp);'
   new='    return raft_send(r, &resp);' ;;
F) f=raft/core/raft_vote.c
   old='        r->hs_dirty = true;
    }
    /* Granting'
   new='    }
    /* Granting' ;;
R) f=raft/core/raft_read.c
   old='uint64_t confirmed = raft_quorum_index(r, acks);'
   new='uint64_t confirmed = r->read_round;' ;;
J) f=raft/core/raft_conf.c members=--members
   old='    return a < b ? a : b; /* joint: both majorities (§6) */'
   new='    (void)b; return a;' ;;
T) f=raft/core/raft_conf.c members=--members
   old='    if (cur->n_old || r->conf_index > r->commit)
        return RAFT_EPENDING;'
   new='    if (cur->n_old)
        return RAFT_EPENDING;' ;;
L) f=raft/core/raft_conf.c members=--members
   old='        raft_become_follower(r, r->hs.term, 0);
    }
}'
   new='    }
}'
   f2=raft/core/raft_read.c
   old2='uint64_t confirmed = raft_quorum_index(r, acks);'
   new2='uint64_t confirmed = raft_is_voter(r, r->id) ? raft_quorum_index(r, acks) : r->read_round;' ;;
P) f=raft/core/progress.c
   old='    pr->match = match_index;'
   new='    pr->match = pr->next - 1 > match_index ? pr->next - 1 : match_index;' ;;
S) f=raft/core/raft_read.c
   old='return r->commit && raft_log_term(&r->log, r->commit, &t) && t == r->hs.term;'
   new='(void)t; return true;' ;;
*) echo "unknown bug '$bug'" >&2; exit 2 ;;
esac
python3 - "$work/$f" "$old" "$new" <<'PY'
import sys
p, old, new = sys.argv[1:]
s = open(p).read()
if s.count(old) != 1:
    sys.exit("inject.sh: pattern not found exactly once in " + p)
open(p, "w").write(s.replace(old, new))
PY
if [ -n "$f2" ]; then
python3 - "$work/$f2" "$old2" "$new2" <<'PY'
import sys
p, old, new = sys.argv[1:]
s = open(p).read()
if s.count(old) != 1:
    sys.exit("inject.sh: pattern not found exactly once in " + p)
open(p, "w").write(s.replace(old, new))
PY
fi
gcc -std=c11 -O2 -DNDEBUG -D_GNU_SOURCE ${SIM_CFLAGS:-} -I"$work" "$work"/raft/core/*.c "$work"/tests/sim/sim.c \
    "$work"/tests/sim/craft_sim.c -o "$work/craft-sim"
echo "bug $bug injected into $f; sweeping $seeds seeds with $nodes nodes"
"$work/craft-sim" --nodes "$nodes" $members --seeds "$seeds" | { grep -E '^seed|^seeds=' || true; } | \
    awk '/^seeds=/{print; next} n++ < 3'
