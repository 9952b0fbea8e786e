"""The WebAssembly engine: the only module that imports wasmtime.

It exposes only what micromono uses (Spin's `spin-core` rule): one `Engine` per daemon, `CompiledModule` (a
validated, cached, pre-linked module) and `Instance` (one instance in its own Store, with limits, a CPU deadline
and the hot-path call). Everything above this module sees micromono's own types and exceptions
(`micromono.errors`); wasmtime's are translated here, once.

The hot path does not use wasmtime-py's public call API: `Func.__call__` costs about 20 µs and
`Memory.read/write` 2-3 µs (`../shared/research/wasmtime-notes.md`). Instead:

* guest exports are called through `wasmtime_func_call_unchecked` with one preallocated `wasmtime_val_raw_t`
  buffer per instance and ctypes arguments built once (about 0.5 µs);
* host imports are defined with `wasmtime_linker_define_func_unchecked` and int-only ctypes callbacks
  (about 0.3 µs);
* guest memory is written through one cached `memoryview` per instance (0.1 µs for 64 bytes) and read through a
  `c_char` array over the same bytes, whose slices are bytes at once (`Instance.mem`).

These rely on private parts of wasmtime-py (`wasmtime._ffi`, `wasmtime._bindings`, `Func._func`,
`Memory._memory`), so `pyproject.toml` pins wasmtime to one major version and `tests/test_engine.py` pins the
private bindings. All of it is marked *unstable* below.

Threading: every guest runs on the event loop's thread, a slice at a time (`Instance.begin` / `step`: an async call
on a fiber of its Store's, polled). The host callbacks find their calling instance in `Engine._cur`, which each
entry and resumed slice sets and puts back. Other threads: the epoch ticker (`_Ticker`, or `_NativeTicker` on the
compiled path) only advances the engine's epoch and the deadline clock (`CLOCK`); compiles run in the caller's
thread (the daemon's compile threads); the reaper (`_Reaper`) frees closed Stores.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import hashlib
import hmac
import importlib.metadata
import os
import queue
import secrets
import struct
import sys
import threading
import time
import weakref
from collections.abc import Callable
from ctypes import CFUNCTYPE, POINTER, c_char, c_int32, c_size_t, c_ubyte, c_uint64, c_void_p
from pathlib import Path
from typing import Any, Final, Protocol, cast

import structlog
import wasmtime
from wasmtime import _bindings as _b  # unstable: private bindings
from wasmtime import _ffi as _ffi  # unstable: private bindings
from wasmtime._extern import wrap_extern  # unstable: private
from wasmtime._module import ExportTypeList as _ExportTypeList  # unstable: private

from .abi import ABI_VERSION, KIND_CALL, KIND_HTTP, KIND_MESSAGE
from .errors import (
    AbiViolation,
    CallTimeout,
    GuestAppError,
    GuestTrap,
    RequestTooLarge,
    ServiceLoadError,
)

__all__ = [
    "ABI_VERSION",
    "CLOCK",
    "DEADLINE_SLACK",
    "KIND_HTTP",
    "KIND_CALL",
    "KIND_MESSAGE",
    "WASMTIME_VERSION",
    "Host",
    "Engine",
    "CompiledModule",
    "Instance",
]

log = structlog.get_logger(__name__)

WASMTIME_VERSION: Final = importlib.metadata.version("wasmtime")

#: The inbox size asked for right after instantiation (docs/abi.md, "Inbox protocol").
DEFAULT_INBOX: Final = 65536
try:  # the optional compiled half of Instance.invoke (micromono/_speedups.c)
    from . import _speedups  # type: ignore[attr-defined]
except ImportError:  # not built (no C compiler at install time): the pure path is all there is
    _speedups = None
_TOO_LARGE, _FAILED, _SUSPENDED = 1, 2, 4  # _speedups.begin's hand-back codes
#: The addresses _speedups.begin needs, as its C struct lays them out: the store context, mm_handle, the three
#: wasmtime_val_t, the trap slot, the error slot, the inbox (as pointers), its capacity (size_t). One bytes object,
#: read with one memcpy, instead of seven ints converted one by one.
_FAST_ARGS: Final = struct.Struct("@PPPPPPNP")


def speedups_available() -> bool:
    """Whether micromono._speedups was built."""
    return _speedups is not None


def speedups_in_use() -> bool:
    """Whether `Instance.begin` runs through micromono._speedups now."""
    return Instance.begin is not _PURE_BEGIN


def use_speedups(enabled: bool) -> bool:
    """Run `Instance.begin` through micromono._speedups (True) or in pure Python (False, the default).

    Returns whether the compiled path is now in use: False when it was asked for but not built.
    """
    global _speedups_begin
    if enabled and _speedups is not None:
        _speedups.set_calls(
            ctypes.cast(_call_async, c_void_p).value,
            ctypes.cast(_future_poll, c_void_p).value,
            ctypes.cast(_future_delete, c_void_p).value,
            ctypes.cast(_set_epoch_deadline, c_void_p).value,
        )
        _speedups_begin = _speedups.begin
        Instance.begin = Instance._begin_compiled  # type: ignore[method-assign]
        return True
    Instance.begin = _PURE_BEGIN  # type: ignore[method-assign]
    return False


_speedups_begin: Callable[..., Any] = lambda *args: None  # noqa: E731  # set by use_speedups

#: The default slice: the epoch ticker's period, so the longest a guest runs before it gives the event loop back
#: (and how late a CPU deadline may be noticed). Set per daemon with `daemon.slice`.
SLICE_SECONDS: Final = 0.0005
EPOCH_TICK_SECONDS: Final = SLICE_SECONDS


class DeadlineClock(ctypes.Structure):
    """The clock call deadlines are set by: `now` is `time.monotonic()` as of the epoch ticker's last tick, and
    `tick` counts the ticks (a guest yields once a tick has passed since its slice began).

    A C struct (a double and a uint64), so that the compiled path's ticker thread (`_NativeTicker`) writes it
    without the GIL; Python reads the fields as attributes. It lags the real clock by at most one tick (plus the
    interpreter's switch interval on the pure path, whose ticker needs the GIL), unless the ticker thread is
    starved of CPU; `DEADLINE_SLACK` covers that lag, so a deadline set as `CLOCK.now + timeout + DEADLINE_SLACK`
    is never earlier than `timeout` after the real start, and at most `DEADLINE_SLACK` later. Deadlines are only
    checked once per tick anyway. The router's top-level runs read the real clock and move `now` up to it, so the
    calls they make are never timed from before their start, even when the ticker is starved.
    """

    _fields_ = [("now", ctypes.c_double), ("tick", c_uint64)]

    now: float
    tick: int


def busy_slice(slice_s: float) -> float:
    """The slice while work arrives beside suspended runs (`Engine.pace`): a fifth of `slice_s`, but not
    below 0.1 ms (each yield and resume costs the loop some microseconds), nor above `slice_s`."""
    return min(slice_s, max(slice_s / 5, 0.0001))


#: The process's deadline clock, advanced by every Engine's ticker.
CLOCK: Final = DeadlineClock(time.monotonic(), 0)
#: What a deadline adds to a timeout to cover `CLOCK`'s lag (a 10 ms tick's worth at least, whatever the slice).
DEADLINE_SLACK: Final = 0.01 + sys.getswitchinterval()

_U32: Final = 0xFFFFFFFF
_WASI_MODULE: Final = "wasi_snapshot_preview1"
_HOST_MODULE: Final = "micromono"
MAX_REPLY_PTR: Final = 1 << 31

# --- unstable: raw wasmtime C API entry points ------------------------------------------------------------------
# A second handle on the same shared library, so these function pointers carry no argtypes: fed ctypes objects
# built once, ctypes skips all argument conversion (wasmtime-notes.md §1). A CDLL handle releases the GIL around
# each call, so the epoch ticker can tick while a guest runs.
_lib = ctypes.CDLL(_ffi.dll._name)
# Entry points that run no guest code go through a PyDLL handle, which keeps the GIL: releasing and taking it back
# costs more than they do.
_pylib = ctypes.PyDLL(_ffi.dll._name)
# wasmtime_call_future_t *wasmtime_func_call_async(context, func, args, nargs, results, nresults, trap_ret, err_ret)
_call_async = _pylib.wasmtime_func_call_async
_call_async.restype = c_void_p
# wasmtime_call_future_t *wasmtime_instance_pre_instantiate_async(pre, context, instance_ret, trap_ret, err_ret)
_instantiate_async = _pylib.wasmtime_instance_pre_instantiate_async
_instantiate_async.restype = c_void_p
# bool wasmtime_call_future_poll(future): runs the guest, so through the CDLL handle, which releases the GIL (the
# epoch ticker must be able to tick meanwhile).
_future_poll = _lib.wasmtime_call_future_poll
_future_poll.restype = ctypes.c_bool
# void wasmtime_call_future_delete(future)
_future_delete = _pylib.wasmtime_call_future_delete
_future_delete.restype = None
# A future is passed as `_at(_NOWHERE, future)`: a byref object at offset `future` from address 0, which ctypes
# passes as the word `future` without converting anything (an int would be cut to a C int, and argtypes or a
# c_void_p cost a format-table lookup and an argument object per call).
_at = ctypes.byref
_NOWHERE: Final = c_char.from_address(0)
# The ticker advances the epoch through the PyDLL handle too: the ticker never has to win the GIL back from the loop
# thread in the middle of a tick.
_increment_epoch = _pylib.wasmtime_engine_increment_epoch
_increment_epoch.restype = None
_increment_epoch.argtypes = [c_void_p]
# void wasmtime_context_epoch_deadline_async_yield_and_update(context, delta): the header declares an error result,
# but wasmtime 50 returns nothing (../shared/research/preemption/, pitfall 2).
_yield_and_update = _pylib.wasmtime_context_epoch_deadline_async_yield_and_update
_yield_and_update.restype = None
_yield_and_update.argtypes = [c_void_p, c_uint64]
_monotonic = time.monotonic
# void wasmtime_context_set_epoch_deadline(context, ticks_beyond_current), fed prebuilt word arguments.
_set_epoch_deadline = _pylib.wasmtime_context_set_epoch_deadline
_set_epoch_deadline.restype = None


def _word_arg(value: int) -> Any:
    """`value` as a prebuilt ctypes argument that passes as one pointer-sized word (a `byref` object).

    ctypes converts a `c_void_p` or `c_size_t` argument on every call: it looks its format up in a table and
    allocates a fresh argument object. A `byref` object it copies as it is, which saves about 300 instructions per
    argument (`benches/RESULTS.md`, 2026-12-02). `byref` of an object at address `value` passes `value` itself; the
    object is never read. Pointers and `size_t` are the same word in every ABI wasmtime supports.
    """
    return ctypes.byref(ctypes.c_char.from_address(value))


def _symbol(name: str) -> int:
    address = ctypes.cast(getattr(_lib, name), c_void_p).value
    assert address is not None
    return address


_memory_data = CFUNCTYPE(c_void_p, c_void_p, c_void_p)(_symbol("wasmtime_memory_data"))
_memory_data_size = CFUNCTYPE(c_size_t, c_void_p, c_void_p)(_symbol("wasmtime_memory_data_size"))
# wasm_trap_t *cb(void *env, wasmtime_caller_t *caller, wasmtime_val_raw_t *args_and_results, size_t n)
# Slot k of args_and_results is 16 bytes: as i32 it is args[4 * k].
_RAW_CALLBACK = CFUNCTYPE(c_size_t, c_void_p, c_void_p, POINTER(c_int32), c_size_t)
# The same, with args_and_results as a plain address, for the hot imports (`call`, `send`): ctypes hands over an
# int instead of building a pointer object, and `_slots` reads all the arguments in one unpack.
_ADDR_CALLBACK = CFUNCTYPE(c_size_t, c_void_p, c_void_p, c_void_p, c_size_t)
#: The i32 arguments of `call` (6) and `send` (4), each the first 4 bytes of a 16-byte slot, as unsigned.
_SEND_ARGS: Final = struct.Struct("<I12xI12xI12xI").unpack_from


class _Bytes(Protocol):
    """What `Instance.mem` is used as: a c_char array over guest memory (or b""), whose slices are bytes."""

    def __getitem__(self, index: slice, /) -> bytes: ...


#: Views over args_and_results buffers by (address, slots). wasmtime passes a buffer on its own stack, so the same
#: few addresses come back call after call; a view is only read inside the callback given its address.
_SLOT_VIEWS: dict[tuple[int, int], memoryview] = {}
_SLOT_VIEWS_MAX: Final = 4096


def _slots(address: int, n: int) -> memoryview:
    """An i32 view of the `n` 16-byte slots at `address` (result k is written at index 4 * k)."""
    view = _SLOT_VIEWS.get((address, n))
    if view is None:
        if len(_SLOT_VIEWS) >= _SLOT_VIEWS_MAX:
            _SLOT_VIEWS.clear()
        view = _SLOT_VIEWS[address, n] = memoryview((c_ubyte * (16 * n)).from_address(address)).cast("B").cast("i")
    return view


#: Views over the wasmtime_val_t arrays the async `call` import is handed, by address: its 6 arguments and, right
#: after them, its result (wasmtime keeps both in one buffer per store: `_call_view` checks), 32 bytes per value with
#: the i32 at byte 8. Like `_SLOT_VIEWS`, the same few addresses come back call after call.
_VAL_SIZE: Final = 32
_CALL_VIEWS: dict[int, memoryview] = {}
_CALL_VALS: Final = struct.Struct("<8xI28xI28xI28xI28xI28xI").unpack_from
_CALL_RESULT: Final = 6 * _VAL_SIZE // 4 + 2  # the result's i32, as an index of the i32 view
#: Views over the 3-word `wasmtime_async_continuation_t` (callback, env, finalizer) the import fills, by address.
_WORD_VIEWS: dict[int, memoryview] = {}


def _call_view(args: int, results: int) -> memoryview:
    """An i32 view of `call`'s six argument values and its result value (`args` and `results` are adjacent)."""
    view = _CALL_VIEWS.get(args)
    if view is None:
        if results != args + 6 * _VAL_SIZE:
            raise RuntimeError("unstable: wasmtime no longer keeps a host call's results right after its arguments")
        if len(_CALL_VIEWS) >= _SLOT_VIEWS_MAX:
            _CALL_VIEWS.clear()
        view = _CALL_VIEWS[args] = memoryview((c_ubyte * (7 * _VAL_SIZE)).from_address(args)).cast("B").cast("i")
    return view


def _words(address: int) -> memoryview:
    """A view of the three pointer-sized words of a continuation at `address`."""
    view = _WORD_VIEWS.get(address)
    if view is None:
        if len(_WORD_VIEWS) >= _SLOT_VIEWS_MAX:
            _WORD_VIEWS.clear()
        view = _WORD_VIEWS[address] = memoryview((c_ubyte * 24).from_address(address)).cast("B").cast("Q")
    return view


_NO_FINALIZER = ctypes.cast(0, CFUNCTYPE(None, c_void_p))
# void cb(void *env, wasmtime_caller_t *, const wasmtime_val_t *args, size_t nargs, wasmtime_val_t *results,
#         size_t nresults, wasm_trap_t **trap_ret, wasmtime_async_continuation_t *continuation_ret)
_ASYNC_CALLBACK = CFUNCTYPE(None, c_void_p, c_void_p, c_void_p, c_size_t, c_void_p, c_size_t, c_void_p, c_void_p)
# bool continuation(void *env): polled by wasmtime until it returns true; the guest waits (its fiber suspends).
_CONTINUATION = CFUNCTYPE(ctypes.c_bool, c_void_p)
# A continuation that is ready at once, for a `call` whose callee finished within its caller's slice (the common
# case): wasmtime polls a host function's continuation before it returns to the guest, and a Python callback there
# would cost a GIL round trip on every call. Any C function returning true for its argument does: libc's abs(1).
_READY: Final = (ctypes.cast(ctypes.CDLL(None).abs, c_void_p).value or 0, 1)


def _new_trap(message: str) -> int:
    """Address of a new wasm_trap_t; wasmtime takes ownership when a callback returns it."""
    raw = message.encode("utf-8", "replace")
    trap = _ffi.wasmtime_trap_new(ctypes.create_string_buffer(raw), len(raw))
    return ctypes.cast(trap, c_void_p).value or 0


class _GuestFault(Exception):
    """Raised inside a host callback when the guest broke the ABI; the callback turns it into a trap."""


class Waiting(Protocol):
    """A `call` whose callee did not finish within its caller's slice (returned by `Host.call`).

    The caller's fiber is suspended while it waits: the engine polls `step()` each time the caller is resumed, and
    the caller goes on once it returns the ABI result. `cancel()` is called instead if the caller is cancelled.
    """

    def step(self) -> int | None:
        """Run the callee one more slice: the ABI result when the call is over, None while it still runs. Never
        raises (failures are results)."""
        ...

    def cancel(self) -> None:
        """Stop the callee (its caller is being cancelled)."""
        ...

    @property
    def callee_instance(self) -> Instance:
        """The instance the call runs in."""
        ...


class Host(Protocol):
    """What the engine's host imports call into (implemented by `router.Router`).

    Each method runs synchronously inside a guest's import call, on the event loop's thread. `caller` is the
    calling `Instance`; `target`, `request` and `message` are copies of the bytes in its memory.
    """

    def call(self, caller: Instance, target: bytes, request: bytes, reply_ptr: int, reply_cap: int) -> int | Waiting:
        """Serve `micromono.call`: the ABI result (reply length or a negative error code), or, when the callee
        gave up its slice before it finished, a `Waiting` the caller's fiber waits on."""
        ...

    def send(self, caller: Instance, target: bytes, message: bytes) -> int:
        """Serve `micromono.send`; return 0 or a negative error code."""
        ...

    def log(self, caller: Instance, level: int, message: bytes) -> None:
        """Serve `micromono.log` and guest stdout (level -1) / stderr (level -2) writes."""
        ...


class _Current:
    """The instance whose guest code is running now (the innermost of a call chain), the host serving the imports,
    and a bug in a host callback waiting to be re-raised once the guest call has unwound."""

    __slots__ = ("active", "pending", "host")

    def __init__(self, host: Host) -> None:
        self.active: Instance | None = None
        self.pending: BaseException | None = None
        self.host = host


class _Parked:
    """A `call` import whose caller's fiber is suspended on a `Waiting` (see `Engine._make_call`)."""

    __slots__ = ("waiting", "caller", "results", "trap", "fresh")

    def __init__(self, waiting: Waiting, caller: Instance, results: int, trap: int) -> None:
        self.waiting = waiting
        self.caller = caller
        self.results = results  # address of the import's wasmtime_val_t result
        self.trap = trap  # address of its wasm_trap_t* slot
        self.fresh = True  # polled once already, in the same slice the callee gave up: the caller yields first


class _Ticker:
    """The epoch ticker: a thread that advances the engine's epoch (and `CLOCK`) every `period` seconds while guests
    run, and sleeps while none does.

    Each tick ends the slice of whichever guest is running (the guest's deadline callback sees the tick and
    yields). It needs the GIL only for a moment per tick, and gets it at once while a guest runs, since the loop
    thread releases the GIL around every entry into wasm. A POSIX timer calling
    `wasmtime_engine_increment_epoch` with no Python at all was tried and measured slower here: glibc starts a new
    thread for every expiry, and each thread start and exit cost the serving thread more than the GIL hand-off.

    Idle: a tick costs this thread tens of microseconds (a wake-up and the GIL), which at a slice's rate is a tenth of
    a CPU for a daemon doing nothing. So after `IDLE_TICKS` ticks in which no guest entry began or resumed, it waits
    until one does: every entry calls `busy()`, which only sets a flag, and wakes the thread when it was waiting.
    """

    #: Ticks without a guest entry after which the ticker waits for one instead of ticking.
    IDLE_TICKS: Final = 20

    __slots__ = ("_engine", "_setup", "period", "_stopped", "_wake", "active", "waiting", "_thread")

    #: Not a native ticker (see `_NativeTicker.address`).
    address: Final = 0

    def __init__(self, engine: wasmtime.Engine, period: float, setup: Callable[[], None] | None) -> None:
        self._engine = engine
        self._setup = setup
        self.period = period
        self._stopped = threading.Event()
        self._wake = threading.Event()
        self.active = False  # a guest entry began or resumed since the last tick
        self.waiting = False  # the thread waits for an entry (`busy`) instead of ticking
        CLOCK.now = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="micromono-epoch", daemon=True)
        self._thread.start()

    def busy(self) -> None:
        """A guest entry is about to run (called on the loop thread before every first or resumed slice)."""
        self.active = True
        if self.waiting:
            self.waiting = False
            self._wake.set()

    def _run(self) -> None:
        if self._setup is not None:
            self._setup()
        engine = ctypes.cast(self._engine.ptr(), c_void_p).value
        increment = _increment_epoch
        monotonic = time.monotonic
        sleep = time.sleep  # one nanosleep without the GIL: an Event's timed wait costs several times more per tick
        clock = CLOCK
        stopped = self._stopped
        wake = self._wake
        idle = 0
        while True:
            if idle >= self.IDLE_TICKS:
                wake.clear()
                self.waiting = True
                if not self.active:  # an entry between the last tick and `waiting` would not have woken us
                    wake.wait()
                self.waiting = False
                idle = 0
            else:
                sleep(self.period)
            if stopped.is_set():
                return
            if self.active:
                self.active = False
                idle = 0
            else:
                idle += 1
            clock.now = monotonic()
            clock.tick += 1
            increment(engine)

    def pace(self, period: float) -> None:
        """Tick every `period` seconds from the next tick on."""
        self.period = period

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        self._thread.join()


