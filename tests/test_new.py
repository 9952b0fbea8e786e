"""`micromono new`: each template, plain and --keyed, written by the CLI, built by its own Makefile with the project's
toolchains (Debian clang; Zig from the venv's `ziglang`) and served in a real daemon; and the command's errors."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import http, running
from micromono import scaffold
from micromono.cli import main
from micromono.config import Address, load_config

NAME = "hello-svc"  # a "-" in the name: it must survive file names, C and Zig strings, routes and TOML
NAME_RULE = 'use a lowercase letter, then up to 62 lowercase letters, digits, "_" or "-"'
TOOLCHAINS = {
    "c": shutil.which("clang") is not None,
    "zig": importlib.util.find_spec("ziglang") is not None,
    "rust": Path("/usr/bin/rustc").is_file(),
    "assemblyscript": shutil.which("npm") is not None,
}
#: The source file's extension per language.
EXTENSIONS = {"c": "c", "zig": "zig", "rust": "rs", "assemblyscript": "ts"}
BUILDS = [
    pytest.param(
        lang,
        keyed,
        id=f"{lang}-{'keyed' if keyed else 'plain'}",
        marks=pytest.mark.skipif(not TOOLCHAINS[lang], reason=f"no {lang} toolchain (make install installs it)"),
    )
    for lang in ("c", "zig", "rust", "assemblyscript")
    for keyed in (False, True)
]


@pytest.fixture(scope="session")
def zig_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Zig's global cache for these tests (not ~/.cache), shared so that its std is compiled once."""
    return tmp_path_factory.mktemp("zig-global-cache")


def new(*args: str) -> int:
    return main(["new", *args])


def app_manifest(directory: Path, snippet: str) -> Path:
    """A services.toml in `directory` made of a [daemon] table for tests and a pasted snippet."""
    path = directory / "services.toml"
    path.write_text(
        "version = 1\n\n[daemon]\n"
        f'listen = "127.0.0.1:0"\nmetrics_listen = ""\ncache_dir = "{directory / "cache"}"\n\n{snippet}'
    )
    return path


@pytest.mark.parametrize(("lang", "keyed"), BUILDS)
async def test_new_service_builds_and_answers(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    zig_cache: Path,
    lang: str,
    keyed: bool,
) -> None:
    """A new service builds with its generated Makefile and answers the requests the CLI prints, served from the
    snippet pasted into an app's manifest; its own services.toml declares the same service."""
    monkeypatch.chdir(tmp_path)
    assert new(NAME, "--lang", lang, *(["--keyed"] if keyed else [])) == 0
    out = capsys.readouterr().out
    directory = tmp_path / NAME
    source = f"{NAME}.{EXTENSIONS[lang]}"
    written = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*"))
    assert written == sorted([".gitignore", "Makefile", "README.md", source, "micromono.toml.snippet", "services.toml"])
    for path in written:
        text = (directory / path).read_text()
        assert not re.search(r"\{\{\w+\}\}", text), f"{path} has a placeholder left"
        assert f"{NAME}/{path}" in out
    assert f"make -C {NAME}\n" in out and f"micromono serve {NAME}/services.toml\n" in out

    env = {**os.environ, "ZIG_GLOBAL_CACHE_DIR": str(zig_cache)}
    build = await asyncio.to_thread(
        subprocess.run, ["make", "-C", NAME], env=env, capture_output=True, text=True, timeout=300
    )
    assert build.returncode == 0, build.stdout + build.stderr
    assert (directory / "build" / f"{NAME}.wasm").is_file()

    config = load_config(app_manifest(tmp_path, (directory / "micromono.toml.snippet").read_text()))
    alone = load_config(directory / "services.toml")
    assert alone.services == config.services
    assert alone.daemon.listen == Address(host="127.0.0.1", port=8080)
    (spec,) = config.services
    assert spec.keyed == keyed

    # The requests the CLI printed, as `curl http://127.0.0.1:8080<path>  # <body>`.
    printed = re.findall(r"^  curl http://127\.0\.0\.1:8080(\S+) +# (.+)$", out, re.MULTILINE)
    assert printed == (
        [
            (f"/{NAME}/alice", f"{NAME} alice: 1"),
            (f"/{NAME}/alice", f"{NAME} alice: 2"),
            (f"/{NAME}/bob", f"{NAME} bob: 1"),
        ]
        if keyed
        else [(f"/{NAME}", f"hello from {NAME}")]
    )
    async with running(config) as daemon:
        address = daemon.addresses[0]
        for path, body in printed:
            response = await http(address, "GET", path)
            assert (response.status, response.body.decode()) == (200, body)
            assert response.headers["content-type"] == "text/plain"
        other = f"/{NAME}/alice/more" if keyed else f"/{NAME}/any/path/below"
        if not keyed:
            assert (await http(address, "GET", other)).body == f"hello from {NAME}".encode()
        refused = await http(address, "POST", printed[0][0])
        assert (refused.status, refused.headers["allow"]) == (405, "GET")
    if keyed:  # the count is in the actor's storage, not its memory: a new daemon goes on from it
        async with running(config) as daemon:
            response = await http(daemon.addresses[0], "GET", f"/{NAME}/alice")
            assert response.body.decode() == f"{NAME} alice: 3"


