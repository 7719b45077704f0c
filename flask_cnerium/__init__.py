"""flask-cnerium: durable, retry-safe POST routes and realtime events for Flask."""

from .config import AppConfig
from .durable import DurableRequest, DurableResponse, created
from .events import Event, EventPayload, PublishedEvent, RealtimeConfig
from .extension import Cnerium

__all__ = [
    "AppConfig",
    "Cnerium",
    "DurableRequest",
    "DurableResponse",
    "Event",
    "EventPayload",
    "PublishedEvent",
    "RealtimeConfig",
    "created",
]
