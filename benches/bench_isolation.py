"""bench_isolation: what a misbehaving service costs its healthy neighbour, and what the CPU deadline costs.

Part 1, one daemon. A healthy service (`tests/fixtures/echo.wat` on /healthy) is loaded with
`wrk -t1 -c8 --latency -s post64.lua` in each scenario, while something misbehaves beside it: a second client (a
wrk -t1 -c1 run with its own generated script) keeps a hostile neighbour busy back to back, or the bench rewrites a
service's file. The scenarios (the first five are the original ones; the others are the cases of the preemption
issue, each measured there with the same healthy load):

  solo          nothing else runs
  spin          POST "l" to /hostile (tests/fixtures/hostile.wat): an endless loop, interrupted at its deadline
                (call_timeout = 50 ms). The verification step makes this service's first spin happen before any
                scenario is measured
  storm         POST "u" to /hostile: an `unreachable` trap on every request; max_failures is raised so far that the
                supervisor never quarantines it, so the storm goes on for the whole run
  supervised    the same storm against /supervised, a second copy with the default supervisor (max_failures = 5):
                it is quarantined, and answered with fast 503s while quarantined
  flood         POST to /front (tests/fixtures/caller.wat), which calls `flood` (tests/fixtures/flood.wat) once;
                flood sends 100 messages to `sink` (echo.wat, mailbox = 8): 8 fit, 92 are refused as overloaded
  spin1         POST "l" to a hostile.wat service that has never run before (a fresh one in each repeat), with the
                default call_timeout = 1 s: its *first* request loops forever, and so do the ones after it
  spin5         the same with call_timeout = 5 s (longer than wrk's 2 s timeout)
  swap-start    hot swap to a build whose start function loops forever (tests/fixtures/hostile_start.wat): the bench
                writes it over `swapper`'s file (echo.wat until then) every SWAP_EVERY_S during the window
  swap-init     the same with a build whose `_initialize` loops forever (hostile_init.wat)
  swap-health   the same with a build whose `mm_health` loops forever (hostile_health.wat)
  swap-big      hot swap to a 70 MiB module with 12,000 functions (benches/_bigmodule.py; 7 MiB and 1,200 with
                --quick), a new one with other bytes on every rewrite, so the compile cache never has it: the window
                is stretched to hold at least one whole swap (compile, start, swap), timed in the verification step,
                and the next module is written as soon as the last one is serving
  sends         POST "n" to /sender (tests/fixtures/spammer.wat): 100,000 `send`s to `sink` in one request
  amplify       POST "x" + a budget to /spammer (spammer.wat): a message that sends 1,000 messages "x" to its own
                service, each of which does the same; the storm keeps that mailbox full and dies out STORM_MS after
                the request that started it (the next neighbour request that gets in starts a new one)
  bomb          POST "G" to /bomber (spammer.wat, memory_limit 1 GiB): memory.grow one page at a time to the limit,
                one byte stored in every page, then a trap, so every request bombs a fresh instance
  log           POST "L" to /logger (spammer.wat): 1 MiB of guest log per request (1,024 lines of 1 KiB at info)

After each scenario the bench waits until the daemon is quiet (its /status: nothing in flight, every mailbox empty;
after a swap scenario, the original file is back and serving), so no scenario's tail lands in the next one. Scenarios
are interleaved: each repeat runs all of them in an order rotated by the repeat index, and each scenario's healthy
p50, p99 and max are divided by the solo figures *of the same repeat*. Beside wrk, a sentinel process makes one
healthy request every 10 ms and waits for each answer however long it takes: wrk drops the requests still unanswered
when its run ends, so a daemon that holds its loop past the window would not show in wrk's figures (a run in which
wrk got no answer at all counts as an infinite p99). The sentinel starts before the neighbour (RAMP_S before wrk),
so a service's first long run counts as well. The bars, for every scenario: no failed healthy request (wrk's
socket errors, 2 s timeouts and HTTP errors, and the sentinel's), healthy p99 at most 3x solo, healthy max (wrk's or
the sentinel's, the worst repeat) under 50 ms. After each repeat an asyncio client with connections of its own times
the first answer on each new connection and, separately, the requests after it, beside the `spin` neighbour.

The daemon runs with its default placement (`daemon.cpu = "auto"`: on one CPU, micromono/placement.py); `--cpu`
sets another (a CPU number, or "any": unpinned).

Part 2, in process (no daemon). The per-call cost of epoch interruption (the CPU deadline mechanism of
micromono/engine.py) against none: the same guest, called with engine.py's raw-call technique, on a wasmtime
Engine with and without `epoch_interruption`, in interleaved rounds. engine.py has no switch to turn epochs off,
so the bench builds both engines itself, with the raw synchronous call, ticker and deadline callback engine.py had
before guests were preempted (variants epoch and shipped); the `micromono` variant is engine.py's own entry as it is
now (an async call that yields at every slice).
Two guests: call-heavy (echo of 64 bytes: almost all the time is the call itself) and loop-heavy (a tight loop
summing 64 KiB of memory, about 1 ms per call: an epoch check on every loop back-edge).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import hashlib
import http.client
import json
import math
import os
import random
import resource
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from ctypes import c_size_t, c_ubyte, c_uint8, c_uint64, c_void_p
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final

import _harness as h
from _bigmodule import write_big_module

sys.path.insert(0, str(h.REPO))  # micromono itself, for part 2, when run from anywhere

# Part 2 must build a wasmtime Engine *without* epoch interruption, which micromono's Engine cannot do, so the
# bench imports wasmtime itself; everything else it mirrors comes from engine.py, so a change there shows here.
import wasmtime  # noqa: E402, TID251
from wasmtime import _bindings as _b  # noqa: E402, TID251  (unstable: private bindings, as in engine.py)
from wasmtime import _ffi  # noqa: E402, TID251

from micromono import engine as mm_engine  # noqa: E402

# Part 2's raw entry points, its own rather than engine.py's, since engine.py now calls guests through wasmtime's
# async call API (a fiber per entry, a yield at every slice): the synchronous `wasmtime_func_call_unchecked` (the GIL
# released around it), linear memory's address and size, and an epoch-deadline callback that lets the guest continue
# (WASMTIME_UPDATE_DEADLINE_CONTINUE), as engine.py had them before guests were preempted.
_lib = ctypes.CDLL(_ffi.dll._name)
_call_unchecked = _lib.wasmtime_func_call_unchecked
_memory_data = ctypes.CFUNCTYPE(c_void_p, c_void_p, c_void_p)(ctypes.cast(_lib.wasmtime_memory_data, c_void_p).value)
_memory_data_size = ctypes.CFUNCTYPE(c_size_t, c_void_p, c_void_p)(
    ctypes.cast(_lib.wasmtime_memory_data_size, c_void_p).value
)
# wasmtime_error_t *cb(wasmtime_context_t *, void *env, uint64_t *epoch_deadline_delta, uint8_t *update_kind)
_DEADLINE_CALLBACK = ctypes.CFUNCTYPE(c_size_t, c_void_p, c_void_p, ctypes.POINTER(c_uint64), ctypes.POINTER(c_uint8))
_NO_FINALIZER = ctypes.cast(0, ctypes.CFUNCTYPE(None, c_void_p))
_DEADLINE_CONTINUE: Final = 0


def _new_error(message: str) -> int:
    err = _ffi.wasmtime_error_new(ctypes.create_string_buffer(message.encode()))
    return ctypes.cast(err, c_void_p).value or 0


FIXTURES: Final = h.REPO / "tests" / "fixtures"
SCRIPT: Final = h.BENCHES / "post64.lua"
THREADS, CONNECTIONS = 1, 8
NEIGHBOUR_CONNECTIONS: Final = 1
SCENARIOS: Final = (
    "solo", "spin", "storm", "supervised", "flood", "spin1", "spin5", "swap-start", "swap-init", "swap-health",
    "swap-big", "sends", "amplify", "bomb", "log",
)  # fmt: skip
REPEATS_FULL, DURATION_FULL_S = 3, 3
REPEATS_QUICK, DURATION_QUICK_S = 1, 1
WARMUP_S: Final = 1
RAMP_S: Final = 0.3  # the neighbour runs this long before the healthy load starts
SETTLE_S: Final = 0.3  # pause after a scenario, once the daemon is quiet
QUIET_TIMEOUT_S: Final = 120.0  # the longest the bench waits for the daemon to be quiet after a scenario
STUCK_S: Final = 3.0  # queued work with nothing running and no progress this long: stuck, not waited for
ADMIN_TIMEOUT_S: Final = 30.0  # one /status or /metrics request (a daemon whose loop is held answers late)
NEIGHBOUR_STOP_TIMEOUT_S: Final = 10.0
CALL_TIMEOUT_S: Final = 0.05
SINK_MAILBOX: Final = 8
FLOOD_BODY: Final = struct.pack("<iII", 1, 64, 5) + b"flood"  # caller.wat: 1 call to "flood", a 64-byte reply buffer
SWAP_EVERY_S: Final = 1.0  # swap-start/-init/-health: the hostile build is written this often during the window
STORM_MS: Final = 250  # amplify: a storm dies out this long after the request that started it
BOMB_LIMIT: Final = "1GiB"  # bomb: the bomber's memory_limit (16,384 pages grown and touched per request)
BIG_FUNCTIONS_FULL, BIG_MIB_FULL = 12_000, 70  # swap-big's module (benches/_bigmodule.py)
BIG_FUNCTIONS_QUICK, BIG_MIB_QUICK = 1_200, 7
BIG_SWAP_TIMEOUT_S: Final = 300.0  # the longest one big module may take from written to serving
SENTINEL_INTERVAL_S: Final = 0.01  # the sentinel's pause between its healthy requests
SENTINEL_WAIT_S: Final = 60.0  # the longest the sentinel waits for one answer before it counts it failed

# Bars (part 1), for every scenario but solo.
BAR_MAX_MS: Final = 50.0
BAR_FAILED: Final = 0

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
    "epoch": "epoch_interruption on, a ticker every EPOCH_TICK_SECONDS (engine.py's) and a deadline callback that "
    "lets the guest continue (the mechanism before guests were preempted); the deadline set once",
    "shipped": "as `epoch`, plus the deadline set before every call as the router did",
    "micromono": "micromono's own Instance.invoke with the router's per-call deadline: the mechanism as shipped, "
    "async call and slices included (reference, not a bar: its extra over `shipped` is Instance.invoke's own work)",
}

# Bars (shown as PASS/FAIL, never asserted).
BAR_RATIO: Final = 3.0  # healthy p99 / solo p99
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
    """A neighbour's load: what it posts where (None: no neighbour); or the build the bench writes over `swapper`'s
    file during the window (None: none)."""

    name: str
    path: str | None  # "{repeat}" in it stands for the repeat's index: a fresh service in each repeat
    body: bytes
    what: str
    swap: str | None = None  # a fixture's file name, or BIG: benches/_bigmodule.py's modules

    def url_path(self, repeat: int) -> str | None:
        return None if self.path is None else self.path.replace("{repeat}", str(repeat))


BIG: Final = "big"

SCENARIO_SPECS: Final = {
    "solo": Scenario("solo", None, b"", "nothing else runs"),
    "spin": Scenario("spin", "/hostile", b"l", f'"l": endless loop, call_timeout {CALL_TIMEOUT_S * 1000:g} ms'),
    "storm": Scenario("storm", "/hostile", b"u", '"u": trap on every call, never quarantined'),
    "supervised": Scenario("supervised", "/supervised", b"u", '"u": trap storm, default supervisor'),
    "flood": Scenario("flood", "/front", FLOOD_BODY, f"100 sends per request to a mailbox of {SINK_MAILBOX}"),
    "spin1": Scenario("spin1", "/spin1/{repeat}", b"l", '"l" from its first request on, call_timeout 1 s'),
    "spin5": Scenario("spin5", "/spin5/{repeat}", b"l", '"l" from its first request on, call_timeout 5 s'),
    "swap-start": Scenario("swap-start", None, b"", "hot swap: start function loops forever", "hostile_start.wat"),
    "swap-init": Scenario("swap-init", None, b"", "hot swap: _initialize loops forever", "hostile_init.wat"),
    "swap-health": Scenario("swap-health", None, b"", "hot swap: mm_health loops forever", "hostile_health.wat"),
    "swap-big": Scenario("swap-big", None, b"", "hot swap: a big module, never in the cache", BIG),
    "sends": Scenario("sends", "/sender", b"n", f'"n": 100,000 sends per request to a mailbox of {SINK_MAILBOX}'),
    "amplify": Scenario("amplify", "/spammer", b"x" + struct.pack("<I", STORM_MS),
                        f'"x": a message that sends 1,000 to itself; storms of {STORM_MS} ms'),
    "bomb": Scenario("bomb", "/bomber", b"G", f'"G": grow to {BOMB_LIMIT}, touch every page, trap'),
    "log": Scenario("log", "/logger", b"L", '"L": 1 MiB of guest log per request'),
}  # fmt: skip


def write_manifest(site: Path, cpu: str = "auto", repeats: int = 1, slice_s: float | None = None) -> Path:
    """services.toml in `site`: the healthy service, its hostile neighbours, the flood chain, `swapper` (its file in
    `site`, echo.wat as a binary until a swap scenario writes over it) and a fresh spin1/spin5 service per repeat,
    with `daemon.cpu = cpu` (placement.py), `daemon.slice = slice_s` unless None (the default slice) and the file
    watch on (the swap scenarios need it)."""
    path = site / "services.toml"
    cpu_value = cpu if cpu.isdigit() else json.dumps(cpu)
    slice_line = "" if slice_s is None else f"slice = {slice_s!r}\n"
    (site / "swapper.wasm").write_bytes(wat2wasm("echo.wat"))

    def wasm(name: str) -> str:
        return json.dumps(str(FIXTURES / name))

    fresh = "".join(
        f"""
