"""bench_call: what one service-to-service call costs, micromono against two Python baselines.

Every variant is driven the same way. The bench sends `POST /run` with body N (ASCII decimal) to the *front*; the
front makes N sequential calls with a 64-byte payload to the *back*, which echoes it; the front checks each reply's
length and answers `ok N`. The cost of one call is (t(N) - t(0)) / N, where t(0) is the same request with N = 0,
so the HTTP trigger's own cost cancels. Server CPU per call is the utime+stime of all the variant's server
processes over the N request, minus that of an N = 0 request, divided by N.

Variants:
  micromono  the daemon, front and back are WAT guests calling through `micromono.call` (bench_call.toml)
  micromono-c  the same on the compiled path (micromono/_speedups.c and the mypyc-compiled hot-path modules,
               which must be built and current; `micromono` forces pure Python with MICROMONO_PURE=1)
  frames     two asyncio-streams + uvloop processes exchanging length-prefixed frames over one TCP connection
  aiohttp    two aiohttp + uvloop processes, the front calling `POST /echo` over one keep-alive connection

With `--tracing off,log,otlp` each micromono variant also runs with `daemon.tracing` on (docs/tracing.md), as
`micromono+log`, `micromono-c+otlp`, ...: every call is then a span. `log`: one JSON `span` line per span, written
to the daemon's log file (the harness's server log, a file under the bench's temporary directory). `otlp`: spans
exported over OTLP/HTTP to a receiver in this bench process that decodes and counts them, then discards them; the
export queue is made large enough that nothing is dropped (OTEL_BSP_MAX_QUEUE_SIZE), and after each request the
bench waits until the receiver has every span of it, so the server CPU figure includes the export thread's work
(encoding, HTTP) and not only what the event loop paid. Traced variants make N / TRACED_DIVISOR calls (a span per
call costs several times the call). `off` runs the plain variants, as without the option; the ratios of each traced
variant to its plain one are taken per repeat.

All servers start once; each repeat then measures every variant, in an order rotated per repeat, and the tables
give medians over repeats. Ratios are taken per repeat (same moment, same machine load) and then their median.
"""

from __future__ import annotations

import argparse
import http.client
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

import _harness as h

VARIANTS: Final = ("micromono", "micromono-c", "frames", "aiohttp")
TRACING_MODES: Final = ("off", "log", "otlp")
#: Traced variants make N / this many calls.
TRACED_DIVISOR: Final = 5
#: The longest the bench waits for a request's spans to reach the OTLP receiver (seconds).
OTLP_SETTLE_S: Final = 120.0
MANIFEST: Final = h.BENCHES / "bench_call.toml"
# each t(N) takes ~0.2-1 s
N_FULL: Final = {"micromono": 200_000, "micromono-c": 200_000, "frames": 20_000, "aiohttp": 3_000}
QUICK_DIVISOR: Final = 5
REPEATS_FULL, REPEATS_QUICK = 7, 2
ZEROS_FULL, ZEROS_QUICK = 10, 3  # N = 0 requests per repeat; their median is t(0)
REQUEST_TIMEOUT_S: Final = 120.0

# Bars (shown as PASS/FAIL, never asserted).
BAR_MICROMONO_US: Final = 4.0
BAR_FRAMES_RATIO: Final = 5.0
BAR_AIOHTTP_RATIO: Final = 30.0


@dataclass(frozen=True, slots=True)
class Sample:
    """One repeat of one variant."""

    repeat: int
    variant: str
    n: int
    t0_s: list[float]  # wall time of each N = 0 request
    cpu0_s: float  # server CPU per N = 0 request (mean over them)
    tn_s: float  # wall time of the N request
    cpun_s: float  # server CPU over the N request
    cpun_by_server_s: dict[str, float]  # the same, per server process group (front, back)

    @property
    def wall_us_per_call(self) -> float:
        """(t(N) - median t(0)) / N, in µs."""
        return (self.tn_s - h.median(self.t0_s)) / self.n * 1e6

    @property
    def cpu_us_per_call(self) -> float:
        """(CPU(N) - CPU(0)) / N, in µs."""
        return (self.cpun_s - self.cpu0_s) / self.n * 1e6

    @property
    def server_cores(self) -> float:
        """Server CPU over the N request divided by its wall time: how busy the servers kept the cores."""
        return self.cpun_s / self.tn_s


