"""The shared brokers (SPEC §3.3, issue 4): Redis pub/sub and PostgreSQL LISTEN/NOTIFY.

Real servers: the broker test app (``tests/apps/broker_app.py``) in three processes on three
ports, or in three gunicorn workers behind one port; real WebSocket clients; the Redis and
PostgreSQL servers of this machine (a private ``redis-server`` for the outage test). Each
test has its own service name, hence its own channel, and its own PostgreSQL database.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psycopg2
import pytest
import websocket
from flask import Flask

from flask_cnerium import Cnerium
from flask_cnerium.brokers import BrokerError, create_broker
from flask_cnerium.brokers.postgres import TABLE
from tests.conftest import LiveServer, service_unavailable
from tests.live import Client, PrivateRedis, free_port, stop_process, wait_for

REPO = Path(__file__).resolve().parent.parent
REDIS_URL = "redis://127.0.0.1:6379/0"
APP = "tests.apps.broker_app:create_app_from_env"
BROKERS = [pytest.param("redis", marks=pytest.mark.redis),
           pytest.param("postgresql", marks=pytest.mark.postgres)]
SETTLE = 0.3
"""Seconds to wait, once every expected event arrived, for a duplicate that must not come."""
SOCKETS_PER_WORKER = 4
"""Connections (and threads) of each gunicorn worker in the gunicorn test."""
RESUME_WITHIN = 10.0
"""Seconds within which delivery must resume after the broker's server is back."""

Servers = Callable[..., LiveServer]


# -- services ----------------------------------------------------------------------------

@pytest.fixture
def redis_url() -> str:
    """The shared Redis on 127.0.0.1:6379 (each test uses its own channel on it)."""
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            assert sock.recv(64).startswith(b"+PONG")
    except (OSError, AssertionError) as exc:
        service_unavailable("Redis at 127.0.0.1:6379", exc)
    return REDIS_URL


@pytest.fixture
def broker_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """Server environment for the broker named by ``request.param``, with a fresh channel."""
    env = {"CNERIUM_TEST_NAME": "t" + uuid.uuid4().hex[:10],
           "CNERIUM_TEST_DATA_DIR": str(tmp_path / "data")}
    if request.param == "redis":
        env["CNERIUM_TEST_BROKER"] = request.getfixturevalue("redis_url")
    else:
        env["CNERIUM_TEST_BROKER"] = "postgresql"  # LISTEN/NOTIFY on the store's database
        env["CNERIUM_TEST_STORE_URL"] = request.getfixturevalue("pg_url")
    return env


@pytest.fixture
def servers(live_server: Callable[..., LiveServer]) -> Servers:
    """``servers(n, env)``: ``n`` broker test app processes on their own ports, all ready."""
    def start(count: int, env: dict[str, str]) -> list[LiveServer]:
        started = [live_server(env, wait=False, target=APP) for _ in range(count)]
        return [server.wait_ready() for server in started]

    return start


# -- HTTP and WebSocket helpers ----------------------------------------------------------

