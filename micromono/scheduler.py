"""Guest runs that outlast their first slice, taking turns with the event loop.

Every entry into a guest (`engine.Instance.begin`, `boot`, `health`, ...) runs its first slice at once, on the
event loop's thread. Most finish within it. One that does not is *suspended* (its wasmtime fiber gave up at the end
of the slice, an epoch tick), and whoever started it hands it here as a `Run`. The scheduler resumes one run per
event-loop iteration, round robin: everything else the loop has to do (reading new requests, serving them, writing
replies, timers) happens between two slices, so no guest holds the loop for more than one slice however long it
runs, and runs that are all long share the CPU in turns.

A slice is long enough that a run's yields cost little, and short enough that what waits behind it waits little;
which matters depends on whether anything waits. So the scheduler tells whoever sets the slice (`on_contention`,
the engine's `pace`) when the loop starts or stops having other work beside the runs: whoever starts top-level work
(the router, for each ingress request and message) counts it in `arrivals`, and a slice that finds the count moved
since the last one reports contention at once; its end comes after `BUSY_HOLD` without an arrival seen by a slice
(with no run left, after `BUSY_HOLD` whatever arrives). So a loop serving a steady stream beside long runs slices
them short, a long run alone keeps long slices (the calls it makes itself are not arrivals), and short requests
alone never pay for short ticks for long.

This module knows nothing about services or guests: a `Run` is anything with `step()` and `cancel()`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import structlog

__all__ = ["BUSY_HOLD", "Run", "Scheduler"]

#: How long after the last arrival the loop still counts as contended (seconds).
BUSY_HOLD = 0.005

T = TypeVar("T")

log = structlog.get_logger(__name__)


class Run(Protocol):
    """A suspended guest run."""

    def step(self) -> bool:
        """Run one more slice. True when the run is over (it has delivered its own result or error); must not
        raise."""
        ...

    def cancel(self) -> None:
        """Stop the run for good (the daemon is stopping), delivering a failure to whoever waits for it."""
        ...


class Scheduler:
    """Resumes suspended runs one slice per event-loop iteration, round robin.

    Args:
        clock: seconds, monotonic (`time.perf_counter` unless a test gives a fake one); read once per slice.

    `arrivals` counts the top-level work started on the loop (its starters add to it). `on_contention(contended)`,
    when set, is called when work arrives while runs are suspended (True) and when none has for `BUSY_HOLD` (False).
    """

    __slots__ = (
        "_runs", "_scheduled", "slices", "arrivals", "on_contention", "contended", "_clock", "_seen", "_busy_until",
        "_cooling",
    )  # fmt: skip

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._runs: deque[Run] = deque()
        self._scheduled = False
        self.slices = 0  # slices run here (resumed slices, not first ones), for metrics
        self.arrivals = 0
        self.on_contention: Callable[[bool], None] | None = None
        self.contended = False
        self._clock = clock
        self._seen = 0  # `arrivals` at the last slice
        self._busy_until = float("-inf")
        self._cooling: asyncio.TimerHandle | None = None  # the end of contention once no run is left

    def __repr__(self) -> str:
        return f"<Scheduler [runs: {len(self._runs)}]>"

    def __len__(self) -> int:
        return len(self._runs)

    def add(self, run: Run) -> None:
        """Take a suspended run; its next slice runs in a later loop iteration. Call on the loop's thread."""
        if not self._runs and not self.contended:
            self._seen = self.arrivals  # the work that started this run is not work beside it
        self._runs.append(run)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._turn)

    def _turn(self) -> None:
        """One slice of the oldest run, then back in line if it is not over; again next iteration if any is left."""
        self._scheduled = False
        runs = self._runs
        if not runs:
            return
        now = self._clock()
        if self.arrivals != self._seen:
            self._seen = self.arrivals
            self._busy_until = now + BUSY_HOLD
        if (now < self._busy_until) is not self.contended:
            self._pace(not self.contended)
        run = runs.popleft()
        self.slices += 1
        try:
            over = run.step()
        except BaseException as exc:  # a bug of ours: a run reports its own errors
            log.error("scheduler.run.failed", run=repr(run), error=repr(exc), exc_info=exc)
            over = True
        if not over:
            runs.append(run)
        if not runs and self.contended and self._cooling is None:
            # Nothing left to slice: back to long slices once BUSY_HOLD has passed, unless runs come back first
            # (their slices then decide).
            self._cooling = asyncio.get_running_loop().call_later(max(0.0, self._busy_until - now), self._cool)
        if runs:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._turn)

    def _cool(self) -> None:
        self._cooling = None
        if not self._runs and self.contended:
            self._pace(False)

    def _pace(self, contended: bool) -> None:
        self.contended = contended
        if self.on_contention is not None:
            try:
                self.on_contention(contended)
            except BaseException as exc:  # a bug of ours: the slice stays as it was
                log.error("scheduler.pace.failed", contended=contended, error=repr(exc), exc_info=exc)

    async def complete(self, step: Callable[[], T | None], cancel: Callable[[], None]) -> T:
        """Wait, in turns with everything else, for a suspended entry: `step()` runs one more slice and returns its
        result once it is over (None before); it may raise. `cancel()` stops it if the daemon stops first."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.add(_Awaited(step, cancel, future))
        result: T = await future
        return result

    def cancel_all(self) -> int:
        """Cancel every run (the daemon is stopping); returns how many there were."""
        runs = list(self._runs)
        self._runs.clear()
        for run in runs:
            try:
                run.cancel()
            except BaseException as exc:
                log.error("scheduler.cancel.failed", run=repr(run), error=repr(exc), exc_info=exc)
        return len(runs)


class _Awaited:
    """A suspended entry someone awaits (`Scheduler.complete`)."""

    __slots__ = ("_step", "_cancel", "_future")

    def __init__(self, step: Callable[[], Any], cancel: Callable[[], None], future: asyncio.Future[Any]) -> None:
        self._step = step
        self._cancel = cancel
        self._future = future

    def step(self) -> bool:
        if self._future.done():  # its awaiter went away (cancelled): stop the entry
            self._cancel()
            return True
        try:
            result = self._step()
        except BaseException as exc:
            self._future.set_exception(exc)
            return True
        if result is None:
            return False
        self._future.set_result(result)
        return True

    def cancel(self) -> None:
        self._cancel()
        if not self._future.done():
            self._future.cancel()
