"""The seed's API, names and defaults, against the real orchestrator."""

from __future__ import annotations

import asyncio
import inspect
import pickle
import select
import socket
import sys
from pathlib import Path

import pytest

import resilient_worker_client as rwc
from resilient_worker_client import _client
from resilient_worker_client import (
    ClientShutDownError,
    ConfigurationError,
    OrchestratorRejectedError,
    StreamNotLeasedError,
    create_resilient_worker_client,
    create_standalone_worker_client,
)

from conftest import Orchestrator, eventually, patience

# The seed's "Health Check Response" example, verbatim.
SEED_HEALTH = {
    "server_id": "worker-01",
    "orchestrator_available": True,
    "local_mode_active": False,
    "assigned_streams": 15,
    "circuit_breaker_state": "closed",
    "last_orchestrator_contact": "2024-01-01T12:00:00",
    "metrics": {
        "total_requests": 1000,
        "successful_requests": 950,
        "failed_requests": 50,
        "circuit_breaker_trips": 2,
        "local_mode_activations": 1,
        "retry_attempts": 150,
    },
}


def run(coro):
    return asyncio.run(coro)


def test_the_factory_has_the_seeds_signature_and_defaults():
    sig = inspect.signature(create_resilient_worker_client)
    names = list(sig.parameters)
    assert names[:7] == [
        "orchestrator_url",
        "server_id",
        "max_streams",
        "circuit_failure_threshold",
        "circuit_recovery_timeout",
        "retry_max_attempts",
        "retry_base_delay",
    ]
    p = sig.parameters
    assert p["max_streams"].default is inspect.Parameter.empty
    assert p["circuit_failure_threshold"].default == 5
    assert p["circuit_recovery_timeout"].default == 60
    assert p["retry_max_attempts"].default == 3
    assert p["retry_base_delay"].default == 1.0
    # every other setting of the Rust builder, by keyword only
    for name in ("state_path", "heartbeat_interval", "local_mode_after", "auth_token", "tls_ca_file", "shutdown_timeout"):
        assert p[name].kind is inspect.Parameter.KEYWORD_ONLY, name


def test_the_factory_does_no_io(tmp_path: Path):
    state = tmp_path / "state.db"
    client = create_resilient_worker_client("http://127.0.0.1:9", "w-noio", 5, state_path=str(state))
    assert not state.exists(), "the factory must not open the state file"
    assert client.server_id == "w-noio" and client.max_streams == 5
    assert client.state_path == state
    assert client.can_process_stream(1) is False
    assert client.can_process_stream(2**70) is False
    assert client.can_process_stream(-(2**200)) is False


@pytest.mark.parametrize(
    "kwargs, setting",
    [
        (dict(orchestrator_url="orchestrator:8001"), "orchestrator_url"),
        (dict(orchestrator_url=["http://a:1", 2]), "orchestrator_url"),
        (dict(server_id="has space"), "server_id"),
        (dict(max_streams=0), "max_streams"),
        (dict(max_streams=-1), "max_streams"),
        (dict(max_streams=2**70), "max_streams"),
        (dict(max_streams=2**200), "max_streams"),
        (dict(circuit_failure_threshold=-(2**200)), "circuit_failure_threshold"),
        (dict(state_history=-(2**64)), "state_history"),
        (dict(circuit_recovery_timeout=-1), "circuit_recovery_timeout"),
        (dict(retry_base_delay=float("nan")), "retry_base_delay"),
        (dict(local_mode_after=0), "local_mode_after"),
        (dict(tls_cert_file="c.pem"), "tls_ca_file"),
        (dict(tls_ca_file="/nonexistent/ca.pem"), "tls_ca_file"),
    ],
)
def test_bad_settings_raise_configuration_error_naming_them(kwargs, setting):
    args = dict(orchestrator_url="http://127.0.0.1:50051", server_id="w1", max_streams=5)
    args.update(kwargs)
    with pytest.raises(ConfigurationError) as e:
        create_resilient_worker_client(**args)
    assert e.value.setting == setting, str(e.value)
    assert setting in str(e.value)
    assert isinstance(e.value, ValueError)


