"""WebSockets to actors in a real daemon (docs/stream.md): clients on real loopback sockets (the `websockets`
package's client), the actor a WAT fixture (`tests/fixtures/ws_room.wat`: it publishes what it is sent, and a few
prefixed messages do the other calls). Ordering across clients, resuming after a dropped connection, the reset,
hibernation and hot swaps with sockets open, and every limit with its close code."""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from conftest import EXAMPLES_BUILD, ROOT, fixture, http, make_config, running
from micromono.daemon import Daemon

sys.path.insert(0, str(ROOT / "sdk" / "python"))
from micromono_stream import Direct, Published, StreamClient  # noqa: E402

ROOM = fixture("ws_room.wat")
#: An upgrade request by hand, for the tests that need the raw socket.
UPGRADE = (
    b"GET /chat/r HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def room(**keys: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"kind": "actor", "wasm": ROOM, "routes": ["/chat/{key}"], "websocket": True}
    entry.update(keys)
    return entry


@asynccontextmanager
async def client(daemon: Daemon, path: str, **options: Any) -> AsyncIterator[ClientConnection]:
    host, port = daemon.addresses[0]
    async with websockets.connect(f"ws://{host}:{port}{path}", open_timeout=10, **options) as connection:
        yield connection


async def published(connection: ClientConnection, n: int = 1) -> list[tuple[int, str]]:
    """The next `n` published messages, as (seq, data)."""
    got = []
    for _ in range(n):
        frame = json.loads(await asyncio.wait_for(connection.recv(), timeout=10))
        got.append((frame["seq"], frame["data"]))
    return got


async def closed_with(connection: ClientConnection) -> int | None:
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(connection.recv(), timeout=10)
    return connection.close_code


async def test_clients_of_one_room_see_every_message_in_one_order(tmp_path: Path) -> None:
    async with (
        running(make_config(tmp_path, {"room": room()})) as daemon,
        client(daemon, "/chat/lobby") as a,
        client(daemon, "/chat/lobby") as b,
        client(daemon, "/chat/other") as elsewhere,
    ):
        await asyncio.gather(*(a.send(f"a{i}") for i in range(20)), *(b.send(f"b{i}") for i in range(20)))
        seen_a, seen_b = await published(a, 40), await published(b, 40)
        assert seen_a == seen_b  # one total order
        assert [seq for seq, _ in seen_a] == list(range(1, 41))
        assert [d for _, d in seen_a if d[0] == "a"] == [f"a{i}" for i in range(20)]  # each sender's in order
        await b.send("!only for b")
        direct = await asyncio.wait_for(b.recv(), timeout=10)
        assert direct == '{"data": "only for b"}'  # unnumbered, to b alone, and saying so
        await elsewhere.send("hi")
        assert await published(elsewhere) == [(1, "hi")]  # another actor, its own numbering


async def test_a_direct_message_says_so_whatever_it_holds(tmp_path: Path) -> None:
    """What an actor sends one connection (ws_send) cannot pass for a published message: text shaped exactly like a
    numbered frame and binary of 8 bytes or more reach the Python client as Direct, and its resume position stays."""
    forged_text = '{"seq": 5, "data": "x"}'
    forged_bytes = (9).to_bytes(8, "little") + b"bytes"
    async with running(make_config(tmp_path, {"room": room()})) as daemon:
        host, port = daemon.addresses[0]
        async with client(daemon, "/chat/raw") as raw:  # the frames on the wire
            await raw.send("!" + forged_text)
            assert await asyncio.wait_for(raw.recv(), timeout=10) == json.dumps({"data": forged_text})
            await raw.send(b"!" + forged_bytes)
            assert await asyncio.wait_for(raw.recv(), timeout=10) == bytes(8) + forged_bytes
        async with StreamClient(f"ws://{host}:{port}/chat/r") as stream:
            await stream.send("hello")
            assert await asyncio.wait_for(stream.recv(), timeout=10) == Published(1, "hello")
            await stream.send("!" + forged_text)
            assert await asyncio.wait_for(stream.recv(), timeout=10) == Direct(forged_text)
            await stream.send(b"!" + forged_bytes)
            assert await asyncio.wait_for(stream.recv(), timeout=10) == Direct(forged_bytes)
            await stream.send(b"!")  # an empty binary message: the 8 zero bytes alone
            assert await asyncio.wait_for(stream.recv(), timeout=10) == Direct(b"")
            assert stream.last_seq == 1 and stream.protocol_errors == 0
            await stream.send("next")
            assert await asyncio.wait_for(stream.recv(), timeout=10) == Published(2, "next")
        async with StreamClient(f"ws://{host}:{port}/chat/r", since=1) as resumed:  # direct ones are not resumed
            assert await asyncio.wait_for(resumed.recv(), timeout=10) == Published(2, "next")


async def test_a_client_resumes_after_a_dropped_connection_and_misses_nothing(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, {"room": room()})) as daemon, client(daemon, "/chat/r") as sender:
        async with client(daemon, "/chat/r") as reader:
            await sender.send("one")
            last = (await published(reader))[-1][0]
        for i in range(5):  # while the reader is away
            await sender.send(f"missed {i}")
        await published(sender, 6)
        async with client(daemon, f"/chat/r?since={last}") as reader:
            assert await published(reader, 5) == [(2 + i, f"missed {i}") for i in range(5)]
            await sender.send("live")
            assert await published(reader) == [(7, "live")]


