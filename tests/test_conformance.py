"""The SDKs agree: the conformance service of tests/conformance/README.md, written once per guest language, in a
real daemon with the README's manifest, answers every scenario exactly as the README says, and every language gives
the same answers (byte for byte, except the `x-conformance` header that names the language).

`make examples` builds each language's service into examples/build/conformance_<lang>.wasm. A language that is
not skipped in LANGUAGES and whose file is missing fails, saying so: an SDK that stops building must not pass by
being skipped.
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from conftest import EXAMPLES_BUILD, ROOT, Client, Response, fixture, http, make_config, running
from micromono.daemon import Daemon
from micromono.guestlog import MAX_LOG_LINE

sys.path.insert(0, str(ROOT / "sdk" / "python"))
from micromono_stream import Direct, Event, Published, StreamClient  # noqa: E402

#: Every guest language, each with the marks of its tests (none is skipped: `make examples` builds all four).
LANGUAGES: dict[str, tuple[pytest.MarkDecorator, ...]] = {
    "c": (),
    "zig": (),
    "rust": (),
    "assemblyscript": (),
}
ALL_LANGUAGES = [pytest.param(lang, marks=marks, id=lang) for lang, marks in LANGUAGES.items()]
#: The languages whose tests run (not skipped above): the cross-language comparison runs these.
RUNNING = [lang for lang, marks in LANGUAGES.items() if not any(m.name == "skip" for m in marks)]

#: Response headers that say nothing about the service: the daemon writes them for every answer.
FRAMING = frozenset({"date", "server", "content-length", "connection"})
SEND_WAIT_S = 5.0
WS_TIMEOUT_S = 10.0


def wasm_of(lang: str) -> Path:
    """The language's conformance service; fails the test when `make examples` did not build it."""
    path = EXAMPLES_BUILD / f"conformance_{lang}.wasm"
    if not path.exists():
        pytest.fail(
            f"{path.relative_to(ROOT)} is missing: `make examples` must build it (examples/Makefile, "
            f"CONFORMANCE_LANGS), from tests/conformance/conformance.* of the {lang} SDK",
            pytrace=False,
        )
    return path


def manifest(lang: str) -> dict[str, dict[str, Any]]:
    """tests/conformance/README.md's manifest, plus `driver` (tests/fixtures/caller.wat), which makes the CALLs the
    README's service answers (nothing in the manifest itself calls it)."""
    return {
        "conformance": {
            "kind": "actor",
            "wasm": wasm_of(lang),
            "routes": ["/conf/{key}", "/conf/{key}/*"],
            "websocket": True,
            "calls": ["peer", "conformance"],
        },
        "peer": {"wasm": EXAMPLES_BUILD / "echo.wasm"},
        "driver": {"wasm": fixture("caller.wat"), "routes": ["/driver"], "calls": ["conformance"]},
    }


@asynccontextmanager
async def conformance_daemon(tmp_path: Path, lang: str, **settings: Any) -> AsyncIterator[Daemon]:
    """A daemon serving the language's manifest, with `settings` in its [daemon] table."""
    directory = tmp_path / lang
    directory.mkdir()
    async with running(make_config(directory, manifest(lang), {"metrics_listen": ""} | settings)) as daemon:
        yield daemon


# --- answers ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """An HTTP answer as the scenarios compare it: status, body and every header but the daemon's framing, in
    order (names lower-cased)."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, response: Response) -> Answer:
        headers = [(n.decode().lower(), v.decode("latin-1")) for n, v in response.raw_headers]
        return cls(response.status, response.body, tuple((n, v) for n, v in headers if n not in FRAMING))

    def without_language(self) -> Answer:
        """The answer without `x-conformance`, the only part the languages may answer differently."""
        return Answer(self.status, self.body, tuple(h for h in self.headers if h[0] != "x-conformance"))