class Driver:
    """The bench side: one keep-alive HTTP/1.1 connection to a front, sending `POST /run`."""

    def __init__(self, name: str, port: int) -> None:
        self.name = name
        self.conn = http.client.HTTPConnection(h.HOST, port, timeout=REQUEST_TIMEOUT_S)

    def run(self, n: int) -> float:
        """Send N, check the answer is 200 `ok N`, return the wall time in seconds."""
        start = time.perf_counter()
        self.conn.request("POST", "/run", body=str(n).encode(), headers={"Content-Type": "text/plain"})
        resp = self.conn.getresponse()
        body = resp.read()
        elapsed = time.perf_counter() - start
        if resp.status != 200 or body != f"ok {n}".encode():
            raise h.HarnessError(f"{self.name}: POST /run {n} answered {resp.status} {body[:300]!r}")
        return elapsed

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


@dataclass
class Variant:
    """A running variant: its servers (all of whose CPU counts) and the driver of its front."""

    name: str
    servers: list[h.Server]
    driver: Driver
    n: int

    def cpu_seconds(self) -> float:
        """utime + stime so far of all the variant's server processes."""
        return sum(s.cpu_seconds() for s in self.servers)

    #: For an otlp variant: waits until the receiver has every span the daemon made so far.
    settle: Callable[[], None] = field(default=lambda: None)

    def measure(self, repeat: int, zeros: int) -> Sample:
        """t(0) `zeros` times, then t(N), each with the servers' CPU time around it (and its settling)."""
        for server in self.servers:
            server.check_alive()
        self.settle()
        c0 = self.cpu_seconds()
        t0 = [self.driver.run(0) for _ in range(zeros)]
        self.settle()
        c1 = [s.cpu_seconds() for s in self.servers]
        tn = self.driver.run(self.n)
        self.settle()
        c2 = [s.cpu_seconds() for s in self.servers]
        by_server = {s.name: after - before for s, before, after in zip(self.servers, c1, c2, strict=True)}
        return Sample(repeat, self.name, self.n, t0, (sum(c1) - c0) / zeros, tn, sum(c2) - sum(c1), by_server)


def peer_argv(python: str, script: str, port: int, back_port: int | None = None) -> list[str]:
    """The command line of a peer script in benches/peers serving on `port` (calling `back_port`, if given)."""
    argv = [python, str(h.PEERS / script), "--port", str(port)]
    return argv if back_port is None else [*argv, "--back-port", str(back_port)]


@dataclass(frozen=True, slots=True)
class Setup:
    """How servers are started: which python runs them, where their logs go, which CPUs they may use."""

    python: str
    log_dir: Path
    cpus: frozenset[int] | None  # None: wherever the scheduler puts them

    def start(self, name: str, argv_for_port: Callable[[int], list[str]], stack: ExitStack) -> h.Server:
        """Start one server, stopped when `stack` closes."""
        return stack.enter_context(h.Server.start(name, argv_for_port, self.log_dir, cpus=self.cpus))


