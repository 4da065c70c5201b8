#!/usr/bin/env bash
# Debian's real Prometheus against a real 3-member craftd cluster over mutual TLS (issue 17,
# "Operators"), with craft's alert rules (docs/prometheus/craft-alerts.yml) loaded and evaluated
# every second:
# - Prometheus scrapes every member's https metrics URL with a client certificate (tls_config)
#   and its HTTP API reports up 1 and etcd_server_has_leader 1 for all three, exactly one leader;
# - every metric name used by the rules file, the Grafana dashboard and docs/operations.md is one
#   the members export (taken from their live /metrics), and a misspelled one is caught;
# - every rule loads and evaluates without error, and on the healthy cluster no alert is pending
#   or firing;
# - under load (craft-bench puts) Prometheus sees the commit index and Put calls grow and
#   rate(etcd_server_proposals_committed_total) above 0 on every member, and every query of the
#   dashboard answers with data (no panel silently blank);
# - kill -9 of the leader: up 0 for it and CraftMemberDown pending for it alone, a new leader
#   known to both others, no quorum alert; kill -9 of a second member: CraftNoLeader and
#   CraftInsufficientMembers become active.
# Prometheus listens on loopback only and scrapes only loopback targets.
set -uo pipefail
craftd=$1 tool=$2 bench=$3 rules=$(realpath "$4") dashboard=$5 opsdoc=$6 names=$7
export ETCDCTL_API=3
export LC_ALL=C
for c in curl jq prometheus python3; do
    command -v $c >/dev/null || { echo "$c not installed (scripts/deps.sh)"; exit 1; }
done
dir=$(mktemp -d "${TEST_TMPDIR:-/tmp}/prometheus.XXXXXX")
declare -a pids
prom=""
cleanup() {
    for p in "${pids[@]+"${pids[@]}"}" $prom; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null; done
    rm -rf "$dir"
}
trap cleanup EXIT
fails=0
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }
t0=$SECONDS

"$tool" ca "$dir/c" >/dev/null && "$tool" client "$dir/c" prometheus >/dev/null || exit 1
# ten free loopback ports at once (held until all are chosen, so they differ)
read -r -a ports <<<"$(python3 -c '
import socket
ss = [socket.socket() for _ in range(10)]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))')"
names_=(n1 n2 n3)
declare -a cport pport mport
cluster=""
for i in 0 1 2; do
    "$tool" node "$dir/c" "${names_[$i]}" --ip 127.0.0.1 >/dev/null || exit 1
    cport[$i]=${ports[$((3 * i))]}
    pport[$i]=${ports[$((3 * i + 1))]}
    mport[$i]=${ports[$((3 * i + 2))]}
    cluster="$cluster${cluster:+,}${names_[$i]}=https://127.0.0.1:${pport[$i]}"
done
start() {
    local i=$1 n=${names_[$1]}
    "$craftd" --name "$n" --data-dir "$dir/$n" \
        --listen-client-urls "https://127.0.0.1:${cport[$i]}" \
        --listen-peer-urls "https://127.0.0.1:${pport[$i]}" --initial-cluster "$cluster" \
        --heartbeat-interval 50 --election-timeout 300 --proposal-timeout 2000 \
        --listen-metrics-urls "https://127.0.0.1:${mport[$i]}" \
        --cert-file "$dir/c/$n.pem" --key-file "$dir/c/$n-key.pem" --trusted-ca-file "$dir/c/ca.pem" \
        --peer-cert-file "$dir/c/$n.pem" --peer-key-file "$dir/c/$n-key.pem" \
        --peer-trusted-ca-file "$dir/c/ca.pem" >>"$dir/$n.log" 2>&1 &
    pids[$i]=$!
}
for i in 0 1 2; do start $i; done

# --- Prometheus: scrape every second over mTLS, evaluate the rules every second ---------------
promport=${ports[9]}
cat >"$dir/prometheus.yml" <<YAML
global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}
rule_files: ["$rules"]
scrape_configs:
  - job_name: craft
    scheme: https
    tls_config:
      ca_file: $dir/c/ca.pem
      cert_file: $dir/c/prometheus.pem
      key_file: $dir/c/prometheus-key.pem
    static_configs:
      - {targets: ["127.0.0.1:${mport[0]}"], labels: {member: n1}}
      - {targets: ["127.0.0.1:${mport[1]}"], labels: {member: n2}}
      - {targets: ["127.0.0.1:${mport[2]}"], labels: {member: n3}}
