"""The `/status` document: every service's version, instances, mailbox, calls and last reload, as JSON-ready data.

Owns the shape of the document that `micromono status` prints and the admin listener serves (docs/operations.md).
It reads live objects (the router's services and edges), so it runs on the event loop only, and it builds a fresh
dict each time, which the admin listener serializes in a worker thread. It must not serialize, serve HTTP, or
change anything it reads.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .reload import MANIFEST, ReloadResult

if TYPE_CHECKING:
    from .router import Router

__all__ = ["format_address", "status_document"]


def status_document(
    router: Router,
    *,
    stopping: bool,
    addresses: Sequence[tuple[str, int]],
    cpu: int | None,
    watching: bool,
    reloads: Mapping[str, ReloadResult],
) -> dict[str, Any]:
    """The `/status` document, read now.

    Args:
        router: the daemon's router: its current services, their ingress edges and the retired versions.
        stopping: whether the daemon is shutting down.
        addresses: the bound ingress addresses.
        cpu: the CPU the event loop is pinned to, or None.
        watching: whether the reloader watches files.
        reloads: the last reload of each service (and of `services.toml`, under `reload.MANIFEST`).
    """
    services = []
    for s in router.services():
        edge = router.ingress_edges[s.name]
        result = reloads.get(s.name)
        left = s.quarantined_until - time.monotonic()
        services.append(
            {
                "name": s.name,
                "version": s.version,
                "sha256": s.sha256,
                "wasm": str(s.spec.wasm),
                "loaded_at": s.loaded_at,
                "instances": {"live": s.live, "idle": len(s.idle), "max": s.max_instances},
                "in_flight": s.in_flight,
                "suspended": s.running is not None,
                "preempted": s.preempted,
                "mailbox": {"queued": len(s.mailbox), "capacity": s.mailbox.capacity},
                "calls": {"ok": s.ok, "failed": s.failed},
                "ingress_requests": {"ok": edge.ok, **edge.errors},
                "instance_failures": s.traps,
                "quarantine": (
                    {"seconds_left": round(left, 3), "reason": s.quarantine_reason, "count": s.quarantines}
                    if left > 0
                    else None
                ),
                "last_reload": result.as_dict() if result is not None else None,
            }
        )
    retired = [{"name": s.name, "version": s.version, "in_flight": s.in_flight, "live": s.live} for s in router.retired]
    manifest = reloads.get(MANIFEST)
    return {
        "state": "stopping" if stopping else "serving",
        "ingress": [format_address(a) for a in addresses],
        "cpu": cpu,
        "services": services,
        "draining": retired,
        "reload": {"watching": watching, "manifest": manifest.as_dict() if manifest is not None else None},
    }


def format_address(address: tuple[str, int]) -> str:
    """`host:port`, with an IPv6 host in brackets."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
