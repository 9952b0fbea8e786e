"""bench_actors: durable counters as actors, micromono against a workerd Durable Object, in one run.

The workload is a durable counter per name: `POST /counter/{name}` adds 1 and answers the new value as decimal text,
`GET /counter/{name}` answers the current value (0 for a name never seen). Servers, each started fresh per run on
a free port on 127.0.0.1, with its data in a temp directory, and stopped by its PID:
  micromono-full    the daemon serving examples/build/counter.wasm as `kind = "actor"` on `/counter/{key}`,
                    `sync = "full"` (a reply waits until its write is fsynced)
  micromono-normal  the same with `sync = "normal"`
  workerd           peers/workerd/do_counter.js: a Worker routing each name to a Durable Object
                    (`idFromName`) with SQLite storage on local disk (`enableSql`, do_counter.capnp); workerd
                    answers a write once it is durable
Every server must first pass the contract (three POSTs answer 1, 2, 3; a GET answers 3; a new name answers 0).

Part 1, throughput: `wrk -t1 -c32 --latency -s counter.lua` POSTs increments to one hot key, then (a separate run)
round-robin over 1,000 keys. Before the window, one POST to every key, 32 at a time (so every key is active when
the window opens: workerd activates a few hundred objects a second and evicts one idle for about 10 s), then a wrk
warm-up run, then the measured run. Per run: requests/s, p50 and p99, server CPU per
request (utime + stime of the server's processes from /proc/<pid>/stat across the window, divided by the requests
wrk completed), the counters read back afterwards against the increments wrk saw acknowledged ("lost" must be 0),
and for workerd the objects it constructed during the window. Repeats rotate the order of the variants; the req/s
ratios are taken per repeat, then their median.

Part 2, activation: one client, one keep-alive connection, one request at a time. First pass: a POST to each of
1,000 never-seen keys, each followed by a POST to one warm key (the reference, measured in the same conditions).
micromono runs with `max_live = 100`, so the pass evicts the least recently used actors as it goes, and the second
pass over the same keys in the same order revives every one of them from storage (each must answer 2). workerd
gets the same two passes with an idle wait between them long enough for it to evict every object, and its
activation count says how many were really constructed. Latency per request is send to end of the reply, minus
nothing.

Part 3, density (micromono only): one daemon with `max_live = 10,000` and a long `idle_timeout`; 100,000 distinct
keys are created by POST over 32 connections (one request in flight on each). Live-instance memory per actor is
(RSS with the first 10,000 live - RSS with one) / 9,999; the RSS growth over the other 90,000 gives the cost of a
hibernated one; bytes on disk per actor are the data directory's size / actors, while running and after a
graceful stop. The same figure for 1,000 keys comes from the throughput runs, workerd included.

Bars (reported as met/missed, never asserted): sync = "full" over 1,000 keys at least 20,000 increments/s, p99
under 5 ms, and at least 3x workerd's rate in the same run; first message to a new key and revival of a
hibernated actor under 1 ms median each. micromono runs on its compiled path when it is built and current
(`--pure` forces pure Python). Without examples/build/counter.wasm the micromono variants are skipped, with a note.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final

import _harness as h
import httptools
import uvloop
from bench_peers import WORKERD_INSTALL, Workerd, find_workerd

VARIANTS: Final = ("micromono-full", "micromono-normal", "workerd")
SYNC: Final = {"micromono-full": "full", "micromono-normal": "normal"}  # the micromono variants
PARTS: Final = ("throughput", "activation", "density")
WORKLOADS: Final = {"hot key": 1, "1,000 keys": 1000}  # the throughput workloads: name -> keys

COUNTER_WASM: Final = h.REPO / "examples" / "build" / "counter.wasm"
WORKERD_CONFIG: Final = h.PEERS / "workerd" / "do_counter.capnp"
WORKERD_CONST: Final = "counterConfig"
SCRIPT: Final = h.BENCHES / "counter.lua"

THREADS, CONNECTIONS = 1, 32
REPEATS_FULL, DURATION_FULL_S, WARMUP_FULL_S = 3, 5, 2
REPEATS_QUICK, DURATION_QUICK_S, WARMUP_QUICK_S = 1, 2, 1
THROUGHPUT_MAX_LIVE: Final = 2000  # above the 1,000 keys and the contract's, so no actor hibernates in a window
IDLE_TIMEOUT_S: Final = 60.0
STORAGE_LIMIT: Final = "16MiB"

ACTIVATION_KEYS_FULL, ACTIVATION_KEYS_QUICK = 1000, 100
ACTIVATION_MAX_LIVE_FULL, ACTIVATION_MAX_LIVE_QUICK = 100, 10  # a tenth of the keys: the second pass revives all
ACTIVATION_WARMUP: Final = 50  # requests to the warm key before the first pass
WORKERD_EVICT_WAIT_S: Final = 15.0  # workerd evicts an object idle for about 10 s

DENSITY_ACTORS_FULL, DENSITY_LIVE_FULL = 100_000, 10_000
DENSITY_ACTORS_QUICK, DENSITY_LIVE_QUICK = 5_000, 1_000
DENSITY_IDLE_TIMEOUT_S: Final = 3600.0  # no live actor is closed for idleness during the part
IN_FLIGHT: Final = 32  # density: connections, one request in flight on each
DENSITY_SAMPLE: Final = 200  # keys read back after the creation
SETTLE_S: Final = 0.5  # idle time before memory is read
STOP_TIMEOUT_S: Final = 30.0  # a daemon with 10,000 live actors may take a while to close them

REQUEST_TIMEOUT_S: Final = 30.0
CREATE_US_BOUND: Final = 10_000  # density: the creation may take 10 ms per actor (plus 60 s) before the bench gives up

# Bars (reported as met/missed, never asserted).
BAR_VARIANT: Final = "micromono-full"
BAR_WORKLOAD: Final = "1,000 keys"
BAR_RPS: Final = 20_000.0
BAR_P99_US: Final = 5_000.0
BAR_WORKERD_RATIO: Final = 3.0
BAR_ACTIVATION_US: Final = 1_000.0


# --- HTTP client ------------------------------------------------------------------------------------------------


def request_bytes(method: str, path: str) -> bytes:
    """One HTTP/1.1 request with an empty body (so a POST says Content-Length: 0)."""
    body_header = b"Content-Length: 0\r\n" if method == "POST" else b""
    return b"%s %s HTTP/1.1\r\nHost: bench\r\n%s\r\n" % (method.encode(), path.encode(), body_header)


class _Response:
    """httptools callbacks collecting one response at a time: its status and body once complete."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.complete = False
        self.status = 0
        self._body: list[bytes] = []

    def reset(self) -> None:
        self.complete, self.status, self._body = False, 0, []

    @property
    def body(self) -> bytes:
        return b"".join(self._body)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.complete = True