class _NativeTicker:
    """The compiled path's epoch ticker: the same ticks as `_Ticker`, from a thread of micromono._speedups' that never
    takes the GIL (it runs `setup` once, with the GIL, as it starts).

    `_Ticker`'s ticks each need the GIL for a moment, and the loop thread, which holds it between slices, waits for
    the hand-off about once per slice; this one writes `CLOCK` and advances the epoch from C, so a slice costs the
    loop only the guest's own yield and resume. Its interface is `_Ticker`'s: entries set `active` and call
    `busy()` when `waiting`; here `waiting` is always true, so every entry calls `busy()`, one C call that also
    wakes the thread when it waits for an entry (after `_Ticker.IDLE_TICKS` idle ticks, as `_Ticker` does), except
    `_speedups.begin`, which marks it busy itself through `address`.
    """

    __slots__ = ("_capsule", "_engine", "period", "active", "busy", "address", "__weakref__")

    waiting: Final = True  # every entry calls `busy()`: the idle state is the C thread's

    def __init__(self, engine: wasmtime.Engine, period: float, setup: Callable[[], None] | None) -> None:
        assert _speedups is not None
        self._engine = engine  # kept alive as long as the thread calls into it
        self.period = period
        self.active = False  # unused: entries set it, as they do `_Ticker`'s
        CLOCK.now = time.monotonic()
        self._capsule = _speedups.ticker_start(
            ctypes.cast(engine.ptr(), c_void_p).value,
            ctypes.cast(_increment_epoch, c_void_p).value,
            ctypes.addressof(CLOCK),
            max(1000, round(period * 1e9)),
            setup,
        )
        self.busy: Callable[[], None] = functools.partial(_speedups.ticker_busy, self._capsule)
        self.address: int = _speedups.ticker_address(self._capsule)  # _speedups.begin marks it busy itself
        _NATIVE_TICKERS.add(self)

    def pace(self, period: float) -> None:
        """Tick every `period` seconds from the next tick on."""
        if self._capsule is not None:
            _speedups.ticker_set_period(self._capsule, max(1000, round(period * 1e9)))

    def stop(self) -> None:
        if self._capsule is not None:
            capsule, self._capsule = self._capsule, None
            _speedups.ticker_stop(capsule)
            _NATIVE_TICKERS.discard(self)


