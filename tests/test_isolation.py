"""Isolation and supervision beside a healthy neighbour: quarantine after a trap storm, fallback to the last known
good version, and the mailbox's on_full policies."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs
from test_engine import RecordingHost
from test_reload import guest, parse, replace_atomically, wait_for
from test_service import FakeClock

from conftest import FIXTURES, Client, fixture, http, make_config, running, write_manifest
from micromono.config import load_config
from micromono.daemon import StartupError
from micromono.engine import Engine
from micromono.metrics import render


def app(**hostile: object) -> dict[str, dict[str, object]]:
    return {
        "hostile": {"wasm": fixture("hostile.wat"), "routes": ["/hostile"], **hostile},
        "healthy": {"wasm": fixture("echo.wat"), "routes": ["/echo"]},
    }


async def test_trap_storm_quarantines_the_service_and_it_is_retried(tmp_path: Path) -> None:
    config = make_config(tmp_path, app(max_failures=3, failure_window=5.0))
    async with running(config) as daemon:
        addr = daemon.addresses[0]
        hostile = daemon.router.slots["hostile"].current
        assert hostile is not None
        # The supervisor's clock, from now (daemon.status reads the real one): the quarantine ends when the test says.
        clock = hostile.clock = FakeClock(time.monotonic())
        for _ in range(4):
            assert (await http(addr, "POST", "/hostile", b"u")).status == 500
            assert (await http(addr, "POST", "/echo", b"fine")).body == b"fine"  # the neighbour never notices
        refused = await http(addr, "POST", "/hostile", b"fine")
        assert refused.status == 503
        message = refused.json()["message"]
        assert message.startswith("service 'hostile' is quarantined for another ")
        assert "4 failures (traps, timeouts, ABI violations) within 5 s, more than max_failures = 3" in message
        status = daemon.status()["services"][0]
        assert status["quarantine"]["count"] == 1
        clock.now += 0.99
        assert (await http(addr, "POST", "/hostile", b"fine")).status == 503
        clock.now = hostile.quarantined_until  # the first quarantine lasts 1 s; then calls are let through again
        assert (await http(addr, "POST", "/hostile", b"fine")).body == b"fine"
        assert hostile.quarantines == 1


async def test_quarantine_backs_off_while_failures_continue(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, app(max_failures=1, failure_window=30.0))) as daemon:
        addr = daemon.addresses[0]
        hostile = daemon.router.slots["hostile"].current
        assert hostile is not None
        clock = hostile.clock = FakeClock()
        for expected in (1, 2):
            for _ in range(2):
                await http(addr, "POST", "/hostile", b"u")
            assert hostile.quarantines == expected
            assert hostile.quarantined_until - clock.now == expected  # 1 s, then 2 s
            clock.now = hostile.quarantined_until


async def test_quarantined_version_falls_back_to_the_last_known_good(tmp_path: Path) -> None:
    (tmp_path / "svc.wat").write_text(guest("v1"))
    path = write_manifest(
        tmp_path,
        {"svc": {"wasm": tmp_path / "svc.wat", "routes": ["/svc"], "instances": 1, "max_failures": 2}},
        {"rollback_error_rate": 1.0},  # rollback off: the supervisor must act
    )
    async with running(load_config(path)) as daemon:
        addr = daemon.addresses[0]
        assert parse((await http(addr, "GET", "/svc")).body) == ("v1", 1)
        good = daemon.router.slots["svc"].current
        replace_atomically(tmp_path / "svc.wat", guest("v2", trap=True))
        await wait_for(lambda: daemon.router.slots["svc"].current is not good)
        for _ in range(3):
            assert (await http(addr, "GET", "/svc")).status == 500
        await wait_for(lambda: daemon.reloader is not None and daemon.reloader.results["svc"].outcome == "fallback")
        response = await http(addr, "GET", "/svc")
        assert parse(response.body)[0] == "v1"
        assert daemon.reloader is not None
        assert daemon.reloader.results["svc"].reason.startswith("quarantined (3 failures")


async def test_on_full_reject_wait_and_shed_oldest(tmp_path: Path) -> None:
    services = {
        "reject": {"wasm": fixture("echo.wat"), "routes": ["/reject"], "mailbox": 2},
        "wait": {
            "wasm": fixture("echo.wat"),
            "routes": ["/wait"],
            "mailbox": 2,
            "on_full": "wait",
            "on_full_wait": 0.3,
        },
        "shed": {"wasm": fixture("echo.wat"), "routes": ["/shed"], "mailbox": 2, "on_full": "shed_oldest"},
    }
    async with running(make_config(tmp_path, services)) as daemon:
        addr = daemon.addresses[0]

        def fill(name: str) -> None:  # two queued messages; no worker is woken, so they stay
            service = daemon.router.slots[name].current
            assert service is not None
            service.mailbox.put_nowait((3, b"a", None))
            service.mailbox.put_nowait((3, b"b", None))

        fill("reject")
        assert (await http(addr, "POST", "/reject", b"x")).status == 503
        # wait: held until there is room, or refused after on_full_wait.
        fill("wait")
        started = time.monotonic()
        assert (await http(addr, "POST", "/wait", b"x")).status == 503
        assert 0.25 < time.monotonic() - started < 2.0
        client = await Client.connect(addr)
        client.send("POST", "/wait", b"patient")
        assert daemon.ingress is not None
        connections = daemon.ingress.connections
        await wait_for(lambda: any(conn.pending for conn in connections))  # held, waiting for room
        wait = daemon.router.slots["wait"].current
        assert wait is not None
        daemon.router.top_level.wake(wait)  # the worker drains the messages, making room
        response = await client.read()
        assert (response.status, response.body) == (200, b"patient")
        await client.close()
        # shed_oldest: the oldest queued message is dropped for the new request.
        fill("shed")
        client = await Client.connect(addr)
        client.send("POST", "/shed", b"newest")
        response = await client.read()
        assert (response.status, response.body) == (200, b"newest")
        shed = daemon.router.slots["shed"].current
        assert shed is not None and shed.mailbox.statistics().shed == 1
        await client.close()


# --- long calls leave the event loop ---------------------------------------------------------------------------


def slow_app(**slow: object) -> dict[str, dict[str, object]]:
    return {
        "slow": {"wasm": fixture("slow.wat"), "routes": ["/slow"], "calls": ["echo"], **slow},
        "echo": {"wasm": fixture("echo.wat"), "routes": ["/echo"]},
        "hostile": {"wasm": fixture("hostile.wat"), "routes": ["/hostile"], "call_timeout": 0.3},
    }


def work(steps: int, payload: bytes) -> bytes:
    return steps.to_bytes(4, "little") + payload


async def answers_while(address: tuple[str, int], busy: asyncio.Task[object]) -> list[float]:
    """Ask /echo over and over until `busy` is done; return each answer's latency in seconds."""
    latencies: list[float] = []
    client = await Client.connect(address)
    try:
        while not busy.done():
            started = time.monotonic()
            response = await client.request("POST", "/echo", b"still here")
            assert (response.status, response.body) == (200, b"still here")
            latencies.append(time.monotonic() - started)
    finally:
        await client.close()
    return latencies


