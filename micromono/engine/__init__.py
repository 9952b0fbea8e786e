"""The WebAssembly engine: the only package that imports wasmtime.

It exposes only what micromono uses (Spin's `spin-core` rule): one `Engine` per daemon, `CompiledModule` (a
validated, cached, pre-linked module) and `Instance` (one instance in its own Store, with limits, a CPU deadline
and the hot-path call), plus the deadline clock the router times calls by. Everything above this package sees
micromono's own types and exceptions (`micromono.errors`); wasmtime's are translated here, once. What `__all__`
lists is the package's surface: nothing outside it imports its modules or a `_name` of it.

Inside, one concern per module (lower ones never import higher ones):

* `ffi`: unstable: the raw wasmtime C API (private bindings, CDLL/PyDLL handles, callback types, buffer views);
* `clock`: the deadline clock, the slice and its pacing, the epoch tickers;
* `reaper`: the thread that frees closed Stores;
* `abicheck`: a compiled module's exports and imports against docs/abi.md;
* `cache`: compiled modules on disk, with their HMAC and the size bound;
* `store`: a Store and the running of its entries a slice at a time, with trap translation;
* `instance`: `Instance`, the guest ABI's entries (boot, the pure hot path, hot swap), and the `Runtime` an
  Engine's instances share;
* `native`: the compiled path's `CompiledInstance` (micromono._speedups);
* `host`: the `micromono.*` host imports and the `Host` protocol they serve through;
* `core`: `Engine` and `CompiledModule`.

Threading: every guest runs on the event loop's thread, a slice at a time. Other threads: the epoch ticker only
advances the engine's epoch and the deadline clock (`CLOCK`); compiles run in the caller's thread (the daemon's
compile threads); the reaper frees closed Stores.
"""

from __future__ import annotations

from micromono import _accelerate
from micromono.abi import ABI_VERSION, KIND_CALL, KIND_HTTP, KIND_MESSAGE

from .clock import CLOCK, DEADLINE_SLACK, EPOCH_TICK_SECONDS, SLICE_SECONDS, DeadlineClock, busy_slice
from .core import WASMTIME_VERSION, CompiledModule, Engine
from .host import ALARM_DELETE, ALARM_GET, ALARM_SET, WS_CLOSE, WS_PUBLISH, WS_SEND, WS_TAG, Host
from .instance import Instance, Waiting
from .store import START_TIMEOUT

__all__ = [
    "ABI_VERSION",
    "WS_CLOSE",
    "WS_PUBLISH",
    "WS_SEND",
    "WS_TAG",
    "ALARM_DELETE",
    "ALARM_GET",
    "ALARM_SET",
    "CLOCK",
    "DEADLINE_SLACK",
    "EPOCH_TICK_SECONDS",
    "KIND_HTTP",
    "KIND_CALL",
    "KIND_MESSAGE",
    "SLICE_SECONDS",
    "START_TIMEOUT",
    "WASMTIME_VERSION",
    "CompiledModule",
    "DeadlineClock",
    "Engine",
    "Host",
    "Instance",
    "Waiting",
    "busy_slice",
    "speedups_in_use",
]


def speedups_in_use() -> bool:
    """Whether this process runs the compiled path (an Engine made without `compiled=` runs it too)."""
    return _accelerate.COMPILED
