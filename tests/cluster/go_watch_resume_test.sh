#!/usr/bin/env bash
# etcd's Watch with etcd's own Go client library (issue 15): clientv3 from Debian's
# golang-etcd-server-dev (etcd 3.4) against a real 3-member craft cluster over mutual TLS. A watch
# whose member is killed -9 must resume on another member from its last revision with no gap and
# no duplicate (the client library does the resuming), and a watch resumed below a compaction
# must end with etcd's ErrCompacted. The scenario and its checks are in
# go/watchresume/main.go; this script builds that program (GOPATH mode, offline: nothing is
# downloaded), makes the certificates and runs it. The program starts, kills and restarts the
# craftd members itself.
# Args: craftd, craft-certs, main.go.
set -uo pipefail
craftd=$1 tool=$2 src=$3
command -v go >/dev/null || { echo "FAIL: go not installed (apt-get install golang-go; scripts/deps.sh)"; exit 1; }
[ -d /usr/share/gocode/src/go.etcd.io/etcd/clientv3 ] ||
    { echo "FAIL: clientv3 not installed (apt-get install golang-etcd-server-dev; scripts/deps.sh)"; exit 1; }
dir=$(mktemp -d "${TEST_TMPDIR:-/tmp}/gowatch.XXXXXX")
# The members are the Go program's children and die with it (Pdeathsig); only files remain here.
trap 'rm -rf "$dir"' EXIT

# GOPATH mode against Debian's source tree; the build cache is this run's own.
export GO111MODULE=off GOPATH="$dir/gopath:/usr/share/gocode" GOPROXY=off GOFLAGS= GOENV=off \
    GOCACHE="$dir/gocache" CGO_ENABLED=0 HOME="${HOME:-$dir}"
mkdir -p "$dir/gopath/src/watchresume" || exit 1
cp "$src" "$dir/gopath/src/watchresume/main.go" || exit 1
t0=$EPOCHREALTIME
(cd "$dir/gopath/src/watchresume" && go build -o "$dir/watchresume" .) || { echo "FAIL: go build"; exit 1; }
echo "go build: $(go version | cut -d' ' -f3), $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s"

"$tool" ca "$dir/c" >/dev/null && "$tool" client "$dir/c" client >/dev/null || exit 1
for n in n1 n2 n3; do "$tool" node "$dir/c" "$n" --ip 127.0.0.1 >/dev/null || exit 1; done

mkdir -p "$dir/run" || exit 1
"$dir/watchresume" -craftd "$craftd" -certs "$dir/c" -dir "$dir/run"
