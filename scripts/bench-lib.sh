# bench-lib.sh: pieces the bench*.sh scripts share. Sourced from the repository root, not run.

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

# ---- the 3-member loopback clusters of bench-compact.sh and bench-watch.sh ------------------
# These read the caller's settings: bench_ports=(CRAFT-BASE ETCD-BASE) (the client port of
# member 1 is BASE + 1000), o (BENCH_PORT_OFFSET, added to every port), dir (the run's
# directory), c (certificates, bench_certs ... n1 n2 n3 e1 e2 e3), tls (etcdctl's TLS flags),
# craftd (bench_build), pids; and call the caller's `die MESSAGE` (which exits).

# Installs what is missing (deps.sh) and builds craftd and TARGET with -c opt ($BAZEL_STARTUP
# holds bazel's startup flags); sets bin (bazel-bin) and craftd ($BENCH_CRAFTD, or the tree's),
# dies without a craftd or an etcd, and exports ETCDCTL_API=3.
#   bench_build TARGET
bench_build() {
    bash scripts/deps.sh >/dev/null
    read -r -a bzl <<<"${BAZEL_STARTUP:-}"
    bazel "${bzl[@]}" build -c opt //services:craftd "$1" 2>&1 | tail -1
    bin=$(bazel "${bzl[@]}" info -c opt bazel-bin 2>/dev/null)
    craftd=${BENCH_CRAFTD:-$bin/services/craftd}
    [ -x "$craftd" ] || die "no craftd at $craftd"
    command -v etcd >/dev/null || die "etcd not found (apt-get install etcd-server)"
    export ETCDCTL_API=3
}

# The prefix of SYSTEM's member names: n (craft: n1..n3) or e (etcd: e1..e3).
bench_member_prefix() { [ "$1" = craft ] && echo n || echo e; }

# The client port of MEMBER of SYSTEM; its peer port is the next one.
#   bench_client_port MEMBER SYSTEM, bench_peer_port MEMBER SYSTEM
bench_client_port() {
    local base=${bench_ports[0]}
    [ "$2" = craft ] || base=${bench_ports[1]}
    echo $((base + ${1#?} * 1000 + o))
}
bench_peer_port() { echo $(($(bench_client_port "$1" "$2") + 1)); }

# Dies if a client or peer port of a member of any SYSTEM given is already taken.
#   bench_check_ports SYSTEM...
bench_check_ports() {
    local s i p
    for s in "$@"; do
        for i in 1 2 3; do
            for p in $(bench_client_port "$(bench_member_prefix "$s")$i" "$s") \
                $(bench_peer_port "$(bench_member_prefix "$s")$i" "$s"); do
                if ss -Hltn "sport = :$p" 2>/dev/null | grep -q .; then die "port $p is in use"; fi
            done
        done
    done
}

# Stops the processes in pids and starts a new 3-member cluster of SYSTEM (craft runs $craftd)
# with the cluster token TOKEN, data in $dir/SYSTEM and logs in $dir/SYSTEM-MEMBER.log; sets
# eps (the three client URLs) and LEADER (the leader's), or dies when no leader comes up.
#   bench_fresh SYSTEM TOKEN
bench_fresh() {
    local sys=$1 token=$2 p i m cluster="" cp pp
    bench_stop_pids
    rm -rf "${dir:?}/$sys"
    mkdir -p "$dir/$sys"
    p=$(bench_member_prefix "$sys")
    eps=""
    for i in 1 2 3; do
        cluster+="${cluster:+,}$p$i=https://127.0.0.1:$(bench_peer_port "$p$i" "$sys")"
        eps+="${eps:+,}https://127.0.0.1:$(bench_client_port "$p$i" "$sys")"
    done
    for i in 1 2 3; do
        m=$p$i
        cp=$(bench_client_port "$m" "$sys") pp=$(bench_peer_port "$m" "$sys")
        if [ "$sys" = craft ]; then
            pids+=("$(bench_craftd "$dir/$sys-$m.log" "$m" "$dir/$sys/$m" "$cp" "$pp" "$cluster" "$token" \
                "$c" "$craftd")")
        else
            pids+=("$(bench_etcd "$dir/$sys-$m.log" "$m" "$dir/$sys/$m" "$cp" "$pp" "$cluster" "$token" \
                "$c")")
        fi
    done
    LEADER=$(bench_wait_leader "$eps" "${tls[@]}") || die "$sys: no leader (logs in $dir)"
}
