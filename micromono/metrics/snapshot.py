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

Actor services (actors/keyed.py) are read the same way, with two costs kept off the loop's long holds: the stored
bytes are the `KeyedService.stored_bytes` running total (never a sum over the directory, which may list 100,000
actors), and the actors in memory, whose queues and instances only a scan can tell, are scanned a step at a time
(`scan_actors`, also used by the admin listener's `/actors` pages). Their storage's counters are read through
`StorageStats`, the Protocol this package needs of `ServiceStorage.stats`. Their WebSocket connections and streams
are read from `KeyedService.stream_counters` (actors/stream.py's `StreamCounters`): per-service totals kept as
things happen, so a scrape never walks the connections or the streams.

This module must not import prometheus_client or format anything: `exposition.py` writes the text, in a worker
thread, from the `Snapshot` alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Final, NamedTuple, Protocol

from micromono.guestlog import dropped_counts

if TYPE_CHECKING:
    from micromono.actors.keyed import KeyedService
    from micromono.actors.stream import StreamCounters
    from micromono.router import Edge, Router

__all__ = [
    "SCAN_CHUNK",
    "WASM_PAGE",
    "ActorCounters",
    "ActorScan",
    "Counts",
    "EdgeCounters",
    "ServiceCounters",
    "Snapshot",
    "SnapshotReader",
    "Step",
    "StorageCounters",
    "StorageStats",
    "WebSocketCounters",
    "scan_actors",
]

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


class StorageStats(Protocol):
    """What the metrics read of an actor service's storage (`actors.storage.StorageStats`), on the event loop, once
    per scrape; the storage's writer thread may update them meanwhile.

    `commits`: actor commits (one message's writes each) made durable. `batches`: group commits (one database
    transaction and sync each, holding one or more actor commits). `failed_commits`: actor commits that failed.
    `commit_seconds`: counts per bucket of `names.COMMIT_BUCKETS` (and one over the last, not cumulative), with
    their sum `commit_seconds_sum`. `batch_sizes`: the actor commits in each group commit, over
    `names.BATCH_BUCKETS`. `bytes_on_disk()`: the database's files (a few `stat` calls).
    """

    commits: int
    batches: int
    failed_commits: int
    commit_seconds: list[int]
    commit_seconds_sum: float
    batch_sizes: list[int]

    def bytes_on_disk(self) -> int: ...


class StorageCounters(NamedTuple):
    """An actor service's storage counters, as a snapshot saw them (histogram counts per bucket, not cumulative)."""

    commits: int
    batches: int
    failed: int
    commit_seconds: tuple[int, ...]  # per bucket of names.COMMIT_BUCKETS, and one over the last
    commit_seconds_sum: float
    batch_sizes: tuple[int, ...]  # per bucket of names.BATCH_BUCKETS, and one over the last
    batch_sizes_sum: float
    disk_bytes: int


class WebSocketCounters(NamedTuple):
    """An actor service's WebSocket connections and streams, as a snapshot saw them (`StreamCounters`)."""

    open: int  # connections open now
    opened: int
    refused: tuple[tuple[str, int], ...]  # upgrades refused, by reason (every reason, in `stream.REFUSALS` order)
    messages_in: int
    messages_out: int
    bytes_in: int
    bytes_out: int
    published: int
    resumes: int
    resets: int
    closes: tuple[tuple[int, int], ...]  # connections ended, by close code (the codes seen, in ascending order)


#: `ActorCounters.websockets` when made without them (tests, tools): zeros, and no refusal or close series.
NO_WEBSOCKETS: Final = WebSocketCounters(0, 0, (), 0, 0, 0, 0, 0, 0, 0, ())


class ActorScan(NamedTuple):
    """What only a scan of an actor service's actors in memory tells (`scan_actors`)."""

    in_memory: int  # actors held in memory: live, loading, or between instances
    live: int  # of which have a live instance
    live_known: int  # of which are in the directory (have storage): `known - live_known` are hibernated
    queued: int  # messages waiting in their queues
    deepest: int  # the longest of those queues


class ActorCounters(NamedTuple):
    """One actor service, as a snapshot saw it."""

    name: str
    scan: ActorScan
    known: int  # actors with storage (the directory)
    activations: int
    revivals: int
    activation: tuple[int, ...]  # activations per latency bucket (service.LATENCY_BUCKETS), not cumulative
    activation_sum: float
    hibernated_idle: int
    hibernated_evicted: int
    stored_bytes: int
    alarms_pending: int
    alarms_fired: int
    alarms_retried: int
    alarms_dropped: int
    resets: int
    rejected: int
    storage: StorageCounters
    websockets: WebSocketCounters = NO_WEBSOCKETS

    @property
    def hibernated(self) -> int:
        """Actors with storage and no live instance (the directory may have changed during the scan: never < 0)."""
        return max(0, self.known - self.scan.live_known)


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

    __slots__ = (
        "services", "retired", "edges", "refused", "statuses", "connections", "reloads", "cache", "actors", "spans",
    )  # fmt: skip

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
        actors: list[ActorCounters] | None = None,
        spans: dict[str, int] | None = None,
    ) -> None:
        self.services = services  # current versions, in manifest order
        self.retired = retired  # (name, version, ok, failed) of replaced versions still finishing calls
        self.edges = edges  # the ingress edges first (one per service name ever loaded), then each allowlist
        self.refused = refused  # ((caller, reason), calls)
        self.statuses = statuses  # (HTTP status, responses)
        self.connections = connections  # open ingress connections
        self.reloads = reloads  # ((service, outcome), reloads)
        self.cache = cache  # (bytes in the compile cache, evictions), or None without a cache
        self.actors = actors if actors is not None else []  # the actor services, in the order they were opened
        self.spans = spans  # ended spans by outcome (tracing.Tracer.counts), or None with tracing off

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
        span_counts: returns ended spans by outcome (`tracing.Tracer.counts`); None with tracing off.
        clock: seconds, for the length of a step (`time.perf_counter`; tests inject their own).
    """

    def __init__(
        self,
        router: Router,
        http_stats: Callable[[], tuple[dict[int, int], int]],
        reload_counts: Callable[[], dict[tuple[str, str], int]] | None = None,
        cache_stats: Callable[[], tuple[int, int] | None] | None = None,
        span_counts: Callable[[], dict[str, int]] | None = None,
        *,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._router = router
        self._http_stats = http_stats
        self._reload_counts = reload_counts
        self._cache_stats = cache_stats
        self._span_counts = span_counts
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

    #: Seconds of copying after which `snapshot_steps` yields (checked after each edge and each service, and every
    #: `SCAN_CHUNK` actors of an actor service).
    STEP = 0.0005

    def snapshot_steps(self) -> Generator[None, None, Snapshot]:
        """Copy every counter, yielding whenever `STEP` seconds of copying have passed since the last step; the
        `Snapshot` is the generator's return value. On the event loop only, which may run anything between steps
        (see the module docstring: what a scrape's counters agree on)."""
        router = self._router
        step = Step(self.STEP, self.clock)
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
        actors = []
        for keyed in list(router.keyed.values()):
            scan = yield from scan_actors(keyed, step)
            actors.append(_actor_counters(keyed, scan))  # the counters after the scan: one step, so they agree
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
            actors,
            self._span_counts() if self._span_counts is not None else None,
        )


#: Actors scanned between two looks at the clock (`scan_actors`): about 50 µs of work.
SCAN_CHUNK: Final = 256


def scan_actors(keyed: KeyedService, step: Step) -> Generator[None, None, ActorScan]:
    """Count `keyed`'s actors in memory (live, queued, the deepest queue), yielding whenever `step` is over; the
    `ActorScan` is the generator's return value. On the event loop only.

    The actors are copied first, in one C-level call, and the copy is scanned between the loop's other work: an
    actor that hibernates or activates meanwhile is counted as the copy saw it. They are copied from the dict under
    the `OrderedDict` (`dict.values`): its own order (least recently used first) is not needed to count, and
    walking its links costs many times more (about 6 ms against 0.4 ms for 100,000 actors on this project's VM).
    """
    actors = list(dict.values(keyed.actors))
    directory = keyed.directory
    live = live_known = queued = deepest = 0
    for start in range(0, len(actors), SCAN_CHUNK):
        for actor in actors[start : start + SCAN_CHUNK]:
            depth = len(actor.queue)
            if depth:
                queued += depth
                if depth > deepest:
                    deepest = depth
            if actor.instance is not None:
                live += 1
                if actor.key in directory:
                    live_known += 1
        if step.over():
            yield
            step.begin()
    return ActorScan(len(actors), live, live_known, queued, deepest)


def _actor_counters(keyed: KeyedService, scan: ActorScan) -> ActorCounters:
    h = keyed.activation_latency
    stats: StorageStats = keyed.storage.stats
    return ActorCounters(
        keyed.name,
        scan,
        len(keyed.directory),
        keyed.activations,
        keyed.revivals,
        tuple(h.counts),
        h.total,
        keyed.hibernated_idle,
        keyed.hibernated_lru,
        keyed.stored_bytes,
        len(keyed.alarms),
        keyed.alarms_fired,
        keyed.alarms_retried,
        keyed.alarms_dropped,
        keyed.resets,
        keyed.rejected,
        StorageCounters(
            stats.commits,
            stats.batches,
            stats.failed_commits,
            tuple(stats.commit_seconds),
            stats.commit_seconds_sum,
            tuple(stats.batch_sizes),
            float(stats.commits + stats.failed_commits),  # each actor commit is in exactly one group commit
            stats.bytes_on_disk(),
        ),
        _websocket_counters(keyed.stream_counters),
    )


def _websocket_counters(c: StreamCounters) -> WebSocketCounters:
    return WebSocketCounters(
        c.open,
        c.opened,
        tuple(c.refused.items()),
        c.messages_in,
        c.messages_out,
        c.bytes_in,
        c.bytes_out,
        c.published,
        c.resumes,
        c.resets,
        tuple(sorted(c.closes.items())),
    )


class Step:
    """How long the current step of a stepped read on the event loop has run (`SnapshotReader.snapshot_steps`,
    `scan_actors`, the admin listener's actor pages): `over()` once `budget` seconds of `clock` have passed since
    the step began, and the reader then yields and calls `begin()`."""

    __slots__ = ("_budget", "_clock", "_due")

    def __init__(self, budget: float, clock: Callable[[], float] = time.perf_counter) -> None:
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
