"""No thread of the client is left running after shutdown() or when the
interpreter exits (the shared runtime's ``rwc-tokio`` threads aside)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from resilient_worker_client import create_resilient_worker_client

from conftest import Orchestrator, eventually, patience, threads


def test_no_client_thread_is_left_after_shutdown(orchestrator: Orchestrator, tmp_path: Path):
    async def check():
        clients = [
            create_resilient_worker_client(orchestrator.url, f"w-threads-{i}", 2, state_path=str(tmp_path / f"{i}.db"))
            for i in range(3)
        ]
        before = set(threads())
        for c in clients:
            await c.start()
        during = threads()
        ours = {tid for tid, name in during.items() if tid not in before and name == "worker-state"}
        assert len(ours) == 3, during  # one state thread per client
        for c in clients:
            await c.shutdown()

        # A joined thread may still be listed for a moment while the kernel
        # finishes its exit: poll, with a deadline.
        def left() -> set[str]:
            after = threads()
            return {f"{name} ({tid})" for tid, name in after.items() if tid in ours or (tid not in before and name != "rwc-tokio")}

        async def none_left() -> bool:
            return not left()

        # No state thread, and nothing else new but the shared runtime's threads.
        with contextlib.suppress(AssertionError):
            await eventually(none_left, "the client threads to end", timeout=5)
        assert not left(), f"client threads left running: {left()}"

    asyncio.run(check())


# Run on one CPU, so that the runtime thread that completes a call is often
# preempted by the Python thread it wakes: a task that still held the client
# then would show up within a few thousand calls.
HOLDERS_SCRIPT = textwrap.dedent(
    """
    import asyncio, os, sys
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # before the runtime's threads start
    from resilient_worker_client import create_standalone_worker_client

    async def main():
        client = create_standalone_worker_client("w-holders", [1, 2], state_path=sys.argv[1])
        await client.start()
        late = 0
        for _ in range(int(sys.argv[2])):
            await client.record_stream_processing(1)
            if client._native._holders() != 1:
                late += 1
        await client.health_check()
        late += client._native._holders() != 1
        await client.shutdown()
        print("late", late, "holders", client._native._holders(), flush=True)

    asyncio.run(main())
    """
)


def test_a_call_lets_go_of_the_client_before_its_await_returns(tmp_path: Path):
    """So that dropping the last reference right after a call drops (and
    shuts down) the client then, with the "dropped" warning, and not later
    at interpreter exit. Once, in CI, a call's task still held the client
    when the script below (EXIT_SCRIPT) returned."""
    env = dict(os.environ, RESILIENT_WORKER_CLIENT_LOG="warn")
    out = subprocess.run(
        [sys.executable, "-c", HOLDERS_SCRIPT, str(tmp_path / "holders.db"), "3000"],
        capture_output=True, text=True, timeout=patience(60), env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "late 0 holders 1" in out.stdout, out.stdout + out.stderr


EXIT_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from resilient_worker_client import create_resilient_worker_client

    async def main():
        client = create_resilient_worker_client(sys.argv[1], "w-exit", 3, state_path=sys.argv[2])
        await client.start()
        while not any(client.can_process_stream(s) for s in range(1, 11)):
            await asyncio.sleep(0.05)
        for s in range(1, 11):
            if client.can_process_stream(s):
                await client.record_stream_processing(s)
        print("recorded", flush=True)
        # no shutdown(): the interpreter exits with the client running

    asyncio.run(main())
    """
)


# The same with the client in a module global: alive when the interpreter
# exits, shut down by the atexit hook.
GLOBAL_SCRIPT = EXIT_SCRIPT.replace("async def main():\n    client =", "client = None\nasync def main():\n    global client\n    client =")


@pytest.mark.parametrize(
    "script, message",
    [
        (EXIT_SCRIPT, "the client was dropped without shutdown()"),
        (GLOBAL_SCRIPT, "the interpreter is exiting without shutdown()"),
    ],
    ids=["dropped", "global"],
)
def test_interpreter_exit_without_shutdown_shuts_the_client_down(script, message, orchestrator: Orchestrator, tmp_path: Path):
    assert "client = None" in GLOBAL_SCRIPT
    state = tmp_path / "exit.db"
    env = dict(os.environ, RESILIENT_WORKER_CLIENT_LOG="info")
    out = subprocess.run(
        [sys.executable, "-c", script, orchestrator.url, str(state)],
        capture_output=True, text=True, timeout=patience(30), env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "recorded" in out.stdout
    assert message in out.stderr, out.stderr
    # Shut down, not crashed: deregistered at once (a crashed worker stays
    # live until its session times out), its records uploaded, the state
    # file closed (no write-ahead log left beside it).
    workers = {w["server_id"]: w for w in orchestrator.admin("workers")["workers"]}
    assert workers["w-exit"]["state"] != "live", workers
    assert not Path(f"{state}-wal").exists()


HUNG_SCRIPT = textwrap.dedent(
    """
    import asyncio, socket, sys
    from resilient_worker_client import create_resilient_worker_client

    hung = socket.socket(); hung.bind(("127.0.0.1", 0)); hung.listen(8)
    url = "http://127.0.0.1:%d" % hung.getsockname()[1]

    async def main():
        client = create_resilient_worker_client(url, "w-hung", 3, state_path=sys.argv[1], shutdown_timeout=1.0)
        task = asyncio.ensure_future(client.register())  # never answered
        await asyncio.sleep(0)  # the call is submitted
        print("exiting", flush=True)

    asyncio.run(main())
    """
)


def test_interpreter_exit_with_a_call_in_flight_is_prompt(tmp_path: Path):
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", HUNG_SCRIPT, str(tmp_path / "hung.db")],
        capture_output=True, text=True, timeout=patience(20),
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    assert "exiting" in out.stdout
    # The shutdown at exit is bounded by shutdown_timeout (1 s here), not
    # by the hung call's own timeouts (30 s).
    assert elapsed < patience(6), f"the interpreter took {elapsed:.1f}s to exit"
