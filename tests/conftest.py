"""Shared test helpers: async test runner (uvloop), manifests in tmp dirs, an in-process daemon on port 0, and a
small HTTP/1.1 client over real loopback sockets that parses responses with httptools."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools
import pytest
import uvloop

from micromono import _accelerate, log
from micromono.config import Config, load_config
from micromono.daemon import Daemon

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
EXAMPLES_BUILD = ROOT / "examples" / "build"

log.configure("console", "debug")  # pytest captures it; capture_logs() then sees every level


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--require-path",
        choices=("pure", "compiled"),
        help="fail at once unless micromono runs this path (make test: the suite once on each)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """`--require-path`: a run meant for one path must not quietly test the other (a stale or missing build
    falls back to pure Python with only a warning)."""
    wanted = config.getoption("--require-path")
    running = "compiled" if _accelerate.COMPILED else "pure"
    if wanted is not None and wanted != running:
        why = _accelerate.PATH_SUMMARY
        raise pytest.UsageError(f"--require-path={wanted}, but micromono runs the {running} path: compiled path {why}")


def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run `async def` tests on a fresh uvloop event loop, like the daemon does."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    # The test's own parameters (fixtures and parametrized arguments), from its signature: `funcargs` holds them
    # and the autouse fixtures it did not ask for.
    kwargs = {name: pyfuncitem.funcargs[name] for name in inspect.signature(pyfuncitem.obj).parameters}
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(pyfuncitem.obj(**kwargs), timeout=120))
    return True


def fixture(name: str) -> Path:
    return FIXTURES / name


def build_c_guest(directory: Path, source: str) -> Path:
    """`source` (C against sdk/c) built with clang for wasm32-wasi as a reactor, warnings as errors, into
    `directory/guest.wasm`; the test is skipped where there is no clang."""
    clang = shutil.which(os.environ.get("CLANG", "clang"))
    if clang is None:
        pytest.skip("clang is not installed (scripts/install-system-deps.sh)")
    (directory / "guest.c").write_text(source)
    output = directory / "guest.wasm"
    subprocess.run(
        [clang, "--target=wasm32-wasi", "-mexec-model=reactor", "-O2", "-std=c11", "-Wall", "-Wextra", "-Werror",
         f"-I{ROOT / 'sdk/c'}", "-o", str(output), str(directory / "guest.c"), str(ROOT / "sdk/c/micromono.c")],
        check=True,
    )  # fmt: skip
    return output


def build_zig_guest(directory: Path, source: str) -> Path:
    """`source` (Zig importing sdk/zig as `micromono`) built for wasm32-freestanding into `directory/guest.wasm`,
    with the examples' Zig caches (compiler-rt is built there already); skipped without the ziglang package."""
    if importlib.util.find_spec("ziglang") is None:
        pytest.skip("the ziglang package is not installed (pip install -e '.[dev]')")
    (directory / "guest.zig").write_text(source)
    output = directory / "guest.wasm"
    env = dict(
        os.environ,
        ZIG_GLOBAL_CACHE_DIR=str(EXAMPLES_BUILD / "zig-global-cache"),
        ZIG_LOCAL_CACHE_DIR=str(EXAMPLES_BUILD / "zig-cache"),
    )
    subprocess.run(
        [sys.executable, "-m", "ziglang", "build-exe", "-target", "wasm32-freestanding", "-fno-entry",
         "-O", "ReleaseSmall", "--stack", "65536",
         "--export=mm_abi_version", "--export=mm_inbox", "--export=mm_handle",
         "--dep", "micromono", f"-Mroot={directory / 'guest.zig'}", f"-Mmicromono={ROOT / 'sdk/zig/micromono.zig'}",
         f"-femit-bin={output}"],
        check=True,
        env=env,
    )  # fmt: skip
    return output


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return repr(value)


