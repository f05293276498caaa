#!/usr/bin/env python3
"""An example Python worker, shaped like the seed's integration: its own
heartbeat loop with a health check, stream processing that records each
chunk, and a graceful shutdown on SIGTERM or ctrl-c.

    python worker-client/python/examples/worker.py \\
        --orchestrator-url http://127.0.0.1:50051 --server-id py-worker-1 --max-streams 5

Every setting also comes from the environment: ORCHESTRATOR_URL,
SERVER_ID, MAX_STREAMS, WORKER_STATE_PATH, HEARTBEAT_INTERVAL.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from typing import Dict

from resilient_worker_client import StreamNotLeasedError, create_resilient_worker_client

log = logging.getLogger("example-worker")


def parse_args() -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--orchestrator-url", default=env("ORCHESTRATOR_URL", "http://127.0.0.1:50051"),
                   help="orchestrator endpoint(s), comma-separated (env ORCHESTRATOR_URL)")  # fmt: skip
    p.add_argument("--server-id", default=env("SERVER_ID", "py-worker-1"), help="this worker's id (env SERVER_ID)")
    p.add_argument("--max-streams", type=int, default=int(env("MAX_STREAMS", "5")), help="streams at once (env MAX_STREAMS)")
    p.add_argument("--state-path", default=env("WORKER_STATE_PATH"),
                   help="the state file (env WORKER_STATE_PATH; default ./worker-state-<server-id>.db)")  # fmt: skip
    p.add_argument("--heartbeat-interval", type=float, default=float(env("HEARTBEAT_INTERVAL", "5")),
                   help="seconds between heartbeats (env HEARTBEAT_INTERVAL)")  # fmt: skip
    p.add_argument("--chunk-seconds", type=float, default=0.5, help="time to process one chunk of a stream")
    return p.parse_args()


async def heartbeat_loop(client, interval: float, stop: asyncio.Event) -> None:
    """The seed's heartbeat loop: local mode is handled by the client."""
    while not stop.is_set():
        success = await client.send_heartbeat()
        health_status = await client.health_check()
        if success:
            log.info("heartbeat ok: %d streams", health_status["assigned_streams"])
        else:
            log.warning(
                "orchestrator unavailable (mode %s, %s); processing goes on locally",
                health_status["mode"], health_status["local_mode_reason"],
            )  # fmt: skip
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except asyncio.TimeoutError:
            pass


async def process_stream(client, stream_id: int, chunk_seconds: float, stop: asyncio.Event) -> None:
    """Processes one stream chunk by chunk while it is ours."""
    log.info("processing stream %d", stream_id)
    while not stop.is_set() and client.can_process_stream(stream_id):
        await asyncio.sleep(chunk_seconds)  # the real work goes here
        try:
            await client.record_stream_processing(stream_id)
        except StreamNotLeasedError:
            break  # revoked meanwhile: stop at once
    log.info("stopped stream %d", stream_id)


async def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = {}
    if args.state_path:
        settings["state_path"] = args.state_path
    client = create_resilient_worker_client(
        orchestrator_url=args.orchestrator_url,
        server_id=args.server_id,
        max_streams=args.max_streams,
        circuit_failure_threshold=5,
        circuit_recovery_timeout=60,
        retry_max_attempts=3,
        retry_base_delay=1.0,
        **settings,
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    if not await client.register():
        log.warning("orchestrator unreachable at start; working locally with the streams held")
    await client.request_streams(args.max_streams)
    heartbeats = asyncio.ensure_future(heartbeat_loop(client, args.heartbeat_interval, stop))
    workers: Dict[int, asyncio.Future] = {}

    async def follow_leases() -> None:
        # The lease set as it changes (grants and revocations arrive with
        # heartbeats): start what is new; process_stream stops what is gone.
        async for leases in client.leases():
            for stream_id in leases.stream_ids:
                if stream_id not in workers or workers[stream_id].done():
                    workers[stream_id] = asyncio.ensure_future(
                        process_stream(client, stream_id, args.chunk_seconds, stop)
                    )

    following = asyncio.ensure_future(follow_leases())
    await stop.wait()
    following.cancel()
    log.info("stopping: finishing the current chunks, then shutting down")
    await asyncio.gather(heartbeats, *workers.values(), return_exceptions=True)
    await client.shutdown()  # uploads the records, releases every stream
    log.info("shut down cleanly")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
