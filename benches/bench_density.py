"""bench_density: how many services one daemon holds, how fast it starts them, and what each one costs idle.

For each size N (default 100, 1,000 and 10,000; --quick: 100 and 1,000), the bench writes, in a temp directory, a
services.toml with N services s0..s{N-1}. Service i runs one of four small guests (`fixtures/density_a.wat` ..
`density_d.wat`, copied into the temp directory: variant i mod 4) and serves the exact route `/s/<i>`. The daemon
runs with its defaults (file watch on) except a JSON log and its own cache_dir. Then, `--repeats` times:

1. cold: the cache directory is emptied, the daemon started (`python -m micromono serve`, through _harness.Server);
2. warm: the daemon started again on the cache the cold start filled.

Each start is timed from just before the process is created: "listening" when a socket of *that* process accepts
a connection, and "all answered" when every one of the N routes has answered `GET /s/<i>` once, with status 200
and its variant's body, on one keep-alive connection (pipelined, 64 requests at a time). The daemon binds only
after every service has an instance, so "listening" already means all are instantiated; "all answered" proves it
and includes the client's own time. After the sweep, with the daemon idle, the bench reads its VmRSS and VmSize,
counts its memory mappings (/proc/PID/maps lines) and open file descriptors, and reads the daemon's `daemon.ready`
log event: `startup_ms` splits the startup into compile, load (instantiate, install and log every service, of which
instantiate is the time inside Service.start), routes, bind and watch. "instantiate per instance" is
startup_ms.instantiate / N.

Memory per service is (RSS at N - RSS of a 1-service daemon) / (N - 1), warm starts, median over repeats.

Peers, for the idle memory of one unit of isolation:
* workerd (measured, when `peers/workerd` has its binary; sizes up to --workerd-max): one worker per service, each
  its own V8 isolate, answering "worker-<i>"; a front worker with a service binding to each routes `/s/<i>` to it.
  Per isolate: (RSS at N workers - RSS at 1) / (N - 1), after the same sweep.
* Erlang (cited, not measured: no Erlang here): a newly spawned process uses 327 words, 2,616 bytes on a 64-bit
  emulator (Erlang/OTP 27 Efficiency Guide, "Processes", https://www.erlang.org/doc/system/eff_guide_processes).
  Older guides say 309 words, measured on a 32-bit non-SMP emulator (1,232 bytes).

Bars (reported, never asserted): 10,000 services in one daemon (the largest size whose every route answered), warm
start of 1,000 services (process start -> all answered) under 2 s, idle memory per service under 200 KiB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import _harness as h
import httptools

SIZES_FULL: Final = (100, 1000, 10000)
SIZES_QUICK: Final = (100, 1000)
REPEATS_FULL, REPEATS_QUICK = 3, 1
VARIANTS: Final = ("micromono", "workerd")
GUESTS: Final = ("a", "b", "c", "d")  # fixtures/density_<x>.wat; service i runs GUESTS[i % 4]
PIPELINE: Final = 64  # requests in flight on the sweep's connection
SETTLE_S: Final = 0.5  # idle time after the sweep, before memory is read
WORKERD_MAX: Final = 1000  # workerd isolates cost ~1.4 MiB and ~11 mappings each: 10,000 would pass vm.max_map_count
WORKERD: Final = h.PEERS / "workerd" / "node_modules" / "@cloudflare" / "workerd-linux-64" / "bin" / "workerd"
ERLANG_PROCESS_BYTES: Final = 2616  # 327 words of 8 bytes, cited (module docstring)
ERLANG_SOURCE: Final = "https://www.erlang.org/doc/system/eff_guide_processes (OTP 27: 327 words)"

BAR_SERVICES: Final = 10000
BAR_WARM_1000_S: Final = 2.0
BAR_KIB_PER_SERVICE: Final = 200.0


def start_timeout_s(n: int) -> float:
    """How long a start may take before the bench gives up: 30 s plus 10 ms per service."""
    return h.START_TIMEOUT_S + 0.01 * n


# --- the sites ------------------------------------------------------------------------------------------------


def write_site(root: Path, n: int) -> Path:
    """A directory with the four guests and a services.toml of `n` services; return the manifest's path."""
    site = root / f"micromono-{n}"
    (site / "wasm").mkdir(parents=True)
    for guest in GUESTS:
        shutil.copy(h.BENCHES / "fixtures" / f"density_{guest}.wat", site / "wasm" / f"density_{guest}.wat")
    lines = [
        "# bench_density: generated; see benches/bench_density.py",
        "version = 1",
        "",
        "[daemon]",
        'listen = "127.0.0.1:0"',
        'metrics_listen = ""',
        f"cache_dir = {json.dumps(str(site / 'cache'))}",
        'log_format = "json"',
    ]
    for i in range(n):
        lines += ["", f"[services.s{i}]", f'wasm = "wasm/density_{GUESTS[i % 4]}.wat"', f'routes = ["/s/{i}"]']
    manifest = site / "services.toml"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def micromono_expected(i: int) -> bytes:
    """The start of service i's answer to GET /s/<i>."""
    return f"density-{GUESTS[i % 4]}".encode()


