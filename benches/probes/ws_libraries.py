"""Probe for the WebSocket issue: the two sans-I/O WebSocket libraries on micromono's hot path, side by side.

Not a benchmark of micromono: it decided which library the ingress's WebSocket side (micromono/ingress/websocket.py)
is built on. In one process, in memory (no sockets, no event loop), it drives the `websockets` package's
`ServerProtocol` and `wsproto`'s `WSConnection(ConnectionType.SERVER)` through the calls micromono's connection
makes, on the same bytes, and prints nanoseconds per operation (time.perf_counter_ns over `--n`-scaled loops, the
best of `--repeats`; the two libraries alternate inside each repeat, so both see the same moments of this shared
host) and the ratio wsproto / websockets:

- handshake: a browser's upgrade request (bytes) -> the 101 response (bytes), a new connection object each time;
- in: one masked client text frame, 32 B and 4 KiB, and 64 frames of 32 B in one read -> the message event, then
  -> its payload as UTF-8-checked bytes, what micromono gives the guest (websockets leaves text unchecked, so
  micromono decodes it; wsproto hands over a checked `str`, which micromono would encode back);
- out (the fan-out path, one publish -> N sends): a text frame of 64 B (a chat frame like
  `{"seq": 12345, "data": "hello"}`) and 4 KiB, from the `str` that actors.stream builds once per publish, -> the
  bytes to write (websockets: `send_text(frame.encode())` + `data_to_send()`, as WebSocketConnection.send does);
- ping -> the pong bytes (websockets answers by itself; with wsproto the caller sends `event.response()`);
- memory per idle connection object after its handshake (tracemalloc, `--connections`, default 10,000), as the
  library leaves it and with the handshake's leftovers dropped (websockets: the request's headers cleared, which
  its parser keeps alive; wsproto: only the frame-level `Connection` kept, not the h11 handshake around it);

then what each library does, tried here, with what matters to the choice: invalid UTF-8 in a text message, a
message over the size limit (1009), a fragmented message, a frame split across reads, the close handshake.
The client's frames are built once, masked, with websockets.frames (the client side of the same framing).

Usage: python benches/probes/ws_libraries.py [--quick] [--repeats R] [--connections N]
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
import tracemalloc
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    TextMessage,
)
from wsproto.events import Request as WsprotoRequest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _harness as h  # noqa: E402  (benches/_harness.py: the preamble every bench prints)

from micromono.config.spec import DEFAULT_WS_MAX_MESSAGE  # noqa: E402

MAX_SIZE = DEFAULT_WS_MAX_MESSAGE  # micromono's default ws_max_message (1 MiB)
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
REQUEST = (
    b"GET /chat/room-1 HTTP/1.1\r\n"
    b"Host: localhost:8080\r\n"
    b"Connection: Upgrade\r\n"
    b"Pragma: no-cache\r\n"
    b"Cache-Control: no-cache\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36\r\n"
    b"Upgrade: websocket\r\n"
    b"Origin: http://localhost:8080\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Accept-Language: en-US,en;q=0.9\r\n"
    b"Sec-WebSocket-Key: " + KEY + b"\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    b"\r\n"
)  # what Chromium sends; neither side here enables permessage-deflate (micromono does not)
ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455's example answer to KEY


def client_frame(opcode: Opcode, payload: bytes, fin: bool = True) -> bytes:
    """One frame as a client sends it: masked (a random key, drawn once here)."""
    return Frame(opcode, payload, fin).serialize(mask=True, extensions=[])


def text_payload(size: int) -> bytes:
    """`size` bytes of a JSON message, ASCII."""
    head = b'{"type": "say", "text": "'
    return head + b"x" * (size - len(head) - 2) + b'"}'


def out_frame(size: int) -> str:
    """A frame as actors.stream.published_frame builds it, `size` bytes of UTF-8."""
    head = '{"seq": 12345, "data": "'
    return head + "h" * (size - len(head) - 2) + '"}'


SMALL, LARGE = text_payload(32), text_payload(4096)
IN_SMALL, IN_LARGE = client_frame(Opcode.TEXT, SMALL), client_frame(Opcode.TEXT, LARGE)
IN_BATCH = IN_SMALL * 64
PING = client_frame(Opcode.PING, b"12345678")
OUT_SMALL, OUT_LARGE = out_frame(64), out_frame(4096)


# --- websockets: ServerProtocol, called as micromono/ingress/websocket.py calls it ---------------------------


def ws_open() -> tuple[ServerProtocol, list[bytes]]:
    protocol = ServerProtocol(max_size=MAX_SIZE)
    protocol.receive_data(REQUEST)
    for event in protocol.events_received():
        assert isinstance(event, Request)
        protocol.send_response(protocol.accept(event))
    return protocol, protocol.data_to_send()


def ws_handshake() -> None:
    ws_open()


def ws_open_lean() -> tuple[ServerProtocol, list[bytes]]:
    """ws_open, then the request's headers cleared: ServerProtocol.parse() keeps the request in its generator's
    frame for the connection's life (a local variable), ~4.5 KB of header strings a connection."""
    protocol = ServerProtocol(max_size=MAX_SIZE)
    protocol.receive_data(REQUEST)
    for event in protocol.events_received():
        assert isinstance(event, Request)
        protocol.send_response(protocol.accept(event))
        event.headers.clear()
    return protocol, protocol.data_to_send()


