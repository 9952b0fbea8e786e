"""bench_isolation: what a misbehaving service costs its healthy neighbour, and what the CPU deadline costs.

Part 1, one daemon. A healthy service (`tests/fixtures/echo.wat` on /healthy) is loaded with
`wrk -t1 -c8 --latency -s post64.lua` in each scenario, while a second client (a wrk -t1 -c1 run with its own
generated script) keeps a neighbour busy back to back:

  solo        nothing else runs
  spin        POST "l" to /hostile (tests/fixtures/hostile.wat): an endless loop, interrupted at its deadline
              (call_timeout = 50 ms, so each request holds the daemon ~50-60 ms: the deadline plus up to one epoch tick)
  storm       POST "u" to /hostile: an `unreachable` trap on every request; max_failures is raised so far that the
              supervisor never quarantines it, so the storm goes on for the whole run
  supervised  the same storm against /supervised, a second copy with the default supervisor (max_failures = 5):
              it is quarantined, and answered with fast 503s while quarantined
  flood       POST to /front (tests/fixtures/caller.wat), which calls `flood` (tests/fixtures/flood.wat) once;
              flood sends 100 messages to `sink` (echo.wat, mailbox = 8): 8 fit, 92 are refused as overloaded

Scenarios are interleaved: each repeat runs all of them in an order rotated by the repeat index, and each
scenario's healthy p99 is divided by the solo p99 *of the same repeat*. Guest calls run synchronously on the
daemon's event-loop thread until a service's run takes longer than 10 ms; the spinning neighbour's first request
therefore holds the loop until its deadline, and then the daemon moves that service to a thread of its own
(router.py, "Long calls"), where its later spins no longer hold up the healthy service. The verification step
makes that first spin happen before any scenario is measured. The daemon runs on one CPU, and its offload threads
at SCHED_IDLE there (micromono/placement.py, `daemon.cpu = "auto"`); `--cpu any` runs the same bench with the
daemon unpinned and its offload threads at nice +19 on any CPU, the placement before 2026-12-02. After each
repeat an asyncio client with connections of its own times the first answer on each new connection and,
separately, the requests after it.

Part 2, in process (no daemon). The per-call cost of epoch interruption (the CPU deadline mechanism of
micromono/engine.py) against none: the same guest, called with engine.py's raw-call technique, on a wasmtime
Engine with and without `epoch_interruption`, in interleaved rounds. engine.py has no switch to turn epochs off,
so the bench builds both engines itself, with engine.py's own deadline callback, ticker and raw call entry point.
Two guests: call-heavy (echo of 64 bytes: almost all the time is the call itself) and loop-heavy (a tight loop
summing 64 KiB of memory, about 1 ms per call: an epoch check on every loop back-edge).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import http.client
import json
import math
import os
import random
import shlex
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from ctypes import c_size_t, c_ubyte, c_void_p
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final

import _harness as h

sys.path.insert(0, str(h.REPO))  # micromono itself, for part 2, when run from anywhere

# Part 2 must build a wasmtime Engine *without* epoch interruption, which micromono's Engine cannot do, so the
# bench imports wasmtime itself; everything else it mirrors comes from engine.py, so a change there shows here.
import wasmtime  # noqa: E402, TID251
from wasmtime import _bindings as _b  # noqa: E402, TID251  (unstable: private bindings, as in engine.py)
from wasmtime import _ffi  # noqa: E402, TID251

from micromono import engine as mm_engine  # noqa: E402

FIXTURES: Final = h.REPO / "tests" / "fixtures"
SCRIPT: Final = h.BENCHES / "post64.lua"
THREADS, CONNECTIONS = 1, 8
NEIGHBOUR_CONNECTIONS: Final = 1
SCENARIOS: Final = ("solo", "spin", "storm", "supervised", "flood")
REPEATS_FULL, DURATION_FULL_S = 3, 3
REPEATS_QUICK, DURATION_QUICK_S = 1, 1
WARMUP_S: Final = 1
RAMP_S: Final = 0.3  # the neighbour runs this long before the healthy load starts
SETTLE_S: Final = 0.3  # pause after a scenario (the last spin ends, the sink drains)
NEIGHBOUR_STOP_TIMEOUT_S: Final = 10.0
CALL_TIMEOUT_S: Final = 0.05
SINK_MAILBOX: Final = 8
FLOOD_BODY: Final = struct.pack("<iII", 1, 64, 5) + b"flood"  # caller.wat: 1 call to "flood", a 64-byte reply buffer

# Part 2.
ROUNDS_FULL, ROUNDS_QUICK = 7, 3
BLOCKS_FULL, BLOCKS_QUICK = 5, 2  # per round, the variants alternate block by block
CALLS_FULL, CALLS_QUICK = 40_000, 20_000  # call-heavy guest, per variant per block (~30 ms)
LOOP_CALLS_FULL, LOOP_CALLS_QUICK = 40, 20  # loop-heavy guest, per variant per block (~40 ms, ~20 ms)
LOOP_TARGET_S: Final = 0.001  # the loop guest is calibrated to about this long per call (without epochs)
LOOP_WORDS: Final = 16384  # i32 words summed per pass
CALL_PAYLOAD: Final = bytes(range(64))
MEMORY_LIMIT: Final = 1 << 20
DEADLINE_S: Final = 1.0  # the per-call deadline (never reached)
EPOCH_VARIANTS: Final = ("none", "epoch", "shipped", "micromono")
EPOCH_LEGEND: Final = {
    "none": "epoch_interruption off, no ticker, no deadline",
    "epoch": "epoch_interruption on, engine.py's 10 ms ticker and deadline callback; the deadline set once",
    "shipped": "as `epoch`, plus the deadline set before every call as the router does: the mechanism as shipped",
    "micromono": "micromono's own Instance.invoke with the router's per-call deadline (reference, not a bar: its "
    "extra over `shipped` is Instance.invoke's own Python, not epochs)",
}

# Bars (shown as PASS/FAIL, never asserted).
BAR_RATIO: Final = 3.0
BAR_EPOCH_PCT: Final = 5.0

LOOP_WAT: Final = f"""\
;; bench_isolation's loop-heavy guest (ABI v2): a CALL whose payload is a u32 `passes` sums the first
;; {LOOP_WORDS * 4} bytes of memory as i32 words `passes` times and replies with the u32 sum.
(module
  (memory (export "memory") 2)
  (func (export "mm_abi_version") (result i32) (i32.const 2))
  (func (export "mm_inbox") (param i32) (result i32) (i32.const 1024))
  (func (export "mm_handle") (param $kind i32) (param $len i32) (result i64)
    (local $passes i32) (local $i i32) (local $sum i32)
    (local.set $passes (i32.load (i32.const 1024)))
    (block $done (loop $pass
      (br_if $done (i32.eqz (local.get $passes)))
      (local.set $i (i32.const 0))
      (loop $word
        (local.set $sum (i32.add (local.get $sum) (i32.load (local.get $i))))
        (local.set $i (i32.add (local.get $i) (i32.const 4)))
        (br_if $word (i32.lt_u (local.get $i) (i32.const {LOOP_WORDS * 4}))))
      (local.set $passes (i32.sub (local.get $passes) (i32.const 1)))
      (br $pass)))
    (i32.store (i32.const 512) (local.get $sum))
    (i64.or (i64.shl (i64.const 512) (i64.const 32)) (i64.const 4))))
