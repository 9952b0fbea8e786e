"""ActorState: a live actor's storage in memory and one message's transaction (micromono/actors/state.py)."""

from __future__ import annotations

import re
import time

import pytest

from micromono.abi import (
    MM_ERR_INVALID,
    MM_ERR_SQL,
    MM_ERR_STORAGE_FULL,
    SqlValue,
    decode_kv_entries,
    decode_sql_result,
    encode_list_options,
    encode_sql_values,
)
from micromono.actors import UNCHANGED, ActorState, InvalidArgument, Loaded, SqlError, SqlPages, StorageFull
from micromono.actors.state import MAX_KEY_BYTES, SQL_PAGE_SIZE

LIMIT = 1 << 20
ENDLESS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c)"


def actor(kv: dict[bytes, bytes] | None = None, limit: int = LIMIT, **loaded: object) -> ActorState:
    state = Loaded(kv=dict(kv or {}), **loaded)  # type: ignore[arg-type]
    return ActorState("x", state, storage_limit=limit, name="room/x")


def sql(state: ActorState, statement: str, *params: SqlValue, seconds: float = 5.0) -> list[list[SqlValue]]:
    """Run one statement and return its rows."""
    result = state.sql(statement.encode(), encode_sql_values(params), time.monotonic() + seconds)
    return decode_sql_result(result).rows


def listing(state: ActorState, **options: object) -> list[bytes]:
    return [k for k, _ in decode_kv_entries(state.list(encode_list_options(**options)))]  # type: ignore[arg-type]


def apply_pages(image: bytes, change: SqlPages) -> bytes:
    """What storage keeps of an SQL database after a commit: the old image with the changed pages written over it,
    cut or grown to the new page count."""
    size = change.page_size
    pages = [image[i : i + size] for i in range(0, len(image), size)][: change.page_count]
    pages += [b""] * (change.page_count - len(pages))
    for pgno, data in change.pages.items():
        pages[pgno - 1] = data
    assert all(len(p) == size for p in pages)
    return b"".join(pages)


# -- keys and values ---------------------------------------------------------------------------------------------


def test_reads_see_the_message_writes() -> None:
    """A message reads its own puts and deletes before it commits."""
    state = actor({b"a": b"1"})
    state.begin()
    assert state.get(b"a") == b"1"
    state.put(b"a", b"2")
    state.put(b"b", b"")
    assert (state.get(b"a"), state.get(b"b")) == (b"2", b"")
    assert state.delete(b"a") is True
    assert state.delete(b"a") is False
    assert state.get(b"a") is None
    commit = state.commit(epoch=3, now=100.0)
    assert commit is not None
    assert (commit.key, commit.epoch, commit.kv, commit.last_active) == ("x", 3, {b"a": None, b"b": b""}, 100.0)
    assert (commit.sql, commit.schema_version, commit.alarm) == (None, None, UNCHANGED)
    assert commit.total_bytes == state.total_bytes == 1


def test_a_message_that_writes_nothing_commits_nothing() -> None:
    """A read-only message, or one that writes back the values keys already had, returns no commit."""
    state = actor({b"a": b"1"})
    state.begin()
    state.get(b"a")
    state.list(encode_list_options())
    assert state.commit(1, 0.0) is None
    state.begin()
    state.put(b"a", b"1")
    state.put(b"new", b"x")
    state.delete(b"new")
    assert state.commit(1, 0.0) is None


def test_keys_must_be_1_to_2048_bytes() -> None:
    """An empty key or one over MAX_KEY_BYTES is an invalid argument, for reads and writes."""
    state = actor()
    state.begin()
    state.put(b"k" * MAX_KEY_BYTES, b"v")
    for call in (state.get, state.delete, lambda k: state.put(k, b"v")):
        for key in (b"", b"k" * (MAX_KEY_BYTES + 1)):
            with pytest.raises(InvalidArgument, match=r"keys are 1 to 2,048 bytes$") as info:
                call(key)
            assert info.value.abi_code == MM_ERR_INVALID


def test_writes_need_a_transaction() -> None:
    """Writing outside begin()/commit() is a bug of the runtime, and so is a second begin()."""
    state = actor()
    with pytest.raises(RuntimeError, match="put.. outside a transaction"):
        state.put(b"a", b"1")
    state.begin()
    with pytest.raises(RuntimeError, match="begin.. inside a transaction"):
        state.begin()


