# shellcheck shell=bash disable=SC2154 # o, dir, craftd: the caller's settings (see below)
# Sourced (after wan.sh) by the WAN cluster test, scripts/bench-wan.sh and scripts/soak-wan.sh
# (issue 19; docs/multi-dc.md "Members in sites"): real members (craftd or etcd) placed in
# loopback sites, with wanproxy between the sites.
#
# Placement: each member binds its own address in its site (127.O.S.K: O this run's octet, S the
# site's number, K the member's) and runs under a uid of its own (setpriv); the site owns its
# members' uids and a client uid (K = 0), and wanproxy's owner rules send whatever those uids open
# to another site through that site's own listener. So craftd and etcd, which dial from
# 127.0.0.1, are delayed like members of their site, and so is a client run with `site_run`.
# The proxy listens on 127.O.0.1 (in no site), so a site is cut off by address and port alone
# (`site_cut`), while root's own calls from 127.0.0.1 (status, metrics) still reach every member.
#
# Caller's settings: o (octet, 20..219), dir (scratch directory, world-readable: members run as
# other uids), site_names (e.g. (a b c)); then sites_init. Members: site_member NAME SITE K.
#   site_ip SITE K, site_uid SITE K, site_run SITE CMD... (as the site's client uid)
#   sites_proxy_flags -> the wanproxy flags (--site, --owner) for the sites
#   site_cut SITE / site_heal SITE (filter chain $site_chain; sites_down removes it)
declare -A site_num member_site member_k
site_names=() members=() site_chain='' site_filter_up=''

sites_init() {
    local i=1 s
    for s in "${site_names[@]}"; do site_num[$s]=$i; i=$((i + 1)); done
    site_chain="CRAFTCUT-$$"
    command -v setpriv >/dev/null || { echo "FAIL: setpriv not installed (util-linux)"; return 1; }
}

site_ip() { echo "127.$o.${site_num[$1]}.$2"; }
site_uid() { echo $((61000 + o * 40 + site_num[$1] * 10 + $2)); }
proxy_ip() { echo "127.$o.0.1"; }
site_member() { members+=("$1"); member_site[$1]=$2; member_k[$1]=$3; }
member_ip() { site_ip "${member_site[$1]}" "${member_k[$1]}"; }
member_uid() { site_uid "${member_site[$1]}" "${member_k[$1]}"; }
# Runs a command as SITE's client uid: its connections to other sites are delayed.
site_run() {
    local u
    u=$(site_uid "$1" 0)
    shift
    setpriv --reuid "$u" --regid "$u" --clear-groups -- "$@"
}
member_run() {
    local u
    u=$(member_uid "$1")
    shift
    setpriv --reuid "$u" --regid "$u" --clear-groups -- "$@"
}

sites_proxy_flags() {
    local s
    for s in "${site_names[@]}"; do
        echo "--site $s=127.$o.${site_num[$s]}.0/24 --owner $s=$(site_uid "$s" 0)-$(site_uid "$s" 9)"
    done
}

# The port of SITE's own proxy listener (from the rules wan_up installed).
site_proxy_port() {
    sed -n "s/^wanproxy: rule .*--uid-owner $(site_uid "$1" 0)-[0-9]* .*--to-destination [0-9.]*:\([0-9]*\)$/\1/p" \
        "$dir/wanproxy.out" | head -1
}

# Cuts SITE off from every other site: connections through the proxy to its members and from its
# listener are dropped both ways. Inside the site, and root's calls from 127.0.0.1, still work.
site_cut() {
    local net p px
    net="127.$o.${site_num[$1]}.0/24" p=$(proxy_ip) px=$(site_proxy_port "$1")
    [ -n "$px" ] || { echo "site_cut: no proxy listener for site $1"; return 1; }
    if [ -z "$site_filter_up" ]; then
        iptables -w -N "$site_chain" || return 1
        site_filter_up=1
        iptables -w -A OUTPUT -o lo -j "$site_chain" || return 1
    fi
    iptables -w -A "$site_chain" -p tcp -s "$p" -d "$net" -j DROP &&
        iptables -w -A "$site_chain" -p tcp -s "$net" -d "$p" -j DROP &&
        iptables -w -A "$site_chain" -p tcp -d "$p" --dport "$px" -j DROP &&
        iptables -w -A "$site_chain" -p tcp -s "$p" --sport "$px" -j DROP
}
site_heal() { if [ -n "$site_filter_up" ]; then iptables -w -F "$site_chain"; fi; }
sites_down() {
    [ -n "$site_filter_up" ] || return 0
    while iptables -w -D OUTPUT -o lo -j "$site_chain" 2>/dev/null; do :; done
    iptables -w -F "$site_chain" 2>/dev/null && iptables -w -X "$site_chain" 2>/dev/null || true
    site_filter_up=''
}

