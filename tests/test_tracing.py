"""Traces through internal calls (docs/tracing.md): `daemon.tracing = "log"`, read back from the log."""

from __future__ import annotations

import struct
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

import micromono
from conftest import EXAMPLES_BUILD, fixture, http, make_config, running
from micromono.daemon import Daemon, StartupError
from micromono.engine import Host
from micromono.tracing import Span, Tracer, outcome_of, parse_traceparent

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


def chain() -> dict[str, dict[str, object]]:
    """An HTTP entry service `a` that calls `b`, which calls `c` (caller.wat twice, then echo.wat)."""
    return {
        "a": {"wasm": fixture("caller.wat"), "routes": ["/a"], "calls": ["b"]},
        "b": {"wasm": fixture("caller.wat"), "calls": ["c"]},
        "c": {"wasm": fixture("echo.wat")},
    }


def call_request(target: str, payload: bytes) -> bytes:
    """caller.wat's request: one call to `target` with `payload`, lending a 64 KiB reply buffer."""
    return struct.pack("<III", 1, 65536, len(target)) + target.encode() + payload


def spans(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == "span"]


async def test_the_trace_is_carried_across_a_three_service_chain(tmp_path: Path) -> None:
    """An incoming traceparent's trace id is on all three spans (a's HTTP run, the call to b, b's call to c), each
    the child of the one before, the first the child of the incoming parent id."""
    body = call_request("b", call_request("c", b"ping"))
    with capture_logs() as logs:
        async with running(make_config(tmp_path, chain(), daemon={"watch": False, "tracing": "log"})) as daemon:
            response = await http(daemon.addresses[0], "POST", "/a", body, {"traceparent": TRACEPARENT})
            assert response.status == 200
            assert response.body.endswith(b"ping")
    by_name = {span["name"]: span for span in spans(logs)}
    assert set(by_name) == {"http a", "call b", "call c"}
    http_a, call_b, call_c = by_name["http a"], by_name["call b"], by_name["call c"]
    assert {span["trace_id"] for span in by_name.values()} == {TRACE_ID}
    assert http_a["parent_span_id"] == PARENT_ID
    assert call_b["parent_span_id"] == http_a["span_id"]
    assert call_c["parent_span_id"] == call_b["span_id"]
    assert len({span["span_id"] for span in by_name.values()}) == 3
    assert (http_a["service"], http_a["caller"]) == ("a", "ingress")
    assert (call_b["service"], call_b["caller"]) == ("b", "a")
    assert (call_c["service"], call_c["caller"]) == ("c", "b")
    assert all(span["outcome"] == "ok" and span["duration_us"] >= 0 for span in by_name.values())
    # Spans end innermost first: c's, then b's, then a's.
    assert [span["name"] for span in spans(logs)] == ["call c", "call b", "http a"]
    assert call_b["duration_us"] <= http_a["duration_us"]


async def test_a_request_without_a_traceparent_starts_a_trace(tmp_path: Path) -> None:
    body = call_request("b", call_request("c", b"ping"))
    with capture_logs() as logs:
        async with running(make_config(tmp_path, chain(), daemon={"watch": False, "tracing": "log"})) as daemon:
            for headers in (None, {"traceparent": "00-" + "0" * 32 + "-" + PARENT_ID + "-01"}):  # none, invalid
                assert (await http(daemon.addresses[0], "POST", "/a", body, headers)).status == 200
    found = spans(logs)
    assert len(found) == 6
    first, second = found[:3], found[3:]
    for trace in (first, second):
        assert len({span["trace_id"] for span in trace}) == 1
        root = next(span for span in trace if span["name"] == "http a")
        assert root["parent_span_id"] is None
    assert first[0]["trace_id"] != second[0]["trace_id"]


async def test_a_failed_call_is_a_span_with_its_outcome(tmp_path: Path) -> None:
    """b calls a service it may not call: the span of that call names the error kind, and the chain goes on."""
    body = call_request("b", call_request("a", b"ping"))
    with capture_logs() as logs:
        async with running(make_config(tmp_path, chain(), daemon={"watch": False, "tracing": "log"})) as daemon:
            assert (await http(daemon.addresses[0], "POST", "/a", body)).status == 200
    outcomes = {span["name"]: span["outcome"] for span in spans(logs)}
    assert outcomes == {"call a": "forbidden", "call b": "ok", "http a": "ok"}


