"""`daemon.tracing = "otlp"` (docs/tracing.md): spans exported over OTLP/HTTP to a real receiver on 127.0.0.1, decoded
with opentelemetry-proto's classes; flushed when the daemon stops (in-process, and `micromono serve` at SIGTERM)."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from structlog.testing import capture_logs
from test_tracing import PARENT_ID, TRACE_ID, TRACEPARENT, call_request, chain, send_request, span_counts

from conftest import Served, fixture, http, make_config, running, write_manifest


class Receiver:
    """An OTLP/HTTP trace receiver: POST /v1/traces, protobuf bodies, decoded as they arrive."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.paths: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.paths.append(self.path)
                assert self.headers["content-type"] == "application/x-protobuf"
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.requests.append(request)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def spans(self) -> list[tuple[str, ProtoSpan]]:
        """Every span received, with its resource's service.name."""
        found = []
        for request in self.requests:
            for resource_spans in request.resource_spans:
                attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    assert scope_spans.scope.name == "micromono"
                    found += [(attrs["service.name"], span) for span in scope_spans.spans]
        return found


@contextmanager
def receiving() -> Iterator[Receiver]:
    receiver = Receiver()
    receiver.thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
        receiver.thread.join()


def attributes(span: ProtoSpan) -> dict[str, str]:
    return {a.key: a.value.string_value for a in span.attributes}


def check_chain(received: list[tuple[str, ProtoSpan]]) -> dict[str, ProtoSpan]:
    """The spans of chain() (a -> b -> c, one request carrying TRACEPARENT): ids, parents, names, services."""
    by_name = {span.name: (service, span) for service, span in received}
    assert set(by_name) == {"http a", "call b", "call c"}, [span.name for _, span in received]
    spans = {name: span for name, (_, span) in by_name.items()}
    for name, (service, span) in by_name.items():
        assert span.trace_id.hex() == TRACE_ID, name
        assert len(span.span_id) == 8 and span.end_time_unix_nano >= span.start_time_unix_nano > 0
        assert service == attributes(span)["micromono.service"] == name.split()[1]
        assert attributes(span)["micromono.outcome"] == "ok"
        assert span.status.code == 0  # UNSET: not an error
    assert spans["http a"].parent_span_id.hex() == PARENT_ID
    assert spans["call b"].parent_span_id == spans["http a"].span_id
    assert spans["call c"].parent_span_id == spans["call b"].span_id
    assert spans["http a"].kind == ProtoSpan.SPAN_KIND_SERVER
    assert spans["call b"].kind == ProtoSpan.SPAN_KIND_INTERNAL
    assert attributes(spans["call c"])["micromono.caller"] == "b"
    return spans


async def test_the_chains_spans_reach_a_collector(tmp_path: Path, monkeypatch: Any) -> None:
    """The three-service chain's spans arrive, decoded, at POST /v1/traces; the daemon's stop flushes them (the
    export delay is a minute: only the flush can have sent them)."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")
    body = call_request("b", call_request("c", b"ping"))
    with receiving() as receiver, capture_logs() as logs:
        config = make_config(
            tmp_path, chain(), daemon={"watch": False, "tracing": "otlp", "otlp_endpoint": receiver.url}
        )
        async with running(config) as daemon:
            response = await http(daemon.addresses[0], "POST", "/a", body, {"traceparent": TRACEPARENT})
            assert response.status == 200 and response.body.endswith(b"ping")
            assert receiver.requests == []  # not sent yet: batched
        spans = check_chain(receiver.spans())
    assert receiver.paths == ["/v1/traces"]
    assert spans["call b"].end_time_unix_nano <= spans["http a"].end_time_unix_nano
    stopped = [entry for entry in logs if entry["event"] == "tracing.otlp.stopped"]
    assert stopped == [{"event": "tracing.otlp.stopped", "exported": 3, "failed": 0, "dropped": 0, "log_level": "info"}]


async def test_a_full_batch_is_sent_before_the_delay_and_errors_are_spans_with_status(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """OTEL_BSP_MAX_EXPORT_BATCH_SIZE spans wake the export thread at once; a failed hop's span has status ERROR
    with the error kind; a send and its message run are PRODUCER and CONSUMER spans."""
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")  # a batch is sent because it is full, not late
    services = {
        "a": {"wasm": fixture("caller.wat"), "routes": ["/a"], "calls": ["b"]},
        "b": {"wasm": fixture("caller.wat"), "calls": ["c"]},
        "c": {"wasm": fixture("echo.wat")},
    }
    with receiving() as receiver:
        config = make_config(
            tmp_path, services, daemon={"watch": False, "tracing": "otlp", "otlp_endpoint": receiver.url}
        )
        async with running(config) as daemon:
            forbidden = call_request("b", call_request("a", b"x"))  # b may not call a
            assert (await http(daemon.addresses[0], "POST", "/a", forbidden)).status == 200
            assert (await http(daemon.addresses[0], "POST", "/a", send_request("b", b""))).status == 200
            for _ in range(1000):  # 4+ spans queued: sent without waiting for the delay
                if len(receiver.spans()) >= 4:
                    break
                await asyncio.sleep(0.01)
            assert len(receiver.spans()) >= 4
            assert daemon.metrics_address is not None
            for _ in range(1000):  # counted once the exporter has its answer
                counts = span_counts((await http(daemon.metrics_address, "GET", "/metrics")).body)
                assert counts is not None
                if counts["exported"] >= 4:
                    break
                await asyncio.sleep(0.01)
            assert counts["exported"] >= 4 and counts["dropped"] == counts["failed"] == counts["unsampled"] == 0
        received = {span.name: span for _, span in receiver.spans()}
    failed = received["call a"]
    assert failed.status.code == 2 and failed.status.message == "forbidden"  # STATUS_CODE_ERROR
    assert received["send b"].kind == ProtoSpan.SPAN_KIND_PRODUCER
    assert received["message b"].kind == ProtoSpan.SPAN_KIND_CONSUMER
    assert received["message b"].parent_span_id == received["send b"].span_id


def test_serve_flushes_its_spans_at_sigterm(tmp_path: Path) -> None:
    """`micromono serve` with tracing = "otlp" and an export delay of a minute: the spans of a request arrive when
    the daemon is stopped by SIGTERM, and it exits 0."""
    with receiving() as receiver:
        manifest = write_manifest(tmp_path, chain(), {"watch": False, "tracing": "otlp", "otlp_endpoint": receiver.url})
        served = Served(manifest, env={"OTEL_BSP_SCHEDULE_DELAY": "60000"})
        try:
            address = str(served.ready["ingress"][0])  # type: ignore[index]
            host, _, port = address.rpartition(":")
            body = call_request("b", call_request("c", b"ping"))
            response = asyncio.run(http((host, int(port)), "POST", "/a", body, {"traceparent": TRACEPARENT}))
            assert response.status == 200
            assert receiver.requests == []
            code, events = served.stop(signal.SIGTERM)
        finally:
            served.kill()
        assert code == 0, events
        check_chain(receiver.spans())
    assert any(event["event"] == "tracing.otlp.stopped" and event["exported"] == 3 for event in events)
