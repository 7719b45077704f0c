"""emit / emit_to, the hold-until-commit buffer of durable handlers, and the realtime hub."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from flask import Flask

from . import signals
from .brokers import create_broker
from .events import Event, EventPayload, PublishedEvent
from .forking import in_forked_children
from .websocket import Fanout

if TYPE_CHECKING:
    import peewee

    from .config import Settings

log = logging.getLogger("flask_cnerium")


_HOLD: ContextVar[tuple[Flask, list] | None] = ContextVar("cnerium_hold", default=None)
"""The app and hold buffer of the durable handler running in this context, if any."""


class HeldEvents:
    """Hold the events ``app``'s durable handler emits in ``held`` until its record commits.

    A context variable rather than ``flask.g``: it is set and reset on every durable request,
    and setting ``g`` through its proxies cost more (``docs/performance.md``).
    """

    __slots__ = ("_hold", "_token")

    def __init__(self, app: Flask, held: list) -> None:
        self._hold = (app, held)

    def __enter__(self) -> list:
        self._token = _HOLD.set(self._hold)
        return self._hold[1]

    def __exit__(self, *exc_info: object) -> None:
        _HOLD.reset(self._token)


class RealtimeHub:
    """One app's realtime layer: event ids and messages, the broker, the local fanout."""

    def __init__(self, settings: Settings, database: peewee.Database | None = None) -> None:
        self.settings = settings
        self.fanout = Fanout(settings.queue_size)
        self.broker = create_broker(settings.broker, self.fanout.deliver, settings=settings,
                                    database=database)
        self._node = json.dumps(settings.node_id)
        self._new_ids()
        in_forked_children(self._new_ids)

    def use_settings(self, settings: Settings) -> None:
        """Adopt new settings (a forked worker's own node id)."""
        self.settings = settings
        self._node = json.dumps(settings.node_id)

    def _new_ids(self) -> None:
        """A fresh id prefix, also in each child forked after it (gunicorn ``--preload``)."""
        self._id_prefix = secrets.token_hex(6)
        self._counter = itertools.count(1)

    def start(self) -> RealtimeHub:
        """Start the broker's listener; returns the hub."""
        self.broker.start()
        return self

    def stop(self) -> None:
        """Stop the broker's listener and close its connections."""
        self.broker.stop()

    def next_id(self) -> str:
        """A fresh event id, unique to this hub."""
        return f"{self._id_prefix}{next(self._counter):x}"

    def publish(self, app: Flask, room: str | None, event: Event, event_id: str) -> bool:
        """Hand ``event`` to the broker now; ``False`` (logged) when the broker fails."""
        ts = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        published = PublishedEvent(event, room, event_id, ts, self.settings.node_id)
        try:
            self.broker.publish(room, self._message(published))
        except Exception:
            log.warning("Event %s (%s) could not be published.", event.type, event_id,
                        exc_info=True)
            return False
        signals.event_emitted.send(app, event=published, room=room)
        return True

    def _message(self, published: PublishedEvent) -> str:
        """The event frame of SPEC §3.1, built around the payload serialized once.

        Types, rooms, ids and timestamps are validated or generated ASCII without quotes or
        backslashes, so they are written as JSON strings directly.
        """
        room = "null" if published.room is None else f'"{published.room}"'
        return (f'{{"type":"{published.type}","payload":{published.event.payload_json},'
                f'"room":{room},"id":"{published.id}","ts":"{published.ts}",'
                f'"node":{self._node}}}')

    def publish_held(self, app: Flask, held: list[tuple[str | None, Event]], scope: str,
                     key: str) -> None:
        """Publish what a durable handler emitted, now that its record has committed.

        Ids derive from the scope, the key and the emit's position, so the same logical
        event always has the same id. Never raises: the response is already stored.
        """
        for position, (room, event) in enumerate(held):
            try:
                self.publish(app, room, event, held_event_id(scope, key, position))
            except Exception:
                log.exception("Publishing held event %s failed.", event.type)


def held_event_id(scope: str, key: str, position: int) -> str:
    """The id of the ``position``-th event emitted by the handler of ``(scope, key)``."""
    digest = hashlib.blake2b(f"{scope}\x1f{key}\x1f{position}".encode(), digest_size=12)
    return digest.hexdigest()


def start_hub(settings: Settings, database: peewee.Database | None = None
              ) -> RealtimeHub | None:
    """A started hub when ``settings`` enable realtime, else ``None``.

    ``database`` is the store's (the ``postgresql`` broker listens on it).
    """
    return RealtimeHub(settings, database).start() if settings.realtime.enabled else None


def as_event(event_or_type: Event | str, payload: EventPayload | None) -> Event:
    """``event_or_type`` if it is an :class:`Event`, else a new one with ``payload``."""
    if isinstance(event_or_type, Event):
        if payload is not None:
            raise TypeError("Pass the payload inside the Event, or pass a type and a payload.")
        return event_or_type
    return Event(event_or_type, payload)


def emit(app: Flask, room: str | None, event_or_type: Event | str,
         payload: EventPayload | None) -> bool:
    """Validate an event and publish it to ``app``'s (already checked) ``room``.

    Inside a durable handler the event is held until the handler's record commits.

    ``True`` when the running realtime layer accepted it, ``False`` when realtime is
    disabled, not started or its broker failed. Invalid events or rooms raise ``ValueError``.
    """
    event = as_event(event_or_type, payload)
    event.check_size(int(app.config["CNERIUM_REALTIME_MAX_PAYLOAD"]))
    hub: RealtimeHub | None = app.extensions["cnerium"].realtime
    if hub is None:
        return False
    held = _held_events(app)
    if held is not None:
        held.append((room, event))
        return True
    return hub.publish(app, room, event, hub.next_id())


def _held_events(app: Flask) -> list | None:
    """The hold buffer of the durable handler running for ``app`` in this context, if any."""
    hold = _HOLD.get()
    return hold[1] if hold is not None and hold[0] is app else None


@contextmanager
def capture_events(apps: Any) -> Iterator[list[PublishedEvent]]:
    """A list that fills with the events published by ``apps`` while the block runs."""
    captured: list[PublishedEvent] = []

    def record(sender: Flask, *, event: PublishedEvent, **_: Any) -> None:
        if sender in apps:
            captured.append(event)

    with signals.event_emitted.connected_to(record):
        yield captured
