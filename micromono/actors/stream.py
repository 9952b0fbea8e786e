"""The stream of one actor (`Stream`): the WebSocket connections bound to it, what it publishes, numbered, and the
ring of recent messages that a reconnecting client resumes from (docs/stream.md); and `StreamCounters`, what the
streams and connections of one actor service have done, for the metrics.

A `Stream` belongs to an actor key, not to the actor's instance: it lives in the `KeyedService` and outlives the
actor's hibernation and hot swaps, so connections stay open and the numbering goes on. It knows connections only
as `Subscriber`s (something with an id, tags and a way to send a frame): it must not touch sockets or the
WebSocket protocol (ingress/websocket.py does), nor run the actor.

`StreamCounters` is one plain object per actor service (`KeyedService.stream_counters`), held by each of its
streams and connections, so that counting is one attribute increment on the hot path; the metrics copy it at scrape
time (metrics/snapshot.py). The streams count what they publish, resume and reset; ingress/websocket.py counts the
rest (connections, messages and bytes, closes, refusals), ingress/http.py the upgrades it refuses itself.
"""

from __future__ import annotations

import json
import struct
from collections import deque
from typing import Final, Protocol

__all__ = ["REFUSALS", "Stream", "StreamCounters", "Subscriber", "direct_frame", "published_frame", "reset_frame"]

_SEQ: Final = struct.Struct("<Q")
#: The prefix of a direct binary frame: sequence 0, which no published message has (numbering starts at 1).
_DIRECT_SEQ: Final = _SEQ.pack(0)

#: Why a WebSocket upgrade to an actor service is refused, as `StreamCounters.refused` counts it: the daemon's or
#: the actor's `ws_max_connections` reached (503), the service does not take WebSockets (403, `websocket = false`),
#: or the upgrade request itself is bad (400: a bad actor key, pipelined requests, a malformed handshake).
REFUSALS: Final = ("daemon_limit", "actor_limit", "disabled", "bad_request")


class StreamCounters:
    """What the streams and WebSocket connections of one actor service have done, read by the metrics at scrape
    time. Plain integers, bumped where the thing happens (see the module docstring)."""

    __slots__ = (
        "open",
        "opened",
        "messages_in",
        "messages_out",
        "bytes_in",
        "bytes_out",
        "published",
        "resumes",
        "resets",
        "closes",
        "refused",
    )

    def __init__(self) -> None:
        self.open = 0  # connections open now (handshake done, not yet ended)
        self.opened = 0  # handshakes completed
        self.messages_in = 0  # client messages given to the actors
        self.messages_out = 0  # frames sent to clients: published, direct (ws_send), resumed, resets
        self.bytes_in = 0  # read from the connections' sockets, handshakes included
        self.bytes_out = 0  # written to them, handshakes and close frames included
        self.published = 0  # messages the actors published (numbered), before they fan out
        self.resumes = 0  # connections sent what they missed from the ring
        self.resets = 0  # connections sent a reset instead
        self.closes: dict[int, int] = {}  # connections ended, by close code
        self.refused: dict[str, int] = dict.fromkeys(REFUSALS, 0)  # upgrades refused, by reason

    def __repr__(self) -> str:
        return f"<StreamCounters [open: {self.open} | opened: {self.opened} | published: {self.published}]>"

    def count_close(self, code: int) -> None:
        self.closes[code] = self.closes.get(code, 0) + 1


class Subscriber(Protocol):
    """A connection as the stream sees it."""

    @property
    def conn_id(self) -> int: ...

    @property
    def tags(self) -> set[bytes]: ...

    def send(self, frame: bytes | str) -> None:
        """Send one frame: a `str` as a text frame, `bytes` as a binary one."""
        ...

    def close(self, code: int, reason: str) -> None:
        """Close the connection with `code` and `reason`."""
        ...


def published_frame(seq: int, data: bytes, text: bool) -> bytes | str:
    """The frame of a published message: `{"seq": N, "data": "<text>"}` for text (the data is valid UTF-8: the
    caller checked it), the 8-byte little-endian seq and the bytes for binary."""
    if text:
        return f'{{"seq": {seq}, "data": {json.dumps(data.decode("utf-8"), ensure_ascii=False)}}}'
    return _SEQ.pack(seq) + data


def direct_frame(data: bytes, text: bool) -> bytes | str:
    """The frame of a message the actor sends to one connection (`ws_send`), not numbered: `{"data": "<text>"}` for
    text (the data is valid UTF-8: the caller checked it), sequence 0 (8 zero bytes) and the bytes for binary. Each
    says what it is, so a client never takes it for a published message, whatever the actor wrote."""
    if text:
        return f'{{"data": {json.dumps(data.decode("utf-8"), ensure_ascii=False)}}}'
    return _DIRECT_SEQ + data


def reset_frame(seq: int) -> str:
    """The frame telling a resuming client that what it missed is no longer kept."""
    return f'{{"reset": true, "seq": {seq}}}'


class Stream:
    """The connections and the numbered messages of one actor.

    Args:
        key: the actor's key.
        capacity: how many published messages the ring keeps (the service's `stream_buffer`).
        now: the monotonic clock now (seconds).
        counters: the actor service's counters (`KeyedService.stream_counters`).
    """

    __slots__ = ("key", "seq", "ring", "capacity", "connections", "last_active", "counters")

    def __init__(self, key: str, capacity: int, now: float, counters: StreamCounters) -> None:
        self.key = key
        self.seq = 0  # the last number given
        self.ring: deque[tuple[int, bytes | str, bytes | None]] = deque()  # (seq, frame, tag)
        self.capacity = capacity
        self.connections: dict[int, Subscriber] = {}
        self.last_active = now
        self.counters = counters

    def __repr__(self) -> str:
        return (
            f"<Stream {self.key!r} [seq: {self.seq} | connections: {len(self.connections)} | ring: {len(self.ring)}]>"
        )

    def attach(self, subscriber: Subscriber, since: int | None, now: float) -> None:
        """Add a connection; with `since`, send it first what it missed (or a reset), then it gets live messages."""
        self.connections[subscriber.conn_id] = subscriber
        self.last_active = now
        if since is None or since == self.seq:
            return
        ring = self.ring
        oldest = ring[0][0] if ring else self.seq + 1
        if since > self.seq or since < oldest - 1:
            self.counters.resets += 1
            subscriber.send(reset_frame(self.seq))
            return
        self.counters.resumes += 1
        tags = subscriber.tags
        for seq, frame, tag in ring:
            if seq > since and (tag is None or tag in tags):
                subscriber.send(frame)

    def detach(self, conn_id: int, now: float) -> None:
        self.connections.pop(conn_id, None)
        self.last_active = now

    def publish(self, data: bytes, text: bool, tag: bytes | None, now: float) -> int:
        """Number a message, keep it in the ring and send it to every connection (with `tag`: those tagged);
        returns its number."""
        seq = self.seq = self.seq + 1
        frame = published_frame(seq, data, text)
        if self.capacity:
            ring = self.ring
            ring.append((seq, frame, tag))
            if len(ring) > self.capacity:
                ring.popleft()
        self.counters.published += 1
        self.last_active = now
        for subscriber in list(self.connections.values()):
            if tag is None or tag in subscriber.tags:
                subscriber.send(frame)
        return seq
