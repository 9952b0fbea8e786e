"""What a `services.toml` says, version 1: the frozen spec dataclasses, their defaults and bounds, and the route table.

The types here say what the TOML says and nothing more (STYLE rules 7 and 8): a loaded, running service is
`service.Service`, and reload compares these specs, never live objects. Each field's comment gives its TOML form;
docs/configuration.md is the reference. The defaults and bounds live here, in one place, so that the parser
(`parser.py`) and the docs agree. This module must not read files, validate a whole document (the parser does), or
know anything about running services.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from .text import GiB, KiB, MiB, quote

__all__ = [
    "DEFAULT_DAEMON_WS_MAX_CONNECTIONS",
    "DEFAULT_WS_IDLE_TIMEOUT",
    "DEFAULT_WS_MAX_CONNECTIONS",
    "DEFAULT_WS_MAX_BUFFERED",
    "DEFAULT_WS_MAX_MESSAGE",
    "DEFAULT_STREAM_BUFFER",
    "SYNC_MODES",
    "SERVICE_KINDS",
    "MIN_STORAGE_LIMIT_BYTES",
    "MAX_STORAGE_LIMIT_BYTES",
    "MAX_LIVE",
    "MAX_KEY_BYTES",
    "MAX_IDLE_TIMEOUT",
    "KEY_SEGMENT",
    "SERVICE_NAME",
    "service_name_problem",
    "DEFAULT_STORAGE_LIMIT_BYTES",
    "DEFAULT_MAX_LIVE",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_DATA_DIR",
    "CONFIG_VERSION",
    "CPU_CHOICES",
    "DEFAULT_CACHE_DIR",
    "DEFAULT_CACHE_MAX_BYTES",
    "DEFAULT_CALL_TIMEOUT",
    "DEFAULT_CPU",
    "DEFAULT_DRAIN_TIMEOUT",
    "DEFAULT_GRACEFUL_TIMEOUT",
    "DEFAULT_INSTANCES",
    "DEFAULT_LISTEN",
    "DEFAULT_LOG_BURST",
    "DEFAULT_LOG_FORMAT",
    "DEFAULT_LOG_OUTPUT",
    "DEFAULT_LOG_LEVEL",
    "DEFAULT_LOG_RATE",
    "DEFAULT_MAILBOX",
    "DEFAULT_MAX_CALL_DEPTH",
    "DEFAULT_MAX_REQUEST_BYTES",
    "DEFAULT_MAX_SENDS",
    "DEFAULT_MEMORY_LIMIT_BYTES",
    "DEFAULT_METRICS_LISTEN",
    "DEFAULT_PROBATION",
    "DEFAULT_ROLLBACK_ERROR_RATE",
    "DEFAULT_SLICE",
    "LOG_FORMATS",
    "LOG_OUTPUTS",
    "TRACING_MODES",
    "DEFAULT_TRACING",
    "LOG_LEVELS",
    "MAX_CALL_DEPTH",
    "MAX_CALL_TIMEOUT",
    "MAX_CPU",
    "MAX_GRACEFUL_TIMEOUT",
    "MAX_INSTANCES",
    "MAX_LOG_BURST",
    "MAX_LOG_RATE",
    "MAX_MAILBOX",
    "MAX_MEMORY_LIMIT_BYTES",
    "MAX_SLICE",
    "MIN_CACHE_MAX_BYTES",
    "MIN_MEMORY_LIMIT_BYTES",
    "MIN_SLICE",
    "ON_FULL_POLICIES",
    "Address",
    "Config",
    "DaemonSpec",
    "DirGrant",
    "Route",
    "ServiceSpec",
    "route_table",
]

CONFIG_VERSION: Final = 1
ON_FULL_POLICIES: Final = ("reject", "wait", "shed_oldest")
LOG_FORMATS: Final = ("console", "json")
#: `daemon.log_output`: the stream micromono's own log goes to.
LOG_OUTPUTS: Final = ("stderr", "stdout")
#: `daemon.tracing` (docs/tracing.md): no spans, spans as log events, spans to an OTLP collector.
TRACING_MODES: Final = ("off", "log", "otlp")
DEFAULT_TRACING: Final = "off"
LOG_LEVELS: Final = ("debug", "info", "warning", "error")

# Defaults (DEFAULT_LISTEN and DEFAULT_METRICS_LISTEN follow the Address class).
DEFAULT_CACHE_DIR: Final = Path(".micromono/cache")  # relative to the manifest's directory
DEFAULT_CACHE_MAX_BYTES: Final = 1 << 30  # the compile cache's bound on disk
MIN_CACHE_MAX_BYTES: Final = 1 << 20
DEFAULT_LOG_FORMAT: Final = "console"
DEFAULT_LOG_LEVEL: Final = "info"
DEFAULT_LOG_OUTPUT: Final = "stderr"
DEFAULT_GRACEFUL_TIMEOUT: Final = 10.0
DEFAULT_MAX_REQUEST_BYTES: Final = 1 * MiB
DEFAULT_MAX_CALL_DEPTH: Final = 16
DEFAULT_INSTANCES: Final = 4
DEFAULT_MAILBOX: Final = 64
DEFAULT_CALL_TIMEOUT: Final = 1.0
DEFAULT_MEMORY_LIMIT_BYTES: Final = 64 * MiB
DEFAULT_LOG_RATE: Final = 100.0  # guest log lines per second (guestlog.py)
DEFAULT_MAX_SENDS: Final = 1000  # sends per guest entry (router.send)
DEFAULT_LOG_BURST: Final = 200  # guest log lines at once, above log_rate
DEFAULT_DATA_DIR: Final = Path(".micromono/data")  # actor databases, relative to the manifest's directory
DEFAULT_MAX_LIVE: Final = 1000  # live actor instances per actor service
DEFAULT_IDLE_TIMEOUT: Final = 60.0  # seconds an actor stays live without a message
DEFAULT_STORAGE_LIMIT_BYTES: Final = 16 * MiB  # storage per actor
DEFAULT_STREAM_BUFFER: Final = 1000  # published messages kept per actor for resuming
DEFAULT_WS_MAX_MESSAGE: Final = 1 * MiB
DEFAULT_WS_MAX_BUFFERED: Final = 4 * MiB
DEFAULT_WS_MAX_CONNECTIONS: Final = 10_000  # per actor
DEFAULT_WS_IDLE_TIMEOUT: Final = 600.0
DEFAULT_DAEMON_WS_MAX_CONNECTIONS: Final = 100_000

# Bounds, in one place so that the parser and docs/configuration.md agree.
MAX_CALL_DEPTH: Final = 1000
MAX_INSTANCES: Final = 1024
MAX_MAILBOX: Final = 1_000_000
MAX_CALL_TIMEOUT: Final = 3600.0
MAX_GRACEFUL_TIMEOUT: Final = 3600.0  # a bound keeps absurd values from overflowing event-loop timers
MIN_MEMORY_LIMIT_BYTES: Final = 64 * KiB  # one wasm page
MAX_MEMORY_LIMIT_BYTES: Final = 4 * GiB  # all that wasm32 can address
MAX_LOG_RATE: Final = 1_000_000.0  # lines per second: in effect unlimited (there is no "0 = unlimited")
MAX_LOG_BURST: Final = 1_000_000
MAX_LIVE: Final = 1_000_000
MAX_IDLE_TIMEOUT: Final = 86_400.0
MIN_STORAGE_LIMIT_BYTES: Final = 4 * KiB
MAX_STORAGE_LIMIT_BYTES: Final = 1 * GiB
#: The longest actor key, in bytes (UTF-8), from a route or a caller's target.
MAX_KEY_BYTES: Final = 512
SERVICE_KINDS: Final = ("service", "actor")
SYNC_MODES: Final = ("full", "normal")
#: The path segment of a keyed route that holds the key.
KEY_SEGMENT: Final = "{key}"
# A service's name, the key of its [services.<name>] table: also a path segment, a file name (`micromono new`) and
# part of metric labels, so a small alphabet.
SERVICE_NAME: Final = re.compile(r"[a-z][a-z0-9_-]{0,62}")


def service_name_problem(name: str) -> str | None:
    """What is wrong with `name` as a service name, with the fix; None when it is a valid one."""
    if SERVICE_NAME.fullmatch(name):
        return None
    hint = f' (did you mean "{name.lower()}"?)' if SERVICE_NAME.fullmatch(name.lower()) else ""
    return (
        f"invalid service name {quote(name)}{hint}: use a lowercase letter, then up to 62 lowercase letters, "
        'digits, "_" or "-"'
    )


_LABEL: Final = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME: Final = re.compile(rf"{_LABEL}(\.{_LABEL})*")


@dataclass(frozen=True, slots=True, kw_only=True)
class Address:
    """A TCP listen address, written `"host:port"` in the manifest (IPv6 in brackets: `"[::1]:8080"`).

    Port 0 asks the OS for a free port; the daemon reports the port it got in `Daemon.addresses`.
    """

    host: str  # "127.0.0.1", "localhost", or "::1" (stored without the brackets)
    port: int  # 0..65535

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Address:
        """Parse `"host:port"` or `"[ipv6]:port"`.

        Args:
            text: the address as written in the manifest.

        Returns:
            The address. The host is an IPv4/IPv6 literal or a DNS name; it is not resolved here.

        Raises:
            ValueError: the text is not an address; the message says what to write instead.
        """
        if text.startswith("["):
            host, bracket, rest = text[1:].partition("]")
            if not bracket:
                raise ValueError(f'missing "]" in {quote(text)}: write IPv6 addresses as "[::1]:8080"')
            if not rest.startswith(":"):
                raise ValueError(f'expected ":port" after "]" in {quote(text)}, as in "[::1]:8080"')
            port_text = rest[1:]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(f"{quote(host)} is not an IPv6 address, in {quote(text)}") from None
        else:
            host, colon, port_text = text.rpartition(":")
            if not colon:
                raise ValueError(f'expected "host:port", such as "127.0.0.1:8080" or "[::1]:8080", got {quote(text)}')
            if ":" in host:
                raise ValueError(f'IPv6 addresses need brackets: write "[{host}]:{port_text}", not {quote(text)}')
            if not host:
                raise ValueError(
                    f'missing host in {quote(text)}: write "127.0.0.1{text}" (this machine only) '
                    f'or "0.0.0.0{text}" (all interfaces)'
                )
            if re.fullmatch(r"[0-9.]+", host):
                try:
                    ipaddress.IPv4Address(host)
                except ValueError:
                    raise ValueError(f"{quote(host)} is not an IPv4 address, in {quote(text)}") from None
            elif not _HOSTNAME.fullmatch(host):
                raise ValueError(f"{quote(host)} is not a valid host name or IP address, in {quote(text)}")
        if not re.fullmatch(r"[0-9]{1,5}", port_text) or int(port_text) > 65535:
            raise ValueError(f'expected a port 0..65535 after the last ":", got {quote(port_text)} in {quote(text)}')
        return cls(host=host, port=int(port_text))


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """One entry of a service's `routes`, in the form the router matches.

    `"/login"` matches exactly `/login`. `"/api/*"` is `Route(pattern="/api", prefix=True)` and matches `/api` and
    everything below `/api/` (but not `/apix`). `"/*"` is `Route(pattern="", prefix=True)` and matches everything.

    A *keyed* route (an actor service's, docs/configuration.md) holds one `{key}` path segment: `"/counter/{key}"`
    is `Route(pattern="/counter/", keyed=True)` and matches `/counter/<one segment>`; `"/room/{key}/*"` also
    matches everything below it; `"/doc/{key}/text"` has `suffix="/text"`. `str(route)` gives back the TOML form.
    """

    pattern: str  # routes = ["/login"] -> "/login";  "/api/*" -> "/api";  "/*" -> "";  "/c/{key}" -> "/c/"
    prefix: bool  # True when the route ends in "/*"
    keyed: bool = False  # True when the route holds a {key} segment
    suffix: str = ""  # a keyed route's literal part after {key} (before any "/*")

    def __str__(self) -> str:
        text = f"{self.pattern}{KEY_SEGMENT}{self.suffix}" if self.keyed else self.pattern
        return f"{text}/*" if self.prefix else text

    @classmethod
    def parse(cls, text: str) -> Route:
        """Parse one route as written in `routes = [...]`.

        Args:
            text: `"/exact"`, `"/prefix/*"`, `"/*"`, or a keyed route such as `"/counter/{key}"`.

        Returns:
            The route.

        Raises:
            ValueError: the route does not start with `/`, holds `?`, `#`, whitespace or a control character, has
                a `*` anywhere but in a final `/*`, or braces anywhere but in one whole `{key}` segment. The message
                says what to write instead.
        """
        if not text.startswith("/"):
            hint = f' (did you mean "/{text}"?)' if text else ""
            raise ValueError(f'route must start with "/", got {quote(text)}{hint}')
        if "?" in text:
            raise ValueError(f'route {quote(text)} contains "?": routes match the URL path only, remove the query')
        if "#" in text:
            raise ValueError(f'route {quote(text)} contains "#": routes match the URL path only, remove the fragment')
        if any(ch.isspace() or not ch.isprintable() for ch in text):
            raise ValueError(f"route {quote(text)} contains whitespace or a control character, which a URL path cannot")
        prefix = text.endswith("/*")
        pattern = text[:-2] if prefix else text
        if "*" in pattern:
            raise ValueError(f'"*" may only end a route, as "/*" (e.g. "/api/*"), got {quote(text)}')
        if "{" not in pattern and "}" not in pattern:
            return cls(pattern=pattern, prefix=prefix)
        before, found, after = pattern.partition(KEY_SEGMENT)
        if (
            not found
            or not before.endswith("/")
            or (after and not after.startswith("/"))
            or "{" in before + after
            or "}" in before + after
        ):
            raise ValueError(
                f"route {quote(text)}: braces may only form one whole {KEY_SEGMENT} path segment, as in "
                '"/counter/{key}" or "/room/{key}/*"'
            )
        return cls(pattern=before, prefix=prefix, keyed=True, suffix=after)

    def matches(self, path: str) -> bool:
        """Whether this route serves `path`.

        Args:
            path: the request's URL path, without query string or fragment, compared byte for byte (no decoding
                or normalisation happens here).

        Returns:
            True when the route matches. Several routes may match one path; `route_table()` orders them.
        """
        if self.keyed:
            return self.key_in(path) is not None
        if not self.prefix:
            return path == self.pattern
        # The "/" boundary keeps "/api/*" from matching "/apix".
        return path == self.pattern or path.startswith(self.pattern + "/")

    def key_in(self, path: str) -> str | None:
        """A keyed route's `{key}` segment in `path` as it is written there (not decoded: it may be empty), or None
        when the route does not serve `path` (or is not keyed)."""
        if not self.keyed or not path.startswith(self.pattern):
            return None
        rest = path[len(self.pattern) :]
        slash = rest.find("/")
        key, tail = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
        suffix = self.suffix
        if tail == suffix or (self.prefix and tail.startswith(suffix + "/")):
            return key
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class DirGrant:
    """A host directory a service may use through WASI."""

    host: Path  # host = "data"  (relative to services.toml; stored absolute)
    guest: str  # guest = "/data"  (where the guest sees it)
    write: bool = False  # write = false  (read-only unless true)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceSpec:
    """One `[services.<name>]` table: what the manifest says about a service, immutable."""

    name: str  # [services.<name>]
    wasm: Path  # wasm = "build/billing.wasm"  (relative to services.toml; stored absolute)
    routes: tuple[Route, ...] = ()  # routes = ["/api/*", "/login"]
    calls: frozenset[str] = frozenset()  # calls = ["auth", "store"]  (services it may call or send to)
    instances: int = DEFAULT_INSTANCES  # instances = 4  (max pool size, 1..1024)
    mailbox: int = DEFAULT_MAILBOX  # mailbox = 64  (queued requests/messages, 1..1_000_000)
    call_timeout: float = DEFAULT_CALL_TIMEOUT  # call_timeout = 1.0  (seconds, > 0 and <= 3600)
    memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES  # memory_limit = "64MiB"  (or bytes; 64KiB..4GiB)
    on_full: str = "reject"  # on_full = "reject"  ("reject" | "wait" | "shed_oldest": a full mailbox)
    on_full_wait: float = 0.1  # on_full_wait = 0.1  (seconds a sender may wait when on_full = "wait")
    max_failures: int = 5  # max_failures = 5  (traps/timeouts within failure_window before quarantine)
    failure_window: float = 10.0  # failure_window = 10.0  (seconds)
    env: tuple[tuple[str, str], ...] = ()  # env = { LANG = "C" }  (WASI environment variables; none by default)
    dirs: tuple[DirGrant, ...] = ()  # dirs = [{ host = "data", guest = "/data", write = false }]  (WASI preopens)
    log_rate: float = DEFAULT_LOG_RATE  # log_rate = 100  (guest log lines per second, > 0 and <= 1_000_000)
    log_burst: int = DEFAULT_LOG_BURST  # log_burst = 200  (lines a guest may write at once, 1..1_000_000)
    max_sends: int = DEFAULT_MAX_SENDS  # max_sends = 1000  (sends one call or request may make, 1..1_000_000)
    # Actors (kind = "actor"): one live instance per key, durable storage per key (docs/configuration.md).
    kind: str = "service"  # kind = "service"  ("service" | "actor")
    max_live: int = DEFAULT_MAX_LIVE  # max_live = 1000  (live actor instances at most, 1..1_000_000)
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT  # idle_timeout = 60.0  (seconds before an idle actor hibernates)
    storage_limit_bytes: int = DEFAULT_STORAGE_LIMIT_BYTES  # storage_limit = "16MiB"  (per actor; 4KiB..1GiB)
    sync: str = "full"  # sync = "full"  ("full": survives power loss | "normal": survives a crash of the process)
    # WebSockets to actors (docs/stream.md).
    websocket: bool = False  # websocket = false  (accept WebSocket connections on its routes)
    stream_buffer: int = (
        DEFAULT_STREAM_BUFFER  # stream_buffer = 1000  (published messages kept per actor, 0..1_000_000)
    )
    ws_max_message: int = DEFAULT_WS_MAX_MESSAGE  # ws_max_message = "1MiB"  (a client's largest message)
    ws_max_buffered: int = DEFAULT_WS_MAX_BUFFERED  # ws_max_buffered = "4MiB"  (unsent bytes before 4008)
    ws_max_connections: int = DEFAULT_WS_MAX_CONNECTIONS  # ws_max_connections = 10000  (per actor)
    ws_idle_timeout: float = DEFAULT_WS_IDLE_TIMEOUT  # ws_idle_timeout = 600.0  (seconds without a client frame)

    @property
    def keyed(self) -> bool:
        """Whether this is an actor service (one instance and one storage per key)."""
        return self.kind == "actor"


DEFAULT_DRAIN_TIMEOUT: Final = 10.0
DEFAULT_PROBATION: Final = 10.0
DEFAULT_ROLLBACK_ERROR_RATE: Final = 0.5
DEFAULT_SLICE: Final = 0.0005  # engine.SLICE_SECONDS
MIN_SLICE: Final = 0.0001
MAX_SLICE: Final = 0.1
DEFAULT_CPU: Final = "auto"
CPU_CHOICES: Final = ("auto", "any")
MAX_CPU: Final = 4095

DEFAULT_LISTEN: Final = Address(host="127.0.0.1", port=8080)
# Not 9090: that is the Prometheus server's own default, so a daemon and a Prometheus on one host would clash. Not
# in 9100-9999 either: Prometheus' "Default port allocations" wiki list gives those to exporters and has none left
# (allocations now continue above 9999). 19090 is on no entry of that list (to be claimed there; see
# docs/configuration.md), below Linux's ephemeral ports (32768+), and easy to remember next to Prometheus' 9090.
DEFAULT_METRICS_LISTEN: Final = Address(host="127.0.0.1", port=19090)


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonSpec:
    """The `[daemon]` table. Every key is optional, so `DaemonSpec()` is the default daemon."""

    listen: Address = DEFAULT_LISTEN  # listen = "127.0.0.1:8080"
    metrics_listen: Address | None = DEFAULT_METRICS_LISTEN  # metrics_listen = "127.0.0.1:19090"  ("" -> None)
    cache_dir: Path = DEFAULT_CACHE_DIR  # cache_dir = ".micromono/cache"  (stored absolute when loaded)
    cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES  # cache_max_bytes = "1GiB"  (or bytes; at least 1MiB)
    log_format: str = DEFAULT_LOG_FORMAT  # log_format = "console"  ("console" | "json")
    log_level: str = DEFAULT_LOG_LEVEL  # log_level = "info"  ("debug" | "info" | "warning" | "error")
    log_output: str = DEFAULT_LOG_OUTPUT  # log_output = "stderr"  ("stderr" | "stdout")
    graceful_timeout: float = DEFAULT_GRACEFUL_TIMEOUT  # graceful_timeout = 10.0  (seconds, > 0 and <= 3600)
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES  # max_request_bytes = "1MiB"  (or 1048576)
    max_call_depth: int = DEFAULT_MAX_CALL_DEPTH  # max_call_depth = 16  (1..1000)
    watch: bool = True  # watch = true  (reload services when their .wasm or services.toml changes)
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT  # drain_timeout = 10.0  (seconds a replaced version may finish)
    probation: float = DEFAULT_PROBATION  # probation = 10.0  (seconds a new version is watched for rollback)
    rollback_error_rate: float = DEFAULT_ROLLBACK_ERROR_RATE  # rollback_error_rate = 0.5  (0 < rate <= 1)
    slice: float = DEFAULT_SLICE  # slice = 0.0005  (seconds a guest runs before the event loop gets its turn)
    cpu: int | str = DEFAULT_CPU  # cpu = "auto"  ("auto" | "any" | a CPU number: where the daemon runs, placement.py)
    data_dir: Path = DEFAULT_DATA_DIR  # data_dir = ".micromono/data"  (actor databases; stored absolute when loaded)
    tracing: str = DEFAULT_TRACING  # tracing = "off"  ("off" | "log" | "otlp": spans of calls, docs/tracing.md)
    otlp_endpoint: str | None = None  # otlp_endpoint = "http://127.0.0.1:4318"  (unset: OTEL_EXPORTER_OTLP_* env)
    trace_sample: float = 1.0  # trace_sample = 1.0  (0..1: the share of new traces whose spans are recorded)
    ws_max_connections: int = DEFAULT_DAEMON_WS_MAX_CONNECTIONS  # ws_max_connections = 100000  (WebSockets, in all)


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """A whole validated manifest."""

    path: Path  # the services.toml file, absolute
    daemon: DaemonSpec = field(default_factory=DaemonSpec)  # [daemon]
    services: tuple[ServiceSpec, ...]  # [services.<name>] tables, in file order

    @property
    def names(self) -> tuple[str, ...]:
        """The service names, in file order."""
        return tuple(spec.name for spec in self.services)

    def service(self, name: str) -> ServiceSpec:
        """The spec of service `name`.

        Raises:
            KeyError: no service has that name.
        """
        for spec in self.services:
            if spec.name == name:
                return spec
        raise KeyError(name)


def route_table(config: Config) -> list[tuple[Route, str]]:
    """Every route with the name of the service that serves it, ordered so that the first match wins.

    Exact routes come first (in file order), then prefix and keyed routes by the length of their literal start,
    longest first, so `"/api/admin/*"` beats `"/api/*"` and `"/*"` comes last. The parser has already refused
    the same route in two services.

    Args:
        config: a validated config.

    Returns:
        `(route, service_name)` pairs; the caller picks the first whose `route.matches(path)`.
    """
    entries = [(route, spec.name) for spec in config.services for route in spec.routes]
    # sorted() is stable, so equal keys keep file order.
    return sorted(
        entries,
        key=lambda entry: (0, 0) if not entry[0].prefix and not entry[0].keyed else (1, -len(entry[0].pattern)),
    )
