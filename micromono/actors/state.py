"""One live actor's storage, in memory: its keys and values, its SQL database, its alarm and schema version, and
the transaction of the message it is handling.

Owns `ActorState` and the errors a guest's storage call gets back (`StorageFull`, `InvalidArgument`, `SqlError`,
each with its ABI code). A message's writes go into memory at once, with an undo record, so its reads see them;
`commit()` turns them into a `Commit` for storage.py to make durable, `rollback()` puts everything back.

Runs on the event loop thread only: no locks, no threads, no disk. It must not wait for durability (storage.py
writes, the runtime holds the reply until then) nor decide when a message commits or rolls back (the runtime does).
"""

from __future__ import annotations

import bisect
import builtins
import secrets
import sqlite3
import time
from typing import Any, ClassVar, Final

from micromono.abi import (
    MM_ERR_INVALID,
    MM_ERR_SQL,
    MM_ERR_STORAGE_FULL,
    decode_list_options,
    decode_sql_values,
    encode_kv_entries,
    encode_sql_result,
)
from micromono.actors.storage import UNCHANGED, Alarm, AlarmChange, Commit, Loaded, SqlPages
from micromono.errors import MicromonoError

__all__ = [
    "ActorState",
    "StorageCallError",
    "StorageFull",
    "InvalidArgument",
    "SqlError",
    "MAX_KEY_BYTES",
    "SQL_PAGE_SIZE",
]

#: Keys are 1 to this many bytes (docs/abi.md, `kv_get`).
MAX_KEY_BYTES: Final = 2048
#: The page size of a new actor SQL database: small pages keep the pages a commit rewrites small, and one fits in
#: a row of the service database without overflowing its page.
SQL_PAGE_SIZE: Final = 1024
#: SQLite virtual machine steps between two looks at the deadline.
PROGRESS_STEPS: Final = 10_000
_MIB: Final = 1 << 20

# What the authorizer refuses a guest statement, by SQLite action code, with the reason the guest is told.
_REFUSED: Final = {
    sqlite3.SQLITE_ATTACH: "ATTACH is not allowed: an actor has one database",
    sqlite3.SQLITE_DETACH: "DETACH is not allowed: an actor has one database",
    sqlite3.SQLITE_PRAGMA: "PRAGMA is not allowed: the host owns the database's settings",
    sqlite3.SQLITE_TRANSACTION: "transaction control (BEGIN, COMMIT, ROLLBACK) is not allowed: the message is the "
    "transaction",
    sqlite3.SQLITE_SAVEPOINT: "SAVEPOINT is not allowed: the message is the transaction",
    sqlite3.SQLITE_CREATE_TEMP_TABLE: "temporary tables are not allowed: they would not be stored; use a table",
    sqlite3.SQLITE_CREATE_TEMP_INDEX: "temporary indexes are not allowed: they would not be stored",
    sqlite3.SQLITE_CREATE_TEMP_TRIGGER: "temporary triggers are not allowed: they would not be stored",
    sqlite3.SQLITE_CREATE_TEMP_VIEW: "temporary views are not allowed: they would not be stored",
}
_NO_EXTENSIONS: Final = "load_extension() is not allowed"

# The host's own statements carry this comment. Python's sqlite3 caches prepared statements by their text, and the
# authorizer does not see a cached statement again: a guest statement with the same text as a host one would run
# unchecked. A guest cannot guess this text.
_HOST: Final = f" /* micromono host {secrets.token_hex(16)} */"


def _size(n: int) -> str:
    return f"{n // _MIB}MiB" if n >= _MIB and n % _MIB == 0 else f"{n:,} bytes"


class StorageCallError(MicromonoError):
    """A guest's storage call failed; the guest gets `abi_code`. Subclasses say why."""

    abi_code: ClassVar[int] = MM_ERR_INVALID


class StorageFull(StorageCallError):
    """The write would take the actor's keys, values and SQL database over `storage_limit`. Nothing was written."""

    abi_code = MM_ERR_STORAGE_FULL


class InvalidArgument(StorageCallError):
    """A key of 0 or more than `MAX_KEY_BYTES` bytes, options or params that do not decode, and the like."""

    abi_code = MM_ERR_INVALID