@dataclass(frozen=True)
class Step:
    """One HTTP request of a scenario and the exact answer the README gives it (`{lang}` in a header value is the
    language)."""

    name: str
    method: str
    path: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    expected: Answer = Answer(404)

    def answer_for(self, lang: str) -> Answer:
        headers = tuple((n, v.format(lang=lang)) for n, v in self.expected.headers)
        return Answer(self.expected.status, self.expected.body, headers)


def echoed(body: bytes, content_type: str | None) -> Answer:
    """What POST /conf/<key>/echo answers: the body, its content type (none for an empty body) and the language."""
    headers = [] if not body else [("content-type", content_type or "application/octet-stream")]
    return Answer(200, body, (*headers, ("x-conformance", "{lang}")))


ALL_BYTES = bytes(range(256))
BIG = bytes((i * 7) % 256 for i in range(100_000))  # more than the 64 KiB first inbox, and any SDK's first buffer

#: The HTTP scenarios that are one request and one answer, in order (the kv ones build on each other).
STEPS: list[Step] = [
    # echo
    Step("echo text", "POST", "/conf/a/echo", b"hello", {"Content-Type": "text/plain; charset=utf-8"},
         echoed(b"hello", "text/plain; charset=utf-8")),
    Step("echo without content-type", "POST", "/conf/a/echo", ALL_BYTES, {}, echoed(ALL_BYTES, None)),
    Step("echo, the header named in any case, spaces around its value", "POST", "/conf/a/echo", b"x",
         {"CONTENT-type": "x/y \t"}, echoed(b"x", "x/y")),
    Step("echo an empty body", "POST", "/conf/a/echo", b"", {"Content-Type": "text/plain"}, echoed(b"", None)),
    Step("echo 100 KB", "POST", "/conf/a/echo", BIG, {}, echoed(BIG, None)),
    # call
    Step("call", "POST", "/conf/a/call", b"ping", {}, Answer(200, b"ping")),
    Step("call with an empty body", "POST", "/conf/a/call", b"", {}, Answer(200)),
    Step("call with a body of every byte", "POST", "/conf/a/call", ALL_BYTES, {}, Answer(200, ALL_BYTES)),
    Step("call with 100 KB", "POST", "/conf/a/call", BIG, {}, Answer(200, BIG)),
    # kv
    Step("kv get, never stored", "GET", "/conf/a/kv/x", expected=Answer(404)),
    Step("kv delete, never stored", "DELETE", "/conf/a/kv/x", expected=Answer(404)),
    Step("kv put", "PUT", "/conf/a/kv/x", b"\x00value\xff", expected=Answer(204)),
    Step("kv get", "GET", "/conf/a/kv/x", expected=Answer(200, b"\x00value\xff")),
    Step("kv, another actor's storage", "GET", "/conf/b/kv/x", expected=Answer(404)),
    Step("kv, another name", "GET", "/conf/a/kv/y", expected=Answer(404)),
    Step("kv put, a name with a slash", "PUT", "/conf/a/kv/y/z", b"deep", expected=Answer(204)),
    Step("kv get, a name with a slash", "GET", "/conf/a/kv/y/z", expected=Answer(200, b"deep")),
    Step("kv put, replaced by an empty value", "PUT", "/conf/a/kv/x", b"", expected=Answer(204)),
    Step("kv get, an empty value", "GET", "/conf/a/kv/x", expected=Answer(200)),
    Step("kv put 100 KB", "PUT", "/conf/a/kv/big", BIG, expected=Answer(204)),
    Step("kv get 100 KB", "GET", "/conf/a/kv/big", expected=Answer(200, BIG)),
    Step("kv delete", "DELETE", "/conf/a/kv/x", expected=Answer(204)),
    Step("kv get, deleted", "GET", "/conf/a/kv/x", expected=Answer(404)),
    Step("kv delete, deleted", "DELETE", "/conf/a/kv/x", expected=Answer(404)),
    # anything else
    Step("echo with GET", "GET", "/conf/a/echo"),
    Step("call with PUT", "PUT", "/conf/a/call", b"x"),
    Step("an unknown resource", "POST", "/conf/a/nothing", b"x"),
    Step("the actor's root", "GET", "/conf/a"),
    Step("kv with POST", "POST", "/conf/a/kv/x", b"x"),
    Step("a resource under echo", "POST", "/conf/a/echo/more", b"x"),
]  # fmt: skip


