"""Isolation and supervision beside a healthy neighbour: quarantine after a trap storm, fallback to the last known
good version, and the mailbox's on_full policies."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs
from test_engine import RecordingHost
from test_reload import guest, parse, replace_atomically, wait_for

from conftest import FIXTURES, Client, fixture, http, make_config, running, write_manifest
from micromono.config import load_config
from micromono.daemon import Daemon, StartupError
from micromono.engine import Engine, Instance
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
        await asyncio.sleep(1.05)  # the first quarantine lasts 1 s; then calls are let through again
        assert (await http(addr, "POST", "/hostile", b"fine")).body == b"fine"
        hostile = daemon.router.slots["hostile"].current
        assert hostile is not None and hostile.quarantines == 1


async def test_quarantine_backs_off_while_failures_continue(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, app(max_failures=1, failure_window=30.0))) as daemon:
        addr = daemon.addresses[0]
        hostile = daemon.router.slots["hostile"].current
        assert hostile is not None
        for expected in (1, 2):
            for _ in range(2):
                await http(addr, "POST", "/hostile", b"u")
            assert hostile.quarantines == expected
            seconds = hostile.quarantined_until - time.monotonic()
            assert (expected - 0.2) < seconds <= expected  # 1 s, then 2 s
            await asyncio.sleep(seconds + 0.05)


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
        "wait": {"wasm": fixture("echo.wat"), "routes": ["/wait"], "mailbox": 2, "on_full": "wait",
                 "on_full_wait": 0.3},
        "shed": {"wasm": fixture("echo.wat"), "routes": ["/shed"], "mailbox": 2, "on_full": "shed_oldest"},
    }  # fmt: skip
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
        await asyncio.sleep(0.05)
        wait = daemon.router.slots["wait"].current
        assert wait is not None
        daemon.router._wake(wait)  # the worker drains the messages, making room
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
    """Ask /echo over and over until `busy` is done; return each answer's latency in seconds.

    The client leaves the loop (which it shares with the daemon here) idle for a moment after each answer: an
    offloaded guest runs at idle priority on the loop's CPU (micromono/placement.py), so a loop kept busy without
    pause would leave it no time to finish."""
    latencies: list[float] = []
    client = await Client.connect(address)
    try:
        while not busy.done():
            started = time.monotonic()
            response = await client.request("POST", "/echo", b"still here")
            assert (response.status, response.body) == (200, b"still here")
            latencies.append(time.monotonic() - started)
            await asyncio.sleep(0.002)
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


async def test_a_long_running_service_moves_off_the_loop_and_keeps_calling(tmp_path: Path) -> None:
    steps = steps_for(0.1)
    async with running(make_config(tmp_path, slow_app(call_timeout=10.0))) as daemon:
        addr = daemon.addresses[0]
        slow = daemon.router.slots["slow"].current
        assert slow is not None and not slow.offloaded
        # Short runs stay on the loop.
        assert (await http(addr, "POST", "/slow", work(10, b"quick"))).body == b"quick"
        assert not slow.offloaded
        # A run well past offload_after (10 ms, plus the deadline clock's slack) runs to its end, and the service
        # is offloaded.
        assert (await http(addr, "POST", "/slow", work(steps, b"first"))).body == b"first"
        assert slow.offloaded
        # Now a long run happens on its own thread: the loop answers /echo meanwhile, and the guest's call and
        # send, handed back to the loop, still work.
        long_run = asyncio.create_task(http(addr, "POST", "/slow", work(steps * 6, b"second")))
        latencies = await answers_while(addr, long_run)
        response = long_run.result()
        assert (response.status, response.body) == (200, b"second")
        assert len(latencies) >= 10, latencies
        assert max(latencies) < 0.2, latencies
        offloaded = {entry["name"]: entry["offloaded"] for entry in daemon.status()["services"]}
        assert offloaded == {"slow": True, "echo": False, "hostile": False}
        families = {f.name: f for f in text_string_to_metric_families(render(daemon.registry).decode())}
        gauge = {s.labels["service"]: s.value for s in families["micromono_offloaded"].samples}
        assert gauge == {"slow": 1.0, "echo": 0.0, "hostile": 0.0}
        edge = slow.edges[b"echo"]
        assert (edge.ok, edge.messages) == (3, 3)
        assert slow.in_flight == 0 and daemon.router.slots["echo"].current.in_flight == 0  # type: ignore[union-attr]


async def test_offload_after_is_the_operators_choice(tmp_path: Path) -> None:
    steps = steps_for(0.1)
    config = make_config(tmp_path, slow_app(call_timeout=10.0), daemon={"offload_after": 5.0})
    async with running(config) as daemon:
        slow = daemon.router.slots["slow"].current
        assert slow is not None
        assert (await http(daemon.addresses[0], "POST", "/slow", work(steps, b"stays"))).body == b"stays"
        assert not slow.offloaded  # 0.1 s is within the 5 s this daemon allows a run on the loop


async def test_an_endless_loop_is_interrupted_off_the_loop_too(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, slow_app())) as daemon:
        addr = daemon.addresses[0]
        hostile = daemon.router.slots["hostile"].current
        assert hostile is not None
        started = time.monotonic()
        first = await http(addr, "POST", "/hostile", b"l")
        assert first.status == 504 and 0.3 <= time.monotonic() - started < 1.5
        assert hostile.offloaded
        spin = asyncio.create_task(http(addr, "POST", "/hostile", b"l"))
        latencies = await answers_while(addr, spin)
        assert spin.result().status == 504
        error = spin.result().json()
        assert (error["error"], error["service"]) == ("timeout", "hostile")
        assert len(latencies) >= 10 and max(latencies) < 0.2, latencies
        # The interrupted instances were replaced; the service still answers, from its thread.
        assert (await http(addr, "POST", "/hostile", b"fine")).body == b"fine"
        assert hostile.traps == 2


def offload_thread_ids(daemon: Daemon, service: str) -> list[int]:
    """The native thread ids of `service`'s offload thread (one per offloaded version)."""
    current = daemon.router.slots[service].current
    assert current is not None
    executor = daemon.router._offload_threads[current.version]
    return [thread.native_id for thread in executor._threads if thread.native_id is not None]


