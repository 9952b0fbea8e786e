"""The SDKs' WebSocket API (sdk/c, sdk/zig) against a fake host, without the daemon.

The guests (tests/fixtures/actor_probe.c, examples/room.zig, and a small C and a small Zig guest compiled here) run
in wasmtime with test_sdk_actors.py's fake actor host plus the `ws_*` imports, written here from docs/abi.md
"WebSockets". The host decodes every call strictly (connection, type, code, lengths, UTF-8) and records it, and the
tests drive the guests with WS_OPEN, WS_MESSAGE and WS_CLOSE requests encoded from the same page. Connection ids
use all 64 bits (the ABI passes them as i64) and every length differs from its neighbours, so an SDK that truncates
a connection id, swaps two fields or misreads a length fails here.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from test_sdk_actors import I32, I64, FakeHost, Guest

from conftest import EXAMPLES_BUILD, build_c_guest, build_zig_guest
from micromono import abi

pytestmark = pytest.mark.skipif(
    not (EXAMPLES_BUILD / "actor_probe.wasm").exists(),
    reason="examples not built: run `make examples` (make test does)",
)

NOT_FOUND, NOT_ACTOR, INVALID = abi.MM_ERR_NOT_FOUND, abi.MM_ERR_NOT_ACTOR, abi.MM_ERR_INVALID
KIND_WS_OPEN, KIND_WS_MESSAGE, KIND_WS_CLOSE = abi.KIND_WS_OPEN, abi.KIND_WS_MESSAGE, abi.KIND_WS_CLOSE
TEXT, BINARY = 1, 2
U64 = (1 << 64) - 1

#: Connection ids that a 32-bit, signed or byte-swapped id would get wrong.
TOP = U64  # -1 as the i64 the imports take
HIGH = (1 << 63) + 5  # negative as an i64
WIDE = (1 << 32) + 2  # the low word alone is 2

#: The WebSocket imports, with the types docs/abi.md gives them.
WS_IMPORTS = {
    "micromono.ws_send": (["i64", "i32", "i32", "i32"], ["i32"]),
    "micromono.ws_publish": (["i32"] * 5, ["i32"]),
    "micromono.ws_close": (["i64", "i32", "i32", "i32"], ["i32"]),
    "micromono.ws_tag": (["i64", "i32", "i32"], ["i32"]),
}


# ---------------------------------------------------------------------------------------------------------------------
# The fake host: an actor with WebSocket connections
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class WsHost(FakeHost):
    """One actor's side of the ABI, with the `ws_*` imports. `connections` are the open ones the daemon knows."""

    connections: set[int] = field(default_factory=set)
    ws_error: int = 0  # when set, every ws import fails with it (say, a service without `websocket = true`)
    # What the guest did, decoded:
    sent: list[tuple[int, int, bytes]] = field(default_factory=list)  # (conn, type, data)
    published: list[tuple[int, bytes, bytes]] = field(default_factory=list)  # (type, data, tag)
    closed: list[tuple[int, int, bytes]] = field(default_factory=list)  # (conn, code, reason)
    tags: list[tuple[int, bytes]] = field(default_factory=list)  # (conn, tag)

    def _message(self, caller: Any, what: str, kind: int, ptr: int, length: int) -> bytes | int:
        data = self._read(caller, what, ptr, length)
        if kind not in (TEXT, BINARY):
            return self._fail(INVALID, f"{what}: type {kind} is neither 1 (text) nor 2 (binary)")
        if kind == TEXT:
            try:
                data.decode()
            except UnicodeDecodeError:
                return self._fail(INVALID, f"{what}: the text is not UTF-8")
        return data

    def _connection(self, what: str, conn: int) -> int:
        """The connection id as the u64 it is, or MM_ERR_NOT_FOUND."""
        conn &= U64
        if conn not in self.connections:
            return self._fail(NOT_FOUND, f"{what}: no connection {conn} of this actor")
        return conn

    def ws_send(self, caller: Any, conn: int, kind: int, ptr: int, length: int) -> int:
        if self.ws_error:
            return self._fail(self.ws_error, "ws_send: refused by the test")
        data = self._message(caller, "ws_send", kind, ptr, length)
        if isinstance(data, int):
            return data
        conn = self._connection("ws_send", conn)
        if conn < 0:
            return conn
        self.sent.append((conn, kind, data))
        return 0

    def ws_publish(self, caller: Any, kind: int, ptr: int, length: int, tag_ptr: int, tag_len: int) -> int:
        if self.ws_error:
            return self._fail(self.ws_error, "ws_publish: refused by the test")
        data = self._message(caller, "ws_publish", kind, ptr, length)
        if isinstance(data, int):
            return data
        tag = self._read(caller, "ws_publish tag", tag_ptr, tag_len)
        if len(tag) > 64:
            return self._fail(INVALID, f"ws_publish: tags are at most 64 bytes, got {len(tag)}")
        self.published.append((kind, data, tag))
        return 0

    def ws_close(self, caller: Any, conn: int, code: int, ptr: int, length: int) -> int:
        if self.ws_error:
            return self._fail(self.ws_error, "ws_close: refused by the test")
        reason = self._read(caller, "ws_close reason", ptr, length)
        if code != 1000 and not 3000 <= code <= 4999:
            return self._fail(INVALID, f"ws_close: code {code} is neither 1000 nor 3000-4999")
        if len(reason) > 123:
            return self._fail(INVALID, f"ws_close: reasons are at most 123 bytes, got {len(reason)}")
        conn = self._connection("ws_close", conn)
        if conn < 0:
            return conn
        self.closed.append((conn, code, reason))
        return 0

    def ws_tag(self, caller: Any, conn: int, ptr: int, length: int) -> int:
        if self.ws_error:
            return self._fail(self.ws_error, "ws_tag: refused by the test")
        tag = self._read(caller, "ws_tag", ptr, length)
        if not 1 <= len(tag) <= 64:
            return self._fail(INVALID, f"ws_tag: tags are 1 to 64 bytes, got {len(tag)}")
        conn = self._connection("ws_tag", conn)
        if conn < 0:
            return conn
        self.tags.append((conn, tag))
        return 0

    def define(self, linker: wasmtime.Linker) -> None:
        super().define(linker)
        imports: dict[str, tuple[list[wasmtime.ValType], Callable[..., int]]] = {
            "ws_send": ([I64, I32, I32, I32], self.ws_send),
            "ws_publish": ([I32] * 5, self.ws_publish),
            "ws_close": ([I64, I32, I32, I32], self.ws_close),
            "ws_tag": ([I64, I32, I32], self.ws_tag),
        }
        for name, (params, func) in imports.items():
            linker.define_func("micromono", name, wasmtime.FuncType(params, [I32]), func, access_caller=True)


