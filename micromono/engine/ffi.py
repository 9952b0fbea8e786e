"""unstable: the raw wasmtime C API, as the rest of the engine package calls it.

Owns every reach past wasmtime-py's public API: the private bindings (`wasmtime._ffi`, `wasmtime._bindings`,
`wasmtime._extern`, `wasmtime._module`, pinned by `pyproject.toml` to one major version and by
`tests/test_engine.py`), the second CDLL/PyDLL handles on wasmtime's shared library and the entry points the hot
path calls through them, the ctypes callback types of host imports, and the views over the buffers wasmtime hands
those callbacks. It holds no state of its own beyond caches of such views, and must not know about instances,
services or the event loop. Only the engine package imports it.

Why not wasmtime-py's public call API: `Func.__call__` and `Memory.read/write` convert every argument through
ctypes' argtypes and build Python objects per value (`../shared/research/wasmtime-notes.md`). Here guest exports
are called through `wasmtime_func_call_async` with one preallocated `wasmtime_val_t` buffer per instance and
ctypes arguments built once; host imports are defined with `wasmtime_linker_define_func_unchecked` (or
`_async_func`) and int-only ctypes callbacks; guest memory is read and written through views over its bytes.
"""

from __future__ import annotations

import ctypes
import struct
import time
from ctypes import CFUNCTYPE, POINTER, c_char, c_int32, c_size_t, c_ubyte, c_uint64, c_void_p
from typing import Any, Final, Protocol

import wasmtime
from wasmtime import _bindings as bindings  # unstable: private bindings
from wasmtime import _ffi as capi  # unstable: private bindings
from wasmtime._extern import wrap_extern  # unstable: private
from wasmtime._module import ExportTypeList  # unstable: private

__all__ = [
    "bindings",
    "capi",
    "ExportTypeList",
    "Exports",
    "GuestBytes",
    "module_from",
    "new_trap",
    "summary",
    "word_arg",
]

_U32: Final = 0xFFFFFFFF
_WASI_MODULE: Final = "wasi_snapshot_preview1"
_HOST_MODULE: Final = "micromono"
#: The size of a wasmtime_val_t (the i32 of one is at byte 8).
_VAL_SIZE: Final = 32

# A second handle on the same shared library, so these function pointers carry no argtypes: fed ctypes objects
# built once, ctypes skips all argument conversion (wasmtime-notes.md §1). A CDLL handle releases the GIL around
# each call, so the epoch ticker can tick while a guest runs.
_lib = ctypes.CDLL(capi.dll._name)
# Entry points that run no guest code go through a PyDLL handle, which keeps the GIL: releasing and taking it back
# costs more than they do.
_pylib = ctypes.PyDLL(capi.dll._name)
# wasmtime_call_future_t *wasmtime_func_call_async(context, func, args, nargs, results, nresults, trap_ret, err_ret)
_call_async = _pylib.wasmtime_func_call_async
_call_async.restype = c_void_p
# wasmtime_call_future_t *wasmtime_instance_pre_instantiate_async(pre, context, instance_ret, trap_ret, err_ret)
_instantiate_async = _pylib.wasmtime_instance_pre_instantiate_async
_instantiate_async.restype = c_void_p
# bool wasmtime_call_future_poll(future): runs the guest, so through the CDLL handle, which releases the GIL (the
# epoch ticker must be able to tick meanwhile).
_future_poll = _lib.wasmtime_call_future_poll
_future_poll.restype = ctypes.c_bool
# void wasmtime_call_future_delete(future)
_future_delete = _pylib.wasmtime_call_future_delete
_future_delete.restype = None
# A future is passed as `_at(_NOWHERE, future)`: a byref object at offset `future` from address 0, which ctypes
# passes as the word `future` without converting anything (an int would be cut to a C int, and argtypes or a
# c_void_p cost a format-table lookup and an argument object per call).
_at = ctypes.byref
_NOWHERE: Final = c_char.from_address(0)
# The ticker advances the epoch through the PyDLL handle too: the ticker never has to win the GIL back from the loop
# thread in the middle of a tick.
_increment_epoch = _pylib.wasmtime_engine_increment_epoch
_increment_epoch.restype = None
_increment_epoch.argtypes = [c_void_p]
# void wasmtime_context_epoch_deadline_async_yield_and_update(context, delta): the header declares an error result,
# but wasmtime 50 returns nothing (../shared/research/preemption/, pitfall 2).
_yield_and_update = _pylib.wasmtime_context_epoch_deadline_async_yield_and_update
_yield_and_update.restype = None
_yield_and_update.argtypes = [c_void_p, c_uint64]
_monotonic = time.monotonic
# void wasmtime_context_set_epoch_deadline(context, ticks_beyond_current), fed prebuilt word arguments.
_set_epoch_deadline = _pylib.wasmtime_context_set_epoch_deadline
_set_epoch_deadline.restype = None


