"""Guest log lines on their way to structlog: one service's budget, long lines cut short, and what was dropped.

This module owns what happens to a line a guest writes, through the `micromono.log` host import or to WASI stdout
and stderr, between the host import and structlog: the per-service rate limit (`log_rate` lines per second with
bursts of `log_burst`), the cut of lines longer than `MAX_LOG_LINE` bytes, the counts of dropped lines and bytes
that the metrics package exports, the `guest.log.dropped` warning, and the mapping of guest levels to log events. The
router hands it each line as the guest wrote it (`GuestLog.emit`, `GuestLog.emit_output`); nothing else in the
daemon formats guest output. It must not read guest memory, know about instances or the router, sleep, or read
any clock but the one it was given.

Why: every line reaching structlog costs the event loop time to format, whoever wrote it, so a guest that writes a
megabyte of log per request slows every other service (benches/RESULTS.md measures a healthy neighbour's tail
latency under such a flood). Here a line
over budget costs a clock read, a comparison and two integer additions: it is neither decoded nor rendered. Lines
a guest writes at a level `log_level` then filters out count against the budget too: they cost the loop a
structlog call each all the same, and a guest writes them faster than any other.

The budget is a token bucket of `log_burst` lines refilled at `log_rate` lines per second, kept as one number,
the time at which the bucket is full again (the "virtual scheduling" form of GCRA): a line goes through while that
time is less than `log_burst` lines' worth of refill ahead of now, and moves it one line's interval on.

Dropped lines are reported by one `guest.log.dropped` warning (service, version, `lines`, `bytes`, the settings
and which to raise) just before the next line of that service that goes through, at most once per
`SUMMARY_SECONDS`: under a steady flood, one warning a second beside `log_rate` lines. Drops that no later line
follows are only in `micromono_guest_log_dropped_total` (and `_bytes_total`), which counts every one.

The counters are plain integers updated without a lock: guest lines arrive on the event loop's thread. Should two
threads ever log for one service at once, an update could interleave with another and lose a count or let one more
line through; never more than that.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Final, Protocol

import structlog

from .config import DEFAULT_LOG_BURST, DEFAULT_LOG_RATE

__all__ = ["GuestLog", "HasGuestLog", "MAX_LOG_LINE", "SUMMARY_SECONDS", "dropped_counts"]

log = structlog.get_logger(__name__)

#: Longest line written as is, in bytes; a longer one is cut here and ends with `... [N bytes cut]`.
MAX_LOG_LINE: Final = 4096
#: At most one `guest.log.dropped` warning per service in this many seconds.
SUMMARY_SECONDS: Final = 1.0

#: `micromono.log` levels (docs/abi.md) to structlog methods; other values log as info.
_LEVELS: Final = {0: "debug", 1: "info", 2: "warning", 3: "error"}


class GuestLog:
    """One service's guest-log budget and its dropped-line counters.

    Args:
        rate: `log_rate`, lines per second let through in the long run; > 0.
        burst: `log_burst`, lines let through at once after a quiet spell; >= 1.
        clock: seconds, monotonic; `time.monotonic` unless a test gives a fake one. Read once per line or chunk.

    Raises:
        ValueError: `rate` is not > 0 or `burst` is below 1 (the manifest parser refuses both first).
    """

    __slots__ = (
        "rate",
        "burst",
        "dropped",
        "dropped_bytes",
        "_clock",
        "_interval",
        "_window",
        "_full_at",
        "_reported",
        "_reported_bytes",
        "_summary_due",
    )

    def __init__(
        self,
        rate: float = DEFAULT_LOG_RATE,
        burst: int = DEFAULT_LOG_BURST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not rate > 0:  # also refuses NaN
            raise ValueError(f"rate must be > 0 lines per second, got {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1 line, got {burst!r}")
        self.rate = rate
        self.burst = burst
        self.dropped = 0  # lines over budget, since this service was loaded (inherit() carries them across swaps)
        self.dropped_bytes = 0  # their bytes, without line ends
        self._clock = clock
        self._interval = 1.0 / rate  # seconds of refill per line
        # A line goes through while the bucket, full again at _full_at, still holds one: _full_at - now <= _window.
        # burst - 0.5 rather than burst - 1 lines: half a line of slack, so that rounding in the float sums never
        # gives or takes a line (a full bucket lets exactly `burst` lines through).
        self._window = (burst - 0.5) * self._interval
        self._full_at = -math.inf  # full from the start
        self._reported = 0  # `dropped` and `dropped_bytes` as the last guest.log.dropped warning left them
        self._reported_bytes = 0
        self._summary_due = -math.inf  # no warning before this time

    def __repr__(self) -> str:
        return (
            f"<GuestLog [{self.rate:g} lines/s, burst {self.burst} | dropped: {self.dropped} lines, "
            f"{self.dropped_bytes} bytes]>"
        )

    def emit(self, service: str, version: str, level: int, message: bytes) -> None:
        """Log one `micromono.log` line as a `guest.log` event, or count it as dropped when over budget.

        Args:
            service: the service's name, for the event.
            version: the version that wrote the line, for the event.
            level: 0 debug, 1 info, 2 warning, 3 error; anything else logs as info.
            message: the line as the guest wrote it: decoded as UTF-8 (invalid bytes replaced) only if it goes
                through, and cut to `MAX_LOG_LINE` bytes.
        """
        now = self._clock()
        full_at = self._full_at
        if full_at < now:
            full_at = now
        elif full_at - now > self._window:
            self.dropped += 1
            self.dropped_bytes += len(message)
            return
        self._full_at = full_at + self._interval
        if self.dropped != self._reported and now >= self._summary_due:
            self._summarize(service, version, now)
        text = message.decode("utf-8", "replace") if len(message) <= MAX_LOG_LINE else _cut(message)
        getattr(log, _LEVELS.get(level, "info"))("guest.log", service=service, version=version, message=text)

    def emit_output(self, service: str, version: str, level: int, data: bytes) -> None:
        """Log what a guest wrote to WASI stdout (`level` -1) or stderr (-2): each line one `guest.stdout` or
        `guest.stderr` event at info, as far as the budget goes; the rest of the chunk is counted as dropped.

        Every non-empty line counts (lines end at `\\n`, `\\r\\n` or `\\r`; empty ones are skipped). A chunk is one
        write of the guest's: a line it writes in two pieces is two lines.

        Args:
            service: the service's name, for the events.
            version: the version that wrote the output, for the events.
            level: -1 for stdout, -2 for stderr.
            data: the bytes of one write.
        """
        lines = data.splitlines()
        count = len(lines) - lines.count(b"")
        if not count:
            return
        now = self._clock()
        full_at = self._full_at
        if full_at < now:
            full_at = now
        room = self._window - (full_at - now)  # >= 0 while one line fits; each further line takes an interval
        fits = min(int(room / self._interval) + 1, count) if room >= 0 else 0
        self._full_at = full_at + fits * self._interval
        if fits and self.dropped != self._reported and now >= self._summary_due:
            self._summarize(service, version, now)
        written = written_bytes = 0
        if fits:
            event = "guest.stdout" if level == -1 else "guest.stderr"
            for line in lines:
                if line:
                    text = line.decode("utf-8", "replace") if len(line) <= MAX_LOG_LINE else _cut(line)
                    log.info(event, service=service, version=version, message=text)
                    written_bytes += len(line)
                    written += 1
                    if written == fits:
                        break
        if fits < count:
            self.dropped += count - fits
            # The bytes of the lines not written, in C: every "\r" and "\n" of the chunk ends a line.
            self.dropped_bytes += len(data) - data.count(b"\n") - data.count(b"\r") - written_bytes

    def inherit(self, previous: GuestLog) -> None:
        """Take over the budget and the counts of the version this one replaces (a hot swap or a rollback).

        The counters go on from `previous`'s, so `micromono_guest_log_dropped_total` does not fall back to 0;
        drops not yet reported are reported by this one's next warning, not by `previous` (which may still log
        from calls that were running at the swap). The bucket is as empty as `previous`'s was, at this one's rate
        and at most this one's burst: a reload does not refill it.
        """
        self.dropped, self.dropped_bytes = previous.dropped, previous.dropped_bytes
        self._reported, self._reported_bytes = previous._reported, previous._reported_bytes
        previous._reported, previous._reported_bytes = previous.dropped, previous.dropped_bytes
        self._summary_due = previous._summary_due
        now = self._clock()
        used = max(previous._full_at - now, 0.0) * previous.rate  # lines' worth of refill still owed
        self._full_at = now + min(used, self.burst) * self._interval

    def _summarize(self, service: str, version: str, now: float) -> None:
        lines, nbytes = self.dropped - self._reported, self.dropped_bytes - self._reported_bytes
        self._reported, self._reported_bytes = self.dropped, self.dropped_bytes
        self._summary_due = now + SUMMARY_SECONDS
        log.warning(
            "guest.log.dropped",
            service=service,
            version=version,
            lines=lines,
            bytes=nbytes,
            log_rate=self.rate,
            log_burst=self.burst,
            hint=f"the guest wrote more log lines than services.{service}.log_rate ({self.rate:g} a second, bursts "
            f"of {self.burst}) lets through: raise log_rate (or log_burst) in services.toml, or log less",
        )


class HasGuestLog(Protocol):
    """What holds a service version's budget: `service.Service` (this module does not import it)."""

    guest_log: GuestLog


def dropped_counts(service: HasGuestLog) -> tuple[int, int]:
    """`(lines, bytes)` a service version's guest log dropped so far: what `metrics.snapshot` reads at scrape time."""
    guest_log = service.guest_log
    return guest_log.dropped, guest_log.dropped_bytes


def _cut(line: bytes) -> str:
    """`line` cut to at most `MAX_LOG_LINE` bytes, not inside a UTF-8 character, with how much was cut."""
    end = MAX_LOG_LINE
    while end > MAX_LOG_LINE - 3 and line[end] & 0xC0 == 0x80:  # a continuation byte: back to its character's start
        end -= 1
    return f"{line[:end].decode('utf-8', 'replace')}... [{len(line) - end} bytes cut]"
