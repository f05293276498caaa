#!/usr/bin/env python3
"""`record_stream_processing` calls/s from Python against the same loop in
Rust, side by side in one run: one orchestrator (the real binary), runs
alternating Python / Rust, each with a fresh worker and state file; prints
every run, the medians and the ratio.

    cargo build --release -p orchestrator -p worker-client --example record_rate
    maturin build --release -m worker-client/python/Cargo.toml   # then pip install the wheel
    python worker-client/python/bench/record_rate.py --runs 5 --concurrency 1 8 64

Each call returns once its record is durable in the state file (the
client's durability rule), so concurrent calls share group commits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "worker-client" / "python" / "tests"))

from conftest import Orchestrator  # noqa: E402  (the test suite's orchestrator runner)

from resilient_worker_client import create_resilient_worker_client  # noqa: E402


async def python_rate(url: str, server_id: str, streams: int, concurrency: int, seconds: float, state: Path) -> float:
    client = create_resilient_worker_client(url, server_id, streams, state_path=str(state))
    await client.start()
    async for leases in client.leases():
        if len(leases) >= streams:
            held = leases.stream_ids
            break
    start = time.perf_counter()
    counts = [0] * concurrency

    async def recorder(i: int) -> None:
        n = i
        while time.perf_counter() - start < seconds:
            await client.record_stream_processing(held[n % len(held)])
            counts[i] += 1
            n += 1

    await asyncio.gather(*(recorder(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - start
    await client.shutdown()
    return sum(counts) / elapsed


def rust_rate(binary: Path, url: str, server_id: str, streams: int, concurrency: int, seconds: float, state: Path) -> float:
    out = subprocess.run(
        [str(binary), "--url", url, "--server-id", server_id, "--streams", str(streams),
         "--concurrency", str(concurrency), "--seconds", str(seconds), "--state-path", str(state)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(json.loads(out.stdout.strip().splitlines()[-1])["calls_per_second"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--rust-bin", type=Path, default=ROOT / "target" / "release" / "examples" / "record_rate")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        orchestrator = Orchestrator(Path(tmp), streams=args.streams)
        orchestrator.start()
        try:
            print(f"{'concurrency':>11} {'run':>3} {'python/s':>10} {'rust/s':>10}")
            summary = []
            for concurrency in args.concurrency:
                py, rs = [], []
                for run in range(args.runs):
                    state = Path(tmp) / f"py-{concurrency}-{run}.db"
                    py.append(asyncio.run(python_rate(orchestrator.url, f"rate-py-{concurrency}-{run}", args.streams,
                                                      concurrency, args.seconds, state)))  # fmt: skip
                    state = Path(tmp) / f"rs-{concurrency}-{run}.db"
                    rs.append(rust_rate(args.rust_bin, orchestrator.url, f"rate-rs-{concurrency}-{run}", args.streams,
                                        concurrency, args.seconds, state))  # fmt: skip
                    print(f"{concurrency:>11} {run:>3} {py[-1]:>10.0f} {rs[-1]:>10.0f}", flush=True)
                summary.append((concurrency, statistics.median(py), statistics.median(rs)))
            print(f"\n{'concurrency':>11} {'python median':>14} {'rust median':>12} {'python/rust':>12}")
            for concurrency, py_m, rs_m in summary:
                print(f"{concurrency:>11} {py_m:>14.0f} {rs_m:>12.0f} {py_m / rs_m:>12.2f}")
        finally:
            orchestrator.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
