#!/usr/bin/env bash
# soak-nemesis.sh: the nemesis test (tests/cluster/nemesis_test.sh, docs/testing.md) for longer:
# kill -9, leader pauses, partitions and a full disk against a 3-member craft cluster while
# clients read, write and compare-and-swap; the history is checked for linearizability and
# durability at the end. Needs root (iptables, mount). The seed is printed first; rerun with
# --seed N to replay the same fault schedule.
#
#   bash scripts/soak-nemesis.sh [--duration 30m] [--seed N] [--faults kill,pause,partition,disk]
#                                [-- more nemesis flags, e.g. -clients 9 -keys 6 -rate 60]
#
#   --duration D  how long faults run (a Go duration: 600s, 30m, 2h; default 10m, at most 12h)
#   --seed N      replay a run's fault schedule (default: from the clock)
#   --faults L    a comma-separated subset of kill,pause,partition,disk
# CRAFTD=PATH runs that craftd instead of this tree's (built here); BAZEL_STARTUP as in bench.sh.
# NEMESIS_KEEP=1 keeps the scratch directory (members' logs; the history if it failed).
set -euo pipefail
cd "$(dirname "$0")/.."

duration=10m seed="" faults="" extra=()
die() { echo "soak-nemesis: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
    --duration) [ $# -ge 2 ] || die "--duration needs a value"; duration=$2; shift 2 ;;
    --seed) [ $# -ge 2 ] || die "--seed needs a value"; seed=$2; shift 2 ;;
    --faults) [ $# -ge 2 ] || die "--faults needs a value"; faults=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (--help)" ;;
    esac
done
[[ "$duration" =~ ^([0-9]+(ms|s|m|h))+$ ]] || die "--duration wants a Go duration such as 600s, 30m or 2h"
[ -z "$seed" ] || [[ "$seed" =~ ^[1-9][0-9]*$ ]] || die "--seed wants a positive integer"
[ -z "$faults" ] || [[ "$faults" =~ ^(kill|pause|partition|disk)(,(kill|pause|partition|disk))*$ ]] ||
    die "--faults wants a comma-separated subset of kill,pause,partition,disk"
[ "$(id -u)" = 0 ] || die "run as root: the nemesis adds iptables rules and mounts a tmpfs"

bash scripts/deps.sh
read -r -a bzl <<<"${BAZEL_STARTUP:-}"
craftd=${CRAFTD:-}
bazel "${bzl[@]}" build //tests/cluster:go_programs //services:craftd >&2
bin="$(bazel "${bzl[@]}" info bazel-bin)"
[ -n "$craftd" ] || craftd="$bin/services/craftd"
[ -x "$craftd" ] || die "$craftd is not an executable"
args=(-duration "$duration")
[ -n "$seed" ] && args+=(-seed "$seed")
[ -n "$faults" ] && args+=(-faults "$faults")
# The checker's search budget per key grows with the run.
args+=(-check-budget 10m)
exec bash tests/cluster/nemesis_test.sh "$craftd" certs/craft-certs "$bin/tests/cluster/go/bin/nemesis" \
    "$bin/tests/cluster/go/bin/nemesis.test" "${args[@]}" "${extra[@]+"${extra[@]}"}"
