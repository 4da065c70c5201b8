#!/bin/sh
# Builds the Lease service's fuzz target (tests/fuzz/lease_req_fuzz.c over services/lease_req.c
# and the protoc-c code of etcd's rpc.proto and kv.proto) with Debian's
# clang and libFuzzer (ASan + UBSan) and runs it for a bounded time over the committed seeds.
# Used by //tests/fuzz:lease_fuzz_test and by hand:
#     tests/fuzz/run_lease_fuzz.sh [seconds] [libFuzzer flags...]   (from the repository root)
# Needs clang and libclang-rt-14-dev (Bazel's gcc has no libFuzzer), protobuf-c-compiler and
# libprotobuf-c-dev. New inputs go to a scratch directory; a crash leaves crash-* there and
# fails the script.
set -eu
seconds="${1:-20}"
[ $# -gt 0 ] && shift
root="${TEST_SRCDIR:+$TEST_SRCDIR/craft}"
root="$(cd "${root:-.}" && pwd)" # absolute: the run below happens in a scratch directory
cc="${CLANG:-clang}"
if ! command -v "$cc" >/dev/null 2>&1; then
    echo "run_lease_fuzz: $cc not found: install clang and libclang-rt-14-dev" >&2
    exit 1
fi
work="$(mktemp -d "${TEST_TMPDIR:-/tmp}/leasefuzz.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# The generated code, under the same relative paths the sources include.
(cd "$root" && protoc-c --proto_path=. --c_out="$work" services/proto/etcd/kv.proto \
    services/proto/etcd/rpc.proto)
"$cc" -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined \
    -fno-sanitize-recover=undefined -I"$root" -I"$work" \
    "$root/tests/fuzz/lease_req_fuzz.c" "$root/services/lease_req.c" \
    "$work/services/proto/etcd/rpc.pb-c.c" "$work/services/proto/etcd/kv.pb-c.c" \
    -lprotobuf-c -o "$work/lease_req_fuzz"
mkdir "$work/new"
cd "$work"
# The messages are small; 4 KiB covers a TimeToLive answer with a few keys.
./lease_req_fuzz -max_total_time="$seconds" -timeout=10 -rss_limit_mb=1024 -max_len=4096 \
    -print_final_stats=1 "$@" "$work/new" "$root/tests/fuzz/corpus/lease"
echo "run_lease_fuzz: no crash (at most ${seconds}s); $(ls "$work/new" | wc -l) new inputs"
