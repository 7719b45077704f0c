"""gunicorn settings shared by every realtime server the benchmarks start.

Loopback's 64 KiB MSS makes Linux give each accepted socket megabytes of send buffer; a real
network gives about 100 KB. Accepted sockets inherit the listening socket's ``SO_SNDBUF``,
so setting it there makes a client that stops reading fill up as it would in production
(the same value tests/live.py uses; the kernel doubles it).
"""

from __future__ import annotations

import socket

SNDBUF = 64 * 1024
control_socket_disable = True
"""gunicorn 27+: no control socket (every instance would share ~/.gunicorn/gunicorn.ctl)."""


def when_ready(server) -> None:
    """Give the listening sockets (and so every accepted one) a realistic send buffer."""
    for listener in server.LISTENERS:
        listener.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
