"""The admin listener over real sockets; Prometheus text parsed with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import gc
import json
import struct
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import micromono.daemon
from conftest import Client, fixture, http, make_config, running
from micromono import admin
from micromono.metrics import EdgeCounters, ServiceCounters, Snapshot, reference_text, render
from micromono.reload import Reloader


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def app() -> dict[str, dict[str, object]]:
    return {
        "front": {"wasm": fixture("caller.wat"), "routes": ["/front"], "calls": ["echo", "hostile"]},
        "echo": {"wasm": fixture("echo.wat"), "routes": ["/echo"], "mailbox": 7, "instances": 3},
        "hostile": {"wasm": fixture("hostile.wat"), "routes": ["/hostile"]},
    }


async def test_metrics_count_calls_by_edge_and_outcome(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, app())) as daemon:
        addr = daemon.addresses[0]
        for _ in range(5):
            assert (await http(addr, "POST", "/echo", b"x")).status == 200
        request = struct.pack("<iII", 40, 64, 4) + b"echo" + b"y" * 64
        assert (await http(addr, "POST", "/front", request)).status == 200
        assert (await http(addr, "POST", "/hostile", b"u")).status == 500
        assert (await http(addr, "GET", "/missing")).status == 404
        assert daemon.metrics_address is not None
        response = await http(daemon.metrics_address, "GET", "/metrics")
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        got = samples(response.body.decode())

    def value(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    assert value("micromono_calls_total", caller="ingress", callee="echo", outcome="ok") == 5
    assert value("micromono_calls_total", caller="front", callee="echo", outcome="ok") == 40
    assert value("micromono_calls_total", caller="ingress", callee="hostile", outcome="trap") == 1
    assert value("micromono_instance_failures_total", service="hostile") == 1
    assert value("micromono_http_responses_total", code="200") == 6
    assert value("micromono_http_responses_total", code="404") == 1
    assert value("micromono_mailbox_capacity", service="echo") == 7
    assert value("micromono_mailbox_depth", service="echo") == 0
    assert value("micromono_instances", service="echo") == 1
    assert value("micromono_guest_memory_bytes", service="echo") == 2 * 65536
    # 1 in 16 calls is timed: echo served 45 calls, so 3 samples (calls 0, 16 and 32 on the front edge, 0 on ingress)
    count = value("micromono_call_duration_seconds_count", service="echo")
    assert 1 <= count <= 45
    assert value("micromono_call_duration_seconds_bucket", service="echo", le="+Inf") == count
    info = [k for k in got if k[0] == "micromono_service_info"]
    assert len(info) == 3


async def test_status_and_healthz(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, app())) as daemon:
        assert daemon.metrics_address is not None
        health = await http(daemon.metrics_address, "GET", "/healthz")
        assert (health.status, health.body) == (200, b"ok\n")
        status = (await http(daemon.metrics_address, "GET", "/status")).json()
        assert status["state"] == "serving"
        assert [s["name"] for s in status["services"]] == ["front", "echo", "hostile"]
        echo = status["services"][1]
        assert echo["instances"] == {"live": 1, "idle": 1, "max": 3}
        assert echo["mailbox"] == {"queued": 0, "capacity": 7}
        assert len(echo["sha256"]) == 64 and echo["version"].startswith(echo["sha256"][:12])
        assert (await http(daemon.metrics_address, "GET", "/nope")).status == 404
        assert (await http(daemon.metrics_address, "POST", "/metrics")).status == 405


async def test_metrics_listener_can_be_disabled(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, app(), daemon={"metrics_listen": ""})) as daemon:
        assert daemon.metrics_address is None


Family = tuple[str, str, str, list[tuple[str, dict[str, str], float]]]


def families(text: bytes) -> list[Family]:
    """Every family with its type, help and samples, in the order the text has them."""
    return [
        (f.name, f.type, f.documentation, [(s.name, s.labels, s.value) for s in f.samples])
        for f in text_string_to_metric_families(text.decode())
    ]


def edge(caller: str, callee: str, ok: int, errors: dict[str, int] | None = None, messages: int = 0,
         message_errors: dict[str, int] | None = None) -> EdgeCounters:  # fmt: skip
    return EdgeCounters(caller, callee, ok, tuple((errors or {}).items()), messages,
                        tuple((message_errors or {}).items()))  # fmt: skip


def counters(name: str, *, routed: bool = True, latency: tuple[int, ...] = (), latency_sum: float = 0.0,
             memory_sizes: tuple[int, ...] = (), preempted: int = 0, ok: int = 0) -> ServiceCounters:  # fmt: skip
    return ServiceCounters(
        name, f"{name}-v1", "ab" * 32, routed, latency, latency_sum, queued=2, capacity=1024, rejected=3, shed=4,
        live=len(memory_sizes), traps=5, memory_sizes=list(memory_sizes), memory_limit=128 << 20, quarantines=1,
        preempted=preempted, ok=ok, failed=7,
    )  # fmt: skip


def test_the_text_writer_matches_prometheus_client_sample_by_sample() -> None:
    """`render(snapshot)` writes the text itself; prometheus_client's rendering of the same snapshot is the
    reference, including escaped label values, values from 1e6 up (Go's exponent form) and float sums."""
    latency = (0, 3, 0, 1_500_000, *([0] * 16), 2, 1)
    snapshot = Snapshot(
        services=[
            counters("busy", latency=latency, latency_sum=12.345678901, memory_sizes=(65536, 128 << 20), ok=10**7),
            counters("idle"),
            counters("worker", routed=False, preempted=3),
            counters("batch", routed=False),
        ],
        retired=[("busy", "busy-v0", 2_000_000, 1)],
        edges=[
            edge("ingress", "busy", 9, {"trap": 2, "timeout": 1}),
            edge("ingress", "idle", 0),
            edge("ingress", "worker", 0),  # no routes and no traffic: no series
            edge("ingress", "batch", 0, {"trap": 1}),  # no routes, yet an error: shown
            edge("busy", "worker", 4, {"abi_violation": 1}, messages=3, message_errors={"overloaded": 2}),
            edge("worker", 'odd"na\\me\n', 0),
        ],
        refused=[(("busy", "not_allowed"), 6), (("ingress", 'we"ird'), 1)],
        statuses=[(404, 2), (200, 12_345_678)],
        connections=3,
        reloads=[(("busy", "swapped"), 2), (("services.toml", "unchanged"), 1)],
    )
    written, reference = families(render(snapshot)), families(reference_text(snapshot))
    assert written == reference
    series = {(name, tuple(sorted(labels.items()))) for _, _, _, samples in written for name, labels, _ in samples}
    assert ("micromono_calls_total", (("callee", "batch"), ("caller", "ingress"), ("outcome", "trap"))) in series
    assert not any(name == "micromono_calls_total" and ("callee", "worker") in labels and ("caller", "ingress")
                   in labels for name, labels in series)  # fmt: skip
    assert not any(name.startswith("micromono_call_duration") and ("service", "idle") in labels
                   for name, labels in series)  # fmt: skip


def test_status_json_is_written_in_pieces_as_json_dumps_would() -> None:
    """/status serializes in pieces (admin._json) to let go of the GIL between them: the bytes must not change."""
    document = {
        "state": "serving",
        "services": [
            {"name": f"s{i}", "calls": {"ok": i, "failed": 0}, "quarantine": None, "tags": ["é", 1.5]}
            for i in range(500)
        ],
    }
    assert admin._json(document) == json.dumps(document, indent=2).encode() + b"\n"


async def test_metrics_answer_equals_the_synchronous_rendering(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, app())) as daemon:
        assert daemon.metrics_address is not None
        # One kept-alive ingress connection for all the traffic: the open-connections gauge stays put meanwhile.
        client = await Client.connect(daemon.addresses[0])
        try:
            for _ in range(20):
                assert (await client.request("POST", "/echo", b"x")).status == 200
            request = struct.pack("<iII", 3, 16, 4) + b"echo" + b"y" * 16
            assert (await client.request("POST", "/front", request)).status == 200
            assert (await client.request("POST", "/hostile", b"u")).status == 500
            assert (await client.request("GET", "/missing")).status == 404
            response = await http(daemon.metrics_address, "GET", "/metrics")
            assert response.status == 200
            assert families(response.body) == families(render(daemon.registry))
            snapshot = await daemon.registry.snapshot()
            assert families(render(snapshot)) == families(reference_text(snapshot))
        finally:
            await client.close()