#: The native tickers running: stopped at exit, before the interpreter frees the engines they tick.
_NATIVE_TICKERS: weakref.WeakSet[_NativeTicker] = weakref.WeakSet()


@atexit.register
def _stop_native_tickers() -> None:
    for ticker in list(_NATIVE_TICKERS):
        ticker.stop()


class Engine:
    """The process's wasmtime Engine, its host-import Linker, the epoch ticker and the compiled-module cache.

    Args:
        host: receives the guests' `micromono.*` import calls.
        cache_dir: where compiled modules are kept between runs; `None` disables the cache.
        cache_max_bytes: the most the cache's compiled modules may take on disk (None: no bound); past it, the
            least recently used entries go, never one a loaded module uses (`_trim_cache`).
        epoch_tick: the slice: the epoch ticker's period in seconds, so the longest a guest runs before it gives
            the event loop back, and the resolution of call deadlines. While the loop is contended (`pace`), the
            ticker ticks every `busy_slice(epoch_tick)` instead.
        ticker_setup: called on the ticker thread as it starts (the daemon places it: placement.py).
        reaper_setup: called on the thread that frees closed Stores as it starts (placed like compile threads).

    Call `close()` (or use `with`) to stop the ticker thread.
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
    ):
        config = wasmtime.Config()
        # Epoch interruption bounds guest CPU per call at ~0 cost on call-heavy code (fuel costs +97%).
        config.epoch_interruption = True
        # The default 4 GiB reservation per 32-bit memory means a memory's base never moves on growth, so a
        # cached memoryview stays valid (it may only be too short, and is then refreshed).
        config.memory_may_move = False
        self._engine = wasmtime.Engine(config)
        self._fingerprint = hashlib.sha256(
            f"wasmtime={WASMTIME_VERSION};epoch=1;memory_may_move=0;abi={ABI_VERSION}".encode()
        ).hexdigest()[:16]
        self.host = host
        self.cache_dir = cache_dir
        self.cache_max_bytes = cache_max_bytes
        self.cache_bytes = 0  # the cache's size on disk as last measured (`_trim_cache`), for metrics
        self.cache_evictions = 0
        self._cache_key: bytes | None = None
        # One compiled module per distinct sha256, shared by every service and version built from those bytes
        # (see _shared_module); an entry goes when the last CompiledModule using it does.
        self._shared: weakref.WeakValueDictionary[str, _Shared] = weakref.WeakValueDictionary()
        self._shared_lock = threading.Lock()
        self._compiling: dict[str, threading.Lock] = {}
        # Who is running guest code now (see the module docstring).
        self._cur = _Current(host)
        # `call` imports whose callers wait on a callee that gave up its slice, by continuation env.
        self._parked: dict[int, _Parked] = {}
        self._next_parked = 2  # env 1 is the ready continuation's
        self._linker = wasmtime.Linker(self._engine)
        self._linker.define_wasi()
        self._callbacks: list[Any] = []  # keep every ctypes callback alive as long as the linker
        self._define_host_imports()
        ticker = _NativeTicker if speedups_in_use() else _Ticker
        self._ticker: _Ticker | _NativeTicker = ticker(self._engine, epoch_tick, ticker_setup)
        self.slice = epoch_tick
        self.busy_slice = busy_slice(epoch_tick)
        self._reaper = _Reaper(reaper_setup)
        self._closed = False

    def pace(self, contended: bool) -> None:
        """Work arrives beside suspended runs (True: slices of `busy_slice`) or has not for a while (False: slices of
        `slice`); the scheduler says which (`Scheduler.on_contention`)."""
        self._ticker.pace(self.busy_slice if contended else self.slice)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running"
        return f"<Engine wasmtime {WASMTIME_VERSION} [{state} | cache: {self.cache_dir}]>"

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the epoch ticker. Idempotent. Instances must be closed by their owners first."""
        if self._closed:
            return
        self._closed = True
        self._ticker.stop()
        self._reaper.stop()

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
        descriptor): 10,000 services built from 4 files held 10,000 copies, about 3 memory mappings, 1 file
        descriptor and tens of KiB each, and deserializing each copy was most of the startup time
        (benches/bench_density.py). Services with the same bytes now share one Module, its InstancePre and
        its ABI analysis; each still gets its own CompiledModule (its name in errors) and its own instances.
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
                    module = self._load_cached(digest)
                    if module is None:
                        module = self._compile_source(service, path, source)
                        self._store_cached(digest, module)
                    shared = _Shared(self, module)
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
            return _module_from(self._engine, source, 0, _ffi.wasmtime_module_new)
        except UnicodeDecodeError as exc:
            raise ServiceLoadError(service, str(path), f"a .wat file must be UTF-8 text: {exc}") from exc
        except wasmtime.WasmtimeError as exc:
            raise ServiceLoadError(
                service, str(path), f"not a valid WebAssembly module: {_summary(str(exc))}; rebuild it for wasm32"
            ) from exc

    def _cache_file(self, digest: str) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / f"{digest}-{self._fingerprint}.cwasm"

    def _key(self) -> bytes:
        """The cache's secret HMAC key: a file only the daemon's user can read, created on first use.

        Deserializing trusts the bytes as native code, so only files whose MAC matches (files this daemon
        wrote) are ever loaded; anything else in the directory is ignored and recompiled over.
        """
        if self._cache_key is None:
            assert self.cache_dir is not None
            self.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            key_path = self.cache_dir / "cache.key"
            try:
                fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                self._cache_key = key_path.read_bytes()
            else:
                key = secrets.token_bytes(32)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(key)
                self._cache_key = key
            self._trim_cache(keep="", evict=False)  # the size for metrics, before anything is written
        return self._cache_key

    def _load_cached(self, digest: str) -> wasmtime.Module | None:
        """The cached module of `digest`, if its file carries this cache's MAC. No copy of the file is made while
        the GIL is held (hashlib and wasmtime read it in place, without the GIL), so a large module does not make
        the event loop wait."""
        if self.cache_dir is None:
            return None
        try:
            blob = self._cache_file(digest).read_bytes()
            key = self._key()
        except OSError:
            return None
        view = memoryview(blob)
        mac = hmac.new(key, digest.encode(), hashlib.sha256)
        mac.update(view[32:])
        if not hmac.compare_digest(view[:32], mac.digest()):
            return None
        try:
            module = _module_from(self._engine, blob, 32, _ffi.wasmtime_module_deserialize)
        except wasmtime.WasmtimeError:
            return None
        with contextlib.suppress(OSError):
            os.utime(self._cache_file(digest))  # recently used: the last to go when the cache is trimmed
        return module

    def _store_cached(self, digest: str, module: wasmtime.Module) -> None:
        """Write the compiled module with its MAC, from wasmtime's own buffer (no copy with the GIL held)."""
        if self.cache_dir is None:
            return
        raw = _ffi.wasm_byte_vec_t()
        err = _ffi.wasmtime_module_serialize(module.ptr(), ctypes.byref(raw))
        if err:
            return  # a module that cannot be serialized is only compiled again next time
        try:
            payload = memoryview((ctypes.c_uint8 * raw.size).from_address(ctypes.addressof(raw.data.contents)))
            try:
                mac = hmac.new(self._key(), digest.encode(), hashlib.sha256)
                mac.update(payload)
                final = self._cache_file(digest)
                tmp = final.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
                with open(tmp, "wb") as fh:
                    fh.write(mac.digest())
                    fh.write(payload)
                os.replace(tmp, final)
            except OSError:
                return  # a cache that cannot be written only costs compile time on the next start
            finally:
                payload.release()
        finally:
            _ffi.wasm_byte_vec_delete(ctypes.byref(raw))
        self._trim_cache(keep=digest)

    def _trim_cache(self, keep: str, *, evict: bool = True) -> None:
        """Bring the cache under `cache_max_bytes`: remove the least recently used entries (a load touches its
        file), never `keep` (just written) nor one that a module in use was built from (loaded versions and the
        previous versions kept for rollback hold theirs). Entries of other wasmtime versions or settings are never
        loaded again, so they go first in time. Runs in the compiling thread, after each write; with `evict` False
        (the cache's first use: services about to load may need what is there) it only measures."""
        if self.cache_dir is None:
            return
        entries: list[tuple[float, str, int]] = []
        total = 0
        try:
            with os.scandir(self.cache_dir) as listing:
                for entry in listing:
                    if entry.name.endswith(".cwasm"):
                        with contextlib.suppress(OSError):
                            stat = entry.stat()
                            entries.append((stat.st_mtime, entry.name, stat.st_size))
                            total += stat.st_size
        except OSError:
            return
        limit = self.cache_max_bytes
        if evict and limit is not None and total > limit:
            with self._shared_lock:
                in_use = set(self._shared.keys())
            in_use.add(keep)
            freed = removed = 0
            for _, name, size in sorted(entries):
                if total - freed <= limit:
                    break
                if name.partition("-")[0] in in_use:
                    continue
                try:
                    (self.cache_dir / name).unlink()
                except OSError:
                    continue
                freed += size
                removed += 1
            total -= freed
            self.cache_evictions += removed
            if removed:
                log.info(
                    "engine.cache.evicted", entries=removed, bytes=freed, cache_bytes=total, cache_max_bytes=limit,
                    cache_dir=str(self.cache_dir),
                )  # fmt: skip
        self.cache_bytes = total

    # --- host imports -------------------------------------------------------------------------------------------

    def _define_host_imports(self) -> None:
        i32 = wasmtime.ValType.i32()
        handle = self._make_call()
        if _speedups is not None and speedups_in_use():  # the import in C, calling `handle` with plain ints
            self._callbacks.append(handle)
            self._define_async("call", [i32] * 6, [i32], _speedups.call_import_address(), id(handle))
        else:
            callback = _ASYNC_CALLBACK(self._call_import)
            self._callbacks.append(callback)
            self._define_async("call", [i32] * 6, [i32], ctypes.cast(callback, c_void_p).value or 0, None)
        self._continuation = _CONTINUATION(self._resume_parked)
        self._callbacks.append(self._continuation)
        self._continuation_address = ctypes.cast(self._continuation, c_void_p).value or 0
        self._define("take_reply", [i32] * 2, [i32], self._make_take_reply())
        self._define("send", [i32] * 4, [i32], self._make_send(), _ADDR_CALLBACK)
        self._define("log", [i32] * 3, [], self._make_log())
        self._define("last_error", [i32] * 2, [i32], self._make_last_error())

    def _define(
        self, name: str, params: list[Any], results: list[Any], fn: Callable[..., int], kind: Any = _RAW_CALLBACK
    ) -> None:
        """unstable: `wasmtime_linker_define_func_unchecked` with an int-only ctypes callback."""
        callback = kind(fn)
        self._callbacks.append(callback)
        self._link(name, params, results, _b._wasmtime_linker_define_func_unchecked,
                   ctypes.cast(callback, _b.wasmtime_func_unchecked_callback_t), None)  # fmt: skip

    def _define_async(self, name: str, params: list[Any], results: list[Any], address: int, data: int | None) -> None:
        """unstable: `wasmtime_linker_define_async_func` with the callback at `address` and its `data`: an import
        whose caller's fiber can wait (suspend)."""
        self._link(name, params, results, _b._wasmtime_linker_define_async_func,
                   ctypes.cast(address, _b.wasmtime_func_async_callback_t), data)  # fmt: skip

    def _link(self, name: str, params: list[Any], results: list[Any], define: Any, callback: Any, data: Any) -> None:
        functype = wasmtime.FuncType(params, results)  # built per Engine: sharing one across Engines aborts
        self._callbacks.append(functype)
        module, field = _HOST_MODULE.encode(), name.encode()
        err = define(
            self._linker.ptr(),
            ctypes.create_string_buffer(module),
            len(module),
            ctypes.create_string_buffer(field),
            len(field),
            functype.ptr(),
            callback,
            data,
            _NO_FINALIZER,
        )
        if err:
            raise wasmtime.WasmtimeError._from_ptr(err)

    def _fail(self, me: Instance, exc: BaseException) -> int:
        """Turn an exception inside a host callback into a trap of the calling guest. Never raises."""
        cur = self._cur
        cur.active = me
        if isinstance(exc, _GuestFault):
            return _new_trap(str(exc))
        # A bug in micromono, not the guest: keep it, and re-raise it once the guest call has unwound.
        cur.pending = exc
        return _new_trap(f"micromono internal error in a host import: {exc!r}")

    def _make_call(self) -> Callable[..., int | None]:
        """`micromono.call`, an async import: the callee runs at once, in its caller's slice; if it gives up the
        slice before it finishes, the caller's fiber waits (a continuation wasmtime polls each time the caller is
        resumed), so a chain A -> B -> C yields to the event loop from any depth.

        The handler gets the six arguments, the addresses of the result, the trap slot and the continuation, and
        returns the import's result,
        or None when it filled the continuation (a waiting caller) or the trap itself. It is called by a ctypes
        callback (`_call_import`) or, on the compiled path, by micromono._speedups' C import."""
        engine = self

        def handle(
            tp: int, tl: int, rp: int, rl: int, pp: int, pl: int, results: int, trap: int, cont: int
        ) -> int | None:
            cur = engine._cur
            me = cur.active
            assert me is not None
            try:
                size = me.size
                if tp + tl > size or rp + rl > size or pp + pl > size:
                    me.check("micromono.call", "target", tp, tl)
                    me.check("micromono.call", "request", rp, rl)
                    me.check("micromono.call", "reply buffer", pp, pl)
                mem = me.mem
                r = cur.host.call(me, mem[tp : tp + tl], mem[rp : rp + rl], pp, pl)
                if r.__class__ is int:
                    return r
                key = engine._next_parked
                engine._next_parked = key + 1
                engine._parked[key] = _Parked(r, me, results, trap)  # type: ignore[arg-type]
                me.parked = key
                continuation = _words(cont)
                continuation[0] = engine._continuation_address
                continuation[1] = key
            except BaseException as exc:  # an exception must never escape into wasmtime
                c_void_p.from_address(trap).value = engine._fail(me, exc)
            return None

        ready_callback, ready_env = _READY

        def call_import(
            env: int, caller: int, args: int, nargs: int, results: int, nresults: int, trap: int, cont: int
        ) -> None:
            continuation = _words(cont)
            continuation[0] = ready_callback
            continuation[1] = ready_env
            vals = _call_view(args, results)
            tp, tl, rp, rl, pp, pl = _CALL_VALS(vals)
            r = handle(tp, tl, rp, rl, pp, pl, results, trap, cont)
            if r is not None:
                vals[_CALL_RESULT] = r

        self._call_import = call_import
        return handle

    def _resume_parked(self, key: int) -> bool:
        """The continuation of a waiting `call`: run its callee one more slice; True once the call is over."""
        parked = self._parked[key]
        if parked.fresh:  # the callee just used up the slice: give the loop its turn before running it again
            parked.fresh = False
            return False
        me = parked.caller
        try:
            r = parked.waiting.step()
            if r is None:
                return False
            memoryview((c_ubyte * _VAL_SIZE).from_address(parked.results)).cast("B").cast("i")[2] = r
        except BaseException as exc:  # never out of a ctypes callback
            c_void_p.from_address(parked.trap).value = self._fail(me, exc)
        del self._parked[key]
        me.parked = 0
        return True

    def callee_of(self, instance: Instance) -> Instance | None:
        """The instance `instance`'s suspended `call` waits on, if it waits in one."""
        parked = self._parked.get(instance.parked) if instance.parked else None
        return parked.waiting.callee_instance if parked is not None else None

    def cancel_parked(self, key: int) -> None:
        """Cancel the callee a suspended caller waits on (its caller is about to be cancelled)."""
        parked = self._parked.pop(key, None)
        if parked is not None:
            parked.caller.parked = 0
            parked.waiting.cancel()

    def _make_send(self) -> Callable[..., int]:
        engine = self

        def send(env: int, caller: int, address: int, nargs: int) -> int:
            cur = engine._cur
            me = cur.active
            assert me is not None
            try:
                args = _slots(address, 4)
                tp, tl, mp, ml = _SEND_ARGS(args)
                me.check("micromono.send", "target", tp, tl)
                me.check("micromono.send", "message", mp, ml)
                mem = me.mem
                args[0] = cur.host.send(me, mem[tp : tp + tl], mem[mp : mp + ml])
                cur.active = me
                return 0
            except BaseException as exc:
                return engine._fail(me, exc)

        return send

    def _make_take_reply(self) -> Callable[..., int]:
        engine = self

        def take_reply(env: int, caller: int, args: Any, nargs: int) -> int:
            cur = engine._cur
            me = cur.active
            assert me is not None
            try:
                p, cap = args[0] & _U32, args[4] & _U32
                me.check("micromono.take_reply", "buffer", p, cap)
                held = me.held_reply
                if held is None:
                    me.last_error = (
                        b"take_reply: no reply is held "
                        b"(call take_reply right after a call that returned a length larger than its buffer)"
                    )
                    args[0] = -9
                elif len(held) > cap:
                    me.last_error = f"take_reply: the held reply is {len(held)} bytes, the buffer only {cap}".encode()
                    args[0] = -9
                else:
                    me.view[p : p + len(held)] = held
                    me.held_reply = None
                    args[0] = len(held)
                return 0
            except BaseException as exc:
                return engine._fail(me, exc)

        return take_reply

    def _make_log(self) -> Callable[..., int]:
        engine = self

        def log(env: int, caller: int, args: Any, nargs: int) -> int:
            cur = engine._cur
            me = cur.active
            assert me is not None
            try:
                level, p, n = args[0], args[4] & _U32, args[8] & _U32
                me.check("micromono.log", "message", p, n)
                cur.host.log(me, level, me.mem[p : p + n])
                cur.active = me
                return 0
            except BaseException as exc:
                return engine._fail(me, exc)

        return log

    def _make_last_error(self) -> Callable[..., int]:
        engine = self

        def last_error(env: int, caller: int, args: Any, nargs: int) -> int:
            cur = engine._cur
            me = cur.active
            assert me is not None
            try:
                p, cap = args[0] & _U32, args[4] & _U32
                me.check("micromono.last_error", "buffer", p, cap)
                msg = me.last_error
                n = min(len(msg), cap)
                me.view[p : p + n] = msg[:n]
                args[0] = len(msg)
                return 0
            except BaseException as exc:
                return engine._fail(me, exc)

        return last_error


