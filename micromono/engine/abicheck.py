"""The static ABI check: what a compiled module's exports and imports say about it (docs/abi.md).

Owns the list of exports the guest ABI requires or allows (with their types) and of the host imports micromono
provides, and `analyse`, which reads a module's exports and imports against them. It must not instantiate or run
anything: what needs a running instance (the `mm_abi_version` answer) is the instance's check.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any, Final

import wasmtime

from .ffi import _HOST_MODULE, _WASI_MODULE, ExportTypeList, capi

__all__ = ["HOST_IMPORTS", "AbiReport", "analyse"]

# The exports docs/abi.md requires, with their types.
_REQUIRED_FUNCS: Final = {
    "mm_abi_version": ((), ("i32",)),
    "mm_inbox": (("i32",), ("i32",)),
    "mm_handle": (("i32", "i32"), ("i64",)),
}
# Optional exports (docs/abi.md, "Hot swap"), with their types when present.
_OPTIONAL_FUNCS: Final = {
    "_initialize": ((), ()),
    "mm_health": ((), ("i32",)),
    "mm_snapshot": ((), ("i64",)),
    "mm_restore": (("i32",), ("i32",)),
    "mm_schema_version": ((), ("i32",)),
    "mm_migrate": (("i32",), ("i32",)),
}
#: The `micromono.*` imports the host provides (the engine's host imports define each).
HOST_IMPORTS: Final = frozenset(
    {
        "call", "take_reply", "send", "log", "last_error", "trace_context",
        "actor_key", "kv_get", "kv_put", "kv_delete", "kv_list", "sql_exec", "alarm_set", "alarm_get", "alarm_delete",
        "ws_send", "ws_publish", "ws_close", "ws_tag",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class AbiReport:
    """What `analyse` found: `problems` (empty when the module follows the ABI) and its optional features."""

    problems: list[str]
    uses_wasi: bool
    has_health: bool
    can_snapshot: bool
    can_restore: bool
    has_schema_version: bool
    can_migrate: bool


def analyse(module: wasmtime.Module) -> AbiReport:
    """Check `module`'s exports and imports against docs/abi.md; every problem found, not just the first."""
    problems: list[str] = []
    exports = _exports_named(module, {"memory", *_REQUIRED_FUNCS, *_OPTIONAL_FUNCS})
    if not isinstance(exports.get("memory"), wasmtime.MemoryType):
        problems.append('it does not export its linear memory as "memory"')
    for required, funcs in ((True, _REQUIRED_FUNCS), (False, _OPTIONAL_FUNCS)):
        for name, (params, results) in funcs.items():
            ty = exports.get(name)
            want = f"func ({', '.join(params)}) -> ({', '.join(results)})"
            if ty is None:
                if required:
                    problems.append(f"it does not export {name} ({want})")
            elif (
                not isinstance(ty, wasmtime.FuncType)
                or tuple(str(p) for p in ty.params) != params
                or tuple(str(r) for r in ty.results) != results
            ):
                problems.append(f"its export {name} is {_describe(ty)}, expected {want}")
    uses_wasi = False
    for imp in module.imports:
        if imp.module == _WASI_MODULE:
            uses_wasi = True
        elif imp.module != _HOST_MODULE or imp.name not in HOST_IMPORTS:
            problems.append(
                f"it imports {imp.module}.{imp.name}, which micromono does not provide "
                f"(available: micromono.{{{','.join(sorted(HOST_IMPORTS))}}} and {_WASI_MODULE}.*)"
            )
    return AbiReport(
        problems=problems,
        uses_wasi=uses_wasi,
        has_health="mm_health" in exports,
        can_snapshot="mm_snapshot" in exports,
        can_restore="mm_restore" in exports,
        has_schema_version="mm_schema_version" in exports,
        can_migrate="mm_migrate" in exports,
    )


def _describe(ty: Any) -> str:
    if isinstance(ty, wasmtime.FuncType):
        params = ", ".join(str(p) for p in ty.params)
        results = ", ".join(str(r) for r in ty.results)
        return f"func ({params}) -> ({results})"
    return type(ty).__name__.removesuffix("Type").lower()


def _exports_named(module: wasmtime.Module, names: set[str]) -> dict[str, Any]:
    """unstable: the types of `module`'s exports that are among `names`, by name.

    `Module.exports` wraps every export in Python objects, all alive at once: for a module of thousands of exports,
    enough new objects to set off the cyclic garbage collector, whose full collection holds the GIL (and so the
    event loop, whichever thread runs it) for a long time. Here each export's name is read through the C API and
    only the wanted ones are wrapped, so the objects made in between are freed as they go.
    """
    found: dict[str, Any] = {}
    exports = ExportTypeList()
    capi.wasmtime_module_exports(module.ptr(), ctypes.byref(exports.vec))
    vec = exports.vec
    name_of = capi.wasm_exporttype_name
    for i in range(vec.size):
        ptr = vec.data[i]
        name = name_of(ptr).contents
        text = ctypes.string_at(name.data, name.size).decode("utf-8", "replace")
        if text in names:
            found[text] = wasmtime.ExportType._from_ptr(ptr, exports).type
    return found
