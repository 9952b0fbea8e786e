"""The daemon's lifecycle on real sockets: load and startup, apply_config, ordered and bounded shutdown, and the
signals `run()` handles (in a subprocess, stopped by its own PID)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from conftest import ROOT, fixture, http, make_config, running, write_manifest
from micromono.config import Address, load_config
from micromono.daemon import Daemon, StartupError


def app() -> dict[str, dict[str, object]]:
    return {
        "echo": {"wasm": fixture("echo.wat"), "routes": ["/echo"]},
        "front": {"wasm": fixture("caller.wat"), "routes": ["/front"], "calls": ["echo"]},
    }


# --- startup ------------------------------------------------------------------------------------------------------


async def test_startup_loads_every_service_binds_port_0_and_logs_ready(tmp_path: Path) -> None:
    """Startup loads the services in manifest order, binds the ports the OS picked, sets `started` and logs
    `daemon.ready` last, with the time each phase took."""
    with capture_logs() as logs:
        async with running(make_config(tmp_path, app(), daemon={"watch": False})) as daemon:
            assert daemon.started.is_set()
            ((host, port),) = daemon.addresses
            assert host == "127.0.0.1" and port != 0
            assert daemon.metrics_address is not None and daemon.metrics_address[1] != 0
            assert (await http(daemon.addresses[0], "POST", "/echo", b"hi")).body == b"hi"
            assert repr(daemon) == "<Daemon services.toml [serving | services: 2]>"
    names = [entry["event"] for entry in logs]
    ready = names.index("daemon.ready")
    assert [e["service"] for e in logs[:ready] if e["event"] == "service.load.complete"] == ["echo", "front"]
    assert set(logs[ready]["startup_ms"]) == {"compile", "load", "instantiate", "routes", "bind", "watch"}
    assert logs[ready]["ingress"] == [f"127.0.0.1:{port}"]


async def test_load_starts_the_services_without_listeners(tmp_path: Path) -> None:
    """`load()` (what `micromono check` runs) compiles and instantiates every service but binds nothing."""
    daemon = Daemon(make_config(tmp_path, app()))
    await daemon.load()
    try:
        assert [s.name for s in daemon.router.services()] == ["echo", "front"]
        assert all(s.live == 1 for s in daemon.router.services())
        assert daemon.addresses == [] and daemon.metrics_address is None and daemon.ingress is None
        assert daemon.reloader is None and not daemon.started.is_set()
    finally:
        await daemon.shutdown()
    assert all(s.live == 0 for s in daemon.router.services())


async def test_a_failed_startup_lists_every_problem_and_closes_what_it_started(tmp_path: Path) -> None:
    """Every module that fails is listed, not just the first; the interpreter's switch interval is restored."""
    before = sys.getswitchinterval()
    (tmp_path / "broken.wat").write_text("(module (func")
    services = {**app(), "gone": {"wasm": tmp_path / "gone.wasm"}, "broken": {"wasm": tmp_path / "broken.wat"}}
    with pytest.raises(StartupError, match=r"^cannot start: 2 problems\n") as failed:
        async with running(make_config(tmp_path, services)):
            pass
    assert len(failed.value.problems) == 2
    assert "service 'gone'" in failed.value.problems[0] and "service 'broken'" in failed.value.problems[1]
    assert sys.getswitchinterval() == before


