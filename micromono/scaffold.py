"""`micromono new`: a buildable service skeleton that answers a request out of the box, the way `spin new` makes one.

A template is a directory of plain files, micromono/templates/<lang>/: the files at its top are written for every
service (a build file, a README), those in `service/` for a plain service and those in `actor/` for `--keyed`.
`__name__` in a file name and `{{name}}`-style placeholders in the text are replaced (`_placeholders` lists them;
anything else is copied as it is). The manifest files are the same for every language, so they are written from
here: `services.toml` (a complete manifest serving the new service alone) and `micromono.toml.snippet` (its
`[services.<name>]` table, to paste into an app's manifest). Every template builds with `make` in the service's
directory (a Makefile wraps the language's own tool where it has one) and writes `build/<name>.wasm`, so the next
steps the CLI prints are the same for all. Adding a language is a template directory plus one `LANGUAGES` entry.

The SDK. A template's build file names the SDK sources by an absolute path, `MICROMONO_SDK ?= ...`, which the user
may override. `find_sdk()` looks for them in `SDK_CANDIDATES`: `micromono/sdk/` (where a wheel ships them) and
then `sdk/` beside the package (a checkout, installed editable as `make install` does).

A wheel carries both trees: `micromono/templates/**` as package data (pyproject.toml's
`[tool.setuptools.package-data]`, with the template directories listed as data packages to keep setuptools from
warning about them), and `sdk/c`, `sdk/zig`, `sdk/rust` and `sdk/assemblyscript` (without node_modules or build
outputs) copied in as `micromono/sdk/` by the build (setup.py, `SDKS`; MANIFEST.in puts them in the sdist).
tests/test_wheel.py runs `micromono new` from an installed wheel. An install without the SDK (a copy of the package
alone) gets `find_sdk()`'s error naming `--sdk`.

This module writes files and nothing else: it does not build, serve or print (the CLI prints).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .config import service_name_problem
from .errors import MicromonoError

__all__ = [
    "LANGUAGES",
    "PENDING",
    "SDK_CANDIDATES",
    "TEMPLATES",
    "Created",
    "Language",
    "NewServiceError",
    "create",
    "find_sdk",
]

_PACKAGE: Final = Path(__file__).resolve().parent
TEMPLATES: Final = _PACKAGE / "templates"
# Where the SDK sources may be, in this order: inside the package (a wheel that ships sdk/ as micromono/sdk/), then
# beside it (a checkout: micromono/ and sdk/ are siblings). The first that holds the language's SDK file wins.
SDK_CANDIDATES: Final = (_PACKAGE / "sdk", _PACKAGE.parent / "sdk")
# The sub-directories of a template for `--keyed` and without it.
_VARIANT_DIRS: Final = {False: "service", True: "actor"}


class NewServiceError(MicromonoError):
    """`micromono new` cannot write the service: the message says what, where and what to do."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Language:
    """One `--lang` with a template: templates/<name>/."""

    name: str  # --lang c
    title: str  # "C", in messages and the README
    sdk_file: str  # the SDK file its build needs, relative to the SDK directory: how find_sdk() knows one


LANGUAGES: Final = {
    lang.name: lang
    for lang in (
        Language(name="c", title="C", sdk_file="c/micromono.h"),
        Language(name="zig", title="Zig", sdk_file="zig/micromono.zig"),
        Language(name="rust", title="Rust", sdk_file="rust/src/lib.rs"),
        Language(name="assemblyscript", title="AssemblyScript", sdk_file="assemblyscript/assembly/micromono.ts"),
    )
}
# Languages whose SDK exists in another branch but has no template yet: `--lang` names them and fails with this.
PENDING: Final[dict[str, str]] = {}  # none now: all four have templates


@dataclass(frozen=True, slots=True, kw_only=True)
class Created:
    """What `create()` wrote."""

    directory: Path  # the service's directory
    files: tuple[Path, ...]  # relative to `directory`, in the order written
    requests: tuple[tuple[str, str], ...]  # (path, expected body) to try once it serves on the default listen


def find_sdk(lang: Language) -> Path:
    """The SDK directory for `lang`'s build file: the first of `SDK_CANDIDATES` holding `lang.sdk_file`.

    Raises:
        NewServiceError: none does (an installed micromono without its SDK).
    """
    for candidate in SDK_CANDIDATES:
        if (candidate / lang.sdk_file).is_file():
            return candidate
    looked = " and ".join(str(c / lang.sdk_file) for c in SDK_CANDIDATES)
    raise NewServiceError(
        f"no {lang.title} SDK found (looked for {looked}): this micromono is installed without its SDK; "
        "pass --sdk DIR, the sdk/ directory of a micromono checkout"
    )