async def test_a_gap_older_than_the_ring_gets_one_reset(tmp_path: Path) -> None:
    config = make_config(tmp_path, {"room": room(stream_buffer=3)})
    async with running(config) as daemon, client(daemon, "/chat/r") as sender:
        for i in range(6):
            await sender.send(f"m{i}")
        await published(sender, 6)
        async with client(daemon, "/chat/r?since=1") as reader:  # 2 is gone: the ring holds 4..6
            assert json.loads(await asyncio.wait_for(reader.recv(), timeout=10)) == {"reset": True, "seq": 6}
            await sender.send("next")
            assert await published(reader) == [(7, "next")]
        async with client(daemon, "/chat/r?since=4") as reader:  # 5..7 are kept
            assert [seq for seq, _ in await published(reader, 3)] == [5, 6, 7]
        async with client(daemon, "/chat/r?since=99") as reader:  # newer than anything: a restart, say
            assert json.loads(await asyncio.wait_for(reader.recv(), timeout=10)) == {"reset": True, "seq": 7}


async def test_sockets_stay_open_while_the_actor_hibernates_and_across_a_hot_swap(tmp_path: Path) -> None:
    wasm = tmp_path / "room.wat"
    shutil.copy(ROOM, wasm)
    config = make_config(tmp_path, {"room": room(wasm=wasm, idle_timeout=30.0)}, {"watch": True})
    async with running(config) as daemon:
        keyed = daemon.router.keyed["room"]
        async with client(daemon, "/chat/r") as a, client(daemon, "/chat/r") as b:
            await a.send("before")
            assert await published(a) == await published(b) == [(1, "before")]
            assert keyed.sweep(time.monotonic() + 31) == 1 and not keyed.actors  # hibernated, sockets open
            await a.send("revived")
            assert await published(a) == await published(b) == [(2, "revived")]
            before = daemon.router.slots["room"].current
            tmp = wasm.with_name("room.tmp")
            tmp.write_text(ROOM.read_text() + "\n;; another build\n")
            os.replace(tmp, wasm)
            for _ in range(500):
                if daemon.router.slots["room"].current is not before:
                    break
                await asyncio.sleep(0.01)
            assert daemon.router.slots["room"].current is not before
            await b.send("after the swap")
            assert await published(a) == await published(b) == [(3, "after the swap")]


