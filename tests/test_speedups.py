"""The compiled path gives the same results as the pure-Python one, and is used exactly when it is built and current.

It has two parts: micromono/_speedups.c (the guest call and the native epoch ticker; each case here runs on fresh
instances of a pure Engine and a compiled one and compares what comes back or what is raised) and the hot-path
modules compiled by mypyc into micromono/_compiled/ from the same sources (checked here to load only when current,
and not with MICROMONO_PURE=1). `make test` runs the whole suite twice, pure (MICROMONO_PURE=1) and compiled; its
compiled run passes `--require-path=compiled` (tests/conftest.py), which fails at once if the compiled path is not
in use.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import wasmtime
from test_engine import RecordingHost, start

import micromono
from micromono import _accelerate
from micromono.abi import KIND_CALL, KIND_HTTP, encode_http_request
from micromono.engine import CLOCK, Engine, Instance, busy_slice
from micromono.engine.clock import NativeTicker, Ticker
from micromono.engine.native import CompiledInstance
from micromono.errors import AbiViolation, CallTimeout, GuestAppError, GuestTrap

if _accelerate.speedups is None:
    pytest.skip(f"micromono._speedups is not usable: {_accelerate.speedups_status()}", allow_module_level=True)


def _compiled_module_names() -> list[str]:
    """The modules the mypyc build compiled, from its own record (`_compiled/sources.sha256`)."""
    manifest = Path(micromono.__file__).parent / "_compiled" / "sources.sha256"
    lines = manifest.read_text().splitlines() if manifest.is_file() else []
    names = [Path(line.partition("  ")[2]).with_suffix("").parts for line in lines]
    return [".".join(parts[:-1] if parts[-1] == "__init__" else parts) for parts in names]


def test_the_compiled_modules_run_exactly_when_the_compiled_path_is_in_use() -> None:
    names = _compiled_module_names()
    modules = [importlib.import_module(f"micromono.{name}") for name in names]
    compiled = [Path(module.__file__ or "").suffix == ".so" for module in modules]
    assert compiled == [_accelerate.COMPILED] * len(names)
    assert (micromono.__path__[0] == _accelerate.compiled_path) is _accelerate.COMPILED
    with Engine(RecordingHost(), cache_dir=None) as engine:
        assert engine.compiled is _accelerate.COMPILED


def _import_in(root: Path, pure: str) -> subprocess.CompletedProcess[str]:
    """Import two hot-path modules and the engine from the package copy under `root` in a fresh interpreter, with
    MICROMONO_PURE=`pure`; print their files and whether the engine runs compiled."""
    code = (
        "import micromono.ingress as i, micromono.router as r, micromono.engine as e; print(i.__file__);"
        " print(r.__file__); print(e.speedups_in_use())"
    )
    # -S and cwd: neither the editable install's import finder nor the current directory can send `micromono`
    # back to the checkout.
    path = os.pathsep.join([str(root), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    env = {**os.environ, "PYTHONPATH": path, "MICROMONO_PURE": pure}
    return subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=60, check=True
    )


def test_a_stale_build_is_not_used(tmp_path: Path) -> None:
    if _accelerate.compiled_status() is not None:
        pytest.skip(f"compiled modules not built: {_accelerate.compiled_status()}")
    package = Path(micromono.__file__).parent
    copy = tmp_path / "micromono"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    pure = [str(copy / "ingress" / "__init__.py"), str(copy / "router.py"), "False"]
    current = _import_in(tmp_path, "0")
    assert ["_compiled" in Path(line).parts for line in current.stdout.split()[:2]] == [True, True]
    assert current.stdout.split()[2] == "True" and current.stderr == ""
    forced = _import_in(tmp_path, "1")
    assert forced.stdout.split() == pure and forced.stderr == ""  # chosen: no warning
    # An edit to one source after the build: the compiled modules would not be what the sources say, so neither
    # part is used (the modules import each other, and the suite never runs a mix of the two paths).
    original = (copy / "router.py").read_text()
    (copy / "router.py").write_text(original + "\n# edited\n")
    stale = _import_in(tmp_path, "0")
    assert stale.stdout.split() == pure
    assert "router.py changed after" in stale.stderr and "build_compiled.py" in stale.stderr
    assert "MICROMONO_PURE=1" in stale.stderr  # how to choose pure Python instead
    (copy / "router.py").write_text(original)
    # The same for micromono/_speedups.c: its build carries the digest of the source it was built from.
    source = (copy / "_speedups.c").read_text()
    (copy / "_speedups.c").write_text(source + "\n/* edited */\n")
    stale_c = _import_in(tmp_path, "0")
    assert stale_c.stdout.split() == pure and "_speedups.c changed after" in stale_c.stderr
    (copy / "_speedups.c").write_text(source)
    # A build for another Python (here: one extension module missing for this one) is not used either.
    (copy / "_compiled" / "ingress" / f"http{sysconfig.get_config_var('EXT_SUFFIX')}").unlink()
    other = _import_in(tmp_path, "0")
    assert other.stdout.split() == pure
    assert "has no ingress/http" in other.stderr and "for this Python" in other.stderr


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[tuple[Engine, Engine]]:
    """A pure Engine and a compiled one."""
    with (
        Engine(RecordingHost(), cache_dir=tmp_path / "cache", epoch_tick=0.002, compiled=False) as pure,
        Engine(RecordingHost(), cache_dir=tmp_path / "cache", epoch_tick=0.002, compiled=True) as compiled,
    ):
        yield pure, compiled


def both(
    engines: tuple[Engine, Engine], fixture: str, kind: int, request: bytes, deadline: float = 5.0
) -> list[object]:
    """What `invoke` returns (bytes) or raises (type and message) on a fresh instance, pure path then compiled."""
    outcomes: list[object] = []
    for engine in engines:
        instance = start(engine, fixture)
        instance.deadline = time.monotonic() + deadline
        try:
            outcomes.append(bytes(instance.invoke(kind, request)))
        except Exception as exc:  # noqa: BLE001 - the exception is the outcome being compared
            outcomes.append((type(exc), str(exc), getattr(instance, "poisoned", None)))
        finally:
            instance.close()
    return outcomes


def test_a_call_and_an_http_request_come_back_the_same(engines: tuple[Engine, Engine]) -> None:
    pure, compiled = both(engines, "echo.wat", KIND_CALL, b"hello")
    assert pure == compiled == b"hello"
    http = encode_http_request(b"POST", b"/echo", b"", b"Host: t\r\n", b"body")
    pure, compiled = both(engines, "echo.wat", KIND_HTTP, http)
    assert pure == compiled and pure == b"\xc8\x00\x00\x00body"


def test_a_request_larger_than_the_inbox_grows_it_either_way(engines: tuple[Engine, Engine]) -> None:
    payload = bytes(range(256)) * 1024  # 256 KiB: more than the 64 KiB inbox first asked for
    pure, compiled = both(engines, "echo.wat", KIND_CALL, payload)
    assert pure == compiled == payload


@pytest.mark.parametrize(
    ("body", "error"),
    [(b"e", GuestAppError), (b"u", GuestTrap), (b"r", AbiViolation), (b"s", GuestTrap), (b"l", CallTimeout)],
)
def test_failures_are_raised_the_same(engines: tuple[Engine, Engine], body: bytes, error: type[Exception]) -> None:
    pure, compiled = both(engines, "hostile.wat", KIND_CALL, body, deadline=0.05)
    assert isinstance(pure, tuple) and pure[0] is error
    assert pure == compiled


def test_each_engine_runs_the_path_it_was_made_for(engines: tuple[Engine, Engine]) -> None:
    pure, compiled = engines
    assert (pure.compiled, compiled.compiled) == (False, True)
    for engine, kind in ((pure, Instance), (compiled, CompiledInstance)):
        instance = start(engine, "echo.wat")
        try:
            assert type(instance) is kind
            assert bytes(instance.invoke(KIND_CALL, b"x" * 100)) == b"x" * 100
        finally:
            instance.close()


def _wasm_engine() -> wasmtime.Engine:
    config = wasmtime.Config()
    config.epoch_interruption = True
    return wasmtime.Engine(config)


def ticks_during(seconds: float, busy: Callable[[], None] | None = None) -> int:
    """The ticks in `seconds` of real time (what a ticker is for), calling `busy` (as guest entries do) every
    millisecond if given."""
    start = CLOCK.tick
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        if busy is not None:
            busy()
        time.sleep(0.001)
    return CLOCK.tick - start


def test_the_native_ticker_ticks_without_python_waits_when_idle_and_follows_the_pace() -> None:
    ticker = NativeTicker(_wasm_engine(), 0.002, None)
    try:
        assert busy_slice(0.01) == 0.002  # a fifth of the slice
        # Ticks while entries keep it busy, with the deadline clock's time moving on (a C thread, no GIL needed:
        # this thread holds the GIL in a busy loop below while counting).
        ticker.busy()
        start, now = CLOCK.tick, CLOCK.now
        until = time.monotonic() + 0.1
        while time.monotonic() < until:
            ticker.busy()
        assert CLOCK.tick - start >= 3 and CLOCK.now > now
        # No entry for IDLE_TICKS ticks: it waits (but for one heartbeat tick every Ticker.IDLE_HEARTBEAT), and an
        # entry wakes it.
        deadline = time.monotonic() + 30
        while not ticker.idle:
            assert time.monotonic() < deadline, "the ticker never went idle"
            time.sleep(0.01)
        # Sampled, not counted in CLOCK.tick, which every engine's ticker in the process moves.
        samples = []
        for _ in range(100):
            samples.append(ticker.idle)
            time.sleep(0.001)
        # About IDLE_HEARTBEAT of every IDLE_HEARTBEAT + one period waiting (a ticking ticker never is).
        assert sum(samples) >= 50, f"waiting in {sum(samples)} of 100 samples (heartbeat {Ticker.IDLE_HEARTBEAT} s)"
        ticker.busy()
        deadline = time.monotonic() + 30
        while ticker.idle:
            assert time.monotonic() < deadline, "busy() did not wake the ticker"
            time.sleep(0.001)
        # Contended: ticks every busy_slice (2 ms) instead of every 10 ms.
        ticker.pace(busy_slice(0.01))
        busy = ticks_during(0.2, ticker.busy)
        ticker.pace(0.01)
        ticks_during(0.02, ticker.busy)  # the tick in flight at the old period
        calm = ticks_during(0.2, ticker.busy)
        assert calm >= 5 and busy > calm * 2 and calm <= 21, (busy, calm)
    finally:
        ticker.stop()
    ticker.stop()  # stopping twice is harmless
    assert not ticker.idle


def test_the_native_ticker_refuses_bad_periods() -> None:
    native = _accelerate.speedups
    assert native is not None
    with pytest.raises(ValueError, match="period_ns must be"):
        native.ticker_start(1, 1, 1, 10, None)
    with pytest.raises(TypeError, match="setup must be callable"):
        native.ticker_start(1, 1, 1, 10_000, 42)


def test_the_native_ticker_stops_at_once_whatever_its_period() -> None:
    """Its sleep is a timed wait that `stop` (and `pace`) cut short: an engine with an hour-long tick closes at once
    (bench_instructions makes such engines)."""
    ticker = NativeTicker(_wasm_engine(), 3600.0, None)
    ticker.busy()
    stopper = threading.Thread(target=ticker.stop)
    stopper.start()
    stopper.join(timeout=30)
    assert not stopper.is_alive(), "stop() waited for the ticker's hour-long tick"
