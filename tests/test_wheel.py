"""The wheel, built the way `pip install` builds it and used from a fresh virtualenv outside the repository.

Each test makes an sdist of this checkout (setuptools' PEP 517 backend, as `python -m build --sdist`), builds the
wheel from that sdist with pip (so the sdist must hold everything setup.py needs), installs the wheel into a new
virtualenv in a temporary directory (its runtime dependencies from the package index) and runs micromono from
there, in a temporary working directory, so that nothing can come from the checkout:

- `test_wheel_compiled` builds in pip's isolated build environment, which has only what `[build-system] requires`
  lists (the check that the list is complete: mypyc type-checks the hot path against the runtime dependencies),
  and checks that the wheel carries the compiled path and uses it, serves a request, and that `micromono new`
  finds the SDK in the installed package and its C service builds and answers.
- `test_wheel_without_compiler` builds with `$CC` naming no compiler: the build must still succeed, say why it has
  no compiled path, and give a wheel that runs in pure Python and says so at import.

The suite runs twice (`make test`: pure, then compiled); each test runs once, in the run of the path it is about.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

from conftest import FIXTURES, ROOT, Served
from micromono import _accelerate, scaffold

pytestmark = pytest.mark.slow

#: The wheel's tag, compiled parts or not (setup.py says why): this Python and this platform.
TAG = f"-cp{sys.version_info[0]}{sys.version_info[1]}-cp{sys.version_info[0]}{sys.version_info[1]}-" + (
    sysconfig.get_platform().replace("-", "_").replace(".", "_") + ".whl"
)
SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")

#: What the probe prints, as JSON: where micromono was imported from, which path it runs and where each SDK is.
PROBE = """
import json, sys, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import micromono
from micromono import _accelerate, channels, scaffold
print(json.dumps({
    "file": micromono.__file__,
    "channels": channels.__file__,
    "compiled": _accelerate.COMPILED,
    "summary": _accelerate.PATH_SUMMARY,
    "speedups": getattr(_accelerate.speedups, "__file__", None),
    "warnings": [str(w.message) for w in caught],
    "sdk": {name: str(scaffold.find_sdk(lang)) for name, lang in scaffold.LANGUAGES.items()},
}))
"""


def run(args: list[str | Path], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """Run a command to its end; its stdout and stderr together, or a failure that shows their last lines."""
    result = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env if env is not None else clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        tail = "\n".join(result.stdout.splitlines()[-40:])
        pytest.fail(f"{' '.join(map(str, args))} exited with {result.returncode} in {cwd}:\n{tail}")
    return result.stdout


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would let a child find the checkout or choose micromono's path."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP") and not k.startswith("MICROMONO_")
    }
    return {**env, **extra}


def build_wheel(tmp: Path, *pip_args: str, env: dict[str, str]) -> tuple[Path, str]:
    """An sdist of the checkout, then a wheel from that sdist by `pip wheel`; the wheel and pip's output (-v: the
    build's own lines)."""
    dist = tmp / "dist"
    sdist_name = run(
        [sys.executable, "-c", "import setuptools.build_meta as b, sys; print(b.build_sdist(sys.argv[1]))", dist],
        cwd=ROOT,
    ).splitlines()[-1]
    sdist = dist / sdist_name
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for needed in ("setup.py", "scripts/build_compiled.py", "micromono/_speedups.c", "sdk/c/micromono.h"):
        assert needed in names, f"the sdist {sdist} lacks {needed} (MANIFEST.in)"
    assert not any("node_modules" in name or name.startswith("tests/") for name in names)
    output = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", *pip_args, "-w", dist, sdist], tmp, env)
    (wheel,) = dist.glob("micromono-*.whl")
    return wheel, output


def install(tmp: Path, wheel: Path) -> Path:
    """A new virtualenv in `tmp` with `wheel` installed (and its dependencies, from the index); its python."""
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", venv], tmp)
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "install", "--quiet", wheel], tmp)
    return python


def probe(python: Path, cwd: Path, **env: str) -> dict[str, object]:
    """PROBE's answer, run by `python` in `cwd`."""
    answer: dict[str, object] = json.loads(run([python, "-c", PROBE], cwd, clean_env(**env)).splitlines()[-1])
    return answer


def site_packages(python: Path) -> Path:
    venv = python.parent.parent
    (found,) = venv.glob("lib/python3*/site-packages")
    return found