def test_storage_limit_refuses_a_growing_put_and_writes_nothing() -> None:
    """A put that would take the actor over storage_limit raises StorageFull, names the limit and the fix, and
    changes nothing; a put that shrinks the actor is allowed."""
    state = actor({b"a": b"x" * 60}, limit=100)
    state.begin()
    state.put(b"b", b"y" * 37)  # 61 + 38 = 99 bytes
    with pytest.raises(StorageFull) as info:
        state.put(b"c", b"zz")
    assert info.value.abi_code == MM_ERR_STORAGE_FULL
    assert str(info.value) == (
        "actor 'room/x' would hold 102 bytes, over storage_limit = 100 bytes; delete data or raise storage_limit "
        "in services.toml"
    )
    assert state.get(b"c") is None and state.total_bytes == 99
    state.put(b"a", b"")  # shrinks
    assert state.total_bytes == 39
    commit = state.commit(1, 0.0)
    assert commit is not None and commit.kv == {b"a": b"", b"b": b"y" * 37}


def test_storage_limit_message_in_mib() -> None:
    """A limit of whole MiB is written as such."""
    state = actor(limit=16 << 20)
    state.begin()
    with pytest.raises(StorageFull, match=r"^actor 'room/x' would hold 17,000,001 bytes, over storage_limit = 16MiB;"):
        state.put(b"k", b"v" * 17_000_000)


def test_rollback_restores_everything() -> None:
    """Rollback undoes puts, overwrites and deletes, the alarm, the schema version and the byte count."""
    state = actor({b"a": b"1", b"b": b"2"}, schema_version=2, alarm=(5000, 0))
    before = (dict(state.kv), state.total_bytes, listing(state))
    state.begin()
    state.put(b"a", b"changed")
    state.put(b"a", b"again")
    state.delete(b"b")
    state.put(b"c", b"new")
    state.set_alarm(9000)
    state.set_schema_version(3)
    assert listing(state) == [b"a", b"c"]
    state.rollback()
    assert (dict(state.kv), state.total_bytes, listing(state)) == before
    assert (state.alarm, state.schema_version) == ((5000, 0), 2)
    state.begin()
    state.delete_alarm()
    state.rollback()
    assert state.alarm == (5000, 0)


def test_alarm_and_schema_version_commit() -> None:
    """The alarm and the schema version are part of the transaction; a commit carries only what changed."""
    state = actor(alarm=(5000, 2))
    state.begin()
    state.delete_alarm()
    assert state.alarm is None
    commit = state.commit(1, 0.0)
    assert commit is not None and commit.alarm is None and commit.schema_version is None
    state.begin()
    state.set_alarm(7000)
    state.set_schema_version(4)
    commit = state.commit(1, 0.0)
    assert commit is not None and (commit.alarm, commit.schema_version, commit.kv) == ((7000, 0), 4, {})
    state.begin()
    state.set_alarm(7000)
    assert state.commit(1, 0.0) is None  # the same alarm again
    state.begin()
    with pytest.raises(InvalidArgument, match="before 1970"):
        state.set_alarm(-1)


# -- list --------------------------------------------------------------------------------------------------------

KEYS = [b"a", b"b", b"ba", b"bb", b"bz", b"b\xff", b"b\xff\xff", b"c", b"\xff", b"\xff\xff"]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, KEYS),
        ({"prefix": b"b"}, [b"b", b"ba", b"bb", b"bz", b"b\xff", b"b\xff\xff"]),
        ({"prefix": b"b\xff"}, [b"b\xff", b"b\xff\xff"]),
        ({"prefix": b"\xff"}, [b"\xff", b"\xff\xff"]),
        ({"prefix": b"q"}, []),
        ({"start": b"bb"}, KEYS[3:]),
        ({"end": b"bb"}, KEYS[:3]),
        ({"start": b"b", "end": b"c"}, KEYS[1:7]),
        ({"start": b"c", "end": b"b"}, []),
        ({"prefix": b"b", "start": b"bb", "end": b"bz"}, [b"bb"]),
        ({"limit": 2}, KEYS[:2]),
        ({"limit": 2, "reverse": True}, [b"\xff\xff", b"\xff"]),
        ({"reverse": True, "prefix": b"b", "limit": 3}, [b"b\xff\xff", b"b\xff", b"bz"]),
        ({"limit": 100, "start": b"c"}, KEYS[7:]),
    ],
)
def test_list_selects_in_bytewise_order(options: dict[str, object], expected: list[bytes]) -> None:
    """kv_list: bytewise order, prefix, start (inclusive), end (exclusive), limit and reverse."""
    state = actor({k: b"v" + k for k in reversed(KEYS)})
    entries = decode_kv_entries(state.list(encode_list_options(**options)))  # type: ignore[arg-type]
    assert entries == [(k, b"v" + k) for k in expected]


