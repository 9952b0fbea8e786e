"""structlog configuration: console or JSON lines on stderr or stdout. Called only by `cli.py` and tests
(STYLE rule 19).

Every other module holds `log = structlog.get_logger(__name__)` and emits events named
`component.action.outcome` with key-value fields, never formatted strings.
"""

from __future__ import annotations

import logging
import sys
from typing import Final, TextIO

import structlog

__all__ = ["configure", "LEVELS", "FORMATS"]

LEVELS: Final = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
FORMATS: Final = ("console", "json")


def configure(log_format: str = "console", level: str = "info", stream: TextIO | None = None) -> None:
    """Send micromono's events to `stream` (stderr by default) as console lines or JSON objects.

    Args:
        log_format: "console" (human-readable, colours only on a terminal) or "json" (one object per line).
        level: the lowest level written: "debug", "info", "warning" or "error".
        stream: where the lines go (`daemon.log_output` picks stderr or stdout); stderr by default.
    """
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {log_format!r}")
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    out = stream if stream is not None else sys.stderr
    renderer: structlog.types.Processor
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
