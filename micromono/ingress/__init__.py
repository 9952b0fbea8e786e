"""HTTP ingress: the listener's connections, the route table and response framing (uvicorn's `protocols/http/`).

The ingress side of the daemon is one group, one concern per module:

- `http`: the HTTP/1.1 connection (`HttpProtocol`, httptools on an asyncio Protocol) and the listener's shared
  state (`Ingress`): parsing, limits, keep-alive and pipelining order, one way through for every request;
- `heads`: request heads in the bytes, their encoding for the guest, and `KnownHead` (a head routed and encoded);
- `routes`: the route table (`Routes`), its request-line cache, and the per-service reply-head cache;
- `responses`: response framing and the error -> status table.

A WebSocket protocol would sit beside `http` and share `routes` and `responses`. Nothing here runs guests: a routed
request becomes `runs.TopLevel.run`. This module only names what the rest of micromono imports.

Compiled by mypyc on the compiled path (scripts/build_compiled.py), from this same source, with the modules beside
it (a compiled package finds its submodules only among the compiled ones).
"""

from __future__ import annotations

from .heads import KnownHead
from .http import MAX_HEAD_BYTES, MAX_HEADER_FIELDS, MAX_KNOWN_HEAD_BYTES, HttpProtocol, Ingress
from .routes import MAX_CACHED_LINE_BYTES, MAX_CACHED_LINES, Routes, RouteTarget

__all__ = [
    "Ingress",
    "HttpProtocol",
    "KnownHead",
    "Routes",
    "RouteTarget",
    "MAX_HEAD_BYTES",
    "MAX_HEADER_FIELDS",
    "MAX_KNOWN_HEAD_BYTES",
    "MAX_CACHED_LINES",
    "MAX_CACHED_LINE_BYTES",
]
