"""One guest instance (`Instance`) as the guest ABI sees it, and what the instances of one Engine share (`Runtime`).

Owns the meaning of each entry (docs/abi.md): the boot sequence (instantiate, `_initialize`, the `mm_abi_version`
check, the inbox), the pure-Python hot path (`begin`: copy the request in, run `mm_handle`, copy the reply out),
and the cold entries of a hot swap (`health`, `snapshot`, `restore`). The Store and the slice machinery under them
are `store.GuestStore`'s. It must not decide when a slice runs (the router does), know services or the event loop,
or define host imports (host.py).
"""

from __future__ import annotations

import ctypes
import struct
import time
from collections.abc import Callable
from ctypes import c_void_p
from typing import Any, Final, Protocol

import wasmtime

from micromono.abi import ABI_VERSION
from micromono.errors import AbiViolation, GuestAppError, RequestTooLarge

from .clock import CLOCK, NativeTicker, Ticker
from .ffi import (
    _NOWHERE,
    _U32,
    _VAL_SIZE,
    Exports,
    _at,
    _call_async,
    _future_delete,
    _future_poll,
    _instantiate_async,
    bindings,
    word_arg,
)
from .reaper import Reaper
from .store import DEFAULT_INBOX, START_TIMEOUT, GuestStore

__all__ = ["Instance", "Parked", "Running", "Runtime", "Waiting"]

#: The addresses micromono._speedups' `begin` needs, as its C struct lays them out: the store context, mm_handle,
#: the three wasmtime_val_t, the trap slot, the error slot, the inbox (as pointers), its capacity (size_t), the
#: native ticker. One bytes object, read with one memcpy, instead of ints converted one by one.
_FAST_ARGS: Final = struct.Struct("@PPPPPPNP")
# Offsets into an instance's three wasmtime_val_t (two arguments, one result; 32 bytes each): as i32 ("i") the
# arguments are at 2 and 10 and the result at 18; as i64 ("q") the result is at 9.
_ARG0, _ARG1, _RES32, _RES64 = 2, 10, 18, 9


class Waiting(Protocol):
    """A `call` whose callee did not finish within its caller's slice (returned by `Host.call`).

    The caller's fiber is suspended while it waits: the engine polls `step()` each time the caller is resumed, and
    the caller goes on once it returns the ABI result. `cancel()` is called instead if the caller is cancelled.
    """

    def step(self) -> int | None:
        """Run the callee one more slice: the ABI result when the call is over, None while it still runs. Never
        raises (failures are results)."""
        ...

    def cancel(self) -> None:
        """Stop the callee (its caller is being cancelled)."""
        ...

    @property
    def callee_instance(self) -> Instance | None:
        """The instance the call runs in (None when it waits for something else: an actor's turn, its commit)."""
        ...


class Running:
    """The instance whose guest code is running now (the innermost of a call chain), and a bug in a host import
    waiting to be re-raised once the guest call has unwound."""

    __slots__ = ("active", "pending")

    def __init__(self) -> None:
        self.active: Instance | None = None
        self.pending: BaseException | None = None


class Parked:
    """A `call` import whose caller's fiber is suspended on a `Waiting` (see host.py)."""

    __slots__ = ("waiting", "caller", "results", "trap", "fresh")

    def __init__(self, waiting: Waiting, caller: Instance, results: int, trap: int) -> None:
        self.waiting = waiting
        self.caller = caller
        self.results = results  # address of the import's wasmtime_val_t result
        self.trap = trap  # address of its wasm_trap_t* slot
        self.fresh = True  # polled once already, in the same slice the callee gave up: the caller yields first


