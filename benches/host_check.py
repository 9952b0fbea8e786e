"""host_check: does this machine take whole CPUs away when all of them are busy?

On a shared VM a host may cap the VM's CPU time (a quota per period): while every vCPU is busy, one of them is
descheduled for the rest of the period, and whatever runs on it stops for that long, whatever the daemon does. This
script spins one process per CPU, each pinned to its CPU, reading the monotonic clock in a tight loop, and reports
every gap longer than `--gap` ms; then the same with one CPU busy only. Gaps with all CPUs busy and none with one
mean such a cap, and explain stalls of that length in a benchmark that keeps every CPU busy (bench_isolation's
swap-big: a 70 MiB compile on one CPU while the loop serves on the other).

    python benches/host_check.py [--seconds 15] [--gap 20]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time


def spin(cpu: int, seconds: float, gap_s: float, out: multiprocessing.Queue[tuple[int, list[float]]]) -> None:
    """Spin on `cpu` for `seconds`; put (cpu, the gaps longer than gap_s, in ms) on `out`."""
    os.sched_setaffinity(0, {cpu})
    gaps: list[float] = []
    clock = time.monotonic
    last = clock()
    end = last + seconds
    while last < end:
        now = clock()
        if now - last > gap_s:
            gaps.append((now - last) * 1e3)
        last = now
    out.put((cpu, gaps))


def run(cpus: list[int], seconds: float, gap_s: float) -> dict[int, list[float]]:
    out: multiprocessing.Queue[tuple[int, list[float]]] = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=spin, args=(cpu, seconds, gap_s, out)) for cpu in cpus]
    for proc in procs:
        proc.start()
    results = dict(out.get() for _ in procs)
    for proc in procs:
        proc.join()
    return results


def report(label: str, results: dict[int, list[float]]) -> None:
    for cpu, gaps in sorted(results.items()):
        largest = ", ".join(f"{g:.1f}" for g in sorted(gaps)[-5:]) or "-"
        print(f"{label}: cpu {cpu}: {len(gaps)} gaps, largest ms: {largest}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="how long each run spins (default 15)")
    parser.add_argument("--gap", type=float, default=20.0, help="report gaps longer than this, in ms (default 20)")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    print(f"host_check: {len(cpus)} CPUs {cpus}, {args.seconds:g} s per run, gaps over {args.gap:g} ms")
    report("all CPUs busy", run(cpus, args.seconds, args.gap / 1e3))
    report("one CPU busy", run(cpus[-1:], args.seconds, args.gap / 1e3))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