def word_arg(value: int) -> Any:
    """`value` as a prebuilt ctypes argument that passes as one pointer-sized word (a `byref` object).

    ctypes converts a `c_void_p` or `c_size_t` argument on every call: it looks its format up in a table and
    allocates a fresh argument object. A `byref` object it copies as it is, which makes it the cheapest argument
    ctypes knows (`benches/RESULTS.md`). `byref` of an object at address `value` passes `value` itself; the object
    is never read. Pointers and `size_t` are the same word in every ABI wasmtime supports.
    """
    return ctypes.byref(ctypes.c_char.from_address(value))


def _symbol(name: str) -> int:
    address = ctypes.cast(getattr(_lib, name), c_void_p).value
    assert address is not None
    return address


_memory_data = CFUNCTYPE(c_void_p, c_void_p, c_void_p)(_symbol("wasmtime_memory_data"))
_memory_data_size = CFUNCTYPE(c_size_t, c_void_p, c_void_p)(_symbol("wasmtime_memory_data_size"))
# wasm_trap_t *cb(void *env, wasmtime_caller_t *caller, wasmtime_val_raw_t *args_and_results, size_t n)
# Slot k of args_and_results is 16 bytes: as i32 it is args[4 * k].
_RAW_CALLBACK = CFUNCTYPE(c_size_t, c_void_p, c_void_p, POINTER(c_int32), c_size_t)
# The same, with args_and_results as a plain address, for the hot imports (`call`, `send`): ctypes hands over an
# int instead of building a pointer object, and `_slots` reads all the arguments in one unpack.
_ADDR_CALLBACK = CFUNCTYPE(c_size_t, c_void_p, c_void_p, c_void_p, c_size_t)
#: The i32 arguments of `call` (6) and `send` (4), each the first 4 bytes of a 16-byte slot, as unsigned.
_SEND_ARGS: Final = struct.Struct("<I12xI12xI12xI").unpack_from


class GuestBytes(Protocol):
    """What `Instance.mem` is used as: a c_char array over guest memory (or b""), whose slices are bytes."""

    def __getitem__(self, index: slice, /) -> bytes: ...


#: Views over args_and_results buffers by (address, slots). wasmtime passes a buffer on its own stack, so the same
#: few addresses come back call after call; a view is only read inside the callback given its address.
_SLOT_VIEWS: dict[tuple[int, int], memoryview] = {}
_SLOT_VIEWS_MAX: Final = 4096


def _slots(address: int, n: int) -> memoryview:
    """An i32 view of the `n` 16-byte slots at `address` (result k is written at index 4 * k)."""
    view = _SLOT_VIEWS.get((address, n))
    if view is None:
        if len(_SLOT_VIEWS) >= _SLOT_VIEWS_MAX:
            _SLOT_VIEWS.clear()
        view = _SLOT_VIEWS[address, n] = memoryview((c_ubyte * (16 * n)).from_address(address)).cast("B").cast("i")
    return view


#: Views over the wasmtime_val_t arrays the async `call` import is handed, by address: its 6 arguments and, right
#: after them, its result (wasmtime keeps both in one buffer per store: `_call_view` checks), 32 bytes per value with
#: the i32 at byte 8. Like `_SLOT_VIEWS`, the same few addresses come back call after call.
_CALL_VIEWS: dict[int, memoryview] = {}
_CALL_VALS: Final = struct.Struct("<8xI28xI28xI28xI28xI28xI").unpack_from
_CALL_RESULT: Final = 6 * _VAL_SIZE // 4 + 2  # the result's i32, as an index of the i32 view
#: Views over the 3-word `wasmtime_async_continuation_t` (callback, env, finalizer) the import fills, by address.
_WORD_VIEWS: dict[int, memoryview] = {}


