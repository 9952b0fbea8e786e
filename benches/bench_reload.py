"""bench_reload: how fast a hot swap reaches callers, and what it costs the calls running meanwhile.

One daemon serves one stateful service (`instances = 1`) whose module is a WAT file in a temp directory. A client
sends `GET /svc` without pause on one keep-alive connection for the whole run; every reply is a 2-byte version tag
and a u32 counter the guest increments per request and hands to its next version (mm_snapshot / mm_restore).

1. Steady phase: the client runs with no swap (after a short warm-up).
2. Swap phase, right after it in the same run: N times, write the next version of the file (a new tag, so a new
   sha256), alternately by atomic rename (temp file + os.replace) and in place (truncate + write), note when the
   write ended, wait until the client gets its first reply from the new version, then wait ~50 ms.

Measured: landed -> first answer (from the end of the write to the end of the first reply carrying the new tag);
request latency in the steady phase and in the swap phase; every failed call: a non-200, a connection error, a
malformed body, a counter that does not go up by exactly 1 (a request lost or counted twice across a swap) or a
tag older than one already seen. The daemon's JSON log splits each swap into detection, reload and first answer.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import hashlib
import json
import math
import os
import string
import struct
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final

import _harness as h

SWAPS_FULL, SWAPS_QUICK = 100, 10
STEADY_FULL_S, STEADY_QUICK_S = 3.0, 1.0
WARMUP_FULL_S, WARMUP_QUICK_S = 0.5, 0.2
GAP_S: Final = 0.05  # pause after the new version answered, before the next write
SWAP_TIMEOUT_S: Final = 5.0  # a version not answering within this is a failed swap
REQUEST_TIMEOUT_S: Final = 5.0
READY_TIMEOUT_S: Final = h.START_TIMEOUT_S
METHODS: Final = ("rename", "in_place")
PLACEMENTS: Final = ("free", "same", "split")
TAG_ALPHABET: Final = string.ascii_letters + string.digits
MAX_SWAPS: Final = len(TAG_ALPHABET) ** 2 - 1  # every version gets its own tag
REQUEST: Final = b"GET /svc HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

# Bars (shown as PASS/FAIL, never asserted).
BAR_P50_MS: Final = 100.0
BAR_P99_MS: Final = 300.0
BAR_RATIO: Final = 2.0
BAR_FAILED: Final = 0.0


# --- the guest ------------------------------------------------------------------------------------------------


def tag_of(version: int) -> str:
    """The 2-character tag of version `version` (0 is the one the daemon starts with)."""
    return TAG_ALPHABET[version // len(TAG_ALPHABET)] + TAG_ALPHABET[version % len(TAG_ALPHABET)]


def guest(tag: str, version: int) -> str:
    """A versioned guest: each HTTP request increments a counter; the reply is `tag` then the count (u32 LE).

    mm_snapshot / mm_restore hand the counter to the next version, so it goes up by one per request across swaps.
    """
    assert len(tag) == 2 and tag.isascii()
    return f"""\
;; bench_reload guest, version {version}
(module
  (memory (export "memory") 2)
  (global $count (mut i32) (i32.const 0))
  (data (i32.const 512) "\\c8\\00\\00\\00{tag}")
  (func (export "mm_abi_version") (result i32) (i32.const 2))
  (func (export "mm_inbox") (param i32) (result i32) (i32.const 1024))
  (func (export "mm_handle") (param $kind i32) (param $len i32) (result i64)
    (global.set $count (i32.add (global.get $count) (i32.const 1)))
    (i32.store (i32.const 518) (global.get $count))
    (i64.or (i64.shl (i64.const 512) (i64.const 32)) (i64.const 10)))
  (func (export "mm_snapshot") (result i64)
    (i32.store (i32.const 2048) (global.get $count))
    (i64.or (i64.shl (i64.const 2048) (i64.const 32)) (i64.const 4)))
  (func (export "mm_restore") (param $n i32) (result i32)
    (if (i32.ne (local.get $n) (i32.const 4)) (then (return (i32.const 1))))
    (global.set $count (i32.load (i32.const 1024)))
    (i32.const 0))
)
"""


def write_manifest(site: Path, cache: Path, wasm: Path) -> Path:
    """services.toml in `site`: one service `svc` on /svc, one instance, JSON log, the watch on."""
    path = site / "services.toml"
    path.write_text(
        f"""\
