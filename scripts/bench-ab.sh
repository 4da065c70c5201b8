#!/usr/bin/env bash
# bench-ab.sh: craftd variants side by side on one workload, alternating round by round, for
# before/after measurements of one change (docs/benchmarks.md, "Today's changes").
#
#   bash scripts/bench-ab.sh [--rounds R] [--seconds S] [--workload W] VARIANT VARIANT...
#
# A VARIANT is "-" (this tree's craftd and craft-bench, built -c opt) or space-separated words:
#   CRAFTD=PATH    the craftd binary to run (e.g. one built from the commit before the change)
#   CBENCH=PATH    the craft-bench binary to drive it with
#   FLAG=--x=y     one more craftd flag (repeatable)
#   ENV=K=V        one more environment variable for craftd and craft-bench (repeatable)
#   DATA=DIR       where the members keep their data (e.g. /dev/shm: fsync costs nothing there)
# Workloads (key 16 B, value 256 B): put-1 (1 connection x 1 in flight, to the leader),
# put-64 (4 x 16 over the 3 members), put-1024 (16 x 64 over the members), put-1024-leader
# (16 x 64, all to the leader), sread-1024 and lread-1024 (16 x 64 over 10,000 preloaded keys).
# Every run gets a fresh 3-member cluster on loopback (mutual TLS, fsync on); R rounds of
# S seconds (defaults 3 and 6), variants in order within each round. Prints each run, then the
# medians per variant: ops/s, p50, p99, server CPU per operation (user + system of the three
# members from /proc) and craft-bench's own CPU per call, with ratios to the first variant.
# BENCH_PORT_OFFSET shifts the ports (46379-48380); BAZEL_STARTUP as in bench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3 seconds=6 workload=put-1024
die() { echo "bench-ab: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
    --rounds) [ $# -ge 2 ] || die "--rounds needs a value"; rounds=$2; shift 2 ;;
    --seconds) [ $# -ge 2 ] || die "--seconds needs a value"; seconds=$2; shift 2 ;;
    --workload) [ $# -ge 2 ] || die "--workload needs a value"; workload=$2; shift 2 ;;
    -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --*) die "unknown flag '$1' (--help)" ;;
    *) break ;;
    esac
