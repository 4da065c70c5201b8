# Sourced by WAN tests (issue 19; docs/multi-dc.md "The WAN harness"): starts tests/wan/wanproxy
# and puts it between sites with iptables nat OUTPUT rules in a chain of the caller's own, jumped
# to from OUTPUT for loopback only. wan_down removes the chain and stops the proxy; the caller
# traps it on EXIT (and INT/TERM/HUP -> exit) so no rule outlives the test, even on failure.
#
#   wan_up PROXY CHAIN DIR [wanproxy flags: --site ... --rtt ... --owner ...]
#     (no --listen or --rules: it picks the ports and prints the rules; it listens on
#     $wan_listen, default 127.0.0.1, which must be in no site)
#   wan_down
wan_chain='' wan_pid=''

# Safe under `set -e` (scripts/bench-wan.sh, soak-wan.sh): `wait` returns the stopped proxy's
# status (143), which must not end the caller's EXIT trap before the chain is removed.
wan_down() {
    if [ -n "$wan_pid" ]; then
        kill "$wan_pid" 2>/dev/null || true
        wait "$wan_pid" 2>/dev/null || true
    fi
    wan_pid=''
    [ -n "$wan_chain" ] || return 0
    while iptables -w -t nat -D OUTPUT -o lo -j "$wan_chain" 2>/dev/null; do :; done
    iptables -w -t nat -F "$wan_chain" 2>/dev/null && iptables -w -t nat -X "$wan_chain" 2>/dev/null || true
    wan_chain=''
}

# Waits (10 s at most) for the proxy's "listening on" line, then installs the rules it printed
# before it (--rules: with --owner, its per-site listeners' ports are known only once it runs).
wan_up() {
    local proxy=$1 chain=$2 dir=$3
    shift 3
    # Removed first: the child truncates it only once it runs, and a line left by an earlier
    # proxy read before then would send the rules to a dead port.
    rm -f "$dir/wanproxy.out"
    "$proxy" --listen "${wan_listen:-127.0.0.1}:0" "$@" --rules "$chain" >"$dir/wanproxy.out" 2>"$dir/wanproxy.err" &
    wan_pid=$!
    local addr='' deadline=$((SECONDS + 10))
    while [ -z "$addr" ]; do
        addr=$(sed -n 's/^wanproxy: listening on \([0-9.:]*\),.*/\1/p' "$dir/wanproxy.out" 2>/dev/null)
        [ -n "$addr" ] && break
        kill -0 "$wan_pid" 2>/dev/null || { echo "wan_up: wanproxy exited: $(cat "$dir/wanproxy.err")"; return 1; }
        [ $SECONDS -lt $deadline ] || { echo "wan_up: wanproxy did not start in 10 s"; return 1; }
        sleep 0.05
    done
    iptables -w -t nat -N "$chain" || return 1
    wan_chain=$chain
    local rules
    rules=$(sed -n 's/^wanproxy: rule //p' "$dir/wanproxy.out")
    [ -n "$rules" ] || { echo "wan_up: wanproxy printed no rules"; return 1; }
    while read -r rule; do
        # shellcheck disable=SC2086 # the rule is a list of words
        iptables -w $rule || return 1
    done <<<"$rules"
    iptables -w -t nat -A OUTPUT -o lo -j "$chain" || return 1
}
