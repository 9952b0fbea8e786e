"""The `micromono` command in real subprocesses (exit codes, messages, startup log, signals), and `micromono actors`
in-process against a real admin listener (actor services over tests/test_metrics.py's fake storage)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_admin import actor_pages, listening
from test_metrics import FakeStorage, Info, actor_service, in_memory

from conftest import ROOT, Served, fixture, make_config, running, write_manifest
from micromono import _accelerate
from micromono.cli import main
from micromono.router import Router

PYTHON = sys.executable


def micromono(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "micromono", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def app(tmp_path: Path) -> Path:
    return write_manifest(
        tmp_path,
        {
            "echo": {"wasm": fixture("echo.wat"), "routes": ["/echo"]},
            "front": {"wasm": fixture("caller.wat"), "routes": ["/front"], "calls": ["echo"]},
        },
    )


def test_version() -> None:
    result = micromono("version")
    assert result.returncode == 0
    first, second = result.stdout.splitlines()
    assert first.startswith("micromono 0.1.0 (wasmtime 50.") and first.endswith("guest ABI v2)")
    assert second == f"compiled path: {_accelerate.PATH_SUMMARY}"  # the child decides as this process did


def test_a_reader_that_goes_away_ends_the_command_quietly_with_141() -> None:
    """`micromono version | head -1`: stdout is a pipe whose reader is gone, so writing to it fails (EPIPE)."""
    code = (
        "import os, sys\n"
        "read, write = os.pipe()\n"
        "os.close(read)\n"
        "os.dup2(write, 1)\n"
        "from micromono.cli import main\n"
        "sys.exit(main(['version']))\n"
    )
    done = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert (done.returncode, done.stderr) == (141, "")


def test_usage_error_exits_2() -> None:
    result = micromono("serve")
    assert result.returncode == 2
    assert "the following arguments are required: manifest" in result.stderr


def test_check_compiles_and_starts_every_module(tmp_path: Path) -> None:
    result = micromono("check", str(app(tmp_path)))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{tmp_path / 'services.toml'}: ok, 2 services"
    assert lines[1].split()[0] == "echo" and lines[2].split()[0] == "front"


def test_check_reports_invalid_manifests_and_modules(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("version = 1\n[services.a\n")
    result = micromono("check", str(bad))
    assert result.returncode == 1
    assert result.stderr.startswith(f"micromono: {bad}: 1 problem\n")
    manifest = write_manifest(
        tmp_path,
        {
            "gone": {"wasm": tmp_path / "gone.wasm"},
            "notabi": {"wasm": fixture("missing_exports.wat")},
            "ok": {"wasm": fixture("echo.wat")},
        },
    )
    result = micromono("check", str(manifest))
    assert result.returncode == 1
    assert result.stderr.startswith("micromono: cannot start: 2 problems\n")
    assert f"service 'gone' ({tmp_path / 'gone.wasm'}): file not found" in result.stderr
    assert "service 'notabi'" in result.stderr and "does not follow the micromono guest ABI v2" in result.stderr


def test_serve_logs_services_and_addresses_then_stops_gracefully_on_sigterm(tmp_path: Path) -> None:
    served = Served(app(tmp_path), "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0")
    try:
        loaded = {e["service"]: e for e in served.events if e["event"] == "service.load.complete"}
        assert set(loaded) == {"echo", "front"}
        assert str(loaded["echo"]["version"]).startswith(str(loaded["echo"]["version"])[:12])
        (address,) = served.ready["ingress"]  # type: ignore[misc]
        with urllib.request.urlopen(f"http://{address}/echo", data=b"over a real socket", timeout=10) as response:
            assert response.read() == b"over a real socket"
        code, events = served.stop(signal.SIGTERM)
    finally:
        served.kill()
    assert code == 0
    names = [e["event"] for e in events]
    assert names[-3:] == ["daemon.signal.received", "daemon.shutdown.started", "daemon.shutdown.complete"]


def test_serve_stops_on_sigint(tmp_path: Path) -> None:
    served = Served(app(tmp_path), "--listen", "127.0.0.1:0", "--metrics-listen", "")
    try:
        assert served.ready["metrics"] is None
        code, events = served.stop(signal.SIGINT)
    finally:
        served.kill()
    assert code == 0
    assert events[-1]["event"] == "daemon.shutdown.complete"


def test_serve_fails_with_exit_3_on_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = micromono("serve", str(app(tmp_path)), "--listen", f"127.0.0.1:{port}", "--metrics-listen", "")
    assert result.returncode == 3
    assert f"daemon.listen: cannot bind 127.0.0.1:{port}: " in result.stderr
    assert "address already in use; pick a free port" in result.stderr.lower()


def test_serve_fails_with_exit_3_on_an_invalid_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "services.toml"
    manifest.write_text('version = 1\n[services.x]\nwsam = "x.wasm"\n')
    result = micromono("serve", str(manifest))
    assert result.returncode == 3
    assert 'services.x.wsam: unknown key (did you mean "wasm"?)' in result.stderr


@pytest.mark.skipif(not hasattr(os, "getpgid"), reason="POSIX only")
def test_serve_rejects_a_bad_listen_flag(tmp_path: Path) -> None:
    result = micromono("serve", str(app(tmp_path)), "--listen", "nonsense")
    assert result.returncode == 2
    assert "--listen" in result.stderr


def test_status_shows_services_versions_and_reloads(tmp_path: Path) -> None:
    served = Served(app(tmp_path), "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0")
    try:
        metrics = served.ready["metrics"]
        result = micromono("status", "--url", f"http://{metrics}")
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].startswith("serving, ingress 127.0.0.1:")
        assert lines[2].split()[0] == "echo" and lines[3].split()[0] == "front"
        raw = micromono("status", "--url", f"http://{metrics}", "--json")
        assert json.loads(raw.stdout)["reload"]["watching"] is True
        served.stop(signal.SIGTERM)
    finally:
        served.kill()
    result = micromono("status", "--url", f"http://{metrics}")
    assert result.returncode == 1
    assert "is the daemon running?" in result.stderr


# --- micromono actors: in-process, against a real admin listener on the test's loop --------------------------------


def actors_daemon() -> Router:
    """An actor service `counter` (over a fake storage): three actors with storage, one of them live with an
    alarm and entries, and one in memory that never committed."""
    router = Router()
    rows = {"b/1": [(b"count", b"41"), (b"\xff", b"\x80raw")]}
    keyed = actor_service(
        router,
        "counter",
        {
            "a": Info(10, last_active=time.time() - 3 * 3600),
            "b/1": Info(2048, last_active=time.time() - 90, alarm=(1_800_000_000_000, 1)),
            "c": Info(5),
        },
        FakeStorage(rows),
    )
    in_memory(keyed, "b/1", live=True, queued=2)
    in_memory(keyed, "fresh", live=True)
    return router


async def run_cli(*args: str) -> int:
    """`micromono ARGS` in a worker thread (it blocks on urllib), while this loop serves the admin listener."""
    return await asyncio.to_thread(main, list(args))


async def test_actors_lists_a_page_as_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    """A page of actors: key, state, bytes, queued, last activity (relative), alarm (UTC); then how to get the
    next page."""
    async with listening(actor_pages(actors_daemon())) as (host, port):
        url = f"http://{host}:{port}"
        assert await run_cli("actors", "counter", "--url", url, "--limit", "3") == 0
        first = capsys.readouterr().out.splitlines()
        assert await run_cli("actors", "counter", "--url", url, "--after", "c") == 0
        second = capsys.readouterr().out.splitlines()
    assert first[0] == "counter: 2 live, 3 with storage"
    assert first[1].split() == ["key", "state", "bytes", "queued", "last", "active", "alarm"]
    assert first[2].split() == ["a", "hibernated", "10", "0", "3h", "ago", "-"]
    assert first[3].split() == ["b/1", "live", "2048", "2", "1m", "ago", "2027-01-15T08:00:00+00:00"]
    c = first[4].split()  # last active in 2023: so many days ago
    assert c[:4] == ["c", "hibernated", "5", "0"] and c[4].endswith("d") and c[5:] == ["ago", "-"]
    assert first[5] == "more: micromono actors counter --after c"
    assert second[2].split() == ["fresh", "live", "0", "0", "never", "-"]
    assert len(second) == 3  # the last page: no "more"


async def test_actors_with_a_key_shows_its_record_and_entries(capsys: pytest.CaptureFixture[str]) -> None:
    """One actor (its key percent-encoded on the way): its record, then its entries, base64 marked as such."""
    async with listening(actor_pages(actors_daemon())) as (host, port):
        assert await run_cli("actors", "counter", "b/1", "--url", f"http://{host}:{port}") == 0
        out = capsys.readouterr().out.splitlines()
        assert await run_cli("actors", "counter", "b/1", "--url", f"http://{host}:{port}", "--limit", "1") == 0
        cut = capsys.readouterr().out.splitlines()
        assert await run_cli("actors", "counter", "b/1", "--url", f"http://{host}:{port}", "--json") == 0
        raw = json.loads(capsys.readouterr().out)
    assert out[0] == "counter/b/1: live, 2048 bytes stored, schema 1"
    assert out[1].startswith("last active: ") and out[1].endswith(" (1m ago)")
    assert out[2:] == [
        "alarm: 2027-01-15T08:00:00+00:00",
        "queued: 2",
        "entries (2):",
        "  count = 41",
        "  base64:/w== = base64:gHJhdw==",
    ]
    assert cut[-2:] == ["entries (1; more not shown (--limit)):", "  count = 41"]
    assert raw["entries"][0] == {"key": "count", "value": "41"} and raw["truncated"] is False


async def test_actors_reads_the_address_from_the_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --url, the admin listener is the manifest's metrics_listen."""
    async with listening(actor_pages(actors_daemon())) as (host, port):
        manifest = write_manifest(
            tmp_path, {"counter": {"wasm": tmp_path / "c.wasm", "kind": "actor"}}, {"metrics_listen": f"{host}:{port}"}
        )
        assert await run_cli("actors", "counter", "--manifest", str(manifest), "--json") == 0
    assert json.loads(capsys.readouterr().out)["known"] == 3


