"""The SDKs' actor API (sdk/c, sdk/zig) against a fake host, without the daemon.

Each guest (examples/counter.c, examples/room.zig, tests/fixtures/actor_probe.c, and two small guests compiled here
to reach what those do not) runs in wasmtime with `micromono.*` imports written in this file from docs/abi.md: one
actor's key-value storage in a dict, its SQL database in sqlite3, its alarm in an attribute. The fake host decodes
everything the guest passes strictly (lengths, tags, flags, no trailing bytes) and records it, so a wrong encoding
in an SDK fails here, and it answers in the ABI's encodings, so a wrong decoding does too. It keeps no transactions:
what a failed request rolls back is the real host's business; here the guest's results say whether it failed.
"""

from __future__ import annotations

import json
import re
import sqlite3
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from conftest import EXAMPLES_BUILD, build_c_guest, build_zig_guest
from micromono import abi

pytestmark = pytest.mark.skipif(
    not (EXAMPLES_BUILD / "actor_probe.wasm").exists(),
    reason="examples not built: run `make examples` (make test does)",
)

NOT_FOUND, STORAGE_FULL, SQL, NOT_ACTOR, INVALID = (
    abi.MM_ERR_NOT_FOUND,
    abi.MM_ERR_STORAGE_FULL,
    abi.MM_ERR_SQL,
    abi.MM_ERR_NOT_ACTOR,
    abi.MM_ERR_INVALID,
)
KIND_HTTP, KIND_CALL, KIND_MESSAGE, KIND_ALARM = abi.KIND_HTTP, abi.KIND_CALL, abi.KIND_MESSAGE, abi.KIND_ALARM
FUEL = 10**10  # plenty for any request here; `spin` runs out of it

SqlValue = None | int | float | str | bytes

_config = wasmtime.Config()
_config.consume_fuel = True
ENGINE = wasmtime.Engine(_config)
_modules: dict[Path, wasmtime.Module] = {}


def module(path: Path) -> wasmtime.Module:
    if path not in _modules:
        _modules[path] = wasmtime.Module.from_file(ENGINE, str(path))
    return _modules[path]


class AbiViolation(Exception):
    """The guest passed something docs/abi.md does not allow (the real host would trap it)."""


# ---------------------------------------------------------------------------------------------------------------------
# The fake host
# ---------------------------------------------------------------------------------------------------------------------

I32, I64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
_FORBIDDEN_SQL = re.compile(r"^\s*(BEGIN|COMMIT|END|ROLLBACK|SAVEPOINT|RELEASE|PRAGMA|ATTACH|DETACH)\b", re.IGNORECASE)


@dataclass
class ListCall:
    limit: int
    flags: int
    prefix: bytes
    start: bytes
    end: bytes


