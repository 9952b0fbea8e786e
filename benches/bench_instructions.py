"""bench_instructions: CPU instructions per ingress request, in process, counted by valgrind (callgrind).

Timings on this shared 2-vCPU VM swing by 2-3x from hour to hour; instruction counts do not. This bench feeds the
same 64-byte `POST /echo` to an ingress `HttpProtocol.data_received` (the Protocol callback uvloop calls) `N` times
with no sockets, runs that under `valgrind --tool=callgrind` twice (with N1 and N2 requests) and reports
(instructions(N2) - instructions(N1)) / (N2 - N1): the instructions one request costs in micromono's own code,
httptools, the guest call and CPython, without start-up. Variants:

  micromono    the pure-Python daemon (bench_ingress.toml: the WAT echo guest on /echo)
  micromono-c  the same on the compiled path (`micromono` forces pure Python with MICROMONO_PURE=1)
  floor        peers/proto_echo.py's EchoProtocol: httptools and a Python echo, no routing, no guest

Part 2 counts the CPU deadline mechanism the same way: bench_isolation's call-heavy guest (echo.wat, a 64-byte
CALL) called as `Instance.invoke` calls it, 10,000 and 110,000 times, with epoch interruption off (`none`), on
(`epoch`), and on with the deadline set before every call as the router does (`shipped`); bench_isolation times
the same three.

The writes go to a stub transport that counts them (uvloop's own write and the kernel are not in the count; see
bench_ingress for the whole server), and the engine's epoch ticker is slowed to once an hour (its work is per
10 ms of wall time, which valgrind stretches ~100x, not per request). Instructions are not time: a cache miss
costs more than an add. Use this to tell whether a change to the request path does less work; use bench_ingress
to see what it does to req/s.
Needs valgrind (Debian: `apt-get install valgrind`). About a minute; the variants run in parallel.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

import _harness as h

VARIANTS: Final = ("micromono", "micromono-c", "floor")
REQUEST: Final = b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Length: 64\r\n\r\n" + bytes(range(64))
WARMUP: Final = 1000
N1_FULL, N2_FULL = 2_000, 12_000
N1_QUICK, N2_QUICK = 200, 1_200
_COLLECTED: Final = re.compile(r"Collected : ([\d,]+)")


class _Transport:
    """Counts writes; enough of a transport for HttpProtocol and EchoProtocol."""

    __slots__ = ("writes",)

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


async def _micromono_protocol(cache_dir: Path) -> object:
    sys.path.insert(0, str(h.REPO))
    from micromono.config import load_config, route_table
    from micromono.daemon import Daemon
    from micromono.engine import Engine
    from micromono.ingress import HttpProtocol, Ingress, Routes

    config = load_config(h.BENCHES / "bench_ingress.toml")
    daemon = Daemon(config)
    # No epoch tick during the count: its work is per 10 ms of wall time, not per request, and under valgrind a
    # request takes ~100x its time, so ticks would add a share that depends on how busy the machine is.
    daemon.engine = Engine(daemon.router, cache_dir=cache_dir, epoch_tick=3600.0)
    await daemon._load_services()
    routes = Routes([(route, daemon.router.slot(name)) for route, name in route_table(config)])
    return HttpProtocol(Ingress(daemon.router, routes, max_request_bytes=config.daemon.max_request_bytes))


async def _floor_protocol() -> object:
    sys.path.insert(0, str(h.PEERS))
    import proto_echo  # type: ignore[import-not-found]

    clock = proto_echo.Clock()
    clock.start()
    return proto_echo.EchoProtocol(clock, set())


async def _child(variant: str, n: int, cache_dir: Path) -> None:
    protocol = await (_floor_protocol() if variant == "floor" else _micromono_protocol(cache_dir))
    transport = _Transport()
    protocol.connection_made(transport)  # type: ignore[attr-defined]
    gc.freeze()  # as the daemon does once it has started (daemon._freeze_startup_objects)
    feed = protocol.data_received  # type: ignore[attr-defined]
    for _ in range(WARMUP + n):
        feed(REQUEST)
    if transport.writes != WARMUP + n:
        raise SystemExit(f"{variant}: {transport.writes} responses to {WARMUP + n} requests")


def child_main(variant: str, n: int, cache_dir: str) -> None:
    """In the process valgrind runs: build the protocol, feed it WARMUP + n requests."""
    import uvloop

    uvloop.run(_child(variant, n, Path(cache_dir)))


EPOCH_VARIANTS: Final = ("none", "epoch", "shipped")
EPOCH_N1, EPOCH_N2 = 10_000, 110_000
EPOCH_N1_QUICK, EPOCH_N2_QUICK = 1_000, 11_000


def epoch_child_main(variant: str, n: int) -> None:
    """In the process valgrind runs: 1,000 + n calls of bench_isolation's call-heavy guest, as `variant` makes them.
    No ticker runs (its work is per 10 ms of wall time), so `epoch` counts the checks in the guest's code."""
    import bench_isolation as bi

    guest = bi.RawGuest((bi.FIXTURES / "echo.wat").read_text(), epochs=variant != "none")
    guest.deadline = float("inf")
    calls = bi._calls_with_deadline if variant == "shipped" else bi._calls_plain
    calls(guest, 1000 + n, bi.CALL_PAYLOAD)


