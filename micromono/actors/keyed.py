"""An actor service at run time (`KeyedService`): which of its actors are live, their activation, hibernation and
revival, the messages given to them, their commits, and their alarms.

One `KeyedService` per actor service *name* (it outlives versions: a hot swap changes `slot.current`, and each
actor moves to the new version at its next message). It keeps at most one `Actor` in memory per key (`actors`, in
least-recently-used order) and at most `max_live` of them: activating one more hibernates the least recently used
that can go (nothing running, queued or uncommitted). `sweep()` hibernates those idle for `idle_timeout`. An actor
that has storage is loaded by storage.py's reader thread before its first message runs (its messages wait in its
queue meanwhile); one that has none starts empty at once. The directory (`directory`, every actor that ever
committed: its size, last activity, schema version and alarm) is read once at start and kept current at each
durable commit.

It must not touch the disk itself (storage.py does, off the loop), run a message's steps (actor.py), or parse
HTTP. Timers: `start()` arms the idle sweep and the alarm clock on the running loop; tests call `sweep()` and
`alarms.fire_due()` with a fake clock instead.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

import structlog

from micromono.abi import KIND_ALARM
from micromono.config import MAX_KEY_BYTES, ServiceSpec
from micromono.engine import CLOCK
from micromono.errors import BadActorKey, Overloaded, ServiceUnavailable, StorageUnavailable
from micromono.scheduler import Scheduler
from micromono.service import LatencyHistogram, Slot
from micromono.suspended import Done
from micromono.tracing import Span, Tracer

from .actor import Actor, ActorRun
from .alarms import AlarmClock
from .state import ActorState
from .storage import ActorInfo, Loaded, ServiceStorage, StorageError
from .stream import Stream, StreamCounters

__all__ = ["KeyedService", "ALARM_PAYLOAD", "decode_key"]

log = structlog.get_logger(__name__)

#: The payload of an MM_KIND_ALARM message: when it was set for (ms since the Unix epoch), the attempt (1, 2, ...).
ALARM_PAYLOAD: Final = struct.Struct("<QI")
#: How many of the least recently used actors `max_live` looks at for one to hibernate.
EVICTION_SCAN: Final = 64
#: The longest the idle sweep waits between two passes (seconds).
SWEEP_INTERVAL_MAX: Final = 1.0


def decode_key(raw: bytes, service: str, *, percent: bool) -> str:
    """An actor key from a route's path segment (`percent`: percent-decoded) or a caller's target.

    Raises:
        BadActorKey: empty, longer than MAX_KEY_BYTES, or not UTF-8.
    """
    data = urllib.parse.unquote_to_bytes(raw) if percent and b"%" in raw else raw
    if not data:
        raise BadActorKey(service, f"an actor key of {service!r} is empty: name one, as in /{service}/<key>")
    if len(data) > MAX_KEY_BYTES:
        raise BadActorKey(
            service, f"an actor key of {service!r} is {len(data)} bytes long, more than the {MAX_KEY_BYTES} allowed"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadActorKey(service, f"an actor key of {service!r} is not UTF-8 text: {data[:64]!r}") from None


class KeyedService:
    """The actors of one actor service.

    Args:
        slot: the service's slot (its current version serves each actor's next message).
        spec: its manifest entry (`max_live`, `idle_timeout`, `storage_limit_bytes`, `mailbox`).
        storage: its opened database (`directory` is what `storage.open()` returned).
        scheduler: where runs that outlast their first slice go on.
        tracer: the spans of its messages' runs (docs/tracing.md), None when tracing is off.
        monotonic, wall: the clocks of idleness and of alarms (seconds); tests give fake ones.
    """

    def __init__(
        self,
        slot: Slot,
        spec: ServiceSpec,
        storage: ServiceStorage,
        directory: dict[str, ActorInfo],
        scheduler: Scheduler,
        *,
        tracer: Tracer | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.slot = slot
        self.name = slot.name
        self.spec = spec
        self.storage = storage
        self.directory = directory
        self.scheduler = scheduler
        self.tracer = tracer
        self.actors: OrderedDict[str, Actor] = OrderedDict()
        self._monotonic = monotonic
        self.alarms = AlarmClock(self._fire_alarm, wall)
        #: The sum of the directory's `bytes`, kept current at each durable commit (the metrics read it per scrape,
        #: where summing 100,000 entries would hold the loop).
        self.stored_bytes = 0
        for key, info in directory.items():
            self.stored_bytes += info.bytes
            if info.alarm is not None:
                self.alarms.set(key, info.alarm[0])

        # The streams of actors with WebSocket connections (stream.py): by key, kept across hibernation and hot
        # swaps; one without connections goes after idle_timeout.
        self.streams: dict[str, Stream] = {}
        #: What its streams and their connections have done (counted by them and by ingress/websocket.py).
        self.stream_counters = StreamCounters()
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False
        # Counters, read by the metrics at scrape time.
        self.activations = 0  # actors brought into memory (new ones and revived ones)
        self.revivals = 0  # of which had storage to load
        self.activation_latency = LatencyHistogram()  # from the first message to its instance being ready
        self.hibernated_idle = 0
        self.hibernated_lru = 0
        self.resets = 0  # actors whose memory was discarded after a failed commit
        self.alarms_fired = 0
        self.alarms_retried = 0
        self.alarms_dropped = 0
        self.rejected = 0  # messages refused by a full per-key queue

    def __repr__(self) -> str:
        return f"<KeyedService {self.name} [in memory: {len(self.actors)} | known: {len(self.directory)}]>"

    # --- the timers ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Arm the idle sweep and the alarm clock on the running loop."""
        self._loop = asyncio.get_running_loop()
        self.alarms.start(self._loop)
        self._arm_sweep()

    def _arm_sweep(self) -> None:
        if self._loop is None or self.closed:
            return
        interval = min(SWEEP_INTERVAL_MAX, self.spec.idle_timeout / 4)
        self._sweeper = self._loop.call_later(interval, self._sweep_now)

    def _sweep_now(self) -> None:
        self.sweep()
        self._arm_sweep()

    def sweep(self, now: float | None = None) -> int:
        """Hibernate the actors idle for `idle_timeout` (that can go); returns how many."""
        limit = (self._monotonic() if now is None else now) - self.spec.idle_timeout
        idle = []
        for actor in self.actors.values():
            if actor.last_used > limit:
                break  # least recently used first: the rest are more recent
            if actor.evictable:
                idle.append(actor)
        for actor in idle:
            self.hibernate(actor)
        self.hibernated_idle += len(idle)
        if self.streams:
            quiet = [k for k, s in self.streams.items() if not s.connections and s.last_active <= limit]
            for key in quiet:
                del self.streams[key]
        return len(idle)

    def stream(self, key: str) -> Stream:
        """The stream of actor `key` (made on its first WebSocket connection)."""
        stream = self.streams.get(key)
        if stream is None:
            stream = self.streams[key] = Stream(key, self.spec.stream_buffer, self._monotonic(), self.stream_counters)
        return stream

    def publish(self, key: str, data: bytes, text: bool, tag: bytes | None) -> None:
        """Publish a message of actor `key` to its connections (called by its output gate)."""
        self.stream(key).publish(data, text, tag, self._monotonic())

    # --- messages -----------------------------------------------------------------------------------------------

    def not_running(self) -> ServiceUnavailable:
        """The error for messages while no version runs."""
        return self.slot.not_running()

    def deliver(self, key: str, kind: int, payload: bytes, done: Done | None, trace: Span | None = None) -> None:
        """Give actor `key` a message: it runs now when the actor is idle, else after those queued before it.
        The outcome goes to `done` (through the output gate); never raises. `trace`: the span of the `call` or
        `send` that sent it (docs/tracing.md), None otherwise."""
        actor = self.actors.get(key)
        if actor is None:
            if self.closed:
                _fail(done, ServiceUnavailable(self.name, f"actor service {self.name!r} is stopping"))
                return
            actor = self._activate(key)
        else:
            self.actors.move_to_end(key)
        actor.last_used = self._monotonic()
        if actor.run is None and actor.state is not None and not actor.queue:
            self._start(actor, kind, payload, done, trace)
            return
        if len(actor.queue) >= self.spec.mailbox:
            self.rejected += 1
            _fail(
                done,
                Overloaded(
                    self.name,
                    f"actor {self.name}/{key} is overloaded: {len(actor.queue)} messages wait for it already "
                    f"(mailbox = {self.spec.mailbox}); retry later, or raise mailbox in services.toml",
                ),
            )
            return
        actor.queue.append((kind, payload, done, trace))

    def _start(self, actor: Actor, kind: int, payload: bytes, done: Done | None, trace: Span | None) -> None:
        run = actor.run = ActorRun(self, actor, kind, payload, done, trace)
        self.scheduler.arrivals += 1
        if not run.advance():
            self.scheduler.add(run)

    def run_over(self, actor: Actor) -> None:
        """A run that was suspended (or that a failed commit broke) is over: reset the actor if it must be, then
        go on with its queue."""
        if actor.broken:
            self._reset(actor)
        self._drain(actor)

    def _drain(self, actor: Actor) -> None:
        """Run `actor`'s queued messages, a slice's worth now and the rest on later loop iterations."""
        tick = CLOCK.tick
        while actor.queue and actor.run is None and actor.state is not None:
            if CLOCK.tick != tick and self._loop is not None:
                self._loop.call_soon(self._drain, actor)
                return
            kind, payload, done, trace = actor.queue.popleft()
            self._start(actor, kind, payload, done, trace)
        if actor.state is None and actor.queue and not actor.loading:
            self._load(actor)

    # --- activation and hibernation -----------------------------------------------------------------------------

    def _activate(self, key: str) -> Actor:
        if len(self.actors) >= self.spec.max_live:
            self._make_room()
        actor = Actor(key, self._monotonic())
        self.actors[key] = actor
        self.activations += 1
        if key in self.directory:
            self._load(actor)
        else:
            actor.state = self._state(key, Loaded())
        return actor

    def _load(self, actor: Actor) -> None:
        actor.loading = True
        self.revivals += 1

        def loaded(data: Loaded | None, error: BaseException | None) -> None:
            actor.loading = False
            if error is not None:
                failure = StorageUnavailable(self.name, f"actor {self.name}/{actor.key} cannot be loaded: {error}")
                log.error("actor.load.failed", service=self.name, key=actor.key, error=str(error))
                actor.fail_queued(failure)
                if actor.evictable and self.actors.get(actor.key) is actor:
                    del self.actors[actor.key]
                return
            actor.state = self._state(actor.key, data if data is not None else Loaded())
            self._drain(actor)

        self.storage.load(actor.key, loaded)

    def _state(self, key: str, loaded: Loaded) -> ActorState:
        return ActorState(key, loaded, storage_limit=self.spec.storage_limit_bytes, name=f"{self.name}/{key}")

    def instance_ready(self, actor: Actor) -> None:
        """An actor's new instance finished starting: the end of its activation, if it was one."""
        if actor.activated:
            self.activation_latency.observe(time.perf_counter() - actor.activated)
            actor.activated = 0.0

    def _make_room(self) -> None:
        """Hibernate least recently used actors until one more fits under `max_live` (those that can go now)."""
        excess = len(self.actors) - self.spec.max_live + 1
        victims = [actor for actor in itertools.islice(self.actors.values(), EVICTION_SCAN) if actor.evictable]
        for actor in victims[:excess]:
            self.hibernate(actor)
            self.hibernated_lru += 1

    def hibernate(self, actor: Actor) -> None:
        """Close an evictable actor's instance and forget its memory; its storage stays (revived on the next
        message)."""
        self.drop_instance(actor)
        if actor.state is not None:
            actor.state.close()
            actor.state = None
        if self.actors.get(actor.key) is actor:
            del self.actors[actor.key]

    def drop_instance(self, actor: Actor) -> None:
        """Close the actor's instance (a trap, an older version, hibernation); the next message starts another."""
        instance = actor.instance
        if instance is not None:
            actor.instance = None
            instance.actor = None
            instance.owner.discard(instance)

    @property
    def live(self) -> int:
        """Actors with a live instance."""
        return sum(1 for actor in self.actors.values() if actor.instance is not None)

    # --- commits ------------------------------------------------------------------------------------------------

    def commit(self, actor: Actor, state: ActorState) -> None:
        """End the message's transaction: its writes join the next group commit (nothing when it wrote none)."""
        commit = state.commit(actor.epoch, time.time())
        if commit is None:
            return
        seq = actor.submitted = actor.submitted + 1
        epoch = actor.epoch

        def durable(error: BaseException | None) -> None:
            if error is None:
                info = self.directory.get(actor.key)
                if info is None:
                    info = self.directory[actor.key] = ActorInfo(actor.key)
                before = info.bytes
                info.apply(commit)
                self.stored_bytes += info.bytes - before
                self.alarms.set(actor.key, info.alarm[0] if info.alarm is not None else None)
                actor.durable_to(seq)
                return
            failure = StorageUnavailable(
                self.name, f"actor {self.name}/{actor.key}: its writes could not be committed: {error}"
            )
            log.error("actor.commit.failed", service=self.name, key=actor.key, error=str(error))
            actor.failed_at(seq, epoch, failure)
            if epoch == actor.epoch:  # the first failure of this epoch: what the actor has in memory is not durable
                if actor.run is None:
                    self._reset(actor)
                else:
                    actor.broken = True

        try:
            self.storage.submit(commit, durable)
        except StorageError as exc:  # closed: the service was removed or the daemon is stopping
            durable(exc)

    def _reset(self, actor: Actor) -> None:
        """Discard what the actor holds in memory after a failed commit; it is loaded again from what is durable
        before its next message."""
        actor.broken = False
        actor.epoch += 1
        self.resets += 1
        self.drop_instance(actor)
        if actor.state is not None:
            actor.state.close()
            actor.state = None
        if actor.queue:
            self._load(actor)

    # --- alarms -------------------------------------------------------------------------------------------------

    def _fire_alarm(self, key: str, at_ms: int, attempt: int) -> None:
        def outcome(reply: bytes | None, error: BaseException | None) -> None:
            if error is None:
                self.alarms_fired += 1
                return
            if attempt >= self.alarms.max_attempts:
                self.alarms_dropped += 1
                log.error(
                    "actor.alarm.dropped", service=self.name, key=key, attempts=attempt, scheduled_ms=at_ms,
                    error=str(error),
                )  # fmt: skip
                return
            self.alarms_retried += 1
            log.warning("actor.alarm.retry", service=self.name, key=key, attempt=attempt, error=str(error))
            self.alarms.retry(key, at_ms, attempt)

        self.deliver(key, KIND_ALARM, ALARM_PAYLOAD.pack(at_ms, attempt), outcome)

    # --- shutdown -----------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the timers, take no more messages, and hibernate every actor that can go now (at shutdown, after
        the daemon drained the work; a run still going finishes on what it holds)."""
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self.alarms.stop()
        for actor in list(self.actors.values()):
            actor.fail_queued(ServiceUnavailable(self.name, f"actor service {self.name!r} is stopping"))
            if actor.run is None:
                self.hibernate(actor)

    @property
    def busy(self) -> bool:
        """Whether any actor has work running, queued, loading or waiting for its commit."""
        return any(not actor.evictable for actor in self.actors.values())


def _fail(done: Done | None, error: BaseException) -> None:
    if done is not None:
        done(None, error)
    else:
        log.warning("actor.message.failed", error=str(error))