@dataclass
class FakeHost:
    """One actor's side of the ABI. `key=None` plays a service that is not an actor."""

    key: bytes | None = b"alice"
    kv: dict[bytes, bytes] = field(default_factory=dict)
    alarm: int | None = None
    db: sqlite3.Connection = field(default_factory=lambda: sqlite3.connect(":memory:", isolation_level=None))
    storage_limit: int = 1 << 30
    # What the guest did, decoded:
    statements: list[tuple[str, list[SqlValue]]] = field(default_factory=list)
    lists: list[ListCall] = field(default_factory=list)
    alarm_sets: list[int] = field(default_factory=list)
    calls: list[tuple[bytes, bytes]] = field(default_factory=list)
    sends: list[tuple[bytes, bytes]] = field(default_factory=list)
    logs: list[tuple[int, str]] = field(default_factory=list)
    taken: int = 0  # results fetched with take_reply
    violations: list[str] = field(default_factory=list)
    held: bytes | None = None
    last_error: bytes = b""

    # -- plumbing -----------------------------------------------------------------------------------------------------

    def _violation(self, message: str) -> AbiViolation:
        self.violations.append(message)
        return AbiViolation(message)

    def _read(self, caller: Any, what: str, ptr: int, length: int) -> bytes:
        ptr, length = ptr & 0xFFFFFFFF, length & 0xFFFFFFFF
        memory = caller["memory"]
        size = memory.data_len(caller)
        if ptr + length > size:
            raise self._violation(f"{what} (ptr={ptr}, len={length}) is outside linear memory of {size} bytes")
        return bytes(memory.read(caller, ptr, ptr + length))

    def _write(self, caller: Any, what: str, ptr: int, data: bytes) -> None:
        ptr = ptr & 0xFFFFFFFF
        memory = caller["memory"]
        if ptr + len(data) > memory.data_len(caller):
            raise self._violation(f"{what}: writing {len(data)} bytes at {ptr} is outside linear memory")
        memory.write(caller, data, ptr)

    def _reply(self, caller: Any, what: str, result: bytes, ptr: int, cap: int) -> int:
        """A result of any size: written when it fits, else held for take_reply (docs/abi.md `call`)."""
        self.held = None
        if len(result) <= cap & 0xFFFFFFFF:
            self._write(caller, what, ptr, result)
        else:
            self.held = result
        return len(result)

    def _fail(self, code: int, message: str) -> int:
        self.last_error = message.encode()
        return code

    def _key(self, caller: Any, what: str, ptr: int, length: int) -> bytes | int:
        key = self._read(caller, what, ptr, length)
        if not 1 <= len(key) <= 2048:
            return self._fail(INVALID, f"{what}: keys are 1 to 2048 bytes, got {len(key)}")
        return key

    def _size(self) -> int:
        return sum(len(k) + len(v) for k, v in self.kv.items())

    # -- imports ------------------------------------------------------------------------------------------------------

    def take_reply(self, caller: Any, ptr: int, cap: int) -> int:
        if self.held is None or cap & 0xFFFFFFFF < len(self.held):
            return self._fail(abi.MM_ERR_NO_REPLY, "take_reply: no reply held, or the buffer is too small")
        held, self.held = self.held, None
        self._write(caller, "take_reply", ptr, held)
        self.taken += 1
        return len(held)

    def last_error_(self, caller: Any, ptr: int, cap: int) -> int:
        self._write(caller, "last_error", ptr, self.last_error[: cap & 0xFFFFFFFF])
        return len(self.last_error)

    def log(self, caller: Any, level: int, ptr: int, length: int) -> None:
        self.logs.append((level, self._read(caller, "log", ptr, length).decode("utf-8", "replace")))

    def call(self, caller: Any, tptr: int, tlen: int, rptr: int, rlen: int, out: int, cap: int) -> int:
        target, request = self._read(caller, "call target", tptr, tlen), self._read(caller, "call request", rptr, rlen)
        self.calls.append((target, request))
        if target == b"missing":
            return self._fail(abi.MM_ERR_UNKNOWN_TARGET, "no service named 'missing' is loaded")
        reply = b"r" * 100_000 if request == b"big" else b"reply to " + request
        return self._reply(caller, "call reply", reply, out, cap)

    def send(self, caller: Any, tptr: int, tlen: int, mptr: int, mlen: int) -> int:
        target, message = self._read(caller, "send target", tptr, tlen), self._read(caller, "send message", mptr, mlen)
        if target == b"full":
            return self._fail(abi.MM_ERR_OVERLOADED, "the mailbox of 'full' is full")
        self.sends.append((target, message))
        return 0

    def actor_key(self, caller: Any, ptr: int, cap: int) -> int:
        if self.key is None:
            return self._fail(NOT_ACTOR, "actor_key: this service is not an actor")
        self._write(caller, "actor_key", ptr, self.key[: cap & 0xFFFFFFFF])
        return len(self.key)

    def kv_get(self, caller: Any, kptr: int, klen: int, ptr: int, cap: int) -> int:
        if self.key is None:
            return self._fail(NOT_ACTOR, "kv_get: this service is not an actor")
        key = self._key(caller, "kv_get", kptr, klen)
        if isinstance(key, int):
            return key
        if key not in self.kv:
            return NOT_FOUND
        return self._reply(caller, "kv_get", self.kv[key], ptr, cap)

    def kv_put(self, caller: Any, kptr: int, klen: int, vptr: int, vlen: int) -> int:
        if self.key is None:
            return self._fail(NOT_ACTOR, "kv_put: this service is not an actor")
        key = self._key(caller, "kv_put", kptr, klen)
        if isinstance(key, int):
            return key
        value = self._read(caller, "kv_put value", vptr, vlen)
        if self._size() - len(self.kv.get(key, b"")) + len(value) + len(key) > self.storage_limit:
            return self._fail(STORAGE_FULL, "kv_put: the actor would exceed its storage_limit")
        self.kv[key] = value
        return 0

    def kv_delete(self, caller: Any, kptr: int, klen: int) -> int:
        key = self._key(caller, "kv_delete", kptr, klen)
        if isinstance(key, int):
            return key
        return 1 if self.kv.pop(key, None) is not None else 0

    def kv_list(self, caller: Any, optr: int, olen: int, ptr: int, cap: int) -> int:
        opts = self._read(caller, "kv_list options", optr, olen)
        if len(opts) < 20:
            return self._fail(INVALID, f"kv_list: options of {len(opts)} bytes")
        limit, flags, prefix_len, start_len, end_len = struct.unpack_from("<5I", opts)
        if len(opts) != 20 + prefix_len + start_len + end_len or flags & ~1:
            return self._fail(INVALID, "kv_list: options_len does not match the lengths, or unknown flags")
        start_at = 20 + prefix_len
        end_at = start_at + start_len
        prefix, start, end = opts[20:start_at], opts[start_at:end_at], opts[end_at:]
        self.lists.append(ListCall(limit, flags, prefix, start, end))
        keys = sorted(k for k in self.kv if k.startswith(prefix) and k >= start and (not end or k < end))
        if flags & 1:
            keys.reverse()
        if limit:
            keys = keys[:limit]
        block = struct.pack("<I", len(keys)) + b"".join(
            struct.pack("<II", len(k), len(self.kv[k])) + k + self.kv[k] for k in keys
        )
        return self._reply(caller, "kv_list", block, ptr, cap)

    def sql_exec(self, caller: Any, sptr: int, slen: int, pptr: int, plen: int, ptr: int, cap: int) -> int:
        if self.key is None:
            return self._fail(NOT_ACTOR, "sql_exec: this service is not an actor")
        statement = self._read(caller, "sql_exec statement", sptr, slen).decode()
        raw = self._read(caller, "sql_exec params", pptr, plen) if plen else b""
        try:
            params = decode_params(raw)
        except ValueError as exc:
            return self._fail(INVALID, f"sql_exec: bad parameters: {exc}")
        self.statements.append((statement, params))
        if _FORBIDDEN_SQL.match(statement):
            return self._fail(SQL, "sql_exec: statement not allowed")
        try:
            cursor = self.db.execute(statement, params)
            rows = cursor.fetchall()
        except (sqlite3.Error, sqlite3.Warning) as exc:
            return self._fail(SQL, str(exc))
        names = [d[0] for d in cursor.description or ()]
        (rowid,) = self.db.execute("SELECT last_insert_rowid()").fetchone()
        block = struct.pack("<IIIIq", len(names), len(rows), max(cursor.rowcount, 0), 0, rowid)
        block += b"".join(struct.pack("<I", len(n.encode())) + n.encode() for n in names)
        block += b"".join(encode_value(v) for row in rows for v in row)
        return self._reply(caller, "sql_exec", block, ptr, cap)

    def alarm_set(self, at_ms: int) -> int:
        if self.key is None:
            return self._fail(NOT_ACTOR, "alarm_set: this service is not an actor")
        self.alarm = at_ms
        self.alarm_sets.append(at_ms)
        return 0

    def alarm_get(self) -> int:
        if self.key is None:
            return self._fail(NOT_ACTOR, "alarm_get: this service is not an actor")
        return -1 if self.alarm is None else self.alarm

    def alarm_delete(self) -> int:
        self.alarm = None
        return 0

    def define(self, linker: wasmtime.Linker) -> None:
        i32s = [I32]
        imports: dict[str, tuple[list[wasmtime.ValType], list[wasmtime.ValType], Callable[..., Any], bool]] = {
            "call": ([I32] * 6, i32s, self.call, True),
            "take_reply": ([I32] * 2, i32s, self.take_reply, True),
            "send": ([I32] * 4, i32s, self.send, True),
            "log": ([I32] * 3, [], self.log, True),
            "last_error": ([I32] * 2, i32s, self.last_error_, True),
            "actor_key": ([I32] * 2, i32s, self.actor_key, True),
            "kv_get": ([I32] * 4, i32s, self.kv_get, True),
            "kv_put": ([I32] * 4, i32s, self.kv_put, True),
            "kv_delete": ([I32] * 2, i32s, self.kv_delete, True),
            "kv_list": ([I32] * 4, i32s, self.kv_list, True),
            "sql_exec": ([I32] * 6, i32s, self.sql_exec, True),
            "alarm_set": ([I64], i32s, self.alarm_set, False),
            "alarm_get": ([], [I64], self.alarm_get, False),
            "alarm_delete": ([], i32s, self.alarm_delete, False),
        }
        for name, (params, results, func, caller) in imports.items():
            linker.define_func("micromono", name, wasmtime.FuncType(params, results), func, access_caller=caller)