def open_request(conn: int, path: bytes, query: bytes) -> bytes:
    """MM_KIND_WS_OPEN: `u64 conn`, `u32 path_len`, `u32 query_len`, the path, the query."""
    return struct.pack("<QII", conn, len(path), len(query)) + path + query


def message_request(conn: int, kind: int, data: bytes) -> bytes:
    """MM_KIND_WS_MESSAGE: `u64 conn`, `u32 type`, the message."""
    return struct.pack("<QI", conn, kind) + data


def close_request(conn: int, code: int, reason: bytes) -> bytes:
    """MM_KIND_WS_CLOSE: `u64 conn`, `u32 code`, the reason."""
    return struct.pack("<QI", conn, code) + reason


class WsGuest(Guest):
    """A guest driven with the WebSocket kinds, the way the daemon drives it."""

    def __init__(self, path: Path, host: WsHost | None = None) -> None:
        self.ws = host or WsHost()
        super().__init__(path, self.ws)

    def ws_open(self, conn: int, path: bytes, query: bytes = b"") -> bytes | int:
        """The open's result: b"" (0) accepts, a negative application error refuses."""
        self.ws.connections.add(conn)
        result = self.handle(KIND_WS_OPEN, open_request(conn, path, query))
        if result != b"":
            self.ws.connections.discard(conn)
        return result

    def ws_message(self, conn: int, kind: int, data: bytes) -> bytes | int:
        return self.handle(KIND_WS_MESSAGE, message_request(conn, kind, data))

    def ws_close(self, conn: int, code: int, reason: bytes = b"") -> bytes | int:
        self.ws.connections.discard(conn)
        return self.handle(KIND_WS_CLOSE, close_request(conn, code, reason))


