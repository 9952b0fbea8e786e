"""Where the daemon's threads run: one CPU for the event loop and everything that takes the GIL with it, and the
lowest scheduling priority for guests offloaded from the loop.

Why: every request is served by one event-loop thread, which holds the GIL for its Python. A guest offloaded to a
thread of its own (router.py, "Long calls") releases the GIL while it runs, but takes it back at the end of every
run and for every host import. CPython hands the GIL over by waking the thread that asked for it and waiting until
it runs. Measured with bench_isolation's spinning neighbour on 2 vCPUs (benches/RESULTS.md): with the offload
thread at nice +19 on any CPU, the healthy service's p99 was 1.8-2.6 ms and its throughput fell by a third (the
spinner left no CPU idle, so the loop and the load generator were woken onto one CPU); with SCHED_IDLE on any CPU,
throughput held but p99 grew to 3-4 ms (the idle thread, woken for the GIL behind a busy CPU, made the loop wait);
with every thread of the daemon on one CPU and offload threads at SCHED_IDLE, p99 stayed at 0.7-1.6 ms, about its
solo figure: the offloaded guest runs only when the loop is idle, and when the loop waits for the GIL the CPU is
free for the thread that holds it.

So `daemon.cpu` (config.py) chooses:
- "auto" (the default): the CPU the starting thread runs on, or the one CPU it may run on (taskset, a cpuset);
- a CPU number: that CPU, which must be one the process may use;
- "any": no pinning; offload threads then run at nice +19 on any CPU (more parallel, less isolated).

Only the threads that take the GIL with the loop are pinned: the starting (loop) thread before the engine starts its
epoch ticker, and the offload threads it starts later, which inherit its CPU. Compile threads get the process's
whole CPU set back (`unpin_this_thread`), so compiles keep their parallelism and do not compete with the loop.
`restore` gives the loop thread its CPU set back when the daemon stops (the daemon may run inside a larger
program, such as the test suite). Linux only: elsewhere every call here does nothing.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Final

import structlog

__all__ = ["Placement", "place", "unpin_this_thread", "lower_offload_thread"]

log = structlog.get_logger(__name__)

#: How much nicer (lower CPU priority) offload threads are than the loop thread when the daemon is not pinned.
OFFLOAD_NICE: Final = 19
_SUPPORTED: Final = hasattr(os, "sched_setaffinity") and hasattr(os, "SCHED_IDLE")


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the daemon runs: `cpu` (None: not pinned) and the CPU set the loop thread had before."""

    cpu: int | None
    original: frozenset[int]

    def restore(self) -> None:
        """Give the calling (loop) thread its CPU set back; offload threads started later are not pinned."""
        global _pinned, _cpu
        if self.cpu is not None and self.original:
            os.sched_setaffinity(0, self.original)
            _pinned, _cpu = False, None


#: The CPU set the process had before `place` pinned a thread, for the threads that must not be pinned.
_unpinned: frozenset[int] = frozenset()
#: Whether offload threads are pinned with the loop (then SCHED_IDLE) or not (then nice +19), and where.
_pinned = False
_cpu: int | None = None


def pinned_cpu() -> int | None:
    """The CPU `place` pinned the daemon to, or None when it is not pinned."""
    return _cpu if _pinned else None


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
    global _unpinned, _pinned, _cpu
    if not _SUPPORTED or setting == "any":
        _pinned = False
        return Placement(None, frozenset())
    allowed = frozenset(os.sched_getaffinity(0))
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
    _unpinned, _pinned, _cpu = allowed, True, cpu
    return Placement(cpu, allowed)


def unpin_this_thread() -> None:
    """Let the calling thread (a compile thread) run on every CPU the process had before `place`."""
    if _pinned and _unpinned:
        os.sched_setaffinity(0, _unpinned)


def lower_offload_thread() -> None:
    """Give the calling offload thread the lowest priority: SCHED_IDLE on the loop's CPU, else nice +19.

    The thread must not hold the GIL at idle priority on another CPU than the loop's (see the module docstring).
    """
    if not _SUPPORTED:
        return
    try:
        if _pinned:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        else:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), OFFLOAD_NICE)
    except OSError as exc:  # e.g. a seccomp profile that forbids it: the thread keeps the loop's priority
        log.warning("placement.offload.priority_failed", error=str(exc))


def _cpus(cpus: frozenset[int]) -> str:
    return ", ".join(str(c) for c in sorted(cpus))
