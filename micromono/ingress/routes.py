"""The route table: URL path -> the service that serves it, and the request lines seen, parsed and routed.

Routes match as `config.Route.matches` says (one definition): exact routes by a dict lookup, then prefix routes
longest first. Each service a table leads to is one `RouteTarget`, which also remembers the head of that service's
last HTTP reply (a guest answers with the same status and headers again and again, so a reply that starts with the
same encoded bytes is framed with one join; the bytes are length-prefixed, so equal bytes mean equal headers).

Request lines: clients send the same few again and again, so each line parsed and routed is remembered in the table
(`Routes.lines`, at most MAX_CACHED_LINES of up to MAX_CACHED_LINE_BYTES, started over when full) as a
`RequestLine`: its target and the first bytes of its encoding for the guest. A line seen before costs one dict
lookup. A manifest edit brings a new table, so neither cache outlives the routes it was made with. This module must
not read sockets or frame responses.

Compiled by mypyc on the compiled path (scripts/build_compiled.py), from this same source.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import httptools

from micromono.abi import HEAD_PREFIX
from micromono.actors.keyed import KeyedService, decode_key
from micromono.errors import BadActorKey
from micromono.service import Slot

from .responses import reply_head

if TYPE_CHECKING:
    from micromono.config import Route

__all__ = ["Routes", "RouteTarget", "RequestLine", "request_target", "MAX_CACHED_LINES", "MAX_CACHED_LINE_BYTES"]

#: How many distinct request lines `Routes.lines` keeps before it starts over (clients repeat a few lines: the
#: same paths again and again; a client sending ever new ones costs one parse each, as without the cache).
MAX_CACHED_LINES: Final = 4096
#: The longest request line remembered: longer ones are parsed each time, so the cache stays small whatever clients
#: send.
MAX_CACHED_LINE_BYTES: Final = 2048
_pack_prefix = HEAD_PREFIX.pack


class RouteTarget:
    """A service the route table leads to: its slot, its actors when it is an actor service (`keyed`), and its last
    HTTP reply's head (`reply_seen`: the reply's encoded status and headers, empty until one is cached;
    `reply_head`: the status line and header lines rendered from them; `reply_status`)."""

    __slots__ = ("slot", "name", "keyed", "reply_seen", "reply_head", "reply_status")

    def __init__(self, slot: Slot, keyed: KeyedService | None = None) -> None:
        self.slot = slot
        self.name = slot.name
        self.keyed = keyed
        self.reply_seen = b""
        self.reply_head = b""
        self.reply_status = 0

    def __repr__(self) -> str:
        return f"<RouteTarget {self.name}>"

    def remember_reply(self, reply: bytes) -> int:
        """Cache `reply`'s head; return where its body starts, or 0 when the reply is not for the cached path.

        Raises:
            BadReply: the headers break the ABI.
        """
        rendered = reply_head(reply)
        if rendered is None:
            return 0
        self.reply_seen, self.reply_head, self.reply_status = rendered
        return len(self.reply_seen)


class RequestLine:
    """A parsed and routed request line: its target (None: no route), the actor key of a keyed route, decoded
    (`key`; None for other routes) or why it is refused (`bad_key`), its path, the encoded request's first bytes
    (abi.HEAD_PREFIX) and method + path + query as the guest gets them."""

    __slots__ = ("target", "key", "bad_key", "path", "prefix", "method_path_query")

    def __init__(
        self, target: RouteTarget | None, raw_key: bytes | None, path: bytes, prefix: bytes, method_path_query: bytes
    ) -> None:
        self.target = target
        self.key: str | None = None
        self.bad_key: BadActorKey | None = None
        if raw_key is not None and target is not None:
            try:
                self.key = decode_key(raw_key, target.name, percent=True)
            except BadActorKey as exc:
                self.bad_key = exc
        self.path = path
        self.prefix = prefix
        self.method_path_query = method_path_query


class Routes:
    """Path -> `RouteTarget`, and the request lines seen (`lines`).

    Args:
        table: `(route, slot)` pairs (config.route_table's order does not matter here).
        keyed: the actor services by name, for their keyed routes.
    """

    __slots__ = ("exact", "prefixes", "lines")

    def __init__(self, table: list[tuple[Route, Slot]], keyed: dict[str, KeyedService] | None = None) -> None:
        targets: dict[str, RouteTarget] = {}
        self.exact: dict[str, RouteTarget] = {}
        self.prefixes: list[tuple[Route, RouteTarget]] = []
        self.lines: dict[bytes, RequestLine] = {}
        for route, slot in table:
            target = targets.get(slot.name)
            if target is None:
                target = targets[slot.name] = RouteTarget(slot, (keyed or {}).get(slot.name))
            if route.prefix or route.keyed:
                self.prefixes.append((route, target))
            else:
                self.exact[route.pattern] = target
        self.prefixes.sort(key=lambda item: len(item[0].pattern), reverse=True)

    def __repr__(self) -> str:
        return f"<Routes [exact: {len(self.exact)} | prefixes: {len(self.prefixes)} | lines: {len(self.lines)}]>"

    def match(self, path: bytes) -> RouteTarget | None:
        """The target of the first route that matches `path` (compared byte for byte), or None."""
        return self.match_key(path)[0]

    def match_key(self, path: bytes) -> tuple[RouteTarget | None, bytes | None]:
        """The target of the first route that matches `path` (compared byte for byte), or None; and for a keyed
        route the `{key}` segment as it is in the path (not decoded, maybe empty)."""
        # UTF-8 with surrogateescape is one-to-one on bytes, so comparing strings compares the bytes.
        text = path.decode("utf-8", "surrogateescape")
        target = self.exact.get(text)
        if target is not None:
            return target, None
        for route, target in self.prefixes:
            if route.keyed:
                key = route.key_in(text)
                if key is not None:
                    return target, key.encode("utf-8", "surrogateescape")
            elif route.matches(text):
                return target, None
        return None, None

    def line(self, line: bytes, method: bytes) -> RequestLine | None:
        """Parse and route a request line not seen before (`method` as the parser read it), and remember it in
        `lines`; None when its target is not a URL.

        The caller has checked that `line` starts with `method` and a space.
        """
        m = len(method)
        # The request line, as httptools accepted it: `method SP target SP HTTP/x.y`, or a form it also takes.
        if line[m + 1 : m + 2] == b"/" and line[-9:-7] == b" H":  # "/..." and " HTTP/x.y"
            path, _, query = line[m + 1 : -9].partition(b"?")
        else:
            parsed = request_target(line)
            if parsed is None:
                return None
            path, query = parsed
        target, key = self.match_key(path)
        routed = RequestLine(target, key, path, _pack_prefix(m, 0, len(path), len(query)), method + path + query)
        if len(line) <= MAX_CACHED_LINE_BYTES:
            lines = self.lines
            if len(lines) >= MAX_CACHED_LINES:
                lines.clear()
            lines[line] = routed
        return routed


def request_target(line: bytes) -> tuple[bytes, bytes] | None:
    """The path and query of a request line in a form other than `method SP /path SP HTTP/x.y` (an absolute URL,
    extra spaces, no version), or None if its target is not a URL."""
    parts = line.split()
    if len(parts) < 2:
        return None
    target = parts[1]
    if target[:1] == b"/":
        path, _, query = target.partition(b"?")
        return path, query
    try:
        parsed = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError:
        return None
    return parsed.path or b"/", parsed.query or b""
