"""flask-cnerium: durable, retry-safe POST routes and realtime events for Flask."""

from .config import AppConfig
from .durable import DurableRequest, DurableResponse, created
from .events import EventPayload, RealtimeConfig
from .extension import Cnerium

__all__ = [
    "AppConfig",
    "Cnerium",
    "DurableRequest",
    "DurableResponse",
    "EventPayload",
    "RealtimeConfig",
    "created",
]
