# members.sh, sourced (after port.sh) by the shell tests that run three craftd members on
# loopback with mutual TLS and talk to them with etcdctl. The caller sets $tool (craft-certs),
# $craftd and $dir, and has made the CA in CERTDIR.
#   members_init CERTDIR   member certificates n1..n3 and two free ports each; sets names,
#                          cport, pport (arrays by member index) and cluster (--initial-cluster)
#   start I [FLAG...]      starts member I in the background (data $dir/nI, log $dir/nI.log,
#                          appended), its pid in pids[I]; FLAGs follow the common ones
names=(n1 n2 n3)
declare -a cport pport pids
cluster="" members_certs=""
members_init() {
    members_certs=$1
    local i
    for i in 0 1 2; do
        "$tool" node "$members_certs" "${names[$i]}" --ip 127.0.0.1 >/dev/null || return 1
        cport[$i]=$(port)
        pport[$i]=$(port)
        cluster="$cluster${cluster:+,}${names[$i]}=https://127.0.0.1:${pport[$i]}"
    done
}
start() {
    local i=$1 n=${names[$1]} c=$members_certs
    shift
    "$craftd" --name "$n" --data-dir "$dir/$n" \
        --listen-client-urls "https://127.0.0.1:${cport[$i]}" \
        --listen-peer-urls "https://127.0.0.1:${pport[$i]}" --initial-cluster "$cluster" \
        --heartbeat-interval 50 --election-timeout 300 --proposal-timeout 2000 \
        --cert-file "$c/$n.pem" --key-file "$c/$n-key.pem" --trusted-ca-file "$c/ca.pem" \
        --peer-cert-file "$c/$n.pem" --peer-key-file "$c/$n-key.pem" \
        --peer-trusted-ca-file "$c/ca.pem" "$@" >>"$dir/$n.log" 2>&1 &
    pids[$i]=$!
}
