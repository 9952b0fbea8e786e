"""A guest's `call` to an actor (`ActorCall`): what the caller's fiber waits on until the actor has had its turn,
run the message and made its writes durable (engine.Waiting).

A call to `"<service>/<key>"` is a message in the actor's queue like any other (one at a time per key), so it
cannot run inside the caller's slice the way a call to a plain service does: the router returns an `ActorCall`,
the caller's fiber is suspended, and each time the caller's run is resumed `step()` looks whether the outcome has
come back through the actor's output gate. Its bound is wall-clock (`WAIT_FACTOR` times the actor service's
`call_timeout`): the caller's own deadline is running time and does not move while it waits. It must not run the
actor (keyed.py and actor.py do).
"""

from __future__ import annotations

import time
from typing import Final

from micromono.engine import Instance
from micromono.errors import CallTimeout, ServiceCallError
from micromono.service import Edge

__all__ = ["ActorCall", "WAIT_FACTOR"]

#: A call to an actor waits at most this many times the actor service's `call_timeout`: its turn in the actor's
#: queue, its run and its commit.
WAIT_FACTOR: Final = 4.0


class ActorCall:
    """The outcome of one call to an actor, delivered by the actor's gate (`__call__`) and read by the waiting
    caller (`step`)."""

    __slots__ = ("caller", "edge", "target", "reply_ptr", "reply_cap", "reply", "error", "over", "cancelled", "expires")

    def __init__(self, caller: Instance, edge: Edge, target: str, reply_ptr: int, reply_cap: int, timeout: float):
        self.caller = caller
        self.edge = edge
        self.target = target
        self.reply_ptr = reply_ptr
        self.reply_cap = reply_cap
        self.reply: bytes | None = None
        self.error: BaseException | None = None
        self.over = False
        self.cancelled = False
        self.expires = time.monotonic() + timeout * WAIT_FACTOR

    def __repr__(self) -> str:
        return f"<ActorCall {self.edge.caller} -> {self.target} over={self.over}>"

    def __call__(self, reply: bytes | None, error: BaseException | None) -> None:
        """The actor's outcome (through its output gate)."""
        self.reply = reply
        self.error = error
        self.over = True

    def result(self) -> int | None:
        """The call's ABI result once the outcome is in (copied to the caller), None before."""
        if self.cancelled:
            return None
        caller = self.caller
        if not self.over:
            if time.monotonic() < self.expires:
                return None
            self.cancelled = True
            return self.edge.fail(
                caller,
                CallTimeout(self.edge.callee, f"call to actor {self.target!r} got no reply within its wait limit"),
            )
        error = self.error
        if error is not None:
            if not isinstance(error, ServiceCallError):
                raise error  # a bug of ours: the host import turns it into a trap and keeps it
            return self.edge.fail(caller, error)
        reply = self.reply
        assert reply is not None
        n = len(reply)
        if n <= self.reply_cap:
            caller.view[self.reply_ptr : self.reply_ptr + n] = reply
        else:
            caller.held_reply = reply
        self.edge.ok += 1
        return n

    # --- engine.Waiting -----------------------------------------------------------------------------------------

    def step(self) -> int | None:
        return self.result()

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def callee_instance(self) -> Instance | None:
        return None
