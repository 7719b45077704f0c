"""The durable test app: one factory, used in-process by the tests and by server subprocesses.

Every handler run writes a row to the app's own ``test_orders`` table, so tests count runs in
the database, never in memory. ``mode="shared"`` passes the app's peewee database to
``Cnerium(app, database=db)``; ``mode="separate"`` keeps the store in ``CNERIUM_DATABASE``
(by default a SQLite file in the data dir) and the orders in the app's own database.

Subprocesses build the app with :func:`create_app_from_env` from ``CNERIUM_TEST_*``
variables (see :func:`app_env`).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import peewee
from flask import Flask, current_app
from playhouse import db_url

from flask_cnerium import Cnerium, DurableRequest, DurableResponse, created
from flask_cnerium.store import use_wal
from flask_cnerium.support import int_or, string_or

ORDERS_TABLE = "test_orders"


class Order(peewee.Model):
    """An order written by the handler: one row per handler run that committed."""

    idempotency_key = peewee.CharField(max_length=255)
    product_id = peewee.CharField(max_length=255)
    quantity = peewee.IntegerField()
    pid = peewee.IntegerField()

    class Meta:
        table_name = ORDERS_TABLE


def open_app_database(url: str) -> peewee.Database:
    """The app's own peewee database for a ``sqlite:///path`` or ``postgresql://`` URL."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        use_wal(path)  # server processes started together race to switch a new file to WAL
        return peewee.SqliteDatabase(path, timeout=5,
                                     pragmas={"journal_mode": "wal", "synchronous": "normal"})
    return db_url.connect(url)


def bind_order(database: peewee.Database) -> type[Order]:
    """An ``Order`` model bound to ``database`` (one per app, so apps never share a binding)."""

    class BoundOrder(Order):
        class Meta:
            table_name = ORDERS_TABLE

    BoundOrder._meta.set_database(database)
    return BoundOrder


def create_tables(database: peewee.Database, *models: type[peewee.Model]) -> None:
    """Create the app's tables; on PostgreSQL under a lock, as workers may start together."""
    with database.connection_context(), database.atomic():
        if isinstance(database, peewee.PostgresqlDatabase):
            database.execute_sql("SELECT pg_advisory_xact_lock(hashtext('test_orders'))")
        database.create_tables(models, safe=True)


def create_app(data_dir: str, *, mode: str = "separate", database_url: str | None = None,
               store_url: str | None = None, config: dict[str, Any] | None = None,
               gate: str | None = None) -> Flask:
    """A Flask app with Cnerium and the seed's ``/orders`` route (plus a few variants).

    ``database_url`` is the app's database (default ``<data_dir>/app.db``); in separate mode
    ``store_url`` is ``CNERIUM_DATABASE`` (default: Cnerium's own file in ``data_dir``).
    ``gate`` is a file: a body with ``"block": true`` writes its order, creates
    ``<gate>.entered`` and then waits while the gate exists.
    """
    app = Flask(__name__)
    app.config.update(CNERIUM_DATA_DIR=data_dir, TEST_GATE=gate)
    if store_url:
        app.config["CNERIUM_DATABASE"] = store_url
    app.config.update(config or {})
    os.makedirs(data_dir, exist_ok=True)
    database = open_app_database(database_url or "sqlite:///" + os.path.join(data_dir, "app.db"))
    orders = bind_order(database)
    create_tables(database, orders)
    cnerium = Cnerium(app, database=database if mode == "shared" else None)
    app.extensions["test_orders"] = orders

    @app.teardown_request
    def close_database(exc: BaseException | None) -> None:
        if not database.is_closed() and not database.in_transaction():
            database.close()

    @app.after_request
    def name_the_worker(response):
        response.headers["X-Test-Pid"] = str(os.getpid())  # added after a replay too
        return response

    @app.get("/health")
    def health() -> dict:
        return {"ok": True, "pid": os.getpid()}

    @app.get("/orders")
    def list_orders() -> dict:
        return {"count": orders.select().count()}

    @cnerium.durable_post("/orders", "orders.create")
    def create_order(request: DurableRequest) -> DurableResponse:
        return _create(request)

    @cnerium.durable_post("/shops/<shop>/orders", "orders.create", endpoint="shop_orders")
    def create_shop_order(request: DurableRequest, shop: str) -> DurableResponse:
        return _create(request, shop=shop)

    @cnerium.durable_post("/refunds", "refunds.create")
    def create_refund(request: DurableRequest) -> DurableResponse:
        return _create(request)

    return app


def _create(request: DurableRequest, **extra: Any) -> DurableResponse:
    """The seed's handler, plus test behaviours named in the body (sleep, fail, block)."""
    body = request.json()
    product_id = string_or(body, "product_id", "")
    if not product_id:
        return DurableResponse.bad_request("Missing required field: product_id")
    orders = current_app.extensions["test_orders"]
    order = orders.create(idempotency_key=request.idempotency_key_value(),
                          product_id=product_id, quantity=int_or(body, "quantity", 1),
                          pid=os.getpid())
    if body.get("sleep"):
        time.sleep(float(body["sleep"]))
    if body.get("block"):
        _wait_at_gate(current_app.config["TEST_GATE"])
    if body.get("fail"):
        raise RuntimeError("the handler failed after writing its order")
    return created({"ok": True, "order_id": "ord_" + request.idempotency_key_value(),
                    "run": order.id, **extra})


def _wait_at_gate(gate: str) -> None:
    with open(gate + ".entered", "w"):
        pass
    deadline = time.monotonic() + 60
    while os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.02)


def app_env(data_dir: str, *, mode: str = "separate", database_url: str | None = None,
            store_url: str | None = None, config: dict[str, Any] | None = None,
            gate: str | None = None) -> dict[str, str]:
    """The environment that makes :func:`create_app_from_env` build ``create_app(...)``."""
    env = {"CNERIUM_TEST_DATA_DIR": data_dir, "CNERIUM_TEST_MODE": mode,
           "CNERIUM_TEST_CONFIG": json.dumps(config or {})}
    for name, value in (("DATABASE", database_url), ("STORE_URL", store_url), ("GATE", gate)):
        if value:
            env["CNERIUM_TEST_" + name] = value
    return env


def create_app_from_env() -> Flask:
    """``create_app`` configured by ``CNERIUM_TEST_*`` environment variables."""
    e = os.environ
    app = create_app(e["CNERIUM_TEST_DATA_DIR"], mode=e.get("CNERIUM_TEST_MODE", "separate"),
                      database_url=e.get("CNERIUM_TEST_DATABASE"),
                      store_url=e.get("CNERIUM_TEST_STORE_URL"),
                      config=json.loads(e.get("CNERIUM_TEST_CONFIG", "{}")),
                      gate=e.get("CNERIUM_TEST_GATE"))
    if e.get("CNERIUM_TEST_START") == "1":  # before gunicorn --preload forks the workers
        assert app.extensions["cnerium"].extension.start()
    return app
