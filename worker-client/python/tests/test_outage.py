"""An orchestrator outage: local mode with the records kept, then every
record uploaded exactly once when it is back."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from resilient_worker_client import create_resilient_worker_client

from conftest import Orchestrator, eventually, patience


def test_kill_the_orchestrator_local_mode_keeps_records_restart_uploads_each_once(tmp_path: Path):
    orchestrator = Orchestrator(tmp_path)
    orchestrator.start()
    state = tmp_path / "worker.db"
    client = create_resilient_worker_client(
        orchestrator.url, "w-outage", 5,
        circuit_failure_threshold=2, circuit_recovery_timeout=0.5,
        retry_max_attempts=2, retry_base_delay=0.05,
        state_path=str(state), local_mode_after=patience(1.0), circuit_timeout=patience(1.0), connect_timeout=patience(0.5),
        reconnect_base_delay=0.05, reconnect_max_delay=0.3,
    )  # fmt: skip

    async def health():
        return await client.health_check()

    async def scenario():
        await client.start()

        async def five():
            return len([s for s in range(1, 11) if client.can_process_stream(s)]) == 5

        await eventually(five, "five leases")
        streams = [s for s in range(1, 11) if client.can_process_stream(s)]
        for s in streams * 2:
            await client.record_stream_processing(s)

        async def uploaded(n):
            h = await health()
            return h["metrics"]["records_unsynced"] == 0 and h["metrics"]["records_uploaded"] == n

        await eventually(lambda: uploaded(10), "the first ten records uploaded")

        orchestrator.kill()

        async def local():
            h = await health()
            return h["mode"] == "local" and h["local_mode_active"] and not h["orchestrator_available"]

        await eventually(local, "local mode after the orchestrator died")
        # The worker keeps its streams and its records, durable in the state file.
        assert all(client.can_process_stream(s) for s in streams)
        assert await client.send_heartbeat() is False
        for s in streams * 4:
            await client.record_stream_processing(s)
        h = await health()
        assert h["metrics"]["records_unsynced"] == 20, h
        assert h["metrics"]["local_mode_activations"] == 1
        assert h["local_mode_reason"]
        status = await client.get_detailed_status()
        assert status["local_state"]["unsynced_records"] == 20

        orchestrator.start()  # same port, same database

        async def normal():
            h = await health()
            return h["mode"] == "normal" and h["orchestrator_available"]

        await eventually(normal, "normal mode after the orchestrator came back", timeout=20)
        await eventually(lambda: uploaded(30), "the outage's records uploaded", timeout=20)
        assert all(client.can_process_stream(s) for s in streams), "the leases were kept"
        await client.shutdown()

    try:
        asyncio.run(scenario())
    finally:
        orchestrator.stop()

    db = sqlite3.connect(orchestrator.db)
    rows = db.execute(
        "SELECT sequence, stream_id, local_mode FROM processing_records WHERE server_id = ? ORDER BY sequence",
        ("w-outage",),
    ).fetchall()
    db.close()
    # Each record once (the orchestrator keys them by sequence, and the
    # client counted exactly 30 acknowledged), none lost (no gap), the
    # outage's ones marked as made in local mode.
    assert len(rows) == 30, f"{len(rows)} records stored, 30 made"
    sequences = [r[0] for r in rows]
    assert sequences == list(range(sequences[0], sequences[0] + 30)), f"a gap: {sequences}"
    assert sum(1 for r in rows if r[2]) == 20, "the outage's records are marked local_mode"
    assert all(r[2] for r in rows[10:]) and not any(r[2] for r in rows[:10])
