"""Blinker signals for everything flask-cnerium does; the sender is always the app."""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

durable_executed = _signals.signal("durable-executed")
"""A durable handler ran to completion (its response is stored unless the store failed or
its claim was taken over; both are logged). Sent with ``operation``, ``key``, ``scope`` and
``status``."""

durable_replayed = _signals.signal("durable-replayed")
"""A stored response was replayed. Sent with ``operation``, ``key``, ``scope``, ``status``."""

durable_conflict = _signals.signal("durable-conflict")
"""A request was refused with 409 (or the mismatch status). Sent with ``operation``,
``key``, ``scope`` and ``reason`` (``idempotency-key-reused`` or ``request-in-progress``)."""

durable_rejected = _signals.signal("durable-rejected")
"""A request was refused before any record was touched. Sent with ``operation`` and
``reason`` (``idempotency-key-missing``, ``idempotency-key-invalid``, ``store-unavailable``)."""

event_emitted = _signals.signal("event-emitted")
"""An event was published to the realtime layer (inside a durable handler: after its record
committed). Sent with ``event`` (a ``PublishedEvent``) and ``room`` (``None``: broadcast)."""

client_connected = _signals.signal("client-connected")
"""A WebSocket client connected. Sent with ``connection`` (``.id``, ``.remote_addr``,
``.rooms``)."""

client_disconnected = _signals.signal("client-disconnected")
"""A WebSocket client went away. Sent with ``connection`` and ``reason``: ``"closed by the
client (<code>)"``, ``"closed by the server (<code>: <reason>)"`` or ``"connection lost"``."""

client_subscribed = _signals.signal("client-subscribed")
"""A WebSocket client joined a room. Sent with ``connection`` and ``room``."""

client_unsubscribed = _signals.signal("client-unsubscribed")
"""A WebSocket client left a room. Sent with ``connection`` and ``room``."""
