#!/usr/bin/env bash
# The deterministic simulation must catch each bug planted on purpose
# (features `planted-bug-*` of the e2e package; docs/SIMULATION.md). For each
# one, runs the seed sweep with the bug compiled in and expects it to fail;
# prints the seeds that caught it. Exit 1 if any bug went unnoticed.
#
#   bash tests/planted.sh                 # 40 seeds per bug
#   PLANTED_SEEDS=200 bash tests/planted.sh
set -euo pipefail
cd "$(dirname "$0")/.."

seeds="${PLANTED_SEEDS:-40}"
missed=0
# Each bug and the violation that must report it (in the first failing
# seed's report).
declare -A expect=(
    [planted-bug-reassign-before-release]='reassigned before release|processed by two workers at once'
    [planted-bug-no-fencing]='fencing broken|under one epoch|processed under epoch'
    [planted-bug-watermark]='records made but not stored'
)
for bug in planted-bug-reassign-before-release planted-bug-no-fencing planted-bug-watermark; do
    log="$(mktemp)"
    if SIM_SEEDS="$seeds" cargo test -q --locked -p e2e --test simulation --features "$bug" \
        every_seed_keeps_every_invariant -- --nocapture >"$log" 2>&1; then
        echo "MISSED: $bug passed $seeds seeds; the simulation did not catch it"
        tail -20 "$log"
        missed=1
    elif caught="$(grep -m1 -E '^seeds \[' "$log")" && grep -qE "${expect[$bug]}" "$log"; then
        first="$(grep -m1 -E "VIOLATION.*(${expect[$bug]})" "$log" | sed 's/^ *//')"
        echo "caught: $bug: $(grep -m1 -E 'seeds from' "$log")"
        echo "    ${caught%% failed*} failed"
        echo "    first violation: $first"
    else
        echo "ERROR: $bug: the run failed without the expected violation (${expect[$bug]}): a build error, or caught for another reason"
        tail -30 "$log"
        missed=1
    fi
    rm -f "$log"
done
exit "$missed"
