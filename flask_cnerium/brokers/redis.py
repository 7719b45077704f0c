"""The ``redis://`` broker: Redis pub/sub through redis-py (``pip install flask-cnerium[redis]``).

One channel per service, ``cnerium:<CNERIUM_NAME>:events``. Every process publishes on it
and one listener thread per process reads it, so each message, this process's own included,
reaches the local connections once.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import TYPE_CHECKING, Any

from .base import BrokerError, Deliver, ListeningBroker, encode

if TYPE_CHECKING:
    from redis import Redis
    from redis.client import PubSub

log = logging.getLogger("flask_cnerium")

SOCKET_TIMEOUT = 1.0
"""Seconds a publish waits to connect to Redis, or for its answer, before failing."""


def import_redis() -> Any:
    """The ``redis`` package, or an error that says how to install it."""
    try:
        import redis
    except ImportError as exc:
        raise ImportError("CNERIUM_REALTIME_BROKER = 'redis://…' needs redis-py: "
                          "pip install 'flask-cnerium[redis]'.") from exc
    return redis


class RedisBroker(ListeningBroker):
    """Redis pub/sub on ``cnerium:<name>:events``; ``url`` is a redis-py URL.

    Publishing fails fast (``BrokerError`` within about a second) while Redis is down; the
    listener reconnects with backoff and subscribes again once it is back.
    """

    kind = "redis"

    def __init__(self, url: str, deliver: Deliver, **options: Any) -> None:
        super().__init__(url, deliver, **options)
        redis = import_redis()
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.channel = f"cnerium:{self.name}:events"
        self._wake_channel = f"cnerium:{self.name}:wake:{uuid.uuid4().hex}"
        self._client: Redis = redis.Redis.from_url(
            url, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT,
            socket_keepalive=True, retry=Retry(NoBackoff(), 0),
            client_name="cnerium-broker")
        self._errors = (redis.RedisError, OSError)
        self._pubsub: PubSub | None = None
        self._pubsub_lock = threading.Lock()

    def publish(self, room: str | None, message: str) -> None:
        """PUBLISH the envelope; ``BrokerError`` when Redis does not take it in time."""
        try:
            self._client.publish(self.channel, encode(room, message))
        except self._errors as exc:
            raise BrokerError(f"Redis did not take the message: {exc}") from exc

    def _listen(self) -> None:
        """Subscribe, then block reading the channel until stopped or disconnected.

        The listener also subscribes to a private wake-up channel, on which :meth:`stop`
        publishes, so that a stop never races the blocking read.
        """
        pubsub = self._client.pubsub()
        with self._pubsub_lock:
            self._pubsub = pubsub
        try:
            pubsub.subscribe(self.channel, self._wake_channel)
            confirmed = 0
            for item in pubsub.listen():
                kind, channel = item["type"], item["channel"].decode()
                if self._stopping.is_set():
                    return
                if kind == "subscribe":
                    confirmed += 1
                    if confirmed == 2:
                        self._subscribed()
                elif kind == "message" and channel == self.channel:
                    self._dispatch(item["data"].decode())
        finally:
            with self._pubsub_lock:
                self._pubsub = None
            pubsub.close()

    def _interrupt(self) -> None:
        """Wake the listener through its wake-up channel, or else close its connection."""
        try:
            self._client.publish(self._wake_channel, b"stop")
            return
        except self._errors:
            pass  # Redis is unreachable: the listener is not in a healthy read either
        with self._pubsub_lock:
            pubsub = self._pubsub
        if pubsub is not None and pubsub.connection is not None:
            pubsub.connection.disconnect()

    def stop(self) -> None:
        """Stop the listener and close the broker's connections."""
        super().stop()
        self._client.close()

    def _forget_connections(self) -> None:
        self._pubsub = None
        self._pubsub_lock = threading.Lock()
