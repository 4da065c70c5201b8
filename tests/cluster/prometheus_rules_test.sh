#!/usr/bin/env bash
# The operator's files without a cluster (issue 17, "Operators"):
# - docs/prometheus/craft-alerts.yml passes `promtool check rules`, and its unit tests
#   (tests/cluster/prometheus/craft-alerts.test.yml: synthetic series, each alert firing when and
#   where it should, not before its `for`, not on the healthy member) pass `promtool test rules`;
#   the unit tests run against a copy without annotations (they test when alerts fire, not their
#   wording; check rules has parsed the annotation templates);
# - a copy with a broken threshold fails those unit tests (they can fail);
# - docs/grafana/craft-dashboard.json parses and is importable: a schemaVersion, a Prometheus
#   datasource variable every panel and target uses, unique panel ids, a grid position and at
#   least one PromQL target per panel, and every expression parses in promtool's PromQL parser
#   (through a throwaway rules file);
# - the Prometheus configuration in docs/operations.md passes `promtool check config` with the
#   rules file (its file paths pointed at this test's files).
# Which metric names they use is checked against a live cluster in prometheus_test.sh.
set -uo pipefail
rules=$(realpath "$1") unit=$2 dashboard=$3 names=$4 opsdoc=$5
for c in promtool python3; do
    command -v $c >/dev/null || { echo "$c not installed (scripts/deps.sh)"; exit 1; }
done
python3 -c 'import yaml' 2>/dev/null || { echo "python3-yaml not installed (scripts/deps.sh)"; exit 1; }
dir=$(mktemp -d "${TEST_TMPDIR:-/tmp}/promrules.XXXXXX")
trap 'rm -rf "$dir"' EXIT
fails=0
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }

if out=$(promtool check rules "$rules" 2>&1); then
    ok "promtool check rules: $(echo "$out" | grep -o 'SUCCESS.*')"
else
    bad "promtool check rules: $out"
fi

strip() { # rules file -> the same without annotations
    python3 -c '
import sys, yaml
d = yaml.safe_load(open(sys.argv[1]))
for g in d["groups"]:
    for r in g["rules"]:
        r.pop("annotations", None)
yaml.safe_dump(d, sys.stdout, sort_keys=False)' "$1"
}
cp "$unit" "$dir/craft-alerts.test.yml"
strip "$rules" >"$dir/craft-alerts.noannotations.yml"
if out=$(promtool test rules "$dir/craft-alerts.test.yml" 2>&1); then
    ok "promtool test rules: every alert fires when and where the unit tests expect"
else
    bad "promtool test rules: $out"
fi
n=$(grep -c 'alertname:' "$unit")
alerts=$(python3 -c '
import sys, yaml
print(len([r for g in yaml.safe_load(open(sys.argv[1]))["groups"] for r in g["rules"]]))' "$rules")
tested=$(grep -o 'alertname: [A-Za-z]*' "$unit" | sort -u | wc -l)
[ "$tested" = "$alerts" ] && ok "the unit tests cover all $alerts alerts ($n checks)" ||
    bad "the unit tests cover $tested of $alerts alerts"

# the unit tests can fail: the quota alert at 99.5% instead of 95% misses the member at 99%
sed 's/ > 0\.95$/ > 0.995/' "$rules" >"$dir/broken.yml"
cmp -s "$rules" "$dir/broken.yml" && bad "could not break the quota threshold"
strip "$dir/broken.yml" >"$dir/craft-alerts.noannotations.yml"
if out=$(promtool test rules "$dir/craft-alerts.test.yml" 2>&1); then
    bad "the unit tests pass with a broken quota threshold"
else
    echo "$out" | grep -q 'alertname: CraftDatabaseQuotaExhausted' &&
        ok "a broken threshold fails the unit tests (CraftDatabaseQuotaExhausted)" ||
        bad "broken threshold: $out"
fi

# --- the Grafana dashboard ------------------------------------------------------------------
if out=$(python3 - "$dashboard" <<'PY' 2>&1
import json, sys
d = json.load(open(sys.argv[1]))
errs = []
if not isinstance(d.get("schemaVersion"), int):
    errs.append("no integer schemaVersion")
for k in ("title", "uid", "panels", "templating", "time"):
    if k not in d:
        errs.append("no " + k)
var = [v for v in d["templating"]["list"] if v.get("type") == "datasource"]
if len(var) != 1 or var[0].get("query") != "prometheus":
    errs.append("want one datasource variable of type prometheus")
ds = "${%s}" % var[0]["name"] if var else None
def walk(ps):
    for p in ps:
        yield p
        yield from walk(p.get("panels") or [])
ids, targets = set(), 0
for p in walk(d["panels"]):
    t = p.get("title", "?")
    if p.get("id") in ids:
        errs.append(f"panel id {p.get('id')} twice")
    ids.add(p.get("id"))
    g = p.get("gridPos") or {}
    if not all(isinstance(g.get(k), int) for k in ("h", "w", "x", "y")) or g["x"] + g["w"] > 24:
        errs.append(f"{t}: bad gridPos {g}")
    if p.get("type") == "row":
        continue
    if (p.get("datasource") or {}).get("uid") != ds:
        errs.append(f"{t}: datasource is not {ds}")
    if not p.get("targets"):
        errs.append(f"{t}: no targets")
    for q in p.get("targets") or []:
        targets += 1
        if not q.get("expr") or (q.get("datasource") or {}).get("uid") != ds:
            errs.append(f"{t}: target {q.get('refId')} without expr or datasource {ds}")
for v in d["templating"]["list"]:
    if v.get("type") == "query" and (v.get("datasource") or {}).get("uid") != ds:
        errs.append(f"variable {v.get('name')}: datasource is not {ds}")
print("\n".join(errs) if errs else f"{len(ids)} panels, {targets} targets")
sys.exit(1 if errs else 0)
PY
); then
    ok "the dashboard parses and is importable: $out"
else
    bad "dashboard: $out"
fi
# every expression of the dashboard parses as PromQL (Grafana's variables replaced)
python3 "$names" exprs "$dashboard" | python3 -c '
import json, sys
print("groups:\n  - name: dashboard\n    rules:")
for i, line in enumerate(sys.stdin):
    e = json.loads(line)["expr"]
    e = e.replace("$__rate_interval", "1m").replace("$job", "craft").replace("$instance", ".*")
    print(f"      - record: dashboard_expr_{i}\n        expr: {json.dumps(e)}")' >"$dir/dash-rules.yml"
if out=$(promtool check rules "$dir/dash-rules.yml" 2>&1); then
    ok "every dashboard expression parses: $(echo "$out" | grep -o 'SUCCESS.*')"
else
    bad "dashboard PromQL: $out"
fi

# --- the scrape configuration docs/operations.md shows ------------------------------------------
awk '/^```yaml/ { f = 1; n++; next } /^```/ { f = 0 } f && n == 1' "$opsdoc" |
    sed "s|/etc/prometheus/craft-alerts.yml|$rules|; s|/etc/prometheus/craft/|$dir/|" >"$dir/prometheus.yml"
touch "$dir/ca.pem" "$dir/prometheus.pem" "$dir/prometheus-key.pem"
grep -q 'tls_config' "$dir/prometheus.yml" || bad "no scrape configuration with tls_config in operations.md"
if out=$(promtool check config "$dir/prometheus.yml" 2>&1); then
    ok "operations.md's scrape configuration passes promtool check config (with the rules file)"
else
    bad "operations.md's scrape configuration: $out"
fi

echo "$fails failed"
[ $fails -eq 0 ]
