"""What pyproject.toml cannot declare: the compiled path and the SDK copy. Everything else is in pyproject.toml.

`pip install .`, `pip wheel .` and `python -m build` build, into the wheel:

- micromono/_speedups.c, the C extension. `optional=True`: without a C compiler the build skips it. The sha256 of
  the source is compiled in (`SOURCE_SHA256`), so that micromono/_accelerate.py uses the extension only while it
  is current. Declared here because setuptools still calls `[tool.setuptools] ext-modules` experimental.
- micromono/_compiled/, the hot-path modules compiled by mypyc, with its `sources.sha256`: the same layout and the
  same code as `make install`, built by scripts/build_compiled.py (`build_or_explain`). Also optional: without mypy,
  a C compiler or the Python headers the wheel has no compiled modules and the build says why.
- micromono/sdk/, a copy of sdk/c, sdk/zig, sdk/rust and sdk/assemblyscript (`SDKS`, without node_modules or build
  outputs): what the build files `micromono new` writes compile against (micromono/scaffold.py's `find_sdk`).

Either compiled part may be missing from a wheel built without a compiler; micromono then runs in pure Python and
says why in one warning at import. The wheel is tagged for the platform and Python it was built with (cp311,
linux_x86_64) either way: an untagged fallback wheel on an index would be chosen over building the compiled path
from the sdist on every platform without its own wheel.

An editable install (`pip install -e .`, as `make install` does) builds only the C extension, in place: the
checkout's micromono/_compiled/ is `make`'s (it rebuilds it when a source changes, which an editable install
cannot know) and its SDK is sdk/ itself.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SOURCE = "micromono/_speedups.c"
DIGEST = hashlib.sha256((ROOT / SOURCE).read_bytes()).hexdigest()
#: The SDKs `micromono new` has templates for (micromono/scaffold.py's LANGUAGES), copied into the wheel.
SDKS = ("c", "zig", "rust", "assemblyscript")
#: Not SDK sources: npm's install (`make` in an AssemblyScript service runs `npm ci` into the installed copy when it
#: needs the compiler), and what the languages' own tools build next to them.
SDK_IGNORE = ("node_modules", "build", "target", "zig-cache", ".zig-cache", "zig-out", "__pycache__", "*.wasm")


def _warn(message: str) -> None:
    """A build warning on stderr (pip shows it with -v; `python -m build` always)."""
    print(f"\nWARNING micromono: {message}\n", file=sys.stderr, flush=True)


def _build_compiled() -> ModuleType:
    """scripts/build_compiled.py as a module, loaded by its path: a PEP 517 build does not put the project on
    sys.path (the sdist ships the script, MANIFEST.in)."""
    path = ROOT / "scripts" / "build_compiled.py"
    spec = importlib.util.spec_from_file_location("micromono_build_compiled", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}: the mypyc build needs it (an sdist without it is incomplete)")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPy(build_py):
    """build_py, plus the SDK sources copied into the built package as micromono/sdk/."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # a checkout: find_sdk() finds sdk/ beside the package
            return
        target = Path(self.build_lib) / "micromono" / "sdk"
        shutil.rmtree(target, ignore_errors=True)  # an earlier build's copy must not leave removed files behind
        for name in SDKS:
            source = ROOT / "sdk" / name
            if not source.is_dir():
                raise RuntimeError(f"{source} is missing: the wheel ships it for `micromono new` (MANIFEST.in)")
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns(*SDK_IGNORE))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        sdk = Path(self.build_lib) / "micromono" / "sdk"
        copied = [] if self.editable_mode else [str(p) for p in sorted(sdk.rglob("*")) if p.is_file()]
        return [*super().get_outputs(include_bytecode), *copied]


class BuildExt(build_ext):
    """build_ext, plus the mypyc-compiled hot path into the built package's micromono/_compiled/."""

    def run(self) -> None:
        in_place = self.inplace or self.editable_mode
        if not in_place:  # an optional extension that fails now must not leave an earlier build's file behind
            for ext in self.extensions:
                Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
        super().run()
        if in_place:
            return
        missing = [ext.name for ext in self.extensions if not Path(self.get_ext_fullpath(ext.name)).is_file()]
        target = Path(self.build_lib) / "micromono" / "_compiled"
        shutil.rmtree(target, ignore_errors=True)
        problem = _build_compiled().build_or_explain(True, package=ROOT / "micromono", target=target)
        if problem is not None:
            missing.append(f"micromono/_compiled/ (mypyc: {problem})")
        if missing:
            _warn(
                f"this build has no compiled path; micromono will run in pure Python. Not built: {'; '.join(missing)}."
                "\nTo build it, install a C compiler and the Python headers (Debian: apt-get install gcc "
                "python3-dev; mypy, a build requirement, brings mypyc) and build or install again."
            )

    def get_outputs(self) -> list[str]:
        compiled = Path(self.build_lib) / "micromono" / "_compiled"
        built = [str(p) for p in sorted(compiled.rglob("*")) if p.is_file()] if not self.inplace else []
        return [*super().get_outputs(), *built]


setup(
    cmdclass={"build_py": BuildPy, "build_ext": BuildExt},
    ext_modules=[
        Extension(
            "micromono._speedups",
            sources=[SOURCE],
            define_macros=[("MICROMONO_SOURCE_SHA256", f'"{DIGEST}"')],
            optional=True,
        )
    ],
)
