"""Which path this process runs: compiled or pure Python. Decided once, here, at import; `micromono/__init__.py`
and the engine package both ask this module and nothing else.

The compiled path has two parts, both built from micromono's own sources: `micromono/_speedups.c`, the guest call
itself and the compiled path's epoch ticker (built by `pip install`, see setup.py), and the modules every request
and call passes through, compiled by mypyc into `micromono/_compiled/` (`scripts/build_compiled.py`, which a
checkout runs by hand or through `make`, and a wheel's build runs by itself: setup.py). It is a
build-time fact, not a setting: the compiled path is used when both parts were built and match the sources next
to this file, pure Python otherwise. Both parts or neither, because the test suite runs those two configurations
(`make test`) and no mix of them. A build that exists but cannot be used (stale, partial, made for another Python)
is left alone and says why in one warning: results never come from code other than the sources.

One setting forces pure Python: `MICROMONO_PURE=1` (for measuring the pure path, or where a build is known to be
unwanted). This module must not import the rest of micromono: it runs before the package's modules are found.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sysconfig
import warnings
from pathlib import Path
from types import ModuleType
from typing import Final

__all__ = [
    "COMPILED",
    "FORCE_PURE",
    "PATH_SUMMARY",
    "compiled_path",
    "compiled_status",
    "speedups",
    "speedups_status",
]

_HERE: Final = Path(__file__).resolve().parent
_COMPILED: Final = _HERE / "_compiled"
_SPEEDUPS_SOURCE: Final = _HERE / "_speedups.c"
# A checkout (or an unpacked sdist) builds the compiled path where it is; an installed wheel is rebuilt whole. How to
# tell: a wheel does not carry the C source (pyproject.toml's exclude-package-data), a source tree does. An installed
# copy says why a part is missing in a few words, and what to do once, at the end (`_choose`).
_CHECKOUT: Final = _SPEEDUPS_SOURCE.is_file()
_REBUILD: Final = (
    "run: make install, or pip install -e . and python scripts/build_compiled.py"
    if _CHECKOUT
    else "reinstall micromono"
)
_REBUILD_COMPILED: Final = "run: python scripts/build_compiled.py" if _CHECKOUT else "reinstall micromono"
_NOT_BUILT_SPEEDUPS: Final = (
    f"it needs a C compiler and the Python headers; {_REBUILD}"
    if _CHECKOUT
    else "this installation was built without it"
)
_NOT_BUILT_COMPILED: Final = _REBUILD_COMPILED if _CHECKOUT else "this installation was built without it"
_REINSTALL: Final = (
    "to use it, build and install micromono again where a C compiler and the Python headers are found "
    "(pip install -v shows why its build left them out)"
)

#: The environment variable that forces pure Python when set to 1.
FORCE_PURE: Final = "MICROMONO_PURE"


def compiled_status() -> str | None:
    """Why the mypyc-compiled modules cannot be used, or None when they are built and current.

    The modules are the ones `_compiled/sources.sha256` lists (the build's own record), each with the digest of the
    source it was built from.
    """
    manifest = _COMPILED / "sources.sha256"
    try:
        lines = manifest.read_text().splitlines()
    except OSError:
        return f"{_COMPILED} is not built ({_NOT_BUILT_COMPILED})"
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    for line in lines:
        digest, _, name = line.partition("  ")
        try:
            current = hashlib.sha256((_HERE / name).read_bytes()).hexdigest()
        except OSError:
            return f"{name}, compiled into {_COMPILED}, is missing from {_HERE}"
        if current != digest:
            return f"{_HERE / name} changed after {_COMPILED} was built ({_REBUILD_COMPILED})"
        built = Path(name).with_suffix(suffix)  # a module of a compiled package is in its own directory
        if not (_COMPILED / built).is_file():  # e.g. built by another Python version
            return f"{_COMPILED} has no {built} for this Python ({_REBUILD_COMPILED})"
    return None if lines else f"{manifest} is empty ({_REBUILD_COMPILED})"


def _load_speedups() -> tuple[ModuleType | None, str | None]:
    """micromono._speedups if it was built from the `_speedups.c` next to this file, else None and why not."""
    try:
        module = importlib.import_module("micromono._speedups")
    except ImportError:
        return None, f"micromono._speedups is not built ({_NOT_BUILT_SPEEDUPS})"
    try:
        source = _SPEEDUPS_SOURCE.read_bytes()
    except OSError:  # an installed copy without its C source: the build is all there is
        return module, None
    if getattr(module, "SOURCE_SHA256", "") != hashlib.sha256(source).hexdigest():
        return None, f"{_SPEEDUPS_SOURCE} changed after micromono._speedups was built ({_REBUILD})"
    return module, None


#: micromono._speedups when it is built and current, whichever path the process runs: an Engine made with
#: `compiled=True` uses it (the tests compare both paths in one process).
_loaded: Final = _load_speedups()
speedups: Final = _loaded[0]
_speedups_problem: Final = _loaded[1]


def speedups_status() -> str | None:
    """Why micromono._speedups cannot be used, or None when it is built and current."""
    return _speedups_problem


def _choose() -> tuple[bool, str]:
    if os.environ.get(FORCE_PURE) == "1":
        return False, f"off ({FORCE_PURE}=1)"
    problems = [problem for problem in (speedups_status(), compiled_status()) if problem is not None]
    if problems:
        why = "; ".join(problems if _CHECKOUT else [*problems, _REINSTALL])
        warnings.warn(
            f"micromono runs in pure Python: the compiled path is not usable: {why} "
            f"(set {FORCE_PURE}=1 to choose pure Python and silence this warning)",
            stacklevel=3,
        )
        return False, f"off, not usable: {why}"
    return True, "in use (micromono._speedups and the mypyc-compiled modules, built from these sources)"


#: Whether this process runs the compiled path (both parts), and that said in a few words, with why when it is off
#: ("in use (...)", "off (MICROMONO_PURE=1)", "off, not usable: ..."): what `micromono version` and `check` print.
_chosen: Final = _choose()
COMPILED: Final = _chosen[0]
PATH_SUMMARY: Final = _chosen[1]

#: The directory of the mypyc-compiled modules when the compiled path is in use (`__init__` puts it first).
compiled_path: Final = str(_COMPILED) if COMPILED else None
