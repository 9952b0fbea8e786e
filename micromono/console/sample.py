"""What one tick of the live page carries: the live numbers read on the event loop (`read_steps`, into a plain
`Reading`), and the JSON document made of two readings in a worker thread (`Samples.document`).

The loop's part only copies: per service the counters its current version keeps anyway (calls, latency bucket
counts, mailbox, instances, quarantine), per edge its counters, per actor service a scan of its actors in memory
(`metrics.scan_actors`) and its WebSocket count, and the reload events recorded since the last reading. It reads a
step at a time (`metrics.Step`), as a scrape does, so many services never hold the loop long; it skips what a scrape
also reads but the page does not show (the instances' memory sizes, the database files' sizes).

The worker thread's part turns two readings into rates over the tick (a counter that went down belongs to a new
version: it is counted from zero), p50 and p99 latency from the bucket counts timed during the tick (one call in
`service.LATENCY_SAMPLE` is timed), and compact JSON. The shape is in docs/operations.md, *The live page*.

This module must not hold live objects past `read_steps`, serve anything, or keep the clients: events.py does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from micromono.metrics import Step, scan_actors
from micromono.pacer import Pacer
from micromono.reload import ReloadResult
from micromono.service import INGRESS, LATENCY_BUCKETS

if TYPE_CHECKING:
    from micromono.router import Router

__all__ = [
    "ActorReading",
    "EdgeReading",
    "Reading",
    "ReloadLog",
    "Samples",
    "ServiceReading",
    "numbered_reloads",
    "quantile",
    "read_steps",
    "reload_document",
    "sse",
]

#: What the console reads of the reload history: `(recorded, history)`, how many events were ever recorded and the
#: last of them, oldest first (`reload.Reloader.recorded` and `history`; `(0, ())` while there is no reloader).
ReloadLog = Callable[[], tuple[int, Sequence[ReloadResult]]]

#: Compact JSON; NaN refused (nothing here makes one, and JSON has none).
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
#: Services or edges encoded at a time between two paces: json's C encoder holds the GIL for each chunk.
_ENCODE_CHUNK: Final = 64


class ActorReading(NamedTuple):
    """An actor service's actors as one reading saw them."""

    live: int  # with a live instance
    in_memory: int  # held in memory (live, loading or between instances)
    hibernated: int  # with storage and no live instance
    known: int  # with storage
    queued: int  # messages waiting in their queues
    websockets: int  # WebSocket connections open to its actors


class ServiceReading(NamedTuple):
    """One service's current version as one reading saw it."""

    name: str
    version: str
    sha256: str
    routed: bool
    live: int
    idle: int
    max_instances: int
    queued: int
    capacity: int
    ok: int
    failed: int
    latency: tuple[int, ...]  # calls timed per bucket of service.LATENCY_BUCKETS (and one over the last)
    quarantine_left: float  # seconds; 0 when not quarantined
    quarantine_reason: str
    quarantines: int
    actors: ActorReading | None  # None: not an actor service


class EdgeReading(NamedTuple):
    """One caller -> callee edge's counters (of the caller's current version; `caller_version` "" for ingress)."""

    caller: str
    caller_version: str
    callee: str
    ok: int
    errors: int
    messages: int
    message_errors: int


class Reading(NamedTuple):
    """Everything one tick read, as plain data any thread may read."""

    at: float  # time.time()
    monotonic: float  # time.monotonic(): the tick's length, whatever the wall clock does
    stopping: bool
    services: list[ServiceReading]
    edges: list[EdgeReading]
    reloads: list[tuple[int, ReloadResult]]  # (seq, event) recorded since the previous reading, still kept


