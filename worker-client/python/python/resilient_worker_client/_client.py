"""``ResilientWorkerClient``: the seed's client class, its methods real
coroutines (``async def``), so ``asyncio.run(client.health_check())``,
``asyncio.create_task`` and ``inspect.iscoroutinefunction`` work as with
the seed's client. Each awaits the Rust client working on the shared
runtime; the event loop is never blocked.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, SupportsIndex

if TYPE_CHECKING:
    from typing_extensions import ParamSpec

    P = ParamSpec("P")

from . import _native

__all__ = ["LeaseChanges", "ResilientWorkerClient", "create_resilient_worker_client", "create_standalone_worker_client"]


# One completion queue per event loop (see src/complete.rs): the Rust side
# completes this loop's futures without taking the GIL on its own threads,
# and a burst of completions wakes the loop once.
_completers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _native.Completer]" = weakref.WeakKeyDictionary()


def _completer(loop: asyncio.AbstractEventLoop) -> _native.Completer:
    completer = _completers.get(loop)
    if completer is None:
        completer = _native.Completer()
        loop.add_reader(completer.fileno(), completer.drain)
        _completers[loop] = completer
    return completer


async def _call(method: Callable[..., None], *args: Any) -> Any:
    """Awaits a native method: it runs on the Rust runtime and completes a
    future of the running loop through the loop's completion queue."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    method(*args, _completer(loop), future)
    return await future


class LeaseChanges:
    """``async for leases in client.leases(): ...``: the current
    ``LeaseSet`` at once, then one per change; ends at ``shutdown()``.
    One consumer at a time, as an async generator: a second ``__anext__``
    while one is in flight is a ``RuntimeError`` (make one iterator per
    consumer with ``client.leases()``)."""

    __slots__ = ("_native", "_running")

    def __init__(self, native: _native.LeaseChanges) -> None:
        self._native = native
        self._running = False

    def __aiter__(self) -> "LeaseChanges":
        return self

    async def __anext__(self) -> _native.LeaseSet:
        if self._running:
            raise RuntimeError("this lease iterator already has a step in flight: one consumer per iterator (call client.leases() again for another)")
        self._running = True
        try:
            leases = await _call(self._native.next)
        except asyncio.CancelledError:
            # Stop the step in flight before it takes a lease set: the next
            # __anext__ gets the change this one would have.
            self._native.cancel()
            raise
        finally:
            self._running = False
        # Reached the application: a step cancelled after the runtime took
        # its change leaves the flag set, and the next step answers at once.
        self._native.delivered()
        if leases is None:
            raise StopAsyncIteration
        return leases  # type: ignore[no-any-return]


