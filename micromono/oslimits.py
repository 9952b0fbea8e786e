"""The operating-system limits a daemon of many services runs into: memory mappings and file descriptors.

Owns the budgeting of `vm.max_map_count` and RLIMIT_NOFILE: counting what this process holds
(`/proc/self/maps`, `/proc/self/fd`), projecting what all services will hold from what those started so far took
(`StartupBudget`), the problems that say how to raise a limit that is too low, and raising the soft open-files
limit to the hard one before startup (`raise_open_files_limit`). docs/operations.md explains the limits to
operators.

It must not start, stop or know about services or the daemon's lifecycle: `Daemon.startup()` asks it after each
checkpoint and turns its problems into a `StartupError`. Where /proc cannot be read (not Linux) counts are None and
nothing is checked.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path
from typing import Any, Final

import structlog

__all__ = [
    "BUDGET_FIRST_CHECK",
    "FDS_FOR_CONNECTIONS",
    "FDS_RESERVE",
    "MAPS_RESERVE_MIN",
    "MAPS_RESERVE_SHARE",
    "StartupBudget",
    "count_fds",
    "count_maps",
    "max_map_count",
    "raise_open_files_limit",
]

log = structlog.get_logger(__name__)

#: Memory mappings kept free past startup, for instances added to pools under load, hot swaps and malloc:
#: this share of vm.max_map_count, and at least MAPS_RESERVE_MIN.
MAPS_RESERVE_SHARE: Final = 0.1
MAPS_RESERVE_MIN: Final = 1024
#: File descriptors kept free past startup, for connections: this many, or a quarter of a smaller limit.
FDS_RESERVE: Final = 256
#: The services' mappings and descriptors are counted after this many have started, then at every doubling.
BUDGET_FIRST_CHECK: Final = 64
#: `raise_open_files_limit` wants RLIMIT_NOFILE to allow this many descriptors beyond one per service (connections,
#: logs).
FDS_FOR_CONNECTIONS: Final = 4096
_SYSCTL_MAX_MAP_COUNT: Final = Path("/proc/sys/vm/max_map_count")


def max_map_count() -> int | None:
    """vm.max_map_count, or None where it cannot be read (not Linux)."""
    try:
        return int(_SYSCTL_MAX_MAP_COUNT.read_text())
    except (OSError, ValueError):
        return None


def count_maps() -> int | None:
    """This process's memory mappings (lines of /proc/self/maps), or None where they cannot be read."""
    try:
        with open("/proc/self/maps", "rb") as maps:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: maps.read(1 << 20), b""))
    except OSError:
        return None


