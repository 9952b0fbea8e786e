"""`daemon.tracing = "otlp"`: spans exported to an OpenTelemetry collector over OTLP/HTTP (docs/tracing.md).

The only module that imports the OpenTelemetry SDK (the optional extra `otlp`; ruff's banned-api rule keeps it so),
and only `tracing.start_tracer` imports this one, in that mode. What runs on the event loop is `OtlpExport.emit`:
one bounded `deque.append` of the ended span, (span, end, outcome), per span. Everything else, turning the records
into the SDK's `ReadableSpan`s, the protobuf encoding and the HTTP POST, runs in the export thread
(`micromono-otlp`), in batches, as the SDK's `BatchSpanProcessor` would; the SDK's processor is not used because
its `on_end` and a `ReadableSpan` per span would cost the loop several microseconds a span where the append costs
a tenth of one (docs/tracing.md, *Costs*). It must not make spans (tracing.py does) nor touch the loop.

Batching follows the SDK's environment variables: `OTEL_BSP_SCHEDULE_DELAY` (ms between exports, 5000),
`OTEL_BSP_MAX_QUEUE_SIZE` (spans held, 2048; past it new spans are dropped and counted) and
`OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (spans per POST, 512; a full batch wakes the thread early). The exporter itself
reads the standard `OTEL_EXPORTER_OTLP_*` variables (headers, timeout, compression, and the endpoint when
`daemon.otlp_endpoint` is unset).
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Final

import structlog
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from . import __version__
from .tracing import Span

__all__ = ["OtlpExport", "FLUSH_TIMEOUT"]

log = structlog.get_logger(__name__)

#: The longest `close()` waits for the spans still queued to be sent (seconds): a collector that is down must not
#: hold the daemon's shutdown for the exporter's whole retry schedule.
FLUSH_TIMEOUT: Final = 10.0
#: A span's OpenTelemetry kind, from the first word of its name (tracing.py names them "<what> <target>").
_KINDS: Final = {
    "http": SpanKind.SERVER,
    "call": SpanKind.INTERNAL,
    "send": SpanKind.PRODUCER,
    "message": SpanKind.CONSUMER,
}
_UNSET: Final = Status(StatusCode.UNSET)


def _env_int(name: str, default: int) -> int:
    try:
        value = int(os.environ.get(name, default))
    except ValueError:
        log.warning("tracing.otlp.env.invalid", variable=name, value=os.environ.get(name), using=default)
        return default
    return value if value > 0 else default


class OtlpExport:
    """The export queue and thread of `tracing = "otlp"`; a `tracing.Tracer`'s `emit` and `close`.

    Args:
        endpoint: the collector's base URL (`daemon.otlp_endpoint`, e.g. "http://127.0.0.1:4318"; spans go to its
            /v1/traces), or None for the exporter's own choice (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, then
            OTEL_EXPORTER_OTLP_ENDPOINT, then http://localhost:4318).
        thread_setup: run first in the export thread (the daemon puts it off the loop's CPU: placement.py).
    """

    def __init__(self, endpoint: str | None, thread_setup: Callable[[], None] | None = None) -> None:
        self.endpoint = endpoint
        self._exporter = OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces" if endpoint is not None else None)
        self._delay = _env_int("OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000
        self._capacity = _env_int("OTEL_BSP_MAX_QUEUE_SIZE", 2048)
        self._batch = min(_env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512), self._capacity)
        # Appended on the loop, popped in the export thread: deque's append and popleft are atomic.
        self._queue: deque[tuple[Span, int, str]] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self._thread_setup = thread_setup
        # perf_counter_ns (what spans are timed with) + this = nanoseconds since the Unix epoch (what OTLP wants).
        self._epoch_offset = time.time_ns() - time.perf_counter_ns()
        self._resources: dict[str, Resource] = {}
        self._scope = InstrumentationScope("micromono", __version__)
        # Counters (written by the thread that owns each): spans dropped by a full queue (loop), exported and
        # failed (export thread).
        self.dropped = 0
        self.exported = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._work, name="micromono-otlp", daemon=True)
        self._thread.start()

    def counts(self) -> dict[str, int]:
        """Spans by what became of them (`micromono_trace_spans_total`): exported, dropped by a full queue, or failed
        to export. Spans still queued are in none yet. Any thread may read it (each counter is one int)."""
        return {"exported": self.exported, "dropped": self.dropped, "failed": self.failed}

    def __repr__(self) -> str:
        return (
            f"<OtlpExport {self.endpoint or 'OTEL_EXPORTER_OTLP_*'} [queued: {len(self._queue)} | "
            f"exported: {self.exported} | dropped: {self.dropped} | failed: {self.failed}]>"
        )

    # --- on the event loop ----------------------------------------------------------------------------------------

    def emit(self, span: Span, ended_ns: int, outcome: str) -> None:
        """Queue an ended span for export (tracing.Tracer.emit): O(1), never blocks, never does I/O."""
        queue = self._queue
        n = len(queue)
        if n >= self._capacity:
            self.dropped += 1
            return
        queue.append((span, ended_ns, outcome))
        if n + 1 == self._batch:  # a full batch: wake the thread now rather than at its next delay
            self._wake.set()

    # --- anywhere but the loop ------------------------------------------------------------------------------------

    def close(self) -> None:
        """Export what is queued, then stop the thread and the exporter; waits at most FLUSH_TIMEOUT. Blocks: call
        it off the event loop."""
        self._stopping = True
        self._wake.set()
        self._thread.join(FLUSH_TIMEOUT)
        if self._thread.is_alive():
            log.warning(
                "tracing.otlp.flush.incomplete", endpoint=self.endpoint, queued=len(self._queue), timeout=FLUSH_TIMEOUT
            )

    # --- the export thread ----------------------------------------------------------------------------------------

    def _work(self) -> None:
        if self._thread_setup is not None:
            self._thread_setup()
        reported = 0
        try:
            while True:
                self._wake.wait(self._delay)
                self._wake.clear()
                stopping = self._stopping
                self._export_queued()
                if self.dropped != reported:
                    log.warning("tracing.otlp.dropped", spans=self.dropped - reported, capacity=self._capacity)
                    reported = self.dropped
                if stopping:
                    break
        finally:
            self._exporter.shutdown()  # type: ignore[no-untyped-call]  # (untyped in the SDK)
            log.info("tracing.otlp.stopped", exported=self.exported, failed=self.failed, dropped=self.dropped)

    def _export_queued(self) -> None:
        queue = self._queue
        while queue:
            records = [queue.popleft() for _ in range(min(self._batch, len(queue)))]
            try:
                result = self._exporter.export([self._readable(*record) for record in records])
            except Exception as exc:  # the exporter logs and returns FAILURE; anything else must not end the thread
                log.error("tracing.otlp.export.crashed", spans=len(records), error=repr(exc))
                result = SpanExportResult.FAILURE
            if result is SpanExportResult.SUCCESS:
                self.exported += len(records)
            else:
                self.failed += len(records)
                log.warning("tracing.otlp.export.failed", spans=len(records), endpoint=self.endpoint)

    def _readable(self, span: Span, ended_ns: int, outcome: str) -> ReadableSpan:
        """A span as the SDK's exporter takes it: its service as the resource's `service.name` (each guest service
        is a service of its own to the back end) and as the attribute `micromono.service`."""
        flags = TraceFlags(span.flags)
        parent = None
        if span.parent_id is not None:
            # The parent is remote for the root of a run that continued an incoming traceparent.
            parent = SpanContext(span.trace_id, span.parent_id, span.caller == "ingress", flags)
        resource = self._resources.get(span.service)
        if resource is None:
            resource = self._resources[span.service] = Resource.create({"service.name": span.service})
        offset = self._epoch_offset
        return ReadableSpan(
            name=span.name,
            context=SpanContext(span.trace_id, span.span_id, False, flags),
            parent=parent,
            resource=resource,
            attributes={
                "micromono.service": span.service,
                "micromono.caller": span.caller,
                "micromono.outcome": outcome,
            },
            kind=_KINDS.get(span.name.partition(" ")[0], SpanKind.INTERNAL),
            status=_UNSET if outcome == "ok" else Status(StatusCode.ERROR, outcome),
            start_time=span.started + offset,
            end_time=ended_ns + offset,
            instrumentation_scope=self._scope,
        )