async def test_pipelined_answers_leave_in_request_order(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, app())) as daemon:
        assert daemon.metrics_address is not None
        client = await Client.connect(daemon.metrics_address)
        try:
            # One write: /metrics and /status are still being made in a worker thread when /healthz, answered at
            # once, is parsed. Nothing is answered after the request that asks to close.
            client.send_raw(
                b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n"
                b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
                b"GET /status HTTP/1.1\r\nHost: t\r\n\r\n"
                b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n"
                b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
            )
            metrics = await client.read()
            assert metrics.status == 200 and metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
            assert "micromono_service_info" in {name for name, _, _, _ in families(metrics.body)}
            assert (await client.read()).body == b"ok\n"
            assert [s["name"] for s in (await client.read()).json()["services"]] == ["front", "echo", "hostile"]
            assert (await client.read()).status == 404
            last = await client.read()
            assert last.status == 200 and not last.keep_alive and families(last.body)
            assert await client.closed_by_peer()
        finally:
            await client.close()


async def test_head_requests_get_the_head_without_the_body(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, app())) as daemon:
        assert daemon.metrics_address is not None
        reader, writer = await asyncio.open_connection(*daemon.metrics_address)
        try:
            # Pipelined: if a HEAD answer carried a body, the next answer would be read from the middle of it.
            writer.write(
                b"HEAD /metrics HTTP/1.1\r\nHost: t\r\n\r\n"
                b"HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
                b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            )
            heads = []
            for _ in range(3):
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                heads.append(head)
                assert head.startswith(b"HTTP/1.1 200 ")
            assert int(heads[0].lower().split(b"content-length: ")[1].split(b"\r\n")[0]) > 1000
            assert await asyncio.wait_for(reader.read(), 30) == b"ok\n"  # the GET's body, then the close
        finally:
            writer.close()


