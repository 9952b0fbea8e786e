"""WebSocket connections to actors (docs/stream.md): the socket side, on the `websockets` package's sans-I/O server
protocol (handshake, framing, masking, UTF-8 checks, the close handshake, answering pings), inside the existing
listener: `HttpProtocol` hands a connection over here when an upgrade request reaches an actor route.

Owns `WebSocketConnection` (one connection: the handshake, the client's messages to the actor as
`MM_KIND_WS_MESSAGE`, frames out with the slow-client bound, pings, the close) and `WebSockets` (the daemon's
connections: ids, the daemon-wide bound, pinging silent clients and closing the unresponsive, counters, closing them
all at shutdown). The actor's side of a connection, its stream of numbered messages and the ring clients resume
from, is `actors.stream.Stream`; this module must not run guests (it gives messages to the `KeyedService`) or decide
what an actor publishes.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import struct
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final

import structlog
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from micromono.abi import KIND_WS_CLOSE, KIND_WS_MESSAGE, KIND_WS_OPEN
from micromono.config.spec import DEFAULT_WS_IDLE_TIMEOUT
from micromono.errors import GuestAppError

if TYPE_CHECKING:
    from micromono.actors.keyed import KeyedService
    from micromono.actors.stream import Stream

__all__ = ["WebSocketConnection", "WebSockets", "CLOSE_IDLE", "CLOSE_SLOW", "CLOSE_TOO_MANY", "WS_TEXT", "WS_BINARY"]

log = structlog.get_logger(__name__)

WS_TEXT: Final = 1
WS_BINARY: Final = 2
#: The close codes of docs/stream.md that are micromono's own.
CLOSE_IDLE: Final = 4000
CLOSE_SLOW: Final = 4008
CLOSE_TOO_MANY: Final = 4029
#: How long a connection closed for being slow may take to drain its close frame before it is aborted (seconds).
SLOW_CLOSE_GRACE: Final = 1.0
#: How often silent connections are looked for (seconds, at most): pinged, or closed once their ping is unanswered.
IDLE_SWEEP: Final = 5.0

_OPEN_HEAD: Final = struct.Struct("<QII")  # conn, path_len, query_len
_MESSAGE_HEAD: Final = struct.Struct("<QI")  # conn, type (or close code)


class WebSockets:
    """The daemon's WebSocket connections: their ids, the daemon-wide bound, idleness and counters.

    Args:
        max_connections: `[daemon] ws_max_connections`.
        services: the actor services by name (the router's live `keyed`), for the smallest `ws_idle_timeout`.
    """

    def __init__(self, max_connections: int, services: Mapping[str, KeyedService] | None = None) -> None:
        self.max_connections = max_connections
        self.connections: dict[int, WebSocketConnection] = {}
        self.clock: Callable[[], float] = time.monotonic  # when a client was last heard from (tests give a fake)
        self._services: Mapping[str, KeyedService] = {} if services is None else services
        self._ids = itertools.count(1)
        self._sweeper: asyncio.TimerHandle | None = None
        # Counters, read at scrape time.
        self.opened = 0
        self.messages_in = 0
        self.messages_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.closes: dict[int, int] = {}  # by close code

    def __repr__(self) -> str:
        return f"<WebSockets [open: {len(self.connections)} / {self.max_connections}]>"

    def next_id(self) -> int:
        return next(self._ids)

    def count_close(self, code: int) -> None:
        self.closes[code] = self.closes.get(code, 0) + 1

    def start(self) -> None:
        """Look for silent connections every IDLE_SWEEP seconds, or every quarter of the smallest `ws_idle_timeout`
        when that is shorter, so that no ping or close comes later than a quarter of its timeout."""
        interval = min(IDLE_SWEEP, self._smallest_idle_timeout() / 4)
        self._sweeper = asyncio.get_running_loop().call_later(interval, self._sweep)

    def _sweep(self) -> None:
        try:
            self.close_idle(self.clock())
        finally:
            self.start()

    def _smallest_idle_timeout(self) -> float:
        # The actor services of now; a connection of a service since removed keeps its own timeout, and at worst is
        # looked at a little later than it asks.
        return min((keyed.spec.ws_idle_timeout for keyed in self._services.values()), default=DEFAULT_WS_IDLE_TIMEOUT)

    def close_idle(self, now: float) -> int:
        """Ping each connection silent for half its service's `ws_idle_timeout` (once per silence: any bytes from
        the client, a pong included, end it), and close with 4000 those whose ping then went unanswered for the
        other half; returns how many were closed.

        Args:
            now: the time on `clock` (the sweep passes `clock()`; tests move it on).
        """
        floor = self._smallest_idle_timeout() / 2
        to_ping: list[WebSocketConnection] = []
        idle: list[WebSocketConnection] = []
        for connection in self.connections.values():
            last_seen = connection.last_seen
            if now - last_seen < floor:
                continue  # heard from lately: most connections, decided without looking at their service
            half = connection.keyed.spec.ws_idle_timeout / 2
            if connection.pinged_at <= last_seen:  # not pinged since it was last heard from
                if now - last_seen >= half:
                    to_ping.append(connection)
            elif now - connection.pinged_at >= half:
                idle.append(connection)
        # Pinging and closing after the walk: neither may change the connections while they are walked.
        for connection in to_ping:
            connection.ping(now)
        for connection in idle:
            connection.close(CLOSE_IDLE, "unresponsive: a ping went unanswered")
        return len(idle)

    def close_all(self) -> None:
        """The daemon is stopping: close every connection with 1001."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for connection in list(self.connections.values()):
            connection.close(CloseCode.GOING_AWAY, "the daemon is stopping")


