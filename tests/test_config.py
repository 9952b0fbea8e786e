"""Tests for micromono.config: the services.toml v1 schema, its defaults and its exact error messages."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from micromono.config import (
    DEFAULT_CACHE_DIR,
    DEFAULT_LISTEN,
    DEFAULT_LOG_BURST,
    DEFAULT_LOG_RATE,
    DEFAULT_METRICS_LISTEN,
    Address,
    Config,
    ConfigError,
    DaemonSpec,
    DirGrant,
    GiB,
    KiB,
    MiB,
    Route,
    ServiceSpec,
    load_config,
    parse_config,
    route_table,
)

MINIMAL = 'version = 1\n[services.app]\nwasm = "app.wasm"\n'

FULL = """\
version = 1

[daemon]
listen = "0.0.0.0:8000"
metrics_listen = "[::1]:9100"
cache_dir = "/var/cache/micromono"
log_format = "json"
log_level = "debug"
graceful_timeout = 2.5
max_request_bytes = "2MiB"
max_call_depth = 8

[services.gateway]
wasm = "build/gateway.wasm"
routes = ["/api/*", "/login", "/*"]
calls = ["auth", "store"]
instances = 8
mailbox = 128
call_timeout = 0.5
memory_limit = "128MiB"

[services.auth]
wasm = "../shared/auth.wasm"
instances = 1
memory_limit = 1048576

[services.store]
wasm = "build/store.wasm"
calls = ["auth"]
call_timeout = 30
"""


def write(directory: Path, text: str, name: str = "services.toml") -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(tmp_path: Path, text: str) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return info.value.problems


def service_problems(tmp_path: Path, body: str) -> list[tuple[str, str]]:
    """Problems of a manifest whose one service `app` has `wasm` plus the lines in `body`."""
    return problems_of(tmp_path, f"{MINIMAL}{body}\n")


def daemon_problems(tmp_path: Path, body: str) -> list[tuple[str, str]]:
    return problems_of(tmp_path, f"{MINIMAL}[daemon]\n{body}\n")


def exact(text: str) -> str:
    """An anchored regex matching exactly `text`."""
    return f"^{re.escape(text)}$"


# --- valid manifests ---------------------------------------------------------------------------------------------


def test_full_manifest_round_trip(tmp_path: Path) -> None:
    """Every key of a full manifest lands in the matching dataclass field."""
    path = write(tmp_path / "app", FULL)
    config = load_config(path)
    assert config == Config(
        path=path,
        daemon=DaemonSpec(
            listen=Address(host="0.0.0.0", port=8000),
            metrics_listen=Address(host="::1", port=9100),
            cache_dir=Path("/var/cache/micromono"),
            log_format="json",
            log_level="debug",
            graceful_timeout=2.5,
            max_request_bytes=2 * MiB,
            max_call_depth=8,
            data_dir=tmp_path / "app" / ".micromono" / "data",
        ),
        services=(
            ServiceSpec(
                name="gateway",
                wasm=tmp_path / "app" / "build" / "gateway.wasm",
                routes=(
                    Route(pattern="/api", prefix=True),
                    Route(pattern="/login", prefix=False),
                    Route(pattern="", prefix=True),
                ),
                calls=frozenset({"auth", "store"}),
                instances=8,
                mailbox=128,
                call_timeout=0.5,
                memory_limit_bytes=128 * MiB,
            ),
            ServiceSpec(name="auth", wasm=tmp_path / "shared" / "auth.wasm", instances=1, memory_limit_bytes=1 * MiB),
            ServiceSpec(
                name="store",
                wasm=tmp_path / "app" / "build" / "store.wasm",
                calls=frozenset({"auth"}),
                call_timeout=30.0,
            ),
        ),
    )
    assert isinstance(config.service("store").call_timeout, float)
    assert isinstance(config.daemon.graceful_timeout, float)


def test_defaults(tmp_path: Path) -> None:
    """A manifest with only version and one wasm gets every documented default."""
    config = load_config(write(tmp_path, MINIMAL))
    assert config.daemon == DaemonSpec(
        cache_dir=tmp_path / ".micromono" / "cache", data_dir=tmp_path / ".micromono" / "data"
    )
    assert config.daemon.listen == Address(host="127.0.0.1", port=8080) == DEFAULT_LISTEN
    assert config.daemon.metrics_listen == Address(host="127.0.0.1", port=19090) == DEFAULT_METRICS_LISTEN
    assert (config.daemon.log_format, config.daemon.log_level) == ("console", "info")
    assert config.daemon.graceful_timeout == 10.0
    assert config.daemon.max_request_bytes == 1048576
    assert config.daemon.max_call_depth == 16
    assert config.services == (ServiceSpec(name="app", wasm=tmp_path / "app.wasm"),)
    spec = config.services[0]
    assert (spec.routes, spec.calls, spec.instances, spec.mailbox) == ((), frozenset(), 4, 64)
    assert (spec.call_timeout, spec.memory_limit_bytes) == (1.0, 64 * MiB)


def test_empty_daemon_table_gets_defaults(tmp_path: Path) -> None:
    """An empty [daemon] table is the same as none, including the resolved cache_dir."""
    with_table = load_config(write(tmp_path / "a", f"{MINIMAL}[daemon]\n"))
    without = load_config(write(tmp_path / "a", MINIMAL, name="other.toml"))
    assert with_table.daemon == without.daemon


def test_relative_paths_resolve_against_the_manifest_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """wasm and cache_dir are relative to the manifest, not the working directory, and come out absolute."""
    write(
        tmp_path / "project",
        'version = 1\n[daemon]\ncache_dir = "cache"\n[services.app]\nwasm = "../wasm/./app.wasm"\n',
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config("../project/services.toml")
    assert config.path == tmp_path / "project" / "services.toml"
    assert config.path.is_absolute()
    assert config.service("app").wasm == tmp_path / "wasm" / "app.wasm"
    assert config.daemon.cache_dir == tmp_path / "project" / "cache"


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    """An absolute wasm path is used as written."""
    config = load_config(write(tmp_path, 'version = 1\n[services.app]\nwasm = "/opt/app.wasm"\n'))
    assert config.service("app").wasm == Path("/opt/app.wasm")


def test_load_config_does_not_check_that_wasm_files_exist(tmp_path: Path) -> None:
    """Validation is pure: a missing .wasm file is the daemon's problem at load time, not the parser's."""
    config = load_config(write(tmp_path, MINIMAL))
    assert not config.service("app").wasm.exists()
    assert not config.daemon.cache_dir.exists()


def test_parse_config_resolves_against_the_given_path() -> None:
    """parse_config reads no file and uses `path` as the base for relative paths."""
    config = parse_config(MINIMAL, "/srv/site/services.toml")
    assert config.path == Path("/srv/site/services.toml")
    assert config.service("app").wasm == Path("/srv/site/app.wasm")
    assert config.daemon.cache_dir == Path("/srv/site/.micromono/cache")


def test_loading_twice_gives_equal_configs(tmp_path: Path) -> None:
    """Specs compare by value, which is what reload relies on."""
    path = write(tmp_path, FULL)
    assert load_config(path) == load_config(path)


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    """A UTF-8 byte order mark, as some editors write, is ignored."""
    path = tmp_path / "services.toml"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert load_config(path).names == ("app",)


def test_integers_are_accepted_for_durations(tmp_path: Path) -> None:
    """graceful_timeout and call_timeout take integers and store floats."""
    config = load_config(write(tmp_path, f"{MINIMAL}call_timeout = 3600\n[daemon]\ngraceful_timeout = 1\n"))
    assert config.daemon.graceful_timeout == 1.0
    assert config.service("app").call_timeout == 3600.0


def test_metrics_listen_empty_string_disables_metrics(tmp_path: Path) -> None:
    """metrics_listen = "" gives None."""
    config = load_config(write(tmp_path, f'{MINIMAL}[daemon]\nmetrics_listen = ""\n'))
    assert config.daemon.metrics_listen is None


def test_port_zero_may_be_shared_by_both_listeners(tmp_path: Path) -> None:
    """Port 0 means "any free port", so listen and metrics_listen may both use it."""
    text = f'{MINIMAL}[daemon]\nlisten = "127.0.0.1:0"\nmetrics_listen = "127.0.0.1:0"\n'
    config = load_config(write(tmp_path, text))
    assert config.daemon.listen == config.daemon.metrics_listen == Address(host="127.0.0.1", port=0)


@pytest.mark.parametrize(
    ("written", "size"),
    [
        ("65536", 64 * KiB),
        ('"64KiB"', 64 * KiB),
        ('"65536B"', 64 * KiB),
        ('"1 MiB"', 1 * MiB),
        ('"256MiB"', 256 * MiB),
        ('"4GiB"', 4 * GiB),
        ("4294967296", 4 * GiB),
    ],
)
def test_memory_limit_sizes(tmp_path: Path, written: str, size: int) -> None:
    """memory_limit takes bytes or a binary-unit size string, from 64KiB to 4GiB inclusive."""
    config = load_config(write(tmp_path, f"{MINIMAL}memory_limit = {written}\n"))
    assert config.service("app").memory_limit_bytes == size


def test_max_request_bytes_takes_sizes(tmp_path: Path) -> None:
    """max_request_bytes takes a size string too, down to one byte."""
    assert load_config(write(tmp_path, f'{MINIMAL}[daemon]\nmax_request_bytes = "1B"\n')).daemon.max_request_bytes == 1


def test_cache_max_bytes_takes_sizes_down_to_a_mebibyte(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, MINIMAL)).daemon.cache_max_bytes == 1 << 30
    config = load_config(write(tmp_path, f'{MINIMAL}[daemon]\ncache_max_bytes = "64MiB"\n'))
    assert config.daemon.cache_max_bytes == 64 << 20
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, f'{MINIMAL}[daemon]\ncache_max_bytes = "1KiB"\n'))
    assert "daemon.cache_max_bytes" in str(info.value)


def test_service_may_call_itself(tmp_path: Path) -> None:
    """A service may list itself in calls (recursion through the host)."""
    config = load_config(write(tmp_path, f'{MINIMAL}calls = ["app"]\n'))
    assert config.service("app").calls == frozenset({"app"})


def test_same_path_exact_and_prefix_in_two_services(tmp_path: Path) -> None:
    """ "/api" and "/api/*" are different routes, so two services may hold them."""
    text = (
        'version = 1\n[services.a]\nwasm = "a.wasm"\nroutes = ["/api"]\n'
        '[services.b]\nwasm = "b.wasm"\nroutes = ["/api/*"]\n'
    )
    config = load_config(write(tmp_path, text))
    assert config.service("a").routes == (Route(pattern="/api", prefix=False),)
    assert config.service("b").routes == (Route(pattern="/api", prefix=True),)


# --- the dataclasses in code --------------------------------------------------------------------------------------


def test_specs_can_be_built_in_code() -> None:
    """Other modules' tests build specs directly; every field but name and wasm has a default."""
    spec = ServiceSpec(name="echo", wasm=Path("/tmp/echo.wasm"))
    config = Config(path=Path("/tmp/services.toml"), services=(spec,))
    assert config.daemon == DaemonSpec()
    assert DaemonSpec().cache_dir == DEFAULT_CACHE_DIR
    assert config.names == ("echo",)
    assert config.service("echo") is spec


