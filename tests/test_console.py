"""The live page's event stream and files (micromono/console/, docs/operations.md *The live page*), against a real
daemon in process with the example app's modules, read over real loopback sockets.

The tick is shortened (`Daemon(console_tick=...)`) so the tests wait tenths of a second, not seconds. The
slow-client rule is tested on `Console` alone with a transport that records what is written (a real socket's
buffers take megabytes to fill).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import pytest

from conftest import EXAMPLES_BUILD, fixture, http, make_config
from micromono.config import Config
from micromono.console import CSP, Console
from micromono.console.sample import quantile
from micromono.daemon import Daemon
from micromono.reload import ReloadResult
from micromono.router import Router
from micromono.service import LATENCY_BUCKETS

TICK: Final = 0.05
#: Every wait for an event (bounded: each test stays well inside conftest's 120 s).
WAIT: Final = 10.0
APP: Final = ("gateway", "auth", "store", "audit", "echo")
ALICE: Final = {"Authorization": "Bearer alice-secret"}

needs_examples = pytest.mark.skipif(
    not all((EXAMPLES_BUILD / f"{name}.wasm").exists() for name in (*APP, "echo_rust")),
    reason="examples not built: run `make examples` (make test does)",
)
pytestmark = needs_examples


def app_config(directory: Path) -> Config:
    """The example app's notes services and echo, with their modules copied into `directory` (a hot swap replaces
    a copy, never the build)."""
    for name in APP:
        shutil.copy(EXAMPLES_BUILD / f"{name}.wasm", directory / f"{name}.wasm")
    services: dict[str, dict[str, Any]] = {
        "gateway": {"wasm": directory / "gateway.wasm", "routes": ["/api/*"], "calls": ["auth", "store", "audit"]},
        "auth": {"wasm": directory / "auth.wasm"},
        "store": {"wasm": directory / "store.wasm", "instances": 1},
        "audit": {"wasm": directory / "audit.wasm", "instances": 1},
        "echo": {"wasm": directory / "echo.wasm", "routes": ["/echo"]},
    }
    return make_config(directory, services, {"data_dir": str(directory / "data")})


@asynccontextmanager
async def daemon_of(config: Config, tick: float = TICK) -> AsyncIterator[Daemon]:
    daemon = Daemon(config, console_tick=tick)
    await daemon.startup()
    try:
        yield daemon
    finally:
        await daemon.shutdown()


class EventStream:
    """One `GET /console/events` over a real socket: the response head, then server-sent events one at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""  # the body of a refusal
        self._buffer = b""

    @classmethod
    async def open(cls, address: tuple[str, int]) -> EventStream:
        reader, writer = await asyncio.open_connection(*address)
        stream = cls(reader, writer)
        writer.write(b"GET /console/events HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        lines = head.decode("latin-1").split("\r\n")
        stream.status = int(lines[0].split()[1])
        stream.headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if "content-length" in stream.headers:
            stream.body = await reader.readexactly(int(stream.headers["content-length"]))
        return stream

    async def next(self, timeout: float = WAIT) -> tuple[str, dict[str, Any]]:
        """The next event's name and JSON data. Raises EOFError when the daemon ends the stream."""
        while b"\n\n" not in self._buffer:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise EOFError(f"the stream ended; left unparsed: {self._buffer[:200]!r}")
            self._buffer += data
        raw, self._buffer = self._buffer.split(b"\n\n", 1)
        fields = dict(line.split(": ", 1) for line in raw.decode().split("\n"))
        return fields["event"], json.loads(fields["data"])

    async def until(self, predicate: Callable[[str, dict[str, Any]], bool], what: str) -> dict[str, Any]:
        """Read events until one satisfies `predicate` (bounded by WAIT in all)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while loop.time() < deadline:
            name, data = await self.next(max(0.01, deadline - loop.time()))
            if predicate(name, data):
                return data
        raise AssertionError(f"no event within {WAIT} s: {what}")

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def edge(sample: dict[str, Any], caller: str, callee: str) -> dict[str, Any]:
    return next(e for e in sample["edges"] if (e["caller"], e["callee"]) == (caller, callee))


def service(sample: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in sample["services"] if s["name"] == name)


async def eventually(predicate: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"not within {WAIT} s: {what}")
        await asyncio.sleep(0.01)


# --- the page's files -----------------------------------------------------------------------------------------------


async def test_the_page_and_its_files_are_served_with_a_same_origin_policy(tmp_path: Path) -> None:
    async with daemon_of(app_config(tmp_path)) as daemon:
        assert daemon.metrics_address is not None
        for path in ("/", "/console/"):
            page = await http(daemon.metrics_address, "GET", path)
            assert page.status == 200 and page.headers["content-type"].startswith("text/html")
            assert page.headers["content-security-policy"].startswith("default-src 'self'")
            assert page.headers["content-security-policy"] == CSP
            assert b'src="/console/console.js"' in page.body and b"http" not in page.body.replace(b"http-", b"")
        script = await http(daemon.metrics_address, "GET", "/console/console.js")
        assert script.status == 200 and script.headers["content-type"].startswith("text/javascript")
        assert b'new EventSource("/console/events")' in script.body
        style = await http(daemon.metrics_address, "GET", "/console/console.css")
        assert style.status == 200 and style.headers["content-type"].startswith("text/css")
        missing = await http(daemon.metrics_address, "GET", "/console/nothing.js")
        assert missing.status == 404
        head = await http(daemon.metrics_address, "HEAD", "/console/events")
        assert head.status == 200 and head.body == b""
        assert daemon.console is not None and daemon.console.readings == 0  # HEAD opens no stream


# --- the stream -----------------------------------------------------------------------------------------------------


async def test_the_document_shape_and_a_request_through_the_chain_in_the_edge_counters(tmp_path: Path) -> None:
    async with daemon_of(app_config(tmp_path)) as daemon:
        assert daemon.metrics_address is not None
        stream = await EventStream.open(daemon.metrics_address)
        try:
            assert stream.status == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            name, hello = await stream.next()
            assert name == "hello"
            assert hello["tick"] == TICK and hello["max_clients"] == 16 and hello["reloads"] == []
            name, first = await stream.next()
            assert name == "sample"
            assert set(first) == {"seq", "t", "interval", "state", "services", "edges", "reloads"}
            assert first["state"] == "serving"
            assert [s["name"] for s in first["services"]] == list(APP)
            gateway = service(first, "gateway")
            assert set(gateway) >= {
                "version",
                "sha256",
                "kind",
                "instances",
                "mailbox",
                "quarantine",
                "actors",
                "websockets",
                "rate",
                "latency",
            }
            assert gateway["version"].startswith(gateway["sha256"]) and len(gateway["sha256"]) == 12
            assert gateway["kind"] == "service" and gateway["actors"] is None and gateway["quarantine"] is None
            assert gateway["mailbox"] == {"queued": 0, "capacity": 64}
            assert {(e["caller"], e["callee"]) for e in first["edges"]} >= {
                ("ingress", "gateway"),
                ("gateway", "auth"),
                ("gateway", "store"),
                ("gateway", "audit"),
            }
            before = edge(first, "gateway", "store")["calls"]

            for i in range(3):
                put = await http(daemon.addresses[0], "PUT", f"/api/notes/n{i}", b"hello", ALICE)
                assert put.status in (200, 201), put.body

            later = await stream.until(
                lambda n, d: n == "sample" and edge(d, "gateway", "store")["calls"] >= before + 3,
                "gateway -> store counting the 3 requests",
            )
            assert edge(later, "ingress", "gateway")["calls"] >= 3
            assert edge(later, "gateway", "auth")["calls"] >= 3
            assert edge(later, "gateway", "audit")["messages"] >= 3  # the audit line is a send
            assert service(later, "gateway")["calls"]["ok"] >= 3
            # Rates are over the tick, so some sample between saw them as a rate.
        finally:
            await stream.close()


async def test_rates_and_latency_over_a_tick(tmp_path: Path) -> None:
    async with daemon_of(app_config(tmp_path), tick=0.3) as daemon:
        assert daemon.metrics_address is not None
        stream = await EventStream.open(daemon.metrics_address)
        try:
            await stream.until(lambda n, d: n == "sample", "a first sample")
            # 64 requests in one burst: some fall within one tick, and 1 in 16 calls is timed (4 here at least).
            for _ in range(64):
                response = await http(daemon.addresses[0], "POST", "/echo", b"x" * 64)
                assert response.status == 200

            def busy_echo(name: str, sample: dict[str, Any]) -> bool:
                echo = service(sample, "echo")
                return name == "sample" and echo["rate"] > 0 and echo["latency"]["timed"] > 0

            busy = await stream.until(
                busy_echo,
                "echo's rate and a timed call",
            )
            echo = service(busy, "echo")
            assert echo["latency"]["p50"] is not None and 0 < echo["latency"]["p50"] <= echo["latency"]["p99"]
            assert edge(busy, "ingress", "echo")["rate"] > 0 and edge(busy, "ingress", "echo")["error_ratio"] == 0
        finally:
            await stream.close()


async def test_a_hot_swap_appears_in_the_history(tmp_path: Path) -> None:
    config = app_config(tmp_path)
    async with daemon_of(config) as daemon:
        assert daemon.metrics_address is not None
        stream = await EventStream.open(daemon.metrics_address)
        try:
            await stream.until(lambda n, d: n == "sample", "a first sample")
            old = daemon.router.slots["echo"].current
            assert old is not None
            # Drop a new module in place (another echo, in Rust), as a deploy would: written beside it, renamed over.
            staged = tmp_path / "echo.wasm.new"
            shutil.copy(EXAMPLES_BUILD / "echo_rust.wasm", staged)
            os.replace(staged, tmp_path / "echo.wasm")
            swapped = await stream.until(
                lambda n, d: n == "sample" and any(r["service"] == "echo" for r in d["reloads"]),
                "echo's reload in a sample",
            )
            (reload,) = [r for r in swapped["reloads"] if r["service"] == "echo"]
            assert reload["outcome"] == "swapped" and reload["previous"] == old.version
            assert reload["version"] != old.version and reload["seq"] == 1
            assert service(swapped, "echo")["version"] == reload["version"]
        finally:
            await stream.close()
        # A page opened later gets it in its hello, and the samples kept so far (the ring) before the next ones.
        late = await EventStream.open(daemon.metrics_address)
        try:
            name, hello = await late.next()
            assert name == "hello"
            assert [(r["service"], r["outcome"]) for r in hello["reloads"]] == [("echo", "swapped")]
            assert hello["samples"] >= 1
            seqs = [(await late.next())[1]["seq"] for _ in range(hello["samples"] + 1)]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        finally:
            await late.close()


async def test_no_sampling_without_a_client(tmp_path: Path) -> None:
    async with daemon_of(app_config(tmp_path)) as daemon:
        console = daemon.console
        assert console is not None and daemon.metrics_address is not None
        await asyncio.sleep(TICK * 6)
        assert console.readings == 0 and not console.ticking
        stream = await EventStream.open(daemon.metrics_address)
        await stream.until(lambda n, d: n == "sample" and d["seq"] >= 3, "three samples")
        assert console.readings >= 3 and console.ticking
        await stream.close()
        await eventually(lambda: console.clients == 0, "the daemon to see the client go")
        await eventually(lambda: not console.ticking, "the tick to end with the last client")
        taken = console.readings
        await asyncio.sleep(TICK * 6)
        assert console.readings == taken


async def test_the_client_limit(tmp_path: Path) -> None:
    async with daemon_of(app_config(tmp_path)) as daemon:
        console = daemon.console
        assert console is not None and daemon.metrics_address is not None
        console.max_clients = 2
        first, second = await EventStream.open(daemon.metrics_address), await EventStream.open(daemon.metrics_address)
        try:
            assert (first.status, second.status) == (200, 200)
            third = await EventStream.open(daemon.metrics_address)
            assert third.status == 503
            assert b"2 event streams open" in third.body and b"max_clients = 2" in third.body
            assert await third.reader.read() == b""  # and closed
            await third.close()
            await first.close()
            await eventually(lambda: console.clients == 1, "the first client to be gone")
            fourth = await EventStream.open(daemon.metrics_address)
            assert fourth.status == 200
            await fourth.close()
            assert (await second.next())[0] == "hello"
        finally:
            await first.close()
            await second.close()


async def test_shutdown_ends_the_streams(tmp_path: Path) -> None:
    daemon = Daemon(app_config(tmp_path), console_tick=TICK)
    await daemon.startup()
    try:
        assert daemon.metrics_address is not None
        stream = await EventStream.open(daemon.metrics_address)
        await stream.until(lambda n, d: n == "sample", "a first sample")
    finally:
        await daemon.shutdown()
    await stream.until(lambda n, d: n == "end", "the end event")
    with pytest.raises(EOFError):
        await stream.next()
    await stream.close()
    assert daemon.console is not None and daemon.console.clients == 0 and not daemon.console.ticking


async def test_a_client_that_leaves_mid_stream_is_forgotten(tmp_path: Path) -> None:
    async with daemon_of(app_config(tmp_path)) as daemon:
        console = daemon.console
        assert console is not None and daemon.metrics_address is not None
        streams = [await EventStream.open(daemon.metrics_address) for _ in range(3)]
        await eventually(lambda: console.clients == 3, "three clients")
        streams[1].writer.transport.abort()  # a reset, not a close
        await eventually(lambda: console.clients == 2, "the aborted client to be forgotten")
        for s in (streams[0], streams[2]):
            await s.until(lambda n, d: n == "sample", "samples still flowing to the others")
        for s in streams:
            await s.close()


async def test_a_stream_opens_after_the_answers_pipelined_before_it(tmp_path: Path) -> None:
    async with daemon_of(app_config(tmp_path)) as daemon:
        assert daemon.metrics_address is not None
        reader, writer = await asyncio.open_connection(*daemon.metrics_address)
        try:
            writer.write(
                b"GET /status HTTP/1.1\r\nHost: t\r\n\r\n"
                b"GET /console/events HTTP/1.1\r\nHost: t\r\n\r\n"
                b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"  # after the stream: never answered
            )
            data = b""
            while b"event: sample" not in data:
                data += await asyncio.wait_for(reader.read(65536), WAIT)
            status, stream = data.split(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream", 1)
            assert status.startswith(b"HTTP/1.1 200 OK") and b'"services"' in status
            assert b"event: hello" in stream and b"HTTP/1.1" not in stream
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def test_a_client_that_does_not_read_is_disconnected(tmp_path: Path) -> None:
    # A short tick: the kernel's buffers of a loopback connection take megabytes before the daemon's fills.
    async with daemon_of(app_config(tmp_path), tick=0.002) as daemon:
        console = daemon.console
        assert console is not None and daemon.metrics_address is not None
        console.slow_client = 0.3
        reading = await EventStream.open(daemon.metrics_address)
        try:
            # A ring of several hundred kilobytes: what a new client gets first is more than its socket takes.
            await reading.until(lambda n, d: n == "sample" and console.kept_bytes > 300_000, "a large ring")
            slow = socket.socket()
            slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and it never reads
            slow.setblocking(False)
            await asyncio.get_running_loop().sock_connect(slow, daemon.metrics_address)
            slow.send(b"GET /console/events HTTP/1.1\r\nHost: t\r\n\r\n")
            await eventually(lambda: console.clients == 2, "the slow client to be attached")
            await eventually(lambda: console.clients == 1, "the slow client to be disconnected")
            slow.close()
            await reading.until(lambda n, d: n == "sample", "samples still flowing to the reader")
        finally:
            await reading.close()


# --- the rules on their own -----------------------------------------------------------------------------------------


class _Recording:
    """A transport that keeps what is written: enough of `asyncio.Transport` for the console's own rules."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.aborted = False
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def writelines(self, data: list[bytes]) -> None:
        self.written.extend(data)

    def get_write_buffer_size(self) -> int:
        return sum(map(len, self.written))

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


async def test_a_slow_client_is_skipped_then_disconnected() -> None:
    now = [100.0]
    history: list[ReloadResult] = []
    console = Console(
        Router(), lambda: (len(history), history), lambda: False, tick=0.01, slow_client=5.0, clock=lambda: now[0]
    )
    slow, quick = _Recording(), _Recording()
    slow_client = console.attach(slow)  # type: ignore[arg-type]
    console.attach(quick)  # type: ignore[arg-type]
    console.pause_writing(slow_client)  # its buffer is over the high-water mark
    await eventually(lambda: len(quick.written) >= 2 + 3, "three samples to the quick client")
    assert len(slow.written) == 2 and slow_client.skipped >= 3  # the head and the hello only
    console.resume_writing(slow_client)
    await eventually(lambda: len(slow.written) > 2, "samples to the client once it drained")
    console.pause_writing(slow_client)
    now[0] += 6.0  # over slow_client seconds full
    await eventually(lambda: slow.aborted, "the slow client to be disconnected")
    assert console.clients == 1 and not quick.aborted
    console.close()
    assert quick.closed and quick.written[-1].startswith(b"event: end\n")
    await eventually(lambda: not console.ticking, "the tick to end")


async def test_the_ring_is_bounded_by_age_and_bytes() -> None:
    now = [0.0]
    console = Console(
        Router(), lambda: (0, ()), lambda: False, tick=0.01, history=10.0, history_bytes=1000, clock=lambda: now[0]
    )
    reader = _Recording()
    console.attach(reader)  # type: ignore[arg-type]
    await eventually(lambda: len(reader.written) >= 2 + 20, "twenty samples")
    assert 0 < console.kept_bytes <= 1000 and console.kept < 20  # by bytes: each sample of no service is ~100
    now[0] += 20.0  # older than `history`: gone at the next sample
    sent = len(reader.written)
    await eventually(lambda: len(reader.written) > sent, "one more sample")
    assert console.kept == len(reader.written) - sent  # only those sent since: the older ones are gone
    console.close()


def test_quantiles_from_bucket_counts() -> None:
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    assert quantile(0.5, counts) is None
    i = LATENCY_BUCKETS.index(0.001)
    counts[i] = 10  # ten calls between 0.5 ms and 1 ms
    assert quantile(0.5, counts) == pytest.approx(0.00075)
    assert quantile(0.99, counts) == pytest.approx(0.0005 + 0.0005 * 0.99)
    counts[-1] = 990  # most over the last bound: all that is known is the bound
    assert quantile(0.99, counts) == LATENCY_BUCKETS[-1]


async def test_failing_calls_color_the_edge_and_a_quarantine_shows(tmp_path: Path) -> None:
    hostile = {"wasm": fixture("hostile.wat"), "routes": ["/hostile"], "max_failures": 2, "failure_window": 60.0}
    config = make_config(tmp_path, {"hostile": hostile})
    async with daemon_of(config) as daemon:
        assert daemon.metrics_address is not None
        stream = await EventStream.open(daemon.metrics_address)
        try:
            await stream.until(lambda n, d: n == "sample", "a first sample")
            for _ in range(3):  # three traps: over max_failures = 2, so quarantined
                response = await http(daemon.addresses[0], "POST", "/hostile", b"u")
                assert response.status >= 500
            ratios: list[float] = []  # the ingress -> hostile error ratio of each tick that had calls

            def quarantined(name: str, sample: dict[str, Any]) -> bool:
                if name != "sample":
                    return False
                if (ratio := edge(sample, "ingress", "hostile")["error_ratio"]) is not None:
                    ratios.append(ratio)
                return (
                    service(sample, "hostile")["quarantine"] is not None
                    and edge(sample, "ingress", "hostile")["errors"] == 3
                )

            failing = await stream.until(quarantined, "hostile quarantined after its three traps")
            assert ratios and max(ratios) == 1.0  # every call failed: the page draws the edge red
            assert service(failing, "hostile")["calls"]["failed"] == 3
            quarantine = service(failing, "hostile")["quarantine"]
            assert quarantine["seconds_left"] > 0 and "max_failures = 2" in quarantine["reason"]
            # The quarantine is in the reload history a page gets when it opens.
            later = await EventStream.open(daemon.metrics_address)
            name, hello = await later.next()
            await later.close()
            assert name == "hello"
            assert [(r["service"], r["outcome"]) for r in hello["reloads"]] == [("hostile", "quarantined")]
        finally:
            await stream.close()
