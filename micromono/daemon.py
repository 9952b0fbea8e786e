"""The daemon's lifecycle: startup -> serve -> ordered shutdown (STYLE rule 14).

`Daemon.startup()` compiles every module (in worker threads, concurrently), starts one instance of each service,
wires the router and binds the ingress and admin listeners; `serve()` runs until its shutdown trigger fires;
`shutdown()` undoes it in reverse order within `graceful_timeout`. Library code never installs signal handlers or
exits the process: `run()` (used by the CLI) does that.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import gc
import os
import resource
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import structlog

from ._accelerate import compiled_path
from .admin import AdminPages, AdminProtocol
from .config import Address, Config, route_table
from .engine import WASMTIME_VERSION, CompiledModule, Engine, speedups_in_use
from .errors import MicromonoError, ServiceLoadError
from .ingress import Ingress, Routes
from .metrics import new_registry, render
from .placement import Placement, place, place_compile_thread, place_ticker_thread
from .reload import MANIFEST, Reloader
from .router import Router
from .service import Service

__all__ = ["Daemon", "StartupError", "compile_all", "raise_open_files_limit", "run"]

T = TypeVar("T")
log = structlog.get_logger(__name__)

#: Memory mappings kept free past startup, for instances added to pools under load, hot swaps and malloc:
#: this share of vm.max_map_count, and at least _MAPS_RESERVE_MIN.
_MAPS_RESERVE_SHARE: Final = 0.1
_MAPS_RESERVE_MIN: Final = 1024
#: File descriptors kept free past startup, for connections: this many, or a quarter of a smaller limit.
_FDS_RESERVE: Final = 256
#: The services' mappings and descriptors are counted after this many have started, then at every doubling.
_BUDGET_FIRST_CHECK: Final = 64
#: `run()` makes sure RLIMIT_NOFILE allows this many descriptors beyond one per service (connections, logs).
_FDS_FOR_CONNECTIONS: Final = 4096
_SYSCTL_MAX_MAP_COUNT: Final = Path("/proc/sys/vm/max_map_count")


class StartupError(MicromonoError):
    """The daemon could not start: every service that failed to load, or a listener that could not bind."""

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


def _max_map_count() -> int | None:
    """vm.max_map_count, or None where it cannot be read (not Linux)."""
    try:
        return int(_SYSCTL_MAX_MAP_COUNT.read_text())
    except (OSError, ValueError):
        return None


def _count_maps() -> int | None:
    """This process's memory mappings (lines of /proc/self/maps), or None where they cannot be read."""
    try:
        with open("/proc/self/maps", "rb") as maps:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: maps.read(1 << 20), b""))
    except OSError:
        return None


