#!/usr/bin/env bash
# etcd's Cluster API and move-leader with the real client: Debian's etcdctl (3.4) against a
# 3-member craft cluster over mutual TLS (services/cluster_api.h). Members added here never start
# (joining is not this test's subject): member list (voters, learners, names, URLs), member add
# --learner through a follower (Peer.Member to the leader), a second learner refused (etcd's
# limit of 1), member promote of a learner that has not caught up refused, member update (and a
# taken URL refused), member remove of an unknown id (etcd's text) and of the learner, adding a
# voter to three started voters (etcd allows it) and removing it, move-leader to a follower and to
# a learner (refused), the strict reconfiguration check with a member down (add a voter, add a
# learner, remove a started voter: refused; remove the downed one: allowed), and removing the
# leader (a new leader among those left, who serve writes).
set -uo pipefail
craftd=$1 tool=$2
export ETCDCTL_API=3
command -v etcdctl >/dev/null || { echo "etcdctl not installed (apt-get install etcd-client)"; exit 1; }
dir=$(mktemp -d "${TEST_TMPDIR:-/tmp}/etcdctl-member.XXXXXX")
cleanup() {
    for p in "${pids[@]+"${pids[@]}"}"; do kill -9 "$p" 2>/dev/null; done
    rm -rf "$dir"
}
trap cleanup EXIT
fails=0
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }

"$tool" ca "$dir/c" >/dev/null && "$tool" client "$dir/c" client >/dev/null || exit 1
# port: a free loopback port below the ephemeral range (port.sh).
# shellcheck source=tests/cluster/port.sh
source "$(dirname "${BASH_SOURCE[0]}")/port.sh"
# shellcheck source=tests/cluster/members.sh
source "$(dirname "${BASH_SOURCE[0]}")/members.sh"
members_init "$dir/c" || exit 1
ep() { echo "https://127.0.0.1:${cport[$1]}"; }
tls=(--cacert "$dir/c/ca.pem" --cert "$dir/c/client.pem" --key "$dir/c/client-key.pem")
ctl() { # member, args...
    local i=$1
    shift
    timeout 20 etcdctl --endpoints "$(ep "$i")" "${tls[@]}" --command-timeout 5s "$@"
}
# Every running member's endpoint, comma-separated.
live_eps() {
    local i e=""
    for i in 0 1 2; do [ -n "${pids[$i]:-}" ] && e="$e${e:+,}$(ep "$i")"; done
    echo "$e"
}
# Index of the member endpoint status calls leader, or -1. Waits up to 15 s.
leader() {
    local deadline=$((SECONDS + 15)) i js
    while [ $SECONDS -lt $deadline ]; do
        for i in 0 1 2; do
            [ -n "${pids[$i]:-}" ] || continue
            js=$(ctl "$i" endpoint status -w json 2>/dev/null) || continue
            python3 -c 'import json,sys; s=json.load(sys.stdin)[0]["Status"]; sys.exit(0 if s["leader"]==s["header"]["member_id"] else 1)' <<<"$js" && { echo "$i"; return; }
        done
        sleep 0.05
    done
    echo -1
}
# member id (hex, as etcdctl prints and takes it) of member index i, from member list -w json.
member_id() { # from-member, name
    ctl "$1" member list -w json | python3 -c 'import json,sys; n=sys.argv[1]; print("".join("%x" % m["ID"] for m in json.load(sys.stdin)["members"] if m.get("name","")==n))' "$2"
}
# "id learner name peerURL" lines of member list -w json, sorted.
members() {
    ctl "$1" member list -w json | python3 -c '
import json,sys
for m in sorted(json.load(sys.stdin)["members"], key=lambda m: m.get("name","") + m["peerURLs"][0]):
    print("%x" % m["ID"], bool(m.get("isLearner")), m.get("name","") or "-", m["peerURLs"][0])'
}

for i in 0 1 2; do start $i; done
l=$(leader)
[ "$l" -ge 0 ] || { bad "no leader"; tail -5 "$dir"/n*.log; exit 1; }
f=$(((l + 1) % 3))
g=$(((l + 2) % 3))
ok "leader is ${names[$l]}"
ctl "$l" put k v >/dev/null

# --- member list ---------------------------------------------------------------------------------
out=$(members "$f")
if [ "$(wc -l <<<"$out")" = 3 ] && grep -q " False n1 https://127.0.0.1:${pport[0]}$" <<<"$out"; then
    ok "member list: three voters with names and peer URLs"; else bad "member list: $out"; fi

