"""The AssemblyScript SDK (sdk/assemblyscript) through real daemons: the bundled app's `text` service on the real
manifest, `echo_assemblyscript` against examples/echo.c, and tests/fixtures/as_probe.ts, an actor that exercises
the SDK's storage, SQL, alarm, WebSocket and error paths. All are built by `make examples`.

tests/test_conformance.py runs the conformance service (tests/conformance/conformance.ts) with the other languages.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from conftest import EXAMPLES_BUILD, ROOT, fixture, http, make_config, running
from micromono.config import Address, load_config
from micromono.daemon import Daemon

pytestmark = pytest.mark.skipif(
    not (EXAMPLES_BUILD / "text.wasm").exists(), reason="examples not built: run `make examples` (make test does)"
)


def example_config(tmp_path: Path):  # type: ignore[no-untyped-def]
    config = load_config(ROOT / "services.toml")
    daemon = dataclasses.replace(
        config.daemon, listen=Address(host="127.0.0.1", port=0), metrics_listen=None, cache_dir=tmp_path / "cache"
    )
    return dataclasses.replace(config, daemon=daemon)


def call_request(target: str, payload: bytes) -> bytes:
    """tests/fixtures/caller.wat's request: one call to `target` with `payload`, lending a 64 KiB reply buffer."""
    return struct.pack("<III", 1, 65536, len(target.encode())) + target.encode() + payload


def send_request(target: str, payload: bytes) -> bytes:
    """caller.wat's request to send `payload` to `target` instead of calling it."""
    return struct.pack("<III", 0xFFFFFFFF, 0, len(target.encode())) + target.encode() + payload


async def call(daemon: Daemon, target: str, payload: bytes) -> tuple[int, bytes]:
    """A CALL (kind 2) to `target` made by `driver`: the call's result (an i32) and the reply."""
    response = await http(daemon.addresses[0], "POST", "/driver", call_request(target, payload))
    assert response.status == 200, response.body
    (result,) = struct.unpack_from("<i", response.body)
    return result, response.body[4:]


DRIVER = {"wasm": fixture("caller.wat"), "routes": ["/driver"]}


# --- text, the bundled app's AssemblyScript service ---------------------------------------------------------------


async def test_text_service_answers_stats_and_slugs_on_the_real_manifest(tmp_path: Path) -> None:
    """The bundled app's `text` (AssemblyScript) counts bytes, code points, words and lines, and makes slugs."""
    async with running(example_config(tmp_path)) as daemon:
        addr = daemon.addresses[0]
        body = "Hello, wörld!\n  two\twords\nlast".encode()
        stats = await http(addr, "POST", "/text/stats", body)
        assert (stats.status, stats.headers["content-type"]) == (200, "application/json")
        assert stats.json() == {"bytes": len(body), "chars": len(body.decode()), "words": 5, "lines": 3}
        empty = await http(addr, "POST", "/text/stats", b"")
        assert empty.json() == {"bytes": 0, "chars": 0, "words": 0, "lines": 0}
        assert (await http(addr, "POST", "/text/stats", b"a\n\n")).json()["lines"] == 2

        slug = await http(addr, "POST", "/text/slug", b"  Hello, World! -- 2026 Edition ")
        assert (slug.status, slug.body) == (200, b"hello-world-2026-edition")
        assert slug.headers["content-type"] == "text/plain; charset=utf-8"
        assert (await http(addr, "POST", "/text/slug", "Ünïcode ☃ only".encode())).body == b"n-code-only"
        long = await http(addr, "POST", "/text/slug", b"word " * 40)
        assert long.body == b"-".join([b"word"] * 16)  # 79 bytes: cut at a '-', not inside a word

        not_utf8 = await http(addr, "POST", "/text/stats", b"\xff\xfe")
        assert not_utf8.status == 400
        assert not_utf8.json() == {"error": "bad_request", "message": "the body is not UTF-8"}
        wrong_method = await http(addr, "GET", "/text/stats")
        assert (wrong_method.status, wrong_method.headers["allow"]) == (405, "POST")
        assert (await http(addr, "POST", "/text/nothing", b"x")).status == 404


async def test_text_service_answers_calls_with_stats(tmp_path: Path) -> None:
    """A CALL to `text` answers the payload's stats; a payload that is not UTF-8 is application error 400."""
    services = {"text": {"wasm": EXAMPLES_BUILD / "text.wasm"}, "driver": DRIVER | {"calls": ["text"]}}
    async with running(make_config(tmp_path, services, {"metrics_listen": ""})) as daemon:
        result, reply = await call(daemon, "text", b"one two")
        assert (result, json.loads(reply)) == (len(reply), {"bytes": 7, "chars": 7, "words": 2, "lines": 1})
        result, reply = await call(daemon, "text", b"\xc3")
        assert result == -7 and b"application error 400" in reply  # MM_ERR_APP, and last_error names the code


# --- echo_assemblyscript: examples/echo.c's twin ------------------------------------------------------------------


