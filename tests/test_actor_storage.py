"""ServiceStorage: one keyed service's SQLite file, its writer (group commit) and reader threads
(micromono/actors/storage.py). Real files in tmp_path and real threads; the event loop is a `FakeLoop` whose
callbacks run on the test's thread when it asks, or a real one."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from micromono.abi import decode_sql_result, encode_sql_values
from micromono.actors import (
    UNCHANGED,
    ActorInfo,
    ActorState,
    Commit,
    Loaded,
    ServiceStorage,
    SqlPages,
    StorageError,
)
from micromono.actors.storage import BATCH_SIZE_BUCKETS

WAIT = 10.0  # the bound on every wait for a thread (seconds)


class FakeLoop:
    """Stands in for the event loop: the storage threads hand callbacks over here, and they run on the test's
    thread (the loop thread) when it calls `run_until`."""

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[tuple[Callable[..., object], tuple[Any, ...]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.handed = 0

    def call_soon_threadsafe(self, callback: Callable[..., object], *args: Any) -> None:
        with self._lock:
            self.handed += 1
        self._calls.put((callback, args))

    def run_until(self, condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + WAIT
        while not condition():
            callback, args = self._calls.get(timeout=max(0.0, deadline - time.monotonic()))
            callback(*args)

    def run_pending(self) -> None:
        while not self._calls.empty():
            callback, args = self._calls.get()
            callback(*args)


class Outcomes:
    """Collects commit outcomes in the order their callbacks ran."""

    def __init__(self) -> None:
        self.items: list[tuple[object, BaseException | None]] = []

    def done(self, tag: object) -> Callable[[BaseException | None], None]:
        return lambda error: self.items.append((tag, error))

    def __len__(self) -> int:
        return len(self.items)


def open_storage(tmp_path: Path, loop: FakeLoop, **options: Any) -> tuple[ServiceStorage, dict[str, ActorInfo]]:
    storage = ServiceStorage(tmp_path, "room", call_soon_threadsafe=loop.call_soon_threadsafe, **options)
    return storage, storage.open()


def commit(key: str, kv: dict[bytes, bytes | None], epoch: int = 1, **fields: Any) -> Commit:
    return Commit(key=key, epoch=epoch, kv=kv, total_bytes=fields.pop("total_bytes", 10), last_active=1.0, **fields)


def load(storage: ServiceStorage, loop: FakeLoop, key: str) -> Loaded:
    got: list[tuple[Loaded | None, BaseException | None]] = []
    storage.load(key, lambda loaded, error: got.append((loaded, error)))
    loop.run_until(lambda: bool(got))
    loaded, error = got[0]
    assert error is None and loaded is not None
    return loaded


def kv_rows(path: Path) -> dict[tuple[str, bytes], bytes]:
    db = sqlite3.connect(path)
    try:
        return {(a, k): v for a, k, v in db.execute("SELECT actor, k, v FROM kv")}
    finally:
        db.close()


def test_open_creates_the_file_and_reopens_its_directory(tmp_path: Path) -> None:
    """A new file starts empty; after commits, reopening lists every actor with its bytes, last activity, schema
    version and alarm."""
    loop = FakeLoop()
    storage, directory = open_storage(tmp_path, loop)
    assert directory == {} and storage.path == tmp_path / "room.sqlite3"
    outcomes = Outcomes()
    storage.submit(commit("a", {b"k": b"v"}, total_bytes=2, schema_version=3, alarm=(5000, 1)), outcomes.done("a"))
    storage.submit(commit("b", {b"k": b"v"}, total_bytes=7), outcomes.done("b"))
    storage.submit(commit("a", {}, total_bytes=2, alarm=UNCHANGED), outcomes.done("a2"))
    loop.run_until(lambda: len(outcomes) == 3)
    assert outcomes.items == [("a", None), ("b", None), ("a2", None)]
    storage.close()
    storage, directory = open_storage(tmp_path, loop)
    assert directory == {"a": ActorInfo("a", 2, 1.0, 3, (5000, 1)), "b": ActorInfo("b", 7, 1.0, 0, None)}
    storage.close()


def test_actor_info_follows_durable_commits() -> None:
    """ActorInfo.apply brings a directory entry up to date with a commit."""
    info = ActorInfo("a")
    info.apply(commit("a", {}, total_bytes=5, schema_version=2, alarm=(10, 0)))
    assert info == ActorInfo("a", 5, 1.0, 2, (10, 0))
    info.apply(commit("a", {}, total_bytes=3))
    assert info == ActorInfo("a", 3, 1.0, 2, (10, 0))
    info.apply(commit("a", {}, total_bytes=3, alarm=None))
    assert info.alarm is None


def test_group_commit_batches_a_burst_and_delivers_in_order(tmp_path: Path) -> None:
    """A burst of submits becomes few transactions; each transaction's callbacks come back in one loop callback,
    all in submission order; every write is in the file."""
    loop = FakeLoop()
    storage, _ = open_storage(tmp_path, loop)
    outcomes = Outcomes()
    n = 500
    for i in range(n):
        storage.submit(commit(f"k{i % 50}", {b"n": b"%d" % i}), outcomes.done(i))
    loop.run_until(lambda: len(outcomes) == n)
    assert outcomes.items == [(i, None) for i in range(n)]
    stats = storage.stats
    assert stats.commits == n and stats.failed_commits == 0
    assert stats.batches <= n // 4
    assert loop.handed == stats.batches  # one loop callback per transaction
    assert sum(stats.batch_sizes) == stats.batches
    assert len(stats.batch_sizes) == len(BATCH_SIZE_BUCKETS) + 1
    assert sum(stats.commit_seconds) == n and stats.commit_seconds_sum > 0
    assert stats.bytes_on_disk() > 0
    assert "commits: 500" in repr(storage)
    storage.close()
    rows = kv_rows(storage.path)
    assert len(rows) == 50 and all(int(rows[f"k{j}", b"n"]) == n - 50 + j for j in range(50))


def test_writes_of_one_actor_in_one_batch_apply_in_order(tmp_path: Path) -> None:
    """Several commits of one actor written together end as the last one left them (puts, deletes, alarms)."""
    loop = FakeLoop()
    storage, _ = open_storage(tmp_path, loop)
    outcomes = Outcomes()
    storage.submit(commit("a", {b"x": b"1", b"y": b"1"}, alarm=(1, 0)), outcomes.done(1))
    storage.submit(commit("a", {b"x": None, b"z": b"2"}, alarm=None), outcomes.done(2))
    storage.submit(commit("a", {b"x": b"3", b"z": None}), outcomes.done(3))
    loop.run_until(lambda: len(outcomes) == 3)
    loaded = load(storage, loop, "a")
    assert loaded.kv == {b"x": b"3", b"y": b"1"} and loaded.alarm is None
    storage.close()


def test_load_reads_a_whole_actor_after_its_queued_commits(tmp_path: Path) -> None:
    """A load sees every commit of the actor submitted before it; an unknown key loads empty."""
    loop = FakeLoop()
    storage, _ = open_storage(tmp_path, loop)
    for i in range(20):
        storage.submit(commit("a", {b"n": b"%d" % i}, schema_version=i), lambda error: None)
    loaded = load(storage, loop, "a")  # asked while the commits are queued
    assert (loaded.kv, loaded.schema_version, loaded.sql_image, loaded.alarm) == ({b"n": b"19"}, 19, None, None)
    assert load(storage, loop, "nobody") == Loaded()
    assert storage.entries("a", 10) == [(b"n", b"19")]
    storage.close()


def sql(state: ActorState, statement: str, *params: Any) -> list[list[Any]]:
    return decode_sql_result(state.sql(statement.encode(), encode_sql_values(params), time.monotonic() + 5)).rows


def test_sql_pages_persist_and_reassemble(tmp_path: Path) -> None:
    """An actor's SQL database goes to storage as changed pages and loads back whole, also after it shrank."""
    loop = FakeLoop()
    storage, _ = open_storage(tmp_path, loop)
    state = ActorState("a", Loaded(), storage_limit=1 << 20)
    outcomes = Outcomes()

    def message(*statements: str) -> SqlPages:
        state.begin()
        for statement in statements:
            sql(state, statement)
        done = state.commit(1, 0.0)
        assert done is not None and done.sql is not None
        storage.submit(done, outcomes.done(statement))
        return done.sql

    first = message(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)",
        *[f"INSERT INTO t (body) VALUES ('{i:03} {'x' * 200}')" for i in range(100)],
    )
    second = message("UPDATE t SET body = 'one' WHERE id = 50")
    assert len(second.pages) < second.page_count == first.page_count
    third = message("DELETE FROM t WHERE id > 10")
    assert third.page_count < first.page_count
    loop.run_until(lambda: len(outcomes) == 3)
    loaded = load(storage, loop, "a")
    assert loaded.sql_image is not None and len(loaded.sql_image) == third.page_count * third.page_size
    fresh = ActorState("a", loaded, storage_limit=1 << 20)
    fresh.begin()
    state.begin()
    assert sql(fresh, "SELECT id, body FROM t ORDER BY id") == sql(state, "SELECT id, body FROM t ORDER BY id")
    assert len(sql(fresh, "SELECT id FROM t")) == 10
    storage.close()
    db = sqlite3.connect(storage.path)
    assert db.execute("SELECT max(pgno), count(*) FROM sql_pages").fetchone() == (third.page_count, third.page_count)
    db.close()
    state.close()
    fresh.close()


