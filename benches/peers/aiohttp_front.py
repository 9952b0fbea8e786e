"""bench_call's aiohttp caller: `POST /run` with body N makes N sequential calls to the back's `POST /echo`.

Each call sends the same 64-byte payload over one keep-alive `ClientSession` connection (`limit=1`) and checks
the reply is 200 with 64 bytes. Answers 200 `ok N`, 400 for a body that is not a decimal N, or 500 naming the
failed call. aiohttp + uvloop, 127.0.0.1 only, access log off.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from typing import Final

import aiohttp
import uvloop
from aiohttp import web
from yarl import URL

HOST: Final = "127.0.0.1"
MAX_DIGITS: Final = 9  # N fits in 32 bits, as in the WAT front
PAYLOAD: Final = b"micromono bench_call payload: 64 bytes, echoed by service 'back'"
SESSION: Final = web.AppKey("session", aiohttp.ClientSession)
BACK_URL: Final = web.AppKey("back_url", URL)


def parse_n(text: str) -> int | None:
    """N from the request body, or None if it is not 1-9 ASCII digits."""
    if not (text.isascii() and text.isdigit()) or len(text) > MAX_DIGITS:
        return None
    return int(text)


async def run(request: web.Request) -> web.Response:
    """Make N calls to the back in sequence, checking each reply."""
    n = parse_n(await request.text())
    if n is None:
        return web.Response(status=400, text="bad body: expected N as 1-9 ASCII digits")
    session, url = request.app[SESSION], request.app[BACK_URL]
    for i in range(n):
        async with session.post(url, data=PAYLOAD) as resp:
            reply = await resp.read()
        if resp.status != 200 or len(reply) != len(PAYLOAD):
            return web.Response(status=500, text=f"call failed: status {resp.status}, {len(reply)} bytes at call {i}")
    return web.Response(text=f"ok {n}")


async def client_session(app: web.Application) -> AsyncIterator[None]:
    """One client session for the app's lifetime, holding at most one (keep-alive) connection."""
    connector = aiohttp.TCPConnector(limit=1, keepalive_timeout=300.0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60.0)) as session:
        app[SESSION] = session
        yield


def make_app(back_port: int) -> web.Application:
    """The application: route /run, a client session, the back's URL."""
    app = web.Application()
    app[BACK_URL] = URL.build(scheme="http", host=HOST, port=back_port, path="/echo")
    app.cleanup_ctx.append(client_session)
    app.router.add_post("/run", run)
    return app


def main(argv: list[str] | None = None) -> None:
    """Serve on 127.0.0.1:--port, calling the back on 127.0.0.1:--back-port, until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description="aiohttp + uvloop caller for bench_call (POST /run)")
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
