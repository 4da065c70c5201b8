#!/usr/bin/env bash
# etcd's Auth with the client certificate's CN as identity (docs/auth.md), with Debian's etcdctl
# 3.4 unchanged: one TABLE of users, roles and key ranges against every request type, each row
# with its expected allow/deny, run against a 3-member craft cluster AND against real etcd 3.4
# (started with --client-cert-auth and the same certificates); both must give the table's
# answers, except the rows marked as a documented difference. Then, on craft only: a role
# change takes effect at once on every member, the auth state survives a member restart, and a
# member brought back by a snapshot (log compacted while it was down) enforces the same.
set -uo pipefail
craftd=$1 tool=$2
export ETCDCTL_API=3
command -v etcdctl >/dev/null || { echo "etcdctl not installed (apt-get install etcd-client)"; exit 1; }
command -v etcd >/dev/null || { echo "etcd not installed (apt-get install etcd-server)"; exit 1; }
dir=$(mktemp -d "${TEST_TMPDIR:-/tmp}/auth.XXXXXX")
cleanup() {
    for p in "${pids[@]+"${pids[@]}"}" "${epid:-}"; do
        [ -n "$p" ] && kill -9 "$p" 2>/dev/null && wait "$p" 2>/dev/null
    done
    rm -rf "$dir"
}
trap cleanup EXIT
fails=0
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }
# shellcheck source=tests/cluster/port.sh
source "$(dirname "${BASH_SOURCE[0]}")/port.sh"
# shellcheck source=tests/cluster/members.sh
source "$(dirname "${BASH_SOURCE[0]}")/members.sh"

c="$dir/c"
"$tool" ca "$c" >/dev/null || exit 1
for u in root alice bob carol dave; do "$tool" client "$c" "$u" >/dev/null || exit 1; done
"$tool" node "$c" etcd1 --ip 127.0.0.1 >/dev/null || exit 1

# ---- the systems under test ----------------------------------------------------------------
members_init "$c" || exit 1
start_member() { start "$1" --snapshot-count 50 --snapshot-catchup-entries 5; }
eport=$(port)
epport=$(port)
start_etcd() {
    etcd --name etcd1 --data-dir "$dir/etcd" \
        --listen-client-urls "https://127.0.0.1:$eport" --advertise-client-urls "https://127.0.0.1:$eport" \
        --listen-peer-urls "http://127.0.0.1:$epport" --initial-advertise-peer-urls "http://127.0.0.1:$epport" \
        --initial-cluster "etcd1=http://127.0.0.1:$epport" \
        --client-cert-auth --trusted-ca-file "$c/ca.pem" \
        --cert-file "$c/etcd1.pem" --key-file "$c/etcd1-key.pem" >>"$dir/etcd.log" 2>&1 &
    epid=$!
}

EP="" # the endpoint ctl talks to
ctl() { # user, args...
    local u=$1
    shift
    timeout 20 etcdctl --endpoints "$EP" --cacert "$c/ca.pem" --cert "$c/$u.pem" \
        --key "$c/$u-key.pem" --command-timeout 5s "$@"
}
wait_up() {
    local deadline=$((SECONDS + 20))
    while [ $SECONDS -lt $deadline ]; do
        ctl root put up 1 >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    return 1
}