def test_specs_are_frozen() -> None:
    """Specs are immutable: reload builds new ones instead."""
    spec = ServiceSpec(name="echo", wasm=Path("echo.wasm"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.instances = 2  # type: ignore[misc]


def test_unknown_service_lookup_raises_key_error(tmp_path: Path) -> None:
    """Config.service raises KeyError for a name it does not hold."""
    config = load_config(write(tmp_path, MINIMAL))
    with pytest.raises(KeyError, match="nope"):
        config.service("nope")


# --- file-level errors --------------------------------------------------------------------------------------------


def test_malformed_toml_keeps_line_and_column(tmp_path: Path) -> None:
    """A TOML syntax error becomes one ConfigError that keeps tomllib's position."""
    path = write(tmp_path, "version = 1\n[services.app]\nwasm = app.wasm\n")
    with pytest.raises(
        ConfigError, match=exact(f"{path}: 1 problem\n  invalid TOML: Invalid value (at line 3, column 8)")
    ):
        load_config(path)


def test_duplicate_service_tables_are_a_toml_error() -> None:
    """Declaring a service twice is caught by TOML itself, with its position."""
    text = f'{MINIMAL}[services.app]\nwasm = "b.wasm"\n'
    with pytest.raises(ConfigError) as info:
        parse_config(text, "services.toml")
    assert info.value.problems == [
        ("", "invalid TOML: Cannot declare ('services', 'app') twice (at line 4, column 14)")
    ]


def test_missing_file_names_the_file_and_the_fix(tmp_path: Path) -> None:
    """A missing manifest is a ConfigError naming the path as given and the absolute path."""
    path = tmp_path / "nope.toml"
    message = f"{path}: 1 problem\n  no such file {path}: create it, or pass the path of your services.toml"
    with pytest.raises(ConfigError, match=exact(message)):
        load_config(path)


def test_missing_file_given_relative_shows_both_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The header keeps the path as the user typed it; the message gives the absolute one."""
    monkeypatch.chdir(tmp_path)
    absolute = tmp_path / "services.toml"
    message = f"services.toml: 1 problem\n  no such file {absolute}: create it, or pass the path of your services.toml"
    with pytest.raises(ConfigError, match=exact(message)):
        load_config("services.toml")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    """Passing a directory says to pass the file inside it."""
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert info.value.problems == [("", f"{tmp_path} is a directory: pass the path of the services.toml inside it")]


def test_not_utf8(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are reported with their offset."""
    path = tmp_path / "services.toml"
    path.write_bytes(b"version = 1\n# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [("", "not UTF-8 text (byte 0xe9 at offset 17): save the file as UTF-8")]


# --- version ------------------------------------------------------------------------------------------------------


def test_missing_version(tmp_path: Path) -> None:
    """A missing version is reported first, and the rest is still checked."""
    assert problems_of(tmp_path, '[services.app]\nwasm = "app.wasm"\ninstances = 0\n') == [
        ("version", "missing required key: add version = 1 at the top of the file"),
        ("services.app.instances", "expected an integer >= 1, got 0"),
    ]


def test_unsupported_version_is_the_only_problem(tmp_path: Path) -> None:
    """Another version means another schema, so nothing else is reported."""
    assert problems_of(tmp_path, 'version = 2\n[services.app]\nwsam = "x"\n') == [
        ("version", "unsupported version 2: this micromono reads version 1"),
    ]


@pytest.mark.parametrize(
    ("written", "got"),
    [('"1"', 'string "1"'), ("true", "boolean true"), ("1.0", "float 1.0")],
)
def test_version_of_the_wrong_type(tmp_path: Path, written: str, got: str) -> None:
    """version must be the integer 1, not a string, boolean or float."""
    assert problems_of(tmp_path, f'version = {written}\n[services.app]\nwasm = "app.wasm"\n') == [
        ("version", f"expected an integer (version = 1), got {got}"),
    ]


# --- unknown keys -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (f"{MINIMAL}[deamon]\n", ("deamon", 'unknown key (did you mean "daemon"?)')),
        (f"service = 1\n{MINIMAL}", ("service", 'unknown key (did you mean "services"?)')),
        (f"colour = 1\n{MINIMAL}", ("colour", "unknown key; valid keys here: version, daemon, services")),
        (
            f'{MINIMAL}[billing]\nwasm = "billing.wasm"\n',
            ("billing", "unknown key (did you mean [services.billing]?)"),
        ),
        (f"{MINIMAL}[daemon]\nlisen = 1\n", ("daemon.lisen", 'unknown key (did you mean "listen"?)')),
        (
            f"{MINIMAL}[daemon]\nmetric_listen = 1\n",
            ("daemon.metric_listen", 'unknown key (did you mean "metrics_listen"?)'),
        ),
        (
            f"{MINIMAL}[daemon]\nworkers = 2\n",
            (
                "daemon.workers",
                (
                    "unknown key; valid keys here: listen, metrics_listen, cache_dir, cache_max_bytes, log_format, "
                    "log_level, log_output, graceful_timeout, max_request_bytes, max_call_depth, watch, drain_timeout, "
                    "probation, rollback_error_rate, slice, cpu, data_dir, ws_max_connections, tracing, otlp_endpoint, "
                    "trace_sample"
                ),
            ),
        ),
        (f"{MINIMAL}wsam = 1\n", ("services.app.wsam", 'unknown key (did you mean "wasm"?)')),
        (
            f"{MINIMAL}memory_limit_bytes = 1\n",
            ("services.app.memory_limit_bytes", 'unknown key (did you mean "memory_limit"?)'),
        ),
        (f"{MINIMAL}Instances = 1\n", ("services.app.Instances", 'unknown key (did you mean "instances"?)')),
        (
            f"{MINIMAL}queue_size = 1\n",
            (
                "services.app.queue_size",
                "unknown key; valid keys here: wasm, routes, calls, instances, mailbox, call_timeout, memory_limit, "
                "on_full, on_full_wait, max_failures, failure_window, env, dirs, log_rate, log_burst, max_sends, kind, "
                "max_live, idle_timeout, storage_limit, sync, websocket, stream_buffer, ws_max_message, "
                "ws_max_buffered, ws_max_connections, ws_idle_timeout",
            ),
        ),
        (
            f'{MINIMAL}"odd key" = 1\n',
            (
                'services.app."odd key"',
                "unknown key; valid keys here: wasm, routes, calls, instances, mailbox, call_timeout, memory_limit, "
                "on_full, on_full_wait, max_failures, failure_window, env, dirs, log_rate, log_burst, max_sends, kind, "
                "max_live, idle_timeout, storage_limit, sync, websocket, stream_buffer, ws_max_message, "
                "ws_max_buffered, ws_max_connections, ws_idle_timeout",
            ),
        ),
    ],
)
def test_unknown_keys(tmp_path: Path, text: str, problem: tuple[str, str]) -> None:
    """Unknown keys are rejected at every level, with a did-you-mean or the list of valid keys."""
    assert problems_of(tmp_path, text) == [problem]


def test_unknown_key_message_in_full(tmp_path: Path) -> None:
    """The whole message names the file, the key path and the suggestion."""
    path = write(tmp_path, f"{MINIMAL}wsam = 1\n")
    with pytest.raises(
        ConfigError, match=exact(f'{path}: 1 problem\n  services.app.wsam: unknown key (did you mean "wasm"?)')
    ):
        load_config(path)


SIZE_TYPE = 'expected a size: an integer number of bytes or a string such as "64MiB" (units B, KiB, MiB or GiB), got '

# --- wrong types --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("instances = true", ("instances", "expected an integer 1..1024, got boolean true")),
        ("instances = 4.0", ("instances", "expected an integer 1..1024, got float 4.0")),
        ('mailbox = "64"', ("mailbox", 'expected an integer 1..1000000, got string "64"')),
        ('call_timeout = "1s"', ("call_timeout", 'expected a number of seconds, got string "1s"')),
        ("call_timeout = false", ("call_timeout", "expected a number of seconds, got boolean false")),
        (
            "memory_limit = true",
            (
                "memory_limit",
                SIZE_TYPE + "boolean true",
            ),
        ),
        (
            "memory_limit = 1.5e6",
            (
                "memory_limit",
                SIZE_TYPE + "float 1500000.0",
            ),
        ),
        (
            'routes = "/api/*"',
            ("routes", 'expected an array of strings (write routes = ["/api/*"]), got string "/api/*"'),
        ),
        ("routes = {a = 1}", ("routes", 'expected an array of strings such as ["/api/*"], got table')),
        ('calls = "app"', ("calls", 'expected an array of strings (write calls = ["app"]), got string "app"')),
        ("calls = 1979-05-27", ("calls", 'expected an array of strings such as ["auth"], got date 1979-05-27')),
        ("routes = [1]", ("routes[0]", 'expected a string route such as "/api/*", got integer 1')),
        ("calls = [[]]", ("calls[0]", "expected a string (a service name), got array")),
    ],
)
def test_wrong_types_in_a_service(tmp_path: Path, body: str, problem: tuple[str, str]) -> None:
    """Each wrong type names the expected TOML type and what was found, and bool is never an integer."""
    key, message = problem
    assert service_problems(tmp_path, body) == [(f"services.app.{key}", message)]


