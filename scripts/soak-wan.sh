#!/usr/bin/env bash
# soak-wan.sh: no spurious elections at WAN latency with jitter (issue 19; docs/multi-dc.md
# "Timers"). Not in CI: it runs for minutes.
#
#   bash scripts/soak-wan.sh [--minutes M] [--jitter J] [--heartbeat MS] [--election MS] [--keep DIR]
#
# Five craftd members over three sites (a: 2, b: 2, c: 1) behind tests/wan/wanproxy at a-b 30 ms,
# b-c 50 ms, a-c 100 ms RTT, each chunk's delay drawn within +-J (default 20%), with the
# documented timers (heartbeat 100 ms, election 1000 ms). A light write load (1 connection x 4 in
# flight, from site a, to the leader) runs throughout. Every 30 s and at the end it prints each
# member's etcd_server_leader_changes_seen_total and the term; once the cluster has its first
# leader, any further change is a spurious election (no member is stopped or cut off). Exit status
# 0 when there was none. Needs root (iptables, uids). BAZEL_STARTUP passes bazel startup flags.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=10 jitter=20 H=100 E=1000 keep=''
die() { echo "soak-wan: $*" >&2; exit 2; }
need() { [ "$2" -ge 2 ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
    case "$1" in
    --minutes) need "$1" $#; minutes=$2; shift 2 ;;
    --jitter) need "$1" $#; jitter=$2; shift 2 ;;
    --heartbeat) need "$1" $#; H=$2; shift 2 ;;
    --election) need "$1" $#; E=$2; shift 2 ;;
    --keep) need "$1" $#; keep=$2; shift 2 ;;
    -h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (--help)" ;;
    esac
done
[[ "$minutes" =~ ^[0-9]+(\.[0-9]+)?$ ]] && awk -v m="$minutes" 'BEGIN { exit !(m > 0 && m <= 1440) }' ||
    die "--minutes must be in (0, 1440]"
[[ "$jitter" =~ ^[0-9]+$ ]] && [ "$jitter" -le 99 ] || die "--jitter must be 0..99 (percent)"
[[ "$H" =~ ^[0-9]+$ ]] && [[ "$E" =~ ^[0-9]+$ ]] && [ "$H" -ge 1 ] && [ "$E" -ge $((2 * H)) ] ||
    die "--heartbeat and --election are ms, election at least 2 x heartbeat"
[ "$(id -u)" = 0 ] || die "needs root"
. scripts/bench-lib.sh
bash scripts/deps.sh >/dev/null
read -r -a bzl <<<"${BAZEL_STARTUP:-}"
bazel "${bzl[@]}" build -c opt //services:craftd //bench:craft-bench //tests/wan:wanproxy 2>&1 | tail -1
bin=$(bazel "${bzl[@]}" info -c opt bazel-bin 2>/dev/null)
export ETCDCTL_API=3
. tests/wan/wan.sh
. tests/wan/sites.sh
dir=$(mktemp -d /tmp/soak-wan.XXXXXX) && chmod 755 "$dir"
declare -A pid
lp=''
cleanup() {
    [ -n "$lp" ] && kill "$lp" 2>/dev/null
    for m in "${!pid[@]}"; do kill -9 "${pid[$m]}" 2>/dev/null || true; done
    wan_down
    sites_down
    if [ -n "$keep" ]; then mkdir -p "$keep" && cp "$dir"/*.log "$keep"/ 2>/dev/null; fi
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cp "$bin/services/craftd" "$bin/bench/craft-bench" "$dir/" && chmod 755 "$dir/craftd" "$dir/craft-bench"
craftd=$dir/craftd
o=$(($$ % 200 + 20))
site_names=(a b c)
sites_init
site_member n1 a 1; site_member n2 a 2; site_member n3 b 1; site_member n4 b 2; site_member n5 c 1
sites_certs certs/craft-certs
tls=(--cacert "$dir/c/ca.pem" --cert "$dir/c/client.pem" --key "$dir/c/client-key.pem")
wan_listen=$(proxy_ip)
# shellcheck disable=SC2046
wan_up "$bin/tests/wan/wanproxy" "CRAFTWANS-$$" "$dir" $(sites_proxy_flags) \
    --rtt a,b=30ms --rtt b,c=50ms --rtt a,c=100ms --jitter "$jitter%" >/dev/null || die "wan_up"
for m in "${members[@]}"; do
    pid[$m]=$(member_start craft "$m" "$(sites_cluster)" --heartbeat-interval "$H" --election-timeout "$E")
done
eps=$(for m in "${members[@]}"; do member_curl "$m"; done | paste -sd,)
lep=$(bench_wait_leader "$eps" "${tls[@]}") || die "no leader"
echo "soak-wan: $(date -u +%FT%TZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); leader $lep;" \
    "RTT a-b 30, b-c 50, a-c 100 ms, jitter +-$jitter%; heartbeat $H ms, election $E ms; $minutes min"
changes() { for m in "${members[@]}"; do echo -n "$m=$(member_metric "$m" etcd_server_leader_changes_seen_total) "; done; }
total() { local t=0 m v; for m in "${members[@]}"; do v=$(member_metric "$m" etcd_server_leader_changes_seen_total); t=$((t + ${v:-0})); done; echo $t; }
sleep 2 # every member has seen the first leader
c0=$(total)
echo "soak-wan: start: $(changes)"
lsite=a
for m in "${members[@]}"; do [ "$(member_curl "$m")" = "$lep" ] && lsite=${member_site[$m]}; done
secs=$(awk -v m="$minutes" 'BEGIN { printf "%d", m * 60 }')
site_run "$lsite" "$dir/craft-bench" --endpoints "$lep" "${tls[@]}" --conns 1 --inflight 4 \
    --duration "$secs" --json --quiet >"$dir/load.json" 2>"$dir/load.err" &
lp=$!
t0=$SECONDS
while [ $((SECONDS - t0)) -lt "$secs" ]; do
    sleep 30
    echo "soak-wan: $((SECONDS - t0)) s: $(changes)(spurious so far: $(($(total) - c0)))"
done
wait "$lp" || true
lp=''
c1=$(total)
python3 -c 'import json,sys; t=json.load(open(sys.argv[1]))["total"]; print("soak-wan: load: %d puts, %.0f/s, p50 %.1f ms, p99 %.1f ms, max %.1f ms" % (t["ops"], t["ops_per_sec"], t["p50_ms"], t["p99_ms"], t["max_ms"]))' "$dir/load.json" || true
echo "soak-wan: end: $(changes); leader changes after the first election: $((c1 - c0))"
[ $((c1 - c0)) -eq 0 ]
