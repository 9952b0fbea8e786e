"""Shared plumbing of the micromono benchmarks: server processes, /proc readings, wrk, tables, metadata.

Owns: starting a server subprocess in its own process group and waiting until *that* process listens; stopping
it by its PID (SIGTERM, then SIGKILL after a timeout); CPU time and RSS of a server's processes from /proc;
running wrk with post64.lua and parsing the line its `done()` prints; the versions, load and command line every
bench prints; markdown tables. Must not: signal any process it did not start, talk to anything but 127.0.0.1,
or wait without a bound. Linux only (it reads /proc).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import json
import math
import os
import platform
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Self

BENCHES: Final = Path(__file__).resolve().parent
REPO: Final = BENCHES.parent
PEERS: Final = BENCHES / "peers"
HOST: Final = "127.0.0.1"
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
PAGE_KIB: Final = os.sysconf("SC_PAGE_SIZE") // 1024

START_TIMEOUT_S: Final = 30.0  # the daemon compiles its guests before it listens
STOP_TIMEOUT_S: Final = 5.0
START_ATTEMPTS: Final = 3  # a free port picked here can be taken by another process before the server binds it
_PR_SET_PDEATHSIG: Final = 1


class HarnessError(Exception):
    """The bench cannot go on: a server died, did not come up, or answered wrongly."""


# --- processes --------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it, as for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the bench dies, so no server outlives a killed bench."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _server_setup(cpus: frozenset[int] | None) -> Callable[[], None]:
    """What a server child runs before exec: die with the bench, and run on `cpus` if given.

    The affinity is set before exec, so every thread the server starts later inherits it.
    """

    def setup() -> None:
        _die_with_parent()
        if cpus is not None:
            os.sched_setaffinity(0, cpus)

    return setup


def last_cpu() -> int:
    """The highest-numbered CPU this process may run on (where bench_call pins servers by default)."""
    return max(os.sched_getaffinity(0))


def group_pids(pgid: int) -> list[int]:
    """The PIDs whose process group is `pgid` (a server and any children it started)."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None and int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return pids


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (field 3, state, is index 0), or None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime of the processes, all their threads included, in seconds (resolution 1/CLK_TCK)."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])  # stat fields 14 and 15
    return ticks / CLK_TCK


def rss_kib(pid: int) -> int:
    """VmRSS of a process from /proc/PID/status, in KiB (0 if it is gone)."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _listening_inodes(port: int) -> set[int]:
    """Socket inodes listening on TCP `port` (IPv4 or IPv6, any address) in this network namespace."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                    inodes.add(int(cols[9]))
    return inodes


