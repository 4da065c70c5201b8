#!/usr/bin/env bash
# bench-lease.sh: etcd's Lease API and the lock recipe, craft side by side with etcd 3.4 on the
# same machine (issue 16; docs/benchmarks.md).
#
#   bash scripts/bench-lease.sh [--rounds N] [--seconds S] [--leases L] [--streams K]
#                               [--concurrency C] [--clients M] [--only craft|etcd]
#
#   --rounds N       rounds (default 3); each round runs craft then etcd, each on a fresh
#                    3-member cluster (loopback, mutual TLS on client and peer traffic, fsync on)
#   --seconds S      seconds per measurement (default 10)
#   --leases L       keep-alives: leases kept alive (default 1000)
#   --streams K      keep-alives: LeaseKeepAlive streams, one connection each, round-robin over
#                    the members (default 8; 64 keep-alives in flight per stream)
#   --concurrency C  grant + revoke: goroutines over 8 connections (default 64)
#   --clients M      locks: clients, each with its own session (default 16), on one mutex
#                    (contended: a handover per acquisition) and on M mutexes (one each)
#   --only SYS       run one system only (then craft is not built)
# Each run is bench/leasebench (etcd's Go client, clientv3 3.4, built here in GOPATH mode,
# offline): keep-alives answered per second, grant+revoke pairs per second (p50/p99 of a pair),
# lock acquire+release per second (p50/p99) for one mutex and for M. Prints one row per
# measurement, then the medians per system and the ratios craft/etcd.
# BENCH_CRAFTD runs that craftd binary instead of the tree's; BENCH_PORT_OFFSET shifts the ports
# (craft 41679.., etcd 51679..); BAZEL_STARTUP as in bench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3 seconds=10 leases=1000 streams=8 concurrency=64 clients=16 only=""
die() { echo "bench-lease: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
    --rounds) [ $# -ge 2 ] || die "--rounds needs a value"; rounds=$2; shift 2 ;;
    --seconds) [ $# -ge 2 ] || die "--seconds needs a value"; seconds=$2; shift 2 ;;
    --leases) [ $# -ge 2 ] || die "--leases needs a value"; leases=$2; shift 2 ;;
    --streams) [ $# -ge 2 ] || die "--streams needs a value"; streams=$2; shift 2 ;;
    --concurrency) [ $# -ge 2 ] || die "--concurrency needs a value"; concurrency=$2; shift 2 ;;
    --clients) [ $# -ge 2 ] || die "--clients needs a value"; clients=$2; shift 2 ;;
    --only) [ $# -ge 2 ] || die "--only needs a value"; only=$2; shift 2 ;;
    -h | --help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (--help)" ;;
    esac
done
num() { [[ "$2" =~ ^[0-9]+$ ]] && [ "$2" -ge "$3" ] && [ "$2" -le "$4" ] || die "$1 must be $3..$4"; }
num --rounds "$rounds" 1 50
num --seconds "$seconds" 1 600
num --leases "$leases" 1 100000
num --streams "$streams" 1 256
num --concurrency "$concurrency" 1 4096
num --clients "$clients" 1 1024
case "$only" in "" | craft | etcd) ;; *) die "--only must be craft or etcd" ;; esac
systems=(craft etcd)
[ -z "$only" ] || systems=("$only")

. scripts/bench-lib.sh
if [ "$only" = etcd ]; then
    command -v etcd >/dev/null || die "etcd not found (apt-get install etcd-server)"
    export ETCDCTL_API=3
else
    bench_build //services:craftd # sets craftd
fi
command -v go >/dev/null || die "go not found (apt-get install golang-go)"
[ -d /usr/share/gocode/src/go.etcd.io/etcd/clientv3/concurrency ] ||
    die "clientv3 not found (apt-get install golang-etcd-server-dev)"

o=${BENCH_PORT_OFFSET:-0}
bench_ports=(40679 50679)
bench_check_ports "${systems[@]}"

