"""The live page's files (`static/`: index.html, console.js, console.css, favicon.svg), shipped as package data and
served as they are: no build step, no framework, nothing fetched from anywhere but the daemon.

Owns which admin paths are the page's, their content types and the headers that keep the page on this machine: a
Content-Security-Policy of `default-src 'self'` (no script, style, font, image or connection from elsewhere, no
inline script or style). The files are read once, when the daemon binds its admin listener; the answers are those
bytes. It must not read live objects or serve HTTP itself: admin.py answers with what `StaticFiles.get` returns.
"""

from __future__ import annotations

from importlib import resources
from typing import Final, NamedTuple

__all__ = ["CSP", "PAGE_PATHS", "StaticFile", "StaticFiles"]

#: The page's Content-Security-Policy: only this origin, no inline code, not framed, no forms, no <base>.
CSP: Final = "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

#: Admin path -> (file under static/, content type). `/` and `/console` are the page too.
PAGE_PATHS: Final = {
    b"/": ("index.html", "text/html; charset=utf-8"),
    b"/console": ("index.html", "text/html; charset=utf-8"),
    b"/console/": ("index.html", "text/html; charset=utf-8"),
    b"/console/index.html": ("index.html", "text/html; charset=utf-8"),
    b"/console/console.js": ("console.js", "text/javascript; charset=utf-8"),
    b"/console/console.css": ("console.css", "text/css; charset=utf-8"),
    b"/console/favicon.svg": ("favicon.svg", "image/svg+xml"),
    b"/favicon.ico": ("favicon.svg", "image/svg+xml"),
}


class StaticFile(NamedTuple):
    """One file as served: its content type, the extra header lines (CRLF-terminated) and its bytes."""

    content_type: bytes
    headers: bytes
    body: bytes


class StaticFiles:
    """The page's files, read from the package once.

    Raises:
        FileNotFoundError: a file is missing from the installed package (a packaging error: reinstall micromono).
    """

    def __init__(self) -> None:
        folder = resources.files(__package__ or "micromono.console").joinpath("static")
        headers = (
            f"content-security-policy: {CSP}\r\n"
            "x-content-type-options: nosniff\r\n"
            "referrer-policy: no-referrer\r\n"
            "cache-control: no-cache\r\n"
        ).encode()
        bodies: dict[str, bytes] = {}
        self._files: dict[bytes, StaticFile] = {}
        for path, (name, content_type) in PAGE_PATHS.items():
            if name not in bodies:
                bodies[name] = folder.joinpath(name).read_bytes()
            self._files[path] = StaticFile(content_type.encode(), headers, bodies[name])

    def get(self, path: bytes) -> StaticFile | None:
        """The file served at admin path `path`, or None when it is not one of the page's."""
        return self._files.get(path)
