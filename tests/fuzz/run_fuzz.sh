#!/bin/sh
# Builds one libFuzzer target with Debian's clang (ASan + UBSan) and runs it for a bounded time
# over its committed seeds: the shared runner for the fuzz targets added by issue 18 (the older
# run_*_fuzz.sh scripts predate it). Used by the *_fuzz_test sh_tests and by hand, from the
# repository root:
#
#   tests/fuzz/run_fuzz.sh NAME SECONDS MAX_LEN [-p PROTO]... [-l LIB]... -- SOURCE... [-- FLAGS...]
#
# NAME is the corpus directory (tests/fuzz/corpus/NAME) and the binary's name; each -p PROTO
# (a .proto path from the root) is compiled with protoc-c into a scratch directory that is on
# the include path, and its .pb-c.c is linked; each -l LIB is passed to the linker as -lLIB
# (protobuf-c is always linked); SOURCEs are paths from the root; FLAGS after a second -- go to
# libFuzzer. Needs clang and libclang-rt-14-dev (Bazel's gcc has no libFuzzer) and
# protobuf-c-compiler. New inputs go to a scratch directory; a crash leaves crash-* there, prints
# it and fails the script.
set -eu
[ $# -ge 4 ] || { echo "usage: run_fuzz.sh NAME SECONDS MAX_LEN [-p PROTO]... [-l LIB]... -- SOURCE... [-- FLAGS...]" >&2; exit 2; }
name=$1 seconds=$2 max_len=$3
shift 3
root="${TEST_SRCDIR:+$TEST_SRCDIR/craft}"
root="$(cd "${root:-.}" && pwd)" # absolute: the run below happens in a scratch directory
cc="${CLANG:-clang}"
if ! command -v "$cc" >/dev/null 2>&1; then
    echo "run_fuzz $name: $cc not found: install clang and libclang-rt-14-dev" >&2
    exit 1
fi
work="$(mktemp -d "${TEST_TMPDIR:-/tmp}/fuzz-$name.XXXXXX")"
trap 'rm -rf "$work"' EXIT
protos="" libs="" srcs=""
while [ $# -gt 0 ]; do
    case "$1" in
    -p) protos="$protos $2"; shift 2 ;;
    -l) libs="$libs -l$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "run_fuzz $name: unexpected '$1' before --" >&2; exit 2 ;;
    esac
done
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    srcs="$srcs $root/$1"
    shift
done
[ $# -gt 0 ] && shift # the second --: the rest are libFuzzer flags
[ -n "$srcs" ] || { echo "run_fuzz $name: no sources" >&2; exit 2; }
pbc=""
if [ -n "$protos" ]; then
    # The generated code, under the same relative paths the sources include.
    # shellcheck disable=SC2086
    (cd "$root" && protoc-c --proto_path=. --c_out="$work" $protos)
    for p in $protos; do pbc="$pbc $work/${p%.proto}.pb-c.c"; done
fi
# shellcheck disable=SC2086
"$cc" -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined \
    -fno-sanitize-recover=undefined -I"$root" -I"$work" $srcs $pbc -lprotobuf-c $libs \
    -lpthread -o "$work/$name"
mkdir "$work/new"
cd "$work"
"./$name" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=1024 -max_len="$max_len" \
    -print_final_stats=1 "$@" "$work/new" "$root/tests/fuzz/corpus/$name"
echo "run_fuzz $name: no crash (at most ${seconds}s); $(ls "$work/new" | wc -l) new inputs"
