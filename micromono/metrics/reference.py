"""prometheus_client's side of the metrics: the reference families, and the per-daemon registry.

`families(snapshot)` builds, with prometheus_client's metric families, the same samples `exposition` writes by hand:
it is the reference the hand-written text is tested against, and what the synchronous path for tests and tools
formats (`registry.collect()`, `render(registry)`). `DaemonRegistry` is the per-daemon `CollectorRegistry`
(STYLE rule 20): tests run many daemons in one process, and the default registry would refuse a second one.

The metrics package is the only code that imports prometheus_client. This module must not read live objects
other than through `SnapshotReader` on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from .exposition import exposition
from .names import BATCH_BOUNDS, BOUNDS, COMMIT_BOUNDS, HELP
from .snapshot import ActorCounters, ServiceCounters, Snapshot, SnapshotReader

if TYPE_CHECKING:
    from micromono.router import Router

__all__ = [
    "DaemonCollector",
    "DaemonRegistry",
    "SnapshotCollector",
    "families",
    "new_registry",
    "reference_text",
    "render",
]


class DaemonCollector(Collector):
    """The daemon's counters as a prometheus_client collector: each `collect()` reads a fresh snapshot (on the
    event loop only)."""

    def __init__(self, reader: SnapshotReader) -> None:
        self.reader = reader

    def describe(self) -> Iterable[Any]:
        return []  # collected lazily: no duplicate-name checks needed on a private registry

    def collect(self) -> Iterator[Metric]:
        return families(self.reader.snapshot())


class SnapshotCollector(Collector):
    """One fixed snapshot as a collector, for `generate_latest` (any thread: it reads only the snapshot)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        return families(self.snapshot)


def reference_text(snapshot: Snapshot) -> bytes:
    """`snapshot` in Prometheus text format by prometheus_client: what `exposition(snapshot)` must equal."""
    return generate_latest(SnapshotCollector(snapshot))


def families(snapshot: Snapshot) -> Iterator[Metric]:
    """`snapshot` as prometheus_client metric families, in exposition order."""
    yield from _calls(snapshot)
    yield from _services(snapshot.services)
    if snapshot.actors:  # no actor service, no actor or WebSocket families: not even their help and type lines
        yield from _actors(snapshot.actors)
        yield from _websockets(snapshot.actors)
    responses = CounterMetricFamily("micromono_http_responses", HELP["http_responses"], labels=["code"])
    for code, n in sorted(snapshot.statuses):
        responses.add_metric([str(code)], n)
    yield responses
    yield GaugeMetricFamily("micromono_http_connections", HELP["http_connections"], value=snapshot.connections)
    reloads = CounterMetricFamily("micromono_reloads", HELP["reloads"], labels=["service", "outcome"])
    for (service, outcome), n in sorted(snapshot.reloads):
        reloads.add_metric([service, outcome], n)
    yield reloads
    by_version = CounterMetricFamily(
        "micromono_version_calls", HELP["version_calls"], labels=["service", "version", "outcome"]
    )
    for name, version, ok, failed in snapshot.versions():
        by_version.add_metric([name, version, "ok"], ok)
        by_version.add_metric([name, version, "failed"], failed)
    yield by_version
    if snapshot.cache is not None:
        size, evictions = snapshot.cache
        yield GaugeMetricFamily("micromono_compile_cache_bytes", HELP["compile_cache_bytes"], value=size)
        yield CounterMetricFamily("micromono_compile_cache_evictions", HELP["compile_cache_evictions"], value=evictions)
    if snapshot.spans is not None:
        spans = CounterMetricFamily("micromono_trace_spans", HELP["trace_spans"], labels=["outcome"])
        for outcome, n in sorted(snapshot.spans.items()):
            spans.add_metric([outcome], n)
        yield spans


def _calls(snapshot: Snapshot) -> Iterator[Metric]:
    calls = CounterMetricFamily("micromono_calls", HELP["calls"], labels=["caller", "callee", "outcome"])
    messages = CounterMetricFamily("micromono_messages", HELP["messages"], labels=["sender", "receiver", "outcome"])
    for edge in snapshot.exported_edges():
        calls.add_metric([edge.caller, edge.callee, "ok"], edge.ok)
        for kind, n in sorted(edge.errors):
            calls.add_metric([edge.caller, edge.callee, kind], n)
        if edge.caller != "ingress":
            messages.add_metric([edge.caller, edge.callee, "ok"], edge.messages)
            for kind, n in sorted(edge.message_errors):
                messages.add_metric([edge.caller, edge.callee, kind], n)
    refused = CounterMetricFamily("micromono_calls_refused", HELP["calls_refused"], labels=["caller", "reason"])
    for (caller, reason), n in sorted(snapshot.refused):
        refused.add_metric([caller, reason], n)
    yield calls
    yield messages
    yield refused


