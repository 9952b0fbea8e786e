"""bench_call's raw-TCP callee: echoes length-prefixed frames on asyncio streams + uvloop.

A frame is a 4-byte big-endian length and that many payload bytes; the reply to each frame is the same frame.
This is about the least a Python service can do per message over TCP, so it is the "hand-rolled RPC" baseline.
127.0.0.1 only; SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Final

import uvloop

HOST: Final = "127.0.0.1"
MAX_FRAME: Final = 1 << 20  # a larger length is a broken peer: drop the connection


async def echo_frames(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo frames on one connection until the peer closes it."""
    try:
        while True:
            head = await reader.readexactly(4)
            length = int.from_bytes(head, "big")
            if length > MAX_FRAME:
                break
            payload = await reader.readexactly(length)
            # No drain(): the caller waits for each reply before sending again, so the buffer never builds up.
            writer.write(head + payload)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # the peer went away
    finally:
        writer.close()


async def serve(port: int) -> None:
    """Accept connections on 127.0.0.1:port until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await asyncio.start_server(echo_frames, HOST, port)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    """Parse --port and serve on uvloop."""
    parser = argparse.ArgumentParser(description="length-prefixed frame echo server (asyncio streams + uvloop)")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(args.port))


if __name__ == "__main__":
    main()
