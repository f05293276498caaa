#!/usr/bin/env bash
# The README check: runs the README's "Quick start" and "Watch two workers
# balance" commands from the repo root, exactly as written (each command is
# looked up verbatim in README.md before it runs), and asserts what the README
# promises of them. Run by .ci/run; run it by hand with
#
#   bash tests/readme.sh
#
# Only the files move: the orchestrator's database and the workers' state
# files go to a temp dir through their documented environment variables
# (ORCHESTRATOR_DATABASE, WORKER_STATE). Everything else is the README's
# defaults, the port 127.0.0.1:50051 included, which must be free.
#
# Real-time bounds are the README's own, times TEST_PATIENCE (default 1) for
# loaded machines. Checks poll with a deadline; none sleeps a fixed time.
# When the README changes, this script changes with it.
set -euo pipefail
set -m # job control: background jobs do not start with SIGINT ignored, so `kill -INT` acts as a ctrl-c would
cd "$(dirname "$0")/.."

PATIENCE="${TEST_PATIENCE:-1}"
TMP="$(mktemp -d)"
touch "$TMP/started" # files newer than this in the checkout would be strays
export ORCHESTRATOR_DATABASE="$TMP/orchestrator.db"
export RUST_LOG=info
export CARGO_TERM_COLOR=never
ADMIN=target/release/orchestrator # for polling only; the README's commands run as written
declare -A PIDS=()

log() { printf '[readme %s] %s\n' "$(date +%T)" "$*"; }

