"""The Python stream client's reading of frames (sdk/python/micromono_stream.py, docs/stream.md "What the server
sends"): each of the five frames, and a frame that is none of them, which `parse_frame` refuses and `recv()` skips
and reports. The client against the real daemon is in test_websockets.py."""

from __future__ import annotations

import asyncio
import logging
import sys

import pytest
from websockets.asyncio.server import ServerConnection, serve

from conftest import ROOT

sys.path.insert(0, str(ROOT / "sdk" / "python"))
from micromono_stream import Direct, Published, Reset, StreamClient, StreamProtocolError, parse_frame  # noqa: E402

SEQ_7 = (7).to_bytes(8, "little")


@pytest.mark.parametrize(
    ("frame", "event"),
    [
        ('{"seq": 3, "data": "hi"}', Published(3, "hi")),
        (SEQ_7 + b"\x00\xff", Published(7, b"\x00\xff")),
        ('{"reset": true, "seq": 0}', Reset(0)),
        ('{"data": "{\\"seq\\": 5, \\"data\\": \\"x\\"}"}', Direct('{"seq": 5, "data": "x"}')),
        (bytes(8) + SEQ_7, Direct(SEQ_7)),
        (bytes(8), Direct(b"")),
    ],
)
def test_each_frame_says_what_it_is(frame: str | bytes, event: object) -> None:
    assert parse_frame(frame) == event


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        ("hello", "a text frame that is not a JSON object"),
        ("[1, 2]", "a text frame that is not a JSON object"),
        ('{"seq": 1}', "a JSON object of none of the three shapes"),
        ('{"data": "x", "from": "bob"}', "a JSON object of none of the three shapes"),
        ('{"seq": true, "data": "x"}', "a JSON object of none of the three shapes"),
        ('{"data": 1}', "a JSON object of none of the three shapes"),
        (b"\x07\x08", "a binary frame of 2 bytes, shorter than a sequence number"),
    ],
)
def test_any_other_frame_is_a_protocol_error(frame: str | bytes, why: str) -> None:
    with pytest.raises(StreamProtocolError, match=rf"^not a frame of docs/stream\.md \({why}\): ") as refused:
        parse_frame(frame)
    assert refused.value.frame == frame


async def test_recv_skips_and_reports_a_frame_it_cannot_read(caplog: pytest.LogCaptureFixture) -> None:
    """An unreadable frame neither ends the stream nor moves last_seq: it is logged, counted and skipped."""

    async def server(connection: ServerConnection) -> None:
        frames = ["plain text", '{"seq": 1, "data": "one"}', b"\x01", '{"data": "hi"}', '{"seq": 2, "data": "two"}']
        for frame in frames:
            await connection.send(frame)
        await connection.wait_closed()

    async with serve(server, "127.0.0.1", 0, compression=None) as served:
        port = served.sockets[0].getsockname()[1]
        with caplog.at_level(logging.WARNING, logger="micromono_stream"):
            async with StreamClient(f"ws://127.0.0.1:{port}/chat/r") as stream:
                events = [await asyncio.wait_for(stream.recv(), timeout=10) for _ in range(3)]
                assert events == [Published(1, "one"), Direct("hi"), Published(2, "two")]
                assert stream.last_seq == 2 and stream.protocol_errors == 2
    assert [record.getMessage() for record in caplog.records] == [
        f"ws://127.0.0.1:{port}/chat/r: skipped not a frame of docs/stream.md (a text frame that is not a JSON "
        "object): 'plain text'",
        f"ws://127.0.0.1:{port}/chat/r: skipped not a frame of docs/stream.md (a binary frame of 1 bytes, shorter "
        "than a sequence number): b'\\x01'",
    ]