class GatedRender:
    """Stands in for the daemon's `render`: in its worker thread, waits until the test opens the gate."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.started = asyncio.Event()
        self.gate = threading.Event()
        self.threads: list[int] = []
        self.sources: list[Any] = []

    def __call__(self, source: Any) -> bytes:
        self.threads.append(threading.get_ident())
        self.sources.append(source)
        self.loop.call_soon_threadsafe(self.started.set)
        if not self.gate.wait(timeout=60):
            raise TimeoutError("the test never opened the gate")
        return render(source)


@asynccontextmanager
async def gated_render(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[GatedRender, list[dict[str, Any]]]]:
    """A GatedRender in place of the daemon's render, and every error the event loop reports meanwhile."""
    loop = asyncio.get_running_loop()
    gated = GatedRender(loop)
    monkeypatch.setattr(micromono.daemon, "render", gated)
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        yield gated, errors
    finally:
        gated.gate.set()  # a thread left waiting would hold up the loop's close


async def test_the_loop_serves_while_metrics_are_formatted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with gated_render(monkeypatch) as (gated, errors), running(make_config(tmp_path, app())) as daemon:
        assert daemon.metrics_address is not None
        scrape = asyncio.create_task(http(daemon.metrics_address, "GET", "/metrics"))
        await gated.started.wait()
        # The formatting has begun and cannot end before the gate opens: whatever is answered now, the loop
        # answered while it ran.
        assert (await http(daemon.addresses[0], "POST", "/echo", b"meanwhile")).body == b"meanwhile"
        assert (await http(daemon.metrics_address, "GET", "/healthz")).status == 200
        assert (await http(daemon.metrics_address, "GET", "/status")).status == 200
        assert not scrape.done()
        gated.gate.set()
        response = await scrape
        assert response.status == 200 and families(response.body)
        assert gated.threads == [gated.threads[0]] and gated.threads[0] != threading.get_ident()
        assert isinstance(gated.sources[0], Snapshot)  # the thread reads the copy, never the live registry
    assert errors == []


async def test_a_client_gone_before_its_metrics_answer_breaks_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with gated_render(monkeypatch) as (gated, errors), running(make_config(tmp_path, app())) as daemon:
        assert daemon.metrics_address is not None
        client = await Client.connect(daemon.metrics_address)
        client.send("GET", "/metrics")
        client.send("GET", "/healthz")
        await gated.started.wait()
        client.writer.transport.abort()
        gated.gate.set()
        response = await http(daemon.metrics_address, "GET", "/metrics")
        assert response.status == 200 and families(response.body)
        assert (await http(daemon.metrics_address, "GET", "/healthz")).body == b"ok\n"
    assert errors == []