YAML
prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/tsdb" \
    --web.listen-address="127.0.0.1:$promport" --log.level=warn >"$dir/prometheus.log" 2>&1 &
prom=$!
api="http://127.0.0.1:$promport/api/v1"

# pq QUERY: one line per series, "MEMBER VALUE" (member label, else instance, else "-"),
# sorted; "ERROR ..." if Prometheus refused the query.
pq() {
    curl -s --max-time 5 "$api/query" --data-urlencode "query=$1" | jq -r '
        if .status != "success" then "ERROR \(.error)"
        elif .data.resultType == "scalar" then "- \(.data.result[1])"
        else .data.result | map("\(.metric.member // .metric.instance // "-") \(.value[1])") | sort | .[]
        end' 2>/dev/null
}
# alerts: "ALERTNAME MEMBER-OR-JOB STATE" for each pending or firing alert, sorted
alerts() {
    curl -s --max-time 5 "$api/alerts" |
        jq -r '.data.alerts | map("\(.labels.alertname) \(.labels.member // .labels.job // "-") \(.state)") | sort | .[]'
}
# The alerts less the latency ones (fsync, backend commit, peer round trip), which say how fast
# this machine is rather than how the cluster is: under ASan on a loaded machine a peer's p99
# round trip once passed 150 ms, and CraftPeerRoundTripSlow went pending beside CraftMemberDown.
state_alerts() {
    alerts | grep -Ev '^(CraftWALFsyncSlow|CraftWALFsyncVerySlow|CraftBackendCommitSlow|CraftPeerRoundTripSlow) '
}
# until SECONDS CMD...: runs CMD every 0.2 s until it succeeds; fails after SECONDS
until_ok() {
    local deadline=$((SECONDS + $1))
    shift
    while [ $SECONDS -lt $deadline ]; do
        "$@" && return 0
        sleep 0.2
    done
    return 1
}
all3() { [ "$(pq "$1")" = $'n1 1\nn2 1\nn3 1' ]; }
healthy() { all3 'up{job="craft"}' && all3 etcd_server_has_leader && [ "$(pq 'sum(etcd_server_is_leader)')" = "- 1" ]; }

if until_ok 45 healthy; then
    ok "Prometheus scrapes all three members over mTLS: up 1, etcd_server_has_leader 1, one leader ($((SECONDS - t0)) s)"
else
    bad "not healthy in Prometheus: up: $(pq 'up{job="craft"}' | tr '\n' ' ') has_leader: $(pq etcd_server_has_leader | tr '\n' ' ')"
    tail -n 5 "$dir/prometheus.log" "$dir"/n*.log
    exit 1
fi
leader=$(pq 'etcd_server_is_leader == 1' | awk '{ print $1 }')

# --- every metric the rules, the dashboard and the operations doc name is exported ------------
: >"$dir/scrape"
for i in 0 1 2; do
    curl -s --max-time 5 --cacert "$dir/c/ca.pem" --cert "$dir/c/prometheus.pem" \
        --key "$dir/c/prometheus-key.pem" "https://127.0.0.1:${mport[$i]}/metrics" >>"$dir/scrape"
done
{
    awk '/^# (TYPE|HELP) / { print $3; next } /^[a-zA-Z_]/ { sub(/[{ ].*/, ""); print }' "$dir/scrape"
    echo up # Prometheus's own, per target
} | sort -u >"$dir/known"
echo "$(wc -l <"$dir/known") metric names exported"
if out=$(python3 "$names" check "$dir/known" "$rules" "$dashboard" 2>&1); then
    ok "every metric in the rules ($(python3 "$names" names "$rules" | wc -l)) and the dashboard ($(python3 "$names" names "$dashboard" | wc -l)) is exported"
else
    bad "names craft does not export: $out"
fi
# the check itself catches a misspelled name
sed 's/etcd_server_has_leader/etcd_server_has_leaders/' "$rules" >"$dir/typo.yml"
if out=$(python3 "$names" check "$dir/known" "$dir/typo.yml"); then
    bad "a misspelled metric in a rules file went unnoticed"
else
    echo "$out" | grep -q "unknown metric etcd_server_has_leaders" && ok "a misspelled metric is caught ($out)" ||
        bad "misspelled metric: '$out'"
