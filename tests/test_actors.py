"""Actors in a real daemon: one instance per key, durable storage, the output gate, alarms, hibernation, hot swap
and migrations, and bad input. The actors are real modules built from source (`examples/counter.c`, the test
probe `tests/fixtures/actor_probe.c`, whose HTTP body is a list of commands, and a hand-written hostile WAT
actor); the databases are real SQLite files in the test's directory."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from conftest import EXAMPLES_BUILD, Client, fixture, http, make_config, running, write_manifest
from micromono.actors.keyed import KeyedService
from micromono.config import load_config
from micromono.daemon import Daemon

COUNTER = EXAMPLES_BUILD / "counter.wasm"
PROBE = EXAMPLES_BUILD / "actor_probe.wasm"
PROBE_V2 = EXAMPLES_BUILD / "actor_probe_v2.wasm"
PROBE_V2_TRAP = EXAMPLES_BUILD / "actor_probe_v2_trap.wasm"


def probe(**keys: Any) -> dict[str, Any]:
    """The probe actor's manifest entry (routes /probe/{key}), with `keys` on top."""
    entry: dict[str, Any] = {"kind": "actor", "wasm": PROBE, "routes": ["/probe/{key}"], "calls": ["probe"]}
    entry.update(keys)
    return entry


async def commands(address: tuple[str, int], key: str, *lines: str) -> list[str]:
    """Run the probe's commands as actor `key`; its answer, one line per command (status 200 expected)."""
    response = await http(address, "POST", f"/probe/{key}", "\n".join(lines).encode())
    assert response.status == 200, (response.status, response.body)
    text = response.body.decode()
    return text.removesuffix("\n").split("\n") if text else []


#: How the probe answers a `get` of a key that holds nothing.
NOT_FOUND = "ERR -11 mm_kv_get: no value under this key"


def keyed(daemon: Daemon, name: str = "probe") -> KeyedService:
    return daemon.router.keyed[name]


# --- the counter contract ---------------------------------------------------------------------------------------


async def test_the_counter_answers_its_contract(tmp_path: Path) -> None:
    config = make_config(tmp_path, {"counter": {"kind": "actor", "wasm": COUNTER, "routes": ["/counter/{key}"]}})
    async with running(config) as daemon:
        addr = daemon.addresses[0]
        never = await http(addr, "GET", "/counter/never-seen")
        assert (never.status, never.body) == (200, b"0")
        assert [(await http(addr, "POST", "/counter/a")).body for _ in range(3)] == [b"1", b"2", b"3"]
        assert (await http(addr, "POST", "/counter/b")).body == b"1"
        got = await http(addr, "GET", "/counter/a")
        assert (got.status, got.body) == (200, b"3")
        assert got.headers["content-type"].startswith("text/plain")
        assert (await http(addr, "DELETE", "/counter/a")).status == 405
    # the values are in the database, and a new daemon on it sees them
    async with running(config) as daemon:
        assert (await http(daemon.addresses[0], "GET", "/counter/a")).body == b"3"


async def test_one_key_runs_its_messages_one_at_a_time_in_order(tmp_path: Path) -> None:
    """Concurrent increments of one key never lose one: every answer is distinct and the last is the total; other
    keys go on beside it."""
    config = make_config(tmp_path, {"counter": {"kind": "actor", "wasm": COUNTER, "routes": ["/counter/{key}"]}})
    async with running(config) as daemon:
        addr = daemon.addresses[0]

        async def client(key: str, n: int) -> list[int]:
            conn = await Client.connect(addr)
            try:
                return [int((await conn.request("POST", f"/counter/{key}")).body) for _ in range(n)]
            finally:
                await conn.close()

        results = await asyncio.gather(*(client("hot", 25) for _ in range(8)), client("other", 10))
        hot = sorted(value for values in results[:8] for value in values)
        assert hot == list(range(1, 201))
        for values in results[:8]:
            assert values == sorted(values)  # each connection saw its own increments in order
        assert results[8] == list(range(1, 11))
        assert (await http(addr, "GET", "/counter/hot")).body == b"200"


# --- storage, transactions and the output gate -----------------------------------------------------------------