def steps_for(seconds: float) -> int:
    """Countdown steps of slow.wat that take about `seconds` on this machine (measured, not assumed)."""
    with Engine(RecordingHost(call_result=0), cache_dir=None) as engine:
        instance = engine.compile("slow", FIXTURES / "slow.wat").instantiate(memory_limit=1 << 20)
        try:
            head = (3).to_bytes(2, "little") + bytes(2) + (1).to_bytes(4, "little") + bytes(4)
            steps = 1_000_000
            body = work(steps, b"x")
            request = head + len(body).to_bytes(4, "little") + b"GET" + b"/" + body
            started = time.monotonic()
            instance.deadline = started + 10
            instance.invoke(1, request)
            per_step = (time.monotonic() - started) / steps
        finally:
            instance.close()
    return max(1, int(seconds / per_step))


async def test_a_long_running_service_is_preempted_and_keeps_calling(tmp_path: Path) -> None:
    """A run far longer than a slice gives the loop back between slices: /echo is answered meanwhile, the long
    run's calls and sends still work, and status and metrics count the preempted runs."""
    steps = steps_for(0.1)
    async with running(make_config(tmp_path, slow_app(call_timeout=10.0))) as daemon:
        addr = daemon.addresses[0]
        slow = daemon.router.slots["slow"].current
        assert slow is not None
        assert (await http(addr, "POST", "/slow", work(10, b"quick"))).body == b"quick"
        long_run = asyncio.create_task(http(addr, "POST", "/slow", work(steps * 6, b"long")))
        latencies = await answers_while(addr, long_run)
        response = long_run.result()
        assert (response.status, response.body) == (200, b"long")
        assert len(latencies) >= 10, latencies
        assert max(latencies) < 0.2, latencies  # the run takes ~0.6 s: answers came between its slices
        assert slow.preempted >= 1
        # (echo's runs are short, but one that a tick catches is preempted too: with the loop busy, slices are
        # short; so status and metrics are checked against each service's own count.)
        echo = daemon.router.slots["echo"].current
        assert echo is not None
        status = {entry["name"]: entry["preempted"] for entry in daemon.status()["services"]}
        assert (status["slow"], status["echo"]) == (slow.preempted, echo.preempted)
        families = {f.name: f for f in text_string_to_metric_families(render(daemon.registry).decode())}
        counter = {s.labels["service"]: s.value for s in families["micromono_preempted_runs"].samples}
        assert (counter["slow"], counter["echo"]) == (slow.preempted, echo.preempted)
        edge = slow.edges[b"echo"]
        assert (edge.ok, edge.messages) == (2, 2)
        assert slow.in_flight == 0 and echo.in_flight == 0


