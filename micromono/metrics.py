"""Every Prometheus metric micromono exports, on a per-daemon registry. The only module that imports
prometheus_client.

Nothing here runs per call. The hot path bumps plain integers on objects it already holds (`router.Edge`,
`service.Service`, `ingress.Ingress`'s response counts); a scrape reads them. A `prometheus_client.Counter.inc()` plus
`Histogram.observe()` per request cost ~2 µs here, more than the whole Wasm call
(`../shared/research/ingress-ceiling.md`).

A scrape has two parts, split by what they may touch:

* `DaemonCollector.snapshot_steps()`, on the event loop: copies the counters into a `Snapshot` of plain tuples,
  lists, strings and numbers. It is the only part that reads live objects, which the loop changes between its
  callbacks (so only the loop itself reads them), and it re-reads each idle instance's memory size from wasmtime,
  which is the loop thread's to do. ~4 ms for 1,000 services, half of it those memory sizes: 40 ms for 10,000, too
  long to hold the loop, so it copies a step at a time (`DaemonCollector.STEP`, 0.5 ms) and `DaemonRegistry.snapshot`
  lets the loop serve whatever is ready between steps. Each service's counters, its edges included, are read in one
  step, so they agree with each other; counters of different services are read up to a scrape's duration apart
  (more under load), and a version swapped in meanwhile may be missed by this scrape (its predecessor is read
  instead, once: as current if it was still current when its turn came, else among the retired). Prometheus
  series are independent, so a scrape need not be one instant.
* `exposition(snapshot)`, in a worker thread (admin.py) while the loop goes on serving: the Prometheus text. The
  expensive part, so it writes the text itself: ~10 ms for 1,000 services (~20 ms with a latency histogram each)
  where prometheus_client's metric families and `generate_latest` take ~75 ms (~220 ms). It holds the GIL while it
  works, so it lets go every 0.5 ms (`Pacer`): else the loop's thread waits up to the 5 ms switch interval for it.

`families(snapshot)` builds the same samples with prometheus_client: the reference `exposition` is tested against
(tests/test_metrics.py), and what the synchronous path for tests and tools formats (`registry.collect()`,
`render(registry)`).

Metric names (all prefixed `micromono_`):

| name | type | labels | meaning |
|---|---|---|---|
| `calls_total` | counter | caller, callee, outcome | calls by edge (caller `ingress`: HTTP); outcome `ok` or an error |
| `calls_refused_total` | counter | caller, reason | calls to an unknown service or outside the allowlist |
| `messages_total` | counter | sender, receiver, outcome | `micromono.send` messages |
| `call_duration_seconds` | histogram | service | call latency, 1 call in 16 timed (absent until one is) |
| `mailbox_depth` / `mailbox_capacity` | gauge | service | queued work items / the bound |
| `mailbox_rejected_total` | counter | service | items refused because the mailbox was full |
| `instances` | gauge | service | live instances in the pool |
| `instance_failures_total` | counter | service | instances discarded after a trap, timeout or ABI violation |
| `guest_memory_bytes` | gauge | service | linear memory of the service's instances |
| `guest_memory_limit_bytes` | gauge | service | `memory_limit`: the most one instance may grow to |
| `instances_at_memory_limit` | gauge | service | idle instances whose next `memory.grow` returns -1 |
| `service_info` | gauge | service, version, sha256 | 1 per loaded version |
| `http_responses_total` | counter | code | ingress responses by status |
| `http_connections` | gauge | | open ingress connections |
| `mailbox_shed_total` | counter | service | queued items dropped for newer ones (`on_full = "shed_oldest"`) |
| `quarantines_total` | counter | service | times the supervisor quarantined the service |
| `preempted_runs_total` | counter | service | requests and messages that outlasted their first slice |
| `guest_log_dropped_total` | counter | service | guest log lines dropped over `log_rate` (guestlog.py) |
| `guest_log_dropped_bytes_total` | counter | service | the bytes of those lines |
| `reloads_total` | counter | service, outcome | hot reloads (`service="services.toml"` for the manifest) |
| `version_calls_total` | counter | service, version, outcome | calls served by each loaded version (`ok`/`failed`) |
| `compile_cache_bytes` | gauge | | bytes of compiled modules in `cache_dir` (absent without a cache) |
| `compile_cache_evictions_total` | counter | | cache entries removed to stay under `cache_max_bytes` |
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .guestlog import dropped_counts
from .service import LATENCY_BUCKETS

if TYPE_CHECKING:
    from .router import Edge, Router

__all__ = [
    "DaemonCollector",
    "DaemonRegistry",
    "EdgeCounters",
    "Pacer",
    "ServiceCounters",
    "Snapshot",
    "exposition",
    "families",
    "new_registry",
    "render",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_WASM_PAGE = 65536

Counts = tuple[tuple[str, int], ...]


class ServiceCounters(NamedTuple):
    """One current service version, as a snapshot saw it."""

    name: str
    version: str
    sha256: str
    routed: bool  # has routes, so it gets HTTP requests
    latency: tuple[int, ...]  # calls per latency bucket (not cumulative); () while none was timed
    latency_sum: float
    queued: int
    capacity: int
    rejected: int
    shed: int
    live: int
    traps: int
    memory_sizes: list[int]  # of the idle instances: a fresh list, nobody else holds it
    memory_limit: int
    quarantines: int
    preempted: int
    ok: int
    failed: int
    log_dropped: int = 0  # guest log lines over budget (guestlog.py)
    log_dropped_bytes: int = 0


class EdgeCounters(NamedTuple):
    """One caller -> callee edge, as a snapshot saw it (errors by kind, in the order they first happened)."""

    caller: str
    callee: str
    ok: int
    errors: Counts
    messages: int
    message_errors: Counts


class Snapshot(Collector):
    """Every counter of one scrape, copied on the event loop: plain data that any thread may read.

    A `Collector` too, so prometheus_client's `generate_latest(snapshot)` formats it through `families`: the
    reference `exposition` is tested against.
    """

    def __init__(
        self,
        services: list[ServiceCounters],
        retired: list[tuple[str, str, int, int]],
        edges: list[EdgeCounters],
        refused: list[tuple[tuple[str, str], int]],
        statuses: list[tuple[int, int]],
        connections: int,
        reloads: list[tuple[tuple[str, str], int]],
        cache: tuple[int, int] | None = None,
    ) -> None:
        self.services = services  # current versions, in manifest order
        self.retired = retired  # (name, version, ok, failed) of replaced versions still finishing calls
        self.edges = edges  # the ingress edges first (one per service name ever loaded), then each allowlist
        self.refused = refused  # ((caller, reason), calls)
        self.statuses = statuses  # (HTTP status, responses)
        self.connections = connections  # open ingress connections
        self.reloads = reloads  # ((service, outcome), reloads)
        self.cache = cache  # (bytes in the compile cache, evictions), or None without a cache

    def collect(self) -> Iterator[Metric]:
        return families(self)


class DaemonCollector(Collector):
    """Reads the daemon's plain counters at scrape time.

    Args:
        router: the daemon's router (services, edges, refused calls).
        http_stats: returns `(responses by status, open connections)` from ingress.
        reload_counts: returns reloads by `(service, outcome)`: a copy, not the reloader's own dict.
        cache_stats: returns the compile cache's `(bytes, evictions)`, or None when there is no cache.
    """

    def __init__(
        self,
        router: Router,
        http_stats: Callable[[], tuple[dict[int, int], int]],
        reload_counts: Callable[[], dict[tuple[str, str], int]] | None = None,
        cache_stats: Callable[[], tuple[int, int] | None] | None = None,
    ) -> None:
        self._router = router
        self._http_stats = http_stats
        self._reload_counts = reload_counts
        self._cache_stats = cache_stats

    def describe(self) -> Iterable[Any]:
        return []  # collected lazily: no duplicate-name checks needed on a private registry

    def collect(self) -> Iterator[Metric]:
        return families(self.snapshot())

    def snapshot(self) -> Snapshot:
        """Copy every counter now, in one go: holds the event loop for the whole copy (~4 ms per 1,000 services).
        For tests and tools (`collect()`); a scrape takes `snapshot_steps` a step at a time."""
        steps = self.snapshot_steps()
        while True:
            try:
                next(steps)
            except StopIteration as done:
                snapshot: Snapshot = done.value
                return snapshot

    #: Seconds of copying after which `snapshot_steps` yields (checked after each edge and each service).
    STEP = 0.0005

    def snapshot_steps(self) -> Generator[None, None, Snapshot]:
        """Copy every counter, yielding whenever `STEP` seconds of copying have passed since the last step; the
        `Snapshot` is the generator's return value. On the event loop only, which may run anything between steps
        (see the module docstring: what a scrape's counters agree on)."""
        router = self._router
        step = _Step(self.STEP)
        edges = []
        for edge in list(router.ingress_edges.values()):
            edges.append(_edge(edge))
            if step.over():
                yield
                step.begin()
        services = []
        seen: set[int] = set()  # the versions read as current: not read again among the retired
        for slot in list(router.slots.values()):
            s = slot.current  # the current version when its turn comes
            if s is None:
                continue
            seen.add(id(s))
            h, mailbox = s.latency, s.mailbox  # the mailbox's counters read directly: statistics() costs 1 µs more
            services.append(ServiceCounters(
                s.name, s.version, s.sha256, bool(s.spec.routes), tuple(h.counts) if h.count else (), h.total,
                len(mailbox), mailbox.capacity, mailbox.rejected, mailbox.shed, s.live, s.traps, s.memory_sizes(),
                s.spec.memory_limit_bytes, s.quarantines, s.preempted, s.ok, s.failed, *dropped_counts(s),
            ))  # fmt: skip
            edges.extend(_edge(edge) for edge in s.edges.values())
            if step.over():
                yield
                step.begin()
        statuses, connections = self._http_stats()
        return Snapshot(
            services,
            [(s.name, s.version, s.ok, s.failed) for s in router.retired if id(s) not in seen],
            edges,
            list(router.refused.items()),
            list(statuses.items()),
            connections,
            list(self._reload_counts().items()) if self._reload_counts is not None else [],
            self._cache_stats() if self._cache_stats is not None else None,
        )


class _Step:
    """How long the current step of `DaemonCollector.snapshot_steps` has run."""

    __slots__ = ("_budget", "_due")

    def __init__(self, budget: float) -> None:
        self._budget = budget
        self._due = time.perf_counter() + budget

    def over(self) -> bool:
        return time.perf_counter() >= self._due

    def begin(self) -> None:
        self._due = time.perf_counter() + self._budget


def _edge(edge: Edge) -> EdgeCounters:
    return EdgeCounters(edge.caller, edge.callee, edge.ok, tuple(edge.errors.items()), edge.messages,
                        tuple(edge.message_errors.items()))  # fmt: skip


# --- the families, by prometheus_client (the reference) ---------------------------------------------------------


def families(snapshot: Snapshot) -> Iterator[Metric]:
    """`snapshot` as prometheus_client metric families, in exposition order."""
    yield from _calls(snapshot)
    yield from _services(snapshot.services)
    responses = CounterMetricFamily("micromono_http_responses", _HELP["http_responses"], labels=["code"])
    for code, n in sorted(snapshot.statuses):
        responses.add_metric([str(code)], n)
    yield responses
    yield GaugeMetricFamily("micromono_http_connections", _HELP["http_connections"], value=snapshot.connections)
    reloads = CounterMetricFamily("micromono_reloads", _HELP["reloads"], labels=["service", "outcome"])
    for (service, outcome), n in sorted(snapshot.reloads):
        reloads.add_metric([service, outcome], n)
    yield reloads
    by_version = CounterMetricFamily(
        "micromono_version_calls", _HELP["version_calls"], labels=["service", "version", "outcome"]
    )
    for name, version, ok, failed in _versions(snapshot):
        by_version.add_metric([name, version, "ok"], ok)
        by_version.add_metric([name, version, "failed"], failed)
    yield by_version
    if snapshot.cache is not None:
        size, evictions = snapshot.cache
        yield GaugeMetricFamily("micromono_compile_cache_bytes", _HELP["compile_cache_bytes"], value=size)
        yield CounterMetricFamily(
            "micromono_compile_cache_evictions", _HELP["compile_cache_evictions"], value=evictions
        )


def _calls(snapshot: Snapshot) -> Iterator[Metric]:
    calls = CounterMetricFamily("micromono_calls", _HELP["calls"], labels=["caller", "callee", "outcome"])
    messages = CounterMetricFamily("micromono_messages", _HELP["messages"], labels=["sender", "receiver", "outcome"])
    routed = {s.name for s in snapshot.services if s.routed}
    for edge in snapshot.edges:
        if _silent(edge, routed):
            continue
        calls.add_metric([edge.caller, edge.callee, "ok"], edge.ok)
        for kind, n in sorted(edge.errors):
            calls.add_metric([edge.caller, edge.callee, kind], n)
        if edge.caller != "ingress":
            messages.add_metric([edge.caller, edge.callee, "ok"], edge.messages)
            for kind, n in sorted(edge.message_errors):
                messages.add_metric([edge.caller, edge.callee, kind], n)
    refused = CounterMetricFamily("micromono_calls_refused", _HELP["calls_refused"], labels=["caller", "reason"])
    for (caller, reason), n in sorted(snapshot.refused):
        refused.add_metric([caller, reason], n)
    yield calls
    yield messages
    yield refused


def _versions(snapshot: Snapshot) -> list[tuple[str, str, int, int]]:
    """(name, version, ok, failed) of every loaded version: the current ones, then those still finishing calls."""
    return [*((s.name, s.version, s.ok, s.failed) for s in snapshot.services), *snapshot.retired]


def _silent(edge: EdgeCounters, routed: set[str]) -> bool:
    """A service without routes never gets HTTP requests: no all-zero ingress series for it."""
    return edge.caller == "ingress" and edge.callee not in routed and not edge.ok and not edge.errors


def _services(services: list[ServiceCounters]) -> Iterator[Metric]:
    by = ["service"]
    duration = HistogramMetricFamily("micromono_call_duration_seconds", _HELP["call_duration_seconds"], labels=by)
    depth = GaugeMetricFamily("micromono_mailbox_depth", _HELP["mailbox_depth"], labels=by)
    capacity = GaugeMetricFamily("micromono_mailbox_capacity", _HELP["mailbox_capacity"], labels=by)
    rejected = CounterMetricFamily("micromono_mailbox_rejected", _HELP["mailbox_rejected"], labels=by)
    instances = GaugeMetricFamily("micromono_instances", _HELP["instances"], labels=by)
    failures = CounterMetricFamily("micromono_instance_failures", _HELP["instance_failures"], labels=by)
    memory = GaugeMetricFamily("micromono_guest_memory_bytes", _HELP["guest_memory_bytes"], labels=by)
    memory_limit = GaugeMetricFamily("micromono_guest_memory_limit_bytes", _HELP["guest_memory_limit_bytes"], labels=by)
    at_limit = GaugeMetricFamily("micromono_instances_at_memory_limit", _HELP["instances_at_memory_limit"], labels=by)
    shed = CounterMetricFamily("micromono_mailbox_shed", _HELP["mailbox_shed"], labels=by)
    quarantines = CounterMetricFamily("micromono_quarantines", _HELP["quarantines"], labels=by)
    preempted = CounterMetricFamily("micromono_preempted_runs", _HELP["preempted_runs"], labels=by)
    log_dropped = CounterMetricFamily("micromono_guest_log_dropped", _HELP["guest_log_dropped"], labels=by)
    log_bytes = CounterMetricFamily("micromono_guest_log_dropped_bytes", _HELP["guest_log_dropped_bytes"], labels=by)
    info = GaugeMetricFamily("micromono_service_info", _HELP["service_info"], labels=["service", "version", "sha256"])
    for s in services:
        label = [s.name]
        if s.latency:  # a service never timed has no histogram yet: 24 lines fewer per idle service in a scrape
            cumulative, buckets = 0, []
            for bound, n in zip(_BOUNDS, s.latency, strict=True):
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
        at_limit.add_metric(label, _at_limit(s))
        shed.add_metric(label, s.shed)
        quarantines.add_metric(label, s.quarantines)
        preempted.add_metric(label, s.preempted)
        log_dropped.add_metric(label, s.log_dropped)
        log_bytes.add_metric(label, s.log_dropped_bytes)
        info.add_metric([s.name, s.version, s.sha256], 1)
    yield from (duration, depth, capacity, rejected, shed, instances, failures, memory, memory_limit, at_limit)
    yield from (quarantines, preempted, log_dropped, log_bytes)
    yield info


def _at_limit(s: ServiceCounters) -> int:
    return sum(1 for size in s.memory_sizes if size + _WASM_PAGE > s.memory_limit)


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


_BOUNDS = tuple(_bound(b) for b in (*LATENCY_BUCKETS, float("inf")))

#: Help text by family name (without `micromono_` and `_total`), shared by `families` and `exposition`.
_HELP = {
    "calls": "Calls by caller, callee and outcome.",
    "messages": "Messages sent by sender, receiver and outcome.",
    "calls_refused": "Calls to unknown services or outside the allowlist.",
    "call_duration_seconds": "Call latency (a 1-in-16 sample of calls).",
    "mailbox_depth": "Queued work items.",
    "mailbox_capacity": "Mailbox bound.",
    "mailbox_rejected": "Items refused because the mailbox was full.",
    "mailbox_shed": "Queued items dropped for newer ones (on_full = shed_oldest).",
    "instances": "Live instances in the pool.",
    "instance_failures": "Instances discarded after a trap, timeout or ABI violation.",
    "guest_memory_bytes": "Linear memory of the instances.",
    "guest_memory_limit_bytes": "memory_limit: the most one instance may grow to.",
    "instances_at_memory_limit": "Idle instances that cannot grow by another page (memory.grow returns -1 to them).",
    "quarantines": "Times the supervisor quarantined a service version.",
    "preempted_runs": "Requests and messages that outlasted their first slice and were resumed between other work.",
    "guest_log_dropped": "Guest log lines dropped over the service's log_rate.",
    "guest_log_dropped_bytes": "Bytes of the guest log lines dropped over the service's log_rate.",
    "service_info": "Loaded service versions.",
    "http_responses": "Ingress responses by status.",
    "http_connections": "Open ingress connections.",
    "reloads": "Reloads by service and outcome.",
    "version_calls": "Calls served, by service version (failed: trap, timeout or ABI violation).",
    "compile_cache_bytes": "Bytes of compiled modules in the compile cache.",
    "compile_cache_evictions": "Compile cache entries removed to stay under cache_max_bytes.",
}


# --- the text, written directly ---------------------------------------------------------------------------------


def exposition(snapshot: Snapshot) -> bytes:
    """`snapshot` in Prometheus text format: the samples `families(snapshot)` holds, in the same order and with
    labels sorted by name like `generate_latest` writes them. Reads nothing but `snapshot`: safe in any thread."""
    out: list[str] = []
    calls, messages = _head("calls", "counter"), _head("messages", "counter")
    routed = {s.name for s in snapshot.services if s.routed}
    pace = Pacer()
    for edge in snapshot.edges:
        pace()
        if _silent(edge, routed):
            continue
        ends = f'{{callee="{_escape(edge.callee)}",caller="{_escape(edge.caller)}",outcome="'
        calls.append(f'micromono_calls_total{ends}ok"}} {_number(edge.ok)}\n')
        for kind, n in sorted(edge.errors):
            calls.append(f'micromono_calls_total{ends}{_escape(kind)}"}} {_number(n)}\n')
        if edge.caller != "ingress":
            ends = f'receiver="{_escape(edge.callee)}",sender="{_escape(edge.caller)}"}} '
            messages.append(f'micromono_messages_total{{outcome="ok",{ends}{_number(edge.messages)}\n')
            for kind, n in sorted(edge.message_errors):
                messages.append(f'micromono_messages_total{{outcome="{_escape(kind)}",{ends}{_number(n)}\n')
    out += calls
    out += messages
    out += _head("calls_refused", "counter")
    for (caller, reason), n in sorted(snapshot.refused):
        labels = f'caller="{_escape(caller)}",reason="{_escape(reason)}"'
        out.append(f"micromono_calls_refused_total{{{labels}}} {_number(n)}\n")
    _write_services(out, snapshot.services, pace)
    out += _head("http_responses", "counter")
    for code, n in sorted(snapshot.statuses):
        out.append(f'micromono_http_responses_total{{code="{code}"}} {_number(n)}\n')
    out += _head("http_connections", "gauge")
    out.append(f"micromono_http_connections {_number(snapshot.connections)}\n")
    out += _head("reloads", "counter")
    for (service, outcome), n in sorted(snapshot.reloads):
        labels = f'outcome="{_escape(outcome)}",service="{_escape(service)}"'
        out.append(f"micromono_reloads_total{{{labels}}} {_number(n)}\n")
    out += _head("version_calls", "counter")
    for name, version, ok, failed in _versions(snapshot):
        pace()
        labels = f'service="{_escape(name)}",version="{_escape(version)}"}} '
        out.append(f'micromono_version_calls_total{{outcome="ok",{labels}{_number(ok)}\n')
        out.append(f'micromono_version_calls_total{{outcome="failed",{labels}{_number(failed)}\n')
    if snapshot.cache is not None:
        size, evictions = snapshot.cache
        out += _head("compile_cache_bytes", "gauge")
        out.append(f"micromono_compile_cache_bytes {_number(size)}\n")
        out += _head("compile_cache_evictions", "counter")
        out.append(f"micromono_compile_cache_evictions_total {_number(evictions)}\n")
    chunks = []
    for start in range(0, len(out), _LINES):
        chunks.append("".join(out[start : start + _LINES]).encode())
        pace()
    return b"".join(chunks)  # lets go of the GIL itself while it copies, from 1 MiB up (CPython's bytes.join)


def _write_services(out: list[str], services: list[ServiceCounters], pace: Pacer) -> None:
    duration = _head("call_duration_seconds", "histogram")
    depth, capacity = _head("mailbox_depth", "gauge"), _head("mailbox_capacity", "gauge")
    rejected, shed = _head("mailbox_rejected", "counter"), _head("mailbox_shed", "counter")
    instances, failures = _head("instances", "gauge"), _head("instance_failures", "counter")
    memory, memory_limit = _head("guest_memory_bytes", "gauge"), _head("guest_memory_limit_bytes", "gauge")
    at_limit, quarantines = _head("instances_at_memory_limit", "gauge"), _head("quarantines", "counter")
    preempted, info = _head("preempted_runs", "counter"), _head("service_info", "gauge")
    log_dropped, log_bytes = _head("guest_log_dropped", "counter"), _head("guest_log_dropped_bytes", "counter")
    for s in services:
        pace()
        name = _escape(s.name)
        label = f'{{service="{name}"}} '
        if s.latency:
            cumulative = 0
            for bound, n in zip(_BOUNDS, s.latency, strict=True):
                cumulative += n
                duration.append(f'micromono_call_duration_seconds_bucket{{le="{bound}",service="{name}"}} '
                                f"{_number(cumulative)}\n")  # fmt: skip
            duration.append(f"micromono_call_duration_seconds_count{label}{_number(cumulative)}\n")
            duration.append(f"micromono_call_duration_seconds_sum{label}{_number(s.latency_sum)}\n")
        depth.append(f"micromono_mailbox_depth{label}{_number(s.queued)}\n")
        capacity.append(f"micromono_mailbox_capacity{label}{_number(s.capacity)}\n")
        rejected.append(f"micromono_mailbox_rejected_total{label}{_number(s.rejected)}\n")
        shed.append(f"micromono_mailbox_shed_total{label}{_number(s.shed)}\n")
        instances.append(f"micromono_instances{label}{_number(s.live)}\n")
        failures.append(f"micromono_instance_failures_total{label}{_number(s.traps)}\n")
        memory.append(f"micromono_guest_memory_bytes{label}{_number(sum(s.memory_sizes))}\n")
        memory_limit.append(f"micromono_guest_memory_limit_bytes{label}{_number(s.memory_limit)}\n")
        at_limit.append(f"micromono_instances_at_memory_limit{label}{_number(_at_limit(s))}\n")
        quarantines.append(f"micromono_quarantines_total{label}{_number(s.quarantines)}\n")
        preempted.append(f"micromono_preempted_runs_total{label}{_number(s.preempted)}\n")
        log_dropped.append(f"micromono_guest_log_dropped_total{label}{_number(s.log_dropped)}\n")
        log_bytes.append(f"micromono_guest_log_dropped_bytes_total{label}{_number(s.log_dropped_bytes)}\n")
        info.append(f'micromono_service_info{{service="{name}",sha256="{_escape(s.sha256)}",'
                    f'version="{_escape(s.version)}"}} 1.0\n')  # fmt: skip
    for family in (duration, depth, capacity, rejected, shed, instances, failures, memory, memory_limit, at_limit,
                   quarantines, preempted, log_dropped, log_bytes, info):  # fmt: skip
        out += family


#: Lines encoded at a time: one str.join and encode of megabytes would hold the GIL for milliseconds.
_LINES = 2048


class Pacer:
    """Called between items of long work in a worker thread: hands the GIL to a thread that waits for it (the
    event loop's above all) once per `SLICE` seconds of work.

    A thread that never lets go makes one that wants the GIL wait for the switch interval
    (`sys.getswitchinterval()`, 5 ms) each time before it must hand it over. `time.sleep(0)` lets go and sleeps for
    Linux's timer slack (0.05-0.07 ms), long enough for the waiting thread to take the GIL (after a bare release
    such as `os.sched_yield()` this thread takes it back first); too long to do after every item.
    """

    SLICE = 0.0005

    __slots__ = ("_due",)

    def __init__(self) -> None:
        self._due = time.perf_counter() + self.SLICE

    def __call__(self) -> None:
        if time.perf_counter() >= self._due:
            time.sleep(0)
            self._due = time.perf_counter() + self.SLICE


def _head(name: str, kind: str) -> list[str]:
    """A family's `# HELP` and `# TYPE` lines, under the name generate_latest gives it (counters end in `_total`)."""
    full = f"micromono_{name}_total" if kind == "counter" else f"micromono_{name}"
    return [f"# HELP {full} {_HELP[name]}\n", f"# TYPE {full} {kind}\n"]


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _number(value: float) -> str:
    """A value as prometheus_client writes it (`floatToGoString`), without its call for the common small int."""
    if type(value) is int and 0 <= value < 1_000_000:  # repr(float(n)) is str(n) + ".0" below Go's exponent switch
        return f"{value}.0"
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]


# --- the registry ---------------------------------------------------------------------------------------------


class DaemonRegistry(CollectorRegistry):
    """A registry holding only this daemon's collector, which stays reachable for `/metrics`: the admin listener
    awaits `snapshot()` on the loop and formats it in a thread."""

    def __init__(self, collector: DaemonCollector) -> None:
        super().__init__(auto_describe=False)
        self.collector = collector
        self.register(collector)

    async def snapshot(self) -> Snapshot:
        """Every counter, copied a step at a time (`DaemonCollector.snapshot_steps`); between steps the event
        loop runs whatever is ready, so a scrape of many services holds it ~`DaemonCollector.STEP` at a time."""
        steps = self.collector.snapshot_steps()
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
    return DaemonRegistry(DaemonCollector(router, http_stats, reload_counts, cache_stats))


def render(source: CollectorRegistry | Snapshot) -> bytes:
    """Prometheus text: of a `Snapshot` by `exposition` (any thread), or of a registry, read now (so on the event
    loop only) and formatted by prometheus_client."""
    if isinstance(source, Snapshot):
        return exposition(source)
    return generate_latest(source)
