#!/usr/bin/env bash
# craftd's logs (docs/logging.md) from a real member:
# - by default every stderr line is a JSON object with level, ts, caller and msg (etcd's zap
#   shape), role changes carry member, term and leader fields;
# - a port scan of the client port (50 TCP connections sending garbage) gives a few rate-limited
#   JSON lines for gRPC's TLS handshake failures, not 50 raw lines, and the lines written plus the
#   "suppressed" counts they report account for every connection;
# - --logger capnslog --log-level warn --log-outputs FILE: plain text lines in FILE, no info
#   lines, nothing on stderr;
# - a peer that is down gives rate-limited warnings naming it, with counts of the rest;
# - bad --logger, --log-level and --log-outputs values exit 2 with a clear message.
set -uo pipefail
craftd=$1 tool=$2 ctl=$3
dir=$(mktemp -d "${TEST_TMPDIR:-/tmp}/logging.XXXXXX")
pids=()
trap 'for p in "${pids[@]+"${pids[@]}"}"; do kill -9 "$p" 2>/dev/null; done; rm -rf "$dir"' EXIT
fails=0
ok() { echo "ok: $1"; }
bad() { echo "FAIL: $1"; fails=$((fails + 1)); }
"$tool" ca "$dir/c" >/dev/null && "$tool" node "$dir/c" n1 --ip 127.0.0.1 >/dev/null &&
    "$tool" client "$dir/c" cl >/dev/null || { echo "cannot make certificates"; exit 1; }
# port: a free loopback port below the ephemeral range (port.sh).
# shellcheck source=tests/cluster/port.sh
source "$(dirname "${BASH_SOURCE[0]}")/port.sh"
cp=$(port) pp=$(port)
tls=(--cert-file "$dir/c/n1.pem" --key-file "$dir/c/n1-key.pem" --trusted-ca-file "$dir/c/ca.pem"
    --peer-cert-file "$dir/c/n1.pem" --peer-key-file "$dir/c/n1-key.pem"
    --peer-trusted-ca-file "$dir/c/ca.pem")
base=(--name n1 --listen-client-urls "https://127.0.0.1:$cp" --listen-peer-urls "https://127.0.0.1:$pp"
    --initial-cluster "n1=https://127.0.0.1:$pp" --heartbeat-interval 20 --election-timeout 100
    "${tls[@]}")
cli=("$ctl" --endpoints "https://127.0.0.1:$cp" --cacert "$dir/c/ca.pem" --cert "$dir/c/cl.pem" --key "$dir/c/cl-key.pem")

# ---- bad values: exit 2, a sentence naming the flag, nothing started ----
refused() { # text, description, craftd args...
    local text=$1 what=$2 out rc
    shift 2
    out=$(timeout 20 "$craftd" "$@" 2>&1 </dev/null)
    rc=$?
    if [ $rc -eq 2 ] && grep -qF -- "$text" <<<"$out"; then ok "$what -> 2: $out"; else
        bad "$what: exit $rc (want 2), output: $out"; fi
}
refused 'invalid value "json5" for flag -logger: want zap or capnslog' "bad --logger" \
    --data-dir "$dir/x" "${base[@]}" --logger json5
refused 'invalid value "verbose" for flag -log-level' "bad --log-level" \
    --data-dir "$dir/x" "${base[@]}" --log-level verbose
refused "--log-outputs: an empty output" "empty --log-outputs entry" \
    --data-dir "$dir/x" "${base[@]}" --log-outputs "stderr,,stdout"
refused "--log-outputs: cannot open $dir/no/such/dir/craft.log" "--log-outputs file that cannot be opened" \
    --data-dir "$dir/x" "${base[@]}" --log-outputs "$dir/no/such/dir/craft.log"
refused "--log-rate-limit-burst wants a whole number" "bad --log-rate-limit-burst" \
    --data-dir "$dir/x" "${base[@]}" --log-rate-limit-burst 0