async def test_nothing_of_a_failed_message_is_sent(tmp_path: Path) -> None:
    config = make_config(tmp_path, {"room": room(max_failures=100)})
    async with running(config) as daemon, client(daemon, "/chat/r") as a:
        await a.send("trap")  # publishes, then traps
        await a.send("ok")
        assert await published(a) == [(1, "ok")]


async def test_tags_an_actor_closing_a_connection_and_a_refused_open(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, {"room": room()})) as daemon:
        async with client(daemon, "/chat/r") as tagged, client(daemon, "/chat/r") as plain:
            await tagged.send("#t")
            await plain.send("@tfor t only")
            await plain.send("for all")
            assert await published(tagged, 2) == [(1, "for t only"), (2, "for all")]
            assert await published(plain) == [(2, "for all")]  # a gap, not a loss
            await plain.send("x")
            assert await closed_with(plain) == 4444
        async with client(daemon, "/chat/r?refuse") as refused:
            assert await closed_with(refused) == 1008


async def test_limits_close_with_their_codes(tmp_path: Path) -> None:
    config = make_config(tmp_path, {"room": room(ws_max_message=100, ws_max_connections=2)}, {"ws_max_connections": 3})
    async with running(config) as daemon:
        async with client(daemon, "/chat/a", max_size=None) as big:
            await big.send("x" * 101)
            assert await closed_with(big) == 1009
        async with client(daemon, "/chat/a") as binary:
            await binary.send(b"\xff\xfe not utf-8")  # binary: any bytes; published with its seq in front
            assert (
                await asyncio.wait_for(binary.recv(), timeout=10) == (1).to_bytes(8, "little") + b"\xff\xfe not utf-8"
            )
            await binary.send("ok")
            assert await published(binary) == [(2, "ok")]
        host, port = daemon.addresses[0]
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(UPGRADE.replace(b"/chat/r", b"/chat/a"))
        await reader.readuntil(b"\r\n\r\n")
        writer.write(bytes([0x81, 0x82, 0, 0, 0, 0, 0xFF, 0xFE]))  # a masked text frame that is not UTF-8
        data = await asyncio.wait_for(reader.read(64), timeout=10)
        assert data[0] == 0x88 and int.from_bytes(data[2:4], "big") == 1007
        writer.close()
        async with client(daemon, "/chat/b"), client(daemon, "/chat/b"):
            with pytest.raises(InvalidStatus) as refused:
                async with client(daemon, "/chat/b"):
                    pass
            assert refused.value.response.status_code == 503  # the actor's ws_max_connections
            async with client(daemon, "/chat/c"):
                with pytest.raises(InvalidStatus):
                    async with client(daemon, "/chat/d"):  # the daemon's ws_max_connections
                        pass


async def test_a_silent_client_is_pinged_and_closed_only_if_it_does_not_answer(tmp_path: Path) -> None:
    """After half of ws_idle_timeout without a byte, each connection gets one ping; one that answers (the Python
    client, which only listens) stays open past the whole timeout, one that does not (a raw socket) is closed with
    4000 once its ping has gone unanswered for the other half. The sweep is run by hand, on a fake clock."""
    config = make_config(tmp_path, {"room": room(ws_idle_timeout=100.0)})
    async with running(config) as daemon:
        assert daemon.ingress is not None
        hub = daemon.ingress.websockets
        now = time.monotonic()
        hub.clock = lambda: now
        host, port = daemon.addresses[0]
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(UPGRADE.replace(b"/chat/r", b"/chat/deaf"))
        await reader.readuntil(b"\r\n\r\n")
        async with StreamClient(f"ws://{host}:{port}/chat/listener", ping_interval=None) as listener:
            for _ in range(500):
                if len(hub.connections) == 2:
                    break
                await asyncio.sleep(0.01)
            deaf, answering = sorted(hub.connections.values(), key=lambda c: c.key)
            assert (deaf.key, answering.key) == ("deaf", "listener")

            now += 49
            assert hub.close_idle(now) == 0 and deaf.pinged_at == answering.pinged_at == -math.inf  # not yet
            now += 1
            assert hub.close_idle(now) == 0 and deaf.pinged_at == answering.pinged_at == now  # half: pinged
            assert await asyncio.wait_for(reader.readexactly(2), timeout=10) == b"\x89\x00"  # an empty ping
            for _ in range(500):
                if answering.last_seen == now:  # its pong, received on the moved clock
                    break
                await asyncio.sleep(0.01)
            assert answering.last_seen == now
            now += 30
            assert hub.close_idle(now) == 0 and deaf.pinged_at == now - 30  # one ping per silence
            now += 20  # the whole timeout since either was heard from; the deaf one's ping unanswered for half
            assert hub.close_idle(now) == 1
            closing = await asyncio.wait_for(reader.readexactly(4), timeout=10)
            assert closing[0] == 0x88 and int.from_bytes(closing[2:4], "big") == 4000
            assert daemon.router.keyed["room"].stream_counters.closes == {4000: 1}
            assert answering.pinged_at == now  # silent for half again since its pong: pinged again, not closed
            await listener.send("still here")
            assert await asyncio.wait_for(listener.recv(), timeout=10) == Published(1, "still here")
            assert listener.connected and answering.key in {c.key for c in hub.connections.values()}
        writer.close()