[services.spin{seconds}-r{repeat}]  # scenario spin{seconds}, repeat {repeat}: never called before it
wasm = {wasm("hostile.wat")}
routes = ["/spin{seconds}/{repeat}"]
call_timeout = {seconds}.0
max_failures = 1000000
"""
        for repeat in range(repeats)
        for seconds in (1, 5)
    )
    path.write_text(
        f"""\
version = 1

[daemon]
listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
cache_dir = {json.dumps(str(site / "cache"))}
watch = true
cpu = {cpu_value}
{slice_line}
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

[services.swapper]  # swap-*: the bench writes hostile builds over its file
wasm = {json.dumps(str(site / "swapper.wasm"))}
routes = ["/swapper"]

[services.sender]  # sends
wasm = {wasm("spammer.wat")}
routes = ["/sender"]
calls = ["sink"]

[services.spammer]  # amplify: spammer.wat sends its storm to the service named "spammer"
wasm = {wasm("spammer.wat")}
routes = ["/spammer"]
calls = ["spammer"]

[services.bomber]  # bomb: a trap after every bomb, never quarantined
wasm = {wasm("spammer.wat")}
routes = ["/bomber"]
memory_limit = "{BOMB_LIMIT}"
max_failures = 1000000

[services.logger]  # log
wasm = {wasm("spammer.wat")}
routes = ["/logger"]
{fresh}"""
    )
    return path


def wat2wasm(fixture: str) -> bytes:
    """A fixture as a WebAssembly binary (what the swap scenarios write over a `.wasm` file)."""
    return bytes(wasmtime.wat2wasm((FIXTURES / fixture).read_text()))


def daemon_argv(python: str, manifest: Path, metrics_port: list[int], compiled: bool, port: int) -> list[str]:
    """harness.micromono_argv with an admin listener (/status, /metrics) on a free port, noted in `metrics_port`; on
    the optional compiled path when `compiled`."""
    argv = h.micromono_argv(python, manifest, port, compiled=compiled)
    metrics_port[:] = [h.free_port()]
    assert argv[-2] == "--metrics-listen"
    return [*argv[:-1], f"{h.HOST}:{metrics_port[0]}"]


class Admin:
    """The daemon's admin listener: /status and /metrics."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stuck: set[str] = set()  # services whose queued work nothing runs (see wait_quiet)

    def get(self, path: str) -> bytes:
        conn = http.client.HTTPConnection(h.HOST, self.port, timeout=ADMIN_TIMEOUT_S)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                raise h.HarnessError(f"GET {path} on the admin listener: {resp.status} {data[:200]!r}")
            return data
        except (OSError, http.client.HTTPException) as exc:
            raise h.HarnessError(f"GET {path} on the admin listener: {exc!r}") from exc
        finally:
            conn.close()

    def status(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.get("/status"))
        return document

    def service(self, name: str) -> dict[str, Any]:
        for entry in self.status()["services"]:
            if entry["name"] == name:
                return dict(entry)
        raise h.HarnessError(f"no service {name!r} in /status")

    def reloads(self, service: str) -> dict[str, int]:
        """micromono_reloads_total{service=...} by outcome."""
        counts: dict[str, int] = {}
        for line in self.get("/metrics").decode().splitlines():
            if line.startswith("micromono_reloads_total{") and f'service="{service}"' in line:
                outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
                counts[outcome] = int(float(line.rsplit(" ", 1)[1]))
        return counts

    def wait_quiet(self, timeout_s: float = QUIET_TIMEOUT_S) -> float:
        """Wait until no guest is inside a call and every mailbox is empty; the seconds it took.

        A mailbox that holds work while nothing of its service runs and its counts do not move for STUCK_S is
        reported once (a daemon bug: work nobody will run) and not waited for.
        """
        start = time.monotonic()
        last: dict[str, tuple[Any, ...]] = {}
        since: dict[str, float] = {}
        while True:
            status = self.status()
            now = time.monotonic()
            busy = []
            for entry in status["services"]:
                name = entry["name"]
                if not entry["in_flight"] and (not entry["mailbox"]["queued"] or name in self.stuck):
                    continue
                state = (entry["in_flight"], entry["mailbox"]["queued"], entry["calls"]["ok"], entry["calls"]["failed"])
                if state != last.get(name):
                    last[name], since[name] = state, now
                if not entry["in_flight"] and now - since[name] > STUCK_S:
                    if name not in self.stuck:
                        self.stuck.add(name)
                        print(f"  warning: {name}'s mailbox holds {entry['mailbox']['queued']} items and nothing "
                              f"runs them (no change in {STUCK_S:g} s): not waited for")  # fmt: skip
                    continue
                busy.append(name)
            busy += [f"{d['name']} (draining)" for d in status.get("draining", []) if d.get("in_flight")]
            if not busy:
                return now - start
            if now - start > timeout_s:
                print(f"  warning: the daemon was still busy {timeout_s:g} s after a scenario: {', '.join(busy)}")
                return now - start
            time.sleep(0.05)