def test_incomplete_sql_pages_fail_the_load(tmp_path: Path) -> None:
    """An actor whose stored SQL pages are missing fails to load with an error naming the file and the fix."""
    loop = FakeLoop()
    storage, _ = open_storage(tmp_path, loop)
    outcomes = Outcomes()
    pages = SqlPages(page_size=4, page_count=3, pages={1: b"aaaa", 3: b"cccc"})
    storage.submit(commit("a", {}, sql=pages), outcomes.done(1))
    loop.run_until(lambda: len(outcomes) == 1)
    got: list[tuple[Loaded | None, BaseException | None]] = []
    storage.load("a", lambda loaded, error: got.append((loaded, error)))
    loop.run_until(lambda: bool(got))
    assert got[0][0] is None and isinstance(got[0][1], StorageError)
    assert str(got[0][1]).startswith(f"{storage.path}: actor 'a''s SQL database is incomplete")
    storage.close()


def test_failed_batch_fails_its_commits_and_the_epoch_rule_holds(tmp_path: Path) -> None:
    """A transaction that fails (here: another connection holds the write lock) fails all its commits with the
    file and SQLite's message; a later commit of a failed actor at the same epoch is refused unwritten, one at a
    higher epoch and other actors' commits go through."""
    loop = FakeLoop()
    storage, _ = open_storage(tmp_path, loop, busy_timeout=0.05)
    blocker = sqlite3.connect(storage.path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    outcomes = Outcomes()
    storage.submit(commit("a", {b"k": b"lost"}, epoch=4), outcomes.done("a4"))
    loop.run_until(lambda: len(outcomes) == 1)
    blocker.execute("ROLLBACK")
    blocker.close()
    tag, error = outcomes.items[0]
    assert tag == "a4" and isinstance(error, StorageError)
    assert str(error).startswith(f"{storage.path}: a transaction of 1 commits failed and was rolled back: database is")

    storage.submit(commit("a", {b"k": b"stale"}, epoch=4), outcomes.done("a4 again"))
    storage.submit(commit("b", {b"k": b"b"}), outcomes.done("b"))
    storage.submit(commit("a", {b"k": b"revived"}, epoch=5), outcomes.done("a5"))
    loop.run_until(lambda: len(outcomes) == 4)
    (_, refused), *rest = outcomes.items[1:]
    assert isinstance(refused, StorageError)
    assert "commit of actor 'a' at epoch 4 refused: a commit of epoch 4 failed before it" in str(refused)
    assert rest == [("b", None), ("a5", None)]
    assert storage.stats.failed_commits == 2
    storage.close()
    assert kv_rows(storage.path) == {("a", b"k"): b"revived", ("b", b"k"): b"b"}


def test_close_writes_what_is_queued(tmp_path: Path) -> None:
    """close() commits everything queued before it returns; the callbacks still reach a loop that runs."""
    loop = FakeLoop()
    storage, _ = open_storage(tmp_path, loop)
    outcomes = Outcomes()
    for i in range(100):
        storage.submit(commit(f"k{i}", {b"n": b"1"}), outcomes.done(i))
    storage.close()
    storage.close()  # idempotent
    assert len(kv_rows(storage.path)) == 100
    assert not os.path.exists(f"{storage.path}-wal") or os.path.getsize(f"{storage.path}-wal") == 0
    loop.run_pending()
    assert outcomes.items == [(i, None) for i in range(100)]
    with pytest.raises(StorageError, match="is closed$"):
        storage.submit(commit("a", {}), outcomes.done("late"))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"this is not a database" * 100, "file is not a database"),
        (b"", None),  # an empty file is a new database
    ],
)
def test_open_refuses_a_file_that_is_not_a_database(tmp_path: Path, content: bytes, problem: str | None) -> None:
    """Garbage where the database should be is refused with the path, the problem and what to do."""
    (tmp_path / "room.sqlite3").write_bytes(content)
    loop = FakeLoop()
    storage = ServiceStorage(tmp_path, "room", call_soon_threadsafe=loop.call_soon_threadsafe)
    if problem is None:
        storage.open()
        storage.close()
        return
    with pytest.raises(StorageError) as info:
        storage.open()
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'room.sqlite3'}: the storage of service 'room' is unusable: {problem}")
    assert message.endswith(
        "Move the file away (with its -wal and -shm files) or restore it from a backup; without "
        "a file, micromono starts the service's actors empty"
    )
    assert (tmp_path / "room.sqlite3").read_bytes() == content


