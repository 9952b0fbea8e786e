"""The admin listener over real sockets; Prometheus text parsed with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import bisect
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Client, fixture, http, make_config, running
from micromono.abi import KIND_MESSAGE
from micromono.actors.actor import Actor
from micromono.actors.keyed import KeyedService
from micromono.actors.storage import ActorInfo, Commit
from micromono.config import ServiceSpec
from micromono.metrics import (
    ActorScan,
    DaemonRegistry,
    EdgeCounters,
    ServiceCounters,
    Snapshot,
    SnapshotReader,
    reference_text,
    render,
)
from micromono.metrics.names import BATCH_BUCKETS, COMMIT_BUCKETS
from micromono.metrics.snapshot import SCAN_CHUNK
from micromono.reload import Reloader
from micromono.router import Router


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
        spans={"unsampled": 3, "exported": 10**6, "dropped": 0, "failed": 2},
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


# --- actor services ---------------------------------------------------------------------------------------------------


class FakeStats:
    """An actor storage's counters (metrics.StorageStats), in the shape actors/storage.py keeps them."""

    def __init__(self) -> None:
        self.commits = 0
        self.batches = 0
        self.failed_commits = 0
        self.commit_seconds = [0] * (len(COMMIT_BUCKETS) + 1)
        self.commit_seconds_sum = 0.0
        self.batch_sizes = [0] * (len(BATCH_BUCKETS) + 1)
        self.disk = 0

    def observe_commit(self, seconds: float) -> None:
        self.commit_seconds[bisect.bisect_left(COMMIT_BUCKETS, seconds)] += 1
        self.commit_seconds_sum += seconds

    def observe_batch(self, size: int) -> None:
        self.batch_sizes[bisect.bisect_left(BATCH_BUCKETS, size)] += 1

    def bytes_on_disk(self) -> int:
        return self.disk


class FakeStorage:
    """Stands in for actors/storage.py's ServiceStorage: its `stats`, `entries` (recording the thread each read
    ran in), a `submit` that is durable at once, and `close`."""

    def __init__(self, rows: dict[str, list[tuple[bytes, bytes]]] | None = None) -> None:
        self.stats = FakeStats()
        self.rows = rows or {}
        self.reads: list[tuple[str, int, int]] = []  # (key, limit, thread)

    def entries(self, key: str, limit: int) -> list[tuple[bytes, bytes]]:
        self.reads.append((key, limit, threading.get_ident()))
        return self.rows.get(key, [])[:limit]

    def submit(self, commit: Any, durable: Callable[[BaseException | None], None]) -> None:
        durable(None)

    def close(self) -> None:
        pass


def Info(  # noqa: N802 (it stands where a class was)
    bytes: int, last_active: float = 1_700_000_000.0, schema_version: int = 1, alarm: tuple[int, int] | None = None
) -> ActorInfo:
    """An actor's directory entry (storage's ActorInfo; its key is the directory's)."""
    return ActorInfo("", bytes, last_active, schema_version, alarm)


#: Stands in for a live instance (`Actor.instance is not None`).
LIVE: Any = object()


def actor_service(router: Router, name: str, directory: dict[str, Info], storage: FakeStorage | None = None) -> Any:
    """A real KeyedService on `router` over a fake storage, its directory `directory`."""
    spec = ServiceSpec(name=name, wasm=Path(f"{name}.wasm"), kind="actor", mailbox=1000)
    keyed = KeyedService(router.slot(name), spec, storage or FakeStorage(), directory, router.scheduler)  # type: ignore[arg-type]
    router.keyed[name] = keyed
    return keyed


def in_memory(keyed: Any, key: str, *, live: bool = False, queued: int = 0) -> Actor:
    """Put actor `key` in memory (live or not) with `queued` messages waiting."""
    actor = Actor(key, 0.0)
    actor.instance = LIVE if live else None
    for _ in range(queued):
        actor.queue.append((KIND_MESSAGE, b"m", None, None))
    keyed.actors[key] = actor
    return actor


