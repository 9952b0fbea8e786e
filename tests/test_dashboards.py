"""The Grafana dashboard and the Prometheus alerting rules in deploy/ (docs/operations.md, "Dashboards and
alerts") against what a real daemon exports: every metric name a panel or a rule queries must be a sample name of
the daemon's `/metrics` (parsed with prometheus_client's parser), and every label it matches on or groups by one
those samples carry. The daemon runs plain services, a call edge, a refused call, a hot swap and an actor service
with WebSockets, so that every family has samples (histograms, labelled counters)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop
import websockets
import yaml
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, fixture, http, make_config, running
from micromono.daemon import Daemon

DASHBOARD = ROOT / "deploy" / "grafana" / "micromono.json"
RULES = ROOT / "deploy" / "prometheus" / "micromono-alerts.yml"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
#: Labels Prometheus adds to every scraped series, which a query may group by though /metrics does not carry them.
TARGET_LABELS = {"job", "instance"}
METRIC = re.compile(r"\bmicromono_[a-z0-9_]+")
SELECTOR = re.compile(r"\b(micromono_[a-z0-9_]+)\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")

Exported = dict[str, set[str]]  # sample name -> the label names its samples carry


async def scrape(daemon: Daemon) -> str:
    assert daemon.metrics_address is not None
    response = await http(daemon.metrics_address, "GET", "/metrics")
    assert response.status == 200
    return response.body.decode()


def exported_names(text: str) -> Exported:
    names: Exported = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """The sample names (with their _bucket, _sum, _count and _total suffixes) of a real daemon's /metrics."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # as conftest runs the async tests
        return runner.run(asyncio.wait_for(_exported(tmp_path_factory.mktemp("daemon")), timeout=120))


async def _exported(tmp_path: Path) -> Exported:
    (tmp_path / "echo.wat").write_bytes(fixture("echo.wat").read_bytes())
    services = {
        "front": {"wasm": fixture("caller.wat"), "routes": ["/front"], "calls": ["echo"]},
        "echo": {"wasm": tmp_path / "echo.wat", "routes": ["/echo"]},
        "room": {"kind": "actor", "wasm": fixture("ws_room.wat"), "routes": ["/chat/{key}"], "websocket": True},
    }
    # Tracing on ("log"): micromono_trace_spans_total gets series.
    async with running(make_config(tmp_path, services, daemon={"tracing": "log"})) as daemon:
        addr = daemon.addresses[0]
        for _ in range(3):
            assert (await http(addr, "POST", "/echo", b"x")).status == 200
        assert (await http(addr, "POST", "/front", struct.pack("<iII", 2, 64, 4) + b"echo" + b"y")).status == 200
        # A call outside front's allowlist: micromono_calls_refused_total gets a series.
        await http(addr, "POST", "/front", struct.pack("<iII", 1, 64, 6) + b"nosuch" + b"y")
        assert (await http(addr, "POST", "/chat/lobby", b"")).status == 200
        host, port = addr
        async with websockets.connect(f"ws://{host}:{port}/chat/lobby", open_timeout=10) as connection:
            await connection.send("hello")
            assert json.loads(await asyncio.wait_for(connection.recv(), timeout=10))["data"] == "hello"
        # A hot swap: micromono_reloads_total and a second version's micromono_version_calls_total.
        assert daemon.reloader is not None
        (tmp_path / "echo.wat").write_bytes(fixture("echo.wat").read_bytes() + b"\n;; v2\n")
        await daemon.reloader.reload_service("echo")
        assert (await http(addr, "POST", "/echo", b"x")).status == 200
        for _ in range(100):  # the close is counted once the server side has seen it
            names = exported_names(await scrape(daemon))
            if "micromono_ws_closes_total" in names:
                break
            await asyncio.sleep(0.05)
    return names


def test_the_daemon_exports_every_family_the_tests_rely_on(exported: Exported) -> None:
    # Sanity: the scrape has the families of every kind, suffixes as exposed.
    for name in (
        "micromono_calls_total",
        "micromono_calls_refused_total",
        "micromono_call_duration_seconds_bucket",
        "micromono_reloads_total",
        "micromono_actor_commit_seconds_bucket",
        "micromono_ws_closes_total",
        "micromono_compile_cache_bytes",
        "micromono_trace_spans_total",
    ):
        assert name in exported, name


