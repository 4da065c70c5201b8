#!/usr/bin/env bash
# The WAN harness's own test (issue 19; docs/multi-dc.md "The WAN harness"): wanproxy between three
# loopback sites by iptables nat rules (tests/wan/wan.sh), measured with wanprobe's echo server.
# Round trips between sites are never below the RTT and p90 within a margin of it; with jitter
# they stay inside RTT +-J and do vary; a stream through a jittered link comes back complete and in
# order; a rated link's throughput is within 15% of its rate; a link inside a site is not delayed;
# loss adds a retransmission timeout; connections over --max-conns are closed; bad flags exit 2
# naming the problem; the chain is gone after a failing run and after SIGTERM.
# Needs root and iptables; fails, never skips, without them.
#
#   wan_test.sh WANPROXY WANPROBE
set -uo pipefail
proxy=$(realpath "$1") probe=$(realpath "$2") here=$(dirname "$(realpath "$0")")
command -v iptables >/dev/null || { echo "FAIL: iptables not installed"; exit 1; }
[ "$(id -u)" = 0 ] || { echo "FAIL: the WAN harness needs root (iptables nat rules)"; exit 1; }
# shellcheck source=tests/wan/wan.sh
source "$here/wan.sh"
dir=$(mktemp -d "${TEST_TMPDIR:-/tmp}/wan.XXXXXX")
# The owner checks run the probe as other uids: a copy they can reach, under /tmp.
odir=$(mktemp -d /tmp/wan-owner.XXXXXX) && chmod 755 "$odir" && cp "$probe" "$odir/wanprobe" && chmod 755 "$odir/wanprobe"
trap 'wan_down; rm -rf "$dir" "$odir"' EXIT
trap 'exit 1' INT TERM HUP
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
# check NAME 'awk condition over the probe's key=value line' LINE
check() {
    local name=$1 cond=$2 line=$3 k
    # every value the condition reads must be there: an empty line must not pass "x < 1"
    for k in $(grep -o 'v\["[a-z0-9_]*"\]' <<<"$cond" | sort -u); do cond="(${k:2:-1} in v) && $cond"; done
    if echo "$line" | tr ' ' '\n' | awk -F= '{v[$1]=$2} END {exit !('"$cond"')}'; then
        echo "ok: $name: $line"
    else
        fail "$name: want $cond, got: $line"
    fi
}
# A loaded 2-core machine delays some samples by tens of ms, so the upper bound is on p90.
margin=${WAN_MARGIN_MS:-8}
# The rules are machine-wide: sites under a second octet of this run's own (from the pid), so two
# runs at once (bazel --runs_per_test, another worktree) do not send each other's traffic.
o=$(($$ % 200 + 20))
sites=(--site a=127.$o.1.0/24 --site b=127.$o.2.0/24 --site c=127.$o.3.0/24 --site d=127.$o.4.0/24)

# ---- bad flags: exit 2 and a message naming the problem ----
bad() {
    local want=$1
    shift
    local out rc
    out=$("$proxy" --listen 127.0.0.1:0 "$@" 2>&1)
    rc=$?
    if [ $rc -eq 2 ] && grep -qF -- "$want" <<<"$out"; then echo "ok: bad flags $*: $out"
    else fail "bad flags $*: want exit 2 and '$want', got $rc: $out"; fi
}
bad "unknown site" --site a=127.$o.1.0/24 --site b=127.$o.2.0/24 --rtt a,x=30ms
bad "want a duration" "${sites[@]}" --rtt a,b=30
bad "overlaps another site" --site a=127.$o.1.0/24 --site b=127.$o.0.0/16
bad "loopback" --site a=10.0.1.0/24 --site b=127.$o.2.0/24
bad "want a positive rate" "${sites[@]}" --rate a,b=10Mb
bad "percentage 0%..99%" "${sites[@]}" --jitter 150%
bad "two different sites" "${sites[@]}" --rtt a,a=5ms
bad "at least two sites" --site a=127.$o.1.0/24
bad "outside every site" --site a=127.0.0.0/24 --site b=127.$o.2.0/24
bad "unknown flag" "${sites[@]}" --delay a,b=3ms
bad "overlaps another site's uids" "${sites[@]}" --owner a=59001-59005 --owner b=59005
bad "uids 1..2^31-1" "${sites[@]}" --owner a=0
bad "unknown site" "${sites[@]}" --owner x=59001
bad "use --rules" "${sites[@]}" --owner a=59001 --print-iptables X