async def test_a_slow_client_is_closed(tmp_path: Path) -> None:
    config = make_config(tmp_path, {"room": room(ws_max_buffered="64KiB")})
    async with running(config) as daemon:
        assert daemon.ingress is not None
        # A client that stops reading (a small receive buffer, and it does not read): the daemon closes it with
        # 4008 once 64 KiB wait for it.
        host, port = daemon.addresses[0]
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, port))
        slow_reader, slow_writer = await asyncio.open_connection(sock=sock, limit=1024)
        slow_writer.write(UPGRADE)
        await slow_reader.readuntil(b"\r\n\r\n")
        slow_writer.transport.pause_reading()
        counters = daemon.router.keyed["room"].stream_counters
        async with client(daemon, "/chat/r", max_size=None) as sender:
            for _ in range(500):
                if counters.closes.get(4008):
                    break
                await sender.send("y" * 60_000)
                await published(sender)
        assert counters.closes.get(4008) == 1
        slow_writer.close()


async def test_an_actor_service_without_websockets_refuses_the_upgrade(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, {"room": room(websocket=False)})) as daemon:
        with pytest.raises(InvalidStatus) as refused:
            async with client(daemon, "/chat/r"):
                pass
        assert refused.value.response.status_code == 403
        assert (await http(daemon.addresses[0], "GET", "/chat/r")).status == 200  # plain HTTP still served


async def test_a_message_released_later_never_takes_the_next_ones_sends(tmp_path: Path) -> None:
    """The probe's open writes to storage, so its outcome waits for a commit while the client's first messages run:
    each publish leaves once, with its own message (the output gate must hand each message its own sends)."""
    probe = {
        "kind": "actor",
        "wasm": EXAMPLES_BUILD / "actor_probe.wasm",
        "routes": ["/chat/{key}"],
        "websocket": True,
    }
    async with running(make_config(tmp_path, {"probe": probe})) as daemon, client(daemon, "/chat/r") as a:
        for text in ("A", "B", "C"):
            await a.send(f"echo-publish {text}")
        assert await published(a, 3) == [(1, "A"), (2, "B"), (3, "C")]
        await a.send("echo-publish D")
        assert await published(a) == [(4, "D")]


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for the daemon's side to catch up (a connection ends there a turn or more after the client's side)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def raw_exchange(daemon: Daemon, data: bytes) -> bytes:
    """Write `data` on a fresh connection and read everything the daemon sends until it ends the connection."""
    host, port = daemon.addresses[0]
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(data)
    try:
        return await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()