async def answer(address: tuple[str, int], step: Step) -> Answer:
    return Answer.of(await http(address, step.method, step.path, step.body, step.headers))


# --- the scenarios that take more than one request -----------------------------------------------------------------


async def send_and_read_back(address: tuple[str, int], key: str, message: bytes) -> tuple[Answer, Answer]:
    """POST /conf/<key>/send, then GET /conf/<key>/kv/sent until the message has arrived (bounded)."""
    sent = Answer.of(await http(address, "POST", f"/conf/{key}/send", message))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SEND_WAIT_S
    while True:
        stored = Answer.of(await http(address, "GET", f"/conf/{key}/kv/sent"))
        if stored.status != 404 or loop.time() > deadline:
            return sent, stored
        await asyncio.sleep(0.01)


@dataclass(frozen=True)
class Trapped:
    """What the daemon answers for a trap, without the wasm backtrace (which names each language's functions)."""

    status: int
    content_type: str | None
    error: str | None
    service: str | None


async def trap_then_echo(address: tuple[str, int]) -> tuple[Trapped, Answer, Answer]:
    """POST /conf/t/trap after storing a value; then echo (a fresh instance answers) and the value (storage is not
    the instance's memory)."""
    await http(address, "PUT", "/conf/t/kv/kept", b"before the trap")
    response = await http(address, "POST", "/conf/t/trap", b"boom")
    content_type = response.headers.get("content-type")
    body = json.loads(response.body) if content_type == "application/json" else {}
    trapped = Trapped(response.status, content_type, body.get("error"), body.get("service"))
    after = Answer.of(await http(address, "POST", "/conf/t/echo", b"after", {"Content-Type": "text/plain"}))
    kept = Answer.of(await http(address, "GET", "/conf/t/kv/kept"))
    return trapped, after, kept


LOG_LINE = "conformance: a log line, é"


async def log_line(address: tuple[str, int]) -> tuple[Answer, list[dict[str, Any]]]:
    """POST /conf/l/log; the `guest.log` events the daemon wrote meanwhile."""
    with capture_logs() as logs:
        logged = Answer.of(await http(address, "POST", "/conf/l/log", LOG_LINE.encode()))
    events = [
        {k: entry.get(k) for k in ("service", "message", "log_level")}
        for entry in logs
        if entry["event"] == "guest.log"
    ]
    return logged, events


def call_request(target: str, payload: bytes) -> bytes:
    """caller.wat's request: one call to `target` with `payload`, lending a 64 KiB reply buffer."""
    return struct.pack("<III", 1, 65536, len(target)) + target.encode() + payload


async def call_actor(address: tuple[str, int], payload: bytes) -> Answer:
    """A CALL of kind 2 to conformance/c, made by `driver`: its answer is the call's result (i32) and the reply."""
    return Answer.of(await http(address, "POST", "/driver", call_request("conformance/c", payload)))


async def next_event(stream: StreamClient) -> Event:
    return await asyncio.wait_for(stream.recv(), timeout=WS_TIMEOUT_S)


