"""The ``postgresql`` broker: LISTEN/NOTIFY on the store's PostgreSQL database.

``CNERIUM_REALTIME_BROKER = "postgresql"`` uses the server and database of the store (its
own ``CNERIUM_DATABASE=postgresql://…`` or the app's database given as ``database=``);
``postgresql://…`` names another one. Two dedicated autocommit connections per process:
one LISTENs in a thread that sleeps in ``select()``, one NOTIFYs under a lock.

NOTIFY payloads must stay under 8000 bytes. A larger envelope is inserted into
``cnerium_broker_messages`` and the NOTIFY carries ``#<id>``; listeners read the row.
Publishers delete rows older than a minute now and then.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import select
import threading
import time
from typing import Any

import peewee

from .base import BrokerError, Deliver, ListeningBroker, encode

log = logging.getLogger("flask_cnerium")

TABLE = "cnerium_broker_messages"
NOTIFY_LIMIT = 8000
"""NOTIFY payloads must be shorter than this many bytes (PostgreSQL's default build)."""
KEEP_SECONDS = 60
"""Rows of large messages older than this are deleted (listeners read them within ms)."""
CLEAN_EVERY = 30.0
"""Seconds between two clean-ups of old rows by one publisher."""
RETRY_AFTER = 0.5
"""Seconds a publisher waits after failing to connect before it tries again."""
LISTEN_NAME = "cnerium-broker-listen"
NOTIFY_NAME = "cnerium-broker-notify"
"""``application_name`` of the listening and the notifying connection."""

_CONNECT = {"connect_timeout": 2, "keepalives": 1, "keepalives_idle": 10,
            "keepalives_interval": 5, "keepalives_count": 3, "tcp_user_timeout": 5000}
_CREATE_TABLE = (
    "BEGIN; SELECT pg_advisory_xact_lock(hashtext('cnerium_broker_messages'));"
    f"CREATE TABLE IF NOT EXISTS {TABLE} (id BIGSERIAL PRIMARY KEY, payload TEXT NOT NULL, "
    "created_at TIMESTAMPTZ NOT NULL DEFAULT now()); COMMIT")
_NOTIFY_LARGE = (f"WITH m AS (INSERT INTO {TABLE} (payload) VALUES (%s) RETURNING id) "
                 "SELECT pg_notify(%s, '#' || id) FROM m")
_CLEAN = f"DELETE FROM {TABLE} WHERE created_at < now() - interval '{KEEP_SECONDS} seconds'"


def import_psycopg2() -> Any:
    """The ``psycopg2`` package, or an error that says how to install it."""
    try:
        import psycopg2
    except ImportError as exc:
        raise ImportError("CNERIUM_REALTIME_BROKER = 'postgresql' needs psycopg2: "
                          "pip install 'flask-cnerium[postgres]'.") from exc
    return psycopg2


def channel_name(name: str) -> str:
    """The NOTIFY channel of service ``name``: ``cnerium.<name>``, hashed past 63 bytes."""
    channel = "cnerium." + name
    if len(channel.encode()) <= 63 and re.fullmatch(r"[\w.:-]+", channel):
        return channel
    return "cnerium." + hashlib.blake2b(name.encode(), digest_size=16).hexdigest()


def connect_params(url: str, database: peewee.Database | None) -> dict[str, Any]:
    """psycopg2 ``connect`` keywords for a ``postgresql://…`` URL, or for the store's database."""
    if "://" in url:
        return {"dsn": url}
    if not isinstance(database, peewee.PostgresqlDatabase):
        raise ValueError(
            "CNERIUM_REALTIME_BROKER = 'postgresql' uses LISTEN/NOTIFY on the store's "
            "database, but the store is not PostgreSQL. Set CNERIUM_DATABASE = "
            "'postgresql://…' (or pass a PostgreSQL database as database=), name the broker's "
            "own server with CNERIUM_REALTIME_BROKER = 'postgresql://…', or use 'redis://…'.")
    return {"dbname": database.database, **database.connect_params}


class PostgresBroker(ListeningBroker):
    """LISTEN/NOTIFY on channel ``cnerium.<name>`` of the store's (or ``url``'s) database.

    Publishing raises ``BrokerError`` while the server is unreachable; the listener
    reconnects with backoff and LISTENs again once it is back.
    """

    kind = "postgresql"

    def __init__(self, url: str, deliver: Deliver, *,
                 database: peewee.Database | None = None, **options: Any) -> None:
        super().__init__(url, deliver, database=database, **options)
        self._pg = import_psycopg2()
        self._params = connect_params(url, database)
        self.channel = channel_name(self.name)
        self._listener: Any = None
        self._wake_r, self._wake_w = os.pipe()
        self._publisher: Any = None
        self._publish_lock = threading.Lock()
        self._retry_at = 0.0
        self._clean_at = 0.0
        self._inherited: list[Any] = []

    # -- publishing ----------------------------------------------------------------------

    def publish(self, room: str | None, message: str) -> None:
        """NOTIFY the envelope (through the table when it is too large for a NOTIFY)."""
        envelope = encode(room, message)
        with self._publish_lock:
            try:
                with self._publishing_connection().cursor() as cur:
                    if len(envelope.encode()) < NOTIFY_LIMIT:
                        cur.execute("SELECT pg_notify(%s, %s)", (self.channel, envelope))
                    else:
                        cur.execute(_NOTIFY_LARGE, (envelope, self.channel))
                        self._clean(cur)
            except self._pg.Error as exc:
                self._close_publisher()
                raise BrokerError(f"PostgreSQL did not take the message: {exc}") from exc

    def _publishing_connection(self) -> Any:
        """The publisher connection, opened again if its backend went away."""
        conn = self._publisher
        if conn is not None and not conn.closed and self._still_open(conn):
            return conn
        self._close_publisher()
        if time.monotonic() < self._retry_at:
            raise BrokerError("PostgreSQL is unreachable; the broker retries shortly.")
        try:
            self._publisher = self._connect(NOTIFY_NAME, tcp_user_timeout=2000)
        except self._pg.Error:
            self._retry_at = time.monotonic() + RETRY_AFTER
            raise
        return self._publisher

    def _still_open(self, conn: Any) -> bool:
        """An idle connection has nothing to read unless its backend ended it: check."""
        if not select.select([conn], [], [], 0)[0]:
            return True
        try:
            conn.poll()
        except self._pg.Error:
            return False
        return not conn.closed

    def _clean(self, cur: Any) -> None:
        if time.monotonic() >= self._clean_at:
            self._clean_at = time.monotonic() + CLEAN_EVERY
            cur.execute(_CLEAN)

    def _close_publisher(self) -> None:
        conn, self._publisher = self._publisher, None
        if conn is not None and not conn.closed:
            conn.close()

    # -- listening -----------------------------------------------------------------------

    def _listen(self) -> None:
        """Create the table, LISTEN, then sleep in ``select()`` until notified or stopped."""
        conn = self._listener = self._connect(LISTEN_NAME)
        try:
            with conn.cursor() as cur:
                self._create_table(cur)
                cur.execute(f'LISTEN "{self.channel}"')
            self._subscribed()
            while True:
                readable = select.select([conn, self._wake_r], [], [])[0]
                if self._wake_r in readable or self._stopping.is_set():
                    return
                conn.poll()
                self._drain(conn)
        finally:
            self._listener = None
            conn.close()

    def _drain(self, conn: Any) -> None:
        while conn.notifies:
            payload = conn.notifies.pop(0).payload
            if payload.startswith("#"):
                payload = self._fetch(conn, int(payload[1:]))
            if payload is not None:
                self._dispatch(payload)

    def _fetch(self, conn: Any, row_id: int) -> str | None:
        """The envelope stored in row ``row_id`` for a message too large for NOTIFY."""
        with conn.cursor() as cur:
            cur.execute(f"SELECT payload FROM {TABLE} WHERE id = %s", (row_id,))
            row = cur.fetchone()
        if row is None:
            log.warning("Large message %d is gone from %s before it was read.", row_id, TABLE)
            return None
        return row[0]

    def _create_table(self, cur: Any) -> None:
        try:
            cur.execute(_CREATE_TABLE)
        except self._pg.ProgrammingError as exc:  # e.g. no CREATE privilege
            cur.execute("ROLLBACK")
            log.warning("Could not create %s (%s): messages over %d bytes cannot be "
                        "published.", TABLE, str(exc).strip(), NOTIFY_LIMIT)

    def _interrupt(self) -> None:
        os.write(self._wake_w, b"\0")

    # -- connections ---------------------------------------------------------------------

    def _connect(self, application_name: str, **options: Any) -> Any:
        conn = self._pg.connect(**{**_CONNECT, **self._params, **options},
                                application_name=application_name)
        conn.autocommit = True
        return conn

    def start(self) -> None:
        """Start the listener (which creates the large-message table) and wait for it."""
        if self._thread is None:
            self._drain_wake_pipe()
        super().start()

    def _drain_wake_pipe(self) -> None:
        os.set_blocking(self._wake_r, False)
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        os.set_blocking(self._wake_r, True)

    def stop(self) -> None:
        """Stop the listener and close both connections."""
        super().stop()
        with self._publish_lock:
            self._close_publisher()

    def _forget_connections(self) -> None:
        # Closing a connection inherited from the parent would end the parent's session.
        self._inherited += [c for c in (self._listener, self._publisher) if c is not None]
        self._listener = self._publisher = None
        self._publish_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
