"""Every Prometheus metric micromono exports, on a per-daemon registry. The only package that imports
prometheus_client.

A scrape has two parts, split by what they may touch, and a reference:

* `snapshot.py`, on the event loop: `SnapshotReader` copies the live counters into a `Snapshot` of plain data, a
  step at a time, so the loop serves between steps. The only part that reads live objects.
* `exposition.py`, in a worker thread (admin.py): the Prometheus text of a `Snapshot`, written directly and paced
  so the loop never waits long for the GIL.
* `reference.py`: the same samples through prometheus_client's metric families (what `exposition` is tested
  against), and the per-daemon `DaemonRegistry`. `names.py` holds the help texts and bucket bounds both writers use.

Metric names (all prefixed `micromono_`):

| name | type | labels | meaning |
|---|---|---|---|
| `calls_total` | counter | caller, callee, outcome | calls by edge (caller `ingress`: HTTP); outcome `ok` or an error |
| `calls_refused_total` | counter | caller, reason | calls to an unknown service or outside the allowlist |
| `messages_total` | counter | sender, receiver, outcome | `micromono.send` messages |
| `call_duration_seconds` | histogram | service | call latency, 1 call in 16 timed (absent until one is) |
| `mailbox_depth` / `mailbox_capacity` | gauge | service | queued work items / the bound |
| `mailbox_rejected_total` | counter | service | items refused because the mailbox was full |
| `instances` | gauge | service | live instances in the pool |
| `instance_failures_total` | counter | service | instances discarded after a trap, timeout or ABI violation |
| `guest_memory_bytes` | gauge | service | linear memory of the service's instances |
| `guest_memory_limit_bytes` | gauge | service | `memory_limit`: the most one instance may grow to |
| `instances_at_memory_limit` | gauge | service | idle instances whose next `memory.grow` returns -1 |
| `service_info` | gauge | service, version, sha256 | 1 per loaded version |
| `http_responses_total` | counter | code | ingress responses by status |
| `http_connections` | gauge | | open ingress connections |
| `mailbox_shed_total` | counter | service | queued items dropped for newer ones (`on_full = "shed_oldest"`) |
| `quarantines_total` | counter | service | times the supervisor quarantined the service |
| `preempted_runs_total` | counter | service | requests and messages that outlasted their first slice |
| `guest_log_dropped_total` | counter | service | guest log lines dropped over `log_rate` (guestlog.py) |
| `guest_log_dropped_bytes_total` | counter | service | the bytes of those lines |
| `reloads_total` | counter | service, outcome | hot reloads (`service="services.toml"` for the manifest) |
| `version_calls_total` | counter | service, version, outcome | calls served by each loaded version (`ok`/`failed`) |
| `compile_cache_bytes` | gauge | | bytes of compiled modules in `cache_dir` (absent without a cache) |
| `compile_cache_evictions_total` | counter | | cache entries removed to stay under `cache_max_bytes` |

Actor services (`kind = "actor"`; these families appear only when there is one; never a per-key label):

| name | type | labels | meaning |
|---|---|---|---|
| `actors_live` | gauge | service | actors with a live instance |
| `actors_in_memory` | gauge | service | actors held in memory (live, loading, between instances; `max_live`) |
| `actors_hibernated` | gauge | service | actors with storage and no live instance |
| `actor_activations_total` / `actor_revivals_total` | counter | service | activations / those that loaded storage |
| `actor_activation_seconds` | histogram | service | from an activation to its instance being ready |
| `actor_hibernations_total` | counter | service, reason | `idle` (idle_timeout) or `evicted` (over max_live) |
| `actor_queue_depth_max` / `actor_queued` | gauge | service | the longest per-actor queue / all queued messages |
| `actor_commits_total` / `actor_commit_batches_total` | counter | service | actor commits / group commits written |
| `actor_commit_failures_total` | counter | service | actor commits that failed |
| `actor_commit_seconds` / `actor_commit_batch_size` | histogram | service | one group commit's time / actor commits |
| `actor_storage_bytes` / `actor_storage_disk_bytes` | gauge | service | what the actors store / the database's files |
| `actor_alarms_pending` | gauge | service | alarms set and not yet fired |
| `actor_alarms_fired_total` / `_retried_total` / `_dropped_total` | counter | service | alarm outcomes |
| `actor_resets_total` | counter | service | actors reset after a failed commit |
| `actor_rejected_total` | counter | service | messages refused by a full per-actor queue |

Their WebSocket connections and streams (docs/stream.md; with the actor families, for every actor service):

| name | type | labels | meaning |
|---|---|---|---|
| `ws_connections` | gauge | service | open connections |
| `ws_connections_opened_total` | counter | service | handshakes completed |
| `ws_connections_refused_total` | counter | service, reason | upgrades refused, by reason (`stream.REFUSALS`) |
| `ws_messages_total` / `ws_bytes_total` | counter | service, direction | messages / bytes, `in` or `out` |
| `ws_published_total` | counter | service | messages the actors published, before they fan out |
| `ws_resumes_total` / `ws_resets_total` | counter | service | connections that resumed from the ring / got a reset |
| `ws_closes_total` | counter | service, code | connections ended, by close code (`4008`: slow clients) |
"""

from __future__ import annotations

from .exposition import exposition
from .names import CONTENT_TYPE
from .reference import (
    DaemonCollector,
    DaemonRegistry,
    SnapshotCollector,
    families,
    new_registry,
    reference_text,
    render,
)
from .snapshot import (
    ActorCounters,
    ActorScan,
    EdgeCounters,
    ServiceCounters,
    Snapshot,
    SnapshotReader,
    Step,
    StorageCounters,
    StorageStats,
    WebSocketCounters,
    scan_actors,
)

__all__ = [
    "CONTENT_TYPE",
    "ActorCounters",
    "ActorScan",
    "DaemonCollector",
    "DaemonRegistry",
    "EdgeCounters",
    "ServiceCounters",
    "Snapshot",
    "SnapshotCollector",
    "SnapshotReader",
    "Step",
    "StorageCounters",
    "StorageStats",
    "WebSocketCounters",
    "exposition",
    "families",
    "new_registry",
    "reference_text",
    "render",
    "scan_actors",
]
