#!/usr/bin/env bash
# bench-watch.sh: Watch fan-out, craft side by side with etcd 3.4 on the same machine
# (docs/benchmarks.md, "Watch fan-out").
#
#   bash scripts/bench-watch.sh [--rounds N] [--seconds S] [--watchers W] [--rate R]
#                               [--conns C] [--per-stream K] [--only craft|etcd]
#
#   --rounds N      rounds (default 3); each round runs craft then etcd, each on a fresh
#                   3-member cluster (loopback, mutual TLS on client and peer traffic, fsync on)
#   --seconds S     seconds of puts per run (default 10)
#   --watchers W    watchers on one prefix (default 1000)
#   --rate R        puts per second of the one writer (default 100: 1,000 watchers x 100/s
#                   is 100,000 events/s, which two cores shared by three members and the
#                   client can deliver; raise it to find where a system falls behind)
#   --conns C       watch connections, round-robin over the three members (default 12, so
#                   4 per member)
#   --per-stream K  watches per Watch stream (default: W / C rounded up, one stream per
#                   connection carrying all its watches, as etcd's client library does)
#   --only SYS      run one system only
# The writer puts to the leader; the watchers are spread over all three members. Each run is
# watch-bench (bench/watch_bench.c): events/s delivered, put-to-event p50/p99/p99.9/max (also
# apart for the watchers on the leader and on each follower), watch creation time, client CPU
# per event, and the exactly-once check (lost, duplicated or out of
# order, mismatched: any of them makes the run FAIL). The server CPU per event (user + system
# of the three members during the run, from /proc) is added. Prints one row per run, then the
# medians per system and the ratios craft/etcd.
# BENCH_CRAFTD runs that craftd binary instead of the tree's (e.g. one built from another branch).
# BENCH_PORT_OFFSET shifts the ports (craft 41479.., etcd 51479..); BAZEL_STARTUP as in bench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3 seconds=10 watchers=1000 rate=100 conns=12 per_stream="" only=""
die() { echo "bench-watch: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
    --rounds) [ $# -ge 2 ] || die "--rounds needs a value"; rounds=$2; shift 2 ;;
    --seconds) [ $# -ge 2 ] || die "--seconds needs a value"; seconds=$2; shift 2 ;;
    --watchers) [ $# -ge 2 ] || die "--watchers needs a value"; watchers=$2; shift 2 ;;
    --rate) [ $# -ge 2 ] || die "--rate needs a value"; rate=$2; shift 2 ;;
    --conns) [ $# -ge 2 ] || die "--conns needs a value"; conns=$2; shift 2 ;;
    --per-stream) [ $# -ge 2 ] || die "--per-stream needs a value"; per_stream=$2; shift 2 ;;
    --only) [ $# -ge 2 ] || die "--only needs a value"; only=$2; shift 2 ;;
    -h | --help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (--help)" ;;
    esac
done
num() { [[ "$2" =~ ^[0-9]+$ ]] && [ "$2" -ge "$3" ] && [ "$2" -le "$4" ] || die "$1 must be $3..$4"; }
num --rounds "$rounds" 1 50
num --seconds "$seconds" 1 600
num --watchers "$watchers" 1 100000
num --rate "$rate" 1 100000
num --conns "$conns" 1 1024
[ -z "$per_stream" ] || num --per-stream "$per_stream" 1 10000
[ -n "$per_stream" ] || per_stream=$(((watchers + conns - 1) / conns))
[ $((rate * seconds)) -le 10000000 ] || die "--rate x --seconds must be at most 10,000,000 puts"
case "$only" in "" | craft | etcd) ;; *) die "--only must be craft or etcd" ;; esac
systems=(craft etcd)
[ -z "$only" ] || systems=("$only")

. scripts/bench-lib.sh
bench_build //bench:watch-bench
wbench=$bin/bench/watch-bench

o=${BENCH_PORT_OFFSET:-0}
bench_ports=(40479 50479)
bench_check_ports "${systems[@]}"

