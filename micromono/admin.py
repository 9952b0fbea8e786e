"""The admin listener (`daemon.metrics_listen`): `/metrics`, `/status`, `/healthz` and the actor pages over
HTTP/1.1.

Kept apart from ingress so a flood of user traffic and a scrape never share a route table, and so ingress's hot
path carries no admin checks. It is small and slow on purpose, but it shares the event loop with ingress, and
whatever it does on the loop delays every ingress request. So the loop only reads the live objects, which nothing
else may do (the loop changes them between its callbacks), and a worker thread of the loop's default executor turns
what it read into the answer, letting go of the GIL regularly (`pacer.Pacer`) so the loop need not wait for it:

* `GET /metrics`: Prometheus text format. The loop copies the counters (`metrics.DaemonRegistry.snapshot`) a short
  step at a time, serving whatever is ready between steps; a worker thread writes the text (`metrics.render`), the
  expensive part. One scrape runs at a time per daemon: one that arrives
  meanwhile gets the same text, from a snapshot that much older.
* `GET /status`: JSON: every service with its version, sha256, instances, mailbox and call counts. The loop builds
  the document (`Daemon.status`, a fresh dict); a worker thread serializes it, which takes longer.
* `GET /healthz`: `200 ok` while the daemon serves, `503 stopping` during shutdown; answered at once.
* `GET /actors/<service>[?limit=N&after=KEY]`: JSON, one page of an actor service's actors in key order (status.py
  has the shapes). The loop copies the keys (one C-level copy of each table), a worker thread chooses the page
  (`status.page_of_keys`), the loop reads the live count and the page's records a step at a time, and a worker
  thread serializes them: 100,000 actors never hold the loop for more than a copy of their keys.
* `GET /actors/<service>/<key>[?limit=N]` (the key percent-encoded): JSON, one actor's record and its stored
  entries, read by `storage.entries` in a worker thread, never on the loop. Read-only: nothing here writes.
* `GET /` (also `/console/`) and the page's files: the live page (console/files.py), bytes read at startup.
* `GET /console/events`: the live page's event stream (console/events.py). The connection becomes the stream: the
  console writes to it at each tick until either side ends it; a request after it on the connection gets no answer.
  503 when the console has as many streams as it serves, or the daemon is stopping.

Errors of the actor pages are JSON, `{"error": kind, "message": ...}` as ingress writes them: 404 naming the
unknown service or key, 400 for a bad query.

Answers leave a connection in request order, whichever is ready first, since a client may pipeline requests. While
one is pending the connection stops reading, so a client that pipelines without reading queues one read's worth of
requests at most. A connection that closes before its answer is ready just drops it; a daemon that stops meanwhile
does not wait for the thread, which finishes on its own.
"""

from __future__ import annotations

import asyncio
import functools
import json
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any, Final, Generic, Protocol, TypeVar

import httptools
import structlog

from .console import Console, ConsoleClient, ConsoleRefused, StaticFiles
from .metrics import ActorScan, Step, scan_actors
from .pacer import Pacer
from .status import (
    ACTOR_PAGE_LIMIT,
    ACTOR_PAGE_MAX,
    actor_list_document,
    actor_record,
    actor_records,
    entries_document,
    page_of_keys,
)

if TYPE_CHECKING:
    from .actors.keyed import KeyedService

__all__ = ["AdminError", "AdminPages", "AdminProtocol", "EntryReader"]

log = structlog.get_logger(__name__)

S = TypeVar("S")
T = TypeVar("T")

_TEXT = b"text/plain; charset=utf-8"
_JSON: Final = b"application/json"
_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}


class EntryReader(Protocol):
    """What the actor pages need of an actor service's storage (`ServiceStorage`): a blocking read of up to
    `limit` of one actor's stored entries, `(key, value)` in key order; called in a worker thread only."""

    def entries(self, key: str, limit: int) -> list[tuple[bytes, bytes]]: ...


