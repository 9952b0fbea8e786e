"""The `services.toml` manifest, version 1: frozen spec dataclasses and the strict parser that builds them.

This module owns the manifest schema, its defaults and every message a user sees about it (docs/configuration.md
is the reference). `load_config()` is pure: it reads one file and touches nothing else. It must not check that
`.wasm` files exist, compile modules, bind sockets, configure logging or exit the process; `Daemon.startup()` does
those (STYLE rule 11). The types here say what the TOML says and nothing more. A loaded, running service is
`service.Service` (rule 7), and reload compares these specs, never live objects.

The parser is hand-written so that it controls its messages. It rejects unknown keys everywhere, checks types
without letting Python's `bool`-is-an-`int` slip through, and collects every problem into one `ConfigError`.
Problems come in file order: the `version` check first, then each table's keys as written, then its missing
required keys.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Final

from micromono.errors import ConfigError

__all__ = [
    "CONFIG_VERSION",
    "DEFAULT_CACHE_DIR",
    "DEFAULT_CACHE_MAX_BYTES",
    "DEFAULT_CALL_TIMEOUT",
    "DEFAULT_GRACEFUL_TIMEOUT",
    "DEFAULT_INSTANCES",
    "DEFAULT_LISTEN",
    "DEFAULT_LOG_BURST",
    "DEFAULT_LOG_FORMAT",
    "DEFAULT_LOG_LEVEL",
    "DEFAULT_LOG_RATE",
    "DEFAULT_MAILBOX",
    "DEFAULT_MAX_CALL_DEPTH",
    "DEFAULT_MAX_REQUEST_BYTES",
    "DEFAULT_MEMORY_LIMIT_BYTES",
    "DEFAULT_METRICS_LISTEN",
    "DEFAULT_MAX_SENDS",
    "DEFAULT_SLICE",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "MAX_CALL_DEPTH",
    "MAX_CALL_TIMEOUT",
    "MAX_GRACEFUL_TIMEOUT",
    "MAX_INSTANCES",
    "MAX_LOG_BURST",
    "MAX_LOG_RATE",
    "MAX_MAILBOX",
    "MAX_MEMORY_LIMIT_BYTES",
    "MIN_MEMORY_LIMIT_BYTES",
    "Address",
    "Config",
    "ConfigError",
    "DaemonSpec",
    "GiB",
    "KiB",
    "MiB",
    "Route",
    "ServiceSpec",
    "load_config",
    "parse_config",
    "route_table",
]

# Size units. Sizes in the manifest use only these binary units: "64MB" is refused rather than guessed at.
KiB: Final = 1024
MiB: Final = 1024 * KiB
GiB: Final = 1024 * MiB

CONFIG_VERSION: Final = 1
ON_FULL_POLICIES: Final = ("reject", "wait", "shed_oldest")
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
LOG_FORMATS: Final = ("console", "json")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")

# Defaults (DEFAULT_LISTEN and DEFAULT_METRICS_LISTEN follow the Address class).
DEFAULT_CACHE_DIR: Final = Path(".micromono/cache")  # relative to the manifest's directory
DEFAULT_CACHE_MAX_BYTES: Final = 1 << 30  # the compile cache's bound on disk
MIN_CACHE_MAX_BYTES: Final = 1 << 20
DEFAULT_LOG_FORMAT: Final = "console"
DEFAULT_LOG_LEVEL: Final = "info"
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

_SERVICE_NAME: Final = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL: Final = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME: Final = re.compile(rf"{_LABEL}(\.{_LABEL})*")
_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
_SIZE: Final = re.compile(r"([0-9]+) ?([A-Za-z]*)")
_SIZE_UNITS: Final = {"B": 1, "KiB": KiB, "MiB": MiB, "GiB": GiB}
_UNIT_LIST: Final = "B, KiB, MiB or GiB"


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
                raise ValueError(f'missing "]" in {_q(text)}: write IPv6 addresses as "[::1]:8080"')
            if not rest.startswith(":"):
                raise ValueError(f'expected ":port" after "]" in {_q(text)}, as in "[::1]:8080"')
            port_text = rest[1:]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(f"{_q(host)} is not an IPv6 address, in {_q(text)}") from None
        else:
            host, colon, port_text = text.rpartition(":")
            if not colon:
                raise ValueError(f'expected "host:port", such as "127.0.0.1:8080" or "[::1]:8080", got {_q(text)}')
            if ":" in host:
                raise ValueError(f'IPv6 addresses need brackets: write "[{host}]:{port_text}", not {_q(text)}')
            if not host:
                raise ValueError(
                    f'missing host in {_q(text)}: write "127.0.0.1{text}" (this machine only) '
                    f'or "0.0.0.0{text}" (all interfaces)'
                )
            if re.fullmatch(r"[0-9.]+", host):
                try:
                    ipaddress.IPv4Address(host)
                except ValueError:
                    raise ValueError(f"{_q(host)} is not an IPv4 address, in {_q(text)}") from None
            elif not _HOSTNAME.fullmatch(host):
                raise ValueError(f"{_q(host)} is not a valid host name or IP address, in {_q(text)}")
        if not re.fullmatch(r"[0-9]{1,5}", port_text) or int(port_text) > 65535:
            raise ValueError(f'expected a port 0..65535 after the last ":", got {_q(port_text)} in {_q(text)}')
        return cls(host=host, port=int(port_text))


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """One entry of a service's `routes`, in the form the router matches.

    `"/login"` matches exactly `/login`. `"/api/*"` is `Route(pattern="/api", prefix=True)` and matches `/api` and
    everything below `/api/` (but not `/apix`). `"/*"` is `Route(pattern="", prefix=True)` and matches everything.
    `str(route)` gives back the TOML form.
    """

    pattern: str  # routes = ["/login"] -> "/login";  "/api/*" -> "/api";  "/*" -> ""
    prefix: bool  # True when the route ends in "/*"

    def __str__(self) -> str:
        return f"{self.pattern}/*" if self.prefix else self.pattern

    @classmethod
    def parse(cls, text: str) -> Route:
        """Parse one route as written in `routes = [...]`.

        Args:
            text: `"/exact"`, `"/prefix/*"` or `"/*"`.

        Returns:
            The route.

        Raises:
            ValueError: the route does not start with `/`, holds `?`, `#`, whitespace or a control character, or
                has a `*` anywhere but in a final `/*`. The message says what to write instead.
        """
        if not text.startswith("/"):
            hint = f' (did you mean "/{text}"?)' if text else ""
            raise ValueError(f'route must start with "/", got {_q(text)}{hint}')
        if "?" in text:
            raise ValueError(f'route {_q(text)} contains "?": routes match the URL path only, remove the query')
        if "#" in text:
            raise ValueError(f'route {_q(text)} contains "#": routes match the URL path only, remove the fragment')
        if any(ch.isspace() or not ch.isprintable() for ch in text):
            raise ValueError(f"route {_q(text)} contains whitespace or a control character, which a URL path cannot")
        prefix = text.endswith("/*")
        pattern = text[:-2] if prefix else text
        if "*" in pattern:
            raise ValueError(f'"*" may only end a route, as "/*" (e.g. "/api/*"), got {_q(text)}')
        return cls(pattern=pattern, prefix=prefix)

    def matches(self, path: str) -> bool:
        """Whether this route serves `path`.

        Args:
            path: the request's URL path, without query string or fragment, compared byte for byte (no decoding
                or normalisation happens here).

        Returns:
            True when the route matches. Several routes may match one path; `route_table()` orders them.
        """
        if not self.prefix:
            return path == self.pattern
        # The "/" boundary keeps "/api/*" from matching "/apix".
        return path == self.pattern or path.startswith(self.pattern + "/")


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
DEFAULT_METRICS_LISTEN: Final = Address(host="127.0.0.1", port=9090)


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonSpec:
    """The `[daemon]` table. Every key is optional, so `DaemonSpec()` is the default daemon."""

    listen: Address = DEFAULT_LISTEN  # listen = "127.0.0.1:8080"
    metrics_listen: Address | None = DEFAULT_METRICS_LISTEN  # metrics_listen = "127.0.0.1:9090"  ("" -> None)
    cache_dir: Path = DEFAULT_CACHE_DIR  # cache_dir = ".micromono/cache"  (stored absolute when loaded)
    cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES  # cache_max_bytes = "1GiB"  (or bytes; at least 1MiB)
    log_format: str = DEFAULT_LOG_FORMAT  # log_format = "console"  ("console" | "json")
    log_level: str = DEFAULT_LOG_LEVEL  # log_level = "info"  ("debug" | "info" | "warning" | "error")
    graceful_timeout: float = DEFAULT_GRACEFUL_TIMEOUT  # graceful_timeout = 10.0  (seconds, > 0 and <= 3600)
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES  # max_request_bytes = "1MiB"  (or 1048576)
    max_call_depth: int = DEFAULT_MAX_CALL_DEPTH  # max_call_depth = 16  (1..1000)
    watch: bool = True  # watch = true  (reload services when their .wasm or services.toml changes)
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT  # drain_timeout = 10.0  (seconds a replaced version may finish)
    probation: float = DEFAULT_PROBATION  # probation = 10.0  (seconds a new version is watched for rollback)
    rollback_error_rate: float = DEFAULT_ROLLBACK_ERROR_RATE  # rollback_error_rate = 0.5  (0 < rate <= 1)
    slice: float = DEFAULT_SLICE  # slice = 0.0005  (seconds a guest runs before the event loop gets its turn)
    cpu: int | str = DEFAULT_CPU  # cpu = "auto"  ("auto" | "any" | a CPU number: where the daemon runs, placement.py)


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


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate one `services.toml`. Reads that file and nothing else.

    Args:
        path: the manifest. Relative paths inside it (`wasm`, `cache_dir`) are resolved against its directory.

    Returns:
        The validated config, with every path absolute.

    Raises:
        ConfigError: the file is missing, unreadable, not UTF-8, not TOML, or breaks the schema. It carries
            every problem found, and its message starts with `path` as given.
    """
    shown = os.fspath(path)
    file = _absolute(Path.cwd(), shown)
    try:
        data = file.read_bytes()
    except FileNotFoundError as exc:
        raise _file_error(shown, f"no such file {file}: create it, or pass the path of your services.toml") from exc
    except IsADirectoryError as exc:
        raise _file_error(shown, f"{file} is a directory: pass the path of the services.toml inside it") from exc
    except PermissionError as exc:
        raise _file_error(shown, f"permission denied reading {file}: make it readable by this user") from exc
    except OSError as exc:
        raise _file_error(shown, f"cannot read {file}: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8-sig")  # accept (and drop) the BOM some Windows editors write
    except UnicodeDecodeError as exc:
        message = f"not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start}): save the file as UTF-8"
        raise _file_error(shown, message) from exc
    return parse_config(text, path)


