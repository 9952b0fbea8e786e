"""Preemption at the engine level: an entry suspended at the end of its slice, resumed, cancelled and reused; a
call that waits on a callee which gave up its slice; a trap and a host bug while a call is suspended; and the
same through the compiled path. (Hostile guests beside a healthy service, through a real daemon:
test_preemption.py.)"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_engine import RecordingHost, start

from conftest import fixture, http, make_config, running
from micromono import _accelerate
from micromono.abi import KIND_CALL, KIND_HTTP, encode_http_request
from micromono.engine import Engine, Instance
from micromono.errors import CallTimeout


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with Engine(RecordingHost(), cache_dir=tmp_path / "cache", epoch_tick=0.002) as eng:
        yield eng


def slow_request(steps: int, payload: bytes = b"done") -> bytes:
    """An HTTP request to slow.wat: count `steps` down, then call `echo` with `payload`."""
    return encode_http_request(b"POST", b"/", b"", b"", struct.pack("<I", steps) + payload)


def test_a_long_entry_gives_up_its_slice_and_is_resumed_to_its_end(engine: Engine) -> None:
    instance = start(engine, "slow.wat")
    instance.deadline = time.monotonic() + 30
    assert instance.begin(KIND_HTTP, slow_request(300_000_000)) is None  # hundreds of ms: past one 2 ms slice
    assert instance.suspended
    steps = 0
    reply = None
    while reply is None:
        reply = instance.step()
        steps += 1
    assert steps >= 5 and not instance.suspended
    assert reply[:4] == b"\xc8\x00\x00\x00"  # 200, no headers (the recording host's call answered 0 bytes)
    assert engine.host.calls[-1][0] == b"echo"  # type: ignore[attr-defined]
    # A short entry on the same instance finishes within its first slice.
    assert instance.begin(KIND_HTTP, slow_request(10)) is not None


def test_a_cancelled_entry_never_runs_again_and_its_store_takes_the_next_one(engine: Engine) -> None:
    instance = start(engine, "hostile.wat")
    instance.deadline = time.monotonic() + 60
    assert instance.begin(KIND_CALL, b"l") is None
    assert instance.step() is None and instance.step() is None
    instance.cancel()
    assert instance.poisoned and not instance.suspended  # its memory may be half-updated: the pool replaces it
    instance.cancel()  # idempotent
    # The store itself is usable again (the pool's policy, not wasmtime's, retires it).
    instance.deadline = time.monotonic() + 5
    assert instance.invoke(KIND_CALL, b"fine") == b"fine"
    instance.close()


def test_an_entry_past_its_deadline_while_suspended_ends_with_a_timeout(engine: Engine) -> None:
    instance = start(engine, "hostile.wat")
    instance.deadline = time.monotonic() + 0.05
    assert instance.begin(KIND_CALL, b"l") is None
    with pytest.raises(CallTimeout, match="ran past its deadline"):
        instance.finish(None)
    assert instance.poisoned and not instance.suspended


class _Stepping:
    """A Waiting (engine.Waiting) that gives up `slices` times, then answers `result` or raises `error`."""

    def __init__(self, callee: Instance, slices: int, result: int = 7, error: BaseException | None = None) -> None:
        self.callee_instance = callee
        self.slices = slices
        self.result = result
        self.error = error
        self.cancelled = False

    def step(self) -> int | None:
        if self.slices:
            self.slices -= 1
            return None
        if self.error is not None:
            raise self.error
        return self.result

    def cancel(self) -> None:
        self.cancelled = True


class _WaitingHost(RecordingHost):
    def __init__(self) -> None:
        super().__init__()
        self.waiting: _Stepping | None = None

    def call(self, caller: Instance, target: bytes, request: bytes, reply_ptr: int, reply_cap: int) -> int | _Stepping:  # type: ignore[override]
        assert self.waiting is not None
        return self.waiting


def caller_request(target: bytes, payload: bytes) -> bytes:
    return struct.pack("<III", 1, 64, len(target)) + target + payload


def test_a_caller_waits_in_call_while_its_callee_runs_slice_by_slice() -> None:
    host = _WaitingHost()
    with Engine(host, cache_dir=None, epoch_tick=0.002) as eng:
        caller = eng.compile("caller", fixture("caller.wat")).instantiate(memory_limit=1 << 22)
        callee = eng.compile("echo", fixture("echo.wat")).instantiate(memory_limit=1 << 20)
        waiting = host.waiting = _Stepping(callee, slices=3, result=7)
        caller.deadline = time.monotonic() + 10
        assert caller.begin(KIND_CALL, caller_request(b"x", b"hi")) is None  # waits on the callee: suspended
        # The first resume only gives the loop its turn; then one callee slice per resume. (On a loaded machine
        # the caller's own code may also run past an epoch tick before it calls: one more resume, not an error.)
        steps, reply = 0, None
        while reply is None and steps < 100:
            reply = caller.step()
            steps += 1
            assert waiting.slices >= 3 - steps  # never more than one of the callee's slices per resume
        assert reply is not None and struct.unpack_from("<i", reply)[0] == 7  # call's result, as the guest saw it
        assert waiting.slices == 0 and steps >= 4


def test_a_host_bug_while_a_call_waits_is_raised_once_the_caller_unwinds() -> None:
    host = _WaitingHost()
    with Engine(host, cache_dir=None, epoch_tick=0.002) as eng:
        caller = eng.compile("caller", fixture("caller.wat")).instantiate(memory_limit=1 << 22)
        callee = eng.compile("echo", fixture("echo.wat")).instantiate(memory_limit=1 << 20)
        host.waiting = _Stepping(callee, slices=2, error=RuntimeError("boom in a host import"))
        caller.deadline = time.monotonic() + 10
        assert caller.begin(KIND_CALL, caller_request(b"x", b"hi")) is None
        with pytest.raises(RuntimeError, match="boom in a host import"):
            caller.finish(None)
        assert caller.poisoned


def test_cancelling_a_caller_cancels_the_call_it_waits_in_first() -> None:
    host = _WaitingHost()
    with Engine(host, cache_dir=None, epoch_tick=0.002) as eng:
        caller = eng.compile("caller", fixture("caller.wat")).instantiate(memory_limit=1 << 22)
        callee = eng.compile("echo", fixture("echo.wat")).instantiate(memory_limit=1 << 20)
        waiting = host.waiting = _Stepping(callee, slices=1000)
        caller.deadline = time.monotonic() + 10
        assert caller.begin(KIND_CALL, caller_request(b"x", b"hi")) is None
        assert caller.step() is None
        assert eng.callee_of(caller) is callee
        caller.cancel()
        assert waiting.cancelled and caller.poisoned and eng.callee_of(caller) is None


async def test_a_callee_that_traps_after_many_slices_is_an_error_code_to_its_caller(tmp_path: Path) -> None:
    services = {
        "front": {"wasm": fixture("caller.wat"), "routes": ["/front"], "calls": ["hostile"], "call_timeout": 30.0},
        "hostile": {"wasm": fixture("hostile.wat"), "call_timeout": 30.0},
        "healthy": {"wasm": fixture("echo.wat"), "routes": ["/echo"]},
    }
    async with running(make_config(tmp_path, services)) as daemon:
        addr = daemon.addresses[0]
        response = await http(addr, "POST", "/front", caller_request(b"hostile", b"t"))
        assert response.status == 200
        code = struct.unpack_from("<i", response.body)[0]
        assert code == -4  # MM_ERR_TRAP (docs/abi.md)
        assert b"unreachable" in response.body[4:]
        hostile = daemon.router.slots["hostile"].current
        front = daemon.router.slots["front"].current
        assert hostile is not None and front is not None
        assert hostile.traps == 1 and front.preempted == 1
        assert (await http(addr, "POST", "/echo", b"after")).body == b"after"


@pytest.mark.parametrize("compiled", [False, True])
def test_a_suspended_entry_gives_the_same_result_on_both_paths(tmp_path: Path, compiled: bool) -> None:
    if compiled and _accelerate.speedups is None:
        pytest.skip(f"micromono._speedups is not usable: {_accelerate.speedups_status()}")
    with Engine(RecordingHost(), cache_dir=tmp_path / "cache", epoch_tick=0.002, compiled=compiled) as engine:
        instance = start(engine, "slow.wat")
        instance.deadline = time.monotonic() + 30
        assert instance.begin(KIND_HTTP, slow_request(300_000_000, b"same")) is None
        reply = instance.finish(None)
        assert reply[:4] == b"\xc8\x00\x00\x00"
        instance.close()
