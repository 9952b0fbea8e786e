"""bench_sdks: what each guest language's SDK costs, measured on its echo service.

Per language (C: examples/build/echo.wasm, Zig: echo_zig.wasm, Rust: echo_rust.wasm, AssemblyScript:
echo_assemblyscript.wasm; a language whose file `make examples` did not build is skipped with a note):

  size      the echo service's .wasm, in bytes
  compile   the time the daemon takes to compile it: `micromono.engine.Engine.compile` (read, validate, compile with
            the daemon's wasmtime Config, check the ABI, pre-link), uncached, in a fresh Engine each time; median of
            the repeats. bench_call's WAT back is compiled too, for reference (from text)
  per call  bench_call's method: bench_call's front (benches/fixtures/call_front.wat, only its target renamed) calls the
            language's echo N times with a 64-byte payload; per call = (t(N) - t(0)) / N. Every language's front and
            back, and bench_call's own WAT back (fixtures/call_back.wat, which replies with its inbox: no copy), run
            side by side in one daemon, measured in an order rotated per repeat
  overhead  a language's per-call wall time minus the WAT back's, in the same repeat; the median of those (and the
            same for the daemon's CPU time, which a shared machine disturbs less; 10 ms ticks over N calls)

Bar (met/missed, never asserted): an SDK adds at most 0.3 µs per call over the WAT back.
"""

from __future__ import annotations

import argparse
import gc
import http.client
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final

import _harness as h
from bench_actors import Bar

BUILD: Final = h.REPO / "examples" / "build"
#: Each language's echo service (examples/echo.c, examples/echo.zig, and the Rust and AssemblyScript SDKs' own).
ECHOES: Final = {
    "c": BUILD / "echo.wasm",
    "zig": BUILD / "echo_zig.wasm",
    "rust": BUILD / "echo_rust.wasm",
    "assemblyscript": BUILD / "echo_assemblyscript.wasm",
}
WAT: Final = "wat"  # the reference back: bench_call's
WAT_BACK: Final = h.BENCHES / "fixtures" / "call_back.wat"
FRONT: Final = h.BENCHES / "fixtures" / "call_front.wat"
PAYLOAD_BYTES: Final = 64

N_FULL: Final = 200_000  # bench_call's N for micromono: t(N) takes ~0.5 s
QUICK_DIVISOR: Final = 10
REPEATS_FULL, REPEATS_QUICK = 7, 2
ZEROS_FULL, ZEROS_QUICK = 10, 3  # N = 0 requests per repeat; their median is t(0)
COMPILES_FULL, COMPILES_QUICK = 10, 3
REQUEST_TIMEOUT_S: Final = 120.0

BAR_OVERHEAD_US: Final = 0.3


# --- size and compile time ---------------------------------------------------------------------------------------


class _NoHost:
    """A Host for compiling only: no guest runs, so no import is ever called."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected host call {name} while only compiling")


def compile_times(path: Path, repeats: int) -> list[float]:
    """Seconds to compile `path` as the daemon does, uncached, each in a fresh Engine (so nothing is shared)."""
    sys.path.insert(0, str(h.REPO))
    from micromono.engine import Engine

    times = []
    for _ in range(repeats):
        # The wasmtime Config is the same on both paths; the pure one needs nothing built.
        with Engine(_NoHost(), cache_dir=None, compiled=False) as engine:  # type: ignore[arg-type]
            gc.collect()
            gc.disable()
            try:
                start = time.perf_counter()
                engine.compile("echo", path)
                times.append(time.perf_counter() - start)
            finally:
                gc.enable()
    return times


# --- per call ----------------------------------------------------------------------------------------------------


def front_source(target: str) -> str:
    """bench_call's front, calling `target` instead of "back" (the name sits in [16, 64) of its memory)."""
    source = FRONT.read_text()
    name, length = '(data (i32.const 16) "back")', "(global $TARGET_LEN i32 (i32.const 4))"
    if name not in source or length not in source or len(target) > 48:
        raise h.HarnessError(f"{FRONT} no longer has the target this bench renames; update front_source()")
    return source.replace(name, f'(data (i32.const 16) "{target}")').replace(
        length, f"(global $TARGET_LEN i32 (i32.const {len(target)}))"
    )


