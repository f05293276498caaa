"""Type stubs of the Rust extension module."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, SupportsIndex, Union

__version__: str

def create_resilient_worker_client(
    orchestrator_url: Union[str, Sequence[str]],
    server_id: str,
    max_streams: int,
    circuit_failure_threshold: int = 5,
    circuit_recovery_timeout: float = 60,
    retry_max_attempts: int = 3,
    retry_base_delay: float = 1.0,
    *,
    circuit_success_threshold: int = 3,
    circuit_timeout: float = 30.0,
    retry_max_delay: float = 60.0,
    retry_exponential_base: float = 2.0,
    retry_jitter: bool = True,
    state_path: Optional[Union[str, os.PathLike[str]]] = None,
    state_sync_full: bool = False,
    state_history: int = 5000,
    heartbeat_interval: Optional[float] = None,
    local_mode_after: float = 30.0,
    local_mode_limit: Optional[float] = None,
    reconnect_base_delay: float = 1.0,
    reconnect_max_delay: float = 30.0,
    connect_timeout: float = 5.0,
    auth_token: Optional[str] = None,
    tls_ca_file: Optional[Union[str, os.PathLike[str]]] = None,
    tls_cert_file: Optional[Union[str, os.PathLike[str]]] = None,
    tls_key_file: Optional[Union[str, os.PathLike[str]]] = None,
    tls_domain: Optional[str] = None,
    shutdown_timeout: float = 10.0,
    client_version: Optional[str] = None,
) -> ResilientWorkerClient:
    """Builds a client (synchronous: no connection, no state file). Durations are seconds.
    Raises ConfigurationError naming the setting."""

def create_standalone_worker_client(
    server_id: str,
    streams: Sequence[SupportsIndex],
    *,
    state_path: Optional[Union[str, os.PathLike[str]]] = None,
    state_history: int = 5000,
) -> ResilientWorkerClient:
    """A client with no orchestrator that processes exactly ``streams``
    (ids > 0). Only builds; a bad setting is a ``ConfigurationError``
    naming it."""

def shutdown_at_exit() -> None:
    """Shuts down every client used but not shut down (run by atexit)."""

class ResilientWorkerClient:
    """The native client; the package's ResilientWorkerClient wraps it.

    Each awaited method takes the running loop's ``Completer`` and a future
    of that loop, runs on the Rust runtime and completes the future."""

    def _holders(self) -> int:
        """How many hold this client (for tests): 1 when no call (nor a lease
        iterator's first step) is in flight."""
    @property
    def server_id(self) -> str: ...
    @property
    def orchestrator_url(self) -> str:
        """The endpoints, comma-separated."""
    @property
    def max_streams(self) -> int: ...
    @property
    def state_path(self) -> Path: ...
    def register(self, completer: Completer, future: asyncio.Future[bool]) -> None: ...
    def start(self, completer: Completer, future: asyncio.Future[None]) -> None: ...
    def send_heartbeat(self, completer: Completer, future: asyncio.Future[bool]) -> None: ...
    def request_streams(self, count: SupportsIndex, completer: Completer, future: asyncio.Future[List[int]]) -> None: ...
    def release_streams(self, stream_ids: List[SupportsIndex], completer: Completer, future: asyncio.Future[bool]) -> None: ...
    def can_process_stream(self, stream_id: SupportsIndex) -> bool: ...
    def record_stream_processing(self, stream_id: SupportsIndex, completer: Completer, future: asyncio.Future[None]) -> None: ...
    def health_check(self, completer: Completer, future: asyncio.Future[Dict[str, Any]]) -> None: ...
    def get_detailed_status(self, completer: Completer, future: asyncio.Future[Dict[str, Any]]) -> None: ...
    def shutdown(self, completer: Completer, future: asyncio.Future[None]) -> None: ...
    def leases(self) -> LeaseChanges: ...

class LeaseSet:
    """The streams this worker may process at one moment."""

    @property
    def stream_ids(self) -> List[int]: ...
    @property
    def epochs(self) -> Dict[int, int]: ...
    @property
    def local_mode(self) -> bool: ...
    def __contains__(self, stream_id: object) -> bool: ...
    def __len__(self) -> int: ...

class LeaseChanges:
    """The lease set as it changes (the package's LeaseChanges iterates it)."""

    def next(self, completer: Completer, future: asyncio.Future[Optional[LeaseSet]]) -> None: ...
    def cancel(self) -> None: ...
    def delivered(self) -> None: ...

class CircuitBreakerConfig:
    """The seed's CircuitBreakerConfig (durations in seconds)."""

    def __init__(
        self,
        failure_threshold: int = 5,
        recovery_timeout: float = 60.0,
        success_threshold: int = 3,
        timeout: Optional[float] = 30.0,
    ) -> None: ...
    @property
    def failure_threshold(self) -> int: ...
    @property
    def recovery_timeout(self) -> float: ...
    @property
    def success_threshold(self) -> int: ...
    @property
    def timeout(self) -> Optional[float]: ...

class CircuitPermit:
    def record_success(self) -> None: ...
    def record_failure(self) -> None: ...
    def record_timeout(self) -> None: ...
    def release(self) -> None: ...

class CircuitBreakerCore:
    def __init__(self, config: Optional[CircuitBreakerConfig] = None, name: str = "circuit_breaker") -> None: ...
    def try_acquire(self) -> CircuitPermit: ...
    @property
    def state(self) -> str:
        """closed, open, half_open, forced_open or forced_closed."""
    @property
    def name(self) -> str: ...
    @property
    def timeout(self) -> Optional[float]: ...
    @property
    def config(self) -> CircuitBreakerConfig: ...
    def get_stats(self) -> Dict[str, Any]: ...
    def reset(self) -> None: ...
    def force_open(self) -> None: ...
    def force_closed(self) -> None: ...

class RetryConfig:
    """The seed's RetryConfig (durations in seconds)."""

    def __init__(
        self,
        max_attempts: int = 3,
        base_delay: float = 1.0,
        max_delay: float = 60.0,
        exponential_base: float = 2.0,
        jitter: bool = True,
    ) -> None: ...
    @property
    def max_attempts(self) -> int: ...
    @property
    def base_delay(self) -> float: ...
    @property
    def max_delay(self) -> float: ...
    @property
    def exponential_base(self) -> float: ...
    @property
    def jitter(self) -> bool: ...

class RetryAttempts:
    def failed(self) -> Optional[float]: ...
    def succeeded(self) -> None: ...
    @property
    def attempt(self) -> int: ...

class RetryCore:
    def __init__(self, config: Optional[RetryConfig] = None) -> None: ...
    def begin(self) -> RetryAttempts: ...
    @property
    def config(self) -> RetryConfig: ...
    def get_stats(self) -> Dict[str, Any]: ...

class Completer:
    """The completion queue of one event loop (one per loop; the package
    registers ``drain`` as the loop's reader of ``fileno()``)."""

    def __init__(self) -> None: ...
    def fileno(self) -> int: ...
    def drain(self) -> None: ...
