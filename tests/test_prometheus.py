"""A real Prometheus server beside the daemon: it scrapes /metrics and answers rate() and histogram_quantile()
queries over them, and promtool finds nothing to say about the text.

The test runs its own `prometheus` (Debian's package; scripts/install-system-deps.sh installs it with promtool): its
own config and storage in tmp_path, a free port on 127.0.0.1, started and stopped by its process. It never uses a
system Prometheus service. Skipped only when the binaries are missing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import shutil
import socket
import subprocess
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from conftest import EXAMPLES_BUILD, fixture, http, make_config, running

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="needs Prometheus' prometheus and promtool (Debian's prometheus package; scripts/install-system-deps.sh)",
)

SCRAPE_INTERVAL = "1s"
DEADLINE = 15.0  # seconds for Prometheus to start, scrape and answer
#: The queries: requests per second into the echo service, and the 99th percentile of its call latency.
RATE = 'sum(rate(micromono_calls_total{caller="ingress", callee="echo", outcome="ok"}[10s]))'
BUCKETS = 'micromono_call_duration_seconds_bucket{service="echo"}'
QUANTILE = f"histogram_quantile(0.99, sum by (le) (rate({BUCKETS}[10s])))"


def app() -> dict[str, dict[str, object]]:
    return {"echo": {"wasm": fixture("echo.wat"), "routes": ["/echo"]}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def prometheus(tmp_path: Path, target: tuple[str, int]) -> AsyncIterator[tuple[str, int]]:
    """Our own Prometheus scraping `target` every second; yields its address."""
    assert PROMETHEUS is not None
    config = tmp_path / "prometheus.yml"
    scrape = {"job_name": "micromono", "static_configs": [{"targets": [f"{target[0]}:{target[1]}"]}]}
    settings = {"global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL}}
    config.write_text(json.dumps({**settings, "scrape_configs": [scrape]}))  # JSON is YAML
    address = ("127.0.0.1", free_port())
    log = (tmp_path / "prometheus.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address={address[0]}:{address[1]}",
        "--log.level=warn",
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    try:
        yield address
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
        log.close()


async def query(address: tuple[str, int], promql: str) -> list[dict[str, Any]] | None:
    """The instant vector `promql` gives, or None while Prometheus is not answering yet."""
    try:
        response = await http(address, "GET", "/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    except OSError:
        return None
    if response.status != 200:
        return None
    answer = response.json()
    assert answer["status"] == "success", answer
    assert answer["data"]["resultType"] == "vector", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def values(vector: list[dict[str, Any]]) -> list[float]:
    return [float(sample["value"][1]) for sample in vector]


async def test_a_real_prometheus_answers_rate_and_quantile_queries(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, app())) as daemon:
        ingress, metrics = daemon.addresses[0], daemon.metrics_address
        assert metrics is not None

        async def traffic() -> None:  # across several scrapes: rate() needs the counters to grow between two
            while True:
                for _ in range(32):  # the latency histogram times 1 in 16 calls
                    assert (await http(ingress, "POST", "/echo", b"x")).status == 200
                await asyncio.sleep(0.05)

        load = asyncio.create_task(traffic())
        try:
            async with prometheus(tmp_path, metrics) as server:
                deadline = time.monotonic() + DEADLINE
                rates: list[float] = []
                quantiles: list[float] = []
                while time.monotonic() < deadline:
                    rates = values(await query(server, RATE) or [])
                    quantiles = values(await query(server, QUANTILE) or [])
                    if rates and rates[0] > 0 and quantiles and math.isfinite(quantiles[0]):
                        break
                    await asyncio.sleep(0.5)
                up = values(await query(server, 'up{job="micromono"}') or [])
                log = (tmp_path / "prometheus.log").read_text(errors="replace")
        finally:
            load.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await load

    assert up == [1.0], f"the daemon's /metrics is not up in Prometheus; its log:\n{log}"
    assert len(rates) == 1 and rates[0] > 0, f"rate() gave {rates}; Prometheus' log:\n{log}"
    assert len(quantiles) == 1, f"histogram_quantile() gave {quantiles}; Prometheus' log:\n{log}"
    assert math.isfinite(quantiles[0]) and 0 < quantiles[0] < 10, quantiles


def many_families() -> dict[str, dict[str, object]]:
    """Services that fill most families: a call edge, a trap, and an actor service (the counter example)."""
    return {
        "front": {"wasm": fixture("caller.wat"), "routes": ["/front"], "calls": ["echo", "hostile"]},
        "echo": {"wasm": fixture("echo.wat"), "routes": ["/echo"]},
        "hostile": {"wasm": fixture("hostile.wat"), "routes": ["/hostile"]},
        "counter": {"kind": "actor", "wasm": EXAMPLES_BUILD / "counter.wasm", "routes": ["/counter/{key}"]},
    }


async def test_promtool_finds_nothing_to_say_about_the_metrics(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    async with running(make_config(tmp_path, many_families())) as daemon:
        ingress = daemon.addresses[0]
        for _ in range(20):
            assert (await http(ingress, "POST", "/echo", b"x")).status == 200
        assert (await http(ingress, "POST", "/hostile", b"u")).status == 500
        assert (await http(ingress, "POST", "/counter/visits")).status == 200
        assert daemon.metrics_address is not None
        response = await http(daemon.metrics_address, "GET", "/metrics")
    assert response.status == 200
    checked = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=response.body, capture_output=True, timeout=30, check=False
    )
    said = (checked.stdout + checked.stderr).decode(errors="replace")
    assert (checked.returncode, said) == (0, ""), said
