"""SPEC §2.4: with ``database=`` the handler's writes and the stored response are one unit."""

from __future__ import annotations

import os

import peewee
import pytest
from flask import Flask, current_app

from flask_cnerium import Cnerium, DurableResponse, created
from tests.apps.durable_app import bind_order, open_app_database
from tests.durable_helpers import ORDER, ORDERS, RECORDS, count, post, query, record_run, records

SHARED = ["sqlite-shared", "pg-shared"]


@pytest.fixture
def shared(make_app, backend):
    """A shared-database test app with handlers that use transactions of their own."""
    app = make_app(**backend.app_kwargs())
    cnerium = app.extensions["cnerium"].extension
    database = app.extensions["test_orders"]._meta.database

    @cnerium.durable_post("/nested", "test.nested")
    def nested(request):
        with database.atomic():  # a savepoint inside the store's transaction
            record_run(request, "outer")
        try:
            with database.atomic():
                record_run(request, "rolled-back")
                raise ValueError("this block alone is undone")
        except ValueError:
            pass
        return created({"orders": current_app.extensions["test_orders"].select().count()})

    @cnerium.durable_post("/refused", "test.refused")
    def refused(request):
        record_run(request, "audit")
        return DurableResponse.unprocessable("out of stock")

    return app


@pytest.mark.parametrize("backend", SHARED, indirect=True)
def test_handler_transactions_are_savepoints_inside_the_stored_one(shared, backend):
    client = shared.test_client()
    first = post(client, ORDER, path="/nested")
    assert first.status_code == 201
    assert first.get_json() == {"orders": 1}
    products = query(backend.database_url, f"SELECT product_id FROM {ORDERS} ORDER BY id")
    assert products == [("outer",)]
    assert post(client, ORDER, path="/nested").headers["Idempotent-Replayed"] == "true"
    assert count(backend.database_url, ORDERS) == 1


@pytest.mark.parametrize("backend", SHARED, indirect=True)
def test_handler_error_response_commits_with_its_writes(shared, backend):
    client = shared.test_client()
    first = post(client, ORDER, path="/refused")
    assert first.status_code == 422
    assert count(backend.database_url, ORDERS) == 1
    assert [r.status for r in records(shared)] == [422]
    again = post(client, ORDER, path="/refused")
    assert (again.status_code, again.data) == (422, first.data)
    assert count(backend.database_url, ORDERS) == 1


@pytest.mark.parametrize("backend", SHARED, indirect=True)
def test_claim_is_never_committed_on_its_own(shared, backend):
    """Nothing of a running request is visible outside its transaction, then all of it is."""
    seen = []
    cnerium = shared.extensions["cnerium"].extension

    @cnerium.durable_post("/peek", "test.peek")
    def peek(request):
        record_run(request)
        seen.append((count(backend.records_url, RECORDS), count(backend.database_url, ORDERS)))
        return created({})

    assert post(shared.test_client(), ORDER, path="/peek").status_code == 201
    assert seen == [(0, 0)]
    assert (count(backend.records_url, RECORDS), count(backend.database_url, ORDERS)) == (1, 1)


@pytest.mark.parametrize("proxy_class", [peewee.DatabaseProxy, peewee.Proxy])
@pytest.mark.parametrize("backend", SHARED, indirect=True)
def test_database_given_through_a_proxy(tmp_path, backend, proxy_class):
    """App factories bind models to a proxy (peewee's DatabaseProxy, FlaskDB's Proxy)."""
    proxy = proxy_class()
    app = Flask("proxied")
    app.config["CNERIUM_DATA_DIR"] = str(tmp_path / "proxied")
    cnerium = Cnerium(app, database=proxy)
    assert cnerium.start() is False  # not initialized yet: refused, not crashed

    os.makedirs(backend.data_dir, exist_ok=True)
    database = open_app_database(backend.database_url)
    proxy.initialize(database)
    orders_model = bind_order(proxy)
    database.create_tables([orders_model], safe=True)

    @cnerium.durable_post("/orders", "orders.create")
    def create_order(request):
        orders_model.create(idempotency_key="k", product_id="p", quantity=1, pid=0)
        if request.json().get("fail"):
            raise RuntimeError("after the write")
        return created({"ok": True})

    app.testing = True
    client = app.test_client()
    with pytest.raises(RuntimeError):
        post(client, {**ORDER, "fail": True})
    assert count(backend.database_url, ORDERS) == count(backend.records_url, RECORDS) == 0
    assert post(client, ORDER).status_code == 201
    assert post(client, ORDER).headers["Idempotent-Replayed"] == "true"
    assert count(backend.database_url, ORDERS) == count(backend.records_url, RECORDS) == 1
    database.close()