[ ! -e "$dir/x" ] && ok "nothing was started for a bad value" || bad "a data directory was made for a bad flag"

# Starts craftd with extra flags, stderr to $1; waits until it serves a write.
start() { # stderr-file, flags...
    local errf=$1
    shift
    "$craftd" "${base[@]}" "$@" 2>"$errf" >/dev/null </dev/null &
    pid=$!
    pids+=("$pid")
    local deadline=$((SECONDS + 30))
    while [ $SECONDS -lt $deadline ]; do
        timeout 5 "${cli[@]}" put k v >/dev/null 2>&1 && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    bad "craftd did not serve ($*)"
    cat "$errf"
    return 1
}
stop() {
    kill -TERM "$pid"
    timeout 20 tail --pid="$pid" -f /dev/null
    wait "$pid"
}
# n TCP connections to the client port, each sending garbage and waiting until it is closed.
scan() {
    python3 - "$cp" "$1" <<'EOF'
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.0\r\n\r\n" + bytes(range(256)))
    s.settimeout(10)
    try:
        while s.recv(4096):
            pass
    except OSError:
        pass
    s.close()
EOF
}

# ---- JSON lines by default; a port scan is rate-limited ----
start "$dir/json.err" --data-dir "$dir/d1" --log-rate-limit-interval 1s --log-rate-limit-burst 3 || exit 1
scan 50
# The counts of what was held back arrive once the windows end (craftd writes them every
# interval; SIGTERM writes the rest): wait for the first one, bounded.
deadline=$((SECONDS + 20))
until grep -q '"suppressed":' "$dir/json.err" || [ $SECONDS -ge $deadline ]; do sleep 0.1; done
stop
rc=$?
[ $rc -eq 0 ] && ok "clean stop" || bad "exit $rc after SIGTERM"
check=$(python3 - "$dir/json.err" <<'EOF'
import json, re, sys
lines = open(sys.argv[1], encoding="utf-8", errors="strict").read().split("\n")
assert lines[-1] == "", "the last line is not ended"
objs = []
for i, l in enumerate(lines[:-1]):
    try:
        o = json.loads(l)
    except ValueError as e:
        print(f"line {i + 1} is not JSON ({e}): {l[:200]}")
        sys.exit(1)
    for k in ("level", "ts", "caller", "msg"):
        if k not in o:
            print(f"line {i + 1} has no {k}: {l[:200]}"); sys.exit(1)
    if list(o)[:4] != ["level", "ts", "caller", "msg"]:
        print(f"line {i + 1}: level, ts, caller, msg not first: {l[:200]}"); sys.exit(1)
    if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", o["ts"]):
        print(f"line {i + 1}: ts {o['ts']}"); sys.exit(1)
    if not re.fullmatch(r"[\w./+-]+:\d+", o["caller"]):
        print(f"line {i + 1}: caller {o['caller']}"); sys.exit(1)
    if o["level"] not in ("debug", "info", "warn", "error", "panic", "fatal"):
        print(f"line {i + 1}: level {o['level']}"); sys.exit(1)
    objs.append(o)
lead = [o for o in objs if o["msg"].startswith("leader in term")]
if not lead or not all(isinstance(o.get("term"), int) and o.get("leader") == o.get("member") for o in lead):
    print("no leader line with member, term and leader fields"); sys.exit(1)
hs = [o for o in objs if "Handshake failed" in o["msg"]]
total = len(hs) + sum(o.get("suppressed", 0) for o in hs)
if not hs or len(hs) > 20:
    print(f"{len(hs)} handshake lines for 50 connections (want a few)"); sys.exit(1)
# (a line held back and written late with the count of the others carries no other field)
if any(o["level"] != "error" or (o.get("logger") != "grpc" and "suppressed" not in o) for o in hs):
    print("handshake lines not at gRPC's level (error) with logger grpc"); sys.exit(1)
if total != 50:
    print(f"handshake lines ({len(hs)}) and their suppressed counts add up to {total}, not 50"); sys.exit(1)
if not any(o["msg"].startswith("craftd n1: stopped") for o in objs):
    print("no stopped line"); sys.exit(1)
print(f"{len(objs)} JSON lines; 50 handshake failures in {len(hs)} lines")
EOF
) && ok "$check" || { bad "JSON log: $check"; tail -20 "$dir/json.err"; }