version = 1

[daemon]
listen = "127.0.0.1:0"
metrics_listen = ""
cache_dir = {json.dumps(str(cache))}
log_format = "json"
watch = true

[services.svc]
wasm = {json.dumps(str(wasm))}
routes = ["/svc"]
instances = 1
"""
    )
    return path


def replace_atomically(path: Path, text: str) -> None:
    """Write a temp file in the same directory, then rename it over `path` (what build tools do)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_in_place(path: Path, text: str) -> None:
    """Truncate `path` and write the new text into the same inode (what some editors do)."""
    with open(path, "r+") as fh:
        fh.truncate(0)
        fh.write(text)


# --- the client -----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Failure:
    """One failed call."""

    at_ns: int  # perf_counter_ns when it was seen
    kind: str  # status, connection, body, count, tag
    detail: str


@dataclass
class Client:
    """Sends GET /svc back to back on one keep-alive connection, and checks every reply.

    It knows the tags written so far, in order: a reply with an unknown tag, or one older than a tag already seen,
    is a failure. `first_seen[tag]` is when the first reply with that tag ended; `waiters[tag]` is set then.
    """

    port: int
    starts_ns: list[int] = field(default_factory=list)  # when each request was sent
    latencies_ns: list[int] = field(default_factory=list)  # send to end of the reply, per completed request
    failures: list[Failure] = field(default_factory=list)
    order: dict[str, int] = field(default_factory=lambda: {tag_of(0): 0})
    first_seen: dict[str, int] = field(default_factory=dict)
    waiters: dict[str, asyncio.Event] = field(default_factory=dict)
    newest: int = 0  # index in `order` of the newest tag seen
    expected_count: int = 1  # nothing else calls /svc, so the first reply counts 1
    stopping: bool = False
    reconnects: int = 0

    def expect(self, tag: str) -> asyncio.Event:
        """Register the next version's tag (before its file is written); the event is set on its first reply."""
        self.order[tag] = len(self.order)
        event = self.waiters[tag] = asyncio.Event()
        return event

    async def run(self) -> None:
        """Call until `stopping`; reconnect after a connection error (each counts as a failure)."""
        reader, writer = await asyncio.open_connection(h.HOST, self.port)
        try:
            while not self.stopping:
                start = time.perf_counter_ns()
                try:
                    async with asyncio.timeout(REQUEST_TIMEOUT_S):
                        writer.write(REQUEST)
                        status, body, keep = await read_response(reader)
                except (OSError, EOFError, TimeoutError, ValueError, asyncio.LimitOverrunError) as exc:
                    self.failures.append(Failure(time.perf_counter_ns(), "connection", repr(exc)))
                    writer.close()
                    reader, writer = await self.reconnect()
                    continue
                end = time.perf_counter_ns()
                self.starts_ns.append(start)
                self.latencies_ns.append(end - start)
                self.check(end, status, body)
                if not keep:
                    writer.close()
                    reader, writer = await self.reconnect()
        finally:
            writer.close()

    async def reconnect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A new connection; HarnessError if none can be made within REQUEST_TIMEOUT_S."""
        self.reconnects += 1
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        while True:
            try:
                return await asyncio.open_connection(h.HOST, self.port)
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise h.HarnessError(f"cannot reconnect to the daemon: {exc}") from exc
                await asyncio.sleep(0.01)

    def check(self, end_ns: int, status: int, body: bytes) -> None:
        """Record a failure if the reply is not 200 + known tag (not older than one seen) + the next count."""
        if status != 200:
            self.failures.append(Failure(end_ns, "status", f"{status} {body[:100]!r}"))
            return
        if len(body) != 6:
            self.failures.append(Failure(end_ns, "body", f"{len(body)} bytes: {body[:100]!r}"))
            return
        tag = body[:2].decode("latin-1")
        (count,) = struct.unpack("<I", body[2:6])
        index = self.order.get(tag)
        if index is None:
            self.failures.append(Failure(end_ns, "tag", f"unknown tag {tag!r}"))
            return
        if index < self.newest:
            self.failures.append(Failure(end_ns, "tag", f"tag {tag!r} after the newer {tag_of(self.newest)!r}"))
        elif index > self.newest:
            self.newest = index
        if count != self.expected_count:
            self.failures.append(Failure(end_ns, "count", f"count {count}, expected {self.expected_count}"))
        self.expected_count = count + 1
        if tag not in self.first_seen:
            self.first_seen[tag] = end_ns
            waiter = self.waiters.get(tag)
            if waiter is not None:
                waiter.set()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, keep-alive) of one HTTP/1.1 response with a content-length."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    keep = True
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            keep = False
    body = await reader.readexactly(length) if length else b""
    return status, body, keep


# --- the swaps ------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Swap:
    """One version written and (unless it timed out) answered."""

    index: int  # 1..N
    tag: str
    method: str  # rename or in_place
    sha256_prefix: str
    landed_ns: int  # perf_counter_ns right after the write ended
    landed_wall_s: float  # time.time() at the same moment (to line up with the daemon's log)
    answered_ns: int | None  # end of the first reply with the new tag; None: timed out
    # From the daemon's log (None if no reload.swap.complete event names this version):
    swapped_wall_s: float | None = None  # when the daemon logged the swap
    reload_ms: float | None = None  # the daemon's own duration: stable-file wait, compile, start, hand-over

    @property
    def landed_to_answer_ms(self) -> float:
        """End of the write to end of the first reply from the new version (inf if it never answered)."""
        return math.inf if self.answered_ns is None else (self.answered_ns - self.landed_ns) / 1e6

    @property
    def detect_ms(self) -> float | None:
        """Landed to the start of the daemon's reload: the watcher (inotify + debounce) and the reload lock."""
        if self.swapped_wall_s is None or self.reload_ms is None:
            return None
        return (self.swapped_wall_s - self.landed_wall_s) * 1000 - self.reload_ms

    @property
    def after_swap_ms(self) -> float | None:
        """The daemon's swap to the end of the first reply from the new version (the request in flight)."""
        if self.swapped_wall_s is None or self.answered_ns is None:
            return None
        return self.landed_to_answer_ms - (self.swapped_wall_s - self.landed_wall_s) * 1000


