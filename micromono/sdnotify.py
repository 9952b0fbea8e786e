"""systemd's readiness protocol (`sd_notify(3)`), with the stdlib only: one datagram to `$NOTIFY_SOCKET`.

`Type=notify` in deploy/micromono.service lets systemd (and `systemctl start`, and units ordered after this one)
wait until the daemon serves, not merely until the process exists. Outside systemd `$NOTIFY_SOCKET` is unset and
`notify()` does nothing. Failures are ignored, as libsystemd's own `sd_notify` does: readiness reports are advisory.
"""

from __future__ import annotations

import os
import socket

__all__ = ["notify"]


def notify(*fields: str) -> bool:
    """Send `fields` (e.g. "READY=1", "STATUS=serving") to systemd's notification socket, if there is one.

    Returns:
        True if a datagram was sent.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not fields:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        return False  # vsock and other forms: not used by a service manager on the same host
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(fields).encode())
    except OSError:
        return False
    return True
