"""Realtime test helpers: a test app served by werkzeug in a thread, WebSocket clients.

Every realtime test talks to a real server (``make_server(..., threaded=True)`` on
127.0.0.1, port 0) through real WebSocket clients (websocket-client), or through a raw
socket when it must misbehave below the WebSocket layer (a client that stops reading).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import selectors
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import peewee
import websocket
from blinker import ANY, Signal
from flask import Flask
from werkzeug.serving import make_server

from flask_cnerium import Cnerium, DurableRequest, DurableResponse, created
from tests.durable_helpers import wait_for

REPO = Path(__file__).resolve().parent.parent
"""The repository root (the working directory of helper subprocesses)."""
QUIET = 0.5
"""Seconds a test waits to be sure that an event it must not see does not arrive."""
SNDBUF = 64 * 1024
"""The send buffer of the server's sockets (the kernel doubles it)."""


def create_realtime_app(data_dir: Path, *, shared: bool = False,
                        **config: Any) -> tuple[Flask, Cnerium]:
    """A Flask app with realtime at ``/ws`` and two durable routes that emit.

    ``POST /orders`` emits ``order.created`` to room ``orders`` as the seed does;
    ``POST /explode`` emits, then raises. ``shared=True`` keeps the store in the app's own
    SQLite database.
    """
    app = Flask(__name__)
    app.config.update(CNERIUM_DATA_DIR=str(data_dir), CNERIUM_REALTIME_ENDPOINT="/ws",
                      CNERIUM_NODE_ID="test-node", **config)
    data_dir.mkdir(parents=True, exist_ok=True)
    database = peewee.SqliteDatabase(str(data_dir / "app.db"), timeout=5) if shared else None
    cnerium = Cnerium(app, database=database)

    @cnerium.durable_post("/orders", "orders.create")
    def create_order(request: DurableRequest) -> DurableResponse:
        body = request.json()
        if not body.get("product_id"):
            return DurableResponse.bad_request("Missing required field: product_id")
        order_id = "ord_" + request.idempotency_key_value()
        cnerium.emit_to("orders", "order.created", {"order_id": order_id})
        return created({"ok": True, "order_id": order_id})

    @cnerium.durable_post("/explode", "orders.explode")
    def explode(request: DurableRequest) -> DurableResponse:
        cnerium.emit("order.exploded", {"key": request.idempotency_key_value()})
        cnerium.emit_to("orders", "order.exploded", {"key": request.idempotency_key_value()})
        raise RuntimeError("the handler failed after emitting")

    return app, cnerium


class Client:
    """A websocket-client connection that reads JSON frames with deadlines."""

    def __init__(self, url: str, cookie: str | None = None, timeout: float = 10) -> None:
        self.ws = websocket.create_connection(url, timeout=timeout, cookie=cookie)

    def send_json(self, data: Any) -> None:
        """Send ``data`` as one text frame."""
        self.ws.send(json.dumps(data))

    def recv_json(self, timeout: float = 5) -> dict[str, Any]:
        """The next frame, parsed; fails the test after ``timeout`` seconds."""
        self.ws.settimeout(timeout)
        return json.loads(self.ws.recv())

    def expect(self, type: str, timeout: float = 5) -> dict[str, Any]:
        """The next frame, which must be of ``type``."""
        frame = self.recv_json(timeout)
        assert frame["type"] == type, frame
        return frame

    def assert_quiet(self, seconds: float = QUIET) -> None:
        """Nothing arrives for ``seconds``."""
        self.ws.settimeout(seconds)
        try:
            frame = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            return
        raise AssertionError(f"unexpected frame: {frame}")

    def ping(self) -> None:
        """The connection still answers: a ping action gets its pong."""
        self.send_json({"action": "ping"})
        self.expect("cnerium.pong")

    def close(self) -> None:
        """Close the connection (quietly if it is already gone)."""
        with contextlib.suppress(OSError, websocket.WebSocketException):
            self.ws.close(timeout=1)