def test_a_huge_duration_is_shown_short():
    cases = ((1e300, "1e300"), (-1e300, "-1e300"), (float("inf"), "inf"), (float("nan"), "nan"), (-0.5, "-0.5"), (-1, "-1"), (2**64, "1.8446744073709552e19"))
    for value, shown in cases:
        with pytest.raises(ConfigurationError, match=rf"^invalid configuration: connect_timeout: must be a number of seconds >= 0 and < 2\*\*64, got {shown}$"):
            create_resilient_worker_client("http://127.0.0.1:50051", "w1", 5, connect_timeout=value)


def seed_production(url: str, tmp_path: Path):
    # The seed's "Production Configuration", as written but for the URL.
    client = create_resilient_worker_client(
        orchestrator_url=url,
        server_id="worker-prod-01",
        max_streams=50,
        circuit_failure_threshold=3,  # Fail fast
        circuit_recovery_timeout=30,  # Quick recovery test
        retry_max_attempts=5,  # More retries
        retry_base_delay=0.5,  # Faster initial retry
    )
    return client


def seed_development(url: str, tmp_path: Path):
    # The seed's "Development Configuration", as written but for the URL.
    client = create_resilient_worker_client(
        orchestrator_url=url,
        server_id="worker-dev-01",
        max_streams=10,
        circuit_failure_threshold=10,  # More tolerant
        circuit_recovery_timeout=60,  # Longer recovery time
        retry_max_attempts=3,  # Standard retries
        retry_base_delay=1.0,  # Standard delay
    )
    return client


