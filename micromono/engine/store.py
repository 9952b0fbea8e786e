"""The Store under one guest instance and the machinery every entry into it shares (`GuestStore`).

Owns the Store (its limits and WASI grants), the views over the instance's linear memory, and the running of an
entry a slice at a time: start an async call on the Store's fiber, poll it (`step`), drop it (`cancel`), and
translate the trap or error a failed entry leaves into micromono's exceptions. It must not know which exports
exist or what they mean (instance.py does) nor decide when a slice runs (the router does).

Every entry into the guest is a wasmtime async call on a fiber, which gives up at the end of its slice (the next
epoch tick after it began) and hands control back to whoever polled it. Every guest runs on the event loop's
thread; the host imports find their calling instance in `running.active`, which each entry and resumed slice sets
and puts back.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from ctypes import POINTER, c_char, c_void_p
from pathlib import Path
from typing import Any, Final, Protocol, Self, cast

import wasmtime

from micromono.errors import CallTimeout, GuestTrap, ServiceLoadError

from .clock import CLOCK, NativeTicker, Ticker
from .ffi import (
    _NOWHERE,
    _VAL_SIZE,
    GuestBytes,
    _at,
    _future_delete,
    _future_poll,
    _memory_data,
    _memory_data_size,
    _monotonic,
    _set_epoch_deadline,
    _yield_and_update,
    bindings,
    capi,
    summary,
    word_arg,
)
from .reaper import Reaper

__all__ = ["DEFAULT_INBOX", "START_TIMEOUT", "GuestFault", "GuestStore", "ModuleInfo", "RuntimeParts"]

#: The inbox size asked for right after instantiation (docs/abi.md, "Inbox protocol").
DEFAULT_INBOX: Final = 65536
#: CPU seconds the start-up entries (instantiation with the start function, `_initialize`, `mm_abi_version`,
#: `mm_inbox`) and the hot-swap entries (`mm_health`, `mm_snapshot`, `mm_restore`) may take, each.
START_TIMEOUT: Final = 10.0


class GuestFault(Exception):
    """Raised inside a host import when the guest broke the ABI; the import turns it into a trap."""


class ModuleInfo(Protocol):
    """What an instance reads of its compiled module (`module.CompiledModule`)."""

    @property
    def service(self) -> str: ...
    @property
    def path(self) -> Path: ...
    @property
    def sha256(self) -> str: ...
    @property
    def uses_wasi(self) -> bool: ...

    abi_checked: bool


class RunningSlot(Protocol):
    """Who runs guest code now (`instance.Running`): `active` is the innermost instance of a call chain."""

    active: Any
    pending: BaseException | None


class RuntimeParts(Protocol):
    """What the instances of one Engine share (`instance.Runtime`)."""

    @property
    def wasm(self) -> wasmtime.Engine: ...
    @property
    def running(self) -> RunningSlot: ...
    @property
    def ticker(self) -> Ticker | NativeTicker: ...
    @property
    def reaper(self) -> Reaper: ...
    def cancel_parked(self, key: int) -> None: ...


class GuestStore:
    """One Store holding one guest instance, and its entries run a slice at a time (the base of `Instance`).

    An entry returns its result when the guest finished within the slice, or None when it is suspended; `step()`
    runs it one more slice, with the same result-or-None, and `cancel()` drops it. `finish()` runs the rest at once,
    for tools and tests. After a failed entry or a cancel the instance is `poisoned` (its memory may be
    inconsistent) and must be closed, not reused.
    """

    __slots__ = (
        "compiled",
        "owner",
        "actor",
        "deadline",
        "depth",
        "trace",
        "held_reply",
        "last_error",
        "poisoned",
        "view",
        "mem",
        "size",
        "inbox",
        "inbox_cap",
        "parked",
        "_runtime",
        "_cur",
        "_store",
        "_memory",
        "_ctx",
        "_mem_addr",
        "_vals",
        "_v32",
        "_v64",
        "_trap",
        "_err",
        "_trap_word",
        "_err_word",
        "_handle_args",
        "_future",
        "_then",
        "_entry",
        "_deadline_args",
        "_armed",
        "_interrupted",
        "_closed",
        "_keep",
        "_exports",
        "_base",
        "_fast",
        "_raw_instance",
        "_pre",
        "booting",
        "sends",
        "_cold",
        "_ticker",
    )

    def __init__(
        self,
        compiled: ModuleInfo,
        runtime: RuntimeParts,
        pre: wasmtime.InstancePre,
        *,
        memory_limit: int,
        owner: Any,
        on_output: Callable[[int, bytes], None] | None,
        env: tuple[tuple[str, str], ...] = (),
        dirs: tuple[tuple[str, str, bool], ...] = (),
    ):
        self.compiled = compiled
        self.owner = owner
        self.actor: Any = None  # the actor this instance serves (micromono.actors), None for a pooled instance
        self.deadline = float("inf")
        self.depth = 0
        self.trace: Any = None  # the trace context of the current entry (tracing.Span), None when tracing is off
        self.held_reply: bytes | None = None
        self.last_error = b""
        self.poisoned = False
        self.parked = 0  # the engine's key of the `call` this instance waits in, or 0
        self.sends = 0  # the router's count of `send`s in the current entry
        self._interrupted = False
        self._closed = False
        self._runtime = runtime
        self._cur = runtime.running
        self._ticker = runtime.ticker
        self._pre = pre
        service, where = compiled.service, str(compiled.path)
        store = wasmtime.Store(runtime.wasm)
        self._store = store
        store.set_limits(memory_size=memory_limit, instances=1, tables=4, memories=1)
        if compiled.uses_wasi:
            wasi = wasmtime.WasiConfig()  # nothing granted unless the manifest says so: no files, no environment
            if env:
                wasi.env = env
            for host, guest, writable in dirs:
                try:
                    wasi.preopen_dir(host, guest, writable)
                except wasmtime.WasmtimeError as exc:
                    store.close()
                    raise ServiceLoadError(
                        service, where, f"cannot grant directory {host} as {guest}: it must exist and be readable"
                    ) from exc
            if on_output is not None:
                out = on_output
                wasi.stdout_custom = lambda data: out(-1, data)
                wasi.stderr_custom = lambda data: out(-2, data)
            store.set_wasi(wasi)
        self._ctx = ctypes.cast(store._context(), c_void_p).value or 0
        self._install_deadline()
        # unstable: every entry's arguments and result in one wasmtime_val_t[3], and the trap and error slots.
        self._vals = (bindings.wasmtime_val_t * 3)()
        raw = memoryview(self._vals).cast("B")
        self._v32 = raw.cast("i")
        self._v64 = raw.cast("q")
        self._trap = c_void_p(0)
        self._err = c_void_p(0)
        self._trap_word = memoryview(self._trap).cast("B").cast("Q")  # the slots, read without ctypes
        self._err_word = memoryview(self._err).cast("B").cast("Q")
        self._future: Any = None  # the suspended entry's wasmtime_call_future_t (as `_at` passes it), or None
        self._armed = -1  # CLOCK.tick when the epoch deadline was last set (`_arm`)
        self._then: Callable[[], Any] | None = None  # what a finished entry returns (None: mm_handle's reply)
        self._entry: str | None = None  # the export being run, in errors (None: mm_handle)
        self.booting = False
        self._deadline_args = (word_arg(self._ctx), word_arg(2))  # set_epoch_deadline(context, 2 ticks)
        self._handle_args: tuple[Any, ...] = ()
        self._keep: tuple[Any, ...] = ()
        self._cold: Any = None
        self._exports: Any = None
        self.view = memoryview(b"")
        self.mem: GuestBytes = b""
        self.size = 0
        self.inbox = 0
        self.inbox_cap = 0
        self._base = 0
        self._mem_addr = 0
        self._fast: bytes | None = None  # invoke's addresses for micromono._speedups, _FAST_ARGS (set by reserve)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "poisoned" if self.poisoned else "suspended" if self._future else "ready"
        return f"<Instance {self.compiled.service} sha256={self.compiled.sha256[:12]} [{state} | memory: {self.size}]>"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _install_deadline(self) -> None:
        """unstable: the store's fiber yields whenever the epoch reaches its deadline, and the deadline moves on one
        tick (`wasmtime_context_epoch_deadline_async_yield_and_update`), with no callback into Python: a slice ends
        without the GIL. Each entry sets the deadline two ticks ahead (`_arm`), so a short call never yields; the
        CPU deadline (`self.deadline`) is checked each time a suspended entry is resumed (`step`)."""
        _yield_and_update(self._ctx, 1)

    # --- running entries ----------------------------------------------------------------------------------------

    def _start(self, fn: Any, args: tuple[Any, ...]) -> Any:
        """Start an async entry (`fn(*args)` returns its future) and run its first slice."""
        cur = self._cur
        prev = cur.active
        cur.active = self
        self._ticker.busy()
        if self._armed != CLOCK.tick:
            self._arm()
        future = _at(_NOWHERE, fn(*args))
        done = _future_poll(future)
        cur.active = prev
        if not done:
            self._future = future
            return None
        _future_delete(future)
        return self._complete()

    def _arm(self) -> None:
        """Set the store's epoch deadline two ticks ahead, so the entry about to run gives up its slice at the second
        tick at the latest, and a short one at none. Done at most once per tick per store: the deadline it sets holds
        for every entry that begins before the next tick."""
        _set_epoch_deadline(*self._deadline_args)
        self._armed = CLOCK.tick

    def step(self) -> Any:
        """Run the suspended entry one more slice: its result when it finished, None while it still runs.

        Raises what the entry raises (see the entry methods).
        """
        if _monotonic() > self.deadline:
            self._expire()
        cur = self._cur
        prev = cur.active
        cur.active = self
        self._ticker.busy()
        future = self._future
        done = _future_poll(future)
        cur.active = prev
        if not done:
            return None
        self._future = None
        _future_delete(future)
        return self._complete()

    def _expire(self) -> None:
        """The suspended entry is past its deadline: drop it and raise the timeout. Always raises."""
        self.cancel()
        self._interrupted = True
        self._raise_failure()

    def finish(self, result: Any) -> Any:
        """Given an entry method's result, run the entry to its end here, slice after slice, and return its result
        (blocking: for tools and tests)."""
        while result is None:
            result = self.step()
        return result

    @property
    def suspended(self) -> bool:
        """Whether an entry is suspended (between slices)."""
        return self._future is not None

    def cancel(self) -> None:
        """Drop the suspended entry (and, first, whatever call it waits on): the guest does not run again. The
        instance is poisoned. Idempotent."""
        if self.parked:
            self._runtime.cancel_parked(self.parked)
        future = self._future
        if future is not None:
            self._future = None
            _future_delete(future)
            self.poisoned = True
        self._trap_word[0] = 0
        self._err_word[0] = 0

    def _complete(self) -> Any:
        if self._trap_word[0] or self._err_word[0]:
            self._raise_failure()
        then = self._then
        if then is None:
            return self._reply()
        self._then = None
        return then()

    def _reply(self) -> bytes:
        """What a finished `mm_handle` entry returns (an entry with no `_then`): `Instance` says."""
        raise NotImplementedError

    def _call(self, func: Any, nargs: int, nresults: int) -> tuple[Any, ...]:
        """The call_async arguments for an export (cold entries; mm_handle's are prebuilt). The Func is kept until
        the next cold entry: wasmtime reads it through the address passed."""
        self._cold = func
        vals = ctypes.addressof(self._vals)
        return (
            word_arg(self._ctx),
            word_arg(ctypes.addressof(func._func)),
            word_arg(vals),
            word_arg(nargs),
            word_arg(vals + 2 * _VAL_SIZE),
            word_arg(nresults),
            self._trap_slots[0],
            self._trap_slots[1],
        )

    @property
    def _trap_slots(self) -> tuple[Any, Any]:
        return ctypes.byref(self._trap), ctypes.byref(self._err)

    def _boot_error(self, message: str) -> ServiceLoadError:
        self.poisoned = True
        self.close()
        return ServiceLoadError(self.compiled.service, str(self.compiled.path), message)

    def refresh(self) -> int:
        """Re-read the memory's size (the guest may have grown it) and rebuild the cached view."""
        base = self._base = _memory_data(self._ctx, self._mem_addr)  # never moves: memory_may_move is off
        size = self.memory_size()
        # Two handles on the same bytes: `view` to write into (a memoryview slice assignment is one copy) and `mem`,
        # a c_char array, to read out of (its slice is a new bytes object at once, cheaper than a memoryview slice).
        mem = (c_char * size).from_address(base) if size else b""
        self.mem = cast(GuestBytes, mem)  # typeshed types a c_char array's slice as a list; ctypes makes it bytes
        self.view = memoryview(mem).cast("B")
        self.size = size
        return size

    def memory_size(self) -> int:
        """The linear memory's size now (the guest may have grown it), without rebuilding the cached view: what a
        scrape reads for every idle instance."""
        if not self._mem_addr:
            return 0
        size: int = _memory_data_size(self._ctx, self._mem_addr)
        return size

    def check(self, where: str, what: str, ptr: int, length: int) -> None:
        """Raise `GuestFault` unless `[ptr, ptr+length)` (unsigned) lies inside this instance's memory."""
        if ptr + length > self.size and ptr + length > self.refresh():
            raise GuestFault(f"{where}: {what} (ptr={ptr}, len={length}) is outside linear memory of {self.size} bytes")

    def _raise_failure(self) -> None:
        """Translate the trap or error left by a failed entry into a micromono exception. Always raises."""
        self.poisoned = True
        service = self.compiled.service
        trap_ptr, err_ptr = self._trap_word[0], self._err_word[0]
        self._trap_word[0] = 0
        self._err_word[0] = 0
        self._then = None
        if trap_ptr:
            message = str(wasmtime.Trap._from_ptr(ctypes.cast(trap_ptr, POINTER(capi.wasm_trap_t))))
        elif err_ptr:
            message = str(wasmtime.WasmtimeError._from_ptr(ctypes.cast(err_ptr, POINTER(capi.wasmtime_error_t))))
        else:
            message = "unknown failure"
        cur = self._cur
        pending, cur.pending = cur.pending, None
        entry, self._entry = self._entry, None
        interrupted, self._interrupted = self._interrupted, False
        if pending is not None:
            raise pending
        if self.booting:
            if interrupted:
                raise self._boot_error(
                    f"failed to start an instance: ran past its {START_TIMEOUT:g} s deadline in {entry}"
                )
            if entry == "mm_inbox":
                why = summary(message)
                raise self._boot_error(f"mm_inbox({DEFAULT_INBOX}) failed: service {service!r} trapped: {why}")
            raise self._boot_error(f"failed to start an instance: {summary(message)}")
        if interrupted:
            if entry is not None:
                raise CallTimeout(service, f"service {service!r} ran past its deadline in {entry}")
            raise CallTimeout.interrupted(service)
        where = f" in {entry}" if entry is not None else ""
        raise GuestTrap(service, f"service {service!r} trapped{where}: {summary(message)}", message)

    def close(self) -> None:
        """Drop a suspended entry, the memory view and the Store. Idempotent."""
        if self._closed:
            return
        self.cancel()
        self._closed = True
        base, size = self._base, self.memory_size()
        self.view = memoryview(b"")
        self.mem = b""
        self.size = 0
        self._fast = None
        self._exports = self._memory = self._cold = None
        self._keep = ()
        self._runtime.reaper.dispose(self._store, base, size)
