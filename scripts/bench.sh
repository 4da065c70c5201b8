#!/usr/bin/env bash
# bench.sh: craft vs etcd, side by side on this machine, with the same client (craft-bench).
#
#   bash scripts/bench.sh [--seconds S] [--rounds R] [--workloads a,b,...] [--only craft|etcd] [--keep DIR]
#
# Starts a 3-member craft cluster (craftd) and a 3-member etcd cluster (Debian's etcd 3.4), both
# on loopback with mutual TLS on client and peer traffic (real certificates from certs/craft-certs,
# no --peer-auto-tls) and fsync on (both defaults), each in its own temporary data directory. Then
# runs every workload R times, alternating craft, etcd, craft, etcd..., S seconds per run, and
# prints one table of medians with the ratios craft/etcd. Both clusters are stopped on exit
# (trap), whatever happens. Workloads (key 16 B, value 256 B):
#   put-1        puts, 1 connection x 1 in flight, to the leader (latency floor)
#   put-64       puts, 4 connections x 16, spread over the 3 members (followers forward)
#   put-1024     puts, 16 connections x 64, spread over the 3 members
#   lread-1024   linearizable ranges (1 key), 16 x 64, over 10,000 preloaded keys
#   sread-1024   serializable ranges, 16 x 64, same keys
#   mix-1024     90% linearizable ranges / 10% puts, 16 x 64, same keys
# The table also gives server CPU per operation (user + system time of the 3 server processes
# during a run, over its successful operations), steadier than ops/s on a shared machine, and
# the client's CPU per call (craft-bench's own): client and servers share the cores.
# Defaults: 5 s x 3 rounds, about 4 minutes in all on 2 cores. Everything (certificates, data,
# logs, raw JSON results) lives in a temporary directory removed at the end unless --keep DIR.
# Environment: BAZEL_STARTUP (e.g. --output_base=...) is passed to bazel before its command;
# BENCH_PORT_OFFSET (e.g. 100) shifts every port, so two benchmarks can run side by side;
# CRAFTD_FLAGS (e.g. "--backend-sync-interval 0") adds flags to every craftd;
# BENCH_CRAFTD runs that craftd binary instead of the tree's (before/after comparisons).
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)

seconds=5 rounds=3 keep="" only=""
all_workloads="put-1,put-64,put-1024,lread-1024,sread-1024,mix-1024"
workloads=$all_workloads
die() { echo "bench: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
    --seconds) [ $# -ge 2 ] || die "--seconds needs a value"; seconds=$2; shift 2 ;;
    --rounds) [ $# -ge 2 ] || die "--rounds needs a value"; rounds=$2; shift 2 ;;
    --workloads) [ $# -ge 2 ] || die "--workloads needs a value"; workloads=$2; shift 2 ;;
    --only) [ $# -ge 2 ] || die "--only needs a value"; only=$2; shift 2 ;;
    --keep) [ $# -ge 2 ] || die "--keep needs a value"; keep=$2; shift 2 ;;
    -h | --help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (--help)" ;;
    esac
done
[[ "$seconds" =~ ^[0-9]+(\.[0-9]+)?$ ]] && awk "BEGIN{exit !($seconds > 0 && $seconds <= 600)}" ||
    die "--seconds must be in (0, 600]"
[[ "$rounds" =~ ^[0-9]+$ ]] && [ "$rounds" -ge 1 ] && [ "$rounds" -le 50 ] || die "--rounds must be 1..50"
for w in ${workloads//,/ }; do
    [[ ",$all_workloads," == *",$w,"* ]] || die "unknown workload '$w' ($all_workloads)"
done
case "$only" in "" | craft | etcd) ;; *) die "--only craft or --only etcd" ;; esac
systems=(craft etcd)
[ -n "$only" ] && systems=("$only")

