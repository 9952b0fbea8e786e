"""bench_call's raw-TCP caller: `POST /run` with body N sends N frames in sequence to frames_back.py.

Each call writes one frame (4-byte big-endian length + the 64-byte payload) on a single loopback TCP connection,
opened at startup and kept, and reads the reply frame, checking it has 64 bytes. The calls are plain asyncio
streams on uvloop. The HTTP trigger is aiohttp (one request per measurement, whose cost the bench cancels by
subtracting the N=0 request): it answers 200 `ok N`, 400 for a bad body, 500 naming the failed call.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

import uvloop
from aiohttp import web

HOST: Final = "127.0.0.1"
MAX_DIGITS: Final = 9  # N fits in 32 bits, as in the WAT front
PAYLOAD: Final = b"micromono bench_call payload: 64 bytes, echoed by service 'back'"
FRAME: Final = len(PAYLOAD).to_bytes(4, "big") + PAYLOAD


@dataclass(slots=True)
class BackLink:
    """The one connection to the back."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


LINK: Final = web.AppKey("link", BackLink)
BACK_PORT: Final = web.AppKey("back_port", int)


def parse_n(text: str) -> int | None:
    """N from the request body, or None if it is not 1-9 ASCII digits."""
    if not (text.isascii() and text.isdigit()) or len(text) > MAX_DIGITS:
        return None
    return int(text)


async def run(request: web.Request) -> web.Response:
    """Make N frame round trips to the back in sequence, checking each reply's length."""
    n = parse_n(await request.text())
    if n is None:
        return web.Response(status=400, text="bad body: expected N as 1-9 ASCII digits")
    link = request.app[LINK]
    reader, writer = link.reader, link.writer
    for i in range(n):
        # No drain(): one frame is in flight at a time, so the write buffer never builds up.
        writer.write(FRAME)
        head = await reader.readexactly(4)
        reply = await reader.readexactly(int.from_bytes(head, "big"))
        if len(reply) != len(PAYLOAD):
            return web.Response(status=500, text=f"call failed: {len(reply)} bytes at call {i}")
    return web.Response(text=f"ok {n}")


async def back_link(app: web.Application) -> AsyncIterator[None]:
    """Connect to the back once at startup; close the connection at cleanup."""
    reader, writer = await asyncio.open_connection(HOST, app[BACK_PORT])
    app[LINK] = BackLink(reader, writer)
    try:
        yield
    finally:
        writer.close()


def make_app(back_port: int) -> web.Application:
    """The trigger application: route /run and the link to the back."""
    app = web.Application()
    app[BACK_PORT] = back_port
    app.cleanup_ctx.append(back_link)
    app.router.add_post("/run", run)
    return app


def main(argv: list[str] | None = None) -> None:
    """Serve on 127.0.0.1:--port, calling the back on 127.0.0.1:--back-port, until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description="length-prefixed frame caller for bench_call (POST /run)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--back-port", type=int, required=True)
    args = parser.parse_args(argv)
    web.run_app(
        make_app(args.back_port),
        host=HOST,
        port=args.port,
        access_log=None,
        print=None,
        shutdown_timeout=1.0,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
