#!/usr/bin/env bash
# watch-bench's front door: --help exits 0 and lists the flags; every kind of bad flag exits 2
# with one line naming the problem, before any connection is attempted; an unreachable target
# exits 1 with a clear message (never a hang).
set -uo pipefail
bench=$1
fails=0

out=$("$bench" --help 2>&1); rc=$?
if [ $rc -eq 0 ] && grep -q -- "--watchers" <<<"$out" && grep -q -- "--per-stream" <<<"$out" &&
    grep -q -- "--rate" <<<"$out"; then
    echo "ok: --help -> 0"
else
    echo "FAIL: --help: exit $rc, output: $out"; fails=$((fails + 1))
fi

expect() { # want-exit, want-text, description, args...
    local want=$1 text=$2 what=$3 out rc
    shift 3
    out=$(timeout 20 "$bench" "$@" 2>&1 </dev/null)
    rc=$?
    if [ $rc -eq "$want" ] && grep -qE -- "$text" <<<"$out" && [ "$(wc -l <<<"$out")" -eq 1 ]; then
        echo "ok: $what -> $rc: $out"
    else
        echo "FAIL: $what: exit $rc (want $want, text /$text/, one line), output: $out"
        fails=$((fails + 1))
    fi
}

ins=(--insecure --endpoints http://127.0.0.1:1)
expect 2 "unknown flag --frobnicate" "unknown flag" --frobnicate
expect 2 "unexpected argument" "positional argument" watch
expect 2 "needs a value" "missing value" --watchers
expect 2 "not an integer" "non-numeric --watchers" "${ins[@]}" --watchers many
expect 2 "out of range" "zero watchers" "${ins[@]}" --watchers 0
expect 2 "out of range" "too many watchers" "${ins[@]}" --watchers 100001
expect 2 "out of range" "zero per stream" "${ins[@]}" --per-stream 0
expect 2 "out of range" "too many per stream" "${ins[@]}" --per-stream 10001
expect 2 "out of range" "zero connections" "${ins[@]}" --conns 0
expect 2 "out of range" "rate 0" "${ins[@]}" --rate 0
expect 2 "out of range" "rate past the bound" "${ins[@]}" --rate 1000000
expect 2 "not a number of seconds" "bad duration" "${ins[@]}" --duration soon
expect 2 "out of range" "negative duration" "${ins[@]}" --duration -1
expect 2 "less than one put" "less than one put" "${ins[@]}" --rate 1 --duration 0.5
expect 2 "more than 10000000" "rate x duration past the bound" "${ins[@]}" --rate 100000 --duration 3600
expect 2 "out of range" "value too small for the stamp" "${ins[@]}" --val-size 10
expect 2 "out of range" "writer in flight 0" "${ins[@]}" --writer-inflight 0
expect 2 "--prefix: must be" "empty prefix" "${ins[@]}" --prefix ""
expect 2 "out of range" "negative drain" "${ins[@]}" --drain-ms -1
expect 2 "must start with https://" "bad endpoint URL" --insecure --endpoints ftp://x:1
expect 2 "--writer-endpoint: .*use https://" "writer endpoint of the wrong scheme" "${ins[@]}" \
    --writer-endpoint https://127.0.0.1:2
expect 2 "use https://" "http endpoint without --insecure" --endpoints http://127.0.0.1:1 --cacert /x
expect 2 "cacert is required" "https without certificates" --endpoints https://127.0.0.1:1
expect 2 "go together" "cert without key" --endpoints https://127.0.0.1:1 --cacert /x --cert /y
expect 2 "takes no value" "boolean flag with a value" --json=yes
# Not a flag error: certificate files that do not exist, and a target nobody listens on.
expect 1 "watch-bench: " "missing certificate files" --endpoints https://127.0.0.1:1 --cacert /nonexistent/ca.pem
expect 1 "cannot reach http://127.0.0.1:1" "unreachable target" "${ins[@]}" --deadline-ms 500 --duration 1

echo "$fails failed"
[ $fails -eq 0 ]
