"""The browser side of docs/stream.md in Debian's Chromium, driven by Playwright: the JavaScript client
(sdk/js/micromono-stream.js) and the chat page (examples/web/chat.html, served by examples/web.c).

Two kinds of server:
- `StandIn`, written here: a small WebSocket server (websockets' asyncio server) that speaks the frames, resuming
  and resets of docs/stream.md and that the test steers (close codes, dropped connections, refused handshakes, a
  restart). A test double for the client's own tests, not a model of the daemon.
- The real daemon, in process, with the example app's pieces: the room actor with `websocket = true` (its chat
  route `/chat/{key}`) and the web service. Those tests skip while this tree's micromono does not know the
  `websocket` key.

Chromium is Debian's (`scripts/install-system-deps.sh` installs it); Playwright's own browser builds are never
used. Chromium's offline emulation (`context.set_offline`) blocks new connections but leaves an open WebSocket
open, so it is the client that drops its connection on the window's "offline" event; the tests check that it does.
Screenshots go to tests/artifacts/ (gitignored).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import struct
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from conftest import EXAMPLES_BUILD, ROOT, http, running, write_manifest
from micromono.config import ConfigError, load_config
from micromono.daemon import Daemon

CHROMIUM: Final = Path("/usr/bin/chromium")
CLIENT_JS: Final = ROOT / "sdk" / "js" / "micromono-stream.js"
CHAT_HTML: Final = ROOT / "examples" / "web" / "chat.html"
ARTIFACTS: Final = ROOT / "tests" / "artifacts"
ROOM_WASM: Final = EXAMPLES_BUILD / "room.wasm"
WEB_WASM: Final = EXAMPLES_BUILD / "web.wasm"

#: Every wait on a page (Playwright's default is 30 s): each test stays well inside conftest's 120 s.
PAGE_TIMEOUT_MS: Final = 10_000
#: Every wait on a server (the stand-in's state, the daemon's reload).
SERVER_TIMEOUT: Final = 10.0
#: A short backoff for the client's tests, so that reconnecting takes milliseconds.
FAST_BACKOFF: Final = {"initial": 20, "max": 100}

expect.set_options(timeout=PAGE_TIMEOUT_MS)


def _websocket_support() -> str | None:
    """Why the tests against the real daemon cannot run in this tree, or None when they can."""
    with tempfile.TemporaryDirectory() as directory:
        wasm = Path(directory) / "chat.wasm"
        wasm.touch()
        chat = {"kind": "actor", "wasm": wasm, "routes": ["/chat/{key}"], "websocket": True}
        try:
            load_config(write_manifest(Path(directory), {"chat": chat}))
        except ConfigError as exc:
            if "services.chat.websocket: unknown key" in str(exc):
                return "the daemon's WebSocket support has not landed: `websocket = true` is not a manifest key yet"
            raise
    return None


needs_daemon_websockets = pytest.mark.skipif((_why_not := _websocket_support()) is not None, reason=_why_not or "")
needs_examples = pytest.mark.skipif(
    not (ROOM_WASM.exists() and WEB_WASM.exists()), reason="examples not built: run `make examples` (make test does)"
)


# --- the browser ------------------------------------------------------------------------------------------------


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, closed on exit (with Playwright's driver)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `bash scripts/install-system-deps.sh` (make install does)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, timeout=PAGE_TIMEOUT_MS * 3)
        try:
            yield browser
        finally:
            await browser.close()


#: Runs before the page's scripts: keeps every WebSocket the page makes in `window.__sockets`, so that a test can
#: tell one connection kept from several made.
_RECORD_SOCKETS: Final = """
(() => {
  const Native = WebSocket;
  window.__sockets = [];
  window.WebSocket = class extends Native {
    constructor(...args) { super(...args); window.__sockets.push(this); }
  };
})();
"""


async def new_page(browser: Browser) -> tuple[BrowserContext, Page, list[str]]:
    """A page in a context of its own (a browser profile: its own storage and network state), and the list its
    uncaught errors go to."""
    context = await browser.new_context()
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    await context.add_init_script(_RECORD_SOCKETS)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    return context, page, errors


def artifact(name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / name


async def until(predicate: Callable[[], bool], what: str, timeout: float = SERVER_TIMEOUT) -> None:
    """Wait for a condition of the daemon's (not a page's: Playwright waits for those), polling."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)


# --- the stand-in server ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Close:
    code: int
    reason: str


_DROP: Final = object()  # in a connection's queue: end its TCP connection without a close frame (1006)

Outgoing = str | bytes | _Close | object


@dataclass(eq=False)
class _Connection:
    ws: ServerConnection
    queue: asyncio.Queue[Outgoing] = field(default_factory=asyncio.Queue)


@dataclass(eq=False)
class _Room:
    ring: deque[tuple[int, str | bytes]]
    last: int = 0  # the last seq published
    connections: set[_Connection] = field(default_factory=set)


