"""The host imports: the `micromono.*` functions a guest calls (docs/abi.md), defined on one Engine's Linker.

Owns the definitions (`wasmtime_linker_define_func_unchecked` and `_async_func` with int-only ctypes callbacks,
or the C `call` import of micromono._speedups on the compiled path), the reading and bounds-checking of their
arguments in the caller's memory, the `Host` protocol they serve through (the router), and the waiting of a caller
whose callee gave up its slice (a continuation wasmtime polls). Every import turns a failure into a trap of the
calling guest: no exception ever escapes into wasmtime. It must not route calls or decide policy (the Host does),
nor run an instance's entries (instance.py does).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from ctypes import c_ubyte, c_void_p
from types import ModuleType
from typing import Any, Protocol

import wasmtime

from micromono.abi import MM_ERR_NO_REPLY

from .ffi import (
    _ADDR_CALLBACK,
    _ASYNC_CALLBACK,
    _CALL_RESULT,
    _CALL_VALS,
    _CONTINUATION,
    _HOST_MODULE,
    _NO_FINALIZER,
    _RAW_CALLBACK,
    _READY,
    _SEND_ARGS,
    _U32,
    _VAL_SIZE,
    _call_view,
    _slots,
    _words,
    bindings,
    new_trap,
)
from .instance import Instance, Runtime, Waiting
from .store import GuestFault

__all__ = [
    "Host", "HostImports", "ALARM_SET", "ALARM_GET", "ALARM_DELETE", "WS_SEND", "WS_PUBLISH", "WS_CLOSE", "WS_TAG",
]  # fmt: skip


class Host(Protocol):
    """What the engine's host imports call into (implemented by `router.Router`).

    Each method runs synchronously inside a guest's import call, on the event loop's thread. `caller` is the
    calling `Instance`; `target`, `request` and `message` are copies of the bytes in its memory.
    """

    def call(self, caller: Instance, target: bytes, request: bytes, reply_ptr: int, reply_cap: int) -> int | Waiting:
        """Serve `micromono.call`: the ABI result (reply length or a negative error code), or, when the callee
        gave up its slice before it finished, a `Waiting` the caller's fiber waits on."""
        ...

    def send(self, caller: Instance, target: bytes, message: bytes) -> int:
        """Serve `micromono.send`; return 0 or a negative error code."""
        ...

    def log(self, caller: Instance, level: int, message: bytes) -> None:
        """Serve `micromono.log` and guest stdout (level -1) / stderr (level -2) writes."""
        ...

    def trace_context(self, caller: Instance) -> bytes:
        """Serve `micromono.trace_context`: the caller's trace context as a W3C `traceparent` value (55 bytes), or
        b"" when it has none (tracing off)."""
        ...

    def actor_key(self, caller: Instance) -> bytes | int:
        """Serve `micromono.actor_key`: the caller's actor key, or a negative error code."""
        ...

    def kv_get(self, caller: Instance, key: bytes) -> bytes | int:
        """Serve `micromono.kv_get`: the value, or a negative error code (MM_ERR_NOT_FOUND, ...)."""
        ...

    def kv_put(self, caller: Instance, key: bytes, value: bytes) -> int:
        """Serve `micromono.kv_put`: 0 or a negative error code."""
        ...

    def kv_delete(self, caller: Instance, key: bytes) -> int:
        """Serve `micromono.kv_delete`: 1 (deleted), 0 (there was none) or a negative error code."""
        ...

    def kv_list(self, caller: Instance, options: bytes) -> bytes | int:
        """Serve `micromono.kv_list`: the encoded entries, or a negative error code."""
        ...

    def sql_exec(self, caller: Instance, sql: bytes, params: bytes) -> bytes | int:
        """Serve `micromono.sql_exec`: the encoded result, or a negative error code."""
        ...

    def websocket(self, caller: Instance, op: int, conn: int, number: int, data: bytes, tag: bytes) -> int:
        """Serve `micromono.ws_send` (op WS_SEND: `conn`, `number` the type, `data`), `ws_publish` (WS_PUBLISH:
        `number` the type, `data`, `tag`), `ws_close` (WS_CLOSE: `conn`, `number` the code, `data` the reason) and
        `ws_tag` (WS_TAG: `conn`, `tag`): 0 or a negative error code."""
        ...

    def alarm(self, caller: Instance, op: int, at_ms: int) -> int:
        """Serve `micromono.alarm_set` (op ALARM_SET, `at_ms`), `alarm_get` (ALARM_GET: the time or -1) and
        `alarm_delete` (ALARM_DELETE): the result, or a negative error code."""
        ...