async def test_the_daemon_runs_on_one_cpu_and_offloaded_guests_at_idle_priority(tmp_path: Path) -> None:
    """placement.py: the loop thread on one CPU ("auto": the one it started on), offload threads there at
    SCHED_IDLE, compile threads on every CPU; the loop thread gets its CPUs back when the daemon stops."""
    before = os.sched_getaffinity(0)
    async with running(make_config(tmp_path, slow_app())) as daemon:
        assert daemon.placement is not None and daemon.placement.cpu in before
        cpu = daemon.placement.cpu
        assert os.sched_getaffinity(0) == {cpu} and daemon.status()["cpu"] == cpu
        assert daemon._compiler is not None
        compiled = await daemon.compile("again", fixture("echo.wat"))
        assert compiled.service == "again"
        compilers = [t.native_id for t in daemon._compiler._threads if t.native_id is not None]
        assert compilers and all(os.sched_getaffinity(tid) == before for tid in compilers)
        assert (await http(daemon.addresses[0], "POST", "/hostile", b"l")).status == 504  # offloaded now
        assert (await http(daemon.addresses[0], "POST", "/hostile", b"fine")).body == b"fine"  # on its thread
        (tid,) = offload_thread_ids(daemon, "hostile")
        assert os.sched_getscheduler(tid) == os.SCHED_IDLE and os.sched_getaffinity(tid) == {cpu}
    assert os.sched_getaffinity(0) == before


async def test_cpu_any_leaves_the_daemon_unpinned_and_offload_threads_nice(tmp_path: Path) -> None:
    before = os.sched_getaffinity(0)
    async with running(make_config(tmp_path, slow_app(), daemon={"cpu": "any"})) as daemon:
        assert daemon.placement is not None and daemon.placement.cpu is None and daemon.status()["cpu"] is None
        assert os.sched_getaffinity(0) == before
        assert (await http(daemon.addresses[0], "POST", "/hostile", b"l")).status == 504
        assert (await http(daemon.addresses[0], "POST", "/hostile", b"fine")).body == b"fine"
        (tid,) = offload_thread_ids(daemon, "hostile")
        assert os.sched_getscheduler(tid) == os.SCHED_OTHER and os.getpriority(os.PRIO_PROCESS, tid) == 19
        assert os.sched_getaffinity(tid) == before


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