# ---------------------------------------------------------------------------------------------------------------------
# Imports, and guests without WebSocket handlers
# ---------------------------------------------------------------------------------------------------------------------

PROBE = EXAMPLES_BUILD / "actor_probe.wasm"
ROOM = EXAMPLES_BUILD / "room.wasm"


@pytest.mark.parametrize("name", ["actor_probe", "actor_probe_v2", "actor_probe_v2_trap"])
def test_probe_variants_import_every_ws_function_with_the_abi_types(name: str) -> None:
    imports = WsGuest(EXAMPLES_BUILD / f"{name}.wasm").import_types()
    assert {name: imports[name] for name in WS_IMPORTS} == WS_IMPORTS


@pytest.mark.parametrize("name", ["counter", "echo", "auth", "store"])
def test_guests_without_ws_handlers_accept_connections_and_ignore_the_rest(name: str) -> None:
    guest = WsGuest(EXAMPLES_BUILD / f"{name}.wasm")
    assert not any(i.startswith("micromono.ws_") for i in guest.import_types())  # what is unused is not linked
    assert guest.ws_open(TOP, b"/x", b"a=1") == b""
    assert guest.ws_message(TOP, TEXT, b"hello") == b""
    assert guest.ws_close(TOP, 1000, b"bye") == b""
    assert guest.handle(KIND_WS_OPEN, b"") == b""  # not even decoded
    assert guest.handle(9, b"") == -501  # a kind of a newer ABI is still refused


# ---------------------------------------------------------------------------------------------------------------------
# actor_probe (C SDK): its ws-* commands and its handlers
# ---------------------------------------------------------------------------------------------------------------------


def probe(script: bytes, host: WsHost) -> list[bytes]:
    """Runs a probe script over HTTP and returns its result lines."""
    answer = WsGuest(PROBE, host).http("POST", "/probe/alice", script)
    assert not isinstance(answer, int), answer
    assert answer[0] == 200 and answer[2].endswith(b"\n")
    return answer[2].split(b"\n")[:-1]


def test_probe_ws_commands_encode_connection_type_data_code_and_tag() -> None:
    host = WsHost(connections={TOP, HIGH, WIDE})
    script = (
        f"ws-send {TOP} hello world\nws-sendb {WIDE} ".encode()
        + b"\x00\xff bytes\n"  # binary: any bytes
        + b"ws-publish to everyone\nws-publish\nws-publish-tag admins to admins only\n"
        + f"ws-close {HIGH} 4321 bye \u00e9\nws-close {WIDE} 1000\nws-tag {TOP} vip\n".encode()
    )
    assert probe(script, host) == [b"ok"] * 8
    assert host.sent == [(TOP, TEXT, b"hello world"), (WIDE, BINARY, b"\x00\xff bytes")]
    assert host.published == [(TEXT, b"to everyone", b""), (TEXT, b"", b""), (TEXT, b"to admins only", b"admins")]
    assert host.closed == [(HIGH, 4321, "bye \u00e9".encode()), (WIDE, 1000, b"")]
    assert host.tags == [(TOP, b"vip")]


def test_probe_ws_commands_report_the_hosts_errors_and_their_usage() -> None:
    host = WsHost(connections={WIDE})
    script = (
        b"ws-send 2 to the low word alone\n"  # WIDE truncated to 32 bits would be 2
        b"ws-send 4294967298 \xff\n"
        b"ws-close 4294967298 1003 unsupported\n"
        b"ws-close 4294967298 4000 " + b"r" * 124 + b"\n"
        b"ws-tag 4294967298 \n"
        b"ws-publish-tag " + b"t" * 65 + b" x\n"
        b"ws-send x hello\n"
        b"ws-send\n"
        b"ws-close 4294967298 bye\n"
        b"ws-nope 1\n"
    )
    assert probe(script, host) == [
        b"ERR -11 ws_send: no connection 2 of this actor",
        b"ERR -15 ws_send: the text is not UTF-8",
        b"ERR -15 ws_close: code 1003 is neither 1000 nor 3000-4999",
        b"ERR -15 ws_close: reasons are at most 123 bytes, got 124",
        b"ERR -15 ws_tag: tags are 1 to 64 bytes, got 0",
        b"ERR -15 ws_publish: tags are at most 64 bytes, got 65",
        b"ERR -15 probe: usage: ws-... CONN ...",
        b"ERR -15 probe: usage: ws-... CONN ...",
        b"ERR -15 probe: usage: ws-close CONN CODE REASON",
        b"ERR -15 probe: unknown command",
    ]
    assert not (host.sent or host.published or host.closed or host.tags)
    not_actor = WsHost(connections={WIDE}, ws_error=NOT_ACTOR)
    assert probe(b"ws-publish x\nws-send 4294967298 x", not_actor) == [
        b"ERR -14 ws_publish: refused by the test",
        b"ERR -14 ws_send: refused by the test",
    ]