def decode_params(raw: bytes) -> list[SqlValue]:
    """docs/abi.md `sql_exec` params, strictly: `u32 count`, that many tagged values, nothing after them."""
    if not raw:
        return []
    (count,), pos, values = struct.unpack_from("<I", raw), 4, []
    for _ in range(count):
        value, pos = decode_value(raw, pos)
        values.append(value)
    if pos != len(raw):
        raise ValueError(f"{len(raw) - pos} bytes after the last parameter")
    return values


def decode_value(raw: bytes, pos: int) -> tuple[SqlValue, int]:
    if pos >= len(raw):
        raise ValueError("truncated")
    tag, pos = raw[pos], pos + 1
    if tag == 0:
        return None, pos
    if tag in (1, 2):
        if pos + 8 > len(raw):
            raise ValueError("truncated number")
        return struct.unpack_from("<q" if tag == 1 else "<d", raw, pos)[0], pos + 8
    if tag in (3, 4):
        if pos + 4 > len(raw):
            raise ValueError("truncated length")
        (n,) = struct.unpack_from("<I", raw, pos)
        data = raw[pos + 4 : pos + 4 + n]
        if len(data) != n:
            raise ValueError("truncated bytes")
        return (data.decode() if tag == 3 else data), pos + 4 + n
    raise ValueError(f"unknown tag {tag}")


def encode_value(value: SqlValue) -> bytes:
    if value is None:
        return b"\x00"
    if isinstance(value, int):
        return b"\x01" + struct.pack("<q", value)
    if isinstance(value, float):
        return b"\x02" + struct.pack("<d", value)
    data, tag = (value.encode(), b"\x03") if isinstance(value, str) else (value, b"\x04")
    return tag + struct.pack("<I", len(data)) + data


# ---------------------------------------------------------------------------------------------------------------------
# A guest instance
# ---------------------------------------------------------------------------------------------------------------------


def func_type(t: object) -> tuple[list[str], list[str]]:
    """An import's or export's function type as value type names: (["i32", "i32"], ["i64"])."""
    assert isinstance(t, wasmtime.FuncType), t
    return [str(p) for p in t.params], [str(r) for r in t.results]


class Guest:
    """One instance of a module, linked to a FakeHost and WASI, driven the way the daemon drives it."""

    def __init__(self, path: Path, host: FakeHost | None = None) -> None:
        self.host = host or FakeHost()
        self.store = wasmtime.Store(ENGINE)
        self.store.set_wasi(wasmtime.WasiConfig())
        self.store.set_fuel(FUEL)
        linker = wasmtime.Linker(ENGINE)
        linker.define_wasi()
        self.host.define(linker)
        self.module = module(path)
        # The WebSocket imports are test_sdk_ws.py's subject (its WsHost defines them): here a publish is accepted
        # and dropped (the room publishes what is posted, best effort), and any other call traps.
        if not hasattr(self.host, "ws_publish"):
            i32 = wasmtime.ValType.i32()
            linker.define_func("micromono", "ws_publish", wasmtime.FuncType([i32] * 5, [i32]), lambda *args: 0)
        linker.define_unknown_imports_as_traps(self.module)
        self._exports = linker.instantiate(self.store, self.module).exports(self.store)
        memory = self._exports["memory"]
        assert isinstance(memory, wasmtime.Memory)
        self.memory = memory
        if "_initialize" in self._exports:
            self._call("_initialize")
        assert self._call("mm_abi_version") == abi.ABI_VERSION
        self.inbox_size = 65536
        self.inbox = self._call("mm_inbox", self.inbox_size)
        assert self.inbox != 0

    def _call(self, export: str, *args: int) -> Any:
        func = self._exports[export]
        assert isinstance(func, wasmtime.Func), export
        self.store.set_fuel(FUEL)
        return func(self.store, *args)

    def handle(self, kind: int, payload: bytes) -> bytes | int:
        """The reply, or the negative application error mm_handle returned."""
        if len(payload) > self.inbox_size:
            self.inbox, self.inbox_size = self._call("mm_inbox", len(payload)), len(payload)
        self.memory.write(self.store, payload, self.inbox)
        try:
            result: int = self._call("mm_handle", kind, len(payload))
        finally:
            self.host.held = None  # "either drops it": a held result does not outlive the entry
        assert not self.host.violations, self.host.violations
        if result < 0:
            return result
        ptr, length = result >> 32, result & 0xFFFFFFFF
        return bytes(self.memory.read(self.store, ptr, ptr + length))

    def http(
        self, method: str, path: str, body: bytes = b"", query: str = ""
    ) -> tuple[int, dict[str, str], bytes] | int:
        request = abi.encode_http_request(method.encode(), path.encode(), query.encode(), b"", body)
        reply = self.handle(KIND_HTTP, request)
        if isinstance(reply, int):
            return reply
        status, headers, content = abi.decode_http_response(reply)
        return status, {k.decode().lower(): v.decode() for k, v in headers}, content

    def call(self, payload: bytes) -> bytes | int:
        return self.handle(KIND_CALL, payload)

    def alarm(self, scheduled_ms: int, attempt: int) -> bytes | int:
        return self.handle(KIND_ALARM, struct.pack("<QI", scheduled_ms, attempt))

    def migrate(self, from_version: int) -> int:
        return int(self._call("mm_migrate", from_version))

    def schema_version(self) -> int:
        return int(self._call("mm_schema_version"))

    def import_types(self) -> dict[str, tuple[list[str], list[str]]]:
        return {f"{i.module}.{i.name}": func_type(i.type) for i in self.module.imports}

    def export_names(self) -> set[str]:
        return {e.name for e in self.module.exports}


# The actor imports, with the types docs/abi.md gives them.
ACTOR_IMPORTS = {
    "micromono.actor_key": (["i32"] * 2, ["i32"]),
    "micromono.kv_get": (["i32"] * 4, ["i32"]),
    "micromono.kv_put": (["i32"] * 4, ["i32"]),
    "micromono.kv_delete": (["i32"] * 2, ["i32"]),
    "micromono.kv_list": (["i32"] * 4, ["i32"]),
    "micromono.sql_exec": (["i32"] * 6, ["i32"]),
    "micromono.alarm_set": (["i64"], ["i32"]),
    "micromono.alarm_get": ([], ["i64"]),
    "micromono.alarm_delete": ([], ["i32"]),
}