def request(host: str, port: int, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    """One HTTP/1.1 request on a new connection (a plain test: the build's subprocesses would block an event loop)."""
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def wheel_files(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_build_requirements_cover_the_runtime_dependencies() -> None:
    """mypyc type-checks the hot path against what it imports: every runtime dependency is a build requirement."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    required = set(project["build-system"]["requires"])
    missing = [dep for dep in project["project"]["dependencies"] if dep not in required]
    assert not missing, f"pyproject.toml: [build-system] requires lacks {missing} (the mypyc build needs them)"
    dev = {dep.split(">")[0].split("=")[0]: dep for dep in project["project"]["optional-dependencies"]["dev"]}
    assert dev["mypy"] in required, "[build-system] requires pins mypy as the dev extra does"


@pytest.mark.skipif(
    not _accelerate.COMPILED,
    reason="runs once, in the compiled-path run (make test's second): it needs the C compiler that run has",
)
def test_wheel_compiled(tmp_path: Path) -> None:
    wheel, output = build_wheel(tmp_path, env=clean_env())  # isolated: only [build-system] requires
    assert "WARNING micromono" not in output, output
    assert wheel.name.endswith(TAG), f"{wheel.name}: not tagged {TAG}"
    files = wheel_files(wheel)
    assert "micromono/_compiled/sources.sha256" in files and f"micromono/_compiled/ingress/http{SUFFIX}" in files
    assert f"micromono/_speedups{SUFFIX}" in files
    assert "micromono/_speedups.c" not in files and "micromono/py.typed" in files
    assert {f"micromono/console/static/{name}" for name in ("index.html", "console.js", "console.css")} <= files
    for lang in scaffold.LANGUAGES.values():
        assert f"micromono/sdk/{lang.sdk_file}" in files
    assert not any("node_modules" in name for name in files)

    python = install(tmp_path, wheel)
    site = site_packages(python)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    found = probe(python, elsewhere, MICROMONO_PURE="0")
    assert Path(str(found["file"])) == site / "micromono" / "__init__.py", found  # not the checkout's
    assert found["compiled"] is True and found["warnings"] == [], found
    channels = Path(str(found["channels"]))  # mypyc's module: its __file__ names a path below _compiled/
    assert channels.is_relative_to(site / "micromono" / "_compiled") and channels.name.endswith(SUFFIX), found
    assert Path(str(found["speedups"])).parent == site / "micromono", found
    assert found["sdk"] == dict.fromkeys(scaffold.LANGUAGES, str(site / "micromono" / "sdk")), found
    command = python.parent / "micromono"  # the console script
    version = run([command, "version"], elsewhere, clean_env(MICROMONO_PURE="0"))
    assert "compiled path: in use" in version, version

    # micromono new, from the installed SDK; the C template builds where clang is (as in CI: make install).
    run([command, "new", "hello", "--lang", "c"], elsewhere)
    makefile = (elsewhere / "hello" / "Makefile").read_text()
    assert f"MICROMONO_SDK ?= {site / 'micromono' / 'sdk'}\n" in makefile
    services = {"echo": f'wasm = "{shutil.copy(FIXTURES / "echo.wat", elsewhere)}"\nroutes = ["/echo"]'}
    if shutil.which("clang") is not None:
        run(["make", "-C", "hello"], elsewhere, timeout=120)
        hello_wasm = elsewhere / "hello" / "build" / "hello.wasm"
        services["hello"] = f'wasm = "{hello_wasm}"\nroutes = ["/hello/*"]'
    manifest_path = elsewhere / "services.toml"
    manifest_path.write_text(
        'version = 1\n\n[daemon]\nlisten = "127.0.0.1:0"\nmetrics_listen = "127.0.0.1:0"\n'
        + f'cache_dir = "{elsewhere / "cache"}"\n'
        + "".join(f"\n[services.{name}]\n{table}\n" for name, table in services.items())
    )

    served = Served(manifest_path, python=str(python), cwd=elsewhere, env={"MICROMONO_PURE": "0", "PYTHONPATH": ""})
    try:
        assert served.ready["speedups"] is True and served.ready["compiled_modules"] is True, served.ready
        (ingress,) = served.ready["ingress"]
        host, port = ingress.rsplit(":", 1)
        assert request(host, int(port), "POST", "/echo", b"from the wheel") == (200, b"from the wheel")
        if "hello" in services:
            assert request(host, int(port), "GET", "/hello") == (200, b"hello from hello")
        # The live page's files came with the wheel: the admin listener serves the page.
        admin_host, admin_port = str(served.ready["metrics"]).rsplit(":", 1)
        status, page = request(admin_host, int(admin_port), "GET", "/")
        assert status == 200 and b"console.js" in page, page[:200]
        assert not any(e["event"] == "console.files.missing" for e in served.events), served.events
        code, _ = served.stop(signal.SIGTERM)
        assert code == 0
    finally:
        served.kill()


@pytest.mark.skipif(_accelerate.COMPILED, reason="runs once, in the pure-Python run (make test's first)")
def test_wheel_without_compiler(tmp_path: Path) -> None:
    nowhere = tmp_path / "no-such-compiler" / "cc"
    # Without build isolation: the virtualenv that runs the tests has the build requirements, and without a compiler
    # mypyc never starts, so the isolated environment would check nothing more.
    wheel, output = build_wheel(tmp_path, "--no-build-isolation", env=clean_env(CC=str(nowhere)))
    assert "WARNING micromono: this build has no compiled path; micromono will run in pure Python" in output, output
    assert f"no C compiler: '{nowhere}' ($CC) was not found" in output, output
    assert wheel.name.endswith(TAG), f"{wheel.name}: not tagged {TAG}"
    files = wheel_files(wheel)
    assert not any(name.endswith(".so") or name.startswith("micromono/_compiled/") for name in files)
    assert "micromono/sdk/c/micromono.h" in files and "micromono/templates/c/Makefile" in files

    python = install(tmp_path, wheel)
    site = site_packages(python)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    found = probe(python, elsewhere)
    assert Path(str(found["file"])) == site / "micromono" / "__init__.py", found
    assert found["compiled"] is False, found
    (warning,) = found["warnings"]
    assert warning.startswith("micromono runs in pure Python: the compiled path is not usable: "), warning
    # What to do, for an installed copy (not the checkout's scripts):
    assert "micromono._speedups is not built (this installation was built without it)" in warning
    assert warning.count("build and install micromono again where a C compiler and the Python headers are found") == 1
    assert "scripts/build_compiled.py" not in warning
    assert found["sdk"] == dict.fromkeys(scaffold.LANGUAGES, str(site / "micromono" / "sdk")), found
