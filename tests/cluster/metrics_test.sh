#!/usr/bin/env bash
# --listen-metrics-urls against a real 3-member craftd cluster over mutual TLS (issue 17):
# - /metrics over https with the client certificate passes `promtool check metrics`, carries
#   etcd's names, and the numbers move: has_leader 1 everywhere, is_leader 1 on exactly one
#   member, proposals_committed and grpc_server_handled_total{Put,OK} grow with puts, the WAL
#   fsync histogram counts, the leader measures round trips to both followers, leader_changes
#   grows after kill -9 of the leader;
# - /health is {"health":"true","reason":""} while a leader is known, 503 "RAFT NO LEADER" on a
#   member left alone, and true again once the others are back; /version is etcd's shape;
# - a client without a certificate, or with one from another CA, is refused on https; http://
#   is served only on the member that listed it, and an https port never answers plaintext;
# - a member whose store is full answers /health 503 "ALARM NOSPACE";
# - bad input (garbage bytes, a 100 KiB header, more idle connections than
#   --max-metrics-connections, 404/405) leaves the member serving metrics and KV requests.
set -uo pipefail
craftd=$1 tool=$2
export ETCDCTL_API=3
for c in curl promtool etcdctl python3; do
    command -v $c >/dev/null || { echo "$c not installed (scripts/deps.sh)"; exit 1; }
done
dir=$(mktemp -d "${TEST_TMPDIR:-/tmp}/metrics.XXXXXX")
declare -a pids
cleanup() {
    for p in "${pids[@]+"${pids[@]}"}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null; done
    rm -rf "$dir"
}
trap cleanup EXIT
fails=0
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }

"$tool" ca "$dir/c" >/dev/null && "$tool" client "$dir/c" client >/dev/null || exit 1
"$tool" ca "$dir/other" >/dev/null && "$tool" client "$dir/other" intruder >/dev/null || exit 1
# port: a free loopback port below the ephemeral range (port.sh).
# shellcheck source=tests/cluster/port.sh
source "$(dirname "${BASH_SOURCE[0]}")/port.sh"
names=(n1 n2 n3)
declare -a cport pport mport
cluster=""
for i in 0 1 2; do
    "$tool" node "$dir/c" "${names[$i]}" --ip 127.0.0.1 >/dev/null || exit 1
    cport[$i]=$(port)
    pport[$i]=$(port)
    mport[$i]=$(port)
    cluster="$cluster${cluster:+,}${names[$i]}=https://127.0.0.1:${pport[$i]}"
done
hport=$(port) # n1's plaintext metrics URL
start() {
    local i=$1 n=${names[$1]} murls="https://127.0.0.1:${mport[$1]}"
    [ "$i" = 0 ] && murls="$murls,http://127.0.0.1:$hport"
    "$craftd" --name "$n" --data-dir "$dir/$n" \
        --listen-client-urls "https://127.0.0.1:${cport[$i]}" \
        --listen-peer-urls "https://127.0.0.1:${pport[$i]}" --initial-cluster "$cluster" \
        --heartbeat-interval 50 --election-timeout 300 --proposal-timeout 2000 \
        --listen-metrics-urls "$murls" --max-metrics-connections 16 --metrics-timeout 2s \
        --cert-file "$dir/c/$n.pem" --key-file "$dir/c/$n-key.pem" --trusted-ca-file "$dir/c/ca.pem" \
        --peer-cert-file "$dir/c/$n.pem" --peer-key-file "$dir/c/$n-key.pem" \
        --peer-trusted-ca-file "$dir/c/ca.pem" >>"$dir/$n.log" 2>&1 &
    pids[$i]=$!
}
tls=(--cacert "$dir/c/ca.pem" --cert "$dir/c/client.pem" --key "$dir/c/client-key.pem")
get() { # member path [curl args...] -> body on stdout, curl's status
    local i=$1 path=$2
    shift 2
    curl -s --max-time 5 "${tls[@]}" "$@" "https://127.0.0.1:${mport[$i]}$path"
}
metric() { # member name-with-labels -> value ('' if absent)
    get "$1" /metrics | awk -v m="$2" '$1 == m { print $2 }'
}
ctl() {
    local i=$1
    shift
    timeout 20 etcdctl --endpoints "https://127.0.0.1:${cport[$i]}" "${tls[@]}" --command-timeout 5s "$@"
}
# Waits until exactly one live member says etcd_server_is_leader 1 and every live one
# has_leader 1; prints its index, or -1 after 15 s.
leader() {
    local deadline=$((SECONDS + 15)) i l n h
    while [ $SECONDS -lt $deadline ]; do
        l=-1 n=0 h=0
        for i in 0 1 2; do
            [ -n "${pids[$i]:-}" ] || continue
            [ "$(metric "$i" etcd_server_is_leader)" = 1 ] && { l=$i; n=$((n + 1)); }
            [ "$(metric "$i" etcd_server_has_leader)" = 1 ] || h=1
        done
        [ $n = 1 ] && [ $h = 0 ] && { echo "$l"; return; }
        sleep 0.1
    done
    echo -1
}

