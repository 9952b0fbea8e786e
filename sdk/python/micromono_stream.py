"""micromono_stream: an asyncio client of micromono's resumable WebSocket stream (docs/stream.md).

Owns one logical subscription to one actor's stream: the WebSocket connection under it (on the `websockets`
package), the decoding of the server's three kinds of frames into events (`Published`, `Direct`, `Reset`; any
other frame is reported and skipped), the last sequence number seen, and resuming from it (`?since=`) on a new
connection, by hand (`reconnect()`) or, when asked, automatically with exponential backoff and full jitter. It must
not queue what the application sends across connections (a frame sent while disconnected raises: only what the
actor publishes is numbered and resumable), talk to a proxy unless told to, or retry a refusal that retrying cannot
fix (a bad key, no route, close code 1008).

One file, no dependency but `websockets`: copy it, or put `sdk/python` on `sys.path` (the benches and tests do).

    async with StreamClient("ws://127.0.0.1:8080/chat/lobby", auto_reconnect=True) as stream:
        await stream.send("hello")
        async for event in stream:
            match event:
                case Published(seq, data): ...   # numbered: resumed after a reconnect, in order
                case Direct(data): ...           # the actor wrote to this connection only (ws_send)
                case Reset(seq): ...             # messages were lost to this client: reload state, go on from seq
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from dataclasses import dataclass
from typing import Final, Self, TypeAlias
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

__all__ = [
    "Direct",
    "Event",
    "Published",
    "Reset",
    "StreamClient",
    "StreamClosed",
    "StreamConnectError",
    "StreamError",
    "StreamProtocolError",
    "StreamRefused",
    "parse_frame",
]

#: Close codes after which docs/stream.md says to reconnect (with `since`, or later with backoff): the daemon is
#: stopping (1001), internal error (1011), idle (4000), too slow (4008), too many connections (4029); plus the
#: connection lost without a close frame (1006) and RFC 6455's service restart / try again later (1012, 1013).
RETRYABLE_CLOSE_CODES: Final = frozenset({1001, 1006, 1011, 1012, 1013, 4000, 4008, 4029})
#: HTTP refusals before the handshake that may pass on their own (503: `ws_max_connections` reached).
RETRYABLE_STATUSES: Final = frozenset({502, 503, 504})
#: A binary published frame starts with the sequence number, 8 bytes little-endian.
_SEQ_BYTES: Final = 8
#: How much of a frame that is not docs/stream.md's an error message shows.
_SHOWN_CHARS: Final = 80
_NORMAL_CLOSURE: Final = 1000
_ABNORMAL_CLOSURE: Final = 1006  # RFC 6455: no close frame was received (never sent on the wire)

log = logging.getLogger("micromono_stream")


# --- events -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Published:
    """A message the actor published to its stream: numbered, kept in the daemon's ring, resumed after a reconnect.

    `data` is `str` for a text message and `bytes` for a binary one (its 8-byte sequence prefix removed).
    """

    seq: int
    data: str | bytes


@dataclass(frozen=True, slots=True)
class Direct:
    """A message the actor sent to this connection only (`ws_send`): not numbered, not resumed.

    `data` is the actor's message as it sent it: `str` for text (taken out of its `{"data": ...}` frame), `bytes`
    for binary (its 8-byte sequence 0 removed).
    """

    data: str | bytes


@dataclass(frozen=True, slots=True)
class Reset:
    """The messages after the client's `since` are gone (older than the ring, or the daemon restarted): reload the
    state you need, then go on from `seq`, the actor's last sequence number."""

    seq: int


Event: TypeAlias = Published | Direct | Reset


