"""Every ``CNERIUM_*`` config key with its default, the resolved settings, and ``AppConfig``."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from functools import cached_property

from flask import Flask

from .events import RealtimeConfig

KEY_COLUMN_LENGTH = 255
"""The longest key the store's ``idempotency_key`` column holds (a VARCHAR on PostgreSQL)."""

DEFAULTS: dict[str, object] = {
    "CNERIUM_NAME": None,  # app.name
    "CNERIUM_DATA_DIR": None,  # <instance_path>/cnerium
    "CNERIUM_NODE_ID": None,  # <hostname>-<pid>
    "CNERIUM_DATABASE": None,  # sqlite:///<DATA_DIR>/cnerium.db
    "CNERIUM_IDEMPOTENCY_HEADER": "Idempotency-Key",
    "CNERIUM_KEY_MAX_LENGTH": 255,
    "CNERIUM_KEY_TTL": 86400,
    "CNERIUM_LOCK_TIMEOUT": 60,
    "CNERIUM_IN_FLIGHT_WAIT": 0,
    "CNERIUM_MISMATCH_STATUS": 409,
    "CNERIUM_REALTIME_ENABLED": None,  # True when an endpoint is configured
    "CNERIUM_REALTIME_ENDPOINT": None,  # "/ws" when enabled without one
    "CNERIUM_REALTIME_HOST": None,
    "CNERIUM_REALTIME_PORT": None,
    "CNERIUM_REALTIME_BROKER": "memory",
    "CNERIUM_REALTIME_MAX_PAYLOAD": 65536,
    "CNERIUM_REALTIME_QUEUE_SIZE": 1000,
    "CNERIUM_REALTIME_MAX_ROOMS": 100,
    "CNERIUM_REALTIME_MAX_FRAME": 4096,
    "CNERIUM_REALTIME_HISTORY": 1000,
}


def default_node_id(pid: int | None = None) -> str:
    """``<hostname>-<pid>``: the node id of a process that was not given one."""
    return f"{socket.gethostname()}-{pid or os.getpid()}"


@dataclass(frozen=True)
class Settings:
    """The resolved configuration of one app, read once when Cnerium starts."""

    name: str
    data_dir: str
    node_id: str
    database_url: str
    idempotency_header: str
    key_max_length: int
    key_ttl: float
    lock_timeout: float
    in_flight_wait: float
    mismatch_status: int
    realtime: RealtimeConfig
    broker: str
    max_payload: int
    queue_size: int
    max_rooms: int
    max_frame: int
    history: int

    @cached_property
    def idempotency_environ_key(self) -> str:
        """The WSGI environ name of the idempotency header, e.g. ``HTTP_IDEMPOTENCY_KEY``:
        read directly on every durable request, without building ``request.headers``."""
        return "HTTP_" + self.idempotency_header.upper().replace("-", "_")

    @classmethod
    def from_app(cls, app: Flask) -> Settings:
        """Resolve every key of ``app.config``, filling the computed defaults."""
        c = app.config
        data_dir = c["CNERIUM_DATA_DIR"] or os.path.join(app.instance_path, "cnerium")
        endpoint = c["CNERIUM_REALTIME_ENDPOINT"]
        enabled = c["CNERIUM_REALTIME_ENABLED"]
        if enabled is None:
            enabled = endpoint is not None
        realtime = (RealtimeConfig.enabled(endpoint or "/ws", c["CNERIUM_REALTIME_HOST"]
                                           or "0.0.0.0", c["CNERIUM_REALTIME_PORT"])
                    if enabled else RealtimeConfig.disabled())
        mismatch = int(c["CNERIUM_MISMATCH_STATUS"])
        if mismatch not in (409, 422):
            raise ValueError("CNERIUM_MISMATCH_STATUS must be 409 or 422, not %r." % mismatch)
        key_max_length = int(c["CNERIUM_KEY_MAX_LENGTH"])
        if not 1 <= key_max_length <= KEY_COLUMN_LENGTH:
            raise ValueError(f"CNERIUM_KEY_MAX_LENGTH must be 1 to {KEY_COLUMN_LENGTH} (the "
                             f"store's key column), not {key_max_length!r}.")
        return cls(
            name=c["CNERIUM_NAME"] or app.name,
            data_dir=data_dir,
            node_id=c["CNERIUM_NODE_ID"] or default_node_id(),
            database_url=c["CNERIUM_DATABASE"]
            or "sqlite:///" + os.path.join(data_dir, "cnerium.db"),
            idempotency_header=c["CNERIUM_IDEMPOTENCY_HEADER"],
            key_max_length=key_max_length,
            key_ttl=float(c["CNERIUM_KEY_TTL"]),
            lock_timeout=float(c["CNERIUM_LOCK_TIMEOUT"]),
            in_flight_wait=float(c["CNERIUM_IN_FLIGHT_WAIT"]),
            mismatch_status=mismatch,
            realtime=realtime,
            broker=c["CNERIUM_REALTIME_BROKER"],
            max_payload=int(c["CNERIUM_REALTIME_MAX_PAYLOAD"]),
            queue_size=int(c["CNERIUM_REALTIME_QUEUE_SIZE"]),
            max_rooms=int(c["CNERIUM_REALTIME_MAX_ROOMS"]),
            max_frame=int(c["CNERIUM_REALTIME_MAX_FRAME"]),
            history=int(c["CNERIUM_REALTIME_HISTORY"]),
        )


