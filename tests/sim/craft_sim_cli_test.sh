#!/bin/sh
# craft-sim's command line: the summary line, exit codes, a replay trace, and clear errors.
set -u
SIM="$1"
fail() { echo "FAIL: $*"; exit 1; }

out=$("$SIM" --nodes 3 --seeds 20) || fail "--seeds 20 exited $?"
[ "$(echo "$out" | tail -n 1)" = "seeds=20 violations=0" ] || fail "bad summary: $out"

out=$("$SIM" --nodes 5 --seed 7) || fail "--seed 7 exited $?"
echo "$out" | grep -q "becomes leader" || fail "replay has no readable trace"
# The core's own decisions are in the replay (RAFT_WITH_TRACE): votes with their reasons, the
# election won, the commit index moving.
echo "$out" | grep -Eq "core n[0-9] [a-z]+ term=[0-9]+: grants vote to n[0-9]" ||
    fail "no vote decisions in the trace"
echo "$out" | grep -q "wins the election" || fail "no election decision in the trace"
echo "$out" | grep -Eq "core n[0-9] leader term=[0-9]+: commit [0-9]+ -> [0-9]+" ||
    fail "no commit decision in the trace"
echo "$out" | tail -n 1 | grep -q "result: ok" || fail "replay did not report a result"

for args in "--bogus" "--nodes 0 --seeds 1" "--nodes 99 --seeds 1" "--nodes x --seeds 1" \
            "--nodes 3" "--seeds" "--seeds 0" "--seed 1 --seeds 2" "--seeds -3"; do
    # shellcheck disable=SC2086
    "$SIM" $args >/dev/null 2>err.txt
    rc=$?
    [ $rc -eq 2 ] || fail "'$args' exited $rc, want 2"
    grep -q "craft-sim:" err.txt || fail "'$args' gave no error message"
done
echo "PASS"
