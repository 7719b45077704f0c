"""Fixtures shared by the suite: apps with Cnerium, PostgreSQL databases, live servers.

Durable fixtures first; realtime fixtures are appended at the end of this file.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import psycopg2
import pytest
from flask import Flask

from tests.apps.durable_app import create_app

REPO = Path(__file__).resolve().parent.parent
PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
PG_ADMIN_URL = PG_SERVER + "/test"


def service_unavailable(service: str, detail: object) -> NoReturn:
    """Skip a test whose server is not running; under ``CI=true`` fail it loudly instead."""
    message = f"{service} is not reachable ({detail}); start it to run this test."
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} CI=true requires it, so this is a failure, not a skip.",
                    pytrace=False)
    pytest.skip(message)


def _close_app(app: Flask) -> None:
    state = app.extensions.get("cnerium")
    if state is not None and state.store is not None:
        state.store.close()
    database = app.extensions["test_orders"]._meta.database
    if not database.is_closed():
        database.close()


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[Callable[..., Flask]]:
    """Factory of test apps (``tests.apps.durable_app.create_app``) with a temp data dir.

    ``make_app(mode="shared")`` passes the app's peewee database to ``Cnerium(app,
    database=db)``; other keywords go to ``create_app`` (``config=``, ``database_url=``,
    ``store_url=``, ``data_dir=``, ``gate=``).
    """
    apps: list[Flask] = []

    def make(**kwargs: Any) -> Flask:
        data_dir = kwargs.pop("data_dir", None) or str(tmp_path / "data")
        app = create_app(data_dir, **kwargs)
        app.testing = True
        apps.append(app)
        return app

    yield make
    for app in apps:
        _close_app(app)


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    """A test app whose store is Cnerium's own SQLite file in a temp data dir."""
    return make_app()


@pytest.fixture
def shared_app(make_app: Callable[..., Flask]) -> Flask:
    """A test app whose store shares the app's SQLite database (``database=``)."""
    return make_app(mode="shared")


@pytest.fixture
def client(app: Flask):
    """The test client of :func:`app`."""
    return app.test_client()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test (dropped afterwards); its URL."""
    try:
        admin = psycopg2.connect(PG_ADMIN_URL, connect_timeout=3)
    except psycopg2.OperationalError as exc:
        service_unavailable("PostgreSQL at 127.0.0.1:5432", str(exc).strip())
    admin.autocommit = True
    name = "cnerium_t_" + uuid.uuid4().hex[:12]
    try:
        _create_database(admin, name)
        yield f"{PG_SERVER}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def _create_database(admin, name: str) -> None:
    """CREATE DATABASE, retried while another session briefly holds the template."""
    for attempt in range(20):
        try:
            with admin.cursor() as cur:
                cur.execute(f"CREATE DATABASE {name}")
            return
        except psycopg2.errors.ObjectInUse:
            if attempt == 19:
                raise
            time.sleep(0.1)


BACKENDS = ["sqlite-separate", "sqlite-shared", "pg-separate", "pg-shared"]


@dataclass
class Backend:
    """Where a test app keeps its orders and its idempotency records."""

    name: str
    mode: str
    data_dir: str
    database_url: str
    store_url: str | None
    records_url: str

    def app_kwargs(self) -> dict[str, Any]:
        """Keywords for ``make_app`` / ``create_app`` / ``app_env`` (with ``data_dir``)."""
        return {"mode": self.mode, "data_dir": self.data_dir,
                "database_url": self.database_url, "store_url": self.store_url}


@pytest.fixture
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """One of ``BACKENDS`` (parametrize with ``indirect=True``): SQLite or a fresh PostgreSQL
    database, with a separate store or the store in the app's database (``database=``)."""
    engine, mode = request.param.split("-")
    data_dir = str(tmp_path / "data")
    if engine == "pg":
        url = request.getfixturevalue("pg_url")
        return Backend(request.param, mode, data_dir, url, url if mode == "separate" else None,
                       url)
    app_db = "sqlite:///" + os.path.join(data_dir, "app.db")
    records = app_db if mode == "shared" else "sqlite:///" + os.path.join(data_dir, "cnerium.db")
    return Backend(request.param, mode, data_dir, app_db, None, records)


class LiveServer:
    """A test app served over real HTTP by a subprocess (``tests/apps/serve.py``)."""

    def __init__(self, target: str, env: dict[str, str], workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port_file = workdir / "port"
        self.log_path = workdir / "server.log"
        self.port: int | None = None
        child_env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **env}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.apps.serve", target, str(self.port_file)],
                cwd=REPO, env=child_env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        assert self.port is not None, "the server is not ready: call wait_ready() first"
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60) -> LiveServer:
        """Wait until the server listens (it writes its port once bound); fail if it died."""
        deadline = time.monotonic() + timeout
        while not self.port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"the test server did not start:\n{self.log()}", pytrace=False)
            time.sleep(0.02)
        self.port = int(self.port_file.read_text())
        return self

    def kill(self) -> None:
        """SIGKILL the server (no cleanup of any kind in the child) and reap it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        """Terminate the server, killing it if it does not exit promptly."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        """What the server wrote to stdout and stderr."""
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Factory: ``live_server(env={...})`` starts a server subprocess on a free port.

    ``target`` is ``module:factory`` (default: the durable test app built from
    ``CNERIUM_TEST_*`` variables, see ``tests.apps.durable_app.app_env``). With
    ``wait=False`` it returns at once; call ``wait_ready()`` (start several, then wait).
    Every server is stopped when the test ends.
    """
    servers: list[LiveServer] = []

    def start(env: dict[str, str] | None = None, *, wait: bool = True,
              target: str = "tests.apps.durable_app:create_app_from_env") -> LiveServer:
        server = LiveServer(target, env or {}, tmp_path / f"server-{len(servers)}")
        servers.append(server)
        return server.wait_ready() if wait else server

    yield start
    for server in servers:
        server.stop()


# -- realtime fixtures -------------------------------------------------------------------

from tests.live import (  # noqa: E402 - appended section
    PrivateRedis,
    RealtimeServer,
    create_realtime_app,
)


@pytest.fixture
def realtime_server(tmp_path: Path) -> Iterator[Callable[..., RealtimeServer]]:
    """Factory: ``realtime_server(**config)`` serves ``tests.live``'s realtime app in a thread.

    Keywords are ``CNERIUM_*`` config keys, plus ``shared=True`` for a store in the app's
    own database; or ``app=``, ``cnerium=`` (and ``endpoint=``) serve an app of the test's
    own. Servers, their clients and stores are closed when the test ends.
    """
    servers: list[RealtimeServer] = []

    def start(app: Flask | None = None, cnerium: Any = None, endpoint: str = "/ws",
              **options: Any) -> RealtimeServer:
        if app is None:
            app, cnerium = create_realtime_app(tmp_path / f"realtime-{len(servers)}", **options)
        server = RealtimeServer(app, cnerium, endpoint)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A started :class:`PrivateRedis`, stopped when the test ends."""
    if shutil.which("redis-server") is None:
        service_unavailable("redis-server (the program)", "not installed")
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()
