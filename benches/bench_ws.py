"""bench_ws: WebSockets to actors, micromono against a workerd Durable Object chat room, in one run.

The workload is a chat room per name on `/chat/{name}`: every text message a client sends is published to every
client of the room, itself included, as `{"seq":N,"data":"<text>"}`, N counted per room (docs/stream.md). Servers,
each started fresh on a free port on 127.0.0.1 with its data in a temp directory, and stopped by its PID:
  micromono  the daemon serving examples/build/room.wasm as `kind = "actor"`, `websocket = true`, on `/chat/{key}`:
             room.zig stores each message in the room's SQLite history, then publishes it, and the daemon sends it
             once that write is durable (`sync = "full"`, the default)
  workerd    peers/workerd/do_chat.js: a Worker routing each name to a Durable Object (`idFromName`) that accepts
             the socket with the WebSocket Hibernation API (`ctx.acceptWebSocket`) and, in `webSocketMessage`, does
             what room.zig does: stores the message in the room's SQLite history, then sends it to every socket of
             `ctx.getWebSockets()`, numbered by a counter in the object (the output gate holds those frames until
             the write is durable)
Clients: in the fanout and rooms parts (`--client c`, the default when a C compiler builds it), benches/ws_load.c,
a single-threaded epoll WebSocket load client in C that bench_ws compiles at run time (`cc -O2`) into its temp
directory and runs as a subprocess per flow: it connects every client of the part, runs the warm-up flow, waits for
bench_ws to read the server's CPU time, runs the measured flow and prints it as JSON. A Python client costs more
CPU per received message than either server, so with it the client's own queueing is most of the latency; ws_load
costs far less. Without a compiler (or with `--client python`) those parts use sdk/python/micromono_stream.py's
StreamClient instead, all the clients in this process on uvloop, and the run says so. The contract check and the
resume and idle parts always use StreamClient, without pings. Either way one clock (CLOCK_MONOTONIC, which is
`perf_counter_ns`'s) times both ends of a message. Every server must first pass the contract: a message reaches
both clients of a room with the same seq; a client that left resumes with `since` and gets what it missed; a
`since` past the last message gets a reset.

Part fanout: 100 clients in one room, one of them sends 10,000 messages, each carrying its send time
(CLOCK_MONOTONIC ns). The sender keeps at most `--in-flight` deliveries outstanding (messages sent but not yet
received by every client, times the room's clients): enough to keep the server busy, bounded so that latency is
the server's and the client's work, not a queue the bench let grow. Delivered messages/s is the frames received by
all clients during the window divided by the window (first send to last receipt); latency is receipt minus send,
per delivery, nearest-rank percentiles over all of them. The client process's CPU (getrusage, ws_load's own or
this process's) is measured across the window: at about one core the client is the bound, and the table says so.
The server's CPU per delivery (utime + stime from /proc over the window) does not depend on that.
Part rooms: 1,000 rooms of 2 clients each; message k is sent by client k mod 2,000 (every room busy, each client
sends in turn), and both clients of its room receive it; the same in-flight bound, the same figures. With 400
deliveries in flight this saturates the server, so its latency is mostly the queue (by Little's law, the window over
the throughput): it measures throughput. Latency is measured apart, in the same rooms on the same server ("rooms,
paced", ws_load only): an open-loop flow of `--rooms-rate` messages a second (the same rate for every server,
well under each one's saturated throughput), each message timed from when it was due, so a server that falls
behind is charged for it. The rooms p99 bar is read there.
Part idle: a fresh server; 1 connection, then up to 10,000 to one room, held without a frame. Memory per connection
is (server RSS with all - RSS with 1) / (all - 1), read after a short settle and again after an idle wait long
enough for workerd to hibernate the room; then one message must reach every connection.
Part resume: a client leaves a room, 1,000 messages are published meanwhile (its `stream_buffer`, the default ring,
holds exactly them), it reconnects with `since`: the time from `reconnect()` to its 1,000th message, and whether it
got all 1,000 in order.

Repeats rotate the order of the variants; ratios are taken per repeat, then their median. Bars (reported as
met/missed, never asserted): delivered messages/s at least 3x workerd's and p99 under 10 ms, in each of fanout and
rooms; under 20 KiB of server memory per idle connection. micromono runs on its compiled path when it is built and
current (`--pure` forces pure Python). Without examples/build/room.wasm, or with a daemon whose config does not
take `websocket = true` yet, the micromono variant is skipped with a note.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Final

import _harness as h
import uvloop
from bench_actors import Bar, per_repeat, percentile, workerd_activations
from bench_peers import WORKERD_INSTALL, Workerd, find_workerd

sys.path.insert(0, str(h.REPO / "sdk" / "python"))  # the client, sdk/python/micromono_stream.py
from micromono_stream import Direct, Published, Reset, StreamClient, StreamError  # noqa: E402

VARIANTS: Final = ("micromono", "workerd")
PARTS: Final = ("fanout", "rooms", "idle", "resume")

ROOM_WASM: Final = h.REPO / "examples" / "build" / "room.wasm"
WORKERD_CONFIG: Final = h.PEERS / "workerd" / "do_chat.capnp"
WORKERD_CONST: Final = "chatConfig"
ROUTE: Final = "/chat/"
WS_LOAD_SOURCE: Final = h.BENCHES / "ws_load.c"
CLIENTS: Final = ("c", "python")
CLIENT_TITLES: Final = {
    "c": "benches/ws_load.c (C, epoll, one thread), a subprocess per flow",
    "python": "sdk/python/micromono_stream.py on uvloop, all clients in the bench's process",
}
COMPILERS: Final = ("cc", "gcc", "clang")  # looked for on PATH when $CC is not set
BUILD_TIMEOUT_S: Final = 120


@dataclass(frozen=True, slots=True, kw_only=True)
class Sizes:
    """The parameters of one run (full or --quick)."""

    repeats: int
    fanout_clients: int
    fanout_messages: int
    rooms: int
    rooms_messages: int
    in_flight: int  # deliveries outstanding at most (messages sent, not yet received by every client of the room)
    idle_connections: int
    idle_settle_s: float  # after the connections are open, before the first reading
    idle_wait_s: float  # then idle until the second reading (workerd hibernates a room idle for ~10 s)
    resume_missed: int
    resume_rounds: int
    rooms_rate: int  # messages a second in the paced rooms flow
    rooms_paced_messages: int


FULL: Final = Sizes(repeats=3, fanout_clients=100, fanout_messages=10_000, rooms=1000, rooms_messages=100_000,
                    in_flight=400, idle_connections=10_000, idle_settle_s=2.0, idle_wait_s=15.0, resume_missed=1000,
                    resume_rounds=5, rooms_rate=1500, rooms_paced_messages=15_000)  # fmt: skip
QUICK: Final = Sizes(repeats=1, fanout_clients=100, fanout_messages=300, rooms=100, rooms_messages=1000,
                     in_flight=400, idle_connections=500, idle_settle_s=0.5, idle_wait_s=0.5, resume_missed=1000,
                     resume_rounds=2, rooms_rate=500, rooms_paced_messages=1000)  # fmt: skip

WARMUP_SHARE: Final = 20  # a warm-up flow of messages / 20 (at least 100) precedes each measured one
CONNECT_CONCURRENCY: Final = 64  # handshakes in progress at most
RECV_TIMEOUT_S: Final = 10.0  # one event, in the contract and resume parts
OPEN_TIMEOUT_S: Final = 30.0
FLOW_BOUND_S: Final = 60.0  # a flow may take 60 s plus 1 ms per delivery before the bench gives up
FLOW_US_PER_DELIVERY: Final = 1000
CONNECT_BOUND_S: Final = 60.0  # connecting N clients may take 60 s plus 10 ms each
CONNECT_US_PER_CLIENT: Final = 10_000
SATURATED_CORES: Final = 0.9  # the client process at this share of a core or more: it is the bound
STOP_TIMEOUT_S: Final = 30.0  # a daemon closing 10,000 connections may take a while
FD_RESERVE: Final = 64  # descriptors besides the connections (logs, /proc readings, the loop)
FD_PROBE: Final = 100  # idle: connections opened first to count the server's descriptors per connection
ACTOR_MAX_LIVE: Final = 2000  # above the rooms part's 1,000 rooms: no room hibernates during a flow

# Bars (reported as met/missed, never asserted).
BAR_WORKERD_RATIO: Final = 3.0
BAR_P99_US: Final = 10_000.0
BAR_IDLE_KIB: Final = 20.0


# --- flows of messages ------------------------------------------------------------------------------------------


def flow_bound_s(deliveries: int) -> float:
    return FLOW_BOUND_S + deliveries * FLOW_US_PER_DELIVERY / 1e6


@dataclass(frozen=True, slots=True)
class FlowResult:
    """What the clients saw of one flow of messages."""

    messages: int
    deliveries: int  # frames received during the window
    seconds: float  # first send to last receipt
    p50_us: float
    p90_us: float
    p99_us: float
    max_us: float
    client_cpu_s: float
    host_busy: float  # the share of all the machine's CPUs busy during the window (/proc/stat)
    errors: int  # a frame out of order, a reset, a message not ours
    first_error: str


class _Flow:
    """The state of one flow: which message each client has, the window of outstanding messages, latencies."""

    def __init__(self, messages: int, members: int, window: int) -> None:
        self.members = members  # clients that receive each message
        self.got = array("H", bytes(2 * messages))  # receipts per message
        self.window = asyncio.Semaphore(window)
        self.latencies_ns = array("q")
        self.last_ns = 0
        self.errors = 0
        self.first_error = ""

    def error(self, text: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or text


async def _receive(flow: _Flow, client: StreamClient, expected: int) -> None:
    """Read `expected` messages of the flow from `client`: each published, numbered right after the one before, and
    carrying `<k> <send ns>` (an index of this flow)."""
    got = flow.got
    latencies = flow.latencies_ns
    now_ns = time.perf_counter_ns
    last = client.last_seq
    received = 0
    while received < expected:
        event = await client.recv()
        now = now_ns()
        if isinstance(event, Direct):  # not numbered: not part of the flow (an actor may greet a client)
            continue
        if isinstance(event, Reset) or not isinstance(event.data, str):
            flow.error(f"{client.url}: expected a published text message, got {event!r}")
            last = event.seq
            continue
        if last is not None and event.seq != last + 1:
            flow.error(f"{client.url}: seq {event.seq} after {last}")
        last = event.seq
        index, _, sent = event.data.partition(" ")
        try:
            k = int(index)
            latencies.append(now - int(sent))
            count = got[k] + 1
        except (ValueError, IndexError):
            flow.error(f"{client.url}: a message not of this flow: {event.data[:80]!r}")
            continue
        got[k] = count
        if count == flow.members:
            flow.window.release()
        received += 1
    flow.last_ns = max(flow.last_ns, now_ns())


async def run_flow(
    clients: Sequence[StreamClient], sender_of: Callable[[int], StreamClient], expected: Sequence[int],
    members: int, messages: int, in_flight: int,
) -> FlowResult:  # fmt: skip
    """Send `messages` messages (message k by `sender_of(k)`), at most `in_flight` deliveries outstanding, while every
    client reads its `expected` share; return what the clients saw.

    Raises:
        HarnessError: the flow did not end within its bound, or a client's connection failed.
    """
    flow = _Flow(messages, members, max(1, in_flight // members))
    deliveries = sum(expected)

    async def send_all() -> None:
        for k in range(messages):
            await flow.window.acquire()
            await sender_of(k).send(f"{k} {time.perf_counter_ns()}")

    usage = resource.getrusage(resource.RUSAGE_SELF)
    busy0, total0 = h.machine_busy()
    started_ns = time.perf_counter_ns()
    try:
        # One group: a client that fails ends the flow at once (its deliveries would never come).
        async with asyncio.timeout(flow_bound_s(deliveries)), asyncio.TaskGroup() as group:
            for client, share in zip(clients, expected, strict=True):
                group.create_task(_receive(flow, client, share))
            group.create_task(send_all())
    except TimeoutError:
        done = sum(flow.got)
        raise h.HarnessError(f"a flow of {messages:,} messages did not end within {flow_bound_s(deliveries):.0f} s "
                             f"({done:,} of {deliveries:,} deliveries)") from None  # fmt: skip
    except BaseExceptionGroup as failures:
        first = failures.exceptions[0]
        raise h.HarnessError(f"a client failed during a flow: {first!r}") from first
    used = resource.getrusage(resource.RUSAGE_SELF)
    busy1, total1 = h.machine_busy()
    cpu = (used.ru_utime + used.ru_stime) - (usage.ru_utime + usage.ru_stime)
    ordered = sorted(flow.latencies_ns)
    return FlowResult(
        messages=messages, deliveries=len(ordered), seconds=(flow.last_ns - started_ns) / 1e9,
        p50_us=percentile(ordered, 50) / 1e3, p90_us=percentile(ordered, 90) / 1e3,
        p99_us=percentile(ordered, 99) / 1e3, max_us=ordered[-1] / 1e3 if ordered else float("nan"),
        client_cpu_s=cpu, host_busy=(busy1 - busy0) / max(1, total1 - total0), errors=flow.errors,
        first_error=flow.first_error,
    )  # fmt: skip


# --- the C client, benches/ws_load.c ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WsLoad:
    """ws_load, built: the binary, the compiler's version line, and where its runs write their stderr."""

    binary: Path
    compiler: str
    logs: Path