async def test_a_busy_port_fails_startup_with_the_address_and_what_to_do(tmp_path: Path) -> None:
    """A listener that cannot bind names the key, the address and the fix."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = make_config(tmp_path, app(), daemon={"listen": f"127.0.0.1:{port}", "watch": False})
        with pytest.raises(StartupError) as failed:
            async with running(config):
                pass
    (problem,) = failed.value.problems
    assert problem.startswith(f"daemon.listen: cannot bind 127.0.0.1:{port}: ")
    assert problem.endswith("; pick a free port")


# --- apply_config -------------------------------------------------------------------------------------------------


async def test_apply_config_changes_routes_and_limits_and_keeps_restart_only_keys(tmp_path: Path) -> None:
    """An edited manifest takes effect for routes and limits at once; listen and friends keep their running values
    and a warning names them."""
    config = make_config(tmp_path, app(), daemon={"watch": False})
    async with running(config) as daemon:
        addr = daemon.addresses[0]
        edited = {**app(), "echo": {"wasm": fixture("echo.wat"), "routes": ["/echo2"]}}
        new = make_config(tmp_path, edited, daemon={"watch": False, "listen": "127.0.0.1:1", "max_call_depth": 3})
        with capture_logs() as logs:
            applied = daemon.apply_config(new)
        assert applied.daemon.listen == config.daemon.listen != Address(host="127.0.0.1", port=1)
        assert applied.daemon.max_call_depth == 3 and daemon.router.max_call_depth == 3
        assert daemon.config is applied
        assert [(e["event"], e["keys"]) for e in logs] == [("reload.manifest.restart_needed", ["listen"])]
        assert (await http(addr, "POST", "/echo2", b"moved")).body == b"moved"
        assert (await http(addr, "POST", "/echo", b"x")).status == 404


# --- shutdown -----------------------------------------------------------------------------------------------------


async def hold_a_request_open(address: tuple[str, int]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection with one answered request and half of the next: shutdown must wait for it."""
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
    await reader.readuntil(b"hi")
    writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhalf")
    return reader, writer


async def wait_until_received(daemon: Daemon) -> None:
    """Until the half request has reached the connection (an awaited turn of the loop at a time, no deadline)."""
    assert daemon.ingress is not None
    while not any(conn.head is not None or conn.partial is not None for conn in daemon.ingress.connections):
        await asyncio.sleep(0)


async def test_shutdown_runs_in_order_and_is_idempotent(tmp_path: Path) -> None:
    """With nothing in flight shutdown drains at once, logs its start and end, and a second call does nothing."""
    async with running(make_config(tmp_path, app())) as daemon:
        with capture_logs() as logs:
            await daemon.shutdown()
            await daemon.shutdown()
        assert daemon.stopping
        assert repr(daemon).endswith("[stopping | services: 2]>")
    assert [e["event"] for e in logs] == ["daemon.shutdown.started", "daemon.shutdown.complete"]
    assert logs[-1]["drained"] is True


async def test_force_exit_aborts_what_the_grace_period_still_waits_for(tmp_path: Path) -> None:
    """Shutdown waits for a half-received request (up to graceful_timeout); `force_exit()` (the second signal)
    ends the wait and aborts the connection."""
    config = make_config(tmp_path, app(), daemon={"watch": False, "graceful_timeout": 3600.0})
    async with running(config) as daemon:
        reader, writer = await hold_a_request_open(daemon.addresses[0])
        await wait_until_received(daemon)
        with capture_logs() as logs:
            stopping = asyncio.create_task(daemon.shutdown())
            await asyncio.sleep(0)  # shutdown runs up to its wait for the connection
            assert not stopping.done()
            daemon.force_exit()
            await stopping
        assert await reader.read() == b""  # aborted
        writer.close()
    events = [e["event"] for e in logs]
    assert events == ["daemon.shutdown.started", "daemon.shutdown.aborting", "daemon.shutdown.complete"]
    assert logs[1]["connections"] == 1 and logs[-1]["drained"] is False


async def test_shutdown_gives_up_waiting_after_graceful_timeout(tmp_path: Path) -> None:
    """The grace period bounds the wait: past it, what is left is aborted."""
    config = make_config(tmp_path, app(), daemon={"watch": False, "graceful_timeout": 0.05})
    async with running(config) as daemon:
        reader, writer = await hold_a_request_open(daemon.addresses[0])
        await wait_until_received(daemon)
        with capture_logs() as logs:
            await daemon.shutdown()
        assert await reader.read() == b""
        writer.close()
    assert logs[-1] == {"event": "daemon.shutdown.complete", "drained": False, "log_level": "info"}