fi
# metric names in backquotes in docs/operations.md, up to its list of what craft does not export
sed '/^## What craft does not export/,$d' "$opsdoc" | grep -o '`[^`]*`' |
    grep -oE '(^|[^a-z_])(etcd|craft|grpc|process)_[a-z0-9_]+' | sed 's/^[^a-z]//' | sort -u >"$dir/doc-names"
# label names (grpc_code, To) are named in backquotes too
grep -v '^#' "$dir/scrape" | grep -o '[{,][a-zA-Z_]*=' | tr -d '{,=' | sort -u - "$dir/known" >"$dir/known-and-labels"
unknown=$(comm -23 "$dir/doc-names" "$dir/known-and-labels" | tr '\n' ' ')
[ "$(wc -l <"$dir/doc-names")" -ge 15 ] && [ -z "$unknown" ] &&
    ok "all $(wc -l <"$dir/doc-names") metric names in operations.md are exported" ||
    bad "operations.md: names not exported: '$unknown' ($(wc -l <"$dir/doc-names") found)"

# --- the rules load, evaluate, and nothing alerts on a healthy cluster -------------------------
rules_state() { # "RULES EVALUATED-WITHOUT-ERROR NAME,NAME,..."
    curl -s --max-time 5 "$api/rules" | jq -r '[.data.groups[].rules[]] |
        "\(length) \(map(select(.health == "ok" and (.lastError // "") == ""
                                 and (.lastEvaluation | startswith("0001") | not))) | length) \(map(.name) | sort | join(","))"'
}
want=$(python3 "$names" exprs "$rules" | jq -r .where | sort | paste -sd,)
nrules=$(echo "$want" | tr ',' '\n' | wc -l)
if until_ok 10 eval '[ "$(rules_state)" = "$nrules $nrules $want" ]'; then
    ok "/api/v1/rules lists all $nrules alerts of the rules file, each evaluated without error"
else
    bad "rules: $(rules_state) (want $nrules $nrules $want)"
    curl -s "$api/rules" | head -c 2000
fi
# (a member's first scrape may predate the election; an alert pending from it clears at the next
# evaluation)
no_alerts() { [ -z "$(state_alerts)" ]; }
until_ok 5 no_alerts && ok "healthy cluster: no alert pending or firing (latency ones aside)" || bad "healthy cluster, alerts: $(alerts)"
[ "$(pq 'ALERTS{alertname="CraftNoLeader"}')" = "" ] && ok "CraftNoLeader is not active" || bad "CraftNoLeader active"

# --- under load the numbers Prometheus sees move ---------------------------------------------
committed() { pq etcd_server_proposals_committed_total | awk '{ printf "%s%s", s, $2; s = " " }'; }
read -r c1 c2 c3 <<<"$(committed)"
puts0=$(pq 'sum(grpc_server_handled_total{grpc_method="Put",grpc_code="OK"})' | awk '{ print $2 }')
eps="https://127.0.0.1:${cport[0]},https://127.0.0.1:${cport[1]},https://127.0.0.1:${cport[2]}"
if "$bench" --endpoints "$eps" --cacert "$dir/c/ca.pem" --cert "$dir/c/prometheus.pem" \
    --key "$dir/c/prometheus-key.pem" --conns 3 --inflight 8 --total 600 --mix put=100 --quiet \
    >"$dir/bench.out" 2>&1; then
    ok "craft-bench: 600 puts acknowledged"
else
    bad "craft-bench failed: $(tail -3 "$dir/bench.out")"
fi
moved() {
    local a b c
    read -r a b c <<<"$(committed)"
    [ "${a%.*}" -ge $((c1 + 600)) ] && [ "${b%.*}" -ge $((c2 + 600)) ] && [ "${c%.*}" -ge $((c3 + 600)) ] &&
        pq 'sum(grpc_server_handled_total{grpc_method="Put",grpc_code="OK"})' |
        awk -v p="$puts0" '{ exit !($2 >= p + 600) }'
}
if until_ok 15 moved; then
    ok "Prometheus saw every member's commit index grow by 600 ($c1 $c2 $c3 -> $(committed)) and 600 more Put OK calls"
else
    bad "commit index in Prometheus: $c1 $c2 $c3 -> $(committed); Put OK $puts0 -> $(pq 'sum(grpc_server_handled_total{grpc_method="Put",grpc_code="OK"})')"
