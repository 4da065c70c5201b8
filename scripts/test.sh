#!/usr/bin/env bash
# test.sh: install what is missing, build everything, run the whole test suite with Bazel and end
# with one line "N passed, N failed". N counts Criterion test cases (each Criterion binary's
# "Synthesis" line) plus every other Bazel test target as one case; a target that fails to build,
# crashes or times out counts as failed. Extra arguments go to `bazel test`, e.g.
#   scripts/test.sh --config=asan
# With CRAFT_TEST_ASAN=1 (CI sets it) the suite runs twice, in the default build and under
# ASan+UBSan (less the libFuzzer targets, sanitized in both), and the closing line adds both
# runs up.
# BAZEL_STARTUP (e.g. --output_base=/root/.cache/bazel-mine) is passed to bazel before its
# command, so two engineers on one machine do not share (and lock) one Bazel server.
# Exit status: 0 only when nothing failed.
set -uo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh || { echo "0 passed, 1 failed"; exit 1; }

read -r -a bzl <<<"${BAZEL_STARTUP:-}"
passed=0 failed=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# Runs `bazel test //...` with the given arguments and adds its cases to passed/failed.
run_suite() {
    local p0=$passed f0=$failed
    bazel "${bzl[@]}" test --keep_going "$@" //... 2>&1 | tee "$log"
    local bazel_rc=${PIPESTATUS[0]}
    local testlogs target status logf synth p f t
    testlogs=$(bazel "${bzl[@]}" info bazel-testlogs "$@" 2>/dev/null)
    # One line per test target in Bazel's summary: "//pkg:name   PASSED in 1.2s" (or FAILED,
    # TIMEOUT, NO STATUS, FAILED TO BUILD, ...; "(cached)" may precede the status).
    while read -r target status; do
        logf="$testlogs/$(echo "${target#//}" | tr ':' '/')/test.log"
        synth=$(grep -a 'Synthesis: Tested:' "$logf" 2>/dev/null | tail -1)
        if [ "$status" = PASSED ] && [ -n "$synth" ]; then
            p=$(echo "$synth" | sed -n 's/.*Passing: \([0-9]*\).*/\1/p')
            f=$(echo "$synth" | sed -n 's/.*Failing: \([0-9]*\).*Crashing: \([0-9]*\).*/\1 \2/p')
            passed=$((passed + p))
            failed=$((failed + ${f% *} + ${f#* }))
        elif [ "$status" = PASSED ]; then
            passed=$((passed + 1))
        elif [ -n "$synth" ] && [ "$status" = FAILED ]; then
            p=$(echo "$synth" | sed -n 's/.*Passing: \([0-9]*\).*/\1/p')
            t=$(echo "$synth" | sed -n 's/.*Tested: \([0-9]*\).*/\1/p')
            passed=$((passed + p))
            failed=$((failed + (t - p > 0 ? t - p : 1)))
        else
            failed=$((failed + 1))
        fi
    done < <(sed -E 's/ \(cached\) / /' "$log" | grep -aE '^//[^ ]+ +(PASSED|FAILED|TIMEOUT|NO STATUS|FLAKY|INCOMPLETE|REMOTE FAILURE|FAILED TO BUILD)' |
        sed -E 's/^(\/\/[^ ]+) +(PASSED|FAILED TO BUILD|FAILED|TIMEOUT|NO STATUS|FLAKY|INCOMPLETE|REMOTE FAILURE).*/\1 \2/' |
        sed -E 's/ (FAILED TO BUILD|NO STATUS|REMOTE FAILURE)$/ BROKEN/')
    # A build that broke before or around the tests still fails the run.
    if [ "$bazel_rc" -ne 0 ] && [ "$failed" -eq "$f0" ]; then
        failed=$((failed + 1))
    fi
    local label="${*:-default build}"
    echo "(${label}: $((passed - p0)) passed, $((failed - f0)) failed)"
}

run_suite "$@"
if [ "${CRAFT_TEST_ASAN:-0}" = 1 ]; then
    # The libFuzzer targets (tag "libfuzzer") compile their own clang ASan+UBSan binary whatever
    # the config, so the first run already ran them sanitized: the second skips them.
    run_suite --config=asan --test_tag_filters=-libfuzzer "$@"
fi
echo
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