def parse_config(text: str, path: str | os.PathLike[str]) -> Config:
    """Validate manifest text as if it had been read from `path`. Reads no file.

    Args:
        text: the TOML source.
        path: where it came from: the base for relative paths and the name shown in errors.

    Returns:
        The validated config.

    Raises:
        ConfigError: the text is not TOML (the message keeps tomllib's line and column), or breaks the schema.
    """
    shown = os.fspath(path)
    file = _absolute(Path.cwd(), shown)
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _file_error(shown, f"invalid TOML: {exc}") from exc
    parser = _Parser(base_dir=file.parent)
    result = parser.document(document)
    if parser.problems or result is None:
        raise ConfigError(shown, parser.problems)
    daemon, services = result
    return Config(path=file, daemon=daemon, services=services)


def route_table(config: Config) -> list[tuple[Route, str]]:
    """Every route with the name of the service that serves it, ordered so that the first match wins.

    Exact routes come first (in file order), then prefix routes longest first, so `"/api/admin/*"` beats
    `"/api/*"` and `"/*"` comes last. The parser has already refused the same route in two services.

    Args:
        config: a validated config.

    Returns:
        `(route, service_name)` pairs; the caller picks the first whose `route.matches(path)`.
    """
    entries = [(route, spec.name) for spec in config.services for route in spec.routes]
    # sorted() is stable, so equal keys keep file order.
    return sorted(entries, key=lambda entry: (0, 0) if not entry[0].prefix else (1, -len(entry[0].pattern)))


