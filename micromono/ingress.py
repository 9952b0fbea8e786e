"""HTTP/1.1 ingress: an asyncio Protocol with httptools' parser, routing requests to services.

Owns the socket side of a request: parsing (httptools, the parser under uvicorn), limits (head size, body size),
keep-alive and pipelining order, flow control, the error -> status table, and response framing. It owns no service
logic: a routed request becomes `router.Router.run_http`, which returns the guest's reply.

Headers: the guest gets the request's header block as it came off the wire (docs/abi.md), so the parser runs
without a Python callback per header (each would cost ~0.3 µs). httptools does not say where in the bytes a request
begins, so the protocol keeps track itself: a request ends `len(head) + len(body)` bytes after it begins, and the
head ends at the first empty line. That holds for every request with a Content-Length (or no body); a chunked body's
size on the wire is not known here, so a chunked request is answered and the connection then closed (RFC 9112 lets a
server close after any response; the client sends what it pipelined behind it again on a new connection). A check
that each head starts like the method httptools parsed, followed by a space, guards the bookkeeping; the request
target is then read from the head's request line (one callback fewer than httptools' `on_url`).

Heads: a keep-alive client sends the same head again and again (wrk, SDKs, proxies with fixed headers), so each
connection remembers its last one (`HttpProtocol.known`: the head, its route and keep-alive, and its encoding for
the guest up to the body; heads up to MAX_KNOWN_HEAD_BYTES). The same head has the same framing (Content-Length,
no chunking), so a read that is exactly that head and a body of its length, arriving while the parser is between
requests, is one whole request: it is served without httptools at all (no parse, no `on_body` or
`on_message_complete` callback), one `startswith` and one concatenation. A request the parser delivers that starts
with the known head costs one slice compare. Either way the head is checked against the route table it was routed
with, which a manifest edit replaces (and with it `max_request_bytes`), and a connection told to close goes
through the parser.

Request lines: clients send the same few again and again, so each line parsed and routed is remembered in the
route table (`Routes.lines`, at most MAX_CACHED_LINES of up to MAX_CACHED_LINE_BYTES, started over when full; a
manifest edit brings a new table) with its route and the first bytes of its encoding for the guest. A line seen
before costs one dict lookup, and the request is encoded with one join. The check against httptools' method is
made when a line is parsed; a line found in the table needs none: a request boundary tracked wrongly would put
`start` where no line seen before begins (llhttp accepts only CRLF line ends, so the head ends at the first CRLF
CRLF), and the parse of that garbage would fail the check.

The hot path is one Protocol callback chain per request, no task, no timer, no per-request logging or
prometheus call (`../shared/research/ingress-ceiling.md`: 70% of a request is kernel and event loop; anything we
add per request shows directly in requests/s). Counters are plain dicts read at scrape time.

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
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import deque
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final

import httptools
import structlog

from .abi import BODY_LEN, HEAD_PREFIX, PAIR, BadReply, decode_http_response, render_http_headers
from .errors import AbiViolation, GuestTrap, MicromonoError, ServiceCallError

if TYPE_CHECKING:
    from .config import Route
    from .router import Router, Slot

__all__ = ["Ingress", "HttpProtocol", "Routes", "MAX_HEAD_BYTES", "MAX_HEADER_FIELDS"]

log = structlog.get_logger(__name__)

MAX_HEAD_BYTES: Final = 64 * 1024
#: The most header fields a request may have (Node.js allows 2,000, Apache 100): each is a field every guest parses.
MAX_HEADER_FIELDS: Final = 1000
#: How long a connection whose request was refused keeps draining the client's data before it is aborted.
LINGER_SECONDS: Final = 2.0

_unpack_status = PAIR.unpack_from  # (status, header_count): the same two u16s
_STATUS_LINES: Final = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}


def _date_lines() -> bytes:
    """The `date` and `server` header lines."""
    return b"date: %s\r\nserver: micromono\r\n" % formatdate(time.time(), usegmt=True).encode()


def json_body(kind: str, message: str, service: str | None = None, **extra: Any) -> bytes:
    body: dict[str, Any] = {"error": kind, "message": message}
    if service is not None:
        body["service"] = service
    body.update(extra)
    return json.dumps(body).encode()


#: `content-length: N` and the empty line that ends a head, by N (the common lengths, made once).
_CONTENT_LENGTH: dict[int, bytes] = {}
_CONTENT_LENGTH_CACHED: Final = 16384


def _content_length(n: int) -> bytes:
    line = b"content-length: %d\r\n\r\n" % n
    if n < _CONTENT_LENGTH_CACHED:
        _CONTENT_LENGTH[n] = line
    return line


#: `body_len` as the encoded request's u32, by length (the common lengths, made once).
_LENGTHS: dict[int, bytes] = {}
_pack_body_len = BODY_LEN.pack


def _length(n: int) -> bytes:
    encoded = _pack_body_len(n)
    if n < _CONTENT_LENGTH_CACHED:
        _LENGTHS[n] = encoded
    return encoded


def _remember_reply_head(slot: Slot, reply: bytes) -> int:
    """Render a reply's status line and headers into `slot.reply_head`; return where its body starts, or 0 when
    the reply is not for the fast path (too short, or a status without a standard reason phrase).

    Raises:
        BadReply: the headers break the ABI (see `abi.render_http_headers`).
    """
    if len(reply) < 4:
        return 0
    status, count = _unpack_status(reply, 0)
    line = _STATUS_LINES.get(status)
    if line is None:
        return 0
    headers, start = render_http_headers(reply, count) if count else (b"", 4)
    slot.reply_head = (reply[:start], line + headers, status)
    return start


def _head_at(data: bytes, start: int) -> tuple[int, bytes | None]:
    """Where the request at `start` begins (past the empty lines a client may send between requests), and its
    head up to and including the empty line, or None if that is not all in `data` yet."""
    n = len(data)
    while start < n and data[start] in b"\r\n":
        start += 1
    end = data.find(b"\r\n\r\n", start)
    return start, (data[start : end + 4] if end >= 0 else None)


def _request_target(line: bytes) -> tuple[bytes, bytes] | None:
    """The path and query of a request line in a form other than `method SP /path SP HTTP/x.y` (an absolute URL,
    extra spaces, no version), or None if its target is not a URL."""
    parts = line.split()
    if len(parts) < 2:
        return None
    target = parts[1]
    if target[:1] == b"/":
        path, _, query = target.partition(b"?")
        return path, query
    try:
        parsed = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError:
        return None
    return parsed.path or b"/", parsed.query or b""


#: A parsed request line, cached by its bytes in `Routes.lines`: (slot or None for no route, path, the encoded
#: request's first bytes (abi.HEAD_PREFIX), method + path + query as the guest gets them).
Target = tuple["Slot | None", "bytes", "bytes", "bytes"]
#: How many distinct request lines `Routes.lines` keeps before it starts over (clients repeat a few lines: the
#: same paths again and again; a client sending ever new ones costs one parse each, as without the cache).
MAX_CACHED_LINES: Final = 1024
#: The longest request line remembered, and the longest head a connection remembers (`HttpProtocol.known`): longer
#: ones are parsed each time, so what the caches hold stays small (1,024 x 2 KiB; 2 x 8 KiB per connection) whatever
#: clients send.
MAX_CACHED_LINE_BYTES: Final = 2048
MAX_KNOWN_HEAD_BYTES: Final = 8192
_pack_prefix = HEAD_PREFIX.pack


class Routes:
    """Path -> service slot: exact routes in a dict, prefix routes longest first; and the request lines seen,
    parsed and routed (`lines`), so that a request line sent again costs one dict lookup."""

    def __init__(self, table: list[tuple[Route, Slot]]) -> None:
        self.exact: dict[bytes, Slot] = {}
        self.prefixes: list[tuple[bytes, Slot]] = []
        self.lines: dict[bytes, Target] = {}
        for route, slot in table:
            if route.prefix:
                self.prefixes.append((route.pattern.encode(), slot))
            else:
                self.exact[route.pattern.encode()] = slot
        self.prefixes.sort(key=lambda item: len(item[0]), reverse=True)

    def match(self, path: bytes) -> Slot | None:
        slot = self.exact.get(path)
        if slot is not None:
            return slot
        for prefix, slot in self.prefixes:
            # "/api/*" serves "/api" and "/api/..." but not "/apix"
            if path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == 47 or not prefix):
                return slot
        return None


class Ingress:
    """The ingress listener's shared state: routes, limits, counters and open connections.

    Args:
        router: runs the requests.
        routes: the route table.
        max_request_bytes: the largest body accepted (413 above).
    """

    def __init__(self, router: Router, routes: Routes, *, max_request_bytes: int) -> None:
        self.router = router
        self.routes = routes
        self.max_request_bytes = max_request_bytes
        self.status_counts = [0] * 600  # responses by status code (a list: cheaper than a dict per request)
        self.date = _date_lines()
        self._clock: asyncio.TimerHandle | None = None
        self.connections: set[HttpProtocol] = set()
        self.closing = False

    def __repr__(self) -> str:
        return f"<Ingress [connections: {len(self.connections)} | exact routes: {len(self.routes.exact)}]>"

    def set_routes(self, routes: Routes, *, max_request_bytes: int) -> None:
        """Route the requests that arrive from now on with a reloaded manifest's table and body limit."""
        self.routes = routes
        self.max_request_bytes = max_request_bytes

    def protocol_factory(self) -> HttpProtocol:
        return HttpProtocol(self)

    def http_stats(self) -> tuple[dict[int, int], int]:
        return self.statuses(), len(self.connections)

    def statuses(self) -> dict[int, int]:
        """Responses sent so far, by status code."""
        return {code: n for code, n in enumerate(self.status_counts) if n}

    def start_clock(self) -> None:
        """Refresh the `date` header once a second from the event loop (no per-request clock read)."""
        self.date = _date_lines()
        loop = asyncio.get_running_loop()
        self._clock = loop.call_at(math.floor(loop.time()) + 1.0, self.start_clock)

    def stop_clock(self) -> None:
        if self._clock is not None:
            self._clock.cancel()
            self._clock = None

    def shutdown(self) -> None:
        """Close idle connections now and the others after their in-flight responses."""
        self.closing = True
        for conn in list(self.connections):
            conn.close_when_idle()

    def abort_all(self) -> None:
        for conn in list(self.connections):
            conn.abort()


