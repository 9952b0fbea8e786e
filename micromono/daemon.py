"""The daemon's lifecycle: startup -> serve -> ordered shutdown (STYLE rule 14).

`Daemon.load()` places the loop thread, compiles every module (in worker threads, concurrently) and starts one
instance of each service; `startup()` does that, then wires the ingress route table and binds the ingress and admin
listeners, and starts the reloader; `serve()` runs until its shutdown trigger fires; `shutdown()` undoes it in
reverse order within `graceful_timeout`. `apply_config()` is how an edited manifest takes effect while it runs (the
reloader stages the new services, then asks for it; SIGHUP asks the reloader through `request_reload()`). `run()`
(used by the CLI) is the one place that installs signal handlers and turns the cyclic GC off for the startup.

This module owns the order of those steps and nothing they do: OS-limit budgeting is `oslimits.py`, the status
document `status.py`, placement `placement.py`, reloads `reload.py`. It must not exit the process, install signal
handlers outside `run()`, or configure logging.

A little over the house's ~500-line guide: `run()` stays beside the lifecycle it drives, since the signal handlers
and the GC switch act on exactly the steps above.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import gc
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import structlog

from ._accelerate import compiled_path
from .actors.keyed import KeyedService
from .actors.storage import ServiceStorage, StorageError
from .admin import AdminPages, AdminProtocol
from .config import Config, ServiceSpec, route_table
from .console import TICK, Console, StaticFiles
from .engine import WASMTIME_VERSION, CompiledModule, Engine, speedups_in_use
from .errors import MicromonoError, ServiceLoadError
from .ingress import Ingress, Routes
from .metrics import new_registry, render
from .oslimits import StartupBudget, raise_open_files_limit
from .placement import Placement, place, place_compile_thread, place_ticker_thread
from .reload import Reloader, ReloadResult, WatcherFactory
from .router import Router
from .sdnotify import notify
from .service import Service
from .status import format_address, status_document
from .tracing import TracingHost, TracingUnavailable, start_tracer

__all__ = ["RESTART_ONLY_KEYS", "Daemon", "StartupError", "compile_all", "run"]

#: `[daemon]` keys an edited manifest cannot change while the daemon runs: they apply at the next start.
RESTART_ONLY_KEYS: Final = (
    "listen",
    "metrics_listen",
    "cache_dir",
    "data_dir",
    "log_format",
    "log_level",
    "log_output",
    "cpu",
    "tracing",
    "otlp_endpoint",
    "trace_sample",
)
#: How long startup waits for the file watch to be live before it serves anyway.
WATCH_START_TIMEOUT: Final = 5.0

T = TypeVar("T")
log = structlog.get_logger(__name__)


class StartupError(MicromonoError):
    """The daemon could not start: every service that failed to load, an OS limit or `daemon.cpu` it cannot meet,
    or a listener that could not bind. `problems` holds one line each, saying what to do."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        n = len(problems)
        super().__init__(f"cannot start: {n} problem{'s' if n != 1 else ''}\n" + "\n".join(f"  {p}" for p in problems))


async def compile_all(
    engine: Engine, config: Config, executor: concurrent.futures.Executor | None = None
) -> dict[str, CompiledModule]:
    """Compile every service's module concurrently, off the event loop (in `executor`, default: the loop's).

    Raises:
        StartupError: listing every module that failed, not just the first.
    """
    loop = asyncio.get_running_loop()

    async def one(name: str, path: Path) -> CompiledModule:
        return await loop.run_in_executor(executor, engine.compile, name, path)

    results = await asyncio.gather(*(one(s.name, s.wasm) for s in config.services), return_exceptions=True)
    compiled: dict[str, CompiledModule] = {}
    problems: list[str] = []
    for spec, result in zip(config.services, results, strict=True):
        if isinstance(result, ServiceLoadError):
            problems.append(str(result))
        elif isinstance(result, BaseException):
            raise result
        else:
            compiled[spec.name] = result
    if problems:
        raise StartupError(problems)
    return compiled