@dataclass
class SwapStats:
    """What the bench wrote over `swapper`'s file in one swap scenario, and what the daemon made of it."""

    rewrites: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)  # swapper's reload outcomes, first write to restored
    restore_s: float = 0.0  # from the window's end until the original file was serving again


class Swapper:
    """Writes a scenario's build over `swapper`'s file during the window, then puts echo.wat back.

    A hostile build (start/_initialize/mm_health looping) is written again every SWAP_EVERY_S; big modules are
    written one after the other, each as soon as the last one serves (each with a new salt: other bytes, so the
    compile cache never has it).
    """

    def __init__(self, site: Path, admin: Admin, build: str, big: BigModules) -> None:
        self.path = site / "swapper.wasm"
        self.admin = admin
        self.build = build
        self.big = big
        self.echo = wat2wasm("echo.wat")
        self.data = b"" if build == BIG else wat2wasm(build)
        self.stats = SwapStats()
        self.written_sha = ""
        self.next_at = 0.0
        self.before: dict[str, int] = {}

    def begin(self) -> None:
        self.before = self.admin.reloads("swapper")
        self._write()

    def _write(self) -> None:
        if self.build == BIG:
            self.written_sha = self.big.write(self.path)
            self.next_at = time.monotonic() + 0.2  # when to look whether it serves
        else:
            replace_atomically(self.path, self.data)
            self.next_at = time.monotonic() + SWAP_EVERY_S
        self.stats.rewrites += 1

    def tick(self) -> None:
        """Called while the window lasts: write again when it is time."""
        if time.monotonic() < self.next_at:
            return
        if self.build != BIG or self.admin.service("swapper")["sha256"] == self.written_sha:
            self._write()  # a big module is written again once the last one serves
        else:
            self.next_at = time.monotonic() + 0.2

    def restore(self) -> None:
        """Put echo.wat back and wait until it serves again, every reload before it decided."""
        start, written_at = time.monotonic(), time.time()
        replace_atomically(self.path, self.echo)
        echo_sha = hashlib.sha256(self.echo).hexdigest()
        limit = BIG_SWAP_TIMEOUT_S if self.build == BIG else QUIET_TIMEOUT_S
        while True:
            entry = self.admin.service("swapper")
            last = entry.get("last_reload") or {}
            if entry["sha256"] == echo_sha and last.get("at", 0) >= written_at:
                break
            if time.monotonic() - start > limit:
                print(f"  warning: swapper's original file was not serving {limit:g} s after it was put back")
                break
            time.sleep(0.05)
        self.stats.restore_s = time.monotonic() - start
        after = self.admin.reloads("swapper")
        self.stats.outcomes = {k: v - self.before.get(k, 0) for k, v in after.items() if v - self.before.get(k, 0)}


