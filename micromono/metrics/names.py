"""The catalogue of micromono's metric families: help texts and histogram bucket bounds, by family name.

Shared by the two writers of the same samples (`exposition.py`, which writes the text itself, and `reference.py`,
which builds prometheus_client families), so that their output cannot drift apart. Names are without the
`micromono_` prefix and the `_total` counters get. This module must not read counters or format samples.

The actor storage's histogram bounds (`COMMIT_BUCKETS`, `BATCH_BUCKETS`) are the storage's own (actors/storage.py
counts into them), as the call latency's are `service.LATENCY_BUCKETS`.
"""

from __future__ import annotations

from typing import Final

from micromono.actors.storage import BATCH_SIZE_BUCKETS, COMMIT_SECONDS_BUCKETS
from micromono.service import LATENCY_BUCKETS

__all__ = ["BATCH_BOUNDS", "BATCH_BUCKETS", "BOUNDS", "COMMIT_BOUNDS", "COMMIT_BUCKETS", "CONTENT_TYPE", "HELP"]

#: The Content-Type of the Prometheus text format this package writes.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


#: The `le` label of each latency bucket, as prometheus_client writes it.
BOUNDS: Final = tuple(_bound(b) for b in (*LATENCY_BUCKETS, float("inf")))

#: The bounds of an actor service's group-commit histograms, from the storage that counts them (actors/storage.py):
#: seconds from a commit's submit to the end of its transaction, and actor commits per transaction.
COMMIT_BUCKETS: Final[tuple[float, ...]] = tuple(float(b) for b in COMMIT_SECONDS_BUCKETS)
BATCH_BUCKETS: Final[tuple[float, ...]] = tuple(float(b) for b in BATCH_SIZE_BUCKETS)
#: The `le` labels of those buckets.
COMMIT_BOUNDS: Final = tuple(_bound(b) for b in (*COMMIT_BUCKETS, float("inf")))
BATCH_BOUNDS: Final = tuple(_bound(b) for b in (*BATCH_BUCKETS, float("inf")))

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
    "trace_spans": "Ended spans (daemon.tracing on) by outcome: unsampled, logged, exported, dropped, failed.",
    # Actor services (kind = "actor"), by service.
    "actors_live": "Actors with a live instance.",
    "actors_in_memory": "Actors held in memory (live, loading, or between instances); max_live bounds them.",
    "actors_hibernated": "Actors with storage and no live instance.",
    "actor_activations": "Actors brought into memory, new or revived.",
    "actor_revivals": "Activations that loaded the actor's storage first.",
    "actor_activation_seconds": "From an actor's activation to its instance being ready.",
    "actor_hibernations": "Actors hibernated, by reason (idle: idle_timeout passed; evicted: over max_live).",
    "actor_queue_depth_max": "Messages waiting for the actor with the longest queue.",
    "actor_queued": "Messages waiting in the actors' queues.",
    "actor_commits": "Actor commits (one message's writes) written to the database.",
    "actor_commit_batches": "Group commits: database transactions, each holding one or more actor commits.",
    "actor_commit_failures": "Actor commits that failed (each resets its actor).",
    "actor_commit_seconds": "Time to write and sync one group commit.",
    "actor_commit_batch_size": "Actor commits per group commit.",
    "actor_storage_bytes": "Bytes the actors store (the sum of their sizes).",
    "actor_storage_disk_bytes": "Bytes of the service's database files on disk.",
    "actor_alarms_pending": "Alarms set and not yet fired, retries included.",
    "actor_alarms_fired": "Alarms whose message succeeded.",
    "actor_alarms_retried": "Alarm runs that failed and were set again with backoff.",
    "actor_alarms_dropped": "Alarms given up after their last attempt failed.",
    "actor_resets": "Actors whose memory was discarded after a failed commit.",
    "actor_rejected": "Messages refused because the actor's queue was full (mailbox).",
    # Their WebSocket connections and streams (docs/stream.md), by service.
    "ws_connections": "Open WebSocket connections to the service's actors.",
    "ws_connections_opened": "WebSocket handshakes completed.",
    "ws_connections_refused": (
        "WebSocket upgrades refused, by reason (daemon_limit, actor_limit: 503 at ws_max_connections; "
        "disabled: 403, websocket = false; bad_request: 400)."
    ),
    "ws_messages": (
        "WebSocket messages: in, from clients to the actors; out, frames sent to clients "
        "(published, ws_send, resumed and reset frames)."
    ),
    "ws_bytes": "Bytes read from (in) and written to (out) WebSocket connections, handshakes included.",
    "ws_published": "Messages the actors published to their streams (numbered), before they fan out.",
    "ws_resumes": "Connections that resumed with since and were sent what they missed from the ring.",
    "ws_resets": "Connections whose since was no longer kept (or never was): sent a reset frame instead.",
    "ws_closes": (
        "WebSocket connections ended, by close code (4008: slow clients past ws_max_buffered; 4000: idle; "
        "1006: lost without a close)."
    ),
}
