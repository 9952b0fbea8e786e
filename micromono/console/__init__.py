"""The live page: a web page on the admin listener that shows the running daemon (docs/operations.md, *The live
page*): its services as a graph of their call edges with rates and error ratios, each service's version,
instances, mailbox, quarantine, actors and WebSockets, latency charts over the last minutes, and the reload
history, updated by server-sent events.

* `files.py`: the page's plain files (`static/`), served as they are under a `default-src 'self'` policy.
* `events.py`: the event stream (`/console/events`): its clients, the tick that samples while one is connected,
  the ring of recent samples.
* `sample.py`: what a tick reads on the event loop, and the JSON it becomes in a worker thread.

admin.py routes the page's paths here; the daemon makes one `Console` when it binds its admin listener and
closes it at shutdown.
"""

from __future__ import annotations

from .events import (
    HISTORY_BYTES,
    HISTORY_SECONDS,
    MAX_CLIENTS,
    SLOW_CLIENT_SECONDS,
    TICK,
    Console,
    ConsoleClient,
    ConsoleRefused,
)
from .files import CSP, StaticFile, StaticFiles

__all__ = [
    "CSP",
    "HISTORY_BYTES",
    "HISTORY_SECONDS",
    "MAX_CLIENTS",
    "SLOW_CLIENT_SECONDS",
    "TICK",
    "Console",
    "ConsoleClient",
    "ConsoleRefused",
    "StaticFile",
    "StaticFiles",
]