def test_wrong_wasm_type(tmp_path: Path) -> None:
    """A non-string wasm is a type error, not a missing key."""
    assert problems_of(tmp_path, "version = 1\n[services.app]\nwasm = 1\n") == [
        ("services.app.wasm", 'expected a string path such as "build/app.wasm", got integer 1'),
    ]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("listen = 8080", ("listen", 'expected a string "host:port", got integer 8080 (write "127.0.0.1:8080")')),
        ("listen = true", ("listen", 'expected a string "host:port", got boolean true')),
        ("metrics_listen = false", ("metrics_listen", 'expected a string "host:port", got boolean false')),
        ("cache_dir = 1", ("cache_dir", 'expected a string path such as ".micromono/cache", got integer 1')),
        ("log_format = 1", ("log_format", 'expected a string, "console" or "json", got integer 1')),
        ("log_level = []", ("log_level", 'expected a string, one of "debug", "info", "warning", "error", got array')),
        ("graceful_timeout = true", ("graceful_timeout", "expected a number of seconds, got boolean true")),
        ("graceful_timeout = 10:00:00", ("graceful_timeout", "expected a number of seconds, got time 10:00:00")),
        ("max_call_depth = true", ("max_call_depth", "expected an integer 1..1000, got boolean true")),
        (
            "max_request_bytes = false",
            (
                "max_request_bytes",
                SIZE_TYPE + "boolean false",
            ),
        ),
    ],
)
def test_wrong_types_in_daemon(tmp_path: Path, body: str, problem: tuple[str, str]) -> None:
    """[daemon] keys report expected vs got TOML types too."""
    key, message = problem
    assert daemon_problems(tmp_path, body) == [(f"daemon.{key}", message)]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            'version = 1\ndaemon = "fast"\n[services.app]\nwasm = "a.wasm"\n',
            ("daemon", 'expected a table [daemon], got string "fast"'),
        ),
        ('version = 1\nservices = ["app"]\n', ("services", "expected a table of [services.<name>] tables, got array")),
        (
            'version = 1\n[services]\napp = "app.wasm"\n',
            ("services.app", 'expected a table [services.app], got string "app.wasm"'),
        ),
    ],
)
def test_tables_of_the_wrong_type(tmp_path: Path, text: str, problem: tuple[str, str]) -> None:
    """daemon, services and each service must be tables."""
    assert problems_of(tmp_path, text) == [problem]


