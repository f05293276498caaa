#!/usr/bin/env bash
# Cross-language client checks: drive the real orchestrator binary from Python
# (grpcio) and Node (@grpc/grpc-js) using only proto/ as the contract, first
# in plaintext, then over TLS with bearer tokens and client certificates.
#
#   bash tests/clients/run.sh [path-to-orchestrator-binary]
#
# Default binary: $ORCHESTRATOR_BIN, else target/debug/orchestrator (build it
# first with `cargo build -p orchestrator`; this script never runs cargo).
# Needs python3 (3.10+, with venv and pip), node 20+ and npm, and access to
# PyPI and the npm registry on the first run. The Python venv lives in
# target/clients-venv, the Node packages in tests/clients/node/node_modules.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

step() { printf '\n==> %s\n' "$*"; }

logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT

# run_check NAME CMD...: runs a check, keeps its output, returns its exit code.
run_check() {
  local name="$1"
  shift
  local rc=0
  "$@" 2>&1 | tee "$logs/$name.log" || rc=$?
  return "$rc"
}

# counts NAME RC: "passed failed" from the check's closing line (a check that
# failed without one counts as one failure).
counts() {
  local line
  line="$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$logs/$1.log" | tail -n 1 || true)"
  if [[ -n "$line" ]]; then
    awk '{print $1, $3}' <<<"$line"
  elif [[ "$2" -eq 0 ]]; then
    echo "0 0"
  else
    echo "0 1"
  fi
}

bin="${1:-${ORCHESTRATOR_BIN:-$root/target/debug/orchestrator}}"
case "$bin" in /*) ;; *) bin="$root/$bin" ;; esac
if [[ ! -x "$bin" ]]; then
  echo "error: orchestrator binary not found or not executable: $bin" >&2
  echo "       build it with: cargo build -p orchestrator" >&2
  exit 2
fi
export ORCHESTRATOR_BIN="$bin"

# Test certificates for the second run of each check, against a TLS + token
# orchestrator (test-certs is built by `cargo build -p fixtures --bin
# test-certs`; without it those checks are skipped, or fail with
# CLIENT_CHECK_STRICT=1).
certs_bin="${TEST_CERTS_BIN:-$(dirname "$bin")/test-certs}"
if [[ -x "$certs_bin" ]]; then
  "$certs_bin" "$logs/certs" --worker py-mtls --worker node-mtls
  export CLIENT_CHECK_CERTS="$logs/certs"
elif [[ "${CLIENT_CHECK_STRICT:-}" == "1" ]]; then
  echo "error: $certs_bin not found: build it with cargo build -p fixtures --bin test-certs" >&2
  exit 2
else
  echo "note: $certs_bin not found: the TLS + token checks are skipped (cargo build -p fixtures --bin test-certs)" >&2
fi

python="${PYTHON:-python3}"
venv="$root/target/clients-venv"

step "python: venv $venv"
if [[ ! -x "$venv/bin/python" ]]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" --version

step "python: pip install -r tests/clients/python/requirements.txt"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  -r "$here/python/requirements.txt"

step "python: client check against $bin"
py_rc=0
run_check python "$venv/bin/python" "$here/python/client_check.py" "$bin" || py_rc=$?

step "node: install packages (tests/clients/node)"
node --version
(
  cd "$here/node"
  # --ignore-scripts: the only install script (protobufjs' postinstall) just
  # prints a version warning; npm 11 asks for approval of it otherwise.
  if [[ -f package-lock.json ]]; then
    npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
  else
    npm install --ignore-scripts --no-audit --no-fund --loglevel=error
  fi
)

step "node: client check against $bin"
node_rc=0
run_check node node "$here/node/client_check.mjs" "$bin" || node_rc=$?

step "summary"
echo "python client check: $([[ $py_rc -eq 0 ]] && echo passed || echo "FAILED (exit $py_rc)")"
echo "node client check:   $([[ $node_rc -eq 0 ]] && echo passed || echo "FAILED (exit $node_rc)")"
read -r py_pass py_fail < <(counts python "$py_rc")
read -r node_pass node_fail < <(counts node "$node_rc")
echo "total: $((py_pass + node_pass)) passed, $((py_fail + node_fail)) failed"
if [[ $py_rc -ne 0 || $node_rc -ne 0 ]]; then
  exit 1
fi
