"""Pacing long work in a worker thread so that the event loop's thread never waits long for the GIL.

A worker thread that formats a large answer (Prometheus text, the status JSON) holds the GIL while it works. A
thread that never lets go makes one that wants the GIL wait for the interpreter's switch interval
(`sys.getswitchinterval()`) each time before it must hand it over, and the event loop's thread is the one that
waits. `Pacer` lets go once per `Pacer.SLICE` seconds of work. Used by `metrics.exposition` and the admin
listener's JSON; it must not know what the work is.
"""

from __future__ import annotations

import time

__all__ = ["Pacer"]


class Pacer:
    """Called between items of long work in a worker thread: hands the GIL to a thread that waits for it (the
    event loop's above all) once per `SLICE` seconds of work.

    `time.sleep(0)` lets go and sleeps for Linux's timer slack, long enough for the waiting thread to take the GIL
    (after a bare release such as `os.sched_yield()` this thread takes it back first); too long to do after every
    item, hence once per `SLICE`.
    """

    SLICE = 0.0005

    __slots__ = ("_due",)

    def __init__(self) -> None:
        self._due = time.perf_counter() + self.SLICE

    def __call__(self) -> None:
        if time.perf_counter() >= self._due:
            time.sleep(0)
            self._due = time.perf_counter() + self.SLICE
