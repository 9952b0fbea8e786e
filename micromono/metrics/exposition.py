"""The Prometheus text of a `Snapshot`, written directly, in a worker thread while the loop goes on serving.

The expensive part of a scrape, so it writes the text itself rather than through prometheus_client's metric
families and `generate_latest`, which are several times slower and allocate an object per sample. It holds the GIL
while it works, so it lets go regularly (`pacer.Pacer`): else the loop's thread would wait for it.

`exposition(snapshot)` gives the samples `reference.families(snapshot)` holds, in the same order and with labels
sorted by name like `generate_latest` writes them; tests/test_metrics.py holds the two to that. It reads nothing but
the snapshot, so it is safe in any thread; it must not read live objects.
"""

from __future__ import annotations

from typing import Final

from prometheus_client.utils import floatToGoString

from micromono.pacer import Pacer

from .names import BATCH_BOUNDS, BOUNDS, COMMIT_BOUNDS, HELP
from .snapshot import ActorCounters, ServiceCounters, Snapshot

__all__ = ["exposition"]

#: Lines encoded at a time: one str.join and encode of megabytes would hold the GIL for long.
_LINES: Final = 2048


def exposition(snapshot: Snapshot) -> bytes:
    """`snapshot` in Prometheus text format: the samples `families(snapshot)` holds, in the same order and with
    labels sorted by name like `generate_latest` writes them. Reads nothing but `snapshot`: safe in any thread."""
    out: list[str] = []
    calls, messages = _head("calls", "counter"), _head("messages", "counter")
    pace = Pacer()
    for edge in snapshot.exported_edges():
        pace()
        ends = f'{{callee="{_escape(edge.callee)}",caller="{_escape(edge.caller)}",outcome="'
        calls.append(f'micromono_calls_total{ends}ok"}} {_number(edge.ok)}\n')
        for kind, n in sorted(edge.errors):
            calls.append(f'micromono_calls_total{ends}{_escape(kind)}"}} {_number(n)}\n')
        if edge.caller != "ingress":
            ends = f'receiver="{_escape(edge.callee)}",sender="{_escape(edge.caller)}"}} '
            messages.append(f'micromono_messages_total{{outcome="ok",{ends}{_number(edge.messages)}\n')
            for kind, n in sorted(edge.message_errors):
                messages.append(f'micromono_messages_total{{outcome="{_escape(kind)}",{ends}{_number(n)}\n')
    out += calls
    out += messages
    out += _head("calls_refused", "counter")
    for (caller, reason), n in sorted(snapshot.refused):
        labels = f'caller="{_escape(caller)}",reason="{_escape(reason)}"'
        out.append(f"micromono_calls_refused_total{{{labels}}} {_number(n)}\n")
    _write_services(out, snapshot.services, pace)
    if snapshot.actors:
        _write_actors(out, snapshot.actors)
        _write_websockets(out, snapshot.actors)
    out += _head("http_responses", "counter")
    for code, n in sorted(snapshot.statuses):
        out.append(f'micromono_http_responses_total{{code="{code}"}} {_number(n)}\n')
    out += _head("http_connections", "gauge")
    out.append(f"micromono_http_connections {_number(snapshot.connections)}\n")
    out += _head("reloads", "counter")
    for (service, outcome), n in sorted(snapshot.reloads):
        labels = f'outcome="{_escape(outcome)}",service="{_escape(service)}"'
        out.append(f"micromono_reloads_total{{{labels}}} {_number(n)}\n")
    out += _head("version_calls", "counter")
    for name, version, ok, failed in snapshot.versions():
        pace()
        labels = f'service="{_escape(name)}",version="{_escape(version)}"}} '
        out.append(f'micromono_version_calls_total{{outcome="ok",{labels}{_number(ok)}\n')
        out.append(f'micromono_version_calls_total{{outcome="failed",{labels}{_number(failed)}\n')
    if snapshot.cache is not None:
        size, evictions = snapshot.cache
        out += _head("compile_cache_bytes", "gauge")
        out.append(f"micromono_compile_cache_bytes {_number(size)}\n")
        out += _head("compile_cache_evictions", "counter")
        out.append(f"micromono_compile_cache_evictions_total {_number(evictions)}\n")
    if snapshot.spans is not None:
        out += _head("trace_spans", "counter")
        for outcome, n in sorted(snapshot.spans.items()):
            out.append(f'micromono_trace_spans_total{{outcome="{outcome}"}} {_number(n)}\n')
    chunks = []
    for start in range(0, len(out), _LINES):
        chunks.append("".join(out[start : start + _LINES]).encode())
        pace()
    return b"".join(chunks)  # lets go of the GIL itself while it copies, from 1 MiB up (CPython's bytes.join)


