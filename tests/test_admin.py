"""The admin listener (`daemon.metrics_listen`) over real sockets: /metrics, /status and /healthz, pipelining, HEAD,
and the rule that the event loop keeps serving while an answer is formatted in a worker thread."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import micromono.daemon
from conftest import Client, fixture, http, make_config, running
from micromono import admin
from micromono.metrics import Snapshot, render


def app() -> dict[str, dict[str, object]]:
    return {
        "front": {"wasm": fixture("caller.wat"), "routes": ["/front"], "calls": ["echo", "hostile"]},
        "echo": {"wasm": fixture("echo.wat"), "routes": ["/echo"], "mailbox": 7, "instances": 3},
        "hostile": {"wasm": fixture("hostile.wat"), "routes": ["/hostile"]},
    }


def families(text: bytes) -> list[tuple[str, str]]:
    """Every family's name and type, in the order the text has them."""
    return [(f.name, f.type) for f in text_string_to_metric_families(text.decode())]


async def test_status_and_healthz(tmp_path: Path) -> None:
    """/status lists every service in manifest order with its instances and mailbox; unknown paths get 404 and
    other methods 405."""
    async with running(make_config(tmp_path, app())) as daemon:
        assert daemon.metrics_address is not None
        health = await http(daemon.metrics_address, "GET", "/healthz")
        assert (health.status, health.body) == (200, b"ok\n")
        status = (await http(daemon.metrics_address, "GET", "/status")).json()
        assert status["state"] == "serving"
        assert [s["name"] for s in status["services"]] == ["front", "echo", "hostile"]
        echo = status["services"][1]
        assert echo["instances"] == {"live": 1, "idle": 1, "max": 3}
        assert echo["mailbox"] == {"queued": 0, "capacity": 7}
        assert len(echo["sha256"]) == 64 and echo["version"].startswith(echo["sha256"][:12])
        assert (await http(daemon.metrics_address, "GET", "/nope")).status == 404
        assert (await http(daemon.metrics_address, "POST", "/metrics")).status == 405


async def test_metrics_listener_can_be_disabled(tmp_path: Path) -> None:
    """`metrics_listen = ""` binds no admin listener."""
    async with running(make_config(tmp_path, app(), daemon={"metrics_listen": ""})) as daemon:
        assert daemon.metrics_address is None


def test_status_json_is_written_in_pieces_as_json_dumps_would() -> None:
    """/status serializes in pieces (admin._json) to let go of the GIL between them: the bytes must not change."""
    document = {
        "state": "serving",
        "services": [
            {"name": f"s{i}", "calls": {"ok": i, "failed": 0}, "quarantine": None, "tags": ["é", 1.5]}
            for i in range(500)
        ],
    }
    assert admin._json(document) == json.dumps(document, indent=2).encode() + b"\n"


async def test_pipelined_answers_leave_in_request_order(tmp_path: Path) -> None:
    """Answers leave in request order whichever is ready first, and none follows a `Connection: close`."""
    async with running(make_config(tmp_path, app())) as daemon:
        assert daemon.metrics_address is not None
        client = await Client.connect(daemon.metrics_address)
        try:
            # One write: /metrics and /status are still being made in a worker thread when /healthz, answered at
            # once, is parsed. Nothing is answered after the request that asks to close.
            client.send_raw(
                b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n"
                b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
                b"GET /status HTTP/1.1\r\nHost: t\r\n\r\n"
                b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n"
                b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
            )
            metrics = await client.read()
            assert metrics.status == 200 and metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
            assert ("micromono_service_info", "gauge") in families(metrics.body)
            assert (await client.read()).body == b"ok\n"
            assert [s["name"] for s in (await client.read()).json()["services"]] == ["front", "echo", "hostile"]
            assert (await client.read()).status == 404
            last = await client.read()
            assert last.status == 200 and not last.keep_alive and families(last.body)
            assert await client.closed_by_peer()
        finally:
            await client.close()


async def test_head_requests_get_the_head_without_the_body(tmp_path: Path) -> None:
    """A HEAD answer carries the body's length but not the body."""
    async with running(make_config(tmp_path, app())) as daemon:
        assert daemon.metrics_address is not None
        reader, writer = await asyncio.open_connection(*daemon.metrics_address)
        try:
            # Pipelined: if a HEAD answer carried a body, the next answer would be read from the middle of it.
            writer.write(
                b"HEAD /metrics HTTP/1.1\r\nHost: t\r\n\r\n"
                b"HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
                b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            )
            heads = []
            for _ in range(3):
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                heads.append(head)
                assert head.startswith(b"HTTP/1.1 200 ")
            assert int(heads[0].lower().split(b"content-length: ")[1].split(b"\r\n")[0]) > 1000
            assert await asyncio.wait_for(reader.read(), 30) == b"ok\n"  # the GET's body, then the close
        finally:
            writer.close()