def write_manifest(directory: Path, backs: dict[str, Path]) -> Path:
    """One daemon: per variant, `front_<v>` on /run/<v> calling `back_<v>` (its echo)."""
    lines = ["version = 1", "", "[daemon]", 'listen = "127.0.0.1:0"', 'metrics_listen = ""']
    for variant, back in backs.items():
        front = directory / f"front_{variant}.wat"
        front.write_text(front_source(f"back_{variant}"))
        lines += [
            "",
            f"[services.front_{variant}]",
            f'wasm = "{front}"',
            f'routes = ["/run/{variant}"]',
            f'calls = ["back_{variant}"]',
            "call_timeout = 60.0",
            "",
            f"[services.back_{variant}]",
            f'wasm = "{back}"',
        ]
    path = directory / "services.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Driver:
    """One keep-alive HTTP/1.1 connection to the daemon, sending `POST /run/<variant>` with N."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection(h.HOST, port, timeout=REQUEST_TIMEOUT_S)

    def run(self, variant: str, n: int) -> float:
        """Send N to the variant's front, check the answer is 200 `ok N`, return the wall time in seconds."""
        start = time.perf_counter()
        self.conn.request("POST", f"/run/{variant}", body=str(n).encode(), headers={"Content-Type": "text/plain"})
        resp = self.conn.getresponse()
        body = resp.read()
        elapsed = time.perf_counter() - start
        if resp.status != 200 or body != f"ok {n}".encode():
            raise h.HarnessError(f"{variant}: POST /run/{variant} {n} answered {resp.status} {body[:300]!r}")
        return elapsed

    def close(self) -> None:
        self.conn.close()


@dataclass(frozen=True, slots=True)
class Sample:
    """One repeat of one variant."""

    repeat: int
    variant: str
    n: int
    t0_s: list[float]  # wall time of each N = 0 request
    tn_s: float  # wall time of the N request
    cpu0_s: float  # daemon CPU per N = 0 request (mean)
    cpun_s: float  # daemon CPU over the N request

    @property
    def wall_us_per_call(self) -> float:
        return (self.tn_s - h.median(self.t0_s)) / self.n * 1e6

    @property
    def cpu_us_per_call(self) -> float:
        return (self.cpun_s - self.cpu0_s) / self.n * 1e6


def measure(server: h.Server, driver: Driver, variant: str, repeat: int, n: int, zeros: int) -> Sample:
    server.check_alive()
    c0 = server.cpu_seconds()
    t0 = [driver.run(variant, 0) for _ in range(zeros)]
    c1 = server.cpu_seconds()
    tn = driver.run(variant, n)
    c2 = server.cpu_seconds()
    return Sample(repeat, variant, n, t0, tn, (c1 - c0) / zeros, c2 - c1)


# --- output ------------------------------------------------------------------------------------------------------


def print_static(sizes: dict[str, int], compiles: dict[str, list[float]]) -> dict[str, Any]:
    rows, summary = [], {}
    for variant, size in sizes.items():
        ms = [t * 1e3 for t in compiles[variant]]
        label = "wat (bench_call's back, from text)" if variant == WAT else variant
        rows.append([label, f"{size:,}", h.fmt(size / 1024, 1), h.spread(ms, 2)])
        summary[variant] = {"wasm_bytes": size, "compile_ms": h.median(ms)}
    print("## echo service: size and compile time in the daemon (uncached; median [min, max])\n")
    print(h.table(["language", "bytes", "KiB", "compile ms"], rows))
    return summary


def overheads(samples: list[Sample], variant: str, figure: str) -> list[float]:
    """`figure` of `variant` minus that of the WAT back, repeat by repeat."""
    mine = {s.repeat: getattr(s, figure) for s in samples if s.variant == variant}
    wat = {s.repeat: getattr(s, figure) for s in samples if s.variant == WAT}
    return [mine[r] - wat[r] for r in sorted(mine) if r in wat]


def print_calls(samples: list[Sample], variants: list[str]) -> dict[str, Any]:
    rows, summary = [], {}
    for variant in variants:
        mine = [s for s in samples if s.variant == variant]
        wall, cpu = [s.wall_us_per_call for s in mine], [s.cpu_us_per_call for s in mine]
        rows.append([variant, f"{mine[0].n:,}", h.spread(wall, 3), h.spread(cpu, 3)])
        summary[variant] = {"wall_us_per_call": h.median(wall), "cpu_us_per_call": h.median(cpu)}
    print("\n## per call: bench_call's front calling each echo (median [min, max] over repeats)\n")
    print(h.table(["back", "N", "wall µs/call", "daemon CPU µs/call"], rows))

    overhead_rows = []
    for variant in variants:
        if variant == WAT:
            continue
        wall = overheads(samples, variant, "wall_us_per_call")
        cpu = overheads(samples, variant, "cpu_us_per_call")
        overhead_rows.append(
            [variant, " ".join(f"{v:+.3f}" for v in wall), f"{h.median(wall):+.3f}", f"{h.median(cpu):+.3f}"]
        )
        summary[variant] |= {"overhead_us": h.median(wall), "overhead_us_per_repeat": wall}
        summary[variant] |= {"cpu_overhead_us": h.median(cpu), "cpu_overhead_us_per_repeat": cpu}
    print("\n## SDK overhead per call over the WAT back (µs, same repeat)\n")
    print(h.table(["language", "wall, per repeat", "wall, median", "daemon CPU, median"], overhead_rows))
    return summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Per language: the echo service's .wasm size, its compile time in the daemon, and its per-call "
        "cost over bench_call's WAT back.",
        epilog=f"Defaults: N = {N_FULL:,}, {REPEATS_FULL} repeats; --quick divides N by {QUICK_DIVISOR} and runs "
        f"{REPEATS_QUICK} repeats.",
    )
    h.add_common_args(parser, list(ECHOES))
    parser.add_argument("--n", type=int, metavar="N", help="calls per measured request (default: see below)")
    parser.add_argument(
        "--path",
        choices=("auto", "pure", "compiled"),
        default="auto",
        help="the daemon's path: auto (default) runs the compiled path when it is built and current, else pure",
    )
    return parser.parse_args(argv)