def count(python: str, variant: str, n: int, cache_dir: Path | None) -> int:
    """Instructions of one child run with `n` measured requests (or calls, for the epoch variants).

    Raises:
        HarnessError: valgrind failed or printed no total.
    """
    # A fixed hash seed: dict probes depend on string hashes, and a random seed moves the count by up to ~5%.
    env = dict(os.environ, **h.micromono_env(compiled=variant == "micromono-c"), PYTHONHASHSEED="0")
    child = ["--child", variant, str(n), str(cache_dir)] if cache_dir is not None else ["--epoch-child", variant,
                                                                                        str(n)]  # fmt: skip
    argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", "--smc-check=all-non-file",
            python, __file__, *child]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800, check=False,
                          preexec_fn=h._die_with_parent)  # fmt: skip
    match = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or match is None:
        raise h.HarnessError(f"{variant}: valgrind exited {done.returncode}:\n{done.stderr[-2000:]}")
    return int(match.group(1).replace(",", ""))


def per_request(python: str, variant: str, n1: int, n2: int, cache_dir: Path | None) -> float:
    """(instructions(n2) - instructions(n1)) / (n2 - n1) for `variant`."""
    return (count(python, variant, n2, cache_dir) - count(python, variant, n1, cache_dir)) / (n2 - n1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    h.add_common_args(parser, VARIANTS)
    parser.add_argument("--child", nargs=3, metavar=("VARIANT", "N", "CACHE_DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--epoch-child", nargs=2, metavar=("VARIANT", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child[0], int(args.child[1]), args.child[2])
        return 0
    if args.epoch_child:
        epoch_child_main(args.epoch_child[0], int(args.epoch_child[1]))
        return 0
    if shutil.which("valgrind") is None:
        print("bench_instructions needs valgrind: apt-get install valgrind", file=sys.stderr)
        return 2
    variants: list[str] = args.only
    if "micromono-c" in variants and (why := h.micromono_unavailable(args.python, compiled=True)):
        print(f"skipping micromono-c: {why}")
        variants = [v for v in variants if v != "micromono-c"]
    n1, n2 = (N1_QUICK, N2_QUICK) if args.quick else (N1_FULL, N2_FULL)
    h.print_preamble("bench_instructions: instructions per ingress request, in process (callgrind)",
                     h.versions(args.python), {"variants": ",".join(variants), "n1": n1, "n2": n2,
                                               "warmup": WARMUP, "quick": args.quick})  # fmt: skip
    started = time.monotonic()
    e1, e2 = (EPOCH_N1_QUICK, EPOCH_N2_QUICK) if args.quick else (EPOCH_N1, EPOCH_N2)
    with (
        tempfile.TemporaryDirectory(prefix="mm-instructions-") as tmp,
        concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool,
    ):
        futures = {v: pool.submit(per_request, args.python, v, n1, n2, Path(tmp) / v) for v in variants}
        epoch_futures = {v: pool.submit(per_request, args.python, v, e1, e2, None) for v in EPOCH_VARIANTS}
        results = {v: f.result() for v, f in futures.items()}
        epochs = {v: f.result() for v, f in epoch_futures.items()}
    print("## instructions per ingress request\n")
    rows = [[v, f"{results[v]:,.0f}",
             f"{results[v] / results['floor']:.2f}x" if "floor" in results else ""] for v in variants]  # fmt: skip
    print(h.table(["variant", "instructions per request", "vs floor"], rows))
    print(f"\n## the CPU deadline mechanism, per call of the call-heavy guest ({e1:,} and {e2:,} calls)\n")
    rows = [[v, f"{epochs[v]:,.0f}", "" if v == "none" else f"{(epochs[v] / epochs['none'] - 1) * 100:+.1f}%"]
            for v in EPOCH_VARIANTS]  # fmt: skip
    print(h.table(["variant", "instructions per call", "vs none"], rows))
    print(f"\n({time.monotonic() - started:.0f} s; instructions are counted, not timed: the same code counts the same "
          "within about 2%, whatever the machine is doing)")  # fmt: skip
    if args.json:
        import json

        args.json.write_text(json.dumps({"n1": n1, "n2": n2, "instructions_per_request": results,
                                         "epoch_instructions_per_call": epochs}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
