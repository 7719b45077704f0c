"""SPEC §2.1's event column: emitted once by the run that stores its response, never again."""

from __future__ import annotations

import threading
import time

import pytest

from flask_cnerium import created
from tests.durable_helpers import ORDER, Background, post, record_run


@pytest.mark.parametrize("mode", ["separate", "shared"])
def test_event_is_emitted_once_and_never_by_a_replay_a_conflict_or_a_failure(make_app, mode):
    app = make_app(mode=mode, config={"CNERIUM_REALTIME_ENDPOINT": "/ws",
                                      "CNERIUM_IN_FLIGHT_WAIT": 0.2})
    cnerium = app.extensions["cnerium"].extension
    entered = threading.Event()

    @cnerium.durable_post("/emitting", "test.emitting")
    def emitting(request):
        body = request.json()
        record_run(request)
        cnerium.emit_to("orders", "order.created", {"key": request.idempotency_key_value()})
        if body.get("fail"):
            raise RuntimeError("after emitting")
        if body.get("slow"):
            entered.set()
            time.sleep(1)
        return created({"ok": True})

    assert cnerium.start()
    client = app.test_client()
    with cnerium.capture_events() as captured:
        assert post(client, ORDER, path="/emitting").status_code == 201
        assert post(client, ORDER, path="/emitting").headers["Idempotent-Replayed"] == "true"
        assert post(client, {"product_id": "p2"}, path="/emitting").status_code == 409
        with pytest.raises(RuntimeError):
            post(client, {"fail": True}, key="failing", path="/emitting")
    assert [(e.type, e.room, e.payload) for e in captured] == [
        ("order.created", "orders", {"key": "order-123"})]

    slow = {"slow": True}
    with cnerium.capture_events() as captured:
        first = Background(lambda: post(client, slow, key="slow", path="/emitting"))
        assert entered.wait(30)
        twin = post(client, slow, key="slow", path="/emitting")
        assert first.result().status_code == 201
    assert twin.status_code == 409  # in progress (shared: its wait ran out)
    assert len(captured) == 1
