"""The admin listener over real sockets; Prometheus text parsed with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Client, fixture, http, make_config, running
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


Family = tuple[str, str, str, list[tuple[str, dict[str, str], float]]]


def families(text: bytes) -> list[Family]:
    """Every family with its type, help and samples, in the order the text has them."""
    return [
        (f.name, f.type, f.documentation, [(s.name, s.labels, s.value) for s in f.samples])
        for f in text_string_to_metric_families(text.decode())
    ]


def edge(
    caller: str,
    callee: str,
    ok: int,
    errors: dict[str, int] | None = None,
    messages: int = 0,
    message_errors: dict[str, int] | None = None,
) -> EdgeCounters:
    return EdgeCounters(
        caller, callee, ok, tuple((errors or {}).items()), messages, tuple((message_errors or {}).items())
    )


def counters(
    name: str,
    *,
    routed: bool = True,
    latency: tuple[int, ...] = (),
    latency_sum: float = 0.0,
    memory_sizes: tuple[int, ...] = (),
    preempted: int = 0,
    ok: int = 0,
) -> ServiceCounters:
    return ServiceCounters(
        name,
        f"{name}-v1",
        "ab" * 32,
        routed,
        latency,
        latency_sum,
        queued=2,
        capacity=1024,
        rejected=3,
        shed=4,
        live=len(memory_sizes),
        traps=5,
        memory_sizes=list(memory_sizes),
        memory_limit=128 << 20,
        quarantines=1,
        preempted=preempted,
        ok=ok,
        failed=7,
    )


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
    assert not any(
        name == "micromono_calls_total" and ("callee", "worker") in labels and ("caller", "ingress") in labels
        for name, labels in series
    )
    assert not any(
        name.startswith("micromono_call_duration") and ("service", "idle") in labels for name, labels in series
    )


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


def many_services(tmp_path: Path, n: int) -> dict[str, dict[str, object]]:
    """`n` routed echo services from one file (compiled once, an instance each); `s0` from a file of its own."""
    shared, own = tmp_path / "echo.wat", tmp_path / "s0.wat"
    shared.write_bytes(fixture("echo.wat").read_bytes())
    own.write_bytes(fixture("echo.wat").read_bytes())
    return {f"s{i}": {"wasm": own if i == 0 else shared, "routes": [f"/s/{i}"]} for i in range(n)}


def series(text: bytes) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    return [(name, tuple(sorted(labels.items()))) for _, _, _, samples in families(text) for name, labels, _ in samples]


async def test_a_scrape_of_many_services_copies_a_step_at_a_time(tmp_path: Path) -> None:
    """A snapshot yields whenever a step's time is spent (by the reader's clock: a fake one here), and only then;
    each yield is one ingress edge or one service."""
    n = 300
    config = make_config(tmp_path, many_services(tmp_path, n), daemon={"watch": False})
    async with running(config) as daemon:
        reader = daemon.registry.reader
        now, advance = 0.0, 0.0

        def clock() -> float:
            nonlocal now
            now += advance  # the time each read of the clock finds passed since the last
            return now

        reader.clock = clock

        def count_yields(passing: float) -> tuple[int, Snapshot]:
            nonlocal advance
            advance = passing
            steps = reader.snapshot_steps()
            yields = 0
            while True:
                try:
                    next(steps)
                except StopIteration as done:
                    return yields, done.value
                yields += 1

        # A clock that never moves: never over budget, so one go.
        yields, whole = count_yields(0.0)
        assert yields == 0
        # A clock that passes a whole step between reads: over budget after every edge and every service.
        yields, stepped = count_yields(reader.STEP)
        assert yields == 2 * n
        assert render(stepped) == render(whole)  # nothing ran in between: the same counters


async def test_the_loop_serves_between_the_steps_of_a_scrape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through /metrics, each step of the copy ends with a turn of the event loop: a task that only counts its
    turns gets one per step. Counted in turns, not wall-clock time, so that a loaded machine cannot fail it."""
    n = 300
    config = make_config(tmp_path, many_services(tmp_path, n), daemon={"watch": False})
    async with running(config) as daemon:
        assert daemon.metrics_address is not None
        monkeypatch.setattr(daemon.registry.reader, "STEP", 0.0)  # a step per edge and per service
        turns = 0
        stop = asyncio.Event()

        async def count_turns() -> None:
            nonlocal turns
            while not stop.is_set():
                turns += 1
                await asyncio.sleep(0)

        scrape = asyncio.ensure_future(daemon.registry.snapshot())
        counting = asyncio.create_task(count_turns())
        snapshot = await scrape
        stop.set()
        await counting
        assert len(snapshot.services) == n
        assert turns >= 2 * n
        response = await http(daemon.metrics_address, "GET", "/metrics")
        assert sum(1 for name, _ in series(response.body) if name == "micromono_service_info") == n


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
