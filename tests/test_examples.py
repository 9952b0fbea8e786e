"""The bundled example app (examples/, built from C and Zig sources by `make examples`) on the real manifest."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from conftest import EXAMPLES_BUILD, ROOT, Client, http, running
from micromono.config import Address, load_config

pytestmark = pytest.mark.skipif(
    not (EXAMPLES_BUILD / "gateway.wasm").exists(), reason="examples not built: run `make examples` (make test does)"
)

ALICE = {"Authorization": "Bearer alice-secret"}
BOB = {"Authorization": "Bearer bob-secret"}


def example_config(tmp_path: Path):  # type: ignore[no-untyped-def]
    config = load_config(ROOT / "services.toml")
    daemon = dataclasses.replace(
        config.daemon, listen=Address(host="127.0.0.1", port=0), metrics_listen=None, cache_dir=tmp_path / "cache"
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
