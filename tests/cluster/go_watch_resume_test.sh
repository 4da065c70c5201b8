#!/usr/bin/env bash
# etcd's Watch with etcd's own Go client library (issue 15): clientv3 from Debian's
# golang-etcd-server-dev (etcd 3.4) against a real 3-member craft cluster over mutual TLS. A watch
# whose member is killed -9 must resume on another member from its last revision with no gap and
# no duplicate (the client library does the resuming), and a watch resumed below a compaction
# must end with etcd's ErrCompacted. The scenario and its checks are in
# go/watchresume/main.go (built by //tests/cluster:go_programs, go/build.sh); this script makes
# the certificates and runs it. The program starts, kills and restarts the craftd members itself.
# Args: craftd, craft-certs, the watchresume binary.
set -uo pipefail
craftd=$1 tool=$2 prog=$3
dir=$(mktemp -d "${TEST_TMPDIR:-/tmp}/gowatch.XXXXXX")
# The members are the Go program's children and die with it (Pdeathsig); only files remain here.
trap 'rm -rf "$dir"' EXIT

"$tool" ca "$dir/c" >/dev/null && "$tool" client "$dir/c" client >/dev/null || exit 1
for n in n1 n2 n3; do "$tool" node "$dir/c" "$n" --ip 127.0.0.1 >/dev/null || exit 1; done

mkdir -p "$dir/run" || exit 1
"$prog" -craftd "$craftd" -certs "$dir/c" -dir "$dir/run"