def parse_frame(message: str | bytes) -> Event:
    """The event one server frame carries (docs/stream.md, *What the server sends*).

    A text frame is a JSON object of exactly one of three shapes: `{"seq": <int>, "data": <string>}` is `Published`,
    `{"reset": true, "seq": <int>}` is `Reset`, `{"data": <string>}` (no seq) is `Direct`. A binary frame starts with
    8 bytes, a sequence number, little-endian: 0 makes it `Direct` (no published message has 0), any other number
    `Published`; the rest is the message.

    Raises:
        StreamProtocolError: the frame is none of these (a server that does not speak docs/stream.md, or an older
            daemon whose direct messages were not wrapped).
    """
    if isinstance(message, bytes):
        if len(message) < _SEQ_BYTES:
            why = f"a binary frame of {len(message)} bytes, shorter than a sequence number"
            raise StreamProtocolError(message, why)
        number = int.from_bytes(message[:_SEQ_BYTES], "little")
        return Published(number, message[_SEQ_BYTES:]) if number else Direct(message[_SEQ_BYTES:])
    frame = None
    if message[:1] == "{":
        with contextlib.suppress(ValueError):
            frame = json.loads(message)
    if not isinstance(frame, dict):
        raise StreamProtocolError(message, "a text frame that is not a JSON object")
    seq = frame.get("seq")
    data = frame.get("data")
    if len(frame) == 2 and type(seq) is int and seq >= 0:  # type(): not a bool, not a float
        if isinstance(data, str):
            return Published(seq, data)
        if frame.get("reset") is True:
            return Reset(seq)
    elif len(frame) == 1 and isinstance(data, str):
        return Direct(data)
    raise StreamProtocolError(message, "a JSON object of none of the three shapes")


# --- errors -----------------------------------------------------------------------------------------------------


class StreamError(Exception):
    """The stream cannot be used: see the subclasses. `retryable` says whether trying again later may succeed."""

    @property
    def retryable(self) -> bool:
        return False


class StreamConnectError(StreamError):
    """No WebSocket connection could be made: the TCP connection failed or timed out, or the handshake was not a
    WebSocket one. Retryable: the daemon may be starting or restarting."""

    @property
    def retryable(self) -> bool:
        return True


class StreamRefused(StreamError):
    """The server answered the handshake with an HTTP status instead of switching protocols: 400 a bad key, 403 a
    service without WebSockets, 404 no route, 503 too many connections (only 502-504 are retryable)."""

    def __init__(self, url: str, status: int, body: bytes) -> None:
        super().__init__(f"{url}: the server refused the WebSocket connection with HTTP {status}")
        self.url = url
        self.status = status
        self.body = body

    @property
    def retryable(self) -> bool:
        return self.status in RETRYABLE_STATUSES