def test_new_with_dir_outside_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dir writes there, into a missing or empty directory; a snippet for a service outside the current directory
    names its wasm by an absolute path, one inside it by a relative one."""
    (tmp_path / "here").mkdir()
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    assert new("svc", "--lang", "zig", "--dir", "../empty") == 0
    snippet = (tmp_path / "empty" / "micromono.toml.snippet").read_text()
    assert f'wasm = "{tmp_path / "empty" / "build" / "svc.wasm"}"' in snippet
    assert (tmp_path / "empty" / "svc.zig").is_file()
    assert f"{tmp_path / 'empty'}/svc.zig" in capsys.readouterr().out
    assert new("svc", "--lang", "c", "--keyed", "--dir", "deep/er") == 0
    snippet = (tmp_path / "here" / "deep" / "er" / "micromono.toml.snippet").read_text()
    assert 'wasm = "deep/er/build/svc.wasm"' in snippet and 'routes = ["/svc/{key}"]' in snippet


def test_new_makefile_names_the_sdk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Makefile names the checkout's sdk/ by default (overridable: `?=`), or the --sdk directory."""
    monkeypatch.chdir(tmp_path)
    assert new("a", "--lang", "c") == 0
    checkout_sdk = Path(scaffold.__file__).resolve().parent.parent / "sdk"
    assert f"MICROMONO_SDK ?= {checkout_sdk}\n" in (tmp_path / "a" / "Makefile").read_text()
    other = tmp_path / "other-sdk"
    (other / "zig").mkdir(parents=True)
    (other / "zig" / "micromono.zig").write_text("")
    assert new("b", "--lang", "zig", "--sdk", str(other)) == 0
    makefile = (tmp_path / "b" / "Makefile").read_text()
    assert f"MICROMONO_SDK ?= {other}\n" in makefile
    assert "ZIG ?= $(PYTHON) -m ziglang\n" in makefile


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Hello", f'invalid service name "Hello" (did you mean "hello"?): {NAME_RULE}'),
        ("1st", f'invalid service name "1st": {NAME_RULE}'),
        ("a.b", f'invalid service name "a.b": {NAME_RULE}'),
    ],
)
def test_new_rejects_an_invalid_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str, message: str
) -> None:
    """A name the manifest would refuse is a usage error, with the manifest's rule, and nothing is written."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc_info:
        new(name, "--lang", "c")
    assert exc_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"micromono new: error: argument NAME: {message}"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("lang", "message"),
    [
        ("go", "unknown language 'go': use c, zig, rust or assemblyscript"),
    ],
)
def test_new_rejects_a_language_without_a_template(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], lang: str, message: str
) -> None:
    """An unknown language, or one whose template waits for its SDK, is a usage error saying which to use."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc_info:
        new("svc", "--lang", lang)
    assert exc_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"micromono new: error: argument --lang: {message}"
    assert list(tmp_path.iterdir()) == []


