"""Every Prometheus metric micromono exports, on a per-daemon registry. The only module that imports
prometheus_client.

Nothing here runs per call. The hot path bumps plain integers on objects it already holds (`router.Edge`,
`service.Service`, `ingress.IngressStats`); `DaemonCollector.collect()` turns them into metric families when
`/metrics` is scraped. A `prometheus_client.Counter.inc()` plus `Histogram.observe()` per request cost ~2 µs here,
more than the whole Wasm call (`../shared/research/ingress-ceiling.md`).

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
| `offloaded` | gauge | service | 1 when a long run moved the service's requests to a thread of their own |
| `reloads_total` | counter | service, outcome | hot reloads (`service="services.toml"` for the manifest) |
| `version_calls_total` | counter | service, version, outcome | calls served by each loaded version (`ok`/`failed`) |
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from .service import LATENCY_BUCKETS

if TYPE_CHECKING:
    from .router import Edge, Router
    from .service import Service

__all__ = ["DaemonCollector", "new_registry", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class DaemonCollector(Collector):
    """Builds every metric family from the daemon's plain counters at scrape time.

    Args:
        router: the daemon's router (services, edges, refused calls).
        http_stats: returns `(responses by status, open connections)` from ingress.
    """

    def __init__(
        self,
        router: Router,
        http_stats: Callable[[], tuple[dict[int, int], int]],
        reload_counts: Callable[[], dict[tuple[str, str], int]] | None = None,
    ) -> None:
        self._router = router
        self._http_stats = http_stats
        self._reload_counts = reload_counts

    def describe(self) -> Iterable[Any]:
        return []  # collected lazily: no duplicate-name checks needed on a private registry

    def collect(self) -> Iterator[Any]:
        router = self._router
        services = list(router.services())
        yield from self._calls(router, services)
        yield from self._services(services)
        statuses, connections = self._http_stats()
        responses = CounterMetricFamily("micromono_http_responses", "Ingress responses by status.", labels=["code"])
        for code, n in sorted(statuses.items()):
            responses.add_metric([str(code)], n)
        yield responses
        yield GaugeMetricFamily("micromono_http_connections", "Open ingress connections.", value=connections)
        reloads = CounterMetricFamily(
            "micromono_reloads", "Reloads by service and outcome.", labels=["service", "outcome"]
        )
        for (service, outcome), n in sorted((self._reload_counts or dict)().items()):
            reloads.add_metric([service, outcome], n)
        yield reloads
        by_version = CounterMetricFamily(
            "micromono_version_calls",
            "Calls served, by service version (failed: trap, timeout or ABI violation).",
            labels=["service", "version", "outcome"],
        )
        for s in [*services, *router.retired]:
            by_version.add_metric([s.name, s.version, "ok"], s.ok)
            by_version.add_metric([s.name, s.version, "failed"], s.failed)
        yield by_version

    def _calls(self, router: Router, services: list[Service]) -> Iterator[Any]:
        calls = CounterMetricFamily(
            "micromono_calls", "Calls by caller, callee and outcome.", labels=["caller", "callee", "outcome"]
        )
        messages = CounterMetricFamily(
            "micromono_messages",
            "Messages sent by sender, receiver and outcome.",
            labels=["sender", "receiver", "outcome"],
        )
        edges: list[Edge] = list(router.ingress_edges.values())
        for service in services:
            edges.extend(service.edges.values())
        routed = {s.name for s in services if s.spec.routes}
        for edge in edges:
            if edge.caller == "ingress" and edge.callee not in routed and not edge.ok and not edge.errors:
                continue  # a service without routes never gets HTTP requests: no all-zero series
            calls.add_metric([edge.caller, edge.callee, "ok"], edge.ok)
            for kind, n in sorted(edge.errors.items()):
                calls.add_metric([edge.caller, edge.callee, kind], n)
            if edge.caller != "ingress":
                messages.add_metric([edge.caller, edge.callee, "ok"], edge.messages)
                for kind, n in sorted(edge.message_errors.items()):
                    messages.add_metric([edge.caller, edge.callee, kind], n)
        refused = CounterMetricFamily(
            "micromono_calls_refused",
            "Calls to unknown services or outside the allowlist.",
            labels=["caller", "reason"],
        )
        for (caller, reason), n in sorted(router.refused.items()):
            refused.add_metric([caller, reason], n)
        yield calls
        yield messages
        yield refused

    def _services(self, services: list[Service]) -> Iterator[Any]:
        duration = HistogramMetricFamily(
            "micromono_call_duration_seconds", "Call latency (a 1-in-16 sample of calls).", labels=["service"]
        )
        depth = GaugeMetricFamily("micromono_mailbox_depth", "Queued work items.", labels=["service"])
        capacity = GaugeMetricFamily("micromono_mailbox_capacity", "Mailbox bound.", labels=["service"])
        rejected = CounterMetricFamily(
            "micromono_mailbox_rejected", "Items refused because the mailbox was full.", labels=["service"]
        )
        instances = GaugeMetricFamily("micromono_instances", "Live instances in the pool.", labels=["service"])
        failures = CounterMetricFamily(
            "micromono_instance_failures",
            "Instances discarded after a trap, timeout or ABI violation.",
            labels=["service"],
        )
        memory = GaugeMetricFamily(
            "micromono_guest_memory_bytes", "Linear memory of the instances.", labels=["service"]
        )
        memory_limit = GaugeMetricFamily(
            "micromono_guest_memory_limit_bytes", "memory_limit: the most one instance may grow to.", labels=["service"]
        )
        at_limit = GaugeMetricFamily(
            "micromono_instances_at_memory_limit",
            "Idle instances that cannot grow by another page (memory.grow returns -1 to them).",
            labels=["service"],
        )
        shed = CounterMetricFamily(
            "micromono_mailbox_shed", "Queued items dropped for newer ones (on_full = shed_oldest).", labels=["service"]
        )
        quarantines = CounterMetricFamily(
            "micromono_quarantines", "Times the supervisor quarantined a service version.", labels=["service"]
        )
        offloaded = GaugeMetricFamily(
            "micromono_offloaded", "1 when the service runs its requests on a thread of its own.", labels=["service"]
        )
        info = GaugeMetricFamily(
            "micromono_service_info", "Loaded service versions.", labels=["service", "version", "sha256"]
        )
        for s in services:
            label = [s.name]
            h = s.latency
            if h.count:  # a service never timed has no histogram yet: 24 lines fewer per idle service in a scrape
                cumulative, buckets = 0, []
                for bound, n in zip(_BOUNDS, h.counts, strict=True):
                    cumulative += n
                    buckets.append((bound, cumulative))
                duration.add_metric(label, buckets, h.total)
            stats = s.mailbox.statistics()
            depth.add_metric(label, stats.queued)
            capacity.add_metric(label, stats.capacity)
            rejected.add_metric(label, stats.rejected)
            instances.add_metric(label, s.live)
            failures.add_metric(label, s.traps)
            limit = s.spec.memory_limit_bytes
            sizes = s.memory_sizes()
            memory.add_metric(label, sum(sizes))
            memory_limit.add_metric(label, limit)
            at_limit.add_metric(label, sum(1 for size in sizes if size + _WASM_PAGE > limit))
            shed.add_metric(label, stats.shed)
            quarantines.add_metric(label, s.quarantines)
            offloaded.add_metric(label, 1 if s.offloaded else 0)
            info.add_metric([s.name, s.version, s.sha256], 1)
        yield from (duration, depth, capacity, rejected, shed, instances, failures, memory, memory_limit, at_limit)
        yield from (quarantines, offloaded)
        yield info


_WASM_PAGE = 65536


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


_BOUNDS = tuple(_bound(b) for b in (*LATENCY_BUCKETS, float("inf")))


def new_registry(
    router: Router,
    http_stats: Callable[[], tuple[dict[int, int], int]],
    reload_counts: Callable[[], dict[tuple[str, str], int]] | None = None,
) -> CollectorRegistry:
    """A fresh registry holding only this daemon's collector (tests may run many daemons in one process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(router, http_stats, reload_counts))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The registry in Prometheus text format."""
    return generate_latest(registry)