def actors_router() -> tuple[Router, Any]:
    """A router with one actor service, `counter`: five actors with storage (one with an alarm), three of them
    in memory (two live, queues of 3 and 1), one more in memory that never committed (live, queue of 5)."""
    router = Router()
    directory = {
        "a": Info(100),
        "b": Info(20, alarm=(1_800_000_000_000, 1)),
        "c": Info(3),
        "d": Info(0),
        "e": Info(7_000_000),
    }
    keyed = actor_service(router, "counter", directory)
    in_memory(keyed, "a", live=True, queued=3)
    in_memory(keyed, "b", live=True)
    in_memory(keyed, "c", queued=1)
    in_memory(keyed, "new", live=True, queued=5)
    keyed.activations, keyed.revivals, keyed.hibernated_idle, keyed.hibernated_lru = 9, 4, 6, 2
    keyed.alarms_fired, keyed.alarms_retried, keyed.alarms_dropped, keyed.resets, keyed.rejected = 11, 3, 1, 2, 8
    keyed.activation_latency.observe(0.0002)
    keyed.activation_latency.observe(0.004)
    stats = keyed.storage.stats
    stats.commits, stats.batches, stats.failed_commits, stats.disk = 40, 12, 1, 1_234_567
    for seconds in (0.0004, 0.0009, 0.003, 7.0):
        stats.observe_commit(seconds)
    for size in (1, 3, 3, 40, 5000):
        stats.observe_batch(size)
    ws = keyed.stream_counters
    ws.open, ws.opened, ws.messages_in, ws.messages_out = 2, 7, 30, 1_500_000
    ws.bytes_in, ws.bytes_out, ws.published, ws.resumes, ws.resets = 4_000, 90_000_000, 25, 3, 1
    ws.closes.update({4008: 1, 1000: 3, 1006: 1})
    ws.refused.update({"actor_limit": 2, "disabled": 1})
    return router, keyed


def reader_of(router: Router) -> SnapshotReader:
    return SnapshotReader(router, lambda: ({}, 0))


def test_actor_metrics_match_prometheus_client_and_say_what_the_actors_do() -> None:
    """Each actor service gets its families (label `service` only, never a key); the text written directly equals
    prometheus_client's, and parsed back it says what the service holds."""
    router, keyed = actors_router()
    actor_service(router, 'odd"name\\', {})  # escaped label values, and a service with nothing yet
    snapshot = reader_of(router).snapshot()
    text = render(snapshot)
    assert families(text) == families(reference_text(snapshot))
    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text.decode())
        for s in f.samples
        if s.name.startswith(("micromono_actor", "micromono_actors"))
    }
    assert {label for _, labels in got for label, _ in labels} == {"service", "le", "reason"}

    def value(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted({"service": "counter", **labels}.items())))]

    assert value("micromono_actors_live") == 3
    assert value("micromono_actors_in_memory") == 4
    assert value("micromono_actors_hibernated") == 3  # c, d and e: known, and no live instance
    assert value("micromono_actor_queue_depth_max") == 5
    assert value("micromono_actor_queued") == 9
    assert value("micromono_actor_activations_total") == 9
    assert value("micromono_actor_revivals_total") == 4
    assert value("micromono_actor_hibernations_total", reason="idle") == 6
    assert value("micromono_actor_hibernations_total", reason="evicted") == 2
    assert value("micromono_actor_activation_seconds_count") == 2
    assert value("micromono_actor_activation_seconds_bucket", le="0.00025") == 1
    assert value("micromono_actor_activation_seconds_sum") == pytest.approx(0.0042)
    assert value("micromono_actor_commits_total") == 40
    assert value("micromono_actor_commit_batches_total") == 12
    assert value("micromono_actor_commit_failures_total") == 1
    assert value("micromono_actor_commit_seconds_bucket", le="0.0005") == 1
    assert value("micromono_actor_commit_seconds_bucket", le="0.001") == 2
    assert value("micromono_actor_commit_seconds_bucket", le="1.0") == 3
    assert value("micromono_actor_commit_seconds_bucket", le="+Inf") == 4
    assert value("micromono_actor_commit_seconds_count") == 4
    assert value("micromono_actor_commit_batch_size_bucket", le="1.0") == 1
    assert value("micromono_actor_commit_batch_size_bucket", le="4.0") == 3
    assert value("micromono_actor_commit_batch_size_bucket", le="1024.0") == 4
    assert value("micromono_actor_commit_batch_size_sum") == 41  # every actor commit (40 durable, 1 failed) in one
    assert value("micromono_actor_storage_bytes") == 7_000_123
    assert value("micromono_actor_storage_disk_bytes") == 1_234_567
    assert value("micromono_actor_alarms_pending") == 1
    assert value("micromono_actor_alarms_fired_total") == 11
    assert value("micromono_actor_alarms_retried_total") == 3
    assert value("micromono_actor_alarms_dropped_total") == 1
    assert value("micromono_actor_resets_total") == 2
    assert value("micromono_actor_rejected_total") == 8
    assert got[("micromono_actors_live", (("service", 'odd"name\\'),))] == 0


