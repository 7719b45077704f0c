"""SPEC §2.2: with ``@cnerium.key_scope`` two scopes never see each other's records."""

from __future__ import annotations

import flask
import pytest

from tests.durable_helpers import ORDER, Background, orders, post, problem_slug, records, wait_for

OTHER = {"product_id": "p2", "quantity": 1}


@pytest.fixture(params=["separate", "shared"])
def scoped_app(request, make_app):
    """A test app whose key scope is the ``X-User`` header (none: the global scope)."""
    app = make_app(mode=request.param)

    @app.extensions["cnerium"].extension.key_scope
    def user_id():
        return flask.request.headers.get("X-User")

    return app


def as_user(client, user, body=ORDER, key="shared-key"):
    return post(client, body, key=key, headers={"X-User": user} if user else None)


def test_same_key_in_two_scopes_runs_twice_and_replays_each_its_own(scoped_app):
    client = scoped_app.test_client()
    alice = as_user(client, "alice")
    bob = as_user(client, "bob", OTHER)  # another body: no 409, alice's record is invisible
    assert alice.status_code == bob.status_code == 201
    assert "Idempotent-Replayed" not in bob.headers
    assert alice.get_json()["run"] != bob.get_json()["run"]

    assert as_user(client, "alice").data == alice.data
    assert as_user(client, "bob", OTHER).data == bob.data
    assert problem_slug(as_user(client, "bob", ORDER)) == "idempotency-key-reused"
    assert problem_slug(as_user(client, "alice", OTHER)) == "idempotency-key-reused"

    # No scope (None) is the global scope: a third, separate namespace.
    assert "Idempotent-Replayed" not in as_user(client, None).headers
    assert orders(scoped_app) == 3
    assert sorted((r.scope, r.key) for r in records(scoped_app)) == [
        ("", "shared-key"), ("alice", "shared-key"), ("bob", "shared-key")]


def test_a_running_request_in_one_scope_is_invisible_to_another(make_app):
    app = make_app()

    @app.extensions["cnerium"].extension.key_scope
    def user_id():
        return flask.request.headers.get("X-User")

    client = app.test_client()
    slow = Background(lambda: as_user(client, "alice", {**ORDER, "sleep": 1.5}))
    wait_for(lambda: records(app), what="alice's claim")
    bob = as_user(client, "bob", {**ORDER, "sleep": 1.5})
    assert bob.status_code == 201  # neither 409 in-progress nor 409 reused
    assert "Idempotent-Replayed" not in bob.headers
    assert slow.result().status_code == 201
    assert orders(app) == 2


def test_scope_may_be_any_value_and_is_compared_as_text(make_app):
    app = make_app()
    app.extensions["cnerium"].extension.key_scope(lambda: 42)
    client = app.test_client()
    post(client, ORDER)
    assert records(app)[0].scope == "42"
    assert post(client, ORDER).headers["Idempotent-Replayed"] == "true"


@pytest.mark.parametrize("backend", ["sqlite-separate", "pg-shared"], indirect=True)
def test_scopes_longer_than_the_column_stay_apart(make_app, backend):
    app = make_app(**backend.app_kwargs())
    user = {"id": "a" * 300}
    app.extensions["cnerium"].extension.key_scope(lambda: user["id"])
    client = app.test_client()
    assert post(client, ORDER).status_code == 201
    user["id"] = "a" * 299 + "b"  # same 255-character prefix, another scope
    second = post(client, ORDER)
    assert second.status_code == 201 and "Idempotent-Replayed" not in second.headers
    assert post(client, ORDER).headers["Idempotent-Replayed"] == "true"
    assert orders(app) == 2
