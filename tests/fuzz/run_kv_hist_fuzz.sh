#!/bin/sh
# Builds the KV history record decoders's fuzz target with Debian's clang and libFuzzer (ASan +
# UBSan) and runs it for a bounded time over the committed seeds. Used by
# //tests/fuzz:kv_hist_fuzz_test and by hand:
#     tests/fuzz/run_kv_hist_fuzz.sh [seconds]          (from the repository root)
# Needs clang and libclang-rt-14-dev, like run_wal_fuzz.sh (Bazel's gcc has no libFuzzer).
# New inputs go to a scratch directory; a crash leaves crash-* there and fails the script.
set -eu
seconds="${1:-20}"
root="${TEST_SRCDIR:+$TEST_SRCDIR/craft}"
root="$(cd "${root:-.}" && pwd)" # absolute: the run below happens in a scratch directory
cc="${CLANG:-clang}"
if ! command -v "$cc" >/dev/null 2>&1; then
    echo "run_kv_hist_fuzz: $cc not found: install clang and libclang-rt-14-dev" >&2
    exit 1
fi
work="$(mktemp -d "${TEST_TMPDIR:-/tmp}/kvhistfuzz.XXXXXX")"
trap 'rm -rf "$work"' EXIT
"$cc" -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined \
    -fno-sanitize-recover=undefined -I"$root" \
    "$root/tests/fuzz/kv_hist_fuzz.c" "$root/services/kvstore/kv_hist.c" \
    -lpthread -o "$work/kv_hist_fuzz"
mkdir "$work/new"
cd "$work"
./kv_hist_fuzz -max_total_time="$seconds" -timeout=10 -rss_limit_mb=1024 -max_len=1024 \
    -print_final_stats=1 "$work/new" "$root/tests/fuzz/corpus/kv_hist"
echo "run_kv_hist_fuzz: no crash in ${seconds}s; $(ls "$work/new" | wc -l) new inputs"
