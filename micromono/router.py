"""Calls between services, in memory: the engine's `Host`, the registry of current versions, the mailbox workers.

A call from A to B (`micromono.call`) arrives here from A's host import. The router checks A's allowlist (one dict
lookup on A's `edges`, which also holds the counters), takes an instance of B's *current* version from its pool,
gives it the smaller of B's timeout and what is left of A's deadline, copies A's request bytes straight into B's
inbox, runs B, and copies the reply straight into the buffer A lent. No socket, no serialisation, no task switch:
the whole round trip is synchronous on the event loop thread (about 2 µs, `benches/bench_call.py`).

Ingress requests and messages go through the target's mailbox (`channels.Mailbox`). When the mailbox is empty the
request runs at once, inline (what the worker would do next anyway); otherwise it queues behind earlier work and the
service's worker task runs it, so order is kept and the queue stays bounded.

Long calls: a synchronous call holds the event loop for as long as it runs. When a top-level run (an ingress request
or a message) of a service is still running after `offload_after` seconds, the service is *offloaded*: from then on
its ingress requests and messages run one at a time on a thread of its own, at idle priority on the loop's CPU
(placement.py), while the loop goes on serving everything else (Erlang's dirty schedulers, for guests). The guest
releases the GIL while it runs. Its own `call`s run on its thread too (the callee with it); its `send`s are handed
to the loop thread, where the mailboxes live, while its thread waits. A synchronous call *into* an offloaded service
still runs on its caller's thread: that is what a synchronous call is, and the callee's deadline bounds it.

Versions: `Slot.current` is the version new calls go to. Swapping it is one attribute store, so a call already
running finishes on the version it started on (hot reload builds on this).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from typing import Final

import structlog

from . import placement
from .abi import KIND_CALL, KIND_HTTP, KIND_MESSAGE
from .channels import ChannelClosed
from .config import DEFAULT_MAX_CALL_DEPTH, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_OFFLOAD_AFTER
from .engine import CLOCK, EPOCH_TICK_SECONDS, Engine, Instance
from .errors import (
    CallDepthExceeded,
    CallForbidden,
    CallTimeout,
    MicromonoError,
    Overloaded,
    RequestTooLarge,
    ServiceCallError,
    ServiceUnavailable,
    UnknownService,
)
from .placement import lower_offload_thread
from .service import LATENCY_SAMPLE, Service, WorkItem

__all__ = ["Router", "Slot", "Edge", "INGRESS"]

log = structlog.get_logger(__name__)

#: The caller label of requests that came in over HTTP.
INGRESS: Final = "ingress"
_OVERLOADED: Final = Overloaded.abi_code
#: One call in LATENCY_SAMPLE is timed for the latency histogram: the ones whose success count has these bits clear.
_SAMPLE_MASK: Final = LATENCY_SAMPLE - 1
#: Items a worker runs before yielding to the event loop.
_WORKER_BATCH: Final = 64
_GUEST_LEVELS: Final = {0: "debug", 1: "info", 2: "warning", 3: "error"}
#: How long stopping waits for interrupted offload threads to finish.
_OFFLOAD_JOIN_SECONDS: Final = 2.0
#: How long past its deadline an offloaded run may go before the loop answers its caller with the timeout itself
#: (two epoch ticks: an interrupted guest normally stops within one).
_OFFLOAD_ANSWER_SLACK: Final = 2 * EPOCH_TICK_SECONDS
#: At most one `router.offload.starved` warning per service in this many seconds.
_STARVED_LOG_SECONDS: Final = 10.0


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
    """The engine's `Host`: serves `micromono.call`, `send` and `log`, and runs ingress requests.

    Args:
        max_call_depth: the longest call chain allowed (ingress -> A -> B counts 2).
    """

    def __init__(
        self,
        *,
        max_call_depth: int = DEFAULT_MAX_CALL_DEPTH,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        offload_after: float = DEFAULT_OFFLOAD_AFTER,
    ) -> None:
        self.slots: dict[str, Slot] = {}
        self.offload_after = offload_after
        # The instance of the top-level run on the loop thread now (an ingress request or a message), or None.
        self._root: Instance | None = None
        self._offload_threads: dict[str, concurrent.futures.ThreadPoolExecutor] = {}  # by service version
        self._offload_running: set[Instance] = set()  # instances inside a call on an offload thread
        self._starved_logged: dict[str, float] = {}  # service -> when router.offload.starved was last logged
        self.max_call_depth = max_call_depth
        self.max_request_bytes = max_request_bytes
        self.ingress_edges: dict[str, Edge] = {}
        # errors on edges that do not exist (unknown or forbidden targets), by (caller, kind)
        self.refused: dict[tuple[str, str], int] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self.retired: list[Service] = []  # replaced versions whose instances are still finishing calls
        self._waiting: set[asyncio.Task[None]] = set()  # ingress requests waiting for mailbox room
        self._monotonic = time.monotonic
        self._clock = CLOCK  # call deadlines (engine.DeadlineClock)

    def __repr__(self) -> str:
        return f"<Router [services: {len(self.slots)} | max depth: {self.max_call_depth}]>"

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
        self._stop_offload_thread(previous)
        self.retired.append(previous)

    def services(self) -> Iterator[Service]:
        for slot in self.slots.values():
            if slot.current is not None:
                yield slot.current

    # --- engine.Host ------------------------------------------------------------------------------------------

    def call(self, caller: Instance, target: bytes, request: bytes, reply_ptr: int, reply_cap: int) -> int:
        """Serve `micromono.call` (docs/abi.md). Never raises: failures become negative codes + `last_error`."""
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
            instance = callee.idle.pop()  # one step under the GIL: an offload thread may share the pool
        except IndexError:
            try:
                instance = callee.acquire()
            except ServiceCallError as exc:
                return self._call_failed(caller, edge, exc)
            except MicromonoError as exc:  # a new instance failed to start
                return self._call_failed(caller, edge, ServiceUnavailable(edge.callee, str(exc)))
        instance.depth = depth
        deadline = self._clock.now + callee.deadline_after
        instance.deadline = deadline if deadline < caller.deadline else caller.deadline
        sample = (edge.ok & _SAMPLE_MASK) == 0
        if sample:
            started = time.perf_counter()
        try:
            reply = instance.invoke(KIND_CALL, request)
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
        callee = edge.slot.current
        if callee is not None:
            mailbox = callee.mailbox
            if len(mailbox) >= mailbox.capacity and mailbox.on_full != "shed_oldest" and not mailbox._closed:
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
        """Serve `micromono.log`."""
        service: Service = caller.owner
        method = getattr(log, _GUEST_LEVELS.get(level, "info"))
        method("guest.log", service=service.name, version=service.version, message=message.decode("utf-8", "replace"))

    def still_running(self, instance: Instance, now: float) -> None:
        """Engine hook, about once per epoch tick while a guest runs on the loop thread: offload long runs."""
        root = self._root
        if root is None:
            return
        service: Service = root.owner
        # A top-level run's deadline is its real start plus deadline_after (see run_http).
        ran = now - (root.deadline - service.deadline_after)
        if ran > self.offload_after and not service.offloaded and not service.closed:
            service.offloaded = True
            log.warning(
                "router.offload.started", service=service.name, version=service.version, ran_ms=round(ran * 1000, 1),
                offload_after_ms=self.offload_after * 1000,
                hint="its requests and messages now run on a thread of their own, off the event loop",
            )  # fmt: skip

    def _guest_output(self, instance: Instance, level: int, data: bytes) -> None:
        service: Service = instance.owner
        event = "guest.stdout" if level == -1 else "guest.stderr"
        for line in data.decode("utf-8", "replace").splitlines():
            if line:
                log.info(event, service=service.name, version=service.version, message=line)

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

    def run_http(self, slot: Slot, request: bytes) -> bytes | None:
        """Run an encoded HTTP request on `slot`'s current version now, unless work is queued ahead of it.

        Returns the guest's reply (a copy), or None when the service's mailbox holds earlier work: then the caller
        must `queue_http` the request so that order is kept.

        Raises:
            ServiceCallError: the call failed (trap, overload, timeout, …).
            ServiceLoadError: the pool had to grow and the new instance failed to start.
        """
        service = slot.current
        if service is None:
            raise ServiceUnavailable(slot.name, f"service {slot.name!r} is not running")
        if service.mailbox._items or service.offloaded:
            return None
        if service.quarantined_until and self._monotonic() < service.quarantined_until:
            raise service.quarantine_error()
        edge: Edge = service.ingress_edge
        if edge.ok & _SAMPLE_MASK:
            # _run_http inlined, without the latency sample: this is the router's whole per-request cost.
            idle = service.idle
            try:
                instance = idle.pop()
            except IndexError:
                instance = service.acquire()  # raises Overloaded (or ServiceLoadError)
            instance.depth = 1
            # A top-level run reads the real clock (once per request, not per call) and moves the deadline clock
            # up to it, so the calls it makes never start before it by that clock, whatever the ticker's lag.
            now = self._clock.now = self._monotonic()
            instance.deadline = now + service.deadline_after
            self._root = instance
            try:
                reply = instance.invoke(KIND_HTTP, request)
            except ServiceCallError as exc:
                self._root = None
                service.release(instance)
                edge.count_error(exc.kind)
                service.count_failure(exc.kind)
                raise
            self._root = None
            # Back in the pool before the caller reads `reply`: nothing can enter the instance in between.
            if instance.held_reply is None and not service.closed:
                idle.append(instance)
            else:
                service.release(instance)
            edge.ok += 1
            service.ok += 1
            return reply
        return self._run_http(service, request)

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

    def _run_http(self, service: Service, request: bytes) -> bytes:
        edge: Edge = service.ingress_edge
        instance = service.acquire()  # raises Overloaded (or ServiceLoadError)
        instance.depth = 1
        now = self._clock.now = self._monotonic()  # a top-level run: see run_http
        instance.deadline = now + service.deadline_after
        sample = (edge.ok & _SAMPLE_MASK) == 0
        if sample:
            started = time.perf_counter()
        self._root = instance
        try:
            reply = instance.invoke(KIND_HTTP, request)
        except ServiceCallError as exc:
            service.release(instance)
            edge.count_error(exc.kind)
            service.count_failure(exc.kind)
            raise
        finally:
            self._root = None
        # Back in the pool before the caller reads `reply`: nothing can enter the instance in between.
        service.release(instance)
        if sample:
            service.latency.observe(time.perf_counter() - started)
        edge.ok += 1
        service.ok += 1
        return reply

    # --- workers ----------------------------------------------------------------------------------------------

    def _wake(self, service: Service) -> None:
        """Make sure `service` has a worker draining its mailbox."""
        task = self._workers.get(service.version)
        if task is None or task.done():
            self._workers[service.version] = asyncio.get_running_loop().create_task(
                self._drain(service), name=f"micromono-worker-{service.name}-{service.version}"
            )

    async def _drain(self, service: Service) -> None:
        """Run `service`'s queued work until its mailbox is empty, yielding to the loop between batches."""
        mailbox = service.mailbox
        try:
            while not service.offloaded:
                for _ in range(_WORKER_BATCH):
                    item = mailbox.get_nowait()
                    if item is None:
                        return
                    self._run_item(service, item)
                    if service.offloaded:
                        break
                await asyncio.sleep(0)
            await self._drain_offloaded(service)
        except ChannelClosed:
            return
        finally:
            self._workers.pop(service.version, None)

    async def _drain_offloaded(self, service: Service) -> None:
        """Run `service`'s queued work one item at a time on its offload thread, until the mailbox is empty."""
        mailbox = service.mailbox
        thread = self._offload_thread(service)
        loop = asyncio.get_running_loop()
        while True:
            item = mailbox.get_nowait()
            if item is None:
                return
            kind, payload, done = item
            try:
                if service.quarantined_until and self._monotonic() < service.quarantined_until:
                    raise service.quarantine_error()
                instance = service.acquire()
            except ServiceCallError as exc:
                self._item_failed(service, item, exc)
                continue
            except MicromonoError as exc:  # a new instance failed to start
                self._item_failed(service, item, ServiceUnavailable(service.name, str(exc)))
                continue
            instance.depth = 1
            # A top-level run reads the real clock (once per request, not per call) and moves the deadline clock
            # up to it, so the calls it makes never start before it by that clock, whatever the ticker's lag.
            now = self._clock.now = self._monotonic()
            instance.deadline = now + service.deadline_after
            engine: Engine = instance.compiled.engine
            engine.begin_offload()
            self._offload_running.add(instance)
            started = time.perf_counter()
            running = loop.run_in_executor(thread, _run_guest, instance, kind, payload)
            answered = False  # the caller already has its answer: a timeout, given at the deadline
            try:
                try:
                    reply = await asyncio.wait_for(
                        asyncio.shield(running), instance.deadline - self._monotonic() + _OFFLOAD_ANSWER_SLACK
                    )
                except TimeoutError:
                    # Past its deadline and still not interrupted: at idle priority (placement.py) its thread gets
                    # only the CPU the loop leaves, so the guest may not have run to see its deadline yet. The
                    # caller gets its timeout now; the next item waits until the guest has stopped.
                    answered = True
                    self._item_failed(service, item, CallTimeout.interrupted(service.name))
                    self._starved(service)
                    reply = await asyncio.shield(running)
            except asyncio.CancelledError:
                # Stopping: the guest still runs (up to its deadline); give its instance back when it ends.
                running.add_done_callback(functools.partial(self._offload_ended_later, service, instance, engine))
                raise
            except ServiceCallError as exc:
                self._offload_ended(service, instance, engine)
                service.count_failure(exc.kind)
                if not answered:
                    self._item_failed(service, item, exc)
                continue
            except Exception as exc:  # a bug of ours (re-raised from a host callback): as _run_item does
                self._offload_ended(service, instance, engine)
                if done is not None and not answered:
                    done(None, exc)  # the connection answers 500 and logs it
                else:
                    log.error("service.message.failed", service=service.name, error=repr(exc), exc_info=exc)
                continue
            self._offload_ended(service, instance, engine)
            if answered:  # it ended after all, just too late for its caller
                service.count_failure("timeout")
                continue
            service.latency.observe(time.perf_counter() - started)
            service.ok += 1
            if kind == KIND_HTTP:
                service.ingress_edge.ok += 1
                assert done is not None
                done(reply, None)

    def _starved(self, service: Service) -> None:
        """Log, at most once per `_STARVED_LOG_SECONDS` per service, that an offloaded run got no CPU in time."""
        now = self._monotonic()
        if now - self._starved_logged.get(service.name, -_STARVED_LOG_SECONDS) < _STARVED_LOG_SECONDS:
            return
        self._starved_logged[service.name] = now
        log.warning(
            "router.offload.starved", service=service.name, version=service.version, cpu=placement.pinned_cpu(),
            hint="its thread runs at idle priority on the daemon's CPU and got no CPU before the deadline, so the "
            "caller was answered 504; a busy loop or another busy process on that CPU starves it "
            "(docs/operations.md, CPUs)",
        )  # fmt: skip

    def _offload_ended(self, service: Service, instance: Instance, engine: Engine) -> None:
        self._offload_running.discard(instance)
        engine.end_offload()
        service.release(instance)

    def _offload_ended_later(self, service: Service, instance: Instance, engine: Engine, _: object) -> None:
        self._offload_ended(service, instance, engine)

    @staticmethod
    def _item_failed(service: Service, item: WorkItem, exc: ServiceCallError) -> None:
        kind, _, done = item
        if kind == KIND_HTTP:
            service.ingress_edge.count_error(exc.kind)
            assert done is not None
            done(None, exc)
        else:
            log.warning("service.message.failed", service=service.name, version=service.version, error=str(exc))

    def _offload_thread(self, service: Service) -> concurrent.futures.ThreadPoolExecutor:
        """The thread `service`'s version runs on once offloaded (made on first use, stopped when it retires)."""
        thread = self._offload_threads.get(service.version)
        if thread is None:
            host = _LoopHost(self, asyncio.get_running_loop())
            engine = service.compiled.engine
            thread = self._offload_threads[service.version] = concurrent.futures.ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix=f"micromono-offload-{service.name}",
                initializer=_init_offload_thread,
                initargs=(engine, host),
            )
        return thread

    def _stop_offload_thread(self, service: Service) -> None:
        thread = self._offload_threads.pop(service.version, None)
        if thread is not None:
            thread.shutdown(wait=False)

    def _run_item(self, service: Service, item: WorkItem) -> None:
        kind, payload, done = item
        if kind == KIND_HTTP:
            assert done is not None
            try:
                if service.quarantined_until and self._monotonic() < service.quarantined_until:
                    raise service.quarantine_error()
                reply = self._run_http(service, payload)
            except BaseException as exc:  # handed to the waiting connection, which maps it to a status
                done(None, exc)
            else:
                done(reply, None)
            return
        self._run_message(service, payload)

    def _run_message(self, service: Service, payload: bytes) -> None:
        if service.quarantined_until and self._monotonic() < service.quarantined_until:
            log.warning("service.message.failed", service=service.name, error=str(service.quarantine_error()))
            return
        try:
            instance = service.acquire()
        except MicromonoError as exc:
            log.warning("service.message.failed", service=service.name, version=service.version, error=str(exc))
            return
        instance.depth = 1
        now = self._clock.now = self._monotonic()  # a top-level run: see run_http
        instance.deadline = now + service.deadline_after
        self._root = instance
        try:
            instance.invoke(KIND_MESSAGE, payload)
        except ServiceCallError as exc:
            service.count_failure(exc.kind)
            log.warning("service.message.failed", service=service.name, version=service.version, error=str(exc))
        else:
            service.ok += 1
        finally:
            self._root = None
            service.release(instance)

    async def stop_workers(self) -> None:
        """Cancel the mailbox workers still running (after the grace period) and wait for them; interrupt the guests
        still running on offload threads and stop those threads (without this, a guest with a long deadline would
        keep the process from exiting once the epoch ticker stops)."""
        tasks = list(self._workers.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        running = list(self._offload_running)
        for instance in running:
            instance.deadline = 0.0  # past: interrupted at its next deadline check
        if running:
            log.warning("router.offload.interrupted", calls=len(running), reason="the daemon is stopping")
            running[0].compiled.engine.interrupt_all()
        threads, self._offload_threads = list(self._offload_threads.values()), {}
        for thread in threads:
            thread.shutdown(wait=False)
        if running:
            joins = asyncio.gather(*(asyncio.to_thread(thread.shutdown, True) for thread in threads))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(joins, _OFFLOAD_JOIN_SECONDS)


def _run_guest(instance: Instance, kind: int, payload: bytes) -> bytes:
    """On an offload thread: run one top-level call; its reply is a copy (Instance.invoke)."""
    return instance.invoke(kind, payload)


def _init_offload_thread(engine: Engine, host: _LoopHost) -> None:
    # The lowest priority there is, on the loop's CPU (placement.py): a guest spinning here gets only the CPU time
    # the loop leaves idle, and whenever the loop waits for the GIL this thread holds, the CPU is free for it.
    engine.init_offload_thread(host)
    lower_offload_thread()


class _LoopHost:
    """The host imports of guests on an offload thread.

    `call` runs in place: the callee runs on the offload thread too, with an instance taken from its pool (pools
    are lists, whose `pop` and `append` hold the GIL, so no instance is ever handed to two threads), so a long run
    that makes many calls keeps their cost. `send` runs on the event loop thread, where mailboxes and their workers
    live, while the guest's thread waits (bounded by the guest's deadline). `log` runs in place.
    """

    __slots__ = ("_router", "_loop")

    def __init__(self, router: Router, loop: asyncio.AbstractEventLoop) -> None:
        self._router = router
        self._loop = loop

    def call(self, caller: Instance, target: bytes, request: bytes, reply_ptr: int, reply_cap: int) -> int:
        return self._router.call(caller, target, request, reply_ptr, reply_cap)

    def send(self, caller: Instance, target: bytes, message: bytes) -> int:
        return self._on_loop(caller, self._router.send, (caller, target, message))

    def log(self, caller: Instance, level: int, message: bytes) -> None:
        self._router.log(caller, level, message)

    def still_running(self, instance: Instance, now: float) -> None:
        return  # off the loop, a long call holds nobody up

    def _on_loop(self, caller: Instance, fn: Callable[..., int], args: tuple[object, ...]) -> int:
        result: concurrent.futures.Future[int] = concurrent.futures.Future()

        def run() -> None:
            if not result.set_running_or_notify_cancel():
                return  # the guest stopped waiting: its memory must not be touched any more
            try:
                result.set_result(fn(*args))
            except BaseException as exc:
                result.set_exception(exc)

        try:
            self._loop.call_soon_threadsafe(run)
        except RuntimeError:  # the loop is closed: the daemon is stopping
            return self._timed_out(caller)
        try:
            return result.result(timeout=max(0.0, caller.deadline - time.monotonic()) + 1.0)
        except concurrent.futures.TimeoutError:
            if result.cancel():
                return self._timed_out(caller)
            return result.result()  # already running on the loop, where the callee's deadline bounds it

    @staticmethod
    def _timed_out(caller: Instance) -> int:
        service: Service = caller.owner
        error = CallTimeout(service.name, f"service {service.name!r}: the event loop did not serve its call in time")
        caller.last_error = str(error).encode()
        return error.abi_code
