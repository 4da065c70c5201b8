#!/usr/bin/env bash
# watch-bench against a real single-member server over mutual TLS: a fan-out over several
# streams and connections delivers every put to every watcher exactly once (exit 0, the JSON
# counts agree with each other), one watch per stream works too, and a server killed during
# the run makes watch-bench exit 1 with a message saying what broke (never a hang, never 0).
#   watch_bench_smoke_test.sh WATCH-BENCH CRAFT-CERTS SERVER
# SERVER is a craftd binary, or "etcd" for Debian's etcd 3.4 (/usr/bin/etcd).
set -uo pipefail
bench=$1 tool=$2 server=$3
dir=$(mktemp -d "${TEST_TMPDIR:-/tmp}/wsmoke.XXXXXX")
pid=""
trap '[ -n "$pid" ] && { kill -9 "$pid"; wait "$pid"; } 2>/dev/null; rm -rf "$dir"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
"$tool" ca "$dir/c" >/dev/null && "$tool" node "$dir/c" n1 --ip 127.0.0.1 >/dev/null &&
    "$tool" client "$dir/c" cl >/dev/null || { echo "cannot make certificates"; exit 1; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cp=$(port) pp=$(port)
common=(--name n1 --data-dir "$dir/d" --listen-client-urls "https://127.0.0.1:$cp"
    --advertise-client-urls "https://127.0.0.1:$cp"
    --listen-peer-urls "https://127.0.0.1:$pp" --initial-advertise-peer-urls "https://127.0.0.1:$pp"
    --initial-cluster "n1=https://127.0.0.1:$pp" --heartbeat-interval 20 --election-timeout 200
    --cert-file "$dir/c/n1.pem" --key-file "$dir/c/n1-key.pem" --trusted-ca-file "$dir/c/ca.pem"
    --peer-cert-file "$dir/c/n1.pem" --peer-key-file "$dir/c/n1-key.pem"
    --peer-trusted-ca-file "$dir/c/ca.pem")
if [ "$server" = etcd ]; then
    command -v etcd >/dev/null || { echo "etcd not installed (apt-get install etcd-server)"; exit 1; }
    etcd "${common[@]}" --client-cert-auth --peer-client-cert-auth >"$dir/server.log" 2>&1 &
else
    "$server" "${common[@]}" >"$dir/server.log" 2>&1 &
fi
pid=$!
b=("$bench" --endpoints "https://127.0.0.1:$cp" --cacert "$dir/c/ca.pem" --cert "$dir/c/cl.pem"
    --key "$dir/c/cl-key.pem" --deadline-ms 5000)
# Wait (bounded) for the member to elect itself and take writes: a one-watcher, one-put run.
up=0
for _ in $(seq 100); do
    if timeout 10 "${b[@]}" --watchers 1 --rate 1 --duration 1 --drain-ms 2000 --quiet >/dev/null \
        2>"$dir/up.err"; then
        up=1; break
    fi
    grep -q "gRPC status 12" "$dir/up.err" && break # UNIMPLEMENTED: no Watch service, no retry
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
done
[ $up = 1 ] || { echo "FAIL: $server did not serve watches: $(tail -1 "$dir/up.err")"; tail -20 "$dir/server.log"; exit 1; }

# 40 watchers, 7 per stream (6 streams, the last with 5) over 3 connections, 100 puts.
out=$(timeout 60 "${b[@]}" --watchers 40 --per-stream 7 --conns 3 --rate 100 --duration 1 --json --quiet)
rc=$?
if [ $rc -eq 0 ] && python3 - "$out" <<'PY'
import json, sys
j = json.loads(sys.argv[1])
assert j["streams"] == 6 and j["conns"] == 3, j
assert j["puts_sent"] == j["puts_acked"] == 100 and j["put_errors"] == 0, j
assert j["events"] == j["events_expected"] == 40 * 100, j
assert j["latency"]["count"] == j["events"], j["latency"]
assert list(j["latency_by_endpoint"]) == j["endpoints"], j["latency_by_endpoint"]
assert sum(v["count"] for v in j["latency_by_endpoint"].values()) == j["events"]
for k in ("lost", "duplicated", "mismatched", "foreign", "canceled", "not_created",
          "watchers_with_violations", "violations", "stream_errors"):
    assert j[k] == 0, (k, j)
l = j["latency"]
assert 0 < l["p50_ms"] <= l["p99_ms"] <= l["p999_ms"] <= l["max_ms"] < 10000, l
# an event cannot arrive before its put was sent, nor the whole run take more than a minute
assert 0 < j["events_per_sec"] <= 40 * 100 / 0.5, j["events_per_sec"]
assert 0 < j["client_cpu_us_per_event"] < 1e5, j["client_cpu_us_per_event"]
assert j["create_ms"] > 0, j
PY
then echo "ok: 40 watchers over 6 streams and 3 connections saw 100 puts each, exactly once"
else fail "fan-out run: exit $rc, output: $out"; fi

# One watch per stream, text output.
out=$(timeout 60 "${b[@]}" --watchers 5 --per-stream 1 --conns 2 --rate 50 --duration 1 --quiet)
rc=$?
if [ $rc -eq 0 ] && grep -q "^events: 250 of 250 delivered" <<<"$out" &&
    grep -q "^exactly once: lost 0, duplicated or out of order 0, mismatched 0, foreign 0, canceled 0, not created 0: 0 watchers with violations" <<<"$out" &&
    grep -qE "^put-to-event +250 " <<<"$out"; then
    echo "ok: one watch per stream: $(grep '^events' <<<"$out")"
else fail "one watch per stream: exit $rc, output: $out"; fi

# The server dies mid-run: watch-bench must say so and exit 1. Its "created" line on stderr
# says when the watches exist; the kill comes after that (bounded wait), then a bounded exit.
timeout 60 "${b[@]}" --watchers 4 --rate 20 --duration 5 --drain-ms 1000 --deadline-ms 1000 \
    >"$dir/kill.out" 2>"$dir/kill.err" &
wb=$!
for _ in $(seq 100); do grep -q "watches created" "$dir/kill.err" && break; sleep 0.1; done
kill -9 "$pid"; wait "$pid" 2>/dev/null; pid=""
wait "$wb"; rc=$?
if [ $rc -eq 1 ] && grep -qE "stream errors: [1-9]|put errors: [1-9]" "$dir/kill.out"; then
    echo "ok: server killed mid-run -> exit 1: $(grep -E 'errors:' "$dir/kill.out" | head -1)"
else fail "server killed mid-run: exit $rc, output: $(cat "$dir/kill.out" "$dir/kill.err")"; fi

echo "$fails failed"
[ $fails -eq 0 ]
