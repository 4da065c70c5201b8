#!/usr/bin/env bash
# bench-compact.sh: compaction of a long history under write load, craft side by side with
# etcd 3.4 on the same machine (docs/benchmarks.md, "Compaction").
#
#   bash scripts/bench-compact.sh [--revisions N] [--keys K] [--before S] [--after S]
#                                 [--rounds R] [--only craft|etcd]
#
#   --revisions N  revisions preloaded before the compaction (default 1000000)
#   --keys K       keys the preload writes over (default 1000: all but the last K revisions
#                  are superseded history the compaction removes)
#   --before S     seconds of put load before the compaction is issued (default 10; the first
#                  2 s are warm-up and not reported)
#   --after S      seconds of put load after the compaction returned (default 5)
#   --rounds R     rounds (default 1); each round runs craft then etcd on fresh clusters
#   --only SYS     run one system only
# Each run: a fresh 3-member cluster (loopback, mutual TLS, fsync on); craft-bench preloads
# N puts of 256 B values over K keys (16 x 64 in flight over the three members); then a
# steady put load starts (craft-bench, 16 connections x 64 in flight over the three members,
# 256 B values over 100,000 keys, --phases) and runs until S_after seconds past the
# compaction. After S_before seconds `etcdctl compaction --physical REV` (REV: the leader's
# revision just then) goes to the leader, and the wall time until it returns is the
# compaction time (it includes etcdctl's own start and TLS handshake, tens of ms; the
# `etcdctl` row shows that cost alone). craft-bench marks the phases with SIGUSR1, so the
# put latency is reported over exactly three windows of the one load: before the compaction
# (from 2 s in), during it, and after it. The DB size and size in use come from
# `etcdctl endpoint status -w json` (every member) just before the compaction is issued and
# just after it returns (the load keeps writing meanwhile: a few seconds of puts).
# Prints one block per run and, with both systems, the medians side by side.
# BENCH_CRAFTD runs that craftd binary instead of the tree's (e.g. one built from another branch).
# BENCH_PORT_OFFSET shifts the ports (craft 41579.., etcd 51579..); BAZEL_STARTUP as in bench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

revisions=1000000 keys=1000 before=10 after=5 rounds=1 only=""
die() { echo "bench-compact: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
    --revisions) [ $# -ge 2 ] || die "--revisions needs a value"; revisions=$2; shift 2 ;;
    --keys) [ $# -ge 2 ] || die "--keys needs a value"; keys=$2; shift 2 ;;
    --before) [ $# -ge 2 ] || die "--before needs a value"; before=$2; shift 2 ;;
    --after) [ $# -ge 2 ] || die "--after needs a value"; after=$2; shift 2 ;;
    --rounds) [ $# -ge 2 ] || die "--rounds needs a value"; rounds=$2; shift 2 ;;
    --only) [ $# -ge 2 ] || die "--only needs a value"; only=$2; shift 2 ;;
    -h | --help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (--help)" ;;
    esac
done
num() { [[ "$2" =~ ^[0-9]+$ ]] && [ "$2" -ge "$3" ] && [ "$2" -le "$4" ] || die "$1 must be $3..$4"; }
num --revisions "$revisions" 1000 100000000
num --keys "$keys" 1 100000
num --before "$before" 4 600
num --after "$after" 1 600
num --rounds "$rounds" 1 10
[ "$keys" -lt "$revisions" ] || die "--keys must be fewer than --revisions"
case "$only" in "" | craft | etcd) ;; *) die "--only must be craft or etcd" ;; esac
systems=(craft etcd)
[ -z "$only" ] || systems=("$only")

. scripts/bench-lib.sh
bench_build //bench:craft-bench
cbench=$bin/bench/craft-bench

o=${BENCH_PORT_OFFSET:-0}
bench_ports=(40579 50579)
bench_check_ports "${systems[@]}"

dir=$(mktemp -d "${TMPDIR:-/tmp}/craft-compact.XXXXXX")
pids=()
lp=""
cleanup() {
    [ -z "$lp" ] || kill -TERM "$lp" 2>/dev/null || true
    bench_stop_pids
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
bench_certs "$dir/certs" n1 n2 n3 e1 e2 e3
c=$dir/certs
tls=(--cacert "$c/ca.pem" --cert "$c/client.pem" --key "$c/client-key.pem")

# status ENDPOINTS OUT: etcdctl endpoint status of every member, as JSON, into OUT.
status() { etcdctl --endpoints "$1" "${tls[@]}" --command-timeout 30s endpoint status -w json >"$2"; }
revision_of() { # URL: the member's current revision
    etcdctl --endpoints "$1" "${tls[@]}" --command-timeout 30s endpoint status -w json |
        python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["header"]["revision"])'
}
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; } # FROM TO

