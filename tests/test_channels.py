"""channels.py's mailbox on its own: bounds, order, the three on_full policies, close, statistics."""

from __future__ import annotations

import asyncio

import pytest

from micromono.channels import Mailbox
from micromono.errors import Overloaded, ServiceUnavailable


async def test_mailbox_bounds_order_and_close() -> None:
    box: Mailbox[int] = Mailbox("svc", 2)
    box.put_nowait(1)
    box.put_nowait(2)
    with pytest.raises(Overloaded, match=r"^service 'svc' is overloaded: its mailbox is full \(2 queued\)"):
        box.put_nowait(3)
    assert box.statistics().rejected == 1
    assert repr(box) == "<Mailbox svc [queued: 2/2]>"
    assert len(box) == 2
    assert [box.get_nowait(), box.get_nowait(), box.get_nowait()] == [1, 2, None]
    box.put_nowait(7)
    assert box.drain() == [7]
    assert len(box) == 0
    box.close()
    box.close()  # idempotent
    assert repr(box) == "<Mailbox svc [queued: 0/2 closed]>"
    with pytest.raises(ServiceUnavailable, match="^service 'svc' is stopping and takes no new work$"):
        box.put_nowait(8)
    assert box.statistics() == box.statistics().__class__(
        queued=0, capacity=2, accepted=3, rejected=1, shed=0, closed=True
    )


def test_items_queued_before_close_stay_for_the_consumer() -> None:
    box: Mailbox[str] = Mailbox("svc", 4)
    box.put_nowait("a")
    box.close()
    assert box.get_nowait() == "a"
    assert box.get_nowait() is None


def test_shed_oldest_drops_the_oldest_item_and_returns_it() -> None:
    box: Mailbox[int] = Mailbox("svc", 2, "shed_oldest")
    assert box.put_nowait(1) is None
    assert box.put_nowait(2) is None
    assert box.put_nowait(3) == 1  # the caller fails the dropped item
    assert box.drain() == [2, 3]
    stats = box.statistics()
    assert (stats.shed, stats.rejected, stats.accepted) == (1, 0, 3)


async def test_wait_policy_waits_for_room_then_queues() -> None:
    box: Mailbox[int] = Mailbox("svc", 1, "wait")
    box.put_nowait(1)
    with pytest.raises(Overloaded):
        box.put_nowait(2)  # put_nowait never waits
    waiting = asyncio.ensure_future(box.put(2, timeout=30.0))
    await asyncio.sleep(0)
    assert not waiting.done()
    assert box.get_nowait() == 1  # the consumer makes room: the waiting put goes on
    assert await asyncio.wait_for(waiting, 5) is None
    assert box.drain() == [2]


async def test_wait_policy_gives_up_after_its_timeout() -> None:
    box: Mailbox[int] = Mailbox("svc", 1, "wait")
    box.put_nowait(1)
    with pytest.raises(Overloaded, match="its mailbox is full"):
        await box.put(2, timeout=0.0)
    assert box.statistics().rejected == 1
    assert box.drain() == [1]


def test_bad_arguments_say_what_is_allowed() -> None:
    with pytest.raises(ValueError, match="^capacity must be >= 1$"):
        Mailbox("svc", 0)
    with pytest.raises(ValueError, match="^on_full must be reject, wait or shed_oldest, not 'drop'$"):
        Mailbox("svc", 1, "drop")