def write_manifest(directory: Path, services: dict[str, dict[str, Any]], daemon: dict[str, Any] | None = None) -> Path:
    """Write a services.toml with ports 0 and a private cache dir; return its path."""
    settings = {"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0", "cache_dir": str(directory / "cache")}
    settings.update(daemon or {})
    lines = ["version = 1", "", "[daemon]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in settings.items()]
    for name, keys in services.items():
        lines += ["", f"[services.{name}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in keys.items()]
    path = directory / "services.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def make_config(directory: Path, services: dict[str, dict[str, Any]], daemon: dict[str, Any] | None = None) -> Config:
    return load_config(write_manifest(directory, services, daemon))


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[Daemon]:
    """An in-process daemon bound to 127.0.0.1 port 0, shut down on exit."""
    daemon = Daemon(config)
    await daemon.startup()
    try:
        yield daemon
    finally:
        await daemon.shutdown()


class Served:
    """`micromono serve` in a subprocess with JSON logs (one object a line, on stderr unless `--log-output stdout`
    is among the arguments); stopped by its own PID.

    Args:
        manifest: the services.toml to serve.
        *extra: more `serve` arguments (`--listen`, `--log-output stdout`, ...).
        env: extra environment variables (`NOTIFY_SOCKET`, ...).
    """

    def __init__(self, manifest: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        args = ["--log-format", "json", *extra]
        to_stdout = "--log-output" in args and args[args.index("--log-output") + 1] == "stdout"
        self.log_output = "stdout" if to_stdout else "stderr"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "micromono", "serve", str(manifest), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        self.events: list[dict[str, object]] = []
        self.ready = self.wait_for("daemon.ready")

    def wait_for(self, name: str, timeout: float = 30) -> dict[str, object]:
        """Read log events until one named `name` (all are kept in `events`)."""
        stream = self.proc.stdout if self.log_output == "stdout" else self.proc.stderr
        assert stream is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = stream.readline()
            if not line:
                raise AssertionError(f"serve exited ({self.proc.wait()}) before {name}: {self.events}")
            event = json.loads(line)  # every line is one JSON object
            self.events.append(event)
            if event["event"] == name:
                return event
        raise AssertionError(f"no {name} within {timeout}s")

    def finish(self) -> tuple[str, str]:
        """Wait for the process to exit (after a signal); keep the rest of its log; return (stdout, stderr)."""
        out, err = self.proc.communicate(timeout=30)
        log_text = out if self.log_output == "stdout" else err
        self.events += [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]
        return out, err

    def stop(self, signum: int) -> tuple[int, list[dict[str, object]]]:
        self.proc.send_signal(signum)
        self.finish()
        return self.proc.returncode, self.events

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    keep_alive: bool = True
    raw_headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body)


class _ResponseCollector:
    parser: Any

    def __init__(self) -> None:
        self.done: list[Response] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []

    def on_message_begin(self) -> None:
        self._headers, self._body = [], []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._status = self.parser.get_status_code()
        self._keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        headers = {n.decode().lower(): v.decode("latin-1") for n, v in self._headers}
        self.done.append(
            Response(self._status, headers, b"".join(self._body), self._keep_alive, raw_headers=self._headers)
        )


class Client:
    """One keep-alive HTTP/1.1 connection over a real socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._collector = _ResponseCollector()
        self._parser = httptools.HttpResponseParser(self._collector)
        self._collector.parser = self._parser

    @classmethod
    async def connect(cls, address: tuple[str, int]) -> Client:
        reader, writer = await asyncio.open_connection(*address)
        return cls(reader, writer)

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    def send(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        head = [f"{method} {path} HTTP/1.1", "Host: test"]
        for k, v in (headers or {}).items():
            head.append(f"{k}: {v}")
        if body or method in ("POST", "PUT"):
            head.append(f"Content-Length: {len(body)}")
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)

    async def read(self, timeout: float = 10.0) -> Response:
        """The next response on this connection."""
        while not self._collector.done:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise ConnectionError("connection closed before a full response")
            self._parser.feed_data(data)
            if self._collector.done:
                break
        return self._collector.done.pop(0)

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Response:
        self.send(method, path, body, headers)
        return await self.read()

    async def closed_by_peer(self, timeout: float = 5.0) -> bool:
        try:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
        except (TimeoutError, ConnectionError):
            return False
        return data == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def http(
    address: tuple[str, int], method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> Response:
    """One request on a fresh connection."""
    client = await Client.connect(address)
    try:
        return await client.request(method, path, body, headers)
    finally:
        await client.close()


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip()
