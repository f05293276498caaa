#!/usr/bin/env bash
# The Python package's checks, as CI runs them: builds the wheel with
# maturin, installs it into a fresh virtualenv, type-checks the example and
# a typed use of the API with mypy (so the stubs are right), and runs the
# pytest suite against the real orchestrator binary.
#
#   bash worker-client/python/run-tests.sh [path-to-orchestrator-binary]
#
# Default binary: $ORCHESTRATOR_BIN, else target/debug/orchestrator (build
# it first with `cargo build -p orchestrator`). Needs python3 (3.9+) with
# venv and pip, and PyPI on the first run (maturin, pytest, mypy). maturin
# lives in target/py-build (kept between runs); the test virtualenv
# target/py-test is made afresh every run. Extra arguments after the binary
# go to pytest (e.g. `-k outage -x`). The TLS test needs `test-certs` beside
# the binary (`cargo build -p fixtures --bin test-certs`); without it the
# test is skipped, or fails with CLIENT_CHECK_STRICT=1 (as in CI).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

step() { printf '\n==> %s\n' "$*"; }

bin="${1:-${ORCHESTRATOR_BIN:-$root/target/debug/orchestrator}}"
shift || true
case "$bin" in /*) ;; *) bin="$root/$bin" ;; esac
if [[ ! -x "$bin" ]]; then
  echo "error: orchestrator binary not found or not executable: $bin" >&2
  echo "       build it with: cargo build -p orchestrator" >&2
  exit 2
fi

python="${PYTHON:-python3}"
tools="$root/target/py-build"
maturin_version="1.16.0"
if [[ ! -x "$tools/bin/maturin" ]] || [[ "$("$tools/bin/maturin" --version)" != "maturin $maturin_version" ]]; then
  step "maturin $maturin_version into $tools"
  [[ -x "$tools/bin/pip" ]] || "$python" -m venv "$tools"
  "$tools/bin/pip" install -q "maturin==$maturin_version"
fi

step "wheel (maturin build; the dev profile, as the Rust tests)"
wheels="$root/target/wheels"
rm -f "$wheels"/resilient_worker_client-*.whl
"$tools/bin/maturin" build --locked -m worker-client/python/Cargo.toml --out "$wheels"
wheel="$(ls "$wheels"/resilient_worker_client-*.whl)"

step "a fresh virtualenv with the wheel installed"
venv="$root/target/py-test"
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install -q "$wheel" "pytest==9.2.0" "mypy==2.4.1"
# The package is imported from the venv, never from the source tree.
(cd /tmp && "$venv/bin/python" -c 'import resilient_worker_client as r, sys; print("installed", r.__version__, "at", r.__file__)')

step "mypy: the stubs against a typed use of the API"
"$venv/bin/mypy" --strict --no-error-summary "$here/tests/typed_use.py"
"$venv/bin/mypy" --no-error-summary "$here/examples/worker.py"

step "pytest against the real orchestrator ($bin)"
ORCHESTRATOR_BIN="$bin" "$venv/bin/python" -m pytest -q -p no:cacheprovider "$here/tests" "$@"