def test_websocket_metrics_match_prometheus_client_and_say_what_the_connections_do() -> None:
    """Each actor service gets its WebSocket families, from its `stream_counters`: the text written directly equals
    prometheus_client's; every refusal reason has a series from the start, a close code once it happened."""
    router, _ = actors_router()
    actor_service(router, 'odd"name\\', {})
    snapshot = reader_of(router).snapshot()
    text = render(snapshot)
    assert families(text) == families(reference_text(snapshot))
    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text.decode())
        for s in f.samples
        if s.name.startswith("micromono_ws_")
    }

    def value(name: str, service: str = "counter", **labels: str) -> float:
        return got.pop((name, tuple(sorted({"service": service, **labels}.items()))))

    assert value("micromono_ws_connections") == 2
    assert value("micromono_ws_connections_opened_total") == 7
    assert value("micromono_ws_messages_total", direction="in") == 30
    assert value("micromono_ws_messages_total", direction="out") == 1_500_000
    assert value("micromono_ws_bytes_total", direction="in") == 4_000
    assert value("micromono_ws_bytes_total", direction="out") == 90_000_000
    assert value("micromono_ws_published_total") == 25
    assert value("micromono_ws_resumes_total") == 3
    assert value("micromono_ws_resets_total") == 1
    assert value("micromono_ws_closes_total", code="1000") == 3
    assert value("micromono_ws_closes_total", code="1006") == 1
    assert value("micromono_ws_closes_total", code="4008") == 1
    assert value("micromono_ws_connections_refused_total", reason="daemon_limit") == 0
    assert value("micromono_ws_connections_refused_total", reason="actor_limit") == 2
    assert value("micromono_ws_connections_refused_total", reason="disabled") == 1
    assert value("micromono_ws_connections_refused_total", reason="bad_request") == 0
    # The service with nothing yet: zeros, every refusal reason, and no close code.
    odd = 'odd"name\\'
    for name in ("connections", "connections_opened_total", "published_total", "resumes_total", "resets_total"):
        assert value(f"micromono_ws_{name}", odd) == 0
    for direction in ("in", "out"):
        assert value("micromono_ws_messages_total", odd, direction=direction) == 0
        assert value("micromono_ws_bytes_total", odd, direction=direction) == 0
    for reason in ("daemon_limit", "actor_limit", "disabled", "bad_request"):
        assert value("micromono_ws_connections_refused_total", odd, reason=reason) == 0
    assert got == {}  # nothing else


def test_no_actor_service_no_actor_families() -> None:
    """A daemon without actor services writes no actor family, not even its help and type lines."""
    router = Router()
    text = render(reader_of(router).snapshot())
    assert b"actor" not in text
    assert text == reference_text(reader_of(router).snapshot())