"""


# --- part 1: the daemon and its neighbours ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scenario:
    """A neighbour's load: what it posts where (None: no neighbour)."""

    name: str
    path: str | None
    body: bytes
    what: str


SCENARIO_SPECS: Final = {
    "solo": Scenario("solo", None, b"", "nothing else runs"),
    "spin": Scenario("spin", "/hostile", b"l", f'"l": endless loop, call_timeout {CALL_TIMEOUT_S * 1000:g} ms'),
    "storm": Scenario("storm", "/hostile", b"u", '"u": trap on every call, never quarantined'),
    "supervised": Scenario("supervised", "/supervised", b"u", '"u": trap storm, default supervisor'),
    "flood": Scenario("flood", "/front", FLOOD_BODY, f"100 sends per request to a mailbox of {SINK_MAILBOX}"),
}


def write_manifest(site: Path, cpu: str = "auto") -> Path:
    """services.toml in `site`: the healthy service, its hostile neighbours and the flood chain (no file watch),
    with `daemon.cpu = cpu` (placement.py)."""
    path = site / "services.toml"
    cpu_value = cpu if cpu.isdigit() else json.dumps(cpu)

    def wasm(name: str) -> str:
        return json.dumps(str(FIXTURES / name))

    path.write_text(
        f"""\
version = 1

[daemon]
listen = "127.0.0.1:0"
metrics_listen = ""
cache_dir = {json.dumps(str(site / "cache"))}
watch = false
cpu = {cpu_value}

[services.healthy]
wasm = {wasm("echo.wat")}
routes = ["/healthy"]

[services.hostile]  # spin and storm: never quarantined, so the storm lasts the whole run
wasm = {wasm("hostile.wat")}
routes = ["/hostile"]
call_timeout = {CALL_TIMEOUT_S}
memory_limit = "1MiB"
max_failures = 1000000

[services.supervised]  # the same storm with the default supervisor (max_failures = 5 in failure_window = 10 s)
wasm = {wasm("hostile.wat")}
routes = ["/supervised"]
call_timeout = {CALL_TIMEOUT_S}
memory_limit = "1MiB"

[services.front]
wasm = {wasm("caller.wat")}
routes = ["/front"]
calls = ["flood"]

[services.flood]
wasm = {wasm("flood.wat")}
calls = ["sink"]

[services.sink]
wasm = {wasm("echo.wat")}
mailbox = {SINK_MAILBOX}
"""
    )
    return path


def post(port: int, path: str, body: bytes) -> tuple[int, bytes, float]:
    """(status, body, seconds) of one POST on a fresh connection."""
    conn = http.client.HTTPConnection(h.HOST, port, timeout=10)
    try:
        start = time.perf_counter()
        conn.request("POST", path, body=body, headers={"Content-Type": "application/octet-stream"})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, data, time.perf_counter() - start
    except (OSError, http.client.HTTPException) as exc:
        raise h.HarnessError(f"POST {path}: {exc!r}") from exc
    finally:
        conn.close()


def verify(port: int) -> dict[str, Any]:
    """Check that each neighbour misbehaves as its scenario says and the healthy service echoes.

    Raises:
        HarnessError: something answered otherwise.
    """
    body = random.Random(0x150).randbytes(64)
    checks: list[tuple[str, bool, str]] = []
    status, data, _ = post(port, "/healthy", body)
    checks.append(("healthy echoes", (status, data) == (200, body), f"{status} {data[:80]!r}"))
    for path in ("/hostile", "/supervised"):
        status, data, _ = post(port, path, b"fine")
        checks.append((f"{path} echoes", (status, data) == (200, b"fine"), f"{status} {data[:80]!r}"))
    status, data, _ = post(port, "/hostile", b"u")
    checks.append(('"u" traps', status == 500 and b"unreachable" in data, f"{status} {data[:200]!r}"))
    status, data, spin_s = post(port, "/hostile", b"l")
    ok = status == 504 and CALL_TIMEOUT_S <= spin_s < CALL_TIMEOUT_S + 0.5
    checks.append(('"l" is interrupted at its deadline', ok, f"{status} after {spin_s * 1000:.1f} ms"))
    status, data, _ = post(port, "/front", FLOOD_BODY)
    counts = struct.unpack("<iiii", data) if len(data) == 16 else ()
    ok = status == 200 and len(counts) == 4 and counts[0] == 12 and counts[1] + counts[2] == 100 and counts[3] == 0
    checks.append(("flood sends 100 messages", ok, f"{status} {counts or data[:80]!r}"))
    failed = [f"{name}: got {got}" for name, ok, got in checks if not ok]
    if failed:
        raise h.HarnessError("verification failed:\n  " + "\n  ".join(failed))
    return {"spin_ms": spin_s * 1000, "flood_counts": counts}


def lua_string(data: bytes) -> str:
    """`data` as a Lua string literal (decimal escapes, so any byte is safe)."""
    return '"' + "".join(f"\\{b:03d}" for b in data) + '"'