def counter_value(name: str, status: int, body: bytes) -> int:
    """The counter a 200 reply carries as decimal text.

    Raises:
        HarnessError: another status, or a body that is not a decimal number.
    """
    if status != 200 or not body.isdigit():
        raise h.HarnessError(f"/counter/{name} answered {status} {body[:200]!r}, expected 200 and a decimal number")
    return int(body)


class Client:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1:port, one request at a time (blocking, TCP_NODELAY).

    Every request is bounded by `timeout_s`. Use it as a context manager.
    """

    def __init__(self, port: int, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.sock = socket.create_connection((h.HOST, port), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._response = _Response()

    def exchange(self, method: str, path: str) -> tuple[int, bytes, int]:
        """Send one request (an empty body); return (status, body, ns from the send to the end of the reply).

        Raises:
            HarnessError: the connection closed, the reply was malformed, or the read timed out.
        """
        response = self._response
        response.reset()
        data = request_bytes(method, path)
        try:
            started = time.perf_counter_ns()
            self.sock.sendall(data)
            while not response.complete:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise h.HarnessError(f"the server closed the connection during {method} {path}")
                response.parser.feed_data(chunk)
            elapsed = time.perf_counter_ns() - started
        except (OSError, httptools.HttpParserError) as exc:
            raise h.HarnessError(f"{method} {path} failed: {exc!r}") from exc
        return response.status, response.body, elapsed

    def send(self, method: str, name: str) -> tuple[int, int]:
        """One request to the counter `name`; return (its value, latency in ns from the send to the end of the reply).

        Raises:
            HarnessError: as `exchange`, or a reply that is not 200 with a decimal number.
        """
        status, body, elapsed = self.exchange(method, f"/counter/{name}")
        return counter_value(name, status, body), elapsed

    def value(self, method: str, name: str) -> int:
        """The counter `name`'s value after the request (a POST increments it)."""
        return self.send(method, name)[0]

    def get_text(self, path: str) -> str:
        """GET `path` (not a counter: workerd's /stats) and return the body of its 200 reply."""
        status, body, _ = self.exchange("GET", path)
        if status != 200:
            raise h.HarnessError(f"GET {path} answered {status} {body[:200]!r}")
        return body.decode()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def verify_contract(name: str, port: int) -> None:
    """Check the counter contract before any load: POST answers 1, 2, 3, GET answers 3, a new name answers 0.

    Raises:
        HarnessError: the server answered anything else.
    """
    with Client(port) as client:
        got = [client.value("POST", "contract") for _ in range(3)]
        got += [client.value("GET", "contract"), client.value("GET", "contract-never-seen")]
    if got != [1, 2, 3, 3, 0]:
        raise h.HarnessError(f"{name}: POST x3, GET, GET of a new name answered {got}, expected [1, 2, 3, 3, 0]")


def workerd_activations(port: int) -> int:
    """How many Counter objects the workerd process has constructed so far (do_counter.js's GET /stats)."""
    with Client(port) as client:
        text = client.get_text("/stats")
    key, _, value = text.partition("=")
    if key != "activations" or not value.isdigit():
        raise h.HarnessError(f"workerd's /stats answered {text[:200]!r}, expected activations=N")
    return int(value)


def read_back(port: int, names: Iterable[str]) -> int:
    """The sum of the counters `names`, read one GET at a time on one connection."""
    with Client(port) as client:
        return sum(client.value("GET", name) for name in names)


async def _create_async(port: int, names: Sequence[str], in_flight: int, timeout_s: float) -> None:
    """POST once to each name over `in_flight` connections, one request in flight on each; every reply must be 1."""
    pending: Iterator[str] = iter(names)  # shared: each connection takes the next name when it is free

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(h.HOST, port)
        response = _Response()
        try:
            for name in pending:
                response.reset()
                writer.write(request_bytes("POST", f"/counter/{name}"))
                while not response.complete:
                    chunk = await reader.read(65536)
                    if not chunk:
                        raise h.HarnessError(f"the server closed a connection during POST /counter/{name}")
                    response.parser.feed_data(chunk)
                if (value := counter_value(name, response.status, response.body)) != 1:
                    raise h.HarnessError(f"the first POST to /counter/{name} answered {value}, expected 1")
        finally:
            writer.close()

    try:
        async with asyncio.timeout(timeout_s), asyncio.TaskGroup() as group:
            for _ in range(in_flight):
                group.create_task(connection())
    except TimeoutError:
        raise h.HarnessError(f"creating {len(names):,} actors took longer than {timeout_s:g} s") from None
    except BaseExceptionGroup as failures:
        first = failures.exceptions[0]
        raise h.HarnessError(f"creating actors failed: {first!r}") from first


