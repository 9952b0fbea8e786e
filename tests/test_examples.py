"""The bundled example app (examples/, built from C, Zig and Rust sources by `make examples`) on the real manifest."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import pytest
import websockets

from conftest import EXAMPLES_BUILD, ROOT, Client, http, make_config, running
from micromono.config import Address, load_config

pytestmark = pytest.mark.skipif(
    not (EXAMPLES_BUILD / "gateway.wasm").exists(), reason="examples not built: run `make examples` (make test does)"
)

ALICE = {"Authorization": "Bearer alice-secret"}
BOB = {"Authorization": "Bearer bob-secret"}


def example_config(tmp_path: Path):  # type: ignore[no-untyped-def]
    config = load_config(ROOT / "services.toml")
    daemon = dataclasses.replace(
        config.daemon,
        listen=Address(host="127.0.0.1", port=0),
        metrics_listen=None,
        cache_dir=tmp_path / "cache",
        data_dir=tmp_path / "data",  # the actors' storage: a fresh one per test
    )
    return dataclasses.replace(config, daemon=daemon)


async def test_notes_app_end_to_end(tmp_path: Path) -> None:
    async with running(example_config(tmp_path)) as daemon:
        client = await Client.connect(daemon.addresses[0])
        created = await client.request("PUT", "/api/notes/todo", b"buy milk", ALICE)
        assert created.status == 201, created.body
        assert created.json() == {"user": "alice", "key": "todo", "bytes": 8, "created": True, "audited": True}
        updated = await client.request("PUT", "/api/notes/todo", b"buy oat milk", ALICE)
        assert updated.status == 200 and updated.json()["created"] is False
        read = await client.request("GET", "/api/notes/todo", headers=ALICE)
        assert read.status == 200
        assert read.json() == {"user": "alice", "key": "todo", "value": "buy oat milk"}
        # Notes are per user: bob does not see alice's.
        assert (await client.request("GET", "/api/notes/todo", headers=BOB)).status == 404
        denied = await client.request("GET", "/api/notes/todo", headers={"Authorization": "Bearer wrong"})
        assert denied.status == 401
        assert (await client.request("GET", "/api/notes/todo")).status == 401
        deleted = await client.request("DELETE", "/api/notes/todo", headers=ALICE)
        assert deleted.status == 200
        assert (await client.request("GET", "/api/notes/todo", headers=ALICE)).status == 404
        await client.close()
        # The two writes and the delete were sent to audit as messages; its worker handles them after the requests.
        for _ in range(100):
            audit = await http(daemon.addresses[0], "GET", "/api/audit")
            if audit.status == 200 and audit.json()["count"] == 3:
                break
            await asyncio.sleep(0.01)
        assert audit.json()["count"] == 3
        assert len(audit.json()["last"]) == 3


async def test_large_note_goes_through_inbox_growth_and_take_reply(tmp_path: Path) -> None:
    note = bytes(ord("a") + i % 26 for i in range(112_000))
    async with running(example_config(tmp_path)) as daemon:
        addr = daemon.addresses[0]
        assert (await http(addr, "PUT", "/api/notes/big", note, ALICE)).status == 201
        read = await http(addr, "GET", "/api/notes/big", headers=ALICE)
        assert read.status == 200 and read.json()["value"].encode() == note


async def test_echo_service_from_c(tmp_path: Path) -> None:
    async with running(example_config(tmp_path)) as daemon:
        response = await http(daemon.addresses[0], "POST", "/echo", b"\x00\x01binary", {"Content-Type": "x/y"})
        assert (response.status, response.body, response.headers["content-type"]) == (200, b"\x00\x01binary", "x/y")


async def test_likes_service_from_rust(tmp_path: Path) -> None:
    """The Rust actor counts one like per user (resolved by the Zig auth service) and streams each new count."""
    async with running(example_config(tmp_path)) as daemon:
        addr = daemon.addresses[0]
        host, port = addr
        assert (await http(addr, "GET", "/likes/post1")).json() == {"likes": 0}
        async with websockets.connect(f"ws://{host}:{port}/likes/post1", open_timeout=10) as ws:
            assert json.loads(await ws.recv()) == {"data": '{"likes":0}'}  # sent to this client: unnumbered
            liked = await http(addr, "PUT", "/likes/post1", headers=ALICE)
            assert (liked.status, liked.headers["content-type"]) == (200, "application/json")
            assert liked.json() == {"likes": 1, "liked": True}
            assert (await http(addr, "PUT", "/likes/post1", headers=ALICE)).json() == {"likes": 1, "liked": True}
            assert (await http(addr, "PUT", "/likes/post1", headers=BOB)).json() == {"likes": 2, "liked": True}
            assert (await http(addr, "DELETE", "/likes/post1", headers=ALICE)).json() == {"likes": 1, "liked": False}
            published = [json.loads(await ws.recv()) for _ in range(3)]  # only the changes, numbered
            assert published == [
                {"seq": 1, "data": '{"likes":1}'},
                {"seq": 2, "data": '{"likes":2}'},
                {"seq": 3, "data": '{"likes":1}'},
            ]
        assert (await http(addr, "GET", "/likes/post1")).json() == {"likes": 1}
        assert (await http(addr, "GET", "/likes/other")).json() == {"likes": 0}
        denied = await http(addr, "PUT", "/likes/post1", headers={"Authorization": "Bearer wrong"})
        assert (denied.status, denied.json()) == (401, {"error": "unauthorized"})
        assert (await http(addr, "DELETE", "/likes/post1")).status == 401
        wrong = await http(addr, "POST", "/likes/post1")
        assert (wrong.status, wrong.headers["allow"]) == (405, "GET, PUT, DELETE")


async def test_echo_service_from_rust_matches_c(tmp_path: Path) -> None:
    """echo_rust answers HTTP exactly as echo.c does (content-type copied, else application/octet-stream)."""
    config = make_config(
        tmp_path,
        {
            "c": {"wasm": EXAMPLES_BUILD / "echo.wasm", "routes": ["/c"]},
            "rust": {"wasm": EXAMPLES_BUILD / "echo_rust.wasm", "routes": ["/rust"]},
        },
    )
    async with running(config) as daemon:
        for body, headers in [(b"\x00\x01binary", {"Content-Type": "x/y"}), (b"plain", {}), (b"", {})]:
            c, rust = [await http(daemon.addresses[0], "POST", f"/{name}", body, headers) for name in ("c", "rust")]
            assert (rust.status, rust.body, rust.headers.get("content-type")) == (
                c.status,
                c.body,
                c.headers.get("content-type"),
            )
            assert (rust.status, rust.body) == (200, body)