def daemon_path(args: argparse.Namespace) -> tuple[bool, str] | str:
    """(compiled, note) for the daemon, or why it cannot run."""
    if args.path != "pure":
        reason = h.micromono_unavailable(args.python, compiled=True)
        if reason is None:
            return True, "compiled"
        if args.path == "compiled":
            return reason
        if reason := h.micromono_unavailable(args.python):
            return reason
        return False, "pure (the compiled path is not built)"
    reason = h.micromono_unavailable(args.python)
    return reason if reason else (False, "pure")


def main(argv: list[str] | None = None) -> int:
    """Run the bench; 0 when every run completed (whatever the bar says), 1 when one could not."""
    args = parse_args(argv)
    h.exit_on_sigterm()
    n = args.n or (N_FULL // QUICK_DIVISOR if args.quick else N_FULL)
    repeats = args.repeats or (REPEATS_QUICK if args.quick else REPEATS_FULL)
    zeros = ZEROS_QUICK if args.quick else ZEROS_FULL
    compiles = COMPILES_QUICK if args.quick else COMPILES_FULL
    path = daemon_path(args)
    if isinstance(path, str):
        print(f"micromono unavailable: {path}", file=sys.stderr)
        return 1
    compiled, path_note = path
    languages = [lang for lang in args.only if ECHOES[lang].exists()]
    missing = [lang for lang in args.only if lang not in languages]
    backs = {WAT: WAT_BACK} | {lang: ECHOES[lang] for lang in languages}

    params = {
        "languages": ",".join(languages),
        "n": n,
        "repeats": repeats,
        "zeros": zeros,
        "compiles": compiles,
        "payload_bytes": PAYLOAD_BYTES,
        "daemon": path_note,
        "quick": args.quick,
    }
    report = h.Report("bench_sdks", params, h.versions(args.python))
    h.print_preamble(
        "bench_sdks: each SDK's echo service, size, compile time and per-call cost", report.versions, params
    )
    for lang in missing:
        print(f"note: {lang} skipped: {ECHOES[lang].relative_to(h.REPO)} is not built (`make examples` builds it "
              "once the language's SDK is there)")  # fmt: skip
    if missing:
        print()

    sizes = {variant: back.stat().st_size for variant, back in backs.items()}
    times = {variant: compile_times(back, compiles) for variant, back in backs.items()}
    for variant in backs:
        print(f"  compiled {variant:15} {h.median(times[variant]) * 1e3:8.2f} ms")

    samples: list[Sample] = []
    variants = list(backs)
    with tempfile.TemporaryDirectory(prefix="bench_sdks-") as tmp, ExitStack() as stack:
        try:
            manifest = write_manifest(Path(tmp), backs)
            argv = partial(h.micromono_argv, args.python, manifest, compiled=compiled)
            server = stack.enter_context(h.Server.start("daemon", argv, Path(tmp), cpus=frozenset({h.last_cpu()})))
            driver = Driver(server.port)
            stack.callback(driver.close)
            for variant in variants:  # warm-up: first call to each back, caches, lazy imports
                driver.run(variant, 0)
                driver.run(variant, max(1, n // 10))
            for repeat in range(repeats):
                shift = repeat % len(variants)
                for variant in variants[shift:] + variants[:shift]:
                    samples.append(measure(server, driver, variant, repeat, n, zeros))
                    print(f"  repeat {repeat} {variant:15} {samples[-1].wall_us_per_call:9.3f} µs/call", flush=True)
        except (h.HarnessError, OSError) as exc:
            print(f"\nbench_sdks failed: {exc}", file=sys.stderr)
            return 1
    print()
    summary = print_static(sizes, times)
    for variant, figures in print_calls(samples, variants).items():
        summary[variant] |= figures
    summary["skipped"] = missing
    report.samples = [asdict(s) | {"wall_us_per_call": s.wall_us_per_call} for s in samples]
    report.summary = summary
    bars = [Bar(f"{lang}: overhead per call over WAT", summary.get(lang, {}).get("overhead_us"), BAR_OVERHEAD_US,
                False, " µs", digits=2) for lang in ECHOES]  # fmt: skip
    print("\n## bars (reported, not asserted)\n")
    print(h.table(["bar", "measured", "target", "verdict", "figures"], [bar.row() for bar in bars]))
    print("\nloadavg at end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    if args.json:
        report.summary["bars"] = [asdict(bar) | {"verdict": bar.verdict} for bar in bars]
        report.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
