#!/usr/bin/env bash
# Five craftd members over three sites (2 + 2 + 1) with WAN latency between the sites (issue 19;
# docs/multi-dc.md): wanproxy delays everything between members of different sites (owner rules:
# tests/wan/sites.sh), at a-b 30 ms, b-c 50 ms, a-c 100 ms RTT, with the documented timers
# (heartbeat 100 ms = the largest RTT, election 1000 ms = 10x). Checks, measured not slept:
#  - it elects; a put's commit costs at least the round trip to a majority (the proxy is in the path);
#  - `etcdctl move-leader` puts the leader in the chosen site;
#  - a linearizable read on a follower in c costs the round trip to the leader in a plus the
#    leader's confirming heartbeat round, commits nothing (etcd_server_proposals_committed_total
#    unchanged on every member) and a serializable one is local;
#  - with each whole site cut off in turn (iptables), the others keep committing;
#  - a leader whose site is cut off steps down (check-quorum) within two election timeouts and the
#    majority elects within two election timeouts plus two round trips per term it took (three
#    voters left need all three votes: a split vote repeats the round), and in at most three terms;
#  - a learner added in c, after the leader compacted its log, catches up by snapshot and then
#    entries and serves serializable reads locally.
# Needs root, iptables and setpriv; fails, never skips, without them.
#
#   cluster_test.sh WANPROXY CRAFTD CRAFT-CERTS CRAFT-BENCH
set -uo pipefail
here=$(dirname "$(realpath "$0")")
proxy=$(realpath "$1") certs=$(realpath "$3")
command -v iptables >/dev/null || { echo "FAIL: iptables not installed"; exit 1; }
command -v etcdctl >/dev/null || { echo "FAIL: etcdctl not installed (apt-get install etcd-client)"; exit 1; }
[ "$(id -u)" = 0 ] || { echo "FAIL: needs root (iptables rules, members under their own uids)"; exit 1; }
# shellcheck source=tests/wan/wan.sh
source "$here/wan.sh"
# shellcheck source=tests/wan/sites.sh
source "$here/sites.sh"
# Under /tmp, not TEST_TMPDIR: the members run as other uids and must reach their files.
dir=$(mktemp -d /tmp/wan-cluster.XXXXXX) && chmod 755 "$dir"
declare -A pid
cleanup() {
    local m
    for m in "${!pid[@]}"; do kill -9 "${pid[$m]}" 2>/dev/null; done
    wan_down
    sites_down
    if [ -n "${WAN_KEEP:-}" ]; then echo "kept $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP
cp "$2" "$dir/craftd" && cp "$4" "$dir/craft-bench" && chmod 755 "$dir/craftd" "$dir/craft-bench" || exit 1
craftd=$dir/craftd bench=$dir/craft-bench
fails=0
ok() { echo "ok: $*"; }
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
die() { echo "FAIL: $*"; for m in "${members[@]}"; do echo "--- $m"; tail -5 "$dir/$m.log" 2>/dev/null; done; exit 1; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

o=$(($$ % 200 + 20))
site_names=(a b c)
sites_init || exit 1
site_member n1 a 1; site_member n2 a 2; site_member n3 b 1; site_member n4 b 2; site_member n5 c 1
site_member n6 c 2 # the learner, added later
voters=(n1 n2 n3 n4 n5)
declare -A rtt=([a,a]=0 [b,b]=0 [c,c]=0 [a,b]=30 [b,a]=30 [b,c]=50 [c,b]=50 [a,c]=100 [c,a]=100)
H=100 E=1000 margin=${WAN_MARGIN_MS:-400}
wan_listen=$(proxy_ip)
# shellcheck disable=SC2046 # the flags are words
wan_up "$proxy" "CRAFTWANC-$$" "$dir" $(sites_proxy_flags) --rtt a,b=30ms --rtt b,c=50ms --rtt a,c=100ms ||
    die "wan_up"
sites_certs "$certs" || die "certificates"
timers=(--heartbeat-interval "$H" --election-timeout "$E" --snapshot-count 200 --snapshot-catchup-entries 20)
for m in "${voters[@]}"; do pid[$m]=$(member_start craft "$m" "$(sites_cluster "${voters[@]}")" "${timers[@]}"); done

tls=(--cacert "$dir/c/ca.pem" --cert "$dir/c/client.pem" --key "$dir/c/client-key.pem")
ctl() { timeout 20 etcdctl --endpoints "$(member_curl "$1")" "${tls[@]}" --command-timeout 8s "${@:2}"; }
# The member among the arguments that says it is leader (metrics), or nothing.
leader_among() {
    local m
    for m in "$@"; do [ "$(member_metric "$m" etcd_server_is_leader)" = 1 ] && { echo "$m"; return; }; done
}
# Waits up to $1 s for a leader among the rest; prints it.
wait_leader() {
    local deadline=$(($(now_ms) + $1 * 1000)) l
    shift
    while [ "$(now_ms)" -lt $deadline ]; do
        l=$(leader_among "$@")
        [ -n "$l" ] && { echo "$l"; return 0; }
        sleep 0.05
    done
    return 1
}
# Every voter has applied the leader's commit index (status' raftIndex equal), up to 30 s.
wait_converged() {
    local deadline=$((SECONDS + 30)) idx
    while [ $SECONDS -lt $deadline ]; do
        idx=$(for m in "${voters[@]}"; do member_metric "$m" etcd_server_proposals_applied_total; done | sort -u)
        [ "$(wc -l <<<"$idx")" = 1 ] && [ -n "$idx" ] && [ -n "$(leader_among "${voters[@]}")" ] && return 0
        sleep 0.1
    done
    return 1
}
# The smallest round trip from site S that reaches a majority of the voters (S's own vote included).
quorum_rtt() {
    local s=$1 m
    for m in "${voters[@]}"; do echo "${rtt[$s,${member_site[$m]}]}"; done | sort -n | sed -n "$(( ${#voters[@]} / 2 + 1 ))p"
}
# p50 latency (ms) of N calls of OP (put, range, srange) from CLIENT-SITE (or root) to MEMBER.
p50() { # client-site|-, member, op, n
    local run=()
    [ "$1" != - ] && run=(site_run "$1")
    "${run[@]}" "$bench" --endpoints "$(member_curl "$2")" "${tls[@]}" --conns 1 --inflight 1 \
        --total "$4" --mix "$3=1" --key-space 50 --json --quiet 2>>"$dir/bench.err" |
        python3 -c 'import json,sys; print("%.1f" % json.load(sys.stdin)["total"]["p50_ms"])'
}
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }'; }

# ---- it elects and commits; a commit pays the round trip to a majority ----
l=$(wait_leader 30 "${voters[@]}") || die "no leader in 30 s"
ok "leader $l (site ${member_site[$l]})"
ctl "$l" put k0 v0 >/dev/null || die "put on the leader"
q=$(quorum_rtt "${member_site[$l]}")
t=$(p50 - "$l" put 20)
if ge "$t" "$q" && ge $((q + margin)) "$t"; then ok "put p50 on leader $l: $t ms (majority RTT from its site $q ms)"
else fail "put p50 on leader $l: $t ms, want [$q, $((q + margin))] (the round trip to a majority): is the proxy in the path?"; fi

# ---- move-leader to a chosen site ----
move() { # to
    local id from
    from=$(leader_among "${voters[@]}")
    [ "$from" = "$1" ] && return 0
    id=$(ctl "$1" endpoint status -w json | python3 -c 'import json,sys; print("%x" % json.load(sys.stdin)[0]["Status"]["header"]["member_id"])')
    ctl "$from" move-leader "$id" >/dev/null
}
for want in n3 n1; do
    out=$(move "$want" 2>&1) || fail "move-leader to $want: $out"
    l=$(wait_leader 10 "${voters[@]}")
    [ "$l" = "$want" ] && ok "move-leader to $want (site ${member_site[$want]}): leader is $l" ||
        fail "move-leader to $want: leader is '$l'"
done
wait_converged || fail "not converged after move-leader"

# ---- a linearizable read on a follower: one round trip to the leader, no log write ----
l=$(leader_among "${voters[@]}")
if [ "$l" = n1 ]; then
    declare -A before
    for m in "${voters[@]}"; do before[$m]=$(member_metric "$m" etcd_server_proposals_committed_total); done
    rounds0=$(member_metric n5 craft_read_index_rounds_total)
    tl=$(p50 c n5 range 20)
    ts=$(p50 c n5 srange 20)
    rounds1=$(member_metric n5 craft_read_index_rounds_total)
    same=1
    for m in "${voters[@]}"; do
        a=$(member_metric "$m" etcd_server_proposals_committed_total)
        [ "$a" = "${before[$m]}" ] || { same=0; fail "linearizable reads committed on $m: ${before[$m]} -> $a"; }
    done
    [ $same = 1 ] && ok "40 reads on n5: proposals_committed_total unchanged on every member (${before[n1]})"
    [ $((rounds1 - rounds0)) -ge 20 ] && ok "follower n5 ran $((rounds1 - rounds0)) ReadIndex rounds for 20 linearizable reads" ||
        fail "n5's ReadIndex rounds $rounds0 -> $rounds1 for 20 reads"
    # n5 (c) -> leader n1 (a): 100 ms; the leader confirms with a heartbeat round to a majority (b: 30 ms)
    want=$((rtt[c,a] + $(quorum_rtt a)))
    if ge "$tl" "${rtt[c,a]}" && ge $((want + margin)) "$tl"; then
        ok "linearizable read on follower n5 (c): p50 $tl ms (RTT to the leader ${rtt[c,a]} + its heartbeat round $(quorum_rtt a) = $want)"
    else fail "linearizable read on n5: p50 $tl ms, want [${rtt[c,a]}, $((want + margin))]"; fi
    ge 10 "$ts" && ok "serializable read on n5 from site c: p50 $ts ms (local)" || fail "serializable read on n5: p50 $ts ms, want < 10"
else
    fail "leader is '$l', not n1, after move-leader: read checks skipped"
fi

# ---- each site cut off in turn: the others keep committing ----
for s in a b c; do
    site_cut "$s" || die "site_cut $s"
    t0=$(now_ms)
    rest=()
    for m in "${voters[@]}"; do [ "${member_site[$m]}" != "$s" ] && rest+=("$m"); done
    done_ok=0
    while [ $(($(now_ms) - t0)) -lt 15000 ]; do
        nl=$(leader_among "${rest[@]}")
        if [ -n "$nl" ] && ctl "$nl" put "cut-$s" v >/dev/null 2>&1; then done_ok=1; break; fi
        sleep 0.1
    done
    if [ $done_ok = 1 ]; then
        n=$(site_run "${member_site[$nl]}" "$bench" --endpoints "$(member_curl "$nl")" "${tls[@]}" --conns 1 \
            --inflight 4 --total 40 --json --quiet 2>>"$dir/bench.err" |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["total"]["ops"])')
        [ "${n:-0}" = 40 ] && ok "site $s cut off: leader $nl committed after $(($(now_ms) - t0)) ms, then 40 more puts" ||
            fail "site $s cut off: only '$n' of 40 puts through $nl"
    else
        fail "site $s cut off: no commit among ${rest[*]} in 15 s"
    fi
    site_heal
    wait_converged || fail "not converged after healing site $s"
done

# ---- a leader in a site that is cut off steps down; the majority elects ----
move n1 >/dev/null 2>&1
l=$(wait_leader 10 "${voters[@]}")
if [ "$l" != n1 ]; then
    fail "leader '$l', want n1 before cutting site a"
else
    term0=$(member_metric n1 craft_raft_term)
    site_cut a || die "site_cut a"
    t0=$(now_ms) tstep='' telect='' nl=''
    while [ $(($(now_ms) - t0)) -lt 10000 ] && { [ -z "$tstep" ] || [ -z "$telect" ]; }; do
        [ -z "$tstep" ] && [ "$(member_metric n1 etcd_server_is_leader)" = 0 ] && tstep=$(($(now_ms) - t0))
        [ -z "$telect" ] && nl=$(leader_among n3 n4 n5) && [ -n "$nl" ] && telect=$(($(now_ms) - t0))
        sleep 0.02
    done
    if [ -n "$tstep" ] && [ "$tstep" -le $((2 * E + H + margin)) ]; then
        ok "leader n1 cut off with site a stepped down after $tstep ms (check-quorum; bound 2 x election + heartbeat)"
    else fail "leader n1 in the cut-off site a: still leader ${tstep:+until $tstep ms}${tstep:-after 10 s} (want <= $((2 * E + H + margin)) ms): check-quorum?"; fi
    # Three of five are left, and a new leader needs all three votes: two candidates in one term
    # split the vote and the round is repeated after another randomized timeout. So the bound is
    # per election round: 2 x election + 2 RTT (pre-vote, vote) for each term the election took.
    rounds=1
    [ -n "$nl" ] && term1=$(member_metric "$nl" craft_raft_term) && rounds=$((term1 - term0))
    [ "$rounds" -ge 1 ] || rounds=1
    bound=$((rounds * (2 * E + 2 * 100) + margin))
    if [ -n "$telect" ] && [ "$telect" -le $bound ]; then
        ok "majority elected $nl (site ${member_site[$nl]}) after $telect ms in $rounds round(s) (bound $rounds x (2 x election + 2 RTT) + margin = $bound)"
    else fail "majority side: no new leader ${telect:+until $telect ms}${telect:-in 10 s} (want <= $bound ms for $rounds round(s))"; fi
    [ "$rounds" -le 3 ] || fail "the majority side needed $rounds terms to elect (split votes every time?)"
    site_heal
    wait_converged || fail "not converged after healing site a"
fi

# ---- a learner at a remote site catches up (snapshot, then entries), serves serializable reads ----
l=$(leader_among "${voters[@]}")
site_run "${member_site[$l]}" "$bench" --endpoints "$(member_curl "$l")" "${tls[@]}" --conns 1 --inflight 16 \
    --total 600 --key-space 300 --json --quiet >/dev/null 2>>"$dir/bench.err" || fail "600 puts before the learner"
ctl "$l" put learner-key learner-value >/dev/null || fail "put learner-key"
out=$(ctl "$l" member add n6 --learner --peer-urls "$(member_purl n6)" 2>&1) || fail "member add --learner: $out"
t0=$(now_ms)
pid[n6]=$(member_start craft n6 "$(sites_cluster "${voters[@]}" n6)" "${timers[@]}" --initial-cluster-state existing)
rev=$(ctl "$l" endpoint status -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["header"]["revision"])')
caught=''
while [ $(($(now_ms) - t0)) -lt 30000 ]; do
    r=$(ctl n6 endpoint status -w json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["header"]["revision"])' 2>/dev/null)
    [ -n "$r" ] && [ "$r" -ge "$rev" ] && { caught=$(($(now_ms) - t0)); break; }
    sleep 0.2
done
if [ -n "$caught" ]; then
    ok "learner n6 (site c) reached revision $rev in $caught ms"
    restores=$(member_metric n6 craft_snapshot_restore_duration_seconds_count)
    [ "${restores:-0}" -ge 1 ] && ok "the learner installed a snapshot ($restores)" || fail "the learner installed no snapshot"
    ctl "$l" put after-join yes >/dev/null
    v=''
    for _ in $(seq 50); do
        v=$(site_run c timeout 10 etcdctl --endpoints "$(member_curl n6)" "${tls[@]}" get after-join --consistency=s --print-value-only 2>/dev/null)
        [ "$v" = yes ] && break
        sleep 0.1
    done
    [ "$v" = yes ] && ok "the learner then takes entries: a later put reads back from it" || fail "later put on the learner: '$v'"
    v=$(site_run c timeout 10 etcdctl --endpoints "$(member_curl n6)" "${tls[@]}" get learner-key --consistency=s --print-value-only)
    [ "$v" = learner-value ] && ok "serializable read on the learner: $v" || fail "serializable read on the learner: '$v'"
    ts=$(p50 c n6 srange 20)
    ge 10 "$ts" && ok "serializable reads on the learner from site c: p50 $ts ms (local)" ||
        fail "serializable reads on the learner: p50 $ts ms, want < 10"
else
    fail "learner n6 did not reach revision $rev in 30 s"
fi

[ $fails -eq 0 ] && echo "PASS" || { echo "$fails failed (WAN_KEEP=1 keeps $dir)"; }
[ $fails -eq 0 ]
