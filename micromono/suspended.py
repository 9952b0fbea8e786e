"""Guest entries that outlast their first slice: a top-level run (`SuspendedRun`) and a call (`WaitingCall`).

Every guest entry runs on a wasmtime fiber that gives the event loop back at the end of its slice (an epoch tick).
A top-level run (an ingress request or a message) that does not finish in its first slice becomes a
`SuspendedRun`, which the scheduler (scheduler.py) resumes one slice per event-loop iteration; its service takes no
new top-level work until it is over (runs.py keeps that order). A call whose callee gives up its slice becomes a
`WaitingCall`, which the caller's fiber waits on (engine.Waiting): the chain is resumed from the top-level run that
holds it. `call_timeout` is CPU time: a suspended chain's deadlines are moved on by the time it spent waiting for
its turn.

Each object here delivers its own outcome (a reply, an error, the counters) once it is over; it must not decide
what runs next: a run that is over calls `on_over(service)`, given by whoever made it (runs.TopLevel).

Interpreted on both paths: scripts/build_compiled.py says why it is not compiled.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

import structlog

from .abi import KIND_CALL, KIND_HTTP
from .engine import Engine, Instance
from .errors import MicromonoError, ServiceCallError, ServiceUnavailable
from .service import Edge, Service
from .tracing import Span, Tracer

__all__ = ["SuspendedRun", "WaitingCall", "Done", "chain_moved_on", "count_failure", "deliver_failure", "deliver_crash"]

log = structlog.get_logger(__name__)

#: What gets an HTTP request's outcome: `(reply, None)` or `(None, error)`.
Done = Callable[[bytes | None, BaseException | None], None]
_NO_CAP: Final = float("inf")


def count_failure(service: Service, kind: int, exc: ServiceCallError) -> None:
    """Count a top-level run's failure: against the version (its failure window) and, for an HTTP request, on its
    ingress edge."""
    service.count_failure(exc.kind)
    if kind == KIND_HTTP:
        service.ingress_edge.count_error(exc.kind)


def deliver_failure(service: Service, kind: int, done: Done | None, exc: ServiceCallError) -> None:
    """Deliver a top-level run's failure (counted already): to `done` for an HTTP request, to the log for a
    message."""
    if done is not None:
        done(None, exc)
    else:
        log.warning("service.message.failed", service=service.name, version=service.version, error=str(exc))


def deliver_crash(service: Service, done: Done | None, exc: BaseException) -> None:
    """Deliver a bug of ours met during a top-level run (re-raised from a host callback)."""
    if done is not None:
        done(None, exc)  # the connection answers 500 and logs it
    else:
        log.error("service.message.failed", service=service.name, error=repr(exc), exc_info=exc)


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
        service.arm(instance, depth, cap)
        return instance.begin(kind, request)
    except ServiceCallError:
        service.release(instance)
        raise
    except MicromonoError as exc:  # the new instance failed to start
        service.release(instance)
        raise ServiceUnavailable(service.name, str(exc)) from exc


def chain_moved_on(engine: Engine, instance: Instance, waited: float) -> None:
    """Move the deadlines of `instance` and the calls it waits in on by `waited` seconds: `call_timeout` is a
    budget of running time, and a suspended chain did not run while it waited for its turn."""
    while instance is not None:
        instance.deadline += waited
        callee = engine.callee_of(instance)
        if callee is None:
            return
        instance = callee


class SuspendedRun:
    """A top-level run (an ingress request or a message) that outlasted its first slice, resumed by the scheduler.

    `request` is set while its instance is still booting (the pool had to grow); the request starts once it is
    ready. `done` gets `(reply, error)` for an HTTP request (whoever started the run may set it after it was made).
    """

    __slots__ = ("service", "instance", "kind", "request", "done", "on_over", "paused", "started", "tracer", "span")

    def __init__(
        self,
        service: Service,
        instance: Instance,
        kind: int,
        request: bytes | None,
        done: Done | None,
        on_over: Callable[[Service], None],
    ) -> None:
        self.service = service
        self.instance = instance
        self.kind = kind
        self.request = request
        self.done = done
        self.on_over = on_over
        self.paused = time.monotonic()  # when its last slice ended
        self.started = time.perf_counter()
        self.tracer: Tracer | None = None  # with its span (docs/tracing.md), ended when the run is over
        self.span: Span | None = None

    def __repr__(self) -> str:
        return f"<SuspendedRun {self.service.name} {self.service.version} kind={self.kind}>"

    def step(self) -> bool:
        """One more slice (scheduler.Run); True once the run is over and its outcome delivered."""
        service = self.service
        instance = self.instance
        now = time.monotonic()
        chain_moved_on(service.compiled.engine, instance, now - self.paused)
        try:
            reply = _next_slice(service, instance, self.request, self.kind, 1, _NO_CAP)
            if not instance.booting:
                self.request = None
            if reply is None:
                self.paused = time.monotonic()
                return False
            service.release(instance)
        except ServiceCallError as exc:
            self.on_over(service)
            self._end_span(exc.kind)
            count_failure(service, self.kind, exc)
            deliver_failure(service, self.kind, self.done, exc)
            return True
        except BaseException as exc:
            self.on_over(service)
            self._end_span("crash")
            deliver_crash(service, self.done, exc)
            return True
        self.on_over(service)
        self._end_span("ok")
        service.latency.observe(time.perf_counter() - self.started)
        service.ok += 1
        if self.kind == KIND_HTTP:
            service.ingress_edge.ok += 1
            assert self.done is not None
            self.done(reply, None)
        return True

    def _end_span(self, outcome: str) -> None:
        if self.tracer is not None and self.span is not None:
            self.tracer.end(self.span, outcome)

    def cancel(self) -> None:
        """Stop for good (the daemon is stopping): an HTTP request is answered 503, a message is logged."""
        service = self.service
        self.instance.cancel()
        service.release(self.instance)
        self.on_over(service)
        self._end_span("cancelled")
        error = ServiceUnavailable(service.name, f"service {service.name!r}: the daemon stopped before it finished")
        if self.kind == KIND_HTTP and self.done is not None:
            service.ingress_edge.count_error(error.kind)
            self.done(None, error)
        else:
            log.warning("service.message.failed", service=service.name, version=service.version, error=str(error))


class WaitingCall:
    """A call whose callee gave up its slice before it finished: its caller's fiber waits on it (engine.Waiting).

    `request` is set while the callee's new instance is still booting; the call starts once it is ready.
    """

    __slots__ = ("caller", "edge", "callee", "instance", "request", "reply_ptr", "reply_cap", "depth", "started")

    def __init__(
        self,
        caller: Instance,
        edge: Edge,
        callee: Service,
        instance: Instance,
        request: bytes | None,
        reply_ptr: int,
        reply_cap: int,
        depth: int,
    ) -> None:
        self.caller = caller
        self.edge = edge
        self.callee = callee
        self.instance = instance
        self.request = request
        self.reply_ptr = reply_ptr
        self.reply_cap = reply_cap
        self.depth = depth
        self.started = time.perf_counter()
        instance.trace = caller.trace  # a booting callee's context, set before its call starts (docs/tracing.md)

    def __repr__(self) -> str:
        return f"<WaitingCall {self.edge.caller} -> {self.edge.callee}>"

    def step(self) -> int | None:
        """One more slice of the callee: the call's ABI result once it is over, None before."""
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
            return self.edge.fail(caller, exc)
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
