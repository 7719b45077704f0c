"""examples/orders: the seed's three curl calls, /health and /orders, through the test client."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "orders" / "app.py"
ORDER = {"product_id": "p1", "quantity": 2}


def load_example():
    """Import ``examples/orders/app.py`` as a module of its own."""
    name = "orders_example"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture
def app(tmp_path) -> Iterator[Flask]:
    """The example app with its instance folder in ``tmp_path``."""
    app = load_example().create_app(str(tmp_path))
    yield app
    state = app.extensions["cnerium"]
    if state.store is not None:
        state.store.close()


def post_order(client, body, key="order-123"):
    return client.post("/orders", json=body, headers={"Idempotency-Key": key})


def test_health(app):
    assert app.test_client().get("/health").get_json() == {"ok": True,
                                                         "service": "orders-service"}


def test_the_seeds_three_curl_calls(app):
    client = app.test_client()
    first = post_order(client, ORDER)
    assert first.status_code == 201
    assert first.get_json() == {"ok": True, "order_id": "ord_order-123", "product_id": "p1",
                                "quantity": 2}
    assert "Idempotent-Replayed" not in first.headers

    replay = post_order(client, ORDER)
    assert replay.status_code == 201
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.data == first.data

    reused = post_order(client, {"product_id": "p2", "quantity": 1})
    assert reused.status_code == 409
    assert reused.get_json()["type"].endswith("/idempotency-key-reused")

    orders = client.get("/orders").get_json()["orders"]
    assert [(o["order_id"], o["product_id"], o["quantity"]) for o in orders] == [
        ("ord_order-123", "p1", 2)]


def test_orders_are_listed_newest_first(app):
    client = app.test_client()
    for key in ("a", "b", "c"):
        assert post_order(client, ORDER, key).status_code == 201
    orders = client.get("/orders").get_json()["orders"]
    assert [o["order_id"] for o in orders] == ["ord_c", "ord_b", "ord_a"]


@pytest.mark.parametrize(("body", "detail"), [
    ({"quantity": 2}, "Missing required field: product_id"),
    ({"product_id": "p1", "quantity": 0}, "Field quantity must be greater than zero"),
    ({"product_id": "p1", "quantity": "2"}, "Field quantity must be greater than zero"),
])
def test_the_seeds_validation(app, body, detail):
    client = app.test_client()
    response = post_order(client, body)
    assert response.status_code == 400
    assert response.get_json()["detail"] == detail
    assert client.get("/orders").get_json()["orders"] == []


def test_the_order_and_its_record_share_the_database(app, tmp_path):
    post_order(app.test_client(), ORDER)
    store = app.extensions["cnerium"].store
    assert store.shared
    assert store.database.database == str(tmp_path / "orders.db")
    assert store.get("", "order-123").response.status == 201
