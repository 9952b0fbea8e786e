"""A test double of the daemon's WebSocket stream (docs/stream.md) serving chat rooms, for client tests.

Owns: a `websockets` asyncio server on 127.0.0.1 that behaves as the daemon serving the chat actor would, as far as
a client can tell: `/chat/<key>` routes to room `<key>`; every text message a client sends is published to every
client of the room as `{"seq":N,"data":"<text>"}` (a binary one as 8-byte little-endian N, then the bytes); N is per
room from 1; the last `ring` messages are kept per room and replayed after `?since=`, or one reset frame is sent
(docs/stream.md, *Resuming*); 404 for any other path, 400 for a bad `since`. A text message starting with `!`
is a command of the double, not published: `!direct <text>` sends `<text>` to the sender alone as a direct frame
(`{"data":"<text>"}`), `!close <code>` closes the sender's connection with that code. It is not micromono: never
measure it as micromono.

Run alone (for developing a client against it): `python tests/stream_double.py --port 8080`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import http
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

ROUTE = "/chat/"


@dataclass
class Room:
    """One room: its clients, its last sequence number and the ring of its last published frames."""

    ring_size: int
    seq: int = 0
    clients: set[ServerConnection] = field(default_factory=set)
    ring: collections.deque[tuple[int, str | bytes]] = field(default_factory=collections.deque)

    def publish(self, data: str | bytes) -> None:
        self.seq += 1
        if isinstance(data, str):
            frame: str | bytes = json.dumps({"seq": self.seq, "data": data}, separators=(",", ":"))
        else:
            frame = self.seq.to_bytes(8, "little") + data
        self.ring.append((self.seq, frame))
        while len(self.ring) > self.ring_size:
            self.ring.popleft()
        broadcast(self.clients, frame)

    def resume(self, since: int) -> list[str | bytes]:
        """What a client resuming after `since` gets before anything live: the ring after it, or one reset."""
        first = self.ring[0][0] if self.ring else self.seq + 1
        if first - 1 <= since <= self.seq:
            return [frame for seq, frame in self.ring if seq > since]
        return [json.dumps({"reset": True, "seq": self.seq}, separators=(",", ":"))]


class StreamDouble:
    """The double's state: its rooms. `serve()` runs its server."""

    def __init__(self, ring: int = 1000) -> None:
        self.ring = ring
        self.rooms: dict[str, Room] = {}

    def _refuse(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        if not parts.path.startswith(ROUTE) or not parts.path[len(ROUTE) :] or "/" in parts.path[len(ROUTE) :]:
            return connection.respond(http.HTTPStatus.NOT_FOUND, "no route\n")
        since = parse_qs(parts.query).get("since", [])
        if since and not (since[-1].isdigit()):
            return connection.respond(http.HTTPStatus.BAD_REQUEST, "bad since\n")
        return None

    async def _handle(self, connection: ServerConnection) -> None:
        parts = urlsplit(connection.request.path if connection.request else "/")
        room = self.rooms.setdefault(parts.path[len(ROUTE) :], Room(self.ring))
        since = parse_qs(parts.query).get("since", [])
        # Backlog and joining happen with no await between them, so no live message can fall between the two.
        for frame in room.resume(int(since[-1])) if since else []:
            broadcast([connection], frame)  # synchronous, unlike connection.send()
        room.clients.add(connection)
        try:
            async for message in connection:  # ends quietly at a normal close; an abrupt one raises, suppressed below
                if isinstance(message, str) and message.startswith("!"):
                    command, _, argument = message[1:].partition(" ")
                    if command == "direct":
                        await connection.send(json.dumps({"data": argument}, separators=(",", ":")))
                    elif command == "close":
                        await connection.close(int(argument), "closed by the double")
                        break
                    continue
                room.publish(message)
        except ConnectionClosed:
            pass
        finally:
            room.clients.discard(connection)

    @contextlib.asynccontextmanager
    async def serve(self, port: int = 0) -> AsyncIterator[Server]:
        """Serve on 127.0.0.1:port (0: a free one, see `server.sockets`) until the context exits."""
        async with serve(self._handle, "127.0.0.1", port, process_request=self._refuse, compression=None) as server:
            yield server


async def _main(port: int, ring: int) -> None:
    async with StreamDouble(ring).serve(port) as server:
        print(f"stream double on ws://127.0.0.1:{server.sockets[0].getsockname()[1]}{ROUTE}<room>", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ring", type=int, default=1000, help="messages kept per room (the daemon's stream_buffer)")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args.port, args.ring))
