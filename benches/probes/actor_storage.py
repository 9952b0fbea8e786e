"""Probe for the actors issue: durable counter increments through micromono's actor storage (micromono/actors/).

Not a benchmark of the whole daemon: no guest, no HTTP. On a real uvloop event loop, it runs N counter increments
over 1,000 actors, each one message's transaction (`ActorState`: begin, get, put, commit) submitted to a
`ServiceStorage` with a bounded number in flight (`--in-flight`, like concurrent clients each waiting for its
reply), and prints commits a second, the average batch (commits per transaction and fsync) and the commit latency
from submit to the callback on the loop (p50, p99), for `sync = "full"` and `"normal"`. Then it reopens each file
and checks every counter. It writes into a temporary directory on the file system that holds `--dir`.

Usage: python benches/probes/actor_storage.py [--n N] [--in-flight K] [--dir PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Literal

import uvloop

from micromono.actors import ActorState, Loaded, ServiceStorage

ACTORS = 1000


async def run(directory: Path, sync: Literal["full", "normal"], n: int, in_flight: int) -> None:
    loop = asyncio.get_running_loop()
    storage = ServiceStorage(directory, f"counter-{sync}", call_soon_threadsafe=loop.call_soon_threadsafe, sync=sync)
    await asyncio.to_thread(storage.open)
    actors = [ActorState(f"k{i}", Loaded(), storage_limit=1 << 20) for i in range(ACTORS)]
    latencies: list[float] = []
    finished = loop.create_future()
    started = 0
    completed = 0

    def increment() -> None:
        nonlocal started
        actor = actors[started % ACTORS]
        started += 1
        submitted = time.perf_counter()
        actor.begin()
        value = actor.get(b"n")
        actor.put(b"n", b"%d" % (int(value) + 1 if value is not None else 1))
        commit = actor.commit(1, time.time())
        assert commit is not None

        def done(error: BaseException | None) -> None:
            nonlocal completed
            if error is not None:
                finished.set_exception(error)
                return
            latencies.append(time.perf_counter() - submitted)
            completed += 1
            if started < n:
                increment()
            elif completed == n:
                finished.set_result(None)

        storage.submit(commit, done)

    begin = time.perf_counter()
    for _ in range(min(in_flight, n)):
        increment()
    await finished
    seconds = time.perf_counter() - begin
    stats = storage.stats
    on_disk = stats.bytes_on_disk()
    await asyncio.to_thread(storage.close)
    latencies.sort()
    p50 = statistics.median(latencies) * 1e3
    p99 = latencies[int(len(latencies) * 0.99)] * 1e3
    print(
        f"sync={sync}: {n / seconds:,.0f} commits/s, {stats.commits / stats.batches:.1f} commits a batch "
        f"({stats.batches:,} batches), commit p50 {p50:.2f} ms, p99 {p99:.2f} ms; "
        f"{on_disk / 2**20:.1f} MiB on disk with the log"
    )
    check(storage.path, n)


def check(path: Path, n: int) -> None:
    """Every counter as the increments left it, read back from the file."""
    db = sqlite3.connect(path)
    try:
        total = sum(int(v) for (v,) in db.execute("SELECT v FROM kv WHERE k = x'6e'"))
    finally:
        db.close()
    if total != n:
        raise SystemExit(f"{path}: the counters add up to {total}, expected {n}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="increments per sync mode")
    parser.add_argument("--in-flight", type=int, default=32, help="increments submitted and not yet durable")
    parser.add_argument("--dir", type=Path, default=Path.cwd(), help="where the temporary databases go")
    args = parser.parse_args()
    print(f"python {platform.python_version()}, sqlite {sqlite3.sqlite_version}, {platform.machine()}, {sys.platform}")
    print(f"n={args.n:,} over {ACTORS:,} actors, {args.in_flight} in flight, uvloop {version('uvloop')}")
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        for sync in ("full", "normal"):
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(run(Path(scratch), sync, args.n, args.in_flight))


if __name__ == "__main__":
    main()
