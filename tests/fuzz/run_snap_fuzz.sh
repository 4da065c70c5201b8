#!/bin/sh
# Builds the snapshot fuzz target (decoders and the transfer receive path) with Debian's clang and
# libFuzzer (ASan + UBSan) and runs it for a bounded time over the committed seed corpus. Used by
# //tests/fuzz:snap_fuzz_test and by hand:
#     tests/fuzz/run_snap_fuzz.sh [seconds]          (from the repository root)
# Same shape as run_wal_fuzz.sh, for the same reason: Bazel's toolchain here is gcc, without
# libFuzzer, so clang is called directly (packages clang and libclang-rt-14-dev). New inputs go to
# a scratch directory; a crash leaves crash-* files there and fails the script.
set -eu
seconds="${1:-20}"
root="${TEST_SRCDIR:+$TEST_SRCDIR/craft}"
root="$(cd "${root:-.}" && pwd)" # absolute: the run below happens in the scratch directory
cc="${CLANG:-clang}"
if ! command -v "$cc" >/dev/null 2>&1; then
    echo "run_snap_fuzz: $cc not found: install clang and libclang-rt-14-dev" >&2
    exit 1
fi
work="$(mktemp -d "${TEST_TMPDIR:-/tmp}/snapfuzz.XXXXXX")"
trap 'rm -rf "$work"' EXIT
"$cc" -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined \
    -fno-sanitize-recover=undefined -I"$root" \
    "$root/tests/fuzz/snap_decode_fuzz.c" "$root/raft/snap/snap_format.c" \
    "$root/raft/snap/snap_store.c" "$root/raft/wal/crc32c.c" "$root/log/log.c" \
    -lpthread -o "$work/snap_decode_fuzz"
mkdir "$work/new"
cd "$work"
# The first directory receives new inputs; the committed corpus is only read. The target's
# scratch store lives under TEST_TMPDIR (or /tmp) and is removed at exit.
./snap_decode_fuzz -max_total_time="$seconds" -timeout=10 -rss_limit_mb=1024 -max_len=8192 \
    -print_final_stats=1 "$work/new" "$root/tests/fuzz/corpus/snap"
echo "run_snap_fuzz: no crash in ${seconds}s; $(ls "$work/new" | wc -l) new inputs"