class RealtimeServer:
    """A realtime test app served over real HTTP and WebSocket by werkzeug in a thread."""

    def __init__(self, app: Flask, cnerium: Cnerium, endpoint: str = "/ws",
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.app, self.cnerium, self.endpoint = app, cnerium, endpoint
        self._server = make_server("127.0.0.1", 0, self.app, threaded=True,
                                   ssl_context=ssl_context)
        # Loopback's 64 KiB MSS makes Linux give each socket ~4 MB of send buffer; a real
        # network gives ~100 KB. Accepted sockets inherit this, so a stalled client fills up
        # about as fast as it would in production.
        self._server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()
        self.port = self._server.server_port
        self._clients: list[Client] = []
        self._sockets: list[socket.socket] = []

    def ws_url(self, rooms: Iterable[str] = ()) -> str:
        """The WebSocket URL, joining ``rooms`` at connect."""
        query = urlencode([("room", room) for room in rooms])
        return f"ws://127.0.0.1:{self.port}{self.endpoint}" + (f"?{query}" if query else "")

    def connect(self, rooms: Iterable[str] = (), cookie: str | None = None) -> Client:
        """A client connected to ``/ws``; it has confirmed every room of ``rooms``."""
        rooms = list(rooms)
        client = Client(self.ws_url(rooms), cookie=cookie)
        self._clients.append(client)
        for room in rooms:
            assert client.expect("cnerium.subscribed")["room"] == room
        if not rooms:
            client.ping()  # answered only once the server counts the connection
        return client

    def stalled(self, rcvbuf: int = 4096) -> socket.socket:
        """A raw socket that completes the WebSocket handshake and then never reads."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.connect(("127.0.0.1", self.port))
        sock.sendall(f"GET {self.endpoint} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
                     + b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Version: 13\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        self._sockets.append(sock)
        return sock

    def post(self, path: str, body: Any, key: str) -> tuple[int, dict[str, str]]:
        """POST JSON ``body`` with an Idempotency-Key; the status and the headers."""
        return post(self.port, path, body, key)

    def stop(self) -> None:
        """Close every client, stop the server and close the store."""
        for client in self._clients:
            client.close()
        for sock in self._sockets:
            sock.close()
        self._server.shutdown()
        self._server.server_close()
        state = self.app.extensions["cnerium"]
        if state.store is not None:
            state.store.close()


def post(port: int, path: str, body: Any, key: str) -> tuple[int, dict[str, str]]:
    """POST JSON ``body`` to 127.0.0.1:``port`` with an Idempotency-Key: status, headers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=json.dumps(body),
                     headers={"Content-Type": "application/json", "Idempotency-Key": key})
        response = conn.getresponse()
        response.read()
        return response.status, dict(response.getheaders())
    finally:
        conn.close()


def app_from_env() -> Flask:
    """The realtime test app for a server process; its data dir is $CNERIUM_TEST_DATA_DIR."""
    return create_realtime_app(Path(os.environ["CNERIUM_TEST_DATA_DIR"]))[0]


