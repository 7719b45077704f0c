"""SPEC §4: the durable signals fire with the app as sender and their documented kwargs."""

from __future__ import annotations

from contextlib import ExitStack

import pytest

from flask_cnerium import signals
from tests.durable_helpers import ORDER, Background, dead_pg_url, post, records, wait_for

DURABLE = ["durable_executed", "durable_replayed", "durable_conflict", "durable_rejected"]


@pytest.fixture
def received():
    """Every durable signal sent during the test, from any sender: (name, sender, kwargs)."""
    log: list[tuple[str, object, dict]] = []
    with ExitStack() as stack:
        for name in DURABLE:
            def receiver(sender, _name=name, **kwargs):
                log.append((_name, sender, kwargs))

            stack.enter_context(getattr(signals, name).connected_to(receiver))
        yield log


def test_signal_names_are_dashed():
    assert [getattr(signals, n).name for n in DURABLE] == [
        "durable-executed", "durable-replayed", "durable-conflict", "durable-rejected"]


def test_executed_replayed_and_reused(app, client, received):
    post(client, ORDER)
    post(client, ORDER)
    post(client, {"product_id": "p2"})
    common = {"operation": "orders.create", "key": "order-123", "scope": ""}
    assert received == [
        ("durable_executed", app, {**common, "status": 201}),
        ("durable_replayed", app, {**common, "status": 201}),
        ("durable_conflict", app, {**common, "reason": "idempotency-key-reused"}),
    ]


def test_in_progress_conflict(app, received):
    client = app.test_client()
    first = Background(lambda: post(client, {**ORDER, "sleep": 1}))
    wait_for(lambda: records(app), what="the claim")
    post(client, {**ORDER, "sleep": 1})
    first.result()
    assert ("durable_conflict", app, {"operation": "orders.create", "key": "order-123",
                                      "scope": "", "reason": "request-in-progress"}) in received
    assert [name for name, _, _ in received].count("durable_executed") == 1


@pytest.mark.parametrize(("key", "reason"), [(None, "idempotency-key-missing"),
                                             ("", "idempotency-key-invalid")])
def test_rejected_keys(app, client, received, key, reason):
    post(client, ORDER, key=key)
    assert received == [("durable_rejected", app,
                         {"operation": "orders.create", "reason": reason})]


def test_rejected_when_the_store_is_unavailable(make_app, received):
    app = make_app(config={"CNERIUM_DATABASE": dead_pg_url()})
    post(app.test_client(), ORDER)
    assert received == [("durable_rejected", app,
                         {"operation": "orders.create", "reason": "store-unavailable"})]


def test_nothing_is_signalled_for_a_handler_that_raised(make_app, received):
    app = make_app()
    with pytest.raises(RuntimeError):
        post(app.test_client(), {**ORDER, "fail": True})
    assert received == []


def test_scope_is_in_the_signal(app, client, received):
    app.extensions["cnerium"].extension.key_scope(lambda: "user-7")
    post(client, ORDER)
    assert received[0][2]["scope"] == "user-7"