# Waits (bounded) until process $1 has installed its SIGUSR1 handler (SigCgt bit 10).
wait_phases_ready() {
    local m
    for _ in $(seq 300); do
        kill -0 "$1" 2>/dev/null || return 1
        m=$(awk '/^SigCgt:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0)
        [ -n "$m" ] && [ $((0x$m & 0x200)) -ne 0 ] && return 0
        sleep 0.1
    done
    return 1
}

mkdir -p "$dir/results"
echo "bench-compact: $revisions revisions over $keys keys, then puts (16 x 64) with a physical" \
    "compaction after ${before} s, load until ${after} s after it returns; $rounds round(s)"
for r in $(seq "$rounds"); do
    for sys in "${systems[@]}"; do
        res=$dir/results/$sys.$r
        bench_fresh "$sys" compact # sets eps and LEADER
        t0=$(now)
        "$cbench" --endpoints "$eps" "${tls[@]}" --conns 16 --inflight 64 --total "$revisions" \
            --mix put=1 --key-space "$keys" --key-size 16 --val-size 256 --json --quiet \
            >"$res.preload.json" 2>"$res.preload.err" ||
            { echo "bench-compact: $sys round $r: preload failed: $(tail -1 "$res.preload.err")"; continue; }
        secs "$t0" "$(now)" >"$res.preload.secs"
        # The load: until stopped (SIGTERM after the compaction), phases marked with SIGUSR1.
        "$cbench" --endpoints "$eps" "${tls[@]}" --conns 16 --inflight 64 --duration 3600 \
            --mix put=1 --key-space 100000 --key-size 16 --val-size 256 --phases --json --quiet \
            >"$res.load.json" 2>"$res.load.err" &
        lp=$!
        wait_phases_ready "$lp" || { echo "bench-compact: $sys round $r: the load did not start"; continue; }
        sleep 2
        kill -USR1 "$lp" # phase 1: before
        sleep $((before - 2))
        status "$eps" "$res.status-before.json"
        rev=$(revision_of "$LEADER")
        kill -USR1 "$lp" # phase 2: during
        c0=$(now)
        if etcdctl --endpoints "$LEADER" "${tls[@]}" --command-timeout 3600s compaction --physical "$rev" \
            >"$res.compact.out" 2>&1; then ok=1; else ok=0; fi
        c1=$(now)
        kill -USR1 "$lp" # phase 3: after
        status "$eps" "$res.status-after.json"
        sleep "$after"
        kill -TERM "$lp"
        wait "$lp" || true
        lp=""
        e0=$(now)
        etcdctl --endpoints "$LEADER" "${tls[@]}" endpoint health >/dev/null 2>&1 || true
        e1=$(now)
        echo "{\"system\":\"$sys\",\"round\":$r,\"revision\":$rev,\"ok\":$ok,\"compact_s\":$(secs "$c0" "$c1")," \
            "\"etcdctl_s\":$(secs "$e0" "$e1"),\"preload_s\":$(cat "$res.preload.secs")}" >"$res.run.json"
        python3 - "$res" <<'PY' || true
import json, sys
res = sys.argv[1]
run = json.load(open(res + ".run.json"))
pre = json.load(open(res + ".preload.json"))
print(f"bench-compact: {run['system']} round {run['round']}: preload {pre['total']['ops']:,} puts in "
      f"{run['preload_s']:.1f} s ({pre['total']['ops'] / run['preload_s']:,.0f}/s, errors {pre['errors']})")
if not run["ok"]:
    print("  compaction FAILED: " + open(res + ".compact.out").read().strip().replace("\n", " "))
print(f"  compaction --physical of revision {run['revision']:,}: {run['compact_s']:.3f} s "
      f"(etcdctl alone: {run['etcdctl_s']:.3f} s)")
try:
    load = json.load(open(res + ".load.json"))
    names = ["warm-up", "before", "during", "after"]
    for p in load["phases"]:
        t = p["total"]
        name = names[p["phase"]] if p["phase"] < len(names) else str(p["phase"])
        if name == "warm-up":
            continue
        print(f"  puts {name:<7} {p['start_s']:6.2f} s +{p['seconds']:6.2f} s  {t['ops_per_sec']:>9,.0f} ops/s  p50 {t['p50_ms']:7.2f} ms"
              f"  p99 {t['p99_ms']:8.2f} ms  p99.9 {t['p999_ms']:8.2f} ms  max {t['max_ms']:8.1f} ms")
    print(f"  load errors: {load['errors']}  longest gap between successful puts: {load['max_gap_ms']:.0f} ms")
except Exception as e:
    print(f"  load: no result ({e}): " + open(res + ".load.err").read().strip()[-300:])
def sizes(path):
    out = []
    for s in json.load(open(path)):
        st = s["Status"]
        out.append((s["Endpoint"].rsplit(":", 1)[-1], st.get("dbSize", 0), st.get("dbSizeInUse", 0)))
    return out
for label, path in (("before", ".status-before.json"), ("after", ".status-after.json")):
    try:
        print(f"  DB size {label:<6} (MiB, size / in use, per member): " + ", ".join(
            f"{port} {a / 2**20:.1f} / {b / 2**20:.1f}" for port, a, b in sizes(res + path)))
    except Exception as e:
        print(f"  DB size {label}: no status ({e})")
PY
    done
done

echo
python3 - "$dir/results" "$rounds" "${systems[@]}" <<'PY'
import json, os, statistics, sys
d, rounds, systems = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def med(xs): return statistics.median(xs) if xs else float("nan")
def phase(load, i, k):
    for p in load["phases"]:
        if p["phase"] == i:
            return p["total"][k]
    return float("nan")
rows = [("compaction s", lambda r, l, a, b: r["compact_s"] if r["ok"] else float("nan"), "{:.2f}"),
        ("put p50 ms before", lambda r, l, a, b: phase(l, 1, "p50_ms"), "{:.2f}"),
        ("put p50 ms during", lambda r, l, a, b: phase(l, 2, "p50_ms"), "{:.2f}"),
        ("put p99 ms before", lambda r, l, a, b: phase(l, 1, "p99_ms"), "{:.2f}"),
        ("put p99 ms during", lambda r, l, a, b: phase(l, 2, "p99_ms"), "{:.2f}"),
        ("put p99 ms after", lambda r, l, a, b: phase(l, 3, "p99_ms"), "{:.2f}"),
        ("puts/s before", lambda r, l, a, b: phase(l, 1, "ops_per_sec"), "{:,.0f}"),
        ("puts/s during", lambda r, l, a, b: phase(l, 2, "ops_per_sec"), "{:,.0f}"),
        ("leader DB MiB before", lambda r, l, a, b: a / 2**20, "{:.1f}"),
        ("leader DB MiB in use after", lambda r, l, a, b: b / 2**20, "{:.1f}")]
def leader_sizes(prefix):
    def pick(path, key):
        for s in json.load(open(path)):
            st = s["Status"]
            if st.get("leader") and st["header"].get("member_id") == st["leader"]:
                return st.get(key, 0)
        return float("nan")
    return pick(prefix + ".status-before.json", "dbSize"), pick(prefix + ".status-after.json", "dbSizeInUse")
res = {}
for s in systems:
    vals = {k: [] for k, _, _ in rows}
    for r in range(1, rounds + 1):
        p = os.path.join(d, f"{s}.{r}")
        try:
            run = json.load(open(p + ".run.json")); load = json.load(open(p + ".load.json"))
            a, b = leader_sizes(p)
        except Exception:
            continue
        for k, f, _ in rows:
            vals[k].append(f(run, load, a, b))
    res[s] = {k: med([v for v in vals[k] if v == v]) for k, _, _ in rows}
print(f"medians of {rounds} round(s)")
print("| figure | " + " | ".join(systems) + (" | craft/etcd |" if len(systems) == 2 else " |"))
print("|---" * (len(systems) + 1 + (len(systems) == 2)) + "|")
for k, _, f in rows:
    line = f"| {k} | " + " | ".join("-" if res[s][k] != res[s][k] else f.format(res[s][k]) for s in systems)
    if len(systems) == 2:
        a, b = res["craft"][k], res["etcd"][k]
        line += " | " + ("-" if a != a or b != b or b == 0 else f"{a / b:.2f}x")
    print(line + " |")
PY