def test_list_of_an_empty_actor_and_bad_options() -> None:
    """An actor without data lists nothing; options that do not decode are an invalid argument."""
    state = actor()
    assert decode_kv_entries(state.list(encode_list_options())) == []
    with pytest.raises(InvalidArgument, match="^kv_list: list options of 3 bytes are shorter") as info:
        state.list(b"abc")
    assert info.value.abi_code == MM_ERR_INVALID


def test_list_sees_keys_added_and_removed() -> None:
    """The cached key order follows inserts, deletes and rollbacks."""
    state = actor({b"b": b"1"})
    assert listing(state) == [b"b"]
    state.begin()
    state.put(b"a", b"1")
    assert listing(state) == [b"a", b"b"]
    state.put(b"a", b"2")  # an overwrite keeps the order
    state.delete(b"b")
    assert listing(state) == [b"a"]
    state.rollback()
    assert listing(state) == [b"b"]


# -- SQL ---------------------------------------------------------------------------------------------------------


def test_sql_result_fields() -> None:
    """An INSERT reports its changes and last rowid; a SELECT its columns and typed rows."""
    state = actor()
    state.begin()
    sql(state, "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, data BLOB, score REAL)")
    params = encode_sql_values(["a", b"\x00", 1.5, "b", None, None])
    insert = b"INSERT INTO t (name, data, score) VALUES (?, ?, ?), (?, ?, ?)"
    result = decode_sql_result(state.sql(insert, params, time.monotonic() + 5))
    assert (result.columns, result.rows, result.changes, result.last_insert_rowid) == ([], [], 2, 2)
    result = decode_sql_result(state.sql(b"SELECT id, name, data, score FROM t ORDER BY id", b"", time.monotonic() + 5))
    assert result.columns == ["id", "name", "data", "score"]
    assert result.rows == [[1, "a", b"\x00", 1.5], [2, "b", None, None]]
    assert result.changes == 0


def test_sql_bad_input_is_an_invalid_argument() -> None:
    """SQL that is not UTF-8, or params that do not decode, are refused before SQLite sees them."""
    state = actor()
    state.begin()
    with pytest.raises(InvalidArgument, match=r"^sql_exec: the statement is not UTF-8 \(byte 8\)$"):
        state.sql(b"SELECT '\xff'", b"", time.monotonic() + 5)
    with pytest.raises(InvalidArgument, match="^sql_exec: params of 1 bytes are shorter"):
        state.sql(b"SELECT ?", b"\x01", time.monotonic() + 5)


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        ("SELECT 1; SELECT 2", "sql_exec runs one statement at a time; send each statement in its own call"),
        ("CREATE TABLE a (x); DROP TABLE a", "sql_exec runs one statement at a time; send each statement in its own"),
        ("ATTACH ':memory:' AS other", "ATTACH is not allowed: an actor has one database"),
        ("DETACH other", "DETACH is not allowed"),
        ("PRAGMA page_count", "PRAGMA is not allowed: the host owns the database's settings"),
        ("PRAGMA max_page_count = 1000000", "PRAGMA is not allowed"),
        ("PRAGMA writable_schema = ON", "PRAGMA is not allowed"),
        ("BEGIN", "transaction control (BEGIN, COMMIT, ROLLBACK) is not allowed: the message is the transaction"),
        ("COMMIT", "transaction control"),
        ("ROLLBACK", "transaction control"),
        ("SAVEPOINT s", "SAVEPOINT is not allowed"),
        ("SELECT load_extension('/tmp/evil.so')", "load_extension() is not allowed"),
        ("CREATE TEMP TABLE scratch (x)", "temporary tables are not allowed"),
        ("SELECT * FROM missing", "no such table: missing"),
    ],
)
def test_sql_refusals(statement: str, message: str) -> None:
    """Statements outside the contract fail with MM_ERR_SQL and say why, and the message goes on."""
    state = actor()
    state.begin()
    sql(state, "CREATE TABLE t (x)")
    with pytest.raises(SqlError, match=f"^{re.escape(message)}") as info:
        sql(state, statement)
    assert info.value.abi_code == MM_ERR_SQL
    sql(state, "INSERT INTO t VALUES (1)")
    assert sql(state, "SELECT x FROM t") == [[1]]
    assert state.commit(1, 0.0) is not None