class Unwalkable(dict[str, Info]):
    """A directory that fails the test if anything walks it (lookups and len() are fine)."""

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("the directory was walked")

    def items(self) -> Any:
        raise AssertionError("the directory was walked")

    def values(self) -> Any:
        raise AssertionError("the directory was walked")


def test_stored_bytes_are_a_running_total_not_a_walk_of_the_directory() -> None:
    """With 100,000 known actors a scrape reads `stored_bytes`, kept at each durable commit, and never walks the
    directory."""
    router = Router()
    keyed = actor_service(router, "counter", {f"k{i}": Info(i % 100) for i in range(100_000)})
    assert keyed.stored_bytes == 1000 * sum(range(100))
    keyed.directory = Unwalkable(keyed.directory)
    in_memory(keyed, "k5", live=True)
    snapshot = reader_of(router).snapshot()
    (counters,) = snapshot.actors
    assert (counters.stored_bytes, counters.known, counters.hibernated) == (keyed.stored_bytes, 100_000, 99_999)

    class State:
        """What `KeyedService.commit` asks of a message's state: the Commit its writes end in."""

        def __init__(self, size: int) -> None:
            self.size = size

        def commit(self, epoch: int, now: float) -> Commit:
            return Commit(key="", epoch=epoch, kv={b"n": b"1"}, total_bytes=self.size, last_active=now)

    before = keyed.stored_bytes
    keyed.commit(keyed.actors["k5"], State(1000))  # k5 held 5 bytes
    keyed.commit(in_memory(keyed, "fresh"), State(64))  # a new actor's first commit
    assert keyed.stored_bytes == before + 995 + 64
    assert reader_of(router).snapshot().actors[0].stored_bytes == before + 995 + 64


def test_the_actors_in_memory_are_scanned_a_step_at_a_time() -> None:
    """The scan of actors in memory yields whenever a step's time is spent, every SCAN_CHUNK actors at most (by
    the reader's clock: a fake one here), and the stepped snapshot says what the one-go snapshot says."""
    router = Router()
    n = 20_000
    keyed = actor_service(router, "counter", {f"k{i}": Info(1) for i in range(n)})
    for i in range(n):
        in_memory(keyed, f"k{i}", live=i % 2 == 0, queued=i % 7)
    reader = reader_of(router)
    now, advance = 0.0, 0.0

    def clock() -> float:
        nonlocal now
        now += advance
        return now

    reader.clock = clock

    def count_yields(passing: float) -> tuple[int, Snapshot]:
        nonlocal advance
        advance = passing
        steps, yields = reader.snapshot_steps(), 0
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return yields, done.value
            yields += 1

    yields, whole = count_yields(0.0)
    assert yields == 0
    yields, stepped = count_yields(reader.STEP)
    # after each ingress edge (the slot has one), each chunk of actors, and the actor service
    assert yields == len(router.ingress_edges) + -(-n // SCAN_CHUNK) + 1
    assert render(stepped) == render(whole)
    (counters,) = whole.actors
    assert counters.scan == ActorScan(n, n // 2, n // 2, sum(i % 7 for i in range(n)), 6)


async def test_the_loop_serves_between_the_steps_of_an_actor_scan() -> None:
    """Through the registry (what /metrics awaits), each step of the actor scan ends with a turn of the event loop;
    counted in turns, not wall-clock time."""
    router = Router()
    n = 10_000
    keyed = actor_service(router, "counter", {})
    for i in range(n):
        in_memory(keyed, f"k{i}", live=True)
    registry = DaemonRegistry(reader_of(router))
    registry.reader.STEP = 0.0
    turns = 0
    stop = asyncio.Event()

    async def count_turns() -> None:
        nonlocal turns
        while not stop.is_set():
            turns += 1
            await asyncio.sleep(0)

    counting = asyncio.create_task(count_turns())
    snapshot = await registry.snapshot()
    stop.set()
    await counting
    assert snapshot.actors[0].scan.live == n
    assert turns >= n // SCAN_CHUNK
