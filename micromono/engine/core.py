"""The `Engine` (one per daemon: the wasmtime Engine and its settings, the Linker with the host imports, the epoch
ticker, the compile cache) and `CompiledModule` (a validated, cached, pre-linked module, as one service uses it).

Owns the `wasmtime.Config` defaults, compiling (with one compiled Module shared by every service built from the
same bytes), and the choice of path: an Engine made with `compiled=True` (the default when the compiled path is in
use: `micromono._accelerate`) runs `native.CompiledInstance`s, the C `call` import and the native ticker; one made
with `compiled=False` runs the pure-Python path. It must not run guest code itself (instances do) nor route calls
(the Host does).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import wasmtime

from micromono import _accelerate
from micromono.abi import ABI_VERSION
from micromono.errors import ServiceLoadError

from .abicheck import analyse
from .cache import CompileCache
from .clock import EPOCH_TICK_SECONDS, NativeTicker, Ticker, busy_slice
from .ffi import capi, module_from, summary
from .host import Host, HostImports
from .instance import Instance, Runtime
from .native import CompiledInstance
from .reaper import Reaper

__all__ = ["WASMTIME_VERSION", "CompiledModule", "Engine"]

WASMTIME_VERSION: Final = importlib.metadata.version("wasmtime")


class Engine:
    """The process's wasmtime Engine, its host-import Linker, the epoch ticker and the compiled-module cache.

    Args:
        host: receives the guests' `micromono.*` import calls.
        cache_dir: where compiled modules are kept between runs; `None` disables the cache.
        cache_max_bytes: the most the cache's compiled modules may take on disk (None: no bound); past it, the
            least recently used entries go, never one a loaded module uses (`CompileCache.trim`).
        epoch_tick: the slice: the epoch ticker's period in seconds, so the longest a guest runs before it gives
            the event loop back, and the resolution of call deadlines. While the loop is contended (`pace`), the
            ticker ticks every `busy_slice(epoch_tick)` instead.
        ticker_setup: called on the ticker thread as it starts (the daemon places it: placement.py).
        reaper_setup: called on the thread that frees closed Stores as it starts (placed like compile threads).
        compiled: run the compiled path (micromono._speedups) or the pure-Python one; None (the default): the
            process's path (`micromono._accelerate.COMPILED`). Both give the same results.

    Call `close()` (or use `with`) to stop the ticker thread.

    Raises:
        RuntimeError: `compiled=True`, but micromono._speedups is not built or not current.
    """

    def __init__(
        self,
        host: Host,
        *,
        cache_dir: Path | None = None,
        cache_max_bytes: int | None = None,
        epoch_tick: float = EPOCH_TICK_SECONDS,
        ticker_setup: Callable[[], None] | None = None,
        reaper_setup: Callable[[], None] | None = None,
        compiled: bool | None = None,
    ):
        if compiled is None:
            compiled = _accelerate.COMPILED
        native = _accelerate.speedups if compiled else None
        if compiled and native is None:
            raise RuntimeError(f"Engine(compiled=True): {_accelerate.speedups_status()}")
        #: Whether this Engine runs the compiled path.
        self.compiled: bool = compiled
        config = wasmtime.Config()
        # Epoch interruption bounds guest CPU per call at almost no cost on call-heavy code, where fuel metering
        # would slow every instruction down.
        config.epoch_interruption = True
        # The default 4 GiB reservation per 32-bit memory means a memory's base never moves on growth, so a
        # cached memoryview stays valid (it may only be too short, and is then refreshed).
        config.memory_may_move = False
        self._engine = wasmtime.Engine(config)
        fingerprint = hashlib.sha256(
            f"wasmtime={WASMTIME_VERSION};epoch=1;memory_may_move=0;abi={ABI_VERSION}".encode()
        ).hexdigest()[:16]
        # One compiled module per distinct sha256, shared by every service and version built from those bytes
        # (see _shared_module); an entry goes when the last CompiledModule using it does.
        self._shared: weakref.WeakValueDictionary[str, _Shared] = weakref.WeakValueDictionary()
        self._shared_lock = threading.Lock()
        self._compiling: dict[str, threading.Lock] = {}
        self._cache = CompileCache(cache_dir, cache_max_bytes, fingerprint, self._digests_in_use)
        ticker_class = NativeTicker if compiled else Ticker
        ticker: Ticker | NativeTicker = ticker_class(self._engine, epoch_tick, ticker_setup)
        self._runtime = Runtime(self._engine, ticker, Reaper(reaper_setup))
        self._instance_class: type[Instance] = CompiledInstance if compiled else Instance
        self._linker = wasmtime.Linker(self._engine)
        self._linker.define_wasi()
        self._imports = HostImports(host, self._runtime, self._linker, native)
        self.slice = epoch_tick
        self.busy_slice = busy_slice(epoch_tick)
        self._closed = False

    @property
    def host(self) -> Host:
        """What the guests' `micromono.*` imports call into."""
        return self._imports.host

    @property
    def cache_dir(self) -> Path | None:
        """Where compiled modules are kept between runs (None: no cache)."""
        return self._cache.cache_dir

    @property
    def cache_max_bytes(self) -> int | None:
        """The most the compile cache may take on disk (None: no bound); applies from the next compile on."""
        return self._cache.max_bytes

    @cache_max_bytes.setter
    def cache_max_bytes(self, value: int | None) -> None:
        self._cache.max_bytes = value

    @property
    def cache_bytes(self) -> int:
        """The compile cache's size on disk, as last measured (for metrics)."""
        return self._cache.bytes

    @property
    def cache_evictions(self) -> int:
        """Cache entries removed to stay under `cache_max_bytes`."""
        return self._cache.evictions

    def _digests_in_use(self) -> set[str]:
        with self._shared_lock:
            return set(self._shared.keys())

    def pace(self, contended: bool) -> None:
        """Work arrives beside suspended runs (True: slices of `busy_slice`) or has not for a while (False: slices of
        `slice`); the scheduler says which (`Scheduler.on_contention`)."""
        self._runtime.ticker.pace(self.busy_slice if contended else self.slice)

    def callee_of(self, instance: Instance) -> Instance | None:
        """The instance `instance`'s suspended `call` waits on, if it waits in one."""
        return self._imports.callee_of(instance)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running"
        path = "compiled" if self.compiled else "pure"
        return f"<Engine wasmtime {WASMTIME_VERSION} [{state} | {path} | cache: {self.cache_dir}]>"

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the epoch ticker and the reaper. Idempotent. Instances must be closed by their owners first."""
        if self._closed:
            return
        self._closed = True
        self._runtime.ticker.stop()
        self._runtime.reaper.stop()

    # --- compiling ----------------------------------------------------------------------------------------------

    def compile(self, service: str, path: Path) -> CompiledModule:
        """Read, compile (or load from the cache), validate and pre-link one module.

        Safe to run in a worker thread (Engine and Module are thread-safe).

        Raises:
            ServiceLoadError: the file is missing or unreadable, is not valid Wasm/WAT, does not follow the guest
                ABI (docs/abi.md), or imports something micromono does not provide.
        """
        try:
            source = path.read_bytes()
        except FileNotFoundError:
            raise ServiceLoadError(
                service, str(path), "file not found; build it (make examples) or fix `wasm`"
            ) from None
        except OSError as exc:
            raise ServiceLoadError(service, str(path), f"cannot read the file: {exc.strerror}") from exc
        digest = hashlib.sha256(source).hexdigest()
        return CompiledModule(self, service, path, digest, self._shared_module(service, path, digest, source))

    def _shared_module(self, service: str, path: Path, digest: str, source: bytes) -> _Shared:
        """The compiled module of these bytes, made once per Engine and then shared.

        Each wasmtime Module maps its own machine code and keeps its own memory image (a memfd, so a file
        descriptor): thousands of services built from a handful of files held as many copies, each with its own
        mappings, descriptor and memory, and deserializing each copy was most of the startup time
        (benches/bench_density.py). Services with the same bytes share one Module, its InstancePre and its ABI
        analysis; each still gets its own CompiledModule (its name in errors) and its own instances.
        """
        with self._shared_lock:
            shared = self._shared.get(digest)
            if shared is not None:
                return shared
            lock = self._compiling.setdefault(digest, threading.Lock())
        try:
            with lock:  # one thread compiles a given module; the others wait for it and share the result
                with self._shared_lock:
                    shared = self._shared.get(digest)
                if shared is None:
                    module = self._cache.load(self._engine, digest)
                    if module is None:
                        module = self._compile_source(service, path, source)
                        self._cache.store(digest, module)
                    shared = _Shared(self._linker, module)
                    with self._shared_lock:
                        self._shared[digest] = shared
                return shared
        finally:
            with self._shared_lock:
                self._compiling.pop(digest, None)

    def _compile_source(self, service: str, path: Path, source: bytes) -> wasmtime.Module:
        try:
            if path.suffix == ".wat":
                return wasmtime.Module(self._engine, source.decode("utf-8"))
            return module_from(self._engine, source, 0, capi.wasmtime_module_new)
        except UnicodeDecodeError as exc:
            raise ServiceLoadError(service, str(path), f"a .wat file must be UTF-8 text: {exc}") from exc
        except wasmtime.WasmtimeError as exc:
            raise ServiceLoadError(
                service, str(path), f"not a valid WebAssembly module: {summary(str(exc))}; rebuild it for wasm32"
            ) from exc


class _Shared:
    """What one module's bytes compile to, shared by every `CompiledModule` built from them in one Engine: the
    wasmtime Module (machine code and memory image), its InstancePre, and the ABI analysis of its exports and
    imports. `abi_checked` is the module's too: the version a module answers does not depend on the service."""

    __slots__ = ("module", "pre", "report", "link_error", "abi_checked", "__weakref__")

    def __init__(self, linker: wasmtime.Linker, module: wasmtime.Module) -> None:
        self.module = module
        self.abi_checked = False  # set once an instance has answered mm_abi_version() == ABI_VERSION
        self.report = analyse(module)
        self.pre: wasmtime.InstancePre | None = None
        self.link_error: str | None = None
        if not self.report.problems:
            try:
                self.pre = linker.instantiate_pre(module)
            except wasmtime.WasmtimeError as exc:
                self.link_error = str(exc)


