"""Durable storage of one keyed service's actors: one SQLite database file, one writer thread, group commit.

Owns the file `<data_dir>/<service>.sqlite3` (WAL, `synchronous` FULL or NORMAL), its schema, and the two threads
that touch it: the writer, which turns every commit queued while the previous transaction was committing into one
transaction and one fsync (group commit), and the reader, which loads an actor's whole state when the actor is
activated. Completions go back to the event loop through the `call_soon_threadsafe` it is given: one call per
batch, which runs the batch's callbacks in submission order.

Also owns the plain data that crosses that boundary: `Commit` (one message's writes), `Loaded` (an actor's state
as stored), `ActorInfo` (the directory entry of an actor) and `StorageStats` (counters read at scrape time).

It must not hold live actor state (state.py does, on the loop), decide what a commit means to an actor (the
runtime holds the reply until the commit is durable, and revives an actor whose commit failed), or do blocking
disk work on the event loop thread: on the loop it only queues and delivers.
"""

from __future__ import annotations

import bisect
import contextlib
import enum
import os
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import structlog

from micromono.errors import MicromonoError

__all__ = [
    "ActorInfo",
    "Alarm",
    "AlarmChange",
    "BATCH_SIZE_BUCKETS",
    "COMMIT_SECONDS_BUCKETS",
    "Commit",
    "ACTIVITY_RESOLUTION",
    "FORMAT_VERSION",
    "Loaded",
    "ServiceStorage",
    "SqlPages",
    "StorageError",
    "StorageStats",
    "UNCHANGED",
]

log = structlog.get_logger(__name__)

#: How stale an actor's stored last activity (`actors.last_active`) may be, in seconds: a commit that changes
#: nothing else of its row leaves the row alone until then (the directory in memory is exact).
ACTIVITY_RESOLUTION: Final = 10.0

#: Group commit: when commits arrive in a stream (the last transaction held more than one) and fewer than
#: GATHER_BELOW wait, the writer waits GATHER_SECONDS for more before it begins a transaction. Every transaction
#: costs a sync and a walk of the pages it touched, so more commits per transaction cost less CPU each, for a
#: fraction of a sync's latency (benches/RESULTS.md, bench_actors).
GATHER_BELOW: Final = 24
GATHER_SECONDS: Final = 0.0005

#: The service database's page size. A commit writes each page it touched to the log whole, and the actors of one
#: batch mostly touch different pages, so smaller pages write less per commit; an actor's SQL page (1 KiB,
#: state.SQL_PAGE_SIZE) with its row still fits in one.
_PAGE_SIZE: Final = 2048

#: The layout of the tables below. A file in another format is refused at `open()`, never converted silently.
FORMAT_VERSION: Final = 1

#: Upper bounds of the commit latency histogram (seconds, from `submit()` to the end of its transaction).
COMMIT_SECONDS_BUCKETS: Final = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
#: Upper bounds of the batch size histogram (commits written by one transaction).
BATCH_SIZE_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

# kv rows are small in the common case (counters, small records), so kv is WITHOUT ROWID: one b-tree keyed by
# (actor, k); a large value spills to overflow pages. A sql_pages row holds a whole page of an actor's database
# (state.SQL_PAGE_SIZE), more than a WITHOUT ROWID table keeps on its own b-tree page, so sql_pages is an ordinary
# rowid table, where a row that size stays on its leaf page.
_SCHEMA: Final = (
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value ANY) WITHOUT ROWID",
    "CREATE TABLE actors (key TEXT PRIMARY KEY, bytes INTEGER NOT NULL, last_active REAL NOT NULL,"
    " schema_version INTEGER NOT NULL, sql_page_count INTEGER NOT NULL, sql_page_size INTEGER NOT NULL)"
    " WITHOUT ROWID",
    "CREATE TABLE kv (actor TEXT NOT NULL, k BLOB NOT NULL, v BLOB NOT NULL, PRIMARY KEY (actor, k)) WITHOUT ROWID",
    "CREATE TABLE sql_pages (actor TEXT NOT NULL, pgno INTEGER NOT NULL, data BLOB NOT NULL,"
    " PRIMARY KEY (actor, pgno))",
    "CREATE TABLE alarms (actor TEXT PRIMARY KEY, at_ms INTEGER NOT NULL, attempt INTEGER NOT NULL) WITHOUT ROWID",
)
_TABLES: Final = frozenset({"meta", "actors", "kv", "sql_pages", "alarms"})

