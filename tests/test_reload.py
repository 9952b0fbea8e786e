"""Hot swap on real files with a real daemon: atomic renames and in-place writes, bad builds, health checks,
rollback, state hand-off, manifest edits, and calls that never fail while versions change."""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

from structlog.testing import capture_logs

from conftest import Client, fixture, http, running, write_manifest
from micromono.config import Config, load_config
from micromono.daemon import Daemon
from micromono.reload import Reloader


def guest(tag: str, *, trap: bool = False, health: int | None = None, state: bool = True) -> str:
    """A versioned guest: every HTTP request increments a counter; the reply is `tag` then the count (u32).

    trap: every request traps. health: export mm_health returning this. state: export mm_snapshot/mm_restore.
    """
    assert len(tag) == 2
    exports = ""
    if health is not None:
        exports += f'(func (export "mm_health") (result i32) (i32.const {health}))\n'
    if state:
        exports += """
  (func (export "mm_snapshot") (result i64)
    (i32.store (i32.const 2048) (global.get $count))
    (i64.or (i64.shl (i64.const 2048) (i64.const 32)) (i64.const 4)))
  (func (export "mm_restore") (param $n i32) (result i32)
    (if (i32.ne (local.get $n) (i32.const 4)) (then (return (i32.const 1))))
    (global.set $count (i32.load (i32.const 1024)))
    (i32.const 0))
"""
    return f"""
(module
  (memory (export "memory") 2)
  (global $count (mut i32) (i32.const 0))
  (data (i32.const 512) "\\c8\\00\\00\\00{tag}")
  (func (export "mm_abi_version") (result i32) (i32.const 2))
  (func (export "mm_inbox") (param i32) (result i32) (i32.const 1024))
  (func (export "mm_handle") (param $kind i32) (param $len i32) (result i64)
    {"unreachable" if trap else ""}
    (global.set $count (i32.add (global.get $count) (i32.const 1)))
    (i32.store (i32.const 518) (global.get $count))
    (i64.or (i64.shl (i64.const 512) (i64.const 32)) (i64.const 10)))
  {exports}
)
"""


def parse(body: bytes) -> tuple[str, int]:
    return body[:2].decode(), struct.unpack("<I", body[2:6])[0]


def replace_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_in_place(path: Path, text: str) -> None:
    with open(path, "r+") as fh:
        fh.truncate(0)
        fh.write(text)


async def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def manifest(tmp_path: Path, svc: dict[str, object] | None = None, **daemon: object) -> Path:
    (tmp_path / "svc.wat").write_text(guest("v1"))
    return write_manifest(
        tmp_path,
        {
            "svc": {"wasm": tmp_path / "svc.wat", "routes": ["/svc"], "instances": 1, **(svc or {})},
            "other": {"wasm": fixture("echo.wat"), "routes": ["/echo"]},
        },
        daemon,
    )


async def test_atomic_rename_and_in_place_write_swap_the_version(tmp_path: Path) -> None:
    async with running(load_config(manifest(tmp_path))) as daemon:
        addr = daemon.addresses[0]
        assert parse((await http(addr, "GET", "/svc")).body) == ("v1", 1)
        first = daemon.router.slots["svc"].current
        assert first is not None
        other = daemon.router.slots["other"].current
        replace_atomically(tmp_path / "svc.wat", guest("v2"))
        await wait_for(lambda: daemon.router.slots["svc"].current is not first)
        tag, count = parse((await http(addr, "GET", "/svc")).body)
        assert (tag, count) == ("v2", 2)  # the count came over with mm_snapshot/mm_restore
        second = daemon.router.slots["svc"].current
        write_in_place(tmp_path / "svc.wat", guest("v3"))
        await wait_for(lambda: daemon.router.slots["svc"].current is not second)
        assert parse((await http(addr, "GET", "/svc")).body) == ("v3", 3)
        assert daemon.router.slots["other"].current is other  # untouched
        assert first.closed and first.live == 0
        assert daemon.reloader is not None
        assert daemon.reloader.results["svc"].outcome == "swapped"
        assert daemon.reloader.counts[("svc", "swapped")] == 2


