"""The ingress package's pieces on their own: the route table (routes.py) and response framing (responses.py).

The connection itself (http.py) is tested on a real daemon in test_ingress.py."""

from __future__ import annotations

import json
import struct

import pytest

from micromono.abi import BadReply
from micromono.config import Route
from micromono.errors import CallTimeout, GuestTrap, MicromonoError
from micromono.ingress.responses import error_response, frame, guest_response, reply_head
from micromono.ingress.routes import MAX_CACHED_LINES, Routes, request_target
from micromono.service import Slot

DATE = b"date: x\r\nserver: micromono\r\n"


def encoded_reply(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    out = struct.pack("<HH", status, len(headers))
    for name, value in headers:
        out += struct.pack("<HH", len(name), len(value)) + name + value
    return out + body


def table() -> tuple[Routes, dict[str, Slot]]:
    slots = {name: Slot(name) for name in ("login", "api", "admin", "all")}
    routes = Routes(
        [
            (Route.parse("/login"), slots["login"]),
            (Route.parse("/api/*"), slots["api"]),
            (Route.parse("/api/admin/*"), slots["admin"]),
            (Route.parse("/*"), slots["all"]),
            (Route.parse("/api/v1"), slots["api"]),
        ]
    )
    return routes, slots


def test_routes_match_as_config_route_matches_says() -> None:
    routes, _ = table()
    cases = {
        b"/login": "login",
        b"/login/x": "all",
        b"/api": "api",
        b"/api/x": "api",
        b"/apix": "all",
        b"/api/admin": "admin",
        b"/api/admin/users": "admin",
        b"/": "all",
        b"/api/v1": "api",
        "/caf\u00e9".encode(): "all",
        b"/\xff": "all",
    }
    for path, name in cases.items():
        target = routes.match(path)
        assert target is not None and target.name == name, path
    # One target per service, whatever number of routes lead to it: its reply-head cache is per service.
    assert routes.match(b"/api/x") is routes.match(b"/api/v1")


def test_no_route_is_none() -> None:
    routes = Routes([(Route.parse("/only"), Slot("only"))])
    assert routes.match(b"/only") is not None
    assert routes.match(b"/other") is None and routes.match(b"/only/") is None


def test_request_lines_are_parsed_once_and_the_cache_is_bounded() -> None:
    routes, _ = table()
    routed = routes.line(b"GET /api/x?q=1 HTTP/1.1", b"GET")
    assert routed is not None and routed.target is not None and routed.target.name == "api"
    assert (routed.path, routed.method_path_query) == (b"/api/x", b"GET/api/xq=1")
    assert routes.lines[b"GET /api/x?q=1 HTTP/1.1"] is routed
    absolute = routes.line(b"GET http://h.test/login?a HTTP/1.1", b"GET")
    assert absolute is not None and absolute.target is not None and absolute.target.name == "login"
    assert routes.line(b"GET :// HTTP/1.1", b"GET") is None  # not a URL
    for i in range(MAX_CACHED_LINES + 1):
        routes.line(b"GET /p%d HTTP/1.1" % i, b"GET")
    assert len(routes.lines) <= MAX_CACHED_LINES  # started over when full
    assert request_target(b"GET") is None


def test_a_targets_reply_head_is_rendered_once_and_reused() -> None:
    routes, _ = table()
    target = routes.match(b"/login")
    assert target is not None and target.reply_seen == b""
    reply = encoded_reply(201, [(b"x-a", b"1")], b"body")
    start = target.remember_reply(reply)
    assert reply[start:] == b"body" and target.reply_status == 201
    assert target.reply_head == b"HTTP/1.1 201 Created\r\nx-a: 1\r\n"
    assert reply.removeprefix(target.reply_seen) == b"body"
    assert target.remember_reply(encoded_reply(299, [], b"")) == 0  # no standard reason phrase: not cached
    assert reply_head(b"\x00") is None


def test_framing() -> None:
    assert frame(200, [], b"hi", DATE, True) == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n" + DATE + b"\r\nhi"
    closing = frame(599, [(b"a", b"b")], b"", DATE, False)
    assert closing == b"HTTP/1.1 599 Unknown\r\ncontent-length: 0\r\n" + DATE + b"a: b\r\nconnection: close\r\n\r\n"
    assert guest_response(encoded_reply(404, [], b"no"), DATE, True) == (
        404,
        b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n" + DATE + b"\r\nno",
    )
    status, data = guest_response(encoded_reply(200, [(b"k", b"v")], b"x"), DATE, False)
    assert status == 200 and data.endswith(b"k: v\r\nconnection: close\r\n\r\nx")
    with pytest.raises(BadReply):
        guest_response(b"\x01", DATE, True)


def test_the_error_status_table() -> None:
    def body(data: bytes) -> object:
        return json.loads(data.split(b"\r\n\r\n", 1)[1])

    status, data = error_response(CallTimeout("svc", "too slow"), "svc", DATE, True)
    assert status == 504 and body(data) == {"error": "timeout", "message": "too slow", "service": "svc"}
    status, data = error_response(GuestTrap("svc", "boom", trap="unreachable"), "svc", DATE, True)
    assert status == 500 and body(data) == {"error": "trap", "message": "boom", "service": "svc", "trap": "unreachable"}
    status, data = error_response(MicromonoError("no start"), "svc", DATE, True)  # e.g. an instance did not start
    assert status == 503 and body(data) == {"error": "unavailable", "message": "no start", "service": "svc"}
    status, data = error_response(RuntimeError("bug"), "svc", DATE, False)
    assert status == 500 and body(data)["error"] == "internal" and b"connection: close" in data
