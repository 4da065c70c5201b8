#!/bin/sh
# Builds the snapshot restore check's fuzz target (restore_check_fuzz.c) with Debian's clang and
# libFuzzer (ASan + UBSan) and runs it for a bounded time over corpus/restore. Used by
# //tests/fuzz:restore_fuzz_test and by hand: tests/fuzz/run_restore_fuzz.sh [seconds] (from the
# repository root). Needs clang and libclang-rt-14-dev, and OpenSSL's libcrypto.
set -eu
seconds="${1:-20}"
root="${TEST_SRCDIR:+$TEST_SRCDIR/craft}"
root="$(cd "${root:-.}" && pwd)" # absolute: the run below happens in a scratch directory
cc="${CLANG:-clang}"
command -v "$cc" >/dev/null 2>&1 || { echo "run_restore_fuzz: $cc not found" >&2; exit 1; }
work="$(mktemp -d "${TEST_TMPDIR:-/tmp}/restorefuzz.XXXXXX")"
trap 'rm -rf "$work"' EXIT
"$cc" -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined \
    -fno-sanitize-recover=undefined -I"$root" \
    "$root/tests/fuzz/restore_check_fuzz.c" "$root/services/snap_restore_check.c" \
    "$root/services/kvstore/kv_snap.c" "$root/raft/wal/crc32c.c" -lcrypto -lpthread \
    -o "$work/restore_fuzz"
mkdir "$work/new"
cd "$work"
./restore_fuzz -max_total_time="$seconds" -timeout=10 -rss_limit_mb=1024 -max_len=8192 \
    -print_final_stats=1 "$work/new" "$root/tests/fuzz/corpus/restore"
echo "run_restore_fuzz: no crash in ${seconds}s; $(ls "$work/new" | wc -l) new inputs"
