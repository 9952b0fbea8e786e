"""Actors: one live instance per key, and each key's durable storage (docs/abi.md, "Actors").

* `storage.py`: one keyed service's SQLite database file, its writer thread (group commit) and reader thread, and
  the plain data crossing into it (`Commit`, `Loaded`, `ActorInfo`).
* `state.py`: one live actor's storage in memory (`ActorState`), the transaction of the message it handles, and
  the errors its guest's storage calls get.

The package re-exports what the runtime uses. Nothing here touches wasmtime or guest memory: the runtime copies
bytes in and out and maps the errors' `abi_code`s.
"""

from __future__ import annotations

from .state import MAX_KEY_BYTES, ActorState, InvalidArgument, SqlError, StorageCallError, StorageFull
from .storage import UNCHANGED, ActorInfo, Commit, Loaded, ServiceStorage, SqlPages, StorageError, StorageStats

__all__ = [
    "MAX_KEY_BYTES",
    "ActorState",
    "StorageCallError",
    "StorageFull",
    "InvalidArgument",
    "SqlError",
    "UNCHANGED",
    "ActorInfo",
    "Commit",
    "Loaded",
    "ServiceStorage",
    "SqlPages",
    "StorageError",
    "StorageStats",
]