async def websocket_exchange(address: tuple[str, int]) -> dict[str, list[Event]]:
    """Two clients of /conf/w: a text from `a`, a binary from `a`, then a text from `b`; what each received, in order.

    Published messages are numbered in one order, so each client's events are deterministic: `a` gets its text direct
    then published, its binary direct only; `b` gets `a`'s text published, never `a`'s binary, then its own text.
    """
    host, port = address
    url = f"ws://{host}:{port}/conf/w"
    async with StreamClient(url) as a, StreamClient(url) as b:
        await a.send("hello, é")
        got_a = [await next_event(a), await next_event(a)]
        got_b = [await next_event(b)]
        await a.send(b"\x00\xffbinary")
        got_a.append(await next_event(a))
        await b.send("second")
        got_b += [await next_event(b), await next_event(b)]
        got_a.append(await next_event(a))
    return {"a": got_a, "b": got_b}


WS_EXPECTED: dict[str, list[Event]] = {
    "a": [Direct("hello, é"), Published(1, "hello, é"), Direct(b"\x00\xffbinary"), Published(2, "second")],
    "b": [Published(1, "hello, é"), Direct("second"), Published(2, "second")],
}


# --- each language against the README -----------------------------------------------------------------------------


@pytest.mark.parametrize("lang", ALL_LANGUAGES)
async def test_http_scenarios_answer_as_the_readme_says(tmp_path: Path, lang: str) -> None:
    """Echo, call, kv and every other route answer with the README's status, body and headers, and nothing more."""
    async with conformance_daemon(tmp_path, lang) as daemon:
        client = await Client.connect(daemon.addresses[0])  # one keep-alive connection for every step
        try:
            for step in STEPS:
                got = Answer.of(await client.request(step.method, step.path, step.body, step.headers))
                assert got == step.answer_for(lang), step.name
        finally:
            await client.close()


@pytest.mark.parametrize("lang", ALL_LANGUAGES)
async def test_a_failed_call_answers_502_with_the_abi_code(tmp_path: Path, lang: str) -> None:
    """With `max_call_depth = 1` (ingress -> conformance is the whole chain), the call to peer fails with
    MM_ERR_DEPTH, and the service says so with its code."""
    async with conformance_daemon(tmp_path, lang, max_call_depth=1) as daemon:
        failed = Answer.of(await http(daemon.addresses[0], "POST", "/conf/a/call", b"ping"))
    assert failed == Answer(502, b"call failed: -6")


@pytest.mark.parametrize("lang", ALL_LANGUAGES)
async def test_send_reaches_the_actor_as_a_message_that_it_stores(tmp_path: Path, lang: str) -> None:
    """POST send answers 202 with an empty body; the message then arrives (kind MESSAGE) and is stored as "sent"."""
    async with conformance_daemon(tmp_path, lang) as daemon:
        address = daemon.addresses[0]
        assert await send_and_read_back(address, "s", b"\x00a message\xff") == (
            Answer(202),
            Answer(200, b"\x00a message\xff"),
        )
        assert await send_and_read_back(address, "s", b"") == (Answer(202), Answer(200))  # an empty one replaces it


@pytest.mark.parametrize("lang", ALL_LANGUAGES)
async def test_a_trap_fails_its_request_and_a_fresh_instance_answers_the_next(tmp_path: Path, lang: str) -> None:
    """The daemon answers a trap with 500 and its JSON error naming the service; the next request is served (by a
    new instance), and what the actor stored before the trap is still there."""
    async with conformance_daemon(tmp_path, lang) as daemon:
        assert (await http(daemon.addresses[0], "GET", "/conf/t/kv/kept")).status == 404  # the actor is live
        actors = daemon.router.keyed["conformance"].actors
        before = actors["t"].instance
        trapped, after, kept = await trap_then_echo(daemon.addresses[0])
        assert before is not None and actors["t"].instance is not before
        assert trapped == Trapped(500, "application/json", "trap", "conformance")
        assert after == Answer(200, b"after", (("content-type", "text/plain"), ("x-conformance", lang)))
        assert kept == Answer(200, b"before the trap")


