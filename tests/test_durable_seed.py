"""The seed's walkthrough: three curl calls, a missing key, an invalid body."""

from __future__ import annotations

import json

import pytest

from tests.durable_helpers import orders, post, problem_slug, records

SEED_BODY = b'{"product_id":"p1","quantity":2}'
OTHER_BODY = b'{"product_id":"p2","quantity":1}'


@pytest.fixture(params=["separate", "shared"])
def seed_app(request, make_app):
    """The seed's app, with its own store and with the store in the app's database."""
    return make_app(mode=request.param)


def test_seed_three_curl_calls(seed_app):
    client = seed_app.test_client()

    first = post(client, SEED_BODY)
    assert first.status_code == 201
    assert first.get_json() == {"ok": True, "order_id": "ord_order-123", "run": 1}
    assert "Idempotent-Replayed" not in first.headers

    second = post(client, SEED_BODY)
    assert second.status_code == 201
    assert second.data == first.data
    assert second.headers["Idempotent-Replayed"] == "true"
    replayed_headers = [h for h in second.headers if h[0] != "Idempotent-Replayed"]
    assert replayed_headers == list(first.headers)

    third = post(client, OTHER_BODY)
    assert third.status_code == 409
    assert problem_slug(third) == "idempotency-key-reused"
    assert "Idempotent-Replayed" not in third.headers

    assert orders(seed_app) == 1
    [record] = records(seed_app)
    assert (record.key, record.state, record.status) == ("order-123", "completed", 201)
    assert bytes(record.body) == first.data


def test_replay_is_the_stored_bytes_not_a_new_rendering(app, client):
    first = post(client, SEED_BODY)
    # Whatever the app would render now, a replay answers what was stored.
    app.json.sort_keys = not app.json.sort_keys
    app.json.compact = False
    again = post(client, SEED_BODY)
    assert again.data == first.data
    assert orders(app) == 1


def test_no_key_is_400_and_nothing_runs(seed_app):
    response = post(seed_app.test_client(), SEED_BODY, key=None)
    assert response.status_code == 400
    assert problem_slug(response) == "idempotency-key-missing"
    assert orders(seed_app) == 0
    assert records(seed_app) == []


@pytest.mark.parametrize("body", [b'{"product_id": "p1",', b"not json", b"\xff\xfe", b"[1, 2]",
                                  b'"a string"'])
def test_invalid_json_is_a_400_problem_and_nothing_is_stored(seed_app, body):
    client = seed_app.test_client()
    response = post(client, body)
    assert response.status_code == 400
    assert problem_slug(response) == "invalid-body"
    assert records(seed_app) == []

    # The same key with the same invalid body is not a replay: it is judged again.
    assert problem_slug(post(client, body)) == "invalid-body"
    assert records(seed_app) == []

    # The key was not consumed: a valid body under it runs the handler.
    fixed = post(client, SEED_BODY)
    assert fixed.status_code == 201
    assert orders(seed_app) == 1
    assert post(client, SEED_BODY).headers["Idempotent-Replayed"] == "true"


def test_seed_validation_error_is_a_stored_400(seed_app):
    client = seed_app.test_client()
    first = post(client, {"quantity": 2})
    assert first.status_code == 400
    assert first.mimetype == "application/problem+json"
    assert json.loads(first.data)["detail"] == "Missing required field: product_id"
    again = post(client, {"quantity": 2})
    assert again.status_code == 400
    assert again.data == first.data
    assert again.headers["Idempotent-Replayed"] == "true"
    assert records(seed_app)[0].status == 400
