"""Probe for the actors issue (3 of 6): what a durable commit costs here, by SQLite layout and batch size.

Not a benchmark of micromono: it decides how actor storage is laid out (docs/design/actors.md). Run it from a
scratch directory: python benches/probes/sqlite_commit.py (it writes its databases into the current directory).
"""

import sqlite3, time, os
def db(path, sync):
    c = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    c.execute("pragma journal_mode=wal"); c.execute(f"pragma synchronous={sync}")
    c.execute("create table if not exists kv(actor text, k blob, v blob, primary key(actor,k)) without rowid")
    return c
for sync in ("full", "normal"):
    c = db(f"one-{sync}.db", sync)
    n = 2000; t = time.perf_counter()
    for i in range(n):
        c.execute("begin"); c.execute("insert or replace into kv values(?,?,?)", (str(i % 1000), b"n", str(i).encode())); c.execute("commit")
    dt = time.perf_counter() - t; print(f"one db, {sync}, 1 write/txn: {n/dt:,.0f} commits/s, {dt/n*1e6:.0f} us each")
    for batch in (32, 256):
        n = 20000; t = time.perf_counter()
        for j in range(0, n, batch):
            c.execute("begin")
            for i in range(j, j + batch): c.execute("insert or replace into kv values(?,?,?)", (str(i % 1000), b"n", str(i).encode()))
            c.execute("commit")
        dt = time.perf_counter() - t; print(f"one db, {sync}, {batch} writes/txn: {n/dt:,.0f} writes/s ({dt/(n/batch)*1e6:.0f} us per txn)")
os.makedirs("many", exist_ok=True)
cs = [db(f"many/{i}.db", "full") for i in range(200)]
t = time.perf_counter()
for r in range(5):
    for i, c in enumerate(cs):
        c.execute("begin"); c.execute("insert or replace into kv values(?,?,?)", ("a", b"n", str(r).encode())); c.execute("commit")
dt = time.perf_counter() - t; print(f"200 files, full, 1 write/txn: {1000/dt:,.0f} commits/s")