@pytest.mark.parametrize(
    "make, url, expected",
    [
        (seed_production, "http://orchestrator:8001", dict(circuit_failure_threshold=3, circuit_recovery_timeout_ms=30000, retry_max_attempts=5, retry_base_delay_ms=500, max_streams=50)),
        (seed_development, "http://localhost:8001", dict(circuit_failure_threshold=10, circuit_recovery_timeout_ms=60000, retry_max_attempts=3, retry_base_delay_ms=1000, max_streams=10)),
    ],
)
def test_the_seeds_configuration_examples_construct_as_written(make, url, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default state file is ./worker-state-<server_id>.db
    client = make(url, tmp_path)
    status = run(client.get_detailed_status())
    config = status["configuration"]
    for key, value in expected.items():
        assert config[key] == value, key
    assert config["orchestrator_url"] == url
    assert (tmp_path / f"worker-state-{client.server_id}.db").exists()
    run(client.shutdown())


@pytest.mark.parametrize("make", [seed_production, seed_development])
def test_the_seeds_examples_run_a_full_lifecycle(make, orchestrator: Orchestrator, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    client = make(orchestrator.url, tmp_path)

    async def lifecycle():
        assert await client.register() is True
        granted = await client.request_streams(4)
        assert isinstance(granted, list) and len(granted) == 4 and all(isinstance(s, int) for s in granted)
        assert await client.send_heartbeat() is True
        # The heartbeat's answer may grant more (the orchestrator balances).
        held = [s for s in range(1, 11) if client.can_process_stream(s)]
        assert set(granted) <= set(held)
        for s in held:
            assert await client.record_stream_processing(s) is None
        health = await client.health_check()
        assert health["assigned_streams"] == len(held) and health["orchestrator_available"] is True
        epochs = {}
        async for leases in client.leases():
            epochs = leases.epochs
            break
        assert await client.release_streams(granted[:1]) is True
        assert not client.can_process_stream(granted[0])
        # Released on the orchestrator: the stream is free, or already
        # granted again (to this worker, the only one) under a newer epoch.
        leases = {
            a["lease"]["stream_id"]: (a["server_id"], a["lease"]["lease_epoch"])
            for a in orchestrator.admin("assignments")["assignments"]
            if a["lease"]
        }
        assert granted[0] not in leases or leases[granted[0]][1] > epochs[granted[0]], (leases, epochs)
        workers = {w["server_id"]: w for w in orchestrator.admin("workers")["workers"]}
        assert workers[client.server_id]["state"] == "live"
        await client.shutdown()
        # Deregistered at once (a crash would stay live for the session timeout).
        workers = {w["server_id"]: w for w in orchestrator.admin("workers")["workers"]}
        assert workers[client.server_id]["state"] != "live"
        assert workers[client.server_id]["assigned_streams"] == 0
        metrics = (await client.health_check())["metrics"]
        assert metrics["records_unsynced"] == 0 and metrics["records_uploaded"] == len(held)

    run(lifecycle())


def keys_and_types(d):
    return {k: (keys_and_types(v) if isinstance(v, dict) else type(v)) for k, v in d.items()}


def test_the_health_dict_has_every_key_of_the_seeds_example(orchestrator: Orchestrator, tmp_path: Path):
    async def check():
        client = create_resilient_worker_client(orchestrator.url, "worker-01", 5, state_path=str(tmp_path / "s.db"))
        await client.register()
        health = await client.health_check()
        await client.shutdown()
        return health

    health = run(check())
    seed = keys_and_types(SEED_HEALTH)
    ours = keys_and_types(health)
    for key, kind in seed.items():
        assert key in ours, key
        if isinstance(kind, dict):
            for k, t in kind.items():
                assert ours[key].get(k) is t, f"metrics.{k}: {ours[key].get(k)} is not {t}"
        else:
            assert ours[key] is kind, f"{key}: {ours[key]} is not {kind}"
    # and the new ones
    assert health["mode"] == "normal" and health["local_mode_reason"] is None
    assert {"records_made", "records_unsynced", "records_uploaded"} <= set(health["metrics"])


def test_errors_by_kind(orchestrator: Orchestrator, tmp_path: Path):
    async def check():
        client = create_resilient_worker_client(orchestrator.url, "w-errors", 3, state_path=str(tmp_path / "s.db"))
        await client.register()
        with pytest.raises(StreamNotLeasedError) as e:
            await client.record_stream_processing(999)
        assert e.value.stream_id == 999 and isinstance(e.value, LookupError)
        # Stream ids are 64-bit: a larger int is a stream never leased, not
        # an OverflowError; the exception keeps the int as given.
        for big in (2**63, -(2**63) - 1, 2**200):
            with pytest.raises(StreamNotLeasedError, match=f"stream {big} is not leased") as e:
                await client.record_stream_processing(big)
            assert e.value.stream_id == big
        with pytest.raises(StreamNotLeasedError, match="thousands of digits") as e:
            await client.record_stream_processing(10**5000)  # too long for str()
        assert e.value.stream_id == 10**5000
        with pytest.raises(TypeError, match="stream_id" if sys.version_info >= (3, 11) else None):
            await client.record_stream_processing("7")  # type: ignore[arg-type]
        # Nothing leased among them (however large): nothing to do.
        assert await client.release_streams([2**70, -(2**200), 999]) is True
        with pytest.raises(TypeError):
            await client.release_streams([1, "a"])  # type: ignore[list-item]
        with pytest.raises(TypeError, match="not int"):
            await client.release_streams(4)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="not a string"):
            await client.release_streams(b"\x01")  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="count"):
            await client.request_streams(0)
        with pytest.raises(ConfigurationError, match=f"count: .*got {2**64}"):
            await client.request_streams(2**64)
        # (Python 3.11+ adds a note naming the argument.)
        with pytest.raises(TypeError, match="count" if sys.version_info >= (3, 11) else None):
            await client.request_streams(1.5)  # type: ignore[arg-type]
        with pytest.raises(OrchestratorRejectedError) as r:
            await client.request_streams(4)  # more than max_streams
        assert r.value.code == "INVALID_ARGUMENT" and r.value.detail
        with pytest.raises(TypeError):
            await client.release_streams("1, 2")
        await client.shutdown()
        await client.shutdown()  # idempotent
        with pytest.raises(ClientShutDownError):
            await client.send_heartbeat()
        assert client.can_process_stream(1) is False
        assert client.can_process_stream(2**70) is False

    run(check())