def _services(services: list[ServiceCounters]) -> Iterator[Metric]:
    by = ["service"]
    duration = HistogramMetricFamily("micromono_call_duration_seconds", HELP["call_duration_seconds"], labels=by)
    depth = GaugeMetricFamily("micromono_mailbox_depth", HELP["mailbox_depth"], labels=by)
    capacity = GaugeMetricFamily("micromono_mailbox_capacity", HELP["mailbox_capacity"], labels=by)
    rejected = CounterMetricFamily("micromono_mailbox_rejected", HELP["mailbox_rejected"], labels=by)
    instances = GaugeMetricFamily("micromono_instances", HELP["instances"], labels=by)
    failures = CounterMetricFamily("micromono_instance_failures", HELP["instance_failures"], labels=by)
    memory = GaugeMetricFamily("micromono_guest_memory_bytes", HELP["guest_memory_bytes"], labels=by)
    memory_limit = GaugeMetricFamily("micromono_guest_memory_limit_bytes", HELP["guest_memory_limit_bytes"], labels=by)
    at_limit = GaugeMetricFamily("micromono_instances_at_memory_limit", HELP["instances_at_memory_limit"], labels=by)
    shed = CounterMetricFamily("micromono_mailbox_shed", HELP["mailbox_shed"], labels=by)
    quarantines = CounterMetricFamily("micromono_quarantines", HELP["quarantines"], labels=by)
    preempted = CounterMetricFamily("micromono_preempted_runs", HELP["preempted_runs"], labels=by)
    log_dropped = CounterMetricFamily("micromono_guest_log_dropped", HELP["guest_log_dropped"], labels=by)
    log_bytes = CounterMetricFamily("micromono_guest_log_dropped_bytes", HELP["guest_log_dropped_bytes"], labels=by)
    info = GaugeMetricFamily("micromono_service_info", HELP["service_info"], labels=["service", "version", "sha256"])
    for s in services:
        label = [s.name]
        if s.latency:  # a service never timed has no histogram yet: 24 lines fewer per idle service in a scrape
            cumulative, buckets = 0, []
            for bound, n in zip(BOUNDS, s.latency, strict=True):
                cumulative += n
                buckets.append((bound, cumulative))
            duration.add_metric(label, buckets, s.latency_sum)
        depth.add_metric(label, s.queued)
        capacity.add_metric(label, s.capacity)
        rejected.add_metric(label, s.rejected)
        instances.add_metric(label, s.live)
        failures.add_metric(label, s.traps)
        memory.add_metric(label, sum(s.memory_sizes))
        memory_limit.add_metric(label, s.memory_limit)
        at_limit.add_metric(label, s.at_memory_limit())
        shed.add_metric(label, s.shed)
        quarantines.add_metric(label, s.quarantines)
        preempted.add_metric(label, s.preempted)
        log_dropped.add_metric(label, s.log_dropped)
        log_bytes.add_metric(label, s.log_dropped_bytes)
        info.add_metric([s.name, s.version, s.sha256], 1)
    yield from (duration, depth, capacity, rejected, shed, instances, failures, memory, memory_limit, at_limit)
    yield from (quarantines, preempted, log_dropped, log_bytes)
    yield info


def _actors(actors: list[ActorCounters]) -> Iterator[Metric]:
    def gauge(name: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"micromono_{name}", HELP[name], labels=["service"])

    def counter(name: str, *more: str) -> CounterMetricFamily:
        return CounterMetricFamily(f"micromono_{name}", HELP[name], labels=["service", *more])

    def histogram(name: str) -> HistogramMetricFamily:
        return HistogramMetricFamily(f"micromono_{name}", HELP[name], labels=["service"])

    live = gauge("actors_live")
    in_memory = gauge("actors_in_memory")
    hibernated = gauge("actors_hibernated")
    activations = counter("actor_activations")
    revivals = counter("actor_revivals")
    activation = histogram("actor_activation_seconds")
    hibernations = counter("actor_hibernations", "reason")
    deepest = gauge("actor_queue_depth_max")
    queued = gauge("actor_queued")
    commits = counter("actor_commits")
    batches = counter("actor_commit_batches")
    failed = counter("actor_commit_failures")
    commit_seconds = histogram("actor_commit_seconds")
    batch_size = histogram("actor_commit_batch_size")
    stored = gauge("actor_storage_bytes")
    disk = gauge("actor_storage_disk_bytes")
    pending = gauge("actor_alarms_pending")
    fired = counter("actor_alarms_fired")
    retried = counter("actor_alarms_retried")
    dropped = counter("actor_alarms_dropped")
    resets = counter("actor_resets")
    rejected = counter("actor_rejected")
    for a in actors:
        label = [a.name]
        live.add_metric(label, a.scan.live)
        in_memory.add_metric(label, a.scan.in_memory)
        hibernated.add_metric(label, a.hibernated)
        activations.add_metric(label, a.activations)
        revivals.add_metric(label, a.revivals)
        activation.add_metric(label, _buckets(BOUNDS, a.activation), a.activation_sum)
        hibernations.add_metric([a.name, "idle"], a.hibernated_idle)
        hibernations.add_metric([a.name, "evicted"], a.hibernated_evicted)
        deepest.add_metric(label, a.scan.deepest)
        queued.add_metric(label, a.scan.queued)
        storage = a.storage
        commits.add_metric(label, storage.commits)
        batches.add_metric(label, storage.batches)
        failed.add_metric(label, storage.failed)
        commit_seconds.add_metric(label, _buckets(COMMIT_BOUNDS, storage.commit_seconds), storage.commit_seconds_sum)
        batch_size.add_metric(label, _buckets(BATCH_BOUNDS, storage.batch_sizes), storage.batch_sizes_sum)
        stored.add_metric(label, a.stored_bytes)
        disk.add_metric(label, storage.disk_bytes)
        pending.add_metric(label, a.alarms_pending)
        fired.add_metric(label, a.alarms_fired)
        retried.add_metric(label, a.alarms_retried)
        dropped.add_metric(label, a.alarms_dropped)
        resets.add_metric(label, a.resets)
        rejected.add_metric(label, a.rejected)
    yield from (live, in_memory, hibernated, activations, revivals, activation, hibernations, deepest, queued)
    yield from (commits, batches, failed, commit_seconds, batch_size, stored, disk, pending, fired, retried, dropped)
    yield from (resets, rejected)


