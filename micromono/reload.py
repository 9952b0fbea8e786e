"""Hot swap: replacing a service while the daemon runs, Erlang's hot code loading with Wasm modules as the unit.

Owns the reload procedure, for one service whose file changed:

1. wait until the file has stopped changing (a copy or an in-place write in progress is never loaded);
2. compile it in a worker thread (the event loop keeps serving);
3. start an instance, which checks the guest ABI, and run the optional `mm_health` export;
4. hand the state over (`mm_snapshot` -> `mm_restore`) for a stateful single-instance service;
5. swap atomically (`router.Router.swap`): new calls go to the new version, work queued for the old one moves
   over, the old one's instances close as they finish (bounded by `drain_timeout`);
6. put the new version on probation (`probation.py`) and reinstate the previous one if more than
   `rollback_error_rate` of its calls fail.

Any failure before the swap leaves the old version serving; each outcome is a log event, a metric and the
service's `last_reload` in `/status`. Editing `services.toml` reloads the manifest: the difference is staged
completely (every added or changed service compiled and started) before any of it is applied, so an invalid
edit changes nothing; then the host applies the new config (`ReloadHost.apply_config`) and the staged versions
are swapped in. The supervisor's fallback (a quarantined version replaced by the last known good one) runs here
too, under the same lock.

Where changes come from is `watch.py`'s (a `Watcher`, injectable). What the reloader needs from the daemon is the
`ReloadHost` protocol: it must not import the daemon, nor write the daemon's config, the router's limits or the
ingress route table itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

import structlog

from .config import Config, ServiceSpec, load_config
from .engine import CompiledModule
from .errors import MicromonoError
from .probation import Probation, Probations
from .service import Service
from .watch import FileWatcher, Watcher, file_sha256, wait_until_stable

if TYPE_CHECKING:
    from .router import Router

__all__ = ["MANIFEST", "RELOAD_HISTORY", "ReloadHost", "ReloadResult", "Reloader", "WatcherFactory"]

T = TypeVar("T")
log = structlog.get_logger(__name__)

#: The `service` label of reloads of services.toml itself.
MANIFEST: Final = "services.toml"
#: How many reload events `Reloader.history` keeps (the live page's reload history, docs/operations.md).
RELOAD_HISTORY: Final = 64
#: How often the probation monitor reviews the versions on probation.
PROBATION_TICK: Final = 0.05
#: What `Service.running` holds while a version's state is being handed over: its queue waits (runs.TopLevel.run).
_HANDING_OVER: Final = "handing over its state"

#: Makes a watcher for a set of files (`watch.FileWatcher` by default; tests pass their own).
WatcherFactory = Callable[[Iterable[Path]], Watcher]


class ReloadHost(Protocol):
    """What the reloader needs from the daemon that runs it (`daemon.Daemon` is one)."""

    @property
    def config(self) -> Config:
        """The manifest in force."""
        ...

    @property
    def router(self) -> Router:
        """Where versions are prepared, swapped in and retired."""
        ...

    async def off_loop(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(*args)` off the event loop (file reads and hashes)."""
        ...

    async def compile(self, name: str, path: Path) -> CompiledModule:
        """Compile a service's module off the event loop; raises `ServiceLoadError`."""
        ...

    def apply_config(self, new: Config) -> Config:
        """Make an edited manifest the one in force; returns the config actually in force."""
        ...

    async def open_actors(self, spec: ServiceSpec) -> None:
        """Open an actor service's storage before its first version is swapped in (nothing when it is open);
        raises a `MicromonoError` naming the database when it cannot be opened."""
        ...


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What one reload did. `outcome`: swapped, added, removed, unchanged, rejected, rolled_back or fallback; in
    `Reloader.history` only, also quarantined (the supervisor stopped a version: `reason` says why)."""

    service: str
    outcome: str
    version: str | None  # the version serving afterwards
    previous: str | None  # the version serving before
    reason: str
    at: float  # time.time()
    duration_ms: float

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


class Reloader:
    """Applies file changes to a running daemon. One reload runs at a time.

    Args:
        host: the running daemon (see `ReloadHost`): its router gets the new versions, and an edited manifest is
            handed to its `apply_config`.
        watcher_factory: makes the watcher of a set of files (every service's file and the manifest); again
            whenever a manifest edit changes that set. By default a `watch.FileWatcher`.
        clock: monotonic seconds, for probations, drains and durations (tests may inject their own).
    """

    def __init__(
        self,
        host: ReloadHost,
        watcher_factory: WatcherFactory = FileWatcher,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self.results: dict[str, ReloadResult] = {}
        self.counts: dict[tuple[str, str], int] = {}
        # The last RELOAD_HISTORY events, oldest first, and how many were ever recorded (so a reader that last saw
        # `recorded` = n knows the ones after it): the live page's reload history (console/).
        self.history: deque[ReloadResult] = deque(maxlen=RELOAD_HISTORY)
        self.recorded = 0
        self._lock = asyncio.Lock()
        self._clock = clock
        self._probations = Probations(clock)
        self._watcher_factory = watcher_factory
        self._watcher: Watcher | None = None
        self._rewatch = False
        self.ready = asyncio.Event()  # set once the first watch is live
        self._drains: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()
        self.last_good: dict[str, Service] = {}  # retired versions known to have served well, by name
        self._manifest_sha = file_sha256(host.config.path)

    def __repr__(self) -> str:
        return f"<Reloader [reloads: {sum(self.counts.values())} | in probation: {len(self._probations)}]>"

    # --- watching -----------------------------------------------------------------------------------------------

    def watched_paths(self) -> set[Path]:
        config = self.host.config
        return {config.path, *(spec.wasm for spec in config.services)}

    async def run(self) -> None:
        """Watch until cancelled, reloading what changes; also runs the probation monitor."""
        monitor = asyncio.create_task(self._monitor_probations(), name="micromono-probation")
        try:
            while True:
                self._watcher = self._watcher_factory(self.watched_paths())
                self._rewatch = False
                live = False
                async for changed in self._watcher.changes():
                    if not live:
                        # The watch is live from here on: catch up with anything that changed before it was.
                        live = True
                        log.info("reload.watch.started", files=len(self.watched_paths()))
                        await self._catch_up()
                        self.ready.set()
                    if changed:
                        await self._apply(changed)
                    if self._rewatch:  # the manifest changed the set of files to watch
                        self._watcher.stop()
                        break
                else:
                    return
        finally:
            for task in (monitor, *self._drains):
                task.cancel()
            for task in (monitor, *self._drains):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self._watcher is not None:
                self._watcher.stop()

    async def _catch_up(self) -> None:
        """Reload whatever differs from what is loaded (files changed between loading and watching)."""
        config = self.host.config
        if await self.host.off_loop(file_sha256, config.path) != self._manifest_sha:
            await self.reload_manifest()
            return
        digests: dict[Path, str | None] = {}  # each file is read once, however many services it serves
        for spec in config.services:
            current = self._current(spec.name)
            if current is None:
                continue
            if spec.wasm not in digests:
                digests[spec.wasm] = await self.host.off_loop(file_sha256, spec.wasm)
            if digests[spec.wasm] not in (current.sha256, None):
                await self.reload_service(spec.name)

    async def _apply(self, changed: set[Path]) -> None:
        config = self.host.config
        resolved = {Path(os.path.realpath(p)) for p in changed}
        if Path(os.path.realpath(config.path)) in resolved:
            await self.reload_manifest()
            return
        for spec in config.services:
            if Path(os.path.realpath(spec.wasm)) in resolved:
                await self.reload_service(spec.name)

    # --- one service --------------------------------------------------------------------------------------------

    async def reload_service(self, name: str) -> ReloadResult:
        """Reload `name` from its file (the procedure in the module docstring)."""
        async with self._lock:
            started = self._clock()
            host = self.host
            spec = host.config.service(name)
            current = host.router.slots[name].current
            previous_version = current.version if current is not None else None
            await wait_until_stable(spec.wasm)
            try:
                compiled = await self.host.compile(name, spec.wasm)
                if current is not None and compiled.sha256 == current.sha256 and spec == current.spec:
                    return self._record(name, "unchanged", previous_version, previous_version, "same sha256", started)
                new = await self._start(spec, compiled, previous=current)
            except MicromonoError as exc:
                return self._record(name, "rejected", previous_version, previous_version, str(exc), started)
            self._swap(new, current)
            return self._record(name, "swapped", new.version, previous_version, "", started)

    async def _start(self, spec: ServiceSpec, compiled: CompiledModule, previous: Service | None) -> Service:
        """Make a started, healthy new version (with the previous one's state, when it is handed over).

        Every guest entry here (the start function, `_initialize`, `mm_health`, `mm_snapshot`, `mm_restore`) is
        preemptible like any other: one that outlasts its slice goes on in the scheduler's turns while the loop
        keeps serving the old version, and each is bounded by engine.START_TIMEOUT.
        """
        router = self.host.router
        scheduler = router.scheduler
        new = Service(spec, compiled)
        router.prepare(new)
        try:
            await new.start(scheduler)
            instance = new.idle[0]
            if compiled.has_health:
                status = instance.health()
                if status is None:
                    status = await scheduler.complete(instance.step, instance.cancel)
                if status != 0:
                    raise MicromonoError(f"service {spec.name!r}: mm_health returned {status}, not 0 (healthy)")
            await self._hand_over_state(previous, new)
        except BaseException:
            new.close()
            raise
        return new

    async def _hand_over_state(self, old: Service | None, new: Service) -> None:
        """Erlang's code_change for Wasm: move a stateful single-instance service's state to the new version.

        The old version's instance is taken out of its pool for the hand-off and its queue held (ingress requests
        and messages wait in its mailbox, and move to the new version with the swap that follows at once), so the
        state taken is the state at the swap even when `mm_snapshot` or `mm_restore` outlast a slice.
        """
        if old is None or new.spec.instances != 1 or old.max_instances != 1:
            return
        if not old.compiled.can_snapshot or not new.compiled.can_restore:
            missing = "mm_snapshot in the old version" if not old.compiled.can_snapshot else "mm_restore in the new"
            log.info("reload.state.skipped", service=new.name, reason=f"no {missing}: the new version starts empty")
            return
        waited = 0.0
        while not old.idle and old.live and waited < old.timeout + 1.0:  # a suspended run holds its one instance
            await asyncio.sleep(0.005)
            waited += 0.005
        if not old.idle:
            if old.live == 0:  # its instance was discarded after a trap: the state went with it
                log.info("reload.state.skipped", service=new.name, reason="the old version has no live instance")
                return
            raise MicromonoError(f"service {new.name!r}: its instance is busy, cannot take its state; try again")
        scheduler = self.host.router.scheduler
        instance = old.idle.pop()
        old.running = _HANDING_OVER
        try:
            state: bytes | None = instance.snapshot()
            if state is None:
                state = await scheduler.complete(instance.step, instance.cancel)
            assert state is not None
            target = new.idle[0]
            if target.restore(state) is None:
                await scheduler.complete(target.step, target.cancel)
        except BaseException:
            old.release(instance)
            self.host.router.run_over(old)
            raise
        old.release(instance)
        old.running = None  # the swap that follows moves what queued meanwhile to the new version
        log.info("reload.state.moved", service=new.name, bytes=len(state), version=new.version)

    def _swap(self, new: Service, current: Service | None, *, probation: bool = True) -> None:
        host = self.host
        if current is not None and current.ok and not current.failure_times and current.quarantines == 0:
            self.last_good[new.name] = current  # served calls and was not failing: a fallback for the supervisor
        new.on_quarantine = self.on_quarantine
        host.router.swap(new)
        if current is not None and probation:
            window = host.config.daemon.probation
            self._probations.start(new, current, window)
        if current is not None:
            self._spawn_drain(current)

    def _spawn_drain(self, old: Service) -> None:
        # The loop keeps only weak references to tasks: hold each drain until it ends (and cancel it on close).
        task = asyncio.get_running_loop().create_task(self._drain(old), name=f"micromono-drain-{old.version}")
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    async def _drain(self, old: Service) -> None:
        """Wait for the old version's running calls (bounded by drain_timeout), then forget it."""
        timeout = self.host.config.daemon.drain_timeout
        deadline = self._clock() + timeout
        while old.live > 0 and self._clock() < deadline:
            await asyncio.sleep(0.01)
        if old.live > 0:
            log.warning("reload.drain.expired", service=old.name, version=old.version, in_flight=old.in_flight)
        else:
            log.info("reload.drain.complete", service=old.name, version=old.version)
        with contextlib.suppress(ValueError):
            self.host.router.retired.remove(old)

    def _record(
        self, name: str, outcome: str, version: str | None, previous: str | None, reason: str, started: float
    ) -> ReloadResult:
        result = ReloadResult(
            service=name,
            outcome=outcome,
            version=version,
            previous=previous,
            reason=reason,
            at=time.time(),
            duration_ms=round((self._clock() - started) * 1000, 2),
        )
        self.results[name] = result
        self._remember(result)
        key = (name, outcome)
        self.counts[key] = self.counts.get(key, 0) + 1
        event = "reload.swap.complete" if outcome in ("swapped", "added") else f"reload.{outcome}"
        method = log.warning if outcome in ("rejected", "rolled_back", "fallback") else log.info
        method(
            event,
            service=name,
            version=version,
            previous=previous,
            reason=reason or None,
            duration_ms=result.duration_ms,
        )
        return result

    def _remember(self, result: ReloadResult) -> None:
        self.history.append(result)
        self.recorded += 1

    # --- rollback -------------------------------------------------------------------------------------------

    async def _monitor_probations(self) -> None:
        while True:
            await asyncio.sleep(PROBATION_TICK)
            if self._probations:
                await self.check_probations()

    async def check_probations(self) -> None:
        """End finished probations; roll back versions whose failure rate is over the threshold."""
        threshold = self.host.config.daemon.rollback_error_rate
        for probation, total, rate in self._probations.review(self._current, threshold):
            await self._roll_back(probation, total, rate)

    async def _roll_back(self, probation: Probation, total: int, rate: float) -> None:
        async with self._lock:
            started = self._clock()
            bad = probation.service
            window = self.host.config.daemon.probation
            threshold = self.host.config.daemon.rollback_error_rate
            reason = (
                f"{bad.failed} of {total} calls failed ({rate:.0%}) within {window:g} s of the swap, "
                f"over the rollback_error_rate of {threshold:.0%}; reinstated {probation.previous_version}"
            )
            try:
                restored = await self._start(probation.previous_spec, probation.previous_compiled, previous=bad)
            except MicromonoError as exc:
                self._record(bad.name, "rejected", bad.version, bad.version, f"rollback failed: {exc}", started)
                return
            self._swap(restored, bad, probation=False)
            self._record(bad.name, "rolled_back", restored.version, bad.version, reason, started)

    # --- the supervisor's fallback -------------------------------------------------------------------------------

    def on_quarantine(self, service: Service) -> None:
        """A version was quarantined: if a last known good version of it exists, go back to that one.

        Called from inside a failed call; the fallback starts in a later loop iteration. The quarantine itself goes
        to `history` (not to `results` nor `counts`: it is not a reload).
        """
        version, reason = service.version, service.quarantine_reason
        self._remember(ReloadResult(service.name, "quarantined", version, version, reason, time.time(), 0.0))
        self._loop.call_soon(self._quarantined, service)

    def _quarantined(self, service: Service) -> None:
        good = self.last_good.get(service.name)
        if good is None or good.sha256 == service.sha256:
            return
        task = asyncio.get_running_loop().create_task(self._fall_back(service, good), name="micromono-fallback")
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    async def _fall_back(self, bad: Service, good: Service) -> None:
        async with self._lock:
            if self._current(bad.name) is not bad:
                return
            started = self._clock()
            try:
                restored = await self._start(good.spec, good.compiled, previous=bad)
            except MicromonoError as exc:
                self._record(bad.name, "rejected", bad.version, bad.version, f"fallback failed: {exc}", started)
                return
            self._probations.end(bad.name)
            self._swap(restored, bad, probation=False)
            reason = f"quarantined ({bad.quarantine_reason}); back to the last known good {good.version}"
            self._record(bad.name, "fallback", restored.version, bad.version, reason, started)

    # --- the manifest -------------------------------------------------------------------------------------------

    async def reload_manifest(self) -> list[ReloadResult]:
        """Apply an edited services.toml: stage every change, then apply all of it, or none if anything fails."""
        async with self._lock:
            started = self._clock()
            host = self.host
            old = host.config
            await wait_until_stable(old.path)
            self._manifest_sha = await self.host.off_loop(file_sha256, old.path)
            try:
                new = load_config(old.path)
            except MicromonoError as exc:
                return [self._record(MANIFEST, "rejected", None, None, str(exc), started)]
            # Phase 1 (awaits): compile what is new or changed. Phase 2 (no await, so no request runs in between):
            # start every new version, hand state over, and only then swap them all in.
            compiled_specs: list[tuple[ServiceSpec, CompiledModule]] = []
            staged: list[tuple[Service, Service | None]] = []
            try:
                for spec in new.services:
                    compiled = await self.host.compile(spec.name, spec.wasm)
                    current = self._current(spec.name)
                    if current is not None and current.spec == spec and compiled.sha256 == current.sha256:
                        continue  # untouched: not disturbed
                    compiled_specs.append((spec, compiled))
                for spec, compiled in compiled_specs:
                    current = self._current(spec.name)
                    if spec.keyed:
                        await self.host.open_actors(spec)
                    staged.append((await self._start(spec, compiled, previous=current), current))
            except MicromonoError as exc:
                for service, _ in staged:
                    service.close()
                return [self._record(MANIFEST, "rejected", None, None, f"nothing applied: {exc}", started)]
            results = self._apply_manifest(old, new, staged, started)
            results.append(self._record(MANIFEST, "swapped", None, None, "", started))
            return results

    def _current(self, name: str) -> Service | None:
        slot = self.host.router.slots.get(name)
        return slot.current if slot is not None else None

    def _apply_manifest(
        self, old: Config, new: Config, staged: list[tuple[Service, Service | None]], started: float
    ) -> list[ReloadResult]:
        host = self.host
        results = []
        # Config, limits and routes first: the swaps below read the new probation window, and nothing awaits in
        # between, so no request sees a half-applied manifest.
        new = host.apply_config(new)
        for service, current in staged:
            self._swap(service, current)
            outcome = "swapped" if current is not None else "added"
            previous = current.version if current is not None else None
            results.append(self._record(service.name, outcome, service.version, previous, "services.toml", started))
        for name in set(old.names) - set(new.names):
            removed = host.router.remove(name)
            self._probations.end(name)
            if removed is not None:
                self._spawn_drain(removed)
                results.append(self._record(name, "removed", None, removed.version, "services.toml", started))
        if {s.wasm for s in old.services} != {s.wasm for s in new.services}:
            self._rewatch = True
        return results
