"""Calls between services, in memory: the engine's `Host`, the registry of current versions, the mailbox workers.

A call from A to B (`micromono.call`) arrives here from A's host import. The router checks A's allowlist (one dict
lookup on A's `edges`, which also holds the counters), takes an instance of B's *current* version from its pool,
gives it the smaller of B's timeout and what is left of A's deadline, copies A's request bytes straight into B's
inbox, starts B, and copies the reply straight into the buffer A lent. No socket, no serialisation, no task switch:
B runs at once, inside A's slice (`benches/bench_call.py`).

Preemption: every guest entry runs on a wasmtime fiber that gives the event loop back at the end of its slice (an
epoch tick). When B gives up its slice before it finishes, `call` returns a `_Waiting` and A's fiber waits on it
(the engine suspends A too); the chain is then resumed one slice per event-loop iteration by the scheduler
(scheduler.py), from the top-level run that holds it. A top-level run (an ingress request or a message) that
outlasts its first slice becomes a `_Run` in the scheduler; its service takes no new top-level work until it is
over (what arrives meanwhile waits in the service's mailbox, so order is kept), and calls into the service from
other guests still take instances of their own. `call_timeout` is CPU time: a suspended run's deadlines are moved
on by the time it spent waiting for its turn.

Ingress requests and messages go through the target's mailbox (`channels.Mailbox`). When the mailbox is empty and
nothing of the service is suspended, the request runs at once, inline (what the worker would do next anyway);
otherwise it queues behind earlier work and the service's worker task runs it, a slice's worth of items per loop
iteration.

Versions: `Slot.current` is the version new calls go to. Swapping it is one attribute store, so a call already
running finishes on the version it started on (hot reload builds on this).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Final

import structlog

from .abi import KIND_CALL, KIND_HTTP, KIND_MESSAGE
from .channels import ChannelClosed
from .config import DEFAULT_MAX_CALL_DEPTH, DEFAULT_MAX_REQUEST_BYTES
from .engine import CLOCK, Engine, Instance
from .errors import (
    CallDepthExceeded,
    CallForbidden,
    MicromonoError,
    Overloaded,
    RequestTooLarge,
    ServiceCallError,
    ServiceUnavailable,
    UnknownService,
)
from .scheduler import Scheduler
from .service import LATENCY_SAMPLE, Service, WorkItem

__all__ = ["Router", "Slot", "Edge", "INGRESS"]

log = structlog.get_logger(__name__)

#: The caller label of requests that came in over HTTP.
INGRESS: Final = "ingress"
_OVERLOADED: Final = Overloaded.abi_code
#: One call in LATENCY_SAMPLE is timed for the latency histogram: the ones whose success count has these bits clear.
_SAMPLE_MASK: Final = LATENCY_SAMPLE - 1


class Slot:
    """A service name, the version new calls go to, and ingress's cache of its last HTTP reply head: the reply's
    encoded status and headers, the status line and headers rendered from them, and the status."""

    __slots__ = ("name", "current", "reply_head")

    def __init__(self, name: str) -> None:
        self.name = name
        self.current: Service | None = None
        self.reply_head: tuple[bytes, bytes, int] = (b"", b"", 0)  # empty: nothing cached yet

    def __repr__(self) -> str:
        return f"<Slot {self.name} -> {self.current.version if self.current else None}>"


class Edge:
    """An allowed caller -> callee pair and its counters (read by the metrics collector at scrape time)."""

    __slots__ = ("caller", "callee", "slot", "ok", "errors", "messages", "message_errors")

    def __init__(self, caller: str, slot: Slot) -> None:
        self.caller = caller
        self.callee = slot.name
        self.slot = slot
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.messages = 0
        self.message_errors: dict[str, int] = {}

    def count_error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


class Router:
    """The engine's `Host`: serves `micromono.call`, `send` and `log`, and runs ingress requests and messages.

    Args:
        max_call_depth: the longest call chain allowed (ingress -> A -> B counts 2).
        max_request_bytes: the largest request or message one service may pass another.
    """

    def __init__(
        self,
        *,
        max_call_depth: int = DEFAULT_MAX_CALL_DEPTH,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        self.slots: dict[str, Slot] = {}
        self.max_call_depth = max_call_depth
        self.max_request_bytes = max_request_bytes
        self.ingress_edges: dict[str, Edge] = {}
        # errors on edges that do not exist (unknown or forbidden targets), by (caller, kind)
        self.refused: dict[tuple[str, str], int] = {}
        # Mailbox workers by service (not by version: services built from the same file have versions alike).
        self._workers: dict[Service, asyncio.Task[None]] = {}
        self.retired: list[Service] = []  # replaced versions whose instances are still finishing calls
        self._waiting: set[asyncio.Task[None]] = set()  # ingress requests waiting for mailbox room
        self.scheduler = Scheduler()
        self._monotonic = time.monotonic
        self._clock = CLOCK  # call deadlines (engine.DeadlineClock)

    def __repr__(self) -> str:
        return f"<Router [services: {len(self.slots)} | max depth: {self.max_call_depth}]>"

    def set_limits(self, *, max_call_depth: int, max_request_bytes: int) -> None:
        """Apply a reloaded manifest's limits to the calls that start from now on."""
        self.max_call_depth = max_call_depth
        self.max_request_bytes = max_request_bytes

    @property
    def busy(self) -> bool:
        """Whether any mailbox worker or suspended run is still going."""
        return bool(self._workers) or len(self.scheduler) > 0

    # --- registry -------------------------------------------------------------------------------------------

    def slot(self, name: str) -> Slot:
        slot = self.slots.get(name)
        if slot is None:
            slot = self.slots[name] = Slot(name)
            self.ingress_edges[name] = Edge(INGRESS, slot)
        return slot

    def prepare(self, service: Service) -> None:
        """Wire a version before it starts: its allowlist (`spec.calls`) into edges, its guest output into the log."""
        service.edges = {target.encode(): Edge(service.name, self.slot(target)) for target in service.spec.calls}
        service.on_output = self._guest_output
        self.slot(service.name)
        service.ingress_edge = self.ingress_edges[service.name]

    def install(self, service: Service) -> Service | None:
        """Prepare `service` and make it the current version of its name; return the version it replaced."""
        self.prepare(service)
        slot = self.slots[service.name]
        previous, slot.current = slot.current, service
        return previous

    def swap(self, service: Service) -> Service | None:
        """Make `service` (prepared and started) current and retire the version it replaces; return that version.

        New calls go to `service` from now on. Work queued in the old version's mailbox and not yet started moves
        to the new one (what does not fit is refused like any overflow). The old version closes its idle
        instances now and busy ones as they finish.
        """
        slot = self.slot(service.name)
        previous, slot.current = slot.current, service
        if previous is not None:
            service.guest_log.inherit(previous.guest_log)  # the budget and the drop counts go on across versions
            self._retire(previous, successor=service)
        return previous

    def remove(self, name: str) -> Service | None:
        """Stop routing to `name`; its current version is retired and its queued work refused."""
        slot = self.slots.get(name)
        if slot is None or slot.current is None:
            return None
        previous, slot.current = slot.current, None
        self._retire(previous, successor=None)
        return previous

    def _retire(self, previous: Service, successor: Service | None) -> None:
        for item in previous.mailbox.drain():
            kind, payload, done = item
            try:
                if successor is None:
                    raise ServiceUnavailable(previous.name, f"service {previous.name!r} was removed")
                self._shed(successor, successor.mailbox.put_nowait(item))
            except ServiceCallError as exc:
                if done is not None:
                    done(None, exc)
                else:
                    log.warning("service.message.dropped", service=previous.name, error=str(exc))
        if successor is not None and len(successor.mailbox):
            self._wake(successor)
        previous.close()
        self.retired.append(previous)

    def services(self) -> Iterator[Service]:
        for slot in self.slots.values():
            if slot.current is not None:
                yield slot.current

    # --- engine.Host ------------------------------------------------------------------------------------------

    def call(self, caller: Instance, target: bytes, request: bytes, reply_ptr: int, reply_cap: int) -> int | _Waiting:
        """Serve `micromono.call` (docs/abi.md): the ABI result, or a `_Waiting` when the callee gave up its slice
        before it finished (the caller then waits for it). Never raises: failures become negative codes +
        `last_error`."""
        source: Service = caller.owner
        if caller.held_reply is not None:
            caller.held_reply = None  # a held reply lives until the caller's next call (docs/abi.md)
        edge: Edge | None = source.edges.get(target)
        if edge is None:
            return self._refuse(caller, source.name, target)
        callee = edge.slot.current
        if callee is None:
            error: ServiceCallError = ServiceUnavailable(edge.callee, f"service {edge.callee!r} is not running")
            return self._call_failed(caller, edge, error)
        depth = caller.depth + 1
        if depth > self.max_call_depth:
            return self._call_failed(caller, edge, self._too_deep(source.name, edge.callee))
        if len(request) > self.max_request_bytes:
            return self._call_failed(caller, edge, self._too_large(edge.callee, len(request)))
        if callee.quarantined_until and self._monotonic() < callee.quarantined_until:
            return self._call_failed(caller, edge, callee.quarantine_error())
        try:
            instance = callee.idle.pop()
        except IndexError:
            try:
                instance = callee.grow()
            except ServiceCallError as exc:
                return self._call_failed(caller, edge, exc)
            if instance.booting:  # a new instance whose start outlasted the slice: the caller waits for both
                waiting = _Waiting(self, caller, edge, callee, instance, request, reply_ptr, reply_cap, depth)
                return waiting
        instance.depth = depth
        instance.sends = 0
        deadline = self._clock.now + callee.deadline_after
        instance.deadline = deadline if deadline < caller.deadline else caller.deadline
        sample = (edge.ok & _SAMPLE_MASK) == 0
        if sample:
            started = time.perf_counter()
        try:
            reply = instance.begin(KIND_CALL, request)
            if reply is None:
                return _Waiting(self, caller, edge, callee, instance, None, reply_ptr, reply_cap, depth)
            n = len(reply)
            if n <= reply_cap:
                caller.view[reply_ptr : reply_ptr + n] = reply
            else:
                caller.held_reply = reply
        except ServiceCallError as exc:
            callee.release(instance)
            callee.count_failure(exc.kind)
            return self._call_failed(caller, edge, exc)
        # `release` inlined for a call that succeeded (so the instance is not poisoned).
        if instance.held_reply is None and not callee.closed:
            callee.idle.append(instance)
        else:
            callee.release(instance)
        if sample:
            callee.latency.observe(time.perf_counter() - started)
        edge.ok += 1
        callee.ok += 1
        return n

    def send(self, caller: Instance, target: bytes, message: bytes) -> int:
        """Serve `micromono.send`: queue the message in the target's mailbox and return at once."""
        source: Service = caller.owner
        edge: Edge | None = source.edges.get(target)
        if edge is None:
            return self._refuse(caller, source.name, target)
        sends = caller.sends = caller.sends + 1
        if sends > source.max_sends:
            errors = edge.message_errors
            errors["overloaded"] = errors.get("overloaded", 0) + 1
            caller.last_error = source.too_many_sends
            return _OVERLOADED
        callee = edge.slot.current
        if callee is not None:
            mailbox = callee.mailbox
            if len(mailbox) >= mailbox.capacity and mailbox.on_full != "shed_oldest" and not mailbox.closed:
                # A flood's common case, refused without building an exception: a sender that loops on a full
                # mailbox must not cost the loop more than the refusal itself.
                mailbox.rejected += 1
                errors = edge.message_errors
                errors["overloaded"] = errors.get("overloaded", 0) + 1
                caller.last_error = mailbox.full_message
                return _OVERLOADED
        try:
            if callee is None:
                raise ServiceUnavailable(edge.callee, f"service {edge.callee!r} is not running")
            if len(message) > self.max_request_bytes:
                raise self._too_large(edge.callee, len(message))
            if callee.quarantined_until and self._monotonic() < callee.quarantined_until:
                raise callee.quarantine_error()
            self._shed(callee, callee.mailbox.put_nowait((KIND_MESSAGE, message, None)))
        except ServiceCallError as exc:
            kind = exc.kind
            edge.message_errors[kind] = edge.message_errors.get(kind, 0) + 1
            caller.last_error = str(exc).encode()
            return exc.abi_code
        edge.messages += 1
        self._wake(callee)
        return 0

    def log(self, caller: Instance, level: int, message: bytes) -> None:
        """Serve `micromono.log`: through the service's guest-log budget (guestlog.py)."""
        service: Service = caller.owner
        service.guest_log.emit(service.name, service.version, level, message)

    def _guest_output(self, instance: Instance, level: int, data: bytes) -> None:
        service: Service = instance.owner
        service.guest_log.emit_output(service.name, service.version, level, data)

    def _refuse(self, caller: Instance, source: str, target: bytes) -> int:
        name = target.decode("utf-8", "replace")
        error: ServiceCallError
        if name in self.slots and self.slots[name].current is not None:
            error = CallForbidden(
                name,
                f"service {source!r} may not call {name!r}: add it to services.{source}.calls in services.toml",
            )
        else:
            error = UnknownService(name, f"service {source!r} called {name!r}, but no service of that name is loaded")
        key = (source, error.kind)
        self.refused[key] = self.refused.get(key, 0) + 1
        caller.last_error = str(error).encode()
        return error.abi_code

    def _too_large(self, target: str, size: int) -> RequestTooLarge:
        return RequestTooLarge(
            target,
            f"a request of {size} bytes to {target!r} is larger than max_request_bytes={self.max_request_bytes}; "
            "send less, or raise daemon.max_request_bytes",
        )

    def _too_deep(self, source: str, target: str) -> CallDepthExceeded:
        return CallDepthExceeded(
            target,
            f"call from {source!r} to {target!r} would exceed max_call_depth={self.max_call_depth} "
            "(a call cycle?); break the cycle or raise daemon.max_call_depth",
        )

    @staticmethod
    def _call_failed(caller: Instance, edge: Edge, error: ServiceCallError) -> int:
        edge.count_error(error.kind)
        caller.last_error = str(error).encode()
        return error.abi_code

    # --- ingress ----------------------------------------------------------------------------------------------

    def run_http(self, slot: Slot, request: bytes) -> bytes | _Run | None:
        """Run an encoded HTTP request on `slot`'s current version now, unless work is queued ahead of it.

        Returns the guest's reply (a copy) when it finished within its first slice; a `_Run` when it is still
        running (the caller sets `run.done`, which gets `(reply, error)` once it is over); or None when the
        service's mailbox holds earlier work or a run of the service is suspended: then the caller must
        `queue_http` the request so that order is kept.

        Raises:
            ServiceCallError: the call failed (trap, overload, timeout, …).
        """
        service = slot.current
        if service is None:
            raise ServiceUnavailable(slot.name, f"service {slot.name!r} is not running")
        if len(service.mailbox) or service.running is not None:
            return None
        if service.quarantined_until and self._monotonic() < service.quarantined_until:
            raise service.quarantine_error()
        edge: Edge = service.ingress_edge
        idle = service.idle
        try:
            instance = idle.pop()
        except IndexError:
            instance = service.grow()  # raises Overloaded
            if instance.booting:
                return self._suspend(service, instance, KIND_HTTP, request, None)
        instance.depth = 1
        instance.sends = 0
        # A top-level run reads the real clock (once per request, not per call) and moves the deadline clock up to
        # it, so the calls it makes never start before it by that clock, whatever the ticker's lag.
        now = self._clock.now = self._monotonic()
        self.scheduler.arrivals += 1  # top-level work: runs suspended meanwhile get short slices (scheduler.py)
        instance.deadline = now + service.deadline_after
        sample = (edge.ok & _SAMPLE_MASK) == 0
        if sample:
            started = time.perf_counter()
        try:
            reply = instance.begin(KIND_HTTP, request)
        except ServiceCallError as exc:
            service.release(instance)
            edge.count_error(exc.kind)
            service.count_failure(exc.kind)
            raise
        if reply is None:
            return self._suspend(service, instance, KIND_HTTP, None, None)
        # Back in the pool before the caller reads `reply`: nothing can enter the instance in between.
        if instance.held_reply is None and not service.closed:
            idle.append(instance)
        else:
            service.release(instance)
        if sample:
            service.latency.observe(time.perf_counter() - started)
        edge.ok += 1
        service.ok += 1
        return reply

    def queue_http(
        self, slot: Slot, request: bytes, done: Callable[[bytes | None, BaseException | None], None]
    ) -> None:
        """Queue an HTTP request in the service's mailbox; its worker calls `done(reply, error)` later.

        Raises:
            Overloaded: the mailbox is full.
            ServiceUnavailable: the service is stopping or not running.
        """
        service = slot.current
        if service is None:
            raise ServiceUnavailable(slot.name, f"service {slot.name!r} is not running")
        item: WorkItem = (KIND_HTTP, request, done)
        mailbox = service.mailbox
        if mailbox.on_full == "wait" and len(mailbox) >= mailbox.capacity:
            task = asyncio.get_running_loop().create_task(self._queue_later(service, item))
            self._waiting.add(task)
            task.add_done_callback(self._waiting.discard)
            return
        self._shed(service, mailbox.put_nowait(item))
        self._wake(service)

    async def _queue_later(self, service: Service, item: WorkItem) -> None:
        """on_full = "wait": hold an ingress request until the mailbox has room, at most `on_full_wait`."""
        try:
            self._shed(service, await service.mailbox.put(item, service.spec.on_full_wait))
        except ServiceCallError as exc:
            done = item[2]
            assert done is not None
            done(None, exc)
            return
        self._wake(service)

    def reply_broke_abi(self, name: str, error: ServiceCallError) -> None:
        """Ingress found a reply it had counted as served to be malformed: count it as the failure it is."""
        slot = self.slots.get(name)
        service = slot.current if slot is not None else None
        if service is None:
            return
        edge: Edge = service.ingress_edge
        edge.ok -= 1
        service.ok -= 1
        edge.count_error(error.kind)
        service.count_failure(error.kind)

    @staticmethod
    def _shed(service: Service, item: WorkItem | None) -> None:
        """Fail an item dropped from a full mailbox (on_full = "shed_oldest")."""
        if item is None:
            return
        error = Overloaded(
            service.name,
            f"service {service.name!r} is overloaded: this request was dropped from its full mailbox "
            'to make room for newer work (on_full = "shed_oldest")',
        )
        done = item[2]
        if done is not None:
            done(None, error)
        else:
            log.warning("service.message.shed", service=service.name, version=service.version)

    # --- top-level runs ---------------------------------------------------------------------------------------

    def _suspend(
        self,
        service: Service,
        instance: Instance,
        kind: int,
        request: bytes | None,
        done: Callable[[bytes | None, BaseException | None], None] | None,
    ) -> _Run:
        """Hand a top-level run that outlasted its first slice to the scheduler (`request`: not started yet,
        its instance still booting)."""
        run = _Run(self, service, instance, kind, request, done)
        service.running = run
        service.preempted += 1
        self.scheduler.add(run)
        return run

    def run_over(self, service: Service) -> None:
        """A suspended top-level run of `service` is over: its queued work may go on."""
        service.running = None
        if len(service.mailbox):
            self._wake(service)

    def _start_item(self, service: Service, item: WorkItem) -> None:
        """Start one queued item (an HTTP request or a message) of `service`; it may end up suspended."""
        kind, payload, done = item
        try:
            if service.quarantined_until and self._monotonic() < service.quarantined_until:
                raise service.quarantine_error()
            try:
                instance = service.idle.pop()
            except IndexError:
                instance = service.grow()
                if instance.booting:
                    self._suspend(service, instance, kind, payload, done)
                    return
            instance.depth = 1
            instance.sends = 0
            now = self._clock.now = self._monotonic()  # a top-level run: see run_http
            self.scheduler.arrivals += 1
            instance.deadline = now + service.deadline_after
            try:
                reply = instance.begin(kind, payload)
            except ServiceCallError:
                service.release(instance)
                raise
            if reply is None:
                self._suspend(service, instance, kind, None, done)
                return
            service.release(instance)
        except ServiceCallError as exc:
            _item_failed(service, kind, done, exc)
            return
        except BaseException as exc:  # a bug of ours (re-raised from a host callback)
            _item_crashed(service, kind, done, exc)
            return
        service.ok += 1
        if kind == KIND_HTTP:
            service.ingress_edge.ok += 1
            assert done is not None
            done(reply, None)

    # --- workers ----------------------------------------------------------------------------------------------

    def _wake(self, service: Service) -> None:
        """Make sure `service` has a worker draining its mailbox."""
        task = self._workers.get(service)
        if task is None or task.done():
            self._workers[service] = asyncio.get_running_loop().create_task(
                self._drain(service), name=f"micromono-worker-{service.name}-{service.version}"
            )

    async def _drain(self, service: Service) -> None:
        """Run `service`'s queued work in order, one slice's worth per loop iteration, until its mailbox is empty or
        one of its runs is suspended (that run wakes the worker again when it is over)."""
        mailbox = service.mailbox
        clock = self._clock
        try:
            while service.running is None:
                tick = clock.tick
                while clock.tick == tick and service.running is None:  # until the slice is used up
                    item = mailbox.get_nowait()
                    if item is None:
                        return
                    self._start_item(service, item)
                await asyncio.sleep(0)
        except ChannelClosed:
            return
        finally:
            self._workers.pop(service, None)

    async def stop_workers(self) -> None:
        """Cancel the mailbox workers and the suspended runs still going (after the grace period), failing what they
        were answering."""
        tasks = list(self._workers.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        cancelled = self.scheduler.cancel_all()
        if cancelled:
            log.warning("router.runs.cancelled", runs=cancelled, reason="the daemon is stopping")


def _item_failed(service: Service, kind: int, done: Callable[..., None] | None, exc: ServiceCallError) -> None:
    service.count_failure(exc.kind)
    if kind == KIND_HTTP:
        service.ingress_edge.count_error(exc.kind)
        assert done is not None
        done(None, exc)
    else:
        log.warning("service.message.failed", service=service.name, version=service.version, error=str(exc))


def _item_crashed(service: Service, kind: int, done: Callable[..., None] | None, exc: BaseException) -> None:
    if done is not None:
        done(None, exc)  # the connection answers 500 and logs it
    else:
        log.error("service.message.failed", service=service.name, error=repr(exc), exc_info=exc)


_NO_CAP: Final = float("inf")


def _next_slice(
    service: Service, instance: Instance, request: bytes | None, kind: int, depth: int, cap: float
) -> bytes | None:
    """One more slice of a suspended run or call: its reply when it is over, None before. `request` is set while
    the instance is still booting (the pool had to grow): the entry begins once the boot is over, with its deadline
    from now (at most `cap`, the caller's).

    Raises:
        ServiceCallError: it failed; the instance is back with its service (a failed start as ServiceUnavailable).
    """
    try:
        if request is None:
            reply: bytes | None = instance.step()
            return reply
        if instance.step() is None:
            return None
        instance.depth = depth
        instance.sends = 0
        if depth == 1:  # a top-level run reads the real clock (see Router.run_http)
            CLOCK.now = time.monotonic()
        deadline = CLOCK.now + service.deadline_after
        instance.deadline = deadline if deadline < cap else cap
        return instance.begin(kind, request)
    except ServiceCallError:
        service.release(instance)
        raise
    except MicromonoError as exc:  # the new instance failed to start
        service.release(instance)
        raise ServiceUnavailable(service.name, str(exc)) from exc


def _chain_moved_on(engine: Engine, instance: Instance, waited: float) -> None:
    """Move the deadlines of `instance` and the calls it waits in on by `waited` seconds: `call_timeout` is a
    budget of running time, and a suspended chain did not run while it waited for its turn."""
    while instance is not None:
        instance.deadline += waited
        callee = engine.callee_of(instance)
        if callee is None:
            return
        instance = callee


class _Run:
    """A top-level run (an ingress request or a message) that outlasted its first slice, resumed by the scheduler.

    `request` is set while its instance is still booting (the pool had to grow); the request starts once it is
    ready. `done` gets `(reply, error)` for an HTTP request.
    """

    __slots__ = ("router", "service", "instance", "kind", "request", "done", "paused", "started")

    def __init__(
        self,
        router: Router,
        service: Service,
        instance: Instance,
        kind: int,
        request: bytes | None,
        done: Callable[[bytes | None, BaseException | None], None] | None,
    ) -> None:
        self.router = router
        self.service = service
        self.instance = instance
        self.kind = kind
        self.request = request
        self.done = done
        self.paused = time.monotonic()  # when its last slice ended
        self.started = time.perf_counter()

    def __repr__(self) -> str:
        return f"<_Run {self.service.name} {self.service.version} kind={self.kind}>"

    def step(self) -> bool:
        service = self.service
        instance = self.instance
        now = time.monotonic()
        _chain_moved_on(service.compiled.engine, instance, now - self.paused)
        try:
            reply = _next_slice(service, instance, self.request, self.kind, 1, _NO_CAP)
            if not instance.booting:
                self.request = None
            if reply is None:
                self.paused = time.monotonic()
                return False
            service.release(instance)
        except ServiceCallError as exc:
            self._over()
            _item_failed(service, self.kind, self.done, exc)
            return True
        except BaseException as exc:
            self._over()
            _item_crashed(service, self.kind, self.done, exc)
            return True
        self._over()
        service.latency.observe(time.perf_counter() - self.started)
        service.ok += 1
        if self.kind == KIND_HTTP:
            service.ingress_edge.ok += 1
            assert self.done is not None
            self.done(reply, None)
        return True

    def _over(self) -> None:
        self.router.run_over(self.service)

    def cancel(self) -> None:
        service = self.service
        self.instance.cancel()
        service.release(self.instance)
        self._over()
        error = ServiceUnavailable(service.name, f"service {service.name!r}: the daemon stopped before it finished")
        if self.kind == KIND_HTTP and self.done is not None:
            service.ingress_edge.count_error(error.kind)
            self.done(None, error)
        else:
            log.warning("service.message.failed", service=service.name, version=service.version, error=str(error))


class _Waiting:
    """A `call` whose callee gave up its slice before it finished: its caller's fiber waits on it (engine.Waiting).

    `request` is set while the callee's new instance is still booting; the call starts once it is ready.
    """

    __slots__ = ("router", "caller", "edge", "callee", "instance", "request", "reply_ptr", "reply_cap", "depth",
                 "started")  # fmt: skip

    def __init__(
        self,
        router: Router,
        caller: Instance,
        edge: Edge,
        callee: Service,
        instance: Instance,
        request: bytes | None,
        reply_ptr: int,
        reply_cap: int,
        depth: int,
    ) -> None:
        self.router = router
        self.caller = caller
        self.edge = edge
        self.callee = callee
        self.instance = instance
        self.request = request
        self.reply_ptr = reply_ptr
        self.reply_cap = reply_cap
        self.depth = depth
        self.started = time.perf_counter()

    def step(self) -> int | None:
        callee = self.callee
        instance = self.instance
        caller = self.caller
        try:
            reply = _next_slice(callee, instance, self.request, KIND_CALL, self.depth, caller.deadline)
            if not instance.booting:
                self.request = None
            if reply is None:
                return None
        except ServiceCallError as exc:
            callee.count_failure(exc.kind)
            return Router._call_failed(caller, self.edge, exc)
        n = len(reply)
        if n <= self.reply_cap:
            caller.view[self.reply_ptr : self.reply_ptr + n] = reply
        else:
            caller.held_reply = reply
        callee.release(instance)
        callee.latency.observe(time.perf_counter() - self.started)
        self.edge.ok += 1
        callee.ok += 1
        return n

    @property
    def callee_instance(self) -> Instance:
        return self.instance

    def cancel(self) -> None:
        self.instance.cancel()
        self.callee.release(self.instance)