def _websockets(actors: list[ActorCounters]) -> Iterator[Metric]:
    def counter(name: str, *more: str) -> CounterMetricFamily:
        return CounterMetricFamily(f"micromono_{name}", HELP[name], labels=["service", *more])

    open_now = GaugeMetricFamily("micromono_ws_connections", HELP["ws_connections"], labels=["service"])
    opened = counter("ws_connections_opened")
    refused = counter("ws_connections_refused", "reason")
    messages = counter("ws_messages", "direction")
    sizes = counter("ws_bytes", "direction")
    published = counter("ws_published")
    resumes = counter("ws_resumes")
    resets = counter("ws_resets")
    closes = counter("ws_closes", "code")
    for a in actors:
        ws, label = a.websockets, [a.name]
        open_now.add_metric(label, ws.open)
        opened.add_metric(label, ws.opened)
        for reason, n in ws.refused:
            refused.add_metric([a.name, reason], n)
        messages.add_metric([a.name, "in"], ws.messages_in)
        messages.add_metric([a.name, "out"], ws.messages_out)
        sizes.add_metric([a.name, "in"], ws.bytes_in)
        sizes.add_metric([a.name, "out"], ws.bytes_out)
        published.add_metric(label, ws.published)
        resumes.add_metric(label, ws.resumes)
        resets.add_metric(label, ws.resets)
        for code, n in ws.closes:
            closes.add_metric([a.name, str(code)], n)
    yield from (open_now, opened, refused, messages, sizes, published, resumes, resets, closes)


def _buckets(bounds: tuple[str, ...], counts: tuple[int, ...]) -> list[tuple[str, float]]:
    """Per-bucket counts as the cumulative `(le, count)` pairs a HistogramMetricFamily takes."""
    cumulative = 0
    buckets: list[tuple[str, float]] = []
    for bound, n in zip(bounds, counts, strict=True):
        cumulative += n
        buckets.append((bound, cumulative))
    return buckets


# --- the registry -----------------------------------------------------------------------------------------------------


class DaemonRegistry(CollectorRegistry):
    """A registry holding only this daemon's collector, which stays reachable for `/metrics`: the admin listener
    awaits `snapshot()` on the loop and formats it in a thread."""

    def __init__(self, reader: SnapshotReader) -> None:
        super().__init__(auto_describe=False)
        self.reader = reader
        self.register(DaemonCollector(reader))

    async def snapshot(self) -> Snapshot:
        """Every counter, copied a step at a time (`SnapshotReader.snapshot_steps`); between steps the event
        loop runs whatever is ready, so a scrape of many services holds it about `SnapshotReader.STEP` at a time."""
        steps = self.reader.snapshot_steps()
        while True:
            try:
                next(steps)
            except StopIteration as done:
                snapshot: Snapshot = done.value
                return snapshot
            await asyncio.sleep(0)


def new_registry(
    router: Router,
    http_stats: Callable[[], tuple[dict[int, int], int]],
    reload_counts: Callable[[], dict[tuple[str, str], int]] | None = None,
    cache_stats: Callable[[], tuple[int, int] | None] | None = None,
    span_counts: Callable[[], dict[str, int]] | None = None,
) -> DaemonRegistry:
    """A fresh registry holding only this daemon's collector (tests may run many daemons in one process)."""
    return DaemonRegistry(SnapshotReader(router, http_stats, reload_counts, cache_stats, span_counts))


def render(source: CollectorRegistry | Snapshot) -> bytes:
    """Prometheus text: of a `Snapshot` by `exposition` (any thread), or of a registry, read now (so on the event
    loop only) and formatted by prometheus_client."""
    if isinstance(source, Snapshot):
        return exposition(source)
    return generate_latest(source)
