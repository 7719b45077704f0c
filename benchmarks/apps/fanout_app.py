"""The three realtime servers the fanout and memory benchmarks compare, one app each.

- ``cnerium_app``: flask-cnerium; ``/ws?room=bench`` joins the room, ``cnerium.emit_to``.
- ``naive_app``: the loop a flask-sock user writes first: a dict of room -> set of sockets,
  and ``ws.send`` to each one from the emitting thread.
- ``socketio_app``: Flask-SocketIO in threading mode; a client joins ``bench`` on connect.

Every app has ``POST /bench/emit?events=N&rate=R&phase=P``, which starts a thread emitting
N events to room ``bench`` (as fast as possible when R is 0, else R per second) and returns
at once, ``POST /bench/stop`` (the thread stops before its next event), ``GET
/bench/status`` (whether that thread still runs) and ``GET /bench/pid``.
Each event's payload is ``{"seq": i, "p": P, "t": <time.time() at emit>, "note": <96 bytes>}``
(frames of 180 to 260 bytes, depending on the system's envelope).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable

from flask import Flask, jsonify, request

ROOM = "bench"
NOTE = "x" * 96
"""Padding that gives each event the size of a small real one (an order's id, status, total)."""


def _emit_loop(send: Callable[[dict], None], events: int, rate: float, phase: int,
               busy: threading.Event, stop: threading.Event) -> None:
    start = time.monotonic()
    try:
        for seq in range(events):
            if stop.is_set():
                break
            if rate:
                delay = start + seq / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            send({"seq": seq, "p": phase, "t": time.time(), "note": NOTE})
    finally:
        busy.clear()


def _control_routes(app: Flask, send: Callable[[dict], None]) -> None:
    busy, stop = threading.Event(), threading.Event()

    @app.post("/bench/emit")
    def bench_emit():
        if busy.is_set():
            return jsonify(error="still emitting"), 409
        busy.set()
        stop.clear()
        args = (send, request.args.get("events", 1000, int), request.args.get("rate", 0.0, float),
                request.args.get("phase", 0, int), busy, stop)
        threading.Thread(target=_emit_loop, args=args, daemon=True).start()
        return jsonify(ok=True), 202

    @app.post("/bench/stop")
    def bench_stop():
        stop.set()
        return jsonify(ok=True)

    @app.get("/bench/status")
    def bench_status():
        return jsonify(busy=busy.is_set())

    @app.get("/bench/pid")
    def bench_pid():
        return jsonify(pid=os.getpid())


def cnerium_app() -> Flask:
    """flask-cnerium with realtime at ``/ws`` (memory broker, default settings)."""
    from flask_cnerium import Cnerium

    app = Flask("cnerium_bench")
    app.config.update(CNERIUM_DATA_DIR=os.environ.get("BENCH_DIR") or tempfile.mkdtemp(),
                      CNERIUM_REALTIME_ENDPOINT="/ws")
    cnerium = Cnerium(app)
    with app.app_context():
        cnerium.start()
    _control_routes(app, lambda payload: cnerium.emit_to(ROOM, "bench.tick", payload))
    return app


def naive_app() -> Flask:
    """flask-sock with a room -> sockets dict; the emitting thread calls ``ws.send``."""
    from flask_sock import Sock
    from simple_websocket import ConnectionClosed

    app = Flask("naive_bench")
    sock = Sock(app)
    rooms: dict[str, set] = {}
    lock = threading.Lock()

    @sock.route("/ws")
    def ws_view(ws):
        room = request.args.get("room", ROOM)
        with lock:
            rooms.setdefault(room, set()).add(ws)
        ws.send(json.dumps({"type": "joined", "room": room}))
        try:
            while True:
                ws.receive()
        except ConnectionClosed:
            pass
        finally:
            with lock:
                rooms[room].discard(ws)

    def send(payload: dict) -> None:
        message = json.dumps({"type": "bench.tick", "payload": payload, "room": ROOM},
                             separators=(",", ":"))
        with lock:
            members = list(rooms.get(ROOM, ()))
        for ws in members:
            with contextlib.suppress(Exception):  # a client that went away
                ws.send(message)

    _control_routes(app, send)
    return app


def socketio_app() -> Flask:
    """Flask-SocketIO, ``async_mode="threading"`` (simple-websocket under gunicorn threads)."""
    from flask_socketio import SocketIO, join_room

    app = Flask("socketio_bench")
    socketio = SocketIO(app, async_mode="threading")

    @socketio.on("connect")
    def on_connect(*_args):
        join_room(ROOM)

    _control_routes(app, lambda payload: socketio.emit("tick", payload, to=ROOM))
    return app