class Daemon:
    """One micromono daemon: the services of one manifest, their listeners and their metrics.

    Args:
        config: the validated manifest.
        watcher_factory: where the reloader learns of file changes (`daemon.watch = true`); by default a
            `watch.FileWatcher`. Tests pass a fake to emit changes on demand.
        console_tick: seconds between two samples of the live page's event stream (console/events.py; tests
            shorten it).

    After `startup()`: `addresses` holds the bound ingress `(host, port)`, `metrics_address` the admin listener's
    (or None), and `started` is set.
    """

    def __init__(
        self, config: Config, *, watcher_factory: WatcherFactory | None = None, console_tick: float = TICK
    ) -> None:
        self.config = config
        self._watcher_factory = watcher_factory
        self.router = Router(
            max_call_depth=config.daemon.max_call_depth,
            max_request_bytes=config.daemon.max_request_bytes,
        )
        self.engine: Engine | None = None
        #: Where the daemon runs (placement.py), set by startup(); compiles run in `_compiler`, off its CPU.
        self.placement: Placement | None = None
        self._compiler: concurrent.futures.ThreadPoolExecutor | None = None
        self._switch_interval: float | None = None  # the interpreter's, before startup shortened it
        self.ingress: Ingress | None = None
        self.registry: Any = None
        self.started = asyncio.Event()
        self.stopping = False
        self.addresses: list[tuple[str, int]] = []
        self.metrics_address: tuple[str, int] | None = None
        self.console: Console | None = None  # the live page's event stream, with the admin listener
        self._console_tick = console_tick
        self._servers: list[asyncio.Server] = []
        self._closing: set[asyncio.Future[None]] = set()  # storages of removed actor services, closing
        self._force = asyncio.Event()
        self.reloader: Reloader | None = None
        self._reload_task: asyncio.Task[None] | None = None
        self._reloads: set[asyncio.Task[list[ReloadResult]]] = set()  # manifest reloads asked for (SIGHUP)
        # Seconds spent in each startup phase: compile (all modules), load (instantiate, install and log every
        # service), instantiate (the part of load inside Service.start), routes, bind, watch (until the file
        # watch is live). Logged with daemon.ready as startup_ms.
        self.startup_timings: dict[str, float] = {}

    def __repr__(self) -> str:
        state = "stopping" if self.stopping else ("serving" if self.started.is_set() else "new")
        return f"<Daemon {self.config.path.name} [{state} | services: {len(self.config.services)}]>"

    # --- lifecycle ----------------------------------------------------------------------------------------------

    async def startup(self) -> None:
        """Load every service (`load()`), then route, bind and watch. On failure everything already started is
        closed again.

        Raises:
            StartupError: a module failed to load, a limit is too low, or a listener could not bind.
        """
        await self.load()
        daemon = self.config.daemon
        clock = time.perf_counter
        timings = self.startup_timings
        try:
            started = clock()
            self.ingress = Ingress(
                self.router,
                self._routes(self.config),
                max_request_bytes=daemon.max_request_bytes,
                ws_max_connections=daemon.ws_max_connections,
            )
            tracer = self.router.top_level.tracer
            self.registry = new_registry(
                self.router,
                self.ingress.http_stats,
                self._reload_counts,
                self._cache_stats,
                tracer.counts if tracer is not None else None,
            )
            timings["routes"] = clock() - started
            started = clock()
            await self._bind()
            self.ingress.start_clock()
            self.ingress.websockets.start()
            for keyed in self.router.keyed.values():
                keyed.start()
            timings["bind"] = clock() - started
            started = clock()
            if daemon.watch:
                await self._start_watching()
            timings["watch"] = clock() - started
        except BaseException:
            await self._close_services()
            self._release_placement()
            raise
        log.info(
            "daemon.ready",
            ingress=[format_address(a) for a in self.addresses],
            metrics=format_address(self.metrics_address) if self.metrics_address else None,
            services=len(self.config.services),
            startup_ms={phase: round(seconds * 1000, 3) for phase, seconds in timings.items()},
            wasmtime=WASMTIME_VERSION,
            speedups=speedups_in_use(),
            compiled_modules=compiled_path is not None,
            loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
            cpu=self.placement.cpu if self.placement is not None else None,
        )
        self.started.set()

    async def load(self) -> None:
        """Place the loop thread, start the engine, compile every module and start one instance of each service:
        all of `startup()` that comes before the listeners. `micromono check` runs exactly this (then
        `shutdown()`), so a manifest it passes is one the daemon loads. On failure everything it started is
        closed again.

        Raises:
            StartupError: `daemon.cpu` names a CPU the process may not use, a module failed to compile or start
                (every one is listed), or an OS limit is too low for all the services.
        """
        daemon = self.config.daemon
        # Before the engine starts its epoch ticker, which placement.py puts off the loop's CPU.
        try:
            self.placement = place(daemon.cpu)
        except ValueError as exc:
            raise StartupError([str(exc)]) from None
        # The ticker takes the GIL for each tick: while a guest runs Python host imports (sends, logs) the loop
        # thread holds the GIL, and CPython hands it over only at the switch interval, which would stretch a slice
        # to that. No longer than a slice, then (restored at shutdown).
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch_interval, daemon.slice))
        self._compiler = concurrent.futures.ThreadPoolExecutor(
            max_workers=min(32, (os.cpu_count() or 1) + 4),
            thread_name_prefix="micromono-compile",
            initializer=place_compile_thread,
        )
        # With tracing on, the engine's host is the router wrapped in spans; off, the router itself, so the call
        # path does not even test a flag (docs/tracing.md, *Zero cost when off*).
        try:
            tracer = start_tracer(
                daemon.tracing, daemon.otlp_endpoint, sample=daemon.trace_sample, thread_setup=place_compile_thread
            )
        except TracingUnavailable as exc:
            self._release_placement()
            raise StartupError([str(exc)]) from None
        self.router.top_level.tracer = tracer
        self.engine = Engine(
            TracingHost(self.router, tracer) if tracer is not None else self.router,
            cache_dir=daemon.cache_dir,
            cache_max_bytes=daemon.cache_max_bytes,
            epoch_tick=daemon.slice,
            ticker_setup=place_ticker_thread,
            reaper_setup=place_compile_thread,  # freeing memory is kernel work: off the loop's CPU too
        )
        self.router.scheduler.on_contention = self.engine.pace  # short slices while work arrives beside long runs
        try:
            await self._load_services()
        except BaseException:
            await self._close_services()
            self._release_placement()
            raise

    async def _load_services(self) -> None:
        assert self.engine is not None
        clock = time.perf_counter
        budget = StartupBudget(len(self.config.services))
        started = clock()
        compiled = await compile_all(self.engine, self.config, self._compiler)
        self.startup_timings["compile"] = clock() - started
        if problems := budget.compiled():
            raise StartupError(problems)
        started = clock()
        for spec in self.config.services:
            self.router.slot(spec.name)  # slots in manifest order: status and metrics list services that way
        problems = []
        instantiating = 0.0
        for count, spec in enumerate(self.config.services, 1):
            if spec.keyed:
                try:
                    await self.open_actors(spec)
                except StorageError as exc:  # the others start; this one answers 503 naming the file
                    self.router.slot(spec.name).down_reason = str(exc)
                    continue
            service = Service(spec, compiled[spec.name])
            self.router.install(service)
            began = clock()
            try:
                await service.start(self.router.scheduler)
            except ServiceLoadError as exc:
                problems.append(str(exc))
                continue
            finally:
                instantiating += clock() - began
            if over := budget.started(count):
                raise StartupError(over)
            log.info(
                "service.load.complete",
                service=spec.name,
                version=service.version,
                wasm=str(spec.wasm),
                routes=[str(route) for route in spec.routes],
                calls=sorted(spec.calls),
            )
        self.startup_timings["load"] = clock() - started
        self.startup_timings["instantiate"] = instantiating
        if problems:
            raise StartupError(problems)
        budget.report()

    async def open_actors(self, spec: ServiceSpec) -> None:
        """Open an actor service's database (off the loop: it is checked) and make its `KeyedService`; nothing
        when it is open already (a manifest edit that changes an actor service keeps its storage open).

        Raises:
            StorageError: the database cannot be opened (logged, with the file named).
        """
        if spec.name in self.router.keyed:
            return
        loop = asyncio.get_running_loop()
        storage = ServiceStorage(
            self.config.daemon.data_dir,
            spec.name,
            sync="normal" if spec.sync == "normal" else "full",
            call_soon_threadsafe=loop.call_soon_threadsafe,
        )
        path = storage.path
        try:
            directory = await self.off_loop(storage.open)
        except StorageError as exc:
            log.error("actors.storage.refused", service=spec.name, path=str(path), error=str(exc))
            raise
        slot = self.router.slot(spec.name)
        keyed = self.router.keyed[spec.name] = KeyedService(
            slot, spec, storage, directory, self.router.scheduler, tracer=self.router.top_level.tracer
        )
        if self.started.is_set():
            keyed.start()  # a manifest edit added it: its timers start now (at startup, once the daemon serves)
        log.info("actors.storage.opened", service=spec.name, path=str(path), actors=len(directory), sync=spec.sync)

    def _routes(self, config: Config) -> Routes:
        return Routes([(route, self.router.slot(name)) for route, name in route_table(config)], self.router.keyed)

    async def _start_watching(self) -> None:
        """Start the reloader and wait until its watch is live (bounded): a file replaced right after startup
        must not be missed, so the daemon serves only once changes are seen."""
        self.reloader = Reloader(self) if self._watcher_factory is None else Reloader(self, self._watcher_factory)
        for service in self.router.services():
            service.on_quarantine = self.reloader.on_quarantine
        self._reload_task = asyncio.get_running_loop().create_task(self.reloader.run(), name="micromono-reload")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.reloader.ready.wait(), timeout=WATCH_START_TIMEOUT)

    def request_reload(self) -> asyncio.Task[list[ReloadResult]] | None:
        """Re-read the manifest and apply it as the file watch does (`Reloader.reload_manifest`: staged whole,
        then applied, or rejected whole), also when `daemon.watch` is off; that is what SIGHUP does. Changed
        modules are reloaded with it. The outcome is logged (`daemon.reload.complete`) and shown in `/status`.

        Returns:
            The reload's task, or None when the daemon is not serving (starting or stopping): nothing is done.
        """
        if not self.started.is_set() or self.stopping:
            log.warning("daemon.reload.ignored", reason="stopping" if self.stopping else "starting")
            return None
        if self.reloader is None:  # daemon.watch is off: a reloader that watches nothing, for probations
            self.reloader = Reloader(self, _Unwatched)
            for service in self.router.services():
                service.on_quarantine = self.reloader.on_quarantine
            self._reload_task = asyncio.get_running_loop().create_task(self.reloader.run(), name="micromono-reload")
        task = asyncio.get_running_loop().create_task(self._reload(self.reloader), name="micromono-sighup")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)
        return task

    async def _reload(self, reloader: Reloader) -> list[ReloadResult]:
        log.info("daemon.reload.started", manifest=str(self.config.path))
        notify("RELOADING=1", "STATUS=reloading the manifest")
        try:
            results = await reloader.reload_manifest()
        finally:
            if not self.stopping:
                notify("READY=1", "STATUS=serving")
        manifest = results[-1]
        method = log.warning if manifest.outcome == "rejected" else log.info
        method(
            "daemon.reload.complete",
            outcome=manifest.outcome,
            reason=manifest.reason,
            changed={r.service: r.outcome for r in results[:-1]},
        )
        return results

    def apply_config(self, new: Config) -> Config:
        """Make an edited manifest the one in force, for everything that can change while the daemon runs: the
        router's limits, the ingress route table and body limit, and the settings read at each use (timeouts,
        probation). The reloader calls this once it has staged the new services, before it swaps them in.

        Keys that only apply at start (`RESTART_ONLY_KEYS`: listeners, cache, logging, CPU) keep their running
        values, and a `reload.manifest.restart_needed` warning names those that changed.

        Args:
            new: the validated new manifest.

        Returns:
            The config now in force (`new` with the restart-only keys as they were).
        """
        old = self.config.daemon
        restart_only = [key for key in RESTART_ONLY_KEYS if getattr(old, key) != getattr(new.daemon, key)]
        if restart_only:
            log.warning("reload.manifest.restart_needed", keys=restart_only, reason="these apply at the next start")
            kept = {key: getattr(old, key) for key in restart_only}
            new = dataclasses.replace(new, daemon=dataclasses.replace(new.daemon, **kept))
        self.config = new
        self.router.set_limits(max_call_depth=new.daemon.max_call_depth, max_request_bytes=new.daemon.max_request_bytes)
        for name, keyed in list(self.router.keyed.items()):
            if name in new.names and new.service(name).keyed:
                keyed.spec = new.service(name)  # max_live, idle_timeout, storage_limit, mailbox: from now on
            else:  # removed (or no longer an actor): its actors stop, what they committed stays on disk
                del self.router.keyed[name]
                keyed.close()
                self._closing.add(asyncio.get_running_loop().run_in_executor(None, keyed.storage.close))
        if self.ingress is not None:
            self.ingress.set_routes(self._routes(new), max_request_bytes=new.daemon.max_request_bytes)
        return new

    async def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        daemon = self.config.daemon
        problems: list[str] = []
        ingress = self.ingress
        assert ingress is not None
        try:
            server = await loop.create_server(
                ingress.protocol_factory, daemon.listen.host, daemon.listen.port, backlog=1024, reuse_address=True
            )
            self._servers.append(server)
            self.addresses = [_sockname(s) for s in server.sockets]
        except OSError as exc:
            problems.append(f"daemon.listen: cannot bind {daemon.listen}: {exc.strerror}; pick a free port")
        if daemon.metrics_listen is not None:
            # /metrics: a snapshot of the counters on the loop, rendered in a worker thread (admin.py); /actors/...:
            # the actor services' own table, so those opened later are served too
            # /, /console/...: the live page, its files read now and its event stream sampling only while watched
            self.console = Console(self.router, self._reload_history, lambda: self.stopping, tick=self._console_tick)
            try:
                files: StaticFiles | None = StaticFiles()
            except OSError as exc:  # an installation without the package data: serve, without the page
                log.error("console.files.missing", error=str(exc), fix="reinstall micromono: its package lacks them")
                files = None
            pages = AdminPages(
                self.registry.snapshot,
                render,
                self.status,
                lambda: not self.stopping,
                actors=self.router.keyed,
                console=self.console,
                files=files,
            )
            admin = functools.partial(AdminProtocol, pages)
            try:
                server = await loop.create_server(
                    admin, daemon.metrics_listen.host, daemon.metrics_listen.port, reuse_address=True
                )
                self._servers.append(server)
                self.metrics_address = _sockname(server.sockets[0])
            except OSError as exc:
                problems.append(
                    f"daemon.metrics_listen: cannot bind {daemon.metrics_listen}: {exc.strerror}; "
                    'pick a free port or set metrics_listen = "" to disable it'
                )
        if problems:
            for srv in self._servers:
                srv.close()
            raise StartupError(problems)

    async def serve(self, *, shutdown_trigger: Callable[[], Awaitable[object]] | None = None) -> None:
        """Start, wait for `shutdown_trigger` (default: never), then shut down gracefully."""
        await self.startup()
        try:
            if shutdown_trigger is None:
                await asyncio.Event().wait()
            else:
                await shutdown_trigger()
        finally:
            await self.shutdown()

    def force_exit(self) -> None:
        """Skip the rest of the grace period: abort open connections now (the second Ctrl-C)."""
        self._force.set()

    async def shutdown(self) -> None:
        """Stop in reverse order of startup, bounded by `graceful_timeout`. Idempotent."""
        if self.stopping:
            return
        self.stopping = True
        grace = self.config.daemon.graceful_timeout
        log.info("daemon.shutdown.started", graceful_timeout=grace)
        # 0. Stop reloading: no version changes during shutdown.
        for task in list(self._reloads):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._reload_task is not None:
            self._reload_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reload_task
        # 1. Stop accepting connections; end the live page's event streams.
        for server in self._servers:
            server.close()
        if self.console is not None:
            self.console.close()
        # 2. Close idle keep-alive connections; busy ones close after their response.
        if self.ingress is not None:
            self.ingress.shutdown()
        # 3. Wait for queued work and open responses, up to the grace period or a forced exit.
        drained = await self._wait_drained(grace)
        if self.ingress is not None and self.ingress.connections:
            log.warning("daemon.shutdown.aborting", connections=len(self.ingress.connections))
            self.ingress.abort_all()
        if self.ingress is not None:
            self.ingress.stop_clock()
        await self.router.stop_workers()
        # 4. Close the services' instances, then the engine; give the loop thread its CPUs back.
        await self._close_services()
        self._release_placement()
        log.info("daemon.shutdown.complete", drained=drained)

    async def off_loop(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(*args)` in a compile thread, off the event loop and its CPU (file reads and hashes)."""
        return await asyncio.get_running_loop().run_in_executor(self._compiler, fn, *args)

    async def compile(self, name: str, path: Path) -> CompiledModule:
        """Compile a service's module off the event loop and its CPU (hot swaps and manifest edits use this).

        Raises:
            ServiceLoadError: the module does not compile or lacks the ABI.
        """
        assert self.engine is not None
        return await asyncio.get_running_loop().run_in_executor(self._compiler, self.engine.compile, name, path)

    def _release_placement(self) -> None:
        if self._switch_interval is not None:
            sys.setswitchinterval(self._switch_interval)
            self._switch_interval = None
        if self._compiler is not None:
            self._compiler.shutdown(wait=False)
            self._compiler = None
        if self.placement is not None:
            self.placement.restore()

    async def _wait_drained(self, grace: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while loop.time() < deadline and not self._force.is_set():
            # Idle connections were closed in step 2 and leave the set as their transports finish closing.
            busy = self.router.busy or (self.ingress is not None and self.ingress.connections)
            if not busy:
                return True
            await asyncio.sleep(0.01)
        return False

    async def _close_services(self) -> None:
        for closing in list(self._closing):
            await closing
        for keyed in self.router.keyed.values():
            keyed.close()
        for keyed in self.router.keyed.values():  # what is still queued for the disk is committed first
            await asyncio.get_running_loop().run_in_executor(None, keyed.storage.close)
        self.router.keyed.clear()
        for service in [*self.router.services(), *self.router.retired]:
            service.close()
        for server in self._servers:
            server.close()
        self._servers.clear()
        if self.engine is not None:
            self.engine.close()
        tracer = self.router.top_level.tracer
        if tracer is not None:  # the spans still queued for export are sent (otlp), off the loop
            await asyncio.get_running_loop().run_in_executor(None, tracer.close)

    # --- introspection ------------------------------------------------------------------------------------------

    def _reload_counts(self) -> dict[tuple[str, str], int]:
        return dict(self.reloader.counts) if self.reloader is not None else {}

    def _reload_history(self) -> tuple[int, Sequence[ReloadResult]]:
        reloader = self.reloader
        return (reloader.recorded, reloader.history) if reloader is not None else (0, ())

    def _cache_stats(self) -> tuple[int, int] | None:
        engine = self.engine
        if engine is None or engine.cache_dir is None:
            return None
        return engine.cache_bytes, engine.cache_evictions

    def status(self) -> dict[str, Any]:
        """The `/status` document (status.py), read now: on the event loop only."""
        reloader = self.reloader
        return status_document(
            self.router,
            stopping=self.stopping,
            addresses=self.addresses,
            cpu=self.placement.cpu if self.placement is not None else None,
            watching=reloader is not None and self.config.daemon.watch,
            reloads=reloader.results if reloader is not None else {},
        )


class _Unwatched:
    """The watcher of a daemon that does not watch files (`daemon.watch = false`): it reports nothing, ever, so
    its reloader only applies what is asked for (SIGHUP) and watches the probations."""

    def __init__(self, paths: object) -> None:
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def changes(self) -> AsyncIterator[set[Path]]:
        await self._stop.wait()
        return
        yield set()  # an async generator that yields nothing


def _sockname(sock: Any) -> tuple[str, int]:
    name = sock.getsockname()
    return str(name[0]), int(name[1])


#: The cyclic collector's thresholds while serving (`gc.set_threshold`): a young collection after 50,000 new
#: container objects (the default is 700), a middle one every 20 young ones, and a full one (all live objects) only
#: after 100 middle ones, and then only if the long-lived objects grew by a quarter (CPython's own rule).
SERVING_GC_THRESHOLDS: Final = (50_000, 20, 100)


def _freeze_startup_objects() -> None:
    """Move everything allocated at startup (modules, compiled code wrappers, the manifest) out of the cyclic
    GC's way, so its collections only walk objects made while serving; then turn the collector back on.

    `run()` turns the collector off for the startup: its full collections walk every object made so far and find
    almost nothing to free, and with many services they take a large share of the startup
    (benches/bench_density.py). Nor is there a collection before the freeze: it finds only a handful of
    unreachable objects, the same few however many services there are, yet with many services it would hold the
    event loop just as the daemon begins to serve. Those few objects stay, frozen.

    While serving, the collector runs far less often than Python's default (`SERVING_GC_THRESHOLDS`). Almost
    everything the hot path allocates is freed by reference counting the moment it is done with; what lives on
    (connections, actors, their streams) lives long. The default thresholds made a full collection, which walks
    every one of those long-lived objects and holds the event loop meanwhile, run about once a second under load,
    and those pauses were the tail of the latency (benches/RESULTS.md, bench_ws).
    """
    gc.freeze()
    gc.set_threshold(*SERVING_GC_THRESHOLDS)
    gc.enable()


def run(config: Config, *, loop: str = "auto") -> int:
    """Serve `config` until SIGINT/SIGTERM, then shut down gracefully. Returns the process exit code.

    The first signal starts a graceful shutdown; a second one aborts what is left of it. SIGHUP reloads the manifest
    (`Daemon.request_reload`). Under systemd (`Type=notify`, `$NOTIFY_SOCKET`) it reports READY=1 once it serves,
    RELOADING=1 during a SIGHUP reload and STOPPING=1 at the first stop signal (sdnotify.py).

    Args:
        loop: "uvloop", "asyncio", or "auto" (uvloop when installed).
    """
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                raise
        else:
            factory = uvloop.new_event_loop

    raise_open_files_limit(len(config.services))

    async def main() -> None:
        daemon = Daemon(config)
        stop = asyncio.Event()
        running = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            if stop.is_set():
                log.warning("daemon.signal.forced", signal=signal.Signals(signum).name)
                daemon.force_exit()
            else:
                log.info("daemon.signal.received", signal=signal.Signals(signum).name)
                notify("STOPPING=1", "STATUS=shutting down")
                stop.set()

        def on_hangup() -> None:
            log.info("daemon.signal.received", signal="SIGHUP")
            daemon.request_reload()

        for signum in (signal.SIGINT, signal.SIGTERM):
            running.add_signal_handler(signum, on_signal, signum)
        running.add_signal_handler(signal.SIGHUP, on_hangup)  # from the start: a SIGHUP must never kill it

        async def until_stopped() -> None:
            _freeze_startup_objects()
            notify("READY=1", "STATUS=serving", f"MAINPID={os.getpid()}")
            await stop.wait()

        gc.disable()  # for the startup only: until_stopped() freezes what it made and turns it back on
        try:
            await daemon.serve(shutdown_trigger=until_stopped)
        finally:
            gc.enable()
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                running.remove_signal_handler(signum)

    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())
    return 0
