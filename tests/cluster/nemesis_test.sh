#!/usr/bin/env bash
# A nemesis and a linearizability checker against real craftd processes (issue 18): clients run
# reads, writes and compare-and-swaps while members are killed -9 and restarted, the leader is
# paused, members are partitioned (iptables, loopback only) and one member's disk (a tmpfs) is
# filled and freed; the recorded history is checked for linearizability and every acknowledged
# write must be there at the end. The program is go/nemesis (main.go, checker.go), built with its
# test binary by //tests/cluster:go_programs (go/build.sh); this script first runs the checker's
# own tests (known linearizable and non-linearizable histories), then makes the certificates and
# runs the program. Needs root (iptables, mount); without either it fails, never skips.
#
#   nemesis_test.sh CRAFTD CRAFT-CERTS NEMESIS NEMESIS.TEST [nemesis flags...]
#
# Flags after -- go to the program: -duration 90s, -seed N (printed at the start; replays the
# fault schedule), -faults kill,pause,partition,disk, -clients, -keys. NEMESIS_KEEP=1 keeps the
# scratch directory (members' logs, the history on failure).
set -uo pipefail
craftd=$1 tool=$2 prog=$3 progtest=$4
shift 4
command -v iptables >/dev/null || { echo "FAIL: iptables not installed (apt-get install iptables; scripts/deps.sh)"; exit 1; }
[ "$(id -u)" = 0 ] || { echo "FAIL: the nemesis needs root (iptables rules, a tmpfs mount)"; exit 1; }
dir=$(mktemp -d "${TEST_TMPDIR:-/tmp}/nemesis.XXXXXX")
chain="CRAFTNEM-$$"
# Whatever happens to the program (even kill -9), no rule and no mount stays behind: the rules
# live in our own chain, jumped to from OUTPUT for loopback only.
cleanup() {
    while iptables -w -D OUTPUT -o lo -j "$chain" 2>/dev/null; do :; done
    iptables -w -F "$chain" 2>/dev/null && iptables -w -X "$chain" 2>/dev/null
    awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/mounts | while read -r m; do umount "$m" || umount -l "$m"; done
    if [ -n "${NEMESIS_KEEP:-}" ]; then echo "kept $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

"$progtest" -test.count=1 || { echo "FAIL: the checker's own tests (nemesis.test)"; exit 1; }

"$tool" ca "$dir/c" >/dev/null && "$tool" client "$dir/c" client >/dev/null || exit 1
for n in n1 n2 n3; do "$tool" node "$dir/c" "$n" --ip 127.0.0.1 >/dev/null || exit 1; done
mkdir -p "$dir/run" || exit 1
# Under --config=asan (it sets ASAN_OPTIONS) 40 s of faults: every kind still comes up, and the
# default build runs the full length; a later -duration wins.
asan=()
[ -n "${ASAN_OPTIONS:-}" ] && asan=(-duration 40s)
"$prog" -craftd "$craftd" -certs "$dir/c" -dir "$dir/run" -chain "$chain" "$@" "${asan[@]}"
rc=$?
[ $rc -ne 0 ] && [ -z "${NEMESIS_KEEP:-}" ] && echo "(NEMESIS_KEEP=1 keeps the members' logs)"
exit $rc
