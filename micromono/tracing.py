"""Traces through internal calls (docs/tracing.md): W3C trace contexts, spans, and the `Host` that makes them.

With `daemon.tracing = "off"` nothing here is used: the engine's host is the `Router` itself. With `"log"` or
`"otlp"` the daemon gives the engine a `TracingHost`, which opens a span around each `call` and `send` the router
serves, and the top-level runs (runs.py, actors/actor.py) open one per ingress request and message; each span ends
in `Tracer.emit`: one structlog event `span` ("log"), or the OTLP export queue (tracing_otlp.py, "otlp").

The context of a guest entry lives on its instance (`Instance.trace`, a `Span` or None): set by the top-level run,
copied by `Router.call` from the caller to the callee. `TracingHost.call` puts the new call's span on the caller
for the duration of the router's call, so the callee inherits it as its own context; `TracingHost.send` does the
same, and the router queues the context with the message, so the message's run is the send span's child.

This module must not import the OpenTelemetry SDK (an optional extra): `start_tracer` imports tracing_otlp.py
only when the mode asks for it.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from typing import Any, Final

import structlog

from .abi import KIND_ALARM, KIND_CALL, KIND_HTTP, KIND_MESSAGE, KIND_WS_CLOSE, KIND_WS_MESSAGE, KIND_WS_OPEN
from .engine import Host, Instance, Waiting
from .errors import (
    AbiViolation,
    BadActorKey,
    CallDepthExceeded,
    CallForbidden,
    CallTimeout,
    GuestAppError,
    GuestTrap,
    MicromonoError,
    Overloaded,
    RequestTooLarge,
    ServiceCallError,
    ServiceUnavailable,
    UnknownService,
)

__all__ = [
    "Span", "Tracer", "TracingHost", "TracingUnavailable", "parse_traceparent", "outcome_of", "start_tracer",
]  # fmt: skip

log = structlog.get_logger(__name__)

_MASK64: Final = (1 << 64) - 1
#: An odd constant (2^64 / golden ratio): n * it mod 2^64 visits every 64-bit value once, spread over the range.
_SPREAD: Final = 0x9E3779B97F4A7C15
#: The W3C trace flags' `sampled` bit: the spans of a trace without it are not recorded.
_SAMPLED: Final = 0x01
_TRACEPARENT: Final = re.compile(rb"^traceparent:[ \t]*([^\r\n]*?)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)
_VALUE: Final = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?")
#: What a top-level run's span is named after, by request kind: "<kind> <service>".
_RUN_NAMES: Final = {
    KIND_HTTP: "http",
    KIND_CALL: "call",
    KIND_MESSAGE: "message",
    KIND_ALARM: "alarm",
    KIND_WS_OPEN: "ws_open",
    KIND_WS_MESSAGE: "ws_message",
    KIND_WS_CLOSE: "ws_close",
}
#: A negative ABI result → the error kind a span's `outcome` names.
_KINDS: Final = {
    cls.abi_code: cls.kind
    for cls in (
        UnknownService,
        CallForbidden,
        Overloaded,
        AbiViolation,
        GuestTrap,  # after AbiViolation: the same code, and "trap" is what a guest sees
        CallTimeout,
        CallDepthExceeded,
        GuestAppError,
        RequestTooLarge,
        ServiceUnavailable,
        BadActorKey,
    )
}


def outcome_of(result: int) -> str:
    """A span's outcome for an ABI result: "ok" for a length, else the error kind (or "error <code>")."""
    if result >= 0:
        return "ok"
    return _KINDS.get(result, f"error {result}")


