"""The strict, hand-written parser of `services.toml`: TOML text in, a validated `Config` or one `ConfigError` out.

Owns the schema walk: which keys each table holds, which are required, what an unknown key might have meant, and
the checks that span keys (a route claimed by two services, `calls` naming a service that does not exist,
`metrics_listen` equal to `listen`). It rejects unknown keys everywhere and collects every problem into one
`ConfigError`, in file order: the `version` check first, then each table's keys as written, then its missing
required keys. The per-value checks are `readers.py`'s.

`load_config()` is pure: it reads one file and touches nothing else (STYLE rule 11). It must not check that
`.wasm` files exist, compile modules, bind sockets, configure logging or exit the process; `Daemon.startup()`
does those.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from micromono.errors import ConfigError

from .readers import Invalid, ValueReader, absolute_path
from .spec import (
    CONFIG_VERSION,
    DEFAULT_CACHE_DIR,
    DEFAULT_DATA_DIR,
    LOG_FORMATS,
    LOG_LEVELS,
    LOG_OUTPUTS,
    MAX_CALL_DEPTH,
    MAX_CALL_TIMEOUT,
    MAX_GRACEFUL_TIMEOUT,
    MAX_IDLE_TIMEOUT,
    MAX_INSTANCES,
    MAX_LIVE,
    MAX_LOG_BURST,
    MAX_MAILBOX,
    MAX_MEMORY_LIMIT_BYTES,
    MAX_STORAGE_LIMIT_BYTES,
    MIN_CACHE_MAX_BYTES,
    MIN_MEMORY_LIMIT_BYTES,
    MIN_STORAGE_LIMIT_BYTES,
    ON_FULL_POLICIES,
    SERVICE_KINDS,
    SYNC_MODES,
    TRACING_MODES,
    Address,
    Config,
    DaemonSpec,
    DirGrant,
    Route,
    ServiceSpec,
    service_name_problem,
)
from .text import KiB, MiB, describe, did_you_mean, join_key, quote

__all__ = ["load_config", "parse_config"]

_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


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
    file = absolute_path(Path.cwd(), shown)
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
    file = absolute_path(Path.cwd(), shown)
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


# --- the schema walk ------------------------------------------------------------------------------------------


_Reader = Callable[[str, Any], Any]

_NO_SERVICES: Final = 'at least one service is required: add a [services.<name>] table with wasm = "..."'
# TOML keys whose dataclass field is named differently (units go in field names, STYLE rule 22).
_FIELD_NAMES: Final = {"memory_limit": "memory_limit_bytes", "storage_limit": "storage_limit_bytes"}
#: The largest WebSocket message a service may allow (the guest gets it whole, like a request).
MAX_WS_MESSAGE: Final = 64 * MiB
#: Keys that only an actor service (kind = "actor") takes.
_ACTOR_KEYS: Final = (
    "max_live", "idle_timeout", "storage_limit", "sync", "websocket", "stream_buffer", "ws_max_message",
    "ws_max_buffered", "ws_max_connections", "ws_idle_timeout",
)  # fmt: skip


class _Parser(ValueReader):
    """Walks the TOML document once, recording problems instead of stopping at the first."""

    def __init__(self, *, base_dir: Path) -> None:
        super().__init__(base_dir=base_dir)
        self.service_names: list[str] = []  # every [services.*] key, for did-you-mean in `calls`
        self.service_set: frozenset[str] = frozenset()  # the same, for `calls` lookups (a list is O(n) each)
        self.route_owner: dict[Route, str] = {}  # claimed routes, to name both services on a clash

    def document(self, doc: dict[str, Any]) -> tuple[DaemonSpec, tuple[ServiceSpec, ...]] | None:
        version = doc.get("version")
        if "version" not in doc:
            self.reject("version", f"missing required key: add version = {CONFIG_VERSION} at the top of the file")
        elif isinstance(version, bool) or not isinstance(version, int):
            self.reject("version", f"expected an integer (version = {CONFIG_VERSION}), got {describe(version)}")
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
        except Invalid:
            return None
        default_daemon = DaemonSpec(
            cache_dir=absolute_path(self.base_dir, str(DEFAULT_CACHE_DIR)),
            data_dir=absolute_path(self.base_dir, str(DEFAULT_DATA_DIR)),
        )
        return values.get("daemon", default_daemon), values["services"]

    def table(
        self,
        where: str,
        table: Mapping[str, Any],
        readers: Mapping[str, _Reader],
        *,
        required: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Read `table` key by key in file order; return `{field_name: value}` or raise `Invalid`.

        `readers` maps each known TOML key to its reader; `required` maps each required key to the message shown
        when it is missing.
        """
        values: dict[str, Any] = {}
        ok = True
        for name, value in table.items():
            key = join_key(where, name)
            if name not in readers:
                self.reject(key, _unknown_key(name, value, readers, top_level=not where))
                ok = False
                continue
            try:
                values[_FIELD_NAMES.get(name, name)] = readers[name](key, value)
            except Invalid:
                ok = False
        for name, hint in (required or {}).items():
            if name not in table:
                self.reject(join_key(where, name), hint)
                ok = False
        if not ok:
            raise Invalid
        return values

    def expect_table(self, key: str, value: object) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.reject(key, f"expected a table [{key}], got {describe(value)}")
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
            "log_output": lambda k, v: self.choice(k, v, LOG_OUTPUTS),
            "graceful_timeout": lambda k, v: self.seconds(k, v, upper=MAX_GRACEFUL_TIMEOUT),
            "max_request_bytes": lambda k, v: self.size(k, v, lower=1, upper=None),
            "max_call_depth": lambda k, v: self.integer(k, v, 1, MAX_CALL_DEPTH),
            "watch": self.boolean,
            "drain_timeout": lambda k, v: self.seconds(k, v, upper=MAX_GRACEFUL_TIMEOUT),
            "probation": lambda k, v: self.seconds(k, v, upper=MAX_GRACEFUL_TIMEOUT),
            "rollback_error_rate": self.fraction,
            "slice": self.slice,
            "cpu": self.cpu,
            "data_dir": lambda k, v: self.path(k, v, '".micromono/data"'),
            "ws_max_connections": lambda k, v: self.integer(k, v, 1, 10_000_000),
            "tracing": lambda k, v: self.choice(k, v, TRACING_MODES),
            "otlp_endpoint": self.otlp_endpoint,
            "trace_sample": self.share,
        }
        values = self.table(key, self.expect_table(key, value), readers)
        values.setdefault("cache_dir", absolute_path(self.base_dir, str(DEFAULT_CACHE_DIR)))
        values.setdefault("data_dir", absolute_path(self.base_dir, str(DEFAULT_DATA_DIR)))
        spec = DaemonSpec(**values)
        if spec.metrics_listen is not None and spec.metrics_listen == spec.listen and spec.listen.port != 0:
            raise self.reject(
                join_key(key, "metrics_listen"),
                f'same address as listen ("{spec.listen}"): pick another port, or "" to disable metrics',
            )
        return spec

    def listen(self, key: str, value: object) -> Address:
        if not isinstance(value, str):
            hint = f' (write "127.0.0.1:{value}")' if isinstance(value, int) and not isinstance(value, bool) else ""
            raise self.reject(key, f'expected a string "host:port", got {describe(value)}{hint}')
        try:
            return Address.parse(value)
        except ValueError as exc:
            raise self.reject(key, str(exc)) from None

    def otlp_endpoint(self, key: str, value: object) -> str:
        """An OTLP/HTTP collector's base URL; spans go to its /v1/traces (docs/tracing.md)."""
        if not isinstance(value, str) or not re.fullmatch(r"https?://[^/\s]+(/\S*)?", value):
            shown = quote(value) if isinstance(value, str) else describe(value)
            raise self.reject(key, f'expected an http(s) URL such as "http://127.0.0.1:4318", got {shown}')
        return value.rstrip("/")

    def metrics_listen(self, key: str, value: object) -> Address | None:
        if value == "":
            return None  # "" disables the metrics listener
        return self.listen(key, value)

    # -- [services.<name>] --

    def services(self, key: str, value: object) -> tuple[ServiceSpec, ...]:
        if not isinstance(value, dict):
            raise self.reject(key, f"expected a table of [services.<name>] tables, got {describe(value)}")
        if not value:
            raise self.reject(key, _NO_SERVICES)
        self.service_names = list(value)
        self.service_set = frozenset(self.service_names)
        specs: list[ServiceSpec] = []
        ok = True
        for name, raw in value.items():
            service_key = join_key(key, name)
            if (problem := service_name_problem(name)) is not None:
                ok = False
                self.reject(service_key, problem)
            try:
                specs.append(self.service(service_key, name, raw))
            except Invalid:
                ok = False
        if not ok:
            raise Invalid
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
            "kind": lambda k, v: self.choice(k, v, SERVICE_KINDS),
            "max_live": lambda k, v: self.integer(k, v, 1, MAX_LIVE),
            "idle_timeout": lambda k, v: self.seconds(k, v, upper=MAX_IDLE_TIMEOUT),
            "storage_limit": lambda k, v: self.size(k, v, lower=MIN_STORAGE_LIMIT_BYTES, upper=MAX_STORAGE_LIMIT_BYTES),
            "sync": lambda k, v: self.choice(k, v, SYNC_MODES),
            "websocket": self.boolean,
            "stream_buffer": lambda k, v: self.integer(k, v, 0, 1_000_000),
            "ws_max_message": lambda k, v: self.size(k, v, lower=1, upper=MAX_WS_MESSAGE),
            "ws_max_buffered": lambda k, v: self.size(k, v, lower=KiB, upper=None),
            "ws_max_connections": lambda k, v: self.integer(k, v, 1, 10_000_000),
            "ws_idle_timeout": lambda k, v: self.seconds(k, v, upper=MAX_IDLE_TIMEOUT),
        }
        missing_wasm = f'missing required key: add wasm = "build/{name}.wasm"'
        values = self.table(key, table, readers, required={"wasm": missing_wasm})
        spec = ServiceSpec(name=name, **values)
        self.check_kind(key, table, spec)
        return spec

    def check_kind(self, key: str, table: Mapping[str, Any], spec: ServiceSpec) -> None:
        """The checks that depend on a service's kind: keyed routes and the actor keys only for actors; an actor
        has one instance per key, so no `instances`."""
        ok = True
        keyed_routes = [str(route) for route in spec.routes if route.keyed]
        if spec.keyed:
            if "instances" in table:
                ok = False
                self.reject(
                    join_key(key, "instances"),
                    'an actor (kind = "actor") has one live instance per key: remove instances '
                    "(max_live bounds the live instances)",
                )
            plain = [str(route) for route in spec.routes if not route.keyed]
            if plain:
                ok = False
                self.reject(
                    join_key(key, "routes"),
                    f'an actor\'s routes must name the key, as in "/{spec.name}/{{key}}": '
                    f"{', '.join(quote(route) for route in plain)} has no {{key}} segment",
                )
        else:
            for name in _ACTOR_KEYS:
                if name in table:
                    ok = False
                    self.reject(join_key(key, name), 'only an actor service takes this key: add kind = "actor"')
            if keyed_routes:
                ok = False
                self.reject(
                    join_key(key, "routes"),
                    f"{', '.join(quote(route) for route in keyed_routes)} has a {{key}} segment, which only an actor "
                    'service routes by: add kind = "actor", or remove the {key} segment',
                )
        if not ok:
            raise Invalid

    def env(self, key: str, value: object) -> tuple[tuple[str, str], ...]:
        if not isinstance(value, dict):
            raise self.reject(key, f'expected a table of strings such as {{ LANG = "C" }}, got {describe(value)}')
        pairs: list[tuple[str, str]] = []
        ok = True
        for name, item in value.items():
            if not _ENV_NAME.fullmatch(name):
                self.reject(
                    join_key(key, name), "invalid variable name: use letters, digits and _, not starting with a digit"
                )
                ok = False
            elif not isinstance(item, str) or "\0" in item:
                self.reject(join_key(key, name), f"expected a string without NUL, got {describe(item)}")
                ok = False
            else:
                pairs.append((name, item))
        if not ok:
            raise Invalid
        return tuple(pairs)

    def dirs(self, key: str, value: object) -> tuple[DirGrant, ...]:
        example = '[{ host = "data", guest = "/data", write = false }]'
        if not isinstance(value, list):
            raise self.reject(key, f"expected an array of tables such as {example}, got {describe(value)}")
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
            except Invalid:
                ok = False
        if not ok:
            raise Invalid
        return tuple(grants)

    def guest_path(self, key: str, value: object) -> str:
        if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
            raise self.reject(key, f'expected an absolute guest path such as "/data", got {describe(value)}')
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
                self.reject(item_key, f'expected a string route such as "/api/*", got {describe(item)}')
                continue
            try:
                route = Route.parse(item)
            except ValueError as exc:
                ok = False
                self.reject(item_key, str(exc))
                continue
            if route in first_index:
                ok = False
                self.reject(item_key, f"duplicate route {quote(item)} (also routes[{first_index[route]}]): remove one")
                continue
            first_index[route] = index
            owner = self.route_owner.setdefault(route, service)
            if owner != service:
                ok = False
                self.reject(
                    item_key,
                    f'route {quote(item)} is also served by service "{owner}": '
                    f'a route belongs to one service, remove it from "{owner}" or "{service}"',
                )
                continue
            routes.append(route)
        if not ok:
            raise Invalid
        return tuple(routes)

    def calls(self, key: str, value: object) -> frozenset[str]:
        items = self.array(key, value, "calls", '"auth"')
        first_index: dict[str, int] = {}
        ok = True
        for index, item in enumerate(items):
            item_key = f"{key}[{index}]"
            if not isinstance(item, str):
                ok = False
                self.reject(item_key, f"expected a string (a service name), got {describe(item)}")
            elif item in first_index:
                ok = False
                self.reject(item_key, f"duplicate entry {quote(item)} (also calls[{first_index[item]}]): remove one")
            elif item not in self.service_set:
                ok = False
                first_index[item] = index
                suggestion = did_you_mean(item, self.service_names)
                known = ", ".join(quote(name) for name in self.service_names)
                self.reject(
                    item_key,
                    f"unknown service {quote(item)}{suggestion}"
                    if suggestion
                    else f"unknown service {quote(item)}: calls may only name services in this manifest ({known})",
                )
            else:
                first_index[item] = index
        if not ok:
            raise Invalid
        return frozenset(first_index)


def _file_error(shown: str, message: str) -> ConfigError:
    return ConfigError(shown, [("", message)])


def _unknown_key(name: str, value: object, readers: Iterable[str], *, top_level: bool) -> str:
    valid = list(readers)
    if top_level and isinstance(value, dict) and "wasm" in value:
        return f"unknown key (did you mean [services.{name}]?)"
    suggestion = did_you_mean(name, valid)
    if suggestion:
        return f"unknown key{suggestion}"
    return f"unknown key; valid keys here: {', '.join(valid)}"
