"""The scrape-time snapshot: the daemon's live counters copied into plain data, on the event loop.

Nothing runs per call for metrics. The hot path bumps plain integers on objects it already holds (`router.Edge`,
`service.Service`, `ingress.Ingress`'s response counts), because a prometheus_client counter and histogram update
per request would cost more than the Wasm call itself (`../shared/research/ingress-ceiling.md`); a scrape reads
them here.

`SnapshotReader.snapshot_steps()` is the only code that reads those live objects, which the loop changes between
its callbacks, so only the loop itself runs it; it also re-reads each idle instance's memory size from wasmtime,
which is the loop thread's to do. With many services the copy is too long to hold the loop in one go, so it copies a
step at a time (`SnapshotReader.STEP`) and the registry lets the loop serve whatever is ready between steps. Each
service's counters, its edges included, are read in one step, so they agree with each other; counters of different
services are read up to a scrape's duration apart, and a version swapped in meanwhile may be missed by this scrape
(its predecessor is read instead, once: as current if it was still current when its turn came, else among the
retired). Prometheus series are independent, so a scrape need not be one instant.

This module must not import prometheus_client or format anything: `exposition.py` writes the text, in a worker
thread, from the `Snapshot` alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Final, NamedTuple

from micromono.guestlog import dropped_counts

if TYPE_CHECKING:
    from micromono.router import Edge, Router

__all__ = ["WASM_PAGE", "Counts", "EdgeCounters", "ServiceCounters", "Snapshot", "SnapshotReader"]

WASM_PAGE: Final = 65536

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

    def at_memory_limit(self) -> int:
        """Idle instances that cannot grow by another page (their next `memory.grow` returns -1)."""
        return sum(1 for size in self.memory_sizes if size + WASM_PAGE > self.memory_limit)


class EdgeCounters(NamedTuple):
    """One caller -> callee edge, as a snapshot saw it (errors by kind, in the order they first happened)."""

    caller: str
    callee: str
    ok: int
    errors: Counts
    messages: int
    message_errors: Counts


class Snapshot:
    """Every counter of one scrape, copied on the event loop: plain data that any thread may read."""

    __slots__ = ("services", "retired", "edges", "refused", "statuses", "connections", "reloads", "cache")

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

    def versions(self) -> list[tuple[str, str, int, int]]:
        """(name, version, ok, failed) of every loaded version: the current ones, then those still finishing calls."""
        return [*((s.name, s.version, s.ok, s.failed) for s in self.services), *self.retired]

    def exported_edges(self) -> Iterator[EdgeCounters]:
        """The edges that get series: a service without routes never gets HTTP requests, so no all-zero ingress
        series for it."""
        routed = {s.name for s in self.services if s.routed}
        for edge in self.edges:
            if edge.caller == "ingress" and edge.callee not in routed and not edge.ok and not edge.errors:
                continue
            yield edge


class SnapshotReader:
    """Reads the daemon's plain counters into a `Snapshot`, on the event loop.

    Args:
        router: the daemon's router (services, edges, refused calls).
        http_stats: returns `(responses by status, open connections)` from ingress.
        reload_counts: returns reloads by `(service, outcome)`: a copy, not the reloader's own dict.
        cache_stats: returns the compile cache's `(bytes, evictions)`, or None when there is no cache.
        clock: seconds, for the length of a step (`time.perf_counter`; tests inject their own).
    """

    def __init__(
        self,
        router: Router,
        http_stats: Callable[[], tuple[dict[int, int], int]],
        reload_counts: Callable[[], dict[tuple[str, str], int]] | None = None,
        cache_stats: Callable[[], tuple[int, int] | None] | None = None,
        *,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._router = router
        self._http_stats = http_stats
        self._reload_counts = reload_counts
        self._cache_stats = cache_stats
        self.clock = clock

    def snapshot(self) -> Snapshot:
        """Copy every counter now, in one go: holds the event loop for the whole copy. For tests and tools
        (`registry.collect()`); a scrape takes `snapshot_steps` a step at a time."""
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
        step = _Step(self.STEP, self.clock)
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
            h, mailbox = s.latency, s.mailbox  # the mailbox's counters read directly: statistics() builds an object
            services.append(
                ServiceCounters(
                    s.name,
                    s.version,
                    s.sha256,
                    bool(s.spec.routes),
                    tuple(h.counts) if h.count else (),
                    h.total,
                    len(mailbox),
                    mailbox.capacity,
                    mailbox.rejected,
                    mailbox.shed,
                    s.live,
                    s.traps,
                    s.memory_sizes(),
                    s.spec.memory_limit_bytes,
                    s.quarantines,
                    s.preempted,
                    s.ok,
                    s.failed,
                    *dropped_counts(s),
                )
            )
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
    """How long the current step of `SnapshotReader.snapshot_steps` has run."""

    __slots__ = ("_budget", "_clock", "_due")

    def __init__(self, budget: float, clock: Callable[[], float]) -> None:
        self._budget = budget
        self._clock = clock
        self._due = clock() + budget

    def over(self) -> bool:
        return self._clock() >= self._due

    def begin(self) -> None:
        self._due = self._clock() + self._budget


def _edge(edge: Edge) -> EdgeCounters:
    return EdgeCounters(
        edge.caller, edge.callee, edge.ok, tuple(edge.errors.items()), edge.messages, tuple(edge.message_errors.items())
    )
