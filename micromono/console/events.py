"""The live page's event stream (`GET /console/events`, server-sent events): its clients, the tick that samples the
daemon while at least one is connected, and the ring of recent samples a new client gets first.

A tick (every `tick` seconds, 1 by default) reads the live numbers on the event loop a short step at a time
(`sample.read_steps`), then a worker thread of the loop's default executor turns the reading into the tick's JSON
event (`sample.Samples`: rates, latency quantiles, encoding); back on the loop the same bytes are written to every
client and kept in the ring. The ring holds the last `history` seconds of events, at most `history_bytes` of them,
so a page that opens draws the last minutes at once.

Costs, on purpose:
* Nothing runs while no client is connected: the first client starts the tick, which ends at its first turn
  after the last client went (`readings` counts the readings taken; the tests hold it to that).
* At most `max_clients` streams at once; one more is refused with 503 (`ConsoleRefused`).
* A slow client never makes the daemon buffer without bound: a client whose connection's write buffer is over
  its high-water mark (the transport calls `pause_writing`) is skipped at each tick (its page draws the next
  event it gets, and charts the gap), and one that stays so for `slow_client` seconds is disconnected. What a
  client can hold the daemon to is the ring (at most `history_bytes`) and one event.
* At shutdown (`close`) each stream gets an `end` event and is closed; new ones are refused.

This module owns the stream and its clients; what a sample holds is sample.py's, the HTTP around it admin.py's.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import structlog

from micromono.metrics import Step

from .sample import Reading, ReloadLog, Samples, numbered_reloads, read_steps, reload_document, sse

if TYPE_CHECKING:
    from micromono.router import Router

__all__ = [
    "HISTORY_BYTES",
    "HISTORY_SECONDS",
    "MAX_CLIENTS",
    "SLOW_CLIENT_SECONDS",
    "TICK",
    "Console",
    "ConsoleClient",
    "ConsoleRefused",
]

log = structlog.get_logger(__name__)

#: Seconds between two samples while a page is open.
TICK: Final = 1.0
#: Seconds of samples a new client gets first.
HISTORY_SECONDS: Final = 300.0
#: The most bytes of samples the ring keeps, whatever `HISTORY_SECONDS` says (a daemon with many services).
HISTORY_BYTES: Final = 8 * 1024 * 1024
#: The most event streams open at once.
MAX_CLIENTS: Final = 16
#: Seconds a client may leave its connection's buffer full before it is disconnected.
SLOW_CLIENT_SECONDS: Final = 30.0

#: The head of an event stream: its length is not known, so the connection's end ends it.
_HEAD: Final = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-store\r\n"
    b"x-content-type-options: nosniff\r\n"
    b"connection: close\r\n"
    b"\r\n"
)


class ConsoleRefused(Exception):
    """An event stream the console will not open: answered `status` (503) with `message` as plain text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ConsoleClient:
    """One open event stream: its transport, and since when its buffer is full (None while it drains)."""

    __slots__ = ("transport", "paused_at", "skipped")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.paused_at: float | None = None
        self.skipped = 0  # tick events not sent because its buffer was full

    def __repr__(self) -> str:
        state = "full" if self.paused_at is not None else "draining"
        return f"<ConsoleClient [{state} | skipped: {self.skipped}]>"