@pytest.mark.parametrize("lang", ALL_LANGUAGES)
async def test_log_writes_the_body_as_one_guest_log_line_at_info(tmp_path: Path, lang: str) -> None:
    async with conformance_daemon(tmp_path, lang) as daemon:
        logged, events = await log_line(daemon.addresses[0])
    assert logged == Answer(204)
    assert events == [{"service": "conformance", "message": LOG_LINE, "log_level": "info"}]


@pytest.mark.parametrize("lang", ALL_LANGUAGES)
async def test_a_long_log_line_reaches_the_daemon_whole_and_is_cut_there(tmp_path: Path, lang: str) -> None:
    """Past the C and Zig SDKs' 1 KiB format buffer a line still arrives whole (3,000 bytes), and one past the
    daemon's MAX_LOG_LINE is cut by the daemon alone, saying how much: the same line from every language."""
    lines = ["x" * 3000, "y" * (MAX_LOG_LINE + 904)]
    async with conformance_daemon(tmp_path, lang) as daemon:
        with capture_logs() as logs:
            for line in lines:
                assert Answer.of(await http(daemon.addresses[0], "POST", "/conf/l/log", line.encode())) == Answer(204)
    messages = [entry["message"] for entry in logs if entry["event"] == "guest.log"]
    assert messages[0] == lines[0]
    assert messages[1] == "y" * MAX_LOG_LINE + "... [904 bytes cut]", messages[1][-40:]


@pytest.mark.parametrize("lang", ALL_LANGUAGES)
async def test_a_call_is_answered_with_its_payload(tmp_path: Path, lang: str) -> None:
    """A CALL (kind 2) from another service gets its payload back unchanged, empty and large ones included."""
    async with conformance_daemon(tmp_path, lang) as daemon:
        address = daemon.addresses[0]
        for payload in (b"payload", b"", ALL_BYTES, BIG[:60_000]):
            assert await call_actor(address, payload) == Answer(200, struct.pack("<i", len(payload)) + payload)


@pytest.mark.parametrize("lang", ALL_LANGUAGES)
async def test_websocket_text_goes_back_direct_and_published_binary_direct_only(tmp_path: Path, lang: str) -> None:
    async with conformance_daemon(tmp_path, lang) as daemon:
        assert await websocket_exchange(daemon.addresses[0]) == WS_EXPECTED


# --- the languages against each other ------------------------------------------------------------------------------

Scenario = Callable[[tuple[str, int]], Awaitable[Any]]


def comparable(value: Any) -> Any:
    """An outcome with `x-conformance` taken out of every Answer in it."""
    if isinstance(value, Answer):
        return value.without_language()
    if isinstance(value, tuple | list):
        return type(value)(comparable(v) for v in value)
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items()}
    return value


def one_step(step: Step) -> Scenario:
    return lambda address: answer(address, step)


#: Every scenario above, by name: what the cross-language test runs in each language.
SCENARIOS: dict[str, Scenario] = {
    **{f"http: {step.name}": one_step(step) for step in STEPS},
    "send": lambda address: send_and_read_back(address, "s", b"message"),
    "trap": trap_then_echo,
    "log": log_line,
    "call kind 2": lambda address: call_actor(address, b"payload"),
    "websocket": websocket_exchange,
}


async def outcomes(tmp_path: Path, lang: str) -> dict[str, Any]:
    async with conformance_daemon(tmp_path, lang) as daemon:
        return {name: comparable(await run(daemon.addresses[0])) for name, run in SCENARIOS.items()}


async def test_every_language_gives_the_same_answers(tmp_path: Path) -> None:
    """The same scenario list in every language that runs here gives identical outcomes (x-conformance aside)."""
    if len(RUNNING) < 2:
        pytest.skip(f"only {RUNNING} run here: nothing to compare")
    results = {lang: await outcomes(tmp_path, lang) for lang in RUNNING}
    first, *others = RUNNING
    for lang in others:
        for name in SCENARIOS:
            assert results[lang][name] == results[first][name], f"{name}: {lang} and {first} differ"
