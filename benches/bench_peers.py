"""bench_peers: micromono against Cloudflare workerd and two-process Python pairs, calls and ingress in one run.

One command, two phases, one table each, the bars of issue 6 under them.

Calls: bench_call's method, Driver and servers. The bench sends `POST /run` with body N to a front; the front makes
N sequential calls with a 64-byte payload to an echoing callee, checks each reply's length and answers `ok N`.
Per call: wall (t(N) - t(0)) / N and server CPU (all the run's server processes, from /proc). Runs:
  micromono      two WAT services in one daemon calling through `micromono.call`       one process, pinned to one CPU
  micromono-c    the same on the daemon's compiled path (built and current)             one process, pinned to one CPU
  workerd-rpc    workerd: front.js calls echo.js through a service binding, JS RPC      one process, pinned to one CPU
  workerd-fetch  the same binding called with `fetch` (`POST /echo`)                    one process, pinned to one CPU
  frames         raw asyncio streams + uvloop, two processes, length-prefixed frames    1-core and 2-core
  aiohttp        aiohttp + uvloop, two processes, one keep-alive connection             1-core and 2-core
A two-process pair runs twice: "1-core" pins front and back to the same CPU (the one the single-process runs use),
"2-core" pins the front there and the back to another CPU. The placement column shows the CPUs each server process
was allowed, read back from the kernel. All call servers start once; each repeat measures every run, in an order
rotated per repeat; ratios to each daemon variant are taken per repeat, then their median.

Ingress: bench_ingress's method. `wrk -t1 -c32` POSTs 64 bytes to `/echo` of a fresh, verified, warmed-up server
per run; micromono, micromono-c, aiohttp and floor run exactly as in bench_ingress, and workerd is echo.js on
workerd's own HTTP ingress. Placement is free (as in bench_ingress); "server cores" shows what each server used.
Repeats interleave the variants; req/s ratios are taken per repeat, then their median.

workerd comes from npm: benches/peers/workerd pins one version (package.json, package-lock.json). Without it the
bench prints the command that installs it and skips the workerd variants.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final

import _harness as h
import bench_call as call
import bench_ingress as ingress

DAEMONS: Final = tuple(h.MICROMONO_VARIANTS)  # micromono (pure Python), micromono-c (the compiled path)
VARIANTS: Final = (*DAEMONS, "frames", "aiohttp", "workerd-fetch", "workerd-rpc", "workerd", "floor")
CALL_VARIANTS: Final = (*DAEMONS, "workerd-rpc", "workerd-fetch", "frames", "aiohttp")
INGRESS_VARIANTS: Final = (*DAEMONS, "aiohttp", "workerd", "floor")
PAIRS: Final = ("frames", "aiohttp")  # the two-process call variants, run on one core and on two

WORKERD_DIR: Final = h.PEERS / "workerd"
WORKERD_CONFIG: Final = WORKERD_DIR / "workerd.capnp"
WORKERD_INSTALL: Final = "npm ci --prefix benches/peers/workerd"
WORKERD_CONSTS: Final = {"workerd-fetch": "fetchConfig", "workerd-rpc": "rpcConfig", "workerd": "echoConfig"}
ELF_MAGIC: Final = b"\x7fELF"

# N per call run: t(N) about 0.5-1 s each on the 2-core VM. --quick divides by bench_call's QUICK_DIVISOR.
N_FULL: Final = {
    **{name: call.N_FULL[name] for name in DAEMONS},
    "workerd-rpc": 6_000,  # ~85 µs per call
    "workerd-fetch": 4_000,  # ~130-200 µs per call
    "frames 1-core": call.N_FULL["frames"],
    "frames 2-core": 8_000,  # ~70-80 µs per call: every message wakes the other core
    "aiohttp 1-core": call.N_FULL["aiohttp"],
    "aiohttp 2-core": 2_000,
}

# Bars of issue 6 (shown as PASS/FAIL, never asserted).
BAR_CALL_US: Final = 2.5
BAR_WORKERD_RPC_RATIO: Final = 15.0
BAR_FRAMES_1CORE_RATIO: Final = 8.0
BAR_INGRESS_AIOHTTP_RATIO: Final = 4.0
BAR_INGRESS_WORKERD_RATIO: Final = 8.0
BAR_INGRESS_P99_US: Final = ingress.BAR_P99_US


@dataclass(frozen=True, slots=True)
class Workerd:
    """The workerd binary npm installed, and its version."""

    binary: Path
    version: str

    def argv(self, const: str, port: int) -> list[str]:
        """`workerd serve` of one config constant of workerd.capnp, its socket on 127.0.0.1:port."""
        return [str(self.binary), "serve", str(WORKERD_CONFIG), const, "--socket-addr", f"http={h.HOST}:{port}"]


def find_workerd() -> Workerd | str:
    """The workerd installed in benches/peers/workerd/node_modules, or why there is none (one line).

    The native binary is taken from the platform package (`@cloudflare/workerd-<os>-<arch>`), so the server is
    workerd itself and not a node launcher in front of it.
    """
    modules = WORKERD_DIR / "node_modules"
    candidates = [*sorted(modules.glob("@cloudflare/workerd-*/bin/workerd")), modules / "workerd" / "bin" / "workerd"]
    for binary in candidates:
        try:
            with binary.open("rb") as file:
                if file.read(4) != ELF_MAGIC or not os.access(binary, os.X_OK):
                    continue
        except OSError:
            continue
        try:
            done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"`{binary} --version` failed: {exc}"
        if done.returncode != 0:
            return f"`{binary} --version` exited with code {done.returncode}: {done.stderr.strip()[:200]}"
        return Workerd(binary, f"{npm_version()} ({done.stdout.strip()})")
    return f"no workerd binary under {modules.relative_to(h.REPO)}"


def npm_version() -> str:
    """The version of the installed workerd npm package (what package.json pins)."""
    try:
        return str(json.loads((WORKERD_DIR / "node_modules" / "workerd" / "package.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "unknown"


# --- calls ------------------------------------------------------------------------------------------------


class Driver(call.Driver):
    """bench_call's driver, which reconnects, outside the timed part, when the server has closed the idle connection.

    workerd closes an HTTP connection idle for 15 s, and with seven runs rotated per repeat a run can sit idle that
    long between two of its measurements.
    """

    reconnects = 0

    def run(self, n: int) -> float:
        """Reconnect if the server closed the connection, then send N as bench_call's driver does."""
        sock = self.conn.sock
        if sock is not None and select.select([sock], [], [], 0)[0]:  # readable while idle: the server closed it
            self.conn.close()
            self.conn.connect()
            self.reconnects += 1
        return super().run(n)