def _count_fds() -> int | None:
    """This process's open file descriptors, or None where they cannot be listed."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


class _Budget:
    """Projects the memory mappings and file descriptors all services will hold, from what those started so far
    took, and stops the startup with a clear message before either runs out (docs/operations.md).

    Each wasmtime module maps its code, and each instance its linear memory with guard regions and a copy-on-write
    image of its data (a memfd, so a descriptor). Past `vm.max_map_count`, allocations inside wasmtime fail and
    the process aborts or hangs; past RLIMIT_NOFILE, instances fail with "cannot create a memfd" and connections
    cannot be accepted. Counting costs one read of /proc/self/maps per check, so checks come at 64, 128, 256,
    ... started services and at the end.
    """

    def __init__(self, services: int) -> None:
        self.services = services
        self.max_maps = _max_map_count()
        self.max_fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        unlimited = self.max_fds == resource.RLIM_INFINITY
        self.fds_reserve = _FDS_RESERVE if unlimited else min(_FDS_RESERVE, self.max_fds // 4)
        self.maps = self.maps0 = _count_maps()
        self.fds = self.fds0 = _count_fds()
        self.next_check = _BUDGET_FIRST_CHECK

    def compiled(self) -> None:
        """Every module is compiled: check what that took, and count each instance's share from here on.

        Raises:
            StartupError: the modules alone leave too little of a limit.
        """
        self.started(0)
        self.maps0, self.fds0 = self.maps, self.fds

    def started(self, count: int) -> None:
        """`count` services have an instance; check the projection at a checkpoint (and at the end, and at 0).

        Raises:
            StartupError: the projected total does not fit a limit with its reserve.
        """
        if count and count < self.next_check and count < self.services:
            return
        if count:
            self.next_check *= 2
        self.maps, self.fds = _count_maps(), _count_fds()
        problems = []
        if self.max_maps is not None and self.maps is not None and self.maps0 is not None:
            reserve = max(_MAPS_RESERVE_MIN, int(self.max_maps * _MAPS_RESERVE_SHARE))
            need = self._projected(self.maps, self.maps0, count)
            if need + reserve > self.max_maps:
                problems.append(self._maps_problem(need, reserve, count))
        if self.fds is not None and self.fds0 is not None and self.max_fds != resource.RLIM_INFINITY:
            need = self._projected(self.fds, self.fds0, count)
            if need + self.fds_reserve > self.max_fds:
                problems.append(self._fds_problem(need, count))
        if problems:
            raise StartupError(problems)

    def _projected(self, now: int, before: int, count: int) -> int:
        """What is used now, plus what the services without an instance yet will add at the rate seen so far."""
        return now + round((now - before) / count * (self.services - count)) if count else now

    def _rate(self, now: int, before: int, count: int) -> str:
        if not count:
            return f"{now:,} once their modules are compiled, before any instance"
        return f"{now:,} with {count:,} started, {(now - before) / count:.1f} more per instance"

    def _maps_problem(self, need: int, reserve: int, count: int) -> str:
        assert self.max_maps is not None and self.maps is not None and self.maps0 is not None
        suggested = max(262144, 1 << (2 * (need + reserve) - 1).bit_length())  # a power of two >= 2x
        return (
            f"vm.max_map_count is {self.max_maps:,}, but {self.services:,} services need about {need:,} memory "
            f"mappings ({self._rate(self.maps, self.maps0, count)}) and "
            f"{reserve:,} are kept free for instances added under load and hot swaps; past the limit, allocations "
            f"inside wasmtime fail and the daemon aborts. Raise it as root: sysctl -w vm.max_map_count={suggested} "
            "(persist it in /etc/sysctl.d/; see docs/operations.md)"
        )

    def _fds_problem(self, need: int, count: int) -> str:
        assert self.fds is not None and self.fds0 is not None
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        shown_hard = "unlimited" if hard == resource.RLIM_INFINITY else f"{hard:,}"
        suggested = max(65536, 1 << (2 * (need + self.fds_reserve) - 1).bit_length())
        return (
            f"the open files limit (RLIMIT_NOFILE) is {soft:,} (hard limit {shown_hard}), but {self.services:,} "
            f"services need about {need:,} file descriptors ({self._rate(self.fds, self.fds0, count)}) and "
            f"{self.fds_reserve} are kept free for connections; past the limit, instances "
            'fail with "cannot create a memfd" and connections are refused. Raise it: '
            f"LimitNOFILE={suggested} in the systemd unit, or ulimit -n {suggested} in the shell that starts the "
            "daemon (as root past the hard limit; see docs/operations.md)"
        )

    def report(self) -> None:
        """Log what the services use of each limit, and warn when startup alone took more than half of one."""
        fields: dict[str, Any] = {"maps": self.maps, "max_map_count": self.max_maps, "fds": self.fds,
                                  "max_fds": self.max_fds}  # fmt: skip
        log.info("daemon.limits", **fields)
        if self.max_maps is not None and self.maps is not None and self.maps * 2 > self.max_maps:
            log.warning(
                "daemon.limits.low", limit="vm.max_map_count", used=self.maps, value=self.max_maps,
                reason="more than half is used at startup: instances added under load and hot swaps need more; "
                "see docs/operations.md",
            )  # fmt: skip
        if self.fds is not None and self.fds * 2 > self.max_fds:
            log.warning(
                "daemon.limits.low", limit="RLIMIT_NOFILE", used=self.fds, value=self.max_fds,
                reason="more than half is used at startup: connections and hot swaps need more; "
                "see docs/operations.md",
            )  # fmt: skip


class Daemon:
    """One micromono daemon: the services of one manifest, their listeners and their metrics.

    Args:
        config: the validated manifest.

    After `startup()`: `addresses` holds the bound ingress `(host, port)`, `metrics_address` the admin listener's
    (or None), and `started` is set.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
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
        self._servers: list[asyncio.Server] = []
        self._force = asyncio.Event()
        self.reloader: Reloader | None = None
        self._reload_task: asyncio.Task[None] | None = None
        # Seconds spent in each startup phase: compile (all modules), load (instantiate, install and log every
        # service), instantiate (the part of load inside Service.start), routes, bind, watch (until the file
        # watch is live). Logged with daemon.ready as startup_ms.
        self.startup_timings: dict[str, float] = {}

    def __repr__(self) -> str:
        state = "stopping" if self.stopping else ("serving" if self.started.is_set() else "new")
        return f"<Daemon {self.config.path.name} [{state} | services: {len(self.config.services)}]>"

    # --- lifecycle ----------------------------------------------------------------------------------------------

    async def startup(self) -> None:
        """Compile, instantiate, route, bind. On failure everything already started is closed again.

        Raises:
            StartupError: a module failed to load or a listener could not bind.
        """
        daemon = self.config.daemon
        clock = time.perf_counter
        timings = self.startup_timings
        # Before the engine starts its epoch ticker, which placement.py puts off the loop's CPU.
        try:
            self.placement = place(daemon.cpu)
        except ValueError as exc:
            raise StartupError([str(exc)]) from None
        # The ticker takes the GIL for each tick: while a guest runs Python host imports (sends, logs) the loop
        # thread holds the GIL, and CPython hands it over only at the switch interval (5 ms by default), which would
        # stretch a slice to that. No longer than a slice, then (restored at shutdown).
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch_interval, daemon.slice))
        self._compiler = concurrent.futures.ThreadPoolExecutor(
            max_workers=min(32, (os.cpu_count() or 1) + 4),
            thread_name_prefix="micromono-compile",
            initializer=place_compile_thread,
        )
        self.engine = Engine(
            self.router,
            cache_dir=daemon.cache_dir,
            cache_max_bytes=daemon.cache_max_bytes,
            epoch_tick=daemon.slice,
            ticker_setup=place_ticker_thread,
            reaper_setup=place_compile_thread,  # freeing memory is kernel work: off the loop's CPU too
        )
        self.router.scheduler.on_contention = self.engine.pace  # short slices while work arrives beside long runs
        try:
            await self._load_services()
            started = clock()
            routes = Routes([(route, self.router.slot(name)) for route, name in route_table(self.config)])
            self.ingress = Ingress(self.router, routes, max_request_bytes=daemon.max_request_bytes)
            self.registry = new_registry(self.router, self.ingress.http_stats, self._reload_counts, self._cache_stats)
            timings["routes"] = clock() - started
            started = clock()
            await self._bind()
            self.ingress.start_clock()
            timings["bind"] = clock() - started
            started = clock()
            if daemon.watch:
                self.reloader = Reloader(self)
                for service in self.router.services():
                    service.on_quarantine = self.reloader.on_quarantine
                self._reload_task = asyncio.get_running_loop().create_task(self.reloader.run(), name="micromono-reload")
                # Serve only once changes are seen: a file replaced right after startup must not be missed.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.reloader.ready.wait(), timeout=5.0)
            timings["watch"] = clock() - started
        except BaseException:
            await self._close_services()
            self._release_placement()
            raise
        log.info(
            "daemon.ready",
            ingress=[_fmt(a) for a in self.addresses],
            metrics=_fmt(self.metrics_address) if self.metrics_address else None,
            services=len(self.config.services),
            startup_ms={phase: round(seconds * 1000, 3) for phase, seconds in timings.items()},
            wasmtime=WASMTIME_VERSION,
            speedups=speedups_in_use(),
            compiled_modules=compiled_path is not None,
            loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
            cpu=self.placement.cpu if self.placement is not None else None,
        )
        self.started.set()

    async def _load_services(self) -> None:
        assert self.engine is not None
        clock = time.perf_counter
        budget = _Budget(len(self.config.services))
        started = clock()
        compiled = await compile_all(self.engine, self.config, self._compiler)
        self.startup_timings["compile"] = clock() - started
        budget.compiled()
        started = clock()
        for spec in self.config.services:
            self.router.slot(spec.name)  # slots in manifest order: status and metrics list services that way
        problems: list[str] = []
        instantiating = 0.0
        for count, spec in enumerate(self.config.services, 1):
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
            budget.started(count)
            log.info(
                "service.load.complete",
                service=spec.name,
                version=service.version,
                wasm=str(spec.wasm),
                routes=[_route(r) for r in spec.routes],
                calls=sorted(spec.calls),
            )
        self.startup_timings["load"] = clock() - started
        self.startup_timings["instantiate"] = instantiating
        if problems:
            raise StartupError(problems)
        budget.report()

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
            # /metrics: a snapshot of the counters on the loop, rendered in a worker thread (admin.py)
            pages = AdminPages(self.registry.snapshot, render, self.status, lambda: not self.stopping)
            admin = functools.partial(AdminProtocol, pages)
            try:
                server = await loop.create_server(admin, daemon.metrics_listen.host, daemon.metrics_listen.port,
                                                  reuse_address=True)  # fmt: skip
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
        if self._reload_task is not None:
            self._reload_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reload_task
        # 1. Stop accepting connections.
        for server in self._servers:
            server.close()
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
        for service in [*self.router.services(), *self.router.retired]:
            service.close()
        for server in self._servers:
            server.close()
        self._servers.clear()
        if self.engine is not None:
            self.engine.close()

    # --- introspection ------------------------------------------------------------------------------------------

    def _reload_counts(self) -> dict[tuple[str, str], int]:
        return dict(self.reloader.counts) if self.reloader is not None else {}

    def _cache_stats(self) -> tuple[int, int] | None:
        engine = self.engine
        if engine is None or engine.cache_dir is None:
            return None
        return engine.cache_bytes, engine.cache_evictions

    def status(self) -> dict[str, Any]:
        """The `/status` document."""
        last = self.reloader.results if self.reloader is not None else {}
        services = []
        for s in self.router.services():
            edge = self.router.ingress_edges[s.name]
            result = last.get(s.name)
            services.append({
                "name": s.name,
                "version": s.version,
                "sha256": s.sha256,
                "wasm": str(s.spec.wasm),
                "loaded_at": s.loaded_at,
                "instances": {"live": s.live, "idle": len(s.idle), "max": s.max_instances},
                "in_flight": s.in_flight,
                "suspended": s.running is not None,
                "preempted": s.preempted,
                "mailbox": {"queued": len(s.mailbox), "capacity": s.mailbox.capacity},
                "calls": {"ok": s.ok, "failed": s.failed},
                "ingress_requests": {"ok": edge.ok, **edge.errors},
                "instance_failures": s.traps,
                "quarantine": (
                    {"seconds_left": round(left, 3), "reason": s.quarantine_reason, "count": s.quarantines}
                    if (left := s.quarantined_until - time.monotonic()) > 0
                    else None
                ),
                "last_reload": result.as_dict() if result is not None else None,
            })  # fmt: skip
        retired = [
            {"name": s.name, "version": s.version, "in_flight": s.in_flight, "live": s.live}
            for s in self.router.retired
        ]
        manifest = last.get(MANIFEST)
        return {
            "state": "stopping" if self.stopping else "serving",
            "ingress": [_fmt(a) for a in self.addresses],
            "cpu": self.placement.cpu if self.placement is not None else None,
            "services": services,
            "draining": retired,
            "reload": {
                "watching": self.reloader is not None,
                "manifest": manifest.as_dict() if manifest is not None else None,
            },
        }


