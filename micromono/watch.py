"""Where file changes come from: the `Watcher` seam, the default `FileWatcher`, and waiting for a file to settle.

`FileWatcher` watches files through their directories with watchfiles (inotify), polling where inotify is
unavailable, and yields sets of changed paths; an empty set says "the watch is live, nothing new" (the reloader
catches up once on the first). `wait_until_stable` holds a reload back until a copy or an in-place write in
progress has finished. Tests inject their own `Watcher` instead of waiting for the filesystem.

This module must not load, compile or swap anything: what a change means is `reload.py`'s business.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Final, Protocol

import structlog
import watchfiles

__all__ = ["STABLE_GIVE_UP_SECONDS", "STABLE_SECONDS", "FileWatcher", "Watcher", "file_sha256", "wait_until_stable"]

log = structlog.get_logger(__name__)

#: A file must keep its size and mtime this long before it is loaded.
STABLE_SECONDS: Final = 0.02
#: How long to wait for a file that keeps changing before trying anyway.
STABLE_GIVE_UP_SECONDS: Final = 5.0


class Watcher(Protocol):
    """A source of sets of changed paths (tests inject their own). An empty set means "watching, nothing new"."""

    def changes(self) -> AsyncIterator[set[Path]]: ...

    def stop(self) -> None: ...


class FileWatcher:
    """Watches a set of files through their directories (an atomic rename replaces the file, not the directory).

    Args:
        paths: the files to watch.
        debounce_ms: changes within this window are reported together.
        force_polling: None lets watchfiles choose (inotify); True polls. If inotify cannot start, it polls.
    """

    def __init__(self, paths: Iterable[Path], *, debounce_ms: int = 30, force_polling: bool | None = None) -> None:
        self.paths = {Path(os.path.realpath(p)) for p in paths}
        self.debounce_ms = debounce_ms
        self.force_polling = force_polling
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def changes(self) -> AsyncIterator[set[Path]]:
        watched = self.paths
        parents = {p.parent for p in watched if p.parent.is_dir()}
        directories = sorted(str(d) for d in parents)
        stats = {p: _stat(p) for p in watched}

        def interesting(change: watchfiles.Change, path: str) -> bool:
            # The polling backend reports a rename into a directory as a change of the directory itself.
            return Path(path) in watched or Path(path) in parents

        def changed_files(batch: set[tuple[watchfiles.Change, str]], polling: bool) -> set[Path]:
            files = {Path(path) for _, path in batch if Path(path) in watched}
            for _, path in batch:
                if Path(path) in parents:
                    files |= {p for p in watched if p.parent == Path(path) and _stat(p) != stats[p]}
            if polling and not batch:
                # Polling may take its baseline after a change: compare the files ourselves on every timeout.
                files |= {p for p in watched if _stat(p) != stats[p]}
            for p in files:
                stats[p] = _stat(p)
            return files

        polling = self.force_polling
        if polling is None and os.environ.get("WATCHFILES_FORCE_POLLING"):
            polling = True  # watchfiles honours this variable itself; we need to know it too
        while not self._stop.is_set():
            try:
                async for batch in watchfiles.awatch(
                    *directories,
                    watch_filter=interesting,
                    debounce=self.debounce_ms,
                    step=10,
                    recursive=False,
                    stop_event=self._stop,
                    force_polling=polling,
                    poll_delay_ms=100,
                    rust_timeout=50,
                    yield_on_timeout=True,  # an empty batch says the watch is live (see Reloader.run)
                ):
                    files = changed_files(batch, bool(polling))
                    if files or not batch:
                        yield files
                return
            except OSError as exc:
                if polling:
                    raise
                log.warning("reload.watch.polling", reason=str(exc))
                polling = True


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns)


def file_sha256(path: Path) -> str | None:
    """The file's SHA-256 in hex, or None when it cannot be read (mid-rename, deleted)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


async def wait_until_stable(path: Path, *, clock: Callable[[], float] = time.monotonic) -> None:
    """Return once `path` has kept its size and mtime for STABLE_SECONDS (or STABLE_GIVE_UP_SECONDS passed)."""
    deadline = clock() + STABLE_GIVE_UP_SECONDS
    previous: tuple[int, int] | None = None
    while clock() < deadline:
        try:
            info = path.stat()
            current = (info.st_size, info.st_mtime_ns)
        except OSError:
            current = None  # mid-rename, or deleted: wait for it to come back
        if current is not None and current == previous:
            return
        previous = current
        await asyncio.sleep(STABLE_SECONDS)