class _Pending:
    """A response slot for one request, so pipelined responses leave in request order.

    Callable: the router's worker calls it with `(reply, error)` when a queued request completes.
    """

    __slots__ = ("conn", "service", "keep_alive", "data")

    def __init__(self, conn: HttpProtocol, service: str, keep_alive: bool) -> None:
        self.conn = conn
        self.service = service
        self.keep_alive = keep_alive
        self.data: bytes | None = None

    def __call__(self, reply: bytes | None, error: BaseException | None) -> None:
        conn = self.conn
        if error is not None:
            self.data = conn._error_response(error, self.service, self.keep_alive)
        else:
            assert reply is not None
            self.data = conn._guest_response(reply, self.service, self.keep_alive)
        conn._flush()


class HttpProtocol(asyncio.Protocol):
    """One ingress connection."""

    __slots__ = (
        "ingress", "transport", "parser", "body", "rejected", "pending", "closing",
        "paused", "data", "start", "head", "partial", "chunked", "known",
    )  # fmt: skip

    def __init__(self, ingress: Ingress) -> None:
        self.ingress = ingress
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        # Where the current request is in the bytes (see the module docstring): `data` is the read being parsed,
        # `start` the offset of the request in it (negative: it began that many bytes earlier), `head` its head once
        # it is complete but the request is not, `partial` the start of a head that a later read completes.
        self.data = b""
        self.start = 0
        self.head: bytes | None = None
        self.partial: bytes | None = None
        self.chunked = False
        # The last request's head on this connection, routed and encoded up to its body: (the route table it was
        # routed with, head, slot, encoded request without the body, keep-alive, the whole request's length on the
        # wire, or -1 when it did not keep the connection alive). Clients repeat their heads.
        self.known: tuple[Routes, bytes, Slot, bytes, bool, int] | None = None
        self.body: bytes | bytearray | None = None
        self.rejected = False  # a request on this connection was refused; stop parsing, close after replying
        self.pending: deque[_Pending] = deque()
        self.closing = False
        self.paused = False

    # --- asyncio.Protocol ---------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.ingress.connections.add(self)
        if self.ingress.closing:
            self.close_when_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ingress.connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.rejected:
            return
        partial = self.partial
        if partial is None:
            # The common case, without the parser: the parser is between requests (`start` is 0 after a read that
            # ended with one) and this read is the connection's last head again with a body of the same length (the
            # head fixes the framing: same Content-Length, no chunking), so the read is one whole request.
            known = self.known
            if known is not None and known[5] == len(data) and self.start == 0:
                routes, seen, slot, encoded, _, _ = known
                if data.startswith(seen) and routes is self.ingress.routes and not self.closing:
                    self._serve(slot, encoded + data[len(seen) :], True)
                    return
            self.data = data
        else:  # the current request's head began in an earlier read: look at it whole
            self.partial = None
            self.data = partial + data
            self.start = 0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The request was answered as plain HTTP (a server may ignore Upgrade); what follows it on the wire
            # would be another protocol, which micromono does not speak, so the connection ends here.
            self.rejected = True
            self.close_when_idle()
        except httptools.HttpParserCallbackError as exc:
            if not self.rejected:  # a bug of ours inside a parser callback, not the client's fault
                log.error("ingress.request.failed", error=repr(exc.__context__), exc_info=exc.__context__)
                self._reject(500, "internal", "internal error in micromono; see the daemon log")
        except httptools.HttpParserError as exc:
            if not self.rejected:
                self._reject(400, "bad_request", f"malformed HTTP request: {exc}")
        else:
            if self.start == len(self.data):  # the common case: the read ended with a request
                self.start = 0
            else:
                self._carry()

    def _carry(self) -> None:
        """After a read that left a request unfinished: keep where it begins for the next read, and bound what an
        unfinished head may cost us (httptools buffers a header line until it ends)."""
        whole = self.data
        start, n = self.start, len(whole)
        if start < n and self.head is None:
            start, head = _head_at(whole, start)
            if head is not None:
                self.head = head
            elif start < n:
                partial = whole[start:]
                if len(partial) > MAX_HEAD_BYTES:
                    self._reject(431, "head_too_large", f"request head larger than {MAX_HEAD_BYTES} bytes")
                    return
                self.partial = partial
        self.start = start - n

    def pause_writing(self) -> None:
        # The client is not reading its responses: stop reading its requests until it does.
        if self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and self.paused:
            self.paused = False
            self.transport.resume_reading()

    # --- httptools callbacks ------------------------------------------------------------------------------------

    def on_chunk_header(self) -> None:
        self.chunked = True  # see the module docstring

    def on_body(self, chunk: bytes) -> None:
        body = self.body
        if body is None:
            body = self.body = chunk
        elif type(body) is bytes:
            body = self.body = bytearray(body) + chunk  # the second chunk: accumulate without quadratic copies
        else:
            body += chunk
        if len(body) > self.ingress.max_request_bytes:
            self._too_large()
            raise httptools.HttpParserError("rejected")

    def on_message_complete(self) -> None:
        if self.chunked:
            self._chunked_complete()
            return
        body = self.body
        if body is None:
            body = b""
        else:
            self.body = None
        ingress = self.ingress
        start = self.start
        # The common case: the same head as this connection's last request, whole in this read at `start`.
        known = self.known
        if (
            known is not None and known[0] is ingress.routes and self.head is None
            and self.data[start : start + len(known[1])] == known[1]
        ):  # fmt: skip
            _, seen, slot, encoded, keep_alive, _ = known
            # Ready for the next request on this connection (pipelined requests may follow in the same read).
            self.start = start + len(seen) + len(body)
        else:
            decoded = self._decode(body, ingress.routes)
            if decoded is None:
                return
            slot, encoded, keep_alive = decoded
        self._serve(slot, encoded + body, keep_alive and not self.closing)

    def _serve(self, slot: Slot, request: bytes, keep_alive: bool) -> None:
        """Run a routed request, encoded for the guest, and answer it (now, or in order behind queued ones)."""
        ingress = self.ingress
        router = ingress.router
        try:
            reply = router.run_http(slot, request)
            if reply.__class__ is not bytes:
                entry = _Pending(self, slot.name, keep_alive)
                if reply is None:  # earlier work is queued or running: queue behind it, answer when it is done
                    router.queue_http(slot, request, entry)
                else:  # still running after its first slice: answered when the scheduler has run it to its end
                    reply.done = entry  # type: ignore[union-attr]
                self.pending.append(entry)
                return
        except MicromonoError as exc:
            self._respond(self._error_response(exc, slot.name, keep_alive), keep_alive)
            return
        # The fast path, inline: nothing queued before it, keep-alive, and the same status and headers as this
        # service's last reply (length-prefixed, so equal bytes mean equal headers): its response head is cached.
        transport = self.transport
        if keep_alive and not self.pending and transport is not None:
            seen, head, status = slot.reply_head
            # The body, if the reply starts with the last one's status and headers (removeprefix returns the reply
            # itself when it does not, or when nothing is cached: one call instead of two slices).
            out: bytes | None = reply.removeprefix(seen)
            if out is reply:
                try:
                    start = _remember_reply_head(slot, reply)
                except BadReply as exc:
                    self._write(self._bad_reply(exc, slot.name, keep_alive), keep_alive)
                    return
                _, head, status = slot.reply_head
                out = reply[start:] if start else None
            if out is not None:
                n = len(out)
                try:
                    length = _CONTENT_LENGTH[n]
                except KeyError:
                    length = _content_length(n)
                ingress.status_counts[status] += 1
                transport.write(b"".join((head, ingress.date, length, out)))
                if self.closing:
                    self.close_when_idle()
                return
        data = self._guest_response(reply, slot.name, keep_alive)
        if self.pending:
            self._respond(data, keep_alive)
        else:
            self._write(data, keep_alive)

    def _decode(self, body: bytes | bytearray, routes: Routes) -> tuple[Slot, bytes, bool] | None:
        """Find the head of the request that just completed, route it and encode it for the guest up to its body;
        remember it in `known` for the connection's next request. None when the request was answered here (no
        route) or refused."""
        head = self.head
        data = self.data
        start = self.start
        if head is None:
            if data[start] >= 65:  # the whole head is in this read, at `start`
                head = data[start : data.find(b"\r\n\r\n", start) + 4]
            else:  # after empty lines, which RFC 9112 lets us skip
                start, head = _head_at(data, start)
                assert head is not None  # httptools has parsed all of it
        else:  # the head came in an earlier read
            self.head = None
        # An unfinished head is bounded as it arrives (`_carry`); one that arrived whole in a read is bounded here.
        if len(head) > MAX_HEAD_BYTES:
            self._reject(431, "head_too_large", f"request head larger than {MAX_HEAD_BYTES} bytes")
            raise httptools.HttpParserError("rejected")
        if head.count(b"\n") - 2 > MAX_HEADER_FIELDS:  # the request line and the blank line end in \n too
            self._reject(431, "head_too_large", f"request head has more than {MAX_HEADER_FIELDS} header fields")
            raise httptools.HttpParserError("rejected")
        # Ready for the next request on this connection (pipelined requests may follow in the same read).
        self.start = start + len(head) + len(body)
        line_end = head.find(b"\r\n")
        line = head[:line_end]
        target = routes.lines.get(line)
        if target is None:
            target = self._parse_line(line, routes)
            if target is None:
                return None
        slot, path, pre, mpq = target
        keep_alive = self.parser.should_keep_alive()
        if slot is None:
            self._respond_error(
                404, "not_found", f"no service serves {path.decode('latin-1')!r}; check the routes in services.toml",
                None, keep_alive and not self.closing,
            )  # fmt: skip
            return None
        n = len(body)
        encoded = b"".join((pre, _LENGTHS.get(n) or _length(n), mpq, head[line_end + 2 : -2]))
        if len(head) <= MAX_KNOWN_HEAD_BYTES:
            self.known = (routes, head, slot, encoded, keep_alive, len(head) + n if keep_alive else -1)
        return slot, encoded, keep_alive

    def _chunked_complete(self) -> None:
        """Answer a request whose body came chunked, then close: where the next request starts is not known."""
        self.chunked = False
        self.closing = True  # answered with `connection: close`
        self.on_message_complete()
        self.known = None  # its length on the wire is not len(head) + len(body)
        self.rejected = True  # ignore what follows; the close lingers, so the client reads the answer
        raise httptools.HttpParserError("closing after a chunked request")

    def _parse_line(self, line: bytes, routes: Routes) -> Target | None:
        """Parse and route a request line not seen before, and remember it in `routes.lines`; None when the request
        was refused (the bookkeeping lost track, or the target is not a URL)."""
        method = self.parser.get_method()
        m = len(method)
        if line[m : m + 1] != b" " or not line.startswith(method):  # the method httptools parsed, then a space
            self._lost_track(line, method)
            return None
        # The request line, as httptools accepted it: `method SP target SP HTTP/x.y`, or a form it also takes.
        if line[m + 1 : m + 2] == b"/" and line[-9:-7] == b" H":  # "/..." and " HTTP/x.y"
            path, _, query = line[m + 1 : -9].partition(b"?")
        else:
            parsed = _request_target(line)
            if parsed is None:
                self._reject(400, "bad_request", "malformed request target")
                return None
            path, query = parsed
        target: Target = (
            routes.exact.get(path) or routes.match(path), path, _pack_prefix(m, 0, len(path), len(query)),
            method + path + query,
        )  # fmt: skip
        if len(line) <= MAX_CACHED_LINE_BYTES:
            lines = routes.lines
            if len(lines) >= MAX_CACHED_LINES:
                lines.clear()
            lines[line] = target
        return target

    def _lost_track(self, line: bytes, method: bytes) -> None:
        log.error("ingress.request.failed", error="request boundary bookkeeping lost track", method=method,
                  line=line[:64])  # fmt: skip
        self._reject(500, "internal", "internal error in micromono; see the daemon log")
        raise httptools.HttpParserError("rejected")

    # --- responses ----------------------------------------------------------------------------------------------

    def _respond(self, data: bytes, keep_alive: bool) -> None:
        """Write a response now, or after the queued responses before it."""
        if not self.pending:
            self._write(data, keep_alive)
            return
        entry = _Pending(self, "", keep_alive)
        entry.data = data
        self.pending.append(entry)
        self._flush()

    def _flush(self) -> None:
        """Write every finished response at the head of the queue."""
        pending = self.pending
        while pending and pending[0].data is not None:
            done = pending.popleft()
            assert done.data is not None
            self._write(done.data, done.keep_alive)

    def _write(self, data: bytes, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None:
            return
        transport.write(data)
        if not keep_alive:
            if self.rejected:
                self._linger(transport)
            else:
                transport.close()
            self.transport = None
        elif not self.pending and self.closing:
            transport.close()
            self.transport = None

    def _guest_response(self, reply: bytes, service: str, keep_alive: bool) -> bytes:
        if len(reply) >= 4 and not reply[2] and not reply[3]:
            # The common case, a reply without headers, without building lists.
            status = reply[0] | reply[1] << 8
            line = _STATUS_LINES.get(status)
            if line is not None:
                self.ingress.status_counts[status] += 1
                body = reply[4:]
                head = b"%scontent-length: %d\r\n%s" % (line, len(body), self.ingress.date)
                if not keep_alive:
                    head += b"connection: close\r\n"
                return head + b"\r\n" + body
        try:
            status, headers, body = decode_http_response(reply)
        except BadReply as exc:
            return self._bad_reply(exc, service, keep_alive)
        return self._frame(status, headers, body, keep_alive)

    def _bad_reply(self, exc: BadReply, service: str, keep_alive: bool) -> bytes:
        """A reply that is not the ABI's HTTP encoding: an ABI violation of the service's, counted as one."""
        error = AbiViolation(service, f"service {service!r} returned a malformed HTTP reply: {exc}")
        self.ingress.router.reply_broke_abi(service, error)
        return self._error_response(error, service, keep_alive)

    def _frame(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes | memoryview, keep_alive: bool
    ) -> bytes:
        self.ingress.status_counts[status] += 1
        line = _STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status
        head = b"%scontent-length: %d\r\n%s" % (line, len(body), self.ingress.date)
        if headers:
            head += b"".join([b"%s: %s\r\n" % pair for pair in headers])
        if not keep_alive:
            head += b"connection: close\r\n"
        return head + b"\r\n" + body

    def _error_response(self, exc: BaseException, service: str | None, keep_alive: bool) -> bytes:
        if isinstance(exc, ServiceCallError):
            extra: dict[str, Any] = {}
            if isinstance(exc, GuestTrap) and exc.trap:
                extra["trap"] = exc.trap
            status, body = exc.http_status, json_body(exc.kind, str(exc), exc.service, **extra)
        elif isinstance(exc, MicromonoError):  # e.g. a new instance failed to start
            status, body = 503, json_body("unavailable", str(exc), service)
        else:
            log.error("ingress.request.failed", service=service, error=repr(exc), exc_info=exc)
            status, body = 500, json_body("internal", "internal error in micromono; see the daemon log", service)
        return self._frame(status, [(b"content-type", b"application/json")], body, keep_alive)

    def _respond_error(self, status: int, kind: str, message: str, service: str | None, keep_alive: bool) -> None:
        data = self._frame(
            status, [(b"content-type", b"application/json")], json_body(kind, message, service), keep_alive
        )
        self._respond(data, keep_alive)

    def _reject(self, status: int, kind: str, message: str) -> None:
        """Answer a request we will not parse further, then close the connection."""
        if self.rejected:
            return
        self.rejected = True
        self._respond_error(status, kind, message, None, False)

    def _too_large(self) -> None:
        self._reject(
            413, "too_large",
            f"request body is larger than max_request_bytes={self.ingress.max_request_bytes}",
        )  # fmt: skip

    def _linger(self, transport: asyncio.Transport) -> None:
        """Close after a refused request without losing the response.

        Closing while the client is still sending (a 413 for a large upload) makes the kernel answer with a reset
        that can destroy the response before the client reads it. So: end our side, discard what still arrives
        (`rejected` is set), and abort only after `LINGER_SECONDS` if the client has not closed by then.
        """
        if transport.can_write_eof():
            transport.write_eof()
            asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.abort)
        else:
            transport.close()

    # --- shutdown ----------------------------------------------------------------------------------------------

    def close_when_idle(self) -> None:
        self.closing = True
        # Idle: no response owed and no part of a next request received.
        if not self.pending and self.partial is None and self.head is None and self.transport is not None:
            self.transport.close()
            self.transport = None

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
            self.transport = None