def test_sql_deadline_interrupts_an_endless_statement() -> None:
    """A statement still running at the message's deadline is interrupted (MM_ERR_SQL); an interrupted query
    leaves the message's transaction as it was."""
    state = actor()
    state.begin()
    sql(state, "CREATE TABLE t (x)")
    started = time.monotonic()
    with pytest.raises(SqlError, match="^interrupted: the statement ran past the message's deadline$") as info:
        sql(state, f"{ENDLESS} SELECT count(*) FROM c", seconds=0.05)
    assert time.monotonic() - started < 2.0
    assert info.value.abi_code == MM_ERR_SQL
    commit = state.commit(1, 0.0)
    assert commit is not None and commit.sql is not None


def test_sql_interrupted_write_fails_the_message() -> None:
    """An interrupted write makes SQLite roll back the whole SQL transaction: when the message had written SQL
    before, it cannot commit (it would store its keys and values without its SQL) and is rolled back."""
    state = actor()
    state.begin()
    sql(state, "CREATE TABLE t (x)")
    with pytest.raises(SqlError, match="^interrupted: .*SQLite rolled back this message's SQL writes") as info:
        sql(state, f"INSERT INTO t {ENDLESS} SELECT count(*) FROM c", seconds=0.05)
    assert info.value.abi_code == MM_ERR_SQL
    with pytest.raises(SqlError, match="cannot commit"):
        sql(state, "SELECT 1")
    with pytest.raises(SqlError, match="cannot commit and fails$"):
        state.commit(1, 0.0)
    state.rollback()
    state.begin()
    assert sql(state, "SELECT name FROM sqlite_master") == []  # the CREATE went with the message
    assert state.commit(1, 0.0) is None


def test_sql_interrupted_first_write_leaves_the_message_usable() -> None:
    """An interrupted write in a message that had written no SQL before loses nothing: the message goes on."""
    state = actor()
    state.begin()
    sql(state, "CREATE TABLE t (x)")
    assert state.commit(1, 0.0) is not None
    state.begin()
    with pytest.raises(SqlError, match="^interrupted"):
        sql(state, f"INSERT INTO t {ENDLESS} SELECT count(*) FROM c", seconds=0.02)
    sql(state, "INSERT INTO t VALUES (1)")
    assert state.commit(1, 0.0) is not None


def test_sql_storage_limit() -> None:
    """The SQL database cannot grow past what storage_limit leaves after the keys and values (StorageFull); a
    statement that fails so as the message's first write leaves the message usable."""
    state = actor({b"k": b"v" * 20_000}, limit=64 * 1024)
    state.begin()
    with pytest.raises(StorageFull, match=r"^actor 'room/x': its SQL database cannot grow") as info:
        sql(state, "CREATE TABLE t AS SELECT zeroblob(50000) AS b")
    assert info.value.abi_code == MM_ERR_STORAGE_FULL
    sql(state, "CREATE TABLE t (b BLOB)")
    sql(state, "INSERT INTO t VALUES (zeroblob(30000))")
    assert 50_000 < state.total_bytes <= 64 * 1024
    with pytest.raises(StorageFull):
        state.put(b"more", b"x" * 20_000)  # the SQL database counts against the limit of keys and values too
    with pytest.raises(StorageFull, match="cannot commit"):
        sql(state, "INSERT INTO t VALUES (zeroblob(30000))")  # this one takes the message's earlier SQL with it
    state.rollback()
    assert state.total_bytes == 20_001


