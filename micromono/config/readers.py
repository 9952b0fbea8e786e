"""Reading one TOML value into a typed value, or recording why it cannot be one.

`ValueReader` holds the checks every table of the manifest shares: integers that refuse booleans, durations in
seconds, sizes with units, choices with did-you-mean, paths made absolute against the manifest's directory. Each
reader either returns the value or records a `(key, message)` problem and raises `Invalid`, so that the parser can
carry on and report every problem at once. This module must not know the schema (which keys a table holds: that
is `parser.py`) nor touch the filesystem (paths are made absolute lexically).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from .spec import CPU_CHOICES, MAX_CPU, MAX_LOG_RATE, MAX_SLICE, MIN_SLICE
from .text import UNIT_LIST, describe, did_you_mean, either, parse_size, quote, size_text, toml_text

__all__ = ["Invalid", "ValueReader", "absolute_path"]


class Invalid(Exception):
    """A value was rejected. Its problems are already recorded on the reader."""


def absolute_path(base_dir: Path, path: str) -> Path:
    # Lexical on purpose (no Path.resolve()): resolving symlinks would touch the filesystem, and `load_config`
    # reads exactly one file. "~" is not expanded.
    return Path(os.path.normpath(base_dir / path))


class ValueReader:
    """Reads scalar values, recording each problem under its key path instead of stopping at the first.

    Args:
        base_dir: the manifest's directory, against which relative paths are made absolute.
    """

    def __init__(self, *, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.problems: list[tuple[str, str]] = []

    def reject(self, key: str, message: str) -> Invalid:
        """Record that `key` is wrong and why; return the exception for the caller to raise."""
        self.problems.append((key, message))
        return Invalid()

    def array(self, key: str, value: object, name: str, example: str) -> list[Any]:
        if not isinstance(value, list):
            hint = f" (write {name} = [{quote(value)}])" if isinstance(value, str) else f" such as [{example}]"
            raise self.reject(key, f"expected an array of strings{hint}, got {describe(value)}")
        return value

    def path(self, key: str, value: object, example: str) -> Path:
        if not isinstance(value, str):
            raise self.reject(key, f"expected a string path such as {example}, got {describe(value)}")
        if not value or "\0" in value:
            raise self.reject(key, f"expected a path such as {example}, got {quote(value)}")
        return absolute_path(self.base_dir, value)

    def choice(self, key: str, value: object, choices: tuple[str, ...]) -> str:
        options = either(choices)
        if not isinstance(value, str):
            raise self.reject(key, f"expected a string, {options}, got {describe(value)}")
        if value not in choices:
            raise self.reject(key, f"expected {options}, got {quote(value)}{did_you_mean(value, choices)}")
        return value

    def cpu(self, key: str, value: object) -> int | str:
        expected = f'expected "auto", "any" or a CPU number 0..{MAX_CPU}'
        if isinstance(value, str):
            if value in CPU_CHOICES:
                return value
            raise self.reject(key, f"{expected}, got {quote(value)}{did_you_mean(value, CPU_CHOICES)}")
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_CPU:
            shown = value if isinstance(value, int) and not isinstance(value, bool) else describe(value)
            raise self.reject(key, f"{expected}, got {shown}")
        return value

    def boolean(self, key: str, value: object) -> bool:
        if not isinstance(value, bool):
            raise self.reject(key, f"expected true or false, got {describe(value)}")
        return value

    def fraction(self, key: str, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            number = not isinstance(value, bool) and isinstance(value, int | float)
            shown = toml_text(value) if number else describe(value)
            raise self.reject(key, f"expected a number > 0 and <= 1 (1 disables rollback), got {shown}")
        return float(value)

    def share(self, key: str, value: object) -> float:
        """A number from 0 to 1, both included (an integer or a float)."""
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            number = not isinstance(value, bool) and isinstance(value, int | float)
            shown = toml_text(value) if number else describe(value)
            raise self.reject(key, f"expected a number from 0 to 1, got {shown}")
        return float(value)

    def integer(self, key: str, value: object, lower: int, upper: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.reject(key, f"expected an integer {lower}..{upper}, got {describe(value)}")
        if value < lower:
            raise self.reject(key, f"expected an integer >= {lower}, got {value}")
        if value > upper:
            raise self.reject(key, f"expected an integer <= {upper}, got {value}")
        return value

    def slice(self, key: str, value: object) -> float:
        seconds = self.seconds(key, value, upper=MAX_SLICE)
        if seconds < MIN_SLICE:
            raise self.reject(key, f"expected a number of seconds >= {MIN_SLICE:g}, got {toml_text(value)}")
        return seconds

    def seconds(self, key: str, value: object, *, upper: float) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.reject(key, f"expected a number of seconds, got {describe(value)}")
        try:
            seconds = float(value)
        except OverflowError:  # a TOML integer too large for a float
            seconds = math.inf
        if not math.isfinite(seconds):
            raise self.reject(key, f"expected a finite number of seconds, got {toml_text(value)}")
        if seconds <= 0:
            raise self.reject(key, f"expected a number of seconds > 0, got {toml_text(value)}")
        if seconds > upper:
            raise self.reject(key, f"expected a number of seconds <= {upper:g}, got {toml_text(value)}")
        return seconds

    def lines_per_second(self, key: str, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.reject(key, f"expected a number of lines per second, got {describe(value)}")
        try:
            rate = float(value)
        except OverflowError:  # a TOML integer too large for a float
            rate = math.inf
        if math.isnan(rate):
            raise self.reject(key, f"expected a number of lines per second, got {toml_text(value)}")
        if rate <= 0:
            # 0 is not "unlimited": an unbounded guest log is what this setting exists to prevent.
            raise self.reject(
                key,
                f"expected a number of lines per second > 0, got {toml_text(value)} "
                f"(there is no unlimited: {MAX_LOG_RATE:.0f} lets nearly everything through)",
            )
        if rate > MAX_LOG_RATE:
            raise self.reject(
                key, f"expected a number of lines per second <= {MAX_LOG_RATE:.0f}, got {toml_text(value)}"
            )
        return rate

    def size(self, key: str, value: object, *, lower: int, upper: int | None) -> int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise self.reject(
                key,
                f'expected a size: an integer number of bytes or a string such as "64MiB" '
                f"(units {UNIT_LIST}), got {describe(value)}",
            )
        try:
            size = parse_size(value) if isinstance(value, str) else value
        except ValueError as exc:
            raise self.reject(key, str(exc)) from None
        shown = f"{quote(value)} ({size} bytes)" if isinstance(value, str) else str(value)
        if size < lower:
            raise self.reject(key, f"expected a size >= {size_text(lower)}, got {shown}")
        if upper is not None and size > upper:
            raise self.reject(key, f"expected a size <= {size_text(upper)}, got {shown}")
        return size
