"""The example Python worker against the real orchestrator: it processes
streams, heartbeats, and shuts down cleanly on SIGTERM."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import Orchestrator, patience

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "worker.py"


def test_the_example_worker_processes_and_stops_cleanly_on_sigterm(orchestrator: Orchestrator, tmp_path: Path):
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--orchestrator-url", orchestrator.url, "--server-id", "py-example",
         "--max-streams", "4", "--state-path", str(tmp_path / "w.db"), "--heartbeat-interval", "0.2",
         "--chunk-seconds", "0.05"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    try:
        deadline = time.monotonic() + patience(20)
        while sum("processing stream" in line for line in lines) < 4 or not any("heartbeat ok" in l for l in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=patience(15)) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines)
    assert "shut down cleanly" in out, out
    # Each started stream records the chunk in progress before it stops.
    workers = {w["server_id"]: w for w in orchestrator.admin("workers")["workers"]}
    assert workers["py-example"]["state"] != "live" and workers["py-example"]["assigned_streams"] == 0
    db = sqlite3.connect(f"file:{orchestrator.db}?mode=ro", uri=True)
    (stored,) = db.execute("SELECT COUNT(*) FROM processing_records WHERE server_id = 'py-example'").fetchone()
    db.close()
    assert stored > 0, "the example's records reached the orchestrator"