@dataclass(frozen=True, slots=True)
class CallRun:
    """One row of the call table: a variant and where its servers run."""

    label: str  # "micromono", "micromono-c", "workerd-rpc", "frames 1-core", "frames 2-core", ...
    variant: str  # the --only name
    cores: int  # 1: every server of the run on one CPU; 2: front and back on two different CPUs


def plan_calls(variants: list[str], cpus: list[int]) -> tuple[list[CallRun], list[str]]:
    """The call runs of the chosen variants, and notes on what cannot run on this machine."""
    runs: list[CallRun] = []
    notes: list[str] = []
    for name in CALL_VARIANTS:
        if name not in variants:
            continue
        if name not in PAIRS:
            runs.append(CallRun(name, name, 1))
            continue
        runs.append(CallRun(f"{name} 1-core", name, 1))
        if len(cpus) > 1:
            runs.append(CallRun(f"{name} 2-core", name, 2))
        else:
            notes.append(f"{name} 2-core skipped: this process may use only CPU {cpus[0]}")
    return runs, notes


def start_call_run(
    run: CallRun, n: int, python: str, log_dir: Path, workerd: Workerd | None, stack: ExitStack
) -> call.Variant:
    """Start a call run's servers pinned as `run.cores` says, connect a driver to its front, warm it up.

    The front (or the only process) runs on the highest CPU, as in bench_call; a 2-core back on the lowest.
    """
    cpus = sorted(os.sched_getaffinity(0))
    run_dir = log_dir / run.label.replace(" ", "_")
    run_dir.mkdir()
    home = call.Setup(python, run_dir, frozenset({cpus[-1]}))
    if run.variant in WORKERD_CONSTS:
        assert workerd is not None
        servers = [home.start(run.variant, partial(workerd.argv, WORKERD_CONSTS[run.variant]), stack)]
    elif run.cores == 1:
        servers = call.start_servers(run.variant, home, stack)
    else:
        away = call.Setup(python, run_dir, frozenset({cpus[0]}))
        back = away.start(f"{run.variant}_back", partial(call.peer_argv, python, f"{run.variant}_back.py"), stack)
        front_argv = partial(call.peer_argv, python, f"{run.variant}_front.py", back_port=back.port)
        servers = [home.start(f"{run.variant}_front", front_argv, stack), back]
    driver = Driver(run.label, servers[0].port)
    stack.callback(driver.close)
    for _ in range(3):
        driver.run(0)
    driver.run(max(1, n // 10))  # warm-up: connections, JIT, caches, lazy imports
    return call.Variant(run.label, servers, driver, n)


def placement(variant: call.Variant) -> str:
    """Where the run's server processes may run, read back from the kernel: "1 proc, CPU 1", "2 procs, CPUs 1+0"."""
    allowed = []
    for server in variant.servers:
        pids = server.pids()
        cpus = set().union(*(os.sched_getaffinity(pid) for pid in pids))
        allowed.append(",".join(str(cpu) for cpu in sorted(cpus)))
    if len(allowed) == 1:
        return f"1 proc, CPU {allowed[0]}"
    return f"{len(allowed)} procs, CPUs {'+'.join(allowed)}"


def run_calls(
    runs: list[CallRun], args: argparse.Namespace, log_dir: Path, workerd: Workerd | None
) -> tuple[list[call.Sample], dict[str, dict[str, Any]]]:
    """Start every call run, measure them interleaved; return the samples and, per run, placement and RSS."""
    n = {run.label: N_FULL[run.label] // call.QUICK_DIVISOR if args.quick else N_FULL[run.label] for run in runs}
    repeats = args.repeats or (call.REPEATS_QUICK if args.quick else call.REPEATS_FULL)
    zeros = call.ZEROS_QUICK if args.quick else call.ZEROS_FULL
    samples: list[call.Sample] = []
    with ExitStack() as stack:
        running = [start_call_run(run, n[run.label], args.python, log_dir, workerd, stack) for run in runs]
        where = {v.name: placement(v) for v in running}
        for repeat in range(repeats):
            shift = repeat % len(running)
            for variant in running[shift:] + running[:shift]:
                samples.append(variant.measure(repeat, zeros))
                print(f"  calls   repeat {repeat} {variant.name:14} {samples[-1].wall_us_per_call:9.2f} µs/call",
                      flush=True)  # fmt: skip
        info = {v.name: {"placement": where[v.name], "rss_kib": sum(s.rss_kib() for s in v.servers)} for v in running}
        for v in running:
            info[v.name]["reconnects"] = v.driver.reconnects if isinstance(v.driver, Driver) else 0
    return samples, info


def notes_on_calls(info: dict[str, dict[str, Any]]) -> list[str]:
    """Notes on what happened during the call runs that the figures alone do not show."""
    notes = []
    for label, facts in info.items():
        if facts["reconnects"]:
            times = "once" if facts["reconnects"] == 1 else f"{facts['reconnects']} times"
            notes.append(f"{label}: the driver reconnected {times} (the server had closed the idle connection), "
                         "outside the timed requests")  # fmt: skip
    return notes


def print_calls(samples: list[call.Sample], runs: list[CallRun], info: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Print the call table and the ratios to each daemon variant; return the summary for the JSON and the bars."""
    rows: list[list[str]] = []
    figures: dict[str, Any] = {}
    for run in runs:
        mine = [s for s in samples if s.variant == run.label]
        wall = [s.wall_us_per_call for s in mine]
        cpu = [s.cpu_us_per_call for s in mine]
        rss_mib = info[run.label]["rss_kib"] / 1024
        rows.append([
            run.label,
            info[run.label]["placement"],
            f"{mine[0].n:,}",
            h.spread(wall, 2),
            h.spread(cpu, 2),
            h.fmt(h.median([h.median(s.t0_s) * 1e6 for s in mine])),
            h.fmt(h.median([s.server_cores for s in mine]), 2),
            h.fmt(rss_mib, 1),
        ])  # fmt: skip
        figures[run.label] = {
            "placement": info[run.label]["placement"],
            "n": mine[0].n,
            "wall_us_per_call": h.median(wall),
            "cpu_us_per_call": h.median(cpu),
            "rss_mib": rss_mib,
        }
    print("## calls: one service calling another, 64-byte payload (median [min, max] over repeats)\n")
    headers = ["variant", "placement", "N", "wall µs/call", "server CPU µs/call", "t(0) µs", "server cores",
               "RSS MiB"]  # fmt: skip
    print(h.table(headers, rows))

    ratios: dict[str, Any] = {}
    ratio_rows = []
    for den in DAEMONS:
        for run in runs:
            if run.label in DAEMONS:
                continue
            wall = call.per_repeat_ratio(samples, run.label, den, "wall_us_per_call")
            cpu = call.per_repeat_ratio(samples, run.label, den, "cpu_us_per_call")
            if wall:
                label = f"{run.label} / {den}"
                ratios[label] = {"wall_per_repeat": wall, "wall": h.median(wall), "cpu": h.median(cpu)}
                ratio_rows.append([label, " ".join(h.fmt(v, 1) for v in wall), h.fmt(h.median(wall), 1),
                                   h.fmt(h.median(cpu), 1)])  # fmt: skip
    if ratio_rows:
        print("\n## calls: ratios to the daemon, same repeat (how many times cheaper micromono is)\n")
        print(h.table(["ratio", "wall, per repeat", "wall, median", "CPU, median"], ratio_rows))
    return {"calls": figures, "call_ratios": ratios}


# --- ingress ----------------------------------------------------------------------------------------------


def measure_workerd_ingress(workerd: Workerd, repeat: int, settings: argparse.Namespace, log_dir: Path) -> ingress.Run:
    """bench_ingress.measure for workerd's echo: a fresh server, verified, warmed up, one wrk run, stopped."""
    return ingress.measure("workerd", repeat, settings, log_dir, partial(workerd.argv, WORKERD_CONSTS["workerd"]))


def run_ingress(
    names: list[str], settings: argparse.Namespace, log_dir: Path, workerd: Workerd | None
) -> list[ingress.Run]:
    """Every ingress variant once per repeat, in an order rotated per repeat, each against a fresh server."""
    runs: list[ingress.Run] = []
    for repeat in range(settings.repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            if name == "workerd":
                assert workerd is not None
                runs.append(measure_workerd_ingress(workerd, repeat, settings, log_dir))
            else:
                runs.append(ingress.measure(name, repeat, settings, log_dir))
            r = runs[-1]
            print(f"  ingress repeat {repeat} {name:9} {r.wrk.rps:10,.0f} req/s  p99 {r.wrk.p99_us:,.0f} µs  "
                  f"{r.cpu_us_per_request:.2f} CPU µs/req  errors {r.wrk.error_count}", flush=True)  # fmt: skip
    return runs


def print_ingress(runs: list[ingress.Run], names: list[str]) -> dict[str, Any]:
    """bench_ingress's tables for all the variants, then the daemons against workerd per repeat; return the summary."""
    summary = ingress.print_results(runs, names)
    daemons = [name for name in DAEMONS if name in names]
    if daemons and "workerd" in names:
        values = {name: ingress.per_repeat_ratios(runs, name, "workerd") for name in daemons}
        rps = {(r.repeat, r.variant): r.wrk.rps for r in runs}
        rows = [
            [str(rep), *(h.fmt(rps[rep, name]) for name in [*daemons, "workerd"]),
             *(h.fmt(values[name][rep], 2) for name in daemons)]
            for rep in sorted({r.repeat for r in runs})
        ]  # fmt: skip
        rows.append(["median", *("" for _ in [*daemons, "workerd"]),
                     *(h.fmt(h.median(list(values[name].values())), 2) for name in daemons)])  # fmt: skip
        print("\n## req/s against workerd, same repeat\n")
        headers = ["repeat", *(f"{name} req/s" for name in [*daemons, "workerd"]), *(f"{n} / workerd" for n in daemons)]
        print(h.table(headers, rows))
        for name in daemons:
            per_repeat = list(values[name].values())
            ratio = {"per_repeat": per_repeat, "median": h.median(per_repeat)}
            summary.setdefault("ratios", {})[f"{name}/workerd"] = ratio
    return summary


# --- bars and the command line ----------------------------------------------------------------------------


def make_bars(summary: dict[str, Any]) -> list[h.Bar]:
    """The bars of issue 6, from the summary (a bar whose variants did not run is n/a)."""
    calls, ratios, ing = summary.get("calls", {}), summary.get("call_ratios", {}), summary.get("ingress", {})
    ingress_ratios = ing.get("ratios", {})
    bars = []
    for name in DAEMONS:
        p99 = ing[name]["p99_us"] if name in ing else None
        bars += [
            h.Bar(f"call: {name}, wall", calls.get(name, {}).get("wall_us_per_call"), BAR_CALL_US, False, " µs"),
            h.Bar(f"call: workerd-rpc / {name}, wall", ratios.get(f"workerd-rpc / {name}", {}).get("wall"),
                  BAR_WORKERD_RPC_RATIO, True, "x"),
            h.Bar(f"call: frames 1-core / {name}, wall", ratios.get(f"frames 1-core / {name}", {}).get("wall"),
                  BAR_FRAMES_1CORE_RATIO, True, "x"),
            h.Bar(f"ingress: {name} / aiohttp req/s", ingress_ratios.get(f"{name}/aiohttp", {}).get("median"),
                  BAR_INGRESS_AIOHTTP_RATIO, True, "x"),
            h.Bar(f"ingress: {name} / workerd req/s", ingress_ratios.get(f"{name}/workerd", {}).get("median"),
                  BAR_INGRESS_WORKERD_RATIO, True, "x"),
            h.Bar(f"ingress: {name} p99", p99, BAR_INGRESS_P99_US, False, " µs"),
        ]  # fmt: skip
    return bars


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; see --help."""
    parser = argparse.ArgumentParser(
        description="micromono against workerd (npm) and two-process Python pairs: per-call cost of a service "
        "calling another (64-byte payload), and wrk -t1 -c32 on a 64-byte HTTP echo, in one run.",
        epilog=f"Calls: N = {N_FULL}, {call.REPEATS_FULL} repeats; ingress: {ingress.REPEATS_FULL} repeats x "
        f"{ingress.DURATION_FULL_S} s after {ingress.WARMUP_FULL_S} s. --quick: N / {call.QUICK_DIVISOR}, "
        f"{call.REPEATS_QUICK} call repeats, {ingress.REPEATS_QUICK} x {ingress.DURATION_QUICK_S} s ingress. "
        f"--repeats sets both. workerd: install with `{WORKERD_INSTALL}`.",
    )
    h.add_common_args(parser, VARIANTS)
    parser.add_argument("--duration", type=int, metavar="S", help="seconds of each measured ingress wrk run")
    parser.add_argument("--warmup", type=int, metavar="S", help="seconds of the wrk warm-up before each ingress run")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the bench; 0 when every run completed (whatever the bars say), 1 when one could not."""
    args = parse_args(argv)
    h.exit_on_sigterm()
    variants: list[str] = args.only
    compiled = "micromono-c" in variants
    if set(variants) & set(DAEMONS) and (reason := h.micromono_unavailable(args.python, compiled=compiled)):
        print(f"micromono variant unavailable: {reason}\nRun with --only naming the peers to measure them alone.",
              file=sys.stderr)  # fmt: skip
        return 1
    notes: list[str] = []
    workerd: Workerd | None = None
    if any(name in WORKERD_CONSTS for name in variants):
        found = find_workerd()
        if isinstance(found, Workerd):
            workerd = found
        else:
            notes.append(f"workerd variants skipped: {found}. Install workerd with: {WORKERD_INSTALL}")
            print(notes[-1], file=sys.stderr)
            variants = [name for name in variants if name not in WORKERD_CONSTS]
    ingress_names: list[str] = [name for name in INGRESS_VARIANTS if name in variants]
    if ingress_names and shutil.which("wrk") is None:
        notes.append("ingress skipped: wrk is not on the PATH (`make install` installs it)")
        ingress_names = []
    call_runs, call_notes = plan_calls(variants, sorted(os.sched_getaffinity(0)))
    notes += call_notes
    settings = argparse.Namespace(
        python=args.python,
        repeats=args.repeats or (ingress.REPEATS_QUICK if args.quick else ingress.REPEATS_FULL),
        duration=args.duration or (ingress.DURATION_QUICK_S if args.quick else ingress.DURATION_FULL_S),
        warmup=args.warmup or (ingress.WARMUP_QUICK_S if args.quick else ingress.WARMUP_FULL_S),
    )

    params = {
        "calls": ",".join(run.label for run in call_runs) or "none",
        "call_repeats": args.repeats or (call.REPEATS_QUICK if args.quick else call.REPEATS_FULL),
        "ingress": ",".join(ingress_names) or "none",
        "ingress_repeats": settings.repeats,
        "duration_s": settings.duration,
        "warmup_s": settings.warmup,
        "payload_bytes": 64,
        "quick": args.quick,
    }
    vers = h.versions(args.python) | ({"workerd": workerd.version} if workerd else {})
    report = h.Report("bench_peers", params, vers)
    h.print_preamble("bench_peers: micromono against workerd and two-process Python peers", vers, params)
    for note in notes:
        print(f"note: {note}")
    if notes:
        print()

    summary: dict[str, Any] = {"notes": notes}
    samples: list[call.Sample] = []
    info: dict[str, dict[str, Any]] = {}
    runs: list[ingress.Run] = []
    with tempfile.TemporaryDirectory(prefix="bench_peers-") as logs:
        try:
            if call_runs:
                samples, info = run_calls(call_runs, args, Path(logs), workerd)
            if ingress_names:
                runs = run_ingress(ingress_names, settings, Path(logs), workerd)
        except (h.HarnessError, OSError) as exc:
            print(f"\nbench_peers failed: {exc}", file=sys.stderr)
            return 1
    print()
    report.samples = [
        {"phase": "call"} | asdict(s) | {"wall_us_per_call": s.wall_us_per_call, "cpu_us_per_call": s.cpu_us_per_call}
        for s in samples
    ] + [{"phase": "ingress"} | r.as_json() for r in runs]
    if call_runs:
        summary |= print_calls(samples, call_runs, info)
        summary["notes"] += notes_on_calls(info)
        for note in notes_on_calls(info):
            print(f"\nnote: {note}")
        print()
    if ingress_names:
        summary["ingress"] = print_ingress(runs, ingress_names)
        if any(r.wrk.error_count for r in runs):
            print("\nWARNING: some ingress runs had wrk errors (see the errors column); their figures are suspect.")
    report.summary = summary
    report.bars = make_bars(summary)
    return report.finish(args.json)


if __name__ == "__main__":
    sys.exit(main())