async def test_bad_builds_are_rejected_and_the_old_version_keeps_serving(tmp_path: Path) -> None:
    async with running(load_config(manifest(tmp_path))) as daemon:
        addr = daemon.addresses[0]
        assert daemon.reloader is not None
        path = tmp_path / "svc.wat"
        before = daemon.router.slots["svc"].current
        for broken, reason in (
            ("(module (func", "not a valid WebAssembly module"),
            ('(module (memory (export "memory") 1))', "does not follow the micromono guest ABI v2"),
            (guest("v9", health=3), "mm_health returned 3, not 0 (healthy)"),
        ):
            replace_atomically(path, broken)
            await wait_for(lambda r=reason: reason_in(daemon, r))
            assert daemon.router.slots["svc"].current is before
            assert parse((await http(addr, "GET", "/svc")).body)[0] == "v1"
        assert daemon.reloader.counts[("svc", "rejected")] == 3
        status = daemon.status()
        assert status["services"][0]["last_reload"]["outcome"] == "rejected"


def reason_in(daemon, text: str) -> bool:  # type: ignore[no-untyped-def]
    result = daemon.reloader.results.get("svc")
    return result is not None and result.outcome == "rejected" and text in result.reason


async def test_a_version_that_fails_in_probation_is_rolled_back(tmp_path: Path) -> None:
    # (max_failures is raised so that the supervisor's quarantine does not act first: this is rollback's test)
    config = load_config(manifest(tmp_path, {"max_failures": 100}, probation=5.0, rollback_error_rate=0.5))
    async with running(config) as daemon:
        addr = daemon.addresses[0]
        assert parse((await http(addr, "GET", "/svc")).body) == ("v1", 1)
        good = daemon.router.slots["svc"].current
        replace_atomically(tmp_path / "svc.wat", guest("v2", trap=True))
        await wait_for(lambda: daemon.router.slots["svc"].current is not good)
        bad = daemon.router.slots["svc"].current
        for _ in range(6):
            assert (await http(addr, "GET", "/svc")).status == 500
        await wait_for(lambda: daemon.router.slots["svc"].current is not bad)
        restored = daemon.router.slots["svc"].current
        assert restored is not None and restored.sha256 == good.sha256  # type: ignore[union-attr]
        assert parse((await http(addr, "GET", "/svc")).body)[0] == "v1"
        assert daemon.reloader is not None
        result = daemon.reloader.results["svc"]
        assert result.outcome == "rolled_back"
        assert result.reason.startswith("6 of 6 calls failed (100%) within 5 s of the swap")


async def test_a_service_without_snapshot_starts_empty(tmp_path: Path) -> None:
    async with running(load_config(manifest(tmp_path))) as daemon:
        addr = daemon.addresses[0]
        for _ in range(3):
            await http(addr, "GET", "/svc")
        first = daemon.router.slots["svc"].current
        replace_atomically(tmp_path / "svc.wat", guest("v2", state=False))
        await wait_for(lambda: daemon.router.slots["svc"].current is not first)
        assert parse((await http(addr, "GET", "/svc")).body) == ("v2", 1)


async def test_manifest_edits_add_remove_and_leave_the_rest_alone(tmp_path: Path) -> None:
    path = manifest(tmp_path)
    async with running(load_config(path)) as daemon:
        addr = daemon.addresses[0]
        svc = daemon.router.slots["svc"].current
        # Request lines seen before the edit are remembered with their routes (ingress.Routes.lines): the edit
        # must not leave them routed the old way.
        assert (await http(addr, "GET", "/reflect")).status == 404
        assert (await http(addr, "POST", "/echo", b"x")).status == 200
        # So is a keep-alive connection's last head (ingress.HttpProtocol.known).
        kept = await Client.connect(addr)
        assert (await kept.request("POST", "/echo", b"x")).status == 200
        # An invalid edit is rejected whole.
        path.write_text(path.read_text() + "\n[services.new]\nwsam = 'x'\n")
        await wait_for(lambda: daemon.reloader is not None and "services.toml" in daemon.reloader.results)
        assert daemon.reloader is not None
        assert daemon.reloader.results["services.toml"].outcome == "rejected"
        assert "services.new.wsam: unknown key" in daemon.reloader.results["services.toml"].reason
        # Add a service with a route, remove another.
        write_manifest(
            tmp_path,
            {
                "svc": {"wasm": tmp_path / "svc.wat", "routes": ["/svc"], "instances": 1},
                "reflect": {"wasm": fixture("reflect.wat"), "routes": ["/reflect"]},
            },
        )
        await wait_for(lambda: "reflect" in daemon.router.slots and daemon.router.slots["reflect"].current is not None)
        await wait_for(lambda: daemon.router.slots["other"].current is None)
        assert (await http(addr, "GET", "/reflect")).status == 200
        assert (await http(addr, "POST", "/echo", b"x")).status == 404
        assert (await kept.request("POST", "/echo", b"x")).status == 404
        await kept.close()
        assert daemon.router.slots["svc"].current is svc  # untouched, not disturbed
        assert parse((await http(addr, "GET", "/svc")).body) == ("v1", 1)
        outcomes = {k: v for k, v in daemon.reloader.counts.items() if k[0] != "services.toml"}
        assert outcomes == {("reflect", "added"): 1, ("other", "removed"): 1}