# --- out-of-range numbers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("instances = 0", ("instances", "expected an integer >= 1, got 0")),
        ("instances = 1025", ("instances", "expected an integer <= 1024, got 1025")),
        ("mailbox = -1", ("mailbox", "expected an integer >= 1, got -1")),
        ("mailbox = 1_000_001", ("mailbox", "expected an integer <= 1000000, got 1000001")),
        ("call_timeout = 0", ("call_timeout", "expected a number of seconds > 0, got 0")),
        ("call_timeout = -0.5", ("call_timeout", "expected a number of seconds > 0, got -0.5")),
        ("call_timeout = 3600.5", ("call_timeout", "expected a number of seconds <= 3600, got 3600.5")),
        ("call_timeout = inf", ("call_timeout", "expected a finite number of seconds, got inf")),
        ("call_timeout = nan", ("call_timeout", "expected a finite number of seconds, got nan")),
        ("memory_limit = 65535", ("memory_limit", "expected a size >= 64KiB (65536 bytes), got 65535")),
        (
            'memory_limit = "32KiB"',
            ("memory_limit", 'expected a size >= 64KiB (65536 bytes), got "32KiB" (32768 bytes)'),
        ),
        (
            'memory_limit = "5GiB"',
            ("memory_limit", 'expected a size <= 4GiB (4294967296 bytes), got "5GiB" (5368709120 bytes)'),
        ),
        ("memory_limit = -1", ("memory_limit", "expected a size >= 64KiB (65536 bytes), got -1")),
    ],
)
def test_service_numbers_out_of_range(tmp_path: Path, body: str, problem: tuple[str, str]) -> None:
    """Out-of-range numbers name the bound they break and the value found."""
    key, message = problem
    assert service_problems(tmp_path, body) == [(f"services.app.{key}", message)]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("graceful_timeout = 0", ("graceful_timeout", "expected a number of seconds > 0, got 0")),
        ("graceful_timeout = -inf", ("graceful_timeout", "expected a finite number of seconds, got -inf")),
        ("graceful_timeout = 3600.001", ("graceful_timeout", "expected a number of seconds <= 3600, got 3600.001")),
        ("graceful_timeout = 1e80", ("graceful_timeout", "expected a number of seconds <= 3600, got 1e+80")),
        (
            f"graceful_timeout = {'9' * 400}",
            ("graceful_timeout", f"expected a finite number of seconds, got {'9' * 57}..."),
        ),
        ("max_call_depth = 0", ("max_call_depth", "expected an integer >= 1, got 0")),
        ("max_call_depth = 1001", ("max_call_depth", "expected an integer <= 1000, got 1001")),
        ("max_request_bytes = 0", ("max_request_bytes", "expected a size >= 1 byte, got 0")),
        ('max_request_bytes = "0KiB"', ("max_request_bytes", 'expected a size >= 1 byte, got "0KiB" (0 bytes)')),
    ],
)
def test_daemon_numbers_out_of_range(tmp_path: Path, body: str, problem: tuple[str, str]) -> None:
    """[daemon] numbers are range-checked the same way."""
    key, message = problem
    assert daemon_problems(tmp_path, body) == [(f"daemon.{key}", message)]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (
            'log_level = "warn"',
            ("log_level", 'expected one of "debug", "info", "warning", "error", got "warn" (did you mean "warning"?)'),
        ),
        (
            'log_level = "INFO"',
            ("log_level", 'expected one of "debug", "info", "warning", "error", got "INFO" (did you mean "info"?)'),
        ),
        ('log_level = "trace"', ("log_level", 'expected one of "debug", "info", "warning", "error", got "trace"')),
        ('log_format = "jsonl"', ("log_format", 'expected "console" or "json", got "jsonl" (did you mean "json"?)')),
        ('cache_dir = ""', ("cache_dir", 'expected a path such as ".micromono/cache", got ""')),
        ('tracing = "on"', ("tracing", 'expected one of "off", "log", "otlp", got "on"')),
        (
            'otlp_endpoint = "127.0.0.1:4318"',
            ("otlp_endpoint", 'expected an http(s) URL such as "http://127.0.0.1:4318", got "127.0.0.1:4318"'),
        ),
        (
            "otlp_endpoint = 4318",
            ("otlp_endpoint", 'expected an http(s) URL such as "http://127.0.0.1:4318", got integer 4318'),
        ),
        ("trace_sample = 1.5", ("trace_sample", "expected a number from 0 to 1, got 1.5")),
        ("trace_sample = -0.1", ("trace_sample", "expected a number from 0 to 1, got -0.1")),
        ('trace_sample = "10%"', ("trace_sample", 'expected a number from 0 to 1, got string "10%"')),
        ("trace_sample = true", ("trace_sample", "expected a number from 0 to 1, got boolean true")),
    ],
)
def test_bad_daemon_strings(tmp_path: Path, body: str, problem: tuple[str, str]) -> None:
    """Enumerated strings list the choices and suggest the closest."""
    key, message = problem
    assert daemon_problems(tmp_path, body) == [(f"daemon.{key}", message)]