# ---- the chain is removed when a test using wan.sh fails, and when it is killed ----
(source "$here/wan.sh"; trap wan_down EXIT
 wan_up "$proxy" CRAFTWAN-F$$ "$dir" "${sites[@]}" --rtt a,b=10ms || exit 3; exit 1)
[ $? -eq 1 ] || fail "the failing run did not get as far as its rules"
iptables -w -t nat -S | grep -q "CRAFTWAN-F$$" && fail "chain CRAFTWAN-F$$ left behind by a failing run"
(set -e; source "$here/wan.sh"; trap wan_down EXIT
 wan_up "$proxy" CRAFTWAN-E$$ "$dir" "${sites[@]}" --rtt a,b=10ms || exit 3; exit 0)
[ $? -eq 0 ] || fail "the run under set -e did not end with status 0"
iptables -w -t nat -S | grep -q "CRAFTWAN-E$$" && fail "chain CRAFTWAN-E$$ left behind by a run under set -e"
mkfifo "$dir/up"
(source "$here/wan.sh"; trap wan_down EXIT
 wan_up "$proxy" CRAFTWAN-K$$ "$dir" "${sites[@]}" --rtt a,b=10ms || exit 3
 sleep 600 & sp=$!; trap 'kill $sp; exit 1' TERM
 echo "$wan_pid" >"$dir/up"; wait $sp) &
sub=$!
read -r -t 20 kpid <"$dir/up" || fail "the killed run never came up"
iptables -w -t nat -S | grep -q "CRAFTWAN-K$$" || fail "chain CRAFTWAN-K$$ not there while running"
kill -TERM $sub; wait $sub
iptables -w -t nat -S | grep -q "CRAFTWAN-K$$" && fail "chain CRAFTWAN-K$$ left behind after SIGTERM"
kill -0 "$kpid" 2>/dev/null && fail "wanproxy $kpid still running after SIGTERM"
echo "ok: chains removed after a failing run, a run under set -e and after SIGTERM"

# ---- measurements ----
# Site a owns uids ua..ua+4, b owns ub..ub+4 (a range of this run's own, from the octet).
ua=$((59000 + o * 10)) ub=$((59000 + o * 10 + 5))
wan_up "$proxy" "CRAFTWAN-$$" "$dir" "${sites[@]}" --owner a=$ua-$((ua + 4)) --owner b=$ub-$((ub + 4)) \
    --rtt a,b=30ms --rtt a,c=60ms --jitter 0% \
    --rate a,d=2MB/s --rtt b,c=10ms --loss b,c=100% --loss-delay 100ms --max-conns 4 --seed $$ ||
    { echo "FAIL: wan_up"; exit 1; }