def test_probe_ws_open_stores_the_connection_then_tags_or_refuses_it() -> None:
    host = WsHost()
    guest = WsGuest(PROBE, host)
    assert guest.ws_open(HIGH, b"/probe/alice", b"a=1&tag=red&x=tag=no&tag=blue") == b""
    assert host.kv == {f"ws:{HIGH}".encode(): b"/probe/alice?a=1&tag=red&x=tag=no&tag=blue"}
    assert host.tags == [(HIGH, b"red"), (HIGH, b"blue")]
    assert guest.ws_open(TOP, b"/p", b"") == b""
    assert host.kv[f"ws:{TOP}".encode()] == b"/p?"
    # A failed tag refuses the connection, logged with the host's message.
    assert guest.ws_open(WIDE, b"/p", b"tag=") == -7
    assert host.logs[-1] == (2, "probe: ws_tag failed: ws_tag: tags are 1 to 64 bytes, got 0")
    host.kv[b"ws_refuse"] = b"1"
    host.tags.clear()
    assert guest.ws_open(7, b"/probe/alice", b"tag=red") == -7
    assert host.kv[b"ws:7"] == b"/probe/alice?tag=red"  # written before refusing: the real host rolls it back
    assert host.tags == []


def test_probe_ws_message_runs_a_script_and_answers_that_connection() -> None:
    host = WsHost(key=b"alice")
    guest = WsGuest(PROBE, host)
    for conn in (TOP, WIDE):
        assert guest.ws_open(conn, b"/probe/alice") == b""
    assert guest.ws_message(WIDE, TEXT, b"put a 1\nget a\r\nkey\n\nws-publish hi") == b""
    assert guest.ws_message(TOP, BINARY, b"echo \x00\x01") == b""  # binary runs too; the answer is text
    assert host.sent == [(WIDE, TEXT, b"ok\n1\nalice\nok\n"), (TOP, TEXT, b"\x00\x01\n")]
    assert host.published == [(TEXT, b"hi", b"")]
    assert host.kv[b"a"] == b"1"


def test_probe_ws_message_echo_publish_fail_and_a_closed_sender() -> None:
    host = WsHost()
    guest = WsGuest(PROBE, host)
    assert guest.ws_open(HIGH, b"/p") == b""
    assert guest.ws_message(HIGH, TEXT, b"echo-publish two\nlines") == b""
    assert host.published == [(TEXT, b"two\nlines", b"")] and host.sent == []
    # `fail` fails the message (the real host rolls back and sends nothing); the probe sends nothing either.
    assert guest.ws_message(HIGH, TEXT, b"put b 2\nfail\nput c 3") == -7
    assert host.sent == [] and host.kv[b"b"] == b"2" and b"c" not in host.kv
    # A sender that left meanwhile: the send fails, is logged, and the message still succeeds.
    host.connections.clear()
    assert guest.ws_message(HIGH, TEXT, b"echo x") == b""
    assert host.logs[-1] == (2, f"probe: ws_send or ws_publish failed: -11 ws_send: no connection {HIGH} of this actor")


