"""Time for guests: the deadline clock (`DeadlineClock`, `CLOCK`, `DEADLINE_SLACK`), the slice and its pacing
(`SLICE_SECONDS`, `busy_slice`), and the epoch tickers that end slices (`Ticker` on the pure path, `NativeTicker`,
a thread of micromono._speedups', on the compiled path).

Owns the only threads that advance wasmtime's epoch and the clock. It must not run guest code, touch instances or
know about the event loop: a ticker only counts time and ends whichever slice is running; the instance decides
what a tick means (`Instance.step` checks deadlines).
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import sys
import threading
import time
import weakref
from collections.abc import Callable
from ctypes import c_uint64, c_void_p
from types import ModuleType
from typing import Final

import wasmtime

from micromono._accelerate import speedups as _speedups
from micromono._accelerate import speedups_status

from .ffi import _increment_epoch

__all__ = [
    "CLOCK",
    "DEADLINE_SLACK",
    "EPOCH_TICK_SECONDS",
    "SLICE_SECONDS",
    "DeadlineClock",
    "NativeTicker",
    "Ticker",
    "busy_slice",
]

#: The default slice: the epoch ticker's period, so the longest a guest runs before it gives the event loop back
#: (and how late a CPU deadline may be noticed). Set per daemon with `daemon.slice`.
SLICE_SECONDS: Final = 0.0005
EPOCH_TICK_SECONDS: Final = SLICE_SECONDS


class DeadlineClock(ctypes.Structure):
    """The clock call deadlines are set by: `now` is `time.monotonic()` as of the epoch ticker's last tick, and
    `tick` counts the ticks (a guest yields once a tick has passed since its slice began).

    A C struct (a double and a uint64), so that the compiled path's ticker thread (`NativeTicker`) writes it
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
    below 0.1 ms (each yield and resume costs the loop time of its own), nor above `slice_s`."""
    return min(slice_s, max(slice_s / 5, 0.0001))


#: The process's deadline clock, advanced by every Engine's ticker.
CLOCK: Final = DeadlineClock(time.monotonic(), 0)
#: What a deadline adds to a timeout to cover `CLOCK`'s lag (a 10 ms tick's worth at least, whatever the slice).
DEADLINE_SLACK: Final = 0.01 + sys.getswitchinterval()


class Ticker:
    """The epoch ticker: a thread that advances the engine's epoch (and `CLOCK`) every `period` seconds while guests
    run, and sleeps while none does.

    Each tick ends the slice of whichever guest is running (the guest's deadline callback sees the tick and
    yields). It needs the GIL only for a moment per tick, and gets it at once while a guest runs, since the loop
    thread releases the GIL around every entry into wasm. A POSIX timer calling
    `wasmtime_engine_increment_epoch` with no Python at all was tried and measured slower here: glibc starts a new
    thread for every expiry, and each thread start and exit cost the serving thread more than the GIL hand-off.

    Idle: every tick wakes this thread and takes the GIL, which at a slice's rate adds up to a noticeable share of a
    CPU for a daemon doing nothing. So after `IDLE_TICKS` ticks in which no guest entry began or resumed, it waits
    until one does: every entry calls `busy()`, which only sets a flag, and wakes the thread when it was waiting.
    """

    #: Ticks without a guest entry after which the ticker waits for one instead of ticking.
    IDLE_TICKS: Final = 20
    #: The longest idle wait between two ticks (seconds): a guard against a guest running while the ticker waits,
    #: seen on the compiled path under heavy load (micromono/_speedups.c, IDLE_HEARTBEAT_NS, which this matches).
    IDLE_HEARTBEAT: Final = 0.010

    __slots__ = ("_engine", "_setup", "period", "_stopped", "_wake", "active", "waiting", "_thread")

    #: Not a native ticker (see `NativeTicker.address`).
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
                # An entry between the last tick and `waiting` would not have woken us. The wait is bounded like the
                # native ticker's (see IDLE_HEARTBEAT): at its end, one tick, then wait again.
                woken = self.active or wake.wait(self.IDLE_HEARTBEAT)
                self.waiting = False
                idle = 0 if woken or self.active else self.IDLE_TICKS - 1
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


class NativeTicker:
    """The compiled path's epoch ticker: the same ticks as `Ticker`, from a thread of micromono._speedups' that never
    takes the GIL (it runs `setup` once, with the GIL, as it starts).

    `Ticker`'s ticks each need the GIL for a moment, and the loop thread, which holds it between slices, waits for
    the hand-off about once per slice; this one writes `CLOCK` and advances the epoch from C, so a slice costs the
    loop only the guest's own yield and resume. Its interface is `Ticker`'s: entries set `active` and call
    `busy()` when `waiting`; here `waiting` is always true, so every entry calls `busy()`, one C call that also
    wakes the thread when it waits for an entry (after `Ticker.IDLE_TICKS` idle ticks, as `Ticker` does), except
    `_speedups.begin`, which marks it busy itself through `address`.
    """

    __slots__ = ("_capsule", "_native", "_engine", "period", "active", "busy", "address", "__weakref__")

    waiting: Final = True  # every entry calls `busy()`: the idle state is the C thread's

    def __init__(self, engine: wasmtime.Engine, period: float, setup: Callable[[], None] | None) -> None:
        if _speedups is None:
            raise RuntimeError(f"the compiled path's epoch ticker needs micromono._speedups: {speedups_status()}")
        self._native: ModuleType = _speedups
        self._engine = engine  # kept alive as long as the thread calls into it
        self.period = period
        self.active = False  # unused: entries set it, as they do `Ticker`'s
        CLOCK.now = time.monotonic()
        self._capsule = self._native.ticker_start(
            ctypes.cast(engine.ptr(), c_void_p).value,
            ctypes.cast(_increment_epoch, c_void_p).value,
            ctypes.addressof(CLOCK),
            max(1000, round(period * 1e9)),
            setup,
        )
        self.busy: Callable[[], None] = functools.partial(self._native.ticker_busy, self._capsule)
        self.address: int = self._native.ticker_address(self._capsule)  # _speedups.begin marks it busy itself
        _NATIVE_TICKERS.add(self)

    @property
    def idle(self) -> bool:
        """Whether the thread waits for a guest entry (after `Ticker.IDLE_TICKS` ticks without one)."""
        return self._capsule is not None and bool(self._native.ticker_waiting(self._capsule))

    def pace(self, period: float) -> None:
        """Tick every `period` seconds from the next tick on."""
        if self._capsule is not None:
            self._native.ticker_set_period(self._capsule, max(1000, round(period * 1e9)))

    def stop(self) -> None:
        if self._capsule is not None:
            capsule, self._capsule = self._capsule, None
            self._native.ticker_stop(capsule)
            _NATIVE_TICKERS.discard(self)

    def __del__(self) -> None:
        # The thread ticks the engine this object keeps alive (at least once per idle heartbeat): it must end first.
        if getattr(self, "_capsule", None) is not None:
            self.stop()


#: The native tickers running: stopped at exit, before the interpreter frees the engines they tick.
_NATIVE_TICKERS: weakref.WeakSet[NativeTicker] = weakref.WeakSet()


@atexit.register
def _stop_native_tickers() -> None:
    for ticker in list(_NATIVE_TICKERS):
        ticker.stop()