async def test_an_offloaded_caller_gets_its_timeout_at_the_deadline_even_if_the_guest_has_not_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An offloaded guest runs at idle priority on the loop's CPU; with the loop busy, its thread may get no CPU
    even to see its deadline. The loop then answers the caller itself, at the deadline, and the next request waits
    until the guest has stopped. Here the guest "does not stop" for 1 s: a stand-in that sleeps off the GIL."""
    original = Instance.invoke

    def invoke(self: Instance, kind: int, request: bytes | memoryview) -> memoryview:
        if self.compiled.service == "hostile" and bytes(request).endswith(b"zz"):
            time.sleep(1.0)  # as a thread that gets no CPU until long past the deadline
        return original(self, kind, request)

    async with running(make_config(tmp_path, slow_app())) as daemon:
        addr = daemon.addresses[0]
        hostile = daemon.router.slots["hostile"].current
        assert hostile is not None
        assert (await http(addr, "POST", "/hostile", b"l")).status == 504  # the first spin offloads it
        assert hostile.offloaded
        monkeypatch.setattr(Instance, "invoke", invoke)
        started = time.monotonic()
        with capture_logs() as events:
            response = await http(addr, "POST", "/hostile", b"zz")
        took = time.monotonic() - started
        assert response.status == 504, response.body
        error = response.json()
        assert (error["error"], error["service"]) == ("timeout", "hostile")
        assert error["message"] == "service 'hostile' ran past its deadline and was interrupted"
        assert 0.3 <= took < 0.8, took  # call_timeout 0.3 s (slow_app) and the slack, not the guest's 1 s
        assert daemon.placement is not None
        (starved,) = [e for e in events if e["event"] == "router.offload.starved"]
        assert (starved["service"], starved["cpu"]) == ("hostile", daemon.placement.cpu)
        assert "docs/operations.md" in starved["hint"]
        failures = hostile.failed
        # The next request runs once the guest has stopped; the late run counts as a timeout.
        assert (await http(addr, "POST", "/hostile", b"fine")).body == b"fine"
        assert time.monotonic() - started >= 1.0
        assert hostile.failed == failures + 1 and hostile.in_flight == 0


async def test_shutdown_waits_for_an_offloaded_call(tmp_path: Path) -> None:
    steps = steps_for(0.1)
    config = make_config(tmp_path, slow_app(call_timeout=10.0))
    async with running(config) as daemon:
        addr = daemon.addresses[0]
        assert (await http(addr, "POST", "/slow", work(steps, b"first"))).body == b"first"
        long_run = asyncio.create_task(http(addr, "POST", "/slow", work(steps * 4, b"last")))
        await asyncio.sleep(0.05)
    # Leaving `running` shut the daemon down gracefully: the call in flight on the offload thread finished first.
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
        assert (await http(addr, "POST", "/slow", work(steps, b"first"))).body == b"first"  # now offloaded
        client = await Client.connect(addr)
        client.send("POST", "/slow", work(steps * 4, b"one"))
        await asyncio.sleep(0.05)
        assert daemon.ingress is not None
        [conn] = daemon.ingress.connections
        assert conn.known is not None and conn.pending
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


async def test_stopping_interrupts_an_offloaded_call_with_a_long_deadline(tmp_path: Path) -> None:
    """A guest spinning on its offload thread with 60 s left is interrupted when the daemon stops after its grace
    period: the thread ends, so the process can exit."""
    services = {"hostile": {"wasm": fixture("hostile.wat"), "routes": ["/hostile"], "call_timeout": 60.0}}
    config = make_config(tmp_path, services, daemon={"graceful_timeout": 0.3})
    async with running(config) as daemon:
        hostile = daemon.router.slots["hostile"].current
        assert hostile is not None
        hostile.offloaded = True  # as if an earlier long run had moved it off the loop (that would take 60 s here)
        spin = asyncio.create_task(http(daemon.addresses[0], "POST", "/hostile", b"l"))
        await wait_for(lambda: bool(daemon.router._offload_running))
        threads = list(daemon.router._offload_threads.values())
        assert len(threads) == 1
        workers = list(threads[0]._threads)
        started = time.monotonic()
    # Leaving `running` stopped the daemon: past the 0.3 s grace period the spin was interrupted.
    assert time.monotonic() - started < 5.0
    assert all(not worker.is_alive() for worker in workers)
    with contextlib.suppress(ConnectionError, OSError):
        await spin  # the connection was aborted at shutdown
