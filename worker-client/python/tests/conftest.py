"""Fixtures: the real orchestrator binary on a free port with a temporary
database, and helpers that poll with a deadline.

The binary is ``$ORCHESTRATOR_BIN``, else ``target/debug/orchestrator`` of
this checkout (``cargo build -p orchestrator``). Real-time bounds scale with
``TEST_PATIENCE`` (a factor, default 1), as in the Rust tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[3]
PATIENCE = float(os.environ.get("TEST_PATIENCE", "1") or 1)
SERVE_LINE = re.compile(r"orchestrator serving addr=(\S+)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def patience(seconds: float) -> float:
    """A real-time bound, scaled by TEST_PATIENCE."""
    return seconds * max(PATIENCE, 1.0)


def orchestrator_bin() -> Path:
    path = Path(os.environ.get("ORCHESTRATOR_BIN", ROOT / "target" / "debug" / "orchestrator"))
    if not os.access(path, os.X_OK):
        pytest.fail(f"orchestrator binary not found: {path} (cargo build -p orchestrator, or set ORCHESTRATOR_BIN)")
    return path


class Orchestrator:
    """The real orchestrator binary. ``start()`` binds port 0 the first
    time and the same port on a restart, with the same database."""

    def __init__(self, workdir: Path, streams: int = 10, extra: Optional[List[str]] = None) -> None:
        self.db = workdir / "orchestrator.db"
        self.streams = streams
        self.extra = extra or []
        self.proc: Optional[subprocess.Popen] = None
        self.addr: Optional[str] = None
        self.log: List[str] = []

    @property
    def url(self) -> str:
        assert self.addr is not None
        return f"http://{self.addr}"

    def start(self) -> str:
        listen = self.addr or "127.0.0.1:0"
        cmd = [
            str(orchestrator_bin()), "serve",
            "--listen", listen,
            "--database", str(self.db),
            "--http-listen", "off",
            "--heartbeat-interval", "200ms",
            "--session-timeout", f"{round(patience(3) * 1000)}ms",
            "--demo-streams", str(self.streams),
            *self.extra,
        ]  # fmt: skip
        env = dict(os.environ, RUST_LOG="info", NO_COLOR="1")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=env, text=True, errors="replace",
        )  # fmt: skip
        ready = threading.Event()
        found: List[str] = []

        def read(proc: subprocess.Popen) -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                line = ANSI.sub("", line.rstrip("\n"))
                self.log.append(line)
                m = SERVE_LINE.search(line)
                if m and not found:
                    found.append(m.group(1))
                    ready.set()
            ready.set()

        threading.Thread(target=read, args=(self.proc,), daemon=True).start()
        if not ready.wait(patience(20)) or not found:
            raise AssertionError(f"the orchestrator did not start:\n{self.tail()}")
        self.addr = found[0]
        return self.addr

    def kill(self) -> None:
        """SIGKILL: no goodbye to anyone."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=patience(10))

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=patience(10))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def admin(self, *args: str) -> Any:
        """An admin command of the real binary, its --json output parsed."""
        out = subprocess.run(
            [str(orchestrator_bin()), *args, "--addr", self.url, "--json"],
            capture_output=True, text=True, timeout=patience(20),
        )  # fmt: skip
        assert out.returncode == 0, f"orchestrator {' '.join(args)}: {out.stderr}"
        return json.loads(out.stdout)

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.log[-n:])


@pytest.fixture
def orchestrator(tmp_path: Path):
    o = Orchestrator(tmp_path)
    o.start()
    yield o
    o.stop()


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 10.0) -> None:
    """Polls ``check`` until it is true, failing after ``timeout`` seconds
    (scaled by TEST_PATIENCE)."""
    deadline = time.monotonic() + patience(timeout)
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def threads() -> Dict[str, str]:
    """This process's threads (Linux): thread id to name."""
    found = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            found[tid] = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
        except FileNotFoundError:
            pass  # ended meanwhile
    return found