def create_actors(port: int, names: Sequence[str], in_flight: int) -> float:
    """POST once to each of `names` concurrently (at most `in_flight` at a time); return the seconds it took."""
    timeout_s = 60 + len(names) * CREATE_US_BOUND / 1e6
    started = time.perf_counter()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_create_async(port, names, in_flight, timeout_s))
    return time.perf_counter() - started


# --- servers ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Actors:
    """The keyed service's settings for one micromono start (the manifest keys of the same names)."""

    sync: str  # sync = "full" | "normal"
    max_live: int  # max_live = 2000
    idle_timeout: float = IDLE_TIMEOUT_S  # idle_timeout = 60.0


@dataclass(frozen=True, slots=True)
class Setup:
    """What every server start needs: the python, the daemon's path, the workerd binary, the temp directory."""

    python: str
    compiled: bool
    workerd: Workerd | None
    root: Path  # runs/<label>/ (manifest, data), cache/ (the daemon's compile cache), logs/

    def write_manifest(self, site: Path, actors: Actors) -> Path:
        """A services.toml in `site` serving a copy of counter.wasm as the keyed service `counter`."""
        shutil.copy(COUNTER_WASM, site / "counter.wasm")
        manifest = site / "services.toml"
        manifest.write_text(
            "# bench_actors: generated; see benches/bench_actors.py\n"
            "version = 1\n\n"
            "[daemon]\n"
            'listen = "127.0.0.1:0"\n'
            'metrics_listen = ""\n'
            f"data_dir = {json.dumps(str(site / 'data'))}\n"
            f"cache_dir = {json.dumps(str(self.root / 'cache'))}\n"
            'log_format = "json"\n\n'
            "[services.counter]\n"
            'kind = "actor"\n'
            'wasm = "counter.wasm"\n'
            'routes = ["/counter/{key}"]\n'
            f"sync = {json.dumps(actors.sync)}\n"
            f"max_live = {actors.max_live}\n"
            f"idle_timeout = {actors.idle_timeout!r}\n"
            f"storage_limit = {json.dumps(STORAGE_LIMIT)}\n"
        )
        return manifest

    @contextmanager
    def start(self, variant: str, label: str, actors: Actors | None = None) -> Iterator[Started]:
        """Start `variant` fresh, with an empty data directory, and stop it by its PID on leaving.

        `actors` sets the micromono service (default: the variant's sync and THROUGHPUT_MAX_LIVE); workerd has no
        such settings.
        """
        site = self.root / "runs" / label
        site.mkdir(parents=True)
        argv: Callable[[int], list[str]]
        if variant in SYNC:
            manifest = self.write_manifest(site, actors or Actors(sync=SYNC[variant], max_live=THROUGHPUT_MAX_LIVE))
            argv = partial(h.micromono_argv, self.python, manifest, compiled=self.compiled)
        else:
            assert self.workerd is not None
            (site / "data").mkdir()
            argv = partial(workerd_argv, self.workerd, site / "data")
        with h.Server.start(label, argv, self.root / "logs") as server:
            try:
                yield Started(variant, server, site / "data")
            except h.HarnessError as exc:
                raise h.HarnessError(f"{label}: {exc}\n  its log ends:\n{server.log_tail()}") from exc


def workerd_argv(workerd: Workerd, data: Path, port: int) -> list[str]:
    """`workerd serve` of do_counter.capnp, its socket on 127.0.0.1:port and its objects' storage in `data`."""
    return [str(workerd.binary), "serve", str(WORKERD_CONFIG), WORKERD_CONST,
            "--socket-addr", f"http={h.HOST}:{port}", "--directory-path", f"do-storage={data}"]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Started:
    """A running counter server and where its data goes."""

    variant: str
    server: h.Server
    data_dir: Path

    @property
    def port(self) -> int:
        return self.server.port


@dataclass(frozen=True, slots=True)
class DiskUsage:
    """Files under a data directory and their size: apparent (st_size) and allocated (st_blocks, as du counts)."""

    files: int
    apparent_bytes: int
    allocated_bytes: int

    @classmethod
    def of(cls, root: Path) -> DiskUsage:
        files = apparent = allocated = 0
        for folder, _, names in os.walk(root):
            for name in names:
                st = os.lstat(os.path.join(folder, name))
                files += 1
                apparent += st.st_size
                allocated += st.st_blocks * 512
        return cls(files, apparent, allocated)


# --- part 1: throughput -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ThroughputRun:
    """One measured wrk run against one fresh server."""

    repeat: int
    variant: str
    workload: str
    keys: int
    wrk: h.WrkResult
    server_cpu_s: float
    rss_kib: int
    acknowledged: int  # increments answered 200: the first POST to each key, the wrk warm-up and measured run
    counted: int  # the sum of the workload's counters read back after the run
    activations: int | None  # workerd: objects constructed during the measured run
    disk: DiskUsage  # the data directory after the server stopped

    @property
    def cpu_us_per_request(self) -> float:
        """Server CPU across the measured run divided by the requests completed, in µs."""
        return self.server_cpu_s / self.wrk.requests * 1e6 if self.wrk.requests else float("nan")

    @property
    def server_cores(self) -> float:
        return self.server_cpu_s / self.wrk.duration_s

    @property
    def lost(self) -> int:
        """Acknowledged increments missing from the counters read back (must be 0). The counters may be ahead: wrk
        stops with up to -c requests in flight, which the server may still apply."""
        return max(0, self.acknowledged - self.counted)

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {
            "rps": self.wrk.rps,
            "cpu_us_per_request": self.cpu_us_per_request,
            "server_cores": self.server_cores,
            "lost": self.lost,
        }


def key_names(workload: str) -> list[str]:
    """The counters a workload increments, as counter.lua names them."""
    keys = WORKLOADS[workload]
    return ["hot"] if keys == 1 else [f"k{i}" for i in range(keys)]