async def test_actors_names_what_is_unknown_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown service or key: the daemon's message on stderr, exit 1; an unreachable daemon: exit 1 too."""
    async with listening(actor_pages(actors_daemon())) as (host, port):
        url = f"http://{host}:{port}"
        assert await run_cli("actors", "nope", "--url", url) == 1
        assert capsys.readouterr().err == "micromono: no actor service 'nope' (actor services here: counter)\n"
        assert await run_cli("actors", "counter", "zz", "--url", url) == 1
        assert capsys.readouterr().err == "micromono: actor service 'counter' has no actor 'zz'\n"
    assert await run_cli("actors", "counter", "--url", url) == 1  # the listener is closed now
    err = capsys.readouterr().err
    assert err.startswith(f"micromono: cannot read {url}/actors/counter (") and err.endswith("is the daemon running?\n")


def test_actors_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A limit out of range, or --after with a KEY, is a usage error."""
    for args in (["actors", "counter", "--limit", "0"], ["actors", "counter", "k", "--after", "a"]):
        with pytest.raises(SystemExit) as exited:
            main(args)
        assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--limit: expected an integer from 1 to 10000, got '0'" in err
    assert "--after pages through a listing: it does not go with KEY" in err


async def test_status_prints_each_actor_services_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`micromono status` adds a line per actor service: live, with storage, bytes, queued, alarms pending,
    WebSockets open."""
    apps = {"echo": {"wasm": fixture("echo.wat"), "routes": ["/echo"]}}
    async with running(make_config(tmp_path, apps)) as daemon:
        assert daemon.metrics_address is not None
        # The storage layer is not part of this test: an actor service over a fake storage, for a running slot.
        keyed = actor_service(daemon.router, "echo", {"a": Info(10), "b": Info(32, alarm=(1_800_000_000_000, 1))})
        keyed.stream_counters.open = 2
        host, port = daemon.metrics_address
        assert await run_cli("status", "--url", f"http://{host}:{port}") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == (
        "actors of echo: 0 live, 2 with storage (42 bytes), 0 queued, 1 alarms pending, 2 WebSockets open"
    )
