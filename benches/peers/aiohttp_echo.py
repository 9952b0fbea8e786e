"""aiohttp + uvloop echo server: `POST /echo` answers 200 with the request body.

The aiohttp side of bench_ingress, and (through aiohttp_back.py) the callee of bench_call's aiohttp variant. It is
written the way an aiohttp service is usually written, with the access log off (a log line per request would
measure logging, not aiohttp). Binds 127.0.0.1 only; SIGTERM stops it (aiohttp's run_app handles the signal).
"""

from __future__ import annotations

import argparse

import uvloop
from aiohttp import web

HOST = "127.0.0.1"


async def echo(request: web.Request) -> web.Response:
    """Answer with the request body, unchanged."""
    return web.Response(body=await request.read())


def make_app() -> web.Application:
    """The application with its one route."""
    app = web.Application()
    app.router.add_post("/echo", echo)
    return app


def main(argv: list[str] | None = None) -> None:
    """Serve on 127.0.0.1:--port until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description="aiohttp + uvloop echo server (POST /echo)")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    web.run_app(
        make_app(),
        host=HOST,
        port=args.port,
        access_log=None,
        print=None,
        shutdown_timeout=1.0,  # the bench stops idle servers; do not wait 60 s for keep-alive clients
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
