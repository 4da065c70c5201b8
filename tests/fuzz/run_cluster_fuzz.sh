#!/bin/sh
# Builds the member table decoder's fuzz target (tests/fuzz/cluster_decode_fuzz.c over
# services/cluster.c) with Debian's clang and libFuzzer (ASan + UBSan) and runs it for a bounded
# time over the committed seeds. Used by //tests/fuzz:cluster_fuzz_test and by hand:
#     tests/fuzz/run_cluster_fuzz.sh [seconds] [libFuzzer flags...]   (from the repository root)
# e.g. tests/fuzz/run_cluster_fuzz.sh 600 -runs=200000. Needs clang and libclang-rt-14-dev, like
# run_wal_fuzz.sh (Bazel's gcc has no libFuzzer), and libssl-dev (member ids are SHA-256).
# New inputs go to a scratch directory; a crash leaves crash-* there and fails the script.
set -eu
seconds="${1:-20}"
[ $# -gt 0 ] && shift
root="${TEST_SRCDIR:+$TEST_SRCDIR/craft}"
root="$(cd "${root:-.}" && pwd)" # absolute: the run below happens in a scratch directory
cc="${CLANG:-clang}"
if ! command -v "$cc" >/dev/null 2>&1; then
    echo "run_cluster_fuzz: $cc not found: install clang and libclang-rt-14-dev" >&2
    exit 1
fi
work="$(mktemp -d "${TEST_TMPDIR:-/tmp}/clusterfuzz.XXXXXX")"
trap 'rm -rf "$work"' EXIT
"$cc" -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined \
    -fno-sanitize-recover=undefined -I"$root" \
    "$root/tests/fuzz/cluster_decode_fuzz.c" "$root/services/cluster.c" \
    -lcrypto -o "$work/cluster_decode_fuzz"
mkdir "$work/new"
cd "$work"
# A full table (64 members, longest names and hosts) encodes to about 22 KiB.
./cluster_decode_fuzz -max_total_time="$seconds" -timeout=10 -rss_limit_mb=1024 -max_len=24576 \
    -print_final_stats=1 "$@" "$work/new" "$root/tests/fuzz/corpus/cluster"
echo "run_cluster_fuzz: no crash (at most ${seconds}s); $(ls "$work/new" | wc -l) new inputs"
