#!/usr/bin/env bash
# etcd's Watch with the real client: Debian's etcdctl (3.4) against a 3-member craft cluster over
# mutual TLS. `watch KEY` on a follower, `watch --prefix` on the other follower, `watch --rev N
# --prev-kv` catching up from history and then following, `watch -i` (interactive, two watches on
# one stream), and `compaction` then `watch --rev` below it (canceled as compacted). Writes go
# through the leader; every watcher must see exactly the matching writes, in order, with the
# revisions and previous values the writes reported - no more, no fewer.
# A watch started without --rev begins at "now", which has no event to wait on: the script writes
# probe values to a watched key until the watcher shows one (a bounded poll), then does the real
# writes and checks what follows the last probe.
set -uo pipefail
craftd=$1 tool=$2
export ETCDCTL_API=3
command -v etcdctl >/dev/null || { echo "etcdctl not installed (apt-get install etcd-client)"; exit 1; }
dir=$(mktemp -d "${TEST_TMPDIR:-/tmp}/etcdctlwatch.XXXXXX")
cleanup() {
    exec 3>&- 2>/dev/null
    for p in "${wpids[@]+"${wpids[@]}"}" "${pids[@]+"${pids[@]}"}"; do kill -9 "$p" 2>/dev/null; done
    wait 2>/dev/null
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
declare -a wpids
members_init "$dir/c" || exit 1
ep() { echo "https://127.0.0.1:${cport[$1]}"; }
tls=(--cacert "$dir/c/ca.pem" --cert "$dir/c/client.pem" --key "$dir/c/client-key.pem")
ctl() { # member, args...
    local i=$1
    shift
    timeout 20 etcdctl --endpoints "$(ep "$i")" "${tls[@]}" --command-timeout 5s "$@"
}
# A write's revision (from etcdctl's JSON output).
rev_of() { python3 -c 'import json,sys; print(json.load(sys.stdin)["header"]["revision"])'; }
putrev() { ctl "$1" put "$2" "$3" -w json | rev_of; }
delrev() { ctl "$1" del "$2" -w json | rev_of; }
leader() {
    local deadline=$((SECONDS + 15)) i js
    while [ $SECONDS -lt $deadline ]; do
        for i in 0 1 2; do
            js=$(ctl "$i" endpoint status -w json 2>/dev/null) || continue
            python3 -c 'import json,sys; s=json.load(sys.stdin)[0]["Status"]; sys.exit(0 if s.get("leader")==s["header"]["member_id"] else 1)' <<<"$js" 2>/dev/null && { echo "$i"; return; }
        done
        sleep 0.05
    done
    echo -1
}
# Runs `etcdctl watch -w json ARGS` on member i (or the endpoints in $eps) in the background,
# output to file.
watch_bg() { # member, file, args...
    local i=$1 out=$2
    shift 2
    timeout 120 etcdctl --endpoints "${eps:-$(ep "$i")}" "${tls[@]}" watch -w json "$@" >"$out" 2>"$out.err" &
    wpids+=($!)
}
# The events a watcher printed, one line each: TYPE KEY VALUE MOD_REVISION [prev=VALUE].
events() {
    python3 - "$1" <<'PY'
import base64, json, sys
for line in open(sys.argv[1], errors="replace"):
    line = line.strip()
    if not line.startswith("{"):
        continue
    try:
        r = json.loads(line)
    except ValueError:
        continue
    for e in r.get("Events") or []:
        kv = e.get("kv") or {}
        d = lambda b: base64.b64decode(b or "").decode(errors="replace")
        s = "%s %s %s %s" % ("DELETE" if e.get("type", 0) == 1 else "PUT", d(kv.get("key")),
                             d(kv.get("value")), kv.get("mod_revision", 0))
        if e.get("prev_kv"):
            s += " prev=" + d(e["prev_kv"].get("value"))
        print(s)
PY
}
# The events after the last probe (probe values start with "probe-").
after_probe() { events "$1" | awk '/ probe-/ { n = NR } { l[NR] = $0 } END { for (i = n + 1; i <= NR; i++) print l[i] }'; }
# Waits (bounded) until the watcher's file shows at least n events matching pattern.
wait_events() { # file, n, pattern
    local deadline=$((SECONDS + 20))
    while [ $SECONDS -lt $deadline ]; do
        [ "$(events "$1" | grep -c -- "$3")" -ge "$2" ] && return 0
        sleep 0.05
    done
    return 1
}
# Puts probe values to key (through member i) until the watcher shows one: it is watching.
probe() { # member, key, file
    local n=0 deadline=$((SECONDS + 20))
    while [ $SECONDS -lt $deadline ]; do
        ctl "$1" put "$2" "probe-$n" >/dev/null
        n=$((n + 1))
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            events "$3" | grep -q " probe-" && return 0
            sleep 0.05
        done
    done
    return 1
}

for i in 0 1 2; do start $i; done
l=$(leader)
[ "$l" -ge 0 ] || { bad "no leader"; tail -5 "$dir"/n*.log; exit 1; }
f1=$(((l + 1) % 3))
f2=$(((l + 2) % 3))
ok "leader is ${names[$l]}"

# --- watch KEY on a follower -------------------------------------------------------------------
watch_bg "$f1" "$dir/w1" foo
probe "$l" foo "$dir/w1" && ok "watch foo: established on ${names[$f1]}" || bad "watch foo: never saw a probe ($(cat "$dir/w1.err"))"
r1=$(putrev "$l" foo 1)
ctl "$l" put bar x >/dev/null
r2=$(putrev "$l" foo 2)
r3=$(delrev "$l" foo)
want="PUT foo 1 $r1
PUT foo 2 $r2
DELETE foo  $r3"
wait_events "$dir/w1" 1 "^DELETE foo"
out=$(after_probe "$dir/w1")
[ "$out" = "$want" ] && ok "watch foo: every write of foo, in order, once" || bad "watch foo: got '$out', want '$want'"

# --- watch --prefix on the other follower --------------------------------------------------------
watch_bg "$f2" "$dir/w2" --prefix pre/
probe "$l" pre/probe "$dir/w2" && ok "watch --prefix: established on ${names[$f2]}" || bad "watch --prefix: never saw a probe"
ra=$(putrev "$l" pre/a 1)
ctl "$l" put prf x >/dev/null
ctl "$l" put pre0 x >/dev/null
rb=$(putrev "$l" pre/b 2)
rd=$(delrev "$l" pre/a)
want="PUT pre/a 1 $ra
PUT pre/b 2 $rb
DELETE pre/a  $rd"
wait_events "$dir/w2" 1 "^DELETE pre/a"
out=$(after_probe "$dir/w2")
[ "$out" = "$want" ] && ok "watch --prefix: the prefix's writes only" || bad "watch --prefix: got '$out', want '$want'"

# --- watch --rev N --prev-kv: history, then live -----------------------------------------------
h1=$(putrev "$l" hist 1)
h2=$(putrev "$l" hist 2)
h3=$(delrev "$l" hist)
h4=$(putrev "$l" hist 3)
watch_bg "$f1" "$dir/w3" --rev "$h1" --prev-kv hist
if wait_events "$dir/w3" 4 "^[A-Z]* hist"; then ok "watch --rev: caught up from history"; else bad "watch --rev: $(events "$dir/w3" | wc -l) events"; fi
h5=$(putrev "$l" hist 4)
wait_events "$dir/w3" 5 "^[A-Z]* hist"
want="PUT hist 1 $h1
PUT hist 2 $h2 prev=1
DELETE hist  $h3 prev=2
PUT hist 3 $h4
PUT hist 4 $h5 prev=3"
out=$(events "$dir/w3")
[ "$out" = "$want" ] && ok "watch --rev --prev-kv: history then live, with previous values" ||
    bad "watch --rev --prev-kv: got '$out', want '$want'"

# --- watch -i: interactive, two watches on one stream ------------------------------------------
mkfifo "$dir/in"
timeout 120 etcdctl --endpoints "$(ep "$f2")" "${tls[@]}" watch -i -w json <"$dir/in" >"$dir/w4" 2>"$dir/w4.err" &
wpids+=($!)
exec 3>"$dir/in"
echo "watch ia" >&3
probe "$l" ia "$dir/w4" && ok "watch -i: first watch established" || bad "watch -i: first watch ($(cat "$dir/w4.err"))"
echo "watch --prefix ib/" >&3
n0=$(events "$dir/w4" | grep -c " probe-")
# The second watch's probes: until one shows.
ok2=1
for n in $(seq 1 100); do
    ctl "$l" put ib/p "probe-ib-$n" >/dev/null
    if events "$dir/w4" | grep -q "^PUT ib/p probe-ib-"; then ok2=0; break; fi
    sleep 0.05
done
[ $ok2 = 0 ] && ok "watch -i: second watch established" || bad "watch -i: second watch never saw a probe"
i1=$(putrev "$l" ia x)
i2=$(putrev "$l" ib/y y)
ctl "$l" put ic z >/dev/null
i3=$(delrev "$l" ia)
wait_events "$dir/w4" 1 "^DELETE ia"
want="PUT ia x $i1
PUT ib/y y $i2
DELETE ia  $i3"
out=$(after_probe "$dir/w4")
[ "$out" = "$want" ] && ok "watch -i: both watches' writes, in order, once" || bad "watch -i: got '$out', want '$want' (after $n0 probes)"
exec 3>&-

# --- compaction, then a watch below it ----------------------------------------------------------
ctl "$l" compaction "$h4" >/dev/null && ok "compaction $h4" || bad "compaction $h4"
# The leader answered once it applied the compaction; the follower serves watches from its own
# applied state, so wait (15 s at most) until a serializable read there below it is refused.
deadline=$((SECONDS + 15))
until ctl "$f1" get hist --rev "$h1" --consistency=s 2>&1 | grep -q compacted || [ $SECONDS -ge $deadline ]; do
    sleep 0.05
done
timeout 20 etcdctl --endpoints "$(ep "$f1")" "${tls[@]}" watch --rev "$h1" hist >"$dir/w5" 2>&1
grep -q "compacted" "$dir/w5" && ok "watch --rev below the compaction: canceled as compacted" ||
    bad "watch --rev below the compaction: '$(head -c 300 "$dir/w5")'"
watch_bg "$f2" "$dir/w6" --rev "$h4" hist
wait_events "$dir/w6" 2 "^PUT hist" && [ "$(events "$dir/w6" | head -1)" = "PUT hist 3 $h4" ] &&
    ok "watch --rev at the compaction: served" || bad "watch --rev at the compaction: '$(events "$dir/w6")'"

# --- the watching member dies: the client resumes on another one without a gap or a duplicate ---
# etcdctl is given both followers; whichever serves the stream is killed (-9) in turn, with writes
# before, between and after. The header's member_id tells which member sent each response.
eps="$(ep "$f1"),$(ep "$f2")" watch_bg "$f1" "$dir/w7" --prefix r/
probe "$l" r/probe "$dir/w7" && ok "failover watch: established" || bad "failover watch: never saw a probe"
want=""
wr() { local r; r=$(putrev "$l" "$1" "$2") && want="$want${want:+
}PUT $1 $2 $r"; }
for k in 1 2 3; do wr r/a "$k"; done
for victim in "$f1" "$f2"; do
    kill -9 "${pids[$victim]}" 2>/dev/null
    wait "${pids[$victim]}" 2>/dev/null
    for k in 1 2 3; do wr "r/$victim" "$k"; done
    start "$victim"
    # back in the cluster (it answers status) before the other one goes
    deadline=$((SECONDS + 15))
    until ctl "$victim" endpoint status >/dev/null 2>&1 || [ $SECONDS -ge $deadline ]; do sleep 0.05; done
done
for k in 1 2 3; do wr r/z "$k"; done
wait_events "$dir/w7" 3 "^PUT r/z"
out=$(after_probe "$dir/w7")
[ "$out" = "$want" ] && ok "failover watch: every write once, in order, across kill -9 of the serving member" ||
    bad "failover watch: got '$out', want '$want'"
members=$(python3 -c '
import json, sys
ids = set()
for line in open(sys.argv[1]):
    if line.startswith("{"):
        try: ids.add(json.loads(line)["Header"]["member_id"])
        except Exception: pass
print(len(ids))' "$dir/w7")
[ "$members" -ge 2 ] && ok "failover watch: served by $members members in turn" || bad "failover watch: served by $members member(s) only"

# --- a learner serves watches from its own applied state (etcd 3.4 refuses streams on learners) ---
"$tool" node "$dir/c" n4 --ip 127.0.0.1 >/dev/null || exit 1
names[3]=n4
cport[3]=$(port)
pport[3]=$(port)
out=$(ctl "$l" member add n4 --learner --peer-urls "https://127.0.0.1:${pport[3]}" 2>&1)
grep -q "added" <<<"$out" && ok "member add n4 --learner" || bad "member add --learner: $out"
"$craftd" --name n4 --data-dir "$dir/n4" \
    --listen-client-urls "https://127.0.0.1:${cport[3]}" \
    --listen-peer-urls "https://127.0.0.1:${pport[3]}" \
    --initial-cluster "$cluster,n4=https://127.0.0.1:${pport[3]}" --initial-cluster-state existing \
    --heartbeat-interval 50 --election-timeout 300 --proposal-timeout 2000 \
    --cert-file "$dir/c/n4.pem" --key-file "$dir/c/n4-key.pem" --trusted-ca-file "$dir/c/ca.pem" \
    --peer-cert-file "$dir/c/n4.pem" --peer-key-file "$dir/c/n4-key.pem" \
    --peer-trusted-ca-file "$dir/c/ca.pem" >>"$dir/n4.log" 2>&1 &
pids[3]=$!
lr=$(putrev "$l" learnkey 0)
deadline=$((SECONDS + 30))
until [ "$(ctl 3 get learnkey --print-value-only --consistency=s 2>/dev/null)" = 0 ] || [ $SECONDS -ge $deadline ]; do sleep 0.05; done
out=$(ctl 3 get learnkey 2>&1)
grep -q "rpc not supported for learner" <<<"$out" && ok "n4 is a learner (a linearizable read is refused)" ||
    bad "n4 as a learner: '$out'"
watch_bg 3 "$dir/w8" --rev "$lr" --prev-kv learnkey
l1=$(putrev "$l" learnkey 1)
l2=$(delrev "$l" learnkey)
wait_events "$dir/w8" 1 "^DELETE learnkey"
want="PUT learnkey 0 $lr
PUT learnkey 1 $l1 prev=0
DELETE learnkey  $l2 prev=1"
out=$(events "$dir/w8")
[ "$out" = "$want" ] && ok "watch on a learner: history and live events" || bad "watch on the learner: got '$out', want '$want' ($(cat "$dir/w8.err"))"

if [ $fails -gt 0 ]; then
    for n in "${names[@]}"; do echo "--- $n.log"; tail -20 "$dir/$n.log" 2>/dev/null; done
fi
echo "$fails failure(s)"
[ $fails -eq 0 ]