# ---- the table ------------------------------------------------------------------------------
# Set up as the root user while auth is off, then enable it:
#   alice: role ra - READ prefix a/, READWRITE key a/rw, WRITE [w1, w3)
#   bob:   role rb - READWRITE from m on (--from-key), READ key x
#   carol: a user with no role; dave: a certificate without a user.
#   erin: role ra, with the password pw (etcdctl --user: Authenticate, then a simple token that
#   takes precedence over the certificate, as in etcd).
setup() {
    ctl root put a/1 one >/dev/null && ctl root put secret s >/dev/null &&
    ctl root put w1 x >/dev/null &&
    ctl root user add root --no-password >/dev/null &&
    ctl root user grant-role root root >/dev/null &&
    for u in alice bob carol; do ctl root user add "$u" --no-password >/dev/null || return 1; done &&
    ctl root role add ra >/dev/null && ctl root role add rb >/dev/null &&
    ctl root role grant-permission ra read a/ --prefix >/dev/null &&
    ctl root role grant-permission ra readwrite a/rw >/dev/null &&
    ctl root role grant-permission ra write w1 w3 >/dev/null &&
    ctl root role grant-permission rb readwrite m --from-key >/dev/null &&
    ctl root role grant-permission rb read x >/dev/null &&
    ctl root user grant-role alice ra >/dev/null && ctl root user grant-role bob rb >/dev/null &&
    ctl root user add erin:pw >/dev/null && ctl root user grant-role erin ra >/dev/null &&
    ctl root auth enable >/dev/null
}

# Rows: expected (allow|deny) | difference marker (- or the other system's answer) | user | args.
# A deny must be etcd's "permission denied" (or, for a missing user on management calls,
# etcd's error for it).
TABLE=$(cat <<'EOF'
allow - root    put k v
allow - alice   get a/1
allow - alice   get a/ --prefix
deny  - alice   get a --prefix
deny  - alice   put a/1 v
allow - alice   put a/rw v
allow - alice   put a/rw v --prev-kv
allow - alice   put w1 v
allow - alice   put w2x v
deny  - alice   put w3 v
allow - alice   del w2x
deny  - alice   del w1 --prev-kv
deny  - alice   get w1 w3
deny  - alice   get secret
allow - alice   get a/1 --consistency=s
deny  - alice   get secret --consistency=s
allow - bob     get m
allow - bob     get zzz
allow - bob     get m --from-key
deny  - bob     get a --from-key
allow - bob     get x
deny  - bob     put l v
allow - bob     put zz v
deny  - carol   get a/1
deny  - dave    get a/1
deny  - dave    put a/rw v
allow - alice   txn-ok
deny  - alice   txn-failure-reads-secret
deny  - alice   txn-compare-secret
allow - root    txn-failure-reads-secret
deny  - alice   watch secret
allow - alice   watch a/1
deny  - alice   watch a --prefix
allow - alice   lease grant 60
deny  - alice   lease-revoke-root-key
allow - root    lease-revoke-root-key
deny  - alice   put-on-root-lease
allow - root    put-on-root-lease
deny  - alice   snapshot save
deny  - alice   member add x --peer-urls=https://127.0.0.1:1
allow - alice   member list
deny  allow alice compaction 1
allow - root    compaction 1
deny  - alice   user list
allow - root    user list
allow - alice   user get alice
deny  - alice   user get bob
allow - alice   role get ra
deny  - alice   role get rb
deny  - alice   role add rx
deny  - alice   user grant-role alice rb
deny  - alice   auth disable
allow - root    role list
deny  allow root role grant-permission ra read b a
allow - dave    --user erin:pw get a/1
deny  - dave    --user erin:bad get a/1
deny  - dave    --user alice:x get a/1
deny  - root    --user erin:pw put k v
allow - root    --user erin:pw get a/1
EOF
)

