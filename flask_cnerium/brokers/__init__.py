"""Brokers carry event messages between processes; ``create_broker`` picks one by name/URL."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .base import Broker, BrokerError, Deliver, ListeningBroker
from .memory import MemoryBroker
from .postgres import PostgresBroker
from .redis import RedisBroker

if TYPE_CHECKING:
    import peewee

    from ..config import Settings

BROKERS: dict[str, type[Broker]] = {
    "memory": MemoryBroker,
    "redis": RedisBroker,
    "rediss": RedisBroker,
    "postgresql": PostgresBroker,
    "postgres": PostgresBroker,
}
"""Broker classes by ``CNERIUM_REALTIME_BROKER`` name or URL scheme.

redis-py and psycopg2 are imported only when their broker is created, so the library works
without the ``redis`` and ``postgres`` extras.
"""

__all__ = ["BROKERS", "Broker", "BrokerError", "Deliver", "ListeningBroker", "MemoryBroker",
           "PostgresBroker", "RedisBroker", "create_broker"]


def create_broker(url: str, deliver: Deliver, *, settings: Settings | None = None,
                  database: peewee.Database | None = None) -> Broker:
    """The broker that ``CNERIUM_REALTIME_BROKER`` names (``memory`` or ``scheme://…``).

    ``settings`` are the app's settings and ``database`` the store's peewee database (the
    ``postgresql`` broker listens on it).
    """
    name = urlsplit(url).scheme or url
    try:
        broker_class = BROKERS[name]
    except KeyError:
        raise ValueError(f"Unknown CNERIUM_REALTIME_BROKER {url!r}: use one of "
                         f"{', '.join(sorted(BROKERS))}.") from None
    return broker_class(url, deliver, settings=settings, database=database)
