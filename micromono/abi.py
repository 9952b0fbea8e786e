"""Wire formats of the guest ABI that live in bytes rather than in function signatures (docs/abi.md).

Pure functions over `bytes`: encoding an HTTP request for a guest (and decoding it again, for tests and tools),
decoding the HTTP response a guest returns, plus the ABI's constants, the error codes among them (errors.py takes
its `abi_code`s from here). No I/O, no wasmtime, no asyncio; the ingress (ingress/heads.py) builds requests inline on
the hot path from the same layout, and ingress/responses.py calls `render_http_headers`.
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = [
    "ABI_VERSION",
    "KIND_HTTP",
    "KIND_CALL",
    "KIND_MESSAGE",
    "KIND_ALARM",
    "ERROR_CODES",
    "MM_ERR_UNKNOWN_TARGET",
    "MM_ERR_FORBIDDEN",
    "MM_ERR_OVERLOADED",
    "MM_ERR_TRAP",
    "MM_ERR_TIMEOUT",
    "MM_ERR_DEPTH",
    "MM_ERR_APP",
    "MM_ERR_TOO_LARGE",
    "MM_ERR_NO_REPLY",
    "MM_ERR_UNAVAILABLE",
    "MM_ERR_NOT_FOUND",
    "MM_ERR_STORAGE_FULL",
    "MM_ERR_SQL",
    "MM_ERR_NOT_ACTOR",
    "MM_ERR_INVALID",
    "encode_http_request",
    "decode_http_request",
    "decode_http_response",
    "BadReply",
]

ABI_VERSION: Final = 2
KIND_HTTP: Final = 1
KIND_CALL: Final = 2
KIND_MESSAGE: Final = 3
#: An actor's alarm firing (docs/abi.md, "Actors"): the payload is ALARM_PAYLOAD (when it was set for, the attempt).
KIND_ALARM: Final = 4

# The negative results of `micromono.call` / `send` / `take_reply` (docs/abi.md, "Error codes"). Defined here
# once: each error class in errors.py takes its `abi_code` from these, and ERROR_CODES lists them by name.
MM_ERR_UNKNOWN_TARGET: Final = -1
MM_ERR_FORBIDDEN: Final = -2
MM_ERR_OVERLOADED: Final = -3
MM_ERR_TRAP: Final = -4
MM_ERR_TIMEOUT: Final = -5
MM_ERR_DEPTH: Final = -6
MM_ERR_APP: Final = -7
MM_ERR_TOO_LARGE: Final = -8
MM_ERR_NO_REPLY: Final = -9
MM_ERR_UNAVAILABLE: Final = -10
# The results of the actor storage imports (docs/abi.md, "Actors").
MM_ERR_NOT_FOUND: Final = -11
MM_ERR_STORAGE_FULL: Final = -12
MM_ERR_SQL: Final = -13
MM_ERR_NOT_ACTOR: Final = -14
MM_ERR_INVALID: Final = -15

#: The error codes by name, as the SDKs and docs/abi.md spell them.
ERROR_CODES: Final = {
    "MM_ERR_UNKNOWN_TARGET": MM_ERR_UNKNOWN_TARGET,
    "MM_ERR_FORBIDDEN": MM_ERR_FORBIDDEN,
    "MM_ERR_OVERLOADED": MM_ERR_OVERLOADED,
    "MM_ERR_TRAP": MM_ERR_TRAP,
    "MM_ERR_TIMEOUT": MM_ERR_TIMEOUT,
    "MM_ERR_DEPTH": MM_ERR_DEPTH,
    "MM_ERR_APP": MM_ERR_APP,
    "MM_ERR_TOO_LARGE": MM_ERR_TOO_LARGE,
    "MM_ERR_NO_REPLY": MM_ERR_NO_REPLY,
    "MM_ERR_UNAVAILABLE": MM_ERR_UNAVAILABLE,
    "MM_ERR_NOT_FOUND": MM_ERR_NOT_FOUND,
    "MM_ERR_STORAGE_FULL": MM_ERR_STORAGE_FULL,
    "MM_ERR_SQL": MM_ERR_SQL,
    "MM_ERR_NOT_ACTOR": MM_ERR_NOT_ACTOR,
    "MM_ERR_INVALID": MM_ERR_INVALID,
}

HEAD: Final = struct.Struct("<HHIII")  # method_len, reserved (0), path_len, query_len, body_len
# HEAD in two parts, for ingress, which keeps the first per request line and adds the body's length per request.
HEAD_PREFIX: Final = struct.Struct("<HHII")  # method_len, reserved (0), path_len, query_len
BODY_LEN: Final = struct.Struct("<I")  # body_len
assert HEAD.size == HEAD_PREFIX.size + BODY_LEN.size
PAIR: Final = struct.Struct("<HH")  # name_len, value_len
_STATUS = struct.Struct("<HH")  # status, header_count
_pack_head = HEAD.pack
_pack_pair = PAIR.pack
_unpack_status = _STATUS.unpack_from
_unpack_pair = PAIR.unpack_from

#: Headers the host writes itself; a guest's copies are dropped.
HOST_FRAMED_HEADERS: Final = frozenset({b"content-length", b"connection", b"date", b"transfer-encoding"})


#: Bytes allowed in a header name (RFC 9110 token characters).
_TOKEN_BYTES: Final = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


class BadReply(ValueError):
    """The guest's HTTP reply does not follow the ABI's response encoding."""


def encode_http_request(method: bytes, path: bytes, query: bytes, headers: bytes, body: bytes) -> bytes:
    """Encode one HTTP request as the guest reads it (docs/abi.md, "HTTP encoding").

    `headers` is the request's header block as it came off the wire: `Name: value` lines, each ending in CRLF
    (empty when there are none). Raises `ValueError` (from `struct`) if a field is too long for its length prefix.
    """
    return b"".join((_pack_head(len(method), 0, len(path), len(query), len(body)), method, path, query, headers, body))


def decode_http_request(data: bytes) -> tuple[bytes, bytes, bytes, list[tuple[bytes, bytes]], bytes]:
    """The inverse of `encode_http_request`, with the header block split into `(name, value)` pairs the way the
    SDKs split it (the value without the whitespace around it).

    Raises:
        ValueError: `data` is not an encoded request.
    """
    if len(data) < HEAD.size:
        raise ValueError(f"an encoded request is at least {HEAD.size} bytes, got {len(data)}")
    method_len, _, path_len, query_len, body_len = HEAD.unpack_from(data, 0)
    pos = HEAD.size
    method, pos = data[pos : pos + method_len], pos + method_len
    path, pos = data[pos : pos + path_len], pos + path_len
    query, pos = data[pos : pos + query_len], pos + query_len
    headers_end = len(data) - body_len
    if headers_end < pos:
        raise ValueError("the lengths in the request's head add up to more than its size")
    block = data[pos:headers_end]
    headers: list[tuple[bytes, bytes]] = []
    for line in block.split(b"\r\n")[:-1] if block else []:
        name, colon, value = line.partition(b":")
        if not colon:
            raise ValueError(f"header line without a colon: {line[:64]!r}")
        headers.append((name, value.strip(b" \t")))
    return method, path, query, headers, data[headers_end:]


#: Rendered header blocks by their encoded bytes: guests tend to send the same few header sets again and again.
_RENDERED: dict[bytes, bytes] = {}
_RENDERED_MAX: Final = 512


def render_http_headers(reply: bytes | memoryview, count: int) -> tuple[bytes, int]:
    """The `count` headers of an HTTP reply as `name: value\r\n` lines, and the offset where the body starts.

    Validates like `decode_http_response` and drops the headers the host frames itself. Results are cached by
    the encoded header bytes, so a guest that keeps sending the same headers costs one walk over the length
    prefixes and a dict lookup.

    Raises:
        BadReply: as `decode_http_response`.
    """
    pos, end = 4, len(reply)
    for _ in range(count):
        if pos + 4 > end:
            raise BadReply(f"HTTP reply declares {count} headers but ends inside them")
        nlen, vlen = _unpack_pair(reply, pos)
        pos += 4 + nlen + vlen
    if pos > end:
        raise BadReply(f"HTTP reply declares {count} headers but ends inside them")
    block = bytes(reply[4:pos])
    rendered = _RENDERED.get(block)
    if rendered is None:
        _, headers, _ = decode_http_response(b"\xc8\x00" + bytes(reply[2:pos]))
        rendered = b"".join([b"%s: %s\r\n" % pair for pair in headers])
        if len(_RENDERED) >= _RENDERED_MAX:
            _RENDERED.clear()
        _RENDERED[block] = rendered
    return rendered, pos


def decode_http_response(reply: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Decode a guest's HTTP reply into `(status, headers, body)`.

    Headers the host frames itself (`HOST_FRAMED_HEADERS`) are dropped.

    Raises:
        BadReply: the reply is shorter than its head, a header runs past its end, the status is outside
            100-599, or a header contains CR, LF or NUL.
    """
    if len(reply) < 4:
        raise BadReply(f"HTTP reply of {len(reply)} bytes is shorter than its 4-byte head")
    status, count = _unpack_status(reply, 0)
    if not 100 <= status <= 599:
        raise BadReply(f"HTTP reply has status {status}, expected 100-599")
    if count == 0:
        return status, [], reply[4:]
    headers: list[tuple[bytes, bytes]] = []
    pos, end = 4, len(reply)
    for _ in range(count):
        if pos + 4 > end:
            raise BadReply(f"HTTP reply declares {count} headers but ends inside them")
        nlen, vlen = _unpack_pair(reply, pos)
        pos += 4
        if pos + nlen + vlen > end:
            raise BadReply(f"HTTP reply declares {count} headers but ends inside them")
        name = reply[pos : pos + nlen]
        value = reply[pos + nlen : pos + nlen + vlen]
        pos += nlen + vlen
        # One C call each: deleting the allowed bytes must leave nothing, deleting CR/LF/NUL must remove nothing.
        if not name or name.translate(None, _TOKEN_BYTES):
            raise BadReply(f"HTTP reply has an invalid header name {name[:64]!r}")
        if len(value.translate(None, b"\r\n\0")) != vlen:
            raise BadReply(f"HTTP reply header {name[:64]!r} has a value containing CR, LF or NUL")
        if name.lower() not in HOST_FRAMED_HEADERS:
            headers.append((name, value))
    return status, headers, reply[pos:]
