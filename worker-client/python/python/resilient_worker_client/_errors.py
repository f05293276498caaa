"""The exceptions the client raises, one class per kind of error.

Each also derives from the built-in class a caller would already catch:
``ConfigurationError`` is a ``ValueError``, ``StreamNotLeasedError`` a
``LookupError``, ``ClientShutDownError`` a ``RuntimeError``,
``CircuitBreakerTimeoutError`` a ``TimeoutError``.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple, Type

__all__ = [
    "ResilientWorkerClientError",
    "ConfigurationError",
    "StateFileError",
    "OrchestratorRejectedError",
    "StreamNotLeasedError",
    "ClientShutDownError",
    "CircuitBreakerOpenError",
    "CircuitBreakerTimeoutError",
]


def _restore(cls: Type[BaseException], args: Tuple[Any, ...]) -> BaseException:
    error = cls.__new__(cls, *args)
    error.args = args  # (OSError's __new__ leaves them to __init__)
    return error


class ResilientWorkerClientError(Exception):
    """Base class of every error this package raises. Every one pickles
    with its attributes (to cross ``multiprocessing`` or
    ``concurrent.futures`` process pools)."""

    def __reduce__(self) -> Tuple[Any, ...]:
        # Exception's own would call the class with ``args`` (the message
        # alone), which the subclasses' extra parameters refuse.
        return (_restore, (type(self), self.args), self.__dict__)


class ConfigurationError(ResilientWorkerClientError, ValueError):
    """A setting is invalid; ``setting`` names it."""

    def __init__(self, message: str, setting: str) -> None:
        super().__init__(message)
        self.setting = setting


class StateFileError(ResilientWorkerClientError, OSError):
    """The state file cannot be used (locked by another process, corrupt,
    not writable); the message says how to recover. ``path`` is the file."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path

    def __str__(self) -> str:  # OSError's own formatting would drop the message
        return str(self.args[0])


class OrchestratorRejectedError(ResilientWorkerClientError):
    """The orchestrator refused the call as invalid. Never retried, never
    counted against the orchestrator's health. ``code`` is the gRPC code's
    name (``"INVALID_ARGUMENT"``, ...), ``detail`` the orchestrator's
    message, which names the field."""

    def __init__(self, message: str, code: str, detail: str) -> None:
        super().__init__(message)
        self.code = code
        self.detail = detail


class StreamNotLeasedError(ResilientWorkerClientError, LookupError):
    """The stream is not leased to this worker now: stop processing it."""

    def __init__(self, message: str, stream_id: int) -> None:
        super().__init__(message)
        self.stream_id = stream_id


class ClientShutDownError(ResilientWorkerClientError, RuntimeError):
    """The client was shut down."""


class CircuitBreakerOpenError(ResilientWorkerClientError):
    """The breaker is open: the call was not made. ``state`` is the
    breaker's state, ``retry_after`` the seconds before it admits a probe
    (``None`` when forced open)."""

    def __init__(self, message: str, state: str, retry_after: Optional[float]) -> None:
        super().__init__(message)
        self.state = state
        self.retry_after = retry_after


class CircuitBreakerTimeoutError(ResilientWorkerClientError, TimeoutError):
    """The call took longer than the breaker's ``timeout`` and was
    cancelled; it counts as a failure."""

    def __init__(self, message: str, timeout: float) -> None:
        super().__init__(message)
        self.timeout = timeout

    def __str__(self) -> str:
        return str(self.args[0])