#: The `op` of `Host.alarm`.
ALARM_SET, ALARM_GET, ALARM_DELETE = 1, 2, 3
#: The `op` of `Host.websocket`.
WS_SEND, WS_PUBLISH, WS_CLOSE, WS_TAG = 1, 2, 3, 4


class HostImports:
    """The `micromono.*` imports of one Engine's Linker, serving `host`.

    The imports find their calling instance in `runtime.running.active`. With `native` (micromono._speedups, on
    the compiled path) the `call` import is its C function; otherwise a ctypes callback. Keeps every ctypes callback
    alive as long as the Linker.
    """

    def __init__(self, host: Host, runtime: Runtime, linker: wasmtime.Linker, native: ModuleType | None) -> None:
        self.host = host
        self._runtime = runtime
        self._running = runtime.running
        self._linker = linker
        self._callbacks: list[Any] = []
        self._define_all(native)

    def _define_all(self, native: ModuleType | None) -> None:
        i32 = wasmtime.ValType.i32()
        handle = self._make_call()
        if native is not None:  # the import in C, calling `handle` with plain ints
            self._callbacks.append(handle)
            self._define_async("call", [i32] * 6, [i32], native.call_import_address(), id(handle))
        else:
            callback = _ASYNC_CALLBACK(self._call_import)
            self._callbacks.append(callback)
            self._define_async("call", [i32] * 6, [i32], ctypes.cast(callback, c_void_p).value or 0, None)
        self._continuation = _CONTINUATION(self.resume_parked)
        self._callbacks.append(self._continuation)
        self._continuation_address = ctypes.cast(self._continuation, c_void_p).value or 0
        self._define("take_reply", [i32] * 2, [i32], self._make_take_reply())
        self._define("send", [i32] * 4, [i32], self._make_send(), _ADDR_CALLBACK)
        self._define("log", [i32] * 3, [], self._make_log())
        self._define("last_error", [i32] * 2, [i32], self._make_last_error())
        self._define("trace_context", [i32] * 2, [i32], self._make_trace_context())
        self._define_storage(i32, wasmtime.ValType.i64())

    def _define(
        self, name: str, params: list[Any], results: list[Any], fn: Callable[..., int], kind: Any = _RAW_CALLBACK
    ) -> None:
        """unstable: `wasmtime_linker_define_func_unchecked` with an int-only ctypes callback."""
        callback = kind(fn)
        self._callbacks.append(callback)
        self._link(
            name,
            params,
            results,
            bindings._wasmtime_linker_define_func_unchecked,
            ctypes.cast(callback, bindings.wasmtime_func_unchecked_callback_t),
            None,
        )

    def _define_async(self, name: str, params: list[Any], results: list[Any], address: int, data: int | None) -> None:
        """unstable: `wasmtime_linker_define_async_func` with the callback at `address` and its `data`: an import
        whose caller's fiber can wait (suspend)."""
        self._link(
            name,
            params,
            results,
            bindings._wasmtime_linker_define_async_func,
            ctypes.cast(address, bindings.wasmtime_func_async_callback_t),
            data,
        )

    def _link(self, name: str, params: list[Any], results: list[Any], define: Any, callback: Any, data: Any) -> None:
        functype = wasmtime.FuncType(params, results)  # built per Engine: sharing one across Engines aborts
        self._callbacks.append(functype)
        module, field = _HOST_MODULE.encode(), name.encode()
        err = define(
            self._linker.ptr(),
            ctypes.create_string_buffer(module),
            len(module),
            ctypes.create_string_buffer(field),
            len(field),
            functype.ptr(),
            callback,
            data,
            _NO_FINALIZER,
        )
        if err:
            raise wasmtime.WasmtimeError._from_ptr(err)

    def _fail(self, me: Instance, exc: BaseException) -> int:
        """Turn an exception inside a host callback into a trap of the calling guest. Never raises."""
        cur = self._running
        cur.active = me
        if isinstance(exc, GuestFault):
            return new_trap(str(exc))
        # A bug in micromono, not the guest: keep it, and re-raise it once the guest call has unwound.
        cur.pending = exc
        return new_trap(f"micromono internal error in a host import: {exc!r}")

    def _make_call(self) -> Callable[..., int | None]:
        """`micromono.call`, an async import: the callee runs at once, in its caller's slice; if it gives up the
        slice before it finishes, the caller's fiber waits (a continuation wasmtime polls each time the caller is
        resumed), so a chain A -> B -> C yields to the event loop from any depth.

        The handler gets the six arguments, the addresses of the result, the trap slot and the continuation, and
        returns the import's result,
        or None when it filled the continuation (a waiting caller) or the trap itself. It is called by a ctypes
        callback (`_call_import`) or, on the compiled path, by micromono._speedups' C import."""
        imports = self
        cur = self._running
        host = self.host
        park = self._runtime.park

        def handle(
            tp: int, tl: int, rp: int, rl: int, pp: int, pl: int, results: int, trap: int, cont: int
        ) -> int | None:
            me = cur.active
            assert me is not None
            try:
                size = me.size
                if tp + tl > size or rp + rl > size or pp + pl > size:
                    me.check("micromono.call", "target", tp, tl)
                    me.check("micromono.call", "request", rp, rl)
                    me.check("micromono.call", "reply buffer", pp, pl)
                mem = me.mem
                r = host.call(me, mem[tp : tp + tl], mem[rp : rp + rl], pp, pl)
                if r.__class__ is int:
                    return r
                key = park(r, me, results, trap)  # type: ignore[arg-type]
                continuation = _words(cont)
                continuation[0] = imports._continuation_address
                continuation[1] = key
            except BaseException as exc:  # an exception must never escape into wasmtime
                c_void_p.from_address(trap).value = imports._fail(me, exc)
            return None

        ready_callback, ready_env = _READY

        def call_import(
            env: int, caller: int, args: int, nargs: int, results: int, nresults: int, trap: int, cont: int
        ) -> None:
            continuation = _words(cont)
            continuation[0] = ready_callback
            continuation[1] = ready_env
            vals = _call_view(args, results)
            tp, tl, rp, rl, pp, pl = _CALL_VALS(vals)
            r = handle(tp, tl, rp, rl, pp, pl, results, trap, cont)
            if r is not None:
                vals[_CALL_RESULT] = r

        self._call_import = call_import
        return handle

    def resume_parked(self, key: int) -> bool:
        """The continuation of a waiting `call`: run its callee one more slice; True once the call is over."""
        parked = self._runtime.parked[key]
        if parked.fresh:  # the callee just used up the slice: give the loop its turn before running it again
            parked.fresh = False
            return False
        me = parked.caller
        try:
            r = parked.waiting.step()
            if r is None:
                return False
            memoryview((c_ubyte * _VAL_SIZE).from_address(parked.results)).cast("B").cast("i")[2] = r
        except BaseException as exc:  # never out of a ctypes callback
            c_void_p.from_address(parked.trap).value = self._fail(me, exc)
        del self._runtime.parked[key]
        me.parked = 0
        return True

    def callee_of(self, instance: Instance) -> Instance | None:
        """The instance `instance`'s suspended `call` waits on, if it waits in one."""
        parked = self._runtime.parked.get(instance.parked) if instance.parked else None
        return parked.waiting.callee_instance if parked is not None else None

    def _make_send(self) -> Callable[..., int]:
        imports = self
        cur = self._running
        host = self.host

        def send(env: int, caller: int, address: int, nargs: int) -> int:
            me = cur.active
            assert me is not None
            try:
                args = _slots(address, 4)
                tp, tl, mp, ml = _SEND_ARGS(args)
                me.check("micromono.send", "target", tp, tl)
                me.check("micromono.send", "message", mp, ml)
                mem = me.mem
                args[0] = host.send(me, mem[tp : tp + tl], mem[mp : mp + ml])
                cur.active = me
                return 0
            except BaseException as exc:
                return imports._fail(me, exc)

        return send

    def _make_take_reply(self) -> Callable[..., int]:
        imports = self
        cur = self._running

        def take_reply(env: int, caller: int, args: Any, nargs: int) -> int:
            me = cur.active
            assert me is not None
            try:
                p, cap = args[0] & _U32, args[4] & _U32
                me.check("micromono.take_reply", "buffer", p, cap)
                held = me.held_reply
                if held is None:
                    me.last_error = (
                        b"take_reply: no reply is held "
                        b"(call take_reply right after a call that returned a length larger than its buffer)"
                    )
                    args[0] = MM_ERR_NO_REPLY
                elif len(held) > cap:
                    me.last_error = f"take_reply: the held reply is {len(held)} bytes, the buffer only {cap}".encode()
                    args[0] = MM_ERR_NO_REPLY
                else:
                    me.view[p : p + len(held)] = held
                    me.held_reply = None
                    args[0] = len(held)
                return 0
            except BaseException as exc:
                return imports._fail(me, exc)

        return take_reply

    def _make_log(self) -> Callable[..., int]:
        imports = self
        cur = self._running
        host = self.host

        def log(env: int, caller: int, args: Any, nargs: int) -> int:
            me = cur.active
            assert me is not None
            try:
                level, p, n = args[0], args[4] & _U32, args[8] & _U32
                me.check("micromono.log", "message", p, n)
                host.log(me, level, me.mem[p : p + n])
                cur.active = me
                return 0
            except BaseException as exc:
                return imports._fail(me, exc)

        return log

    def _make_last_error(self) -> Callable[..., int]:
        imports = self
        cur = self._running

        def last_error(env: int, caller: int, args: Any, nargs: int) -> int:
            me = cur.active
            assert me is not None
            try:
                p, cap = args[0] & _U32, args[4] & _U32
                me.check("micromono.last_error", "buffer", p, cap)
                msg = me.last_error
                n = min(len(msg), cap)
                me.view[p : p + n] = msg[:n]
                args[0] = len(msg)
                return 0
            except BaseException as exc:
                return imports._fail(me, exc)

        return last_error

    def _make_trace_context(self) -> Callable[..., int]:
        """`micromono.trace_context(ptr, cap) -> len` (docs/abi.md): the whole value when it fits in `cap`, else
        nothing; the result is its length either way (0: no context)."""
        imports = self
        cur = self._running
        host = self.host

        def trace_context(env: int, caller: int, args: Any, nargs: int) -> int:
            me = cur.active
            assert me is not None
            try:
                p, cap = args[0] & _U32, args[4] & _U32
                me.check("micromono.trace_context", "buffer", p, cap)
                value = host.trace_context(me)
                n = len(value)
                if n <= cap:
                    me.view[p : p + n] = value
                args[0] = n
                cur.active = me
                return 0
            except BaseException as exc:
                return imports._fail(me, exc)

        return trace_context

    # --- actors (docs/abi.md, "Actors") ---------------------------------------------------------------------------

    def _define_storage(self, i32: Any, i64: Any) -> None:
        """The actor imports: each reads its byte ranges from the caller's memory, asks the Host, and writes a
        bytes result to the buffer the caller lent, or holds it for `take_reply` when it does not fit."""
        imports = self
        cur = self._running
        host = self.host

        def give(me: Instance, result: bytes | int, p: int, cap: int) -> int:
            if isinstance(result, int):
                return result
            data: bytes = result
            n = len(data)
            if n <= cap:
                me.view[p : p + n] = data
            else:
                me.held_reply = data
            return n

        def actor_key(env: int, caller: int, args: Any, nargs: int) -> int:
            me = cur.active
            assert me is not None
            try:
                p, cap = args[0] & _U32, args[4] & _U32
                me.check("micromono.actor_key", "buffer", p, cap)
                key = host.actor_key(me)
                if isinstance(key, bytes):
                    n = min(len(key), cap)
                    me.view[p : p + n] = key[:n]
                    args[0] = len(key)
                else:
                    args[0] = key
                cur.active = me
                return 0
            except BaseException as exc:
                return imports._fail(me, exc)

        def kv_get(env: int, caller: int, args: Any, nargs: int) -> int:
            me = cur.active
            assert me is not None
            try:
                kp, kl, p, cap = args[0] & _U32, args[4] & _U32, args[8] & _U32, args[12] & _U32
                me.check("micromono.kv_get", "key", kp, kl)
                me.check("micromono.kv_get", "buffer", p, cap)
                args[0] = give(me, host.kv_get(me, me.mem[kp : kp + kl]), p, cap)
                cur.active = me
                return 0
            except BaseException as exc:
                return imports._fail(me, exc)

        def kv_put(env: int, caller: int, args: Any, nargs: int) -> int:
            me = cur.active
            assert me is not None
            try:
                kp, kl, vp, vl = args[0] & _U32, args[4] & _U32, args[8] & _U32, args[12] & _U32
                me.check("micromono.kv_put", "key", kp, kl)
                me.check("micromono.kv_put", "value", vp, vl)
                mem = me.mem
                args[0] = host.kv_put(me, mem[kp : kp + kl], mem[vp : vp + vl])
                cur.active = me
                return 0
            except BaseException as exc:
                return imports._fail(me, exc)

        def kv_delete(env: int, caller: int, args: Any, nargs: int) -> int:
            me = cur.active
            assert me is not None
            try:
                kp, kl = args[0] & _U32, args[4] & _U32
                me.check("micromono.kv_delete", "key", kp, kl)
                args[0] = host.kv_delete(me, me.mem[kp : kp + kl])
                cur.active = me
                return 0
            except BaseException as exc:
                return imports._fail(me, exc)

        def kv_list(env: int, caller: int, args: Any, nargs: int) -> int:
            me = cur.active
            assert me is not None
            try:
                op, ol, p, cap = args[0] & _U32, args[4] & _U32, args[8] & _U32, args[12] & _U32
                me.check("micromono.kv_list", "options", op, ol)
                me.check("micromono.kv_list", "buffer", p, cap)
                args[0] = give(me, host.kv_list(me, me.mem[op : op + ol]), p, cap)
                cur.active = me
                return 0
            except BaseException as exc:
                return imports._fail(me, exc)

        def sql_exec(env: int, caller: int, args: Any, nargs: int) -> int:
            me = cur.active
            assert me is not None
            try:
                sp, sl, pp, pl = args[0] & _U32, args[4] & _U32, args[8] & _U32, args[12] & _U32
                p, cap = args[16] & _U32, args[20] & _U32
                me.check("micromono.sql_exec", "statement", sp, sl)
                me.check("micromono.sql_exec", "params", pp, pl)
                me.check("micromono.sql_exec", "buffer", p, cap)
                mem = me.mem
                args[0] = give(me, host.sql_exec(me, mem[sp : sp + sl], mem[pp : pp + pl]), p, cap)
                cur.active = me
                return 0
            except BaseException as exc:
                return imports._fail(me, exc)

        def alarm(op: int) -> Callable[..., int]:
            def alarm_import(env: int, caller: int, args: Any, nargs: int) -> int:
                me = cur.active
                assert me is not None
                try:
                    at_ms = (args[0] & _U32) | (args[1] << 32) if op == ALARM_SET else 0
                    result = host.alarm(me, op, at_ms)
                    args[0] = result & _U32
                    args[1] = result >> 32
                    cur.active = me
                    return 0
                except BaseException as exc:
                    return imports._fail(me, exc)

            return alarm_import

        self._define("actor_key", [i32] * 2, [i32], actor_key)
        self._define("kv_get", [i32] * 4, [i32], kv_get)
        self._define("kv_put", [i32] * 4, [i32], kv_put)
        self._define("kv_delete", [i32] * 2, [i32], kv_delete)
        self._define("kv_list", [i32] * 4, [i32], kv_list)
        self._define("sql_exec", [i32] * 6, [i32], sql_exec)

        def ws(op: int, name: str) -> Callable[..., int]:
            # ws_send(conn i64, type, ptr, len) / ws_close(conn i64, code, ptr, len) / ws_tag(conn i64, ptr, len) /
            # ws_publish(type, ptr, len, tag_ptr, tag_len): each argument in its own 16-byte slot (4 words).
            def ws_import(env: int, caller: int, args: Any, nargs: int) -> int:
                me = cur.active
                assert me is not None
                try:
                    mem_args = [args[4 * i] & _U32 for i in range(nargs)]
                    conn = 0
                    if op != WS_PUBLISH:
                        conn = (args[0] & _U32) | ((args[1] & _U32) << 32)
                    data = tag = b""
                    number = 0
                    if op == WS_PUBLISH:
                        number, p, n, tp, tn = mem_args[:5]
                    elif op == WS_TAG:
                        p, n, tp, tn = 0, 0, mem_args[1], mem_args[2]
                    else:
                        number, p, n = mem_args[1], mem_args[2], mem_args[3]
                        tp = tn = 0
                    me.check(f"micromono.{name}", "data", p, n)
                    me.check(f"micromono.{name}", "tag", tp, tn)
                    mem = me.mem
                    if n:
                        data = mem[p : p + n]
                    if tn:
                        tag = mem[tp : tp + tn]
                    args[0] = host.websocket(me, op, conn, number, data, tag)
                    cur.active = me
                    return 0
                except BaseException as exc:
                    return imports._fail(me, exc)

            return ws_import

        self._define("ws_send", [i64, i32, i32, i32], [i32], ws(WS_SEND, "ws_send"))
        self._define("ws_publish", [i32] * 5, [i32], ws(WS_PUBLISH, "ws_publish"))
        self._define("ws_close", [i64, i32, i32, i32], [i32], ws(WS_CLOSE, "ws_close"))
        self._define("ws_tag", [i64, i32, i32], [i32], ws(WS_TAG, "ws_tag"))
        self._define("alarm_set", [i64], [i32], alarm(ALARM_SET))
        self._define("alarm_get", [], [i64], alarm(ALARM_GET))
        self._define("alarm_delete", [], [i32], alarm(ALARM_DELETE))
