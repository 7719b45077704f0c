"""The seed's orders service in Flask: a durable ``POST /orders`` that creates each order once.

Run it with ``flask --app examples/orders/app.py run`` (or ``make demo``). The orders and the
idempotency records live in one SQLite file in the app's instance folder, so an order row and
its stored response commit together or not at all.
"""

from __future__ import annotations

import os
import time

from flask import Flask, render_template
from peewee import (
    CharField,
    Database,
    DatabaseProxy,
    DoubleField,
    IntegerField,
    IntegrityError,
    Model,
    SqliteDatabase,
)
from playhouse import db_url

from flask_cnerium import AppConfig, Cnerium, DurableRequest, DurableResponse, created
from flask_cnerium.support import int_or, string_or

SERVICE = "orders-service"
PRAGMAS = {"journal_mode": "wal", "synchronous": "normal"}

database = DatabaseProxy()
"""The app's peewee database, chosen by :func:`create_app`."""

cnerium = Cnerium()
"""The extension, bound to each app by :func:`create_app` (the app factory pattern)."""


class Order(Model):
    """One order, written by the durable handler in the same transaction as its response."""

    order_id = CharField(unique=True)
    product_id = CharField()
    quantity = IntegerField()
    created_at = DoubleField(default=time.time)

    class Meta:
        database = database
        table_name = "orders"

    def to_dict(self) -> dict:
        """The order as the API shows it."""
        return {"order_id": self.order_id, "product_id": self.product_id,
                "quantity": self.quantity, "created_at": self.created_at}


@cnerium.durable_post("/orders", "orders.create")
def create_order(request: DurableRequest) -> DurableResponse:
    """``POST /orders``: validate, insert the order, answer 201. Runs once per key."""
    body = request.json()
    product_id = string_or(body, "product_id", "")
    quantity = int_or(body, "quantity", 0)
    if not product_id:
        return DurableResponse.bad_request("Missing required field: product_id")
    if quantity <= 0:
        return DurableResponse.bad_request("Field quantity must be greater than zero")
    order_id = "ord_" + request.idempotency_key_value()
    order = Order.create(order_id=order_id, product_id=product_id, quantity=quantity)
    cnerium.emit_to("orders", "order.created", order.to_dict())  # sent after the commit
    return created({"ok": True, "order_id": order_id, "product_id": product_id,
                    "quantity": quantity})


def dashboard() -> str:
    """``GET /``: the live dashboard (order form, retry, orders table, event feed)."""
    return render_template("dashboard.html")


def health() -> dict:
    """``GET /health``."""
    return {"ok": True, "service": SERVICE}


def list_orders() -> dict:
    """``GET /orders``: every order, newest first."""
    orders = Order.select().order_by(Order.created_at.desc(), Order.id.desc())
    return {"ok": True, "orders": [order.to_dict() for order in orders]}


def create_app(instance_path: str | None = None) -> Flask:
    """Build the orders service; ``instance_path`` (absolute) is where its data lives.

    Settings also come from ``FLASK_``-prefixed environment variables (Flask's
    ``from_prefixed_env``): ``FLASK_ORDERS_DATABASE`` (a peewee URL, e.g.
    ``postgresql+pool://…``; default a SQLite file in the instance folder) and any
    ``CNERIUM_*`` key, e.g. ``FLASK_CNERIUM_REALTIME_BROKER=redis://127.0.0.1:6379/0``.
    """
    app = Flask(__name__, instance_path=instance_path)
    app.config.from_prefixed_env()
    os.makedirs(app.instance_path, exist_ok=True)
    db = open_orders_database(app.config.get("ORDERS_DATABASE")
                              or "sqlite:///" + os.path.join(app.instance_path, "orders.db"))
    database.initialize(db)
    config = (AppConfig.development()
              .set_name(SERVICE)
              .set_data_dir(os.path.join(app.instance_path, "cnerium"))
              .set_node_id(app.config.get("ORDERS_NODE_ID", "orders-node"))
              .enable_realtime("/ws"))
    cnerium.init_app(app, config, database=db)
    _manage_connections(app, db)
    app.get("/")(dashboard)
    app.get("/health")(health)
    app.get("/orders")(list_orders)
    return app


def open_orders_database(url: str) -> Database:
    """The app's peewee database: SQLite in WAL mode, or whatever the URL names."""
    if url.startswith("sqlite:///"):
        return SqliteDatabase(url[len("sqlite:///"):], pragmas=PRAGMAS, timeout=5)
    return db_url.connect(url)


def _manage_connections(app: Flask, db: Database) -> None:
    """One connection per request; the ``orders`` table is created by the first request."""

    @app.before_request
    def open_connection() -> None:
        db.connect(reuse_if_open=True)
        if not app.extensions.get("orders.schema"):
            _create_schema(db)
            app.extensions["orders.schema"] = True

    @app.teardown_request
    def close_connection(exc: BaseException | None) -> None:
        if not db.is_closed():
            db.close()


def _create_schema(db: Database) -> None:
    """Create the ``orders`` table; workers starting together may race, and one loses."""
    try:
        db.create_tables([Order], safe=True)
    except IntegrityError:
        if not db.table_exists(Order._meta.table_name):
            raise


app = create_app()
