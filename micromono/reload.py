"""Hot swap: replacing a service while the daemon runs, Erlang's hot code loading with Wasm modules as the unit.

Owns the watcher (watchfiles over the directories of the watched files, polling where inotify is unavailable) and
the reload procedure:

1. wait until the file has stopped changing (a copy or an in-place write in progress is never loaded);
2. compile it in a worker thread (the event loop keeps serving);
3. start an instance, which checks the guest ABI, and run the optional `mm_health` export;
4. hand the state over (`mm_snapshot` -> `mm_restore`) for a stateful single-instance service;
5. swap atomically (`router.Router.swap`): new calls go to the new version, work queued for the old one moves
   over, the old one's instances close as they finish (bounded by `drain_timeout`);
6. watch the new version for `probation` seconds and reinstate the previous one if more than
   `rollback_error_rate` of its calls fail.

Any failure before the swap leaves the old version serving; each outcome is a log event, a metric and the
service's `last_reload` in `/status`. Editing `services.toml` reloads the manifest: the difference is staged
completely (every added or changed service compiled and started) before any of it is applied, so an invalid
edit changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

import structlog
import watchfiles

from .config import Config, ServiceSpec, load_config, route_table
from .engine import CompiledModule, Engine
from .errors import MicromonoError
from .ingress import Routes
from .service import Service

if TYPE_CHECKING:
    from .daemon import Daemon

__all__ = ["Reloader", "ReloadResult", "FileWatcher", "Watcher", "MANIFEST"]

log = structlog.get_logger(__name__)

#: The `service` label of reloads of services.toml itself.
MANIFEST: Final = "services.toml"
#: A file must keep its size and mtime this long before it is loaded.
STABLE_SECONDS: Final = 0.02
#: How long to wait for a file that keeps changing before trying anyway.
STABLE_GIVE_UP_SECONDS: Final = 5.0
#: Fewest calls in probation before an error rate is trusted.
ROLLBACK_MIN_CALLS: Final = 5
_PROBATION_TICK: Final = 0.05
#: What `Service.running` holds while a version's state is being handed over: its queue waits (router.run_http).
_HANDING_OVER: Final = "handing over its state"


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What one reload did. `outcome`: swapped, added, removed, unchanged, rejected or rolled_back."""

    service: str
    outcome: str
    version: str | None  # the version serving afterwards
    previous: str | None  # the version serving before
    reason: str
    at: float  # time.time()
    duration_ms: float

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


class Watcher(Protocol):
    """A source of sets of changed paths (tests inject their own). An empty set means "watching, nothing new"."""

    def changes(self) -> AsyncIterator[set[Path]]: ...

    def stop(self) -> None: ...


class FileWatcher:
    """Watches a set of files through their directories (an atomic rename replaces the file, not the directory).

    Args:
        paths: the files to watch.
        debounce_ms: changes within this window are reported together.
        force_polling: None lets watchfiles choose (inotify); True polls. If inotify cannot start, it polls.
    """

    def __init__(self, paths: Iterable[Path], *, debounce_ms: int = 30, force_polling: bool | None = None) -> None:
        self.paths = {Path(os.path.realpath(p)) for p in paths}
        self.debounce_ms = debounce_ms
        self.force_polling = force_polling
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def changes(self) -> AsyncIterator[set[Path]]:
        watched = self.paths
        parents = {p.parent for p in watched if p.parent.is_dir()}
        directories = sorted(str(d) for d in parents)
        stats = {p: _stat(p) for p in watched}

        def interesting(change: watchfiles.Change, path: str) -> bool:
            # The polling backend reports a rename into a directory as a change of the directory itself.
            return Path(path) in watched or Path(path) in parents

        def changed_files(batch: set[tuple[watchfiles.Change, str]], polling: bool) -> set[Path]:
            files = {Path(path) for _, path in batch if Path(path) in watched}
            for _, path in batch:
                if Path(path) in parents:
                    files |= {p for p in watched if p.parent == Path(path) and _stat(p) != stats[p]}
            if polling and not batch:
                # Polling may take its baseline after a change: compare the files ourselves on every timeout.
                files |= {p for p in watched if _stat(p) != stats[p]}
            for p in files:
                stats[p] = _stat(p)
            return files

        polling = self.force_polling
        if polling is None and os.environ.get("WATCHFILES_FORCE_POLLING"):
            polling = True  # watchfiles honours this variable itself; we need to know it too
        while not self._stop.is_set():
            try:
                async for batch in watchfiles.awatch(
                    *directories,
                    watch_filter=interesting,
                    debounce=self.debounce_ms,
                    step=10,
                    recursive=False,
                    stop_event=self._stop,
                    force_polling=polling,
                    poll_delay_ms=100,
                    rust_timeout=50,
                    yield_on_timeout=True,  # an empty batch says the watch is live (see Reloader.run)
                ):
                    files = changed_files(batch, bool(polling))
                    if files or not batch:
                        yield files
                return
            except OSError as exc:
                if polling:
                    raise
                log.warning("reload.watch.polling", reason=str(exc))
                polling = True