def write_workerd_config(root: Path, n: int, port: int) -> Path:
    """A workerd config: n workers w0..w{n-1}, each its own isolate, behind a front worker on 127.0.0.1:port."""
    worker = 'export default {{ async fetch() {{ return new Response("worker-{i}"); }} }};'
    front = (
        "export default { async fetch(request, env) {\n"
        "  const m = new URL(request.url).pathname.match(/^\\/s\\/(\\d+)$/);\n"
        '  const target = m && env["w" + m[1]];\n'
        '  return target ? target.fetch(request) : new Response("no such worker", { status: 404 });\n'
        "} };"
    )
    bindings = ", ".join(f'(name = "w{i}", service = "w{i}")' for i in range(n))
    lines = [
        'using Workerd = import "/workerd/workerd.capnp";',
        "const config :Workerd.Config = (",
        "  services = [",
        f'    (name = "front", worker = (modules = [(name = "front.js", esModule = {json.dumps(front)})], '
        f'compatibilityDate = "2024-01-01", bindings = [{bindings}])),',
    ]
    for i in range(n):
        lines.append(
            f'    (name = "w{i}", worker = (modules = [(name = "w.js", esModule = {json.dumps(worker.format(i=i))})], '
            'compatibilityDate = "2024-01-01")),'
        )
    socket_line = f'  sockets = [(name = "http", address = "127.0.0.1:{port}", http = (), service = "front")]'
    lines += ["  ],", socket_line, ");"]
    path = root / f"workerd-{n}" / "config.capnp"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


# --- the sweep ------------------------------------------------------------------------------------------------


class _Responses:
    """httptools callbacks: the (status, body) of each response on the connection, in order."""

    def __init__(self) -> None:
        self.done: list[tuple[int, bytes]] = []
        self._body: list[bytes] = []
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self._body = []

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.done.append((self.parser.get_status_code(), b"".join(self._body)))