async def test_stopping_does_not_wait_for_a_render(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with gated_render(monkeypatch) as (gated, errors), running(make_config(tmp_path, app())) as daemon:
        assert daemon.metrics_address is not None
        client = await Client.connect(daemon.metrics_address)
        try:
            client.send("GET", "/metrics")
            await gated.started.wait()
            await asyncio.wait_for(daemon.shutdown(), timeout=30)  # the gate stays shut: the render still runs
            assert daemon.stopping and not gated.gate.is_set()
            gated.gate.set()
            response = await client.read()  # a connection that is still open gets its answer all the same
            assert response.status == 200 and families(response.body)
        finally:
            await client.close()
    assert errors == []


def many_services(tmp_path: Path, n: int) -> dict[str, dict[str, object]]:
    """`n` routed echo services from one file (compiled once, an instance each); `s0` from a file of its own."""
    shared, own = tmp_path / "echo.wat", tmp_path / "s0.wat"
    shared.write_bytes(fixture("echo.wat").read_bytes())
    own.write_bytes(fixture("echo.wat").read_bytes())
    return {f"s{i}": {"wasm": own if i == 0 else shared, "routes": [f"/s/{i}"]} for i in range(n)}


def series(text: bytes) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    return [(name, tuple(sorted(labels.items()))) for _, _, _, samples in families(text) for name, labels, _ in samples]


async def test_a_scrape_of_many_services_holds_the_loop_a_step_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The counters of 2,000 services take ~8 ms to copy: a scrape copies them in steps of ~0.5 ms
    (`DaemonCollector.STEP`), and the loop serves between steps."""
    n = 2000
    config = make_config(tmp_path, many_services(tmp_path, n), daemon={"watch": False})
    async with running(config) as daemon:
        assert daemon.metrics_address is not None
        collector = daemon.registry.reader
        # With no time per step, it yields after every ingress edge and every service: nothing is read in one go.
        monkeypatch.setattr(collector, "STEP", 0.0)
        steps = collector.snapshot_steps()
        yields = 0
        while True:
            try:
                next(steps)
            except StopIteration as done:
                stepped = done.value
                break
            yields += 1
        assert yields == 2 * n  # one edge and one service each
        assert render(stepped) == render(collector.snapshot())  # nothing ran in between: the same counters
        monkeypatch.undo()

        # Through /metrics, with an event-loop heartbeat. What it measures is the loop thread's CPU time between
        # beats, not the wall-clock gaps: this test's hosts stall whole VMs for ~100 ms at times (a sampler in
        # another process saw no samples either), and other processes may hold the loop's CPU. Stepped, the most
        # the loop ran between two beats was ~2 ms here; in one go the copy alone took 8-20 ms. The cyclic GC is
        # frozen, as the daemon freezes its startup objects (daemon.run): a full collection over 2,000 services'
        # objects takes ~90 ms and is not what this measures.
        beats: list[float] = []
        stop = asyncio.Event()

        async def heartbeat() -> None:
            while not stop.is_set():
                beats.append(time.thread_time())
                await asyncio.sleep(0.001)

        gc.collect()
        gc.freeze()
        beating = asyncio.create_task(heartbeat())
        try:
            for _ in range(3):
                response = await http(daemon.metrics_address, "GET", "/metrics")
                assert response.status == 200
        finally:
            stop.set()
            await beating
            gc.unfreeze()
        assert sum(1 for name, _ in series(response.body) if name == "micromono_service_info") == n
        held = [b - a for a, b in zip(beats, beats[1:], strict=False)]
        assert len(held) > 10 and max(held) < 0.02, f"the loop ran {max(held) * 1e3:.1f} ms between two beats"


async def test_a_version_swapped_during_a_scrape_is_read_once(tmp_path: Path) -> None:
    """Between a scrape's steps a hot swap may retire a version the scrape read as current already: it is not
    read again among the retired (that would be two samples of one series)."""
    config = make_config(tmp_path, many_services(tmp_path, 3), daemon={"watch": False})
    async with running(config) as daemon:
        addr = daemon.addresses[0]
        assert (await http(addr, "POST", "/s/0", b"x")).status == 200
        old = daemon.router.slots["s0"].current
        assert old is not None
        collector = daemon.registry.reader
        steps = collector.snapshot_steps()
        step = collector.STEP
        collector.STEP = 0.0  # yield after every item
        try:
            for _ in range(3 + 1):  # the three ingress edges, then s0
                next(steps)
            (tmp_path / "s0.wat").write_bytes(fixture("echo.wat").read_bytes() + b"\n;; v2\n")
            result = await Reloader(daemon).reload_service("s0")
            assert result.outcome == "swapped" and old in daemon.router.retired
            with pytest.raises(StopIteration) as done:
                while True:
                    next(steps)
        finally:
            collector.STEP = step
        snapshot = done.value.value
        text = render(snapshot)
        assert len(series(text)) == len(set(series(text)))
        assert [(s.name, s.version) for s in snapshot.services][0] == ("s0", old.version)
        assert all(version != old.version for _, version, _, _ in snapshot.retired)
        # The next scrape reads the new version as current (the old one among the retired while it drains).
        after = await daemon.registry.snapshot()
        assert after.services[0].version not in (old.version, *(version for _, version, _, _ in after.retired))


async def test_the_compile_cache_size_and_evictions_are_exported(tmp_path: Path) -> None:
    apps = {"echo": {"wasm": fixture("echo.wat"), "routes": ["/echo"]}}
    async with running(make_config(tmp_path, apps)) as daemon:
        assert daemon.registry is not None
        text = render(daemon.registry).decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        on_disk = sum(p.stat().st_size for p in (tmp_path / "cache").glob("*.cwasm"))
        assert on_disk > 0
        assert families["micromono_compile_cache_bytes"].samples[0].value == on_disk
        assert families["micromono_compile_cache_evictions"].samples[0].value == 0
        # The text written directly (what a scrape serves) says the same as prometheus_client's.
        assert render(daemon.registry.reader.snapshot()).decode() == text