def ws_in_event(protocol: ServerProtocol, data: bytes) -> Callable[[], None]:
    def run() -> None:
        protocol.receive_data(data)
        for event in protocol.events_received():
            if isinstance(event, Frame) and event.opcode is Opcode.TEXT and event.fin:
                event.data  # noqa: B018
        protocol.data_to_send()

    return run


def ws_in_bytes(protocol: ServerProtocol, data: bytes) -> Callable[[], None]:
    def run() -> None:
        protocol.receive_data(data)
        for event in protocol.events_received():
            if isinstance(event, Frame) and event.opcode is Opcode.TEXT and event.fin:
                payload = bytes(event.data)
                payload.decode("utf-8")  # micromono checks text itself (WebSocketConnection._message)
        protocol.data_to_send()

    return run


def ws_out(protocol: ServerProtocol, frame: str) -> Callable[[], None]:
    def run() -> None:
        protocol.send_text(frame.encode())
        protocol.data_to_send()

    return run


def ws_ping(protocol: ServerProtocol) -> Callable[[], None]:
    def run() -> None:
        protocol.receive_data(PING)
        protocol.events_received()
        protocol.data_to_send()

    return run


# --- wsproto: WSConnection(SERVER), called the way micromono would have to -----------------------------------


def wp_open() -> tuple[WSConnection, bytes]:
    connection = WSConnection(ConnectionType.SERVER)
    connection.receive_data(REQUEST)
    out = b""
    for event in connection.events():
        assert isinstance(event, WsprotoRequest)
        out = connection.send(AcceptConnection())
    return connection, out


def wp_handshake() -> None:
    wp_open()


def wp_open_lean() -> tuple[Connection, bytes]:
    """wp_open, then only the frame-level `wsproto.connection.Connection` kept, the h11 handshake object dropped."""
    connection, out = wp_open()
    assert connection.connection is not None
    return connection.connection, out


def wp_in_event(connection: WSConnection, data: bytes) -> Callable[[], None]:
    def run() -> None:
        connection.receive_data(data)
        for event in connection.events():
            if isinstance(event, TextMessage) and event.message_finished:
                event.data  # noqa: B018

    return run


def wp_in_bytes(connection: WSConnection, data: bytes) -> Callable[[], None]:
    def run() -> None:
        connection.receive_data(data)
        for event in connection.events():
            if isinstance(event, TextMessage) and event.message_finished:
                event.data.encode()  # wsproto decoded (and so checked) it; the guest takes bytes

    return run


def wp_out(connection: WSConnection, frame: str) -> Callable[[], None]:
    def run() -> None:
        connection.send(Message(data=frame))

    return run


def wp_ping(connection: WSConnection) -> Callable[[], None]:
    def run() -> None:
        connection.receive_data(PING)
        for event in connection.events():
            if isinstance(event, Ping):
                connection.send(event.response())

    return run


# --- checks: both sides give the same answers on these bytes ---------------------------------------------------