def http_call(port: int, method: str, path: str, body: object = None) -> dict:
    """One request to 127.0.0.1:``port`` on a new connection; the JSON answer (must be 200)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        assert response.status == 200, (response.status, data[:500])
        return json.loads(data)
    finally:
        conn.close()


def emit(port: int, type: str, tag: str, room: str | None = None, **extra: object) -> dict:
    """``POST /emit``: the event ``type`` with payload ``{"tag": tag, ...}``; the answer."""
    body = {"type": type, "room": room, "payload": {"tag": tag, **extra}}
    return http_call(port, "POST", "/emit", body)


def connect(port: int, rooms: tuple[str, ...] = ()) -> Client:
    """A WebSocket client of 127.0.0.1:``port``/ws that has confirmed ``rooms`` (or a ping)."""
    query = "&".join(f"room={room}" for room in rooms)
    client = Client(f"ws://127.0.0.1:{port}/ws" + (f"?{query}" if query else ""))
    for room in rooms:
        assert client.expect("cnerium.subscribed")["room"] == room
    if not rooms:
        client.ping()
    return client


def events_until(client: Client, done: Callable[[list[dict]], bool],
                 timeout: float = 10) -> list[dict]:
    """The event frames ``client`` receives until ``done(frames)``; fails after ``timeout``."""
    frames: list[dict] = []
    deadline = time.monotonic() + timeout
    while not done(frames):
        remaining = deadline - time.monotonic()
        try:
            assert remaining > 0
            frame = client.recv_json(remaining)
        except (AssertionError, websocket.WebSocketTimeoutException):
            raise AssertionError(f"timed out; received {[f['payload'] for f in frames]}"
                                 ) from None
        if not frame["type"].startswith("cnerium."):
            frames.append(frame)
    return frames


def assert_exactly(clients: dict[Client, set[str]]) -> None:
    """Each client receives each tag it expects once (ids never repeat), and nothing else."""
    for client, tags in clients.items():
        count = len(tags)
        frames = events_until(client, lambda f, n=count: len(f) >= n)
        ids = Counter(frame["id"] for frame in frames)
        assert ids.most_common(1)[0][1] == 1, f"duplicate event ids: {ids}"
        assert {frame["payload"]["tag"] for frame in frames} == tags
    time.sleep(SETTLE)
    for client in clients:
        client.assert_quiet(0.01)


def close_all(clients: list[Client]) -> None:
    for client in clients:
        client.close()


# -- several processes, each broker ------------------------------------------------------

@pytest.mark.parametrize("broker_env", BROKERS, indirect=True)
def test_three_processes_deliver_every_event_exactly_once(servers: Servers,
                                                          broker_env: dict[str, str]) -> None:
    """Clients on three processes get every event emitted from any of them, once each;
    room filtering holds; a message over NOTIFY's 8000 bytes arrives too."""
    processes = servers(3, broker_env)
    ports = [server.port for server in processes]
    in_room = [connect(port, ("orders",)) for port in ports]
    no_room = [connect(port) for port in ports]
    other_room = [connect(port, ("admin",)) for port in ports]
    try:
        broadcasts, to_orders = set(), set()
        for index, port in enumerate(ports):
            broadcasts.add(f"b{index}")
            to_orders.add(f"o{index}")
            assert emit(port, "stock.changed", f"b{index}")["emitted"] is True
            assert emit(port, "order.created", f"o{index}", room="orders")["emitted"] is True
        to_orders.add("big")
        big = emit(ports[1], "order.created", "big", room="orders", blob="x" * 12000)
        assert big["emitted"] is True

        expected = {c: broadcasts | to_orders for c in in_room}
        expected |= {c: broadcasts for c in no_room + other_room}
        assert_exactly(expected)
    finally:
        close_all(in_room + no_room + other_room)


# -- gunicorn ----------------------------------------------------------------------------

class Gunicorn:
    """The broker test app under gunicorn: gthread workers (3 by default) behind one port."""

    def __init__(self, env: dict[str, str], workdir: Path, preload: bool,
                 workers: int = 3) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "gunicorn.log"
        self.connections = workdir / "connections"
        # A worker holding SOCKETS_PER_WORKER connections stops accepting, so the kernel's
        # choice of worker cannot put every socket on one; a WebSocket holds a thread.
        argv = [sys.executable, "-m", "gunicorn", "-w", str(workers), "-k", "gthread",
                "--threads", str(SOCKETS_PER_WORKER),
                "--worker-connections", str(SOCKETS_PER_WORKER), "--keep-alive", "0",
                "-b", "127.0.0.1:0", "--graceful-timeout", "2", *(["--preload"] * preload),
                APP + "()"]
        env = {**os.environ, **env, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
               "CNERIUM_TEST_CONNECTIONS": str(self.connections),
               "CNERIUM_TEST_START": "1" if preload else "0"}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.port = int(wait_for(self._listening, timeout=30, what="gunicorn to listen"))
        wait_for(lambda: self.log().count("Booting worker") >= workers, timeout=30,
                 what=f"{workers} gunicorn workers")
        http_call(self.port, "GET", "/health")

    def _listening(self) -> str | None:
        assert self.proc.poll() is None, self.log()
        found = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", self.log())
        return found.group(1) if found else None

    def log(self) -> str:
        """What gunicorn and its workers wrote."""
        return self.log_path.read_text(errors="replace")

    def socket_holders(self) -> set[str]:
        """The pids of the workers that have accepted a WebSocket connection."""
        return set(self.connections.read_text().split()) if self.connections.exists() else set()

    def stop(self) -> None:
        """Stop the master and its workers."""
        stop_process(self.proc, group=True)