def neighbour_script(scenario: Scenario, directory: Path) -> Path:
    """A wrk script that POSTs the scenario's body and prints one `MMNEIGHBOUR` line: statuses, and for the
    flood, the messages its requests got accepted and refused (from front's 16-byte reply)."""
    path = directory / f"neighbour_{scenario.name}.lua"
    path.write_text(
        f"""\
-- bench_isolation neighbour ({scenario.name}): POST {scenario.body!r} back to back; count the answers.
wrk.method = "POST"
wrk.body = {lua_string(scenario.body)}
wrk.headers["Content-Type"] = "application/octet-stream"
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
function init(args) n200, n500, n503, n504, nother, accepted, refused = 0, 0, 0, 0, 0, 0, 0 end
local function le32(s, i)
  local a, b, c, d = s:byte(i, i + 3)
  return a + b * 256 + c * 65536 + d * 16777216
end
function response(status, headers, body)
  if status == 200 then
    n200 = n200 + 1
    if {"true" if scenario.name == "flood" else "false"} and #body == 16 then
      accepted = accepted + le32(body, 5)
      refused = refused + le32(body, 9)
    end
  elseif status == 500 then n500 = n500 + 1
  elseif status == 503 then n503 = n503 + 1
  elseif status == 504 then n504 = n504 + 1
  else nother = nother + 1 end
end
function done(summary, latency, requests)
  local t = {{n200 = 0, n500 = 0, n503 = 0, n504 = 0, nother = 0, accepted = 0, refused = 0}}
  for _, thread in ipairs(threads) do
    for k, _ in pairs(t) do t[k] = t[k] + thread:get(k) end
  end
  local e = summary.errors
  io.write(string.format(
    "MMNEIGHBOUR requests=%d duration_us=%d p50_us=%d p99_us=%d s200=%d s500=%d s503=%d s504=%d sother=%d " ..
    "accepted=%d refused=%d errors_socket=%d errors_timeout=%d\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    t.n200, t.n500, t.n503, t.n504, t.nother, t.accepted, t.refused, e.connect + e.read + e.write, e.timeout))
end
"""
    )
    return path


@dataclass(frozen=True, slots=True)
class NeighbourResult:
    """What the neighbour's wrk saw."""

    requests: int
    duration_s: float
    p50_us: float
    p99_us: float
    statuses: dict[str, int]  # "200", "500", "503", "504", "other"
    accepted: int  # flood: messages the sink's mailbox took
    refused: int  # flood: sends refused as overloaded
    socket_errors: int
    timeouts: int


class Neighbour:
    """A wrk process loading one neighbour, started before the healthy run and stopped (SIGINT, by its PID) after.

    wrk ends early on SIGINT and still prints its results. `duration_s` is only an upper bound.
    """

    def __init__(self, url: str, script: Path, duration_s: int, log_path: Path) -> None:
        self.argv = ["wrk", "-t1", f"-c{NEIGHBOUR_CONNECTIONS}", f"-d{duration_s}s", "-s", str(script), url]
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=h._die_with_parent,  # SIGTERM if the bench dies; the bench runs no threads
            )

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise h.HarnessError(f"the neighbour's wrk exited early ({self.proc.returncode}): {self.output()}")

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace").strip()
        except FileNotFoundError:
            return "(no output)"

    def stop(self) -> NeighbourResult:
        """SIGINT, wait for its results, parse them."""
        self.kill()
        for line in self.output().splitlines():
            if line.startswith("MMNEIGHBOUR "):
                kv = {k: int(v) for k, v in (item.split("=", 1) for item in line.split()[1:])}
                return NeighbourResult(
                    requests=kv["requests"],
                    duration_s=kv["duration_us"] / 1e6,
                    p50_us=kv["p50_us"],
                    p99_us=kv["p99_us"],
                    statuses={s: kv[f"s{s}"] for s in ("200", "500", "503", "504", "other")},
                    accepted=kv["accepted"],
                    refused=kv["refused"],
                    socket_errors=kv["errors_socket"],
                    timeouts=kv["errors_timeout"],
                )
        raise h.HarnessError(f"the neighbour's wrk printed no MMNEIGHBOUR line:\n  $ {shlex.join(self.argv)}\n"
                             f"{self.output()}")  # fmt: skip

    def kill(self) -> None:
        """End the wrk process by its PID: SIGINT (it prints its results), SIGKILL if it lingers. Idempotent."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(NEIGHBOUR_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                print(f"warning: neighbour wrk (pid {self.proc.pid}) ignored SIGINT; SIGKILL")
                self.proc.kill()
                self.proc.wait(NEIGHBOUR_STOP_TIMEOUT_S)


@dataclass(frozen=True, slots=True)
class Run:
    """One scenario in one repeat."""

    repeat: int
    scenario: str
    healthy: h.WrkResult
    neighbour: NeighbourResult | None
    daemon_cpu_s: float
    machine_busy: float

    @property
    def daemon_cores(self) -> float:
        return self.daemon_cpu_s / self.healthy.duration_s

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {"healthy_rps": self.healthy.rps, "daemon_cores": self.daemon_cores}


def measure(server: h.Server, scenario: Scenario, repeat: int, duration_s: int, logs: Path) -> Run:
    """Start the neighbour (if any), let it run RAMP_S, run the healthy wrk, stop the neighbour."""
    healthy_url = f"http://{h.HOST}:{server.port}/healthy"
    neighbour: Neighbour | None = None
    try:
        if scenario.path is not None:
            script = neighbour_script(scenario, logs)
            url = f"http://{h.HOST}:{server.port}{scenario.path}"
            neighbour = Neighbour(url, script, duration_s + 30, logs / f"neighbour_{scenario.name}_{repeat}.log")
            time.sleep(RAMP_S)
            neighbour.check_alive()
        cpu0, busy0 = server.cpu_seconds(), h.machine_busy()
        healthy = h.run_wrk(healthy_url, threads=THREADS, connections=CONNECTIONS, duration_s=duration_s,
                            script=SCRIPT)  # fmt: skip
        cpu1, busy1 = server.cpu_seconds(), h.machine_busy()
        if neighbour is not None:
            neighbour.check_alive()
        result = neighbour.stop() if neighbour is not None else None
    finally:
        if neighbour is not None:
            neighbour.kill()
    server.check_alive()
    time.sleep(SETTLE_S)
    busy = (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1])
    return Run(repeat, scenario.name, healthy, result, cpu1 - cpu0, busy)


def per_repeat_ratios(runs: list[Run]) -> dict[str, dict[int, float]]:
    """Each scenario's healthy p99 divided by the solo p99 of the same repeat."""
    solo = {r.repeat: r.healthy.p99_us for r in runs if r.scenario == "solo"}
    ratios: dict[str, dict[int, float]] = {}
    for r in runs:
        if r.scenario != "solo" and r.repeat in solo:
            ratios.setdefault(r.scenario, {})[r.repeat] = r.healthy.p99_us / solo[r.repeat]
    return ratios