# ---------------------------------------------------------------------------------------------------------------------
# actor_probe (C SDK, every import)
# ---------------------------------------------------------------------------------------------------------------------

PROBE = EXAMPLES_BUILD / "actor_probe.wasm"


def probe(script: str, host: FakeHost | None = None) -> list[str]:
    """Runs a probe script over HTTP and returns its result lines."""
    guest = Guest(PROBE, host)
    answer = guest.http("POST", "/probe/alice", script.encode())
    assert not isinstance(answer, int), answer
    status, headers, body = answer
    assert (status, headers["content-type"]) == (200, "text/plain")
    assert body.endswith(b"\n") or body == b""
    return body.decode().split("\n")[:-1]


@pytest.mark.parametrize(("name", "version"), [("actor_probe", 1), ("actor_probe_v2", 2), ("actor_probe_v2_trap", 2)])
def test_probe_variants_import_every_actor_function_and_export_their_schema(name: str, version: int) -> None:
    guest = Guest(EXAMPLES_BUILD / f"{name}.wasm")
    imports = guest.import_types()
    assert {name: imports[name] for name in ACTOR_IMPORTS} == ACTOR_IMPORTS
    assert guest.schema_version() == version
    exports = {e.name: e.type for e in guest.module.exports}
    assert func_type(exports["mm_schema_version"]) == ([], ["i32"])
    assert func_type(exports["mm_migrate"]) == (["i32"], ["i32"])


def test_probe_key_echo_and_unknown_commands() -> None:
    assert probe("key\necho two words\r\n\nnope") == ["alice", "two words", "ERR -15 probe: unknown command"]
    lines = probe("key", FakeHost(key=None))
    assert lines == ["ERR -14 actor_key: this service is not an actor"]


def test_probe_key_value_commands() -> None:
    host = FakeHost()
    script = "put a 1\nput b two words\nput empty\nget b\nget empty\nget zz\ndel a\ndel a\nincr n\nincr n\nget n"
    assert probe(script, host) == [
        "ok",
        "ok",
        "ok",
        "two words",
        "",
        "ERR -11 mm_kv_get: no value under this key",
        "1",
        "0",
        "1",
        "2",
        "2",
    ]
    assert host.kv == {b"b": b"two words", b"empty": b"", b"n": b"2"}


def test_probe_incr_refuses_a_value_that_is_not_a_decimal_integer() -> None:
    kv = {b"n": b"12x", b"m": b"-5", b"big": b"9223372036854775808", b"plus": b"+1", b"max": b"9223372036854775807"}
    host = FakeHost(kv=kv)
    assert probe("incr n\nincr m\nincr big\nincr plus\nincr max", host) == [
        "ERR -15 mm_kv_get_i64: the value is not a decimal int64",
        "-4",
        "ERR -15 mm_kv_get_i64: the value is not a decimal int64",  # 2^63 does not fit
        "ERR -15 mm_kv_get_i64: the value is not a decimal int64",
        "ERR -15 probe: incr would overflow",
    ]
    assert host.kv[b"m"] == b"-4"


def test_probe_list_encodes_prefix_limit_and_order() -> None:
    host = FakeHost(kv={b"a": b"0", b"b1": b"x", b"b2": b"y", b"b3": b"z", b"c": b"1"})
    assert probe("list b 0\nlist b 2 rev\nlist  0\nlist nothing 0\nlist b\nlist b -1", host) == [
        "b1=x,b2=y,b3=z",
        "b3=z,b2=y",
        "a=0,b1=x,b2=y,b3=z,c=1",
        "",
        "ERR -15 probe: usage: list PREFIX LIMIT [rev]",
        "ERR -15 probe: usage: list PREFIX LIMIT [rev]",
    ]
    assert host.lists == [
        ListCall(0, 0, b"b", b"", b""),
        ListCall(2, 1, b"b", b"", b""),
        ListCall(0, 0, b"", b"", b""),
        ListCall(0, 0, b"nothing", b"", b""),
    ]


def test_probe_big_values_come_back_through_take_reply() -> None:
    host = FakeHost()
    lines = probe("big 100000\nget big\nlist big 0", host)
    value = bytes(ord("a") + i % 26 for i in range(100_000))
    assert host.kv[b"big"] == value
    assert lines == ["ok", value.decode(), "big=" + value.decode()]
    assert host.taken == 2


def test_probe_sql_rows_changes_and_parameters() -> None:
    host = FakeHost()
    lines = probe(
        "sql CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER, s TEXT)\n"
        "sql? INSERT INTO t (n, s) VALUES (?, ?)\t42\thello world\n"
        "sql? INSERT INTO t (n, s) VALUES (?, ?)\t-7\t1.5\n"
        "sql SELECT id, n, s FROM t ORDER BY id\n"
        "sql? SELECT count(*) FROM t WHERE n > ?\t0\n"
        "sql SELECT 2.5, x'00ff', NULL, 'a|b'\n"
        "sql UPDATE t SET n = n + 1\n"
        "sql SELEC nonsense\n"
        "sql SELECT 1; SELECT 2\n"
        "sql BEGIN",
        host,
    )
    assert lines == [
        "changes=0",
        "changes=1",
        "changes=1",
        "1|42|hello world",
        "2|-7|1.5",
        "changes=0",
        "1",
        "changes=0",
        "2.5|x'00ff'|NULL|a|b",
        "changes=0",
        "changes=2",
        'ERR -13 near "SELEC": syntax error',
        "ERR -13 You can only execute one statement at a time.",
        "ERR -13 sql_exec: statement not allowed",
    ]
    # The host decoded exactly these parameters: integers where they parse, text otherwise.
    assert [p for s, p in host.statements if "?" in s] == [[42, "hello world"], [-7, "1.5"], [0]]


def test_probe_sql_result_larger_than_the_lent_buffer() -> None:
    host = FakeHost()
    lines = probe("sql SELECT printf('%.*c', 100000, 'x'), 'end'", host)
    assert lines == ["x" * 100000 + "|end", "changes=0"]
    assert host.taken == 1


def test_probe_alarm_commands() -> None:
    host = FakeHost()
    assert probe("alarm?\nalarm 1700000000123\nalarm?\nalarm-\nalarm?\nalarm x", host) == [
        "-1",
        "ok",
        "1700000000123",
        "ok",
        "-1",
        "ERR -15 probe: usage: alarm MS",
    ]
    assert host.alarm_sets == [1700000000123] and host.alarm is None
    assert probe("alarm? \nalarm 5", FakeHost(key=None)) == [
        "ERR -14 alarm_get: this service is not an actor",
        "ERR -14 alarm_set: this service is not an actor",
    ]


