#!/usr/bin/env bash
# watch-bench's exactly-once check counts what a broken server does: against watch-fake-server
# in each mode (one delivery to one watch broken at the fourth put), the run exits 1 and the
# JSON names exactly that violation, once; against the same server unbroken it exits 0 with
# every count at zero. Each mode gets a fresh server.
set -uo pipefail
bench=$1 fake=$2
dir=$(mktemp -d "${TEST_TMPDIR:-/tmp}/wcheck.XXXXXX")
spid=""
trap '[ -n "$spid" ] && { kill -9 "$spid"; wait "$spid"; } 2>/dev/null; rm -rf "$dir"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

# mode, want-exit, python condition on the JSON object j
check() {
    local mode=$1 want=$2 cond=$3 port="" out rc
    "$fake" "$mode" >"$dir/$mode.port" 2>"$dir/$mode.err" &
    spid=$!
    for _ in $(seq 100); do
        port=$(awk '/^port / {print $2}' "$dir/$mode.port")
        [ -n "$port" ] && break
        kill -0 "$spid" 2>/dev/null || break
        sleep 0.05
    done
    if [ -z "$port" ]; then fail "$mode: the fake server did not start: $(cat "$dir/$mode.err")"; return; fi
    # 6 watchers, 3 per stream over 2 connections, 10 puts
    out=$(timeout 60 "$bench" --insecure --endpoints "http://127.0.0.1:$port" --watchers 6 --per-stream 3 \
        --conns 2 --rate 20 --duration 0.5 --drain-ms 1000 --json --quiet 2>"$dir/$mode.bench.err")
    rc=$?
    kill -TERM "$spid"; wait "$spid" 2>/dev/null; spid=""
    if [ $rc -eq "$want" ] && python3 - "$out" "$cond" <<'PY'
import json, sys
j = json.loads(sys.argv[1])
assert j["puts_acked"] == 10 and j["put_errors"] == 0 and j["stream_errors"] == 0, j
assert eval(sys.argv[2]), (sys.argv[2], j)
PY
    then echo "ok: $mode -> exit $rc: $cond"
    else fail "$mode: exit $rc (want $want), output: $out $(cat "$dir/$mode.bench.err")"; fi
}

zero='j["lost"] == j["duplicated"] == j["mismatched"] == j["foreign"] == j["canceled"] == 0'
check ok 0 "$zero and j['violations'] == 0 and j['events'] == 60 and j['watchers_with_violations'] == 0"
check drop 1 "j['lost'] == 1 and j['violations'] == 1 and j['events'] == 59 and j['watchers_with_violations'] == 1"
check dup 1 "j['duplicated'] == 1 and j['violations'] == 1 and j['events'] == 60 and j['watchers_with_violations'] == 1"
check mismatch 1 "j['mismatched'] == 1 and j['violations'] == 1 and j['watchers_with_violations'] == 1"
check foreign 1 "j['foreign'] == 1 and j['violations'] == 1 and j['events'] == 60 and j['watchers_with_violations'] == 1"
check cancel 1 "j['canceled'] == 1 and j['lost'] == 6 and j['watchers_with_violations'] == 1 and 'canceled on purpose' in j['errors']['cancel']"

# A server that refuses a watch at creation (the fake one allows 64 per stream): exit 1 before
# any put, and the message gives the server's reason.
"$fake" ok >"$dir/limit.port" 2>/dev/null &
spid=$!
port=""
for _ in $(seq 100); do
    port=$(awk '/^port / {print $2}' "$dir/limit.port")
    [ -n "$port" ] && break
    sleep 0.05
done
out=$(timeout 60 "$bench" --insecure --endpoints "http://127.0.0.1:$port" --watchers 65 --per-stream 65 \
    --rate 10 --duration 1 --quiet 2>&1)
rc=$?
kill -TERM "$spid"; wait "$spid" 2>/dev/null; spid=""
if [ $rc -eq 1 ] && grep -q "canceled at creation: fake-server: too many watches" <<<"$out" &&
    ! grep -q "^puts:" <<<"$out"; then
    echo "ok: a watch refused at creation -> exit 1: $out"
else fail "watch refused at creation: exit $rc, output: $out"; fi

echo "$fails failed"
[ $fails -eq 0 ]
