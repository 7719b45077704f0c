"""docs/deploy.md's command: examples/orders under gunicorn, 3 workers, PostgreSQL, a broker.

The command is run as written there (environment variables, ``--chdir examples/orders
app:app``), with this test's own PostgreSQL database and, for Redis, a private server.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import websocket

from tests.durable_helpers import http_post
from tests.live import free_port, stop_process, wait_for

REPO = Path(__file__).resolve().parent.parent
ORDER = {"product_id": "p1", "quantity": 2}


def gunicorn_example(env: dict[str, str], port: int) -> subprocess.Popen:
    argv = [str(Path(sys.executable).with_name("gunicorn")), "-w", "3", "-k", "gthread",
            "--threads", "50", "-b", f"127.0.0.1:{port}", "--chdir", "examples/orders",
            "app:app"]
    return subprocess.Popen(argv, cwd=REPO, env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)


def subscribed_client(port: int) -> websocket.WebSocket:
    ws = websocket.create_connection(f"ws://127.0.0.1:{port}/ws?room=orders", timeout=5)
    assert json.loads(ws.recv())["type"] == "cnerium.subscribed"
    return ws


def frames_until(ws: websocket.WebSocket, seconds: float, stop: str | None = None
                 ) -> list[dict]:
    """The frames ``ws`` receives in the next ``seconds``, or until one of type ``stop``."""
    frames, deadline = [], time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        ws.settimeout(left)
        try:
            frames.append(json.loads(ws.recv()))
        except websocket.WebSocketTimeoutException:
            break
        if frames[-1]["type"] == stop:
            break
    return frames


@pytest.mark.parametrize("broker", ["postgresql", "redis"])
def test_documented_gunicorn_command_delivers_each_order_once(pg_url: str, broker: str,
                                                               request) -> None:
    broker_url = (request.getfixturevalue("private_redis").url if broker == "redis"
                  else "postgresql")
    port = free_port()
    server = gunicorn_example({"FLASK_ORDERS_DATABASE": pg_url,
                               "FLASK_CNERIUM_REALTIME_BROKER": broker_url}, port)
    clients = []
    try:
        wait_for(lambda: http_get_ok(port), timeout=30, what="the example to answer")
        clients = [subscribed_client(port) for _ in range(6)]
        key = uuid.uuid4().hex
        first = http_post(f"http://127.0.0.1:{port}", "/orders", ORDER, key)
        assert first.status == 201
        for ws in clients:
            events = [f for f in frames_until(ws, 5, stop="order.created")
                      if f["type"] == "order.created"]
            assert [e["payload"]["order_id"] for e in events] == ["ord_" + key]
        again = http_post(f"http://127.0.0.1:{port}", "/orders", ORDER, key)
        assert again.headers["idempotent-replayed"] == "true" and again.body == first.body
        time.sleep(1)  # long enough for a (wrong) second event to arrive from any worker
        assert all(not frames_until(ws, 0.05) for ws in clients)
    finally:
        for ws in clients:
            ws.close()
        stop_process(server, timeout=15, group=True)


def http_get_ok(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()
