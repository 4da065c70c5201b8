#!/usr/bin/env python3
"""Metric names used by Prometheus rule files and Grafana dashboards, for checking them against
what a server exports (tests/cluster/prometheus_test.sh, prometheus_rules_test.sh).

  promql_names.py names FILE...     every metric name used, one per line, sorted
  promql_names.py exprs FILE...     every expression, one JSON object per line:
                                    {"file", "where" (alert or panel title), "expr"}
  promql_names.py check KNOWN FILE...
                                    exit 1 naming each metric used in FILE... that is not a line
                                    of KNOWN (a list of names, e.g. from a live /metrics scrape)

A FILE ending in .json is a Grafana dashboard (panel targets, including panels nested in rows,
and templating queries, whose label_values(METRIC, LABEL) is Grafana's, not PromQL); any other
FILE is a Prometheus rules file (each rule's expr).

Names are found with a small PromQL scanner rather than a full parser: strings, label matchers
{...}, ranges [...], durations, numbers, grouping clauses (by/without/on/ignoring/group_left/
group_right (...)), keywords and function calls are removed; every identifier left is a metric
name. Grafana variables ($job, ${datasource}, $__rate_interval) are removed too.
"""
import json
import re
import sys

import yaml

KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
            "group_left", "group_right", "inf", "nan", "atan2", "start", "end"}
IDENT = re.compile(r"(?<![\w.$:])([A-Za-z_:][A-Za-z0-9_:]*)(?![\w:]|\s*\()")


def names_in_expr(expr):
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', " ", expr)
    s = re.sub(r"\$\{[^}]*\}|\$\w+", " ", s)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\b\d[\w.]*", " ", s)  # numbers and durations (1e3, 0.99, 5m)
    return {n for n in IDENT.findall(s) if n.lower() not in KEYWORDS}


def grafana_query_exprs(q):
    if isinstance(q, dict):
        q = q.get("query", "")
    m = re.match(r"\s*label_values\((.*),\s*\w+\s*\)\s*$", q or "")
    if m:
        return [m.group(1)]
    m = re.match(r"\s*(?:label_names|metrics|query_result)\((.*)\)\s*$", q or "")
    if m:
        return [m.group(1)] if m.group(1).strip() else []
    return [q] if q else []


def panels(ps):
    for p in ps or []:
        yield p
        yield from panels(p.get("panels"))


def exprs(path):
    if path.endswith(".json"):
        with open(path) as f:
            d = json.load(f)
        for p in panels(d.get("panels")):
            for t in p.get("targets") or []:
                if t.get("expr"):
                    yield p.get("title", ""), t["expr"]
        for v in (d.get("templating") or {}).get("list") or []:
            if v.get("type") == "query":
                for e in grafana_query_exprs(v.get("query")):
                    yield "variable " + v.get("name", ""), e
    else:
        with open(path) as f:
            d = yaml.safe_load(f)
        for g in d.get("groups") or []:
            for r in g.get("rules") or []:
                yield r.get("alert") or r.get("record") or "", str(r["expr"])


def main(argv):
    if len(argv) < 3 or argv[1] not in ("names", "exprs", "check"):
        print(__doc__, file=sys.stderr)
        return 2
    if argv[1] == "exprs":
        for path in argv[2:]:
            for where, e in exprs(path):
                print(json.dumps({"file": path, "where": where, "expr": e}))
        return 0
    files = argv[3:] if argv[1] == "check" else argv[2:]
    used = {}
    for path in files:
        for where, e in exprs(path):
            for n in names_in_expr(e):
                used.setdefault(n, []).append(f"{path}: {where}")
    if argv[1] == "names":
        print("\n".join(sorted(used)))
        return 0
    with open(argv[2]) as f:
        known = {line.strip() for line in f if line.strip()}
    unknown = sorted(n for n in used if n not in known)
    for n in unknown:
        print(f"unknown metric {n}, used in: {'; '.join(sorted(set(used[n])))}")
    if not used:
        print("no metric names found")
        return 1
    return 1 if unknown else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
