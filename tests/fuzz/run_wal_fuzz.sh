#!/bin/sh
# Builds the WAL decoder fuzz target with Debian's clang and libFuzzer (ASan + UBSan) and runs it
# for a bounded time over the committed seed corpus. Used by //tests/fuzz:wal_fuzz_test and by hand:
#     tests/fuzz/run_wal_fuzz.sh [seconds]          (from the repository root)
# Bazel's C toolchain here is gcc, which has no libFuzzer, so this calls clang directly on the
# decoder's sources; it needs the clang and libclang-rt-14-dev packages (scripts install them).
# New inputs libFuzzer finds go to a scratch directory; crashes leave crash-* files there and
# make the script fail.
set -eu
seconds="${1:-20}"
root="${TEST_SRCDIR:+$TEST_SRCDIR/craft}"
root="$(cd "${root:-.}" && pwd)" # absolute: the run below happens in the scratch directory
cc="${CLANG:-clang}"
if ! command -v "$cc" >/dev/null 2>&1; then
    echo "run_wal_fuzz: $cc not found: install clang and libclang-rt-14-dev" >&2
    exit 1
fi
work="$(mktemp -d "${TEST_TMPDIR:-/tmp}/walfuzz.XXXXXX")"
trap 'rm -rf "$work"' EXIT
"$cc" -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined \
    -fno-sanitize-recover=undefined -I"$root" \
    "$root/tests/fuzz/wal_decode_fuzz.c" "$root/raft/wal/wal_format.c" "$root/raft/wal/crc32c.c" \
    -lpthread -o "$work/wal_decode_fuzz"
mkdir "$work/new"
cd "$work"
# The first directory receives new inputs; the committed corpus is only read.
./wal_decode_fuzz -max_total_time="$seconds" -timeout=10 -rss_limit_mb=1024 -max_len=8192 \
    -print_final_stats=1 "$work/new" "$root/tests/fuzz/corpus/wal"
echo "run_wal_fuzz: no crash in ${seconds}s; $(ls "$work/new" | wc -l) new inputs"