def test_lease_changes_are_an_async_iterator(orchestrator: Orchestrator, tmp_path: Path):
    async def check():
        client = create_resilient_worker_client(
            orchestrator.url, "w-leases", 5, state_path=str(tmp_path / "s.db"), retry_base_delay=0.05
        )
        seen = []

        async def watch():
            async for leases in client.leases():
                seen.append(leases)

        watcher = asyncio.ensure_future(watch())
        # start() runs the Rust background loop: the orchestrator's grants
        # arrive with heartbeats, no request_streams needed.
        await client.start()

        async def full():
            return bool(seen) and len(seen[-1]) == 5

        await eventually(full, "five streams granted by the background loop")
        last = seen[-1]
        assert last.local_mode is False
        assert all(s in last for s in last.stream_ids)
        assert 2**70 not in last and 2**200 not in last
        assert "1" not in last and None not in last
        assert set(last.epochs) == set(last.stream_ids) and all(e >= 1 for e in last.epochs.values())
        assert all(client.can_process_stream(s) for s in last.stream_ids)
        await client.shutdown()
        await asyncio.wait_for(watcher, patience(5))  # the iteration ends at shutdown

    run(check())


def test_several_endpoints_fail_over(orchestrator: Orchestrator, tmp_path: Path):
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_url = f"http://127.0.0.1:{dead.getsockname()[1]}"
    dead.close()  # nothing listens there now

    async def check():
        client = create_resilient_worker_client(
            [dead_url, orchestrator.url], "w-endpoints", 3,
            state_path=str(tmp_path / "s.db"), retry_base_delay=0.05, retry_max_attempts=5,
        )  # fmt: skip
        assert client.orchestrator_url == f"{dead_url},{orchestrator.url}"
        assert await client.register() is True
        await client.shutdown()

    run(check())


def test_an_awaited_call_never_blocks_the_event_loop(tmp_path: Path):
    # A peer that accepts connections and never answers: register() waits
    # for its call timeout, and the loop keeps running meanwhile.
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(16)
    url = f"http://127.0.0.1:{hung.getsockname()[1]}"

    async def check():
        client = create_resilient_worker_client(
            url, "w-hung", 3, state_path=str(tmp_path / "s.db"),
            retry_max_attempts=1, circuit_timeout=1.0, connect_timeout=1.0,
        )  # fmt: skip
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.ensure_future(ticker())
        ok = await client.register()
        t.cancel()
        assert ok is False, "no answer: not registered"
        assert ticks >= 20, f"the event loop ran only {ticks} ticks during a call of about a second"
        await client.shutdown()

    try:
        run(check())
    finally:
        hung.close()


def test_standalone_mode(tmp_path: Path):
    async def check():
        client = create_standalone_worker_client("w-alone", [1, 2, 3], state_path=str(tmp_path / "s.db"))
        await client.start()
        assert await client.register() is False
        assert sorted(await client.request_streams(3)) == [1, 2, 3]
        await client.record_stream_processing(2)
        health = await client.health_check()
        assert health["mode"] == "standalone" and health["metrics"]["records_made"] == 1
        with pytest.raises(StreamNotLeasedError):
            await client.record_stream_processing(2**64)
        # A leased id among ids beyond 64 bits is released, alone.
        assert await client.release_streams([2, 2**64]) is True
        assert sorted(await client.request_streams(3)) == [1, 3]
        await client.shutdown()

    run(check())


