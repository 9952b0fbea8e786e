"""bench_console: what an open live page costs the data path (docs/operations.md, *The live page*).

One daemon (bench_console.toml: bench_peers' micromono side, `front` calling `back`, and `echo`), started once, with
its admin listener on. Each run measures the data path with 0, 1 or 4 page clients reading the live page's event
stream (`GET /console/events`, at the default tick of one second), connected before the run and closed after it:

  calls    bench_call's method: `POST /run` N to `front`, which calls `back` N times; per call (t(N) - t(0)) / N,
           and the daemon's CPU per call over the N request
  ingress  bench_ingress's method: `wrk -t1 -c32` POSTs 64 bytes to `/echo`; req/s and p99
  idle     the daemon's CPU per second while nothing but the page clients is served: the page's own cost

The clients are the bench's: one thread reads every stream as a browser would (it checks each got a `hello` and
then samples), so their reading costs the bench, not the daemon. Repeats rotate the order of the three variants;
the ratios against no page are taken per repeat, then their median, printed beside the run-to-run spread of no
page against itself ((max - min) / median over the repeats), which is the noise a page must stay within.
"""

from __future__ import annotations

import argparse
import selectors
import socket
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import _harness as h
import bench_call as call
import bench_ingress as ingress

VARIANTS: Final = ("none", "1 page", "4 pages")
CLIENTS: Final = {"none": 0, "1 page": 1, "4 pages": 4}
MANIFEST: Final = h.BENCHES / "bench_console.toml"
N_FULL: Final = 100_000  # calls per /run: about half a second on the compiled path
QUICK_DIVISOR: Final = 5
REPEATS_FULL, REPEATS_QUICK = 5, 1
DURATION_FULL_S, DURATION_QUICK_S = 5, 1  # each wrk run
ZEROS: Final = 5  # N = 0 requests per run; their median is t(0)
IDLE_S: Final = 2.0  # seconds of the idle measure
SETTLE_S: Final = 1.5  # after the clients connect: the replay is read and a first sample arrived
TICK_S: Final = 1.0  # the daemon's default tick, which the clients check they get

# Bars (shown as PASS/FAIL, never asserted): a page costs no more than the run-to-run noise (issue 19). Taken as a
# slowdown of at most 5 % per call and in req/s, the noise bench_peers sees between repeats on the project's VM.
BAR_SLOWDOWN: Final = 1.05