def _sockname(sock: Any) -> tuple[str, int]:
    name = sock.getsockname()
    return str(name[0]), int(name[1])


def _fmt(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _route(route: Any) -> str:
    if route.prefix:
        return f"{route.pattern}/*"
    return str(route.pattern)


def _freeze_startup_objects() -> None:
    """Move everything allocated at startup (modules, compiled code wrappers, the manifest) out of the cyclic
    GC's way, so its collections only walk objects made while serving; then turn the collector back on.

    `run()` turns the collector off for the startup: its full collections walk every object made so far and find
    almost nothing to free; with 10,000 services they took 2.4 s of a 4 s startup (benches/bench_density.py). Nor
    is there a collection before the freeze: it found 99 unreachable objects with 1,000 services and the same 99
    with 10,000, and at 10,000 it held the event loop for 0.63 s just as the daemon began to serve. Those few
    objects stay, frozen.
    """
    gc.freeze()
    gc.enable()


def raise_open_files_limit(services: int) -> None:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit if the soft one is below what `services` services
    and _FDS_FOR_CONNECTIONS connections may need, and log that it did, which limit, and why.

    Each module's memory image is a memfd, so services may hold up to a file descriptor each, and every connection
    holds one. The common default soft limit, 1024, stops a daemon of about 1,000 services ("cannot create a
    memfd"). The hard limit is the administrator's; `Daemon.startup()` reports it when it is too low.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = services + _FDS_FOR_CONNECTIONS
    if soft == resource.RLIM_INFINITY or soft >= wanted or (hard != resource.RLIM_INFINITY and soft >= hard):
        return
    target = hard if hard != resource.RLIM_INFINITY else wanted
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("daemon.limit.unchanged", limit="RLIMIT_NOFILE", soft=soft, hard=hard, error=str(exc))
        return
    log.info(
        "daemon.limit.raised", limit="RLIMIT_NOFILE", soft=soft, to=target,
        reason=f"{services} services may hold a file descriptor each (a module's memory image is a memfd) and "
        f"each connection holds one: about {wanted:,} are wanted; see docs/operations.md",
    )  # fmt: skip


def run(config: Config, *, loop: str = "auto") -> int:
    """Serve `config` until SIGINT/SIGTERM, then shut down gracefully. Returns the process exit code.

    The first signal starts a graceful shutdown; a second one aborts what is left of it.

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
                stop.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            running.add_signal_handler(signum, on_signal, signum)

        async def until_stopped() -> None:
            _freeze_startup_objects()
            await stop.wait()

        gc.disable()  # for the startup only: until_stopped() freezes what it made and turns it back on
        try:
            await daemon.serve(shutdown_trigger=until_stopped)
        finally:
            gc.enable()
            for signum in (signal.SIGINT, signal.SIGTERM):
                running.remove_signal_handler(signum)

    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())
    return 0


def override_addresses(config: Config, *, listen: Address | None, metrics_listen: Address | None | bool) -> Config:
    """`config` with the listen addresses replaced (the CLI's --listen / --metrics-listen).

    `metrics_listen=False` leaves it as configured; None disables the admin listener.
    """
    import dataclasses

    daemon = config.daemon
    if listen is not None:
        daemon = dataclasses.replace(daemon, listen=listen)
    if metrics_listen is not False:
        daemon = dataclasses.replace(daemon, metrics_listen=metrics_listen)  # type: ignore[arg-type]
    return dataclasses.replace(config, daemon=daemon)