. scripts/bench-lib.sh
bash scripts/deps.sh
read -r -a bzl <<<"${BAZEL_STARTUP:-}"
echo "bench: building craftd and craft-bench (-c opt)"
bazel "${bzl[@]}" build -c opt //services:craftd //bench:craft-bench 2>&1 | tail -1
bin=$(bazel "${bzl[@]}" info -c opt bazel-bin 2>/dev/null)
craftd=${BENCH_CRAFTD:-$bin/services/craftd}
[ -x "$craftd" ] || die "no craftd at $craftd"
cbench=$bin/bench/craft-bench
command -v etcd >/dev/null || die "etcd not found (apt-get install etcd-server)"

if [ -n "$keep" ]; then
    mkdir -p "$keep"
    dir=$(cd "$keep" && pwd)
else
    dir=$(mktemp -d "${TMPDIR:-/tmp}/craft-bench.XXXXXX")
fi
pids=()
cleanup() {
    bench_stop_pids
    [ -n "$keep" ] || rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Ports: craft 4x379/4x380, etcd 5x379/5x380 (x = 1, 2, 3), loopback only.
# BENCH_PORT_OFFSET (default 0) shifts them all, so two benchmarks can run on one machine.
o=${BENCH_PORT_OFFSET:-0}
craft_client=($((41379 + o)) $((42379 + o)) $((43379 + o)))
craft_peer=($((41380 + o)) $((42380 + o)) $((43380 + o)))
etcd_client=($((51379 + o)) $((52379 + o)) $((53379 + o)))
etcd_peer=($((51380 + o)) $((52380 + o)) $((53380 + o)))
for p in "${craft_client[@]}" "${craft_peer[@]}" "${etcd_client[@]}" "${etcd_peer[@]}"; do
    if ss -Hltn "sport = :$p" 2>/dev/null | grep -q .; then die "port $p is in use"; fi
done

echo "bench: certificates in $dir/certs"
bench_certs "$dir/certs" n1 n2 n3 e1 e2 e3
c=$dir/certs
tls=(--cacert "$c/ca.pem" --cert "$c/client.pem" --key "$c/client-key.pem")

craft_eps="" etcd_eps="" craft_cluster="" etcd_cluster=""
for i in 0 1 2; do
    craft_eps+="${craft_eps:+,}https://127.0.0.1:${craft_client[$i]}"
    etcd_eps+="${etcd_eps:+,}https://127.0.0.1:${etcd_client[$i]}"
    craft_cluster+="${craft_cluster:+,}n$((i + 1))=https://127.0.0.1:${craft_peer[$i]}"
    etcd_cluster+="${etcd_cluster:+,}e$((i + 1))=https://127.0.0.1:${etcd_peer[$i]}"
done

start_craft() {
    local i n pid
    for i in 0 1 2; do
        n=n$((i + 1))
        # shellcheck disable=SC2086
        pid=$(bench_craftd "$dir/craft-$n.log" $n "$dir/craft/$n" "${craft_client[$i]}" "${craft_peer[$i]}" \
            "$craft_cluster" craft-bench "$c" "$craftd" ${CRAFTD_FLAGS:-})
        pids+=("$pid")
        echo "$pid" >"$dir/craft-$n.pid"
    done
}

start_etcd() {
    local i n
    for i in 0 1 2; do
        n=e$((i + 1))
        etcd --name $n --data-dir "$dir/etcd/$n" \
            --listen-client-urls "https://127.0.0.1:${etcd_client[$i]}" \
            --advertise-client-urls "https://127.0.0.1:${etcd_client[$i]}" \
            --listen-peer-urls "https://127.0.0.1:${etcd_peer[$i]}" \
            --initial-advertise-peer-urls "https://127.0.0.1:${etcd_peer[$i]}" \
            --initial-cluster "$etcd_cluster" --initial-cluster-token etcd-bench \
            --initial-cluster-state new \
            --cert-file "$c/$n.pem" --key-file "$c/$n-key.pem" --trusted-ca-file "$c/ca.pem" \
            --client-cert-auth \
            --peer-cert-file "$c/$n.pem" --peer-key-file "$c/$n-key.pem" \
            --peer-trusted-ca-file "$c/ca.pem" --peer-client-cert-auth \
            --logger zap --log-outputs stderr >"$dir/etcd-$n.log" 2>&1 &
        pids+=($!)
        disown $!
        echo $! >"$dir/etcd-$n.pid"
    done
}

wait_leader() { # name endpoints
    bench_wait_leader "$2" "${tls[@]}" && return 0
    echo "bench: $1 has no leader after 30 s; logs in $dir (use --keep DIR to keep them)" >&2
    return 1
}

mkdir -p "$dir/craft" "$dir/etcd" "$dir/results"
echo "bench: starting craft (client ports ${craft_client[*]}) and etcd (${etcd_client[*]})"
start_craft
start_etcd
craft_leader=$(wait_leader craft "$craft_eps")
etcd_leader=$(wait_leader etcd "$etcd_eps")
echo "bench: craft leader $craft_leader, etcd leader $etcd_leader"

eps_of() { [ "$1" = craft ] && echo "$craft_eps" || echo "$etcd_eps"; }
leader_url() { [ "$1" = craft ] && echo "$craft_leader" || echo "$etcd_leader"; }

# Reads need data: 10,000 keys written once into each cluster.
read_keys=10000
for s in "${systems[@]}"; do
    echo "bench: preloading $read_keys keys into $s"
    "$cbench" --endpoints "$(eps_of "$s")" "${tls[@]}" --conns 4 --inflight 64 \
        --key-space $read_keys --preload --total 1 --quiet >/dev/null
done

# workload -> craft-bench arguments (besides endpoints and TLS)
args_of() {
    local common=(--duration "$seconds" --key-size 16 --val-size 256 --quiet --json)
    case "$1" in
    put-1) echo "${common[*]} --conns 1 --inflight 1 --mix put=1 --key-space 100000" ;;
    put-64) echo "${common[*]} --conns 4 --inflight 16 --mix put=1 --key-space 100000" ;;
    put-1024) echo "${common[*]} --conns 16 --inflight 64 --mix put=1 --key-space 100000" ;;
    lread-1024) echo "${common[*]} --conns 16 --inflight 64 --mix range=1 --key-space $read_keys" ;;
    sread-1024) echo "${common[*]} --conns 16 --inflight 64 --mix srange=1 --key-space $read_keys" ;;
    mix-1024) echo "${common[*]} --conns 16 --inflight 64 --mix range=90,put=10 --key-space $read_keys" ;;
    esac
}