def test_probe_ws_close_appends_connection_and_code() -> None:
    host = WsHost()
    guest = WsGuest(PROBE, host)
    assert guest.ws_close(TOP, 1000, b"bye") == b""
    assert guest.ws_close(WIDE, 1006) == b""
    assert guest.ws_close(HIGH, 4999, b"x" * 123) == b""
    assert host.kv[b"ws_closed"] == f"{TOP}:1000,{WIDE}:1006,{HIGH}:4999".encode()


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        (KIND_WS_OPEN, struct.pack("<QI", 1, 0)),  # no query_len
        (KIND_WS_OPEN, struct.pack("<QII", 1, 3, 0) + b"/p"),  # the path runs past the end
        (KIND_WS_OPEN, struct.pack("<QII", 1, 2, 1) + b"/p"),  # the query runs past the end
        (KIND_WS_OPEN, struct.pack("<QII", 1, 0xFFFFFFFF, 2) + b"/p"),  # lengths that overflow 32 bits
        (KIND_WS_MESSAGE, struct.pack("<QH", 1, 1)),  # no type
        (KIND_WS_CLOSE, struct.pack("<Q", 1)),  # no code
        (KIND_WS_CLOSE, struct.pack("<QI", 1, 0x10000)),  # a close code over 16 bits
    ],
)
def test_probe_refuses_ws_requests_that_do_not_decode(kind: int, payload: bytes) -> None:
    host = WsHost()
    assert WsGuest(PROBE, host).handle(kind, payload) == -400
    assert host.logs == [(3, "micromono: the WebSocket request from the host does not decode")]
    assert host.kv == {}


# ---------------------------------------------------------------------------------------------------------------------
# The rest of the C and Zig APIs: two small guests compiled here
# ---------------------------------------------------------------------------------------------------------------------

C_GUEST = r"""
#include "micromono.h"

int handle_ws_open(uint64_t conn, mm_bytes path, mm_bytes query) {
    if (mm_bytes_eq(path, "/refuse")) return -403;
    if (mm_bytes_eq(path, "/fail")) {
        mm_fail(409); /* and returns 0: mm_fail wins */
        return 0;
    }
    if (mm_bytes_eq(path, "/positive")) return 5;
    mm_buf out = {0};
    mm_buf_printf(&out, "welcome %llu path=%.*s query=%.*s", (unsigned long long)conn, (int)path.len, path.ptr,
                  (int)query.len, query.ptr);
    mm_buf_printf(&out, " text=%d", mm_ws_send_text(conn, "hi"));
    mm_buf_printf(&out, " all=%d", mm_ws_publish_text("joined"));
    mm_buf_printf(&out, " tagged=%d", mm_ws_publish(MM_WS_BINARY, query, MM_LIT("t1")));
    mm_buf_printf(&out, " empty=%d", mm_ws_send(conn, MM_WS_BINARY, (mm_bytes){NULL, 0}));
    int rc = mm_ws_send(conn, 9, MM_LIT("x"));
    mm_bytes why = mm_last_error();
    mm_buf_printf(&out, " bad=%d:%.*s", rc, (int)why.len, why.ptr);
    mm_ws_send(conn, MM_WS_TEXT, mm_buf_bytes(&out));
    mm_buf_free(&out);
    return 0;
}

void handle_ws_message(uint64_t conn, int type, mm_bytes data) {
    if (mm_bytes_eq(data, "fail")) mm_fail(422);
    mm_ws_send(conn, type, data); /* back with the type it came with */
}

void handle_ws_close(uint64_t conn, int code, mm_bytes reason) {
    mm_buf out = {0};
    mm_buf_printf(&out, "closed %llu %d ", (unsigned long long)conn, code);
    mm_buf_append_bytes(&out, reason);
    mm_ws_publish(MM_WS_BINARY, mm_buf_bytes(&out), MM_LIT(""));
    mm_buf_free(&out);
}
"""

