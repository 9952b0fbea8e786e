"""The admin listener's JSON documents, as JSON-ready data: `/status` (every service's version, instances, mailbox,
calls and last reload, and each actor service's `actors` summary) and the actor pages (`/actors/<service>`, one
page of an actor service's actors in key order; `/actors/<service>/<key>`, one actor and its stored entries).

Owns the shape of what `micromono status` and `micromono actors` print and the admin listener serves
(docs/operations.md), and the order and pagination of the actor listing. The parts that read live objects (the
router's services and edges, an actor service's directory and actors in memory) run on the event loop only, and
build fresh data each time, which the admin listener serializes in a worker thread; the actor pages read in
bounded steps (`actor_records`, `metrics.scan_actors`) and choose a page in a worker thread (`page_of_keys`), so
100,000 actors never hold the loop long. It must not serialize, serve HTTP, or change anything it reads.
"""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

from .metrics import ActorScan, Step, scan_actors
from .pacer import Pacer
from .reload import MANIFEST, ReloadResult

if TYPE_CHECKING:
    from .actors.actor import Actor
    from .actors.keyed import KeyedService
    from .router import Router

__all__ = [
    "ACTOR_PAGE_LIMIT",
    "ACTOR_PAGE_MAX",
    "DirectoryEntry",
    "actor_list_document",
    "actor_record",
    "actor_records",
    "actor_summary",
    "entries_document",
    "format_address",
    "page_of_keys",
    "status_document",
]

#: Actors per page of `/actors/<service>` (and entries per `/actors/<service>/<key>`) unless `?limit=` says.
ACTOR_PAGE_LIMIT: Final = 100
#: The largest `?limit=` accepted.
ACTOR_PAGE_MAX: Final = 10_000
#: Keys sorted at a time while a page is chosen (`page_of_keys`): a sort of a few thousand strings is well under
#: the pacer's slice, one of 100,000 would hold the GIL for tens of milliseconds.
_SORT_CHUNK: Final = 2048


class DirectoryEntry(Protocol):
    """What the actor pages read of an actor's directory entry (`KeyedService.directory`, storage's
    `ActorInfo`): its stored size, its last durable commit (Unix seconds), its schema version, and its alarm
    `(at_ms, attempt)` or None."""

    @property
    def bytes(self) -> int: ...

    @property
    def last_active(self) -> float: ...

    @property
    def schema_version(self) -> int: ...

    @property
    def alarm(self) -> tuple[int, int] | None: ...


def status_document(
    router: Router,
    *,
    stopping: bool,
    addresses: Sequence[tuple[str, int]],
    cpu: int | None,
    watching: bool,
    reloads: Mapping[str, ReloadResult],
) -> dict[str, Any]:
    """The `/status` document, read now.

    Args:
        router: the daemon's router: its current services, their ingress edges, the retired versions and the
            actor services.
        stopping: whether the daemon is shutting down.
        addresses: the bound ingress addresses.
        cpu: the CPU the event loop is pinned to, or None.
        watching: whether the reloader watches files.
        reloads: the last reload of each service (and of `services.toml`, under `reload.MANIFEST`).
    """
    services = []
    for s in router.services():
        edge = router.ingress_edges[s.name]
        result = reloads.get(s.name)
        left = s.quarantined_until - time.monotonic()
        document = {
            "name": s.name,
            "version": s.version,
            "sha256": s.sha256,
            "wasm": str(s.spec.wasm),
            "loaded_at": s.loaded_at,
            "instances": {"live": s.live, "idle": len(s.idle), "max": s.max_instances},
            "in_flight": s.in_flight,
            "suspended": s.running is not None,
            "preempted": s.preempted,
            "mailbox": {"queued": len(s.mailbox), "capacity": s.mailbox.capacity},
            "calls": {"ok": s.ok, "failed": s.failed},
            "ingress_requests": {"ok": edge.ok, **edge.errors},
            "instance_failures": s.traps,
            "quarantine": (
                {"seconds_left": round(left, 3), "reason": s.quarantine_reason, "count": s.quarantines}
                if left > 0
                else None
            ),
            "last_reload": result.as_dict() if result is not None else None,
        }
        keyed = router.keyed.get(s.name)
        if keyed is not None:
            document["actors"] = actor_summary(keyed)
        services.append(document)
    retired = [{"name": s.name, "version": s.version, "in_flight": s.in_flight, "live": s.live} for s in router.retired]
    manifest = reloads.get(MANIFEST)
    return {
        "state": "stopping" if stopping else "serving",
        "ingress": [format_address(a) for a in addresses],
        "cpu": cpu,
        "services": services,
        "draining": retired,
        "reload": {"watching": watching, "manifest": manifest.as_dict() if manifest is not None else None},
    }