async def test_storage_calls_read_their_own_writes_and_list_in_order(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, {"probe": probe()})) as daemon:
        addr = daemon.addresses[0]
        assert await commands(
            addr, "k1", "key", "get a", "put a 1", "get a", "put b 2", "put ab 3", "del b", "del b"
        ) == [
            "k1",
            NOT_FOUND,
            "ok",
            "1",
            "ok",
            "ok",
            "1",
            "0",
        ]
        assert await commands(addr, "k1", "list a 0", "list a 1 rev", "list  0") == [
            "a=1,ab=3",
            "ab=3",
            "a=1,ab=3,migrations=0->1",  # the probe's migration to schema 1 wrote one too
        ]
        assert await commands(addr, "k2", "get a") == [NOT_FOUND]  # its own storage


async def test_a_trap_an_application_error_and_a_timeout_roll_the_message_back(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, {"probe": probe(call_timeout=0.2)})) as daemon:
        addr = daemon.addresses[0]
        await commands(addr, "r", "put kept 1")
        trapped = await http(addr, "POST", "/probe/r", b"put a 1\nsql CREATE TABLE t (x)\nalarm 99999999999999\ntrap")
        assert trapped.status == 500 and trapped.json()["error"] == "trap"
        failed = await http(addr, "POST", "/probe/r", b"put b 1\nfail")
        assert failed.status == 500 and failed.json()["error"] == "app_error"
        slow = await http(addr, "POST", "/probe/r", b"put c 1\nspin")
        assert slow.status == 504
        assert await commands(addr, "r", "list k 0", "alarm?", "sql SELECT name FROM sqlite_master") == [
            "kept=1",
            "-1",
            "changes=0",
        ]


async def test_sql_runs_in_the_actors_own_database_with_bound_parameters(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, {"probe": probe()})) as daemon:
        addr = daemon.addresses[0]
        assert await commands(
            addr,
            "s1",
            "sql CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)",
            "sql? INSERT INTO t (name) VALUES (?)\tann",
            "sql? INSERT INTO t (name) VALUES (?)\tbob",
            "sql? SELECT id, name FROM t WHERE id >= ? ORDER BY id\t1",
        ) == ["changes=0", "changes=1", "changes=1", "1|ann", "2|bob", "changes=0"]
        # another actor of the same service does not see the table
        (missing,) = await commands(addr, "s2", "sql SELECT * FROM t")
        assert missing.startswith("ERR -13") and "no such table: t" in missing
        refused = await commands(addr, "s1", "sql ATTACH DATABASE 'x.db' AS x", "sql PRAGMA page_count", "sql BEGIN")
        assert all(line.startswith("ERR -13") for line in refused), refused
        (bad,) = await commands(addr, "s1", "sql SELEC nothing")
        assert bad.startswith("ERR -13") and "syntax error" in bad
    async with running(load_config(tmp_path / "services.toml")) as daemon:
        assert await commands(daemon.addresses[0], "s1", "sql SELECT count(*) FROM t") == ["2", "changes=0"]


async def test_a_storage_call_over_the_limit_fails_and_writes_nothing(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, {"probe": probe(storage_limit="16KiB")})) as daemon:
        addr = daemon.addresses[0]
        (big,) = await commands(addr, "full", "big 20000")
        assert big.startswith("ERR -12") and "storage_limit" in big
        assert await commands(addr, "full", "get big", "big 1000", "get big") == [
            NOT_FOUND,
            "ok",
            ("abcdefghijklmnopqrstuvwxyz" * 40)[:1000],
        ]


async def test_the_reply_waits_for_the_commit(tmp_path: Path) -> None:
    """The output gate: while the database is locked by another process the reply is held; it is sent once the
    write is durable, and a read-only message behind it waits too."""
    config = make_config(tmp_path, {"probe": probe()})
    async with running(config) as daemon:
        addr = daemon.addresses[0]
        await commands(addr, "g", "put a 0")
        db = sqlite3.connect(config.daemon.data_dir / "probe.sqlite3", isolation_level=None)
        db.execute("BEGIN IMMEDIATE")  # the daemon's writer now waits for the lock
        try:
            write = asyncio.ensure_future(http(addr, "POST", "/probe/g", b"put a 1"))
            read = asyncio.ensure_future(http(addr, "POST", "/probe/g", b"get a"))
            done, _ = await asyncio.wait([write, read], timeout=0.3)
            assert not done, "a reply left before its write was committed"
        finally:
            db.execute("ROLLBACK")
            db.close()
        assert (await write).body == b"ok\n"
        assert (await read).body == b"1\n"