class GunicornServer:
    """The realtime test app under gunicorn (gthread worker, as flask-sock advises)."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = data_dir / "gunicorn.log"
        env = {**os.environ, "CNERIUM_TEST_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO)}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-k", "gthread", "--threads", "16",
                 "-b", "127.0.0.1:0", "tests.live:app_from_env()"],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.port = int(wait_for(self._listening, timeout=30, what="gunicorn to listen"))

    def _listening(self) -> str | None:
        assert self.proc.poll() is None, self.log_path.read_text()
        found = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", self.log_path.read_text())
        return found.group(1) if found else None

    def stop(self) -> None:
        """Stop gunicorn (and its worker)."""
        stop_process(self.proc)


def read_frames(sock: socket.socket, timeout: float) -> list[tuple[int, bytes]]:
    """Every frame a raw socket receives until the server closes it: (opcode, payload)."""
    sock.settimeout(timeout)
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return parse_frames(data)

@contextmanager
def recording(*watched: Signal, sender: Any = ANY) -> Iterator[list[dict[str, Any]]]:
    """Record every send of ``watched`` (by ``sender`` only, when given): the signal's name,
    the sender and the kwargs. Give the sender when other tests' servers may still be
    closing connections."""
    calls: list[dict[str, Any]] = []
    receivers = []
    for watched_signal in watched:
        def receiver(sender: Any, _name: str = watched_signal.name, **kwargs: Any) -> None:
            calls.append({"signal": _name, "sender": sender, **kwargs})
        watched_signal.connect(receiver, sender=sender)
        receivers.append((watched_signal, receiver))
    try:
        yield calls
    finally:
        for watched_signal, receiver in receivers:
            watched_signal.disconnect(receiver)


def parse_frames(data: bytearray) -> list[tuple[int, bytes]]:
    """Cut the whole server frames off the front of ``data``: their (opcode, payload)."""
    frames, at = [], 0
    while at + 2 <= len(data):
        opcode, size, start = data[at] & 0x0F, data[at + 1] & 0x7F, at + 2
        if size >= 126:
            width = 2 if size == 126 else 8
            size, start = int.from_bytes(data[start:start + width], "big"), start + width
        if start + size > len(data):
            break
        frames.append((opcode, bytes(data[start:start + size])))
        at = start + size
    del data[:at]
    return frames


def swarm(url: str, clients: int, events: int, timeout: float) -> dict[str, list]:
    """Connect ``clients`` WebSocket clients, print ``ready``, then read ``events`` each.

    Run in its own process (``python -m tests.live URL CLIENTS EVENTS``) so that the clients'
    work does not compete with the server under test for one GIL. websocket-client makes
    each connection; one selector thread then reads them all and parses their frames, which
    keeps 50 clients fast enough to be the healthy ones.
    """
    connected = [Client(url) for _ in range(clients)]
    for client in connected:
        client.ping()
    print("ready", flush=True)
    selector = selectors.DefaultSelector()
    seqs: list[list[int]] = [[] for _ in connected]
    for index, client in enumerate(connected):
        selector.register(client.ws.sock, selectors.EVENT_READ, (index, bytearray()))
    deadline = time.monotonic() + timeout
    while selector.get_map() and time.monotonic() < deadline:
        for key, _ in selector.select(1):
            index, buffer = key.data
            chunk = key.fileobj.recv(65536)
            buffer += chunk
            for opcode, payload in parse_frames(buffer):
                if opcode == 0x1:
                    seqs[index].append(json.loads(payload)["payload"]["seq"])
            if not chunk or len(seqs[index]) >= events:
                selector.unregister(key.fileobj)
    return {"counts": [len(s) for s in seqs],
            "in_order": [s == list(range(len(s))) for s in seqs]}


def stop_process(proc: subprocess.Popen, timeout: float = 10, group: bool = False) -> None:
    """SIGTERM ``proc`` (its whole process group with ``group``), SIGKILL it after
    ``timeout`` seconds, and wait until it is gone."""
    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig) if group else proc.send_signal(sig)

    if proc.poll() is not None:
        return
    send(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait(timeout)


def free_port() -> int:
    """A TCP port nothing listens on right now, on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateRedis:
    """A redis-server of this test's own on a free port: stopped and started at will."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.log_path = workdir / "redis.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it (again, on the same port) and wait until it answers PING."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--daemonize", "no"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._answers, timeout=10, what="the private redis-server to answer")

    def _answers(self) -> bool:
        assert self.proc.poll() is None, self.log_path.read_text()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop it and wait until it is gone."""
        if self.proc is not None:
            stop_process(self.proc, timeout=5)


if __name__ == "__main__":
    url, clients, events = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(swarm(url, clients, events, timeout=60)), flush=True)
