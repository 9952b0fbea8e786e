"""Wire formats of the guest ABI that live in bytes rather than in function signatures (docs/abi.md).

Pure functions over `bytes`: encoding an HTTP request for a guest (and decoding it again, for tests and tools),
decoding the HTTP response a guest returns, plus the ABI's constants, the error codes among them (errors.py takes
its `abi_code`s from here). No I/O, no wasmtime, no asyncio; the ingress (ingress/heads.py) builds requests inline on
the hot path from the same layout, and ingress/responses.py calls `render_http_headers`.
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = [
    "ABI_VERSION",
    "KIND_HTTP",
    "KIND_CALL",
    "KIND_MESSAGE",
    "KIND_ALARM",
    "KIND_WS_OPEN",
    "KIND_WS_MESSAGE",
    "KIND_WS_CLOSE",
    "ERROR_CODES",
    "MM_ERR_UNKNOWN_TARGET",
    "MM_ERR_FORBIDDEN",
    "MM_ERR_OVERLOADED",
    "MM_ERR_TRAP",
    "MM_ERR_TIMEOUT",
    "MM_ERR_DEPTH",
    "MM_ERR_APP",
    "MM_ERR_TOO_LARGE",
    "MM_ERR_NO_REPLY",
    "MM_ERR_UNAVAILABLE",
    "MM_ERR_NOT_FOUND",
    "MM_ERR_STORAGE_FULL",
    "MM_ERR_SQL",
    "MM_ERR_NOT_ACTOR",
    "MM_ERR_INVALID",
    "encode_http_request",
    "decode_http_request",
    "decode_http_response",
    "BadReply",
]

ABI_VERSION: Final = 2
KIND_HTTP: Final = 1
KIND_CALL: Final = 2
KIND_MESSAGE: Final = 3
#: An actor's alarm firing (docs/abi.md, "Actors"): the payload is ALARM_PAYLOAD (when it was set for, the attempt).
KIND_ALARM: Final = 4
#: An actor's WebSocket connections (docs/abi.md, "WebSockets"): opened, a client's message, closed.
KIND_WS_OPEN: Final = 5
KIND_WS_MESSAGE: Final = 6
KIND_WS_CLOSE: Final = 7

# The negative results of `micromono.call` / `send` / `take_reply` (docs/abi.md, "Error codes"). Defined here
# once: each error class in errors.py takes its `abi_code` from these, and ERROR_CODES lists them by name.
MM_ERR_UNKNOWN_TARGET: Final = -1
MM_ERR_FORBIDDEN: Final = -2
MM_ERR_OVERLOADED: Final = -3
MM_ERR_TRAP: Final = -4
MM_ERR_TIMEOUT: Final = -5
MM_ERR_DEPTH: Final = -6
MM_ERR_APP: Final = -7
MM_ERR_TOO_LARGE: Final = -8
MM_ERR_NO_REPLY: Final = -9
MM_ERR_UNAVAILABLE: Final = -10
# The results of the actor storage imports (docs/abi.md, "Actors").
MM_ERR_NOT_FOUND: Final = -11
MM_ERR_STORAGE_FULL: Final = -12
MM_ERR_SQL: Final = -13
MM_ERR_NOT_ACTOR: Final = -14
MM_ERR_INVALID: Final = -15

#: The error codes by name, as the SDKs and docs/abi.md spell them.
ERROR_CODES: Final = {
    "MM_ERR_UNKNOWN_TARGET": MM_ERR_UNKNOWN_TARGET,
    "MM_ERR_FORBIDDEN": MM_ERR_FORBIDDEN,
    "MM_ERR_OVERLOADED": MM_ERR_OVERLOADED,
    "MM_ERR_TRAP": MM_ERR_TRAP,
    "MM_ERR_TIMEOUT": MM_ERR_TIMEOUT,
    "MM_ERR_DEPTH": MM_ERR_DEPTH,
    "MM_ERR_APP": MM_ERR_APP,
    "MM_ERR_TOO_LARGE": MM_ERR_TOO_LARGE,
    "MM_ERR_NO_REPLY": MM_ERR_NO_REPLY,
    "MM_ERR_UNAVAILABLE": MM_ERR_UNAVAILABLE,
    "MM_ERR_NOT_FOUND": MM_ERR_NOT_FOUND,
    "MM_ERR_STORAGE_FULL": MM_ERR_STORAGE_FULL,
    "MM_ERR_SQL": MM_ERR_SQL,
    "MM_ERR_NOT_ACTOR": MM_ERR_NOT_ACTOR,
    "MM_ERR_INVALID": MM_ERR_INVALID,
}

HEAD: Final = struct.Struct("<HHIII")  # method_len, reserved (0), path_len, query_len, body_len
# HEAD in two parts, for ingress, which keeps the first per request line and adds the body's length per request.
HEAD_PREFIX: Final = struct.Struct("<HHII")  # method_len, reserved (0), path_len, query_len
BODY_LEN: Final = struct.Struct("<I")  # body_len
assert HEAD.size == HEAD_PREFIX.size + BODY_LEN.size
PAIR: Final = struct.Struct("<HH")  # name_len, value_len
_STATUS = struct.Struct("<HH")  # status, header_count
_pack_head = HEAD.pack
_pack_pair = PAIR.pack
_unpack_status = _STATUS.unpack_from
_unpack_pair = PAIR.unpack_from

#: Headers the host writes itself; a guest's copies are dropped.
HOST_FRAMED_HEADERS: Final = frozenset({b"content-length", b"connection", b"date", b"transfer-encoding"})


#: Bytes allowed in a header name (RFC 9110 token characters).
_TOKEN_BYTES: Final = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


class BadReply(ValueError):
    """The guest's HTTP reply does not follow the ABI's response encoding."""


def encode_http_request(method: bytes, path: bytes, query: bytes, headers: bytes, body: bytes) -> bytes:
    """Encode one HTTP request as the guest reads it (docs/abi.md, "HTTP encoding").

    `headers` is the request's header block as it came off the wire: `Name: value` lines, each ending in CRLF
    (empty when there are none). Raises `ValueError` (from `struct`) if a field is too long for its length prefix.
    """
    return b"".join((_pack_head(len(method), 0, len(path), len(query), len(body)), method, path, query, headers, body))


def decode_http_request(data: bytes) -> tuple[bytes, bytes, bytes, list[tuple[bytes, bytes]], bytes]:
    """The inverse of `encode_http_request`, with the header block split into `(name, value)` pairs the way the
    SDKs split it (the value without the whitespace around it).

    Raises:
        ValueError: `data` is not an encoded request.
    """
    if len(data) < HEAD.size:
        raise ValueError(f"an encoded request is at least {HEAD.size} bytes, got {len(data)}")
    method_len, _, path_len, query_len, body_len = HEAD.unpack_from(data, 0)
    pos = HEAD.size
    method, pos = data[pos : pos + method_len], pos + method_len
    path, pos = data[pos : pos + path_len], pos + path_len
    query, pos = data[pos : pos + query_len], pos + query_len
    headers_end = len(data) - body_len
    if headers_end < pos:
        raise ValueError("the lengths in the request's head add up to more than its size")
    block = data[pos:headers_end]
    headers: list[tuple[bytes, bytes]] = []
    for line in block.split(b"\r\n")[:-1] if block else []:
        name, colon, value = line.partition(b":")
        if not colon:
            raise ValueError(f"header line without a colon: {line[:64]!r}")
        headers.append((name, value.strip(b" \t")))
    return method, path, query, headers, data[headers_end:]


#: Rendered header blocks by their encoded bytes: guests tend to send the same few header sets again and again.
_RENDERED: dict[bytes, bytes] = {}
_RENDERED_MAX: Final = 512


def render_http_headers(reply: bytes | memoryview, count: int) -> tuple[bytes, int]:
    """The `count` headers of an HTTP reply as `name: value\r\n` lines, and the offset where the body starts.

    Validates like `decode_http_response` and drops the headers the host frames itself. Results are cached by
    the encoded header bytes, so a guest that keeps sending the same headers costs one walk over the length
    prefixes and a dict lookup.

    Raises:
        BadReply: as `decode_http_response`.
    """
    pos, end = 4, len(reply)
    for _ in range(count):
        if pos + 4 > end:
            raise BadReply(f"HTTP reply declares {count} headers but ends inside them")
        nlen, vlen = _unpack_pair(reply, pos)
        pos += 4 + nlen + vlen
    if pos > end:
        raise BadReply(f"HTTP reply declares {count} headers but ends inside them")
    block = bytes(reply[4:pos])
    rendered = _RENDERED.get(block)
    if rendered is None:
        _, headers, _ = decode_http_response(b"\xc8\x00" + bytes(reply[2:pos]))
        rendered = b"".join([b"%s: %s\r\n" % pair for pair in headers])
        if len(_RENDERED) >= _RENDERED_MAX:
            _RENDERED.clear()
        _RENDERED[block] = rendered
    return rendered, pos


def decode_http_response(reply: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Decode a guest's HTTP reply into `(status, headers, body)`.

    Headers the host frames itself (`HOST_FRAMED_HEADERS`) are dropped.

    Raises:
        BadReply: the reply is shorter than its head, a header runs past its end, the status is outside
            100-599, or a header contains CR, LF or NUL.
    """
    if len(reply) < 4:
        raise BadReply(f"HTTP reply of {len(reply)} bytes is shorter than its 4-byte head")
    status, count = _unpack_status(reply, 0)
    if not 100 <= status <= 599:
        raise BadReply(f"HTTP reply has status {status}, expected 100-599")
    if count == 0:
        return status, [], reply[4:]
    headers: list[tuple[bytes, bytes]] = []
    pos, end = 4, len(reply)
    for _ in range(count):
        if pos + 4 > end:
            raise BadReply(f"HTTP reply declares {count} headers but ends inside them")
        nlen, vlen = _unpack_pair(reply, pos)
        pos += 4
        if pos + nlen + vlen > end:
            raise BadReply(f"HTTP reply declares {count} headers but ends inside them")
        name = reply[pos : pos + nlen]
        value = reply[pos + nlen : pos + nlen + vlen]
        pos += nlen + vlen
        # One C call each: deleting the allowed bytes must leave nothing, deleting CR/LF/NUL must remove nothing.
        if not name or name.translate(None, _TOKEN_BYTES):
            raise BadReply(f"HTTP reply has an invalid header name {name[:64]!r}")
        if len(value.translate(None, b"\r\n\0")) != vlen:
            raise BadReply(f"HTTP reply header {name[:64]!r} has a value containing CR, LF or NUL")
        if name.lower() not in HOST_FRAMED_HEADERS:
            headers.append((name, value))
    return status, headers, reply[pos:]


