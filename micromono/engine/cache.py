"""The compile cache: compiled modules kept on disk between runs, each with an HMAC, within a size bound.

Owns `cache_dir`'s files (`<sha256>-<fingerprint>.cwasm` and `cache.key`), the MAC that guards them (deserializing
trusts the bytes as native code, so only files this daemon wrote are loaded), and the least-recently-used trim that
keeps them under `cache_max_bytes`. It must not compile anything itself nor decide what is in use: the Engine
compiles on a miss and says which entries its loaded modules were built from.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import hmac
import os
import secrets
import threading
from collections.abc import Callable
from pathlib import Path

import structlog
import wasmtime

from .ffi import capi, module_from

__all__ = ["CompileCache"]

log = structlog.get_logger("micromono.engine")


class CompileCache:
    """Compiled modules on disk, by the sha256 of their source and the engine's `fingerprint` (the wasmtime version
    and settings they are only valid for).

    Args:
        cache_dir: the directory; `None` disables the cache (every method then does nothing).
        max_bytes: the most the compiled modules may take (None: no bound); past it, the least recently used
            entries go, never one that `in_use()` names.
        fingerprint: what else a compiled module depends on besides its source.
        in_use: the digests of the modules loaded now (their entries are never evicted).

    Safe to use from several compile threads at once.
    """

    def __init__(
        self, cache_dir: Path | None, max_bytes: int | None, fingerprint: str, in_use: Callable[[], set[str]]
    ) -> None:
        self.cache_dir = cache_dir
        self.max_bytes = max_bytes
        self.bytes = 0  # the cache's size on disk as last measured (`_trim`), for metrics
        self.evictions = 0
        self._fingerprint = fingerprint
        self._in_use = in_use
        self._cache_key: bytes | None = None

    def _cache_file(self, digest: str) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / f"{digest}-{self._fingerprint}.cwasm"

    def _key(self) -> bytes:
        """The cache's secret HMAC key: a file only the daemon's user can read, created on first use.

        Deserializing trusts the bytes as native code, so only files whose MAC matches (files this daemon
        wrote) are ever loaded; anything else in the directory is ignored and recompiled over.
        """
        if self._cache_key is None:
            assert self.cache_dir is not None
            self.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            key_path = self.cache_dir / "cache.key"
            try:
                fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                self._cache_key = key_path.read_bytes()
            else:
                key = secrets.token_bytes(32)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(key)
                self._cache_key = key
            self.trim(keep="", evict=False)  # the size for metrics, before anything is written
        return self._cache_key

    def load(self, engine: wasmtime.Engine, digest: str) -> wasmtime.Module | None:
        """The cached module of `digest`, if its file carries this cache's MAC. No copy of the file is made while
        the GIL is held (hashlib and wasmtime read it in place, without the GIL), so a large module does not make
        the event loop wait."""
        if self.cache_dir is None:
            return None
        try:
            blob = self._cache_file(digest).read_bytes()
            key = self._key()
        except OSError:
            return None
        view = memoryview(blob)
        mac = hmac.new(key, digest.encode(), hashlib.sha256)
        mac.update(view[32:])
        if not hmac.compare_digest(view[:32], mac.digest()):
            return None
        try:
            module = module_from(engine, blob, 32, capi.wasmtime_module_deserialize)
        except wasmtime.WasmtimeError:
            return None
        with contextlib.suppress(OSError):
            os.utime(self._cache_file(digest))  # recently used: the last to go when the cache is trimmed
        return module

    def store(self, digest: str, module: wasmtime.Module) -> None:
        """Write the compiled module with its MAC, from wasmtime's own buffer (no copy with the GIL held)."""
        if self.cache_dir is None:
            return
        raw = capi.wasm_byte_vec_t()
        err = capi.wasmtime_module_serialize(module.ptr(), ctypes.byref(raw))
        if err:
            return  # a module that cannot be serialized is only compiled again next time
        try:
            payload = memoryview((ctypes.c_uint8 * raw.size).from_address(ctypes.addressof(raw.data.contents)))
            try:
                mac = hmac.new(self._key(), digest.encode(), hashlib.sha256)
                mac.update(payload)
                final = self._cache_file(digest)
                tmp = final.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
                with open(tmp, "wb") as fh:
                    fh.write(mac.digest())
                    fh.write(payload)
                os.replace(tmp, final)
            except OSError:
                return  # a cache that cannot be written only costs compile time on the next start
            finally:
                payload.release()
        finally:
            capi.wasm_byte_vec_delete(ctypes.byref(raw))
        self.trim(keep=digest)

    def trim(self, keep: str, *, evict: bool = True) -> None:
        """Bring the cache under `cache_max_bytes`: remove the least recently used entries (a load touches its
        file), never `keep` (just written) nor one that a module in use was built from (loaded versions and the
        previous versions kept for rollback hold theirs). Entries of other wasmtime versions or settings are never
        loaded again, so they go first in time. Runs in the compiling thread, after each write; with `evict` False
        (the cache's first use: services about to load may need what is there) it only measures."""
        if self.cache_dir is None:
            return
        entries: list[tuple[float, str, int]] = []
        total = 0
        try:
            with os.scandir(self.cache_dir) as listing:
                for entry in listing:
                    if entry.name.endswith(".cwasm"):
                        with contextlib.suppress(OSError):
                            stat = entry.stat()
                            entries.append((stat.st_mtime, entry.name, stat.st_size))
                            total += stat.st_size
        except OSError:
            return
        limit = self.max_bytes
        if evict and limit is not None and total > limit:
            in_use = self._in_use()
            in_use.add(keep)
            freed = removed = 0
            for _, name, size in sorted(entries):
                if total - freed <= limit:
                    break
                if name.partition("-")[0] in in_use:
                    continue
                try:
                    (self.cache_dir / name).unlink()
                except OSError:
                    continue
                freed += size
                removed += 1
            total -= freed
            self.evictions += removed
            if removed:
                log.info(
                    "engine.cache.evicted",
                    entries=removed,
                    bytes=freed,
                    cache_bytes=total,
                    cache_max_bytes=limit,
                    cache_dir=str(self.cache_dir),
                )
        self.bytes = total
