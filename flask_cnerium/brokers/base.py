"""The broker seam: how an event message reaches the connections of every process.

Modeled on python-socketio's ``PubSubManager`` (``_publish`` / ``_listen``): the realtime
hub hands :meth:`Broker.publish` a finished event message (its JSON text) and the room it is
for; every process's broker hands what it hears to ``deliver(room, message)``, which writes
it to that process's own connections.

Shared brokers carry each message as an *envelope*: one header line, then the message. The
header is the room (empty for a broadcast); more space-separated fields may follow it in a
later version (rooms never contain spaces), and readers ignore what they do not know.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import CneriumError
from ..forking import in_forked_children

if TYPE_CHECKING:
    import peewee

    from ..config import Settings

log = logging.getLogger("flask_cnerium")

Deliver = Callable[[str | None, str], None]
"""``deliver(room, message)``: write one event message to this process's connections."""

START_WAIT = 2.0
"""Seconds :meth:`ListeningBroker.start` waits for its listener to be subscribed."""
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0
"""The listener's reconnect delays: doubled after each failure, from the first to the cap."""


class BrokerError(CneriumError):
    """The broker could not take a message (e.g. its server is unreachable)."""


def encode(room: str | None, message: str) -> str:
    """The envelope of ``message`` for ``room`` (``None``: a broadcast)."""
    return f"{room or ''}\n{message}"


def decode(envelope: str) -> tuple[str | None, str]:
    """``(room, message)`` from an envelope made by :func:`encode`."""
    header, _, message = envelope.partition("\n")
    return header.split(" ", 1)[0] or None, message


class Broker:
    """Carries event messages from the process that emits them to every process.

    ``settings`` are the app's resolved settings (the service name, for example) and
    ``database`` the store's peewee database; a broker uses what it needs of them.
    """

    def __init__(self, url: str, deliver: Deliver, *, settings: Settings | None = None,
                 database: peewee.Database | None = None) -> None:
        self.deliver = deliver
        self.name = settings.name if settings is not None else "cnerium"
        """The service name (``CNERIUM_NAME``) that namespaces the broker's channel."""

    def start(self) -> None:
        """Begin listening; brokers that have nothing to listen to need not override it."""

    def stop(self) -> None:
        """Stop listening and close connections; brokers that hold none need not override it."""

    def publish(self, room: str | None, message: str) -> None:
        """Send ``message`` for ``room`` (``None``: everyone); ``BrokerError`` if it cannot."""
        raise NotImplementedError


class ListeningBroker(Broker):
    """A broker whose messages, this process's own included, arrive through one thread.

    Subclasses implement :meth:`_listen` (connect, subscribe, call :meth:`_subscribed`, then
    block until stopped or disconnected, handing each envelope to :meth:`_dispatch`) and
    :meth:`_interrupt` (wake :meth:`_listen` for a stop). The thread reconnects with
    exponential backoff, logging once per outage, and is started again in a forked child.
    """

    kind = "shared"

    def __init__(self, url: str, deliver: Deliver, **options: Any) -> None:
        super().__init__(url, deliver, **options)
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._delay = BACKOFF_MIN
        self._outage = False
        in_forked_children(self._after_fork)

    def start(self) -> None:
        """Start the listener and wait (a little) until it is subscribed."""
        if not self._start_thread():
            return
        if not self._ready.wait(START_WAIT):
            log.warning("The %s broker is not reachable yet; events from other processes "
                        "reach this one once it is (retrying in the background).", self.kind)

    def _start_thread(self) -> bool:
        with self._thread_lock:
            if self._thread is not None:
                return False
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name=f"cnerium-broker-{self.kind}")
            self._thread.start()
            return True

    def stop(self) -> None:
        """Stop the listener thread and close the broker's connections."""
        with self._thread_lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping.set()
        self._interrupt()
        thread.join(START_WAIT)
        self._ready.clear()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._listen()
            except Exception as exc:
                if self._stopping.is_set():
                    break
                self._lost(exc)
            self._ready.clear()
            if self._stopping.wait(self._delay):
                break
            self._delay = min(self._delay * 2, BACKOFF_MAX)

    def _lost(self, exc: Exception) -> None:
        if self._outage:
            log.debug("The %s broker is still unreachable: %s", self.kind, exc)
            return
        self._outage = True
        log.warning("The %s broker's listener lost its connection (%s); reconnecting with "
                    "backoff. Events from other processes are missed until it is back.",
                    self.kind, str(exc).strip() or type(exc).__name__)

    def _subscribed(self) -> None:
        """Called by :meth:`_listen` once it listens: the outage, if any, is over."""
        self._delay = BACKOFF_MIN
        if self._outage:
            self._outage = False
            log.warning("The %s broker's listener is back; delivery resumes.", self.kind)
        self._ready.set()

    def _dispatch(self, envelope: str) -> None:
        """Hand one envelope to ``deliver``; a failure there never stops the listener."""
        room, message = decode(envelope)
        try:
            self.deliver(room, message)
        except Exception:
            log.exception("Delivering a message from the %s broker failed.", self.kind)

    def _listen(self) -> None:
        raise NotImplementedError

    def _interrupt(self) -> None:
        raise NotImplementedError

    def _after_fork(self) -> None:
        """In a forked child of a started broker (gunicorn ``--preload``): forget the parent's
        thread and connections, listen anew."""
        if self._thread is None:
            return
        self._thread_lock = threading.Lock()
        self._stopping, self._ready = threading.Event(), threading.Event()
        self._delay, self._outage = BACKOFF_MIN, False
        self._forget_connections()
        self._thread = None
        self._start_thread()

    def _forget_connections(self) -> None:
        """Drop (never close: the parent still uses them) connections made before a fork."""

