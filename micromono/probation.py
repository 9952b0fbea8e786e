"""Probation after a swap: which new versions are still watched, and the rule that says one must be rolled back.

After a hot swap the new version is on probation for `daemon.probation` seconds. If more than
`rollback_error_rate` of its calls fail (once at least `ROLLBACK_MIN_CALLS` were made), the reloader reinstates the
version it replaced, from the spec and compiled module kept here. A probation ends early when its version is no
longer current (replaced again, removed, or fallen back from).

This module owns that bookkeeping and the decision; the clock is injected so that tests need not wait. It must not
start, swap or close services: `reload.Reloader` does, with what `review()` returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NamedTuple

import structlog

if TYPE_CHECKING:
    from .config import ServiceSpec
    from .engine import CompiledModule
    from .service import Service

__all__ = ["ROLLBACK_MIN_CALLS", "Probation", "Probations", "Verdict"]

log = structlog.get_logger(__name__)

#: Fewest calls in probation before an error rate is trusted.
ROLLBACK_MIN_CALLS: Final = 5


@dataclass(slots=True, kw_only=True)
class Probation:
    """A new version on probation, and what reinstating the one it replaced takes."""

    service: Service  # the version on probation
    previous_spec: ServiceSpec
    previous_compiled: CompiledModule
    previous_version: str
    until: float  # on the Probations' clock


class Verdict(NamedTuple):
    """A probation that failed: its version made `total` calls, `rate` of them failed."""

    probation: Probation
    total: int
    rate: float


class Probations:
    """The versions on probation, by service name.

    Args:
        clock: monotonic seconds (`time.monotonic` unless a test injects its own).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._by_name: dict[str, Probation] = {}

    def __len__(self) -> int:
        return len(self._by_name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __repr__(self) -> str:
        return f"<Probations [{', '.join(sorted(self._by_name)) or 'none'}]>"

    def start(self, new: Service, previous: Service, window: float) -> None:
        """Watch `new`, which just replaced `previous`, for `window` seconds."""
        self._by_name[new.name] = Probation(
            service=new,
            previous_spec=previous.spec,
            previous_compiled=previous.compiled,
            previous_version=previous.version,
            until=self._clock() + window,
        )

    def end(self, name: str) -> None:
        """Stop watching `name` (removed, or fallen back from); nothing if it was not on probation."""
        self._by_name.pop(name, None)

    def review(self, current: Callable[[str], Service | None], threshold: float) -> list[Verdict]:
        """End the probations that are over, and return (ended too) those whose version must be rolled back.

        Args:
            current: the version of a name serving now; a probation whose version is not current ends.
            threshold: `rollback_error_rate`; 1 (or more) never rolls back.

        Returns:
            The failed probations, for the caller to roll back.
        """
        now = self._clock()
        failed: list[Verdict] = []
        for name, probation in list(self._by_name.items()):
            service = probation.service
            if current(name) is not service:
                del self._by_name[name]
                continue
            total = service.ok + service.failed
            rate = service.failed / total if total else 0.0
            if total >= ROLLBACK_MIN_CALLS and rate > threshold and threshold < 1.0:
                del self._by_name[name]
                failed.append(Verdict(probation, total, rate))
            elif now > probation.until:
                del self._by_name[name]
                log.info("reload.probation.passed", service=name, version=service.version, calls=total)
        return failed
