"""Brokers carry event messages between processes; ``create_broker`` picks one by name/URL."""

from __future__ import annotations

from urllib.parse import urlsplit

from .base import Broker, BrokerError, Deliver
from .memory import MemoryBroker

BROKERS: dict[str, type[Broker]] = {"memory": MemoryBroker}
"""Broker classes by ``CNERIUM_REALTIME_BROKER`` name or URL scheme."""

__all__ = ["BROKERS", "Broker", "BrokerError", "Deliver", "MemoryBroker", "create_broker"]


def create_broker(url: str, deliver: Deliver) -> Broker:
    """The broker that ``CNERIUM_REALTIME_BROKER`` names (``memory`` or ``scheme://…``)."""
    name = urlsplit(url).scheme or url
    try:
        broker_class = BROKERS[name]
    except KeyError:
        raise ValueError(f"Unknown CNERIUM_REALTIME_BROKER {url!r}: use one of "
                         f"{', '.join(sorted(BROKERS))}.") from None
    return broker_class(url, deliver)
