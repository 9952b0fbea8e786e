"""The actor storage formats of abi.py (docs/abi.md, "Actors"): SQL values and results, kv_list options and
entries."""

from __future__ import annotations

import re
import struct

import pytest

from micromono.abi import (
    ListOptions,
    SqlResult,
    decode_kv_entries,
    decode_list_options,
    decode_sql_result,
    decode_sql_values,
    encode_kv_entries,
    encode_list_options,
    encode_sql_result,
    encode_sql_values,
)

VALUES = [None, 0, -1, (1 << 63) - 1, -(1 << 63), 1.5, float("-inf"), "", "héllo", b"", b"\x00\xff"]


def test_sql_values_layout() -> None:
    """Params are a u32 count, then tag-prefixed little-endian values."""
    data = encode_sql_values([None, 7, 2.5, "é", b"\x01"])
    assert data == (
        struct.pack("<I", 5)
        + b"\x00"
        + struct.pack("<Bq", 1, 7)
        + struct.pack("<Bd", 2, 2.5)
        + struct.pack("<BI", 3, 2)
        + "é".encode()
        + struct.pack("<BI", 4, 1)
        + b"\x01"
    )


def test_sql_values_round_trip() -> None:
    """Every kind of value decodes to what was encoded; empty params mean none."""
    assert decode_sql_values(encode_sql_values(VALUES)) == VALUES
    assert decode_sql_values(b"") == []
    assert decode_sql_values(encode_sql_values([])) == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01\x00", "params of 2 bytes are shorter than their 4-byte count"),
        (struct.pack("<I", 1), "param 1 of 1: the data ends at offset 4, before its tag"),
        (struct.pack("<I", 1) + b"\x09", "param 1 of 1: unknown tag 9 at offset 4 (expected 0-4)"),
        (
            struct.pack("<I", 1) + b"\x01\x00\x00",
            "param 1 of 1: an 8-byte INTEGER at offset 5 runs past the end (7 bytes)",
        ),
        (
            struct.pack("<I", 2) + b"\x00" + struct.pack("<BI", 4, 10) + b"abc",
            "param 2 of 2: 10 bytes at offset 10 run past the end (13 bytes)",
        ),
        (
            struct.pack("<I", 1) + struct.pack("<BI", 3, 1) + b"\xff",
            "param 1 of 1: TEXT at offset 9 is not UTF-8 (invalid start byte at byte 0)",
        ),
        (struct.pack("<I", 1) + b"\x00\x00", "params: 1 bytes left over at offset 5, after the last of 1 values"),
    ],
)
def test_sql_values_decode_errors(data: bytes, message: str) -> None:
    """Malformed params raise ValueError saying what is wrong and at which offset."""
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        decode_sql_values(data)


def test_sql_values_encode_refuses_what_sql_cannot_hold() -> None:
    """An integer beyond i64, or a value of another type, is refused."""
    with pytest.raises(ValueError, match="does not fit in an i64"):
        encode_sql_values([1 << 63])
    with pytest.raises(ValueError, match="not an SQL value: list"):
        encode_sql_values([[1]])  # type: ignore[list-item]


def test_sql_result_layout_and_round_trip() -> None:
    """A result is the 24-byte head, the column names, then the rows; it decodes to what was encoded."""
    data = encode_sql_result(["a", "b"], [(1, "x"), (None, b"y")], 3, 42)
    assert struct.unpack_from("<IIIIq", data) == (2, 2, 3, 0, 42)
    assert data[24:30] == struct.pack("<I", 1) + b"a" + b"\x01"
    assert decode_sql_result(data) == SqlResult(["a", "b"], [[1, "x"], [None, b"y"]], 3, 42)
    assert decode_sql_result(encode_sql_result([], [], 0, 0)) == SqlResult([], [], 0, 0)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00" * 10, "an SQL result of 10 bytes is shorter than its 24-byte head"),
        (struct.pack("<IIIIq", 0, 0, 0, 1, 0), "the reserved field at offset 12 is 1, expected 0"),
        (struct.pack("<IIIIq", 1, 0, 0, 0, 0), "column 1: the name's length at offset 24 runs past the end (24 bytes)"),
        (
            struct.pack("<IIIIq", 1, 1, 0, 0, 0) + struct.pack("<I", 1) + b"a",
            "row 1 column 1: the data ends at offset 29, before its tag",
        ),
        (struct.pack("<IIIIq", 0, 0, 0, 0, 0) + b"x", "SQL result: 1 bytes left over at offset 24, after the last row"),
    ],
)
def test_sql_result_decode_errors(data: bytes, message: str) -> None:
    """A malformed result raises ValueError naming the offset."""
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        decode_sql_result(data)


def test_sql_result_rows_must_match_columns() -> None:
    """A row with the wrong number of values is a bug of the caller."""
    with pytest.raises(ValueError, match="a row of 1 values in a result of 2 columns"):
        encode_sql_result(["a", "b"], [(1,)], 0, 0)


def test_list_options_layout_and_round_trip() -> None:
    """Options are five u32s (limit, flags, three lengths), then prefix, start and end."""
    data = encode_list_options(limit=5, reverse=True, prefix=b"p", start=b"st", end=b"end")
    assert data == struct.pack("<IIIII", 5, 1, 1, 2, 3) + b"pstend"
    assert decode_list_options(data) == ListOptions(5, True, b"p", b"st", b"end")
    assert decode_list_options(encode_list_options()) == ListOptions(0, False, b"", b"", b"")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "list options of 0 bytes are shorter than their 20-byte head"),
        (
            struct.pack("<IIIII", 0, 2, 0, 0, 0),
            "list options: unknown flags 0x2 at offset 4 (only bit 0, reverse, is defined)",
        ),
        (
            struct.pack("<IIIII", 0, 0, 1, 1, 1) + b"ab",
            "list options: the lengths at offsets 8-19 (1 + 1 + 1) need 23 bytes, got 22",
        ),
    ],
)
def test_list_options_decode_errors(data: bytes, message: str) -> None:
    """Malformed options raise ValueError saying what is wrong."""
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        decode_list_options(data)


def test_kv_entries_layout_and_round_trip() -> None:
    """Entries are a u32 count, then per entry the two lengths, the key and the value."""
    entries = [(b"a", b""), (b"key", b"value")]
    data = encode_kv_entries(entries)
    assert data[:12] == struct.pack("<III", 2, 1, 0)
    assert decode_kv_entries(data) == entries
    assert decode_kv_entries(encode_kv_entries([])) == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00", "entries of 1 bytes are shorter than their 4-byte count"),
        (struct.pack("<I", 1), "entry 1 of 1: its lengths at offset 4 run past the end (4 bytes)"),
        (struct.pack("<III", 1, 2, 2) + b"abc", "entry 1 of 1: 2 + 2 bytes at offset 12 run past the end (15 bytes)"),
        (struct.pack("<I", 0) + b"z", "entries: 1 bytes left over at offset 4, after the last of 0 entries"),
    ],
)
def test_kv_entries_decode_errors(data: bytes, message: str) -> None:
    """Malformed entries raise ValueError naming the offset."""
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        decode_kv_entries(data)
