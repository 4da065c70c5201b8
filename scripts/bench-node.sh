#!/usr/bin/env bash
# bench-node.sh: commit throughput and latency of a 3-member cluster (one process, loopback gRPC,
# mutual TLS, fsync on): pipelining and batching on vs. off, for 1, 64 and 1024 proposers.
# Extra arguments go to node-bench (--seconds S --rounds R --proposers 1,64,1024 --json).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
bazel build -c opt //tests/bench:node-bench 2>&1 | tail -1
certs=$(mktemp -d)
trap 'rm -rf "$certs"' EXIT
certs/craft-certs ca "$certs" >/dev/null
for n in b1 b2 b3; do certs/craft-certs node "$certs" $n --ip 127.0.0.1 >/dev/null; done
"$(bazel info -c opt bazel-bin 2>/dev/null)/tests/bench/node-bench" --certs "$certs" "$@"