class WebSocketConnection(asyncio.Protocol):
    """One client connected to one actor.

    Made by the HTTP protocol for an upgrade request on an actor route; `start(data)` feeds it the request's bytes
    (and whatever followed them) and the transport is then this object's.
    """

    def __init__(
        self, hub: WebSockets, keyed: KeyedService, key: str, path: bytes, query: bytes, transport: asyncio.Transport
    ) -> None:
        self.hub = hub
        self.keyed = keyed
        self.key = key
        self.path = path
        self.query = query
        self.transport: asyncio.Transport | None = transport
        spec = keyed.spec
        self.protocol = ServerProtocol(max_size=spec.ws_max_message)
        self.conn_id = 0  # given when the handshake succeeds
        self.tags: set[bytes] = set()
        self.stream: Stream | None = None
        self.last_seen = hub.clock()  # when the client was last heard from: any bytes, a pong included
        self.pinged_at = -math.inf  # when the idle sweep last pinged it
        self.closing = False
        self._fragments: list[bytes] = []
        self._fragment_text = False

    def __repr__(self) -> str:
        return f"<WebSocketConnection {self.conn_id} {self.keyed.name}/{self.key}>"

    # --- asyncio.Protocol ---------------------------------------------------------------------------------------

    def start(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        self._process()

    def data_received(self, data: bytes) -> None:
        self.last_seen = self.hub.clock()
        self.hub.bytes_in += len(data)
        self.protocol.receive_data(data)
        self._process()

    def eof_received(self) -> bool | None:
        self.protocol.receive_eof()
        self._process()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._ended(CloseCode.ABNORMAL_CLOSURE if self.protocol.close_code is None else self.protocol.close_code)

    # --- in -----------------------------------------------------------------------------------------------------

    def _process(self) -> None:
        for event in self.protocol.events_received():
            if isinstance(event, Request):
                self._handshake(event)
            elif isinstance(event, Frame):
                self._frame(event)
        self._flush()
        if self.protocol.state is State.CLOSED and self.transport is not None:
            self.transport.close()

    def _handshake(self, request: Request) -> None:
        hub = self.hub
        keyed = self.keyed
        response = self.protocol.accept(request)
        if response.status_code == 101:
            stream = keyed.stream(self.key)
            if len(hub.connections) >= hub.max_connections:
                response = self.protocol.reject(503, f"this daemon has {hub.max_connections} WebSockets already\n")
            elif len(stream.connections) >= keyed.spec.ws_max_connections:
                response = self.protocol.reject(
                    503, f"actor {keyed.name}/{self.key} has {keyed.spec.ws_max_connections} WebSockets already\n"
                )
        self.protocol.send_response(response)
        if response.status_code != 101:
            self.closing = True
            self._flush()
            if self.transport is not None:
                self.transport.close()
            return
        self.conn_id = hub.next_id()
        hub.connections[self.conn_id] = self
        hub.opened += 1
        self.stream = keyed.stream(self.key)
        since = _since(self.query)
        self.stream.attach(self, since, time.monotonic())
        query = b"&".join(part for part in self.query.split(b"&") if not part.startswith(b"since="))
        payload = _OPEN_HEAD.pack(self.conn_id, len(self.path), len(query)) + self.path + query
        keyed.deliver(self.key, KIND_WS_OPEN, payload, self._opened)

    def _opened(self, reply: bytes | None, error: BaseException | None) -> None:
        if error is None:
            return
        if isinstance(error, GuestAppError):
            self.close(CloseCode.POLICY_VIOLATION, "refused by the actor")
        else:
            log.warning("ws.open.failed", service=self.keyed.name, key=self.key, error=str(error))
            self.close(CloseCode.INTERNAL_ERROR, "the actor could not take the connection")

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if frame.fin:
                self._message(bytes(frame.data), opcode is Opcode.TEXT)
            else:
                self._fragments = [bytes(frame.data)]
                self._fragment_text = opcode is Opcode.TEXT
        elif opcode is Opcode.CONT:
            self._fragments.append(bytes(frame.data))
            if frame.fin:
                data = b"".join(self._fragments)
                self._fragments = []
                self._message(data, self._fragment_text)
        # PING is answered by the protocol itself, PONG needs nothing, CLOSE ends in _ended.

    def _message(self, data: bytes, text: bool) -> None:
        if self.conn_id == 0 or self.closing:
            return
        if text:
            try:
                data.decode("utf-8")  # the sans-I/O protocol leaves text as bytes, unchecked
            except UnicodeDecodeError:
                self.close(CloseCode.INVALID_DATA, "a text message must be UTF-8")
                return
        self.hub.messages_in += 1
        payload = _MESSAGE_HEAD.pack(self.conn_id, WS_TEXT if text else WS_BINARY) + data
        self.keyed.deliver(self.key, KIND_WS_MESSAGE, payload, self._delivered)

    def _delivered(self, reply: bytes | None, error: BaseException | None) -> None:
        if error is not None and not isinstance(error, GuestAppError):
            log.warning("ws.message.failed", service=self.keyed.name, key=self.key, error=str(error))

    # --- out ----------------------------------------------------------------------------------------------------

    def send(self, frame: bytes | str) -> None:
        """Send one frame (`str`: text); a client that does not read closes with 4008 once `ws_max_buffered` bytes
        wait for it."""
        transport = self.transport
        if transport is None or self.closing or self.protocol.state is not State.OPEN:
            return
        if isinstance(frame, str):
            self.protocol.send_text(frame.encode())
        else:
            self.protocol.send_binary(frame)
        self.hub.messages_out += 1
        self._flush()
        if transport.get_write_buffer_size() > self.keyed.spec.ws_max_buffered:
            self.close(CLOSE_SLOW, "too slow: resume with since")
            loop = asyncio.get_running_loop()
            loop.call_later(SLOW_CLOSE_GRACE, self.abort)

    def close(self, code: int, reason: str) -> None:
        """Close with `code` and `reason` (the close handshake; the transport closes once it is done)."""
        if self.closing or self.transport is None:
            return
        self.closing = True
        if self.protocol.state is State.OPEN:
            self.protocol.send_close(code, reason)
        self._flush()
        self.hub.count_close(code)

    def ping(self, now: float) -> None:
        """Ask the client for a pong (the idle sweep does, after half its `ws_idle_timeout` of silence); its answer,
        as any bytes from it, moves `last_seen`. `now` is on the hub's clock."""
        self.pinged_at = now
        if self.transport is None or self.closing or self.protocol.state is not State.OPEN:
            return
        self.protocol.send_ping(b"")
        self._flush()

    def abort(self) -> None:
        """Drop the connection at once (no close handshake)."""
        if self.transport is not None:
            self.transport.abort()

    def _flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        for data in self.protocol.data_to_send():
            if data:
                self.hub.bytes_out += len(data)
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()

    def _ended(self, code: int) -> None:
        """The connection is over (closed or lost): tell the actor, forget it."""
        hub = self.hub
        conn_id = self.conn_id
        if conn_id == 0 or hub.connections.pop(conn_id, None) is None:
            return
        if not self.closing:
            hub.count_close(code)
        self.closing = True
        if self.stream is not None:
            self.stream.detach(conn_id, time.monotonic())
        reason = (self.protocol.close_reason or "").encode()
        payload = _MESSAGE_HEAD.pack(conn_id, code) + reason
        self.keyed.deliver(self.key, KIND_WS_CLOSE, payload, None)


def _since(query: bytes) -> int | None:
    """The `since` of a connection's query: a non-negative integer, or None."""
    for value in urllib.parse.parse_qs(query.decode("latin-1")).get("since", ()):
        if value.isdigit():
            return int(value)
    return None