def create(
    name: str,
    lang: Language,
    *,
    keyed: bool,
    directory: Path,
    sdk: Path,
    python: str,
    manifest_dir: Path,
    command: str,
) -> Created:
    """Write a new service from `lang`'s template into `directory`.

    Args:
        name: the service name (the manifest's rule, `config.SERVICE_NAME`).
        keyed: an actor (`kind = "actor"`, routes `/<name>/{key}`) rather than a plain service (`/<name>/*`).
        directory: created if missing; it must be empty if it exists.
        sdk: the SDK directory the build file names (`find_sdk()`, or the user's `--sdk`).
        python: the interpreter the build file runs tools with (`python -m ziglang`), by default.
        manifest_dir: the directory of the services.toml the snippet is meant for: its `wasm` is relative to it
            when the service is inside it, else absolute.
        command: the command line that made it, for the README.

    Raises:
        NewServiceError: `name` is invalid, `directory` is not empty or not a directory, `sdk` lacks the SDK
            file, or a file cannot be written.
    """
    if (problem := service_name_problem(name)) is not None:
        raise NewServiceError(problem)
    if not (sdk / lang.sdk_file).is_file():
        raise NewServiceError(f"{sdk / lang.sdk_file} does not exist: pass --sdk the sdk/ directory of micromono")
    _check_empty(directory)
    directory = directory.resolve()
    wasm = directory / "build" / f"{name}.wasm"
    snippet_wasm = wasm.relative_to(manifest_dir.resolve()) if wasm.is_relative_to(manifest_dir.resolve()) else wasm
    snippet = _service_table(name, snippet_wasm, keyed=keyed)
    requests = _requests(name, keyed=keyed)
    placeholders = _placeholders(name, keyed, sdk, python, command, snippet, requests)
    files = {path: _render(text, placeholders) for path, text in _template_files(lang, name, keyed)}
    files[Path("services.toml")] = _standalone_manifest(name, keyed)
    files[Path("micromono.toml.snippet")] = (
        f"# [services.{name}] for an app's services.toml (made by `micromono new`)."
        + (
            f"\n# wasm is relative to the manifest: this one assumes a services.toml in {manifest_dir.resolve()}."
            if not snippet_wasm.is_absolute()
            else ""
        )
        + f"\n{snippet}\n"
    )
    files[Path(".gitignore")] = "/build/\n/.micromono/\n"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for path, text in files.items():
            (directory / path).parent.mkdir(parents=True, exist_ok=True)
            with open(directory / path, "x", encoding="utf-8") as f:
                f.write(text)
    except OSError as exc:
        raise NewServiceError(f"cannot write {exc.filename or directory}: {exc.strerror or exc}") from exc
    return Created(directory=directory, files=tuple(files), requests=requests)


def _check_empty(directory: Path) -> None:
    if directory.is_dir():
        if any(directory.iterdir()):
            raise NewServiceError(
                f"{directory} already exists and is not empty: choose another name, or another directory with --dir"
            )
    elif directory.exists():
        raise NewServiceError(f"{directory} exists and is not a directory: choose another directory with --dir")


def _template_files(lang: Language, name: str, keyed: bool) -> list[tuple[Path, str]]:
    """The template's files for this variant, as (path in the service's directory, text), sorted by path."""
    root = TEMPLATES / lang.name
    variant = root / _VARIANT_DIRS[keyed]
    found = [(p.relative_to(root), p) for p in root.iterdir() if p.is_file()]
    found += [(p.relative_to(variant), p) for p in variant.rglob("*") if p.is_file()]
    return sorted((Path(str(path).replace("__name__", name)), p.read_text(encoding="utf-8")) for path, p in found)


def _placeholders(
    name: str,
    keyed: bool,
    sdk: Path,
    python: str,
    command: str,
    snippet: str,
    requests: tuple[tuple[str, str], ...],
) -> dict[str, str]:
    if keyed:
        behaviour = (
            f"An actor: each key, the last segment of `/{name}/<key>`, has its own instance and its own storage. "
            f"`GET /{name}/<key>` counts a visit to the key in its key-value storage and answers 200 "
            f"`{name} <key>: <visits>` (text/plain); other methods get 405."
        )
    else:
        behaviour = (
            f"`GET /{name}`, or any path below it, answers 200 `hello from {name}` (text/plain); other methods get 405."
        )
    width = max(len(path) for path, _ in requests) + len("curl http://127.0.0.1:8080")
    return {
        "name": name,
        "what": "actor" if keyed else "service",
        "command": command,
        "sdk": str(sdk.resolve()),
        "python": python,
        "behaviour": behaviour,
        "try": "\n".join(f"    {'curl http://127.0.0.1:8080' + path:<{width}}   # {body}" for path, body in requests),
        "snippet": snippet,
    }


def _render(text: str, placeholders: dict[str, str]) -> str:
    for key, value in placeholders.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def _requests(name: str, *, keyed: bool) -> tuple[tuple[str, str], ...]:
    if keyed:
        return (
            (f"/{name}/alice", f"{name} alice: 1"),
            (f"/{name}/alice", f"{name} alice: 2"),
            (f"/{name}/bob", f"{name} bob: 1"),
        )
    return ((f"/{name}", f"hello from {name}"),)


def _service_table(name: str, wasm: Path, *, keyed: bool) -> str:
    """The `[services.<name>]` table, with a comment on each line that needs one."""
    if keyed:
        lines = [
            ('kind = "actor"', "one instance and one storage per key"),
            (f"wasm = {json.dumps(str(wasm))}", ""),
            (f'routes = ["/{name}/{{key}}"]', f'/{name}/alice is the actor "alice"'),
        ]
    else:
        lines = [
            (f"wasm = {json.dumps(str(wasm))}", ""),
            (f'routes = ["/{name}/*"]', f"/{name} and every path below it"),
        ]
    width = max(len(line) for line, comment in lines if comment)
    body = [f"{line:<{width}}  # {comment}" if comment else line for line, comment in lines]
    return "\n".join([f"[services.{name}]", *body])


def _standalone_manifest(name: str, keyed: bool) -> str:
    return "\n".join(
        [
            f"# {name} alone (made by `micromono new`): micromono serve services.toml",
            "# micromono's docs/configuration.md describes every key.",
            "version = 1",
            "",
            "[daemon]",
            'listen = "127.0.0.1:8080"',
            "",
            _service_table(name, Path("build") / f"{name}.wasm", keyed=keyed),
            "",
        ]
    )
