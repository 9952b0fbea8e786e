"""bench_ingress's floor: the cheapest honest Python HTTP echo, an asyncio.Protocol on uvloop with httptools.

`POST /echo` answers 200 with the request body; anything else is 404. It frames its responses with the header kinds
micromono sends (`content-length`, `date` refreshed once a second, `server`, and the `content-type` the bench's echo
guest returns), keeps connections alive as `should_keep_alive()` says, answers pipelined requests in order (each
is answered inside the parser callback that completes it), refuses a body over MAX_BODY with 413, and a malformed
request with 400, then closes. Nothing else: no routing, no logging, no limits on the head beyond httptools' own.
This is the reference point of what any Python server can reach on the machine, not a product.
127.0.0.1 only; SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import signal
import time
from email.utils import formatdate
from typing import Final, cast

import httptools
import uvloop

HOST: Final = "127.0.0.1"
MAX_BODY: Final = 1 << 20  # 1 MiB: a larger body is answered 413 and the connection closed
SERVER: Final = b"proto-echo"
_OK: Final = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%scontent-type: application/octet-stream\r\n\r\n"
_ERROR: Final = b"HTTP/1.1 %s\r\ncontent-length: 0\r\n%s%s\r\n"
_CLOSE: Final = b"connection: close\r\n"


class Clock:
    """The `date` and `server` header lines, refreshed once a second by a loop timer (no clock read per request)."""

    def __init__(self) -> None:
        self.lines = b""
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Refresh the lines now and at the next whole second of the loop's clock."""
        self.lines = b"date: %s\r\nserver: %s\r\n" % (formatdate(time.time(), usegmt=True).encode(), SERVER)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(math.floor(loop.time()) + 1.0, self.start)

    def stop(self) -> None:
        """Cancel the refresh timer."""
        if self._timer is not None:
            self._timer.cancel()


class EchoProtocol(asyncio.Protocol):
    """One connection: httptools parses, `on_message_complete` answers, in request order."""

    __slots__ = ("clock", "connections", "transport", "parser", "url", "body", "refused")

    def __init__(self, clock: Clock, connections: set[EchoProtocol]) -> None:
        self.clock = clock
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: bytes | bytearray = b""
        self.refused = False  # a request was refused: ignore what follows, the connection is closing

    # --- asyncio.Protocol ---------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Remember the transport (for writing) and the connection (so a stop can close it)."""
        self.transport = cast(asyncio.Transport, transport)  # uvloop's TCPTransport does not subclass it
        self.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection."""
        self.connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        """Feed the parser; its callbacks answer each complete request."""
        if self.refused:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.close()  # what follows would be another protocol
        except httptools.HttpParserError:
            if not self.refused:  # (a refusal inside a callback raised to stop the parser; already answered)
                self.refuse(b"400 Bad Request")

    def pause_writing(self) -> None:
        """The client does not read its responses: stop reading its requests."""
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        """The client reads again: so do we."""
        if self.transport is not None:
            self.transport.resume_reading()

    # --- httptools callbacks ------------------------------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        """Collect the request target (httptools may deliver it in pieces)."""
        self.url += url

    def on_body(self, chunk: bytes) -> None:
        """Collect the body, refusing it past MAX_BODY."""
        body = self.body
        if not body:
            self.body = chunk
        elif type(body) is bytes:
            self.body = bytearray(body) + chunk  # from the second chunk on, append without quadratic copies
        else:
            body += chunk
        if len(self.body) > MAX_BODY:
            self.refuse(b"413 Content Too Large")
            raise httptools.HttpParserError("body too large")  # stops the parser

    def on_message_complete(self) -> None:
        """Answer the request: its body for `POST /echo`, 404 for anything else."""
        url, body = self.url, self.body
        self.url, self.body = b"", b""
        transport = self.transport
        if transport is None:
            return
        keep_alive = self.parser.should_keep_alive()
        if url.partition(b"?")[0] == b"/echo" and self.parser.get_method() == b"POST":
            head = _OK % (len(body), self.clock.lines)
            if not keep_alive:
                head = head[:-2] + _CLOSE + b"\r\n"
            transport.write(head + body)
        else:
            transport.write(_ERROR % (b"404 Not Found", self.clock.lines, b"" if keep_alive else _CLOSE))
        if not keep_alive:
            self.close()

    # --- closing ------------------------------------------------------------------------------------------------

    def refuse(self, status: bytes) -> None:
        """Answer `status` with `connection: close`, then close after the response is written."""
        self.refused = True
        if self.transport is not None:
            self.transport.write(_ERROR % (status, self.clock.lines, _CLOSE))
            self.close()

    def close(self) -> None:
        """Close the connection once what was written has been sent."""
        if self.transport is not None:
            self.transport.close()
            self.transport = None


async def serve(port: int) -> None:
    """Accept connections on 127.0.0.1:port until SIGTERM or SIGINT, then close them all."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    clock = Clock()
    clock.start()
    connections: set[EchoProtocol] = set()
    server = await loop.create_server(lambda: EchoProtocol(clock, connections), HOST, port)
    try:
        await stop.wait()
    finally:
        server.close()
        for conn in list(connections):
            conn.close()
        clock.stop()


def main(argv: list[str] | None = None) -> None:
    """Parse --port and serve on uvloop."""
    parser = argparse.ArgumentParser(description="asyncio.Protocol + httptools + uvloop echo server (POST /echo)")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(args.port))


if __name__ == "__main__":
    main()
