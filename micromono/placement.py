"""Where the daemon's threads run: the event loop on one CPU, the epoch ticker and background work on the others.

Every request is served by one event-loop thread, which holds the GIL for its Python and runs the guests, a slice at
a time. So that thread stays on one CPU, and the threads that would take CPU time from it stay off it: the epoch
ticker (each tick would preempt the guest running there for two context switches), compiles (however large the
module) and the reaper that frees closed Stores. `daemon.cpu` (config/spec.py) chooses the loop's CPU:

- "auto" (the default): the CPU the starting thread runs on, or the one CPU it may run on (taskset, a cpuset);
- a CPU number: that CPU, which must be one the process may use;
- "any": no pinning; the scheduler places every thread.

`place` pins the starting (loop) thread; threads it starts later inherit its CPU unless they move. The epoch ticker
calls `place_ticker_thread` as it starts: every CPU the process may use but the loop's, at normal priority, with a
1 ns timer slack so that slices are as long as configured. Each compile thread and the reaper call
`place_compile_thread` first: the same CPUs, at nice +`COMPILE_NICE`, so that both the loop (when they share its
CPU: a one-CPU process, or `"any"`) and the ticker get about ten times their share of a CPU they both want (CFS
weights 1024 and 110); a tick that waited behind a compile or behind freeing a large memory would stretch the
slice of whatever guest is running.

wasmtime compiles a module's functions in parallel on rayon's global thread pool. The pool is made once per process,
by the first thread that compiles, and its threads are started from that thread: on Linux they inherit its CPU set
and its nice value, and the pool has as many threads as that CPU set has CPUs (Rust's `available_parallelism`).
Checked with a large module and the loop thread pinned (`/proc/self/task/*/status`): a compile thread on one CPU
started one rayon thread, on that CPU; a compile thread on two CPUs started two, on those; a compile thread at a
higher nice value started its rayon thread at the same nice value. So the first compile must run in a compile
thread, never on the loop thread (the daemon compiles everything in its compile executor, start-up included), and a
pool made while another daemon in the same process was placed otherwise (the test suite) keeps that placement. The
price: compiles have one CPU fewer, start-up's included, which on a small machine makes a cold compile of a large
module markedly slower (warm starts load from the cache, which does not use the pool). `RAYON_NUM_THREADS` sets the
pool's size instead.

`Placement.restore` gives the loop thread its CPU set back when the daemon stops (the daemon may run inside a larger
program, such as the test suite); a compile thread's lower priority cannot be undone without privileges, so compile
threads are the daemon's own and end with it. Linux only: elsewhere every call here does nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any, Final

import structlog

__all__ = [
    "COMPILE_NICE",
    "Placement",
    "current_cpu",
    "pinned_cpu",
    "place",
    "place_compile_thread",
    "place_ticker_thread",
]

log = structlog.get_logger(__name__)

#: How much nicer (lower CPU priority) a compile thread is than the loop thread when it may share the loop's CPU.
COMPILE_NICE: Final = 10
_SUPPORTED: Final = hasattr(os, "sched_setaffinity")


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the daemon runs: `cpu` (None: not pinned) and the CPU set the loop thread had before."""

    cpu: int | None
    original: frozenset[int]

    def restore(self) -> None:
        """Give the calling (loop) thread its CPU set back; compile threads started later are placed as unpinned."""
        global _cpu
        if self.cpu is not None and self.original:
            os.sched_setaffinity(0, self.original)
        _cpu = None


#: The CPUs the process may use (the loop thread's set before `place`), and the loop's CPU (None: not pinned).
_allowed: frozenset[int] = frozenset()
_cpu: int | None = None


def pinned_cpu() -> int | None:
    """The CPU `place` pinned the loop thread to, or None when it is not pinned."""
    return _cpu


def current_cpu() -> int | None:
    """The CPU the calling thread runs on now (field 39 of /proc/thread-self/stat), or None if unknown."""
    try:
        with open("/proc/thread-self/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[36])
    except (OSError, ValueError, IndexError):
        return None


def place(setting: int | str) -> Placement:
    """Pin the calling thread (the event loop's) as `setting` says; threads it starts later inherit the CPU.

    Raises:
        ValueError: `setting` names a CPU the process may not run on (the message says which it may).
    """
    global _allowed, _cpu
    if not _SUPPORTED:
        return Placement(None, frozenset())
    allowed = frozenset(os.sched_getaffinity(0))
    _allowed, _cpu = allowed, None
    if setting == "any":
        return Placement(None, frozenset())
    if isinstance(setting, int):
        if setting not in allowed:
            raise ValueError(
                f"daemon.cpu = {setting}: this process may run on CPUs {_cpus(allowed)} only; "
                'pick one of them, "auto", or "any"'
            )
        cpu = setting
    elif len(allowed) == 1:
        (cpu,) = allowed
    else:
        here = current_cpu()
        cpu = here if here in allowed else max(allowed)
    os.sched_setaffinity(0, {cpu})
    _cpu = cpu
    return Placement(cpu, allowed)


def place_compile_thread() -> None:
    """Put the calling thread (a compile thread before its first compile, or the engine's reaper) where background
    work runs: on every CPU the process may use but the loop's (all of them when that leaves none or the loop is not
    pinned), at nice +`COMPILE_NICE` (see the module docstring). The rayon threads wasmtime starts from it inherit
    both."""
    if not _SUPPORTED:
        return
    allowed = _allowed or frozenset(os.sched_getaffinity(0))
    others = allowed - {_cpu} if _cpu is not None else frozenset()
    try:
        os.sched_setaffinity(0, others or allowed)
        # Nicer on the other CPUs too: the epoch ticker runs there (place_ticker_thread), and a tick that waits
        # for a compile or for freeing a large memory stretches the slice of whatever guest is running.
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), COMPILE_NICE)
    except OSError as exc:  # e.g. a seccomp profile that forbids it: the thread stays where it started
        log.warning("placement.compile_thread.failed", error=str(exc))


def place_ticker_thread() -> None:
    """Put the calling thread (the engine's epoch ticker, as it starts) off the loop's CPU when there is another,
    at normal priority, and make its sleeps precise. On the loop's CPU each tick would preempt the guest running
    there for two context switches, and the default timer slack would stretch every slice by as much."""
    if _SUPPORTED:
        allowed = _allowed or frozenset(os.sched_getaffinity(0))
        others = allowed - {_cpu} if _cpu is not None else frozenset()
        try:
            os.sched_setaffinity(0, others or allowed)
        except OSError as exc:
            log.warning("placement.ticker_thread.failed", error=str(exc))
    if _PRCTL is not None:
        _PRCTL(_PR_SET_TIMERSLACK, 1, 0, 0, 0)  # 1 ns: the smallest the kernel takes (0 means the default)


def _prctl() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl
    except (OSError, AttributeError):
        return None


_PR_SET_TIMERSLACK: Final = 29
_PRCTL: Any = _prctl() if sys.platform == "linux" else None


def _cpus(cpus: frozenset[int]) -> str:
    return ", ".join(str(c) for c in sorted(cpus))
