"""The resilient worker client for the stream orchestrator, in Rust.

The seed's Python API, with its names and defaults::

    from resilient_worker_client import create_resilient_worker_client

    client = create_resilient_worker_client(
        orchestrator_url="http://orchestrator:50051",
        server_id="worker-01",
        max_streams=20,
    )
    await client.register()
    await client.send_heartbeat()
    health = await client.health_check()
    await client.shutdown()

Every call to the orchestrator goes through a circuit breaker and retries
with jittered backoff; when the orchestrator is unreachable the worker
keeps its streams in local mode, its processing records durable in a
SQLite state file, uploaded exactly once when the orchestrator is back.
"""

from __future__ import annotations

import atexit

# Imported before the exit hook is registered, so that logging's own exit
# handler (which flushes and closes the handlers) runs after ours.
import logging  # noqa: F401

from . import _native
from ._errors import (
    CircuitBreakerOpenError,
    CircuitBreakerTimeoutError,
    ClientShutDownError,
    ConfigurationError,
    OrchestratorRejectedError,
    ResilientWorkerClientError,
    StateFileError,
    StreamNotLeasedError,
)
from ._client import LeaseChanges, ResilientWorkerClient, create_resilient_worker_client, create_standalone_worker_client
from ._native import LeaseSet
from ._resilience import CircuitBreaker, CircuitBreakerConfig, RetryConfig, RetryHandler

__version__: str = _native.__version__

__all__ = [
    "create_resilient_worker_client",
    "create_standalone_worker_client",
    "ResilientWorkerClient",
    "LeaseSet",
    "LeaseChanges",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "RetryHandler",
    "RetryConfig",
    "ResilientWorkerClientError",
    "ConfigurationError",
    "StateFileError",
    "OrchestratorRejectedError",
    "StreamNotLeasedError",
    "ClientShutDownError",
    "CircuitBreakerOpenError",
    "CircuitBreakerTimeoutError",
]

# A client used but not shut down is shut down (records uploaded, streams
# released, state file closed) when the interpreter exits.
atexit.register(_native.shutdown_at_exit)