# One row against the endpoint in EP: prints allow or deny (deny only for etcd's errors).
run_row() {
    local u=$1 op=$2
    shift 2
    local out rc
    case $op in
    txn-ok)
        out=$(printf 'value("a/1") = "one"\n\nput a/rw t\n\nget a/2\n\n' | ctl "$u" txn 2>&1) ;;
    txn-failure-reads-secret)
        out=$(printf 'value("a/1") = "one"\n\nput a/rw t\n\nget secret\n\n' | ctl "$u" txn 2>&1) ;;
    txn-compare-secret)
        out=$(printf 'value("secret") = "s"\n\nput a/rw t\n\n\n' | ctl "$u" txn 2>&1) ;;
    watch)
        # a refused watch ends at once; an allowed one still runs when the timeout ends it
        out=$(timeout 2 etcdctl --endpoints "$EP" --cacert "$c/ca.pem" --cert "$c/$u.pem" \
            --key "$c/$u-key.pem" watch "$@" 2>&1)
        rc=$?
        [ $rc -eq 124 ] && { echo allow; return; } ;;
    lease-revoke-root-key)
        local id
        id=$(ctl root lease grant 600 | awk '{print $2}')
        ctl root put a/lk v --lease="$id" >/dev/null
        out=$(ctl "$u" lease revoke "$id" 2>&1) ;;
    put-on-root-lease) # a lease whose keys the user may not write cannot take more (etcd)
        local id
        id=$(ctl root lease grant 600 | awk '{print $2}')
        ctl root put secret2 v --lease="$id" >/dev/null
        out=$(ctl "$u" put a/rw v --lease="$id" 2>&1) ;;
    snapshot)
        out=$(ctl "$u" snapshot save "$dir/snap.$RANDOM" 2>&1) ;;
    compaction)
        local rev
        ctl root put c/n v >/dev/null # a new revision for each row to compact to
        rev=$(ctl root get a/1 -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)["header"]["revision"])')
        out=$(ctl "$u" compaction "$rev" 2>&1) ;;
    *)
        out=$(ctl "$u" "$op" "$@" 2>&1) ;;
    esac
    rc=$?
    if [ $rc -eq 0 ]; then
        echo allow
    elif grep -qE "permission denied|user name not found|user name is empty|invalid auth management|authentication failed" <<<"$out"; then
        echo deny
    else
        echo "error: $(tr '\n' ' ' <<<"$out" | cut -c1-200)"
    fi
}

run_table() { # system name; EP set
    local sys=$1 want other u op rest got n=0
    while read -r want other u op rest; do
        [ -n "$want" ] || continue
        n=$((n + 1))
        # shellcheck disable=SC2086
        got=$(run_row "$u" "$op" $rest)
        local expect=$want
        [ "$sys" = etcd ] && [ "$other" != - ] && expect=$other
        if [ "$got" = "$expect" ]; then
            ok "$sys: $u $op $rest -> $got"
        else
            bad "$sys: $u $op $rest -> $got, expected $expect"
        fi
    done <<<"$TABLE"
    echo "$sys: $n rows"
    # A new password: the old one fails from now on, the new one works.
    printf 'pw2\n' | ctl root user passwd erin --interactive=false >/dev/null || bad "$sys: passwd"
    [ "$(run_row dave --user erin:pw get a/1)" = deny ] &&
        [ "$(run_row dave --user erin:pw2 get a/1)" = allow ] &&
        ok "$sys: a changed password" || bad "$sys: a changed password"
}

# ---- real etcd --------------------------------------------------------------------------------
start_etcd
EP="https://127.0.0.1:$eport"
if wait_up; then
    setup || bad "etcd: setup"
    run_table etcd
else
    bad "etcd did not start"
    tail -5 "$dir/etcd.log"
fi
kill -9 "$epid" 2>/dev/null
wait "$epid" 2>/dev/null
epid=""

# ---- craft ------------------------------------------------------------------------------------
for i in 0 1 2; do start_member $i; done
EP="https://127.0.0.1:${cport[0]}"
wait_up || { bad "craft did not start"; tail -5 "$dir"/n*.log; exit 1; }
setup || bad "craft: setup"
run_table craft
# Writes through every member: two of them are followers that forward to the leader, and the
# leader must judge the ORIGINAL client, not the member that forwarded it.
for i in 0 1 2; do
    EP="https://127.0.0.1:${cport[$i]}"
    [ "$(run_row alice get a/1)" = allow ] && [ "$(run_row alice put a/rw v)" = allow ] &&
        [ "$(run_row alice put a/1 v)" = deny ] && [ "$(run_row root put a/1 v)" = allow ] &&
        ok "craft: ${names[$i]} enforces the same, writes included" ||
        bad "craft: ${names[$i]} differs"
done

