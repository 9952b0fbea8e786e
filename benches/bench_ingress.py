"""bench_ingress: HTTP requests per second into an echo service, micromono against aiohttp and a floor.

Load: `wrk -t1 -c32 -d<D>s --latency -s post64.lua http://127.0.0.1:PORT/echo` (a POST with a 64-byte body; the
script's `done()` prints requests, duration, latency percentiles and error counts on one line).

Variants:
  micromono  the daemon serving the WAT echo guest fixtures/echo.wat on route /echo (bench_ingress.toml)
  micromono-c  the same on the compiled path (micromono/_speedups.c and the mypyc-compiled hot-path modules,
               which must be built and current; `micromono` forces pure Python with MICROMONO_PURE=1)
  aiohttp    peers/aiohttp_echo.py: aiohttp + uvloop, `POST /echo` returns the body, access log off
  floor      peers/proto_echo.py: an asyncio.Protocol + httptools on uvloop answering `POST /echo` inside the
             parser callback, the cheapest honest Python server: the ceiling for any Python server on the machine

Each run starts a fresh server, checks it (random 64-byte bodies and a 4 KiB one come back exactly, on one
keep-alive connection), warms it up with a short wrk run, then measures. Server CPU per request is the utime+stime
of the server's processes over the measured run divided by the requests wrk completed; "server cores" near 1.0
means the (single-threaded) server was the bottleneck, not wrk. Repeats interleave the variants, in an order
rotated per repeat; the req/s ratios (micromono/aiohttp, floor/aiohttp, micromono/floor) are taken per repeat, then
their medians.
"""

from __future__ import annotations

import argparse
import http.client
import random
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final

import _harness as h

VARIANTS: Final = ("micromono", "micromono-c", "aiohttp", "floor")
PEER_SCRIPTS: Final = {"aiohttp": h.PEERS / "aiohttp_echo.py", "floor": h.PEERS / "proto_echo.py"}
RATIOS: Final = (  # numerator, denominator
    ("micromono", "aiohttp"), ("micromono-c", "aiohttp"), ("floor", "aiohttp"), ("micromono", "floor"),
)  # fmt: skip
MANIFEST: Final = h.BENCHES / "bench_ingress.toml"
SCRIPT: Final = h.BENCHES / "post64.lua"
THREADS, CONNECTIONS = 1, 32
REPEATS_FULL, DURATION_FULL_S, WARMUP_FULL_S = 3, 5, 2
REPEATS_QUICK, DURATION_QUICK_S, WARMUP_QUICK_S = 1, 2, 1
VERIFY_BODIES: Final = 20

# Bars (shown as PASS/FAIL, never asserted).
BAR_RATIO: Final = 3.0
BAR_P99_US: Final = 1000.0


@dataclass(frozen=True, slots=True)
class Run:
    """One measured wrk run against one fresh server."""

    repeat: int
    variant: str
    wrk: h.WrkResult
    server_cpu_s: float
    machine_busy: float  # fraction of all CPUs busy during the run (wrk + server + anything else)
    rss_kib: int  # the server's resident memory right after the run

    @property
    def cpu_us_per_request(self) -> float:
        """Server CPU over the run divided by the requests completed, in µs."""
        return self.server_cpu_s / self.wrk.requests * 1e6 if self.wrk.requests else float("nan")

    @property
    def server_cores(self) -> float:
        """Server CPU over the run divided by its duration."""
        return self.server_cpu_s / self.wrk.duration_s

    def as_json(self) -> dict[str, Any]:
        """The run with its derived figures, for --json."""
        return asdict(self) | {
            "rps": self.wrk.rps,
            "cpu_us_per_request": self.cpu_us_per_request,
            "server_cores": self.server_cores,
        }


def verify_echo(name: str, port: int) -> None:
    """Check the server echoes bodies exactly and keeps the connection alive.

    Sends VERIFY_BODIES random 64-byte bodies and one random 4 KiB body on one HTTP/1.1 connection.

    Raises:
        HarnessError: a wrong status or body, or the connection was not kept alive.
    """
    rng = random.Random(0x6D6D)
    bodies = [rng.randbytes(64) for _ in range(VERIFY_BODIES)] + [rng.randbytes(4096)]
    conn = http.client.HTTPConnection(h.HOST, port, timeout=10)
    try:
        conn.connect()
        sock = conn.sock
        for i, body in enumerate(bodies):
            conn.request("POST", "/echo", body=body, headers={"Content-Type": "application/octet-stream"})
            resp = conn.getresponse()
            got = resp.read()
            if resp.status != 200 or got != body:
                raise h.HarnessError(
                    f"{name}: request {i} ({len(body)} bytes) got {resp.status} with {len(got)} bytes "
                    f"{'(body differs)' if resp.status == 200 else got[:200]!r}"
                )
            if resp.will_close or conn.sock is not sock:
                raise h.HarnessError(f"{name}: the server closed the connection after request {i} (no keep-alive)")
    except (OSError, http.client.HTTPException) as exc:
        raise h.HarnessError(f"{name}: verification failed: {exc!r}") from exc
    finally:
        conn.close()


