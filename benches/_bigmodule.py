"""A huge but valid micromono guest, for measuring what a large module costs to read, hash, compile and load.

`write_big_module(path)` writes a WebAssembly binary that behaves like `tests/fixtures/echo.wat` (ABI v2: HTTP
requests are answered 200 with the request's body, CALL payloads echoed, MESSAGEs counted) and carries `functions`
more functions of straight-line integer code, sized so the file is about `megabytes` MiB. Every extra function is
exported (`f0`, `f1`, ...), as in a library-like module, so whatever walks a module's exports (wasmtime's export
trampolines, micromono's ABI analysis) walks them all. The constants in the code depend on `salt`, so modules with
different salts have different bytes (a different sha256, so no compile cache entry is shared) and the same size
and shape.

The binary is encoded here directly (no WAT text: tens of MiB of it would take longer to parse than to write).
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

__all__ = ["write_big_module"]

_MIB = 1 << 20


def write_big_module(path: Path, *, functions: int = 12_000, megabytes: int = 70, salt: int = 0) -> None:
    """Write an echo service with `functions` extra exported functions, about `megabytes` MiB in all, to `path`.

    Each extra function is `(func (param i32) (result i32))` computing `((x + a) ^ b)` over and over with constants
    taken from `salt` (and the first from its index): code the compiler cannot fold away. Writes a temporary file
    next to `path` and renames it into place, so a watcher never sees half a module.
    """
    if functions < 1 or megabytes < 0:
        raise ValueError("functions must be >= 1 and megabytes >= 0")
    body_bytes = max(8, megabytes * _MIB // functions)
    seed = hashlib.sha256(f"micromono-bigmodule:{salt}".encode()).digest()
    # Types: 0 () -> i32, 1 (i32) -> i32, 2 (i32 i32) -> i64.
    types = _vec([b"\x60\x00\x01\x7f", b"\x60\x01\x7f\x01\x7f", b"\x60\x02\x7f\x7f\x01\x7e"])
    # Functions: 0 mm_abi_version, 1 mm_inbox, 2 mm_handle, 3 messages, then the fillers.
    core_types = [0, 1, 2, 0]
    funcs = _vec([_u32(t) for t in core_types] + [b"\x01"] * functions)
    memory = _vec([b"\x00\x02"])  # one memory, 2 pages minimum, no maximum
    globals_ = _vec([b"\x7f\x01\x41\x00\x0b"])  # (global (mut i32) (i32.const 0)): messages received
    exports = [_export("memory", 2, 0)]
    for index, name in enumerate(("mm_abi_version", "mm_inbox", "mm_handle", "messages")):
        exports.append(_export(name, 0, index))
    exports += [_export(f"f{i}", 0, len(core_types) + i) for i in range(functions)]
    bodies = [_body(b"", _ABI_VERSION), _body(b"\x01\x01\x7f", _INBOX), _body(b"\x01\x02\x7f", _HANDLE),
              _body(b"", _MESSAGES)]  # fmt: skip
    sections = [
        _section(1, types),
        _section(3, funcs),
        _section(5, memory),
        _section(6, globals_),
        _section(7, _vec(exports)),
    ]
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as out:
        out.write(b"\x00asm\x01\x00\x00\x00")
        out.write(b"".join(sections))
        # The code section, written a function at a time: tens of MiB need not be held at once.
        template, at = _template(seed, body_bytes)
        content = _u32(len(core_types) + functions) + b"".join(bodies)
        out.write(b"\x0a" + _u32(len(content) + len(template) * functions) + content)
        for i in range(functions):
            out.write(_filler(template, at, i))
    tmp.replace(path)


# --- the echo service, as in tests/fixtures/echo.wat -------------------------------------------------------------

_ABI_VERSION = b"\x41\x02"  # i32.const 2
_MESSAGES = b"\x23\x00"  # global.get 0
# (param $n i32) (local $need i32): the inbox is at 1024; memory grows to fit $n bytes after it.
_INBOX = (
    b"\x20\x00\x41\x80\x08\x6a\x21\x01"  # need = n + 1024
    b"\x20\x01\x3f\x00\x41\x10\x74\x4b"  # need > memory.size << 16
    b"\x04\x40"  # if
    b"\x20\x01\x3f\x00\x41\x10\x74\x6b\x41\x10\x76\x41\x01\x6a"  # ((need - (size << 16)) >> 16) + 1
    b"\x40\x00\x41\x7f\x46"  # memory.grow(...) == -1
    b"\x04\x40\x41\x00\x0f\x0b"  # if: return 0
    b"\x0b"  # end if
    b"\x41\x80\x08"  # 1024
)
# (param $kind i32) (param $len i32) (local $body_len i32) (local $reply i32)
_HANDLE = (
    b"\x20\x00\x41\x03\x46\x04\x40"  # if kind == 3 (message):
    b"\x23\x00\x41\x01\x6a\x24\x00\x42\x00\x0f\x0b"  # messages += 1; return 0
    b"\x20\x00\x41\x02\x46\x04\x40"  # if kind == 2 (call): return (1024 << 32) | len
    b"\x42\x80\x08\x42\x20\x86\x20\x01\xad\x84\x0f\x0b"
    b"\x41\x8c\x08\x28\x02\x00\x21\x02"  # body_len = i32.load(1036)
    b"\x41\xfc\x07\x20\x01\x6a\x20\x02\x6b\x21\x03"  # reply = 1020 + len - body_len (the 4-byte head's place)
    b"\x20\x03\x41\xc8\x01\x3b\x00\x00"  # i32.store16(reply, 200): the status
    b"\x20\x03\x41\x00\x3b\x00\x02"  # i32.store16(reply + 2, 0): no headers
    b"\x20\x03\xad\x42\x20\x86\x20\x02\x41\x04\x6a\xad\x84"  # (reply << 32) | (body_len + 4)
)


def _filler(template: bytes, at: int, index: int) -> bytes:
    """One extra function's body entry: `template` with its first constant (5 bytes at `at`) made from `index`,
    so no two functions have the same bytes."""
    return template[:at] + _leb5((index * 2654435761) & 0x7FFFFFFF) + template[at + 5 :]


def _template(seed: bytes, size: int) -> tuple[bytes, int]:
    """The body entry (size and code) every extra function shares but for its first constant, and where that
    constant is: `size` bytes or a few more, in fixed 14-byte steps (twice `i32.const` with a 5-byte LEB128
    operand, then the operation)."""
    steps = max(1, (size - 4) // 14)
    a, b = struct.unpack_from("<II", seed)
    code = bytearray(b"\x20\x00")  # local.get 0
    for step in range(steps):
        a = (a * 1103515245 + 12345 + step) & 0x7FFFFFFF
        b = (b * 69069 + 1) & 0x7FFFFFFF
        code += b"\x41" + _leb5(a) + b"\x6a"  # i32.const a; i32.add
        code += b"\x41" + _leb5(b) + b"\x73"  # i32.const b; i32.xor
    entry = _body(b"", bytes(code))
    return entry, len(entry) - 1 - len(code) + 3  # before the end opcode: the code; in it: local.get 0, i32.const


def _body(locals_: bytes, code: bytes) -> bytes:
    entry = (locals_ or b"\x00") + code + b"\x0b"
    return _u32(len(entry)) + entry


def _leb5(value: int) -> bytes:
    """A signed LEB128 of a value in [0, 2**31), padded to 5 bytes so every step has one size."""
    out = bytearray()
    for _ in range(4):
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value & 0x7F)  # the 5th byte: at most 3 bits left, and the sign bit (0x40) is clear
    return bytes(out)


def _u32(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _vec(items: list[bytes]) -> bytes:
    return _u32(len(items)) + b"".join(items)


def _section(section_id: int, content: bytes) -> bytes:
    return bytes([section_id]) + _u32(len(content)) + content


def _export(name: str, kind: int, index: int) -> bytes:
    encoded = name.encode()
    return _u32(len(encoded)) + encoded + bytes([kind]) + _u32(index)
