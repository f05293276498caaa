"""The seed's ``CircuitBreaker`` and retry handler for the application's
own calls.

The state machine, the backoff with jitter, the retry budget and the
counters are the Rust ``resilience`` crate's (the same the client uses for
its calls to the orchestrator); the calls themselves are awaited here, on
the application's event loop, so nothing crosses threads and a coroutine
stays in its task's context.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, Awaitable, Callable, Optional, Tuple, Type, TypeVar, Union

from . import _native
from ._errors import CircuitBreakerTimeoutError

__all__ = ["CircuitBreaker", "CircuitBreakerConfig", "RetryConfig", "RetryHandler"]

T = TypeVar("T")

CircuitBreakerConfig = _native.CircuitBreakerConfig
RetryConfig = _native.RetryConfig


class CircuitBreaker(_native.CircuitBreakerCore):
    """A circuit breaker: CLOSED (calls pass), OPEN (calls fail fast with
    ``CircuitBreakerOpenError``), HALF_OPEN (a few probes test recovery).

    ``CircuitBreaker(config=None, name="circuit_breaker")``; ``config`` is a
    ``CircuitBreakerConfig`` (the seed's defaults when ``None``).
    """

    async def call(self, func: Callable[..., Union[Awaitable[T], T]], *args: Any, **kwargs: Any) -> T:
        """Runs ``func(*args, **kwargs)`` (awaiting it when it returns an
        awaitable) if the breaker admits it. Any exception counts as a
        failure and is raised again; a call longer than the configured
        ``timeout`` is cancelled and raises ``CircuitBreakerTimeoutError``;
        a cancelled call counts as nothing. Raises
        ``CircuitBreakerOpenError`` without calling ``func`` when open."""
        permit = self.try_acquire()
        try:
            result = func(*args, **kwargs)
            if inspect.isawaitable(result):
                timeout = self.timeout
                if timeout is None:
                    result = await result
                else:
                    try:
                        result = await asyncio.wait_for(result, timeout)
                    except asyncio.TimeoutError:
                        permit.record_timeout()
                        raise CircuitBreakerTimeoutError(
                            f"circuit breaker {self.name!r}: the call took longer than {timeout:g}s", timeout
                        ) from None
        except Exception:
            permit.record_failure()
            raise
        except BaseException:  # cancelled (CancelledError), or exiting
            permit.release()
            raise
        permit.record_success()
        return result  # type: ignore[return-value]


class RetryHandler(_native.RetryCore):
    """Retries with exponential backoff, jitter and a retry budget.

    ``RetryHandler(config=None, retry_on=(Exception,))``; ``config`` is a
    ``RetryConfig`` (the seed's defaults when ``None``). Only exceptions
    that are instances of ``retry_on`` are retried; others are raised at
    once. The budget (shared by every call of one handler) stops retry
    storms: when most calls fail, retries stop until successes refill it.
    """

    def __init__(
        self,
        config: Optional[RetryConfig] = None,
        retry_on: Union[Type[BaseException], Tuple[Type[BaseException], ...]] = (Exception,),
    ) -> None:
        self.retry_on = retry_on

    async def execute_with_retry(self, func: Callable[..., Union[Awaitable[T], T]], *args: Any, **kwargs: Any) -> T:
        """Runs ``func(*args, **kwargs)`` (awaiting it when it returns an
        awaitable) until it succeeds, waiting between attempts on the event
        loop. Raises the last exception once ``max_attempts`` are used or
        the budget is spent."""
        attempts = self.begin()
        while True:
            try:
                result = func(*args, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
            except self.retry_on:
                wait = attempts.failed()
                if wait is None:
                    raise
                await asyncio.sleep(wait)
                continue
            attempts.succeeded()
            return result  # type: ignore[return-value]
