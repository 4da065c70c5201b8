#!/usr/bin/env bash
# etcd compatibility with the real client: Debian's etcdctl (3.4) against a 3-member craft cluster
# over mutual TLS. put/get/get --prefix/del, txn success and failure branches, writes through a
# follower, endpoint status (exactly one leader), member list, snapshot save (a SHA-256-checked
# copy of the store), etcd's errors for bad input; after
# kill -9 of the leader a linearizable read returns the latest acknowledged value; a member cut
# off from its peers (iptables) may serve stale serializable reads but never a stale
# linearizable one.
set -uo pipefail
craftd=$1 tool=$2 craftctl=$3
export ETCDCTL_API=3
command -v etcdctl >/dev/null || { echo "etcdctl not installed (apt-get install etcd-client)"; exit 1; }
dir=$(mktemp -d "${TEST_TMPDIR:-/tmp}/etcdctl.XXXXXX")
rules=()
cleanup() {
    for r in "${rules[@]+"${rules[@]}"}"; do iptables -D INPUT $r 2>/dev/null; done
    for p in "${pids[@]+"${pids[@]}"}" "${rpids[@]+"${rpids[@]}"}"; do kill -9 "$p" 2>/dev/null; done
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
all_eps="$(ep 0),$(ep 1),$(ep 2)"
ctl() { # member, args...
    local i=$1
    shift
    timeout 20 etcdctl --endpoints "$(ep "$i")" --cacert "$dir/c/ca.pem" --cert "$dir/c/client.pem" \
        --key "$dir/c/client-key.pem" --command-timeout 5s "$@"
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

for i in 0 1 2; do start $i; done
l=$(leader)
[ "$l" -ge 0 ] || { bad "no leader"; tail -5 "$dir"/n*.log; exit 1; }
f=$(((l + 1) % 3))
ok "leader is ${names[$l]}"

# --- basic operations ----------------------------------------------------------------------
[ "$(ctl "$l" put foo bar)" = OK ] && ok "put" || bad "put"
[ "$(ctl "$f" put via-follower yes)" = OK ] && ok "put through a follower" || bad "put through a follower"
out=$(ctl "$l" get foo)
[ "$out" = $'foo\nbar' ] && ok "get" || bad "get: '$out'"
[ "$(ctl "$l" get via-follower --print-value-only)" = yes ] && ok "get a follower's write" || bad "get a follower's write"
for k in a b c; do ctl "$l" put "pre/$k" "v$k" >/dev/null; done
ctl "$l" put prf x >/dev/null
out=$(ctl "$f" get pre/ --prefix --keys-only | grep -v '^$' | tr '\n' ' ')
[ "$out" = "pre/a pre/b pre/c " ] && ok "get --prefix" || bad "get --prefix: '$out'"
out=$(ctl "$l" get pre/ --prefix --limit 2 --keys-only | grep -v '^$' | tr '\n' ' ')
[ "$out" = "pre/a pre/b " ] && ok "get --limit" || bad "get --limit: '$out'"
out=$(ctl "$l" get pre/ --prefix --sort-by=KEY --order=DESCEND --keys-only | grep -v '^$' | tr '\n' ' ')
[ "$out" = "pre/c pre/b pre/a " ] && ok "get --sort-by --order" || bad "sort: '$out'"
out=$(ctl "$l" get pre/ --prefix --limit 1 -w json | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["count"], r["more"], len(r["kvs"]))')
[ "$out" = "3 True 1" ] && ok "count and more with --limit" || bad "count/more: '$out'"
[ "$(ctl "$l" del pre/a)" = 1 ] && ok "del" || bad "del"
[ "$(ctl "$l" del pre/ --prefix)" = 2 ] && ok "del --prefix" || bad "del --prefix"
[ -z "$(ctl "$l" get pre/ --prefix)" ] && ok "deleted keys are gone" || bad "deleted keys remain"
rev1=$(ctl "$l" get foo -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)["kvs"][0]["mod_revision"])')
ctl "$l" put foo baz >/dev/null
out=$(ctl "$l" get foo -w json | python3 -c 'import json,sys; k=json.load(sys.stdin)["kvs"][0]; print(k["version"], k["mod_revision"] > '"$rev1"')')
[ "$out" = "2 True" ] && ok "version and mod_revision advance" || bad "revisions: '$out'"

# --- txn: success and failure branches -----------------------------------------------------
out=$(printf 'value("foo") = "baz"\n\nput t1 success\n\nput t1 failure\n\n' | ctl "$f" txn)
[ "$(ctl "$l" get t1 --print-value-only)" = success ] && grep -q SUCCESS <<<"$out" && ok "txn success branch" ||
    bad "txn success: '$out'"
out=$(printf 'value("foo") = "nope"\n\nput t2 success\n\nput t2 failure\n\n' | ctl "$l" txn)
[ "$(ctl "$l" get t2 --print-value-only)" = failure ] && grep -q FAILURE <<<"$out" && ok "txn failure branch" ||
    bad "txn failure: '$out'"
out=$(printf 'version("missing") = "0"\n\nput t3 created\n\n\n' | ctl "$l" txn)
[ "$(ctl "$l" get t3 --print-value-only)" = created ] && ok "txn compare on a missing key (zero values)" ||
    bad "txn missing key: '$out'"

# --- status and members ----------------------------------------------------------------------
js=$(timeout 20 etcdctl --endpoints "$all_eps" --cacert "$dir/c/ca.pem" --cert "$dir/c/client.pem" \
    --key "$dir/c/client-key.pem" endpoint status -w json)
leaders=$(python3 -c 'import json,sys; print(sum(1 for e in json.load(sys.stdin) if e["Status"]["leader"]==e["Status"]["header"]["member_id"]))' <<<"$js")
[ "$leaders" = 1 ] && ok "endpoint status: exactly one leader" || bad "endpoint status leaders=$leaders: $js"
python3 -c 'import json,sys; e=json.load(sys.stdin); assert all(x["Status"]["version"] and x["Status"]["dbSize"]>0 and x["Status"]["raftTerm"]>0 and x["Status"]["raftIndex"]>0 for x in e)' <<<"$js" &&
    ok "endpoint status: version, db size, raft term and index" || bad "endpoint status fields: $js"
out=$(ctl "$f" member list | sort)
n=$(grep -c 'started' <<<"$out")
if [ "$n" = 3 ] && grep -q ", n1, https://127.0.0.1:${pport[0]}, https://127.0.0.1:${cport[0]}" <<<"$out"; then
    ok "member list"; else bad "member list: $out"; fi

# --- etcdctl snapshot save: a consistent copy of a member's store, its SHA-256 as the trailer ----
for k in 1 2 3 4 5; do ctl "$l" put "snapkey/$k" "snapval-$k" >/dev/null; done
# The snapshot is the follower's own applied state, which may be a moment behind the leader's (as
# etcd's is): a linearizable read through it first makes it apply the puts (CI once saved a copy
# without the last one).
ctl "$f" get snapkey/5 >/dev/null
if ctl "$f" snapshot save "$dir/backup.db" >"$dir/save.out" 2>&1 && [ -s "$dir/backup.db" ]; then
    ok "snapshot save from a follower"
else
    bad "snapshot save: $(tail -c 300 "$dir/save.out")"
fi
# The last 32 bytes are the SHA-256 of everything before them (as etcd's server sends), and the
# payload holds the keys just written.
if python3 - "$dir/backup.db" <<'PY2'
import hashlib, sys
b = open(sys.argv[1], "rb").read()
sys.exit(0 if len(b) > 32 and hashlib.sha256(b[:-32]).digest() == b[-32:] and b"snapval-5" in b else 1)
PY2
then ok "snapshot save: the trailer is the SHA-256 of the data, which holds the keys"
else bad "snapshot save: bad trailer or missing keys ($(stat -c %s "$dir/backup.db" 2>/dev/null) bytes)"; fi

# --- craftctl snapshot restore: a new cluster (new token, new ports) seeded from that file --------
declare -a rport rpport rpids
rcluster=""
for i in 0 1 2; do
    rport[$i]=$(port)
    rpport[$i]=$(port)
    rcluster="$rcluster${rcluster:+,}${names[$i]}=https://127.0.0.1:${rpport[$i]}"
done
restored=0
for i in 0 1 2; do
    "$craftctl" snapshot restore "$dir/backup.db" --name "${names[$i]}" --initial-cluster "$rcluster" \
        --initial-cluster-token restored-1 --data-dir "$dir/r-${names[$i]}" >"$dir/restore.out" 2>&1 &&
        restored=$((restored + 1))
done
[ $restored = 3 ] && ok "craftctl snapshot restore seeds three members" || bad "restore: $(cat "$dir/restore.out")"
for i in 0 1 2; do
    rn=${names[$i]}
    "$craftd" --name "$rn" --data-dir "$dir/r-$rn" --initial-cluster-token restored-1 \
        --listen-client-urls "https://127.0.0.1:${rport[$i]}" \
        --listen-peer-urls "https://127.0.0.1:${rpport[$i]}" --initial-cluster "$rcluster" \
        --heartbeat-interval 50 --election-timeout 300 --proposal-timeout 2000 \
        --cert-file "$dir/c/$rn.pem" --key-file "$dir/c/$rn-key.pem" --trusted-ca-file "$dir/c/ca.pem" \
        --peer-cert-file "$dir/c/$rn.pem" --peer-key-file "$dir/c/$rn-key.pem" \
        --peer-trusted-ca-file "$dir/c/ca.pem" >>"$dir/r-$rn.log" 2>&1 &
    rpids+=($!)
done
rctl() { timeout 10 etcdctl --endpoints "https://127.0.0.1:${rport[0]}" --cacert "$dir/c/ca.pem" \
    --cert "$dir/c/client.pem" --key "$dir/c/client-key.pem" --command-timeout 3s "$@"; }
rgot=""
rdeadline=$((SECONDS + 30))
while [ $SECONDS -lt $rdeadline ] && [ "$rgot" != snapval-5 ]; do
    rgot=$(rctl get snapkey/5 --print-value-only 2>/dev/null)
    [ "$rgot" = snapval-5 ] || sleep 0.2 # bounded poll: a new cluster's start offers no event
done
[ "$rgot" = snapval-5 ] && ok "the restored cluster serves the saved keys (linearizable read)" ||
    bad "restored cluster: snapkey/5 = '$rgot' ($(tail -3 "$dir/r-n1.log"))"
rctl put after-restore yes >/dev/null 2>&1 && [ "$(rctl get after-restore --print-value-only)" = yes ] &&
    ok "the restored cluster takes writes" || bad "no write on the restored cluster"
for p in "${rpids[@]}"; do kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null; done # the rest times failover
# Refused before anything is written: a truncated file, a corrupted one, a non-empty directory.
head -c 700 "$dir/backup.db" >"$dir/trunc.db"
cp "$dir/backup.db" "$dir/bad.db"
printf 'X' | dd of="$dir/bad.db" bs=1 seek=100 conv=notrunc 2>/dev/null
for kind in trunc bad; do
    out=$("$craftctl" snapshot restore "$dir/$kind.db" --name n1 --initial-cluster "$rcluster" \
        --initial-cluster-token t --data-dir "$dir/x-$kind" 2>&1)
    rc=$?
    if [ $rc = 1 ] && grep -q "checksum mismatch\|truncated" <<<"$out" && [ ! -e "$dir/x-$kind" ]; then
        ok "restore refuses a $kind file: $out"
    else bad "restore of a $kind file: rc=$rc: $out"; fi
done
out=$("$craftctl" snapshot restore "$dir/backup.db" --name n1 --initial-cluster "$rcluster" \
    --initial-cluster-token t --data-dir "$dir/r-n1" 2>&1)
[ $? = 1 ] && grep -q "not empty" <<<"$out" && ok "restore refuses a non-empty data directory" ||
    bad "restore into a used directory: $out"

# --- bad input gets etcd's errors, and nothing is applied ----------------------------------------
err=$(ctl "$l" put "" v 2>&1)
grep -q "key is not provided" <<<"$err" && ok "empty key refused" || bad "empty key: $err"
head -c 2000000 /dev/zero | tr '\0' x >"$dir/big"
err=$(ctl "$l" put big <"$dir/big" 2>&1)
grep -qi "too large" <<<"$err" && ok "oversized value refused" || bad "oversized value: $(head -c 300 <<<"$err")"
[ -z "$(ctl "$l" get big)" ] && ok "nothing applied for the oversized value" || bad "oversized value applied"
err=$(printf '\n\nput d1 x\nput d1 y\n\n\n' | ctl "$l" txn 2>&1)
grep -q "duplicate key" <<<"$err" && ok "txn writing a key twice refused" || bad "duplicate txn: $err"
[ -z "$(ctl "$l" get d1)" ] && ok "nothing applied for the duplicate txn" || bad "duplicate txn applied"
err=$(ctl "$l" get foo --rev 999999 2>&1)
grep -q "future revision" <<<"$err" && ok "future revision" || bad "future revision: $err"
ctl "$l" compact 3 >/dev/null 2>&1
err=$(ctl "$l" get foo --rev 2 2>&1)
grep -q "compacted" <<<"$err" && ok "compacted revision" || bad "compacted: $err"

# --- kill -9 of the leader: a linearizable read returns the latest acknowledged value -------------
ctl "$l" put latest before-kill >/dev/null
last=""
for k in $(seq 1 30); do ctl "$l" put latest "v$k" >/dev/null && last="v$k"; done
kill -9 "${pids[$l]}"
wait "${pids[$l]}" 2>/dev/null
pids[$l]=""
got=""
deadline=$((SECONDS + 15))
while [ $SECONDS -lt $deadline ]; do
    got=$(ctl "$f" get latest --print-value-only 2>/dev/null) && [ -n "$got" ] && break
    sleep 0.05
done
[ "$got" = "$last" ] && ok "after kill -9 of the leader a linearizable read returns $last" ||
    bad "after kill -9: got '$got', want '$last'"
start "$l"
nl=$(leader)
[ "$nl" -ge 0 ] && ok "leader after restart: ${names[$nl]}" || bad "no leader after restart"

# --- a member cut off from its peers ---------------------------------------------------------------
# Drop everything on connections to member p's peer port: it hears from no one.
p=-1
for i in 0 1 2; do [ "$i" != "$nl" ] && p=$i; done
ctl "$nl" put cut before >/dev/null
deadline=$((SECONDS + 10))
while [ $SECONDS -lt $deadline ] && [ "$(ctl "$p" get cut --print-value-only --consistency=s 2>/dev/null)" != before ]; do sleep 0.05; done
rules=("-p tcp --dport ${pport[$p]} -j DROP" "-p tcp --sport ${pport[$p]} -j DROP")
for r in "${rules[@]}"; do iptables -I INPUT $r || { bad "iptables"; exit 1; }; done
ctl "$nl" put cut after >/dev/null && ok "majority writes while ${names[$p]} is cut off" || bad "majority write"
s=$(ctl "$p" get cut --print-value-only --consistency=s 2>&1)
[ "$s" = before ] && ok "serializable read on the cut-off member is stale ('$s'), as allowed" ||
    echo "note: serializable read on the cut-off member returned '$s'"
l_out=$(ctl "$p" get cut --print-value-only 2>&1)
l_rc=$?
if [ $l_rc -ne 0 ] || [ "$l_out" = after ]; then
    ok "linearizable read on the cut-off member fails or is fresh (rc=$l_rc: $(head -c 80 <<<"$l_out"))"
else
    bad "linearizable read on the cut-off member was stale: '$l_out'"
fi
for r in "${rules[@]}"; do iptables -D INPUT $r; done
rules=()
got=""
deadline=$((SECONDS + 15))
while [ $SECONDS -lt $deadline ]; do
    got=$(ctl "$p" get cut --print-value-only 2>/dev/null) && [ "$got" = after ] && break
    sleep 0.1
done
[ "$got" = after ] && ok "healed member serves the fresh value" || bad "after healing: '$got'"

echo "etcdctl: $fails failed"
[ $fails -eq 0 ]