def test_new_requires_a_language(capsys: pytest.CaptureFixture[str]) -> None:
    """--lang has no default: the skeleton's language is the user's choice."""
    with pytest.raises(SystemExit) as exc_info:
        new("svc")
    assert exc_info.value.code == 2
    assert (
        capsys.readouterr().err.splitlines()[-1] == "micromono new: error: the following arguments are required: --lang"
    )


def test_new_refuses_a_directory_that_is_not_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An existing directory with files in it, or a file where the directory would go, is left alone (exit 1); the
    message names it as the user did."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "svc").mkdir()
    (tmp_path / "svc" / "mine.c").write_text("keep me")
    assert new("svc", "--lang", "c") == 1
    assert capsys.readouterr().err == (
        "micromono: svc already exists and is not empty: choose another name, or another directory with --dir\n"
    )
    assert [p.name for p in (tmp_path / "svc").iterdir()] == ["mine.c"]
    (tmp_path / "file").write_text("")
    assert new("svc", "--lang", "c", "--dir", "file") == 1
    assert capsys.readouterr().err == (
        "micromono: file exists and is not a directory: choose another directory with --dir\n"
    )


def test_new_without_an_sdk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An installed micromono without its SDK says where it looked and to pass --sdk; a wrong --sdk says what is
    missing. Nothing is written."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(scaffold, "SDK_CANDIDATES", (tmp_path / "pkg" / "sdk", tmp_path / "sdk"))
    assert new("svc", "--lang", "zig") == 1
    assert capsys.readouterr().err == (
        f"micromono: no Zig SDK found (looked for {tmp_path}/pkg/sdk/zig/micromono.zig and {tmp_path}/sdk/zig/"
        "micromono.zig): this micromono is installed without its SDK; pass --sdk DIR, the sdk/ directory of a "
        "micromono checkout\n"
    )
    assert new("svc", "--lang", "c", "--sdk", "nowhere") == 1
    assert capsys.readouterr().err == (
        f"micromono: {tmp_path}/nowhere/c/micromono.h does not exist: pass --sdk the sdk/ directory of micromono\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_every_template_has_a_table_entry() -> None:
    """Adding a language is a template directory (files for both variants) and one LANGUAGES entry; the languages
    still waiting for their SDK have neither."""
    directories = {p.name for p in scaffold.TEMPLATES.iterdir() if p.is_dir()}
    assert directories == set(scaffold.LANGUAGES)
    assert not set(scaffold.PENDING) & set(scaffold.LANGUAGES)
    for lang in scaffold.LANGUAGES:
        for variant in ("service", "actor"):
            assert [p.name for p in (scaffold.TEMPLATES / lang / variant).iterdir()] == [f"__name__.{EXTENSIONS[lang]}"]


def test_new_help(capsys: pytest.CaptureFixture[str]) -> None:
    """`micromono new --help` names every language and the files it writes."""
    with pytest.raises(SystemExit) as exc_info:
        new("--help")
    assert exc_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--lang {c,zig,rust,assemblyscript}" in out
    assert "micromono.toml.snippet" in out and "--keyed" in out


def test_generated_manifests_keep_their_comments_aligned() -> None:
    """The table `micromono new` writes reads as a hand-written one: comments in one column."""
    table = scaffold._service_table("svc", Path("build/svc.wasm"), keyed=True)
    assert table.splitlines() == [
        "[services.svc]",
        'kind = "actor"           # one instance and one storage per key',
        'wasm = "build/svc.wasm"',
        'routes = ["/svc/{key}"]  # /svc/alice is the actor "alice"',
    ]
