#!/usr/bin/env bash
# bench-members.sh: what membership changes and leader moves cost a cluster under write load,
# craft side by side with etcd 3.4 on the same machine (docs/benchmarks.md, "Membership").
#
#   bash scripts/bench-members.sh [--rounds N] [--seconds S] [--learner-mb M] [--only craft|etcd]
#
#   --rounds N      rounds per scenario (default 3; each on a fresh 3-member cluster)
#   --seconds S     length of the write load in each round (default 12; the change at S/3)
#   --learner-mb M  also: preload M MiB (1 KiB values) into 3 members, add a learner, and time
#                   its catch-up while puts go on; 0 (default) skips it
#   --only SYS      run one system only
# Scenarios: move-leader (etcdctl move-leader to a follower, the load on all three members) and
# remove-leader (etcdctl member remove of the leader, the load on the two others). The figure is
# craft-bench's "longest gap between successful calls" (puts, 4 connections x 16 in flight,
# 256 B values): the write unavailability the change causes. Prints one row per round and the
# medians. BENCH_PORT_OFFSET shifts the ports; BAZEL_STARTUP as in bench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3 seconds=12 learner_mb=0 only=""
die() { echo "bench-members: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
    --rounds) [ $# -ge 2 ] || die "--rounds needs a value"; rounds=$2; shift 2 ;;
    --seconds) [ $# -ge 2 ] || die "--seconds needs a value"; seconds=$2; shift 2 ;;
    --learner-mb) [ $# -ge 2 ] || die "--learner-mb needs a value"; learner_mb=$2; shift 2 ;;
    --only) [ $# -ge 2 ] || die "--only needs a value"; only=$2; shift 2 ;;
    -h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (--help)" ;;
    esac
done
[[ "$rounds" =~ ^[0-9]+$ ]] && [ "$rounds" -ge 1 ] && [ "$rounds" -le 50 ] || die "--rounds must be 1..50"
[[ "$seconds" =~ ^[0-9]+$ ]] && [ "$seconds" -ge 6 ] && [ "$seconds" -le 600 ] ||
    die "--seconds must be 6..600"
[[ "$learner_mb" =~ ^[0-9]+$ ]] && [ "$learner_mb" -le 4096 ] || die "--learner-mb must be 0..4096"
case "$only" in "" | craft | etcd) ;; *) die "--only must be craft or etcd" ;; esac
systems=(craft etcd)
[ -z "$only" ] || systems=("$only")

. scripts/bench-lib.sh
bash scripts/deps.sh >/dev/null
read -r -a bzl <<<"${BAZEL_STARTUP:-}"
bazel "${bzl[@]}" build -c opt //services:craftd //bench:craft-bench 2>&1 | tail -1
bin=$(bazel "${bzl[@]}" info -c opt bazel-bin 2>/dev/null)
craftd=$bin/services/craftd cbench=$bin/bench/craft-bench
command -v etcd >/dev/null || die "etcd not found (apt-get install etcd-server)"
export ETCDCTL_API=3