class PageClients:
    """`n` connections to the live page's event stream, read in one thread until `close()`."""

    def __init__(self, port: int, n: int) -> None:
        self.sockets: list[socket.socket] = []
        self.received: dict[int, bytearray] = {}
        self._stop = threading.Event()
        self._selector = selectors.DefaultSelector()
        for _ in range(n):
            sock = socket.create_connection((h.HOST, port), timeout=10)
            sock.sendall(b"GET /console/events HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n")
            sock.setblocking(False)
            self.sockets.append(sock)
            self.received[sock.fileno()] = bytearray()
            self._selector.register(sock, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._read, name="page-clients", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.1):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                if not data:
                    self._selector.unregister(sock)
                    continue
                buffer = self.received[sock.fileno()]
                if len(buffer) < 1 << 20:  # keep the start (to check it), count the rest
                    buffer += data

    def check(self) -> None:
        """Each client got the stream's head, its `hello` and at least one sample.

        Raises:
            HarnessError: one did not (its first bytes are in the message).
        """
        for sock in self.sockets:
            got = bytes(self.received[sock.fileno()])
            if not got.startswith(b"HTTP/1.1 200") or b"event: hello" not in got or b"event: sample" not in got:
                raise h.HarnessError(f"a page client did not get the live page's stream: {got[:300]!r}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._selector.close()
        for sock in self.sockets:
            sock.close()


@dataclass(frozen=True, slots=True)
class Run:
    """One variant measured once (all three parts)."""

    repeat: int
    variant: str
    n: int
    t0_s: list[float]
    tn_s: float
    cpun_s: float
    wrk: h.WrkResult
    idle_cpu_ms_per_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def us_per_call(self) -> float:
        return (self.tn_s - h.median(self.t0_s)) / self.n * 1e6

    @property
    def cpu_us_per_call(self) -> float:
        return self.cpun_s / self.n * 1e6

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {"us_per_call": self.us_per_call, "rps": self.wrk.rps, "p99_us": self.wrk.p99_us}


def run_seconds(server: h.Server) -> float:
    """CPU time the daemon's threads have run so far, in seconds, from the scheduler's own nanosecond counters
    (`/proc/<pid>/task/*/schedstat`): the clock ticks of `/proc/<pid>/stat` are too coarse for the idle cost."""
    total = 0
    for pid in server.pids():
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                continue  # a thread that ended meanwhile
    return total / 1e9


def daemon_argv(python: str, compiled: bool, port: int) -> list[str]:
    """The daemon's command line: bench_console.toml on `port`, its admin listener on another free port."""
    argv = h.micromono_argv(python, MANIFEST, port, compiled=compiled)
    i = argv.index("--metrics-listen")
    argv[i + 1] = f"{h.HOST}:{h.free_port()}"
    return argv


def admin_port(argv: list[str]) -> int:
    return int(argv[argv.index("--metrics-listen") + 1].rpartition(":")[2])


def measure(
    server: h.Server, driver: call.Driver, admin: int, variant: str, repeat: int, args: argparse.Namespace
) -> Run:
    """Connect the variant's page clients, measure idle, calls and ingress, close the clients."""
    clients = PageClients(admin, CLIENTS[variant])
    try:
        time.sleep(SETTLE_S if CLIENTS[variant] else 0.2)
        clients.check()
        c0 = run_seconds(server)
        time.sleep(IDLE_S)
        c1 = run_seconds(server)
        t0 = [driver.run(0) for _ in range(ZEROS)]
        c2 = run_seconds(server)
        tn = driver.run(args.n)
        c3 = run_seconds(server)
        idle = (c1 - c0) / IDLE_S * 1000
        cpun = (c3 - c2) - (c2 - c1) / ZEROS  # the N request's, less that of an N = 0 one
        url = f"http://{h.HOST}:{server.port}/echo"
        wrk = h.run_wrk(
            url,
            threads=ingress.THREADS,
            connections=ingress.CONNECTIONS,
            duration_s=args.duration,
            script=ingress.SCRIPT,
        )
        server.check_alive()
    finally:
        clients.close()
    return Run(repeat, variant, args.n, t0, tn, cpun, wrk, idle)


def spread_ratio(values: list[float]) -> float:
    """(max - min) / median: how far repeats of one variant land from each other."""
    return (max(values) - min(values)) / h.median(values) if len(values) > 1 else float("nan")


def print_results(runs: list[Run], variants: list[str]) -> dict[str, Any]:
    rows = []
    summary: dict[str, Any] = {}
    for name in variants:
        mine = [r for r in runs if r.variant == name]
        figures = {
            "us_per_call": [r.us_per_call for r in mine],
            "cpu_us_per_call": [r.cpu_us_per_call for r in mine],
            "rps": [r.wrk.rps for r in mine],
            "p99_us": [r.wrk.p99_us for r in mine],
            "idle_cpu_ms_per_s": [r.idle_cpu_ms_per_s for r in mine],
        }
        errors = sum(r.wrk.error_count for r in mine)
        rows.append(
            [
                name,
                h.spread(figures["us_per_call"], 3),
                h.spread(figures["cpu_us_per_call"], 3),
                h.spread(figures["rps"]),
                h.spread(figures["p99_us"]),
                h.spread(figures["idle_cpu_ms_per_s"], 2),
                str(errors),
            ]
        )
        summary[name] = {key: h.median(values) for key, values in figures.items()} | {"errors": errors}
    print("## the data path with 0, 1 and 4 page clients (median [min, max] over repeats)\n")
    headers = ["pages", "µs/call", "daemon CPU µs/call", "ingress req/s", "ingress p99 µs", "idle daemon CPU ms/s",
               "wrk errors"]  # fmt: skip
    print(h.table(headers, rows))

    base = "none"
    by = {(r.repeat, r.variant): r for r in runs}
    repeats = sorted({r.repeat for r in runs})
    noise = {
        "µs/call": spread_ratio([by[rep, base].us_per_call for rep in repeats if (rep, base) in by]),
        "req/s": spread_ratio([by[rep, base].wrk.rps for rep in repeats if (rep, base) in by]),
    }
    ratio_rows = []
    for name in variants:
        if name == base:
            continue
        per_call = [by[rep, name].us_per_call / by[rep, base].us_per_call for rep in repeats if (rep, name) in by]
        per_rps = [by[rep, base].wrk.rps / by[rep, name].wrk.rps for rep in repeats if (rep, name) in by]
        summary[name] |= {"slowdown_calls": h.median(per_call), "slowdown_rps": h.median(per_rps)}
        ratio_rows.append(
            [
                f"{name} / none",
                h.spread(per_call, 3),
                h.fmt(noise["µs/call"], 3),
                h.spread(per_rps, 3),
                h.fmt(noise["req/s"], 3),
            ]
        )
    print("\n## slowdown against no page, same repeat (median [min, max] of the per-repeat ratios; > 1 is slower)\n")
    print("The noise columns: (max - min) / median of no page over the repeats.\n")
    print(h.table(["", "µs/call ratio", "µs/call noise", "req/s ratio (none / page)", "req/s noise"], ratio_rows))
    summary["noise"] = noise
    return summary


def make_bars(summary: dict[str, Any]) -> list[h.Bar]:
    bars = []
    for name in ("1 page", "4 pages"):
        figures = summary.get(name, {})
        bars += [
            h.Bar(f"{name}: µs/call slowdown", figures.get("slowdown_calls"), BAR_SLOWDOWN, False, "x"),
            h.Bar(f"{name}: req/s slowdown", figures.get("slowdown_rps"), BAR_SLOWDOWN, False, "x"),
        ]
    return bars


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="The data path (calls and ingress) with 0, 1 and 4 clients of the live page's event stream.",
        epilog=f"Defaults: {REPEATS_FULL} repeats, N = {N_FULL:,} calls, wrk {DURATION_FULL_S} s; --quick: "
        f"{REPEATS_QUICK} repeat, N / {QUICK_DIVISOR}, wrk {DURATION_QUICK_S} s.",
    )
    h.add_common_args(parser, VARIANTS)
    parser.add_argument(
        "--pure", action="store_true", help="run the daemon in pure Python (default: the compiled path, when built)"
    )
    parser.add_argument("--duration", type=int, metavar="S", help="seconds of each wrk run")
    parser.add_argument("--n", type=int, metavar="N", help="calls per /run")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (REPEATS_QUICK if args.quick else REPEATS_FULL)
    args.duration = args.duration or (DURATION_QUICK_S if args.quick else DURATION_FULL_S)
    args.n = args.n or (N_FULL // QUICK_DIVISOR if args.quick else N_FULL)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the bench; 0 when every run completed (whatever the bars say), 1 when one could not."""
    args = parse_args(argv)
    h.exit_on_sigterm()
    variants: list[str] = args.only
    if reason := h.micromono_unavailable(args.python):
        print(f"micromono unavailable: {reason}", file=sys.stderr)
        return 1
    notes: list[str] = []
    compiled = h.use_compiled(args.python, args.pure, notes)
    params = {"variants": ",".join(variants), "repeats": args.repeats, "n": args.n, "duration_s": args.duration,
              "path": "compiled" if compiled else "pure", "tick_s": TICK_S, "quick": args.quick}  # fmt: skip
    report = h.Report("bench_console", params, h.versions(args.python))
    h.print_preamble("bench_console: the data path with the live page open", report.versions, params)

    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench_console-") as logs:
        argv_seen: list[list[str]] = []

        def argv_for_port(port: int) -> list[str]:
            argv_seen.append(daemon_argv(args.python, compiled, port))
            return argv_seen[-1]

        try:
            with h.Server.start("micromono", argv_for_port, Path(logs)) as server:
                admin = admin_port(argv_seen[-1])
                ingress.verify_echo("micromono", server.port)
                driver = call.Driver("micromono", server.port)
                try:
                    driver.run(args.n)  # warm-up: the first calls, the first HTTP requests
                    h.run_wrk(f"http://{h.HOST}:{server.port}/echo", threads=ingress.THREADS,
                              connections=ingress.CONNECTIONS, duration_s=1, script=ingress.SCRIPT)  # fmt: skip
                    for repeat in range(args.repeats):
                        shift = repeat % len(variants)
                        for name in variants[shift:] + variants[:shift]:
                            r = measure(server, driver, admin, name, repeat, args)
                            runs.append(r)
                            print(f"  repeat {repeat} {name:8} {r.us_per_call:7.3f} µs/call  "
                                  f"{r.wrk.rps:9,.0f} req/s  p99 {r.wrk.p99_us:6,.0f} µs  "
                                  f"idle {r.idle_cpu_ms_per_s:5.2f} CPU ms/s")  # fmt: skip
                finally:
                    driver.close()
        except (h.HarnessError, OSError) as exc:
            print(f"\nbench_console failed: {exc}", file=sys.stderr)
            return 1
    print()
    report.samples = [r.as_json() for r in runs]
    report.summary = print_results(runs, variants)
    report.bars = make_bars(report.summary)
    if args.repeats < 3:
        notes.append("Fewer than 3 repeats: the noise columns say little; run without --quick on a quiet machine.")
    if any(r.wrk.error_count for r in runs):
        notes.append("WARNING: some runs had wrk errors (see the errors column); their figures are suspect.")
    return report.finish(args.json, *notes)


if __name__ == "__main__":
    sys.exit(main())