# ----------------------------------------------------------------------------------------------------------------
# Actor storage (docs/abi.md, "Actors"): the values of `sql_exec` (params and results), the options and result of
# `kv_list`. Encoders take trusted host data; decoders take guest bytes and raise ValueError naming the offset.
# The section is appended whole, its imports with it.

from collections.abc import Iterable, Sequence  # noqa: E402
from typing import NamedTuple  # noqa: E402

__all__ += [
    "SqlValue",
    "SqlResult",
    "ListOptions",
    "SQL_NULL",
    "SQL_INTEGER",
    "SQL_REAL",
    "SQL_TEXT",
    "SQL_BLOB",
    "encode_sql_values",
    "decode_sql_values",
    "encode_sql_result",
    "decode_sql_result",
    "encode_list_options",
    "decode_list_options",
    "encode_kv_entries",
    "decode_kv_entries",
]

#: One SQL value as Python holds it: NULL, INTEGER (i64), REAL, TEXT, BLOB.
SqlValue = None | int | float | str | bytes

SQL_NULL: Final = 0
SQL_INTEGER: Final = 1
SQL_REAL: Final = 2
SQL_TEXT: Final = 3
SQL_BLOB: Final = 4

_U32: Final = struct.Struct("<I")
_I64: Final = struct.Struct("<q")
_F64: Final = struct.Struct("<d")
_TAG_I64: Final = struct.Struct("<Bq")
_TAG_F64: Final = struct.Struct("<Bd")
_TAG_LEN: Final = struct.Struct("<BI")
_SQL_RESULT_HEAD: Final = struct.Struct("<IIIIq")  # column_count, row_count, changes, reserved (0), last_insert_rowid
_LIST_OPTIONS_HEAD: Final = struct.Struct("<IIIII")  # limit, flags, prefix_len, start_len, end_len
_ENTRY_HEAD: Final = struct.Struct("<II")  # key_len, value_len
_LIST_REVERSE: Final = 1
_NULL_TAG: Final = bytes([SQL_NULL])
_I64_MIN: Final = -(1 << 63)
_I64_MAX: Final = (1 << 63) - 1


