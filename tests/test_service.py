"""service.py on real modules: the instance pool, the supervisor (failure window, quarantine, backoff) on a fake
clock, a guest entry's call state (`arm`), and the `Slot` / `Edge` handles."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_engine import RecordingHost

from conftest import fixture
from micromono.config import ServiceSpec
from micromono.engine import CLOCK, DEADLINE_SLACK, Engine
from micromono.errors import CallForbidden, Overloaded, ServiceUnavailable
from micromono.scheduler import Scheduler
from micromono.service import INGRESS, Edge, Service, Slot


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with Engine(RecordingHost(), cache_dir=tmp_path / "cache", epoch_tick=0.002) as eng:
        yield eng


def make(engine: Engine, **settings: object) -> Service:
    spec = ServiceSpec(name="echo", wasm=fixture("echo.wat"), **settings)  # type: ignore[arg-type]
    return Service(spec, engine.compile("echo", spec.wasm))


async def test_the_pool_grows_on_demand_up_to_its_limit(engine: Engine) -> None:
    service = make(engine, instances=2)
    await service.start(Scheduler())
    assert (service.live, len(service.idle), service.in_flight) == (1, 1, 0)
    first = service.idle.pop()
    second = service.grow()
    assert (service.live, service.in_flight, service.instances_created) == (2, 2, 2)
    with pytest.raises(Overloaded, match=r"^service 'echo' is overloaded: all 2 instances are busy .* raise its"):
        service.grow()
    service.release(first)
    service.release(second)
    assert (service.live, len(service.idle)) == (2, 2)
    assert repr(service).endswith("[instances: 2/2 | busy: 0 | queued: 0/64]>")


async def test_a_closed_version_closes_idle_instances_now_and_busy_ones_on_release(engine: Engine) -> None:
    service = make(engine, instances=2)
    await service.start(Scheduler())
    busy = service.idle.pop()
    service.grow()  # booted, never released: stays busy
    service.close()
    service.close()  # idempotent
    assert service.mailbox.closed and not service.idle
    service.release(busy)
    assert service.live == 1 and not service.idle  # closed, not pooled
    with pytest.raises(ServiceUnavailable, match=r"^service 'echo' \(.+\) is stopped$"):
        service.grow()


async def test_only_guest_failures_count_and_too_many_in_the_window_quarantine(engine: Engine) -> None:
    service = make(engine, max_failures=2, failure_window=10.0)
    clock = service.clock = FakeClock()
    quarantined: list[Service] = []
    service.on_quarantine = quarantined.append
    for kind in ("overloaded", "unavailable", "app_error", "forbidden"):  # answers, not failures
        service.count_failure(kind)
    assert service.failed == 0
    for _ in range(2):
        service.count_failure("trap")
        clock.now += 6.0  # spread wider than the window: never more than 2 in it
    assert service.failed == 2 and service.quarantines == 0 and service.quarantine_error_now() is None
    for kind in ("trap", "timeout", "abi_violation"):
        service.count_failure(kind)
    assert service.quarantines == 1 and quarantined == [service]
    assert service.quarantined_until == clock.now + 1.0
    clock.now += 0.25
    error = service.quarantine_error_now()
    assert error is not None
    assert str(error) == (
        "service 'echo' is quarantined for another 0.8 s: 3 failures (traps, timeouts, ABI violations) within "
        "10 s, more than max_failures = 2; it is retried when that ends"
    )
    clock.now += 0.75
    assert service.quarantine_error_now() is None


def test_quarantines_back_off_while_failures_continue_and_start_over_after_a_quiet_window(engine: Engine) -> None:
    service = make(engine, max_failures=1, failure_window=5.0)
    clock = service.clock = FakeClock()

    def storm() -> float:
        """Two failures now; how long the quarantine they start lasts."""
        service.count_failure("trap")
        service.count_failure("trap")
        return service.quarantined_until - clock.now

    assert storm() == 1.0
    durations = []
    for _ in range(6):
        clock.now = service.quarantined_until  # failures go on as soon as each quarantine ends
        durations.append(storm())
    assert durations == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0]  # doubling, at most QUARANTINE_MAX
    clock.now = service.quarantined_until - 1.0
    storm()  # failures during a quarantine count, but start no new one
    assert service.quarantines == 7
    clock.now = service.quarantined_until + 5.1  # quiet for longer than the window since the last one ended
    assert storm() == 1.0


async def test_arm_sets_depth_sends_and_the_deadline(engine: Engine) -> None:
    service = make(engine, call_timeout=2.0)
    await service.start(Scheduler())
    instance = service.idle[0]
    instance.sends = 7
    before = time.monotonic()
    service.arm(instance, 1, math.inf)  # a top-level run reads the real clock
    assert (instance.depth, instance.sends) == (1, 0)
    assert CLOCK.now >= before
    assert service.deadline_after == 2.0 + DEADLINE_SLACK
    assert instance.deadline == CLOCK.now + service.deadline_after
    service.arm(instance, 3, CLOCK.now + 0.5)  # a call: at most its caller's deadline
    assert instance.depth == 3 and instance.deadline == CLOCK.now + 0.5
    service.arm(instance, 2, math.inf)
    assert instance.deadline == CLOCK.now + service.deadline_after


async def test_slots_and_edges(engine: Engine) -> None:
    service = make(engine)
    await service.start(Scheduler())
    assert service.ingress_edge.caller == INGRESS and service.ingress_edge.callee == "echo"  # before wiring
    slot = Slot("echo")
    assert repr(slot) == "<Slot echo -> None>"
    slot.current = service
    assert repr(slot) == f"<Slot echo -> {service.version}>"
    edge = Edge("front", slot)
    assert repr(edge) == "<Edge front -> echo>" and edge.slot.current is service
    caller = service.idle[0]
    error = CallForbidden("echo", "not allowed")
    assert edge.fail(caller, error) == CallForbidden.abi_code
    assert edge.fail(caller, error) == CallForbidden.abi_code
    assert edge.errors == {error.kind: 2} and caller.last_error == b"not allowed"