class AdminError(Exception):
    """A request the actor pages refuse: answered `status` with a JSON body `{"error": kind, "message": ...}`."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message

    def body(self) -> bytes:
        return json.dumps({"error": self.kind, "message": self.message}).encode() + b"\n"


class AdminPages(Generic[S]):
    """What the admin listener answers, shared by all of one daemon's admin connections.

    Args:
        snapshot: copies the metrics' counters; awaited on the event loop (it may take several loop iterations).
        render: formats a snapshot as Prometheus text; called in a worker thread.
        status: builds the status document afresh (it is serialized in a worker thread, so nothing else may hold
            it); called on the event loop.
        healthy: False once the daemon is shutting down.
        actors: the actor services by name (`Router.keyed`: the daemon's own dict, so services opened later are
            served too); None: there are none.
        console: the live page's event stream; None: no live page (404).
        files: the live page's files; None: no live page (404).
    """

    #: Seconds the actor pages read on the loop before they let it serve (as `SnapshotReader.STEP`).
    step = 0.0005

    def __init__(
        self,
        snapshot: Callable[[], Awaitable[S]],
        render: Callable[[S], bytes],
        status: Callable[[], dict[str, Any]],
        healthy: Callable[[], bool],
        actors: Mapping[str, KeyedService] | None = None,
        console: Console | None = None,
        files: StaticFiles | None = None,
    ) -> None:
        self._snapshot = snapshot
        self._render = render
        self._status = status
        self.healthy = healthy
        self._actors: Mapping[str, KeyedService] = actors if actors is not None else {}
        self.console = console
        self.files = files
        self._metrics: asyncio.Future[bytes] | None = None  # the scrape in progress: snapshot, then formatting

    def metrics(self) -> asyncio.Future[bytes]:
        """The Prometheus text: of a snapshot taken from now on, or of the one a scrape in progress took."""
        if self._metrics is None:
            self._metrics = asyncio.ensure_future(self._scrape())
            self._metrics.add_done_callback(self._rendered)
        return self._metrics

    async def _scrape(self) -> bytes:
        snapshot = await self._snapshot()
        return await asyncio.get_running_loop().run_in_executor(None, self._render, snapshot)

    def _rendered(self, _: asyncio.Future[bytes]) -> None:
        self._metrics = None

    def status(self) -> asyncio.Future[bytes]:
        """The status document as JSON: built now, serialized in a worker thread."""
        return asyncio.get_running_loop().run_in_executor(None, _json, self._status())

    # --- the actor pages ------------------------------------------------------------------------------------

    def actors(self, path: bytes, query: bytes) -> asyncio.Future[bytes]:
        """`/actors/<service>` or `/actors/<service>/<key>` (`path` is what follows `/actors/`, as the request
        has it) as JSON, made on later loop iterations and in worker threads.

        Raises:
            AdminError: an unknown service or key (404), a bad query or key (400); raised at once, before
                anything is read.
        """
        service, _, key = path.partition(b"/")
        name = _decoded(service, "the service name")
        keyed = self._actors.get(name)
        if keyed is None:
            names = ", ".join(sorted(self._actors)) or "none"
            what = f"no actor service {name!r}" if name else "name an actor service: /actors/<service>"
            raise AdminError(404, "unknown_service", f"{what} (actor services here: {names})")
        params = _query(query, allowed=("limit", "after") if not key else ("limit",))
        limit = _limit(params.get("limit"))
        if not key:
            return asyncio.ensure_future(self._list(keyed, params.get("after"), limit))
        actor_key = _decoded(key, "the actor key")
        info = keyed.directory.get(actor_key)
        actor = keyed.actors.get(actor_key)
        if info is None and actor is None:
            raise AdminError(404, "unknown_actor", f"actor service {name!r} has no actor {actor_key!r}")
        record = actor_record(actor_key, info, actor)
        reader: EntryReader | None = keyed.storage if info is not None else None  # never committed: nothing stored
        return asyncio.get_running_loop().run_in_executor(None, _entries_json, reader, record, limit)

    async def _list(self, keyed: KeyedService, after: str | None, limit: int) -> bytes:
        loop = asyncio.get_running_loop()
        # One C-level copy of each table's keys (about 0.4 ms per 100,000); the OrderedDict's own iteration walks
        # its links, several times slower, and its order is not needed here.
        known, in_memory = list(keyed.directory), list(dict.keys(keyed.actors))
        page, more = await loop.run_in_executor(None, page_of_keys, known, in_memory, after, limit)
        scan: ActorScan = await _stepped(scan_actors(keyed, Step(self.step)))
        records = await _stepped(actor_records(keyed, page, Step(self.step)))
        document = actor_list_document(keyed, scan, records, page[-1] if more and page else None)
        return await loop.run_in_executor(None, _json, document)


async def _stepped(steps: Generator[None, None, T]) -> T:
    """Run a stepped read on the loop to its end, letting the loop serve whatever is ready after each step."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: T = done.value
            return result
        await asyncio.sleep(0)