def test_open_refuses_a_foreign_or_newer_database(tmp_path: Path) -> None:
    """A SQLite file that is not actor storage, or is in another format, is refused and left alone."""
    path = tmp_path / "room.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE users (name TEXT)")
    db.commit()
    loop = FakeLoop()
    with pytest.raises(StorageError, match="unusable: it is a SQLite database but not micromono actor storage"):
        ServiceStorage(tmp_path, "room", call_soon_threadsafe=loop.call_soon_threadsafe).open()
    db.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value ANY)")
    db.execute("INSERT INTO meta VALUES ('format', 2)")
    db.commit()
    db.close()
    with pytest.raises(StorageError, match="unusable: it holds format 2, and this micromono reads format 1"):
        ServiceStorage(tmp_path, "room", call_soon_threadsafe=loop.call_soon_threadsafe).open()


def test_open_refuses_a_corrupt_database(tmp_path: Path) -> None:
    """A database whose pages were damaged is refused at open (quick_check), naming the file."""
    loop = FakeLoop()
    storage, _ = open_storage(tmp_path, loop)
    outcomes = Outcomes()
    for i in range(300):
        storage.submit(commit(f"actor-{i:04}", {b"k" * 20: b"v" * 200}), outcomes.done(i))
    loop.run_until(lambda: len(outcomes) == 300)
    storage.close()
    with open(storage.path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(size // 2)
        f.write(b"\xa5" * 8192)
    with pytest.raises(StorageError) as info:
        ServiceStorage(tmp_path, "room", call_soon_threadsafe=loop.call_soon_threadsafe).open()
    assert str(info.value).startswith(f"{storage.path}: the storage of service 'room' is unusable: ")
    assert "restore it from a backup" in str(info.value)


async def test_real_event_loop(tmp_path: Path) -> None:
    """With a real event loop: commits and a load complete on the loop thread, through call_soon_threadsafe."""
    loop = asyncio.get_running_loop()
    storage = ServiceStorage(tmp_path, "room", call_soon_threadsafe=loop.call_soon_threadsafe, sync="normal")
    await asyncio.to_thread(storage.open)
    loop_thread = threading.get_ident()
    futures = []
    for i in range(50):
        future: asyncio.Future[None] = loop.create_future()

        def done(error: BaseException | None, future: asyncio.Future[None] = future) -> None:
            assert threading.get_ident() == loop_thread
            future.set_result(None) if error is None else future.set_exception(error)

        storage.submit(commit("a", {b"n": b"%d" % i}), done)
        futures.append(future)
    loaded: asyncio.Future[Loaded | None] = loop.create_future()
    storage.load("a", lambda state, error: loaded.set_result(state))
    await asyncio.wait_for(asyncio.gather(*futures), WAIT)
    state = await asyncio.wait_for(loaded, WAIT)
    assert state is not None and state.kv == {b"n": b"49"}
    await asyncio.to_thread(storage.close)


CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    from micromono.actors import ActorState, Loaded, ServiceStorage

    async def main() -> None:
        loop = asyncio.get_running_loop()
        storage = ServiceStorage(Path(sys.argv[1]), "room", call_soon_threadsafe=loop.call_soon_threadsafe)
        await asyncio.to_thread(storage.open)
        actors = [ActorState(f"k{i}", Loaded(), storage_limit=1 << 20) for i in range(10)]
        n = 0

        def increment() -> None:
            nonlocal n
            actor = actors[n % 10]
            n += 1
            actor.begin()
            value = int(actor.get(b"n") or b"0") + 1
            actor.put(b"n", b"%d" % value)
            commit = actor.commit(1, time.time())

            def done(error: BaseException | None) -> None:
                assert error is None
                sys.stdout.write(f"ack {actor.key} {value}\\n")
                sys.stdout.flush()
                increment()

            storage.submit(commit, done)

        for _ in range(8):
            increment()
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)


def test_acknowledged_commits_survive_kill_9(tmp_path: Path) -> None:
    """A process killed with SIGKILL mid-stream loses no commit whose callback ran (sync = "full")."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True, stderr=subprocess.DEVNULL
    )
    acked: dict[str, int] = {}
    try:
        assert child.stdout is not None
        while sum(acked.values()) < 300:
            line = child.stdout.readline()
            assert line, "the child exited before acknowledging 300 commits"
            if line.startswith("ack "):
                _, key, value = line.split()
                acked[key] = int(value)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=WAIT)
        for line in child.stdout.read().splitlines():  # acknowledged before the kill, still in the pipe
            if line.startswith("ack "):
                _, key, value = line.split()
                acked[key] = int(value)
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=WAIT)
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    loop = FakeLoop()
    storage, directory = open_storage(tmp_path, loop)
    storage.close()
    stored = {actor: int(v) for (actor, _), v in kv_rows(storage.path).items()}
    assert set(acked) <= set(directory)
    for key, count in acked.items():
        assert stored[key] >= count, f"{key}: acknowledged {count}, stored {stored[key]}"


def test_an_actors_row_is_rewritten_for_its_activity_only_every_activity_resolution(tmp_path: Path) -> None:
    """A commit that changes only an actor's last activity leaves its row alone until the stored time is
    ACTIVITY_RESOLUTION old; any other change (its size here) writes it at once."""
    from micromono.actors.storage import ACTIVITY_RESOLUTION

    loop = FakeLoop()
    storage, _ = open_storage(tmp_path, loop)
    outcomes = Outcomes()

    def put(n: int, last_active: float, total_bytes: int = 10) -> None:
        storage.submit(
            Commit(key="a", epoch=1, kv={b"n": str(n).encode()}, total_bytes=total_bytes, last_active=last_active),
            outcomes.done(n),
        )
        loop.run_until(lambda: len(outcomes) == n)

    def stored() -> tuple[int, float]:
        db = sqlite3.connect(storage.path)
        try:
            row = db.execute("SELECT bytes, last_active FROM actors WHERE key = 'a'").fetchone()
            return int(row[0]), float(row[1])
        finally:
            db.close()

    put(1, 100.0)
    assert stored() == (10, 100.0)
    put(2, 100.0 + ACTIVITY_RESOLUTION / 2)
    assert stored() == (10, 100.0)  # only its activity changed, recently: the row stays
    put(3, 100.0 + ACTIVITY_RESOLUTION / 2, total_bytes=11)
    assert stored() == (11, 100.0 + ACTIVITY_RESOLUTION / 2)
    put(4, 100.0 + ACTIVITY_RESOLUTION * 2, total_bytes=11)
    assert stored() == (11, 100.0 + ACTIVITY_RESOLUTION * 2)
    assert kv_rows(storage.path)[("a", b"n")] == b"4"  # every value was written
    storage.close()