def _call_view(args: int, results: int) -> memoryview:
    """An i32 view of `call`'s six argument values and its result value (`args` and `results` are adjacent)."""
    view = _CALL_VIEWS.get(args)
    if view is None:
        if results != args + 6 * _VAL_SIZE:
            raise RuntimeError("unstable: wasmtime no longer keeps a host call's results right after its arguments")
        if len(_CALL_VIEWS) >= _SLOT_VIEWS_MAX:
            _CALL_VIEWS.clear()
        view = _CALL_VIEWS[args] = memoryview((c_ubyte * (7 * _VAL_SIZE)).from_address(args)).cast("B").cast("i")
    return view


def _words(address: int) -> memoryview:
    """A view of the three pointer-sized words of a continuation at `address`."""
    view = _WORD_VIEWS.get(address)
    if view is None:
        if len(_WORD_VIEWS) >= _SLOT_VIEWS_MAX:
            _WORD_VIEWS.clear()
        view = _WORD_VIEWS[address] = memoryview((c_ubyte * 24).from_address(address)).cast("B").cast("Q")
    return view


_NO_FINALIZER = ctypes.cast(0, CFUNCTYPE(None, c_void_p))
# void cb(void *env, wasmtime_caller_t *, const wasmtime_val_t *args, size_t nargs, wasmtime_val_t *results,
#         size_t nresults, wasm_trap_t **trap_ret, wasmtime_async_continuation_t *continuation_ret)
_ASYNC_CALLBACK = CFUNCTYPE(None, c_void_p, c_void_p, c_void_p, c_size_t, c_void_p, c_size_t, c_void_p, c_void_p)
# bool continuation(void *env): polled by wasmtime until it returns true; the guest waits (its fiber suspends).
_CONTINUATION = CFUNCTYPE(ctypes.c_bool, c_void_p)
# A continuation that is ready at once, for a `call` whose callee finished within its caller's slice (the common
# case): wasmtime polls a host function's continuation before it returns to the guest, and a Python callback there
# would cost a GIL round trip on every call. Any C function returning true for its argument does: libc's abs(1).
_READY: Final = (ctypes.cast(ctypes.CDLL(None).abs, c_void_p).value or 0, 1)


def new_trap(message: str) -> int:
    """Address of a new wasm_trap_t; wasmtime takes ownership when a callback returns it."""
    raw = message.encode("utf-8", "replace")
    trap = capi.wasmtime_trap_new(ctypes.create_string_buffer(raw), len(raw))
    return ctypes.cast(trap, c_void_p).value or 0


def summary(message: str) -> str:
    """The cause line of a wasmtime error ("wasm trap: wasm `unreachable` instruction executed"), no backtrace."""
    text = message.strip()
    if "Caused by:" in text:
        cause = [line.strip() for line in text.split("Caused by:", 1)[1].splitlines() if line.strip()]
        if cause:
            return "; ".join(cause)
    return text.splitlines()[0] if text else "unknown failure"


def module_from(engine: wasmtime.Engine, data: bytes, offset: int, make: Any) -> wasmtime.Module:
    """A Module from `data[offset:]` through `wasmtime_module_new` or `_deserialize`, reading the bytes object's
    own buffer (no copy; the GIL is released while wasmtime works)."""
    address = (ctypes.cast(ctypes.c_char_p(data), c_void_p).value or 0) + offset
    out = POINTER(capi.wasmtime_module_t)()
    err = make(engine.ptr(), ctypes.cast(address, POINTER(ctypes.c_uint8)), len(data) - offset, ctypes.byref(out))
    if err:
        raise wasmtime.WasmtimeError._from_ptr(err)
    return wasmtime.Module._from_ptr(out)


class Exports:
    """An instance's exports looked up by name (`wasmtime_instance_export_get`). wasmtime-py's `exports(store)`
    lists all of them, which takes seconds on the loop for a module with thousands."""

    __slots__ = ("_store", "_instance")

    def __init__(self, store: wasmtime.Store, instance: Any) -> None:
        self._store = store
        self._instance = instance

    def get(self, name: str) -> Any:
        item = capi.wasmtime_extern_t()
        raw = name.encode()
        found = capi.wasmtime_instance_export_get(
            self._store._context(), ctypes.byref(self._instance), raw, len(raw), ctypes.byref(item)
        )
        return wrap_extern(item) if found else None

    def __getitem__(self, name: str) -> Any:
        found = self.get(name)
        if found is None:
            raise KeyError(name)
        return found