def realtime_config_keys(realtime: RealtimeConfig) -> dict[str, object]:
    """The config keys that express ``realtime``."""
    if not realtime.enabled:
        return {"CNERIUM_REALTIME_ENABLED": False}
    return {"CNERIUM_REALTIME_ENABLED": True, "CNERIUM_REALTIME_ENDPOINT": realtime.endpoint,
            "CNERIUM_REALTIME_HOST": realtime.host, "CNERIUM_REALTIME_PORT": realtime.port}


@dataclass
class AppConfig:
    """The seed's configuration object, for apps that prefer it to config keys.

    ``Cnerium(app, config)`` applies it on top of ``app.config``; what it sets wins.
    """

    environment: str = "development"
    _keys: dict[str, object] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def development(cls) -> AppConfig:
        """Defaults for a developer's machine."""
        return cls(environment="development")

    @classmethod
    def production(cls) -> AppConfig:
        """Defaults for a deployed service (the same keys; the environment is recorded)."""
        return cls(environment="production")

    def set_name(self, name: str) -> AppConfig:
        """Set ``CNERIUM_NAME``."""
        self._keys["CNERIUM_NAME"] = name
        return self

    def set_data_dir(self, path: str | os.PathLike[str]) -> AppConfig:
        """Set ``CNERIUM_DATA_DIR``, where the embedded store lives."""
        self._keys["CNERIUM_DATA_DIR"] = os.fspath(path)
        return self

    def set_node_id(self, node_id: str) -> AppConfig:
        """Set ``CNERIUM_NODE_ID``, stamped on records and events."""
        self._keys["CNERIUM_NODE_ID"] = node_id
        return self

    def set_database(self, url: str) -> AppConfig:
        """Set ``CNERIUM_DATABASE`` (``sqlite:///…`` or ``postgresql://…``)."""
        self._keys["CNERIUM_DATABASE"] = url
        return self

    def enable_realtime(self, endpoint: str = "/ws", host: str = "0.0.0.0",
                        port: int | None = None) -> AppConfig:
        """Serve realtime events at ``endpoint``; ``host``/``port`` are the public address."""
        self._keys.update(realtime_config_keys(RealtimeConfig.enabled(endpoint, host, port)))
        return self

    def disable_realtime(self) -> AppConfig:
        """Turn realtime off."""
        self._keys.update(realtime_config_keys(RealtimeConfig.disabled()))
        return self

    def apply(self, config: dict) -> None:
        """Write what this object sets into a Flask ``app.config``."""
        config.update(self._keys)