def find_compiler() -> list[str] | None:
    """The C compiler's command: $CC if set (it may carry flags), else the first of COMPILERS on PATH."""
    if cc := os.environ.get("CC", "").strip():
        return shlex.split(cc)
    found = next((path for name in COMPILERS if (path := shutil.which(name))), None)
    return [found] if found else None


def build_ws_load(root: Path) -> WsLoad | str:
    """Compile benches/ws_load.c into `root`; the result, or why it could not be built."""
    compiler = find_compiler()
    if compiler is None:
        return f"no C compiler: $CC is not set and none of {', '.join(COMPILERS)} is on PATH"
    binary = root / "ws_load"
    argv = [*compiler, "-O2", "-std=c11", "-o", str(binary), str(WS_LOAD_SOURCE)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
        version = subprocess.run([*compiler, "--version"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`{shlex.join(argv)}` failed: {exc}"
    if done.returncode != 0:
        said = "\n".join((done.stderr or done.stdout).strip().splitlines()[:10])
        return f"`{shlex.join(argv)}` exited with code {done.returncode}" + (f":\n{said}\n" if said else "")
    first = version.stdout.splitlines()[:1]
    return WsLoad(binary, first[0].strip() if first else compiler[0], root / "logs")


def _file_tail(path: Path, lines: int = 20) -> str:
    try:
        tail = path.read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return "  (no output)"
    return "\n".join(f"  | {line}" for line in tail) if tail else "  (no output)"


async def run_ws_load(
    load: WsLoad, server: h.Server, *, room_names: str, rooms: int, per_room: int, sender: str, warmup: int,
    messages: int, in_flight: int, rate: float = 0,
) -> tuple[FlowResult, float]:  # fmt: skip
    """Run ws_load against `server`: `rooms` rooms of `per_room` clients (room i is `<room_names><i>`), a warm-up
    flow of `warmup` messages, then the measured flow of `messages` (with `rate`: open-loop, that many messages a
    second, each timed from when it was due); return the measured flow and the server's CPU
    seconds over it (read when ws_load says it is warm, and again when it has printed its result).

    Raises:
        HarnessError: ws_load failed (its stderr is quoted), printed no result, or did not end within its bound
            (then it is killed, by its PID).
    """
    clients = rooms * per_room
    phase_s = max(flow_bound_s(max(warmup, messages) * per_room),
                  CONNECT_BOUND_S + clients * CONNECT_US_PER_CLIENT / 1e6)  # fmt: skip
    argv = [str(load.binary), "--host", h.HOST, "--port", str(server.port), "--path-prefix", ROUTE,
            "--room-names", room_names, "--rooms", str(rooms), "--clients-per-room", str(per_room),
            "--messages", str(messages), "--in-flight", str(in_flight), "--sender", sender, "--warmup", str(warmup),
            "--timeout-s", f"{phase_s:g}", "--rate", f"{rate:g}", "--pause-after-warmup"]  # fmt: skip
    log_path = load.logs / f"ws_load-{server.name}-{room_names.rstrip('-')}{'-paced' if rate else ''}.log"
    bound = 3 * phase_s + STOP_TIMEOUT_S  # connecting, the warm-up flow and the measured flow, each within phase_s
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
            preexec_fn=h._die_with_parent,  # SIGTERM if the bench dies; the bench runs no threads
        )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None

    async def failed(what: str) -> h.HarnessError:
        code = await proc.wait()
        return h.HarnessError(f"ws_load {what} (exit code {code}):\n  $ {shlex.join(argv)}\n{_file_tail(log_path)}")

    try:
        async with asyncio.timeout(bound):
            if await proc.stdout.readline() != b"warm\n":
                raise await failed("ended before its measured flow")
            cpu0 = server.cpu_seconds()
            busy0, total0 = h.machine_busy()
            with contextlib.suppress(ConnectionError):  # ws_load gone: the readline below says so
                proc.stdin.write(b"go\n")
                await proc.stdin.drain()
            line = await proc.stdout.readline()
            cpu1 = server.cpu_seconds()
            busy1, total1 = h.machine_busy()
            if not line.startswith(b"{"):
                raise await failed("printed no result")
            if code := await proc.wait():
                raise await failed(f"exited with code {code} after its result")
    except TimeoutError:
        raise h.HarnessError(f"ws_load did not end within {bound:.0f} s; killed:\n  $ {shlex.join(argv)}\n"
                             f"{_file_tail(log_path)}") from None  # fmt: skip
    finally:
        if proc.returncode is None:
            proc.kill()  # by its PID
            await proc.wait()
    got = json.loads(line)

    def us(key: str) -> float:
        value = got[key]
        return float("nan") if value is None else float(value)

    flow = FlowResult(
        messages=int(got["messages"]), deliveries=int(got["deliveries"]), seconds=float(got["seconds"]),
        p50_us=us("p50_us"), p90_us=us("p90_us"), p99_us=us("p99_us"), max_us=us("max_us"),
        client_cpu_s=float(got["client_cpu_s"]), host_busy=(busy1 - busy0) / max(1, total1 - total0),
        errors=int(got["errors"]), first_error=str(got["first_error"]),
    )  # fmt: skip
    return flow, cpu1 - cpu0


# --- the Python client ------------------------------------------------------------------------------------------


async def connect_all(urls: Sequence[str]) -> list[StreamClient]:
    """A connected client per URL, CONNECT_CONCURRENCY handshakes at a time.

    Raises:
        HarnessError: a connection failed or they took too long (the clients opened so far are closed).
    """
    clients = [StreamClient(url, ping_interval=None, open_timeout=OPEN_TIMEOUT_S) for url in urls]
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(client: StreamClient) -> None:
        async with gate:
            await client.connect()

    bound = CONNECT_BOUND_S + len(urls) * CONNECT_US_PER_CLIENT / 1e6
    try:
        async with asyncio.timeout(bound), asyncio.TaskGroup() as group:
            for client in clients:
                group.create_task(one(client))
    except BaseException as exc:
        close_all(clients)
        if isinstance(exc, TimeoutError):
            raise h.HarnessError(f"connecting {len(urls):,} clients took longer than {bound:.0f} s") from None
        if isinstance(exc, BaseExceptionGroup):
            first = exc.exceptions[0]
            raise h.HarnessError(f"connecting {len(urls):,} clients failed: {first}") from first
        raise
    return clients


def close_all(clients: Sequence[StreamClient]) -> None:
    """Close every client at once (no close handshake: the server sees each connection end)."""
    for client in clients:
        client.close()


async def recv_published(client: StreamClient) -> Published | Reset:
    """The next numbered event (a published message or a reset), skipping direct ones, within RECV_TIMEOUT_S."""
    async with asyncio.timeout(RECV_TIMEOUT_S):
        while True:
            event = await client.recv()
            if not isinstance(event, Direct):
                return event


# --- servers ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setup:
    """What every server start needs: the python, the daemon's path, the workerd binary, the temp directory."""

    python: str
    compiled: bool
    workerd: Workerd | None
    root: Path  # runs/<label>/ (manifest, data), cache/ (the daemon's compile cache), logs/

    @contextmanager
    def start(self, variant: str, label: str) -> Iterator[h.Server]:
        """Start `variant` fresh, with an empty data directory, and stop it by its PID on leaving."""
        site = self.root / "runs" / label
        (site / "data").mkdir(parents=True)
        argv: Callable[[int], list[str]]
        if variant == "micromono":
            argv = partial(h.micromono_argv, self.python, write_manifest(site, self.root / "cache"),
                           compiled=self.compiled)  # fmt: skip
        else:
            assert self.workerd is not None
            argv = partial(workerd_argv, self.workerd, site / "data")
        with h.Server.start(label, argv, self.root / "logs") as server:
            try:
                yield server
            except h.HarnessError as exc:
                raise h.HarnessError(f"{label}: {exc}\n  its log ends:\n{server.log_tail()}") from exc
            finally:
                server.stop(STOP_TIMEOUT_S)


def write_manifest(site: Path, cache: Path) -> Path:
    """A services.toml in `site` serving a copy of room.wasm as the actor service `chat`, with WebSockets."""
    shutil.copy(ROOM_WASM, site / "room.wasm")
    manifest = site / "services.toml"
    manifest.write_text(
        "# bench_ws: generated; see benches/bench_ws.py\n"
        "version = 1\n\n"
        "[daemon]\n"
        'listen = "127.0.0.1:0"\n'
        'metrics_listen = ""\n'
        f"data_dir = {json.dumps(str(site / 'data'))}\n"
        f"cache_dir = {json.dumps(str(cache))}\n"
        'log_format = "json"\n\n'
        "[services.chat]\n"
        'kind = "actor"\n'
        'wasm = "room.wasm"\n'
        'routes = ["/chat/{key}"]\n'
        "websocket = true\n"
        f"max_live = {ACTOR_MAX_LIVE}\n"
    )
    return manifest


def workerd_argv(workerd: Workerd, data: Path, port: int) -> list[str]:
    """`workerd serve` of do_chat.capnp, its socket on 127.0.0.1:port and its objects' storage in `data`."""
    return [str(workerd.binary), "serve", str(WORKERD_CONFIG), WORKERD_CONST,
            "--socket-addr", f"http={h.HOST}:{port}", "--directory-path", f"do-storage={data}"]  # fmt: skip


def websocket_unsupported(python: str, root: Path) -> str | None:
    """None if the daemon's config takes this bench's manifest (`websocket = true` on an actor), else why not (its
    config error, or why it could not be asked)."""
    site = root / "config-check"
    (site / "data").mkdir(parents=True)
    manifest = write_manifest(site, root / "cache")
    script = "import sys\nfrom micromono.config import load_config\nload_config(sys.argv[1])\n"
    try:
        done = subprocess.run([python, "-c", script, str(manifest)], cwd=h.REPO, capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"could not ask the daemon's config: {exc}"
    if done.returncode == 0:
        return None
    lines = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
    return next((line for line in lines if "websocket" in line), lines[-1] if lines else "no output")


def url(port: int, room: str) -> str:
    return f"ws://{h.HOST}:{port}{ROUTE}{room}"


async def verify_contract(variant: str, port: int) -> None:
    """Check the room before any load: a message reaches both clients with one seq; a client that left resumes with
    `since` and gets what it missed; a `since` past the last message gets a reset.

    Raises:
        HarnessError: the server did anything else.
    """
    first, second = await connect_all([url(port, "contract")] * 2)
    late = StreamClient(url(port, "contract"), since=10**9, ping_interval=None)
    try:
        await first.send("hello")
        one, two = await recv_published(first), await recv_published(second)
        if not (isinstance(one, Published) and one == two and one.data == "hello"):
            raise h.HarnessError(f"{variant}: 'hello' reached the two clients as {one!r} and {two!r}")
        await second.aclose()
        await first.send("again")
        mine = await recv_published(first)
        await second.reconnect()
        resumed = await recv_published(second)
        if not (resumed == mine == Published(one.seq + 1, "again")):
            raise h.HarnessError(f"{variant}: after since={one.seq}, the client resumed with {resumed!r}, expected "
                                 f"{Published(one.seq + 1, 'again')!r} (its peer got {mine!r})")  # fmt: skip
        await late.connect()
        reset = await recv_published(late)
        if reset != Reset(one.seq + 1):
            raise h.HarnessError(f"{variant}: since=10**9 got {reset!r}, expected {Reset(one.seq + 1)!r}")
    except (StreamError, TimeoutError) as exc:
        raise h.HarnessError(f"{variant}: the contract check failed: {exc!r}") from exc
    finally:
        close_all([first, second, late])


# --- parts fanout and rooms -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FlowRun:
    """One measured flow against one server."""

    repeat: int
    variant: str
    workload: str  # "fanout" or "rooms"
    client: str  # "c" (ws_load) or "python"
    clients: int
    in_flight: int
    flow: FlowResult
    server_cpu_s: float
    rss_kib: int

    @property
    def rate(self) -> float:
        """Delivered messages per second."""
        return self.flow.deliveries / self.flow.seconds if self.flow.seconds > 0 else float("nan")

    @property
    def client_cores(self) -> float:
        return self.flow.client_cpu_s / self.flow.seconds

    @property
    def server_cores(self) -> float:
        return self.server_cpu_s / self.flow.seconds

    @property
    def server_cpu_us(self) -> float:
        """Server CPU per delivery, in µs."""
        return self.server_cpu_s / self.flow.deliveries * 1e6 if self.flow.deliveries else float("nan")

    @property
    def client_bound(self) -> bool:
        return self.client_cores >= SATURATED_CORES

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {
            "rate": self.rate,
            "client_cores": self.client_cores,
            "server_cores": self.server_cores,
            "server_cpu_us_per_delivery": self.server_cpu_us,
            "client_bound": self.client_bound,
        }


async def measure_fanout(server: h.Server, variant: str, repeat: int, sizes: Sizes, load: WsLoad | None) -> FlowRun:
    """`fanout_clients` clients in one room; the first sends: a warm-up flow, then the measured one (with ws_load
    if given, else with StreamClients)."""
    members = sizes.fanout_clients
    warmup = max(100, sizes.fanout_messages // WARMUP_SHARE)
    if load is not None:
        flow, cpu = await run_ws_load(load, server, room_names=f"fanout-{repeat}-", rooms=1, per_room=members,
                                      sender="fanout", warmup=warmup, messages=sizes.fanout_messages,
                                      in_flight=sizes.in_flight)  # fmt: skip
        server.check_alive()
        return FlowRun(repeat, variant, "fanout", "c", members, sizes.in_flight, flow, cpu, server.rss_kib())
    room = url(server.port, f"fanout-{repeat}")
    clients = await connect_all([room] * members)
    try:
        everyone = [sizes.fanout_messages] * len(clients)

        def sender(k: int) -> StreamClient:
            return clients[0]

        await run_flow(clients, sender, [warmup] * len(clients), len(clients), warmup, sizes.in_flight)
        cpu0 = server.cpu_seconds()
        flow = await run_flow(clients, sender, everyone, len(clients), sizes.fanout_messages, sizes.in_flight)
        cpu1 = server.cpu_seconds()
        server.check_alive()
        return FlowRun(repeat, variant, "fanout", "python", len(clients), sizes.in_flight, flow, cpu1 - cpu0,
                       server.rss_kib())  # fmt: skip
    finally:
        close_all(clients)


async def measure_rooms(server: h.Server, variant: str, repeat: int, sizes: Sizes, load: WsLoad | None) -> FlowRun:
    """`rooms` rooms of 2 clients; message k is sent by client k mod (2 x rooms), both clients of its room get it
    (with ws_load if given, else with StreamClients)."""
    count = 2 * sizes.rooms
    warmup = max(count, sizes.rooms_messages // WARMUP_SHARE)  # every room active before the window
    if load is not None:
        flow, cpu = await run_ws_load(load, server, room_names=f"rooms-{repeat}-", rooms=sizes.rooms, per_room=2,
                                      sender="rooms", warmup=warmup, messages=sizes.rooms_messages,
                                      in_flight=sizes.in_flight)  # fmt: skip
        server.check_alive()
        return FlowRun(repeat, variant, "rooms", "c", count, sizes.in_flight, flow, cpu, server.rss_kib())
    clients = await connect_all([url(server.port, f"rooms-{repeat}-{i // 2}") for i in range(count)])
    try:

        def sender(k: int) -> StreamClient:
            return clients[k % len(clients)]

        def shares(messages: int) -> list[int]:
            """Messages each client receives: those sent in its room (by it and by its peer)."""
            sent = [0] * len(clients)
            for k in range(messages):
                sent[k % len(clients)] += 1
            return [sent[i] + sent[i ^ 1] for i in range(len(clients))]

        await run_flow(clients, sender, shares(warmup), 2, warmup, sizes.in_flight)
        cpu0 = server.cpu_seconds()
        flow = await run_flow(clients, sender, shares(sizes.rooms_messages), 2, sizes.rooms_messages, sizes.in_flight)
        cpu1 = server.cpu_seconds()
        server.check_alive()
        return FlowRun(repeat, variant, "rooms", "python", len(clients), sizes.in_flight, flow, cpu1 - cpu0,
                       server.rss_kib())  # fmt: skip
    finally:
        close_all(clients)


async def measure_rooms_paced(server: h.Server, variant: str, repeat: int, sizes: Sizes, load: WsLoad) -> FlowRun:
    """The rooms of `measure_rooms` again (on the same server), at `rooms_rate` messages a second, open-loop: the
    latency at a load the server keeps up with."""
    count = 2 * sizes.rooms
    flow, cpu = await run_ws_load(load, server, room_names=f"paced-{repeat}-", rooms=sizes.rooms, per_room=2,
                                  sender="rooms", warmup=count, messages=sizes.rooms_paced_messages,
                                  in_flight=sizes.in_flight, rate=sizes.rooms_rate)  # fmt: skip
    server.check_alive()
    return FlowRun(repeat, variant, "rooms_paced", "c", count, sizes.in_flight, flow, cpu, server.rss_kib())


# --- part resume ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResumeRound:
    """One reconnection after `missed` messages were published while the client was away."""

    missed: int
    handshake_ms: float  # reconnect() called -> returned (TCP + WebSocket handshake)
    first_ms: float  # reconnect() called -> the first missed message
    all_ms: float  # reconnect() called -> the last missed message
    complete: bool  # all of them, in order, with the texts sent, and no reset
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ResumeRun:
    repeat: int
    variant: str
    rounds: list[ResumeRound]


async def publish(sender: StreamClient, texts: Sequence[str], window: int) -> None:
    """Send `texts` through `sender`, at most `window` of them not yet received back, and wait for all of them back
    (so every one is published before this returns).

    Raises:
        HarnessError: a text came back out of order, or not within RECV_TIMEOUT_S.
    """
    back = 0
    for i, text in enumerate(texts):
        while i - back >= window:
            back += await _echo(sender, texts[back])
        await sender.send(text)
    while back < len(texts):
        back += await _echo(sender, texts[back])


async def _echo(sender: StreamClient, expected: str) -> int:
    event = await recv_published(sender)
    if not (isinstance(event, Published) and event.data == expected):
        raise h.HarnessError(f"the sender got {event!r} back, expected the text {expected!r}")
    return 1


async def measure_resume(server: h.Server, variant: str, repeat: int, sizes: Sizes) -> ResumeRun:
    """A client leaves, `resume_missed` messages are published, it reconnects with `since`; `resume_rounds` times."""
    sender, away = await connect_all([url(server.port, f"resume-{repeat}")] * 2)
    rounds: list[ResumeRound] = []
    try:
        await publish(sender, ["start"], 1)
        if (start := await recv_published(away)) != Published(sender.last_seq or 0, "start"):
            raise h.HarnessError(f"{variant}: the resuming client got {start!r} first")
        for number in range(sizes.resume_rounds):
            await away.aclose()
            since = away.last_seq or 0
            texts = [f"r{number}-{i}" for i in range(sizes.resume_missed)]
            await publish(sender, texts, 50)
            started = time.perf_counter_ns()
            await away.reconnect()
            handshake = time.perf_counter_ns()
            stamps: list[int] = []
            events: list[Published | Reset] = []
            while len(events) < len(texts):
                events.append(await recv_published(away))
                stamps.append(time.perf_counter_ns())
                if isinstance(events[-1], Reset):
                    break
            expected = [Published(since + 1 + i, text) for i, text in enumerate(texts)]
            detail = "" if events == expected else f"got {events[:1]!r}...{events[-1:]!r}, expected since={since}+1.."
            rounds.append(ResumeRound(len(texts), (handshake - started) / 1e6, (stamps[0] - started) / 1e6,
                                      (stamps[-1] - started) / 1e6, events == expected, detail))  # fmt: skip
    except (StreamError, TimeoutError) as exc:
        raise h.HarnessError(f"{variant}: resume failed: {exc!r}") from exc
    finally:
        close_all([sender, away])
    server.check_alive()
    return ResumeRun(repeat, variant, rounds)


# --- part idle --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IdleRun:
    """N connections held idle to one room of one fresh server."""

    variant: str
    connections: int
    connect_s: float
    rss_one_kib: int  # one connection open
    rss_settled_kib: int  # all open, after the settle
    rss_waited_kib: int  # all open, after the idle wait
    client_rss_one_kib: int
    client_rss_all_kib: int
    held: int  # connections that got the message sent after the readings
    activations: tuple[int, int] | None  # workerd: Room objects constructed before and after that message
    note: str

    def kib_per_connection(self, rss_kib: int) -> float:
        return (rss_kib - self.rss_one_kib) / (self.connections - 1)

    @property
    def settled_kib(self) -> float:
        return self.kib_per_connection(self.rss_settled_kib)

    @property
    def waited_kib(self) -> float:
        return self.kib_per_connection(self.rss_waited_kib)

    @property
    def client_kib(self) -> float:
        return (self.client_rss_all_kib - self.client_rss_one_kib) / (self.connections - 1)

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {"settled_kib": self.settled_kib, "waited_kib": self.waited_kib,
                               "client_kib": self.client_kib}  # fmt: skip


def connections_possible(wanted: int) -> tuple[int, str]:
    """Raise this process's open-files limit to its hard limit (the servers started later inherit it); return how
    many connections fit and, if fewer than `wanted`, why."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    limits = [(soft - FD_RESERVE, f"RLIMIT_NOFILE's hard limit is {hard:,} (`ulimit -Hn`)")]
    low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    limits.append((high - low + 1 - FD_RESERVE, f"net.ipv4.ip_local_port_range has {high - low + 1:,} ports"))
    possible, why = min(limits)
    return (wanted, "") if possible >= wanted else (max(possible, 2), f"{possible:,} of {wanted:,}: {why}")


def open_fds(server: h.Server) -> int:
    """File descriptors open in the server's processes."""
    return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in server.pids())


def fd_limit(server: h.Server) -> int:
    """The server's soft RLIMIT_NOFILE (as it is now: the daemon raises its own at start-up)."""
    for line in Path(f"/proc/{server.proc.pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise h.HarnessError(f"no open-files limit in /proc/{server.proc.pid}/limits")


async def hold_idle(server: h.Server, variant: str, connections: int, sizes: Sizes, note: str) -> IdleRun:
    """One connection, then the rest to the same room; server RSS after each, then again after the idle wait.

    A probe of FD_PROBE connections first counts the descriptors the server holds per connection, so that the
    bench opens no more than its open-files limit allows (workerd dies of EMFILE rather than refusing).
    """
    room = url(server.port, "idle")
    first = await connect_all([room])
    rest: list[StreamClient] = []
    try:
        await asyncio.sleep(sizes.idle_settle_s)
        rss_one, client_one = server.rss_kib(), h.rss_kib(os.getpid())
        started = time.perf_counter()
        fds = open_fds(server)
        rest = await connect_all([room] * min(FD_PROBE, connections - 1))
        per_connection = max(1, -(-(open_fds(server) - fds) // len(rest)))
        fit = (fd_limit(server) - open_fds(server) - FD_RESERVE) // per_connection + len(rest) + 1
        if fit < connections:
            why = (
                f"{variant} holds {per_connection} file descriptors per connection and may open "
                f"{fd_limit(server):,} (its RLIMIT_NOFILE; the hard limit here is "
                f"{resource.getrlimit(resource.RLIMIT_NOFILE)[1]:,}): {fit:,} connections of {connections:,}"
            )
            note = f"{note}; {why}" if note else why  # fmt: skip
            connections = fit
        rest += await connect_all([room] * (connections - 1 - len(rest)))
        connect_s = time.perf_counter() - started
        await asyncio.sleep(sizes.idle_settle_s)
        rss_settled, client_all = server.rss_kib(), h.rss_kib(os.getpid())
        await asyncio.sleep(sizes.idle_wait_s)
        rss_waited = server.rss_kib()
        before = workerd_activations(server.port) if variant == "workerd" else None
        everyone = first + rest
        flow = await run_flow(everyone, lambda k: first[0], [1] * len(everyone), len(everyone), 1, len(everyone))
        after = workerd_activations(server.port) if variant == "workerd" else None
    finally:
        close_all(first + rest)
    server.check_alive()
    activations = None if before is None or after is None else (before, after)
    return IdleRun(variant, connections, connect_s, rss_one, rss_settled, rss_waited, client_one, client_all,
                   flow.deliveries - flow.errors, activations, note)  # fmt: skip


# --- tables -----------------------------------------------------------------------------------------------------


def per_repeat_ratios(runs: Sequence[FlowRun], workload: str, num: str, den: str) -> dict[int, float]:
    """num / den delivered messages/s on `workload`, repeat by repeat (only repeats where both ran)."""
    rate = {(r.repeat, r.variant): r.rate for r in runs if r.workload == workload}
    repeats = sorted({r.repeat for r in runs})
    return {rep: rate[rep, num] / rate[rep, den] for rep in repeats if (rep, num) in rate and (rep, den) in rate}


WORKLOAD_TITLES: Final = {"fanout": "fan-out", "rooms": "rooms", "rooms_paced": "rooms, paced"}
#: The workloads run as fast as the window lets them: their delivered/s are compared between servers.
SATURATING: Final = ("fanout", "rooms")


def print_flows(runs: list[FlowRun], variants: Sequence[str], client: str, rooms_rate: int) -> dict[str, Any]:
    """The flow table (median [min, max] over repeats) and the per-repeat ratios; return the summary."""
    summary: dict[str, Any] = {}
    rows = []
    for workload in WORKLOAD_TITLES:
        for variant in variants:
            mine = [r for r in runs if r.variant == variant and r.workload == workload]
            if not mine:
                continue
            figures = {
                "rate": [r.rate for r in mine],
                "p50_us": [r.flow.p50_us for r in mine],
                "p99_us": [r.flow.p99_us for r in mine],
                "max_us": [r.flow.max_us for r in mine],
                "server_cpu_us": [r.server_cpu_us for r in mine],
                "server_cores": [r.server_cores for r in mine],
                "client_cores": [r.client_cores for r in mine],
                "host_busy_pct": [100 * r.flow.host_busy for r in mine],
                "rss_mib": [r.rss_kib / 1024 for r in mine],
            }
            bound = sum(r.client_bound for r in mine)
            errors = sum(r.flow.errors for r in mine)
            rows.append([
                variant, WORKLOAD_TITLES[workload], f"{mine[0].clients:,}", f"{mine[0].flow.deliveries:,}",
                h.spread(figures["rate"]), h.spread(figures["p50_us"]), h.spread(figures["p99_us"]),
                h.fmt(h.median(figures["max_us"])), h.spread(figures["server_cpu_us"], 2),
                h.fmt(h.median(figures["server_cores"]), 2),
                h.fmt(h.median(figures["client_cores"]), 2) + (f" (bound in {bound}/{len(mine)})" if bound else ""),
                h.fmt(h.median(figures["host_busy_pct"])), h.fmt(h.median(figures["rss_mib"]), 1), str(errors),
            ])  # fmt: skip
            summary.setdefault(workload, {})[variant] = {k: h.median(v) for k, v in figures.items()} | {
                "rate_per_repeat": figures["rate"],
                "p99_us_per_repeat": figures["p99_us"],
                "client_bound_runs": bound,
                "errors": errors,
                "first_error": next((r.flow.first_error for r in mine if r.flow.errors), ""),
            }
    in_flight = runs[0].in_flight
    print(f"\n## flows: delivered messages/s and latency send -> receipt, at most {in_flight} deliveries in flight "
          "(median [min, max] over repeats)\n")  # fmt: skip
    print(h.table(["variant", "workload", "clients", "deliveries", "delivered/s", "p50 µs", "p99 µs", "max µs",
                   "server CPU µs/delivery", "server cores", "client cores", "host busy %", "server RSS MiB",
                   "errors"],
                  rows))  # fmt: skip
    cores = "ws_load's CPU" if client == "c" else "this process's CPU"
    print("\nfan-out: one room, its first client sends, every client receives (its own copy too); rooms: 2 clients "
          f"per room, each sends in turn, both receive. client: {client}, {CLIENT_TITLES[client]}. client cores = "
          f"{cores} over the window; at >= {SATURATED_CORES} the client, not the server, bounds delivered/s "
          f"(server CPU per delivery does not depend on it). host busy = all {os.cpu_count()} CPUs, anyone's work "
          "(the kernel's loopback included): near 100 the machine itself is the bound. rooms, paced: the same rooms "
          f"at {rooms_rate:,} messages/s, open-loop, each timed from when it was due (ws_load only).")  # fmt: skip
    for workload, figures in summary.items():
        for variant, figure in figures.items():
            if figure["errors"]:
                print(f"\nWARNING: {variant} {workload}: {figure['errors']} errors, first: {figure['first_error']}")
    if "micromono" in variants and "workerd" in variants:
        ratio_rows = []
        for workload in SATURATING:
            rate = per_repeat_ratios(runs, workload, "micromono", "workerd")
            cpu_us = {(r.repeat, r.variant): r.server_cpu_us for r in runs if r.workload == workload}
            cpu = {rep: cpu_us[rep, "workerd"] / cpu_us[rep, "micromono"] for rep in rate}
            for rep in sorted(rate):
                ratio_rows.append([WORKLOAD_TITLES[workload], str(rep), h.fmt(rate[rep], 2), h.fmt(cpu[rep], 2)])
            ratio_rows.append([WORKLOAD_TITLES[workload], "median", h.fmt(h.median(list(rate.values())), 2),
                               h.fmt(h.median(list(cpu.values())), 2)])  # fmt: skip
            summary.setdefault("ratios", {})[workload] = {
                "rate_per_repeat": list(rate.values()),
                "rate_median": h.median(list(rate.values())),
                "server_cpu_per_delivery_per_repeat": list(cpu.values()),
                "server_cpu_per_delivery_median": h.median(list(cpu.values())),
            }
        print("\n## flows: ratios, same repeat (median of the per-repeat ratios)\n")
        print(h.table(["workload", "repeat", "delivered/s micromono / workerd",
                       "server CPU per delivery workerd / micromono"], ratio_rows))  # fmt: skip
    return summary


def print_idle(runs: list[IdleRun], sizes: Sizes) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    rows = []
    for run in runs:
        activations = "-" if run.activations is None else f"{run.activations[0]} -> {run.activations[1]}"
        rows.append([
            run.variant, f"{run.connections:,}", h.fmt(run.connections / run.connect_s),
            h.fmt(run.rss_one_kib / 1024, 1), h.fmt(run.rss_settled_kib / 1024, 1), h.fmt(run.settled_kib, 2),
            h.fmt(run.rss_waited_kib / 1024, 1), h.fmt(run.waited_kib, 2), h.fmt(run.client_kib, 1),
            f"{run.held:,}", activations,
        ])  # fmt: skip
        summary[run.variant] = run.as_json()
    print(f"\n## idle connections held to one room: KiB per connection = (server RSS with all - with 1) / (all - 1), "
          f"{sizes.idle_settle_s:g} s after connecting and after {sizes.idle_wait_s:g} s more idle\n")  # fmt: skip
    print(h.table(["variant", "connections", "connected/s", "RSS MiB, 1", "RSS MiB, all", "KiB/conn",
                   f"RSS MiB, +{sizes.idle_wait_s:g} s", f"KiB/conn, +{sizes.idle_wait_s:g} s", "client KiB/conn",
                   "held (got a message after)", "workerd Rooms constructed"], rows))  # fmt: skip
    for run in runs:
        if run.note:
            print(f"\n{run.variant}: {run.note}")
    if any(run.activations for run in runs):
        print("\nworkerd Rooms constructed: the count before and after the last message; one more after means the "
              "room had hibernated during the wait.")  # fmt: skip
    return summary


def print_resume(runs: list[ResumeRun]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    rows = []
    for variant in dict.fromkeys(r.variant for r in runs):
        rounds = [rnd for r in runs if r.variant == variant for rnd in r.rounds]
        complete = sum(rnd.complete for rnd in rounds)
        figures = {key: [getattr(rnd, key) for rnd in rounds] for key in ("handshake_ms", "first_ms", "all_ms")}
        rows.append([variant, f"{len(rounds)}", f"{rounds[0].missed:,}", h.spread(figures["handshake_ms"], 2),
                     h.spread(figures["first_ms"], 2), h.spread(figures["all_ms"], 2),
                     h.fmt(rounds[0].missed / (h.median(figures["all_ms"]) / 1e3)),
                     f"{complete}/{len(rounds)}"])  # fmt: skip
        summary[variant] = {k: h.median(v) for k, v in figures.items()} | {
            "rounds": len(rounds), "complete": complete, "missed": rounds[0].missed,
            "details": [rnd.detail for rnd in rounds if rnd.detail],
        }  # fmt: skip
        for rnd in rounds:
            if rnd.detail:
                print(f"WARNING: {variant} resume incomplete: {rnd.detail}")
    print("\n## resume: reconnect with since after N messages were published meanwhile (median [min, max] over "
          "rounds; ms from reconnect())\n")  # fmt: skip
    print(h.table(["variant", "rounds", "missed", "handshake ms", "first message ms", "all of them ms",
                   "messages/s", "all, in order"], rows))  # fmt: skip
    return summary


def make_bars(summary: dict[str, Any], rooms_rate: int) -> list[Bar]:
    bars: list[Bar] = []
    flows = summary.get("flows", {})
    for workload in SATURATING:
        title = WORKLOAD_TITLES[workload]
        mine = flows.get(workload, {}).get("micromono", {})
        peer = flows.get(workload, {}).get("workerd", {})
        ratio = flows.get("ratios", {}).get(workload, {})
        figures = ""
        if ratio:
            bound = f"; client-bound micromono runs: {mine['client_bound_runs']}" if mine["client_bound_runs"] else ""
            figures = (f"{h.fmt(mine['rate'])} / {h.fmt(peer['rate'])} delivered/s (medians); "
                       f"{per_repeat(ratio['rate_per_repeat'], 2)}{bound}")  # fmt: skip
        # The rooms' latency is read at a fixed rate (the saturated flow's latency is its queue), when it ran.
        paced = flows.get("rooms_paced", {}).get("micromono", {}) if workload == "rooms" else {}
        timed, latency_title = (paced, f"{title}: p99 latency at {rooms_rate:,} messages/s (median)") if paced else (
            mine, f"{title}: p99 latency (median)")  # fmt: skip
        bars += [
            Bar(f"{title}: delivered/s / workerd's (median of per-repeat)", ratio.get("rate_median"),
                BAR_WORKERD_RATIO, True, "x", digits=2, figures=figures),
            Bar(latency_title, timed.get("p99_us"), BAR_P99_US, False, " µs", strict=True,
                figures=per_repeat(timed.get("p99_us_per_repeat", []))),
        ]  # fmt: skip
    idle = summary.get("idle", {}).get("micromono", {})
    figures = ""
    if idle:
        figures = (f"{idle['connections']:,} connections; {h.fmt(idle['settled_kib'], 2)} KiB/conn after "
                   f"{idle['rss_settled_kib'] - idle['rss_one_kib']:,} KiB delta, settled")  # fmt: skip
    bars.append(Bar("idle: server memory per connection, after the idle wait", idle.get("waited_kib"), BAR_IDLE_KIB,
                    False, " KiB", strict=True, digits=2, figures=figures))  # fmt: skip
    return bars


# --- main -------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="WebSockets to actors: micromono's chat actor against a workerd Durable Object chat room on the "
        "WebSocket Hibernation API, in one run: fan-out (100 clients in a room), 1,000 rooms of 2, idle connections "
        "(memory per connection) and resuming with since.",
        epilog=f"Full: {FULL.repeats} repeats, fan-out {FULL.fanout_clients} clients x {FULL.fanout_messages:,} "
        f"messages, {FULL.rooms:,} rooms x 2 clients and {FULL.rooms_messages:,} messages, {FULL.in_flight} "
        f"deliveries in flight, {FULL.idle_connections:,} idle connections, resume after {FULL.resume_missed:,} "
        f"messages x {FULL.resume_rounds} rounds. --quick: {QUICK.repeats} repeat, {QUICK.fanout_messages} fan-out "
        f"messages, {QUICK.rooms} rooms, {QUICK.idle_connections} idle connections, {QUICK.resume_rounds} resume "
        f"rounds. workerd: install with `{WORKERD_INSTALL}`.",
    )
    h.add_common_args(parser, VARIANTS)
    h.add_parts_arg(parser, PARTS)
    parser.add_argument("--in-flight", type=int, metavar="N", help="deliveries outstanding at most in the flows")
    parser.add_argument("--idle", type=int, metavar="N", help="idle connections to hold")
    parser.add_argument("--pure", action="store_true", help="run the daemon in pure Python (MICROMONO_PURE=1)")
    parser.add_argument("--client", choices=CLIENTS,
                        help="the client of the fanout and rooms parts: c (benches/ws_load.c, built with $CC or "
                        "cc; the default when it builds) or python (sdk/python/micromono_stream.py in this "
                        "process)")  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the bench; 0 when every run completed (whatever the bars say), 1 when one could not."""
    args = parse_args(argv)
    h.exit_on_sigterm()
    variants: list[str] = args.only
    parts: list[str] = args.parts
    base = QUICK if args.quick else FULL
    sizes = replace(base, repeats=args.repeats or base.repeats, in_flight=args.in_flight or base.in_flight,
                    idle_connections=args.idle or base.idle_connections)  # fmt: skip
    notes: list[str] = []
    idle_connections, idle_note = sizes.idle_connections, ""
    if "idle" in parts:
        idle_connections, idle_note = connections_possible(sizes.idle_connections)
        if idle_note:
            notes.append(f"idle: {idle_note}")
    with tempfile.TemporaryDirectory(prefix="bench_ws-") as tmp:
        root = Path(tmp)
        (root / "logs").mkdir()
        compiled = False
        if "micromono" in variants:
            reason = None
            if not ROOM_WASM.exists():
                reason = f"{ROOM_WASM.relative_to(h.REPO)} does not exist (`make examples` builds it)"
            elif unavailable := h.micromono_unavailable(args.python):
                print(f"micromono unavailable: {unavailable}\nRun with --only workerd to measure workerd alone.",
                      file=sys.stderr)  # fmt: skip
                return 1
            elif refused := websocket_unsupported(args.python, root):
                reason = f"the daemon does not take this bench's manifest yet (websocket = true): {refused}"
            if reason:
                notes.append(f"micromono skipped: {reason}")
                variants = [v for v in variants if v != "micromono"]
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

        load: WsLoad | None = None
        client = "python" if args.client == "python" or not set(parts) & {"fanout", "rooms"} else "c"
        if client == "c":
            built = build_ws_load(root)
            if isinstance(built, WsLoad):
                load = built
            elif args.client == "c":
                print(f"bench_ws: --client c: cannot build {WS_LOAD_SOURCE.relative_to(h.REPO)}: {built}\n"
                      "Install a C compiler (scripts/install-system-deps.sh installs gcc and clang), set $CC, or run "
                      "with --client python.", file=sys.stderr)  # fmt: skip
                return 1
            else:
                client = "python"
                notes.append(f"the fanout and rooms parts use the Python client: cannot build "
                             f"{WS_LOAD_SOURCE.relative_to(h.REPO)}: {built}. Install a C compiler "
                             "(scripts/install-system-deps.sh installs gcc and clang) or set $CC.")  # fmt: skip

        params = {
            "variants": ",".join(variants) or "none",
            "parts": ",".join(parts),
            "micromono_path": ("compiled" if compiled else "pure") if "micromono" in variants else "n/a",
            **asdict(sizes),
            "idle_connections": idle_connections,
            "client": f"{client}: {CLIENT_TITLES[client]}" if set(parts) & {"fanout", "rooms"} else "n/a",
            "quick": args.quick,
        }
        vers = h.versions(args.python) | {"websockets": importlib.metadata.version("websockets")}  # the client's
        vers |= {"workerd": workerd.version} if workerd else {}
        vers |= {"ws_load built with": load.compiler} if load else {}
        report = h.Report("bench_ws", params, vers)
        h.print_preamble("bench_ws: WebSockets to actors, micromono against a workerd Durable Object chat room",
                         vers, params)  # fmt: skip
        for note in notes:
            print(f"note: {note}")
        if notes:
            print()

        setup = Setup(args.python, compiled, workerd, root)
        flows: list[FlowRun] = []
        resumes: list[ResumeRun] = []
        idles: list[IdleRun] = []
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                for repeat in range(sizes.repeats if set(parts) & {"fanout", "rooms", "resume"} else 0):
                    shift = repeat % max(1, len(variants))
                    for variant in variants[shift:] + variants[:shift]:
                        with setup.start(variant, f"{variant}-r{repeat}") as server:
                            runner.run(verify_contract(variant, server.port))
                            measures: list[tuple[str, Callable[[], Awaitable[FlowRun]]]] = [
                                ("fanout", partial(measure_fanout, server, variant, repeat, sizes, load)),
                                ("rooms", partial(measure_rooms, server, variant, repeat, sizes, load)),
                            ]
                            if load is not None:
                                paced = partial(measure_rooms_paced, server, variant, repeat, sizes, load)
                                measures.append(("rooms_paced", paced))
                            for workload, measure in measures:
                                if workload.partition("_")[0] in parts:
                                    flows.append(runner.run(measure()))
                                    run = flows[-1]
                                    print(f"  repeat {repeat} {variant:9} {WORKLOAD_TITLES[workload]:12} "
                                          f"{run.rate:9,.0f} delivered/s  p99 {run.flow.p99_us:9,.0f} µs  "
                                          f"server {run.server_cpu_us:5.2f} CPU µs/delivery  client cores "
                                          f"{run.client_cores:.2f}  errors {run.flow.errors}", flush=True)  # fmt: skip
                            if "resume" in parts:
                                resumes.append(runner.run(measure_resume(server, variant, repeat, sizes)))
                                alls = [rnd.all_ms for rnd in resumes[-1].rounds]
                                print(f"  repeat {repeat} {variant:9} resume  {h.fmt(h.median(alls), 2)} ms for "
                                      f"{sizes.resume_missed:,} missed, complete "
                                      f"{sum(r.complete for r in resumes[-1].rounds)}/{len(alls)}",
                                      flush=True)  # fmt: skip
                if "idle" in parts:
                    for variant in variants:
                        with setup.start(variant, f"{variant}-idle") as server:
                            idles.append(runner.run(hold_idle(server, variant, idle_connections, sizes, idle_note)))
                            print(f"  idle {variant:9} {idles[-1].connections:,} connections: "
                                  f"{idles[-1].settled_kib:.2f} KiB/conn, {idles[-1].waited_kib:.2f} after the wait",
                                  flush=True)  # fmt: skip
        except (h.HarnessError, OSError) as exc:
            print(f"\nbench_ws failed: {exc}", file=sys.stderr)
            return 1

    summary: dict[str, Any] = {"notes": notes}
    if flows:
        summary["flows"] = print_flows(flows, variants, client, sizes.rooms_rate)
        if any(r.client_bound for r in flows):
            print(f"\nNOTE: the client ({client}) used about a whole core in some runs (client cores above): "
                  "there the client, not the server, bounds delivered/s; compare server CPU per delivery "
                  "instead.")  # fmt: skip
    if resumes:
        summary["resume"] = print_resume(resumes)
    if idles:
        summary["idle"] = print_idle(idles, sizes)
    report.samples = (
        [{"part": r.workload} | r.as_json() for r in flows]
        + [{"part": "resume"} | asdict(r) for r in resumes]
        + [{"part": "idle"} | r.as_json() for r in idles]
    )
    report.summary = summary
    bars = make_bars(summary, sizes.rooms_rate)
    print("\n## bars (reported, not asserted)\n")
    print(h.table(["bar", "measured", "target", "verdict", "figures"], [bar.row() for bar in bars]))
    print("\nloadavg at end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    if args.json:
        report.summary["bars"] = [asdict(bar) | {"verdict": bar.verdict} for bar in bars]
        report.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