for i in 0 1 2; do start $i; done
l=$(leader)
[ "$l" -ge 0 ] && ok "exactly one member reports etcd_server_is_leader 1 (${names[$l]}), all has_leader 1" ||
    { bad "no single leader in /metrics"; tail -5 "$dir"/n*.log; exit 1; }
f=$(((l + 1) % 3))

# --- the exposition format, checked by Prometheus's own tool --------------------------------
for i in 0 1 2; do
    get "$i" /metrics >"$dir/m$i.txt"
    if out=$(promtool check metrics <"$dir/m$i.txt" 2>&1); then
        ok "promtool check metrics passes on ${names[$i]} ($(wc -l <"$dir/m$i.txt") lines)"
    else
        bad "promtool check metrics on ${names[$i]}: $out"
    fi
done
for m in etcd_server_has_leader etcd_server_is_leader etcd_server_leader_changes_seen_total \
    etcd_server_proposals_committed_total etcd_server_proposals_applied_total \
    etcd_server_proposals_pending etcd_server_proposals_failed_total \
    etcd_disk_wal_fsync_duration_seconds_count etcd_disk_backend_commit_duration_seconds_count \
    etcd_mvcc_db_total_size_in_bytes \
    etcd_network_peer_sent_bytes_total etcd_network_peer_received_bytes_total \
    grpc_server_started_total grpc_server_handled_total process_cpu_seconds_total \
    process_resident_memory_bytes process_open_fds process_start_time_seconds \
    craft_append_entries_per_message_count craft_replicator_outbox_dropped_total \
    craft_forward_batches_sent_total craft_read_index_rounds_total \
    craft_snapshot_save_duration_seconds_count craft_apply_lag_entries \
    etcd_debugging_lease_granted_total etcd_debugging_lease_renewed_total; do
    grep -qE "^$m(\{| )" "$dir/m$l.txt" || bad "${names[$l]}'s /metrics lacks $m"
done
ok "etcd's and craft's metric names present"
# Every TLS file's expiry (services/cert_expiry.h), equal to what openssl reads from the file.
for tf in peer client peer-ca client-ca; do
    case $tf in peer | client) pem="$dir/c/${names[$l]}.pem" ;; *) pem="$dir/c/ca.pem" ;; esac
    want=$(date -d "$(openssl x509 -noout -enddate -in "$pem" | cut -d= -f2)" +%s)
    got=$(sed -n "s/^craft_tls_certificate_expiry_timestamp_seconds{file=\"$tf\"} //p" "$dir/m$l.txt")
    [ "$got" = "$want" ] && ok "craft_tls_certificate_expiry_timestamp_seconds{file=\"$tf\"} is the file's notAfter ($got)" ||
        bad "certificate expiry of $tf: metric '$got', openssl says '$want'"
done