class Index:
    """An int-like object that is not an int (as a numpy integer)."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value


def test_counts_take_int_like_objects():
    client = create_resilient_worker_client(
        "http://127.0.0.1:50051", "w1", Index(3), retry_max_attempts=Index(2)  # type: ignore[arg-type]
    )
    assert client.max_streams == 3
    with pytest.raises(ConfigurationError, match="max_streams: must be between 0 and 4294967295, got 4294967296"):
        create_resilient_worker_client("http://127.0.0.1:50051", "w1", Index(2**32))  # type: ignore[arg-type]


def test_standalone_stream_ids_at_the_64_bit_boundaries(tmp_path: Path):
    top = 2**63 - 1

    async def check():
        client = create_standalone_worker_client(
            "w-edge", [Index(1), top], state_path=str(tmp_path / "s.db")
        )
        await client.start()
        async for leases in client.leases():
            assert Index(1) in leases and top in leases and top + 1 not in leases
            break
        assert client.can_process_stream(top) and client.can_process_stream(Index(1))
        assert not client.can_process_stream(top + 1)
        await client.record_stream_processing(top)
        await client.record_stream_processing(Index(1))
        with pytest.raises(StreamNotLeasedError, match=f"stream {top + 1} is not leased") as e:
            await client.record_stream_processing(Index(top + 1))
        assert e.value.stream_id == top + 1 and type(e.value.stream_id) is int
        health = await client.health_check()
        assert health["metrics"]["records_made"] == 2
        assert await client.release_streams([Index(1)]) is True
        with pytest.raises(TypeError, match="cannot be interpreted as an integer"):  # not hidden
            await client.release_streams(x for x in [top, "a"])  # type: ignore[arg-type]
        assert await client.request_streams(2) == [top]
        await client.shutdown()

    run(check())


@pytest.mark.parametrize(
    "streams, message",
    [
        ([1, 2**63], f"stream id {2**63} must be at most {2**63 - 1}"),
        ([0, 2**63], "stream id 0 must be greater than 0"),  # the first, as the Rust builder
        ([1, 10**5000], r"stream id \(an int of thousands of digits\) must be at most"),
        ([1, -(2**63) - 1], f"stream id {-(2**63) - 1} must be greater than 0"),
        ([1, -(2**63)], f"stream id {-(2**63)} must be greater than 0"),  # the Rust builder's check
        ([0], "stream id 0 must be greater than 0"),
        ([], "standalone mode needs at least one stream id"),
    ],
)
def test_standalone_stream_ids_are_checked(streams, message, tmp_path: Path):
    with pytest.raises(ConfigurationError, match=f"^invalid configuration: streams: {message}") as e:
        create_standalone_worker_client("w-alone", streams, state_path=str(tmp_path / "s.db"))
    assert e.value.setting == "streams"


@pytest.mark.parametrize("streams", [[1, "2"], "12", b"\x01\x02", 3, [1.0]])
def test_standalone_streams_of_the_wrong_type(streams, tmp_path: Path):
    with pytest.raises(TypeError, match="streams" if sys.version_info >= (3, 11) else None):
        create_standalone_worker_client("w-alone", streams, state_path=str(tmp_path / "s.db"))


def test_errors_pickle_with_their_attributes(tmp_path: Path):
    async def raised():
        client = create_standalone_worker_client("w-pickle", [1], state_path=str(tmp_path / "s.db"))
        with pytest.raises(StreamNotLeasedError) as e:
            await client.record_stream_processing(2**70)
        await client.shutdown()
        return e.value

    with pytest.raises(ConfigurationError) as config:
        create_resilient_worker_client("http://127.0.0.1:50051", "w1", 0)
    errors = [
        config.value,
        run(raised()),
        rwc.StateFileError("locked by another process", "/var/lib/w/s.db"),
        rwc.OrchestratorRejectedError("rejected", "INVALID_ARGUMENT", "count: must be > 0"),
        rwc.ClientShutDownError("the client is shut down"),
        rwc.CircuitBreakerOpenError("open", "open", 1.5),
        rwc.CircuitBreakerTimeoutError("timed out", 2.0),
    ]
    for error in errors:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error), error
        assert copy.args == error.args and vars(copy) == vars(error), error
    assert errors[0].setting == "max_streams" and errors[1].stream_id == 2**70


def test_the_package_exports_and_is_typed():
    pkg = Path(rwc.__file__).parent
    assert (pkg / "py.typed").exists()
    assert (pkg / "_native.pyi").exists()
    for name in rwc.__all__:
        assert hasattr(rwc, name), name
        assert getattr(rwc, name).__doc__, f"{name} has no docstring"


def test_credentials_a_worker_token(tmp_path: Path):
    auth = tmp_path / "auth"
    auth.write_text("worker w-token tok-0123456789abcdef0123\nadmin ops adm-0123456789abcdef0123\n")
    auth.chmod(0o600)
    orchestrator = Orchestrator(tmp_path, extra=["--auth-file", str(auth)])
    orchestrator.start()

    async def check():
        good = create_resilient_worker_client(
            orchestrator.url, "w-token", 2, state_path=str(tmp_path / "a.db"), auth_token="tok-0123456789abcdef0123"
        )
        assert await good.register() is True
        await good.shutdown()
        bad = create_resilient_worker_client(
            orchestrator.url, "w-token", 2, state_path=str(tmp_path / "b.db"),
            auth_token="tok-wrong-0123456789abcd", retry_base_delay=0.05,
        )  # fmt: skip
        # A refused token is not an exception: the worker goes on in local
        # mode (a token rotated too early must not stop processing), and
        # the health report says why.
        assert await bad.register() is False
        health = await bad.health_check()
        assert "credentials" in (health["local_mode_reason"] or ""), health
        await bad.shutdown()

    try:
        run(check())
    finally:
        orchestrator.stop()


def test_many_concurrent_records_each_complete_and_a_cancelled_one_does_not_disturb_them(
    orchestrator: Orchestrator, tmp_path: Path
):
    async def check():
        client = create_resilient_worker_client(orchestrator.url, "w-many", 4, state_path=str(tmp_path / "s.db"))
        await client.register()
        held = await client.request_streams(4)
        cancelled = asyncio.ensure_future(client.record_stream_processing(held[0]))
        await asyncio.sleep(0)  # the call is made, then its await cancelled
        cancelled.cancel()
        results = await asyncio.gather(*(client.record_stream_processing(held[i % 4]) for i in range(500)))
        assert results == [None] * 500
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        made = (await client.health_check())["metrics"]["records_made"]
        assert made == 501, made  # a cancelled await does not cancel the call
        await client.shutdown()
        assert (await client.health_check())["metrics"]["records_unsynced"] == 0

    run(check())


def test_a_cancelled_shutdown_still_shuts_down(orchestrator: Orchestrator, tmp_path: Path):
    async def check():
        client = create_resilient_worker_client(orchestrator.url, "w-cancel", 3, state_path=str(tmp_path / "s.db"))
        await client.start()
        stopping = asyncio.ensure_future(client.shutdown())
        await asyncio.sleep(0)
        stopping.cancel()

        async def deregistered():
            workers = {w["server_id"]: w for w in orchestrator.admin("workers")["workers"]}
            return workers["w-cancel"]["state"] != "live"

        await eventually(deregistered, "the deregistration of a shutdown whose await was cancelled")
        with pytest.raises(ClientShutDownError):
            await client.register()

    run(check())


def test_the_lease_iterator_of_a_client_shut_down_unused_ends_at_once(tmp_path: Path):
    async def check():
        client = create_resilient_worker_client("http://127.0.0.1:9", "w-unused", 3, state_path=str(tmp_path / "s.db"))
        await client.shutdown()
        assert [leases async for leases in client.leases()] == []
        assert not (tmp_path / "s.db").exists(), "shutting down an unused client builds nothing"

    run(check())


async def three_leases_and_their_iterator(orchestrator: Orchestrator, server_id: str, tmp_path: Path):
    """A registered client (no background loop) holding three streams, a
    lease iterator of it, and that iterator's first set."""
    client = create_resilient_worker_client(orchestrator.url, server_id, 3, state_path=str(tmp_path / "s.db"))
    await client.register()
    await client.request_streams(3)
    changes = client.leases()
    first = await changes.__anext__()
    assert len(first) == 3
    return client, changes, first


