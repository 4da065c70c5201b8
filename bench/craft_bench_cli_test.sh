#!/usr/bin/env bash
# craft-bench's front door: --help exits 0 and lists the flags; every kind of bad flag exits 2
# with one line naming the problem, before any connection is attempted; an unreachable target
# exits 1 with a clear message (never a hang).
set -uo pipefail
bench=$1
fails=0

out=$("$bench" --help 2>&1); rc=$?
if [ $rc -eq 0 ] && grep -q -- "--inflight" <<<"$out" && grep -q -- "--mix" <<<"$out" &&
    grep -q -- "--phases" <<<"$out"; then
    echo "ok: --help -> 0"
else
    echo "FAIL: --help: exit $rc, output: $out"; fails=$((fails + 1))
fi

expect() { # want-exit, want-text, description, args...
    local want=$1 text=$2 what=$3 out rc
    shift 3
    out=$(timeout 20 "$bench" "$@" 2>&1 </dev/null)
    rc=$?
    if [ $rc -eq "$want" ] && grep -qE -- "$text" <<<"$out"; then
        echo "ok: $what -> $rc: $(head -1 <<<"$out")"
    else
        echo "FAIL: $what: exit $rc (want $want, text /$text/), output: $out"
        fails=$((fails + 1))
    fi
}

ins=(--insecure --endpoints http://127.0.0.1:1)
expect 2 "unknown flag --frobnicate" "unknown flag" --frobnicate
expect 2 "unexpected argument" "positional argument" put
expect 2 "needs a value" "missing value" --conns
expect 2 "not an integer" "non-numeric --conns" "${ins[@]}" --conns lots
expect 2 "out of range" "zero connections" "${ins[@]}" --conns 0
expect 2 "out of range" "too many connections" "${ins[@]}" --conns 100000
expect 2 "out of range" "in flight 0" "${ins[@]}" --inflight 0
expect 2 "calls in flight" "conns x inflight too large" "${ins[@]}" --conns 1024 --inflight 1024
expect 2 "not a number of seconds" "bad duration" "${ins[@]}" --duration soon
expect 2 "out of range" "negative duration" "${ins[@]}" --duration -1
expect 2 "out of range" "duration past the bound" "${ins[@]}" --duration 99999
expect 2 "not both" "duration and total" "${ins[@]}" --duration 1 --total 10
expect 2 "out of range" "zero total" "${ins[@]}" --total 0
expect 2 "unknown operation 'delete'" "unknown mix op" "${ins[@]}" --mix put=50,delete=50
expect 2 "OP=WEIGHT" "mix without weight" "${ins[@]}" --mix put
expect 2 "more than 0" "mix weights all zero" "${ins[@]}" --mix put=0,range=0
expect 2 "out of range" "value too large" "${ins[@]}" --val-size 99999999
expect 2 "too small for --key-space" "key too short for key space" "${ins[@]}" --key-size 2 --key-space 1000
expect 2 "must start with https://" "bad endpoint URL" --insecure --endpoints ftp://x:1
expect 2 "use https://" "http endpoint without --insecure" --endpoints http://127.0.0.1:1 --cacert /x
expect 2 "cacert is required" "https without certificates" --endpoints https://127.0.0.1:1
expect 2 "go together" "cert without key" --endpoints https://127.0.0.1:1 --cacert /x --cert /y
expect 2 "takes no value" "boolean flag with a value" --json=yes
expect 2 "takes no value" "--phases with a value" --phases=3
# Not a flag error: certificate files that do not exist, and a target nobody listens on.
expect 1 "craft-bench: " "missing certificate files" --endpoints https://127.0.0.1:1 --cacert /nonexistent/ca.pem
expect 1 "cannot reach http://127.0.0.1:1" "unreachable target" "${ins[@]}" --deadline-ms 500 --duration 1

echo "$fails failed"
[ $fails -eq 0 ]
