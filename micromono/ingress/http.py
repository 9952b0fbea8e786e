"""The HTTP/1.1 connection: an asyncio Protocol with httptools' parser, and the listener's shared state (`Ingress`).

Owns the socket side of a request: parsing (httptools, the parser under uvicorn), limits (head size, body size),
keep-alive and pipelining order, flow control, and writing responses. It must not run guests itself: a routed
request goes to `runs.TopLevel.run` (or `queue_http`), and the reply comes back as bytes to frame
(responses.py).

One way through. Every request, however it arrives, ends in `_serve(target, encoded request, keep-alive)`: its
route target, its encoding for the guest (abi.encode_http_request's layout) and whether the connection stays open.
What leads there is the head of the request, routed and encoded up to its body, as a `KnownHead`. It is made once
per distinct head (`_route_head`) and kept as the connection's `known` head, because a keep-alive client sends the
same head again and again (wrk, SDKs, proxies with fixed headers). Two fast paths use it, each guarded once:

- in `data_received`: a read that is exactly the known head and a body of its length, arriving while the parser is
  between requests, is one whole request (the same head has the same framing: Content-Length, no chunking), served
  without httptools at all; a read whose head is not the connection's own but one the listener saw on any
  connection (`Ingress.heads`, found by the bytes up to the first empty line) is served the same way;
- in `on_message_complete`: a request the parser delivers whose head is the known head costs one slice compare.

Both check that the known head was routed with the current route table (a manifest edit replaces it, and with it
`max_request_bytes`); a connection told to close goes through the parser.

Request boundaries: httptools does not say where in the bytes a request begins, so the connection keeps track
itself (`data`, `start`, `head`, `partial`; heads.py says how, and why a chunked request closes the connection).

The hot path is one Protocol callback chain per request: no task, no timer, no per-request logging or prometheus
call (`../shared/research/ingress-ceiling.md`: most of a request is kernel and event loop; anything we add per
request shows directly in requests/s). Counters are plain lists and dicts read at scrape time.

A little over the house's ~500-line guide: `Ingress` and `HttpProtocol` read each other's state on every request,
and apart they would need an import cycle or slower attribute access in the compiled build.

Compiled by mypyc on the compiled path (scripts/build_compiled.py), from this same source.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from typing import Final, NoReturn

import httptools
import structlog

from micromono.abi import KIND_HTTP, BadReply
from micromono.actors.keyed import KeyedService
from micromono.errors import AbiViolation, MicromonoError
from micromono.router import Router
from micromono.runs import TopLevel

from .heads import KnownHead, encode_head, head_at
from .responses import CONTENT_LENGTHS, content_length, date_lines, error_response, guest_response, refusal
from .routes import Routes, RouteTarget
from .websocket import WebSocketConnection, WebSockets

__all__ = ["Ingress", "HttpProtocol", "MAX_HEAD_BYTES", "MAX_HEADER_FIELDS", "MAX_KNOWN_HEAD_BYTES"]

log = structlog.get_logger(__name__)

MAX_HEAD_BYTES: Final = 64 * 1024
#: The most header fields a request may have (Node.js allows 2,000, Apache 100): each is a field every guest parses.
MAX_HEADER_FIELDS: Final = 1000
#: The longest head a connection remembers (`HttpProtocol.known`): longer ones are parsed each time.
MAX_KNOWN_HEAD_BYTES: Final = 8192
#: How many distinct heads the listener remembers (`Ingress.heads`) before it starts over.
MAX_KNOWN_HEADS: Final = 4096
#: How long a connection whose request was refused keeps draining the client's data before it is aborted.
LINGER_SECONDS: Final = 2.0


class Ingress:
    """The ingress listener's shared state: routes, limits, counters and open connections.

    Args:
        router: the daemon's router; its top-level runs (`router.top_level`) run the requests.
        routes: the route table.
        max_request_bytes: the largest body accepted (413 above).
    """

    def __init__(
        self, router: Router, routes: Routes, *, max_request_bytes: int, ws_max_connections: int = 100_000
    ) -> None:
        self.runs: TopLevel = router.top_level
        self.websockets = WebSockets(ws_max_connections, router.keyed)  # the connections upgraded to WebSockets
        self.routes = routes
        self.max_request_bytes = max_request_bytes
        self.status_counts = [0] * 600  # responses by status code (a list: cheaper than a dict per request)
        self.date = date_lines()
        self._clock: asyncio.TimerHandle | None = None
        self.connections: set[HttpProtocol] = set()
        self.closing = False
        # Heads seen on any connection, by their bytes (at most MAX_KNOWN_HEADS, started over when full): a read that
        # is one of them and its body is served without the parser, like a connection's own last head.
        self.heads: dict[bytes, KnownHead] = {}

    def __repr__(self) -> str:
        return f"<Ingress [connections: {len(self.connections)} | exact routes: {len(self.routes.exact)}]>"

    def set_routes(self, routes: Routes, *, max_request_bytes: int) -> None:
        """Route the requests that arrive from now on with a reloaded manifest's table and body limit."""
        self.routes = routes
        self.max_request_bytes = max_request_bytes
        self.heads = {}

    def protocol_factory(self) -> HttpProtocol:
        return HttpProtocol(self)

    def http_stats(self) -> tuple[dict[int, int], int]:
        return self.statuses(), len(self.connections)

    def statuses(self) -> dict[int, int]:
        """Responses sent so far, by status code."""
        return {code: n for code, n in enumerate(self.status_counts) if n}

    def start_clock(self) -> None:
        """Refresh the `date` header once a second from the event loop (no per-request clock read)."""
        self.date = date_lines()
        loop = asyncio.get_running_loop()
        self._clock = loop.call_at(math.floor(loop.time()) + 1.0, self.start_clock)

    def stop_clock(self) -> None:
        if self._clock is not None:
            self._clock.cancel()
            self._clock = None

    def shutdown(self) -> None:
        """Close idle connections now and the others after their in-flight responses; WebSockets with 1001."""
        self.closing = True
        self.websockets.close_all()
        for conn in list(self.connections):
            conn.close_when_idle()

    def abort_all(self) -> None:
        for conn in list(self.connections):
            conn.abort()
        for websocket in list(self.websockets.connections.values()):
            websocket.abort()


