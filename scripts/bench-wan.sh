#!/usr/bin/env bash
# bench-wan.sh: craft (replication window 1 and the default) and etcd 3.4 side by side at WAN
# round trips (issue 19; docs/multi-dc.md, docs/benchmarks.md "WAN").
#
#   bash scripts/bench-wan.sh [--rtts 0,10,30,50,100] [--seconds S] [--rounds R] [--systems LIST]
#                             [--conns N] [--inflight M] [--keep DIR]
#
# Three members, one per site (a, b, c), the same RTT between every two sites, put there by
# tests/wan/wanproxy (every member under its own uid, tests/wan/sites.sh; 0 ms still goes through
# the proxy, so every column pays the same proxy hop). The client (craft-bench) runs in the
# leader's site, against the leader. Systems: craft-w1 (--max-inflight-msgs 1: one AppendEntries
# in flight per follower, no pipelining), craft (the default window: 64 messages, 16 MiB), etcd
# (Debian's etcd 3.4: its window is fixed at 512 messages). Timers: heartbeat 100 ms, election
# 1000 ms for every RTT (the documented setting up to 100 ms). Workloads, N x M in flight
# (default 16 x 64: enough that at 100 ms the client's concurrency, 1024 / 0.1 s, is not the
# bound), key 16 B, value 256 B: put, lread (linearizable ranges over 1,000 preloaded keys). For each RTT and system a fresh cluster; each workload runs R rounds of S seconds
# (default 1 x 5 s); the table has medians of ops/s, p50 and p99. Needs root (iptables, uids).
# BAZEL_STARTUP passes bazel startup flags.
set -euo pipefail
cd "$(dirname "$0")/.."
rtts=0,10,30,50,100 seconds=5 rounds=1 systems=craft-w1,craft,etcd conns=16 inflight=64 keep=''
die() { echo "bench-wan: $*" >&2; exit 2; }
need() { [ "$2" -ge 2 ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
    case "$1" in
    --rtts) need "$1" $#; rtts=$2; shift 2 ;;
    --seconds) need "$1" $#; seconds=$2; shift 2 ;;
    --rounds) need "$1" $#; rounds=$2; shift 2 ;;
    --systems) need "$1" $#; systems=$2; shift 2 ;;
    --conns) need "$1" $#; conns=$2; shift 2 ;;
    --inflight) need "$1" $#; inflight=$2; shift 2 ;;
    --keep) need "$1" $#; keep=$2; shift 2 ;;
    -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (--help)" ;;
    esac