ZIG_GUEST = r"""
const std = @import("std");
const mm = @import("micromono");

comptime {
    mm.service(@This());
}

pub fn handleWsOpen(conn: u64, path: []const u8, query: []const u8) !void {
    if (std.mem.eql(u8, path, "/refuse")) return mm.fail(403);
    if (std.mem.eql(u8, path, "/error")) return error.Nope;
    var out: mm.Buf = .{ .gpa = mm.arena() };
    try out.print("welcome {d} path={s} query={s}", .{ conn, path, query });
    try mm.ws.send(conn, .text, out.items());
    try mm.ws.tag(conn, query);
    try mm.ws.publish(.binary, path, .{ .tag = query });
    try mm.ws.publish(.text, "joined", .{});
}

pub fn handleWsMessage(conn: u64, kind: mm.ws.Type, data: []const u8) !void {
    if (std.mem.eql(u8, data, "close")) return mm.ws.close(conn, 4321, "bye \xc3\xa9");
    if (std.mem.eql(u8, data, "errors")) {
        var out: mm.Buf = .{ .gpa = mm.arena() };
        const bogus: mm.ws.Type = @fromBackingInt(9);
        const long_tag: [65]u8 = @splat('t');
        const results = [_]mm.ws.Error!void{
            mm.ws.send(2, .text, "to the low word alone"),
            mm.ws.send(conn, .text, "\xff"),
            mm.ws.send(conn, bogus, "x"),
            mm.ws.close(conn, 1003, ""),
            mm.ws.tag(conn, ""),
            mm.ws.publish(.text, "x", .{ .tag = &long_tag }),
        };
        for (results) |result| {
            if (result) |_| try out.append("ok ") else |err| try out.print("{s} ", .{@errorName(err)});
        }
        try out.print("code={d} last={s}", .{ mm.errorCode(error.NotFound), mm.lastError() });
        return mm.ws.send(conn, .text, out.items());
    }
    if (std.mem.eql(u8, data, "fail")) return mm.fail(422);
    try mm.ws.send(conn, kind, data); // back with the type it came with
}

pub fn handleWsClose(conn: u64, code: u16, reason: []const u8) !void {
    var text: [256]u8 = undefined;
    try mm.ws.publish(.binary, try std.fmt.bufPrint(&text, "closed {d} {d} {s}", .{ conn, code, reason }), .{});
    if (code == 4999) return mm.fail(418);
}
"""


@pytest.fixture(scope="module")
def c_guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_c_guest(tmp_path_factory.mktemp("c_ws_guest"), C_GUEST)


@pytest.fixture(scope="module")
def zig_guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_zig_guest(tmp_path_factory.mktemp("zig_ws_guest"), ZIG_GUEST)


def test_c_sdk_open_decodes_and_sends_publishes_and_reports_errors(c_guest: Path) -> None:
    host = WsHost()
    guest = WsGuest(c_guest, host)
    assert guest.import_types()["micromono.ws_send"] == WS_IMPORTS["micromono.ws_send"]
    assert guest.ws_open(HIGH, b"/chat/lobby", b"name=al") == b""
    assert host.sent == [
        (HIGH, TEXT, b"hi"),
        (HIGH, BINARY, b""),
        (HIGH, TEXT, f"welcome {HIGH} path=/chat/lobby query=name=al text=0 all=0 tagged=0 empty=0 "
                     "bad=-15:ws_send: type 9 is neither 1 (text) nor 2 (binary)".encode()),
    ]  # fmt: skip
    assert host.published == [(TEXT, b"joined", b""), (BINARY, b"name=al", b"t1")]
    assert guest.ws_open(TOP, b"", b"") == b""  # an empty path and query decode too
    assert host.sent[-1][2].startswith(f"welcome {TOP} path= query= ".encode())


def test_c_sdk_open_refusals(c_guest: Path) -> None:
    guest = WsGuest(c_guest)
    assert guest.ws_open(1, b"/refuse") == -403  # the handler's negative result, as the application error
    assert guest.ws_open(1, b"/fail") == -409  # mm_fail refuses too
    assert guest.ws_open(1, b"/positive") == b""  # any result >= 0 accepts
    assert guest.ws.sent == []


def test_c_sdk_message_and_close(c_guest: Path) -> None:
    host = WsHost(connections={WIDE})
    guest = WsGuest(c_guest, host)
    assert guest.ws_message(WIDE, TEXT, "h\u00e9\x00llo".encode()) == b""
    assert guest.ws_message(WIDE, BINARY, b"\x00\xff\x01") == b""
    assert host.sent == [(WIDE, TEXT, "h\u00e9\x00llo".encode()), (WIDE, BINARY, b"\x00\xff\x01")]
    assert guest.ws_message(WIDE, TEXT, b"fail") == -422
    assert guest.ws_close(HIGH, 4002, "gone \u00e9".encode()) == b""
    assert guest.ws_close(TOP, 1006) == b""
    assert host.published == [
        (BINARY, f"closed {HIGH} 4002 gone \u00e9".encode(), b""),
        (BINARY, f"closed {TOP} 1006 ".encode(), b""),
    ]