# --- names --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "key", "message"),
    [
        ("Billing", "services.Billing", 'invalid service name "Billing" (did you mean "billing"?)'),
        ("1st", "services.1st", 'invalid service name "1st"'),
        ("_private", "services._private", 'invalid service name "_private"'),
        ('"with space"', 'services."with space"', 'invalid service name "with space"'),
        ('"dotted.name"', 'services."dotted.name"', 'invalid service name "dotted.name"'),
        ("a" * 64, "services." + "a" * 64, f'invalid service name "{"a" * 57}..."'),
    ],
)
def test_bad_service_names(tmp_path: Path, name: str, key: str, message: str) -> None:
    """Service names follow ^[a-z][a-z0-9_-]{0,62}$ and the message says so."""
    rule = ': use a lowercase letter, then up to 62 lowercase letters, digits, "_" or "-"'
    assert problems_of(tmp_path, f'version = 1\n[services.{name}]\nwasm = "x.wasm"\n') == [(key, message + rule)]


@pytest.mark.parametrize("name", ["a", "billing", "auth-v2", "user_store", "a" * 63, "z9"])
def test_good_service_names(tmp_path: Path, name: str) -> None:
    """Names of 1 to 63 characters from the allowed set are accepted."""
    assert load_config(write(tmp_path, f'version = 1\n[services.{name}]\nwasm = "x.wasm"\n')).names == (name,)


# --- routes -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ("api/*", 'route must start with "/", got "api/*" (did you mean "/api/*"?)'),
        ("", 'route must start with "/", got ""'),
        ("*", 'route must start with "/", got "*" (did you mean "/*"?)'),
        ("/search?q=1", 'route "/search?q=1" contains "?": routes match the URL path only, remove the query'),
        ("/page#top", 'route "/page#top" contains "#": routes match the URL path only, remove the fragment'),
        ("/a b", 'route "/a b" contains whitespace or a control character, which a URL path cannot'),
        ("/tab\\t", 'route "/tab\\t" contains whitespace or a control character, which a URL path cannot'),
        ("/api*", '"*" may only end a route, as "/*" (e.g. "/api/*"), got "/api*"'),
        ("/*/x", '"*" may only end a route, as "/*" (e.g. "/api/*"), got "/*/x"'),
        ("/api/**", '"*" may only end a route, as "/*" (e.g. "/api/*"), got "/api/**"'),
    ],
)
def test_bad_routes(tmp_path: Path, route: str, message: str) -> None:
    """Each malformed route is reported at its index with the fix."""
    assert service_problems(tmp_path, f'routes = ["/ok", "{route}"]') == [("services.app.routes[1]", message)]


def test_duplicate_route_in_one_service(tmp_path: Path) -> None:
    """A route listed twice in one service points at the first."""
    assert service_problems(tmp_path, 'routes = ["/login", "/api/*", "/login"]') == [
        ("services.app.routes[2]", 'duplicate route "/login" (also routes[0]): remove one'),
    ]


def test_same_route_in_two_services_names_both(tmp_path: Path) -> None:
    """The same route in two services is an error naming both, reported at the later one."""
    text = (
        'version = 1\n[services.gateway]\nwasm = "g.wasm"\nroutes = ["/api/*", "/"]\n'
        '[services.admin]\nwasm = "a.wasm"\nroutes = ["/admin", "/api/*"]\n'
    )
    assert problems_of(tmp_path, text) == [
        (
            "services.admin.routes[1]",
            (
                'route "/api/*" is also served by service "gateway": '
                'a route belongs to one service, remove it from "gateway" or "admin"'
            ),
        ),
    ]


# --- calls --------------------------------------------------------------------------------------------------------

CALLERS = (
    'version = 1\n[services.auth]\nwasm = "auth.wasm"\n[services.store]\nwasm = "store.wasm"\n'
    '[services.app]\nwasm = "app.wasm"\n'
)


def test_unknown_calls_target_with_did_you_mean(tmp_path: Path) -> None:
    """A misspelt call target suggests the service it was probably meant to be."""
    assert problems_of(tmp_path, f'{CALLERS}calls = ["auht"]\n') == [
        ("services.app.calls[0]", 'unknown service "auht" (did you mean "auth"?)'),
    ]


