"""Bounded in-memory mailboxes: the queue in front of each service.

A `Mailbox` holds work a service has not started yet: ingress requests that arrived while earlier work was queued,
and messages other services `send` it. It is bounded (`capacity`); when full, its `on_full` policy refuses the item
(`Overloaded`: 503 at ingress, `MM_ERR_OVERLOADED` to a sender), lets it wait a bounded time (`put`), or drops the
oldest queued item for it. It never grows past its capacity.

The mailbox does not run guests itself. Each `service.Service` owns one mailbox, and a worker task per service
drains it (`runs.TopLevel`): the consumer polls with `get_nowait` from the event loop's thread, so no consumer ever
waits here. This module only knows about queues, room to wait for, and statistics (trio's memory-channel contract,
single consumer); it must not know what an item means.

Compiled by mypyc on the compiled path (scripts/build_compiled.py), from this same source.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

from .errors import Overloaded, ServiceUnavailable

__all__ = ["Mailbox", "MailboxStatistics"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class MailboxStatistics:
    """A snapshot of one mailbox, for metrics and status."""

    queued: int
    capacity: int
    accepted: int  # items ever queued
    rejected: int  # put_nowait calls refused because the mailbox was full
    shed: int  # queued items dropped to make room (on_full = "shed_oldest")
    closed: bool


class Mailbox(Generic[T]):
    """A bounded FIFO with one consumer.

    Args:
        owner: the service name, used in error messages.
        capacity: the most items it holds; must be >= 1.
        on_full: what a full mailbox does with one more item: "reject" it (`Overloaded`), let the sender "wait"
            for room (`put`, bounded; `put_nowait` rejects), or "shed_oldest" (drop the oldest queued item).
    """

    __slots__ = (
        "owner",
        "capacity",
        "on_full",
        "full_message",
        "items",
        "_room_waiters",
        "closed",
        "accepted",
        "rejected",
        "shed",
    )

    def __init__(self, owner: str, capacity: int, on_full: str = "reject") -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        if on_full not in ("reject", "wait", "shed_oldest"):
            raise ValueError(f"on_full must be reject, wait or shed_oldest, not {on_full!r}")
        self.owner = owner
        self.capacity = capacity
        self.on_full = on_full
        self._room_waiters: deque[asyncio.Future[None]] = deque()
        self.shed = 0
        self.full_message = (
            f"service {owner!r} is overloaded: its mailbox is full ({capacity} queued); "
            "retry later or raise its `mailbox` in services.toml"
        ).encode()
        # The queued items, oldest first: read it (a truth test asks whether anything is queued without a call to
        # __len__), never change it outside this module.
        self.items: deque[T] = deque()
        self.closed = False  # set by close(), read by whoever must not queue here
        self.accepted = 0
        self.rejected = 0

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return f"<Mailbox {self.owner} [queued: {len(self.items)}/{self.capacity}{state}]>"

    def __len__(self) -> int:
        return len(self.items)

    def put_nowait(self, item: T) -> T | None:
        """Queue `item`.

        Returns:
            None, or with `on_full="shed_oldest"` and a full mailbox, the oldest item, which was dropped to make
            room: the caller must fail it.

        Raises:
            Overloaded: the mailbox is full (policies "reject" and "wait"; `put` waits instead).
            ServiceUnavailable: the mailbox is closed (its service is stopping).
        """
        if self.closed:
            raise ServiceUnavailable(self.owner, f"service {self.owner!r} is stopping and takes no new work")
        shed = None
        if len(self.items) >= self.capacity:
            if self.on_full != "shed_oldest":
                self.rejected += 1
                raise self.overloaded()
            shed = self.items.popleft()
            self.shed += 1
        self.items.append(item)
        self.accepted += 1
        return shed

    def overloaded(self) -> Overloaded:
        return Overloaded(self.owner, self.full_message.decode())

    async def put(self, item: T, timeout: float) -> T | None:
        """Like `put_nowait`, but with a full mailbox wait up to `timeout` seconds for room (policy "wait").

        Raises:
            Overloaded: still full after `timeout`.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.items) >= self.capacity and self.on_full == "wait" and not self.closed:
            remaining = deadline - loop.time()
            if remaining <= 0:
                self.rejected += 1
                raise self.overloaded()
            room = loop.create_future()
            self._room_waiters.append(room)
            try:
                await asyncio.wait_for(room, remaining)
            except TimeoutError:
                pass
            finally:
                if room in self._room_waiters:
                    self._room_waiters.remove(room)
        return self.put_nowait(item)

    def get_nowait(self) -> T | None:
        """The oldest item, or None when empty."""
        if not self.items:
            return None
        item = self.items.popleft()
        while self._room_waiters:
            room = self._room_waiters.popleft()
            if not room.done():
                room.set_result(None)
                break
        return item

    def close(self) -> None:
        """Refuse new items; items already queued stay for the consumer to drain. Idempotent."""
        self.closed = True

    def drain(self) -> list[T]:
        """Remove and return everything queued."""
        items = list(self.items)
        self.items.clear()
        return items

    def statistics(self) -> MailboxStatistics:
        return MailboxStatistics(
            queued=len(self.items),
            capacity=self.capacity,
            accepted=self.accepted,
            rejected=self.rejected,
            shed=self.shed,
            closed=self.closed,
        )