async def test_echo_in_assemblyscript_answers_as_echo_in_c(tmp_path: Path) -> None:
    """HTTP, CALL and MESSAGE get the same answers from echo_assemblyscript.wasm as from echo.wasm (C)."""
    services = {
        "echo_c": {"wasm": EXAMPLES_BUILD / "echo.wasm", "routes": ["/c"]},
        "echo_as": {"wasm": EXAMPLES_BUILD / "echo_assemblyscript.wasm", "routes": ["/as"]},
        "driver": DRIVER | {"calls": ["echo_c", "echo_as"]},
    }
    big = bytes(range(256)) * 400
    async with running(make_config(tmp_path, services, {"metrics_listen": ""})) as daemon:
        addr = daemon.addresses[0]
        for body, headers in [(b"\x00\x01binary", {"Content-Type": "x/y"}), (big, {}), (b"", {"content-TYPE": " a "})]:
            c, a = await http(addr, "POST", "/c", body, headers), await http(addr, "POST", "/as", body, headers)
            assert (a.status, a.body, a.headers["content-type"]) == (c.status, c.body, c.headers["content-type"])
        assert await call(daemon, "echo_as", b"payload") == await call(daemon, "echo_c", b"payload") == (7, b"payload")
        sent = await http(addr, "POST", "/driver", send_request("echo_as", b"dropped"))
        assert sent.body[:4] == struct.pack("<i", 0)


# --- as_probe: the rest of the SDK --------------------------------------------------------------------------------


def probe_manifest() -> dict[str, dict[str, object]]:
    return {
        "probe": {
            "kind": "actor",
            "wasm": EXAMPLES_BUILD / "as_probe.wasm",
            "routes": ["/probe/{key}"],
            "websocket": True,
        },
        "driver": DRIVER | {"calls": ["probe"]},
    }


@asynccontextmanager
async def probe_daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with running(make_config(tmp_path, probe_manifest(), {"metrics_listen": ""})) as daemon:
        yield daemon


async def probe(daemon: Daemon, command: str, key: str = "k") -> str:
    result, reply = await call(daemon, f"probe/{key}", command.encode())
    assert result >= 0, reply
    return reply.decode()


async def test_kv_storage_through_the_sdk(tmp_path: Path) -> None:
    """kv.get/put/delete/list/getInt/putInt, a value read with take_reply, and a failure that rolls back."""
    async with probe_daemon(tmp_path) as daemon:
        assert [await probe(daemon, "incr") for _ in range(3)] == ["1", "2", "3"]
        assert await probe(daemon, "incr", key="other") == "1"  # every key its own storage
        assert await probe(daemon, "list") == "[2] p/a=1 p/b=22;[1] q=x; delete 1 0; get -11"
        assert await probe(daemon, "notint") == "0 -15 kv.getInt: the stored value is not a decimal integer"
        assert await probe(daemon, "big") == "100000 bcd 1"  # the last three of a..z repeating: 99_997 % 26 == 1
        result, reply = await call(daemon, "probe/k", b"fail")
        assert result == -7 and b"application error 409" in reply
        assert await probe(daemon, "incr") == "4"  # the failed request's write was rolled back
        assert await probe(daemon, "key", key="some key") == "some key some key"


async def test_sql_alarm_and_errors_through_the_sdk(tmp_path: Path) -> None:
    """sql.exec with every parameter type (the table made by the schema-1 migration), the alarm, and errors."""
    async with probe_daemon(tmp_path) as daemon:
        assert await probe(daemon, "sql") == ("changes 1 rowid 1; 1x5 s -7 25 hé 2 1 3 1; bad -13 syntax error")
        assert await probe(daemon, "alarm") == "0 1 0 -1 -11"
        assert await probe(daemon, "json") == '"a\\"b\\\\c\\n\\u0001é"'
        assert await probe(daemon, "call") == "-1 unknown target -1"
        assert await probe(daemon, "ring") == "set"
        for _ in range(200):
            if (rung := await probe(daemon, "rung")) != "no":
                break
            await asyncio.sleep(0.02)
        assert rung == "attempt 1"


async def test_websockets_through_the_sdk(tmp_path: Path) -> None:
    """onWsOpen (ws.send, ws.tag; mm.fail refuses), onWsMessage (ws.publish to a tag, ws.close) and onWsClose."""
    async with probe_daemon(tmp_path) as daemon:
        host, port = daemon.addresses[0]
        url = f"ws://{host}:{port}/probe/room"
        async with websockets.connect(url, open_timeout=10) as a, websockets.connect(url, open_timeout=10) as b:
            assert json.loads(await asyncio.wait_for(a.recv(), 10)) == {"data": "welcome /probe/room"}
            assert json.loads(await asyncio.wait_for(b.recv(), 10)) == {"data": "welcome /probe/room"}
            await a.send("hi")
            for connection in (a, b):
                assert json.loads(await asyncio.wait_for(connection.recv(), 10)) == {"seq": 1, "data": "hi"}
            await b.send("close")
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(b.recv(), 10)
            assert (b.close_code, b.close_reason) == (4000, "bye")
        for _ in range(200):
            if (closed := await probe(daemon, "closed", key="room")) != "no":
                break
            await asyncio.sleep(0.02)
        assert closed in {"4000 bye", "1000 "}  # b's close, or a's if it came first: onWsClose stored one
        async with websockets.connect(url + "?refuse", open_timeout=10) as refused:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(refused.recv(), 10)
            assert refused.close_code == 1008
