"""The alarms of one actor service: when each actor's alarm is due, a timer on the loop for the earliest, and the
retries of those that failed.

An actor has at most one alarm (docs/abi.md, "Actors"), a wall-clock time. Storage holds it durably (storage.py);
this clock holds when it fires next: `set` after each durable commit that changed it (and for every alarm read at
start), `retry` after a failed run, with backoff (`RETRY_FIRST`, doubling, at most `RETRY_MAX`). Due alarms are
handed to `fire(key, scheduled_ms, attempt)`; firing is at least once: an alarm is cleared by the commit of the
message that handled it, so a crash before that commit fires it again after the restart.

It must not run messages or touch storage (keyed.py does). `fire_due(now)` is the one way alarms fire, from the
timer or from a test with a fake clock.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable
from typing import Final

__all__ = ["AlarmClock", "RETRY_FIRST", "RETRY_MAX", "MAX_ATTEMPTS"]

RETRY_FIRST: Final = 1.0
RETRY_MAX: Final = 300.0
MAX_ATTEMPTS: Final = 10


class AlarmClock:
    """Due times by actor key, a heap of them, and one loop timer for the earliest.

    Args:
        fire: called with `(key, scheduled_ms, attempt)` for each alarm due.
        wall: seconds since the Unix epoch (`time.time`; tests give a fake clock).
    """

    def __init__(self, fire: Callable[[str, int, int], None], wall: Callable[[], float] = time.time) -> None:
        self._fire = fire
        self._wall = wall
        self._heap: list[tuple[float, int, str]] = []  # (when it fires, in ms; its generation; key)
        self._due: dict[str, tuple[float, int, int, int]] = {}  # key -> (fires at ms, scheduled ms, attempt, gen)
        self._generation = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self.max_attempts = MAX_ATTEMPTS

    def __len__(self) -> int:
        return len(self._due)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fire alarms from `loop`'s timers from now on."""
        self._loop = loop
        self._arm()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop = None

    def set(self, key: str, at_ms: int | None) -> None:
        """The alarm of `key` is now `at_ms` (None: it has none)."""
        current = self._due.get(key)
        if at_ms is None:
            if current is not None:
                del self._due[key]
            return
        if current is not None and current[1] == at_ms:
            return  # unchanged (an in-flight retry keeps its backoff)
        self._schedule(key, float(at_ms), at_ms, 1)

    def retry(self, key: str, at_ms: int, attempt: int) -> None:
        """The run of `key`'s alarm (attempt `attempt`) failed: fire it again after the backoff, unless a commit
        set another alarm meanwhile."""
        current = self._due.get(key)
        if current is not None:
            return
        delay = min(RETRY_FIRST * 2 ** (attempt - 1), RETRY_MAX)
        self._schedule(key, self._wall() * 1000 + delay * 1000, at_ms, attempt + 1)

    def scheduled(self, key: str) -> int | None:
        """When `key`'s alarm fires next (ms), or None."""
        current = self._due.get(key)
        return int(current[0]) if current is not None else None

    def _schedule(self, key: str, fires_ms: float, at_ms: int, attempt: int) -> None:
        self._generation += 1
        self._due[key] = (fires_ms, at_ms, attempt, self._generation)
        heapq.heappush(self._heap, (fires_ms, self._generation, key))
        if fires_ms < self._timer_at:
            self._arm()

    def fire_due(self, now_ms: float | None = None) -> int:
        """Hand every alarm due at `now_ms` (default: the wall clock) to `fire`; returns how many."""
        now = self._wall() * 1000 if now_ms is None else now_ms
        heap = self._heap
        due = []
        while heap and heap[0][0] <= now:
            _, generation, key = heapq.heappop(heap)
            current = self._due.get(key)
            if current is None or current[3] != generation:
                continue  # replaced or cleared since
            del self._due[key]
            due.append((key, current[1], current[2]))
        for key, at_ms, attempt in due:  # after the heap walk: what a firing schedules waits for the next one
            self._fire(key, at_ms, attempt)
        return len(due)

    def _arm(self) -> None:
        loop = self._loop
        if loop is None:
            return
        heap = self._heap
        while heap and (self._due.get(heap[0][2]) or (0, 0, 0, -1))[3] != heap[0][1]:
            heapq.heappop(heap)  # stale entries at the top
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not heap:
            self._timer_at = float("inf")
            return
        self._timer_at = heap[0][0]
        delay = max(0.0, heap[0][0] / 1000 - self._wall())
        self._timer = loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        self.fire_due()
        self._arm()
