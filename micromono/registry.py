"""The registry of current versions: service name -> `Slot` (the version new work goes to), and the edges.

Owns the name -> slot table (`slots`, in manifest order), the ingress edge of each name (its HTTP counters) and the
versions replaced but still finishing work (`retired`). Wiring a version (`prepare`) turns its allowlist
(`spec.calls`) into `Edge`s, so that the router's allowlist check on every call is one dict lookup on the caller's
own version.

It must not run guests, touch mailboxes or decide what happens to work a replaced version still had queued: it only
says which version is current. `router.Router.swap` and `remove` use it and hand the queued work over (runs.py).

Compiled by mypyc on the compiled path (scripts/build_compiled.py), from this same source.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from .engine import Instance
from .service import INGRESS, Edge, Service, Slot

__all__ = ["Registry"]


class Registry:
    """Service names and their current versions.

    Args:
        on_output: receives every version's guest stdout/stderr writes (level -1/-2) with the instance that wrote
            them.
    """

    __slots__ = ("slots", "ingress_edges", "retired", "on_output")

    def __init__(self, on_output: Callable[[Instance, int, bytes], None]) -> None:
        self.slots: dict[str, Slot] = {}
        self.ingress_edges: dict[str, Edge] = {}
        self.retired: list[Service] = []  # replaced versions whose instances are still finishing calls
        self.on_output = on_output

    def __repr__(self) -> str:
        return f"<Registry [services: {len(self.slots)} | retired: {len(self.retired)}]>"

    def slot(self, name: str) -> Slot:
        """The slot of `name`, made (empty, with its ingress edge) the first time a name is asked for."""
        slot = self.slots.get(name)
        if slot is None:
            slot = self.slots[name] = Slot(name)
            self.ingress_edges[name] = Edge(INGRESS, slot)
        return slot

    def prepare(self, service: Service) -> None:
        """Wire a version before it starts: its allowlist (`spec.calls`) into edges, its guest output into the log."""
        service.edges = {target.encode(): Edge(service.name, self.slot(target)) for target in service.spec.calls}
        service.on_output = self.on_output
        self.slot(service.name)
        service.ingress_edge = self.ingress_edges[service.name]

    def install(self, service: Service) -> Service | None:
        """Prepare `service` and make it the current version of its name; return the version it replaced."""
        self.prepare(service)
        slot = self.slots[service.name]
        previous, slot.current = slot.current, service
        return previous

    def make_current(self, service: Service) -> Service | None:
        """Make `service` (prepared) current; return the version it replaced, which the caller retires."""
        slot = self.slot(service.name)
        previous, slot.current = slot.current, service
        return previous

    def unset(self, name: str) -> Service | None:
        """Stop routing to `name`; return the version that was current, which the caller retires."""
        slot = self.slots.get(name)
        if slot is None or slot.current is None:
            return None
        previous, slot.current = slot.current, None
        return previous

    def is_running(self, name: str) -> bool:
        """Whether a version of `name` is current."""
        slot = self.slots.get(name)
        return slot is not None and slot.current is not None

    def services(self) -> Iterator[Service]:
        """The current versions, in slot order."""
        for slot in self.slots.values():
            if slot.current is not None:
                yield slot.current
