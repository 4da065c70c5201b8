#!/usr/bin/env bash
# The benchmark scripts' front doors: --help exits 0; every bad argument exits 2 with one line
# naming the problem, before anything is installed, built or started.
set -uo pipefail
ab=$1 bench=$2 soak=$3 watch=$4 compact=$5 lease=$6 benchwan=$7 soakwan=$8
fails=0
expect() { # want-exit, want-text, description, command...
    local want=$1 text=$2 what=$3 out rc
    shift 3
    out=$(timeout 20 "$@" 2>&1 </dev/null)
    rc=$?
    if [ $rc -eq "$want" ] && grep -qE -- "$text" <<<"$out"; then
        echo "ok: $what -> $rc: $(head -1 <<<"$out")"
    else
        echo "FAIL: $what: exit $rc (want $want, text /$text/), output: $out"
        fails=$((fails + 1))
    fi
}
expect 0 "VARIANT" "bench-ab --help" bash "$ab" --help
expect 2 "at least one variant" "bench-ab without variants" bash "$ab"
expect 2 "unknown workload 'nope'" "bench-ab bad workload" bash "$ab" --workload nope -
expect 2 "--rounds must be" "bench-ab rounds 0" bash "$ab" --rounds 0 -
expect 2 "--rounds must be" "bench-ab rounds not a number" bash "$ab" --rounds x -
expect 2 "--seconds must be" "bench-ab seconds 0" bash "$ab" --seconds 0 -
expect 2 "--seconds needs a value" "bench-ab seconds missing" bash "$ab" --seconds
expect 2 "unknown flag '--frob'" "bench-ab unknown flag" bash "$ab" --frob -
expect 2 "is not an executable" "bench-ab missing craftd" bash "$ab" "CRAFTD=/nonexistent/craftd"
expect 2 "'FOO=1' is not" "bench-ab unknown variant word" bash "$ab" - "FOO=1"
expect 2 "'DATA=relative' is not" "bench-ab relative data dir" bash "$ab" "DATA=relative"
expect 0 "--workloads" "bench --help" bash "$bench" --help
expect 2 "unknown workload 'put-2'" "bench bad workload" bash "$bench" --workloads put-1,put-2
expect 2 "--rounds must be" "bench rounds 99" bash "$bench" --rounds 99
expect 2 "--only craft or --only etcd" "bench --only" bash "$bench" --only zookeeper
expect 2 "unknown argument '--frob'" "bench unknown flag" bash "$bench" --frob
expect 0 "--restart" "bench-soak --help" bash "$soak" --help
expect 2 "--seconds must be" "bench-soak seconds 0" bash "$soak" --seconds 0
expect 2 "--seconds must be" "bench-soak seconds too long" bash "$soak" --seconds 4000
expect 2 "--every must be" "bench-soak every beyond seconds" bash "$soak" --seconds 5 --every 9
expect 2 "--every needs a value" "bench-soak every missing" bash "$soak" --every
expect 2 "is not an executable" "bench-soak missing craftd" bash "$soak" CRAFTD=/nonexistent
expect 2 "unknown argument 'FLAG=x'" "bench-soak flag without dashes" bash "$soak" FLAG=x
expect 0 "--per-stream" "bench-watch --help" bash "$watch" --help
expect 2 "--watchers must be 1..100000" "bench-watch watchers 0" bash "$watch" --watchers 0
expect 2 "--rate must be" "bench-watch rate not a number" bash "$watch" --rate fast
expect 2 "--seconds must be" "bench-watch seconds 0" bash "$watch" --seconds 0
expect 2 "--per-stream must be" "bench-watch per-stream too large" bash "$watch" --per-stream 20000
expect 2 "at most 10,000,000 puts" "bench-watch rate x seconds" bash "$watch" --rate 100000 --seconds 600
expect 2 "--only must be craft or etcd" "bench-watch --only" bash "$watch" --only zookeeper
expect 2 "unknown argument '--frob'" "bench-watch unknown flag" bash "$watch" --frob
expect 2 "--rounds needs a value" "bench-watch rounds missing" bash "$watch" --rounds
expect 0 "--revisions" "bench-compact --help" bash "$compact" --help
expect 2 "--revisions must be" "bench-compact revisions too few" bash "$compact" --revisions 10
expect 2 "--keys must be fewer" "bench-compact keys >= revisions" bash "$compact" --revisions 1000 --keys 5000
expect 2 "--before must be" "bench-compact before too short" bash "$compact" --before 1
expect 2 "--after must be" "bench-compact after not a number" bash "$compact" --after soon
expect 2 "--only must be craft or etcd" "bench-compact --only" bash "$compact" --only zookeeper
expect 2 "unknown argument 'x'" "bench-compact positional" bash "$compact" x
expect 0 "--rtts" "bench-wan --help" bash "$benchwan" --help
expect 2 "--rtts: 'x' is not" "bench-wan bad rtt" bash "$benchwan" --rtts 0,x
expect 2 "--systems: 'zk' is not" "bench-wan bad system" bash "$benchwan" --systems craft,zk
expect 2 "--rounds must be" "bench-wan rounds 0" bash "$benchwan" --rounds 0
expect 2 "--seconds needs a value" "bench-wan seconds missing" bash "$benchwan" --seconds
expect 2 "--conns and --inflight" "bench-wan inflight 0" bash "$benchwan" --inflight 0
expect 2 "unknown argument '--frob'" "bench-wan unknown flag" bash "$benchwan" --frob
expect 0 "--jitter" "soak-wan --help" bash "$soakwan" --help
expect 2 "--minutes must be" "soak-wan minutes 0" bash "$soakwan" --minutes 0
expect 2 "--jitter must be" "soak-wan jitter 150" bash "$soakwan" --jitter 150
expect 2 "election at least 2 x heartbeat" "soak-wan election < 2 x heartbeat" bash "$soakwan" --heartbeat 100 --election 150
expect 2 "--election needs a value" "soak-wan election missing" bash "$soakwan" --election
expect 0 "--streams" "bench-lease --help" bash "$lease" --help
expect 2 "--leases must be" "bench-lease leases 0" bash "$lease" --leases 0
expect 2 "--streams must be" "bench-lease streams too many" bash "$lease" --streams 1000
expect 2 "--concurrency must be" "bench-lease concurrency not a number" bash "$lease" --concurrency lots
expect 2 "--clients needs a value" "bench-lease clients missing" bash "$lease" --clients
expect 2 "--only must be craft or etcd" "bench-lease --only" bash "$lease" --only zookeeper
expect 2 "unknown argument '--frob'" "bench-lease unknown flag" bash "$lease" --frob
echo "$fails failed"
[ $fails -eq 0 ]
