"""SPEC §2.1, row by row: keys, same request, other request, stored responses of every kind."""

from __future__ import annotations

import pytest
from flask import Response

from flask_cnerium import DurableResponse
from flask_cnerium.errors import StreamedResponseError
from tests.durable_helpers import ORDER, orders, post, problem_slug, record_run, records

FALSY = {
    "empty-204-tuple": lambda: ("", 204),
    "durable-204": lambda: DurableResponse(204),
    "empty-dict": lambda: {},
    "durable-empty-dict": lambda: DurableResponse.ok({}),
    "durable-zero": lambda: DurableResponse.ok(0),
    "empty-string": lambda: "",
    "durable-false": lambda: DurableResponse.ok(False),
}
FALSY_ANSWERS = {  # status, body, Content-Type of each FALSY route's response
    "empty-204-tuple": (204, b"", "text/html; charset=utf-8"),
    "durable-204": (204, b"", "text/html; charset=utf-8"),
    "empty-dict": (200, b"{}\n", "application/json"),
    "durable-empty-dict": (200, b"{}\n", "application/json"),
    "durable-zero": (200, b"0\n", "application/json"),
    "empty-string": (200, b"", "text/html; charset=utf-8"),
    "durable-false": (200, b"false\n", "application/json"),
}

HELPERS = {
    "bad_request": (DurableResponse.bad_request, 400),
    "not_found": (DurableResponse.not_found, 404),
    "conflict": (DurableResponse.conflict, 409),
    "unprocessable": (DurableResponse.unprocessable, 422),
}


@pytest.fixture
def routes_app(make_app):
    """The test app plus routes returning each kind of response, each counting its runs."""
    app = make_app()
    cnerium = app.extensions["cnerium"].extension

    def register(name, make_response):
        def handler(request):
            record_run(request)
            return make_response()

        handler.__name__ = f"handler_{name.replace('-', '_')}"
        cnerium.durable_post(f"/r/{name}", f"test.{name}", handler)

    for name, make_response in FALSY.items():
        register(name, make_response)
    for name, (helper, _) in HELPERS.items():
        register(name, lambda helper=helper: helper("the handler said no"))
    register("server-error", lambda: DurableResponse.problem(503, "try later"))
    register("tuple-headers", lambda: ({"a": 1}, 202, {"Location": "/things/1", "X-T": "y"}))
    register("raises", lambda: 1 / 0)
    register("streamed", lambda: Response(iter([b"a", b"b"]), mimetype="text/plain"))

    @cnerium.durable_post("/form", "form.create")
    def form_handler(request):
        record_run(request, request.flask_request.form["product"])
        return {"fields": sorted(request.flask_request.form)}

    return app


# -- keys -------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["", "   ", '""', "a" * 11, "a b", "a\tb", "caf\xe9", "x\x7f",
                                 '"a"b"', '"bad\\escape"'])
def test_invalid_keys_are_400_and_nothing_runs(make_app, key):
    app = make_app(config={"CNERIUM_KEY_MAX_LENGTH": 10})
    response = post(app.test_client(), key=key)
    assert response.status_code == 400
    assert problem_slug(response) == "idempotency-key-invalid"
    assert orders(app) == 0
    assert records(app) == []


def test_key_of_exactly_the_max_length_is_accepted(make_app):
    app = make_app(config={"CNERIUM_KEY_MAX_LENGTH": 10})
    assert post(app.test_client(), key="a" * 10).status_code == 201
    assert post(app.test_client(), key="~!" * 5).status_code == 201


def test_default_max_length_is_255(client):
    assert post(client, key="k" * 255).status_code == 201
    assert problem_slug(post(client, key="k" * 256)) == "idempotency-key-invalid"


def test_rfc8941_quoted_key_is_the_same_key(app, client):
    first = post(client, key='"order-123"')
    assert first.status_code == 201
    assert first.get_json()["order_id"] == "ord_order-123"
    again = post(client, key="order-123")
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.data == first.data
    assert post(client, key='"order-123"').headers["Idempotent-Replayed"] == "true"
    assert [r.key for r in records(app)] == ["order-123"]
    assert orders(app) == 1


def test_quoted_key_escapes_are_unquoted(app, client):
    assert post(client, key='"a\\"b"').get_json()["order_id"] == 'ord_a"b'
    assert post(client, key='a"b').headers["Idempotent-Replayed"] == "true"


# -- what counts as the same request ----------------------------------------------------


def test_json_in_another_key_order_and_spacing_is_the_same_request(app, client):
    first = post(client, b'{"product_id":"p1","quantity":2}')
    again = post(client, b'{ "quantity" : 2,\n  "product_id" : "p1" }')
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.data == first.data
    assert orders(app) == 1


def test_json_with_another_value_is_another_request(client):
    post(client, {"product_id": "p1", "quantity": 2})
    assert problem_slug(post(client, {"product_id": "p1", "quantity": 3})) == \
        "idempotency-key-reused"


def test_media_type_parameters_are_ignored(app, client):
    first = post(client, ORDER, content_type="application/json")
    again = post(client, ORDER, content_type="application/json; charset=utf-8")
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.data == first.data
    assert orders(app) == 1


def test_another_media_type_is_another_request(client):
    post(client, b'{"product_id":"p1"}', content_type="application/json")
    response = post(client, b'{"product_id":"p1"}', content_type="text/plain")
    assert problem_slug(response) == "idempotency-key-reused"