def _socket_inodes(pids: Iterable[int]) -> set[int]:
    """Socket inodes open in the processes' file descriptor tables."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, PermissionError):
            for fd in os.scandir(f"/proc/{pid}/fd"):
                with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                    target = os.readlink(fd.path)
                    if target.startswith("socket:["):
                        inodes.add(int(target[8:-1]))
    return inodes


def _accepts(port: int) -> bool:
    """Whether a TCP connection to 127.0.0.1:port succeeds."""
    try:
        with socket.create_connection((HOST, port), timeout=1.0):
            return True
    except OSError:
        return False


@dataclass
class Server:
    """A server subprocess in its own process group, with its output in a log file.

    Start one with `Server.start()`; use it as a context manager so it is stopped on every exit path.
    """

    name: str
    argv: list[str]
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes]

    @classmethod
    def start(
        cls,
        name: str,
        argv_for_port: Callable[[int], list[str]],
        log_dir: Path,
        *,
        timeout_s: float = START_TIMEOUT_S,
        cpus: frozenset[int] | None = None,
    ) -> Server:
        """Start a server on a free port and wait until it listens there; retry if another process took the port.

        Args:
            name: the role, used in messages and the log file name.
            argv_for_port: the command line for a given port.
            log_dir: where `<name>.log` (stdout and stderr) goes.
            timeout_s: how long to wait for the port.
            cpus: the CPUs the server (all its threads and children) may run on; None leaves it to the scheduler.

        Raises:
            HarnessError: the server exited or did not listen in time (the message has its log's last lines).
        """
        for attempt in range(1, START_ATTEMPTS + 1):
            port = free_port()
            argv = argv_for_port(port)
            log_path = log_dir / f"{name}.log"
            with log_path.open("wb") as log:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=REPO,
                    start_new_session=True,  # own process group: a terminal's ^C reaches only the bench
                    preexec_fn=_server_setup(cpus),  # safe: the bench runs no threads
                )
            server = cls(name, argv, port, log_path, proc)
            try:
                server._wait_listening(timeout_s)
            except HarnessError:
                server.stop()
                if attempt < START_ATTEMPTS and "address already in use" in server.log_tail().lower():
                    continue
                raise
            return server
        raise AssertionError("unreachable")

    def _wait_listening(self, timeout_s: float) -> None:
        """Wait until a socket of this server's process group listens on the port and accepts a connection."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HarnessError(
                    f"{self.name} exited with code {self.proc.returncode} before listening on port {self.port}:"
                    f"\n  $ {shlex.join(self.argv)}\n{self.log_tail()}"
                )
            listening = _listening_inodes(self.port)
            if listening and listening & _socket_inodes(self.pids()) and _accepts(self.port):
                return
            time.sleep(0.02)
        raise HarnessError(
            f"{self.name} did not listen on port {self.port} within {timeout_s:.0f} s:"
            f"\n  $ {shlex.join(self.argv)}\n{self.log_tail()}"
        )

    def pids(self) -> list[int]:
        """The server's processes: its own and those of any children in its process group."""
        return group_pids(self.proc.pid) or [self.proc.pid]

    def cpu_seconds(self) -> float:
        """utime + stime so far of all the server's processes."""
        return cpu_seconds(self.pids())

    def rss_kib(self) -> int:
        """Resident memory of all the server's processes, in KiB."""
        return sum(rss_kib(pid) for pid in self.pids())

    def check_alive(self) -> None:
        """Raise HarnessError if the server has exited."""
        if self.proc.poll() is not None:
            raise HarnessError(f"{self.name} exited with code {self.proc.returncode}:\n{self.log_tail()}")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM to the server's PID, SIGKILL if it is still there after `timeout_s`; then SIGKILL, each by its
        own PID, any process it left in its process group. Idempotent."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                print(f"warning: {self.name} (pid {self.proc.pid}) ignored SIGTERM for {timeout_s} s; SIGKILL")
                self.proc.kill()
                self.proc.wait(timeout_s)
        for pid in group_pids(self.proc.pid):
            print(f"warning: {self.name} left pid {pid} behind; SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's output, indented, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "  (no log)"
        tail = text.splitlines()[-lines:]
        return "\n".join(f"  | {line}" for line in tail) if tail else "  (empty log)"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so `with`/`finally` blocks stop the servers when the bench is terminated."""

    def _raise(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _raise)


# --- the micromono daemon ---------------------------------------------------------------------------------


def micromono_env(*, compiled: bool) -> dict[str, str]:
    """The environment switch that picks the daemon's path: MICROMONO_PURE=1 forces pure Python; without it
    micromono runs the compiled path when it is built and current (`micromono_unavailable` checks that it is)."""
    return {"MICROMONO_PURE": "0" if compiled else "1"}


def micromono_argv(python: str, manifest: Path, port: int, *, compiled: bool = False) -> list[str]:
    """The daemon's command line serving `manifest` on 127.0.0.1:port, without a metrics listener, in pure Python
    or (`compiled`) on the compiled path (`env` execs, so the PID stays)."""
    switch = [f"{name}={value}" for name, value in micromono_env(compiled=compiled).items()]
    serve = ["serve", str(manifest), "--listen", f"{HOST}:{port}", "--metrics-listen", ""]
    return ["env", *switch, python, "-m", "micromono", *serve]


#: The daemon variants: pure Python (forced) and on the compiled path.
MICROMONO_VARIANTS: Final = {"micromono": False, "micromono-c": True}


def micromono_unavailable(python: str, *, compiled: bool = False) -> str | None:
    """None if `python -m micromono serve --help` works from the repo (and, with `compiled`, if both parts of the
    optional compiled path are built and current, so `micromono-c` measures what it says), else why not."""
    argv = [python, "-m", "micromono", "serve", "--help"]
    try:
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`{shlex.join(argv)}` failed: {exc}"
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        return f"`{shlex.join(argv)}` exited with code {done.returncode}: {last}"
    if compiled:  # `micromono version` says whether the compiled path is in use, and if not, why
        argv = [python, "-m", "micromono", "version"]
        env = {**os.environ, **micromono_env(compiled=True)}
        done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False)
        lines = done.stdout.splitlines()
        if done.returncode != 0 or len(lines) < 2 or not lines[1].startswith("compiled path: in use"):
            said = lines[1] if len(lines) > 1 else (done.stderr.strip() or "no output").splitlines()[-1]
            return f"micromono-c needs the optional compiled path (make install): {said}"
    return None


# --- wrk --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WrkResult:
    """One wrk run, from the line post64.lua's `done()` prints, plus wrk's own CPU time."""

    requests: int
    duration_s: float
    p50_us: float
    p90_us: float
    p99_us: float
    p999_us: float
    max_us: float
    errors: dict[str, int]  # connect, read, write, status (HTTP >= 400), timeout
    wrk_cpu_s: float

    @property
    def rps(self) -> float:
        """Completed requests per second."""
        return self.requests / self.duration_s

    @property
    def error_count(self) -> int:
        """All socket errors, timeouts and HTTP errors together."""
        return sum(self.errors.values())


def run_wrk(
    url: str,
    *,
    threads: int,
    connections: int,
    duration_s: int,
    script: Path,
    timeout_s: float | None = None,
    script_args: Sequence[str] = (),
) -> WrkResult:
    """Run `wrk -t -c -d --latency -s script url [-- script_args]` and parse the `MMBENCH` line its script's `done()`
    prints (`script_args` reach the script's `init(args)`).

    Raises:
        HarnessError: wrk failed, timed out, or printed no result line.
    """
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--latency", "-s", str(script), url]
    if script_args:
        argv += ["--", *script_args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout_s or duration_s + 30,
            check=False,
            preexec_fn=_die_with_parent,
        )
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"wrk did not finish: {shlex.join(argv)}") from exc
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise HarnessError(f"wrk exited with code {done.returncode}: {done.stderr.strip() or done.stdout.strip()}")
    return _parse_wrk(done.stdout, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime))


def _parse_wrk(stdout: str, wrk_cpu_s: float) -> WrkResult:
    """The WrkResult of wrk's output; see post64.lua for the line's format."""
    for line in stdout.splitlines():
        if line.startswith("MMBENCH "):
            kv = dict(item.split("=", 1) for item in line.split()[1:])
            return WrkResult(
                requests=int(kv["requests"]),
                duration_s=int(kv["duration_us"]) / 1e6,
                p50_us=float(kv["p50_us"]),
                p90_us=float(kv["p90_us"]),
                p99_us=float(kv["p99_us"]),
                p999_us=float(kv["p999_us"]),
                max_us=float(kv["max_us"]),
                errors={k[7:]: int(v) for k, v in kv.items() if k.startswith("errors_")},
                wrk_cpu_s=wrk_cpu_s,
            )
    raise HarnessError(f"wrk printed no MMBENCH line (is the script post64.lua?):\n{stdout}")


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs so far, from /proc/stat; diff two readings for the busy fraction."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # user..steal; guest time is already inside user
    return total - idle, total


# --- metadata ---------------------------------------------------------------------------------------------

_VERSIONS_SCRIPT: Final = """
import importlib.metadata as md, json, platform
def v(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "absent"
print(json.dumps({"python": platform.python_version(),
                  **{n: v(n) for n in ("uvloop", "aiohttp", "wasmtime", "httptools")}}))
"""


def versions(python: str) -> dict[str, str]:
    """Versions of python, uvloop, aiohttp, wasmtime, httptools (as the servers' python sees them) and wrk."""
    done = subprocess.run([python, "-c", _VERSIONS_SCRIPT], capture_output=True, text=True, timeout=60, check=False)
    found: dict[str, str] = json.loads(done.stdout) if done.returncode == 0 else {"python": f"{python}: broken"}
    found["wrk"] = wrk_version()
    return found


def wrk_version() -> str:
    """wrk's version line (`wrk -v` prints it and exits non-zero), or "absent"."""
    try:
        done = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "absent"
    first = (done.stdout or done.stderr).splitlines()[:1]
    return first[0].split(" Copyright")[0].removeprefix("wrk ").strip() if first else "absent"


def machine() -> dict[str, Any]:
    """CPU model and count, kernel, hostname."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpu": model, "cpus": os.cpu_count(), "kernel": platform.release(), "host": platform.node()}


def command_line() -> str:
    """The exact command line of this bench."""
    return shlex.join([sys.executable, *sys.argv])


def print_preamble(title: str, vers: dict[str, str], params: dict[str, Any]) -> None:
    """Print what a result needs beside it: command, date, machine, versions, load average, parameters."""
    print(f"# {title}\n")
    print(f"command:  {command_line()}")
    print(f"date:     {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    m = machine()
    print(f"machine:  {m['cpus']} x {m['cpu']}, Linux {m['kernel']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    print("loadavg:  " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1, 5, 15 min) at start")
    print(f"cpu check: {cpu_check():.3f} s for {CPU_CHECK_ADDS:,} additions in a Python loop, best of 3 (how fast "
          "this shared host runs plain Python at the start of the run)")  # fmt: skip
    print("params:   " + ", ".join(f"{k}={v}" for k, v in params.items()))
    print()


CPU_CHECK_ADDS: Final = 2_000_000


def cpu_check() -> float:
    """Seconds for CPU_CHECK_ADDS additions in a plain Python loop, best of 3: a yardstick of the host's speed at
    the time of a run, since the VM shares its CPUs (a load average says how many tasks run here, not how fast)."""
    best = math.inf
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for i in range(CPU_CHECK_ADDS):
            total += i
        best = min(best, time.perf_counter() - started)
    return best


# --- command line -----------------------------------------------------------------------------------------


def add_common_args(parser: argparse.ArgumentParser, variants: Sequence[str]) -> None:
    """--quick, --json, --only, --python, --repeats: the options every bench takes."""
    parser.add_argument("--quick", action="store_true", help="short smoke run (what the test suite uses)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the raw results to PATH")
    parser.add_argument(
        "--only",
        type=lambda text: parse_only(text, variants),
        default=list(variants),
        metavar="LIST",
        help=f"comma-separated variants to run (default: all of {','.join(variants)})",
    )
    parser.add_argument("--python", default=sys.executable, help="python that runs the servers (default: this one)")
    parser.add_argument("--repeats", type=int, metavar="R", help="interleaved repeats (default: see above)")


def add_parts_arg(parser: argparse.ArgumentParser, parts: Sequence[str]) -> None:
    """--parts: the bench's parts to run, a comma-separated subset of `parts` (all by default)."""
    parser.add_argument(
        "--parts",
        type=lambda text: parse_only(text, parts),
        default=list(parts),
        metavar="LIST",
        help=f"comma-separated parts to run (default: all of {','.join(parts)})",
    )


def use_compiled(python: str, pure: bool, notes: list[str]) -> bool:
    """Whether the daemon runs the compiled path: unless `pure` (--pure), when it is built and current; a note
    says so when it is not."""
    compiled = not pure and micromono_unavailable(python, compiled=True) is None
    if not pure and not compiled:
        notes.append("the compiled path is not built and current: micromono runs in pure Python")
    return compiled


def parse_only(text: str, variants: Sequence[str]) -> list[str]:
    """The variants named in `text`, in the bench's own order; argparse reports a bad name."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in variants]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(variants)}, got {text!r}")
    return [v for v in variants if v in names]


# --- statistics and tables --------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    """The median (NaN for no values)."""
    return statistics.median(values) if values else float("nan")


def fmt(value: float, digits: int = 0) -> str:
    """A number with thousands separators and `digits` decimals ("n/a" for NaN)."""
    if math.isnan(value):
        return "n/a"
    return f"{value:,.{digits}f}"


def spread(values: Sequence[float], digits: int = 0) -> str:
    """ "median [min, max]" of the values (just the value if there is one)."""
    if len(values) == 1:
        return fmt(values[0], digits)
    return f"{fmt(median(values), digits)} [{fmt(min(values), digits)}, {fmt(max(values), digits)}]"


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A markdown table, columns padded to line up in a terminal."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


@dataclass(frozen=True, slots=True)
class Bar:
    """A target the output marks PASS or FAIL (never asserted: the bench reports, a human judges)."""

    name: str
    measured: float | None  # None: the variants it needs were not run
    target: float
    higher_is_better: bool
    unit: str = ""

    @property
    def verdict(self) -> str:
        """PASS, FAIL, or n/a."""
        if self.measured is None or math.isnan(self.measured):
            return "n/a"
        ok = self.measured >= self.target if self.higher_is_better else self.measured <= self.target
        return "PASS" if ok else "FAIL"

    def row(self) -> list[str]:
        """The bar as a table row."""
        measured = "n/a" if self.measured is None else f"{fmt(self.measured, 2)}{self.unit}"
        sign = ">=" if self.higher_is_better else "<="
        return [self.name, measured, f"{sign} {fmt(self.target, 2)}{self.unit}", self.verdict]

    def as_json(self) -> dict[str, Any]:
        """The bar as a JSON object."""
        return {
            "name": self.name,
            "measured": self.measured,
            "target": self.target,
            "higher_is_better": self.higher_is_better,
            "verdict": self.verdict,
        }


def bars_table(bars: Sequence[Bar]) -> str:
    """The bars as a markdown table."""
    return table(["bar", "measured", "target", "verdict"], [b.row() for b in bars])


@dataclass
class Report:
    """What `--json` writes: metadata, parameters, raw samples, summary and bars."""

    bench: str
    params: dict[str, Any]
    versions: dict[str, str]
    samples: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    bars: list[Bar] = field(default_factory=list)
    loadavg_start: tuple[float, float, float] = field(default_factory=os.getloadavg)

    def finish(self, json_path: Path | None, *warnings: str) -> int:
        """Print the bars, any warnings and the load average at the end; write the JSON if asked. Returns 0: a bench
        that got this far completed every run, whatever its bars say."""
        print("\n## bars (reported, not asserted)\n")
        print(bars_table(self.bars))
        for warning in warnings:
            print(f"\n{warning}")
        print("\nloadavg at end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
        if json_path:
            self.write(json_path)
        return 0

    def write(self, path: Path) -> None:
        """Write the report as JSON to `path`."""
        data = {
            "bench": self.bench,
            "command": command_line(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": machine(),
            "versions": self.versions,
            "loadavg_start": self.loadavg_start,
            "loadavg_end": os.getloadavg(),
            "params": self.params,
            "samples": self.samples,
            "summary": self.summary,
            "bars": [b.as_json() for b in self.bars],
        }
        path.write_text(json.dumps(data, indent=2, default=str) + "\n")
        print(f"\nraw results written to {path}")