dump_logs() {
    for f in "$TMP"/*.log "$TMP"/*.out; do
        [ -s "$f" ] || continue
        printf '\n--- %s (last 40 lines) ---\n' "$(basename "$f")"
        tail -n 40 "$f"
    done
}

fail() {
    printf '\nREADME CHECK FAILED: %s\n' "$*" >&2
    dump_logs >&2
    exit 1
}

cleanup() {
    local code=$?
    for name in "${!PIDS[@]}"; do
        kill -9 "${PIDS[$name]}" 2>/dev/null || true
    done
    rm -rf "$TMP"
    exit "$code"
}
trap cleanup EXIT

# `readme CMD`: CMD must be a line of README.md, character for character.
in_readme() {
    grep -qxF -- "$1" README.md || fail "this command is not in README.md as written: $1"
}

# Runs a README command to completion; its stdout is in $OUT. Fails if it fails.
run() {
    in_readme "$1"
    log "\$ $1"
    OUT="$(bash -c "$1" 2>"$TMP/last-command.log")" || fail "exit $? from: $1 ($(tail -n 5 "$TMP/last-command.log"))"
    printf '%s\n' "$OUT" | sed 's/^/    /'
}

# Starts a README command in the background as NAME (stderr in NAME.log,
# stdout in NAME.out); extra environment assignments may come first.
start() {
    local name="$1" cmd="$2"
    shift 2
    in_readme "$cmd"
    log "\$ $cmd &   ($name${*:+, with $*})"
    env "$@" bash -c "exec $cmd" >"$TMP/$name.out" 2>"$TMP/$name.log" &
    PIDS[$name]=$!
}

# `eventually SECONDS WHAT CMD...`: polls CMD until it succeeds, at most
# SECONDS x TEST_PATIENCE. Prints how long it took.
eventually() {
    local limit="$1" what="$2"
    shift 2
    local start_ns end_ns deadline
    start_ns=$(date +%s%N)
    deadline=$((start_ns + $(awk "BEGIN { printf \"%.0f\", $limit * $PATIENCE * 1e9 }")))
    until "$@"; do
        [ "$(date +%s%N)" -lt "$deadline" ] || fail "$what: not within ${limit} s (x patience $PATIENCE)"
        sleep 0.2
    done
    end_ns=$(date +%s%N)
    log "ok: $what ($(awk "BEGIN { printf \"%.1f\", ($end_ns - $start_ns) / 1e9 }") s)"
}

logged() { grep -qF -- "$2" "$TMP/$1.log"; }
printed() { grep -qF -- "$2" "$TMP/$1.out"; }
exited() { ! kill -0 "${PIDS[$1]}" 2>/dev/null; }

# Exit code of a background job that has exited (or is about to).
exit_code() {
    local code=0
    wait "${PIDS[$1]}" || code=$?
    unset "PIDS[$1]"
    echo "$code"
}

# `processing WORKER N`: by its own log, the worker processes exactly N
# streams (started minus stopped).
processing() {
    local started stopped
    started=$(grep -c "started processing" "$TMP/$1.log") || true
    stopped=$(grep -c "stopped processing" "$TMP/$1.log") || true
    [ $((started - stopped)) = "$2" ]
}

# `holds WORKER N`: the orchestrator lists exactly N leases for the worker.
holds() {
    local n
    n=$("$ADMIN" --json assignments --server-id "$1" 2>/dev/null | grep -c '"stream_id"') || true
    [ "$n" = "$2" ]
}

# The current leases, one "server_id stream_id lease_epoch" line each, sorted.
lease_table() {
    "$ADMIN" --json assignments | python3 -c '
import json, sys
for a in json.load(sys.stdin)["assignments"]:
    print(a["server_id"], a["lease"]["stream_id"], a["lease"]["lease_epoch"], a["state"])' | sort
}

port_free() { ! (exec 3<>/dev/tcp/127.0.0.1/"${1:-50051}") 2>/dev/null; }
serving() { logged orchestrator "orchestrator serving"; }

port_free || fail "127.0.0.1:50051 is in use: stop whatever listens there (an orchestrator left running?)"
port_free 50052 || fail "127.0.0.1:50052 (the dashboard's default port) is in use: stop whatever listens there"

log "building what the README runs (the commands below then start at once)"
cargo build --release -p orchestrator --bin orchestrator
cargo build -p worker-client --example worker

log "## Quick start"
start orchestrator "cargo run --release -p orchestrator -- serve"
eventually 30 "the orchestrator serves" serving
run "cargo run --release -p orchestrator -- streams add 1-100"
[[ "$OUT" == "added 100 stream(s)"* ]] || fail "streams add 1-100 did not add 100 streams"
run "cargo run --release -p orchestrator -- status"
grep -Eq '^streams total: +100$' <<<"$OUT" || fail "status does not show the 100 streams added"
grep -Eq '^streams unassigned: +100$' <<<"$OUT" || fail "status does not show 100 unassigned streams"
run "cargo run --release -p orchestrator -- streams list"
[ "$(grep -cE '^ *[0-9]+ ' <<<"$OUT")" = 100 ] || fail "streams list does not list 100 streams"
run "cargo run --release -p orchestrator -- workers"
grep -q "no workers" <<<"$OUT" || fail "workers does not say there are none yet"

log "## Watch two workers balance"
run "cargo run --release -p orchestrator -- streams remove 11-100"
[[ "$OUT" == "removed 90 stream(s)"* ]] || fail "streams remove 11-100 did not remove 90 streams"
start worker-1 "cargo run -p worker-client --example worker -- --server-id worker-1" WORKER_STATE="$TMP/worker-1.db"
eventually 30 "worker-1 started" logged worker-1 "worker started"
start worker-2 "cargo run -p worker-client --example worker -- --server-id worker-2" WORKER_STATE="$TMP/worker-2.db"
eventually 30 "worker-2 started" logged worker-2 "worker started"
# README: "Within two heartbeats (about 10 s) each holds 5 streams".
both_hold_5() { processing worker-1 5 && processing worker-2 5 && holds worker-1 5 && holds worker-2 5; }
eventually 12 "each worker holds 5 streams" both_hold_5
run "cargo run --release -p orchestrator -- workers"
grep -Eq "^worker-1 +live +[0-9]+ +5/10 " <<<"$OUT" || fail "workers does not show worker-1 live with 5 streams"
grep -Eq "^worker-2 +live +[0-9]+ +5/10 " <<<"$OUT" || fail "workers does not show worker-2 live with 5 streams"
run "cargo run --release -p orchestrator -- assignments"
[ "$(grep -c ' worker-1 ' <<<"$OUT")" = 5 ] || fail "assignments does not list worker-1's 5 streams"
[ "$(grep -c ' worker-2 ' <<<"$OUT")" = 5 ] || fail "assignments does not list worker-2's 5 streams"

log "kill -USR1 makes a worker print its health JSON"
kill -USR1 "${PIDS[worker-1]}"
health_printed() { printed worker-1 '"server_id":"worker-1"'; }
eventually 5 "worker-1 printed its health" health_printed
grep -F '"server_id":"worker-1"' "$TMP/worker-1.out" | tail -n 1 | python3 -c '
import json, sys
h = json.loads(sys.stdin.read())
assert h["orchestrator_available"] is True and h["local_mode_active"] is False, h
assert h["assigned_streams"] == 5, h' || fail "worker-1's health JSON is not what the README says"
[ -s "$TMP/worker-1.db" ] || fail "worker-1's state is not in WORKER_STATE"

log "the dashboard's metrics show the ten leases"
ten_active() { curl -s http://127.0.0.1:50052/metrics | grep -qxF 'orchestrator_leases{state="active"} 10'; }
eventually 5 "the metrics show 10 active leases" ten_active
run "curl -s http://127.0.0.1:50052/metrics | grep '^orchestrator_leases'"
grep -qxF 'orchestrator_leases{state="active"} 10' <<<"$OUT" || fail "the metrics do not show 10 active leases"
grep -qxF 'orchestrator_leases{state="orphaned"} 0' <<<"$OUT" || fail "the metrics do not show 0 orphaned leases"
curl -sf http://127.0.0.1:50052/ | grep -q "api/v1/status" || fail "the dashboard page is not at http://127.0.0.1:50052/"

log "stop the orchestrator: the workers go on in local mode"
before="$(lease_table)" || fail "cannot read the assignments before the restart"
kill -TERM "${PIDS[orchestrator]}"
eventually 10 "the orchestrator exits on SIGTERM" exited orchestrator
[ "$(exit_code orchestrator)" = 0 ] || fail "the orchestrator did not exit 0 on SIGTERM"
both_local() { logged worker-1 "entering local mode" && logged worker-2 "entering local mode"; }
# README: "local_mode_active: true after 30 s, or as soon as their circuit breaker opens"
eventually 35 "both workers are in local mode" both_local
both_say_when() { logged worker-1 "next probe in" && logged worker-2 "next probe in"; }
eventually 5 "both workers log when they probe next" both_say_when

log "start it again: the workers re-register and keep their streams"
mv "$TMP/orchestrator.log" "$TMP/orchestrator-first-run.log"
start orchestrator "cargo run --release -p orchestrator -- serve"
eventually 30 "the orchestrator serves again" serving
# README: "within about a minute (the circuit breaker's recovery timeout)"
both_back() { logged worker-1 "back to normal mode" && logged worker-2 "back to normal mode"; }
eventually 80 "both workers are back in normal mode" both_back
after="$(lease_table)" || fail "cannot read the assignments after the restart"
[ "$before" = "$after" ] || fail "the restart moved streams: before
$before
after
$after"
log "ok: no stream moved, no lease epoch changed across the restart"

log "stop a worker with ctrl-c: its streams move to the other one"
kill -INT "${PIDS[worker-1]}"
eventually 10 "worker-1 exits on ctrl-c" exited worker-1
[ "$(exit_code worker-1)" = 0 ] || fail "worker-1 did not exit 0 on ctrl-c"
logged worker-1 "deregistered" || fail "worker-1 did not deregister"
# README: "its streams move to the other one with its next heartbeat" (5 s)
worker_2_holds_10() { processing worker-2 10 && holds worker-2 10; }
eventually 7 "worker-2 holds all 10 streams" worker_2_holds_10

log "SIGTERM: the worker and then the orchestrator exit 0"
kill -TERM "${PIDS[worker-2]}"
eventually 10 "worker-2 exits on SIGTERM" exited worker-2
[ "$(exit_code worker-2)" = 0 ] || fail "worker-2 did not exit 0 on SIGTERM"
kill -TERM "${PIDS[orchestrator]}"
eventually 10 "the orchestrator exits on SIGTERM" exited orchestrator
[ "$(exit_code orchestrator)" = 0 ] || fail "the orchestrator did not exit 0 on SIGTERM"
logged orchestrator "stopped cleanly" || fail "the orchestrator did not log a clean stop"

log "the resilience example"
run "cargo run -p resilience --example outage"

# Files the README's commands would have put in the repository root: they
# belong in the temp dir (older ones, from a reader's own walkthrough, are
# not this run's).
stray="$(find . -maxdepth 1 -name '*.db*' -newer "$TMP/started" | tr '\n' ' ')"
[ -z "$stray" ] || fail "files landed in the checkout instead of the temp dir: $stray"
log "README check passed"