# --- the numbers move ------------------------------------------------------------------------
c0=$(metric "$l" etcd_server_proposals_committed_total)
put_ok='grpc_server_handled_total{grpc_type="unary",grpc_service="etcdserverpb.KV",grpc_method="Put",grpc_code="OK"}'
p0=$(metric "$f" "$put_ok")
w0=$(metric "$l" etcd_disk_wal_fsync_duration_seconds_count)
b0=$(metric "$l" etcd_disk_backend_commit_duration_seconds_count)
for k in $(seq 1 20); do ctl "$f" put "k$k" "v$k" >/dev/null || bad "put k$k"; done
c1=$(metric "$l" etcd_server_proposals_committed_total)
p1=$(metric "$f" "$put_ok")
w1=$(metric "$l" etcd_disk_wal_fsync_duration_seconds_count)
[ "$c1" -ge $((c0 + 20)) ] && ok "proposals_committed_total $c0 -> $c1 after 20 puts" ||
    bad "proposals_committed_total $c0 -> $c1 after 20 puts"
[ "$p1" -eq $((p0 + 20)) ] && ok "grpc_server_handled_total{Put,OK} $p0 -> $p1 on the member that took them" ||
    bad "grpc_server_handled_total{Put,OK} $p0 -> $p1"
[ "$w1" -gt "$w0" ] && ok "WAL fsync histogram counts ($w0 -> $w1)" || bad "WAL fsyncs not counted ($w0 -> $w1)"
# the store syncs what the puts dirtied in the background (every 100 ms): poll for it, 10 s at most
b1=$b0
for _ in $(seq 100); do
    b1=$(metric "$l" etcd_disk_backend_commit_duration_seconds_count)
    [ "${b1:-0}" -gt "${b0:-0}" ] && break
    sleep 0.1
done
[ "${b1:-0}" -gt "${b0:-0}" ] && ok "backend commit histogram counts the store's syncs ($b0 -> $b1)" ||
    bad "backend commits not counted ($b0 -> $b1)"
fb=$(metric "$f" craft_forward_items_sent_total)
[ "${fb:-0}" -ge 20 ] && ok "the follower counted its 20 forwarded writes" || bad "forwarded writes: '$fb'"
sent=$(get "$l" /metrics | awk '/^etcd_network_peer_sent_bytes_total\{To=/ { s += $2 } END { print s + 0 }')
[ "$sent" -gt 0 ] && ok "peer bytes sent by the leader: $sent" || bad "no peer bytes counted"
sleep 1.5 # round-trip probes go at most once a second, from the leader
rtt=$(get "$l" /metrics | awk '/^etcd_network_peer_round_trip_time_seconds_count\{To=/ { n++; if ($2 > 0) k++ } END { print n + 0, k + 0 }')
[ "$rtt" = "2 2" ] && ok "the leader measured round trips to both followers" || bad "round trips (peers, measured): $rtt"
ap=$(get "$l" /metrics | awk '/^craft_append_entries_per_message_sum\{/ { s += $2 } END { print s + 0 }')
[ "$ap" -ge 40 ] && ok "entries per AppendEntries counted on the leader (sum $ap)" || bad "AppendEntries entries sum $ap"

# --- /health and /version --------------------------------------------------------------------
out=$(get "$f" /health -w ' %{http_code}')
[ "$out" = '{"health":"true","reason":""} 200' ] && ok "/health: $out" || bad "/health: '$out'"
out=$(get "$f" /version -w ' %{http_code}')
[ "$out" = '{"etcdserver":"3.4.0","etcdcluster":"3.4.0"} 200' ] && ok "/version: $out" || bad "/version: '$out'"
out=$(get "$f" /nope -w '%{http_code}' -o /dev/null)
[ "$out" = 404 ] && ok "unknown path: 404" || bad "unknown path: $out"
out=$(get "$f" /metrics -X POST -w '%{http_code}' -o /dev/null)
[ "$out" = 405 ] && ok "POST /metrics: 405" || bad "POST /metrics: $out"

