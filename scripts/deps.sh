#!/usr/bin/env bash
# deps.sh: install the Debian packages craft builds, tests and benchmarks with, if any is
# missing. Everything comes from Debian's registry; nothing else is downloaded, ever.
set -euo pipefail

PACKAGES=(
    bazel-bootstrap pkg-config gcc make       # build
    libgrpc-dev libssl-dev openssl            # rpc/ over gRPC core with mutual TLS
    libprotobuf-c-dev protobuf-c-compiler     # messages
    libcriterion-dev                          # unit tests
    liblmdb-dev                               # the KV store
    libgoogle-perftools-dev                   # tcmalloc for craftd
    clang libclang-rt-14-dev                  # libFuzzer targets
    etcd-server etcd-client                   # the real-world peer and client
    golang-go golang-etcd-server-dev          # etcd's Go client library (clientv3) in tests
    iproute2 iptables procps                  # integration and fault tests (partitions)
    libevent-dev prometheus curl              # metrics listener (evhttp, OpenSSL); its tests (promtool)
    jq python3-yaml                           # tests of the alert rules and dashboard (docs/operations.md)
)

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "deps: installing ${missing[*]}" >&2
if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
    command -v sudo >/dev/null || { echo "deps: run as root, or install: ${missing[*]}" >&2; exit 1; }
else
    SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >&2
$SUDO apt-get install -y -q "${missing[@]}" >&2
