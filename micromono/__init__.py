"""micromono: a micro-monolith runtime. Many services, each a WebAssembly module, in one process.

The supported Python API is what `__all__` lists; everything else may change between releases.
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._accelerate import compiled_path

if compiled_path is not None:  # the compiled path is in use (_accelerate decides): the mypyc-built modules first
    __path__.insert(0, compiled_path)

from .config import Config, load_config
from .daemon import Daemon, StartupError, run
from .errors import (
    CallDepthExceeded,
    CallForbidden,
    CallTimeout,
    ConfigError,
    GuestAppError,
    GuestTrap,
    MicromonoError,
    Overloaded,
    RequestTooLarge,
    ServiceCallError,
    ServiceLoadError,
    ServiceUnavailable,
    UnknownService,
)

__all__ = [
    "__version__",
    "Config",
    "load_config",
    "Daemon",
    "StartupError",
    "run",
    "MicromonoError",
    "ConfigError",
    "ServiceLoadError",
    "ServiceCallError",
    "UnknownService",
    "CallForbidden",
    "Overloaded",
    "GuestTrap",
    "CallTimeout",
    "CallDepthExceeded",
    "GuestAppError",
    "RequestTooLarge",
    "ServiceUnavailable",
]