@pytest.mark.parametrize(("broker_env", "preload"),
                         [pytest.param("redis", False, marks=pytest.mark.redis),
                          pytest.param("postgresql", True, marks=pytest.mark.postgres)],
                         ids=["redis", "postgresql-preload"], indirect=["broker_env"])
def test_gunicorn_workers_deliver_every_event_exactly_once(
        broker_env: dict[str, str], preload: bool, tmp_path: Path) -> None:
    """Under gunicorn with flask-sock, whichever worker holds a socket and whichever worker
    emits, each client gets each event once. With ``--preload`` Cnerium starts in the
    master and each forked worker listens anew."""
    server = Gunicorn(broker_env, tmp_path / "gunicorn", preload)
    clients: list[Client] = []
    try:
        # one more socket than a worker accepts: at least two workers hold sockets, so
        # every emit below reaches some sockets only through the broker
        for index in range(SOCKETS_PER_WORKER + 1):
            clients.append(connect(server.port, ("orders",) if index % 2 == 0 else ("admin",)))
        assert len(server.socket_holders()) >= 2, server.socket_holders()
        broadcasts, to_orders = set(), set()
        for number in range(3):
            for type, room, tags in (("stock.changed", None, broadcasts),
                                     ("order.created", "orders", to_orders)):
                tag = f"{type[0]}{number}"
                assert emit(server.port, type, tag, room=room)["emitted"] is True
                tags.add(tag)
        assert_exactly({client: broadcasts | (to_orders if index % 2 == 0 else set())
                        for index, client in enumerate(clients)})
    finally:
        close_all(clients)
        server.stop()
    assert "Traceback" not in server.log(), server.log()


# -- outages -----------------------------------------------------------------------------

def assert_delivery_resumes(emitter: int, client: Client, prefix: str) -> None:
    """Emit until ``client`` hears one (within :data:`RESUME_WITHIN`), then once more:
    that one arrives exactly once."""
    deadline = time.monotonic() + RESUME_WITHIN
    sent = 0
    heard: list[dict] = []
    while not heard:
        assert time.monotonic() < deadline, "delivery did not resume"
        emit(emitter, "stock.changed", f"{prefix}{sent}")
        sent += 1
        with_timeout = min(0.2, max(0.01, deadline - time.monotonic()))
        with contextlib.suppress(websocket.WebSocketTimeoutException):
            heard = [client.recv_json(with_timeout)]
    assert heard[0]["payload"]["tag"].startswith(prefix)
    time.sleep(SETTLE)
    while True:  # the ones emitted just before it may still arrive: each once
        try:
            heard.append(client.recv_json(0.05))
        except websocket.WebSocketTimeoutException:
            break
    tags = [frame["payload"]["tag"] for frame in heard]
    assert len(tags) == len(set(tags)), tags
    assert emit(emitter, "stock.changed", "final")["emitted"] is True
    assert_exactly({client: {"final"}})