done
for r in ${rtts//,/ }; do [[ "$r" =~ ^[0-9]+$ ]] && [ "$r" -le 1000 ] || die "--rtts: '$r' is not 0..1000 (ms)"; done
[ -n "${rtts//,/}" ] || die "--rtts: give at least one RTT"
for s in ${systems//,/ }; do case $s in craft-w1 | craft | etcd) ;; *) die "--systems: '$s' is not craft-w1, craft or etcd" ;; esac; done
[[ "$rounds" =~ ^[0-9]+$ ]] && [ "$rounds" -ge 1 ] && [ "$rounds" -le 50 ] || die "--rounds must be 1..50"
[[ "$seconds" =~ ^[0-9]+$ ]] && [ "$seconds" -ge 1 ] && [ "$seconds" -le 600 ] || die "--seconds must be 1..600"
[[ "$conns" =~ ^[0-9]+$ ]] && [[ "$inflight" =~ ^[0-9]+$ ]] && [ "$conns" -ge 1 ] && [ "$inflight" -ge 1 ] &&
    [ $((conns * inflight)) -le 65536 ] || die "--conns and --inflight must be >= 1 (craft-bench bounds their product)"
[ "$(id -u)" = 0 ] || die "needs root (iptables rules, members under their own uids)"

. scripts/bench-lib.sh
bash scripts/deps.sh >/dev/null
read -r -a bzl <<<"${BAZEL_STARTUP:-}"
echo "bench-wan: building (-c opt)"
bazel "${bzl[@]}" build -c opt //services:craftd //bench:craft-bench //tests/wan:wanproxy 2>&1 | tail -1
bin=$(bazel "${bzl[@]}" info -c opt bazel-bin 2>/dev/null)
command -v etcd >/dev/null || die "etcd not found (apt-get install etcd-server)"
export ETCDCTL_API=3

. tests/wan/wan.sh
. tests/wan/sites.sh
dir=$(mktemp -d /tmp/bench-wan.XXXXXX) && chmod 755 "$dir"
declare -A pid
stop_all() {
    local m
    for m in "${!pid[@]}"; do kill -TERM "${pid[$m]}" 2>/dev/null || true; done
    for m in "${!pid[@]}"; do
        for _ in $(seq 100); do kill -0 "${pid[$m]}" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "${pid[$m]}" 2>/dev/null || true
        unset "pid[$m]"
    done
}
cleanup() {
    stop_all
    wan_down || true # (wait returns the stopped proxy's status: not an error)
    sites_down
    if [ -n "$keep" ]; then mkdir -p "$keep" && cp -r "$dir"/*.json "$dir"/*.log "$keep"/ 2>/dev/null; fi
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cp "$bin/services/craftd" "$bin/bench/craft-bench" "$dir/" && chmod 755 "$dir/craftd" "$dir/craft-bench"
craftd=$dir/craftd

o=$(($$ % 200 + 20))
site_names=(a b c)
sites_init
# one member per site per system, at its own address: k = 1 craft-w1, 2 craft, 3 etcd
declare -A sys_k=([craft-w1]=1 [craft]=2 [etcd]=3) sys_tag=([craft-w1]=w [craft]=n [etcd]=e)
for s in craft-w1 craft etcd; do
    for st in a b c; do site_member "${sys_tag[$s]}$st" "$st" "${sys_k[$s]}"; done
done
sites_certs certs/craft-certs
tls=(--cacert "$dir/c/ca.pem" --cert "$dir/c/client.pem" --key "$dir/c/client-key.pem")
wan_listen=$(proxy_ip)
timers=(--heartbeat-interval 100 --election-timeout 1000)
echo "bench-wan: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); rtts $rtts; $conns x $inflight in flight; $rounds x ${seconds}s"

results=$dir/results.txt
: >"$results"
for r in ${rtts//,/ }; do
    wan_down || true # (wait returns the stopped proxy's status: not an error)
    # shellcheck disable=SC2046
    wan_up "$bin/tests/wan/wanproxy" "CRAFTWANB-$$" "$dir" $(sites_proxy_flags) \
        --rtt a,b=${r}ms --rtt b,c=${r}ms --rtt a,c=${r}ms >/dev/null || die "wan_up"
    for s in ${systems//,/ }; do
        t=${sys_tag[$s]}
        ms=("${t}a" "${t}b" "${t}c")
        for m in "${ms[@]}"; do rm -rf "$dir/data-$m"; done
        cl=$(sites_cluster "${ms[@]}")
        for m in "${ms[@]}"; do
            case $s in
            craft-w1) pid[$m]=$(member_start craft "$m" "$cl" "${timers[@]}" --max-inflight-msgs 1) ;;
            craft) pid[$m]=$(member_start craft "$m" "$cl" "${timers[@]}") ;;
            etcd) pid[$m]=$(member_start etcd "$m" "$cl" "${timers[@]}" --initial-cluster-state new) ;;
            esac
        done
        eps=$(for m in "${ms[@]}"; do member_curl "$m"; done | paste -sd,)
        lep=$(bench_wait_leader "$eps" "${tls[@]}") || die "$s at ${r} ms: no leader"
        lsite=''
        for m in "${ms[@]}"; do [ "$(member_curl "$m")" = "$lep" ] && lsite=${member_site[$m]}; done
        run() { # workload round
            local mix=put=1
            [ "$1" = lread ] && mix=range=1
            site_run "$lsite" "$dir/craft-bench" --endpoints "$lep" "${tls[@]}" --conns "$conns" \
                --inflight "$inflight" --duration "$seconds" --mix "$mix" --key-space 1000 --json --quiet \
                >"$dir/$s-$r-$1-$2.json" 2>>"$dir/bench.err" || echo "bench-wan: $s $1 at ${r} ms had errors" >&2
            python3 -c 'import json,sys; t=json.load(open(sys.argv[1]))["total"]; print(sys.argv[2], t["ops_per_sec"], t["p50_ms"], t["p99_ms"])' \
                "$dir/$s-$r-$1-$2.json" "$r $s $1" >>"$results"
        }
        # the keys the reads find
        site_run "$lsite" "$dir/craft-bench" --endpoints "$lep" "${tls[@]}" --conns "$conns" --inflight "$inflight" \
            --total 1000 --key-space 1000 --quiet >/dev/null 2>>"$dir/bench.err" || true
        for i in $(seq "$rounds"); do run put "$i"; run lread "$i"; done
        echo "bench-wan: ${r} ms $s done (leader in $lsite)"
        stop_all
    done
done

# Medians per (rtt, system, workload); one table, systems side by side.
python3 - "$results" "$systems" <<'EOF'
import sys, statistics as st
rows = {}
for line in open(sys.argv[1]):
    r, s, w, ops, p50, p99 = line.split()
    rows.setdefault((int(r), w, s), []).append((float(ops), float(p50), float(p99)))
systems = sys.argv[2].split(",")
for w in ("put", "lread"):
    print(f"\n{w}: ops/s, p50 ms, p99 ms (medians)")
    print("| RTT ms | " + " | ".join(f"{s} ops/s | p50 | p99" for s in systems) + " |")
    print("|---" * (1 + 3 * len(systems)) + "|")
    for r in sorted({k[0] for k in rows}):
        cells = []
        for s in systems:
            v = rows.get((r, w, s))
            if not v:
                cells += ["-", "-", "-"]
                continue
            cells += ["%.0f" % st.median(x[0] for x in v), "%.1f" % st.median(x[1] for x in v),
                      "%.1f" % st.median(x[2] for x in v)]
        print(f"| {r} | " + " | ".join(cells) + " |")
EOF
