"""Small helpers of the durable tests: raw HTTP, direct database queries, waiting."""

from __future__ import annotations

import http.client
import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg2

ORDER = {"product_id": "p1", "quantity": 2}
RECORDS = "cnerium_idempotency"
ORDERS = "test_orders"


@dataclass
class HttpAnswer:
    """One HTTP answer: status, headers (lower-cased names) and body bytes."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_post(base_url: str, path: str, body: Any, key: str | None = None,
              headers: dict[str, str] | None = None, timeout: float = 60) -> HttpAnswer:
    """POST ``body`` (JSON-encoded unless bytes) with an ``Idempotency-Key`` header."""
    host, port = base_url.removeprefix("http://").split(":")
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        sent["Idempotency-Key"] = key
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("POST", path, body=data, headers=sent)
        response = conn.getresponse()
        return HttpAnswer(response.status, {k.lower(): v for k, v in response.getheaders()},
                          response.read())
    finally:
        conn.close()


def query(url: str, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
    """Run one statement on the database at ``url`` with a fresh connection; its rows."""
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url[len("sqlite:///"):], timeout=10)
        try:
            rows = conn.execute(sql.replace("%s", "?"), params).fetchall()
            conn.commit()
            return rows
        finally:
            conn.close()
    conn = psycopg2.connect(url, connect_timeout=5)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def count(url: str, table: str, where: str = "", params: Sequence[Any] = ()) -> int:
    """Rows of ``table`` (optionally ``WHERE where``) in the database at ``url``."""
    sql = f"SELECT COUNT(*) FROM {table}" + (f" WHERE {where}" if where else "")
    return query(url, sql, params)[0][0]


def wait_for(condition: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    """Poll ``condition`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def run_together(calls: Sequence[Callable[[], Any]], timeout: float = 90) -> list[Any]:
    """Run every call in its own thread, released at once by a barrier; their results."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except BaseException as exc:  # reported to the test below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), "a concurrent call did not finish"
    return results


class Background:
    """Run one call in a thread; ``result()`` joins it and re-raises what it raised."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self._value: Any = None
        self._error: BaseException | None = None
        self.finished_at: float | None = None
        """``time.monotonic()`` when the call returned or raised."""
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self._value = call()
        except BaseException as exc:
            self._error = exc
        finally:
            self.finished_at = time.monotonic()

    def done(self) -> bool:
        """Whether the call has returned (or raised)."""
        return not self._thread.is_alive()

    def result(self, timeout: float = 60) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the background call did not finish"
        if self._error is not None:
            raise self._error
        return self._value


def post(client: Any, body: Any = None, key: str | None = "order-123", path: str = "/orders",
         content_type: str = "application/json", headers: dict[str, str] | None = None) -> Any:
    """POST through a Flask test client: ``body`` JSON-encoded unless it is bytes or str."""
    data = body if isinstance(body, bytes | str) else json.dumps(ORDER if body is None else body)
    sent = dict(headers or {})
    if key is not None:
        sent["Idempotency-Key"] = key
    return client.post(path, data=data, headers=sent, content_type=content_type)


def assert_stored_or_in_progress(answer: Any, stored_body: bytes) -> None:
    """A twin's HTTP answer: the stored response's body, or a 409 request-in-progress problem
    with a Retry-After."""
    if answer.status == 201:
        assert answer.body == stored_body
    else:
        assert answer.status == 409, (answer.status, answer.body)
        assert answer.json()["type"].endswith("/request-in-progress")
        assert answer.headers["retry-after"]


def problem_slug(response: Any) -> str:
    """The last path segment of a problem response's ``type`` (after checking its shape)."""
    assert response.mimetype == "application/problem+json", response.data
    doc = response.get_json(force=True)
    assert {"type", "title", "status", "detail"} <= doc.keys(), doc
    assert doc["status"] == response.status_code
    return doc["type"].rstrip("/").rsplit("/", 1)[-1]


def orders(app: Any) -> int:
    """Handler runs that committed: rows of the app's ``test_orders`` table."""
    model = app.extensions["test_orders"]
    with model._meta.database.connection_context():
        return model.select().count()


def records(app: Any) -> list[Any]:
    """Every row of the store's table, read through the app's store."""
    state = app.extensions["cnerium"]
    assert state.start(app), "the store could not be opened"
    store = state.store
    with store.database.connection_context():
        return list(store.model.select().order_by(store.model.id))


def record_run(request: Any, product: str = "x") -> int:
    """Count one handler run in the app's database (inside the store's transaction when
    the database is shared); the new order's id."""
    from flask import current_app

    order = current_app.extensions["test_orders"].create(
        idempotency_key=request.idempotency_key_value(), product_id=product, quantity=1,
        pid=os.getpid())
    return order.id


def prepare(backend: Any) -> None:
    """Create the tables once, as a deployment's start-up would, before the workers race."""
    from tests.apps.durable_app import create_app

    app = create_app(backend.data_dir, mode=backend.mode, database_url=backend.database_url,
                     store_url=backend.store_url)
    state = app.extensions["cnerium"]
    assert state.start(app)
    state.store.close()
    app.extensions["test_orders"]._meta.database.close()


def dead_pg_url() -> str:
    """A PostgreSQL URL on a local port where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"postgresql://postgres@127.0.0.1:{port}/nothing"