async def test_the_metrics_count_each_services_connections_messages_resumes_and_closes(tmp_path: Path) -> None:
    """Through /metrics, parsed by prometheus_client: each actor service's connections, messages, bytes, resumes,
    resets, closes by code (slow, idle, refused by the actor, normal) and refused upgrades by reason."""
    services = {
        "room": room(stream_buffer=3, ws_max_connections=2, ws_idle_timeout=60.0, ws_max_buffered="64KiB"),
        "quiet": room(routes=["/quiet/{key}"]),
        "closed": room(routes=["/closed/{key}"], websocket=False),
    }
    async with running(make_config(tmp_path, services, {"ws_max_connections": 3})) as daemon:
        assert daemon.ingress is not None and daemon.metrics_address is not None
        counters = daemon.router.keyed["room"].stream_counters
        async with client(daemon, "/chat/r") as a:
            async with client(daemon, "/chat/r") as b:
                for i in range(4):
                    await a.send(f"m{i}")
                await a.send("!hi")  # sent to a alone (ws_send): out, not published
                assert [seq for seq, _ in await published(b, 4)] == [1, 2, 3, 4]
                assert [seq for seq, _ in await published(a, 4)] == [1, 2, 3, 4]
                assert await asyncio.wait_for(a.recv(), timeout=10) == '{"data": "hi"}'
                with pytest.raises(InvalidStatus):  # the actor's ws_max_connections
                    async with client(daemon, "/chat/r"):
                        pass
                async with client(daemon, "/chat/c"):
                    with pytest.raises(InvalidStatus):  # the daemon's ws_max_connections
                        async with client(daemon, "/chat/d"):
                            pass
            await until(lambda: counters.open == 1, "b and c to end")
            async with client(daemon, "/chat/r?since=2") as resumed:  # the ring holds 2..4
                assert await published(resumed, 2) == [(3, "m2"), (4, "m3")]
            async with client(daemon, "/chat/r?since=99") as reset:
                assert json.loads(await asyncio.wait_for(reset.recv(), timeout=10)) == {"reset": True, "seq": 4}
            async with client(daemon, "/chat/q?refuse") as refused:
                assert await closed_with(refused) == 1008

            # Another service, on a raw socket: its bytes both ways, exactly.
            host, port = daemon.addresses[0]
            reader, writer = await asyncio.open_connection(host, port)
            sent = UPGRADE.replace(b"/chat/r", b"/quiet/k")
            writer.write(sent)
            received = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            assert received.startswith(b"HTTP/1.1 101 ")
            hello = bytes([0x81, 0x85, 0, 0, 0, 0]) + b"hello"  # a masked text frame (a zero mask)
            writer.write(hello)
            head = await asyncio.wait_for(reader.readexactly(2), timeout=10)
            body = await asyncio.wait_for(reader.readexactly(head[1]), timeout=10)
            assert json.loads(body) == {"seq": 1, "data": "hello"}
            bye = bytes([0x88, 0x82, 0, 0, 0, 0]) + (1000).to_bytes(2, "big")
            writer.write(bye)
            received += head + body + await asyncio.wait_for(reader.read(), timeout=10)
            sent += hello + bye
            writer.close()
            quiet = daemon.router.keyed["quiet"].stream_counters
            await until(lambda: quiet.open == 0, "the quiet connection to end")

            # Refused upgrades: websocket = false (403); a bad key and a bad handshake (400).
            with pytest.raises(InvalidStatus) as forbidden:
                async with client(daemon, "/closed/r"):
                    pass
            assert forbidden.value.response.status_code == 403
            bad_key = await raw_exchange(daemon, UPGRADE.replace(b"/chat/r", b"/chat/%ff"))
            assert bad_key.startswith(b"HTTP/1.1 400 ")
            no_key = await raw_exchange(
                daemon, UPGRADE.replace(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", b"")
            )
            assert no_key.startswith(b"HTTP/1.1 400 ")

            # A client that stops reading, closed with 4008 (as in test_an_idle_client_and_a_slow_client_are_closed).
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect((host, port))
            slow_reader, slow_writer = await asyncio.open_connection(sock=sock, limit=1024)
            slow_writer.write(UPGRADE.replace(b"/chat/r", b"/chat/s"))
            await slow_reader.readuntil(b"\r\n\r\n")
            slow_writer.transport.pause_reading()
            n = 0
            async with client(daemon, "/chat/s", max_size=None) as sender:
                while not counters.closes.get(4008):
                    assert n < 500, "the slow client was never closed"
                    await sender.send("y" * 60_000)
                    await published(sender)
                    n += 1
            slow_writer.close()
            await until(lambda: counters.open == 1, "the slow client to be aborted")  # a, still open

            # a is pinged once the sweep's clock has moved past half of ws_idle_timeout, and closed when the
            # next sweep finds the ping unanswered (both sweeps before the loop can read a's pong).
            hub = daemon.ingress.websockets
            now = time.monotonic()
            assert hub.close_idle(now + 31) == 0
            assert hub.close_idle(now + 62) == 1
            assert await closed_with(a) == 4000
        await until(lambda: counters.open == 0, "a to end")
        response = await http(daemon.metrics_address, "GET", "/metrics")
        assert response.status == 200

    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.body.decode())
        for s in family.samples
        if s.name.startswith("micromono_ws_")
    }

    def take(name: str, service: str, **labels: str) -> float:
        return got.pop((f"micromono_ws_{name}", tuple(sorted({"service": service, **labels}.items()))))

    def expect(service: str, want: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> None:
        assert {(name, labels): take(name, service, **dict(labels)) for name, labels in want} == want

    def series(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        return name, tuple(labels.items())

    room_bytes_in, room_bytes_out = (
        take("bytes_total", "room", direction="in"),
        take("bytes_total", "room", direction="out"),
    )
    assert n * 60_000 < room_bytes_in < n * 61_000 + 8_000  # the sender's messages, and handshakes and small frames
    assert 2 * n * 60_000 < room_bytes_out < 2 * n * 61_000 + 8_000  # each to the sender and the slow client
    expect(
        "room",
        {
            series("connections"): 0,
            series("connections_opened_total"): 8,  # a, b, c, resumed, reset, refused by the actor, slow, sender
            series("connections_refused_total", reason="daemon_limit"): 1,
            series("connections_refused_total", reason="actor_limit"): 1,
            series("connections_refused_total", reason="disabled"): 0,
            series("connections_refused_total", reason="bad_request"): 2,
            series("messages_total", direction="in"): 5 + n,
            series("messages_total", direction="out"): 4 + 4 + 1 + 2 + 1 + 2 * n,
            series("published_total"): 4 + n,
            series("resumes_total"): 1,
            series("resets_total"): 1,
            series("closes_total", code="1000"): 5,  # b, c, resumed, reset, sender
            series("closes_total", code="1008"): 1,
            series("closes_total", code="4000"): 1,
            series("closes_total", code="4008"): 1,
        },
    )
    expect(
        "quiet",
        {
            series("connections"): 0,
            series("connections_opened_total"): 1,
            **{
                series("connections_refused_total", reason=r): 0
                for r in ("daemon_limit", "actor_limit", "disabled", "bad_request")
            },
            series("messages_total", direction="in"): 1,
            series("messages_total", direction="out"): 1,
            series("bytes_total", direction="in"): len(sent),
            series("bytes_total", direction="out"): len(received),
            series("published_total"): 1,
            series("resumes_total"): 0,
            series("resets_total"): 0,
            series("closes_total", code="1000"): 1,
        },
    )
    expect(
        "closed",
        {
            series("connections"): 0,
            series("connections_opened_total"): 0,
            **{
                series("connections_refused_total", reason=r): int(r == "disabled")
                for r in ("daemon_limit", "actor_limit", "disabled", "bad_request")
            },
            **{series("messages_total", direction=d): 0 for d in ("in", "out")},
            **{series("bytes_total", direction=d): 0 for d in ("in", "out")},
            series("published_total"): 0,
            series("resumes_total"): 0,
            series("resets_total"): 0,
        },
    )
    assert got == {}  # no other series