class ResilientWorkerClient:
    """A worker's client of the orchestrator. Make one with
    ``create_resilient_worker_client`` (or ``create_standalone_worker_client``).

    Every call to the orchestrator goes through a circuit breaker and
    retries with jittered backoff and a retry budget. When the orchestrator
    is unreachable the client enters local mode: the worker keeps its
    streams, its processing records are kept in the SQLite state file, and
    they are uploaded exactly once when the orchestrator answers again.

    Also an async context manager: ``async with client: ...`` shuts it down
    on the way out.
    """

    __slots__ = ("_native", "__weakref__")

    def __init__(self, native: _native.ResilientWorkerClient) -> None:
        self._native = native

    # -- the seed's core methods

    async def register(self) -> bool:
        """Registers with the orchestrator (presenting the leases of an
        earlier run and uploading its unsynced records). ``True`` when
        registered, ``False`` when the orchestrator is unreachable (the
        client is then in local mode if it holds streams). Starts no
        background loop: see ``start()``."""
        return await _call(self._native.register)  # type: ignore[no-any-return]

    async def send_heartbeat(self) -> bool:
        """One heartbeat; applies the orchestrator's grants and revocations.
        ``False`` in local mode, as the seed's client."""
        return await _call(self._native.send_heartbeat)  # type: ignore[no-any-return]

    async def request_streams(self, count: SupportsIndex) -> List[int]:
        """Asks for up to ``count`` more streams; the ids granted. In local
        mode, the streams held."""
        return await _call(self._native.request_streams, count)  # type: ignore[no-any-return]

    async def release_streams(self, stream_ids: Iterable[SupportsIndex]) -> bool:
        """Gives streams back. ``True`` when the orchestrator confirmed,
        ``False`` when recorded locally and replayed later. Ids not leased
        to this worker are ignored (none leased: ``True``, no call made)."""
        if isinstance(stream_ids, (str, bytes, bytearray)):
            raise TypeError("stream_ids must be a list of stream ids (int), not a string")
        try:
            items = iter(stream_ids)
        except TypeError:
            raise TypeError(f"stream_ids must be a list of stream ids (int), not {type(stream_ids).__name__}") from None
        return await _call(self._native.release_streams, list(items))  # type: ignore[no-any-return]

    async def health_check(self) -> Dict[str, Any]:
        """The seed's health report (``server_id``,
        ``orchestrator_available``, ``local_mode_active``,
        ``assigned_streams``, ``circuit_breaker_state``,
        ``last_orchestrator_contact``, ``metrics``) plus ``mode``,
        ``local_mode_reason`` and the record counters."""
        return await _call(self._native.health_check)  # type: ignore[no-any-return]

    async def shutdown(self) -> None:
        """Graceful shutdown within ``shutdown_timeout``: stops the
        background loop and processing, uploads the records, deregisters
        (every stream released at once) and closes the state file.
        Idempotent, and it runs to the end even if the await is cancelled.
        Afterwards the calls that need the orchestrator or the state file
        raise ``ClientShutDownError``; ``health_check()`` still answers."""
        await _call(self._native.shutdown)

    # -- local mode methods

    def can_process_stream(self, stream_id: SupportsIndex) -> bool:
        """Whether this worker may process ``stream_id`` now (synchronous)."""
        return self._native.can_process_stream(stream_id)

    async def record_stream_processing(self, stream_id: SupportsIndex) -> None:
        """Records that a chunk of ``stream_id`` was processed. Returns once
        the record is durable in the state file (it survives a crash of
        the worker); it reaches the orchestrator exactly once. Raises
        ``StreamNotLeasedError`` if the stream is not leased to this
        worker. (Cancelling the await, as any call's, does not cancel the
        call: the record may still be made.)"""
        await _call(self._native.record_stream_processing, stream_id)

    async def get_detailed_status(self) -> Dict[str, Any]:
        """Health, configuration, local state (session, leases, pending
        releases, record counts), circuit breaker statistics and history,
        retry counters."""
        return await _call(self._native.get_detailed_status)  # type: ignore[no-any-return]

    # -- beyond the seed

    async def start(self) -> None:
        """Registers and starts the Rust background loop (heartbeats at the
        orchestrator's interval, grants and revocations applied, local
        mode entered and left), for applications without a heartbeat loop
        of their own. Idempotent."""
        await _call(self._native.start)

    def leases(self) -> LeaseChanges:
        """The lease set as an async iterator: the current one at once,
        then one per change, until ``shutdown()``::

            async for leases in client.leases():
                for stream_id in leases.stream_ids: ...
        """
        return LeaseChanges(self._native.leases())

    @property
    def server_id(self) -> str:
        return self._native.server_id

    @property
    def orchestrator_url(self) -> str:
        """The endpoints, comma-separated."""
        return self._native.orchestrator_url

    @property
    def max_streams(self) -> int:
        return self._native.max_streams

    @property
    def state_path(self) -> Path:
        return self._native.state_path

    async def __aenter__(self) -> "ResilientWorkerClient":
        return self

    async def __aexit__(self, *exc: Any) -> Optional[bool]:
        await self.shutdown()
        return None

    def __repr__(self) -> str:
        return repr(self._native)


def _wrapping(native: Callable[P, _native.ResilientWorkerClient]) -> Callable[P, ResilientWorkerClient]:
    """The native factory, returning the coroutine-method client; its
    signature (and the type checker's view of it) is the native one."""

    @functools.wraps(native)
    def make(*args: P.args, **kwargs: P.kwargs) -> ResilientWorkerClient:
        return ResilientWorkerClient(native(*args, **kwargs))

    return make


create_resilient_worker_client = _wrapping(_native.create_resilient_worker_client)
create_standalone_worker_client = _wrapping(_native.create_standalone_worker_client)
