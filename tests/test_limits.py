"""Startup at density: the phases daemon.ready reports, and the operating-system limits a daemon of many services
needs (vm.max_map_count, RLIMIT_NOFILE), with real daemons, real files and real limits (docs/operations.md)."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from conftest import ROOT, http, make_config, running, write_manifest
from micromono import oslimits
from micromono.daemon import StartupError

linux_only = pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc")


def guest(tag: str) -> str:
    """A small guest with a data segment (so wasmtime gives its module a memory image, a memfd): replies `tag`."""
    return f"""
(module
  (memory (export "memory") 2 2)
  (data (i32.const 64) "\\c8\\00\\00\\00{tag}")
  (func (export "mm_abi_version") (result i32) (i32.const 2))
  (func (export "mm_inbox") (param i32) (result i32) (i32.const 65536))
  (func (export "mm_handle") (param i32 i32) (result i64)
    (i64.or (i64.shl (i64.const 64) (i64.const 32)) (i64.const 6)))
)
"""


def many(directory: Path, n: int, *, distinct: bool = False) -> dict[str, dict[str, object]]:
    """n services, each on its own route, alternating between two small guests written to `directory`, or each
    with a module of its own (`distinct`: a file descriptor each for its memory image, shared or not)."""
    tags = [f"{i:02x}"[-2:] + str(i) for i in range(n)] if distinct else ["aa", "bb"]
    guests = []
    for tag in tags:
        path = directory / f"{tag}.wat"
        path.write_text(guest(tag[:2]) + f";; {tag}\n")
        guests.append(path)
    return {f"s{i}": {"wasm": guests[i % len(guests)], "routes": [f"/s/{i}"]} for i in range(n)}


async def test_daemon_ready_reports_startup_phases(tmp_path: Path) -> None:
    with capture_logs() as events:
        async with running(make_config(tmp_path, many(tmp_path, 5))) as daemon:
            assert set(daemon.startup_timings) == {"compile", "load", "instantiate", "routes", "bind", "watch"}
            reply = await http(daemon.addresses[0], "GET", "/s/1")
            assert (reply.status, reply.body) == (200, b"bb")
    ready = next(e for e in events if e["event"] == "daemon.ready")
    phases = ready["startup_ms"]
    assert set(phases) == {"compile", "load", "instantiate", "routes", "bind", "watch"}
    assert all(ms >= 0 for ms in phases.values())
    assert phases["instantiate"] <= phases["load"]


@linux_only
async def test_daemon_reports_what_its_services_use_of_the_limits(tmp_path: Path) -> None:
    with capture_logs() as events:
        async with running(make_config(tmp_path, many(tmp_path, 3))):
            pass
    limits = next(e for e in events if e["event"] == "daemon.limits")
    assert limits["maps"] > 0 and limits["max_map_count"] > limits["maps"]
    assert 0 < limits["fds"] < limits["max_fds"]


@linux_only
async def test_startup_stops_before_running_out_of_memory_mappings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A vm.max_map_count with room for the daemon as it is and its reserve, but not for 100 more instances.
    room = oslimits.count_maps()
    assert room is not None
    monkeypatch.setattr(oslimits, "max_map_count", lambda: room + oslimits.MAPS_RESERVE_MIN + 150)
    config = make_config(tmp_path, many(tmp_path, 100))
    with pytest.raises(StartupError) as failed:
        async with running(config):
            pass
    (problem,) = failed.value.problems
    assert problem.startswith(f"vm.max_map_count is {room + oslimits.MAPS_RESERVE_MIN + 150:,}, but 100 services")
    assert "past the limit, allocations inside wasmtime fail and the daemon aborts" in problem
    assert "sysctl -w vm.max_map_count=262144" in problem


def serve(manifest: Path, soft: int, hard: int) -> subprocess.Popen[str]:
    """`micromono serve` in a subprocess whose RLIMIT_NOFILE is (soft, hard) from the start."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return subprocess.Popen(
        [sys.executable, "-m", "micromono", "serve", str(manifest), "--log-format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        preexec_fn=limit,
    )


def events_until(proc: subprocess.Popen[str], name: str) -> list[dict[str, object]]:
    """The JSON log events up to and including `name` (the process must log it)."""
    assert proc.stderr is not None
    events: list[dict[str, object]] = []
    for line in proc.stderr:
        if line.startswith("{"):
            events.append(json.loads(line))
            if events[-1]["event"] == name:
                return events
    raise AssertionError(f"serve exited ({proc.wait()}) before {name}: {events}")


@linux_only
def test_too_few_file_descriptors_is_a_clear_startup_failure(tmp_path: Path) -> None:
    proc = serve(write_manifest(tmp_path, many(tmp_path, 300, distinct=True)), 200, 200)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 3, err
    assert "the open files limit (RLIMIT_NOFILE) is 200 (hard limit 200), but 300 services need about" in err
    assert 'instances fail with "cannot create a memfd"' in err and "LimitNOFILE=65536" in err
    assert "cannot create a memfd" not in err.replace('fail with "cannot create a memfd"', "")  # stopped before


@linux_only
def test_soft_file_descriptor_limit_is_raised_with_a_message(tmp_path: Path) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 4200:
        pytest.skip(f"the hard RLIMIT_NOFILE here ({hard}) leaves nothing to raise to")
    target = 4200  # above 10 services + 4096 connections
    proc = serve(write_manifest(tmp_path, many(tmp_path, 10)), 256, target)
    try:
        events = events_until(proc, "daemon.ready")
        raised = next(e for e in events if e["event"] == "daemon.limit.raised")
        assert (raised["limit"], raised["soft"], raised["to"]) == ("RLIMIT_NOFILE", 256, target)
        assert "10 services may hold a file descriptor each" in str(raised["reason"])
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        assert any(line.startswith("Max open files") and f" {target} " in line for line in limits.splitlines())
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


_GC_PROBE = """
import gc, json, os, signal, sys
from micromono import daemon
from micromono.config import load_config

seen = {}
freeze = daemon._freeze_startup_objects

def probe():
    seen["enabled_during_startup"] = gc.isenabled()
    freeze()
    seen["enabled_after"] = gc.isenabled()
    seen["frozen"] = gc.get_freeze_count()
    os.kill(os.getpid(), signal.SIGTERM)

daemon._freeze_startup_objects = probe
seen["exit"] = daemon.run(load_config(sys.argv[1]))
print(json.dumps(seen))
"""


def test_cyclic_gc_is_off_during_startup_and_back_on_when_serving(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, many(tmp_path, 20))
    done = subprocess.run(
        [sys.executable, "-c", _GC_PROBE, str(manifest)], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["enabled_during_startup"] is False
    assert seen["enabled_after"] is True and seen["frozen"] > 0
    assert seen["exit"] == 0
