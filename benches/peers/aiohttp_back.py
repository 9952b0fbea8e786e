"""bench_call's aiohttp callee: the echo server of aiohttp_echo.py (`POST /echo` returns the body).

A separate file only so that the process list and the bench output name each process by its role.
"""

from __future__ import annotations

from aiohttp_echo import main  # this directory is sys.path[0] when run as a script

if __name__ == "__main__":
    main()
