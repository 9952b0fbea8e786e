"""WebSocket connections to actors (docs/stream.md): the socket side, on the `websockets` package's sans-I/O server
protocol (handshake, framing, masking, UTF-8 checks, the close handshake, answering pings), inside the existing
listener: `HttpProtocol` hands a connection over here when an upgrade request reaches an actor route.

Owns `WebSocketConnection` (one connection: the handshake, the client's messages to the actor as
`MM_KIND_WS_MESSAGE`, frames out with the slow-client bound, pings, the close) and `WebSockets` (the daemon's
connections: ids, the daemon-wide bound, pinging silent clients and closing the unresponsive, closing them all at
shutdown). The actor's side of a connection, its stream of numbered messages and the ring clients resume from, is
`actors.stream.Stream`; this module must not run guests (it gives messages to the `KeyedService`) or decide what an
actor publishes.

Each connection counts what it does (opened, messages and bytes both ways, its close code, a refused handshake)
into its actor service's `actors.stream.StreamCounters`, which it holds from the start: one attribute increment per
count, read by the metrics at scrape time.
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

__all__ = ["WebSocketConnection", "WebSockets", "CLOSE_IDLE", "CLOSE_SLOW", "WS_TEXT", "WS_BINARY"]

log = structlog.get_logger(__name__)

WS_TEXT: Final = 1
WS_BINARY: Final = 2
#: The close codes of docs/stream.md that are micromono's own.
CLOSE_IDLE: Final = 4000
CLOSE_SLOW: Final = 4008
#: How long a connection closed for being slow may take to drain its close frame before it is aborted (seconds).
SLOW_CLOSE_GRACE: Final = 1.0
#: How often silent connections are looked for (seconds, at most): pinged, or closed once their ping is unanswered.
IDLE_SWEEP: Final = 5.0

_OPEN_HEAD: Final = struct.Struct("<QII")  # conn, path_len, query_len
_MESSAGE_HEAD: Final = struct.Struct("<QI")  # conn, type (or close code)


class WebSockets:
    """The daemon's WebSocket connections: their ids, the daemon-wide bound and idleness.

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
        # One publish sends one frame object to every connection of an actor: it is encoded once (`encode`).
        self._last_frame: bytes | str | None = None
        self._last_wire = b""
        # Connections with frames waiting for the end of this loop iteration (`WebSocketConnection._write`).
        self._corked: list[WebSocketConnection] = []
        self._uncork_handle: asyncio.Handle | None = None

    def __repr__(self) -> str:
        return f"<WebSockets [open: {len(self.connections)} / {self.max_connections}]>"

    def next_id(self) -> int:
        return next(self._ids)

    def encode(self, frame: bytes | str) -> bytes:
        """The bytes of a server frame carrying `frame` (`str`: text), by the library's own framing. The frame an
        actor publishes reaches every connection as the same object, so the last one is kept: a publish to N
        connections is encoded once, not N times. (No extension is negotiated, so a server frame's bytes do not
        depend on the connection.)"""
        if frame is not self._last_frame:
            if isinstance(frame, str):
                wire = Frame(Opcode.TEXT, frame.encode()).serialize(mask=False)
            else:
                wire = Frame(Opcode.BINARY, frame).serialize(mask=False)
            self._last_wire = wire
            self._last_frame = frame
        return self._last_wire

    def cork(self, connection: WebSocketConnection) -> None:
        """`connection` has frames waiting: write them (one write per connection) once this loop iteration's
        callbacks are done, so that the messages released together (one group commit's) leave together."""
        self._corked.append(connection)
        if self._uncork_handle is None:
            self._uncork_handle = asyncio.get_running_loop().call_soon(self._uncork)

    def _uncork(self) -> None:
        self._uncork_handle = None
        corked = self._corked
        self._corked = []
        for connection in corked:
            connection.write_pending()

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
        self.counters = keyed.stream_counters
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
        self._pending: list[bytes] | None = None  # frames to write at the end of this loop iteration

    def __repr__(self) -> str:
        return f"<WebSocketConnection {self.conn_id} {self.keyed.name}/{self.key}>"

    # --- asyncio.Protocol ---------------------------------------------------------------------------------------

    def start(self, data: bytes) -> None:
        self.counters.bytes_in += len(data)
        self.protocol.receive_data(data)
        self._process()

    def data_received(self, data: bytes) -> None:
        self.last_seen = self.hub.clock()
        self.counters.bytes_in += len(data)
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
            self.write_pending()
            self.transport.close()

    def _handshake(self, request: Request) -> None:
        hub = self.hub
        keyed = self.keyed
        response = self.protocol.accept(request)
        refusal = None if response.status_code == 101 else "bad_request"
        if refusal is None:
            stream = keyed.stream(self.key)
            if len(hub.connections) >= hub.max_connections:
                refusal = "daemon_limit"
                response = self.protocol.reject(503, f"this daemon has {hub.max_connections} WebSockets already\n")
            elif len(stream.connections) >= keyed.spec.ws_max_connections:
                refusal = "actor_limit"
                response = self.protocol.reject(
                    503, f"actor {keyed.name}/{self.key} has {keyed.spec.ws_max_connections} WebSockets already\n"
                )
        self.protocol.send_response(response)
        # The protocol's parser keeps the request for the connection's life: its headers are most of an idle
        # connection's memory, and nothing reads them again.
        request.headers.clear()
        self._flush()  # the response first: frames sent from here on (a resume) go after it
        if refusal is not None:
            self.counters.refused[refusal] += 1
            self.closing = True
            self.write_pending()
            if self.transport is not None:
                self.transport.close()
            return
        self.conn_id = hub.next_id()
        hub.connections[self.conn_id] = self
        self.counters.open += 1
        self.counters.opened += 1
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
        self.counters.messages_in += 1
        payload = _MESSAGE_HEAD.pack(self.conn_id, WS_TEXT if text else WS_BINARY) + data
        self.keyed.deliver(self.key, KIND_WS_MESSAGE, payload, self._delivered)

    def _delivered(self, reply: bytes | None, error: BaseException | None) -> None:
        if error is not None and not isinstance(error, GuestAppError):
            log.warning("ws.message.failed", service=self.keyed.name, key=self.key, error=str(error))

    # --- out ----------------------------------------------------------------------------------------------------

    def send(self, frame: bytes | str) -> None:
        """Send one frame (`str`: text), written at the end of this loop iteration with whatever else is sent to
        this connection meanwhile; a client that does not read closes with 4008 once `ws_max_buffered` bytes wait
        for it."""
        if self.transport is None or self.closing or self.protocol.state is not State.OPEN:
            return
        self.counters.messages_out += 1
        self._write(self.hub.encode(frame))

    def close(self, code: int, reason: str) -> None:
        """Close with `code` and `reason` (the close handshake; the transport closes once it is done)."""
        if self.closing or self.transport is None:
            return
        self.closing = True
        if self.protocol.state is State.OPEN:
            self.protocol.send_close(code, reason)
        self._flush()
        self.write_pending()  # now: the frames before it, then the close frame
        self.counters.count_close(code)

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
        """Write what the protocol has to send (the handshake's response, pongs, the close frame), after whatever
        frames wait already."""
        transport = self.transport
        if transport is None:
            return
        for data in self.protocol.data_to_send():
            if data:
                self._write(data)
            else:
                self.write_pending()
                if transport.can_write_eof():
                    transport.write_eof()

    def _write(self, data: bytes) -> None:
        pending = self._pending
        if pending is None:
            self._pending = [data]
            self.hub.cork(self)
        else:
            pending.append(data)

    def write_pending(self) -> None:
        """Write the frames waiting for this connection, in one write, and close it with 4008 if more than
        `ws_max_buffered` bytes now wait in the transport for the client to read."""
        pending = self._pending
        transport = self.transport
        if pending is None or transport is None:
            self._pending = None
            return
        self._pending = None
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        self.counters.bytes_out += len(data)
        transport.write(data)
        if transport.get_write_buffer_size() > self.keyed.spec.ws_max_buffered and not self.closing:
            self.close(CLOSE_SLOW, "too slow: resume with since")
            loop = asyncio.get_running_loop()
            loop.call_later(SLOW_CLOSE_GRACE, self.abort)

    def _ended(self, code: int) -> None:
        """The connection is over (closed or lost): tell the actor, forget it."""
        hub = self.hub
        conn_id = self.conn_id
        if conn_id == 0 or hub.connections.pop(conn_id, None) is None:
            return
        self.counters.open -= 1
        if not self.closing:
            self.counters.count_close(code)
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