fi
rate_up() { pq 'rate(etcd_server_proposals_committed_total[20s]) > 0' | awk 'END { exit NR != 3 }'; }
until_ok 10 rate_up && ok "rate(etcd_server_proposals_committed_total[20s]) > 0 on every member: $(pq 'rate(etcd_server_proposals_committed_total[20s])' | tr '\n' ' ')" ||
    bad "committed rate: $(pq 'rate(etcd_server_proposals_committed_total[20s])' | tr '\n' ' ')"
out=$(pq 'sum(rate(etcd_disk_wal_fsync_duration_seconds_count[20s]))' | awk '$2 > 0')
[ -n "$out" ] && ok "WAL fsyncs per second seen: $out" || bad "no WAL fsync rate"

# --- every dashboard query answers with data ---------------------------------------------------
blank=0 panels=0
# Grafana's variables as the dashboard would set them here
while IFS=$'\t' read -r where expr; do
    panels=$((panels + 1))
    res=$(pq "$expr")
    if [ -z "$res" ] || [ "${res#ERROR}" != "$res" ]; then
        bad "dashboard '$where': $expr -> '${res:-no data}'"
        blank=$((blank + 1))
    fi
done < <(python3 "$names" exprs "$dashboard" | jq -r '[.where, (.expr | gsub("\\$__rate_interval"; "20s")
    | gsub("\\$job"; "craft") | gsub("\\$instance"; ".*") | gsub("\n"; " "))] | @tsv')
[ $blank = 0 ] && [ $panels -ge 20 ] && ok "all $panels dashboard queries answer with data" ||
    bad "$blank of $panels dashboard queries without data"

# --- kill -9 the leader: up 0 for it, CraftMemberDown for it alone, a new leader -----------------
for i in 0 1 2; do [ "${names_[$i]}" = "$leader" ] && li=$i; done
changes="sum(etcd_server_leader_changes_seen_total{member!=\"$leader\"})"
lc0=$(pq "$changes" | awk '{ print $2 }')
kill -9 "${pids[$li]}"
pids[$li]=""
rest=$(printf '%s\n' "${names_[@]}" | grep -vx "$leader" | tr '\n' ' ')
down() {
    [ "$(pq 'up{job="craft"} == 0')" = "$leader 0" ] &&
        [ "$(alerts | grep CraftMemberDown)" = "CraftMemberDown $leader pending" ]
}
if until_ok 15 down; then
    ok "kill -9 of the leader $leader: up 0 for it alone, CraftMemberDown pending for it"
else
    bad "after kill -9 of $leader: up==0: '$(pq 'up{job="craft"} == 0')', alerts: '$(alerts)'"
fi
new_leader() {
    [ "$(pq 'etcd_server_has_leader == 1' | awk '{ printf "%s ", $1 }')" = "$rest" ] &&
        [ "$(pq 'sum(etcd_server_is_leader)')" = "- 1" ] &&
        pq "$changes" | awk -v c="$lc0" '{ exit !($2 >= c + 2) }'
}
if until_ok 15 new_leader; then
    ok "$rest: a new leader, $(pq 'etcd_server_is_leader == 1' | awk '{ print $1 }'), and leader changes counted"
else
    bad "no new leader seen: has_leader '$(pq etcd_server_has_leader | tr '\n' ' ')' leader changes $lc0 -> $(pq "$changes")"
fi
# (CraftNoLeader may have gone pending during the election; it clears once evaluated again)
only_down() { [ "$(state_alerts)" = "CraftMemberDown $leader pending" ]; }
until_ok 5 only_down && ok "2 of 3 up: no other alert (latency ones aside)" || bad "2 of 3 up, alerts: $(alerts | tr '\n' ';')"

# --- kill -9 a second member: no quorum, no leader ------------------------------------------------
second=${rest%% *}
survivor=${rest#* }
survivor=${survivor% }
for i in 0 1 2; do [ "${names_[$i]}" = "$second" ] && kill -9 "${pids[$i]}" && pids[$i]=""; done
lost() {
    local a
    a=$(alerts)
    echo "$a" | grep -qx "CraftNoLeader $survivor pending" &&
        echo "$a" | grep -qx "CraftInsufficientMembers craft pending"
}
if until_ok 15 lost; then
    ok "1 of 3 up: CraftNoLeader pending for $survivor, CraftInsufficientMembers pending"
else
    bad "1 of 3 up, alerts: '$(alerts | tr '\n' ';')'"
fi

echo "$((SECONDS - t0)) s; $fails failed"
[ $fails -eq 0 ]