async def test_calls_never_fail_while_versions_change(tmp_path: Path) -> None:
    """A client calls without pause while the file is replaced many times, good and bad builds alternating."""
    async with running(load_config(manifest(tmp_path))) as daemon:
        addr = daemon.addresses[0]
        failures: list[object] = []
        seen: set[str] = set()
        stop = asyncio.Event()
        count = 0

        async def client() -> None:
            nonlocal count
            conn = await Client.connect(addr)
            while not stop.is_set():
                response = await conn.request("GET", "/svc")
                if response.status != 200:
                    failures.append((response.status, response.body))
                    continue
                tag, n = parse(response.body)
                seen.add(tag)
                count += 1
                if n != count:  # the counter moves with every swap: no request lost, none counted twice
                    failures.append(("count", n, count))
            await conn.close()

        task = asyncio.create_task(client())
        path = tmp_path / "svc.wat"
        for i in range(12):
            before = daemon.router.slots["svc"].current
            if i % 3 == 2:
                replace_atomically(path, "(module (func")  # a broken build: rejected
                await wait_for(lambda: reason_in(daemon, "not a valid WebAssembly module"))
            else:
                tag = f"v{i % 10}"
                (replace_atomically if i % 2 else write_in_place)(path, guest(tag))
                await wait_for(lambda b=before: daemon.router.slots["svc"].current is not b)
            await asyncio.sleep(0.02)
        stop.set()
        await task
        assert failures == []
        assert count > 50
        assert len(seen) >= 5


async def test_queued_work_moves_to_the_new_version_and_reloads_are_metrics(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from micromono.metrics import render

    async with running(load_config(manifest(tmp_path))) as daemon:
        addr = daemon.addresses[0]
        old = daemon.router.slots["svc"].current
        assert old is not None
        for _ in range(3):  # queued, not started (no worker was woken): they must reach the new version
            old.mailbox.put_nowait((3, b"", None, None))
        replace_atomically(tmp_path / "svc.wat", guest("v2"))
        await wait_for(lambda: daemon.router.slots["svc"].current is not old)
        new = daemon.router.slots["svc"].current
        assert new is not None
        await wait_for(lambda: len(new.mailbox) == 0)
        assert parse((await http(addr, "GET", "/svc")).body) == ("v2", 4)
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(render(daemon.registry).decode())
            for s in family.samples
        }
        assert samples[("micromono_reloads_total", (("outcome", "swapped"), ("service", "svc")))] == 1
        assert (
            samples[
                ("micromono_version_calls_total", (("outcome", "ok"), ("service", "svc"), ("version", new.version)))
            ]
            == 4
        )


async def test_polling_watcher_sees_replacements(tmp_path: Path) -> None:
    from micromono.reload import FileWatcher

    target = tmp_path / "f.wat"
    target.write_text("one")
    watcher = FileWatcher([target], force_polling=True)
    live = asyncio.Event()
    seen: list[set[Path]] = []

    async def consume() -> None:
        async for batch in watcher.changes():
            live.set()
            if batch:
                seen.append(batch)
                watcher.stop()

    task = asyncio.create_task(consume())
    try:
        await asyncio.wait_for(live.wait(), 20)
        replace_atomically(target, "two")
        await asyncio.wait_for(asyncio.shield(task), 20)
    finally:
        watcher.stop()
        await task
    assert seen == [{target.resolve()}]


# --- with an injected watcher and clock: no filesystem events, no wall-clock windows -----------------------------