# CPU time (user + system, clock ticks) used so far by the 3 server processes of $1: on a shared
# 2-core machine throughput swings with other load, CPU per operation much less.
clk=$(getconf CLK_TCK)
cpu_ticks() {
    # shellcheck disable=SC2046
    bench_cpu_ticks $(cat "$dir/$1"-*.pid)
}

for w in ${workloads//,/ }; do
    for r in $(seq "$rounds"); do
        for s in "${systems[@]}"; do
            eps=$(eps_of "$s")
            [ "$w" = put-1 ] && eps=$(leader_url "$s")
            out=$dir/results/$w.$s.$r.json
            read -r -a a <<<"$(args_of "$w")"
            t0=$(cpu_ticks "$s")
            "$cbench" --endpoints "$eps" "${tls[@]}" "${a[@]}" >"$out" 2>"$dir/results/$w.$s.$r.err" || true
            echo $(($(cpu_ticks "$s") - t0)) >"$dir/results/$w.$s.$r.cpu"
            python3 - "$out" "$w" "$s" "$r" "$clk" <<'PY'
import json, sys
path, w, s, r, clk = sys.argv[1:]
try:
    j = json.load(open(path))
    t = j["total"]
    cpu = int(open(path[:-5] + ".cpu").read()) * 1e6 / int(clk) / max(t["ops"], 1)
    print(f"bench: {w:<11} {s:<5} round {r}: {t['ops_per_sec']:>10,.0f} ops/s  p50 {t['p50_ms']:.3f} ms"
          f"  p99 {t['p99_ms']:.3f} ms  server CPU {cpu:.0f} us/op"
          f"  client CPU {j.get('client_cpu_us_per_call', float('nan')):.0f} us/op  errors {j['errors']}")
except Exception as e:
    print(f"bench: {w} {s} round {r}: no result ({e}); see {path[:-5]}.err")
PY
        done
    done
done

echo
python3 - "$dir/results" "$workloads" "$rounds" "${systems[*]}" "$clk" <<'PY'
import json, os, statistics, sys
d, workloads, rounds, systems = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), sys.argv[4].split()
clk = int(sys.argv[5])
def med(xs):
    return statistics.median(xs) if xs else float("nan")