# --- who may scrape ------------------------------------------------------------------------
if curl -s --max-time 5 --cacert "$dir/c/ca.pem" "https://127.0.0.1:${mport[$f]}/metrics" >/dev/null; then
    bad "a client without a certificate was served"
else
    ok "a client without a certificate is refused (curl exit $?)"
fi
if curl -s --max-time 5 --cacert "$dir/c/ca.pem" --cert "$dir/other/intruder.pem" \
    --key "$dir/other/intruder-key.pem" "https://127.0.0.1:${mport[$f]}/metrics" >/dev/null; then
    bad "a client with another CA's certificate was served"
else
    ok "a client with another CA's certificate is refused"
fi
out=$(curl -s --max-time 5 "http://127.0.0.1:$hport/health")
[ "$out" = '{"health":"true","reason":""}' ] && ok "n1's listed http:// URL serves plaintext" || bad "n1's http:// URL: '$out'"
if curl -s --max-time 5 "http://127.0.0.1:${mport[$f]}/metrics" | grep -q etcd_server; then
    bad "an https:// metrics port answered plaintext HTTP"
else
    ok "an https:// metrics port never answers plaintext HTTP"
fi

# --- bad input ------------------------------------------------------------------------------
python3 - "${mport[$l]}" <<'EOF'
import socket, ssl, sys, time
port = int(sys.argv[1])
def raw(data):
    s = socket.create_connection(("127.0.0.1", port), timeout=3)
    try:
        s.sendall(data)
        s.recv(100)
    except Exception:
        pass
    s.close()
raw(b"\x00\xff garbage, not TLS\r\n\r\n" * 100)
raw(b"GET /metrics HTTP/1.1\r\n\r\n")  # plaintext HTTP to a TLS port
idle = [socket.create_connection(("127.0.0.1", port), timeout=3) for _ in range(40)]
time.sleep(0.5)
for s in idle:
    s.close()
EOF
big=$(head -c 102400 /dev/zero | tr '\0' a)
out=$(get "$l" /metrics -H "X-Big: $big" -w '%{http_code}' -o /dev/null)
[ "$out" != 200 ] && ok "a 100 KiB header is refused ($out)" || bad "a 100 KiB header was served"
# 40 idle connections held past --max-metrics-connections=16 (closed above); and some held now
python3 - "${mport[$l]}" <<'EOF' &
import socket, sys, time
idle = [socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=3) for _ in range(30)]
time.sleep(4)
EOF
holder=$!
sleep 0.5
# The idle ones time out (--metrics-timeout 2s), after which a scrape gets through again.
deadline=$((SECONDS + 10)) served=0
while [ $SECONDS -lt $deadline ]; do
    [ "$(metric "$l" etcd_server_is_leader)" = 1 ] && { served=1; break; }
    sleep 0.3
done
wait $holder
[ $served = 1 ] && ok "still scraping after garbage, a huge header and 30 idle connections" ||
    bad "the leader stopped answering /metrics"
[ "$(ctl "$l" get k1 --print-value-only)" = v1 ] && ok "the member still serves KV after the bad input" ||
    bad "KV after bad input"
kill -0 "${pids[$l]}" 2>/dev/null && ok "the member is still running" || bad "the member died"

# --- leader changes --------------------------------------------------------------------------
lc0=$(metric "$f" etcd_server_leader_changes_seen_total)
kill -9 "${pids[$l]}"
pids[$l]=""
nl=$(leader)
[ "$nl" -ge 0 ] && ok "new leader ${names[$nl]} after kill -9 of ${names[$l]}" || bad "no new leader"
lc1=$(metric "$f" etcd_server_leader_changes_seen_total)
[ "$lc1" -gt "$lc0" ] && ok "leader_changes_seen_total $lc0 -> $lc1 on ${names[$f]}" ||
    bad "leader_changes_seen_total $lc0 -> $lc1"