# --- the dashboard ----------------------------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def panels(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' collapsed panels included (rows themselves too)."""
    for panel in document["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries(document: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    for panel in panels(document):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} target {target['refId']}", target["expr"]
    for variable in document["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            yield f"variable {variable['name']}", query["query"] if isinstance(query, dict) else query


def check_query(where: str, expr: str, exported: Exported) -> list[str]:
    """What in `expr` the daemon does not export: metric names, matched labels, grouping labels."""
    problems = []
    names = set(METRIC.findall(expr))
    if not names:
        problems.append(f"{where}: queries no micromono metric: {expr}")
    for name in sorted(names - exported.keys()):
        problems.append(f"{where}: {name} is not exported by the daemon")
    for name, matchers in SELECTOR.findall(expr):
        for label in MATCHER.findall(matchers):
            if name in exported and label not in exported[name] | TARGET_LABELS:
                problems.append(f"{where}: {name} has no label {label!r} (it has {sorted(exported[name])})")
    known = set().union(*(exported.get(name, set()) for name in names)) | TARGET_LABELS
    for grouping in GROUPING.findall(expr):
        for label in filter(None, (part.strip() for part in grouping.split(","))):
            if label not in known:
                problems.append(f"{where}: groups by {label!r}, which none of {sorted(names)} carries")
    return problems


def test_every_dashboard_query_names_metrics_and_labels_the_daemon_exports(exported: Exported) -> None:
    document = dashboard()
    found = list(queries(document))
    assert len(found) > 40
    problems = [problem for where, expr in found for problem in check_query(where, expr, exported)]
    assert problems == []


def test_the_dashboard_is_well_formed() -> None:
    document = dashboard()
    assert document["schemaVersion"] >= 36  # Grafana 9 and later: datasource references are {type, uid} objects
    assert document["uid"] and document["title"]
    variables = {v["name"]: v for v in document["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    service = variables["service"]
    assert service["datasource"] == DATASOURCE
    assert service["definition"].startswith("label_values(") and service["includeAll"] and service["multi"]
    ids = []
    rows = []
    for panel in panels(document):
        ids.append(panel["id"])
        assert panel.get("title"), panel
        position = panel["gridPos"]
        assert position["x"] >= 0 and position["x"] + position["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            rows.append(panel["title"])
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        targets = panel["targets"]
        assert targets, panel["title"]
        assert len({t["refId"] for t in targets}) == len(targets), panel["title"]
        for target in targets:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]
    assert len(ids) == len(set(ids))
    for wanted in ("Overview", "Calls between services", "Actors", "WebSockets"):
        assert wanted in rows


# --- the alerting rules -----------------------------------------------------------------------------------------------


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    assert set(document) == {"groups"}
    found = []
    for group in document["groups"]:
        assert group["name"] and group["rules"]
        found += group["rules"]
    return found


def test_every_rule_has_what_an_operator_needs() -> None:
    found = rules()
    names = [rule["alert"] for rule in found]
    assert len(names) == len(set(names))
    for rule in found:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"].strip() and rule["annotations"]["description"].strip(), rule["alert"]
    # What issue 19 asks the rules to cover.
    text = " ".join(rule["expr"] for rule in found)
    for metric in (
        "micromono_quarantines_total",
        'micromono_reloads_total{outcome=~"rolled_back',
        "micromono_mailbox_capacity",
        "micromono_mailbox_shed_total",
        "micromono_mailbox_rejected_total",
        "micromono_actor_commit_seconds_bucket",
        "micromono_actor_commit_failures_total",
        'micromono_ws_closes_total{code="4008"}',
        "micromono_guest_log_dropped_total",
    ):
        assert metric in text, metric


def test_every_rule_queries_metrics_and_labels_the_daemon_exports(exported: Exported) -> None:
    problems = [problem for rule in rules() for problem in check_query(rule["alert"], rule["expr"], exported)]
    assert problems == []


def test_promtool_accepts_the_rules() -> None:
    promtool = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if promtool is None:
        pytest.skip("promtool is not installed (Debian's prometheus package has it)")
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
