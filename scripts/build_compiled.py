"""Build the optional compiled hot-path modules: mypyc over micromono's own sources, into micromono/_compiled/.

The modules every ingress request and every call between services runs through (`COMPILED` below) are compiled
from the same `.py` files the pure-Python path runs, so both paths have one source and give the same results.
`micromono/__init__.py` puts `micromono/_compiled/` ahead of the sources only when micromono/_accelerate.py chooses
the compiled path: `sources.sha256` there still matches the `.py` files and micromono/_speedups.c is built too (a
stale or partial build is ignored, with a warning), and `MICROMONO_PURE=1` is not set.

Needs mypy (a dev dependency and a build requirement; mypyc comes with it), a C compiler and the Python headers
(scripts/install-system-deps.sh installs them). `make install` runs it; run it again by hand after editing one of
the compiled modules (`make` does that by itself). Exit status: 0 built, 1 the build failed.

It is also the wheel's build: setup.py imports this module (`build_or_explain`) and compiles the same modules into
the wheel's `micromono/_compiled/`, from the sources it packs beside them, so `pip install` gives the same layout
as a checkout.

Usage: python scripts/build_compiled.py [--quiet]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent
PACKAGE: Final = ROOT / "micromono"
TARGET: Final = PACKAGE / "_compiled"
#: The modules on the hot path, as paths under micromono/ without `.py`. engine.py stays interpreted: it swaps
#: `Instance.invoke` at run time (`use_speedups`), which a compiled class does not allow, and its hot part is
#: micromono/_speedups.c already. The ingress package is compiled whole, its `__init__` too: a compiled package
#: finds its submodules only among the compiled ones (micromono/_compiled/ingress/).
#: suspended.py stays interpreted too (it runs once per resumed slice, not per request): compiled, the resumed slices
#: of a guest spinning beside a busy neighbour stopped ending (tests/test_preemption.py hung); not yet understood.
COMPILED: Final = (
    "channels",
    "service",
    "registry",
    "runs",
    "router",
    "ingress/__init__",
    "ingress/responses",
    "ingress/routes",
    "ingress/heads",
    "ingress/http",
    "ingress/websocket",
)
#: Names `sources.sha256` lists, one `<sha256>  <file>` line each: what the compiled modules were built from.
MANIFEST: Final = "sources.sha256"

_SETUP: Final = """
from setuptools import setup
from mypyc.build import mypycify

setup(
    name="micromono-compiled",
    ext_modules=mypycify({paths!r}, group_name="micromono.hotpath", opt_level="3", debug_level="0"),
)
"""


def source_digests(package: Path = PACKAGE) -> str:
    """The manifest text for the current sources of the compiled modules in `package` (a micromono/ directory)."""
    return "".join(
        f"{hashlib.sha256((package / f'{name}.py').read_bytes()).hexdigest()}  {name}.py\n" for name in COMPILED
    )


def toolchain_problem() -> str | None:
    """What the build lacks before it starts (mypyc, a C compiler, the Python headers), or None.

    A quick look, so that a machine without a compiler learns it at once rather than after mypy's type check.
    The compiler is the one the build would use: `$CC`, else the one Python was built with (sysconfig's CC).
    """
    try:
        import mypyc  # noqa: F401
    except ImportError:
        return "mypyc is not installed (it comes with mypy: pip install mypy, or pip install -e '.[dev]')"
    compiler = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    program = shlex.split(compiler)[0] if compiler.strip() else ""
    if not program or shutil.which(program) is None:
        origin = "$CC" if os.environ.get("CC") else "the compiler Python was built with (sysconfig CC)"
        return f"no C compiler: {program or compiler!r} ({origin}) was not found; install one, or set CC to one"
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.is_file():
        return f"no Python headers: {headers} does not exist (Debian: apt-get install python3-dev)"
    return None


def build(quiet: bool, *, package: Path = PACKAGE, target: Path = TARGET) -> None:
    """Compile the modules in a scratch copy of `package` and move the extension modules into `target`.

    `target` is replaced whole (through a sibling `<target>.new`), so it never mixes two builds.

    Raises:
        subprocess.CalledProcessError: mypyc or the C compiler failed.
        RuntimeError: the build ran but did not produce every module.
    """
    digests = source_digests(package)
    with tempfile.TemporaryDirectory(prefix="micromono-mypyc-") as scratch:
        work = Path(scratch)
        # A copy, so the build never writes extension modules next to the sources (they would shadow them).
        shutil.copytree(
            package,
            work / "micromono",
            ignore=shutil.ignore_patterns("_compiled", "_compiled.new", "sdk", "*.so", "__pycache__"),
        )
        paths = [f"micromono/{name}.py" for name in COMPILED]
        (work / "setup.py").write_text(_SETUP.format(paths=paths))
        # Quiet: the output is kept and shown only if the build fails (mypyc prints its type errors on stdout).
        subprocess.run(
            [sys.executable, "setup.py", "build_ext", "--inplace"],
            cwd=work,
            check=True,
            capture_output=quiet,
            text=True,
            env={**os.environ, "MYPYC_OPT_LEVEL": "3"},
        )
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        expected = [f"{name}{suffix}" for name in COMPILED] + [f"hotpath__mypyc{suffix}"]
        missing = [name for name in expected if not (work / "micromono" / name).is_file()]
        if missing:
            raise RuntimeError(f"mypyc did not produce {missing} in {work / 'micromono'}")
        staging = target.with_name(target.name + ".new")
        shutil.rmtree(staging, ignore_errors=True)
        for name in expected:
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(work / "micromono" / name, staging / name)
        (staging / MANIFEST).write_text(digests)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def build_or_explain(quiet: bool, *, package: Path = PACKAGE, target: Path = TARGET) -> str | None:
    """`build()`, but a failure is returned as text rather than raised: None when built, else what went wrong.

    The text starts with one line saying why (the toolchain is missing, or the build failed and how) and, when the
    build ran, goes on with its last lines of output. The caller says what to do about it.
    """
    problem = toolchain_problem()
    if problem is not None:
        return problem
    try:
        build(quiet, package=package, target=target)
    except (subprocess.CalledProcessError, RuntimeError, OSError) as exc:
        output = getattr(exc, "stdout", None) or ""
        errors = getattr(exc, "stderr", None) or ""
        tail = (output + errors).rstrip().splitlines()[-25:]
        return "\n".join([f"the build failed: {exc}", *(["the build's last lines:", *tail] if tail else [])])
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description="Build micromono's optional compiled hot-path modules (mypyc).")
    parser.add_argument("--quiet", action="store_true", help="hide the compiler's output unless it fails")
    args = parser.parse_args()
    problem = build_or_explain(args.quiet)
    if problem is not None:
        print(
            f"build_compiled: the compiled modules were not built into {TARGET}: {problem}\n"
            "micromono runs in pure Python without them. If the lines above are mypyc errors, fix the code they "
            "name (mypyc is stricter than mypy about, for example, a name defined twice); if no C compiler or "
            "Python headers were found, install them (bash scripts/install-system-deps.sh); then run this script "
            "again.",
            file=sys.stderr,
        )
        return 1
    print(f"build_compiled: {', '.join(COMPILED)} compiled into {TARGET.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