dir=$(mktemp -d "${TMPDIR:-/tmp}/craft-members.XXXXXX")
pids=()
cleanup() { bench_stop_pids; rm -rf "$dir"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
bench_certs "$dir/certs" n1 n2 n3 n4 e1 e2 e3 e4
c=$dir/certs
tls=(--cacert "$c/ca.pem" --cert "$c/client.pem" --key "$c/client-key.pem")
o=${BENCH_PORT_OFFSET:-0}
base_of() { [ "$1" = craft ] && echo 40379 || echo 50379; }
client_port() { echo $(($(base_of "$2") + ${1#?} * 1000 + o)); } # MEMBER SYSTEM
peer_port() { echo $(($(client_port "$1" "$2") + 1)); }
prefix() { [ "$1" = craft ] && echo n || echo e; }

# start SYSTEM MEMBER STATE CLUSTER: one member in the background (pid into pids).
start() {
    local sys=$1 m=$2 state=$3 cluster=$4 cp pp
    cp=$(client_port "$m" "$sys") pp=$(peer_port "$m" "$sys")
    if [ "$sys" = craft ]; then
        local pid
        pid=$(bench_craftd "$dir/$sys-$m.log" "$m" "$dir/$sys/$m" "$cp" "$pp" "$cluster" members "$c" \
            "$craftd" --initial-cluster-state "$state")
        pids+=("$pid")
    else
        etcd --name "$m" --data-dir "$dir/$sys/$m" \
            --listen-client-urls "https://127.0.0.1:$cp" --advertise-client-urls "https://127.0.0.1:$cp" \
            --listen-peer-urls "https://127.0.0.1:$pp" --initial-advertise-peer-urls "https://127.0.0.1:$pp" \
            --initial-cluster "$cluster" --initial-cluster-token members --initial-cluster-state "$state" \
            --cert-file "$c/$m.pem" --key-file "$c/$m-key.pem" --trusted-ca-file "$c/ca.pem" \
            --client-cert-auth --peer-cert-file "$c/$m.pem" --peer-key-file "$c/$m-key.pem" \
            --peer-trusted-ca-file "$c/ca.pem" --peer-client-cert-auth \
            --logger zap --log-outputs stderr >"$dir/$sys-$m.log" 2>&1 &
        pids+=($!)
        disown $!
    fi
}

cluster_of() { # SYSTEM N: the --initial-cluster of members 1..N
    local p s="" i
    p=$(prefix "$1")
    for i in $(seq "$2"); do s+="${s:+,}$p$i=https://127.0.0.1:$(peer_port "$p$i" "$1")"; done
    echo "$s"
}
eps_of() { # SYSTEM MEMBER...
    local sys=$1 s="" m
    shift
    for m in "$@"; do s+="${s:+,}https://127.0.0.1:$(client_port "$m" "$sys")"; done
    echo "$s"
}

fresh() { # SYSTEM: a new 3-member cluster; sets LEADER to the leader's client URL
    local sys=$1 p i
    bench_stop_pids
    rm -rf "${dir:?}/$sys"
    mkdir -p "$dir/$sys"
    p=$(prefix "$sys")
    for i in 1 2 3; do start "$sys" "$p$i" new "$(cluster_of "$sys" 3)"; done
    LEADER=$(bench_wait_leader "$(eps_of "$sys" "${p}1" "${p}2" "${p}3")" "${tls[@]}") ||
        die "$sys: no leader (logs in $dir)"
}

# member id and name of the member at client URL $2
member_of() { # SYSTEM URL -> "id name"
    etcdctl --endpoints "$2" "${tls[@]}" endpoint status -w json |
        python3 -c 'import json,sys; j=json.load(sys.stdin)[0]["Status"]["header"]; print("%x" % j["member_id"])'
}
name_of_url() { local u=${1##*:}; echo "$(prefix "$2")$(((u - $(base_of "$2") - o) / 1000))"; }

gap_of() { python3 -c 'import json,sys; print("%.0f" % json.load(open(sys.argv[1]))["max_gap_ms"])' "$1"; }

load() { # SYSTEM ENDPOINTS OUT: a put load of --seconds in the background; sets LOADPID
    "$cbench" --endpoints "$2" "${tls[@]}" --conns 4 --inflight 16 --duration "$seconds" \
        --mix put=1 --val-size 256 --key-space 100000 --json --quiet --deadline-ms 10000 >"$3" 2>/dev/null &
    LOADPID=$!
}

declare -A gaps
row() { printf '%-14s %-6s %6s %12s\n' "$@"; }
row scenario system round "max gap ms"
for sys in "${systems[@]}"; do
    p=$(prefix "$sys")
    for r in $(seq "$rounds"); do
        # move-leader: load on all three, then move the leadership to a follower.
        fresh "$sys"; leader=$LEADER
        all=$(eps_of "$sys" "${p}1" "${p}2" "${p}3")
        load "$sys" "$all" "$dir/ml.json"; lp=$LOADPID
        sleep $((seconds / 3))
        lname=$(name_of_url "$leader" "$sys")
        target=$(eps_of "$sys" "$p$(((${lname#?} % 3) + 1))")
        tid=$(member_of "$sys" "$target")
        etcdctl --endpoints "$leader" "${tls[@]}" move-leader "$tid" >/dev/null ||
            die "$sys: move-leader failed (logs in $dir)"
        wait "$lp" || true
        g=$(gap_of "$dir/ml.json")
        gaps[move-leader.$sys]+="$g "
        row move-leader "$sys" "$r" "$g"
        # remove-leader: load on the other two, then remove the leader (the one moved to).
        leader=$(bench_wait_leader "$all" "${tls[@]}")
        lname=$(name_of_url "$leader" "$sys")
        others=""
        for i in 1 2 3; do [ "$p$i" = "$lname" ] || others+="${others:+,}$(eps_of "$sys" "$p$i")"; done
        load "$sys" "$others" "$dir/rl.json"; lp=$LOADPID
        sleep $((seconds / 3))
        lid=$(member_of "$sys" "$leader")
        etcdctl --endpoints "$others" "${tls[@]}" member remove "$lid" >/dev/null ||
            die "$sys: member remove of the leader failed (logs in $dir)"
        wait "$lp" || true
        g=$(gap_of "$dir/rl.json")
        gaps[remove-leader.$sys]+="$g "
        row remove-leader "$sys" "$r" "$g"
    done
done
echo
echo "medians (ms):"
for k in "${!gaps[@]}"; do
    printf '  %-22s %s\n' "$k" "$(echo "${gaps[$k]}" | tr ' ' '\n' | grep . | sort -n |
        awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}')"
done | sort

if [ "$learner_mb" -gt 0 ]; then
    echo
    echo "learner catch-up: ${learner_mb} MiB preloaded, then a learner is added while puts go on"
    for sys in "${systems[@]}"; do
        p=$(prefix "$sys")
        fresh "$sys"; leader=$LEADER
        keys=$((learner_mb * 1024))
        "$cbench" --endpoints "$leader" "${tls[@]}" --conns 8 --inflight 32 --total "$keys" \
            --mix put=1 --val-size 1024 --key-space "$keys" --preload --quiet >/dev/null
        rev=$(etcdctl --endpoints "$leader" "${tls[@]}" endpoint status -w json |
            python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["header"]["revision"])')
        etcdctl --endpoints "$leader" "${tls[@]}" member add "${p}4" --learner \
            --peer-urls "https://127.0.0.1:$(peer_port "${p}4" "$sys")" >/dev/null
        load "$sys" "$leader" "$dir/lrn.json"; lp=$LOADPID
        t0=$(date +%s.%N)
        start "$sys" "${p}4" existing "$(cluster_of "$sys" 4)"
        new=$(eps_of "$sys" "${p}4")
        until r=$(etcdctl --endpoints "$new" "${tls[@]}" endpoint status -w json 2>/dev/null |
            python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["header"]["revision"])' 2>/dev/null) &&
            [ "$r" -ge "$rev" ]; do sleep 0.2; done
        t1=$(date +%s.%N)
        wait "$lp" || true
        p99=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["total"]["p99_ms"])' "$dir/lrn.json")
        printf '  %-6s caught up with revision %s in %.1f s; leader put p99 meanwhile %s ms\n' \
            "$sys" "$rev" "$(echo "$t1 - $t0" | bc)" "$p99"
    done
fi