# A role change takes effect for the next request, on every member.
EP="https://127.0.0.1:${cport[0]}"
ctl root role revoke-permission ra a/ --prefix >/dev/null || bad "revoke-permission"
for i in 0 1 2; do
    EP="https://127.0.0.1:${cport[$i]}"
    [ "$(run_row alice get a/1)" = deny ] && ok "craft: revoked at once on ${names[$i]}" ||
        bad "craft: ${names[$i]} still allows a revoked read"
done
EP="https://127.0.0.1:${cport[0]}"
ctl root role grant-permission ra read a/ --prefix >/dev/null || bad "grant-permission"

# Across a restart of a member.
kill -9 "${pids[2]}"
wait "${pids[2]}" 2>/dev/null
start_member 2
EP="https://127.0.0.1:${cport[2]}"
deadline=$((SECONDS + 20))
until [ "$(run_row alice get a/1 --consistency=s)" = allow ] || [ $SECONDS -ge $deadline ]; do sleep 0.2; done
[ "$(run_row alice get a/1)" = allow ] && [ "$(run_row carol get a/1)" = deny ] &&
    [ "$(run_row alice get secret)" = deny ] && ok "craft: auth state across a restart" ||
    bad "craft: auth state lost across a restart"

# Through a snapshot: member 3 down while the others compact their logs past what it has; the
# role change it missed reaches it only in the snapshot.
EP="https://127.0.0.1:${cport[2]}"
n3_index=$(ctl root endpoint status -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["raftIndex"])')
kill -9 "${pids[2]}"
wait "${pids[2]}" 2>/dev/null
EP="https://127.0.0.1:${cport[0]}"
ctl root user grant-role carol ra >/dev/null || bad "grant-role carol"
for k in $(seq 1 120); do ctl root put "fill$k" v >/dev/null || { bad "fill put"; break; }; done
# Snapshots are taken in the background: wait (bounded) until both others have one past what
# n3 has plus --snapshot-catchup-entries, so their logs no longer hold what it needs.
newest_snap() { # member index: the index of its newest snapshot file, 0 if none
    local best=0 f i
    for f in "$dir/${names[$1]}"/snap/*.snap; do
        [ -e "$f" ] || continue
        i=$((16#$(basename "$f" .snap | cut -d- -f2)))
        [ "$i" -gt "$best" ] && best=$i
    done
    echo "$best"
}
deadline=$((SECONDS + 30))
until [ "$(newest_snap 0)" -gt $((n3_index + 10)) ] && [ "$(newest_snap 1)" -gt $((n3_index + 10)) ] ||
    [ $SECONDS -ge $deadline ]; do sleep 0.1; done
[ "$(newest_snap 0)" -gt $((n3_index + 10)) ] && [ "$(newest_snap 1)" -gt $((n3_index + 10)) ] ||
    bad "craft: no snapshot past n3's index $n3_index in 30 s ($(newest_snap 0), $(newest_snap 1))"
start_member 2
EP="https://127.0.0.1:${cport[2]}"
deadline=$((SECONDS + 30))
until [ "$(run_row carol get a/1 --consistency=s)" = allow ] || [ $SECONDS -ge $deadline ]; do sleep 0.2; done
deadline=$((SECONDS + 10))
until grep -q "installed snapshot" "$dir/n3.log" || [ $SECONDS -ge $deadline ]; do sleep 0.1; done
if grep -q "installed snapshot" "$dir/n3.log"; then ok "craft: n3 caught up by a snapshot"; else
    bad "craft: n3 got no snapshot (n3 at $n3_index, snapshots at $(newest_snap 0), $(newest_snap 1))"; fi
[ "$(run_row carol get a/1 --consistency=s)" = allow ] &&
    [ "$(run_row carol get secret --consistency=s)" = deny ] &&
    [ "$(run_row dave get a/1 --consistency=s)" = deny ] &&
    ok "craft: a member restored from a snapshot enforces the same" ||
    bad "craft: the restored member enforces differently"

echo "failures: $fails"
[ "$fails" -eq 0 ]