class StreamClosed(StreamError):
    """The connection is closed: `code` and `reason` are the close frame's (1006 when the connection was lost without
    one). docs/stream.md's table says what each code asks of the client; `retryable` follows it."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"the stream is closed: {code}" + (f" {reason}" if reason else ""))
        self.code = code
        self.reason = reason

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE_CLOSE_CODES


class StreamProtocolError(StreamError):
    """A frame from the server that is none of docs/stream.md's: `frame` is the frame as received. `recv()` reports it
    (a warning on the `micromono_stream` logger, and `StreamClient.protocol_errors`) and skips it; `parse_frame`
    raises it."""

    def __init__(self, frame: str | bytes, why: str) -> None:
        more = "..." if len(frame) > _SHOWN_CHARS else ""
        super().__init__(f"not a frame of docs/stream.md ({why}): {frame[:_SHOWN_CHARS]!r}{more}")
        self.frame = frame


def _closed(exc: ConnectionClosed) -> StreamClosed:
    """The StreamClosed of a websockets ConnectionClosed: the close frame received, else the one sent, else 1006."""
    frame = exc.rcvd or exc.sent
    return StreamClosed(frame.code, frame.reason) if frame is not None else StreamClosed(_ABNORMAL_CLOSURE)


# --- the client -------------------------------------------------------------------------------------------------


class StreamClient:
    """One client of an actor's stream, resuming from the last sequence number it saw.

    Args:
        url: the actor's WebSocket URL, `ws://host:port/route/<key>[?query]` (the query goes to the actor; any
            `since` in it is replaced by the client's own).
        since: the last sequence number already seen (None: live messages only on the first connection).
        auto_reconnect: when the connection is lost or closed with a code that asks for it (`RETRYABLE_CLOSE_CODES`),
            iterating reconnects by itself, with `since`, waiting a random time up to `backoff_initial` *
            2**attempt seconds (at most `backoff_max`) before each attempt; it gives up after `max_attempts` failed
            attempts in a row (None: never) and raises the last error. Off: the error is raised at once.
        open_timeout: seconds for the TCP connection and the handshake together.
        ping_interval: seconds between the client's pings (None: none). The daemon answers pings; it also pings a
            connection silent for half its `ws_idle_timeout` (600 s by default) and closes it when the whole
            timeout passes unanswered. This client answers the daemon's pings by itself, so it need not ping.
        max_size: the largest message accepted from the server, in bytes (None: no limit).
        max_queue: messages received but not yet read before the client stops reading the socket (backpressure).
        proxy: an HTTP or SOCKS proxy URL (None: connect directly; the environment's proxy settings are ignored).
        rng: the random source of the jitter (tests pass a seeded one).

    Use one task to iterate (or call `recv()`) and any task to `send()`. Iteration drives automatic reconnection, so
    a client that only sends sees the error and calls `reconnect()` itself.
    """

    def __init__(
        self,
        url: str,
        since: int | None = None,
        *,
        auto_reconnect: bool = False,
        backoff_initial: float = 0.1,
        backoff_max: float = 10.0,
        max_attempts: int | None = None,
        open_timeout: float = 10.0,
        ping_interval: float | None = 20.0,
        max_size: int | None = 1 << 20,
        max_queue: int = 16,
        proxy: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"url must be ws://host[:port]/path or wss://..., got {url!r}")
        if since is not None and since < 0:
            raise ValueError("since must be >= 0")
        if backoff_initial <= 0 or backoff_max < backoff_initial:
            raise ValueError("backoff_initial must be > 0 and backoff_max >= backoff_initial")
        if max_attempts is not None and max_attempts < 1:
            raise ValueError("max_attempts must be >= 1 or None")
        self._url = url
        self._last_seq = since
        self._auto_reconnect = auto_reconnect
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._max_attempts = max_attempts
        self._open_timeout = open_timeout
        self._ping_interval = ping_interval
        self._max_size = max_size
        self._max_queue = max_queue
        self._proxy = proxy
        self._rng = rng or random.Random()
        self._ws: ClientConnection | None = None
        self._closed_by_client = False
        self._reconnects = 0
        self._protocol_errors = 0

    # -- state --

    @property
    def url(self) -> str:
        """The URL given, without the `since` the client adds."""
        return self._url

    @property
    def last_seq(self) -> int | None:
        """The last sequence number seen (from a `Published` or a `Reset`), or the `since` given; None if neither."""
        return self._last_seq

    @property
    def connected(self) -> bool:
        """Whether a connection is open (it may still turn out to be lost at the next read or write)."""
        return self._ws is not None and self._ws.close_code is None and not self._closed_by_client

    @property
    def reconnects(self) -> int:
        """Connections opened after the first, by `reconnect()` or automatically."""
        return self._reconnects

    @property
    def protocol_errors(self) -> int:
        """Frames skipped because they were none of docs/stream.md's (each logged as a warning)."""
        return self._protocol_errors

    def __repr__(self) -> str:
        state = "open" if self.connected else ("closed" if self._closed_by_client or self._ws else "not connected")
        auto = " | auto-reconnect" if self._auto_reconnect else ""
        counts = f"last seq: {self._last_seq} | reconnects: {self._reconnects}"
        return f"<StreamClient {self._url} [{state} | {counts}{auto}]>"

    # -- connecting --

    async def connect(self) -> None:
        """Open the connection (one attempt), resuming after `last_seq` if there is one.

        Raises:
            StreamRefused: the server answered with an HTTP status (400, 403, 404, 503).
            StreamConnectError: no connection, a timeout, or a handshake that was not a WebSocket one.
        """
        if self.connected:
            raise StreamError("already connected: use reconnect() to open a new connection")
        self._closed_by_client = False
        await self._open()

    async def reconnect(self) -> None:
        """Close the current connection, if any (normal closure), and open a new one with `since` = `last_seq`: the
        server first sends every message published after it that its ring still holds, or one `Reset`. Works too
        after `close()` / `aclose()`. One attempt; raises as `connect()`."""
        await self._drop(_NORMAL_CLOSURE)
        self._closed_by_client = False
        await self._open()
        self._reconnects += 1

    def url_with_since(self) -> str:
        """The URL the next connection uses: the given one, with `since=<last_seq>` in its query if there is one."""
        parts = urlsplit(self._url)
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "since"]
        if self._last_seq is not None:
            query.append(("since", str(self._last_seq)))
        return urlunsplit(parts._replace(query=urlencode(query)))

    async def _open(self) -> None:
        url = self.url_with_since()
        try:
            # No compression: the daemon negotiates no extension (docs/stream.md), so offering one only costs bytes.
            self._ws = await connect(
                url,
                compression=None,
                proxy=self._proxy,
                open_timeout=self._open_timeout,
                ping_interval=self._ping_interval,
                max_size=self._max_size,
                max_queue=self._max_queue,
            )
        except InvalidStatus as exc:
            response = exc.response
            raise StreamRefused(url, response.status_code, bytes(response.body or b"")) from exc
        except InvalidURI as exc:
            raise ValueError(f"bad stream URL {url!r}: {exc}") from exc
        except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
            # ConnectionClosed: the server closed the TCP connection before it answered the handshake.
            raise StreamConnectError(f"{url}: cannot connect: {exc!r}") from exc

    async def _reconnect_with_backoff(self, cause: StreamError) -> None:
        """Reconnect after `cause`, waiting before each attempt (full jitter: uniform in [0, the capped exponential
        delay]); raise the last error when it is not retryable or `max_attempts` failed in a row."""
        error = cause
        attempt = 0
        while error.retryable and not self._closed_by_client:
            if self._max_attempts is not None and attempt >= self._max_attempts:
                break
            cap = min(self._backoff_max, self._backoff_initial * 2**attempt)
            await asyncio.sleep(self._rng.uniform(0, cap))
            attempt += 1
            if self._closed_by_client:  # close() while waiting
                break
            try:
                await self._open()
            except StreamError as exc:
                error = exc
                continue
            self._reconnects += 1
            return
        raise error

    # -- reading and writing --

    async def recv(self) -> Event:
        """The next event. Updates `last_seq` from `Published` and `Reset`. A frame that is none of docs/stream.md's
        is skipped, logged as a warning and counted (`protocol_errors`).

        Raises:
            StreamClosed: the connection closed (code 1000: normally; after `close()` too) and is not reopened.
            StreamRefused, StreamConnectError: automatic reconnection failed for good.
            StreamError: `connect()` was never called.
        """
        while True:
            ws = self._ws
            if ws is None:
                raise StreamError("not connected: call connect() first")
            try:
                message = await ws.recv()
            except ConnectionClosed as exc:
                closed = _closed(exc)
                if self._closed_by_client or not (self._auto_reconnect and closed.retryable):
                    raise closed from exc
                await self._reconnect_with_backoff(closed)
                continue
            try:
                event = parse_frame(message)
            except StreamProtocolError as exc:
                # Reported and skipped, not raised: one frame the client cannot read must not end the stream.
                self._protocol_errors += 1
                log.warning("%s: skipped %s", self._url, exc)
                continue
            if not isinstance(event, Direct):
                self._last_seq = event.seq
            return event

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
        """The next event; the iteration ends when the connection closes normally (1000) or was closed by this
        client, and raises StreamClosed for any other close that is not reconnected."""
        try:
            return await self.recv()
        except StreamClosed as exc:
            if exc.code == _NORMAL_CLOSURE or self._closed_by_client:
                raise StopAsyncIteration from exc
            raise

    async def send(self, message: str | bytes) -> None:
        """Send one message to the actor: `str` as a text frame (the actor gets its UTF-8), `bytes` as a binary one.

        Nothing is queued while disconnected: the message is either written to the open connection or not sent.

        Raises:
            StreamClosed: the connection is closed (or was never opened: code 1006).
        """
        ws = self._ws
        if ws is None or self._closed_by_client:
            raise StreamClosed(_NORMAL_CLOSURE if self._closed_by_client else _ABNORMAL_CLOSURE, "not connected")
        try:
            await ws.send(message)
        except ConnectionClosed as exc:
            raise _closed(exc) from exc

    # -- closing --

    async def aclose(self, code: int = _NORMAL_CLOSURE, reason: str = "") -> None:
        """Close the connection politely (a close frame, then wait for the server's, bounded by websockets'
        close_timeout of 10 s) and stop reconnecting. Idempotent; `reconnect()` opens a new connection."""
        self._closed_by_client = True
        await self._drop(code, reason)

    def close(self) -> None:
        """Close at once, without a close frame (the server sees the TCP connection end: 1006), and stop
        reconnecting; for `finally` blocks and synchronous code. Idempotent. Prefer `aclose()`."""
        self._closed_by_client = True
        if self._ws is not None:
            self._ws.transport.close()

    async def _drop(self, code: int, reason: str = "") -> None:
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(ConnectionClosed, OSError):
                await ws.close(code, reason)

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