def _module_from(engine: wasmtime.Engine, data: bytes, offset: int, make: Any) -> wasmtime.Module:
    """unstable: a Module from `data[offset:]` through `wasmtime_module_new` or `_deserialize`, reading the bytes
    object's own buffer (no copy; the GIL is released while wasmtime works)."""
    address = (ctypes.cast(ctypes.c_char_p(data), c_void_p).value or 0) + offset
    out = POINTER(_ffi.wasmtime_module_t)()
    err = make(engine.ptr(), ctypes.cast(address, POINTER(ctypes.c_uint8)), len(data) - offset, ctypes.byref(out))
    if err:
        raise wasmtime.WasmtimeError._from_ptr(err)
    return wasmtime.Module._from_ptr(out)


class _Exports:
    """unstable: an instance's exports looked up by name (`wasmtime_instance_export_get`). wasmtime-py's
    `exports(store)` lists all of them, which takes seconds on the loop for a module with thousands."""

    __slots__ = ("_store", "_instance")

    def __init__(self, store: wasmtime.Store, instance: Any) -> None:
        self._store = store
        self._instance = instance

    def get(self, name: str) -> Any:
        item = _ffi.wasmtime_extern_t()
        raw = name.encode()
        found = _ffi.wasmtime_instance_export_get(
            self._store._context(), ctypes.byref(self._instance), raw, len(raw), ctypes.byref(item)
        )
        return wrap_extern(item) if found else None

    def __getitem__(self, name: str) -> Any:
        found = self.get(name)
        if found is None:
            raise KeyError(name)
        return found