# Certificates in $dir/c: a CA, a client certificate `client`, one per member naming its address
# (a peer dials the address and checks it) and the addresses its peer connections arrive from:
# the proxy's between sites and 127.0.0.1 inside a site (etcd 3.4 checks a peer's client
# certificate against the connection's source address when the certificate has IP SANs). All
# readable by the members' uids (test keys only).
sites_certs() {
    local certs=$1 m
    "$certs" ca "$dir/c" >/dev/null && "$certs" client "$dir/c" client >/dev/null || return 1
    for m in "${members[@]}"; do
        "$certs" node "$dir/c" "$m" --ip "$(member_ip "$m")" --ip "$(proxy_ip)" --ip 127.0.0.1 --dns localhost >/dev/null || return 1
    done
    chmod -R a+rX "$dir/c"
}

# URLs: client 2379, peer 2380, metrics (plaintext) 2381 on the member's own address.
member_curl() { echo "https://$(member_ip "$1"):2379"; }
member_purl() { echo "https://$(member_ip "$1"):2380"; }
member_murl() { echo "http://$(member_ip "$1"):2381"; }
# NAME=PEER-URL,... for the members given (default: all).
sites_cluster() {
    local m out='' ms=("$@")
    [ ${#ms[@]} -gt 0 ] || ms=("${members[@]}")
    for m in "${ms[@]}"; do out="$out${out:+,}$m=$(member_purl "$m")"; done
    echo "$out"
}

# Starts member NAME of SYSTEM (craft: $craftd, a copy the member uids can run; etcd: etcd) as
# its uid; prints its pid. Extra flags follow (timers, window, --initial-cluster-state...).
#   member_start SYSTEM NAME CLUSTER [FLAG...]
member_start() {
    local sys=$1 m=$2 cluster=$3 c="$dir/c" data="$dir/data-$2"
    shift 3
    mkdir -p "$data" && chown "$(member_uid "$m"):$(member_uid "$m")" "$data" && chmod 700 "$data"
    local common=(--name "$m" --data-dir "$data"
        --listen-client-urls "$(member_curl "$m")" --advertise-client-urls "$(member_curl "$m")"
        --listen-peer-urls "$(member_purl "$m")" --initial-advertise-peer-urls "$(member_purl "$m")"
        --listen-metrics-urls "$(member_murl "$m")"
        --initial-cluster "$cluster" --initial-cluster-token "wan-$$"
        --cert-file "$c/$m.pem" --key-file "$c/$m-key.pem" --trusted-ca-file "$c/ca.pem"
        --peer-cert-file "$c/$m.pem" --peer-key-file "$c/$m-key.pem" --peer-trusted-ca-file "$c/ca.pem")
    local u
    u=$(member_uid "$m")
    # setpriv itself in the background (not a function, which would be a subshell): it execs the
    # member, so $! is the member's pid and the caller's kill reaches it.
    if [ "$sys" = craft ]; then
        setpriv --reuid "$u" --regid "$u" --clear-groups -- "$craftd" "${common[@]}" "$@" >>"$dir/$m.log" 2>&1 &
    else
        setpriv --reuid "$u" --regid "$u" --clear-groups -- etcd "${common[@]}" --client-cert-auth \
            --peer-client-cert-auth --logger zap --log-outputs stderr "$@" >>"$dir/$m.log" 2>&1 &
    fi
    echo $!
}

# A metric's value on member NAME (sum over its label sets), or empty.
member_metric() {
    curl -s --max-time 3 "$(member_murl "$1")/metrics" 2>/dev/null |
        awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $2; f = 1 } END { if (f) printf "%d\n", s }'
}