class SqlResult(NamedTuple):
    """A decoded `sql_exec` result."""

    columns: list[str]
    rows: list[list[SqlValue]]
    changes: int
    last_insert_rowid: int


class ListOptions(NamedTuple):
    """Decoded `kv_list` options: empty `prefix`, `start` or `end` means no bound; `limit` 0 means no limit."""

    limit: int
    reverse: bool
    prefix: bytes
    start: bytes
    end: bytes


def _encode_values_into(out: list[bytes], values: Iterable[SqlValue]) -> None:
    """Append the tagged encoding of each value to `out`."""
    for value in values:
        if value is None:
            out.append(_NULL_TAG)
        elif isinstance(value, bool | int):  # bool is an int to SQLite too
            if not _I64_MIN <= value <= _I64_MAX:
                raise ValueError(f"integer {value} does not fit in an i64")
            out.append(_TAG_I64.pack(SQL_INTEGER, value))
        elif isinstance(value, float):
            out.append(_TAG_F64.pack(SQL_REAL, value))
        elif isinstance(value, str):
            data = value.encode()
            out.append(_TAG_LEN.pack(SQL_TEXT, len(data)))
            out.append(data)
        elif isinstance(value, bytes | bytearray | memoryview):
            out.append(_TAG_LEN.pack(SQL_BLOB, len(value)))
            out.append(bytes(value))
        else:
            raise ValueError(f"not an SQL value: {type(value).__name__}")


