# bench-lib.sh: pieces bench.sh and bench-ab.sh share. Sourced from the repository root, not run.

# Stops every process in the caller's array `pids`: TERM, up to 10 s each, then KILL; empties it.
bench_stop_pids() {
    local p
    for p in "${pids[@]+"${pids[@]}"}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]+"${pids[@]}"}"; do
        for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    pids=()
}

# A CA, a client certificate `client` and one member certificate per further argument (with
# the DNS SAN localhost and the IP SAN 127.0.0.1), all in directory $1.
bench_certs() {
    local d=$1 n
    shift
    certs/craft-certs ca "$d" >/dev/null
    certs/craft-certs client "$d" client >/dev/null
    for n in "$@"; do certs/craft-certs node "$d" "$n" --dns localhost --ip 127.0.0.1 >/dev/null; done
}

# The client URL of the leader of the cluster behind endpoints $1 (etcdctl's TLS flags follow),
# asking every 0.2 s for up to 30 s; status 1 if no member is leader by then.
bench_wait_leader() {
    local eps=$1 l
    shift
    for _ in $(seq 150); do
        l=$(ETCDCTL_API=3 etcdctl --endpoints "$eps" "$@" --command-timeout 3s endpoint status -w json \
            2>/dev/null | python3 2>/dev/null -c '
import json, sys
for s in json.load(sys.stdin):
    st = s["Status"]
    if st.get("leader") and st["header"].get("member_id") == st["leader"]:
        print(s["Endpoint"]); break' || true)
        [ -n "$l" ] && { echo "$l"; return 0; }
        sleep 0.2
    done
    return 1
}

# User + system CPU time (clock ticks) the processes named by the arguments have used so far.
bench_cpu_ticks() {
    local t=0 p v
    for p in "$@"; do
        v=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)
        t=$((t + v))
    done
    echo $t
}

# Starts one craftd member on loopback in the background and prints its pid (the caller keeps it
# in `pids`: this usually runs in a command substitution, a subshell).
#   bench_craftd LOG NAME DATA-DIR CLIENT-PORT PEER-PORT INITIAL-CLUSTER TOKEN CERT-DIR COMMAND...
# COMMAND is how to run craftd (e.g. `env K=V /path/craftd --some-flag=x`); the member's own
# flags follow it. Certificates are CERT-DIR/NAME.pem, NAME-key.pem and ca.pem (bench_certs).
bench_craftd() {
    local log=$1 n=$2 data=$3 cport=$4 pport=$5 cluster=$6 token=$7 c=$8
    shift 8
    "$@" --name "$n" --data-dir "$data" \
        --listen-client-urls "https://127.0.0.1:$cport" --advertise-client-urls "https://127.0.0.1:$cport" \
        --listen-peer-urls "https://127.0.0.1:$pport" --initial-advertise-peer-urls "https://127.0.0.1:$pport" \
        --initial-cluster "$cluster" --initial-cluster-token "$token" \
        --cert-file "$c/$n.pem" --key-file "$c/$n-key.pem" --trusted-ca-file "$c/ca.pem" \
        --peer-cert-file "$c/$n.pem" --peer-key-file "$c/$n-key.pem" --peer-trusted-ca-file "$c/ca.pem" \
        >"$log" 2>&1 &
    echo $!
}

# Starts one etcd member of a new cluster on loopback in the background, mutual TLS on client
# and peer traffic as bench_craftd's craftd, and prints its pid (keep it in `pids`).
#   bench_etcd LOG NAME DATA-DIR CLIENT-PORT PEER-PORT INITIAL-CLUSTER TOKEN CERT-DIR [FLAG...]
bench_etcd() {
    local log=$1 n=$2 data=$3 cport=$4 pport=$5 cluster=$6 token=$7 c=$8
    shift 8
    etcd --name "$n" --data-dir "$data" \
        --listen-client-urls "https://127.0.0.1:$cport" --advertise-client-urls "https://127.0.0.1:$cport" \
        --listen-peer-urls "https://127.0.0.1:$pport" --initial-advertise-peer-urls "https://127.0.0.1:$pport" \
        --initial-cluster "$cluster" --initial-cluster-token "$token" --initial-cluster-state new \
        --cert-file "$c/$n.pem" --key-file "$c/$n-key.pem" --trusted-ca-file "$c/ca.pem" \
        --client-cert-auth --peer-cert-file "$c/$n.pem" --peer-key-file "$c/$n-key.pem" \
        --peer-trusted-ca-file "$c/ca.pem" --peer-client-cert-auth \
        --logger zap --log-outputs stderr "$@" >"$log" 2>&1 &
    echo $!
}
