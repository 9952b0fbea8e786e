"""scheduler.py: suspended runs take turns with the event loop, one slice per iteration, round robin; and the
scheduler tells the engine when work arrives beside them (contention), on a fake clock."""

from __future__ import annotations

import asyncio

from micromono.scheduler import BUSY_HOLD, Scheduler


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Counting:
    """A run of `slices` slices, each taking `cost` seconds on the fake clock."""

    def __init__(self, clock: FakeClock, slices: int, cost: float, log: list[str], name: str) -> None:
        self.clock, self.left, self.cost, self.log, self.name = clock, slices, cost, log, name
        self.cancelled = False

    def step(self) -> bool:
        self.clock.now += self.cost
        self.log.append(self.name)
        self.left -= 1
        return self.left == 0

    def cancel(self) -> None:
        self.cancelled = True


async def drain(scheduler: Scheduler, arriving: int = 0) -> None:
    """Let the loop iterate until the scheduler has no run left; in the first `arriving` iterations, a request
    arrives (as the router counts one)."""
    for i in range(10_000):
        if not len(scheduler):
            return
        if i < arriving:
            scheduler.arrivals += 1
        await asyncio.sleep(0)
    raise AssertionError("the runs never ended")


async def test_runs_take_turns_one_slice_per_loop_iteration() -> None:
    clock, log = FakeClock(), []
    scheduler = Scheduler(clock)
    scheduler.add(Counting(clock, 3, 0.0001, log, "a"))
    scheduler.add(Counting(clock, 2, 0.0001, log, "b"))
    await drain(scheduler)
    assert log == ["a", "b", "a", "b", "a"]
    assert scheduler.slices == 5


async def test_runs_alone_on_the_loop_keep_long_slices() -> None:
    clock, changes = FakeClock(), []
    scheduler = Scheduler(clock)
    scheduler.on_contention = changes.append
    scheduler.add(Counting(clock, 50, 0.0005, [], "spin"))
    await drain(scheduler)  # nothing else between the slices: the fake clock only moves inside them
    assert changes == [] and not scheduler.contended


async def test_work_arriving_beside_a_run_shortens_its_slices_until_it_stops() -> None:
    clock, changes = FakeClock(), []
    scheduler = Scheduler(clock)
    quiet_slices = round(BUSY_HOLD / 0.0001) + 5
    run = Counting(clock, 10 + quiet_slices, 0.0001, [], "spin")
    scheduler.on_contention = lambda contended: changes.append((contended, run.left))
    scheduler.arrivals += 1  # the request that started the run: not work beside it
    scheduler.add(run)
    # Requests arrive during the first ten slices: contended at once, and until BUSY_HOLD after the last of them,
    # while the run still has slices to go.
    await drain(scheduler, arriving=10)
    assert [contended for contended, _ in changes] == [True, False]
    assert changes[0][1] == 10 + quiet_slices and changes[1][1] > 0
    assert run.left == 0 and not scheduler.contended


async def test_contention_ends_a_hold_after_the_last_run() -> None:
    clock, changes = FakeClock(), []
    scheduler = Scheduler(clock)
    cooled = asyncio.Event()

    def on_contention(contended: bool) -> None:
        changes.append(contended)
        if not contended:
            cooled.set()

    scheduler.on_contention = on_contention
    scheduler.add(Counting(clock, 5, 0.0001, [], "spin"))
    await drain(scheduler, arriving=1000)  # requests beside it to its end
    assert changes == [True] and scheduler.contended
    await asyncio.wait_for(cooled.wait(), 10)  # the loop's own timer: BUSY_HOLD with no run left
    assert changes == [True, False] and not scheduler.contended


async def test_a_run_that_starts_from_idle_is_not_contention() -> None:
    clock, changes = FakeClock(), []
    scheduler = Scheduler(clock)
    scheduler.on_contention = changes.append
    for _ in range(3):
        scheduler.arrivals += 1  # the request that starts the run
        scheduler.add(Counting(clock, 3, 0.0001, [], "a"))
        await drain(scheduler)
    assert changes == []


async def test_a_failing_pace_callback_is_logged_and_the_runs_go_on() -> None:
    clock, log = FakeClock(), []
    scheduler = Scheduler(clock)

    def broken(contended: bool) -> None:
        raise RuntimeError("a bug in whoever sets the slice")

    scheduler.on_contention = broken
    scheduler.add(Counting(clock, 5, 0.0001, log, "a"))
    await drain(scheduler, arriving=1000)
    assert log == ["a"] * 5 and scheduler.contended


async def test_cancel_all_cancels_every_run() -> None:
    clock = FakeClock()
    scheduler = Scheduler(clock)
    runs = [Counting(clock, 100, 0.0001, [], str(i)) for i in range(3)]
    for run in runs:
        scheduler.add(run)
    assert scheduler.cancel_all() == 3
    assert all(run.cancelled for run in runs) and len(scheduler) == 0
