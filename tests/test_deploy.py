"""deploy/micromono.service and how `micromono serve` behaves under a service manager: the unit passes
`systemd-analyze verify`; a real daemon subprocess (stopped by its own PID) logs JSON lines, reports READY=1 and
STOPPING=1 to `$NOTIFY_SOCKET` (Type=notify), answers /healthz, exits 0 after a clean shutdown on SIGTERM, and
reloads its manifest on SIGHUP (ExecReload=)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT, Served, fixture, write_manifest

UNIT = ROOT / "deploy" / "micromono.service"
SHIPPED_EXEC = "/usr/local/bin/micromono"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (Debian: apt-get install systemd)"
)


def unit_options() -> dict[str, list[str]]:
    options: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            options.setdefault(key, []).append(value)
    return options


def verify(unit_text: str, directory: Path) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` of `unit_text`, with ExecStart= pointing at this venv's micromono (the shipped path
    need not exist here)."""
    micromono = Path(sys.executable).with_name("micromono")
    assert micromono.exists(), f"{micromono}: the venv's console script (make install)"
    copy = directory / "micromono.service"
    copy.write_text(unit_text.replace(SHIPPED_EXEC, str(micromono)))
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(copy)], capture_output=True, text=True, timeout=60, cwd=directory
    )


# --- the unit ---------------------------------------------------------------------------------------------------


@needs_systemd_analyze
def test_the_unit_verifies_without_warnings(tmp_path: Path) -> None:
    result = verify(UNIT.read_text(), tmp_path)
    assert result.returncode == 0, result.stderr
    about_unit = [line for line in (result.stdout + result.stderr).splitlines() if "micromono.service" in line]
    assert about_unit == [], "\n".join(about_unit)


@needs_systemd_analyze
def test_verify_does_catch_a_bad_option(tmp_path: Path) -> None:
    """The check above is worth something: the same run names an unknown option in the unit."""
    result = verify(UNIT.read_text().replace("[Service]\n", "[Service]\nNoSuchOption=yes\n"), tmp_path)
    assert "NoSuchOption" in result.stdout + result.stderr


def test_the_unit_has_the_hardening_and_not_memory_deny_write_execute() -> None:
    options = unit_options()
    want = {
        "Type": "notify",
        "User": "micromono",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "Restart": "on-failure",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateDevices": "yes",
        "StateDirectory": "micromono",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "LockPersonality": "yes",
        "SystemCallArchitectures": "native",
    }
    assert {key: options.get(key, [None])[-1] for key in want} == want
    assert int(options["LimitNOFILE"][-1]) >= 65536
    assert "MemoryDenyWriteExecute" not in options  # wasmtime maps the code it compiles executable
    assert options["ExecStart"][-1].startswith(SHIPPED_EXEC + " serve --log-format json ")


# --- serve under a service manager ------------------------------------------------------------------------------


def unit_serve_options() -> list[str]:
    """The options the unit's ExecStart= gives `micromono serve` (all but the manifest, its last argument)."""
    (command,) = unit_options()["ExecStart"]
    words = command.split()
    assert words[:2] == [SHIPPED_EXEC, "serve"] and words[-1].endswith(".toml"), command
    return words[2:-1]


class Notified(Served):
    """`Served` as the unit starts it: ExecStart='s options and a `$NOTIFY_SOCKET` to report to (Type=notify)."""

    def __init__(self, manifest: Path, notify_path: Path) -> None:
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(notify_path))
        self.notify.settimeout(30)
        super().__init__(manifest, *unit_serve_options(), env={"NOTIFY_SOCKET": str(notify_path)})

    def notified(self) -> dict[str, str]:
        datagram = self.notify.recv(4096).decode()
        return dict(field.split("=", 1) for field in datagram.split("\n"))

    def url(self, key: str, path: str) -> str:
        return f"http://{self.ready[key] if key == 'metrics' else self.ready[key][0]}{path}"  # type: ignore[index]

    def close(self) -> None:
        self.kill()
        self.notify.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Notified]:
    manifest = write_manifest(tmp_path, {"echo": {"wasm": fixture("echo.wat"), "routes": ["/echo"]}}, {"watch": False})
    s = Notified(manifest, tmp_path / "notify.sock")
    try:
        yield s
    finally:
        s.close()


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def post(url: str, body: bytes) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_ready_health_and_a_clean_sigterm(served: Notified) -> None:
    ready = served.notified()
    assert ready["READY"] == "1" and ready["MAINPID"] == str(served.proc.pid)
    assert get(served.url("metrics", "/healthz")) == (200, b"ok\n")
    assert post(served.url("ingress", "/echo"), b"hi")[0] == 200
    served.proc.send_signal(signal.SIGTERM)
    assert served.notified()["STOPPING"] == "1"
    out, err = served.finish()
    assert served.proc.returncode == 0
    # The unit asks for JSON lines on stdout (journald keeps both streams; one stream, one format); stderr stays
    # empty, so anything there would be something micromono did not mean to write.
    assert unit_serve_options() == ["--log-format", "json", "--log-output", "stdout"]
    assert served.log_output == "stdout" and err == ""
    events = served.events
    assert all(isinstance(e, dict) and "timestamp" in e and "level" in e for e in events)
    assert [e["event"] for e in events][-3:] == [
        "daemon.signal.received",
        "daemon.shutdown.started",
        "daemon.shutdown.complete",
    ]


def test_sighup_reloads_the_manifest_even_without_the_file_watch(served: Notified, tmp_path: Path) -> None:
    served.notified()  # READY=1
    assert post(served.url("ingress", "/again"), b"x")[0] == 404
    manifest = tmp_path / "services.toml"
    manifest.write_text(manifest.read_text().replace('routes = ["/echo"]', 'routes = ["/echo", "/again"]'))
    served.proc.send_signal(signal.SIGHUP)
    done = served.wait_for("daemon.reload.complete")
    assert done["outcome"] == "swapped", done
    assert served.notified()["RELOADING"] == "1"
    assert served.notified()["READY"] == "1"
    assert post(served.url("ingress", "/again"), b"x")[0] == 200

    # A broken manifest changes nothing; the daemon keeps serving what it had.
    manifest.write_text(manifest.read_text() + "\nnot toml [[\n")
    served.proc.send_signal(signal.SIGHUP)
    rejected = served.wait_for("daemon.reload.complete")
    assert rejected["outcome"] == "rejected" and rejected["level"] == "warning"
    assert post(served.url("ingress", "/again"), b"x")[0] == 200
    assert get(served.url("metrics", "/healthz")) == (200, b"ok\n")
    assert served.stop(signal.SIGTERM)[0] == 0
