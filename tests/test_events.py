"""Events: validation, what emit returns, event ids, capture_events, the broker seam."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask

from flask_cnerium import Cnerium, Event, PublishedEvent
from flask_cnerium.brokers import BROKERS, Broker, BrokerError
from flask_cnerium.realtime import held_event_id
from tests.live import create_realtime_app

AppMaker = Callable[..., tuple[Flask, Cnerium]]

VALID_TYPES = ["order.created", "shop-42.order_item.added", "A.b", "a" * 62 + "." + "b" * 65]
INVALID_TYPES = ["order", "", ".order", "order.", "order..created", "order created.x",
                 "order/created.x", "ordér.created", "a" * 64 + "." + "b" * 64, None, 42]
INVALID_ROOMS = ["", "a" * 129, "with space", "slash/room", "émoji", None, 42, ["orders"]]
INVALID_PAYLOADS = [["a", "list"], "text", 42, {"not": object()}, {"nan": float("nan")},
                    {"set": {1, 2}}]


@pytest.fixture
def realtime_app(tmp_path: Path) -> Iterator[AppMaker]:
    """Factory of realtime test apps (not served); their stores are closed afterwards."""
    made: list[Flask] = []

    def make(name: str = "app", **config: object) -> tuple[Flask, Cnerium]:
        app, cnerium = create_realtime_app(tmp_path / name, **config)
        made.append(app)
        return app, cnerium

    yield make
    for app in made:
        store = app.extensions["cnerium"].store
        if store is not None:
            store.close()


@pytest.mark.parametrize("type", VALID_TYPES)
def test_valid_event_types_are_accepted(type: str) -> None:
    event = Event(type, {"n": 1})
    assert (event.type, event.payload) == (type, {"n": 1})


@pytest.mark.parametrize("type", INVALID_TYPES)
def test_invalid_event_types_raise_value_error(type: object) -> None:
    with pytest.raises(ValueError, match="Invalid event type"):
        Event(type)  # type: ignore[arg-type]


@pytest.mark.parametrize("type", ["cnerium.pong", "cnerium.order.created", "cnerium.error"])
def test_reserved_cnerium_types_are_refused(type: str) -> None:
    with pytest.raises(ValueError, match="reserved"):
        Event(type, {})


@pytest.mark.parametrize("payload", INVALID_PAYLOADS)
def test_payloads_that_are_not_json_objects_raise_value_error(payload: object) -> None:
    with pytest.raises(ValueError, match="payload"):
        Event("order.created", payload)  # type: ignore[arg-type]


def test_event_is_frozen_and_compares_by_value() -> None:
    event = Event("order.created", {"order_id": "o1"})
    assert event == Event("order.created", {"order_id": "o1"})
    assert Event("order.created").payload == {}
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.type = "order.deleted"  # type: ignore[misc]


def test_emit_validates_types_rooms_and_payloads(realtime_app: AppMaker) -> None:
    _app, cnerium = realtime_app(CNERIUM_REALTIME_MAX_PAYLOAD=100)
    assert cnerium.start()
    for type in [*INVALID_TYPES, "cnerium.custom"]:
        with pytest.raises(ValueError):
            cnerium.emit(type, {})
    for room in INVALID_ROOMS:
        with pytest.raises(ValueError, match="Invalid room"):
            cnerium.emit_to(room, "order.created", {})  # type: ignore[arg-type]
    for payload in INVALID_PAYLOADS:
        with pytest.raises(ValueError):
            cnerium.emit("order.created", payload)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="CNERIUM_REALTIME_MAX_PAYLOAD"):
        cnerium.emit("order.created", {"blob": "x" * 100})
    with pytest.raises(TypeError):
        cnerium.emit(Event("order.created"), {"twice": True})
    assert cnerium.emit("order.created", {"blob": "x" * 80})


def test_emit_is_false_when_realtime_is_disabled(tmp_path: Path) -> None:
    app = Flask(__name__)
    app.config["CNERIUM_DATA_DIR"] = str(tmp_path)
    cnerium = Cnerium(app)
    assert cnerium.start()
    assert app.extensions["cnerium"].realtime is None
    assert cnerium.emit("order.created", {"order_id": "o1"}) is False
    assert cnerium.emit_to("orders", Event("order.created")) is False
    with pytest.raises(ValueError):
        cnerium.emit("vague", {})


def test_emit_is_false_until_started_then_true(realtime_app: AppMaker) -> None:
    _app, cnerium = realtime_app()
    with cnerium.capture_events() as captured:
        assert cnerium.emit("order.created", {"order_id": "o1"}) is False
        assert cnerium.start()
        assert cnerium.emit("order.created", {"order_id": "o2"}) is True
        assert cnerium.emit_to("orders", Event("order.paid", {"order_id": "o2"})) is True
    assert [(e.type, e.payload, e.room) for e in captured] == [
        ("order.created", {"order_id": "o2"}, None),
        ("order.paid", {"order_id": "o2"}, "orders")]


def test_emit_works_from_a_thread_without_an_app_context(realtime_app: AppMaker) -> None:
    _app, cnerium = realtime_app()
    cnerium.start()
    results: list[bool] = []
    with cnerium.capture_events() as captured:
        thread = threading.Thread(target=lambda: results.append(
            cnerium.emit_to("orders", "order.shipped", {"order_id": "o1"})))
        thread.start()
        thread.join(10)
    assert results == [True]
    assert [(e.type, e.room) for e in captured] == [("order.shipped", "orders")]


def test_emit_without_context_is_ambiguous_with_two_apps(tmp_path: Path) -> None:
    cnerium = Cnerium()
    apps = [Flask("one"), Flask("two")]
    for app in apps:
        app.config["CNERIUM_DATA_DIR"] = str(tmp_path / app.name)
        cnerium.init_app(app)
    with pytest.raises(RuntimeError, match="app context"):
        cnerium.emit("order.created", {})
    with apps[1].app_context():
        assert cnerium.emit("order.created", {}) is False  # not started


def test_capture_events_records_published_events_with_ids(realtime_app: AppMaker) -> None:
    app, cnerium = realtime_app()
    cnerium.start()
    with cnerium.capture_events() as outside:
        cnerium.emit("order.created", {"n": 1})
        with app.test_request_context("/"):
            cnerium.emit_to("orders", "order.created", {"n": 2})
    assert all(isinstance(e, PublishedEvent) for e in outside)
    assert [(e.payload, e.room, e.node) for e in outside] == [
        ({"n": 1}, None, "test-node"), ({"n": 2}, "orders", "test-node")]
    assert len({e.id for e in outside}) == 2
    with app.app_context(), cnerium.capture_events() as inside:
        cnerium.emit("order.created", {"n": 3})
    assert [e.payload for e in inside] == [{"n": 3}]
    assert cnerium.emit("order.created", {"n": 4}) and len(inside) == 1


def test_capture_events_ignores_other_extensions_apps(realtime_app: AppMaker) -> None:
    _app_a, cnerium_a = realtime_app("a")
    _app_b, cnerium_b = realtime_app("b")
    cnerium_a.start()
    cnerium_b.start()
    with cnerium_a.capture_events() as captured:
        cnerium_b.emit("order.created", {"app": "b"})
        cnerium_a.emit("order.created", {"app": "a"})
    assert [e.payload for e in captured] == [{"app": "a"}]


def test_held_event_ids_derive_from_scope_key_and_position(realtime_app: AppMaker) -> None:
    ids = []
    for name in ("first", "second"):
        app, cnerium = realtime_app(name)
        client = app.test_client()
        with cnerium.capture_events() as captured:
            for key in ("k-1", "k-2"):
                response = client.post("/orders", json={"product_id": "p"},
                                       headers={"Idempotency-Key": key})
                assert response.status_code == 201
        ids.append([e.id for e in captured])
    assert ids[0] == ids[1] == [held_event_id("", "k-1", 0), held_event_id("", "k-2", 0)]
    assert held_event_id("", "k-1", 0) != held_event_id("", "k-1", 1)
    assert held_event_id("", "k-1", 0) != held_event_id("user:1", "k-1", 0)


class FailingBroker(Broker):
    """A broker whose server is down."""

    def publish(self, room: str | None, message: str) -> None:
        raise BrokerError("the broker is unreachable")


def test_broker_failure_makes_emit_false_and_never_fails_the_request(
        realtime_app: AppMaker, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(BROKERS, "failing", FailingBroker)
    app, cnerium = realtime_app(CNERIUM_REALTIME_BROKER="failing://x")
    cnerium.start()
    with cnerium.capture_events() as captured, caplog.at_level(logging.WARNING):
        assert cnerium.emit("order.created", {"order_id": "o1"}) is False
        response = app.test_client().post("/orders", json={"product_id": "p"},
                                          headers={"Idempotency-Key": "k-1"})
    assert response.status_code == 201
    assert captured == []
    assert "could not be published" in caplog.text


def test_unknown_broker_is_a_clear_error(realtime_app: AppMaker) -> None:
    _app, cnerium = realtime_app(CNERIUM_REALTIME_BROKER="carrier-pigeon")
    with pytest.raises(ValueError, match="CNERIUM_REALTIME_BROKER"):
        cnerium.start()