def test_form_fields_in_another_order_are_the_same_request(routes_app):
    client = routes_app.test_client()
    form = "application/x-www-form-urlencoded"
    first = post(client, "product=p1&quantity=2&note=", path="/form", content_type=form)
    assert first.status_code == 200
    again = post(client, "note=&quantity=2&product=p1", path="/form", content_type=form)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.data == first.data
    other = post(client, "product=p2&quantity=2&note=", path="/form", content_type=form)
    assert problem_slug(other) == "idempotency-key-reused"
    assert orders(routes_app) == 1


@pytest.mark.parametrize("path", ["/refunds", "/orders?dry_run=1", "/shops/a/orders"])
def test_same_key_for_another_operation_or_path_is_409(app, client, path):
    post(client, ORDER, path="/orders")
    response = post(client, ORDER, path=path)
    assert response.status_code == 409
    assert problem_slug(response) == "idempotency-key-reused"
    assert orders(app) == 1


def test_same_operation_under_another_url_variable_is_409(app, client):
    first = post(client, ORDER, path="/shops/a/orders")
    assert first.get_json()["shop"] == "a"
    assert problem_slug(post(client, ORDER, path="/shops/b/orders")) == "idempotency-key-reused"
    assert post(client, ORDER, path="/shops/a/orders").headers["Idempotent-Replayed"] == "true"
    assert orders(app) == 1


def test_mismatch_status_422(make_app):
    client = make_app(config={"CNERIUM_MISMATCH_STATUS": 422}).test_client()
    post(client, ORDER)
    response = post(client, {"product_id": "p2", "quantity": 1})
    assert response.status_code == 422
    assert problem_slug(response) == "idempotency-key-reused"


# -- responses of every kind are stored and replayed --------------------------------------


@pytest.mark.parametrize("name", sorted(FALSY))
def test_empty_and_falsy_responses_are_stored_and_replayed(routes_app, name):
    client = routes_app.test_client()
    first = post(client, path=f"/r/{name}")
    assert (first.status_code, first.data, first.headers.get("Content-Type")) == \
        FALSY_ANSWERS[name]
    again = post(client, path=f"/r/{name}")
    assert (again.status_code, again.data, again.headers.get("Content-Type")) == \
        FALSY_ANSWERS[name]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert orders(routes_app) == 1
    assert records(routes_app)[0].state == "completed"


@pytest.mark.parametrize("name", sorted(HELPERS))
def test_handler_error_responses_are_stored_and_replayed(routes_app, name):
    status = HELPERS[name][1]
    client = routes_app.test_client()
    first = post(client, path=f"/r/{name}")
    assert first.status_code == status
    doc = first.get_json(force=True)
    assert first.mimetype == "application/problem+json"
    assert doc["status"] == status and doc["detail"] == "the handler said no"
    again = post(client, path=f"/r/{name}")
    assert (again.status_code, again.data) == (status, first.data)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert orders(routes_app) == 1


def test_handler_5xx_response_is_stored_and_replayed(routes_app):
    client = routes_app.test_client()
    first = post(client, path="/r/server-error")
    again = post(client, path="/r/server-error")
    assert first.status_code == again.status_code == 503
    assert first.mimetype == again.mimetype == "application/problem+json"
    assert first.get_json(force=True)["detail"] == "try later"
    assert again.data == first.data
    assert again.headers["Idempotent-Replayed"] == "true"
    assert orders(routes_app) == 1


def test_tuple_response_keeps_status_and_headers(routes_app):
    client = routes_app.test_client()
    first = post(client, path="/r/tuple-headers")
    assert (first.status_code, first.get_json()) == (202, {"a": 1})
    again = post(client, path="/r/tuple-headers")
    assert again.status_code == 202
    assert again.headers["Location"] == "/things/1"
    assert again.headers["X-T"] == "y"
    assert again.headers["Content-Type"] == first.headers["Content-Type"]
    assert again.data == first.data


def test_streamed_response_is_a_clear_error_and_stores_nothing(routes_app):
    client = routes_app.test_client()
    with pytest.raises(StreamedResponseError, match="streamed response"):
        post(client, path="/r/streamed")
    assert records(routes_app) == []
    routes_app.testing = False
    assert post(client, path="/r/streamed").status_code == 500
    assert records(routes_app) == []
    assert orders(routes_app) == 2


# -- a handler that raises ---------------------------------------------------------------


def test_handler_that_raises_stores_nothing_and_the_retry_runs_again(routes_app):
    client = routes_app.test_client()
    with pytest.raises(ZeroDivisionError):
        post(client, path="/r/raises")
    assert records(routes_app) == []
    routes_app.testing = False
    assert post(client, path="/r/raises").status_code == 500
    assert records(routes_app) == []
    # Separate store: the handler's own write is not undone, but it did run again.
    assert orders(routes_app) == 2


@pytest.mark.parametrize("mode", ["separate", "shared"])
def test_failed_run_then_successful_retry_runs_once_more(make_app, mode):
    app = make_app(mode=mode)
    client = app.test_client()
    failing = {**ORDER, "fail": True}
    with pytest.raises(RuntimeError):
        post(client, failing)
    assert records(app) == []
    assert orders(app) == (0 if mode == "shared" else 1)
    # Not a replay, not a 409: the claim was released, so even another body may use the key.
    assert post(client, ORDER).status_code == 201
    assert orders(app) == (1 if mode == "shared" else 2)
    assert post(client, ORDER).headers["Idempotent-Replayed"] == "true"