def test_probe_send_and_call() -> None:
    host = FakeHost()
    lines = probe("send other hello there\ncall other ping\ncall other big\ncall missing x\nsend full x", host)
    assert lines == [
        "ok",
        "reply to ping",
        "r" * 100_000,
        "ERR -1 no service named 'missing' is loaded",
        "ERR -3 the mailbox of 'full' is full",
    ]
    assert host.sends == [(b"other", b"hello there")]
    assert host.calls == [(b"other", b"ping"), (b"other", b"big"), (b"missing", b"x")]
    assert host.taken == 1


def test_probe_fail_stops_with_application_error_7_in_every_kind() -> None:
    for kind in (KIND_HTTP, KIND_CALL, KIND_MESSAGE):
        host = FakeHost()
        guest = Guest(PROBE, host)
        scripts = [b"put before 1\nfail\nput after 1", b"put next 1"]
        payloads = [abi.encode_http_request(b"POST", b"/p", b"", b"", s) if kind == KIND_HTTP else s for s in scripts]
        assert guest.handle(kind, payloads[0]) == -7
        assert host.kv == {b"before": b"1"}  # the commands before it ran (the real host rolls them back)
        # The failure does not stick to the next request.
        assert not isinstance(guest.handle(kind, payloads[1]), int)


def test_probe_call_and_message_run_scripts() -> None:
    host = FakeHost()
    guest = Guest(PROBE, host)
    assert guest.call(b"incr n\nkey\n") == b"1\nalice\n"
    assert guest.handle(KIND_MESSAGE, b"incr n\nincr n") == b""
    assert host.kv == {b"n": b"3"}


def test_probe_trap_and_spin() -> None:
    host = FakeHost()
    guest = Guest(PROBE, host)
    with pytest.raises(wasmtime.Trap, match="unreachable"):
        guest.call(b"put k v\ntrap\nput k2 v")
    assert host.kv == {b"k": b"v"}
    with pytest.raises(wasmtime.Trap, match="fuel"):
        Guest(PROBE).call(b"spin")


def test_probe_alarm_handler_appends_attempts_and_fails_on_request() -> None:
    host = FakeHost()
    guest = Guest(PROBE, host)
    assert guest.alarm(1700000000000, 1) == b""
    assert guest.alarm(1700000000000, 2) == b""
    assert host.kv[b"alarms"] == b"1,2"
    host.kv[b"alarm_fail"] = b"1"
    assert guest.alarm(1700000000000, 3) == -7
    assert host.kv[b"alarms"] == b"1,2,3"  # appended before failing: the real host rolls it back
    assert guest.handle(KIND_ALARM, b"\x01\x00") == -400  # shorter than u64 + u32


def test_probe_migrations() -> None:
    host = FakeHost()
    assert Guest(PROBE, host).migrate(0) == 0
    assert Guest(EXAMPLES_BUILD / "actor_probe_v2.wasm", host).migrate(1) == 0
    assert host.kv[b"migrations"] == b"0->1,1->2"
    trapping = Guest(EXAMPLES_BUILD / "actor_probe_v2_trap.wasm", host)
    with pytest.raises(wasmtime.Trap, match="unreachable"):
        trapping.migrate(1)
    # A storage failure during the migration is a non-zero result.
    assert Guest(PROBE, FakeHost(key=None)).migrate(0) == NOT_ACTOR


def test_probe_rejects_unknown_kinds() -> None:
    assert Guest(PROBE).handle(9, b"") == -501


# ---------------------------------------------------------------------------------------------------------------------
# counter (C)
# ---------------------------------------------------------------------------------------------------------------------

COUNTER = EXAMPLES_BUILD / "counter.wasm"


def test_counter_contract() -> None:
    host = FakeHost(key=b"visits")
    guest = Guest(COUNTER, host)
    assert guest.http("GET", "/counter/visits") == (200, {"content-type": "text/plain"}, b"0")
    assert host.kv == {}  # a read writes nothing
    assert guest.http("POST", "/counter/visits") == (200, {"content-type": "text/plain"}, b"1")
    assert guest.http("POST", "/counter/visits") == (200, {"content-type": "text/plain"}, b"2")
    assert guest.http("GET", "/counter/visits") == (200, {"content-type": "text/plain"}, b"2")
    assert host.kv == {b"n": b"2"}
    answer = guest.http("PUT", "/counter/visits")
    assert not isinstance(answer, int) and answer[:2] == (405, {"content-type": "text/plain", "allow": "GET, POST"})
    assert guest.call(b"incr") == b"3"
    assert guest.call(b"get") == b"3"
    assert guest.call(b"reset") == -400
    assert host.kv == {b"n": b"3"}


def test_counter_reads_storage_every_time() -> None:
    host = FakeHost()
    guest = Guest(COUNTER, host)
    assert guest.call(b"incr") == b"1"
    host.kv[b"n"] = b"41"  # as if another instance (after a hibernation) had written it
    assert guest.http("POST", "/counter/alice") == (200, {"content-type": "text/plain"}, b"42")
    # A fresh instance over the same storage continues from it.
    assert Guest(COUNTER, host).call(b"get") == b"42"


def test_counter_storage_errors() -> None:
    answer = Guest(COUNTER, FakeHost(key=None)).http("POST", "/counter/x")
    assert answer == (
        500,
        {"content-type": "text/plain"},
        b"storage error: not an actor: kv_get: this service is not an actor",
    )
    full = FakeHost(storage_limit=0)
    answer = Guest(COUNTER, full).http("POST", "/counter/x")
    assert not isinstance(answer, int) and answer[0] == 507 and full.kv == {}
    host = FakeHost(kv={b"n": b"many"})
    guest = Guest(COUNTER, host)
    assert guest.call(b"incr") == -500
    assert host.logs[-1] == (3, "mm_kv_get_i64: the value is not a decimal int64")


# ---------------------------------------------------------------------------------------------------------------------
# room (Zig SDK)
# ---------------------------------------------------------------------------------------------------------------------

ROOM = EXAMPLES_BUILD / "room.wasm"
DAY_MS = 24 * 60 * 60 * 1000


def room() -> Guest:
    guest = Guest(ROOM, FakeHost(key=b"lobby"))
    assert guest.schema_version() == 1
    assert guest.migrate(0) == 0
    return guest


def json_answer(guest: Guest, method: str, path: str, body: bytes = b"", query: str = "") -> tuple[int, Any]:
    answer = guest.http(method, path, body, query)
    assert not isinstance(answer, int), answer
    status, headers, content = answer
    assert headers["content-type"] == "application/json"
    return status, json.loads(content)


