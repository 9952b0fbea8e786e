"""The `micromono` command in real subprocesses: exit codes, messages, startup log, signals."""

from __future__ import annotations

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

from conftest import ROOT, fixture, write_manifest
from micromono import _accelerate

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


class Served:
    """`micromono serve` in a subprocess with JSON logs; stopped by its own PID."""

    def __init__(self, manifest: Path, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "micromono", "serve", str(manifest), "--log-format", "json", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.events: list[dict[str, object]] = []
        self.ready = self._wait_for("daemon.ready")

    def _wait_for(self, name: str, timeout: float = 30) -> dict[str, object]:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise AssertionError(f"serve exited ({self.proc.wait()}) before {name}: {self.events}")
            event = json.loads(line)
            self.events.append(event)
            if event["event"] == name:
                return event
        raise AssertionError(f"no {name} within {timeout}s")

    def stop(self, signum: int) -> tuple[int, list[dict[str, object]]]:
        self.proc.send_signal(signum)
        _, err = self.proc.communicate(timeout=30)
        self.events += [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        return self.proc.returncode, self.events

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


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