def measure_throughput(
    setup: Setup, variant: str, workload: str, repeat: int, settings: argparse.Namespace
) -> ThroughputRun:
    """A fresh server, verified; one POST to every key of the workload, concurrently (so each is active, or
    created, before the window: at a few hundred activations a second the wrk warm-up alone would not reach every
    key on workerd); a wrk warm-up; the measured wrk run; the counters read back; the server stopped and its data
    directory measured."""
    keys = WORKLOADS[workload]
    label = f"{variant}-{'hot' if keys == 1 else keys}-r{repeat}"
    with setup.start(variant, label) as started:
        server = started.server
        verify_contract(variant, started.port)
        names = key_names(workload)
        create_actors(started.port, names, min(CONNECTIONS, len(names)))  # every key active before the window
        wrk = partial(
            h.run_wrk, f"http://{h.HOST}:{started.port}", threads=THREADS, connections=CONNECTIONS, script=SCRIPT,
            script_args=(str(keys), "hot" if keys == 1 else "k"),
        )  # fmt: skip
        warm = wrk(duration_s=settings.warmup)
        server.check_alive()
        before = workerd_activations(started.port) if variant == "workerd" else None
        cpu0 = server.cpu_seconds()
        result = wrk(duration_s=settings.duration)
        cpu1 = server.cpu_seconds()
        after = workerd_activations(started.port) if variant == "workerd" else None
        server.check_alive()
        rss = server.rss_kib()
        counted = read_back(started.port, names)
        server.stop(STOP_TIMEOUT_S)
        disk = DiskUsage.of(started.data_dir)
    acknowledged = len(names) + sum(run.requests - run.errors.get("status", 0) for run in (warm, result))
    activations = None if before is None or after is None else after - before
    return ThroughputRun(repeat, variant, workload, keys, result, cpu1 - cpu0, rss, acknowledged, counted,
                         activations, disk)  # fmt: skip


def run_throughput(setup: Setup, variants: list[str], settings: argparse.Namespace) -> list[ThroughputRun]:
    """Every variant on every workload once per repeat, the variants' order rotated per repeat."""
    runs: list[ThroughputRun] = []
    for repeat in range(settings.repeats):
        shift = repeat % len(variants)
        for workload in WORKLOADS:
            for variant in variants[shift:] + variants[:shift]:
                run = measure_throughput(setup, variant, workload, repeat, settings)
                runs.append(run)
                acts = "" if run.activations is None else f"  activations {run.activations}"
                print(f"  throughput repeat {repeat} {variant:16} {workload:10} {run.wrk.rps:9,.0f} req/s  "
                      f"p99 {run.wrk.p99_us:8,.0f} µs  {run.cpu_us_per_request:7.1f} CPU µs/req  "
                      f"errors {run.wrk.error_count}  lost {run.lost}{acts}", flush=True)  # fmt: skip
    return runs


def per_repeat_ratios(runs: list[ThroughputRun], workload: str, num: str, den: str) -> dict[int, float]:
    """num / den req/s on `workload`, repeat by repeat (only repeats where both ran)."""
    rps = {(r.repeat, r.variant): r.wrk.rps for r in runs if r.workload == workload}
    repeats = sorted({r.repeat for r in runs})
    return {rep: rps[rep, num] / rps[rep, den] for rep in repeats if (rep, num) in rps and (rep, den) in rps}


def print_throughput(runs: list[ThroughputRun], variants: list[str]) -> dict[str, Any]:
    """The throughput table and the per-repeat ratios; return the summary for the JSON and the bars."""
    summary: dict[str, Any] = {}
    rows = []
    for workload in WORKLOADS:
        for variant in variants:
            mine = [r for r in runs if r.variant == variant and r.workload == workload]
            figures = {
                "rps": [r.wrk.rps for r in mine],
                "p50_us": [r.wrk.p50_us for r in mine],
                "p99_us": [r.wrk.p99_us for r in mine],
                "cpu_us_per_request": [r.cpu_us_per_request for r in mine],
                "server_cores": [r.server_cores for r in mine],
                "rss_mib": [r.rss_kib / 1024 for r in mine],
            }
            activations = [r.activations for r in mine if r.activations is not None]
            errors, lost = sum(r.wrk.error_count for r in mine), sum(r.lost for r in mine)
            rows.append([
                variant, workload, h.spread(figures["rps"]), h.spread(figures["p50_us"]),
                h.spread(figures["p99_us"]), h.spread(figures["cpu_us_per_request"], 1),
                h.fmt(h.median(figures["server_cores"]), 2), h.fmt(h.median(figures["rss_mib"]), 1),
                " ".join(str(a) for a in activations) if activations else "-", str(errors), str(lost),
            ])  # fmt: skip
            summary.setdefault(workload, {})[variant] = {k: h.median(v) for k, v in figures.items()} | {
                "rps_per_repeat": figures["rps"],
                "p99_us_per_repeat": figures["p99_us"],
                "errors": errors,
                "lost": lost,
                "activations": activations,
            }
    print(f"\n## throughput: durable increments, wrk -t{THREADS} -c{CONNECTIONS} (median [min, max] over repeats)\n")
    headers = ["variant", "workload", "req/s", "p50 µs", "p99 µs", "server CPU µs/req", "server cores", "RSS MiB",
               "activations in window", "errors", "lost"]  # fmt: skip
    print(h.table(headers, rows))

    pairs = [(num, den) for num, den in [*((v, "workerd") for v in SYNC), ("micromono-normal", "micromono-full")]
             if num in variants and den in variants]  # fmt: skip
    if pairs:
        ratio_rows = []
        for workload in WORKLOADS:
            values = {pair: per_repeat_ratios(runs, workload, *pair) for pair in pairs}
            for rep in sorted({r.repeat for r in runs}):
                ratio_rows.append([workload, str(rep), *(h.fmt(values[pair].get(rep, float("nan")), 2)
                                                         for pair in pairs)])  # fmt: skip
            medians = {pair: h.median(list(values[pair].values())) for pair in pairs}
            ratio_rows.append([workload, "median", *(h.fmt(medians[pair], 2) for pair in pairs)])
            for pair in pairs:
                summary.setdefault("ratios", {}).setdefault(workload, {})[f"{pair[0]}/{pair[1]}"] = {
                    "per_repeat": list(values[pair].values()),
                    "median": medians[pair],
                }
        print("\n## throughput: req/s ratios, same repeat (median of the per-repeat ratios)\n")
        print(h.table(["workload", "repeat", *(f"{num} / {den}" for num, den in pairs)], ratio_rows))
    return summary