_DELETE_KV: Final = "DELETE FROM kv WHERE actor = ? AND k = ?"
_TRUNCATE_PAGES: Final = "DELETE FROM sql_pages WHERE actor = ? AND pgno > ?"
_PUT_PAGE: Final = (
    "INSERT INTO sql_pages (actor, pgno, data) VALUES (?, ?, ?)"
    " ON CONFLICT (actor, pgno) DO UPDATE SET data = excluded.data"
)
# ?4 to ?6 are NULL when the commit left them as they were.

# The writer writes many rows of a table with one statement: each step of a statement lets go of the GIL and takes
# it back, and while the loop's thread is busy taking it back waits up to the switch interval, so one statement per
# row (executemany) would make a transaction of many actors wait for the GIL once per row. Multi-row statements come
# in power-of-two sizes up to _ROWS_MAX (a handful of statement texts, each prepared once and cached by sqlite3).
_ROWS_MAX: Final = 256


def _put_kv_rows(n: int) -> str:
    values = ", ".join(["(?, ?, ?)"] * n)
    return f"INSERT INTO kv (actor, k, v) VALUES {values} ON CONFLICT (actor, k) DO UPDATE SET v = excluded.v"


def _put_actor_rows(n: int) -> str:
    """An upsert of `n` actors rows (key, bytes, last_active, schema_version, sql_page_count, sql_page_size), where
    a NULL among the last three keeps the stored value (0 for a new actor)."""
    values = ", ".join(["(?, ?, ?, ?, ?, ?)"] * n)
    return (
        f"WITH v (key, bytes, last_active, sv, pc, ps) AS (VALUES {values})"
        " INSERT INTO actors (key, bytes, last_active, schema_version, sql_page_count, sql_page_size)"
        " SELECT key, bytes, last_active, coalesce(sv, 0), coalesce(pc, 0), coalesce(ps, 0) FROM v WHERE true"
        " ON CONFLICT (key) DO UPDATE SET bytes = excluded.bytes, last_active = excluded.last_active,"
        " schema_version = coalesce((SELECT sv FROM v WHERE v.key = excluded.key), schema_version),"
        " sql_page_count = coalesce((SELECT pc FROM v WHERE v.key = excluded.key), sql_page_count),"
        " sql_page_size = coalesce((SELECT ps FROM v WHERE v.key = excluded.key), sql_page_size)"
    )


_STATEMENTS: dict[tuple[Callable[[int], str], int], str] = {}


def _write_rows(db: sqlite3.Connection, statement: Callable[[int], str], rows: list[Any]) -> None:
    """Write `rows` with `statement(n)` statements of power-of-two sizes (see _ROWS_MAX); rows are tuples or
    lists of one width."""
    start, total = 0, len(rows)
    while start < total:
        n = min(_ROWS_MAX, 1 << ((total - start).bit_length() - 1))
        text = _STATEMENTS.get((statement, n))
        if text is None:
            text = _STATEMENTS[statement, n] = statement(n)
        db.execute(text, [value for row in rows[start : start + n] for value in row])
        start += n


_PUT_ALARM: Final = (
    "INSERT INTO alarms (actor, at_ms, attempt) VALUES (?, ?, ?)"
    " ON CONFLICT (actor) DO UPDATE SET at_ms = excluded.at_ms, attempt = excluded.attempt"
)
_DELETE_ALARM: Final = "DELETE FROM alarms WHERE actor = ?"

#: An alarm as stored: `(at_ms, attempts)`: when it is due (ms since the Unix epoch) and how many times it has
#: fired without its handler committing (0 for an alarm just set; the runtime keeps it for the retries).
Alarm = tuple[int, int]


class _Unchanged(enum.Enum):
    UNCHANGED = "unchanged"


#: The alarm of a `Commit` that leaves the actor's alarm as it was.
UNCHANGED: Final = _Unchanged.UNCHANGED
#: What a commit does to the alarm: `UNCHANGED`, `None` (cleared) or the new alarm.
AlarmChange = Alarm | None | Literal[_Unchanged.UNCHANGED]

