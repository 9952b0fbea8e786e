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
from .snapshot import EdgeCounters, ServiceCounters, Snapshot, SnapshotReader

__all__ = [
    "CONTENT_TYPE",
    "DaemonCollector",
    "DaemonRegistry",
    "EdgeCounters",
    "ServiceCounters",
    "Snapshot",
    "SnapshotCollector",
    "SnapshotReader",
    "exposition",
    "families",
    "new_registry",
    "reference_text",
    "render",
]
