"""Event, EventPayload and RealtimeConfig: what an application says happened."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

EventPayload = dict[str, Any]
"""An event's payload: a JSON object."""

RESERVED_PREFIX = "cnerium."
"""Event types starting with this are the WebSocket protocol's own control frames."""

_TYPE = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)+")
_ROOM = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def check_event_type(type: str) -> str:
    """``type`` if it is a dotted fact name (``order.created``); ``ValueError`` otherwise."""
    if not isinstance(type, str) or len(type) > 128 or not _TYPE.fullmatch(type):
        raise ValueError(f"Invalid event type {type!r}: use a dotted fact name of at most 128 "
                         "characters such as 'order.created' (letters, digits, '_' and '-' "
                         "between the dots).")
    if type.startswith(RESERVED_PREFIX):
        raise ValueError(f"Invalid event type {type!r}: types starting with "
                         f"{RESERVED_PREFIX!r} are reserved for the protocol's control frames.")
    return type


def check_room(room: str) -> str:
    """``room`` if it is 1-128 characters of ``[A-Za-z0-9_.:-]``; ``ValueError`` otherwise."""
    if not isinstance(room, str) or not _ROOM.fullmatch(room):
        raise ValueError(f"Invalid room {room!r}: use 1 to 128 letters, digits or '_.:-' "
                         "(e.g. 'orders', 'shop:42', 'user:123').")
    return room


@dataclass(frozen=True)
class Event:
    """A fact that happened: a dotted ``type`` and a JSON-object ``payload``.

    Invalid types and payloads that are not a JSON-serializable object raise ``ValueError``.
    """

    type: str
    """A stable dotted fact name, e.g. ``order.created``."""
    payload: EventPayload = field(default=None, hash=False)  # type: ignore[assignment]
    """The JSON object sent with the event; ``None`` becomes ``{}``."""
    payload_json: str = field(init=False, repr=False, compare=False, hash=False)
    """The payload serialized once, as it goes on the wire."""

    def __post_init__(self) -> None:
        check_event_type(self.type)
        payload = {} if self.payload is None else self.payload
        if not isinstance(payload, dict):
            raise ValueError(f"An event payload must be a JSON object (a dict), not "
                             f"{type(payload).__name__}.")
        try:
            encoded = json.dumps(payload, separators=(",", ":"), ensure_ascii=False,
                                 allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"The payload of {self.type!r} is not JSON-serializable: {exc}."
                             ) from None
        object.__setattr__(self, "payload", payload)
        object.__setattr__(self, "payload_json", encoded)

    def check_size(self, limit: int) -> Event:
        """This event, or ``ValueError`` when its serialized payload exceeds ``limit`` bytes."""
        size = len(self.payload_json.encode())
        if size > limit:
            raise ValueError(f"The payload of {self.type!r} is {size} bytes serialized, over "
                             f"CNERIUM_REALTIME_MAX_PAYLOAD ({limit}). Send an id and let "
                             "clients fetch the rest through a normal route.")
        return self


@dataclass(frozen=True, slots=True)
class PublishedEvent:
    """An event as it was published: the event, its room (``None``: everyone) and its id."""

    event: Event
    """The event that was emitted."""
    room: str | None
    """The room it went to; ``None`` for a broadcast to every client."""
    id: str
    """Its unique id; derived from the scope, key and position inside a durable handler."""
    ts: str
    """When it was published: an RFC 3339 UTC timestamp."""
    node: str
    """The ``CNERIUM_NODE_ID`` of the process that published it."""

    @property
    def type(self) -> str:
        """The event's type."""
        return self.event.type

    @property
    def payload(self) -> EventPayload:
        """The event's payload."""
        return self.event.payload


class _FactoryOrFlag:
    """``RealtimeConfig.enabled(...)`` builds a config; ``config.enabled`` is its flag."""

    def __get__(self, obj: RealtimeConfig | None, owner: type) -> Any:
        if obj is None:
            return owner._make_enabled
        return obj._enabled


class RealtimeConfig:
    """Whether realtime is on, its WebSocket endpoint, and the public host and port.

    Immutable. Fields: ``enabled``, ``endpoint``, ``host``, ``port`` (``host``/``port`` are
    the address clients are told to use; no second server is started).
    """

    __slots__ = ("_enabled", "endpoint", "host", "port")
    enabled = _FactoryOrFlag()
    """On the class, ``RealtimeConfig.enabled(endpoint="/ws", host="0.0.0.0", port=None)``
    builds a config with realtime on; on an instance, whether realtime is on (a bool)."""

    def __init__(self, enabled: bool = False, endpoint: str = "/ws", host: str = "0.0.0.0",
                 port: int | None = None) -> None:
        for name, value in (("_enabled", bool(enabled)), ("endpoint", endpoint),
                            ("host", host), ("port", port)):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("RealtimeConfig is immutable; build a new one.")

    @classmethod
    def _make_enabled(cls, endpoint: str = "/ws", host: str = "0.0.0.0",
                      port: int | None = None) -> RealtimeConfig:
        """Realtime on at ``endpoint``; ``host`` and ``port`` are what clients are told."""
        return cls(True, endpoint, host, port)

    @classmethod
    def disabled(cls) -> RealtimeConfig:
        """Realtime off."""
        return cls(False)

    def _astuple(self) -> tuple:
        return (self._enabled, self.endpoint, self.host, self.port)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RealtimeConfig) and self._astuple() == other._astuple()

    def __hash__(self) -> int:
        return hash(self._astuple())

    def __repr__(self) -> str:
        return "RealtimeConfig(enabled=%r, endpoint=%r, host=%r, port=%r)" % self._astuple()
