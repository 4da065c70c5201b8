#!/bin/sh
# craft-sim's command line: the summary line, exit codes, a replay trace, and clear errors.
set -u
SIM="$1"
fail() { echo "FAIL: $*"; exit 1; }

out=$("$SIM" --nodes 3 --seeds 20) || fail "--seeds 20 exited $?"
[ "$(echo "$out" | tail -n 1)" = "seeds=20 violations=0" ] || fail "bad summary: $out"

out=$("$SIM" --nodes 5 --seed 7) || fail "--seed 7 exited $?"
echo "$out" | grep -q "becomes leader" || fail "replay has no readable trace"
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
