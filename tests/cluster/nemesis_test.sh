#!/usr/bin/env bash
# A nemesis and a linearizability checker against real craftd processes (issue 18): clients run
# reads, writes and compare-and-swaps while members are killed -9 and restarted, the leader is
# paused, members are partitioned (iptables, loopback only) and one member's disk (a tmpfs) is
# filled and freed; the recorded history is checked for linearizability and every acknowledged
# write must be there at the end. The program is go/nemesis (main.go, checker.go); this script
# first runs the checker's own tests (go test: known linearizable and non-linearizable
# histories), then builds the program (GOPATH mode, offline: nothing is downloaded), makes the
# certificates and runs it. Needs root (iptables, mount); without either it fails, never skips.
#
#   nemesis_test.sh CRAFTD CRAFT-CERTS NEMESIS-DIR-FILE... -- [nemesis flags...]
#
# Flags after -- go to the program: -duration 90s, -seed N (printed at the start; replays the
# fault schedule), -faults kill,pause,partition,disk, -clients, -keys. NEMESIS_KEEP=1 keeps the
# scratch directory (members' logs, the history on failure); NEMESIS_GOCACHE=DIR keeps Go's build
# cache there between runs (the first build of clientv3 takes minutes).
set -uo pipefail
craftd=$1 tool=$2
shift 2
srcs=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do srcs+=("$1"); shift; done
[ $# -gt 0 ] && shift
command -v go >/dev/null || { echo "FAIL: go not installed (apt-get install golang-go; scripts/deps.sh)"; exit 1; }
[ -d /usr/share/gocode/src/go.etcd.io/etcd/clientv3 ] ||
    { echo "FAIL: clientv3 not installed (apt-get install golang-etcd-server-dev; scripts/deps.sh)"; exit 1; }
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

export GO111MODULE=off GOPATH="$dir/gopath:/usr/share/gocode" GOPROXY=off GOFLAGS= GOENV=off \
    GOCACHE="${NEMESIS_GOCACHE:-$dir/gocache}" CGO_ENABLED=0 HOME="${HOME:-$dir}"
pkg="$dir/gopath/src/nemesis"
mkdir -p "$pkg" && cp "${srcs[@]}" "$pkg/" || exit 1
t0=$EPOCHREALTIME
(cd "$pkg" && go test -count=1 .) || { echo "FAIL: the checker's own tests (go test)"; exit 1; }
(cd "$pkg" && go build -o "$dir/nemesis" .) || { echo "FAIL: go build"; exit 1; }
echo "go test + build: $(go version | cut -d' ' -f3), $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s"

"$tool" ca "$dir/c" >/dev/null && "$tool" client "$dir/c" client >/dev/null || exit 1
for n in n1 n2 n3; do "$tool" node "$dir/c" "$n" --ip 127.0.0.1 >/dev/null || exit 1; done
mkdir -p "$dir/run" || exit 1
"$dir/nemesis" -craftd "$craftd" -certs "$dir/c" -dir "$dir/run" -chain "$chain" "$@"
rc=$?
[ $rc -ne 0 ] && [ -z "${NEMESIS_KEEP:-}" ] && echo "(NEMESIS_KEEP=1 keeps the members' logs)"
exit $rc
