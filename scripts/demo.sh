#!/usr/bin/env bash
# demo.sh: the main job. Installs what is missing, builds, starts a local 3-member craft cluster
# over mutual TLS, writes and reads keys with etcd's own etcdctl, shows `etcdctl endpoint status`
# and `member list`, runs a short craft-bench (pipelined puts and linearizable reads over every
# member), and leaves the cluster running.
#   bash scripts/demo.sh          start (or restart) the demo cluster
#   bash scripts/demo.sh stop     stop it (SIGTERM: clean shutdown)
# Everything lives in demo-data/ at the top of the repository (certificates, data, logs).
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)
data=$top/demo-data
names=(n1 n2 n3)
client_ports=(12379 22379 32379)
peer_ports=(12380 22380 32380)

stop_cluster() {
    local any=0
    for n in "${names[@]}"; do
        if [ -f "$data/$n.pid" ] && kill -0 "$(cat "$data/$n.pid")" 2>/dev/null; then
            kill -TERM "$(cat "$data/$n.pid")" && any=1
        fi
    done
    for n in "${names[@]}"; do
        [ -f "$data/$n.pid" ] || continue
        for _ in $(seq 100); do kill -0 "$(cat "$data/$n.pid")" 2>/dev/null || break; sleep 0.1; done
        rm -f "$data/$n.pid"
    done
    [ $any = 1 ] && echo "demo: cluster stopped" || true
}

if [ "${1:-}" = stop ]; then
    stop_cluster
    exit 0
fi

bash scripts/deps.sh
echo "demo: building craftd, craftctl and craft-bench"
bazel build //services:craftd //services:craftctl //bench:craft-bench 2>&1 | tail -1
bin=bazel-bin/services
stop_cluster

mkdir -p "$data"
if [ ! -f "$data/certs/ca.pem" ]; then
    echo "demo: making a CA and certificates in $data/certs"
    certs/craft-certs ca "$data/certs" >/dev/null
    certs/craft-certs client "$data/certs" client >/dev/null
    for n in "${names[@]}"; do
        certs/craft-certs node "$data/certs" "$n" --dns localhost --ip 127.0.0.1 >/dev/null
    done
fi

cluster=""
for i in 0 1 2; do
    cluster="$cluster${cluster:+,}${names[$i]}=https://127.0.0.1:${peer_ports[$i]}"
done
endpoints=""
for i in 0 1 2; do
    endpoints="$endpoints${endpoints:+,}https://127.0.0.1:${client_ports[$i]}"
done
for i in 0 1 2; do
    n=${names[$i]}
    "$bin/craftd" --name "$n" --data-dir "$data/$n" \
        --listen-client-urls "https://127.0.0.1:${client_ports[$i]}" \
        --listen-peer-urls "https://127.0.0.1:${peer_ports[$i]}" \
        --initial-cluster "$cluster" \
        --cert-file "$data/certs/$n.pem" --key-file "$data/certs/$n-key.pem" \
        --trusted-ca-file "$data/certs/ca.pem" \
        --peer-cert-file "$data/certs/$n.pem" --peer-key-file "$data/certs/$n-key.pem" \
        --peer-trusted-ca-file "$data/certs/ca.pem" >>"$data/$n.log" 2>&1 &
    echo $! >"$data/$n.pid"
done
echo "demo: started ${names[*]} (logs: $data/n*.log)"

export ETCDCTL_API=3
tls=(--cacert "$data/certs/ca.pem" --cert "$data/certs/client.pem" --key "$data/certs/client-key.pem")
ctl=("$bin/craftctl" --endpoints "$endpoints" "${tls[@]}")
for _ in $(seq 100); do
    "${ctl[@]}" status 2>/dev/null | grep -q ', leader, ' && break
    sleep 0.1
done
first=${endpoints%%,*}
set -x
etcdctl --endpoints "$first" "${tls[@]}" put greeting "hello from craft"
etcdctl --endpoints "$endpoints" "${tls[@]}" get greeting
etcdctl --endpoints "$first" "${tls[@]}" put /app/color blue
etcdctl --endpoints "$first" "${tls[@]}" put /app/size 42
etcdctl --endpoints "$first" "${tls[@]}" get /app/ --prefix
etcdctl --endpoints "$endpoints" "${tls[@]}" endpoint status -w table
etcdctl --endpoints "$first" "${tls[@]}" member list -w table
bazel-bin/bench/craft-bench --endpoints "$endpoints" "${tls[@]}" --conns 4 --inflight 64 \
    --duration 5 --mix put=50,range=50 --key-space 10000 --quiet
"${ctl[@]}" status
{ set +x; } 2>/dev/null
cat <<TXT

demo: the cluster is still running. From $top, try:
  export ETCDCTL_API=3 ENDPOINTS=$endpoints
  etcdctl --endpoints \$ENDPOINTS --cacert demo-data/certs/ca.pem --cert demo-data/certs/client.pem --key demo-data/certs/client-key.pem put k v
  etcdctl --endpoints \$ENDPOINTS --cacert demo-data/certs/ca.pem --cert demo-data/certs/client.pem --key demo-data/certs/client-key.pem get k
demo: stop it with: bash scripts/demo.sh stop
TXT