class CompiledModule:
    """A compiled, ABI-checked, pre-linked module as one service uses it: everything needed to make instances
    quickly.

    `sha256` identifies the bytes it was built from. Services built from the same bytes share the compiled code
    (`_Shared`); each has its own CompiledModule, so errors name the right service.
    """

    def __init__(self, engine: Engine, service: str, path: Path, sha256: str, shared: _Shared):
        self.engine = engine
        self.service = service
        self.path = path
        self.sha256 = sha256
        self._shared = shared
        self._module = shared.module
        report = shared.report
        self.uses_wasi = report.uses_wasi
        self.has_health = report.has_health
        self.can_snapshot = report.can_snapshot
        self.can_restore = report.can_restore
        self.has_schema_version = report.has_schema_version
        self.can_migrate = report.can_migrate
        if report.problems:
            raise ServiceLoadError(
                service,
                str(path),
                f"does not follow the micromono guest ABI v{ABI_VERSION} (docs/abi.md): "
                + "; ".join(report.problems)
                + "; build it with the SDK in sdk/",
            )
        if shared.link_error is not None:
            raise ServiceLoadError(service, str(path), f"cannot link its imports: {shared.link_error}")
        assert shared.pre is not None
        self._pre: wasmtime.InstancePre = shared.pre

    @property
    def abi_checked(self) -> bool:
        """Whether an instance of this module has answered mm_abi_version() == ABI_VERSION."""
        return self._shared.abi_checked

    @abi_checked.setter
    def abi_checked(self, value: bool) -> None:
        self._shared.abi_checked = value

    def shares_code_with(self, other: CompiledModule) -> bool:
        """Whether `other` runs the same compiled code (it was built from the same bytes, in the same Engine)."""
        return self._shared is other._shared

    def __repr__(self) -> str:
        return f"<CompiledModule {self.service} sha256={self.sha256[:12]} wasi={self.uses_wasi}>"

    def instantiate(self, **options: Any) -> Instance:
        """`new_instance(**options)`, booted and ready for `begin`, its boot run to the end here (blocking: for tools
        and tests; the daemon uses `new_instance` and `Instance.boot`, which yield between slices).

        Raises:
            ServiceLoadError: instantiation, a grant, `_initialize` or the ABI version check failed.
        """
        instance = self.new_instance(**options)
        booted: Instance = instance.finish(instance.boot())
        return booted

    def new_instance(
        self,
        *,
        memory_limit: int,
        owner: Any = None,
        on_output: Callable[[int, bytes], None] | None = None,
        env: tuple[tuple[str, str], ...] = (),
        dirs: tuple[tuple[str, str, bool], ...] = (),
    ) -> Instance:
        """A new instance in its own Store, not yet booted (no guest code has run): call `boot()` next.

        Args:
            memory_limit: maximum linear memory in bytes; `memory.grow` past it returns -1.
            owner: whatever the caller wants to find on `Instance.owner` (the service version).
            on_output: receives guest stdout (level -1) / stderr (level -2) writes.
            env: WASI environment variables granted (none by default).
            dirs: WASI preopened directories granted, as `(host path, guest path, writable)` (none by default).

        Raises:
            ServiceLoadError: a WASI grant failed.
        """
        engine = self.engine
        return engine._instance_class(
            self,
            engine._runtime,
            self._pre,
            memory_limit=memory_limit,
            owner=owner,
            on_output=on_output,
            env=env,
            dirs=dirs,
        )


#: CPU seconds the start-up entries (instantiation with the start function, `_initialize`, `mm_abi_version`,
