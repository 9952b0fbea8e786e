"""Request heads: where one is in the bytes, its encoding for the guest, and `KnownHead`, a head routed and encoded.

The guest gets the request's header block as it came off the wire (docs/abi.md), so the parser runs
without a Python callback per header. httptools does not say where in the bytes a request begins, so the connection
keeps track itself: a request ends `len(head) + len(body)` bytes after it begins, and the head ends at the first
empty line. That holds for every request with a Content-Length (or no body); a chunked body's size on the wire is
not known here, so a chunked request is answered and the connection then closed (RFC 9112 lets a server close after
any response; the client sends what it pipelined behind it again on a new connection). A check that each head
starts like the method httptools parsed, followed by a space, guards the bookkeeping when a request line is parsed;
a line found in the route table's cache (routes.py) needs none: a request boundary tracked wrongly would put `start`
where no line seen before begins (llhttp accepts only CRLF line ends, so the head ends at the first CRLF CRLF), and
the parse of that garbage would fail the check.

This module knows bytes and the route table's results; it must not read sockets, run guests or frame responses.

Compiled by mypyc on the compiled path (scripts/build_compiled.py), from this same source.
"""

from __future__ import annotations

from typing import Final

from micromono.abi import BODY_LEN

from .routes import RequestLine, Routes, RouteTarget

__all__ = ["KnownHead", "head_at", "encode_head"]

#: `body_len` as the encoded request's u32, by length (the common lengths, made once).
_BODY_LENGTHS: dict[int, bytes] = {}
_CACHED_BODY_LENGTHS: Final = 16384
_pack_body_len = BODY_LEN.pack


def head_at(data: bytes, start: int) -> tuple[int, bytes | None]:
    """Where the request at `start` begins (past the empty lines a client may send between requests), and its
    head up to and including the empty line, or None if that is not all in `data` yet."""
    n = len(data)
    while start < n and data[start] in b"\r\n":
        start += 1
    end = data.find(b"\r\n\r\n", start)
    return start, (data[start : end + 4] if end >= 0 else None)


def encode_head(routed: RequestLine, head: bytes, line_end: int, body_length: int) -> bytes:
    """A request encoded for the guest (abi.encode_http_request's layout) up to its body: `routed`'s prefix, the
    body's length, method + path + query, and the header block of `head` (its request line ends at `line_end`) as
    it came off the wire."""
    n = body_length
    encoded_length = _BODY_LENGTHS.get(n)
    if encoded_length is None:
        encoded_length = _pack_body_len(n)
        if n < _CACHED_BODY_LENGTHS:
            _BODY_LENGTHS[n] = encoded_length
    return b"".join((routed.prefix, encoded_length, routed.method_path_query, head[line_end + 2 : -2]))


class KnownHead:
    """A request head, routed and encoded up to its body: what every request is served from.

    `routes`: the table it was routed with; `head`: its bytes, from the request line to the empty line; `target`;
    `encoded`: the guest's encoding of the request without the body (for a body of this head's Content-Length);
    `keep_alive`; `wire_length`: the whole request's length on the wire, or -1 when it does not keep the
    connection alive (so no read is taken for exactly one such request); `key`: the actor key of a keyed route
    (decoded), None for other routes.
    """

    __slots__ = ("routes", "head", "target", "encoded", "keep_alive", "wire_length", "key")

    def __init__(
        self,
        routes: Routes,
        head: bytes,
        target: RouteTarget,
        encoded: bytes,
        keep_alive: bool,
        body_length: int,
        key: str | None = None,
    ) -> None:
        self.key = key
        self.routes = routes
        self.head = head
        self.target = target
        self.encoded = encoded
        self.keep_alive = keep_alive
        self.wire_length = len(head) + body_length if keep_alive else -1