def print_daemon_results(runs: list[Run], scenarios: list[str]) -> dict[str, Any]:
    """Print the healthy service's table, the per-repeat ratios and the neighbours' outcomes; return the summary."""
    ratios = per_repeat_ratios(runs)
    summary: dict[str, Any] = {}
    rows = []
    for name in scenarios:
        mine = [r for r in runs if r.scenario == name]
        rps = [r.healthy.rps for r in mine]
        p50 = [r.healthy.p50_us for r in mine]
        p99 = [r.healthy.p99_us for r in mine]
        mx = [r.healthy.max_us for r in mine]
        errors = sum(r.healthy.error_count for r in mine)
        ratio = list(ratios.get(name, {}).values())
        rows.append([
            name, h.spread(rps), h.spread(p50), h.spread(p99), h.spread(mx),
            "1 (reference)" if name == "solo" else h.spread(ratio, 2),
            h.fmt(h.median([r.daemon_cores for r in mine]), 2), h.fmt(h.median([r.machine_busy for r in mine]), 2),
            str(errors),
        ])  # fmt: skip
        summary[name] = {"rps": h.median(rps), "p50_us": h.median(p50), "p99_us": h.median(p99),
                         "max_us": h.median(mx), "p99_over_solo": h.median(ratio) if ratio else None,
                         "p99_over_solo_per_repeat": ratio, "errors": errors}  # fmt: skip
    print(f"## healthy service under wrk -t{THREADS} -c{CONNECTIONS}, POST 64 bytes (median [min, max] over repeats)\n")
    headers = ["scenario", "healthy req/s", "p50 µs", "p99 µs", "max µs", "p99 / solo p99", "daemon cores",
               "machine busy", "errors"]  # fmt: skip
    print(h.table(headers, rows))
    print(
        "\np99 / solo p99 is taken per repeat against that repeat's solo run, then the median. 'daemon cores' is the\n"
        "daemon's CPU over the run divided by its length (1.0: its one event-loop thread never idled); 'machine\n"
        "busy' is the share of all CPUs busy (daemon, both wrk processes, anything else)."
    )

    repeats = sorted({r.repeat for r in runs})
    others = [s for s in scenarios if s != "solo" and s in ratios]
    if others:
        print("\n## p99 / solo p99, same repeat\n")
        solo = {r.repeat: r.healthy.p99_us for r in runs if r.scenario == "solo"}
        ratio_rows = [[str(rep), h.fmt(solo.get(rep, float("nan"))),
                       *(h.fmt(ratios[s].get(rep, float("nan")), 2) for s in others)] for rep in repeats]  # fmt: skip
        ratio_rows.append(["median", "", *(h.fmt(h.median(list(ratios[s].values())), 2) for s in others)])
        print(h.table(["repeat", "solo p99 µs", *others], ratio_rows))

    print("\n## the neighbour's own outcomes (sums over repeats; the neighbour is wrk -t1 -c1, back to back)\n")
    n_rows = []
    solo_runs = [r for r in runs if r.scenario == "solo"]
    solo_cpu_per_request = h.median([r.daemon_cpu_s / r.healthy.requests for r in solo_runs if r.healthy.requests])
    for name in scenarios:
        mine = [r.neighbour for r in runs if r.scenario == name and r.neighbour is not None]
        if not mine:
            continue
        total = sum(n.requests for n in mine)
        seconds = sum(n.duration_s for n in mine)
        cost = h.median([neighbour_cost_us(r, solo_cpu_per_request) for r in runs if r.scenario == name])
        statuses = {s: sum(n.statuses[s] for n in mine) for s in ("200", "500", "503", "504", "other")}
        accepted, refused = sum(n.accepted for n in mine), sum(n.refused for n in mine)
        socket_errors = sum(n.socket_errors + n.timeouts for n in mine)
        n_rows.append([
            name, SCENARIO_SPECS[name].what, f"{total:,}", h.fmt(total / seconds if seconds else float("nan")),
            h.fmt(h.median([n.p50_us for n in mine])), *(f"{statuses[s]:,}" for s in ("200", "500", "503", "504")),
            f"{statuses['other'] + socket_errors:,}",
            f"{accepted:,} / {refused:,}" if name == "flood" else "", h.fmt(cost),
        ])  # fmt: skip
        summary[name]["neighbour"] = {"requests": total, "rps": total / seconds if seconds else None,
                                      "statuses": statuses, "accepted": accepted, "refused": refused,
                                      "socket_errors": socket_errors, "daemon_us_per_request_est": cost}  # fmt: skip
    headers = ["scenario", "neighbour", "requests", "req/s", "p50 µs", "200", "500 trap", "503 refused",
               "504 deadline", "other", "messages accepted / refused", "daemon µs / request (est.)"]  # fmt: skip
    print(h.table(headers, n_rows))
    print(
        "\n'daemon µs / request (est.)': the daemon's CPU during the healthy run, minus the healthy requests at the\n"
        "solo runs' CPU per request, divided by the neighbour's requests in that time (its own req/s x the run's\n"
        "length): roughly what one neighbour request costs the event-loop thread (a spin: its whole deadline). The\n"
        "solo CPU per request itself varies by ~20% between runs on this VM, so a small estimate only means small."
    )
    return summary


def neighbour_cost_us(run: Run, solo_cpu_per_request: float) -> float:
    """Estimated daemon CPU per neighbour request in µs (see the note under the neighbour table)."""
    n = run.neighbour
    if n is None or not n.requests or not n.duration_s:
        return float("nan")
    during = n.requests / n.duration_s * run.healthy.duration_s
    return (run.daemon_cpu_s - run.healthy.requests * solo_cpu_per_request) / during * 1e6


# --- the spin scenario, a closer look --------------------------------------------------------------------------

PROBE_BODY: Final = b"bench_isolation: spin probe, a 64-byte body that the echo returns.."
PROBE_REQUEST: Final = (
    b"POST /healthy HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(PROBE_BODY), PROBE_BODY)
)
PROBE_TIMEOUT_S: Final = 30.0  # bound on the whole probe beyond its duration


@dataclass(frozen=True, slots=True)
class SpinProbe:
    """One probe run beside the spinning neighbour (latencies in µs)."""

    repeat: int
    first_answers_us: list[float]  # per new connection: connect + first request, until its answer
    steady_us: list[float]  # every later request on those connections
    neighbour: NeighbourResult


