"""The optional compiled path gives the same results as the pure-Python one.

It has two parts: micromono/_speedups.c (the guest call; each case here runs on fresh instances through both paths
and compares what comes back or what is raised) and the hot-path modules compiled by mypyc into
micromono/_compiled/ from the same sources (checked here to load only when asked for and only when current).
The whole suite also runs again with MICROMONO_SPEEDUPS=1 (`make test`). Set MICROMONO_REQUIRE_SPEEDUPS=1 (as
`make test` does) to fail, rather than skip, when either part was not built.
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
from test_engine import RecordingHost, start

import micromono
from micromono import _accelerate
from micromono import engine as engine_mod
from micromono.abi import KIND_CALL, KIND_HTTP, encode_http_request
from micromono.engine import Engine, Instance
from micromono.errors import AbiViolation, CallTimeout, GuestAppError, GuestTrap

if os.environ.get("MICROMONO_REQUIRE_SPEEDUPS") == "1":
    if not engine_mod.speedups_available():
        raise RuntimeError("micromono._speedups was not built: install a C compiler and the Python headers")
    if _accelerate.compiled_status() is not None:
        raise RuntimeError(f"the compiled hot-path modules are not usable: {_accelerate.compiled_status()}")
if not engine_mod.speedups_available():
    pytest.skip("micromono._speedups was not built", allow_module_level=True)

HOTPATH = (
    "channels",
    "service",
    "registry",
    "runs",
    "router",
    "ingress",
    "ingress.http",
    "ingress.heads",
    "ingress.routes",
    "ingress.responses",
)


def test_the_compiled_modules_are_what_runs_when_asked_for() -> None:
    """Under MICROMONO_SPEEDUPS=1 (make test's second run) every hot-path module is the compiled one; else none."""
    modules = [importlib.import_module(f"micromono.{name}") for name in HOTPATH]
    compiled = [Path(module.__file__ or "").suffix == ".so" for module in modules]
    if os.environ.get("MICROMONO_SPEEDUPS") == "1" and os.environ.get("MICROMONO_REQUIRE_SPEEDUPS") == "1":
        assert compiled == [True] * len(HOTPATH)
        assert micromono.__path__[0] == _accelerate.compiled_path
    elif os.environ.get("MICROMONO_SPEEDUPS") != "1":
        assert compiled == [False] * len(HOTPATH)
        assert _accelerate.compiled_path is None


def _import_in(root: Path, speedups: str) -> subprocess.CompletedProcess[str]:
    """Import the hot-path modules from the package copy under `root` in a fresh interpreter; print their files."""
    code = "import micromono.ingress as i, micromono.router as r; print(i.__file__); print(r.__file__)"
    # -S and cwd: neither the editable install's import finder nor the current directory can send `micromono`
    # back to the checkout.
    path = os.pathsep.join([str(root), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    env = {**os.environ, "PYTHONPATH": path, "MICROMONO_SPEEDUPS": speedups}
    return subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=60, check=True
    )


def test_a_stale_build_is_not_used(tmp_path: Path) -> None:
    if _accelerate.compiled_status() is not None:
        pytest.skip(f"compiled modules not built: {_accelerate.compiled_status()}")
    package = Path(micromono.__file__).parent
    copy = tmp_path / "micromono"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    current = _import_in(tmp_path, "1")
    assert ["_compiled" in Path(line).parts for line in current.stdout.split()] == [True, True]
    assert _import_in(tmp_path, "0").stdout.split() == [str(copy / "ingress" / "__init__.py"), str(copy / "router.py")]
    # An edit to one source after the build: the compiled modules would not be what the sources say, so neither
    # is used (the modules import each other; a mix would be no better).
    original = (copy / "router.py").read_text()
    (copy / "router.py").write_text(original + "\n# edited\n")
    stale = _import_in(tmp_path, "1")
    assert stale.stdout.split() == [str(copy / "ingress" / "__init__.py"), str(copy / "router.py")]
    assert "router.py changed after" in stale.stderr and "build_compiled.py" in stale.stderr
    # A build for another Python (here: one extension module missing for this one) is not used either.
    (copy / "router.py").write_text(original)
    (copy / "_compiled" / "ingress" / f"http{sysconfig.get_config_var('EXT_SUFFIX')}").unlink()
    other = _import_in(tmp_path, "1")
    assert other.stdout.split() == [str(copy / "ingress" / "__init__.py"), str(copy / "router.py")]
    assert "has no ingress/http" in other.stderr and "for this Python" in other.stderr


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    before = Instance.begin
    with Engine(RecordingHost(), cache_dir=tmp_path / "cache", epoch_tick=0.002) as eng:
        yield eng
    Instance.begin = before  # type: ignore[method-assign]


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
        assert Instance.begin is Instance._begin_compiled
        assert bytes(instance.invoke(KIND_CALL, b"x" * 100)) == b"x" * 100
        engine_mod.use_speedups(False)
        assert Instance.begin is engine_mod._PURE_BEGIN
    finally:
        instance.close()


def ticks_during(seconds: float, busy: Callable[[], None] | None = None) -> int:
    """The ticks in `seconds`, calling `busy` (as guest entries do) every millisecond if given."""
    start = engine_mod.CLOCK.tick
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        if busy is not None:
            busy()
        time.sleep(0.001)
    return engine_mod.CLOCK.tick - start


def test_the_compiled_paths_ticker_ticks_without_python_waits_when_idle_and_follows_the_pace() -> None:
    before = Instance.begin
    engine_mod.use_speedups(True)
    try:
        with Engine(RecordingHost(), cache_dir=None, epoch_tick=0.01) as eng:
            ticker = eng._ticker
            assert isinstance(ticker, engine_mod._NativeTicker)
            assert eng.busy_slice == 0.002  # a fifth of the slice
            # Ticks while entries keep it busy, with the deadline clock's time moving on (a C thread, no GIL
            # needed: this thread holds the GIL in a busy loop below while counting).
            ticker.busy()
            start, now = engine_mod.CLOCK.tick, engine_mod.CLOCK.now
            until = time.monotonic() + 0.1
            while time.monotonic() < until:
                ticker.busy()
            assert engine_mod.CLOCK.tick - start >= 3 and engine_mod.CLOCK.now > now
            # No entry for IDLE_TICKS ticks: it waits, and an entry wakes it.
            deadline = time.monotonic() + 30
            while not engine_mod._speedups.ticker_waiting(ticker._capsule):
                assert time.monotonic() < deadline, "the ticker never went idle"
                time.sleep(0.01)
            assert ticks_during(0.05) == 0
            ticker.busy()
            deadline = time.monotonic() + 30
            while engine_mod._speedups.ticker_waiting(ticker._capsule):
                assert time.monotonic() < deadline, "busy() did not wake the ticker"
                time.sleep(0.001)
            # Contended: ticks every busy_slice (2 ms) instead of every 10 ms.
            eng.pace(True)
            busy = ticks_during(0.2, ticker.busy)
            eng.pace(False)
            ticks_during(0.02, ticker.busy)  # the tick in flight at the old period
            calm = ticks_during(0.2, ticker.busy)
            assert calm >= 5 and busy > calm * 2 and calm <= 21, (busy, calm)
        ticker.stop()  # stopping twice is harmless
    finally:
        Instance.begin = before  # type: ignore[method-assign]


def test_the_native_ticker_refuses_bad_periods() -> None:
    with pytest.raises(ValueError, match="period_ns must be"):
        engine_mod._speedups.ticker_start(1, 1, 1, 10, None)
    with pytest.raises(TypeError, match="setup must be callable"):
        engine_mod._speedups.ticker_start(1, 1, 1, 10_000, 42)


def test_the_native_ticker_stops_at_once_whatever_its_period() -> None:
    """Its sleep is a timed wait that `stop` (and `pace`) cut short: an engine with an hour-long tick closes at once
    (bench_instructions makes such engines)."""
    before = Instance.begin
    engine_mod.use_speedups(True)
    try:
        eng = Engine(RecordingHost(), cache_dir=None, epoch_tick=3600.0)
        eng._ticker.busy()
        time.sleep(0.01)  # the thread is in its hour-long wait by now
        closer = threading.Thread(target=eng.close)
        closer.start()
        closer.join(timeout=30)
        assert not closer.is_alive(), "Engine.close() waited for the ticker's hour-long tick"
    finally:
        Instance.begin = before  # type: ignore[method-assign]
