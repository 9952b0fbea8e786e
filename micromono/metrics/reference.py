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
from .names import BOUNDS, HELP
from .snapshot import ServiceCounters, Snapshot, SnapshotReader

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
) -> DaemonRegistry:
    """A fresh registry holding only this daemon's collector (tests may run many daemons in one process)."""
    return DaemonRegistry(SnapshotReader(router, http_stats, reload_counts, cache_stats))


def render(source: CollectorRegistry | Snapshot) -> bytes:
    """Prometheus text: of a `Snapshot` by `exposition` (any thread), or of a registry, read now (so on the event
    loop only) and formatted by prometheus_client."""
    if isinstance(source, Snapshot):
        return exposition(source)
    return generate_latest(source)
