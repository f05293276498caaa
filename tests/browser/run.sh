#!/usr/bin/env bash
# Browser test of the orchestrator's HTTP dashboard (see README.md here).
#
#   bash tests/browser/run.sh [ORCHESTRATOR_BIN [WORKER_BIN]]
#
# Defaults: $ORCHESTRATOR_BIN, else target/debug/orchestrator; $WORKER_BIN,
# else target/debug/examples/worker. Build them first:
#   cargo build -p orchestrator && cargo build -p worker-client --example worker
# This script never runs cargo and never downloads a browser: it drives the
# machine's Chromium ($CHROMIUM, default /usr/bin/chromium). Without Chromium it
# prints SKIP and exits 0, except under CI=true, where that is an error.
# PATIENCE=N multiplies every timeout of the test (default 1).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

abs() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$root/$1" ;; esac; }
orchestrator_bin="$(abs "${1:-${ORCHESTRATOR_BIN:-target/debug/orchestrator}}")"
worker_bin="$(abs "${2:-${WORKER_BIN:-target/debug/examples/worker}}")"
chromium="${CHROMIUM:-/usr/bin/chromium}"

for bin in "$orchestrator_bin" "$worker_bin"; do
  if [[ ! -x "$bin" ]]; then
    echo "error: not found or not executable: $bin" >&2
    echo "       build with: cargo build -p orchestrator && cargo build -p worker-client --example worker" >&2
    exit 2
  fi
done

if [[ ! -x "$chromium" ]]; then
  if [[ "${CI:-}" == "true" ]]; then
    echo "error: Chromium not found at $chromium; the dashboard browser test needs it (apt-get install chromium, or set CHROMIUM)" >&2
    exit 2
  fi
  echo "SKIP: dashboard browser test: Chromium not found at $chromium (apt-get install chromium, or set CHROMIUM)"
  exit 0
fi

echo "==> node packages (tests/browser)"
node --version
(
  cd "$here"
  # --ignore-scripts: playwright-core has no install script that we need, and
  # no browser is ever downloaded: the test uses the system Chromium.
  if [[ -f package-lock.json ]]; then
    npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
  else
    npm install --ignore-scripts --no-audit --no-fund --loglevel=error
  fi
)

echo "==> dashboard browser test"
export CHROMIUM="$chromium"
# The project-wide patience factor, unless PATIENCE is set.
export PATIENCE="${PATIENCE:-${TEST_PATIENCE:-1}}"
exec node "$here/dashboard.test.mjs" "$orchestrator_bin" "$worker_bin"
