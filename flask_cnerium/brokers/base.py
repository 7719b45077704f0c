"""The broker seam: how an event message reaches the connections of every process.

Modeled on python-socketio's ``PubSubManager`` (``_publish`` / ``_listen``): the realtime
hub hands :meth:`Broker.publish` a finished event message (its JSON text) and the room it is
for; every process's broker hands what it hears to ``deliver(room, message)``, which writes
it to that process's own connections.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import CneriumError

Deliver = Callable[[str | None, str], None]
"""``deliver(room, message)``: write one event message to this process's connections."""


class BrokerError(CneriumError):
    """The broker could not take a message (e.g. its server is unreachable)."""


class Broker:
    """Carries event messages from the process that emits them to every process."""

    def __init__(self, url: str, deliver: Deliver) -> None:
        self.url = url
        self.deliver = deliver

    def start(self) -> None:
        """Begin listening; brokers that have nothing to listen to need not override it."""

    def publish(self, room: str | None, message: str) -> None:
        """Send ``message`` for ``room`` (``None``: everyone); ``BrokerError`` if it cannot."""
        raise NotImplementedError