async def swap_versions(client: Client, client_task: asyncio.Task[None], path: Path, n: int) -> list[Swap]:
    """Write versions 1..n, alternating rename and in-place writes, each time waiting for its first answer.

    Stops early (re-raising its error) if the client task ended, which it does only on an error."""
    swaps = []
    for index in range(1, n + 1):
        tag = tag_of(index)
        text = guest(tag, index)
        method = METHODS[(index - 1) % len(METHODS)]
        answered = client.expect(tag)
        (replace_atomically if method == "rename" else write_in_place)(path, text)
        landed_ns, landed_wall = time.perf_counter_ns(), time.time()
        if not await client_alive_until(client_task, answered, SWAP_TIMEOUT_S):
            print(f"  swap {index} ({method}, tag {tag}): no answer from the new version in {SWAP_TIMEOUT_S:g} s")
        sha = hashlib.sha256(text.encode()).hexdigest()[:12]
        swaps.append(Swap(index, tag, method, sha, landed_ns, landed_wall, client.first_seen.get(tag)))
        await client_alive_until(client_task, None, GAP_S)
    return swaps


async def client_alive_until(client_task: asyncio.Task[None], event: asyncio.Event | None, timeout_s: float) -> bool:
    """Wait until `event` is set (True) or `timeout_s` passed (False); raise at once if the client task ended,
    which it does only on an error (it cannot reconnect: the daemon is gone)."""
    waiter = asyncio.ensure_future(event.wait() if event is not None else asyncio.sleep(timeout_s + 1))
    try:
        done, _ = await asyncio.wait({waiter, client_task}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if client_task in done:
        client_task.result()
        raise h.HarnessError("the client stopped")
    return waiter in done


@dataclass
class Run:
    """Everything one run measured."""

    warmup_start_ns: int
    steady_start_ns: int
    swap_start_ns: int
    swap_end_ns: int
    after_end_ns: int
    client: Client
    swaps: list[Swap]


async def measure(port: int, path: Path, n: int, warmup_s: float, steady_s: float) -> Run:
    """Warm-up, steady phase, swap phase, steady phase again; the client runs through all four."""
    client = Client(port)
    warmup_start = time.perf_counter_ns()
    task = asyncio.create_task(client.run())
    try:
        await client_alive_until(task, None, warmup_s)
        steady_start = time.perf_counter_ns()
        await client_alive_until(task, None, steady_s)
        swap_start = time.perf_counter_ns()
        swaps = await swap_versions(client, task, path, n)
        swap_end = time.perf_counter_ns()
        await client_alive_until(task, None, steady_s)
        after_end = time.perf_counter_ns()
    finally:
        client.stopping = True
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S + 1):
                await task
        except TimeoutError:
            task.cancel()
    return Run(warmup_start, steady_start, swap_start, swap_end, after_end, client, swaps)