def read_steps(
    router: Router, reload_log: ReloadLog, seen: int, *, stopping: bool, step: Step
) -> Generator[None, None, tuple[Reading, int]]:
    """Copy the live numbers, yielding whenever `step` is over; returns the `Reading` and the reload events
    recorded so far (the next reading's `seen`). On the event loop only."""
    now = time.monotonic()
    edges = []
    services = []
    ingress_edges = router.ingress_edges
    for slot in list(router.slots.values()):
        s = slot.current
        if s is None:
            continue
        http = ingress_edges.get(s.name)
        if http is not None:
            edges.append(EdgeReading(INGRESS, "", s.name, http.ok, sum(http.errors.values()), http.messages, 0))
        left = s.quarantined_until - now if s.quarantined_until else 0.0
        keyed = router.keyed.get(s.name)
        actors = None
        if keyed is not None:
            scan = yield from scan_actors(keyed, step)
            known = len(keyed.directory)
            hibernated = max(0, known - scan.live_known)
            websockets = keyed.stream_counters.open
            actors = ActorReading(scan.live, scan.in_memory, hibernated, known, scan.queued, websockets)
        mailbox = s.mailbox
        services.append(
            ServiceReading(
                s.name,
                s.version,
                s.sha256,
                bool(s.spec.routes),
                s.live,
                len(s.idle),
                s.max_instances,
                len(mailbox),
                mailbox.capacity,
                s.ok,
                s.failed,
                tuple(s.latency.counts),
                max(0.0, left),
                s.quarantine_reason if left > 0 else "",
                s.quarantines,
                actors,
            )
        )
        for edge in s.edges.values():
            edges.append(
                EdgeReading(
                    s.name,
                    s.version,
                    edge.callee,
                    edge.ok,
                    sum(edge.errors.values()),
                    edge.messages,
                    sum(edge.message_errors.values()),
                )
            )
        if step.over():
            yield
            step.begin()
    recorded, history = reload_log()
    reloads = numbered_reloads(recorded, history, after=seen)
    reading = Reading(time.time(), now, stopping, services, edges, reloads)
    return reading, recorded


def numbered_reloads(
    recorded: int, history: Sequence[ReloadResult], *, after: int = 0
) -> list[tuple[int, ReloadResult]]:
    """The events of `history` (the last of `recorded` events, oldest first) numbered from 1 since the daemon
    started, those numbered after `after` only."""
    first = recorded - len(history) + 1  # the number of history[0]
    start = max(0, after + 1 - first)
    return [(first + i, history[i]) for i in range(start, len(history))]


