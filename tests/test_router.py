"""Calls between services through the router, on real modules in a real daemon (ingress drives the caller)."""

from __future__ import annotations

import struct
from pathlib import Path

import structlog
from test_reload import wait_for

from conftest import fixture, http, make_config, running
from micromono.abi import ERROR_CODES


def call_request(target: str, payload: bytes, *, n: int = 1, reply_cap: int = 1024) -> bytes:
    """The caller fixture's request: call `target` n times with `payload` (n=-1: send instead)."""
    return struct.pack("<iII", n, reply_cap, len(target)) + target.encode() + payload


def result(body: bytes) -> tuple[int, bytes]:
    return struct.unpack_from("<i", body)[0], body[4:]


def services(**extra: dict[str, object]) -> dict[str, dict[str, object]]:
    base: dict[str, dict[str, object]] = {
        "front": {"wasm": fixture("caller.wat"), "routes": ["/front"], "calls": ["echo", "hostile", "front", "relay"]},
        "relay": {"wasm": fixture("caller.wat"), "calls": ["front", "echo", "relay"]},
        "echo": {"wasm": fixture("echo.wat")},
        "hostile": {"wasm": fixture("hostile.wat"), "call_timeout": 0.2},
        "stranger": {"wasm": fixture("echo.wat")},
    }
    for name, keys in extra.items():
        base.setdefault(name, {}).update(keys)
    return base


async def front(daemon_addr: tuple[str, int], request: bytes) -> tuple[int, bytes]:
    response = await http(daemon_addr, "POST", "/front", request)
    assert response.status == 200, response.body
    return result(response.body)


async def test_call_copies_request_and_reply_between_memories(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, services())) as daemon:
        addr = daemon.addresses[0]
        assert await front(addr, call_request("echo", b"ping" * 16)) == (64, b"ping" * 16)
        assert await front(addr, call_request("echo", b"", n=3)) == (0, b"")
        edge = daemon.router.slots["front"].current.edges[b"echo"]  # type: ignore[union-attr]
        assert edge.ok == 4


async def test_reply_larger_than_the_callers_buffer_is_fetched_with_take_reply(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 40  # 10 KiB
    async with running(make_config(tmp_path, services())) as daemon:
        code, reply = await front(daemon.addresses[0], call_request("echo", payload, reply_cap=100))
        assert (code, reply) == (len(payload), payload)


async def test_unknown_and_forbidden_targets_are_refused_with_codes(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, services())) as daemon:
        addr = daemon.addresses[0]
        assert await front(addr, call_request("nobody", b"x")) == (
            ERROR_CODES["MM_ERR_UNKNOWN_TARGET"],
            b"service 'front' called 'nobody', but no service of that name is loaded",
        )
        assert await front(addr, call_request("stranger", b"x")) == (
            ERROR_CODES["MM_ERR_FORBIDDEN"],
            b"service 'front' may not call 'stranger': add it to services.front.calls in services.toml",
        )
        assert daemon.router.refused == {("front", "unknown_target"): 1, ("front", "forbidden"): 1}


async def test_callee_failures_become_codes_and_the_caller_keeps_running(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, services())) as daemon:
        addr = daemon.addresses[0]
        code, message = await front(addr, call_request("hostile", b"u"))
        assert code == ERROR_CODES["MM_ERR_TRAP"]
        assert message.startswith(b"service 'hostile' trapped: wasm trap: wasm `unreachable` instruction executed")
        code, message = await front(addr, call_request("hostile", b"l"))
        assert (code, message) == (
            ERROR_CODES["MM_ERR_TIMEOUT"],
            b"service 'hostile' ran past its deadline and was interrupted",
        )
        code, message = await front(addr, call_request("hostile", b"e"))
        assert (code, message) == (ERROR_CODES["MM_ERR_APP"], b"service 'hostile' returned application error 42")
        code, message = await front(addr, call_request("hostile", b"r"))
        assert code == ERROR_CODES["MM_ERR_TRAP"]
        assert b"broke the ABI" in message
        # Trapped instances were discarded and replaced: the service still answers.
        assert await front(addr, call_request("hostile", b"fine")) == (4, b"fine")
        hostile = daemon.router.slots["hostile"].current
        assert hostile is not None and hostile.traps == 3
        edge = daemon.router.slots["front"].current.edges[b"hostile"]  # type: ignore[union-attr]
        assert edge.errors == {"trap": 1, "timeout": 1, "app_error": 1, "abi_violation": 1}