class SqlError(StorageCallError):
    """SQLite refused or failed the statement, or the host refused it (more than one statement, ATTACH, PRAGMA,
    transaction control, extensions), or it ran past the message's deadline and was interrupted."""

    abi_code = MM_ERR_SQL


class ActorState:
    """The storage of one live actor: its data in memory and the transaction of the message being handled.

    One message at a time: `begin()`, then the guest's storage calls, then `commit()` or `rollback()`. Reads work
    outside a transaction too; writes need one (calling them outside is a bug of the runtime: RuntimeError).

    The key-value data is `kv`, loaded whole. Writes change it in place and keep the value each key had before the
    message (the undo record), so a read costs a dict lookup and a write a lookup, a store and the record.

    The SQL database is an SQLite database in memory, opened on the first SQL call of the activation. `commit()`
    serializes it when the message wrote to it and sends the pages that differ from the last image committed.

    Args:
        key: the actor's key within its service (what `Commit.key` and storage use).
        loaded: its state as stored (`Loaded()` for a new actor); `loaded.kv` becomes `kv`, not a copy.
        storage_limit: the most bytes its keys, values and SQL database may hold together.
        name: how error messages name the actor, `<service>/<key>` (`room/x`); the key when not given.
    """

    __slots__ = (
        "key",
        "name",
        "storage_limit",
        "kv",
        "_kv_bytes",
        "_undo",
        "_kv_bytes_before",
        "_sorted",
        "_schema_version",
        "_schema_before",
        "_alarm",
        "_alarm_before",
        "_sql",
        "_sql_image",
        "_sql_page_size",
        "_sql_bytes",
        "_sql_bytes_before",
        "_sql_began",
        "_sql_wrote",
        "_sql_lost",
        "_max_pages",
        "_deadline",
        "_interrupted",
        "_refused",
        "_host",
    )

    def __init__(self, key: str, loaded: Loaded, *, storage_limit: int, name: str | None = None) -> None:
        self.key = key
        self.name = key if name is None else name
        self.storage_limit = storage_limit
        self.kv = loaded.kv
        self._kv_bytes = sum(len(k) + len(v) for k, v in loaded.kv.items())
        # The transaction: None outside one, else each key written -> its value before the message (None: absent).
        self._undo: dict[bytes, bytes | None] | None = None
        self._kv_bytes_before = 0
        self._sorted: list[bytes] | None = None  # kv's keys in order, until a key is added or removed
        self._schema_version = loaded.schema_version
        self._schema_before = loaded.schema_version
        self._alarm = loaded.alarm
        self._alarm_before = loaded.alarm
        # SQL: the connection (None until the first SQL call), the image last committed and its page size.
        self._sql: sqlite3.Connection | None = None
        self._sql_image = loaded.sql_image or b""
        self._sql_page_size = _page_size(self._sql_image) if self._sql_image else SQL_PAGE_SIZE
        self._sql_bytes = len(self._sql_image)
        self._sql_bytes_before = self._sql_bytes
        self._sql_began = False  # the message's SQL transaction is open
        self._sql_wrote = False  # a statement of the message may have written
        self._sql_lost: str | None = None  # why the message's SQL writes were rolled back by SQLite itself
        self._max_pages: int | None = None  # the max_page_count last asked of the connection
        self._deadline = 0.0
        self._interrupted = False
        self._refused: str | None = None
        self._host = False

    def __repr__(self) -> str:
        state = "in a transaction" if self._undo is not None else "idle"
        return (
            f"<ActorState {self.name!r} [{state} | keys: {len(self.kv)} | bytes: {self.total_bytes}/"
            f"{self.storage_limit} | sql: {'open' if self._sql is not None else 'closed'}]>"
        )

    @property
    def total_bytes(self) -> int:
        """The bytes the actor holds now: the lengths of its keys and values plus its SQL database's size (asked of
        SQLite when the message in progress wrote SQL)."""
        return self._kv_bytes + self._sql_size()

    @property
    def in_transaction(self) -> bool:
        return self._undo is not None

    # -- the transaction -----------------------------------------------------------------------------------------

    def begin(self) -> None:
        """Start a message's transaction.

        Raises:
            RuntimeError: one is open already.
        """
        if self._undo is not None:
            raise RuntimeError(f"actor {self.name!r}: begin() inside a transaction")
        self._undo = {}
        self._kv_bytes_before = self._kv_bytes
        self._sql_bytes_before = self._sql_bytes
        self._schema_before = self._schema_version
        self._alarm_before = self._alarm

    def commit(self, epoch: int, now: float) -> Commit | None:
        """End the transaction, keeping its writes, and return them for `ServiceStorage.submit()`.

        Args:
            epoch: the actor's epoch (see `Commit.epoch`).
            now: wall-clock time (seconds since the Unix epoch), stored as the actor's last activity.

        Returns:
            The commit, or None when the message wrote nothing (nothing to store; a write of the value a key
            already had counts as nothing). The state already shows the writes: if storage then fails the
            commit, this state is wrong and the runtime discards it.

        Raises:
            SqlError: a failed statement made SQLite roll back the message's earlier SQL writes; the transaction
                stays open and the runtime rolls it back (the message fails).
        """
        undo = self._undo
        if undo is None:
            raise RuntimeError(f"actor {self.name!r}: commit() outside a transaction")
        if self._sql_lost is not None:
            raise SqlError(self._lost_message())
        sql = self._commit_sql() if self._sql_began else None
        self._undo = None
        writes: dict[bytes, bytes | None] = {}
        if undo:
            kv = self.kv
            for k, before in undo.items():
                after = kv.get(k)
                if after != before:
                    writes[k] = after
        schema = self._schema_version if self._schema_version != self._schema_before else None
        alarm: AlarmChange = self._alarm if self._alarm != self._alarm_before else UNCHANGED
        if not writes and sql is None and schema is None and alarm is UNCHANGED:
            return None
        return Commit(
            key=self.key,  # the storage key; `name` is for people
            epoch=epoch,
            kv=writes,
            sql=sql,
            schema_version=schema,
            alarm=alarm,
            total_bytes=self._kv_bytes + self._sql_bytes,
            last_active=now,
        )

    def rollback(self) -> None:
        """End the transaction, undoing all of its writes: keys and values, alarm, schema version and SQL."""
        undo = self._undo
        if undo is None:
            raise RuntimeError(f"actor {self.name!r}: rollback() outside a transaction")
        if undo:
            kv = self.kv
            for k, before in undo.items():
                if before is None:
                    kv.pop(k, None)
                else:
                    kv[k] = before
            self._sorted = None
        self._undo = None
        self._kv_bytes = self._kv_bytes_before
        self._schema_version = self._schema_before
        self._alarm = self._alarm_before
        if self._sql_began and self._sql is not None:
            self._host_call(self._sql.rollback)
        self._sql_began = False
        self._sql_wrote = False
        self._sql_lost = None
        self._sql_bytes = self._sql_bytes_before

    def close(self) -> None:
        """Free the SQL database's connection (the actor is hibernated or discarded). Idempotent."""
        if self._sql is not None:
            self._sql.set_authorizer(None)
            self._sql.set_progress_handler(None, 0)
            self._sql.close()
            self._sql = None

    # -- keys and values -----------------------------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        """The value of `key` (the message's own write included), or None.

        Raises:
            InvalidArgument: the key is empty or longer than `MAX_KEY_BYTES`.
        """
        if not 0 < len(key) <= MAX_KEY_BYTES:
            raise self._bad_key(key)
        return self.kv.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        """Set `key` to `value` (an empty value is a value).

        Raises:
            InvalidArgument: the key is empty or longer than `MAX_KEY_BYTES`.
            StorageFull: the actor would hold more than `storage_limit` bytes; nothing is written. (A write that
                does not grow the actor is allowed even over the limit, so an actor can always shrink.)
        """
        if not 0 < len(key) <= MAX_KEY_BYTES:
            raise self._bad_key(key)
        undo = self._undo
        if undo is None:
            raise RuntimeError(f"actor {self.name!r}: put() outside a transaction")
        kv = self.kv
        before = kv.get(key)
        grow = len(key) + len(value) if before is None else len(value) - len(before)
        total = self._kv_bytes + grow
        if grow > 0 and total + self._sql_size() > self.storage_limit:
            raise self._full(total + self._sql_bytes)
        if key not in undo:
            undo[key] = before
        if before is None:
            self._sorted = None
        kv[key] = value
        self._kv_bytes = total

    def delete(self, key: bytes) -> bool:
        """Delete `key`; True when it had a value.

        Raises:
            InvalidArgument: the key is empty or longer than `MAX_KEY_BYTES`.
        """
        if not 0 < len(key) <= MAX_KEY_BYTES:
            raise self._bad_key(key)
        undo = self._undo
        if undo is None:
            raise RuntimeError(f"actor {self.name!r}: delete() outside a transaction")
        before = self.kv.pop(key, None)
        if before is None:
            return False
        if key not in undo:
            undo[key] = before
        self._kv_bytes -= len(key) + len(before)
        self._sorted = None
        return True

    def list(self, options: bytes) -> bytes:
        """The entries `options` select (encoded `kv_list` options), encoded as the `kv_list` result.

        Keys in bytewise order (reversed with the reverse flag), only those starting with the prefix, `>= start`
        and `< end` (each when not empty), at most `limit` of them (0: all). The key order is kept between calls
        until a key is added or removed.

        Raises:
            InvalidArgument: the options do not decode.
        """
        try:
            limit, reverse, prefix, start, end = decode_list_options(options)
        except ValueError as exc:
            raise InvalidArgument(f"kv_list: {exc}") from None
        keys = self._sorted
        if keys is None:
            keys = self._sorted = sorted(self.kv)
        lo, hi = 0, len(keys)
        if prefix:
            lo = bisect.bisect_left(keys, prefix)
            after = _after_prefix(prefix)
            if after is not None:
                hi = bisect.bisect_left(keys, after, lo)
        if start:
            lo = max(lo, bisect.bisect_left(keys, start))
        if end:
            hi = min(hi, bisect.bisect_left(keys, end))
        if lo >= hi:
            selected: builtins.list[bytes] = []
        elif reverse:
            selected = keys[max(lo, hi - limit) if limit else lo : hi]
            selected.reverse()
        else:
            selected = keys[lo : min(hi, lo + limit) if limit else hi]
        kv = self.kv
        return encode_kv_entries([(k, kv[k]) for k in selected])

    # -- alarm and schema version --------------------------------------------------------------------------------

    @property
    def alarm(self) -> Alarm | None:
        """The actor's alarm, `(at_ms, attempts)`, as the message sees it; None when it has none."""
        return self._alarm

    def set_alarm(self, at_ms: int, attempts: int = 0) -> None:
        """Set the alarm (replacing any) to `at_ms` (ms since the Unix epoch), in the message's transaction.

        `attempts` is how many times it fired without its handler committing: 0 when the guest sets it; the runtime
        passes its count when it reschedules a failed alarm.

        Raises:
            InvalidArgument: `at_ms` is negative.
        """
        if self._undo is None:
            raise RuntimeError(f"actor {self.name!r}: set_alarm() outside a transaction")
        if at_ms < 0:
            raise InvalidArgument(f"alarm_set: the time {at_ms} is before 1970; give milliseconds since the Unix epoch")
        self._alarm = (at_ms, attempts)

    def delete_alarm(self) -> None:
        """Clear the alarm, in the message's transaction."""
        if self._undo is None:
            raise RuntimeError(f"actor {self.name!r}: delete_alarm() outside a transaction")
        self._alarm = None

    @property
    def schema_version(self) -> int:
        """The actor's storage schema version, as the message sees it (0 for a new actor)."""
        return self._schema_version

    def set_schema_version(self, version: int) -> None:
        """Set the schema version (after a successful `mm_migrate`), in the message's transaction."""
        if self._undo is None:
            raise RuntimeError(f"actor {self.name!r}: set_schema_version() outside a transaction")
        self._schema_version = version

    # -- SQL -----------------------------------------------------------------------------------------------------

    def sql(self, sql: bytes, params: bytes, deadline: float) -> bytes:
        """Run one statement (UTF-8 SQL) against the actor's database, in the message's transaction.

        Args:
            sql: the statement. An empty one (only blanks or comments) does nothing and returns an empty result.
            params: encoded `?` parameters (`encode_sql_values`; empty: none).
            deadline: `time.monotonic()` past which the statement is interrupted.

        Returns:
            The encoded result (`encode_sql_result`).

        Raises:
            InvalidArgument: the SQL is not UTF-8, or the params do not decode.
            StorageFull: the database would grow past what `storage_limit` leaves after the keys and values.
            SqlError: SQLite's error, a refused statement (see `SqlError`), or the deadline passed ("interrupted").
                When the failure made SQLite roll back the message's earlier SQL writes, the message cannot
                commit any more (`commit()` raises).
        """
        if self._undo is None:
            raise RuntimeError(f"actor {self.name!r}: sql() outside a transaction")
        if self._sql_lost is not None:
            raise SqlError(self._lost_message())
        try:
            text = sql.decode()
        except UnicodeDecodeError as exc:
            raise InvalidArgument(f"sql_exec: the statement is not UTF-8 (byte {exc.start})") from None
        try:
            values = decode_sql_values(params)
        except ValueError as exc:
            raise InvalidArgument(f"sql_exec: {exc}") from None
        db = self._sql if self._sql is not None else self._open_sql()
        if not self._sql_began:
            self._host_run(db, "BEGIN")
            self._sql_began = True
        room = (self.storage_limit - self._kv_bytes) // self._sql_page_size
        if room != self._max_pages:
            self._host_run(db, f"PRAGMA max_page_count = {max(room, 1)}")
            self._max_pages = room
        self._deadline = deadline
        self._interrupted = False
        self._refused = None
        changes_before = db.total_changes
        try:
            cursor = db.execute(text, values)
            rows = cursor.fetchall()
        except sqlite3.Error as exc:
            raise self._sql_failure(db, exc) from None
        description = cursor.description
        if description is None or db.total_changes != changes_before:  # not a query: it may have written
            self._sql_wrote = True  # its size is read when a put needs it (`_sql_size`), or at commit
        columns = [d[0] for d in description] if description is not None else []
        changes = cursor.rowcount if cursor.rowcount > 0 else 0
        return encode_sql_result(columns, rows, changes, cursor.lastrowid or 0)

    def _sql_size(self) -> int:
        """The SQL database's bytes now: after a write of this message, asked of SQLite (its pages), else known."""
        if self._sql_wrote and self._sql is not None:
            self._sql_bytes = self._host_run(self._sql, "PRAGMA page_count")[0][0] * self._sql_page_size
        return self._sql_bytes

    def _open_sql(self) -> sqlite3.Connection:
        db = sqlite3.connect(":memory:", isolation_level=None)
        if self._sql_image:
            db.deserialize(self._sql_image)
        else:
            # Before the first table: fixes the page size and lets the file shrink as data is deleted (the pages
            # it counts against storage_limit are then those in use).
            db.execute(f"PRAGMA page_size = {SQL_PAGE_SIZE}")
            db.execute("PRAGMA auto_vacuum = FULL")
        if hasattr(db, "enable_load_extension"):  # only in builds that can load extensions; off there by default
            db.enable_load_extension(False)
        db.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max(self.storage_limit, 1 << 16))
        db.set_authorizer(self._authorize)
        db.set_progress_handler(self._progress, PROGRESS_STEPS)
        self._sql = db
        self._max_pages = None
        return db

    def _authorize(self, action: int, arg1: str | None, arg2: str | None, db_name: str | None, _: str | None) -> int:
        if self._host:
            return sqlite3.SQLITE_OK
        refused = _REFUSED.get(action)
        if refused is None:
            if action != sqlite3.SQLITE_FUNCTION or (arg2 or "").lower() != "load_extension":
                return sqlite3.SQLITE_OK
            refused = _NO_EXTENSIONS
        self._refused = refused
        return sqlite3.SQLITE_DENY

    def _progress(self) -> int:
        if self._host or time.monotonic() <= self._deadline:
            return 0
        self._interrupted = True
        return 1

    def _host_run(self, db: sqlite3.Connection, statement: str) -> builtins.list[Any]:
        self._host = True
        try:
            return db.execute(statement + _HOST).fetchall()
        finally:
            self._host = False

    def _host_call(self, method: Any) -> None:
        self._host = True
        try:
            method()
        finally:
            self._host = False

    def _sql_failure(self, db: sqlite3.Connection, exc: sqlite3.Error) -> StorageCallError:
        """The error a failed guest statement becomes; notes when SQLite rolled the whole transaction back."""
        lost = ""
        if self._sql_began and not db.in_transaction:  # SQLite ended it (a full database, an interrupt, ...)
            self._sql_began = False
            if self._sql_wrote:
                self._sql_lost = lost = str(exc)
        error: type[StorageCallError] = SqlError
        if self._interrupted:
            message = "interrupted: the statement ran past the message's deadline"
        elif self._refused is not None:
            message = self._refused
        elif getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            error = StorageFull
            message = (
                f"actor {self.name!r}: its SQL database cannot grow: with {self._kv_bytes:,} bytes of keys and values "
                f"it would exceed storage_limit = {_size(self.storage_limit)}; delete data or raise storage_limit in "
                f"services.toml"
            )
        elif isinstance(exc, sqlite3.ProgrammingError) and "one statement" in str(exc):
            message = "sql_exec runs one statement at a time; send each statement in its own call"
        else:
            message = str(exc)
        if lost:
            message += f" ({self._lost_message()})"
        return error(message)

    def _lost_message(self) -> str:
        return (
            f"SQLite rolled back this message's SQL writes when a statement failed ({self._sql_lost}): the message "
            f"cannot commit and fails"
        )

    def _commit_sql(self) -> SqlPages | None:
        """Commit the SQL transaction; when the message wrote, the pages that differ from the last image."""
        db = self._sql
        assert db is not None
        self._host_call(db.commit)
        self._sql_began = False
        if not self._sql_wrote:
            return None
        self._sql_wrote = False
        self._host = True  # serialize() asks for the page count with a PRAGMA
        try:
            image = db.serialize()
        except sqlite3.OperationalError:  # a database that never got a page cannot be serialized
            image = b""
        finally:
            self._host = False
        before = self._sql_image
        size = self._sql_page_size
        pages = _changed_pages(image, before, size)
        self._sql_bytes = len(image)
        if not pages and len(image) == len(before):
            return None
        self._sql_image = image
        return SqlPages(page_size=size, page_count=len(image) // size, pages=pages)

    # -- errors --------------------------------------------------------------------------------------------------

    def _bad_key(self, key: bytes) -> InvalidArgument:
        return InvalidArgument(f"actor {self.name!r}: a key of {len(key)} bytes; keys are 1 to {MAX_KEY_BYTES:,} bytes")

    def _full(self, total: int) -> StorageFull:
        return StorageFull(
            f"actor {self.name!r} would hold {total:,} bytes, over storage_limit = {_size(self.storage_limit)}; "
            f"delete data or raise storage_limit in services.toml"
        )


def _page_size(image: bytes) -> int:
    """The page size in an SQLite database header (offset 16, big-endian; 1 means 65536)."""
    size = int.from_bytes(image[16:18], "big")
    return 65536 if size == 1 else size


def _after_prefix(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with `prefix`; None when there is none (the
    prefix is all 0xff)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


#: Pages compared in one go before looking at each: most of a large database is usually unchanged.
_CHUNK_PAGES: Final = 64


def _changed_pages(image: bytes, before: bytes, size: int) -> dict[int, bytes]:
    """Pages of `image` (numbered from 1) that differ from `before` or lie beyond its end."""
    pages: dict[int, bytes] = {}
    chunk = size * _CHUNK_PAGES
    for c in range(0, len(image), chunk):
        if image[c : c + chunk] == before[c : c + chunk]:
            continue
        for offset in range(c, min(c + chunk, len(image)), size):
            page = image[offset : offset + size]
            if page != before[offset : offset + size]:
                pages[offset // size + 1] = page
    return pages