def encode_sql_values(values: Sequence[SqlValue]) -> bytes:
    """Encode `sql_exec` params: `u32 count`, then each value tagged (docs/abi.md, "Actors").

    Raises:
        ValueError: a value is not None, int (i64), float, str or bytes.
    """
    out = [_U32.pack(len(values))]
    _encode_values_into(out, values)
    return b"".join(out)


def _decode_value(data: bytes, pos: int, what: str) -> tuple[SqlValue, int]:
    """One tagged value at `pos` and the offset after it; `what` names it in errors ("param 2")."""
    end = len(data)
    if pos >= end:
        raise ValueError(f"{what}: the data ends at offset {pos}, before its tag")
    tag = data[pos]
    pos += 1
    if tag == SQL_NULL:
        return None, pos
    if tag in (SQL_INTEGER, SQL_REAL):
        if pos + 8 > end:
            kind = "INTEGER" if tag == SQL_INTEGER else "REAL"
            raise ValueError(f"{what}: an 8-byte {kind} at offset {pos} runs past the end ({end} bytes)")
        value: SqlValue = (_I64 if tag == SQL_INTEGER else _F64).unpack_from(data, pos)[0]
        return value, pos + 8
    if tag in (SQL_TEXT, SQL_BLOB):
        if pos + 4 > end:
            raise ValueError(f"{what}: the length at offset {pos} runs past the end ({end} bytes)")
        (length,) = _U32.unpack_from(data, pos)
        pos += 4
        if pos + length > end:
            raise ValueError(f"{what}: {length} bytes at offset {pos} run past the end ({end} bytes)")
        raw = data[pos : pos + length]
        if tag == SQL_BLOB:
            return bytes(raw), pos + length
        try:
            return bytes(raw).decode(), pos + length
        except UnicodeDecodeError as exc:
            raise ValueError(f"{what}: TEXT at offset {pos} is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    raise ValueError(f"{what}: unknown tag {tag} at offset {pos - 1} (expected 0-4)")


def decode_sql_values(data: bytes) -> list[SqlValue]:
    """Decode `sql_exec` params (empty data means none): the inverse of `encode_sql_values`.

    Raises:
        ValueError: the count or a value runs past the end, a tag is unknown, a TEXT is not UTF-8, or bytes are left
            over after the last value. The message gives the offset.
    """
    if not data:
        return []
    if len(data) < 4:
        raise ValueError(f"params of {len(data)} bytes are shorter than their 4-byte count")
    (count,) = _U32.unpack_from(data, 0)
    values: list[SqlValue] = []
    pos = 4
    for i in range(count):
        value, pos = _decode_value(data, pos, f"param {i + 1} of {count}")
        values.append(value)
    if pos != len(data):
        raise ValueError(f"params: {len(data) - pos} bytes left over at offset {pos}, after the last of {count} values")
    return values


def encode_sql_result(
    columns: Sequence[str], rows: Sequence[Sequence[SqlValue]], changes: int, last_rowid: int
) -> bytes:
    """Encode a `sql_exec` result: the 24-byte head, the column names, then the rows (docs/abi.md, "Actors").

    Args:
        columns: the result's column names (empty for a statement that returns no rows).
        rows: the rows, each with one value per column.
        changes: rows the statement inserted, updated or deleted.
        last_rowid: the connection's last insert rowid.

    Raises:
        ValueError: a row has the wrong number of values, or a value is not an SQL value.
    """
    ncols = len(columns)
    out = [_SQL_RESULT_HEAD.pack(ncols, len(rows), changes, 0, last_rowid)]
    for name in columns:
        data = name.encode()
        out.append(_U32.pack(len(data)))
        out.append(data)
    for row in rows:
        if len(row) != ncols:
            raise ValueError(f"a row of {len(row)} values in a result of {ncols} columns")
        _encode_values_into(out, row)
    return b"".join(out)


def decode_sql_result(data: bytes) -> SqlResult:
    """Decode a `sql_exec` result (for tests and tools): the inverse of `encode_sql_result`.

    Raises:
        ValueError: as `decode_sql_values`, for the head, a column name or a value.
    """
    if len(data) < _SQL_RESULT_HEAD.size:
        raise ValueError(f"an SQL result of {len(data)} bytes is shorter than its {_SQL_RESULT_HEAD.size}-byte head")
    ncols, nrows, changes, reserved, last_rowid = _SQL_RESULT_HEAD.unpack_from(data, 0)
    if reserved != 0:
        raise ValueError(f"the reserved field at offset 12 is {reserved}, expected 0")
    pos = _SQL_RESULT_HEAD.size
    columns: list[str] = []
    for i in range(ncols):
        if pos + 4 > len(data):
            raise ValueError(f"column {i + 1}: the name's length at offset {pos} runs past the end ({len(data)} bytes)")
        (length,) = _U32.unpack_from(data, pos)
        pos += 4
        if pos + length > len(data):
            raise ValueError(f"column {i + 1}: {length} bytes at offset {pos} run past the end ({len(data)} bytes)")
        try:
            columns.append(data[pos : pos + length].decode())
        except UnicodeDecodeError:
            raise ValueError(f"column {i + 1}: the name at offset {pos} is not UTF-8") from None
        pos += length
    rows: list[list[SqlValue]] = []
    for r in range(nrows):
        row: list[SqlValue] = []
        for c in range(ncols):
            value, pos = _decode_value(data, pos, f"row {r + 1} column {c + 1}")
            row.append(value)
        rows.append(row)
    if pos != len(data):
        raise ValueError(f"SQL result: {len(data) - pos} bytes left over at offset {pos}, after the last row")
    return SqlResult(columns, rows, changes, last_rowid)


def encode_list_options(
    limit: int = 0, reverse: bool = False, prefix: bytes = b"", start: bytes = b"", end: bytes = b""
) -> bytes:
    """Encode `kv_list` options: the 20-byte head, then prefix, start and end (docs/abi.md, "Actors").

    Raises:
        ValueError (struct.error): `limit` or a length does not fit in a u32.
    """
    head = _LIST_OPTIONS_HEAD.pack(limit, _LIST_REVERSE if reverse else 0, len(prefix), len(start), len(end))
    return b"".join((head, prefix, start, end))


def decode_list_options(data: bytes) -> ListOptions:
    """Decode `kv_list` options (guest bytes): the inverse of `encode_list_options`.

    Raises:
        ValueError: the data is shorter than the head, a flag other than bit 0 is set, or the lengths do not add up to
            the data's size.
    """
    size = _LIST_OPTIONS_HEAD.size
    if len(data) < size:
        raise ValueError(f"list options of {len(data)} bytes are shorter than their {size}-byte head")
    limit, flags, prefix_len, start_len, end_len = _LIST_OPTIONS_HEAD.unpack_from(data, 0)
    if flags & ~_LIST_REVERSE:
        raise ValueError(f"list options: unknown flags {flags:#x} at offset 4 (only bit 0, reverse, is defined)")
    if size + prefix_len + start_len + end_len != len(data):
        raise ValueError(
            f"list options: the lengths at offsets 8-19 ({prefix_len} + {start_len} + {end_len}) need "
            f"{size + prefix_len + start_len + end_len} bytes, got {len(data)}"
        )
    p = size + prefix_len
    s = p + start_len
    return ListOptions(limit, bool(flags), bytes(data[size:p]), bytes(data[p:s]), bytes(data[s:]))


def encode_kv_entries(entries: Sequence[tuple[bytes, bytes]]) -> bytes:
    """Encode a `kv_list` result: `u32 count`, then per entry `u32 key_len`, `u32 value_len`, the key, the value."""
    out = [_U32.pack(len(entries))]
    pack = _ENTRY_HEAD.pack
    for key, value in entries:
        out.append(pack(len(key), len(value)))
        out.append(key)
        out.append(value)
    return b"".join(out)


def decode_kv_entries(data: bytes) -> list[tuple[bytes, bytes]]:
    """Decode a `kv_list` result (for tests and tools): the inverse of `encode_kv_entries`.

    Raises:
        ValueError: the count or an entry runs past the end, or bytes are left over after the last entry.
    """
    if len(data) < 4:
        raise ValueError(f"entries of {len(data)} bytes are shorter than their 4-byte count")
    (count,) = _U32.unpack_from(data, 0)
    entries: list[tuple[bytes, bytes]] = []
    pos, end = 4, len(data)
    for i in range(count):
        if pos + 8 > end:
            raise ValueError(f"entry {i + 1} of {count}: its lengths at offset {pos} run past the end ({end} bytes)")
        klen, vlen = _ENTRY_HEAD.unpack_from(data, pos)
        pos += 8
        if pos + klen + vlen > end:
            raise ValueError(
                f"entry {i + 1} of {count}: {klen} + {vlen} bytes at offset {pos} run past the end ({end} bytes)"
            )
        entries.append((bytes(data[pos : pos + klen]), bytes(data[pos + klen : pos + klen + vlen])))
        pos += klen + vlen
    if pos != end:
        raise ValueError(f"entries: {end - pos} bytes left over at offset {pos}, after the last of {count} entries")
    return entries
