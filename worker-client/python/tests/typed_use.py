"""A typed use of the package's API, checked by ``mypy --strict`` in CI (so
the stubs and annotations are right); not a test module pytest collects."""

from __future__ import annotations

import asyncio
from typing import Any, Dict, List

from resilient_worker_client import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerOpenError,
    ConfigurationError,
    LeaseSet,
    ResilientWorkerClient,
    RetryConfig,
    RetryHandler,
    create_resilient_worker_client,
)


class Id:
    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value


async def fetch(x: int) -> int:
    return x


async def use() -> None:
    client: ResilientWorkerClient = create_resilient_worker_client(
        orchestrator_url="http://localhost:8001",
        server_id="worker-dev-01",
        max_streams=10,
        circuit_failure_threshold=10,
        circuit_recovery_timeout=60,
        retry_max_attempts=3,
        retry_base_delay=1.0,
    )
    registered: bool = await client.register()
    ok: bool = await client.send_heartbeat()
    streams: List[int] = await client.request_streams(5)
    released: bool = await client.release_streams(streams[:1])
    health: Dict[str, Any] = await client.health_check()
    status: Dict[str, Any] = await client.get_detailed_status()
    can: bool = client.can_process_stream(1)
    await client.record_stream_processing(1)
    # Int-like ids (a numpy integer, say) type-check too.
    await client.record_stream_processing(Id(1))
    released = await client.release_streams(Id(i) for i in streams)
    async for leases in client.leases():
        ids: List[int] = leases.stream_ids
        epochs: Dict[int, int] = leases.epochs
        local: bool = leases.local_mode
        current: LeaseSet = leases
        break
    await client.shutdown()

    breaker = CircuitBreaker(CircuitBreakerConfig(failure_threshold=3, recovery_timeout=30))
    value: int = await breaker.call(fetch, 1)
    stats: Dict[str, Any] = breaker.get_stats()
    retry = RetryHandler(RetryConfig(max_attempts=5, base_delay=0.5))
    again: int = await retry.execute_with_retry(fetch, 2)
    try:
        create_resilient_worker_client("x", "y", 0)
    except ConfigurationError as e:
        setting: str = e.setting
    except CircuitBreakerOpenError as e:
        after: float | None = e.retry_after
    print(registered, ok, released, health, status, can, value, stats, again)


if __name__ == "__main__":
    asyncio.run(use())
