"""The admin listener (`daemon.metrics_listen`): `/metrics`, `/status` and `/healthz` over HTTP/1.1.

Kept apart from ingress so a flood of user traffic and a scrape never share a route table, and so ingress's hot
path carries no admin checks. It is small and slow on purpose: one request at a time per connection, answers
built on demand.

* `GET /metrics`: Prometheus text format from the daemon's own registry.
* `GET /status`: JSON: every service with its version, sha256, instances, mailbox and call counts.
* `GET /healthz`: `200 ok` while the daemon serves, `503 stopping` during shutdown.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httptools

__all__ = ["AdminProtocol"]


class AdminProtocol(asyncio.Protocol):
    """One admin connection.

    Args:
        metrics: renders the Prometheus text.
        status: returns the status document.
        healthy: False once the daemon is shutting down.
    """

    def __init__(
        self, metrics: Callable[[], bytes], status: Callable[[], dict[str, Any]], healthy: Callable[[], bool]
    ) -> None:
        self._metrics = metrics
        self._status = status
        self._healthy = healthy
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._size += len(data)
        try:
            if self._size > 64 * 1024:
                raise httptools.HttpParserError("request too large for the admin listener")
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._send(400, b"text/plain; charset=utf-8", f"malformed request: {exc}\n".encode(), close=True)

    def on_message_begin(self) -> None:
        self._url = b""

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_message_complete(self) -> None:
        self._size = 0
        path = self._url.partition(b"?")[0]
        method = self._parser.get_method()
        keep = self._parser.should_keep_alive()
        if method not in (b"GET", b"HEAD"):
            self._send(405, b"text/plain; charset=utf-8", b"only GET and HEAD are supported\n", close=not keep)
        elif path == b"/metrics":
            self._send(200, b"text/plain; version=0.0.4; charset=utf-8", self._metrics(), close=not keep)
        elif path == b"/status":
            body = json.dumps(self._status(), indent=2).encode() + b"\n"
            self._send(200, b"application/json", body, close=not keep)
        elif path == b"/healthz":
            ok = self._healthy()
            self._send(200 if ok else 503, b"text/plain", b"ok\n" if ok else b"stopping\n", close=not keep)
        else:
            self._send(
                404, b"text/plain; charset=utf-8", b"not found: try /metrics, /status or /healthz\n", close=not keep
            )

    def _send(self, status: int, content_type: bytes, body: bytes, *, close: bool) -> None:
        transport = self._transport
        if transport is None:
            return
        reason = {
            200: b"OK",
            400: b"Bad Request",
            404: b"Not Found",
            405: b"Method Not Allowed",
            503: b"Service Unavailable",
        }
        head = b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s\r\n" % (
            status, reason.get(status, b"Error"), content_type, len(body), b"connection: close\r\n" if close else b"",
        )  # fmt: skip
        transport.write(head + body)
        if close:
            transport.close()
            self._transport = None