def replace_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` by a rename, so the watcher never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class BigModules:
    """benches/_bigmodule.py's modules for swap-big, each with a new salt, and how long one takes to be swapped in."""

    def __init__(self, quick: bool) -> None:
        self.functions = BIG_FUNCTIONS_QUICK if quick else BIG_FUNCTIONS_FULL
        self.mib = BIG_MIB_QUICK if quick else BIG_MIB_FULL
        self.salt = 0
        self.swap_s = 0.0  # set by calibrate()
        self.size = 0

    def write(self, path: Path) -> str:
        """Write the next module over `path`; its sha256."""
        self.salt += 1
        write_big_module(path, functions=self.functions, megabytes=self.mib, salt=self.salt)
        data = path.read_bytes()
        self.size = len(data)
        return hashlib.sha256(data).hexdigest()

    def calibrate(self, site: Path, admin: Admin) -> float:
        """Swap one in and back out (unloaded), timing written -> serving; the seconds of the first."""
        path = site / "swapper.wasm"
        start = time.monotonic()
        sha = self.write(path)
        while admin.service("swapper")["sha256"] != sha:
            if time.monotonic() - start > BIG_SWAP_TIMEOUT_S:
                raise h.HarnessError(f"a big module was not serving {BIG_SWAP_TIMEOUT_S:g} s after it was written")
            time.sleep(0.05)
        self.swap_s = time.monotonic() - start
        return self.swap_s

    def window_s(self, duration_s: int) -> int:
        """swap-big's window: long enough for at least one whole swap (compile, start, swap) inside it."""
        return max(duration_s, math.ceil(self.swap_s * 1.25) + 1)


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


def verify(port: int, admin: Admin, site: Path, big: BigModules, repeats: int) -> dict[str, Any]:
    """Check that each neighbour misbehaves as its scenario says and the healthy service echoes; time one big
    module's swap (for swap-big's window).

    The new scenarios' services are only checked to echo: a long run here would be their first, and spin1, spin5,
    sends, bomb and log measure what a service's first long runs do (until 2026-12 a service whose run took over
    10 ms was moved off the event loop from then on). What their neighbours got is in the neighbours' table.

    Raises:
        HarnessError: something answered otherwise.
    """
    body = random.Random(0x150).randbytes(64)
    checks: list[tuple[str, bool, str]] = []
    status, data, _ = post(port, "/healthy", body)
    checks.append(("healthy echoes", (status, data) == (200, body), f"{status} {data[:80]!r}"))
    fresh = [f"/spin{seconds}/{repeat}" for repeat in range(repeats) for seconds in (1, 5)]
    for path in ("/hostile", "/supervised", "/swapper", "/sender", "/spammer", "/bomber", "/logger", *fresh):
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
    swap_s = big.calibrate(site, admin)
    status, data, _ = post(port, "/swapper", b"big")
    if (status, data) != (200, b"big"):
        raise h.HarnessError(f"verification failed: the big module does not echo: {status} {data[:80]!r}")
    restore = Swapper(site, admin, BIG, big)
    restore.restore()
    admin.wait_quiet()
    return {"spin_ms": spin_s * 1000, "flood_counts": counts, "big_swap_s": swap_s, "big_bytes": big.size}


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


SENTINEL_SCRIPT: Final = r"""
# bench_isolation's sentinel: one healthy request at a time, each waited for however long it takes.
import json, socket, sys, time
host, port, duration, interval, wait = sys.argv[1], int(sys.argv[2]), *map(float, sys.argv[3:6])
body = b"bench_isolation sentinel"
request = b"POST /healthy HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n%s" % (host.encode(), len(body), body)
latencies, failed, sock, buf = [], 0, None, b""
end = time.monotonic() + duration
while time.monotonic() < end:
    start = time.perf_counter()
    try:
        if sock is None:
            sock, buf = socket.create_connection((host, port), timeout=wait), b""
        sock.sendall(request)
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        head, buf = buf.split(b"\r\n\r\n", 1)
        length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:"))
        while len(buf) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        answer, buf = buf[:length], buf[length:]
        if not head.startswith(b"HTTP/1.1 200 ") or answer != body:
            failed += 1
    except (OSError, ValueError, StopIteration):
        failed += 1
        if sock is not None:
            sock.close()
        sock = None
    latencies.append(time.perf_counter() - start)
    time.sleep(interval)
latencies.sort()
p99 = latencies[max(0, -(-99 * len(latencies) // 100) - 1)] if latencies else 0.0
print(json.dumps({"requests": len(latencies), "failed": failed, "max_us": (latencies[-1] if latencies else 0.0) * 1e6,
                  "p99_us": p99 * 1e6}))
"""


@dataclass(frozen=True, slots=True)
class SentinelResult:
    """The sentinel's requests: one at a time, every SENTINEL_INTERVAL_S, each waited for (up to SENTINEL_WAIT_S)."""

    requests: int
    failed: int
    max_us: float
    p99_us: float


def start_sentinel(python: str, port: int, duration_s: float) -> subprocess.Popen[str]:
    argv = [python, "-c", SENTINEL_SCRIPT, h.HOST, str(port), str(duration_s), str(SENTINEL_INTERVAL_S),
            str(SENTINEL_WAIT_S)]  # fmt: skip
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=h._die_with_parent)  # fmt: skip


def finish_sentinel(proc: subprocess.Popen[str], duration_s: int) -> SentinelResult:
    try:
        stdout, stderr = proc.communicate(timeout=duration_s + SENTINEL_WAIT_S + 30)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.communicate()
        raise h.HarnessError("the sentinel did not finish") from exc
    if proc.returncode != 0 or not stdout.strip():
        raise h.HarnessError(f"the sentinel exited with code {proc.returncode}: {stderr.strip()[-2000:]}")
    return SentinelResult(**json.loads(stdout.strip().splitlines()[-1]))


@dataclass(frozen=True, slots=True)
class Run:
    """One scenario in one repeat."""

    repeat: int
    scenario: str
    healthy: h.WrkResult
    neighbour: NeighbourResult | None
    daemon_cpu_s: float
    machine_busy: float
    swap: SwapStats | None = None
    quiet_s: float = 0.0  # how long the daemon took to be quiet after the window (and the restore)
    sentinel: SentinelResult | None = None

    @property
    def daemon_cores(self) -> float:
        return self.daemon_cpu_s / self.healthy.duration_s

    # The healthy figures the bars judge. wrk drops the requests still unanswered when its run ends, so a daemon
    # that holds its loop past the window would look fine to it: the sentinel's requests are each waited for.
    @property
    def p50_us(self) -> float:
        return self.healthy.p50_us if self.healthy.requests else math.inf

    @property
    def p99_us(self) -> float:
        """wrk's p99; infinite when wrk got no answer at all."""
        return self.healthy.p99_us if self.healthy.requests else math.inf

    @property
    def max_us(self) -> float:
        """The longest healthy request: wrk's or the sentinel's."""
        return max(self.healthy.max_us, self.sentinel.max_us if self.sentinel is not None else 0.0)

    @property
    def failed(self) -> int:
        """Healthy requests that failed: wrk's errors (socket, 2 s timeout, HTTP status) and the sentinel's."""
        return self.healthy.error_count + (self.sentinel.failed if self.sentinel is not None else 0)

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {"healthy_rps": self.healthy.rps, "daemon_cores": self.daemon_cores}


@dataclass(frozen=True, slots=True)
class Daemon:
    """The running daemon part 1 measures, and what its scenarios need beside it."""

    server: h.Server
    admin: Admin
    site: Path
    big: BigModules
    python: str


def start_wrk(url: str, duration_s: int) -> tuple[subprocess.Popen[str], list[str], Any]:
    """Start the healthy wrk (as harness.run_wrk runs it) without waiting for it."""
    argv = ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{duration_s}s", "--latency", "-s", str(SCRIPT), url]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=h._die_with_parent)  # fmt: skip
    return proc, argv, before


def finish_wrk(proc: subprocess.Popen[str], argv: list[str], before: Any, duration_s: int) -> h.WrkResult:
    """Wait for a wrk from start_wrk and parse its result line."""
    try:
        stdout, stderr = proc.communicate(timeout=duration_s + 30)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.communicate()
        raise h.HarnessError(f"wrk did not finish: {shlex.join(argv)}") from exc
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise h.HarnessError(f"wrk exited with code {proc.returncode}: {stderr.strip() or stdout.strip()}")
    return h._parse_wrk(stdout, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime))


def measure(daemon: Daemon, scenario: Scenario, repeat: int, duration_s: int, logs: Path) -> Run:
    """Start the neighbour (if any) or the first rewrite (swap scenarios), let it run RAMP_S, run the healthy wrk
    (rewriting meanwhile), stop the neighbour / put the original file back, wait until the daemon is quiet."""
    server = daemon.server
    healthy_url = f"http://{h.HOST}:{server.port}/healthy"
    neighbour: Neighbour | None = None
    swapper: Swapper | None = None
    window = daemon.big.window_s(duration_s) if scenario.swap == BIG else duration_s
    # The sentinel starts before the neighbour: a service's first long run (in the ramp) counts too.
    sentinel_proc = start_sentinel(daemon.python, server.port, RAMP_S + window)
    try:
        path = scenario.url_path(repeat)
        if path is not None:
            script = neighbour_script(scenario, logs)
            url = f"http://{h.HOST}:{server.port}{path}"
            neighbour = Neighbour(url, script, window + 30, logs / f"neighbour_{scenario.name}_{repeat}.log")
        if scenario.swap is not None:
            swapper = Swapper(daemon.site, daemon.admin, scenario.swap, daemon.big)
            swapper.begin()
        if neighbour is not None or swapper is not None:
            time.sleep(RAMP_S)
        if neighbour is not None:
            neighbour.check_alive()
        cpu0, busy0 = server.cpu_seconds(), h.machine_busy()
        proc, argv, before = start_wrk(healthy_url, window)
        while proc.poll() is None:
            if swapper is not None:
                swapper.tick()
            time.sleep(0.02)
        healthy = finish_wrk(proc, argv, before, window)
        cpu1, busy1 = server.cpu_seconds(), h.machine_busy()
        sentinel = finish_sentinel(sentinel_proc, window + 1)
        if neighbour is not None:
            neighbour.check_alive()
        result = neighbour.stop() if neighbour is not None else None
    finally:
        if neighbour is not None:
            neighbour.kill()
        if sentinel_proc.poll() is None:
            sentinel_proc.kill()
            sentinel_proc.communicate()
    server.check_alive()
    quiet_start = time.monotonic()
    if swapper is not None:
        swapper.restore()
    daemon.admin.wait_quiet()
    quiet_s = time.monotonic() - quiet_start
    time.sleep(SETTLE_S)
    busy = (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1])
    swap = swapper.stats if swapper is not None else None
    return Run(repeat, scenario.name, healthy, result, cpu1 - cpu0, busy, swap, quiet_s, sentinel)


def per_repeat_ratios(runs: list[Run], figure: str = "p99_us") -> dict[str, dict[int, float]]:
    """Each scenario's healthy `figure` (p50_us, p99_us, max_us) divided by the solo one of the same repeat."""
    solo = {r.repeat: getattr(r, figure) for r in runs if r.scenario == "solo"}
    ratios: dict[str, dict[int, float]] = {}
    for r in runs:
        if r.scenario != "solo" and r.repeat in solo:
            ratios.setdefault(r.scenario, {})[r.repeat] = getattr(r, figure) / solo[r.repeat]
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
        worst = max((r.max_us for r in mine), default=float("nan"))
        ratio = list(ratios.get(name, {}).values())
        rows.append([
            name, h.spread(rps), h.spread(p50), h.spread(p99), h.spread(mx),
            "1 (reference)" if name == "solo" else h.spread(ratio, 2),
            h.fmt(h.median([r.daemon_cores for r in mine]), 2), h.fmt(h.median([r.machine_busy for r in mine]), 2),
            str(errors),
        ])  # fmt: skip
        summary[name] = {"rps": h.median(rps), "p50_us": h.median(p50), "p99_us": h.median(p99),
                         "max_us": h.median(mx), "max_us_worst": worst, "failed": sum(r.failed for r in mine),
                         "p99_over_solo": h.median(ratio) if ratio else None,
                         "p99_over_solo_per_repeat": ratio, "errors": errors,
                         "quiet_s": h.median([r.quiet_s for r in mine])}  # fmt: skip
    print(f"## healthy service under wrk -t{THREADS} -c{CONNECTIONS}, POST 64 bytes (median [min, max] over repeats)\n")
    headers = ["scenario", "healthy req/s", "p50 µs", "p99 µs", "max µs", "p99 / solo p99", "daemon cores",
               "machine busy", "errors"]  # fmt: skip
    print(h.table(headers, rows))
    print(
        "\np99 / solo p99 is taken per repeat against that repeat's solo run, then the median. 'daemon cores' is the\n"
        "daemon's CPU over the run divided by its length (1.0: its one event-loop thread never idled); 'machine\n"
        "busy' is the share of all CPUs busy (daemon, both wrk processes, anything else)."
    )

    by_figure = {figure: per_repeat_ratios(runs, figure) for figure in ("p50_us", "p99_us", "max_us")}
    print("\n## healthy latency against solo, same repeat (median over repeats; ratios [min, max])\n")
    l_rows = []
    for name in scenarios:
        mine = [r for r in runs if r.scenario == name]
        row = [name]
        for figure in ("p50_us", "p99_us", "max_us"):
            row.append(h.fmt(h.median([getattr(r, figure) for r in mine])))
            values = list(by_figure[figure].get(name, {}).values())
            row.append("1" if name == "solo" else h.spread(values, 2))
        row += [
            str(sum(r.failed for r in mine)),
            h.fmt(max(r.max_us for r in mine) / 1000, 1),
            h.fmt(max(r.sentinel.max_us if r.sentinel else 0.0 for r in mine) / 1000, 1),
            h.fmt(h.median([r.quiet_s for r in mine]), 1),
        ]
        if name != "solo":
            summary[name]["p50_over_solo"] = h.median(list(by_figure["p50_us"].get(name, {}).values()))
            summary[name]["max_over_solo"] = h.median(list(by_figure["max_us"].get(name, {}).values()))
        l_rows.append(row)
    headers = ["scenario", "p50 µs", "x solo", "p99 µs", "x solo", "max µs", "x solo", "failed", "worst max ms",
               "sentinel max ms", "quiet after s"]  # fmt: skip
    print(h.table(headers, l_rows))
    print(
        "\n'failed': the healthy wrk's socket errors, timeouts (2 s) and HTTP errors, summed over repeats;\n"
        "'worst max': the largest healthy max of any repeat; 'quiet after': how long after the window the daemon\n"
        "still had a guest running or work queued (after a swap scenario: until the original file served again)."
    )
    repeats = sorted({r.repeat for r in runs})
    if len(repeats) > 1:
        print("\n## p99 / solo p99 per repeat\n")
        solo = {r.repeat: r.p99_us for r in runs if r.scenario == "solo"}
        ratio_rows = [["solo p99 µs", *(h.fmt(solo.get(rep, float("nan"))) for rep in repeats)]]
        ratio_rows += [[name, *(h.fmt(ratios[name].get(rep, float("nan")), 2) for rep in repeats)]
                       for name in scenarios if name in ratios]  # fmt: skip
        print(h.table(["scenario", *(f"repeat {rep}" for rep in repeats)], ratio_rows))

    swaps = [name for name in scenarios if any(r.swap is not None for r in runs if r.scenario == name)]
    if swaps:
        print("\n## hot swaps: what the bench wrote over swapper's file, and what the daemon made of it (sums)\n")
        s_rows = []
        for name in swaps:
            mine = [r for r in runs if r.scenario == name and r.swap is not None]
            outcomes: dict[str, int] = {}
            for r in mine:
                assert r.swap is not None
                for outcome, n in r.swap.outcomes.items():
                    outcomes[outcome] = outcomes.get(outcome, 0) + n
            rewrites = sum(r.swap.rewrites for r in mine if r.swap is not None)
            restore = h.median([r.swap.restore_s for r in mine if r.swap is not None])
            window = h.median([r.healthy.duration_s for r in mine])
            s_rows.append([name, SCENARIO_SPECS[name].what, f"{rewrites:,}",
                           ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())) or "none",
                           h.fmt(window, 1), h.fmt(restore, 1)])  # fmt: skip
            summary[name]["swaps"] = {"rewrites": rewrites, "outcomes": outcomes, "restore_s": restore}
        print(h.table(["scenario", "build", "rewrites", "reload outcomes (to restored)", "window s",
                       "restored after s"], s_rows))  # fmt: skip
        print(
            "\n(the reload outcomes include putting echo.wat back: `unchanged` when the hostile build was never\n"
            "swapped in, `swapped` after a big module)"
        )

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
        base, size = _memory_data(ctx, mem_addr), _memory_data_size(ctx, mem_addr)
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
        """engine.py's `Instance._install_deadline` as it was before guests were preempted (now it yields at each
        tick instead of letting the guest continue)."""
        monotonic = time.monotonic

        def on_deadline(ctx: int, env: int, delta: Any, kind: Any) -> int:
            if monotonic() > self.deadline:
                self.interrupted = True
                return _new_error("micromono: call deadline exceeded")
            delta[0] = 1
            kind[0] = _DEADLINE_CONTINUE
            return 0

        self._deadline_cb = _DEADLINE_CALLBACK(on_deadline)
        _ffi.wasmtime_store_epoch_deadline_callback(
            self.store.ptr(),
            ctypes.cast(self._deadline_cb, _b._wasmtime_store_epoch_deadline_callback.argtypes[1]),
            None,
            _NO_FINALIZER,
        )
        self.store.set_epoch_deadline(1)

    def timing(self, variant: str, n: int, payload: bytes) -> float:
        """Seconds per call over `n` calls (after n/10 untimed ones), the ticker running if this guest has epochs."""
        loop = {"none": _calls_plain, "epoch": _calls_plain, "shipped": _calls_with_deadline}[variant]
        ticker = _PlainTicker(self.engine, mm_engine.EPOCH_TICK_SECONDS) if self.epochs else None
        try:
            self.deadline = time.monotonic() + 3600 if variant == "epoch" else float("inf")
            loop(self, max(1, n // 10), payload)
            return timed(partial(loop, self, n, payload)) / n
        finally:
            if ticker is not None:
                ticker.stop()
            self.deadline = float("inf")


class _PlainTicker:
    """An epoch ticker that advances the engine's epoch (and engine.py's CLOCK) every `period` seconds, always: what
    engine.py's ticker did before guests were preempted (it now sleeps while no guest entry asks it to tick)."""

    def __init__(self, engine: wasmtime.Engine, period: float) -> None:
        self._engine = engine
        self._period = period
        self._stopped = threading.Event()
        mm_engine.CLOCK.now = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="bench-epoch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        increment = self._engine.increment_epoch
        monotonic = time.monotonic
        clock = mm_engine.CLOCK
        while not self._stopped.wait(self._period):
            clock.now = monotonic()
            increment()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


def _calls_plain(g: RawGuest, n: int, payload: bytes) -> None:
    """`n` calls of mm_handle(KIND_CALL, len), as Instance.invoke makes them, without touching the deadline."""
    view, i32, i64, args, call, trap = g.view, g.i32, g.i64, g.args, _call_unchecked, g.trap_word
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
    view, i32, i64, args, call, trap = g.view, g.i32, g.i64, g.args, _call_unchecked, g.trap_word
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
    does. A fresh Engine per measurement, so its ticker runs only while it is measured; on the pure path, as this row
    has always been measured (`--compiled` is the daemon's)."""
    with mm_engine.Engine(_NoHost(), cache_dir=None, compiled=False) as engine:
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
    preemptible = h.median([(m - s) * 1e9 for m, s in zip(call.times["micromono"], call.times["shipped"], strict=True)])
    summary["call"]["preemptible_entry_ns"] = preemptible
    print(f"  call-heavy: micromono's preemptible entry (an async call polled once, Instance.invoke) costs "
          f"{preemptible:+,.0f} ns per call over the synchronous raw call with the same deadline (shipped): the price "
          "of preemption plus Instance.invoke's own Python (information, not a bar; bench_call has the call between "
          "services).")  # fmt: skip
    return summary


# --- main ------------------------------------------------------------------------------------------------------


def make_bars(daemon: dict[str, Any], epoch: dict[str, Any], scenarios: list[str]) -> list[h.Bar]:
    """For each scenario but solo: no failed healthy request, healthy p99 / solo p99 <= 3x (median over repeats),
    healthy max <= 50 ms (the worst repeat). Then the epoch mechanism's per-call cost (call-heavy guest, as shipped)
    <= 5% over none. The loop-heavy figure is printed beside it, not as a bar: it is a cost per loop iteration
    (wasmtime's check on every back-edge, the same for any runtime built on wasmtime epochs), not per call."""
    bars = []
    for name in scenarios:
        if name == "solo":
            continue
        figures = daemon.get(name, {})
        worst = figures.get("max_us_worst")
        bars += [
            h.Bar(f"{name}: healthy requests failed", figures.get("failed"), BAR_FAILED, False),
            h.Bar(f"{name}: healthy p99 / solo p99", figures.get("p99_over_solo"), BAR_RATIO, False, "x"),
            h.Bar(f"{name}: healthy max", None if worst is None else worst / 1000, BAR_MAX_MS, False, " ms"),
        ]
    measured = epoch["call"]["shipped"]["pct_vs_none"] if "call" in epoch else None
    bars.append(h.Bar("epoch checks and a per-call deadline vs none (call-heavy)", measured, BAR_EPOCH_PCT, False, "%"))
    return bars


def print_verdicts(bars: list[h.Bar], scenarios: list[str]) -> None:
    """One PASS/FAIL line per scenario: its three bars together."""
    print(f"\n## verdict per scenario (failed <= {BAR_FAILED}, p99 <= {BAR_RATIO:g}x solo, max <= {BAR_MAX_MS:g} ms)\n")
    for name in scenarios:
        mine = [b for b in bars if b.name.startswith(f"{name}: ")]
        if not mine:
            continue
        verdicts = {b.verdict for b in mine}
        verdict = "FAIL" if "FAIL" in verdicts else "n/a" if verdicts == {"n/a"} else "PASS"
        figures = ", ".join(f"{b.name.split(': ', 1)[1]} {b.row()[1]}" for b in mine)
        print(f"{verdict:4}  {name:11}  {figures}")


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
        help='the daemon\'s `cpu` setting (default "auto": the daemon on one CPU; "any": unpinned; or a CPU number)',
    )  # fmt: skip
    parser.add_argument(
        "--compiled", action="store_true", help="run the daemon on the compiled path (else MICROMONO_PURE=1)"
    )
    parser.add_argument(
        "--slice", type=float, metavar="SECONDS", help="the daemon's `slice` setting (default: the daemon's default)"
    )
    parser.add_argument(
        "--scenarios", metavar="LIST", type=parse_scenarios, default=list(SCENARIOS),
        help=f"comma-separated part-1 scenarios to run, solo always among them (default: all of {','.join(SCENARIOS)})",
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


def parse_scenarios(text: str) -> list[str]:
    """The scenarios named in `text`, in the bench's order, solo added; argparse reports a bad name."""
    names = {name.strip() for name in text.split(",") if name.strip()}
    unknown = sorted(names - set(SCENARIOS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(SCENARIOS)}, got {text!r}")
    return [name for name in SCENARIOS if name in names or name == "solo"]


def run_daemon_part(args: argparse.Namespace, tmp: Path) -> tuple[list[Run], list[SpinProbe], dict[str, Any]]:
    """Start the daemon, verify it, warm it up, run every scenario in every repeat and then the spin probe, stop
    the daemon (by its PID)."""
    site, logs = tmp / "site", tmp / "logs"
    site.mkdir()
    logs.mkdir()
    manifest = write_manifest(site, args.cpu, args.repeats, args.slice)
    scenarios: list[str] = args.scenarios
    runs: list[Run] = []
    probes: list[SpinProbe] = []
    metrics_port: list[int] = []
    big = BigModules(args.quick)
    with h.Server.start(
        "micromono", partial(daemon_argv, args.python, manifest, metrics_port, args.compiled), logs
    ) as server:
        daemon = Daemon(server, Admin(metrics_port[0]), site, big, args.python)
        checked = verify(server.port, daemon.admin, site, big, args.repeats)
        print(f"  daemon pid {server.proc.pid} on port {server.port}, admin on {metrics_port[0]}; verified (a spin "
              f"answered 504 after {checked['spin_ms']:.1f} ms; a flood request: {checked['flood_counts']}; a "
              f"{checked['big_bytes'] / (1 << 20):.0f} MiB module with {big.functions:,} functions served "
              f"{checked['big_swap_s']:.1f} s after it was written, so swap-big's window is "
              f"{big.window_s(args.duration)} s)")  # fmt: skip
        h.run_wrk(f"http://{h.HOST}:{server.port}/healthy", threads=THREADS, connections=CONNECTIONS,
                  duration_s=WARMUP_S, script=SCRIPT)  # fmt: skip
        for repeat in range(args.repeats):
            shift = repeat % len(scenarios)
            for name in scenarios[shift:] + scenarios[:shift]:
                run = measure(daemon, SCENARIO_SPECS[name], repeat, args.duration, logs)
                runs.append(run)
                n = run.neighbour
                extra = "" if n is None else f"; neighbour {n.requests:,} requests {n.statuses}"
                if run.swap is not None:
                    extra = f"; {run.swap.rewrites} rewrites, reloads {run.swap.outcomes}"
                print(f"  repeat {repeat} {name:11} healthy {run.healthy.rps:9,.0f} req/s  p50 "
                      f"{run.healthy.p50_us:8,.0f} µs  p99 {run.p99_us:10,.0f} µs  max "
                      f"{run.max_us:10,.0f} µs  failed {run.failed}{extra}")  # fmt: skip
            if "spin" in scenarios:
                probe = run_spin_probe(server, repeat, args.duration, logs)
                probes.append(probe)
                firsts = ", ".join(h.fmt(v / 1000) for v in sorted(probe.first_answers_us))
                print(f"  repeat {repeat} spin probe: first answers {firsts} ms; {len(probe.steady_us):,} later "
                      f"requests, p99 {percentile(probe.steady_us, 99) / 1000:,.1f} ms")  # fmt: skip
        server.check_alive()
        stuck = sorted(daemon.admin.stuck)
    print()
    summary = print_daemon_results(runs, scenarios)
    summary["stuck_mailboxes"] = stuck
    if stuck:
        print(f"\nWARNING: queued work that nothing ran was left in the mailboxes of: {', '.join(stuck)}")
    if probes:
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
        "scenarios": ",".join(args.scenarios),
        "repeats": args.repeats,
        "duration_s": args.duration,
        "healthy": f"wrk -t{THREADS} -c{CONNECTIONS} POST 64 bytes",
        "neighbour": f"wrk -t1 -c{NEIGHBOUR_CONNECTIONS} back to back",
        "call_timeout_ms": CALL_TIMEOUT_S * 1000,
        "epoch_tick_ms": mm_engine.EPOCH_TICK_SECONDS * 1000,
        "epoch_rounds": args.rounds,
        "epoch_blocks_per_round": blocks,
        "daemon_cpu": args.cpu,
        "daemon_slice": args.slice,
        "daemon_compiled": args.compiled,
        "quick": args.quick,
    }
    report = h.Report("bench_isolation", params, h.versions(args.python))
    h.print_preamble("bench_isolation: a healthy service beside misbehaving neighbours; the cost of epochs",
                     report.versions, params)  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="bench_isolation-") as tmp:
        try:
            runs, probes, daemon_summary = run_daemon_part(args, Path(tmp))
            print("\n`spin`'s service spun for the first time in the verification step (call_timeout "
                  f"{CALL_TIMEOUT_S * 1000:g} ms); spin1 and spin5 measure a service's")  # fmt: skip
            print("first spins (a fresh service in each repeat), at the default call_timeout of 1 s and at 5 s.\n")
            guests = measure_epochs(args.rounds, blocks, args.quick, Path(tmp))
        except (h.HarnessError, OSError, wasmtime.WasmtimeError) as exc:
            print(f"\nbench_isolation failed: {exc}", file=sys.stderr)
            kept = Path(tempfile.mkdtemp(prefix="bench_isolation-logs-"))
            shutil.copytree(Path(tmp) / "logs", kept, dirs_exist_ok=True)
            print(f"the daemon's and the clients' logs are kept in {kept}", file=sys.stderr)
            return 1
    print()
    epoch_summary = print_epoch_results(guests, args.rounds, blocks)
    report.samples = (
        [r.as_json() for r in runs]
        + [asdict(p) for p in probes]
        + [{"epoch_guest": g.name, "label": g.label, "work": g.work, "seconds_per_call": g.times} for g in guests]
    )
    report.summary = {"scenarios": daemon_summary, "epoch": epoch_summary}
    report.bars = make_bars(daemon_summary, epoch_summary, args.scenarios)
    print("\n## bars (reported, not asserted)\n")
    print(h.bars_table(report.bars))
    print_verdicts(report.bars, args.scenarios)
    if any(r.failed for r in runs):
        print("\nWARNING: some healthy runs had failed requests (wrk errors: see 'failed'); their latencies count\n"
              "only the requests that were answered.")  # fmt: skip
    print("\nloadavg at end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    if args.json:
        report.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