class _Probation:
    __slots__ = ("service", "previous_spec", "previous_compiled", "previous_version", "until")

    def __init__(self, service: Service, previous: Service, until: float) -> None:
        self.service = service
        self.previous_spec = previous.spec
        self.previous_compiled = previous.compiled
        self.previous_version = previous.version
        self.until = until


class Reloader:
    """Applies file changes to a running daemon. One reload runs at a time.

    Args:
        daemon: the running daemon (its engine, router, ingress and config are updated in place).
        watcher: where changes come from; by default a `FileWatcher` on every service's file and the manifest.
    """

    def __init__(self, daemon: Daemon, watcher: Watcher | None = None) -> None:
        self.daemon = daemon
        self.results: dict[str, ReloadResult] = {}
        self.counts: dict[tuple[str, str], int] = {}
        self._lock = asyncio.Lock()
        self._probations: dict[str, _Probation] = {}
        self._custom_watcher = watcher
        self._watcher: Watcher | None = None
        self._rewatch = False
        self.ready = asyncio.Event()  # set once the first watch is live
        self._drains: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()
        self.last_good: dict[str, Service] = {}  # retired versions known to have served well, by name
        self._manifest_sha = _sha256(daemon.config.path)

    def __repr__(self) -> str:
        return f"<Reloader [reloads: {sum(self.counts.values())} | in probation: {len(self._probations)}]>"

    # --- watching -----------------------------------------------------------------------------------------------

    def watched_paths(self) -> set[Path]:
        config = self.daemon.config
        return {config.path, *(spec.wasm for spec in config.services)}

    async def run(self) -> None:
        """Watch until cancelled, reloading what changes; also runs the probation monitor."""
        monitor = asyncio.create_task(self._monitor_probations(), name="micromono-probation")
        try:
            while True:
                self._watcher = self._custom_watcher or FileWatcher(self.watched_paths())
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
        config = self.daemon.config
        if await self.daemon.off_loop(_sha256, config.path) != self._manifest_sha:
            await self.reload_manifest()
            return
        digests: dict[Path, str | None] = {}  # each file is read once, however many services it serves
        for spec in config.services:
            current = self._current(spec.name)
            if current is None:
                continue
            if spec.wasm not in digests:
                digests[spec.wasm] = await self.daemon.off_loop(_sha256, spec.wasm)
            if digests[spec.wasm] not in (current.sha256, None):
                await self.reload_service(spec.name)

    async def _apply(self, changed: set[Path]) -> None:
        config = self.daemon.config
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
            started = time.monotonic()
            daemon = self.daemon
            spec = daemon.config.service(name)
            current = daemon.router.slots[name].current
            previous_version = current.version if current is not None else None
            await _wait_until_stable(spec.wasm)
            try:
                compiled = await self.daemon.compile(name, spec.wasm)
                if current is not None and compiled.sha256 == current.sha256 and spec == current.spec:
                    return self._record(name, "unchanged", previous_version, previous_version, "same sha256", started)
                new = await self._start(spec, compiled, previous=current)
            except MicromonoError as exc:
                return self._record(name, "rejected", previous_version, previous_version, str(exc), started)
            self._swap(new, current)
            return self._record(name, "swapped", new.version, previous_version, "", started)

    def _engine(self) -> Engine:
        engine = self.daemon.engine
        assert engine is not None
        return engine

    async def _start(self, spec: ServiceSpec, compiled: CompiledModule, previous: Service | None) -> Service:
        """Make a started, healthy new version (with the previous one's state, when it is handed over).

        Every guest entry here (the start function, `_initialize`, `mm_health`, `mm_snapshot`, `mm_restore`) is
        preemptible like any other: one that outlasts its slice goes on in the scheduler's turns while the loop
        keeps serving the old version, and each is bounded by engine.START_TIMEOUT.
        """
        router = self.daemon.router
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
        scheduler = self.daemon.router.scheduler
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
            self.daemon.router.run_over(old)
            raise
        old.release(instance)
        old.running = None  # the swap that follows moves what queued meanwhile to the new version
        log.info("reload.state.moved", service=new.name, bytes=len(state), version=new.version)

    def _swap(self, new: Service, current: Service | None, *, probation: bool = True) -> None:
        daemon = self.daemon
        if current is not None and current.ok and not current.failure_times and current.quarantines == 0:
            self.last_good[new.name] = current  # served calls and was not failing: a fallback for the supervisor
        new.on_quarantine = self.on_quarantine
        daemon.router.swap(new)
        if current is not None and probation:
            window = daemon.config.daemon.probation
            self._probations[new.name] = _Probation(new, current, time.monotonic() + window)
        if current is not None:
            self._spawn_drain(current)

    def _spawn_drain(self, old: Service) -> None:
        # The loop keeps only weak references to tasks: hold each drain until it ends (and cancel it on close).
        task = asyncio.get_running_loop().create_task(self._drain(old), name=f"micromono-drain-{old.version}")
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    async def _drain(self, old: Service) -> None:
        """Wait for the old version's running calls (bounded by drain_timeout), then forget it."""
        timeout = self.daemon.config.daemon.drain_timeout
        deadline = time.monotonic() + timeout
        while old.live > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if old.live > 0:
            log.warning("reload.drain.expired", service=old.name, version=old.version, in_flight=old.in_flight)
        else:
            log.info("reload.drain.complete", service=old.name, version=old.version)
        with contextlib.suppress(ValueError):
            self.daemon.router.retired.remove(old)

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
            duration_ms=round((time.monotonic() - started) * 1000, 2),
        )
        self.results[name] = result
        key = (name, outcome)
        self.counts[key] = self.counts.get(key, 0) + 1
        event = "reload.swap.complete" if outcome in ("swapped", "added") else f"reload.{outcome}"
        method = log.warning if outcome in ("rejected", "rolled_back", "fallback") else log.info
        method(event, service=name, version=version, previous=previous, reason=reason or None,
               duration_ms=result.duration_ms)  # fmt: skip
        return result

    # --- rollback -------------------------------------------------------------------------------------------

    async def _monitor_probations(self) -> None:
        while True:
            await asyncio.sleep(_PROBATION_TICK)
            if self._probations:
                await self.check_probations()

    async def check_probations(self) -> None:
        """End finished probations; roll back versions whose failure rate is over the threshold."""
        now = time.monotonic()
        threshold = self.daemon.config.daemon.rollback_error_rate
        for name, probation in list(self._probations.items()):
            service = probation.service
            if self.daemon.router.slots[name].current is not service:
                del self._probations[name]
                continue
            total = service.ok + service.failed
            rate = service.failed / total if total else 0.0
            if total >= ROLLBACK_MIN_CALLS and rate > threshold and threshold < 1.0:
                del self._probations[name]
                await self._roll_back(probation, total, rate)
            elif now > probation.until:
                del self._probations[name]
                log.info("reload.probation.passed", service=name, version=service.version, calls=total)

    async def _roll_back(self, probation: _Probation, total: int, rate: float) -> None:
        async with self._lock:
            started = time.monotonic()
            bad = probation.service
            window = self.daemon.config.daemon.probation
            threshold = self.daemon.config.daemon.rollback_error_rate
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

        Called from inside a failed call; the fallback starts in a later loop iteration.
        """
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
            started = time.monotonic()
            try:
                restored = await self._start(good.spec, good.compiled, previous=bad)
            except MicromonoError as exc:
                self._record(bad.name, "rejected", bad.version, bad.version, f"fallback failed: {exc}", started)
                return
            self._probations.pop(bad.name, None)
            self._swap(restored, bad, probation=False)
            reason = f"quarantined ({bad.quarantine_reason}); back to the last known good {good.version}"
            self._record(bad.name, "fallback", restored.version, bad.version, reason, started)

    # --- the manifest -------------------------------------------------------------------------------------------

    async def reload_manifest(self) -> list[ReloadResult]:
        """Apply an edited services.toml: stage every change, then apply all of it, or none if anything fails."""
        async with self._lock:
            started = time.monotonic()
            daemon = self.daemon
            old = daemon.config
            await _wait_until_stable(old.path)
            self._manifest_sha = await self.daemon.off_loop(_sha256, old.path)
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
                    compiled = await self.daemon.compile(spec.name, spec.wasm)
                    current = self._current(spec.name)
                    if current is not None and current.spec == spec and compiled.sha256 == current.sha256:
                        continue  # untouched: not disturbed
                    compiled_specs.append((spec, compiled))
                for spec, compiled in compiled_specs:
                    current = self._current(spec.name)
                    staged.append((await self._start(spec, compiled, previous=current), current))
            except MicromonoError as exc:
                for service, _ in staged:
                    service.close()
                return [self._record(MANIFEST, "rejected", None, None, f"nothing applied: {exc}", started)]
            results = self._apply_manifest(old, new, staged, started)
            results.append(self._record(MANIFEST, "swapped", None, None, "", started))
            return results

    def _current(self, name: str) -> Service | None:
        slot = self.daemon.router.slots.get(name)
        return slot.current if slot is not None else None

    def _apply_manifest(
        self, old: Config, new: Config, staged: list[tuple[Service, Service | None]], started: float
    ) -> list[ReloadResult]:
        daemon = self.daemon
        results = []
        restart_only = [
            key
            for key in ("listen", "metrics_listen", "cache_dir", "log_format", "log_level", "cpu")
            if getattr(old.daemon, key) != getattr(new.daemon, key)
        ]
        if restart_only:
            log.warning("reload.manifest.restart_needed", keys=restart_only, reason="these apply at the next start")
            kept = {key: getattr(old.daemon, key) for key in restart_only}
            new = dataclasses.replace(new, daemon=dataclasses.replace(new.daemon, **kept))
        daemon.config = new
        daemon.router.set_limits(
            max_call_depth=new.daemon.max_call_depth, max_request_bytes=new.daemon.max_request_bytes
        )
        for service, current in staged:
            self._swap(service, current)
            outcome = "swapped" if current is not None else "added"
            previous = current.version if current is not None else None
            results.append(self._record(service.name, outcome, service.version, previous, "services.toml", started))
        for name in set(old.names) - set(new.names):
            removed = daemon.router.remove(name)
            self._probations.pop(name, None)
            if removed is not None:
                self._spawn_drain(removed)
                results.append(self._record(name, "removed", None, removed.version, "services.toml", started))
        if daemon.ingress is not None:
            routes = Routes([(route, daemon.router.slot(n)) for route, n in route_table(new)])
            daemon.ingress.set_routes(routes, max_request_bytes=new.daemon.max_request_bytes)
        if {s.wasm for s in old.services} != {s.wasm for s in new.services}:
            self._rewatch = True
        return results

    # --- introspection ------------------------------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        return {
            "watching": self._watcher is not None,
            "in_probation": sorted(self._probations),
            "last": {name: result.as_dict() for name, result in self.results.items()},
        }


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns)


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


async def _wait_until_stable(path: Path) -> None:
    """Return once `path` has kept its size and mtime for STABLE_SECONDS (or STABLE_GIVE_UP_SECONDS passed)."""
    deadline = time.monotonic() + STABLE_GIVE_UP_SECONDS
    previous: tuple[int, int] | None = None
    while time.monotonic() < deadline:
        try:
            info = path.stat()
            current = (info.st_size, info.st_mtime_ns)
        except OSError:
            current = None  # mid-rename, or deleted: wait for it to come back
        if current is not None and current == previous:
            return
        previous = current
        await asyncio.sleep(STABLE_SECONDS)