rows = []
for w in workloads:
    row = {"w": w}
    for s in systems:
        runs, cpus = [], []
        for r in range(1, rounds + 1):
            try:
                j = json.load(open(os.path.join(d, f"{w}.{s}.{r}.json")))
                runs.append(j)
                ticks = int(open(os.path.join(d, f"{w}.{s}.{r}.cpu")).read())
                cpus.append(ticks * 1e6 / clk / max(j["total"]["ops"], 1))
            except Exception:
                pass
        row[s] = {
            "ops": med([j["total"]["ops_per_sec"] for j in runs]),
            "p50": med([j["total"]["p50_ms"] for j in runs]),
            "p99": med([j["total"]["p99_ms"] for j in runs]),
            "cpu": med(cpus),
            "ccpu": med([j.get("client_cpu_us_per_call", float("nan")) for j in runs]),
            "err": sum(j["errors"] for j in runs),
            "n": len(runs),
        }
    rows.append(row)
def f_ops(x): return "-" if x != x else f"{x:,.0f}"
def f_ms(x): return "-" if x != x else f"{x:.2f}"
def ratio(a, b): return "-" if (a != a or b != b or b == 0) else f"{a / b:.2f}x"
if systems == ["craft", "etcd"]:
    print("| workload | craft ops/s | etcd ops/s | craft/etcd ops | craft p50 ms | etcd p50 ms | craft/etcd p50 "
          "| craft p99 ms | etcd p99 ms | server CPU us/op craft / etcd | client CPU us/op craft / etcd "
          "| errors craft/etcd |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        c, e = r["craft"], r["etcd"]
        print(f"| {r['w']} | {f_ops(c['ops'])} | {f_ops(e['ops'])} | {ratio(c['ops'], e['ops'])} | "
              f"{f_ms(c['p50'])} | {f_ms(e['p50'])} | {ratio(c['p50'], e['p50'])} | "
              f"{f_ms(c['p99'])} | {f_ms(e['p99'])} | {f_ops(c['cpu'])} / {f_ops(e['cpu'])} | "
              f"{f_ops(c['ccpu'])} / {f_ops(e['ccpu'])} | {c['err']}/{e['err']} |")
else:
    s = systems[0]
    print(f"| workload | {s} ops/s | p50 ms | p99 ms | server CPU us/op | client CPU us/op | errors |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        x = r[s]
        print(f"| {r['w']} | {f_ops(x['ops'])} | {f_ms(x['p50'])} | {f_ms(x['p99'])} | {f_ops(x['cpu'])} "
              f"| {f_ops(x['ccpu'])} | {x['err']} |")
print(f"\nmedians of {rounds} round(s) of each workload; runs alternate between systems; "
      f"p50/p99 are medians of the per-run percentiles; server CPU = user+system time of the "
      f"3 server processes during a run / successful ops; client CPU = craft-bench's own per call")
PY
if [ -n "$keep" ]; then
    echo "bench: certificates, logs and raw results kept in $dir"
fi