def check() -> None:
    """Both libraries answer the handshake with 101 and the right key, read the frames back, write parseable frames."""
    for name, out in (("websockets", b"".join(ws_open()[1])), ("wsproto", wp_open()[1])):
        assert out.startswith(b"HTTP/1.1 101 "), (name, out)
        assert ACCEPT in out, (name, out)
        assert b"permessage-deflate" not in out, (name, out)
    protocol, _ = ws_open()
    protocol.receive_data(IN_BATCH + IN_LARGE + PING)
    frames = protocol.events_received()
    assert [bytes(f.data) for f in frames if isinstance(f, Frame) and f.opcode is Opcode.TEXT] == [SMALL] * 64 + [LARGE]
    assert protocol.data_to_send() == [Frame(Opcode.PONG, b"12345678").serialize(mask=False, extensions=[])]
    connection, _ = wp_open()
    connection.receive_data(IN_BATCH + IN_LARGE + PING)
    events = list(connection.events())
    texts = [e.data.encode() for e in events if isinstance(e, TextMessage)]
    assert texts == [SMALL] * 64 + [LARGE] and all(e.message_finished for e in events if isinstance(e, TextMessage))
    pings = [e for e in events if isinstance(e, Ping)]
    assert connection.send(pings[0].response()) == protocol_pong()
    for frame in (OUT_SMALL, OUT_LARGE):
        protocol.send_text(frame.encode())
        ws_bytes = b"".join(protocol.data_to_send())
        wp_bytes = connection.send(Message(data=frame))
        assert ws_bytes == wp_bytes == Frame(Opcode.TEXT, frame.encode()).serialize(mask=False, extensions=[])
    lean, _ = ws_open_lean()
    lean.receive_data(IN_SMALL)
    assert [bytes(f.data) for f in lean.events_received() if isinstance(f, Frame)] == [SMALL]
    bare, _ = wp_open_lean()
    bare.receive_data(IN_SMALL)
    assert [e.data.encode() for e in bare.events() if isinstance(e, TextMessage)] == [SMALL]
    assert len(OUT_SMALL.encode()) == 64 and len(OUT_LARGE.encode()) == 4096 and len(SMALL) == 32


def protocol_pong() -> bytes:
    return Frame(Opcode.PONG, b"12345678").serialize(mask=False, extensions=[])


# --- timing ----------------------------------------------------------------------------------------------------


def time_ops(cases: list[tuple[str, int, Callable[[], None], Callable[[], None]]], repeats: int) -> list[Any]:
    """Per case (label, n, websockets op, wsproto op): the best ns per op of each over `repeats`, alternating."""
    best: dict[tuple[int, int], float] = {}
    for _ in range(repeats):
        for index, (_, n, *ops) in enumerate(cases):
            for side, op in enumerate(ops):
                gc.collect()
                loops = range(n)
                start = time.perf_counter_ns()
                for _ in loops:
                    op()
                elapsed = (time.perf_counter_ns() - start) / n
                best[index, side] = min(best.get((index, side), math.inf), elapsed)
    return [(label, best[i, 0], best[i, 1]) for i, (label, *_) in enumerate(cases)]