# --- part 2: activation -----------------------------------------------------------------------------------------


@dataclass
class ActivationRun:
    """The two timed passes over never-seen, then hibernated, keys of one server, with the warm key between."""

    variant: str
    keys: int
    max_live: int | None  # micromono's max_live (workerd evicts by idleness)
    first_us: list[float] = field(default_factory=list)  # first message to a never-seen key
    first_warm_us: list[float] = field(default_factory=list)  # the warm key, after each of those
    revival_us: list[float] = field(default_factory=list)  # first message after the actor hibernated
    revival_warm_us: list[float] = field(default_factory=list)
    first_activations: int | None = None  # workerd: objects constructed during the first pass
    revival_activations: int | None = None
    idle_wait_s: float | None = None  # workerd: the wait between the passes
    note: str = ""


def timed_pass(client: Client, names: Sequence[str], expected: int) -> tuple[list[float], list[float]]:
    """POST each name (its reply must be `expected`), each followed by a POST to the warm key; return the two lists
    of latencies in µs."""
    cold: list[float] = []
    warm: list[float] = []
    last = client.value("GET", "warm")
    for name in names:
        value, ns = client.send("POST", name)
        if value != expected:
            raise h.HarnessError(f"POST /counter/{name} answered {value}, expected {expected}")
        cold.append(ns / 1e3)
        value, ns = client.send("POST", "warm")
        if value != last + 1:
            raise h.HarnessError(f"POST /counter/warm answered {value}, expected {last + 1}")
        last = value
        warm.append(ns / 1e3)
    return cold, warm


def measure_activation(setup: Setup, variant: str, quick: bool) -> ActivationRun:
    """The first pass over never-seen keys, then (once they hibernated) the revival pass, on one fresh server."""
    keys = ACTIVATION_KEYS_QUICK if quick else ACTIVATION_KEYS_FULL
    names = [f"a{i}" for i in range(keys)]
    actors = None
    if variant in SYNC:
        max_live = ACTIVATION_MAX_LIVE_QUICK if quick else ACTIVATION_MAX_LIVE_FULL
        actors = Actors(sync=SYNC[variant], max_live=max_live)
    run = ActivationRun(variant, keys, actors.max_live if actors else None)
    with setup.start(variant, f"{variant}-activation", actors) as started:
        verify_contract(variant, started.port)
        counting = variant == "workerd"
        with Client(started.port) as client:
            for _ in range(ACTIVATION_WARMUP):
                client.value("POST", "warm")
            before = workerd_activations(started.port) if counting else 0
            run.first_us, run.first_warm_us = timed_pass(client, names, expected=1)
            if counting:
                run.first_activations = workerd_activations(started.port) - before
        if counting and quick:
            wait = f"{WORKERD_EVICT_WAIT_S:g} s"
            run.note = f"revival skipped with --quick (workerd evicts after ~10 s idle; a full run waits {wait})"
            return run
        if counting:  # workerd evicts by idleness only; its connections close after 15 s idle, so reconnect after
            run.idle_wait_s = WORKERD_EVICT_WAIT_S
            time.sleep(WORKERD_EVICT_WAIT_S)
        started.server.check_alive()
        before = workerd_activations(started.port) if counting else 0
        with Client(started.port) as client:
            run.revival_us, run.revival_warm_us = timed_pass(client, names, expected=2)
        if counting:
            run.revival_activations = workerd_activations(started.port) - before
    return run


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile (q in 0..100): a value that occurred; NaN for none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100)
    return ordered[int(rank) - 1]


def print_activation(runs: list[ActivationRun]) -> dict[str, Any]:
    """The activation table; return the summary."""
    summary: dict[str, Any] = {}
    rows = []
    for run in runs:
        cases = [
            ("first message, never-seen key", run.first_us, run.first_warm_us, run.first_activations),
            ("revival, hibernated actor", run.revival_us, run.revival_warm_us, run.revival_activations),
        ]
        for case, cold, warm, activations in cases:
            if not cold:
                rows.append([run.variant, case, "skipped (see below)", "", "", "", "", "", "", ""])
                continue
            figures = {f"p{q}_us": percentile(cold, q) for q in (50, 90, 99)} | {
                "max_us": max(cold),
                "warm_p50_us": percentile(warm, 50),
                "warm_p99_us": percentile(warm, 99),
            }
            case_summary = figures | {"n": len(cold), "activations": activations}
            summary.setdefault(run.variant, {})[case.split(",")[0]] = case_summary
            rows.append([
                run.variant, case, f"{len(cold):,}", h.fmt(figures["p50_us"]), h.fmt(figures["p90_us"]),
                h.fmt(figures["p99_us"]), h.fmt(figures["max_us"]), h.fmt(figures["warm_p50_us"]),
                h.fmt(figures["warm_p99_us"]), "-" if activations is None else f"{activations:,}",
            ])  # fmt: skip
    print("\n## activation: one request at a time on one keep-alive connection, latency send -> end of reply\n")
    print(h.table(["variant", "case", "keys", "p50 µs", "p90 µs", "p99 µs", "max µs", "warm key p50 µs",
                   "warm key p99 µs", "activations counted"], rows))  # fmt: skip
    notes: dict[str, list[str]] = {}  # note -> the variants it applies to
    for run in runs:
        if run.max_live is not None:
            note = (f"max_live = {run.max_live}, so the first pass evicts the least recently used actors as it goes "
                    f"and the second pass, in the same order, revives all {run.keys:,} from storage")  # fmt: skip
            notes.setdefault(note, []).append(run.variant)
        if run.idle_wait_s is not None:
            note = f"{run.idle_wait_s:g} s idle between the passes, for workerd to evict every object (it counts them)"
            notes.setdefault(note, []).append(run.variant)
        if run.note:
            notes.setdefault(run.note, []).append(run.variant)
    for note, variants in notes.items():
        print(f"\n{', '.join(variants)}: {note}.")
    return summary