done
[ $# -ge 1 ] || die "name at least one variant ('-' is this tree; --help)"
[[ "$rounds" =~ ^[0-9]+$ ]] && [ "$rounds" -ge 1 ] && [ "$rounds" -le 50 ] || die "--rounds must be 1..50"
[[ "$seconds" =~ ^[0-9]+(\.[0-9]+)?$ ]] && awk "BEGIN{exit !($seconds > 0 && $seconds <= 600)}" ||
    die "--seconds must be in (0, 600]"
case "$workload" in
put-1) load=(--conns 1 --inflight 1 --mix put=1 --key-space 100000); to_leader=1 ;;
put-64) load=(--conns 4 --inflight 16 --mix put=1 --key-space 100000); to_leader="" ;;
put-1024) load=(--conns 16 --inflight 64 --mix put=1 --key-space 100000); to_leader="" ;;
put-1024-leader) load=(--conns 16 --inflight 64 --mix put=1 --key-space 100000); to_leader=1 ;;
sread-1024) load=(--conns 16 --inflight 64 --mix srange=1 --key-space 10000); to_leader="" ;;
lread-1024) load=(--conns 16 --inflight 64 --mix range=1 --key-space 10000); to_leader="" ;;
*) die "unknown workload '$workload' (put-1, put-64, put-1024, put-1024-leader, sread-1024, lread-1024)" ;;
esac
variants=("$@")
for v in "${variants[@]}"; do
    [ "$v" = - ] && continue
    for w in $v; do
        case "$w" in
        CRAFTD=* | CBENCH=*) [ -x "${w#*=}" ] || die "variant '$v': ${w#*=} is not an executable" ;;
        FLAG=--* | DATA=/* | ENV=*=*) ;;
        *) die "variant '$v': '$w' is not CRAFTD=, CBENCH=, FLAG=--, ENV=K=V or DATA=/dir" ;;
        esac
    done
done

. scripts/bench-lib.sh
bash scripts/deps.sh
read -r -a bzl <<<"${BAZEL_STARTUP:-}"
bazel "${bzl[@]}" build -c opt //services:craftd //bench:craft-bench 2>&1 | tail -1
bin=$(bazel "${bzl[@]}" info -c opt bazel-bin 2>/dev/null)

dir=$(mktemp -d "${TMPDIR:-/tmp}/craft-ab.XXXXXX")
pids=()
data=""
cleanup() {
    bench_stop_pids
    [ -z "$data" ] || rm -rf "$data" # a DATA= directory outside $dir
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

o=${BENCH_PORT_OFFSET:-0}
client=($((46379 + o)) $((47379 + o)) $((48379 + o)))
peer=($((46380 + o)) $((47380 + o)) $((48380 + o)))
for p in "${client[@]}" "${peer[@]}"; do
    if ss -Hltn "sport = :$p" 2>/dev/null | grep -q .; then die "port $p is in use"; fi
done
c=$dir/certs
bench_certs "$c" n1 n2 n3
tls=(--cacert "$c/ca.pem" --cert "$c/client.pem" --key "$c/client-key.pem")
eps="https://127.0.0.1:${client[0]},https://127.0.0.1:${client[1]},https://127.0.0.1:${client[2]}"
cluster="n1=https://127.0.0.1:${peer[0]},n2=https://127.0.0.1:${peer[1]},n3=https://127.0.0.1:${peer[2]}"

# Sets craftd, cbench, flags, envs and data for variant $1.
parse_variant() {
    craftd=$bin/services/craftd cbench=$bin/bench/craft-bench flags=() envs=() data=$dir/data
    [ "$1" = - ] && return 0
    local w
    for w in $1; do
        case "$w" in
        CRAFTD=*) craftd=${w#*=} ;;
        CBENCH=*) cbench=${w#*=} ;;
        FLAG=*) flags+=("${w#*=}") ;;
        ENV=*) envs+=("${w#*=}") ;;
        DATA=*) data=${w#*=}/craft-ab.$$ ;;
        esac
    done
}

clk=$(getconf CLK_TCK)

mkdir -p "$dir/results"
for r in $(seq "$rounds"); do
    for i in "${!variants[@]}"; do
        parse_variant "${variants[$i]}"
        rm -rf "$data"
        for k in 0 1 2; do
            n=n$((k + 1))
            pids+=("$(bench_craftd "$dir/v$i-r$r-$n.log" $n "$data/$n" "${client[$k]}" "${peer[$k]}" \
                "$cluster" craft-ab "$c" env "${envs[@]+"${envs[@]}"}" "$craftd" "${flags[@]+"${flags[@]}"}")")
        done
        leader=$(bench_wait_leader "$eps" "${tls[@]}") || die "variant $i has no leader after 30 s (see $dir/v$i-r$r-*.log)"
        targets=$eps
        [ -n "$to_leader" ] && targets=$leader
        if [[ "$workload" == *read* ]]; then
            env "${envs[@]+"${envs[@]}"}" "$cbench" --endpoints "$eps" "${tls[@]}" --conns 4 --inflight 64 \
                --key-space 10000 --preload --total 1 --quiet >/dev/null
        fi
        out=$dir/results/v$i-r$r.json
        t0=$(bench_cpu_ticks "${pids[@]}")
        env "${envs[@]+"${envs[@]}"}" "$cbench" --endpoints "$targets" "${tls[@]}" "${load[@]}" \
            --duration "$seconds" --json --quiet >"$out" || true
        echo $(($(bench_cpu_ticks "${pids[@]}") - t0)) >"$dir/results/v$i-r$r.cpu"
        bench_stop_pids
        rm -rf "$data"
        python3 - "$out" "$r" "$i" "${variants[$i]}" "$clk" <<'PY'
import json, sys
path, r, i, v, clk = sys.argv[1:]
try:
    j = json.load(open(path)); t = j["total"]
    cpu = int(open(path[:-5] + ".cpu").read()) * 1e6 / int(clk) / max(t["ops"], 1)
    print(f"bench-ab: round {r} variant {i} [{v}]: {t['ops_per_sec']:,.0f} ops/s  p50 {t['p50_ms']:.3f} ms"
          f"  p99 {t['p99_ms']:.3f} ms  server CPU {cpu:.1f} us/op  client CPU "
          f"{j.get('client_cpu_us_per_call', float('nan')):.1f} us/op  errors {j['errors']}")
except Exception as e:
    print(f"bench-ab: round {r} variant {i}: no result ({e})")
PY
    done
done

echo
python3 - "$dir/results" "$rounds" "$clk" "$workload" "${variants[@]}" <<'PY'
import json, os, statistics, sys
d, rounds, clk, workload, variants = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5:]
def med(xs): return statistics.median(xs) if xs else float("nan")
rows = []
for i, v in enumerate(variants):
    ops, p50, p99, cpu, ccpu, err = [], [], [], [], [], 0
    for r in range(1, rounds + 1):
        try:
            j = json.load(open(os.path.join(d, f"v{i}-r{r}.json"))); t = j["total"]
            ticks = int(open(os.path.join(d, f"v{i}-r{r}.cpu")).read())
        except Exception:
            continue
        ops.append(t["ops_per_sec"]); p50.append(t["p50_ms"]); p99.append(t["p99_ms"])
        cpu.append(ticks * 1e6 / clk / max(t["ops"], 1)); ccpu.append(j.get("client_cpu_us_per_call", float("nan")))
        err += j["errors"]
    rows.append((v, med(ops), med(p50), med(p99), med(cpu), med(ccpu), err, len(ops)))
print(f"{workload}: medians of {rounds} round(s)")
print("| variant | ops/s | x first | p50 ms | x first | p99 ms | server CPU us/op | x first | client CPU us/op | errors |")
print("|---|---|---|---|---|---|---|---|---|---|")
b = rows[0]
def x(a, c): return "-" if (a != a or c != c or c == 0) else f"{a / c:.2f}x"
for v, o, p5, p9, c, cc, e, n in rows:
    print(f"| {v} | {o:,.0f} | {x(o, b[1])} | {p5:.3f} | {x(p5, b[2])} | {p9:.3f} | {c:.1f} | {x(c, b[4])} | {cc:.1f} | {e} |")
PY