def test_a_cancelled_lease_step_loses_no_change(orchestrator: Orchestrator, tmp_path: Path):
    async def check():
        client, changes, first = await three_leases_and_their_iterator(orchestrator, "w-step", tmp_path)
        waiting = asyncio.ensure_future(changes.__anext__())  # waits for a change
        await asyncio.sleep(0)  # the step is submitted, then its await cancelled
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await client.release_streams(first.stream_ids[:1])
        after = await asyncio.wait_for(changes.__anext__(), patience(5))
        assert first.stream_ids[0] not in after, (first, after)
        with pytest.raises(TypeError, match="not a string"):
            await client.release_streams("1")
        await client.shutdown()

    run(check())


def test_a_lease_step_cancelled_after_it_took_the_change_loses_it_not(orchestrator: Orchestrator, tmp_path: Path):
    """The runtime takes the change and queues the set while the loop is
    busy; the await is then cancelled, so the set never reaches the
    application. The next step answers at once with the current set."""

    async def check():
        client, changes, first = await three_leases_and_their_iterator(orchestrator, "w-step2", tmp_path)
        await client.release_streams(first.stream_ids[:1])  # a change, not yet taken
        waiting = asyncio.ensure_future(changes.__anext__())
        await asyncio.sleep(0)  # the step is submitted
        # The loop blocked until the runtime has taken the change and queued
        # the set (the loop's completion socket turns readable); then cancel.
        completions = _client._completer(asyncio.get_running_loop()).fileno()
        assert select.select([completions], [], [], patience(5))[0], "the step never finished"
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        after = await asyncio.wait_for(changes.__anext__(), patience(5))
        assert first.stream_ids[0] not in after and len(after) == 2, (first, after)
        # Delivered now: the next step waits for a further change (none comes).
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(changes.__anext__(), 0.3)
        # One consumer per iterator.
        first_step = asyncio.ensure_future(changes.__anext__())
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="one consumer per iterator"):
            await changes.__anext__()
        first_step.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first_step
        await client.shutdown()  # the iterator ends (after an empty set, at most)
        assert all(len(leases) == 0 for leases in [leases async for leases in changes])

    run(check())