def count_fds() -> int | None:
    """This process's open file descriptors, or None where they cannot be listed."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


class StartupBudget:
    """Projects the memory mappings and file descriptors all services will hold, from what those started so far
    took, and says so with a clear problem before either runs out (docs/operations.md).

    Each wasmtime module maps its code, and each instance its linear memory with guard regions and a copy-on-write
    image of its data (a memfd, so a descriptor). Past `vm.max_map_count`, allocations inside wasmtime fail and
    the process aborts or hangs; past RLIMIT_NOFILE, instances fail with "cannot create a memfd" and connections
    cannot be accepted. Counting reads all of /proc/self/maps, so checks come only at `BUDGET_FIRST_CHECK`
    started services, then at every doubling, and at the end.

    Args:
        services: how many services the daemon will start.
    """

    def __init__(self, services: int) -> None:
        self.services = services
        self.max_maps = max_map_count()
        self.max_fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        unlimited = self.max_fds == resource.RLIM_INFINITY
        self.fds_reserve = FDS_RESERVE if unlimited else min(FDS_RESERVE, self.max_fds // 4)
        self.maps = self.maps0 = count_maps()
        self.fds = self.fds0 = count_fds()
        self.next_check = BUDGET_FIRST_CHECK

    def compiled(self) -> list[str]:
        """Every module is compiled: check what that took, and count each instance's share from here on.

        Returns:
            A problem per limit the modules alone leave too little of, saying how to raise it; empty when they fit.
        """
        problems = self.started(0)
        self.maps0, self.fds0 = self.maps, self.fds
        return problems

    def started(self, count: int) -> list[str]:
        """`count` services have an instance; check the projection at a checkpoint (and at the end, and at 0).

        Returns:
            A problem per limit the projected total does not fit with its reserve, saying how to raise it; empty
            when everything fits (or between checkpoints).
        """
        if count and count < self.next_check and count < self.services:
            return []
        if count:
            self.next_check *= 2
        self.maps, self.fds = count_maps(), count_fds()
        problems: list[str] = []
        if self.max_maps is not None and self.maps is not None and self.maps0 is not None:
            reserve = max(MAPS_RESERVE_MIN, int(self.max_maps * MAPS_RESERVE_SHARE))
            need = self._projected(self.maps, self.maps0, count)
            if need + reserve > self.max_maps:
                problems.append(self._maps_problem(need, reserve, count))
        if self.fds is not None and self.fds0 is not None and self.max_fds != resource.RLIM_INFINITY:
            need = self._projected(self.fds, self.fds0, count)
            if need + self.fds_reserve > self.max_fds:
                problems.append(self._fds_problem(need, count))
        return problems

    def _projected(self, now: int, before: int, count: int) -> int:
        """What is used now, plus what the services without an instance yet will add at the rate seen so far."""
        return now + round((now - before) / count * (self.services - count)) if count else now

    def _rate(self, now: int, before: int, count: int) -> str:
        if not count:
            return f"{now:,} once their modules are compiled, before any instance"
        return f"{now:,} with {count:,} started, {(now - before) / count:.1f} more per instance"

    def _maps_problem(self, need: int, reserve: int, count: int) -> str:
        assert self.max_maps is not None and self.maps is not None and self.maps0 is not None
        suggested = max(262144, 1 << (2 * (need + reserve) - 1).bit_length())  # a power of two >= 2x
        return (
            f"vm.max_map_count is {self.max_maps:,}, but {self.services:,} services need about {need:,} memory "
            f"mappings ({self._rate(self.maps, self.maps0, count)}) and "
            f"{reserve:,} are kept free for instances added under load and hot swaps; past the limit, allocations "
            f"inside wasmtime fail and the daemon aborts. Raise it as root: sysctl -w vm.max_map_count={suggested} "
            "(persist it in /etc/sysctl.d/; see docs/operations.md)"
        )

    def _fds_problem(self, need: int, count: int) -> str:
        assert self.fds is not None and self.fds0 is not None
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        shown_hard = "unlimited" if hard == resource.RLIM_INFINITY else f"{hard:,}"
        suggested = max(65536, 1 << (2 * (need + self.fds_reserve) - 1).bit_length())
        return (
            f"the open files limit (RLIMIT_NOFILE) is {soft:,} (hard limit {shown_hard}), but {self.services:,} "
            f"services need about {need:,} file descriptors ({self._rate(self.fds, self.fds0, count)}) and "
            f"{self.fds_reserve} are kept free for connections; past the limit, instances "
            'fail with "cannot create a memfd" and connections are refused. Raise it: '
            f"LimitNOFILE={suggested} in the systemd unit, or ulimit -n {suggested} in the shell that starts the "
            "daemon (as root past the hard limit; see docs/operations.md)"
        )

    def report(self) -> None:
        """Log what the services use of each limit, and warn when startup alone took more than half of one."""
        fields: dict[str, Any] = {
            "maps": self.maps,
            "max_map_count": self.max_maps,
            "fds": self.fds,
            "max_fds": self.max_fds,
        }
        log.info("daemon.limits", **fields)
        if self.max_maps is not None and self.maps is not None and self.maps * 2 > self.max_maps:
            log.warning(
                "daemon.limits.low",
                limit="vm.max_map_count",
                used=self.maps,
                value=self.max_maps,
                reason="more than half is used at startup: instances added under load and hot swaps need more; "
                "see docs/operations.md",
            )
        if self.fds is not None and self.fds * 2 > self.max_fds:
            log.warning(
                "daemon.limits.low",
                limit="RLIMIT_NOFILE",
                used=self.fds,
                value=self.max_fds,
                reason="more than half is used at startup: connections and hot swaps need more; see docs/operations.md",
            )


def raise_open_files_limit(services: int) -> None:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit if the soft one is below what `services` services
    and FDS_FOR_CONNECTIONS connections may need, and log that it did, which limit, and why.

    Each module's memory image is a memfd, so services may hold up to a file descriptor each, and every connection
    holds one: the common default soft limit stops a daemon of about as many services as it allows ("cannot create
    a memfd"). The hard limit is the administrator's; `Daemon.startup()` reports it when it is too low.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = services + FDS_FOR_CONNECTIONS
    if soft == resource.RLIM_INFINITY or soft >= wanted or (hard != resource.RLIM_INFINITY and soft >= hard):
        return
    target = hard if hard != resource.RLIM_INFINITY else wanted
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("daemon.limit.unchanged", limit="RLIMIT_NOFILE", soft=soft, hard=hard, error=str(exc))
        return
    log.info(
        "daemon.limit.raised",
        limit="RLIMIT_NOFILE",
        soft=soft,
        to=target,
        reason=f"{services} services may hold a file descriptor each (a module's memory image is a memfd) and "
        f"each connection holds one: about {wanted:,} are wanted; see docs/operations.md",
    )
