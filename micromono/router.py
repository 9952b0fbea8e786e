"""Calls between services, in memory: the engine's `Host` (`micromono.call`, `send`, `log`).

A call from A to B (`micromono.call`) arrives here from A's host import. The router checks A's allowlist (one dict
lookup on A's `edges`, which also holds the counters), takes an instance of B's *current* version from its pool,
gives it the smaller of B's timeout and what is left of A's deadline, copies A's request bytes
straight into B's inbox, starts B, and copies the reply straight into the buffer A lent. No socket, no
serialisation, no task switch: B runs at once, inside A's slice (`benches/bench_call.py`). When B gives up its
slice before it finishes, `call` returns a `suspended.WaitingCall` and A's fiber waits on it. The call depth and
the send cap go down the chain with each entry (`Instance.depth`, `Instance.sends`).

`Router` is also the daemon's one handle on the parts it is built from, so callers keep one object: the registry
of current versions (registry.py: `slot`, `prepare`, `install`, `services`, and `swap`/`remove`, which hand queued
work over) and the top-level runs with their mailbox workers (runs.py: `top_level`, `run_over`, `stop_workers`).
It must not parse HTTP or start top-level runs itself.

Compiled by mypyc on the compiled path (scripts/build_compiled.py), from this same source.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Final

import structlog

from .abi import KIND_CALL, KIND_MESSAGE
from .config import DEFAULT_MAX_CALL_DEPTH, DEFAULT_MAX_REQUEST_BYTES
from .engine import CLOCK, DeadlineClock, Instance
from .errors import (
    CallDepthExceeded,
    CallForbidden,
    Overloaded,
    RequestTooLarge,
    ServiceCallError,
    UnknownService,
)
from .registry import Registry
from .runs import TopLevel
from .scheduler import Scheduler
from .service import INGRESS, LATENCY_SAMPLE, Edge, Service, Slot
from .suspended import WaitingCall

__all__ = ["Router", "Slot", "Edge", "INGRESS"]

log = structlog.get_logger(__name__)

_OVERLOADED: Final = Overloaded.abi_code
#: One call in LATENCY_SAMPLE is timed for the latency histogram: the ones whose success count has these bits clear.
_SAMPLE_MASK: Final = LATENCY_SAMPLE - 1


class Router:
    """The engine's `Host`: serves `micromono.call`, `send` and `log`; and the daemon's handle on the registry
    (`registry`) and the top-level runs (`top_level`).

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
        self.max_call_depth = max_call_depth
        self.max_request_bytes = max_request_bytes
        self.registry = Registry(on_output=self._guest_output)
        # The registry's tables, for the readers of the daemon's state (status, metrics, reload).
        self.slots: dict[str, Slot] = self.registry.slots
        self.ingress_edges: dict[str, Edge] = self.registry.ingress_edges
        self.retired: list[Service] = self.registry.retired
        # errors on edges that do not exist (unknown or forbidden targets), by (caller, kind)
        self.refused: dict[tuple[str, str], int] = {}
        self.scheduler = Scheduler()
        self.top_level = TopLevel(self.scheduler)
        self._clock: DeadlineClock = CLOCK  # call deadlines (engine.DeadlineClock)

    def __repr__(self) -> str:
        return f"<Router [services: {len(self.slots)} | max depth: {self.max_call_depth}]>"

    def set_limits(self, *, max_call_depth: int, max_request_bytes: int) -> None:
        """Apply a reloaded manifest's limits to the calls that start from now on."""
        self.max_call_depth = max_call_depth
        self.max_request_bytes = max_request_bytes

    @property
    def busy(self) -> bool:
        """Whether any mailbox worker or suspended run is still going."""
        return self.top_level.busy

    # --- versions (registry.py, runs.py) ------------------------------------------------------------------------

    def slot(self, name: str) -> Slot:
        """The slot of `name` (made empty the first time a name is asked for)."""
        return self.registry.slot(name)

    def prepare(self, service: Service) -> None:
        """Wire a version before it starts (registry.Registry.prepare)."""
        self.registry.prepare(service)

    def install(self, service: Service) -> Service | None:
        """Prepare `service` and make it the current version of its name; return the version it replaced."""
        return self.registry.install(service)

    def swap(self, service: Service) -> Service | None:
        """Make `service` (prepared and started) current and retire the version it replaces; return that version.

        New calls go to `service` from now on. Work queued in the old version's mailbox and not yet started moves
        to the new one (what does not fit is refused like any overflow). The old version closes its idle
        instances now and busy ones as they finish.
        """
        previous = self.registry.make_current(service)
        if previous is not None:
            service.guest_log.inherit(previous.guest_log)  # the budget and the drop counts go on across versions
            self.top_level.retire(previous, successor=service)
            self.retired.append(previous)
        return previous

    def remove(self, name: str) -> Service | None:
        """Stop routing to `name`; its current version is retired and its queued work refused."""
        previous = self.registry.unset(name)
        if previous is not None:
            self.top_level.retire(previous, successor=None)
            self.retired.append(previous)
        return previous

    def services(self) -> Iterator[Service]:
        """The current versions, in slot order."""
        return self.registry.services()

    def run_over(self, service: Service) -> None:
        """A suspended top-level run of `service` is over: its queued work may go on (runs.TopLevel.run_over)."""
        self.top_level.run_over(service)

    async def stop_workers(self) -> None:
        """Cancel the mailbox workers and the suspended runs (runs.TopLevel.stop)."""
        await self.top_level.stop()

    # --- engine.Host ------------------------------------------------------------------------------------------

    def call(
        self, caller: Instance, target: bytes, request: bytes, reply_ptr: int, reply_cap: int
    ) -> int | WaitingCall:
        """Serve `micromono.call` (docs/abi.md): the ABI result, or a `WaitingCall` when the callee gave up its slice
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
            return edge.fail(caller, edge.slot.not_running())
        depth = caller.depth + 1
        if depth > self.max_call_depth:
            return edge.fail(caller, self._too_deep(source.name, edge.callee))
        if len(request) > self.max_request_bytes:
            return edge.fail(caller, self._too_large(edge.callee, len(request)))
        if callee.quarantined_until:
            quarantined = callee.quarantine_error_now()
            if quarantined is not None:
                return edge.fail(caller, quarantined)
        try:
            instance = callee.idle.pop()
        except IndexError:
            try:
                instance = callee.grow()
            except ServiceCallError as exc:
                return edge.fail(caller, exc)
            if instance.booting:  # a new instance whose start outlasted the slice: the caller waits for both
                return WaitingCall(caller, edge, callee, instance, request, reply_ptr, reply_cap, depth)
        # `Service.arm` for a call, inlined (a Python call would be a visible share of a call): the callee's
        # timeout from the deadline clock, at most what is left of the caller's.
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
                return WaitingCall(caller, edge, callee, instance, None, reply_ptr, reply_cap, depth)
            n = len(reply)
            if n <= reply_cap:
                caller.view[reply_ptr : reply_ptr + n] = reply
            else:
                caller.held_reply = reply
        except ServiceCallError as exc:
            callee.release(instance)
            callee.count_failure(exc.kind)
            return edge.fail(caller, exc)
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
            if len(mailbox.items) >= mailbox.capacity and mailbox.on_full != "shed_oldest" and not mailbox.closed:
                # A flood's common case, refused without building an exception: a sender that loops on a full
                # mailbox must not cost the loop more than the refusal itself.
                mailbox.rejected += 1
                errors = edge.message_errors
                errors["overloaded"] = errors.get("overloaded", 0) + 1
                caller.last_error = mailbox.full_message
                return _OVERLOADED
        try:
            if callee is None:
                raise edge.slot.not_running()
            if len(message) > self.max_request_bytes:
                raise self._too_large(edge.callee, len(message))
            if callee.quarantined_until:
                quarantined = callee.quarantine_error_now()
                if quarantined is not None:
                    raise quarantined
            self.top_level.shed(callee, callee.mailbox.put_nowait((KIND_MESSAGE, message, None)))
        except ServiceCallError as exc:
            kind = exc.kind
            edge.message_errors[kind] = edge.message_errors.get(kind, 0) + 1
            caller.last_error = str(exc).encode()
            return exc.abi_code
        edge.messages += 1
        self.top_level.wake(callee)
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
        if self.registry.is_running(name):
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