def server_argv(name: str, python: str, port: int) -> list[str]:
    """The command line of a variant's server on `port`."""
    if name in h.MICROMONO_VARIANTS:
        return h.micromono_argv(python, MANIFEST, port, compiled=h.MICROMONO_VARIANTS[name])
    return [python, str(PEER_SCRIPTS[name]), "--port", str(port)]


def measure(
    name: str,
    repeat: int,
    args: argparse.Namespace,
    log_dir: Path,
    argv_for_port: Callable[[int], list[str]] | None = None,
) -> Run:
    """Start a fresh server, verify it, warm it up, measure one wrk run, stop it.

    `argv_for_port` starts another server than this bench's own variants (bench_peers' workerd)."""
    argv = argv_for_port or partial(server_argv, name, args.python)
    with h.Server.start(name, argv, log_dir) as server:
        verify_echo(name, server.port)
        url = f"http://{h.HOST}:{server.port}/echo"
        wrk = partial(h.run_wrk, url, threads=THREADS, connections=CONNECTIONS, script=SCRIPT)
        wrk(duration_s=args.warmup)
        server.check_alive()
        cpu0, busy0 = server.cpu_seconds(), h.machine_busy()
        result = wrk(duration_s=args.duration)
        cpu1, busy1 = server.cpu_seconds(), h.machine_busy()
        server.check_alive()
        rss = server.rss_kib()
    busy = (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1])
    return Run(repeat, name, result, cpu1 - cpu0, busy, rss)


def print_results(runs: list[Run], variants: list[str]) -> dict[str, Any]:
    """Print the per-variant table and the per-repeat ratios; return the summary for the JSON."""
    rows: list[list[str]] = []
    summary: dict[str, Any] = {}
    for name in variants:
        mine = [r for r in runs if r.variant == name]
        figures = {
            "rps": [r.wrk.rps for r in mine],
            "p50_us": [r.wrk.p50_us for r in mine],
            "p99_us": [r.wrk.p99_us for r in mine],
            "cpu_us_per_request": [r.cpu_us_per_request for r in mine],
            "server_cores": [r.server_cores for r in mine],
            "wrk_cores": [r.wrk.wrk_cpu_s / r.wrk.duration_s for r in mine],
            "rss_mib": [r.rss_kib / 1024 for r in mine],
        }
        errors = sum(r.wrk.error_count for r in mine)
        rows.append(
            [
                name,
                h.spread(figures["rps"]),
                h.spread(figures["p50_us"]),
                h.spread(figures["p99_us"]),
                h.spread(figures["cpu_us_per_request"], 2),
                h.fmt(h.median(figures["server_cores"]), 2),
                h.fmt(h.median(figures["wrk_cores"]), 2),
                h.fmt(h.median(figures["rss_mib"]), 1),
                str(errors),
            ]
        )
        summary[name] = {key: h.median(values) for key, values in figures.items()} | {"errors": errors}
    print(f"## wrk -t{THREADS} -c{CONNECTIONS}, POST 64 bytes (median [min, max] over repeats)\n")
    headers = ["variant", "req/s", "p50 µs", "p99 µs", "server CPU µs/req", "server cores", "wrk cores",
               "RSS MiB", "errors"]  # fmt: skip
    print(h.table(headers, rows))

    summary |= print_ratios(runs, variants)
    return summary


def per_repeat_ratios(runs: list[Run], num: str, den: str) -> dict[int, float]:
    """num/den req/s, repeat by repeat (only repeats where both ran)."""
    rps = {(r.repeat, r.variant): r.wrk.rps for r in runs}
    repeats = sorted({r.repeat for r in runs})
    return {rep: rps[rep, num] / rps[rep, den] for rep in repeats if (rep, num) in rps and (rep, den) in rps}


def print_ratios(runs: list[Run], variants: list[str]) -> dict[str, Any]:
    """Print each repeat's req/s and the RATIOS between them, with their medians; return them for the summary.

    The summary keeps `ratio` and `ratio_per_repeat` (micromono / aiohttp, the bar) and adds `ratios`: per pair
    "num/den", the per-repeat values and their median.
    """
    ratios = {f"{num}/{den}": per_repeat_ratios(runs, num, den) for num, den in RATIOS}
    ratios = {label: values for label, values in ratios.items() if values}
    if not ratios:
        return {}
    medians = {label: h.median(list(values.values())) for label, values in ratios.items()}
    rps = {(r.repeat, r.variant): r.wrk.rps for r in runs}
    rows: list[list[str]] = []
    for rep in sorted({r.repeat for r in runs}):
        rps_cells = [h.fmt(rps.get((rep, name), float("nan"))) for name in variants]
        ratio_cells = [h.fmt(values.get(rep, float("nan")), 2) for values in ratios.values()]
        rows.append([str(rep), *rps_cells, *ratio_cells])
    rows.append(["median", *("" for _ in variants), *(h.fmt(m, 2) for m in medians.values())])
    headers = ["repeat", *(f"{name} req/s" for name in variants), *(label.replace("/", " / ") for label in ratios)]
    print("\n## req/s ratios, same repeat (median of the per-repeat ratios)\n")
    print(h.table(headers, rows))
    summary: dict[str, Any] = {
        "ratios": {
            label: {"per_repeat": list(values.values()), "median": medians[label]} for label, values in ratios.items()
        }
    }
    if "micromono/aiohttp" in ratios:
        summary["ratio_per_repeat"] = list(ratios["micromono/aiohttp"].values())
        summary["ratio"] = medians["micromono/aiohttp"]
    return summary