cat "$dir/wanproxy.out"
line=$("$probe" rtt 127.$o.1.1 127.$o.2.1 100) || fail "rtt a-b: $line"
check "rtt a-b 30ms" "v[\"min_ms\"] >= 30 && v[\"p90_ms\"] <= 30 + $margin" "$line"
line=$("$probe" rtt 127.$o.2.7 127.$o.1.9 50) || fail "rtt b-a: $line"
check "rtt b-a 30ms (either end may open)" "v[\"min_ms\"] >= 30 && v[\"p90_ms\"] <= 30 + $margin" "$line"
line=$("$probe" rtt 127.$o.1.1 127.$o.3.1 50) || fail "rtt a-c: $line"
check "rtt a-c 60ms" "v[\"min_ms\"] >= 60 && v[\"p90_ms\"] <= 60 + $margin" "$line"
line=$("$probe" rtt 127.$o.1.1 127.$o.1.2 100) || fail "rtt a-a: $line"
check "inside site a: not delayed" "v[\"p50_ms\"] < 1" "$line"
# --owner: a process of site a's uid dialing from 127.0.0.1 (in no site), as craftd and etcd do,
# goes through site a's own listener: delayed to b and c, not inside a.
as_uid() { local u=$1; shift; setpriv --reuid "$u" --regid "$u" --clear-groups -- "$@"; }
line=$(as_uid $((ua + 1)) "$odir/wanprobe" rtt 127.0.0.1 127.$o.2.1 50) || fail "owner a -> b: $line"
check "uid of site a, from 127.0.0.1, to b: 30ms" "v[\"min_ms\"] >= 30 && v[\"p90_ms\"] <= 30 + $margin" "$line"
line=$(as_uid $((ua + 4)) "$odir/wanprobe" rtt 127.0.0.1 127.$o.3.1 50) || fail "owner a -> c: $line"
check "uid of site a, from 127.0.0.1, to c: 60ms" "v[\"min_ms\"] >= 60 && v[\"p90_ms\"] <= 60 + $margin" "$line"
line=$(as_uid $((ub + 2)) "$odir/wanprobe" rtt 127.0.0.1 127.$o.1.1 50) || fail "owner b -> a: $line"
check "uid of site b, from 127.0.0.1, to a: 30ms" "v[\"min_ms\"] >= 30 && v[\"p90_ms\"] <= 30 + $margin" "$line"
line=$(as_uid $((ua + 1)) "$odir/wanprobe" rtt 127.0.0.1 127.$o.1.7 50) || fail "owner a -> a: $line"
check "uid of site a, from 127.0.0.1, inside a: not delayed" "v[\"p50_ms\"] < 1" "$line"
line=$("$probe" rtt 127.0.0.1 127.$o.2.1 50) || fail "root -> b: $line"
check "root (no site's uid), from 127.0.0.1, to b: not delayed" "v[\"p50_ms\"] < 1" "$line"
line=$("$probe" rtt 127.$o.2.1 127.$o.3.1 10) || fail "rtt b-c: $line"
check "loss b-c 100%: each way one 100 ms retransmission timeout more" \
    "v[\"min_ms\"] >= 210 && v[\"p50_ms\"] <= 210 + $margin" "$line"
line=$("$probe" rate 127.$o.1.1 127.$o.4.1 4000000) || fail "rate a-d: $line"
check "rate a-d 2MB/s +-15%" "v[\"rate\"] >= 1700000 && v[\"rate\"] <= 2300000" "$line"
line=$("$probe" conns 127.$o.1.1 127.$o.2.1 6) || fail "conns: $line"
check "--max-conns 4: two of six closed" "v[\"echoed\"] == 4 && v[\"closed\"] == 2" "$line"
wan_down

# jitter 20% on 30 ms: each way in [12, 18] ms, so the round trip is in [24, 36]; it must vary
wan_up "$proxy" "CRAFTWAN-J$$" "$dir" "${sites[@]}" --rtt a,b=30ms --jitter 20% --buffer 65536 --seed $$ ||
    { echo "FAIL: wan_up"; exit 1; }
line=$("$probe" rtt 127.$o.1.1 127.$o.2.1 100) || fail "rtt a-b jitter: $line"
check "rtt a-b 30ms +-20%" \
    "v[\"min_ms\"] >= 24 && v[\"min_ms\"] <= 27 && v[\"p90_ms\"] <= 36 + $margin && v[\"p90_ms\"] - v[\"min_ms\"] >= 4" "$line"
line=$("$probe" stream 127.$o.1.1 127.$o.2.1 30000000 2>&1) || fail "stream a-b jitter: $line"
check "30 MB echoed through a jittered link with 64 KiB buffers: complete, in order" "v[\"bytes\"] == 30000000" "$line"
wan_down

[ $fails -eq 0 ] && echo "PASS" || echo "$fails failed"
[ $fails -eq 0 ]
