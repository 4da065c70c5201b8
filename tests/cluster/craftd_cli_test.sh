#!/usr/bin/env bash
# craftd's front door: bad flags exit 2 with a clear message; unusable certificates, a busy port
# and a data directory held by another craftd exit 1 with a clear message (never a crash or a
# hang); a healthy single member starts, serves, and exits 0 on SIGTERM.
set -uo pipefail
craftd=$1 tool=$2 ctl=$3
dir=$(mktemp -d "${TEST_TMPDIR:-/tmp}/cli.XXXXXX")
pids=()
trap 'for p in "${pids[@]+"${pids[@]}"}"; do kill -9 "$p" 2>/dev/null; done; rm -rf "$dir"' EXIT
fails=0
"$tool" ca "$dir/c" >/dev/null && "$tool" node "$dir/c" n1 --ip 127.0.0.1 >/dev/null &&
    "$tool" client "$dir/c" cl >/dev/null || { echo "cannot make certificates"; exit 1; }
# port: a free loopback port below the ephemeral range (port.sh).
# shellcheck source=tests/cluster/port.sh
source "$(dirname "${BASH_SOURCE[0]}")/port.sh"
cp=$(port) pp=$(port)
tls=(--cert-file "$dir/c/n1.pem" --key-file "$dir/c/n1-key.pem" --trusted-ca-file "$dir/c/ca.pem"
    --peer-cert-file "$dir/c/n1.pem" --peer-key-file "$dir/c/n1-key.pem"
    --peer-trusted-ca-file "$dir/c/ca.pem")
base=(--name n1 --listen-client-urls "https://127.0.0.1:$cp" --listen-peer-urls "https://127.0.0.1:$pp"
    --initial-cluster "n1=https://127.0.0.1:$pp" --heartbeat-interval 20 --election-timeout 100)

expect() { # want-exit, want-text, description, craftd args...
    local want=$1 text=$2 what=$3 out rc
    shift 3
    out=$(timeout 20 "$craftd" "$@" 2>&1 </dev/null)
    rc=$?
    if [ $rc -eq "$want" ] && grep -qE -- "$text" <<<"$out"; then
        echo "ok: $what -> $rc: $(head -1 <<<"$out")"
    else
        echo "FAIL: $what: exit $rc (want $want), output: $out"
        fails=$((fails + 1))
    fi
}

expect 2 "unknown flag" "unknown flag" --frobnicate
expect 2 "needs a value" "missing value" --name
expect 2 "plaintext is refused" "http:// without --insecure-plaintext" --name n1 \
    --listen-client-urls http://127.0.0.1:1 --listen-peer-urls http://127.0.0.1:2 \
    --initial-cluster n1=http://127.0.0.1:2
expect 2 "are required" "https:// without certificates" "${base[@]}"
expect 2 "not a member" "name outside the cluster" "${base[@]}" "${tls[@]}" --name n7
expect 2 "whole number" "bad number" "${base[@]}" "${tls[@]}" --heartbeat-interval ten
expect 0 "usage" "--help" --help
expect 2 "unknown suite TLS_NOT_A_SUITE" "unknown cipher suite" "${base[@]}" "${tls[@]}" \
    --cipher-suites TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,TLS_NOT_A_SUITE
expect 2 "TLS 1.3 suite" "TLS 1.3 cipher suite" "${base[@]}" "${tls[@]}" --cipher-suites TLS_AES_128_GCM_SHA256
expect 2 "mutually exclusive" "both kinds of peer name pinning" "${base[@]}" "${tls[@]}" \
    --peer-cert-allowed-cn n1 --peer-cert-allowed-hostname n1

echo "not a certificate" >"$dir/garbage.pem"
expect 1 "" "garbage certificate" --data-dir "$dir/d0" "${base[@]}" "${tls[@]}" --cert-file "$dir/garbage.pem"
expect 1 "" "missing key file" --data-dir "$dir/d0" "${base[@]}" "${tls[@]}" --peer-key-file "$dir/nope.pem"
"$tool" node "$dir/c" other --ip 127.0.0.1 >/dev/null
expect 1 "" "key that does not match the certificate" --data-dir "$dir/d0" "${base[@]}" "${tls[@]}" \
    --key-file "$dir/c/other-key.pem"