def floor_note(summary: dict[str, Any]) -> list[str]:
    """The informational line under the bars: how far the floor gets above aiohttp, and micromono against it."""
    ratios = summary.get("ratios", {})
    if "floor/aiohttp" not in ratios:
        return []
    line = f"info (not a bar): floor / aiohttp req/s {h.fmt(ratios['floor/aiohttp']['median'], 2)}x (median), "
    line += "the ceiling for a Python server on this machine"
    if "micromono/floor" in ratios:
        line += f"; micromono / floor {h.fmt(ratios['micromono/floor']['median'], 2)}x"
    return [line + "."]


def make_bars(summary: dict[str, Any]) -> list[h.Bar]:
    """The bars of this bench, for each daemon variant, from the summary."""
    bars = []
    for name in h.MICROMONO_VARIANTS:
        ratio = summary.get("ratios", {}).get(f"{name}/aiohttp", {}).get("median")
        p99 = summary[name]["p99_us"] if name in summary else None
        bars += [
            h.Bar(f"{name} / aiohttp req/s", ratio, BAR_RATIO, True, "x"),
            h.Bar(f"{name} p99 latency", p99, BAR_P99_US, False, " µs"),
        ]
    return bars


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; see --help."""
    parser = argparse.ArgumentParser(
        description=f"wrk -t{THREADS} -c{CONNECTIONS} against a 64-byte HTTP echo: micromono vs aiohttp vs a floor "
        "(the cheapest Python server).",
        epilog=f"Defaults: {REPEATS_FULL} repeats x {DURATION_FULL_S} s after a {WARMUP_FULL_S} s warm-up; "
        f"--quick: {REPEATS_QUICK} x {DURATION_QUICK_S} s after {WARMUP_QUICK_S} s.",
    )
    h.add_common_args(parser, VARIANTS)
    parser.add_argument("--duration", type=int, metavar="S", help="seconds of each measured wrk run")
    parser.add_argument("--warmup", type=int, metavar="S", help="seconds of the wrk warm-up before each run")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (REPEATS_QUICK if args.quick else REPEATS_FULL)
    args.duration = args.duration or (DURATION_QUICK_S if args.quick else DURATION_FULL_S)
    args.warmup = args.warmup or (WARMUP_QUICK_S if args.quick else WARMUP_FULL_S)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the bench; 0 when every run completed (whatever the bars say), 1 when one could not."""
    args = parse_args(argv)
    h.exit_on_sigterm()
    variants: list[str] = args.only
    compiled = "micromono-c" in variants
    daemons = set(variants) & set(h.MICROMONO_VARIANTS)
    if daemons and (reason := h.micromono_unavailable(args.python, compiled=compiled)):
        print(f"micromono variant unavailable: {reason}\nRun with --only aiohttp,floor to measure the peers alone.",
              file=sys.stderr)  # fmt: skip
        return 1
    params = {"variants": ",".join(variants), "repeats": args.repeats, "duration_s": args.duration,
              "warmup_s": args.warmup, "threads": THREADS, "connections": CONNECTIONS, "body_bytes": 64,
              "quick": args.quick}  # fmt: skip
    report = h.Report("bench_ingress", params, h.versions(args.python))
    h.print_preamble("bench_ingress: HTTP echo under wrk", report.versions, params)

    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench_ingress-") as logs:
        try:
            for repeat in range(args.repeats):
                shift = repeat % len(variants)
                for name in variants[shift:] + variants[:shift]:
                    runs.append(measure(name, repeat, args, Path(logs)))
                    r = runs[-1]
                    print(f"  repeat {repeat} {name:9} {r.wrk.rps:10,.0f} req/s  p99 {r.wrk.p99_us:,.0f} µs  "
                          f"{r.cpu_us_per_request:.2f} CPU µs/req  errors {r.wrk.error_count}")  # fmt: skip
        except (h.HarnessError, OSError) as exc:
            print(f"\nbench_ingress failed: {exc}", file=sys.stderr)
            return 1
    print()
    report.samples = [r.as_json() for r in runs]
    report.summary = print_results(runs, variants)
    report.bars = make_bars(report.summary)
    notes = floor_note(report.summary)
    if any(r.wrk.error_count for r in runs):
        notes.append("WARNING: some runs had wrk errors (see the errors column); their figures are suspect.")
    return report.finish(args.json, *notes)


if __name__ == "__main__":
    sys.exit(main())