async def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    """A real daemon process is killed with SIGKILL in the middle of a stream of increments over several keys; a
    new daemon on the same database has every increment that was acknowledged."""
    manifest = write_manifest(
        tmp_path,
        {"counter": {"kind": "actor", "wasm": COUNTER, "routes": ["/counter/{key}"]}},
        {"listen": "127.0.0.1:0", "watch": False},
    )
    process, addr = await serve_process(manifest)
    acknowledged: dict[str, int] = {}
    try:

        async def client(key: str) -> None:
            conn = await Client.connect(addr)
            try:
                for _ in range(10_000):
                    acknowledged[key] = int((await conn.request("POST", f"/counter/{key}")).body)
            except (ConnectionError, asyncio.IncompleteReadError, ValueError):
                return
            finally:
                await conn.close()

        tasks = [asyncio.ensure_future(client(f"k{i}")) for i in range(8)]
        while sum(acknowledged.values()) < 400:
            await asyncio.sleep(0.01)
        process.kill()  # SIGKILL, by the PID we started
        await asyncio.gather(*tasks)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
    async with running(load_config(manifest)) as daemon:
        for key, value in acknowledged.items():
            stored = int((await http(daemon.addresses[0], "GET", f"/counter/{key}")).body)
            assert stored >= value, f"{key}: {value} was acknowledged, {stored} survived"


async def serve_process(
    manifest: Path, *, file_limit: int | None = None
) -> tuple[asyncio.subprocess.Process, tuple[str, int]]:
    """`micromono serve` in a child process (JSON logs), with RLIMIT_FSIZE at `file_limit` if given; returns it and
    its ingress address once it is ready."""

    def limit_files() -> None:
        if file_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "micromono", "serve", str(manifest), "--log-format", "json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, preexec_fn=limit_files,
    )  # fmt: skip
    assert process.stdout is not None
    while True:
        line = await asyncio.wait_for(process.stdout.readline(), timeout=60)
        if not line:
            raise AssertionError("the daemon exited before it was ready")
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "daemon.ready":
            host, _, port = event["ingress"][0].rpartition(":")
            asyncio.ensure_future(_drain(process.stdout))
            return process, (host, int(port))


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


# --- hibernation ----------------------------------------------------------------------------------------------


async def test_max_live_hibernates_the_least_recently_used_and_the_next_message_revives_it(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, {"probe": probe(max_live=2)})) as daemon:
        addr = daemon.addresses[0]
        for key in ("a", "b", "c"):
            await commands(addr, key, f"put who {key}")
        actors = keyed(daemon)
        assert list(actors.actors) == ["b", "c"] and actors.hibernated_lru == 1
        assert await commands(addr, "a", "get who") == ["a"]  # revived from storage
        assert list(actors.actors) == ["c", "a"] and actors.revivals == 1


async def test_idle_actors_hibernate_after_idle_timeout(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, {"probe": probe(idle_timeout=30.0)})) as daemon:
        addr = daemon.addresses[0]
        await commands(addr, "a", "put n 1")
        await commands(addr, "b", "key")
        actors = keyed(daemon)
        now = time.monotonic()
        assert actors.sweep(now) == 0  # not idle yet
        assert actors.sweep(now + 31.0) == 2 and not actors.actors and actors.live == 0
        assert await commands(addr, "a", "get n") == ["1"]


# --- alarms ---------------------------------------------------------------------------------------------------


async def test_an_alarm_fires_and_a_failing_one_is_retried(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, {"probe": probe()})) as daemon:
        addr = daemon.addresses[0]
        actors = keyed(daemon)
        soon = int(time.time() * 1000) + 3_600_000
        assert await commands(addr, "a", f"alarm {soon}", "alarm?") == ["ok", str(soon)]
        assert actors.alarms.scheduled("a") == soon
        assert actors.alarms.fire_due(now_ms=soon) == 1
        await wait_until(lambda: actors.alarms_fired == 1)
        assert await commands(addr, "a", "get alarms", "alarm?") == ["1", "-1"]
        # a failing handler is retried with backoff, attempt 2 next
        await commands(addr, "a", "put alarm_fail 1", f"alarm {soon}")
        actors.alarms.fire_due(now_ms=soon)
        await wait_until(lambda: actors.alarms_retried == 1)
        retry_at = actors.alarms.scheduled("a")
        assert retry_at is not None and retry_at > time.time() * 1000
        await commands(addr, "a", "put alarm_fail 0")
        actors.alarms.fire_due(now_ms=retry_at)
        await wait_until(lambda: actors.alarms_fired == 2)
        assert await commands(addr, "a", "get alarms") == ["1,2"]