#: What gets a commit's outcome: `None` once it is durable, or the error.
CommitDone = Callable[[BaseException | None], None]
#: What gets a load's outcome: `(state, None)` or `(None, error)`.
LoadDone = Callable[["Loaded | None", BaseException | None], None]


class StorageError(MicromonoError):
    """The service's storage file is unusable, or a commit or load failed. The message names the file, what went
    wrong (SQLite's words where SQLite said it) and what to do.

    Args:
        path: the database file.
        message: the whole message, the path included.
    """

    def __init__(self, path: Path, message: str) -> None:
        self.path = path
        super().__init__(message)


@dataclass(slots=True)
class SqlPages:
    """The pages of an actor's SQL database that a commit changed.

    `page_count` is the database's size after the commit (pages beyond it are dropped: the database shrank);
    `pages` maps a page number (from 1, as SQLite counts) to its new content of `page_size` bytes.
    """

    page_size: int
    page_count: int
    pages: dict[int, bytes]


@dataclass(slots=True, kw_only=True)
class Commit:
    """One message's writes to one actor, made by `ActorState.commit()` and written by `ServiceStorage.submit()`.

    Attributes:
        key: the actor's key.
        epoch: the actor's epoch when the message ran. After a commit of this key at epoch E fails, storage refuses
            every later commit of the key with an epoch <= E (they would build on writes that were never stored);
            the runtime bumps the epoch when it revives the actor from storage.
        kv: key-value writes, `None` for a delete.
        sql: the SQL database's changed pages, or `None` when the message left it as it was.
        schema_version: the new schema version, or `None` when unchanged.
        alarm: `UNCHANGED`, `None` (cleared) or the new `(at_ms, attempts)`.
        total_bytes: the actor's bytes after the commit (keys, values and the SQL database).
        last_active: wall-clock time (seconds since the Unix epoch) of the message.
    """

    key: str
    epoch: int
    kv: dict[bytes, bytes | None]
    sql: SqlPages | None = None
    schema_version: int | None = None
    alarm: AlarmChange = UNCHANGED
    total_bytes: int
    last_active: float


@dataclass(slots=True)
class Loaded:
    """An actor's state as stored: everything `ActorState` needs to activate it. A key never written loads as
    `Loaded()`: no data, schema version 0, no alarm."""

    kv: dict[bytes, bytes] = field(default_factory=dict)
    sql_image: bytes | None = None
    schema_version: int = 0
    alarm: Alarm | None = None


@dataclass(slots=True)
class ActorInfo:
    """The directory entry of one actor (`ServiceStorage.open()` returns them all), live or not.

    Mutable, owned by the runtime on the event loop: when a commit becomes durable (its `done(None)`), the runtime
    calls `apply(commit)` on the actor's entry, creating it first for a new actor (`ActorInfo(key)`). It then
    matches the file.
    """

    key: str
    bytes: int = 0
    last_active: float = 0.0
    schema_version: int = 0
    alarm: Alarm | None = None

    def apply(self, commit: Commit) -> None:
        """Bring this entry up to date with a durable commit of its actor."""
        self.bytes = commit.total_bytes
        self.last_active = commit.last_active
        if commit.schema_version is not None:
            self.schema_version = commit.schema_version
        if commit.alarm is not UNCHANGED:
            self.alarm = commit.alarm


class StorageStats:
    """Counters of one service's storage, written by its writer thread and read by the metrics at scrape time.

    The histograms are per bucket, not cumulative: `commit_seconds[i]` counts the commits whose latency was at most
    `COMMIT_SECONDS_BUCKETS[i]` and above the bound before it; the last entry counts those above every bound.
    """

    __slots__ = (
        "commits",
        "failed_commits",
        "batches",
        "commit_seconds",
        "commit_seconds_sum",
        "batch_sizes",
        "_path",
    )

    def __init__(self, path: Path) -> None:
        self.commits = 0  # commits written (durable), failed ones not included
        self.failed_commits = 0  # commits that failed: a failed transaction, or refused after one (epochs)
        self.batches = 0  # transactions, failed ones included
        self.commit_seconds = [0] * (len(COMMIT_SECONDS_BUCKETS) + 1)
        self.commit_seconds_sum = 0.0
        self.batch_sizes = [0] * (len(BATCH_SIZE_BUCKETS) + 1)
        self._path = path

    def bytes_on_disk(self) -> int:
        """The database file and its write-ahead log, in bytes (read from the file system now)."""
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(f"{self._path}{suffix}").st_size
        return total

    def __repr__(self) -> str:
        return f"<StorageStats [commits: {self.commits} | batches: {self.batches} | failed: {self.failed_commits}]>"