@pytest.mark.redis
def test_redis_outage_emit_false_then_delivery_resumes(servers: Servers,
                                                       private_redis: PrivateRedis,
                                                       tmp_path: Path) -> None:
    env = {"CNERIUM_TEST_NAME": "outage", "CNERIUM_TEST_DATA_DIR": str(tmp_path / "data"),
           "CNERIUM_TEST_BROKER": private_redis.url}
    emitter, holder = servers(2, env)
    client = connect(holder.port)
    try:
        assert emit(emitter.port, "stock.changed", "before")["emitted"] is True
        assert_exactly({client: {"before"}})

        private_redis.stop()
        started = time.monotonic()
        assert emit(emitter.port, "stock.changed", "lost")["emitted"] is False
        assert time.monotonic() - started < 2.5, "emit blocked while Redis was down"
        for server in (emitter, holder):
            assert http_call(server.port, "GET", "/health")["ok"] is True
        client.ping()

        private_redis.start()
        assert_delivery_resumes(emitter.port, client, "after")
    finally:
        client.close()
    for server in (emitter, holder):
        assert server.proc.poll() is None
    assert holder.log().count("lost its connection") == 1, holder.log()
    assert "is back; delivery resumes" in holder.log()


def _broker_backends(admin_url: str, database: str) -> Counter[str]:
    with psycopg2.connect(admin_url, connect_timeout=3) as conn, conn.cursor() as cur:
        cur.execute("SELECT application_name FROM pg_stat_activity "
                    "WHERE application_name LIKE 'cnerium-broker%%' AND datname = %s",
                    (database,))
        return Counter(name for (name,) in cur.fetchall())


@pytest.mark.postgres
def test_postgres_backends_terminated_then_delivery_resumes(servers: Servers, pg_url: str,
                                                            tmp_path: Path) -> None:
    env = {"CNERIUM_TEST_NAME": "terminate", "CNERIUM_TEST_DATA_DIR": str(tmp_path / "data"),
           "CNERIUM_TEST_BROKER": "postgresql", "CNERIUM_TEST_STORE_URL": pg_url}
    emitter, holder = servers(2, env)
    client = connect(holder.port)
    database = pg_url.rsplit("/", 1)[1]
    admin = pg_url.rsplit("/", 1)[0] + "/test"
    try:
        assert emit(emitter.port, "stock.changed", "before")["emitted"] is True
        assert_exactly({client: {"before"}})
        assert _broker_backends(admin, database) == {"cnerium-broker-listen": 2,
                                                     "cnerium-broker-notify": 1}

        with psycopg2.connect(admin, connect_timeout=3) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE application_name LIKE 'cnerium-broker%%' AND datname = %s",
                        (database,))
            assert cur.fetchone()[0] == 3
        for server in (emitter, holder):
            assert http_call(server.port, "GET", "/health")["ok"] is True
        assert_delivery_resumes(emitter.port, client, "after")
        assert _broker_backends(admin, database)["cnerium-broker-listen"] == 2
    finally:
        client.close()
    for server in (emitter, holder):
        assert server.proc.poll() is None
    assert holder.log().count("lost its connection") == 1, holder.log()


# -- the brokers in this process ---------------------------------------------------------

class Inbox:
    """A ``deliver`` function that keeps what it is handed."""

    def __init__(self) -> None:
        self.messages: list[tuple[str | None, str]] = []
        self._cond = threading.Condition()

    def __call__(self, room: str | None, message: str) -> None:
        with self._cond:
            self.messages.append((room, message))
            self._cond.notify_all()

    def wait(self, count: int, timeout: float = 5) -> list[tuple[str | None, str]]:
        """The messages, once there are ``count`` of them (fails after ``timeout``)."""
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.messages) >= count, timeout), \
                self.messages
            return list(self.messages)


class Named:
    """The one setting the brokers read: the service name."""

    def __init__(self, name: str) -> None:
        self.name = name


def _pg_database(url: str):
    import peewee

    return peewee.PostgresqlDatabase(url.rsplit("/", 1)[1], host="127.0.0.1", port=5432,
                                     user="postgres")


def _broker_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("cnerium-broker")]


