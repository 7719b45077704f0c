"""The WebSocket wire (SPEC §3.1, §3.2) through a live server and real clients.

Event and control frames, rooms at connect, bad input, the 16-times frame limit, WebSocket
pings answered through the same write path as events, room authorization, and
``cnerium.realtime(...)``.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import websocket
from flask import Flask, request

from flask_cnerium import Cnerium, signals
from tests.live import Client, RealtimeServer, create_realtime_app, recording, wait_for

Serve = Callable[..., RealtimeServer]
MAX_FRAME = 256


def test_event_frames_carry_the_wire_fields(realtime_server: Serve) -> None:
    server = realtime_server()
    client = server.connect(["orders"])
    server.cnerium.emit_to("orders", "order.created", {"order_id": "o1", "total": 12.5})
    server.cnerium.emit("stock.changed", {"sku": "s1"})
    first, second = client.expect("order.created"), client.expect("stock.changed")
    assert set(first) == {"type", "payload", "room", "id", "ts", "node"}
    assert (first["payload"], first["room"], first["node"]) == \
        ({"order_id": "o1", "total": 12.5}, "orders", "test-node")
    assert second["room"] is None
    assert first["id"] != second["id"]
    for frame in (first, second):
        assert frame["ts"].endswith("Z")
        stamp = datetime.fromisoformat(frame["ts"].replace("Z", "+00:00"))
        assert stamp.tzinfo == UTC
        assert abs((datetime.now(UTC) - stamp).total_seconds()) < 60


def test_rooms_given_at_connect_are_joined(realtime_server: Serve) -> None:
    server = realtime_server()
    client = server.connect(["orders", "shop:42"])
    server.cnerium.emit_to("shop:42", "shop.opened", {})
    assert client.expect("shop.opened")["room"] == "shop:42"
    client.send_json({"action": "subscribe", "room": "orders"})  # already in: confirmed again
    assert client.expect("cnerium.subscribed")["room"] == "orders"


def _send_text(text: str) -> Callable[[Client], None]:
    return lambda client: client.ws.send(text)


BAD_INPUT = {
    "not-json": (_send_text("{nope"), "invalid-json"),
    "array": (_send_text("[1, 2]"), "invalid-message"),
    "json-string": (_send_text('"subscribe"'), "invalid-message"),
    "unknown-action": (_send_text('{"action": "dance"}'), "unknown-action"),
    "missing-action": (_send_text('{"room": "orders"}'), "unknown-action"),
    "bad-room": (_send_text('{"action": "subscribe", "room": "no spaces"}'), "invalid-room"),
    "missing-room": (_send_text('{"action": "subscribe"}'), "invalid-room"),
    "number-room": (_send_text('{"action": "unsubscribe", "room": 7}'), "invalid-room"),
    "binary-frame": (lambda client: client.ws.send_binary(b'{"action": "ping"}'),
                     "binary-frame"),
    "frame-too-large": (_send_text(json.dumps({"action": "ping", "pad": "x" * MAX_FRAME})),
                        "frame-too-large"),
}


@pytest.mark.parametrize("name", list(BAD_INPUT))
def test_bad_input_gets_an_error_and_the_connection_still_works(realtime_server: Serve,
                                                                 name: str) -> None:
    server = realtime_server(CNERIUM_REALTIME_MAX_FRAME=MAX_FRAME)
    client = server.connect(["orders"])
    send, code = BAD_INPUT[name]
    send(client)
    error = client.expect("cnerium.error")
    assert error["error"] == code and error["detail"]
    client.ping()
    server.cnerium.emit_to("orders", "order.created", {"still": "subscribed"})
    assert client.expect("order.created")["payload"] == {"still": "subscribed"}


def test_too_many_rooms_gets_an_error_and_the_connection_still_works(
        realtime_server: Serve) -> None:
    server = realtime_server(CNERIUM_REALTIME_MAX_ROOMS=2)
    client = server.connect(["a", "b"])
    client.send_json({"action": "subscribe", "room": "c"})
    error = client.expect("cnerium.error")
    assert (error["error"], error["room"]) == ("too-many-rooms", "c")
    client.send_json({"action": "unsubscribe", "room": "a"})
    client.expect("cnerium.unsubscribed")
    client.send_json({"action": "subscribe", "room": "c"})
    assert client.expect("cnerium.subscribed")["room"] == "c"


def test_a_frame_over_16_times_the_limit_closes_the_socket_with_1009(
        realtime_server: Serve) -> None:
    server = realtime_server(CNERIUM_REALTIME_MAX_FRAME=MAX_FRAME)
    client, other = server.connect(), server.connect()
    with recording(signals.client_disconnected, sender=server.app) as calls:
        client.ws.send("x" * (16 * MAX_FRAME + 1))
        client.ws.settimeout(5)
        opcode, frame = client.ws.recv_data_frame(True)
        wait_for(lambda: calls, what="client_disconnected")
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert int.from_bytes(frame.data[:2], "big") == 1009
    assert [call["reason"] for call in calls] == [
        "closed by the server (1009: Message is too big)"]
    other.ping()


def test_websocket_pings_are_answered_between_whole_event_frames(
        realtime_server: Serve) -> None:
    server = realtime_server()
    client = server.connect(["orders"])
    events, pings = 500, 100

    def emit_all() -> None:
        for n in range(events):
            server.cnerium.emit_to("orders", "order.numbered", {"n": n, "pad": "y" * 300})

    emitter = threading.Thread(target=emit_all)
    emitter.start()
    for n in range(pings):
        client.ws.ping(f"ping-{n}")
    emitter.join(30)
    client.ws.settimeout(10)
    seen, pongs = [], []
    while len(seen) < events or len(pongs) < pings:
        opcode, frame = client.ws.recv_data_frame(True)
        if opcode == websocket.ABNF.OPCODE_PONG:
            pongs.append(frame.data.decode())
        else:
            seen.append(json.loads(frame.data)["payload"]["n"])
    assert seen == list(range(events))
    assert pongs == [f"ping-{n}" for n in range(pings)]


def test_a_refused_room_is_forbidden_and_the_authorizer_sees_the_cookies(
        realtime_server: Serve) -> None:
    server = realtime_server()
    seen: list[tuple[str, str | None]] = []

    @server.cnerium.authorize_room
    def own_user_room_only(room: str) -> bool:
        user = request.cookies.get("user")
        seen.append((room, user))
        return not room.startswith("user:") or room == f"user:{user}"

    client = server.connect(["orders", "user:42"], cookie="user=42")
    client.send_json({"action": "subscribe", "room": "user:7"})
    error = client.expect("cnerium.error")
    assert (error["error"], error["room"]) == ("forbidden", "user:7")
    assert seen == [("orders", "42"), ("user:42", "42"), ("user:7", "42")]
    server.cnerium.emit_to("user:7", "user.notified", {})
    server.cnerium.emit_to("user:42", "user.notified", {"to": 42})
    assert client.expect("user.notified")["payload"] == {"to": 42}


def test_rooms_refused_at_connect_and_failing_authorizers_are_forbidden(
        realtime_server: Serve, caplog: pytest.LogCaptureFixture) -> None:
    server = realtime_server()

    @server.cnerium.authorize_room
    def broken(room: str) -> bool:
        if room == "crash":
            raise LookupError("no session store")
        return room != "secret"

    client = Client(server.ws_url(["secret", "crash", "orders"]))
    assert [client.recv_json()["error"] for _ in range(2)] == ["forbidden", "forbidden"]
    assert client.expect("cnerium.subscribed")["room"] == "orders"
    assert "no session store" in caplog.text
    client.ping()
    client.close()


def test_realtime_method_serves_the_endpoint_for_new_and_registered_apps(
        tmp_path: Path, realtime_server: Serve) -> None:
    early = Cnerium()
    early.realtime("/live", host="rt.example.com", port=443)
    app = _app(tmp_path / "early")
    early.init_app(app)
    assert (app.config["CNERIUM_REALTIME_ENDPOINT"], app.config["CNERIUM_REALTIME_HOST"],
            app.config["CNERIUM_REALTIME_PORT"]) == ("/live", "rt.example.com", 443)

    late_app = _app(tmp_path / "late")
    late = Cnerium(late_app)
    late.realtime("/events")
    for cnerium, served, endpoint in ((early, app, "/live"), (late, late_app, "/events")):
        server = realtime_server(app=served, cnerium=cnerium, endpoint=endpoint)
        client = server.connect(["orders"])
        cnerium.emit_to("orders", "order.created", {"via": endpoint})
        assert client.expect("order.created")["payload"] == {"via": endpoint}
    with pytest.raises(RuntimeError, match=r"before cnerium\.start"):
        late.realtime("/elsewhere")


def test_tls_in_the_wsgi_server_is_refused_with_a_clear_error(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = RealtimeServer(*create_realtime_app(tmp_path / "data"), ssl_context=context)
    try:
        ws = websocket.create_connection(f"wss://127.0.0.1:{server.port}/ws", timeout=5,
                                         sslopt={"cert_reqs": ssl.CERT_NONE})
        opcode, frame = ws.recv_data_frame(True)
        ws.close()
    finally:
        server.stop()
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert int.from_bytes(frame.data[:2], "big") == 1011
    assert "terminate TLS in front of the app" in caplog.text


def test_realtime_disabled_serves_no_endpoint(tmp_path: Path) -> None:
    app = _app(tmp_path)
    Cnerium(app)
    assert app.test_client().get("/ws").status_code == 404


def _app(data_dir: Path) -> Flask:
    app = Flask(__name__)
    app.config.update(CNERIUM_DATA_DIR=str(data_dir), CNERIUM_NODE_ID="test-node")
    return app