# --- /health on a member left alone ----------------------------------------------------------
alone=$f
other=$(((f + 1) % 3))
[ "$other" = "$l" ] && other=$(((f + 2) % 3))
kill -9 "${pids[$other]}"
pids[$other]=""
deadline=$((SECONDS + 10)) out=""
while [ $SECONDS -lt $deadline ]; do
    out=$(get "$alone" /health -w ' %{http_code}')
    [ "$out" = $'{"health":"false","reason":"RAFT NO LEADER"}\n 503' ] && break
    sleep 0.1
done
[ "$out" = $'{"health":"false","reason":"RAFT NO LEADER"}\n 503' ] &&
    ok "a member alone: /health 503 RAFT NO LEADER" || bad "a member alone: /health '$out'"
[ "$(metric "$alone" etcd_server_has_leader)" = 0 ] && ok "a member alone: has_leader 0" ||
    bad "a member alone: has_leader $(metric "$alone" etcd_server_has_leader)"
start "$l"
start "$other"
deadline=$((SECONDS + 15)) out=""
while [ $SECONDS -lt $deadline ]; do
    out=$(get "$alone" /health -w ' %{http_code}')
    [ "$out" = '{"health":"true","reason":""} 200' ] && break
    sleep 0.1
done
[ "$out" = '{"health":"true","reason":""} 200' ] && ok "/health true again once the others are back" ||
    bad "/health after the restart: '$out'"

# --- a full store: etcd's NOSPACE answer ------------------------------------------------------
# One member with a 1 MiB quota, metrics over plaintext: fill it until writes are refused
# ("database space exceeded"), with ever smaller values so that even a 1 KiB write no longer
# fits; then /health is 503 "ALARM NOSPACE" (checked before the leader, as etcd does).
qc=$(port) qp=$(port) qm=$(port)
"$craftd" --name n1 --data-dir "$dir/q" --listen-client-urls "https://127.0.0.1:$qc" \
    --listen-peer-urls "https://127.0.0.1:$qp" --initial-cluster "n1=https://127.0.0.1:$qp" \
    --heartbeat-interval 50 --election-timeout 300 --quota-backend-bytes 1048576 \
    --listen-metrics-urls "http://127.0.0.1:$qm" \
    --cert-file "$dir/c/n1.pem" --key-file "$dir/c/n1-key.pem" --trusted-ca-file "$dir/c/ca.pem" \
    --peer-cert-file "$dir/c/n1.pem" --peer-key-file "$dir/c/n1-key.pem" \
    --peer-trusted-ca-file "$dir/c/ca.pem" >>"$dir/q.log" 2>&1 &
pids[3]=$!
deadline=$((SECONDS + 10)) out=""
while [ $SECONDS -lt $deadline ]; do
    out=$(curl -s --max-time 2 "http://127.0.0.1:$qm/health")
    [ "$out" = '{"health":"true","reason":""}' ] && break
    sleep 0.1
done
[ "$out" = '{"health":"true","reason":""}' ] && ok "single member: /health true" || bad "single member: /health '$out'"
qput() {
    timeout 20 etcdctl --endpoints "https://127.0.0.1:$qc" "${tls[@]}" --command-timeout 5s put "$@"
}
refused=0
for sz in 100000 10000 900; do
    v=$(head -c $sz /dev/zero | tr '\0' x)
    for k in $(seq 1 300); do
        if ! qput "q$sz-$k" "$v" >/dev/null 2>"$dir/qerr"; then
            grep -q "database space exceeded" "$dir/qerr" && refused=$((refused + 1))
            break
        fi
    done
done
[ $refused = 3 ] && ok "writes refused with 'database space exceeded' at each value size" ||
    bad "quota: $refused of 3 sizes refused; $(head -c 300 "$dir/qerr")"
out=$(curl -s --max-time 5 "http://127.0.0.1:$qm/health" -w ' %{http_code}')
[ "$out" = $'{"health":"false","reason":"ALARM NOSPACE"}\n 503' ] &&
    ok "a full store: /health 503 ALARM NOSPACE" || bad "a full store: /health '$out'"

echo "$fails failed"
[ $fails -eq 0 ]
