"""Event, EventPayload and RealtimeConfig: what an application says happened."""

from __future__ import annotations

from typing import Any

EventPayload = dict[str, Any]
"""An event's payload: a JSON object."""


class _FactoryOrFlag:
    """``RealtimeConfig.enabled(...)`` builds a config; ``config.enabled`` is its flag."""

    def __get__(self, obj: RealtimeConfig | None, owner: type) -> Any:
        if obj is None:
            return owner._make_enabled
        return obj._enabled


class RealtimeConfig:
    """Whether realtime is on, its WebSocket endpoint, and the public host and port."""

    __slots__ = ("_enabled", "endpoint", "host", "port")
    enabled = _FactoryOrFlag()

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