def test_room_imports_and_migration() -> None:
    guest = Guest(ROOM, FakeHost(key=b"lobby"))
    imports = guest.import_types()
    assert imports["wasi_snapshot_preview1.clock_time_get"] == (["i32", "i64", "i32"], ["i32"])
    assert {name: types for name, types in imports.items() if name in ACTOR_IMPORTS} == {
        name: ACTOR_IMPORTS[name]
        for name in ("micromono.actor_key", "micromono.sql_exec", "micromono.alarm_get", "micromono.alarm_set")
    }
    assert guest.migrate(0) == 0
    assert guest.host.db.execute("SELECT sql FROM sqlite_master").fetchall() == [
        ("CREATE TABLE messages (id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, text TEXT NOT NULL)",)
    ]
    assert guest.migrate(1) == 0  # nothing to do from version 1
    # Without the table (no migration ran) a request fails with an application error, which rolls it back.
    unmigrated = Guest(ROOM, FakeHost(key=b"lobby"))
    assert unmigrated.http("POST", "/room/lobby/messages", b"hi") == -500
    assert "error.Sql: no such table: messages" in unmigrated.host.logs[-1][1]


def test_room_post_list_and_info() -> None:
    guest = room()
    host = guest.host
    before = int(time.time() * 1000)
    text = 'say "hi"\n\\ tab\t é \u2603 \x01'
    assert json_answer(guest, "POST", "/room/lobby/messages", text.encode()) == (200, {"seq": 1})
    after = int(time.time() * 1000)
    statement, params = host.statements[-1]
    assert statement == "INSERT INTO messages (at_ms, text) VALUES (?, ?)"
    assert isinstance(params[0], int) and before <= params[0] <= after and params[1] == text
    # The first message armed the retention alarm; the second leaves it.
    assert host.alarm is not None and before + DAY_MS <= host.alarm <= after + DAY_MS
    assert json_answer(guest, "POST", "/room/lobby/messages", b"second") == (200, {"seq": 2})
    assert len(host.alarm_sets) == 1

    status, listed = json_answer(guest, "GET", "/room/lobby/messages")
    assert status == 200
    assert [(m["seq"], m["text"]) for m in listed["messages"]] == [(1, text), (2, "second")]
    assert before <= listed["messages"][0]["at"] <= after
    assert host.statements[-1][1] == [0, 100]
    status, listed = json_answer(guest, "GET", "/room/lobby/messages", query="x=1&since=1")
    assert [m["text"] for m in listed["messages"]] == ["second"]
    assert json_answer(guest, "GET", "/room/lobby/messages", query="since=2") == (200, {"messages": []})
    assert json_answer(guest, "GET", "/room/lobby") == (200, {"room": "lobby", "messages": 2})


def test_room_rejects_bad_requests() -> None:
    guest = room()
    assert json_answer(guest, "POST", "/room/lobby/messages", b"") == (400, {"error": "empty_message"})
    assert json_answer(guest, "POST", "/room/lobby/messages", b"\xff\xfe") == (400, {"error": "message_not_utf8"})
    assert json_answer(guest, "POST", "/room/lobby/messages", b"x" * 16385) == (413, {"error": "message_too_large"})
    for query in ("since=", "since=-1", "since=abc", "since"):
        assert json_answer(guest, "GET", "/room/lobby/messages", query=query) == (400, {"error": "bad_since"})
    assert json_answer(guest, "GET", "/room/lobby/other") == (404, {"error": "not_found"})
    assert json_answer(guest, "GET", "/room/lobby/messages/") == (404, {"error": "not_found"})
    answer = guest.http("DELETE", "/room/lobby/messages")
    assert not isinstance(answer, int) and answer[0] == 405 and answer[1]["allow"] == "GET, POST"
    answer = guest.http("POST", "/room/lobby")
    assert not isinstance(answer, int) and answer[0] == 405 and answer[1]["allow"] == "GET"
    assert guest.host.kv == {} and guest.host.db.execute("SELECT count(*) FROM messages").fetchone() == (0,)


def test_room_alarm_expires_old_messages_and_rearms_while_some_remain() -> None:
    guest = room()
    host = guest.host
    for text in (b"old", b"new"):
        assert json_answer(guest, "POST", "/room/lobby/messages", text)[0] == 200
    now = int(time.time() * 1000)
    host.db.execute("UPDATE messages SET at_ms = ? WHERE text = 'old'", (now - DAY_MS - 1000,))
    assert guest.alarm(now, 1) == b""
    assert host.db.execute("SELECT text FROM messages").fetchall() == [("new",)]
    assert len(host.alarm_sets) == 2 and host.alarm_sets[-1] >= now + DAY_MS
    # Once the room is empty, the alarm does not re-arm (the host clears it when the handler commits).
    host.db.execute("UPDATE messages SET at_ms = 0")
    assert guest.alarm(now, 1) == b""
    assert host.db.execute("SELECT count(*) FROM messages").fetchone() == (0,)
    assert len(host.alarm_sets) == 2


# ---------------------------------------------------------------------------------------------------------------------
# What the examples do not reach: every SQL type both ways, list bounds, the remaining helpers. Two small guests,
# compiled here with the SDKs.
# ---------------------------------------------------------------------------------------------------------------------

