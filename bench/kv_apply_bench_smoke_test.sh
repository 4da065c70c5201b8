#!/usr/bin/env bash
# kv-apply-bench: a small run reports consistent JSON; bad flags are refused with status 2.
set -euo pipefail
b=$1
export TMPDIR=${TEST_TMPDIR:-/tmp}
out=$("$b" --puts 3000 --batch 100 --keys 500 --value 64 --json)
python3 - "$out" <<'PY'
import json, sys
j = json.loads(sys.argv[1])
assert j["puts"] == 3000 and j["batch"] == 100 and j["keys"] == 500 and j["value"] == 64, j
assert j["cpu_us_per_put"] > 0 and j["wall_us_per_put"] >= j["apply_wall_us_per_put"] > 0, j
PY
for bad in "--puts 0" "--batch x" "--value -1" "--nope" "--keys"; do
    set +e
    # shellcheck disable=SC2086
    "$b" $bad >/dev/null 2>&1
    rc=$?
    set -e
    [ "$rc" = 2 ] || { echo "kv-apply-bench $bad: status $rc, want 2"; exit 1; }
done
# a store directory is left empty of our temp dirs
! ls "$TMPDIR" | grep -q kv-apply-bench || { echo "temp store left behind"; exit 1; }
echo "kv_apply_bench_smoke_test: ok"
