"""Calls between services, in memory: the engine's `Host` (`micromono.call`, `send`, `log`).

A call from A to B (`micromono.call`) arrives here from A's host import. The router checks A's allowlist (one dict
lookup on A's `edges`, which also holds the counters), takes an instance of B's *current* version from its pool,
gives it the smaller of B's timeout and what is left of A's deadline, copies A's request bytes
straight into B's inbox, starts B, and copies the reply straight into the buffer A lent. No socket, no
serialisation, no task switch: B runs at once, inside A's slice (`benches/bench_call.py`). When B gives up its
slice before it finishes, `call` returns a `suspended.WaitingCall` and A's fiber waits on it. The call depth and
the send cap go down the chain with each entry (`Instance.depth`, `Instance.sends`).

`Router` is also the daemon's one handle on the parts it is built from, so callers keep one object: the registry
of current versions (registry.py: `slot`, `prepare`, `install`, `services`, and `swap`/`remove`, which hand queued
work over) and the top-level runs with their mailbox workers (runs.py: `top_level`, `run_over`, `stop_workers`).
It must not parse HTTP or start top-level runs itself.

Compiled by mypyc on the compiled path (scripts/build_compiled.py), from this same source.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Final

import structlog

from .abi import KIND_CALL, KIND_MESSAGE, MM_ERR_INVALID, MM_ERR_NOT_ACTOR, MM_ERR_NOT_FOUND
from .actors.calls import ActorCall
from .actors.keyed import KeyedService, decode_key
from .actors.state import ActorState, StorageCallError
from .actors.stream import direct_frame
from .config import DEFAULT_MAX_CALL_DEPTH, DEFAULT_MAX_REQUEST_BYTES
from .engine import ALARM_GET, ALARM_SET, CLOCK, WS_CLOSE, WS_PUBLISH, WS_SEND, DeadlineClock, Instance
from .errors import (
    BadActorKey,
    CallDepthExceeded,
    CallForbidden,
    Overloaded,
    RequestTooLarge,
    ServiceCallError,
    UnknownService,
)
from .registry import Registry
from .runs import TopLevel
from .scheduler import Scheduler
from .service import INGRESS, LATENCY_SAMPLE, Edge, Service, Slot
from .suspended import WaitingCall

__all__ = ["Router", "Slot", "Edge", "INGRESS"]

log = structlog.get_logger(__name__)

_OVERLOADED: Final = Overloaded.abi_code
_WS_NAMES: Final = {1: "ws_send", 2: "ws_publish", 3: "ws_close", 4: "ws_tag"}
#: One call in LATENCY_SAMPLE is timed for the latency histogram: the ones whose success count has these bits clear.
_SAMPLE_MASK: Final = LATENCY_SAMPLE - 1


class Router:
    """The engine's `Host`: serves `micromono.call`, `send` and `log`; and the daemon's handle on the registry
    (`registry`) and the top-level runs (`top_level`).

    Args:
        max_call_depth: the longest call chain allowed (ingress -> A -> B counts 2).
        max_request_bytes: the largest request or message one service may pass another.
    """

    def __init__(
        self,
        *,
        max_call_depth: int = DEFAULT_MAX_CALL_DEPTH,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        self.max_call_depth = max_call_depth
        self.max_request_bytes = max_request_bytes
        self.registry = Registry(on_output=self._guest_output)
        # The registry's tables, for the readers of the daemon's state (status, metrics, reload).
        self.slots: dict[str, Slot] = self.registry.slots
        self.ingress_edges: dict[str, Edge] = self.registry.ingress_edges
        self.retired: list[Service] = self.registry.retired
        # errors on edges that do not exist (unknown or forbidden targets), by (caller, kind)
        self.refused: dict[tuple[str, str], int] = {}
        self.scheduler = Scheduler()
        self.top_level = TopLevel(self.scheduler)
        # The actor services by name (actors/keyed.py): their calls and sends name a key, "<service>/<key>".
        self.keyed: dict[str, KeyedService] = {}
        self._clock: DeadlineClock = CLOCK  # call deadlines (engine.DeadlineClock)

    def __repr__(self) -> str:
        return f"<Router [services: {len(self.slots)} | max depth: {self.max_call_depth}]>"

    def set_limits(self, *, max_call_depth: int, max_request_bytes: int) -> None:
        """Apply a reloaded manifest's limits to the calls that start from now on."""
        self.max_call_depth = max_call_depth
        self.max_request_bytes = max_request_bytes

    @property
    def busy(self) -> bool:
        """Whether any mailbox worker, suspended run, or actor's work (queued, or waiting for its commit) is still
        going."""
        return self.top_level.busy or any(keyed.busy for keyed in self.keyed.values())

    # --- versions (registry.py, runs.py) ------------------------------------------------------------------------

    def slot(self, name: str) -> Slot:
        """The slot of `name` (made empty the first time a name is asked for)."""
        return self.registry.slot(name)

    def prepare(self, service: Service) -> None:
        """Wire a version before it starts (registry.Registry.prepare)."""
        self.registry.prepare(service)

    def install(self, service: Service) -> Service | None:
        """Prepare `service` and make it the current version of its name; return the version it replaced."""
        return self.registry.install(service)

    def swap(self, service: Service) -> Service | None:
        """Make `service` (prepared and started) current and retire the version it replaces; return that version.

        New calls go to `service` from now on. Work queued in the old version's mailbox and not yet started moves
        to the new one (what does not fit is refused like any overflow). The old version closes its idle
        instances now and busy ones as they finish.
        """
        previous = self.registry.make_current(service)
        if previous is not None:
            service.guest_log.inherit(previous.guest_log)  # the budget and the drop counts go on across versions
            self.top_level.retire(previous, successor=service)
            self.retired.append(previous)
        return previous

    def remove(self, name: str) -> Service | None:
        """Stop routing to `name`; its current version is retired and its queued work refused."""
        previous = self.registry.unset(name)
        if previous is not None:
            self.top_level.retire(previous, successor=None)
            self.retired.append(previous)
        return previous

    def services(self) -> Iterator[Service]:
        """The current versions, in slot order."""
        return self.registry.services()

    def run_over(self, service: Service) -> None:
        """A suspended top-level run of `service` is over: its queued work may go on (runs.TopLevel.run_over)."""
        self.top_level.run_over(service)

    async def stop_workers(self) -> None:
        """Cancel the mailbox workers and the suspended runs (runs.TopLevel.stop)."""
        await self.top_level.stop()

    # --- engine.Host ------------------------------------------------------------------------------------------

    def call(
        self, caller: Instance, target: bytes, request: bytes, reply_ptr: int, reply_cap: int
    ) -> int | WaitingCall | ActorCall:
        """Serve `micromono.call` (docs/abi.md): the ABI result, or a `WaitingCall` when the callee gave up its slice
        before it finished (the caller then waits for it). Never raises: failures become negative codes +
        `last_error`."""
        source: Service = caller.owner
        if caller.held_reply is not None:
            caller.held_reply = None  # a held reply lives until the caller's next call (docs/abi.md)
        edge: Edge | None = source.edges.get(target)
        if edge is None:
            return self._call_actor(caller, source, target, request, reply_ptr, reply_cap)
        callee = edge.slot.current
        if callee is None:
            return edge.fail(caller, edge.slot.not_running())
        depth = caller.depth + 1
        if depth > self.max_call_depth:
            return edge.fail(caller, self._too_deep(source.name, edge.callee))
        if len(request) > self.max_request_bytes:
            return edge.fail(caller, self._too_large(edge.callee, len(request)))
        if callee.quarantined_until:
            quarantined = callee.quarantine_error_now()
            if quarantined is not None:
                return edge.fail(caller, quarantined)
        try:
            instance = callee.idle.pop()
        except IndexError:
            try:
                instance = callee.grow()
            except ServiceCallError as exc:
                return edge.fail(caller, exc)
            if instance.booting:  # a new instance whose start outlasted the slice: the caller waits for both
                return WaitingCall(caller, edge, callee, instance, request, reply_ptr, reply_cap, depth)
        # `Service.arm` for a call, inlined (a Python call would be a visible share of a call): the callee's
        # timeout from the deadline clock, at most what is left of the caller's.
        instance.depth = depth
        instance.sends = 0
        instance.trace = caller.trace  # the trace context (docs/tracing.md): None to None when tracing is off
        deadline = self._clock.now + callee.deadline_after
        instance.deadline = deadline if deadline < caller.deadline else caller.deadline
        sample = (edge.ok & _SAMPLE_MASK) == 0
        if sample:
            started = time.perf_counter()
        try:
            reply = instance.begin(KIND_CALL, request)
            if reply is None:
                return WaitingCall(caller, edge, callee, instance, None, reply_ptr, reply_cap, depth)
            n = len(reply)
            if n <= reply_cap:
                caller.view[reply_ptr : reply_ptr + n] = reply
            else:
                caller.held_reply = reply
        except ServiceCallError as exc:
            callee.release(instance)
            callee.count_failure(exc.kind)
            return edge.fail(caller, exc)
        # `release` inlined for a call that succeeded (so the instance is not poisoned).
        if instance.held_reply is None and not callee.closed:
            callee.idle.append(instance)
        else:
            callee.release(instance)
        if sample:
            callee.latency.observe(time.perf_counter() - started)
        edge.ok += 1
        callee.ok += 1
        return n

    def send(self, caller: Instance, target: bytes, message: bytes) -> int:
        """Serve `micromono.send`: queue the message in the target's mailbox and return at once."""
        source: Service = caller.owner
        edge: Edge | None = source.edges.get(target)
        if edge is None:
            return self._send_actor(caller, source, target, message)
        sends = caller.sends = caller.sends + 1
        if sends > source.max_sends:
            errors = edge.message_errors
            errors["overloaded"] = errors.get("overloaded", 0) + 1
            caller.last_error = source.too_many_sends
            return _OVERLOADED
        callee = edge.slot.current
        if callee is not None:
            mailbox = callee.mailbox
            if len(mailbox.items) >= mailbox.capacity and mailbox.on_full != "shed_oldest" and not mailbox.closed:
                # A flood's common case, refused without building an exception: a sender that loops on a full
                # mailbox must not cost the loop more than the refusal itself.
                mailbox.rejected += 1
                errors = edge.message_errors
                errors["overloaded"] = errors.get("overloaded", 0) + 1
                caller.last_error = mailbox.full_message
                return _OVERLOADED
        try:
            if callee is None:
                raise edge.slot.not_running()
            if len(message) > self.max_request_bytes:
                raise self._too_large(edge.callee, len(message))
            if callee.quarantined_until:
                quarantined = callee.quarantine_error_now()
                if quarantined is not None:
                    raise quarantined
            if caller.actor is not None:  # an actor's sends leave once its writes are durable (the output gate)
                trace = caller.trace
                caller.actor.outbox.append(lambda: self._deliver_held(edge, message, trace))
                edge.messages += 1
                return 0
            # The sender's context goes with the message (docs/tracing.md): None when tracing is off.
            self.top_level.shed(callee, callee.mailbox.put_nowait((KIND_MESSAGE, message, None, caller.trace)))
        except ServiceCallError as exc:
            kind = exc.kind
            edge.message_errors[kind] = edge.message_errors.get(kind, 0) + 1
            caller.last_error = str(exc).encode()
            return exc.abi_code
        edge.messages += 1
        self.top_level.wake(callee)
        return 0

    # --- actors -------------------------------------------------------------------------------------------------

    def _actor_target(self, caller: Instance, source: Service, target: bytes) -> tuple[Edge, KeyedService, str] | int:
        """The edge, actor service and key a `"<service>/<key>"` target names, or the ABI error code (with
        `last_error` set) when it names none the caller may reach."""
        name, slash, raw_key = target.partition(b"/")
        edge: Edge | None = source.edges.get(name) if slash else None
        keyed = self.keyed.get(edge.callee) if edge is not None else None
        if edge is None or keyed is None:
            return self._refuse(caller, source.name, target)
        try:
            key = decode_key(raw_key, edge.callee, percent=False)
        except BadActorKey as exc:
            return edge.fail(caller, exc)
        return edge, keyed, key

    def _call_actor(
        self, caller: Instance, source: Service, target: bytes, request: bytes, reply_ptr: int, reply_cap: int
    ) -> int | ActorCall:
        """`micromono.call` to an actor: a message in its queue, waited for (actors/calls.py)."""
        found = self._actor_target(caller, source, target)
        if isinstance(found, int):
            return found
        edge, keyed, key = found
        me = caller.actor
        if me is not None and source.name == keyed.name and me.key == key:
            return edge.fail(
                caller,
                BadActorKey(keyed.name, f"actor {keyed.name}/{key} called itself: it would wait for its own turn"),
            )
        if caller.depth + 1 > self.max_call_depth:
            return edge.fail(caller, self._too_deep(source.name, edge.callee))
        if len(request) > self.max_request_bytes:
            return edge.fail(caller, self._too_large(edge.callee, len(request)))
        waiting = ActorCall(caller, edge, f"{keyed.name}/{key}", reply_ptr, reply_cap, keyed.spec.call_timeout)
        keyed.deliver(key, KIND_CALL, request, waiting, caller.trace)
        result = waiting.result()
        return waiting if result is None else result

    def _send_actor(self, caller: Instance, source: Service, target: bytes, message: bytes) -> int:
        """`micromono.send` to an actor: queued for its key (after the sender's commit, when the sender is an
        actor)."""
        found = self._actor_target(caller, source, target)
        if isinstance(found, int):
            return found
        edge, keyed, key = found
        sends = caller.sends = caller.sends + 1
        if sends > source.max_sends:
            errors = edge.message_errors
            errors["overloaded"] = errors.get("overloaded", 0) + 1
            caller.last_error = source.too_many_sends
            return _OVERLOADED
        if len(message) > self.max_request_bytes:
            return edge.fail(caller, self._too_large(edge.callee, len(message)))
        edge.messages += 1
        trace = caller.trace
        if caller.actor is not None:
            caller.actor.outbox.append(lambda: keyed.deliver(key, KIND_MESSAGE, message, None, trace))
        else:
            keyed.deliver(key, KIND_MESSAGE, message, None, trace)
        return 0

    def _deliver_held(self, edge: Edge, message: bytes, trace: object) -> None:
        """Deliver a send an actor made, now that its writes are durable; a full or missing mailbox drops it (the
        sender had its 0 already), counted and logged."""
        callee = edge.slot.current
        try:
            if callee is None:
                raise edge.slot.not_running()
            self.top_level.shed(callee, callee.mailbox.put_nowait((KIND_MESSAGE, message, None, trace)))
        except ServiceCallError as exc:
            edge.message_errors[exc.kind] = edge.message_errors.get(exc.kind, 0) + 1
            log.warning("actor.send.dropped", caller=edge.caller, target=edge.callee, error=str(exc))
            return
        self.top_level.wake(callee)

    def trace_context(self, caller: Instance) -> bytes:
        """Serve `micromono.trace_context` with tracing off: no context, b"" (tracing.TracingHost answers when it
        is on; docs/tracing.md)."""
        return b""

    def actor_key(self, caller: Instance) -> bytes | int:
        actor = caller.actor
        if actor is None:
            return self._not_actor(caller, "actor_key")
        key: bytes = actor.key_bytes
        return key

    def _state(self, caller: Instance, call: str) -> ActorState | int:
        """The data of the actor whose message `caller` runs, or MM_ERR_NOT_ACTOR (outside a message)."""
        actor = caller.actor
        if actor is None or actor.run is None or not actor.run.in_txn:
            return self._not_actor(caller, call)
        state: ActorState = actor.state
        return state

    def _not_actor(self, caller: Instance, call: str) -> int:
        service: Service = caller.owner
        if caller.actor is None:
            caller.last_error = (
                f"micromono.{call}: service {service.name!r} is not an actor; storage and alarms are for services "
                'with kind = "actor" in services.toml'
            ).encode()
        else:
            caller.last_error = (
                f"micromono.{call}: storage and alarms can be used only while the actor handles a message "
                "(mm_handle or mm_migrate), not in _initialize or a start function"
            ).encode()
        return MM_ERR_NOT_ACTOR

    def kv_get(self, caller: Instance, key: bytes) -> bytes | int:
        state = self._state(caller, "kv_get")
        if isinstance(state, int):
            return state
        try:
            value = state.get(key)
        except StorageCallError as exc:
            caller.last_error = str(exc).encode()
            return exc.abi_code
        if value is None:
            caller.last_error = b"kv_get: no value under this key"
            return MM_ERR_NOT_FOUND
        return value

    def kv_put(self, caller: Instance, key: bytes, value: bytes) -> int:
        state = self._state(caller, "kv_put")
        if isinstance(state, int):
            return state
        try:
            state.put(key, value)
        except StorageCallError as exc:
            caller.last_error = str(exc).encode()
            return exc.abi_code
        return 0

    def kv_delete(self, caller: Instance, key: bytes) -> int:
        state = self._state(caller, "kv_delete")
        if isinstance(state, int):
            return state
        try:
            return 1 if state.delete(key) else 0
        except StorageCallError as exc:
            caller.last_error = str(exc).encode()
            return exc.abi_code

    def kv_list(self, caller: Instance, options: bytes) -> bytes | int:
        state = self._state(caller, "kv_list")
        if isinstance(state, int):
            return state
        try:
            listed: bytes = state.list(options)
        except StorageCallError as exc:
            caller.last_error = str(exc).encode()
            return exc.abi_code
        return listed

    def sql_exec(self, caller: Instance, sql: bytes, params: bytes) -> bytes | int:
        state = self._state(caller, "sql_exec")
        if isinstance(state, int):
            return state
        try:
            result: bytes = state.sql(sql, params, caller.deadline)
        except StorageCallError as exc:
            caller.last_error = str(exc).encode()
            return exc.abi_code
        return result

    def alarm(self, caller: Instance, op: int, at_ms: int) -> int:
        state = self._state(caller, "alarm")
        if isinstance(state, int):
            return state
        if op == ALARM_GET:
            alarm = state.alarm
            return -1 if alarm is None else alarm[0]
        if op == ALARM_SET:
            if at_ms < 0:
                caller.last_error = f"alarm_set: {at_ms} is not a time (ms since the Unix epoch)".encode()
                return MM_ERR_INVALID
            state.set_alarm(at_ms)
        else:
            state.delete_alarm()
        return 0

    def websocket(self, caller: Instance, op: int, conn: int, number: int, data: bytes, tag: bytes) -> int:
        """Serve the `micromono.ws_*` imports (docs/abi.md, "WebSockets"): checked now, sent through the actor's
        output gate."""
        actor = caller.actor
        if actor is None or actor.run is None or not actor.run.in_txn:
            return self._not_actor(caller, _WS_NAMES[op])
        service: Service = caller.owner
        keyed = self.keyed.get(service.name)
        if keyed is None:
            return self._not_actor(caller, _WS_NAMES[op])
        key: str = actor.key
        if op in (WS_PUBLISH, WS_SEND):
            if number != 1 and number != 2:
                return self._invalid(caller, f"{_WS_NAMES[op]}: type {number} is neither 1 (text) nor 2 (binary)")
            text = number == 1
            if text:
                try:
                    data.decode("utf-8")
                except UnicodeDecodeError:
                    return self._invalid(caller, f"{_WS_NAMES[op]}: a text message must be UTF-8")
            if op == WS_PUBLISH:
                topic = tag or None
                actor.outbox.append(lambda: keyed.publish(key, data, text, topic))
                return 0
        if tag and not 1 <= len(tag) <= 64:
            return self._invalid(caller, f"ws_tag: a tag is 1 to 64 bytes, got {len(tag)}")
        stream = keyed.streams.get(key)
        subscriber = stream.connections.get(conn) if stream is not None else None
        if subscriber is None:
            caller.last_error = f"{_WS_NAMES[op]}: actor {service.name}/{key} has no connection {conn}".encode()
            return MM_ERR_NOT_FOUND
        if op == WS_SEND:
            frame = direct_frame(data, number == 1)
            actor.outbox.append(lambda: subscriber.send(frame))
        elif op == WS_CLOSE:
            if not (number == 1000 or 3000 <= number <= 4999) or len(data) > 123:
                return self._invalid(caller, "ws_close: the code is 1000 or 3000-4999, the reason at most 123 bytes")
            reason = data.decode("utf-8", "replace")
            actor.outbox.append(lambda: subscriber.close(number, reason))
        else:  # WS_TAG: at once (it changes what the connection is sent, not what it has been sent)
            subscriber.tags.add(tag)
        return 0

    def _invalid(self, caller: Instance, message: str) -> int:
        caller.last_error = message.encode()
        return MM_ERR_INVALID

    def log(self, caller: Instance, level: int, message: bytes) -> None:
        """Serve `micromono.log`: through the service's guest-log budget (guestlog.py)."""
        service: Service = caller.owner
        service.guest_log.emit(service.name, service.version, level, message)

    def _guest_output(self, instance: Instance, level: int, data: bytes) -> None:
        service: Service = instance.owner
        service.guest_log.emit_output(service.name, service.version, level, data)

    def _refuse(self, caller: Instance, source: str, target: bytes) -> int:
        name = target.decode("utf-8", "replace")
        error: ServiceCallError
        if self.registry.is_running(name):
            error = CallForbidden(
                name,
                f"service {source!r} may not call {name!r}: add it to services.{source}.calls in services.toml",
            )
        else:
            error = UnknownService(name, f"service {source!r} called {name!r}, but no service of that name is loaded")
        key = (source, error.kind)
        self.refused[key] = self.refused.get(key, 0) + 1
        caller.last_error = str(error).encode()
        return error.abi_code

    def _too_large(self, target: str, size: int) -> RequestTooLarge:
        return RequestTooLarge(
            target,
            f"a request of {size} bytes to {target!r} is larger than max_request_bytes={self.max_request_bytes}; "
            "send less, or raise daemon.max_request_bytes",
        )

    def _too_deep(self, source: str, target: str) -> CallDepthExceeded:
        return CallDepthExceeded(
            target,
            f"call from {source!r} to {target!r} would exceed max_call_depth={self.max_call_depth} "
            "(a call cycle?); break the cycle or raise daemon.max_call_depth",
        )
