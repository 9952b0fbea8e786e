"""The admin listener (`daemon.metrics_listen`) over real sockets: /metrics, /status, /healthz and the actor pages,
pipelining, HEAD, and the rule that the event loop keeps serving while an answer is formatted in a worker thread
(actor services over a fake storage: tests/test_metrics.py's)."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import threading
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_metrics import FakeStorage, Info, actor_service, in_memory

import micromono.daemon
from conftest import Client, fixture, http, make_config, running
from micromono import admin, status
from micromono.metrics import Snapshot, render
from micromono.metrics.snapshot import SCAN_CHUNK
from micromono.router import Router
from micromono.status import status_document


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


# --- the actor pages --------------------------------------------------------------------------------------------------


def actor_pages(router: Router) -> admin.AdminPages[bytes]:
    """Admin pages over `router`'s actor services alone (/metrics and /status stand-ins)."""

    async def snapshot() -> bytes:
        return b""

    def status() -> dict[str, Any]:
        return status_document(router, stopping=False, addresses=[], cpu=None, watching=False, reloads={})

    return admin.AdminPages(snapshot, lambda text: text, status, lambda: True, actors=router.keyed)


@asynccontextmanager
async def listening(pages: admin.AdminPages[Any]) -> AsyncIterator[tuple[str, int]]:
    """The admin listener on its own, on 127.0.0.1 port 0."""
    server = await asyncio.get_running_loop().create_server(lambda: admin.AdminProtocol(pages), "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[:2]
    finally:
        server.close()
        await server.wait_closed()


def many_actors(n: int, *, seed: int = 7) -> dict[str, Info]:
    """`n` known actors under keys in no particular order (the directory's order is the commits')."""
    keys = [f"user-{i:06d}" for i in range(n)]
    random.Random(seed).shuffle(keys)
    return {key: Info(len(key), last_active=1_700_000_000.5 + i, schema_version=2) for i, key in enumerate(keys)}


async def test_the_actor_listing_pages_through_every_actor_in_key_order() -> None:
    """`/actors/<service>` lists known actors and those only in memory, once each, in key order, `limit` a page;
    `next` leads to the next page and is null on the last."""
    router = Router()
    directory = many_actors(250)
    keyed = actor_service(router, "counter", directory)
    in_memory(keyed, "user-000007", live=True, queued=2)  # known and live
    in_memory(keyed, "user-000008")  # known, in memory without an instance
    in_memory(keyed, "aaa-fresh", live=True)  # in memory only: never committed
    in_memory(keyed, "zzz-fresh", queued=1)
    async with listening(actor_pages(router)) as address:
        listed: list[str] = []
        pages = 0
        after: str | None = None
        while True:
            query = "?limit=100" + (f"&after={urllib.parse.quote(after)}" if after is not None else "")
            answer = await http(address, "GET", "/actors/counter" + query)
            assert answer.status == 200 and answer.headers["content-type"] == "application/json"
            page = answer.json()
            pages += 1
            assert (page["service"], page["live"], page["known"]) == ("counter", 2, 250)
            listed += [record["key"] for record in page["actors"]]
            if page["next"] is None:
                break
            assert page["next"] == page["actors"][-1]["key"] and len(page["actors"]) == 100
            after = page["next"]
        first = (await http(address, "GET", "/actors/counter")).json()  # the default limit: 100
    assert pages == 3
    assert listed == sorted({*directory, "aaa-fresh", "zzz-fresh"})
    records = {record["key"]: record for record in first["actors"]}
    assert len(first["actors"]) == 100 and first["next"] == first["actors"][-1]["key"]
    assert records["aaa-fresh"] == {
        "key": "aaa-fresh",
        "live": True,
        "bytes": 0,
        "last_active": None,
        "schema_version": 0,
        "alarm_ms": None,
        "queued": 0,
    }
    info = directory["user-000007"]
    assert records["user-000007"] == {
        "key": "user-000007",
        "live": True,
        "bytes": 11,
        "last_active": info.last_active,
        "schema_version": 2,
        "alarm_ms": None,
        "queued": 2,
    }
    assert records["user-000008"]["live"] is False


async def test_an_actor_page_shows_its_record_and_its_stored_entries() -> None:
    """`/actors/<service>/<key>` (the key percent-encoded) adds the actor's entries, read by `storage.entries` in a
    worker thread: UTF-8 as text, other bytes as base64; `limit` of them, `truncated` when more follow."""
    key = "room/é 1"
    rows = [(b"name", "Zoë".encode()), (b"\xff\x00", b"\x80binary"), (b"z", b"")]
    storage = FakeStorage({key: rows})
    router = Router()
    actor_service(router, "rooms", {key: Info(40, alarm=(1_800_000_000_000, 2))}, storage)
    async with listening(actor_pages(router)) as address:
        path = "/actors/rooms/" + urllib.parse.quote(key, safe="")
        whole = (await http(address, "GET", path)).json()
        cut = (await http(address, "GET", path + "?limit=1")).json()
    assert whole == {
        "key": key,
        "live": False,
        "bytes": 40,
        "last_active": 1_700_000_000.0,
        "schema_version": 1,
        "alarm_ms": 1_800_000_000_000,
        "queued": 0,
        "entries": [
            {"key": "name", "value": "Zoë"},
            {"key": {"base64": "/wA="}, "value": {"base64": base64.b64encode(b"\x80binary").decode()}},
            {"key": "z", "value": ""},
        ],
        "truncated": False,
    }
    assert cut["entries"] == [{"key": "name", "value": "Zoë"}] and cut["truncated"] is True
    assert [(k, limit) for k, limit, _ in storage.reads] == [(key, 101), (key, 2)]  # one more than shown
    assert all(thread != threading.get_ident() for _, _, thread in storage.reads)  # never on the loop's thread


async def test_an_actor_that_never_committed_has_no_entries_to_read() -> None:
    """An actor in memory that never committed is shown with no entries, and storage is not asked."""
    storage = FakeStorage()
    router = Router()
    keyed = actor_service(router, "counter", {}, storage)
    in_memory(keyed, "new", live=True, queued=4)
    async with listening(actor_pages(router)) as address:
        page = (await http(address, "GET", "/actors/counter/new")).json()
    assert (page["live"], page["queued"], page["entries"], page["truncated"]) == (True, 4, [], False)
    assert storage.reads == []


async def test_the_actor_pages_refuse_unknown_services_and_keys_and_bad_queries() -> None:
    """404 names the unknown service (and the actor services there are) or key; 400 says what is wrong with the
    query; both as JSON `{"error", "message"}`."""
    router = Router()
    actor_service(router, "counter", {"a": Info(1)})
    actor_service(router, "rooms", {})
    async with listening(actor_pages(router)) as address:

        async def refused(path: str) -> tuple[int, str, str]:
            answer = await http(address, "GET", path)
            assert answer.headers["content-type"] == "application/json"
            body = answer.json()
            return answer.status, body["error"], body["message"]

        assert await refused("/actors/nope") == (
            404,
            "unknown_service",
            "no actor service 'nope' (actor services here: counter, rooms)",
        )
        assert await refused("/actors") == (
            404,
            "unknown_service",
            "name an actor service: /actors/<service> (actor services here: counter, rooms)",
        )
        assert await refused("/actors/counter/b%20c") == (
            404,
            "unknown_actor",
            "actor service 'counter' has no actor 'b c'",
        )
        for limit in ("0", "10001", "abc", "", "-1", "1_0", "²"):
            code, kind, message = await refused(f"/actors/counter?limit={urllib.parse.quote(limit)}")
            assert (code, kind) == (400, "bad_request")
            assert message == f"limit must be an integer from 1 to 10000, got {limit!r}"
        assert await refused("/actors/counter/a?limit=0") == (
            400,
            "bad_request",
            "limit must be an integer from 1 to 10000, got '0'",
        )
        assert await refused("/actors/counter?page=2") == (
            400,
            "bad_request",
            "unknown query parameter 'page': this page takes ?limit= and ?after=",
        )
        assert await refused("/actors/counter/a?after=b") == (
            400,
            "bad_request",
            "unknown query parameter 'after': this page takes ?limit=",
        )
        code, kind, message = await refused("/actors/counter/%ff")
        assert (code, kind) == (400, "bad_request") and message.startswith("the actor key is not UTF-8 text")
        code, kind, message = await refused("/actors/counter?after=%ff")
        assert (code, kind) == (400, "bad_request") and message.startswith("the query is not percent-encoded UTF-8")
        assert (await http(address, "GET", "/actors/counter?limit=10000")).status == 200
        assert (await http(address, "POST", "/actors/counter")).status == 405
        assert (
            await http(address, "GET", "/nope")
        ).body == b"not found: try /, /metrics, /status, /healthz or /actors/<service>\n"


async def test_a_storage_read_that_fails_is_a_json_500() -> None:
    """If `storage.entries` raises, the answer is a 500 with a JSON body, and the listener goes on serving."""

    class Broken(FakeStorage):
        def entries(self, key: str, limit: int) -> list[tuple[bytes, bytes]]:
            raise OSError("disk I/O error")

    router = Router()
    actor_service(router, "counter", {"a": Info(1)}, Broken())
    async with listening(actor_pages(router)) as address:
        answer = await http(address, "GET", "/actors/counter/a")
        assert answer.status == 500 and answer.json()["error"] == "internal"
        assert "disk I/O error" in answer.json()["message"]
        assert (await http(address, "GET", "/actors/counter")).status == 200


async def test_a_listing_of_100000_actors_lets_the_loop_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    """The listing copies keys on the loop, chooses the page in a worker thread, and reads the live count and the
    records a step at a time, each step ending with a turn of the loop (counted in turns, not time)."""
    router = Router()
    keyed = actor_service(router, "counter", many_actors(100_000))
    for i in range(0, 20_000, 2):
        in_memory(keyed, f"user-{i:06d}", live=i % 4 == 0)
    pages = actor_pages(router)
    pages.step = 0.0  # a step per chunk of actors and per record
    threads: list[int] = []

    def page_of_keys(*args: Any) -> tuple[list[str], bool]:
        threads.append(threading.get_ident())
        return status.page_of_keys(*args)

    monkeypatch.setattr(admin, "page_of_keys", page_of_keys)
    turns = 0
    stop = asyncio.Event()

    async def count_turns() -> None:
        nonlocal turns
        while not stop.is_set():
            turns += 1
            await asyncio.sleep(0)

    async with listening(pages) as address:
        counting = asyncio.create_task(count_turns())
        page = (await http(address, "GET", "/actors/counter?limit=5000&after=user-050000")).json()
        stop.set()
        await counting
    assert (page["live"], page["known"], len(page["actors"])) == (5000, 100_000, 5000)
    assert page["actors"][0]["key"] == "user-050001" and page["next"] == "user-055000"
    assert threads and threads[0] != threading.get_ident()
    assert turns >= 10_000 // SCAN_CHUNK + 5000


@pytest.mark.parametrize("seed", range(20))
def test_a_page_of_keys_is_the_sorted_union_cut_after_and_to_the_limit(seed: int) -> None:
    """`status.page_of_keys` (chunked, merged, deduplicated) gives what sorting everything would."""
    rng = random.Random(seed)
    alphabet = "ab/é0"
    universe = ["".join(rng.choices(alphabet, k=rng.randint(1, 6))) for _ in range(rng.randint(0, 6000))]
    known = list(dict.fromkeys(universe))
    in_memory_keys = list(dict.fromkeys(rng.sample(known, min(len(known), 50)) + ["new-" + str(i) for i in range(30)]))
    rng.shuffle(in_memory_keys)
    everything = sorted({*known, *in_memory_keys})
    after = rng.choice([None, "", *everything[:: max(1, len(everything) // 5)]]) if everything else None
    limit = rng.choice([1, 2, 100, 2048, 2049, 10_000])
    expected = [key for key in everything if after is None or key > after]
    page, more = status.page_of_keys(known, in_memory_keys, after, limit)
    assert page == expected[:limit]
    assert more == (len(expected) > limit)


async def test_the_daemon_serves_actor_pages_and_status_summaries(tmp_path: Path) -> None:
    """Through a real daemon's admin listener: `/actors/<service>` reads the router's actor services, and `/status`
    gives each actor service an `actors` object (live, known, queued, alarms pending, stored bytes, WebSockets
    open)."""
    async with running(make_config(tmp_path, app())) as daemon:
        assert daemon.metrics_address is not None
        # The storage layer is not part of this test: an actor service over a fake storage, for a running slot.
        keyed = actor_service(daemon.router, "echo", {"a": Info(10), "b": Info(32, alarm=(1_800_000_000_000, 1))})
        in_memory(keyed, "b")
        keyed.stream_counters.open = 3
        listing = (await http(daemon.metrics_address, "GET", "/actors/echo")).json()
        assert [record["key"] for record in listing["actors"]] == ["a", "b"]
        services = (await http(daemon.metrics_address, "GET", "/status")).json()["services"]
        by_name = {s["name"]: s for s in services}
        assert by_name["echo"]["actors"] == {
            "live": 0,
            "known": 2,
            "queued": 0,
            "alarms_pending": 1,
            "storage_bytes": 42,
            "websockets": 3,
        }
        assert "actors" not in by_name["front"]
        assert (await http(daemon.metrics_address, "GET", "/actors/front")).status == 404


def test_the_status_actors_object_counts_live_and_queued() -> None:
    """`status.actor_summary` counts the live instances and the queued messages of the actors in memory."""
    router = Router()
    keyed = actor_service(router, "counter", {"a": Info(5), "b": Info(6)})
    in_memory(keyed, "a", live=True, queued=2)
    in_memory(keyed, "new", live=True, queued=3)
    in_memory(keyed, "b", queued=1)
    assert status.actor_summary(keyed) == {
        "live": 2,
        "known": 2,
        "queued": 6,
        "alarms_pending": 0,
        "storage_bytes": 11,
        "websockets": 0,
    }