class Console:
    """The live page's event stream, one per daemon.

    Args:
        router: the daemon's router, read at each tick (on the loop).
        reload_log: the reload history (`sample.ReloadLog`).
        stopping: whether the daemon is shutting down.
        tick, history, history_bytes, max_clients, slow_client: see the module's constants (tests shorten them).
        clock: monotonic seconds, for the ring's age and slow clients (tests may inject their own).
    """

    def __init__(
        self,
        router: Router,
        reload_log: ReloadLog,
        stopping: Callable[[], bool],
        *,
        tick: float = TICK,
        history: float = HISTORY_SECONDS,
        history_bytes: int = HISTORY_BYTES,
        max_clients: int = MAX_CLIENTS,
        slow_client: float = SLOW_CLIENT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if tick <= 0:
            raise ValueError(f"the console's tick must be a positive number of seconds, got {tick!r}")
        self._router = router
        self._reload_log = reload_log
        self._stopping = stopping
        self.tick = tick
        self.history = history
        self.history_bytes = history_bytes
        self.max_clients = max_clients
        self.slow_client = slow_client
        self._clock = clock
        self._clients: set[ConsoleClient] = set()
        self._ring: deque[tuple[float, bytes]] = deque()  # (clock, event), oldest first
        self._ring_bytes = 0
        self._task: asyncio.Task[None] | None = None
        self._seen = 0  # reload events recorded when the last reading was taken
        self._seq = 0  # the last sample's number
        self._closed = False
        self.readings = 0  # readings taken (each costs the loop a copy): none while no client is connected

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("ticking" if self.ticking else "idle")
        return f"<Console [{state} | clients: {len(self._clients)}/{self.max_clients} | ring: {len(self._ring)}]>"

    @property
    def clients(self) -> int:
        """Event streams open now."""
        return len(self._clients)

    @property
    def kept(self) -> int:
        """Samples in the ring (what a new client gets first)."""
        return len(self._ring)

    @property
    def kept_bytes(self) -> int:
        """Their bytes (at most `history_bytes`)."""
        return self._ring_bytes

    @property
    def ticking(self) -> bool:
        """Whether the tick runs (it ends at its first turn after the last client went)."""
        return self._task is not None and not self._task.done()

    # --- clients ------------------------------------------------------------------------------------------------

    def attach(self, transport: asyncio.Transport) -> ConsoleClient:
        """Open an event stream on `transport`: write the response head, the `hello` event (the settings and the
        reload history) and the ring's samples, and send it each tick's sample from now on.

        Raises:
            ConsoleRefused: the daemon is shutting down, or `max_clients` streams are open already (503).
        """
        if self._closed or self._stopping():
            raise ConsoleRefused(503, "the daemon is shutting down: its live page is closed\n")
        if len(self._clients) >= self.max_clients:
            raise ConsoleRefused(
                503,
                f"the live page already has {len(self._clients)} event streams open, the most the daemon serves "
                f"(max_clients = {self.max_clients}): close a page (or a tab) that shows it, then reload\n",
            )
        client = ConsoleClient(transport)
        self._clients.add(client)
        self._prune(self._clock())  # samples older than `history` stay until a tick: not for this client
        transport.writelines([_HEAD, self._hello(), *(event for _, event in self._ring)])
        if not self.ticking:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="micromono-console")
            self._task.add_done_callback(_tick_ended)
        log.debug("console.client.attached", clients=len(self._clients))
        return client

    def detach(self, client: ConsoleClient) -> None:
        """Forget a client whose connection ended; nothing if it was forgotten already."""
        if client in self._clients:
            self._clients.discard(client)
            log.debug("console.client.detached", clients=len(self._clients), skipped=client.skipped)

    def pause_writing(self, client: ConsoleClient) -> None:
        """The client's connection has more buffered than its high-water mark: skip it until it drains."""
        if client.paused_at is None:
            client.paused_at = self._clock()

    def resume_writing(self, client: ConsoleClient) -> None:
        client.paused_at = None

    def close(self) -> None:
        """End every stream (each gets an `end` event first) and the tick; refuse new streams. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        end = sse("end", {"reason": "the daemon is shutting down"})
        for client in list(self._clients):
            if not client.transport.is_closing():
                client.transport.write(end)
                client.transport.close()
        self._clients.clear()
        self._ring.clear()
        self._ring_bytes = 0

    # --- the tick -------------------------------------------------------------------------------------------------

    def _hello(self) -> bytes:
        """The first event of a stream: the settings and the reload history (at most reload.RELOAD_HISTORY events:
        small enough to encode on the loop)."""
        recorded, history = self._reload_log()
        document = {
            "tick": self.tick,
            "history_seconds": self.history,
            "max_clients": self.max_clients,
            "clients": len(self._clients),
            "samples": len(self._ring),
            "reloads": [reload_document(seq, result) for seq, result in numbered_reloads(recorded, history)],
        }
        return sse("hello", document)

    async def _read(self) -> Reading:
        steps = read_steps(self._router, self._reload_log, self._seen, stopping=self._stopping(), step=Step(0.0005))
        while True:
            try:
                next(steps)
            except StopIteration as done:
                reading: Reading
                reading, self._seen = done.value
                self.readings += 1
                return reading
            await asyncio.sleep(0)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        samples = Samples(await self._read(), self._seq)  # the baseline: the first event's rates are over a tick
        due = loop.time()
        while True:
            due += self.tick
            now = loop.time()
            if due < now:  # late (the loop was held): the next tick one tick from now
                due = now + self.tick
            await asyncio.sleep(due - now)
            if not self._clients:
                return
            reading = await self._read()
            event = await loop.run_in_executor(None, samples.event, reading)
            self._seq = samples.seq
            self._publish(event)

    def _prune(self, now: float) -> None:
        ring = self._ring
        while ring and (ring[0][0] < now - self.history or self._ring_bytes > self.history_bytes):
            self._ring_bytes -= len(ring.popleft()[1])

    def _publish(self, event: bytes) -> None:
        now = self._clock()
        self._ring.append((now, event))
        self._ring_bytes += len(event)
        self._prune(now)
        for client in list(self._clients):
            if client.transport.is_closing():  # gone; its connection_lost (detach) is on its way
                self._clients.discard(client)
            elif client.paused_at is None:
                client.transport.write(event)
            elif now - client.paused_at > self.slow_client:
                log.warning(
                    "console.client.slow",
                    seconds=round(now - client.paused_at, 1),
                    skipped=client.skipped,
                    buffered=client.transport.get_write_buffer_size(),
                )
                self._clients.discard(client)
                client.transport.abort()
            else:
                client.skipped += 1


def _tick_ended(task: asyncio.Task[None]) -> None:
    """Log a tick that failed: its clients get no more samples, and the next client to connect starts it again."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("console.tick.failed", error=repr(exc), exc_info=exc)