# --- part 3: density --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DensityRun:
    """100,000 actors created in one daemon that keeps at most `live` of them live."""

    variant: str
    actors: int
    live: int
    in_flight: int
    rss_before_kib: int  # one actor created
    rss_live_kib: int  # `live` actors created, all live
    rss_all_kib: int  # `actors` created, `live` of them live
    create_live_s: float
    create_rest_s: float
    disk_running: DiskUsage
    disk_stopped: DiskUsage
    sampled: int  # keys read back afterwards, every one answering 1

    @property
    def live_kib_per_actor(self) -> float:
        """(RSS with `live` live - RSS with one) / the live - 1 actors created in between."""
        return (self.rss_live_kib - self.rss_before_kib) / (self.live - 1)

    @property
    def hibernated_kib_per_actor(self) -> float:
        """What the daemon keeps for an actor it no longer holds live: the RSS growth from the rest, per actor."""
        return (self.rss_all_kib - self.rss_live_kib) / (self.actors - self.live)

    @property
    def create_rate(self) -> float:
        return self.actors / (self.create_live_s + self.create_rest_s)

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {
            "live_kib_per_actor": self.live_kib_per_actor,
            "hibernated_kib_per_actor": self.hibernated_kib_per_actor,
            "create_rate": self.create_rate,
        }