# ---- plain text, warn and above, to a file only ----
start "$dir/text.err" --data-dir "$dir/d1" --logger capnslog --log-level warn \
    --log-outputs "$dir/craft.log" || exit 1
scan 1
deadline=$((SECONDS + 20))
until grep -q 'Handshake failed' "$dir/craft.log" 2>/dev/null || [ $SECONDS -ge $deadline ]; do sleep 0.1; done
stop
check=$(python3 - "$dir/craft.log" <<'EOF'
import re, sys
lines = open(sys.argv[1], encoding="utf-8").read().splitlines()
shape = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6} ([DIWEC]) \| [\w./+-]+:\d+: .*")
for l in lines:
    m = shape.fullmatch(l)
    if not m:
        print(f"not capnslog text: {l[:200]}"); sys.exit(1)
    if m.group(1) in "DI":
        print(f"below warn: {l[:200]}"); sys.exit(1)
if not any(" E | " in l and "Handshake failed" in l for l in lines):
    print("no handshake error line"); sys.exit(1)
print(f"{len(lines)} text lines, none below warn")
EOF
) && ok "$check" || { bad "text log: $check"; cat "$dir/craft.log"; }
[ ! -s "$dir/text.err" ] && ok "nothing on stderr with --log-outputs FILE" ||
    bad "stderr not empty: $(head -3 "$dir/text.err")"

# ---- a peer that is down: rate-limited warnings naming it, with counts ----
# n1 in a two-member cluster whose n2 never starts: every (pre-)vote request to n2 fails.
pp2=$(port)
"$craftd" --name n1 --data-dir "$dir/d3" --listen-client-urls "https://127.0.0.1:$cp" \
    --listen-peer-urls "https://127.0.0.1:$pp" --heartbeat-interval 20 --election-timeout 100 \
    --initial-cluster "n1=https://127.0.0.1:$pp,n2=https://127.0.0.1:$pp2" "${tls[@]}" \
    --log-rate-limit-interval 1s --log-rate-limit-burst 2 2>"$dir/peer.err" >/dev/null </dev/null &
pid=$!
pids+=("$pid")
deadline=$((SECONDS + 30))
until grep -q 'unreachable.*"suppressed":' "$dir/peer.err" || [ $SECONDS -ge $deadline ]; do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
stop
check=$(python3 - "$dir/peer.err" <<'EOF'
import json, sys
objs = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
down = [o for o in objs if "unreachable" in o["msg"]]
if not any(o.get("suppressed") for o in down):
    print(f"no count of held-back lines among {len(down)} unreachable lines"); sys.exit(1)
full = [o for o in down if "remote-peer-id" in o]
if not full or any(o["level"] != "warn" or o["remote-peer-id"] != full[0]["remote-peer-id"] for o in full):
    print("unreachable lines are not warnings naming the one peer that is down"); sys.exit(1)
if len(down) > 2 * (1 + sum(1 for o in down if o.get("suppressed"))):
    print(f"{len(down)} unreachable lines: more than the burst per window"); sys.exit(1)
total = len(down) + sum(o.get("suppressed", 0) for o in down)
print(f"{total} failed sends to peer {full[0]['remote-peer-id']} in {len(down)} lines")
EOF
) && ok "$check" || { bad "peer down: $check"; tail -20 "$dir/peer.err"; }

echo "logging: $fails failed"
[ $fails -eq 0 ]
