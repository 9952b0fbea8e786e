"""How manifest values are written and shown: size units and size strings, and values quoted in messages.

Owns the one spelling of sizes (`"64MiB"`: binary units only, case-sensitive) and the way a problem message shows
what the user wrote (`string "4"`, `boolean true`, long values cut short) and what they might have meant. Shared by
the spec types (`Address.parse`, `Route.parse`) and the parser. It must not read files or know the schema.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable
from datetime import date, datetime, time
from typing import Final

__all__ = [
    "GiB",
    "KiB",
    "MiB",
    "UNIT_LIST",
    "cut",
    "describe",
    "did_you_mean",
    "either",
    "join_key",
    "parse_size",
    "quote",
    "size_text",
    "toml_text",
    "type_name",
]

# Size units. Sizes in the manifest use only these binary units: "64MB" is refused rather than guessed at.
KiB: Final = 1024
MiB: Final = 1024 * KiB
GiB: Final = 1024 * MiB

UNIT_LIST: Final = "B, KiB, MiB or GiB"
_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
_SIZE: Final = re.compile(r"([0-9]+) ?([A-Za-z]*)")
_SIZE_UNITS: Final = {"B": 1, "KiB": KiB, "MiB": MiB, "GiB": GiB}


def parse_size(text: str) -> int:
    """`"64MiB"` -> 67108864. Raises ValueError with a message saying what to write instead."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f'expected a size such as "64MiB" (an integer and a unit: {UNIT_LIST}), got {quote(text)}')
    number, unit = int(match[1]), match[2]
    if unit in _SIZE_UNITS:
        return number * _SIZE_UNITS[unit]
    if not unit:
        raise ValueError(f"missing unit in {quote(text)}: write {number} (an integer, in bytes) or add {UNIT_LIST}")
    for known in _SIZE_UNITS:
        if unit.lower() == known.lower():
            raise ValueError(
                f'unit {quote(unit)} is not accepted (did you mean "{number}{known}"?): units are case-sensitive'
            )
    binary = {"k": "KiB", "m": "MiB", "g": "GiB"}.get(unit[0].lower())
    if binary is not None and unit.lower() in ("k", "kb", "m", "mb", "g", "gb"):
        raise ValueError(
            f'unit {quote(unit)} is not accepted: sizes use {UNIT_LIST} (powers of 1024), such as "{number}{binary}"'
        )
    raise ValueError(f"unknown unit {quote(unit)} in {quote(text)}: use {UNIT_LIST}")


def size_text(size: int) -> str:
    """67108864 -> `64MiB (67108864 bytes)`: a bound as a message shows it."""
    for unit, factor in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit} ({size} bytes)"
    return f"{size} byte" if size == 1 else f"{size} bytes"


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """` (did you mean "x"?)` for the closest candidate (case-insensitive matches first), or ""."""
    options = list(candidates)
    folded = [option for option in options if option.lower() == word.lower()]
    close = folded or difflib.get_close_matches(word, options, n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


def either(choices: tuple[str, ...]) -> str:
    """`"a" or "b"`, or `one of "a", "b", "c"`."""
    quoted = [quote(choice) for choice in choices]
    return f"{quoted[0]} or {quoted[1]}" if len(quoted) == 2 else f"one of {', '.join(quoted)}"


def join_key(where: str, name: str) -> str:
    """The dotted key path of `name` inside `where`, quoting names that are not bare TOML keys."""
    part = name if _BARE_KEY.fullmatch(name) else quote(name)
    return f"{where}.{part}" if where else part


def quote(value: object) -> str:
    """Quote text the way TOML writes a basic string; long values are cut short."""
    return json.dumps(cut(str(value)), ensure_ascii=False)


def cut(text: str) -> str:
    """`text`, cut short with "..." past 60 characters."""
    return text[:57] + "..." if len(text) > 60 else text


def toml_text(value: object) -> str:
    """A scalar as TOML would write it, cut short when long."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return cut(repr(value))


def type_name(value: object) -> str:
    """The TOML type of a value tomllib produced: `integer`, `string`, `table`..."""
    # bool first: it is an int subclass.
    for kind, name in (
        (bool, "boolean"),
        (int, "integer"),
        (float, "float"),
        (str, "string"),
        (list, "array"),
        (dict, "table"),
        (datetime, "datetime"),  # before date: datetime is a date subclass
        (date, "date"),
        (time, "time"),
    ):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def describe(value: object) -> str:
    """`boolean true`, `string "4"`, `array`: the TOML type, plus the value when it is short."""
    name = type_name(value)
    return name if isinstance(value, list | dict) else f"{name} {toml_text(value)}"