def _write_services(out: list[str], services: list[ServiceCounters], pace: Pacer) -> None:
    duration = _head("call_duration_seconds", "histogram")
    depth, capacity = _head("mailbox_depth", "gauge"), _head("mailbox_capacity", "gauge")
    rejected, shed = _head("mailbox_rejected", "counter"), _head("mailbox_shed", "counter")
    instances, failures = _head("instances", "gauge"), _head("instance_failures", "counter")
    memory, memory_limit = _head("guest_memory_bytes", "gauge"), _head("guest_memory_limit_bytes", "gauge")
    at_limit, quarantines = _head("instances_at_memory_limit", "gauge"), _head("quarantines", "counter")
    preempted, info = _head("preempted_runs", "counter"), _head("service_info", "gauge")
    log_dropped, log_bytes = _head("guest_log_dropped", "counter"), _head("guest_log_dropped_bytes", "counter")
    for s in services:
        pace()
        name = _escape(s.name)
        label = f'{{service="{name}"}} '
        if s.latency:
            cumulative = 0
            for bound, n in zip(BOUNDS, s.latency, strict=True):
                cumulative += n
                duration.append(
                    f'micromono_call_duration_seconds_bucket{{le="{bound}",service="{name}"}} {_number(cumulative)}\n'
                )
            duration.append(f"micromono_call_duration_seconds_count{label}{_number(cumulative)}\n")
            duration.append(f"micromono_call_duration_seconds_sum{label}{_number(s.latency_sum)}\n")
        depth.append(f"micromono_mailbox_depth{label}{_number(s.queued)}\n")
        capacity.append(f"micromono_mailbox_capacity{label}{_number(s.capacity)}\n")
        rejected.append(f"micromono_mailbox_rejected_total{label}{_number(s.rejected)}\n")
        shed.append(f"micromono_mailbox_shed_total{label}{_number(s.shed)}\n")
        instances.append(f"micromono_instances{label}{_number(s.live)}\n")
        failures.append(f"micromono_instance_failures_total{label}{_number(s.traps)}\n")
        memory.append(f"micromono_guest_memory_bytes{label}{_number(sum(s.memory_sizes))}\n")
        memory_limit.append(f"micromono_guest_memory_limit_bytes{label}{_number(s.memory_limit)}\n")
        at_limit.append(f"micromono_instances_at_memory_limit{label}{_number(s.at_memory_limit())}\n")
        quarantines.append(f"micromono_quarantines_total{label}{_number(s.quarantines)}\n")
        preempted.append(f"micromono_preempted_runs_total{label}{_number(s.preempted)}\n")
        log_dropped.append(f"micromono_guest_log_dropped_total{label}{_number(s.log_dropped)}\n")
        log_bytes.append(f"micromono_guest_log_dropped_bytes_total{label}{_number(s.log_dropped_bytes)}\n")
        info.append(
            f'micromono_service_info{{service="{name}",sha256="{_escape(s.sha256)}",'
            f'version="{_escape(s.version)}"}} 1.0\n'
        )
    for family in (
        duration,
        depth,
        capacity,
        rejected,
        shed,
        instances,
        failures,
        memory,
        memory_limit,
        at_limit,
        quarantines,
        preempted,
        log_dropped,
        log_bytes,
        info,
    ):
        out += family


#: The actor families, in the order they are written (`reference._actors` yields them so), and their types.
_ACTOR_FAMILIES: Final = (
    ("actors_live", "gauge"), ("actors_in_memory", "gauge"), ("actors_hibernated", "gauge"),
    ("actor_activations", "counter"), ("actor_revivals", "counter"), ("actor_activation_seconds", "histogram"),
    ("actor_hibernations", "counter"), ("actor_queue_depth_max", "gauge"), ("actor_queued", "gauge"),
    ("actor_commits", "counter"), ("actor_commit_batches", "counter"), ("actor_commit_failures", "counter"),
    ("actor_commit_seconds", "histogram"), ("actor_commit_batch_size", "histogram"),
    ("actor_storage_bytes", "gauge"), ("actor_storage_disk_bytes", "gauge"), ("actor_alarms_pending", "gauge"),
    ("actor_alarms_fired", "counter"), ("actor_alarms_retried", "counter"), ("actor_alarms_dropped", "counter"),
    ("actor_resets", "counter"), ("actor_rejected", "counter"),
)  # fmt: skip