dir=$(mktemp -d "${TMPDIR:-/tmp}/craft-watch.XXXXXX")
pids=()
cleanup() { bench_stop_pids; rm -rf "$dir"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
bench_certs "$dir/certs" n1 n2 n3 e1 e2 e3
c=$dir/certs
tls=(--cacert "$c/ca.pem" --cert "$c/client.pem" --key "$c/client-key.pem")

clk=$(getconf CLK_TCK)
mkdir -p "$dir/results"
echo "bench-watch: $watchers watchers ($per_stream per stream, $conns connections over 3 members)," \
    "$rate puts/s for $seconds s, $rounds round(s)"
for r in $(seq "$rounds"); do
    for sys in "${systems[@]}"; do
        bench_fresh "$sys" watch # sets eps and LEADER
        out=$dir/results/$sys.$r.json
        t0=$(bench_cpu_ticks "${pids[@]}")
        "$wbench" --endpoints "$eps" --writer-endpoint "$LEADER" "${tls[@]}" --watchers "$watchers" \
            --per-stream "$per_stream" --conns "$conns" --rate "$rate" --duration "$seconds" \
            --json --quiet >"$out" 2>"$dir/results/$sys.$r.err" || true
        echo $(($(bench_cpu_ticks "${pids[@]}") - t0)) >"$dir/results/$sys.$r.cpu"
        bench_stop_pids
        python3 - "$out" "$sys" "$r" "$clk" <<'PY'
import json, sys
path, s, r, clk = sys.argv[1:]
try:
    j = json.load(open(path)); l = j["latency"]
    cpu = int(open(path[:-5] + ".cpu").read()) * 1e6 / int(clk) / max(j["events"], 1)
    ok = "ok" if j["violations"] == 0 and j["put_errors"] == 0 and j["stream_errors"] == 0 else "FAIL"
    by = j["latency_by_endpoint"]; lead = by[j["writer_endpoint"]]
    fol = " / ".join("%.2f" % v["p50_ms"] for k, v in by.items() if k != j["writer_endpoint"])
    print(f"bench-watch: {s:<5} round {r}: {j['events_per_sec']:>10,.0f} events/s  p50 {l['p50_ms']:.2f} ms"
          f"  p99 {l['p99_ms']:.2f} ms  p99.9 {l['p999_ms']:.2f} ms  max {l['max_ms']:.1f} ms"
          f"  (p50 leader {lead['p50_ms']:.2f} / followers {fol} ms)"
          f"  created in {j['create_ms']:.0f} ms  server CPU {cpu:.1f} us/event"
          f"  client CPU {j['client_cpu_us_per_event']:.1f} us/event  exactly once: {ok}"
          f" (lost {j['lost']}, dup {j['duplicated']}, mismatched {j['mismatched']},"
          f" put errors {j['put_errors']}, stream errors {j['stream_errors']})")
except Exception as e:
    err = open(path[:-5] + ".err").read().strip().splitlines()
    print(f"bench-watch: {s} round {r}: no result ({e}): {err[-1] if err else ''}")
PY
    done
done

echo
python3 - "$dir/results" "$rounds" "$clk" "${systems[@]}" <<'PY'
import json, os, statistics, sys
d, rounds, clk, systems = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
def med(xs): return statistics.median(xs) if xs else float("nan")
def on_leader(j): return j["latency_by_endpoint"][j["writer_endpoint"]]
def followers(j): return [v for k, v in j["latency_by_endpoint"].items() if k != j["writer_endpoint"]]
keys = [("events/s", lambda j, c: j["events_per_sec"], "{:,.0f}"),
        ("p50 ms", lambda j, c: j["latency"]["p50_ms"], "{:.2f}"),
        ("p99 ms", lambda j, c: j["latency"]["p99_ms"], "{:.2f}"),
        ("p99.9 ms", lambda j, c: j["latency"]["p999_ms"], "{:.2f}"),
        ("p50 ms, watchers on the leader", lambda j, c: on_leader(j)["p50_ms"], "{:.2f}"),
        ("p50 ms, watchers on followers (worse)", lambda j, c: max(f["p50_ms"] for f in followers(j)), "{:.2f}"),
        ("p99 ms, watchers on the leader", lambda j, c: on_leader(j)["p99_ms"], "{:.2f}"),
        ("p99 ms, watchers on followers (worse)", lambda j, c: max(f["p99_ms"] for f in followers(j)), "{:.2f}"),
        ("max ms", lambda j, c: j["latency"]["max_ms"], "{:.1f}"),
        ("create ms", lambda j, c: j["create_ms"], "{:.0f}"),
        ("server CPU us/event", lambda j, c: c * 1e6 / clk / max(j["events"], 1), "{:.1f}"),
        ("client CPU us/event", lambda j, c: j["client_cpu_us_per_event"], "{:.1f}")]
res, bad = {}, {}
for s in systems:
    runs = []
    for r in range(1, rounds + 1):
        try:
            j = json.load(open(os.path.join(d, f"{s}.{r}.json")))
            c = int(open(os.path.join(d, f"{s}.{r}.cpu")).read())
        except Exception:
            continue
        runs.append((j, c))
    res[s] = {k: med([f(j, c) for j, c in runs]) for k, f, _ in keys}
    bad[s] = sum(1 for j, c in runs if j["violations"] or j["put_errors"] or j["stream_errors"])
    res[s]["n"] = len(runs)
def fmt(v, f): return "-" if v != v else f.format(v)
hdr = "| figure | " + " | ".join(systems) + (" | craft/etcd |" if len(systems) == 2 else " |")
print(f"medians of {rounds} round(s); runs with results: " +
      ", ".join(f"{s} {res[s]['n']} ({bad[s]} failing the exactly-once check)" for s in systems))
print(hdr)
print("|---" * (len(systems) + 1 + (len(systems) == 2)) + "|")
for k, _, f in keys:
    row = f"| {k} | " + " | ".join(fmt(res[s][k], f) for s in systems)
    if len(systems) == 2:
        a, b = res["craft"][k], res["etcd"][k]
        row += " | " + ("-" if a != a or b != b or b == 0 else f"{a / b:.2f}x")
    print(row + " |")
PY