def sweep(port: int, n: int, expected: Any, timeout_s: float) -> None:
    """GET /s/0 .. /s/{n-1} once each on one keep-alive connection, PIPELINE at a time; check every answer.

    Raises:
        HarnessError: a route did not answer 200 with its expected body, or the sweep ran past `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    with socket.create_connection((h.HOST, port), timeout=timeout_s) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        responses = _Responses()
        for first in range(0, n, PIPELINE):
            batch = range(first, min(first + PIPELINE, n))
            sock.sendall(b"".join(b"GET /s/%d HTTP/1.1\r\nHost: bench\r\n\r\n" % i for i in batch))
            while len(responses.done) < len(batch):
                if time.monotonic() > deadline:
                    raise h.HarnessError(f"the sweep of {n} routes did not finish within {timeout_s:g} s")
                data = sock.recv(1 << 16)
                if not data:
                    raise h.HarnessError(f"the server closed the connection at /s/{first + len(responses.done)}")
                responses.parser.feed_data(data)
            for i, (status, body) in zip(batch, responses.done, strict=True):
                if status != 200 or not body.startswith(expected(i)):
                    raise h.HarnessError(f"/s/{i} answered {status} {body[:80]!r}, expected 200 {expected(i)!r}...")
            responses.done.clear()


# --- one start ------------------------------------------------------------------------------------------------


@dataclass
class Start:
    """One start of one server, and what it held once idle."""

    variant: str
    services: int
    cache: str  # "cold", "warm" (micromono) or "-" (workerd)
    repeat: int
    listening_s: float
    answered_s: float
    rss_kib: int
    vm_kib: int
    maps: int
    fds: int
    threads: int
    startup_ms: dict[str, float] = field(default_factory=dict)  # micromono's daemon.ready
    limits: dict[str, Any] = field(default_factory=dict)  # micromono's daemon.limits

    @property
    def instantiate_us(self) -> float:
        """Time inside Service.start per instance, from the daemon's log (NaN when it does not say)."""
        ms = self.startup_ms.get("instantiate")
        return float("nan") if ms is None else ms * 1000 / self.services


def proc_counts(pid: int) -> tuple[int, int, int, int]:
    """(VmSize KiB, memory mappings, open file descriptors, threads) of one process."""
    vm = threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            vm = int(line.split()[1])
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    with open(f"/proc/{pid}/maps", "rb") as fh:
        maps = fh.read().count(b"\n")
    return vm, maps, len(os.listdir(f"/proc/{pid}/fd")), threads


def log_event(log_path: Path, name: str) -> dict[str, Any] | None:
    """The first JSON log line whose event is `name`, or None."""
    needle = f'"event": "{name}"'
    for line in log_path.read_text(errors="replace").splitlines():
        if needle in line and line.startswith("{"):
            try:
                event: dict[str, Any] = json.loads(line)
            except json.JSONDecodeError:
                continue
            return event
    return None