def measure_density(setup: Setup, variant: str, quick: bool) -> DensityRun:
    """Create one actor, then up to `live`, then the rest, in one daemon; read its RSS after each step and its data
    directory while running and after a graceful stop. No contract check first: its names would be live too and
    blur the baseline; every creation must answer 1 instead, and a sample of the keys is read back at the end."""
    actors = DENSITY_ACTORS_QUICK if quick else DENSITY_ACTORS_FULL
    live = DENSITY_LIVE_QUICK if quick else DENSITY_LIVE_FULL
    names = [f"d{i}" for i in range(actors)]
    spec = Actors(sync=SYNC[variant], max_live=live, idle_timeout=DENSITY_IDLE_TIMEOUT_S)
    with setup.start(variant, f"{variant}-density", spec) as started:
        server = started.server
        create_actors(started.port, names[:1], 1)
        time.sleep(SETTLE_S)
        rss_before = server.rss_kib()
        create_live_s = create_actors(started.port, names[1:live], IN_FLIGHT)
        time.sleep(SETTLE_S)
        rss_live = server.rss_kib()
        create_rest_s = create_actors(started.port, names[live:], IN_FLIGHT)
        time.sleep(SETTLE_S)
        rss_all = server.rss_kib()
        disk_running = DiskUsage.of(started.data_dir)
        sample = names[:: max(1, actors // DENSITY_SAMPLE)]
        if read_back(started.port, sample) != len(sample):
            raise h.HarnessError(f"{variant}: the {len(sample)} sampled actors do not all answer 1")
        server.check_alive()
        server.stop(STOP_TIMEOUT_S)
        disk_stopped = DiskUsage.of(started.data_dir)
    return DensityRun(variant, actors, live, IN_FLIGHT, rss_before, rss_live, rss_all, create_live_s, create_rest_s,
                      disk_running, disk_stopped, len(sample))  # fmt: skip


def print_density(runs: list[DensityRun], throughput: list[ThroughputRun]) -> dict[str, Any]:
    """The density table, and bytes on disk per actor beside the throughput runs' 1,000 keys; return the summary."""
    summary: dict[str, Any] = {}
    if runs:
        rows = []
        for run in runs:
            rows.append([
                run.variant, f"{run.actors:,}", f"{run.live:,}", h.fmt(run.create_rate),
                h.fmt(run.rss_before_kib / 1024, 1), h.fmt(run.rss_live_kib / 1024, 1),
                h.fmt(run.live_kib_per_actor, 1), h.fmt(run.rss_all_kib / 1024, 1),
                h.fmt(run.hibernated_kib_per_actor, 2),
            ])  # fmt: skip
            summary[run.variant] = run.as_json()
        print(f"\n## density: actors created by POST over {IN_FLIGHT} connections; memory per live actor = (RSS with "
              "max_live live - RSS with 1) / (max_live - 1)\n")  # fmt: skip
        print(h.table(["variant", "actors", "max_live", "created/s", "RSS MiB, 1 actor", "RSS MiB, max_live live",
                       "KiB per live actor", "RSS MiB, all created", "KiB per hibernated actor"], rows))  # fmt: skip
    rows = []
    for run in runs:
        for when, disk in (("running", run.disk_running), ("after stop", run.disk_stopped)):
            rows.append(disk_row(f"{run.variant} (density, {when})", run.actors, disk))
    for variant in dict.fromkeys(r.variant for r in throughput if r.keys > 1):
        mine = [r for r in throughput if r.variant == variant and r.keys > 1]
        # the workload's keys plus the contract's two names (workerd creates an object for the GET of a new one too)
        rows.append(disk_row(f"{variant} (throughput, after stop)", mine[-1].keys + 2, mine[-1].disk))
        summary.setdefault("throughput_disk", {})[variant] = asdict(mine[-1].disk) | {"actors": mine[-1].keys + 2}
    if rows:
        print("\n## bytes on disk per actor: the data directory's size / actors (allocated as du counts; apparent)\n")
        print(h.table(["data directory", "actors", "files", "files/actor", "allocated B/actor", "apparent B/actor"],
                      rows))  # fmt: skip
    return summary


def disk_row(label: str, actors: int, disk: DiskUsage) -> list[str]:
    return [label, f"{actors:,}", f"{disk.files:,}", h.fmt(disk.files / actors, 2),
            h.fmt(disk.allocated_bytes / actors), h.fmt(disk.apparent_bytes / actors)]  # fmt: skip


# --- bars -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bar:
    """A target the output marks met or missed (never asserted): `strict` bars compare with < or >, not <= or >=."""

    name: str
    measured: float | None  # None: what it needs did not run
    target: float
    higher_is_better: bool
    unit: str = ""
    strict: bool = False
    digits: int = 0  # decimals shown
    figures: str = ""  # what the measurement is made of, shown beside it

    @property
    def verdict(self) -> str:
        if self.measured is None or self.measured != self.measured:  # not run, or NaN
            return "n/a"
        if self.higher_is_better:
            met = self.measured > self.target if self.strict else self.measured >= self.target
        else:
            met = self.measured < self.target if self.strict else self.measured <= self.target
        return "met" if met else "missed"

    def row(self) -> list[str]:
        measured = "n/a" if self.measured is None else f"{h.fmt(self.measured, self.digits)}{self.unit}"
        sign = (">" if self.higher_is_better else "<") + ("" if self.strict else "=")
        target = f"{sign} {h.fmt(self.target, self.digits)}{self.unit}"
        return [self.name, measured, target, self.verdict, self.figures]


def per_repeat(values: Sequence[float], digits: int = 0) -> str:
    """ "per repeat: a b c" (empty for no values)."""
    return "per repeat: " + " ".join(h.fmt(v, digits) for v in values) if values else ""


def make_bars(summary: dict[str, Any]) -> list[Bar]:
    """The issue's bars, from the summary (a bar whose runs did not happen is n/a)."""
    throughput = summary.get("throughput", {}).get(BAR_WORKLOAD, {})
    mine, peer = throughput.get(BAR_VARIANT, {}), throughput.get("workerd", {})
    ratio = summary.get("throughput", {}).get("ratios", {}).get(BAR_WORKLOAD, {}).get(f"{BAR_VARIANT}/workerd", {})
    ratio_figures = ""
    if ratio:
        ratio_figures = (f"{h.fmt(mine['rps'])} / {h.fmt(peer['rps'])} req/s (medians); "
                         f"{per_repeat(ratio['per_repeat'], 2)}")  # fmt: skip
    bars = [
        Bar(f"sync=full, {BAR_WORKLOAD}: increments/s (median)", mine.get("rps"), BAR_RPS, True, " req/s",
            figures=per_repeat(mine.get("rps_per_repeat", []))),
        Bar(f"sync=full, {BAR_WORKLOAD}: p99 (median)", mine.get("p99_us"), BAR_P99_US, False, " µs", strict=True,
            figures=per_repeat(mine.get("p99_us_per_repeat", []))),
        Bar(f"sync=full, {BAR_WORKLOAD}: req/s / workerd's (median of per-repeat)", ratio.get("median"),
            BAR_WORKERD_RATIO, True, "x", digits=2, figures=ratio_figures),
    ]  # fmt: skip
    activation = summary.get("activation", {}).get(BAR_VARIANT, {})
    for case, name in (("first message", "first message to a never-seen key"), ("revival", "revival, hibernated")):
        figures = activation.get(case, {})
        detail = ""
        if figures:
            detail = (f"p90 {h.fmt(figures['p90_us'])}, p99 {h.fmt(figures['p99_us'])} µs over {figures['n']:,} "
                      f"keys; warm key p50 {h.fmt(figures['warm_p50_us'])} µs")  # fmt: skip
        bars.append(Bar(f"sync=full, {name}: latency p50", figures.get("p50_us"), BAR_ACTIVATION_US, False, " µs",
                        strict=True, figures=detail))  # fmt: skip
    return bars


# --- main -------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Durable counters as actors: micromono (sync full and normal) against a workerd Durable Object "
        "with SQLite storage, in one run: throughput over wrk -t1 -c32 (one hot key, 1,000 keys), activation and "
        "revival latency, and density (memory per live actor, bytes on disk per actor).",
        epilog=f"Throughput: {REPEATS_FULL} repeats x {DURATION_FULL_S} s after {WARMUP_FULL_S} s; activation: "
        f"{ACTIVATION_KEYS_FULL:,} keys, max_live {ACTIVATION_MAX_LIVE_FULL}; density: {DENSITY_ACTORS_FULL:,} actors, "
        f"max_live {DENSITY_LIVE_FULL:,}. --quick: {REPEATS_QUICK} x {DURATION_QUICK_S} s after {WARMUP_QUICK_S} s, "
        f"{ACTIVATION_KEYS_QUICK} keys (max_live {ACTIVATION_MAX_LIVE_QUICK}), {DENSITY_ACTORS_QUICK:,} actors "
        f"(max_live {DENSITY_LIVE_QUICK:,}). workerd: install with `{WORKERD_INSTALL}`.",
    )
    h.add_common_args(parser, VARIANTS)
    h.add_parts_arg(parser, PARTS)
    parser.add_argument("--duration", type=int, metavar="S", help="seconds of each measured wrk run")
    parser.add_argument("--warmup", type=int, metavar="S", help="seconds of the wrk warm-up before each run")
    parser.add_argument("--pure", action="store_true", help="run the daemon in pure Python (MICROMONO_PURE=1)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the bench; 0 when every run completed (whatever the bars say), 1 when one could not."""
    args = parse_args(argv)
    h.exit_on_sigterm()
    variants: list[str] = args.only
    parts: list[str] = args.parts
    notes: list[str] = []
    compiled = False
    if set(variants) & set(SYNC):
        if not COUNTER_WASM.exists():
            notes.append(f"micromono variants skipped: {COUNTER_WASM.relative_to(h.REPO)} does not exist "
                         "(`make examples` builds it)")  # fmt: skip
            variants = [v for v in variants if v not in SYNC]
        elif reason := h.micromono_unavailable(args.python):
            print(
                f"micromono unavailable: {reason}\nRun with --only workerd to measure workerd alone.", file=sys.stderr
            )
            return 1
        else:
            compiled = h.use_compiled(args.python, args.pure, notes)
    workerd: Workerd | None = None
    if "workerd" in variants:
        found = find_workerd()
        if isinstance(found, Workerd):
            workerd = found
        else:
            notes.append(f"workerd skipped: {found}. Install workerd with: {WORKERD_INSTALL}")
            variants = [v for v in variants if v != "workerd"]
    if "throughput" in parts and shutil.which("wrk") is None:
        notes.append("throughput skipped: wrk is not on the PATH (`make install` installs it)")
        parts = [p for p in parts if p != "throughput"]

    settings = argparse.Namespace(
        repeats=args.repeats or (REPEATS_QUICK if args.quick else REPEATS_FULL),
        duration=args.duration or (DURATION_QUICK_S if args.quick else DURATION_FULL_S),
        warmup=args.warmup or (WARMUP_QUICK_S if args.quick else WARMUP_FULL_S),
    )
    params = {
        "variants": ",".join(variants) or "none",
        "parts": ",".join(parts) or "none",
        "micromono_path": ("compiled" if compiled else "pure") if set(variants) & set(SYNC) else "n/a",
        "repeats": settings.repeats,
        "duration_s": settings.duration,
        "warmup_s": settings.warmup,
        "wrk": f"-t{THREADS} -c{CONNECTIONS}",
        "workloads": ", ".join(f"{name} ({keys})" for name, keys in WORKLOADS.items()),
        "throughput_max_live": THROUGHPUT_MAX_LIVE,
        "activation_keys": ACTIVATION_KEYS_QUICK if args.quick else ACTIVATION_KEYS_FULL,
        "activation_max_live": ACTIVATION_MAX_LIVE_QUICK if args.quick else ACTIVATION_MAX_LIVE_FULL,
        "density_actors": DENSITY_ACTORS_QUICK if args.quick else DENSITY_ACTORS_FULL,
        "density_max_live": DENSITY_LIVE_QUICK if args.quick else DENSITY_LIVE_FULL,
        "in_flight": IN_FLIGHT,
        "idle_timeout_s": IDLE_TIMEOUT_S,
        "storage_limit": STORAGE_LIMIT,
        "quick": args.quick,
    }
    vers = h.versions(args.python) | ({"workerd": workerd.version} if workerd else {})
    report = h.Report("bench_actors", params, vers)
    h.print_preamble("bench_actors: durable counters as actors, micromono against a workerd Durable Object", vers,
                     params)  # fmt: skip
    for note in notes:
        print(f"note: {note}")
    if notes:
        print()

    throughput: list[ThroughputRun] = []
    activation: list[ActivationRun] = []
    density: list[DensityRun] = []
    with tempfile.TemporaryDirectory(prefix="bench_actors-") as tmp:
        root = Path(tmp)
        (root / "logs").mkdir()
        setup = Setup(args.python, compiled, workerd, root)
        try:
            if "throughput" in parts and variants:
                throughput = run_throughput(setup, variants, settings)
            if "activation" in parts:
                for variant in variants:
                    activation.append(measure_activation(setup, variant, args.quick))
                    revival = percentile(activation[-1].revival_us, 50)
                    print(f"  activation {variant:16} first message p50 {percentile(activation[-1].first_us, 50):,.0f} "
                          f"µs, revival p50 {'skipped' if revival != revival else f'{revival:,.0f} µs'}",
                          flush=True)  # fmt: skip
            if "density" in parts:
                for variant in (v for v in variants if v in SYNC):
                    density.append(measure_density(setup, variant, args.quick))
                    print(f"  density    {variant:16} {density[-1].live_kib_per_actor:,.1f} KiB per live actor, "
                          f"{density[-1].disk_stopped.allocated_bytes / density[-1].actors:,.0f} B on disk per "
                          "actor", flush=True)  # fmt: skip
        except (h.HarnessError, OSError) as exc:
            print(f"\nbench_actors failed: {exc}", file=sys.stderr)
            return 1
    summary: dict[str, Any] = {"notes": notes}
    if throughput:
        summary["throughput"] = print_throughput(
            throughput, [v for v in variants if any(r.variant == v for r in throughput)]
        )
        if any(r.wrk.error_count or r.lost for r in throughput):
            print("\nWARNING: some runs had wrk errors or lost increments (see the table); their figures are suspect.")
    if activation:
        summary["activation"] = print_activation(activation)
    if density or throughput:
        summary["density"] = print_density(density, throughput)
    report.samples = (
        [{"part": "throughput"} | r.as_json() for r in throughput]
        + [{"part": "activation"} | asdict(r) for r in activation]
        + [{"part": "density"} | r.as_json() for r in density]
    )
    report.summary = summary
    bars = make_bars(summary)
    print("\n## bars (reported, not asserted)\n")
    print(h.table(["bar", "measured", "target", "verdict", "figures"], [bar.row() for bar in bars]))
    print("\nloadavg at end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    if args.json:
        report.summary["bars"] = [asdict(bar) | {"verdict": bar.verdict} for bar in bars]
        report.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