class OtlpReceiver:
    """An OTLP/HTTP receiver on 127.0.0.1 that decodes each POST /v1/traces, counts its spans and discards them."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        self.spans = 0
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                request = ExportTraceServiceRequest()
                request.ParseFromString(self.rfile.read(int(self.headers["content-length"])))
                count = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()
                with receiver._changed:
                    receiver.spans += count
                    receiver._changed.notify_all()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((h.HOST, 0), Handler)
        self.url = f"http://{h.HOST}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def wait_for(self, spans: int) -> None:
        """Wait until `spans` spans in all have arrived."""
        with self._changed:
            if not self._changed.wait_for(lambda: self.spans >= spans, OTLP_SETTLE_S):
                raise h.HarnessError(f"otlp: {self.spans} spans arrived, {spans} expected after {OTLP_SETTLE_S} s")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def traced_manifest(mode: str, directory: Path, endpoint: str | None) -> Path:
    """bench_call.toml with `daemon.tracing = mode` (JSON logs; an OTLP endpoint), written into `directory`."""
    text = MANIFEST.read_text().replace('wasm = "fixtures/', f'wasm = "{h.BENCHES}/fixtures/')
    keys = f'tracing = "{mode}"\nlog_format = "json"\n'
    if endpoint is not None:
        keys += f'otlp_endpoint = "{endpoint}"\n'
    path = directory / f"bench_call_{mode}.toml"
    path.write_text(text.replace("[daemon]\n", "[daemon]\n" + keys, 1))
    return path


def split_variant(name: str) -> tuple[str, str]:
    """ "micromono-c+otlp" -> ("micromono-c", "otlp"); a plain name has mode "off"."""
    base, _, mode = name.partition("+")
    return base, mode or "off"


def start_servers(name: str, setup: Setup, stack: ExitStack, receiver: OtlpReceiver | None = None) -> list[h.Server]:
    """Start a variant's servers, front first in the list: the daemon, or `<name>_back.py` then `<name>_front.py`."""
    base, mode = split_variant(name)
    if base in h.MICROMONO_VARIANTS:
        manifest = MANIFEST
        env: list[str] = []
        if mode != "off":
            manifest = traced_manifest(mode, setup.log_dir, receiver.url if receiver is not None else None)
            env = ["env", "OTEL_BSP_MAX_QUEUE_SIZE=4000000", "OTEL_BSP_SCHEDULE_DELAY=100"]

        def argv(port: int) -> list[str]:
            return [*env, *h.micromono_argv(setup.python, manifest, port, compiled=h.MICROMONO_VARIANTS[base])]

        return [setup.start(name, argv, stack)]
    back = setup.start(f"{name}_back", partial(peer_argv, setup.python, f"{name}_back.py"), stack)
    front_argv = partial(peer_argv, setup.python, f"{name}_front.py", back_port=back.port)
    return [setup.start(f"{name}_front", front_argv, stack), back]