def quantile(q: float, counts: Sequence[int]) -> float | None:
    """The `q`-quantile (0..1) of calls counted per bucket of `service.LATENCY_BUCKETS` (the last count: over the
    last bound), interpolated within its bucket as Prometheus' `histogram_quantile` does; None without calls."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    below = 0
    for i, n in enumerate(counts):
        if n and below + n >= rank:
            if i >= len(LATENCY_BUCKETS):
                return LATENCY_BUCKETS[-1]  # over the last bound: the bound is all that is known
            lower = LATENCY_BUCKETS[i - 1] if i > 0 else 0.0
            upper = LATENCY_BUCKETS[i]
            return lower + (upper - lower) * (rank - below) / n
        below += n
    return LATENCY_BUCKETS[-1]


def reload_document(seq: int, result: ReloadResult) -> dict[str, Any]:
    """One reload event as the page gets it; `seq` numbers the events from 1 since the daemon started."""
    return {
        "seq": seq,
        "at": result.at,
        "service": result.service,
        "outcome": result.outcome,
        "version": result.version,
        "previous": result.previous,
        "reason": result.reason,
        "duration_ms": result.duration_ms,
    }


def _no_pace() -> None:
    pass


class Samples:
    """Turns each reading into the tick's document, against the reading before it. In a worker thread, one reading
    at a time (events.py awaits each before it reads the next); it keeps only plain data.


    Args:
        first: the baseline reading, never sent itself (its reload events are in the `hello` event).
        seq: the number of the last document made before (by an earlier `Samples`): documents go on from it.
    """

    def __init__(self, first: Reading, seq: int = 0) -> None:
        self._previous = first
        self.seq = seq

    def document(self, reading: Reading, pace: Callable[[], None] = _no_pace) -> dict[str, Any]:
        """The tick's document: `reading`'s numbers, and rates over the time since the previous reading.
        `pace` is called after each service and each edge (a `pacer.Pacer` in the worker thread)."""
        before = self._previous
        self._previous = reading
        self.seq += 1
        interval = max(reading.monotonic - before.monotonic, 1e-6)
        earlier = {s.name: s for s in before.services}
        services = []
        for s in reading.services:
            services.append(_service(s, earlier.get(s.name), interval))
            pace()
        old_edges = {(e.caller, e.callee): e for e in before.edges}
        edges = []
        for e in reading.edges:
            edges.append(_edge(e, old_edges.get((e.caller, e.callee)), interval))
            pace()
        reloads = [reload_document(seq, result) for seq, result in reading.reloads]
        return {
            "seq": self.seq,
            "t": round(reading.at, 3),
            "interval": round(interval, 4),
            "state": "stopping" if reading.stopping else "serving",
            "services": services,
            "edges": edges,
            "reloads": reloads,
        }

    def event(self, reading: Reading) -> bytes:
        """The tick's document as one server-sent event (`event: sample`), compact JSON on one line. In a worker
        thread: it lets go of the GIL regularly (`pacer.Pacer`), so the loop never waits long for it, however many
        services there are; each service and edge is encoded apart for that (json's C encoder holds the GIL for
        a whole document)."""
        pace = Pacer()
        document = self.document(reading, pace)
        parts = []
        for key in ("services", "edges"):
            items: list[dict[str, Any]] = document.pop(key)
            chunks = []
            for start in range(0, len(items), _ENCODE_CHUNK):
                chunks.append(_ENCODER.encode(items[start : start + _ENCODE_CHUNK])[1:-1])
                pace()
            parts.append(f'"{key}":[{",".join(chunks)}]')
        head = _dumps(document)
        data = head[:-1] + "," + ",".join(parts) + "}"
        return f"event: sample\nid: {document['seq']}\ndata: {data}\n\n".encode()


def _dumps(document: object) -> str:
    return _ENCODER.encode(document)


def sse(name: str, document: dict[str, Any], *, event_id: int | None = None) -> bytes:
    """One server-sent event: `event:` line, optional `id:` line, one `data:` line of compact JSON."""
    data = _dumps(document)
    head = f"event: {name}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return f"{head}data: {data}\n\n".encode()


def _delta(now: int, before: int | None, same_version: bool) -> int:
    """What a counter added since `before`: all of it when the version changed (its counters began at zero)."""
    if before is None or not same_version or now < before:
        return now
    return now - before


def _service(s: ServiceReading, before: ServiceReading | None, interval: float) -> dict[str, Any]:
    same = before is not None and before.version == s.version
    calls = _delta(s.ok + s.failed, before.ok + before.failed if before else None, same)
    failed = _delta(s.failed, before.failed if before else None, same)
    if same and before is not None and before.latency == s.latency:
        timed: Sequence[int] = ()  # no call timed during the tick (the common case for an idle service)
    elif same and before is not None:
        timed = [now - was for now, was in zip(s.latency, before.latency, strict=True)]
    else:
        timed = s.latency
    p50, p99 = quantile(0.5, timed), quantile(0.99, timed)
    actors = s.actors
    return {
        "name": s.name,
        "version": s.version,
        "sha256": s.sha256[:12],
        "kind": "actor" if actors is not None else "service",
        "routed": s.routed,
        "instances": {"live": s.live, "idle": s.idle, "max": s.max_instances},
        "mailbox": {"queued": s.queued, "capacity": s.capacity},
        "calls": {"ok": s.ok, "failed": s.failed},
        "rate": round(calls / interval, 3),
        "failed_rate": round(failed / interval, 3),
        "latency": {
            "p50": round(p50, 7) if p50 is not None else None,
            "p99": round(p99, 7) if p99 is not None else None,
            "timed": sum(timed),
        },
        "quarantine": (
            {"seconds_left": round(s.quarantine_left, 3), "reason": s.quarantine_reason, "count": s.quarantines}
            if s.quarantine_left > 0
            else None
        ),
        "quarantines": s.quarantines,
        "actors": (
            {
                "live": actors.live,
                "hibernated": actors.hibernated,
                "in_memory": actors.in_memory,
                "known": actors.known,
                "queued": actors.queued,
            }
            if actors is not None
            else None
        ),
        "websockets": actors.websockets if actors is not None else 0,
    }


def _edge(e: EdgeReading, before: EdgeReading | None, interval: float) -> dict[str, Any]:
    same = before is not None and before.caller_version == e.caller_version
    calls = e.ok + e.errors
    new_calls = _delta(calls, before.ok + before.errors if before else None, same)
    new_errors = _delta(e.errors, before.errors if before else None, same)
    new_messages = _delta(e.messages, before.messages if before else None, same)
    return {
        "caller": e.caller,
        "callee": e.callee,
        "calls": calls,
        "errors": e.errors,
        "messages": e.messages,
        "message_errors": e.message_errors,
        "rate": round(new_calls / interval, 3),
        "error_ratio": round(new_errors / new_calls, 4) if new_calls else None,
        "message_rate": round(new_messages / interval, 3),
    }