def run_loop(coro: Any) -> Any:
    """Run `coro` on uvloop if it is installed (a cheaper client), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


# --- the daemon -----------------------------------------------------------------------------------------------


def wait_ready(server: h.Server) -> None:
    """Wait until the daemon logged that its file watch is live and it is ready (it binds before that)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        server.check_alive()
        text = server.log_path.read_text(errors="replace")
        if '"daemon.ready"' in text:
            if '"reload.watch.started"' not in text:
                raise h.HarnessError(f"the daemon is ready but its file watch is not live:\n{server.log_tail()}")
            return
        time.sleep(0.02)
    raise h.HarnessError(f"the daemon did not log daemon.ready within {READY_TIMEOUT_S:g} s:\n{server.log_tail()}")


def log_events(log_path: Path) -> list[dict[str, Any]]:
    """The daemon's JSON log lines (other lines, such as a traceback, are skipped)."""
    events = []
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


def attach_log(swaps: list[Swap], events: list[dict[str, Any]]) -> dict[str, int]:
    """Fill each swap's daemon-side figures from its reload.swap.complete event; count reload events by name."""
    by_sha = {s.sha256_prefix: s for s in swaps}
    counts: dict[str, int] = {}
    for event in events:
        name = str(event.get("event", ""))
        if name.startswith("reload."):
            counts[name] = counts.get(name, 0) + 1
        if name == "reload.swap.complete" and event.get("service") == "svc":
            swap = by_sha.get(str(event.get("version", "")).split(".")[0])
            if swap is not None and swap.swapped_wall_s is None:
                swap.swapped_wall_s = datetime.datetime.fromisoformat(event["timestamp"]).timestamp()
                swap.reload_ms = float(event["duration_ms"])
    return counts


# --- statistics and output ------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile (q in 0..100) of the values: a value that occurred; NaN for none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def finite(value: float) -> float | None:
    """The value, or None if it is NaN or infinite (for the JSON)."""
    return value if math.isfinite(value) else None


def phase_latencies_us(run: Run) -> dict[str, list[float]]:
    """Request latencies (µs) by phase, each request placed by its send time.

    steady: after the warm-up, before the first write. swap phase: from the first write to after the last swap's
    pause. swap windows: the requests of the swap phase that overlap a swap's window from its write to its first
    new answer. steady after: as long as steady, right after the swap phase (shows whether the baseline drifted).
    """
    windows = sorted((s.landed_ns, s.answered_ns or s.landed_ns + int(SWAP_TIMEOUT_S * 1e9)) for s in run.swaps)
    out: dict[str, list[float]] = {"steady": [], "swap phase": [], "swap windows": [], "steady after": []}
    w = 0
    for start, latency in zip(run.client.starts_ns, run.client.latencies_ns, strict=True):
        us = latency / 1e3
        if run.steady_start_ns <= start < run.swap_start_ns:
            out["steady"].append(us)
        elif run.swap_start_ns <= start < run.swap_end_ns:
            out["swap phase"].append(us)
            while w < len(windows) and windows[w][1] < start:
                w += 1
            if w < len(windows) and start + latency >= windows[w][0]:
                out["swap windows"].append(us)
        elif run.swap_end_ns <= start < run.after_end_ns:
            out["steady after"].append(us)
    return out


