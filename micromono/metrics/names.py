"""The catalogue of micromono's metric families: help texts and histogram bucket bounds, by family name.

Shared by the two writers of the same samples (`exposition.py`, which writes the text itself, and `reference.py`,
which builds prometheus_client families), so that their output cannot drift apart. Names are without the
`micromono_` prefix and the `_total` counters get. This module must not read counters or format samples.
"""

from __future__ import annotations

from typing import Final

from micromono.service import LATENCY_BUCKETS

__all__ = ["BOUNDS", "CONTENT_TYPE", "HELP"]

#: The Content-Type of the Prometheus text format this package writes.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


#: The `le` label of each latency bucket, as prometheus_client writes it.
BOUNDS: Final = tuple(_bound(b) for b in (*LATENCY_BUCKETS, float("inf")))

#: Help text by family name (without `micromono_` and `_total`), shared by `families` and `exposition`.
HELP: Final = {
    "calls": "Calls by caller, callee and outcome.",
    "messages": "Messages sent by sender, receiver and outcome.",
    "calls_refused": "Calls to unknown services or outside the allowlist.",
    "call_duration_seconds": "Call latency (a 1-in-16 sample of calls).",
    "mailbox_depth": "Queued work items.",
    "mailbox_capacity": "Mailbox bound.",
    "mailbox_rejected": "Items refused because the mailbox was full.",
    "mailbox_shed": "Queued items dropped for newer ones (on_full = shed_oldest).",
    "instances": "Live instances in the pool.",
    "instance_failures": "Instances discarded after a trap, timeout or ABI violation.",
    "guest_memory_bytes": "Linear memory of the instances.",
    "guest_memory_limit_bytes": "memory_limit: the most one instance may grow to.",
    "instances_at_memory_limit": "Idle instances that cannot grow by another page (memory.grow returns -1 to them).",
    "quarantines": "Times the supervisor quarantined a service version.",
    "preempted_runs": "Requests and messages that outlasted their first slice and were resumed between other work.",
    "guest_log_dropped": "Guest log lines dropped over the service's log_rate.",
    "guest_log_dropped_bytes": "Bytes of the guest log lines dropped over the service's log_rate.",
    "service_info": "Loaded service versions.",
    "http_responses": "Ingress responses by status.",
    "http_connections": "Open ingress connections.",
    "reloads": "Reloads by service and outcome.",
    "version_calls": "Calls served, by service version (failed: trap, timeout or ABI violation).",
    "compile_cache_bytes": "Bytes of compiled modules in the compile cache.",
    "compile_cache_evictions": "Compile cache entries removed to stay under cache_max_bytes.",
}