async def test_no_spans_and_the_router_as_host_when_off(tmp_path: Path) -> None:
    body = call_request("b", call_request("c", b"ping"))
    with capture_logs() as logs:
        async with running(make_config(tmp_path, chain(), daemon={"watch": False})) as daemon:
            assert daemon.config.daemon.tracing == "off"
            assert daemon.engine is not None and daemon.engine.host is daemon.router
            assert daemon.router.top_level.tracer is None
            assert (await http(daemon.addresses[0], "POST", "/a", body)).status == 200
    assert spans(logs) == []


async def test_otlp_without_the_extra_fails_at_start_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the OpenTelemetry SDK not importable, `tracing = "otlp"` stops the start with an error naming the extra
    and the pip command."""
    # What an import of the SDK meets when it is not installed (also for its modules imported by earlier tests).
    for name in ["opentelemetry", *(n for n in sys.modules if n.startswith("opentelemetry."))]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "micromono.tracing_otlp", raising=False)  # as if never imported here
    monkeypatch.delattr(micromono, "tracing_otlp", raising=False)
    daemon = Daemon(make_config(tmp_path, chain(), daemon={"watch": False, "tracing": "otlp"}))
    with pytest.raises(StartupError, match=r"needs the OpenTelemetry SDK.*pip install 'micromono\[otlp\]'"):
        await daemon.load()
    await daemon.shutdown()


def test_parse_traceparent() -> None:
    assert parse_traceparent(TRACEPARENT.encode()) == (int(TRACE_ID, 16), int(PARENT_ID, 16), 1)
    assert parse_traceparent(b"01-" + TRACE_ID.encode() + b"-" + PARENT_ID.encode() + b"-00-future") is not None
    for bad in (
        b"",
        b"00-" + TRACE_ID.encode() + b"-" + PARENT_ID.encode() + b"-01-extra",  # version 00 has four fields
        b"ff-" + TRACE_ID.encode() + b"-" + PARENT_ID.encode() + b"-01",
        b"00-" + TRACE_ID.upper().encode() + b"-" + PARENT_ID.encode() + b"-01",
        b"00-" + b"0" * 32 + b"-" + PARENT_ID.encode() + b"-01",
        b"00-" + TRACE_ID.encode() + b"-" + b"0" * 16 + b"-01",
    ):
        assert parse_traceparent(bad) is None, bad


def test_span_ids_are_unique_non_zero_and_spread() -> None:
    tracer = Tracer(emit=lambda span, ended, outcome: None)
    ids = [tracer.new_span_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids) and 0 not in ids
    assert all(0 < i < 1 << 64 for i in ids)
    assert len({i >> 60 for i in ids}) == 16  # consecutive ids are not close together
    root = tracer.root(2, b"", "x")
    child = tracer.child(root, "call y", "y", "x")
    assert (child.trace_id, child.parent_id) == (root.trace_id, root.span_id)
    assert Span(1, 2, None, 1, "n", "s", "c").traceparent() == b"00-" + b"0" * 31 + b"1-" + b"0" * 15 + b"2-01"


def test_outcome_of() -> None:
    assert outcome_of(0) == "ok" and outcome_of(12) == "ok"
    assert outcome_of(-2) == "forbidden" and outcome_of(-4) == "trap" and outcome_of(-5) == "timeout"
    assert outcome_of(-99) == "error -99"


def test_host_protocol_is_covered() -> None:
    """TracingHost serves every import of the engine's Host (the router's own methods but `call`)."""
    names = [n for n in vars(Host) if not n.startswith("_")]
    from micromono.router import Router
    from micromono.tracing import TracingHost

    host = TracingHost(Router(), Tracer())
    for name in names:
        assert callable(getattr(host, name)), name


async def test_spans_of_runs_and_calls_that_outlast_their_slice(tmp_path: Path) -> None:
    """`a` calls `slow` (slow.wat), which computes for many slices before it calls `echo`: the call to `slow` waits
    (a WaitingCall) and its span ends with its result, after the span of `slow`'s call to `echo` inside it."""
    services = {
        "a": {"wasm": fixture("caller.wat"), "routes": ["/a"], "calls": ["slow"]},
        "slow": {"wasm": fixture("slow.wat"), "calls": ["echo"]},
        "echo": {"wasm": fixture("echo.wat")},
    }
    # slow.wat reads its request as an HTTP one: body_len at offset 12, the body last (u32 steps, then a payload).
    body = struct.pack("<I", 20_000_000) + b"ping"
    request = struct.pack("<IIII", 0, 0, 0, len(body)) + body
    with capture_logs() as logs:
        async with running(make_config(tmp_path, services, daemon={"watch": False, "tracing": "log"})) as daemon:
            response = await http(
                daemon.addresses[0], "POST", "/a", call_request("slow", request), {"traceparent": TRACEPARENT}
            )
            assert response.status == 200 and response.body.endswith(b"ping")
    traced = {span["name"]: span for span in spans(logs) if span["trace_id"] == TRACE_ID}
    assert set(traced) == {"http a", "call slow", "call echo", "send echo", "message echo"}
    assert traced["call slow"]["parent_span_id"] == traced["http a"]["span_id"]
    assert traced["call echo"]["parent_span_id"] == traced["call slow"]["span_id"]
    assert all(span["outcome"] == "ok" for span in traced.values())
    assert traced["call slow"]["duration_us"] >= traced["call echo"]["duration_us"]
    assert traced["call slow"]["duration_us"] > 2_000  # many slices (0.5 ms each): the call waited, it was resumed
    # slow's send to echo: its span and the message's run, in the same trace.
    assert traced_all(logs, "send echo")["parent_span_id"] == traced["call slow"]["span_id"]
    assert traced_all(logs, "message echo")["parent_span_id"] == traced_all(logs, "send echo")["span_id"]