# --- signals (run(), in a subprocess) -----------------------------------------------------------------------------

_RUN = """
import sys
from micromono import log
from micromono.config import load_config
from micromono.daemon import run
log.configure("json", "info")
sys.exit(run(load_config(sys.argv[1])))
"""


class Running:
    """`micromono.daemon.run()` in a subprocess with JSON logs; every wait is for a log line, and the process is
    stopped by its own PID."""

    def __init__(self, manifest: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _RUN, str(manifest)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.events: list[dict[str, object]] = []

    def wait_for(self, name: str) -> dict[str, object]:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:  # ends when the process does
            event = json.loads(line)
            self.events.append(event)
            if event["event"] == name:
                return event
        raise AssertionError(f"run() exited ({self.proc.wait()}) before {name}: {self.events}")

    def finish(self) -> int:
        assert self.proc.stderr is not None
        self.events += [json.loads(line) for line in self.proc.stderr if line.startswith("{")]
        return self.proc.wait(timeout=60)

    def kill(self) -> None:
        """Kill it if it still runs, and close its pipe."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def test_the_first_signal_drains_and_the_second_forces(tmp_path: Path) -> None:
    """SIGTERM starts a graceful shutdown that waits for a half-received request; a second SIGTERM aborts it,
    and run() returns 0 either way."""
    manifest = write_manifest(
        tmp_path, app(), daemon={"watch": False, "graceful_timeout": 3600.0, "metrics_listen": ""}
    )
    served = Running(manifest)
    try:
        (address,) = served.wait_for("daemon.ready")["ingress"]  # type: ignore[misc]
        host, port = str(address).rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=30) as conn:
            # One write: the first request is answered, so the daemon has read the half of the second with it.
            conn.sendall(
                b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi"
                b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhalf"
            )
            assert conn.recv(4096).endswith(b"hi")
            served.proc.send_signal(signal.SIGTERM)
            served.wait_for("daemon.shutdown.started")
            served.proc.send_signal(signal.SIGTERM)
            code = served.finish()
    finally:
        served.kill()
    assert code == 0
    names = [e["event"] for e in served.events]
    tail = names[names.index("daemon.signal.received") :]
    assert tail == [
        "daemon.signal.received",
        "daemon.shutdown.started",
        "daemon.signal.forced",
        "daemon.shutdown.aborting",
        "daemon.shutdown.complete",
    ]


def test_sigint_stops_like_sigterm(tmp_path: Path) -> None:
    """SIGINT (Ctrl-C) is a graceful stop too, with nothing left to wait for."""
    served = Running(write_manifest(tmp_path, app(), daemon={"watch": False, "metrics_listen": ""}))
    try:
        served.wait_for("daemon.ready")
        served.proc.send_signal(signal.SIGINT)
        code = served.finish()
    finally:
        served.kill()
    assert code == 0
    assert [e["event"] for e in served.events][-3:] == [
        "daemon.signal.received",
        "daemon.shutdown.started",
        "daemon.shutdown.complete",
    ]
    assert served.events[-1]["drained"] is True


def test_check_and_serve_load_through_one_code_path(tmp_path: Path) -> None:
    """What `load()` refuses, startup refuses with the same message: `micromono check` cannot pass a manifest the
    daemon would not start (here a CPU the process may not run on, which check did not look at before)."""
    manifest = write_manifest(tmp_path, app(), daemon={"cpu": 4095})
    config = load_config(manifest)

    async def load_only() -> str:
        daemon = Daemon(config)
        try:
            await daemon.load()
        except StartupError as exc:
            return str(exc)
        finally:
            await daemon.shutdown()
        return "loaded"

    async def start() -> str:
        try:
            async with running(config):
                return "started"
        except StartupError as exc:
            return str(exc)

    loaded, started = asyncio.run(load_only()), asyncio.run(start())
    assert loaded == started
    assert loaded.startswith("cannot start: 1 problem\n  daemon.cpu = 4095: this process may run on CPUs ")