dir=$(mktemp -d "${TMPDIR:-/tmp}/craft-lease.XXXXXX")
pids=()
cleanup() { bench_stop_pids; rm -rf "$dir"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# The load generator: etcd's own client, built offline against Debian's source tree.
mkdir -p "$dir/gopath/src/leasebench"
cp bench/leasebench/main.go "$dir/gopath/src/leasebench/"
(cd "$dir/gopath/src/leasebench" && GO111MODULE=off GOPATH="$dir/gopath:/usr/share/gocode" GOPROXY=off \
    GOFLAGS= GOENV=off GOCACHE="$dir/gocache" CGO_ENABLED=0 go build -o "$dir/leasebench" .) ||
    die "go build bench/leasebench failed"

bench_certs "$dir/certs" n1 n2 n3 e1 e2 e3
c=$dir/certs
tls=(--cacert "$c/ca.pem" --cert "$c/client.pem" --key "$c/client-key.pem")
gtls=(-cacert "$c/ca.pem" -cert "$c/client.pem" -key "$c/client-key.pem")

modes=(keepalive grant lock-one lock-many)
mkdir -p "$dir/results"
echo "bench-lease: $seconds s per measurement, $rounds round(s); keep-alives over $leases leases and" \
    "$streams streams, grant+revoke at concurrency $concurrency, locks with $clients clients"
for r in $(seq "$rounds"); do
    for sys in "${systems[@]}"; do
        bench_fresh "$sys" lease # sets eps and LEADER
        for m in "${modes[@]}"; do
            out=$dir/results/$sys.$m.$r.json
            "$dir/leasebench" -endpoints "$eps" "${gtls[@]}" -mode "$m" -duration "${seconds}s" \
                -leases "$leases" -streams "$streams" -concurrency "$concurrency" -clients "$clients" \
                >"$out" 2>"$out.err" || true
            python3 - "$out" "$sys" "$r" <<'PY'
import json, sys
path, s, r = sys.argv[1:]
try:
    j = json.load(open(path))
    lat = f"  p50 {j['p50_ms']:.2f} ms  p99 {j['p99_ms']:.2f} ms" if j["p50_ms"] else ""
    print(f"bench-lease: {s:<5} round {r}: {j['mode']:<10} {j['ops_per_sec']:>10,.0f} /s{lat}"
          f"  errors {j['errors']}  ({j['detail']})")
except Exception as e:
    err = open(path + ".err").read().strip().splitlines()
    print(f"bench-lease: {s} round {r}: {path.split('.')[-3]}: no result ({e}): {err[-1] if err else ''}")
PY
        done
        bench_stop_pids
    done
done

echo
python3 - "$dir/results" "$rounds" "${systems[@]}" <<'PY'
import json, os, statistics, sys
d, rounds, systems = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
rows = [("keep-alives/s", "keepalive", "ops_per_sec", "{:,.0f}"),
        ("grant+revoke/s", "grant", "ops_per_sec", "{:,.0f}"),
        ("grant+revoke p50 ms", "grant", "p50_ms", "{:.2f}"),
        ("grant+revoke p99 ms", "grant", "p99_ms", "{:.2f}"),
        ("lock+unlock/s, one mutex", "lock-one", "ops_per_sec", "{:,.0f}"),
        ("lock+unlock p50 ms, one mutex", "lock-one", "p50_ms", "{:.2f}"),
        ("lock+unlock/s, a mutex each", "lock-many", "ops_per_sec", "{:,.0f}"),
        ("lock+unlock p50 ms, a mutex each", "lock-many", "p50_ms", "{:.2f}")]
def load(s, m):
    out = []
    for r in range(1, rounds + 1):
        try:
            out.append(json.load(open(os.path.join(d, f"{s}.{m}.{r}.json"))))
        except Exception:
            pass
    return out
res, errs = {}, {}
for s in systems:
    res[s] = {}
    errs[s] = 0
    for _, m, k, _ in rows:
        runs = load(s, m)
        res[s][(m, k)] = statistics.median([j[k] for j in runs]) if runs else float("nan")
    for m in ("keepalive", "grant", "lock-one", "lock-many"):
        errs[s] += sum(j["errors"] for j in load(s, m))
def fmt(v, f): return "-" if v != v else f.format(v)
print(f"medians of {rounds} round(s); errors: " + ", ".join(f"{s} {errs[s]}" for s in systems))
print("| figure | " + " | ".join(systems) + (" | craft/etcd |" if len(systems) == 2 else " |"))
print("|---" * (len(systems) + 1 + (len(systems) == 2)) + "|")
for name, m, k, f in rows:
    row = f"| {name} | " + " | ".join(fmt(res[s][(m, k)], f) for s in systems)
    if len(systems) == 2:
        a, b = res["craft"][(m, k)], res["etcd"][(m, k)]
        row += " | " + ("-" if a != a or b != b or b == 0 else f"{a / b:.2f}x")
    print(row + " |")
PY