# --- a learner, added through a follower ------------------------------------------------------
lport=$(port)
out=$(ctl "$f" member add spare --learner --peer-urls "https://127.0.0.1:$lport" 2>&1)
if grep -q "Member *[0-9a-f]* added to cluster" <<<"$out" && grep -q "ETCD_INITIAL_CLUSTER=" <<<"$out"; then
    ok "member add --learner through a follower"; else bad "member add --learner: $out"; fi
lid=$(members "$l" | awk -v u="https://127.0.0.1:$lport" '$4 == u {print $1}')
lrow=$(members "$g" | grep "https://127.0.0.1:$lport$")
[ -n "$lid" ] && [ "$lrow" = "$lid True - https://127.0.0.1:$lport" ] &&
    ok "member list shows the learner, unnamed until it starts ($lrow)" || bad "learner row: '$lrow'"
out=$(ctl "$l" member list)
grep -q "^$lid, unstarted, , https://127.0.0.1:$lport, , true$" <<<"$out" &&
    ok "member list table: the learner is unstarted" || bad "member list table: $out"

out=$(ctl "$l" member add spare2 --learner --peer-urls "https://127.0.0.1:$(port)" 2>&1)
grep -q "etcdserver: too many learner members in cluster" <<<"$out" &&
    ok "a second learner is refused (etcd's limit)" || bad "second learner: $out"
out=$(ctl "$f" member add dup --peer-urls "https://127.0.0.1:${pport[$g]}" 2>&1)
grep -q "etcdserver: Peer URLs already exists" <<<"$out" && ok "a taken peer URL is refused" ||
    bad "taken URL: $out"
out=$(ctl "$l" member add bad --peer-urls "127.0.0.1:$(port)" 2>&1)
[ $? -ne 0 ] && ok "a bad peer URL is refused ($(tail -1 <<<"$out" | head -c 80))" || bad "bad URL: $out"

# --- promote: the learner never started, so it is not in sync ----------------------------------
out=$(ctl "$f" member promote "$lid" 2>&1)
grep -q "etcdserver: can only promote a learner member which is in sync with leader" <<<"$out" &&
    ok "member promote of a learner behind the leader is refused" || bad "promote lagging: $out"
vid=$(member_id "$l" "${names[$g]}")
out=$(ctl "$l" member promote "$vid" 2>&1)
grep -q "etcdserver: can only promote a learner member$" <<<"$out" &&
    ok "member promote of a voter is refused" || bad "promote voter: $out"

# --- update --------------------------------------------------------------------------------------
nport=$(port)
out=$(ctl "$g" member update "$lid" --peer-urls "https://127.0.0.1:$nport" 2>&1)
grep -q "Member *$lid updated in cluster" <<<"$out" && ok "member update through a follower" ||
    bad "member update: $out"
row=$(members "$l" | grep " True ")
[ "$row" = "$lid True - https://127.0.0.1:$nport" ] && ok "member list shows the new peer URL" ||
    bad "after update: '$row'"
out=$(ctl "$l" member update "$lid" --peer-urls "https://127.0.0.1:${pport[$f]}" 2>&1)
grep -q "etcdserver: Peer URLs already exists" <<<"$out" && ok "update to a taken URL is refused" ||
    bad "update to taken URL: $out"

# --- remove --------------------------------------------------------------------------------------
out=$(ctl "$f" member remove 1234abcd 2>&1)
grep -q "etcdserver: member not found" <<<"$out" && ok "member remove of an unknown id: etcd's error" ||
    bad "remove unknown: $out"
out=$(ctl "$f" member remove "$lid" 2>&1)
grep -q "Member *$lid removed from cluster" <<<"$out" && ok "member remove of the learner" ||
    bad "remove learner: $out"
[ "$(members "$g" | wc -l)" = 3 ] && ok "three members left" || bad "after remove: $(members "$g")"

# --- a voter that never starts: allowed with three started voters (3 >= quorum 3 of 4); it joins as
# a learner and is promoted only once in sync, so it never counts in a majority here -----------
vport=$(port)
out=$(ctl "$l" member add extra --peer-urls "https://127.0.0.1:$vport" 2>&1)
grep -q "added to cluster" <<<"$out" && ok "member add of a voter (3 started of 4)" ||
    bad "add voter: $out"
xid=$(members "$l" | awk -v u="https://127.0.0.1:$vport" '$4 == u {print $1}')
[ "$(members "$f" | grep -c " False ")" = 3 ] && members "$f" | grep -q "^$xid True " &&
    ok "three voters, the new one a learner until it catches up" || bad "voters: $(members "$f")"