def _numbered(seq: int, data: str | bytes) -> str | bytes:
    """A published message's frame (docs/stream.md): JSON text, or the seq as 8 bytes little-endian then the bytes."""
    if isinstance(data, str):
        return json.dumps({"seq": seq, "data": data})
    return struct.pack("<Q", seq) + data


def _direct(data: str | bytes) -> str | bytes:
    """A direct message's frame (docs/stream.md): `{"data": ...}`, or seq 0 as 8 bytes then the bytes."""
    if isinstance(data, str):
        return json.dumps({"data": data})
    return struct.pack("<Q", 0) + data


class StandIn:
    """The server side of docs/stream.md, just enough for the client's tests.

    WebSocket route `/chat/<room>`: every message a client sends is published to the room, numbered per room and
    kept in a ring of `ring` messages. `?since=N` replays the ring after N, or sends a reset frame when N is older
    than the ring or newer than the last seq. Over plain HTTP: the client (/static/micromono-stream.js), the chat
    page (/web/chat/<room>) and an empty page (/blank.html). Each connection's frames go through one queue, so
    replayed, published, direct and close frames leave in the order they were made.
    """

    def __init__(self, ring: int = 1000) -> None:
        self.ring_size = ring
        self.rooms: dict[str, _Room] = {}
        self.handshakes: list[str] = []  # the target of every WebSocket handshake, refused ones too
        self.closes: list[int | None] = []  # each ended connection's close code as the server saw it
        self.refuse: HTTPStatus | None = None  # while set, handshakes are answered with this status
        self._event = asyncio.Event()
        self._server: Server | None = None

    @property
    def base(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    @asynccontextmanager
    async def running(self) -> AsyncIterator[StandIn]:
        # No compression, as docs/stream.md says of the daemon; no pings (the daemon's come after a long silence).
        async with serve(
            self._serve,
            "127.0.0.1",
            0,
            process_request=self._http,
            compression=None,
            ping_interval=None,
            close_timeout=2,
        ) as server:
            self._server = server
            yield self

    # --- what a test does ---

    def room(self, name: str) -> _Room:
        if name not in self.rooms:
            self.rooms[name] = _Room(ring=deque(maxlen=self.ring_size))
        return self.rooms[name]

    def publish(self, name: str, data: str | bytes) -> int:
        room = self.room(name)
        room.last += 1
        room.ring.append((room.last, data))
        for connection in room.connections:
            connection.queue.put_nowait(_numbered(room.last, data))
        return room.last

    def direct(self, name: str, data: str | bytes) -> None:
        """An unnumbered message to every connection of the room (an actor's ws_send)."""
        self.raw(name, _direct(data))

    def raw(self, name: str, frame: str | bytes) -> None:
        """A frame as given, to every connection of the room (one that is not docs/stream.md's, say)."""
        for connection in self.room(name).connections:
            connection.queue.put_nowait(frame)

    def close(self, name: str, code: int, reason: str = "") -> None:
        for connection in self.room(name).connections:
            connection.queue.put_nowait(_Close(code, reason))

    def drop(self, name: str) -> None:
        for connection in self.room(name).connections:
            connection.queue.put_nowait(_DROP)

    def restart(self) -> None:
        """What a daemon restart looks like to clients: 1001, then every room's numbering starts again at 1."""
        for room in self.rooms.values():
            for connection in room.connections:
                connection.queue.put_nowait(_Close(1001, "restarting"))
        self.rooms.clear()

    async def until(self, predicate: Callable[[], bool], what: str) -> None:
        """Wait for a condition of the server's, woken by each change (a handshake, a connection opened or ended)."""
        try:
            async with asyncio.timeout(SERVER_TIMEOUT):
                while not predicate():
                    await self._event.wait()
        except TimeoutError:
            raise AssertionError(f"not within {SERVER_TIMEOUT} s: {what}") from None

    def connected(self, name: str) -> int:
        return len(self.room(name).connections)

    # --- serving ---

    def _changed(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            self.handshakes.append(request.path)
            self._changed()
            return connection.respond(self.refuse, "refused by the test\n") if self.refuse is not None else None
        path = urlsplit(request.path).path
        if path == "/static/micromono-stream.js":
            body, content_type = CLIENT_JS.read_bytes(), "text/javascript; charset=utf-8"
        elif path == "/web/chat" or path.startswith("/web/chat/"):
            body, content_type = CHAT_HTML.read_bytes(), "text/html; charset=utf-8"
        elif path == "/blank.html":
            body, content_type = b"<!doctype html><title>blank</title>", "text/html; charset=utf-8"
        else:
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return Response(200, "OK", headers, body)

    async def _serve(self, ws: ServerConnection) -> None:
        target = urlsplit(ws.request.path if ws.request is not None else "/")
        name = unquote(target.path.removeprefix("/chat/"))
        since = parse_qs(target.query).get("since")
        room = self.room(name)
        connection = _Connection(ws)
        # The replay (or the reset) is queued before the connection joins the room, with no await in between: the
        # live messages follow it without a gap or a repeat.
        if since is not None:
            after = int(since[0])
            oldest = room.ring[0][0] if room.ring else room.last + 1
            if after > room.last or after < oldest - 1:
                connection.queue.put_nowait(json.dumps({"reset": True, "seq": room.last}))
            else:
                for seq, data in room.ring:
                    if seq > after:
                        connection.queue.put_nowait(_numbered(seq, data))
        room.connections.add(connection)
        self._changed()
        sender = asyncio.create_task(self._send(connection))
        try:
            async for message in ws:
                self.publish(name, message)  # the chat: publish what a client sends
        except ConnectionClosed:
            pass
        finally:
            room.connections.discard(connection)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await sender
            self.closes.append(ws.close_code)
            self._changed()

    @staticmethod
    async def _send(connection: _Connection) -> None:
        while True:
            item = await connection.queue.get()
            if isinstance(item, _Close):
                await connection.ws.close(item.code, item.reason)
                return
            if item is _DROP:
                connection.ws.transport.abort()
                return
            assert isinstance(item, str | bytes)
            await connection.ws.send(item)


# --- the client, driven from a blank page -----------------------------------------------------------------------

#: Connects with the client in the page and records what it reports in `window.events`.
_HARNESS: Final = """
async ([url, options]) => {
  const { connect } = await import("/static/micromono-stream.js");
  const seen = (data) => (typeof data === "string" ? data : Array.from(data));
  window.events = [];
  window.count = (kind, state) => events.filter((e) => e[0] === kind && (state === undefined || e[1] === state)).length;
  window.stream = connect(url, {
    ...options,
    onMessage: (data, seq) => events.push(["message", seq, seen(data)]),
    onDirect: (data) => events.push(["direct", seen(data)]),
    onReset: (seq) => events.push(["reset", seq]),
    onProtocolError: (error) => events.push(["invalid", error.message, seen(error.frame)]),
    // `stream` is usable in every callback, the first "connecting" too (it comes after connect() has returned).
    onStatus: (state, info) => events.push(["status", state, { ...info, url: window.stream.url }]),
  });
}
"""


@dataclass
class ClientPage:
    """The JS client in a blank page of the stand-in's origin."""

    context: BrowserContext
    page: Page
    errors: list[str]

    @classmethod
    async def open(cls, browser: Browser, server: StandIn, path: str, **options: Any) -> ClientPage:
        context, page, errors = await new_page(browser)
        await page.goto(f"{server.base}/blank.html")
        await page.evaluate(_HARNESS, [path, {"backoff": FAST_BACKOFF, **options}])
        return cls(context, page, errors)

    async def wait(self, condition: str) -> None:
        """Wait until the JS expression `condition` (over `events`, `count`, `stream`) holds."""
        await self.page.wait_for_function(f"() => {condition}")

    async def events(self, kind: str) -> list[list[Any]]:
        events: list[list[Any]] = await self.page.evaluate("events")
        return [event[1:] for event in events if event[0] == kind]

    async def messages(self) -> list[tuple[int, Any]]:
        return [(seq, data) for seq, data in await self.events("message")]

    async def states(self) -> list[str]:
        return [state for state, _ in await self.events("status")]

    async def eval(self, expression: str) -> Any:
        return await self.page.evaluate(expression)


@asynccontextmanager
async def stand_in(ring: int = 1000) -> AsyncIterator[tuple[StandIn, Browser]]:
    async with StandIn(ring).running() as server, chromium() as browser:
        yield server, browser


async def test_client_sorts_numbered_direct_and_binary_frames() -> None:
    """Text and binary published messages reach onMessage with their seq, once; direct ones reach onDirect, taken out
    of their frame, even when they read like numbered frames, and leave lastSeq alone."""
    async with stand_in() as (server, browser):
        client = await ClientPage.open(browser, server, "/chat/r")
        await client.wait("stream.state === 'open'")
        await server.until(lambda: server.connected("r") == 1, "the client connected")
        server.publish("r", "hello")
        server.publish("r", b"\x00\x01\xff")
        server.direct("r", "welcome")
        server.direct("r", json.dumps({"seq": 9, "data": "x"}))  # shaped like a numbered frame: still direct
        server.direct("r", struct.pack("<Q", 9) + b"\x07")  # binary with a seq of its own: still direct
        server.direct("r", b"")
        server.raw("r", json.dumps({"seq": 2, "data": "again"}))  # a seq seen already: dropped
        server.publish("r", "")
        await client.wait("events.filter((e) => e[0] !== 'status').length === 7")
        assert await client.messages() == [(1, "hello"), (2, [0, 1, 255]), (3, "")]
        assert await client.events("direct") == [
            ["welcome"],
            ['{"seq": 9, "data": "x"}'],
            [[9, 0, 0, 0, 0, 0, 0, 0, 7]],
            [[]],
        ]
        assert await client.eval("stream.lastSeq") == 3
        assert server.handshakes == ["/chat/r"]  # no `since`: live messages only
        assert client.errors == []


async def test_client_skips_and_reports_a_frame_that_is_not_the_protocols() -> None:
    """Plain text, other JSON and short binary frames go to onProtocolError; the stream and lastSeq go on."""
    async with stand_in() as (server, browser):
        client = await ClientPage.open(browser, server, "/chat/r")
        await server.until(lambda: server.connected("r") == 1, "the client connected")
        server.publish("r", "one")
        server.raw("r", "plain text")  # what a daemon sent as direct before frames said what they are
        server.raw("r", '{"seq": 9, "data": "x", "from": "bob"}')
        server.raw("r", b"\x07\x08")
        server.publish("r", "two")
        await client.wait("count('message') === 2")
        reason = "micromono-stream: skipped a frame that is not docs/stream.md's: "
        assert await client.events("invalid") == [
            [reason + "a text frame that is not a JSON object", "plain text"],
            [reason + "a JSON object of none of the three shapes", '{"seq": 9, "data": "x", "from": "bob"}'],
            [reason + "a binary frame of 2 bytes, shorter than its seq", [7, 8]],
        ]
        assert await client.messages() == [(1, "one"), (2, "two")]
        assert await client.events("direct") == []
        assert await client.eval("stream.lastSeq") == 2 and await client.eval("stream.state") == "open"
        assert client.errors == []


async def test_client_resumes_with_since_and_misses_nothing() -> None:
    """A lost connection is reconnected with ?since=<last seq>; what was published meanwhile comes once, in order."""
    async with stand_in() as (server, browser):
        client = await ClientPage.open(browser, server, "/chat/r")
        await server.until(lambda: server.connected("r") == 1, "the client connected")
        server.publish("r", "one")
        server.publish("r", "two")
        await client.wait("count('message') === 2")
        server.refuse = HTTPStatus.SERVICE_UNAVAILABLE  # the client stays away while the room goes on
        server.drop("r")
        await server.until(lambda: len(server.handshakes) >= 3, "the client retried")
        server.publish("r", "three")
        server.publish("r", "four")
        server.refuse = None
        await client.wait("count('message') === 4 && stream.state === 'open'")
        server.publish("r", "five")
        await client.wait("count('message') === 5")
        assert await client.messages() == [(1, "one"), (2, "two"), (3, "three"), (4, "four"), (5, "five")]
        assert server.handshakes[0] == "/chat/r"
        assert set(server.handshakes[1:]) == {"/chat/r?since=2"}
        reconnecting = await client.events("status")
        assert [info["code"] for state, info in reconnecting if state == "reconnecting"][0] == 1006
        assert client.errors == []


async def test_client_reports_a_reset_and_goes_on_after_its_seq() -> None:
    """Past the ring, the client gets a reset: onReset(seq), then the messages after seq."""
    async with stand_in(ring=3) as (server, browser):
        client = await ClientPage.open(browser, server, "/chat/r", since=0)
        await server.until(lambda: server.connected("r") == 1, "the client connected")
        server.publish("r", "m1")
        await client.wait("count('message') === 1")
        server.refuse = HTTPStatus.SERVICE_UNAVAILABLE
        server.drop("r")
        await server.until(lambda: server.connected("r") == 0, "the connection ended")
        for i in range(2, 7):
            server.publish("r", f"m{i}")  # the ring keeps 4, 5, 6: 2 and 3 are lost to the client
        server.refuse = None
        await client.wait("count('reset') === 1")
        server.publish("r", "m7")
        await client.wait("count('message') === 2")
        events = [e for e in await client.eval("events") if e[0] != "status"]
        assert events == [["message", 1, "m1"], ["reset", 6], ["message", 7, "m7"]]
        assert server.handshakes[0] == "/chat/r?since=0"
        assert server.handshakes[-1] == "/chat/r?since=1"
        assert await client.eval("stream.lastSeq") == 7


async def test_client_follows_a_reset_to_a_lower_seq_after_a_restart() -> None:
    """After a daemon restart the numbering starts at 1 again: the reset's lower seq is taken, and 1 is delivered."""
    async with stand_in() as (server, browser):
        client = await ClientPage.open(browser, server, "/chat/r")
        await server.until(lambda: server.connected("r") == 1, "the client connected")
        for text in ("a", "b", "c"):
            server.publish("r", text)
        await client.wait("count('message') === 3")
        server.restart()  # closes with 1001
        await client.wait("count('reset') === 1")
        server.publish("r", "after")
        await client.wait("count('message') === 4")
        assert await client.events("reset") == [[0]]
        assert (await client.messages())[-1] == (1, "after")
        assert server.handshakes[-1] == "/chat/r?since=3"
        assert [info["code"] for state, info in await client.events("status") if state == "reconnecting"] == [1001]


@pytest.mark.parametrize("code", [1001, 1011, 4000, 4008, 4029])
async def test_client_reconnects_after_a_close_that_retrying_cures(code: int) -> None:
    """1001, 1011, 4000, 4008 and 4029 are followed by a reconnection that resumes."""
    async with stand_in() as (server, browser):
        client = await ClientPage.open(browser, server, "/chat/r")
        await server.until(lambda: server.connected("r") == 1, "the client connected")
        server.publish("r", "before")
        await client.wait("count('message') === 1")
        server.close("r", code, "by the test")
        await server.until(lambda: len(server.handshakes) == 2 and server.connected("r") == 1, "it reconnected")
        await client.wait("stream.state === 'open'")
        assert server.handshakes == ["/chat/r", "/chat/r?since=1"]
        [(_, info)] = [event for event in await client.events("status") if event[0] == "reconnecting"]
        assert info["code"] == code and info["reason"] == "by the test" and info["attempt"] == 1
        assert 0 <= info["delay"] < FAST_BACKOFF["initial"]


@pytest.mark.parametrize("code", [1000, 1007, 1008, 1009])
async def test_client_does_not_reconnect_after_a_final_close(code: int) -> None:
    """1000 (a normal close), 1007, 1008 and 1009 end the stream: state "closed" with the code, no timer, no retry."""
    async with stand_in() as (server, browser):
        client = await ClientPage.open(browser, server, "/chat/r")
        await server.until(lambda: server.connected("r") == 1, "the client connected")
        server.close("r", code, "final")
        await client.wait("stream.state === 'closed'")
        # Reconnecting is decided in the close event: "closed" with no "reconnecting" means no retry is scheduled.
        assert await client.states() == ["connecting", "open", "closed"]
        [(_, info)] = [event for event in await client.events("status") if event[0] == "closed"]
        assert info["code"] == code and info["reason"] == "final"
        assert await client.eval("stream.send('x')") is False
        assert server.handshakes == ["/chat/r"]
        await client.eval("stream.reconnect()")  # the page may still decide to try again
        await client.wait("stream.state === 'open'")
        assert server.handshakes == ["/chat/r", "/chat/r?since=0"]


async def test_client_backs_off_with_full_jitter_within_bounds() -> None:
    """Refused handshakes are retried after random delays under min(max, initial * 2^n), then it connects."""
    async with stand_in() as (server, browser):
        server.refuse = HTTPStatus.SERVICE_UNAVAILABLE
        backoff = {"initial": 10, "max": 60}
        client = await ClientPage.open(browser, server, "/chat/r", backoff=backoff)
        await client.wait("count('status', 'reconnecting') >= 8")
        server.refuse = None
        await client.wait("stream.state === 'open'")
        retries = [info for state, info in await client.events("status") if state == "reconnecting"]
        assert [info["attempt"] for info in retries] == list(range(1, len(retries) + 1))
        for info in retries:
            ceiling = min(backoff["max"], backoff["initial"] * 2 ** (info["attempt"] - 1))
            assert 0 <= info["delay"] < ceiling, info
        # A failed handshake reaches the page as 1006 (the browser hides the HTTP status).
        assert {info["code"] for info in retries} == {1006}


async def test_client_gives_up_after_max_attempts() -> None:
    """With maxAttempts, that many failed reconnections in a row end the stream ("closed", gaveUp)."""
    async with stand_in() as (server, browser):
        server.refuse = HTTPStatus.SERVICE_UNAVAILABLE
        client = await ClientPage.open(browser, server, "/chat/r", backoff={**FAST_BACKOFF, "maxAttempts": 3})
        await client.wait("stream.state === 'closed'")
        assert len(server.handshakes) == 4  # the first connection and three retries
        [(_, info)] = [event for event in await client.events("status") if event[0] == "closed"]
        assert info["gaveUp"] is True and info["code"] == 1006


async def test_client_sends_and_closes_for_good() -> None:
    """send() reaches the server only while open; close() closes with 1000 and stops reconnecting."""
    async with stand_in() as (server, browser):
        client = await ClientPage.open(browser, server, "/chat/r")
        await client.wait("stream.state === 'open'")
        assert await client.eval("stream.send('hello')") is True
        assert await client.eval("stream.send(new Uint8Array([1, 2]))") is True
        await client.wait("count('message') === 2")
        assert await client.messages() == [(1, "hello"), (2, [1, 2])]
        await client.eval("stream.close()")
        await server.until(lambda: server.closes == [1000], "the server saw the close")
        assert await client.eval("[stream.state, stream.send('late')]") == ["closed", False]
        assert await client.states() == ["connecting", "open", "closed"]
        assert server.handshakes == ["/chat/r"]


async def test_client_drops_the_connection_when_offline_and_resumes_when_online() -> None:
    """Offline, the client closes its socket at once; back online it reconnects with since and catches up."""
    async with stand_in() as (server, browser):
        client = await ClientPage.open(browser, server, "/chat/r", backoff={"initial": 200, "max": 1000})
        await server.until(lambda: server.connected("r") == 1, "the client connected")
        server.publish("r", "before")
        await client.wait("count('message') === 1")
        await client.context.set_offline(True)
        await server.until(lambda: server.closes == [1000], "the client closed its socket")
        await client.wait("stream.state === 'reconnecting' || stream.state === 'connecting'")
        assert await client.eval("__sockets[0].readyState === WebSocket.CLOSED")
        server.publish("r", "while offline")
        await client.context.set_offline(False)  # the "online" event reconnects without waiting for the backoff
        await client.wait("count('message') === 2 && stream.state === 'open'")
        assert await client.messages() == [(1, "before"), (2, "while offline")]
        assert server.handshakes[0] == "/chat/r" and server.handshakes[-1] == "/chat/r?since=1"
        [(_, info), *_] = [event for event in await client.events("status") if event[0] == "reconnecting"]
        assert info["reason"] == "offline"


# --- the chat page, against the stand-in and against the daemon -------------------------------------------------


@dataclass
class ChatPage:
    """The chat page of one user, in a browser context of its own."""

    context: BrowserContext
    page: Page
    errors: list[str]

    @classmethod
    async def open(cls, browser: Browser, base: str, room: str, name: str) -> ChatPage:
        context, page, errors = await new_page(browser)
        await page.goto(f"{base}/web/chat/{room}")
        await page.fill("#name", name)
        chat = cls(context, page, errors)
        await chat.wait_state("open")
        return chat

    async def wait_state(self, state: str) -> None:
        """Wait for the client's state (the status line shows it, or a reset, which is no state of the client's)."""
        await self.page.wait_for_function("(state) => chat.stream.state === state", arg=state)

    async def wait_status(self, state: str, text: str) -> None:
        """Wait for the status line to show `state` and `text`."""
        await expect(self.page.locator("#status")).to_have_attribute("data-state", state)
        await expect(self.page.locator("#status-text")).to_have_text(text)

    async def say(self, text: str) -> None:
        await self.page.fill("#text", text)
        await self.page.press("#text", "Enter")
        await expect(self.page.locator("#text")).to_have_value("")  # cleared once the stream took it

    async def wait_messages(self, count: int) -> None:
        await expect(self.page.locator("#messages li[data-seq]")).to_have_count(count)

    async def messages(self) -> list[tuple[int, str]]:
        """(seq, "name: text") of each message shown, top to bottom."""
        shown: list[list[Any]] = await self.page.evaluate(
            """() => [...document.querySelectorAll("#messages li[data-seq]")].map((li) => [
                 Number(li.dataset.seq),
                 `${li.querySelector(".from")?.textContent ?? ""}: ${li.querySelector(".text").textContent}`,
               ])"""
        )
        return [(seq, text) for seq, text in shown]

    async def sockets(self) -> int:
        """How many WebSockets the page has made."""
        count: int = await self.page.evaluate("__sockets.length")
        return count

    async def screenshot(self, name: str) -> None:
        await self.page.screenshot(path=artifact(name))


@asynccontextmanager
async def chat_app(tmp_path: Path) -> AsyncIterator[tuple[Daemon, str]]:
    """The daemon with the example app's chat pieces: the room actor (`websocket = true`, a copy of room.wasm in
    tmp_path, for hot swaps) and the web service. Yields the daemon and its base URL."""
    wasm = tmp_path / "room.wasm"
    shutil.copyfile(ROOM_WASM, wasm)
    room = {
        "kind": "actor",
        "wasm": wasm,
        "routes": ["/room/{key}", "/room/{key}/*", "/chat/{key}"],
        "websocket": True,
    }
    web = {"wasm": WEB_WASM, "routes": ["/web/*", "/static/*"]}
    async with running(load_config(write_manifest(tmp_path, {"room": room, "web": web}))) as daemon:
        host, port = daemon.addresses[0]
        yield daemon, f"http://{host}:{port}"


@asynccontextmanager
async def chat_server(kind: str, tmp_path: Path) -> AsyncIterator[str]:
    """The base URL of a chat: the stand-in's, or the real daemon's."""
    if kind == "stand-in":
        async with StandIn().running() as server:
            yield server.base
    else:
        async with chat_app(tmp_path) as (_, base):
            yield base


SERVERS: Final = [
    pytest.param("stand-in"),
    pytest.param("daemon", marks=[needs_examples, needs_daemon_websockets]),
]


@pytest.mark.parametrize("kind", SERVERS)
async def test_two_pages_see_each_others_messages_in_the_same_order(kind: str, tmp_path: Path) -> None:
    """Two users in one room, sending at once, see all messages in the same seq order."""
    async with chat_server(kind, tmp_path) as base, chromium() as browser:
        alice = await ChatPage.open(browser, base, "lobby", "alice")
        bob = await ChatPage.open(browser, base, "lobby", "bob")

        async def talk(page: ChatPage, name: str) -> None:
            for i in range(4):
                await page.say(f"{name} {i}")

        await asyncio.gather(talk(alice, "alice"), talk(bob, "bob"))
        await alice.wait_messages(8)
        await bob.wait_messages(8)
        shown = await alice.messages()
        assert await bob.messages() == shown
        seqs = [seq for seq, _ in shown]
        assert seqs == sorted(seqs) and len(set(seqs)) == 8
        texts = [text for _, text in shown]
        for name in ("alice", "bob"):  # each user's own messages in the order sent
            assert [t for t in texts if t.startswith(name)] == [f"{name}: {name} {i}" for i in range(4)]
        await alice.screenshot(f"chat-two-pages-{kind}.png")
        assert alice.errors == bob.errors == []


@pytest.mark.parametrize("kind", SERVERS)
async def test_a_page_back_from_offline_has_missed_nothing(kind: str, tmp_path: Path) -> None:
    """One page goes offline (its socket closes) while the other sends; back online it resumes and shows them all."""
    async with chat_server(kind, tmp_path) as base, chromium() as browser:
        alice = await ChatPage.open(browser, base, "lobby", "alice")
        bob = await ChatPage.open(browser, base, "lobby", "bob")
        await bob.say("brb")
        await alice.wait_messages(1)
        await bob.wait_messages(1)
        [(last_seen, _)] = await bob.messages()

        await bob.context.set_offline(True)
        await bob.wait_status("reconnecting", "offline; reconnecting when back online")
        await bob.page.wait_for_function("() => __sockets[0].readyState === WebSocket.CLOSED")
        for i in range(3):
            await alice.say(f"while you were away {i}")
        await alice.wait_messages(4)
        assert len(await bob.messages()) == 1  # offline indeed

        await bob.context.set_offline(False)
        await bob.wait_messages(4)
        await bob.wait_state("open")
        assert await bob.messages() == await alice.messages()
        assert f"since={last_seen}" in await bob.page.evaluate("chat.stream.url")
        await bob.screenshot(f"chat-after-offline-{kind}.png")
        assert alice.errors == bob.errors == []


@asynccontextmanager
async def web_only(tmp_path: Path) -> AsyncIterator[tuple[str, tuple[str, int]]]:
    """The daemon with the web service alone (no chat actor: every WebSocket handshake is a 404)."""
    web = {"wasm": WEB_WASM, "routes": ["/web/*", "/static/*"]}
    async with running(load_config(write_manifest(tmp_path, {"web": web}))) as daemon:
        host, port = daemon.addresses[0]
        yield f"http://{host}:{port}", (host, port)


@needs_examples
async def test_the_web_service_serves_the_page_and_the_client_as_built(tmp_path: Path) -> None:
    """web.wasm answers the page and the client byte for byte as in the tree (a stale build fails), with an ETag."""
    async with web_only(tmp_path) as (_, address):
        for path, source, content_type in [
            ("/web/chat/lobby", CHAT_HTML, "text/html; charset=utf-8"),
            ("/web/chat", CHAT_HTML, "text/html; charset=utf-8"),
            ("/static/micromono-stream.js", CLIENT_JS, "text/javascript; charset=utf-8"),
        ]:
            response = await http(address, "GET", path)
            assert response.status == 200, path
            assert response.body == source.read_bytes(), f"{path}: not {source} as it is now: run `make examples`"
            assert response.headers["content-type"] == content_type
            assert response.headers["cache-control"] == "no-cache"
            etag = response.headers["etag"]
            again = await http(address, "GET", path, headers={"If-None-Match": etag})
            assert (again.status, again.body, again.headers["etag"]) == (304, b"", etag)
        assert (await http(address, "GET", "/web/chat/a/b")).status == 404
        assert (await http(address, "GET", "/static/other.js")).status == 404
        refused = await http(address, "POST", "/web/chat/lobby")
        assert (refused.status, refused.headers["allow"]) == (405, "GET")


@needs_examples
async def test_the_page_from_the_daemon_asks_for_a_room_and_loads_its_client(tmp_path: Path) -> None:
    """Served by the daemon, /web/chat asks for a room, goes to /web/chat/<room> and runs the client from
    /static/ (which, with no chat actor here, keeps reconnecting)."""
    async with web_only(tmp_path) as (base, _), chromium() as browser:
        _, page, errors = await new_page(browser)
        await page.goto(f"{base}/web/chat")
        await page.fill("#join-room", "tea room")
        await page.press("#join-room", "Enter")
        await page.wait_for_url(f"{base}/web/chat/tea%20room")
        await expect(page.locator("#room-name")).to_have_text("tea room")
        await page.wait_for_function("() => __sockets.length > 0 && __sockets[0].readyState === WebSocket.CLOSED")
        assert await page.evaluate("chat.stream.url") == base.replace("http:", "ws:") + "/chat/tea%20room?since=0"
        assert await page.evaluate("chat.stream.state") in ("connecting", "reconnecting")
        assert errors == []


async def test_the_page_tells_of_a_reset_and_goes_on() -> None:
    """Back from offline past the ring, the page says messages were missed (status line and list) and goes on."""
    async with StandIn(ring=2).running() as server, chromium() as browser:
        carol = await ChatPage.open(browser, server.base, "lobby", "carol")
        await carol.say("hello")
        await carol.wait_messages(1)
        await carol.wait_status("open", "connected")
        await carol.context.set_offline(True)
        await carol.wait_status("reconnecting", "offline; reconnecting when back online")
        for i in range(3):
            server.publish("lobby", f"dave: missed {i}")  # 2 to 4: the ring keeps only 3 and 4
        await carol.context.set_offline(False)
        await carol.wait_status("reset", "reset: messages up to #4 were missed")
        await expect(carol.page.locator("#messages li.note")).to_have_text("— messages up to #4 were missed —")
        await carol.say("anyone?")
        await carol.wait_messages(2)
        assert await carol.messages() == [(1, "carol: hello"), (5, "carol: anyone?")]
        await carol.screenshot("chat-reset-stand-in.png")
        assert carol.errors == []


@needs_examples
@needs_daemon_websockets
async def test_a_page_that_only_listens_answers_the_daemons_pings(tmp_path: Path) -> None:
    """A page cannot ping from JavaScript, but its browser answers the daemon's pings: pinged after half of
    ws_idle_timeout, it is not closed past the whole of it (the sweep run by hand, on a fake clock)."""
    async with chat_app(tmp_path) as (daemon, base), chromium() as browser:
        assert daemon.ingress is not None
        hub = daemon.ingress.websockets
        now = time.monotonic()
        hub.clock = lambda: now
        page = await ChatPage.open(browser, base, "lobby", "listener")
        [connection] = hub.connections.values()
        timeout = daemon.router.keyed["room"].spec.ws_idle_timeout
        for _ in range(2):
            now += timeout / 2
            assert hub.close_idle(now) == 0 and connection.pinged_at == now
            await until(lambda: connection.last_seen == connection.pinged_at, "the browser answered the ping")
        assert daemon.router.keyed["room"].stream_counters.closes == {}
        await page.wait_state("open")
        assert await page.sockets() == 1
        assert page.errors == []


def rebuilt(wasm: bytes, build: str) -> bytes:
    """The same module as another build: a custom section ("micromono-test-build") appended, which changes the
    file's hash and nothing the module does."""

    def leb128(n: int) -> bytes:
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    name = b"micromono-test-build"
    payload = leb128(len(name)) + name + build.encode()
    return wasm + b"\x00" + leb128(len(payload)) + payload


@needs_examples
@needs_daemon_websockets
async def test_pages_stay_connected_across_a_hot_swap_of_the_chat_actor(tmp_path: Path) -> None:
    """A new build of the chat actor swapped in mid-conversation: both pages keep their one connection and go on."""
    async with chat_app(tmp_path) as (daemon, base), chromium() as browser:
        alice = await ChatPage.open(browser, base, "lobby", "alice")
        bob = await ChatPage.open(browser, base, "lobby", "bob")
        await alice.say("before the swap")
        await bob.say("me too")
        await alice.wait_messages(2)
        await bob.wait_messages(2)

        slot = daemon.router.slots["room"]
        first = slot.current
        wasm = tmp_path / "room.wasm"
        staged = tmp_path / "room.wasm.new"
        staged.write_bytes(rebuilt(ROOM_WASM.read_bytes(), "2"))
        os.replace(staged, wasm)  # atomically, as a deploy would
        await until(lambda: slot.current is not first, "the new build of room was swapped in")
        assert daemon.reloader is not None and daemon.reloader.results["room"].outcome == "swapped"

        await alice.say("after the swap")
        await bob.say("still here")
        await alice.wait_messages(4)
        await bob.wait_messages(4)
        assert await alice.messages() == await bob.messages()
        assert [text for _, text in await alice.messages()][2:] in (
            ["alice: after the swap", "bob: still here"],
            ["bob: still here", "alice: after the swap"],
        )
        for page in (alice, bob):
            assert await page.sockets() == 1  # the same connection throughout
            await page.wait_state("open")
        await alice.screenshot("chat-after-hot-swap.png")
        assert alice.errors == bob.errors == []