async def read_answer(reader: asyncio.StreamReader) -> None:
    """Read one HTTP/1.1 response with a content-length; HarnessError unless it is a 200 echoing PROBE_BODY."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length)
    if not lines[0].startswith(b"HTTP/1.1 200 ") or body != PROBE_BODY:
        raise h.HarnessError(f"spin probe: unexpected answer {lines[0]!r} {body[:100]!r}")


async def spin_probe_client(port: int, duration_s: float) -> tuple[list[float], list[float]]:
    """Open CONNECTIONS connections at once and time each one's first answer; then load them for `duration_s`,
    each sending its next request when its last answer arrived (as wrk does), timing every request."""

    async def first() -> tuple[asyncio.StreamReader, asyncio.StreamWriter, float]:
        start = time.perf_counter_ns()
        reader, writer = await asyncio.open_connection(h.HOST, port)
        writer.write(PROBE_REQUEST)
        await read_answer(reader)
        return reader, writer, (time.perf_counter_ns() - start) / 1000

    steady: list[float] = []

    async def load(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stop_ns: int) -> None:
        while time.perf_counter_ns() < stop_ns:
            start = time.perf_counter_ns()
            writer.write(PROBE_REQUEST)
            await read_answer(reader)
            steady.append((time.perf_counter_ns() - start) / 1000)

    connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
    try:
        async with asyncio.timeout(duration_s + PROBE_TIMEOUT_S):
            connections = list(await asyncio.gather(*(first() for _ in range(CONNECTIONS))))
            stop_ns = time.perf_counter_ns() + int(duration_s * 1e9)
            await asyncio.gather(*(load(reader, writer, stop_ns) for reader, writer, _ in connections))
    except (OSError, EOFError, TimeoutError, ValueError, asyncio.LimitOverrunError) as exc:
        raise h.HarnessError(f"spin probe failed: {exc!r}") from exc
    finally:
        for _, writer, _ in connections:
            writer.close()
    return [first_us for _, _, first_us in connections], steady


def run_spin_probe(server: h.Server, repeat: int, duration_s: int, logs: Path) -> SpinProbe:
    """The spin neighbour as in `measure`, with the asyncio probe client instead of the healthy wrk."""
    scenario = SCENARIO_SPECS["spin"]
    url = f"http://{h.HOST}:{server.port}{scenario.path}"
    neighbour = Neighbour(url, neighbour_script(scenario, logs), duration_s + 30, logs / f"probe_{repeat}.log")
    try:
        time.sleep(RAMP_S)
        neighbour.check_alive()
        first, steady = asyncio.run(spin_probe_client(server.port, duration_s))
        neighbour.check_alive()
        result = neighbour.stop()
    finally:
        neighbour.kill()
    server.check_alive()
    time.sleep(SETTLE_S)
    return SpinProbe(repeat, first, steady, result)


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (NaN for no values)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(pct / 100 * len(ordered)) - 1))]


def print_spin_probe(probes: list[SpinProbe]) -> dict[str, Any]:
    """Print the probe's table (pooled over repeats); return its summary."""
    first = [v for p in probes for v in p.first_answers_us]
    steady = [v for p in probes for v in p.steady_us]
    print(f"\n## spin, a closer look: an asyncio client with {CONNECTIONS} connections (pooled over repeats, ms)\n")
    rows = []
    summary: dict[str, Any] = {}
    for label, key, values in (
        ("first answer on a new connection", "first_answer", first),
        ("later requests on those connections", "steady", steady),
    ):
        figures = {f"p{q}": percentile(values, q) / 1000 for q in (50, 99)} | {"max": max(values) / 1000}
        rows.append([label, f"{len(values):,}", *(h.fmt(figures[k], 1) for k in ("p50", "p99", "max"))])
        summary[key] = figures | {"n": len(values)}
    print(h.table(["requests", "n", "p50 ms", "p99 ms", "max ms"], rows))
    ranked = [sorted(p.first_answers_us) for p in probes]
    by_rank = [h.median([firsts[k] for firsts in ranked]) / 1000 for k in range(CONNECTIONS)]
    summary["first_answer"]["by_rank_ms"] = by_rank
    print(
        "\nThe connections are opened together while the neighbour spins; their first answers, fastest to slowest "
        f"(median over repeats, ms): {', '.join(h.fmt(v) for v in by_rank)}.\n"
        "wrk opens its connections the same way when each run starts, so in the `spin` row above its p99 and max\n"
        "include those first answers; the later requests show the steady state (compare with call_timeout "
        f"= {CALL_TIMEOUT_S * 1000:g} ms)."
    )
    return summary


# --- part 2: the cost of epoch interruption --------------------------------------------------------------------