def test_sql_cannot_start_a_database_without_room() -> None:
    """When the keys and values leave less than a page under storage_limit, the SQL database cannot be created."""
    state = actor({b"k": b"v" * 3500}, limit=4096)
    state.begin()
    with pytest.raises(StorageFull, match="its SQL database cannot grow"):
        sql(state, "CREATE TABLE t (x)")
    state.delete(b"k")
    sql(state, "CREATE TABLE t (x)")
    assert state.commit(1, 0.0) is not None


def test_sql_rollback_restores_the_database() -> None:
    """Rollback undoes the message's SQL: tables, rows and size, exactly as committed before."""
    state = actor()
    state.begin()
    sql(state, "CREATE TABLE t (x)")
    sql(state, "INSERT INTO t VALUES (1)")
    first = state.commit(1, 0.0)
    assert first is not None and first.sql is not None
    image = apply_pages(b"", first.sql)
    size = state.total_bytes
    state.begin()
    sql(state, "UPDATE t SET x = 99")
    sql(state, "INSERT INTO t VALUES (zeroblob(20000))")
    sql(state, "CREATE TABLE u (y)")
    state.rollback()
    assert state.total_bytes == size
    state.begin()
    assert sql(state, "SELECT name FROM sqlite_master ORDER BY name") == [["t"]]
    assert sql(state, "SELECT x FROM t") == [[1]]
    assert state.commit(1, 0.0) is None
    fresh = actor(sql_image=image)
    fresh.begin()
    assert sql(fresh, "SELECT x FROM t") == [[1]]


def test_sql_commit_sends_only_changed_pages_and_round_trips() -> None:
    """A commit carries the pages that changed since the last one; an image rebuilt from them loads into a fresh
    ActorState with the same data."""
    state = actor()
    state.begin()
    sql(state, "CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
    sql(state, "CREATE INDEX t_body ON t (body)")
    for i in range(200):
        sql(state, "INSERT INTO t (body) VALUES (?)", f"row {i} " + "x" * 100)
    first = state.commit(1, 0.0)
    assert first is not None and first.sql is not None
    assert first.sql.page_size == SQL_PAGE_SIZE and sorted(first.sql.pages) == list(range(1, first.sql.page_count + 1))
    image = apply_pages(b"", first.sql)
    assert state.total_bytes == len(image)

    state.begin()
    sql(state, "UPDATE t SET body = 'changed' WHERE id = 7")
    second = state.commit(2, 0.0)
    assert second is not None and second.sql is not None
    assert 0 < len(second.sql.pages) <= 4 < second.sql.page_count
    image = apply_pages(image, second.sql)

    state.begin()
    sql(state, "DELETE FROM t WHERE id > 20")  # auto_vacuum: the database shrinks
    third = state.commit(3, 0.0)
    assert third is not None and third.sql is not None and third.sql.page_count < second.sql.page_count
    image = apply_pages(image, third.sql)
    assert state.total_bytes == len(image)

    fresh = actor(sql_image=image)
    assert fresh.total_bytes == len(image)
    fresh.begin()
    state.begin()
    query = "SELECT id, body FROM t ORDER BY body, id"
    assert sql(fresh, query) == sql(state, query)
    assert sql(fresh, "SELECT body FROM t WHERE id = 7") == [["changed"]]
    assert sql(fresh, "SELECT count(*) FROM t") == [[20]]
    state.close()
    fresh.close()


def test_sql_read_only_message_commits_nothing() -> None:
    """A message that only queries the SQL database commits nothing."""
    state = actor()
    state.begin()
    sql(state, "CREATE TABLE t (x)")
    assert state.commit(1, 0.0) is not None
    state.begin()
    assert sql(state, "SELECT count(*) FROM t") == [[0]]
    assert state.commit(1, 0.0) is None


def test_host_statements_cannot_be_replayed_by_the_guest() -> None:
    """The host's own BEGIN is prepared (and cached) with text no guest sends, so a guest BEGIN is still checked."""
    state = actor()
    state.begin()
    sql(state, "CREATE TABLE t (x)")  # the host began the transaction
    state.commit(1, 0.0)
    state.begin()
    sql(state, "SELECT 1")  # ... and again, from the statement cache
    for statement in ("BEGIN", "begin", "PRAGMA max_page_count = 1"):
        with pytest.raises(SqlError, match="not allowed"):
            sql(state, statement)
    state.rollback()
