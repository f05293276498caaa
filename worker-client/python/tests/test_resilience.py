"""The seed's CircuitBreaker and retry handler, for the application's own
async calls (backed by the Rust resilience crate)."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from resilient_worker_client import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerOpenError,
    CircuitBreakerTimeoutError,
    ConfigurationError,
    RetryConfig,
    RetryHandler,
)

from conftest import patience


def run(coro):
    return asyncio.run(coro)


class Boom(Exception):
    pass


async def fail():
    raise Boom("down")


async def ok(value=1, *, plus=0):
    return value + plus


def test_configs_have_the_seeds_names_and_defaults():
    c = CircuitBreakerConfig()
    assert (c.failure_threshold, c.recovery_timeout, c.success_threshold, c.timeout) == (5, 60, 3, 30)
    r = RetryConfig()
    assert (r.max_attempts, r.base_delay, r.max_delay, r.exponential_base, r.jitter) == (3, 1.0, 60.0, 2.0, True)
    # What help() and editors show: the seed's defaults, none hidden as "...".
    assert str(inspect.signature(CircuitBreakerConfig)) == (
        "(failure_threshold=5, recovery_timeout=60.0, success_threshold=3, timeout=30.0)"
    )
    assert str(inspect.signature(RetryConfig)) == (
        "(max_attempts=3, base_delay=1.0, max_delay=60.0, exponential_base=2.0, jitter=True)"
    )
    with pytest.raises(ConfigurationError, match="failure_threshold") as e:
        CircuitBreakerConfig(failure_threshold=0)
    assert e.value.setting == "failure_threshold"
    with pytest.raises(ConfigurationError, match="base_delay"):
        RetryConfig(base_delay=120.0, max_delay=60.0)
    with pytest.raises(ConfigurationError, match="recovery_timeout"):
        CircuitBreakerConfig(recovery_timeout=-5)
    with pytest.raises(ConfigurationError, match="success_threshold"):
        CircuitBreakerConfig(success_threshold=2**80)
    with pytest.raises(ConfigurationError, match="max_attempts"):
        RetryConfig(max_attempts=-(2**80))


def test_the_breaker_opens_fails_fast_probes_and_closes():
    async def check():
        recovery = patience(1.0)  # the whole process stalling this long would let a probe through early
        b = CircuitBreaker(CircuitBreakerConfig(failure_threshold=2, recovery_timeout=recovery, success_threshold=2), name="db")
        assert await b.call(ok, 41, plus=1) == 42
        for _ in range(2):
            with pytest.raises(Boom):
                await b.call(fail)
        assert b.state == "open"
        called = []

        async def tracked():
            called.append(1)

        with pytest.raises(CircuitBreakerOpenError) as e:
            await b.call(tracked)
        assert not called, "an open breaker must not call the function"
        assert e.value.state == "open" and 0 < e.value.retry_after <= recovery
        await asyncio.sleep(recovery + 0.05)
        assert await b.call(ok) == 1  # a half-open probe
        assert b.state == "half_open"
        assert await b.call(ok) == 1
        assert b.state == "closed"
        stats = b.get_stats()
        assert stats["name"] == "db"
        assert (stats["successful_calls"], stats["failed_calls"], stats["rejected_calls"], stats["trips"]) == (3, 2, 1, 1)
        assert [(c["from"], c["to"]) for c in stats["state_changes"]] == [
            ("closed", "open"),
            ("open", "half_open"),
            ("half_open", "closed"),
        ]

    run(check())


def test_a_slow_call_times_out_and_counts_as_a_failure_a_cancelled_one_counts_nothing():
    async def check():
        b = CircuitBreaker(CircuitBreakerConfig(failure_threshold=1, timeout=0.05))
        task = asyncio.ensure_future(b.call(asyncio.sleep, 10))
        await asyncio.sleep(0)  # admitted and awaiting, then cancelled
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert b.get_stats()["total_calls"] == 0 and b.state == "closed"
        with pytest.raises(CircuitBreakerTimeoutError) as e:
            await b.call(asyncio.sleep, 10)
        assert isinstance(e.value, TimeoutError) and e.value.timeout == 0.05
        stats = b.get_stats()
        assert stats["timed_out_calls"] == 1 and stats["state"] == "open"

    run(check())


def test_a_plain_function_is_called_too_and_forcing_works():
    async def check():
        b = CircuitBreaker()
        assert await b.call(lambda x: x * 2, 21) == 42
        b.force_open()
        with pytest.raises(CircuitBreakerOpenError) as e:
            await b.call(lambda: 1)
        assert e.value.retry_after is None and e.value.state == "forced_open"
        b.reset()
        assert b.state == "closed"

    run(check())


def test_retry_retries_until_success_with_backoff():
    async def check():
        r = RetryHandler(RetryConfig(max_attempts=4, base_delay=0.01, max_delay=0.05))
        attempts = []

        async def flaky(x):
            attempts.append(asyncio.get_running_loop().time())
            if len(attempts) < 3:
                raise ConnectionError("flaky")
            return x

        assert await r.execute_with_retry(flaky, "done") == "done"
        assert len(attempts) == 3
        stats = r.get_stats()
        assert (stats["attempts"], stats["retries"], stats["give_ups"]) == (3, 2, 0)

    run(check())


def test_retry_gives_up_with_the_last_error_and_only_retries_what_it_is_told():
    async def check():
        r = RetryHandler(RetryConfig(max_attempts=3, base_delay=0.001, jitter=False))
        n = 0

        async def always():
            nonlocal n
            n += 1
            raise Boom(f"attempt {n}")

        with pytest.raises(Boom, match="attempt 3"):
            await r.execute_with_retry(always)
        assert n == 3 and r.get_stats()["give_ups"] == 1

        only_io = RetryHandler(RetryConfig(max_attempts=5, base_delay=0.001), retry_on=(ConnectionError,))
        m = 0

        def wrong():
            nonlocal m
            m += 1
            raise KeyError("not retryable")

        with pytest.raises(KeyError):
            await only_io.execute_with_retry(wrong)
        assert m == 1

    run(check())


def test_the_retry_budget_stops_a_retry_storm():
    async def check():
        r = RetryHandler(RetryConfig(max_attempts=3, base_delay=0.001, max_delay=0.002))
        for _ in range(20):
            with pytest.raises(Boom):
                await r.execute_with_retry(fail)
        stats = r.get_stats()
        assert stats["budget_exhausted"] > 0, stats
        assert stats["retries"] < 20 * 2, "the budget must have cut retries"

    run(check())