async def test_reentrant_chain_grows_the_pool_up_to_its_limit(tmp_path: Path) -> None:
    # front -> relay -> front: the inner call needs a second instance of front.
    inner = call_request("echo", b"deep")
    chain = call_request("relay", call_request("front", inner))
    async with running(make_config(tmp_path, services(front={"instances": 2}))) as daemon:
        code, reply = await front(daemon.addresses[0], chain)
        # front got relay's reply: relay's own result (front's reply length) then front's reply (echo's result).
        assert code == len(reply)
        assert result(result(reply)[1]) == (4, b"deep")
        assert daemon.router.slots["front"].current.live == 2  # type: ignore[union-attr]
    async with running(make_config(tmp_path, services(front={"instances": 1}))) as daemon:
        code, reply = await front(daemon.addresses[0], chain)
        relay_code, relay_reply = result(reply)
        assert relay_code == ERROR_CODES["MM_ERR_OVERLOADED"]
        assert relay_reply.startswith(b"service 'front' is overloaded: all 1 instances are busy")


async def test_call_depth_is_bounded(tmp_path: Path) -> None:
    request = call_request("echo", b"bottom")
    for _ in range(5):
        request = call_request("relay", request)
    config = make_config(tmp_path, services(relay={"instances": 8}), daemon={"max_call_depth": 4})
    async with running(config) as daemon:
        code, reply = await front(daemon.addresses[0], request)
        codes = []
        while True:
            c, reply = result(reply)
            codes.append(c)
            if c < 0:
                break
        assert codes[-1] == ERROR_CODES["MM_ERR_DEPTH"]
        assert reply.startswith(b"call from 'relay' to 'relay' would exceed max_call_depth=4")


async def test_send_queues_a_message_that_the_target_handles_later(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, services())) as daemon:
        addr = daemon.addresses[0]
        with structlog.testing.capture_logs() as logs:
            assert await front(addr, call_request("hostile", b"u", n=-1)) == (0, b"")
            await wait_for(lambda: any(e["event"] == "service.message.failed" for e in logs))
        failed = [e for e in logs if e["event"] == "service.message.failed"]
        assert len(failed) == 1 and failed[0]["service"] == "hostile" and "unreachable" in failed[0]["error"]
        assert await front(addr, call_request("stranger", b"x", n=-1)) == (
            ERROR_CODES["MM_ERR_FORBIDDEN"],
            b"service 'front' may not call 'stranger': add it to services.front.calls in services.toml",
        )
        edge = daemon.router.slots["front"].current.edges[b"hostile"]  # type: ignore[union-attr]
        assert edge.messages == 1


async def test_two_services_built_from_one_file_each_drain_their_own_mailbox(tmp_path: Path) -> None:
    """Two services of the same bytes (the same sha256, so versions that read alike) each get a worker of their own:
    one entry sends to both, so both need one at once."""
    apps = {
        "fanout": {"wasm": fixture("fanout.wat"), "routes": ["/fanout"], "calls": ["left", "right"]},
        "left": {"wasm": fixture("echo.wat")},
        "right": {"wasm": fixture("echo.wat")},
    }
    async with running(make_config(tmp_path, apps)) as daemon:
        left, right = daemon.router.slots["left"].current, daemon.router.slots["right"].current
        assert left is not None and right is not None and left.version == right.version
        response = await http(daemon.addresses[0], "POST", "/fanout", b"hello")
        assert (response.status, struct.unpack("<ii", response.body)) == (200, (0, 0))
        await wait_for(lambda: left.ok == right.ok == 1)
        assert (left.ok, len(left.mailbox), right.ok, len(right.mailbox)) == (1, 0, 1, 0)


async def test_full_mailbox_refuses_messages(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, services(echo={"mailbox": 2}))) as daemon:
        addr = daemon.addresses[0]
        # Fill the mailbox while no worker can run (we are on the loop thread), then send from a guest.
        echo = daemon.router.slots["echo"].current
        assert echo is not None
        echo.mailbox.put_nowait((3, b"a", None, None))
        echo.mailbox.put_nowait((3, b"b", None, None))
        code, message = await front(addr, call_request("echo", b"c", n=-1))
        assert code == ERROR_CODES["MM_ERR_OVERLOADED"]
        assert (
            message == b"service 'echo' is overloaded: its mailbox is full (2 queued); "
            b"retry later or raise its `mailbox` in services.toml"
        )
        assert echo.mailbox.statistics().rejected == 1


async def test_call_payloads_are_bounded_by_max_request_bytes(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, services())) as daemon:
        addr = daemon.addresses[0]
        daemon.router.max_request_bytes = 20  # the call limit alone (ingress keeps its own, larger)
        assert await front(addr, call_request("echo", b"x" * 20)) == (20, b"x" * 20)
        assert await front(addr, call_request("echo", b"x" * 21)) == (
            ERROR_CODES["MM_ERR_TOO_LARGE"],
            b"a request of 21 bytes to 'echo' is larger than max_request_bytes=20; "
            b"send less, or raise daemon.max_request_bytes",
        )
        code, _ = await front(addr, call_request("echo", b"y" * 21, n=-1))
        assert code == ERROR_CODES["MM_ERR_TOO_LARGE"]
