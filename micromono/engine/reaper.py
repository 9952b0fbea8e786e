"""The reaper: a thread that frees closed Stores off the event loop's thread (`Reaper`).

Owns only the freeing of Stores handed to it (`Instance.close` does); it must not run guest code nor keep a Store
alive longer than its queue needs.
"""

from __future__ import annotations

import ctypes
import queue
import sys
import threading
from collections.abc import Callable
from ctypes import c_size_t, c_void_p
from typing import Any, Final

import wasmtime

__all__ = ["Reaper"]


class Reaper:
    """A thread that frees closed Stores, off the event loop's thread.

    Freeing a Store unmaps its linear memory, and unmapping a memory the guest filled (a guest that grew to its
    limit and touched every page) takes time in proportion to the pages touched, all of it holding the process's
    address-space lock for writing: the loop thread, wanting to map memory for a new instance or to take a page
    fault in a guest, would wait for all of it. So the reaper first gives the memory's pages back a few MiB at a
    time (`madvise(MADV_DONTNEED)`, which holds the lock only for reading, a chunk at a time), then frees the Store,
    whose unmapping is then quick. A Store may be freed on any thread once nothing uses it.
    """

    #: Bytes given back per madvise call.
    CHUNK: Final = 4 << 20
    #: Stores waiting to be freed past which `dispose` frees them itself.
    BACKLOG: Final = 4

    def __init__(self, setup: Callable[[], None] | None) -> None:
        self._queue: queue.SimpleQueue[tuple[wasmtime.Store, int, int] | None] = queue.SimpleQueue()
        self._setup = setup
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="micromono-reaper", daemon=True)
        self._thread.start()

    def dispose(self, store: wasmtime.Store, base: int, size: int) -> None:
        """Free `store`, whose linear memory is `size` bytes at `base` (0 if none was made)."""
        if self._stopped or self._queue.qsize() >= self.BACKLOG:
            # After its engine, or while the reaper is behind (a guest that fills and drops memory faster than it
            # can be given back): here, so that closed Stores never pile up.
            store.close()
        else:
            self._queue.put((store, base, size))

    def _run(self) -> None:
        if self._setup is not None:
            self._setup()
        chunk = self.CHUNK
        while (item := self._queue.get()) is not None:
            store, base, size = item
            if _madvise is not None and base and size > chunk:
                for offset in range(0, size - size % _PAGE, chunk):
                    _madvise(c_void_p(base + offset), c_size_t(min(chunk, size - offset)), _MADV_DONTNEED)
            store.close()
            del store, item

    def stop(self) -> None:
        """Free what is queued, then end the thread."""
        self._stopped = True
        self._queue.put(None)
        self._thread.join()


def _libc_madvise() -> Any:
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise  # a CDLL: the GIL is released while the kernel works
    except (OSError, AttributeError):
        return None
    madvise.restype = ctypes.c_int
    madvise.argtypes = [c_void_p, c_size_t, ctypes.c_int]
    return madvise


_madvise = _libc_madvise() if sys.platform == "linux" else None
_MADV_DONTNEED: Final = 4
_PAGE: Final = 65536  # a wasm page: linear memories are whole pages