def test_unknown_calls_target_lists_the_services(tmp_path: Path) -> None:
    """With no close match, the message lists the services that exist."""
    assert problems_of(tmp_path, f'{CALLERS}calls = ["auth", "payments"]\n') == [
        (
            "services.app.calls[1]",
            'unknown service "payments": calls may only name services in this manifest ("auth", "store", "app")',
        ),
    ]


def test_calls_may_name_a_service_defined_later(tmp_path: Path) -> None:
    """calls is checked against every service in the file, not just the ones above."""
    text = 'version = 1\n[services.app]\nwasm = "app.wasm"\ncalls = ["store"]\n[services.store]\nwasm = "s.wasm"\n'
    assert load_config(write(tmp_path, text)).service("app").calls == frozenset({"store"})


def test_duplicate_calls_target(tmp_path: Path) -> None:
    """A target listed twice is an error pointing at the first."""
    assert problems_of(tmp_path, f'{CALLERS}calls = ["store", "auth", "store"]\n') == [
        ("services.app.calls[2]", 'duplicate entry "store" (also calls[0]): remove one'),
    ]


# --- sizes --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ('"64MB"', 'unit "MB" is not accepted: sizes use B, KiB, MiB or GiB (powers of 1024), such as "64MiB"'),
        ('"64kb"', 'unit "kb" is not accepted: sizes use B, KiB, MiB or GiB (powers of 1024), such as "64KiB"'),
        ('"1G"', 'unit "G" is not accepted: sizes use B, KiB, MiB or GiB (powers of 1024), such as "1GiB"'),
        ('"64mib"', 'unit "mib" is not accepted (did you mean "64MiB"?): units are case-sensitive'),
        ('"64TiB"', 'unknown unit "TiB" in "64TiB": use B, KiB, MiB or GiB'),
        ('"65536"', 'missing unit in "65536": write 65536 (an integer, in bytes) or add B, KiB, MiB or GiB'),
        ('"1.5GiB"', 'expected a size such as "64MiB" (an integer and a unit: B, KiB, MiB or GiB), got "1.5GiB"'),
        ('"-1MiB"', 'expected a size such as "64MiB" (an integer and a unit: B, KiB, MiB or GiB), got "-1MiB"'),
        ('"64  MiB"', 'expected a size such as "64MiB" (an integer and a unit: B, KiB, MiB or GiB), got "64  MiB"'),
        ('"lots"', 'expected a size such as "64MiB" (an integer and a unit: B, KiB, MiB or GiB), got "lots"'),
    ],
)
def test_bad_size_strings(tmp_path: Path, written: str, message: str) -> None:
    """Only B, KiB, MiB and GiB are accepted, and the message says which unit to write."""
    assert service_problems(tmp_path, f"memory_limit = {written}") == [("services.app.memory_limit", message)]


# --- addresses ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:8080", Address(host="127.0.0.1", port=8080)),
        ("0.0.0.0:0", Address(host="0.0.0.0", port=0)),
        ("localhost:65535", Address(host="localhost", port=65535)),
        ("api.example.com:443", Address(host="api.example.com", port=443)),
        ("[::1]:8080", Address(host="::1", port=8080)),
        ("[::]:80", Address(host="::", port=80)),
        ("[2001:db8::1]:9090", Address(host="2001:db8::1", port=9090)),
    ],
)
def test_address_parse_and_str(text: str, address: Address) -> None:
    """Address.parse reads host:port (IPv6 bracketed) and str() writes it back the same way."""
    assert Address.parse(text) == address
    assert str(address) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("localhost", 'expected "host:port", such as "127.0.0.1:8080" or "[::1]:8080", got "localhost"'),
        ("", 'expected "host:port", such as "127.0.0.1:8080" or "[::1]:8080", got ""'),
        (
            ":8080",
            'missing host in ":8080": write "127.0.0.1:8080" (this machine only) or "0.0.0.0:8080" (all interfaces)',
        ),
        ("::1:8080", 'IPv6 addresses need brackets: write "[::1]:8080", not "::1:8080"'),
        ("[::1:8080", 'missing "]" in "[::1:8080": write IPv6 addresses as "[::1]:8080"'),
        ("[::1]8080", 'expected ":port" after "]" in "[::1]8080", as in "[::1]:8080"'),
        ("[1.2.3.4]:80", '"1.2.3.4" is not an IPv6 address, in "[1.2.3.4]:80"'),
        ("256.0.0.1:80", '"256.0.0.1" is not an IPv4 address, in "256.0.0.1:80"'),
        ("bad_host:80", '"bad_host" is not a valid host name or IP address, in "bad_host:80"'),
        ("localhost:http", 'expected a port 0..65535 after the last ":", got "http" in "localhost:http"'),
        ("localhost:65536", 'expected a port 0..65535 after the last ":", got "65536" in "localhost:65536"'),
        ("localhost:-1", 'expected a port 0..65535 after the last ":", got "-1" in "localhost:-1"'),
        ("localhost:", 'expected a port 0..65535 after the last ":", got "" in "localhost:"'),
    ],
)
def test_address_parse_errors(text: str, message: str) -> None:
    """Address.parse raises ValueError saying what to write instead."""
    with pytest.raises(ValueError, match=exact(message)):
        Address.parse(text)


def test_bad_listen_addresses_in_the_manifest(tmp_path: Path) -> None:
    """Address problems carry the key path of the listener."""
    assert daemon_problems(tmp_path, 'listen = "::1:8080"\nmetrics_listen = "localhost"') == [
        ("daemon.listen", 'IPv6 addresses need brackets: write "[::1]:8080", not "::1:8080"'),
        ("daemon.metrics_listen", 'expected "host:port", such as "127.0.0.1:8080" or "[::1]:8080", got "localhost"'),
    ]


def test_metrics_listen_on_the_ingress_address(tmp_path: Path) -> None:
    """Both listeners on one fixed address could never bind, so it is refused up front."""
    assert daemon_problems(tmp_path, 'listen = "127.0.0.1:19090"') == [
        (
            "daemon.metrics_listen",
            'same address as listen ("127.0.0.1:19090"): pick another port, or "" to disable metrics',
        ),
    ]


# --- services present ---------------------------------------------------------------------------------------------

NO_SERVICES = 'at least one service is required: add a [services.<name>] table with wasm = "..."'


@pytest.mark.parametrize(
    "text", ["version = 1\n", "version = 1\n[services]\n", 'version = 1\n[daemon]\nlog_level = "debug"\n']
)
def test_no_services(tmp_path: Path, text: str) -> None:
    """A manifest without services, or with an empty [services] table, is refused."""
    assert problems_of(tmp_path, text) == [("services", NO_SERVICES)]