# A healthy member: starts, elects itself, serves a write, and stops cleanly on SIGTERM.
"$craftd" --data-dir "$dir/d1" "${base[@]}" "${tls[@]}" >"$dir/d1.log" 2>&1 &
pid=$!
pids+=("$pid")
cli=("$ctl" --endpoints "https://127.0.0.1:$cp" --cacert "$dir/c/ca.pem" --cert "$dir/c/cl.pem" --key "$dir/c/cl-key.pem")
ok=0
deadline=$((SECONDS + 30))
while [ $SECONDS -lt $deadline ]; do
    if timeout 5 "${cli[@]}" put k v >/dev/null 2>&1; then ok=1; break; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
done
if [ $ok = 1 ] && [ "$(timeout 5 "${cli[@]}" get k)" = v ]; then echo "ok: single member serves"; else
    echo "FAIL: single member did not serve"; cat "$dir/d1.log"; fails=$((fails + 1)); fi

# --cipher-suites: only the suite named is offered over TLS 1.2 (TLS 1.3 keeps OpenSSL's AEADs).
handshake() { # port, s_client options: prints the protocol negotiated, "" when refused
    timeout 5 openssl s_client -connect "127.0.0.1:$1" "${@:2}" -cert "$dir/c/cl.pem" \
        -key "$dir/c/cl-key.pem" -CAfile "$dir/c/ca.pem" -alpn h2 </dev/null 2>/dev/null |
        sed -n 's/^New, \(TLSv[0-9.]*\), Cipher is .*/\1/p'
}
cp3=$(port) pp3=$(port)
"$craftd" --data-dir "$dir/d3" --name n1 --listen-client-urls "https://127.0.0.1:$cp3" \
    --listen-peer-urls "https://127.0.0.1:$pp3" --initial-cluster "n1=https://127.0.0.1:$pp3" \
    "${tls[@]}" --cipher-suites TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 >"$dir/d3.log" 2>&1 &
pid3=$!
pids+=("$pid3")
got=""
deadline=$((SECONDS + 30))
while [ $SECONDS -lt $deadline ] && [ -z "$got" ]; do
    got=$(handshake "$cp3" -tls1_2 -cipher ECDHE-ECDSA-AES256-GCM-SHA384)
    [ -n "$got" ] || sleep 0.05
done
for port_ in "$cp3" "$pp3"; do
    if [ "$got" = TLSv1.2 ] && [ -z "$(handshake "$port_" -tls1_2 -cipher ECDHE-ECDSA-AES128-GCM-SHA256)" ] &&
        [ "$(handshake "$port_" -tls1_2 -cipher ECDHE-ECDSA-AES256-GCM-SHA384)" = TLSv1.2 ] &&
        [ "$(handshake "$port_" -tls1_3)" = TLSv1.3 ]; then
        echo "ok: --cipher-suites on port $port_"
    else
        echo "FAIL: --cipher-suites on port $port_ (first handshake '$got')"; cat "$dir/d3.log"
        fails=$((fails + 1))
    fi
done
kill -TERM "$pid3"
wait "$pid3"

# The same data directory, or the same port, while it runs.
pp2=$(port) cp2=$(port)
expect 1 "in use by another process|open elsewhere" "data directory held by another craftd" --data-dir "$dir/d1" --name n1 \
    --listen-client-urls "https://127.0.0.1:$cp2" --listen-peer-urls "https://127.0.0.1:$pp2" \
    --initial-cluster "n1=https://127.0.0.1:$pp2" "${tls[@]}"
expect 1 "listener" "client port in use" --data-dir "$dir/d2" "${base[@]}" "${tls[@]}"

kill -TERM "$pid"
timeout 20 tail --pid="$pid" -f /dev/null
wait "$pid"
rc=$?
if [ $rc -eq 0 ] && grep -q "stopped" "$dir/d1.log"; then echo "ok: SIGTERM -> clean exit 0"; else
    echo "FAIL: SIGTERM exit $rc"; cat "$dir/d1.log"; fails=$((fails + 1)); fi

# Restart on the same data: the write is still there.
"$craftd" --data-dir "$dir/d1" "${base[@]}" "${tls[@]}" >>"$dir/d1.log" 2>&1 &
pid=$!
pids+=("$pid")
got=""
deadline=$((SECONDS + 30))
while [ $SECONDS -lt $deadline ]; do
    got=$(timeout 5 "${cli[@]}" get k 2>/dev/null) && [ "$got" = v ] && break
    sleep 0.05
done
if [ "$got" = v ]; then echo "ok: restart recovers the write"; else echo "FAIL: after restart got '$got'"; fails=$((fails + 1)); fi

echo "craftd cli: $fails failed"
[ $fails -eq 0 ]
