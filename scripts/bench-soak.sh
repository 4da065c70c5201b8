#!/usr/bin/env bash
# bench-soak.sh: a sustained put load on a 3-member craft cluster, with each member's resident
# memory and data directory sizes sampled as it runs, then (optionally) the time a full restart
# takes - the numbers the snapshot issue is judged by (docs/benchmarks.md, "Soak").
#
#   bash scripts/bench-soak.sh [--seconds S] [--every E] [--restart] [CRAFTD=PATH] [FLAG=--x=y]...
#
#   --seconds S   how long the load runs (default 120, at most 3600)
#   --every E     seconds between samples (default 10)
#   --restart     afterwards kill -9 every member, start them again with the same data and
#                 measure the time until a leader answers and a linearizable read succeeds
#   CRAFTD=PATH   the craftd to run (default: this tree's, built -c opt)
#   FLAG=--x=y    one more craftd flag (repeatable), e.g. FLAG=--snapshot-count=10000
# Load: craft-bench, 16 connections x 16 in flight over the three members, 1 KiB values over
# 100,000 keys. Prints one row per sample: elapsed seconds, puts so far, and per member RSS (MB),
# raft/ and kv/ sizes (MB); then the restart time. BENCH_PORT_OFFSET shifts the ports
# (56379-58380); BAZEL_STARTUP as in bench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=120 every=10 restart="" craftd="" flags=()
die() { echo "bench-soak: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
    --seconds) [ $# -ge 2 ] || die "--seconds needs a value"; seconds=$2; shift 2 ;;
    --every) [ $# -ge 2 ] || die "--every needs a value"; every=$2; shift 2 ;;
    --restart) restart=1; shift ;;
    -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    CRAFTD=*) craftd=${1#*=}; [ -x "$craftd" ] || die "$craftd is not an executable"; shift ;;
    FLAG=--*) flags+=("${1#*=}"); shift ;;
    *) die "unknown argument '$1' (--help)" ;;
    esac
done
[[ "$seconds" =~ ^[0-9]+$ ]] && [ "$seconds" -ge 1 ] && [ "$seconds" -le 3600 ] ||
    die "--seconds must be 1..3600"
[[ "$every" =~ ^[0-9]+$ ]] && [ "$every" -ge 1 ] && [ "$every" -le "$seconds" ] ||
    die "--every must be 1..--seconds"

. scripts/bench-lib.sh
bash scripts/deps.sh
read -r -a bzl <<<"${BAZEL_STARTUP:-}"
bazel "${bzl[@]}" build -c opt //services:craftd //bench:craft-bench 2>&1 | tail -1
bin=$(bazel "${bzl[@]}" info -c opt bazel-bin 2>/dev/null)
[ -n "$craftd" ] || craftd=$bin/services/craftd
cbench=$bin/bench/craft-bench

dir=$(mktemp -d "${TMPDIR:-/tmp}/craft-soak.XXXXXX")
pids=() load=""
cleanup() {
    [ -z "$load" ] || kill "$load" 2>/dev/null || true
    bench_stop_pids
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

o=${BENCH_PORT_OFFSET:-0}
client=($((56379 + o)) $((57379 + o)) $((58379 + o)))
peer=($((56380 + o)) $((57380 + o)) $((58380 + o)))
for p in "${client[@]}" "${peer[@]}"; do
    if ss -Hltn "sport = :$p" 2>/dev/null | grep -q .; then die "port $p is in use"; fi
done
c=$dir/certs
bench_certs "$c" n1 n2 n3
tls=(--cacert "$c/ca.pem" --cert "$c/client.pem" --key "$c/client-key.pem")
eps="https://127.0.0.1:${client[0]},https://127.0.0.1:${client[1]},https://127.0.0.1:${client[2]}"
cluster="n1=https://127.0.0.1:${peer[0]},n2=https://127.0.0.1:${peer[1]},n3=https://127.0.0.1:${peer[2]}"

start_members() {
    local k n
    for k in 0 1 2; do
        n=n$((k + 1))
        pids+=("$(bench_craftd "$dir/$n.log" $n "$dir/data/$n" "${client[$k]}" "${peer[$k]}" \
            "$cluster" craft-soak "$c" "$craftd" "${flags[@]+"${flags[@]}"}")")
    done
}

mb() { du -sm "$1" 2>/dev/null | cut -f1 || echo 0; }
rss() { awk '/^VmRSS:/ {printf "%d", $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo 0; }

start_members
bench_wait_leader "$eps" "${tls[@]}" >/dev/null || die "no leader after 30 s (see $dir/*.log)"
"$cbench" --endpoints "$eps" "${tls[@]}" --conns 16 --inflight 16 --val-size 1024 \
    --key-space 100000 --duration "$seconds" --json --quiet >"$dir/load.json" &
load=$!
echo "bench-soak: ${seconds} s of 1 KiB puts, flags: ${flags[*]:-(none)}"
printf '| s | n1 RSS MB | n2 RSS MB | n3 RSS MB | n1 raft/ MB | n2 raft/ MB | n3 raft/ MB | n1 kv/ MB | n1 snap/ MB |\n'
printf '|---|---|---|---|---|---|---|---|---|\n'
t0=$(date +%s)
while kill -0 "$load" 2>/dev/null; do
    sleep "$every"
    kill -0 "$load" 2>/dev/null || break
    printf '| %d | %s | %s | %s | %s | %s | %s | %s | %s |\n' $(($(date +%s) - t0)) \
        "$(rss "${pids[0]}")" "$(rss "${pids[1]}")" "$(rss "${pids[2]}")" \
        "$(mb "$dir/data/n1/raft")" "$(mb "$dir/data/n2/raft")" "$(mb "$dir/data/n3/raft")" \
        "$(mb "$dir/data/n1/kv")" "$(mb "$dir/data/n1/snap")"
done
wait "$load" || true
load=""
python3 - "$dir/load.json" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))["total"]
print(f"bench-soak: {t['ops']:,} puts, {t['ops_per_sec']:,.0f}/s, p50 {t['p50_ms']:.2f} ms, p99 {t['p99_ms']:.2f} ms")
PY
if [ -n "$restart" ]; then
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.05; done; done
    pids=()
    t1=$(date +%s%N)
    start_members
    bench_wait_leader "$eps" "${tls[@]}" >/dev/null || die "no leader 30 s after the restart"
    ok=""
    for _ in $(seq 1200); do # a read every 0.05 s, for up to a minute
        if ETCDCTL_API=3 etcdctl --endpoints "$eps" "${tls[@]}" --command-timeout 2s get soak-probe \
            >/dev/null 2>&1; then ok=1; break; fi
        sleep 0.05
    done
    [ -n "$ok" ] || die "no linearizable read succeeded within a minute of the restart"
    echo "bench-soak: restart after kill -9 of every member: a leader and a linearizable read in" \
        "$(( ($(date +%s%N) - t1) / 1000000 )) ms"
fi