C_GUEST = r"""
#include "micromono.h"

static void put_value(mm_buf *out, const mm_sql_result *r, size_t row, size_t col) {
    const mm_sql_value *v = mm_sql_get(r, row, col);
    mm_buf_printf(out, "%d:", v->type);
    if (v->type == MM_SQL_INT) mm_buf_append_i64(out, v->integer);
    if (v->type == MM_SQL_REAL) mm_buf_printf(out, "%.17g", v->real);
    if (v->type == MM_SQL_TEXT || v->type == MM_SQL_BLOB)
        for (size_t i = 0; i < v->bytes.len; i++) mm_buf_printf(out, "%02x", (unsigned char)v->bytes.ptr[i]);
    mm_buf_append_byte(out, ' ');
}

int handle_call(mm_bytes req, mm_buf *out) {
    if (mm_bytes_eq(req, "sql")) {
        static const char blob[] = {0, 1, 2, (char)0xff};
        mm_sql_result r;
        int rc = mm_sql_exec("SELECT ? AS a, ?, ?, ?, ?, ? AS f",
                             MM_SQL_PARAMS(mm_sql_null(), mm_sql_int(INT64_MIN), mm_sql_real(-2.5),
                                           mm_sql_text("h\xc3\xa9llo"), mm_sql_blob(blob, sizeof blob),
                                           mm_sql_text_bytes(MM_LIT(""))), &r);
        if (rc != MM_OK) return 500;
        mm_buf_printf(out, "rows=%zu cols=%zu names=%s,%s ", mm_sql_rows(&r), mm_sql_columns(&r), r.names[0].ptr,
                      r.names[5].ptr);
        for (size_t c = 0; c < 6; c++) put_value(out, &r, 0, c);
        put_value(out, &r, 1, 0); /* out of range: a NULL cell */
        mm_buf_printf(out, "int=%lld real=%g text=%s nul=%d null=%d,%d blob=%zu",
                      (long long)mm_sql_get_int(&r, 0, 2), mm_sql_get_real(&r, 0, 1), mm_sql_get_text(&r, 0, 3).ptr,
                      mm_sql_get_text(&r, 0, 1).ptr == NULL, mm_sql_is_null(&r, 0, 0), mm_sql_is_null(&r, 0, 1),
                      mm_sql_get_text(&r, 0, 4).len);
        rc = mm_sql_exec("INSERT INTO t VALUES (?)", MM_SQL_PARAMS(mm_sql_real(0.25)), NULL);
        mm_buf_printf(out, " insert=%d", rc);
        mm_sql_exec("CREATE TABLE u (id INTEGER PRIMARY KEY, x)", NULL, 0, NULL);
        mm_sql_exec("INSERT INTO u (id, x) VALUES (41, 1)", NULL, 0, NULL);
        rc = mm_sql_exec("INSERT INTO u (x) SELECT x FROM u", NULL, 0, &r);
        mm_buf_printf(out, " rc=%d rowid=%lld changes=%u", rc, (long long)r.last_insert_rowid, (unsigned)r.changes);
        return MM_OK;
    }
    if (mm_bytes_eq(req, "list")) {
        mm_kv_iter it;
        mm_bytes k, v;
        int rc = mm_kv_list(&(mm_kv_list_options){.prefix = MM_LIT("k"), .start = MM_LIT("k2"), .end = MM_LIT("k3z"),
                                                  .limit = 7, .reverse = true},
                            &it);
        mm_buf_printf(out, "rc=%d count=%zu", rc, it.count);
        while (mm_kv_next(&it, &k, &v)) mm_buf_printf(out, " %.*s=%.*s", (int)k.len, k.ptr, (int)v.len, v.ptr);
        rc = mm_kv_list(NULL, &it);
        mm_buf_printf(out, " all=%zu", it.count);
        return MM_OK;
    }
    if (mm_bytes_eq(req, "misc")) {
        int64_t n = 99, at = 0;
        int rc;
        mm_buf_printf(out, "get_i64=%d,%lld ", mm_kv_get_i64(MM_LIT("none"), &n), (long long)n);
        mm_buf_printf(out, "put_i64=%d ", mm_kv_put_i64(MM_LIT("min"), INT64_MIN));
        mm_buf_printf(out, "get_i64=%d,%lld ", mm_kv_get_i64(MM_LIT("min"), &n), (long long)n);
        mm_buf_printf(out, "exists=%d ", mm_kv_get(MM_LIT("min"), NULL));
        mm_buf_printf(out, "empty_key=%d ", mm_kv_put(MM_LIT(""), MM_LIT("x")));
        mm_buf_printf(out, "alarm=%d,", mm_alarm_get(&at));
        mm_buf_printf(out, "%d,", mm_alarm_set(1234));
        rc = mm_alarm_get(&at);
        mm_buf_printf(out, "%d,%lld ", rc, (long long)at);
        mm_buf_printf(out, "now=%lld ", (long long)mm_now_ms());
        mm_buf_printf(out, "names=%s,%s", mm_error_name(MM_ERR_SQL), mm_error_name(MM_ERR_STORAGE_FULL));
        return MM_OK;
    }
    return 400;
}

MM_SCHEMA_VERSION(3);
"""

ZIG_GUEST = r"""
const std = @import("std");
const mm = @import("micromono");

comptime {
    mm.service(@This());
}

pub fn handleCall(req: []const u8, out: *mm.Buf) !void {
    if (std.mem.eql(u8, req, "sql")) {
        const r = try mm.sql.exec("SELECT ? AS a, ?, ?, ?, ?, ? AS f", &.{
            .null,
            .{ .integer = std.math.minInt(i64) },
            .{ .real = -2.5 },
            .{ .text = "h\xc3\xa9llo" },
            .{ .blob = &.{ 0, 1, 2, 0xff } },
            .{ .text = "" },
        });
        try out.print("rows={d} cols={d} names={s},{s} ", .{ r.rows, r.columns.len, r.columns[0], r.columns[5] });
        for (r.row(0)) |v| try putValue(out, v);
        try putValue(out, r.get(1, 0));
        try out.print("int={?d} text={?s} blob={d}", .{ r.int(0, 1), r.text(0, 3), r.text(0, 4).?.len });
        if (mm.sql.exec("INSERT INTO t VALUES (?)", &.{.{ .real = 0.25 }})) |_| {} else |err| {
            try out.print(" insert=error.{s}:{s}", .{ @errorName(err), mm.lastError() });
        }
    } else if (std.mem.eql(u8, req, "list")) {
        var it = try mm.kv.list(.{ .prefix = "k", .start = "k2", .end = "k3z", .limit = 7, .reverse = true });
        try out.print("count={d}", .{it.count});
        while (it.next()) |e| try out.print(" {s}={s}", .{ e.key, e.value });
        const all = try mm.kv.list(.{});
        try out.print(" all={d}", .{all.count});
    } else if (std.mem.eql(u8, req, "misc")) {
        try out.print("key={?s} ", .{mm.actorKey()});
        try out.print("none={?d} ", .{try mm.kv.getInt("none")});
        try mm.kv.putInt("min", std.math.minInt(i64));
        try out.print("min={?d} ", .{try mm.kv.getInt("min")});
        try mm.kv.put("word", "12x");
        if (mm.kv.getInt("word")) |_| {} else |err| try out.print("word=error.{s} ", .{@errorName(err)});
        try out.print("big={d} ", .{(try mm.kv.get("big")).?.len});
        try out.print("deleted={},{} ", .{ try mm.kv.delete("word"), try mm.kv.delete("word") });
        if (mm.kv.put("", "x")) |_| {} else |err| try out.print("empty_key=error.{s} ", .{@errorName(err)});
        try out.print("alarm={?d},", .{try mm.alarm.get()});
        try mm.alarm.set(1234);
        try out.print("{?d},", .{try mm.alarm.get()});
        try mm.alarm.delete();
        try out.print("{?d} now={d}", .{ try mm.alarm.get(), mm.nowMs() });
    } else if (std.mem.eql(u8, req, "not-actor")) {
        if (mm.kv.get("x")) |_| {} else |err| try out.print("get=error.{s} ", .{@errorName(err)});
        if (mm.alarm.get()) |_| {} else |err| try out.print("alarm=error.{s} ", .{@errorName(err)});
        try out.print("key={?s} code={d}", .{ mm.actorKey(), mm.errorCode(error.NotActor) });
    } else return mm.fail(400);
}

fn putValue(out: *mm.Buf, v: mm.sql.Value) !void {
    try out.print("{d}:", .{@backingInt(std.meta.activeTag(v))});
    switch (v) {
        .null => {},
        .integer => |n| try out.print("{d}", .{n}),
        .real => |x| try out.print("{d}", .{x}),
        .text, .blob => |bytes| for (bytes) |b| try out.print("{x:0>2}", .{b}),
    }
    try out.appendByte(' ');
}

pub fn handleMessage(msg: []const u8) !void {
    _ = msg;
    _ = try mm.sql.exec("SELECT * FROM missing", &.{});
}

pub fn handleAlarm(scheduled_ms: u64, attempt: u32) !void {
    var text: [32]u8 = undefined;
    try mm.kv.put("alarm", try std.fmt.bufPrint(&text, "{d}:{d}", .{ scheduled_ms, attempt }));
    if (attempt > 5) return mm.fail(409);
}
"""


