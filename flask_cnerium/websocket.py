"""The flask-sock endpoint: connections, rooms, and a non-blocking write path per socket.

Each event is framed once and the same bytes go to every socket with ``send(MSG_DONTWAIT)``
from the publishing thread, under the connection's lock. Only bytes the kernel refuses wait
in the connection's bounded backlog, which one selector thread (:class:`Flusher`) writes
when the socket drains; past the bound the client is closed with 1008. simple-websocket's
own writes (pong and close replies) take the same path, so frames never interleave.
"""

from __future__ import annotations

import contextlib
import json
import logging
import selectors
import socket
import ssl
import threading
import time
import uuid
from collections import deque
from itertools import islice
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, current_app, request
from flask_sock import Sock
from simple_websocket import ConnectionClosed, Server
from wsproto.frame_protocol import CloseReason

from . import signals
from .errors import StoreError
from .events import check_room

if TYPE_CHECKING:
    from .extension import Cnerium, CneriumState
    from .realtime import RealtimeHub

log = logging.getLogger("flask_cnerium")

BLUEPRINT = "cnerium_realtime"
CLOSE_TIMEOUT = 10.0
"""Seconds a dropped slow client is given to take its close frame before its socket is shut."""
FRAME_LIMIT_FACTOR = 16
"""A client frame over this many times ``CNERIUM_REALTIME_MAX_FRAME`` closes the socket."""
_IOV_MAX = 512


def text_frame(data: bytes) -> bytes:
    """An unmasked, final WebSocket text frame carrying ``data`` (what a server sends)."""
    size = len(data)
    if size < 126:
        return bytes((0x81, size)) + data
    if size < 65536:
        return bytes((0x81, 126)) + size.to_bytes(2, "big") + data
    return bytes((0x81, 127)) + size.to_bytes(8, "big") + data


def close_frame(code: int, reason: str) -> bytes:
    """An unmasked WebSocket close frame with ``code`` and ``reason`` (cut to 123 bytes)."""
    payload = code.to_bytes(2, "big") + reason.encode()[:123]
    return bytes((0x88, len(payload))) + payload


class Flusher:
    """The one thread that finishes writes the kernel refused, once their sockets drain.

    It sleeps in ``select`` without a timeout unless a dropped client's close is pending,
    so idle connections cost nothing.
    """

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._deadlines: dict[Connection, float] = {}
        self._wakeup, self._waker = socket.socketpair()
        self._wakeup.setblocking(False)
        self._waker.setblocking(False)
        self._selector.register(self._wakeup, selectors.EVENT_READ)
        self._thread: threading.Thread | None = None

    def watch(self, connection: Connection, deadline: float | None = None) -> None:
        """Write ``connection``'s backlog when its socket can take it (by ``deadline``)."""
        with self._lock:
            with contextlib.suppress(KeyError):
                self._selector.register(connection.sock, selectors.EVENT_WRITE, connection)
            if deadline is not None:
                self._deadlines[connection] = deadline
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="cnerium-flusher",
                                                daemon=True)
                self._thread.start()
        with contextlib.suppress(BlockingIOError):
            self._waker.send(b"\0")

    def forget(self, connection: Connection) -> None:
        """Stop watching ``connection`` (always before its socket is closed)."""
        with self._lock:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(connection.sock)
            self._deadlines.pop(connection, None)

    def _run(self) -> None:
        while True:
            for key, _ in self._selector.select(self._timeout()):
                if key.data is None:
                    self._wakeup.recv(4096)
                    continue
                try:
                    key.data.flush()
                except Exception:
                    log.exception("Writing to WebSocket connection %s failed.", key.data.id)
            for connection in self._expired():
                connection.abort()

    def _timeout(self) -> float | None:
        with self._lock:
            if not self._deadlines:
                return None
            return max(0.0, min(self._deadlines.values()) - time.monotonic())

    def _expired(self) -> list[Connection]:
        now = time.monotonic()
        with self._lock:
            return [c for c, deadline in self._deadlines.items() if deadline <= now]