def _summary(message: str) -> str:
    """The cause line of a wasmtime error ("wasm trap: wasm `unreachable` instruction executed"), no backtrace."""
    text = message.strip()
    if "Caused by:" in text:
        cause = [line.strip() for line in text.split("Caused by:", 1)[1].splitlines() if line.strip()]
        if cause:
            return "; ".join(cause)
    return text.splitlines()[0] if text else "unknown failure"


def _describe(ty: Any) -> str:
    if isinstance(ty, wasmtime.FuncType):
        params = ", ".join(str(p) for p in ty.params)
        results = ", ".join(str(r) for r in ty.results)
        return f"func ({params}) -> ({results})"
    return type(ty).__name__.removesuffix("Type").lower()


# The exports docs/abi.md requires, with their types.
_REQUIRED_FUNCS: Final = {
    "mm_abi_version": ((), ("i32",)),
    "mm_inbox": (("i32",), ("i32",)),
    "mm_handle": (("i32", "i32"), ("i64",)),
}
# Optional exports (docs/abi.md, "Hot swap"), with their types when present.
_OPTIONAL_FUNCS: Final = {
    "_initialize": ((), ()),
    "mm_health": ((), ("i32",)),
    "mm_snapshot": ((), ("i64",)),
    "mm_restore": (("i32",), ("i32",)),
}
_HOST_IMPORTS: Final = frozenset({"call", "take_reply", "send", "log", "last_error"})


def _exports_named(module: wasmtime.Module, names: set[str]) -> dict[str, Any]:
    """unstable: the types of `module`'s exports that are among `names`, by name.

    `Module.exports` wraps every export in Python objects, all alive at once: for a module of thousands of exports,
    enough new objects to set off the cyclic garbage collector, whose full collection holds the GIL (and so the
    event loop, whichever thread runs it) for tens of milliseconds. Here each export's name is read through the C
    API and only the wanted ones are wrapped, so the objects made in between are freed as they go.
    """
    found: dict[str, Any] = {}
    exports = _ExportTypeList()
    _ffi.wasmtime_module_exports(module.ptr(), ctypes.byref(exports.vec))
    vec = exports.vec
    name_of = _ffi.wasm_exporttype_name
    for i in range(vec.size):
        ptr = vec.data[i]
        name = name_of(ptr).contents
        text = ctypes.string_at(name.data, name.size).decode("utf-8", "replace")
        if text in names:
            found[text] = wasmtime.ExportType._from_ptr(ptr, exports).type
    return found