def test_credentials_tls_with_a_client_certificate(tmp_path: Path):
    import os
    import subprocess

    from conftest import orchestrator_bin

    certs_bin = Path(os.environ.get("TEST_CERTS_BIN", orchestrator_bin().parent / "test-certs"))
    if not os.access(certs_bin, os.X_OK):
        message = f"{certs_bin} not found (cargo build -p fixtures --bin test-certs)"
        if os.environ.get("CLIENT_CHECK_STRICT") == "1":
            pytest.fail(message)
        pytest.skip(message)
    certs = tmp_path / "certs"
    subprocess.run([str(certs_bin), str(certs), "--worker", "w-mtls"], check=True, capture_output=True)
    orchestrator = Orchestrator(
        tmp_path,
        extra=[
            "--tls-cert", str(certs / "server.pem"),
            "--tls-key", str(certs / "server.key"),
            "--tls-client-ca", str(certs / "ca.pem"),
        ],
    )  # fmt: skip
    port = orchestrator.start().rsplit(":", 1)[1]

    async def check():
        secure = create_resilient_worker_client(
            f"https://localhost:{port}", "w-mtls", 2, state_path=str(tmp_path / "a.db"),
            tls_ca_file=str(certs / "ca.pem"),
            tls_cert_file=str(certs / "worker-w-mtls.pem"), tls_key_file=str(certs / "worker-w-mtls.key"),
        )  # fmt: skip
        assert await secure.register() is True
        assert len(await secure.request_streams(2)) == 2
        await secure.shutdown()
        plain = create_resilient_worker_client(
            f"http://localhost:{port}", "w-plain", 2, state_path=str(tmp_path / "b.db"),
            retry_max_attempts=1, circuit_timeout=1.0, connect_timeout=1.0,
        )  # fmt: skip
        assert await plain.register() is False, "plaintext to a TLS orchestrator must not register"
        await plain.shutdown()

    try:
        run(check())
    finally:
        orchestrator.stop()
