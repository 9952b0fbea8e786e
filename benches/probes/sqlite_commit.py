"""Probe for the actors issue (3 of 6): what a durable commit costs here, by SQLite layout and batch size.

Not a benchmark of micromono: it decided how actor storage is laid out (docs/architecture.md, "An actor's
message"). It writes its databases into a temporary directory on the file system that holds it (`--dir`, default:
the current directory).

Usage: python benches/probes/sqlite_commit.py [--dir PATH]
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

UPSERT = "insert or replace into kv values (?, ?, ?)"


def open_db(path: Path, sync: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("pragma journal_mode=wal")
    db.execute(f"pragma synchronous={sync}")
    db.execute("create table if not exists kv (actor text, k blob, v blob, primary key (actor, k)) without rowid")
    return db


def write_batches(db: sqlite3.Connection, writes: int, batch: int) -> float:
    """Seconds for `writes` upserts over 1,000 actors, `batch` to a transaction."""
    start = time.perf_counter()
    for first in range(0, writes, batch):
        db.execute("begin")
        for i in range(first, first + batch):
            db.execute(UPSERT, (str(i % 1000), b"n", str(i).encode()))
        db.execute("commit")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path.cwd(), help="where the temporary databases go")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        root = Path(scratch)
        for sync in ("full", "normal"):
            db = open_db(root / f"one-{sync}.db", sync)
            seconds = write_batches(db, 2000, 1)
            print(f"one database, {sync}, 1 write a transaction: {2000 / seconds:,.0f} commits/s")
            for batch in (32, 256):
                seconds = write_batches(db, 20_000, batch)
                per_txn = seconds / (20_000 / batch) * 1e6
                rate = 20_000 / seconds
                print(
                    f"one database, {sync}, {batch} writes a transaction: {rate:,.0f} writes/s, {per_txn:.0f} us each"
                )
            db.close()
        files = [open_db(root / f"actor-{i}.db", "full") for i in range(200)]
        start = time.perf_counter()
        for _ in range(5):
            for db in files:
                write_batches(db, 1, 1)
        seconds = time.perf_counter() - start
        print(f"200 database files, full, 1 write a transaction each: {1000 / seconds:,.0f} commits/s")
        for db in files:
            db.close()


if __name__ == "__main__":
    main()
