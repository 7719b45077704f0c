"""Realtime delivery through a live server and real WebSocket clients.

The seed's retry flow, emit / emit_to / unsubscribe, events held until the durable record
commits, a client that stops reading, and the realtime signals.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from flask_cnerium import signals
from tests.live import (
    QUIET,
    REPO,
    Client,
    GunicornServer,
    RealtimeServer,
    post,
    read_frames,
    recording,
    wait_for,
)

Serve = Callable[..., RealtimeServer]


@pytest.mark.parametrize("shared", [False, True], ids=["separate-store", "shared-store"])
def test_seed_retry_flow_delivers_order_created_exactly_once(realtime_server: Serve,
                                                             shared: bool) -> None:
    server = realtime_server(shared=shared)
    watcher = server.connect(["orders"])
    bystander = server.connect(["admin"])
    order = {"product_id": "p1", "quantity": 2}

    status, _ = server.post("/orders", order, key="order-123")
    assert status == 201
    frame = watcher.expect("order.created")
    assert (frame["payload"], frame["room"]) == ({"order_id": "ord_order-123"}, "orders")

    status, headers = server.post("/orders", order, key="order-123")
    assert (status, headers.get("Idempotent-Replayed")) == (201, "true")
    status, _ = server.post("/orders", {"product_id": "p2"}, key="order-123")
    assert status == 409
    watcher.assert_quiet(QUIET)
    bystander.assert_quiet(0.05)


def test_seed_retry_flow_under_gunicorn(tmp_path: Path) -> None:
    server = GunicornServer(tmp_path / "gunicorn")
    watcher = None
    try:
        watcher = Client(f"ws://127.0.0.1:{server.port}/ws?room=orders")
        watcher.expect("cnerium.subscribed")
        order = {"product_id": "p1"}
        assert post(server.port, "/orders", order, key="g-1")[0] == 201
        assert watcher.expect("order.created")["payload"] == {"order_id": "ord_g-1"}
        assert post(server.port, "/orders", order, key="g-1")[0] == 201
        assert post(server.port, "/orders", {"product_id": "p2"}, key="g-1")[0] == 409
        watcher.assert_quiet(QUIET)
        watcher.ping()
    finally:
        if watcher is not None:
            watcher.close()
        server.stop()


def test_emit_reaches_every_client(realtime_server: Serve) -> None:
    server = realtime_server()
    clients = [server.connect(), server.connect(["orders"]), server.connect(["a", "b"])]
    assert server.cnerium.emit("stock.changed", {"sku": "s1", "left": 3}) is True
    for client in clients:
        frame = client.expect("stock.changed")
        assert (frame["payload"], frame["room"]) == ({"sku": "s1", "left": 3}, None)


def test_emit_to_reaches_only_the_rooms_subscribers(realtime_server: Serve) -> None:
    server = realtime_server()
    inside = [server.connect(["orders"]), server.connect(["admin", "orders"])]
    outside = [server.connect(), server.connect(["admin"]), server.connect(["orders-2"])]
    assert server.cnerium.emit_to("orders", "order.paid", {"order_id": "o1"}) is True
    for client in inside:
        assert client.expect("order.paid")["room"] == "orders"
    for client in outside:
        client.assert_quiet(QUIET / len(outside))


def test_unsubscribe_stops_delivery(realtime_server: Serve) -> None:
    server = realtime_server()
    leaving = server.connect()
    leaving.send_json({"action": "subscribe", "room": "orders"})
    assert leaving.expect("cnerium.subscribed")["room"] == "orders"
    staying = server.connect(["orders"])
    server.cnerium.emit_to("orders", "order.paid", {"n": 1})
    assert leaving.expect("order.paid")["payload"] == {"n": 1}

    leaving.send_json({"action": "unsubscribe", "room": "orders"})
    assert leaving.expect("cnerium.unsubscribed")["room"] == "orders"
    server.cnerium.emit_to("orders", "order.paid", {"n": 2})
    assert staying.expect("order.paid")["payload"] == {"n": 1}
    assert staying.expect("order.paid")["payload"] == {"n": 2}
    leaving.assert_quiet()


def test_handler_that_emits_then_raises_delivers_nothing(realtime_server: Serve) -> None:
    server = realtime_server()
    everyone, orders = server.connect(), server.connect(["orders"])
    with server.cnerium.capture_events() as captured:
        status, _ = server.post("/explode", {}, key="boom-1")
        assert status == 500
        status, _ = server.post("/explode", {}, key="boom-1")  # the claim was released
        assert status == 500
    everyone.assert_quiet()
    orders.assert_quiet(0.05)
    assert captured == []
    orders.ping()


def test_events_reach_clients_in_the_order_emitted(realtime_server: Serve) -> None:
    server = realtime_server()
    client = server.connect(["orders"])
    for n in range(200):
        server.cnerium.emit_to("orders", "order.numbered", {"n": n})
    assert [client.expect("order.numbered")["payload"]["n"] for _ in range(200)] == \
        list(range(200))


def test_a_client_that_stops_reading_is_dropped_and_the_others_get_everything(
        realtime_server: Serve) -> None:
    server = realtime_server()
    clients, events = 50, 2000
    swarm = subprocess.Popen([sys.executable, "-m", "tests.live", server.ws_url(),
                              str(clients), str(events)],
                             cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert swarm.stdout.readline().strip() == "ready"
        with recording(signals.client_connected, sender=server.app) as connected:
            stalled = server.stalled()
            wait_for(lambda: connected, what="the stalled client's connection")
        slowest = 0.0
        for seq in range(events):
            started = time.perf_counter()
            assert server.cnerium.emit("load.tick", {"seq": seq, "pad": "x" * 100})
            slowest = max(slowest, time.perf_counter() - started)
        frames = read_frames(stalled, timeout=30)
        result = json.loads(swarm.communicate(timeout=60)[0])
    finally:
        swarm.kill()
    assert result["counts"] == [events] * clients
    assert all(result["in_order"])
    opcode, payload = frames[-1]
    assert opcode == 0x8 and int.from_bytes(payload[:2], "big") == 1008
    assert b"slow consumer" in payload
    seqs = [json.loads(p)["payload"]["seq"] for op, p in frames if op == 0x1]
    assert seqs == list(range(len(seqs))) and len(seqs) < events
    assert slowest < 1.0, f"one emit took {slowest:.3f} s"


def test_realtime_signals_fire_with_their_arguments(realtime_server: Serve) -> None:
    server = realtime_server()
    app = server.app
    names = ["client_connected", "client_subscribed", "event_emitted",
             "client_unsubscribed", "client_disconnected"]
    with recording(*(getattr(signals, name) for name in names), sender=app) as calls:
        client = server.connect(["orders"])
        server.cnerium.emit_to("orders", "order.paid", {"order_id": "o1"})
        client.expect("order.paid")
        client.send_json({"action": "unsubscribe", "room": "orders"})
        client.expect("cnerium.unsubscribed")
        client.close()
        wait_for(lambda: len(calls) == 5, what="client_disconnected")
    assert [call["signal"] for call in calls] == [s.replace("_", "-") for s in names]
    assert all(call["sender"] is app for call in calls)
    connection = calls[0]["connection"]
    assert all(call["connection"] is connection for call in calls if "connection" in call)
    assert calls[1]["room"] == calls[3]["room"] == "orders"
    emitted = calls[2]
    assert (emitted["event"].type, emitted["event"].payload, emitted["room"]) == \
        ("order.paid", {"order_id": "o1"}, "orders")
    assert calls[4]["reason"] == "closed by the client (1000)"
    assert connection.rooms == frozenset() and connection.remote_addr == "127.0.0.1"

