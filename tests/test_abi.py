"""abi.py's byte formats, on their own."""

from __future__ import annotations

import struct

import pytest

from micromono.abi import BadReply, decode_http_response, encode_http_request, render_http_headers


def reply(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    out = struct.pack("<HH", status, len(headers))
    for name, value in headers:
        out += struct.pack("<HH", len(name), len(value)) + name + value
    return out + body


def test_decode_drops_host_framed_headers() -> None:
    data = reply(201, [(b"X-A", b"1"), (b"Content-Length", b"99"), (b"connection", b"close")], b"body")
    assert decode_http_response(data) == (201, [(b"X-A", b"1")], b"body")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xc8", "HTTP reply of 1 bytes is shorter than its 4-byte head"),
        (reply(99, [], b""), "HTTP reply has status 99, expected 100-599"),
        (reply(600, [], b""), "HTTP reply has status 600, expected 100-599"),
        (
            struct.pack("<HH", 200, 2) + struct.pack("<HH", 1, 1) + b"ab",
            "HTTP reply declares 2 headers but ends inside them",
        ),
        (reply(200, [(b"bad name", b"v")], b""), "HTTP reply has an invalid header name b'bad name'"),
        (reply(200, [(b"", b"v")], b""), "HTTP reply has an invalid header name b''"),
        (
            reply(200, [(b"x", b"a\r\nInjected: yes")], b""),
            "HTTP reply header b'x' has a value containing CR, LF or NUL",
        ),
    ],
)
def test_decode_rejects_malformed_replies(data: bytes, message: str) -> None:
    with pytest.raises(BadReply, match=f"^{message.replace('(', '.').replace(')', '.')}$"):
        decode_http_response(data)


def test_render_headers_matches_decode_and_caches() -> None:
    data = reply(200, [(b"content-type", b"text/plain"), (b"date", b"x")], b"hello")
    rendered, start = render_http_headers(memoryview(data), 2)
    assert rendered == b"content-type: text/plain\r\n"
    assert data[start:] == b"hello"
    assert render_http_headers(data, 2) == (rendered, start)
    with pytest.raises(BadReply, match="declares 3 headers"):
        render_http_headers(data, 3)
    with pytest.raises(BadReply, match="value containing CR"):
        render_http_headers(reply(200, [(b"x", b"\n")], b""), 1)


def test_encode_request_layout() -> None:
    data = encode_http_request(b"GET", b"/a", b"q=1", b"h: v\r\n", b"xyz")
    assert struct.unpack_from("<HHIII", data) == (3, 0, 2, 3, 3)
    assert data[16:] == b"GET/aq=1h: v\r\nxyz"
