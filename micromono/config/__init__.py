"""The `services.toml` manifest, version 1: what it may say, and the strict parser that reads it.

`from micromono.config import X` is the way in for the rest of micromono; the package is split by concern:

* `spec.py`: the frozen dataclasses (`Config`, `DaemonSpec`, `ServiceSpec`, `Address`, `Route`, `DirGrant`),
  their defaults and bounds, and `route_table()`. What the TOML says, immutable (STYLE rules 7 and 8).
* `parser.py`: `load_config()` and `parse_config()`, the schema walk that rejects unknown keys and collects every
  problem into one `ConfigError` (rule 9).
* `readers.py`: one TOML value into a typed value, or a recorded problem (integers, seconds, sizes, choices).
* `text.py`: size units and size strings, and how messages quote what the user wrote.

Nothing here checks that `.wasm` files exist, compiles, binds or logs: `load_config()` reads one file and touches
nothing else (rule 11); `Daemon.startup()` does the rest. docs/configuration.md is the reference for the schema.
"""

from __future__ import annotations

from micromono.errors import ConfigError

from .parser import load_config, parse_config
from .spec import (
    CONFIG_VERSION,
    DEFAULT_CACHE_DIR,
    DEFAULT_CACHE_MAX_BYTES,
    DEFAULT_CALL_TIMEOUT,
    DEFAULT_DATA_DIR,
    DEFAULT_GRACEFUL_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_INSTANCES,
    DEFAULT_LISTEN,
    DEFAULT_LOG_BURST,
    DEFAULT_LOG_FORMAT,
    DEFAULT_LOG_LEVEL,
    DEFAULT_LOG_RATE,
    DEFAULT_MAILBOX,
    DEFAULT_MAX_CALL_DEPTH,
    DEFAULT_MAX_LIVE,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_SENDS,
    DEFAULT_MEMORY_LIMIT_BYTES,
    DEFAULT_METRICS_LISTEN,
    DEFAULT_SLICE,
    DEFAULT_STORAGE_LIMIT_BYTES,
    KEY_SEGMENT,
    LOG_FORMATS,
    LOG_LEVELS,
    MAX_CALL_DEPTH,
    MAX_CALL_TIMEOUT,
    MAX_GRACEFUL_TIMEOUT,
    MAX_IDLE_TIMEOUT,
    MAX_INSTANCES,
    MAX_KEY_BYTES,
    MAX_LIVE,
    MAX_LOG_BURST,
    MAX_LOG_RATE,
    MAX_MAILBOX,
    MAX_MEMORY_LIMIT_BYTES,
    MAX_STORAGE_LIMIT_BYTES,
    MIN_MEMORY_LIMIT_BYTES,
    MIN_STORAGE_LIMIT_BYTES,
    SERVICE_KINDS,
    SYNC_MODES,
    Address,
    Config,
    DaemonSpec,
    DirGrant,
    Route,
    ServiceSpec,
    route_table,
)
from .text import GiB, KiB, MiB

__all__ = [
    "DEFAULT_DATA_DIR",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_LIVE",
    "DEFAULT_STORAGE_LIMIT_BYTES",
    "KEY_SEGMENT",
    "MAX_IDLE_TIMEOUT",
    "MAX_KEY_BYTES",
    "MAX_LIVE",
    "MAX_STORAGE_LIMIT_BYTES",
    "MIN_STORAGE_LIMIT_BYTES",
    "SERVICE_KINDS",
    "SYNC_MODES",
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
    "DEFAULT_MAX_SENDS",
    "DEFAULT_MEMORY_LIMIT_BYTES",
    "DEFAULT_METRICS_LISTEN",
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
    "DirGrant",
    "GiB",
    "KiB",
    "MiB",
    "Route",
    "ServiceSpec",
    "load_config",
    "parse_config",
    "route_table",
]
