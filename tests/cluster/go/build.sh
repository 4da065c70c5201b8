#!/usr/bin/env bash
# Builds the Go test programs (etcd's own client library from Debian's golang-etcd-server-dev,
# GOPATH mode, offline: nothing is downloaded) in one go, for //tests/cluster:go_programs:
#
#   build.sh OUTDIR FILE.go...
#
# Each FILE is tests/cluster/go/PROG/NAME.go; every PROG with package main is built to OUTDIR/PROG,
# and one with _test.go files also gets its test binary, OUTDIR/PROG.test; the other directories
# are packages they import (GOPATH/src/DIR). One build for all of them shares
# Go's build cache, so etcd's client library (most of the time) is compiled once, not once per
# test; and as a Bazel action it is cached, so the default and --config=asan runs of the suite
# share it too. Needs golang-go and golang-etcd-server-dev (scripts/deps.sh).
set -euo pipefail
out=$1
shift
command -v go >/dev/null || { echo "build.sh: go not installed (apt-get install golang-go; scripts/deps.sh)" >&2; exit 1; }
[ -d /usr/share/gocode/src/go.etcd.io/etcd/clientv3/concurrency ] ||
    { echo "build.sh: clientv3 not installed (apt-get install golang-etcd-server-dev; scripts/deps.sh)" >&2; exit 1; }
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/craft-go.XXXXXX")
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
export GO111MODULE=off GOPATH="$work/gopath:/usr/share/gocode" GOPROXY=off GOFLAGS= GOENV=off \
    GOCACHE="$work/gocache" CGO_ENABLED=0 HOME="$work"
progs=()
for f in "$@"; do
    prog=$(basename "$(dirname "$f")")
    mkdir -p "$work/gopath/src/$prog"
    cp "$f" "$work/gopath/src/$prog/"
    [[ " ${progs[*]} " == *" $prog "* ]] || progs+=("$prog")
done
t0=$EPOCHREALTIME
for prog in "${progs[@]}"; do
    # a package other programs import (craftport) is built through them
    grep -qx 'package main' "$work/gopath/src/$prog"/*.go || continue
    (cd "$work/gopath/src/$prog" && go build -trimpath -o "$out/$prog" .)
    if compgen -G "$work/gopath/src/$prog/*_test.go" >/dev/null; then
        (cd "$work/gopath/src/$prog" && go test -c -trimpath -o "$out/$prog.test" .)
    fi
done
echo "build.sh: ${progs[*]} with $(go version | cut -d' ' -f3) in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s" >&2