class RawGuest:
    """One guest instance called the way engine.py's `Instance.invoke` calls it, with or without epochs.

    With `epochs`, the engine has `epoch_interruption` on and the store gets engine.py's deadline callback, armed
    once (`set_epoch_deadline(1)`); `timing()` then runs engine.py's ticker thread while it measures. Without, none
    of that exists. Everything else (Config, store limits, raw call, memory view) is the same. Slotted like
    `Instance`, so setting `deadline` costs what it costs there.
    """

    __slots__ = (
        "epochs", "engine", "store", "deadline", "interrupted", "_keep", "_deadline_cb", "view", "buf", "i32", "i64",
        "trap", "trap_word", "args", "inbox",
    )  # fmt: skip

    def __init__(self, source: str, *, epochs: bool) -> None:
        config = wasmtime.Config()
        config.epoch_interruption = epochs
        config.memory_may_move = False
        self.epochs = epochs
        self.engine = wasmtime.Engine(config)
        module = wasmtime.Module(self.engine, source)
        self.store = store = wasmtime.Store(self.engine)
        store.set_limits(memory_size=MEMORY_LIMIT, instances=1, tables=4, memories=1)
        self.deadline = float("inf")
        self.interrupted = False
        if epochs:
            self._install_deadline()
        exports = wasmtime.Instance(store, module, []).exports(store)
        memory, handle = exports["memory"], exports["mm_handle"]
        self._keep = (module, handle)
        ctx = c_void_p(ctypes.cast(store._context(), c_void_p).value)
        mem_addr = ctypes.addressof(memory._memory)  # type: ignore[union-attr]
        base, size = mm_engine._memory_data(ctx, mem_addr), mm_engine._memory_data_size(ctx, mem_addr)
        self.view = memoryview((c_ubyte * size).from_address(base)).cast("B")
        self.buf = (_b.wasmtime_val_raw_t * 2)()
        raw = memoryview(self.buf).cast("B")
        self.i32, self.i64 = raw.cast("i"), raw.cast("q")
        self.trap = c_void_p(0)
        self.trap_word = memoryview(self.trap).cast("B").cast("Q")  # as Instance reads it
        self.args = (
            ctx,
            c_void_p(ctypes.addressof(handle._func)),  # type: ignore[union-attr]
            c_void_p(ctypes.addressof(self.buf)),
            c_size_t(2),
            c_void_p(ctypes.addressof(self.trap)),
        )
        self.inbox = 1024  # both guests' mm_inbox answer

    def _install_deadline(self) -> None:
        """engine.py's `Instance._install_deadline`, line for line."""
        monotonic = time.monotonic

        def on_deadline(ctx: int, env: int, delta: Any, kind: Any) -> int:
            if monotonic() > self.deadline:
                self.interrupted = True
                return int(mm_engine._new_error("micromono: call deadline exceeded"))
            delta[0] = 1
            kind[0] = mm_engine._DEADLINE_CONTINUE
            return 0

        self._deadline_cb = mm_engine._DEADLINE_CALLBACK(on_deadline)
        _ffi.wasmtime_store_epoch_deadline_callback(
            self.store.ptr(),
            ctypes.cast(self._deadline_cb, _b._wasmtime_store_epoch_deadline_callback.argtypes[1]),
            None,
            mm_engine._NO_FINALIZER,
        )
        self.store.set_epoch_deadline(1)

    def timing(self, variant: str, n: int, payload: bytes) -> float:
        """Seconds per call over `n` calls (after n/10 untimed ones), the ticker running if this guest has epochs."""
        loop = {"none": _calls_plain, "epoch": _calls_plain, "shipped": _calls_with_deadline}[variant]
        ticker = mm_engine._Ticker(self.engine, mm_engine.EPOCH_TICK_SECONDS) if self.epochs else None
        try:
            self.deadline = time.monotonic() + 3600 if variant == "epoch" else float("inf")
            loop(self, max(1, n // 10), payload)
            return timed(partial(loop, self, n, payload)) / n
        finally:
            if ticker is not None:
                ticker.stop()
            self.deadline = float("inf")


def _calls_plain(g: RawGuest, n: int, payload: bytes) -> None:
    """`n` calls of mm_handle(KIND_CALL, len), as Instance.invoke makes them, without touching the deadline."""
    view, i32, i64, args, call, trap = g.view, g.i32, g.i64, g.args, mm_engine._call_unchecked, g.trap_word
    p, length, kind = g.inbox, len(payload), mm_engine.KIND_CALL
    for _ in range(n):
        view[p : p + length] = payload
        i32[0] = kind
        i32[4] = length
        err = call(*args)
        if err or trap[0]:
            raise h.HarnessError("the guest failed")
        r = i64[0]
        ptr = r >> 32
        view[ptr : ptr + (r & 0xFFFFFFFF)]


def _calls_with_deadline(g: RawGuest, n: int, payload: bytes) -> None:
    """The same calls, each after setting the deadline as the router does (`CLOCK.now + timeout + slack`)."""
    view, i32, i64, args, call, trap = g.view, g.i32, g.i64, g.args, mm_engine._call_unchecked, g.trap_word
    p, length, kind = g.inbox, len(payload), mm_engine.KIND_CALL
    clock, after = mm_engine.CLOCK, DEADLINE_S + mm_engine.DEADLINE_SLACK
    for _ in range(n):
        view[p : p + length] = payload
        i32[0] = kind
        i32[4] = length
        g.deadline = clock.now + after
        err = call(*args)
        if err or trap[0]:
            raise h.HarnessError("the guest failed")
        r = i64[0]
        ptr = r >> 32
        view[ptr : ptr + (r & 0xFFFFFFFF)]


def timed(fn: Callable[[], None]) -> float:
    """Wall seconds of `fn()`, with the cyclic garbage collector off meanwhile."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        fn()
        return (time.perf_counter_ns() - start) / 1e9
    finally:
        gc.enable()


class _NoHost:
    """A Host for guests that import nothing."""

    def call(self, *args: Any) -> int:
        raise AssertionError("unexpected micromono.call")

    def send(self, *args: Any) -> int:
        raise AssertionError("unexpected micromono.send")

    def log(self, *args: Any) -> None:
        raise AssertionError("unexpected micromono.log")

    def still_running(self, *args: Any) -> None:
        return


def micromono_timing(path: Path, n: int, payload: bytes) -> float:
    """Seconds per call through micromono's own Engine and Instance.invoke, the deadline set per call as the router
    does. A fresh Engine per measurement, so its ticker runs only while it is measured."""
    with mm_engine.Engine(_NoHost(), cache_dir=None) as engine:
        instance = engine.compile("bench", path).instantiate(memory_limit=MEMORY_LIMIT)
        clock, invoke, kind = mm_engine.CLOCK, instance.invoke, mm_engine.KIND_CALL
        after = DEADLINE_S + mm_engine.DEADLINE_SLACK

        def calls(count: int) -> None:
            for _ in range(count):
                instance.deadline = clock.now + after
                invoke(kind, payload)

        try:
            calls(max(1, n // 10))
            return timed(partial(calls, n)) / n
        finally:
            instance.close()


@dataclass
class EpochGuest:
    """One guest of part 2 and its per-round timings (seconds per call) by variant."""

    name: str
    label: str
    path: Path
    payload: bytes
    calls: int  # per variant per block
    work: str
    iterations: int = 0  # loop iterations per call (loop-heavy guest)
    times: dict[str, list[float]] = field(default_factory=dict)


def calibrate_passes(source: str) -> tuple[int, float]:
    """Loop passes for about LOOP_TARGET_S per call without epochs; (passes, seconds per pass)."""
    guest = RawGuest(source, epochs=False)
    probe = 8
    per_call = min(guest.timing("none", 5, struct.pack("<I", probe)) for _ in range(3))
    per_pass = per_call / probe
    return max(1, round(LOOP_TARGET_S / per_pass)), per_pass


def measure_epochs(rounds: int, blocks: int, quick: bool, directory: Path) -> list[EpochGuest]:
    """Time every variant on both guests in `rounds` rounds of `blocks` blocks; in each block every variant runs
    once, in an order rotated per block, so the variants share whatever the machine does meanwhile."""
    loop_path = directory / "loop.wat"
    loop_path.write_text(LOOP_WAT)
    passes, per_pass = calibrate_passes(LOOP_WAT)
    guests = [
        EpochGuest("call", "call-heavy: echo.wat, 64-byte CALL", FIXTURES / "echo.wat", CALL_PAYLOAD,
                   CALLS_QUICK if quick else CALLS_FULL, "one call, nothing else"),
        EpochGuest("loop", "loop-heavy: sum 64 KiB of i32 words in a tight loop", loop_path,
                   struct.pack("<I", passes), LOOP_CALLS_QUICK if quick else LOOP_CALLS_FULL,
                   f"{passes} passes x {LOOP_WORDS} words = {passes * LOOP_WORDS:,} loop iterations per call",
                   passes * LOOP_WORDS),
    ]  # fmt: skip
    print(f"  loop guest calibrated: {passes} passes per call ({per_pass * 1e6:.1f} µs per pass without epochs)")
    for guest in guests:
        source = guest.path.read_text()
        raw = {False: RawGuest(source, epochs=False), True: RawGuest(source, epochs=True)}
        guest.times = {v: [] for v in EPOCH_VARIANTS}
        for rnd in range(rounds):
            total = dict.fromkeys(EPOCH_VARIANTS, 0.0)
            for block in range(blocks):
                shift = (rnd + block) % len(EPOCH_VARIANTS)
                for variant in EPOCH_VARIANTS[shift:] + EPOCH_VARIANTS[:shift]:
                    if variant == "micromono":
                        total[variant] += micromono_timing(guest.path, guest.calls, guest.payload)
                    else:
                        total[variant] += raw[variant != "none"].timing(variant, guest.calls, guest.payload)
            for variant in EPOCH_VARIANTS:
                guest.times[variant].append(total[variant] / blocks)
            line = "  ".join(f"{v} {guest.times[v][-1] * 1e6:,.3f}" for v in EPOCH_VARIANTS)
            print(f"  round {rnd} {guest.name}: µs per call: {line}")
    return guests


def epoch_pcts(guest: EpochGuest, variant: str) -> list[float]:
    """Per round: (variant / none - 1) in percent."""
    return [(t / n - 1) * 100 for t, n in zip(guest.times[variant], guest.times["none"], strict=True)]


def print_epoch_results(guests: list[EpochGuest], rounds: int, blocks: int) -> dict[str, Any]:
    """Print the epoch-cost table; return its summary."""
    rows = []
    summary: dict[str, Any] = {}
    for guest in guests:
        summary[guest.name] = {"label": guest.label, "work": guest.work, "calls_per_block": guest.calls,
                              "blocks_per_round": blocks}  # fmt: skip
        for variant in EPOCH_VARIANTS:
            us = [t * 1e6 for t in guest.times[variant]]
            pct = epoch_pcts(guest, variant) if variant != "none" else []
            extra_ns = h.median([(t - n) * 1e9 for t, n in zip(guest.times[variant], guest.times["none"], strict=True)])
            rows.append([
                f"{guest.name} / {variant}", h.spread(us, 3),
                "" if variant == "none" else f"{h.median(pct):+.1f}% [{min(pct):+.1f}, {max(pct):+.1f}]",
                "" if variant == "none" else f"{extra_ns:+,.0f}",
            ])  # fmt: skip
            summary[guest.name][variant] = {"us_per_call": h.median(us), "us_per_call_per_round": us,
                                            "pct_vs_none": h.median(pct) if pct else 0.0, "ns_vs_none": extra_ns,
                                            "pct_vs_none_per_round": pct}  # fmt: skip
    print(f"## epoch deadline cost per call, in process ({rounds} rounds of {blocks} interleaved blocks, "
          "median [min, max] over rounds)\n")  # fmt: skip
    print(h.table(["guest / variant", "µs per call", "vs none (per round)", "ns per call vs none (per round)"], rows))
    print()
    for guest in guests:
        print(f"  {guest.name}: {guest.label}; {guest.work}; {guest.calls:,} calls per variant per block, "
              f"{blocks} blocks per round")  # fmt: skip
    for variant, text in EPOCH_LEGEND.items():
        print(f"  {variant}: {text}")
    loop = next(g for g in guests if g.name == "loop")
    per_iteration = summary["loop"]["epoch"]["ns_vs_none"] / loop.iterations
    summary["loop"]["epoch_ns_per_iteration"] = per_iteration
    print(f"\n  loop-heavy: epoch checks add {per_iteration:.2f} ns per loop iteration (one check per back-edge), "
          f"{summary['loop']['shipped']['pct_vs_none']:+.1f}% on this tight loop (information, not a bar: a cost per "
          "iteration of wasmtime's generated code, not per call).")  # fmt: skip
    call = next(g for g in guests if g.name == "call")
    share = summary["call"]["shipped"]["ns_vs_none"] / 1e9 / h.median(call.times["micromono"])
    summary["call"]["mechanism_share_of_invoke_pct"] = share * 100
    print(f"  call-heavy: the mechanism (shipped - none) is {share * 100:.1f}% of micromono's whole Instance.invoke "
          "(information, not a bar).")  # fmt: skip
    return summary


# --- main ------------------------------------------------------------------------------------------------------


def make_bars(daemon: dict[str, Any], epoch: dict[str, Any], scenarios: list[str]) -> list[h.Bar]:
    """p99 / solo p99 <= 3x for each scenario; the epoch mechanism's per-call cost (call-heavy guest, as shipped)
    <= 5% over none. The loop-heavy figure is printed beside it, not as a bar: it is a cost per loop iteration
    (wasmtime's check on every back-edge, the same for any runtime built on wasmtime epochs), not per call."""
    bars = [
        h.Bar(f"{name}: healthy p99 / solo p99", daemon.get(name, {}).get("p99_over_solo"), BAR_RATIO, False, "x")
        for name in scenarios
        if name != "solo"
    ]
    measured = epoch["call"]["shipped"]["pct_vs_none"] if "call" in epoch else None
    bars.append(h.Bar("epoch per call, as shipped vs none (call-heavy)", measured, BAR_EPOCH_PCT, False, "%"))
    return bars


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; see --help."""
    parser = argparse.ArgumentParser(
        description="A healthy service's latency while a neighbour spins, traps or floods, against the healthy "
        "service alone; and the per-call cost of epoch interruption (the CPU deadline) against none.",
        epilog=f"Defaults: {REPEATS_FULL} repeats x {len(SCENARIOS)} scenarios x {DURATION_FULL_S} s, then "
        f"{ROUNDS_FULL} epoch rounds; --quick: {REPEATS_QUICK} x {DURATION_QUICK_S} s, {ROUNDS_QUICK} rounds.",
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run (what the test suite uses)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the raw results to PATH")
    parser.add_argument("--python", default=sys.executable, help="python that runs the daemon (default: this one)")
    parser.add_argument("--repeats", type=int, metavar="R", help="interleaved repeats of the scenarios")
    parser.add_argument("--duration", type=int, metavar="S", help="seconds of each healthy wrk run")
    parser.add_argument("--rounds", type=int, metavar="N", help="interleaved rounds of the epoch measurement")
    parser.add_argument(
        "--cpu", default="auto", metavar="VALUE",
        help='the daemon\'s `cpu` setting (default "auto": one CPU, offloaded guests at SCHED_IDLE; "any": '
        "unpinned, offloaded guests at nice +19; or a CPU number)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.cpu not in ("auto", "any") and not args.cpu.isdigit():
        parser.error(f'--cpu: expected "auto", "any" or a CPU number, got {args.cpu!r}')
    args.repeats = args.repeats or (REPEATS_QUICK if args.quick else REPEATS_FULL)
    args.duration = args.duration or (DURATION_QUICK_S if args.quick else DURATION_FULL_S)
    args.rounds = args.rounds or (ROUNDS_QUICK if args.quick else ROUNDS_FULL)
    for name in ("repeats", "duration", "rounds"):
        if not 1 <= getattr(args, name) <= 1000:
            parser.error(f"--{name}: expected 1..1000")
    return args


def run_daemon_part(args: argparse.Namespace, tmp: Path) -> tuple[list[Run], list[SpinProbe], dict[str, Any]]:
    """Start the daemon, verify it, warm it up, run every scenario in every repeat and then the spin probe, stop
    the daemon (by its PID)."""
    site, logs = tmp / "site", tmp / "logs"
    site.mkdir()
    logs.mkdir()
    manifest = write_manifest(site, args.cpu)
    runs: list[Run] = []
    probes: list[SpinProbe] = []
    with h.Server.start("micromono", partial(h.micromono_argv, args.python, manifest), logs) as server:
        checked = verify(server.port)
        print(f"  daemon pid {server.proc.pid} on port {server.port}; verified (a spin answered 504 after "
              f"{checked['spin_ms']:.1f} ms; a flood request: {checked['flood_counts']})")  # fmt: skip
        h.run_wrk(f"http://{h.HOST}:{server.port}/healthy", threads=THREADS, connections=CONNECTIONS,
                  duration_s=WARMUP_S, script=SCRIPT)  # fmt: skip
        for repeat in range(args.repeats):
            shift = repeat % len(SCENARIOS)
            for name in SCENARIOS[shift:] + SCENARIOS[:shift]:
                run = measure(server, SCENARIO_SPECS[name], repeat, args.duration, logs)
                runs.append(run)
                n = run.neighbour
                neighbour = "" if n is None else f"; neighbour {n.requests:,} requests {n.statuses}"
                print(f"  repeat {repeat} {name:10} healthy {run.healthy.rps:9,.0f} req/s  p50 "
                      f"{run.healthy.p50_us:8,.0f} µs  p99 {run.healthy.p99_us:8,.0f} µs{neighbour}")  # fmt: skip
            probe = run_spin_probe(server, repeat, args.duration, logs)
            probes.append(probe)
            firsts = ", ".join(h.fmt(v / 1000) for v in sorted(probe.first_answers_us))
            print(f"  repeat {repeat} spin probe: first answers {firsts} ms; {len(probe.steady_us):,} later "
                  f"requests, p99 {percentile(probe.steady_us, 99) / 1000:,.1f} ms")  # fmt: skip
        server.check_alive()
    print()
    summary = print_daemon_results(runs, list(SCENARIOS))
    summary["spin_probe"] = print_spin_probe(probes)
    return runs, probes, summary


def main(argv: list[str] | None = None) -> int:
    """Run the bench; 0 when every run completed (whatever the bars say), 1 when one could not."""
    args = parse_args(argv)
    h.exit_on_sigterm()
    blocks = BLOCKS_QUICK if args.quick else BLOCKS_FULL
    if reason := h.micromono_unavailable(args.python):
        print(f"micromono unavailable: {reason}", file=sys.stderr)
        return 1
    params = {
        "scenarios": ",".join(SCENARIOS),
        "repeats": args.repeats,
        "duration_s": args.duration,
        "healthy": f"wrk -t{THREADS} -c{CONNECTIONS} POST 64 bytes",
        "neighbour": f"wrk -t1 -c{NEIGHBOUR_CONNECTIONS} back to back",
        "call_timeout_ms": CALL_TIMEOUT_S * 1000,
        "epoch_tick_ms": mm_engine.EPOCH_TICK_SECONDS * 1000,
        "epoch_rounds": args.rounds,
        "epoch_blocks_per_round": blocks,
        "daemon_cpu": args.cpu,
        "quick": args.quick,
    }
    report = h.Report("bench_isolation", params, h.versions(args.python))
    h.print_preamble("bench_isolation: a healthy service beside misbehaving neighbours; the cost of epochs",
                     report.versions, params)  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="bench_isolation-") as tmp:
        try:
            runs, probes, daemon_summary = run_daemon_part(args, Path(tmp))
            print("\nThe spinning neighbour's first request (in the verification step) held the event loop until its")
            print(f"deadline (call_timeout {CALL_TIMEOUT_S * 1000:g} ms, checked every "
                  f"{mm_engine.EPOCH_TICK_SECONDS * 1000:g} ms epoch tick); from then on it runs on a")  # fmt: skip
            print("thread of its own, so in `spin` the healthy service shares the machine's CPUs with it")
            print("but no longer waits for it.\n")
            guests = measure_epochs(args.rounds, blocks, args.quick, Path(tmp))
        except (h.HarnessError, OSError, wasmtime.WasmtimeError) as exc:
            print(f"\nbench_isolation failed: {exc}", file=sys.stderr)
            return 1
    print()
    epoch_summary = print_epoch_results(guests, args.rounds, blocks)
    report.samples = (
        [r.as_json() for r in runs]
        + [asdict(p) for p in probes]
        + [{"epoch_guest": g.name, "label": g.label, "work": g.work, "seconds_per_call": g.times} for g in guests]
    )
    report.summary = {"scenarios": daemon_summary, "epoch": epoch_summary}
    report.bars = make_bars(daemon_summary, epoch_summary, list(SCENARIOS))
    print("\n## bars (reported, not asserted)\n")
    print(h.bars_table(report.bars))
    if any(r.healthy.error_count for r in runs):
        print("\nWARNING: some healthy runs had wrk errors (see the errors column); their figures are suspect.")
    print("\nloadavg at end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    if args.json:
        report.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