class GatedRender:
    """Stands in for the daemon's `render`: in its worker thread, waits until the test opens the gate."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.started = asyncio.Event()
        self.gate = threading.Event()
        self.threads: list[int] = []
        self.sources: list[Any] = []

    def __call__(self, source: Any) -> bytes:
        self.threads.append(threading.get_ident())
        self.sources.append(source)
        self.loop.call_soon_threadsafe(self.started.set)
        if not self.gate.wait(timeout=60):
            raise TimeoutError("the test never opened the gate")
        return render(source)


@asynccontextmanager
async def gated_render(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[GatedRender, list[dict[str, Any]]]]:
    """A GatedRender in place of the daemon's render, and every error the event loop reports meanwhile."""
    loop = asyncio.get_running_loop()
    gated = GatedRender(loop)
    monkeypatch.setattr(micromono.daemon, "render", gated)
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        yield gated, errors
    finally:
        gated.gate.set()  # a thread left waiting would hold up the loop's close


async def test_the_loop_serves_while_metrics_are_formatted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While a worker thread formats /metrics, ingress and the other admin pages are answered."""
    async with gated_render(monkeypatch) as (gated, errors), running(make_config(tmp_path, app())) as daemon:
        assert daemon.metrics_address is not None
        scrape = asyncio.create_task(http(daemon.metrics_address, "GET", "/metrics"))
        await gated.started.wait()
        # The formatting has begun and cannot end before the gate opens: whatever is answered now, the loop
        # answered while it ran.
        assert (await http(daemon.addresses[0], "POST", "/echo", b"meanwhile")).body == b"meanwhile"
        assert (await http(daemon.metrics_address, "GET", "/healthz")).status == 200
        assert (await http(daemon.metrics_address, "GET", "/status")).status == 200
        assert not scrape.done()
        gated.gate.set()
        response = await scrape
        assert response.status == 200 and families(response.body)
        assert gated.threads == [gated.threads[0]] and gated.threads[0] != threading.get_ident()
        assert isinstance(gated.sources[0], Snapshot)  # the thread reads the copy, never the live registry
    assert errors == []


async def test_a_client_gone_before_its_metrics_answer_breaks_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection that closes before its answer is ready just drops it."""
    async with gated_render(monkeypatch) as (gated, errors), running(make_config(tmp_path, app())) as daemon:
        assert daemon.metrics_address is not None
        client = await Client.connect(daemon.metrics_address)
        client.send("GET", "/metrics")
        client.send("GET", "/healthz")
        await gated.started.wait()
        client.writer.transport.abort()
        gated.gate.set()
        response = await http(daemon.metrics_address, "GET", "/metrics")
        assert response.status == 200 and families(response.body)
        assert (await http(daemon.metrics_address, "GET", "/healthz")).body == b"ok\n"
    assert errors == []


async def test_stopping_does_not_wait_for_a_render(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shutdown does not wait for a worker thread still formatting; an open connection still gets its answer."""
    async with gated_render(monkeypatch) as (gated, errors), running(make_config(tmp_path, app())) as daemon:
        assert daemon.metrics_address is not None
        client = await Client.connect(daemon.metrics_address)
        try:
            client.send("GET", "/metrics")
            await gated.started.wait()
            await asyncio.wait_for(daemon.shutdown(), timeout=30)  # the gate stays shut: the render still runs
            assert daemon.stopping and not gated.gate.is_set()
            gated.gate.set()
            response = await client.read()  # a connection that is still open gets its answer all the same
            assert response.status == 200 and families(response.body)
        finally:
            await client.close()
    assert errors == []


async def test_healthz_follows_the_health_it_is_given() -> None:
    """The admin listener on its own, with stand-in pages: /healthz answers 200 `ok` while healthy and 503
    `stopping` once not (the daemon says so from the moment its shutdown starts)."""
    healthy = True

    async def snapshot() -> bytes:
        return b"unused"

    pages = admin.AdminPages(snapshot, lambda text: text, lambda: {"state": "x"}, lambda: healthy)
    server = await asyncio.get_running_loop().create_server(lambda: admin.AdminProtocol(pages), "127.0.0.1", 0)
    try:
        address = server.sockets[0].getsockname()[:2]
        assert (await http(address, "GET", "/healthz")).body == b"ok\n"
        healthy = False
        answer = await http(address, "GET", "/healthz")
        assert (answer.status, answer.body) == (503, b"stopping\n")
        assert (await http(address, "GET", "/metrics")).body == b"unused"
        assert (await http(address, "GET", "/status")).json() == {"state": "x"}
    finally:
        server.close()
        await server.wait_closed()


async def test_a_malformed_request_gets_400_and_the_connection_closes(tmp_path: Path) -> None:
    """A request the HTTP parser refuses is answered 400 with the parser's reason, then the connection closes."""
    async with running(make_config(tmp_path, app())) as daemon:
        assert daemon.metrics_address is not None
        reader, writer = await asyncio.open_connection(*daemon.metrics_address)
        try:
            writer.write(b"NOT HTTP AT ALL\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), 30)
        finally:
            writer.close()
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"malformed request" in answer