async def test_an_alarm_survives_a_restart(tmp_path: Path) -> None:
    config = make_config(tmp_path, {"probe": probe()})
    async with running(config) as daemon:
        keyed(daemon).alarms.stop()  # this daemon does not fire it: it stops first
        due = int(time.time() * 1000) + 300
        await commands(daemon.addresses[0], "a", f"alarm {due}")
        assert keyed(daemon).alarms_fired == 0
    while time.time() * 1000 < due:
        await asyncio.sleep(0.05)
    async with running(config) as daemon:
        actors = keyed(daemon)
        await wait_until(lambda: actors.alarms_fired == 1)  # overdue at start: it fires at once
        assert await commands(daemon.addresses[0], "a", "get alarms") == ["1"]


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


# --- calls and sends between actors ---------------------------------------------------------------------------


async def test_actors_call_and_send_to_other_keys_but_not_to_themselves(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, {"probe": probe()})) as daemon:
        addr = daemon.addresses[0]
        await commands(addr, "b", "put x 41")
        assert await commands(addr, "a", "call probe/b incr x") == ["42", ""]  # b's answer ends in its own "\n"
        (itself,) = await commands(addr, "a", "call probe/a key")
        assert itself.startswith("ERR -15") and "called itself" in itself
        assert await commands(addr, "a", "send probe/c put got yes") == ["ok"]
        await wait_until(lambda: "c" in keyed(daemon).directory)
        assert await commands(addr, "c", "get got") == ["yes"]


# --- hot swap and migrations ------------------------------------------------------------------------------------


async def test_a_new_version_migrates_each_actor_at_its_next_message(tmp_path: Path) -> None:
    wasm = tmp_path / "probe.wasm"
    shutil.copy(PROBE, wasm)
    config = make_config(tmp_path, {"probe": probe(wasm=wasm)}, {"watch": True})
    async with running(config) as daemon:
        addr = daemon.addresses[0]
        assert await commands(addr, "a", "put n 1", "get migrations") == ["ok", "0->1"]
        await commands(addr, "b", "put n 2")
        before = daemon.router.slots["probe"].current
        replace(wasm, PROBE_V2)
        await wait_until(lambda: daemon.router.slots["probe"].current is not before)
        assert await commands(addr, "a", "get migrations", "get n") == ["0->1,1->2", "1"]
        assert daemon.router.keyed["probe"].directory["a"].schema_version == 2
        assert daemon.router.keyed["probe"].directory["b"].schema_version == 1  # lazily: not yet
        assert await commands(addr, "b", "get migrations") == ["0->1,1->2"]


async def test_a_migration_that_traps_rolls_back_and_the_swap_is_rolled_back(tmp_path: Path) -> None:
    wasm = tmp_path / "probe.wasm"
    shutil.copy(PROBE, wasm)
    config = make_config(
        tmp_path,
        {"probe": probe(wasm=wasm, max_failures=100)},
        {"watch": True, "probation": 5.0, "rollback_error_rate": 0.5},
    )
    async with running(config) as daemon:
        addr = daemon.addresses[0]
        for i in range(6):
            await commands(addr, f"k{i}", "put n 1")
        good = daemon.router.slots["probe"].current
        replace(wasm, PROBE_V2_TRAP)
        await wait_until(lambda: daemon.router.slots["probe"].current is not good)
        for i in range(6):
            failed = await http(addr, "POST", f"/probe/k{i}", b"get n")
            assert failed.status == 500 and failed.json()["error"] == "migration", failed.body
        await wait_until(
            lambda: (current := daemon.router.slots["probe"].current) is not None and current.sha256 == good.sha256
        )  # type: ignore[union-attr]
        assert await commands(addr, "k0", "get n", "get migrations") == ["1", "0->1"]  # rolled back: still schema 1


def replace(path: Path, source: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    shutil.copy(source, tmp)
    os.replace(tmp, path)


# --- bad input --------------------------------------------------------------------------------------------------


async def test_bad_keys_are_400(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, {"probe": probe()})) as daemon:
        addr = daemon.addresses[0]
        empty = await http(addr, "POST", "/probe/")
        assert empty.status == 400 and "empty" in empty.json()["message"]
        long = await http(addr, "POST", "/probe/" + "k" * 513)
        assert long.status == 400 and "512" in long.json()["message"]
        not_utf8 = await http(addr, "POST", "/probe/%ff")
        assert not_utf8.status == 400 and "UTF-8" in not_utf8.json()["message"]
        assert (await http(addr, "POST", "/probe/a%20b", b"key")).body == b"a b\n"