def wait_for_event(server: h.Server, name: str, timeout_s: float) -> dict[str, Any]:
    """Wait until the daemon logs `name` (daemon.ready comes after the file watch is live); return the event."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        server.check_alive()
        event = log_event(server.log_path, name)
        if event is not None:
            return event
        time.sleep(0.02)
    raise h.HarnessError(f"the daemon did not log {name} within {timeout_s:g} s:\n{server.log_tail()}")


def start_once(variant: str, n: int, cache: str, repeat: int, argv_for_port: Any, expected: Any, logs: Path) -> Start:
    """Start a server, time it to listening and to every route answered, read its idle footprint, stop it."""
    timeout = start_timeout_s(n)
    began = time.perf_counter()
    with h.Server.start(f"{variant}-{n}-{cache}-{repeat}", argv_for_port, logs, timeout_s=timeout) as server:
        listening = time.perf_counter() - began
        sweep(server.port, n, expected, timeout)
        answered = time.perf_counter() - began
        ready: dict[str, Any] = {}
        limits: dict[str, Any] = {}
        if variant == "micromono":
            ready = wait_for_event(server, "daemon.ready", timeout)
            limits = log_event(server.log_path, "daemon.limits") or {}
        time.sleep(SETTLE_S)
        server.check_alive()
        vm, maps, fds, threads = proc_counts(server.proc.pid)
        rss = server.rss_kib()
    return Start(
        variant, n, cache, repeat, listening, answered, rss, vm, maps, fds, threads,
        startup_ms=dict(ready.get("startup_ms") or {}),
        limits={k: limits.get(k) for k in ("maps", "max_map_count", "fds", "max_fds")},
    )  # fmt: skip


def run_micromono(python: str, root: Path, logs: Path, n: int, repeats: int) -> list[Start]:
    """`repeats` x (cold start, warm start) of a daemon with n services."""
    manifest = write_site(root, n)
    cache = manifest.parent / "cache"

    def argv(port: int) -> list[str]:
        return h.micromono_argv(python, manifest, port)

    starts = []
    for repeat in range(repeats):
        for state in ("cold", "warm"):
            if state == "cold":
                shutil.rmtree(cache, ignore_errors=True)
            start = start_once("micromono", n, state, repeat, argv, micromono_expected, logs)
            starts.append(start)
            print(
                f"  micromono {n:>6} {state}  listening {start.listening_s:6.2f} s  all answered "
                f"{start.answered_s:6.2f} s  RSS {start.rss_kib / 1024:7.1f} MiB  maps {start.maps:>6}  "
                f"fds {start.fds:>6}"
            )
    return starts


def run_workerd(root: Path, logs: Path, n: int, repeats: int) -> list[Start]:
    """`repeats` starts of workerd with n workers."""

    def argv(port: int) -> list[str]:
        return [str(WORKERD), "serve", str(write_workerd_config(root, n, port))]

    starts = []
    for repeat in range(repeats):
        start = start_once("workerd", n, "-", repeat, argv, lambda i: f"worker-{i}".encode(), logs)
        starts.append(start)
        print(
            f"  workerd   {n:>6}       listening {start.listening_s:6.2f} s  all answered {start.answered_s:6.2f} s"
            f"  RSS {start.rss_kib / 1024:7.1f} MiB  maps {start.maps:>6}"
        )
    return starts


# --- output ---------------------------------------------------------------------------------------------------


def pick(starts: list[Start], variant: str, n: int, cache: str) -> list[Start]:
    return [s for s in starts if s.variant == variant and s.services == n and s.cache == cache]


def per_unit_kib(starts: list[Start], variant: str, n: int, cache: str) -> float:
    """(median RSS at n - median RSS at 1) / (n - 1), in KiB (NaN when either is missing)."""
    at_n = [s.rss_kib for s in pick(starts, variant, n, cache)]
    at_1 = [s.rss_kib for s in pick(starts, variant, 1, cache)]
    if not at_n or not at_1 or n <= 1:
        return float("nan")
    return (h.median(at_n) - h.median(at_1)) / (n - 1)


def per_unit(starts: list[Start], variant: str, n: int, cache: str, attr: str) -> float:
    """(median of `attr` at n - median at 1) / (n - 1)."""
    at_n = [float(getattr(s, attr)) for s in pick(starts, variant, n, cache)]
    at_1 = [float(getattr(s, attr)) for s in pick(starts, variant, 1, cache)]
    if not at_n or not at_1 or n <= 1:
        return float("nan")
    return (h.median(at_n) - h.median(at_1)) / (n - 1)


def print_results(starts: list[Start], sizes: list[int], workerd_sizes: list[int]) -> dict[str, Any]:
    summary: dict[str, Any] = {"micromono": {}, "workerd": {}}
    print("## start-up: process start -> listening -> every route answered (median [min, max] over repeats)\n")
    rows = []
    for n in [1, *sizes]:
        for cache in ("cold", "warm"):
            group = pick(starts, "micromono", n, cache)
            if not group:
                continue
            compile_ms = [s.startup_ms["compile"] for s in group if "compile" in s.startup_ms]
            inst = [s.instantiate_us for s in group]
            rows.append([
                f"{n:,}", cache, h.spread([s.listening_s for s in group], 2),
                h.spread([s.answered_s for s in group], 2),
                h.spread(compile_ms) if compile_ms else "n/a",
                h.spread(inst, 1),
                h.fmt(h.median([s.answered_s for s in group]) / n * 1e6, 0),
            ])  # fmt: skip
            summary["micromono"].setdefault(str(n), {})[cache] = {
                "listening_s": h.median([s.listening_s for s in group]),
                "answered_s": h.median([s.answered_s for s in group]),
                "compile_ms": h.median(compile_ms) if compile_ms else None,
                "instantiate_us_per_instance": h.median(inst),
            }
    print(h.table(
        ["services", "cache", "listening s", "all answered s", "compile ms", "instantiate µs/instance",
         "answered µs/service"], rows))  # fmt: skip

    print("\n## footprint once idle (warm starts, medians); per service = (value at N - value at 1) / (N - 1)\n")
    rows = []
    for n in [1, *sizes]:
        group = pick(starts, "micromono", n, "warm")
        if not group:
            continue
        kib = per_unit_kib(starts, "micromono", n, "warm")
        rows.append([
            f"{n:,}", h.fmt(h.median([s.rss_kib for s in group]) / 1024, 1), h.fmt(kib, 1),
            h.fmt(h.median([s.maps for s in group])), h.fmt(per_unit(starts, "micromono", n, "warm", "maps"), 2),
            h.fmt(h.median([s.fds for s in group])), h.fmt(per_unit(starts, "micromono", n, "warm", "fds"), 2),
            h.fmt(per_unit(starts, "micromono", n, "warm", "vm_kib") / 1024 / 1024, 2),
        ])  # fmt: skip
        summary["micromono"].setdefault(str(n), {})["footprint"] = {
            "rss_kib": h.median([s.rss_kib for s in group]),
            "kib_per_service": kib,
            "maps": h.median([s.maps for s in group]),
            "maps_per_service": per_unit(starts, "micromono", n, "warm", "maps"),
            "fds": h.median([s.fds for s in group]),
            "fds_per_service": per_unit(starts, "micromono", n, "warm", "fds"),
            "vm_gib_per_service": per_unit(starts, "micromono", n, "warm", "vm_kib") / 1024 / 1024,
        }
    print(h.table(
        ["services", "RSS MiB", "RSS KiB/service", "maps", "maps/service", "fds", "fds/service",
         "virtual GiB/service"], rows))  # fmt: skip

    print("\n## idle memory of one unit of isolation\n")
    rows = []
    for n in sizes:
        if n > 1 and pick(starts, "micromono", n, "warm"):
            rows.append(["micromono service (Wasm instance)", f"{n:,}", h.fmt(per_unit_kib(starts, "micromono", n,
                         "warm"), 1), "measured"])  # fmt: skip
    for n in workerd_sizes:
        group = pick(starts, "workerd", n, "-")
        if n > 1 and group:
            kib = per_unit_kib(starts, "workerd", n, "-")
            summary["workerd"][str(n)] = {
                "kib_per_isolate": kib,
                "answered_s": h.median([s.answered_s for s in group]),
                "rss_kib": h.median([s.rss_kib for s in group]),
                "maps": h.median([s.maps for s in group]),
            }
            rows.append(
                [
                    "workerd worker (V8 isolate)",
                    f"{n:,}",
                    h.fmt(kib, 1),
                    f"measured; {n:,} workers all answered in {h.median([s.answered_s for s in group]):.2f} s",
                ]
            )
    rows.append(["Erlang process", "-", h.fmt(ERLANG_PROCESS_BYTES / 1024, 1), f"cited, not measured: {ERLANG_SOURCE}"])
    print(h.table(["unit", "N", "idle KiB each", "source"], rows))
    return summary


def make_bars(starts: list[Start], sizes: list[int]) -> list[h.Bar]:
    answered = [n for n in sizes if pick(starts, "micromono", n, "warm")]
    largest = max(answered, default=0)
    warm_1000 = pick(starts, "micromono", 1000, "warm")
    memory_at = max((n for n in answered if n >= 1000), default=largest)
    return [
        h.Bar("services answering in one daemon", float(largest) if BAR_SERVICES in sizes else None,
              BAR_SERVICES, True),
        h.Bar("warm start of 1,000 services, all answered", h.median([s.answered_s for s in warm_1000])
              if warm_1000 else None, BAR_WARM_1000_S, False, " s"),
        h.Bar(f"idle memory per service (N = {memory_at:,})", per_unit_kib(starts, "micromono", memory_at, "warm")
              if memory_at > 1 else None, BAR_KIB_PER_SERVICE, False, " KiB"),
    ]  # fmt: skip


def limits_line() -> str:
    """The limits the daemons start under (the daemon may raise its soft RLIMIT_NOFILE itself)."""
    try:
        maps = Path("/proc/sys/vm/max_map_count").read_text().strip()
    except OSError:
        maps = "unknown"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return f"vm.max_map_count={maps}, RLIMIT_NOFILE soft={soft} hard={hard}"


# --- main -----------------------------------------------------------------------------------------------------


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(part.replace("_", "")) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers of services, got {text!r}") from None
    if not sizes or sizes[0] < 2 or sizes[-1] > 100_000:
        raise argparse.ArgumentTypeError(f"sizes must be 2..100000, got {text!r}")
    return sizes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Density and start-up: a daemon with N generated services, cold and warm compiled cache; time "
        "to every service answering, memory per service, instantiate time; workerd isolates measured and Erlang "
        "processes cited for comparison.",
        epilog=f"Defaults: sizes {','.join(map(str, SIZES_FULL))}, {REPEATS_FULL} repeats; --quick: sizes "
        f"{','.join(map(str, SIZES_QUICK))}, {REPEATS_QUICK} repeat. A 1-service daemon is always measured too.",
    )
    h.add_common_args(parser, VARIANTS)
    parser.add_argument("--sizes", type=parse_sizes, metavar="N,N,...", help="numbers of services to start")
    parser.add_argument(
        "--workerd-max", type=int, default=WORKERD_MAX, metavar="N",
        help=f"largest size workerd is run at (default {WORKERD_MAX}: each isolate costs ~1.4 MiB and ~11 mappings)",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the bench; 0 when every run completed (whatever the bars say), 1 when one could not."""
    args = parse_args(argv)
    h.exit_on_sigterm()
    sizes: list[int] = args.sizes or list(SIZES_QUICK if args.quick else SIZES_FULL)
    repeats = args.repeats or (REPEATS_QUICK if args.quick else REPEATS_FULL)
    variants: list[str] = args.only
    if "micromono" in variants and (reason := h.micromono_unavailable(args.python)):
        print(f"micromono unavailable: {reason}", file=sys.stderr)
        return 1
    workerd_sizes: list[int] = []
    if "workerd" in variants:
        if WORKERD.exists():
            workerd_sizes = [n for n in sizes if n <= args.workerd_max]
        else:
            print(f"workerd not found at {WORKERD} (npm ci --prefix benches/peers/workerd); its row is skipped")
    params = {
        "sizes": ",".join(map(str, sizes)),
        "repeats": repeats,
        "variants": ",".join(variants),
        "workerd_sizes": ",".join(map(str, workerd_sizes)) or "none",
        "guests": "fixtures/density_{a,b,c,d}.wat, service i runs variant i mod 4",
        "routes": "exact /s/<i>",
        "sweep": f"1 keep-alive connection, {PIPELINE} pipelined requests at a time",
        "watch": "on (the default)",
        "limits": limits_line(),
        "quick": args.quick,
    }
    report = h.Report("bench_density", params, h.versions(args.python))
    h.print_preamble("bench_density: services per daemon, start-up and idle memory", report.versions, params)
    starts: list[Start] = []
    with tempfile.TemporaryDirectory(prefix="bench_density-") as tmp:
        root, logs = Path(tmp) / "sites", Path(tmp) / "logs"
        root.mkdir()
        logs.mkdir()
        try:
            if "micromono" in variants:
                for n in [1, *sizes]:
                    starts += run_micromono(args.python, root, logs, n, repeats)
            if workerd_sizes:
                for n in [1, *workerd_sizes]:
                    starts += run_workerd(root, logs, n, repeats)
        except (h.HarnessError, OSError) as exc:
            print(f"\nbench_density failed: {exc}", file=sys.stderr)
            return 1
    print()
    report.summary = print_results(starts, sizes, workerd_sizes)
    report.bars = make_bars(starts, sizes)
    print("\n## bars (reported, not asserted)\n")
    print(h.bars_table(report.bars))
    print("\nloadavg at end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    if args.json:
        report.samples = [asdict(s) | {"instantiate_us": s.instantiate_us} for s in starts]
        report.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