def test_zig_sdk_open_decodes_tags_sends_and_publishes(zig_guest: Path) -> None:
    host = WsHost()
    guest = WsGuest(zig_guest, host)
    imports = guest.import_types()
    assert {name: imports[name] for name in WS_IMPORTS} == WS_IMPORTS
    assert guest.ws_open(HIGH, b"/chat/lobby", b"room-admins") == b""
    assert host.sent == [(HIGH, TEXT, f"welcome {HIGH} path=/chat/lobby query=room-admins".encode())]
    assert host.tags == [(HIGH, b"room-admins")]
    assert host.published == [(BINARY, b"/chat/lobby", b"room-admins"), (TEXT, b"joined", b"")]
    # Refusals: mm.fail names the code; any other error is 500, logged.
    assert guest.ws_open(1, b"/refuse") == -403
    assert guest.ws_open(1, b"/error") == -500
    assert host.logs[-1] == (3, "micromono: handler failed with error.Nope")
    # An error from the host refuses it too (here: an empty tag), logged with the host's message.
    assert guest.ws_open(2, b"/p", b"") == -500
    assert host.logs[-1] == (3, "micromono: handler failed with error.Invalid: ws_tag: tags are 1 to 64 bytes, got 0")


def test_zig_sdk_message_close_and_errors(zig_guest: Path) -> None:
    host = WsHost(connections={WIDE})
    guest = WsGuest(zig_guest, host)
    assert guest.ws_message(WIDE, TEXT, "h\u00e9\x00llo".encode()) == b""
    assert guest.ws_message(WIDE, BINARY, b"\x00\xff\x01") == b""
    assert host.sent == [(WIDE, TEXT, "h\u00e9\x00llo".encode()), (WIDE, BINARY, b"\x00\xff\x01")]
    assert guest.ws_message(WIDE, TEXT, b"close") == b""
    assert host.closed == [(WIDE, 4321, "bye \u00e9".encode())]
    assert guest.ws_message(WIDE, TEXT, b"errors") == b""
    assert host.sent[-1] == (
        WIDE,
        TEXT,
        b"NotFound Invalid Invalid Invalid Invalid Invalid code=-11 last=ws_publish: tags are at most 64 bytes, got 65",
    )
    assert guest.ws_message(WIDE, TEXT, b"fail") == -422
    assert guest.ws_close(HIGH, 4002, "gone \u00e9".encode()) == b""
    assert guest.ws_close(TOP, 4999) == -418
    assert host.published == [
        (BINARY, f"closed {HIGH} 4002 gone \u00e9".encode(), b""),
        (BINARY, f"closed {TOP} 4999 ".encode(), b""),
    ]
    not_actor = WsHost(connections={WIDE}, ws_error=NOT_ACTOR)
    assert WsGuest(zig_guest, not_actor).ws_message(WIDE, TEXT, b"x") == -500
    assert not_actor.logs[-1] == (3, "micromono: handler failed with error.NotActor: ws_send: refused by the test")


@pytest.mark.parametrize("which", ["c", "zig"])
def test_sdks_refuse_ws_requests_that_do_not_decode(which: str, c_guest: Path, zig_guest: Path) -> None:
    guest = WsGuest(c_guest if which == "c" else zig_guest)
    assert guest.handle(KIND_WS_OPEN, struct.pack("<QII", 1, 2, 1) + b"/p") == -400
    assert guest.handle(KIND_WS_MESSAGE, struct.pack("<Q", 1)) == -400
    assert guest.handle(KIND_WS_CLOSE, struct.pack("<QI", 1, 0x10000)) == -400
    assert guest.ws.logs == [(3, "micromono: the WebSocket request from the host does not decode")] * 3
    assert not (guest.ws.sent or guest.ws.published)


# ---------------------------------------------------------------------------------------------------------------------
# room (Zig): the chat
# ---------------------------------------------------------------------------------------------------------------------


def room(host: WsHost | None = None) -> WsGuest:
    guest = WsGuest(ROOM, host or WsHost(key=b"lobby"))
    assert guest.migrate(0) == 0
    return guest


def history(guest: WsGuest) -> list[str]:
    answer = guest.http("GET", "/room/lobby/messages")
    assert not isinstance(answer, int) and answer[0] == 200, answer
    return [m["text"] for m in json.loads(answer[2])["messages"]]