# --- the parser -------------------------------------------------------------------------------------------------


class _Invalid(Exception):
    """A value was rejected. Its problems are already recorded on the parser."""


_Reader = Callable[[str, Any], Any]

_NO_SERVICES: Final = 'at least one service is required: add a [services.<name>] table with wasm = "..."'
# TOML keys whose dataclass field is named differently (units go in field names, STYLE rule 22).
_FIELD_NAMES: Final = {"memory_limit": "memory_limit_bytes"}


class _Parser:
    """Walks the TOML document once, recording problems instead of stopping at the first."""

    def __init__(self, *, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.problems: list[tuple[str, str]] = []
        self.service_names: list[str] = []  # every [services.*] key, for did-you-mean in `calls`
        self.service_set: frozenset[str] = frozenset()  # the same, for `calls` lookups (a list is O(n) each)
        self.route_owner: dict[Route, str] = {}  # claimed routes, to name both services on a clash

    def reject(self, key: str, message: str) -> _Invalid:
        self.problems.append((key, message))
        return _Invalid()

    def document(self, doc: dict[str, Any]) -> tuple[DaemonSpec, tuple[ServiceSpec, ...]] | None:
        version = doc.get("version")
        if "version" not in doc:
            self.reject("version", f"missing required key: add version = {CONFIG_VERSION} at the top of the file")
        elif isinstance(version, bool) or not isinstance(version, int):
            self.reject("version", f"expected an integer (version = {CONFIG_VERSION}), got {_describe(version)}")
        elif version != CONFIG_VERSION:
            # Another version means another schema: checking the rest against this one would only add noise.
            self.reject("version", f"unsupported version {version}: this micromono reads version {CONFIG_VERSION}")
            return None
        readers: dict[str, _Reader] = {
            "version": lambda key, value: value,  # checked above
            "daemon": self.daemon,
            "services": self.services,
        }
        try:
            values = self.table("", doc, readers, required={"services": _NO_SERVICES})
        except _Invalid:
            return None
        default_daemon = DaemonSpec(cache_dir=_absolute(self.base_dir, str(DEFAULT_CACHE_DIR)))
        return values.get("daemon", default_daemon), values["services"]

    def table(
        self,
        where: str,
        table: Mapping[str, Any],
        readers: Mapping[str, _Reader],
        *,
        required: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Read `table` key by key in file order; return `{field_name: value}` or raise `_Invalid`.

        `readers` maps each known TOML key to its reader; `required` maps each required key to the message shown
        when it is missing.
        """
        values: dict[str, Any] = {}
        ok = True
        for name, value in table.items():
            key = _join(where, name)
            if name not in readers:
                self.reject(key, _unknown_key(name, value, readers, top_level=not where))
                ok = False
                continue
            try:
                values[_FIELD_NAMES.get(name, name)] = readers[name](key, value)
            except _Invalid:
                ok = False
        for name, hint in (required or {}).items():
            if name not in table:
                self.reject(_join(where, name), hint)
                ok = False
        if not ok:
            raise _Invalid
        return values

    def expect_table(self, key: str, value: object) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.reject(key, f"expected a table [{key}], got {_describe(value)}")
        return value

    # -- [daemon] --

    def daemon(self, key: str, value: object) -> DaemonSpec:
        readers: dict[str, _Reader] = {
            "listen": self.listen,
            "metrics_listen": self.metrics_listen,
            "cache_dir": lambda k, v: self.path(k, v, '".micromono/cache"'),
            "cache_max_bytes": lambda k, v: self.size(k, v, lower=MIN_CACHE_MAX_BYTES, upper=None),
            "log_format": lambda k, v: self.choice(k, v, LOG_FORMATS),
            "log_level": lambda k, v: self.choice(k, v, LOG_LEVELS),
            "graceful_timeout": lambda k, v: self.seconds(k, v, upper=MAX_GRACEFUL_TIMEOUT),
            "max_request_bytes": lambda k, v: self.size(k, v, lower=1, upper=None),
            "max_call_depth": lambda k, v: self.integer(k, v, 1, MAX_CALL_DEPTH),
            "watch": self.boolean,
            "drain_timeout": lambda k, v: self.seconds(k, v, upper=MAX_GRACEFUL_TIMEOUT),
            "probation": lambda k, v: self.seconds(k, v, upper=MAX_GRACEFUL_TIMEOUT),
            "rollback_error_rate": self.fraction,
            "slice": self.slice,
            "cpu": self.cpu,
        }
        values = self.table(key, self.expect_table(key, value), readers)
        values.setdefault("cache_dir", _absolute(self.base_dir, str(DEFAULT_CACHE_DIR)))
        spec = DaemonSpec(**values)
        if spec.metrics_listen is not None and spec.metrics_listen == spec.listen and spec.listen.port != 0:
            raise self.reject(
                _join(key, "metrics_listen"),
                f'same address as listen ("{spec.listen}"): pick another port, or "" to disable metrics',
            )
        return spec

    def listen(self, key: str, value: object) -> Address:
        if not isinstance(value, str):
            hint = f' (write "127.0.0.1:{value}")' if isinstance(value, int) and not isinstance(value, bool) else ""
            raise self.reject(key, f'expected a string "host:port", got {_describe(value)}{hint}')
        try:
            return Address.parse(value)
        except ValueError as exc:
            raise self.reject(key, str(exc)) from None

    def metrics_listen(self, key: str, value: object) -> Address | None:
        if value == "":
            return None  # "" disables the metrics listener
        return self.listen(key, value)

    # -- [services.<name>] --

    def services(self, key: str, value: object) -> tuple[ServiceSpec, ...]:
        if not isinstance(value, dict):
            raise self.reject(key, f"expected a table of [services.<name>] tables, got {_describe(value)}")
        if not value:
            raise self.reject(key, _NO_SERVICES)
        self.service_names = list(value)
        self.service_set = frozenset(self.service_names)
        specs: list[ServiceSpec] = []
        ok = True
        for name, raw in value.items():
            service_key = _join(key, name)
            if not _SERVICE_NAME.fullmatch(name):
                ok = False
                hint = f' (did you mean "{name.lower()}"?)' if _SERVICE_NAME.fullmatch(name.lower()) else ""
                self.reject(
                    service_key,
                    f"invalid service name {_q(name)}{hint}: use a lowercase letter, then up to 62 lowercase "
                    'letters, digits, "_" or "-"',
                )
            try:
                specs.append(self.service(service_key, name, raw))
            except _Invalid:
                ok = False
        if not ok:
            raise _Invalid
        return tuple(specs)

    def service(self, key: str, name: str, value: object) -> ServiceSpec:
        table = self.expect_table(key, value)
        readers: dict[str, _Reader] = {
            "wasm": lambda k, v: self.path(k, v, f'"build/{name}.wasm"'),
            "routes": lambda k, v: self.routes(k, v, name),
            "calls": self.calls,
            "instances": lambda k, v: self.integer(k, v, 1, MAX_INSTANCES),
            "mailbox": lambda k, v: self.integer(k, v, 1, MAX_MAILBOX),
            "call_timeout": lambda k, v: self.seconds(k, v, upper=MAX_CALL_TIMEOUT),
            "memory_limit": lambda k, v: self.size(k, v, lower=MIN_MEMORY_LIMIT_BYTES, upper=MAX_MEMORY_LIMIT_BYTES),
            "on_full": lambda k, v: self.choice(k, v, ON_FULL_POLICIES),
            "on_full_wait": lambda k, v: self.seconds(k, v, upper=MAX_CALL_TIMEOUT),
            "max_failures": lambda k, v: self.integer(k, v, 1, 1_000_000),
            "failure_window": lambda k, v: self.seconds(k, v, upper=MAX_GRACEFUL_TIMEOUT),
            "env": self.env,
            "dirs": self.dirs,
            "log_rate": self.lines_per_second,
            "log_burst": lambda k, v: self.integer(k, v, 1, MAX_LOG_BURST),
            "max_sends": lambda k, v: self.integer(k, v, 1, 1_000_000),
        }
        missing_wasm = f'missing required key: add wasm = "build/{name}.wasm"'
        values = self.table(key, table, readers, required={"wasm": missing_wasm})
        return ServiceSpec(name=name, **values)

    def env(self, key: str, value: object) -> tuple[tuple[str, str], ...]:
        if not isinstance(value, dict):
            raise self.reject(key, f'expected a table of strings such as {{ LANG = "C" }}, got {_describe(value)}')
        pairs: list[tuple[str, str]] = []
        ok = True
        for name, item in value.items():
            if not _ENV_NAME.fullmatch(name):
                self.reject(
                    _join(key, name), "invalid variable name: use letters, digits and _, not starting with a digit"
                )
                ok = False
            elif not isinstance(item, str) or "\0" in item:
                self.reject(_join(key, name), f"expected a string without NUL, got {_describe(item)}")
                ok = False
            else:
                pairs.append((name, item))
        if not ok:
            raise _Invalid
        return tuple(pairs)

    def dirs(self, key: str, value: object) -> tuple[DirGrant, ...]:
        example = '[{ host = "data", guest = "/data", write = false }]'
        if not isinstance(value, list):
            raise self.reject(key, f"expected an array of tables such as {example}, got {_describe(value)}")
        grants: list[DirGrant] = []
        ok = True
        for i, item in enumerate(value):
            where = f"{key}[{i}]"
            try:
                table = self.expect_table(where, item)
                fields = self.table(
                    where,
                    table,
                    {
                        "host": lambda k, v: self.path(k, v, '"data"'),
                        "guest": self.guest_path,
                        "write": self.boolean,
                    },
                    required={
                        "host": 'missing required key: add host = "data"',
                        "guest": 'missing required key: add guest = "/data"',
                    },
                )
                grants.append(DirGrant(**fields))
            except _Invalid:
                ok = False
        if not ok:
            raise _Invalid
        return tuple(grants)

    def guest_path(self, key: str, value: object) -> str:
        if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
            raise self.reject(key, f'expected an absolute guest path such as "/data", got {_describe(value)}')
        return value

    def routes(self, key: str, value: object, service: str) -> tuple[Route, ...]:
        items = self.array(key, value, "routes", '"/api/*"')
        routes: list[Route] = []
        first_index: dict[Route, int] = {}
        ok = True
        for index, item in enumerate(items):
            item_key = f"{key}[{index}]"
            if not isinstance(item, str):
                ok = False
                self.reject(item_key, f'expected a string route such as "/api/*", got {_describe(item)}')
                continue
            try:
                route = Route.parse(item)
            except ValueError as exc:
                ok = False
                self.reject(item_key, str(exc))
                continue
            if route in first_index:
                ok = False
                self.reject(item_key, f"duplicate route {_q(item)} (also routes[{first_index[route]}]): remove one")
                continue
            first_index[route] = index
            owner = self.route_owner.setdefault(route, service)
            if owner != service:
                ok = False
                self.reject(
                    item_key,
                    f'route {_q(item)} is also served by service "{owner}": '
                    f'a route belongs to one service, remove it from "{owner}" or "{service}"',
                )
                continue
            routes.append(route)
        if not ok:
            raise _Invalid
        return tuple(routes)

    def calls(self, key: str, value: object) -> frozenset[str]:
        items = self.array(key, value, "calls", '"auth"')
        first_index: dict[str, int] = {}
        ok = True
        for index, item in enumerate(items):
            item_key = f"{key}[{index}]"
            if not isinstance(item, str):
                ok = False
                self.reject(item_key, f"expected a string (a service name), got {_describe(item)}")
            elif item in first_index:
                ok = False
                self.reject(item_key, f"duplicate entry {_q(item)} (also calls[{first_index[item]}]): remove one")
            elif item not in self.service_set:
                ok = False
                first_index[item] = index
                suggestion = _did_you_mean(item, self.service_names)
                known = ", ".join(_q(name) for name in self.service_names)
                self.reject(
                    item_key,
                    f"unknown service {_q(item)}{suggestion}"
                    if suggestion
                    else f"unknown service {_q(item)}: calls may only name services in this manifest ({known})",
                )
            else:
                first_index[item] = index
        if not ok:
            raise _Invalid
        return frozenset(first_index)

    # -- scalars --

    def array(self, key: str, value: object, name: str, example: str) -> list[Any]:
        if not isinstance(value, list):
            hint = f" (write {name} = [{_q(value)}])" if isinstance(value, str) else f" such as [{example}]"
            raise self.reject(key, f"expected an array of strings{hint}, got {_describe(value)}")
        return value

    def path(self, key: str, value: object, example: str) -> Path:
        if not isinstance(value, str):
            raise self.reject(key, f"expected a string path such as {example}, got {_describe(value)}")
        if not value or "\0" in value:
            raise self.reject(key, f"expected a path such as {example}, got {_q(value)}")
        return _absolute(self.base_dir, value)

    def choice(self, key: str, value: object, choices: tuple[str, ...]) -> str:
        options = _either(choices)
        if not isinstance(value, str):
            raise self.reject(key, f"expected a string, {options}, got {_describe(value)}")
        if value not in choices:
            raise self.reject(key, f"expected {options}, got {_q(value)}{_did_you_mean(value, choices)}")
        return value

    def cpu(self, key: str, value: object) -> int | str:
        expected = f'expected "auto", "any" or a CPU number 0..{MAX_CPU}'
        if isinstance(value, str):
            if value in CPU_CHOICES:
                return value
            raise self.reject(key, f"{expected}, got {_q(value)}{_did_you_mean(value, CPU_CHOICES)}")
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_CPU:
            shown = value if isinstance(value, int) and not isinstance(value, bool) else _describe(value)
            raise self.reject(key, f"{expected}, got {shown}")
        return value

    def boolean(self, key: str, value: object) -> bool:
        if not isinstance(value, bool):
            raise self.reject(key, f"expected true or false, got {_describe(value)}")
        return value

    def fraction(self, key: str, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            shown = _describe(value) if isinstance(value, bool) or not isinstance(value, int | float) else _toml(value)
            raise self.reject(key, f"expected a number > 0 and <= 1 (1 disables rollback), got {shown}")
        return float(value)

    def integer(self, key: str, value: object, lower: int, upper: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.reject(key, f"expected an integer {lower}..{upper}, got {_describe(value)}")
        if value < lower:
            raise self.reject(key, f"expected an integer >= {lower}, got {value}")
        if value > upper:
            raise self.reject(key, f"expected an integer <= {upper}, got {value}")
        return value

    def slice(self, key: str, value: object) -> float:
        seconds = self.seconds(key, value, upper=MAX_SLICE)
        if seconds < MIN_SLICE:
            raise self.reject(key, f"expected a number of seconds >= {MIN_SLICE:g}, got {_toml(value)}")
        return seconds

    def seconds(self, key: str, value: object, *, upper: float) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.reject(key, f"expected a number of seconds, got {_describe(value)}")
        try:
            seconds = float(value)
        except OverflowError:  # a TOML integer too large for a float
            seconds = math.inf
        if not math.isfinite(seconds):
            raise self.reject(key, f"expected a finite number of seconds, got {_toml(value)}")
        if seconds <= 0:
            raise self.reject(key, f"expected a number of seconds > 0, got {_toml(value)}")
        if seconds > upper:
            raise self.reject(key, f"expected a number of seconds <= {upper:g}, got {_toml(value)}")
        return seconds

    def lines_per_second(self, key: str, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.reject(key, f"expected a number of lines per second, got {_describe(value)}")
        try:
            rate = float(value)
        except OverflowError:  # a TOML integer too large for a float
            rate = math.inf
        if math.isnan(rate):
            raise self.reject(key, f"expected a number of lines per second, got {_toml(value)}")
        if rate <= 0:
            # 0 is not "unlimited": an unbounded guest log is what this setting exists to prevent.
            raise self.reject(
                key,
                f"expected a number of lines per second > 0, got {_toml(value)} "
                f"(there is no unlimited: {MAX_LOG_RATE:.0f} lets nearly everything through)",
            )
        if rate > MAX_LOG_RATE:
            raise self.reject(key, f"expected a number of lines per second <= {MAX_LOG_RATE:.0f}, got {_toml(value)}")
        return rate

    def size(self, key: str, value: object, *, lower: int, upper: int | None) -> int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise self.reject(
                key,
                f'expected a size: an integer number of bytes or a string such as "64MiB" '
                f"(units {_UNIT_LIST}), got {_describe(value)}",
            )
        try:
            size = _parse_size(value) if isinstance(value, str) else value
        except ValueError as exc:
            raise self.reject(key, str(exc)) from None
        shown = f"{_q(value)} ({size} bytes)" if isinstance(value, str) else str(value)
        if size < lower:
            raise self.reject(key, f"expected a size >= {_size_text(lower)}, got {shown}")
        if upper is not None and size > upper:
            raise self.reject(key, f"expected a size <= {_size_text(upper)}, got {shown}")
        return size


# --- helpers ----------------------------------------------------------------------------------------------------


def _file_error(shown: str, message: str) -> ConfigError:
    return ConfigError(shown, [("", message)])


def _absolute(base_dir: Path, path: str) -> Path:
    # Lexical on purpose (no Path.resolve()): resolving symlinks would touch the filesystem, and `load_config`
    # reads exactly one file. "~" is not expanded.
    return Path(os.path.normpath(base_dir / path))


def _parse_size(text: str) -> int:
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f'expected a size such as "64MiB" (an integer and a unit: {_UNIT_LIST}), got {_q(text)}')
    number, unit = int(match[1]), match[2]
    if unit in _SIZE_UNITS:
        return number * _SIZE_UNITS[unit]
    if not unit:
        raise ValueError(f"missing unit in {_q(text)}: write {number} (an integer, in bytes) or add {_UNIT_LIST}")
    for known in _SIZE_UNITS:
        if unit.lower() == known.lower():
            raise ValueError(
                f'unit {_q(unit)} is not accepted (did you mean "{number}{known}"?): units are case-sensitive'
            )
    binary = {"k": "KiB", "m": "MiB", "g": "GiB"}.get(unit[0].lower())
    if binary is not None and unit.lower() in ("k", "kb", "m", "mb", "g", "gb"):
        raise ValueError(
            f'unit {_q(unit)} is not accepted: sizes use {_UNIT_LIST} (powers of 1024), such as "{number}{binary}"'
        )
    raise ValueError(f"unknown unit {_q(unit)} in {_q(text)}: use {_UNIT_LIST}")


def _size_text(size: int) -> str:
    for unit, factor in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit} ({size} bytes)"
    return f"{size} byte" if size == 1 else f"{size} bytes"


def _unknown_key(name: str, value: object, readers: Iterable[str], *, top_level: bool) -> str:
    valid = list(readers)
    if top_level and isinstance(value, dict) and "wasm" in value:
        return f"unknown key (did you mean [services.{name}]?)"
    suggestion = _did_you_mean(name, valid)
    if suggestion:
        return f"unknown key{suggestion}"
    return f"unknown key; valid keys here: {', '.join(valid)}"


def _did_you_mean(word: str, candidates: Iterable[str]) -> str:
    options = list(candidates)
    folded = [option for option in options if option.lower() == word.lower()]
    close = folded or difflib.get_close_matches(word, options, n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _either(choices: tuple[str, ...]) -> str:
    quoted = [_q(choice) for choice in choices]
    return f"{quoted[0]} or {quoted[1]}" if len(quoted) == 2 else f"one of {', '.join(quoted)}"


def _join(where: str, name: str) -> str:
    part = name if _BARE_KEY.fullmatch(name) else _q(name)
    return f"{where}.{part}" if where else part


def _q(value: object) -> str:
    """Quote text the way TOML writes a basic string; long values are cut short."""
    return json.dumps(_cut(str(value)), ensure_ascii=False)


def _cut(text: str) -> str:
    return text[:57] + "..." if len(text) > 60 else text


def _toml(value: object) -> str:
    """A scalar as TOML would write it, cut short when long."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _q(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return _cut(repr(value))


def _type_name(value: object) -> str:
    # bool first: it is an int subclass.
    for kind, name in (
        (bool, "boolean"),
        (int, "integer"),
        (float, "float"),
        (str, "string"),
        (list, "array"),
        (dict, "table"),
        (datetime, "datetime"),  # before date: datetime is a date subclass
        (date, "date"),
        (time, "time"),
    ):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _describe(value: object) -> str:
    """`boolean true`, `string "4"`, `array`: the TOML type, plus the value when it is short."""
    name = _type_name(value)
    return name if isinstance(value, list | dict) else f"{name} {_toml(value)}"
