"""The admin listener over real sockets; Prometheus text parsed with prometheus_client's own parser."""

from __future__ import annotations

import struct
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from conftest import fixture, http, make_config, running


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def app() -> dict[str, dict[str, object]]:
    return {
        "front": {"wasm": fixture("caller.wat"), "routes": ["/front"], "calls": ["echo", "hostile"]},
        "echo": {"wasm": fixture("echo.wat"), "routes": ["/echo"], "mailbox": 7, "instances": 3},
        "hostile": {"wasm": fixture("hostile.wat"), "routes": ["/hostile"]},
    }


async def test_metrics_count_calls_by_edge_and_outcome(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, app())) as daemon:
        addr = daemon.addresses[0]
        for _ in range(5):
            assert (await http(addr, "POST", "/echo", b"x")).status == 200
        request = struct.pack("<iII", 40, 64, 4) + b"echo" + b"y" * 64
        assert (await http(addr, "POST", "/front", request)).status == 200
        assert (await http(addr, "POST", "/hostile", b"u")).status == 500
        assert (await http(addr, "GET", "/missing")).status == 404
        assert daemon.metrics_address is not None
        response = await http(daemon.metrics_address, "GET", "/metrics")
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        got = samples(response.body.decode())

    def value(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    assert value("micromono_calls_total", caller="ingress", callee="echo", outcome="ok") == 5
    assert value("micromono_calls_total", caller="front", callee="echo", outcome="ok") == 40
    assert value("micromono_calls_total", caller="ingress", callee="hostile", outcome="trap") == 1
    assert value("micromono_instance_failures_total", service="hostile") == 1
    assert value("micromono_http_responses_total", code="200") == 6
    assert value("micromono_http_responses_total", code="404") == 1
    assert value("micromono_mailbox_capacity", service="echo") == 7
    assert value("micromono_mailbox_depth", service="echo") == 0
    assert value("micromono_instances", service="echo") == 1
    assert value("micromono_guest_memory_bytes", service="echo") == 2 * 65536
    # 1 in 16 calls is timed: echo served 45 calls, so 3 samples (calls 0, 16 and 32 on the front edge, 0 on ingress)
    count = value("micromono_call_duration_seconds_count", service="echo")
    assert 1 <= count <= 45
    assert value("micromono_call_duration_seconds_bucket", service="echo", le="+Inf") == count
    info = [k for k in got if k[0] == "micromono_service_info"]
    assert len(info) == 3


async def test_status_and_healthz(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, app())) as daemon:
        assert daemon.metrics_address is not None
        health = await http(daemon.metrics_address, "GET", "/healthz")
        assert (health.status, health.body) == (200, b"ok\n")
        status = (await http(daemon.metrics_address, "GET", "/status")).json()
        assert status["state"] == "serving"
        assert [s["name"] for s in status["services"]] == ["front", "echo", "hostile"]
        echo = status["services"][1]
        assert echo["instances"] == {"live": 1, "idle": 1, "max": 3}
        assert echo["mailbox"] == {"queued": 0, "capacity": 7}
        assert len(echo["sha256"]) == 64 and echo["version"].startswith(echo["sha256"][:12])
        assert (await http(daemon.metrics_address, "GET", "/nope")).status == 404
        assert (await http(daemon.metrics_address, "POST", "/metrics")).status == 405


async def test_metrics_listener_can_be_disabled(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, app(), daemon={"metrics_listen": ""})) as daemon:
        assert daemon.metrics_address is None