@pytest.fixture(scope="module")
def c_guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_c_guest(tmp_path_factory.mktemp("c_guest"), C_GUEST)


@pytest.fixture(scope="module")
def zig_guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_zig_guest(tmp_path_factory.mktemp("zig_guest"), ZIG_GUEST)


#: The row both guests select: the parameters back, as `type:value` (text and blobs in hex).
SQL_ROW = "0: 1:-9223372036854775808 2:-2.5 3:68c3a96c6c6f 4:000102ff 3: "
SQL_PARAMS: list[SqlValue] = [None, -(2**63), -2.5, "h\u00e9llo", b"\x00\x01\x02\xff", ""]


def test_c_sdk_sql_values_of_every_type(c_guest: Path) -> None:
    host = FakeHost()
    reply = Guest(c_guest, host).call(b"sql")
    assert isinstance(reply, bytes), reply
    assert reply.decode() == (
        f"rows=1 cols=6 names=a,f {SQL_ROW}0: int=-2 real=-9.22337e+18 text=h\u00e9llo nul=1 null=1,0 blob=4 "
        "insert=-13 rc=0 rowid=42 changes=1"
    )
    assert host.statements[0][1] == SQL_PARAMS
    assert host.statements[1][1] == [0.25]
    assert host.last_error == b"no such table: t"


def test_c_sdk_list_options_and_helpers(c_guest: Path) -> None:
    host = FakeHost(kv={b"a": b"-", b"k1": b"1", b"k2": b"2", b"k3": b"3", b"k4": b"4"})
    guest = Guest(c_guest, host)
    assert guest.call(b"list") == b"rc=0 count=2 k3=3 k2=2 all=5"
    assert host.lists == [ListCall(7, 1, b"k", b"k2", b"k3z"), ListCall(0, 0, b"", b"", b"")]
    reply = guest.call(b"misc")
    assert isinstance(reply, bytes)
    now = re.search(rb"now=(\d+)", reply)
    assert now and abs(int(now[1]) - time.time() * 1000) < 60_000
    assert re.sub(rb"now=\d+", b"now=T", reply) == (
        b"get_i64=-11,0 put_i64=0 get_i64=0,-9223372036854775808 exists=0 empty_key=-15 alarm=-11,0,0,1234 now=T "
        b"names=sql error,storage full"
    )
    assert host.kv[b"min"] == b"-9223372036854775808"
    assert Guest(c_guest).schema_version() == 3
    assert Guest(c_guest).migrate(0) == 0  # no handle_migrate: a version bump with nothing to convert


def test_zig_sdk_sql_values_of_every_type(zig_guest: Path) -> None:
    host = FakeHost()
    reply = Guest(zig_guest, host).call(b"sql")
    assert isinstance(reply, bytes), reply
    assert reply.decode() == (
        f"rows=1 cols=6 names=a,f {SQL_ROW}0: int=-9223372036854775808 text=h\u00e9llo blob=4 "
        "insert=error.Sql:no such table: t"
    )
    assert host.statements[0][1] == SQL_PARAMS
    assert host.statements[1][1] == [0.25]


def test_zig_sdk_list_options_and_helpers(zig_guest: Path) -> None:
    host = FakeHost(kv={b"a": b"-", b"k1": b"1", b"k2": b"2", b"k3": b"3", b"k4": b"4", b"big": b"b" * 70_000})
    guest = Guest(zig_guest, host)
    assert guest.call(b"list") == b"count=2 k3=3 k2=2 all=6"
    assert host.lists == [ListCall(7, 1, b"k", b"k2", b"k3z"), ListCall(0, 0, b"", b"", b"")]
    reply = guest.call(b"misc")
    assert isinstance(reply, bytes)
    now = re.search(rb"now=(\d+)", reply)
    assert now and abs(int(now[1]) - time.time() * 1000) < 60_000
    assert re.sub(rb"now=\d+", b"now=T", reply) == (
        b"key=alice none=null min=-9223372036854775808 word=error.Invalid big=70000 deleted=true,false "
        b"empty_key=error.Invalid alarm=null,1234,null now=T"
    )
    assert host.kv[b"min"] == b"-9223372036854775808"
    assert host.taken == 2  # the list of everything (with "big") and the read of "big" did not fit 4 KiB
    assert Guest(zig_guest, FakeHost(key=None)).call(b"not-actor") == (
        b"get=error.NotActor alarm=error.NotActor key=null code=-14"
    )
    assert guest.alarm(1700000000123, 4) == b"" and host.kv[b"alarm"] == b"1700000000123:4"
    assert guest.alarm(1, 6) == -409  # an error: the host retries it
    assert guest.handle(KIND_ALARM, b"\x00" * 11) == -400
    # No schema_version: no mm_schema_version or mm_migrate export.
    assert guest.export_names() == {"memory", "mm_abi_version", "mm_inbox", "mm_handle"}
    # A handler's storage error fails the request (rolled back by the host), logged with the host's message.
    assert guest.handle(KIND_MESSAGE, b"") == -500
    assert host.logs[-1] == (3, "micromono: handler failed with error.Sql: no such table: missing")