def traced_all(logs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The one span named `name` in `logs`."""
    (found,) = [span for span in spans(logs) if span["name"] == name]
    return found


# --- send and actors ---------------------------------------------------------------------------------------------


def send_request(target: str, payload: bytes) -> bytes:
    """caller.wat's request to send `payload` to `target` (n = 0xFFFFFFFF)."""
    return struct.pack("<III", 0xFFFFFFFF, 0, len(target)) + target.encode() + payload


async def test_messages_carry_the_senders_context(tmp_path: Path) -> None:
    """a sends to b, whose message run sends on to c: send spans and message runs, one trace, each the child of the
    one before (the message run names its sender as caller)."""
    services = {
        "a": {"wasm": fixture("caller.wat"), "routes": ["/a"], "calls": ["b"]},
        "b": {"wasm": fixture("caller.wat"), "calls": ["c"]},  # a message: caller.wat sends it on
        "c": {"wasm": fixture("echo.wat")},
    }
    body = send_request("b", call_request("c", b"ping"))
    with capture_logs() as logs:
        async with running(make_config(tmp_path, services, daemon={"watch": False, "tracing": "log"})) as daemon:
            response = await http(daemon.addresses[0], "POST", "/a", body, {"traceparent": TRACEPARENT})
            assert response.status == 200 and response.body == b"\0\0\0\0"  # send returned 0
    by_name = {span["name"]: span for span in spans(logs)}
    assert set(by_name) == {"http a", "send b", "message b", "send c", "message c"}
    assert {span["trace_id"] for span in by_name.values()} == {TRACE_ID}
    chain_of = ["http a", "send b", "message b", "send c", "message c"]
    for parent, child in zip(chain_of, chain_of[1:], strict=False):
        assert by_name[child]["parent_span_id"] == by_name[parent]["span_id"], child
    assert (by_name["send b"]["service"], by_name["send b"]["caller"]) == ("b", "a")
    assert (by_name["message b"]["service"], by_name["message b"]["caller"]) == ("b", "a")
    assert (by_name["message c"]["service"], by_name["message c"]["caller"]) == ("c", "b")
    assert all(span["outcome"] == "ok" for span in by_name.values())


async def test_calls_and_messages_to_actors_carry_the_context(tmp_path: Path) -> None:
    """A call to an actor runs in the call's span (the actor reads it, and its own call is that span's child); a
    send to an actor is a send span and a message run inside it."""
    services = {
        "a": {"wasm": fixture("tracectx.wat"), "routes": ["/a"], "calls": ["act"]},
        "act": {"kind": "actor", "wasm": fixture("tracectx.wat"), "calls": ["c"]},
        "c": {"wasm": fixture("tracectx.wat")},
        "s": {"wasm": fixture("caller.wat"), "routes": ["/s"], "calls": ["act"]},
    }
    daemon_keys = {"watch": False, "tracing": "log", "data_dir": str(tmp_path / "data")}
    with capture_logs() as logs:
        async with running(make_config(tmp_path, services, daemon=daemon_keys)) as daemon:
            response = await http(daemon.addresses[0], "POST", "/a", hops("act/k1", "c"), {"traceparent": TRACEPARENT})
            assert response.status == 200
            contexts = read_contexts(response.body)
            response = await http(daemon.addresses[0], "POST", "/s", send_request("act/k2", b""))
            assert response.status == 200 and response.body == b"\0\0\0\0"
    by_name = {span["name"]: span for span in spans(logs)}
    assert len(contexts) == 3
    http_a, call_act, call_c = by_name["http a"], by_name["call act/k1"], by_name["call c"]
    assert [c[0] for c in contexts] == [TRACE_ID] * 3
    assert [c[1] for c in contexts] == [http_a["span_id"], call_act["span_id"], call_c["span_id"]]
    assert call_act["parent_span_id"] == http_a["span_id"] and call_c["parent_span_id"] == call_act["span_id"]
    assert (call_c["service"], call_c["caller"]) == ("c", "act")
    # The send to an actor: its run is a message span, the send span's child, in the sender's trace.
    http_s, send, message = by_name["http s"], by_name["send act/k2"], by_name["message act"]
    assert send["parent_span_id"] == http_s["span_id"] and message["parent_span_id"] == send["span_id"]
    assert {http_s["trace_id"], send["trace_id"], message["trace_id"]} == {http_s["trace_id"]}
    assert (message["service"], message["caller"], message["outcome"]) == ("act", "s", "ok")


# --- the trace_context import ------------------------------------------------------------------------------------


def hops(*targets: str) -> bytes:
    """tracectx.wat's request: call each target in turn down the chain."""
    out = b""
    for target in reversed(targets):
        out = bytes([len(target)]) + target.encode() + out
    return out


def read_contexts(reply: bytes) -> list[tuple[str, str, str]]:
    """tracectx.wat's replies down a chain: each hop's (trace id, span id, flags) from its 55-byte context."""
    found = []
    while len(reply) >= 68:
        n = struct.unpack_from("<i", reply)[0]
        assert n == 55, n
        value = reply[4 : 4 + n].decode()
        assert reply[4 + n : 68] == b"." * (64 - n)  # nothing written past the value
        version, trace_id, span_id, flags = value.split("-")
        assert version == "00"
        found.append((trace_id, span_id, flags))
        reply = reply[68:]
    assert reply == b""
    return found


def tracectx_chain() -> dict[str, dict[str, object]]:
    return {
        "a": {"wasm": fixture("tracectx.wat"), "routes": ["/a"], "calls": ["b"]},
        "b": {"wasm": fixture("tracectx.wat"), "calls": ["c"]},
        "c": {"wasm": fixture("tracectx.wat")},
    }


async def test_trace_context_read_across_a_chain(tmp_path: Path) -> None:
    """Each guest of a -> b -> c reads its context with micromono.trace_context: the incoming trace id, and the
    span id of its own span (a's HTTP run, the call to b, the call to c), so each hop's parent is its caller's."""
    with capture_logs() as logs:
        async with running(make_config(tmp_path, tracectx_chain(), daemon={"watch": False, "tracing": "log"})) as d:
            response = await http(d.addresses[0], "POST", "/a", hops("b", "c"), {"traceparent": TRACEPARENT})
            assert response.status == 200
    contexts = read_contexts(response.body)
    by_name = {span["name"]: span for span in spans(logs)}
    assert [trace for trace, _, _ in contexts] == [TRACE_ID] * 3
    assert [flags for _, _, flags in contexts] == ["01"] * 3
    a_id, b_id, c_id = (span_id for _, span_id, _ in contexts)
    assert (a_id, b_id, c_id) == (
        by_name["http a"]["span_id"],
        by_name["call b"]["span_id"],
        by_name["call c"]["span_id"],
    )
    assert by_name["http a"]["parent_span_id"] == PARENT_ID
    assert by_name["call b"]["parent_span_id"] == a_id  # b's parent is a's span
    assert by_name["call c"]["parent_span_id"] == b_id  # c's parent is b's span


async def test_an_unsampled_trace_is_carried_but_not_recorded(tmp_path: Path) -> None:
    """A traceparent whose flags say "not sampled" (00) keeps its sender's decision down the chain: each guest reads
    its context with flags 00 and its own span id, and no span is recorded; a sampled request beside it is."""
    unsampled = f"00-{TRACE_ID}-{PARENT_ID}-00"
    with capture_logs() as logs:
        async with running(make_config(tmp_path, tracectx_chain(), daemon={"watch": False, "tracing": "log"})) as d:
            quiet = await http(d.addresses[0], "POST", "/a", hops("b", "c"), {"traceparent": unsampled})
            loud = await http(d.addresses[0], "POST", "/a", hops("b", "c"), {"traceparent": TRACEPARENT})
    assert quiet.status == loud.status == 200
    contexts = read_contexts(quiet.body)
    assert [(trace, flags) for trace, _, flags in contexts] == [(TRACE_ID, "00")] * 3
    assert len({span_id for _, span_id, _ in contexts} | {PARENT_ID}) == 4  # a span each, none of them recorded
    recorded = spans(logs)
    assert sorted(span["name"] for span in recorded) == ["call b", "call c", "http a"]
    assert {span["trace_id"] for span in recorded} == {TRACE_ID}
    assert {span["span_id"] for span in recorded}.isdisjoint(span_id for _, span_id, _ in contexts)


async def test_trace_sample_is_the_share_of_new_traces_recorded(tmp_path: Path) -> None:
    """trace_sample = 0: a request without a traceparent starts an unsampled trace (flags 00, nothing recorded),
    while one that arrives sampled is still recorded: the sender decided."""
    daemon_table = {"watch": False, "tracing": "log", "trace_sample": 0}
    with capture_logs() as logs:
        async with running(make_config(tmp_path, tracectx_chain(), daemon=daemon_table)) as d:
            new = await http(d.addresses[0], "POST", "/a", hops("b"))
            assert spans(logs) == []
            sent = await http(d.addresses[0], "POST", "/a", hops("b"), {"traceparent": TRACEPARENT})
    assert [flags for _, _, flags in read_contexts(new.body)] == ["00", "00"]
    assert [flags for _, _, flags in read_contexts(sent.body)] == ["01", "01"]
    assert sorted(span["name"] for span in spans(logs)) == ["call b", "http a"]


def test_the_sample_ratio_decides_new_traces() -> None:
    """Tracer.sample: 1 records every new trace, 0 none, 0.25 about a quarter (10,000 draws, bounds 6 sigma wide)."""
    assert all(Tracer(sample=1.0).child(None, "c", "s", "x").flags == 1 for _ in range(100))
    assert all(Tracer(sample=0.0).child(None, "c", "s", "x").flags == 0 for _ in range(100))
    tracer = Tracer(sample=0.25)
    sampled = sum(tracer.child(None, "c", "s", "x").flags for _ in range(10_000))
    assert 2_240 < sampled < 2_760, sampled
    with pytest.raises(ValueError, match="from 0 to 1"):
        Tracer(sample=1.5)


def span_counts(text: bytes) -> dict[str, float] | None:
    """micromono_trace_spans_total by outcome, parsed from /metrics by prometheus_client; None without the family."""
    for family in text_string_to_metric_families(text.decode()):
        if family.name == "micromono_trace_spans":
            return {sample.labels["outcome"]: sample.value for sample in family.samples}
    return None


async def test_spans_are_counted_in_the_metrics(tmp_path: Path) -> None:
    """micromono_trace_spans_total: logged and unsampled spans in log mode; no family with tracing off."""
    daemon_table = {"watch": False, "tracing": "log", "trace_sample": 0}
    with capture_logs():
        async with running(make_config(tmp_path, tracectx_chain(), daemon=daemon_table)) as d:
            assert d.metrics_address is not None
            await http(d.addresses[0], "POST", "/a", hops("b", "c"))  # a new trace: unsampled, 3 spans
            await http(d.addresses[0], "POST", "/a", hops("b"), {"traceparent": TRACEPARENT})  # sampled, 2 spans
            assert span_counts((await http(d.metrics_address, "GET", "/metrics")).body) == {
                "unsampled": 3,
                "logged": 2,
            }
    async with running(make_config(tmp_path, tracectx_chain(), daemon={"watch": False})) as d:
        assert d.metrics_address is not None
        await http(d.addresses[0], "POST", "/a", hops("b"), {"traceparent": TRACEPARENT})
        assert span_counts((await http(d.metrics_address, "GET", "/metrics")).body) is None


async def test_trace_context_is_0_when_tracing_is_off(tmp_path: Path) -> None:
    """Off, every hop reads 0 and its buffer is untouched (the incoming traceparent is still in a's headers)."""
    async with running(make_config(tmp_path, tracectx_chain(), daemon={"watch": False})) as daemon:
        response = await http(daemon.addresses[0], "POST", "/a", hops("b", "c"), {"traceparent": TRACEPARENT})
    assert response.status == 200
    body = response.body
    assert body == (struct.pack("<i", 0) + b"." * 64) * 3


async def test_trace_context_with_a_hostile_buffer(tmp_path: Path) -> None:
    """A buffer too small gets nothing written and the length needed (55); one outside linear memory traps the
    guest (HTTP 500 naming the import), and the daemon goes on serving."""
    with capture_logs() as logs:
        async with running(make_config(tmp_path, tracectx_chain(), daemon={"watch": False, "tracing": "log"})) as d:
            small = await http(d.addresses[0], "POST", "/a", b"\xfe")
            outside = await http(d.addresses[0], "POST", "/a", b"\xff")
            after = await http(d.addresses[0], "POST", "/a", b"")
    assert small.status == 200 and small.body == struct.pack("<i", 55) + b"." * 64
    assert outside.status == 500
    assert b"micromono.trace_context: buffer (ptr=4294967040, len=512) is outside linear memory" in outside.body
    assert after.status == 200 and len(read_contexts(after.body)) == 1
    assert [span["outcome"] for span in spans(logs) if span["name"] == "http a"] == ["ok", "trap", "ok"]


# --- the SDKs' helpers ---------------------------------------------------------------------------------------------

#: Each SDK's trace-context probe (tests/fixtures/trace_probe.*) and its echo service, built by `make examples`.
SDKS = {
    "c": "echo.wasm",
    "zig": "echo_zig.wasm",
    "rust": "echo_rust.wasm",
    "assemblyscript": "echo_assemblyscript.wasm",
}


def built(name: str) -> Path:
    path = EXAMPLES_BUILD / name
    if not path.exists():
        pytest.fail(f"examples/build/{name} is missing: `make examples` builds it (examples/Makefile)", pytrace=False)
    return path


@pytest.mark.parametrize("lang", list(SDKS))
async def test_each_sdk_reads_the_trace_context(tmp_path: Path, lang: str) -> None:
    """a (tracectx.wat) calls the SDK's probe, which answers its context read through the SDK's helper: the
    incoming trace id and the span of a's call to it; "none" with tracing off."""
    services = {
        "a": {"wasm": fixture("tracectx.wat"), "routes": ["/a"], "calls": ["probe"]},
        "probe": {"wasm": built(f"trace_probe_{lang}.wasm")},
    }
    replies, calls = {}, {}
    for mode in ("log", "off"):
        with capture_logs() as logs:
            (tmp_path / mode).mkdir()
            config = make_config(tmp_path / mode, services, daemon={"watch": False, "tracing": mode})
            async with running(config) as daemon:
                response = await http(daemon.addresses[0], "POST", "/a", hops("probe"), {"traceparent": TRACEPARENT})
                assert response.status == 200
        replies[mode] = response.body[68:]
        calls[mode] = [span for span in spans(logs) if span["name"] == "call probe"]
    assert replies["off"] == b"none" and calls["off"] == []
    (call,) = calls["log"]
    assert replies["log"] == f"00-{TRACE_ID}-{call['span_id']}-01".encode()


def test_only_modules_that_use_it_import_trace_context() -> None:
    """The import is optional: each SDK's probe imports micromono.trace_context, its echo service (which does not
    call the helper) does not."""
    import wasmtime

    engine = wasmtime.Engine()
    for lang, echo in SDKS.items():
        probe = {imp.name for imp in wasmtime.Module.from_file(engine, str(built(f"trace_probe_{lang}.wasm"))).imports}
        plain = {imp.name for imp in wasmtime.Module.from_file(engine, str(built(echo))).imports}
        assert "trace_context" in probe, lang
        assert "trace_context" not in plain, lang
