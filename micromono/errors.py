"""The micromono exception hierarchy.

Every error a user or a calling guest can see is one of these. Each message names what was wrong, where (service,
file, key path) and what to do. The engine package (`micromono/engine/`) translates wasmtime's exceptions into these
once, at the boundary; nothing above it catches a wasmtime type.

Each call error carries `abi_code`, the negative code a calling guest receives from `micromono.call` (see
docs/abi.md; defined once, in `abi.py`), and `http_status`, the status ingress answers with.
"""

from __future__ import annotations

from typing import ClassVar

from .abi import (
    MM_ERR_APP,
    MM_ERR_DEPTH,
    MM_ERR_FORBIDDEN,
    MM_ERR_INVALID,
    MM_ERR_OVERLOADED,
    MM_ERR_TIMEOUT,
    MM_ERR_TOO_LARGE,
    MM_ERR_TRAP,
    MM_ERR_UNAVAILABLE,
    MM_ERR_UNKNOWN_TARGET,
)

__all__ = [
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
    "AbiViolation",
    "MigrationFailed",
    "StorageUnavailable",
    "BadActorKey",
]


class MicromonoError(Exception):
    """Base class of every error micromono raises on purpose."""


class ConfigError(MicromonoError):
    """`services.toml` is unreadable or invalid. Carries every problem found, not just the first.

    Args:
        path: the manifest file.
        problems: `(key_path, message)` pairs; an empty key path means the whole file.
    """

    def __init__(self, path: str, problems: list[tuple[str, str]]) -> None:
        self.path = path
        self.problems = list(problems)
        super().__init__(self._format())

    def _format(self) -> str:
        n = len(self.problems)
        head = f"{self.path}: {n} problem{'s' if n != 1 else ''}"
        lines = [f"  {key}: {msg}" if key else f"  {msg}" for key, msg in self.problems]
        return "\n".join([head, *lines])


class ServiceLoadError(MicromonoError):
    """A service's module could not be read, compiled, linked or instantiated, or breaks the guest ABI."""

    def __init__(self, service: str, wasm: str, reason: str) -> None:
        self.service = service
        self.wasm = wasm
        self.reason = reason
        super().__init__(f"service {service!r} ({wasm}): {reason}")


class ServiceCallError(MicromonoError):
    """A call to a service failed. Subclasses say why."""

    abi_code: ClassVar[int] = MM_ERR_TRAP
    http_status: ClassVar[int] = 500
    kind: ClassVar[str] = "error"

    def __init__(self, service: str, message: str) -> None:
        self.service = service
        self.message = message
        super().__init__(message)


class UnknownService(ServiceCallError):
    """The target of a call or send names no loaded service."""

    abi_code = MM_ERR_UNKNOWN_TARGET
    http_status = 502
    kind = "unknown_target"


class CallForbidden(ServiceCallError):
    """The target is not in the caller's `calls` allowlist."""

    abi_code = MM_ERR_FORBIDDEN
    http_status = 500
    kind = "forbidden"


class Overloaded(ServiceCallError):
    """The service has no free instance (pool at its limit) or its mailbox is full."""

    abi_code = MM_ERR_OVERLOADED
    http_status = 503
    kind = "overloaded"


class GuestTrap(ServiceCallError):
    """The guest trapped. `trap` is wasmtime's message, including the wasm backtrace when there is one."""

    abi_code = MM_ERR_TRAP
    http_status = 500
    kind = "trap"

    def __init__(self, service: str, message: str, trap: str = "") -> None:
        self.trap = trap
        super().__init__(service, message)


class AbiViolation(GuestTrap):
    """The guest broke the ABI (a reply outside its memory, a malformed HTTP reply, …)."""

    kind = "abi_violation"


class CallTimeout(ServiceCallError):
    """The guest ran past its deadline and was interrupted."""

    abi_code = MM_ERR_TIMEOUT
    http_status = 504
    kind = "timeout"

    @classmethod
    def interrupted(cls, service: str) -> CallTimeout:
        """The error of a run stopped at its deadline (by the engine, or answered by the router for a starved one)."""
        return cls(service, f"service {service!r} ran past its deadline and was interrupted")


class CallDepthExceeded(ServiceCallError):
    """A call chain grew deeper than the daemon's `max_call_depth`."""

    abi_code = MM_ERR_DEPTH
    http_status = 500
    kind = "depth"


class GuestAppError(ServiceCallError):
    """The guest's `mm_handle` returned a negative value: an application error with code `code`."""

    abi_code = MM_ERR_APP
    http_status = 500
    kind = "app_error"

    def __init__(self, service: str, message: str, code: int) -> None:
        self.code = code
        super().__init__(service, message)


class RequestTooLarge(ServiceCallError):
    """The request exceeds `max_request_bytes` or the guest could not provide an inbox for it."""

    abi_code = MM_ERR_TOO_LARGE
    http_status = 413
    kind = "too_large"


class ServiceUnavailable(ServiceCallError):
    """The service is stopping or stopped."""

    abi_code = MM_ERR_UNAVAILABLE
    http_status = 503
    kind = "unavailable"


class MigrationFailed(GuestTrap):
    """An actor's `mm_migrate` refused (a non-zero result) or trapped: its message is rolled back and fails, and
    it counts against the version like a trap (docs/abi.md, "Actors")."""

    kind = "migration"


class StorageUnavailable(ServiceUnavailable):
    """An actor's storage cannot serve it: a commit failed (disk full, I/O error), its database did not open, or
    its data was written by a newer schema than the running build's."""

    kind = "storage"


class BadActorKey(ServiceCallError):
    """An actor key that is empty, too long, or not UTF-8 (HTTP 400, `MM_ERR_INVALID` to a calling guest)."""

    abi_code = MM_ERR_INVALID
    http_status = 400
    kind = "bad_key"
