"""scheduler.py: suspended runs take turns with the event loop, one slice per iteration, round robin; and the
scheduler tells the engine when the loop has other work between slices (contention), on a fake clock."""

from __future__ import annotations

import asyncio

from micromono.scheduler import BUSY_GAP, BUSY_HOLD, Scheduler


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


async def drain(scheduler: Scheduler, between: float = 0.0, clock: FakeClock | None = None) -> None:
    """Let the loop iterate until the scheduler has no run left; `between` seconds of other work per iteration."""
    for _ in range(10_000):
        if not len(scheduler):
            return
        if clock is not None:
            clock.now += between
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


async def drain_with_work(scheduler: Scheduler, clock: FakeClock, busy_iterations: int) -> None:
    """Like `drain`, with BUSY_GAP * 2 of other work per iteration for the first `busy_iterations` iterations."""
    for i in range(10_000):
        if not len(scheduler):
            return
        if i < busy_iterations:
            clock.now += BUSY_GAP * 2
        await asyncio.sleep(0)
    raise AssertionError("the runs never ended")


async def test_other_work_between_slices_shortens_them_until_it_stops() -> None:
    clock, changes = FakeClock(), []
    scheduler = Scheduler(clock)
    quiet_slices = round(BUSY_HOLD / 0.0001) + 5
    run = Counting(clock, 10 + quiet_slices, 0.0001, [], "spin")
    scheduler.on_contention = lambda contended: changes.append((contended, run.left))
    scheduler.add(run)
    # Requests served between the first ten slices: contended at once, and until BUSY_HOLD after the last of them,
    # while the run still has slices to go.
    await drain_with_work(scheduler, clock, busy_iterations=10)
    assert [contended for contended, _ in changes] == [True, False]
    assert changes[1][1] > 0 and run.left == 0 and not scheduler.contended


async def test_contention_ends_when_no_run_is_left() -> None:
    clock, changes = FakeClock(), []
    scheduler = Scheduler(clock)
    scheduler.on_contention = changes.append
    scheduler.add(Counting(clock, 5, 0.0001, [], "spin"))
    await drain(scheduler, between=BUSY_GAP * 2, clock=clock)  # requests between every two slices, to the end
    assert changes == [True, False] and not scheduler.contended


async def test_a_first_turn_after_an_idle_loop_is_not_contention() -> None:
    clock, changes = FakeClock(), []
    scheduler = Scheduler(clock)
    scheduler.on_contention = changes.append
    scheduler.add(Counting(clock, 1, 0.0001, [], "a"))
    await drain(scheduler)
    clock.now += 60  # a minute with no suspended run
    scheduler.add(Counting(clock, 3, 0.0001, [], "b"))
    await drain(scheduler)
    assert changes == []


async def test_a_failing_pace_callback_is_logged_and_the_runs_go_on() -> None:
    clock, log = FakeClock(), []
    scheduler = Scheduler(clock)

    def broken(contended: bool) -> None:
        raise RuntimeError("a bug in whoever sets the slice")

    scheduler.on_contention = broken
    scheduler.add(Counting(clock, 5, 0.0001, log, "a"))
    await drain(scheduler, between=BUSY_GAP * 2, clock=clock)
    assert log == ["a"] * 5 and not scheduler.contended


async def test_cancel_all_cancels_every_run() -> None:
    clock = FakeClock()
    scheduler = Scheduler(clock)
    runs = [Counting(clock, 100, 0.0001, [], str(i)) for i in range(3)]
    for run in runs:
        scheduler.add(run)
    assert scheduler.cancel_all() == 3
    assert all(run.cancelled for run in runs) and len(scheduler) == 0