def memory_per_connection(open_one: Callable[[], Any], count: int) -> float:
    """Bytes traced per connection object held after its handshake (its response already taken)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    held = [open_one()[0] for _ in range(count)]
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(held) == count
    return (after - before) / count


# --- what each library does ------------------------------------------------------------------------------------


def ws_behaviour() -> dict[str, str]:
    found = {}
    protocol, _ = ws_open()
    protocol.receive_data(client_frame(Opcode.TEXT, b"\xff\xfe bad"))
    events = protocol.events_received()
    found["invalid UTF-8 text"] = (
        f"delivered as bytes ({len(events)} frame), no close: the caller checks (micromono closes 1007)"
        if events and not protocol.data_to_send()
        else f"closed: {protocol.close_sent}"
    )
    protocol = ServerProtocol(max_size=64 * 1024)
    protocol.receive_data(REQUEST)
    request = protocol.events_received()[0]
    assert isinstance(request, Request)
    protocol.send_response(protocol.accept(request))
    protocol.data_to_send()
    protocol.receive_data(client_frame(Opcode.TEXT, b"x" * 40_000, fin=False))
    protocol.receive_data(client_frame(Opcode.CONT, b"x" * 40_000))  # 80,000 B across two fragments
    protocol.events_received()
    sent = protocol.close_sent
    found["message over the size limit"] = (
        f"closes by itself with {int(sent.code)} ({sent.reason}), counting across fragments" if sent else "not enforced"
    )
    protocol, _ = ws_open()
    protocol.receive_data(
        client_frame(Opcode.TEXT, b"ab", fin=False)
        + client_frame(Opcode.CONT, b"cd", fin=False)
        + client_frame(Opcode.CONT, b"ef")
    )
    frames = [f for f in protocol.events_received() if isinstance(f, Frame)]
    found["fragmented message (3 frames)"] = (
        f"{len(frames)} Frame events ({', '.join(f'{f.opcode.name} fin={f.fin}' for f in frames)}): "
        "the caller joins them (micromono does)"
    )
    protocol, _ = ws_open()
    protocol.receive_data(IN_LARGE[:2000])
    first = protocol.events_received()
    protocol.receive_data(IN_LARGE[2000:])
    second = protocol.events_received()
    found["one 4 KiB frame split over 2 reads"] = f"{len(first)} event, then {len(second)}: buffered until whole"
    protocol, _ = ws_open()
    protocol.receive_data(PING)
    protocol.events_received()
    found["ping"] = "answered by the library (pong in data_to_send)" if protocol.data_to_send() else "not answered"
    protocol, _ = ws_open()
    protocol.receive_data(client_frame(Opcode.CLOSE, b"\x03\xe8bye"))
    protocol.events_received()
    out = protocol.data_to_send()
    found["client's close"] = (
        f"answered by the library (close frame echoed, then end of stream b''); state {protocol.state.name}"
        if len(out) == 2 and out[1] == b""
        else f"{out}"
    )
    return found


def wp_behaviour() -> dict[str, str]:
    found = {}
    connection, _ = wp_open()
    connection.receive_data(client_frame(Opcode.TEXT, b"\xff\xfe bad"))
    events = list(connection.events())
    found["invalid UTF-8 text"] = (
        f"CloseConnection({int(events[0].code)}) event: the caller sends the close"
        if events and isinstance(events[0], CloseConnection)
        else f"{events}"
    )
    connection, _ = wp_open()
    connection.receive_data(client_frame(Opcode.TEXT, b"x" * (2 * MAX_SIZE)))
    events = list(connection.events())
    size = sum(len(e.data) for e in events if isinstance(e, TextMessage))
    found["message over the size limit"] = (
        f"no limit at all: a 2 MiB frame came through ({size:,} B, {len(events)} event); the caller counts "
        "and closes 1009"
    )
    connection, _ = wp_open()
    connection.receive_data(
        client_frame(Opcode.TEXT, b"ab", fin=False)
        + client_frame(Opcode.CONT, b"cd", fin=False)
        + client_frame(Opcode.CONT, b"ef")
    )
    events = list(connection.events())
    found["fragmented message (3 frames)"] = (
        f"{len(events)} TextMessage events (message_finished="
        f"{', '.join(str(e.message_finished) for e in events if isinstance(e, Message))}): the caller joins them"
    )
    connection, _ = wp_open()
    connection.receive_data(IN_LARGE[:2000])
    first = list(connection.events())
    connection.receive_data(IN_LARGE[2000:])
    second = list(connection.events())
    found["one 4 KiB frame split over 2 reads"] = (
        f"{len(first)} event ({sum(len(e.data) for e in first if isinstance(e, Message))} B, frame_finished="
        f"{[e.frame_finished for e in first if isinstance(e, Message)]}), then {len(second)}: partial payloads, "
        "the caller joins them"
    )
    connection, _ = wp_open()
    connection.receive_data(PING)
    events = list(connection.events())
    found["ping"] = (
        "Ping event: the caller sends event.response()" if events and isinstance(events[0], Ping) else f"{events}"
    )
    connection, _ = wp_open()
    connection.receive_data(client_frame(Opcode.CLOSE, b"\x03\xe8bye"))
    events = list(connection.events())
    found["client's close"] = (
        f"CloseConnection({int(events[0].code)}) event, state {connection.state.name}: the caller sends "
        "event.response() and closes the socket"
        if events and isinstance(events[0], CloseConnection)
        else f"{events}"
    )
    assert not any(isinstance(e, BytesMessage) for e in events)
    return found


# --- main ------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few loops, 2 repeats, 1,000 connections")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats, the best kept (default 7)")
    parser.add_argument("--connections", type=int, default=None, help="connections held for the memory figure")
    args = parser.parse_args()
    scale = 0.02 if args.quick else 1.0
    repeats = args.repeats or (2 if args.quick else 7)
    connections = args.connections or (1000 if args.quick else 10_000)
    import websockets.frames

    h.print_preamble(
        "ws_libraries: websockets ServerProtocol vs wsproto WSConnection, in memory",
        {
            "python": sys.version.split()[0],
            "websockets": version("websockets"),
            "wsproto": version("wsproto"),
            "h11": version("h11"),
            "websockets masking": (
                "C" if "speedups" in websockets.frames.apply_mask.__module__ else "pure Python"  # type: ignore[attr-defined]
            ),
        },
        {"repeats": repeats, "connections": connections, "max_size": MAX_SIZE, "scale": scale},
    )
    check()

    def n(count: int) -> int:
        return max(10, int(count * scale))

    ws, _ = ws_open()
    wp, _ = wp_open()
    cases: list[tuple[str, int, Callable[[], None], Callable[[], None]]] = [
        ("handshake: request -> 101 bytes (new connection)", n(5_000), ws_handshake, wp_handshake),
        ("in: 32 B text frame -> event", n(50_000), ws_in_event(ws, IN_SMALL), wp_in_event(wp, IN_SMALL)),
        ("in: 32 B text frame -> checked bytes", n(50_000), ws_in_bytes(ws, IN_SMALL), wp_in_bytes(wp, IN_SMALL)),
        ("in: 4 KiB text frame -> event", n(10_000), ws_in_event(ws, IN_LARGE), wp_in_event(wp, IN_LARGE)),
        ("in: 4 KiB text frame -> checked bytes", n(10_000), ws_in_bytes(ws, IN_LARGE), wp_in_bytes(wp, IN_LARGE)),
        ("in: 64 x 32 B in one read -> checked bytes", n(1_000), ws_in_bytes(ws, IN_BATCH), wp_in_bytes(wp, IN_BATCH)),
        ("out: 64 B text str -> frame bytes", n(50_000), ws_out(ws, OUT_SMALL), wp_out(wp, OUT_SMALL)),
        ("out: 4 KiB text str -> frame bytes", n(20_000), ws_out(ws, OUT_LARGE), wp_out(wp, OUT_LARGE)),
        ("ping -> pong bytes", n(50_000), ws_ping(ws), wp_ping(wp)),
    ]
    rows = time_ops(cases, repeats)
    per_message = ("  the same, per message", rows[5][1] / 64, rows[5][2] / 64)
    rows.insert(6, per_message)
    memories = [
        (
            f"memory per idle connection, bytes ({connections:,} held)",
            memory_per_connection(ws_open, connections),
            memory_per_connection(wp_open, connections),
        ),
        (
            "  the same, handshake leftovers dropped",
            memory_per_connection(ws_open_lean, connections),
            memory_per_connection(wp_open_lean, connections),
        ),
    ]

    width = max(len(label) for label, *_ in [*rows, *memories])
    print(f"{'ns per operation, best of ' + str(repeats):<{width}}  {'websockets':>10}  {'wsproto':>10}  wsproto/ws")
    for label, ws_ns, wp_ns in rows:
        print(f"{label:<{width}}  {ws_ns:>10,.0f}  {wp_ns:>10,.0f}  {wp_ns / ws_ns:>9.2f}x")
    for label, ws_b, wp_b in memories:
        print(f"{label:<{width}}  {ws_b:>10,.0f}  {wp_b:>10,.0f}  {wp_b / ws_b:>9.2f}x")
        print(
            f"{'    x 100,000 connections, MiB':<{width}}  {ws_b * 1e5 / 2**20:>10,.0f}  {wp_b * 1e5 / 2**20:>10,.0f}"
        )

    print("\nwhat each library does (tried above, on the same bytes)")
    for name, found in (("websockets", ws_behaviour()), ("wsproto", wp_behaviour())):
        print(f"  {name}:")
        for what, result in found.items():
            print(f"    {what}: {result}")


if __name__ == "__main__":
    main()