[ "$(ctl "$f" put after-add 1)" = OK ] && ok "writes go on with a voter down" || bad "put after add"
out=$(ctl "$f" member remove "$xid" 2>&1)
grep -q "removed from cluster" <<<"$out" && ok "member remove of the voter that never started" ||
    bad "remove extra voter: $out"

# --- move-leader ---------------------------------------------------------------------------------
sleep 0.5 # the previous change has committed; let heartbeats settle
tid=$(member_id "$l" "${names[$f]}")
out=$(timeout 20 etcdctl --endpoints "$(live_eps)" "${tls[@]}" move-leader "$tid" 2>&1)
if grep -q "Leadership transferred from [0-9a-f]* to $tid" <<<"$out"; then
    ok "move-leader to ${names[$f]}"; else bad "move-leader: $out"; fi
nl=$(leader)
[ "$nl" = "$f" ] && ok "${names[$f]} leads now" || bad "leader after move-leader: $nl"
l=$nl
f=$(((l + 1) % 3))
g=$(((l + 2) % 3))
out=$(timeout 20 etcdctl --endpoints "$(live_eps)" "${tls[@]}" move-leader 1234abcd 2>&1)
grep -q "etcdserver: bad leader transferee" <<<"$out" && ok "move-leader to a non-member is refused" ||
    bad "move-leader non-member: $out"

# --- the strict reconfiguration check, with a member down --------------------------------------
kill -9 "${pids[$g]}"
wait "${pids[$g]}" 2>/dev/null
pids[$g]=""
sleep 1.5 # longer than the election timeout: the leader no longer counts it as started
out=$(ctl "$l" member add more --peer-urls "https://127.0.0.1:$(port)" 2>&1)
grep -q "etcdserver: re-configuration failed due to not enough started members" <<<"$out" &&
    ok "with a voter down, adding a voter is refused (2 started < 3 of 4)" || bad "strict add: $out"
out=$(ctl "$f" member add more --learner --peer-urls "https://127.0.0.1:$(port)" 2>&1)
grep -q "etcdserver: unhealthy cluster" <<<"$out" &&
    ok "with a voter down, adding a learner is refused (etcd: not connected to every voter)" ||
    bad "strict learner add: $out"
fid=$(member_id "$l" "${names[$f]}")
out=$(ctl "$l" member remove "$fid" 2>&1)
grep -q "etcdserver: re-configuration failed due to not enough started members" <<<"$out" &&
    ok "with a voter down, removing a started voter is refused" || bad "strict remove: $out"
[ "$(members "$l" | wc -l)" = 3 ] && ok "refused changes changed nothing" || bad "members: $(members "$l")"
gid=$(member_id "$l" "${names[$g]}")
out=$(ctl "$f" member remove "$gid" 2>&1)
grep -q "removed from cluster" <<<"$out" && ok "removing the member that is down is allowed" ||
    bad "remove downed member: $out"

# --- removing the leader: it steps down, the other member leads alone ---------------------------
lid=$(member_id "$l" "${names[$l]}")
out=$(ctl "$l" member remove "$lid" 2>&1)
grep -q "removed from cluster" <<<"$out" && ok "member remove of the leader" || bad "remove leader: $out"
deadline=$((SECONDS + 10))
while [ $SECONDS -lt $deadline ]; do
    js=$(ctl "$f" endpoint status -w json 2>/dev/null) &&
        python3 -c 'import json,sys; s=json.load(sys.stdin)[0]["Status"]; sys.exit(0 if s["leader"]==s["header"]["member_id"] else 1)' <<<"$js" && break
    sleep 0.1
done
python3 -c 'import json,sys; s=json.load(sys.stdin)[0]["Status"]; sys.exit(0 if s["leader"]==s["header"]["member_id"] else 1)' <<<"${js:-[]}" 2>/dev/null &&
    ok "${names[$f]} leads after the leader removed itself" || bad "no leader after removing the leader: ${js:-}"
[ "$(ctl "$f" put after-remove 1)" = OK ] && ok "the remaining member serves writes" || bad "put after removing the leader"
out=$(members "$f")
[ "$(wc -l <<<"$out")" = 1 ] && grep -q " ${names[$f]} " <<<"$out" && ok "one member left: ${names[$f]}" ||
    bad "members after removing the leader: $out"

if [ $fails -ne 0 ]; then
    for n in n1 n2 n3; do echo "--- $n.log"; tail -15 "$dir/$n.log"; done
fi
echo "$fails failed"
[ $fails = 0 ]