def _write_actors(out: list[str], actors: list[ActorCounters]) -> None:
    """The actor services' families (a handful of services: no pacing needed)."""
    lines = {name: _head(name, kind) for name, kind in _ACTOR_FAMILIES}
    names = {
        name: f"micromono_{name}_total" if kind == "counter" else f"micromono_{name}" for name, kind in _ACTOR_FAMILIES
    }

    def sample(family: str, label: str, value: float) -> None:
        lines[family].append(f"{names[family]}{label}{_number(value)}\n")

    for a in actors:
        name = _escape(a.name)
        label = f'{{service="{name}"}} '
        scan, storage = a.scan, a.storage
        sample("actors_live", label, scan.live)
        sample("actors_in_memory", label, scan.in_memory)
        sample("actors_hibernated", label, a.hibernated)
        sample("actor_activations", label, a.activations)
        sample("actor_revivals", label, a.revivals)
        _histogram(lines["actor_activation_seconds"], "actor_activation_seconds", name, BOUNDS, a.activation,
                   a.activation_sum)  # fmt: skip
        for reason, n in (("idle", a.hibernated_idle), ("evicted", a.hibernated_evicted)):
            sample("actor_hibernations", f'{{reason="{reason}",service="{name}"}} ', n)
        sample("actor_queue_depth_max", label, scan.deepest)
        sample("actor_queued", label, scan.queued)
        sample("actor_commits", label, storage.commits)
        sample("actor_commit_batches", label, storage.batches)
        sample("actor_commit_failures", label, storage.failed)
        _histogram(lines["actor_commit_seconds"], "actor_commit_seconds", name, COMMIT_BOUNDS,
                   storage.commit_seconds, storage.commit_seconds_sum)  # fmt: skip
        _histogram(lines["actor_commit_batch_size"], "actor_commit_batch_size", name, BATCH_BOUNDS,
                   storage.batch_sizes, storage.batch_sizes_sum)  # fmt: skip
        sample("actor_storage_bytes", label, a.stored_bytes)
        sample("actor_storage_disk_bytes", label, storage.disk_bytes)
        sample("actor_alarms_pending", label, a.alarms_pending)
        sample("actor_alarms_fired", label, a.alarms_fired)
        sample("actor_alarms_retried", label, a.alarms_retried)
        sample("actor_alarms_dropped", label, a.alarms_dropped)
        sample("actor_resets", label, a.resets)
        sample("actor_rejected", label, a.rejected)
    for family, _ in _ACTOR_FAMILIES:
        out += lines[family]


#: The WebSocket families of the actor services, in the order they are written (`reference._websockets` yields them
#: so), and their types.
_WS_FAMILIES: Final = (
    ("ws_connections", "gauge"), ("ws_connections_opened", "counter"), ("ws_connections_refused", "counter"),
    ("ws_messages", "counter"), ("ws_bytes", "counter"), ("ws_published", "counter"), ("ws_resumes", "counter"),
    ("ws_resets", "counter"), ("ws_closes", "counter"),
)  # fmt: skip


def _write_websockets(out: list[str], actors: list[ActorCounters]) -> None:
    """The actor services' WebSocket families (labels sorted by name: code, direction and reason before service)."""
    lines = {name: _head(name, kind) for name, kind in _WS_FAMILIES}
    for a in actors:
        ws = a.websockets
        name = _escape(a.name)
        label = f'{{service="{name}"}} '
        lines["ws_connections"].append(f"micromono_ws_connections{label}{_number(ws.open)}\n")
        lines["ws_connections_opened"].append(f"micromono_ws_connections_opened_total{label}{_number(ws.opened)}\n")
        refused = lines["ws_connections_refused"]
        for reason, n in ws.refused:
            refused.append(
                f'micromono_ws_connections_refused_total{{reason="{_escape(reason)}",service="{name}"}} {_number(n)}\n'
            )
        for direction, n in (("in", ws.messages_in), ("out", ws.messages_out)):
            lines["ws_messages"].append(
                f'micromono_ws_messages_total{{direction="{direction}",service="{name}"}} {_number(n)}\n'
            )
        for direction, n in (("in", ws.bytes_in), ("out", ws.bytes_out)):
            lines["ws_bytes"].append(
                f'micromono_ws_bytes_total{{direction="{direction}",service="{name}"}} {_number(n)}\n'
            )
        lines["ws_published"].append(f"micromono_ws_published_total{label}{_number(ws.published)}\n")
        lines["ws_resumes"].append(f"micromono_ws_resumes_total{label}{_number(ws.resumes)}\n")
        lines["ws_resets"].append(f"micromono_ws_resets_total{label}{_number(ws.resets)}\n")
        for code, n in ws.closes:
            lines["ws_closes"].append(f'micromono_ws_closes_total{{code="{code}",service="{name}"}} {_number(n)}\n')
    for family, _ in _WS_FAMILIES:
        out += lines[family]


def _histogram(
    lines: list[str], family: str, service: str, bounds: tuple[str, ...], counts: tuple[int, ...], total: float
) -> None:
    """One service's series of a histogram family: cumulative buckets, then `_count` and `_sum`."""
    cumulative = 0
    for bound, n in zip(bounds, counts, strict=True):
        cumulative += n
        lines.append(f'micromono_{family}_bucket{{le="{bound}",service="{service}"}} {_number(cumulative)}\n')
    lines.append(f'micromono_{family}_count{{service="{service}"}} {_number(cumulative)}\n')
    lines.append(f'micromono_{family}_sum{{service="{service}"}} {_number(total)}\n')


def _head(name: str, kind: str) -> list[str]:
    """A family's `# HELP` and `# TYPE` lines, under the name generate_latest gives it (counters end in `_total`)."""
    full = f"micromono_{name}_total" if kind == "counter" else f"micromono_{name}"
    return [f"# HELP {full} {HELP[name]}\n", f"# TYPE {full} {kind}\n"]


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _number(value: float) -> str:
    """A value as prometheus_client writes it (`floatToGoString`), without its call for the common small int."""
    if type(value) is int and 0 <= value < 1_000_000:  # repr(float(n)) is str(n) + ".0" below Go's exponent switch
        return f"{value}.0"
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]