def stat_row(label: str, values: list[float], digits: int = 1) -> list[str]:
    """label, count, p50, p99, max (NaN shown as n/a)."""
    return [
        label,
        f"{len(values):,}",
        h.fmt(percentile(values, 50), digits),
        h.fmt(percentile(values, 99), digits),
        h.fmt(max(values) if values else math.nan, digits),
    ]


def print_results(run: Run, counts: dict[str, int]) -> dict[str, Any]:
    """Print the tables; return the summary for the JSON (and the bars)."""
    swaps = run.swaps
    summary: dict[str, Any] = {}

    rows = []
    for label, chosen in (("all", swaps), *((m, [s for s in swaps if s.method == m]) for m in METHODS)):
        values = [s.landed_to_answer_ms for s in chosen]
        rows.append(stat_row(label, values, 1) + [str(sum(s.answered_ns is None for s in chosen))])
        summary[f"landed_to_answer_ms_{label}"] = {
            "swaps": len(values),
            "p50": finite(percentile(values, 50)),
            "p99": finite(percentile(values, 99)),
            "max": finite(max(values)) if values else None,
        }
    print("## landed -> first answer by the new version, ms (end of the write to end of the first new reply)\n")
    print(h.table(["swaps", "n", "p50 ms", "p99 ms", "max ms", "timed out"], rows))

    parts = {
        "detection (watcher, debounce)": [s.detect_ms for s in swaps],
        "reload (stable wait, compile, start, hand-over)": [s.reload_ms for s in swaps],
        "swap -> first new reply": [s.after_swap_ms for s in swaps],
    }
    print("\n## where the time goes, ms (from the daemon's JSON log; wall clocks, ~0.1 ms)\n")
    print(
        h.table(
            ["part", "n", "p50 ms", "p99 ms", "max ms"],
            [stat_row(label, [v for v in values if v is not None], 1) for label, values in parts.items()],
        )
    )
    summary["parts_ms_p50"] = {
        label: finite(percentile([v for v in values if v is not None], 50)) for label, values in parts.items()
    }

    phases = phase_latencies_us(run)
    print("\n## request latency, µs (steady, swap phase, steady again: back to back in one run, not interleaved)\n")
    print(h.table(["phase", "requests", "p50 µs", "p99 µs", "max µs"], [stat_row(k, v) for k, v in phases.items()]))
    steady_p99 = percentile(phases["steady"], 99)
    swap_p99 = percentile(phases["swap phase"], 99)
    windows_p99 = percentile(phases["swap windows"], 99)
    after_p99 = percentile(phases["steady after"], 99)
    summary["latency_us"] = {
        k: {"requests": len(v), "p50": finite(percentile(v, 50)), "p99": finite(percentile(v, 99))}
        for k, v in phases.items()
    }
    summary["swap_over_steady_p99"] = swap_p99 / steady_p99
    summary["windows_over_steady_p99"] = windows_p99 / steady_p99
    summary["swap_over_steady_after_p99"] = swap_p99 / after_p99
    print(
        f"\nswap phase p99 / steady p99 = {h.fmt(summary['swap_over_steady_p99'], 2)}x (the bar). Information: "
        f"swap windows p99 / steady p99 = {h.fmt(summary['windows_over_steady_p99'], 2)}x, "
        f"swap phase p99 / steady-after p99 = {h.fmt(summary['swap_over_steady_after_p99'], 2)}x"
    )

    failures = run.client.failures
    kinds = ("status", "connection", "body", "count", "tag")
    by_kind = {k: sum(f.kind == k for f in failures) for k in kinds}
    requests = len(run.client.latencies_ns)
    reload_rows = [[name.removeprefix("reload."), str(n)] for name, n in sorted(counts.items())]
    print("\n## calls and reloads\n")
    print(
        h.table(
            ["what", "count"],
            [
                ["requests completed (whole run)", f"{requests:,}"],
                ["failed calls", str(len(failures))],
                *[[f"  {kind}", str(n)] for kind, n in by_kind.items()],
                ["reconnections", str(run.client.reconnects)],
                ["swaps written", str(len(swaps))],
                ["swaps timed out", str(sum(s.answered_ns is None for s in swaps))],
                *[[f"daemon log: {name}", n] for name, n in reload_rows],
            ],
        )
    )
    for failure in failures[:10]:
        at_ms = (failure.at_ns - run.warmup_start_ns) / 1e6
        print(f"  failed call at {at_ms:,.1f} ms: {failure.kind}: {failure.detail}")
    if len(failures) > 10:
        print(f"  ... and {len(failures) - 10} more (all in --json)")
    summary.update(requests=requests, failed_calls=len(failures), failures_by_kind=by_kind, reload_events=counts)
    summary["swaps_timed_out"] = sum(s.answered_ns is None for s in swaps)
    return summary