async def test_an_endless_loop_is_interrupted_while_the_loop_serves_others(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, slow_app())) as daemon:
        addr = daemon.addresses[0]
        hostile = daemon.router.slots["hostile"].current
        assert hostile is not None
        spin = asyncio.create_task(http(addr, "POST", "/hostile", b"l"))
        latencies = await answers_while(addr, spin)
        assert spin.result().status == 504
        error = spin.result().json()
        assert (error["error"], error["service"]) == ("timeout", "hostile")
        assert error["message"] == "service 'hostile' ran past its deadline and was interrupted"
        # The loop kept serving while the guest spun: a loop held for the whole 0.3 s deadline would answer once
        # or twice, each after most of it. (Not the max: one answer may wait on a machine busy with other work.)
        assert len(latencies) >= 10 and statistics.median(latencies) < 0.05, latencies
        # The interrupted instance was replaced; the service still answers.
        assert (await http(addr, "POST", "/hostile", b"fine")).body == b"fine"
        assert hostile.traps == 1


async def test_the_daemon_runs_on_one_cpu(tmp_path: Path) -> None:
    """placement.py: the loop thread on one CPU ("auto": the one it started on); it gets its CPUs back when the
    daemon stops (compile threads: test_placement.py)."""
    before = os.sched_getaffinity(0)
    async with running(make_config(tmp_path, slow_app())) as daemon:
        assert daemon.placement is not None and daemon.placement.cpu in before
        cpu = daemon.placement.cpu
        assert os.sched_getaffinity(0) == {cpu} and daemon.status()["cpu"] == cpu
    assert os.sched_getaffinity(0) == before


async def test_cpu_any_leaves_the_daemon_unpinned(tmp_path: Path) -> None:
    before = os.sched_getaffinity(0)
    async with running(make_config(tmp_path, slow_app(), daemon={"cpu": "any"})) as daemon:
        assert daemon.placement is not None and daemon.placement.cpu is None and daemon.status()["cpu"] is None
        assert os.sched_getaffinity(0) == before
        assert (await http(daemon.addresses[0], "POST", "/hostile", b"fine")).body == b"fine"


