"""Top-level work, in order per service: ingress requests and messages, run inline or by the service's worker.

A top-level run is a guest entry nobody called: an ingress request or a message. Each version takes its top-level
work one run at a time, in arrival order. When its mailbox is empty and none of its runs is suspended, a request
runs at once, inline (what the worker would do next anyway). Otherwise it queues behind earlier work
(`queue_http`; messages always queue, router.Router.send) and the service's worker task runs it, a slice's worth of
items per loop iteration (`_drain`). Both ways start a run through the one path here (`_begin`): the quarantine
check, an instance from the pool, the entry's call state (`Service.arm`), the guest entry. A run that outlasts its
first slice becomes a `suspended.SuspendedRun` in the scheduler; its service takes no new top-level work until it
is over (what arrives meanwhile waits in the mailbox, so order is kept), and calls into the service from other
guests still take instances of their own.

Owns the mailbox workers and the hand-over of queued work when a version is replaced (`retire`). It must not route
(ingress and the router pick the slot) or check allowlists.

Compiled by mypyc on the compiled path (scripts/build_compiled.py), from this same source.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Final

import structlog

from .abi import KIND_HTTP
from .engine import CLOCK, DeadlineClock, Instance
from .errors import Overloaded, ServiceCallError, ServiceUnavailable
from .scheduler import Scheduler
from .service import LATENCY_SAMPLE, Service, Slot, WorkItem
from .suspended import Done, SuspendedRun, count_failure, deliver_crash, deliver_failure
from .tracing import Span, Tracer

__all__ = ["TopLevel"]

log = structlog.get_logger(__name__)

#: One run in LATENCY_SAMPLE is timed for the latency histogram: the ones whose success count has these bits clear.
_SAMPLE_MASK: Final = LATENCY_SAMPLE - 1


class TopLevel:
    """Starts top-level runs and runs each service's mailbox worker.

    Args:
        scheduler: takes the runs that outlast their first slice; `arrivals` counts each run started here.
    """

    __slots__ = ("scheduler", "tracer", "_workers", "_waiting", "_clock", "_monotonic")

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        #: Spans of top-level runs, or None (`daemon.tracing = "off"`: one check per run, docs/tracing.md).
        self.tracer: Tracer | None = None
        self._clock: DeadlineClock = CLOCK  # call deadlines (engine.DeadlineClock); its tick ends a slice
        self._monotonic = time.monotonic
        # Mailbox workers by service (not by version: services built from the same file have versions alike).
        self._workers: dict[Service, asyncio.Task[None]] = {}
        self._waiting: set[asyncio.Task[None]] = set()  # ingress requests waiting for mailbox room

    def __repr__(self) -> str:
        return f"<TopLevel [workers: {len(self._workers)} | suspended: {len(self.scheduler)}]>"

    @property
    def busy(self) -> bool:
        """Whether any mailbox worker or suspended run is still going."""
        return bool(self._workers) or len(self.scheduler) > 0

    # --- starting a run -----------------------------------------------------------------------------------------

    def run(
        self, service: Service, kind: int, request: bytes, done: Done | None, queued: bool, parent: Span | None = None
    ) -> bytes | SuspendedRun | None:
        """Start a top-level run of `service`: the one way every ingress request and message starts.

        `queued` is False for an ingress request that has not been queued: it runs now only if no work of the
        service is queued or suspended ahead of it; else this returns None and the caller must `queue_http` it, so
        that order is kept. A queued item (the worker's) runs now. `parent`: the span of the `send` that queued a
        message (its run's span is that one's child; docs/tracing.md), else None.

        Returns the guest's reply (a copy) when it finished within its first slice, or the `SuspendedRun` the
        scheduler now holds (it delivers its outcome to `done`, which its starter may set later). Counts the
        outcome (`ok`, the ingress edge, the failure window); a suspended run counts its own when it is over.

        Raises:
            ServiceCallError: it was refused (quarantine, pool full) or failed (trap, timeout, …).
        """
        if not queued and (service.mailbox.items or service.running is not None):
            return None
        tracer = self.tracer
        span: Span | None = None
        try:
            if service.quarantined_until:
                quarantined = service.quarantine_error_now()
                if quarantined is not None:
                    raise quarantined
            idle = service.idle
            try:
                instance = idle.pop()
            except IndexError:
                instance = service.grow()  # raises Overloaded
                if instance.booting:  # a new instance whose start outlasted the slice: the run waits for it
                    if tracer is not None:
                        instance.trace = tracer.run(kind, request, service.name, parent)
                    return self._suspend(service, instance, kind, request, done)
            if tracer is not None:
                span = instance.trace = tracer.run(kind, request, service.name, parent)
            # `Service.arm` for a top-level run, inlined (a Python call would be a visible share of a request): the
            # real clock, read once per run, moves the deadline clock up to it, so the calls the run makes never
            # start before it by that clock, whatever the ticker's lag.
            instance.depth = 1
            instance.sends = 0
            now = self._clock.now = self._monotonic()
            instance.deadline = now + service.deadline_after
            self.scheduler.arrivals += 1  # top-level work: runs suspended meanwhile get short slices (scheduler.py)
            sample = (service.ok & _SAMPLE_MASK) == 0
            if sample:
                started = time.perf_counter()
            try:
                reply = instance.begin(kind, request)
            except ServiceCallError:
                service.release(instance)
                raise
        except ServiceCallError as exc:
            count_failure(service, kind, exc)
            if tracer is not None and span is not None:
                tracer.end(span, exc.kind)
            raise
        if reply is None:
            return self._suspend(service, instance, kind, None, done)
        # Back in the pool before the caller reads `reply`: nothing can enter the instance in between.
        # (`Service.release`, inlined for an entry that succeeded, so the instance is not poisoned.)
        if instance.held_reply is None and not service.closed:
            idle.append(instance)
        else:
            service.release(instance)
        if sample:
            service.latency.observe(time.perf_counter() - started)
        service.ok += 1
        if kind == KIND_HTTP:
            service.ingress_edge.ok += 1
        if tracer is not None and span is not None:
            tracer.end(span, "ok")
        return reply

    def _suspend(
        self, service: Service, instance: Instance, kind: int, request: bytes | None, done: Done | None
    ) -> SuspendedRun:
        """Hand a top-level run that outlasted its first slice to the scheduler (`request`: not started yet,
        its instance still booting)."""
        run = SuspendedRun(service, instance, kind, request, done, self.run_over)
        if self.tracer is not None:
            run.tracer = self.tracer
            run.span = instance.trace
        service.running = run
        service.preempted += 1
        self.scheduler.add(run)
        return run

    def run_over(self, service: Service) -> None:
        """A suspended top-level run of `service` is over: its queued work may go on."""
        service.running = None
        if service.mailbox.items:
            self.wake(service)

    # --- ingress requests ---------------------------------------------------------------------------------------

    def queue_http(self, service: Service, request: bytes, done: Done) -> None:
        """Queue an HTTP request in `service`'s mailbox (after `run` returned None); its worker calls
        `done(reply, error)` later.

        Raises:
            Overloaded: the mailbox is full.
            ServiceUnavailable: the service is stopping.
        """
        item: WorkItem = (KIND_HTTP, request, done, None)
        mailbox = service.mailbox
        if mailbox.on_full == "wait" and len(mailbox) >= mailbox.capacity:
            task = asyncio.get_running_loop().create_task(self._queue_later(service, item))
            self._waiting.add(task)
            task.add_done_callback(self._waiting.discard)
            return
        self.shed(service, mailbox.put_nowait(item))
        self.wake(service)

    async def _queue_later(self, service: Service, item: WorkItem) -> None:
        """on_full = "wait": hold an ingress request until the mailbox has room, at most `on_full_wait`."""
        try:
            self.shed(service, await service.mailbox.put(item, service.spec.on_full_wait))
        except ServiceCallError as exc:
            done = item[2]
            assert done is not None
            done(None, exc)
            return
        self.wake(service)

    def reply_broke_abi(self, slot: Slot, error: ServiceCallError) -> None:
        """Ingress found a reply it had counted as served to be malformed: count it as the failure it is."""
        service = slot.current
        if service is None:
            return
        edge = service.ingress_edge
        edge.ok -= 1
        service.ok -= 1
        edge.count_error(error.kind)
        service.count_failure(error.kind)

    # --- the mailbox workers ------------------------------------------------------------------------------------

    def _start_item(self, service: Service, item: WorkItem) -> None:
        """Start one queued item (an HTTP request or a message) of `service` and deliver its outcome, unless it is
        suspended (then it delivers its own when it is over)."""
        kind, payload, done, trace = item
        try:
            reply = self.run(service, kind, payload, done, True, trace)
        except ServiceCallError as exc:
            deliver_failure(service, kind, done, exc)
            return
        except BaseException as exc:  # a bug of ours (re-raised from a host callback)
            deliver_crash(service, done, exc)
            return
        if isinstance(reply, bytes) and done is not None:
            done(reply, None)

    def wake(self, service: Service) -> None:
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
        finally:
            self._workers.pop(service, None)

    @staticmethod
    def shed(service: Service, item: WorkItem | None) -> None:
        """Fail an item dropped from a full mailbox (on_full = "shed_oldest"); nothing when `item` is None."""
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

    def retire(self, previous: Service, successor: Service | None) -> None:
        """Hand `previous`'s queued work to `successor` (what does not fit is refused like any overflow; with no
        successor, all of it is refused), then close `previous`: its idle instances now, busy ones as they
        finish."""
        for item in previous.mailbox.drain():
            done = item[2]
            try:
                if successor is None:
                    raise ServiceUnavailable(previous.name, f"service {previous.name!r} was removed")
                self.shed(successor, successor.mailbox.put_nowait(item))
            except ServiceCallError as exc:
                if done is not None:
                    done(None, exc)
                else:
                    log.warning("service.message.dropped", service=previous.name, error=str(exc))
        if successor is not None and len(successor.mailbox):
            self.wake(successor)
        previous.close()

    async def stop(self) -> None:
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