def make_bars(run: Run, summary: dict[str, Any]) -> list[h.Bar]:
    """The four bars of the issue (a timed-out swap counts as infinitely slow)."""
    landed = [s.landed_to_answer_ms for s in run.swaps]
    return [
        h.Bar("landed -> answered p50", percentile(landed, 50), BAR_P50_MS, False, " ms"),
        h.Bar("landed -> answered p99", percentile(landed, 99), BAR_P99_MS, False, " ms"),
        h.Bar("swap-phase p99 / steady p99", summary["swap_over_steady_p99"], BAR_RATIO, False, "x"),
        h.Bar("failed calls", float(summary["failed_calls"]), BAR_FAILED, False),
    ]


# --- main -----------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; see --help."""
    parser = argparse.ArgumentParser(
        description="Hot swap: file landed -> first call answered by the new version, and call latency while "
        "swapping vs steady state, on a real daemon with a client calling without pause.",
        epilog=f"Defaults: {SWAPS_FULL} swaps after a {STEADY_FULL_S:g} s steady phase; --quick: {SWAPS_QUICK} swaps "
        f"after {STEADY_QUICK_S:g} s.",
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run (what the test suite uses)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the raw results to PATH")
    parser.add_argument("--python", default=sys.executable, help="python that runs the daemon (default: this one)")
    parser.add_argument("--swaps", type=int, metavar="N", help=f"versions to write, 1..{MAX_SWAPS}")
    parser.add_argument("--steady", type=float, metavar="S", help="seconds of each steady phase")
    parser.add_argument(
        "--placement",
        choices=PLACEMENTS,
        default="free",
        help="free (default): the scheduler places the daemon and the client; same: both on one CPU; split: the "
        "daemon on one CPU, the client on another",
    )
    args = parser.parse_args(argv)
    if args.swaps is not None and not 1 <= args.swaps <= MAX_SWAPS:
        parser.error(f"--swaps: expected 1..{MAX_SWAPS}, got {args.swaps}")
    if args.steady is not None and not 0.1 <= args.steady <= 600:
        parser.error(f"--steady: expected 0.1..600 seconds, got {args.steady}")
    return args


def placement_cpus(placement: str) -> tuple[frozenset[int] | None, frozenset[int] | None]:
    """(daemon CPUs, client CPUs) under --placement; None: wherever the scheduler puts it."""
    last = h.last_cpu()
    if placement == "same":
        return frozenset({last}), frozenset({last})
    if placement == "split":
        others = sorted(os.sched_getaffinity(0) - {last})
        if not others:
            raise SystemExit("--placement split needs two CPUs")
        return frozenset({last}), frozenset({others[-1]})
    return None, None


def main(argv: list[str] | None = None) -> int:
    """Run the bench; 0 when the run completed (whatever the bars say), 1 when it could not."""
    args = parse_args(argv)
    h.exit_on_sigterm()
    swaps_n = args.swaps or (SWAPS_QUICK if args.quick else SWAPS_FULL)
    steady_s = args.steady or (STEADY_QUICK_S if args.quick else STEADY_FULL_S)
    warmup_s = WARMUP_QUICK_S if args.quick else WARMUP_FULL_S
    daemon_cpus, client_cpus = placement_cpus(args.placement)
    if reason := h.micromono_unavailable(args.python):
        print(f"micromono unavailable: {reason}", file=sys.stderr)
        return 1
    try:
        import uvloop  # noqa: F401

        client_loop = "uvloop"
    except ImportError:
        client_loop = "asyncio"

    params = {
        "swaps": swaps_n,
        "methods": "rename,in_place alternating",
        "steady_s": steady_s,
        "warmup_s": warmup_s,
        "gap_ms": GAP_S * 1000,
        "swap_timeout_s": SWAP_TIMEOUT_S,
        "instances": 1,
        "client": f"1 keep-alive connection, sequential, {client_loop}",
        "placement": args.placement,
        "quick": args.quick,
    }
    report = h.Report("bench_reload", params, h.versions(args.python))
    h.print_preamble(
        "bench_reload: hot swap of a small stateful module under a calling client", report.versions, params
    )

    with tempfile.TemporaryDirectory(prefix="bench_reload-") as tmp, ExitStack() as stack:
        site, logs = Path(tmp) / "site", Path(tmp) / "logs"  # the log is kept out of the watched directory
        site.mkdir()
        logs.mkdir()
        wasm = site / "svc.wat"
        wasm.write_text(guest(tag_of(0), 0))
        manifest = write_manifest(site, Path(tmp) / "cache", wasm)
        server: h.Server | None = None
        try:
            server = stack.enter_context(
                h.Server.start("micromono", partial(h.micromono_argv, args.python, manifest), logs, cpus=daemon_cpus)
            )
            wait_ready(server)
            print(f"  daemon pid {server.proc.pid} on port {server.port}; steady {steady_s:g} s, then {swaps_n} swaps")
            if client_cpus is not None:
                os.sched_setaffinity(0, client_cpus)
            run = run_loop(measure(server.port, wasm, swaps_n, warmup_s, steady_s))
            server.check_alive()
            server.stop()
            counts = attach_log(run.swaps, log_events(server.log_path))
        except (h.HarnessError, OSError) as exc:
            print(f"\nbench_reload failed: {exc}", file=sys.stderr)
            if server is not None and server.proc.poll() is not None:
                print(f"the daemon exited with code {server.proc.returncode}:\n{server.log_tail()}", file=sys.stderr)
            return 1
    print()
    report.summary = print_results(run, counts)
    report.bars = make_bars(run, report.summary)
    print("\n## bars (reported, not asserted)\n")
    print(h.bars_table(report.bars))
    print("\nloadavg at end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    if args.json:
        report.samples = [
            asdict(s)
            | {
                "landed_to_answer_ms": finite(s.landed_to_answer_ms),
                "detect_ms": s.detect_ms,
                "after_swap_ms": s.after_swap_ms,
            }
            for s in run.swaps
        ]
        t0 = run.warmup_start_ns  # every *_ns in the JSON is time.perf_counter_ns(); *_us below count from t0
        report.summary["phases_us"] = {
            "steady": [(run.steady_start_ns - t0) // 1000, (run.swap_start_ns - t0) // 1000],
            "swap phase": [(run.swap_start_ns - t0) // 1000, (run.swap_end_ns - t0) // 1000],
            "steady after": [(run.swap_end_ns - t0) // 1000, (run.after_end_ns - t0) // 1000],
        }
        report.summary["requests_raw"] = {
            "t0_ns": t0,
            "columns": ["sent_us", "latency_us"],
            "rows": [
                [(start - t0) // 1000, round(latency / 1000, 1)]
                for start, latency in zip(run.client.starts_ns, run.client.latencies_ns, strict=True)
            ],
        }
        report.summary["failures"] = [asdict(f) for f in run.client.failures]
        report.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