class Connection:
    """One client socket: every write takes its lock; what the kernel refuses is backlogged.

    Signal receivers see it as ``connection``: ``id``, ``remote_addr`` and ``rooms``.
    """

    def __init__(self, sock: socket.socket, flusher: Flusher, limit: int,
                 remote_addr: str | None) -> None:
        self.id = uuid.uuid4().hex
        self.remote_addr = remote_addr
        self.sock = sock
        self.close_reason: str | None = None
        self.rooms: frozenset[str] = frozenset()
        """The rooms this connection is in."""
        self._flusher = flusher
        self._limit = limit
        self._lock = threading.Lock()
        self._backlog: deque[memoryview] = deque()
        self._head_started = False
        self._open = True
        self._closing = False

    def write(self, data: bytes) -> None:
        """Send a frame now, or backlog what the kernel refuses; drop a client too far behind."""
        with self._lock:
            if not self._open:
                return
            if self._backlog:
                if len(self._backlog) >= self._limit:
                    self._drop()
                else:
                    self._backlog.append(memoryview(data))
                return
            try:
                sent = self.sock.send(data, socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._abort()
                return
            if sent < len(data):
                self._backlog.append(memoryview(data)[sent:])
                self._head_started = sent > 0
                self._flusher.watch(self)

    def flush(self) -> None:
        """Write as much of the backlog as the kernel takes now (the flusher's thread)."""
        with self._lock:
            if self._backlog and not self._send_backlog():
                return
            if not self._backlog:
                self._flusher.forget(self)
                if self._closing:
                    self._abort()

    def _send_backlog(self) -> bool:
        try:
            sent = self.sock.sendmsg(list(islice(self._backlog, _IOV_MAX)), (),
                                     socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            self._abort()
            return False
        while sent:
            head = self._backlog[0]
            if len(head) > sent:
                self._backlog[0] = head[sent:]
                self._head_started = True
                return True
            sent -= len(head)
            self._backlog.popleft()
            self._head_started = False
        return True

    def _drop(self) -> None:
        """Close a client that fell ``limit`` frames behind: 1008 after its partial frame."""
        behind = len(self._backlog)
        reason = f"slow consumer: {behind} messages behind"
        log.warning("Dropping WebSocket connection %s (%s): %s.", self.id, self.remote_addr,
                    reason)
        self.close_reason = f"closed by the server (1008: {reason})"
        head = self._backlog[0] if self._head_started else None
        self._backlog.clear()
        if head is not None:
            self._backlog.append(head)
        self._backlog.append(memoryview(close_frame(CloseReason.POLICY_VIOLATION, reason)))
        self._open, self._closing = False, True
        self._flusher.watch(self, deadline=time.monotonic() + CLOSE_TIMEOUT)

    def abort(self) -> None:
        """Shut the socket down now, whatever is still queued (a close that timed out)."""
        with self._lock:
            self._abort()

    def _abort(self) -> None:
        self._open, self._closing = False, False
        self._backlog.clear()
        self._flusher.forget(self)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def release(self) -> None:
        """Accept no more writes and leave the flusher, so the socket may be closed."""
        with self._lock:
            self._open = False
            self._backlog.clear()
            self._flusher.forget(self)


class _GuardedSocket:
    """The socket as simple-websocket sees it: its writes go through the connection."""

    def __init__(self, connection: Connection, ws: Server) -> None:
        self._connection = connection
        self._ws = ws

    def send(self, data: bytes) -> int:
        """Write a frame simple-websocket built (a pong or a close) through the connection."""
        if data[:1] == b"\x88" and self._ws.close_reason == CloseReason.NO_STATUS_RCVD:
            self._note_server_close(data)
        self._connection.write(bytes(data))
        return len(data)

    def _note_server_close(self, data: bytes) -> None:
        code = int.from_bytes(data[2:4], "big")
        text = data[4:2 + (data[1] & 0x7F)].decode(errors="replace")
        if self._connection.close_reason is None:
            self._connection.close_reason = f"closed by the server ({code}: {text})"

    def close(self) -> None:
        """Release the connection, close the real socket, and wake ``ws.receive()``.

        simple-websocket's reader thread calls this as it ends. On a message over
        ``max_message_size`` it wakes ``receive()`` before marking itself disconnected, so
        a receiver could otherwise sleep forever; waking it again here closes that race.
        """
        self._connection.release()
        self._connection.sock.close()
        self._ws.event.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection.sock, name)


class Fanout:
    """This process's connections and the room → connections index that events go through."""

    def __init__(self, limit: int) -> None:
        self.flusher = Flusher()
        self._limit = limit
        self._lock = threading.Lock()
        self._everyone: set[Connection] = set()
        self._rooms: dict[str, set[Connection]] = {}

    def deliver(self, room: str | None, message: str) -> None:
        """Frame ``message`` once and write it to every connection in ``room`` (or all)."""
        frame = text_frame(message.encode())
        with self._lock:
            targets = tuple(self._everyone if room is None else self._rooms.get(room, ()))
        for connection in targets:
            connection.write(frame)

    def attach(self, ws: Server, remote_addr: str | None) -> Connection:
        """Take over ``ws``'s writes and count its connection among everyone's."""
        connection = Connection(ws.sock, self.flusher, self._limit, remote_addr)
        ws.sock = _GuardedSocket(connection, ws)
        with self._lock:
            self._everyone.add(connection)
        return connection

    def detach(self, connection: Connection) -> None:
        """Forget ``connection`` and its rooms; no more writes reach its socket."""
        with self._lock:
            self._everyone.discard(connection)
            for room in connection.rooms:
                self._leave_index(connection, room)
        connection.release()

    def join(self, connection: Connection, room: str) -> None:
        """Add ``connection`` to ``room``."""
        with self._lock:
            connection.rooms = connection.rooms | {room}
            self._rooms.setdefault(room, set()).add(connection)

    def leave(self, connection: Connection, room: str) -> None:
        """Remove ``connection`` from ``room``."""
        with self._lock:
            connection.rooms = connection.rooms - {room}
            self._leave_index(connection, room)

    def _leave_index(self, connection: Connection, room: str) -> None:
        members = self._rooms.get(room)
        if members is not None:
            members.discard(connection)
            if not members:
                del self._rooms[room]


class Session:
    """One client's side of the wire (SPEC §3.1): its actions, rooms and control frames."""

    def __init__(self, app: Flask, hub: RealtimeHub, connection: Connection,
                 extension: Cnerium) -> None:
        self.app = app
        self.connection = connection
        self._fanout = hub.fanout
        self._extension = extension
        self._max_frame = hub.settings.max_frame
        self._max_rooms = hub.settings.max_rooms

    def handle(self, message: str | bytes) -> None:
        """Answer one client frame; bad input gets ``cnerium.error`` and changes nothing."""
        if isinstance(message, bytes):
            return self.error("binary-frame", "Send text frames, one JSON object each.")
        if len(message.encode()) > self._max_frame:
            return self.error("frame-too-large", f"Frames are limited to {self._max_frame} "
                                                 "bytes.")
        try:
            data = json.loads(message)
        except ValueError:
            return self.error("invalid-json", "The frame is not valid JSON.")
        if not isinstance(data, dict):
            return self.error("invalid-message", 'Send a JSON object such as {"action": '
                                                 '"ping"}.')
        action = data.get("action")
        if action == "ping":
            return self.control({"type": "cnerium.pong"})
        if action == "subscribe":
            return self.subscribe(data.get("room"))
        if action == "unsubscribe":
            return self.unsubscribe(data.get("room"))
        return self.error("unknown-action", f"Unknown action {action!r}: use subscribe, "
                                            "unsubscribe or ping.")

    def subscribe(self, room: Any) -> None:
        """Join ``room`` if it is valid, within the limit and authorized."""
        try:
            check_room(room)
        except ValueError as exc:
            return self.error("invalid-room", str(exc))
        rooms = self.connection.rooms
        if room not in rooms:
            if len(rooms) >= self._max_rooms:
                return self.error("too-many-rooms", f"A connection may join at most "
                                                    f"{self._max_rooms} rooms.", room)
            if not self._allowed(room):
                return self.error("forbidden", f"You may not join room {room!r}.", room)
            self._fanout.join(self.connection, room)
            signals.client_subscribed.send(self.app, connection=self.connection, room=room)
        self.control({"type": "cnerium.subscribed", "room": room})

    def unsubscribe(self, room: Any) -> None:
        """Leave ``room`` (answered even when the connection was not in it)."""
        try:
            check_room(room)
        except ValueError as exc:
            return self.error("invalid-room", str(exc))
        if room in self.connection.rooms:
            self._fanout.leave(self.connection, room)
            signals.client_unsubscribed.send(self.app, connection=self.connection, room=room)
        self.control({"type": "cnerium.unsubscribed", "room": room})

    def _allowed(self, room: str) -> bool:
        try:
            return self._extension.room_allowed(room)
        except Exception:
            log.exception("The room authorizer failed for room %r; refusing it.", room)
            return False

    def error(self, code: str, detail: str, room: str | None = None) -> None:
        """Send a ``cnerium.error`` frame (with the room it concerns, if any)."""
        frame: dict[str, Any] = {"type": "cnerium.error", "error": code, "detail": detail}
        if room is not None:
            frame["room"] = room
        self.control(frame)

    def control(self, frame: dict[str, Any]) -> None:
        """Send a control frame through the connection's write path."""
        self.connection.write(text_frame(json.dumps(frame, separators=(",", ":")).encode()))


def serve(ws: Server) -> None:
    """The WebSocket view: one client, from the rooms in its URL to its close."""
    app = current_app._get_current_object()
    state = app.extensions["cnerium"]
    hub = _running_hub(app, state)
    if hub is None or _is_tls(ws):
        ws.close(CloseReason.INTERNAL_ERROR, "realtime is unavailable")
        return
    ws.max_message_size = FRAME_LIMIT_FACTOR * hub.settings.max_frame
    connection = hub.fanout.attach(ws, request.remote_addr)
    session = Session(app, hub, connection, state.extension)
    signals.client_connected.send(app, connection=connection)
    try:
        for room in request.args.getlist("room"):
            session.subscribe(room)
        while True:
            session.handle(ws.receive())
    except ConnectionClosed:
        pass
    finally:
        hub.fanout.detach(connection)
        signals.client_disconnected.send(app, connection=connection,
                                         reason=_close_reason(ws, connection))


def _running_hub(app: Flask, state: CneriumState) -> RealtimeHub | None:
    try:
        state.ensure_started(app)
    except StoreError:
        return None
    if state.realtime is None:
        log.error("A WebSocket client reached %s but realtime is not enabled.", request.path)
    return state.realtime


def _is_tls(ws: Server) -> bool:
    if not isinstance(ws.sock, ssl.SSLSocket):
        return False
    log.error("Realtime writes to plain sockets only: terminate TLS in front of the app "
              "(nginx, a load balancer) instead of in the WSGI server.")
    return True


def _close_reason(ws: Server, connection: Connection) -> str:
    if connection.close_reason:
        return connection.close_reason
    if ws.close_reason != CloseReason.NO_STATUS_RCVD:
        return f"closed by the client ({int(ws.close_reason)})"
    return "connection lost"


def add_endpoint(app: Flask, endpoint: str) -> None:
    """Serve the realtime WebSocket at ``endpoint`` on ``app`` (once), through flask-sock."""
    if BLUEPRINT in app.blueprints:
        return
    blueprint = Blueprint(BLUEPRINT, __name__)
    Sock().route(endpoint, bp=blueprint)(serve)
    app.register_blueprint(blueprint)