def parse_traceparent(value: bytes) -> tuple[int, int, int] | None:
    """A `traceparent` header value as (trace_id, parent_id, flags), or None when it is not a valid one.

    W3C Trace Context level 1: version 00 is exactly four fields; a higher version may append fields (kept out);
    version ff, an all-zero trace id or an all-zero parent id are invalid.
    """
    m = _VALUE.fullmatch(value)
    if m is None:
        return None
    version, trace, parent, flags = m.groups()
    if version == b"ff" or (version == b"00" and len(value) != 55):
        return None
    trace_id, parent_id = int(trace, 16), int(parent, 16)
    if trace_id == 0 or parent_id == 0:
        return None
    return trace_id, parent_id, int(flags, 16)


def _http_traceparent(request: bytes) -> bytes | None:
    """The `traceparent` header of an HTTP request encoded for the guest (docs/abi.md, *HTTP encoding*): the first
    one, or None. Only its header block is searched."""
    if len(request) < 16:
        return None
    method_len = int.from_bytes(request[0:2], "little")
    path_len = int.from_bytes(request[4:8], "little")
    query_len = int.from_bytes(request[8:12], "little")
    body_len = int.from_bytes(request[12:16], "little")
    start = 16 + method_len + path_len + query_len
    block = request[start : len(request) - body_len]
    m = _TRACEPARENT.search(block)
    return m.group(1) if m is not None else None