def actor_summary(keyed: KeyedService) -> dict[str, int]:
    """An actor service's `actors` object in `/status`: live instances, actors with storage (`known`), queued
    messages, pending alarms, the bytes the actors store, and the WebSocket connections open to them.

    Reads the actors in memory in one go (`max_live` bounds them: about 0.1 ms per 1,000 on the loop); the other
    figures are counters.
    """
    scan = _scan_now(keyed)
    return {
        "live": scan.live,
        "known": len(keyed.directory),
        "queued": scan.queued,
        "alarms_pending": len(keyed.alarms),
        "storage_bytes": keyed.stored_bytes,
        "websockets": keyed.stream_counters.open,
    }


def _scan_now(keyed: KeyedService) -> ActorScan:
    steps = scan_actors(keyed, Step(math.inf))  # a step that never ends: no yield
    while True:
        try:
            next(steps)
        except StopIteration as done:
            scan: ActorScan = done.value
            return scan


# --- the actor pages ------------------------------------------------------------------------------------------------


def page_of_keys(known: list[str], in_memory: list[str], after: str | None, limit: int) -> tuple[list[str], bool]:
    """The first `limit` keys after `after` (all when None), in code-point order, of `known` and `in_memory`
    together (a key in both counts once), and whether more follow. In a worker thread: it reads only its
    arguments, copies the event loop made, and lets go of the GIL regularly (`pacer.Pacer`).

    The keys are never sorted all at once: each chunk keeps the keys after `after` that come before the
    `limit + 1`-th best so far, and is merged into the best (a sort of two sorted runs, which is a merge).
    """
    pace = Pacer()
    best: list[str] = []
    for keys, distinct in ((known, True), (in_memory, False)):  # the keys in memory may be known too
        for start in range(0, len(keys), _SORT_CHUNK):
            chunk = keys[start : start + _SORT_CHUNK]
            if after is not None:
                chunk = [key for key in chunk if key > after]
            if len(best) > limit:
                bound = best[limit]
                chunk = [key for key in chunk if key < bound]
            if chunk:
                chunk.sort()
                best += chunk
                best.sort()
                if not distinct:
                    best = _unique_sorted(best)
                del best[limit + 1 :]
            pace()
    return best[:limit], len(best) > limit


def _unique_sorted(keys: list[str]) -> list[str]:
    """`keys` (sorted) without repeats: an actor both in the directory and in memory is listed once."""
    if len(keys) < 2:
        return keys
    out = [keys[0]]
    for key in keys[1:]:
        if key != out[-1]:
            out.append(key)
    return out


def actor_records(keyed: KeyedService, keys: list[str], step: Step) -> Generator[None, None, list[dict[str, Any]]]:
    """The records of `keys` (`actor_record`) as they are now, yielding whenever `step` is over; the list is the
    generator's return value. On the event loop only. A key no longer known (an actor in memory that never
    committed, hibernated meanwhile) is left out."""
    directory, actors = keyed.directory, keyed.actors
    records = []
    for key in keys:
        info = directory.get(key)
        actor = actors.get(key)
        if info is not None or actor is not None:
            records.append(actor_record(key, info, actor))
        if step.over():
            yield
            step.begin()
    return records


def actor_record(key: str, info: DirectoryEntry | None, actor: Actor | None) -> dict[str, Any]:
    """One actor as the actor pages show it: whether it has a live instance, its stored bytes, its last durable
    commit (Unix seconds; None if it never committed), schema version, alarm (ms since the Unix epoch, or None)
    and the messages waiting for it. On the event loop only (it reads the actor in memory)."""
    return {
        "key": key,
        "live": actor is not None and actor.instance is not None,
        "bytes": info.bytes if info is not None else 0,
        "last_active": info.last_active if info is not None else None,
        "schema_version": info.schema_version if info is not None else 0,
        "alarm_ms": info.alarm[0] if info is not None and info.alarm is not None else None,
        "queued": len(actor.queue) if actor is not None else 0,
    }


def actor_list_document(
    keyed: KeyedService, scan: ActorScan, records: list[dict[str, Any]], next_key: str | None
) -> dict[str, Any]:
    """`/actors/<service>`: the service's counts and one page of records; `next` is the key to pass as `?after=`
    for the next page (None on the last). On the event loop only."""
    return {
        "service": keyed.name,
        "live": scan.live,
        "known": len(keyed.directory),
        "actors": records,
        "next": next_key,
    }


def entries_document(record: dict[str, Any], rows: list[tuple[bytes, bytes]], limit: int) -> dict[str, Any]:
    """`/actors/<service>/<key>`: the actor's record and the first `limit` of its stored entries (`rows` may hold
    one more, which says that more follow: `truncated`). Keys and values that are UTF-8 are shown as text, others
    as `{"base64": ...}`. Reads only its arguments: any thread."""
    return {
        **record,
        "entries": [{"key": _text(key), "value": _text(value)} for key, value in rows[:limit]],
        "truncated": len(rows) > limit,
    }


def _text(data: bytes) -> str | dict[str, str]:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


def format_address(address: tuple[str, int]) -> str:
    """`host:port`, with an IPv6 host in brackets."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
