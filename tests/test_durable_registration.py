"""durable_post registration: decorator, direct call with lambdas (as the seed writes it)."""

from __future__ import annotations

from flask_cnerium import created


def test_direct_calls_with_lambdas_register_distinct_routes(make_app):
    app = make_app()
    cnerium = app.extensions["cnerium"].extension
    cnerium.durable_post("/carts", "carts.create", lambda request: created({"cart": 1}))
    cnerium.durable_post("/refund", "refund.create", lambda request: created({"refund": 1}))
    client = app.test_client()
    carts = client.post("/carts", json={}, headers={"Idempotency-Key": "k-1"})
    refund = client.post("/refund", json={}, headers={"Idempotency-Key": "k-2"})
    assert (carts.status_code, carts.get_json()) == (201, {"cart": 1})
    assert (refund.status_code, refund.get_json()) == (201, {"refund": 1})
    assert {"carts.create", "refund.create"} <= set(app.view_functions)


def test_url_variables_reach_the_handler_after_the_request(make_app):
    app = make_app()
    cnerium = app.extensions["cnerium"].extension

    @cnerium.durable_post("/shops/<int:shop>/carts", "shop_carts.create")
    def create_cart(request, shop):
        return created({"shop": shop, "view_args": request.view_args})

    answer = app.test_client().post("/shops/7/carts", json={},
                                    headers={"Idempotency-Key": "k"})
    assert answer.get_json() == {"shop": 7, "view_args": {"shop": 7}}
