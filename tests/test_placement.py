"""placement.py: the loop thread on one CPU, compile threads (and the threads wasmtime compiles on) off it, or on it
at a lower priority when there is no other."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import ROOT, fixture, make_config, running
from micromono import placement

MULTI_CPU = len(os.sched_getaffinity(0)) > 1


def nice(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


def lowered(base: int) -> int:
    return min(19, base + placement.COMPILE_NICE)


def app() -> dict[str, dict[str, object]]:
    return {"echo": {"wasm": fixture("echo.wat"), "routes": ["/echo"]}}


async def test_the_loop_runs_on_one_cpu_and_compiles_elsewhere(tmp_path: Path) -> None:
    before = os.sched_getaffinity(0)
    loop_nice = nice(threading.get_native_id())
    async with running(make_config(tmp_path, app())) as daemon:
        assert daemon.placement is not None and daemon.placement.cpu in before
        cpu = daemon.placement.cpu
        assert os.sched_getaffinity(0) == {cpu} and daemon.status()["cpu"] == cpu
        assert placement.pinned_cpu() == cpu
        assert daemon._compiler is not None
        assert (await daemon.compile("again", fixture("echo.wat"))).service == "again"
        compilers = [t.native_id for t in daemon._compiler._threads if t.native_id is not None]
        assert compilers
        for tid in compilers:
            if MULTI_CPU:  # every CPU but the loop's, below the ticker's priority, which runs there too
                assert (os.sched_getaffinity(tid), nice(tid)) == (before - {cpu}, lowered(loop_nice))
            else:  # the one CPU there is, at a lower priority
                assert (os.sched_getaffinity(tid), nice(tid)) == ({cpu}, lowered(loop_nice))
    assert os.sched_getaffinity(0) == before and placement.pinned_cpu() is None


async def test_unpinned_compile_threads_run_anywhere_at_a_lower_priority(tmp_path: Path) -> None:
    before = os.sched_getaffinity(0)
    loop_nice = nice(threading.get_native_id())
    async with running(make_config(tmp_path, app(), daemon={"cpu": "any"})) as daemon:
        assert daemon.placement is not None and daemon.placement.cpu is None and daemon.status()["cpu"] is None
        assert os.sched_getaffinity(0) == before and placement.pinned_cpu() is None
        assert daemon._compiler is not None
        await daemon.compile("again", fixture("echo.wat"))
        compilers = [t.native_id for t in daemon._compiler._threads if t.native_id is not None]
        assert compilers
        assert all((os.sched_getaffinity(tid), nice(tid)) == (before, lowered(loop_nice)) for tid in compilers)


def test_with_one_cpu_compile_threads_share_it_at_a_lower_priority() -> None:
    """A process that may use one CPU (taskset, a cpuset): compile threads keep it, nicer than the loop."""
    cpu = min(os.sched_getaffinity(0))

    def where() -> tuple[set[int], int]:
        return os.sched_getaffinity(0), nice(threading.get_native_id())

    def loop_thread() -> tuple[int | None, tuple[set[int], int], int]:
        os.sched_setaffinity(0, {cpu})  # as if the whole process were limited to this CPU
        placed = placement.place("auto")
        try:
            with concurrent.futures.ThreadPoolExecutor(1, initializer=placement.place_compile_thread) as pool:
                return placed.cpu, pool.submit(where).result(), nice(threading.get_native_id())
        finally:
            placed.restore()

    with concurrent.futures.ThreadPoolExecutor(1) as runner:
        placed_cpu, compile_thread, loop_nice = runner.submit(loop_thread).result()
    assert placed_cpu == cpu
    assert compile_thread == ({cpu}, lowered(loop_nice))
    assert placement.pinned_cpu() is None


#: In a fresh process (wasmtime's compile threads are made once per process): place the loop thread, compile in a
#: compile thread, then report every thread's CPUs and nice value.
_COMPILE_IN_A_FRESH_PROCESS = """
import concurrent.futures, json, os, sys, threading
import wasmtime
from micromono import placement
placed = placement.place("auto")
engine = wasmtime.Engine()
body = "(param i32) (result i32) local.get 0 i32.const {0} i32.add"
functions = "".join(f"(func (export \\"f{i}\\") {body.format(i)})" for i in range(256))
with concurrent.futures.ThreadPoolExecutor(1, initializer=placement.place_compile_thread) as pool:
    pool.submit(wasmtime.Module.from_file, engine, sys.argv[1]).result()
    pool.submit(wasmtime.Module, engine, "(module " + functions + ")").result()
threads = {}
for tid in os.listdir("/proc/self/task"):
    try:
        threads[tid] = (sorted(os.sched_getaffinity(int(tid))), os.getpriority(os.PRIO_PROCESS, int(tid)))
    except ProcessLookupError:  # the compile thread, ending
        pass
print(json.dumps({"loop": threading.get_native_id(), "cpu": placed.cpu, "threads": threads}))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_the_threads_wasmtime_compiles_on_inherit_the_compile_threads_placement() -> None:
    """wasmtime compiles on rayon's thread pool, whose threads the first compiling thread starts (placement.py):
    after compiles in a compile thread (one of 256 functions, which wasmtime spreads over the pool), no thread but
    the loop's may run on the loop's CPU at the loop's priority (the ticker and executor threads are ended or not
    started here). Some CI machines showed no pool thread at all after the compiles (the work ran on the compiling
    thread itself), so the pool's threads are checked where they exist."""
    out = subprocess.run(
        [sys.executable, "-c", _COMPILE_IN_A_FRESH_PROCESS, str(fixture("echo.wat"))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(out.stdout)
    cpu, loop = report["cpu"], str(report["loop"])
    threads = {tid: (set(cpus), level) for tid, (cpus, level) in report["threads"].items()}
    loop_nice = threads[loop][1]
    others = {tid: where for tid, where in threads.items() if tid != loop}
    assert threads[loop][0] == {cpu}
    for cpus, level in others.values():
        if MULTI_CPU:
            assert cpu not in cpus and level == lowered(loop_nice)
        else:
            assert cpus == {cpu} and level == lowered(loop_nice)