def test_missing_wasm(tmp_path: Path) -> None:
    """wasm is required and the message shows a line to add."""
    assert problems_of(tmp_path, "version = 1\n[services.billing]\ninstances = 2\n") == [
        ("services.billing.wasm", 'missing required key: add wasm = "build/billing.wasm"'),
    ]


# --- several problems at once -------------------------------------------------------------------------------------


def test_every_problem_is_reported_at_once_in_file_order(tmp_path: Path) -> None:
    """One ConfigError lists every problem: version first, then keys as written, then missing keys per table."""
    path = write(
        tmp_path,
        """\
[daemon]
log_level = "verbose"
listen = "localhost"

[services.billing]
mailbox = -1
wsam = "build/billing.wasm"
calls = ["ledgr"]

[services.ledger]
wasm = "build/ledger.wasm"
routes = ["/billing"]
memory_limit = "64MB"

[services.Reports]
wasm = "build/reports.wasm"
instances = true
""",
    )
    expected = "\n".join(
        [
            f"{path}: 10 problems",
            "  version: missing required key: add version = 1 at the top of the file",
            '  daemon.log_level: expected one of "debug", "info", "warning", "error", got "verbose"',
            '  daemon.listen: expected "host:port", such as "127.0.0.1:8080" or "[::1]:8080", got "localhost"',
            "  services.billing.mailbox: expected an integer >= 1, got -1",
            '  services.billing.wsam: unknown key (did you mean "wasm"?)',
            '  services.billing.calls[0]: unknown service "ledgr" (did you mean "ledger"?)',
            '  services.billing.wasm: missing required key: add wasm = "build/billing.wasm"',
            (
                '  services.ledger.memory_limit: unit "MB" is not accepted: '
                'sizes use B, KiB, MiB or GiB (powers of 1024), such as "64MiB"'
            ),
            (
                '  services.Reports: invalid service name "Reports" (did you mean "reports"?): '
                'use a lowercase letter, then up to 62 lowercase letters, digits, "_" or "-"'
            ),
            "  services.Reports.instances: expected an integer 1..1024, got boolean true",
        ]
    )
    with pytest.raises(ConfigError, match=exact(expected)) as info:
        load_config(path)
    assert info.value.path == str(path)
    assert len(info.value.problems) == 10


# --- route matching -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "route"),
    [
        ("/login", Route(pattern="/login", prefix=False)),
        ("/", Route(pattern="/", prefix=False)),
        ("/api/*", Route(pattern="/api", prefix=True)),
        ("/api/v1/*", Route(pattern="/api/v1", prefix=True)),
        ("/*", Route(pattern="", prefix=True)),
    ],
)
def test_route_parse_and_str(text: str, route: Route) -> None:
    """Route.parse gives the documented (pattern, prefix) and str() gives back the TOML form."""
    assert Route.parse(text) == route
    assert str(route) == text


@pytest.mark.parametrize(
    ("route", "path", "expected"),
    [
        ("/login", "/login", True),
        ("/login", "/login/", False),
        ("/login", "/login/x", False),
        ("/login", "/logins", False),
        ("/api/*", "/api", True),
        ("/api/*", "/api/", True),
        ("/api/*", "/api/users/7", True),
        ("/api/*", "/apix", False),
        ("/api/*", "/ap", False),
        ("/api/*", "/", False),
        ("/*", "/", True),
        ("/*", "/anything/at/all", True),
        ("/", "/", True),
        ("/", "/x", False),
    ],
)
def test_route_matches(route: str, path: str, expected: bool) -> None:
    """Exact routes match one path; "/x/*" matches "/x" and everything below "/x/"; "/*" matches all."""
    assert Route.parse(route).matches(path) is expected


def test_route_table_order(tmp_path: Path) -> None:
    """Exact routes come first in file order, then prefix routes longest first, "/*" last."""
    text = """\
version = 1
[services.web]
wasm = "web.wasm"
routes = ["/*", "/about"]
[services.api]
wasm = "api.wasm"
routes = ["/api/*", "/health"]
[services.admin]
wasm = "admin.wasm"
routes = ["/api/admin/*", "/api/*x"]
"""
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, text))
    config = load_config(write(tmp_path, text.replace(', "/api/*x"', "")))
    assert [(str(route), name) for route, name in route_table(config)] == [
        ("/about", "web"),
        ("/health", "api"),
        ("/api/admin/*", "admin"),
        ("/api/*", "api"),
        ("/*", "web"),
    ]


@pytest.mark.parametrize(
    ("path", "service"),
    [
        ("/api/admin/users", "admin"),
        ("/api/admin", "admin"),
        ("/api/users", "api"),
        ("/api", "api"),
        ("/health", "api"),
        ("/about", "web"),
        ("/about/team", "web"),
        ("/", "web"),
    ],
)
def test_first_match_in_route_table(tmp_path: Path, path: str, service: str) -> None:
    """Taking the first matching entry of route_table routes each path to the most specific service."""
    text = (
        'version = 1\n[services.web]\nwasm = "web.wasm"\nroutes = ["/*", "/about"]\n'
        '[services.api]\nwasm = "api.wasm"\nroutes = ["/api/*", "/health"]\n'
        '[services.admin]\nwasm = "admin.wasm"\nroutes = ["/api/admin/*"]\n'
    )
    table = route_table(load_config(write(tmp_path, text)))
    assert next(name for route, name in table if route.matches(path)) == service


def test_reload_settings(tmp_path: Path) -> None:
    text = (
        "version = 1\n[daemon]\nwatch = false\ndrain_timeout = 2\nprobation = 0.5\nrollback_error_rate = 1\n"
        '[services.app]\nwasm = "app.wasm"\n'
    )
    daemon = parse_config(text, tmp_path / "services.toml").daemon
    assert (daemon.watch, daemon.drain_timeout, daemon.probation, daemon.rollback_error_rate) == (False, 2.0, 0.5, 1.0)
    assert daemon.slice == 0.0005
    bad = (
        'version = 1\n[daemon]\nwatch = "yes"\nrollback_error_rate = 0\nslice = 0.00001\n'
        '[services.app]\nwasm = "app.wasm"\nmax_sends = 0\n'
    )
    with pytest.raises(ConfigError) as info:
        parse_config(bad, tmp_path / "services.toml")
    assert info.value.problems == [
        ("daemon.watch", 'expected true or false, got string "yes"'),
        ("daemon.rollback_error_rate", "expected a number > 0 and <= 1 (1 disables rollback), got 0"),
        ("daemon.slice", "expected a number of seconds >= 0.0001, got 1e-05"),
        ("services.app.max_sends", "expected an integer >= 1, got 0"),
    ]