# A queued commit: the commit, its callback and when it was submitted (time.perf_counter()).
_Queued = tuple[Commit, CommitDone, float]
# A batch's outcome as the loop gets it: per commit, its key, its callback and its error (None: durable).
_Outcome = list[tuple[str, CommitDone, "BaseException | None"]]


class ServiceStorage:
    """The storage of one keyed service: one SQLite database, its writer thread and its reader thread.

    Lifecycle: `open()` (blocking: run it in a worker thread), then `submit()` and `load()` from the event loop
    thread, `entries()` from any thread, then `close()` (blocking; from any thread once nothing submits any more).

    Args:
        data_dir: where the database lives (`<data_dir>/<service>.sqlite3`); created when missing.
        service: the service's name.
        call_soon_threadsafe: how the threads hand results to the loop (`loop.call_soon_threadsafe`; a test may
            pass a function that runs the callback at once).
        sync: `"full"`: a commit is durable (fsync) before its callback runs, so no acknowledged write is lost on a
            crash or power loss. `"normal"`: WAL with `synchronous=NORMAL`: a power loss (not a process crash) may
            lose the last commits.
        busy_timeout: how long (seconds) a transaction waits for a lock another connection holds before it fails.
            Nothing else writes to the file in normal operation; this bounds the wait if something does.
    """

    def __init__(
        self,
        data_dir: Path,
        service: str,
        *,
        call_soon_threadsafe: Callable[..., object],
        sync: Literal["full", "normal"] = "full",
        busy_timeout: float = 5.0,
    ) -> None:
        if sync not in ("full", "normal"):
            raise ValueError(f"sync must be 'full' or 'normal', got {sync!r}")
        self.service = service
        self.path = Path(data_dir) / f"{service}.sqlite3"
        self.sync = sync
        self.stats = StorageStats(self.path)
        self._call_soon = call_soon_threadsafe
        self._busy_timeout = busy_timeout
        self._state: Literal["new", "open", "closing", "closed"] = "new"
        # Writer side. `_queue` is a deque (appends and pops are atomic); `_wake` is taken only to sleep or to wake
        # the writer when it sleeps (`_idle`), so a submit while the writer is busy costs an append.
        self._queue: deque[_Queued] = deque()
        self._wake = threading.Condition(threading.Lock())
        self._idle = False
        self._stop_writer = False
        self._failed_epochs: dict[str, int] = {}  # writer thread only: key -> the highest epoch that failed
        self._busy = False  # writer thread only: the last batch held more than one commit (a stream of them)
        self._rows_written: dict[str, tuple[int, float]] = {}  # writer thread only: key -> (bytes, last_active)
        # Reader side.
        self._loads: queue.SimpleQueue[tuple[str, LoadDone] | None] = queue.SimpleQueue()
        self._loads_lock = threading.Lock()  # orders "reader stopped" against a load being queued
        self._reader_stopped = False
        self._read_lock = threading.Lock()  # the reader connection: the reader thread and entries()
        # Loop side: commits submitted and not yet delivered, by key, and the loads waiting for them.
        self._in_flight: dict[str, int] = {}
        self._waiting_loads: dict[str, list[LoadDone]] = {}
        self._writer_db: sqlite3.Connection | None = None
        self._reader_db: sqlite3.Connection | None = None
        self._threads: list[threading.Thread] = []

    def __repr__(self) -> str:
        s = self.stats
        return (
            f"<ServiceStorage {self.service} {self.path} [{self._state} | sync: {self.sync} | queued: "
            f"{len(self._queue)} | commits: {s.commits} | batches: {s.batches} | failed: {s.failed_commits}]>"
        )

    # -- opening -------------------------------------------------------------------------------------------------

    def open(self) -> dict[str, ActorInfo]:
        """Create or open the database, check it, start the threads and return the directory of every actor ever
        written, by key. Blocking: `PRAGMA quick_check` reads the whole file.

        Raises:
            StorageError: the file is not a SQLite database, is corrupt, or holds something other than this
                format's actor storage. Nothing is modified then.
        """
        if self._state != "new":
            raise StorageError(self.path, f"{self.path}: storage of service {self.service!r} was opened already")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        writer = self._connect()
        try:
            self._check(writer)
            directory = self._read_directory(writer)
            reader = self._connect()
            reader.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            writer.close()
            raise self._unusable(str(exc)) from exc
        except BaseException:
            writer.close()
            raise
        self._writer_db, self._reader_db = writer, reader
        self._threads = [
            threading.Thread(target=self._write_loop, name=f"micromono-storage-{self.service}-writer", daemon=True),
            threading.Thread(target=self._read_loop, name=f"micromono-storage-{self.service}-reader", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self._state = "open"
        log.info("actors.storage.open.complete", service=self.service, path=str(self.path), actors=len(directory))
        return directory

    def _connect(self) -> sqlite3.Connection:
        # Autocommit mode (isolation_level=None): this module issues BEGIN and COMMIT itself.
        db = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False)
        try:
            # A new file's page size (an existing one keeps its own): see _PAGE_SIZE.
            db.execute(f"PRAGMA page_size = {_PAGE_SIZE}")
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise self._unusable(f"it cannot use a write-ahead log (journal mode stays {mode!r})")
            db.execute(f"PRAGMA synchronous = {self.sync.upper()}")
        except sqlite3.Error as exc:
            db.close()
            raise self._unusable(str(exc)) from exc
        except BaseException:
            db.close()
            raise
        return db

    def _unusable(self, what: str) -> StorageError:
        return StorageError(
            self.path,
            f"{self.path}: the storage of service {self.service!r} is unusable: {what}. Move the file away (with its "
            f"-wal and -shm files) or restore it from a backup; without a file, micromono starts the service's "
            f"actors empty",
        )

    def _check(self, db: sqlite3.Connection) -> None:
        problems = [row[0] for row in db.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise self._unusable("SQLite's quick_check finds it corrupt: " + "; ".join(problems))
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
        if not tables:
            db.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                db.execute(statement)
            db.executemany(
                "INSERT INTO meta (name, value) VALUES (?, ?)", [("format", FORMAT_VERSION), ("service", self.service)]
            )
            db.execute("COMMIT")
            return
        if "meta" not in tables:
            raise self._unusable("it is a SQLite database but not micromono actor storage (it has no meta table)")
        row = db.execute("SELECT value FROM meta WHERE name = 'format'").fetchone()
        if row is None or row[0] != FORMAT_VERSION:
            found = "no format" if row is None else f"format {row[0]!r}"
            raise self._unusable(f"it holds {found}, and this micromono reads format {FORMAT_VERSION}")
        missing = _TABLES - tables
        if missing:
            raise self._unusable(f"tables {', '.join(sorted(missing))} are missing")

    @staticmethod
    def _read_directory(db: sqlite3.Connection) -> dict[str, ActorInfo]:
        directory = {
            key: ActorInfo(key, size, last_active, schema)
            for key, size, last_active, schema in db.execute(
                "SELECT key, bytes, last_active, schema_version FROM actors"
            )
        }
        for key, at_ms, attempt in db.execute("SELECT actor, at_ms, attempt FROM alarms"):
            info = directory.get(key)
            if info is None:  # every commit writes its actor's row: only a file changed by hand gets here
                info = directory[key] = ActorInfo(key)
            info.alarm = (at_ms, attempt)
        return directory

    # -- commits -------------------------------------------------------------------------------------------------

    def submit(self, commit: Commit, done: CommitDone) -> None:
        """Queue `commit` for the writer; `done(None)` runs on the loop once it is durable, `done(error)` if it
        failed. Callbacks run in submission order, one loop callback per transaction. On the loop thread only.

        A transaction that fails (disk full, an I/O error) fails every commit in it with a `StorageError`; a
        later commit of one of its actors is refused unless its epoch is higher (see `Commit.epoch`). A
        callback's exception is logged and does not keep the others from running.

        Raises:
            StorageError: the storage is not open.
        """
        if self._state != "open":
            raise StorageError(self.path, f"{self.path}: storage of service {self.service!r} is {self._state}")
        key = commit.key
        in_flight = self._in_flight
        in_flight[key] = in_flight.get(key, 0) + 1
        self._queue.append((commit, done, time.perf_counter()))
        if self._idle:  # the writer waits (or is about to): wake it, once (the submits after this one see False)
            with self._wake:
                self._idle = False
                self._wake.notify()

    def _write_loop(self) -> None:
        pending = self._queue
        wake = self._wake
        while True:
            if not pending:
                with wake:
                    # `_idle` is set before each look at the queue: a submit that appended before the look is seen,
                    # and one that appends after it finds `_idle` set and notifies (under this lock, so after the
                    # wait began).
                    while True:
                        self._idle = True
                        if pending or self._stop_writer:
                            break
                        wake.wait()
                    self._idle = False
                if not pending:
                    return  # stopping, and everything queued is written
            if self._busy and len(pending) < GATHER_BELOW:
                time.sleep(GATHER_SECONDS)  # commits come in a stream: let more join this transaction
            batch = []
            while pending:
                batch.append(pending.popleft())
            self._busy = len(batch) > 1
            try:
                outcome = self._write_batch(batch)
            except BaseException as exc:  # a bug of ours: every commit of the batch learns it rather than hang
                log.error("actors.storage.writer.failed", service=self.service, error=repr(exc), exc_info=exc)
                outcome = [(commit.key, done, exc) for commit, done, _ in batch]
            self._hand_over(self._deliver, outcome)

    def _write_batch(self, batch: list[_Queued]) -> _Outcome:
        """Write the commits of `batch` that the epoch rule lets through in one transaction; their outcome in
        submission order."""
        failed_epochs = self._failed_epochs
        errors: list[BaseException | None] = [None] * len(batch)
        accepted: list[Commit] = []
        for i, (commit, _, _) in enumerate(batch):
            failed_at = failed_epochs.get(commit.key) if failed_epochs else None
            if failed_at is not None and commit.epoch <= failed_at:
                errors[i] = StorageError(
                    self.path,
                    f"{self.path}: commit of actor {commit.key!r} at epoch {commit.epoch} refused: a commit of "
                    f"epoch {failed_at} failed before it, and this one would build on writes that were never stored; "
                    f"revive the actor from storage (a new epoch)",
                )
            else:
                accepted.append(commit)
        stats = self.stats
        if accepted:
            error = self._transaction(accepted)
            ended = time.perf_counter()
            stats.batches += 1
            stats.batch_sizes[bisect.bisect_left(BATCH_SIZE_BUCKETS, len(accepted))] += 1
            if error is None:
                stats.commits += len(accepted)
                if failed_epochs:  # a commit at a higher epoch is durable: nothing older can be queued after it
                    for commit in accepted:
                        if failed_epochs.get(commit.key, commit.epoch) < commit.epoch:
                            del failed_epochs[commit.key]
                buckets = stats.commit_seconds
                total = 0.0
                for i, (_, _, submitted) in enumerate(batch):
                    if errors[i] is None:
                        seconds = ended - submitted
                        total += seconds
                        buckets[bisect.bisect_left(COMMIT_SECONDS_BUCKETS, seconds)] += 1
                stats.commit_seconds_sum += total
            else:
                for i, (commit, _, _) in enumerate(batch):
                    if errors[i] is None:
                        errors[i] = error
                        if failed_epochs.get(commit.key, -1) < commit.epoch:
                            failed_epochs[commit.key] = commit.epoch
        stats.failed_commits += sum(1 for e in errors if e is not None)
        return [(commit.key, done, errors[i]) for i, (commit, done, _) in enumerate(batch)]

    def _transaction(self, commits: list[Commit]) -> StorageError | None:
        """Write `commits` in one transaction and commit it (the fsync). Returns the error when it failed (rolled
        back), None when the commits are durable."""
        # Merge first: a later commit of the same actor wins, and each table then gets one executemany.
        kv: dict[tuple[str, bytes], bytes | None] = {}
        actors: dict[str, list[Any]] = {}
        alarms: dict[str, Alarm | None] = {}
        pages: dict[str, dict[int, bytes]] = {}
        truncate: dict[str, int] = {}
        for commit in commits:
            key = commit.key
            for k, v in commit.kv.items():
                kv[key, k] = v
            sql = commit.sql
            row = actors.get(key)
            if row is None:
                actors[key] = row = [key, commit.total_bytes, commit.last_active, commit.schema_version, None, None]
            else:
                row[1] = commit.total_bytes
                row[2] = commit.last_active
                if commit.schema_version is not None:
                    row[3] = commit.schema_version
            if sql is not None:
                row[4] = count = sql.page_count
                row[5] = sql.page_size
                if count < truncate.get(key, count + 1):
                    truncate[key] = count
                written = pages.setdefault(key, {})
                if written and max(written) > count:  # an earlier commit of this batch wrote pages now dropped
                    for pgno in [p for p in written if p > count]:
                        del written[pgno]
                written.update(sql.pages)
            if commit.alarm is not UNCHANGED:
                alarms[key] = commit.alarm
        # An actor's row changes with every commit only by its last activity: it is written when something else
        # changed or the stored time is ACTIVITY_RESOLUTION old, which spares a page write per commit.
        stored = self._rows_written
        rows = []
        for row in actors.values():
            seen = stored.get(row[0])
            if (
                seen is None
                or seen[0] != row[1]
                or row[3] is not None
                or row[4] is not None
                or row[2] - seen[1] >= ACTIVITY_RESOLUTION
            ):
                rows.append(row)
        db = self._writer_db
        assert db is not None
        try:
            db.execute("BEGIN IMMEDIATE")
            deletes = [key for key, v in kv.items() if v is None]
            if deletes:
                db.executemany(_DELETE_KV, deletes)
            _write_rows(db, _put_kv_rows, [(a, k, v) for (a, k), v in kv.items() if v is not None])
            if truncate:
                db.executemany(_TRUNCATE_PAGES, truncate.items())
                db.executemany(_PUT_PAGE, [(a, n, data) for a, written in pages.items() for n, data in written.items()])
            _write_rows(db, _put_actor_rows, rows)
            if alarms:
                db.executemany(_PUT_ALARM, [(a, at[0], at[1]) for a, at in alarms.items() if at is not None])
                db.executemany(_DELETE_ALARM, [(a,) for a, at in alarms.items() if at is None])
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                # The error above is the one to report; SQLite has rolled back already when it could not go on.
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            log.error(
                "actors.storage.commit.failed",
                service=self.service,
                path=str(self.path),
                commits=len(commits),
                error=str(exc),
            )
            return StorageError(
                self.path,
                f"{self.path}: a transaction of {len(commits)} commits failed and was rolled back: {exc} (SQLite). "
                f"Check the disk (space, errors); the actors concerned are revived from what is stored",
            )
        for row in rows:
            stored[row[0]] = (row[1], row[2])
        return None

    def _hand_over(self, callback: Callable[..., object], *args: object) -> None:
        """Run `callback(*args)` on the loop; dropped (with a debug line) when the loop is gone."""
        try:
            self._call_soon(callback, *args)
        except RuntimeError:  # the loop is closed: nobody waits for these callbacks any more
            log.debug("actors.storage.delivery.dropped", service=self.service, callback=repr(callback))

    def _deliver(self, outcome: _Outcome) -> None:
        """On the loop: run a batch's callbacks in submission order, and start the loads that waited for them."""
        in_flight = self._in_flight
        for key, done, error in outcome:
            left = in_flight[key] - 1
            if left:
                in_flight[key] = left
            else:
                del in_flight[key]
            try:
                done(error)
            except Exception as exc:
                log.error("actors.storage.callback.failed", service=self.service, key=key, exc_info=exc)
            if not left and self._waiting_loads:
                for waiting in self._waiting_loads.pop(key, ()):
                    self._queue_load(key, waiting)

    # -- loads ---------------------------------------------------------------------------------------------------

    def load(self, key: str, done: LoadDone) -> None:
        """Read actor `key`'s whole state in the reader thread; `done(loaded, None)` or `done(None, error)` runs on
        the loop. On the loop thread only.

        The state includes every commit of the actor submitted before the call: a load waits for them to be
        written (or to fail) first.

        Raises:
            StorageError: the storage is not open.
        """
        if self._state != "open":
            raise StorageError(self.path, f"{self.path}: storage of service {self.service!r} is {self._state}")
        if key in self._in_flight:
            self._waiting_loads.setdefault(key, []).append(done)
        else:
            self._queue_load(key, done)

    def _queue_load(self, key: str, done: LoadDone) -> None:
        with self._loads_lock:
            if not self._reader_stopped:
                self._loads.put((key, done))
                return
        done(None, StorageError(self.path, f"{self.path}: storage of service {self.service!r} is closed"))

    def _read_loop(self) -> None:
        while True:
            item = self._loads.get()
            if item is None:
                return
            key, done = item
            try:
                loaded = self._read_actor(key)
            except sqlite3.Error as exc:
                error = StorageError(self.path, f"{self.path}: loading actor {key!r} failed: {exc} (SQLite)")
                self._hand_over(done, None, error)
            except Exception as exc:
                self._hand_over(done, None, exc)
            else:
                self._hand_over(done, loaded, None)

    def _read_actor(self, key: str) -> Loaded:
        db = self._reader_db
        assert db is not None
        with self._read_lock:
            db.execute("BEGIN")  # one snapshot across the tables
            try:
                kv = dict(db.execute("SELECT k, v FROM kv WHERE actor = ?", (key,)))
                row = db.execute(
                    "SELECT schema_version, sql_page_count, sql_page_size FROM actors WHERE key = ?", (key,)
                ).fetchone()
                alarm = db.execute("SELECT at_ms, attempt FROM alarms WHERE actor = ?", (key,)).fetchone()
                schema, count, size = row if row is not None else (0, 0, 0)
                rows = (
                    db.execute(
                        "SELECT pgno, data FROM sql_pages WHERE actor = ? AND pgno <= ? ORDER BY pgno", (key, count)
                    ).fetchall()
                    if count
                    else []
                )
            finally:
                db.execute("COMMIT")
        image = None
        if count:
            if len(rows) != count or any(p != i + 1 or len(d) != size for i, (p, d) in enumerate(rows)):
                raise StorageError(
                    self.path,
                    f"{self.path}: actor {key!r}'s SQL database is incomplete ({len(rows)} of its {count} pages of "
                    f"{size} bytes are stored as they should be); restore the file from a backup",
                )
            image = b"".join(d for _, d in rows)
        return Loaded(kv, image, schema, (alarm[0], alarm[1]) if alarm is not None else None)

    def entries(self, key: str, limit: int) -> list[tuple[bytes, bytes]]:
        """Actor `key`'s first `limit` entries in key order, as stored (for the admin listing). Blocking: call it
        from a worker thread."""
        db = self._reader_db
        if db is None or self._state != "open":
            raise StorageError(self.path, f"{self.path}: storage of service {self.service!r} is {self._state}")
        with self._read_lock:
            return db.execute("SELECT k, v FROM kv WHERE actor = ? ORDER BY k LIMIT ?", (key, limit)).fetchall()

    # -- closing -------------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Write what is queued (its callbacks still go to the loop if it runs), stop the threads, checkpoint the
        write-ahead log into the database and close it. Blocking; idempotent. Nothing may submit meanwhile."""
        if self._state in ("closing", "closed"):
            return
        was_open = self._state == "open"
        self._state = "closing"
        if was_open:
            with self._wake:
                self._stop_writer = True
                self._wake.notify()
            with self._loads_lock:
                self._reader_stopped = True
                self._loads.put(None)
            for thread in self._threads:
                thread.join()
        for db in (self._writer_db, self._reader_db):
            if db is None:
                continue
            if db is self._writer_db:
                try:
                    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error as exc:  # the log stays; SQLite replays it at the next open
                    log.warning("actors.storage.checkpoint.failed", service=self.service, error=str(exc))
            db.close()
        self._writer_db = self._reader_db = None
        self._state = "closed"
        log.info("actors.storage.close.complete", service=self.service, commits=self.stats.commits)
