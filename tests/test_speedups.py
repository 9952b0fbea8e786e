"""The optional compiled path (micromono/_speedups.c) gives the same results as the pure-Python one.

Each case runs on fresh instances through both paths and compares what comes back or what is raised. The whole
engine, router, ingress and isolation suites also run again with MICROMONO_SPEEDUPS=1 (`make test`).
Set MICROMONO_REQUIRE_SPEEDUPS=1 (as `make test` does) to fail, rather than skip, when the extension was not built.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_engine import RecordingHost, start

from micromono import engine as engine_mod
from micromono.abi import KIND_CALL, KIND_HTTP, encode_http_request
from micromono.engine import Engine, Instance
from micromono.errors import AbiViolation, CallTimeout, GuestAppError, GuestTrap

if not engine_mod.speedups_available():
    if os.environ.get("MICROMONO_REQUIRE_SPEEDUPS") == "1":
        raise RuntimeError("micromono._speedups was not built: install a C compiler and the Python headers")
    pytest.skip("micromono._speedups was not built", allow_module_level=True)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    before = Instance.invoke
    with Engine(RecordingHost(), cache_dir=tmp_path / "cache", epoch_tick=0.002) as eng:
        yield eng
    Instance.invoke = before  # type: ignore[method-assign]


def both(engine: Engine, fixture: str, kind: int, request: bytes, deadline: float = 5.0) -> list[object]:
    """What `invoke` returns (bytes) or raises (type and message) on a fresh instance, pure path then compiled."""
    outcomes: list[object] = []
    for compiled in (False, True):
        assert engine_mod.use_speedups(compiled) is compiled
        instance = start(engine, fixture)
        instance.deadline = time.monotonic() + deadline
        try:
            outcomes.append(bytes(instance.invoke(kind, request)))
        except Exception as exc:  # noqa: BLE001 - the exception is the outcome being compared
            outcomes.append((type(exc), str(exc), getattr(instance, "poisoned", None)))
        finally:
            instance.close()
    engine_mod.use_speedups(False)
    return outcomes


def test_a_call_and_an_http_request_come_back_the_same(engine: Engine) -> None:
    pure, compiled = both(engine, "echo.wat", KIND_CALL, b"hello")
    assert pure == compiled == b"hello"
    http = encode_http_request(b"POST", b"/echo", b"", b"Host: t\r\n", b"body")
    pure, compiled = both(engine, "echo.wat", KIND_HTTP, http)
    assert pure == compiled and pure == b"\xc8\x00\x00\x00body"


def test_a_request_larger_than_the_inbox_grows_it_either_way(engine: Engine) -> None:
    payload = bytes(range(256)) * 1024  # 256 KiB: more than the 64 KiB inbox first asked for
    pure, compiled = both(engine, "echo.wat", KIND_CALL, payload)
    assert pure == compiled == payload


@pytest.mark.parametrize(
    ("body", "error"),
    [(b"e", GuestAppError), (b"u", GuestTrap), (b"r", AbiViolation), (b"s", GuestTrap), (b"l", CallTimeout)],
)
def test_failures_are_raised_the_same(engine: Engine, body: bytes, error: type[Exception]) -> None:
    pure, compiled = both(engine, "hostile.wat", KIND_CALL, body, deadline=0.05)
    assert isinstance(pure, tuple) and pure[0] is error
    assert pure == compiled


def test_the_compiled_path_is_what_runs_when_enabled(engine: Engine) -> None:
    instance = start(engine, "echo.wat")
    try:
        engine_mod.use_speedups(True)
        assert Instance.invoke is Instance._invoke_compiled
        assert bytes(instance.invoke(KIND_CALL, b"x" * 100)) == b"x" * 100
        engine_mod.use_speedups(False)
        assert Instance.invoke is engine_mod._PURE_INVOKE
    finally:
        instance.close()
