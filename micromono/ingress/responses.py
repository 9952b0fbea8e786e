"""HTTP response framing: status lines, the `date` line, `content-length`, JSON error bodies, the error -> status
table, and the guest's encoded reply (docs/abi.md) turned into an HTTP/1.1 response.

Errors, all with a JSON body `{"error": kind, "message": ..., ["service": ...]}`:

| cause | status |
|---|---|
| malformed HTTP | 400, then close |
| no route | 404 |
| body over `max_request_bytes` | 413, then close |
| head larger than 64 KiB, or more than 1,000 header fields | 431, then close |
| guest trap, ABI violation, application error, forbidden call | 500 |
| service overloaded (pool or mailbox full) | 503 |
| service stopping | 503 |
| call deadline exceeded | 504 |

A `ServiceCallError` carries its own status (`http_status`); `error_response` maps everything else. This module
builds bytes and nothing else: it must not write to a transport, count responses or know about connections.

Compiled by mypyc on the compiled path (scripts/build_compiled.py), from this same source.
"""

from __future__ import annotations

import json
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Final

import structlog

from micromono.abi import PAIR, decode_http_response, render_http_headers
from micromono.errors import GuestTrap, MicromonoError, ServiceCallError

__all__ = [
    "STATUS_LINES",
    "date_lines",
    "json_body",
    "content_length",
    "frame",
    "error_response",
    "plain_reply",
    "guest_response",
    "reply_head",
]

log = structlog.get_logger(__name__)

#: The status line of every standard status, by code.
STATUS_LINES: Final = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
_unpack_status = PAIR.unpack_from  # (status, header_count): the same two u16s
_JSON: Final = [(b"content-type", b"application/json")]


def date_lines() -> bytes:
    """The `date` and `server` header lines, for now."""
    return b"date: %s\r\nserver: micromono\r\n" % formatdate(time.time(), usegmt=True).encode()


def json_body(kind: str, message: str, service: str | None = None, **extra: Any) -> bytes:
    """An error response's body: `{"error": kind, "message": message, ["service": service], **extra}`."""
    body: dict[str, Any] = {"error": kind, "message": message}
    if service is not None:
        body["service"] = service
    body.update(extra)
    return json.dumps(body).encode()


#: `content-length: N` and the empty line that ends a head, by N (the common lengths, made once).
CONTENT_LENGTHS: dict[int, bytes] = {}
_CACHED_LENGTHS: Final = 16384


def content_length(n: int) -> bytes:
    """`content-length: n` and the empty line that ends the head (see CONTENT_LENGTHS, which callers try first)."""
    line = b"content-length: %d\r\n\r\n" % n
    if n < _CACHED_LENGTHS:
        CONTENT_LENGTHS[n] = line
    return line


def frame(
    status: int, headers: list[tuple[bytes, bytes]], body: bytes | memoryview, date: bytes, keep_alive: bool
) -> bytes:
    """A whole response: status line, `content-length`, `date`, `headers`, `connection: close` unless
    `keep_alive`, and `body`."""
    line = STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status
    head = b"%scontent-length: %d\r\n%s" % (line, len(body), date)
    if headers:
        head += b"".join([b"%s: %s\r\n" % pair for pair in headers])
    if not keep_alive:
        head += b"connection: close\r\n"
    return head + b"\r\n" + body


def error_response(exc: BaseException, service: str | None, date: bytes, keep_alive: bool) -> tuple[int, bytes]:
    """The status and response for an error: a `ServiceCallError`'s own status, 503 for another micromono error (a
    new instance failed to start), 500 (and a log line) for anything else, a bug of ours."""
    if isinstance(exc, ServiceCallError):
        extra: dict[str, Any] = {}
        if isinstance(exc, GuestTrap) and exc.trap:
            extra["trap"] = exc.trap
        status, body = exc.http_status, json_body(exc.kind, str(exc), exc.service, **extra)
    elif isinstance(exc, MicromonoError):
        status, body = 503, json_body("unavailable", str(exc), service)
    else:
        log.error("ingress.request.failed", service=service, error=repr(exc), exc_info=exc)
        status, body = 500, json_body("internal", "internal error in micromono; see the daemon log", service)
    return status, frame(status, _JSON, body, date, keep_alive)


def refusal(status: int, kind: str, message: str, service: str | None, date: bytes, keep_alive: bool) -> bytes:
    """A response for a request refused before it reached a service (400, 404, 413, 431, 500)."""
    return frame(status, _JSON, json_body(kind, message, service), date, keep_alive)


def plain_reply(reply: bytes) -> int:
    """The status of a reply without headers and with a standard status (the common case, framed without
    building lists), or 0 for any other reply."""
    if len(reply) >= 4 and not reply[2] and not reply[3]:
        status = reply[0] | reply[1] << 8
        if status in STATUS_LINES:
            return status
    return 0


def guest_response(reply: bytes, date: bytes, keep_alive: bool) -> tuple[int, bytes]:
    """The status and response for a guest's encoded HTTP reply.

    Raises:
        BadReply: the reply is not the ABI's HTTP encoding.
    """
    status = plain_reply(reply)
    if status:
        body = reply[4:]
        head = b"%scontent-length: %d\r\n%s" % (STATUS_LINES[status], len(body), date)
        if not keep_alive:
            head += b"connection: close\r\n"
        return status, head + b"\r\n" + body
    status, headers, body = decode_http_response(reply)
    return status, frame(status, headers, body, date, keep_alive)


def reply_head(reply: bytes) -> tuple[bytes, bytes, int] | None:
    """A reply's encoded status and headers (the bytes up to its body), the status line and header lines rendered
    from them, and the status; None when the reply is not for the cached path (too short, or a status without a
    standard reason phrase).

    Raises:
        BadReply: the headers break the ABI (see `abi.render_http_headers`).
    """
    if len(reply) < 4:
        return None
    status, count = _unpack_status(reply, 0)
    line = STATUS_LINES.get(status)
    if line is None:
        return None
    headers, start = render_http_headers(reply, count) if count else (b"", 4)
    return reply[:start], line + headers, status
