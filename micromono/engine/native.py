"""The compiled path's instance: `CompiledInstance`, whose `begin` runs through micromono._speedups.

Owns only the hand-off to `_speedups.begin` (which does the copy in, the async call's first slice and the reply
copy in one C call) and the reading of what it hands back; everything unusual goes back to the pure path, which
gives the same results. An Engine made with `compiled=True` makes these instead of `Instance`s, so the choice of
path is made once per Engine and costs the hot path nothing. It must not differ from `Instance.begin` in any result.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from ctypes import c_void_p
from typing import Any, Final

from micromono._accelerate import speedups as _speedups

from .ffi import _NOWHERE, _at, _call_async, _future_delete, _future_poll, _set_epoch_deadline
from .instance import Instance

__all__ = ["CompiledInstance"]

# What `_speedups.begin` hands back besides a reply: (code, value).
_TOO_LARGE: Final = 1  # the request is larger than the inbox (value 0)
_FAILED: Final = 2  # the guest trapped or failed (value 0)
_SUSPENDED: Final = 4  # the guest gave up its slice (value: the future's address)


def _not_built(*args: Any) -> Any:
    raise RuntimeError("micromono._speedups is not usable: the compiled path cannot run")


_begin: Callable[..., Any] = _not_built
if _speedups is not None:
    _speedups.set_calls(
        ctypes.cast(_call_async, c_void_p).value,
        ctypes.cast(_future_poll, c_void_p).value,
        ctypes.cast(_future_delete, c_void_p).value,
        ctypes.cast(_set_epoch_deadline, c_void_p).value,
    )
    _begin = _speedups.begin


class CompiledInstance(Instance):
    """An `Instance` whose `begin` runs through micromono._speedups (its Engine's ticker is the native one, which
    `_speedups.begin` marks busy itself)."""

    __slots__ = ()

    def begin(self, kind: int, request: bytes | memoryview) -> bytes | None:
        """`Instance.begin` through micromono._speedups: the same results and exceptions."""
        cur = self._cur
        prev = cur.active
        cur.active = self
        result = _begin(self._fast, self.view, kind, request)
        cur.active = prev
        if result.__class__ is bytes:
            return result
        code, value = result
        if code == _SUSPENDED:
            self._future = _at(_NOWHERE, value)
            return None
        if code == _TOO_LARGE:
            return Instance.begin(self, kind, request)  # the pure path grows the inbox
        if code == _FAILED:
            self._raise_failure()
        return self._reply()  # CHECK_REPLY: the result is in the values, as the pure path leaves it
