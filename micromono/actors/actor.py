"""One actor: a key of an actor service, with its queue, its live instance, its data and its output gate; and one
message's run through it (`ActorRun`).

An actor handles its messages one at a time, in arrival order (`Actor.queue` holds what waits). A message runs as
an `ActorRun`, through up to four guest entries, each of which may outlast its slice and go on in the scheduler:
the start of a new instance (the actor's first message, or the first after a hot swap, a trap or hibernation), the
build's `mm_schema_version` (asked once per version), `mm_migrate` when the actor's stored schema is older, then
`mm_handle`. The message's storage writes are one transaction (`state.ActorState`): committed when the handler
returns, rolled back when it fails.

The output gate: a message's reply and the sends it made are held until its writes are durable, and a message that
wrote nothing waits for the actor's earlier commits, so nothing leaves the actor that a crash could take back
(Durable Objects' output gate). `Actor.output` holds them in order; `Actor.durable_to` / `failed_at` release or
fail them as the group commits of storage.py come back.

This module owns the life of one message and the gate; it must not decide which actors are live (keyed.py), talk to
the disk (storage.py), or route (router.py).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import structlog

from micromono.abi import KIND_ALARM, KIND_CALL, KIND_HTTP
from micromono.engine import CLOCK, Instance
from micromono.errors import (
    GuestTrap,
    MicromonoError,
    MigrationFailed,
    ServiceCallError,
    ServiceUnavailable,
    StorageUnavailable,
)
from micromono.service import LATENCY_SAMPLE, Service
from micromono.suspended import Done, chain_moved_on
from micromono.tracing import Span

from .state import ActorState, StorageCallError

if TYPE_CHECKING:
    from .keyed import KeyedService

__all__ = ["Actor", "ActorRun", "Message"]

log = structlog.get_logger(__name__)

#: A message waiting in an actor's queue: (kind, payload, who gets the outcome or None, the span of the call or send
#: that sent it or None: docs/tracing.md).
Message = tuple[int, bytes, Done | None, Span | None]

#: One message in LATENCY_SAMPLE is timed for the latency histogram: the ones whose success count has these bits
#: clear.
_SAMPLE_MASK: Final = LATENCY_SAMPLE - 1

# The steps of an ActorRun.
_START: Final = 0
_BOOTING: Final = 1
_SCHEMA: Final = 2
_MIGRATE: Final = 3
_HANDLE: Final = 4


class _Held:
    """An output behind the gate: released when commit `gate` of the actor (at `epoch`) is durable."""

    __slots__ = ("gate", "epoch", "done", "reply", "error", "sends")

    def __init__(
        self,
        gate: int,
        epoch: int,
        done: Done | None,
        reply: bytes | None,
        error: BaseException | None,
        sends: list[Callable[[], None]],
    ) -> None:
        self.gate = gate
        self.epoch = epoch
        self.done = done
        self.reply = reply
        self.error = error
        self.sends = sends


class Actor:
    """One key of an actor service while it is in memory (live, or being loaded).

    `state` is its data (None while it loads); `instance` its live instance (None until a message needs one);
    `run` the message running now; `queue` what waits behind it; `epoch` counts resets (a failed commit discards
    what the actor had in memory); `submitted` and `durable` number its commits; `held` the outputs behind the gate;
    `outbox` the sends of the message running now; `last_used` (monotonic seconds) orders idleness.
    """

    __slots__ = (
        "key", "key_bytes", "instance", "state", "queue", "run", "loading", "epoch", "submitted", "durable", "held",
        "outbox", "last_used", "broken", "activated",
    )  # fmt: skip

    def __init__(self, key: str, now: float) -> None:
        self.key = key
        self.key_bytes = key.encode()
        self.instance: Instance | None = None
        self.state: ActorState | None = None
        self.queue: deque[Message] = deque()
        self.run: ActorRun | None = None
        self.loading = False
        self.epoch = 0
        self.submitted = 0
        self.durable = 0
        self.held: deque[_Held] = deque()
        self.outbox: list[Callable[[], None]] = []
        self.last_used = now
        self.broken = False  # a commit failed while a run was going: reset when it is over
        self.activated = time.perf_counter()  # for the activation latency, until its first instance is ready

    def __repr__(self) -> str:
        state = "loading" if self.loading else ("live" if self.instance is not None else "ready")
        return f"<Actor {self.key!r} {state} [queued: {len(self.queue)} | held: {len(self.held)}]>"

    @property
    def evictable(self) -> bool:
        """Whether the actor can hibernate now: nothing running, queued, loading, or waiting for a commit."""
        return (
            self.run is None
            and not self.queue
            and not self.held
            and not self.loading
            and self.durable == self.submitted
        )

    # --- the output gate ----------------------------------------------------------------------------------------

    def output(self, done: Done | None, reply: bytes | None, error: BaseException | None) -> None:
        """Release a message's outcome and the sends it made (`outbox`), now if nothing it may have read is still
        being committed, else once that is durable."""
        sends = self.outbox
        if sends:
            self.outbox = []
        else:
            sends = []  # never the outbox itself: it goes on collecting the next message's sends
        if self.durable == self.submitted and not self.held:
            _release(done, reply, error, sends)
        else:
            self.held.append(_Held(self.submitted, self.epoch, done, reply, error, sends))

    def durable_to(self, seq: int) -> None:
        """Commit `seq` is durable: release what waited for it (and for the commits before it)."""
        self.durable = seq
        held = self.held
        while held and held[0].gate <= seq:
            item = held.popleft()
            _release(item.done, item.reply, item.error, item.sends)

    def failed_at(self, seq: int, epoch: int, error: StorageUnavailable) -> None:
        """Commit `seq` (made at `epoch`) failed: what waited for it, and what ran after it on the same data, fails
        with `error`; outputs of a later epoch (after the reset) wait for their own commits."""
        self.durable = seq
        keep: deque[_Held] = deque()
        for item in self.held:
            if item.epoch == epoch and item.gate >= seq:
                _release(item.done, None, error, [])
            elif item.gate <= seq:
                _release(item.done, item.reply, item.error, item.sends)
            else:
                keep.append(item)
        self.held = keep

    def fail_queued(self, error: ServiceCallError) -> None:
        """Fail every message waiting in the queue (the actor cannot be loaded)."""
        while self.queue:
            _, _, done, _ = self.queue.popleft()
            _release(done, None, error, [])


def _release(
    done: Done | None, reply: bytes | None, error: BaseException | None, sends: list[Callable[[], None]]
) -> None:
    for send in sends:
        send()
    if done is not None:
        done(reply, error)
    elif error is not None:
        log.warning("actor.message.failed", error=str(error))


class ActorRun:
    """One message of one actor, from a new instance's start (when it needs one) to its commit (scheduler.Run).

    `advance()` runs it until it is over (True) or a guest entry gave up its slice (False); the scheduler then
    calls `step()` once per loop iteration. Once over it has delivered its outcome through the actor's gate and
    told its `KeyedService` (`run_over`).

    Tracing (docs/tracing.md): the guest entries run in `trace`, the context the message came with. A call's is the
    call's span, which its caller ends; any other message gets a span of its own (`span`), a child of the `send`
    that sent it or, for ingress requests, alarms and WebSocket events, a trace's root, ended with its outcome.
    """

    __slots__ = (
        "keyed", "actor", "kind", "payload", "done", "step_no", "stepping", "service", "in_txn", "paused",
        "suspended", "started", "trace", "span",
    )  # fmt: skip

    def __init__(
        self, keyed: KeyedService, actor: Actor, kind: int, payload: bytes, done: Done | None, trace: Span | None
    ) -> None:
        self.keyed = keyed
        self.actor = actor
        self.kind = kind
        self.payload = payload
        self.done = done
        self.step_no = _START
        self.stepping = False  # the current guest entry is suspended: the next turn steps it
        self.service: Service | None = None
        self.in_txn = False
        self.paused = 0.0
        self.suspended = False
        self.started = time.perf_counter()
        self.span: Span | None = None
        tracer = keyed.tracer
        if tracer is not None and (kind != KIND_CALL or trace is None):
            self.span = trace = tracer.run(kind, payload, keyed.name, trace)
        self.trace = trace

    def __repr__(self) -> str:
        return f"<ActorRun {self.keyed.name}/{self.actor.key} kind={self.kind} step={self.step_no}>"

    # --- scheduler.Run ------------------------------------------------------------------------------------------

    def step(self) -> bool:
        instance = self.actor.instance
        service = self.service
        if instance is not None and service is not None and self.step_no >= _MIGRATE:  # running time: move it on
            chain_moved_on(service.compiled.engine, instance, time.monotonic() - self.paused)
        return self.advance()

    def cancel(self) -> None:
        """Stop for good (the daemon is stopping): the message fails, its writes are rolled back."""
        actor = self.actor
        if actor.instance is not None:
            actor.instance.cancel()
        self._failed(
            ServiceUnavailable(self.keyed.name, f"actor {self._name()}: the daemon stopped before it finished")
        )

    # --- running ------------------------------------------------------------------------------------------------

    def advance(self) -> bool:
        """Run until the message is over (True: its outcome is delivered) or a guest entry is suspended (False)."""
        try:
            over = self._advance()
        except ServiceCallError as exc:
            self._failed(exc)
            return True
        except MicromonoError as exc:  # a new instance that failed to start
            self._failed(ServiceUnavailable(self.keyed.name, str(exc)))
            return True
        except BaseException as exc:  # a bug of ours (re-raised from a host callback): fail the message, log it
            log.error("actor.message.crashed", actor=self._name(), error=repr(exc), exc_info=exc)
            self._failed(exc)
            return True
        if not over:
            self.suspended = True
            self.paused = time.monotonic()
        return over

    def _advance(self) -> bool:
        actor = self.actor
        keyed = self.keyed
        if self.step_no == _START:
            service = keyed.slot.current
            if service is None:
                raise keyed.not_running()
            if service.quarantined_until:
                quarantined = service.quarantine_error_now()
                if quarantined is not None:
                    raise quarantined
            self.service = service
            instance = actor.instance
            if instance is not None and (instance.owner is not service or instance.poisoned):
                keyed.drop_instance(actor)  # an older version's: the current one serves from this message on
                instance = None
            if instance is not None:
                instance.trace = self.trace
            if instance is None:
                instance = service.spawn()
                instance.trace = self.trace
                instance.actor = actor
                actor.instance = instance
                self.step_no = _BOOTING
                if instance.booting:
                    self.stepping = True
                    return False
                keyed.instance_ready(actor)
            self.step_no = _SCHEMA
        service = self.service
        assert service is not None
        instance = actor.instance
        assert instance is not None
        if self.step_no == _BOOTING:
            if self.stepping:
                if instance.step() is None:
                    return False
                self.stepping = False
            keyed.instance_ready(actor)
            self.step_no = _SCHEMA
        if self.step_no == _SCHEMA:
            if service.schema_version is None:
                if not service.compiled.has_schema_version:
                    service.schema_version = 0
                else:
                    version = instance.step() if self.stepping else instance.schema_version()
                    if version is None:
                        self.stepping = True
                        return False
                    self.stepping = False
                    service.schema_version = version
            self._begin(service, instance)
            self.step_no = _MIGRATE
        state = actor.state
        assert state is not None
        if self.step_no == _MIGRATE:
            stored = state.schema_version
            schema = service.schema_version
            assert schema is not None
            if stored < schema and service.compiled.can_migrate:
                try:
                    result = instance.step() if self.stepping else instance.migrate(stored)
                except GuestTrap as exc:
                    raise MigrationFailed(
                        keyed.name, f"actor {self._name()}: mm_migrate({stored}) of version {service.version} "
                        f"trapped; the message was rolled back: {exc}", exc.trap,
                    ) from exc  # fmt: skip
                if result is None:
                    self.stepping = True
                    return False
                self.stepping = False
                if result != 0:
                    raise MigrationFailed(
                        keyed.name,
                        f"actor {self._name()}: mm_migrate({stored}) of version {service.version} returned {result}; "
                        "the message was rolled back",
                    )
            if stored != schema:
                state.set_schema_version(schema)
            self.step_no = _HANDLE
        reply = instance.step() if self.stepping else instance.begin(self.kind, self.payload)
        if reply is None:
            self.stepping = True
            return False
        self.stepping = False
        self._succeeded(service, reply)
        return True

    def _begin(self, service: Service, instance: Instance) -> None:
        """The message's transaction and call state (`Service.arm` for a top-level run: the real clock)."""
        actor = self.actor
        state = actor.state
        assert state is not None
        stored = state.schema_version
        schema = service.schema_version
        assert schema is not None
        if stored > schema:
            raise StorageUnavailable(
                self.keyed.name,
                f"actor {self._name()} holds data of schema version {stored}, but version {service.version} of "
                f"{self.keyed.name!r} knows schema {schema} at most (a rollback after a migration?): deploy a "
                "build whose mm_schema_version is at least that",
            )
        instance.depth = 1
        instance.sends = 0
        now = CLOCK.now = time.monotonic()
        instance.deadline = now + service.deadline_after
        state.begin()
        self.in_txn = True
        if self.kind == KIND_ALARM:
            state.delete_alarm()  # the alarm that fires is used up, unless the handler sets another

    def _succeeded(self, service: Service, reply: bytes) -> None:
        actor = self.actor
        state = actor.state
        assert state is not None
        try:
            self.keyed.commit(actor, state)
        except StorageCallError as exc:  # SQLite dropped the message's SQL transaction (a full database, ...)
            self._failed(StorageUnavailable(self.keyed.name, f"actor {self._name()}: {exc}"))
            return
        self.in_txn = False
        actor.run = None
        if (service.ok & _SAMPLE_MASK) == 0:  # one message in LATENCY_SAMPLE is timed, as runs.py times runs
            service.latency.observe(time.perf_counter() - self.started)
        service.ok += 1
        if self.kind == KIND_HTTP:
            service.ingress_edge.ok += 1
        actor.output(self.done, reply, None)
        if self.span is not None:
            self._end_span("ok")
        self._over()

    def _failed(self, error: BaseException) -> None:
        actor = self.actor
        if self.in_txn:
            self.in_txn = False
            assert actor.state is not None
            actor.state.rollback()
            actor.outbox = []
        instance = actor.instance
        if instance is not None and (instance.poisoned or instance.booting):
            self.keyed.drop_instance(actor)
        service = self.service
        if service is not None and isinstance(error, ServiceCallError):
            service.count_failure(error.kind)
            if self.kind == KIND_HTTP:
                service.ingress_edge.count_error(error.kind)
        actor.run = None
        actor.output(self.done, None, error)
        if self.span is not None:
            self._end_span(error.kind if isinstance(error, ServiceCallError) else "crash")
        self._over()

    def _over(self) -> None:
        if self.suspended or self.actor.broken:
            self.keyed.run_over(self.actor)

    def _end_span(self, outcome: str) -> None:
        tracer = self.keyed.tracer
        span = self.span
        if tracer is not None and span is not None:
            tracer.end(span, outcome)

    def _name(self) -> str:
        return f"{self.keyed.name}/{self.actor.key}"