class FakeWatcher:
    """A `watch.Watcher` that reports what the test says changed, when it says so."""

    def __init__(self, paths: Iterable[Path]) -> None:
        self.paths = {Path(os.path.realpath(p)) for p in paths}
        self._batches: asyncio.Queue[set[Path] | None] = asyncio.Queue()
        self._applied = 0  # batches the reloader has finished with (it asked for the next one)
        self._progress = asyncio.Event()
        self.stopped = False

    def stop(self) -> None:
        # The reloader stops a watcher without asking for more once a manifest edit changed the files to watch.
        self.stopped = True
        self._progress.set()
        self._batches.put_nowait(None)

    async def changes(self) -> AsyncIterator[set[Path]]:
        yield set()  # the watch is live
        while (batch := await self._batches.get()) is not None:
            yield batch
            self._applied += 1
            self._progress.set()

    async def report(self, *paths: Path) -> None:
        """Report `paths` as changed and return once the reloader has applied the change."""
        target = self._applied + 1
        self._batches.put_nowait(set(paths))
        while self._applied < target and not self.stopped:
            self._progress.clear()
            await self._progress.wait()


class Watchers:
    """The watcher factory: each watcher the reloader made, the newest last."""

    def __init__(self) -> None:
        self.made: list[FakeWatcher] = []

    def __call__(self, paths: Iterable[Path]) -> FakeWatcher:
        self.made.append(FakeWatcher(paths))
        return self.made[-1]


@asynccontextmanager
async def watched_by(watchers: Watchers, config: Config) -> AsyncIterator[Daemon]:
    daemon = Daemon(config, watcher_factory=watchers)
    await daemon.startup()
    try:
        yield daemon
    finally:
        await daemon.shutdown()


async def test_a_reported_change_is_reloaded_and_an_unreported_one_is_not(tmp_path: Path) -> None:
    """The reloader acts on what its watcher reports: a file rewritten but not reported keeps its version until the
    watcher reports it."""
    watchers = Watchers()
    async with watched_by(watchers, load_config(manifest(tmp_path))) as daemon:
        (watcher,) = watchers.made
        assert watcher.paths == {
            (tmp_path / "services.toml").resolve(),
            (tmp_path / "svc.wat").resolve(),
            fixture("echo.wat").resolve(),
        }
        addr = daemon.addresses[0]
        replace_atomically(tmp_path / "svc.wat", guest("v2"))
        await watcher.report(fixture("echo.wat"))  # another file: svc is not looked at
        assert parse((await http(addr, "GET", "/svc")).body) == ("v1", 1)
        await watcher.report(tmp_path / "svc.wat")
        assert daemon.reloader is not None and daemon.reloader.results["svc"].outcome == "swapped"
        assert parse((await http(addr, "GET", "/svc")).body) == ("v2", 2)


async def test_a_manifest_edit_is_applied_through_the_daemon_and_rewatches_the_new_files(tmp_path: Path) -> None:
    """An edited services.toml goes through `Daemon.apply_config` (routes, limits) and, when its set of files
    changed, the reloader asks for a watcher of the new set."""
    watchers = Watchers()
    path = manifest(tmp_path)
    async with watched_by(watchers, load_config(path)) as daemon:
        addr = daemon.addresses[0]
        (tmp_path / "new.wat").write_text(guest("nw"))
        write_manifest(
            tmp_path,
            {
                "svc": {"wasm": tmp_path / "svc.wat", "routes": ["/svc"], "instances": 1},
                "new": {"wasm": tmp_path / "new.wat", "routes": ["/new"]},
            },
            {"max_call_depth": 5},
        )
        await watchers.made[0].report(path)
        assert daemon.config.names == ("svc", "new") and daemon.router.max_call_depth == 5
        assert parse((await http(addr, "GET", "/new")).body) == ("nw", 1)
        assert (await http(addr, "POST", "/echo", b"x")).status == 404
        while len(watchers.made) < 2:  # the reloader makes its next watcher on its next turn
            await asyncio.sleep(0)
        assert (tmp_path / "new.wat").resolve() in watchers.made[1].paths
        assert fixture("echo.wat").resolve() not in watchers.made[1].paths


async def test_probation_ends_when_its_window_has_passed_on_the_reloaders_clock(tmp_path: Path) -> None:
    """A swapped-in version stays on probation until the reloader's clock (a fake one here) passes the window."""
    now = 1000.0
    config = load_config(manifest(tmp_path, probation=30.0, watch=False))
    async with running(config) as daemon:
        reloader = Reloader(daemon, clock=lambda: now)
        replace_atomically(tmp_path / "svc.wat", guest("v2"))
        assert (await reloader.reload_service("svc")).outcome == "swapped"
        with capture_logs() as logs:
            now += 29.0
            await reloader.check_probations()
            assert "in probation: 1" in repr(reloader) and logs == []
            now += 2.0
            await reloader.check_probations()
        assert "in probation: 0" in repr(reloader)
        assert [entry["event"] for entry in logs] == ["reload.probation.passed"]