class Span:
    """One span: the context a guest entry runs in (`Instance.trace`), and what its `span` event reports."""

    __slots__ = ("trace_id", "span_id", "parent_id", "flags", "name", "service", "caller", "started")

    def __init__(
        self, trace_id: int, span_id: int, parent_id: int | None, flags: int, name: str, service: str, caller: str
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.flags = flags
        self.name = name
        self.service = service
        self.caller = caller
        self.started = time.perf_counter_ns()

    def __repr__(self) -> str:
        return f"<Span {self.name} {self.traceparent().decode()}>"

    def traceparent(self) -> bytes:
        """This span as a W3C `traceparent` value (55 bytes): what a guest reads as its context."""
        return f"00-{self.trace_id:032x}-{self.span_id:016x}-{self.flags:02x}".encode()


class Tracer:
    """Makes spans and ends them into `emit` (the log, or the OTLP export queue).

    Span ids come from a counter spread over 64 bits from a random base (docs/tracing.md, *Span ids*): unique in
    the daemon's life, and colliding with another daemon's only by chance.

    Sampling (docs/tracing.md, *Sampling*): a span is recorded (given to `emit`) only when its trace is sampled,
    the W3C flags' bit 0. A trace that arrives with a `traceparent` keeps its sender's decision; a new one is
    sampled with probability `sample`. An unsampled span is still made and carried (a guest reads it, flags
    `00`), so the decision holds along the whole chain; it just never reaches `emit`.

    Args:
        emit: where an ended span goes, with its end (`time.perf_counter_ns()`) and outcome (default: the structlog
            event `span`); tests and the OTLP export replace it. It runs on the event loop, once per span.
        close: called once by `close()` (the OTLP export's flush); None for nothing.
        sample: the share of new traces recorded, 0 to 1 (`daemon.trace_sample`).
        recorded_counts: what became of the recorded spans, by outcome (the OTLP export's `counts`); None: every
            recorded span is `logged` as `emit` returns (the log).
    """

    def __init__(
        self,
        emit: Callable[[Span, int, str], None] | None = None,
        close: Callable[[], None] | None = None,
        sample: float = 1.0,
        recorded_counts: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        if not 0.0 <= sample <= 1.0:
            raise ValueError(f"sample must be from 0 to 1, got {sample!r}")
        self._base = random.getrandbits(64)
        self._n = 0
        self.emit: Callable[[Span, int, str], None] = emit if emit is not None else _log_span
        self._close = close
        self.sample = sample
        self._recorded_counts = recorded_counts
        # Spans ended (on the loop): recorded (given to `emit`) and not (their trace unsampled).
        self.recorded = 0
        self.unsampled = 0

    def __repr__(self) -> str:
        return f"<Tracer [spans: {self._n}]>"

    def new_span_id(self) -> int:
        while True:
            self._n += 1
            span_id = (self._base + self._n * _SPREAD) & _MASK64
            if span_id:
                return span_id

    def root(self, kind: int, request: bytes, service: str) -> Span:
        """The span of a top-level run nobody sent: continuing the HTTP request's `traceparent` if it has a valid
        one, else the root of a new trace."""
        name = f"{_RUN_NAMES.get(kind, 'run')} {service}"
        if kind == KIND_HTTP:
            value = _http_traceparent(request)
            parsed = parse_traceparent(value) if value is not None else None
            if parsed is not None:
                trace_id, parent_id, flags = parsed
                return Span(trace_id, self.new_span_id(), parent_id, flags, name, service, "ingress")
        return Span(
            random.getrandbits(128) or 1, self.new_span_id(), None, self._new_trace_flags(), name, service, "ingress"
        )

    def run(self, kind: int, request: bytes, service: str, parent: Span | None) -> Span:
        """The span of a top-level run: a child of `parent` (the span of the `send` that queued a message, or of
        the `call` to an actor), whose caller it names; else `root`."""
        if parent is None:
            return self.root(kind, request, service)
        return Span(
            parent.trace_id,
            self.new_span_id(),
            parent.span_id,
            parent.flags,
            f"{_RUN_NAMES.get(kind, 'run')} {service}",
            service,
            parent.caller,
        )

    def child(self, parent: Span | None, name: str, service: str, caller: str) -> Span:
        """A span inside `parent` (a new trace when the caller has no context: an entry started before tracing
        was on, or a start function)."""
        if parent is None:
            return Span(
                random.getrandbits(128) or 1, self.new_span_id(), None, self._new_trace_flags(), name, service, caller
            )
        return Span(parent.trace_id, self.new_span_id(), parent.span_id, parent.flags, name, service, caller)

    def end(self, span: Span, outcome: str) -> None:
        if span.flags & _SAMPLED:
            self.recorded += 1
            self.emit(span, time.perf_counter_ns(), outcome)
        else:
            self.unsampled += 1

    def counts(self) -> dict[str, int]:
        """Ended spans by what became of them (`micromono_trace_spans_total{outcome}`): `unsampled`, and `logged`
        (log mode) or `exported`, `dropped` and `failed` (OTLP; spans still queued are in none yet)."""
        recorded = {"logged": self.recorded} if self._recorded_counts is None else self._recorded_counts()
        return {"unsampled": self.unsampled, **recorded}

    def _new_trace_flags(self) -> int:
        """The flags of a new trace: sampled with probability `sample`."""
        sample = self.sample
        return _SAMPLED if sample >= 1.0 or (sample > 0.0 and random.random() < sample) else 0

    def close(self) -> None:
        """Flush and stop what `emit` feeds (the OTLP export: blocks until its queue is sent, bounded); call it off
        the event loop. Idempotent."""
        close, self._close = self._close, None
        if close is not None:
            close()


def _log_span(span: Span, ended_ns: int, outcome: str) -> None:
    parent = span.parent_id
    log.info(
        "span",
        trace_id=f"{span.trace_id:032x}",
        span_id=f"{span.span_id:016x}",
        parent_span_id=f"{parent:016x}" if parent is not None else None,
        name=span.name,
        service=span.service,
        caller=span.caller,
        duration_us=(ended_ns - span.started) // 1000,
        outcome=outcome,
    )


class _TracedWaiting:
    """A call that outlasted its caller's slice (engine.Waiting), whose span ends with its result."""

    __slots__ = ("waiting", "tracer", "span")

    def __init__(self, waiting: Waiting, tracer: Tracer, span: Span) -> None:
        self.waiting = waiting
        self.tracer = tracer
        self.span = span

    def step(self) -> int | None:
        r = self.waiting.step()
        if r is not None:
            self.tracer.end(self.span, outcome_of(r))
        return r

    def cancel(self) -> None:
        self.waiting.cancel()
        self.tracer.end(self.span, "cancelled")

    @property
    def callee_instance(self) -> Instance | None:
        return self.waiting.callee_instance


class TracingHost:
    """The engine's `Host` when tracing is on: the router's (`router`), with a span around each `call` and `send`,
    and `trace_context` answering the caller's context.

    Every other import is the router's own bound method (looked up once, here), so only they pay for spans.
    """

    def __init__(self, router: Host, tracer: Tracer) -> None:
        self.router = router
        self.tracer = tracer
        self._call = router.call
        self._send = router.send
        for name in ("log", "actor_key", "kv_get", "kv_put", "kv_delete", "kv_list", "sql_exec"):
            setattr(self, name, getattr(router, name))
        self.websocket = router.websocket
        self.alarm = router.alarm

    def __repr__(self) -> str:
        return f"<TracingHost {self.router!r}>"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.router, name)

    def call(self, caller: Instance, target: bytes, request: bytes, reply_ptr: int, reply_cap: int) -> Any:
        """`Router.call` inside a span "call <target>": the callee inherits the span as its context."""
        parent: Span | None = caller.trace
        source: str = caller.owner.name
        name = target.decode("utf-8", "replace")
        span = self.tracer.child(parent, f"call {name}", name.partition("/")[0], source)
        caller.trace = span
        try:
            r = self._call(caller, target, request, reply_ptr, reply_cap)
        finally:
            caller.trace = parent
        if isinstance(r, int):
            self.tracer.end(span, outcome_of(r))
            return r
        return _TracedWaiting(r, self.tracer, span)

    def send(self, caller: Instance, target: bytes, message: bytes) -> int:
        """`Router.send` inside a span "send <target>" (the time to queue the message): the router queues the span
        with the message, and the message's run is its child."""
        parent: Span | None = caller.trace
        name = target.decode("utf-8", "replace")
        span = self.tracer.child(parent, f"send {name}", name.partition("/")[0], caller.owner.name)
        caller.trace = span
        try:
            r = self._send(caller, target, message)
        finally:
            caller.trace = parent
        self.tracer.end(span, outcome_of(r))
        return r

    def trace_context(self, caller: Instance) -> bytes:
        """Serve `micromono.trace_context`: the caller's context as a `traceparent` value, b"" when it has none."""
        span: Span | None = caller.trace
        return span.traceparent() if span is not None else b""


class TracingUnavailable(MicromonoError):
    """The configured tracing mode cannot start (`"otlp"` without the OpenTelemetry SDK installed)."""


def start_tracer(
    mode: str,
    otlp_endpoint: str | None = None,
    *,
    sample: float = 1.0,
    thread_setup: Callable[[], None] | None = None,
) -> Tracer | None:
    """The tracer of `daemon.tracing = mode`: None for "off", spans to the log for "log", spans exported over
    OTLP/HTTP for "otlp" (to `otlp_endpoint`, else where the OTEL_EXPORTER_OTLP_* environment variables say; the
    export thread runs `thread_setup` first); `sample` is the share of new traces recorded. Close it
    (`Tracer.close`, off the loop) at shutdown.

    Raises:
        TracingUnavailable: "otlp" without the `otlp` extra installed.
    """
    if mode == "off":
        return None
    if mode == "log":
        return Tracer(sample=sample)
    try:
        from . import tracing_otlp
    except ImportError as exc:
        raise TracingUnavailable(
            f'daemon.tracing = "otlp" needs the OpenTelemetry SDK, which is not installed ({exc}): install the '
            'extra with `pip install \'micromono[otlp]\'`, or set tracing = "log" or "off"'
        ) from exc
    export = tracing_otlp.OtlpExport(otlp_endpoint, thread_setup)
    return Tracer(emit=export.emit, close=export.close, sample=sample, recorded_counts=export.counts)


def end_on_failure(tracer: Tracer, span: Span, exc: ServiceCallError) -> None:
    """End a top-level run's span that failed."""
    tracer.end(span, exc.kind)