@pytest.mark.parametrize("kind", BROKERS)
def test_each_process_hears_its_own_and_others_messages_once(
        kind: str, request: pytest.FixtureRequest) -> None:
    """Own messages come back through the listener (so delivery is once, not twice); another
    service's channel is not heard; stop() ends the listener threads."""
    if kind == "redis":
        url, database = request.getfixturevalue("redis_url"), None
    else:
        url, database = "postgresql", _pg_database(request.getfixturevalue("pg_url"))
    name = "t" + uuid.uuid4().hex[:10]
    inboxes = [Inbox(), Inbox(), Inbox()]
    brokers = [create_broker(url, inbox, settings=Named(name if i < 2 else name + "-other"),
                             database=database) for i, inbox in enumerate(inboxes)]
    try:
        for broker in brokers:
            broker.start()
        brokers[0].publish("orders", '{"n":0}')
        brokers[1].publish(None, '{"n":1}')
        large = '{"blob":"' + "é" * 5000 + '"}'  # 10 KB of UTF-8: over NOTIFY's limit
        brokers[1].publish("big", large)
        for inbox in inboxes[:2]:
            assert inbox.wait(3) == [("orders", '{"n":0}'), (None, '{"n":1}'), ("big", large)]
        time.sleep(SETTLE)
        assert [len(inbox.messages) for inbox in inboxes] == [3, 3, 0]
    finally:
        for broker in brokers:
            broker.stop()
    assert _broker_threads() == []


@pytest.mark.postgres
def test_postgres_large_messages_use_the_table_and_old_rows_are_deleted(pg_url: str) -> None:
    database = _pg_database(pg_url)
    inbox = Inbox()
    broker = create_broker("postgresql", inbox, settings=Named("large"), database=database)
    broker.start()
    try:
        just_small = "x" * (8000 - len("\n") - 1)
        broker.publish(None, just_small)
        broker.publish(None, just_small + "x")
        with psycopg2.connect(pg_url) as conn, conn.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {TABLE}")
            assert cur.fetchone()[0] == 1  # only the one at the limit went through the table
            cur.execute(f"UPDATE {TABLE} SET created_at = now() - interval '2 minutes'")
        assert [m for _, m in inbox.wait(2)] == [just_small, just_small + "x"]
        broker._clean_at = 0.0  # the next large message cleans up
        broker.publish("orders", "y" * 9000)
        assert inbox.wait(3)[2] == ("orders", "y" * 9000)
        with psycopg2.connect(pg_url) as conn, conn.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {TABLE}")
            assert cur.fetchone()[0] == 1
    finally:
        broker.stop()


def test_postgresql_broker_refuses_a_sqlite_store(tmp_path: Path) -> None:
    app = Flask(__name__)
    app.config.update(CNERIUM_DATA_DIR=str(tmp_path), CNERIUM_REALTIME_ENDPOINT="/ws",
                      CNERIUM_REALTIME_BROKER="postgresql")
    cnerium = Cnerium(app)
    with pytest.raises(ValueError, match="CNERIUM_DATABASE = 'postgresql://"), \
            app.app_context():
        cnerium.start()
    assert app.extensions["cnerium"].store is None


def test_redis_broker_without_redis_py_says_how_to_install_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ImportError, match=r"pip install 'flask-cnerium\[redis\]'"):
        create_broker("redis://127.0.0.1:6379/0", Inbox())


def test_redis_publish_fails_fast_when_redis_is_unreachable() -> None:
    broker = create_broker(f"redis://127.0.0.1:{free_port()}/0", Inbox())
    started = time.monotonic()
    with pytest.raises(BrokerError):
        broker.publish(None, "{}")
    assert time.monotonic() - started < 1.5
    broker.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_memory_broker_warns_when_gunicorn_runs_several_workers(tmp_path: Path,
                                                               workers: int) -> None:
    env = {"CNERIUM_TEST_NAME": "t" + uuid.uuid4().hex[:10],
           "CNERIUM_TEST_DATA_DIR": str(tmp_path / "data"), "CNERIUM_TEST_BROKER": "memory"}
    server = Gunicorn(env, tmp_path / "gunicorn", preload=False, workers=workers)
    try:
        assert emit(server.port, "order.created", "starts-cnerium")["emitted"] is True
        if workers > 1:
            wait_for(lambda: "gunicorn runs 2 workers" in server.log(), timeout=10,
                     what="the memory-broker warning")
        else:
            assert "CNERIUM_REALTIME_BROKER is 'memory'" not in server.log()
    finally:
        server.stop()
