"""A loaded version of one service (its compiled module, instance pool, mailbox, supervisor state and stats), and the
two handles that point at versions: `Slot` (a name and the version new calls go to) and `Edge` (an allowed
caller -> callee pair and its counters).

`Service` is the runtime object (STYLE rule 7): built from a `config.ServiceSpec` (what the manifest says) and an
`engine.CompiledModule` (what the file compiled to). It owns its instances and closes them. It must not decide what
runs where or call other services: the registry (registry.py) wires a version's `edges` and `ingress_edge`, the
router (router.py) serves calls between services and runs.py runs top-level work. `Slot` and `Edge` live here, not
in the registry, because a version holds its edges and an edge points at a slot: one module keeps that loop
without an import cycle.

Instance pool: one instance is made at start (which also checks the ABI version). More are made on demand, up to
`spec.instances`, when a re-entrant chain (A calls B calls A) or concurrent runs (one suspended between slices while
another guest calls the service) need one while all are busy; past that, `grow()` raises `Overloaded`. A new
instance boots like any guest entry (engine.Instance.boot): its start may take more than one slice, and then the
caller waits for it. A failed instance (trap, timeout, ABI violation, cancel) is closed, not returned, and replaced
on the next demand.

Supervision (OTP's restart intensity) is per version too: `count_failure` quarantines a version that fails more
than `max_failures` times within `failure_window`; every way in then refuses work fast (`quarantine_error_now`)
until the quarantine (1 s, doubling while failures continue, at most 60 s) ends.

A guest entry's call state (its call depth, its send count, its deadline) is what `arm` sets: a top-level run reads
the real clock, a call inherits at most its caller's deadline. The two hottest starts (runs.TopLevel.run and
router.Router.call) inline it, each with a comment saying so: in pure Python a call would cost them a visible share.

Compiled by mypyc on the compiled path (scripts/build_compiled.py), from this same source.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import structlog

from .channels import Mailbox
from .engine import CLOCK, DEADLINE_SLACK, CompiledModule, Instance
from .errors import MicromonoError, Overloaded, ServiceCallError, ServiceUnavailable
from .guestlog import GuestLog

if TYPE_CHECKING:
    from .config import ServiceSpec
    from .scheduler import Scheduler

__all__ = ["Service", "Slot", "Edge", "INGRESS", "WorkItem", "LatencyHistogram"]

log = structlog.get_logger(__name__)

#: A unit of queued work: (kind, payload, completion callback or None for fire-and-forget messages, trace context:
#: the span of the `send` that queued a message, a `tracing.Span`, or None when tracing is off or for HTTP).
WorkItem = tuple[int, bytes, Callable[[bytes | None, BaseException | None], None] | None, Any]

#: How many versions of each service name this process has loaded (the second part of a version id).
_loads: dict[str, itertools.count[int]] = {}

#: Error kinds that count against a version (rollback): the guest misbehaved, not merely answered with an error.
FAILURE_KINDS: Final = frozenset({"trap", "timeout", "abi_violation", "migration"})

QUARANTINE_FIRST: Final = 1.0
QUARANTINE_MAX: Final = 60.0

#: Upper bounds of the call-latency histogram buckets, in seconds (kept as a table: one bound a line would hide it).
LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.000_002, 0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5,
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
#: One call in this many is timed for the histogram (a clock read on every call would be a visible share of it).
LATENCY_SAMPLE: Final = 16
#: The caller label of requests that came in over HTTP.
INGRESS: Final = "ingress"


class LatencyHistogram:
    """A plain-Python histogram, read by the metrics collector at scrape time (no lock, no prometheus call)."""

    __slots__ = ("counts", "total", "count")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        i = 0
        for bound in LATENCY_BUCKETS:
            if seconds <= bound:
                break
            i += 1
        self.counts[i] += 1
        self.total += seconds
        self.count += 1


class Slot:
    """A service name and the version new calls go to (`current`, None while none runs).

    Swapping `current` is one attribute store, so a call already running finishes on the version it started on
    (hot reload builds on this).
    """

    __slots__ = ("name", "current", "down_reason")

    def __init__(self, name: str) -> None:
        self.name = name
        self.current: Service | None = None
        self.down_reason = ""  # why no version runs, when the daemon knows (an actor database it refused)

    def __repr__(self) -> str:
        return f"<Slot {self.name} -> {self.current.version if self.current else None}>"

    def not_running(self) -> ServiceUnavailable:
        """The error for work routed here while no version runs (the service was removed or never started)."""
        if self.down_reason:
            return ServiceUnavailable(self.name, f"service {self.name!r} is not running: {self.down_reason}")
        return ServiceUnavailable(self.name, f"service {self.name!r} is not running")


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

    def __repr__(self) -> str:
        return f"<Edge {self.caller} -> {self.callee}>"

    def count_error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def fail(self, caller: Instance, error: ServiceCallError) -> int:
        """Count a failed call on this edge and give its message to the calling guest (`last_error`, docs/abi.md);
        return the ABI code the call answers."""
        self.count_error(error.kind)
        caller.last_error = str(error).encode()
        return error.abi_code


class Service:
    """One loaded version of a service.

    Args:
        spec: the manifest's settings for the service.
        compiled: its compiled module.

    `on_output`, set by its owner before the first instance starts, receives guest stdout/stderr writes (level -1/-2)
    with the instance that wrote them.
    """

    def __init__(self, spec: ServiceSpec, compiled: CompiledModule) -> None:
        self.spec = spec
        self.name = spec.name
        self.compiled = compiled
        self.sha256 = compiled.sha256
        self.load_number = next(_loads.setdefault(spec.name, itertools.count(1)))
        self.version = f"{compiled.sha256[:12]}.{self.load_number}"
        self.max_instances = spec.instances
        self.timeout = spec.call_timeout
        # What a call's deadline is set to, after the deadline clock's now (engine.DeadlineClock).
        self.deadline_after = spec.call_timeout + DEADLINE_SLACK
        self.idle: list[Instance] = []
        self.live = 0
        self.mailbox: Mailbox[WorkItem] = Mailbox(spec.name, spec.mailbox, spec.on_full)
        self.latency = LatencyHistogram()
        self.traps = 0
        self.instances_created = 0
        self.closed = False
        # runs.py's: this version's top-level run that is suspended between slices (its later work waits in the
        # mailbox until it is over), and how many runs outlasted their first slice.
        self.running: object | None = None
        self.preempted = 0
        # Sends one guest entry may make (router.send); past it, send answers MM_ERR_OVERLOADED.
        self.max_sends = spec.max_sends
        self.too_many_sends = (
            f"service {spec.name!r} sent more than max_sends = {spec.max_sends} messages in one call; "
            "send fewer per call, or raise its `max_sends` in services.toml"
        ).encode()
        self.guest_log = GuestLog(spec.log_rate, spec.log_burst)
        # Calls this version served, for status, metrics and the rollback decision (failures: traps, timeouts,
        # ABI violations; an application error is an answer, not a failure).
        self.ok = 0
        self.failed = 0
        self.loaded_at = time.time()
        # The supervisor (OTP restart intensity): more than spec.max_failures failures within
        # spec.failure_window seconds quarantines the version; calls then fail fast until it ends, and each
        # quarantine that follows soon after the last one lasts twice as long (1 s, 2 s, ... 60 s).
        self.failure_times: deque[float] = deque()
        self.quarantined_until = 0.0
        self.quarantine_reason = ""
        self.quarantines = 0
        self._backoff = QUARANTINE_FIRST
        self.on_quarantine: Callable[[Service], None] | None = None
        self.clock: Callable[[], float] = time.monotonic  # the supervisor's seconds (tests give a fake clock)
        # Set by the registry (registry.Registry.prepare) before the version starts: `edges`, its allowlist
        # (`spec.calls`) by target name; `ingress_edge`, the HTTP counters of its name (until then, its own);
        # `on_output`, where guest stdout/stderr goes.
        self.edges: dict[bytes, Edge] = {}
        self.ingress_edge = Edge(INGRESS, Slot(spec.name))
        self.on_output: Callable[[Instance, int, bytes], None] | None = None
        # An actor service's: the storage schema this build expects (its `mm_schema_version`), asked of its first
        # actor instance (actors/actor.py); None until then.
        self.schema_version: int | None = None

    def __repr__(self) -> str:
        return (
            f"<Service {self.name} {self.version} [instances: {self.live}/{self.max_instances} | "
            f"busy: {self.live - len(self.idle)} | queued: {len(self.mailbox)}/{self.mailbox.capacity}]>"
        )

    async def start(self, scheduler: Scheduler) -> None:
        """Make and boot the first instance, which also checks the module's ABI version. A start that outlasts its
        first slice goes on in `scheduler`'s turns, so the event loop keeps serving meanwhile.

        Raises:
            ServiceLoadError: the module does not instantiate or does not speak this daemon's guest ABI.
        """
        instance = self._new_instance()
        if instance.boot() is None:
            await scheduler.complete(instance.step, instance.cancel)
        self.idle.append(instance)

    def _new_instance(self) -> Instance:
        on_output = self.on_output

        def output(level: int, data: bytes) -> None:
            if on_output is not None:
                on_output(instance, level, data)

        spec = self.spec
        instance = self.compiled.new_instance(
            memory_limit=spec.memory_limit_bytes,
            owner=self,
            on_output=output,
            env=spec.env,
            dirs=tuple((str(d.host), d.guest, d.write) for d in spec.dirs),
        )
        self.live += 1
        self.instances_created += 1
        return instance

    def grow(self) -> Instance:
        """A new instance while the pool is below `max_instances`, booting: `instance.booting` stays True while its
        start is suspended (the caller steps it to the end before its first `begin`).

        Raises:
            Overloaded: every instance is busy and the pool is at its limit.
            ServiceUnavailable: the service is stopped, or the new instance failed to start.
        """
        if self.closed:
            raise ServiceUnavailable(self.name, f"service {self.name!r} ({self.version}) is stopped")
        if self.live >= self.max_instances:
            raise Overloaded(
                self.name,
                f"service {self.name!r} is overloaded: all {self.max_instances} instances are busy "
                "(a re-entrant call chain, or calls while a long run is suspended); raise its `instances` in "
                "services.toml",
            )
        instance = self._new_instance()
        try:
            instance.boot()
        except MicromonoError as exc:
            self.release(instance)
            raise ServiceUnavailable(self.name, str(exc)) from exc
        return instance

    def spawn(self) -> Instance:
        """A new instance outside the pool, booting (for an actor: one instance per key, bounded by its service's
        `max_live` rather than `instances`); the caller steps its boot to the end and `discard`s it when done.

        Raises:
            ServiceUnavailable: the version is stopped, or the new instance failed to start.
        """
        if self.closed:
            raise ServiceUnavailable(self.name, f"service {self.name!r} ({self.version}) is stopped")
        instance = self._new_instance()
        try:
            instance.boot()
        except MicromonoError as exc:
            self.discard(instance)
            raise ServiceUnavailable(self.name, str(exc)) from exc
        return instance

    def discard(self, instance: Instance) -> None:
        """Close an instance made by `spawn` (a trapped one counts as a trap)."""
        self.live -= 1
        if instance.poisoned:
            self.traps += 1
        instance.close()

    def release(self, instance: Instance) -> None:
        """Return an instance after a call; a poisoned one is closed instead (it is replaced on demand)."""
        if instance.poisoned or instance.booting or self.closed:
            self.live -= 1
            instance.close()
            if instance.poisoned:
                self.traps += 1
        else:
            if instance.held_reply is not None:
                instance.held_reply = None
            self.idle.append(instance)

    def memory_sizes(self) -> list[int]:
        """The linear memory size of each idle instance, read from wasmtime now (a guest may have grown it)."""
        return [instance.memory_size() for instance in list(self.idle)]

    @property
    def in_flight(self) -> int:
        """Instances inside a call right now."""
        return self.live - len(self.idle)

    def count_failure(self, kind: str) -> None:
        """Count a failed call; quarantine the version when failures come too fast (see __init__)."""
        if kind not in FAILURE_KINDS:
            return
        self.failed += 1
        now = self.clock()
        times = self.failure_times
        times.append(now)
        window = self.spec.failure_window
        while times and times[0] < now - window:
            times.popleft()
        if len(times) > self.spec.max_failures and now >= self.quarantined_until:
            if now - self.quarantined_until > window:
                self._backoff = QUARANTINE_FIRST  # quiet since the last quarantine: start over
            self.quarantine_reason = (
                f"{len(times)} failures (traps, timeouts, ABI violations) within {window:g} s, "
                f"more than max_failures = {self.spec.max_failures}"
            )
            self.quarantined_until = now + self._backoff
            log.warning(
                "supervisor.quarantine.started",
                service=self.name,
                version=self.version,
                seconds=self._backoff,
                reason=self.quarantine_reason,
            )
            self._backoff = min(self._backoff * 2, QUARANTINE_MAX)
            self.quarantines += 1
            times.clear()
            if self.on_quarantine is not None:
                self.on_quarantine(self)

    def quarantine_error_now(self) -> ServiceUnavailable | None:
        """The error to refuse work with while the version is quarantined, or None when it is not (any more).

        Callers test `quarantined_until` first (zero until a first quarantine), so a version never quarantined
        costs them one attribute read.
        """
        left = self.quarantined_until - self.clock()
        if left <= 0.0:
            return None
        return ServiceUnavailable(
            self.name,
            f"service {self.name!r} is quarantined for another {left:.1f} s: {self.quarantine_reason}; "
            "it is retried when that ends",
        )

    def arm(self, instance: Instance, depth: int, cap: float) -> None:
        """Set up `instance` for a guest entry at call depth `depth` (1: a top-level run): no sends yet, and a
        deadline of `call_timeout` from now, at most `cap` (a call's caller's deadline).

        A top-level run reads the real clock (once per run, not per call) and moves the deadline clock up to it, so
        the calls it makes never start before it by that clock, whatever the ticker's lag; a call reads the
        deadline clock.
        """
        instance.depth = depth
        instance.sends = 0
        if depth == 1:
            now = CLOCK.now = time.monotonic()
        else:
            now = CLOCK.now
        deadline = now + self.deadline_after
        instance.deadline = deadline if deadline < cap else cap

    def close(self) -> None:
        """Stop taking work and close idle instances; busy ones are closed as they are released. Idempotent."""
        self.closed = True
        self.mailbox.close()
        for instance in self.idle:
            self.live -= 1
            instance.close()
        self.idle.clear()
