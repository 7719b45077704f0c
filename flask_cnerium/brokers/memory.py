"""The ``memory`` broker: one process, so publishing is delivering."""

from __future__ import annotations

from .base import Broker


class MemoryBroker(Broker):
    """Delivers each message straight to this process's connections, in the caller's thread.

    Clients connected to another worker process never see it: use a shared broker there.
    """

    def publish(self, room: str | None, message: str) -> None:
        """Write ``message`` to the local connections of ``room`` (``None``: everyone)."""
        self.deliver(room, message)