def test_cpu_setting(tmp_path: Path) -> None:
    def daemon(value: str) -> object:
        text = f'version = 1\n[daemon]\ncpu = {value}\n[services.app]\nwasm = "app.wasm"\n'
        return parse_config(text, tmp_path / "services.toml").daemon.cpu

    assert parse_config('version = 1\n[services.app]\nwasm = "app.wasm"\n', tmp_path / "s.toml").daemon.cpu == "auto"
    assert (daemon('"auto"'), daemon('"any"'), daemon("0"), daemon("3")) == ("auto", "any", 0, 3)
    expected = 'expected "auto", "any" or a CPU number 0..4095, got '
    for value, got in (
        ('"anny"', '"anny" (did you mean "any"?)'),
        ("-1", "-1"),
        ("true", "boolean true"),
        ("1.5", "float 1.5"),
        ("4096", "4096"),
        ("[0, 1]", "array"),
    ):
        with pytest.raises(ConfigError) as info:
            daemon(value)
        assert info.value.problems == [("daemon.cpu", expected + got)], value


def test_isolation_settings(tmp_path: Path) -> None:
    text = (
        'version = 1\n[services.app]\nwasm = "app.wasm"\non_full = "shed_oldest"\non_full_wait = 0.25\n'
        'max_failures = 3\nfailure_window = 2\nenv = { LANG = "C", MODE = "prod" }\n'
        'dirs = [{ host = "data", guest = "/data" }, { host = "/tmp/out", guest = "/out", write = true }]\n'
    )
    spec = parse_config(text, tmp_path / "services.toml").services[0]
    assert (spec.on_full, spec.on_full_wait, spec.max_failures, spec.failure_window) == ("shed_oldest", 0.25, 3, 2.0)
    assert spec.env == (("LANG", "C"), ("MODE", "prod"))
    assert spec.dirs == (
        DirGrant(host=tmp_path / "data", guest="/data", write=False),
        DirGrant(host=Path("/tmp/out"), guest="/out", write=True),
    )
    bad = (
        'version = 1\n[services.app]\nwasm = "app.wasm"\non_full = "drop"\nenv = { "1X" = "a", B = 2 }\n'
        'dirs = [{ host = "d", guest = "rel" }, { guest = "/g" }]\n'
    )
    with pytest.raises(ConfigError) as info:
        parse_config(bad, tmp_path / "services.toml")
    assert info.value.problems == [
        ("services.app.on_full", 'expected one of "reject", "wait", "shed_oldest", got "drop"'),
        ("services.app.env.1X", "invalid variable name: use letters, digits and _, not starting with a digit"),
        ("services.app.env.B", "expected a string without NUL, got integer 2"),
        ("services.app.dirs[0].guest", 'expected an absolute guest path such as "/data", got string "rel"'),
        ("services.app.dirs[1].host", 'missing required key: add host = "data"'),
    ]


def test_guest_log_settings(tmp_path: Path) -> None:
    """log_rate takes lines per second (an integer or a float), log_burst lines; both have documented defaults."""
    spec = parse_config(f"{MINIMAL}log_rate = 2.5\nlog_burst = 10\n", tmp_path / "services.toml").services[0]
    assert (spec.log_rate, spec.log_burst) == (2.5, 10)
    spec = parse_config(f"{MINIMAL}log_rate = 1000\n", tmp_path / "services.toml").services[0]
    assert (spec.log_rate, spec.log_burst) == (1000.0, 200)
    assert isinstance(spec.log_rate, float)
    default = parse_config(MINIMAL, tmp_path / "services.toml").services[0]
    assert (default.log_rate, default.log_burst) == (DEFAULT_LOG_RATE, DEFAULT_LOG_BURST) == (100.0, 200)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (
            "log_rate = 0",
            (
                "log_rate",
                "expected a number of lines per second > 0, got 0 (there is no unlimited: 1000000 lets "
                "nearly everything through)",
            ),
        ),
        (
            "log_rate = -1.5",
            (
                "log_rate",
                "expected a number of lines per second > 0, got -1.5 (there is no unlimited: 1000000 "
                "lets nearly everything through)",
            ),
        ),
        ("log_rate = 1_000_001", ("log_rate", "expected a number of lines per second <= 1000000, got 1000001")),
        ("log_rate = inf", ("log_rate", "expected a number of lines per second <= 1000000, got inf")),
        ("log_rate = nan", ("log_rate", "expected a number of lines per second, got nan")),
        ("log_rate = true", ("log_rate", "expected a number of lines per second, got boolean true")),
        ('log_rate = "100/s"', ("log_rate", 'expected a number of lines per second, got string "100/s"')),
        ("log_burst = 0", ("log_burst", "expected an integer >= 1, got 0")),
        ("log_burst = 1_000_001", ("log_burst", "expected an integer <= 1000000, got 1000001")),
        ("log_burst = 2.5", ("log_burst", "expected an integer 1..1000000, got float 2.5")),
        ("log_burst = false", ("log_burst", "expected an integer 1..1000000, got boolean false")),
        ("log_rte = 10", ("log_rte", 'unknown key (did you mean "log_rate"?)')),
        ("log_bursts = 10", ("log_bursts", 'unknown key (did you mean "log_burst"?)')),
    ],
)
def test_bad_guest_log_settings(tmp_path: Path, body: str, problem: tuple[str, str]) -> None:
    """log_rate must be a finite number > 0 (0 is not "unlimited"), log_burst an integer >= 1; typos get a
    did-you-mean."""
    key, message = problem
    assert service_problems(tmp_path, body) == [(f"services.app.{key}", message)]


def test_guest_log_problems_are_reported_with_the_others(tmp_path: Path) -> None:
    """Both keys join the one error with every other problem, in file order."""
    path = write(tmp_path, f"{MINIMAL}log_burst = 0\ninstances = 0\nlog_rate = 0.0\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [key for key, _ in info.value.problems] == [
        "services.app.log_burst",
        "services.app.instances",
        "services.app.log_rate",
    ]
    assert str(info.value).startswith(f"{path}: 3 problems\n  services.app.log_burst: expected an integer >= 1, got 0")