def _entries_json(reader: EntryReader | None, record: dict[str, Any], limit: int) -> bytes:
    """In a worker thread: the actor's entries (one more than shown, to tell whether more follow), as JSON."""
    rows = reader.entries(record["key"], limit + 1) if reader is not None else []
    return _json(entries_document(record, rows, limit))


def _decoded(data: bytes, what: str) -> str:
    """Percent-encoded bytes (a path segment, a query value) as text."""
    try:
        return urllib.parse.unquote_to_bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise AdminError(400, "bad_request", f"{what} is not UTF-8 text once percent-decoded: {data!r}") from None


def _query(query: bytes, *, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query's parameters (the last of a repeated one), each one of `allowed`."""
    try:
        pairs = urllib.parse.parse_qsl(query.decode("ascii"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise AdminError(400, "bad_request", f"the query is not percent-encoded UTF-8 text: {query!r}") from None
    params: dict[str, str] = {}
    for name, value in pairs:
        if name not in allowed:
            accepted = " and ".join(f"?{a}=" for a in allowed)
            raise AdminError(400, "bad_request", f"unknown query parameter {name!r}: this page takes {accepted}")
        params[name] = value
    return params


def _limit(text: str | None) -> int:
    if text is None:
        return ACTOR_PAGE_LIMIT
    if text.isascii() and text.isdigit() and 1 <= int(text) <= ACTOR_PAGE_MAX:
        return int(text)
    raise AdminError(400, "bad_request", f"limit must be an integer from 1 to {ACTOR_PAGE_MAX}, got {text!r}")


def _json(document: dict[str, Any]) -> bytes:
    """`json.dumps(document, indent=2)` and a newline, encoded. With an indent, json writes in pure Python, slowly
    for many services: paced like `metrics.exposition`, so the event loop need not wait for the GIL meanwhile."""
    pace = Pacer()
    chunks, parts = [], []
    for part in json.JSONEncoder(indent=2).iterencode(document):
        parts.append(part)
        if len(parts) == 1024:  # a piece at a time: joining and encoding all at once would hold the GIL for long
            chunks.append("".join(parts).encode())
            parts.clear()
            pace()
    chunks += ("".join(parts).encode(), b"\n")
    return b"".join(chunks)


class _Answer:
    """A response on its way out: `data` (head, body) stays None until the body is ready; `head_only` for a HEAD
    request, whose answer carries the body's length but not the body (RFC 9110, 9.3.2); `stream` for the live
    page's event stream, which the console opens once the answers before it are sent."""

    __slots__ = ("data", "close", "head_only", "stream")

    def __init__(self, data: tuple[bytes, bytes] | None, close: bool, head_only: bool, stream: bool = False) -> None:
        self.data = data
        self.close = close
        self.head_only = head_only
        self.stream = stream


class AdminProtocol(asyncio.Protocol):
    """One admin connection.

    Args:
        pages: the answers, shared by the daemon's admin connections.
    """

    def __init__(self, pages: AdminPages[Any]) -> None:
        self._pages = pages
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._size = 0
        self._answers: deque[_Answer] = deque()  # in request order; sent from the left as they become ready
        self._closing = False  # an answer that closes the connection is queued: requests after it get none
        self._paused = False
        self._head_only = False  # the request being answered is a HEAD
        self._stream: ConsoleClient | None = None  # the connection is the live page's event stream
        self._writing_paused = False  # the transport's buffer is over its high-water mark

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._answers.clear()  # a body still being made is dropped once ready (see _flush)
        if self._stream is not None and self._pages.console is not None:
            self._pages.console.detach(self._stream)
            self._stream = None

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self._stream is not None and self._pages.console is not None:
            self._pages.console.pause_writing(self._stream)

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._stream is not None and self._pages.console is not None:
            self._pages.console.resume_writing(self._stream)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._size += len(data)
        try:
            if self._size > 64 * 1024:
                raise httptools.HttpParserError("request too large for the admin listener")
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._send(400, _TEXT, f"malformed request: {exc}\n".encode(), close=True)

    def on_message_begin(self) -> None:
        self._url = b""

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_message_complete(self) -> None:
        self._size = 0
        if self._closing:
            return
        path, _, query = self._url.partition(b"?")
        method = self._parser.get_method()
        close = not self._parser.should_keep_alive()
        self._head_only = method == b"HEAD"
        if method not in (b"GET", b"HEAD"):
            self._send(405, _TEXT, b"only GET and HEAD are supported\n", close=close)
        elif path == b"/metrics":
            self._later(self._pages.metrics(), b"text/plain; version=0.0.4; charset=utf-8", close=close)
        elif path == b"/status":
            self._later(self._pages.status(), b"application/json", close=close)
        elif path == b"/healthz":
            ok = self._pages.healthy()
            self._send(200 if ok else 503, b"text/plain", b"ok\n" if ok else b"stopping\n", close=close)
        elif path.startswith(b"/actors/") or path == b"/actors":
            try:
                body = self._pages.actors(path[len(b"/actors/") :], query)
            except AdminError as exc:
                self._send(exc.status, _JSON, exc.body(), close=close)
            else:
                self._later(body, _JSON, close=close)
        elif path == b"/console/events" and self._pages.console is not None:
            if self._head_only:
                self._send(200, b"text/event-stream; charset=utf-8", b"", close=True)
            else:
                self._queue(_Answer(None, True, False, stream=True))
        elif self._pages.files is not None and (page := self._pages.files.get(path)) is not None:
            self._send(200, page.content_type, page.body, close=close, headers=page.headers)
        else:
            self._send(404, _TEXT, b"not found: try /, /metrics, /status, /healthz or /actors/<service>\n", close=close)

    def _send(self, status: int, content_type: bytes, body: bytes, *, close: bool, headers: bytes = b"") -> None:
        self._queue(_Answer(_response(status, content_type, body, close, headers), close, self._head_only))

    def _later(self, body: asyncio.Future[bytes], content_type: bytes, *, close: bool) -> None:
        """Queue an answer whose body a worker thread is making."""
        answer = _Answer(None, close, self._head_only)
        self._queue(answer)
        body.add_done_callback(functools.partial(self._made, answer, content_type))

    def _made(self, answer: _Answer, content_type: bytes, body: asyncio.Future[bytes]) -> None:
        if body.cancelled():  # the loop is closing with the scrape unfinished
            answer.data = _response(503, _TEXT, b"stopping\n", answer.close)
            self._flush()
            return
        exc = body.exception()
        if exc is not None:
            log.error("admin.answer.failed", error=repr(exc), exc_info=exc)
            if content_type == _JSON:
                error = AdminError(500, "internal", f"cannot answer: {exc!r}")
                answer.data = _response(500, _JSON, error.body(), answer.close)
            else:
                answer.data = _response(500, _TEXT, f"cannot answer: {exc!r}\n".encode(), answer.close)
        else:
            answer.data = _response(200, content_type, body.result(), answer.close)
        self._flush()

    def _queue(self, answer: _Answer) -> None:
        if self._transport is None:
            return
        self._answers.append(answer)
        self._closing = answer.close
        self._flush()

    def _flush(self) -> None:
        """Send the ready answers at the head of the queue; read more requests only once all are sent."""
        transport = self._transport
        if transport is None:  # closed while a body was being made: nobody left to answer
            return
        answers = self._answers
        while answers and ((data := answers[0].data) is not None or answers[0].stream):
            if data is None:  # the event stream: the connection is the console's from here on
                answers.clear()
                self._open_stream(transport)
                return
            if answers[0].head_only:
                transport.write(data[0])
            else:
                transport.writelines(data)  # head and body apart: joining them would copy megabytes on the loop
            if answers.popleft().close:  # the last one: nothing is queued after it (see _closing)
                transport.close()
                self._transport = None
                return
        paused = bool(answers)
        if paused != self._paused:
            self._paused = paused
            if paused:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def _open_stream(self, transport: asyncio.Transport) -> None:
        """Hand the connection to the console (which writes the head and the events), or answer 503 and close."""
        console = self._pages.console
        assert console is not None
        if self._paused:  # read on, to see the client leave (what it sends is dropped: see _closing)
            self._paused = False
            transport.resume_reading()
        try:
            self._stream = console.attach(transport)
            if self._writing_paused:  # by what attach wrote (the recent samples), before the stream was known
                console.pause_writing(self._stream)
        except ConsoleRefused as exc:
            transport.writelines(_response(exc.status, _TEXT, exc.message.encode(), True))
            transport.close()
            self._transport = None


def _response(status: int, content_type: bytes, body: bytes, close: bool, headers: bytes = b"") -> tuple[bytes, bytes]:
    head = b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s%s\r\n" % (
        status,
        _REASONS.get(status, b"Error"),
        content_type,
        len(body),
        headers,
        b"connection: close\r\n" if close else b"",
    )
    return head, body