async def test_storage_calls_with_bad_pointers_trap_and_keep_nothing(tmp_path: Path) -> None:
    hostile = {"kind": "actor", "wasm": fixture("actor_hostile.wat"), "routes": ["/h/{key}"], "max_failures": 100}
    async with running(make_config(tmp_path, {"h": hostile})) as daemon:
        addr = daemon.addresses[0]
        for op in (b"g", b"p", b"s", b"l"):
            response = await http(addr, "POST", "/h/a", op)
            assert response.status == 500, op
            assert "outside" in response.json()["trap"] or "outside" in response.json()["message"], response.body
        trapped = await http(addr, "POST", "/h/a", b"x")
        assert trapped.status == 500
        assert (await http(addr, "POST", "/h/a", b"?")).body == (-11).to_bytes(4, "little", signed=True)
        assert (await http(addr, "POST", "/h/a", b"w")).body == (1).to_bytes(4, "little")


async def test_a_corrupt_database_is_refused_and_the_other_services_start(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        {
            "probe": probe(),
            "echo": {"wasm": fixture("echo.wat"), "routes": ["/echo"]},
        },
    )
    config.daemon.data_dir.mkdir(parents=True)
    database = config.daemon.data_dir / "probe.sqlite3"
    database.write_bytes(b"this is not a database" * 100)
    with capture_logs() as logs:
        async with running(config) as daemon:
            addr = daemon.addresses[0]
            assert (await http(addr, "POST", "/echo", b"hi")).body == b"hi"
            refused = await http(addr, "POST", "/probe/a", b"key")
            assert refused.status == 503 and str(database) in refused.json()["message"]
    (event,) = [entry for entry in logs if entry["event"] == "actors.storage.refused"]
    assert event["path"] == str(database)


@pytest.mark.parametrize("limit", [1 << 20])
async def test_a_full_disk_fails_the_message_and_keeps_earlier_commits(tmp_path: Path, limit: int) -> None:
    """The daemon runs with a file size limit (RLIMIT_FSIZE): once the database cannot grow, the message that
    needed it fails with 503, and what was committed before is still there after a restart."""
    manifest = write_manifest(tmp_path, {"probe": probe()}, {"watch": False})
    # compile once without the limit, so the compile cache is written before the disk is "full"
    async with running(load_config(manifest)) as daemon:
        await commands(daemon.addresses[0], "warm", "key")
    process, addr = await serve_process(manifest, file_limit=limit)
    try:
        await commands(addr, "a", "put kept yes")
        statuses = []
        for i in range(40):
            response = await http(addr, "POST", "/probe/a", f"put n{i} {'x' * 60000}".encode())
            statuses.append(response.status)
            if response.status != 200:
                assert response.status == 503 and "could not be committed" in response.json()["message"]
                break
        assert statuses[-1] == 503, statuses
    finally:
        process.kill()
        await process.wait()
    async with running(load_config(manifest)) as daemon:
        assert await commands(daemon.addresses[0], "a", "get kept") == ["yes"]


async def test_a_manifest_edit_adds_and_removes_an_actor_service(tmp_path: Path) -> None:
    echo = {"wasm": fixture("echo.wat"), "routes": ["/echo"]}
    config = make_config(tmp_path, {"echo": echo}, {"watch": True})
    async with running(config) as daemon:
        addr = daemon.addresses[0]
        write_manifest(tmp_path, {"echo": echo, "probe": probe()}, {"watch": True})
        await wait_until(lambda: daemon.router.registry.is_running("probe") and "probe" in daemon.router.keyed)
        assert await commands(addr, "a", "put n 1", "get n") == ["ok", "1"]
        write_manifest(tmp_path, {"echo": echo}, {"watch": True})
        await wait_until(lambda: "probe" not in daemon.router.keyed)
        assert (await http(addr, "POST", "/probe/a", b"key")).status == 404
        write_manifest(tmp_path, {"echo": echo, "probe": probe()}, {"watch": True})
        await wait_until(lambda: "probe" in daemon.router.keyed and daemon.router.slots["probe"].current is not None)
        assert await commands(addr, "a", "get n") == ["1"]  # its storage stayed on disk
