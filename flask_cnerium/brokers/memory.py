"""The ``memory`` broker: one process, so publishing is delivering."""

from __future__ import annotations

import logging
import os
import re
import shlex
import sys

from .base import Broker

log = logging.getLogger("flask_cnerium")


class MemoryBroker(Broker):
    """Delivers each message straight to this process's connections, in the caller's thread.

    Clients connected to another worker process never see it: use a shared broker there.
    """

    def start(self) -> None:
        """Warn when this process is one of several gunicorn workers."""
        workers = gunicorn_workers()
        if workers > 1:
            log.warning(
                "CNERIUM_REALTIME_BROKER is 'memory' but gunicorn runs %d workers: an event "
                "reaches only the clients connected to the worker that emitted it. Set "
                "CNERIUM_REALTIME_BROKER to redis://… or postgresql (see docs/deploy.md).",
                workers)

    def publish(self, room: str | None, message: str) -> None:
        """Write ``message`` to the local connections of ``room`` (``None``: everyone)."""
        self.deliver(room, message)


def gunicorn_workers() -> int:
    """How many workers the gunicorn master of this process runs; 1 outside gunicorn.

    The larger of what gunicorn was told (``-w``/``--workers`` on its command line or in
    ``GUNICORN_CMD_ARGS``, else ``WEB_CONCURRENCY``) and the master's children right now.
    """
    if not os.environ.get("SERVER_SOFTWARE", "").startswith("gunicorn"):
        return 1
    return max(_configured_workers(), _sibling_processes())


def _configured_workers() -> int:
    words = sys.argv[1:] + shlex.split(os.environ.get("GUNICORN_CMD_ARGS", ""))
    found = int(os.environ.get("WEB_CONCURRENCY", "1") or 1)
    for word, following in zip(words, [*words[1:], ""], strict=True):
        match = re.fullmatch(r"(?:-w|--workers)=?(\d*)", word)
        if match:
            value = match.group(1) or following
            found = int(value) if value.isdigit() else found
    return found


def _sibling_processes() -> int:
    master = os.getppid()
    try:
        with open(f"/proc/{master}/task/{master}/children") as children:
            return len(children.read().split())
    except OSError:
        return 1