class _Shared:
    """What one module's bytes compile to, shared by every `CompiledModule` built from them in one Engine: the
    wasmtime Module (machine code and memory image), its InstancePre, and the ABI analysis of its exports and
    imports. `abi_checked` is the module's too: the version a module answers does not depend on the service."""

    __slots__ = (
        "module", "pre", "problems", "link_error", "uses_wasi", "has_health", "can_snapshot", "can_restore",
        "abi_checked", "__weakref__",
    )  # fmt: skip

    def __init__(self, engine: Engine, module: wasmtime.Module) -> None:
        self.module = module
        self.abi_checked = False  # set once an instance has answered mm_abi_version() == ABI_VERSION
        self.uses_wasi = False
        self.problems = self._analyse()
        self.pre: wasmtime.InstancePre | None = None
        self.link_error: str | None = None
        if not self.problems:
            try:
                self.pre = engine._linker.instantiate_pre(module)
            except wasmtime.WasmtimeError as exc:
                self.link_error = str(exc)

    def _analyse(self) -> list[str]:
        problems: list[str] = []
        exports = _exports_named(self.module, {"memory", *_REQUIRED_FUNCS, *_OPTIONAL_FUNCS})
        if not isinstance(exports.get("memory"), wasmtime.MemoryType):
            problems.append('it does not export its linear memory as "memory"')
        for required, funcs in ((True, _REQUIRED_FUNCS), (False, _OPTIONAL_FUNCS)):
            for name, (params, results) in funcs.items():
                ty = exports.get(name)
                want = f"func ({', '.join(params)}) -> ({', '.join(results)})"
                if ty is None:
                    if required:
                        problems.append(f"it does not export {name} ({want})")
                elif (
                    not isinstance(ty, wasmtime.FuncType)
                    or tuple(str(p) for p in ty.params) != params
                    or tuple(str(r) for r in ty.results) != results
                ):
                    problems.append(f"its export {name} is {_describe(ty)}, expected {want}")
        self.has_health = "mm_health" in exports
        self.can_snapshot = "mm_snapshot" in exports
        self.can_restore = "mm_restore" in exports
        for imp in self.module.imports:
            if imp.module == _WASI_MODULE:
                self.uses_wasi = True
            elif imp.module != _HOST_MODULE or imp.name not in _HOST_IMPORTS:
                problems.append(
                    f"it imports {imp.module}.{imp.name}, which micromono does not provide "
                    f"(available: micromono.{{{','.join(sorted(_HOST_IMPORTS))}}} and {_WASI_MODULE}.*)"
                )
        return problems


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
        self.uses_wasi = shared.uses_wasi
        self.has_health = shared.has_health
        self.can_snapshot = shared.can_snapshot
        self.can_restore = shared.can_restore
        if shared.problems:
            raise ServiceLoadError(
                service,
                str(path),
                f"does not follow the micromono guest ABI v{ABI_VERSION} (docs/abi.md): "
                + "; ".join(shared.problems)
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
        return Instance(self, memory_limit=memory_limit, owner=owner, on_output=on_output, env=env, dirs=dirs)


#: CPU seconds the start-up entries (instantiation with the start function, `_initialize`, `mm_abi_version`,
#: `mm_inbox`) and the hot-swap entries (`mm_health`, `mm_snapshot`, `mm_restore`) may take, each.
START_TIMEOUT: Final = 10.0

# Offsets into an instance's three wasmtime_val_t (two arguments, one result; 32 bytes each): as i32 ("i") the
# arguments are at 2 and 10 and the result at 18; as i64 ("q") the result is at 9.
_ARG0, _ARG1, _RES32, _RES64 = 2, 10, 18, 9


class Instance:
    """One guest instance in its own Store.

    Every entry into the guest is a wasmtime async call on a fiber, which gives up at the end of its slice (the
    next epoch tick after it began) and hands control back to whoever polled it. An entry method (`boot`, `begin`,
    `health`, `snapshot`, `restore`) returns its result when the guest finished within the slice, or None when it
    is suspended; `step()` runs it one more slice, with the same result-or-None, and `cancel()` drops it. The
    caller decides when the next slice runs (the router: once per event-loop iteration); `finish()` runs the rest at
    once, for tools and tests.

    Not re-entrant: one entry at a time (the service's pool sees to that). After a failed entry or a cancel the
    instance is `poisoned` (its memory may be inconsistent) and must be closed, not reused.

    Attributes the router sets and reads: `owner`, `deadline` (time.monotonic() seconds; the epoch callback
    interrupts the guest past it), `depth`, `held_reply`, `last_error`; `parked` is the engine's.
    """

    __slots__ = (
        "compiled", "owner", "deadline", "depth", "held_reply", "last_error", "poisoned", "view", "mem", "size",
        "inbox", "inbox_cap", "parked", "_engine", "_store", "_memory", "_ctx", "_mem_addr", "_vals", "_v32", "_v64",
        "_trap", "_err", "_trap_word", "_err_word", "_handle_args", "_future", "_then", "_entry", "_deadline_args",
        "_armed", "_interrupted", "_closed", "_keep", "_exports", "_base", "_fast", "_raw_instance",
        "booting", "sends", "_cold", "_ticker",
    )  # fmt: skip

    def __init__(
        self,
        compiled: CompiledModule,
        *,
        memory_limit: int,
        owner: Any,
        on_output: Callable[[int, bytes], None] | None,
        env: tuple[tuple[str, str], ...] = (),
        dirs: tuple[tuple[str, str, bool], ...] = (),
    ):
        self.compiled = compiled
        self.owner = owner
        self.deadline = float("inf")
        self.depth = 0
        self.held_reply: bytes | None = None
        self.last_error = b""
        self.poisoned = False
        self.parked = 0  # the engine's key of the `call` this instance waits in, or 0
        self.sends = 0  # the router's count of `send`s in the current entry
        self._interrupted = False
        self._closed = False
        self._engine = compiled.engine
        self._ticker = self._engine._ticker
        service, where = compiled.service, str(compiled.path)
        store = wasmtime.Store(self._engine._engine)
        self._store = store
        store.set_limits(memory_size=memory_limit, instances=1, tables=4, memories=1)
        if compiled.uses_wasi:
            wasi = wasmtime.WasiConfig()  # nothing granted unless the manifest says so: no files, no environment
            if env:
                wasi.env = env
            for host, guest, writable in dirs:
                try:
                    wasi.preopen_dir(host, guest, writable)
                except wasmtime.WasmtimeError as exc:
                    store.close()
                    raise ServiceLoadError(
                        service, where, f"cannot grant directory {host} as {guest}: it must exist and be readable"
                    ) from exc
            if on_output is not None:
                out = on_output
                wasi.stdout_custom = lambda data: out(-1, data)
                wasi.stderr_custom = lambda data: out(-2, data)
            store.set_wasi(wasi)
        self._ctx = ctypes.cast(store._context(), c_void_p).value or 0
        self._install_deadline()
        # unstable: every entry's arguments and result in one wasmtime_val_t[3], and the trap and error slots.
        self._vals = (_b.wasmtime_val_t * 3)()
        raw = memoryview(self._vals).cast("B")
        self._v32 = raw.cast("i")
        self._v64 = raw.cast("q")
        self._trap = c_void_p(0)
        self._err = c_void_p(0)
        self._trap_word = memoryview(self._trap).cast("B").cast("Q")  # the slots, read without ctypes
        self._err_word = memoryview(self._err).cast("B").cast("Q")
        self._future: Any = None  # the suspended entry's wasmtime_call_future_t (as `_at` passes it), or None
        self._armed = -1  # CLOCK.tick when the epoch deadline was last set (`_arm`)
        self._then: Callable[[], Any] | None = None  # what a finished entry returns (None: mm_handle's reply)
        self._entry: str | None = None  # the export being run, in errors (None: mm_handle)
        self.booting = False
        self._deadline_args = (_word_arg(self._ctx), _word_arg(2))  # set_epoch_deadline(context, 2 ticks)
        self._handle_args: tuple[Any, ...] = ()
        self._keep: tuple[Any, ...] = ()
        self._cold: Any = None
        self._exports: Any = None
        self.view = memoryview(b"")
        self.mem: _Bytes = b""
        self.size = 0
        self.inbox = 0
        self.inbox_cap = 0
        self._base = 0
        self._mem_addr = 0
        self._fast: bytes | None = None  # invoke's addresses for micromono._speedups, _FAST_ARGS (set by reserve)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "poisoned" if self.poisoned else "suspended" if self._future else "ready"
        return f"<Instance {self.compiled.service} sha256={self.compiled.sha256[:12]} [{state} | memory: {self.size}]>"

    def __enter__(self) -> Instance:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _install_deadline(self) -> None:
        """unstable: the store's fiber yields whenever the epoch reaches its deadline, and the deadline moves on one
        tick (`wasmtime_context_epoch_deadline_async_yield_and_update`), with no callback into Python: a slice ends
        without the GIL. Each entry sets the deadline two ticks ahead (`_arm`), so a short call never yields; the
        CPU deadline (`self.deadline`) is checked each time a suspended entry is resumed (`step`)."""
        _yield_and_update(self._ctx, 1)

    # --- running entries ----------------------------------------------------------------------------------------

    def _start(self, fn: Any, args: tuple[Any, ...]) -> Any:
        """Start an async entry (`fn(*args)` returns its future) and run its first slice."""
        cur = self._engine._cur
        prev = cur.active
        cur.active = self
        self._ticker.busy()
        if self._armed != CLOCK.tick:
            self._arm()
        future = _at(_NOWHERE, fn(*args))
        done = _future_poll(future)
        cur.active = prev
        if not done:
            self._future = future
            return None
        _future_delete(future)
        return self._complete()

    def _arm(self) -> None:
        """Set the store's epoch deadline two ticks ahead, so the entry about to run gives up its slice at the second
        tick at the latest, and a short one at none. Done at most once per tick per store: the deadline it sets holds
        for every entry that begins before the next tick."""
        _set_epoch_deadline(*self._deadline_args)
        self._armed = CLOCK.tick

    def step(self) -> Any:
        """Run the suspended entry one more slice: its result when it finished, None while it still runs.

        Raises what the entry raises (see the entry methods).
        """
        if _monotonic() > self.deadline:
            self._expire()
        cur = self._engine._cur
        prev = cur.active
        cur.active = self
        self._ticker.busy()
        future = self._future
        done = _future_poll(future)
        cur.active = prev
        if not done:
            return None
        self._future = None
        _future_delete(future)
        return self._complete()

    def _expire(self) -> None:
        """The suspended entry is past its deadline: drop it and raise the timeout. Always raises."""
        self.cancel()
        self._interrupted = True
        self._raise_failure()

    def finish(self, result: Any) -> Any:
        """Given an entry method's result, run the entry to its end here, slice after slice, and return its result
        (blocking: for tools and tests)."""
        while result is None:
            result = self.step()
        return result

    @property
    def suspended(self) -> bool:
        """Whether an entry is suspended (between slices)."""
        return self._future is not None

    def cancel(self) -> None:
        """Drop the suspended entry (and, first, whatever call it waits on): the guest does not run again. The
        instance is poisoned. Idempotent."""
        if self.parked:
            self._engine.cancel_parked(self.parked)
        future = self._future
        if future is not None:
            self._future = None
            _future_delete(future)
            self.poisoned = True
        self._trap_word[0] = 0
        self._err_word[0] = 0

    def _complete(self) -> Any:
        if self._trap_word[0] or self._err_word[0]:
            self._raise_failure()
        then = self._then
        if then is None:
            return self._reply()
        self._then = None
        return then()

    def _call(self, func: Any, nargs: int, nresults: int) -> tuple[Any, ...]:
        """The call_async arguments for an export (cold entries; mm_handle's are prebuilt). The Func is kept until
        the next cold entry: wasmtime reads it through the address passed."""
        self._cold = func
        vals = ctypes.addressof(self._vals)
        return (
            _word_arg(self._ctx), _word_arg(ctypes.addressof(func._func)), _word_arg(vals), _word_arg(nargs),
            _word_arg(vals + 2 * _VAL_SIZE), _word_arg(nresults), self._trap_slots[0], self._trap_slots[1],
        )  # fmt: skip

    @property
    def _trap_slots(self) -> tuple[Any, Any]:
        return ctypes.byref(self._trap), ctypes.byref(self._err)

    # --- boot ---------------------------------------------------------------------------------------------------

    def boot(self) -> Instance | None:
        """Instantiate (running the module's start function), run `_initialize`, check `mm_abi_version` and ask
        for the inbox. Returns the instance when it is ready, None while suspended (then `step()`).

        Raises:
            ServiceLoadError: any of it failed or ran past START_TIMEOUT; the instance is closed.
        """
        self.deadline = time.monotonic() + START_TIMEOUT
        self.booting = True
        self._raw_instance = _b.wasmtime_instance_t()
        pre = ctypes.cast(self.compiled._pre.ptr(), c_void_p).value or 0
        args = (
            _word_arg(pre), _word_arg(self._ctx), _word_arg(ctypes.addressof(self._raw_instance)),
            *self._trap_slots,
        )  # fmt: skip
        self._entry = "instantiation (the start function)"
        self._then = self._booted
        return self._start(_instantiate_async, args)  # type: ignore[no-any-return]

    def _booted(self) -> Instance | None:
        store = self._store
        exports = self._exports = _Exports(store, self._raw_instance)
        memory = exports["memory"]
        handle = exports["mm_handle"]
        self._memory = memory
        self._mem_addr = ctypes.addressof(memory._memory)
        vals = ctypes.addressof(self._vals)
        # wasmtime_func_call_async(context, mm_handle, args[2], 2, &result, 1, &trap, &err), as arguments built once.
        self._handle_args = (
            _word_arg(self._ctx), _word_arg(ctypes.addressof(handle._func)), _word_arg(vals),
            _word_arg(2), _word_arg(vals + 2 * _VAL_SIZE), _word_arg(1), *self._trap_slots,
        )  # fmt: skip
        self._keep = (handle, self._raw_instance)
        self.refresh()
        init = exports.get("_initialize")
        if init is not None:
            self._entry = "_initialize"
            self._then = self._initialized
            return self._start(_call_async, self._call(init, 0, 0))  # type: ignore[no-any-return]
        return self._initialized()

    def _initialized(self) -> Instance | None:
        if self.compiled.abi_checked:  # the version is the module's: asked once per module
            return self._versioned()
        self._entry = "mm_abi_version"
        self._then = self._versioned
        return self._start(_call_async, self._call(self._exports["mm_abi_version"], 0, 1))  # type: ignore[no-any-return]

    def _versioned(self) -> Instance | None:
        compiled = self.compiled
        if not compiled.abi_checked:
            version = self._v32[_RES32]
            if version != ABI_VERSION:
                raise self._boot_error(
                    f"mm_abi_version() returned {version}, but this daemon speaks guest ABI v{ABI_VERSION}; "
                    "rebuild it with a matching SDK"
                )
            compiled.abi_checked = True
        ready: Instance | None = self._reserve(DEFAULT_INBOX, self._ready)
        return ready

    def _ready(self) -> Instance:
        self._entry = None
        self.booting = False
        self.deadline = float("inf")
        return self

    def _boot_error(self, message: str) -> ServiceLoadError:
        self.poisoned = True
        self.close()
        return ServiceLoadError(self.compiled.service, str(self.compiled.path), message)

    # --- the inbox ----------------------------------------------------------------------------------------------

    def _reserve(self, length: int, then: Callable[[], Any]) -> Any:
        """Ask the guest (`mm_inbox`) for an inbox of `length` bytes, then go on with `then()`."""
        self._v32[_ARG0] = length
        self._entry = "mm_inbox"

        def took() -> Any:
            self._entry = None
            ptr = self._v32[_RES32] & _U32
            if ptr == 0 or ptr + length > max(self.size, self.refresh()):
                if self.booting:
                    raise self._boot_error(f"mm_inbox({length}) gave no buffer (it returned {ptr})")
                service = self.compiled.service
                raise RequestTooLarge(
                    service, f"service {service!r} cannot take a request of {length} bytes (mm_inbox returned {ptr})"
                )
            self.inbox = ptr
            self.inbox_cap = length
            self._fast = _FAST_ARGS.pack(*self._fast_addresses(), self._base + ptr, length, self._ticker.address)
            return then()

        self._then = took
        return self._start(_call_async, self._call(self._exports["mm_inbox"], 1, 1))

    def _fast_addresses(self) -> tuple[int, int, int, int, int]:
        vals = ctypes.addressof(self._vals)
        handle = self._keep[0]
        trap, err = ctypes.addressof(self._trap), ctypes.addressof(self._err)
        return (self._ctx, ctypes.addressof(handle._func), vals, trap, err)

    def refresh(self) -> int:
        """Re-read the memory's size (the guest may have grown it) and rebuild the cached view."""
        base = self._base = _memory_data(self._ctx, self._mem_addr)  # never moves: memory_may_move is off
        size = self.memory_size()
        # Two handles on the same bytes: `view` to write into (a memoryview slice assignment is one copy) and `mem`,
        # a c_char array, to read out of (its slice is a new bytes object at once, cheaper than a memoryview slice).
        mem = (c_char * size).from_address(base) if size else b""
        self.mem = cast(_Bytes, mem)  # typeshed types a c_char array's slice as a list; ctypes makes it bytes
        self.view = memoryview(mem).cast("B")
        self.size = size
        return size

    def memory_size(self) -> int:
        """The linear memory's size now (the guest may have grown it), without rebuilding the cached view: what a
        scrape reads for every idle instance."""
        if not self._mem_addr:
            return 0
        size: int = _memory_data_size(self._ctx, self._mem_addr)
        return size

    def check(self, where: str, what: str, ptr: int, length: int) -> None:
        """Raise `_GuestFault` unless `[ptr, ptr+length)` (unsigned) lies inside this instance's memory."""
        if ptr + length > self.size and ptr + length > self.refresh():
            raise _GuestFault(
                f"{where}: {what} (ptr={ptr}, len={length}) is outside linear memory of {self.size} bytes"
            )

    # --- the hot path -------------------------------------------------------------------------------------------

    def begin(self, kind: int, request: bytes | memoryview) -> bytes | None:
        """The hot path: copy `request` into the inbox and start `mm_handle(kind, len)`. Returns the reply (a copy)
        when the guest finished within its slice, None while it is suspended (then `step()`).

        This is the pure-Python path; `use_speedups(True)` swaps in `_begin_compiled`, which gives the same
        results through micromono._speedups.

        Raises:
            GuestTrap / AbiViolation / CallTimeout / GuestAppError / RequestTooLarge (the instance is
            `poisoned` after any of them but RequestTooLarge and GuestAppError).
        """
        n = len(request)
        if n > self.inbox_cap:
            return self._reserve(n, lambda: self.begin(kind, request))  # type: ignore[no-any-return]
        p = self.inbox
        self.view[p : p + n] = request
        v = self._v32
        v[2] = kind
        v[10] = n
        cur = self._engine._cur
        prev = cur.active
        cur.active = self
        ticker = self._ticker
        ticker.active = True
        if ticker.waiting:
            ticker.busy()
        if self._armed != CLOCK.tick:
            self._arm()
        future = _at(_NOWHERE, _call_async(*self._handle_args))
        done = _future_poll(future)
        cur.active = prev
        if not done:
            self._future = future
            return None
        _future_delete(future)
        if self._trap_word[0] or self._err_word[0]:
            self._raise_failure()
        r = self._v64[9]
        if r < 0:
            raise self._app_error(r)
        ptr = r >> 32
        end = ptr + (r & _U32)
        if end > self.size and end > self.refresh():
            raise self._reply_outside(r)
        return self.mem[ptr:end]

    def invoke(self, kind: int, request: bytes | memoryview) -> bytes:
        """`begin`, run to the end here (blocking: for tools and tests)."""
        reply: bytes = self.finish(self.begin(kind, request))
        return reply

    def _reply(self) -> bytes:
        r = self._v64[_RES64]
        if r < 0:
            raise self._app_error(r)
        ptr = r >> 32
        end = ptr + (r & _U32)
        if end > self.size and end > self.refresh():
            raise self._reply_outside(r)
        return self.mem[ptr:end]

    def _begin_compiled(self, kind: int, request: bytes | memoryview) -> bytes | None:
        """`begin` through micromono._speedups: the copy, the async call's first slice and the reply slice in one C
        call."""
        cur = self._engine._cur
        prev = cur.active
        cur.active = self
        ticker = self._ticker
        if ticker.address == 0:  # Python's ticker; _speedups.begin marks the native one busy itself
            ticker.active = True
            if ticker.waiting:
                ticker.busy()
        result = _speedups_begin(self._fast, self.view, kind, request)
        cur.active = prev
        if result.__class__ is bytes:
            return result
        code, value = result
        if code == _SUSPENDED:
            self._future = _at(_NOWHERE, value)
            return None
        if code == _TOO_LARGE:
            return _PURE_BEGIN(self, kind, request)  # the pure path grows the inbox
        if code == _FAILED:
            self._raise_failure()
        return self._reply()  # CHECK_REPLY: the result is in the values, as the pure path leaves it

    def _app_error(self, r: int) -> GuestAppError:
        service = self.compiled.service
        return GuestAppError(service, f"service {service!r} returned application error {-r}", -r)

    def _reply_outside(self, r: int) -> AbiViolation:
        self.poisoned = True
        service = self.compiled.service
        return AbiViolation(
            service,
            f"service {service!r} broke the ABI: mm_handle returned a reply (ptr={r >> 32}, len={r & _U32}) "
            f"outside its linear memory of {self.size} bytes",
        )

    def _raise_failure(self) -> None:
        """Translate the trap or error left by a failed entry into a micromono exception. Always raises."""
        self.poisoned = True
        service = self.compiled.service
        trap_ptr, err_ptr = self._trap_word[0], self._err_word[0]
        self._trap_word[0] = 0
        self._err_word[0] = 0
        self._then = None
        if trap_ptr:
            message = str(wasmtime.Trap._from_ptr(ctypes.cast(trap_ptr, POINTER(_ffi.wasm_trap_t))))
        elif err_ptr:
            message = str(wasmtime.WasmtimeError._from_ptr(ctypes.cast(err_ptr, POINTER(_ffi.wasmtime_error_t))))
        else:
            message = "unknown failure"
        cur = self._engine._cur
        pending, cur.pending = cur.pending, None
        entry, self._entry = self._entry, None
        interrupted, self._interrupted = self._interrupted, False
        if pending is not None:
            raise pending
        if self.booting:
            if interrupted:
                raise self._boot_error(
                    f"failed to start an instance: ran past its {START_TIMEOUT:g} s deadline in {entry}"
                )
            if entry == "mm_inbox":
                why = _summary(message)
                raise self._boot_error(f"mm_inbox({DEFAULT_INBOX}) failed: service {service!r} trapped: {why}")
            raise self._boot_error(f"failed to start an instance: {_summary(message)}")
        if interrupted:
            if entry is not None:
                raise CallTimeout(service, f"service {service!r} ran past its deadline in {entry}")
            raise CallTimeout.interrupted(service)
        where = f" in {entry}" if entry is not None else ""
        raise GuestTrap(service, f"service {service!r} trapped{where}: {_summary(message)}", message)

    # --- hot swap (cold entries) --------------------------------------------------------------------------------

    def _export(self, name: str, nargs: int, nresults: int, then: Callable[[], Any]) -> Any:
        service = self.compiled.service
        func = self._exports.get(name)
        if func is None:
            raise AbiViolation(service, f"service {service!r} does not export {name}")
        self.deadline = time.monotonic() + START_TIMEOUT
        self._entry = name

        def done() -> Any:
            self._entry = None
            self.deadline = float("inf")
            return then()

        self._then = done
        return self._start(_call_async, self._call(func, nargs, nresults))

    def health(self) -> int | None:
        """Start the optional `mm_health` export; 0 means healthy (docs/abi.md). None while suspended."""
        return self._export("mm_health", 0, 1, lambda: self._v32[_RES32])  # type: ignore[no-any-return]

    def snapshot(self) -> bytes | None:
        """Start `mm_snapshot`; its result is a copy of the state it returns. None while suspended.

        Raises:
            AbiViolation: no such export, an error result, or a state outside memory.
            GuestTrap / CallTimeout: it failed.
        """
        service = self.compiled.service

        def state() -> bytes:
            r = self._v64[_RES64]
            if r < 0:
                raise AbiViolation(service, f"service {service!r}: mm_snapshot returned error {-r}")
            ptr, n = r >> 32, r & _U32
            if ptr + n > self.size and ptr + n > self.refresh():
                raise AbiViolation(
                    service, f"service {service!r}: mm_snapshot state (ptr={ptr}, len={n}) is outside memory"
                )
            return self.mem[ptr : ptr + n]

        return self._export("mm_snapshot", 0, 1, state)  # type: ignore[no-any-return]

    def restore(self, state: bytes) -> int | None:
        """Copy `state` into the inbox and start `mm_restore(len)`, which must return 0. Returns 0 once taken,
        None while suspended.

        Raises:
            AbiViolation / GuestTrap / CallTimeout / RequestTooLarge: the state was not taken.
        """
        service = self.compiled.service

        def taken() -> int:
            result = self._v32[_RES32]
            if result != 0:
                raise AbiViolation(service, f"service {service!r}: mm_restore refused the state (returned {result})")
            return 0

        def copy_and_restore() -> int | None:
            self.view[self.inbox : self.inbox + len(state)] = state
            self._v32[_ARG0] = len(state)
            return self._export("mm_restore", 1, 1, taken)  # type: ignore[no-any-return]

        if len(state) > self.inbox_cap:
            return self._reserve(len(state), copy_and_restore)  # type: ignore[no-any-return]
        return copy_and_restore()

    def close(self) -> None:
        """Drop a suspended entry, the memory view and the Store. Idempotent."""
        if self._closed:
            return
        self.cancel()
        self._closed = True
        base, size = self._base, self.memory_size()
        self.view = memoryview(b"")
        self.mem = b""
        self.size = 0
        self._fast = None
        self._exports = self._memory = self._cold = None
        self._keep = ()
        self._engine._reaper.dispose(self._store, base, size)


class _Reaper:
    """A thread that frees closed Stores, off the event loop's thread.

    Freeing a Store unmaps its linear memory, and unmapping a memory the guest filled (a guest that grew to its
    limit and touched every page) takes milliseconds for each hundred MiB, all of it holding the process's
    address-space lock for writing: the loop thread, wanting to map memory for a new instance or to take a page
    fault in a guest, would wait for all of it. So the reaper first gives the memory's pages back a few MiB at a
    time (`madvise(MADV_DONTNEED)`, which holds the lock only for reading, a chunk at a time), then frees the Store,
    whose unmapping is then quick. A Store may be freed on any thread once nothing uses it.
    """

    #: Bytes given back per madvise call.
    CHUNK: Final = 4 << 20
    #: Stores waiting to be freed past which `dispose` frees them itself.
    BACKLOG: Final = 4

    def __init__(self, setup: Callable[[], None] | None) -> None:
        self._queue: queue.SimpleQueue[tuple[wasmtime.Store, int, int] | None] = queue.SimpleQueue()
        self._setup = setup
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="micromono-reaper", daemon=True)
        self._thread.start()

    def dispose(self, store: wasmtime.Store, base: int, size: int) -> None:
        """Free `store`, whose linear memory is `size` bytes at `base` (0 if none was made)."""
        if self._stopped or self._queue.qsize() >= self.BACKLOG:
            # After its engine, or while the reaper is behind (a guest that fills and drops memory faster than it
            # can be given back): here, so that closed Stores never pile up.
            store.close()
        else:
            self._queue.put((store, base, size))

    def _run(self) -> None:
        if self._setup is not None:
            self._setup()
        chunk = self.CHUNK
        while (item := self._queue.get()) is not None:
            store, base, size = item
            if _madvise is not None and base and size > chunk:
                for offset in range(0, size - size % _PAGE, chunk):
                    _madvise(c_void_p(base + offset), c_size_t(min(chunk, size - offset)), _MADV_DONTNEED)
            store.close()
            del store, item

    def stop(self) -> None:
        """Free what is queued, then end the thread."""
        self._stopped = True
        self._queue.put(None)
        self._thread.join()


def _libc_madvise() -> Any:
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise  # a CDLL: the GIL is released while the kernel works
    except (OSError, AttributeError):
        return None
    madvise.restype = ctypes.c_int
    madvise.argtypes = [c_void_p, c_size_t, ctypes.c_int]
    return madvise


_madvise = _libc_madvise() if sys.platform == "linux" else None
_MADV_DONTNEED: Final = 4
_PAGE: Final = 65536  # a wasm page: linear memories are whole pages


_PURE_BEGIN = Instance.begin
if os.environ.get("MICROMONO_SPEEDUPS") == "1":
    use_speedups(True)