class Runtime:
    """What the instances of one Engine share, made by the Engine: its wasmtime engine (`wasm`), who is running
    (`running`), the epoch ticker, the reaper, and the `call` imports whose callers wait (`parked`, by key)."""

    __slots__ = ("wasm", "running", "ticker", "reaper", "parked", "_next_key")

    def __init__(self, wasm: wasmtime.Engine, ticker: Ticker | NativeTicker, reaper: Reaper) -> None:
        self.wasm = wasm
        self.running = Running()
        self.ticker = ticker
        self.reaper = reaper
        self.parked: dict[int, Parked] = {}
        self._next_key = 2  # continuation env 1 is the ready continuation's

    def park(self, waiting: Waiting, caller: Instance, results: int, trap: int) -> int:
        """Register a caller about to wait on `waiting`; returns its key (the continuation's env)."""
        key = self._next_key
        self._next_key = key + 1
        self.parked[key] = Parked(waiting, caller, results, trap)
        caller.parked = key
        return key

    def cancel_parked(self, key: int) -> None:
        """Cancel the callee a suspended caller waits on (its caller is about to be cancelled)."""
        parked = self.parked.pop(key, None)
        if parked is not None:
            parked.caller.parked = 0
            parked.waiting.cancel()


class Instance(GuestStore):
    """One guest instance in its own Store.

    Every entry into the guest is a wasmtime async call on a fiber, which gives up at the end of its slice (the
    next epoch tick after it began) and hands control back to whoever polled it. An entry method (`boot`, `begin`,
    `health`, `snapshot`, `restore`) returns its result when the guest finished within the slice, or None when it
    is suspended; `step()` runs it one more slice, with the same result-or-None, and `cancel()` drops it. The
    caller decides when the next slice runs (the router: once per event-loop iteration); `finish()` runs the rest at
    once, for tools and tests.

    Not re-entrant: one entry at a time (the service's pool sees to that). After a failed entry or a cancel the
    instance is `poisoned` (its memory may be inconsistent) and must be closed, not reused.

    Attributes the router sets and reads: `owner`, `deadline` (time.monotonic() seconds; the epoch callback
    interrupts the guest past it), `depth`, `held_reply`, `last_error`; `parked` is the engine's.
    """

    __slots__ = ()

    # --- boot ---------------------------------------------------------------------------------------------------

    def boot(self) -> Instance | None:
        """Instantiate (running the module's start function), run `_initialize`, check `mm_abi_version` and ask
        for the inbox. Returns the instance when it is ready, None while suspended (then `step()`).

        Raises:
            ServiceLoadError: any of it failed or ran past START_TIMEOUT; the instance is closed.
        """
        self.deadline = time.monotonic() + START_TIMEOUT
        self.booting = True
        self._raw_instance = bindings.wasmtime_instance_t()
        pre = ctypes.cast(self._pre.ptr(), c_void_p).value or 0
        args = (
            word_arg(pre),
            word_arg(self._ctx),
            word_arg(ctypes.addressof(self._raw_instance)),
            *self._trap_slots,
        )
        self._entry = "instantiation (the start function)"
        self._then = self._booted
        return self._start(_instantiate_async, args)  # type: ignore[no-any-return]

    def _booted(self) -> Instance | None:
        store = self._store
        exports = self._exports = Exports(store, self._raw_instance)
        memory = exports["memory"]
        handle = exports["mm_handle"]
        self._memory = memory
        self._mem_addr = ctypes.addressof(memory._memory)
        vals = ctypes.addressof(self._vals)
        # wasmtime_func_call_async(context, mm_handle, args[2], 2, &result, 1, &trap, &err), as arguments built once.
        self._handle_args = (
            word_arg(self._ctx),
            word_arg(ctypes.addressof(handle._func)),
            word_arg(vals),
            word_arg(2),
            word_arg(vals + 2 * _VAL_SIZE),
            word_arg(1),
            *self._trap_slots,
        )
        self._keep = (handle, self._raw_instance)
        self.refresh()
        init = exports.get("_initialize")
        if init is not None:
            self._entry = "_initialize"
            self._then = self._initialized
            return self._start(_call_async, self._call(init, 0, 0))  # type: ignore[no-any-return]
        return self._initialized()

    def _initialized(self) -> Instance | None:
        if self.compiled.abi_checked:  # the version is the module's: asked once per module
            return self._versioned()
        self._entry = "mm_abi_version"
        self._then = self._versioned
        return self._start(_call_async, self._call(self._exports["mm_abi_version"], 0, 1))  # type: ignore[no-any-return]

    def _versioned(self) -> Instance | None:
        compiled = self.compiled
        if not compiled.abi_checked:
            version = self._v32[_RES32]
            if version != ABI_VERSION:
                raise self._boot_error(
                    f"mm_abi_version() returned {version}, but this daemon speaks guest ABI v{ABI_VERSION}; "
                    "rebuild it with a matching SDK"
                )
            compiled.abi_checked = True
        ready: Instance | None = self._reserve(DEFAULT_INBOX, self._ready)
        return ready

    def _ready(self) -> Instance:
        self._entry = None
        self.booting = False
        self.deadline = float("inf")
        return self

    # --- the inbox ----------------------------------------------------------------------------------------------

    def _reserve(self, length: int, then: Callable[[], Any]) -> Any:
        """Ask the guest (`mm_inbox`) for an inbox of `length` bytes, then go on with `then()`."""
        self._v32[_ARG0] = length
        self._entry = "mm_inbox"

        def took() -> Any:
            self._entry = None
            ptr = self._v32[_RES32] & _U32
            if ptr == 0 or ptr + length > max(self.size, self.refresh()):
                if self.booting:
                    raise self._boot_error(f"mm_inbox({length}) gave no buffer (it returned {ptr})")
                service = self.compiled.service
                raise RequestTooLarge(
                    service, f"service {service!r} cannot take a request of {length} bytes (mm_inbox returned {ptr})"
                )
            self.inbox = ptr
            self.inbox_cap = length
            self._fast = _FAST_ARGS.pack(*self._fast_addresses(), self._base + ptr, length, self._ticker.address)
            return then()

        self._then = took
        return self._start(_call_async, self._call(self._exports["mm_inbox"], 1, 1))

    def _fast_addresses(self) -> tuple[int, int, int, int, int]:
        vals = ctypes.addressof(self._vals)
        handle = self._keep[0]
        trap, err = ctypes.addressof(self._trap), ctypes.addressof(self._err)
        return (self._ctx, ctypes.addressof(handle._func), vals, trap, err)

    # --- the hot path -------------------------------------------------------------------------------------------

    def begin(self, kind: int, request: bytes | memoryview) -> bytes | None:
        """The hot path: copy `request` into the inbox and start `mm_handle(kind, len)`. Returns the reply (a copy)
        when the guest finished within its slice, None while it is suspended (then `step()`).

        This is the pure-Python path; on the compiled path (an Engine made with `compiled=True`) instances are
        `native.CompiledInstance`s, whose `begin` gives the same results through micromono._speedups.

        Raises:
            GuestTrap / AbiViolation / CallTimeout / GuestAppError / RequestTooLarge (the instance is
            `poisoned` after any of them but RequestTooLarge and GuestAppError).
        """
        n = len(request)
        if n > self.inbox_cap:
            return self._reserve(n, lambda: self.begin(kind, request))  # type: ignore[no-any-return]
        p = self.inbox
        self.view[p : p + n] = request
        v = self._v32
        v[2] = kind
        v[10] = n
        cur = self._cur
        prev = cur.active
        cur.active = self
        ticker = self._ticker
        ticker.active = True
        if ticker.waiting:
            ticker.busy()
        if self._armed != CLOCK.tick:
            self._arm()
        future = _at(_NOWHERE, _call_async(*self._handle_args))
        done = _future_poll(future)
        cur.active = prev
        if not done:
            self._future = future
            return None
        _future_delete(future)
        if self._trap_word[0] or self._err_word[0]:
            self._raise_failure()
        r = self._v64[9]
        if r < 0:
            raise self._app_error(r)
        ptr = r >> 32
        end = ptr + (r & _U32)
        if end > self.size and end > self.refresh():
            raise self._reply_outside(r)
        return self.mem[ptr:end]

    def invoke(self, kind: int, request: bytes | memoryview) -> bytes:
        """`begin`, run to the end here (blocking: for tools and tests)."""
        reply: bytes = self.finish(self.begin(kind, request))
        return reply

    def _reply(self) -> bytes:
        r = self._v64[_RES64]
        if r < 0:
            raise self._app_error(r)
        ptr = r >> 32
        end = ptr + (r & _U32)
        if end > self.size and end > self.refresh():
            raise self._reply_outside(r)
        return self.mem[ptr:end]

    def _app_error(self, r: int) -> GuestAppError:
        service = self.compiled.service
        return GuestAppError(service, f"service {service!r} returned application error {-r}", -r)

    def _reply_outside(self, r: int) -> AbiViolation:
        self.poisoned = True
        service = self.compiled.service
        return AbiViolation(
            service,
            f"service {service!r} broke the ABI: mm_handle returned a reply (ptr={r >> 32}, len={r & _U32}) "
            f"outside its linear memory of {self.size} bytes",
        )

    # --- hot swap (cold entries) --------------------------------------------------------------------------------

    def _export(self, name: str, nargs: int, nresults: int, then: Callable[[], Any]) -> Any:
        service = self.compiled.service
        func = self._exports.get(name)
        if func is None:
            raise AbiViolation(service, f"service {service!r} does not export {name}")
        self.deadline = time.monotonic() + START_TIMEOUT
        self._entry = name

        def done() -> Any:
            self._entry = None
            self.deadline = float("inf")
            return then()

        self._then = done
        return self._start(_call_async, self._call(func, nargs, nresults))

    def health(self) -> int | None:
        """Start the optional `mm_health` export; 0 means healthy (docs/abi.md). None while suspended."""
        return self._export("mm_health", 0, 1, lambda: self._v32[_RES32])  # type: ignore[no-any-return]

    def snapshot(self) -> bytes | None:
        """Start `mm_snapshot`; its result is a copy of the state it returns. None while suspended.

        Raises:
            AbiViolation: no such export, an error result, or a state outside memory.
            GuestTrap / CallTimeout: it failed.
        """
        service = self.compiled.service

        def state() -> bytes:
            r = self._v64[_RES64]
            if r < 0:
                raise AbiViolation(service, f"service {service!r}: mm_snapshot returned error {-r}")
            ptr, n = r >> 32, r & _U32
            if ptr + n > self.size and ptr + n > self.refresh():
                raise AbiViolation(
                    service, f"service {service!r}: mm_snapshot state (ptr={ptr}, len={n}) is outside memory"
                )
            return self.mem[ptr : ptr + n]

        return self._export("mm_snapshot", 0, 1, state)  # type: ignore[no-any-return]

    def restore(self, state: bytes) -> int | None:
        """Copy `state` into the inbox and start `mm_restore(len)`, which must return 0. Returns 0 once taken,
        None while suspended.

        Raises:
            AbiViolation / GuestTrap / CallTimeout / RequestTooLarge: the state was not taken.
        """
        service = self.compiled.service

        def taken() -> int:
            result = self._v32[_RES32]
            if result != 0:
                raise AbiViolation(service, f"service {service!r}: mm_restore refused the state (returned {result})")
            return 0

        def copy_and_restore() -> int | None:
            self.view[self.inbox : self.inbox + len(state)] = state
            self._v32[_ARG0] = len(state)
            return self._export("mm_restore", 1, 1, taken)  # type: ignore[no-any-return]

        if len(state) > self.inbox_cap:
            return self._reserve(len(state), copy_and_restore)  # type: ignore[no-any-return]
        return copy_and_restore()

    # --- actors (cold entries) ----------------------------------------------------------------------------------

    def schema_version(self) -> int | None:
        """Start `mm_schema_version` (docs/abi.md, "Actors"): the storage schema this build expects. None while
        suspended."""
        return self._export("mm_schema_version", 0, 1, lambda: self._v32[_RES32])  # type: ignore[no-any-return]

    def migrate(self, version: int) -> int | None:
        """Start `mm_migrate(version)`, bounded by the instance's `deadline` (the message's: the migration is part
        of it); 0 means done. None while suspended."""
        service = self.compiled.service
        func = self._exports.get("mm_migrate")
        if func is None:
            raise AbiViolation(service, f"service {service!r} does not export mm_migrate")
        self._v32[_ARG0] = version
        self._entry = "mm_migrate"

        def done() -> int:
            self._entry = None
            result: int = self._v32[_RES32]
            return result

        self._then = done
        return self._start(_call_async, self._call(func, 1, 1))  # type: ignore[no-any-return]