async def test_a_cpu_the_process_may_not_use_is_refused_at_startup(tmp_path: Path) -> None:
    allowed = os.sched_getaffinity(0)
    config = make_config(tmp_path, slow_app(), daemon={"cpu": 4095})
    with pytest.raises(StartupError) as info:
        async with running(config):
            pass
    listed = ", ".join(str(c) for c in sorted(allowed))
    assert info.value.problems == [
        f'daemon.cpu = 4095: this process may run on CPUs {listed} only; pick one of them, "auto", or "any"'
    ]
    assert os.sched_getaffinity(0) == allowed


async def test_shutdown_waits_for_a_suspended_run(tmp_path: Path) -> None:
    steps = steps_for(0.1)
    config = make_config(tmp_path, slow_app(call_timeout=10.0))
    async with running(config) as daemon:
        addr = daemon.addresses[0]
        long_run = asyncio.create_task(http(addr, "POST", "/slow", work(steps * 4, b"last")))
        await wait_for(lambda: len(daemon.router.scheduler) > 0)
    # Leaving `running` shut the daemon down gracefully: the run in flight, between slices, finished first.
    response = await long_run
    assert (response.status, response.body) == (200, b"last")


async def test_a_request_repeated_during_shutdown_is_answered_with_connection_close(tmp_path: Path) -> None:
    """A connection owed a response when shutdown begins stays open for it; the same request sent again behind it
    (the head the connection remembers, served without the parser) is answered too, with `connection: close`,
    and the connection then closes."""
    steps = steps_for(0.1)
    config = make_config(tmp_path, slow_app(call_timeout=10.0))
    daemon_cm = running(config)
    daemon = await daemon_cm.__aenter__()
    shutdown: asyncio.Task[object] | None = None
    try:
        addr = daemon.addresses[0]
        client = await Client.connect(addr)
        client.send("POST", "/slow", work(steps * 4, b"one"))
        assert daemon.ingress is not None
        connections = daemon.ingress.connections
        await wait_for(lambda: any(conn.pending for conn in connections))  # suspended, its answer owed
        [conn] = connections
        assert conn.known is not None
        shutdown = asyncio.create_task(daemon_cm.__aexit__(None, None, None))
        await wait_for(lambda: conn.closing)
        assert conn.pending
        client.send("POST", "/slow", work(steps, b"two"))
        first, second = await client.read(), await client.read()
        assert (first.status, first.body, second.status, second.body) == (200, b"one", 200, b"two")
        assert "connection" not in first.headers and second.headers.get("connection") == "close"
        assert await client.closed_by_peer()
    finally:
        await (shutdown if shutdown is not None else daemon_cm.__aexit__(None, None, None))


async def test_stopping_cancels_a_suspended_run_with_a_long_deadline(tmp_path: Path) -> None:
    """A guest spinning with 60 s left is cancelled when the daemon stops after its grace period, so the process
    can exit; its caller is answered (503) if its connection is still open."""
    services = {"hostile": {"wasm": fixture("hostile.wat"), "routes": ["/hostile"], "call_timeout": 60.0}}
    config = make_config(tmp_path, services, daemon={"graceful_timeout": 0.3})
    async with running(config) as daemon:
        spin = asyncio.create_task(http(daemon.addresses[0], "POST", "/hostile", b"l"))
        await wait_for(lambda: len(daemon.router.scheduler) > 0)
        hostile = daemon.router.slots["hostile"].current
        assert hostile is not None and hostile.running is not None
        started = time.monotonic()
        with capture_logs() as events:
            await daemon.shutdown()
    assert time.monotonic() - started < 5.0
    assert [e["runs"] for e in events if e["event"] == "router.runs.cancelled"] == [1]
    assert len(daemon.router.scheduler) == 0
    with contextlib.suppress(ConnectionError, OSError):
        await spin  # the connection was aborted at shutdown
