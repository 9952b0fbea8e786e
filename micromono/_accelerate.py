"""Which hot-path modules run compiled: the switch behind `MICROMONO_SPEEDUPS=1`, read once at import.

The optional compiled path has two parts, both built from micromono's own sources and both off by default:
`micromono/_speedups.c`, the guest call itself (engine.py switches to it), and the modules every request and
call passes through, compiled by mypyc into `micromono/_compiled/` (`scripts/build_compiled.py`). This module
decides whether the second part is used: only when `MICROMONO_SPEEDUPS=1`, and only if the build is current, that
is, `_compiled/sources.sha256` matches the `.py` files next to this one and an extension module for this Python is
there for each. A stale, foreign or missing build leaves the pure modules in place and says so once in a warning:
results never come from code other than the sources.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
import warnings
from pathlib import Path
from typing import Final

__all__ = ["compiled_path", "compiled_status", "REQUESTED"]

_HERE: Final = Path(__file__).resolve().parent
_COMPILED: Final = _HERE / "_compiled"

#: Whether the compiled path was asked for.
REQUESTED: Final = os.environ.get("MICROMONO_SPEEDUPS") == "1"


def compiled_status() -> str | None:
    """Why the compiled modules cannot be used, or None when they are built and current."""
    manifest = _COMPILED / "sources.sha256"
    try:
        lines = manifest.read_text().splitlines()
    except OSError:
        return f"{_COMPILED} is not built (run: python scripts/build_compiled.py)"
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    for line in lines:
        digest, _, name = line.partition("  ")
        try:
            current = hashlib.sha256((_HERE / name).read_bytes()).hexdigest()
        except OSError:
            return f"{name}, compiled into {_COMPILED}, is missing from {_HERE}"
        if current != digest:
            return f"{_HERE / name} changed after {_COMPILED} was built (run: python scripts/build_compiled.py)"
        built = Path(name).with_suffix(suffix)  # a module of a compiled package is in its own directory
        if not (_COMPILED / built).is_file():  # e.g. built by another Python version
            return f"{_COMPILED} has no {built} for this Python (run: python scripts/build_compiled.py)"
    return None if lines else f"{manifest} is empty (run: python scripts/build_compiled.py)"


def _choose() -> str | None:
    if not REQUESTED:
        return None
    problem = compiled_status()
    if problem is not None:
        warnings.warn(f"MICROMONO_SPEEDUPS=1: running the hot-path modules in pure Python: {problem}", stacklevel=3)
        return None
    return str(_COMPILED)


#: The directory of the compiled modules, when they are to be used.
compiled_path: Final = _choose()
