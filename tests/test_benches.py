"""Smoke runs of the benchmarks in benches/: `--quick` completes, prints its tables and ratios, leaves no server.

Only that the benches work is checked, never what they measure: the bars are the bench's report, not assertions.
Each bench runs in a subprocess with a marker in its environment, which its servers inherit; afterwards no process
may still carry the marker.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import ROOT
from micromono.config import ConfigError, load_config

pytestmark = pytest.mark.slow  # every test here runs a benchmark script in a subprocess

TIMEOUT_S = 120
ISOLATION_TIMEOUT_S = 300
ACTORS_TIMEOUT_S = 240  # three parts, each daemon started fresh; density creates 5,000 actors
WS_TIMEOUT_S = 180  # four parts, two daemons; the slowest is 1,000 clients connecting
MARKER = "MICROMONO_BENCH_SMOKE"
#: bench_sdks' echo service per language, in examples/build.
SDK_ECHOES = {"c": "echo.wasm", "zig": "echo_zig.wasm", "rust": "echo_rust.wasm",
              "assemblyscript": "echo_assemblyscript.wasm"}  # fmt: skip
ISOLATION_SCENARIOS = (
    "solo", "spin", "storm", "supervised", "flood", "spin1", "spin5", "swap-start", "swap-init", "swap-health",
    "swap-big", "sends", "amplify", "bomb", "log",
)  # fmt: skip


def run_bench(script: str, *args: str, timeout: float = TIMEOUT_S) -> str:
    """Run `benches/<script> --quick [args]` from the repo root; assert it exited 0 and left no process; return
    stdout."""
    token = uuid.uuid4().hex
    done = subprocess.run(
        [sys.executable, str(ROOT / "benches" / script), "--quick", *args],
        cwd=ROOT,
        env=os.environ | {MARKER: token},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{script} exited with {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert marked_processes(token) == [], f"{script} left processes behind"
    assert "left pid" not in done.stdout and "ignored SIGTERM" not in done.stdout, done.stdout
    return done.stdout


def marked_processes(token: str) -> list[int]:
    """PIDs of the processes whose environment has MARKER=token (the bench's servers, if any survived it)."""
    needle = f"{MARKER}={token}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def table_row(output: str, first_cell: str) -> list[str]:
    """The cells of the markdown table row whose first cell is `first_cell` (the first such row)."""
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table row {first_cell!r} in:\n{output}")


def number(cell: str) -> float:
    """The leading number of a table cell: "3.03 [2.87, 3.18]" -> 3.03, "1,171" -> 1171."""
    match = re.match(r"[\d,]+(\.\d+)?", cell)
    assert match, f"no number in {cell!r}"
    return float(match.group().replace(",", ""))


def section(output: str, heading: str) -> str:
    """The output from the `## heading...` line to the next heading."""
    start = output.find(f"## {heading}")
    assert start >= 0, f"no section {heading!r} in:\n{output}"
    end = output.find("\n## ", start + 1)
    return output[start : end if end >= 0 else None]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the benches read /proc")
def test_bench_call_quick() -> None:
    out = run_bench("bench_call.py")
    results = section(out, "per call")
    for variant in ("micromono", "frames", "aiohttp"):
        assert number(table_row(results, variant)[2]) > 0  # wall µs per call
    ratios = section(out, "ratios, same repeat")
    for ratio in ("aiohttp / micromono, wall", "frames / micromono, wall"):
        assert number(table_row(ratios, ratio)[-1]) > 0  # the median
    assert "## bars" in out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the benches read /proc")
def test_bench_call_tracing_quick() -> None:
    """bench_call --tracing: the daemon once per tracing mode, and the ratio of each traced mode to off."""
    out = run_bench("bench_call.py", "--only", "micromono", "--tracing", "off,log,otlp", "--repeats", "1")
    results = section(out, "per call")
    for variant in ("micromono", "micromono+log", "micromono+otlp"):
        assert number(table_row(results, variant)[2]) > 0  # wall µs per call
    ratios = section(out, "tracing, same repeat")
    for ratio in ("micromono+log / micromono, wall", "micromono+otlp / micromono, CPU"):
        assert number(table_row(ratios, ratio)[-1]) > 1  # tracing costs something


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the benches read /proc")
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not on the PATH (`make install` installs it)")
def test_bench_ingress_quick() -> None:
    out = run_bench("bench_ingress.py")
    results = section(out, "wrk -t1 -c32")
    for variant in ("micromono", "aiohttp", "floor"):
        assert number(table_row(results, variant)[1]) > 0  # req/s
    ratios = section(out, "req/s ratios, same repeat")
    medians = table_row(ratios, "median")[-3:]  # micromono / aiohttp, floor / aiohttp, micromono / floor
    assert all(number(cell) > 0 for cell in medians), medians
    info = re.search(r"floor / aiohttp req/s ([\d.]+)x", section(out, "bars"))
    assert info and float(info.group(1)) > 0, out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the benches read /proc")
def test_bench_reload_quick() -> None:
    out = run_bench("bench_reload.py")
    swaps = section(out, "landed -> first answer")
    row = table_row(swaps, "all")
    assert number(row[1]) > 0 and number(row[2]) > 0  # swaps, p50 ms
    latency = section(out, "request latency")
    for phase in ("steady", "swap phase"):
        assert number(table_row(latency, phase)[3]) > 0  # p99 µs
    assert number(table_row(section(out, "calls and reloads"), "requests completed (whole run)")[1]) > 0
    assert "## bars" in out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the benches read /proc")
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not on the PATH (`make install` installs it)")
def test_bench_isolation_quick() -> None:
    # Fifteen scenarios; the hot-swap ones wait for every reload attempt to end (up to the daemon's 10 s bound on a
    # start-up that never returns), and swap-big compiles a 7 MiB module with 1,200 functions at least twice.
    out = run_bench("bench_isolation.py", timeout=ISOLATION_TIMEOUT_S)
    healthy = section(out, "healthy service under")
    for scenario in ("solo", "spin", "storm", "supervised", "flood"):
        row = table_row(healthy, scenario)
        assert number(row[1]) > 0 and number(row[3]) > 0, row  # req/s, p99 µs
        if scenario != "solo":
            assert number(row[5]) > 0, row  # p99 / solo p99
    latency = section(out, "healthy latency against solo")
    for scenario in ISOLATION_SCENARIOS:
        row = table_row(latency, scenario)
        assert len(row) == 11 and row[7].isdigit(), row  # ..., failed requests, worst max, sentinel max, quiet after
    neighbours = section(out, "the neighbour's own outcomes")
    # Not spin1 or spin5: their one request spins for call_timeout of running time (1 s, 5 s), which beside the
    # healthy load takes longer than a quick run's window, so it may end after the window.
    for scenario in ("spin", "storm", "supervised", "flood", "sends", "amplify", "bomb", "log"):
        assert number(table_row(neighbours, scenario)[2]) > 0, scenario  # the neighbour's requests
    swaps = section(out, "hot swaps")
    for scenario in ("swap-start", "swap-init", "swap-health", "swap-big"):
        row = table_row(swaps, scenario)
        assert number(row[2]) > 0 and row[3] != "none", row  # rewrites, reload outcomes
    probe = section(out, "spin, a closer look")
    for requests in ("first answer on a new connection", "later requests on those connections"):
        row = table_row(probe, requests)
        assert number(row[1]) > 0 and number(row[3]) > 0, row  # n, p99 ms
    epoch = section(out, "epoch deadline cost")
    for guest in ("call", "loop"):
        for variant in ("none", "epoch", "shipped", "micromono"):
            assert number(table_row(epoch, f"{guest} / {variant}")[1]) > 0  # µs per call
    bars = section(out, "bars")
    for scenario in ISOLATION_SCENARIOS[1:]:
        for bar in ("healthy requests failed", "healthy p99 / solo p99", "healthy max"):
            assert table_row(bars, f"{scenario}: {bar}")[3] in ("PASS", "FAIL"), scenario
    verdicts = section(out, "verdict per scenario")
    assert sum(line.split()[0] in ("PASS", "FAIL") for line in verdicts.splitlines()[1:] if line.strip()) == 14


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the benches read /proc")
def test_bench_peers_quick_without_workerd() -> None:
    """bench_peers runs its micromono and Python variants (no workerd, so no npm) and prints both tables."""
    out = run_bench("bench_peers.py", "--only", "micromono,frames,aiohttp")
    calls = section(out, "calls: one service calling another")
    runs = ["micromono", "frames 1-core", "aiohttp 1-core"]
    if len(os.sched_getaffinity(0)) > 1:
        runs += ["frames 2-core", "aiohttp 2-core"]
    for run in runs:
        row = table_row(calls, run)
        assert number(row[3]) > 0 and number(row[7]) > 0, row  # wall µs per call, RSS MiB
    ratios = section(out, "calls: ratios to the daemon")
    for run in runs[1:]:
        assert number(table_row(ratios, f"{run} / micromono")[2]) > 0  # the wall median
    assert "workerd" not in calls and "workerd variants skipped" not in out
    if shutil.which("wrk") is None:
        assert "ingress skipped: wrk is not on the PATH" in out
    else:
        results = section(out, "wrk -t1 -c32")
        for variant in ("micromono", "aiohttp"):
            assert number(table_row(results, variant)[1]) > 0  # req/s
        assert number(table_row(section(out, "req/s ratios, same repeat"), "median")[-1]) > 0  # micromono / aiohttp
    bars = section(out, "bars")
    for bar in ("call: micromono, wall", "call: frames 1-core / micromono, wall", "ingress: micromono p99"):
        assert table_row(bars, bar)[3] in ("PASS", "FAIL", "n/a")
    assert table_row(bars, "call: workerd-rpc / micromono, wall")[3] == "n/a"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the benches read /proc")
def test_bench_density_quick() -> None:
    """bench_density starts 1- and 100-service daemons cold and warm, sweeps every route, prints its tables."""
    out = run_bench("bench_density.py", "--sizes", "100")
    startup = section(out, "start-up")
    for cache in ("cold", "warm"):
        cells = [c for c in startup.splitlines() if c.startswith("| 100 ") and f"| {cache} " in c]
        assert len(cells) == 1, startup
        row = [cell.strip() for cell in cells[0].strip("|").split("|")]
        assert number(row[3]) > 0 and number(row[5]) > 0, row  # all answered s, instantiate µs per instance
    footprint = section(out, "footprint once idle")
    row = table_row(footprint, "100")
    assert number(row[1]) > 0 and number(row[3]) > 0, row  # RSS MiB, maps
    units = section(out, "idle memory of one unit of isolation")
    assert number(table_row(units, "micromono service (Wasm instance)")[2]) > 0
    assert "cited, not measured" in table_row(units, "Erlang process")[3]
    bars = section(out, "bars")
    assert table_row(bars, "idle memory per service (N = 100)")[3] in ("PASS", "FAIL")
    assert table_row(bars, "warm start of 1,000 services, all answered")[3] == "n/a"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the benches read /proc")
@pytest.mark.skipif(
    not (ROOT / "examples" / "build" / "counter.wasm").exists(),
    reason="examples/build/counter.wasm does not exist (the counter example is not built: `make examples`)",
)
def test_bench_actors_quick_without_workerd() -> None:
    """bench_actors runs its two micromono variants (no workerd, so no npm) through all three parts and prints every
    table and bar."""
    out = run_bench("bench_actors.py", "--only", "micromono-full,micromono-normal", timeout=ACTORS_TIMEOUT_S)
    variants = ("micromono-full", "micromono-normal")
    if shutil.which("wrk") is None:
        assert "throughput skipped: wrk is not on the PATH" in out
    else:
        throughput = section(out, "throughput: durable increments")
        for line in throughput.splitlines():
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if line.startswith("|") and cells[0] in variants:
                assert number(cells[2]) > 0 and cells[-1] == "0", cells  # req/s, no increment lost
        ratios = section(out, "throughput: req/s ratios")
        assert number(table_row(ratios, "1,000 keys")[2]) > 0  # micromono-normal / micromono-full
    activation = section(out, "activation:")
    cases = [line for line in activation.splitlines() if line.startswith("| micromono-")]
    assert len(cases) == 4, activation  # two variants x (first message, revival)
    for line in cases:
        assert number(line.strip("|").split("|")[3].strip()) > 0, line  # p50 µs
    density = section(out, "density:")
    for variant in variants:
        assert re.fullmatch(r"-?[\d,]+\.\d", table_row(density, variant)[6])  # KiB per live actor (any sign: noise)
    disk = section(out, "bytes on disk per actor")
    assert number(table_row(disk, "micromono-full (density, after stop)")[4]) > 0  # allocated bytes per actor
    bars = section(out, "bars")
    for bar in (
        "sync=full, first message to a never-seen key: latency p50",
        "sync=full, revival, hibernated: latency p50",
    ):
        assert table_row(bars, bar)[3] in ("met", "missed")
    assert table_row(bars, "sync=full, 1,000 keys: req/s / workerd's (median of per-repeat)")[3] == "n/a"


def test_bench_instructions_driver_answers_every_request(tmp_path: Path) -> None:
    """bench_instructions' in-process driver (what valgrind runs) for each variant, without valgrind: every request
    fed to the Protocol gets its response, or the child exits non-zero."""
    for variant in ("micromono", "micromono-c", "floor"):
        env = os.environ | {"MICROMONO_PURE": "0" if variant == "micromono-c" else "1"}
        done = subprocess.run(
            [sys.executable, str(ROOT / "benches" / "bench_instructions.py"), "--child", variant, "200",
             str(tmp_path / variant)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"{variant}: {done.stdout}\n{done.stderr}"
    for variant in ("none", "epoch", "shipped"):  # part 2's driver: the call-heavy guest, as bench_isolation calls it
        done = subprocess.run(
            [sys.executable, str(ROOT / "benches" / "bench_instructions.py"), "--epoch-child", variant, "200"],
            cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"{variant}: {done.stdout}\n{done.stderr}"


def websocket_refused(tmp_path: Path) -> str | None:
    """Why the daemon's config refuses bench_ws's chat actor (`websocket = true`: the server side is not there yet),
    or None when it takes it."""
    manifest = tmp_path / "services.toml"
    manifest.write_text(
        f'version = 1\n[daemon]\ndata_dir = "data"\n[services.chat]\nkind = "actor"\n'
        f'wasm = "{ROOT / "examples" / "build" / "room.wasm"}"\nroutes = ["/chat/{{key}}"]\nwebsocket = true\n'
    )
    try:
        load_config(manifest)
    except ConfigError as exc:
        return str(exc).splitlines()[-1].strip()
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the benches read /proc")
@pytest.mark.skipif(
    not (ROOT / "examples" / "build" / "room.wasm").exists(),
    reason="examples/build/room.wasm does not exist (the room example is not built: `make examples`)",
)
def test_bench_ws_quick_without_workerd(tmp_path: Path) -> None:
    """bench_ws runs its micromono variant (no workerd, so no npm) through all four parts and prints every table
    and bar; its fanout and rooms flows run the C client (benches/ws_load.c) when a C compiler is there."""
    if refused := websocket_refused(tmp_path):
        pytest.skip(f"the daemon does not take WebSockets yet: {refused}")
    out = run_bench("bench_ws.py", "--only", "micromono", timeout=WS_TIMEOUT_S)
    (params,) = [line for line in out.splitlines() if line.startswith("params:")]
    compiler = os.environ.get("CC") or any(shutil.which(name) for name in ("cc", "gcc", "clang"))
    assert ("client=c: benches/ws_load.c" if compiler else "client=python:") in params, params
    flows = section(out, "flows: delivered messages/s")
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in flows.splitlines()]
    for workload in ("fan-out", "rooms"):
        (row,) = [cells for cells in rows if cells[:2] == ["micromono", workload]]
        assert number(row[4]) > 0 and number(row[6]) > 0 and row[-1] == "0", row  # delivered/s, p99 µs, no errors
    resume = table_row(section(out, "resume:"), "micromono")
    assert number(resume[5]) > 0 and resume[-1] == "2/2", resume  # all of them ms; complete, in order
    idle = table_row(section(out, "idle connections"), "micromono")
    assert re.fullmatch(r"-?[\d,]+\.\d\d", idle[7]) and idle[9] == idle[1], idle  # KiB/conn (any sign); all held
    bars = section(out, "bars")
    assert table_row(bars, "idle: server memory per connection, after the idle wait")[3] in ("met", "missed")
    assert table_row(bars, "fan-out: p99 latency (median)")[3] in ("met", "missed")
    assert table_row(bars, "fan-out: delivered/s / workerd's (median of per-repeat)")[3] == "n/a"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the benches read /proc")
@pytest.mark.skipif(
    not (ROOT / "examples" / "build" / "echo.wasm").exists(),
    reason="examples/build/echo.wasm does not exist (the examples are not built: `make examples`)",
)
def test_bench_sdks_quick() -> None:
    """bench_sdks measures every built echo service beside bench_call's WAT back and prints each SDK's overhead and
    bar; a language whose echo is not built is skipped with a note."""
    out = run_bench("bench_sdks.py")
    built = [lang for lang, name in SDK_ECHOES.items() if (ROOT / "examples" / "build" / name).exists()]
    static = section(out, "echo service: size and compile time")
    calls = section(out, "per call: bench_call's front")
    overhead = section(out, "SDK overhead per call")
    bars = section(out, "bars")
    assert number(table_row(calls, "wat")[2]) > 0  # wall µs per call
    for lang in built:
        row = table_row(static, lang)
        assert number(row[1]) > 0 and number(row[3]) > 0, row  # bytes, compile ms
        assert number(table_row(calls, lang)[2]) > 0
        assert re.fullmatch(r"[+-]\d+\.\d{3}", table_row(overhead, lang)[2])  # the median, of either sign
        assert table_row(bars, f"{lang}: overhead per call over WAT")[3] in ("met", "missed")
    for lang in SDK_ECHOES.keys() - built:
        assert f"note: {lang} skipped" in out
        assert table_row(bars, f"{lang}: overhead per call over WAT")[3] == "n/a"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the benches read /proc")
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not on the PATH (`make install` installs it)")
def test_bench_console_quick() -> None:
    out = run_bench("bench_console.py")
    results = section(out, "the data path with 0, 1 and 4 page clients")
    for variant in ("none", "1 page", "4 pages"):
        row = table_row(results, variant)
        assert number(row[1]) > 0 and number(row[3]) > 0  # µs per call, req/s
    ratios = section(out, "slowdown against no page")
    for ratio in ("1 page / none", "4 pages / none"):
        assert number(table_row(ratios, ratio)[1]) > 0
    assert "## bars" in out