def start_variant(name: str, n: int, setup: Setup, stack: ExitStack) -> Variant:
    """Start a variant's servers, connect a driver to its front, warm it up."""
    receiver = None
    if split_variant(name)[1] == "otlp":
        receiver = OtlpReceiver()
        stack.callback(receiver.close)
    servers = start_servers(name, setup, stack, receiver)
    driver = Driver(name, servers[0].port)
    stack.callback(driver.close)
    variant = Variant(name, servers, driver, n)
    if receiver is not None:  # each request makes 1 + N spans (its HTTP run and its calls)
        spans = [0]
        run = driver.run

        def counted(calls: int) -> float:
            spans[0] += 1 + calls
            return run(calls)

        driver.run = counted  # type: ignore[method-assign]
        variant.settle = lambda: receiver.wait_for(spans[0])
    for _ in range(3):
        driver.run(0)
    driver.run(max(1, n // 10))  # warm-up: first connection to the back, caches, lazy imports
    return variant


def per_repeat_ratio(samples: list[Sample], num: str, den: str, attr: str) -> list[float]:
    """num/den of a per-call figure, repeat by repeat (only repeats where both ran)."""
    by_key = {(s.repeat, s.variant): getattr(s, attr) for s in samples}
    repeats = sorted({s.repeat for s in samples})
    return [by_key[r, num] / by_key[r, den] for r in repeats if (r, num) in by_key and (r, den) in by_key]


def print_results(samples: list[Sample], variants: list[str]) -> dict[str, Any]:
    """Print the per-variant table and the ratio table; return the summary for the JSON."""
    rows: list[list[str]] = []
    summary: dict[str, Any] = {}
    for name in variants:
        mine = [s for s in samples if s.variant == name]
        wall = [s.wall_us_per_call for s in mine]
        cpu = [s.cpu_us_per_call for s in mine]
        rows.append(
            [
                name,
                f"{mine[0].n:,}",
                h.spread(wall, 2),
                h.spread(cpu, 2),
                h.fmt(h.median([h.median(s.t0_s) * 1e6 for s in mine])),
                h.fmt(h.median([s.tn_s for s in mine]), 3),
                h.fmt(h.median([s.server_cores for s in mine]), 2),
            ]
        )
        summary[name] = {"wall_us_per_call": h.median(wall), "cpu_us_per_call": h.median(cpu)}
    print("## per call (median [min, max] over repeats)\n")
    print(h.table(["variant", "N", "wall µs/call", "server CPU µs/call", "t(0) µs", "t(N) s", "server cores"], rows))

    def ratio_rows_of(num: str, den: str, key: str) -> list[list[str]]:
        """The wall and CPU rows of num / den per repeat; their medians go to `summary` as `<key>_wall|cpu`."""
        rows = []
        for attr, label in (("wall_us_per_call", "wall"), ("cpu_us_per_call", "CPU")):
            values = per_repeat_ratio(samples, num, den, attr)
            if values:
                rows.append(
                    [f"{num} / {den}, {label}", " ".join(h.fmt(v, 1) for v in values), h.fmt(h.median(values), 1)]
                )
                summary[f"{key}_{label.lower()}"] = h.median(values)
        return rows

    ratio_rows = []
    for den in h.MICROMONO_VARIANTS:
        for num in ("aiohttp", "frames"):
            ratio_rows += ratio_rows_of(num, den, f"{num}_over_{den.replace('-', '_')}")
    if ratio_rows:
        print("\n## ratios, same repeat (how many times cheaper micromono is)\n")
        print(h.table(["ratio", "per repeat", "median"], ratio_rows))
    tracing_rows = []
    for name in variants:
        base, mode = split_variant(name)
        if mode == "off" or base not in variants:
            continue
        tracing_rows += ratio_rows_of(name, base, f"{name.replace('-', '_').replace('+', '_')}_over_off")
    if tracing_rows:
        print("\n## tracing, same repeat (how many times the cost of the call with tracing off)\n")
        print(h.table(["ratio", "per repeat", "median"], tracing_rows))
    return summary


def make_bars(summary: dict[str, Any]) -> list[h.Bar]:
    """The three bars of this bench, from the summary (a bar whose variants did not run is n/a)."""
    bars = []
    for name in h.MICROMONO_VARIANTS:
        key = name.replace("-", "_")
        wall = summary.get(name, {}).get("wall_us_per_call")
        bars += [
            h.Bar(f"{name} wall per call", wall, BAR_MICROMONO_US, False, " µs"),
            h.Bar(f"frames / {name}, wall", summary.get(f"frames_over_{key}_wall"), BAR_FRAMES_RATIO, True, "x"),
            h.Bar(f"aiohttp / {name}, wall", summary.get(f"aiohttp_over_{key}_wall"), BAR_AIOHTTP_RATIO, True, "x"),
        ]
    return bars


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; see --help."""
    parser = argparse.ArgumentParser(
        description="Per-call cost of a service calling another N times (64-byte payload): "
        "micromono vs raw TCP frames vs aiohttp.",
        epilog=f"Defaults: N = {N_FULL}, {REPEATS_FULL} repeats; --quick divides N by {QUICK_DIVISOR} "
        f"and runs {REPEATS_QUICK} repeats.",
    )
    h.add_common_args(parser, VARIANTS)
    parser.add_argument("--n", action="append", default=[], metavar="VARIANT=N", help="override N of a variant")
    parser.add_argument(
        "--tracing",
        type=lambda text: h.parse_only(text, TRACING_MODES),
        default=["off"],
        metavar="LIST",
        help="comma-separated daemon.tracing modes each micromono variant runs with, among off,log,otlp "
        "(default: off); otlp needs the otlp extra (pip install -e '.[otlp]')",
    )
    parser.add_argument(
        "--placement",
        choices=("same", "free"),
        default="same",
        help="same (default): every server runs on one CPU, the peers' cheapest case (a round trip between two "
        "processes costs about twice as much when they sit on different cores); free: the scheduler decides",
    )
    return parser.parse_args(argv)


def placement_cpus(placement: str) -> frozenset[int] | None:
    """The CPUs servers may use under --placement."""
    return frozenset({h.last_cpu()}) if placement == "same" else None


def chosen_n(args: argparse.Namespace) -> dict[str, int]:
    """N per variant: the defaults, divided for --quick, then any --n overrides."""
    n = {k: max(1, v // QUICK_DIVISOR) if args.quick else v for k, v in N_FULL.items()}
    for item in args.n:
        name, _, value = item.partition("=")
        if name not in n or not value.isdigit() or int(value) < 1:
            raise SystemExit(f"--n {item!r}: expected VARIANT=N with VARIANT in {','.join(VARIANTS)} and N >= 1")
        n[name] = int(value)
    return n


def main(argv: list[str] | None = None) -> int:
    """Run the bench; 0 when every run completed (whatever the bars say), 1 when one could not."""
    args = parse_args(argv)
    h.exit_on_sigterm()
    variants: list[str] = [
        name
        for base in args.only
        for name in (
            [base if mode == "off" else f"{base}+{mode}" for mode in args.tracing]
            if base in h.MICROMONO_VARIANTS
            else [base]
        )
    ]
    n = chosen_n(args)
    for name in variants:
        base, mode = split_variant(name)
        if mode != "off" and name not in n:
            n[name] = max(1, n[base] // TRACED_DIVISOR)
    repeats = args.repeats or (REPEATS_QUICK if args.quick else REPEATS_FULL)
    zeros = ZEROS_QUICK if args.quick else ZEROS_FULL
    compiled = "micromono-c" in variants
    daemons = {split_variant(name)[0] for name in variants} & set(h.MICROMONO_VARIANTS)
    if daemons and (reason := h.micromono_unavailable(args.python, compiled=compiled)):
        print(
            f"micromono variant unavailable: {reason}\nRun with --only aiohttp,frames to measure the peers alone.",
            file=sys.stderr,
        )
        return 1

    params = {
        "variants": ",".join(variants),
        "repeats": repeats,
        "zeros": zeros,
        "payload_bytes": 64,
        **{f"n_{k}": n[k] for k in variants},
        "placement": args.placement,
        "tracing": ",".join(args.tracing),
        "quick": args.quick,
    }
    report = h.Report("bench_call", params, h.versions(args.python))
    h.print_preamble("bench_call: service-to-service call, 64-byte payload", report.versions, params)

    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="bench_call-") as logs, ExitStack() as stack:
        try:
            setup = Setup(args.python, Path(logs), placement_cpus(args.placement))
            running = [start_variant(name, n[name], setup, stack) for name in variants]
            for repeat in range(repeats):
                shift = repeat % len(running)
                for variant in running[shift:] + running[:shift]:
                    samples.append(variant.measure(repeat, zeros))
                    print(f"  repeat {repeat} {variant.name:9} {samples[-1].wall_us_per_call:9.2f} µs/call")
        except (h.HarnessError, OSError) as exc:
            print(f"\nbench_call failed: {exc}", file=sys.stderr)
            return 1
    print()
    report.samples = [
        asdict(s) | {"wall_us_per_call": s.wall_us_per_call, "cpu_us_per_call": s.cpu_us_per_call} for s in samples
    ]
    report.summary = print_results(samples, variants)
    report.bars = make_bars(report.summary)
    return report.finish(args.json)


if __name__ == "__main__":
    sys.exit(main())
