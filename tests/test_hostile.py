"""The hostile-guest suite: each misbehaviour runs beside a healthy service that is called without pause the whole
time; each case checks the exact error its caller sees, and at the end the healthy service must have lost no call."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from conftest import Client, fixture, http, make_config, running
from micromono.metrics import render


def services() -> dict[str, dict[str, object]]:
    return {
        "healthy": {"wasm": fixture("echo.wat"), "routes": ["/healthy"]},
        "hostile": {
            "wasm": fixture("hostile.wat"),
            "routes": ["/hostile"],
            "call_timeout": 0.2,
            "memory_limit": "1MiB",
            "max_failures": 1000,
        },
        "cycle": {"wasm": fixture("cycle.wat"), "calls": ["cycle"], "instances": 64},
        "flood": {"wasm": fixture("flood.wat"), "calls": ["sink"]},
        "sink": {"wasm": fixture("echo.wat"), "mailbox": 8},
        "stormy": {"wasm": fixture("hostile.wat"), "routes": ["/stormy"], "max_failures": 3},
        "wasi": {"wasm": fixture("wasi.wat")},
        "front": {"wasm": fixture("caller.wat"), "routes": ["/front"], "calls": ["wasi", "cycle", "flood"]},
    }


async def test_hostile_guests_never_hurt_a_healthy_neighbour(tmp_path: Path) -> None:
    # The flood below: its 100 sends are accepted up to the sink's mailbox of 8 and refused past it.
    # (Preemption has its own tests in test_preemption.py.)
    config = make_config(tmp_path, services(), daemon={"max_call_depth": 16})
    async with running(config) as daemon:
        addr = daemon.addresses[0]
        stop = asyncio.Event()
        served: list[int] = []
        lost: list[object] = []

        async def neighbour() -> None:
            client = await Client.connect(addr)
            i = 0
            while not stop.is_set():
                body = b"call %d" % i
                response = await client.request("POST", "/healthy", body)
                if (response.status, response.body) != (200, body):
                    lost.append((response.status, response.body))
                served.append(i)
                i += 1
            await client.close()

        task = asyncio.create_task(neighbour())

        # An endless loop: interrupted at its deadline.
        loop = await http(addr, "POST", "/hostile", b"l")
        assert (loop.status, loop.json()["message"]) == (
            504,
            "service 'hostile' ran past its deadline and was interrupted",
        )
        # A memory bomb: memory.grow fails at the 1 MiB limit; the guest sees -1 and carries on.
        bomb = await http(addr, "POST", "/hostile", b"m")
        assert bomb.status == 200 and struct.unpack("<I", bomb.body)[0] == 16
        # ... and the metrics say an instance is at its limit.
        families = {f.name: f for f in text_string_to_metric_families(render(daemon.registry).decode())}
        at_limit = {s.labels["service"]: s.value for s in families["micromono_instances_at_memory_limit"].samples}
        limits = {s.labels["service"]: s.value for s in families["micromono_guest_memory_limit_bytes"].samples}
        assert (at_limit["hostile"], at_limit["healthy"], limits["hostile"]) == (1.0, 0.0, 1 << 20)
        # Unbounded recursion: a stack-overflow trap.
        overflow = await http(addr, "POST", "/hostile", b"s")
        assert overflow.status == 500 and "call stack exhausted" in overflow.json()["message"]
        # A pointer outside its memory handed to an import: the guest traps, the host never reads it.
        pointer = await http(addr, "POST", "/hostile", b"p")
        assert pointer.status == 500
        assert "micromono.call: target (ptr=4294967040, len=512) is outside linear memory" in pointer.json()["message"]
        # A reply that points outside its memory.
        reply = await http(addr, "POST", "/hostile", b"r")
        assert (reply.status, reply.json()["error"]) == (500, "abi_violation")
        # A large reply is delivered whole.
        large = await http(addr, "POST", "/hostile", b"b")
        assert large.status == 200 and len(large.body) == 100_000
        # A call cycle without end (cycle -> cycle -> ...): max_call_depth ends it; each level got an answer.
        cycle = await http(addr, "POST", "/front", struct.pack("<iII", 1, 4096, 5) + b"cycle" + b"go")
        codes = struct.unpack(f"<{len(cycle.body) // 4}i", cycle.body)
        # front's own result, then one per cycle level (depths 2..16); the last call would be the 17th: refused.
        assert codes[-1] == -6 and len(codes) == 16
        assert daemon.router.slots["cycle"].current.live <= 16  # type: ignore[union-attr]
        # A mailbox flood from one call: the first 8 fit, the other 92 are refused, nothing grows.
        flood = await http(addr, "POST", "/front", struct.pack("<iII", 1, 64, 5) + b"flood")
        # (Exactly 8 when the 100 sends run within one slice; with slices shortened by the neighbour's traffic, the
        # sink's worker may drain the mailbox between two of them, and more fit.)
        sent, accepted, refused, other = struct.unpack("<iiii", flood.body)
        assert (sent, accepted + refused, other) == (12, 100, 0) and accepted >= 8
        # A trap storm: quarantined after max_failures, then refused fast.
        for _ in range(4):
            assert (await http(addr, "POST", "/stormy", b"u")).status == 500
        storm = await http(addr, "POST", "/stormy", b"fine")
        assert storm.status == 503 and "is quarantined" in storm.json()["message"]
        # Files and environment it was not granted.
        probe = await http(addr, "POST", "/front", struct.pack("<iII", 1, 64, 4) + b"wasi")
        assert struct.unpack("<iiii", probe.body)[1:] == (0, 8, 8)

        stop.set()
        await task
        assert lost == []
        assert len(served) > 20