class _Pending:
    """A response slot for one request, so pipelined responses leave in request order.

    Callable: the request's outcome, `(reply, error)`, from a mailbox worker or a suspended run once it is over.
    """

    __slots__ = ("conn", "target", "keep_alive", "data")

    def __init__(self, conn: HttpProtocol, target: RouteTarget | None, keep_alive: bool) -> None:
        self.conn = conn
        self.target = target
        self.keep_alive = keep_alive
        self.data: bytes | None = None

    def __call__(self, reply: bytes | None, error: BaseException | None) -> None:
        conn = self.conn
        self.data = conn.response_to(self.target, reply, error, self.keep_alive)
        conn.flush()


class HttpProtocol(asyncio.Protocol):
    """One ingress connection."""

    __slots__ = (
        "ingress",
        "transport",
        "parser",
        "body",
        "rejected",
        "pending",
        "closing",
        "paused",
        "data",
        "start",
        "head",
        "partial",
        "chunked",
        "known",
        "upgrade",
    )

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
        self.known: KnownHead | None = None  # the last request's head on this connection (clients repeat heads)
        # An upgrade to a WebSocket, once its request has completed: (the actors, key, path, query, bytes from it on)
        self.upgrade: tuple[KeyedService, str, bytes, bytes, bytes] | None = None
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
            # Fast path (see the module docstring): the parser is between requests (`start` is 0 after a read that
            # ended with one) and this read is the known head again with a body of its length: one whole request.
            known = self.known
            if known is not None and known.wire_length == len(data) and self.start == 0 and data.startswith(known.head):
                if known.routes is self.ingress.routes and not self.closing:
                    self._serve(known.target, known.encoded + data[len(known.head) :], True, known.key)
                    return
            elif self.start == 0 and self.ingress.heads:
                # Not this connection's last head: maybe one the listener has seen (clients that walk through many
                # paths, such as one per actor key). Exact bytes of a whole head, so the same framing.
                end = data.find(b"\r\n\r\n")
                known = self.ingress.heads.get(data[: end + 4]) if end > 0 else None
                if (
                    known is not None
                    and known.wire_length == len(data)
                    and known.routes is self.ingress.routes
                    and not self.closing
                ):
                    self.known = known
                    self._serve(known.target, known.encoded + data[end + 4 :], True, known.key)
                    return
            self.data = data
        else:  # the current request's head began in an earlier read: look at it whole
            self.partial = None
            self.data = partial + data
            self.start = 0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            upgrade = self.upgrade
            if upgrade is not None and self.transport is not None:
                self._hand_over(upgrade)
                return
            # The request was answered as plain HTTP (a server may ignore Upgrade); what follows it on the wire
            # would be another protocol, which micromono does not speak here, so the connection ends here.
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
            start, head = head_at(whole, start)
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
        if self.parser.should_upgrade() and self._upgrade_head():
            return
        body = self.body
        if body is None:
            body = b""
        else:
            self.body = None
        routes = self.ingress.routes
        start = self.start
        # Fast path (see the module docstring): the known head, whole in this read at `start`.
        known = self.known
        if (
            known is None
            or known.routes is not routes
            or self.head is not None
            or self.data[start : start + len(known.head)] != known.head
        ):
            known = self._route_head(len(body), routes)
            if known is None:
                return
        else:
            # Ready for the next request on this connection (pipelined requests may follow in the same read).
            self.start = start + len(known.head) + len(body)
        self._serve(known.target, known.encoded + body, known.keep_alive and not self.closing, known.key)

    def _route_head(self, body_length: int, routes: Routes) -> KnownHead | None:
        """Find the head of the request that just completed, route it and encode it for the guest up to its body;
        remember it as the connection's `known` head. None when the request was answered here (no route) or
        refused."""
        head = self.head
        data = self.data
        start = self.start
        if head is None:
            if data[start] >= 65:  # the whole head is in this read, at `start`
                head = data[start : data.find(b"\r\n\r\n", start) + 4]
            else:  # after empty lines, which RFC 9112 lets us skip
                start, head = head_at(data, start)
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
        self.start = start + len(head) + body_length
        line_end = head.find(b"\r\n")
        line = head[:line_end]
        routed = routes.lines.get(line)
        if routed is None:
            method = self.parser.get_method()
            m = len(method)
            if line[m : m + 1] != b" " or not line.startswith(method):  # the method httptools parsed, then a space
                self._lost_track(line, method)
            routed = routes.line(line, method)
            if routed is None:
                self._reject(400, "bad_request", "malformed request target")
                return None
        keep_alive = self.parser.should_keep_alive()
        target = routed.target
        if target is None:
            path = routed.path.decode("latin-1")
            self._respond(
                404,
                "not_found",
                f"no service serves {path!r}; check the routes in services.toml",
                keep_alive and not self.closing,
            )
            return None
        bad_key = routed.bad_key
        if bad_key is not None:
            self._respond(400, bad_key.kind, str(bad_key), keep_alive and not self.closing)
            return None
        encoded = encode_head(routed, head, line_end, body_length)
        known = KnownHead(routes, head, target, encoded, keep_alive, body_length, routed.key)
        if len(head) <= MAX_KNOWN_HEAD_BYTES:
            self.known = known
            if keep_alive:
                heads = self.ingress.heads
                if len(heads) >= MAX_KNOWN_HEADS:
                    heads.clear()
                heads[head] = known
        return known

    def _upgrade_head(self) -> bool:
        """An upgrade request has completed. On a route of an actor service, remember what `_hand_over` needs (the
        parser then stops with HttpParserUpgrade), or refuse it (400, or 403 when the service does not take
        WebSockets) and end the connection: True. Any other route serves it as plain HTTP (a server may ignore
        Upgrade; the connection ends after it): False."""
        data = self.data
        start = self.start
        head = self.head
        if head is None:
            found_at, found = head_at(data, start)
            assert found is not None  # httptools has parsed all of it
            start, head = found_at, found
        line = head[: head.find(b"\r\n")]
        routes = self.ingress.routes
        routed = routes.lines.get(line) or routes.line(line, self.parser.get_method())
        target = routed.target if routed is not None else None
        if routed is None or target is None or target.keyed is None or routed.key is None and routed.bad_key is None:
            return False
        self.head = None
        keyed = target.keyed
        if routed.bad_key is not None:
            keyed.stream_counters.refused["bad_request"] += 1
            self._reject(400, routed.bad_key.kind, str(routed.bad_key))
        elif not keyed.spec.websocket:
            keyed.stream_counters.refused["disabled"] += 1
            self._reject(
                403,
                "forbidden",
                f"service {target.name!r} does not take WebSockets: set websocket = true on it in services.toml",
            )
        elif self.pending:
            keyed.stream_counters.refused["bad_request"] += 1
            self._reject(400, "bad_request", "a WebSocket upgrade after pipelined requests")
        else:
            key = routed.key
            assert key is not None
            query = line.split(b" ")[1].partition(b"?")[2] if b" " in line else b""
            self.upgrade = (keyed, key, routed.path, query, head + data[start + len(head) :])
        return True

    def _hand_over(self, upgrade: tuple[KeyedService, str, bytes, bytes, bytes]) -> None:
        """Give the connection to a `WebSocketConnection`, with the bytes read so far from the request on."""
        keyed, key, path, query, data = upgrade
        transport = self.transport
        assert transport is not None
        self.transport = None
        self.upgrade = None
        self.ingress.connections.discard(self)
        connection = WebSocketConnection(self.ingress.websockets, keyed, key, path, query, transport)
        transport.set_protocol(connection)
        connection.start(data)

    def _chunked_complete(self) -> None:
        """Answer a request whose body came chunked, then close: where the next request starts is not known."""
        self.chunked = False
        self.closing = True  # answered with `connection: close`
        self.on_message_complete()
        self.known = None  # its length on the wire is not len(head) + len(body)
        self.rejected = True  # ignore what follows; the close lingers, so the client reads the answer
        raise httptools.HttpParserError("closing after a chunked request")

    def _lost_track(self, line: bytes, method: bytes) -> NoReturn:
        log.error(
            "ingress.request.failed", error="request boundary bookkeeping lost track", method=method, line=line[:64]
        )
        self._reject(500, "internal", "internal error in micromono; see the daemon log")
        raise httptools.HttpParserError("rejected")

    # --- serving ------------------------------------------------------------------------------------------------

    def _serve(self, target: RouteTarget, request: bytes, keep_alive: bool, key: str | None) -> None:
        """Run a routed request, encoded for the guest, and answer it (now, or in order behind queued ones).
        `key` names the actor of a keyed route."""
        ingress = self.ingress
        runs = ingress.runs
        try:
            service = target.slot.current
            if service is None:
                raise target.slot.not_running()
            if key is not None:
                keyed = target.keyed
                if keyed is None:
                    raise target.slot.not_running()
                # An actor's reply leaves through its output gate, maybe after this returns: it takes its place in
                # the connection's order first.
                entry = _Pending(self, target, keep_alive)
                self.pending.append(entry)
                keyed.deliver(key, KIND_HTTP, request, entry)
                return
            reply = runs.run(service, KIND_HTTP, request, None, False)
            if not isinstance(reply, bytes):
                entry = _Pending(self, target, keep_alive)
                if reply is None:  # earlier work is queued or running: queue behind it, answer when it is done
                    runs.queue_http(service, request, entry)
                else:  # still running after its first slice: answered when the scheduler has run it to its end
                    reply.done = entry
                self.pending.append(entry)
                return
        except MicromonoError as exc:
            self._send(self.response_to(target, None, exc, keep_alive), keep_alive)
            return
        # The fast path, inline: nothing queued before it, keep-alive, and the same status and headers as this
        # service's last reply (length-prefixed, so equal bytes mean equal headers): its response head is cached.
        transport = self.transport
        if keep_alive and not self.pending and transport is not None:
            # The body, if the reply starts with the last one's status and headers (removeprefix returns the reply
            # itself when it does not, or when nothing is cached: one call instead of two slices).
            out: bytes | None = reply.removeprefix(target.reply_seen)
            if out is reply:
                try:
                    start = target.remember_reply(reply)
                except BadReply as exc:
                    self._send(self._bad_reply(exc, target, keep_alive), keep_alive)
                    return
                out = reply[start:] if start else None
            if out is not None:
                n = len(out)
                try:
                    length = CONTENT_LENGTHS[n]
                except KeyError:
                    length = content_length(n)
                ingress.status_counts[target.reply_status] += 1
                transport.write(b"".join((target.reply_head, ingress.date, length, out)))
                if self.closing:
                    self.close_when_idle()
                return
        self._send(self.response_to(target, reply, None, keep_alive), keep_alive)

    def response_to(
        self, target: RouteTarget | None, reply: bytes | None, error: BaseException | None, keep_alive: bool
    ) -> bytes:
        """The response to a request's outcome, counted by status: the guest's reply, or the error's response."""
        ingress = self.ingress
        if error is None:
            assert reply is not None and target is not None
            try:
                if keep_alive:  # the route's cached head, as `_serve`'s fast path uses it (an actor's replies)
                    out: bytes | None = reply.removeprefix(target.reply_seen)
                    if out is reply:
                        start = target.remember_reply(reply)
                        out = reply[start:] if start else None
                    if out is not None:
                        n = len(out)
                        length = CONTENT_LENGTHS.get(n)
                        if length is None:
                            length = content_length(n)
                        ingress.status_counts[target.reply_status] += 1
                        return b"".join((target.reply_head, ingress.date, length, out))
                status, data = guest_response(reply, ingress.date, keep_alive)
            except BadReply as exc:
                return self._bad_reply(exc, target, keep_alive)
        else:
            status, data = error_response(error, target.name if target is not None else None, ingress.date, keep_alive)
        ingress.status_counts[status] += 1
        return data

    def _bad_reply(self, exc: BadReply, target: RouteTarget, keep_alive: bool) -> bytes:
        """A reply that is not the ABI's HTTP encoding: an ABI violation of the service's, counted as one."""
        error = AbiViolation(target.name, f"service {target.name!r} returned a malformed HTTP reply: {exc}")
        self.ingress.runs.reply_broke_abi(target.slot, error)
        return self.response_to(target, None, error, keep_alive)

    # --- writing ------------------------------------------------------------------------------------------------

    def _send(self, data: bytes, keep_alive: bool) -> None:
        """Write a response now, or after the queued responses before it."""
        if not self.pending:
            self._write(data, keep_alive)
            return
        entry = _Pending(self, None, keep_alive)
        entry.data = data
        self.pending.append(entry)
        self.flush()

    def flush(self) -> None:
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

    def _respond(self, status: int, kind: str, message: str, keep_alive: bool) -> None:
        """Answer a request refused before it reached a service (JSON error body), counted by status."""
        ingress = self.ingress
        ingress.status_counts[status] += 1
        self._send(refusal(status, kind, message, None, ingress.date, keep_alive), keep_alive)

    def _reject(self, status: int, kind: str, message: str) -> None:
        """Answer a request we will not parse further, then close the connection."""
        if self.rejected:
            return
        self.rejected = True
        self._respond(status, kind, message, False)

    def _too_large(self) -> None:
        self._reject(
            413,
            "too_large",
            f"request body is larger than max_request_bytes={self.ingress.max_request_bytes}",
        )

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