def test_room_imports_send_and_publish_only() -> None:
    imports = WsGuest(ROOM).import_types()
    assert {name: types for name, types in imports.items() if name.startswith("micromono.ws_")} == {
        name: WS_IMPORTS[name] for name in ("micromono.ws_send", "micromono.ws_publish")
    }


def test_room_chat_stores_and_publishes_each_text_message_as_it_is() -> None:
    host = WsHost(key=b"lobby")
    guest = room(host)
    assert guest.ws_open(HIGH, b"/chat/lobby", b"") == b""
    assert guest.ws_open(WIDE, b"/chat/lobby", b"name=bo") == b""
    text = 'say "hi"\n\\ \u00e9 \u2603'
    assert guest.ws_message(HIGH, TEXT, text.encode()) == b""
    assert guest.ws_message(WIDE, TEXT, b"second") == b""
    # Published as the text itself: the daemon, not the actor, wraps it in {"seq": ..., "data": ...}.
    assert host.published == [(TEXT, text.encode(), b""), (TEXT, b"second", b"")]
    assert host.sent == []
    assert history(guest) == [text, "second"]
    assert host.alarm is not None and len(host.alarm_sets) == 1  # the first message armed the retention alarm
    assert guest.ws_close(HIGH, 1000) == b""  # no close handler: nothing to do
    assert host.kv == {}


def test_room_chat_ignores_binary_and_tells_the_sender_what_it_refuses() -> None:
    host = WsHost(key=b"lobby")
    guest = room(host)
    assert guest.ws_open(TOP, b"/chat/lobby") == b""
    assert guest.ws_message(TOP, BINARY, b"\x00\x01") == b""
    assert not (host.sent or host.published)
    assert guest.ws_message(TOP, TEXT, b"") == b""  # an empty text is a message like any other
    assert host.published == [(TEXT, b"", b"")] and not host.sent
    host.published.clear()
    for data, error in [
        (b"x" * 16385, "message_too_large"),
        (b"\xff\xfe", "message_not_utf8"),
    ]:
        assert guest.ws_message(TOP, TEXT, data) == b""
        assert host.sent[-1] == (TOP, TEXT, json.dumps({"error": error}, separators=(",", ":")).encode())
    assert guest.ws_message(TOP, TEXT, b"x" * 16384) == b""  # the limit itself is fine
    assert len(host.published) == 1 and history(guest) == ["", "x" * 16384]
    # A refused message from a sender that left: nobody to tell, and not an error.
    host.connections.clear()
    assert guest.ws_message(TOP, TEXT, b"x" * 16385) == b""


def test_room_refuses_websockets_outside_chat_and_answers_426_to_plain_http_there() -> None:
    guest = room()
    assert guest.ws_open(1, b"/room/lobby") == -404
    assert guest.ws_open(1, b"/room/lobby/messages") == -404
    answer = guest.http("GET", "/chat/lobby")
    assert answer == (
        426,
        {"content-type": "application/json", "upgrade": "websocket"},
        b'{"error":"upgrade_required"}',
    )


def test_room_http_post_publishes_to_the_chat_best_effort() -> None:
    host = WsHost(key=b"lobby")
    guest = room(host)
    answer = guest.http("POST", "/room/lobby/messages", b"from http")
    assert not isinstance(answer, int) and (answer[0], json.loads(answer[2])) == (200, {"seq": 1})
    assert host.published == [(TEXT, b"from http", b"")]
    # A chat that cannot publish (say, no `websocket = true`) does not fail the post: stored, and logged.
    host.ws_error = INVALID
    answer = guest.http("POST", "/room/lobby/messages", b"still stored")
    assert not isinstance(answer, int) and (answer[0], json.loads(answer[2])) == (200, {"seq": 2})
    assert host.logs[-1] == (
        2,
        "room: publishing a posted message failed: error.Invalid: ws_publish: refused by the test",
    )
    # Over the socket a failed publish fails the message, so its store is rolled back with it.
    assert guest.ws_message(TOP, TEXT, b"lost") == -500
    assert host.logs[-1] == (3, "micromono: handler failed with error.Invalid: ws_publish: refused by the test")
    assert history(guest) == ["from http", "still stored", "lost"]  # the fake host keeps no transactions
    assert host.published == [(TEXT, b"from http", b"")]
